//! GAMMA: how HTTPRoutes and GRPCRoutes bind to Services and what they do
//! (Gateway API mesh profile, GEP-1294 and GEP-1686).
//!
//! - [`compile`]: one route on its own: rules, resolved backends, unsupported values.
//! - [`attach`]: whether a `parentRef` binds to a Service, and to which ports.
//! - [`precedence`]: the order in which matches of merged routes are tried.
//! - [`table`]: all routes of one Service merged per port and audience
//!   (producer, or one consumer namespace), with GEP-1294 type conflicts.
//! - [`conditions`]: the `Accepted`/`ResolvedRefs` status of each route per parent.

pub mod attach;
pub mod compile;
pub mod conditions;
pub mod precedence;
pub mod table;

pub use compile::{BackendTarget, CompiledBackend, CompiledRoute, CompiledRule, ServiceBackend};
pub use table::{Audience, MatchEntry, PortRoutes, RouteTable, ServiceRoutes, TableBuild};
