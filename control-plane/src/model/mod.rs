//! The mesh as the control plane understands it, free of Kubernetes and gRPC types.
//!
//! Sources (manifest files, later the Kubernetes API) convert their objects into
//! these types at the edge ([`Object`]); the [`index`](crate::index) keeps them and
//! derives the per-node resources ([`WorkloadView`], [`ServiceView`],
//! [`ServiceRoutes`](crate::gamma::ServiceRoutes), [`AuthorizationPolicy`]).
//! Everything here is plain data: validated, typed, comparable.

mod authz;
mod meta;
mod object;
mod route;
mod service;
mod workload;

pub use authz::{
    AuthorizationAction, AuthorizationMode, AuthorizationPolicy, AuthorizationRule,
    AuthorizationTarget, IpBlock, PolicyDestination, PolicyPath, PolicySource,
};
pub use meta::{LabelSelector, Labels, Meta, ObjectKey, SelectorOperator, SelectorRequirement};
pub use object::{Kind, Object, ObjectRef};
pub use route::{
    BackendRef, Filter, GrpcMatch, HeaderModifier, HttpMatch, MirrorFilter, ParentRef, PathMatch,
    PathModifier, RedirectFilter, Retry, Route, RouteKind, RouteMatch, RouteRef, RouteRule,
    Timeouts, UrlRewriteFilter, ValueMatch, WeightedBackendRef,
};
pub use service::{
    ALLOWED_UPGRADES_ANNOTATION, AppProtocol, EndpointSlice, Service, ServicePort, ServiceType,
    SliceEndpoint, SlicePort, TargetPort,
};
pub use workload::{ContainerPort, Namespace, Pod, PodIdentity, WorkloadView};

pub use crate::index::{Endpoint, ServiceView};
