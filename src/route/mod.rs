//! The routing table: one immutable [`Snapshot`] per state of the world,
//! and the routing decision made against it.
//!
//! Pure data and pure functions — no I/O, no caches of its own. The
//! request path loads the snapshot once (from the control plane's
//! `ArcSwap`) and calls [`Snapshot::find_app`], [`App::decide`] and
//! [`Pool::pick`]. What a decision may remember between requests lives in
//! the caller's [`rule::ConnMemo`], one per client connection. Long-lived
//! objects whose state must survive a swap (servers with their health and
//! counters, per-colour statistics, shadow traffic's counts in [`mirror`],
//! the rate limiters of an app and its rules in [`rate`], its remembered
//! logins in [`access`]) are `Arc`s that successive snapshots share.

pub mod access;
pub mod mirror;
pub mod rate;
pub mod rule;
pub mod snapshot;
pub mod sticky;

pub use rule::under_prefix;
pub use snapshot::{
    App, AppState, ColorStats, Decision, Pool, Server, Settings, Snapshot, Timeout,
};

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_match_whole_segments() {
        use super::under_prefix;
        assert!(under_prefix("/api", "/api"));
        assert!(under_prefix("/api/", "/api"));
        assert!(under_prefix("/api/x", "/api"));
        assert!(!under_prefix("/apiary", "/api"));
        assert!(!under_prefix("/ap", "/api"));
        assert!(under_prefix("/anything", "/"));
        assert!(under_prefix("/api/x", "/api/"));
        assert!(!under_prefix("/api", "/api/"));
    }
}
