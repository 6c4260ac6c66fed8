//! What the Kubernetes API server would have filled in for objects that
//! come from files: UIDs, `metadata.generation` (bumped when a route's or
//! policy's spec changes), `creationTimestamp` (first seen, whole seconds)
//! and ClusterIPs (allocated from a service CIDR, stable per Service name).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{Meta, Object, ObjectRef, ServiceType};

/// The allocation range for ClusterIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (8-30).
    pub prefix_len: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(10, 96, 0, 0),
            prefix_len: 16,
        }
    }
}

#[derive(Debug)]
struct Seen {
    created: SystemTime,
    generation: i64,
    spec: Object,
}

/// Fills server-side fields in, remembering them across edits.
#[derive(Debug)]
pub struct ApiServer {
    cidr: ServiceCidr,
    seen: HashMap<ObjectRef, Seen>,
    allocated: HashMap<ObjectRef, Ipv4Addr>,
    in_use: HashSet<Ipv4Addr>,
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The object with its server-managed fields blanked, to tell spec edits apart.
fn spec_of(o: &Object) -> Object {
    let mut o = o.clone();
    let blank = |m: &mut Meta| {
        m.uid.clear();
        m.generation = 0;
        m.created = None;
    };
    match &mut o {
        Object::Namespace(_) => {}
        Object::Pod(p) => blank(&mut p.meta),
        Object::Service(s) => {
            blank(&mut s.meta);
            s.cluster_ips.clear();
        }
        Object::EndpointSlice(s) => blank(&mut s.meta),
        Object::Route(r) => blank(&mut r.meta),
        Object::AuthorizationPolicy(p) => p.generation = 0,
    }
    o
}

impl ApiServer {
    /// An emulator allocating ClusterIPs from `cidr`.
    pub fn new(cidr: ServiceCidr) -> Self {
        Self {
            cidr,
            seen: HashMap::new(),
            allocated: HashMap::new(),
            in_use: HashSet::new(),
        }
    }

    /// Fills `object` in as the API server would on create or update.
    pub fn admit(&mut self, object: &mut Object) {
        let r = object.object_ref();
        let spec = spec_of(object);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs()))
            .unwrap_or(UNIX_EPOCH);
        let seen = self.seen.entry(r.clone()).or_insert_with(|| Seen {
            created: now,
            generation: 1,
            spec: spec.clone(),
        });
        if seen.spec != spec {
            seen.generation += 1;
            seen.spec = spec;
        }
        let (created, generation) = (seen.created, seen.generation);
        let uid = format!(
            "{:016x}{:016x}",
            hash_of(&("uid", &r)),
            hash_of(&("uid2", &r))
        );
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &uid[0..8],
            &uid[8..12],
            &uid[12..16],
            &uid[16..20],
            &uid[20..32]
        );
        let fill = |m: &mut Meta| {
            if m.uid.is_empty() {
                m.uid = uid.clone();
            }
            if m.generation == 0 {
                m.generation = generation;
            }
            if m.created.is_none() {
                m.created = Some(created);
            }
        };
        match object {
            Object::Namespace(_) => {}
            Object::Pod(p) => fill(&mut p.meta),
            Object::Service(s) => {
                fill(&mut s.meta);
                if s.service_type == ServiceType::ClusterIp && s.cluster_ips.is_empty() {
                    if let Some(ip) = self.allocate(&r) {
                        s.cluster_ips.push(IpAddr::V4(ip));
                    }
                } else {
                    self.release(&r);
                }
            }
            Object::EndpointSlice(s) => fill(&mut s.meta),
            Object::Route(route) => fill(&mut route.meta),
            Object::AuthorizationPolicy(p) => {
                if p.generation == 0 {
                    p.generation = generation;
                }
            }
        }
    }

    /// Forgets a deleted object (and frees its ClusterIP).
    pub fn forget(&mut self, r: &ObjectRef) {
        self.seen.remove(r);
        self.release(r);
    }

    fn release(&mut self, r: &ObjectRef) {
        if let Some(ip) = self.allocated.remove(r) {
            self.in_use.remove(&ip);
        }
    }

    /// A stable address for `r`: a hash of its name into the range, probing
    /// past addresses in use. None when the range is full.
    fn allocate(&mut self, r: &ObjectRef) -> Option<Ipv4Addr> {
        if let Some(ip) = self.allocated.get(r) {
            return Some(*ip);
        }
        let host_bits = 32 - u32::from(self.cidr.prefix_len.clamp(8, 30));
        let size = 1u64 << host_bits;
        let base = u32::from(self.cidr.network) & !((1u32 << host_bits) - 1);
        // Skip the network address and the first host (conventionally the
        // API server's own Service), and the broadcast address.
        let usable = size - 3;
        let start = hash_of(&r.key) % usable;
        for i in 0..usable {
            let offset = u32::try_from((start + i) % usable + 2).ok()?;
            let ip = Ipv4Addr::from(base | offset);
            if self.in_use.insert(ip) {
                self.allocated.insert(r.clone(), ip);
                return Some(ip);
            }
        }
        None
    }
}
