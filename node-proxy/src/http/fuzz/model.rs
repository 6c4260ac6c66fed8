//! The reference the HTTP/1.1 code is held to. `httparse` reads heads (the
//! parser hyper, `h1.rs` and `serve.rs` all use: the model does not
//! second-guess head syntax, only what is built on it); everything
//! `httparse` leaves to its caller is written here from the RFCs,
//! independently of the code under test: how a message body is delimited
//! (RFC 9112 §6.3), the chunked coding (§7.1), when a connection carries
//! another message (§9.3), interim answers (RFC 9110 §15.2).
//!
//! Where the RFCs leave a recipient a choice, the model takes the reading no
//! recipient frames differently, and the code under test may also refuse:
//! - `Transfer-Encoding` beside `Content-Length` (§6.3 ¶3): the coding
//!   frames the message, and the connection closes after it.
//! - `Content-Length` repeated, or a list, of one value is that value (RFC
//!   9110 §8.6); differing values, a sign, any other byte, an empty
//!   element, an overflow of 64 bits: refused.
//! - `Transfer-Encoding` in HTTP/1.0 (§6.1): a request is refused; an
//!   answer's framing is [`Verdict::Unreliable`].
//! - Transfer codings are a list (RFC 9110 §5.6.1): empty elements are
//!   skipped, the last coding decides. For an answer whose last field read
//!   the way hyper reads it (its last comma-separated piece, of a value of
//!   visible ASCII only) is not `chunked` although the list ends with
//!   `chunked`, reading to the close is tolerated too
//!   ([`Response::or_close`]): the connection then ends with the answer, so
//!   nothing after it is misread.
//! - A chunk size is `1*HEXDIG`: any number of leading zeros, but a value
//!   that fits 64 bits. Spaces and tabs may follow it; extension bytes are
//!   skipped to the CRLF (any byte but CR and LF: none moves a boundary).
//!   Every chunk line, chunk data and trailer line ends with CRLF; a
//!   trailer line is a field line (a token, `:`, a value without controls).
//! - `Connection` options are read from values of visible ASCII only (as
//!   `http::HeaderValue::to_str` reads them).
//! - A request target is what `http::Uri` takes (the engines get a `Uri`),
//!   and is compared as it displays.

use http::Uri;

/// Most header fields a head may have (hyper's and `h1.rs`'s limit).
const MAX_FIELDS: usize = 100;

/// A header field as `httparse` read it.
type FieldLine = (String, Vec<u8>);

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    None,
    /// This many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the connection closes (answers only).
    Close,
}

/// A request as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) method: String,
    /// The request target as `http::Uri` displays it.
    pub(super) target: String,
    /// The minor version: HTTP/1.`version`.
    pub(super) version: u8,
    /// The body, decoded.
    pub(super) body: Vec<u8>,
}

/// Why the model stops reading requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// Every byte was read into requests.
    Clean,
    /// The bytes end inside a request: a server waits for the rest.
    Incomplete,
    /// A server must refuse the next request (`400`, or the connection
    /// closed), for this reason.
    Refused(&'static str),
    /// The connection closes after the last request (it asked to, or its
    /// framing was suspect): the bytes after it are not requests.
    Closed,
    /// The connection stops carrying HTTP/1.1 requests after the last one
    /// (`CONNECT`, `Upgrade`): the model says nothing about what follows.
    Opaque,
    /// The next request's body is refused for this reason, which hyper's
    /// server reads otherwise (a known divergence, [`TRAILER_BARE_LF`]):
    /// the request may be served, and the model says nothing after it.
    Lenient(&'static str),
}

/// A bare LF in a chunked body's trailer section. RFC 9112 §7.1.2 makes a
/// trailer line a field line, which has none; hyper's server reads trailer
/// lines to their CRLF, a bare LF being a byte of the line, and then parses
/// what it read with `httparse`, which takes the LF for a line end and
/// stops at the first empty line, ignoring what follows: after
/// `0\r\nX-T: 1\n\r\n`, the next request (to its empty line) is eaten as
/// trailers. A recipient that takes a bare LF for a line end (RFC 9112
/// §2.2 allows it) reads that request as a request. See
/// `requests::a_bare_lf_in_a_trailer_line_is_refused`.
pub(super) const TRAILER_BARE_LF: &str = "bare LF in a trailer section";

impl End {
    /// Why the model refuses the next request, if it does.
    pub(super) fn why(&self) -> Option<&'static str> {
        match self {
            Self::Refused(why) | Self::Lenient(why) => Some(why),
            Self::Clean | Self::Incomplete | Self::Closed | Self::Opaque => None,
        }
    }
}

/// What the model reads from a client's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Requests {
    /// The complete requests, in order.
    pub(super) requests: Vec<Request>,
    /// The method and target of the request after them, when the model
    /// stopped inside its body (a server may have started on it).
    pub(super) cut: Option<(String, String)>,
    pub(super) end: End,
}

impl Requests {
    fn ending(mut self, end: End) -> Self {
        self.end = end;
        self
    }
}

/// The requests in a client's bytes, pipelined one after another.
pub(super) fn requests(mut input: &[u8]) -> Requests {
    let mut read = Requests {
        requests: Vec::new(),
        cut: None,
        end: End::Clean,
    };
    while !input.is_empty() {
        let head = match request_head(input) {
            Ok(Some(head)) => head,
            Ok(None) => return read.ending(End::Incomplete),
            Err(why) => return read.ending(End::Refused(why)),
        };
        let (framing, suspect) = match request_framing(head.version, &head.fields) {
            Ok(framing) => framing,
            Err(why) => return read.ending(End::Refused(why)),
        };
        let rest = &input[head.len..];
        let (body, used) = match read_body(rest, framing) {
            Ok(body) => body,
            Err(end) => {
                read.cut = Some((head.method, head.target));
                let end = match end {
                    End::Refused(TRAILER_BARE_LF) => End::Lenient(TRAILER_BARE_LF),
                    end => end,
                };
                return read.ending(end);
            }
        };
        // RFC 9110 §7.8: an `Upgrade` in an HTTP/1.0 request is ignored.
        let opaque = head.method == "CONNECT"
            || (head.version == 1 && !values(&head.fields, "upgrade").is_empty());
        let persists = !suspect && persistent(head.version, &head.fields);
        read.requests.push(Request {
            method: head.method,
            target: head.target,
            version: head.version,
            body,
        });
        input = &rest[used..];
        if opaque {
            return read.ending(End::Opaque);
        }
        if !persists {
            return read.ending(End::Closed);
        }
    }
    read
}

/// A request head.
struct RequestHead {
    /// Its length in bytes, blank line included.
    len: usize,
    method: String,
    target: String,
    version: u8,
    fields: Vec<FieldLine>,
}

fn request_head(input: &[u8]) -> Result<Option<RequestHead>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("more header fields than taken"),
        Err(_) => return Err("malformed request head"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err("malformed request line");
    };
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err("invalid method");
    }
    let Ok(target) = target.parse::<Uri>() else {
        return Err("invalid request-target");
    };
    Ok(Some(RequestHead {
        len,
        method: method.to_owned(),
        target: target.to_string(),
        version,
        fields: owned(req.headers),
    }))
}

/// A request's framing, and whether it is suspect (the connection closes
/// after it).
fn request_framing(version: u8, fields: &[FieldLine]) -> Result<(Framing, bool), &'static str> {
    let codings = values(fields, "transfer-encoding");
    let lengths = values(fields, "content-length");
    if codings.is_empty() {
        let framing = content_length(&lengths)?.map_or(Framing::None, Framing::Length);
        return Ok((framing, false));
    }
    if version == 0 {
        return Err("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)");
    }
    if !is_chunked(last_coding(&codings)) {
        return Err("Transfer-Encoding without chunked last (RFC 9112 §6.3)");
    }
    Ok((Framing::Chunked, !lengths.is_empty()))
}

/// An answer as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    /// The final status (interim answers skipped).
    pub(super) status: u16,
    /// The body, decoded.
    pub(super) body: Vec<u8>,
    /// The body as read to the close, where that reading is tolerated
    /// instead of the chunked one (see the module docs).
    pub(super) or_close: Option<Vec<u8>>,
    /// The connection may carry another exchange after it.
    pub(super) keep_alive: bool,
    /// Its length in bytes, interim answers included.
    pub(super) len: usize,
}

/// What the model makes of an upstream's bytes up to its close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// One answer, maybe followed by bytes that are not part of it.
    Answer(Response),
    /// The bytes end inside the answer.
    Incomplete,
    /// No recipient may take it, for this reason.
    Refused(&'static str),
    /// Its framing cannot be relied on, for this reason: any reading, but
    /// the connection is not used again.
    Unreliable(&'static str),
}

impl Verdict {
    /// Why the model does not take the answer as it frames it, if so.
    pub(super) fn why(&self) -> Option<&'static str> {
        match self {
            Self::Refused(why) | Self::Unreliable(why) => Some(why),
            Self::Answer(_) | Self::Incomplete => None,
        }
    }
}

/// The answer at the front of `input`, to a `HEAD` if `head_request`; the
/// upstream closed the connection after `input`.
pub(super) fn response(input: &[u8], head_request: bool) -> Verdict {
    let mut at = 0;
    let head = loop {
        let head = match response_head(&input[at..]) {
            Ok(Some(head)) => head,
            Ok(None) => return Verdict::Incomplete,
            Err(why) => return Verdict::Refused(why),
        };
        at += head.len;
        match head.status {
            101 => {
                return Verdict::Refused(
                    "101 Switching Protocols to a request that asked for no upgrade",
                );
            }
            // Interim (RFC 9110 §15.2): the final answer follows.
            100..=199 => {}
            _ => break head,
        }
    };
    let rest = &input[at..];
    let codings = values(&head.fields, "transfer-encoding");
    let lengths = values(&head.fields, "content-length");
    let mut keep_alive = persistent(head.version, &head.fields);
    let mut or_close = false;
    let framing = if head_request || matches!(head.status, 204 | 304) {
        Framing::None
    } else if !codings.is_empty() {
        if head.version == 0 {
            return Verdict::Unreliable("Transfer-Encoding in an HTTP/1.0 answer (RFC 9112 §6.1)");
        }
        if !lengths.is_empty() {
            keep_alive = false;
        }
        if is_chunked(last_coding(&codings)) {
            or_close = !chunked_as_hyper_reads_it(&codings);
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match content_length(&lengths) {
            Ok(Some(length)) => Framing::Length(length),
            Ok(None) => Framing::Close,
            Err(why) => return Verdict::Refused(why),
        }
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    match read_body(rest, framing) {
        Ok((body, used)) => Verdict::Answer(Response {
            status: head.status,
            body,
            or_close: or_close.then(|| rest.to_vec()),
            keep_alive,
            len: at + used,
        }),
        Err(End::Refused(why)) => Verdict::Refused(why),
        Err(_) => Verdict::Incomplete,
    }
}

/// An answer head.
struct ResponseHead {
    len: usize,
    version: u8,
    status: u16,
    fields: Vec<FieldLine>,
}

fn response_head(input: &[u8]) -> Result<Option<ResponseHead>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("more header fields than taken"),
        Err(_) => return Err("malformed answer head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err("malformed status line");
    };
    if status < 100 {
        return Err("status code below 100 (RFC 9110 §15)");
    }
    Ok(Some(ResponseHead {
        len,
        version,
        status,
        fields: owned(resp.headers),
    }))
}

/// Whether the last `Transfer-Encoding` field, read as hyper (and `h1.rs`)
/// read it, says `chunked`: its last comma-separated piece, empty or not,
/// of a value of visible ASCII only.
fn chunked_as_hyper_reads_it(codings: &[&[u8]]) -> bool {
    codings.last().is_some_and(|value| {
        visible_ascii(value)
            && value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|coding| trim_ows(coding).eq_ignore_ascii_case(b"chunked"))
    })
}

/// The body after a head: its bytes and how many of `rest` it took, or
/// where the model stops ([`End::Incomplete`], [`End::Refused`]).
fn read_body(rest: &[u8], framing: Framing) -> Result<(Vec<u8>, usize), End> {
    match framing {
        Framing::None => Ok((Vec::new(), 0)),
        Framing::Close => Ok((rest.to_vec(), rest.len())),
        Framing::Length(length) => match usize::try_from(length) {
            Ok(length) if length <= rest.len() => Ok((rest[..length].to_vec(), length)),
            _ => Err(End::Incomplete),
        },
        Framing::Chunked => match chunked(rest) {
            Ok(chunked) => Ok((chunked.data, chunked.len)),
            Err(ChunkError::Partial) => Err(End::Incomplete),
            Err(ChunkError::Invalid(why)) => Err(End::Refused(why)),
        },
    }
}

/// The one `Content-Length` of a message's values (RFC 9110 §8.6):
/// `None` without any.
pub(super) fn content_length(values: &[&[u8]]) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let n = decimal(trim_ows(part))
                .ok_or("Content-Length is not one decimal number (RFC 9110 §8.6)")?;
            if length.is_some_and(|l| l != n) {
                return Err("Content-Length values differ (RFC 9110 §8.6)");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// `1*DIGIT` that fits 64 bits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The last transfer coding of a message's `Transfer-Encoding` values, a
/// list whose empty elements do not count (RFC 9110 §5.6.1).
fn last_coding<'v>(values: &[&'v [u8]]) -> Option<&'v [u8]> {
    values
        .iter()
        .copied()
        .flat_map(|value: &'v [u8]| value.split(|&b| b == b','))
        .map(trim_ows)
        .rfind(|coding| !coding.is_empty())
}

fn is_chunked(coding: Option<&[u8]>) -> bool {
    coding.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// Whether the connection carries another message after this one (RFC 9112
/// §9.3): HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`.
fn persistent(version: u8, fields: &[FieldLine]) -> bool {
    let options: Vec<&[u8]> = values(fields, "connection")
        .into_iter()
        .filter(|value| visible_ascii(value))
        .flat_map(|value| value.split(|&b| b == b','))
        .map(trim_ows)
        .collect();
    let has = |option: &[u8]| options.iter().any(|o| o.eq_ignore_ascii_case(option));
    !has(&b"close"[..]) && (version == 1 || has(&b"keep-alive"[..]))
}

/// The values of the fields named `name`, in order.
fn values<'f>(fields: &'f [FieldLine], name: &str) -> Vec<&'f [u8]> {
    fields
        .iter()
        .filter(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_slice())
        .collect()
}

fn owned(fields: &[httparse::Header<'_>]) -> Vec<FieldLine> {
    fields
        .iter()
        .map(|field| (field.name.to_owned(), field.value.to_vec()))
        .collect()
}

/// What `http::HeaderValue::to_str` takes: visible ASCII, spaces and tabs.
fn visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Without the optional whitespace (spaces, tabs) at either end.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Why a chunked body was not read.
#[derive(Debug)]
enum ChunkError {
    /// It needs bytes after the input.
    Partial,
    /// It is malformed, for this reason.
    Invalid(&'static str),
}

/// A chunked body read: its data, and its length on the wire.
struct Chunked {
    data: Vec<u8>,
    len: usize,
}

/// A chunked body (RFC 9112 §7.1) at the front of `input`.
fn chunked(input: &[u8]) -> Result<Chunked, ChunkError> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let (size, line) = chunk_line(&input[at..])?;
        at += line;
        if size == 0 {
            break;
        }
        let rest = &input[at..];
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= rest.len())
            .ok_or(ChunkError::Partial)?;
        data.extend_from_slice(&rest[..size]);
        at += size;
        at += crlf(&input[at..], "chunk data not followed by CRLF")?;
    }
    at += trailers(&input[at..])?;
    Ok(Chunked { data, len: at })
}

/// A chunk-size line: the size, and the line's length with its CRLF.
fn chunk_line(line: &[u8]) -> Result<(u64, usize), ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == line.len() {
        return Err(ChunkError::Partial);
    }
    if digits == 0 {
        return Err(ChunkError::Invalid("chunk size is not hexadecimal"));
    }
    let size = line[..digits]
        .iter()
        .try_fold(0u64, |n, &b| {
            let digit = char::from(b).to_digit(16)?;
            n.checked_mul(16)?.checked_add(u64::from(digit))
        })
        .ok_or(ChunkError::Invalid("chunk size does not fit 64 bits"))?;
    let mut at = digits
        + line[digits..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    if line.get(at) == Some(&b';') {
        at += line[at..]
            .iter()
            .take_while(|&&b| b != b'\r' && b != b'\n')
            .count();
    }
    let end = crlf(&line[at..], "chunk-size line not ended by CRLF")?;
    Ok((size, at + end))
}

/// The trailer section after the last chunk, up to and with its blank
/// line: its length. Lines end with CRLF; each is a field line.
fn trailers(input: &[u8]) -> Result<usize, ChunkError> {
    let mut at = 0;
    loop {
        let rest = &input[at..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Err(if rest.contains(&b'\n') {
                ChunkError::Invalid(TRAILER_BARE_LF)
            } else {
                ChunkError::Partial
            });
        };
        let line = &rest[..end];
        if line.is_empty() {
            return Ok(at + 2);
        }
        if line.contains(&b'\n') {
            return Err(ChunkError::Invalid(TRAILER_BARE_LF));
        }
        if line.contains(&b'\r') {
            return Err(ChunkError::Invalid("bare CR in a trailer section"));
        }
        let name = line.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 || line.get(name) != Some(&b':') {
            return Err(ChunkError::Invalid("malformed trailer field"));
        }
        if line[name + 1..]
            .iter()
            .any(|&b| b != b'\t' && (b < b' ' || b == 0x7f))
        {
            return Err(ChunkError::Invalid("control character in a trailer field"));
        }
        at += end + 2;
    }
}

/// CRLF at the front of `rest`: its length.
fn crlf(rest: &[u8], why: &'static str) -> Result<usize, ChunkError> {
    match rest {
        [b'\r', b'\n', ..] => Ok(2),
        [] | [b'\r'] => Err(ChunkError::Partial),
        _ => Err(ChunkError::Invalid(why)),
    }
}

/// A `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The model itself, on the textbook cases (the properties compare the
/// code with it, so it is checked on its own first).
#[cfg(test)]
mod tests {
    use super::*;

    fn reading(wire: &str) -> Requests {
        requests(wire.as_bytes())
    }

    fn bodies(read: &Requests) -> Vec<&[u8]> {
        read.requests.iter().map(|r| r.body.as_slice()).collect()
    }

    #[test]
    fn requests_are_framed_per_rfc_9112() {
        let read = reading(
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
             POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
             3;x=1\r\nabc\r\n000\r\nX-T: 1\r\n\r\n",
        );
        assert_eq!(read.end, End::Clean);
        assert_eq!(bodies(&read), [&b""[..], b"abc", b"abc"]);
        assert_eq!(read.requests[2].target, "/c");

        // Both framings: chunked, then the connection closes.
        let read = reading(
            "POST / HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        );
        assert_eq!(bodies(&read), [&b""[..]]);
        assert_eq!(read.end, End::Closed);

        for refused in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1,\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        ] {
            assert!(
                matches!(reading(refused).end, End::Refused(_)),
                "{refused:?}"
            );
        }
        // Listed and repeated lengths of one value are that value.
        let read =
            reading("POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(bodies(&read), [&b"ab"[..]]);
        assert_eq!(read.end, End::Clean);
    }

    #[test]
    fn chunked_bodies_are_read_per_rfc_9112() {
        let ok = |body: &str| chunked(body.as_bytes()).map(|c| (c.data, c.len)).ok();
        assert_eq!(
            ok("0000000000000000005 \r\nhello\r\n0\r\n\r\nrest"),
            Some((b"hello".to_vec(), 34))
        );
        assert!(ok("10000000000000000\r\n").is_none(), "2^64 overflows");
        assert!(ok("5\nhello\r\n0\r\n\r\n").is_none(), "bare LF");
        assert!(
            ok("5;a\nb\r\nhello\r\n0\r\n\r\n").is_none(),
            "bare LF in an extension"
        );
        assert!(
            ok("5\r\nhelloX\r\n0\r\n\r\n").is_none(),
            "data not ended by CRLF"
        );
        assert!(
            ok("0\r\nX-T: a\nb\r\n\r\n").is_none(),
            "bare LF in a trailer"
        );
        assert!(matches!(chunked(b"5\r\nhel"), Err(ChunkError::Partial)));
    }

    #[test]
    fn answers_are_framed_per_rfc_9112() {
        let answer = |wire: &str, head: bool| match response(wire.as_bytes(), head) {
            Verdict::Answer(r) => Some((r.status, r.body, r.keep_alive, r.len)),
            _ => None,
        };
        assert_eq!(
            answer(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX",
                false
            ),
            Some((200, b"ok".to_vec(), true, 65))
        );
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Some((200, Vec::new(), true, 38))
        );
        assert_eq!(
            answer(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz",
                false
            ),
            Some((200, b"zz".to_vec(), false, 46))
        );
        assert_eq!(
            answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false
            ),
            Some((200, b"ok".to_vec(), false, 78))
        );
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", false),
            None
        );
        assert!(matches!(
            response(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Verdict::Unreliable(_)
        ));
        let Verdict::Answer(odd) = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        ) else {
            panic!("an answer");
        };
        assert_eq!(odd.body, b"ok");
        assert_eq!(odd.or_close.as_deref(), Some(&b"2\r\nok\r\n0\r\n\r\n"[..]));
    }
}
