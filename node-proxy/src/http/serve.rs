//! Serving a captured client connection.
//!
//! Plain HTTP/1.1 requests (origin-form, no body, no `Upgrade`, `Expect` or
//! `TE`: every GET, HEAD and DELETE of most traffic) are read and answered
//! by the task that serves the connection: the head is parsed with
//! `httparse`, the request goes to the engine, and the answer is written
//! back, with no dispatcher, channel or per-request task in between.
//!
//! The first request that is anything else, a head this parser will not
//! take (too large, malformed, more than [`FEW_HEADERS`] fields) and a
//! connection that opens with the HTTP/2 preface go, with every byte read so
//! far, to hyper's server, which serves the rest of the connection: request
//! bodies, `100-continue`, upgrades, HTTP/2, and its `400`s for bad input.
//!
//! An engine may also take a plain request as it came ([`serve_verbatim`]:
//! the inbound side, which needs only its method and path), and answer with
//! the upstream's answer as it came ([`Answer::Verbatim`]), its head and its
//! body's bytes copied, not parsed and written again. `lean` may answer so
//! too (the outbound side, which routes the parsed request).
//!
//! Answers keep hyper's conventions: `Content-Length` when the length is
//! known, else chunked; no body for `HEAD`, `204` and `304`; a `Date` when
//! the answer has none; `Connection: close` when the connection closes after
//! it. An answer passed on as it came is left as it is: it has the framing
//! it declares, its own `Date` or none, and its own `Connection: close`,
//! after which the connection closes; when the client asked to close and
//! the answer does not say so, `connection: close` is added before its
//! blank line. While the engine works on a request,
//! the connection is watched: the client's close cancels the request, as it
//! does under hyper.
//!
//! The idle timeout: the connection, served here or by hyper, is closed once
//! it has waited on the client for that long with nothing moving either way
//! ([`IdleTimeout`]):
//! - kept-alive with no next request: for HTTP/1.1 a normal close; hyper's
//!   HTTP/2 ends with the error, without a `GOAWAY`;
//! - a head or a body that stops coming, or an answer the client stops
//!   reading: the connection ends with the error;
//! - an answer that takes that long without a byte: served here, the client
//!   gets a `504` (as from Envoy's stream idle timeout), unless it has
//!   already sent its next request, which is then waited for without limit
//!   (as hyper does; the route's timeouts still apply).

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Write as _};
use std::ops::Range;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::Empty;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::body::{BoxError, HttpBody};
use super::h1::{self, Answer, Verbatim, put_field};
use super::proxy::{close_or_keep_alive, connection_tokens};
use crate::idle::IdleTimeout;

/// Header fields a request may have and still be served here.
const FEW_HEADERS: usize = 32;
/// The largest head served here; a larger one goes to hyper, whose limits
/// and errors apply.
const MAX_LEAN_HEAD: usize = 16 * 1024;
// Positions in a head served here are `u16`s ([`Part`]).
const _: () = assert!(MAX_LEAN_HEAD <= u16::MAX as usize);
/// Body chunks up to this size are copied behind the head (one write);
/// larger ones are written on their own.
const COALESCE: usize = 16 * 1024;

/// How long a request head may take to arrive once its first byte has
/// (Envoy's `request_headers_timeout`; by default 10 s): a head still coming
/// in then is answered `408` and the connection closed.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The timers of a served client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeTimeouts {
    /// Nothing moving either way for this long closes the connection.
    pub idle: Duration,
    /// A request head started must be complete within this long.
    pub header_read: Duration,
}

impl From<Duration> for ServeTimeouts {
    /// `idle`, and the default header read timeout (never longer than `idle`).
    fn from(idle: Duration) -> Self {
        Self {
            idle,
            header_read: DEFAULT_HEADER_READ_TIMEOUT.min(idle),
        }
    }
}

/// Serves `io` until it closes or has waited `idle` on the client: plain
/// HTTP/1.1 requests through `lean`, and the rest of the connection, from
/// the first other request on, through hyper's server with `service`. The
/// error is the one that ended the connection.
pub(crate) async fn serve<IO, L, F, S>(
    io: IO,
    timeouts: impl Into<ServeTimeouts>,
    lean: L,
    service: S,
) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    L: FnMut(Request<Empty<Bytes>>) -> F,
    F: Future<Output: Into<Answer>>,
    S: hyper::service::Service<Request<Incoming>, Response = Response<HttpBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let never = |_: &RawRequest| None::<std::future::Ready<Answer>>;
    serve_verbatim(io, timeouts, lean, never, service).await
}

/// [`serve`], where `verbatim` may take a plain request as it came (its
/// head's bytes, unparsed fields) and answer it; the requests it does not
/// take go to `lean`. Either may answer with an answer to pass on as it
/// came.
pub(crate) async fn serve_verbatim<IO, L, F, V, G, S>(
    io: IO,
    timeouts: impl Into<ServeTimeouts>,
    mut lean: L,
    mut verbatim: V,
    service: S,
) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    L: FnMut(Request<Empty<Bytes>>) -> F,
    F: Future<Output: Into<Answer>>,
    V: FnMut(&RawRequest) -> Option<G>,
    G: Future<Output = Answer>,
    S: hyper::service::Service<Request<Incoming>, Response = Response<HttpBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let timeouts = timeouts.into();
    let mut conn = ClientConnection::new(IdleTimeout::new(io, timeouts.idle));
    loop {
        let raw = match conn.next_request(timeouts.header_read).await? {
            Next::Request(raw) => raw,
            Next::Closed => return Ok(()),
            Next::Other => break,
            Next::HeadTimedOut => {
                tracing::debug!("a request head took longer than the header read timeout");
                if conn.write_error(StatusCode::REQUEST_TIMEOUT).await.is_ok() {
                    let _ = conn.io.shutdown().await;
                }
                return Ok(());
            }
        };
        let (head, close) = (raw.method == Method::HEAD, raw.close);
        let answer = match verbatim(&raw) {
            Some(answer) => conn.answer(pin!(answer)).await,
            None => match raw.into_request() {
                Ok(req) => conn.answer(pin!(lean(req))).await.map(Into::into),
                Err(head) => {
                    // Not taken after all: the head goes back for hyper.
                    conn.put_back(&head);
                    break;
                }
            },
        };
        let answer = match answer {
            Ok(answer) => answer,
            // The client left; the request was cancelled with its future.
            Err(Gone::Left) => return Ok(()),
            // Nothing moved for the idle timeout: the request is given up,
            // with a `504` (as Envoy's stream idle timeout answers).
            Err(Gone::Idle(e)) => {
                if conn.write_error(StatusCode::GATEWAY_TIMEOUT).await.is_ok() {
                    let _ = conn.io.shutdown().await;
                }
                return Err(e.into());
            }
        };
        let more = match answer {
            Answer::Parsed(resp) => conn.write_response(resp, head, close).await?,
            Answer::Verbatim(answer) => conn.write_verbatim(answer, close).await?,
        };
        if !more {
            let _ = conn.io.shutdown().await;
            return Ok(());
        }
    }
    let io = Prefixed {
        prefix: conn.buf.freeze(),
        io: conn.io,
    };
    // hyper's head timer bounds its heads the same way; it also runs while
    // hyper waits for a kept-alive connection's next head, so connections
    // hyper serves over HTTP/1.1 idle out after it (the plain requests this
    // task serves wait for the idle timeout).
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
}

/// A plain request as it came: the bytes of its head, and where its parts
/// are in them. Small and without a destructor per field: it is made and
/// moved for every plain request.
pub(crate) struct RawRequest {
    /// Request line to blank line.
    head: Bytes,
    method: Method,
    /// The request target in `head`.
    target: Part,
    /// Each field's name and value in `head`; the first `count` are the
    /// request's.
    fields: [(Part, Part); FEW_HEADERS],
    count: usize,
    /// It asked for the connection to close after the answer.
    close: bool,
}

/// Where a part of a head is in its bytes (a head served here is at most
/// [`MAX_LEAN_HEAD`] long).
#[derive(Clone, Copy, Default)]
struct Part {
    start: u16,
    end: u16,
}

impl Part {
    fn range(self) -> Range<usize> {
        usize::from(self.start)..usize::from(self.end)
    }
}

impl RawRequest {
    /// The head, request line to blank line, as the client wrote it.
    pub(crate) fn head(&self) -> &Bytes {
        &self.head
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// The request target (origin form: path and query), sharing the head's
    /// bytes.
    pub(crate) fn target(&self) -> Bytes {
        self.head.slice(self.target.range())
    }

    /// Whether it asked for the connection to close after the answer.
    pub(crate) fn asks_close(&self) -> bool {
        self.close
    }

    /// Its header fields, names and values as the client wrote them.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields[..self.count]
            .iter()
            .map(|(name, value)| (&self.head[name.range()], &self.head[value.range()]))
    }

    /// Whether its head is written the one way every parser reads alike:
    /// the request line first, every line ended by CRLF (no bare LF, no
    /// empty line before the request line, both of which `httparse`
    /// accepts).
    pub(crate) fn is_canonical(&self) -> bool {
        let head = &self.head[..];
        !head.starts_with(b"\r") && !head.starts_with(b"\n") && h1::crlf_lines(head)
    }

    /// The request over the shared bytes of its head; its head back when
    /// `http` will not take a part of it (hyper then answers it).
    fn into_request(self) -> Result<Request<Empty<Bytes>>, Bytes> {
        let head = &self.head;
        let build = || {
            let uri = Uri::from_maybe_shared(head.slice(self.target.range())).ok()?;
            let mut headers = HeaderMap::with_capacity(self.count);
            for (name, value) in &self.fields[..self.count] {
                let name = HeaderName::from_bytes(&head[name.range()]).ok()?;
                let value = HeaderValue::from_maybe_shared(head.slice(value.range())).ok()?;
                headers.append(name, value);
            }
            let mut req = Request::new(Empty::new());
            *req.method_mut() = self.method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = headers;
            Some(req)
        };
        build().ok_or(self.head)
    }
}

/// What the client sent next.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing the request would allocate"
)]
enum Next {
    /// A request to serve here.
    Request(RawRequest),
    /// Something for hyper (still in the buffer, not consumed).
    Other,
    /// The connection ended between requests: the client closed it, or it
    /// was idle for the timeout.
    Closed,
    /// A head was started but not finished within the header read timeout.
    HeadTimedOut,
}

/// Why an answer under way was given up.
enum Gone {
    /// The client closed the connection, or it failed.
    Left,
    /// Nothing moved either way for the idle timeout (the error says so).
    Idle(io::Error),
}

/// The client connection while it is served here.
struct ClientConnection<IO> {
    io: IO,
    /// Read but not consumed: the next request's bytes.
    buf: BytesMut,
    /// The answer's head and small body chunks, written together.
    out: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientConnection<IO> {
    fn new(io: IO) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// The next request, once its head is complete. A head must arrive
    /// within `header_read` of its first byte (the wait for a first byte is
    /// the connection's idle timeout).
    async fn next_request(&mut self, header_read: Duration) -> io::Result<Next> {
        let mut deadline = None;
        loop {
            if !self.buf.is_empty() {
                match self.parse() {
                    Some(next) => return Ok(next),
                    None if self.buf.len() < MAX_LEAN_HEAD => {}
                    None => return Ok(Next::Other),
                }
            }
            if !self.buf.is_empty() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + header_read);
            }
            let fill = std::future::poll_fn(|cx| self.poll_fill(cx));
            let filled = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, fill).await {
                    Ok(filled) => filled,
                    Err(_) => return Ok(Next::HeadTimedOut),
                },
                None => fill.await,
            };
            let read = match filled {
                // Idle between requests: the connection's normal end.
                Err(e) if e.kind() == io::ErrorKind::TimedOut && self.buf.is_empty() => {
                    return Ok(Next::Closed);
                }
                read => read?,
            };
            if read == 0 {
                // A close between requests ends the connection; a close
                // inside a head is hyper's to answer.
                return Ok(if self.buf.is_empty() {
                    Next::Closed
                } else {
                    Next::Other
                });
            }
        }
    }

    /// Parses a complete plain request off the front of the buffer: `None`
    /// while the head is not complete, [`Next::Other`] when it is not plain.
    fn parse(&mut self) -> Option<Next> {
        let mut fields = [httparse::EMPTY_HEADER; FEW_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        let len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(Next::Other),
        };
        let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version)
        else {
            return Some(Next::Other);
        };
        // Origin-form only (`OPTIONS *` and absolute-form go to hyper), and
        // never CONNECT, whose 2xx makes the connection a tunnel.
        if !path.starts_with('/') || method == "CONNECT" || len > MAX_LEAN_HEAD {
            return Some(Next::Other);
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Some(Next::Other);
        };
        let base = self.buf.as_ptr() as usize;
        // Within the head, which is at most `MAX_LEAN_HEAD` (< 64 KiB) long.
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            Part {
                start: start as u16,
                end: (start + s.len()) as u16,
            }
        };
        let mut close = false;
        // Names are compared as they are; they are parsed only when the
        // request is built.
        let mut fields = [(Part::default(), Part::default()); FEW_HEADERS];
        for (field, slot) in parsed.headers.iter().zip(fields.iter_mut()) {
            let name = field.name;
            // An upgrade, or a hop-by-hop field `Connection` names, is hyper's.
            let plain = if name.eq_ignore_ascii_case("connection") {
                close_or_keep_alive(field.value)
                    .map(|c| close |= c)
                    .is_some()
            } else {
                // A body, an upgrade, an expectation or trailers: hyper's.
                ![
                    "content-length",
                    "transfer-encoding",
                    "upgrade",
                    "expect",
                    "te",
                ]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            };
            if !plain {
                return Some(Next::Other);
            }
            *slot = (at(name.as_bytes()), at(field.value));
        }
        let count = parsed.headers.len();
        let target = at(path.as_bytes());
        Some(Next::Request(RawRequest {
            head: self.buf.split_to(len).freeze(),
            method,
            target,
            fields,
            count,
            close,
        }))
    }

    /// Puts a head that was taken off the buffer back in front of it.
    fn put_back(&mut self, head: &[u8]) {
        let mut buf = BytesMut::with_capacity(head.len() + self.buf.len());
        buf.extend_from_slice(head);
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }

    /// Reads more into the buffer; `Ok(0)` is the client's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        h1::poll_read_more(&mut self.io, &mut self.buf, cx)
    }

    /// The engine's answer, unless the client closes the connection (or it
    /// fails, or idles out) first.
    async fn answer<F: Future>(&mut self, mut answer: Pin<&mut F>) -> Result<F::Output, Gone> {
        self.unless_gone(|cx| answer.as_mut().poll(cx)).await
    }

    /// What `poll` gives, unless the client is gone first.
    async fn unless_gone<T>(
        &mut self,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Result<T, Gone> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(value) = poll(cx) {
                return Poll::Ready(Ok(value));
            }
            if let Some(gone) = self.poll_gone(cx) {
                return Poll::Ready(Err(gone));
            }
            Poll::Pending
        })
        .await
    }

    /// Watches the client while an answer is under way: whether it has
    /// closed the connection (or it failed), or nothing has moved for the
    /// idle timeout. As hyper does, only while nothing is buffered: once the
    /// client sent more (the next request), its close is no longer taken for
    /// leaving, and the idle timeout does not cut the answer.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Option<Gone> {
        if !self.buf.is_empty() {
            return None;
        }
        match self.poll_fill(cx) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Some(Gone::Idle(e)),
            Poll::Ready(Ok(0) | Err(_)) => Some(Gone::Left),
            Poll::Ready(Ok(_)) | Poll::Pending => None,
        }
    }

    /// The next frame of the answer's body; an error when the client
    /// leaves first (the body is dropped with the connection).
    async fn next_frame(
        &mut self,
        body: &mut HttpBody,
    ) -> io::Result<Option<Result<Frame<Bytes>, BoxError>>> {
        self.unless_gone(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map_err(|gone| match gone {
                Gone::Left => io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client closed the connection during the answer",
                ),
                Gone::Idle(e) => e,
            })
    }

    /// A bare answer of this server's own (the engine's answer could not be
    /// sent), after which the connection closes.
    async fn write_error(&mut self, status: StatusCode) -> io::Result<bool> {
        let out = &mut self.out;
        out.clear();
        status_line(out, status, None);
        put_field(out, "content-length", b"0");
        DATE_CACHE.with_borrow_mut(|date| put_field(out, "date", date.now()));
        put_field(out, "connection", b"close");
        out.extend_from_slice(b"\r\n");
        self.flush_out().await?;
        Ok(false)
    }

    /// Writes `resp`; `head`: it answers a HEAD; `close`: the request asked
    /// for the connection to close. Returns whether the connection can
    /// carry another request.
    async fn write_response(
        &mut self,
        resp: Response<HttpBody>,
        head: bool,
        close: bool,
    ) -> io::Result<bool> {
        let (mut parts, body) = resp.into_parts();
        let status = parts.status;
        if status.is_informational() {
            // As hyper: an interim answer is not the answer, and a `101` to
            // a request that asked for no upgrade would leave the client
            // speaking another protocol than this server.
            tracing::debug!(%status, "the answer to a plain request is 1xx: 500");
            return self.write_error(StatusCode::INTERNAL_SERVER_ERROR).await;
        }
        let declared = match h1::content_length(&parts.headers) {
            Ok(length) => length,
            Err(e) => {
                tracing::debug!(error = %e, "the answer's Content-Length: 500");
                return self.write_error(StatusCode::INTERNAL_SERVER_ERROR).await;
            }
        };
        let asked_close =
            connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case("close"));
        let close = close || asked_close;
        // The framing is this connection's to choose.
        parts.headers.remove(TRANSFER_ENCODING);
        let exact = body.size_hint().exact();
        let out = &mut self.out;
        out.clear();
        status_line(
            out,
            status,
            parts.extensions.get::<hyper::ext::ReasonPhrase>(),
        );
        let framing = if status == StatusCode::NO_CONTENT {
            parts.headers.remove(CONTENT_LENGTH);
            Framing::None
        } else if status == StatusCode::NOT_MODIFIED {
            // Its fields (a Content-Length too) describe the cached answer.
            Framing::None
        } else if head {
            // The length the GET's body would have: the answer's field, or
            // a known length; never an implied 0 (an empty HEAD body says
            // nothing about the GET's).
            if declared.is_none()
                && let Some(length) = exact.filter(|n| *n > 0)
            {
                put_length(out, length);
            }
            Framing::None
        } else {
            // One length, the one the body will have: its own when known.
            parts.headers.remove(CONTENT_LENGTH);
            match exact.or(declared) {
                Some(length) => {
                    put_length(out, length);
                    Framing::Length(length)
                }
                None => {
                    put_field(out, "transfer-encoding", b"chunked");
                    Framing::Chunked
                }
            }
        };
        if !parts.headers.contains_key(DATE) {
            DATE_CACHE.with_borrow_mut(|date| put_field(out, "date", date.now()));
        }
        if close && !asked_close {
            // One say on the connection: this one.
            parts.headers.remove(CONNECTION);
            put_field(out, "connection", b"close");
        }
        for (name, value) in &parts.headers {
            put_field(out, name.as_str(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        self.write_body(body, framing).await?;
        Ok(!close)
    }

    /// Writes an answer passed on as it came (its head is the upstream's,
    /// its body exactly the length it declares); `close`: the request
    /// asked for the connection to close, which the answer then says too
    /// if it does not already. Returns whether the connection can carry
    /// another request.
    async fn write_verbatim(&mut self, answer: Verbatim, close: bool) -> io::Result<bool> {
        self.out.clear();
        if close && !answer.close {
            // The head ends with its blank line (CRLF only, see
            // `h1::verbatim_head`): the field goes before it.
            let fields = answer.head.len() - 2;
            self.out.extend_from_slice(&answer.head[..fields]);
            put_field(&mut self.out, "connection", b"close");
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(&answer.head);
        }
        let framing = match answer.length {
            0 => Framing::None,
            length => Framing::Length(length),
        };
        self.write_body(answer.body, framing).await?;
        Ok(!close && !answer.close)
    }

    /// Writes what is in the pending write (a head), then `body` framed as
    /// `framing`, and flushes.
    async fn write_body(&mut self, mut body: HttpBody, framing: Framing) -> io::Result<()> {
        if matches!(framing, Framing::None) {
            return self.flush_out().await;
        }
        let mut sent = 0u64;
        loop {
            // What is ready goes out with the head; before waiting for more
            // of the body, what is buffered is written.
            let ready = {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                Pin::new(&mut body).poll_frame(&mut cx)
            };
            let frame = match ready {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.flush_out().await?;
                    self.next_frame(&mut body).await?
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    return Err(io::Error::other(format!("the answer's body failed: {e}")));
                }
                // Trailers are dropped: the request did not ask for them (a
                // request with `TE` is hyper's).
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            sent += data.len() as u64;
            match framing {
                Framing::Length(length) if sent > length => {
                    return Err(io::Error::other(format!(
                        "the answer's body is longer than its Content-Length {length}"
                    )));
                }
                Framing::Chunked => {
                    let _ = write!(self.out, "{:x}\r\n", data.len());
                    self.push_data(data).await?;
                    self.out.extend_from_slice(b"\r\n");
                }
                _ => self.push_data(data).await?,
            }
        }
        match framing {
            Framing::Length(length) if sent < length => {
                self.flush_out().await?;
                return Err(io::Error::other(format!(
                    "the answer's body ended {} bytes before its Content-Length {length}",
                    length - sent
                )));
            }
            Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            _ => {}
        }
        self.flush_out().await
    }

    /// Appends a body chunk to the pending write, or writes it on its own
    /// when it is large.
    async fn push_data(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() > COALESCE {
            self.flush_out().await?;
            return self.io.write_all(&data).await;
        }
        self.out.extend_from_slice(&data);
        if self.out.len() >= COALESCE {
            self.flush_out().await?;
        }
        Ok(())
    }

    async fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > 4 * COALESCE {
                // A large head: its room is not kept for the next answer.
                self.out = Vec::new();
            }
        }
        self.io.flush().await
    }
}

/// How the answer's body is framed.
#[derive(Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// `content-length: <length>`, written without a string of its own.
fn put_length(out: &mut Vec<u8>, length: u64) {
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, "content-length: {length}\r\n");
}

/// `HTTP/1.1 <code> <reason>`: the answer's own reason phrase, else the
/// code's, else `<none>` (as hyper: some clients need a reason).
fn status_line(out: &mut Vec<u8>, status: StatusCode, reason: Option<&hyper::ext::ReasonPhrase>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match (reason, status.canonical_reason()) {
        (Some(reason), _) => out.extend_from_slice(reason.as_bytes()),
        (None, Some(reason)) => out.extend_from_slice(reason.as_bytes()),
        (None, None) => out.extend_from_slice(b"<none>"),
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    static DATE_CACHE: RefCell<DateCache> = const { RefCell::new(DateCache { second: 0, value: Vec::new() }) };
}

/// The `Date` of the current second, formatted once per second per thread.
struct DateCache {
    second: u64,
    value: Vec<u8>,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.value.is_empty() {
            self.second = second;
            self.value = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.value
    }
}

/// The client connection handed to hyper: what was read already, then the
/// rest of the stream.
struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
