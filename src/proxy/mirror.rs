//! Shadow traffic: a share of the live colour's requests is copied to the
//! standby colour, whose answer is read, compared with the live one, and
//! thrown away.
//!
//! The live request never waits for its copy. Everything the live path
//! does is synchronous and small — a random draw, a few checks, a copy of
//! the head, a counter — and the copy runs in a task of its own on the
//! worker ([`tokio::task::spawn_local`]), on the worker's mirror pools
//! (never a connection a live request could use), within the app's
//! `timeout`, with at most `max_in_flight` copies under way per app. A
//! slow or dead standby holds its copies' slots and sockets, nothing else.
//! (nginx's `mirror` holds the main request until its subrequest ends.)
//! While bodies are compared, the live answer's body frames are kept by
//! reference (up to `max_body`) until the copy's answer is in; the
//! comparison itself, in [`crate::route::mirror`], runs in the copy's
//! task. A request that is not copied keeps nothing.
//!
//! A copy is never sent again once the standby may have seen it: only a
//! pooled connection the standby had already closed, which fails before
//! the copy reaches it, is replaced by a fresh one, as on the live path.
//!
//! What a copy does stays out of everything that judges the standby's real
//! traffic: no passive health, no per-colour statistics, no access log
//! line. It shows only in [`MirrorStats`] (`cutover_mirror_total`,
//! `cutover_mirror_skipped_total`, status' last differences, and the
//! copies' own answers a rollout's judge may weigh).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{RequestBody, Tee};
use super::exchange::{BodyCopy, Kept, LiveAnswer, Tap};
use super::h1;
use super::headers;
use super::io::ConnInfo;
use super::request;
use super::session;
use super::upstream::{Pooled, Sender};
use super::worker::Worker;
use crate::config::{Color, MirrorConfig, Protocol};
use crate::route::mirror::{self as record, Difference, Divergence, MirrorStats, Outcome, Skip};
use crate::route::sticky::BUCKETS;
use crate::route::{App, Pool, Server};

/// On every copy, so that the standby (and whoever reads its logs) can
/// tell copies from real requests.
pub static X_CUTOVER_MIRROR: HeaderName = HeaderName::from_static("x-cutover-mirror");

/// The longest path a difference records.
const MAX_PATH: usize = 256;

/// A live request drawn for a copy, with what the copy needs of the
/// snapshot (taken before the request lets the snapshot go).
pub struct Sampled {
    config: Arc<MirrorConfig>,
    stats: Arc<MirrorStats>,
    standby: Arc<Pool>,
}

/// Is this request, routed to `color`, copied? Only requests to the live
/// colour are, in the share the mirror percent says. With mirroring off
/// this is one comparison.
pub fn sample(app: &App, color: Color) -> Option<Sampled> {
    let bp = app.mirror_bp();
    if bp == 0 || color != app.state.live {
        return None;
    }
    if bp < BUCKETS && fastrand::u32(..BUCKETS) >= bp {
        return None;
    }
    Some(Sampled {
        config: app.mirror_in_force.clone(),
        stats: app.mirror_stats.clone(),
        standby: app.pool(app.state.standby()).clone(),
    })
}

/// The live request as rewritten for its upstream: what its copy is made
/// from.
pub struct Live<'a> {
    pub parts: &'a http::request::Parts,
    pub body: &'a Incoming,
    /// A WebSocket (or other) upgrade was asked for.
    pub upgrade: bool,
    /// The authority the request was routed by.
    pub authority: Option<&'a HeaderValue>,
    /// `Some`: the `X-Forwarded-*` fields are still to be added, with this
    /// as `X-Forwarded-Host` (as the live request's HTTP/1.1 client does).
    pub forwarded_host: Option<&'a Option<HeaderValue>>,
    /// The request id, which the live request's HTTP/1.1 client writes
    /// into its head (it is not in `parts`): the copy carries it too.
    pub request_id: Option<&'a (http::HeaderName, HeaderValue)>,
}

/// Start the copy of a sampled request, or count why not. `Some`: the tee
/// for the live request's body (when it has one) and the tap for its
/// exchange, which the copy is compared with.
pub fn start(
    worker: &Rc<Worker>,
    conn: &ConnInfo,
    s: Sampled,
    live: Live<'_>,
) -> Option<(Option<Tee>, Box<Tap>)> {
    let Sampled {
        config,
        stats,
        standby,
    } = s;
    let parts = live.parts;
    if live.upgrade || parts.method == Method::CONNECT {
        stats.skip(Skip::Upgrade);
        return None;
    }
    if !config.methods.contains(&parts.method) {
        stats.skip(Skip::Method);
        return None;
    }
    let (tee, body) = if live.body.is_end_stream() {
        (None, None)
    } else {
        match live.body.size_hint().exact() {
            None => {
                stats.skip(Skip::BodyLengthUnknown);
                return None;
            }
            Some(n) if n > config.max_body => {
                stats.skip(Skip::BodyTooLarge);
                return None;
            }
            Some(0) => (None, None),
            Some(n) => {
                let (tee, rx) = Tee::new(n);
                (Some(tee), Some(rx))
            }
        }
    };
    if stats.in_flight.fetch_add(1, Relaxed) >= config.max_in_flight {
        stats.in_flight.fetch_sub(1, Relaxed);
        stats.count(Outcome::Dropped);
        return None;
    }
    let slot = Slot(stats.clone());
    let mut headers = parts.headers.clone();
    headers.insert(X_CUTOVER_MIRROR.clone(), HeaderValue::from_static("1"));
    if let Some((name, id)) = live.request_id {
        headers.insert(name.clone(), id.clone());
    }
    // The copy's body is sent whole, at once: nothing to wait for.
    headers.remove(header::EXPECT);
    let head = Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers,
        authority: live.authority.cloned(),
        forwarded: live.forwarded_host.cloned(),
        client: conn.client_value.clone(),
        tls: conn.tls,
        trusted: conn.trusted,
    };
    let keep = config.compare_body.then_some(config.max_body);
    let (tap, answer) = Tap::new(keep, config.compare_headers);
    let job = Job {
        head,
        body,
        answer,
        config,
        stats,
        standby,
        client: (conn.peer, conn.local),
        slot,
    };
    tokio::task::spawn_local(run(worker.clone(), job));
    Some((tee, Box::new(tap)))
}

/// Holds one of the app's `max_in_flight` places while a copy is under
/// way (also when its task is dropped at shutdown).
struct Slot(Arc<MirrorStats>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A copy's request head, before it is framed for the standby's protocol.
struct Head {
    method: Method,
    uri: Uri,
    /// The live request's upstream version: `HTTP/2` when its `Cookie`
    /// may be split.
    version: Version,
    headers: HeaderMap,
    authority: Option<HeaderValue>,
    forwarded: Option<Option<HeaderValue>>,
    client: HeaderValue,
    tls: bool,
    trusted: bool,
}

impl Head {
    /// The head as `server` takes it: origin form and `Host` for HTTP/1.1
    /// (the `X-Forwarded-*` fields, if still due, written by its client);
    /// an absolute target and no `Host` for HTTP/2, as the live request's
    /// ([`request::target_for`]). The live request's upstream may speak
    /// the other protocol.
    fn for_server(&self, server: &Server) -> Option<http::request::Parts> {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        let authority = self
            .authority
            .clone()
            .or_else(|| self.headers.get(header::HOST).cloned());
        if server.protocol == Protocol::H2 {
            if let Some(host) = &self.forwarded {
                headers::add_forwarded(
                    &mut parts.headers,
                    &self.client,
                    self.tls,
                    host.clone(),
                    self.trusted,
                );
            }
        } else if !parts.headers.contains_key(header::HOST) {
            if let Some(a) = &self.authority {
                parts.headers.insert(header::HOST, a.clone());
            }
        }
        request::target_for(&mut parts, server, authority, None)?;
        Some(parts)
    }
}

/// Everything a copy's task needs.
struct Job {
    head: Head,
    /// The live request's body, whole, once it has streamed upstream.
    body: Option<tokio::sync::oneshot::Receiver<Vec<Bytes>>>,
    /// The live answer, when the live request ends.
    answer: tokio::sync::oneshot::Receiver<LiveAnswer>,
    config: Arc<MirrorConfig>,
    stats: Arc<MirrorStats>,
    standby: Arc<Pool>,
    /// The live request's client and listener, for a PROXY header.
    client: (SocketAddr, SocketAddr),
    slot: Slot,
}

/// What the standby gave, or why it gave nothing.
type Shadow = Result<ShadowAnswer, Failure>;

/// The standby's answer to a copy.
struct ShadowAnswer {
    status: u16,
    headers: HeaderMap,
    /// Up to `max_body`, as the live body is kept.
    body: Kept,
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Connect,
    Timeout,
    Upstream,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Upstream => "upstream",
        }
    }
}

/// A copy, from the live body's end to the comparison.
async fn run(worker: Rc<Worker>, job: Job) {
    let Job {
        head,
        body,
        answer,
        config,
        stats,
        standby,
        client,
        slot,
    } = job;
    let body = match body {
        None => None,
        Some(rx) => match rx.await {
            Ok(frames) => Some(concat(frames)),
            Err(_) => {
                drop(slot);
                stats.skip(Skip::LiveIncomplete);
                return;
            }
        },
    };
    let Some(server) = standby.pick(None).cloned() else {
        drop(slot);
        stats.skip(Skip::NoServer);
        return;
    };
    let asked = std::time::Instant::now();
    let shadow = ask_standby(&worker, &server, &head, body, &config, client).await;
    drop(slot);
    // The standby's own answer is evidence about it, compared or not.
    let status = shadow.as_ref().ok().map(|a| a.status);
    stats.evidence.record(status, asked.elapsed());
    let live = match answer.await {
        Ok(live) if live.status != 0 => live,
        _ => {
            stats.skip(Skip::LiveIncomplete);
            return;
        }
    };
    let Some(compared) = compare(&live, shadow, &config) else {
        stats.skip(Skip::LiveIncomplete);
        return;
    };
    stats.count(compared.outcome);
    tracing::debug!(
        server = %server.addr,
        method = %head.method,
        path = head.uri.path(),
        live = live.status,
        shadow = ?compared.shadow_status,
        outcome = compared.outcome.as_str(),
        error = compared.error.map(Failure::as_str),
        "mirrored request compared"
    );
    if compared.outcome != Outcome::Same {
        stats.record_difference(difference(&head, live.status, &compared));
    }
}

/// The standby's answer to the copy, or why there is none, within the
/// mirror's `timeout` (which also caps the connect timeout).
async fn ask_standby(
    worker: &Worker,
    server: &Arc<Server>,
    head: &Head,
    body: Option<Bytes>,
    config: &MirrorConfig,
    client: (SocketAddr, SocketAddr),
) -> Shadow {
    let connect_timeout = worker
        .shared
        .snapshot
        .load()
        .settings
        .limits
        .upstream_connect_timeout
        .min(config.timeout);
    let exchange = send(
        worker,
        server,
        head,
        body,
        config.max_body,
        connect_timeout,
        client,
    );
    match tokio::time::timeout(config.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

/// How a copy's answer compared with the live one.
struct Compared {
    outcome: Outcome,
    /// The standby's status, when it answered.
    shadow_status: Option<u16>,
    /// Why the standby gave no answer.
    error: Option<Failure>,
    /// Where the bodies or header fields differ.
    divergence: Option<Divergence>,
}

/// Compare the standby's answer with the live one: the status class,
/// then the bodies when both were kept whole, then the header fields
/// when they are compared. `None` when the live body did not arrive
/// whole, so there is nothing to compare with.
fn compare(live: &LiveAnswer, shadow: Shadow, config: &MirrorConfig) -> Option<Compared> {
    let class = |s: u16| s / 100;
    let differs = |outcome, status, divergence| Compared {
        outcome,
        shadow_status: Some(status),
        error: None,
        divergence,
    };
    let shadow = match shadow {
        Err(why) => {
            return Some(Compared {
                outcome: Outcome::Error,
                shadow_status: None,
                error: Some(why),
                divergence: None,
            })
        }
        Ok(s) if class(s.status) != class(live.status) => {
            return Some(differs(Outcome::StatusDiffers, s.status, None))
        }
        Ok(s) => s,
    };
    if let Some(Kept::Incomplete) = live.body {
        return None;
    }
    if let (Some(Kept::Whole(a)), Kept::Whole(b)) = (&live.body, &shadow.body) {
        let d = record::body_divergence(a, b, &config.ignore_json_fields);
        if d.is_some() {
            return Some(differs(Outcome::BodyDiffers, shadow.status, d));
        }
    }
    if let Some(h) = &live.headers {
        let d = record::header_divergence(h, &shadow.headers, &config.ignore_headers);
        if d.is_some() {
            return Some(differs(Outcome::HeadersDiffer, shadow.status, d));
        }
    }
    Some(differs(Outcome::Same, shadow.status, None))
}

/// The record of a copy that differed, its path cut to `MAX_PATH` bytes.
fn difference(head: &Head, live_status: u16, compared: &Compared) -> Difference {
    let mut path = head.uri.path().to_string();
    if path.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
    }
    Difference {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        method: head.method.to_string(),
        path,
        live_status,
        shadow_status: compared.shadow_status,
        outcome: compared.outcome.as_str(),
        error: compared.error.map(Failure::as_str),
        divergence: compared.divergence.clone(),
    }
}

/// The live body's frames as one buffer (at most `max_body` bytes).
fn concat(frames: Vec<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.into_iter().next().unwrap_or_default();
    }
    let mut all = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for f in frames {
        all.extend_from_slice(&f);
    }
    all.freeze()
}

/// Send the copy to `server` on the worker's mirror pool and read its
/// answer, its body up to `max_body` (a longer one closes the connection
/// rather than being read on). Nothing here touches the server's health
/// or counters.
async fn send(
    worker: &Worker,
    server: &Arc<Server>,
    head: &Head,
    body: Option<Bytes>,
    max_body: u64,
    connect_timeout: Duration,
    client: (SocketAddr, SocketAddr),
) -> Shadow {
    let parts = head.for_server(server).ok_or(Failure::Upstream)?;
    let pooled = connection(worker, server, connect_timeout, client).await?;
    let Pooled { tx, lease } = pooled;
    let mut c = match tx {
        Sender::H1(c) => c,
        Sender::H2(mut tx) => {
            let body = body.map_or_else(RequestBody::empty, RequestBody::copy);
            let resp = tx
                .send_request(Request::from_parts(parts, body))
                .await
                .map_err(|_| Failure::Upstream)?;
            let (head, mut body) = resp.into_parts();
            let mut kept = BodyCopy::new(max_body);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| Failure::Upstream)?;
                if let Some(d) = frame.data_ref() {
                    kept.update(d);
                    if kept.over() {
                        break; // dropping the body resets the stream
                    }
                }
            }
            return Ok(ShadowAnswer {
                status: head.status.as_u16(),
                headers: head.headers,
                body: kept.finish(true),
            });
        }
    };
    let mut copy = body.clone().map(RequestBody::copy);
    let mut sent = c.send(outgoing(head, &parts), copy.as_mut()).await;
    let mut lease = lease;
    if let Err(e) = &sent {
        // A pooled connection the standby had closed: the copy did not
        // reach it (or, bodiless and idempotent, cannot matter twice).
        if lease.reused && e.may_send_again(head.method.is_idempotent()) {
            let pools = &worker.mirror_upstreams;
            (c, lease) = session::fresh_h1(pools, server, connect_timeout, client)
                .await
                .map_err(|_| Failure::Connect)?;
            let mut copy = body.map(RequestBody::copy);
            sent = c.send(outgoing(head, &parts), copy.as_mut()).await;
        }
    }
    let h1::Head {
        response,
        framing,
        reuse,
        switched,
        ..
    } = sent.map_err(|_| Failure::Upstream)?;
    if switched {
        return Err(Failure::Upstream);
    }
    let (head, ()) = response.into_parts();
    let mut body = h1::Body::new(c, framing, reuse);
    let mut kept = BodyCopy::new(max_body);
    let mut complete = true;
    loop {
        match std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    kept.update(d);
                    if kept.over() {
                        complete = false;
                        break;
                    }
                }
            }
            Some(Err(_)) => return Err(Failure::Upstream),
            None => break,
        }
    }
    if complete {
        if let Some(conn) = body.take_reusable() {
            let now = tokio::time::Instant::now();
            worker.mirror_upstreams.put_back(
                Pooled {
                    tx: Sender::H1(conn),
                    lease,
                },
                now,
            );
        }
    }
    Ok(ShadowAnswer {
        status: head.status.as_u16(),
        headers: head.headers,
        body: kept.finish(complete),
    })
}

/// The copy's head for cutover's HTTP/1.1 client.
fn outgoing<'a>(head: &'a Head, parts: &'a http::request::Parts) -> h1::Outgoing<'a> {
    h1::Outgoing {
        parts,
        forwarded: head.forwarded.as_ref().map(|host| h1::Forwarded {
            client: &head.client,
            tls: head.tls,
            host: host.as_ref(),
        }),
        asked: h1::Asked::new(&head.method, false),
        // In `head.headers` already.
        request_id: None,
        // The copy's whole exchange is within its own `timeout`.
        sent: None,
        write_timeout: None,
    }
}

/// An idle connection of the mirror pool, or a new one.
async fn connection(
    worker: &Worker,
    server: &Arc<Server>,
    connect_timeout: Duration,
    client: (SocketAddr, SocketAddr),
) -> Result<Pooled, Failure> {
    let now = tokio::time::Instant::now();
    session::connection(
        &worker.mirror_upstreams,
        server,
        connect_timeout,
        client,
        now,
    )
    .await
    .map_err(|e| {
        tracing::debug!(server = %server.addr, error = %e, "mirror connect failed");
        Failure::Connect
    })
}
