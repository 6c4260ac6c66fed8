//! The engine's own answers as [`serve`] writes them to a client: whatever
//! framing fields the engine set (filters can set any), the client reads
//! exactly one answer, with the engine's status and body (none for `HEAD`,
//! `204`, `304`); a `1xx` or an invalid `Content-Length` becomes a `500`;
//! a streamed body that contradicts its declared length is cut short, never
//! let past it.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Empty, StreamBody};
use hyper::body::Frame;
use proptest::prelude::*;

use super::model::{self, Verdict};
use super::strategies::{self, EngineAnswer, EngineField};
use super::{IDLE, PIPE, Wire, block_on, one_request, refusal, refusing};
use crate::http::serve::serve;
use crate::http::{BoxError, HttpBody, boxed, full};

/// The engine's answer as a response.
fn build(answer: &EngineAnswer) -> Response<HttpBody> {
    let body = if answer.sized {
        full(answer.chunks.concat())
    } else {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = answer
            .chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from(chunk.clone()))))
            .collect();
        if answer.trailers {
            frames.push(Ok(Frame::trailers(HeaderMap::from_iter([(
                HeaderName::from_static("x-t"),
                HeaderValue::from_static("1"),
            )]))));
        }
        if answer.fails {
            frames.push(Err("the engine's body failed".into()));
        }
        boxed(StreamBody::new(tokio_stream::iter(frames)))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(answer.status).expect("a status code");
    let length: usize = answer.chunks.iter().map(Vec::len).sum();
    for field in &answer.fields {
        let (name, value) = match field {
            EngineField::Length(declared) => ("content-length", declared.render(length)),
            EngineField::Other(name, value) => (*name, (*value).to_owned()),
        };
        resp.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("printable"),
        );
    }
    resp
}

/// What the client of a GET (HEAD if `head`; asking to close if `close`)
/// answered with `resp` gets.
async fn written(resp: Response<HttpBody>, head: bool, close: bool) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(PIPE);
    let mut resp = Some(resp);
    let lean =
        move |_req: Request<Empty<Bytes>>| std::future::ready(resp.take().unwrap_or_else(refusal));
    // The connection's error, if any, shows in what the client got.
    let (_, output) = tokio::join!(
        serve(server, IDLE, lean, refusing()),
        one_request(client, head, close)
    );
    output
}

/// Whether `output` is the one answer `answer` makes (see the module docs).
fn check_written(answer: &EngineAnswer, output: &[u8], head: bool) -> Result<(), TestCaseError> {
    let wire = Wire(output);
    let body = answer.chunks.concat();
    let lengths: Vec<Vec<u8>> = answer
        .fields
        .iter()
        .filter_map(|field| match field {
            EngineField::Length(declared) => Some(declared.render(body.len()).into_bytes()),
            EngineField::Other(..) => None,
        })
        .collect();
    let lengths: Vec<&[u8]> = lengths.iter().map(Vec::as_slice).collect();
    let declared = model::content_length(&lengths);
    let refused = (100..200).contains(&answer.status) || declared.is_err();
    let bodyless = head || matches!(answer.status, 204 | 304);
    // Whether the body is what its framing says: a length known from the
    // body itself wins over a declared one.
    let consistent = bodyless
        || answer.sized
        || (!answer.fails
            && declared
                .ok()
                .flatten()
                .is_none_or(|declared| usize::try_from(declared) == Ok(body.len())));
    let expected: &[u8] = if bodyless { b"" } else { &body };
    match model::response(output, head) {
        Verdict::Answer(got) => {
            prop_assert_eq!(
                got.len,
                output.len(),
                "one answer, nothing after it: {:?}",
                wire
            );
            if refused {
                prop_assert_eq!(
                    (got.status, got.body.as_slice()),
                    (500, &b""[..]),
                    "refused: {:?}",
                    wire
                );
            } else {
                prop_assert_eq!(got.status, answer.status, "{:?}", wire);
                let got_body = Wire(&got.body);
                if consistent {
                    prop_assert_eq!(got_body, Wire(expected), "{:?}", wire);
                } else {
                    // Cut at a declared length shorter than the body.
                    prop_assert!(
                        expected.starts_with(&got.body),
                        "{got_body:?} is not the start of the body: {wire:?}"
                    );
                }
            }
        }
        Verdict::Incomplete => prop_assert!(
            !refused && !consistent,
            "an answer that is what it says was cut: {wire:?}"
        ),
        other => {
            return Err(TestCaseError::fail(format!(
                "the client got a malformed answer ({other:?}): {wire:?}"
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(super::config())]

    /// Any status, framing fields, body (sized, streamed, with trailers,
    /// failing), to GET or HEAD, kept alive or closing: one well-framed
    /// answer.
    #[test]
    fn engine_answers_are_written_as_one_well_framed_answer(
        answer in strategies::engine_answer(),
        head in any::<bool>(),
        close in any::<bool>(),
    ) {
        let output = block_on(written(build(&answer), head, close));
        check_written(&answer, &output, head)?;
    }
}

/// A declared length shorter than a streamed body: the connection closes
/// when the body runs past it, and nothing past the declared bytes
/// reaches the client (today not even those: they were still buffered
/// with the head), so no second answer can be made of the rest.
#[test]
fn a_declared_length_shorter_than_the_streamed_body_lets_nothing_past_it() {
    let answer = EngineAnswer {
        status: 200,
        fields: vec![EngineField::Length(strategies::Length::Text("3"))],
        chunks: vec![
            b"abc".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ],
        sized: false,
        trailers: false,
        fails: false,
    };
    let output = block_on(written(build(&answer), false, false));
    let text = String::from_utf8_lossy(&output);
    assert!(text.matches("HTTP/1.1").count() <= 1, "{text}");
    if let Err(e) = check_written(&answer, &output, false) {
        panic!("{e}");
    }
}
