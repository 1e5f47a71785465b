//! Health checks, on the control thread, off the request path.
//!
//! One task per server. With an active check it sends `GET path` every
//! `interval`: a 2xx or 3xx answer within `timeout` is a success; `rise`
//! successes in a row mark the server up, `fall` failures down. Passive
//! checks happen on the request path (see [`crate::route::Server::record_failure`]);
//! a server they marked down is probed here after the pool's cool-off and
//! comes back when the probe succeeds. Verdicts live on the long-lived
//! `Server`, so a snapshot swap or a reload does not reset them.
//!
//! The supervisor follows snapshot swaps: new servers get a task, removed
//! ones lose theirs, and a changed health config restarts the task.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Shared;
use crate::config::{Color, HealthConfig, PassiveConfig, Protocol};
use crate::route::Server;

/// How often a server without an active check looks at its passive flag.
const PASSIVE_TICK: Duration = Duration::from_millis(250);

/// Run until shutdown, keeping one check task per server.
pub async fn supervise(shared: Arc<Shared>) {
    let mut tasks: HashMap<usize, (Option<HealthConfig>, PassiveConfig, JoinHandle<()>)> =
        HashMap::new();
    let mut swapped = shared.swapped.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let snap = shared.snapshot.load_full();
        let mut wanted: HashMap<usize, (Arc<Server>, Option<HealthConfig>, PassiveConfig)> =
            HashMap::new();
        for app in &snap.apps {
            for color in Color::ALL {
                let pool = app.pool(color);
                for s in &pool.servers {
                    wanted.insert(
                        s.id,
                        (s.clone(), pool.health().cloned(), pool.config.passive),
                    );
                }
            }
        }
        drop(snap);
        tasks.retain(|id, (health, passive, task)| {
            let keep = wanted
                .get(id)
                .is_some_and(|(_, h, p)| h == health && p == passive);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, (server, health, passive)) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(id) {
                if health.is_none() {
                    // No active check: the server counts as up unless
                    // passive checks say otherwise.
                    server.active_ok.store(true, Relaxed);
                    server.refresh_health();
                }
                let task = tokio::spawn(check(server, health.clone(), passive));
                slot.insert((health, passive, task));
            }
        }
        tokio::select! {
            r = swapped.changed() => if r.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, _, task)) in tasks {
        task.abort();
    }
}

/// One server's checks, forever (aborted by the supervisor).
async fn check(server: Arc<Server>, health: Option<HealthConfig>, passive: PassiveConfig) {
    let (mut rises, mut falls) = (0u32, 0u32);
    let mut passive_since: Option<Instant> = None;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let tick = health.as_ref().map_or(PASSIVE_TICK, |h| h.interval);
        next = Instant::now() + tick;
        let mut probed: Option<bool> = None;
        if let Some(h) = &health {
            let ok = probe(&server, Some(&h.path), h.timeout).await;
            probed = Some(ok);
            if ok {
                falls = 0;
                rises = rises.saturating_add(1);
                if !server.active_ok.load(Relaxed) && rises >= h.rise {
                    server.active_ok.store(true, Relaxed);
                }
            } else {
                rises = 0;
                falls = falls.saturating_add(1);
                if server.active_ok.load(Relaxed) && falls >= h.fall {
                    server.active_ok.store(false, Relaxed);
                }
            }
        }
        if server.passive_down.load(Relaxed) {
            let since = *passive_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= passive.cooldown {
                let ok = match probed {
                    Some(ok) => ok,
                    None => probe(&server, None, Duration::from_secs(1)).await,
                };
                if ok {
                    server.consecutive_failures.store(0, Relaxed);
                    server.passive_down.store(false, Relaxed);
                    passive_since = None;
                } else {
                    // Another cool-off before the next probe.
                    passive_since = Some(Instant::now());
                }
            }
        } else {
            passive_since = None;
        }
        server.refresh_health();
    }
}

/// `GET path` (2xx/3xx within `timeout`), or with no path a connect. Both
/// connect as requests do: the PROXY header (naming no client) and TLS, if
/// the pool has them, so a certificate the proxy would refuse fails here.
async fn probe(server: &Server, path: Option<&str>, timeout: Duration) -> bool {
    let attempt = async {
        let stream = match crate::tls::connect(server.addr, &server.transport, None).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(server = %server.addr, error = %e, "health check connect failed");
                return None;
            }
        };
        let Some(path) = path else { return Some(true) };
        let io = TokioIo::new(stream);
        let status = if server.protocol == Protocol::H2 {
            // An h2c-only server (gRPC, say) is probed in its own protocol.
            let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
                hyper_util::rt::TokioExecutor::new(),
                io,
            )
            .await
            .ok()?;
            let conn = tokio::spawn(conn);
            let scheme = if server.transport.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let uri = format!("{scheme}://{}{}", server.addr, path);
            let req = http::Request::get(uri)
                .header(http::header::USER_AGENT, "cutover-health-check")
                .body(Empty::new())
                .ok()?;
            let status = tx.send_request(req).await.ok()?.status();
            conn.abort();
            status
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
                .await
                .ok()?;
            let conn = tokio::spawn(conn);
            let req = http::Request::get(path)
                .header(http::header::HOST, server.addr.to_string())
                .header(http::header::USER_AGENT, "cutover-health-check")
                .header(http::header::CONNECTION, "close")
                .body(Empty::new())
                .ok()?;
            let status = tx.send_request(req).await.ok()?.status();
            conn.abort();
            status
        };
        Some(status.is_success() || status.is_redirection())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}
