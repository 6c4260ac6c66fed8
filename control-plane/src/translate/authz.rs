//! Authorization policies on the wire.

use hawser_api::proto::discovery as pb;

use crate::model::{AuthorizationAction, AuthorizationMode, AuthorizationPolicy, PolicyPath};

/// One policy.
pub fn policy(p: &AuthorizationPolicy) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        namespace: p.key.namespace.clone(),
        name: p.key.name.clone(),
        action: match p.action {
            AuthorizationAction::Allow => pb::AuthorizationAction::Allow,
            AuthorizationAction::Deny => pb::AuthorizationAction::Deny,
        } as i32,
        mode: match p.mode {
            AuthorizationMode::Enforce => pb::AuthorizationMode::Enforce,
            AuthorizationMode::Audit => pb::AuthorizationMode::Audit,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| pb::AuthorizationRule {
                from: r
                    .from
                    .iter()
                    .map(|s| pb::Source {
                        namespace: s.namespace.clone().unwrap_or_default(),
                        service_account: s.service_account.clone().unwrap_or_default(),
                        spiffe_id: s.spiffe_id.clone().unwrap_or_default(),
                        ip_block: s.ip_block.map(|b| b.to_string()).unwrap_or_default(),
                    })
                    .collect(),
                to: r.to.as_ref().map(|d| pb::Destination {
                    ports: d.ports.iter().map(|p| u32::from(*p)).collect(),
                    methods: d.methods.clone(),
                    paths: d
                        .paths
                        .iter()
                        .map(|p| pb::PathMatch {
                            kind: Some(match p {
                                PolicyPath::Exact(s) => pb::path_match::Kind::Exact(s.clone()),
                                PolicyPath::Prefix(s) => pb::path_match::Kind::Prefix(s.clone()),
                            }),
                        })
                        .collect(),
                }),
            })
            .collect(),
    }
}
