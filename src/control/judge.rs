//! The rollout judge: a pure function of the two colours' counts since a
//! step began (split traffic only), asked once a second by
//! [`super::rollout`].
//!
//! - **Fast fail**: at least 5 bad green requests and the lower 99.9 %
//!   Wilson bound of green's bad rate above max(10 × budget, 5 %), while
//!   blue's rate is not above that too, nor its upper 99.9 % bound above
//!   green's lower one (two colours failing alike near the threshold).
//! - **Fail**: green over budget and worse than blue by an exact
//!   conditional binomial test: given the bad requests of both colours,
//!   how unlikely is it that green got this many of them if both had the
//!   same rate? The judge looks every second, so a fixed p-value at each
//!   look would add up over a long rollout; the test's level is the whole
//!   rollout's false-rollback budget (0.1 %) spent evenly over the most
//!   looks its plan can make (Bonferroni: the simplest alpha-spending
//!   schedule, conservative, and valid however the looks fall), see
//!   `Plan::level`.
//! - **Evidence gate**: no promotion before green has ⌈3 / budget⌉
//!   requests in the step (its own, and the shadow copies the rollout
//!   adds to them, see `rollout::wants_copies`); short of it the step is
//!   extended, and after 10 × the step's length without evidence the
//!   rollout pauses as inconclusive.
//! - **Both over budget** with no significant difference: hold (the fault
//!   is not green's).

use std::time::Duration;

/// Requests since the step began, of one colour, placed by the split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    /// Upstream 5xx, connect errors and timeouts.
    pub bad: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// The largest acceptable bad rate (0.01 = 1 %).
    pub max_error_rate: f64,
    /// Promote without evidence (the operator said so).
    pub allow_low_traffic: bool,
    /// The fail test's level at one look: the rollout's share of
    /// [`ROLLOUT_ALPHA`] for it.
    pub level: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The step goes on (not yet `every` old).
    Continue,
    /// The step is old enough and green has its evidence.
    Promote,
    /// The step is extended: green has `samples` of the `needed` requests.
    Extend { samples: u64, needed: u64 },
    /// Roll back, and why.
    Rollback(String),
    /// Both colours are over budget with no difference between them.
    Hold(String),
    /// Green has its evidence but is over budget, and not (yet) worse than
    /// blue beyond doubt: the step goes on, never promoted.
    Unproven(String),
    /// No evidence after 10 × `every`: pause.
    Inconclusive { samples: u64, needed: u64 },
}

/// A rollout's `max_error_rate` when it gives none, and a guard's budget.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;

/// A rollout's `max_slow_rate` when it gives none, and a guard's budget
/// for slow responses.
pub const DEFAULT_MAX_SLOW_RATE: f64 = 0.05;

/// The whole rollout's chance of a false rollback.
pub const ROLLOUT_ALPHA: f64 = 0.001;

/// Green requests needed to tell its rate from `budget`.
pub fn needed(budget: f64) -> u64 {
    (3.0 / budget.max(1e-6)).ceil() as u64
}

/// A colour's judged counts `[total, bad, slow]` since `base` was read;
/// a counter that went down (a reload's new pool, an instance that
/// restarted) counts from 0 again.
pub fn counted_since(now: [u64; 3], base: [u64; 3]) -> [u64; 3] {
    match (0..3).all(|i| now[i] >= base[i]) {
        true => [0, 1, 2].map(|i| now[i] - base[i]),
        false => now,
    }
}

/// One look at a step `age` old of length `every`.
pub fn judge(
    green: Counts,
    blue: Counts,
    budget: Budget,
    age: Duration,
    every: Duration,
) -> Verdict {
    let b = budget.max_error_rate;
    let fast = (10.0 * b).max(0.05);
    let rate = |c: Counts| {
        if c.total == 0 {
            0.0
        } else {
            c.bad as f64 / c.total as f64
        }
    };
    // (Unless blue fails as badly: then it is not green's doing. Blue's
    // rate near `fast` is not enough to tell: green's bound must also be
    // above blue's upper one, or two colours failing alike at about
    // `fast` would trip it now and then.)
    let green_low = wilson_lower(green.bad, green.total, 3.29);
    let blue_high = match blue.total {
        0 => 0.0,
        n => wilson_upper(blue.bad, n, 3.29),
    };
    if green.bad >= 5 && green_low > fast && rate(blue) <= fast && green_low > blue_high {
        return Verdict::Rollback(format!(
            "fast fail: {} of {} green requests bad",
            green.bad, green.total
        ));
    }
    let green_over = rate(green) > b;
    let worse = green_over && green.bad > 0 && worse_than(green, blue) < budget.level;
    if green_over && worse {
        return Verdict::Rollback(format!(
            "green {:.2} % bad ({} of {}) against blue {:.2} % ({} of {}), budget {:.2} %",
            100.0 * rate(green),
            green.bad,
            green.total,
            100.0 * rate(blue),
            blue.bad,
            blue.total,
            100.0 * b
        ));
    }
    if green_over && rate(blue) > b {
        return Verdict::Hold(format!(
            "both colours over budget (green {:.2} %, blue {:.2} %): not green's fault",
            100.0 * rate(green),
            100.0 * rate(blue)
        ));
    }
    if age < every {
        return Verdict::Continue;
    }
    let need = needed(b);
    if green.total >= need && !green_over {
        return Verdict::Promote;
    }
    if budget.allow_low_traffic && !green_over {
        return Verdict::Promote;
    }
    if age >= every * 10 {
        return Verdict::Inconclusive {
            samples: green.total,
            needed: need,
        };
    }
    if green.total >= need {
        return Verdict::Unproven(format!(
            "green {:.2} % bad over the {:.2} % budget, not yet significantly worse than blue ({:.2} %)",
            100.0 * rate(green),
            100.0 * b,
            100.0 * rate(blue)
        ));
    }
    Verdict::Extend {
        samples: green.total,
        needed: need,
    }
}

/// The bake's judge, where green takes all traffic and there is no blue
/// to compare with: roll back (`Some(why)`) on the fast-fail rule, or when
/// green's bad rate is above the budget beyond doubt — its Wilson lower
/// bound at the one-sided per-look `level` is over it.
pub fn absolute(green: Counts, budget: f64, level: f64) -> Option<String> {
    let fast = (10.0 * budget).max(0.05);
    let lower = |z| wilson_lower(green.bad, green.total, z);
    if green.bad >= 5 && lower(3.29) > fast {
        return Some(format!(
            "fast fail: {} of {} green requests bad",
            green.bad, green.total
        ));
    }
    (green.bad > 0 && lower(z_for(level)) > budget).then(|| {
        format!(
            "green {:.2} % bad ({} of {}) over the {:.2} % budget",
            100.0 * green.bad as f64 / green.total as f64,
            green.bad,
            green.total,
            100.0 * budget
        )
    })
}

/// The one-sided normal quantile of a small tail `level` (below 0.001):
/// bisection on the tail's asymptotic series, exact to a few parts in a
/// thousand from z = 3 on.
fn z_for(level: f64) -> f64 {
    let tail = |z: f64| {
        let z2 = z * z;
        (-z2 / 2.0).exp() / (z * (2.0 * std::f64::consts::PI).sqrt())
            * (1.0 - 1.0 / z2 + 3.0 / (z2 * z2) - 15.0 / (z2 * z2 * z2))
    };
    let (mut lo, mut hi) = (3.0, 40.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if tail(mid) > level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The lower Wilson score bound of `bad` in `n` at `z`.
pub fn wilson_lower(bad: u64, n: u64, z: f64) -> f64 {
    wilson(bad, n, z).0
}

/// The upper Wilson score bound of `bad` in `n` at `z`.
pub fn wilson_upper(bad: u64, n: u64, z: f64) -> f64 {
    wilson(bad, n, z).1
}

/// Both Wilson score bounds of `bad` in `n` at `z`; `(0, 1)` for none.
fn wilson(bad: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, bad as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    (
        ((centre - margin) / scale).max(0.0),
        ((centre + margin) / scale).min(1.0),
    )
}

/// P(green gets at least its share of the bad requests | both colours
/// have one rate): the exact conditional binomial tail.
fn worse_than(green: Counts, blue: Counts) -> f64 {
    let k = green.bad + blue.bad;
    let n = green.total + blue.total;
    if n == 0 || k == 0 {
        return 1.0;
    }
    let share = green.total as f64 / n as f64;
    binomial_tail(k, share, green.bad)
}

/// P(X ≥ x) for X ~ Binomial(k, p), summed in log space.
fn binomial_tail(k: u64, p: f64, x: u64) -> f64 {
    if x == 0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut ln_choose = 0.0; // ln C(k, 0)
    let mut total = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((k - i + 1) as f64).ln() - (i as f64).ln();
        }
        if i >= x {
            total += (ln_choose + i as f64 * lp + (k - i) as f64 * lq).exp();
        }
    }
    total.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(60);
    /// The default plan's: four split steps of at most 600 looks each.
    const LEVEL: f64 = ROLLOUT_ALPHA / 2400.0;
    const STEPS: [f64; 4] = [0.01, 0.05, 0.25, 0.50];

    /// One simulated rollout (the split steps; 100 % is a flip): the
    /// judge looks once a second; `None` if it ended paused or holding.
    /// Returns the last verdict and the seconds it took.
    fn rollout(
        rng: &mut fastrand::Rng,
        rps: f64,
        green_rate: f64,
        blue_rate: f64,
        budget: Budget,
    ) -> (Verdict, u64) {
        let mut seconds = 0;
        for share in STEPS {
            let (mut green, mut blue) = (Counts::default(), Counts::default());
            let (mut g_carry, mut b_carry) = (0.0, 0.0);
            let mut held = 0;
            // 10 x every, and a hold (5 x every) may run past it.
            for age in 1..=900u64 {
                seconds += 1;
                g_carry += rps * share;
                b_carry += rps * (1.0 - share);
                for (c, carry, rate) in [
                    (&mut green, &mut g_carry, green_rate),
                    (&mut blue, &mut b_carry, blue_rate),
                ] {
                    while *carry >= 1.0 {
                        *carry -= 1.0;
                        c.total += 1;
                        if rng.f64() < rate {
                            c.bad += 1;
                        }
                    }
                }
                let verdict = judge(green, blue, budget, Duration::from_secs(age), EVERY);
                // A hold is a stay, as the rollout has it, until it has
                // lasted 5 x every.
                held = if matches!(verdict, Verdict::Hold(_)) {
                    held + 1
                } else {
                    0
                };
                match verdict {
                    Verdict::Hold(_) if held < 300 => {}
                    Verdict::Continue | Verdict::Extend { .. } | Verdict::Unproven(_) => {}
                    Verdict::Promote => {
                        assert!(
                            green.total >= needed(budget.max_error_rate)
                                || budget.allow_low_traffic,
                            "promoted on {} requests",
                            green.total
                        );
                        break;
                    }
                    v => return (v, seconds),
                }
                if age == 900 {
                    unreachable!("the judge pauses after 10 x every, or holding after 5 x every");
                }
            }
        }
        (Verdict::Promote, seconds)
    }

    #[test]
    fn a_a_rollouts_almost_never_roll_back_and_never_promote_without_evidence() {
        let mut rng = fastrand::Rng::with_seed(27);
        let budget = Budget {
            max_error_rate: 0.01,
            allow_low_traffic: false,
            level: LEVEL,
        };
        let (mut rollbacks, mut promoted, mut paused, mut held) = (0, 0, 0, 0);
        for _ in 0..1000 {
            let rate = rng.f64() * 0.02;
            // 0.5 to 500 requests a second, evenly on a log scale.
            let rps = 0.5 * 1000f64.powf(rng.f64());
            match rollout(&mut rng, rps, rate, rate, budget).0 {
                Verdict::Rollback(_) => rollbacks += 1,
                Verdict::Promote => promoted += 1,
                Verdict::Inconclusive { .. } => paused += 1,
                Verdict::Hold(_) => held += 1,
                v => panic!("{v:?}"),
            }
        }
        println!("A/A: {rollbacks} rolled back, {promoted} promoted, {paused} paused, {held} held");
        assert!(rollbacks <= 1, "{rollbacks} false rollbacks");
        // Not vacuous: plenty of rollouts went each way.
        assert!(
            promoted > 100 && paused > 100,
            "{promoted} promoted, {paused} paused, {held} held"
        );
    }

    #[test]
    fn a_green_answering_only_5xx_is_rolled_back_within_5_s_at_20_per_s() {
        let mut rng = fastrand::Rng::with_seed(1);
        let budget = Budget {
            max_error_rate: 0.01,
            allow_low_traffic: false,
            level: LEVEL,
        };
        // 20 requests a second of split traffic reach green at its step.
        let (v, secs) = rollout(&mut rng, 20.0 / STEPS[0], 1.0, 0.0, budget);
        assert!(matches!(v, Verdict::Rollback(_)), "{v:?}");
        assert!(secs <= 5, "after {secs} s");
    }

    #[test]
    fn a_green_at_5_percent_against_a_blue_at_0_1_is_rolled_back_within_30_s() {
        let budget = Budget {
            max_error_rate: 0.01,
            allow_low_traffic: false,
            level: LEVEL,
        };
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (v, secs) = rollout(&mut rng, 50.0 / STEPS[0], 0.05, 0.001, budget);
            assert!(matches!(v, Verdict::Rollback(_)), "seed {seed}: {v:?}");
            assert!(secs <= 30, "seed {seed}: after {secs} s");
        }
    }

    #[test]
    fn both_colours_failing_hold_and_do_not_roll_back() {
        let green = Counts {
            total: 1000,
            bad: 200,
        };
        let blue = Counts {
            total: 99_000,
            bad: 19_800,
        };
        let b = Budget {
            max_error_rate: 0.01,
            allow_low_traffic: false,
            level: LEVEL,
        };
        assert!(matches!(
            judge(green, blue, b, EVERY, EVERY),
            Verdict::Hold(_)
        ));
    }

    #[test]
    fn the_bake_rolls_back_a_clear_excess_only() {
        let c = |total, bad| Counts { total, bad };
        assert!(absolute(c(100, 50), 0.01, LEVEL).is_some(), "fast fail");
        assert!(
            absolute(c(10_000, 300), 0.01, LEVEL).is_some(),
            "3 % on 10,000"
        );
        assert!(
            absolute(c(1_000, 12), 0.01, LEVEL).is_none(),
            "1.2 % is noise"
        );
        assert!(absolute(c(0, 0), 0.01, LEVEL).is_none());
    }

    /// The minimum-traffic table of `docs/rollouts.md`, computed here so
    /// that it is not guessed: for each budget, the requests a step needs,
    /// the app's requests a second to promote a step after `every` (1 min)
    /// and before it pauses (10 × `every`) when shadow copies count every
    /// request, and the first without copies at a 1 % step.
    #[test]
    fn the_docs_minimum_traffic_table_is_what_the_judge_needs() {
        let docs = include_str!("../../docs/rollouts.md");
        let every = EVERY.as_secs_f64();
        for percent in [0.1, 0.5, 1.0, 2.0, 5.0, 10.0] {
            let n = needed(percent / 100.0);
            let rps = n as f64 / every;
            let row = format!(
                "| {percent} % | {n} | {rps} | {} | {} |",
                n as f64 / (10.0 * every),
                n as f64 * 100.0 / every
            );
            assert!(docs.contains(&row), "{row} is not in docs/rollouts.md");
        }
    }

    #[test]
    fn the_tail_and_the_bound_match_known_values() {
        // P(X >= 8 | Binomial(10, 0.5)) = 56 / 1024.
        assert!((binomial_tail(10, 0.5, 8) - 56.0 / 1024.0).abs() < 1e-12);
        // Wilson 95 % bounds of 5 in 10: 0.2366 and 0.7634.
        assert!((wilson_lower(5, 10, 1.96) - 0.2366).abs() < 1e-3);
        assert!((wilson_upper(5, 10, 1.96) - 0.7634).abs() < 1e-3);
        // One-sided normal quantiles: 1e-4 -> 3.719, 1e-8 -> 5.612.
        assert!((z_for(1e-4) - 3.719).abs() < 0.01, "{}", z_for(1e-4));
        assert!((z_for(1e-8) - 5.612).abs() < 0.01, "{}", z_for(1e-8));
    }
}
