//! How long a client connection may take, for the proxy's listeners and
//! the admin API alike: the phases of an HTTP/1 connection and the
//! deadline of each.
//!
//! - a connection just accepted must send a complete request head within
//!   `header_timeout` of the accept (or be closed: silently if it sent
//!   nothing);
//! - a head that begins on a connection idle between requests must be
//!   complete within `header_timeout` of its first bytes;
//! - while a request is served no client timeout of this kind applies;
//! - between requests a connection idles for at most `idle_timeout`.
//!
//! Pure state: the caller reads the clock and runs the timer (the proxy
//! re-arms its timer lazily; the admin API sleeps until [`ConnTimeouts::deadline`]).

use std::time::Duration;

use tokio::time::Instant;

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing read yet; the first head is due `header_timeout`
    /// after the accept.
    Fresh,
    /// Part of a request head has arrived.
    Head,
    /// A request is being served.
    Busy,
    /// Between requests.
    Idle,
}

/// What ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A fresh connection sent nothing in time.
    Silent,
    /// A request head began and did not end in time.
    Head,
    /// An idle connection sent no next request in time.
    Idle,
}

/// One connection's phase and when it must end.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    phase: Phase,
    /// When the current phase times out (unused while busy).
    deadline: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnTimeouts {
    /// A connection accepted at `now`.
    pub fn new(now: Instant, header_timeout: Duration, idle_timeout: Duration) -> ConnTimeouts {
        ConnTimeouts {
            phase: Phase::Fresh,
            deadline: after(now, header_timeout),
            header_timeout,
            idle_timeout,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// When the current phase times out; `None` while a request is served.
    pub fn deadline(&self) -> Option<Instant> {
        (self.phase != Phase::Busy).then_some(self.deadline)
    }

    /// Bytes arrived on a connection that was fresh or idle: a request head
    /// has begun. A fresh connection's head is still due from the accept;
    /// an idle one's from now (the clock is read only then).
    pub fn head_began(&mut self, now: impl FnOnce() -> Instant) {
        match self.phase {
            Phase::Fresh => self.phase = Phase::Head,
            Phase::Idle => {
                self.phase = Phase::Head;
                self.deadline = after(now(), self.header_timeout);
            }
            Phase::Head | Phase::Busy => {}
        }
    }

    /// A request is being served.
    pub fn busy(&mut self) {
        self.phase = Phase::Busy;
    }

    /// Between requests from `now` (a request ended; or, on HTTP/2, the
    /// preface came and requests come as streams).
    pub fn idle(&mut self, now: Instant) {
        self.phase = Phase::Idle;
        self.deadline = after(now, self.idle_timeout);
    }

    /// Has the current phase's deadline passed at `now`? What ran out.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        if self.phase == Phase::Busy || now < self.deadline {
            return None;
        }
        Some(match self.phase {
            Phase::Fresh => Expired::Silent,
            Phase::Head => Expired::Head,
            Phase::Idle | Phase::Busy => Expired::Idle,
        })
    }
}

/// `d` after `now` (a duration too long to add is 30 years).
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn a_fresh_connections_head_is_due_from_the_accept_and_silence_is_told_apart() {
        let t0 = Instant::now();
        let mut t = ConnTimeouts::new(t0, HEAD, IDLE);
        assert_eq!(t.expired(t0 + HEAD), Some(Expired::Silent));
        t.head_began(|| panic!("a fresh head keeps the accept's deadline"));
        assert_eq!(t.phase(), Phase::Head);
        assert_eq!(t.expired(t0 + HEAD - Duration::from_millis(1)), None);
        assert_eq!(t.expired(t0 + HEAD), Some(Expired::Head));
    }

    #[test]
    fn a_served_request_has_no_deadline_and_idling_after_it_does() {
        let t0 = Instant::now();
        let mut t = ConnTimeouts::new(t0, HEAD, IDLE);
        t.busy();
        assert_eq!(t.deadline(), None);
        assert_eq!(t.expired(t0 + IDLE * 10), None);
        let t1 = t0 + Duration::from_secs(100);
        t.idle(t1);
        assert_eq!(t.deadline(), Some(t1 + IDLE));
        assert_eq!(t.expired(t1 + IDLE), Some(Expired::Idle));
    }

    #[test]
    fn a_head_on_an_idle_connection_is_due_from_its_first_bytes() {
        let t0 = Instant::now();
        let mut t = ConnTimeouts::new(t0, HEAD, IDLE);
        t.idle(t0);
        let t1 = t0 + Duration::from_secs(30);
        t.head_began(|| t1);
        assert_eq!(t.deadline(), Some(t1 + HEAD));
        assert_eq!(t.expired(t1 + HEAD), Some(Expired::Head));
    }

    #[test]
    fn a_timeout_too_long_to_add_is_far_away() {
        let t = ConnTimeouts::new(Instant::now(), Duration::MAX, Duration::MAX);
        assert!(t.deadline().is_some());
    }
}
