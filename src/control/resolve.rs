//! Servers configured by host name. A validated config holds them as names
//! only ([`crate::config::PoolConfig::names`]); they are resolved here, the
//! one place cutover asks DNS:
//! - once at start ([`resolve_now`]), before the first routing table is
//!   built, and by `cutover check`, which warns of a name that does not
//!   resolve;
//! - then again every `server.resolve_interval` ([`run`]), on a blocking
//!   thread and with no lock held: addresses that appear join their pool,
//!   addresses that vanish leave it — their requests finish and their
//!   connections close, as when a reload removes a server. A name that
//!   fails to resolve keeps the addresses it had: a DNS outage never
//!   empties a pool.
//!
//! A reload keeps the addresses of the names it already knew and wakes
//! [`run`] for the new ones, so that DNS never runs under the control lock.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::admin::Admin;
use crate::config::Config;

/// How long one name may take to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every address `host:port` resolves to, in order, without repeats.
/// Blocking: call it where nothing waits on it.
pub fn lookup(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in host_port.to_socket_addrs()? {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::other("no address"));
    }
    Ok(out)
}

/// `config` with every host name resolved now, and a warning for each
/// name that does not resolve (it joins its pool when it does). Blocking.
pub fn resolve_now(config: &Config) -> (Config, Vec<String>) {
    let mut resolved = HashMap::new();
    let mut warnings = Vec::new();
    let named = config
        .apps
        .iter()
        .flat_map(|a| a.pools.iter())
        .flat_map(|p| p.names.iter());
    for n in named {
        if resolved.contains_key(&n.name) {
            continue;
        }
        match lookup(&n.name) {
            Ok(addrs) => {
                resolved.insert(n.name.clone(), addrs);
            }
            Err(e) => {
                let host = n.name.rsplit_once(':').map_or(&*n.name, |(h, _)| h);
                warnings.push(format!(
                    "{}: host name {host:?} does not resolve now ({e}); it is tried again every server.resolve_interval",
                    n.key
                ));
            }
        }
    }
    (config.with_resolved(&resolved), warnings)
}

/// For `cutover check`: `config` as the daemon would start with it, each
/// name that does not resolve one more of its warnings.
pub fn for_check(config: Config) -> Config {
    let (mut resolved, warnings) = resolve_now(&config);
    resolved.warnings.extend(warnings);
    resolved
}

/// Run until shutdown.
pub async fn run(admin: Arc<Admin>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let (interval, shared) = {
            let ctl = admin.lock();
            (ctl.config().server.resolve_interval, ctl.shared.clone())
        };
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
            _ = shared.new_names.notified() => {}
        }
        // The names as they are now: a reload may have changed them.
        let names = admin.lock().server_names();
        if names.is_empty() {
            continue;
        }
        let mut resolved: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for name in names {
            let query = name.clone();
            let found = tokio::time::timeout(
                LOOKUP_TIMEOUT,
                tokio::task::spawn_blocking(move || lookup(&query)),
            )
            .await;
            match found {
                Ok(Ok(Ok(addrs))) => {
                    resolved.insert(name, addrs);
                }
                Ok(Ok(Err(e))) => {
                    tracing::warn!(server = %name, error = %e, "host name did not resolve; keeping its addresses")
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(server = %name, "host name lookup timed out; keeping its addresses")
                }
            }
        }
        admin.lock().apply_resolved(&resolved);
    }
}
