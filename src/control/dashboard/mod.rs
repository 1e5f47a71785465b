//! What the dashboard (`GET /` on the admin listener) is sent each
//! second: the state as status shows it, the newest changes, what each
//! guard sees, the fleet, and each colour's newest point of [`series`].
//! Built once a second for every open page together (`admin::events`).

pub mod series;

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::ops::Control;
use crate::api;

/// Changes a tick carries, newest last.
pub const HISTORY: usize = 12;

impl Control {
    /// This second's view for the dashboard, with `points` from the
    /// series.
    pub fn tick_view(&self, points: BTreeMap<String, api::ColorSeries>) -> api::Tick {
        let history = self.history();
        let skip = history.len().saturating_sub(HISTORY);
        api::Tick {
            epoch: self.epoch(),
            fleet: self.fleet.is_some().then(|| self.fleet_answer()),
            guards: self.guard_views(),
            history: history.iter().skip(skip).map(|e| e.answer()).collect(),
            points,
            status: self.status(),
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }

    /// Each guard under way, with what its judge sees now.
    fn guard_views(&self) -> BTreeMap<String, api::GuardView> {
        let snap = self.shared.snapshot.load();
        let now = Instant::now();
        let counts = |c: super::guard_watch::Seen| api::Counts {
            bad: c.errors.bad,
            requests: c.errors.total,
            slow: c.slow.bad,
        };
        self.watch
            .guards
            .iter()
            .filter_map(|(name, g)| {
                let (new, old, _) = self.guard_figures(g, snap.app(name)?);
                let view = api::GuardView {
                    epoch: g.epoch,
                    kind: g.kind.clone(),
                    new: g.new,
                    new_counts: counts(new),
                    old: g.old,
                    old_counts: counts(old),
                    remaining_seconds: g.until.saturating_duration_since(now).as_secs(),
                    window_seconds: g.window.as_secs(),
                };
                Some((name.clone(), view))
            })
            .collect()
    }
}
