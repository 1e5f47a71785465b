//! `cutover upgrade`, `POST /v1/upgrade` and SIGUSR2: start the new binary
//! with this process's listening sockets, wait until it serves, then stop
//! accepting and drain — or, if it fails or is not ready in time, stop it
//! and keep serving. One hand-over at a time; changes are refused (503)
//! while one is under way, so no change can fall between the two processes.
//!
//! The binary is the installed one: `[admin] upgrade_binary`, else this
//! process's own path. A caller of the API may name another only when
//! `[admin] allow_local_binary` is set and it connected from a loopback
//! address ([`may_name_binary`]): an operate token alone never makes the
//! daemon execute a path of the caller's choosing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use super::Shared;
use crate::config::AdminSettings;

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

/// The binary an upgrade starts unless a caller may name one:
/// `[admin] upgrade_binary`, else this process's own path.
pub fn installed_binary(admin: &AdminSettings) -> std::io::Result<PathBuf> {
    match &admin.upgrade_binary {
        Some(b) => Ok(b.clone()),
        None => own_binary(),
    }
}

/// May the caller at `peer` name the binary to start (`cutover upgrade
/// --binary`)? Only with `[admin] allow_local_binary` and from a loopback
/// address, and only an absolute path. `Err`: why not, for a 400.
pub fn may_name_binary(
    admin: &AdminSettings,
    peer: SocketAddr,
    binary: &std::path::Path,
) -> Result<(), String> {
    if !admin.allow_local_binary {
        return Err(
            "binary: the admin API takes no binary path; an upgrade starts \
             [admin] upgrade_binary, else the daemon's own executable. Set \
             [admin] upgrade_binary in the config file (and reload), or \
             allow_local_binary = true to let `cutover upgrade --binary` name one \
             from the daemon's host"
                .into(),
        );
    }
    if !peer.ip().to_canonical().is_loopback() {
        return Err(format!(
            "binary: only a caller on the daemon's host (a loopback address) may name \
             the binary, and {} is not one; set [admin] upgrade_binary in the config \
             file, or run `cutover upgrade --binary` on that host",
            peer.ip()
        ));
    }
    if !binary.is_absolute() {
        return Err(format!(
            "binary: {} is not an absolute path",
            binary.display()
        ));
    }
    Ok(())
}

/// Hand over to `binary` (resolved by the caller: [`installed_binary`],
/// or a path [`may_name_binary`] let through). `Ok`: the new process's
/// pid; this one then drains and exits. `Err`: the HTTP status and why.
pub async fn upgrade(
    shared: &Arc<Shared>,
    binary: std::io::Result<PathBuf>,
) -> Result<u32, (u16, String)> {
    let Some(plan) = shared.upgrade.get() else {
        return Err((
            501,
            "this cutover was not started by `cutover run`: it cannot start a successor".into(),
        ));
    };
    if shared.upgrading.swap(true, SeqCst) {
        return Err((409, "an upgrade is already under way".into()));
    }
    let binary = match binary {
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
    let state_lock = match plan.state_lock.as_ref().map(|l| l.file().try_clone()) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            shared.upgrading.store(false, SeqCst);
            return Err((500, format!("cannot hand the state file's lock over: {e}")));
        }
    };
    let (args, timeout, upgrades) = (plan.args.clone(), plan.timeout, shared.process.upgrades);
    tracing::info!(binary = %binary.display(), "upgrade: starting the new process");
    let started = tokio::task::spawn_blocking(move || {
        let refs: Vec<(&str, &std::net::TcpListener)> =
            sockets.iter().map(|(n, l)| (n.as_str(), l)).collect();
        crate::handover::spawn_successor(&binary, &args, &refs, state_lock, upgrades, timeout)
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
            // The successor that gave up may have written its pid.
            if let Some(Err(e)) = plan.state_lock.as_ref().map(|l| l.stamp()) {
                tracing::warn!(error = %e, "cannot write this pid into the state file's lock");
            }
            tracing::error!(error = %e, "upgrade failed; this process keeps serving");
            Err((502, format!("upgrade failed, still serving: {e}")))
        }
        Err(e) => {
            shared.upgrading.store(false, SeqCst);
            Err((500, format!("upgrade failed, still serving: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(allow_local_binary: bool) -> AdminSettings {
        let text = format!(
            "[admin]\nallow_local_binary = {allow_local_binary}\n[apps.a]\n[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n"
        );
        crate::config::Config::from_toml(&text).unwrap().admin
    }

    #[test]
    fn a_caller_names_the_binary_only_when_allowed_and_from_loopback() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        let bin = std::path::Path::new("/usr/local/bin/cutover");
        // Not allowed (the default): from anywhere, loopback included.
        for peer in ["127.0.0.1:5000", "[::1]:5000", "10.0.0.7:5000"] {
            let refused = may_name_binary(&admin(false), at(peer), bin).unwrap_err();
            assert!(
                refused.starts_with("binary: the admin API takes no binary path"),
                "{refused}"
            );
            assert!(refused.contains("upgrade_binary"), "{refused}");
        }
        // Allowed: from loopback only (an IPv4 peer of a dual-stack socket too).
        let open = admin(true);
        for peer in [
            "127.0.0.1:5000",
            "127.8.9.1:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert_eq!(may_name_binary(&open, at(peer), bin), Ok(()), "{peer}");
        }
        for peer in [
            "10.0.0.7:5000",
            "[::ffff:10.0.0.7]:5000",
            "[2001:db8::1]:5000",
            "0.0.0.0:1",
        ] {
            let refused = may_name_binary(&open, at(peer), bin).unwrap_err();
            assert!(refused.contains("is not one"), "{peer}: {refused}");
        }
        let relative = may_name_binary(&open, at("127.0.0.1:1"), std::path::Path::new("cutover"));
        assert!(relative.unwrap_err().contains("not an absolute path"));
    }

    #[test]
    fn the_installed_binary_is_the_configured_one_else_our_own() {
        let mut a = admin(false);
        assert_eq!(installed_binary(&a).unwrap(), own_binary().unwrap());
        a.upgrade_binary = Some("/opt/cutover/bin/cutover".into());
        assert_eq!(
            installed_binary(&a).unwrap(),
            PathBuf::from("/opt/cutover/bin/cutover")
        );
    }
}
