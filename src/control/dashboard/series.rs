//! Each colour's last five minutes, one point a second: read off the
//! atomics the request path already bumps ([`ColorStats`]), as the
//! difference from the previous reading. The request path does nothing
//! more for it; the ring is fixed in size and filled once a second by the
//! control plane, however many pages look.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;

use crate::api::{ColorSeries, Point};
use crate::config::Color;
use crate::route::snapshot::{ColorStats, DURATION_BUCKETS};
use crate::route::Snapshot;

/// Points kept per colour: five minutes at one a second.
pub const SPAN: usize = 300;

/// Buckets of the duration histogram, `+Inf` last.
const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// One reading of a colour's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    /// Answers by status class, 1xx … 5xx.
    responses: [u64; 5],
    /// Answers by duration bucket (not cumulative).
    buckets: [u64; BUCKETS],
}

impl Reading {
    fn of(stats: &ColorStats) -> Reading {
        Reading {
            responses: stats.responses.each_ref().map(|n| n.load(Relaxed)),
            buckets: stats.duration_buckets.each_ref().map(|n| n.load(Relaxed)),
        }
    }

    /// What happened between `then` and `self`; a counter that went down
    /// (a reload built the pool anew) counts from zero again.
    fn since(&self, then: &Reading) -> Reading {
        let went_down = self
            .responses
            .iter()
            .zip(&then.responses)
            .any(|(a, b)| a < b)
            || self.buckets.iter().zip(&then.buckets).any(|(a, b)| a < b);
        if went_down {
            return *self;
        }
        Reading {
            responses: std::array::from_fn(|i| self.responses[i] - then.responses[i]),
            buckets: std::array::from_fn(|i| self.buckets[i] - then.buckets[i]),
        }
    }
}

/// One colour of one app: its last reading and its points.
#[derive(Debug, Default)]
struct Track {
    last: Option<(f64, Reading)>,
    points: VecDeque<Point>,
}

impl Track {
    /// Read `stats` at `now` (Unix seconds, fractional) and add the point
    /// since the last reading; the first reading only sets the start.
    fn sample(&mut self, now: f64, stats: &ColorStats) {
        let reading = Reading::of(stats);
        if let Some((then, before)) = self.last.replace((now, reading)) {
            let seconds = (now - then).max(0.001);
            let mut point = point(&reading.since(&before), seconds);
            point.t = now as u64;
            point.in_flight = stats.in_flight.load(Relaxed);
            if self.points.len() == SPAN {
                self.points.pop_front();
            }
            self.points.push_back(point);
        }
    }
}

/// The point of `d`, the answers of one interval `seconds` long.
fn point(d: &Reading, seconds: f64) -> Point {
    let total: u64 = d.responses.iter().sum();
    let error_pct = match total {
        0 => 0.0,
        n => 100.0 * d.responses[4] as f64 / n as f64,
    };
    Point {
        rps: total as f64 / seconds,
        error_pct,
        p50_ms: quantile(&d.buckets, 0.50),
        p99_ms: quantile(&d.buckets, 0.99),
        ..Point::default()
    }
}

/// The `q` quantile in milliseconds, as Prometheus' `histogram_quantile`
/// estimates it: linear within the bucket that holds it; the open last
/// bucket answers its lower bound. `None` when the buckets are empty.
fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
        if (below + n) as f64 >= rank && *n > 0 {
            let Some(upper) = DURATION_BUCKETS.get(i) else {
                return Some(lower * 1000.0);
            };
            let within = (rank - below as f64) / *n as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
    }
    Some(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1] * 1000.0)
}

/// Every app's tracks, `[blue, green]`.
#[derive(Debug, Default)]
pub struct Series {
    apps: BTreeMap<String, [Track; 2]>,
}

impl Series {
    /// One reading of every app of `snap` at `now` (Unix seconds); apps
    /// no longer served are forgotten.
    pub fn sample(&mut self, now: f64, snap: &Snapshot) {
        self.apps
            .retain(|name, _| snap.apps.iter().any(|a| *a.name == **name));
        for app in &snap.apps {
            let tracks = self.apps.entry(app.name.to_string()).or_default();
            for c in Color::ALL {
                tracks[c.index()].sample(now, &app.pool(c).stats);
            }
        }
    }

    /// Every point kept, per app and colour.
    pub fn all(&self) -> BTreeMap<String, ColorSeries> {
        self.collect(|t| t.points.iter().copied().collect())
    }

    /// The newest point of each app and colour (none before the second
    /// reading).
    pub fn newest(&self) -> BTreeMap<String, ColorSeries> {
        self.collect(|t| t.points.back().copied().into_iter().collect())
    }

    fn collect(&self, f: impl Fn(&Track) -> Vec<Point>) -> BTreeMap<String, ColorSeries> {
        self.apps
            .iter()
            .map(|(name, [blue, green])| {
                let s = ColorSeries {
                    blue: f(blue),
                    green: f(green),
                };
                (name.clone(), s)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_with(answers: &[(u16, f64)]) -> ColorStats {
        let s = ColorStats::default();
        for (status, secs) in answers {
            s.record(*status, std::time::Duration::from_secs_f64(*secs));
        }
        s
    }

    #[test]
    fn a_point_is_the_difference_between_two_readings_per_second() {
        let stats = stats_with(&[(200, 0.001)]);
        let mut t = Track::default();
        t.sample(100.0, &stats);
        assert!(t.points.is_empty(), "the first reading only starts");
        for _ in 0..9 {
            stats.record(200, std::time::Duration::from_millis(3));
        }
        stats.record(503, std::time::Duration::from_millis(3));
        t.sample(102.0, &stats);
        let p = t.points.back().unwrap();
        assert_eq!((p.t, p.rps, p.error_pct), (102, 5.0, 10.0));
        assert!(p.p50_ms.unwrap() > 0.0 && p.p99_ms.unwrap() <= 5.0);
    }

    #[test]
    fn a_quiet_second_has_no_latency_and_the_ring_keeps_five_minutes() {
        let stats = ColorStats::default();
        let mut t = Track::default();
        for s in 0..(SPAN + 10) {
            t.sample(s as f64, &stats);
        }
        assert_eq!(t.points.len(), SPAN);
        let p = t.points.back().unwrap();
        assert_eq!((p.rps, p.p50_ms, p.p99_ms), (0.0, None, None));
        assert_eq!(t.points.front().unwrap().t, 10);
    }

    #[test]
    fn quantiles_fall_in_the_bucket_that_holds_them() {
        let mut b = [0u64; BUCKETS];
        b[3] = 98; // 25–50 ms
        b[7] = 2; // 0.5–1 s
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((25.0..=50.0).contains(&p50), "{p50}");
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((500.0..=1000.0).contains(&p99), "{p99}");
        b = [0; BUCKETS];
        b[BUCKETS - 1] = 1;
        assert_eq!(quantile(&b, 0.5), Some(10_000.0), "beyond the last bound");
    }

    #[test]
    fn counters_that_went_down_count_from_zero() {
        let mut t = Track::default();
        t.sample(0.0, &stats_with(&[(200, 0.001); 50]));
        t.sample(1.0, &stats_with(&[(200, 0.001); 3]));
        assert_eq!(t.points.back().unwrap().rps, 3.0);
    }
}
