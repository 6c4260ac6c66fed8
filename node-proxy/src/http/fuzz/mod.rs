//! Differential fuzzing of the hand-written HTTP/1.1 code ([`super::h1`],
//! [`super::serve`]) against a reference ([`model`]: `httparse` for heads,
//! RFC 9112 for framing, written independently of the code under test) and
//! against hyper, over generated and mutated traffic ([`strategies`]) that
//! includes the request-smuggling shapes.
//!
//! - [`requests`]: a client's bytes through `serve` (plain requests in the
//!   connection's task, the rest through hyper's server). The engine gets
//!   the requests the model reads, in order, each with its body, or fewer
//!   (a refusal); never another.
//! - [`responses`]: an upstream's answer through `h1` alone (beside hyper's
//!   client), and through `h1` and `serve` to a client the way the inbound
//!   and outbound sides use them. The same status and body as the model, or
//!   a refusal (an error, a `502`, a cut connection); one answer per
//!   request; a connection reused only where the model keeps it.
//! - [`answers`]: the engine's own answers as `serve` writes them: one
//!   well-framed answer with the engine's body, a `500`, or a cut
//!   connection where the body contradicts its declared length.
//!
//! Each property runs `HAWSER_FUZZ_CASES` cases ([`DEFAULT_CASES`] when
//! unset, so the normal test run stays fast). The bounded run:
//!
//! ```sh
//! HAWSER_FUZZ_CASES=1000000 cargo test --release --locked -p hawser-node-proxy --lib fuzz
//! ```
//!
//! The smuggling shapes are also plain tests, each asserting its decision.
//!
//! Every exchange runs in memory (`tokio::io::duplex`) on a fresh runtime
//! whose clock is paused: the idle timeout that ends a served connection
//! fires as soon as nothing else can happen, and a case that hangs fails
//! (at [`HANG`]) instead of holding the run.

mod answers;
mod model;
mod requests;
mod responses;
mod strategies;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use proptest::prelude::ProptestConfig;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::{HttpBody, empty};

/// Cases per property when `HAWSER_FUZZ_CASES` is unset.
pub(crate) const DEFAULT_CASES: u32 = 2_000;

/// The idle timeout of the connections served here. On the paused clock it
/// fires as soon as every side waits, which is how a case ends.
const IDLE: Duration = Duration::from_secs(60);

/// Longer than any case takes on the paused clock: reaching it is a hang.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// Room in each in-memory pipe: more than any case writes, so no writer
/// waits for a reader that is not reading.
const PIPE: usize = 1 << 20;

/// The property-test settings of the fuzz properties: `HAWSER_FUZZ_CASES`
/// cases (also used by `authz`'s path normalizer properties).
pub(crate) fn config() -> ProptestConfig {
    let cases = std::env::var("HAWSER_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Runs `future` on a fresh current-thread runtime whose clock is paused
/// (nothing is left over from an earlier case); panics if it hangs.
fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(HANG, future)
            .await
            .expect("the case hung")
    })
}

/// Writes `bytes` to `io` in pieces of `piece` bytes, letting the other
/// side run between pieces, so that heads and bodies arrive in many reads.
async fn trickle<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8], piece: usize) {
    for part in bytes.chunks(piece.max(1)) {
        if io.write_all(part).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// A client that sends one request and reads until the server closes the
/// connection (it never closes its own side, which would cancel the
/// request: the idle timeout ends the connection).
async fn one_request(mut client: DuplexStream, head: bool, close: bool) -> Vec<u8> {
    let method = if head { "HEAD" } else { "GET" };
    let close = if close { "Connection: close\r\n" } else { "" };
    let request = format!("{method} /x HTTP/1.1\r\nHost: svc\r\n{close}\r\n");
    let mut output = Vec::new();
    if client.write_all(request.as_bytes()).await.is_ok() {
        // Whatever came before an error is what the client got.
        let _ = client.read_to_end(&mut output).await;
    }
    output
}

/// A proxy's own refusal of an answer it could not get or pass on.
fn refusal() -> Response<HttpBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// hyper's side for harnesses whose requests are all plain (never used
/// there): refuses.
fn refusing() -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<HttpBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static {
    hyper::service::service_fn(|_req: Request<Incoming>| async { Ok::<_, Infallible>(refusal()) })
}

/// Bytes on the wire, shown escaped in failure messages.
struct Wire<'a>(&'a [u8]);

impl PartialEq for Wire<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for Wire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}
