//! The routing table: one immutable [`Snapshot`] per state of the world,
//! and the routing decision of SPEC §4 made against it.
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

pub use snapshot::{App, AppState, ColorStats, Pool, Server, Settings, Snapshot};

use crate::config::Color;

/// The outcome of [`App::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub color: Color,
    /// Set when the sticky cookie was missing and the app needs one: the
    /// fresh id to send back in `Set-Cookie`.
    pub new_cookie: Option<sticky::CookieId>,
}
