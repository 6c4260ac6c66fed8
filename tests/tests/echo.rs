//! The echo backend and client over loopback: HTTP/1.1 and h2c answers, the
//! request directives (delay, status codes, fail-first-N, close), gRPC,
//! WebSocket, keep-alive and redirects on the client side, graceful
//! shutdown, and the `hawser-echo` binary's JSON output and argument errors.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hawser_api::proto::echo::EchoRequest;
use hawser_api::proto::echo::echo_test_service_client::EchoTestServiceClient;
use hawser_tests::echo::client::{self, ClientOptions, Outcome, Protocol, Report, Target};
use hawser_tests::echo::server::{Echo, EchoServer, ServerConfig};
use hawser_tests::echo::websocket::{Opcode, WebSocketClient};
use hawser_tests::echo::{grpc, response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const POD: &str = "echo-v1-6d4f9c-x2x7q";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start() -> EchoServer {
    let mut config = ServerConfig::new(POD);
    config.namespace = Some("gateway-conformance-mesh".into());
    config.version = Some("v1".into());
    config.drain_timeout = Duration::from_secs(3);
    EchoServer::start(loopback(), config)
        .await
        .expect("bind an echo server on loopback")
}

fn options(server: &EchoServer, path: &str) -> ClientOptions {
    let target: Target = format!("http://echo{path}")
        .parse()
        .expect("test URLs are valid");
    let mut opts = ClientOptions::new(target);
    opts.connect_to = Some(server.addr);
    opts
}

async fn one(opts: &ClientOptions) -> Outcome {
    let mut outcomes = client::run(opts).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.remove(0)
}

/// Sends raw bytes and reads until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("server answers within 5s")
        .expect("read response");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http1_answer_has_every_line_and_repeated_headers() {
    let server = start().await;
    let text = raw_exchange(
        server.addr,
        b"GET /path/one?animal=whale&x=1 HTTP/1.1\r\nHost: echo.example:8080\r\n\
          X-Multi: first\r\nx-multi: second\r\nUser-Agent: raw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let r = response::parse(body);
    assert_eq!(r.hostname(), Some(POD));
    assert_eq!(r.namespace(), Some("gateway-conformance-mesh"));
    assert_eq!(r.get("ServiceVersion"), Some("v1"));
    assert_eq!(r.method(), Some("GET"));
    assert_eq!(r.url(), Some("/path/one?animal=whale&x=1"));
    assert_eq!(r.host(), Some("echo.example:8080"));
    assert_eq!(r.proto(), Some("HTTP/1.1"));
    assert_eq!(r.service_port(), Some(server.addr.port()));
    assert_eq!(r.get("IP"), Some("127.0.0.1"));
    assert_eq!(r.request_header("x-multi"), vec!["first", "second"]);
    assert_eq!(
        r.get_all("RequestHeader").collect::<Vec<_>>(),
        vec![
            "Connection:close",
            "User-Agent:raw",
            "X-Multi:first",
            "X-Multi:second"
        ],
        "one line per value, canonical names, sorted, Host not repeated"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_answers_with_http2_proto_and_authority() {
    let server = start().await;
    let mut opts = options(&server, "/h2?q=1");
    opts.protocol = Protocol::Http2;
    opts.method = http::Method::PUT;
    opts.headers = vec![
        client::parse_header("x-test: one").unwrap(),
        client::parse_header("x-test: two").unwrap(),
    ];
    let o = one(&opts).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert_eq!(o.body.proto(), Some("HTTP/2.0"));
    assert_eq!(o.body.host(), Some("echo"));
    assert_eq!(o.body.url(), Some("/h2?q=1"));
    assert_eq!(o.body.method(), Some("PUT"));
    assert_eq!(
        o.body.request_header_joined("X-Test").as_deref(),
        Some("one,two")
    );
}

#[tokio::test]
async fn host_header_override_reaches_the_backend_on_both_protocols() {
    let server = start().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut opts = options(&server, "/");
        opts.protocol = protocol;
        opts.headers = vec![client::parse_header("Host: echo-v2").unwrap()];
        let o = one(&opts).await;
        assert_eq!(o.body.host(), Some("echo-v2"), "{protocol:?}: {o:?}");
    }
}

#[tokio::test]
async fn delay_is_honoured() {
    let server = start().await;
    let started = Instant::now();
    let o = one(&options(&server, "/?delay=400ms")).await;
    let elapsed = started.elapsed();
    assert_eq!(o.status, Some(200));
    assert!(
        elapsed >= Duration::from_millis(400),
        "answered after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    let started = Instant::now();
    let o = one(&options(&server, "/?delay=0s")).await;
    assert_eq!(o.status, Some(200));
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn a_client_timeout_is_reported_per_request() {
    let server = start().await;
    let mut opts = options(&server, "/?delay=2s");
    opts.timeout = Duration::from_millis(200);
    opts.count = 2;
    let started = Instant::now();
    let outcomes = client::run(&opts).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    for o in &outcomes {
        assert_eq!(o.status, None);
        assert_eq!(o.error.as_deref(), Some("timed out after 200ms"));
    }
}

#[tokio::test]
async fn status_codes_and_response_headers_on_request() {
    let server = start().await;
    let o = one(&options(
        &server,
        "/?codes=503&headers=X-Set:one,X-Other:two",
    ))
    .await;
    assert_eq!(o.status, Some(503));
    assert_eq!(o.header("x-set"), vec!["one"]);
    assert_eq!(o.header("X-Other"), vec!["two"]);
    assert_eq!(
        o.hostname.as_deref(),
        Some(POD),
        "the body still says who answered"
    );

    let mut opts = options(&server, "/");
    opts.headers = vec![client::parse_header("X-Echo-Set-Header: X-A:1, X-B:2").unwrap()];
    let o = one(&opts).await;
    assert_eq!((o.header("x-a"), o.header("x-b")), (vec!["1"], vec!["2"]));
}

#[tokio::test]
async fn bad_directives_get_400_naming_the_problem() {
    let server = start().await;
    for (path, needle) in [
        ("/?delay=soon", "delay"),
        ("/?codes=999", "999"),
        ("/?succeedAfter=2", "responseCode"),
        ("/?headers=broken", "broken"),
    ] {
        let o = one(&options(&server, path)).await;
        assert_eq!(o.status, Some(400), "{path}");
        let error = o.body.get("Error").unwrap_or_default();
        assert!(error.contains(needle), "{path}: {error}");
        assert_eq!(o.hostname.as_deref(), Some(POD));
    }
}

#[tokio::test]
async fn fail_first_n_per_key_then_succeed() {
    let server = start().await;
    let mut opts = options(&server, "/retry?responseCode=500&succeedAfter=2&uuid=a");
    opts.count = 4;
    let codes: Vec<_> = client::run(&opts).await.iter().map(|o| o.status).collect();
    assert_eq!(codes, vec![Some(500), Some(500), Some(200), Some(200)]);

    // Another key counts from zero; the first key stays healed.
    let mut opts = options(&server, "/retry?responseCode=503&succeedAfter=1&uuid=b");
    opts.count = 2;
    let codes: Vec<_> = client::run(&opts).await.iter().map(|o| o.status).collect();
    assert_eq!(codes, vec![Some(503), Some(200)]);
    let o = one(&options(
        &server,
        "/retry?responseCode=500&succeedAfter=2&uuid=a",
    ))
    .await;
    assert_eq!(o.status, Some(200));

    // Without succeedAfter every request fails; delayRetry delays the failure.
    let mut opts = options(&server, "/?responseCode=502&delayRetry=300ms");
    opts.count = 2;
    let started = Instant::now();
    let codes: Vec<_> = client::run(&opts).await.iter().map(|o| o.status).collect();
    assert_eq!(codes, vec![Some(502), Some(502)]);
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn close_drops_the_connection_without_a_response() {
    let server = start().await;
    let text = raw_exchange(
        server.addr,
        b"GET /?close=true HTTP/1.1\r\nHost: echo\r\n\r\n",
    )
    .await;
    assert_eq!(text, "", "no byte of a response");

    let mut opts = options(&server, "/?close=true&succeedAfter=1&uuid=c");
    opts.count = 2;
    let outcomes = client::run(&opts).await;
    assert_eq!(outcomes[0].status, None);
    let error = outcomes[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("closed"), "{error}");
    assert_eq!(outcomes[1].status, Some(200), "{:?}", outcomes[1]);
    assert_eq!(
        (outcomes[0].connection, outcomes[1].connection),
        (Some(0), Some(1)),
        "the client reconnects after the server dropped the connection"
    );

    // HTTP/2: the stream is reset, the request fails, no panic.
    let mut opts = options(&server, "/?close=true");
    opts.protocol = Protocol::Http2;
    let o = one(&opts).await;
    assert_eq!(o.status, None);
    assert!(o.error.is_some());
}

#[tokio::test]
async fn count_reuses_one_kept_alive_connection() {
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let server = start().await;
        let mut opts = options(&server, "/weights");
        opts.count = 25;
        opts.protocol = protocol;
        let outcomes = client::run(&opts).await;
        assert!(
            outcomes.iter().all(|o| o.status == Some(200)),
            "{protocol:?}"
        );
        assert!(outcomes.iter().all(|o| o.connection == Some(0)));
        assert_eq!(server.echo().stats().connections(), 1, "{protocol:?}");
        assert_eq!(server.echo().stats().requests(), 25);
        let summary = client::summarize(&outcomes);
        assert_eq!(summary.hostnames.get(POD), Some(&25));
        assert_eq!(summary.connections, 1);
    }
}

#[tokio::test]
async fn the_client_never_follows_redirects() {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        seen.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/next\r\nContent-Length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let mut opts = ClientOptions::new("http://redirector/start".parse().unwrap());
    opts.connect_to = Some(addr);
    let o = one(&opts).await;
    assert_eq!(o.status, Some(302));
    assert_eq!(o.header("location"), vec!["http://elsewhere/next"]);
    assert_eq!(o.error, None);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "exactly one request was sent"
    );
}

#[tokio::test]
async fn connection_refused_is_reported_for_each_request() {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut opts = ClientOptions::new(format!("http://{addr}/").parse().unwrap());
    opts.count = 3;
    let outcomes = client::run(&opts).await;
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        let error = o.error.as_deref().unwrap_or_default();
        assert!(
            error.contains(&format!("connect to {addr}")) && error.contains("refused"),
            "{error}"
        );
        assert_eq!((o.status, o.connection), (None, None));
    }
    let text = client::format_text(&outcomes);
    assert!(text.contains("[2 error] connect to"), "{text}");
    assert!(
        text.contains("requests=3 responses=0 errors=3 connections=0"),
        "{text}"
    );
}

#[tokio::test]
async fn grpc_echo_reports_metadata_and_status() {
    let server = start().await;
    let target: Target = "grpc://echo:7070".parse().unwrap();
    let mut opts = ClientOptions::new(target);
    opts.connect_to = Some(server.addr);
    opts.message = "hello".into();
    opts.count = 3;
    opts.headers = vec![
        client::parse_header("x-test-case: set").unwrap(),
        client::parse_header("x-header-add: one").unwrap(),
        client::parse_header("x-header-add: two").unwrap(),
    ];
    let outcomes = client::run(&opts).await;
    for o in &outcomes {
        assert_eq!((o.status, o.grpc_status), (Some(200), Some(0)), "{o:?}");
        assert_eq!(o.error, None);
        assert_eq!(o.hostname.as_deref(), Some(POD));
        assert_eq!(o.body.proto(), Some("GRPC"));
        assert_eq!(o.body.host(), Some("echo:7070"));
        assert_eq!(o.body.url(), Some(grpc::ECHO_PATH));
        assert_eq!(o.body.get("Echo"), Some("hello"));
        assert_eq!(o.body.request_header("x-test-case"), vec!["set"]);
        assert_eq!(
            o.body.request_header_joined("x-header-add").as_deref(),
            Some("one,two")
        );
    }
    assert_eq!(server.echo().stats().connections(), 1);

    // The second method, for GRPCRoute method matching.
    let mut two = ClientOptions::new(
        format!("grpc://echo:7070{}", grpc::ECHO_TWO_PATH)
            .parse()
            .unwrap(),
    );
    two.connect_to = Some(server.addr);
    let o = one(&two).await;
    assert_eq!(o.grpc_status, Some(0));
    assert_eq!(o.body.url(), Some(grpc::ECHO_TWO_PATH));

    // A requested status comes back, with the echo lines in its message.
    let mut failing = ClientOptions::new("grpc://echo:7070".parse().unwrap());
    failing.connect_to = Some(server.addr);
    failing.headers = vec![client::parse_header("x-echo-grpc-status: 14").unwrap()];
    let o = one(&failing).await;
    assert_eq!(o.grpc_status, Some(14), "{o:?}");
    assert_eq!(o.hostname.as_deref(), Some(POD));
}

#[tokio::test]
async fn tonic_clients_can_call_the_echo_service() {
    let server = start().await;
    let mut client = EchoTestServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let mut request = tonic::Request::new(EchoRequest {
        message: "from tonic".into(),
    });
    request
        .metadata_mut()
        .insert("x-echo-delay", "200ms".parse().unwrap());
    let started = Instant::now();
    let reply = client.echo(request).await.unwrap().into_inner();
    assert!(started.elapsed() >= Duration::from_millis(200));
    let r = response::parse(&reply.message);
    assert_eq!(r.get("Echo"), Some("from tonic"));
    assert_eq!(r.hostname(), Some(POD));
    assert_eq!(r.request_header("x-echo-delay"), vec!["200ms"]);

    let mut bad = tonic::Request::new(EchoRequest::default());
    bad.metadata_mut()
        .insert("x-echo-delay", "later".parse().unwrap());
    let status = client.echo(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("later"), "{}", status.message());
}

#[tokio::test]
async fn websocket_upgrade_echoes_frames() {
    let server = start().await;
    let mut ws = WebSocketClient::connect(server.addr, "echo", "/ws", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        ws.handshake
            .to_ascii_lowercase()
            .contains(&format!("x-echo-hostname: {POD}")),
        "{}",
        ws.handshake
    );
    ws.send(Opcode::Text, b"hello").await.unwrap();
    let frame = ws.recv().await.unwrap().unwrap();
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (Opcode::Text, &b"hello"[..])
    );
    assert!(!frame.masked, "server frames are not masked");
    let big = vec![7u8; 70_000];
    ws.send(Opcode::Binary, &big).await.unwrap();
    let frame = ws.recv().await.unwrap().unwrap();
    assert_eq!(
        (frame.opcode, frame.payload.len()),
        (Opcode::Binary, big.len())
    );
    ws.send(Opcode::Ping, b"p").await.unwrap();
    let frame = ws.recv().await.unwrap().unwrap();
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (Opcode::Pong, &b"p"[..])
    );
    ws.send(Opcode::Close, &1000u16.to_be_bytes())
        .await
        .unwrap();
    let frame = ws.recv().await.unwrap().unwrap();
    assert_eq!(frame.opcode, Opcode::Close);
    assert_eq!(
        ws.recv().await.unwrap(),
        None,
        "server closes after the close frame"
    );

    // Unmasked client frames are a protocol error (close 1002).
    let mut ws = WebSocketClient::connect(server.addr, "echo", "/ws", Duration::from_secs(5))
        .await
        .unwrap();
    ws.send_raw(&hawser_tests::echo::websocket::encode(
        true,
        Opcode::Text,
        b"x",
        None,
    ))
    .await
    .unwrap();
    let frame = ws.recv().await.unwrap().unwrap();
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (Opcode::Close, &1002u16.to_be_bytes()[..])
    );

    // A broken handshake is refused with a reason.
    let text = raw_exchange(
        server.addr,
        b"GET /ws HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("Sec-WebSocket-Key"), "{text}");
}

#[tokio::test]
async fn tcp_port_echoes_bytes() {
    let echo = Echo::new(ServerConfig::new(POD));
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(echo.serve_tcp(listener, async move {
        let _ = stopped.await;
    }));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"ping over tcp").await.unwrap();
    let mut buf = [0u8; 13];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over tcp");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("tcp server stops on shutdown")
        .unwrap();
    assert_eq!(echo.stats().connections(), 1);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops_listening() {
    let server = start().await;
    let addr = server.addr;
    let mut opts = options(&server, "/?delay=500ms");
    opts.timeout = Duration::from_secs(5);
    let in_flight = tokio::spawn(async move { client::run(&opts).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drained, not aborted"
    );
    let outcomes = in_flight.await.unwrap();
    assert_eq!(outcomes[0].status, Some(200), "{:?}", outcomes[0]);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn shutdown_aborts_connections_after_the_drain_timeout() {
    let mut config = ServerConfig::new(POD);
    config.drain_timeout = Duration::from_millis(200);
    let server = EchoServer::start(loopback(), config).await.unwrap();
    let mut opts = options(&server, "/?delay=10s");
    opts.timeout = Duration::from_secs(15);
    let in_flight = tokio::spawn(async move { client::run(&opts).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let outcomes = in_flight.await.unwrap();
    assert_eq!(
        outcomes[0].status, None,
        "the aborted request gets no answer"
    );
}

fn hawser_echo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hawser-echo"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run hawser-echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_client_prints_json_a_runner_can_parse() {
    let server = start().await;
    let connect_to = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        hawser_echo(&[
            "client",
            "http://echo/json?codes=201",
            "--connect-to",
            &connect_to,
            "--count",
            "3",
            "-H",
            "X-Test: yes",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &json["outcomes"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["connection"], 0);
    assert_eq!(first["status"], 201);
    assert_eq!(first["hostname"], POD);
    assert_eq!(
        first["headers"]["content-type"][0],
        "text/plain; charset=utf-8"
    );
    assert!(
        first["body"]["fields"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["RequestHeader", "X-Test:yes"]))
    );
    assert!(first.get("error").is_none());
    assert_eq!(json["summary"]["requests"], 3);
    assert_eq!(json["summary"]["connections"], 1);
    assert_eq!(json["summary"]["statusCodes"]["201"], 3);
    assert_eq!(json["summary"]["hostnames"][POD], 3);
    // The same document deserializes into the library's types.
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.outcomes.len(), 3);
    assert_eq!(report.outcomes[2].body.hostname(), Some(POD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_client_text_output_and_failure_exit_status() {
    let server = start().await;
    let connect_to = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        hawser_echo(&["client", "http://echo/t", "--connect-to", &connect_to])
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[0] StatusCode=200"), "{text}");
    assert!(
        text.contains("[0] ResponseHeader=Content-Type:text/plain"),
        "{text}"
    );
    assert!(text.contains(&format!("[0 body] Hostname={POD}")), "{text}");
    assert!(
        text.contains("Summary: requests=1 responses=1 errors=0"),
        "{text}"
    );

    let listener = TcpListener::bind(loopback()).await.unwrap();
    let refused = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = tokio::task::spawn_blocking(move || {
        hawser_echo(&["client", &format!("http://{refused}/"), "--count", "2"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[1 error] connect to"), "{text}");
}

#[test]
fn binary_refuses_bad_arguments_naming_them() {
    for (args, needle) in [
        (vec!["client", "https://echo/"], "unsupported scheme"),
        (vec!["client", "http://echo/", "--timeout", "soon"], "soon"),
        (vec!["client", "http://echo/", "-H", "novalue"], "novalue"),
        (vec!["client", "http://echo/", "--count", "0"], "0"),
        (
            vec!["client", "http://echo/", "--method", "BAD METHOD"],
            "BAD METHOD",
        ),
        (
            vec!["client", "http://echo/", "--http2", "--grpc"],
            "--grpc",
        ),
        (vec!["serve"], "--port"),
        (
            vec!["serve", "--port", "80", "--drain-timeout", "3"],
            "\"3\"",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let out = hawser_echo(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_until_sigterm() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hawser-echo"))
        .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string()])
        .env("POD_NAME", "echo-v2-abc-def")
        .env("POD_NAMESPACE", "ns1")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let target: Target = format!("http://127.0.0.1:{port}/bin").parse().unwrap();
    let mut answered = None;
    for _ in 0..100 {
        let o = one(&ClientOptions::new(target.clone())).await;
        if o.status.is_some() {
            answered = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = answered.expect("the binary answers within 5s");
    assert_eq!(o.hostname.as_deref(), Some("echo-v2-abc-def"));
    assert_eq!(o.body.namespace(), Some("ns1"));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
