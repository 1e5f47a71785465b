//! The routing table: one immutable [`Snapshot`] per state of the world,
//! and the routing decision made against it.
//!
//! Pure data and pure functions — no I/O. The request path loads the
//! snapshot once ([`crate::control::Shared::snapshot`]) and calls
//! [`Snapshot::find_app`], [`App::decide`] and [`Pool::pick`]. Long-lived
//! objects whose state must survive a swap (servers with their health and
//! counters, per-colour statistics) are `Arc`s that successive snapshots
//! share.

pub mod rule;
pub mod snapshot;
pub mod sticky;

pub use snapshot::{App, AppState, ColorStats, Pool, Server, Settings, Snapshot, Timeout};

use crate::config::Color;

/// Does `path` lie under `prefix`, by whole segments? `/api` takes `/api`,
/// `/api/` and `/api/x`, not `/apiary`; a prefix that ends in `/` matches
/// as written.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// The outcome of [`App::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub color: Color,
    /// Set when the sticky cookie was missing and the app needs one: the
    /// fresh id to send back in `Set-Cookie`.
    pub new_cookie: Option<sticky::CookieId>,
}

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
