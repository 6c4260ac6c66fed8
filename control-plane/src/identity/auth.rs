//! Node authentication: who is calling, proven by a credential.
//!
//! [`NodeAuthenticator`] is the seam: local mode uses [`BootstrapTokens`] (one
//! token file per node); on Kubernetes a TokenReview-based authenticator takes
//! its place and derives the node from the ServiceAccount token's claims.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use subtle::ConstantTimeEq;

/// Why a node could not be authenticated. Logged on the control plane; the
/// caller only learns that authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The claimed node name is not a valid Kubernetes node name.
    #[error("node name {0:?} is not a valid DNS subdomain")]
    InvalidNodeName(String),
    /// No credential is registered for the node.
    #[error("no bootstrap token is registered for node {node:?} (expected {path})")]
    UnknownNode {
        /// The claimed node.
        node: String,
        /// Where its token would be.
        path: PathBuf,
    },
    /// The credential does not match.
    #[error("bootstrap token presented for node {0:?} does not match")]
    BadCredential(String),
    /// The credential store could not be read.
    #[error("cannot read {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Authenticates a node proxy's credential.
#[async_trait]
pub trait NodeAuthenticator: Send + Sync + 'static {
    /// Checks `credential` for the node claiming to be `claimed_node`; returns
    /// the authenticated node name.
    async fn authenticate(&self, claimed_node: &str, credential: &str)
    -> Result<String, AuthError>;
}

/// Local-mode authenticator: `<dir>/<node-name>` holds that node's token.
///
/// Read on every call, so nodes are added or their tokens revoked by editing
/// files, without a restart.
#[derive(Debug, Clone)]
pub struct BootstrapTokens {
    dir: PathBuf,
}

impl BootstrapTokens {
    /// Tokens in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The token directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `name` is a Kubernetes node name (an RFC 1123 DNS subdomain).
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[async_trait]
impl NodeAuthenticator for BootstrapTokens {
    async fn authenticate(
        &self,
        claimed_node: &str,
        credential: &str,
    ) -> Result<String, AuthError> {
        // Validated first: the name becomes a path below.
        if !is_valid_node_name(claimed_node) {
            return Err(AuthError::InvalidNodeName(claimed_node.to_owned()));
        }
        let path = self.dir.join(claimed_node);
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || hawser_api::secret::read_secret(&path))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
        };
        let expected = match read {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AuthError::UnknownNode {
                    node: claimed_node.to_owned(),
                    path,
                });
            }
            Err(source) => return Err(AuthError::Store { path, source }),
        };
        let expected = expected.trim();
        let presented = credential.trim();
        if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
            return Err(AuthError::BadCredential(claimed_node.to_owned()));
        }
        Ok(claimed_node.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-1");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let auth = BootstrapTokens::new(dir.path());
        match auth.authenticate("node-1", "s3cret-token").await {
            Err(e @ AuthError::Store { .. }) => {
                assert!(e.to_string().contains("mode 0644"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tokens_from_files() {
        let dir = tempfile::tempdir().unwrap();
        hawser_api::secret::write_secret(&dir.path().join("node-1"), "s3cret-token\n").unwrap();
        hawser_api::secret::write_secret(&dir.path().join("node-2"), "").unwrap();
        let auth = BootstrapTokens::new(dir.path());
        assert_eq!(
            auth.authenticate("node-1", "s3cret-token").await.unwrap(),
            "node-1"
        );
        assert!(matches!(
            auth.authenticate("node-1", "s3cret-tokeN").await,
            Err(AuthError::BadCredential(_))
        ));
        assert!(matches!(
            auth.authenticate("node-3", "s3cret-token").await,
            Err(AuthError::UnknownNode { .. })
        ));
        // An empty token file never authenticates anyone (not even an empty credential).
        assert!(matches!(
            auth.authenticate("node-2", "").await,
            Err(AuthError::BadCredential(_))
        ));
        // Path tricks never reach the file system.
        for bad in ["../node-1", "node-1/..", "", "Node-1", "a/b"] {
            assert!(matches!(
                auth.authenticate(bad, "s3cret-token").await,
                Err(AuthError::InvalidNodeName(_))
            ));
        }
    }
}
