//! The control plane: everything that is not per request. It owns the one
//! [`ArcSwap`] of the routing snapshot and is the only writer of it.
//!
//! - [`ops`]: flip, shift, rollback, rules, rollouts — validate, persist, swap;
//! - [`reload`]: the config file re-read and swapped in, and met at start;
//! - [`state`]: the runtime state file, written atomically;
//! - [`state_lock`]: one daemon per state file (`flock`, handed over on
//!   upgrade);
//! - [`admin`]: the admin HTTP API on its own listener, and the dashboard
//!   page it serves;
//! - [`dashboard`]: what that page is sent each second, and the
//!   per-colour series behind its charts;
//! - [`guard`]: what keeps web pages out of it (Host, Origin, Content-Type);
//! - [`changes`]: what each change in the history changed, in words;
//! - [`health`]: active health checks and passive-check recovery;
//! - [`resolve`]: servers given by host name, resolved at start and again
//!   on an interval, never under the control lock (the one DNS path);
//! - [`judge`] and [`rollout`]: progressive rollouts, judged each second;
//! - [`guard_watch`] and `guarding`: guarded changes — a flip or shift watched
//!   for a while by the same judge, and undone by itself when it hurts;
//! - [`upgrade`]: handing the sockets to a new binary (`cutover upgrade`);
//! - [`metrics`]: the Prometheus exposition.

pub mod access_log;
pub mod acme;
pub mod admin;
mod adopt;
pub mod changes;
pub mod dashboard;
pub mod fleet;
pub mod guard;
pub mod guard_watch;
mod guarding;
pub mod health;
pub mod judge;
pub mod metrics;
pub mod ops;
pub mod reload;
pub mod resolve;
pub mod rollout;
pub mod state;
pub mod state_lock;
pub mod upgrade;
pub mod view;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use crate::route::Snapshot;

/// What the data plane and the control plane share.
pub struct Shared {
    /// The routing table. Loaded once per request; replaced whole.
    pub snapshot: ArcSwap<Snapshot>,
    /// The epoch of the last stored snapshot; workers watch it to close
    /// idle connections of pools that just lost their traffic.
    pub swapped: watch::Sender<u64>,
    /// `true` once shutdown has begun.
    pub shutdown: watch::Sender<bool>,
    /// How long shutdown waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// `max_connections` over all workers.
    pub conn_limit: Arc<Semaphore>,
    /// Open client connections, all workers.
    pub downstream_connections: AtomicU64,
    /// TLS termination, when `listen_tls` is configured.
    pub tls: Option<TlsShared>,
    /// A hand-over to a new process is under way: changes are refused
    /// (503) so that none is lost between the two.
    pub upgrading: std::sync::atomic::AtomicBool,
    /// This process, for status.
    pub process: ProcessInfo,
    /// How to start a successor; unset when running inside another program.
    pub upgrade: std::sync::OnceLock<Successor>,
    /// The access log's writer, started by the daemon.
    pub access_log: std::sync::OnceLock<access_log::AccessLog>,
    /// Woken when a reload brings host names the resolver has not looked
    /// up yet, so that their servers join without waiting an interval.
    pub new_names: tokio::sync::Notify,
    /// `[tls.acme]`: where the certificate stands, for status.
    pub acme: arc_swap::ArcSwapOption<crate::api::Acme>,
    /// ACME http-01: the answer to each token the CA asks for, on the
    /// plain listeners (empty but while a challenge is open).
    pub acme_http: ArcSwap<std::collections::HashMap<String, String>>,
}

/// What a successor needs, set once at start by the daemon.
#[derive(Debug)]
pub struct Successor {
    /// The command line after the binary (`run -c FILE`).
    pub args: Vec<String>,
    /// How long the successor may take to say it serves.
    pub timeout: Duration,
    /// Every listening socket, named `plain`, `tls` or `admin`; emptied
    /// when shutdown begins, so that no copy keeps a socket listening
    /// (the kernel would go on accepting clients nobody serves). The lock
    /// is taken twice in a process's life: to hand over, and to empty.
    pub sockets: std::sync::Mutex<Vec<(String, std::net::TcpListener)>>,
    /// The state file's lock, handed over with the sockets so that it is
    /// never free between the two processes; `None` without a state file.
    pub state_lock: Option<Arc<state_lock::StateLock>>,
}

/// Who serves: shown in status as `process`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
    /// Upgrades since the listening sockets were first bound.
    pub upgrades: u64,
    pub version: &'static str,
}

impl ProcessInfo {
    pub fn now(upgrades: u64) -> ProcessInfo {
        ProcessInfo {
            pid: std::process::id(),
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            upgrades,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The TLS acceptor and the certificate store it resolves from; a reload
/// swaps the store, never the acceptor.
pub struct TlsShared {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub resolver: Arc<crate::tls::Resolver>,
}

impl TlsShared {
    pub fn new(store: crate::tls::CertStore) -> TlsShared {
        let resolver = Arc::new(crate::tls::Resolver::new(store));
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(resolver.clone()));
        TlsShared { acceptor, resolver }
    }
}

impl Shared {
    pub fn new(snapshot: Snapshot, shutdown_timeout: Duration, tls: Option<TlsShared>) -> Shared {
        let max = snapshot.settings.limits.max_connections;
        let epoch = snapshot.epoch;
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            swapped: watch::Sender::new(epoch),
            shutdown: watch::Sender::new(false),
            shutdown_timeout,
            conn_limit: Arc::new(Semaphore::new(max)),
            downstream_connections: AtomicU64::new(0),
            tls,
            upgrading: std::sync::atomic::AtomicBool::new(false),
            process: ProcessInfo::now(crate::handover::upgrades()),
            upgrade: std::sync::OnceLock::new(),
            access_log: std::sync::OnceLock::new(),
            new_names: tokio::sync::Notify::new(),
            acme: arc_swap::ArcSwapOption::empty(),
            acme_http: ArcSwap::from_pointee(Default::default()),
        }
    }

    /// Make `snap` the routing table for every request that starts from now.
    pub fn store(&self, snap: Snapshot) {
        let epoch = snap.epoch;
        self.snapshot.store(Arc::new(snap));
        self.swapped.send_replace(epoch);
    }
}
