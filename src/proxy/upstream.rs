//! Upstream connections, pooled per worker thread and per server.
//!
//! Each worker owns its pools outright (`RefCell`, no lock, no atomics):
//! a connection is only ever used by the thread that opened it, as SPEC §10
//! recommends. Idle connections are dropped — which closes them — when idle
//! past `upstream_idle_timeout`, when older than `upstream_max_lifetime`,
//! and promptly when their pool stops receiving traffic (SPEC §5 "no
//! zombies"): [`Upstreams::sweep`] runs on every snapshot swap and on a
//! short tick.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::RequestBody;
use crate::config::{Color, Limits};
use crate::route::{Server, Snapshot};

pub type Sender = http1::SendRequest<RequestBody>;

/// A connection checked out for one request.
pub struct Pooled {
    pub tx: Sender,
    pub server: Arc<Server>,
    created: Instant,
    /// Taken from the idle pool rather than freshly opened.
    pub reused: bool,
    /// When it went idle, if it came from the pool.
    idle_since: Option<Instant>,
}

impl Pooled {
    /// How long it sat idle in the pool before this request (zero if new).
    pub fn idle_for(&self) -> Duration {
        self.idle_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

struct Idle {
    tx: Sender,
    server: Arc<Server>,
    created: Instant,
    since: Instant,
}

pub struct Upstreams {
    /// Idle connections by server id, most recently used last.
    idle: RefCell<Vec<Vec<Idle>>>,
    /// By server id: does its pool receive traffic in the current snapshot?
    /// Ids past the end belong to servers newer than the last sweep.
    receiving: RefCell<Vec<bool>>,
    idle_timeout: Cell<Duration>,
    max_lifetime: Cell<Duration>,
}

impl Upstreams {
    pub fn new(limits: &Limits) -> Upstreams {
        Upstreams {
            idle: RefCell::new(Vec::new()),
            receiving: RefCell::new(Vec::new()),
            idle_timeout: Cell::new(limits.upstream_idle_timeout),
            max_lifetime: Cell::new(limits.upstream_max_lifetime),
        }
    }

    /// An idle connection to `server` that is still open and fresh enough.
    pub fn take(&self, server: &Arc<Server>) -> Option<Pooled> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(server.id)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if c.tx.is_closed()
                || now.duration_since(c.since) >= self.idle_timeout.get()
                || now.duration_since(c.created) >= self.max_lifetime.get()
            {
                continue; // dropped: the connection closes
            }
            return Some(Pooled {
                tx: c.tx,
                server: c.server,
                created: c.created,
                reused: true,
                idle_since: Some(c.since),
            });
        }
        None
    }

    /// Open a new connection to `server` (HTTP/1.1, upgrades allowed).
    pub async fn connect(&self, server: &Arc<Server>, timeout: Duration) -> io::Result<Pooled> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(server.addr)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        server.open_connections.fetch_add(1, Relaxed);
        let counted = server.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(server = %counted.addr, error = %e, "upstream connection ended");
            }
            counted.open_connections.fetch_sub(1, Relaxed);
        });
        Ok(Pooled {
            tx,
            server: server.clone(),
            created: Instant::now(),
            reused: false,
            idle_since: None,
        })
    }

    /// Give a connection back after a complete exchange, unless it is
    /// too old, broken, or its pool no longer receives traffic.
    pub fn put_back(&self, conn: Pooled) {
        let now = Instant::now();
        if conn.tx.is_closed()
            || now.duration_since(conn.created) >= self.max_lifetime.get()
            || !self.receives(conn.server.id)
        {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let id = conn.server.id;
        if idle.len() <= id {
            idle.resize_with(id + 1, Vec::new);
        }
        idle[id].push(Idle {
            tx: conn.tx,
            server: conn.server,
            created: conn.created,
            since: now,
        });
    }

    fn receives(&self, id: usize) -> bool {
        self.receiving.borrow().get(id).copied().unwrap_or(true)
    }

    /// Close what must not stay open under `snap`: idle connections past
    /// their idle timeout or lifetime, and every idle connection to a pool
    /// that no longer receives traffic or a server that left the config.
    pub fn sweep(&self, snap: &Snapshot) {
        self.idle_timeout
            .set(snap.settings.limits.upstream_idle_timeout);
        self.max_lifetime
            .set(snap.settings.limits.upstream_max_lifetime);
        let mut receiving = self.receiving.borrow_mut();
        receiving.iter_mut().for_each(|r| *r = false);
        for app in &snap.apps {
            for color in Color::ALL {
                let on = app.receives_traffic(color);
                for s in &app.pool(color).servers {
                    if receiving.len() <= s.id {
                        receiving.resize(s.id + 1, false);
                    }
                    receiving[s.id] = on;
                }
            }
        }
        let now = Instant::now();
        let (idle_timeout, lifetime) = (self.idle_timeout.get(), self.max_lifetime.get());
        let mut idle = self.idle.borrow_mut();
        for (id, list) in idle.iter_mut().enumerate() {
            let keep = receiving.get(id).copied().unwrap_or(false);
            list.retain(|c| {
                keep && !c.tx.is_closed()
                    && now.duration_since(c.since) < idle_timeout
                    && now.duration_since(c.created) < lifetime
            });
        }
    }

    /// Drop every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}
