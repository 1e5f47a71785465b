//! Handing the listening sockets to another process: the systemd socket
//! activation protocol (`LISTEN_FDS`, `LISTEN_FDNAMES`), used both ways.
//!
//! - **Receiving** ([`inherited`]): sockets systemd opened for us (a
//!   `.socket` unit), or that the process we replace handed over. Each
//!   has a name — `plain`, `tls` or `admin` — and is matched to the
//!   config's listeners by its address.
//! - **Handing over** ([`spawn_successor`]): `cutover upgrade` starts the
//!   new binary with every listening socket at fd 3 onwards, named, plus
//!   the write end of a pipe (`CUTOVER_READY_FD`) on which it says `ready`
//!   once it serves; and the state file's lock (`CUTOVER_STATE_LOCK_FD`),
//!   which the successor adopts rather than locks anew (a `flock` belongs
//!   to the open file, so the two share it until the old one exits).
//!   Until then the old process keeps serving; only then
//!   does it stop accepting and drain. The sockets themselves never close,
//!   so no connection waiting in an accept queue is lost.
//!
//! The protocol is systemd's, so the same code path serves socket
//! activation: a unit may own the sockets and cutover needs no privilege
//! to bind them.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};

/// The environment variable naming the fd of the pipe a successor writes
/// `ready` on.
pub const READY_FD: &str = "CUTOVER_READY_FD";
/// How many upgrades the listening sockets have been through.
pub const UPGRADES: &str = "CUTOVER_UPGRADES";
/// The environment variable naming the fd of the state file's lock,
/// handed over by the process being replaced.
pub const STATE_LOCK_FD: &str = "CUTOVER_STATE_LOCK_FD";

/// A listening socket and its role.
#[derive(Debug)]
pub struct Named {
    /// `plain`, `tls` or `admin` (systemd's `FileDescriptorName=`).
    pub name: String,
    pub listener: TcpListener,
}

/// The sockets passed to this process (`LISTEN_FDS`), with their names
/// (`LISTEN_FDNAMES`; a missing name is `plain`). Empty when none were.
/// The variables are removed, so children do not see them.
pub fn inherited() -> io::Result<Vec<Named>> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var("LISTEN_FDNAMES");
    let mut out = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let name = names.get(i).cloned().unwrap_or_else(|| "plain".into());
        match fds.take_tcp_listener(i)? {
            Some(listener) => out.push(Named { name, listener }),
            None => {
                return Err(io::Error::other(format!(
                    "inherited socket {i} ({name}) is not a listening TCP socket"
                )))
            }
        }
    }
    Ok(out)
}

/// How many upgrades came before this process (0 for the first).
pub fn upgrades() -> u64 {
    std::env::var(UPGRADES)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Tell the process that started this one that it serves now: `ready`
/// on its pipe, if it gave one. Once.
pub fn signal_ready() {
    if say("ready") {
        tracing::info!("told the process being replaced that this one serves");
    }
}

/// Tell the process that started this one why this one cannot serve.
pub fn signal_failure(why: &str) {
    let line: String = why.chars().filter(|c| *c != '\n').take(2000).collect();
    say(&format!("error: {line}"));
}

fn say(line: &str) -> bool {
    let Some(fd) = std::env::var(READY_FD)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return false;
    };
    std::env::remove_var(READY_FD);
    // Opened again through /proc: the fd itself cannot be adopted without
    // unsafe code, and the pipe behind it is the same.
    let path = format!("/proc/self/fd/{fd}");
    let opened = std::fs::OpenOptions::new().write(true).open(&path);
    match opened.and_then(|mut f| f.write_all(format!("{line}\n").as_bytes())) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not answer the process being replaced");
            false
        }
    }
}

/// A successor that was started and said it serves.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
    /// Reaped in the background: the successor outlives this process.
    _child: Child,
}

/// Why a successor did not take over.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: String, source: io::Error },
    #[error("the new process exited before it was ready ({status}){detail}")]
    Exited { status: String, detail: String },
    #[error("the new process was not ready within {0:?}; it was stopped")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Start `binary` with `args`, handing it `sockets` (fd 3 onwards, named),
/// the state file's lock if any, and a pipe to say it is ready on; wait
/// up to `timeout` for that. On failure the new process is stopped and
/// its error output returned.
pub fn spawn_successor(
    binary: &std::path::Path,
    args: &[String],
    sockets: &[(&str, &TcpListener)],
    state_lock: Option<std::fs::File>,
    upgrades: u64,
    timeout: Duration,
) -> Result<Successor, Refused> {
    let (mut ready_rx, ready_tx) = io::pipe()?;
    let mut mappings = Vec::with_capacity(sockets.len() + 1);
    for (i, (_, l)) in sockets.iter().enumerate() {
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(l.try_clone()?),
            child_fd: 3 + i as i32,
        });
    }
    let ready_fd = 3 + sockets.len() as i32;
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(ready_tx),
        child_fd: ready_fd,
    });
    let lock_fd = state_lock.map(|lock| {
        let child_fd = ready_fd + 1;
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(lock),
            child_fd,
        });
        child_fd
    });
    let names: Vec<&str> = sockets.iter().map(|(n, _)| *n).collect();
    let mut cmd = Command::new(binary);
    match lock_fd {
        Some(fd) => cmd.env(STATE_LOCK_FD, fd.to_string()),
        None => cmd.env_remove(STATE_LOCK_FD),
    };
    cmd.args(args)
        .env("LISTEN_FDS", sockets.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(READY_FD, ready_fd.to_string())
        .env(UPGRADES, (upgrades + 1).to_string())
        .stdin(Stdio::null());
    cmd.fd_mappings(mappings)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut child = cmd.spawn().map_err(|source| Refused::Spawn {
        binary: binary.display().to_string(),
        source,
    })?;
    // Our copies of the pipe's write end and of the sockets go with the
    // command: the pipe then reads EOF if the child dies.
    drop(cmd);
    let pid = child.id();
    let (said_tx, said_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 4096 {
            match ready_rx.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        let _ = said_tx.send(String::from_utf8_lossy(&line).into_owned());
    });
    let answer = said_rx.recv_timeout(timeout);
    match answer {
        Ok(line) if line == "ready" => Ok(Successor { pid, _child: child }),
        Ok(line) => {
            // It said why, or closed the pipe (EOF) by exiting.
            let deadline = Instant::now() + Duration::from_secs(2);
            let status = loop {
                match child.try_wait()? {
                    Some(s) => break s.to_string(),
                    None if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break "stopped".to_string();
                    }
                }
            };
            let detail = match line.strip_prefix("error: ") {
                Some(why) => format!(": {why}"),
                None => String::new(),
            };
            Err(Refused::Exited { status, detail })
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Refused::Timeout(timeout))
        }
    }
}
