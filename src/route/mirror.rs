//! What shadow traffic leaves behind: per-app counts of how each copy
//! ended and the last differences found. The copies themselves are sent by
//! `proxy::mirror`; this is the record the snapshot carries from one
//! state of the world to the next, as it does a colour's statistics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// How one sampled request's copy ended, as the `outcome` label of
/// `cutover_mirror_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both answers in the same status class (and with the same body, when
    /// bodies are compared).
    Same,
    StatusDiffers,
    /// Same status class, different bodies.
    BodyDiffers,
    /// The standby gave no whole answer: connect failure, timeout, or a
    /// broken response.
    Error,
    /// `max_in_flight` copies were under way already.
    Dropped,
    /// Not copied, or nothing to compare it with: see [`Skip`].
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Same,
        Outcome::StatusDiffers,
        Outcome::BodyDiffers,
        Outcome::Error,
        Outcome::Dropped,
        Outcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Same => "same",
            Outcome::StatusDiffers => "status_differs",
            Outcome::BodyDiffers => "body_differs",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Why a sampled request was not compared, as the `reason` label of
/// `cutover_mirror_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its method is not among `methods`.
    Method,
    /// A WebSocket upgrade or `CONNECT`: a tunnel, not an answer.
    Upgrade,
    /// A body of unknown length (chunked, or HTTP/2 without
    /// `Content-Length`): it could not be copied within `max_body`.
    BodyLengthUnknown,
    /// A body longer than `max_body`.
    BodyTooLarge,
    /// The standby colour had no healthy server in rotation.
    NoServer,
    /// The live request got no whole answer from its upstream (a failed
    /// connect, a timeout, the client gone, its body not sent whole): there
    /// is nothing to compare the copy with.
    LiveIncomplete,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::Method,
        Skip::Upgrade,
        Skip::BodyLengthUnknown,
        Skip::BodyTooLarge,
        Skip::NoServer,
        Skip::LiveIncomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Method => "method",
            Skip::Upgrade => "upgrade",
            Skip::BodyLengthUnknown => "body_length_unknown",
            Skip::BodyTooLarge => "body_too_large",
            Skip::NoServer => "no_server",
            Skip::LiveIncomplete => "live_incomplete",
        }
    }
}

/// How many differences status keeps.
pub const KEPT_DIFFERENCES: usize = 20;

/// One copy whose answer differed from the live one (or that failed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// RFC 3339, UTC, to the millisecond.
    pub time: String,
    pub method: String,
    /// Without its query, which may carry what a status page should not.
    pub path: String,
    pub live_status: u16,
    /// `None` when the standby gave no answer.
    pub shadow_status: Option<u16>,
    /// `status_differs`, `body_differs` or `error`.
    pub outcome: &'static str,
    /// For an `error`: `connect`, `timeout` or `upstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Shadow traffic's counts for one app, shared by every snapshot (like a
/// colour's statistics), so that a flip, a shift or a reload keeps them.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// By [`Outcome`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// By [`Skip`]; their sum is the `skipped` outcome.
    skipped: [AtomicU64; Skip::ALL.len()],
    /// Copies under way, over all workers (`max_in_flight` bounds it).
    pub in_flight: AtomicU64,
    /// The last [`KEPT_DIFFERENCES`], oldest first. A lock, off the request
    /// path: only a copy's own task, once it found a difference, and a
    /// status call take it, each for a push or a clone.
    differences: Mutex<VecDeque<Difference>>,
    /// The copies' own answers, as evidence about the standby.
    pub evidence: CopyEvidence,
}

impl MirrorStats {
    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn skip(&self, why: Skip) {
        self.skipped[why as usize].fetch_add(1, Relaxed);
        self.count(Outcome::Skipped);
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Relaxed)
    }

    pub fn skipped(&self, why: Skip) -> u64 {
        self.skipped[why as usize].load(Relaxed)
    }

    /// Copies compared (`same`, `status_differs`, `body_differs`, `error`)
    /// and, of those, the mismatched (all but `same`): a failed copy
    /// counts against the standby, as a failed request would.
    pub fn compared(&self) -> (u64, u64) {
        let [same, status, body, error] = [
            Outcome::Same,
            Outcome::StatusDiffers,
            Outcome::BodyDiffers,
            Outcome::Error,
        ]
        .map(|o| self.outcome(o));
        (same + status + body + error, status + body + error)
    }

    pub fn record_difference(&self, d: Difference) {
        let mut list = self.differences.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == KEPT_DIFFERENCES {
            list.pop_front();
        }
        list.push_back(d);
    }

    /// The last differences, newest first.
    pub fn differences(&self) -> Vec<Difference> {
        let list = self.differences.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().rev().cloned().collect()
    }
}

/// How the standby itself answered the copies, whatever the live answer
/// was: a rollout whose step gets too few live requests judges the
/// standby on these too. Counted apart from the colour's own statistics,
/// which stay the standby's real traffic.
#[derive(Debug, Default)]
pub struct CopyEvidence {
    /// Copies the standby answered, or failed to.
    answered: AtomicU64,
    /// Of those, a 5xx, a failed connect, a timeout or a broken answer:
    /// what a live request would count as bad.
    bad: AtomicU64,
    /// Of those, the ones whose whole exchange took longer than
    /// `slow_micros`.
    slow: AtomicU64,
    /// What counts as slow, in microseconds (0: nothing), set like a
    /// colour's while a rollout judges slowness.
    pub slow_micros: AtomicU64,
}

impl CopyEvidence {
    /// One copy's answer: `status` (`None`: none came) after `took`.
    pub fn record(&self, status: Option<u16>, took: std::time::Duration) {
        self.answered.fetch_add(1, Relaxed);
        if status.is_none_or(|s| s >= 500) {
            self.bad.fetch_add(1, Relaxed);
        }
        let slow = self.slow_micros.load(Relaxed);
        if slow > 0 && took.as_micros() > u128::from(slow) {
            self.slow.fetch_add(1, Relaxed);
        }
    }

    /// `[answered, bad, slow]`, in the order of a colour's judged counts.
    pub fn counts(&self) -> [u64; 3] {
        [&self.answered, &self.bad, &self.slow].map(|c| c.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn difference(n: u16) -> Difference {
        Difference {
            time: String::new(),
            method: "GET".into(),
            path: format!("/{n}"),
            live_status: 200,
            shadow_status: Some(500),
            outcome: Outcome::StatusDiffers.as_str(),
            error: None,
        }
    }

    #[test]
    fn compared_counts_every_answered_copy_and_mismatches_are_all_but_same() {
        let s = MirrorStats::default();
        for o in [
            Outcome::Same,
            Outcome::Same,
            Outcome::StatusDiffers,
            Outcome::BodyDiffers,
            Outcome::Error,
            Outcome::Dropped,
        ] {
            s.count(o);
        }
        s.skip(Skip::Method);
        assert_eq!(s.compared(), (5, 3));
        assert_eq!(s.outcome(Outcome::Skipped), 1);
        assert_eq!(s.skipped(Skip::Method), 1);
    }

    #[test]
    fn only_the_last_twenty_differences_are_kept_newest_first() {
        let s = MirrorStats::default();
        for n in 0..25 {
            s.record_difference(difference(n));
        }
        let kept = s.differences();
        assert_eq!(kept.len(), KEPT_DIFFERENCES);
        assert_eq!(kept[0].path, "/24");
        assert_eq!(kept[19].path, "/5");
    }

    #[test]
    fn a_copy_is_bad_on_a_5xx_or_no_answer_and_slow_past_the_threshold() {
        let e = CopyEvidence::default();
        let ms = std::time::Duration::from_millis;
        e.record(Some(200), ms(900));
        e.slow_micros.store(500_000, Relaxed);
        e.record(Some(404), ms(10));
        e.record(Some(503), ms(10));
        e.record(None, ms(600));
        assert_eq!(e.counts(), [4, 2, 1]);
    }
}
