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
//! The probe itself is the data plane's ([`Probe`], given by the daemon):
//! it reaches the server the way requests do, so a check passes only if
//! traffic could pass. Checks run as local tasks on the control thread.
//!
//! The supervisor follows snapshot swaps: new servers get a task, removed
//! ones lose theirs, and a changed health config restarts the task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Shared;
use crate::config::{Color, HealthConfig, PassiveConfig};
use crate::route::Server;

/// How often a server without an active check looks at its passive flag.
const PASSIVE_TICK: Duration = Duration::from_millis(250);

/// A probe of one server: `GET path` answered 2xx or 3xx within the
/// timeout, or with no path a connection made.
pub type Probe = fn(Arc<Server>, Option<String>, Duration) -> Pin<Box<dyn Future<Output = bool>>>;

/// Run until shutdown, keeping one check task per server. Runs on a
/// `LocalSet`.
pub async fn supervise(shared: Arc<Shared>, probe: Probe) {
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
                let task = tokio::task::spawn_local(check(server, health.clone(), passive, probe));
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
async fn check(
    server: Arc<Server>,
    health: Option<HealthConfig>,
    passive: PassiveConfig,
    probe: Probe,
) {
    let (mut rises, mut falls) = (0u32, 0u32);
    let mut passive_since: Option<Instant> = None;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let tick = health.as_ref().map_or(PASSIVE_TICK, |h| h.interval);
        next = Instant::now() + tick;
        let mut probed: Option<bool> = None;
        if let Some(h) = &health {
            let ok = probe(server.clone(), Some(h.path.clone()), h.timeout).await;
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
                    None => probe(server.clone(), None, Duration::from_secs(1)).await,
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
