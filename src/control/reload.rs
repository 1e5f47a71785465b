//! Where the config file meets the runtime state: a reload (SIGHUP and
//! `POST /v1/reload`) re-reads the file and swaps it in whole or not at
//! all, and at start the stored state is filled in from the config.
//!
//! A reload keeps what operators set at runtime (live colour, split,
//! runtime-owned rules); only what the file owns follows it. What takes a
//! restart to change is refused with every error at once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::ops::{now_rfc3339, Control, OpError};
use super::state::{Commit, FileStore, HistoryEntry, NoStore, State, StateFile, Store};
use crate::api::Status;
use crate::config::{Config, RuleSpec};
use crate::route::{AppState, Snapshot};

impl Control {
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
        // No DNS under the control lock: known names keep their addresses,
        // new ones are looked up by `resolve::run`, woken below.
        let new = Config::load(&path)?.with_resolved(&self.config.resolved_names());
        let errors = fixed_at_start(&self.config, &new);
        if !errors.is_empty() {
            return Err(errors);
        }
        let epoch = self.state.epoch + 1;
        let by = (actor, reason);
        let (apps, history) = reloaded(&self.state.apps, &new, take, by, epoch, &now_rfc3339());
        let current = self.shared.snapshot.load_full();
        let next = Snapshot::build(&new, &apps, Some(&current), epoch)?;
        let certs = match (&self.shared.tls, new.tls.is_empty()) {
            (Some(_), false) => Some(crate::tls::CertStore::load(&new.tls)?.0),
            _ => None,
        };
        let change = Commit {
            epoch,
            apps,
            rollouts: None,
            history,
        };
        self.commit(change).map_err(|e| vec![e.to_string()])?;
        self.swap_config(new, next, certs);
        Ok(self.status())
    }

    /// After a reload is stored: the new config, certificates and snapshot
    /// take over.
    fn swap_config(&mut self, new: Config, next: Snapshot, certs: Option<crate::tls::CertStore>) {
        // Pools may be new (an app removed and added again).
        self.restart_windows();
        if let Some(log) = self.shared.access_log.get() {
            log.set_destination(&new.log.access);
        }
        let known = self.config.server_names();
        if new.server_names().iter().any(|n| !known.contains(n)) {
            self.shared.new_names.notify_one();
        }
        self.config = new;
        if let (Some(tls), Some(store)) = (&self.shared.tls, certs) {
            // New handshakes use the new certificates; open connections
            // keep the session they have.
            tls.resolver.store.store(Arc::new(store));
        }
        self.shared.store(next);
    }
}

/// What a reload cannot change (it takes a restart), each as an error;
/// a new access log file must open.
fn fixed_at_start(old: &Config, new: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if new.server.listen != old.server.listen || new.server.listen_tls != old.server.listen_tls {
        errors.push(
            "server.listen: listener addresses changed; restart cutover to apply them".to_string(),
        );
    }
    if new.acme != old.acme {
        errors.push("tls.acme: ACME settings changed; restart cutover to apply them".to_string());
    }
    if new.admin.listen != old.admin.listen {
        errors.push(
            "admin.listen: the admin address changed; restart cutover to apply it".to_string(),
        );
    }
    if new.admin.max_connections != old.admin.max_connections {
        errors.push(
            "admin.max_connections: the admin connection cap changed; restart cutover to apply it"
                .to_string(),
        );
    }
    if new.state.file != old.state.file {
        errors.push("state.file: the state file changed; restart cutover to apply it".to_string());
    } else if new.state != old.state {
        errors.push(
            "state: where the state is kept changed; restart cutover to apply it".to_string(),
        );
    }
    if let (crate::config::AccessLog::File(path), true) =
        (&new.log.access, new.log.access != old.log.access)
    {
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            errors.push(format!("log.access: {}: {e}", path.display()));
        }
    }
    if new.log.buffer != old.log.buffer {
        errors.push(
            "log.access_buffer: the access log's queue changed; restart cutover to apply it"
                .to_string(),
        );
    }
    errors
}

/// Every app's state under the reloaded config `new`, and the history of
/// the rules it changes, by `(actor, reason)`: new apps start from the
/// config; live colour and split stay as operators left them.
fn reloaded(
    apps: &BTreeMap<String, AppState>,
    new: &Config,
    take: bool,
    (actor, reason): (&str, Option<&str>),
    epoch: u64,
    time: &str,
) -> (BTreeMap<String, AppState>, Vec<HistoryEntry>) {
    let mut apps = apps.clone();
    let mut history = Vec::new();
    for app in &new.apps {
        let Some(before) = apps.get(&app.name).cloned() else {
            apps.insert(app.name.clone(), AppState::initial(app));
            continue;
        };
        let Some(after) = rules_from_file(&app.name, &before, &app.rules, take) else {
            continue;
        };
        if after.rules == before.rules {
            // Only the owner changed back to the file: nothing to record.
            apps.insert(app.name.clone(), after);
            continue;
        }
        let kind = if before.runtime_rules {
            "rules-from-file"
        } else {
            "reload"
        };
        history.push(HistoryEntry {
            time: time.to_string(),
            epoch,
            actor: actor.to_string(),
            reason: reason.map(str::to_string),
            app: app.name.clone(),
            kind: kind.into(),
            forced: false,
            guard: None,
            before,
            after: after.clone(),
        });
        apps.insert(app.name.clone(), after);
    }
    (apps, history)
}

/// The durable state from its store (the state file, if any), with every
/// configured app filled in.
pub fn initial_state(
    config: &Config,
    reset: bool,
    fleet: Option<Arc<super::fleet::Fleet>>,
) -> Result<State, super::state::StateError> {
    let store: Box<dyn Store> = match (fleet, &config.state.file) {
        (Some(fleet), cache) => Box::new(super::fleet::store::EtcdStore {
            fleet,
            cache: cache.clone(),
        }),
        (None, Some(path)) => Box::new(FileStore(path.clone())),
        (None, None) => Box::new(NoStore),
    };
    State::open(store, reset, |state| start_state(config, state))
}

/// What the config makes of the stored state at start: an entry for each
/// new app, and file-owned rules edited while cutover was down, applied
/// and recorded like a reload.
fn start_state(config: &Config, state: &mut StateFile) {
    for app in &config.apps {
        let Some(current) = state.apps.get(&app.name).cloned() else {
            state.apps.insert(app.name.clone(), AppState::initial(app));
            continue;
        };
        tracing::info!(app = %app.name, "runtime state from the state file overrides the config's initial values");
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
            guard: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = "[apps.shop.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.shop.green]\nservers = [\"127.0.0.1:2\"]\n";
    const OFFICE: &str =
        "[[apps.shop.rules]]\nname = \"office\"\nclient_ip = [\"192.0.2.0/24\"]\nto = \"green\"\n";

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn a_reload_refuses_every_setting_that_takes_a_restart_at_once() {
        let old = config(SHOP);
        assert!(fixed_at_start(&old, &config(SHOP)).is_empty());
        let new = config(&format!(
            "[server]\nlisten = [\"127.0.0.1:7001\"]\n[admin]\nlisten = \"127.0.0.1:7002\"\n[state]\nfile = \"other.json\"\n{SHOP}"
        ));
        let errors = fixed_at_start(&old, &new);
        let keys: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(keys, ["server.listen", "admin.listen", "state.file"]);
    }

    #[test]
    fn a_reload_starts_new_apps_and_records_only_the_rules_it_changes() {
        let before = config(SHOP);
        let shop = AppState::initial(&before.apps[0]);
        let apps = BTreeMap::from([("shop".to_string(), shop.clone())]);
        let api = format!(
            "[apps.api]\nhosts = [\"api.example\"]\n{}",
            SHOP.replace("shop", "api")
        );
        let by = ("reload", None);

        // A new app starts from the config; nothing to record.
        let (after, history) = reloaded(&apps, &config(&format!("{SHOP}{api}")), false, by, 2, "t");
        assert_eq!(after["shop"], shop);
        assert_eq!(after["api"], AppState::initial(&config(&api).apps[0]));
        assert!(history.is_empty());

        // File-owned rules follow the file, recorded as a reload.
        let file = config(&format!("{SHOP}{OFFICE}"));
        let (after, history) = reloaded(&apps, &file, false, by, 2, "t");
        assert_eq!(after["shop"].rules, file.apps[0].rules);
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].kind.as_str(), history[0].epoch), ("reload", 2));
        assert_eq!(history[0].before, shop);

        // Runtime-owned rules stand unless taken back from the file.
        let runtime = AppState {
            runtime_rules: true,
            ..shop.clone()
        };
        let apps = BTreeMap::from([("shop".to_string(), runtime.clone())]);
        let (after, history) = reloaded(&apps, &file, false, by, 2, "t");
        assert_eq!((&after["shop"], history.len()), (&runtime, 0));
        let (after, history) = reloaded(&apps, &file, true, ("ops", Some("why")), 2, "t");
        assert!(!after["shop"].runtime_rules);
        assert_eq!(history[0].kind, "rules-from-file");
        assert_eq!(history[0].reason.as_deref(), Some("why"));
    }
}
