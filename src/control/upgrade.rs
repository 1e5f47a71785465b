//! `cutover upgrade`, `POST /v1/upgrade` and SIGUSR2: start the new binary
//! with this process's listening sockets, wait until it serves, then stop
//! accepting and drain — or, if it fails or is not ready in time, stop it
//! and keep serving. One hand-over at a time; changes are refused (503)
//! while one is under way, so no change can fall between the two processes.

use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use super::Shared;

/// The binary at this process's own path, as it is on disk now (a new
/// version installed over the old one is the one started).
fn own_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Hand over to `binary` (default: our own path). `Ok`: the new process's
/// pid; this one then drains and exits. `Err`: the HTTP status and why.
pub async fn upgrade(shared: &Arc<Shared>, binary: Option<PathBuf>) -> Result<u32, (u16, String)> {
    let Some(plan) = shared.upgrade.get() else {
        return Err((
            501,
            "this cutover was not started by `cutover run`: it cannot start a successor".into(),
        ));
    };
    if shared.upgrading.swap(true, SeqCst) {
        return Err((409, "an upgrade is already under way".into()));
    }
    let binary = match binary.map_or_else(own_binary, Ok) {
        Ok(b) => b,
        Err(e) => {
            shared.upgrading.store(false, SeqCst);
            return Err((500, format!("cannot find this binary: {e}")));
        }
    };
    let sockets: std::io::Result<Vec<(String, std::net::TcpListener)>> = plan
        .sockets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(n, l)| l.try_clone().map(|l| (n.clone(), l)))
        .collect();
    let sockets = match sockets {
        Ok(s) => s,
        Err(e) => {
            shared.upgrading.store(false, SeqCst);
            return Err((500, format!("cannot hand the sockets over: {e}")));
        }
    };
    let (args, timeout, upgrades) = (plan.args.clone(), plan.timeout, shared.process.upgrades);
    tracing::info!(binary = %binary.display(), "upgrade: starting the new process");
    let started = tokio::task::spawn_blocking(move || {
        let refs: Vec<(&str, &std::net::TcpListener)> =
            sockets.iter().map(|(n, l)| (n.as_str(), l)).collect();
        crate::handover::spawn_successor(&binary, &args, &refs, upgrades, timeout)
    })
    .await;
    match started {
        Ok(Ok(successor)) => {
            let pid = successor.pid;
            tracing::info!(
                pid,
                "upgrade: the new process serves; this one stops accepting and drains"
            );
            // Dropping the handle neither waits for the child nor stops it.
            drop(successor);
            // Stop accepting at once (the admin API too, so that the next
            // call reaches the new process); the daemon gives the caller's
            // answer a moment to leave before it drains and exits.
            shared.shutdown.send_replace(true);
            Ok(pid)
        }
        Ok(Err(e)) => {
            shared.upgrading.store(false, SeqCst);
            tracing::error!(error = %e, "upgrade failed; this process keeps serving");
            Err((502, format!("upgrade failed, still serving: {e}")))
        }
        Err(e) => {
            shared.upgrading.store(false, SeqCst);
            Err((500, format!("upgrade failed, still serving: {e}")))
        }
    }
}
