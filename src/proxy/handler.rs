//! One request through the proxy, in phases:
//! route → check limits → rewrite the request → pick and connect (one retry
//! on connect failure) → send → rewrite the response → stream it back.

use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::{ClientBody, RequestBody, ResponseBody, TooLarge};
use super::conn::ConnInfo;
use super::deadline;
use super::error::ProxyError;
use super::exchange::Exchange;
use super::h1;
use super::headers;
use super::request;
use super::upstream::{Pooled, Sender};
use super::Worker;
use crate::config::{Protocol, Sticky};
use crate::route::rule::RequestView;
use crate::route::{Pool, Server};

static COLOR_VALUES: [HeaderValue; 2] = [
    HeaderValue::from_static("blue"),
    HeaderValue::from_static("green"),
];

/// The request's future: phases 1–3 run here, synchronously, when hyper
/// calls the service; the future holds only what phases 4–6 need. It is
/// moved into hyper's connection state once per request, so its size is
/// paid in copies and cache lines on every request: the cold connect path
/// is boxed, and nothing is captured twice.
pub fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    let ex = Exchange::begin(worker.clone(), conn.state.clone());
    match prepare(&worker, &conn, req, ex) {
        Ok(p) => Either::Left(exchange(worker, conn, p)),
        Err(answer) => Either::Right(std::future::ready(Ok(answer))),
    }
}

/// The answer for a request that goes no further than the proxy.
fn fail(mut ex: Exchange, err: ProxyError) -> Response<ResponseBody> {
    ex.set_status(err.status().as_u16());
    let resp: Response<Bytes> = err.response();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, ResponseBody::full(body, Some(ex)))
}

/// A routed request, rewritten for its upstream.
struct Prepared {
    parts: http::request::Parts,
    body: Incoming,
    /// For cutover's own client.
    lite: bool,
    /// `Some`: the `X-Forwarded-*` fields are still to be added, with this
    /// as `X-Forwarded-Host` — by cutover's client as it writes the head,
    /// or into the header map before hyper's sends it.
    forwarded_host: Option<Option<HeaderValue>>,
    server: Arc<Server>,
    max_body: u64,
    connect_timeout: Duration,
    response_timeout: Duration,
    answer: Answer,
}

/// What the answer (phase 6) needs.
struct Answer {
    ex: Exchange,
    pool: Arc<Pool>,
    upgrade: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    set_cookie: Option<HeaderValue>,
    color_header: bool,
}

/// Phases 1–3: route, check limits, rewrite the request. `Err` is the
/// answer of a request that goes no further. (Both sides are large, and
/// both are moved once, into the request's future: boxing either would
/// add an allocation per request.)
#[allow(clippy::result_large_err)]
fn prepare(
    worker: &Worker,
    conn: &ConnInfo,
    req: Request<Incoming>,
    mut ex: Exchange,
) -> Result<Prepared, Response<ResponseBody>> {
    // Phase 1: route, with one snapshot load.
    let snap = worker.shared.snapshot.load();
    let limits = &snap.settings.limits;
    let (max_body, connect_timeout, response_timeout) = (
        limits.max_body_bytes,
        limits.upstream_connect_timeout,
        limits.upstream_response_timeout,
    );
    let color_header = snap.settings.color_header;
    let target = match request::check(req.method(), req.uri(), req.version(), req.headers()) {
        Ok(t) => t,
        Err(why) => return Err(refuse(ex, conn, why)),
    };
    // hyper keeps `Transfer-Encoding` and drops the length beside it: the
    // socket saw both (a flag read per request, the header map only then).
    if conn.state.saw_length_and_chunked()
        && req.headers().contains_key(header::TRANSFER_ENCODING)
        && conn.state.take_length_and_chunked()
    {
        return Err(refuse(ex, conn, request::Invalid::LengthAndChunked));
    }
    let host_str = target
        .authority
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path = target.path(req.uri());
    let Some(app) = snap.find_app(host_str, path) else {
        return Err(fail(ex, ProxyError::NoApp));
    };
    let client_ip = if conn.trusted {
        headers::client_behind(
            req.headers(),
            conn.peer.ip(),
            &snap.settings.trusted_proxies,
        )
    } else {
        conn.peer.ip()
    };
    let view = RequestView::new(path, req.headers(), client_ip, Some(&conn.memo));
    let decision = app.decide(&view);
    let pool = app.pool(decision.color).clone();
    let set_cookie = match (&decision.new_cookie, &app.sticky) {
        (Some(id), Sticky::Cookie(name)) => cookie_header(name, &id.as_hex(), conn.tls),
        _ => None,
    };
    drop(snap);

    // Phase 2: limits that need no upstream.
    ex.choose(&pool);
    // hyper parsed and checked `Content-Length` (for HTTP/2 too): the
    // body's exact size hint is that length, with no second lookup.
    if max_body > 0 && req.body().size_hint().exact().is_some_and(|n| n > max_body) {
        return Err(fail(ex, ProxyError::BodyTooLarge));
    }
    let Some(server) = pool.pick(None).cloned() else {
        return Err(fail(ex, ProxyError::NoHealthyServer));
    };
    ex.bind(&server);

    // Phase 3: the upstream request.
    let (mut parts, body) = req.into_parts();
    let hop = headers::HopFields::scan(&parts.headers);
    let upgrade = hop.upgrade_requested(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let named_removed = headers::strip_found(&mut parts.headers, hop, upgrade);
    // Who the client is and how it came is believed only from a trusted
    // proxy; anyone else's claims are removed before ours are added.
    let claims = hop.has_forwarded() && conn.trusted;
    if hop.has_forwarded() && !conn.trusted {
        headers::remove_client_claims(&mut parts.headers);
    }
    // cutover's own client carries requests without a body that ask for
    // no upgrade; hyper's carries the rest. Where the request keeps no
    // forwarding field of its own, that client writes ours after the
    // others (`forwarded_host`), and the header map is left as it is.
    let lite = server.protocol != Protocol::H2
        && !upgrade
        && parts.method != Method::CONNECT
        && body.is_end_stream();
    let authority = target.authority;
    let forwarded_host = if lite && !claims {
        Some(authority.clone())
    } else {
        headers::add_forwarded(
            &mut parts.headers,
            &conn.client_value,
            conn.tls,
            authority.clone(),
            conn.trusted,
        );
        None
    };
    // The upstream's `Host` is the authority the request was routed by:
    // set when it came from the target, or when `Connection` named `Host`.
    if target.replace_host || named_removed {
        match &authority {
            Some(a) => {
                parts.headers.insert(header::HOST, a.clone());
            }
            None => {
                parts.headers.remove(header::HOST);
            }
        }
    }
    let new_pq = match &target.path {
        Some(p) => match request::path_and_query(p, &parts.uri) {
            Some(pq) => Some(pq),
            None => return Err(fail(ex, ProxyError::BadRequest)),
        },
        None => None,
    };
    if server.protocol == Protocol::H2 {
        // h2 upstreams take the target as :scheme, :authority and :path,
        // and the authority stands for `Host` (RFC 9113 §8.3.1): the field
        // is not sent beside it, as strict servers (nginx) refuse a request
        // that names its host twice.
        parts.headers.remove(header::HOST);
        // An HTTP/2 client's absolute target that already names this host
        // is kept as it is (no new URI per request).
        let kept = new_pq.is_none()
            && parts.uri.scheme().is_some()
            && parts.uri.authority().map(|a| a.as_str().as_bytes())
                == authority.as_ref().map(|a| a.as_bytes());
        if !kept && parts.method != Method::CONNECT {
            // No host at all (HTTP/1.0): hyper's h2 client needs one.
            let authority = authority.unwrap_or_else(|| HeaderValue::from_static("localhost"));
            let pq = new_pq.or_else(|| parts.uri.path_and_query().cloned());
            let pq = pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            match request::absolute(&authority, pq) {
                Some(uri) => parts.uri = uri,
                None => return Err(fail(ex, ProxyError::BadRequest)),
            }
        }
        parts.version = Version::HTTP_2;
    } else {
        if parts.version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        if let Some(pq) = new_pq {
            parts.uri = Uri::from(pq);
        } else if parts.uri.scheme().is_some() {
            // Absolute form (HTTP/2 clients' targets are); HTTP/1.1
            // upstreams want origin form.
            let pq = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        }
        parts.version = Version::HTTP_11;
    }
    Ok(Prepared {
        parts,
        body,
        lite,
        forwarded_host,
        server,
        max_body,
        connect_timeout,
        response_timeout,
        answer: Answer {
            ex,
            pool,
            upgrade,
            client_upgrade,
            set_cookie,
            color_header,
        },
    })
}

/// Phases 4–6. A plain `fn` returning an `async move` block, which captures
/// `p` once and uses its fields in place (an `async fn` would keep its
/// argument twice). The rare paths — a second server after a failed
/// connect, a request sent again — are boxed futures of their own, so
/// that they do not enlarge every request's future.
#[allow(clippy::manual_async_fn)]
fn exchange(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    mut p: Prepared,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    async move {
        // Phase 4: a connection; a connect failure is retried once on
        // another healthy server of the same colour (nothing was sent yet).
        let a = &mut p.answer;
        let started = a.ex.started();
        let lite = p.lite;
        let mut up = match connection(
            &worker,
            &a.pool,
            &p.server,
            p.connect_timeout,
            started,
            lite,
        )
        .await
        {
            Ok(c) => c,
            Err(()) => match a.pool.pick(Some(p.server.id)).cloned() {
                Some(other) => {
                    a.ex.bind(&other);
                    let now = tokio::time::Instant::now();
                    let second = connection(&worker, &a.pool, &other, p.connect_timeout, now, lite);
                    match Box::pin(second).await {
                        Ok(c) => c,
                        Err(()) => return Ok(fail(p.answer.ex, ProxyError::Connect)),
                    }
                }
                None => return Ok(fail(p.answer.ex, ProxyError::Connect)),
            },
        };

        // Phase 5: send, and wait for the response head. An upstream may
        // close an idle keep-alive connection just as we reuse it
        // (hyper#2136). When that happens the request is sent again, once,
        // on a fresh connection, if the upstream cannot have seen it or if
        // it is idempotent (RFC 9110 §9.2.2).
        if let Sender::Lite(c) = &mut up.tx {
            // cutover's client: the head it writes is written from
            // `p.parts`, which stay here to be sent again.
            let sent = send_lite(&worker, &conn, &p, c).await;
            return Ok(match sent {
                Ok(Err(e)) if up.reused && e.may_send_again(p.parts.method.is_idempotent()) => {
                    tracing::debug!(server = %up.server.addr, error = %e, "reused upstream connection failed; retrying on a fresh one");
                    let server = up.server.clone();
                    drop(up);
                    Box::pin(send_again_lite(worker.clone(), conn.clone(), p, server)).await
                }
                sent => {
                    let got = lite_reply(sent, &up.server);
                    answer(&worker, &conn, p.answer, up, got)
                }
            });
        }
        // hyper's client, for requests with a body and upgrades: boxed, so
        // that its state does not enlarge every request's future.
        Ok(Box::pin(send_hyper(worker, conn, p, up, started)).await)
    }
}

/// Phase 5 through hyper's client: it hands the request back if it never
/// sent it; a copy of a bodiless idempotent request's head is kept only
/// on a connection that sat idle long enough for the upstream to give up
/// on it, so busy connections pay nothing.
async fn send_hyper(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    mut p: Prepared,
    mut up: Pooled,
    started: tokio::time::Instant,
) -> Response<ResponseBody> {
    if let Some(host) = p.forwarded_host.take() {
        // Routed for cutover's client, which the pool could not offer.
        headers::add_forwarded(
            &mut p.parts.headers,
            &conn.client_value,
            conn.tls,
            host,
            conn.trusted,
        );
    }
    // An h2 upstream may refuse a stream it never processed (GOAWAY,
    // REFUSED_STREAM): a bodiless request is kept to be sent again then,
    // whatever its method (RFC 9113 §8.7).
    let bodiless = p.body.is_end_stream() && !p.answer.upgrade;
    let replay = (bodiless
        && (up.tx.is_h2()
            || (up.idle_for(started) >= REPLAY_AFTER_IDLE && p.parts.method.is_idempotent())))
    .then(|| Box::new(head_copy(&p.parts)));
    let req = Request::from_parts(p.parts, RequestBody::new(p.body, p.max_body));
    let sent = worker
        .deadlines
        .within(
            deadline::after(p.response_timeout),
            up.tx.try_send_request(req),
        )
        .await;
    match again(sent, &up, replay) {
        Ok(sent) => {
            let got = hyper_reply(sent, &up.server);
            answer(&worker, &conn, p.answer, up, got)
        }
        Err(again) => {
            let resend = send_again(
                worker.clone(),
                conn.clone(),
                again,
                up.server,
                p.connect_timeout,
                p.response_timeout,
                p.answer,
            );
            Box::pin(resend).await
        }
    }
}

/// Phase 5 through cutover's own client on `c`, within the response
/// timeout, with the `X-Forwarded-*` fields if they are still due. (The
/// `Within` future itself, not an `async fn` around it, which would keep
/// its arguments a second time.)
fn send_lite<'a>(
    worker: &'a Worker,
    conn: &'a ConnInfo,
    p: &'a Prepared,
    c: &'a mut h1::Conn,
) -> impl Future<Output = SentLite> + 'a {
    let forwarded = p.forwarded_host.as_ref().map(|host| h1::Forwarded {
        client: &conn.client_value,
        tls: conn.tls,
        host: host.as_ref(),
    });
    worker.deadlines.within(
        deadline::after(p.response_timeout),
        c.send(&p.parts, forwarded),
    )
}

/// What sending a request upstream through hyper gives: the response
/// head, hyper's error (with the request if it was never sent), or the
/// deadline passed.
type Sent = Result<
    Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>,
    deadline::Elapsed,
>;

/// What sending through cutover's own client gives: the response head,
/// its body's framing and whether the connection may be reused after it;
/// the client's error; or the deadline passed.
type SentLite = Result<Result<(Response<()>, h1::Framing, bool), h1::Error>, deadline::Elapsed>;

/// A response head from either client.
enum Reply {
    Hyper(Response<Incoming>),
    Lite(Response<()>, h1::Framing, bool),
}

/// Why no response head came.
enum Failed {
    Timeout,
    /// The request body passed `max_body_bytes` on its way.
    TooLarge,
    /// The client's body broke its framing (`false`) or the client went
    /// away mid-body (`true`).
    Client(bool),
    Upstream,
}

fn hyper_reply(sent: Sent, server: &Server) -> Result<Reply, Failed> {
    match sent {
        Ok(Ok(r)) => Ok(Reply::Hyper(r)),
        Err(_) => Err(Failed::Timeout),
        Ok(Err(e)) => {
            let e = e.into_error();
            if let Some(f) = client_fault(&e) {
                return Err(f);
            }
            tracing::debug!(server = %server.addr, error = %e, "upstream exchange failed");
            Err(Failed::Upstream)
        }
    }
}

fn lite_reply(sent: SentLite, server: &Server) -> Result<Reply, Failed> {
    match sent {
        Ok(Ok((r, framing, reuse))) => Ok(Reply::Lite(r, framing, reuse)),
        Err(_) => Err(Failed::Timeout),
        Ok(Err(e)) => {
            tracing::debug!(server = %server.addr, error = %e, "upstream exchange failed");
            Err(Failed::Upstream)
        }
    }
}

/// `Err`: the request to send again — the reused connection failed and
/// the request came back unsent, or a copy of it was kept.
#[allow(clippy::result_large_err)]
fn again(
    sent: Sent,
    up: &Pooled,
    replay: Option<Box<HeadCopy>>,
) -> Result<Sent, Request<RequestBody>> {
    match sent {
        Ok(Err(mut e)) if (up.reused && !up.tx.is_h2()) || unprocessed(e.error()) => {
            match e.take_message().or_else(|| replay.map(|h| rebuild(*h))) {
                Some(again) => {
                    tracing::debug!(server = %up.server.addr, error = %e.error(), "reused upstream connection failed; retrying on a fresh one");
                    Err(again)
                }
                None => Ok(Ok(Err(e))),
            }
        }
        other => Ok(other),
    }
}

/// Did an h2 upstream refuse the stream without processing it: above the
/// last stream id of its GOAWAY, or reset with REFUSED_STREAM? Such a
/// request can be sent again on a new connection (RFC 9113 §8.7).
fn unprocessed(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        src = s.source();
    }
    false
}

/// Send `req` again on a fresh connection to `server` (hyper's client),
/// and answer.
async fn send_again(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<RequestBody>,
    server: Arc<Server>,
    connect_timeout: Duration,
    response_timeout: Duration,
    a: Answer,
) -> Response<ResponseBody> {
    let fresh = match worker.upstreams.connect(&server, connect_timeout).await {
        Ok(c) => c.into_hyper().await,
        Err(e) => Err(e),
    };
    let Ok(mut fresh) = fresh else {
        server.connect_errors.fetch_add(1, Relaxed);
        server.record_failure(&a.pool.config.passive);
        return fail(a.ex, ProxyError::Connect);
    };
    let sent = worker
        .deadlines
        .within(
            deadline::after(response_timeout),
            fresh.tx.try_send_request(req),
        )
        .await;
    let got = hyper_reply(sent, &server);
    answer(&worker, &conn, a, fresh, got)
}

/// Send a bodiless request again on a fresh connection to `server`
/// (cutover's own client), and answer.
async fn send_again_lite(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    p: Prepared,
    server: Arc<Server>,
) -> Response<ResponseBody> {
    let Ok(mut fresh) = worker.upstreams.connect(&server, p.connect_timeout).await else {
        server.connect_errors.fetch_add(1, Relaxed);
        server.record_failure(&p.answer.pool.config.passive);
        return fail(p.answer.ex, ProxyError::Connect);
    };
    let Sender::Lite(c) = &mut fresh.tx else {
        // An h2 server: its requests never come this way.
        return fail(p.answer.ex, ProxyError::Upstream);
    };
    let sent = send_lite(&worker, &conn, &p, c).await;
    let got = lite_reply(sent, &server);
    answer(&worker, &conn, p.answer, fresh, got)
}

/// Phase 6: the response, or the error answer.
fn answer(
    worker: &Worker,
    conn: &ConnInfo,
    mut a: Answer,
    up: Pooled,
    got: Result<Reply, Failed>,
) -> Response<ResponseBody> {
    let reply = match got {
        Ok(r) => r,
        // Passive health counts only what the upstream did: a timeout
        // here (connect failures are counted where they happen) and the
        // 5xx it sends. Nothing a client does counts against it.
        Err(Failed::TooLarge) => return fail(a.ex, ProxyError::BodyTooLarge),
        Err(Failed::Client(aborted)) => {
            tracing::debug!(peer = %conn.peer, server = %up.server.addr, aborted, "client request body failed");
            let err = if aborted {
                ProxyError::ClientAbort
            } else {
                ProxyError::BadRequest
            };
            return fail(a.ex, err);
        }
        Err(Failed::Timeout) => {
            up.server.record_failure(&a.pool.config.passive);
            return fail(a.ex, ProxyError::UpstreamTimeout);
        }
        Err(Failed::Upstream) => return fail(a.ex, ProxyError::Upstream),
    };
    let status = match &reply {
        Reply::Hyper(r) => r.status(),
        Reply::Lite(r, ..) => r.status(),
    };
    if status.is_server_error() {
        up.server.record_failure(&a.pool.config.passive);
    } else {
        up.server.record_success();
    }
    a.ex.set_status(status.as_u16());
    let (mut rparts, body) = match reply {
        Reply::Hyper(mut resp) => {
            let tunnel = a.upgrade && status == StatusCode::SWITCHING_PROTOCOLS;
            if tunnel {
                conn.state.upgrade();
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                if let Some(client_upgrade) = a.client_upgrade {
                    super::tunnel::spawn(
                        worker.shared.clone(),
                        a.pool.clone(),
                        client_upgrade,
                        upstream_upgrade,
                        up,
                    );
                }
            } else {
                a.ex.set_upstream(up);
            }
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, tunnel);
            headers::plain_content_length(&mut parts.headers, body.size_hint().exact());
            (parts, Either::Left(body))
        }
        Reply::Lite(resp, framing, reuse) => {
            // Its client left the hop-by-hop fields out already.
            let (parts, ()) = resp.into_parts();
            (parts, Either::Right(h1::Body::new(up, framing, reuse)))
        }
    };
    // An HTTP/1.1 client gets an HTTP/1.1 status line whatever the
    // upstream spoke (hyper answers an HTTP/1.0 client in its version).
    rparts.version = Version::HTTP_11;
    if a.color_header {
        rparts.headers.insert(
            headers::X_CUTOVER_COLOR.clone(),
            COLOR_VALUES[a.pool.color.index()].clone(),
        );
    }
    if let Some(c) = a.set_cookie {
        rparts.headers.append(header::SET_COOKIE, c);
    }
    let body = match body {
        Either::Left(b) => ResponseBody::upstream(b, a.ex),
        Either::Right(b) => ResponseBody::lite(b, a.ex),
    };
    Response::from_parts(rparts, body)
}

/// A reused connection idle at least this long may have been closed by
/// the upstream as we picked it: keep what is needed to send again.
const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(100);

/// What a bodiless request needs to be sent again.
struct HeadCopy {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
}

fn head_copy(parts: &http::request::Parts) -> HeadCopy {
    HeadCopy {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
    }
}

fn rebuild(h: HeadCopy) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = h.method;
    *req.uri_mut() = h.uri;
    *req.headers_mut() = h.headers;
    *req.version_mut() = h.version;
    req
}

/// A pooled connection if one is idle and usable, else a new one. `lite`:
/// the request can go through cutover's own client; if not, a connection
/// of that client is handed to hyper's first.
async fn connection(
    worker: &Worker,
    pool: &Pool,
    server: &Arc<Server>,
    connect_timeout: Duration,
    now: tokio::time::Instant,
    lite: bool,
) -> Result<Pooled, ()> {
    while let Some(mut c) = worker.upstreams.take(server, now, lite) {
        if c.tx.ready().await.is_ok() {
            if lite || !c.tx.is_lite() {
                return Ok(c);
            }
            // Boxed, as below: rare, and its future is large.
            if let Ok(c) = Box::pin(c.into_hyper()).await {
                return Ok(c);
            }
        }
    }
    // Boxed: the connect future is large and rarely needed.
    let fresh = Box::pin(async {
        let c = worker.upstreams.connect(server, connect_timeout).await?;
        if lite {
            Ok(c)
        } else {
            c.into_hyper().await
        }
    });
    match fresh.await {
        Ok(c) => Ok(c),
        Err(e) => {
            server.connect_errors.fetch_add(1, Relaxed);
            server.record_failure(&pool.config.passive);
            tracing::warn!(server = %server.addr, app = %server.app, color = %server.color, error = %e, "upstream connect failed");
            Err(())
        }
    }
}

/// Did the exchange fail because of the client's body? hyper's client
/// reports the body's own error in its source chain.
fn client_fault(e: &hyper::Error) -> Option<Failed> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<TooLarge>() {
            return Some(Failed::TooLarge);
        }
        if let Some(c) = s.downcast_ref::<ClientBody>() {
            return Some(Failed::Client(c.aborted));
        }
        src = s.source();
    }
    None
}

/// The sticky cookie; `Secure` when it is set over TLS, so that it never
/// travels in clear text afterwards.
fn cookie_header(name: &str, id: &[u8; 32], tls: bool) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(name.len() + 80);
    v.extend_from_slice(name.as_bytes());
    v.push(b'=');
    v.extend_from_slice(id);
    v.extend_from_slice(b"; Path=/; HttpOnly; SameSite=Lax");
    if tls {
        v.extend_from_slice(b"; Secure");
    }
    HeaderValue::from_bytes(&v).ok()
}

/// An HTTP/2 client may split `Cookie` into one field per pair (RFC 9113
/// §8.2.3); an HTTP/1.1 upstream gets them joined with `; ` into one.
fn join_cookies(headers: &mut HeaderMap) {
    if let http::header::Entry::Occupied(e) = headers.entry(header::COOKIE) {
        if e.iter().nth(1).is_none() {
            return;
        }
        let (_, values) = e.remove_entry_mult();
        let mut joined = Vec::new();
        for v in values {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// A request refused before routing: 400, with the reason logged.
fn refuse(ex: Exchange, conn: &ConnInfo, why: request::Invalid) -> Response<ResponseBody> {
    tracing::debug!(peer = %conn.peer, reason = %why, "request refused");
    let mut resp = fail(ex, ProxyError::BadRequest);
    // What follows on the connection cannot be trusted to be framed right.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sticky_cookie_is_secure_on_tls() {
        let id = [b'a'; 32];
        let plain = cookie_header("cutover", &id, false).unwrap();
        assert!(plain
            .to_str()
            .unwrap()
            .ends_with("; Path=/; HttpOnly; SameSite=Lax"));
        let tls = cookie_header("cutover", &id, true).unwrap();
        assert!(tls.to_str().unwrap().ends_with("; SameSite=Lax; Secure"));
    }

    #[test]
    fn http2_cookie_fields_are_joined() {
        let mut h = HeaderMap::new();
        for v in ["a=1", "b=2"] {
            h.append(header::COOKIE, HeaderValue::from_static(v));
        }
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }
}
