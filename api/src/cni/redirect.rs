//! Per-pod redirection settings: which inbound/outbound TCP bypasses the node
//! proxy, and which sources are the node's own (kubelet probes).
//!
//! [`RedirectSpec`] is the validated form of the wire message
//! [`proto::Redirection`]: the plugin refuses a reply it cannot turn into one,
//! and the node proxy builds one from pod annotations
//! ([`super::annotations`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::proto;

/// An IPv4 or IPv6 network in CIDR notation, with no host bits set.
///
/// A bare address parses as a host route (`/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("{0:?} is not an IP address or CIDR")]
    Address(String),
    /// The prefix length is not a number or too long for the family.
    #[error("{input:?} has an invalid prefix length (at most {max} for this address family)")]
    PrefixLen {
        /// The rejected input.
        input: String,
        /// The family's maximum.
        max: u8,
    },
    /// Bits outside the prefix are set, e.g. `10.0.0.1/8`.
    #[error("{input:?} has host bits set; did you mean {suggestion}?")]
    HostBits {
        /// The rejected input.
        input: String,
        /// The network the input probably meant.
        suggestion: Cidr,
    },
}

impl Cidr {
    /// Builds a CIDR, refusing host bits outside the prefix.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(CidrError::PrefixLen {
                input: format!("{addr}/{prefix_len}"),
                max,
            });
        }
        let masked = mask(addr, prefix_len);
        let cidr = Self {
            addr: masked,
            prefix_len,
        };
        if masked != addr {
            return Err(CidrError::HostBits {
                input: format!("{addr}/{prefix_len}"),
                suggestion: cidr,
            });
        }
        Ok(cidr)
    }

    /// A single-address network (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix_len: max_prefix(addr),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True for a single address.
    pub fn is_host(&self) -> bool {
        self.prefix_len == max_prefix(self.addr)
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(s.to_string()))?;
        match len {
            None => Ok(Self::host(ip)),
            Some(l) => {
                let max = max_prefix(ip);
                let len: u8 = l.parse().map_err(|_| CidrError::PrefixLen {
                    input: s.to_string(),
                    max,
                })?;
                Self::new(ip, len).map_err(|e| match e {
                    CidrError::HostBits { suggestion, .. } => CidrError::HostBits {
                        input: s.to_string(),
                        suggestion,
                    },
                    CidrError::PrefixLen { max, .. } => CidrError::PrefixLen {
                        input: s.to_string(),
                        max,
                    },
                    other => other,
                })
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a [`proto::Redirection`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectionError {
    /// A port is 0 or above 65535.
    #[error("{field}: {port} is not a TCP port (1-65535)")]
    Port {
        /// Which list.
        field: &'static str,
        /// The rejected value.
        port: u32,
    },
    /// A CIDR does not parse.
    #[error("{field}: {source}")]
    Cidr {
        /// Which list.
        field: &'static str,
        /// What is wrong with it.
        source: CidrError,
    },
    /// A probe source is not a plain address.
    #[error("probe_source_addresses: {0:?} is not an IP address")]
    ProbeSource(String),
}

/// Validated per-pod redirection settings (see `api/proto/cni.proto`,
/// message `Redirection`, for the meaning of each field).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectSpec {
    /// Pod ports whose inbound TCP is not captured.
    #[serde(default)]
    pub exclude_inbound_ports: BTreeSet<u16>,
    /// Destination ports whose outbound TCP is not captured.
    #[serde(default)]
    pub exclude_outbound_ports: BTreeSet<u16>,
    /// Destinations whose outbound TCP is not captured.
    #[serde(default)]
    pub exclude_outbound_cidrs: BTreeSet<Cidr>,
    /// Sources whose inbound TCP is not captured.
    #[serde(default)]
    pub exclude_inbound_cidrs: BTreeSet<Cidr>,
    /// The node's own addresses (kubelet probe sources): inbound TCP from
    /// them is not captured.
    #[serde(default)]
    pub probe_sources: BTreeSet<IpAddr>,
}

fn port(field: &'static str, port: u32) -> Result<u16, RedirectionError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(RedirectionError::Port { field, port }),
    }
}

fn cidrs(field: &'static str, list: &[String]) -> Result<BTreeSet<Cidr>, RedirectionError> {
    list.iter()
        .map(|s| {
            s.parse()
                .map_err(|source| RedirectionError::Cidr { field, source })
        })
        .collect()
}

impl TryFrom<&proto::Redirection> for RedirectSpec {
    type Error = RedirectionError;

    fn try_from(r: &proto::Redirection) -> Result<Self, Self::Error> {
        Ok(Self {
            exclude_inbound_ports: r
                .exclude_inbound_ports
                .iter()
                .map(|p| port("exclude_inbound_ports", *p))
                .collect::<Result<_, _>>()?,
            exclude_outbound_ports: r
                .exclude_outbound_ports
                .iter()
                .map(|p| port("exclude_outbound_ports", *p))
                .collect::<Result<_, _>>()?,
            exclude_outbound_cidrs: cidrs("exclude_outbound_cidrs", &r.exclude_outbound_cidrs)?,
            exclude_inbound_cidrs: cidrs("exclude_inbound_cidrs", &r.exclude_inbound_cidrs)?,
            probe_sources: r
                .probe_source_addresses
                .iter()
                .map(|s| {
                    s.parse()
                        .map_err(|_| RedirectionError::ProbeSource(s.clone()))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&RedirectSpec> for proto::Redirection {
    fn from(r: &RedirectSpec) -> Self {
        Self {
            exclude_inbound_ports: r
                .exclude_inbound_ports
                .iter()
                .map(|p| u32::from(*p))
                .collect(),
            exclude_outbound_ports: r
                .exclude_outbound_ports
                .iter()
                .map(|p| u32::from(*p))
                .collect(),
            exclude_outbound_cidrs: r
                .exclude_outbound_cidrs
                .iter()
                .map(Cidr::to_string)
                .collect(),
            exclude_inbound_cidrs: r
                .exclude_inbound_cidrs
                .iter()
                .map(Cidr::to_string)
                .collect(),
            probe_source_addresses: r.probe_sources.iter().map(IpAddr::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_is_strict_and_explains() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.0.0.1/8\" has host bits set; did you mean 10.0.0.0/8?"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixLen { max: 32, .. })
        ));
        assert!(matches!(
            "example.com/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        let net: Cidr = "10.250.0.0/16".parse().unwrap();
        assert!(net.contains("10.250.3.4".parse().unwrap()));
        assert!(!net.contains("10.251.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
    }

    #[test]
    fn redirection_round_trips_and_rejects_bad_values() {
        let wire = proto::Redirection {
            exclude_inbound_ports: vec![8080, 9090],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".into(), "fd00::/8".into()],
            exclude_inbound_cidrs: vec!["192.168.1.0/24".into()],
            probe_source_addresses: vec!["172.18.0.2".into()],
        };
        let spec = RedirectSpec::try_from(&wire).unwrap();
        assert!(spec.exclude_inbound_ports.contains(&8080));
        assert_eq!(proto::Redirection::from(&spec), wire);

        let bad = proto::Redirection {
            exclude_outbound_ports: vec![70000],
            ..Default::default()
        };
        assert_eq!(
            RedirectSpec::try_from(&bad).unwrap_err().to_string(),
            "exclude_outbound_ports: 70000 is not a TCP port (1-65535)"
        );
        let bad = proto::Redirection {
            exclude_outbound_cidrs: vec!["10.0.0.1/8".into()],
            ..Default::default()
        };
        assert!(
            RedirectSpec::try_from(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("exclude_outbound_cidrs: ")
        );
    }
}
