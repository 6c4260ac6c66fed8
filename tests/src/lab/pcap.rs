//! Reading what `tcpdump -w` captured, for `hawser verify-mtls`: the classic
//! pcap format (Ethernet, Linux cooked or raw IP links), IPv4/IPv6, TCP and
//! UDP, grouped into flows whose byte streams are put back in sequence order;
//! and the plaintext parts of a TLS handshake (ClientHello, ServerHello) that
//! say which version and cipher suite a connection chose.
//!
//! Every input here is untrusted bytes off the wire: nothing panics, lengths
//! are checked before every slice, and what cannot be decoded is counted
//! rather than guessed at.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

/// Why a capture file could not be read at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcapError {
    /// Shorter than the 24-byte global header.
    #[error("capture is {0} bytes, shorter than a pcap header")]
    TooShort(usize),
    /// pcapng, which `tcpdump -w` does not write.
    #[error("capture is pcapng; expected classic pcap (tcpdump -w)")]
    Pcapng,
    /// Not a pcap file.
    #[error("not a pcap file (magic {0:#010x})")]
    BadMagic(u32),
    /// A link type this reader does not decode.
    #[error("unsupported link type {0} (expected Ethernet, Linux cooked or raw IP)")]
    LinkType(u32),
}

/// Link-layer header types (tcpdump.org/linktypes.html) this reader decodes.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// TCP flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The transport protocol of a packet or flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One decoded TCP or UDP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_nanos: u64,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP flags (0 for UDP).
    pub flags: u8,
    /// Transport payload (as much as was captured).
    pub payload: Vec<u8>,
}

/// A capture file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The file's link type.
    pub link_type: u32,
    /// Every TCP and UDP packet, in capture order.
    pub packets: Vec<Packet>,
    /// Records that were not TCP/UDP over IP (ARP, ICMP, IP fragments…) or
    /// were cut short.
    pub skipped: usize,
}

/// Decodes a classic pcap file (either byte order, micro- or nanosecond
/// timestamps). A truncated last record ends the capture; it is not an error,
/// as tcpdump killed mid-write leaves exactly that.
pub fn parse(bytes: &[u8]) -> Result<Capture, PcapError> {
    let header: [u8; 24] = bytes
        .get(..24)
        .and_then(|h| h.try_into().ok())
        .ok_or(PcapError::TooShort(bytes.len()))?;
    let magic_le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (big_endian, nanos) = match magic_le {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        0x0a0d_0d0a => return Err(PcapError::Pcapng),
        other => return Err(PcapError::BadMagic(other)),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    // The upper bits may carry FCS information; the link type is the low 16.
    let link_type = u32_at(&header, 20) & 0xffff;
    if ![
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
    ]
    .contains(&link_type)
    {
        return Err(PcapError::LinkType(link_type));
    }
    let mut capture = Capture {
        link_type,
        packets: Vec::new(),
        skipped: 0,
    };
    let mut rest = &bytes[24..];
    while rest.len() >= 16 {
        let secs = u64::from(u32_at(rest, 0));
        let frac = u64::from(u32_at(rest, 4));
        let incl = u32_at(rest, 8) as usize;
        let Some(data) = rest.get(16..16 + incl) else {
            capture.skipped += 1;
            break;
        };
        rest = &rest[16 + incl..];
        let ts_nanos = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        match decode_link(link_type, data) {
            Some(mut packet) => {
                packet.ts_nanos = ts_nanos;
                capture.packets.push(packet);
            }
            None => capture.skipped += 1,
        }
    }
    Ok(capture)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Link layer → network layer.
fn decode_link(link_type: u32, frame: &[u8]) -> Option<Packet> {
    let (ethertype, ip) = match link_type {
        LINKTYPE_ETHERNET => {
            let mut ethertype = be16(frame, 12)?;
            let mut at = 14;
            while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
                ethertype = be16(frame, at + 2)?;
                at += 4;
            }
            (ethertype, frame.get(at..)?)
        }
        LINKTYPE_LINUX_SLL => (be16(frame, 14)?, frame.get(16..)?),
        LINKTYPE_LINUX_SLL2 => (be16(frame, 0)?, frame.get(20..)?),
        _ => match frame.first()? >> 4 {
            4 => (ETHERTYPE_IPV4, frame),
            6 => (ETHERTYPE_IPV6, frame),
            _ => return None,
        },
    };
    match ethertype {
        ETHERTYPE_IPV4 => decode_ipv4(ip),
        ETHERTYPE_IPV6 => decode_ipv6(ip),
        _ => None,
    }
}

fn decode_ipv4(ip: &[u8]) -> Option<Packet> {
    let first = *ip.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    let total_len = usize::from(be16(ip, 2)?);
    let fragment = be16(ip, 6)?;
    // More fragments, or not the first: the transport header is not all here.
    if fragment & 0x3fff != 0 || header_len < 20 {
        return None;
    }
    // Trims Ethernet padding; 0 is what segmentation offload leaves unfilled.
    let end = if total_len == 0 {
        ip.len()
    } else {
        total_len.min(ip.len())
    };
    let src = IpAddr::V4(Ipv4Addr::from(be32(ip, 12)?));
    let dst = IpAddr::V4(Ipv4Addr::from(be32(ip, 16)?));
    decode_transport(*ip.get(9)?, src, dst, ip.get(header_len..end)?)
}

fn decode_ipv6(ip: &[u8]) -> Option<Packet> {
    if ip.first()? >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(ip, 4)?);
    let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
    let end = if payload_len == 0 {
        ip.len()
    } else {
        (40 + payload_len).min(ip.len())
    };
    let mut next = *ip.get(6)?;
    let mut at = 40;
    // Hop-by-hop, routing and destination options headers: skip them.
    while matches!(next, 0 | 43 | 60) {
        next = *ip.get(at)?;
        at += (usize::from(*ip.get(at + 1)?) + 1) * 8;
    }
    decode_transport(
        next,
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
        ip.get(at..end)?,
    )
}

fn decode_transport(proto: u8, src: IpAddr, dst: IpAddr, seg: &[u8]) -> Option<Packet> {
    let (protocol, header_len, seq, flags) = match proto {
        IPPROTO_TCP => (
            Protocol::Tcp,
            usize::from(seg.get(12)? >> 4) * 4,
            be32(seg, 4)?,
            *seg.get(13)?,
        ),
        IPPROTO_UDP => (Protocol::Udp, 8, 0, 0),
        _ => return None,
    };
    if header_len < 8 {
        return None;
    }
    Some(Packet {
        ts_nanos: 0,
        protocol,
        src: SocketAddr::new(src, be16(seg, 0)?),
        dst: SocketAddr::new(dst, be16(seg, 2)?),
        seq,
        flags,
        payload: seg.get(header_len..)?.to_vec(),
    })
}

/// A TCP connection or UDP exchange: `client` is who opened it (the sender
/// of the SYN; without one, the side on the higher port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FlowKey {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The side that opened it.
    pub client: SocketAddr,
    /// The side that accepted it.
    pub server: SocketAddr,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{} → {} ({proto})", self.client, self.server)
    }
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the client to the server.
    ToServer,
    /// From the server to the client.
    ToClient,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::ToServer => "client→server",
            Direction::ToClient => "server→client",
        })
    }
}

/// One direction of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HalfFlow {
    /// Packets sent this way.
    pub packets: usize,
    /// The payload bytes in sequence order (TCP; retransmissions once), or
    /// the datagrams concatenated (UDP).
    pub stream: Vec<u8>,
    /// Each packet's payload as captured, in capture order.
    pub segments: Vec<Vec<u8>>,
    /// Whether the stream has a hole (a segment was not captured).
    pub gap: bool,
}

/// A flow and what it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Its endpoints.
    pub key: FlowKey,
    /// Whether its TCP handshake (SYN) was captured.
    pub saw_syn: bool,
    /// Client → server.
    pub to_server: HalfFlow,
    /// Server → client.
    pub to_client: HalfFlow,
    /// First packet's time, ns since the epoch.
    pub first_nanos: u64,
    /// Last packet's time, ns since the epoch.
    pub last_nanos: u64,
}

impl Flow {
    /// The half going `direction`.
    pub fn half(&self, direction: Direction) -> &HalfFlow {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    /// Payload bytes both ways.
    pub fn payload_bytes(&self) -> usize {
        self.to_server.stream.len() + self.to_client.stream.len()
    }

    /// Where `needle` appears in what this flow carried (in the reassembled
    /// stream or within a single segment), by direction.
    pub fn find(&self, needle: &[u8]) -> Vec<Direction> {
        [Direction::ToServer, Direction::ToClient]
            .into_iter()
            .filter(|d| {
                let half = self.half(*d);
                contains(&half.stream, needle) || half.segments.iter().any(|s| contains(s, needle))
            })
            .collect()
    }

    /// The TLS handshake this flow shows, read from both directions.
    pub fn tls(&self) -> TlsSummary {
        TlsSummary::read(&self.to_server.stream, &self.to_client.stream)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl Capture {
    /// The capture's packets grouped into flows, ordered by first packet.
    pub fn flows(&self) -> Vec<Flow> {
        // Who opened each flow: the sender of a SYN without ACK, or the
        // receiver of a SYN-ACK.
        let mut opener: BTreeMap<(Protocol, SocketAddr, SocketAddr), SocketAddr> = BTreeMap::new();
        for p in &self.packets {
            let pair = sorted_pair(p);
            if p.protocol == Protocol::Tcp && p.flags & TCP_SYN != 0 {
                let client = if p.flags & TCP_ACK == 0 { p.src } else { p.dst };
                opener.entry(pair).or_insert(client);
            }
        }
        let mut order: Vec<FlowKey> = Vec::new();
        let mut builders: BTreeMap<FlowKey, FlowBuilder> = BTreeMap::new();
        for p in &self.packets {
            let pair = sorted_pair(p);
            let client = opener.get(&pair).copied().unwrap_or_else(|| {
                // No SYN: the side on the higher (ephemeral) port opened it;
                // on a tie, whoever spoke first.
                match p.src.port().cmp(&p.dst.port()) {
                    std::cmp::Ordering::Less => p.dst,
                    _ => p.src,
                }
            });
            let server = if client == p.src { p.dst } else { p.src };
            let key = FlowKey {
                protocol: p.protocol,
                client,
                server,
            };
            let b = builders.entry(key).or_insert_with(|| {
                order.push(key);
                FlowBuilder::new(key, opener.contains_key(&pair), p.ts_nanos)
            });
            b.add(p);
        }
        order
            .into_iter()
            .filter_map(|k| builders.remove(&k))
            .map(FlowBuilder::finish)
            .collect()
    }
}

fn sorted_pair(p: &Packet) -> (Protocol, SocketAddr, SocketAddr) {
    if p.src <= p.dst {
        (p.protocol, p.src, p.dst)
    } else {
        (p.protocol, p.dst, p.src)
    }
}

struct FlowBuilder {
    key: FlowKey,
    saw_syn: bool,
    first_nanos: u64,
    last_nanos: u64,
    halves: [HalfBuilder; 2],
}

#[derive(Default)]
struct HalfBuilder {
    packets: usize,
    /// The sequence number of the first payload byte, when a SYN said so.
    isn: Option<u32>,
    /// (seq, payload) of every TCP segment with payload.
    segments: Vec<(u32, Vec<u8>)>,
}

impl FlowBuilder {
    fn new(key: FlowKey, saw_syn: bool, ts: u64) -> Self {
        Self {
            key,
            saw_syn,
            first_nanos: ts,
            last_nanos: ts,
            halves: Default::default(),
        }
    }

    fn add(&mut self, p: &Packet) {
        self.last_nanos = self.last_nanos.max(p.ts_nanos);
        self.first_nanos = self.first_nanos.min(p.ts_nanos);
        let half = &mut self.halves[usize::from(p.src != self.key.client)];
        half.packets += 1;
        if p.flags & TCP_SYN != 0 {
            half.isn = Some(p.seq.wrapping_add(1));
        }
        if !p.payload.is_empty() {
            half.segments.push((p.seq, p.payload.clone()));
        }
    }

    fn finish(self) -> Flow {
        let tcp = self.key.protocol == Protocol::Tcp;
        let [to_server, to_client] = self.halves.map(|h| h.finish(tcp));
        Flow {
            key: self.key,
            saw_syn: self.saw_syn,
            to_server,
            to_client,
            first_nanos: self.first_nanos,
            last_nanos: self.last_nanos,
        }
    }
}

impl HalfBuilder {
    fn finish(self, tcp: bool) -> HalfFlow {
        let captured: Vec<Vec<u8>> = self.segments.iter().map(|(_, p)| p.clone()).collect();
        let mut half = HalfFlow {
            packets: self.packets,
            stream: Vec::new(),
            segments: captured,
            gap: false,
        };
        if !tcp {
            half.stream = half.segments.concat();
            return half;
        }
        let Some(base) = self
            .isn
            .or_else(|| self.segments.first().map(|(seq, _)| *seq))
        else {
            return half;
        };
        // Offsets relative to the first byte; a retransmission or overlap
        // contributes only what it adds.
        let mut segments: Vec<(u32, &[u8])> = self
            .segments
            .iter()
            .map(|(seq, p)| (seq.wrapping_sub(base), p.as_slice()))
            .collect();
        segments.sort_by_key(|(offset, _)| *offset);
        for (offset, payload) in segments {
            let offset = offset as usize;
            let end = half.stream.len();
            if offset > end {
                half.gap = true;
                break;
            }
            if let Some(new) = payload.get(end - offset..) {
                half.stream.extend_from_slice(new);
            }
        }
        half
    }
}

/// TLS record content types.
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_SERVER_HELLO: u8 = 2;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// A ServerHello with this random is a HelloRetryRequest (RFC 8446 §4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Largest TLS record fragment allowed on the wire (2^14 + 256 for TLS 1.3's
/// expansion; TLS 1.2 allows 2^14 + 2048 for ciphertext).
const MAX_RECORD: usize = (1 << 14) + 2048;

/// How the bytes of one direction frame as TLS records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Records {
    /// Whether every byte (from `start`) belongs to a well-formed record;
    /// the last record may be cut short by the capture's end.
    pub framed: bool,
    /// Where the first record starts (non-zero when the capture began in
    /// the middle of a connection and had to find a record boundary).
    pub start: usize,
    /// Handshake records.
    pub handshake: usize,
    /// Application-data records (all of TLS 1.3's encrypted traffic).
    pub application_data: usize,
    /// ChangeCipherSpec and alert records.
    pub other: usize,
}

/// The plaintext facts of a TLS connection, from whichever handshake
/// messages were captured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsSummary {
    /// The client's first flight.
    pub client_hello: Option<ClientHello>,
    /// The server's choice.
    pub server_hello: Option<ServerHello>,
    /// Record framing client → server.
    pub to_server: Records,
    /// Record framing server → client.
    pub to_client: Records,
}

impl TlsSummary {
    /// Reads both directions of a connection.
    pub fn read(to_server: &[u8], to_client: &[u8]) -> Self {
        let (to_server_records, client_msgs) = records(to_server);
        let (to_client_records, server_msgs) = records(to_client);
        Self {
            client_hello: client_msgs
                .iter()
                .filter(|(t, _)| *t == HANDSHAKE_CLIENT_HELLO)
                .find_map(|(_, body)| ClientHello::parse(body)),
            // After a HelloRetryRequest the real ServerHello follows.
            server_hello: server_msgs
                .iter()
                .filter(|(t, _)| *t == HANDSHAKE_SERVER_HELLO)
                .filter_map(|(_, body)| ServerHello::parse(body))
                .max_by_key(|sh| !sh.hello_retry_request),
            to_server: to_server_records,
            to_client: to_client_records,
        }
    }

    /// Whether both directions are TLS: at least one record each way and
    /// nothing that is not a record.
    pub fn is_tls(&self) -> bool {
        let some = |r: &Records| r.framed && r.handshake + r.application_data + r.other > 0;
        some(&self.to_server) && (some(&self.to_client) || self.to_client == Records::default())
    }
}

/// What a ClientHello offered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientHello {
    /// The server name (SNI), if sent.
    pub server_name: Option<String>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
    /// `supported_versions`, in order.
    pub versions: Vec<u16>,
    /// Cipher suites offered, in order.
    pub cipher_suites: Vec<u16>,
}

/// What a ServerHello chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServerHello {
    /// `legacy_version` (0x0303 for TLS 1.2 and 1.3 alike).
    pub legacy_version: u16,
    /// The `supported_versions` extension's choice (TLS 1.3 only).
    pub selected_version: Option<u16>,
    /// The chosen cipher suite.
    pub cipher_suite: u16,
    /// Whether this was a HelloRetryRequest.
    pub hello_retry_request: bool,
}

impl ServerHello {
    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.selected_version.unwrap_or(self.legacy_version)
    }

    /// The version as rustls names it (`TLSv1_3`), as the proxies report it.
    pub fn version_name(&self) -> String {
        version_name(self.version())
    }

    /// The cipher suite as rustls and IANA name it (`TLS13_AES_256_GCM_SHA384`).
    pub fn cipher_name(&self) -> String {
        cipher_name(self.cipher_suite)
    }
}

/// A protocol version's name as rustls prints it (`TLSv1_3`), or hex.
pub fn version_name(version: u16) -> String {
    rustls::ProtocolVersion::from(version)
        .as_str()
        .map_or_else(|| format!("{version:#06x}"), str::to_owned)
}

/// A cipher suite's name as rustls prints it (`TLS13_AES_128_GCM_SHA256`), or hex.
pub fn cipher_name(suite: u16) -> String {
    rustls::CipherSuite::from(suite)
        .as_str()
        .map_or_else(|| format!("{suite:#06x}"), str::to_owned)
}

/// A byte reader that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    /// Extensions: (type, data) until the end.
    fn extensions(mut self) -> Option<Vec<(u16, &'a [u8])>> {
        let mut out = Vec::new();
        while !self.0.is_empty() {
            out.push((self.u16()?, self.vec16()?));
        }
        Some(out)
    }
}

impl ClientHello {
    /// Parses a ClientHello body (after the 4-byte handshake header).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let mut r = Reader(body);
        r.take(2 + 32)?; // legacy_version, random
        r.vec8()?; // legacy_session_id
        let suites = r.vec16()?;
        r.vec8()?; // compression methods
        let mut hello = ClientHello {
            cipher_suites: suites
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
            ..Self::default()
        };
        // A ClientHello without extensions ends here (old TLS).
        let Some(exts) = r.vec16() else {
            return Some(hello);
        };
        for (kind, data) in Reader(exts).extensions()? {
            let mut d = Reader(data);
            match kind {
                EXT_SERVER_NAME => {
                    let mut list = Reader(d.vec16()?);
                    while !list.0.is_empty() {
                        let name_type = list.u8()?;
                        let name = list.vec16()?;
                        if name_type == 0 {
                            hello.server_name = Some(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
                EXT_ALPN => {
                    let mut list = Reader(d.vec16()?);
                    while !list.0.is_empty() {
                        hello
                            .alpn
                            .push(String::from_utf8_lossy(list.vec8()?).into_owned());
                    }
                }
                EXT_SUPPORTED_VERSIONS => {
                    hello.versions = d
                        .vec8()?
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                }
                _ => {}
            }
        }
        Some(hello)
    }
}

impl ServerHello {
    /// Parses a ServerHello body (after the 4-byte handshake header).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let mut r = Reader(body);
        let legacy_version = r.u16()?;
        let random = r.take(32)?;
        r.vec8()?; // legacy_session_id_echo
        let cipher_suite = r.u16()?;
        r.u8()?; // legacy_compression_method
        let mut hello = ServerHello {
            legacy_version,
            selected_version: None,
            cipher_suite,
            hello_retry_request: random == HELLO_RETRY_RANDOM,
        };
        if let Some(exts) = r.vec16() {
            for (kind, data) in Reader(exts).extensions()? {
                if kind == EXT_SUPPORTED_VERSIONS {
                    hello.selected_version = Reader(data).u16();
                }
            }
        }
        Some(hello)
    }
}

/// Frames `stream` as TLS records and returns the framing and the plaintext
/// handshake messages `(type, body)` found before encryption began.
fn records(stream: &[u8]) -> (Records, Vec<(u8, Vec<u8>)>) {
    if stream.is_empty() {
        return (Records::default(), Vec::new());
    }
    // From the start if it frames; else the capture began mid-connection:
    // the first offset from which every byte frames.
    let start = (0..stream.len().min(MAX_RECORD + 5))
        .find(|&at| frame(&stream[at..]).is_some())
        .unwrap_or(0);
    let Some(list) = frame(&stream[start..]) else {
        return (Records::default(), Vec::new());
    };
    let mut out = Records {
        framed: true,
        start,
        ..Records::default()
    };
    // Plaintext handshake bytes, in runs split at each ChangeCipherSpec,
    // until encrypted records begin.
    let mut runs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut encrypted = start != 0;
    for (content_type, fragment) in list {
        match content_type {
            CONTENT_HANDSHAKE => {
                out.handshake += 1;
                if let (false, Some(run)) = (encrypted, runs.last_mut()) {
                    run.extend_from_slice(fragment);
                }
            }
            CONTENT_APPLICATION_DATA => {
                out.application_data += 1;
                encrypted = true;
            }
            CONTENT_CHANGE_CIPHER_SPEC => {
                out.other += 1;
                runs.push(Vec::new());
            }
            _ => out.other += 1,
        }
    }
    // What follows a ChangeCipherSpec is encrypted (TLS 1.2's Finished),
    // except after a HelloRetryRequest, whose CCS is only for middleboxes
    // and is followed by the real ServerHello (TLS 1.3).
    let mut messages = Vec::new();
    for run in &runs {
        let before = messages.len();
        let mut r = Reader(run);
        while let Some(kind) = r.u8() {
            let Some(len) = r.take(3) else { break };
            let len =
                (usize::from(len[0]) << 16) | (usize::from(len[1]) << 8) | usize::from(len[2]);
            let Some(body) = r.take(len) else { break };
            messages.push((kind, body.to_vec()));
        }
        let retry = messages[before..].iter().any(|(kind, body)| {
            *kind == HANDSHAKE_SERVER_HELLO
                && ServerHello::parse(body).is_some_and(|sh| sh.hello_retry_request)
        });
        if !retry {
            break;
        }
    }
    (out, messages)
}

/// Splits `stream` into `(content type, fragment)` records; `None` unless
/// every record header is plausible. The last record may be cut short.
fn frame(stream: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut r = Reader(stream);
    while !r.0.is_empty() {
        let content_type = r.u8()?;
        if !matches!(
            content_type,
            CONTENT_CHANGE_CIPHER_SPEC
                | CONTENT_ALERT
                | CONTENT_HANDSHAKE
                | CONTENT_APPLICATION_DATA
        ) {
            return None;
        }
        // The header may itself be cut short at the capture's end.
        let Some(version) = r.u16() else {
            return Some(out);
        };
        if !(0x0300..=0x0304).contains(&version) {
            return None;
        }
        let Some(len) = r.u16() else {
            return Some(out);
        };
        let len = usize::from(len);
        if len == 0 || len > MAX_RECORD {
            return None;
        }
        let fragment = r.0.get(..len).unwrap_or(r.0);
        r.0 = &r.0[fragment.len()..];
        out.push((content_type, fragment));
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Writing pcap files, for fixtures.

    use std::net::{IpAddr, SocketAddr};

    /// A TCP segment to write.
    #[derive(Clone, Copy)]
    pub struct Segment<'a> {
        pub src: SocketAddr,
        pub dst: SocketAddr,
        pub seq: u32,
        pub flags: u8,
        pub payload: &'a [u8],
    }

    /// A little-endian microsecond pcap of Ethernet/IPv4/TCP frames.
    pub fn write_pcap(segments: &[Segment<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, 1] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for (i, s) in segments.iter().enumerate() {
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (s.src.ip(), s.dst.ip()) else {
                panic!("fixtures are IPv4");
            };
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(20 + 20 + s.payload.len()).unwrap();
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            frame.extend_from_slice(&src.octets());
            frame.extend_from_slice(&dst.octets());
            frame.extend_from_slice(&s.src.port().to_be_bytes());
            frame.extend_from_slice(&s.dst.port().to_be_bytes());
            frame.extend_from_slice(&s.seq.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 0x50, s.flags, 0xff, 0xff, 0, 0, 0, 0]);
            frame.extend_from_slice(s.payload);
            let len = u32::try_from(frame.len()).unwrap();
            for w in [1_700_000_000u32, u32::try_from(i).unwrap(), len, len] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&frame);
        }
        out
    }

    /// A TLS record.
    pub fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 3, 3];
        r.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    /// A handshake message in a record.
    pub fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut msg = vec![kind, len[1], len[2], len[3]];
        msg.extend_from_slice(body);
        record(22, &msg)
    }

    /// A TLS 1.3 ServerHello choosing `suite`, in a record.
    pub fn server_hello(suite: u16, random: [u8; 32]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&random);
        b.push(0); // empty session id
        b.extend_from_slice(&suite.to_be_bytes());
        b.push(0);
        b.extend_from_slice(&[0, 6, 0, 43, 0, 2, 3, 4]);
        handshake(2, &b)
    }

    /// A ClientHello offering TLS 1.3 and ALPN `h2`, in a record.
    pub fn client_hello() -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.push(0);
        b.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        b.extend_from_slice(&[1, 0]);
        let exts: &[u8] = &[
            0, 43, 0, 3, 2, 3, 4, // supported_versions: TLS 1.3
            0, 16, 0, 5, 0, 3, 2, b'h', b'2', // ALPN: h2
        ];
        b.extend_from_slice(&u16::try_from(exts.len()).unwrap().to_be_bytes());
        b.extend_from_slice(exts);
        handshake(1, &b)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    use hawser_api::SpiffeId;
    use hawser_api::testing::TestPki;
    use hawser_api::tls::{
        ClientAuth, SpiffeClientVerifier, SpiffeServerVerifier, client_config, server_config,
    };
    use rustls::sign::SingleCertAndKey;

    use super::testing::{Segment, client_hello, record, server_hello, write_pcap};
    use super::*;
    use crate::lab::sys;
    use crate::lab::verify::Tcpdump;

    /// A network namespace for one test, removed when dropped (also when
    /// the test fails).
    struct TestNetns(String);

    impl TestNetns {
        fn new() -> Self {
            let name = format!("hawser-vt-{}", std::process::id());
            // A leftover of a crashed run with the same pid would fail `add`.
            sys::netns_del(&name).expect("remove a stale test netns");
            sys::netns_add(&name).expect("create the test netns (tests run as root)");
            let ns = Self(name);
            sys::ip(["-n", &ns.0, "link", "set", "lo", "up"]).expect("lo up");
            ns
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = sys::netns_del(&self.0);
        }
    }

    /// What the real exchange negotiated, as the client saw it.
    struct Negotiated {
        version: rustls::ProtocolVersion,
        suite: rustls::CipherSuite,
        tls_port: u16,
        plain_port: u16,
    }

    /// In the current netns: an mTLS handshake with the mesh's own TLS
    /// configs (server on 127.0.0.1:15008) sending `token` inside TLS, and a
    /// plaintext connection to 127.0.0.1:8080 sending `token` in the clear.
    fn exchange(token: &'static str) -> Negotiated {
        let pki = TestPki::new("cluster.local");
        let server_svid =
            pki.leaf(&SpiffeId::parse("spiffe://cluster.local/ns/default/sa/echo").unwrap());
        let client_svid =
            pki.leaf(&SpiffeId::parse("spiffe://cluster.local/ns/default/sa/client").unwrap());
        let server_cfg = Arc::new(server_config(
            Arc::new(SingleCertAndKey::from(server_svid.certified_key())),
            Arc::new(SpiffeClientVerifier::new(
                pki.bundle_arc(),
                pki.trust_domain(),
                None,
                ClientAuth::Required,
            )),
            &[b"h2"],
        ));
        let client_cfg = Arc::new(client_config(
            Some(Arc::new(SingleCertAndKey::from(
                client_svid.certified_key(),
            ))),
            Arc::new(SpiffeServerVerifier::new(
                pki.bundle_arc(),
                pki.trust_domain(),
                None,
            )),
            &[b"h2"],
        ));
        let tls_listener = TcpListener::bind("127.0.0.1:15008").unwrap();
        let plain_listener = TcpListener::bind("127.0.0.1:8080").unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let (tcp, _) = tls_listener.accept().unwrap();
                let conn = rustls::ServerConnection::new(server_cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = vec![0u8; token.len()];
                tls.read_exact(&mut buf).unwrap();
                tls.write_all(b"ok").unwrap();
                tls.flush().unwrap();
            });
            s.spawn(|| {
                let (mut tcp, _) = plain_listener.accept().unwrap();
                let mut buf = vec![0u8; token.len()];
                tcp.read_exact(&mut buf).unwrap();
                tcp.write_all(b"ok").unwrap();
            });
            let tcp = std::net::TcpStream::connect("127.0.0.1:15008").unwrap();
            let name = rustls_pki_types::ServerName::try_from("echo.default.svc").unwrap();
            let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(token.as_bytes()).unwrap();
            let mut ok = [0u8; 2];
            tls.read_exact(&mut ok).unwrap();
            let negotiated = Negotiated {
                version: tls.conn.protocol_version().unwrap(),
                suite: tls.conn.negotiated_cipher_suite().unwrap().suite(),
                tls_port: 15008,
                plain_port: 8080,
            };
            let mut plain = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
            plain.write_all(token.as_bytes()).unwrap();
            plain.read_exact(&mut ok).unwrap();
            negotiated
        })
    }

    /// tcpdump on loopback in a fresh netns while a real rustls TLS 1.3
    /// handshake and a plaintext connection carry the same token: the parser
    /// reads the version and cipher rustls chose from the capture, and finds
    /// the token on the plaintext flow only.
    #[test]
    fn real_capture_shows_tls13_cipher_and_plaintext_only_on_the_plain_flow() {
        hawser_api::tls::install_crypto_provider();
        let netns = TestNetns::new();
        let tcpdump = Tcpdump::start(&netns.0, "lo").expect("tcpdump starts and listens");
        const TOKEN: &str = "hawser-verify-4f1c9a0b7d2e";
        let negotiated = sys::in_netns(&netns.0, || exchange(TOKEN)).expect("run in the netns");
        let captured = tcpdump.stop().expect("tcpdump stops cleanly");
        assert_eq!(captured.dropped, Some(0), "{captured:?}");

        let capture = parse(&captured.pcap).expect("tcpdump wrote a pcap");
        assert_eq!(capture.link_type, LINKTYPE_ETHERNET);
        let flows = capture.flows();
        let tls_flow = flows
            .iter()
            .find(|f| f.key.server.port() == negotiated.tls_port)
            .expect("a flow to :15008");
        assert!(tls_flow.saw_syn);
        assert_ne!(tls_flow.key.client.port(), negotiated.tls_port);
        let tls = tls_flow.tls();
        assert!(tls.is_tls(), "{tls:?}");
        let sh = tls.server_hello.expect("the ServerHello was captured");
        assert_eq!(sh.version(), 0x0304);
        assert_eq!(sh.version_name(), "TLSv1_3");
        assert_eq!(
            rustls::ProtocolVersion::from(sh.version()),
            negotiated.version
        );
        assert_eq!(sh.cipher_suite, u16::from(negotiated.suite));
        assert_eq!(
            sh.cipher_name(),
            negotiated.suite.as_str().unwrap_or_default()
        );
        assert!(!sh.hello_retry_request);
        let ch = tls.client_hello.expect("the ClientHello was captured");
        assert_eq!(ch.alpn, ["h2"]);
        assert!(ch.versions.contains(&0x0304));
        assert!(ch.cipher_suites.contains(&sh.cipher_suite));
        assert!(tls.to_server.application_data > 0 && tls.to_client.application_data > 0);

        let hits: Vec<_> = flows
            .iter()
            .flat_map(|f| f.find(TOKEN.as_bytes()).into_iter().map(|d| (f.key, d)))
            .collect();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].0.server.port(), negotiated.plain_port);
        assert_eq!(hits[0].1, Direction::ToServer);
        let plain = flows
            .iter()
            .find(|f| f.key.server.port() == negotiated.plain_port)
            .expect("the plaintext flow");
        assert!(!plain.tls().is_tls());

        // Damaged captures of the same real bytes never panic.
        for cut in (0..captured.pcap.len()).step_by(7) {
            let _ = parse(&captured.pcap[..cut]).map(|c| c.flows().iter().map(Flow::tls).count());
        }
        let mut flipped = captured.pcap.clone();
        for i in (24..flipped.len()).step_by(5) {
            flipped[i] ^= 0xa5;
            let _ = parse(&flipped).map(|c| c.flows().iter().map(Flow::tls).count());
        }
    }

    #[test]
    fn rejects_what_is_not_a_classic_pcap() {
        assert_eq!(parse(b"short"), Err(PcapError::TooShort(5)));
        let mut ng = vec![0x0a, 0x0d, 0x0d, 0x0a];
        ng.resize(24, 0);
        assert_eq!(parse(&ng), Err(PcapError::Pcapng));
        let mut usb = write_pcap(&[]);
        usb[20] = 189;
        assert_eq!(parse(&usb), Err(PcapError::LinkType(189)));
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Out of order, retransmitted and split segments come back as one
    /// stream; a token split across two segments is still found.
    #[test]
    fn reassembles_tcp_streams_in_sequence_order() {
        let (c, s) = (addr("10.244.1.5:40112"), addr("10.244.2.7:8080"));
        let seg = |src, dst, seq, flags, payload| Segment {
            src,
            dst,
            seq,
            flags,
            payload,
        };
        let pcap = write_pcap(&[
            seg(c, s, 999, TCP_SYN, b""),
            seg(s, c, 4999, TCP_SYN | TCP_ACK, b""),
            seg(c, s, 1007, TCP_ACK, b"SECRET-token"),
            seg(c, s, 1000, TCP_ACK, b"GET /a-"),
            seg(c, s, 1000, TCP_ACK, b"GET /a-"),
            seg(s, c, 5000, TCP_ACK, b"HTTP/1.1 200"),
        ]);
        let capture = parse(&pcap).unwrap();
        let flows = capture.flows();
        assert_eq!(flows.len(), 1);
        let f = &flows[0];
        assert_eq!((f.key.client, f.key.server), (c, s));
        assert_eq!(f.to_server.stream, b"GET /a-SECRET-token");
        assert!(!f.to_server.gap);
        assert_eq!(f.to_client.stream, b"HTTP/1.1 200");
        assert_eq!(f.find(b"a-SECRET"), [Direction::ToServer]);
        assert!(f.find(b"nothing").is_empty());
    }

    /// A capture that starts after the handshake (a pooled connection):
    /// the records still frame, with no hello to read.
    #[test]
    fn mid_connection_tls_frames_without_a_handshake() {
        let mut to_server = vec![0x42, 0x17]; // the tail of an earlier record
        to_server.extend(record(23, &[9; 40]));
        to_server.extend(record(23, &[8; 30]));
        let to_client = record(23, &[1; 20]);
        let tls = TlsSummary::read(&to_server, &to_client);
        assert!(tls.is_tls(), "{tls:?}");
        assert_eq!(tls.to_server.start, 2);
        assert_eq!(tls.to_server.application_data, 2);
        assert_eq!(tls.server_hello, None);

        let http = TlsSummary::read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n");
        assert!(!http.is_tls());
    }

    /// After a HelloRetryRequest, the second ServerHello is the choice.
    #[test]
    fn hello_retry_request_is_not_the_choice() {
        let mut to_client = server_hello(0x1301, HELLO_RETRY_RANDOM);
        to_client.extend(record(20, &[1]));
        to_client.extend(server_hello(0x1302, [3; 32]));
        to_client.extend(record(23, &[0; 64]));
        let tls = TlsSummary::read(&client_hello(), &to_client);
        let sh = tls.server_hello.unwrap();
        assert!(!sh.hello_retry_request);
        assert_eq!(sh.cipher_name(), "TLS13_AES_256_GCM_SHA384");
        assert_eq!(sh.version_name(), "TLSv1_3");
        let ch = tls.client_hello.unwrap();
        assert_eq!(ch.alpn, ["h2"]);
        assert_eq!(ch.cipher_suites, [0x1301, 0x1302]);
    }
}
