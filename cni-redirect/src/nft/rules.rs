//! Rule generation: the `inet hawser` table written into an enrolled pod's
//! netns, built with the `nftables` crate's typed schema.
//!
//! ```text
//! table inet hawser {
//!   chain prerouting {            # inbound to the pod
//!     type nat hook prerouting priority dstnat; policy accept;
//!     iifname "lo" return                            # loopback
//!     meta mark 0x539 return                         # the proxy's own packets
//!     ip saddr { <gateways>, <node addresses> } return   # kubelet probes
//!     ip saddr { <exclude-inbound-cidrs> } return
//!     tcp dport { 15008, <exclude-inbound-ports> } return
//!     meta l4proto tcp redirect to :15006
//!   }
//!   chain output {                # outbound from the pod
//!     type nat hook output priority -100; policy accept;
//!     oifname "lo" return                            # loopback, incl. the pod's own IP
//!     meta mark 0x539 return                         # the proxy's own sockets
//!     ip daddr { <exclude-outbound-cidrs> } return
//!     tcp dport { <exclude-outbound-ports> } return
//!     meta l4proto tcp redirect to :15001
//!   }
//! }
//! ```
//!
//! (IPv6 sets use `ip6 saddr`/`ip6 daddr`.) NAT chains only see the first
//! packet of a connection, so replies and established flows are untouched.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;

use hawser_api::cni::redirect::{Cidr, RedirectSpec};
use hawser_api::cni::{
    HBONE_INBOUND_PORT, INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT, PROXY_MARK,
};
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name (family `inet`).
pub const TABLE: &str = "hawser";
/// Inbound chain.
pub const PREROUTING: &str = "prerouting";
/// Outbound chain.
pub const OUTPUT: &str = "output";

/// Priority of both chains: `dstnat` (-100), where DNAT/REDIRECT belong.
const NAT_PRIORITY: i32 = -100;

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn chain(name: &'static str, hook: NfHook) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(NAT_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn rule(chain: &'static str, stmts: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(stmts),
        ..Rule::default()
    })
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ret() -> Statement<'static> {
    Statement::Return(None)
}

fn redirect(port: u16) -> Statement<'static> {
    Statement::Redirect(Some(NAT {
        addr: None,
        family: None,
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}

fn cidr_expr(c: &Cidr) -> Expression<'static> {
    let addr = Expression::String(c.addr().to_string().into());
    if c.is_host() {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: u32::from(c.prefix_len()),
        }))
    }
}

/// Drops networks contained in another one of the set (nft rejects or merges
/// overlapping intervals inconsistently across versions).
fn minimal(cidrs: &BTreeSet<Cidr>) -> Vec<Cidr> {
    cidrs
        .iter()
        .filter(|c| {
            !cidrs
                .iter()
                .any(|o| o != *c && o.prefix_len() <= c.prefix_len() && o.contains(c.addr()))
        })
        .copied()
        .collect()
}

/// `ip saddr { … } return` and `ip6 saddr { … } return` rules for `cidrs`.
fn addr_returns(
    chain: &'static str,
    field: &'static str,
    cidrs: &BTreeSet<Cidr>,
) -> Vec<NfListObject<'static>> {
    let cidrs = minimal(cidrs);
    [("ip", true), ("ip6", false)]
        .into_iter()
        .filter_map(|(proto, v4)| {
            let items: Vec<SetItem<'static>> = cidrs
                .iter()
                .filter(|c| c.addr().is_ipv4() == v4)
                .map(|c| SetItem::Element(cidr_expr(c)))
                .collect();
            (!items.is_empty()).then(|| {
                rule(
                    chain,
                    vec![
                        matches(
                            payload(proto, field),
                            Expression::Named(NamedExpression::Set(items)),
                        ),
                        ret(),
                    ],
                )
            })
        })
        .collect()
}

fn port_return(chain: &'static str, ports: &BTreeSet<u16>) -> Option<NfListObject<'static>> {
    (!ports.is_empty()).then(|| {
        let items = ports
            .iter()
            .map(|p| SetItem::Element(Expression::Number(u32::from(*p))))
            .collect();
        rule(
            chain,
            vec![
                matches(
                    payload("tcp", "dport"),
                    Expression::Named(NamedExpression::Set(items)),
                ),
                ret(),
            ],
        )
    })
}

/// The complete table for a pod, as one atomic transaction that replaces
/// any previous `inet hawser` table (so a retried ADD converges).
pub fn redirect_ruleset(spec: &RedirectSpec) -> Nftables<'static> {
    let mut batch = Batch::new();
    // add + delete + add: atomically replaces the table whether or not it
    // existed.
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(chain(PREROUTING, NfHook::Prerouting)));
    batch.add(NfListObject::Chain(chain(OUTPUT, NfHook::Output)));

    // Inbound.
    batch.add(rule(
        PREROUTING,
        vec![
            matches(meta(MetaKey::Iifname), Expression::String("lo".into())),
            ret(),
        ],
    ));
    batch.add(rule(
        PREROUTING,
        vec![
            matches(meta(MetaKey::Mark), Expression::Number(PROXY_MARK)),
            ret(),
        ],
    ));
    let probes: BTreeSet<Cidr> = spec
        .probe_sources
        .iter()
        .map(|ip: &IpAddr| Cidr::host(*ip))
        .collect();
    for r in addr_returns(PREROUTING, "saddr", &probes) {
        batch.add(r);
    }
    for r in addr_returns(PREROUTING, "saddr", &spec.exclude_inbound_cidrs) {
        batch.add(r);
    }
    let mut inbound_ports = spec.exclude_inbound_ports.clone();
    inbound_ports.insert(HBONE_INBOUND_PORT);
    if let Some(r) = port_return(PREROUTING, &inbound_ports) {
        batch.add(r);
    }
    batch.add(rule(
        PREROUTING,
        vec![
            matches(meta(MetaKey::L4proto), Expression::String("tcp".into())),
            redirect(INBOUND_CAPTURE_PORT),
        ],
    ));

    // Outbound.
    batch.add(rule(
        OUTPUT,
        vec![
            matches(meta(MetaKey::Oifname), Expression::String("lo".into())),
            ret(),
        ],
    ));
    batch.add(rule(
        OUTPUT,
        vec![
            matches(meta(MetaKey::Mark), Expression::Number(PROXY_MARK)),
            ret(),
        ],
    ));
    for r in addr_returns(OUTPUT, "daddr", &spec.exclude_outbound_cidrs) {
        batch.add(r);
    }
    if let Some(r) = port_return(OUTPUT, &spec.exclude_outbound_ports) {
        batch.add(r);
    }
    batch.add(rule(
        OUTPUT,
        vec![
            matches(meta(MetaKey::L4proto), Expression::String("tcp".into())),
            redirect(OUTBOUND_CAPTURE_PORT),
        ],
    ));
    batch.to_nftables()
}

/// Removes the table if present (add + delete: no error when it is absent).
pub fn delete_ruleset() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules_of(n: &Nftables<'_>, chain: &str) -> Vec<serde_json::Value> {
        let v = serde_json::to_value(n).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add").and_then(|a| a.get("rule")))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn default_spec_captures_all_tcp_except_hbone_loopback_and_mark() {
        let n = redirect_ruleset(&RedirectSpec::default());
        let pre = rules_of(&n, PREROUTING);
        assert_eq!(pre.len(), 4, "{pre:#?}");
        assert_eq!(pre[0][0]["match"]["right"], json!("lo"));
        assert_eq!(pre[1][0]["match"]["right"], json!(0x539));
        assert_eq!(pre[2][0]["match"]["right"], json!({"set": [15008]}));
        assert_eq!(pre[3][1], json!({"redirect": {"port": 15006}}));
        let out = rules_of(&n, OUTPUT);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2][1], json!({"redirect": {"port": 15001}}));
    }

    #[test]
    fn exclusions_and_probe_sources_become_return_rules() {
        let spec = RedirectSpec {
            exclude_inbound_ports: [9090].into(),
            exclude_outbound_ports: [5432].into(),
            exclude_outbound_cidrs: [
                "10.96.0.0/12".parse().unwrap(),
                "10.96.1.0/24".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ]
            .into(),
            exclude_inbound_cidrs: BTreeSet::new(),
            probe_sources: ["10.250.3.1".parse().unwrap()].into(),
        };
        let n = redirect_ruleset(&spec);
        let pre = rules_of(&n, PREROUTING);
        assert!(pre.contains(&json!([
            {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": ["10.250.3.1"]}, "op": "=="}},
            {"return": null}
        ])), "{pre:#?}");
        assert!(
            pre.iter()
                .any(|r| r[0]["match"]["right"] == json!({"set": [9090, 15008]}))
        );
        let out = rules_of(&n, OUTPUT);
        // The /24 inside the /12 is dropped; v4 and v6 get separate rules.
        assert!(out.contains(&json!([
            {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.96.0.0", "len": 12}}]}, "op": "=="}},
            {"return": null}
        ])), "{out:#?}");
        assert!(
            out.iter()
                .any(|r| r[0]["match"]["left"]["payload"]["protocol"] == "ip6")
        );
        assert!(
            out.iter()
                .any(|r| r[0]["match"]["right"] == json!({"set": [5432]}))
        );
        // Redirects stay last.
        assert_eq!(out.last().unwrap()[1], json!({"redirect": {"port": 15001}}));
    }
}
