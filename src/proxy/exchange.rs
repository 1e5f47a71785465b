//! One request's bookkeeping, from the moment hyper hands it to us until
//! its response body has been sent (or abandoned).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::io::ConnState;
use super::upstream::Pooled;
use super::worker::Worker;
use crate::route::{Pool, Server, Timeout};

/// Dropped when the request ends. It undoes the in-flight counts, records
/// the response, and gives the upstream connection back to the worker's
/// pool if — and only if — the response was read to its end.
pub struct Exchange {
    worker: Rc<Worker>,
    conn: Arc<ConnState>,
    start: Instant,
    /// The colour's pool the request was routed to.
    pool: Option<Arc<Pool>>,
    /// The server it is bound to, once picked.
    server: Option<Arc<Server>>,
    status: u16,
    upstream: Option<Pooled>,
    complete: Cell<bool>,
    /// Response body bytes sent to the client.
    bytes_out: Cell<u64>,
    /// Placed by the split or as the live colour (not by a rule): a
    /// sample for a rollout's judge.
    judged: bool,
    /// When the upstream's response head arrived, after `start`.
    head: Option<std::time::Duration>,
    /// The upstream stalled within its response body.
    faulted: Cell<bool>,
    /// The request id and the access log's fields, when either is on
    /// (boxed: most of a request's future is moved, and this is large).
    pub extra: Option<Box<Extra>>,
    /// A mirrored request: what its copy is compared with, sent to the
    /// copy's task when the request ends (boxed: most requests have none).
    pub mirror: Option<Box<Tap>>,
}

/// What a mirrored request's copy will be compared with: the live
/// upstream's status and, as the comparison asks, its header fields and
/// its body as the upstream sent it (before cutover compresses it).
pub struct Tap {
    /// The live upstream's status; 0 until its head arrives.
    status: u16,
    /// `Some` while header fields are compared; filled when the head
    /// arrives.
    headers: Option<http::HeaderMap>,
    body: Option<BodyCopy>,
    to: tokio::sync::oneshot::Sender<LiveAnswer>,
}

impl Tap {
    /// `keep_up_to`: keep the body, up to this many bytes (`None`: bodies
    /// are not compared); `headers`: keep the head's header fields.
    pub fn new(
        keep_up_to: Option<u64>,
        headers: bool,
    ) -> (Tap, tokio::sync::oneshot::Receiver<LiveAnswer>) {
        let (to, rx) = tokio::sync::oneshot::channel();
        let tap = Tap {
            status: 0,
            headers: headers.then(http::HeaderMap::new),
            body: keep_up_to.map(BodyCopy::new),
            to,
        };
        (tap, rx)
    }
}

/// The live side of a comparison.
#[derive(Debug)]
pub struct LiveAnswer {
    /// The live upstream's status; 0: it gave none.
    pub status: u16,
    /// `None` when header fields are not compared.
    pub headers: Option<http::HeaderMap>,
    /// `None` when bodies are not compared.
    pub body: Option<Kept>,
}

/// A body kept as it arrives, up to a limit: the frames themselves
/// (reference-counted, so keeping one copies nothing), to be compared
/// byte by byte, or as JSON, once both answers are in.
#[derive(Debug)]
pub struct BodyCopy {
    frames: Vec<Bytes>,
    len: u64,
    limit: u64,
}

/// What keeping a body came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The whole body.
    Whole(Bytes),
    /// Longer than the limit: not compared.
    Over,
    /// It did not arrive whole.
    Incomplete,
}

impl BodyCopy {
    pub fn new(limit: u64) -> BodyCopy {
        BodyCopy {
            frames: Vec::new(),
            len: 0,
            limit,
        }
    }

    pub fn update(&mut self, data: &Bytes) {
        self.len += data.len() as u64;
        if self.len <= self.limit {
            self.frames.push(data.clone());
        } else {
            // Past the limit it will not be compared: let the frames go.
            self.frames = Vec::new();
        }
    }

    /// Is the body past the limit already (no use reading on)?
    pub fn over(&self) -> bool {
        self.len > self.limit
    }

    /// `complete`: the body arrived to its end.
    pub fn finish(self, complete: bool) -> Kept {
        if self.over() {
            return Kept::Over;
        }
        if !complete {
            return Kept::Incomplete;
        }
        if self.frames.len() == 1 {
            return Kept::Whole(self.frames.into_iter().next().unwrap_or_default());
        }
        let mut all = BytesMut::with_capacity(self.len as usize);
        for f in self.frames {
            all.extend_from_slice(&f);
        }
        Kept::Whole(all.freeze())
    }
}

/// See [`Exchange::log_at_tunnel_end`].
pub struct TunnelLog {
    fields: super::access::Fields,
    shared: Arc<crate::control::Shared>,
    request_id: Option<http::HeaderValue>,
    start: Instant,
    status: u16,
    color: Option<crate::model::Color>,
    server: Option<Arc<Server>>,
}

impl TunnelLog {
    /// The tunnel closed, having written `to_client` bytes to the client
    /// and `from_client` to the upstream.
    pub fn write(self, to_client: u64, from_client: u64) {
        let Some(log) = self.shared.access_log.get() else {
            return;
        };
        self.fields.bytes_in.fetch_add(from_client, Relaxed);
        log.write(self.fields.line(&super::access::Outcome {
            status: self.status,
            elapsed: self.start.elapsed(),
            bytes_out: to_client,
            color: self.color,
            server: self.server.as_deref(),
            request_id: self.request_id.as_ref(),
        }));
    }
}

/// What only the request id and the access log need.
#[derive(Default)]
pub struct Extra {
    /// The field's name and the request's id, sent upstream and back.
    pub request_id: Option<(http::HeaderName, http::HeaderValue)>,
    pub log: Option<super::access::Fields>,
}

impl Exchange {
    /// Does the response go out while the process drains, to an
    /// HTTP/1.1 client? Then it is the last on its connection.
    pub fn last_on_connection(&self) -> bool {
        self.worker.stopping.get() && !self.conn.is_h2()
    }

    /// Does the response go to an HTTP/2 client?
    pub fn to_h2(&self) -> bool {
        self.conn.is_h2()
    }

    /// The worker serving the request.
    pub fn worker_rc(&self) -> Rc<Worker> {
        self.worker.clone()
    }

    pub fn begin(worker: Rc<Worker>, conn: Arc<ConnState>) -> Exchange {
        conn.request_started();
        Exchange {
            worker,
            conn,
            start: Instant::now(),
            pool: None,
            server: None,
            status: 0,
            upstream: None,
            complete: Cell::new(false),
            bytes_out: Cell::new(0),
            judged: false,
            head: None,
            faulted: Cell::new(false),
            extra: None,
            mirror: None,
        }
    }

    /// The upstream answered `status` with `headers` (what a copy is
    /// compared with).
    pub fn answered(&mut self, status: u16, headers: &http::HeaderMap) {
        if let Some(tap) = &mut self.mirror {
            tap.status = status;
            if let Some(h) = &mut tap.headers {
                h.clone_from(headers);
            }
        }
    }

    /// A frame of the upstream's response body, as it sent it.
    pub fn upstream_data(&mut self, data: &Bytes) {
        if let Some(kept) = self.mirror.as_mut().and_then(|t| t.body.as_mut()) {
            kept.update(data);
        }
    }

    /// The request's id field, if it has one.
    pub fn request_id(&self) -> Option<&(http::HeaderName, http::HeaderValue)> {
        self.extra.as_ref()?.request_id.as_ref()
    }

    /// An upgraded request's access log line, taken out of the exchange
    /// (which ends with the `101`) to be written when its tunnel closes,
    /// with the tunnel's bytes and its whole duration, as nginx does.
    pub fn log_at_tunnel_end(&mut self, status: u16) -> Option<TunnelLog> {
        let fields = self.extra.as_mut()?.log.take()?;
        Some(TunnelLog {
            fields,
            shared: self.worker.shared.clone(),
            request_id: self.request_id().map(|(_, v)| v.clone()),
            start: self.start,
            status,
            color: self.pool.as_ref().map(|p| p.color),
            server: self.server.clone(),
        })
    }

    /// The access log's fields, when the log is on.
    pub fn log_fields(&mut self) -> Option<&mut super::access::Fields> {
        self.extra.as_mut()?.log.as_mut()
    }

    pub fn count_out(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }

    /// The upstream's response head arrived (for the access log).
    pub fn head_arrived(&mut self) {
        // A clock read only for those who use it: a rollout or a guard
        // judging slowness, and the access log.
        let slow_judged = self.judged
            && (self.pool.as_ref()).is_some_and(|p| p.stats.slow_micros.load(Relaxed) > 0);
        if !slow_judged && self.log_fields().is_none() {
            return;
        }
        let took = self.start.elapsed();
        self.head = slow_judged.then_some(took);
        if let Some(f) = self.log_fields() {
            f.upstream_time = Some(took);
        }
    }

    /// The request was routed to `pool`: count it (and its answer) there;
    /// `judged`: see [`Exchange::judged`].
    pub fn choose(&mut self, pool: &Arc<Pool>, judged: bool) {
        pool.stats.in_flight.fetch_add(1, Relaxed);
        self.pool = Some(pool.clone());
        self.judged = judged;
    }

    /// The request is bound to `server` (again, after a connect retry).
    pub fn bind(&mut self, server: &Arc<Server>) {
        if let Some(old) = &self.server {
            old.in_flight.fetch_sub(1, Relaxed);
        }
        server.in_flight.fetch_add(1, Relaxed);
        self.server = Some(server.clone());
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_upstream(&mut self, conn: Pooled) {
        self.upstream = Some(conn);
    }

    /// When the request began (one clock read serves the whole exchange).
    pub fn started(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start)
    }

    /// The request (or its connection) timed out in `phase`.
    pub fn timed_out(&self, phase: Timeout) {
        if phase == Timeout::UpstreamRead {
            self.faulted.set(true);
        }
        if let Some(pool) = &self.pool {
            pool.stats.timed_out(phase);
        }
    }

    pub fn mark_complete(&self) {
        self.complete.set(true);
    }

    pub fn finish(self, complete: bool) {
        if complete {
            self.complete.set(true);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.request_ended();
        if !self.complete.get() && self.conn.take_send_timed_out() {
            self.timed_out(Timeout::ClientSend);
        }
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(self.start);
        if let Some(server) = &self.server {
            server.in_flight.fetch_sub(1, Relaxed);
        }
        if let Some(pool) = &self.pool {
            pool.stats.in_flight.fetch_sub(1, Relaxed);
            if self.status == super::error::CLIENT_ABORT {
                pool.stats.client_aborts.fetch_add(1, Relaxed);
            } else if self.status != 0 {
                pool.stats.record(self.status, elapsed);
                if self.judged {
                    pool.stats
                        .record_judged(self.status, self.faulted.get(), self.head, elapsed);
                }
            } else if self.judged && self.server.is_some() {
                // The client gave up waiting for the upstream's head: not
                // the client's fault, so not an abort; a hanging colour
                // must not look like one without traffic.
                pool.stats.record_judged(0, false, None, elapsed);
            }
            tracing::debug!(
                app = %self.server.as_ref().map_or("", |s| &*s.app),
                color = %pool.color,
                server = ?self.server.as_ref().map(|s| s.addr),
                status = self.status,
                micros = elapsed.as_micros() as u64,
                complete = self.complete.get(),
                "request"
            );
        } else {
            tracing::debug!(
                status = self.status,
                micros = elapsed.as_micros() as u64,
                "request not forwarded"
            );
        }
        if let Some(Extra {
            request_id,
            log: Some(fields),
        }) = self.extra.take().map(|e| *e)
        {
            if let Some(log) = self.worker.shared.access_log.get() {
                log.write(fields.line(&super::access::Outcome {
                    status: self.status,
                    elapsed,
                    bytes_out: self.bytes_out.get(),
                    color: self.pool.as_ref().map(|p| p.color),
                    server: self.server.as_deref(),
                    request_id: request_id.as_ref().map(|(_, v)| v),
                }));
            }
        }
        if let Some(tap) = self.mirror.take() {
            let Tap {
                status,
                headers,
                body,
                to,
            } = *tap;
            let body = body.map(|b| b.finish(self.complete.get()));
            let _ = to.send(LiveAnswer {
                status,
                headers,
                body,
            });
        }
        if let Some(up) = self.upstream.take() {
            if self.complete.get() {
                self.worker
                    .upstreams
                    .put_back(up, tokio::time::Instant::from_std(end));
            }
        }
    }
}
