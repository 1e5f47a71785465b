//! Progressive rollouts: the plan an operator starts, the record kept in
//! the state file, and the state machine that moves it on. Each second
//! [`look`] is given what the proxy saw since the current step began and
//! answers whether the rollout stays or moves, and why; the control plane
//! (`ops`) makes each move one atomic change of routing and record.
//!
//! ```text
//! preflight → [shadow] → progressing (one step at a time) → promoting
//!   (the flip) → [baking] → succeeded
//! side states: paused (manual, inconclusive, held, baseline unhealthy);
//!   rolling_back → failed (the judge) or aborted (an operator);
//!   superseded (a forced manual change ended it)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::judge::{self, Budget, Counts, Verdict};
use crate::config::Color;
use crate::route::mirror::Skip;

/// What the operator asked for. Rates are fractions (0.01 = 1 %).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Green's share of split traffic at each step, rising; the last is
    /// 100, the flip.
    pub steps: Vec<f64>,
    /// How long each step is observed at least.
    pub every_ms: u64,
    pub max_error_rate: f64,
    /// A response whose head takes longer than this is slow; `None`: not
    /// judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slow_ms: Option<u64>,
    pub max_slow_rate: f64,
    /// After the flip, how long green is watched alone (0: not at all).
    #[serde(default)]
    pub bake_ms: u64,
    /// Promote a step that ran its time without enough requests.
    #[serde(default)]
    pub allow_low_traffic: bool,
    /// Before the first step, how long copies of live traffic are
    /// compared (0: no shadow phase).
    #[serde(default)]
    pub shadow_ms: u64,
    pub max_mismatch: f64,
}

// A rollout's phases and moves are shared vocabulary: the state file
// keeps them and the admin API shows them.
pub use crate::model::{RolloutPhase as Phase, RolloutTransition as Transition};

/// The most transitions one rollout keeps (a rollout makes a dozen).
const TRANSITIONS_KEPT: usize = 100;

/// A rollout as the state file keeps it, beside the app's routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub plan: Plan,
    /// The colour rolled out: the standby one when it started.
    pub target: Color,
    pub phase: Phase,
    /// Paused: the phase `resume` returns to; rolling back: the phase it
    /// ends in (`failed` or `aborted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Phase>,
    /// The current step, an index into `plan.steps`.
    pub step: usize,
    /// RFC 3339, UTC.
    pub started: String,
    /// Why it is where it is (the last transition's reason).
    pub reason: String,
    pub transitions: Vec<Transition>,
    /// The current step lacked live requests, so the rollout turned every
    /// copyable live request into a shadow copy to the target (the app's
    /// mirror percent at 100); its next move hands the mirror back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadowing: bool,
}

impl Rollout {
    pub fn new(plan: Plan, target: Color, time: String) -> Rollout {
        Rollout {
            plan,
            target,
            phase: Phase::Preflight,
            then: None,
            step: 0,
            started: time,
            reason: "started".into(),
            transitions: Vec::new(),
            shadowing: false,
        }
    }

    pub fn baseline(&self) -> Color {
        self.target.other()
    }

    /// Green's share of split traffic in the current phase; `None` in
    /// phases that leave it as it is (preflight, shadow, paused).
    pub fn percent(&self) -> Option<f64> {
        match self.phase {
            Phase::Progressing => Some(self.plan.share(self.step)),
            Phase::Promoting | Phase::Baking | Phase::Succeeded => Some(100.0),
            Phase::RollingBack | Phase::Failed | Phase::Aborted => Some(0.0),
            Phase::Preflight | Phase::Shadow | Phase::Paused | Phase::Superseded => None,
        }
    }

    pub fn every(&self) -> Duration {
        Duration::from_millis(self.plan.every_ms)
    }

    /// Make `to` (at `step`) the rollout's phase, recorded with `reason`.
    pub fn go(
        &mut self,
        to: Phase,
        step: usize,
        then: Option<Phase>,
        reason: String,
        time: String,
    ) {
        let from = self.phase;
        self.phase = to;
        self.step = step;
        self.then = then;
        self.reason = reason.clone();
        // A new phase or step asks for copies afresh, if it needs them.
        self.shadowing = false;
        let percent = self
            .percent()
            .or_else(|| self.transitions.last().map(|t| t.percent))
            .unwrap_or(0.0);
        self.transitions.push(Transition {
            time,
            from,
            to,
            percent,
            reason,
        });
        if self.transitions.len() > TRANSITIONS_KEPT {
            self.transitions.remove(0);
        }
    }
}

/// What the proxy saw since the current phase (or step) began.
#[derive(Debug, Clone, Copy, Default)]
pub struct Look {
    pub age: Duration,
    /// Requests of each colour placed by the split (or, once green is
    /// live, by the live colour), not by rules.
    pub target: Counts,
    pub baseline: Counts,
    /// The same requests, `bad` counting the slow ones.
    pub target_slow: Counts,
    pub baseline_slow: Counts,
    pub target_healthy: bool,
    pub baseline_healthy: bool,
    /// Requests still in flight on the colour that just lost its traffic.
    pub draining: u64,
    /// How long the judge has held (both colours over budget).
    pub held_for: Option<Duration>,
    /// Shadow copies compared and how many differed.
    pub mirrored: Counts,
    /// Shadow copies the target answered, `bad` as for live requests:
    /// evidence about it besides its own live requests.
    pub copies: Counts,
    /// The same copies, `bad` counting the slow ones.
    pub copies_slow: Counts,
    /// Live requests on the baseline that were not copied, by why
    /// ([`Skip`] order), and those dropped at `max_in_flight`.
    pub not_copied: [u64; Skip::ALL.len()],
    pub dropped: u64,
}

/// What a look decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing moves; what the judge saw, for status.
    Stay(Note),
    /// Move to `phase` at `step` (`then`: see [`Rollout::then`]).
    Go {
        phase: Phase,
        step: usize,
        then: Option<Phase>,
        reason: String,
    },
}

/// A look that moved nothing, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
    /// The judge holds: both colours are over budget.
    pub holding: bool,
}

impl Note {
    fn plain(text: String) -> Next {
        Next::Stay(Note {
            text,
            holding: false,
        })
    }
}

/// A judge that holds this many × `every` pauses the rollout.
pub const HOLD_LIMIT: u32 = 5;
/// Green given no healthy server this many × `every` fails the preflight.
const PREFLIGHT_LIMIT: u32 = 1;

fn go(phase: Phase, step: usize, then: Option<Phase>, reason: String) -> Next {
    Next::Go {
        phase,
        step,
        then,
        reason,
    }
}

/// The phase that runs step `step`: the 100 % step is the flip.
fn enter(plan: &Plan, step: usize) -> Phase {
    if plan.share(step) >= 100.0 {
        Phase::Promoting
    } else {
        Phase::Progressing
    }
}

fn rate(c: Counts) -> f64 {
    if c.total == 0 {
        0.0
    } else {
        c.bad as f64 / c.total as f64
    }
}

/// Where the rollout `r` goes after looking at `l`: one step per phase.
pub fn look(r: &Rollout, l: &Look) -> Next {
    match r.phase {
        Phase::Preflight => preflight(r, l),
        Phase::Shadow => shadow(r, l),
        Phase::Progressing => progressing(r, l),
        Phase::Promoting => promoting(r, l),
        Phase::Baking => baking(r, l),
        Phase::RollingBack => rolling_back(r, l),
        Phase::Paused => Note::plain(format!("paused: {}", r.reason)),
        Phase::Succeeded | Phase::Failed | Phase::Aborted | Phase::Superseded => {
            Note::plain(r.reason.clone())
        }
    }
}

/// Preflight: wait (a bounded time) for the target to have a healthy server.
fn preflight(r: &Rollout, l: &Look) -> Next {
    let plan = &r.plan;
    let target = r.target;
    if !l.target_healthy {
        if l.age >= r.every() * PREFLIGHT_LIMIT {
            return go(
                Phase::Failed,
                0,
                None,
                format!("preflight: {target} has no healthy server"),
            );
        }
        return Note::plain(format!("preflight: waiting for {target} to be healthy"));
    }
    if plan.shadow_ms > 0 {
        return go(
            Phase::Shadow,
            0,
            None,
            format!("preflight: {target} is healthy; comparing shadow copies"),
        );
    }
    go(
        enter(plan, 0),
        0,
        None,
        format!("preflight: {target} is healthy"),
    )
}

/// Promoting: the flip is done; let requests on the baseline drain.
fn promoting(r: &Rollout, l: &Look) -> Next {
    let (target, baseline) = (r.target, r.baseline());
    if l.draining > 0 && l.age < r.every() {
        return Note::plain(format!(
            "promoting: {} requests still on {baseline}",
            l.draining
        ));
    }
    if r.plan.bake_ms > 0 {
        go(
            Phase::Baking,
            r.step,
            None,
            format!("{target} is live; baking"),
        )
    } else {
        go(Phase::Succeeded, r.step, None, format!("{target} is live"))
    }
}

/// Baking: the target takes all traffic; judge it on absolute budgets.
fn baking(r: &Rollout, l: &Look) -> Next {
    let plan = &r.plan;
    let (target, baseline) = (r.target, r.baseline());
    let level = plan.level();
    let why = judge::absolute(l.target, plan.max_error_rate, level).or_else(|| {
        plan.max_slow_ms
            .and_then(|_| judge::absolute(l.target_slow, plan.max_slow_rate, level))
            .map(|w| format!("slow responses: {w}"))
    });
    if let (Some(why), false) = (&why, l.baseline_healthy) {
        // Rolling back would send everyone to a pool that cannot
        // take them.
        return go(
            Phase::Paused,
            r.step,
            Some(Phase::Baking),
            format!("baseline unhealthy: {baseline} has no healthy server to roll back to ({why})"),
        );
    }
    if let Some(why) = why {
        return go(
            Phase::RollingBack,
            r.step,
            Some(Phase::Failed),
            format!("baking: {why}"),
        );
    }
    if l.age >= Duration::from_millis(plan.bake_ms) {
        return go(
            Phase::Succeeded,
            r.step,
            None,
            format!(
                "baked: {} of {} {target} requests bad",
                l.target.bad, l.target.total
            ),
        );
    }
    Note::plain(format!(
        "baking: {:.2} % bad of {}",
        100.0 * rate(l.target),
        l.target.total
    ))
}

/// Rolling back: let requests on the target drain, then end as planned.
fn rolling_back(r: &Rollout, l: &Look) -> Next {
    if l.draining > 0 && l.age < r.every() {
        return Note::plain(format!(
            "rolling back: {} requests still on {}",
            l.draining, r.target
        ));
    }
    let end = r.then.unwrap_or(Phase::Failed);
    go(end, r.step, None, r.reason.clone())
}

fn shadow(r: &Rollout, l: &Look) -> Next {
    let plan = &r.plan;
    let m = l.mirrored;
    let budget = plan.max_mismatch;
    let need = judge::needed(budget);
    let length = Duration::from_millis(plan.shadow_ms);
    let figures = format!(
        "{} of {} shadow copies differed ({:.2} %, budget {:.2} %)",
        m.bad,
        m.total,
        100.0 * rate(m),
        100.0 * budget
    );
    let fast = (10.0 * budget).max(0.05);
    if m.bad >= 5 && judge::wilson_lower(m.bad, m.total, 3.29) > fast {
        return go(
            Phase::Failed,
            0,
            None,
            format!("shadow: fast fail: {figures}"),
        );
    }
    if l.age < length {
        return Note::plain(format!("shadow: {figures}"));
    }
    if m.total >= need || plan.allow_low_traffic {
        if rate(m) > budget {
            return go(Phase::Failed, 0, None, format!("shadow: {figures}"));
        }
        return go(enter(plan, 0), 0, None, format!("shadow passed: {figures}"));
    }
    if l.age >= length * 10 {
        return go(
            Phase::Paused,
            0,
            Some(Phase::Shadow),
            format!("inconclusive: shadow samples {}/{need}", m.total),
        );
    }
    Note::plain(format!("shadow extended: samples {}/{need}", m.total))
}

/// Progressing: judge the current step against the baseline and act on it.
fn progressing(r: &Rollout, l: &Look) -> Next {
    if !l.baseline_healthy {
        return go(
            Phase::Paused,
            r.step,
            Some(Phase::Progressing),
            format!("baseline unhealthy: {} has no healthy server", r.baseline()),
        );
    }
    let (verdict, what) = step_verdict(r, l);
    act_on(r, l, verdict, what)
}

/// Does the step need shadow copies for its evidence? It does when the
/// target's live requests, at the pace seen so far, fall short of what the
/// budgets need by the end of the step (`every`), as at a small share of
/// a small app's traffic. Asked once a step: copies, once on, stay on
/// until the step ends, so their evidence accrues over all of it.
pub fn wants_copies(r: &Rollout, l: &Look) -> bool {
    if r.phase != Phase::Progressing || r.shadowing || l.age < Duration::from_secs(1) {
        return false;
    }
    let (age, every) = (l.age.as_secs_f64(), r.every().as_secs_f64());
    let by_the_end = l.target.total as f64 * every.max(age) / age;
    by_the_end < r.plan.samples_needed() as f64
}

/// The target's evidence in a step: its own live requests and the
/// standby's answers to copies of the baseline's (each a request the
/// target would have had to answer had the split sent it there).
fn evidence(live: Counts, copies: Counts) -> Counts {
    Counts {
        total: live.total + copies.total,
        bad: live.bad + copies.bad,
    }
}

/// The stricter of the error and slow-response verdicts for this step, with
/// the prefix that names which one it is.
fn step_verdict(r: &Rollout, l: &Look) -> (Verdict, &'static str) {
    let plan = &r.plan;
    let every = r.every();
    let budget = |max_error_rate| Budget {
        max_error_rate,
        allow_low_traffic: plan.allow_low_traffic,
        level: plan.level(),
    };
    let errors = judge::judge(
        evidence(l.target, l.copies),
        l.baseline,
        budget(plan.max_error_rate),
        l.age,
        every,
    );
    let slow = match plan.max_slow_ms {
        Some(_) => judge::judge(
            evidence(l.target_slow, l.copies_slow),
            l.baseline_slow,
            budget(plan.max_slow_rate),
            l.age,
            every,
        ),
        None => Verdict::Promote,
    };
    // The stricter of the two verdicts wins.
    let rank = |v: &Verdict| match v {
        Verdict::Rollback(_) => 0,
        Verdict::Hold(_) => 1,
        Verdict::Inconclusive { .. } => 2,
        Verdict::Extend { .. } | Verdict::Unproven(_) => 3,
        Verdict::Continue => 4,
        Verdict::Promote => 5,
    };
    if rank(&slow) < rank(&errors) {
        (slow, "slow responses: ")
    } else {
        (errors, "")
    }
}

/// Where a progressing rollout goes on `verdict`; `what` prefixes the reason.
fn act_on(r: &Rollout, l: &Look, verdict: Verdict, what: &str) -> Next {
    let plan = &r.plan;
    let every = r.every();
    let (target, baseline) = (r.target, r.baseline());
    let step = r.step;
    let percent = plan.share(step);
    let mut figures = format!(
        "{target} {}/{} bad, {baseline} {}/{} bad",
        l.target.bad, l.target.total, l.baseline.bad, l.baseline.total
    );
    if l.copies.total > 0 {
        figures += &format!(
            ", shadow copies to {target} {}/{} bad",
            l.copies.bad, l.copies.total
        );
    }
    match verdict {
        Verdict::Rollback(why) => go(
            Phase::RollingBack,
            step,
            Some(Phase::Failed),
            format!("{what}{why} at {percent} %"),
        ),
        Verdict::Hold(why) => {
            let held = l.held_for.unwrap_or_default();
            if held >= every * HOLD_LIMIT {
                return go(
                    Phase::Paused,
                    step,
                    Some(Phase::Progressing),
                    format!(
                        "held for {}: {what}{why}",
                        humantime::format_duration(Duration::from_secs(held.as_secs()))
                    ),
                );
            }
            Next::Stay(Note {
                text: format!("holding: {what}{why}"),
                holding: true,
            })
        }
        Verdict::Inconclusive { samples, needed } => go(
            Phase::Paused,
            step,
            Some(Phase::Progressing),
            if samples >= needed {
                format!("inconclusive: {what}{target} over budget but not significantly worse than {baseline} at {percent} %: {figures}")
            } else {
                format!(
                    "inconclusive: {what}samples {samples}/{needed} at {percent} % after 10 × every ({} live, {} shadow copies); {}",
                    l.target.total,
                    l.copies.total,
                    copies_missing(l)
                )
            },
        ),
        Verdict::Unproven(why) => Note::plain(format!("step extended: {what}{why}")),
        Verdict::Extend { samples, needed } => Note::plain(format!(
            "step extended: {what}samples {samples}/{needed}; {figures}"
        )),
        Verdict::Continue => Note::plain(format!("observing {percent} %: {figures}")),
        Verdict::Promote => {
            let next = step + 1;
            let on = if l.copies.total > 0 {
                " on live and shadow evidence"
            } else {
                ""
            };
            go(
                enter(plan, next),
                next,
                None,
                format!("promoted from {percent} %{on}: {figures}"),
            )
        }
    }
}

/// Why the shadow copies did not make up for the live requests a step
/// lacked, in words for the pause's reason.
fn copies_missing(l: &Look) -> String {
    let words = |why: Skip| match why {
        Skip::Method => "their method is not among the mirror's `methods`",
        Skip::Upgrade => "upgrades and CONNECT are never copied",
        Skip::BodyLengthUnknown => "bodies of unknown length",
        Skip::BodyTooLarge => "bodies over the mirror's `max_body`",
        Skip::NoServer => "the target had no healthy server",
        Skip::LiveIncomplete => "the live request got no whole answer",
    };
    let mut parts: Vec<String> = Skip::ALL
        .iter()
        .zip(l.not_copied)
        .filter(|(_, n)| *n > 0)
        .map(|(why, n)| format!("{n} not copied ({})", words(*why)))
        .collect();
    if l.dropped > 0 {
        parts.push(format!(
            "{} dropped (over the mirror's `max_in_flight`)",
            l.dropped
        ));
    }
    if !parts.is_empty() {
        return format!("shadow copies not possible: {}", parts.join(", "));
    }
    if l.baseline.total == 0 {
        return "no live traffic to copy".into();
    }
    if l.copies.total == 0 {
        return format!(
            "shadow copies not possible: none made of {} live requests",
            l.baseline.total
        );
    }
    "too little traffic, even with shadow copies".into()
}

/// What `POST /v1/apps/{app}/rollout` takes. Durations as `60s`, `5m`;
/// rates as `1%` or a number of percent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub steps: Option<Vec<f64>>,
    #[serde(default)]
    pub every: Option<String>,
    #[serde(default)]
    pub max_error_rate: Option<Rate>,
    #[serde(default)]
    pub max_slow: Option<String>,
    #[serde(default)]
    pub max_slow_rate: Option<Rate>,
    #[serde(default)]
    pub bake: Option<String>,
    #[serde(default)]
    pub allow_low_traffic: bool,
    #[serde(default)]
    pub shadow: Option<String>,
    #[serde(default)]
    pub max_mismatch: Option<Rate>,
    /// Start even though the target has no healthy server: its preflight
    /// then waits for one (not part of the plan).
    #[serde(default)]
    pub force: bool,
}

/// A rate given as `"1%"`, `"0.5 %"` or a number of percent.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    Percent(f64),
    Text(String),
}

pub const DEFAULT_STEPS: [f64; 5] = [1.0, 5.0, 25.0, 50.0, 100.0];

/// `every`, in milliseconds: from 1 s (a step needs requests to judge) to
/// a day.
const EVERY_MS: (u64, u64) = (1000, 86_400_000);
// `max_slow`: from 1 ms to an hour, as an app's `guard_max_slow`.
use crate::model::MAX_SLOW_MS;
/// `bake` and `shadow`: from none to a week.
const WATCH_MS: (u64, u64) = (0, 7 * 86_400_000);

impl Request {
    /// The plan this asks for, or every problem with it.
    pub fn plan(&self) -> Result<Plan, String> {
        let mut problems = Vec::new();
        let steps = self.steps.clone().unwrap_or(DEFAULT_STEPS.to_vec());
        if steps.is_empty() {
            problems.push("steps: give at least one (the last is 100)".to_string());
        }
        for (i, s) in steps.iter().enumerate() {
            if !s.is_finite() || *s <= 0.0 || *s > 100.0 {
                problems.push(format!(
                    "steps: {s} is not a percent above 0 and at most 100"
                ));
            } else if i > 0 && *s <= steps[i - 1] {
                problems.push(format!("steps: {s} after {} does not rise", steps[i - 1]));
            }
        }
        if steps.last().is_some_and(|s| *s != 100.0) {
            problems.push("steps: the last step must be 100 (the flip)".to_string());
        }
        // The bounds are those [`Plan::check`] holds a state file to, so a
        // rollout that starts can be read back after a restart.
        let mut duration = |key: &str, v: &Option<String>, default: Duration, range: (u64, u64)| {
            let Some(text) = v else { return default };
            crate::model::duration_within(text, range).unwrap_or_else(|e| {
                problems.push(format!("{key}: {e}"));
                default
            })
        };
        let every = duration("every", &self.every, Duration::from_secs(60), EVERY_MS);
        let bake = duration("bake", &self.bake, Duration::ZERO, WATCH_MS);
        let shadow = duration("shadow", &self.shadow, Duration::ZERO, WATCH_MS);
        let max_slow = self
            .max_slow
            .as_ref()
            .map(|_| duration("max_slow", &self.max_slow, Duration::ZERO, MAX_SLOW_MS));
        let mut rate = |key: &str, v: &Option<Rate>, default: f64| -> f64 {
            let Some(v) = v else { return default };
            let percent = match v {
                Rate::Percent(p) => Some(*p),
                Rate::Text(t) => t.trim().trim_end_matches('%').trim().parse::<f64>().ok(),
            };
            match percent {
                Some(p) if p.is_finite() && p > 0.0 && p < 100.0 => p / 100.0,
                _ => {
                    problems.push(format!(
                        "{key}: expected a percent above 0 and below 100, like \"1%\""
                    ));
                    default
                }
            }
        };
        let max_error_rate = rate(
            "max_error_rate",
            &self.max_error_rate,
            judge::DEFAULT_MAX_ERROR_RATE,
        );
        let max_slow_rate = rate(
            "max_slow_rate",
            &self.max_slow_rate,
            judge::DEFAULT_MAX_SLOW_RATE,
        );
        let max_mismatch = rate("max_mismatch", &self.max_mismatch, 0.01);
        if self.max_slow_rate.is_some() && self.max_slow.is_none() {
            problems.push("max_slow_rate: give max_slow too (what counts as slow)".into());
        }
        if self.max_mismatch.is_some() && self.shadow.is_none() {
            problems.push("max_mismatch: give shadow too (how long to compare)".into());
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Plan {
            steps,
            every_ms: every.as_millis() as u64,
            max_error_rate,
            max_slow_ms: max_slow.map(|d| d.as_millis() as u64),
            max_slow_rate,
            bake_ms: bake.as_millis() as u64,
            allow_low_traffic: self.allow_low_traffic,
            shadow_ms: shadow.as_millis() as u64,
            max_mismatch,
        })
    }
}

impl Plan {
    /// The target requests a step needs before it may promote: enough for
    /// each budget judged.
    pub fn samples_needed(&self) -> u64 {
        let slow = self
            .max_slow_ms
            .map_or(0, |_| judge::needed(self.max_slow_rate));
        judge::needed(self.max_error_rate).max(slow)
    }

    /// Green's share at step `step` (100 past the last).
    pub fn share(&self, step: usize) -> f64 {
        self.steps.get(step).copied().unwrap_or(100.0)
    }

    /// The fail test's level at one look: the rollout's false-rollback
    /// budget spread over the most looks the plan makes — each split step
    /// up to 10 × `every` (then it pauses), the bake, once a second — and
    /// over the judges looking (errors, and slowness when judged).
    pub fn level(&self) -> f64 {
        let split_steps = self.steps.iter().filter(|s| **s < 100.0).count() as f64;
        let looks =
            split_steps * 10.0 * (self.every_ms as f64 / 1000.0) + self.bake_ms as f64 / 1000.0;
        let judges = if self.max_slow_ms.is_some() { 2.0 } else { 1.0 };
        judge::ROLLOUT_ALPHA / (judges * looks.max(1.0))
    }

    /// A plan read back from a state file: what [`Request::plan`] allows.
    pub fn check(&self) -> Result<(), String> {
        let rising = self.steps.windows(2).all(|w| w[0] < w[1]);
        let in_range = self.steps.iter().all(|s| *s > 0.0 && *s <= 100.0);
        let rates = [self.max_error_rate, self.max_slow_rate, self.max_mismatch];
        if self.steps.last() != Some(&100.0) || !rising || !in_range {
            return Err(format!(
                "rollout steps {:?} are not rising to 100",
                self.steps
            ));
        }
        let within = |ms: u64, (min, max): (u64, u64)| (min..=max).contains(&ms);
        if !within(self.every_ms, EVERY_MS)
            || self.max_slow_ms.is_some_and(|m| !within(m, MAX_SLOW_MS))
            || !within(self.bake_ms, WATCH_MS)
            || !within(self.shadow_ms, WATCH_MS)
            || !rates.iter().all(|r| *r > 0.0 && *r < 1.0)
        {
            return Err("rollout: a duration or a rate out of range".into());
        }
        Ok(())
    }
}

impl Rollout {
    /// A rollout read back from a state file: a phase its step and `then`
    /// allow.
    pub fn check(&self) -> Result<(), String> {
        self.plan.check()?;
        let last = self.plan.steps.len() - 1;
        let ok = match self.phase {
            Phase::Progressing => self.step < last,
            Phase::Paused => {
                matches!(
                    self.then,
                    Some(
                        Phase::Preflight
                            | Phase::Shadow
                            | Phase::Progressing
                            | Phase::Promoting
                            | Phase::Baking
                    )
                ) && (self.then != Some(Phase::Progressing) || self.step < last)
            }
            Phase::RollingBack => matches!(self.then, Some(Phase::Failed | Phase::Aborted)),
            _ => self.step <= last,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} at step {} (then {:?}) is not a state a rollout can be in",
                self.phase,
                self.step + 1,
                self.then
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Request {
            steps: Some(vec![1.0, 5.0, 100.0]),
            every: Some("10s".into()),
            ..Request::default()
        }
        .plan()
        .unwrap()
    }

    fn healthy(age: u64) -> Look {
        Look {
            age: Duration::from_secs(age),
            target_healthy: true,
            baseline_healthy: true,
            ..Look::default()
        }
    }

    fn at(phase: Phase, step: usize) -> Rollout {
        let mut r = Rollout::new(plan(), Color::Green, "t".into());
        r.phase = phase;
        r.step = step;
        r
    }

    fn phase(n: &Next) -> Option<Phase> {
        match n {
            Next::Go { phase, .. } => Some(*phase),
            Next::Stay(_) => None,
        }
    }

    #[test]
    fn a_request_becomes_a_plan_or_says_what_is_wrong() {
        let p = Request {
            every: Some("60s".into()),
            max_error_rate: Some(Rate::Text("0.5%".into())),
            max_slow: Some("500ms".into()),
            max_slow_rate: Some(Rate::Percent(5.0)),
            ..Request::default()
        }
        .plan()
        .unwrap();
        assert_eq!(p.steps, DEFAULT_STEPS);
        assert_eq!((p.every_ms, p.max_slow_ms), (60_000, Some(500)));
        assert_eq!((p.max_error_rate, p.max_slow_rate), (0.005, 0.05));
        p.check().unwrap();
        let bad = Request {
            steps: Some(vec![5.0, 1.0, 50.0]),
            every: Some("soon".into()),
            max_error_rate: Some(Rate::Percent(150.0)),
            ..Request::default()
        }
        .plan()
        .unwrap_err();
        let long = Request {
            every: Some("2days".into()),
            bake: Some("8 days".into()),
            max_slow: Some("2h".into()),
            ..Request::default()
        }
        .plan()
        .unwrap_err();
        for part in [
            "every: \"2days\" is longer than 1day",
            "bake: \"8 days\" is longer than 7days",
            "max_slow: \"2h\" is longer than 1h",
        ] {
            assert!(long.contains(part), "{part:?} in {long}");
        }
        for part in [
            "steps: 1 after 5 does not rise",
            "the last step must be 100",
            "every: \"soon\"",
            "max_error_rate",
        ] {
            assert!(bad.contains(part), "{part:?} in {bad}");
        }
    }

    #[test]
    fn preflight_waits_for_a_healthy_green_then_fails() {
        let r = at(Phase::Preflight, 0);
        assert_eq!(phase(&look(&r, &healthy(0))), Some(Phase::Progressing));
        let sick = Look {
            target_healthy: false,
            ..healthy(1)
        };
        assert_eq!(phase(&look(&r, &sick)), None);
        let sick = Look {
            age: Duration::from_secs(10),
            ..sick
        };
        assert_eq!(phase(&look(&r, &sick)), Some(Phase::Failed));
    }

    #[test]
    fn a_step_promotes_with_evidence_and_the_last_is_the_flip() {
        let r = at(Phase::Progressing, 1);
        let mut l = healthy(10);
        l.target = Counts { total: 400, bad: 1 };
        l.baseline = Counts {
            total: 8000,
            bad: 10,
        };
        match look(&r, &l) {
            Next::Go { phase, step, .. } => assert_eq!((phase, step), (Phase::Promoting, 2)),
            n => panic!("{n:?}"),
        }
        l.target.total = 57;
        match look(&r, &l) {
            Next::Stay(n) => assert!(n.text.contains("samples 57/300"), "{}", n.text),
            n => panic!("{n:?}"),
        }
        l.age = Duration::from_secs(100);
        assert_eq!(phase(&look(&r, &l)), Some(Phase::Paused));
    }

    #[test]
    fn a_failing_green_rolls_back_and_then_fails() {
        let r = at(Phase::Progressing, 0);
        let mut l = healthy(2);
        l.target = Counts { total: 20, bad: 10 };
        l.baseline = Counts {
            total: 2000,
            bad: 0,
        };
        match look(&r, &l) {
            Next::Go {
                phase,
                then,
                reason,
                ..
            } => {
                assert_eq!((phase, then), (Phase::RollingBack, Some(Phase::Failed)));
                assert!(reason.contains("fast fail"), "{reason}");
            }
            n => panic!("{n:?}"),
        }
        let mut r = at(Phase::RollingBack, 0);
        r.then = Some(Phase::Failed);
        let draining = Look {
            draining: 3,
            ..healthy(0)
        };
        assert_eq!(phase(&look(&r, &draining)), None);
        assert_eq!(phase(&look(&r, &healthy(0))), Some(Phase::Failed));
    }

    #[test]
    fn slow_responses_are_judged_like_errors() {
        let mut p = plan();
        p.max_slow_ms = Some(500);
        let mut r = at(Phase::Progressing, 0);
        r.plan = p;
        let mut l = healthy(2);
        l.target = Counts { total: 40, bad: 0 };
        l.target_slow = Counts { total: 40, bad: 30 };
        l.baseline = Counts {
            total: 4000,
            bad: 0,
        };
        l.baseline_slow = Counts {
            total: 4000,
            bad: 4,
        };
        match look(&r, &l) {
            Next::Go { phase, reason, .. } => {
                assert_eq!(phase, Phase::RollingBack);
                assert!(reason.starts_with("slow responses"), "{reason}");
            }
            n => panic!("{n:?}"),
        }
    }

    #[test]
    fn both_failing_holds_then_pauses_and_an_unhealthy_baseline_pauses() {
        let r = at(Phase::Progressing, 0);
        let mut l = healthy(20);
        l.target = Counts {
            total: 100,
            bad: 30,
        };
        l.baseline = Counts {
            total: 10_000,
            bad: 3_000,
        };
        match look(&r, &l) {
            Next::Stay(n) => assert!(n.holding, "{}", n.text),
            n => panic!("{n:?}"),
        }
        l.held_for = Some(Duration::from_secs(50));
        assert_eq!(phase(&look(&r, &l)), Some(Phase::Paused));
        let l = Look {
            baseline_healthy: false,
            ..healthy(1)
        };
        assert_eq!(phase(&look(&r, &l)), Some(Phase::Paused));
    }

    #[test]
    fn the_bake_succeeds_or_rolls_back() {
        let mut p = plan();
        p.bake_ms = 30_000;
        let mut r = at(Phase::Baking, 2);
        r.plan = p;
        let mut l = healthy(31);
        l.target = Counts {
            total: 5000,
            bad: 10,
        };
        assert_eq!(phase(&look(&r, &l)), Some(Phase::Succeeded));
        l.target.bad = 400;
        assert_eq!(phase(&look(&r, &l)), Some(Phase::RollingBack));
        l.baseline_healthy = false;
        assert_eq!(
            phase(&look(&r, &l)),
            Some(Phase::Paused),
            "nowhere to roll back to"
        );
    }

    #[test]
    fn a_state_file_rollout_must_be_in_a_state_it_can_be_in() {
        let mut r = at(Phase::Progressing, 1);
        r.check().unwrap();
        r.step = 2; // the flip: not a split step
        assert!(r.check().is_err());
        r.phase = Phase::RollingBack;
        assert!(r.check().is_err(), "rolling back must say how it ends");
        r.then = Some(Phase::Aborted);
        r.check().unwrap();
        r.phase = Phase::Paused;
        r.then = Some(Phase::Succeeded);
        assert!(r.check().is_err());
    }

    #[test]
    fn a_shadow_phase_passes_fails_or_extends_on_its_mismatches() {
        let mut p = plan();
        p.shadow_ms = 10_000;
        let mut r = at(Phase::Shadow, 0);
        r.plan = p;
        let mut l = healthy(10);
        l.mirrored = Counts { total: 500, bad: 1 };
        assert_eq!(phase(&look(&r, &l)), Some(Phase::Progressing));
        l.mirrored.bad = 20;
        assert_eq!(phase(&look(&r, &l)), Some(Phase::Failed));
        l.mirrored = Counts { total: 30, bad: 0 };
        assert_eq!(phase(&look(&r, &l)), None);
    }

    #[test]
    fn a_step_short_of_live_requests_asks_for_copies_once_and_promotes_on_them() {
        let mut r = at(Phase::Progressing, 0);
        let mut l = healthy(2);
        l.target = Counts { total: 4, bad: 0 };
        l.baseline = Counts { total: 396, bad: 0 };
        assert!(wants_copies(&r, &l), "20 by the end of 10 s, of 300");
        l.target.total = 70;
        assert!(!wants_copies(&r, &l), "350 by the end of the step");
        l.target.total = 4;
        r.shadowing = true;
        assert!(!wants_copies(&r, &l), "asked already");
        l.age = Duration::from_secs(10);
        l.copies = Counts { total: 390, bad: 1 };
        match look(&r, &l) {
            Next::Go { phase, reason, .. } => {
                assert_eq!(phase, Phase::Progressing);
                assert!(
                    reason.contains("on live and shadow evidence")
                        && reason.contains("shadow copies to green 1/390 bad"),
                    "{reason}"
                );
            }
            n => panic!("{n:?}"),
        }
        r.go(Phase::Progressing, 1, None, "next".into(), "t".into());
        assert!(!r.shadowing, "each step asks afresh");
    }

    #[test]
    fn failing_copies_roll_the_step_back() {
        let r = at(Phase::Progressing, 0);
        let mut l = healthy(3);
        l.target = Counts { total: 2, bad: 0 };
        l.baseline = Counts { total: 200, bad: 0 };
        l.copies = Counts {
            total: 150,
            bad: 150,
        };
        assert_eq!(phase(&look(&r, &l)), Some(Phase::RollingBack));
    }

    #[test]
    fn a_step_that_cannot_be_shadowed_pauses_and_says_why() {
        let r = at(Phase::Progressing, 0);
        let mut l = healthy(100);
        l.target = Counts { total: 9, bad: 0 };
        l.baseline = Counts { total: 900, bad: 0 };
        l.not_copied[Skip::Method as usize] = 900;
        let Next::Go {
            phase,
            then,
            reason,
            ..
        } = look(&r, &l)
        else {
            panic!("stayed")
        };
        assert_eq!((phase, then), (Phase::Paused, Some(Phase::Progressing)));
        for part in [
            "inconclusive: samples 9/300 at 1 % after 10 × every (9 live, 0 shadow copies)",
            "shadow copies not possible: 900 not copied (their method is not among the mirror's `methods`)",
        ] {
            assert!(reason.contains(part), "{part:?} in {reason}");
        }
    }

    #[test]
    fn transitions_are_recorded_with_the_share_they_left() {
        let mut r = at(Phase::Preflight, 0);
        r.go(Phase::Progressing, 0, None, "healthy".into(), "t1".into());
        r.go(
            Phase::Paused,
            0,
            Some(Phase::Progressing),
            "manual".into(),
            "t2".into(),
        );
        let t: Vec<(Phase, f64)> = r.transitions.iter().map(|t| (t.to, t.percent)).collect();
        assert_eq!(t, [(Phase::Progressing, 1.0), (Phase::Paused, 1.0)]);
    }
}
