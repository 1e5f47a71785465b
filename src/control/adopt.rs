//! What the fleet thread learns, taken in by the control plane: a newer
//! state of the fleet becomes this instance's (one snapshot swap), and an
//! empty cluster gets this instance's state as its first.

use std::sync::atomic::Ordering::Relaxed;

use super::fleet::Learned;
use super::ops::Control;
use super::state::StateFile;
use crate::route::{AppState, Snapshot};

impl Control {
    /// `GET /v1/fleet`: the fleet's instances; a lone instance (the file
    /// backend) is a fleet of one.
    pub fn fleet_answer(&self) -> crate::api::Fleet {
        if let Some(f) = &self.fleet {
            return f.answer();
        }
        let snap = self.shared.snapshot.load();
        let p = &self.shared.process;
        crate::api::Fleet {
            backend: "file".into(),
            cluster: None,
            connected: true,
            epoch: self.state.epoch,
            instances: vec![crate::api::Instance {
                admin: Some(self.config.admin.listen.to_string()),
                apps: snap
                    .apps
                    .iter()
                    .map(|a| (a.name.to_string(), snap.epoch))
                    .collect(),
                epoch: snap.epoch,
                id: super::fleet::default_id(Some(self.config.admin.listen)),
                in_sync: true,
                judge: true,
                last_error: None,
                pid: p.pid,
                updated: super::ops::now_rfc3339(),
                version: p.version.to_string(),
            }],
        }
    }

    pub fn learned(&mut self, learned: Learned) {
        match learned {
            Learned::State {
                state,
                first,
                writes,
            } => {
                // Read before a write of this instance that etcd stored
                // since: this instance already serves something newer.
                let stored = self.fleet.as_ref().map_or(0, |f| f.stored.load(Relaxed));
                if writes >= stored {
                    self.adopt(*state, first);
                }
            }
            Learned::Empty => self.publish(),
        }
    }

    /// Serve `remote`, the fleet's state, when it is newer than this
    /// instance's (or whatever it is, `first` after start: the fleet's
    /// state wins over the local copy). Apps the fleet does not know yet
    /// keep this instance's state for them.
    fn adopt(&mut self, mut remote: StateFile, first: bool) {
        if remote.epoch <= self.state.epoch && !(first && remote != *self.state) {
            return;
        }
        for app in &self.config.apps {
            if !remote.apps.contains_key(&app.name) {
                let mine = self.state.apps.get(&app.name).cloned();
                remote.apps.insert(
                    app.name.clone(),
                    mine.unwrap_or_else(|| AppState::initial(app)),
                );
            }
        }
        let current = self.shared.snapshot.load_full();
        let next = match Snapshot::build(&self.config, &remote.apps, Some(&current), remote.epoch) {
            Ok(next) => next,
            Err(errors) => {
                // Another instance's config may know what this one does
                // not (a server, a rule's header): keep serving.
                tracing::error!(epoch = remote.epoch, errors = %errors.join("; "), "the fleet's state does not fit this instance's config; still serving epoch {}", self.state.epoch);
                return;
            }
        };
        self.log_adopted(&remote);
        for (name, r) in &remote.rollouts {
            if self.state.rollouts.get(name) != Some(r) {
                self.windows.remove(name);
            }
        }
        self.state.adopt(remote);
        self.shared.store(next);
    }

    fn log_adopted(&self, remote: &StateFile) {
        for (name, after) in &remote.apps {
            match self.state.apps.get(name) {
                Some(before) if before == after => {}
                before => tracing::info!(
                    app = %name,
                    epoch = remote.epoch,
                    before = ?before.map(|b| (b.live, b.standby_percent)),
                    after = ?(after.live, after.standby_percent),
                    "state changed by the fleet"
                ),
            }
        }
    }

    /// etcd holds nothing for this cluster: this instance's state (its
    /// local copy, or the config's) becomes the fleet's, unless another
    /// instance got there first (then its state is read next).
    fn publish(&mut self) {
        match self.state.publish() {
            Ok(()) => tracing::info!(
                epoch = self.state.epoch,
                "the fleet's state store was empty: this instance's state is now the fleet's"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "this instance's state was not published to the fleet")
            }
        }
    }
}
