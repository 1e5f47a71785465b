//! cutover — a Layer-7 blue-green reverse proxy daemon.
//!
//! # Layout
//!
//! Hot path (runs per request):
//! - [`proxy`]: worker threads, accept loop, the request handler,
//!   header rewriting, upstream connection pools, bodies, compression,
//!   tunnels, shadow traffic to the standby colour.
//! - [`route`]: the immutable routing [`route::Snapshot`] and the routing
//!   decision (hosts, prefixes, canary rules, sticky buckets,
//!   server pick), and an app's door (`allow`/`deny`, basic auth, the
//!   rate limiter's table of atomics). Pure data, no I/O.
//!
//! Control plane (runs beside it, never per request):
//! - [`control`]: the one `ArcSwap` of the snapshot and its only writer:
//!   flip/shift/rules/reload (`ops`), the state file (`state`), the admin
//!   API (`admin`), Prometheus metrics (`metrics`).
//! - [`daemon`]: start workers and the control thread, wait, drain.
//! - [`handover`]: listening sockets passed in (systemd socket activation)
//!   and handed to a new binary (`cutover upgrade`).
//!
//! Around them:
//! - [`model`]: the shared vocabulary (colours, rule specs, an app's
//!   runtime state, a rollout's phases); imports nothing of ours.
//! - [`timeouts`]: a client connection's phases (fresh, head, busy,
//!   idle) and the deadline of each, for the proxy's listeners and the
//!   admin API alike; pure state, imports nothing of ours.
//! - [`api`]: the admin API's answers and request bodies as types, which
//!   the daemon serializes and the CLI deserializes; imports only `model`.
//! - [`config`]: the TOML file in two layers, raw serde types and the
//!   validated, typed [`config::Config`]; rules compiled, certificates
//!   checked.
//! - [`tls`]: certificates by SNI behind an `ArcSwap`, the rustls server
//!   config; the upstream socket (plain or TLS) and its `connect`.
//!
//! Imports point one way, lowest first: model, handover, demo, timeouts ← api ← config ←
//! tls ← route ← control ← proxy ← daemon, client ← cli. A module uses
//! only those to its left; `tests/module_graph.rs` checks that, and that
//! no modules import each other in a ring.
//! - [`cli`]: the command line; [`client`]: the admin client behind the
//!   `status`/`flip`/`shift`/… subcommands; [`demo`]: the demo upstreams.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod handover;
pub mod model;
pub mod proxy;
pub mod route;
pub mod timeouts;
pub mod tls;

pub use config::Config;
pub use daemon::{run, run_with, Listeners, Options};
