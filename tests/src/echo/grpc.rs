//! The gRPC side of the echo backend: `hawser.echo.v1.EchoTestService`
//! (`Echo` and `EchoTwo`, as Istio's `proto.EchoTestService/Echo`) answering
//! the same `key=value` lines as HTTP in `EchoResponse.message`, with one
//! `RequestHeader=` line per metadata value so GRPCRoute header filters can
//! be checked. Also the framing the echo client uses to call it over a bare
//! HTTP/2 connection (so it can report HTTP status and headers as received).
//!
//! Call metadata directives: `x-echo-delay: <duration>` sleeps before
//! answering; `x-echo-grpc-status: <code>` answers with that gRPC status.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use tonic::{Code, Request, Response, Status};

use hawser_api::proto::echo::echo_test_service_server::EchoTestService;
use hawser_api::proto::echo::{EchoRequest, EchoResponse};

use super::duration::parse_duration;
use super::response::{self, EchoBody};
use super::server::{ConnInfo, Shared, write_request_headers};

/// The fully qualified service name.
pub const SERVICE: &str = "hawser.echo.v1.EchoTestService";
/// The path of the `Echo` method.
pub const ECHO_PATH: &str = "/hawser.echo.v1.EchoTestService/Echo";
/// The path of the `EchoTwo` method.
pub const ECHO_TWO_PATH: &str = "/hawser.echo.v1.EchoTestService/EchoTwo";
/// Metadata asking for a delay before the answer.
pub const DELAY_METADATA: &str = "x-echo-delay";
/// Metadata asking for a gRPC status instead of OK.
pub const STATUS_METADATA: &str = "x-echo-grpc-status";

/// The `EchoTestService` implementation.
#[derive(Debug, Clone)]
pub struct GrpcEcho {
    shared: Arc<Shared>,
}

impl GrpcEcho {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn answer(
        &self,
        method: &str,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let config = &self.shared.config;
        let info = request.extensions().get::<ConnInfo>().copied();
        let headers = request.metadata().clone().into_headers();
        let delay = match headers.get(DELAY_METADATA).map(|v| v.to_str()) {
            None => None,
            Some(Ok(text)) => Some(
                parse_duration(text)
                    .map_err(|e| Status::invalid_argument(format!("{DELAY_METADATA}: {e}")))?,
            ),
            Some(Err(_)) => {
                return Err(Status::invalid_argument(format!(
                    "{DELAY_METADATA}: not a text value"
                )));
            }
        };
        let status = match headers.get(STATUS_METADATA).map(|v| v.to_str()) {
            None => None,
            Some(text) => {
                let code = text
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .filter(|c| (0..=16).contains(c))
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{STATUS_METADATA}: expected a gRPC status code from 0 to 16"
                        ))
                    })?;
                Some(Code::from_i32(code))
            }
        };
        let mut body = EchoBody::new();
        if let Some(v) = &config.version {
            body.field(response::SERVICE_VERSION, v);
        }
        if let Some(info) = info {
            body.field(response::SERVICE_PORT, &info.local.port().to_string());
        }
        if let Some(authority) = request.extensions().get::<Authority>() {
            body.field(response::HOST, &authority.0);
        }
        body.field(response::URL, &format!("/{SERVICE}/{method}"));
        body.field(response::METHOD, "POST");
        body.field(response::PROTO, "GRPC");
        if let Some(info) = info {
            body.field(response::IP, &info.peer.ip().to_string());
        }
        let mut visible = headers.clone();
        let binary: Vec<_> = visible
            .keys()
            .filter(|k| k.as_str().ends_with("-bin"))
            .cloned()
            .collect();
        for key in binary {
            visible.remove(key);
        }
        write_request_headers(&mut body, &visible, false);
        body.field(response::ECHO, &request.get_ref().message);
        body.field(response::HOSTNAME, &config.hostname);
        if let Some(ns) = &config.namespace {
            body.field(response::NAMESPACE, ns);
        }
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        match status {
            Some(code) if code != Code::Ok => Err(Status::new(code, body.into_string())),
            _ => Ok(Response::new(EchoResponse {
                message: body.into_string(),
            })),
        }
    }
}

/// The `:authority` of a gRPC call, put in the request extensions by the
/// HTTP layer (tonic does not expose the URI to handlers).
#[derive(Debug, Clone)]
pub(crate) struct Authority(pub(crate) String);

#[tonic::async_trait]
impl EchoTestService for GrpcEcho {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.answer("Echo", request).await
    }

    async fn echo_two(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.answer("EchoTwo", request).await
    }
}

/// Frames a message as a gRPC length-prefixed message (uncompressed).
pub fn encode_request(message: &str) -> Bytes {
    let payload = EchoRequest {
        message: message.to_owned(),
    }
    .encode_to_vec();
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(0);
    // A message of 4 GiB or more cannot be built from a command line.
    buf.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    buf.put_slice(&payload);
    buf.freeze()
}

/// Why a gRPC response body is not one `EchoResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcFrameError {
    /// Fewer bytes than the prefix announces.
    #[error("grpc response truncated: {0} bytes")]
    Truncated(usize),
    /// The compressed flag is set (the client asks for none).
    #[error("grpc response is compressed, which was not asked for")]
    Compressed,
    /// The message does not decode.
    #[error("grpc response message does not decode: {0}")]
    Decode(String),
}

/// Decodes the first length-prefixed `EchoResponse` of a body; `Ok(None)`
/// for an empty body (a trailers-only answer).
pub fn decode_response(body: &[u8]) -> Result<Option<EchoResponse>, GrpcFrameError> {
    if body.is_empty() {
        return Ok(None);
    }
    let Some(prefix) = body.get(..5) else {
        return Err(GrpcFrameError::Truncated(body.len()));
    };
    if prefix[0] != 0 {
        return Err(GrpcFrameError::Compressed);
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let Some(message) = body.get(5..5usize.saturating_add(len)) else {
        return Err(GrpcFrameError::Truncated(body.len()));
    };
    EchoResponse::decode(message)
        .map(Some)
        .map_err(|e| GrpcFrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_decode_back() {
        let framed = encode_request("hello");
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(len, framed.len() - 5);
        let msg = EchoRequest::decode(&framed[5..]).unwrap();
        assert_eq!(msg.message, "hello");
    }

    #[test]
    fn response_decoding_refuses_bad_frames() {
        assert_eq!(decode_response(b""), Ok(None));
        assert_eq!(decode_response(b"\0\0"), Err(GrpcFrameError::Truncated(2)));
        assert_eq!(
            decode_response(b"\x01\0\0\0\0"),
            Err(GrpcFrameError::Compressed)
        );
        assert_eq!(
            decode_response(b"\0\0\0\0\x09abc"),
            Err(GrpcFrameError::Truncated(8))
        );
        let ok = EchoResponse {
            message: "Hostname=x\n".into(),
        };
        let mut framed = vec![0, 0, 0, 0, ok.encoded_len() as u8];
        ok.encode(&mut framed).unwrap();
        assert_eq!(decode_response(&framed), Ok(Some(ok)));
    }
}
