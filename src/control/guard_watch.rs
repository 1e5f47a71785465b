//! Guarded changes: what a guard is and how it judges. After a flip or a
//! shift made outside a rollout, the judge watches the app for the guard
//! window (`[apps.X] guard`, default 2 minutes; `--guard`/`--no-guard`
//! per call) and undoes the change by itself when the colour that now
//! takes the traffic is clearly worse than the one that had it. The
//! control plane's side — starting guards, looking once a second,
//! reverting — is `guarding`.
//!
//! - **Who is compared**: the colour whose share of default traffic grew
//!   (*new*) with the colour whose share fell (*old*). The old colour's
//!   evidence is its requests in the [`BASELINE`] before the change (the
//!   only evidence once a flip took all its traffic away), plus any it
//!   still gets; the new colour's is its requests since the change.
//! - **Two judges, the rollouts'** ([`judge::judge`]): errors against the
//!   rollouts' default 1 % budget, and slow responses against their
//!   default 5 % ([`judge::DEFAULT_MAX_SLOW_RATE`]). Each is a fast fail
//!   on a near-total failure, else the exact conditional binomial test,
//!   its level the rollouts' false-rollback budget
//!   ([`judge::ROLLOUT_ALPHA`]) spread over the guard's looks, one a
//!   second over its window, and over the two judges, as a rollout that
//!   judges slowness spreads it ([`level`]). Both colours over budget is
//!   not the change's doing: no revert.
//! - **What is slow**: a response whose head takes longer than the app's
//!   `guard_max_slow` (default [`crate::model::DEFAULT_GUARD_MAX_SLOW`], 500 ms; `"off"`:
//!   slowness not judged) — a rollout's `max_slow`, counted by the same
//!   counter. A guard needs the old colour's slow responses from before
//!   the change, so the threshold is in force whenever no rollout is under
//!   way (a rollout counts by its own `max_slow`, or not at all). A
//!   baseline counts slow responses only as far back as the threshold now
//!   in force, and a guard stops judging slowness if it changes (a reload)
//!   while it watches; errors are judged on regardless.
//! - **Durable**: the window, kept in the change's history entry, so that
//!   a guard outlives a restart and, in a fleet, is watched by the instance
//!   that judges whichever instance took the change. **Memory-only**: the
//!   recent counts (the baseline) and what a guard saw; after a restart it
//!   watches afresh until its window ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use super::judge::{self, Budget, Counts, Verdict};
use super::state::{HistoryEntry, StateFile};
use crate::config::Color;
use crate::route::AppState;

/// How far before a change the old colour's rates are taken from.
pub const BASELINE: Duration = Duration::from_secs(120);

/// What counts against one colour, two ways: the same requests, `bad`
/// counting its errors (5xx, failed connects, timeouts) in one and its
/// slow responses in the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub errors: Counts,
    pub slow: Counts,
}

impl Seen {
    /// Both counts of `self` and `more` together.
    pub fn plus(self, more: Seen) -> Seen {
        let add = |a: Counts, b: Counts| Counts {
            total: a.total + b.total,
            bad: a.bad + b.bad,
        };
        Seen {
            errors: add(self.errors, more.errors),
            slow: add(self.slow, more.slow),
        }
    }
}

/// Judged counts of one app, `[blue, green]` of `[total, bad, slow]`:
/// this instance's, and in a fleet each other instance's by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub local: [[u64; 3]; 2],
    pub remote: BTreeMap<String, [[u64; 3]; 2]>,
    /// What counted as slow when it was read, in microseconds (0:
    /// nothing): slow counts read under another threshold do not compare.
    pub slow_micros: u64,
}

impl Tally {
    /// `color`'s requests since `base`, here and on the other instances.
    /// A counter that went down (a reload's new pool, an instance that
    /// restarted) counts from 0 again.
    pub fn since(&self, base: &Tally, color: Color) -> Seen {
        let c = color.index();
        let mut sum = judge::counted_since(self.local[c], base.local[c]);
        for (id, now) in &self.remote {
            let then = base.remote.get(id).map_or([0; 3], |b| b[c]);
            let more = judge::counted_since(now[c], then);
            for (s, m) in sum.iter_mut().zip(more) {
                *s += m;
            }
        }
        let [total, bad, slow] = sum;
        Seen {
            errors: Counts { total, bad },
            slow: Counts { total, bad: slow },
        }
    }
}

/// An app's tallies, sampled once a second over the last [`BASELINE`].
#[derive(Debug, Default)]
pub struct Recent {
    samples: VecDeque<(Instant, Tally)>,
}

impl Recent {
    pub fn record(&mut self, now: Instant, tally: Tally) {
        self.samples.push_back((now, tally));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= BASELINE)
        {
            self.samples.pop_front();
        }
    }

    /// `color`'s requests from the oldest sample kept to `now`; its slow
    /// ones only from the oldest sample read under `now`'s threshold.
    pub fn baseline(&self, now: &Tally, color: Color) -> Seen {
        let Some((_, oldest)) = self.samples.front() else {
            return Seen::default();
        };
        let errors = now.since(oldest, color).errors;
        let same_threshold = (self.samples.iter().rev())
            .take_while(|(_, t)| t.slow_micros == now.slow_micros)
            .last();
        let slow = same_threshold.map_or_else(Counts::default, |(_, t)| now.since(t, color).slow);
        Seen { errors, slow }
    }
}

/// One guard under way.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The epoch of the change it watches.
    pub epoch: u64,
    /// `flip` or `shift`.
    pub kind: String,
    /// The colour that took more of the traffic, and the one that gave it.
    pub new: Color,
    pub old: Color,
    /// The routing it goes back to: the live colour and the split before.
    pub back: (Color, f64),
    pub until: Instant,
    pub window: Duration,
    /// The tally when it began.
    pub base: Tally,
    /// The old colour's requests in the [`BASELINE`] before the change.
    pub baseline: Seen,
    /// What counts as slow, in microseconds, as `base` was read (0:
    /// slowness not judged).
    pub slow_micros: u64,
    /// The fail test's level at one look, of each judge.
    pub level: f64,
}

/// What the control plane keeps of guards, in memory.
#[derive(Debug, Default)]
pub struct Watch {
    /// Each app's recent tallies.
    pub recent: HashMap<String, Recent>,
    /// The guards under way, by app.
    pub guards: HashMap<String, Guard>,
    /// Reverts since start, by app (`cutover_guard_reverts_total`).
    pub reverts: BTreeMap<String, u64>,
    /// Of those, the reverts for slow responses
    /// (`cutover_guard_slow_reverts_total`).
    pub slow_reverts: BTreeMap<String, u64>,
}

/// The window of change `e`'s guard and when it ends, if it has one.
pub fn window_of(e: &HistoryEntry) -> Option<(Duration, SystemTime)> {
    let window = humantime::parse_duration(e.guard.as_deref()?).ok()?;
    let time = humantime::parse_rfc3339(&e.time).ok()?;
    Some((window, time + window))
}

/// Some app's last change has a guard whose window is not over at `now`.
pub fn under_way(state: &StateFile, now: SystemTime) -> bool {
    let mut seen = std::collections::HashSet::new();
    state
        .history
        .iter()
        .rev()
        .filter(|e| seen.insert(e.app.as_str()))
        .any(|e| window_of(e).is_some_and(|(_, end)| end > now))
}

/// `color`'s share (0-100) of an app's default traffic in `s`.
fn share(s: &AppState, color: Color) -> f64 {
    if s.live == color {
        100.0 - s.standby_percent
    } else {
        s.standby_percent
    }
}

/// The colour whose share of default traffic `before` → `after` grew;
/// `None` when the split is as it was.
pub fn gainer(before: &AppState, after: &AppState) -> Option<Color> {
    Color::ALL
        .into_iter()
        .find(|c| share(after, *c) > share(before, *c))
}

/// The fail test's level at one look of a guard `window` long: the
/// rollouts' false-rollback budget spent evenly over its looks and over
/// its judges (errors, and slowness when `slow_judged`).
pub fn level(window: Duration, slow_judged: bool) -> f64 {
    let judges = if slow_judged { 2.0 } else { 1.0 };
    judge::ROLLOUT_ALPHA / (judges * window.as_secs_f64().max(1.0))
}

/// What a guard reverts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// More errors: 5xx, failed connects, timeouts.
    Errors,
    /// More responses slower than `guard_max_slow`.
    Slowness,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Errors => "errors",
            Cause::Slowness => "slowness",
        }
    }
}

/// A guard's decision to revert: what for, and by which rule of the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revert {
    pub cause: Cause,
    /// `fast fail` or `worse beyond doubt`.
    pub rule: &'static str,
}

/// One look: `Some` when `new` is clearly worse than `old` by the
/// rollouts' judge, on errors, or on slow responses when `slow_judged`.
pub fn verdict(new: Seen, old: Seen, level: f64, slow_judged: bool) -> Option<Revert> {
    let errors = worse(new.errors, old.errors, judge::DEFAULT_MAX_ERROR_RATE, level);
    let slowness = match slow_judged {
        true => worse(new.slow, old.slow, judge::DEFAULT_MAX_SLOW_RATE, level),
        false => None,
    };
    let revert = |cause| move |rule| Revert { cause, rule };
    (errors.map(revert(Cause::Errors))).or(slowness.map(revert(Cause::Slowness)))
}

/// The judge's rule by which `new` is worse than `old` against `budget`.
fn worse(new: Counts, old: Counts, budget: f64, level: f64) -> Option<&'static str> {
    let budget = Budget {
        max_error_rate: budget,
        allow_low_traffic: false,
        level,
    };
    // A look at age 0 is before any `every`: the judge rolls back or
    // answers Continue, never Promote.
    let every = Duration::from_secs(1);
    match judge::judge(new, old, budget, Duration::ZERO, every) {
        Verdict::Rollback(why) if why.starts_with("fast fail") => Some("fast fail"),
        Verdict::Rollback(_) => Some("worse beyond doubt"),
        _ => None,
    }
}

/// A revert's reason: the cause, the rule, the figures and the change
/// undone.
pub fn reason(g: &Guard, revert: Revert, new: Seen, old: Seen) -> String {
    let pct = |c: Counts| match c.total {
        0 => 0.0,
        n => 100.0 * c.bad as f64 / n as f64,
    };
    let (rule, what, new, old) = match revert.cause {
        Cause::Errors => (
            revert.rule.to_string(),
            "bad".to_string(),
            new.errors,
            old.errors,
        ),
        Cause::Slowness => (
            format!("slow responses, {}", revert.rule),
            format!(
                "slower than {}",
                humantime::format_duration(Duration::from_micros(g.slow_micros))
            ),
            new.slow,
            old.slow,
        ),
    };
    format!(
        "guard ({rule}): {} {} of {} {what} ({:.2} %) since the {} at epoch {}, against {} {} of {} ({:.2} %) before it; back to {} live, {} % to standby",
        g.new,
        new.bad,
        new.total,
        pct(new),
        g.kind,
        g.epoch,
        g.old,
        old.bad,
        old.total,
        pct(old),
        g.back.0,
        g.back.1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A colour's chance of answering a request with an error, and of
    /// answering it slowly.
    #[derive(Debug, Clone, Copy)]
    struct Rates {
        error: f64,
        slow: f64,
    }

    fn errors(error: f64) -> Rates {
        Rates { error, slow: 0.0 }
    }

    fn slow(slow: f64) -> Rates {
        Rates { error: 0.0, slow }
    }

    /// A flip's guard, simulated: `rps` requests a second go to the old
    /// colour for [`BASELINE`] before the flip and to the new one for
    /// `window` after it, each bad and slow at its colour's rates; the
    /// guard looks once a second, judging both. The second of the revert
    /// and its cause, if any.
    fn guard(
        rng: &mut fastrand::Rng,
        rps: f64,
        new: Rates,
        old: Rates,
        window: Duration,
    ) -> Option<(u64, Cause)> {
        shifted(rng, rps, 1.0, new, old, window)
    }

    /// The same for a shift giving the new colour `share` (0-1) of the
    /// traffic after the change; the old colour keeps the rest.
    fn shifted(
        rng: &mut fastrand::Rng,
        rps: f64,
        share: f64,
        new_rates: Rates,
        old_rates: Rates,
        window: Duration,
    ) -> Option<(u64, Cause)> {
        let mut send = |rps: f64, rates: Rates, c: &mut Seen, carry: &mut f64| {
            *carry += rps;
            while *carry >= 1.0 {
                *carry -= 1.0;
                c.errors.total += 1;
                c.slow.total += 1;
                c.errors.bad += u64::from(rng.f64() < rates.error);
                c.slow.bad += u64::from(rng.f64() < rates.slow);
            }
        };
        let (mut old, mut new) = (Seen::default(), Seen::default());
        let (mut old_carry, mut new_carry) = (0.0, 0.0);
        for _ in 0..BASELINE.as_secs() {
            send(rps, old_rates, &mut old, &mut old_carry);
        }
        let level = level(window, true);
        for second in 1..=window.as_secs() {
            send(rps * share, new_rates, &mut new, &mut new_carry);
            send(rps * (1.0 - share), old_rates, &mut old, &mut old_carry);
            if let Some(r) = verdict(new, old, level, true) {
                return Some((second, r.cause));
            }
        }
        None
    }

    /// Both colours alike: errors at 0-2 % (twice the budget), slow
    /// responses at 0-10 % (twice theirs), 0.5 to 500 requests a second
    /// evenly on a log scale.
    fn a_a(rng: &mut fastrand::Rng) -> (Rates, f64) {
        let rates = Rates {
            error: rng.f64() * 0.02,
            slow: rng.f64() * 0.10,
        };
        (rates, 0.5 * 1000f64.powf(rng.f64()))
    }

    #[test]
    fn a_a_guards_almost_never_revert() {
        let mut rng = fastrand::Rng::with_seed(38);
        let window = Duration::from_secs(120);
        let mut reverts = Vec::new();
        for _ in 0..1000 {
            let (rates, rps) = a_a(&mut rng);
            reverts.extend(guard(&mut rng, rps, rates, rates, window));
        }
        println!("A/A guards: {} of 1000 reverted {reverts:?}", reverts.len());
        assert!(reverts.len() <= 1, "false reverts: {reverts:?}");
    }

    #[test]
    fn a_a_guarded_shifts_almost_never_revert() {
        let mut rng = fastrand::Rng::with_seed(381);
        let window = Duration::from_secs(120);
        let mut reverts = Vec::new();
        for _ in 0..1000 {
            let (rates, rps) = a_a(&mut rng);
            // A shift of 1 % to 100 % of the traffic.
            let share = 0.01 + 0.99 * rng.f64();
            reverts.extend(shifted(&mut rng, rps, share, rates, rates, window));
        }
        println!(
            "A/A guarded shifts: {} of 1000 reverted {reverts:?}",
            reverts.len()
        );
        assert!(reverts.len() <= 1, "false reverts: {reverts:?}");
    }

    /// Slow apps: a threshold below many responses' time (both colours
    /// slow on 0-90 % of requests), the fast-fail threshold (50 %)
    /// included, where two colours alike once tripped it.
    #[test]
    fn a_a_guards_of_slow_apps_almost_never_revert() {
        let mut rng = fastrand::Rng::with_seed(3838);
        let window = Duration::from_secs(120);
        let mut reverts = Vec::new();
        for _ in 0..1000 {
            let (mut rates, rps) = a_a(&mut rng);
            rates.slow = 0.9 * rng.f64();
            reverts.extend(guard(&mut rng, rps, rates, rates, window));
        }
        println!(
            "A/A guards of slow apps: {} of 1000 reverted {reverts:?}",
            reverts.len()
        );
        assert!(reverts.len() <= 1, "false reverts: {reverts:?}");
    }

    #[test]
    fn a_green_answering_only_5xx_is_reverted_within_5_s_at_20_per_s() {
        let window = Duration::from_secs(120);
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let revert = guard(&mut rng, 20.0, errors(1.0), errors(0.0), window);
            assert!(
                revert.is_some_and(|(s, cause)| s <= 5 && cause == Cause::Errors),
                "seed {seed}: {revert:?}"
            );
        }
    }

    #[test]
    fn a_green_at_5_percent_against_0_1_is_reverted_within_30_s_at_50_per_s() {
        let window = Duration::from_secs(120);
        let mut worst = 0;
        for seed in 0..100 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let revert = guard(&mut rng, 50.0, errors(0.05), errors(0.001), window);
            assert!(
                revert.is_some_and(|(s, cause)| s <= 30 && cause == Cause::Errors),
                "seed {seed}: {revert:?}"
            );
            worst = worst.max(revert.unwrap().0);
        }
        println!("5 % against 0.1 % at 50 req/s: reverted within {worst} s");
    }

    #[test]
    fn a_green_answering_every_request_slowly_is_reverted_within_5_s_at_20_per_s() {
        let window = Duration::from_secs(120);
        let mut worst = 0;
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let revert = guard(&mut rng, 20.0, slow(1.0), slow(0.0), window);
            assert!(
                revert.is_some_and(|(s, cause)| s <= 5 && cause == Cause::Slowness),
                "seed {seed}: {revert:?}"
            );
            worst = worst.max(revert.unwrap().0);
        }
        println!("100 % slow against none at 20 req/s: reverted within {worst} s");
    }

    #[test]
    fn a_green_slow_on_10_percent_against_1_is_reverted_within_30_s_at_50_per_s() {
        let window = Duration::from_secs(120);
        let mut worst = 0;
        for seed in 0..100 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let revert = guard(&mut rng, 50.0, slow(0.10), slow(0.01), window);
            assert!(
                revert.is_some_and(|(s, cause)| s <= 30 && cause == Cause::Slowness),
                "seed {seed}: {revert:?}"
            );
            worst = worst.max(revert.unwrap().0);
        }
        println!("10 % slow against 1 % at 50 req/s: reverted within {worst} s");
    }

    #[test]
    fn a_flip_away_from_a_failing_or_slow_colour_is_not_reverted() {
        let mut rng = fastrand::Rng::with_seed(7);
        let window = Duration::from_secs(120);
        let good = Rates {
            error: 0.001,
            slow: 0.01,
        };
        let bad = Rates {
            error: 0.5,
            slow: 0.5,
        };
        assert_eq!(guard(&mut rng, 50.0, good, bad, window), None);
        // Both failing, or both slow, alike: not the change's doing.
        assert_eq!(
            guard(&mut rng, 50.0, errors(0.2), errors(0.2), window),
            None
        );
        assert_eq!(guard(&mut rng, 50.0, slow(0.3), slow(0.3), window), None);
    }

    #[test]
    fn slowness_is_not_judged_without_a_threshold() {
        let c = |total, bad| Counts { total, bad };
        let new = Seen {
            errors: c(100, 0),
            slow: c(100, 100),
        };
        let old = Seen {
            errors: c(1000, 0),
            slow: c(1000, 0),
        };
        let level = level(Duration::from_secs(120), true);
        let revert = verdict(new, old, level, true);
        assert_eq!(revert.map(|r| r.cause), Some(Cause::Slowness));
        assert_eq!(verdict(new, old, level, false), None);
    }

    #[test]
    fn the_reason_names_slowness_and_its_figures() {
        let c = |total, bad| Counts { total, bad };
        let g = Guard {
            epoch: 4,
            kind: "flip".into(),
            new: Color::Green,
            old: Color::Blue,
            back: (Color::Blue, 0.0),
            until: Instant::now(),
            window: Duration::from_secs(120),
            base: Tally::default(),
            baseline: Seen::default(),
            slow_micros: 500_000,
            level: level(Duration::from_secs(120), true),
        };
        let new = Seen {
            errors: c(12, 0),
            slow: c(12, 12),
        };
        let old = Seen {
            errors: c(61, 0),
            slow: c(61, 1),
        };
        let revert = Revert {
            cause: Cause::Slowness,
            rule: "fast fail",
        };
        assert_eq!(
            reason(&g, revert, new, old),
            "guard (slow responses, fast fail): green 12 of 12 slower than 500ms (100.00 %) \
             since the flip at epoch 4, against blue 1 of 61 (1.64 %) before it; \
             back to blue live, 0 % to standby"
        );
    }

    #[test]
    fn the_colour_that_gained_traffic_is_the_one_watched() {
        let s = |live, standby_percent| AppState {
            live,
            standby_percent,
            rules: Vec::new(),
            runtime_rules: false,
            servers: BTreeMap::new(),
            mirror_percent: None,
            mirror_compare: None,
        };
        let (b, g) = (Color::Blue, Color::Green);
        assert_eq!(gainer(&s(b, 0.0), &s(g, 0.0)), Some(g), "flip");
        assert_eq!(gainer(&s(b, 0.0), &s(b, 10.0)), Some(g), "shift up");
        assert_eq!(gainer(&s(b, 50.0), &s(b, 0.0)), Some(b), "shift down");
        assert_eq!(gainer(&s(b, 10.0), &s(b, 10.0)), None);
    }

    #[test]
    fn a_tally_counts_since_its_base_and_afresh_after_a_reset() {
        let base = Tally {
            local: [[10, 1, 0], [5, 0, 0]],
            remote: BTreeMap::from([("b".to_string(), [[100, 10, 3], [0, 0, 0]])]),
            slow_micros: 500_000,
        };
        let now = Tally {
            local: [[15, 2, 1], [2, 1, 0]],
            remote: BTreeMap::from([
                ("b".to_string(), [[110, 10, 5], [0, 0, 0]]),
                ("c".to_string(), [[7, 7, 7], [0, 0, 0]]),
            ]),
            slow_micros: 500_000,
        };
        let blue = now.since(&base, Color::Blue);
        assert_eq!(blue.errors, Counts { total: 22, bad: 8 });
        assert_eq!(blue.slow, Counts { total: 22, bad: 10 });
        // Green's local counter went down: counted from 0.
        let green = now.since(&base, Color::Green);
        assert_eq!(green.errors, Counts { total: 2, bad: 1 });
    }

    #[test]
    fn a_baseline_counts_slow_responses_only_under_the_threshold_now_in_force() {
        let tally = |total, bad, slow, slow_micros| Tally {
            local: [[total, bad, slow], [0, 0, 0]],
            remote: BTreeMap::new(),
            slow_micros,
        };
        let t0 = Instant::now();
        let mut recent = Recent::default();
        // A rollout counted slowness by its own 200ms, then ended.
        recent.record(t0, tally(0, 0, 0, 200_000));
        recent.record(t0 + Duration::from_secs(1), tally(100, 1, 40, 200_000));
        recent.record(t0 + Duration::from_secs(2), tally(200, 2, 50, 500_000));
        let now = tally(300, 3, 52, 500_000);
        let b = recent.baseline(&now, Color::Blue);
        assert_eq!(b.errors, Counts { total: 300, bad: 3 });
        assert_eq!(b.slow, Counts { total: 100, bad: 2 });
    }
}
