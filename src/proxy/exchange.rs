//! One request's bookkeeping, from the moment hyper hands it to us until
//! its response body has been sent (or abandoned).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::io::ConnState;
use super::upstream::Pooled;
use super::Worker;
use crate::route::{Pool, Server};

/// Dropped when the request ends. It undoes the in-flight counts, records
/// the response, and gives the upstream connection back to the worker's
/// pool if — and only if — the response was read to its end.
pub struct Exchange {
    worker: Rc<Worker>,
    conn: Arc<ConnState>,
    start: Instant,
    target: Option<(Arc<Pool>, Arc<Server>)>,
    status: u16,
    upstream: Option<Pooled>,
    complete: Cell<bool>,
}

impl Exchange {
    pub fn begin(worker: Rc<Worker>, conn: Arc<ConnState>) -> Exchange {
        conn.request_started();
        Exchange {
            worker,
            conn,
            start: Instant::now(),
            target: None,
            status: 0,
            upstream: None,
            complete: Cell::new(false),
        }
    }

    /// The request is bound to `server` of `pool`: count it in flight there.
    pub fn bind(&mut self, pool: &Arc<Pool>, server: &Arc<Server>) {
        if let Some((_, old)) = &self.target {
            old.in_flight.fetch_sub(1, Relaxed);
        } else {
            pool.stats.in_flight.fetch_add(1, Relaxed);
        }
        server.in_flight.fetch_add(1, Relaxed);
        self.target = Some((pool.clone(), server.clone()));
    }

    pub fn server(&self) -> Option<&Arc<Server>> {
        self.target.as_ref().map(|(_, s)| s)
    }

    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.target.as_ref().map(|(p, _)| p)
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_upstream(&mut self, conn: Pooled) {
        self.upstream = Some(conn);
    }

    pub fn take_upstream(&mut self) -> Option<Pooled> {
        self.upstream.take()
    }

    pub fn mark_complete(&self) {
        self.complete.set(true);
    }

    pub fn finish(self, complete: bool) {
        if complete {
            self.complete.set(true);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.request_ended();
        let elapsed = self.start.elapsed();
        if let Some((pool, server)) = &self.target {
            server.in_flight.fetch_sub(1, Relaxed);
            pool.stats.in_flight.fetch_sub(1, Relaxed);
            if self.status != 0 {
                pool.stats.record(self.status, elapsed);
            }
            tracing::debug!(
                app = %server.app,
                color = %server.color,
                server = %server.addr,
                status = self.status,
                micros = elapsed.as_micros() as u64,
                complete = self.complete.get(),
                "request"
            );
        } else {
            tracing::debug!(
                status = self.status,
                micros = elapsed.as_micros() as u64,
                "request not forwarded"
            );
        }
        if let Some(up) = self.upstream.take() {
            if self.complete.get() {
                self.worker.upstreams.put_back(up);
            }
        }
    }
}
