//! The client-connection server over in-memory pipes, byte for byte: which
//! requests are answered here and which go to hyper (marked by the answer's
//! `served-by`), the framing of answers, pipelining, the close rules,
//! cancellation when the client leaves, the idle timeout, and what a
//! `serve_verbatim` engine is offered and passes on.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::serve;
use crate::http::body::{HttpBody, boxed, full};

/// The idle timeout of the connections served here (tests of it set their
/// own).
const IDLE: Duration = Duration::from_secs(3600);

/// hyper's side: answers with the method, path and body it got.
fn hyper_service() -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<HttpBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static {
    hyper::service::service_fn(|mut req: Request<Incoming>| async move {
        if req.headers().contains_key("upgrade") {
            // Echoes the upgraded connection's bytes back.
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            let mut resp = Response::new(full(""));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("connection", HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert("upgrade", HeaderValue::from_static("echo"));
            return Ok::<_, Infallible>(resp);
        }
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body)
        );
        let mut resp = Response::new(full(text));
        resp.headers_mut()
            .insert("served-by", HeaderValue::from_static("hyper"));
        Ok::<_, Infallible>(resp)
    })
}

/// The lean side: answers with the path, or per the path's instructions.
async fn lean(req: Request<Empty<Bytes>>) -> Response<HttpBody> {
    let path = req.uri().path().to_owned();
    let mut resp = match path.as_str() {
        "/chunked" => {
            let frames = [
                Ok::<_, crate::http::body::BoxError>(Frame::data(Bytes::from("hello"))),
                Ok(Frame::data(Bytes::from(" world"))),
                Ok(Frame::trailers(http::HeaderMap::from_iter([(
                    http::HeaderName::from_static("grpc-status"),
                    HeaderValue::from_static("0"),
                )]))),
            ];
            Response::new(boxed(StreamBody::new(futures_stream(frames))))
        }
        "/no-content" => answer(204, "", Some(("content-length", "0"))),
        "/odd" => answer(599, "", None),
        // A HEAD answer relayed: the GET's length in its field, no body.
        "/head-of-chunked" => answer(200, "", Some(("content-length", "1234"))),
        "/declared-longer" => answer(200, "hello", Some(("content-length", "10"))),
        "/keep-alive-field" => answer(200, "k", Some(("connection", "keep-alive"))),
        "/short" => {
            let mut resp = Response::new(boxed(StreamBody::new(futures_stream([Ok::<
                _,
                crate::http::body::BoxError,
            >(
                Frame::data(Bytes::from("12345")),
            )]))));
            resp.headers_mut()
                .insert("content-length", HeaderValue::from_static("10"));
            resp
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            answer(200, "slow", None)
        }
        "/empty" => answer(200, "", None),
        "/never" => std::future::pending().await,
        "/large" => answer(200, LARGE, None),
        "/not-modified" => answer(304, "", Some(("content-length", "42"))),
        "/switch" => answer(101, "", None),
        "/cl-list" => answer(200, "hello", Some(("content-length", "5, 5"))),
        "/cl-bad" => answer(200, "hello", Some(("content-length", "five"))),
        "/reason" => {
            let mut resp = Response::new(full("x"));
            resp.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Indeed"));
            resp
        }
        _ => {
            let host = req
                .headers()
                .get("host")
                .map_or("-", |h| h.to_str().unwrap_or("?"));
            Response::new(full(format!("{} {path} {host}", req.method())))
        }
    };
    resp.headers_mut()
        .insert("served-by", HeaderValue::from_static("lean"));
    resp
}

/// The body of `/large`: more than the idle tests' pipe holds.
const LARGE: &str = {
    const BYTES: [u8; 8192] = [b'l'; 8192];
    match std::str::from_utf8(&BYTES) {
        Ok(text) => text,
        Err(_) => panic!("ASCII"),
    }
};

/// An answer of `status` with `body` and, if given, one field.
fn answer(
    status: u16,
    body: &'static str,
    field: Option<(&'static str, &'static str)>,
) -> Response<HttpBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some((name, value)) = field {
        resp.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// A stream of ready items (each `Frame` at once, then the end).
fn futures_stream<T: Send + Sync + 'static, const N: usize>(
    items: [T; N],
) -> impl tokio_stream::Stream<Item = T> + Send + Sync + 'static {
    tokio_stream::iter(items)
}

/// Serves one connection, writes `input`, and returns everything the
/// server wrote until it closed the connection (the last request asks for
/// the close), with `date` fields replaced by `date: <date>`.
async fn exchange(input: &[u8]) -> String {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    let out = talk(client, input).await;
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the server ends with the connection")
        .expect("the server task")
        .expect("the connection ends cleanly");
    out
}

async fn talk(mut client: DuplexStream, input: &[u8]) -> String {
    client.write_all(input).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    without_dates(&String::from_utf8(out).unwrap())
}

fn without_dates(text: &str) -> String {
    text.split("\r\n")
        .map(|line| {
            if let Some(date) = line.strip_prefix("date: ") {
                assert!(httpdate::parse_http_date(date).is_ok(), "{line}");
                "date: <date>"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn plain_requests_are_answered_here_in_order_and_close_on_request() {
    // Three requests in one write (pipelined); the last asks for the close.
    let out = exchange(
        b"GET /a?q=1 HTTP/1.1\r\nHost: svc\r\n\r\n\
          HEAD /b HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n\
          DELETE /c HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\ndate: <date>\r\nserved-by: lean\r\n\r\n\
         GET /a svc\
         HTTP/1.1 200 OK\r\ncontent-length: 11\r\ndate: <date>\r\nserved-by: lean\r\n\r\n\
         HTTP/1.1 200 OK\r\ncontent-length: 13\r\ndate: <date>\r\nconnection: close\r\n\
         served-by: lean\r\n\r\nDELETE /c svc"
    );
}

#[tokio::test]
async fn an_unknown_length_is_chunked_and_unasked_trailers_are_dropped() {
    let out = exchange(b"GET /chunked HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: <date>\r\nconnection: close\r\n\
         served-by: lean\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn no_content_has_no_body_and_reason_phrases_are_kept() {
    let out = exchange(
        b"GET /no-content HTTP/1.1\r\n\r\nGET /reason HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        out,
        "HTTP/1.1 204 No Content\r\ndate: <date>\r\nserved-by: lean\r\n\r\n\
         HTTP/1.1 200 Fine Indeed\r\ncontent-length: 1\r\ndate: <date>\r\nconnection: close\r\n\
         served-by: lean\r\n\r\nx"
    );
}

#[tokio::test]
async fn a_request_with_a_body_hands_the_rest_of_the_connection_to_hyper() {
    let out = exchange(
        b"GET /first HTTP/1.1\r\nHost: svc\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello\
          GET /after HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    )
    .await;
    let served: Vec<&str> = out
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("served-by: "))
        .collect();
    assert_eq!(served, ["lean", "hyper", "hyper"], "{out}");
    assert!(out.contains("GET /first svc"), "{out}");
    assert!(out.contains("POST /upload hello"), "{out}");
    assert!(out.contains("GET /after "), "{out}");
}

#[tokio::test]
async fn requests_that_are_not_plain_go_to_hyper() {
    for head in [
        // A body, chunked.
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        // An expectation.
        "GET / HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        // A body of length 0 is still a body.
        "GET / HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        // CONNECT, even in origin-form.
        "CONNECT /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        // Trailers asked for.
        "GET / HTTP/1.1\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        // A Connection token other than close and keep-alive.
        "GET / HTTP/1.1\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\r\n",
        // Absolute-form.
        "GET http://svc/ HTTP/1.1\r\nConnection: close\r\n\r\n",
        // HTTP/1.0.
        "GET / HTTP/1.0\r\n\r\n",
        // More fields than served here.
        &format!(
            "GET / HTTP/1.1\r\n{}Connection: close\r\n\r\n",
            (0..40)
                .map(|i| format!("x-{i}: {i}\r\n"))
                .collect::<String>()
        ),
    ] {
        let out = exchange(head.as_bytes()).await;
        assert!(out.contains("served-by: hyper"), "{head:?} → {out}");
    }
}

#[tokio::test]
async fn a_malformed_head_gets_hypers_400() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    let out = talk(client, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    let err = served.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("invalid HTTP header"), "{err}");
}

#[tokio::test]
async fn http2_with_prior_knowledge_goes_to_hyper() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(client),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://svc/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["served-by"], "hyper");
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_closes_the_connection() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    let out = talk(client, b"GET /short HTTP/1.1\r\n\r\n").await;
    assert!(out.ends_with("\r\n\r\n12345"), "{out}");
    let err = served.await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("ended 5 bytes before its Content-Length 10"),
        "{err}"
    );
}

#[tokio::test]
async fn the_clients_close_cancels_the_request() {
    let (started, dropped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let handler = {
        let (started, dropped) = (started.clone(), dropped.clone());
        move |_req| {
            let guard = DropFlag(dropped.clone());
            started.store(true, Ordering::SeqCst);
            async move {
                let _guard = guard;
                std::future::pending::<Response<HttpBody>>().await
            }
        }
    };
    let served = tokio::spawn(serve(server, IDLE, handler, hyper_service()));
    client
        .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(!dropped.load(Ordering::SeqCst));
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the server ends when the client leaves")
        .unwrap()
        .unwrap();
    assert!(dropped.load(Ordering::SeqCst), "the request was cancelled");
}

#[tokio::test]
async fn head_and_304_answers_carry_no_body_and_no_implied_length() {
    let out = exchange(
        b"HEAD /empty HTTP/1.1\r\n\r\nGET /not-modified HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ndate: <date>\r\nserved-by: lean\r\n\r\n\
         HTTP/1.1 304 Not Modified\r\ndate: <date>\r\nconnection: close\r\n\
         content-length: 42\r\nserved-by: lean\r\n\r\n"
    );
}

#[tokio::test]
async fn the_answers_content_length_is_one_number_or_the_answer_is_a_500() {
    let out = exchange(b"GET /cl-list HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: <date>\r\nconnection: close\r\n\
         served-by: lean\r\n\r\nhello"
    );
    // Not a number; then an interim answer to a plain request: both end
    // the connection after a bare 500 (the second request is not read).
    for path in ["/cl-bad", "/switch"] {
        let out =
            exchange(format!("GET {path} HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n").as_bytes())
                .await;
        assert_eq!(
            out,
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\ndate: <date>\r\n\
             connection: close\r\n\r\n",
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_head_in_pieces_is_still_answered_here() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    for piece in [
        "GET /pie",
        "ces HTTP/1.1\r\nHost: s",
        "vc\r\nConnection: close\r\n",
        "\r\n",
    ] {
        client.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = talk(client, b"").await;
    assert!(
        out.ends_with("served-by: lean\r\n\r\nGET /pieces svc"),
        "{out}"
    );
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_upgrade_after_plain_requests_is_hypers_and_works() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    client
        .write_all(b"GET /first HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut client, b"GET /first svc").await;
    assert!(first.contains("served-by: lean"), "{first}");
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let switched = read_until(&mut client, b"\r\n\r\n").await;
    assert!(
        switched.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{switched}"
    );
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_until(&mut client, b"ping").await, "ping");
}

/// Reads until `end` has arrived; returns what was read.
async fn read_until(client: &mut DuplexStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !got.ends_with(end) {
            let mut byte = [0u8; 1];
            assert_eq!(client.read(&mut byte).await.unwrap(), 1, "closed early");
            got.push(byte[0]);
        }
    })
    .await
    .expect("the expected bytes arrive");
    String::from_utf8(got).unwrap()
}

/// A lean handler whose answer streams from `frames`, holding `guard`.
fn streaming(
    frames: mpsc::Receiver<Bytes>,
    guard: Arc<AtomicBool>,
) -> impl FnMut(Request<Empty<Bytes>>) -> std::future::Ready<Response<HttpBody>> {
    let mut frames = Some(frames);
    move |_req| {
        let frames = frames.take().expect("one request");
        let dropped = DropFlag(guard.clone());
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(frames),
            move |data| {
                let _held = &dropped;
                Ok::<_, crate::http::body::BoxError>(Frame::data(data))
            },
        );
        std::future::ready(Response::new(boxed(StreamBody::new(stream))))
    }
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_streamed_answer_goes_out_as_it_comes() {
    let (tx, rx) = mpsc::channel(4);
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    let served = tokio::spawn(serve(
        server,
        IDLE,
        streaming(rx, dropped.clone()),
        hyper_service(),
    ));
    client
        .write_all(b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    // Written before the body has more: the client sees it now.
    let head = read_until(&mut client, b"5\r\nfirst\r\n").await;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let large = Bytes::from(vec![b'x'; 40 * 1024]);
    tx.send(large.clone()).await.unwrap();
    drop(tx);
    let rest = talk(client, b"").await;
    assert_eq!(
        rest,
        format!("a000\r\n{}\r\n0\r\n\r\n", String::from_utf8_lossy(&large))
    );
    served.await.unwrap().unwrap();
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn the_clients_close_during_a_streamed_answer_drops_it() {
    let (tx, rx) = mpsc::channel(4);
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(
        server,
        IDLE,
        streaming(rx, dropped.clone()),
        hyper_service(),
    ));
    client
        .write_all(b"GET /watch HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tx.send(Bytes::from_static(b"event")).await.unwrap();
    read_until(&mut client, b"5\r\nevent\r\n").await;
    assert!(!dropped.load(Ordering::SeqCst));
    // The client leaves; the body has nothing more to say for now.
    drop(client);
    let err = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the server ends when the client leaves")
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("the client closed the connection"),
        "{err}"
    );
    assert!(dropped.load(Ordering::SeqCst), "the answer was dropped");
    drop(tx);
}

#[tokio::test]
async fn pipelined_requests_then_a_half_close_still_get_the_first_answer() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    client
        .write_all(b"GET /slow HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    // The client is done writing while `/slow` is being answered.
    client.shutdown().await.unwrap();
    let out = talk(client, b"").await;
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\n\r\nslow"), "{out}");
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn lengths_follow_the_body_and_fields_that_do_not_fit_are_dropped() {
    let out = exchange(
        b"HEAD /head-of-chunked HTTP/1.1\r\n\r\n\
          GET /declared-longer HTTP/1.1\r\n\r\n\
          GET /no-content HTTP/1.1\r\n\r\n\
          GET /odd HTTP/1.1\r\n\r\n\
          GET /keep-alive-field HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        out,
        // HEAD keeps the GET's length and sends no body.
        "HTTP/1.1 200 OK\r\ndate: <date>\r\ncontent-length: 1234\r\nserved-by: lean\r\n\r\n\
         HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: <date>\r\nserved-by: lean\r\n\r\nhello\
         HTTP/1.1 204 No Content\r\ndate: <date>\r\nserved-by: lean\r\n\r\n\
         HTTP/1.1 599 <none>\r\ncontent-length: 0\r\ndate: <date>\r\nserved-by: lean\r\n\r\n\
         HTTP/1.1 200 OK\r\ncontent-length: 1\r\ndate: <date>\r\nconnection: close\r\n\
         served-by: lean\r\n\r\nk"
    );
}

#[tokio::test]
async fn an_endless_ready_answer_is_written_as_it_goes() {
    // Every chunk is ready at once: without a flush every 16 KiB nothing
    // would reach the client while the answer grows in memory.
    let handler = |_req| {
        let chunks = std::iter::repeat_with(|| {
            Ok::<_, crate::http::body::BoxError>(Frame::data(Bytes::from_static(&[b'y'; 1024])))
        });
        std::future::ready(Response::new(boxed(StreamBody::new(tokio_stream::iter(
            chunks,
        )))))
    };
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, handler, hyper_service()));
    client
        .write_all(b"GET /endless HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 256 * 1024];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
        .await
        .expect("the answer arrives while it is written")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"),
        "{}",
        &text[..80]
    );
    assert!(text.contains("\r\n400\r\nyyyy"));
    drop(client);
    // Writing to a client that left fails, and ends the connection.
    let result = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the server ends when the client leaves")
        .unwrap();
    assert!(result.is_err());
}

#[tokio::test]
async fn heads_over_16_kib_are_hypers_whole_or_in_pieces() {
    let long = "v".repeat(9 * 1024);
    let head =
        format!("GET /big HTTP/1.1\r\nx-a: {long}\r\nx-b: {long}\r\nConnection: close\r\n\r\n");
    // All at once: a complete head over the limit.
    let out = exchange(head.as_bytes()).await;
    assert!(out.contains("served-by: hyper"), "{}", &out[..60]);
    // In pieces: the partial head passes the limit before it is complete
    // (handed over then; once complete, the length check alone would too).
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
    let (first, rest) = head.split_at(17 * 1024);
    client.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = talk(client, rest.as_bytes()).await;
    assert!(out.contains("served-by: hyper"), "{}", &out[..60]);
    served.await.unwrap().unwrap();
}

/// Serves one connection with a 10 s idle timeout on a paused clock; the
/// client's end and the server task.
fn idle_connection() -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<(), crate::http::body::BoxError>>,
) {
    let (client, server) = tokio::io::duplex(4096);
    let served = tokio::spawn(serve(
        server,
        Duration::from_secs(10),
        lean,
        hyper_service(),
    ));
    (client, served)
}

/// Waits for the server to close `client` and end; how long that took,
/// and how the server ended.
async fn closed_after(
    mut client: DuplexStream,
    served: tokio::task::JoinHandle<Result<(), crate::http::body::BoxError>>,
) -> (Duration, Result<(), crate::http::body::BoxError>) {
    let start = tokio::time::Instant::now();
    let mut rest = Vec::new();
    // A pipe closed under a reader is EOF or a reset; both are the close.
    let _ = client.read_to_end(&mut rest).await;
    let waited = start.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    (waited, served.await.unwrap())
}

/// `ended` is the idle timeout's error (under hyper's, if hyper served).
fn assert_timed_out(ended: Result<(), crate::http::body::BoxError>) {
    let error = ended.expect_err("the timeout ended the connection");
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{error}");
            assert_eq!(io.to_string(), "idle for 10s");
            return;
        }
        cause = e.source();
    }
    panic!("not the idle timeout: {error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_closes_after_the_idle_timeout_here_and_under_hyper() {
    // Served here: the timeout counts from the end of the last answer.
    let (mut client, served) = idle_connection();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let answer = read_until(&mut client, b"GET /a -").await;
        assert!(answer.contains("served-by: lean"), "{answer}");
    }
    let (waited, ended) = closed_after(client, served).await;
    assert_eq!(waited, Duration::from_secs(10));
    // Between requests, that is the connection's normal end (as under hyper).
    ended.unwrap();

    // Served by hyper after a request with a body: the same rule.
    let (mut client, served) = idle_connection();
    client
        .write_all(b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let answer = read_until(&mut client, b"POST /b hi").await;
    assert!(answer.contains("served-by: hyper"), "{answer}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    client.write_all(b"GET /c HTTP/1.1\r\n\r\n").await.unwrap();
    read_until(&mut client, b"GET /c ").await;
    let (waited, ended) = closed_after(client, served).await;
    assert_eq!(waited, Duration::from_secs(10));
    ended.unwrap();

    // HTTP/2 (hyper's): no frame either way for the timeout.
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(
        server,
        Duration::from_secs(10),
        lean,
        hyper_service(),
    ));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(client),
    )
    .await
    .unwrap();
    let client_conn = tokio::spawn(conn);
    let req = Request::get("http://svc/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let answered = tokio::time::Instant::now();
    assert_timed_out(served.await.unwrap());
    assert_eq!(answered.elapsed(), Duration::from_secs(10));
    // The client's connection ends with it.
    tokio::time::timeout(Duration::from_secs(1), client_conn)
        .await
        .expect("the client sees the close")
        .unwrap()
        .ok();
}

#[tokio::test(start_paused = true)]
async fn a_stalled_head_an_unread_answer_and_an_answer_that_never_comes_time_out() {
    // Half a head, then nothing.
    let (mut client, served) = idle_connection();
    client.write_all(b"GET /a HTTP/1.1\r\nHo").await.unwrap();
    let (waited, ended) = closed_after(client, served).await;
    assert_eq!(waited, Duration::from_secs(10));
    assert_timed_out(ended);

    // An answer larger than the pipe, never read: the write waits, then
    // the connection is given up.
    let (mut client, served) = idle_connection();
    client
        .write_all(b"GET /large HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let ended = served.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_timed_out(ended);
    drop(client);

    // An answer that does not come: after the timeout, a `504` and the close.
    let (mut client, served) = idle_connection();
    client
        .write_all(b"GET /never HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let out = without_dates(&String::from_utf8(out).unwrap());
    assert_eq!(
        out,
        "HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\ndate: <date>\r\nconnection: close\r\n\r\n"
    );
    assert_timed_out(served.await.unwrap());
}

/// A head that trickles in (slowloris) gets a `408` once the header read
/// timeout has passed since its first byte, however long the idle timeout;
/// the wait for a first byte is the idle timeout's.
#[tokio::test(start_paused = true)]
async fn a_head_slower_than_the_header_read_timeout_gets_a_408() {
    let timeouts = super::ServeTimeouts {
        idle: IDLE,
        header_read: Duration::from_secs(2),
    };
    let (client, server) = tokio::io::duplex(4096);
    let served = tokio::spawn(serve(server, timeouts, lean, hyper_service()));
    // Nothing yet: no head timer runs.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!served.is_finished());
    let (mut rd, mut wr) = tokio::io::split(client);
    let start = tokio::time::Instant::now();
    // A byte every second keeps the idle timer away, not the head's.
    let writer = tokio::spawn(async move {
        for b in b"GET /a HTTP/1.1\r\nHost: x\r\n" {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let out = without_dates(&String::from_utf8(out).unwrap());
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    served.await.unwrap().expect("a clean close");
    writer.abort();
}

#[tokio::test]
async fn a_head_http_will_not_take_goes_back_to_hyper_whole() {
    // `httparse` takes these targets and `http::Uri` does not: the head is
    // parsed here, then put back in front of the buffer for hyper, which
    // answers it (with its `400`) after the request served here. (hyper
    // parses targets as `http` does, so its `400` cannot show the head came
    // back unchanged; a head not put back at all would leave it waiting.)
    for target in ["/a<b", "/a>b", "/a`b"] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: svc\r\n\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 4];
        let parsed = httparse::Request::new(&mut fields).parse(head.as_bytes());
        assert!(parsed.unwrap().is_complete(), "httparse takes {target}");
        assert!(http::Uri::try_from(target).is_err(), "http takes {target}");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve(server, IDLE, lean, hyper_service()));
        let input = format!("GET /first HTTP/1.1\r\nHost: svc\r\n\r\n{head}");
        let out = talk(client, input.as_bytes()).await;
        let (first, second) = out
            .split_once("GET /first svc")
            .unwrap_or_else(|| panic!("{out}"));
        assert!(first.contains("served-by: lean"), "{out}");
        assert!(
            second.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{target}: {out}"
        );
        let ended = served.await.unwrap();
        assert!(ended.is_err(), "hyper's error for the bad head");
    }
}

/// What a `serve_verbatim` engine saw of each request it was offered.
#[derive(Debug, PartialEq, Eq)]
struct Offered {
    head: String,
    method: String,
    target: String,
    fields: Vec<(String, String)>,
    asks_close: bool,
}

#[tokio::test]
async fn serve_verbatim_passes_answers_on_as_they_came_and_the_rest_to_lean() {
    let offered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = offered.clone();
    // Takes the `/raw*` requests: answers them with heads this server would
    // never write (field case kept, no `date`); the rest goes to `lean`.
    let verbatim = move |raw: &super::RawRequest| {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        seen.lock().unwrap().push(Offered {
            head: text(raw.head()),
            method: raw.method().to_string(),
            target: text(&raw.target()),
            fields: raw.fields().map(|(n, v)| (text(n), text(v))).collect(),
            asks_close: raw.asks_close(),
        });
        let target = raw.target();
        let (head, body, close): (&'static str, &'static str, bool) = match &target[..] {
            b"/raw" => (
                "HTTP/1.1 200 OK\r\nX-Case: Kept\r\nContent-Length: 5\r\n\r\n",
                "hello",
                false,
            ),
            b"/raw-close" => (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
                "bye",
                true,
            ),
            _ => return None,
        };
        Some(std::future::ready(super::Answer::Verbatim(
            super::h1::Verbatim {
                head: Bytes::from_static(head.as_bytes()),
                status: StatusCode::OK,
                body: full(body),
                length: body.len() as u64,
                close,
            },
        )))
    };
    let run = |input: &'static [u8]| {
        let verbatim = verbatim.clone();
        async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let served = tokio::spawn(super::serve_verbatim(
                server,
                IDLE,
                lean,
                verbatim,
                hyper_service(),
            ));
            let out = talk(client, input).await;
            served.await.unwrap().unwrap();
            out
        }
    };

    // Pipelined: passed on, built by `lean`, passed on; the answer's own
    // `Connection: close` closes the connection, though the client did not
    // ask for it, and the request after it is not read.
    let out = run(
        b"GET /raw HTTP/1.1\r\nHost: svc\r\nX-Mixed-Case: A b\r\n\r\n\
        GET /built HTTP/1.1\r\nHost: svc\r\n\r\n\
        GET /raw-close HTTP/1.1\r\nHost: svc\r\n\r\n\
        GET /never HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nX-Case: Kept\r\nContent-Length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\ncontent-length: 14\r\ndate: <date>\r\nserved-by: lean\r\n\r\nGET /built svc\
         HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"
    );
    let first = std::mem::take(&mut *offered.lock().unwrap());
    assert_eq!(first.len(), 3, "{first:#?}");
    assert_eq!(
        first[0],
        Offered {
            head: "GET /raw HTTP/1.1\r\nHost: svc\r\nX-Mixed-Case: A b\r\n\r\n".into(),
            method: "GET".into(),
            target: "/raw".into(),
            fields: vec![
                ("Host".into(), "svc".into()),
                ("X-Mixed-Case".into(), "A b".into())
            ],
            asks_close: false,
        }
    );
    assert_eq!(first[1].target, "/built");

    // The client's own `Connection: close` closes it after an answer passed
    // on without one, which then says so before its blank line.
    let out = run(b"GET /raw HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nX-Case: Kept\r\nContent-Length: 5\r\nconnection: close\r\n\r\nhello"
    );
    let second = std::mem::take(&mut *offered.lock().unwrap());
    assert_eq!(second.len(), 1, "{second:#?}");
    assert!(second[0].asks_close, "{second:#?}");
}
