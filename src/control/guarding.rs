//! The control plane's side of guarded changes ([`super::guard_watch`]): a flip
//! or shift is recorded with its guard window, the instance that judges
//! starts a guard for it, looks at it once a second beside the rollouts,
//! and reverts the change when the guard's judge says so.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use super::guard_watch::{self as watch, Cause, Guard, Seen, Tally};
use super::ops::{clip, now_rfc3339, set_slow, Change, Control, OpError, Request};
use super::state::{Commit, HistoryEntry};
use crate::config::Color;
use crate::route::{App, AppState, Snapshot};

impl Control {
    /// Reverts since start, by app.
    pub fn guard_reverts(&self) -> &BTreeMap<String, u64> {
        &self.watch.reverts
    }

    /// Of those, the reverts for slow responses, by app.
    pub fn guard_slow_reverts(&self) -> &BTreeMap<String, u64> {
        &self.watch.slow_reverts
    }

    /// The guard window `req` asks for on `app`: its own, else the app's
    /// `guard`; zero for none (and for changes other than flip and shift).
    fn guard_window(&self, req: &Request, app: &str) -> Duration {
        if !matches!(req.change, Change::Flip(..) | Change::Shift(..)) {
            return Duration::ZERO;
        }
        req.guard
            .or_else(|| self.config.app(app).map(|a| a.guard))
            .unwrap_or_default()
    }

    /// Mark each entry of a flip or shift that moved traffic with the
    /// guard window that watches it.
    pub(super) fn mark_guarded(&self, req: &Request, entries: &mut [HistoryEntry]) {
        for e in entries {
            let window = self.guard_window(req, &e.app);
            if !window.is_zero() && watch::gainer(&e.before, &e.after).is_some() {
                e.guard = Some(humantime::format_duration(window).to_string());
            }
        }
    }

    /// A change's answer on guards: each app of `entries` a guard watches,
    /// until when, and what it counts as slow; `None` when none is.
    pub(super) fn guard_answer(
        &self,
        entries: &[HistoryEntry],
    ) -> Option<BTreeMap<String, crate::api::Guard>> {
        let watched: BTreeMap<String, crate::api::Guard> = entries
            .iter()
            .filter_map(|e| {
                let (window, end) = watch::window_of(e)?;
                let until = humantime::format_rfc3339_seconds(end).to_string();
                let max_slow = (self.config.app(&e.app))
                    .and_then(|a| a.guard_max_slow)
                    .map(|d| humantime::format_duration(d).to_string());
                let guard = crate::api::Guard {
                    max_slow,
                    until,
                    window_seconds: window.as_secs(),
                };
                Some((e.app.clone(), guard))
            })
            .collect();
        (!watched.is_empty()).then_some(watched)
    }

    /// This instance judges: alone, or chosen by its fleet.
    fn judging(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.judging.load(Relaxed))
    }

    /// `app`'s judged counts now, here and on the other instances.
    fn tally(&self, app: &App) -> Tally {
        Tally {
            local: Color::ALL.map(|c| app.pool(c).stats.judged()),
            remote: self.remote_counts(&app.name),
            slow_micros: app.pool(Color::Blue).stats.slow_micros.load(Relaxed),
        }
    }

    /// Once a second: keep each app's slow threshold in force (a reload
    /// may have changed it or added the app) and its recent counts, start
    /// the guards of changes not yet watched, and look at every guard
    /// under way.
    pub fn tick_guards(&mut self) {
        if self.shared.upgrading.load(Relaxed) {
            return;
        }
        let now = Instant::now();
        let snap = self.shared.snapshot.load_full();
        for a in &self.config.apps {
            if let Some(app) = snap.app(&a.name) {
                set_slow(app, self.slow_micros(&a.name));
                let tally = self.tally(app);
                let recent = self.watch.recent.entry(a.name.clone()).or_default();
                recent.record(now, tally);
            }
        }
        if !self.judging() {
            // Another instance judges; should this one take over, it
            // watches afresh, as after a restart.
            self.watch.guards.clear();
            return;
        }
        self.start_guards(now);
        let names: Vec<String> = self.watch.guards.keys().cloned().collect();
        for name in names {
            self.look_guard(&name, now, &snap);
        }
    }

    /// Start a guard for each app whose last change asks for one and is
    /// not watched yet; drop those whose change is no longer the app's
    /// last (the next change, a rollout started, a reload, a revert).
    pub(super) fn start_guards(&mut self, now: Instant) {
        if !self.judging() {
            return;
        }
        let snap = self.shared.snapshot.load_full();
        let names: Vec<String> = self.config.apps.iter().map(|a| a.name.clone()).collect();
        for name in names {
            let last = self.state.history.iter().rev().find(|h| h.app == name);
            let Some(last) = last else { continue };
            if self
                .watch
                .guards
                .get(&name)
                .is_some_and(|g| g.epoch == last.epoch)
            {
                continue;
            }
            self.watch.guards.remove(&name);
            let Some(app) = snap.app(&name) else { continue };
            if let Some(guard) = self.guard_of(last, app, now) {
                tracing::info!(app = %name, epoch = guard.epoch, watching = %guard.new, window = %humantime::format_duration(guard.window), "guard watching the change");
                self.watch.guards.insert(name, guard);
            }
        }
    }

    /// The guard of change `e` of `app`, if it has one still under way.
    fn guard_of(&self, e: &HistoryEntry, app: &App, now: Instant) -> Option<Guard> {
        let (window, end) = watch::window_of(e)?;
        // Over already (a restart after the window): nothing to watch.
        let left = end.duration_since(SystemTime::now()).ok()?;
        let new = watch::gainer(&e.before, &e.after)?;
        let base = self.tally(app);
        let baseline = self
            .watch
            .recent
            .get(&e.app)
            .map_or_else(Seen::default, |r| r.baseline(&base, new.other()));
        let slow_micros = base.slow_micros;
        Some(Guard {
            epoch: e.epoch,
            kind: e.kind.clone(),
            new,
            old: new.other(),
            back: (e.before.live, e.before.standby_percent),
            until: now + left,
            window,
            base,
            baseline,
            slow_micros,
            level: watch::level(window, slow_micros > 0),
        })
    }

    /// One look at `name`'s guard: ended, reverted, or watching on.
    fn look_guard(&mut self, name: &str, now: Instant, snap: &Snapshot) {
        let Some(g) = self.watch.guards.get(name).cloned() else {
            return;
        };
        if now >= g.until {
            self.watch.guards.remove(name);
            tracing::info!(app = %name, epoch = g.epoch, "guard over: the change stays");
            return;
        }
        let Some(app) = snap.app(name) else { return };
        let (new, old, slow_judged) = self.guard_figures(&g, app);
        let Some(revert) = watch::verdict(new, old, g.level, slow_judged) else {
            return;
        };
        let why = watch::reason(&g, revert, new, old);
        match self.revert(name, &g, revert.cause, &why) {
            Ok(()) => {
                self.watch.guards.remove(name);
            }
            Err(e) => {
                tracing::error!(app = %name, error = %e, "guard could not revert; trying again in a second")
            }
        }
    }

    /// What guard `g` of `app` judges now: the new colour's answers since
    /// the change, the old colour's in the baseline and since, and
    /// whether their slow counts are judged — counted by the threshold the
    /// guard began with (a reload may have changed it).
    pub(super) fn guard_figures(&self, g: &Guard, app: &App) -> (Seen, Seen, bool) {
        let tally = self.tally(app);
        let new = tally.since(&g.base, g.new);
        let old = g.baseline.plus(tally.since(&g.base, g.old));
        let slow_judged = g.slow_micros > 0 && tally.slow_micros == g.slow_micros;
        (new, old, slow_judged)
    }

    /// Put `name` back to the live colour and split before the change
    /// `g` watches: one history entry, never held back by the health gate
    /// (it goes back toward the colour that was healthy) nor by a state
    /// file that cannot be written (as a rollout's rollback); in a fleet,
    /// made only once etcd has it.
    fn revert(&mut self, name: &str, g: &Guard, cause: Cause, why: &str) -> Result<(), OpError> {
        let before = self.state.apps[name].clone();
        let after = AppState {
            live: g.back.0,
            standby_percent: g.back.1,
            ..before.clone()
        };
        let mut states = self.state.apps.clone();
        states.insert(name.to_string(), after.clone());
        let epoch = self.state.epoch + 1;
        let next = self
            .shared
            .snapshot
            .load_full()
            .with_states(&states, epoch)
            .map_err(|e| OpError::Internal(e.join("; ")))?;
        let entry = HistoryEntry {
            time: now_rfc3339(),
            epoch,
            actor: "guard".into(),
            reason: Some(clip(why)),
            app: name.to_string(),
            kind: "guard".into(),
            forced: false,
            guard: None,
            before,
            after,
        };
        let change = Commit {
            epoch,
            apps: states,
            rollouts: None,
            history: vec![entry],
        };
        if let Err(e) = self.state.commit_anyway(change) {
            if self.fleet.is_some() {
                // Nothing changed: the fleet's state rules, and one
                // instance reverting alone would split the fleet. The
                // guard tries again in a second.
                return Err(OpError::Unavailable(e.to_string()));
            }
            tracing::error!(app = %name, error = %e, "reverting although the state file could not be written");
        }
        self.shared.store(next);
        *self.watch.reverts.entry(name.to_string()).or_default() += 1;
        if cause == Cause::Slowness {
            *self.watch.slow_reverts.entry(name.to_string()).or_default() += 1;
        }
        *self
            .stats
            .state_changes
            .entry((name.to_string(), "guard".to_string()))
            .or_default() += 1;
        tracing::warn!(app = %name, epoch, cause = cause.as_str(), reason = %why, "guard reverted the change");
        Ok(())
    }
}
