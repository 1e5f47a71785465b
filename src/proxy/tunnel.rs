//! Upgraded connections (WebSocket and other `Upgrade` protocols, RFC 9110
//! §7.8): after the upstream's `101 Switching Protocols` both sides are
//! joined byte for byte until either closes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::upstream::Pooled;
use crate::route::Pool;

/// Join the client and upstream sides once both upgrades complete.
/// `conn` keeps the upstream connection's sender alive for the tunnel's life.
pub fn spawn(pool: Arc<Pool>, client: OnUpgrade, upstream: OnUpgrade, conn: Pooled) {
    tokio::task::spawn_local(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        pool.stats.tunnels.fetch_add(1, Relaxed);
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        pool.stats.tunnels.fetch_sub(1, Relaxed);
        drop(conn);
        if let Err(e) = result {
            tracing::debug!(error = %e, "tunnel closed");
        }
    });
}
