//! One data-plane thread's state, shared by its tasks through `Rc`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use slab::Slab;
use tokio::sync::Notify;

use super::exec::LocalExec;
use super::{deadline, upstream};
use crate::control::Shared;

/// One data-plane thread's state, shared by its tasks through `Rc`.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub(super) upstreams: upstream::Upstreams,
    /// Shadow traffic's own pools: a copy never takes, holds or breaks a
    /// connection a live request could have used.
    pub(super) mirror_upstreams: upstream::Upstreams,
    /// Requests waiting for an upstream's response head.
    pub(super) deadlines: deadline::Deadlines,
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<LocalExec>,
    /// Open client connections on this worker (drain waits for zero).
    pub(super) open: Cell<usize>,
    pub(super) all_closed: Notify,
    /// Shutdown has begun: connections finish what they serve and close.
    pub(super) stopping: Cell<bool>,
    /// The task of each serving or parked connection, woken when shutdown
    /// begins. Each connection checks `stopping` when polled — a load and
    /// a comparison — where awaiting the shutdown `watch` beside hyper's
    /// connection re-polled it (a lock inside tokio) at every wake-up; a
    /// parked connection
    /// saves the 144 bytes of the `watch`'s future. The accept loop still
    /// awaits the `watch`.
    pub(super) serving: RefCell<Slab<Option<Waker>>>,
    /// HTTP/2 clients' response bodies under way, for the sweeper to find
    /// the stalled ones ([`super::response::Watched`]).
    pub(super) streams: RefCell<Vec<StreamWatch>>,
}

/// A response body the sweeper can take away from a client that stopped
/// reading it (`super::response::Watched`).
pub(super) trait Stallable {
    /// Its poll count, and whether it waits for the client to ask for the
    /// next frame; `None` once it ended.
    fn progress(&self) -> Option<(u32, bool)>;
    /// The client made no progress past its limit: let the body go.
    fn stalled(&self);
}

/// One HTTP/2 response body as the sweeper last saw it.
pub(super) struct StreamWatch {
    body: std::rc::Weak<dyn Stallable>,
    polls: u32,
    since: tokio::time::Instant,
}

impl Worker {
    /// Watch an HTTP/2 client's response body for stalling.
    pub(super) fn watch_stream(&self, body: std::rc::Weak<dyn Stallable>) {
        self.streams.borrow_mut().push(StreamWatch {
            body,
            polls: 0,
            since: tokio::time::Instant::now(),
        });
    }

    /// Take away the bodies that waited on their client past `limit`
    /// without being asked for their next frame; forget those that ended.
    pub(super) fn sweep_streams(&self, limit: Duration) {
        let now = tokio::time::Instant::now();
        let mut stalled = Vec::new();
        self.streams.borrow_mut().retain_mut(|w| {
            let Some(body) = w.body.upgrade() else {
                return false;
            };
            let Some((polls, waiting)) = body.progress() else {
                return false;
            };
            if !waiting || polls != w.polls {
                w.polls = polls;
                w.since = now;
                return true;
            }
            if now.duration_since(w.since) < limit {
                return true;
            }
            stalled.push(body);
            false
        });
        // Outside the borrow: dropping a body may end its request.
        for body in stalled {
            body.stalled();
        }
    }
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>) -> Worker {
        let limits = shared.snapshot.load().settings.limits.clone();
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // Head and idle timeouts are ours (see `io`), with a 408.
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let mut http2 = http2::Builder::new(LocalExec);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .keep_alive_interval(Some(Duration::from_secs(20)));
        Worker {
            upstreams: upstream::Upstreams::new(&limits),
            mirror_upstreams: upstream::Upstreams::new(&limits),
            deadlines: deadline::Deadlines::default(),
            shared,
            http1,
            http2,
            open: Cell::new(0),
            all_closed: Notify::new(),
            stopping: Cell::new(false),
            serving: RefCell::new(Slab::new()),
            streams: RefCell::new(Vec::new()),
        }
    }

    /// Shutdown has begun: tell every serving connection.
    pub(super) fn stop(&self) {
        self.stopping.set(true);
        let wakers: Vec<Waker> = self
            .serving
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    pub(super) fn connection_opened(self: &Rc<Self>) -> OpenConnection {
        self.open.set(self.open.get() + 1);
        self.shared.downstream_connections.fetch_add(1, Relaxed);
        OpenConnection(self.clone())
    }

    pub(super) async fn drained(&self) {
        while self.open.get() > 0 {
            let notified = self.all_closed.notified();
            if self.open.get() == 0 {
                break;
            }
            notified.await;
        }
    }
}

/// A serving or parked connection's place in [`Worker::serving`].
pub(super) struct StopWatch {
    worker: Rc<Worker>,
    key: usize,
}

impl StopWatch {
    pub(super) fn new(worker: &Rc<Worker>) -> StopWatch {
        let key = worker.serving.borrow_mut().insert(None);
        StopWatch {
            worker: worker.clone(),
            key,
        }
    }

    /// Has shutdown begun? If not, the task polling now is woken when it
    /// does.
    pub(super) fn stopping(&self, cx: &Context<'_>) -> bool {
        if self.worker.stopping.get() {
            return true;
        }
        let mut serving = self.worker.serving.borrow_mut();
        let slot = &mut serving[self.key];
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        false
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.worker.serving.borrow_mut().try_remove(self.key);
    }
}

/// Counts a worker's open client connections; dropping it uncounts.
pub struct OpenConnection(Rc<Worker>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.shared.downstream_connections.fetch_sub(1, Relaxed);
        let n = self.0.open.get() - 1;
        self.0.open.set(n);
        if n == 0 {
            self.0.all_closed.notify_waiters();
        }
    }
}
