//! Putting it together: build the first snapshot, start the worker threads
//! and the control plane, wait for the shutdown signal, drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, SockRef, Socket, Type};

use crate::config::{Config, TokenSource};
use crate::control::admin::{self, Admin};
use crate::control::ops::Control;
use crate::control::reload::initial_state;
use crate::control::state::StateError;
use crate::control::state_lock::StateLock;
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
    /// The arguments a successor is started with (`cutover upgrade`), and
    /// how long it may take to be ready. `None`: this daemon runs inside
    /// another program (tests) and cannot upgrade itself.
    pub upgrade: Option<(Vec<String>, std::time::Duration)>,
    /// The state file's lock, taken before anything is bound (`cutover
    /// run` does); held until the daemon returns, and handed to a
    /// successor. `None`: no state file, or the caller (a test) does not lock.
    pub state_lock: Option<Arc<StateLock>>,
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
    /// The sockets this process was handed (systemd socket activation, or
    /// the process it replaces: [`crate::handover::inherited`]), matched to
    /// the config's addresses by name and address; every address not
    /// handed over is bound here, with `SO_REUSEPORT`, so that each worker
    /// can open its own twin socket and the kernel spreads clients. An
    /// address may come with several sockets (the twins of the process
    /// before): all of them are served, so none of their queued clients is
    /// lost.
    pub fn bind(config: &Config) -> io::Result<Listeners> {
        let mut inherited = crate::handover::inherited()?;
        let mut take = |role: &str, addr: SocketAddr| {
            let mut got = Vec::new();
            let mut i = 0;
            while i < inherited.len() {
                let n = &inherited[i];
                // systemd may name a socket after its unit: then its
                // address alone says what it is.
                let role_ok =
                    n.name == role || !["plain", "tls", "admin"].contains(&n.name.as_str());
                if role_ok && n.listener.local_addr().ok() == Some(addr) {
                    got.push(inherited.remove(i).listener);
                } else {
                    i += 1;
                }
            }
            got
        };
        let mut bind_all = |role: &str,
                            addrs: &[SocketAddr]|
         -> io::Result<Vec<std::net::TcpListener>> {
            let mut out = Vec::new();
            for a in addrs {
                let got = take(role, *a);
                if got.is_empty() {
                    out.push(bind_reuseport(*a).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot listen on {a}: {e}"))
                    })?);
                } else {
                    tracing::info!(listen = %a, sockets = got.len(), "serving on sockets handed over");
                    out.extend(got);
                }
            }
            Ok(out)
        };
        let plain = bind_all("plain", &config.server.listen)?;
        let tls = bind_all("tls", &config.server.listen_tls)?;
        let a = config.admin.listen;
        let admin = match take("admin", a).into_iter().next() {
            Some(l) => l,
            None => std::net::TcpListener::bind(a).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {a} (admin): {e}"))
            })?,
        };
        for left in inherited {
            tracing::warn!(
                name = %left.name,
                addr = ?left.listener.local_addr().ok(),
                "a socket handed over is not in the config; closed"
            );
        }
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

/// Run the daemon until `shutdown` completes, then drain: stop
/// accepting, let in-flight requests finish for up to `shutdown_timeout`.
/// Blocks the calling thread, which becomes the control-plane thread.
pub fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with(config, listeners, Options::default(), shutdown)
}

/// [`run`] with [`Options`]: the durable state and the first routing
/// table, the workers on their sockets, the control plane on this thread
/// until `shutdown` (or a hand-over), then the drain.
pub fn run_with(
    config: Config,
    listeners: Listeners,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    tokens_ready(&config)?;
    // Host names are resolved once now, before the first routing table;
    // then again every `resolve_interval` by `control::resolve::run`.
    let (config, unresolved) = crate::control::resolve::resolve_now(&config);
    for w in unresolved {
        tracing::warn!("{w}");
    }
    let fleet = fleet_of(&config, &listeners);
    let state = initial_state(&config, options.reset_state, fleet.clone())?;
    if options.reset_state {
        tracing::warn!("--reset-state: starting from the config's initial values");
    }
    let snapshot =
        Snapshot::build(&config, &state.apps, None, state.epoch).map_err(DaemonError::Invalid)?;
    let tls = match config.server.listen_tls.is_empty() && listeners.tls.is_empty() {
        true => None,
        false => Some(certificates(&config)?),
    };
    let shared = Arc::new(Shared::new(snapshot, config.server.shutdown_timeout, tls));
    if let Some(acme) = &config.acme {
        crate::control::acme::serve_cached(acme, &shared);
    }
    let access_log =
        crate::control::access_log::AccessLog::start(&config.log.access, config.log.buffer)
            .map_err(|e| DaemonError::Invalid(vec![format!("log.access: {e}")]))?;
    let _ = shared.access_log.set(access_log);
    let mut control = Control::new(shared.clone(), config.clone(), state);
    control.fleet = fleet.clone();
    let admin = Arc::new(Admin::new(control));
    let learned = fleet.map(|f| link_fleet(f, &shared)).transpose()?;

    let workers = config.server.worker_count();
    let groups = socket_groups(listeners.plain, listeners.tls, workers)?;
    // Every socket, named, for a successor (`cutover upgrade`).
    let mut handover: Vec<(String, std::net::TcpListener)> = Vec::new();
    for (group, tls) in &groups {
        for l in group {
            let name = if *tls { "tls" } else { "plain" };
            handover.push((name.to_string(), l.try_clone()?));
        }
    }
    let threads = spawn_workers(&shared, &groups, workers)?;
    if let Some(l) = &listeners.admin {
        handover.push(("admin".to_string(), l.try_clone()?));
    }
    drop(groups);
    // Without a way to start a successor, the copies go now: a copy kept
    // here would hold the sockets listening through the drain.
    match options.upgrade.clone() {
        Some((args, timeout)) => {
            let _ = shared.upgrade.set(crate::control::Successor {
                args,
                timeout,
                sockets: std::sync::Mutex::new(handover),
                state_lock: options.state_lock.clone(),
            });
        }
        None => drop(handover),
    }
    tracing::info!(
        workers,
        apps = config.apps.len(),
        listen = ?config.server.listen,
        "cutover is serving"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A `LocalSet`: health probes use the data plane's connections, whose
    // HTTP/2 side runs in local tasks.
    let control = control_plane(&config, &shared, &admin, listeners.admin, shutdown);
    if let Some(rx) = learned {
        rt.spawn(follow_fleet(admin.clone(), rx));
    }
    tokio::task::LocalSet::new().block_on(&rt, control)?;
    for t in threads {
        match t.join() {
            Ok(Err(e)) => tracing::error!(error = %e, "worker failed"),
            Err(_) => tracing::error!("worker panicked"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(log) = shared.access_log.get() {
        log.sync(std::time::Duration::from_secs(2));
    }
    tracing::info!("stopped");
    Ok(())
}

/// The certificates of `[[tls.certs]]`, loaded and logged.
fn certificates(config: &Config) -> Result<TlsShared, DaemonError> {
    let (store, infos, warnings) = CertStore::load(&config.tls).map_err(DaemonError::Invalid)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    for i in infos {
        tracing::info!(file = %i.file, names = ?i.names, "certificate loaded");
    }
    Ok(TlsShared::new(store))
}

/// The listening sockets by address (`true`: TLS), each group with at
/// least one socket per worker: worker i serves the i-th (a twin opened
/// here when there are fewer), and sockets beyond the worker count are
/// shared out, so that every socket handed over is served.
fn socket_groups(
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    workers: usize,
) -> io::Result<Vec<(Vec<std::net::TcpListener>, bool)>> {
    let mut groups: Vec<(Vec<std::net::TcpListener>, bool)> = Vec::new();
    let all = plain.into_iter().map(|l| (l, false));
    for (l, tls) in all.chain(tls.into_iter().map(|l| (l, true))) {
        let addr = l.local_addr()?;
        match groups
            .iter_mut()
            .find(|(g, t)| *t == tls && g[0].local_addr().ok() == Some(addr))
        {
            Some((g, _)) => g.push(l),
            None => groups.push((vec![l], tls)),
        }
    }
    for (group, _) in &mut groups {
        while group.len() < workers {
            let twin = worker_socket(&group[0])?;
            group.push(twin);
        }
    }
    Ok(groups)
}

/// One thread per worker, each with its share of every group's sockets.
fn spawn_workers(
    shared: &Arc<Shared>,
    groups: &[(Vec<std::net::TcpListener>, bool)],
    workers: usize,
) -> io::Result<Vec<std::thread::JoinHandle<io::Result<()>>>> {
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let sockets = groups
            .iter()
            .flat_map(|(group, tls)| {
                group
                    .iter()
                    .enumerate()
                    .filter(move |(k, _)| k % workers == i)
                    .map(move |(_, l)| l.try_clone().map(|s| (s, *tls)))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("cutover-worker-{i}"))
                .spawn(move || crate::proxy::run_worker(shared, sockets))?,
        );
    }
    Ok(threads)
}

/// The control thread's work until shutdown: the admin API, signals,
/// health checks, DNS, rollouts; then the start of the drain.
async fn control_plane(
    config: &Config,
    shared: &Arc<Shared>,
    admin: &Arc<Admin>,
    listener: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Registered before anything is served: SIGUSR1's default action
    // is to terminate, and logrotate may send it at any moment.
    let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    if let Some(l) = listener {
        l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        tracing::info!(admin = %l.local_addr()?, "admin API listening");
        tokio::spawn(admin::serve(l, admin.clone(), shared.shutdown.subscribe()));
        tokio::spawn(admin.clone().feed(shared.shutdown.subscribe()));
    }
    tokio::spawn(reload_on_sighup(admin.clone()));
    tokio::spawn(upgrade_on_sigusr2(admin.clone()));
    tokio::spawn(reopen_on_sigusr1(shared.clone(), usr1));
    let probe = crate::proxy::session::probe;
    tokio::task::spawn_local(crate::control::health::supervise(shared.clone(), probe));
    tokio::spawn(crate::control::resolve::run(
        admin.clone(),
        shared.shutdown.subscribe(),
    ));
    tokio::spawn(drive_rollouts(admin.clone(), shared.shutdown.subscribe()));
    if let Some(acme) = config.acme.clone() {
        tokio::spawn(crate::control::acme::run(acme, shared.clone()));
    }
    // Serving: the process being replaced (if any) may stop now, and a
    // service manager may consider us started.
    crate::handover::signal_ready();
    let pid = std::process::id();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::MainPid(pid),
        sd_notify::NotifyState::Ready,
    ]);
    let mut stop = shared.shutdown.subscribe();
    tokio::select! {
        _ = shutdown => {}
        // An upgrade handed over: drain like a shutdown.
        _ = stop.wait_for(|s| *s) => {}
    }
    if shared.upgrading.load(std::sync::atomic::Ordering::SeqCst) {
        // Handed over: the answer to `cutover upgrade` is still leaving.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(timeout = ?config.server.shutdown_timeout, "shutting down: draining in-flight requests");
    shared.shutdown.send_replace(true);
    // The accept loops drop their sockets as they stop; these copies go
    // too, so the listening sockets close now and new clients are refused
    // (or, handed over, served by the successor) rather than queued for a
    // process that no longer accepts.
    if let Some(plan) = shared.upgrade.get() {
        plan.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
    Ok(())
}

/// This instance's link to its fleet, when `[state] backend = "etcd"`:
/// named by the config, else by its host and admin port.
fn fleet_of(config: &Config, listeners: &Listeners) -> Option<Arc<crate::control::fleet::Fleet>> {
    let etcd = config.state.etcd.as_ref()?;
    let admin = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    let id = etcd
        .instance
        .clone()
        .unwrap_or_else(|| crate::control::fleet::default_id(admin));
    let admin = admin.map(|a| a.to_string());
    Some(crate::control::fleet::Fleet::new(etcd.clone(), id, admin))
}

/// Start the fleet thread; what it learns comes out of the receiver.
fn link_fleet(
    fleet: Arc<crate::control::fleet::Fleet>,
    shared: &Arc<Shared>,
) -> io::Result<tokio::sync::mpsc::UnboundedReceiver<crate::control::fleet::Learned>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    crate::control::fleet::link::start(fleet, shared.clone(), tx)?;
    Ok(rx)
}

/// What the fleet thread learns, taken in by the control plane.
async fn follow_fleet(
    admin: Arc<Admin>,
    mut learned: tokio::sync::mpsc::UnboundedReceiver<crate::control::fleet::Learned>,
) {
    while let Some(l) = learned.recv().await {
        admin.lock().learned(l);
    }
}

/// SIGUSR1 reopens the access log file (after logrotate moved it), as
/// nginx does.
async fn reopen_on_sigusr1(shared: Arc<Shared>, mut usr1: tokio::signal::unix::Signal) {
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening the access log");
        if let Some(log) = shared.access_log.get() {
            log.reopen();
        }
    }
}

/// SIGUSR2 upgrades cutover in place (as `cutover upgrade` does) with the
/// installed binary: `[admin] upgrade_binary`, else this process's own
/// path, read again from disk.
async fn upgrade_on_sigusr2(admin: Arc<Admin>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        return;
    };
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: upgrading");
        let (shared, binary) = {
            let ctl = admin.lock();
            let binary = crate::control::upgrade::installed_binary(&ctl.config().admin);
            (ctl.shared.clone(), binary)
        };
        match crate::control::upgrade::upgrade(&shared, binary).await {
            Ok(pid) => tracing::info!(pid, "handed over to the new process"),
            Err((_, why)) => tracing::error!(error = %why, "upgrade refused; still serving"),
        }
    }
}

/// SIGHUP re-reads the config file, like `POST /v1/reload`.
/// Once a second, one look at every rollout and every guard under way
/// (until shutdown).
async fn drive_rollouts(admin: Arc<Admin>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tick.tick() => {
                let mut control = admin.lock();
                control.tick_rollouts();
                control.tick_guards();
            }
        }
    }
}

async fn reload_on_sighup(admin: Arc<Admin>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        let _ = sd_notify::notify(&reloading);
        let _ = admin.reload(false, "reload", None);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
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
