//! Runtime changes: flip, shift, rollback, rules, servers, mirror — and
//! the moves of progressive rollouts ([`super::rollout`]), which are
//! changes too. Reloading the config file, also done by [`Control`], is
//! in [`super::reload`].
//!
//! [`Control`] is the only writer of the snapshot. Every change is
//! validated whole first, then written to the state file, then stored in
//! the `ArcSwap` — so when the caller gets its answer the change is both
//! durable and seen by every request that starts afterwards. The admin
//! API serializes calls through one `std::sync::Mutex<Control>`; nothing
//! in here awaits, so the lock is never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::judge::Counts;
use super::rollout::{self, Look, Next, Phase, Plan, Rollout};
use super::state::{Commit, History, HistoryEntry, State, StateError};
use super::Shared;
use crate::api::Status;
use crate::config::{compile_rules, Color, Config, RuleSpec};
use crate::model::Compared;
use crate::route::mirror::{Outcome, Skip};
use crate::route::snapshot::{ServerSetting, ServerState};
use crate::route::{App, AppState, Snapshot};

/// What a caller asks for.
#[derive(Debug, Clone)]
pub enum Change {
    /// One app's traffic (or every app's, `None`) to its standby colour,
    /// or to the given colour: then an app already there, with no split,
    /// is left as it is (`flip --to`, idempotent for scripts).
    Flip(Option<String>, Option<Color>),
    Shift(String, f64),
    /// Back to the state before the app's last change; `None`: undo the
    /// last change whatever apps it touched.
    Rollback(Option<String>),
    SetRules(String, Vec<RuleSpec>),
    DeleteRule(String, String),
    /// One rule's percent (app, rule, percent), its other fields as they
    /// are when the change is applied.
    PatchRule(String, String, f64),
    /// One server's runtime setting: app, colour (`None`: the one pool
    /// that has the address), address, setting.
    Server(String, Option<Color>, std::net::SocketAddr, ServerSetting),
    /// The share (0-100) of an app's live-colour requests copied to its
    /// standby colour and, when given, what the copies are compared by.
    Mirror(String, f64, Option<Vec<Compared>>),
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Flip(..) => "flip",
            Change::Shift(..) => "shift",
            Change::Rollback(_) => "rollback",
            Change::SetRules(..) | Change::DeleteRule(..) | Change::PatchRule(..) => "rules",
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
    /// A flip's or shift's guard window, when the call gives one
    /// (`Duration::ZERO`: no guard); `None`: the app's `guard`.
    pub guard: Option<Duration>,
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
    /// The fleet's store cannot be reached (503): nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// Another instance of the fleet changed the state first (409): the
    /// fleet's epoch now, and why.
    #[error("{1}")]
    Moved(u64, String),
}

impl OpError {
    pub fn status(&self) -> u16 {
        match self {
            OpError::BadRequest(_) => 400,
            OpError::NotFound(_) => 404,
            OpError::Conflict(_) | OpError::Moved(..) => 409,
            OpError::Stale { .. } => 412,
            OpError::Internal(_) => 500,
            OpError::Upgrading | OpError::Unavailable(_) => 503,
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
    /// `(app, phase)` → rollout transitions into that phase.
    pub rollout_transitions: BTreeMap<(String, String), u64>,
}

/// A rollout's observation window (in memory only: after a restart the
/// current step is observed afresh).
#[derive(Debug, Clone)]
pub(super) struct Window {
    since: Instant,
    /// Each colour's [`ColorStats::judged`] when it began, `[blue, green]`.
    ///
    /// [`ColorStats::judged`]: crate::route::snapshot::ColorStats::judged
    base: [[u64; 3]; 2],
    /// In a fleet: the other instances' counts when it began, by
    /// instance (see [`Remote`]).
    remote_base: Remote,
    /// Shadow copies `(compared, differed)` when it began.
    mirror_base: (u64, u64),
    /// The copies' own answers, `[answered, bad, slow]`, when it began.
    copies_base: [u64; 3],
    /// Requests not copied, by why, and copies dropped, when it began.
    not_copied_base: ([u64; Skip::ALL.len()], u64),
    /// Since when the judge holds (both colours over budget).
    held_since: Option<Instant>,
    /// The latest look, in words.
    note: String,
}

/// The other instances of a fleet: each one's judged counts of one app
/// since it started, `[blue, green]` of `[total, bad, slow]`, as they
/// last reported them.
type Remote = BTreeMap<String, [[u64; 3]; 2]>;

impl Window {
    fn new(app: &App, now: Instant, remote: Remote) -> Window {
        Window {
            since: now,
            base: Color::ALL.map(|c| app.pool(c).stats.judged()),
            remote_base: remote,
            mirror_base: app.mirror_stats.compared(),
            copies_base: app.mirror_stats.evidence.counts(),
            not_copied_base: not_copied(app),
            held_since: None,
            note: String::new(),
        }
    }

    /// `[total, bad, slow]` of `color` since the window began, here and
    /// on the other instances (`remote`). An instance that started since
    /// counts from 0; one that restarted, from its restart.
    fn counts(&self, app: &App, color: Color, remote: &Remote) -> [u64; 3] {
        let since = super::judge::counted_since;
        let c = color.index();
        let mut sum = since(app.pool(color).stats.judged(), self.base[c]);
        for (id, counts) in remote {
            let base = self.remote_base.get(id).map_or([0; 3], |b| b[c]);
            let more = since(counts[c], base);
            for i in 0..3 {
                sum[i] += more[i];
            }
        }
        sum
    }

    fn look(&self, app: &App, r: &Rollout, now: Instant, remote: &Remote) -> Look {
        let (target, baseline) = (r.target, r.baseline());
        let [tt, tb, ts] = self.counts(app, target, remote);
        let [bt, bb, bs] = self.counts(app, baseline, remote);
        let in_flight = |c: Color| app.pool(c).stats.in_flight.load(Relaxed);
        let copies = app.mirror_stats.evidence.counts();
        let [ct, cb, cs] = [0, 1, 2].map(|i| copies[i].saturating_sub(self.copies_base[i]));
        let (skipped, dropped) = not_copied(app);
        Look {
            age: now.saturating_duration_since(self.since),
            target: Counts { total: tt, bad: tb },
            baseline: Counts { total: bt, bad: bb },
            target_slow: Counts { total: tt, bad: ts },
            baseline_slow: Counts { total: bt, bad: bs },
            target_healthy: app.pool(target).any_healthy(),
            baseline_healthy: app.pool(baseline).any_healthy(),
            draining: match r.phase {
                Phase::Promoting => in_flight(baseline),
                Phase::RollingBack => in_flight(target),
                _ => 0,
            },
            held_for: self.held_since.map(|h| now.saturating_duration_since(h)),
            mirrored: {
                let (compared, differed) = app.mirror_stats.compared();
                Counts {
                    total: compared.saturating_sub(self.mirror_base.0),
                    bad: differed.saturating_sub(self.mirror_base.1),
                }
            },
            copies: Counts { total: ct, bad: cb },
            copies_slow: Counts { total: ct, bad: cs },
            not_copied: std::array::from_fn(|i| {
                skipped[i].saturating_sub(self.not_copied_base.0[i])
            }),
            dropped: dropped.saturating_sub(self.not_copied_base.1),
        }
    }
}

/// `app`'s requests not copied so far, by [`Skip`], and copies dropped.
fn not_copied(app: &App) -> ([u64; Skip::ALL.len()], u64) {
    let m = &app.mirror_stats;
    (
        Skip::ALL.map(|why| m.skipped(why)),
        m.outcome(Outcome::Dropped),
    )
}

/// What an operator does to a rollout under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
    /// Roll back and end it as aborted.
    Abort,
}

/// The routing a rollout in `r`'s phase sets on `before`.
fn routing(before: &AppState, r: &Rollout) -> AppState {
    // The rolled-out colour's share: all of it once it is live (the flip),
    // else its part of the split with the baseline live.
    let (live, standby_percent) = match r.percent() {
        None => return before.clone(),
        Some(p) if p >= 100.0 => (r.target, 0.0),
        Some(p) => (r.baseline(), p),
    };
    AppState {
        live,
        standby_percent,
        ..before.clone()
    }
}

/// End `r` because `req` was forced past it.
fn supersede(r: &mut Rollout, req: &Request, time: String) {
    let why = format!(
        "superseded by a forced {} by {}",
        req.change.kind(),
        req.actor
    );
    r.go(Phase::Superseded, r.step, None, why, time);
}

/// At most what a history entry's reason holds.
pub(super) fn clip(text: &str) -> String {
    let ascii: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    ascii.chars().take(200).collect()
}

/// An app's name, its state before a change and its state after.
type AppChange = (String, AppState, AppState);

/// `If-Match: EPOCH`: refused (412) unless the state is still at `given`.
fn check_if_match(given: Option<u64>, current: u64) -> Result<(), OpError> {
    match given {
        Some(given) if given != current => Err(OpError::Stale { given, current }),
        _ => Ok(()),
    }
}

/// The history of `req` at `epoch`: one entry per app it changed.
fn history_entries(
    req: &Request,
    changed: &[AppChange],
    epoch: u64,
    time: &str,
) -> Vec<HistoryEntry> {
    changed
        .iter()
        .map(|(name, before, after)| HistoryEntry {
            time: time.to_string(),
            epoch,
            actor: req.actor.clone(),
            reason: req.reason.clone(),
            app: name.clone(),
            kind: req.change.kind().to_string(),
            forced: req.force,
            guard: None,
            before: before.clone(),
            after: after.clone(),
        })
        .collect()
}

/// The colour of `app`'s server `addr`: the one asked for if that pool
/// has it, else the one pool that has it (`has`: `[blue, green]`).
fn server_color(
    app: &str,
    addr: SocketAddr,
    asked: Option<Color>,
    has: [bool; 2],
) -> Result<Color, OpError> {
    match asked {
        Some(c) if has[c.index()] => Ok(c),
        Some(c) => Err(OpError::NotFound(format!(
            "app {app:?} has no {c} server {addr}"
        ))),
        None => match has {
            [true, false] => Ok(Color::Blue),
            [false, true] => Ok(Color::Green),
            [true, true] => Err(OpError::BadRequest(format!(
                "{addr} is in both pools of app {app:?}: say which colour"
            ))),
            [false, false] => Err(OpError::NotFound(format!(
                "app {app:?} has no server {addr}"
            ))),
        },
    }
}

pub struct Control {
    pub shared: Arc<Shared>,
    pub(super) config: Config,
    /// The durable state; every change goes through its `commit`.
    pub(super) state: State,
    pub stats: ControlStats,
    pub(super) windows: HashMap<String, Window>,
    /// The fleet this instance belongs to (`[state] backend = "etcd"`).
    pub fleet: Option<Arc<super::fleet::Fleet>>,
    /// Guarded changes ([`super::guarding`]).
    pub(super) watch: super::guard_watch::Watch,
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Control {
    /// `state` already holds an entry for every app of `config` and the
    /// shared snapshot was built from both.
    pub fn new(shared: Arc<Shared>, config: Config, state: State) -> Control {
        Control {
            shared,
            config,
            state,
            stats: ControlStats::default(),
            windows: HashMap::new(),
            fleet: None,
            watch: Default::default(),
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
        check_if_match(req.if_match, self.state.epoch)?;
        if let Some(answer) = self.roll_back_rollouts(&req)? {
            return Ok(answer);
        }
        if !req.force {
            self.refuse_undoing_a_rollouts_rollback(&req.change)?;
        }
        let (changed, superseded) = self.changes(&req)?;
        let current = self.shared.snapshot.load_full();
        if changed.is_empty() {
            return self.change_nothing(&req, &superseded);
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
        let rollouts = self.superseded_rollouts(&superseded, &req, &time);
        let superseding = rollouts.is_some();
        let mut history = history_entries(&req, &changed, epoch, &time);
        self.mark_guarded(&req, &mut history);
        let guarded = self.guard_answer(&history);
        self.commit(Commit {
            epoch,
            apps: states,
            rollouts,
            history,
        })?;
        if superseding {
            for name in &superseded {
                tracing::info!(app = %name, actor = %req.actor, kind = req.change.kind(), "rollout superseded by a forced change");
                self.rollout_moved(name, "superseded");
            }
        }
        self.shared.store(next);
        self.changed(&req, &changed, epoch);
        self.start_guards(Instant::now());
        let snap = self.shared.snapshot.load_full();
        let mut answer = self.answer(snap, epoch, false, &names);
        answer.guard = guarded;
        Ok(answer)
    }

    /// Rolling back an app whose rollout is under way aborts the rollout
    /// instead: `Some` answer when that is what `req` does.
    fn roll_back_rollouts(&mut self, req: &Request) -> Result<Option<Status>, OpError> {
        let Change::Rollback(app) = &req.change else {
            return Ok(None);
        };
        let busy = self.rolling_back(app.as_deref());
        if busy.is_empty() {
            return Ok(None);
        }
        if !req.dry_run {
            for name in &busy {
                // One already rolling back is on its way there.
                if self.state.rollouts[name].phase != Phase::RollingBack {
                    self.steer_rollout(name, Steer::Abort, &req.actor, req.reason.as_deref())?;
                }
            }
        }
        let names: Vec<&str> = busy.iter().map(String::as_str).collect();
        let snap = self.shared.snapshot.load_full();
        Ok(Some(self.answer(
            snap,
            self.state.epoch,
            req.dry_run,
            &names,
        )))
    }

    /// The apps `req` changes, each with its state before and after, and
    /// the apps whose rollout it supersedes; refused (409) when it would
    /// supersede one without being forced.
    fn changes(&self, req: &Request) -> Result<(Vec<AppChange>, Vec<String>), OpError> {
        let mut targets = self.targets(&req.change)?;
        let manual = matches!(
            req.change,
            Change::Flip(..)
                | Change::Shift(..)
                | Change::SetRules(..)
                | Change::DeleteRule(..)
                | Change::PatchRule(..)
        );
        let superseded: Vec<String> = targets
            .iter()
            .map(|(name, _)| name)
            .filter(|name| manual && self.rollout_active(name))
            .cloned()
            .collect();
        for (name, after) in &mut targets {
            // A rollout superseded while it copies traffic (its shadow
            // phase, or a step short of evidence) hands the mirror back.
            let r = self.state.rollouts.get(name);
            let copying = r.is_some_and(|r| r.phase == Phase::Shadow || r.shadowing);
            if superseded.contains(name) && copying {
                after.mirror_percent = None;
            }
        }
        if let (Some(name), false) = (superseded.first(), req.force) {
            let r = &self.state.rollouts[name];
            return Err(OpError::Conflict(format!(
                "app {name:?} has a rollout under way ({}): pause or abort it (cutover rollout {name} pause|abort), or force the {} to end the rollout as superseded",
                r.phase,
                req.change.kind()
            )));
        }
        let changed = targets
            .into_iter()
            .filter(|(name, after)| self.state.apps[name] != *after)
            .map(|(name, after)| {
                let before = self.state.apps[&name].clone();
                (name, before, after)
            })
            .collect();
        Ok((changed, superseded))
    }

    /// A change that leaves every app as it is; forced, it still ends the
    /// rollouts it was forced past.
    fn change_nothing(&mut self, req: &Request, superseded: &[String]) -> Result<Status, OpError> {
        if !req.dry_run {
            for name in superseded {
                let mut r = self.state.rollouts[name].clone();
                supersede(&mut r, req, now_rfc3339());
                self.commit_rollout(name, r, &req.actor, req.reason.as_deref())?;
            }
        }
        let snap = self.shared.snapshot.load_full();
        Ok(self.answer(snap, self.state.epoch, req.dry_run, &[]))
    }

    /// Every rollout record, with those `req` supersedes ended; `None`
    /// when it supersedes none (the records are not rewritten).
    fn superseded_rollouts(
        &self,
        superseded: &[String],
        req: &Request,
        time: &str,
    ) -> Option<BTreeMap<String, Rollout>> {
        if superseded.is_empty() {
            return None;
        }
        let mut all = self.state.rollouts.clone();
        for name in superseded {
            let r = all.get_mut(name).expect("an active rollout");
            supersede(r, req, time.to_string());
        }
        Some(all)
    }

    /// After a change is stored: count and log it, app by app.
    fn changed(&mut self, req: &Request, changed: &[AppChange], epoch: u64) {
        for (name, before, after) in changed {
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
    }

    /// The new state of every app the change touches.
    fn targets(&self, change: &Change) -> Result<Vec<(String, AppState)>, OpError> {
        match change {
            Change::Flip(app, to) => self.flip(app.as_deref(), *to),
            Change::Shift(app, percent) => {
                let mut after = self.with_percent(app, *percent)?;
                after.standby_percent = *percent;
                Ok(vec![(app.clone(), after)])
            }
            Change::Mirror(app, percent, compare) => {
                let mut after = self.with_percent(app, *percent)?;
                after.mirror_percent = Some(*percent);
                if let Some(list) = compare {
                    after.mirror_compare = Some(compare_list(list)?);
                }
                Ok(vec![(app.clone(), after)])
            }
            Change::Rollback(Some(app)) => self.roll_back_app(app),
            Change::Rollback(None) => self.roll_back_last(),
            Change::SetRules(app, rules) => self.set_rules(app, rules),
            Change::DeleteRule(app, rule) => self.delete_rule(app, rule),
            Change::PatchRule(app, rule, percent) => self.patch_rule(app, rule, *percent),
            Change::Server(app, color, addr, setting) => {
                self.set_server(app, *color, *addr, setting)
            }
        }
    }

    /// One app's traffic (or every app's, `None`) to its standby colour,
    /// or to `to`; either way with no split left.
    fn flip(
        &self,
        app: Option<&str>,
        to: Option<Color>,
    ) -> Result<Vec<(String, AppState)>, OpError> {
        let names: Vec<String> = match app {
            Some(a) => {
                self.require_app(a)?;
                vec![a.to_string()]
            }
            None => self.config.apps.iter().map(|a| a.name.clone()).collect(),
        };
        Ok(names
            .into_iter()
            .map(|n| {
                let before = &self.state.apps[&n];
                let after = AppState {
                    live: to.unwrap_or(before.live.other()),
                    standby_percent: 0.0,
                    ..before.clone()
                };
                (n, after)
            })
            .collect())
    }

    /// `app`'s state, once `percent` (of a split or a mirror) is known to
    /// be one.
    fn with_percent(&self, app: &str, percent: f64) -> Result<AppState, OpError> {
        let before = self.require_app(app)?;
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(OpError::BadRequest(format!(
                "percent: must be between 0 and 100, got {percent}"
            )));
        }
        Ok(before.clone())
    }

    /// `app` back to its state before its last recorded change.
    fn roll_back_app(&self, app: &str) -> Result<Vec<(String, AppState)>, OpError> {
        self.require_app(app)?;
        let last = self
            .state
            .history
            .iter()
            .rev()
            .find(|h| h.app == *app && h.before != h.after)
            .ok_or_else(|| {
                OpError::Conflict(format!(
                    "nothing to roll back: app {app:?} has no recorded change"
                ))
            })?;
        Ok(vec![(app.to_string(), last.before.clone())])
    }

    /// Every app the last change touched back to its state before it.
    fn roll_back_last(&self) -> Result<Vec<(String, AppState)>, OpError> {
        // A rollout's pause or resume changes no routing: not a change to undo.
        let last = self
            .state
            .history
            .iter()
            .rev()
            .find(|h| h.before != h.after)
            .ok_or_else(|| OpError::Conflict("nothing to roll back: no recorded change".into()))?;
        Ok(self
            .state
            .history
            .iter()
            .filter(|h| h.epoch == last.epoch && self.config.app(&h.app).is_some())
            .map(|h| (h.app.clone(), h.before.clone()))
            .collect())
    }

    fn set_rules(&self, app: &str, rules: &[RuleSpec]) -> Result<Vec<(String, AppState)>, OpError> {
        let before = self.require_app(app)?;
        compile_rules(&format!("apps.{app}"), rules)
            .map_err(|e| OpError::BadRequest(e.join("; ")))?;
        let after = AppState {
            rules: rules.to_vec(),
            runtime_rules: true,
            ..before.clone()
        };
        Ok(vec![(app.to_string(), after)])
    }

    fn delete_rule(&self, app: &str, rule: &str) -> Result<Vec<(String, AppState)>, OpError> {
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
        let after = AppState {
            rules,
            runtime_rules: true,
            ..before.clone()
        };
        Ok(vec![(app.to_string(), after)])
    }

    /// `app`'s rules with `rule`'s percent changed, read from the state
    /// as it is now (under the lock), and checked as any rule list is.
    fn patch_rule(
        &self,
        app: &str,
        rule: &str,
        percent: f64,
    ) -> Result<Vec<(String, AppState)>, OpError> {
        let before = self.require_app(app)?;
        let mut rules = before.rules.clone();
        let Some(r) = rules.iter_mut().find(|r| r.name == *rule) else {
            return Err(OpError::NotFound(format!(
                "app {app:?} has no rule named {rule:?}"
            )));
        };
        r.percent = Some(percent);
        self.set_rules(app, &rules)
    }

    /// One server's runtime setting; a ready server at its configured
    /// weight needs no entry.
    fn set_server(
        &self,
        app: &str,
        color: Option<Color>,
        addr: SocketAddr,
        setting: &ServerSetting,
    ) -> Result<Vec<(String, AppState)>, OpError> {
        let before = self.require_app(app)?;
        let cfg = self.config.app(app).expect("required above");
        let has = |c: Color| cfg.pools[c.index()].servers.iter().any(|s| s.addr == addr);
        let color = server_color(app, addr, color, [has(Color::Blue), has(Color::Green)])?;
        if setting.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
            return Err(OpError::BadRequest(
                "weight: must be between 1 and 1000".into(),
            ));
        }
        let mut servers = before.servers.clone();
        let key = crate::route::snapshot::server_key(color, addr);
        if setting.state == ServerState::Ready && setting.weight.is_none() {
            servers.remove(&key);
        } else {
            servers.insert(key, *setting);
        }
        let after = AppState {
            servers,
            ..before.clone()
        };
        Ok(vec![(app.to_string(), after)])
    }

    /// Observe every rollout afresh: after a reload its pools may be new,
    /// so each window starts again from the new snapshot's counters.
    pub(super) fn restart_windows(&mut self) {
        self.windows.clear();
        // Guards too: each starts again from the history, counting afresh.
        self.watch.guards.clear();
    }

    /// Store a change and make it the state; refused, changing nothing,
    /// if it cannot be stored.
    pub(super) fn commit(&mut self, next: Commit) -> Result<(), OpError> {
        self.state.commit(next).map_err(|e| {
            tracing::error!(error = %e, "state not written; change refused");
            match e {
                StateError::Conflict { epoch } => OpError::Moved(epoch, e.to_string()),
                StateError::Unavailable(_) => OpError::Unavailable(e.to_string()),
                _ => OpError::Internal(e.to_string()),
            }
        })
    }

    fn answer(&self, snap: Arc<Snapshot>, epoch: u64, dry_run: bool, changed: &[&str]) -> Status {
        let change = Some((dry_run, changed.iter().map(|s| s.to_string()).collect()));
        self.view(&snap, epoch, change)
    }

    /// The status document of `snap` ([`super::view::status`]).
    fn view(&self, snap: &Snapshot, epoch: u64, change: Option<(bool, Vec<String>)>) -> Status {
        let extras = super::view::Extras {
            epoch,
            change,
            drift: &self.drifting(),
            rollouts: self.rollout_docs(),
            process: &self.shared.process,
            acme: self.shared.acme.load_full().map(|a| (*a).clone()),
            fleet: self
                .fleet
                .as_ref()
                .map(|f| f.link(*self.shared.swapped.borrow())),
        };
        super::view::status(snap, extras)
    }

    fn rollout_docs(&self) -> BTreeMap<String, crate::api::Rollout> {
        self.state
            .rollouts
            .keys()
            .filter_map(|name| Some((name.clone(), self.rollout_doc(name)?)))
            .collect()
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Status {
        self.view(&self.shared.snapshot.load(), self.state.epoch, None)
    }
}

impl Control {
    /// Every `host:port` some pool names a server by.
    pub fn server_names(&self) -> Vec<String> {
        self.config.server_names()
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

/// Rollouts: started and steered by operators, moved on by
/// [`Control::tick_rollouts`] once a second. Every move is one change:
/// routing, rollout record and history entry in one atomic write.
impl Control {
    pub fn rollouts(&self) -> &BTreeMap<String, Rollout> {
        &self.state.rollouts
    }

    fn rollout_active(&self, app: &str) -> bool {
        self.state
            .rollouts
            .get(app)
            .is_some_and(|r| r.phase.is_active())
    }

    /// The apps with a rollout under way that a rollback of `app` (or of
    /// the last change, `None`) would touch.
    fn rolling_back(&self, app: Option<&str>) -> Vec<String> {
        let names: Vec<String> = match app {
            Some(a) => vec![a.to_string()],
            None => self
                .state
                .history
                .iter()
                .rev()
                .find(|h| h.before != h.after)
                .map(|last| {
                    self.state
                        .history
                        .iter()
                        .filter(|h| h.epoch == last.epoch)
                        .map(|h| h.app.clone())
                        .collect()
                })
                .unwrap_or_default(),
        };
        names
            .into_iter()
            .filter(|n| self.config.app(n).is_some() && self.rollout_active(n))
            .collect()
    }

    /// Undoing the move by which a rollout rolled back, or a guard
    /// reverted a change, would send traffic back to the colour judged
    /// bad: 409 unless forced.
    fn refuse_undoing_a_rollouts_rollback(&self, change: &Change) -> Result<(), OpError> {
        let Change::Rollback(app) = change else {
            return Ok(());
        };
        let last = self
            .state
            .history
            .iter()
            .rev()
            .find(|h| h.before != h.after && app.as_ref().is_none_or(|a| h.app == *a));
        if let Some(last) = last.filter(|h| h.kind == "guard") {
            return Err(OpError::Conflict(format!(
                "the last change of app {:?} is its guard reverting a change that hurt: undoing it would send traffic back to {}; shift or flip it explicitly, or force the rollback",
                last.app, last.before.live
            )));
        }
        let Some(last) = last.filter(|h| h.kind == "rollout") else {
            return Ok(());
        };
        match self.state.rollouts.get(&last.app).map(|r| (r.phase, r.target)) {
            Some((phase @ (Phase::Failed | Phase::Aborted), target)) => Err(OpError::Conflict(format!(
                "the last change of app {:?} is its rollout rolling back ({phase}): undoing it would send traffic back to {target}; shift or flip it explicitly, or force the rollback",
                last.app
            ))),
            _ => Ok(()),
        }
    }

    /// Start a rollout of `app`'s standby colour; refused (409) while that
    /// colour has no healthy server, unless `force` (then its preflight
    /// waits for one, as long as a step).
    pub fn start_rollout(
        &mut self,
        app: &str,
        plan: Plan,
        force: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<crate::api::Rollout, OpError> {
        if self.shared.upgrading.load(Relaxed) {
            return Err(OpError::Upgrading);
        }
        let state = self.require_app(app)?;
        if let Some(r) = self.state.rollouts.get(app).filter(|r| r.phase.is_active()) {
            return Err(OpError::Conflict(format!(
                "app {app:?} already has a rollout of {} under way ({}): pause, resume or abort it",
                r.target, r.phase
            )));
        }
        let target = state.live.other();
        let healthy = self.standby_healthy(app, target);
        if !healthy && !force {
            return Err(OpError::Conflict(format!(
                "app {app:?}: {target} has no healthy server, so the rollout would fail its preflight (use --force, or \"force\": true, to start it anyway and let the preflight wait for {target})"
            )));
        }
        let mut r = Rollout::new(plan, target, now_rfc3339());
        let steps: Vec<String> = r.plan.steps.iter().map(|s| s.to_string()).collect();
        let forced = match healthy {
            true => String::new(),
            false => format!(" (forced: {target} had no healthy server)"),
        };
        let why = format!(
            "started by {actor}{forced}: {target} in steps {} every {}",
            steps.join(","),
            humantime::format_duration(r.every())
        );
        r.go(Phase::Preflight, 0, None, why, now_rfc3339());
        self.commit_rollout(app, r, actor, reason)?;
        self.rollout_doc(app)
            .ok_or_else(|| OpError::Internal(format!("app {app:?} has no rollout record")))
    }

    /// Whether `app`'s `color` pool has a server to take traffic now.
    fn standby_healthy(&self, app: &str, color: Color) -> bool {
        let snap = self.shared.snapshot.load();
        snap.app(app).is_some_and(|a| a.pool(color).any_healthy())
    }

    /// Pause, resume or abort `app`'s rollout.
    pub fn steer_rollout(
        &mut self,
        app: &str,
        steer: Steer,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<crate::api::Rollout, OpError> {
        if self.shared.upgrading.load(Relaxed) {
            return Err(OpError::Upgrading);
        }
        self.require_app(app)?;
        let Some(r) = self.state.rollouts.get(app) else {
            return Err(OpError::NotFound(format!("app {app:?} has no rollout")));
        };
        let refuse = |what: &str| {
            Err(OpError::Conflict(format!(
                "app {app:?}: the rollout is {}: {what}",
                r.phase
            )))
        };
        if !r.phase.is_active() {
            return refuse("nothing to steer (start another)");
        }
        let mut after = r.clone();
        let by = match reason {
            Some(why) => format!("by {actor} ({why})"),
            None => format!("by {actor}"),
        };
        let step = r.step;
        match steer {
            Steer::Pause if matches!(r.phase, Phase::Paused | Phase::RollingBack) => {
                return refuse("it cannot be paused")
            }
            Steer::Pause => after.go(
                Phase::Paused,
                step,
                Some(r.phase),
                format!("paused {by}"),
                now_rfc3339(),
            ),
            Steer::Resume if r.phase != Phase::Paused => {
                return refuse("only a paused rollout resumes")
            }
            Steer::Resume => after.go(
                r.then.unwrap_or(Phase::Progressing),
                step,
                None,
                format!("resumed {by}"),
                now_rfc3339(),
            ),
            Steer::Abort if r.phase == Phase::RollingBack => return refuse("already rolling back"),
            Steer::Abort => after.go(
                Phase::RollingBack,
                step,
                Some(Phase::Aborted),
                format!("aborted {by}"),
                now_rfc3339(),
            ),
        }
        self.commit_rollout(app, after, actor, reason)?;
        self.rollout_doc(app)
            .ok_or_else(|| OpError::Internal(format!("app {app:?} has no rollout record")))
    }

    /// Make `after` `app`'s rollout, with the routing its phase sets: one
    /// write of the state file, one new snapshot, one history entry.
    fn commit_rollout(
        &mut self,
        app: &str,
        after: Rollout,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), OpError> {
        let before = self.state.apps[app].clone();
        let mut routed = routing(&before, &after);
        // The shadow phase copies every live request it may (bounded by
        // the mirror's `max_in_flight`), and so does a step short of
        // evidence ([`Control::copy_for_evidence`]); leaving either hands
        // the mirror back to the config.
        let was = self.state.rollouts.get(app);
        let copying = was.is_some_and(|r| r.phase == Phase::Shadow || r.shadowing);
        if after.phase == Phase::Shadow {
            routed.mirror_percent = Some(100.0);
        } else if copying {
            routed.mirror_percent = None;
        }
        let mut states = self.state.apps.clone();
        states.insert(app.to_string(), routed.clone());
        let epoch = self.state.epoch + 1;
        let current = self.shared.snapshot.load_full();
        let next = current
            .with_states(&states, epoch)
            .map_err(|e| OpError::BadRequest(e.join("; ")))?;
        let mut rollouts = self.state.rollouts.clone();
        let to = after.phase;
        let why = after.reason.clone();
        rollouts.insert(app.to_string(), after);
        let entry = HistoryEntry {
            time: now_rfc3339(),
            epoch,
            actor: actor.to_string(),
            reason: Some(clip(&match reason {
                Some(r) => format!("{r} (rollout {to}: {why})"),
                None => format!("rollout {to}: {why}"),
            })),
            app: app.to_string(),
            kind: "rollout".into(),
            forced: false,
            guard: None,
            before: before.clone(),
            after: routed.clone(),
        };
        let change = Commit {
            epoch,
            apps: states,
            rollouts: Some(rollouts),
            history: vec![entry],
        };
        if to == Phase::RollingBack && actor == "rollout" {
            // The judge's rollback is not held back by a state file that
            // cannot be written: a failing green keeps no share for that.
            // The next write that succeeds records it; a restart before
            // one finds the rollout where it was and judges it again.
            if let Err(e) = self.state.commit_anyway(change) {
                tracing::error!(app = %app, error = %e, "rolling back although the state file could not be written");
            }
        } else {
            self.commit(change)?;
        }
        self.shared.store(next);
        tracing::info!(
            app = %app,
            actor = %actor,
            to = to.as_str(),
            epoch,
            before = %describe(&before),
            after = %describe(&routed),
            reason = %why,
            "rollout moved"
        );
        self.rollout_moved(app, to.as_str());
        Ok(())
    }

    /// After a move: count it, and observe the new phase afresh.
    fn rollout_moved(&mut self, app: &str, to: &str) {
        *self
            .stats
            .rollout_transitions
            .entry((app.to_string(), to.to_string()))
            .or_default() += 1;
        self.windows.remove(app);
        let snap = self.shared.snapshot.load_full();
        if let Some(a) = snap.app(app) {
            set_slow(a, self.slow_micros(app));
        }
    }

    /// One look at every rollout under way, moving those the judge moves.
    pub fn tick_rollouts(&mut self) {
        if self.shared.upgrading.load(Relaxed) {
            return;
        }
        if self
            .fleet
            .as_ref()
            .is_some_and(|f| !f.judging.load(Relaxed))
        {
            // Another instance judges; should this one take over, it
            // observes afresh, as after a restart.
            self.windows.clear();
            return;
        }
        let now = Instant::now();
        let snap = self.shared.snapshot.load_full();
        let active: Vec<String> = self
            .state
            .rollouts
            .iter()
            .filter(|(name, r)| r.phase.is_active() && self.config.app(name).is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for name in active {
            let Some(app) = snap.app(&name) else { continue };
            let r = self.state.rollouts[&name].clone();
            let remote = self.remote_counts(&name);
            let slow = self.slow_micros(&name);
            let window = self.windows.entry(name.clone()).or_insert_with(|| {
                // A new window (after a move, or a restart): slow responses
                // are counted by the rollout's `max_slow` from now on.
                set_slow(app, slow);
                Window::new(app, now, remote.clone())
            });
            let look = window.look(app, &r, now, &remote);
            match rollout::look(&r, &look) {
                Next::Stay(note) => {
                    window.held_since = match (note.holding, window.held_since) {
                        (true, since) => Some(since.unwrap_or(now)),
                        (false, _) => None,
                    };
                    window.note = note.text;
                    if rollout::wants_copies(&r, &look) {
                        self.copy_for_evidence(&name, r, &look);
                    }
                }
                Next::Go {
                    phase,
                    step,
                    then,
                    reason,
                } => {
                    let mut after = r;
                    after.go(phase, step, then, reason, now_rfc3339());
                    if let Err(e) = self.commit_rollout(&name, after, "rollout", None) {
                        tracing::error!(app = %name, error = %e, "rollout not moved; trying again in a second");
                    }
                }
            }
        }
    }

    /// Copy every copyable live request of `app` to the rollout's target
    /// for the rest of the step (`look` found its live requests too few):
    /// the mirror percent at 100, recorded with the rollout so that its
    /// next move hands the mirror back. The step's window goes on.
    fn copy_for_evidence(&mut self, app: &str, mut r: Rollout, look: &Look) {
        let before = self.state.apps[app].clone();
        let after = AppState {
            mirror_percent: Some(100.0),
            ..before.clone()
        };
        r.shadowing = true;
        let why = format!(
            "rollout progressing: {} of {} samples so far at {} %; shadow copies of live traffic to {} for evidence",
            look.target.total,
            r.plan.samples_needed(),
            r.plan.share(r.step),
            r.target
        );
        let mut states = self.state.apps.clone();
        states.insert(app.to_string(), after.clone());
        let epoch = self.state.epoch + 1;
        let next = match self.shared.snapshot.load_full().with_states(&states, epoch) {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(app = %app, error = %e.join("; "), "no shadow copies for evidence");
                return;
            }
        };
        let mut rollouts = self.state.rollouts.clone();
        rollouts.insert(app.to_string(), r);
        let entry = HistoryEntry {
            time: now_rfc3339(),
            epoch,
            actor: "rollout".into(),
            reason: Some(clip(&why)),
            app: app.to_string(),
            kind: "rollout".into(),
            forced: false,
            guard: None,
            before,
            after,
        };
        let change = Commit {
            epoch,
            apps: states,
            rollouts: Some(rollouts),
            history: vec![entry],
        };
        if self.commit(change).is_err() {
            // Tried again next second; the step is judged meanwhile.
            return;
        }
        self.shared.store(next);
        tracing::info!(app = %app, reason = %why, "shadow copies for evidence");
    }

    /// The other instances' counts of `app`, as they last reported them;
    /// none without a fleet.
    pub(super) fn remote_counts(&self, app: &str) -> Remote {
        let Some(fleet) = &self.fleet else {
            return Remote::new();
        };
        let view = fleet.view.borrow();
        view.instances
            .iter()
            .filter(|(id, _)| **id != fleet.id)
            .filter_map(|(id, r)| Some((id.clone(), *r.counts.get(app)?)))
            .collect()
    }

    /// What counts as slow for `app` now, in microseconds (0: nothing):
    /// while a rollout runs, its `max_slow` (none: nothing, as it judges
    /// no slowness); otherwise the app's `guard_max_slow`, kept in force so
    /// that a guard has the old colour's slow responses from before the
    /// change to compare with.
    pub(super) fn slow_micros(&self, app: &str) -> u64 {
        match self.state.rollouts.get(app) {
            Some(r) if r.phase.is_active() => {
                r.plan.max_slow_ms.map_or(0, |ms| ms.saturating_mul(1000))
            }
            _ => (self.config.app(app))
                .and_then(|a| a.guard_max_slow)
                .map_or(0, |d| d.as_micros() as u64),
        }
    }

    /// `app`'s rollout for status: the record, and what the judge sees in
    /// the current window.
    pub fn rollout_doc(&self, app: &str) -> Option<crate::api::Rollout> {
        let r = self.state.rollouts.get(app)?;
        let snap = self.shared.snapshot.load();
        let state = &self.state.apps.get(app)?;
        let share = if state.live == r.target {
            100.0 - state.standby_percent
        } else {
            state.standby_percent
        };
        let window = match (self.windows.get(app), snap.app(app)) {
            (Some(w), Some(a)) if r.phase.is_active() => {
                let remote = self.remote_counts(app);
                let colour = |c: Color| {
                    let [requests, bad, slow] = w.counts(a, c, &remote);
                    crate::api::Counts {
                        bad,
                        requests,
                        slow,
                    }
                };
                Some(crate::api::Window {
                    age_seconds: (w.since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                    blue: colour(Color::Blue),
                    green: colour(Color::Green),
                    holding: w.held_since.is_some(),
                    judge: w.note.clone(),
                })
            }
            _ => None,
        };
        let p = &r.plan;
        let ms = |v: u64| humantime::format_duration(Duration::from_millis(v)).to_string();
        let pct = |f: f64| (f * 1e6).round() / 1e4;
        Some(crate::api::Rollout {
            allow_low_traffic: p.allow_low_traffic,
            bake: ms(p.bake_ms),
            baseline: r.baseline(),
            every: ms(p.every_ms),
            max_error_rate: pct(p.max_error_rate),
            max_mismatch: pct(p.max_mismatch),
            max_slow: p.max_slow_ms.map(ms),
            max_slow_rate: pct(p.max_slow_rate),
            percent: share,
            reason: r.reason.clone(),
            shadow: ms(p.shadow_ms),
            started: r.started.clone(),
            state: r.phase,
            step: r.step + 1,
            steps: p.steps.clone(),
            target: r.target,
            transitions: r.transitions.clone(),
            window,
        })
    }
}

/// Count `app`'s responses slower than `micros` as slow (0: none), live
/// and shadow copies alike; see [`Control::slow_micros`].
pub(super) fn set_slow(app: &App, micros: u64) {
    for color in Color::ALL {
        app.pool(color).stats.slow_micros.store(micros, Relaxed);
    }
    app.mirror_stats.evidence.slow_micros.store(micros, Relaxed);
}

/// A runtime `compare` list, checked as the config's is: `status` in it
/// (status classes are always compared), nothing twice.
fn compare_list(list: &[Compared]) -> Result<Vec<Compared>, OpError> {
    if !list.contains(&Compared::Status) {
        return Err(OpError::BadRequest(
            "compare: status classes are always compared: give [\"status\"] or [\"status\", \"body\"]"
                .into(),
        ));
    }
    let mut out: Vec<Compared> = Vec::new();
    for c in list {
        if out.contains(c) {
            let why = format!("compare: {:?} is listed twice", c.as_str());
            return Err(OpError::BadRequest(why));
        }
        out.push(*c);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(live: Color, standby_percent: f64) -> AppState {
        AppState {
            live,
            standby_percent,
            rules: Vec::new(),
            runtime_rules: false,
            servers: BTreeMap::new(),
            mirror_percent: None,
            mirror_compare: None,
        }
    }

    fn request(change: Change, force: bool) -> Request {
        Request {
            change,
            force,
            dry_run: false,
            if_match: None,
            actor: "ops".into(),
            reason: Some("ticket 7".into()),
            guard: None,
        }
    }

    #[test]
    fn if_match_passes_when_absent_or_current_and_is_stale_otherwise() {
        assert_eq!(check_if_match(None, 4), Ok(()));
        assert_eq!(check_if_match(Some(4), 4), Ok(()));
        let stale = check_if_match(Some(3), 4).unwrap_err();
        assert_eq!(
            stale,
            OpError::Stale {
                given: 3,
                current: 4
            }
        );
        assert_eq!(stale.status(), 412);
    }

    #[test]
    fn a_change_is_recorded_once_per_app_it_changed_by_its_actor_and_kind() {
        let changed = vec![
            (
                "shop".to_string(),
                state(Color::Blue, 0.0),
                state(Color::Green, 0.0),
            ),
            (
                "api".to_string(),
                state(Color::Green, 10.0),
                state(Color::Blue, 0.0),
            ),
        ];
        let req = request(Change::Flip(None, None), true);
        let entries = history_entries(&req, &changed, 9, "2026-12-06T10:00:00Z");
        assert_eq!(entries.len(), 2);
        for (entry, (app, before, after)) in entries.iter().zip(&changed) {
            assert_eq!(entry.app, *app);
            assert_eq!((&entry.before, &entry.after), (before, after));
            assert_eq!(entry.epoch, 9);
            assert_eq!(entry.time, "2026-12-06T10:00:00Z");
            assert_eq!(entry.kind, "flip");
            assert_eq!(entry.actor, "ops");
            assert_eq!(entry.reason.as_deref(), Some("ticket 7"));
            assert!(entry.forced);
        }
    }

    #[test]
    fn a_server_is_in_the_pool_asked_for_or_else_the_one_pool_that_has_it() {
        let addr: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let color = |asked, has| server_color("shop", addr, asked, has);
        assert_eq!(color(Some(Color::Green), [true, true]), Ok(Color::Green));
        assert_eq!(color(None, [true, false]), Ok(Color::Blue));
        assert_eq!(color(None, [false, true]), Ok(Color::Green));
        let missing = color(Some(Color::Blue), [false, true]).unwrap_err();
        assert_eq!(missing.status(), 404);
        assert!(missing.to_string().contains("no blue server"), "{missing}");
        let both = color(None, [true, true]).unwrap_err();
        assert_eq!(both.status(), 400);
        assert!(both.to_string().contains("say which colour"), "{both}");
        assert_eq!(color(None, [false, false]).unwrap_err().status(), 404);
    }
}
