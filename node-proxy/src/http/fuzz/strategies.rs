//! Generated HTTP/1.1 traffic: requests and answers built from parts that
//! include the request-smuggling shapes (`Content-Length` beside
//! `Transfer-Encoding`, repeated, listed or signed lengths, codings with
//! `chunked` not last, look-alike field names, obs-fold, bare CR and LF,
//! NUL, overlong and overflowing chunk sizes, a second message after a
//! body), byte-level mutations of them, the pieces they arrive in, and the
//! engine's own answers. Well-formed variants are generated too: those must
//! get through whole, not just safely.
//!
//! Generated values are the parts (shown by proptest when a case fails, and
//! shrunk part by part); `render` makes the bytes.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// A line ending as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Eol {
    CrLf,
    /// A bare LF (RFC 9112 §2.2 lets a recipient take it for CRLF).
    Lf,
    /// A bare CR (never a line ending).
    Cr,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Self::CrLf => b"\r\n",
            Self::Lf => b"\n",
            Self::Cr => b"\r",
        }
    }
}

/// CRLF; now and then a bare LF or a bare CR.
fn eol() -> impl Strategy<Value = Eol> {
    prop_oneof![
        30 => Just(Eol::CrLf),
        1 => Just(Eol::Lf),
        1 => Just(Eol::Cr),
    ]
}

/// What a `Content-Length` field says, for a body of some length.
#[derive(Debug, Clone, Copy)]
pub(super) enum Length {
    /// The body's length.
    Exact,
    /// The body's length plus this (never below 0).
    Off(i8),
    /// `n, n`.
    Listed,
    /// `+n`.
    Signed,
    /// `00n`.
    Padded,
    /// This text.
    Text(&'static str),
}

impl Length {
    /// The field's value for a body of `body` bytes.
    pub(super) fn render(self, body: usize) -> String {
        match self {
            Self::Exact => body.to_string(),
            Self::Off(delta) => body.saturating_add_signed(isize::from(delta)).to_string(),
            Self::Listed => format!("{body}, {body}"),
            Self::Signed => format!("+{body}"),
            Self::Padded => format!("00{body}"),
            Self::Text(text) => text.to_owned(),
        }
    }
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        8 => Just(Length::Exact),
        3 => (-3i8..=3).prop_map(Length::Off),
        1 => Just(Length::Listed),
        1 => Just(Length::Signed),
        1 => Just(Length::Padded),
        2 => select(LENGTH_TEXTS).prop_map(Length::Text),
    ]
}

/// `Content-Length` values that are not one plain number.
const LENGTH_TEXTS: &[&str] = &[
    "abc",
    "-1",
    "0x5",
    "5 5",
    "5,6",
    "1.0",
    "",
    "99999999999999999999",
    "18446744073709551615",
    "4294967297",
];

/// Spellings of `Content-Length`, and look-alikes that are not it (a space
/// before the colon, an underscore, a leading space: obs-fold).
const LENGTH_NAMES: &[&str] = &[
    "Content-Length",
    "Content-Length",
    "Content-Length",
    "content-length",
    "CONTENT-LENGTH",
    "Content-Length ",
    "Content_Length",
    " Content-Length",
];

/// The same for `Transfer-Encoding`.
const CODING_NAMES: &[&str] = &[
    "Transfer-Encoding",
    "Transfer-Encoding",
    "Transfer-Encoding",
    "transfer-encoding",
    "TRANSFER-ENCODING",
    "Transfer-Encoding ",
    "Transfer_Encoding",
    " Transfer-Encoding",
];

/// `Transfer-Encoding` values: chunked, chunked last or not, lists with
/// empty elements, look-alikes, controls and non-ASCII.
const CODINGS: &[&[u8]] = &[
    b"chunked",
    b"chunked",
    b"chunked",
    b"Chunked",
    b"CHUNKED",
    b"chunked, identity",
    b"identity, chunked",
    b"gzip, chunked",
    b"chunked, chunked",
    b"chunked,",
    b", chunked",
    b"chunked;q=1",
    b"xchunked",
    b"identity",
    b"gzip",
    b"",
    b"\"chunked\"",
    b"chunked\x0b",
    b"chunked\xff",
    b"\xff, chunked",
];

/// Whole lines (some are two: obs-fold), for requests and answers alike.
const RAW_LINES: &[&[u8]] = &[
    b"Host: svc",
    b"Host: svc",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Keep-Alive, close",
    b"Connection: close, x-hop",
    b"Connection: upgrade",
    b"Expect: 100-continue",
    b"TE: trailers",
    b"Upgrade: h2c",
    b"Transfer-Encoding:\r\n chunked",
    b"Content-Length:\r\n\t5",
    b"X-Folded: a\r\n b",
    b"Transfer-Encoding : chunked",
    b"Content-Length\t: 0",
    b"X-Nul: a\0b",
    b"X-Cr: a\rb",
    b"X-Lf: a\nTransfer-Encoding: chunked",
    b"Transfer-Encoding\0: chunked",
    b": no-name",
    b"X-Empty:",
    b"Keep-Alive: timeout=5",
    b"Proxy-Connection: keep-alive",
    b"Hawser-Upstream-Error: reset",
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT",
];

/// A header field line (or two) of a generated head.
#[derive(Debug, Clone)]
pub(super) enum Field {
    /// A `Content-Length` (or look-alike) named `name`.
    Length { name: &'static str, value: Length },
    /// A `Transfer-Encoding` (or look-alike) named `name`.
    Coding {
        name: &'static str,
        value: &'static [u8],
    },
    /// Lines as they are.
    Raw(&'static [u8]),
    /// Any other field.
    Other { name: String, value: Vec<u8> },
}

impl Field {
    /// Appends the field's line(s), without the last line end, for a
    /// message whose body has `body` bytes.
    fn render(&self, body: usize, out: &mut Vec<u8>) {
        match self {
            Self::Length { name, value } => {
                put_field(out, name.as_bytes(), value.render(body).as_bytes());
            }
            Self::Coding { name, value } => put_field(out, name.as_bytes(), value),
            Self::Raw(line) => out.extend_from_slice(line),
            Self::Other { name, value } => put_field(out, name.as_bytes(), value),
        }
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (select(LENGTH_NAMES), length())
            .prop_map(|(name, value)| Field::Length { name, value }),
        4 => (select(CODING_NAMES), select(CODINGS))
            .prop_map(|(name, value)| Field::Coding { name, value }),
        3 => select(RAW_LINES).prop_map(Field::Raw),
        2 => ("[A-Za-z][A-Za-z0-9-]{0,8}", field_value())
            .prop_map(|(name, value)| Field::Other { name, value }),
    ]
}

/// Mostly printable; now and then any bytes.
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => "[ -~]{0,12}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..8),
    ]
}

/// Body bytes: opaque, but with what heads and chunks are made of.
const BODY_BYTES: &[u8] = b"abcxyz0129 \r\n:;GET/";

/// Bodies that look like more messages.
const BODY_TEXTS: &[&[u8]] = &[
    b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
];

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(select(BODY_BYTES), 0..24),
        1 => select(BODY_TEXTS).prop_map(<[u8]>::to_vec),
    ]
}

/// How a chunk's size is written, for data of some length.
#[derive(Debug, Clone, Copy)]
pub(super) enum SizeText {
    Lower,
    Upper,
    /// With this many leading zeros (past 16 digits: an overlong size).
    Zeros(u8),
    /// The length plus this (never below 0): a size that lies.
    Off(i8),
    /// 2^64 plus the length: 17 hex digits, too large for 64 bits.
    Overflow,
    /// Followed by a space.
    Spaced,
    /// `+n`.
    Signed,
    /// `0xn`.
    Prefixed,
}

impl SizeText {
    fn render(self, n: usize) -> String {
        match self {
            Self::Lower => format!("{n:x}"),
            Self::Upper => format!("{n:X}"),
            Self::Zeros(zeros) => format!("{}{n:x}", "0".repeat(usize::from(zeros))),
            Self::Off(delta) => format!("{:x}", n.saturating_add_signed(isize::from(delta))),
            Self::Overflow => format!("1{n:016x}"),
            Self::Spaced => format!("{n:x} "),
            Self::Signed => format!("+{n:x}"),
            Self::Prefixed => format!("0x{n:x}"),
        }
    }
}

fn size_text() -> impl Strategy<Value = SizeText> {
    prop_oneof![
        12 => Just(SizeText::Lower),
        2 => Just(SizeText::Upper),
        2 => (1u8..20).prop_map(SizeText::Zeros),
        1 => (-2i8..=2).prop_map(SizeText::Off),
        1 => Just(SizeText::Overflow),
        1 => Just(SizeText::Spaced),
        1 => Just(SizeText::Signed),
        1 => Just(SizeText::Prefixed),
    ]
}

/// Chunk extensions, with controls and line ends in some.
const EXTENSIONS: &[&[u8]] = &[
    b";a=1",
    b"; a=\"b c\"",
    b";",
    b" ;x",
    b";a\0b",
    b";a\rb",
    b";a\nb",
    b";\x7f",
    b";\xff",
];

/// Trailer lines, malformed in some.
const TRAILERS: &[&[u8]] = &[
    b"X-T: 1",
    b"Grpc-Status: 0",
    b"X-T: a\nb",
    b"X-T: a\rb",
    b"X-T : 1",
    b" folded",
    b"Content-Length: 5",
    b"Transfer-Encoding: chunked",
    b"X-T: \0",
];

/// One chunk of a chunked body.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    data: Vec<u8>,
    size: SizeText,
    ext: Option<&'static [u8]>,
    size_end: Eol,
    data_end: Eol,
}

/// A chunked body.
#[derive(Debug, Clone)]
pub(super) struct Chunked {
    chunks: Vec<Chunk>,
    /// How the last chunk's size (0) is written.
    last: SizeText,
    last_ext: Option<&'static [u8]>,
    last_end: Eol,
    trailers: Vec<(&'static [u8], Eol)>,
    end: Eol,
}

impl Chunked {
    fn render(&self, out: &mut Vec<u8>) {
        for chunk in &self.chunks {
            out.extend_from_slice(chunk.size.render(chunk.data.len()).as_bytes());
            out.extend_from_slice(chunk.ext.unwrap_or_default());
            out.extend_from_slice(chunk.size_end.bytes());
            out.extend_from_slice(&chunk.data);
            out.extend_from_slice(chunk.data_end.bytes());
        }
        out.extend_from_slice(self.last.render(0).as_bytes());
        out.extend_from_slice(self.last_ext.unwrap_or_default());
        out.extend_from_slice(self.last_end.bytes());
        for (line, end) in &self.trailers {
            out.extend_from_slice(line);
            out.extend_from_slice(end.bytes());
        }
        out.extend_from_slice(self.end.bytes());
    }
}

fn chunked() -> impl Strategy<Value = Chunked> {
    let chunk = (
        vec(select(BODY_BYTES), 1..12),
        size_text(),
        option::weighted(0.15, select(EXTENSIONS)),
        eol(),
        eol(),
    )
        .prop_map(|(data, size, ext, size_end, data_end)| Chunk {
            data,
            size,
            ext,
            size_end,
            data_end,
        });
    (
        vec(chunk, 0..4),
        size_text(),
        option::weighted(0.1, select(EXTENSIONS)),
        eol(),
        vec((select(TRAILERS), eol()), 0..2),
        eol(),
    )
        .prop_map(
            |(chunks, last, last_ext, last_end, trailers, end)| Chunked {
                chunks,
                last,
                last_ext,
                last_end,
                trailers,
                end,
            },
        )
}

/// A message body as sent.
#[derive(Debug, Clone)]
pub(super) enum Payload {
    Plain(Vec<u8>),
    Chunked(Chunked),
}

impl Payload {
    fn render(&self) -> Vec<u8> {
        match self {
            Self::Plain(bytes) => bytes.clone(),
            Self::Chunked(chunked) => {
                let mut out = Vec::new();
                chunked.render(&mut out);
                out
            }
        }
    }
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        3 => body_bytes().prop_map(Payload::Plain),
        2 => chunked().prop_map(Payload::Chunked),
    ]
}

/// Empty lines before a start line (RFC 9112 §2.2 lets a server skip them).
fn blank_lines() -> impl Strategy<Value = Vec<Eol>> {
    prop_oneof![
        24 => Just(Vec::new()),
        1 => vec(eol(), 1..3),
    ]
}

const METHODS: &[&str] = &[
    "GET", "GET", "HEAD", "POST", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "CONNECT",
];

const TARGETS: &[&str] = &[
    "/",
    "/a",
    "/a/b?x=1&y=%20",
    "/%2e%2e/admin",
    "/a#frag",
    "*",
    "http://svc/a",
    "svc:80",
    "/a b",
    "/caf\u{e9}",
];

const REQUEST_VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2.0",
];

/// A request as generated.
#[derive(Debug, Clone)]
pub(super) struct RequestSpec {
    blank_lines: Vec<Eol>,
    method: &'static str,
    target: &'static str,
    version: &'static str,
    line_end: Eol,
    fields: Vec<(Field, Eol)>,
    end: Eol,
    payload: Payload,
}

impl RequestSpec {
    /// Appends the request's bytes.
    pub(super) fn render(&self, out: &mut Vec<u8>) {
        let body = self.payload.render();
        for blank in &self.blank_lines {
            out.extend_from_slice(blank.bytes());
        }
        out.extend_from_slice(
            format!("{} {} {}", self.method, self.target, self.version).as_bytes(),
        );
        out.extend_from_slice(self.line_end.bytes());
        for (field, end) in &self.fields {
            field.render(body.len(), out);
            out.extend_from_slice(end.bytes());
        }
        out.extend_from_slice(self.end.bytes());
        out.extend_from_slice(&body);
    }
}

/// Any request: the smuggling shapes among well-formed parts.
pub(super) fn request() -> impl Strategy<Value = RequestSpec> {
    (
        blank_lines(),
        select(METHODS),
        select(TARGETS),
        select(REQUEST_VERSIONS),
        eol(),
        vec((field(), eol()), 0..6),
        eol(),
        payload(),
    )
        .prop_map(
            |(blank_lines, method, target, version, line_end, fields, end, payload)| RequestSpec {
                blank_lines,
                method,
                target,
                version,
                line_end,
                fields,
                end,
                payload,
            },
        )
}

/// How a well-formed message's body is framed.
#[derive(Debug, Clone, Copy)]
enum Framed {
    /// No body (requests).
    Not,
    Length,
    Chunked,
    /// Until the close (answers).
    Close,
}

impl Framed {
    /// The field that frames it, if any.
    fn field(self) -> Option<Field> {
        match self {
            Self::Length => Some(Field::Length {
                name: "Content-Length",
                value: Length::Exact,
            }),
            Self::Chunked => Some(Field::Coding {
                name: "Transfer-Encoding",
                value: b"chunked",
            }),
            Self::Not | Self::Close => None,
        }
    }
}

const WELL_FORMED_SIZES: &[SizeText] = &[
    SizeText::Lower,
    SizeText::Upper,
    SizeText::Zeros(1),
    SizeText::Zeros(3),
];

const WELL_FORMED_TRAILERS: &[&[u8]] = &[b"X-T: 1", b"Grpc-Status: 0"];

fn well_formed_chunked() -> impl Strategy<Value = Chunked> {
    let chunk = (
        vec(select(BODY_BYTES), 1..12),
        select(WELL_FORMED_SIZES),
        option::weighted(0.2, Just(&b";a=1"[..])),
    )
        .prop_map(|(data, size, ext)| Chunk {
            data,
            size,
            ext,
            size_end: Eol::CrLf,
            data_end: Eol::CrLf,
        });
    (vec(chunk, 0..4), vec(select(WELL_FORMED_TRAILERS), 0..2)).prop_map(|(chunks, trailers)| {
        Chunked {
            chunks,
            last: SizeText::Lower,
            last_ext: None,
            last_end: Eol::CrLf,
            trailers: trailers.into_iter().map(|line| (line, Eol::CrLf)).collect(),
            end: Eol::CrLf,
        }
    })
}

/// A well-formed body: `none` is how a message without one is framed.
fn well_formed_payload(none: Framed) -> impl Strategy<Value = (Framed, Payload)> {
    let plain = vec(select(BODY_BYTES), 0..24);
    prop_oneof![
        plain.clone().prop_map(move |bytes| (
            none,
            Payload::Plain(match none {
                Framed::Not => Vec::new(),
                _ => bytes,
            })
        )),
        plain.prop_map(|bytes| (Framed::Length, Payload::Plain(bytes))),
        well_formed_chunked().prop_map(|chunked| (Framed::Chunked, Payload::Chunked(chunked))),
    ]
}

const WELL_FORMED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

const WELL_FORMED_TARGETS: &[&str] = &["/", "/a", "/a/b?x=1&y=%20", "/%2e%2e/admin", "/a;b=c"];

const WELL_FORMED_FIELDS: &[&[u8]] = &[
    b"Accept: */*",
    b"X-Trace: a",
    b"Connection: keep-alive",
    b"User-Agent: fuzz/1.0",
];

/// A request every parser reads alike: HTTP/1.1, CRLF, one framing field
/// that tells the truth, and the connection kept.
pub(super) fn well_formed_request() -> impl Strategy<Value = RequestSpec> {
    (
        select(WELL_FORMED_METHODS),
        select(WELL_FORMED_TARGETS),
        well_formed_payload(Framed::Not),
        vec(select(WELL_FORMED_FIELDS), 0..3),
    )
        .prop_map(|(method, target, (framed, payload), extra)| {
            let mut fields = vec![(Field::Raw(b"Host: svc"), Eol::CrLf)];
            fields.extend(extra.into_iter().map(|line| (Field::Raw(line), Eol::CrLf)));
            fields.extend(framed.field().map(|field| (field, Eol::CrLf)));
            RequestSpec {
                blank_lines: Vec::new(),
                method,
                target,
                version: "HTTP/1.1",
                line_end: Eol::CrLf,
                fields,
                end: Eol::CrLf,
                payload,
            }
        })
}

const RESPONSE_VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2",
];

const STATUSES: &[&str] = &[
    "200 OK",
    "200 OK",
    "200 OK",
    "200",
    "200 Fine Thanks",
    "201 Created",
    "204 No Content",
    "206 Partial Content",
    "304 Not Modified",
    "404 Not Found",
    "500 Internal Server Error",
    "599 Odd",
    "600 High",
    "101 Switching Protocols",
    "099 Low",
    "2000 OK",
];

/// Interim answers before the final one.
const INTERIM: &[&[u8]] = &[
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
];

/// Bytes after the answer: nothing, a CRLF, a second (smuggled) answer.
const TRAILING: &[&[u8]] = &[
    b"",
    b"",
    b"",
    b"\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled!",
    b"x",
];

/// An answer as generated.
#[derive(Debug, Clone)]
pub(super) struct ResponseSpec {
    blank_lines: Vec<Eol>,
    interim: Vec<&'static [u8]>,
    version: &'static str,
    status: &'static str,
    line_end: Eol,
    fields: Vec<(Field, Eol)>,
    end: Eol,
    payload: Payload,
    trailing: &'static [u8],
}

impl ResponseSpec {
    /// The answer's bytes; `omit_body`: without its body's bytes (its
    /// framing fields still describe them: an answer to `HEAD`, a `304`).
    pub(super) fn render(&self, omit_body: bool) -> Vec<u8> {
        let body = self.payload.render();
        let mut out = Vec::new();
        for blank in &self.blank_lines {
            out.extend_from_slice(blank.bytes());
        }
        for interim in &self.interim {
            out.extend_from_slice(interim);
        }
        out.extend_from_slice(format!("{} {}", self.version, self.status).as_bytes());
        out.extend_from_slice(self.line_end.bytes());
        for (field, end) in &self.fields {
            field.render(body.len(), &mut out);
            out.extend_from_slice(end.bytes());
        }
        out.extend_from_slice(self.end.bytes());
        if !omit_body {
            out.extend_from_slice(&body);
        }
        out.extend_from_slice(self.trailing);
        out
    }

    /// Whether a well-formed answer of this status, to a `HEAD` if `head`,
    /// has no body bytes.
    pub(super) fn bodyless(&self, head: bool) -> bool {
        head || self.status.starts_with("204") || self.status.starts_with("304")
    }
}

fn interim() -> impl Strategy<Value = Vec<&'static [u8]>> {
    prop_oneof![
        10 => Just(Vec::new()),
        1 => vec(select(INTERIM), 1..3),
    ]
}

/// Any answer: the smuggling shapes among well-formed parts.
pub(super) fn response() -> impl Strategy<Value = ResponseSpec> {
    (
        blank_lines(),
        interim(),
        select(RESPONSE_VERSIONS),
        select(STATUSES),
        eol(),
        vec((field(), eol()), 0..6),
        eol(),
        payload(),
        select(TRAILING),
    )
        .prop_map(
            |(blank_lines, interim, version, status, line_end, fields, end, payload, trailing)| {
                ResponseSpec {
                    blank_lines,
                    interim,
                    version,
                    status,
                    line_end,
                    fields,
                    end,
                    payload,
                    trailing,
                }
            },
        )
}

const WELL_FORMED_STATUSES: &[&str] = &[
    "200 OK",
    "200 OK",
    "201 Created",
    "204 No Content",
    "206 Partial Content",
    "304 Not Modified",
    "404 Not Found",
    "503 Service Unavailable",
];

/// An answer every parser reads alike: HTTP/1.1, CRLF, framed by one
/// truthful field or by the close, nothing after it. Rendered with
/// [`ResponseSpec::bodyless`], its body is left out where it has none.
pub(super) fn well_formed_response() -> impl Strategy<Value = ResponseSpec> {
    (
        select(WELL_FORMED_STATUSES),
        well_formed_payload(Framed::Close),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(status, (framed, payload), dated, closing)| {
            let mut fields = Vec::new();
            if dated {
                fields.push((
                    Field::Raw(b"Date: Mon, 01 Jan 2024 00:00:00 GMT"),
                    Eol::CrLf,
                ));
            }
            if closing {
                fields.push((Field::Raw(b"Connection: close"), Eol::CrLf));
            }
            // A 204 has neither a body nor a field about one.
            let (framed, payload) = if status.starts_with("204") {
                (Framed::Close, Payload::Plain(Vec::new()))
            } else {
                (framed, payload)
            };
            fields.extend(framed.field().map(|field| (field, Eol::CrLf)));
            ResponseSpec {
                blank_lines: Vec::new(),
                interim: Vec::new(),
                version: "HTTP/1.1",
                status,
                line_end: Eol::CrLf,
                fields,
                end: Eol::CrLf,
                payload,
                trailing: b"",
            }
        })
}

/// A byte-level change to rendered bytes.
#[derive(Debug, Clone)]
pub(super) enum Mutation {
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    /// The next (up to) `n` bytes, once more.
    Repeat(Index, u8),
}

/// Bytes mutations put in: line ends, NUL, separators, digits, signs,
/// controls, non-ASCII.
const INTERESTING: &[u8] = b"\r\n\0 \t:,;0aG-+\x0b\x7f\x80\xff";

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), select(INTERESTING)).prop_map(|(at, b)| Mutation::Set(at, b)),
        3 => (any::<Index>(), select(INTERESTING)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1u8..16).prop_map(|(at, n)| Mutation::Repeat(at, n)),
    ]
}

/// None a third of the time, else a few.
pub(super) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => vec(mutation(), 1..4),
    ]
}

/// Applies `mutations` to `wire`, in order.
pub(super) fn mutate(wire: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        if wire.is_empty() {
            return;
        }
        match *mutation {
            Mutation::Set(at, b) => {
                let at = at.index(wire.len());
                wire[at] = b;
            }
            Mutation::Insert(at, b) => wire.insert(at.index(wire.len() + 1), b),
            Mutation::Remove(at) => {
                wire.remove(at.index(wire.len()));
            }
            Mutation::Truncate(at) => wire.truncate(at.index(wire.len())),
            Mutation::Repeat(at, n) => {
                let at = at.index(wire.len());
                let end = (at + usize::from(n)).min(wire.len());
                let again = wire[at..end].to_vec();
                let tail = wire.split_off(end);
                wire.extend_from_slice(&again);
                wire.extend_from_slice(&tail);
            }
        }
    }
}

/// How many bytes arrive at a time: all at once, byte by byte, or a few.
pub(super) fn piece() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => Just(usize::MAX),
        1 => 1usize..8,
        1 => 8usize..256,
    ]
}

/// A field of an engine's own answer.
#[derive(Debug, Clone)]
pub(super) enum EngineField {
    /// `content-length`.
    Length(Length),
    /// Another field (framing and connection fields among them).
    Other(&'static str, &'static str),
}

/// An answer the engine gives `serve` to write.
#[derive(Debug, Clone)]
pub(super) struct EngineAnswer {
    pub(super) status: u16,
    pub(super) fields: Vec<EngineField>,
    /// The body's data frames.
    pub(super) chunks: Vec<Vec<u8>>,
    /// The body knows its length (one buffer); else a stream of frames.
    pub(super) sized: bool,
    /// A stream ends with trailers.
    pub(super) trailers: bool,
    /// A stream fails after its data.
    pub(super) fails: bool,
}

const ENGINE_STATUSES: &[u16] = &[
    100, 101, 103, 200, 200, 200, 201, 204, 206, 304, 404, 500, 599,
];

const ENGINE_NAMES: &[&str] = &[
    "transfer-encoding",
    "connection",
    "date",
    "x-a",
    "keep-alive",
    "upgrade",
    "trailer",
];

const ENGINE_VALUES: &[&str] = &[
    "chunked",
    "gzip, chunked",
    "close",
    "keep-alive",
    "upgrade",
    "Mon, 01 Jan 2024 00:00:00 GMT",
    "x",
];

fn engine_field() -> impl Strategy<Value = EngineField> {
    prop_oneof![
        2 => length().prop_map(EngineField::Length),
        1 => (select(ENGINE_NAMES), select(ENGINE_VALUES))
            .prop_map(|(name, value)| EngineField::Other(name, value)),
    ]
}

pub(super) fn engine_answer() -> impl Strategy<Value = EngineAnswer> {
    (
        select(ENGINE_STATUSES),
        vec(engine_field(), 0..4),
        vec(vec(select(BODY_BYTES), 0..8), 0..4),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(status, fields, chunks, sized, trailers, fails)| EngineAnswer {
                status,
                fields,
                chunks,
                sized,
                trailers,
                fails,
            },
        )
}
