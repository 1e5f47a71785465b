//! Upgraded connections (WebSocket and other `Upgrade` protocols, RFC 9110
//! §7.8): after the upstream's `101 Switching Protocols` both sides are
//! joined byte for byte until either closes.
//!
//! A flip does not cut a tunnel: it stays on the server it was opened to.
//! But a tunnel to a pool that no longer receives any traffic is closed
//! `drain_timeout` after the pool lost it (if the app sets one), so that
//! no connection to a retired pool lives forever; traffic coming back
//! before then cancels the countdown.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::h1;
use crate::control::Shared;
use crate::route::{Pool, Server};

/// Join the client and upstream sides once the client's upgrade completes
/// (hyper has sent it the `101` or the 2xx to `CONNECT`). The upstream
/// side is the connection `conn` switched, with what was read past the
/// upstream's head (`early`), which goes to the client first.
pub fn spawn(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    server: Arc<Server>,
    client: OnUpgrade,
    conn: h1::Conn,
) {
    let (mut upstream, early, counted) = conn.into_tunnel();
    tokio::task::spawn_local(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                tracing::debug!(error = %e, "tunnel closed");
                return;
            }
        }
        pool.stats.tunnels.fetch_add(1, Relaxed);
        let app = server.app.clone();
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut swapped = shared.swapped.subscribe();
        let mut drain_at: Option<Instant> = None;
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
                _ = tokio::time::sleep_until(drain_at.unwrap_or_else(Instant::now)), if drain_at.is_some() => {
                    tracing::info!(app = %app, color = %pool.color, server = %server.addr, "closing a tunnel to a pool without traffic (drain_timeout)");
                    break;
                }
            }
        }
        pool.stats.tunnels.fetch_sub(1, Relaxed);
        drop(counted);
    });
}
