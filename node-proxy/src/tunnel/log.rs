//! The HBONE connections a node proxy has open (and recently closed): who is
//! at each end, as TLS proved, and what TLS negotiated. The admin API serves
//! this list (`/connections`), so an operator (and `hawser verify-mtls`) can
//! match a connection seen on the wire to the identities behind it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hawser_api::SpiffeId;
use parking_lot::Mutex;
use rustls::CommonState;

/// How many closed connections are remembered.
pub const CLOSED_KEPT: usize = 256;

/// Which side of the tunnel this proxy is (the admin API's type).
pub use hawser_api::admin::ConnectionDirection as Direction;

/// What TLS negotiated on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1_3`.
    pub tls_version: String,
    /// The IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The ALPN protocol (`h2`).
    pub alpn: String,
}

impl Negotiated {
    /// Reads the negotiated parameters of an established connection.
    pub fn of(conn: &CommonState) -> Self {
        Self {
            tls_version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        }
    }
}

/// One HBONE connection, as it goes on.
#[derive(Debug)]
pub struct ConnectionRecord {
    /// Which side this proxy is.
    pub direction: Direction,
    /// The local pod, `namespace/name`.
    pub pod: String,
    /// This end's address (the pod's IP: tunnels leave from and arrive in
    /// the pod's namespace).
    pub local: SocketAddr,
    /// The other end's address.
    pub peer: SocketAddr,
    /// The identity this end presented.
    pub local_identity: SpiffeId,
    /// The identity the peer proved.
    pub peer_identity: SpiffeId,
    /// What TLS negotiated.
    pub tls: Negotiated,
    /// When it was established (Unix milliseconds).
    pub opened_unix_ms: u64,
    /// When it closed (Unix milliseconds); 0 while open.
    closed_unix_ms: AtomicU64,
    /// CONNECT streams it has carried.
    streams: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl ConnectionRecord {
    /// A record of a connection established now.
    pub fn new(
        direction: Direction,
        pod: String,
        local: SocketAddr,
        peer: SocketAddr,
        identities: (&SpiffeId, &SpiffeId),
        tls: Negotiated,
    ) -> Self {
        Self {
            direction,
            pod,
            local,
            peer,
            local_identity: identities.0.clone(),
            peer_identity: identities.1.clone(),
            tls,
            opened_unix_ms: now_ms(),
            closed_unix_ms: AtomicU64::new(0),
            streams: AtomicU64::new(0),
        }
    }

    /// The record as the admin API shows it (`GET /connections`).
    pub fn to_admin(&self) -> hawser_api::admin::HboneConnection {
        hawser_api::admin::HboneConnection {
            direction: self.direction,
            pod: self.pod.clone(),
            local: self.local,
            peer: self.peer,
            local_identity: self.local_identity.clone(),
            peer_identity: self.peer_identity.clone(),
            tls_version: self.tls.tls_version.clone(),
            cipher: self.tls.cipher.clone(),
            alpn: (!self.tls.alpn.is_empty()).then(|| self.tls.alpn.clone()),
            opened_unix_ms: self.opened_unix_ms,
            closed_unix_ms: match self.closed_unix_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            streams: self.streams.load(Ordering::Relaxed),
        }
    }

    /// Counts one more stream.
    pub fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the connection closed.
    pub fn close(&self) {
        self.closed_unix_ms
            .store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.closed_unix_ms.load(Ordering::Relaxed) == 0
    }
}

/// Open connections and the last [`CLOSED_KEPT`] closed ones.
#[derive(Debug, Default)]
pub struct ConnectionLog {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    entries: VecDeque<Arc<ConnectionRecord>>,
    /// The length at which `record` prunes next.
    prune_at: usize,
}

impl ConnectionLog {
    /// Adds a connection; forgets the oldest closed ones beyond the bound.
    pub fn record(&self, record: ConnectionRecord) -> Arc<ConnectionRecord> {
        let record = Arc::new(record);
        let mut log = self.entries.lock();
        log.entries.push_back(record.clone());
        // Scanning on every connection would cost O(open connections): the
        // list is pruned when it has grown by CLOSED_KEPT since the last
        // prune, so the cost per connection stays constant.
        if log.entries.len() >= log.prune_at {
            prune(&mut log.entries);
            log.prune_at = log.entries.len() + CLOSED_KEPT;
        }
        record
    }

    /// Every remembered connection, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ConnectionRecord>> {
        let mut log = self.entries.lock();
        prune(&mut log.entries);
        log.prune_at = log.entries.len() + CLOSED_KEPT;
        log.entries.iter().cloned().collect()
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.entries
            .lock()
            .entries
            .iter()
            .filter(|e| e.is_open())
            .count()
    }
}

/// Keeps every open connection and the newest [`CLOSED_KEPT`] closed ones.
fn prune(entries: &mut VecDeque<Arc<ConnectionRecord>>) {
    let closed = entries.iter().filter(|e| !e.is_open()).count();
    if closed > CLOSED_KEPT {
        let mut excess = closed - CLOSED_KEPT;
        entries.retain(|e| {
            if excess > 0 && !e.is_open() {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(log: &ConnectionLog, port: u16) -> Arc<ConnectionRecord> {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").expect("id");
        log.record(ConnectionRecord::new(
            Direction::Outbound,
            "a/p".into(),
            SocketAddr::from(([10, 0, 0, 1], port)),
            SocketAddr::from(([10, 0, 0, 2], 15008)),
            (&id, &id),
            Negotiated {
                tls_version: "TLSv1_3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                alpn: "h2".into(),
            },
        ))
    }

    #[test]
    fn keeps_open_connections_and_a_bounded_tail_of_closed_ones() {
        let log = ConnectionLog::default();
        let open = record(&log, 1);
        for port in 2..(2 + CLOSED_KEPT as u16 + 10) {
            record(&log, port).close();
        }
        let all = log.snapshot();
        assert_eq!(all.len(), CLOSED_KEPT + 1);
        assert!(Arc::ptr_eq(&all[0], &open), "the open one is kept");
        assert_eq!(log.open(), 1);
        // The oldest closed ones went.
        assert_eq!(all[1].local.port(), 12);
    }

    #[test]
    fn serializes_as_the_admin_contract_says() {
        let log = ConnectionLog::default();
        let r = record(&log, 40000);
        r.stream_opened();
        let v = serde_json::to_value(r.to_admin()).expect("json");
        assert_eq!(v["direction"], "outbound");
        assert_eq!(v["local"], "10.0.0.1:40000");
        assert_eq!(v["peer"], "10.0.0.2:15008");
        assert_eq!(v["tls_version"], "TLSv1_3");
        assert_eq!(v["alpn"], "h2");
        assert_eq!(v["streams"], 1);
        assert!(v["closed_unix_ms"].is_null());
        r.close();
        let v = serde_json::to_value(r.to_admin()).expect("json");
        assert!(v["closed_unix_ms"].as_u64().is_some_and(|ms| ms > 0));
        // What the readers of the admin API parse it back as.
        let back: hawser_api::admin::HboneConnection =
            serde_json::from_value(v).expect("the admin type reads it");
        assert_eq!(back, r.to_admin());
    }
}
