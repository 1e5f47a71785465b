//! Upstream response deadlines (`upstream_response_timeout`): one timer per
//! worker, not one per request.
//!
//! A `tokio::time::timeout` per request registers an entry in tokio's timer
//! wheel and removes it again — both under the time driver's lock — for a
//! deadline that almost never fires, a measurable share of a request's
//! cost. Instead each worker keeps its waiting
//! requests in a list ordered by deadline, and one task sleeps until the
//! earliest. A request whose response head arrives unlinks itself: O(1), no
//! timer touched. Every request of a worker uses the same timeout, so a new
//! deadline is almost always the latest and goes at the tail; the timer
//! task wakes about once per timeout period under steady load (by then the
//! request it slept for has long been answered, and it sleeps again until
//! the oldest one still waiting). A deadline earlier than the tail's — the
//! timeout was shortened by a reload — is put in its place, and the timer
//! task is woken if it now comes first.
//!
//! Only the worker's own thread touches the list (`RefCell`, no lock).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::time::Instant;

const NIL: usize = usize::MAX;

/// A worker's waiting requests, earliest deadline first.
#[derive(Default)]
pub struct Deadlines {
    inner: RefCell<List>,
}

#[derive(Default)]
struct List {
    nodes: Slab<Node>,
    head: Option<usize>,
    tail: Option<usize>,
    /// The timer task, and the deadline it sleeps until (`None`: it waits
    /// for the list to get a first entry).
    timer: Option<Waker>,
    armed_for: Option<Instant>,
    /// `insert` asked the timer task to re-arm.
    kicked: bool,
}

struct Node {
    at: Instant,
    prev: usize,
    next: usize,
    /// Taken out of the list by the timer: the deadline passed.
    expired: bool,
    waker: Option<Waker>,
}

/// The request is still waiting after its deadline.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// The deadline `d` from now (a duration too long to add is 30 years,
/// as in `tokio::time::timeout`).
pub fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30))
}

/// Tells when an upstream's response deadline starts: once the request
/// is sent whole. Until then the upstream is waiting for the client (a
/// slow upload), and the time is the client's, bounded by
/// `client_body_timeout`, never the upstream's.
pub trait Sent {
    /// Has the whole request gone upstream? If not, and the news comes
    /// from another task, the polling task is woken when it has.
    fn sent(&self, cx: &Context<'_>) -> bool;
}

/// Set by cutover's HTTP/1.1 client, in the very task that waits.
impl Sent for Cell<bool> {
    fn sent(&self, _: &Context<'_>) -> bool {
        self.get()
    }
}

/// A request body that another task sends (hyper's HTTP/2 client): set
/// when the body gives its last frame, which wakes the waiting request.
#[derive(Debug, Default)]
pub struct BodySent {
    done: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl BodySent {
    pub fn set(&self) {
        self.done.store(true, Relaxed);
        self.waker.wake();
    }
}

impl Sent for BodySent {
    fn sent(&self, cx: &Context<'_>) -> bool {
        if self.done.load(Relaxed) {
            return true;
        }
        self.waker.register(cx.waker());
        self.done.load(Relaxed)
    }
}

impl Deadlines {
    /// Run `fut` until it completes or `limit` has passed since the
    /// request was sent whole (`sent`), whichever comes first (the future
    /// is polled first, so an answer that arrives with the deadline wins).
    /// A plain struct, not an `async fn`, which would hold `fut` twice (as
    /// its argument and as the pinned local it polls).
    pub fn within<'a, F: Future>(
        &'a self,
        limit: Duration,
        sent: &'a dyn Sent,
        fut: F,
    ) -> Within<'a, F> {
        Within {
            list: self,
            entry: None,
            start: Some((limit, sent)),
            fut,
        }
    }

    fn insert(&self, at: Instant) -> Entry<'_> {
        let mut list = self.inner.borrow_mut();
        let key = list.nodes.insert(Node {
            at,
            prev: NIL,
            next: NIL,
            expired: false,
            waker: None,
        });
        // From the tail back past every later deadline (none, normally).
        let mut after = list.tail;
        while let Some(a) = after {
            if list.nodes[a].at <= at {
                break;
            }
            after = Some(list.nodes[a].prev).filter(|&p| p != NIL);
        }
        let next = match after {
            Some(a) => std::mem::replace(&mut list.nodes[a].next, key),
            None => list.head.replace(key).unwrap_or(NIL),
        };
        if next == NIL {
            list.tail = Some(key);
        } else {
            list.nodes[next].prev = key;
        }
        let node = &mut list.nodes[key];
        node.prev = after.unwrap_or(NIL);
        node.next = next;
        // First in line and earlier than what the timer sleeps for (or it
        // sleeps for nothing): it must re-arm.
        if after.is_none() && list.armed_for.is_none_or(|t| at < t) && !list.kicked {
            list.kicked = true;
            if let Some(w) = &list.timer {
                w.wake_by_ref();
            }
        }
        Entry { list: self, key }
    }

    /// Expire what is due at `now`; the earliest deadline left, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut list = self.inner.borrow_mut();
        while let Some(h) = list.head {
            let node = &mut list.nodes[h];
            if node.at > now {
                return Some(node.at);
            }
            node.expired = true;
            let waker = node.waker.take();
            let next = node.next;
            list.head = (next != NIL).then_some(next);
            match list.head {
                Some(n) => list.nodes[n].prev = NIL,
                None => list.tail = None,
            }
            if let Some(w) = waker {
                w.wake();
            }
        }
        None
    }

    /// The worker's timer task: sleeps until the earliest deadline, expires
    /// what is due, and sleeps again; with nothing waiting, it waits for a
    /// first entry.
    pub async fn run(&self) {
        let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));
        loop {
            let next = self.expire(Instant::now());
            self.inner.borrow_mut().armed_for = next;
            if let Some(at) = next {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
            }
            std::future::poll_fn(|cx| {
                let mut list = self.inner.borrow_mut();
                if list.kicked {
                    list.kicked = false;
                    return Poll::Ready(());
                }
                if !list.timer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    list.timer = Some(cx.waker().clone());
                }
                drop(list);
                match next {
                    Some(_) => sleep.as_mut().poll(cx),
                    None => Poll::Pending,
                }
            })
            .await;
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.inner.borrow().nodes.len()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Deadlines::within`].
    pub struct Within<'a, F> {
        list: &'a Deadlines,
        // Entered once the request is sent.
        entry: Option<Entry<'a>>,
        // The limit, and what tells that the request is sent; `None` once
        // entered.
        start: Option<(Duration, &'a dyn Sent)>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Some((limit, sent)) = *this.start {
            if !sent.sent(cx) {
                return Poll::Pending;
            }
            *this.start = None;
            *this.entry = Some(this.list.insert(after(limit)));
        }
        match this.entry {
            Some(e) if e.expired(cx) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

/// How long a body has waited for its peer, timed only while it waits:
/// armed when a poll finds nothing, disarmed by the next data. Its timer
/// is made once, the first time a body waits, and reset after that.
#[derive(Debug, Default)]
pub struct Wait {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl Wait {
    /// The poll found nothing: has the peer been silent for `limit`?
    pub fn expired(&mut self, cx: &mut Context<'_>, limit: Duration) -> bool {
        if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now() + limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Something came.
    pub fn got(&mut self) {
        self.armed = false;
    }
}

/// One request's place in the list; leaving removes it.
struct Entry<'a> {
    list: &'a Deadlines,
    key: usize,
}

impl Entry<'_> {
    /// Has the deadline passed? If not, the polling task is woken when it
    /// does.
    fn expired(&self, cx: &Context<'_>) -> bool {
        let mut list = self.list.inner.borrow_mut();
        let node = &mut list.nodes[self.key];
        if node.expired {
            return true;
        }
        if !node.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            node.waker = Some(cx.waker().clone());
        }
        false
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut list = self.list.inner.borrow_mut();
        let node = list.nodes.remove(self.key);
        if node.expired {
            return; // the timer already unlinked it
        }
        match node.prev {
            NIL => list.head = (node.next != NIL).then_some(node.next),
            p => list.nodes[p].next = node.next,
        }
        match node.next {
            NIL => list.tail = (node.prev != NIL).then_some(node.prev),
            n => list.nodes[n].prev = node.prev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Always;
    impl Sent for Always {
        fn sent(&self, _: &Context<'_>) -> bool {
            true
        }
    }
    static SENT: Always = Always;

    #[test]
    fn the_list_stays_in_deadline_order_through_inserts_and_removals() {
        let d = Deadlines::default();
        let t0 = Instant::now();
        let late = d.insert(t0 + ms(3000));
        let early = d.insert(t0 + ms(1000)); // before the tail: walks back
        let middle = d.insert(t0 + ms(2000));
        drop(middle); // unlinked from the middle
        assert_eq!(d.expire(t0), Some(t0 + ms(1000)));
        assert_eq!(d.expire(t0 + ms(1000)), Some(t0 + ms(3000)));
        let cx = Context::from_waker(Waker::noop());
        assert!(early.expired(&cx));
        assert!(!late.expired(&cx));
        drop(early); // already out of the list
        assert_eq!(d.waiting(), 1);
        drop(late);
        assert_eq!(d.expire(t0 + ms(10_000)), None);
        assert_eq!(d.waiting(), 0);
    }

    #[tokio::test]
    async fn a_late_answer_expires_on_time_and_an_early_one_does_not() {
        let d = Deadlines::default();
        let work = async {
            let start = Instant::now();
            let slow = async {
                let r = d.within(ms(80), &SENT, std::future::pending::<()>()).await;
                (r, start.elapsed())
            };
            let fast = d.within(ms(5000), &SENT, async {
                tokio::time::sleep(ms(10)).await;
                7
            });
            let ((slow, took), fast) = tokio::join!(slow, fast);
            assert_eq!(slow, Err(Elapsed));
            assert!(took >= ms(80) && took < ms(2000), "expired after {took:?}");
            assert_eq!(fast, Ok(7));
            assert_eq!(d.waiting(), 0);
        };
        tokio::select! {
            _ = d.run() => unreachable!("the timer task runs forever"),
            r = tokio::time::timeout(Duration::from_secs(10), work) => r.unwrap(),
        }
    }

    /// The deadline runs from when the request is sent whole, not from
    /// when it began: a slow upload is not the upstream's time.
    #[tokio::test]
    async fn the_deadline_starts_once_the_request_is_sent() {
        let d = Deadlines::default();
        let work = async {
            let sent = BodySent::default();
            let start = Instant::now();
            let waiting = d.within(ms(100), &sent, std::future::pending::<()>());
            let upload = async {
                tokio::time::sleep(ms(300)).await;
                sent.set();
            };
            let (r, ()) = tokio::join!(async { (waiting.await, start.elapsed()) }, upload);
            assert_eq!(r.0, Err(Elapsed));
            assert!(
                r.1 >= ms(400),
                "expired {:?} after the start, before the upload ended + 100 ms",
                r.1
            );
            let cell = Cell::new(false);
            let never = d.within(ms(50), &cell, std::future::pending::<()>());
            assert!(
                tokio::time::timeout(ms(300), never).await.is_err(),
                "no deadline while the request is not sent"
            );
            assert_eq!(d.waiting(), 0);
        };
        tokio::select! {
            _ = d.run() => unreachable!("the timer task runs forever"),
            r = tokio::time::timeout(Duration::from_secs(10), work) => r.unwrap(),
        }
    }

    #[tokio::test]
    async fn an_earlier_deadline_re_arms_a_timer_sleeping_for_a_later_one() {
        // As after a reload that shortened the timeout.
        let d = Deadlines::default();
        let work = async {
            let long = d.within(ms(60_000), &SENT, std::future::pending::<()>());
            let short = async {
                // Let the timer task arm itself for the long deadline first.
                tokio::time::sleep(ms(20)).await;
                let start = Instant::now();
                let r = d.within(ms(50), &SENT, std::future::pending::<()>()).await;
                (r, start.elapsed())
            };
            tokio::select! {
                _ = long => unreachable!("a minute has not passed"),
                (r, took) = short => {
                    assert_eq!(r, Err(Elapsed));
                    assert!(took < ms(2000), "expired after {took:?}");
                }
            }
        };
        tokio::select! {
            _ = d.run() => unreachable!("the timer task runs forever"),
            r = tokio::time::timeout(Duration::from_secs(10), work) => r.unwrap(),
        }
    }
}
