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
//! - **The statistics are the rollouts'** ([`judge::judge`] with the
//!   rollouts' default 1 % budget): a fast fail on a near-total failure,
//!   else the exact conditional binomial test, its level the rollouts'
//!   false-rollback budget ([`judge::ROLLOUT_ALPHA`]) spread over the
//!   guard's looks, one a second over its window ([`level`]). Both
//!   colours over budget is not the change's doing: no revert.
//! - **Slowness** is not judged: a slow response needs a threshold, which
//!   only a rollout's `max_slow` gives.
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

/// The budget a guard judges with: the rollouts' default `max_error_rate`.
pub const MAX_ERROR_RATE: f64 = 0.01;

/// Judged counts of one app, `[blue, green]` of `[total, bad, slow]`:
/// this instance's, and in a fleet each other instance's by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub local: [[u64; 3]; 2],
    pub remote: BTreeMap<String, [[u64; 3]; 2]>,
}

impl Tally {
    /// `color`'s `(total, bad)` since `base`, here and on the other
    /// instances. A counter that went down (a reload's new pool, an
    /// instance that restarted) counts from 0 again.
    pub fn since(&self, base: &Tally, color: Color) -> Counts {
        let c = color.index();
        let diff = |now: [u64; 3], then: [u64; 3]| match now[0] >= then[0] && now[1] >= then[1] {
            true => (now[0] - then[0], now[1] - then[1]),
            false => (now[0], now[1]),
        };
        let (mut total, mut bad) = diff(self.local[c], base.local[c]);
        for (id, now) in &self.remote {
            let then = base.remote.get(id).map_or([0; 3], |b| b[c]);
            let (t, b) = diff(now[c], then);
            total += t;
            bad += b;
        }
        Counts { total, bad }
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

    /// `color`'s requests from the oldest sample kept to `now`.
    pub fn baseline(&self, now: &Tally, color: Color) -> Counts {
        self.samples
            .front()
            .map_or_else(Counts::default, |(_, then)| now.since(then, color))
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
    pub baseline: Counts,
    /// The fail test's level at one look.
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
/// rollouts' false-rollback budget spent evenly over its looks.
pub fn level(window: Duration) -> f64 {
    judge::ROLLOUT_ALPHA / window.as_secs_f64().max(1.0)
}

/// One look: `Some(why)` when `new` is clearly worse than `old`, by the
/// rollouts' judge.
pub fn verdict(new: Counts, old: Counts, level: f64) -> Option<&'static str> {
    let budget = Budget {
        max_error_rate: MAX_ERROR_RATE,
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

/// A revert's reason: the rule, the figures and the change undone.
pub fn reason(g: &Guard, why: &str, new: Counts, old: Counts) -> String {
    let pct = |c: Counts| match c.total {
        0 => 0.0,
        n => 100.0 * c.bad as f64 / n as f64,
    };
    format!(
        "guard ({why}): {} {} of {} bad ({:.2} %) since the {} at epoch {}, against {} {} of {} ({:.2} %) before it; back to {} live, {} % to standby",
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

    /// A flip's guard, simulated: `rps` requests a second go to the old
    /// colour for [`BASELINE`] before the flip and to the new one for
    /// `window` after it, each bad at its rate; the guard looks once a
    /// second. The second of the revert, if any.
    fn guard(
        rng: &mut fastrand::Rng,
        rps: f64,
        new_rate: f64,
        old_rate: f64,
        window: Duration,
    ) -> Option<u64> {
        shifted(rng, rps, 1.0, new_rate, old_rate, window)
    }

    /// The same for a shift giving the new colour `share` (0-1) of the
    /// traffic after the change; the old colour keeps the rest.
    fn shifted(
        rng: &mut fastrand::Rng,
        rps: f64,
        share: f64,
        new_rate: f64,
        old_rate: f64,
        window: Duration,
    ) -> Option<u64> {
        let mut send = |rps: f64, rate: f64, c: &mut Counts, carry: &mut f64| {
            *carry += rps;
            while *carry >= 1.0 {
                *carry -= 1.0;
                c.total += 1;
                if rng.f64() < rate {
                    c.bad += 1;
                }
            }
        };
        let (mut old, mut new) = (Counts::default(), Counts::default());
        let (mut old_carry, mut new_carry) = (0.0, 0.0);
        for _ in 0..BASELINE.as_secs() {
            send(rps, old_rate, &mut old, &mut old_carry);
        }
        let level = level(window);
        for second in 1..=window.as_secs() {
            send(rps * share, new_rate, &mut new, &mut new_carry);
            send(rps * (1.0 - share), old_rate, &mut old, &mut old_carry);
            if verdict(new, old, level).is_some() {
                return Some(second);
            }
        }
        None
    }

    #[test]
    fn a_a_guards_almost_never_revert() {
        let mut rng = fastrand::Rng::with_seed(38);
        let window = Duration::from_secs(120);
        let mut reverts = 0;
        for _ in 0..1000 {
            let rate = rng.f64() * 0.02;
            // 0.5 to 500 requests a second, evenly on a log scale.
            let rps = 0.5 * 1000f64.powf(rng.f64());
            if guard(&mut rng, rps, rate, rate, window).is_some() {
                reverts += 1;
            }
        }
        println!("A/A guards: {reverts} of 1000 reverted");
        assert!(reverts <= 1, "{reverts} false reverts");
    }

    #[test]
    fn a_a_guarded_shifts_almost_never_revert() {
        let mut rng = fastrand::Rng::with_seed(381);
        let window = Duration::from_secs(120);
        let mut reverts = 0;
        for _ in 0..1000 {
            let rate = rng.f64() * 0.02;
            let rps = 0.5 * 1000f64.powf(rng.f64());
            // A shift of 1 % to 100 % of the traffic.
            let share = 0.01 + 0.99 * rng.f64();
            if shifted(&mut rng, rps, share, rate, rate, window).is_some() {
                reverts += 1;
            }
        }
        println!("A/A guarded shifts: {reverts} of 1000 reverted");
        assert!(reverts <= 1, "{reverts} false reverts");
    }

    #[test]
    fn a_green_answering_only_5xx_is_reverted_within_5_s_at_20_per_s() {
        let window = Duration::from_secs(120);
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let secs = guard(&mut rng, 20.0, 1.0, 0.0, window);
            assert!(secs.is_some_and(|s| s <= 5), "seed {seed}: {secs:?}");
        }
    }

    #[test]
    fn a_green_at_5_percent_against_0_1_is_reverted_within_30_s_at_50_per_s() {
        let window = Duration::from_secs(120);
        let mut worst = 0;
        for seed in 0..100 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let secs = guard(&mut rng, 50.0, 0.05, 0.001, window);
            assert!(secs.is_some_and(|s| s <= 30), "seed {seed}: {secs:?}");
            worst = worst.max(secs.unwrap());
        }
        println!("5 % against 0.1 % at 50 req/s: reverted within {worst} s");
    }

    #[test]
    fn a_flip_away_from_a_failing_colour_is_not_reverted() {
        let mut rng = fastrand::Rng::with_seed(7);
        let window = Duration::from_secs(120);
        assert_eq!(guard(&mut rng, 50.0, 0.001, 0.5, window), None);
        // Both failing alike: not the change's doing.
        assert_eq!(guard(&mut rng, 50.0, 0.2, 0.2, window), None);
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
            remote: BTreeMap::from([("b".to_string(), [[100, 10, 0], [0, 0, 0]])]),
        };
        let now = Tally {
            local: [[15, 2, 0], [2, 1, 0]],
            remote: BTreeMap::from([
                ("b".to_string(), [[110, 10, 0], [0, 0, 0]]),
                ("c".to_string(), [[7, 7, 0], [0, 0, 0]]),
            ]),
        };
        assert_eq!(now.since(&base, Color::Blue), Counts { total: 22, bad: 8 });
        // Green's local counter went down: counted from 0.
        assert_eq!(now.since(&base, Color::Green), Counts { total: 2, bad: 1 });
    }
}
