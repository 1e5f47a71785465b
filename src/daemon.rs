//! Putting it together: build the first snapshot, start the worker threads
//! and the control plane, wait for the shutdown signal, drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, SockRef, Socket, Type};

use crate::config::{Config, TokenSource};
use crate::control::admin::{self, Admin};
use crate::control::ops::{initial_state, Control};
use crate::control::state::StateError;
use crate::control::{Shared, TlsShared};
use crate::route::Snapshot;
use crate::tls::CertStore;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid state: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("admin token: {0}")]
    Token(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How to start, beyond the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Ignore the state file (even a corrupt one) and start from the
    /// config's initial values; the file is rewritten on the next change.
    pub reset_state: bool,
}

/// The sockets the daemon serves. Tests bind `127.0.0.1:0` themselves and
/// pass them in; the binary uses [`Listeners::bind`].
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP/1.1 + h2c listeners.
    pub plain: Vec<std::net::TcpListener>,
    /// TLS listeners (`server.listen_tls`).
    pub tls: Vec<std::net::TcpListener>,
    /// The admin API; `None` serves no admin API.
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Bind every `server.listen` address with `SO_REUSEPORT`, so that each
    /// worker can open its own twin socket and the kernel spreads clients.
    pub fn bind(config: &Config) -> io::Result<Listeners> {
        let plain = config
            .server
            .listen
            .iter()
            .map(|a| {
                bind_reuseport(*a)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))
            })
            .collect::<io::Result<_>>()?;
        let tls = config
            .server
            .listen_tls
            .iter()
            .map(|a| {
                bind_reuseport(*a)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))
            })
            .collect::<io::Result<_>>()?;
        let a = config.admin.listen;
        let admin = std::net::TcpListener::bind(a)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a} (admin): {e}")))?;
        Ok(Listeners {
            plain,
            tls,
            admin: Some(admin),
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.plain
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// This worker's copy of `l`: a twin socket on the same address when `l`
/// has `SO_REUSEPORT` (the kernel balances between twins), else a clone
/// of the same socket (the workers share one accept queue).
fn worker_socket(l: &std::net::TcpListener) -> io::Result<std::net::TcpListener> {
    if SockRef::from(l).reuse_port().unwrap_or(false) {
        bind_reuseport(l.local_addr()?)
    } else {
        l.try_clone()
    }
}

/// Run the daemon until `shutdown` completes, then drain (SPEC §8): stop
/// accepting, let in-flight requests finish for up to `shutdown_timeout`.
/// Blocks the calling thread, which becomes the control-plane thread.
pub fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with(config, listeners, Options::default(), shutdown)
}

/// [`run`] with [`Options`].
pub fn run_with(
    config: Config,
    listeners: Listeners,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    tokens_ready(&config)?;
    let state = initial_state(&config, options.reset_state)?;
    if options.reset_state {
        tracing::warn!("--reset-state: starting from the config's initial values");
    }
    let snapshot =
        Snapshot::build(&config, &state.apps, None, state.epoch).map_err(DaemonError::Invalid)?;
    let tls = if config.server.listen_tls.is_empty() && listeners.tls.is_empty() {
        None
    } else {
        let (store, infos, warnings) =
            CertStore::load(&config.tls).map_err(DaemonError::Invalid)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        for i in infos {
            tracing::info!(file = %i.file, names = ?i.names, "certificate loaded");
        }
        Some(TlsShared::new(store))
    };
    let shared = Arc::new(Shared::new(snapshot, config.server.shutdown_timeout, tls));
    let admin = Arc::new(Admin::new(Control::new(
        shared.clone(),
        config.clone(),
        state,
    )));

    let workers = config.server.worker_count();
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let all = listeners
            .plain
            .iter()
            .map(|l| (l, false))
            .chain(listeners.tls.iter().map(|l| (l, true)));
        let sockets = all
            .map(|(l, tls)| {
                let s = if i == 0 {
                    l.try_clone()
                } else {
                    worker_socket(l)
                };
                s.map(|s| (s, tls))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("cutover-worker-{i}"))
                .spawn(move || crate::proxy::run_worker(shared, sockets))?,
        );
    }
    let listeners_admin = listeners.admin;
    drop(listeners.plain);
    drop(listeners.tls);
    tracing::info!(
        workers,
        apps = config.apps.len(),
        listen = ?config.server.listen,
        "cutover is serving"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if let Some(l) = listeners_admin {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(admin = %l.local_addr()?, "admin API listening");
            tokio::spawn(admin::serve(l, admin.clone(), shared.shutdown.subscribe()));
        }
        tokio::spawn(reload_on_sighup(admin.clone()));
        tokio::spawn(crate::control::health::supervise(shared.clone()));
        tokio::spawn(crate::control::resolve::run(admin.clone(), shared.shutdown.subscribe()));
        shutdown.await;
        tracing::info!(timeout = ?config.server.shutdown_timeout, "shutting down: draining in-flight requests");
        shared.shutdown.send_replace(true);
        Ok::<_, io::Error>(())
    })?;
    for t in threads {
        match t.join() {
            Ok(Err(e)) => tracing::error!(error = %e, "worker failed"),
            Err(_) => tracing::error!("worker panicked"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP re-reads the config file, like `POST /v1/reload`.
async fn reload_on_sighup(admin: Arc<Admin>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let _ = admin.reload(false, "reload", None);
    }
}

/// Every admin token has its secret. The config read every token file
/// already (an unreadable or empty one is a config error, for `check` as
/// for `run`); an environment variable that is not set is only a warning
/// for `check`, but the daemon does not start without it.
fn tokens_ready(config: &Config) -> Result<(), DaemonError> {
    let missing: Vec<String> = config
        .admin
        .tokens
        .iter()
        .filter(|t| t.secret.is_none())
        .map(|t| match &t.source {
            TokenSource::Env(var) => {
                format!("{}: environment variable {var} is not set", t.key)
            }
            TokenSource::File(path) => format!("{}: cannot read {}", t.key, path.display()),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::Token(missing.join("; ")))
    }
}
