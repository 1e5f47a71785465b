//! Runtime changes: flip, shift, rollback, rules, reload.
//!
//! [`Control`] is the only writer of the snapshot. Every change is
//! validated whole first, then written to the state file, then stored in
//! the `ArcSwap` — so when the caller gets its answer the change is both
//! durable and seen by every request that starts afterwards. The admin
//! API serializes calls through one `std::sync::Mutex<Control>`; nothing
//! in here awaits, so the lock is never held across an `.await`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::state::{History, HistoryEntry, StateError, StateFile};
use super::Shared;
use crate::config::{compile_rules, Color, Config, RuleSpec};
use crate::route::snapshot::{ServerSetting, ServerState};
use crate::route::{App, AppState, Pool, Snapshot};

/// What a caller asks for.
#[derive(Debug, Clone)]
pub enum Change {
    /// One app's traffic (or every app's, `None`) to its standby colour.
    Flip(Option<String>),
    Shift(String, f64),
    /// Back to the state before the app's last change; `None`: undo the
    /// last change whatever apps it touched.
    Rollback(Option<String>),
    SetRules(String, Vec<RuleSpec>),
    DeleteRule(String, String),
    /// One server's runtime setting: app, colour (`None`: the one pool
    /// that has the address), address, setting.
    Server(String, Option<Color>, std::net::SocketAddr, ServerSetting),
    /// The share (0-100) of an app's live-colour requests copied to its
    /// standby colour.
    Mirror(String, f64),
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Flip(_) => "flip",
            Change::Shift(..) => "shift",
            Change::Rollback(_) => "rollback",
            Change::SetRules(..) | Change::DeleteRule(..) => "rules",
            Change::Server(..) => "server",
            Change::Mirror(..) => "mirror",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub change: Change,
    /// Apply even if traffic would go to a pool with no healthy server.
    pub force: bool,
    /// Answer with the state that would result; change nothing.
    pub dry_run: bool,
    /// `If-Match: EPOCH`: refuse if the state moved on since.
    pub if_match: Option<u64>,
    /// Who: the admin token's name, or `local` (see [`HistoryEntry::actor`]).
    pub actor: String,
    /// Why, as the client gave it; recorded beside the actor.
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stale epoch: If-Match {given} but the state is at epoch {current}")]
    Stale { given: u64, current: u64 },
    #[error("{0}")]
    Internal(String),
    /// A hand-over to a new process is under way (503, retry shortly).
    #[error("cutover is handing over to a new process: retry in a few seconds")]
    Upgrading,
}

impl OpError {
    pub fn status(&self) -> u16 {
        match self {
            OpError::BadRequest(_) => 400,
            OpError::NotFound(_) => 404,
            OpError::Conflict(_) => 409,
            OpError::Stale { .. } => 412,
            OpError::Internal(_) => 500,
            OpError::Upgrading => 503,
        }
    }
}

/// Counters the control plane keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// `(app, kind)` → changes applied.
    pub state_changes: BTreeMap<(String, String), u64>,
    pub reloads_ok: u64,
    pub reloads_error: u64,
}

pub struct Control {
    pub shared: Arc<Shared>,
    config: Config,
    state: StateFile,
    state_path: Option<PathBuf>,
    pub stats: ControlStats,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Control {
    /// `state` already holds an entry for every app of `config` and the
    /// shared snapshot was built from both.
    pub fn new(shared: Arc<Shared>, config: Config, state: StateFile) -> Control {
        let state_path = config.state.file.clone();
        Control {
            shared,
            config,
            state,
            state_path,
            stats: ControlStats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    pub fn history(&self) -> &History {
        &self.state.history
    }

    fn require_app(&self, name: &str) -> Result<&AppState, OpError> {
        if self.config.app(name).is_none() {
            return Err(OpError::NotFound(format!("no app named {name:?}")));
        }
        Ok(&self.state.apps[name])
    }

    /// Validate, gate, persist and store one change.
    pub fn apply(&mut self, req: Request) -> Result<Status, OpError> {
        if self.shared.upgrading.load(Relaxed) && !req.dry_run {
            return Err(OpError::Upgrading);
        }
        if let Some(given) = req.if_match {
            if given != self.state.epoch {
                return Err(OpError::Stale {
                    given,
                    current: self.state.epoch,
                });
            }
        }
        let targets = self.targets(&req.change)?;
        let changed: Vec<(String, AppState, AppState)> = targets
            .into_iter()
            .filter(|(name, after)| self.state.apps[name] != *after)
            .map(|(name, after)| {
                let before = self.state.apps[&name].clone();
                (name, before, after)
            })
            .collect();
        let current = self.shared.snapshot.load_full();
        if changed.is_empty() {
            return Ok(self.answer(current, self.state.epoch, req.dry_run, &[]));
        }
        let mut states = self.state.apps.clone();
        for (name, _, after) in &changed {
            states.insert(name.clone(), after.clone());
        }
        let epoch = self.state.epoch + 1;
        let next = current
            .with_states(&states, epoch)
            .map_err(|e| OpError::BadRequest(e.join("; ")))?;
        let names: Vec<&str> = changed.iter().map(|(n, _, _)| n.as_str()).collect();
        if !req.force {
            health_gate(&current, &next, &changed)?;
        }
        if req.dry_run {
            return Ok(self.answer(Arc::new(next), self.state.epoch, true, &names));
        }
        let time = now_rfc3339();
        let entries: Vec<HistoryEntry> = changed
            .iter()
            .map(|(name, before, after)| HistoryEntry {
                time: time.clone(),
                epoch,
                actor: req.actor.clone(),
                reason: req.reason.clone(),
                app: name.clone(),
                kind: req.change.kind().to_string(),
                forced: req.force,
                before: before.clone(),
                after: after.clone(),
            })
            .collect();
        self.persist(|file, path| file.save_next(path, epoch, &states, &entries))?;
        self.state.apps = states;
        self.state.epoch = epoch;
        for entry in entries {
            self.state.push_history(entry);
        }
        self.shared.store(next);
        for (name, before, after) in &changed {
            *self
                .stats
                .state_changes
                .entry((name.clone(), req.change.kind().to_string()))
                .or_default() += 1;
            tracing::info!(
                app = %name,
                kind = req.change.kind(),
                actor = %req.actor,
                reason = req.reason.as_deref().unwrap_or(""),
                epoch,
                forced = req.force,
                before = %describe(before),
                after = %describe(after),
                "state changed"
            );
        }
        let snap = self.shared.snapshot.load_full();
        Ok(self.answer(snap, epoch, false, &names))
    }

    /// The new state of every app the change touches.
    fn targets(&self, change: &Change) -> Result<Vec<(String, AppState)>, OpError> {
        match change {
            Change::Flip(app) => {
                let names: Vec<String> = match app {
                    Some(a) => {
                        self.require_app(a)?;
                        vec![a.clone()]
                    }
                    None => self.config.apps.iter().map(|a| a.name.clone()).collect(),
                };
                Ok(names
                    .into_iter()
                    .map(|n| {
                        let before = &self.state.apps[&n];
                        let after = AppState {
                            live: before.live.other(),
                            standby_percent: 0.0,
                            ..before.clone()
                        };
                        (n, after)
                    })
                    .collect())
            }
            Change::Shift(app, percent) => {
                let before = self.require_app(app)?;
                if !percent.is_finite() || !(0.0..=100.0).contains(percent) {
                    return Err(OpError::BadRequest(format!(
                        "percent: must be between 0 and 100, got {percent}"
                    )));
                }
                Ok(vec![(
                    app.clone(),
                    AppState {
                        standby_percent: *percent,
                        ..before.clone()
                    },
                )])
            }
            Change::Mirror(app, percent) => {
                let before = self.require_app(app)?;
                if !percent.is_finite() || !(0.0..=100.0).contains(percent) {
                    return Err(OpError::BadRequest(format!(
                        "percent: must be between 0 and 100, got {percent}"
                    )));
                }
                Ok(vec![(
                    app.clone(),
                    AppState {
                        mirror_percent: Some(*percent),
                        ..before.clone()
                    },
                )])
            }
            Change::Rollback(Some(app)) => {
                self.require_app(app)?;
                let last = self
                    .state
                    .history
                    .iter()
                    .rev()
                    .find(|h| h.app == *app)
                    .ok_or_else(|| {
                        OpError::Conflict(format!(
                            "nothing to roll back: app {app:?} has no recorded change"
                        ))
                    })?;
                Ok(vec![(app.clone(), last.before.clone())])
            }
            Change::Rollback(None) => {
                let last = self.state.history.last().ok_or_else(|| {
                    OpError::Conflict("nothing to roll back: no recorded change".into())
                })?;
                Ok(self
                    .state
                    .history
                    .iter()
                    .filter(|h| h.epoch == last.epoch && self.config.app(&h.app).is_some())
                    .map(|h| (h.app.clone(), h.before.clone()))
                    .collect())
            }
            Change::SetRules(app, rules) => {
                let before = self.require_app(app)?;
                compile_rules(&format!("apps.{app}"), rules)
                    .map_err(|e| OpError::BadRequest(e.join("; ")))?;
                Ok(vec![(
                    app.clone(),
                    AppState {
                        rules: rules.clone(),
                        runtime_rules: true,
                        ..before.clone()
                    },
                )])
            }
            Change::Server(app, color, addr, setting) => {
                let before = self.require_app(app)?;
                let cfg = self.config.app(app).expect("required above");
                let has = |c: Color| cfg.pools[c.index()].servers.iter().any(|s| s.addr == *addr);
                let color = match color {
                    Some(c) if has(*c) => *c,
                    Some(c) => {
                        return Err(OpError::NotFound(format!(
                            "app {app:?} has no {c} server {addr}"
                        )))
                    }
                    None => match (has(Color::Blue), has(Color::Green)) {
                        (true, false) => Color::Blue,
                        (false, true) => Color::Green,
                        (true, true) => {
                            return Err(OpError::BadRequest(format!(
                                "{addr} is in both pools of app {app:?}: say which colour"
                            )))
                        }
                        (false, false) => {
                            return Err(OpError::NotFound(format!(
                                "app {app:?} has no server {addr}"
                            )))
                        }
                    },
                };
                if setting.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
                    return Err(OpError::BadRequest(
                        "weight: must be between 1 and 1000".into(),
                    ));
                }
                let mut servers = before.servers.clone();
                let key = crate::route::snapshot::server_key(color, *addr);
                if setting.state == ServerState::Ready && setting.weight.is_none() {
                    servers.remove(&key);
                } else {
                    servers.insert(key, *setting);
                }
                Ok(vec![(
                    app.clone(),
                    AppState {
                        servers,
                        ..before.clone()
                    },
                )])
            }
            Change::DeleteRule(app, rule) => {
                let before = self.require_app(app)?;
                if !before.rules.iter().any(|r| r.name == *rule) {
                    return Err(OpError::NotFound(format!(
                        "app {app:?} has no rule named {rule:?}"
                    )));
                }
                let rules = before
                    .rules
                    .iter()
                    .filter(|r| r.name != *rule)
                    .cloned()
                    .collect();
                Ok(vec![(
                    app.clone(),
                    AppState {
                        rules,
                        runtime_rules: true,
                        ..before.clone()
                    },
                )])
            }
        }
    }

    /// Write the state file (if there is one) with `save`, given the
    /// current state and the file's path.
    fn persist(
        &self,
        save: impl FnOnce(&StateFile, &Path) -> Result<(), StateError>,
    ) -> Result<(), OpError> {
        match &self.state_path {
            Some(path) => save(&self.state, path).map_err(|e| {
                tracing::error!(error = %e, "state not written; change refused");
                OpError::Internal(e.to_string())
            }),
            None => Ok(()),
        }
    }

    fn answer(&self, snap: Arc<Snapshot>, epoch: u64, dry_run: bool, changed: &[&str]) -> Status {
        Status {
            snap,
            epoch,
            change: Some((dry_run, changed.iter().map(|s| s.to_string()).collect())),
            drift: self.drifting(),
            process: self.shared.process.clone(),
        }
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Status {
        Status {
            snap: self.shared.snapshot.load_full(),
            epoch: self.state.epoch,
            change: None,
            drift: self.drifting(),
            process: self.shared.process.clone(),
        }
    }

    /// SIGHUP and `POST /v1/reload`: re-read the config file. On any error
    /// nothing changes and every error is returned.
    pub fn reload(&mut self) -> Result<Status, Vec<String>> {
        self.reload_with(false, "reload", None)
    }

    /// Re-read the config file. With `take_rules_from_file`, the file's
    /// rules replace runtime-owned rules that differ from them (recorded
    /// in history, by `actor`, with the rules they replaced); without it
    /// such rules stay and the difference is reported as drift.
    pub fn reload_with(
        &mut self,
        take_rules_from_file: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Status, Vec<String>> {
        let result = self.try_reload(take_rules_from_file, actor, reason);
        match &result {
            Ok(_) => {
                self.stats.reloads_ok += 1;
                tracing::info!(epoch = self.state.epoch, "config reloaded");
            }
            Err(errors) => {
                self.stats.reloads_error += 1;
                for e in errors {
                    tracing::error!(error = %e, "reload refused; still serving the previous config");
                }
            }
        }
        result
    }

    fn try_reload(
        &mut self,
        take: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Status, Vec<String>> {
        let path = self
            .config
            .path
            .clone()
            .ok_or_else(|| vec!["no config file to reload (built-in config)".to_string()])?;
        if self.shared.upgrading.load(Relaxed) {
            return Err(vec![OpError::Upgrading.to_string()]);
        }
        let new = Config::load(&path)?;
        let mut errors = Vec::new();
        if new.server.listen != self.config.server.listen
            || new.server.listen_tls != self.config.server.listen_tls
        {
            errors.push(
                "server.listen: listener addresses changed; restart cutover to apply them"
                    .to_string(),
            );
        }
        if new.admin.listen != self.config.admin.listen {
            errors.push(
                "admin.listen: the admin address changed; restart cutover to apply it".to_string(),
            );
        }
        if new.admin.max_connections != self.config.admin.max_connections {
            errors.push(
                "admin.max_connections: the admin connection cap changed; restart cutover to apply it"
                    .to_string(),
            );
        }
        if new.state.file != self.config.state.file {
            errors.push(
                "state.file: the state file changed; restart cutover to apply it".to_string(),
            );
        }
        if let (crate::config::AccessLog::File(path), true) =
            (&new.log.access, new.log.access != self.config.log.access)
        {
            if let Err(e) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                errors.push(format!("log.access: {}: {e}", path.display()));
            }
        }
        if new.log.buffer != self.config.log.buffer {
            errors.push(
                "log.access_buffer: the access log's queue changed; restart cutover to apply it"
                    .to_string(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut file = self.state.clone();
        file.epoch += 1;
        let time = now_rfc3339();
        for app in &new.apps {
            let Some(before) = file.apps.get(&app.name).cloned() else {
                file.apps.insert(app.name.clone(), AppState::initial(app));
                continue;
            };
            // Live colour and split stay as operators left them.
            let Some(after) = rules_from_file(&app.name, &before, &app.rules, take) else {
                continue;
            };
            if after.rules == before.rules {
                // Only the owner changed back to the file: nothing to record.
                file.apps.insert(app.name.clone(), after);
                continue;
            }
            file.push_history(HistoryEntry {
                time: time.clone(),
                epoch: file.epoch,
                actor: actor.to_string(),
                reason: reason.map(str::to_string),
                app: app.name.clone(),
                kind: if before.runtime_rules {
                    "rules-from-file"
                } else {
                    "reload"
                }
                .into(),
                forced: false,
                before,
                after: after.clone(),
            });
            file.apps.insert(app.name.clone(), after);
        }
        let current = self.shared.snapshot.load_full();
        let next = Snapshot::build(&new, &file.apps, Some(&current), file.epoch)?;
        let certs = match (&self.shared.tls, new.tls.is_empty()) {
            (Some(_), false) => Some(crate::tls::CertStore::load(&new.tls)?.0),
            _ => None,
        };
        self.persist(|_, path| file.save(path))
            .map_err(|e| vec![e.to_string()])?;
        self.state = file;
        if let Some(log) = self.shared.access_log.get() {
            log.set_destination(&new.log.access);
        }
        self.config = new;
        if let (Some(tls), Some(store)) = (&self.shared.tls, certs) {
            // New handshakes use the new certificates; open connections
            // keep the session they have.
            tls.resolver.store.store(Arc::new(store));
        }
        self.shared.store(next);
        Ok(self.status())
    }
}

impl Control {
    /// Every `host:port` some pool names a server by.
    pub fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .apps
            .iter()
            .flat_map(|a| a.pools.iter())
            .flat_map(|p| p.names.iter().map(|(n, _)| n.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// New addresses for servers given by host name: the pools whose
    /// servers change get them, in a new snapshot that keeps every other
    /// server object (health, counters, connections) as it is.
    pub fn apply_resolved(
        &mut self,
        resolved: &std::collections::HashMap<String, Vec<std::net::SocketAddr>>,
    ) {
        let mut new = self.config.clone();
        let mut changed = false;
        for app in &mut new.apps {
            for (pool, color) in app.pools.iter_mut().zip(Color::ALL) {
                let next = pool.with_resolved(resolved);
                if next.servers != pool.servers {
                    let addrs: Vec<String> =
                        next.servers.iter().map(|s| s.addr.to_string()).collect();
                    tracing::info!(app = %app.name, %color, servers = %addrs.join(", "), "host names resolved to new addresses");
                    *pool = next;
                    changed = true;
                }
            }
        }
        if !changed {
            return;
        }
        let current = self.shared.snapshot.load_full();
        match Snapshot::build(&new, &self.state.apps, Some(&current), self.state.epoch) {
            Ok(next) => {
                self.config = new;
                self.shared.store(next);
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "resolved servers not applied");
                }
            }
        }
    }

    fn drifting(&self) -> Vec<String> {
        self.drift()
            .into_iter()
            .filter_map(|(name, d)| d.then_some(name))
            .collect()
    }

    /// Apps whose runtime-owned rules differ from the config file's.
    pub fn drift(&self) -> Vec<(String, bool)> {
        self.config
            .apps
            .iter()
            .map(|a| {
                let drift = self
                    .state
                    .apps
                    .get(&a.name)
                    .is_some_and(|s| s.runtime_rules && s.rules != a.rules);
                (a.name.clone(), drift)
            })
            .collect()
    }
}

/// A one-line description of an app state for logs.
fn describe(s: &AppState) -> String {
    let mirror = match s.mirror_percent {
        Some(p) => format!("{p}%"),
        None => "configured".into(),
    };
    format!(
        "live={} standby={}% rules={} mirror={mirror}",
        s.live,
        s.standby_percent,
        s.rules.len()
    )
}

/// The status document (`GET /v1/status`, and the answer to every
/// change): every app with its state, rules and pools. It is serialized
/// straight from the snapshot it holds, with no `serde_json::Value` tree
/// built and dropped on the way; keys come in alphabetical order, as they
/// always have.
pub struct Status {
    snap: Arc<Snapshot>,
    epoch: u64,
    /// A change's answer: whether it was a dry run, and the apps it changed.
    change: Option<(bool, Vec<String>)>,
    /// Apps whose runtime rules differ from the config file's.
    drift: Vec<String>,
    process: super::ProcessInfo,
}

impl Status {
    /// The runtime rules of `app`, if the snapshot has it.
    pub fn rules(&self, app: &str) -> Option<&[RuleSpec]> {
        self.snap.app(app).map(|a| a.state.rules.as_slice())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let mut apps: Vec<&Arc<App>> = self.snap.apps.iter().collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        m.serialize_entry("apps", &Apps(&apps, &self.drift))?;
        if let Some((dry_run, changed)) = &self.change {
            m.serialize_entry("changed", changed)?;
            m.serialize_entry("dry_run", dry_run)?;
        }
        m.serialize_entry("epoch", &self.epoch)?;
        m.serialize_entry("process", &self.process)?;
        m.end()
    }
}

struct Apps<'a>(&'a [&'a Arc<App>], &'a [String]);

impl Serialize for Apps<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for app in self.0 {
            let drift = self.1.iter().any(|d| **d == *app.name);
            m.serialize_entry(&*app.name, &AppDoc(app, drift))?;
        }
        m.end()
    }
}

struct AppDoc<'a>(&'a App, bool);

impl Serialize for AppDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let app = self.0;
        let mut m = s.serialize_map(Some(11))?;
        // The runtime rules differ from the config file's (`cutover diff`).
        m.serialize_entry("drift", &self.1)?;
        let hosts: Vec<String> = app.hosts.iter().map(|h| h.to_string()).collect();
        m.serialize_entry("hosts", &hosts)?;
        m.serialize_entry("live", &app.state.live)?;
        m.serialize_entry("mirror", &MirrorDoc(app))?;
        m.serialize_entry("path_prefix", &app.path_prefix)?;
        m.serialize_entry("pools", &Pools(app))?;
        // Through a `Value`, as before: the rules' keys in alphabetical order.
        let rules = serde_json::to_value(&app.state.rules).map_err(serde::ser::Error::custom)?;
        m.serialize_entry("rules", &rules)?;
        let owner = if app.state.runtime_rules {
            "runtime"
        } else {
            "file"
        };
        m.serialize_entry("rules_owner", owner)?;
        m.serialize_entry("standby", &app.state.standby())?;
        m.serialize_entry("standby_percent", &app.state.standby_percent)?;
        m.serialize_entry("sticky", &app.sticky.to_string())?;
        m.end()
    }
}

/// Shadow traffic: the percent in force, the copies compared, and the last
/// differences, newest first.
struct MirrorDoc<'a>(&'a App);

impl Serialize for MirrorDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let app = self.0;
        let (compared, mismatched) = app.mirror_stats.compared();
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("compared", &compared)?;
        m.serialize_entry("differences", &app.mirror_stats.differences())?;
        m.serialize_entry("in_flight", &app.mirror_stats.in_flight.load(Relaxed))?;
        m.serialize_entry("mismatched", &mismatched)?;
        m.serialize_entry("percent", &app.mirror_percent())?;
        // Where the percent comes from: set at runtime, or the config's.
        let source = if app.state.mirror_percent.is_some() {
            "runtime"
        } else {
            "config"
        };
        m.serialize_entry("percent_source", source)?;
        m.end()
    }
}

struct Pools<'a>(&'a App);

impl Serialize for Pools<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let app = self.0;
        let mut m = s.serialize_map(Some(2))?;
        for color in Color::ALL {
            let pool = app.pool(color);
            m.serialize_entry(
                &color,
                &PoolDoc {
                    health_checked: pool.health().is_some(),
                    in_flight: pool.stats.in_flight.load(Relaxed),
                    receives_traffic: app.receives_traffic(color),
                    servers: Servers(pool),
                    tunnels: pool.stats.tunnels.load(Relaxed),
                },
            )?;
        }
        m.end()
    }
}

#[derive(serde::Serialize)]
struct PoolDoc<'a> {
    health_checked: bool,
    in_flight: u64,
    receives_traffic: bool,
    servers: Servers<'a>,
    tunnels: u64,
}

struct Servers<'a>(&'a Pool);

impl Serialize for Servers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pool = self.0;
        s.collect_seq(pool.servers.iter().enumerate().map(|(i, s)| {
            let (state, weight) = pool.setting(i);
            ServerDoc {
                addr: s.addr,
                connect_errors: s.connect_errors.load(Relaxed),
                // A server in maintenance reports unhealthy, whatever its checks say.
                healthy: s.is_healthy() && state != ServerState::Maint,
                in_flight: s.in_flight.load(Relaxed),
                open_connections: s.open_connections.load(Relaxed),
                state: state.as_str(),
                weight,
            }
        }))
    }
}

#[derive(serde::Serialize)]
struct ServerDoc {
    addr: std::net::SocketAddr,
    connect_errors: u64,
    healthy: bool,
    in_flight: u64,
    open_connections: u64,
    /// `ready`, `drain` or `maint`.
    state: &'static str,
    weight: u32,
}

/// Load the state file (if any) and fill in every configured app.
pub fn initial_state(config: &Config, reset: bool) -> Result<StateFile, super::state::StateError> {
    let mut state = match (&config.state.file, reset) {
        (Some(path), false) => StateFile::load(path)?.unwrap_or_default(),
        _ => StateFile::default(),
    };
    for app in &config.apps {
        let Some(current) = state.apps.get(&app.name).cloned() else {
            state.apps.insert(app.name.clone(), AppState::initial(app));
            continue;
        };
        tracing::info!(app = %app.name, "runtime state from the state file overrides the config's initial values");
        // File-owned rules edited while cutover was down apply now,
        // recorded like a reload.
        let Some(after) = rules_from_file(&app.name, &current, &app.rules, false) else {
            continue;
        };
        tracing::info!(app = %app.name, "the config file's rules changed while cutover was stopped; applied");
        state.epoch += 1;
        state.push_history(HistoryEntry {
            time: now_rfc3339(),
            epoch: state.epoch,
            actor: "start".into(),
            reason: None,
            app: app.name.clone(),
            kind: "reload".into(),
            forced: false,
            before: current,
            after: after.clone(),
        });
        state.apps.insert(app.name.clone(), after);
    }
    for name in state.apps.keys() {
        if config.app(name).is_none() {
            tracing::warn!(app = %name, "the state file names an app the config no longer has; kept but ignored");
        }
    }
    Ok(state)
}

/// What a reload or a start makes of an app's rules, given the config
/// file's: the rules the file owns follow it; runtime-owned rules that
/// differ stay (reported as drift, with a warning) unless `take` says to
/// hand them back to the file. `None`: nothing changes.
fn rules_from_file(app: &str, state: &AppState, file: &[RuleSpec], take: bool) -> Option<AppState> {
    if state.rules == file {
        return (take && state.runtime_rules).then(|| AppState {
            runtime_rules: false,
            ..state.clone()
        });
    }
    if state.runtime_rules && !take {
        tracing::warn!(app = %app, "the config file's rules differ from the runtime rules, which stand; `cutover diff` shows how, `cutover reload --take-rules-from-file` applies the file's");
        return None;
    }
    Some(AppState {
        rules: file.to_vec(),
        runtime_rules: false,
        ..state.clone()
    })
}

/// The health gate. A change is refused (409) only when it would send
/// traffic that now reaches a healthy server to a pool with no healthy
/// server: for each app, a colour with no healthy server may not gain
/// traffic — a larger share of the split, or a rule that sends to it
/// (new, raised, or turned to it) — while the other colour is healthy.
/// A change that moves traffic away from an unhealthy pool (a rollback, a
/// flip back, a rule removed, a split lowered) always passes, so the way
/// back is never blocked in an outage.
fn health_gate(
    current: &Snapshot,
    next: &Snapshot,
    changed: &[(String, AppState, AppState)],
) -> Result<(), OpError> {
    let mut problems = Vec::new();
    for (name, before, after) in changed {
        let Some(app) = next.app(name) else { continue };
        for color in Color::ALL {
            // Taking the last healthy server of a pool that receives
            // traffic out of rotation would leave that traffic nowhere.
            let had = current
                .app(name)
                .is_some_and(|a| a.pool(color).any_healthy());
            if had && app.receives_traffic(color) && !app.pool(color).any_healthy() {
                problems.push(format!(
                    "app {name:?}: this would leave {color}, which receives traffic, without a healthy server in rotation"
                ));
                continue;
            }
            if app.pool(color).any_healthy() || !app.pool(color.other()).any_healthy() {
                continue;
            }
            let causes = gained(before, after, color);
            if !causes.is_empty() {
                problems.push(format!(
                    "app {name:?}: {} would send traffic to {color}, which has no healthy server",
                    causes.join(" and ")
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(OpError::Conflict(format!(
            "{} (use --force, or \"force\": true, to do it anyway)",
            problems.join("; ")
        )))
    }
}

/// What in `after` sends `color` more traffic than `before` did: the
/// split's share, and each rule to it that is new, raised or turned to it.
fn gained(before: &AppState, after: &AppState, color: Color) -> Vec<String> {
    let share = |s: &AppState| {
        if s.live == color {
            100.0 - s.standby_percent
        } else {
            s.standby_percent
        }
    };
    let mut causes = Vec::new();
    let (was, now) = (share(before), share(after));
    if now > was {
        causes.push(format!("the split ({was}% -> {now}% of default traffic)"));
    }
    let percent = |r: &crate::config::RuleSpec| r.percent.unwrap_or(100.0);
    for rule in after
        .rules
        .iter()
        .filter(|r| r.to == color.to_string() && percent(r) > 0.0)
    {
        let old = before.rules.iter().find(|r| r.name == rule.name);
        let grew = match old {
            Some(o) if o.to == rule.to => {
                // Raised, or its conditions changed (which may match more).
                let mut same_share = o.clone();
                same_share.percent = rule.percent;
                percent(rule) > percent(o) || same_share != *rule
            }
            _ => true,
        };
        if grew {
            causes.push(format!("rule {:?}", rule.name));
        }
    }
    causes
}
