//! Servers configured by host name are resolved again every
//! `server.resolve_interval`, on the control thread: addresses that appear
//! join their pool, addresses that vanish leave it — their requests finish
//! and their connections close, as when a reload removes a server. A name
//! that fails to resolve keeps the addresses it had: a DNS outage never
//! empties a pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::admin::Admin;

/// How long one name may take to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Run until shutdown.
pub async fn run(admin: Arc<Admin>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let (names, interval) = {
            let ctl = admin.lock();
            (ctl.server_names(), ctl.config().server.resolve_interval)
        };
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if names.is_empty() {
            continue;
        }
        let mut resolved: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for name in names {
            let lookup =
                tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name.clone())).await;
            match lookup {
                Ok(Ok(addrs)) => {
                    let mut list: Vec<SocketAddr> = Vec::new();
                    for a in addrs {
                        if !list.contains(&a) {
                            list.push(a);
                        }
                    }
                    if !list.is_empty() {
                        resolved.insert(name, list);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(server = %name, error = %e, "host name did not resolve; keeping its addresses")
                }
                Err(_) => {
                    tracing::warn!(server = %name, "host name lookup timed out; keeping its addresses")
                }
            }
        }
        admin.lock().apply_resolved(&resolved);
    }
}
