//! A fleet: several cutover instances sharing one truth through etcd
//! (`[state] backend = "etcd"`).
//!
//! etcd holds, under `/cutover/v1/<cluster>/`:
//! - `epoch`: the fleet's epoch and the id of the write that set it. Every
//!   write compares this document's mod revision, so any two writes are
//!   ordered and the epoch is one number for the whole fleet;
//! - `apps/<app>`: one document per app — its routing state, its latest
//!   rollout, the epoch and write id that last changed it;
//! - `history/<epoch>-<n>`: the history, one entry per key;
//! - `instances/<id>`: what each instance serves, under its lease;
//! - `judge`: which instance judges the rollouts, under its lease.
//!
//! [`store::EtcdStore`] is the state's store: a change is written to etcd
//! first (by the fleet thread, [`link`]), and only then made in memory.
//! The fleet thread also reads: it watches the prefix and sends every
//! newer state to the control plane ([`crate::control::ops::Control::adopt`]),
//! and it keeps this instance's report and the judge's lease alive. The
//! data plane never waits on any of it: while etcd is away it serves the
//! state it has.

pub mod docs;
pub mod link;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

pub use docs::{Keys, Report};

use super::state::{HistoryEntry, StateError, StateFile};
use crate::api;
use crate::config::EtcdSettings;

/// A write to etcd, from the control plane to the fleet thread.
pub struct Write {
    /// The epoch the change was made from: refused when the fleet moved
    /// on. `None`: the first write of a cluster etcd holds nothing of.
    pub base: Option<u64>,
    pub epoch: u64,
    /// Found in etcd when a write's answer was lost.
    pub write_id: String,
    /// The app documents the change rewrites.
    pub apps: Vec<(String, docs::AppDoc)>,
    pub history: Vec<HistoryEntry>,
    pub reply: std::sync::mpsc::SyncSender<Result<(), StateError>>,
}

/// What the fleet thread learned, for the control plane.
pub enum Learned {
    /// The fleet's state, newer than the last one sent (`first`: the
    /// first read after connecting, taken whatever its epoch). `writes`:
    /// this instance's writes stored when it was read — a state read
    /// before a later write of this instance is stale, whatever `first`.
    State {
        state: Box<StateFile>,
        first: bool,
        writes: u64,
    },
    /// etcd holds no state for this cluster yet: this instance's becomes
    /// the fleet's.
    Empty,
}

/// The fleet as this instance sees it; replaced whole by the fleet
/// thread, read by status, metrics and `?wait=`.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub connected: bool,
    pub last_error: Option<String>,
    /// The fleet's epoch as last read from etcd.
    pub epoch: u64,
    /// Every instance's latest report, this one's included.
    pub instances: BTreeMap<String, Report>,
    /// When this instance last knew it served the fleet's latest state.
    pub in_step_at: Option<Instant>,
}

/// One instance's link to its fleet, shared by the fleet thread, the
/// store, the control plane and the admin API.
pub struct Fleet {
    pub settings: EtcdSettings,
    /// This instance's name in the fleet.
    pub id: String,
    pub keys: Keys,
    /// The admin API's address, published in the report.
    pub admin: Option<String>,
    pub view: watch::Sender<View>,
    /// This instance holds the judge's lease.
    pub judging: AtomicBool,
    /// Any rollout or guard under way in the fleet (counts are reported
    /// then).
    pub rolling: AtomicBool,
    writes: mpsc::UnboundedSender<Write>,
    /// The receiving end, taken once by the fleet thread.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Write>>>,
    /// Writes made by this instance, counted into write ids.
    written: AtomicU64,
    /// Writes of this instance etcd has stored.
    pub stored: AtomicU64,
}

impl Fleet {
    pub fn new(settings: EtcdSettings, id: String, admin: Option<String>) -> Arc<Fleet> {
        let (writes, pending) = mpsc::unbounded_channel();
        Arc::new(Fleet {
            keys: Keys::new(&settings.cluster),
            settings,
            id,
            admin,
            view: watch::Sender::new(View::default()),
            judging: AtomicBool::new(false),
            rolling: AtomicBool::new(false),
            writes,
            pending: Mutex::new(Some(pending)),
            written: AtomicU64::new(0),
            stored: AtomicU64::new(0),
        })
    }

    /// A fresh write id: this instance, its process and a counter, so
    /// that a write whose answer was lost can be recognised in etcd.
    pub fn write_id(&self) -> String {
        let n = self.written.fetch_add(1, Relaxed);
        format!(
            "{}/{}/{}/{n}",
            self.id,
            std::process::id(),
            fastrand::u32(..)
        )
    }

    /// Send `w` to the fleet thread and wait for its answer, at most a
    /// little longer than etcd's own timeout (the thread answers first).
    pub fn write(&self, w: Write) -> Result<(), StateError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let w = Write { reply: tx, ..w };
        if self.writes.send(w).is_err() {
            return Err(StateError::Unavailable("the fleet link stopped".into()));
        }
        // Three calls at most: the write, a re-read of its outcome, slack.
        let limit = self.settings.timeout * 3 + Duration::from_secs(1);
        rx.recv_timeout(limit).unwrap_or_else(|_| {
            Err(StateError::Unavailable(
                "etcd did not answer in time".into(),
            ))
        })
    }

    /// This instance's standing, for status and metrics; `served`: the
    /// epoch of the snapshot it serves.
    pub fn link(&self, served: u64) -> api::FleetLink {
        let v = self.view.borrow();
        api::FleetLink {
            cluster: self.settings.cluster.clone(),
            connected: v.connected,
            judge: self.judging.load(Relaxed),
            lag_seconds: lag(&v, served),
            last_error: v.last_error.clone(),
            instance: self.id.clone(),
        }
    }

    /// `GET /v1/fleet`.
    pub fn answer(&self) -> api::Fleet {
        let v = self.view.borrow();
        api::Fleet {
            backend: "etcd".into(),
            cluster: Some(self.settings.cluster.clone()),
            connected: v.connected,
            epoch: v.epoch,
            instances: v.instances.values().map(|r| r.instance(v.epoch)).collect(),
        }
    }

    /// Wait until every instance reporting now serves `epoch`, or `limit`
    /// passes: who did and who did not.
    pub async fn wait_for(&self, epoch: u64, limit: Duration) -> api::Waited {
        let mut view = self.view.subscribe();
        let expected: Vec<String> = view.borrow().instances.keys().cloned().collect();
        let served = |v: &View, id: &String| v.instances.get(id).is_some_and(|r| r.epoch >= epoch);
        let all = |v: &View| expected.iter().all(|id| served(v, id));
        let _ = tokio::time::timeout(limit, view.wait_for(|v| all(v))).await;
        let v = view.borrow();
        let (confirmed, missing) = expected.iter().cloned().partition(|id| served(&v, id));
        api::Waited {
            confirmed,
            epoch,
            missing,
        }
    }

    /// The receiving end of the writes, for the fleet thread.
    fn take_writes(&self) -> Option<mpsc::UnboundedReceiver<Write>> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// How far behind the fleet this instance may be, in seconds: 0 while
/// connected and serving the fleet's epoch, else the time since it last
/// was.
fn lag(v: &View, served: u64) -> f64 {
    if v.connected && served >= v.epoch {
        return 0.0;
    }
    v.in_step_at.map_or(0.0, |t| t.elapsed().as_secs_f64())
}

/// This instance's default name: the host's name and the admin port (or
/// the process id without an admin API), unique on one host.
pub fn default_id(admin: Option<std::net::SocketAddr>) -> String {
    // Linux's own answer to gethostname(2), without unsafe code.
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    let host = if host.is_empty() {
        "cutover".to_string()
    } else {
        host
    };
    match admin {
        Some(a) => format!("{host}-{}", a.port()),
        None => format!("{host}-{}", std::process::id()),
    }
}
