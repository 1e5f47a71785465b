//! Upgraded connections (WebSocket and other `Upgrade` protocols, RFC 9110
//! §7.8) and `CONNECT` tunnels: after the upstream's `101 Switching
//! Protocols` (or 2xx to `CONNECT`) both sides are joined byte for byte
//! until either closes, or until no byte went either way for
//! `tunnel_idle_timeout`.
//!
//! A flip does not cut a tunnel: it stays on the server it was opened to.
//! But a tunnel to a pool that no longer receives any traffic is closed
//! `drain_timeout` after the pool lost it (if the app sets one), so that
//! no connection to a retired pool lives forever; traffic coming back
//! before then cancels the countdown.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::exchange::TunnelLog;
use super::h1;
use super::io::ConnInfo;
use crate::control::Shared;
use crate::route::{Pool, Server, Timeout};

/// Join the client and upstream sides once the client's upgrade completes
/// (hyper has sent it the `101` or the 2xx to `CONNECT`). The upstream
/// side is the connection `conn` switched, with what was read past the
/// upstream's head (`early`), which goes to the client first.
/// `info` keeps the client connection's `max_connections` slot (and its
/// place among the worker's open connections) for the tunnel's life;
/// `log`, the request's access log line, is written when the tunnel closes.
pub fn spawn(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    server: Arc<Server>,
    client: OnUpgrade,
    conn: h1::Conn,
    info: Rc<ConnInfo>,
    log: Option<TunnelLog>,
) {
    let (upstream, early, counted) = conn.into_tunnel();
    let idle_limit = shared.snapshot.load().settings.limits.tunnel_idle_timeout;
    tokio::task::spawn_local(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                if let Some(log) = log {
                    log.write(0, 0);
                }
                return;
            }
        };
        let last = Rc::new(Cell::new(Instant::now()));
        let mut client = Active::new(TokioIo::new(client), &last);
        let mut upstream = Active::new(upstream, &last);
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                tracing::debug!(error = %e, "tunnel closed");
                if let Some(log) = log {
                    log.write(client.written, 0);
                }
                return;
            }
        }
        pool.stats.tunnels.fetch_add(1, Relaxed);
        let app = server.app.clone();
        // In a block of its own: the copy borrows both sides until it is dropped.
        {
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            tokio::pin!(copy);
            let mut swapped = shared.swapped.subscribe();
            let mut drain_at: Option<Instant> = None;
            let idle = tokio::time::sleep(idle_limit);
            tokio::pin!(idle);
            loop {
                {
                    let snap = shared.snapshot.load();
                    if let Some(a) = snap.app(&app) {
                        if a.receives_traffic(pool.color) {
                            drain_at = None;
                        } else if drain_at.is_none() {
                            drain_at = a.drain_timeout.map(|t| Instant::now() + t);
                        }
                    }
                }
                tokio::select! {
                    r = &mut copy => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "tunnel closed");
                        }
                        break;
                    }
                    changed = swapped.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = &mut idle => {
                        let quiet_until = last.get() + idle_limit;
                        if Instant::now() >= quiet_until {
                            tracing::debug!(app = %app, color = %pool.color, server = %server.addr, "closing a tunnel with no traffic (tunnel_idle_timeout)");
                            pool.stats.timed_out(Timeout::TunnelIdle);
                            break;
                        }
                        idle.as_mut().reset(quiet_until);
                    }
                    _ = tokio::time::sleep_until(drain_at.unwrap_or_else(Instant::now)), if drain_at.is_some() => {
                        tracing::info!(app = %app, color = %pool.color, server = %server.addr, "closing a tunnel to a pool without traffic (drain_timeout)");
                        break;
                    }
                }
            }
        }
        pool.stats.tunnels.fetch_sub(1, Relaxed);
        if let Some(log) = log {
            log.write(client.written, upstream.written);
        }
        drop(counted);
        drop(info);
    });
}

/// One side of a tunnel, noting when a byte last went either way and
/// how many were written to this side.
struct Active<T> {
    io: T,
    last: Rc<Cell<Instant>>,
    written: u64,
}

impl<T> Active<T> {
    fn new(io: T, last: &Rc<Cell<Instant>>) -> Active<T> {
        Active {
            io,
            last: last.clone(),
            written: 0,
        }
    }

    fn note<R>(&self, polled: &Poll<io::Result<R>>) {
        if let Poll::Ready(Ok(_)) = polled {
            self.last.set(Instant::now());
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.note(&polled);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(&polled);
        if let Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
