//! One request through the proxy, in phases:
//! route → check limits → rewrite the request → pick and connect (one retry
//! on connect failure) → send → rewrite the response → stream it back.
//! A request drawn for shadow traffic has its copy started once it is
//! rewritten, and goes on without waiting for it ([`super::mirror`]).

use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http2;

use super::access;
use super::body::{BodyTimeout, ClientBody, RequestBody, TooLarge};
use super::compress::{self, Decision};
use super::deadline;
use super::edits;
use super::error::ProxyError;
use super::exchange::{Exchange, Extra};
use super::h1;
use super::headers;
use super::io::ConnInfo;
use super::request;
use super::response::ResponseBody;
use super::session;
use super::upstream::{Lease, Pooled, Sender};
use super::worker::Worker;
use crate::config::{AccessFormat, OwnAnswers, Protocol, RequestId, Sticky};
use crate::route::access::Refusal;
use crate::route::rule::RequestView;
use crate::route::snapshot::{Placed, Settings, Snapshot};
use crate::route::{App, Pool, Server, Timeout};

static COLOR_VALUES: [HeaderValue; 2] = [
    HeaderValue::from_static("blue"),
    HeaderValue::from_static("green"),
];

/// Did a trusted proxy in front say the client came over https? Its
/// `X-Forwarded-Proto`'s first element is the client's own scheme.
fn behind_tls(conn: &ConnInfo, h: &HeaderMap) -> bool {
    conn.trusted
        && h.get(&headers::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// `308` to the same host (without its port), path and query on https,
/// as nginx's `return 308 https://$host$request_uri`. 308 keeps the
/// method and body (RFC 9110 §15.4.9), where 301 may turn a POST into a
/// GET. A request with no host has nowhere to go: 400.
#[cold]
fn redirect(mut ex: Exchange, own: &OwnAnswers, host: &str, uri: &Uri) -> Response<ResponseBody> {
    let host = without_port(host);
    // `OPTIONS *` has no path of its own.
    let pq = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let location = match own.https_port {
        443 => format!("https://{host}{pq}"),
        port => format!("https://{host}:{port}{pq}"),
    };
    let location = match HeaderValue::from_str(&location) {
        Ok(v) if !host.is_empty() => v,
        _ => return fail(ex, ProxyError::BadRequest, own, false),
    };
    ex.set_status(StatusCode::PERMANENT_REDIRECT.as_u16());
    let id = ex.request_id().cloned();
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), Some(ex)));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    if let Some((name, id)) = id {
        resp.headers_mut().insert(name, id);
    }
    resp
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

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

/// While the process drains (shutdown, or a successor took over), every
/// HTTP/1.1 response says `Connection: close`: the client sends its next
/// request on a new connection — to the successor — instead of on this
/// one as it closes (HAProxy's `idle-close-on-response`). HTTP/2 clients
/// got GOAWAY instead.
fn close_if_draining(ex: &Exchange, headers: &mut HeaderMap) {
    if ex.last_on_connection() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The answer for a request that goes no further than the proxy, as the
/// app's (or `[server]`'s) `own` answers have it.
#[cold]
fn fail(mut ex: Exchange, err: ProxyError, own: &OwnAnswers, tls: bool) -> Response<ResponseBody> {
    ex.set_status(err.status().as_u16());
    let resp: Response<Bytes> = err.answer(own, tls);
    let (mut parts, body) = resp.into_parts();
    if let Some((name, id)) = ex.request_id() {
        parts.headers.insert(name.clone(), id.clone());
    }
    close_if_draining(&ex, &mut parts.headers);
    Response::from_parts(parts, ResponseBody::full(body, Some(ex)))
}

/// The request id (taken or generated, and set on the request) and the
/// access log's fields, when the config asks for either. `Some`: the
/// request body's byte count, for the log.
fn extras(
    settings: &Settings,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    ex: &mut Exchange,
) -> Option<Arc<AtomicU64>> {
    if settings.request_id == RequestId::Off && settings.access_log.is_none() {
        return None;
    }
    // Built in its box: moved into one, it would be copied whole.
    let mut extra = Box::<Extra>::default();
    if settings.request_id != RequestId::Off {
        // Out of the header map: the id goes upstream from `extra`
        // (written into the head by the HTTP/1.1 client, added to an h2
        // request's fields as it is sent), one map operation fewer.
        let name = &settings.request_id_header;
        let client = req.headers_mut().remove(name);
        let kept = match settings.request_id {
            RequestId::Keep => client.filter(headers::acceptable_request_id),
            _ => None,
        };
        let id = kept.unwrap_or_else(headers::new_request_id);
        extra.request_id = Some((name.clone(), id));
    }
    let mut counter = None;
    if let Some(format) = settings.access_log {
        let bytes_in = Arc::new(AtomicU64::new(0));
        counter = Some(bytes_in.clone());
        let uri = req.uri();
        let query = (settings.access_query || format == AccessFormat::Combined)
            .then(|| uri.query().map(str::to_string))
            .flatten();
        let h = req.headers();
        extra.log = Some(access::Fields {
            format,
            method: req.method().clone(),
            host: h.get(header::HOST).cloned().or_else(|| {
                uri.authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            path: uri.path().to_string(),
            query,
            version: req.version(),
            client: conn.peer.ip(),
            user_agent: h.get(header::USER_AGENT).cloned(),
            referer: h.get(header::REFERER).cloned(),
            app: None,
            placed: None,
            upstream_time: None,
            bytes_in,
            tls: conn.tls_detail.clone(),
        });
    }
    ex.extra = Some(extra);
    counter
}

/// A routed request, rewritten for its upstream.
struct Prepared {
    parts: http::request::Parts,
    body: RequestBody,
    /// The request has no body (its body ended with its head).
    bodiless: bool,
    /// The client's request came on an HTTP/2 stream, which it may reset.
    from_h2: bool,
    /// What the request asks for that decides how its answer is read.
    asked: h1::Asked,
    /// `Some`: the `X-Forwarded-*` fields are still to be added, with this
    /// as `X-Forwarded-Host` — by the HTTP/1.1 client as it writes the
    /// head, instead of into the header map.
    forwarded_host: Option<Option<HeaderValue>>,
    server: Arc<Server>,
    connect_timeout: Duration,
    /// From when the request is sent whole (`sent`): until then the
    /// upstream waits for the client, and that is the client's time.
    response_timeout: Duration,
    sent: std::cell::Cell<bool>,
    answer: Answer,
}

/// What the answer (phase 6) needs.
struct Answer {
    ex: Exchange,
    /// `upstream_read_timeout`, for the response body.
    read_timeout: Duration,
    pool: Arc<Pool>,
    /// The client's side of an upgrade or `CONNECT`, for the tunnel.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    set_cookie: Option<HeaderValue>,
    marks: Marks,
    /// The app compresses responses, and this request's may be.
    compress: Option<compress::Allowed>,
}

/// Fields the answer gets from the config besides the upstream's.
struct Marks {
    color_header: bool,
    /// The app's `response_headers`, with this request's values; `None`
    /// (no rules) costs the answer one test.
    edits: Option<Box<edits::ResponseEdits>>,
}

/// Why a request goes no further than the proxy, and whose answers say so
/// (the app's, once it is known; `[server]`'s before).
enum Stop<'a> {
    /// A plain request of an app that wants https.
    Redirect(&'a OwnAnswers),
    Error(ProxyError, &'a OwnAnswers),
    /// Turned away by the app's `allow`/`deny`, `basic_auth` or
    /// `rate_limit`, or by the `rate_limit` of the rule that placed it.
    Refused(Refusal, &'a OwnAnswers),
}

impl Stop<'_> {
    #[cold]
    fn answer(
        self,
        ex: Exchange,
        conn: &ConnInfo,
        req: &Request<Incoming>,
        host: &str,
    ) -> Response<ResponseBody> {
        match self {
            Stop::Redirect(own) => redirect(ex, own, host, req.uri()),
            Stop::Error(err, own) => fail(ex, err, own, conn.tls),
            Stop::Refused(why, own) => refused(ex, why, own, conn.tls),
        }
    }
}

/// The answer of a request the app's door turned away: 403; 401 with the
/// challenge (RFC 7235 §3.1); 429 with when to come back, in whole
/// seconds (RFC 6585 §4).
fn refused(ex: Exchange, why: Refusal, own: &OwnAnswers, tls: bool) -> Response<ResponseBody> {
    let (err, field) = match why {
        Refusal::Forbidden => (ProxyError::Forbidden, None),
        Refusal::Unauthorized(challenge) => (
            ProxyError::Unauthorized,
            Some((header::WWW_AUTHENTICATE, challenge)),
        ),
        Refusal::TooManyRequests(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let value = HeaderValue::from(secs.max(1));
            (
                ProxyError::TooManyRequests,
                Some((header::RETRY_AFTER, value)),
            )
        }
    };
    let mut resp = fail(ex, err, own, tls);
    if let Some((name, value)) = field {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// What routing decided for a request (phase 2), for the phases after it.
struct Routed<'s> {
    /// The app's limits for one request.
    limits: &'s crate::config::RequestLimits,
    /// The app's header rules and path rewriting, if it has any.
    edits: Option<&'s crate::route::snapshot::Edits>,
    pool: Arc<Pool>,
    /// Placed by a rule (not by the split or the live colour).
    by_rule: bool,
    /// Drawn for a copy to the standby colour.
    sampled: Option<super::mirror::Sampled>,
    set_cookie: Option<HeaderValue>,
    compression: Option<Arc<crate::config::Compression>>,
    hop: headers::HopFields,
    /// An upgrade the client asked for and `[server] upgrades` allows.
    upgrade: bool,
}

/// Phases 1–3: check the request, route it, check its limits, rewrite it.
/// `Err` is the answer of a request that goes no further. (Both sides are
/// large, and both are moved once, into the request's future: boxing
/// either would add an allocation per request.)
#[allow(clippy::result_large_err)]
fn prepare(
    worker: &Rc<Worker>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    mut ex: Exchange,
) -> Result<Prepared, Response<ResponseBody>> {
    // One snapshot load for the whole request.
    let snap = worker.shared.snapshot.load();
    let bytes_in = extras(&snap.settings, conn, &mut req, &mut ex);
    // Before any answer, so that every access log line, refusals and
    // redirects too, names the client behind a trusted proxy.
    let client_ip = client_ip(&snap.settings, conn, &req);
    if let Some(f) = ex.log_fields() {
        f.client = client_ip;
    }
    // Phase 1: the request's own checks.
    let answers = &snap.settings.answers;
    let target = match checked(conn, &req) {
        Ok(t) => t,
        Err(why) => return Err(refuse(ex, conn, why, answers)),
    };
    if let Some(answer) = acme_answer(&worker.shared, conn, &req) {
        return Err(answer_text(ex, answer));
    }
    // Phase 2: route.
    let routed = match route(&snap, conn, &mut req, &target, client_ip, &mut ex) {
        Ok(r) => r,
        Err(stop) => return Err(stop.answer(ex, conn, &req, target.host())),
    };
    // Phase 2b: limits that need no upstream, and the server.
    let limits = routed.limits;
    let pool = routed.pool.clone();
    ex.choose(&pool, !routed.by_rule);
    let server = match server_for(&pool, &req, limits.max_body_bytes) {
        Ok(s) => s,
        Err(err) => return Err(fail(ex, err, &pool.answers, conn.tls)),
    };
    ex.bind(&server);

    // Phase 3: the upstream request.
    let (mut parts, body) = req.into_parts();
    let from_h2 = parts.version == Version::HTTP_2;
    let upgrade = routed.upgrade;
    let client_upgrade = if upgrade || parts.method == Method::CONNECT {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    // Read before the request's fields are rewritten: `Accept-Encoding`
    // goes upstream as the client sent it (the upstream may compress
    // itself, and then the proxy leaves the body alone).
    let compress = routed
        .compression
        .and_then(|c| compress::Allowed::new(c, &parts.method, &parts.headers, upgrade));
    let routed_authority = routed
        .sampled
        .as_ref()
        .and_then(|_| target.authority.clone());
    // An app's own edits, with the values of their variables.
    let edits = routed.edits.map(|e| {
        let host = target.authority.as_ref();
        let vars = edits::vars(client_ip, ex.request_id(), server.color, host, conn.tls);
        (e, vars)
    });
    let response_edits = edits.as_ref().and_then(|(e, v)| edits::response(e, v));
    let forwarded_host = match rewrite(
        &mut parts, conn, &server, target, routed.hop, upgrade, edits,
    ) {
        Ok(f) => f,
        Err(err) => return Err(fail(ex, err, &pool.answers, conn.tls)),
    };
    let asked = h1::Asked::new(&parts.method, upgrade);
    // The hook of shadow traffic: the copy starts from the rewritten
    // request.
    let tee = routed.sampled.and_then(|s| {
        let live = super::mirror::Live {
            parts: &parts,
            body: &body,
            upgrade,
            authority: routed_authority.as_ref(),
            forwarded_host: forwarded_host.as_ref(),
            request_id: ex.request_id(),
        };
        let (tee, tap) = super::mirror::start(worker, conn, s, live)?;
        ex.mirror = Some(tap);
        tee
    });
    Ok(Prepared {
        bodiless: body.is_end_stream(),
        from_h2,
        body: RequestBody::new(body, limits.max_body_bytes, limits.client_body_timeout)
            .counting(bytes_in)
            .teeing(tee),
        parts,
        asked,
        forwarded_host,
        server,
        connect_timeout: limits.upstream_connect_timeout,
        response_timeout: limits.upstream_response_timeout,
        sent: std::cell::Cell::new(false),
        answer: Answer {
            ex,
            read_timeout: limits.upstream_read_timeout,
            pool,
            client_upgrade,
            set_cookie: routed.set_cookie,
            marks: Marks {
                color_header: snap.settings.color_header,
                edits: response_edits,
            },
            compress,
        },
    })
}

/// Phase 2b: a body too large for `max_body` by its length is refused
/// before any upstream is involved; then a server of the pool.
fn server_for(
    pool: &Pool,
    req: &Request<Incoming>,
    max_body: u64,
) -> Result<Arc<Server>, ProxyError> {
    // hyper parsed and checked `Content-Length` (for HTTP/2 too): the
    // body's exact size hint is that length, with no second lookup.
    if max_body > 0 && req.body().size_hint().exact().is_some_and(|n| n > max_body) {
        return Err(ProxyError::BodyTooLarge);
    }
    pool.pick(None).cloned().ok_or(ProxyError::NoHealthyServer)
}

/// The client's address: the peer's, or from a trusted proxy, the one it
/// forwarded for.
fn client_ip(settings: &Settings, conn: &ConnInfo, req: &Request<Incoming>) -> std::net::IpAddr {
    if !conn.trusted {
        return conn.peer.ip();
    }
    headers::client_behind(req.headers(), conn.peer.ip(), &settings.trusted_proxies)
}

/// Phase 1: the request's target (Host, path) and framing, before it is
/// routed anywhere.
fn checked(conn: &ConnInfo, req: &Request<Incoming>) -> Result<request::Target, request::Invalid> {
    let target = request::check(req.method(), req.uri(), req.version(), req.headers())?;
    // hyper keeps `Transfer-Encoding` and drops the length beside it, and
    // keeps one of two equal lengths: the socket saw them (a flag read
    // per request).
    if conn.state.saw_bad_framing() && conn.state.take_bad_framing() {
        return Err(request::Invalid::BadFraming);
    }
    // A body of unknown length on HTTP/1.1 is chunked: its coding must be
    // `chunked` alone (hyper takes any list that ends with it).
    if req.version() != Version::HTTP_2
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
        && !request::only_chunked(req.headers())
    {
        return Err(request::Invalid::BadCoding);
    }
    Ok(target)
}

/// Phase 2: the app, the colour and its pool, and what the app does to
/// the answer; the access log learns the app and how it was placed.
fn route<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    target: &request::Target,
    client_ip: std::net::IpAddr,
    ex: &mut Exchange,
) -> Result<Routed<'s>, Stop<'s>> {
    let host = target
        .authority
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path = target.path(req.uri());
    let found = snap.find_app(host, path);
    let own = found.map_or(&*snap.settings.answers, |a| &*a.answers);
    // Plain requests of an app that wants https go no further; one a
    // TLS-terminating proxy in front already took over https is let
    // through, or it would come back forever.
    if !conn.tls && own.redirect_https && !behind_tls(conn, req.headers()) {
        return Err(Stop::Redirect(own));
    }
    let Some(app) = found else {
        return Err(Stop::Error(ProxyError::NoApp, own));
    };
    // `CONNECT` makes a raw tunnel of the connection if the app says 2xx:
    // only for an app that asks for it.
    if req.method() == Method::CONNECT && !own.allow_connect {
        return Err(Stop::Error(ProxyError::MethodNotAllowed, own));
    }
    // The app's door. `true`: the client's `Authorization` was for us,
    // and is taken out once routing has read the request.
    let mut strip_authorization = false;
    if let Some(gate) = &app.gate {
        let now = ex.started().into_std();
        match gate.admit(req.headers(), client_ip, now) {
            Ok(strip) => strip_authorization = strip,
            Err(why) => {
                if let Some(f) = ex.log_fields() {
                    f.app = Some(app.name.clone());
                }
                return Err(Stop::Refused(why, own));
            }
        }
    }
    let view = RequestView::new(path, req.headers(), client_ip, Some(&conn.memo));
    let decision = app.decide(&view);
    if let Some(f) = ex.log_fields() {
        f.app = Some(app.name.clone());
        f.placed = Some(match decision.placed {
            Placed::Rule(i) => app
                .rules
                .get(i as usize)
                .map_or("rule".into(), |r| r.name.as_str().into()),
            Placed::Split => "split".into(),
            Placed::Live => "live".into(),
        });
    }
    if let Placed::Rule(i) = decision.placed {
        rule_limit(app, i as usize, req.headers(), client_ip, ex)
            .map_err(|r| Stop::Refused(r, own))?;
    }
    let set_cookie = match (&decision.new_cookie, &app.sticky) {
        (Some(id), Sticky::Cookie(name)) => cookie_header(name, &id.as_hex(), conn.tls),
        _ => None,
    };
    if strip_authorization {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    let hop = headers::HopFields::scan(req.headers());
    Ok(Routed {
        limits: &app.limits,
        edits: app.edits.as_deref(),
        pool: app.pool(decision.color).clone(),
        by_rule: matches!(decision.placed, Placed::Rule(_)),
        // Drawn while the app is at hand; the copy starts in phase 3.
        sampled: super::mirror::sample(app, decision.color),
        set_cookie,
        compression: app.compress.clone(),
        hop,
        upgrade: hop.upgrade_requested(req.headers())
            && headers::upgrade_allowed(req.headers(), &snap.settings.upgrades),
    })
}

/// The `rate_limit` of the rule at `index`, which placed the request; it
/// counts after the app's own, which the door checked first.
fn rule_limit(
    app: &App,
    index: usize,
    headers: &HeaderMap,
    client_ip: std::net::IpAddr,
    ex: &Exchange,
) -> Result<(), Refusal> {
    let Some(limiter) = app.rules.limiter(index) else {
        return Ok(());
    };
    let now = ex.started().into_std();
    limiter
        .check(headers, client_ip, now)
        .map_err(Refusal::TooManyRequests)
}

/// Phase 3: the request's fields and target as `server` takes them —
/// hop-by-hop fields out, the client's forwarding claims out unless a
/// trusted proxy made them, ours in, `Host` from the routed authority, and
/// the target in the form the upstream's protocol wants. `Some(host)`:
/// the `X-Forwarded-*` fields are left to the HTTP/1.1 client to write,
/// with `host` as `X-Forwarded-Host`. `Err`: the target cannot be sent.
/// An app's `edits` come last: its path rewriting, and its header rules
/// after cutover's own fields (which are then written into the map).
#[allow(clippy::option_option)]
fn rewrite(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    server: &Server,
    target: request::Target,
    hop: headers::HopFields,
    upgrade: bool,
    edits: Option<(&crate::route::snapshot::Edits, crate::config::edits::Vars)>,
) -> Result<Option<Option<HeaderValue>>, ProxyError> {
    let named_removed = headers::strip_found(&mut parts.headers, hop, upgrade);
    // Who the client is and how it came is believed only from a trusted
    // proxy; anyone else's claims are removed before ours are added.
    let claims = hop.has_forwarded() && conn.trusted;
    if hop.has_forwarded() && !conn.trusted {
        headers::remove_client_claims(&mut parts.headers);
    }
    // Where the request keeps no forwarding field of its own, the
    // HTTP/1.1 client writes ours after the others (`forwarded_host`), and
    // the header map is left as it is.
    let h1 = server.protocol != Protocol::H2;
    let request_rules = edits
        .as_ref()
        .and_then(|(e, v)| Some((e.request_headers.as_deref()?, v)));
    // The app's path, from the path the request was routed by (`CONNECT`
    // and `OPTIONS *` have none to rewrite).
    let paths = edits.as_ref().and_then(|(e, _)| e.paths.as_deref());
    let rewritten = match paths {
        Some(paths) if target.path.is_some() || parts.uri.path().starts_with('/') => {
            edits::path(paths, target.path(&parts.uri), &parts.uri)?
        }
        _ => None,
    };
    let authority = target.authority;
    let forwarded_host = if h1 && !claims && request_rules.is_none() {
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
    if let Some((rules, vars)) = request_rules {
        rules.apply(&mut parts.headers, vars);
    }
    let bad = ProxyError::BadRequest;
    let new_pq = match (rewritten, &target.path) {
        (Some(pq), _) => Some(pq),
        (None, Some(p)) => Some(request::path_and_query(p, &parts.uri).ok_or(bad)?),
        (None, None) => None,
    };
    request::target_for(parts, server, authority, new_pq).ok_or(bad)?;
    Ok(forwarded_host)
}

/// Phases 4–6. A plain `fn` returning an `async move` block, which captures
/// `p` once and uses its fields in place (an `async fn` would keep its
/// argument twice). The rare paths — a second server after a failed
/// connect, a request sent again, HTTP/2 upstreams — are boxed futures of
/// their own, so that they do not enlarge every request's future.
#[allow(clippy::manual_async_fn)]
fn exchange(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    mut p: Prepared,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    async move {
        // hyper drops the future of a stream its client reset, but looks
        // for the reset only once the future is pending. A client that
        // sends HEADERS and RST_STREAM together (rapid reset) has its
        // reset read by then: yielding once lets hyper see it before
        // anything reaches an upstream.
        if p.from_h2 {
            tokio::task::yield_now().await;
        }
        // Phase 4: a connection; a connect failure is retried once on
        // another healthy server of the same colour (nothing was sent yet).
        let a = &mut p.answer;
        let started = a.ex.started();
        let up = match connection(
            &worker,
            &conn,
            &a.pool,
            &p.server,
            p.connect_timeout,
            started,
        )
        .await
        {
            Ok(c) => c,
            Err(()) => match a.pool.pick(Some(p.server.id)).cloned() {
                Some(other) => {
                    a.ex.bind(&other);
                    let now = tokio::time::Instant::now();
                    let second =
                        connection(&worker, &conn, &a.pool, &other, p.connect_timeout, now);
                    match Box::pin(second).await {
                        Ok(c) => c,
                        Err(()) => return Ok(connect_failed(p.answer, &conn)),
                    }
                }
                None => return Ok(connect_failed(p.answer, &conn)),
            },
        };

        // Phase 5: send, and wait for the response head. An upstream may
        // close an idle keep-alive connection just as we reuse it
        // (hyper#2136). When that happens the request is sent again, once,
        // on a fresh connection, if the upstream cannot have seen it or if
        // it is bodiless and idempotent (RFC 9110 §9.2.2).
        let Pooled { tx, lease } = up;
        let mut c = match tx {
            Sender::H1(c) => c,
            Sender::H2(tx) => return Ok(Box::pin(send_h2(worker, conn, p, tx, lease)).await),
        };
        // The head is written from `p.parts`, which stay here to be sent
        // again.
        let sent = send_h1(&worker, &conn, &mut p, &mut c).await;
        Ok(match sent {
            Ok(Err(e)) if lease.reused && e.may_send_again(p.parts.method.is_idempotent()) => {
                tracing::debug!(server = %lease.server.addr, error = %e, "reused upstream connection failed; retrying on a fresh one");
                drop(c);
                Box::pin(send_again(worker.clone(), conn.clone(), p, lease.server)).await
            }
            sent => {
                let got = h1_reply(sent, &lease.server);
                answer_h1(&worker, &conn, p.answer, c, lease, got)
            }
        })
    }
}

/// Phase 5 on an HTTP/1.1 connection, within the response timeout, with
/// the `X-Forwarded-*` fields if they are still due. (The `Within` future
/// itself, not an `async fn` around it, which would keep its arguments a
/// second time.)
fn send_h1<'a>(
    worker: &'a Worker,
    conn: &'a ConnInfo,
    p: &'a mut Prepared,
    c: &'a mut h1::Conn,
) -> impl Future<Output = SentH1> + 'a {
    let forwarded = p.forwarded_host.as_ref().map(|host| h1::Forwarded {
        client: &conn.client_value,
        tls: conn.tls,
        host: host.as_ref(),
    });
    p.sent.set(false);
    let req = h1::Outgoing {
        parts: &p.parts,
        forwarded,
        asked: p.asked,
        request_id: p.answer.ex.request_id(),
        sent: Some(&p.sent),
        write_timeout: Some(p.response_timeout),
    };
    let body = (!p.bodiless).then_some(&mut p.body);
    worker
        .deadlines
        .within(p.response_timeout, &p.sent, c.send(req, body))
}

/// What sending on an HTTP/1.1 connection gives: the final response head,
/// the client's error, or the deadline passed.
type SentH1 = Result<Result<h1::Head, h1::Error>, deadline::Elapsed>;

/// Why no response head came.
enum Failed {
    Timeout,
    /// The request body passed `max_body_bytes` on its way.
    TooLarge,
    /// The client's body broke its framing (`false`) or the client went
    /// away mid-body (`true`).
    Client(bool),
    /// The client paused within its body past `client_body_timeout`.
    BodyTimeout,
    Upstream,
}

fn h1_reply(sent: SentH1, server: &Server) -> Result<h1::Head, Failed> {
    match sent {
        Ok(Ok(head)) => Ok(head),
        Err(_) => Err(Failed::Timeout),
        Ok(Err(h1::Error::Body(e))) => Err(body_fault(&*e).unwrap_or(Failed::Upstream)),
        Ok(Err(h1::Error::WriteTimeout)) => Err(Failed::Timeout),
        Ok(Err(e)) => {
            tracing::debug!(server = %server.addr, error = %e, "upstream exchange failed");
            Err(Failed::Upstream)
        }
    }
}

/// Send a request again on a fresh HTTP/1.1 connection to `server`, and
/// answer.
async fn send_again(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    mut p: Prepared,
    server: Arc<Server>,
) -> Response<ResponseBody> {
    let client = (conn.peer, conn.local);
    let fresh = session::fresh_h1(&worker.upstreams, &server, p.connect_timeout, client).await;
    let (mut c, lease) = match fresh {
        Ok(fresh) => fresh,
        Err(why) => {
            connect_error(&server, &p.answer.pool, &why);
            return connect_failed(p.answer, &conn);
        }
    };
    let sent = send_h1(&worker, &conn, &mut p, &mut c).await;
    let got = h1_reply(sent, &server);
    answer_h1(&worker, &conn, p.answer, c, lease, got)
}

/// Phase 6 for an HTTP/1.1 upstream: the response — its body read off the
/// connection as the client takes it, or a tunnel — or the error answer.
fn answer_h1(
    worker: &Worker,
    conn: &Rc<ConnInfo>,
    mut a: Answer,
    c: Box<h1::Conn>,
    lease: Lease,
    got: Result<h1::Head, Failed>,
) -> Response<ResponseBody> {
    let head = match got {
        Ok(head) => head,
        Err(why) => return failed(conn, a, &lease.server, why),
    };
    record_head(
        &mut a,
        &lease.server,
        head.response.status(),
        head.response.headers(),
    );
    let h1::Head {
        response,
        framing,
        reuse,
        switched,
        connection,
    } = head;
    let (mut parts, ()) = response.into_parts();
    connection_fields(&mut parts, connection, switched);
    if !switched {
        let body = h1::Body::new(c, framing, reuse);
        let body = ResponseBody::h1(body, lease, a.ex, a.read_timeout);
        return respond(
            parts,
            a.pool,
            a.set_cookie,
            a.marks,
            conn.tls,
            a.compress,
            body,
        );
    }
    // A `101` to an upgrade or a 2xx to `CONNECT`: the connection is now a
    // tunnel, joined to the client's once hyper has answered it.
    conn.state.upgrade();
    if let Some(client) = a.client_upgrade.take() {
        let (shared, pool) = (worker.shared.clone(), a.pool.clone());
        let log = a.ex.log_at_tunnel_end(parts.status.as_u16());
        super::tunnel::spawn(shared, pool, lease.server, client, *c, conn.clone(), log);
    }
    let body = ResponseBody::full(Bytes::new(), Some(a.ex));
    respond(parts, a.pool, a.set_cookie, a.marks, conn.tls, None, body)
}

/// The upstream connection's own fields stay here (RFC 9110 §7.6.1): the
/// codec kept them apart, and the fields its `Connection` named go too. A
/// `101` keeps `Upgrade` and `Connection: upgrade` for the tunnel.
fn connection_fields(parts: &mut http::response::Parts, c: h1::ConnectionFields, switched: bool) {
    for name in c.named {
        parts.headers.remove(name);
    }
    if switched && parts.status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(protocol) = c.upgrade {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        let upgrade = HeaderValue::from_static("upgrade");
        parts.headers.insert(header::CONNECTION, upgrade);
    }
}

/// Phase 5 and 6 with an HTTP/2 upstream (hyper's client), on the worker's
/// shared connection `tx`. An h2 upstream may refuse a stream it never
/// processed (GOAWAY, REFUSED_STREAM): the request is sent again once on a
/// new connection if hyper hands it back unsent or it is bodiless, whatever
/// its method (RFC 9113 §8.7).
async fn send_h2(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    p: Prepared,
    mut tx: http2::SendRequest<RequestBody>,
    lease: Lease,
) -> Response<ResponseBody> {
    let mut p = p;
    if let Some((name, id)) = p.answer.ex.request_id() {
        p.parts.headers.insert(name.clone(), id.clone());
    }
    let copy = p.bodiless.then(|| head_copy(&p.parts));
    // hyper's client sends the body in a task of its own: the body says
    // when its last frame is taken, and the deadline starts then.
    let body_sent = Arc::new(deadline::BodySent::default());
    let body = if p.bodiless {
        body_sent.set();
        p.body
    } else {
        p.body.signalling(body_sent.clone())
    };
    let req = Request::from_parts(p.parts, body);
    let mut sent = worker
        .deadlines
        .within(p.response_timeout, &*body_sent, tx.try_send_request(req))
        .await;
    if let Ok(Err(e)) = &mut sent {
        if unprocessed(e.error()) {
            if let Some(again) = e.take_message().or_else(|| copy.map(rebuild)) {
                tracing::debug!(server = %lease.server.addr, error = %e.error(), "h2 upstream refused the stream; sending it on a new connection");
                let fresh = worker
                    .upstreams
                    .connect(&lease.server, p.connect_timeout, (conn.peer, conn.local))
                    .await;
                let mut tx = match fresh {
                    Ok(Pooled {
                        tx: Sender::H2(tx), ..
                    }) => tx,
                    other => {
                        let why = other.err().unwrap_or_else(session::other_protocol);
                        connect_error(&lease.server, &p.answer.pool, &why);
                        return connect_failed(p.answer, &conn);
                    }
                };
                // Sent again only whole (bodiless, or handed back unsent
                // with its body): the deadline runs as before.
                sent = worker
                    .deadlines
                    .within(p.response_timeout, &*body_sent, tx.try_send_request(again))
                    .await;
            }
        }
    }
    let mut a = p.answer;
    let resp = match sent {
        Ok(Ok(resp)) => resp,
        Err(_) => return failed(&conn, a, &lease.server, Failed::Timeout),
        Ok(Err(e)) => {
            let e = e.into_error();
            let why = body_fault(&e).unwrap_or_else(|| {
                tracing::debug!(server = %lease.server.addr, error = %e, "upstream exchange failed");
                Failed::Upstream
            });
            return failed(&conn, a, &lease.server, why);
        }
    };
    record_head(&mut a, &lease.server, resp.status(), resp.headers());
    // (HTTP/2 has no hop-by-hop fields: the h2 codec refuses a response
    // that carries any, RFC 9113 §8.2.2.)
    let (parts, body) = resp.into_parts();
    let body = ResponseBody::h2(body, a.ex, a.read_timeout);
    respond(
        parts,
        a.pool,
        a.set_cookie,
        a.marks,
        conn.tls,
        a.compress,
        body,
    )
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

/// Passive health counts only what the upstream did: the 5xx it sends
/// (timeouts in [`failed`], connect failures where they happen).
fn record_head(a: &mut Answer, server: &Server, status: StatusCode, headers: &http::HeaderMap) {
    a.ex.head_arrived();
    a.ex.answered(status.as_u16(), headers);
    if status.is_server_error() {
        server.record_failure(&a.pool.config.passive);
    } else {
        server.record_success();
    }
    a.ex.set_status(status.as_u16());
}

/// The error answer when no response head came. Nothing a client does
/// counts against the upstream's health.
fn failed(conn: &ConnInfo, a: Answer, server: &Server, why: Failed) -> Response<ResponseBody> {
    let err = match why {
        Failed::TooLarge => ProxyError::BodyTooLarge,
        Failed::Client(aborted) => {
            tracing::debug!(peer = %conn.peer, server = %server.addr, aborted, "client request body failed");
            if aborted {
                ProxyError::ClientAbort
            } else {
                ProxyError::BadRequest
            }
        }
        Failed::Timeout => {
            server.record_failure(&a.pool.config.passive);
            a.ex.timed_out(Timeout::UpstreamResponse);
            ProxyError::UpstreamTimeout
        }
        Failed::BodyTimeout => {
            tracing::debug!(peer = %conn.peer, server = %server.addr, "client_body_timeout: the client paused within its body");
            a.ex.timed_out(Timeout::ClientBody);
            ProxyError::ClientTimeout
        }
        Failed::Upstream => ProxyError::Upstream,
    };
    fail(a.ex, err, &a.pool.answers, conn.tls)
}

/// The 502 when no server of the pool could be connected to.
fn connect_failed(a: Answer, conn: &ConnInfo) -> Response<ResponseBody> {
    fail(a.ex, ProxyError::Connect, &a.pool.answers, conn.tls)
}

/// An upstream's response on its way to the client, with cutover's own
/// fields, compressed if the app and the client want it. (The one place
/// both HTTP/1.1 and HTTP/2 upstreams' answers pass.)
fn respond(
    mut parts: http::response::Parts,
    pool: Arc<Pool>,
    set_cookie: Option<HeaderValue>,
    marks: Marks,
    tls: bool,
    compress: Option<compress::Allowed>,
    mut body: ResponseBody,
) -> Response<ResponseBody> {
    if let Some(plan) = compress {
        if let Decision::Compress(enc) = plan.apply(parts.status, &mut parts.headers) {
            body.compress(enc);
        }
    }
    // HSTS only over TLS: a browser ignores it on plain HTTP, where an
    // attacker could forge it anyway (RFC 6797 §7.2). The upstream's own
    // value wins.
    if tls {
        if let Some(v) = &pool.answers.hsts {
            if !parts
                .headers
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
            {
                parts
                    .headers
                    .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
            }
        }
    }
    // An HTTP/1.1 client gets an HTTP/1.1 status line whatever the
    // upstream spoke (hyper answers an HTTP/1.0 client in its version).
    parts.version = Version::HTTP_11;
    if marks.color_header {
        parts.headers.insert(
            headers::X_CUTOVER_COLOR.clone(),
            COLOR_VALUES[pool.color.index()].clone(),
        );
    }
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
    // The app's rules come after cutover's own fields, whatever the
    // status (nginx's `add_header … always`).
    if let Some(e) = marks.edits {
        e.apply(&mut parts.headers);
    }
    if let Some(ex) = body.exchange() {
        if let Some((name, id)) = ex.request_id() {
            parts.headers.insert(name.clone(), id.clone());
        }
        close_if_draining(ex, &mut parts.headers);
        if ex.to_h2() && body.is_upstreams() {
            // An HTTP/2 client must keep asking for the body
            // ([`super::response::Watched`]).
            let worker = ex.worker_rc();
            let (watched, weak) = super::response::Watched::wrap(body);
            worker.watch_stream(weak);
            return Response::from_parts(parts, watched);
        }
    }
    Response::from_parts(parts, body)
}

/// What a bodiless request needs to be sent again on HTTP/2.
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

/// A pooled connection if one is idle and usable, else a new one; a
/// failure is held against the server.
async fn connection(
    worker: &Worker,
    conn: &ConnInfo,
    pool: &Pool,
    server: &Arc<Server>,
    connect_timeout: Duration,
    now: tokio::time::Instant,
) -> Result<Pooled, ()> {
    let client = (conn.peer, conn.local);
    session::connection(&worker.upstreams, server, connect_timeout, client, now)
        .await
        .map_err(|e| connect_error(server, pool, &e))
}

/// A connection to `server` could not be made: counted, held against its
/// passive health, and logged with the reason (a certificate that does
/// not verify says why).
fn connect_error(server: &Server, pool: &Pool, e: &std::io::Error) {
    server.connect_errors.fetch_add(1, Relaxed);
    server.record_failure(&pool.config.passive);
    tracing::warn!(server = %server.addr, app = %server.app, color = %server.color, error = %e, "upstream connect failed");
}

/// Did the exchange fail because of the request body? Its own error is
/// `e` or in `e`'s source chain (hyper's client wraps it).
fn body_fault(e: &(dyn std::error::Error + 'static)) -> Option<Failed> {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.is::<TooLarge>() {
            return Some(Failed::TooLarge);
        }
        if s.is::<BodyTimeout>() {
            return Some(Failed::BodyTimeout);
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
// Not inlined: only some requests need it, and inlined it spread
// the request path's code over more cache lines.
#[inline(never)]
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

/// A request refused before routing: 400, with the reason logged.
/// Where ACME's http-01 challenge is asked for (RFC 8555 §8.3).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// ACME http-01 (`[tls.acme]`): the CA asks a plain listener for the
/// key authorization of a token; while its challenge is open, that is
/// the answer (and nothing is proxied under the prefix then).
#[inline]
fn acme_answer(
    shared: &crate::control::Shared,
    conn: &ConnInfo,
    req: &Request<Incoming>,
) -> Option<String> {
    let token = req.uri().path().strip_prefix(ACME_CHALLENGE)?;
    if conn.tls {
        return None;
    }
    shared.acme_http.load().get(token).cloned()
}

/// 200 with `text` as the body (`text/plain`).
#[cold]
fn answer_text(ex: Exchange, text: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(text), Some(ex)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cold]
fn refuse(
    ex: Exchange,
    conn: &ConnInfo,
    why: request::Invalid,
    own: &OwnAnswers,
) -> Response<ResponseBody> {
    tracing::debug!(peer = %conn.peer, reason = %why, "request refused");
    let mut resp = fail(ex, ProxyError::BadRequest, own, conn.tls);
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
    fn a_redirect_drops_only_the_port_of_its_host() {
        assert_eq!(without_port("shop.test:8080"), "shop.test");
        assert_eq!(without_port("shop.test"), "shop.test");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
