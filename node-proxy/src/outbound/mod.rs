//! Outbound destination resolution: what a connection captured on 15001
//! should reach. The original destination is a Service VIP:port (pick a ready
//! endpoint and map the port), an enrolled pod (tunnel over HBONE to its
//! 15008, requiring its SPIFFE ID), or anything else (plain TCP, untouched).
//!
//! [`Destinations`] is built once per config version; lookups are hash maps.

mod balance;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hawser_api::SpiffeId;
use hawser_api::cni::HBONE_INBOUND_PORT;
use hawser_api::proto::discovery::{self as pb, Workload};

pub use balance::{Balancer, InFlight};

use crate::discovery::NodeConfig;

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect (pod IP and target port).
    pub addr: SocketAddr,
    /// The pod, if the mesh knows it.
    pub workload_uid: String,
}

impl Endpoint {
    /// The ready endpoints of Service `s`'s port `port`: those with a target
    /// port for it (in range) and an address that parses.
    pub fn ready_of(s: &pb::Service, port: u32) -> Vec<Self> {
        s.endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| {
                let target = u16::try_from(*e.ports.get(&port)?).ok()?;
                let ip = e.addresses.iter().find_map(|a| a.parse::<IpAddr>().ok())?;
                Some(Self {
                    addr: SocketAddr::new(ip, target),
                    workload_uid: e.workload_uid.clone(),
                })
            })
            .collect()
    }
}

/// A Service port and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port.
    pub port: u16,
    /// The port's name (Istio's convention: `http-*`/`grpc-*` name the
    /// protocol when `appProtocol` is unset).
    pub name: String,
    /// Its `appProtocol` (empty when unset).
    pub app_protocol: String,
    /// Ready endpoints only.
    pub endpoints: Vec<Endpoint>,
    /// The protocols HTTP clients may upgrade to on it (the Service's
    /// `hawser.dev/allowed-upgrades`); `None`: the node's default.
    pub allowed_upgrades: Option<std::sync::Arc<[Box<str>]>>,
}

/// The allow-list a Service sets for upgrades on its ports, if any.
pub fn allowed_upgrades(s: &hawser_api::proto::discovery::Service) -> Option<Arc<[Box<str>]>> {
    s.upgrades
        .as_ref()
        .map(|u| u.protocols.iter().map(|p| Box::from(p.as_str())).collect())
}

/// How to reach the chosen upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// HBONE: CONNECT `target` through `proxy` (`<pod-ip>:15008`), which must
    /// prove `identity`.
    Hbone {
        /// The CONNECT target (pod IP and port).
        target: SocketAddr,
        /// The destination pod's HBONE address.
        proxy: SocketAddr,
        /// The identity the destination must present.
        identity: SpiffeId,
    },
    /// Plain TCP to a destination outside the mesh.
    Plain(SocketAddr),
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The Service has no ready endpoint for the port.
    #[error("service {service} port {port} has no ready endpoints")]
    NoEndpoints {
        /// `namespace/name`.
        service: String,
        /// The port.
        port: u16,
    },
    /// The destination pod is enrolled but its identity is unusable.
    #[error("destination pod {uid} has no valid identity: {reason}")]
    BadIdentity {
        /// The pod.
        uid: String,
        /// Why.
        reason: String,
    },
}

/// Lookup tables derived from one [`NodeConfig`].
#[derive(Debug, Default)]
pub struct Destinations {
    by_vip: HashMap<SocketAddr, Arc<ServicePort>>,
    by_ip: HashMap<IpAddr, Arc<Member>>,
}

/// A workload of the mesh with its identity parsed once per config version
/// (not per connection).
#[derive(Debug)]
struct Member {
    workload: Workload,
    /// Its SPIFFE ID when enrolled; why it is unusable otherwise.
    identity: Option<Result<SpiffeId, String>>,
}

impl Destinations {
    /// Indexes the Services (by every VIP and port) and workloads (by IP).
    pub fn new(config: &NodeConfig) -> Self {
        let mut by_ip = HashMap::new();
        for w in config.workloads() {
            let member = Arc::new(Member {
                identity: w
                    .enrolled
                    .then(|| SpiffeId::parse_workload(&w.spiffe_id).map_err(|e| e.to_string())),
                workload: w.clone(),
            });
            for ip in w.ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                by_ip.insert(ip, member.clone());
            }
        }
        let mut by_vip = HashMap::new();
        for s in config.services() {
            let service = format!("{}/{}", s.namespace, s.name);
            for p in &s.ports {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let endpoints = Endpoint::ready_of(s, p.port);
                let sp = Arc::new(ServicePort {
                    service: service.clone(),
                    port,
                    name: p.name.clone(),
                    app_protocol: p.app_protocol.clone(),
                    endpoints,
                    allowed_upgrades: allowed_upgrades(s),
                });
                for vip in s.vips.iter().filter_map(|v| v.parse::<IpAddr>().ok()) {
                    by_vip.insert(SocketAddr::new(vip, port), sp.clone());
                }
            }
        }
        Self { by_vip, by_ip }
    }

    /// The Service port behind `addr`, if it is a VIP.
    pub fn service(&self, addr: SocketAddr) -> Option<&Arc<ServicePort>> {
        self.by_vip.get(&addr)
    }

    /// Every endpoint address of every Service port.
    pub fn endpoint_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.by_vip
            .values()
            .flat_map(|sp| sp.endpoints.iter().map(|e| e.addr))
    }

    /// The workload with IP `ip`.
    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_ip.get(&ip).map(|m| &m.workload)
    }

    /// Resolves a captured connection's original destination to a route,
    /// picking a Service endpoint with `balancer`. The returned [`InFlight`]
    /// counts the connection against the endpoint until it is dropped.
    pub fn resolve(
        &self,
        original: SocketAddr,
        balancer: &Balancer,
    ) -> Result<(Route, Option<InFlight>), OutboundError> {
        let (target, in_flight) = match self.service(original) {
            Some(sp) => {
                let (endpoint, in_flight) =
                    balancer
                        .pick(&sp.endpoints)
                        .ok_or_else(|| OutboundError::NoEndpoints {
                            service: sp.service.clone(),
                            port: sp.port,
                        })?;
                (endpoint.addr, Some(in_flight))
            }
            None => (original, None),
        };
        Ok((self.route_to(target)?, in_flight))
    }

    /// HBONE to an enrolled pod, plain TCP otherwise.
    pub fn route_to(&self, target: SocketAddr) -> Result<Route, OutboundError> {
        let Some(member) = self.by_ip.get(&target.ip()) else {
            return Ok(Route::Plain(target));
        };
        match &member.identity {
            None => Ok(Route::Plain(target)),
            Some(Ok(identity)) => Ok(Route::Hbone {
                target,
                proxy: SocketAddr::new(target.ip(), HBONE_INBOUND_PORT),
                identity: identity.clone(),
            }),
            Some(Err(reason)) => Err(OutboundError::BadIdentity {
                uid: member.workload.uid.clone(),
                reason: reason.clone(),
            }),
        }
    }
}
