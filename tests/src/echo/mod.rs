//! The lab's echo backend and its client, as upstream Gateway API mesh
//! conformance expects of its echo image: every pod in the lab runs
//! `hawser-echo serve`, and the conformance runner sends traffic with
//! `hawser-echo client` (or the same functions in-process).
//!
//! - [`server`]: answers any HTTP/1.1, h2c, gRPC or WebSocket request on its
//!   ports with `key=value` lines (`Hostname=`, `Method=`, `URL=`, `Host=`,
//!   `Proto=`, `RequestHeader=Name:value`, ...), plus a TCP echo.
//! - [`directives`]: what a request can ask for (`?delay=`, `?codes=`,
//!   `?headers=`, fail the first N per key, close without a response).
//! - [`grpc`]: the `hawser.echo.v1.EchoTestService` implementation.
//! - [`websocket`]: the handshake, frame codec, echo loop and a test client.
//! - [`client`]: N requests over kept-alive connections, never following
//!   redirects, each reported on its own (text or JSON).
//! - [`response`]: the body format, written and parsed.
//! - [`duration`]: Go-style durations (`500ms`, `1m30s`).
//! - [`cli`]: the `hawser-echo` command line.

pub mod cli;
pub mod client;
pub mod directives;
pub mod duration;
pub mod grpc;
pub mod response;
pub mod server;
pub mod websocket;

pub use client::{ClientOptions, Outcome, Protocol, Report, Target};
pub use response::{EchoResponse, parse};
pub use server::{Echo, EchoServer, ServerConfig, serve};
