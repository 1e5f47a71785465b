//! The admin listener and its connections: at most `[admin]
//! max_connections` at once, each cut off by [`Timing`]; every request
//! passes the listener's checks and the token before it reaches a route.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::time::Instant;

use super::params::{Params, Takes};
use super::plane::Admin;
use super::reply::{error, method_not_allowed, reply, Body, Reply};
use super::routes::{self, Call, Miss, Route};
use crate::api;
use crate::config::Role;
use crate::control::guard::{self, Listener};
use crate::timeouts::{ConnTimeouts, Expired};

/// Largest admin request body.
const MAX_BODY: usize = 1 << 20;

/// hyper's read buffer, and so the largest request head (hyper answers 431
/// beyond it): admin heads are small, and 256 connections of hyper's
/// default ~400 KiB would be 100 MiB.
const MAX_HEAD: usize = 64 * 1024;

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
            Ok::<_, Infallible>(resp.map(|body| Sent { body, timing }))
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

/// Where one admin connection is, and when that must end: the phases
/// and deadlines the proxy's listeners use too ([`ConnTimeouts`]), behind
/// a lock shared by the socket (bytes arrive) and the service (a request
/// starts, ends).
struct Timing {
    state: Mutex<ConnTimeouts>,
    /// Woken when the deadline moves, so the watcher re-reads it.
    changed: tokio::sync::Notify,
}

impl Timing {
    fn new(header_timeout: Duration, idle_timeout: Duration) -> Timing {
        Timing {
            state: Mutex::new(ConnTimeouts::new(
                Instant::now(),
                header_timeout,
                idle_timeout,
            )),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Change the state with `f`; wake the watcher if the deadline moved.
    fn update(&self, f: impl FnOnce(&mut ConnTimeouts)) {
        let mut t = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = t.deadline();
        f(&mut t);
        if t.deadline() != before {
            self.changed.notify_one();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let t = self.state.lock().unwrap_or_else(|p| p.into_inner());
        t.deadline()
    }

    /// Bytes arrived: on a fresh or idle connection, a head has begun.
    fn read_some(&self) {
        self.update(|t| t.head_began(Instant::now));
    }

    fn request_started(&self) {
        self.update(ConnTimeouts::busy);
    }

    fn request_ended(&self) {
        self.update(|t| t.idle(Instant::now()));
    }

    /// Has the current phase's deadline passed? What timed out, if so.
    fn expired(&self) -> Option<&'static str> {
        let t = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(match t.expired(Instant::now())? {
            Expired::Silent | Expired::Head => "request head not complete in time",
            Expired::Idle => "idle",
        })
    }
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

/// An answer's body, which tells [`Timing`] that its request ended once
/// it is sent (or dropped): a stream of events is a request, busy, until
/// it ends; the idle timeout runs only after.
struct Sent {
    body: Body,
    timing: Arc<Timing>,
}

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.timing.request_ended();
    }
}

/// Resolves once shutdown begins (without holding the watch guard).
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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

/// One request: the listener's checks, `/healthz`, the token, the
/// parameters, the route; for a change also the token's role, the JSON
/// content type and the body. Then the endpoint answers ([`routes`]).
async fn handle(admin: &Admin, conn: &Conn, req: Request<Incoming>) -> Reply {
    if let Err((status, message)) = admissible(admin, conn, &req) {
        return error(status, message);
    }
    let path = req.uri().path().to_string();
    if let Some(page) = super::page::serve(req.method(), &path[1.min(path.len())..]) {
        return page;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments == ["healthz"] {
        return match *req.method() {
            Method::GET | Method::HEAD => reply(
                200,
                api::Health {
                    status: "ok".into(),
                },
            ),
            _ => method_not_allowed("GET"),
        };
    }
    let Some(caller) = authenticate(admin, &req) else {
        return error(401, "missing or wrong bearer token");
    };
    let params = match Params::extract(&req) {
        Ok(p) => p,
        Err(message) => return error(400, message),
    };
    let route = match Route::find(req.method(), &segments) {
        Ok(r) => r,
        Err(Miss::NotFound) => return error(404, format!("no such endpoint: {path}")),
        Err(Miss::Method(allow)) => return method_not_allowed(allow),
    };
    let endpoint = format!("{} {path}", req.method());
    if let Err(message) = params.check(route.takes(), &endpoint) {
        return error(400, message);
    }
    // A change's `wait` is for the fleet; a rollout's (`Takes::Watch`)
    // is for the rollout to move, with or without a fleet.
    let waits_for_fleet = route.takes() == Takes::Change && params.wait.is_some();
    if waits_for_fleet && admin.lock().fleet.is_none() {
        return error(
            400,
            "wait: on a change, only a fleet (state backend \"etcd\") has other instances to wait for",
        );
    }
    let body = if route.reads() {
        Bytes::new()
    } else {
        match change_body(conn, &caller, req).await {
            Ok(b) => b,
            Err(refusal) => return refusal,
        }
    };
    let call = Call {
        admin,
        peer: conn.peer,
        role: caller.role,
        actor: caller.name,
        params,
        body,
    };
    routes::answer(route, call).await
}

/// A change's body, once its caller may change things (an `operate`
/// token) and it says it is JSON; it must arrive within `header_timeout`
/// of the head.
async fn change_body(conn: &Conn, caller: &Caller, req: Request<Incoming>) -> Result<Bytes, Reply> {
    if caller.role != Role::Operate {
        let message = format!(
            "token {:?} has role {}: changes need an operate token",
            caller.name, caller.role
        );
        return Err(error(403, message));
    }
    // Every change, whatever its body (none included), says it is JSON:
    // a web page cannot send that without a CORS preflight.
    guard::check_json(req.headers()).map_err(|(status, message)| error(status, message))?;
    let (_, body) = req.into_parts();
    let read = tokio::time::timeout(conn.header_timeout, Limited::new(body, MAX_BODY).collect());
    match read.await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(error(400, format!("cannot read the request body: {e}"))),
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
            Err(r)
        }
    }
}
