//! The admin API: JSON over HTTP/1.1 on its own listener, on the
//! control thread, apart from the data plane and its connection limit,
//! with its own: `[admin] max_connections`, `header_timeout` and
//! `idle_timeout`. Over TLS only when `[admin] tls_cert_file` is set.
//! Requests from web pages are refused ([`guard`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::time::Instant;

use super::guard::{self, Listener};
use super::ops::{Change, Control, OpError, Request as OpRequest};
use crate::config::Role;

/// Largest admin request body.
const MAX_BODY: usize = 1 << 20;

/// hyper's read buffer, and so the largest request head (hyper answers 431
/// beyond it): admin heads are small, and 256 connections of hyper's
/// default ~400 KiB would be 100 MiB.
const MAX_HEAD: usize = 64 * 1024;

pub struct Admin {
    /// Serializes every change; held only for synchronous work (never
    /// across an await), off the request path.
    /// The tokens accepted are the config's (`[admin]`), so a reload
    /// that re-reads the token files applies them.
    pub control: Mutex<Control>,
}

impl Admin {
    pub fn new(control: Control) -> Admin {
        Admin {
            control: Mutex::new(control),
        }
    }

    /// Re-read the config file ([`Control::reload_with`]), for
    /// `POST /v1/reload` and SIGHUP alike.
    pub fn reload(
        &self,
        take_rules_from_file: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<super::ops::Status, Vec<String>> {
        let mut ctl = self.lock();
        let result = ctl.reload_with(take_rules_from_file, actor, reason);
        if result.is_ok() {
            // The daemon's environment is the one it started with: a
            // token added since whose variable it lacks cannot be used.
            for t in ctl
                .config()
                .admin
                .tokens
                .iter()
                .filter(|t| t.secret.is_none())
            {
                tracing::error!(token = %t.name, key = %t.key, "this admin token has no secret (its environment variable is not set): it is refused until a restart with it set");
            }
        }
        result
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serve the admin API until `shutdown` turns true.
///
/// At most `[admin] max_connections` connections are open at once; at the
/// cap the listener accepts no more until one closes, so the others wait
/// in the kernel's accept queue, not in file descriptors of ours. A
/// connection cannot hold its slot for long without doing something:
/// [`Timing`] closes it once a request head or body takes longer than
/// `header_timeout`, or it idles between requests for `idle_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "admin listener has no address");
            return;
        }
    };
    // The cap is fixed for the daemon's life (a reload that changes it is
    // refused); the timeouts are read per connection, so a reload applies
    // them to the connections that follow.
    let cap = admin.lock().config().admin.max_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    loop {
        let slot = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return, // closed: never, the semaphore is ours
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        // Read per connection, as the timeouts are: a reload applies new
        // certificate files to the connections that follow.
        let (header_timeout, idle_timeout, tls) = {
            let ctl = admin.lock();
            let a = &ctl.config().admin;
            let tls = a.tls.as_ref().map(|t| t.server.clone());
            (a.header_timeout, a.idle_timeout, tls)
        };
        let conn = Conn {
            listener: Listener {
                bound,
                local,
                tls: tls.is_some(),
            },
            peer,
            header_timeout,
        };
        let timing = Arc::new(Timing::new(header_timeout, idle_timeout));
        let admin = admin.clone();
        tokio::spawn(async move {
            // The slot is held until the connection ends.
            let _slot = slot;
            match tls {
                None => serve_connection(stream, admin, conn, timing).await,
                Some(server) => {
                    // The handshake counts towards the first head's
                    // `header_timeout`, from accept.
                    let acceptor = tokio_rustls::TlsAcceptor::from(server);
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, admin, conn, timing).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "admin TLS handshake not complete in time")
                        }
                    }
                }
            }
        });
    }
}

/// One admin connection (plain or TLS), until it ends or [`Timing`] cuts
/// it off.
async fn serve_connection<S>(stream: S, admin: Arc<Admin>, conn: Conn, timing: Arc<Timing>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let t = timing.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (admin, timing) = (admin.clone(), t.clone());
        async move {
            timing.request_started();
            let resp = handle(&admin, &conn, req).await;
            timing.request_ended();
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TimedIo {
        inner: stream,
        timing: timing.clone(),
    };
    let served = hyper::server::conn::http1::Builder::new()
        // The head deadline is [`Timing`]'s, which hyper's own (from the
        // end of one answer to the end of the next head) cannot express.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), svc);
    let mut served = std::pin::pin!(served);
    loop {
        let deadline = timing.deadline();
        // A change after the deadline was read is not missed: `notify_one`
        // leaves a permit for this wait.
        let changed = timing.changed.notified();
        tokio::select! {
            _ = served.as_mut() => return,
            _ = changed => {}
            _ = sleep_until_some(deadline) => {
                if let Some(what) = timing.expired() {
                    tracing::debug!(%peer, "admin connection closed: {what}");
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a request handler knows of its connection.
#[derive(Clone, Copy)]
struct Conn {
    listener: Listener,
    /// Who connected: an upgrade takes a binary path only from loopback.
    peer: std::net::SocketAddr,
    /// The body must arrive within this of the head.
    header_timeout: Duration,
}

/// Where one admin connection is, and when that must end.
struct Timing {
    state: Mutex<(Phase, Option<Instant>)>,
    /// Woken on every change of phase, so the watcher re-reads the deadline.
    changed: tokio::sync::Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted; the first head must be complete `header_timeout` after.
    Fresh,
    /// A head has begun; it must be complete `header_timeout` after.
    Head,
    /// A request is being answered (its body read under its own deadline).
    Busy,
    /// Between requests, for at most `idle_timeout`.
    Idle,
}

impl Timing {
    fn new(header_timeout: Duration, idle_timeout: Duration) -> Timing {
        Timing {
            state: Mutex::new((Phase::Fresh, Some(after(header_timeout)))),
            changed: tokio::sync::Notify::new(),
            header_timeout,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, phase: Phase, deadline: Option<Instant>) {
        *self.lock() = (phase, deadline);
        self.changed.notify_one();
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().1
    }

    /// Bytes arrived: on an idle connection, a new head has begun.
    fn read_some(&self) {
        if self.lock().0 == Phase::Idle {
            self.set(Phase::Head, Some(after(self.header_timeout)));
        }
    }

    fn request_started(&self) {
        self.set(Phase::Busy, None);
    }

    fn request_ended(&self) {
        self.set(Phase::Idle, Some(after(self.idle_timeout)));
    }

    /// Has the current phase's deadline passed? What timed out, if so.
    fn expired(&self) -> Option<&'static str> {
        let (phase, deadline) = *self.lock();
        if deadline.is_none_or(|d| Instant::now() < d) {
            return None;
        }
        Some(match phase {
            Phase::Fresh | Phase::Head => "request head not complete in time",
            Phase::Idle => "idle",
            Phase::Busy => return None,
        })
    }
}

/// `d` from now (a duration too long to add is 30 years).
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30))
}

/// The socket (or the TLS stream over it), telling [`Timing`] when bytes
/// arrive.
struct TimedIo<S> {
    inner: S,
    timing: Arc<Timing>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.timing.read_some();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Resolves once shutdown begins (without holding the watch guard).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn reply(status: u16, body: impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: u16, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = reply(status, json!({ "error": message.into() }));
    if status == 503 {
        // A hand-over to a new process takes a moment: ask again then.
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(405, format!("method not allowed; use {allow}"));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Body of flip, shift, mirror and rollback calls. All fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    percent: Option<f64>,
}

/// `POST /v1/apps/{app}/servers/{addr}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerBody {
    /// Default `ready`.
    #[serde(default)]
    state: Option<crate::route::snapshot::ServerState>,
    #[serde(default)]
    weight: Option<u32>,
    /// Needed only when the address is in both pools.
    #[serde(default)]
    color: Option<crate::config::Color>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

/// `PUT /v1/apps/{app}/rules`: a list of rules, or `{"rules": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RulesBody {
    List(Vec<crate::config::RuleSpec>),
    Wrapped(RulesWrapped),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesWrapped {
    rules: Vec<crate::config::RuleSpec>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

/// Who is calling: the name of the token it gave, and what that token may
/// do; `local` (operate) when no token is configured.
struct Caller {
    name: String,
    role: Role,
}

/// The token given as `Authorization: Bearer TOKEN`, compared in constant
/// time with every configured token's secret (all of them, whichever
/// matches). `None`: no token, or one that is none of them.
fn authenticate(admin: &Admin, req: &Request<Incoming>) -> Option<Caller> {
    let ctl = admin.lock();
    let tokens = &ctl.config().admin.tokens;
    if tokens.is_empty() {
        return Some(Caller {
            name: "local".into(),
            role: Role::Operate,
        });
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if given.is_empty() {
        return None;
    }
    // 1 + the index of the token that matched; 0: none did.
    let mut found = 0u32;
    for (i, t) in tokens.iter().enumerate() {
        let Some(secret) = &t.secret else { continue };
        let hit = given.ct_eq(secret.expose().as_bytes());
        found.conditional_assign(&(i as u32 + 1), hit);
    }
    let t = tokens.get((found as usize).checked_sub(1)?)?;
    Some(Caller {
        name: t.name.clone(),
        role: t.role,
    })
}

/// The reason the client gives for a change (`x-cutover-reason`):
/// printable ASCII only (other bytes are dropped), trimmed, at most 200
/// characters. `None` when nothing is left.
fn reason(req: &Request<Incoming>) -> Option<String> {
    let mut text = String::new();
    for (i, v) in req.headers().get_all("x-cutover-reason").iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.extend(
            v.as_bytes()
                .iter()
                .filter(|b| (0x20..=0x7e).contains(*b))
                .map(|&b| char::from(b)),
        );
    }
    let cut: String = text.trim().chars().take(MAX_REASON).collect();
    let cut = cut.trim_end();
    (!cut.is_empty()).then(|| cut.to_string())
}

/// The longest reason recorded.
const MAX_REASON: usize = 200;

/// `GET /v1/history`: the entries as stored, each with `changes`, what it
/// changed in words (computed now, not stored).
fn history(ctl: &Control, limit: Option<usize>) -> serde_json::Value {
    let all = ctl.history();
    let skip = all.len().saturating_sub(limit.unwrap_or(usize::MAX));
    let entries: Vec<serde_json::Value> = all
        .iter()
        .skip(skip)
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("changes".into(), json!(e.changes()));
            }
            v
        })
        .collect();
    json!({ "epoch": ctl.epoch(), "history": entries })
}

/// The checks of [`guard`], which every request passes first, `/healthz`
/// included: a name or origin that is not the listener's gets nothing.
fn admissible(admin: &Admin, conn: &Conn, req: &Request<Incoming>) -> Result<(), guard::Refusal> {
    let ctl = admin.lock();
    let hosts = &ctl.config().admin.hosts;
    let authority = req.uri().authority().map(|a| a.as_str());
    guard::check_host(
        &conn.listener,
        hosts,
        req.version(),
        req.headers(),
        authority,
    )?;
    guard::check_origin(&conn.listener, hosts, req.headers())
}

async fn handle(admin: &Admin, conn: &Conn, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err((status, message)) = admissible(admin, conn, &req) {
        return error(status, message);
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if segments == ["healthz"] {
        return match method {
            Method::GET | Method::HEAD => reply(200, json!({ "status": "ok" })),
            _ => method_not_allowed("GET"),
        };
    }
    let Some(caller) = authenticate(admin, &req) else {
        return error(401, "missing or wrong bearer token");
    };
    let if_match = match req.headers().get(header::IF_MATCH) {
        None => None,
        Some(v) => match v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(e) => Some(e),
            None => return error(400, "If-Match: must be an epoch number"),
        },
    };
    let query_flag = |name: &str| {
        req.uri().query().is_some_and(|q| {
            q.split('&').any(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, v)| k == name && (v == "true" || v == "1"))
            })
        })
    };
    let (query_force, query_dry_run) = (query_flag("force"), query_flag("dry_run"));
    let limit = match req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
    {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                return error(
                    400,
                    format!("limit: must be a number of entries, got {v:?}"),
                )
            }
        },
    };
    // Route first, so a wrong method is 405 before the body is read.
    enum Route<'a> {
        Status,
        History,
        Metrics,
        Reload,
        Upgrade,
        FlipAll,
        RollbackAll,
        Flip(&'a str),
        Shift(&'a str),
        Mirror(&'a str),
        Rollback(&'a str),
        Rules(&'a str),
        Rule(&'a str, &'a str),
        Server(&'a str, &'a str),
        Rollout(&'a str),
        Steer(&'a str, super::ops::Steer),
    }
    let route = match segments.as_slice() {
        ["metrics"] => Route::Metrics,
        ["v1", "status"] => Route::Status,
        ["v1", "history"] => Route::History,
        ["v1", "reload"] => Route::Reload,
        ["v1", "upgrade"] => Route::Upgrade,
        ["v1", "flip"] => Route::FlipAll,
        ["v1", "rollback"] => Route::RollbackAll,
        ["v1", "apps", app, "flip"] => Route::Flip(app),
        ["v1", "apps", app, "shift"] => Route::Shift(app),
        ["v1", "apps", app, "mirror"] => Route::Mirror(app),
        ["v1", "apps", app, "rollback"] => Route::Rollback(app),
        ["v1", "apps", app, "rules"] => Route::Rules(app),
        ["v1", "apps", app, "rules", name] => Route::Rule(app, name),
        ["v1", "apps", app, "servers", addr] => Route::Server(app, addr),
        ["v1", "apps", app, "rollout"] => Route::Rollout(app),
        ["v1", "apps", app, "rollout", "pause"] => Route::Steer(app, super::ops::Steer::Pause),
        ["v1", "apps", app, "rollout", "resume"] => Route::Steer(app, super::ops::Steer::Resume),
        ["v1", "apps", app, "rollout", "abort"] => Route::Steer(app, super::ops::Steer::Abort),
        _ => return error(404, format!("no such endpoint: {path}")),
    };
    let read_only = matches!(route, Route::Status | Route::History | Route::Metrics)
        || matches!(route, Route::Rules(_) | Route::Rollout(_)) && method == Method::GET;
    if read_only {
        if method != Method::GET
            && method != Method::HEAD
            && !matches!(route, Route::Rules(_) | Route::Rollout(_))
        {
            return method_not_allowed("GET");
        }
        let ctl = admin.lock();
        return match route {
            Route::Status => reply(200, ctl.status()),
            Route::History => reply(200, history(&ctl, limit)),
            Route::Metrics => {
                let text = super::metrics::render(&ctl);
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Route::Rules(app) => {
                let status = ctl.status();
                match status.rules(app) {
                    Some(rules) => reply(200, json!({ "epoch": status.epoch(), "rules": rules })),
                    None => error(404, format!("no app named {app:?}")),
                }
            }
            Route::Rollout(app) => match (ctl.config().app(app), ctl.rollout_doc(app)) {
                (None, _) => error(404, format!("no app named {app:?}")),
                (Some(_), None) => error(404, format!("app {app:?} has no rollout")),
                (Some(_), Some(doc)) => reply(200, json!({ "epoch": ctl.epoch(), "rollout": doc })),
            },
            _ => unreachable!("read-only routes only"),
        };
    }
    let allowed = match route {
        Route::Rules(_) => "GET, PUT",
        Route::Rollout(_) => "GET, POST",
        Route::Rule(..) => "DELETE",
        // The percent is a setting replaced whole (PUT); POST as for shift.
        Route::Mirror(_) => "PUT, POST",
        _ => "POST",
    };
    let method_ok = match route {
        Route::Rules(_) => method == Method::PUT,
        Route::Rule(..) => method == Method::DELETE,
        Route::Mirror(_) => method == Method::PUT || method == Method::POST,
        _ => method == Method::POST,
    };
    if !method_ok {
        return method_not_allowed(allowed);
    }
    if caller.role != Role::Operate {
        return error(
            403,
            format!(
                "token {:?} has role {}: changes need an operate token",
                caller.name, caller.role
            ),
        );
    }
    let (actor, reason) = (caller.name, reason(&req));
    // Every change, whatever its body (none included), says it is JSON:
    // a web page cannot send that without a CORS preflight.
    if let Err((status, message)) = guard::check_json(req.headers()) {
        return error(status, message);
    }
    let (_, body) = req.into_parts();
    let read = tokio::time::timeout(conn.header_timeout, Limited::new(body, MAX_BODY).collect());
    let body = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return error(400, format!("cannot read the request body: {e}")),
        Err(_) => {
            let mut r = error(
                408,
                format!(
                    "the request body did not arrive within {} of its head ([admin] header_timeout)",
                    humantime::format_duration(conn.header_timeout)
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    if let Route::Upgrade = route {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct UpgradeBody {
            /// Another binary than the installed one: refused unless
            /// [`super::upgrade::may_name_binary`] allows it.
            #[serde(default)]
            binary: Option<std::path::PathBuf>,
        }
        let opts = if body.iter().all(u8::is_ascii_whitespace) {
            UpgradeBody::default()
        } else {
            match serde_json::from_slice::<UpgradeBody>(&body) {
                Ok(o) => o,
                Err(e) => return error(400, format!("bad JSON: {e}")),
            }
        };
        let (shared, binary) = {
            let ctl = admin.lock();
            let settings = &ctl.config().admin;
            let binary = match opts.binary {
                None => super::upgrade::installed_binary(settings),
                Some(b) => match super::upgrade::may_name_binary(settings, conn.peer, &b) {
                    Ok(()) => Ok(b),
                    Err(why) => return error(400, why),
                },
            };
            (ctl.shared.clone(), binary)
        };
        return match super::upgrade::upgrade(&shared, binary).await {
            Ok(pid) => reply(
                200,
                json!({ "upgraded": true, "pid": pid, "old_pid": std::process::id() }),
            ),
            Err((status, why)) => error(status, why),
        };
    }
    if let Route::Rollout(app) | Route::Steer(app, _) = route {
        let plan = match route {
            Route::Rollout(_) => {
                let asked = if body.iter().all(u8::is_ascii_whitespace) {
                    Ok(super::rollout::Request::default())
                } else {
                    serde_json::from_slice::<super::rollout::Request>(&body)
                        .map_err(|e| format!("bad JSON: {e}"))
                };
                match asked.and_then(|a| a.plan()) {
                    Ok(p) => Some(p),
                    Err(e) => return error(400, e),
                }
            }
            _ => {
                if !body.iter().all(u8::is_ascii_whitespace)
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
                {
                    return error(
                        400,
                        "bad JSON: pause, resume and abort take no body (or {})",
                    );
                }
                None
            }
        };
        let mut ctl = admin.lock();
        let done = match (route, plan) {
            (Route::Steer(_, steer), _) => ctl.steer_rollout(app, steer, &actor, reason.as_deref()),
            (_, Some(plan)) => ctl.start_rollout(app, plan, &actor, reason.as_deref()),
            _ => unreachable!("a start has its plan"),
        };
        return match done {
            Ok(doc) => reply(200, json!({ "epoch": ctl.epoch(), "rollout": doc })),
            Err(e) => error(e.status(), e.to_string()),
        };
    }
    if let Route::Reload = route {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct ReloadBody {
            /// Replace runtime rules that differ from the file's.
            #[serde(default)]
            take_rules_from_file: bool,
        }
        let opts = if body.iter().all(u8::is_ascii_whitespace) {
            ReloadBody::default()
        } else {
            match serde_json::from_slice::<ReloadBody>(&body) {
                Ok(o) => o,
                Err(e) => return error(400, format!("bad JSON: {e}")),
            }
        };
        let result = admin.reload(opts.take_rules_from_file, &actor, reason.as_deref());
        return match result {
            Ok(status) => reply(200, status),
            Err(errors) => reply(400, json!({ "error": errors.join("; "), "errors": errors })),
        };
    }
    let parse_options = |body: &Bytes| -> Result<Options, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Options::default());
        }
        serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))
    };
    let (change, force, dry_run) = match route {
        Route::Rules(app) => match serde_json::from_slice::<RulesBody>(&body) {
            Ok(RulesBody::List(rules)) => (
                Change::SetRules(app.into(), rules),
                query_force,
                query_dry_run,
            ),
            Ok(RulesBody::Wrapped(w)) => (
                Change::SetRules(app.into(), w.rules),
                w.force || query_force,
                w.dry_run || query_dry_run,
            ),
            Err(e) => {
                // Untagged enums hide the cause: try each shape for a useful message.
                let detail = serde_json::from_slice::<Vec<crate::config::RuleSpec>>(&body)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| e.to_string());
                return error(400, format!("bad JSON: expected a list of rules: {detail}"));
            }
        },
        Route::Rule(app, name) => (
            Change::DeleteRule(app.into(), name.into()),
            query_force,
            query_dry_run,
        ),
        Route::Server(app, addr) => {
            let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
                return error(
                    400,
                    format!("{addr:?} is not a server address like 10.0.0.1:8080"),
                );
            };
            let b: ServerBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    return error(
                        400,
                        format!("bad JSON: {e} (expected {{\"state\": \"ready\"|\"drain\"|\"maint\", \"weight\": N, \"color\": \"blue\"|\"green\"}})"),
                    )
                }
            };
            let setting = crate::route::snapshot::ServerSetting {
                state: b.state.unwrap_or_default(),
                weight: b.weight,
            };
            (
                Change::Server(app.into(), b.color, addr, setting),
                b.force || query_force,
                b.dry_run || query_dry_run,
            )
        }
        _ => {
            let opts = match parse_options(&body) {
                Ok(o) => o,
                Err(e) => return error(400, e),
            };
            let change = match route {
                Route::FlipAll => Change::Flip(None),
                Route::RollbackAll => Change::Rollback(None),
                Route::Flip(app) => Change::Flip(Some(app.into())),
                Route::Rollback(app) => Change::Rollback(Some(app.into())),
                Route::Shift(app) => match opts.percent {
                    Some(p) => Change::Shift(app.into(), p),
                    None => return error(400, "percent: missing (e.g. {\"percent\": 12.5})"),
                },
                Route::Mirror(app) => match opts.percent {
                    Some(p) => Change::Mirror(app.into(), p),
                    None => return error(400, "percent: missing (e.g. {\"percent\": 10})"),
                },
                _ => unreachable!("mutating routes only"),
            };
            if opts.percent.is_some() && !matches!(change, Change::Shift(..) | Change::Mirror(..)) {
                return error(400, "percent: only shift and mirror take a percent");
            }
            (
                change,
                opts.force || query_force,
                opts.dry_run || query_dry_run,
            )
        }
    };
    let result = admin.lock().apply(OpRequest {
        change,
        force,
        dry_run,
        if_match,
        actor,
        reason,
    });
    match result {
        Ok(v) => reply(200, v),
        Err(e @ OpError::Stale { current, .. }) => {
            reply(412, json!({ "error": e.to_string(), "epoch": current }))
        }
        Err(e) => error(e.status(), e.to_string()),
    }
}
