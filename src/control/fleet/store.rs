//! The fleet's state store: etcd first, and the state file as this
//! instance's local copy, read at start so that it serves at once.

use std::path::PathBuf;
use std::sync::Arc;

use super::docs::AppDoc;
use super::{Fleet, Write};
use crate::control::state::{Commit, StateError, StateFile, Store};

pub struct EtcdStore {
    pub fleet: Arc<Fleet>,
    /// The local copy (`[state] file`), if any.
    pub cache: Option<PathBuf>,
}

impl Store for EtcdStore {
    /// The local copy: the fleet's state is read by the fleet thread,
    /// which may take a while (or not happen at all while etcd is away).
    fn load(&self) -> Result<Option<StateFile>, StateError> {
        match &self.cache {
            Some(path) => StateFile::load(path),
            None => Ok(None),
        }
    }

    fn save(&self, now: &StateFile, next: &Commit) -> Result<(), StateError> {
        let write_id = self.fleet.write_id();
        let rollouts = next.rollouts.as_ref().unwrap_or(&now.rollouts);
        // The documents of the apps the change touches: a new state or a
        // new rollout record. A first write (epoch 0 in etcd) writes all.
        let apps = next
            .apps
            .iter()
            .filter(|(name, state)| {
                now.epoch == 0
                    || now.apps.get(*name) != Some(*state)
                    || now.rollouts.get(*name) != rollouts.get(*name)
            })
            .map(|(name, state)| {
                let doc = AppDoc {
                    epoch: next.epoch,
                    write_id: write_id.clone(),
                    state: state.clone(),
                    rollout: rollouts.get(name).cloned(),
                };
                (name.clone(), doc)
            })
            .collect();
        let (reply, _) = std::sync::mpsc::sync_channel(1);
        self.fleet.write(Write {
            base: Some(now.epoch),
            epoch: next.epoch,
            write_id,
            apps,
            history: next.history.clone(),
            reply,
        })?;
        if let Some(path) = &self.cache {
            let mut copy = now.clone();
            copy.epoch = next.epoch;
            copy.apps = next.apps.clone();
            copy.rollouts = rollouts.clone();
            for h in &next.history {
                copy.push_history(h.clone());
            }
            keep_copy(path, &copy);
        }
        Ok(())
    }

    fn publish(&self, state: &StateFile) -> Result<(), StateError> {
        let write_id = self.fleet.write_id();
        let apps = state
            .apps
            .iter()
            .map(|(name, s)| {
                let doc = AppDoc {
                    epoch: state.epoch,
                    write_id: write_id.clone(),
                    state: s.clone(),
                    rollout: state.rollouts.get(name).cloned(),
                };
                (name.clone(), doc)
            })
            .collect();
        let (reply, _) = std::sync::mpsc::sync_channel(1);
        self.fleet.write(Write {
            base: None,
            epoch: state.epoch,
            write_id,
            apps,
            history: state.history.iter().cloned().collect(),
            reply,
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn adopted(&self, state: &StateFile) {
        if let Some(path) = &self.cache {
            keep_copy(path, state);
        }
    }
}

/// The local copy is a convenience: failing to write it is logged, and
/// changes nothing about what the fleet holds.
fn keep_copy(path: &std::path::Path, state: &StateFile) {
    if let Err(e) = state.save(path) {
        tracing::warn!(error = %e, "the local copy of the fleet's state was not written");
    }
}
