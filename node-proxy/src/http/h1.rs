//! A lean HTTP/1.1 client for requests without a body: the exchange runs in
//! the caller's task and the response body reads straight from the
//! connection.
//!
//! hyper's client connection (`hyper::client::conn::http1`) drives every
//! connection in a task of its own and hands the request, the response head
//! and each body chunk over channels. For the L7 path that is two more task
//! wake-ups and several channel hand-offs per request, the largest share of
//! what the L7 path costs over the L4 path. Most proxied requests have no
//! body (GET, HEAD, DELETE, ...), and for them the exchange is short: write
//! the head, read the response head, stream the response body. That is all
//! this module does; requests with a body (whose body must be written while
//! the response may already be arriving) and upgrades stay on hyper's
//! connection.
//!
//! A request can also go as its client wrote it
//! ([`Connection::exchange_verbatim`], the inbound side's authorized plain
//! requests), or be built and still get its answer as it came
//! ([`Connection::exchange_answer`], the outbound side when the route
//! changes nothing in the answer): then an answer framed by one
//! `Content-Length`, or without a body, with CRLF line ends and no
//! connection-specific field but `Connection: close`/`keep-alive`, comes back
//! as its bytes, not parsed into a `Response`; any other answer is parsed as
//! below. The outbound side also parses an answer that closes the
//! connection or has no `Date`.
//!
//! The response is framed per RFC 9112 §6.3: no body for `HEAD`, `1xx`,
//! `204` and `304`; `Transfer-Encoding` (chunked last: chunked, else read to
//! the close) over `Content-Length`; a `Content-Length` must be one number
//! (repeated values must agree); with neither, the body lasts until the
//! close. Interim `1xx` responses are skipped. A connection is reusable only
//! when the response said so (HTTP/1.1 without `Connection: close`,
//! HTTP/1.0 with `keep-alive`), its body was read to the end, no byte
//! follows it, and it had no `Transfer-Encoding` next to a `Content-Length`.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use hyper::body::{Body, Frame, SizeHint};
use sync_wrapper::SyncWrapper;

use super::body::{HttpBody, boxed, empty};
use super::proxy::{HOP_BY_HOP, close_or_keep_alive, connection_tokens};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Most header fields a response head (or a trailer section) may have.
const MAX_HEADERS: usize = 100;
/// Header fields parsed on the first try; more take a second parse.
const FEW_HEADERS: usize = 24;
/// Most fields a trailer section may have (as hyper).
const MAX_TRAILERS: usize = 1024;
/// Largest response head (and trailer section), in bytes: hyper's client
/// limit, so no answer it took is refused here.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Longest chunk-size line (size and extensions), in bytes.
const MAX_CHUNK_LINE: usize = 4096;
/// The read buffer's allocations (a response's bytes share them).
const READ_SPACE: usize = 8 * 1024;
/// Below this much free space, a read first makes [`READ_SPACE`] more.
const MIN_READ_SPACE: usize = 1024;

/// Why an exchange failed. Each names what was wrong with the upstream's
/// answer or the connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the request head failed.
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    /// Reading from the connection failed.
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    /// The connection closed before a complete response head.
    #[error("the connection closed before a complete response head ({0} bytes of it read)")]
    ClosedBeforeHead(usize),
    /// The response head is not HTTP/1.x.
    #[error("invalid response head: {0}")]
    InvalidHead(String),
    /// The response head is larger than [`MAX_HEAD`].
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// `Content-Length` is not one decimal number.
    #[error("invalid Content-Length {0:?}")]
    InvalidContentLength(String),
    /// A `101` answered a request that asked for no upgrade.
    #[error("101 Switching Protocols answered a request without Upgrade")]
    UnexpectedUpgrade,
    /// The connection closed before `Content-Length` bytes of body.
    #[error("the connection closed {0} bytes before the end of the response body")]
    BodyTruncated(u64),
    /// The connection closed inside a chunked body.
    #[error("the connection closed inside the chunked response body")]
    ChunkedTruncated,
    /// The chunked body is malformed.
    #[error("invalid chunked response body: {0}")]
    InvalidChunk(&'static str),
    /// The trailer section is malformed.
    #[error("invalid response trailers: {0}")]
    InvalidTrailers(String),
}

impl Error {
    /// Whether the exchange failed on the connection (closed, reset, could
    /// not write), not on an answer the upstream chose to give: only those
    /// are worth another attempt.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Self::Write(_) | Self::Read(_) | Self::ClosedBeforeHead(_)
        )
    }
}

/// Whether this client can carry `req`: HTTP/1.1 in origin form, without a
/// body, and not `CONNECT` (whose `2xx` turns the connection into a tunnel).
/// Everything else goes through hyper's client.
pub fn fits<B: Body>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && req.uri().authority().is_none()
        && req.body().is_end_stream()
}

/// One HTTP/1.1 connection between exchanges: the byte stream and what was
/// read from it but not used yet.
pub struct Connection<IO> {
    io: IO,
    buf: BytesMut,
}

impl<IO> std::fmt::Debug for Connection<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    /// A connection over `io`, which nothing has been exchanged on yet.
    pub fn new(io: IO) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry another request: the peer has
    /// not closed it, and sent nothing it was not asked for. Never waits.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        // Pending: nothing to read and not closed. Anything else (the
        // close, an error, or a byte nobody asked for) ends its use.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// The byte stream, for a client that takes the connection over. Only
    /// for an idle connection (nothing is buffered then).
    pub fn into_io(self) -> IO {
        debug_assert!(self.buf.is_empty(), "an idle connection buffers nothing");
        self.io
    }

    /// Exchanges a request that [`fits`]: the response, its body read from
    /// this connection, which goes to `on_reusable` once the exchange allows
    /// another one (right away when the response has no body).
    pub async fn exchange(
        self,
        req: &Parts,
        on_reusable: OnReusable<IO>,
    ) -> Result<Response<HttpBody>, Error>
    where
        IO: Send + 'static,
    {
        let resp = self.send(req).await?;
        Ok(finish(resp, on_reusable))
    }

    /// Exchanges a request that [`fits`] and is written as its client wrote
    /// it: `head`, request line to blank line; `head_request`: it is a
    /// `HEAD`. An answer whose head can be passed on unchanged (see
    /// [`verbatim_head`]) comes back as its bytes and its body; any other is
    /// parsed, as [`Self::exchange`] gives it. The connection goes to
    /// `on_reusable` as there.
    pub(crate) async fn exchange_verbatim(
        self,
        head: &[u8],
        head_request: bool,
        on_reusable: OnReusable<IO>,
    ) -> Result<Answer, Error>
    where
        IO: Send + 'static,
    {
        self.exchange_passing(head, head_request, on_reusable, false)
            .await
    }

    /// [`Self::exchange_verbatim`]; `strict`: only an answer that keeps the
    /// connection open and has a `Date` is passed on as it came (for a
    /// proxy whose client's connection must not close with the upstream's,
    /// and which must date what it forwards).
    async fn exchange_passing(
        mut self,
        head: &[u8],
        head_request: bool,
        on_reusable: OnReusable<IO>,
        strict: bool,
    ) -> Result<Answer, Error>
    where
        IO: Send + 'static,
    {
        self.write(head).await?;
        loop {
            let peek = match verbatim_head(&self.buf, head_request) {
                Peek::Verbatim {
                    keep_alive, dated, ..
                } if strict && !(keep_alive && dated) => Peek::Other,
                peek => peek,
            };
            match peek {
                Peek::Partial => self.read_more_head().await?,
                Peek::Other => {
                    let resp = self.receive(head_request).await?;
                    return Ok(Answer::Parsed(finish(resp, on_reusable)));
                }
                Peek::Verbatim {
                    len,
                    status,
                    length,
                    keep_alive,
                    dated: _,
                } => {
                    let head = self.buf.split_to(len).freeze();
                    let decode = match length {
                        0 => Decode::Done,
                        length => Decode::Length(length),
                    };
                    let mut body = ResponseBody::new(self, decode, keep_alive);
                    body.on_reusable(on_reusable);
                    return Ok(Answer::Verbatim(Verbatim {
                        head,
                        status,
                        body: if length == 0 { empty() } else { boxed(body) },
                        length,
                        close: !keep_alive,
                    }));
                }
            }
        }
    }

    /// Exchanges a request that [`fits`], built from `req`: an answer that
    /// can be passed on unchanged, keeps the connection open and has a
    /// `Date` comes back as its bytes, any other parsed, as
    /// [`Self::exchange_verbatim`] gives them.
    pub(crate) async fn exchange_answer(
        self,
        req: &Parts,
        on_reusable: OnReusable<IO>,
    ) -> Result<Answer, Error>
    where
        IO: Send + 'static,
    {
        debug_assert!(req.method != Method::CONNECT, "CONNECT does not fit");
        let head = encode_head(req);
        self.exchange_passing(&head, req.method == Method::HEAD, on_reusable, true)
            .await
    }

    /// Sends a request that has no body, and reads the response head. The
    /// response body reads the rest from the connection.
    async fn send(mut self, req: &Parts) -> Result<Response<ResponseBody<IO>>, Error> {
        debug_assert!(req.method != Method::CONNECT, "CONNECT does not fit");
        self.write(&encode_head(req)).await?;
        self.receive(req.method == Method::HEAD).await
    }

    /// Writes a request head (the request has no body).
    async fn write(&mut self, head: &[u8]) -> Result<(), Error> {
        self.io.write_all(head).await.map_err(Error::Write)?;
        self.io.flush().await.map_err(Error::Write)
    }

    /// Reads the response head, past interim answers; `head_request`: the
    /// request was a `HEAD`. The response body reads the rest.
    async fn receive(mut self, head_request: bool) -> Result<Response<ResponseBody<IO>>, Error> {
        let mut head = loop {
            let head = self.read_head().await?;
            match head.status.as_u16() {
                101 => return Err(Error::UnexpectedUpgrade),
                // Interim answers (100 Continue, 103 Early Hints): the final
                // one follows.
                100..=199 => continue,
                _ => break head,
            }
        };
        let no_body = head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        let (decode, keep_alive) = framing(&mut head.headers, head.version, no_body)?;
        let mut resp = Response::new(ResponseBody::new(self, decode, keep_alive));
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        *resp.extensions_mut() = head.extensions;
        Ok(resp)
    }

    async fn read_head(&mut self) -> Result<Head, Error> {
        loop {
            if let Some(head) = self.parse_head()? {
                return Ok(head);
            }
            self.read_more_head().await?;
        }
    }

    /// Reads more of a head that is not complete yet.
    async fn read_more_head(&mut self) -> Result<(), Error> {
        if self.buf.len() >= MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        let read = std::future::poll_fn(|cx| self.poll_fill(cx)).await;
        if read.map_err(Error::Read)? == 0 {
            return Err(Error::ClosedBeforeHead(self.buf.len()));
        }
        Ok(())
    }

    /// Parses a complete head off the front of the buffer, if there is one.
    fn parse_head(&mut self) -> Result<Option<Head>, Error> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
        let parsed = match parse_response(&self.buf, &mut few) {
            Err(httparse::Error::TooManyHeaders) => {
                let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
                parse_response(&self.buf, &mut many)?
            }
            parsed => parsed?,
        };
        match parsed {
            // The same limit whether the head came in one read or in many.
            Some(parsed) if parsed.len > MAX_HEAD => Err(Error::HeadTooLarge),
            Some(parsed) => parsed.into_head(&mut self.buf).map(Some),
            None => Ok(None),
        }
    }

    /// Reads more into the buffer; `Ok(0)` is the peer's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_more(&mut self.io, &mut self.buf, cx)
    }
}

/// Reads more from `io` into `buf`, a connection's read buffer whose heads
/// are split off as they are parsed; `Ok(0)` is the peer's close. Also the
/// server side's ([`super::serve`]).
pub(crate) fn poll_read_more<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    // `poll_read_buf` reads nothing into a full buffer: make room first.
    // Not on every read: what is left of the allocation after earlier heads
    // were split off is used first (a new one costs more).
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_SPACE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Appends one field line, `name: value\r\n`, to a head being written.
pub(crate) fn put_field(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// A response whose body goes to `on_reusable`'s connection hand-back.
fn finish<IO>(
    mut resp: Response<ResponseBody<IO>>,
    on_reusable: OnReusable<IO>,
) -> Response<HttpBody>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    resp.body_mut().on_reusable(on_reusable);
    if resp.body().is_end_stream() {
        resp.map(|_| empty())
    } else {
        resp.map(boxed)
    }
}

/// An answer that may be passed on as the upstream wrote it
/// ([`Connection::exchange_verbatim`], [`Connection::exchange_answer`]).
pub(crate) enum Answer {
    /// Passed on as the upstream wrote it.
    Verbatim(Verbatim),
    /// Parsed (its connection-specific fields still in it).
    Parsed(Response<HttpBody>),
}

impl Answer {
    /// Its status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Verbatim(answer) => answer.status,
            Self::Parsed(resp) => resp.status(),
        }
    }

    /// Its body.
    pub(crate) fn into_body(self) -> HttpBody {
        match self {
            Self::Verbatim(answer) => answer.body,
            Self::Parsed(resp) => resp.into_body(),
        }
    }
}

impl From<Response<HttpBody>> for Answer {
    fn from(resp: Response<HttpBody>) -> Self {
        Self::Parsed(resp)
    }
}

/// An answer passed on as the upstream wrote it.
pub(crate) struct Verbatim {
    /// Its head, status line to blank line.
    pub head: Bytes,
    /// Its status (in `head`).
    pub status: StatusCode,
    /// Its body: exactly `length` bytes (none for `HEAD`, `204`, `304`).
    pub body: HttpBody,
    pub length: u64,
    /// The upstream closes the connection after it (`Connection: close`).
    pub close: bool,
}

/// What the start of the read buffer holds, for [`verbatim_head`].
#[derive(Debug, PartialEq, Eq)]
enum Peek {
    /// Not a complete head yet.
    Partial,
    /// A head of `len` bytes to pass on unchanged, then `length` bytes of
    /// body; `keep_alive`: the connection may carry another exchange.
    Verbatim {
        len: usize,
        status: StatusCode,
        length: u64,
        keep_alive: bool,
        /// It has a `Date`.
        dated: bool,
    },
    /// A head to parse.
    Other,
}

/// Whether the answer at the front of `buf` (to a `HEAD` if
/// `head_request`) can be passed on unchanged: a final HTTP/1.1 answer
/// with at most [`FEW_HEADERS`] fields, framed by one `Content-Length` of
/// digits or without a body (`HEAD`, `304`, `204` without a length), with
/// no other hop-by-hop field ([`HOP_BY_HOP`]) nor the field only a node
/// proxy's own answers carry, and a `Connection` of `close`/`keep-alive` at
/// most. Anything else (chunked, read to the close, interim, HTTP/1.0,
/// repeated lengths, malformed) is parsed, with the parser's checks and
/// errors.
fn verbatim_head(buf: &[u8], head_request: bool) -> Peek {
    let mut fields = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) => return Peek::Partial,
        _ => return Peek::Other,
    };
    let (Some(1), Some(code @ 200..=599)) = (resp.version, resp.code) else {
        return Peek::Other;
    };
    let (Ok(status), true) = (StatusCode::from_u16(code), crlf_lines(&buf[..len])) else {
        return Peek::Other;
    };
    let mut length = None;
    let mut keep_alive = true;
    let mut dated = false;
    for field in resp.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("date") {
            dated = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            match (length, digits(field.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Peek::Other,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            match close_or_keep_alive(field.value) {
                Some(close) => keep_alive &= !close,
                None => return Peek::Other,
            }
        } else if name.eq_ignore_ascii_case(super::UPSTREAM_ERROR_HEADER)
            || HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
        {
            return Peek::Other;
        }
    }
    let no_body = head_request || code == 204 || code == 304;
    match length {
        // Its length goes (a `204` has no body to measure).
        Some(_) if code == 204 => Peek::Other,
        _ if no_body => Peek::Verbatim {
            len,
            status,
            length: 0,
            keep_alive,
            dated,
        },
        Some(length) => Peek::Verbatim {
            len,
            status,
            length,
            keep_alive,
            dated,
        },
        // Read to the close.
        None => Peek::Other,
    }
}

/// Whether every line of `head` ends with CRLF: no bare LF, which
/// `httparse` takes and not every peer does.
pub(crate) fn crlf_lines(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && head[i - 1] == b'\r'))
}

/// A `Content-Length` value of decimal digits only (no list, no spaces).
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A response head, parsed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// A reason phrase other than the status code's own, kept the way
    /// hyper keeps it ([`hyper::ext::ReasonPhrase`]), so the client sees it.
    extensions: Extensions,
}

/// What `httparse` found, as positions in the buffer.
struct Parsed {
    len: usize,
    status: StatusCode,
    version: Version,
    reason: Option<Range<usize>>,
    fields: Vec<(HeaderName, Range<usize>)>,
}

impl Parsed {
    /// Takes the head off the front of `buf`; header values share its bytes.
    fn into_head(self, buf: &mut BytesMut) -> Result<Head, Error> {
        let bytes = buf.split_to(self.len).freeze();
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for (name, range) in self.fields {
            let value = HeaderValue::from_maybe_shared(bytes.slice(range))
                .map_err(|_| Error::InvalidHead(format!("invalid value of header field {name}")))?;
            headers.append(name, value);
        }
        let mut extensions = Extensions::new();
        if let Some(range) = self.reason
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(bytes.slice(range))
        {
            extensions.insert(reason);
        }
        Ok(Head {
            status: self.status,
            version: self.version,
            headers,
            extensions,
        })
    }
}

fn parse_response<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Parsed>, httparse::Error> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(httparse::Error::Status)?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let reason = resp
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
        .map(|r| {
            let start = r.as_ptr() as usize - base;
            start..start + r.len()
        });
    let mut fields = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| httparse::Error::HeaderName)?;
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start..start + h.value.len()));
    }
    Ok(Some(Parsed {
        len,
        status,
        version,
        reason,
        fields,
    }))
}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => {
                Self::InvalidHead(format!("more than {MAX_HEADERS} header fields"))
            }
            e => Self::InvalidHead(e.to_string()),
        }
    }
}

/// The request head: request line, the header fields as they are, blank
/// line. The caller has removed hop-by-hop fields; a request without a
/// body needs no framing field.
fn encode_head(req: &Parts) -> Vec<u8> {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let method = req.method.as_str();
    let fields: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    // "<method> <target> HTTP/1.1\r\n", the fields, "\r\n".
    let mut head = Vec::with_capacity(method.len() + 1 + target.len() + 11 + fields + 2);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        put_field(&mut head, name.as_str(), value.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    debug_assert_eq!(head.len(), head.capacity(), "the head's size is known");
    head
}

/// How the body after a head with `headers` is framed, and whether the
/// connection may carry another exchange after it.
fn framing(
    headers: &mut HeaderMap,
    version: Version,
    no_body: bool,
) -> Result<(Decode, bool), Error> {
    let connection =
        |token: &str| connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token));
    // `close` wins; HTTP/1.0 keeps the connection only when asked to.
    let mut keep_alive =
        !connection("close") && (version != Version::HTTP_10 || connection("keep-alive"));
    if no_body {
        return Ok((Decode::Done, keep_alive));
    }
    let encodings = headers.get_all(TRANSFER_ENCODING);
    if encodings.iter().next().is_some() {
        // The last coding named (empty list elements do not count, RFC
        // 9110 §5.6.1: `chunked,` is `chunked`).
        let chunked_last = encodings
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .find(|t| !t.is_empty())
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        // A Content-Length beside Transfer-Encoding is a sign of request
        // smuggling: the connection is not used again, and the length is
        // not passed on (RFC 9112 §6.3).
        if headers.remove(CONTENT_LENGTH).is_some() || version == Version::HTTP_10 {
            keep_alive = false;
        }
        return Ok(if chunked_last {
            (Decode::Chunked(Chunk::Size), keep_alive)
        } else {
            (Decode::Close, false)
        });
    }
    match content_length(headers)? {
        Some(0) => Ok((Decode::Done, keep_alive)),
        Some(n) => Ok((Decode::Length(n), keep_alive)),
        None => Ok((Decode::Close, false)),
    }
}

/// The one `Content-Length` of the head (repeated values must agree).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let invalid =
            || Error::InvalidContentLength(String::from_utf8_lossy(value.as_bytes()).into());
        let text = value.to_str().map_err(|_| invalid())?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let n: u64 = part.parse().map_err(|_| invalid())?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Where the body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// This many bytes to go.
    Length(u64),
    /// Until the peer closes.
    Close,
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// The body is complete (or failed).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// Where a connection goes when its exchange is over and it may carry
/// another one (a pool, a slot).
pub type OnReusable<IO> = Box<dyn FnOnce(Connection<IO>) + Send + Sync>;

/// A response body read from its connection, in the task that polls it.
pub struct ResponseBody<IO> {
    /// `None` once the connection was dropped (after a failure, or handed
    /// back for reuse).
    conn: Option<SyncWrapper<Connection<IO>>>,
    decode: Decode,
    keep_alive: bool,
    on_reusable: Option<OnReusable<IO>>,
}

impl<IO> Drop for ResponseBody<IO> {
    fn drop(&mut self) {
        // Readers often drop a body right after its last byte, without
        // polling for its end.
        self.hand_back();
    }
}

impl<IO> ResponseBody<IO> {
    /// The body after a head on `conn`, framed as `decode`.
    fn new(conn: Connection<IO>, decode: Decode, keep_alive: bool) -> Self {
        Self {
            conn: Some(SyncWrapper::new(conn)),
            decode,
            keep_alive,
            on_reusable: None,
        }
    }

    /// Hands the connection to `f` once the body was read to its end and
    /// the exchange allows another one on it (right away if it already
    /// was). Never called when the connection cannot be reused.
    pub fn on_reusable(&mut self, f: OnReusable<IO>) {
        self.on_reusable = Some(f);
        self.hand_back();
    }

    /// The connection, when the body was read to its end and the exchange
    /// allows another one on it.
    fn take_reusable(&mut self) -> Option<Connection<IO>> {
        if self.decode != Decode::Done || !self.keep_alive {
            return None;
        }
        let conn = self.conn.take()?.into_inner();
        // Bytes after the end of the response were never asked for.
        conn.buf.is_empty().then_some(conn)
    }

    fn hand_back(&mut self) {
        if self.on_reusable.is_some()
            && let Some(conn) = self.take_reusable()
            && let Some(f) = self.on_reusable.take()
        {
            f(conn);
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.decode = Decode::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The buffered part of a body framed by its length or by the close.
    fn step_plain(&mut self) -> Step {
        let Some(conn) = self.conn.as_mut() else {
            self.decode = Decode::Done;
            return Step::Moved;
        };
        let buf = &mut conn.get_mut().buf;
        if buf.is_empty() {
            return Step::NeedMore;
        }
        let data = match self.decode {
            Decode::Length(rest) => {
                let n = rest.min(buf.len() as u64);
                self.decode = match rest - n {
                    0 => Decode::Done,
                    rest => Decode::Length(rest),
                };
                buf.split_to(n as usize)
            }
            _ => buf.split(),
        };
        Step::Frame(Frame::data(data.freeze()))
    }

    /// One step of the chunked decoder.
    fn step_chunked(&mut self, chunk: Chunk) -> Result<Step, Error> {
        let Some(conn) = self.conn.as_mut() else {
            self.decode = Decode::Done;
            return Ok(Step::Moved);
        };
        let buf = &mut conn.get_mut().buf;
        let (next, frame) = match chunk {
            Chunk::Size => {
                // The limit holds however the bytes arrived: a line found
                // whole in one read is measured too.
                let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Error::InvalidChunk("chunk-size line too long"));
                    }
                    return Ok(Step::NeedMore);
                };
                if lf > MAX_CHUNK_LINE {
                    return Err(Error::InvalidChunk("chunk-size line too long"));
                }
                if lf == 0 || buf[lf - 1] != b'\r' {
                    return Err(Error::InvalidChunk("chunk-size line not ended by CRLF"));
                }
                let size = chunk_size(&buf[..lf - 1])?;
                buf.advance(lf + 1);
                let next = match size {
                    0 => Chunk::Trailers,
                    size => Chunk::Data(size),
                };
                (Decode::Chunked(next), None)
            }
            Chunk::Data(rest) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = rest.min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                let next = match rest - n {
                    0 => Chunk::DataEnd,
                    rest => Chunk::Data(rest),
                };
                (Decode::Chunked(next), Some(Frame::data(data)))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::InvalidChunk("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                (Decode::Chunked(Chunk::Size), None)
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    (Decode::Done, None)
                } else {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_HEAD {
                            return Err(Error::InvalidTrailers(format!(
                                "larger than {MAX_HEAD} bytes"
                            )));
                        }
                        return Ok(Step::NeedMore);
                    };
                    if end + 4 > MAX_HEAD {
                        return Err(Error::InvalidTrailers(format!(
                            "larger than {MAX_HEAD} bytes"
                        )));
                    }
                    let section = buf.split_to(end + 4).freeze();
                    (
                        Decode::Done,
                        Some(Frame::trailers(parse_trailers(&section)?)),
                    )
                }
            }
        };
        self.decode = next;
        Ok(frame.map_or(Step::Moved, Step::Frame))
    }
}

/// What a step of the chunked decoder did.
enum Step {
    /// It decoded a frame.
    Frame(Frame<Bytes>),
    /// It moved the decoder on without a frame.
    Moved,
    /// It needs more bytes.
    NeedMore,
}

/// The size of a chunk from its line (hex digits, then optional
/// whitespace and extensions, which are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::InvalidChunk("chunk size is not hexadecimal"));
    }
    if digits > 16 {
        return Err(Error::InvalidChunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Error::InvalidChunk("unexpected bytes after the chunk size"));
    }
    // Extensions are ignored, but must be text (no bare CR, no controls).
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Error::InvalidChunk(
            "control character in a chunk extension",
        ));
    }
    line[..digits]
        .iter()
        .try_fold(0u64, |n, &b| {
            let d = (b as char).to_digit(16)?;
            n.checked_mul(16)?.checked_add(u64::from(d))
        })
        .ok_or(Error::InvalidChunk("chunk size too large"))
}

fn parse_trailers(section: &Bytes) -> Result<HeaderMap, Error> {
    // Most sections have a few fields (gRPC: two): the room for
    // `MAX_TRAILERS` is taken only for a section that needs it.
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    if let Some(trailers) = parse_trailers_into(section, &mut few)? {
        return Ok(trailers);
    }
    let mut many = vec![httparse::EMPTY_HEADER; MAX_TRAILERS];
    parse_trailers_into(section, &mut many)?
        .ok_or_else(|| Error::InvalidTrailers(format!("more than {MAX_TRAILERS} fields")))
}

/// The trailer section parsed with room for `fields.len()` fields; `None`
/// when it has more.
fn parse_trailers_into<'s>(
    section: &'s Bytes,
    fields: &mut [httparse::Header<'s>],
) -> Result<Option<HeaderMap>, Error> {
    let invalid = |e: &dyn std::fmt::Display| Error::InvalidTrailers(e.to_string());
    let parsed = match httparse::parse_headers(section, fields) {
        // Every byte up to the blank line is a field line (bare-LF lines
        // would end the section early).
        Ok(httparse::Status::Complete((len, parsed))) if len == section.len() => parsed,
        Ok(httparse::Status::Complete(_)) => return Err(invalid(&"bytes after the blank line")),
        Ok(httparse::Status::Partial) => return Err(invalid(&"incomplete")),
        Err(httparse::Error::TooManyHeaders) => return Ok(None),
        Err(e) => return Err(invalid(&e)),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| invalid(&e))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| invalid(&e))?;
        trailers.append(name, value);
    }
    Ok(Some(trailers))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Body for ResponseBody<IO> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let step = match this.decode {
                Decode::Done => {
                    this.hand_back();
                    return Poll::Ready(None);
                }
                Decode::Chunked(chunk) => this.step_chunked(chunk),
                Decode::Length(_) | Decode::Close => Ok(this.step_plain()),
            };
            match step {
                Err(e) => return this.fail(e),
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::Moved) => {}
                Ok(Step::NeedMore) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match ready!(conn.get_mut().poll_fill(cx)) {
                        Ok(0) => match this.decode {
                            // A body without a length ends with the close.
                            Decode::Close => {
                                this.decode = Decode::Done;
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            Decode::Length(rest) => return this.fail(Error::BodyTruncated(rest)),
                            _ => return this.fail(Error::ChunkedTruncated),
                        },
                        Ok(_) => {}
                        Err(e) => return this.fail(Error::Read(e)),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Request;
    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    /// A request head with no body.
    fn get(method: Method, target: &str) -> Parts {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "svc.mesh")
            .header("x-trace", "a")
            .header("x-trace", "b")
            .body(())
            .expect("request");
        req.headers_mut()
            .insert("accept", HeaderValue::from_static("*/*"));
        req.into_parts().0
    }

    /// Reads one request head off the server's side of the pipe.
    async fn read_request(server: &mut DuplexStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                server.read(&mut byte).await.expect("read"),
                1,
                "request head cut"
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).expect("ascii head")
    }

    /// What the client got: head, data, trailers.
    struct Got {
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        /// The connection, if the exchange left it reusable.
        reusable: Option<Connection<DuplexStream>>,
    }

    async fn read_all(resp: Response<ResponseBody<DuplexStream>>) -> Result<Got, Error> {
        let (head, mut body) = resp.into_parts();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok(Got {
            status: head.status,
            version: head.version,
            headers: head.headers,
            data,
            trailers,
            reusable: body.take_reusable(),
        })
    }

    /// One exchange: the server answers `answer` in pieces of `piece` bytes
    /// and stays open.
    async fn exchange_on(
        conn: Connection<DuplexStream>,
        server: &mut DuplexStream,
        req: &Parts,
        answer: &[u8],
        piece: usize,
    ) -> Result<Got, Error> {
        let answer = answer.to_vec();
        let client = async {
            let resp = conn.send(req).await?;
            read_all(resp).await
        };
        let serve = async {
            read_request(server).await;
            for part in answer.chunks(piece) {
                // The client stops reading at the first error.
                if server.write_all(part).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        };
        let (got, ()) = tokio::join!(client, serve);
        got
    }

    async fn exchange(answer: &[u8], close: bool) -> Result<Got, Error> {
        exchange_method(Method::GET, answer, close).await
    }

    async fn exchange_method(method: Method, answer: &[u8], close: bool) -> Result<Got, Error> {
        let (client, mut server) = duplex(64 * 1024);
        let conn = Connection::new(client);
        let req = get(method, "/p?q=1");
        if close {
            let answer = answer.to_vec();
            let serve = async move {
                read_request(&mut server).await;
                // The client stops reading at the first error.
                let _ = server.write_all(&answer).await;
                drop(server);
            };
            let client = async {
                let resp = conn.send(&req).await?;
                read_all(resp).await
            };
            let (got, ()) = tokio::join!(client, serve);
            return got;
        }
        let got = exchange_on(conn, &mut server, &req, answer, usize::MAX).await;
        // Keep the server's end open until the client is done with it.
        drop(server);
        got
    }

    #[tokio::test]
    async fn the_request_head_carries_method_target_and_every_field() {
        let (client, mut server) = duplex(4096);
        let req = get(Method::DELETE, "/items/7?force=true");
        let serve = async {
            let head = read_request(&mut server).await;
            server
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("answer");
            head
        };
        let (got, head) = tokio::join!(Connection::new(client).send(&req), serve);
        assert_eq!(got.expect("response").status(), StatusCode::NO_CONTENT);
        assert_eq!(
            head,
            "DELETE /items/7?force=true HTTP/1.1\r\nhost: svc.mesh\r\nx-trace: a\r\nx-trace: b\r\naccept: */*\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn content_length_bodies_are_read_and_the_connection_is_reused() {
        let (client, mut server) = duplex(64 * 1024);
        let req = get(Method::GET, "/");
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\nhello world";
        // Byte by byte: the head and body arrive in many reads.
        let got = exchange_on(Connection::new(client), &mut server, &req, answer, 1)
            .await
            .expect("first exchange");
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.version, Version::HTTP_11);
        assert_eq!(got.headers["x-a"], "1");
        assert_eq!(got.data, b"hello world");
        let mut conn = got.reusable.expect("kept alive");
        assert!(conn.is_usable());
        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\ngone";
        let got = exchange_on(conn, &mut server, &req, answer, usize::MAX)
            .await
            .expect("second exchange on the same connection");
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert_eq!(got.data, b"gone");
        assert!(got.reusable.is_some());
    }

    #[tokio::test]
    async fn chunked_bodies_keep_their_data_and_trailers() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1 \r\n \r\n5\r\nworld\r\n0\r\nGrpc-Status: 0\r\nx-t: yes\r\n\r\n";
        let got = exchange(answer, false).await.expect("chunked");
        assert_eq!(got.data, b"hello world");
        let trailers = got.trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-t"], "yes");
        assert!(
            got.reusable.is_some(),
            "a complete chunked body keeps the connection"
        );

        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let got = exchange(answer, false).await.expect("chunked");
        assert_eq!(got.data, b"abc");
        assert!(got.trailers.is_none());
        assert!(got.reusable.is_some());
    }

    #[test]
    fn trailer_sections_past_the_first_room_and_past_the_limit() {
        let section = |n: usize| {
            let mut s: String = (0..n).map(|i| format!("x-{i}: {i}\r\n")).collect();
            s.push_str("\r\n");
            Bytes::from(s)
        };
        // More than the first try has room for: parsed on the second.
        let trailers = parse_trailers(&section(FEW_HEADERS + 6)).expect("parsed");
        assert_eq!(trailers.len(), FEW_HEADERS + 6);
        assert_eq!(trailers["x-29"], "29");
        let trailers = parse_trailers(&section(2)).expect("parsed");
        assert_eq!(trailers.len(), 2);
        let err = parse_trailers(&section(MAX_TRAILERS + 1)).expect_err("too many");
        assert!(err.to_string().contains("more than 1024 fields"), "{err}");
    }

    #[tokio::test]
    async fn a_body_without_length_lasts_until_the_close() {
        let got = exchange(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true)
            .await
            .expect("close-delimited");
        assert_eq!(got.data, b"until the end");
        assert!(got.reusable.is_none(), "the connection closed");

        // A transfer coding other than chunked last: read to the close too.
        let got = exchange(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzz",
            true,
        )
        .await
        .expect("close-delimited");
        assert_eq!(got.data, b"zz");
        assert!(got.reusable.is_none());
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body() {
        let got = exchange_method(
            Method::HEAD,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            false,
        )
        .await
        .expect("HEAD");
        assert_eq!(got.headers["content-length"], "5");
        assert!(got.data.is_empty());
        assert!(got.reusable.is_some());
        for answer in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
        ] {
            let got = exchange(answer, false).await.expect("no body");
            assert!(got.data.is_empty());
            assert!(got.reusable.is_some());
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_101_is_refused() {
        let got = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        )
        .await
        .expect("final response");
        assert_eq!(got.status, StatusCode::OK);
        assert!(!got.headers.contains_key("link"));
        assert_eq!(got.data, b"ok");

        let err = exchange(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            false,
        )
        .await
        .err()
        .expect("an unasked upgrade");
        assert!(matches!(err, Error::UnexpectedUpgrade), "{err}");
    }

    #[tokio::test]
    async fn connections_are_reused_only_when_the_response_allows_it() {
        let cases: [(&[u8], bool, &str); 7] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true, "HTTP/1.1 default"),
            (
                b"HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n",
                false,
                "Connection: close",
            ),
            (
                b"HTTP/1.1 200 OK\r\nconnection: foo, close\r\ncontent-length: 0\r\n\r\n",
                false,
                "close among other tokens",
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false, "HTTP/1.0 default"),
            (
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
                true,
                "HTTP/1.0 keep-alive",
            ),
            (
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                false,
                "HTTP/1.0 keep-alive and close: close wins",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false,
                "Transfer-Encoding beside Content-Length",
            ),
        ];
        for (answer, reusable, case) in cases {
            let got = exchange(answer, false).await.expect(case);
            assert_eq!(got.reusable.is_some(), reusable, "{case}");
        }
        // Transfer-Encoding wins over Content-Length for the framing, and
        // the length is not passed on.
        let got = exchange(cases[6].0, false).await.expect("chunked");
        assert_eq!(got.data, b"ok");
        assert!(!got.headers.contains_key(CONTENT_LENGTH));

        // Bytes nobody asked for after the response.
        let got = exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nxEXTRA", false)
            .await
            .expect("response");
        assert_eq!(got.data, b"x");
        assert!(got.reusable.is_none(), "bytes followed the response");
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_that_say_what_was_wrong() {
        let cases: [(&[u8], bool, &str); 10] = [
            (b"HTTP/1.1 2x0 OK\r\n\r\n", false, "invalid response head"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", false, "invalid response head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
                false,
                "invalid Content-Length \"5, 6\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                false,
                "invalid Content-Length \"-1\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                false,
                "chunk size is not hexadecimal",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n",
                false,
                "chunk data not followed by CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
                false,
                "chunk size too large",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a=\rb\r\nok\r\n0\r\n\r\n",
                false,
                "control character in a chunk extension",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
                true,
                "closed 6 bytes before the end of the response body",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                true,
                "closed inside the chunked response body",
            ),
        ];
        for (answer, close, message) in cases {
            let err = exchange(answer, close).await.err().expect(message);
            assert!(
                err.to_string().contains(message),
                "{err} (expected {message})"
            );
        }
        let err = exchange(b"HTTP/1.1 200 O", true)
            .await
            .err()
            .expect("cut head");
        assert!(matches!(err, Error::ClosedBeforeHead(14)), "{err}");

        // A head that never ends: refused once the limit is read (the
        // parse-time check is tested on its own).
        let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        huge.resize(huge.len() + MAX_HEAD, b'a');
        let err = exchange(&huge, false).await.err().expect("huge head");
        assert!(matches!(err, Error::HeadTooLarge), "{err}");
        assert!(
            !err.is_connection_error(),
            "an answer, not a connection failure"
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let err = exchange(&many, false).await.err().expect("too many fields");
        assert!(
            err.to_string().contains("more than 100 header fields"),
            "{err}"
        );
    }

    #[test]
    fn the_head_limit_holds_for_a_head_read_at_once() {
        // A complete head over the limit already in the buffer: refused
        // when parsed, not only when more must be read.
        let (client, _server) = duplex(16);
        let mut conn = Connection::new(client);
        conn.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\nx-big: ");
        conn.buf.resize(MAX_HEAD + 1, b'a');
        conn.buf.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(conn.parse_head(), Err(Error::HeadTooLarge)));
        // Just under the limit: parsed.
        let mut conn = Connection::new(duplex(16).0);
        conn.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\nx-big: ");
        conn.buf.resize(MAX_HEAD - 4, b'a');
        conn.buf.extend_from_slice(b"\r\n\r\n");
        let head = conn.parse_head().expect("parsed").expect("complete");
        assert_eq!(head.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn more_fields_than_the_first_parse_expects_are_kept() {
        let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".to_vec();
        for i in 0..FEW_HEADERS * 2 {
            answer.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        answer.extend_from_slice(b"\r\n");
        let got = exchange(&answer, false).await.expect("many fields");
        assert_eq!(got.headers.len(), FEW_HEADERS * 2 + 1);
        assert_eq!(got.headers["x-40"], "40");
    }

    #[tokio::test]
    async fn an_idle_connection_the_peer_closed_or_wrote_to_is_not_usable() {
        let (client, server) = duplex(1024);
        let mut conn = Connection::new(client);
        assert!(conn.is_usable());
        drop(server);
        assert!(!conn.is_usable(), "closed by the peer");

        let (client, mut server) = duplex(1024);
        let mut conn = Connection::new(client);
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .expect("write");
        assert!(!conn.is_usable(), "bytes nobody asked for");
    }

    #[test]
    fn only_bodyless_origin_form_http11_requests_that_are_not_connect_fit() {
        let req = |method: Method, uri: &str, version: Version| {
            Request::builder()
                .method(method)
                .uri(uri)
                .version(version)
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        assert!(fits(&req(Method::GET, "/a?b", Version::HTTP_11)));
        assert!(fits(&req(Method::DELETE, "/a", Version::HTTP_11)));
        assert!(!fits(&req(Method::CONNECT, "/", Version::HTTP_11)));
        assert!(!fits(&req(Method::GET, "http://svc/a", Version::HTTP_11)));
        assert!(!fits(&req(Method::GET, "/a", Version::HTTP_10)));
        assert!(!fits(&req(Method::GET, "/a", Version::HTTP_2)));
        let with_body = Request::post("/a")
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request");
        assert!(!fits(&with_body));
    }

    /// Sends a GET and answers it with `answer`; the server end stays open.
    async fn answered(
        answer: &'static [u8],
    ) -> (Response<ResponseBody<DuplexStream>>, DuplexStream) {
        let (client, mut server) = duplex(64 * 1024);
        let (parts, ()) = Request::get("/").body(()).expect("request").into_parts();
        let serve = async {
            read_request(&mut server).await;
            server.write_all(answer).await.expect("answer");
        };
        let (resp, ()) = tokio::join!(Connection::new(client).send(&parts), serve);
        (resp.expect("response"), server)
    }

    fn counting(resp: &mut Response<ResponseBody<DuplexStream>>) -> Arc<AtomicUsize> {
        let handed = Arc::new(AtomicUsize::new(0));
        let count = handed.clone();
        resp.body_mut().on_reusable(Box::new(move |_conn| {
            count.fetch_add(1, Ordering::SeqCst);
        }));
        handed
    }

    #[tokio::test]
    async fn the_connection_is_handed_back_once_and_only_after_the_whole_body() {
        // Dropped right after the last byte, without polling for the end:
        // handed back on drop.
        let (mut resp, _server) = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let handed = counting(&mut resp);
        let frame = resp.body_mut().frame().await.expect("frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "ok");
        assert_eq!(
            handed.load(Ordering::SeqCst),
            0,
            "not before the reader is done"
        );
        drop(resp);
        assert_eq!(handed.load(Ordering::SeqCst), 1);

        // Dropped in the middle of the body: never handed back.
        let (mut resp, _server) =
            answered(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf").await;
        let handed = counting(&mut resp);
        let _ = resp.body_mut().frame().await;
        drop(resp);
        assert_eq!(
            handed.load(Ordering::SeqCst),
            0,
            "a cut body ends the connection"
        );

        // A body already complete (204): handed back when asked for.
        let (mut resp, _server) = answered(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let handed = counting(&mut resp);
        assert_eq!(handed.load(Ordering::SeqCst), 1);
        drop(resp);
        assert_eq!(handed.load(Ordering::SeqCst), 1, "once");
    }

    #[tokio::test]
    async fn a_reason_phrase_of_its_own_is_kept() {
        let (resp, _server) =
            answered(b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n").await;
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .expect("reason kept");
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
        let (resp, _server) =
            answered(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        assert!(
            resp.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .is_none()
        );
    }

    #[test]
    fn only_connection_failures_count_as_connection_errors() {
        let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(Error::Read(reset()).is_connection_error());
        assert!(Error::Write(reset()).is_connection_error());
        assert!(Error::ClosedBeforeHead(0).is_connection_error());
        assert!(!Error::InvalidHead("x".into()).is_connection_error());
        assert!(!Error::UnexpectedUpgrade.is_connection_error());
        assert!(!Error::InvalidContentLength("x".into()).is_connection_error());
    }

    #[test]
    fn which_answers_pass_on_as_they_came() {
        let verbatim = |head: &str, length, keep_alive| Peek::Verbatim {
            len: head.find("\r\n\r\n").expect("a whole head") + 4,
            status: StatusCode::from_bytes(&head.as_bytes()[9..12]).expect("a status code"),
            length,
            keep_alive,
            dated: head.to_ascii_lowercase().contains("\r\ndate:"),
        };
        let ok = "HTTP/1.1 200 OK\r\nX-Odd: a\r\nContent-Length: 5\r\n\r\nhello";
        let closing =
            "HTTP/1.1 404 Not Found\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n";
        let kept = "HTTP/1.1 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nok";
        let no_content = "HTTP/1.1 204 No Content\r\n\r\n";
        let not_modified = "HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n";
        let head_answer = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(verbatim_head(ok.as_bytes(), false), verbatim(ok, 5, true));
        // A bare LF anywhere in the head: parsed.
        for bare in [
            "HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok",
        ] {
            assert_eq!(
                verbatim_head(bare.as_bytes(), false),
                Peek::Other,
                "{bare:?}"
            );
        }
        assert_eq!(
            verbatim_head(closing.as_bytes(), false),
            verbatim(closing, 0, false)
        );
        assert_eq!(
            verbatim_head(kept.as_bytes(), false),
            verbatim(kept, 2, true)
        );
        assert_eq!(
            verbatim_head(no_content.as_bytes(), false),
            verbatim(no_content, 0, true)
        );
        assert_eq!(
            verbatim_head(not_modified.as_bytes(), false),
            verbatim(not_modified, 0, true)
        );
        assert_eq!(
            verbatim_head(head_answer.as_bytes(), true),
            verbatim(head_answer, 0, true),
            "a HEAD's answer: its length is the GET's, no body follows"
        );
        assert_eq!(verbatim_head(b"", false), Peek::Partial);
        assert_eq!(
            verbatim_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Peek::Partial
        );
        let fields = |n: usize| -> String { (0..n).map(|i| format!("x-{i}: v\r\n")).collect() };
        let room = format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
            fields(FEW_HEADERS - 1)
        );
        assert_eq!(
            verbatim_head(room.as_bytes(), false),
            verbatim(&room, 0, true),
            "as many fields as the first parse takes"
        );
        let head_unknown = "HTTP/1.1 200 OK\r\nETag: x\r\n\r\n";
        assert_eq!(
            verbatim_head(head_unknown.as_bytes(), true),
            verbatim(head_unknown, 0, true),
            "a HEAD's answer needs no length"
        );
        let not_modified_bare = "HTTP/1.1 304 Not Modified\r\n\r\n";
        assert_eq!(
            verbatim_head(not_modified_bare.as_bytes(), false),
            verbatim(not_modified_bare, 0, true)
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
            fields(FEW_HEADERS)
        );
        for (answer, why) in [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "chunked",
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", "read to the close"),
            ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "HTTP/1.0"),
            ("HTTP/1.1 100 Continue\r\n\r\n", "interim"),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "an upgrade"),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                "a 204's length goes",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                "two lengths",
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", "a list"),
            ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", "a sign"),
            (
                "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n",
                "another option",
            ),
            (
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
                "hop-by-hop",
            ),
            (
                "HTTP/1.1 200 OK\r\nProxy-Connection: x\r\nContent-Length: 0\r\n\r\n",
                "hop-by-hop",
            ),
            (
                "HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
                "hop-by-hop",
            ),
            (
                "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
                "hop-by-hop",
            ),
            (
                "HTTP/1.1 200 OK\r\nHawser-Upstream-Error: reset\r\nContent-Length: 0\r\n\r\n",
                "a node proxy's own",
            ),
            (many.as_str(), "more fields than the first parse takes"),
            ("HTTP/1.1 2x0 OK\r\n\r\n", "malformed"),
        ] {
            assert_eq!(
                verbatim_head(answer.as_bytes(), false),
                Peek::Other,
                "{why}"
            );
        }
    }

    /// A verbatim exchange of `request` with an upstream that checks it
    /// came as it was written, then answers `answer` (`None`: closes
    /// instead). The result, how often the connection was handed back, and
    /// the upstream's end (kept open).
    async fn verbatim_exchange(
        request: &str,
        answer: Option<&str>,
    ) -> (
        Result<Answer, Error>,
        Arc<AtomicUsize>,
        Option<DuplexStream>,
    ) {
        let (client, mut server) = duplex(4096);
        let handed = Arc::new(AtomicUsize::new(0));
        let count = handed.clone();
        let back: OnReusable<DuplexStream> = Box::new(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        let serve = async {
            assert_eq!(read_request(&mut server).await, request, "as it came");
            let answer = answer?;
            server.write_all(answer.as_bytes()).await.expect("answer");
            Some(server)
        };
        let head_request = request.starts_with("HEAD ");
        let exchange =
            Connection::new(client).exchange_verbatim(request.as_bytes(), head_request, back);
        let (got, server) = tokio::join!(exchange, serve);
        (got, handed, server)
    }

    #[tokio::test]
    async fn verbatim_exchanges_pass_both_heads_on_and_hand_the_connection_back() {
        let request = "GET /a HTTP/1.1\r\nHost: x\r\nX-Odd-Case: 1\r\n\r\n";
        let answer = "HTTP/1.1 200 OK\r\nX-Odd-Case: 2\r\nContent-Length: 5\r\n\r\nhello";
        let (got, handed, _server) = verbatim_exchange(request, Some(answer)).await;
        let Ok(Answer::Verbatim(got)) = got else {
            panic!("passed on as it came");
        };
        assert_eq!(&got.head[..], &answer.as_bytes()[..answer.len() - 5]);
        assert_eq!((got.length, got.close), (5, false));
        assert_eq!(handed.load(Ordering::SeqCst), 0, "not before its body");
        let body = got.body.collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(handed.load(Ordering::SeqCst), 1, "after its body");

        // A chunked answer is parsed; `Connection: close` keeps it from
        // being handed back.
        let chunked = "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (got, handed, _server) = verbatim_exchange(request, Some(chunked)).await;
        let Ok(Answer::Parsed(resp)) = got else {
            panic!("parsed");
        };
        assert_eq!(resp.headers()["connection"], "close");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(handed.load(Ordering::SeqCst), 0, "the upstream closes it");

        // A HEAD: no body after its head, handed back at once.
        let head_answer = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        let head = "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let (got, handed, _server) = verbatim_exchange(head, Some(head_answer)).await;
        let Ok(Answer::Verbatim(got)) = got else {
            panic!("passed on as it came");
        };
        assert_eq!((&got.head[..], got.length), (head_answer.as_bytes(), 0));
        assert!(got.body.is_end_stream());
        assert_eq!(handed.load(Ordering::SeqCst), 1, "handed back at once");

        // `Connection: close`, passed on: never handed back.
        let closing = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let (got, handed, _server) = verbatim_exchange(request, Some(closing)).await;
        let Ok(Answer::Verbatim(got)) = got else {
            panic!("passed on as it came");
        };
        assert_eq!((got.length, got.close), (2, true));
        let body = got.body.collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(handed.load(Ordering::SeqCst), 0, "the upstream closes it");

        // The upstream closes before answering: a connection error (which
        // a route may retry).
        match verbatim_exchange(request, None).await.0 {
            Err(e @ Error::ClosedBeforeHead(0)) => assert!(e.is_connection_error()),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("no answer, yet an answer"),
        }
    }
}
