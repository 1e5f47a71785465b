//! Upstream connections, pooled per worker thread and per server.
//!
//! Each worker owns its pools outright (`RefCell`, no lock, no atomics):
//! a connection is only ever used by the thread that opened it, as the design
//! recommends. Idle connections are dropped — which closes them — when idle
//! past `upstream_idle_timeout`, when older than `upstream_max_lifetime`,
//! and promptly when their pool stops receiving traffic: [`Upstreams::sweep`] runs on every snapshot swap and on a
//! short tick. "Promptly" is after a [`GRACE`] of half a second, so that a
//! change undone at once (a flip and a flip back) reuses the connections
//! instead of reopening them all; they are closed by the first sweep after
//! it, within a second of the change.
//!
//! Pools with `protocol = "h2"` keep one multiplexed HTTP/2 (h2c)
//! connection per server per worker instead, shared by every request.
//!
//! A pool also shrinks to its demand: connections that sat idle through a
//! whole [`TRIM_EVERY`] interval were not needed, and half of them (the
//! longest idle) are closed at the end of it. After a burst of clients the
//! surplus is gone within a few seconds instead of lingering until
//! `upstream_idle_timeout` — each idle HTTP/1.1 connection holds a socket
//! and a read buffer of up to 8 KiB — while a steady load keeps every
//! connection it uses.
//!
//! HTTP/1.1 connections are cutover's own client's ([`super::h1`]), for
//! every request, over plain TCP or TLS alike ([`crate::tls::Stream`]).
//!
//! A pool that sends PROXY headers (`send_proxy_protocol`) keeps its idle
//! connections like any other, but [`Upstreams::take`] gives one only to
//! the client (address and port) its header named: the header speaks for
//! the whole connection, so another client's requests must not ride it.
//! Other clients open their own; the idle timeout and trimming close what
//! no client comes back for.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use super::body::RequestBody;
use super::exec::LocalExec;
use super::h1::{Conn, Counted};
use crate::config::{Color, Limits, Protocol};
use crate::route::{App, Server, Snapshot};

/// How long a pool that stopped receiving traffic keeps its idle
/// connections.
pub const GRACE: Duration = Duration::from_millis(500);

/// How often pools are trimmed to their demand: idle connections not
/// needed during a whole interval are surplus, half of them closed.
const TRIM_EVERY: Duration = Duration::from_millis(500);

/// The sending half of an upstream connection.
pub enum Sender {
    /// cutover's own HTTP/1.1 client, driven in the request's task.
    /// Boxed: it is moved with every pooled connection, and a box is one
    /// allocation per connection where its size would be paid per request.
    H1(Box<Conn>),
    /// A clone of the worker's shared HTTP/2 connection to the server.
    H2(http2::SendRequest<RequestBody>),
}

impl Sender {
    pub fn is_closed(&mut self) -> bool {
        match self {
            Sender::H1(c) => c.is_closed(),
            Sender::H2(tx) => tx.is_closed(),
        }
    }

    /// The client an HTTP/1.1 connection's PROXY header named, if any.
    fn proxied_for(&self) -> Option<SocketAddr> {
        match self {
            Sender::H1(c) => c.proxied_for,
            Sender::H2(_) => None,
        }
    }
}

/// A worker's HTTP/2 connection to one server.
struct Shared2 {
    tx: http2::SendRequest<RequestBody>,
    created: Instant,
    last_used: Instant,
}

/// A connection checked out for one request.
pub struct Pooled {
    pub tx: Sender,
    pub lease: Lease,
}

/// Where a checked-out connection goes and where it came from, kept apart
/// from the connection while a response body holds it.
pub struct Lease {
    pub server: Arc<Server>,
    created: Instant,
    /// Taken from the idle pool rather than freshly opened.
    pub reused: bool,
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
    /// By server id: the fewest idle connections seen since the last
    /// trim — that many were not needed in the interval.
    unused: RefCell<Vec<usize>>,
    /// When pools were last trimmed to their demand.
    trimmed: Cell<Instant>,
    /// HTTP/2 connections by server id.
    h2: RefCell<Vec<Option<Shared2>>>,
    /// By server id: does its pool receive traffic in the current snapshot?
    /// Ids past the end belong to servers newer than the last sweep.
    receiving: RefCell<Vec<bool>>,
    /// By server id: when its pool stopped receiving traffic, for the
    /// [`GRACE`] its idle connections are kept.
    stopped: RefCell<Vec<Option<Instant>>>,
    idle_timeout: Cell<Duration>,
    max_lifetime: Cell<Duration>,
}

impl Upstreams {
    pub fn new(limits: &Limits) -> Upstreams {
        Upstreams {
            idle: RefCell::new(Vec::new()),
            unused: RefCell::new(Vec::new()),
            trimmed: Cell::new(Instant::now()),
            h2: RefCell::new(Vec::new()),
            receiving: RefCell::new(Vec::new()),
            stopped: RefCell::new(Vec::new()),
            idle_timeout: Cell::new(limits.upstream_idle_timeout),
            max_lifetime: Cell::new(limits.upstream_max_lifetime),
        }
    }

    /// An idle connection to `server` that is still open and fresh enough,
    /// most recently used first (for HTTP/2: the shared connection). `now`:
    /// the request's start, read once for all its bookkeeping. `peer`: the
    /// client; a pool that sends the PROXY header gives it only a
    /// connection whose header named it.
    pub fn take(&self, server: &Arc<Server>, now: Instant, peer: SocketAddr) -> Option<Pooled> {
        if server.protocol == Protocol::H2 {
            let mut h2 = self.h2.borrow_mut();
            let slot = h2.get_mut(server.id)?;
            match slot {
                Some(c)
                    if !c.tx.is_closed()
                        && now.duration_since(c.created) < self.max_lifetime.get() =>
                {
                    c.last_used = now;
                    return Some(Pooled {
                        tx: Sender::H2(c.tx.clone()),
                        lease: Lease {
                            server: server.clone(),
                            created: c.created,
                            reused: true,
                        },
                    });
                }
                _ => {
                    *slot = None;
                    return None;
                }
            }
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(server.id)?;
        let proxied = server.transport.proxy_protocol.is_some();
        let found = loop {
            let next = if proxied {
                list.iter()
                    .rposition(|c| c.tx.proxied_for() == Some(peer))
                    .map(|i| list.remove(i))
            } else {
                list.pop()
            };
            let Some(mut c) = next else {
                break None;
            };
            if c.tx.is_closed()
                || now.duration_since(c.since) >= self.idle_timeout.get()
                || now.duration_since(c.created) >= self.max_lifetime.get()
            {
                continue; // dropped: the connection closes
            }
            break Some(c);
        };
        if let Some(u) = self.unused.borrow_mut().get_mut(server.id) {
            *u = (*u).min(list.len());
        }
        found.map(|c| Pooled {
            tx: c.tx,
            lease: Lease {
                server: c.server,
                created: c.created,
                reused: true,
            },
        })
    }

    /// Open a new connection to `server` ([`open`]) for the pool; an
    /// HTTP/2 one becomes the server's shared connection. `client`: the
    /// client's address and the listener's, for a PROXY header.
    pub async fn connect(
        &self,
        server: &Arc<Server>,
        timeout: Duration,
        client: (SocketAddr, SocketAddr),
    ) -> io::Result<Pooled> {
        let proxied = server.transport.proxy_protocol.is_some().then_some(client);
        let tx = open(server, timeout, proxied, Counting::Yes).await?;
        let now = Instant::now();
        if let Sender::H2(tx) = &tx {
            let mut h2 = self.h2.borrow_mut();
            if h2.len() <= server.id {
                h2.resize_with(server.id + 1, || None);
            }
            h2[server.id] = Some(Shared2 {
                tx: tx.clone(),
                created: now,
                last_used: now,
            });
        }
        Ok(Pooled {
            tx,
            lease: Lease {
                server: server.clone(),
                created: now,
                reused: false,
            },
        })
    }

    /// Give a connection back after a complete exchange, unless it is
    /// too old, broken, or its pool no longer receives traffic. `now`: the
    /// exchange's end.
    pub fn put_back(&self, conn: Pooled, now: Instant) {
        let Pooled { tx, lease } = conn;
        if matches!(tx, Sender::H2(_)) {
            return; // the shared connection stays in its slot
        }
        // (A whole response has just been read off the connection: `take`
        // looks at it again before its next use.)
        if now.duration_since(lease.created) >= self.max_lifetime.get()
            || !self.wanted(lease.server.id, now)
        {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let id = lease.server.id;
        if idle.len() <= id {
            idle.resize_with(id + 1, Vec::new);
        }
        idle[id].push(Idle {
            tx,
            server: lease.server,
            created: lease.created,
            since: now,
        });
    }

    /// May connections to server `id` be kept? Yes while its pool receives
    /// traffic (or the server is newer than the last sweep), and for
    /// [`GRACE`] after it stopped.
    fn wanted(&self, id: usize, now: Instant) -> bool {
        self.receiving.borrow().get(id).copied().unwrap_or(true)
            || self
                .stopped
                .borrow()
                .get(id)
                .copied()
                .flatten()
                .is_some_and(|t| now.duration_since(t) < GRACE)
    }

    /// Close what must not stay open under `snap`: idle connections past
    /// their idle timeout or lifetime, and every idle connection to a pool
    /// that no longer receives traffic or a server that left the config.
    /// `sends(app, colour)`: does this set of pools send that pool requests
    /// now — real traffic for the live requests' pools, copies for the
    /// mirror's.
    pub fn sweep(&self, snap: &Snapshot, sends: fn(&App, Color) -> bool) {
        self.idle_timeout
            .set(snap.settings.limits.upstream_idle_timeout);
        self.max_lifetime
            .set(snap.settings.limits.upstream_max_lifetime);
        let mut receiving = self.receiving.borrow_mut();
        let before = receiving.clone();
        receiving.iter_mut().for_each(|r| *r = false);
        for app in &snap.apps {
            for color in Color::ALL {
                let on = sends(app, color);
                let pool = app.pool(color);
                for (i, s) in pool.servers.iter().enumerate() {
                    if receiving.len() <= s.id {
                        receiving.resize(s.id + 1, false);
                    }
                    // A drained server's idle connections close too.
                    receiving[s.id] = on && pool.in_rotation(i);
                }
            }
        }
        // Servers that left the config receive nothing either.
        let known = self.idle.borrow().len().max(self.h2.borrow().len());
        if receiving.len() < known {
            receiving.resize(known, false);
        }
        let now = Instant::now();
        {
            let mut stopped = self.stopped.borrow_mut();
            stopped.resize(receiving.len(), None);
            for (id, on) in receiving.iter().enumerate() {
                if *on {
                    stopped[id] = None;
                } else if before.get(id).copied().unwrap_or(true) && stopped[id].is_none() {
                    stopped[id] = Some(now);
                }
            }
        }
        drop(receiving);
        let (idle_timeout, lifetime) = (self.idle_timeout.get(), self.max_lifetime.get());
        let mut idle = self.idle.borrow_mut();
        let mut unused = self.unused.borrow_mut();
        unused.resize(idle.len(), 0);
        // Sweeps also run on every swap; the surplus is judged over a whole
        // interval, not over the moments between two quick changes.
        let trim = now.duration_since(self.trimmed.get()) >= TRIM_EVERY;
        if trim {
            self.trimmed.set(now);
        }
        for (id, list) in idle.iter_mut().enumerate() {
            let keep = self.wanted(id, now);
            // The list is oldest first: close half of the surplus from the
            // front, then what is closed, timed out or not wanted.
            if trim {
                let surplus = unused[id].min(list.len()).div_ceil(2);
                list.drain(..surplus);
            }
            list.retain_mut(|c| {
                keep && !c.tx.is_closed()
                    && now.duration_since(c.since) < idle_timeout
                    && now.duration_since(c.created) < lifetime
            });
            unused[id] = if trim {
                list.len()
            } else {
                unused[id].min(list.len())
            };
        }
        // A shared HTTP/2 connection goes the same way; requests still in
        // flight on it hold their own handles and finish first.
        for (id, slot) in self.h2.borrow_mut().iter_mut().enumerate() {
            let keep = self.wanted(id, now);
            if slot.as_ref().is_some_and(|c| {
                !keep
                    || c.tx.is_closed()
                    || now.duration_since(c.last_used) >= idle_timeout
                    || now.duration_since(c.created) >= lifetime
            }) {
                *slot = None;
            }
        }
    }

    /// Drop every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
        self.h2.borrow_mut().clear();
    }
}

/// Is a connection counted in its server's `open_connections`? Traffic's
/// are (they show a pool draining); a health probe's are not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    Yes,
    No,
}

/// A new connection to `server`, as every request, copy and probe gets
/// one: TCP, the PROXY header naming `proxied` (or no one) if the pool
/// sends one, TLS if it uses it — `timeout` bounds those together — and
/// then cutover's HTTP/1.1 client, or an HTTP/2 handshake (h2c, or h2
/// over TLS) whose connection runs in a task of its own.
pub async fn open(
    server: &Arc<Server>,
    timeout: Duration,
    proxied: Option<(SocketAddr, SocketAddr)>,
    counting: Counting,
) -> io::Result<Sender> {
    let open = crate::tls::connect(server.addr, &server.transport, proxied);
    let stream = match tokio::time::timeout(timeout, open).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    let counted = (counting == Counting::Yes).then(|| Counted::new(server));
    if server.protocol != Protocol::H2 {
        let conn = Conn::new(stream, counted, proxied.map(|c| c.0));
        return Ok(Sender::H1(Box::new(conn)));
    }
    let (tx, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let addr = server.addr;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(server = %addr, error = %e, "upstream h2 connection ended");
        }
        drop(counted);
    });
    Ok(Sender::H2(tx))
}
