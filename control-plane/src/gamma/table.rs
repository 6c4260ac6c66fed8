//! All routes of one Service merged into per-port tables.
//!
//! Routes in the Service's namespace are producer routes and apply to every
//! client; routes in another namespace are consumer routes and apply only to
//! clients in their own namespace, replacing the producer routes for them
//! (GEP-1294). Within one (port, audience), a GRPCRoute beats an HTTPRoute
//! (GEP-1294 route types): the losers are `Conflicted` on that port. The
//! winners' matches are merged and sorted by [`precedence`](super::precedence).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{ObjectKey, Route, RouteKind, RouteMatch, RouteRef, Service};

use super::attach::attach;
use super::precedence::{MatchKey, match_key};
use super::{CompiledRoute, CompiledRule};

/// Who a route table applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Audience {
    /// Every client (routes in the Service's namespace).
    Producer,
    /// Clients in this namespace (routes in it naming a Service elsewhere).
    Consumer(String),
}

/// One entry of a table: the first entry matching a request selects `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchEntry {
    /// Index into [`RouteTable::rules`].
    pub rule: usize,
    /// The condition.
    pub condition: RouteMatch,
}

/// Merged rules for one (Service port, audience).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// The route type that applies here.
    pub kind: RouteKind,
    /// The rules, in precedence order of their best match.
    pub rules: Vec<CompiledRule>,
    /// Every match of every rule, in precedence order.
    pub matches: Vec<MatchEntry>,
}

/// The routes of one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRoutes {
    /// The Service port.
    pub port: u16,
    /// Producer routes (None: only consumer routes attach to this port).
    pub producer: Option<RouteTable>,
    /// Consumer routes by client namespace.
    pub consumers: BTreeMap<String, RouteTable>,
}

/// The routes attached to one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoutes {
    /// The Service.
    pub service: ObjectKey,
    /// Ports with at least one route, ascending.
    pub ports: Vec<PortRoutes>,
}

/// How one route binds to the Service a table was built for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binding {
    /// Ports its Service parentRefs attach to.
    pub attached: BTreeSet<u16>,
    /// Of those, ports where another route type wins.
    pub conflicted: BTreeSet<u16>,
}

/// The result of [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableBuild {
    /// None when no route applies to any port.
    pub routes: Option<ServiceRoutes>,
    /// Per accepted route: where it binds.
    pub bindings: HashMap<RouteRef, Binding>,
}

/// Merges `routes` (each naming `service` in a parentRef) into tables.
/// Routes with unsupported values are left out (they are not accepted).
pub fn build(service: &Service, routes: &[(&Route, &CompiledRoute)]) -> TableBuild {
    let key = &service.meta.key;
    let mut bindings: HashMap<RouteRef, Binding> = HashMap::new();
    // (port, audience) -> kind -> routes
    let mut slots: BTreeMap<(u16, Audience), BTreeMap<RouteKind, Vec<&CompiledRoute>>> =
        BTreeMap::new();
    for (route, compiled) in routes {
        if !compiled.unsupported.is_empty() {
            continue;
        }
        let ns = &route.meta.key.namespace;
        let mut ports = BTreeSet::new();
        for parent in route
            .parents
            .iter()
            .filter(|p| p.is_service() && &p.key(ns) == key)
        {
            if let Ok(p) = attach(parent, Some(service)) {
                ports.extend(p);
            }
        }
        if ports.is_empty() {
            continue;
        }
        let audience = if *ns == key.namespace {
            Audience::Producer
        } else {
            Audience::Consumer(ns.clone())
        };
        for port in &ports {
            slots
                .entry((*port, audience.clone()))
                .or_default()
                .entry(route.kind)
                .or_default()
                .push(compiled);
        }
        bindings.insert(
            route.route_ref(),
            Binding {
                attached: ports,
                conflicted: BTreeSet::new(),
            },
        );
    }

    let mut ports: BTreeMap<u16, PortRoutes> = BTreeMap::new();
    for ((port, audience), mut by_kind) in slots {
        // GEP-1294: GRPCRoute wins over HTTPRoute on the same port.
        let winner = if by_kind.contains_key(&RouteKind::Grpc) {
            RouteKind::Grpc
        } else {
            RouteKind::Http
        };
        for (kind, losers) in &by_kind {
            if *kind != winner {
                for l in losers {
                    if let Some(b) = bindings.get_mut(&l.route) {
                        b.conflicted.insert(port);
                    }
                }
            }
        }
        let winners = by_kind.remove(&winner).unwrap_or_default();
        let table = merge(winner, &winners);
        let entry = ports.entry(port).or_insert_with(|| PortRoutes {
            port,
            producer: None,
            consumers: BTreeMap::new(),
        });
        match audience {
            Audience::Producer => entry.producer = Some(table),
            Audience::Consumer(ns) => {
                entry.consumers.insert(ns, table);
            }
        }
    }
    let routes = (!ports.is_empty()).then(|| ServiceRoutes {
        service: key.clone(),
        ports: ports.into_values().collect(),
    });
    TableBuild { routes, bindings }
}

/// Merges the rules of `routes` (all of `kind`) into one table.
pub fn merge(kind: RouteKind, routes: &[&CompiledRoute]) -> RouteTable {
    let mut keyed: Vec<(MatchKey, &CompiledRule, usize)> = Vec::new();
    for r in routes {
        for rule in &r.rules {
            for i in 0..rule.matches.len() {
                keyed.push((match_key(rule, r.created, i), rule, i));
            }
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rules: Vec<CompiledRule> = Vec::new();
    let mut index: HashMap<(&RouteRef, usize), usize> = HashMap::new();
    let mut matches = Vec::with_capacity(keyed.len());
    for (_, rule, i) in keyed {
        let idx = *index
            .entry((&rule.route, rule.rule_index))
            .or_insert_with(|| {
                rules.push(rule.clone());
                rules.len() - 1
            });
        matches.push(MatchEntry {
            rule: idx,
            condition: rule.matches[i].clone(),
        });
    }
    RouteTable {
        kind,
        rules,
        matches,
    }
}
