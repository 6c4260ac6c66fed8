//! Body plumbing: the boxed body type the engine passes around, a request
//! body that can be replayed for retries (buffered up to a bound while it
//! streams), a tee that feeds a mirrored copy without ever blocking the
//! original, and the response body that carries the request deadline and
//! the endpoint's in-flight count until the last byte.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::outbound::InFlight;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the engine sends and answers with.
pub type HttpBody = BoxBody<Bytes, BoxError>;

/// Boxes any body into an [`HttpBody`].
pub fn boxed<B>(body: B) -> HttpBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An empty body.
pub fn empty() -> HttpBody {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A body with one chunk.
pub fn full(bytes: impl Into<Bytes>) -> HttpBody {
    boxed(http_body_util::Full::new(bytes.into()))
}

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A newer attempt took over the replayable request body.
    #[error("request body superseded by a retry")]
    Superseded,
    /// The original body failed earlier; replays cannot continue.
    #[error("request body failed earlier")]
    Failed,
    /// The request's timeout elapsed while the response streamed.
    #[error("request timeout of {0:?} elapsed while streaming the response")]
    RequestTimeout(std::time::Duration),
    /// The mirrored copy fell too far behind or the original stopped early.
    #[error("mirrored request body abandoned")]
    MirrorAbandoned,
}

struct ReplayState {
    /// The original body while it has more to give.
    inner: Option<HttpBody>,
    /// Everything read so far, while within `limit`.
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// More than `limit` bytes were read: no further replay is possible.
    overflow: bool,
    failed: bool,
    /// The generation allowed to read; older copies fail.
    generation: u64,
}

/// A request body that can be replayed while it has not outgrown its
/// bound. The first copy streams the original and records what it reads;
/// [`ReplayBody::replay`] makes a fresh copy that first yields the recorded
/// data, then continues from the original where it stands. Only the newest
/// copy may read: older ones (abandoned attempts) fail.
pub struct ReplayBody {
    state: Arc<Mutex<ReplayState>>,
    generation: u64,
    pos: usize,
    trailers_sent: bool,
    hint: SizeHint,
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("generation", &self.generation)
            .field("pos", &self.pos)
            .finish()
    }
}

impl ReplayBody {
    /// Wraps `body`, or gives it back when it announces more than `limit` bytes.
    pub fn new(body: HttpBody, limit: usize) -> Result<Self, HttpBody> {
        let hint = body.size_hint();
        if usize::try_from(hint.lower()).map_or(true, |lower| lower > limit) {
            return Err(body);
        }
        let ended = body.is_end_stream();
        Ok(Self {
            state: Arc::new(Mutex::new(ReplayState {
                inner: (!ended).then_some(body),
                chunks: Vec::new(),
                len: 0,
                limit,
                trailers: None,
                ended,
                overflow: false,
                failed: false,
                generation: 0,
            })),
            generation: 0,
            pos: 0,
            trailers_sent: false,
            hint,
        })
    }

    /// A fresh copy from the start, or `None` when the body can no longer
    /// be replayed (outgrew its bound, or failed). Older copies stop.
    pub fn replay(&self) -> Option<Self> {
        let mut state = self.state.lock();
        if state.overflow || state.failed {
            return None;
        }
        state.generation += 1;
        Some(Self {
            state: self.state.clone(),
            generation: state.generation,
            pos: 0,
            trailers_sent: false,
            hint: self.hint,
        })
    }

    /// Whether a replay is still possible.
    pub fn is_replayable(&self) -> bool {
        let state = self.state.lock();
        !state.overflow && !state.failed
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut state = this.state.lock();
        if state.generation != this.generation {
            return Poll::Ready(Some(Err(BodyError::Superseded.into())));
        }
        if let Some(chunk) = state.chunks.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if state.failed {
            return Poll::Ready(Some(Err(BodyError::Failed.into())));
        }
        if state.ended {
            if let Some(trailers) = state.trailers.clone().filter(|_| !this.trailers_sent) {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let Some(inner) = state.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.ended = true;
                state.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                state.failed = true;
                state.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !state.overflow && state.len + data.len() <= state.limit {
                            state.len += data.len();
                            state.chunks.push(data.clone());
                            this.pos += 1;
                        } else if !state.overflow {
                            state.overflow = true;
                            state.chunks = Vec::new();
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            state.trailers = Some(trailers.clone());
                            state.ended = true;
                            state.inner = None;
                            this.trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        // Unknown frame kinds are not replayed.
                        Err(other) => other,
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.state.lock();
        state.generation == self.generation
            && state.ended
            && self.pos >= state.chunks.len()
            && (state.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

type MirrorFrame = Result<Frame<Bytes>, BoxError>;

/// Passes a request body through while sending a copy of every frame to a
/// mirror. The copy never slows the original: once more than `limit` bytes
/// are queued for the mirror, the mirror's body fails and copying stops.
pub struct Tee {
    inner: HttpBody,
    tx: Option<mpsc::UnboundedSender<MirrorFrame>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee").field("limit", &self.limit).finish()
    }
}

/// The mirror's side of a [`Tee`].
struct MirrorBody {
    rx: mpsc::UnboundedReceiver<MirrorFrame>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.queued
                .fetch_sub(data.len(), std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl Tee {
    /// Splits `body` into the original (returned as a `Tee`) and a copy for
    /// the mirror.
    pub fn split(body: HttpBody, limit: usize) -> (Self, HttpBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ended = body.is_end_stream();
        let mirror = boxed(MirrorBody {
            rx,
            queued: queued.clone(),
        });
        let tee = Self {
            inner: body,
            // An empty body has nothing to copy: the mirror ends at once.
            tx: (!ended).then_some(tx),
            queued,
            limit,
        };
        (tee, mirror)
    }

    fn abandon(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(BodyError::MirrorAbandoned.into()));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The original stopped before its end: the copy must not look complete.
        self.abandon();
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let copy = if let Some(data) = frame.data_ref() {
                    let queued = self
                        .queued
                        .fetch_add(data.len(), std::sync::atomic::Ordering::Relaxed);
                    (queued + data.len() <= self.limit).then(|| Frame::data(data.clone()))
                } else {
                    frame.trailers_ref().map(|t| Frame::trailers(t.clone()))
                };
                match (copy, self.tx.as_ref()) {
                    (Some(copy), Some(tx)) => {
                        if tx.send(Ok(copy)).is_err() {
                            // The mirror is gone; stop copying.
                            self.tx = None;
                        }
                    }
                    (None, Some(_)) => self.abandon(),
                    (_, None) => {}
                }
            }
            Poll::Ready(None) => {
                // Complete: dropping the sender ends the copy cleanly.
                self.tx = None;
            }
            Poll::Ready(Some(Err(_))) => self.abandon(),
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.tx = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body returned to the client: ends with an error when the request
/// deadline passes mid-stream, and counts the request against its endpoint
/// until the last byte or until dropped.
pub struct ResponseBody {
    inner: HttpBody,
    deadline: Option<(Pin<Box<Sleep>>, std::time::Duration)>,
    _in_flight: Option<InFlight>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish()
    }
}

impl ResponseBody {
    /// Wraps `inner`. `deadline` is the request deadline and the timeout it
    /// enforces (for the error message).
    pub fn new(
        inner: HttpBody,
        deadline: Option<(tokio::time::Instant, std::time::Duration)>,
        in_flight: Option<InFlight>,
    ) -> Self {
        Self {
            inner,
            deadline: deadline.map(|(at, d)| (Box::pin(tokio::time::sleep_until(at)), d)),
            _in_flight: in_flight,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if let Some((sleep, timeout)) = self.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let timeout = *timeout;
            self.deadline = None;
            return Poll::Ready(Some(Err(BodyError::RequestTimeout(timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
