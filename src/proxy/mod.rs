//! The data plane — everything that runs per request.
//!
//! Each worker thread runs a current-thread tokio runtime with its own
//! listening sockets (`SO_REUSEPORT` twins when the daemon bound them) and
//! its own upstream connection pools. The only things a request touches
//! that other threads see are the read-only [`crate::route::Snapshot`] and
//! atomic counters.
//!
//! - [`worker`]: one thread's state — pools, timers, open connections;
//! - [`conn`]: accept, `max_connections`, serve HTTP/1.1 + h2c, drain;
//! - [`io`]: what a client connection shares, its header and idle timeouts;
//! - [`handler`]: the request phases, route → forward → respond;
//! - [`request`]: Host, target and path checks before routing;
//! - [`headers`]: hop-by-hop removal and `X-Forwarded-*`;
//! - [`edits`]: an app's header rules and path rewriting, applied;
//! - [`h1`]: the HTTP/1.1 upstream client (codec, connection);
//! - [`upstream`]: per-worker, per-server connection pools, and opening
//!   a connection;
//! - [`session`]: the one way to a server — take or connect, a fresh
//!   connection to send again, a health probe — for live requests,
//!   mirrored copies and health checks alike;
//! - [`mirror`]: shadow traffic — copies of sampled live requests sent to
//!   the standby colour from detached tasks, on pools of their own, and
//!   compared with the live answers;
//! - [`body`], [`response`], [`exchange`]: the request body going up, the
//!   response body coming back, and per-request accounting;
//! - [`compress`]: gzip, brotli and zstd of responses, by `Accept-Encoding`;
//! - [`deadline`]: upstream response deadlines, one timer per worker;
//! - [`tunnel`]: upgraded (WebSocket) and `CONNECT` connections;
//! - [`error`]: proxy errors → status codes.
//!
//! Imports go one way, from the handler down to the codec:
//! `conn → handler → {response → exchange → upstream → h1::conn →
//! h1::codec}`, and `handler → mirror → {exchange, body, upstream, h1}`,
//! each also free to use the leaves `headers`, `io`, `deadline`, `error`,
//! `request`, `compress`, `edits` and `worker`.

mod access;
pub mod body;
mod compress;
mod conn;
mod deadline;
mod edits;
pub mod error;
mod exchange;
mod exec;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod handler;
pub mod headers;
pub mod io;
mod mirror;
mod proxy_protocol;
mod request;
mod response;
pub mod session;
mod tunnel;
mod upstream;
mod worker;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::control::Shared;
use worker::Worker;

/// Run one worker on the current thread until shutdown and drain.
/// `listeners` are this worker's own sockets.
pub fn run_worker(
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, bool)>,
) -> std::io::Result<()> {
    // Tokio looks for ready sockets every 61 task polls by default; with
    // many large bodies being written, a new connection or an upstream's
    // answer waits long to be noticed. Every 8 polls,
    // a new request waits for a few slices of each busy body instead
    // (what it costs and gains: benches/README.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .event_interval(8)
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
        worker.mirror_upstreams.clear();
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
        worker
            .upstreams
            .sweep(&snap, |app, color| app.receives_traffic(color));
        worker
            .mirror_upstreams
            .sweep(&snap, |app, color| app.mirrors_to(color));
        let limits = &snap.settings.limits;
        worker.sweep_streams(limits.client_send_timeout);
        let tick = (limits.upstream_idle_timeout.min(limits.client_send_timeout) / 4)
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        drop(snap);
        tokio::select! {
            _ = swapped.changed() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}
