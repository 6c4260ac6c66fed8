//! Just enough WebSocket (RFC 6455) for the echo backend to answer an
//! `Upgrade: websocket` request and echo frames back, and for tests to talk
//! to it: the handshake key, a frame codec, the server's echo loop and a
//! small client. No extensions, no TLS (the mesh provides mTLS).

use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest payload accepted in one frame.
pub const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(client_key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    BASE64.encode(ctx.finish().as_ref())
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One frame, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// Whether it arrived masked (client-to-server frames must be).
    pub masked: bool,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Reserved bits set (no extension was negotiated).
    #[error("websocket frame uses reserved bits {0:#x}")]
    Reserved(u8),
    /// An opcode RFC 6455 does not define.
    #[error("websocket frame has unknown opcode {0:#x}")]
    Opcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("websocket control frame is fragmented or longer than 125 bytes")]
    Control,
    /// A payload over [`MAX_PAYLOAD`].
    #[error("websocket frame payload of {0} bytes is over the limit")]
    TooLarge(u64),
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the frame and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved(b0 & 0x70));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let mut pos = 2;
    let len = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            pos = 4;
            u64::from(u16::from_be_bytes([b[0], b[1]]))
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            pos = 10;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        }
        n => u64::from(n),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Control);
    }
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if masked {
        let Some(m) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    // len <= MAX_PAYLOAD, so it fits usize.
    let len = len as usize;
    let Some(data) = buf.get(pos..pos + len) else {
        return Ok(None);
    };
    let mut payload = data.to_vec();
    if let Some(mask) = mask {
        apply_mask(&mut payload, mask);
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            masked,
            payload,
        },
        pos + len,
    )))
}

/// Encodes a frame; `mask` is required from clients, absent from servers.
pub fn encode(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], mask);
        }
        None => out.extend_from_slice(payload),
    }
    out
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Reads frames until one is complete.
async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Frame>> {
    loop {
        if let Some((frame, used)) =
            decode(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        {
            buf.advance(used);
            return Ok(Some(frame));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The server side after the 101: echoes every data frame back unchanged
/// (same opcode and fragmentation), answers pings, and returns the close.
/// Refuses unmasked client frames with close code 1002 (protocol error).
pub async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let frame = match read_frame(&mut io, &mut buf).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                io.write_all(&encode(true, Opcode::Close, &1002u16.to_be_bytes(), None))
                    .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if !frame.masked {
            io.write_all(&encode(true, Opcode::Close, &1002u16.to_be_bytes(), None))
                .await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "websocket client frame is not masked",
            ));
        }
        match frame.opcode {
            Opcode::Ping => {
                io.write_all(&encode(true, Opcode::Pong, &frame.payload, None))
                    .await?;
            }
            Opcode::Pong => {}
            Opcode::Close => {
                io.write_all(&encode(true, Opcode::Close, &frame.payload, None))
                    .await?;
                io.shutdown().await?;
                return Ok(());
            }
            op => {
                io.write_all(&encode(frame.fin, op, &frame.payload, None))
                    .await?;
            }
        }
    }
}

/// A minimal WebSocket client over plain TCP (for tests and the lab).
pub struct WebSocketClient {
    io: TcpStream,
    buf: BytesMut,
    /// The status line and headers of the handshake response.
    pub handshake: String,
}

impl WebSocketClient {
    /// Connects to `addr` and upgrades `GET <path>` with `Host: <host>`.
    /// Fails if the answer is not a `101` with the right accept key.
    pub async fn connect(
        addr: std::net::SocketAddr,
        host: &str,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, host, path))
            .await
            .map_err(|_| anyhow::anyhow!("websocket handshake with {addr} timed out"))?
    }

    async fn connect_inner(
        addr: std::net::SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Self> {
        let mut io = TcpStream::connect(addr).await?;
        let key_bytes: [u8; 16] = rand::random();
        let key = BASE64.encode(key_bytes);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        io.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 || io.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("websocket handshake: connection closed before a full response");
            }
        };
        let handshake = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.advance(end);
        let status_ok = handshake
            .lines()
            .next()
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("101"));
        if !status_ok {
            anyhow::bail!(
                "websocket handshake refused: {}",
                handshake.lines().next().unwrap_or("")
            );
        }
        let expected = accept_key(&key);
        let accepted = handshake.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == expected
            })
        });
        if !accepted {
            anyhow::bail!("websocket handshake: missing or wrong Sec-WebSocket-Accept");
        }
        Ok(Self { io, buf, handshake })
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> std::io::Result<()> {
        let mask: [u8; 4] = rand::random();
        self.io
            .write_all(&encode(true, opcode, payload, Some(mask)))
            .await
    }

    /// Writes raw bytes (to test how the server takes malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Receives the next frame; `None` when the server closed the socket.
    pub async fn recv(&mut self) -> std::io::Result<Option<Frame>> {
        read_frame(&mut self.io, &mut self.buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_at_every_length_class() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode(true, Opcode::Binary, &payload, mask);
                let (frame, used) = decode(&bytes).unwrap().unwrap();
                assert_eq!(used, bytes.len());
                assert_eq!(frame.payload, payload);
                assert_eq!(frame.masked, mask.is_some());
                assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap(), None, "{len}");
            }
        }
    }

    #[test]
    fn refuses_malformed_frames() {
        assert_eq!(decode(&[0x83, 0x00]), Err(FrameError::Opcode(3)));
        assert_eq!(decode(&[0xC1, 0x00]), Err(FrameError::Reserved(0x40)));
        assert_eq!(decode(&[0x09, 0x00]), Err(FrameError::Control));
        let mut huge = vec![0x82, 0x7F];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode(&huge), Err(FrameError::TooLarge(u64::MAX)));
    }
}
