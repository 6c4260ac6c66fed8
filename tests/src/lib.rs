//! `hawser-tests`: end-to-end tests of Hawser's components wired together over
//! real sockets, and the harness they share.
//!
//! - [`echo`]: the echo backend every lab pod runs (`hawser-echo serve`) and
//!   its client mode (`hawser-echo client`), as a library and a binary.
//! - [`identity`]: a control plane (CA + identity service) on loopback with a
//!   temporary CA directory and bootstrap tokens, and node clients for it.
//! - [`lab`]: the netns lab (nodes, underlay, pods attached by real CNI plugins).

pub mod echo;
pub mod identity;
pub mod lab;
