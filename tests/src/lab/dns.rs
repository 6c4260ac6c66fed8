//! The lab's cluster DNS, as CoreDNS answers for Kubernetes: A records for
//! `<service>.<namespace>.svc.cluster.local` (the ClusterIP; a headless
//! Service's ready pod IPs), NXDOMAIN for other names in the cluster domain
//! and for everything else (the lab has no upstream). Pods find it through a
//! `resolv.conf` with the Kubernetes search path, so `<svc>` and
//! `<svc>.<ns>` resolve too.
//!
//! The server runs as a lab process in the underlay namespace and reloads
//! its records file whenever the lab rewrites it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::SystemTime;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// TTL of every answer (short: the lab changes fast).
const TTL: u32 = 5;

/// Name (lowercase, no trailing dot) → addresses.
pub type Records = BTreeMap<String, Vec<Ipv4Addr>>;

/// The answer to one query packet; None for packets that are not queries.
pub fn answer(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = false;
    response.metadata.authoritative = true;
    let Some(q) = request.queries.first().cloned() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    response.add_query(q.clone());
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response.to_vec().ok();
    }
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match records.get(&name) {
        Some(ips) => {
            // The name exists: A queries get its addresses, other types an
            // empty NOERROR (no IPv6 in the lab), as CoreDNS answers.
            if q.query_type() == RecordType::A {
                for ip in ips {
                    response.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::A(A(*ip)),
                    ));
                }
            }
        }
        None => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response.to_vec().ok()
}

/// Serves `socket` forever, reloading `records_file` when it changes.
pub fn serve(socket: &UdpSocket, records_file: &Path) -> std::io::Result<()> {
    let mut records = Records::new();
    let mut loaded: Option<SystemTime> = None;
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        let modified = std::fs::metadata(records_file)
            .and_then(|m| m.modified())
            .ok();
        if modified != loaded
            && let Some(r) = std::fs::read(records_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Records>(&b).ok())
        {
            records = r;
            loaded = modified;
        }
        if let Some(reply) = answer(&buf[..n], &records) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
        m.to_vec().expect("encode")
    }

    fn records() -> Records {
        let mut r = Records::new();
        r.insert(
            "echo.shop.svc.cluster.local".into(),
            vec![Ipv4Addr::new(10, 96, 0, 10)],
        );
        r
    }

    #[test]
    fn answers_services_and_nxdomain() {
        let reply = Message::from_vec(
            &answer(
                &query("Echo.Shop.svc.cluster.local.", RecordType::A),
                &records(),
            )
            .expect("reply"),
        )
        .expect("decode");
        assert_eq!(reply.metadata.id, 7);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(
            &reply.answers[0].data,
            &RData::A(A(Ipv4Addr::new(10, 96, 0, 10)))
        );

        let aaaa = Message::from_vec(
            &answer(
                &query("echo.shop.svc.cluster.local.", RecordType::AAAA),
                &records(),
            )
            .expect("reply"),
        )
        .expect("decode");
        assert_eq!(
            (aaaa.metadata.response_code, aaaa.answers.len()),
            (ResponseCode::NoError, 0)
        );

        let unknown = Message::from_vec(
            &answer(
                &query("nope.shop.svc.cluster.local.", RecordType::A),
                &records(),
            )
            .expect("reply"),
        )
        .expect("decode");
        assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn garbage_is_ignored_never_panics() {
        assert!(answer(b"", &records()).is_none());
        assert!(answer(&[0xff; 3], &records()).is_none());
        let mut q = query("echo.shop.svc.cluster.local.", RecordType::A);
        for cut in 0..q.len() {
            let _ = answer(&q[..cut], &records());
        }
        for i in 0..q.len() {
            q[i] ^= 0x5a;
            let _ = answer(&q, &records());
        }
    }
}
