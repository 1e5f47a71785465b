//! The data plane — everything that runs per request.
//!
//! Each worker thread runs a current-thread tokio runtime with its own
//! listening sockets (`SO_REUSEPORT` twins when the daemon bound them) and
//! its own upstream connection pools. The only things a request touches
//! that other threads see are the read-only [`crate::route::Snapshot`] and
//! atomic counters.
//!
//! - [`conn`]: accept, `max_connections`, serve HTTP/1.1 + h2c, drain;
//! - [`io`]: client header and idle timeouts on the socket;
//! - [`deadline`]: upstream response deadlines, one timer per worker;
//! - [`handler`]: the request phases, route → forward → respond;
//! - [`request`]: Host, target and path checks before routing;
//! - [`headers`]: hop-by-hop removal and `X-Forwarded-*`;
//! - [`upstream`]: per-worker, per-server connection pools;
//! - [`body`], [`exchange`]: streaming bodies and per-request accounting;
//! - [`tunnel`]: upgraded (WebSocket) connections;
//! - [`error`]: proxy errors → status codes.

pub mod body;
mod conn;
mod deadline;
pub mod error;
mod exchange;
mod h1;
mod handler;
pub mod headers;
pub mod io;
mod request;
mod tunnel;
mod upstream;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use slab::Slab;
use tokio::sync::Notify;

use crate::control::Shared;

/// Runs hyper's background tasks (HTTP/2 streams) on the worker's own
/// thread, so they may hold thread-local state.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// One data-plane thread's state, shared by its tasks through `Rc`.
pub struct Worker {
    pub shared: Arc<Shared>,
    upstreams: upstream::Upstreams,
    /// Requests waiting for an upstream's response head.
    deadlines: deadline::Deadlines,
    http: auto::Builder<LocalExec>,
    /// Open client connections on this worker (drain waits for zero).
    open: Cell<usize>,
    all_closed: Notify,
    /// Shutdown has begun: connections finish what they serve and close.
    stopping: Cell<bool>,
    /// The task of each serving or parked connection, woken when shutdown
    /// begins. Each connection checks `stopping` when polled — a load and
    /// a comparison — where awaiting the shutdown `watch` beside hyper's
    /// connection re-polled it (a lock inside tokio) at every wake-up; a
    /// parked connection
    /// saves the 144 bytes of the `watch`'s future. The accept loop still
    /// awaits the `watch`.
    serving: RefCell<Slab<Option<Waker>>>,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Worker {
        let limits = shared.snapshot.load().settings.limits.clone();
        let mut http = auto::Builder::new(LocalExec);
        http.http1()
            .timer(TokioTimer::new())
            // Head and idle timeouts are ours (see `io`), with a 408.
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(limits.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .keep_alive_interval(Some(Duration::from_secs(20)));
        Worker {
            upstreams: upstream::Upstreams::new(&limits),
            deadlines: deadline::Deadlines::default(),
            shared,
            http,
            open: Cell::new(0),
            all_closed: Notify::new(),
            stopping: Cell::new(false),
            serving: RefCell::new(Slab::new()),
        }
    }

    /// Shutdown has begun: tell every serving connection.
    fn stop(&self) {
        self.stopping.set(true);
        let wakers: Vec<Waker> = self
            .serving
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn connection_opened(self: &Rc<Self>) -> conn::OpenConnection {
        self.open.set(self.open.get() + 1);
        self.shared.downstream_connections.fetch_add(1, Relaxed);
        conn::OpenConnection(self.clone())
    }

    async fn drained(&self) {
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
struct StopWatch {
    worker: Rc<Worker>,
    key: usize,
}

impl StopWatch {
    fn new(worker: &Rc<Worker>) -> StopWatch {
        let key = worker.serving.borrow_mut().insert(None);
        StopWatch {
            worker: worker.clone(),
            key,
        }
    }

    /// Has shutdown begun? If not, the task polling now is woken when it
    /// does.
    fn stopping(&self, cx: &Context<'_>) -> bool {
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

/// Run one worker on the current thread until shutdown and drain.
/// `listeners` are this worker's own sockets.
pub fn run_worker(
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, bool)>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let worker = Rc::new(Worker::new(shared.clone()));
        for (l, tls) in listeners {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::task::spawn_local(conn::accept_loop(worker.clone(), l, tls));
        }
        tokio::task::spawn_local(sweeper(worker.clone()));
        let timer = worker.clone();
        tokio::task::spawn_local(async move { timer.deadlines.run().await });
        let mut shutdown = shared.shutdown.subscribe();
        let _ = shutdown.wait_for(|stop| *stop).await;
        worker.stop();
        let grace = shared.shutdown_timeout;
        if tokio::time::timeout(grace, worker.drained()).await.is_err() {
            tracing::warn!(
                open = worker.open.get(),
                "shutdown timeout reached; closing remaining connections"
            );
        }
        worker.upstreams.clear();
        Ok(())
    })
}

/// Closes idle upstream connections that must not stay open: at once when
/// a new snapshot is stored, and on a short tick for idle timeouts.
async fn sweeper(worker: Rc<Worker>) {
    let mut swapped = worker.shared.swapped.subscribe();
    let mut shutdown = worker.shared.shutdown.subscribe();
    loop {
        let snap = worker.shared.snapshot.load_full();
        worker.upstreams.sweep(&snap);
        let tick = (snap.settings.limits.upstream_idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        drop(snap);
        tokio::select! {
            _ = swapped.changed() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}
