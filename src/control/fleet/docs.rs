//! The documents a fleet keeps in etcd, their keys, and the state they
//! add up to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api;
use crate::control::rollout::Rollout;
use crate::control::state::{HistoryEntry, StateFile, HISTORY_LIMIT};
use crate::route::AppState;

/// The keys of one cluster, all under `/cutover/v1/<cluster>/`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/cutover/v1/{cluster}/"),
        }
    }

    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    pub fn app(&self, name: &str) -> String {
        format!("{}apps/{name}", self.prefix)
    }

    pub fn history(&self) -> String {
        format!("{}history/", self.prefix)
    }

    /// History keys sort by epoch: the epoch zero-padded, then the
    /// entry's place in its change.
    pub fn history_entry(&self, epoch: u64, n: usize) -> String {
        format!("{}{epoch:020}-{n:03}", self.history())
    }

    pub fn instances(&self) -> String {
        format!("{}instances/", self.prefix)
    }

    pub fn instance(&self, id: &str) -> String {
        format!("{}{id}", self.instances())
    }

    pub fn judge(&self) -> String {
        format!("{}judge", self.prefix)
    }

    /// Whether `key` is part of the state (not a report or the judge's).
    pub fn is_state(&self, key: &[u8]) -> bool {
        let rest = key.strip_prefix(self.prefix.as_bytes()).unwrap_or(b"");
        rest == b"epoch" || rest.starts_with(b"apps/") || rest.starts_with(b"history/")
    }
}

/// `epoch`: the fleet's epoch and the write that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochDoc {
    pub epoch: u64,
    pub write_id: String,
}

/// `apps/<app>`: one app's routing and latest rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDoc {
    /// The epoch of the change that last wrote it.
    pub epoch: u64,
    pub write_id: String,
    pub state: AppState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// `instances/<id>`: what one instance serves, kept under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub version: String,
    pub pid: u32,
    pub admin: Option<String>,
    /// The fleet epoch it serves.
    pub epoch: u64,
    /// Per app of its config: the epoch it serves it at.
    pub apps: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub judge: bool,
    /// RFC 3339, UTC.
    pub updated: String,
    /// While a rollout is under way: per app, each colour's judged
    /// counts since the instance started, `[blue, green]` of
    /// `[total, bad, slow]`, for the judge to add up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, [[u64; 3]; 2]>,
}

impl Report {
    pub fn instance(&self, fleet_epoch: u64) -> api::Instance {
        api::Instance {
            admin: self.admin.clone(),
            apps: self.apps.clone(),
            epoch: self.epoch,
            id: self.id.clone(),
            in_sync: self.epoch >= fleet_epoch,
            judge: self.judge,
            last_error: self.last_error.clone(),
            pid: self.pid,
            updated: self.updated.clone(),
            version: self.version.clone(),
        }
    }
}

/// What a read of the cluster's prefix holds.
#[derive(Debug, Default)]
pub struct Read {
    /// `None`: no state was ever written for this cluster.
    pub state: Option<StateFile>,
    /// The epoch document's mod revision (0: none).
    pub epoch_revision: i64,
    pub instances: BTreeMap<String, Report>,
}

/// Add up the keys of a read of the whole prefix. A document that does
/// not parse is an error naming its key: the fleet's state is not
/// guessed at.
pub fn read(keys: &Keys, kvs: &[etcd_client::KeyValue]) -> Result<Read, String> {
    let mut out = Read::default();
    let mut state = StateFile::default();
    let mut history = Vec::new();
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key());
        let Some(rest) = key.strip_prefix(&keys.prefix) else {
            continue;
        };
        let bad = |e: serde_json::Error| format!("etcd key {key}: {e}");
        if rest == "epoch" {
            let doc: EpochDoc = serde_json::from_slice(kv.value()).map_err(bad)?;
            state.epoch = doc.epoch;
            out.epoch_revision = kv.mod_revision();
        } else if let Some(app) = rest.strip_prefix("apps/") {
            let doc: AppDoc = serde_json::from_slice(kv.value()).map_err(bad)?;
            state.apps.insert(app.to_string(), doc.state);
            if let Some(r) = doc.rollout {
                state.rollouts.insert(app.to_string(), r);
            }
        } else if rest.starts_with("history/") {
            history.push(serde_json::from_slice::<HistoryEntry>(kv.value()).map_err(bad)?);
        } else if rest.starts_with("instances/") {
            let report: Report = serde_json::from_slice(kv.value()).map_err(bad)?;
            out.instances.insert(report.id.clone(), report);
        }
    }
    // Keys come sorted, so the history is oldest first.
    let skip = history.len().saturating_sub(HISTORY_LIMIT);
    for entry in history.into_iter().skip(skip) {
        state.push_history(entry);
    }
    if out.epoch_revision != 0 {
        out.state = Some(state);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_epoch_apps_and_history_are_state() {
        let k = Keys::new("prod");
        assert!(k.is_state(k.epoch().as_bytes()));
        assert!(k.is_state(k.app("web").as_bytes()));
        assert!(k.is_state(k.history_entry(7, 0).as_bytes()));
        assert!(!k.is_state(k.instance("a").as_bytes()));
        assert!(!k.is_state(k.judge().as_bytes()));
        assert!(!Keys::new("other").is_state(k.epoch().as_bytes()));
    }

    #[test]
    fn history_keys_sort_by_epoch() {
        let k = Keys::new("c");
        assert!(k.history_entry(9, 1) < k.history_entry(10, 0));
        assert!(k.history_entry(10, 0) < k.history_entry(10, 1));
    }
}
