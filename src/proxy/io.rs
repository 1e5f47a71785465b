//! The client socket with the two downstream timeouts hyper cannot express
//! the way an operator expects:
//!
//! - `client_header_timeout`: a request head that started but is not
//!   complete in time gets `408 Request Timeout` and the connection closes
//!   (RFC 9110 §15.5.9); a fresh connection that sends nothing in that time
//!   is closed silently;
//! - `client_idle_timeout`: a keep-alive connection with no request in
//!   progress is closed after this.
//!
//! The wrapper sees every read, and [`ConnState`] tells it whether a
//! request is in progress (counted by [`super::exchange::Exchange`]). The
//! timer is re-armed lazily — only when it fires early — so a busy
//! keep-alive connection costs no timer operations per request.
//!
//! **Parking.** hyper keeps an 8 KiB read and an 8 KiB write buffer for a
//! connection's whole life. A plain HTTP/1.1 connection that has been idle
//! for [`PARK_AFTER`] is therefore *parked*: the wrapper hands the socket
//! back to [`super::conn`] and tells hyper the client closed, hyper frees
//! its connection state, and the bare socket waits for its next request,
//! when a new hyper connection is built on it. Only a connection whose last
//! response is fully flushed, that read nothing since the last request
//! began, and that is not HTTP/2 or a tunnel, is parked.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};

/// How long a keep-alive HTTP/1.1 connection idles before it is parked
/// (capped at half the idle timeout). Short, so that memory follows the
/// traffic: a burst of clients that each make a request and stay is
/// parked within moments, not at its peak for a second. A client busy
/// enough to send its next request sooner keeps its connection state.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

use super::body::Wait;
use super::error::REQUEST_TIMEOUT_RESPONSE;
use super::worker::OpenConnection;
use crate::route::rule::ConnMemo;
use crate::timeouts::{ConnTimeouts, Expired, Phase};

/// What every request on one client connection shares.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's address the client connected to (its destination in
    /// a PROXY header sent upstream).
    pub local: SocketAddr,
    /// `peer`'s address as an `X-Forwarded-For` element, rendered once.
    pub client_value: HeaderValue,
    pub tls: bool,
    /// The TLS version and the SNI name, for the access log.
    pub tls_detail: Option<(&'static str, Option<Arc<str>>)>,
    /// The peer is one of `server.trusted_proxies`: its forwarding fields
    /// are believed (decided once per connection).
    pub trusted: bool,
    pub state: Arc<ConnState>,
    /// What routing remembers of this connection's earlier requests.
    pub memo: ConnMemo,
    /// The connection's `max_connections` slot and its place among the
    /// worker's open connections: held by whoever holds this — its HTTP
    /// service, and a tunnel it became — until the socket closes.
    pub slot: (OwnedSemaphorePermit, OpenConnection),
}

/// Shared between a connection's socket wrapper and its requests.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests started and not yet ended on this connection.
    active: AtomicUsize,
    /// Requests started in all, so the socket notices a request that began
    /// and ended between two of its reads.
    started: AtomicUsize,
    /// The connection was upgraded (WebSocket): it is a tunnel now, and
    /// HTTP's head and idle timeouts no longer apply.
    upgraded: std::sync::atomic::AtomicBool,
    /// The last request head named both `Content-Length` and
    /// `Transfer-Encoding`, or `Content-Length` twice. hyper drops the
    /// length beside a coding (RFC 9112 §6.1 allows that) and keeps one of
    /// two equal lengths, so only the socket sees it; the handler refuses
    /// such a request, as nginx does.
    bad_framing: std::sync::atomic::AtomicBool,
    /// The client left a response unread past `client_send_timeout`.
    send_timed_out: std::sync::atomic::AtomicBool,
    /// The client has sent something since it connected.
    spoke: std::sync::atomic::AtomicBool,
    /// The client speaks HTTP/2 (its preface came).
    h2: std::sync::atomic::AtomicBool,
    /// The connection's task has looked and found nothing sent (or, on
    /// TLS, a handshake waiting for the client). Until then a connection
    /// just accepted is not silent, only not yet read: shedding it would
    /// close a client whose request is already in the socket.
    looked: std::sync::atomic::AtomicBool,
    /// Close this connection if it still has sent nothing: the proxy is
    /// full and a newcomer waits.
    shed: std::sync::atomic::AtomicBool,
    /// Wakes a connection that has sent nothing yet, to be shed.
    fresh_waker: futures_util::task::AtomicWaker,
}

impl ConnState {
    pub fn request_started(&self) {
        self.started.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
    }

    pub fn request_ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    /// The next bytes on this connection belong to a tunnel, not HTTP.
    pub fn upgrade(&self) {
        self.upgraded.store(true, Relaxed);
    }

    /// Did the head just parsed carry both `Content-Length` and
    /// `Transfer-Encoding`, or two `Content-Length` fields?
    pub fn saw_bad_framing(&self) -> bool {
        self.bad_framing.load(Relaxed)
    }

    pub fn take_bad_framing(&self) -> bool {
        self.bad_framing.swap(false, Relaxed)
    }

    /// Did the client leave a response unread past its timeout? (Asked,
    /// and reset, by the request whose response it was.)
    pub fn take_send_timed_out(&self) -> bool {
        self.send_timed_out.swap(false, Relaxed)
    }

    /// Has the client sent nothing yet? Then it can be shed: it is
    /// closed at its next poll, and woken for it. `false` if it spoke.
    /// (The accept loop sheds only connections already `looked` at.)
    pub fn shed(&self) -> bool {
        if self.spoke.load(Relaxed) || self.shed.swap(true, Relaxed) {
            return false;
        }
        self.fresh_waker.wake();
        true
    }

    /// Resolves once the connection was shed.
    pub async fn shed_wait(&self) {
        std::future::poll_fn(|cx| {
            self.fresh_waker.register(cx.waker());
            if self.shed.load(Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Does the client speak HTTP/2?
    pub fn is_h2(&self) -> bool {
        self.h2.load(Relaxed)
    }

    /// Has the client sent anything since it connected?
    pub fn spoke(&self) -> bool {
        self.spoke.load(Relaxed)
    }

    /// The connection's task found nothing to read, or (TLS) is about to
    /// run a handshake that waits for the client.
    pub fn found_nothing(&self) {
        self.looked.store(true, Relaxed);
    }

    /// Has the connection's task looked at its socket yet?
    pub fn looked(&self) -> bool {
        self.looked.load(Relaxed)
    }

    fn is_upgraded(&self) -> bool {
        self.upgraded.load(Relaxed)
    }

    fn busy(&self) -> bool {
        self.active.load(Relaxed) > 0
    }

    /// Is a request in progress on this connection?
    pub fn is_busy(&self) -> bool {
        self.busy()
    }

    fn started(&self) -> usize {
        self.started.load(Relaxed)
    }
}

pub struct TimedIo<T> {
    // `None` once parked: the socket went back to the connection task.
    inner: Option<T>,
    // Where the socket goes when parked; `None`: never park (TLS).
    park: Option<oneshot::Sender<T>>,
    // When an idle connection is parked.
    park_at: Instant,
    park_after: Duration,
    // Everything written has been flushed.
    flushed: bool,
    // Bytes arrived while a request was in progress (a body, or pipelined
    // requests hyper may hold in its buffer): do not park.
    read_while_busy: bool,
    state: Arc<ConnState>,
    // The connection's phase and when it times out (shared with the admin
    // API's connections).
    timeouts: ConnTimeouts,
    // Armed at or before the phase's deadline; re-armed when it fires early.
    timer: Pin<Box<Sleep>>,
    // The waker `timer` was last polled with, unless it was reset since:
    // while it stands, polling the timer again would only register the
    // same task again, several times a request.
    timer_waker: Option<Waker>,
    // The client spoke HTTP/2 (prior knowledge): no 408, only idle.
    h2: bool,
    // HTTP/2 frames read, for the control-frame flood check.
    frames: Option<Box<H2Frames>>,
    // `ConnState::started` at the last read.
    seen_started: usize,
    // A request head read before hyper's connection was made
    // ([`TimedIo::read_head`]), handed to hyper first.
    head: Option<bytes::BytesMut>,
    // Bytes of the HTTP/2 preface matched so far from the connection's
    // start, however the client split it; `usize::MAX` once the first
    // bytes are not the preface.
    preface: usize,
    // Looks for the two framing fields in the head being read.
    scan: HeadScan,
    /// `client_send_timeout`, and how long the pending write has waited.
    send_timeout: Duration,
    send_wait: Wait,
}

/// Finds `Content-Length` and `Transfer-Encoding` field names (and a
/// second `Content-Length`) at the starts of a head's lines, across reads, stopping at the empty line
/// that ends the head. Lines that can match neither are skipped with one
/// `memchr`.
#[derive(Debug, Default, Clone, Copy)]
struct HeadScan {
    /// Bytes of the current line seen so far (saturating).
    col: u8,
    /// Bit 0: the line may still be `content-length:`; bit 1: TE.
    alive: u8,
    /// Bit 0: a `Content-Length` field was seen; bit 1: TE; bit 2
    /// ([`TWO_LENGTHS`]): `Content-Length` twice.
    seen: u8,
    /// The current line so far is `\r`.
    cr: bool,
    /// The head's empty line was read: the rest is body.
    done: bool,
}

/// In [`HeadScan::seen`]: `Content-Length` came a second time.
const TWO_LENGTHS: u8 = 4;
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

impl HeadScan {
    fn new_head() -> HeadScan {
        HeadScan {
            alive: 3,
            ..HeadScan::default()
        }
    }

    /// Feed the head's next bytes; `true` when the head ended in them and
    /// named both fields, or `Content-Length` twice.
    fn feed(&mut self, mut b: &[u8]) -> bool {
        while !self.done && !b.is_empty() {
            if self.alive == 0 {
                // Nothing to match on this line (it has a byte already):
                // its end, with one `memchr`.
                let Some(i) = memchr::memchr(b'\n', b) else {
                    self.col = self.col.max(2);
                    return false;
                };
                if i == 0 && self.blank() {
                    return self.head_ended();
                }
                b = &b[i + 1..];
                self.next_line();
                continue;
            }
            let c = b[0];
            b = &b[1..];
            if c == b'\n' {
                if self.blank() {
                    return self.head_ended();
                }
                self.next_line();
                continue;
            }
            let i = self.col as usize;
            let lc = c.to_ascii_lowercase();
            if i == 0 && lc != CONTENT_LENGTH[0] && lc != TRANSFER_ENCODING[0] {
                // Most lines: neither name, told by their first byte.
                self.alive = 0;
                self.cr = c == b'\r';
                self.col = 1;
                continue;
            }
            for (bit, name) in [(1u8, CONTENT_LENGTH), (2u8, TRANSFER_ENCODING)] {
                if self.alive & bit != 0 {
                    if name.get(i) != Some(&lc) {
                        self.alive &= !bit;
                    } else if i + 1 == name.len() {
                        self.alive &= !bit;
                        if bit == 1 && self.seen & 1 != 0 {
                            self.seen |= TWO_LENGTHS;
                        }
                        self.seen |= bit;
                    }
                }
            }
            self.cr = false;
            self.col = self.col.saturating_add(1);
        }
        false
    }

    /// The current line so far is empty or `\r`: a `\n` now ends the head.
    fn blank(&self) -> bool {
        self.col == 0 || (self.col == 1 && self.cr)
    }

    /// A line ended that was not the head's last: the next one starts.
    fn next_line(&mut self) {
        *self = HeadScan {
            seen: self.seen,
            ..HeadScan::new_head()
        };
    }

    /// The head's empty line came: did it name both fields, or
    /// `Content-Length` twice?
    fn head_ended(&mut self) -> bool {
        self.done = true;
        self.seen & 3 == 3 || self.seen & TWO_LENGTHS != 0
    }
}

/// The most PING, SETTINGS (not acknowledgements) and RST_STREAM frames a
/// client may send in one second. Each PING and SETTINGS makes the server
/// write an acknowledgement; each reset of a stream already accepted is a
/// request started and thrown away (the "rapid reset" attack, which h2's
/// own limit counts only for streams not yet accepted). A real client sends
/// a handful. hyper has no such limit of its own.
const MAX_CONTROL_FRAMES_PER_SEC: u32 = 1000;

/// Follows an HTTP/2 client's frames through the bytes read (the preface,
/// then each frame's 9-byte header and its payload, skipped) to count its
/// PING, SETTINGS and RST_STREAM frames.
#[derive(Debug)]
struct H2Frames {
    /// Bytes of the connection preface still to pass.
    preface: usize,
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    count: u32,
    since: Instant,
}

impl Default for H2Frames {
    fn default() -> Self {
        H2Frames {
            preface: 24,
            header: [0; 9],
            have: 0,
            skip: 0,
            count: 0,
            since: Instant::now(),
        }
    }
}

impl H2Frames {
    /// Pass `data`; `true` when the client sent more control frames than
    /// [`MAX_CONTROL_FRAMES_PER_SEC`] within a second.
    fn flood(&mut self, mut data: &[u8]) -> bool {
        let n = self.preface.min(data.len());
        self.preface -= n;
        data = &data[n..];
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = self.header;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, ack) = (h[3], h[4] & 1 != 0);
            if kind == 3 || ((kind == 4 || kind == 6) && !ack) {
                let now = Instant::now();
                if now.duration_since(self.since) >= Duration::from_secs(1) {
                    self.since = now;
                    self.count = 0;
                }
                self.count += 1;
                if self.count > MAX_CONTROL_FRAMES_PER_SEC {
                    return true;
                }
            }
        }
        false
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<T> TimedIo<T> {
    /// Follow the first bytes of the connection against the HTTP/2
    /// preface. Once all 24 came — in one read or in several — the
    /// connection is HTTP/2, and its frames are counted from the byte
    /// after the preface on ([`H2Frames`]).
    fn match_preface(&mut self, got: &[u8]) {
        if self.preface >= PREFACE.len() {
            return; // decided already
        }
        let want = &PREFACE[self.preface..];
        let n = want.len().min(got.len());
        if got[..n] != want[..n] {
            self.preface = usize::MAX;
            return;
        }
        let before = self.preface;
        self.preface += n;
        if self.preface == PREFACE.len() {
            self.h2 = true;
            self.state.h2.store(true, Relaxed);
            // The preface's earlier pieces were in earlier reads.
            self.frames = Some(Box::new(H2Frames {
                preface: PREFACE.len() - before,
                ..H2Frames::default()
            }));
        }
    }

    /// `park`: where to hand the socket when the connection is parked.
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        park: Option<oneshot::Sender<T>>,
    ) -> Self {
        let now = Instant::now();
        let timeouts = ConnTimeouts::new(now, header_timeout, idle_timeout);
        let deadline = timeouts.deadline().unwrap_or(now);
        let park_after = park_after(idle_timeout);
        let seen_started = state.started();
        TimedIo {
            inner: Some(inner),
            park,
            park_at: now + park_after,
            park_after,
            flushed: true,
            read_while_busy: false,
            state,
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_waker: None,
            h2: false,
            frames: None,
            seen_started,
            head: None,
            preface: 0,
            scan: HeadScan::new_head(),
            send_timeout: Duration::from_secs(60),
            send_wait: Wait::default(),
        }
    }

    /// Close the connection when the client leaves a write pending for
    /// `limit` (`client_send_timeout`).
    pub fn with_send_timeout(mut self, limit: Duration) -> Self {
        self.send_timeout = limit;
        self
    }
}

/// A client socket that can be closed with a reset.
pub trait ResetOnClose {
    /// Make the coming close a reset (`SO_LINGER` 0): the kernel throws
    /// away what is still queued for the peer instead of going on sending
    /// it, as nginx's `reset_timedout_connection` does. A slow reader
    /// that timed out must not keep megabytes of kernel memory.
    fn reset_on_close(&self);
}

impl ResetOnClose for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl<S: ResetOnClose> ResetOnClose for tokio_rustls::server::TlsStream<S> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

impl<T: ResetOnClose> TimedIo<T> {
    /// A write came back pending: has the client stopped reading? Then
    /// the connection is closed with a reset.
    fn send_blocked(&mut self, cx: &mut Context<'_>) -> bool {
        if self.send_wait.expired(cx, self.send_timeout) {
            self.state.send_timed_out.store(true, Relaxed);
            if let Some(inner) = &self.inner {
                inner.reset_on_close();
            }
            tracing::debug!("client_send_timeout: the client stopped reading; resetting");
            return true;
        }
        false
    }
}

fn send_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "client_send_timeout")
}

impl<T: AsyncRead + AsyncWrite + Unpin> TimedIo<T> {
    /// Follow the requests: busy while one is in progress, idle (with the
    /// idle deadline) once it ended. A tunnel is busy for good.
    fn track_requests(&mut self) {
        let started = self.state.started();
        if self.state.busy() || self.state.is_upgraded() {
            if started != self.seen_started {
                self.read_while_busy = false;
            }
            self.timeouts.busy();
            self.seen_started = started;
        } else if self.timeouts.phase() == Phase::Busy || started != self.seen_started {
            self.seen_started = started;
            let now = Instant::now();
            self.timeouts.idle(now);
            self.pull_in_deadline();
            if self.park.is_some() {
                self.park_at = now + self.park_after;
                self.pull_in(self.park_at);
            }
        }
    }

    /// Park now? See the module documentation for the conditions.
    fn should_park(&self) -> bool {
        self.park.is_some()
            && self.timeouts.phase() == Phase::Idle
            && !self.h2
            && self.flushed
            && !self.read_while_busy
            && !self.surely_early()
            && Instant::now() >= self.park_at
    }

    /// Is it certainly not yet time to park? It is not while the timer,
    /// armed at or before `park_at`, has not fired — known without reading
    /// the clock, as this is asked at every read.
    fn surely_early(&self) -> bool {
        !self.timer.is_elapsed() && self.timer.deadline() <= self.park_at
    }

    /// Poll the timer (which registers this task with it); what ran out,
    /// once the current phase's deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        let deadline = self.timeouts.deadline()?; // none while busy
        if !self.timer.is_elapsed()
            && self
                .timer_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return None; // armed, and it will wake this task
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(what) = self.timeouts.expired(now) {
                return Some(what);
            }
            // Fired for an earlier phase, or to park: re-arm for this one.
            let mut next = deadline.min(now + self.timeouts.header_timeout());
            let idle = self.timeouts.phase() == Phase::Idle;
            if self.park.is_some() && idle && self.park_at > now {
                next = next.min(self.park_at);
            }
            self.timer.as_mut().reset(next);
        }
        self.timer_waker = Some(cx.waker().clone());
        None
    }

    /// Make sure the timer fires no later than the phase's deadline.
    fn pull_in_deadline(&mut self) {
        if let Some(deadline) = self.timeouts.deadline() {
            self.pull_in(deadline);
        }
    }

    /// Make sure the timer fires no later than `deadline`.
    fn pull_in(&mut self, deadline: Instant) {
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
            self.timer_waker = None; // to be registered again
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            return Poll::Ready(Ok(())); // parked: hyper sees the end
        }
        if this.head.is_some() {
            this.replay_head(buf);
            return Poll::Ready(Ok(()));
        }
        this.track_requests();
        if this.should_park() && this.park() {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.refusal(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = Pin::new(inner).poll_read(cx, buf);
        if this.timeouts.phase() == Phase::Fresh {
            match &result {
                Poll::Pending => {
                    this.state.found_nothing();
                    this.state.fresh_waker.register(cx.waker());
                }
                Poll::Ready(_) => this.state.spoke.store(true, Relaxed),
            }
        }
        if let Poll::Ready(Ok(())) = result {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                if let Err(e) = this.saw(got) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        result
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TimedIo<T> {
    /// Hand out (the next part of) the head read before hyper took over.
    fn replay_head(&mut self, buf: &mut ReadBuf<'_>) {
        if let Some(head) = &mut self.head {
            let n = head.len().min(buf.remaining());
            buf.put_slice(&head.split_to(n));
            if head.is_empty() {
                self.head = None;
            }
        }
    }

    /// Hand the socket to the parking lot; `true` if it took it.
    #[cold]
    fn park(&mut self) -> bool {
        if let (Some(inner), Some(park)) = (self.inner.take(), self.park.take()) {
            if let Err(inner) = park.send(inner) {
                self.inner = Some(inner); // nobody to take it: carry on
            } else {
                return true;
            }
        }
        false
    }

    /// Why this connection must not read on: it was shed, or its time ran
    /// out. Asked at every read.
    #[inline]
    fn refusal(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.timeouts.phase() == Phase::Fresh && self.state.shed.load(Relaxed) {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room: max_connections reached and the client had sent nothing",
            ));
        }
        let what = self.expired(cx)?;
        Some(self.timed_out(cx, what))
    }

    /// The error for a timeout; a request head's also answers 408.
    #[cold]
    fn timed_out(&mut self, cx: &mut Context<'_>, what: Expired) -> io::Error {
        let head = what == Expired::Head && !self.h2;
        if let (true, Some(inner)) = (head, self.inner.as_mut()) {
            // Best effort: the socket is idle, so this small write
            // normally goes out at once.
            let mut inner = Pin::new(inner);
            let _ = inner.as_mut().poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
            let _ = inner.as_mut().poll_flush(cx);
        }
        let what = if head {
            "request head"
        } else {
            "idle connection"
        };
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
    }

    /// Follow the bytes just read (`got`, not empty): the HTTP/2 preface
    /// and control-frame flood, the start of a request head and its
    /// framing. An error closes the connection.
    #[inline]
    fn saw(&mut self, got: &[u8]) -> io::Result<()> {
        let phase = self.timeouts.phase();
        if phase == Phase::Busy {
            self.read_while_busy = true;
        }
        if self.preface < PREFACE.len() {
            self.match_preface(got);
        }
        if let Some(frames) = &mut self.frames {
            if frames.flood(got) {
                tracing::debug!("closing an HTTP/2 connection: a PING or SETTINGS flood");
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 control frame flood",
                ));
            }
        }
        let starts_head = matches!(phase, Phase::Idle | Phase::Fresh);
        if self.h2 {
            // (Head: the preface came in pieces, and its first
            // piece looked like the start of a request head.)
            if matches!(phase, Phase::Fresh | Phase::Head) {
                self.timeouts.idle(Instant::now());
                self.pull_in_deadline();
            }
        } else if starts_head {
            // A fresh connection's head timer runs from accept.
            self.timeouts.head_began(Instant::now);
            self.pull_in_deadline();
            self.scan = HeadScan::new_head();
        }
        let head = self.timeouts.phase() == Phase::Head;
        if !self.h2 && head && self.scan.feed(got) {
            self.state.bad_framing.store(true, Relaxed);
        }
        Ok(())
    }
}

impl<T: AsyncRead + AsyncWrite + ResetOnClose + Unpin> TimedIo<T> {
    /// Read a connection's first request head (or the HTTP/2 preface)
    /// before hyper's connection is made, into a buffer that starts at
    /// [`HEAD_BUFFER`] and grows only as the head does (to `limit`). hyper
    /// gives every connection an 8 KiB read and an 8 KiB write buffer from
    /// the start: a client that connects and sends nothing, or dribbles
    /// its head (slowloris), would hold both until its head timeout. Here
    /// it holds about a kilobyte. The head's timeouts, the 408 and the
    /// shedding of silent connections apply as they do under hyper (the
    /// reads go through this wrapper). `false`: the client closed, or
    /// its time ran out (the connection is to be dropped).
    pub async fn read_head(&mut self, limit: usize) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(HEAD_BUFFER);
        let mut searched: usize = 0;
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(buf.len());
            }
            match self.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            let preface = PREFACE.len().min(buf.len());
            if buf[..preface] == PREFACE[..preface] {
                if buf.len() >= PREFACE.len() {
                    break; // HTTP/2 with prior knowledge
                }
                continue;
            }
            if head_ends(&buf[searched.saturating_sub(2)..]) || buf.len() >= limit {
                break;
            }
            searched = buf.len();
        }
        self.head = Some(buf);
        true
    }
}

/// What [`TimedIo::read_head`] starts with: most request heads fit.
pub const HEAD_BUFFER: usize = 1024;

/// Does `b` hold the empty line that ends a head (`\n\r\n` or `\n\n`)?
fn head_ends(b: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', b).any(|i| matches!(&b[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// How long a connection idles before it is parked, for `idle_timeout`.
pub fn park_after(idle_timeout: Duration) -> Duration {
    PARK_AFTER.min(idle_timeout / 2)
}

/// A parked wrapper no longer has the socket.
fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection parked")
}

impl<T: AsyncRead + AsyncWrite + ResetOnClose + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(parked()));
        };
        this.flushed = false;
        match Pin::new(inner).poll_write(cx, buf) {
            Poll::Pending if this.send_blocked(cx) => Poll::Ready(Err(send_timed_out())),
            Poll::Pending => Poll::Pending,
            done => {
                this.send_wait.got();
                done
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes a response after dropping its body, which ends the
        // request: start the idle timer here, since the read side may stay
        // parked on the socket without calling us again.
        if this.timeouts.phase() == Phase::Busy {
            this.track_requests();
            let _ = this.expired(cx);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.flushed = true;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            // Parked: the socket lives on without hyper; nothing to shut.
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(parked()));
        };
        this.flushed = false;
        match Pin::new(inner).poll_write_vectored(cx, bufs) {
            Poll::Pending if this.send_blocked(cx) => Poll::Ready(Err(send_timed_out())),
            Poll::Pending => Poll::Pending,
            done => {
                this.send_wait.got();
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_flood_of_pings_is_found_across_reads_and_requests_are_not() {
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let headers = [0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84];
        let mut f = H2Frames::default();
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..500 {
            wire.extend_from_slice(&headers);
        }
        for _ in 0..MAX_CONTROL_FRAMES_PER_SEC {
            wire.extend_from_slice(&ping);
        }
        // Split at awkward points: the count is the same.
        for piece in wire.chunks(7) {
            assert!(!f.flood(piece), "at the limit, not over it");
        }
        assert!(f.flood(&ping), "one more within the second is a flood");
        // Acknowledgements do not count.
        let mut f = H2Frames::default();
        let mut ack = ping;
        ack[4] = 1;
        let acks: Vec<u8> = std::iter::repeat_n(ack, 5000).flatten().collect();
        assert!(!f.flood(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!f.flood(&acks));
        // Streams opened and reset at once (rapid reset) count too.
        let mut f = H2Frames::default();
        let rst = [0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 8];
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..MAX_CONTROL_FRAMES_PER_SEC {
            wire.extend_from_slice(&headers);
            wire.extend_from_slice(&rst);
        }
        assert!(!f.flood(&wire), "at the limit, not over it");
        assert!(f.flood(&rst), "one more reset within the second is a flood");
    }

    /// The preface split anywhere (`PRI * HT`, a pause, the rest) makes
    /// the connection HTTP/2 all the same, and its control frames are
    /// counted from the first byte after it.
    #[tokio::test]
    async fn the_preface_is_found_however_it_is_split() {
        let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        for cut in 1..PREFACE.len() {
            let (a, b) = PREFACE.split_at(cut);
            let mut io = TimedIo::new(
                (),
                Arc::new(ConnState::default()),
                Duration::from_secs(1),
                Duration::from_secs(1),
                None,
            );
            io.match_preface(a);
            assert!(!io.h2, "not before the whole preface ({cut})");
            let mut rest = b.to_vec();
            rest.extend_from_slice(&ping);
            io.match_preface(&rest);
            assert!(io.h2, "found when split at {cut}");
            // As `poll_read` does: the read that completed the preface.
            let frames = io.frames.as_mut().unwrap();
            assert!(!frames.flood(&rest));
            for _ in 1..MAX_CONTROL_FRAMES_PER_SEC {
                assert!(!frames.flood(&ping));
            }
            assert!(
                frames.flood(&ping),
                "counted from after the preface ({cut})"
            );
        }
        let mut io = TimedIo::new(
            (),
            Arc::new(ConnState::default()),
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
        );
        io.match_preface(b"PRI * HTTP/1.1\r\n");
        io.match_preface(b"rest");
        assert!(!io.h2);
    }

    /// A connected client and the server's end of it, on loopback.
    async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A head read before hyper's connection exists is handed over whole,
    /// with what came after it, and waits in a small buffer meanwhile.
    #[tokio::test]
    async fn a_head_is_read_in_pieces_into_a_small_buffer_then_handed_over() {
        let (mut client, server) = socket_pair().await;
        let state = Arc::new(ConnState::default());
        let mut io = TimedIo::new(
            server,
            state,
            Duration::from_secs(5),
            Duration::from_secs(5),
            None,
        );
        let sent = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let writer = async {
            for piece in sent.chunks(5) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (read, ()) = tokio::join!(io.read_head(8192), writer);
        assert!(read);
        assert_eq!(io.head.as_ref().map(|h| h.capacity()), Some(HEAD_BUFFER));
        let mut got = vec![0u8; sent.len()];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, sent, "the head and what followed it, in order");
        assert!(head_ends(b"GET / HTTP/1.0\n\n"));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n"));
    }

    /// A kept-alive connection idle for `park_after` hands its socket back,
    /// and hyper (here: the reader) sees the end of the stream.
    #[tokio::test]
    async fn an_idle_connection_parks_after_its_delay_and_not_before() {
        let (mut client, server) = socket_pair().await;
        let state = Arc::new(ConnState::default());
        let (park, parked) = oneshot::channel();
        let idle_timeout = Duration::from_millis(1000); // parks after 500 ms
        let mut io = TimedIo::new(
            server,
            state.clone(),
            Duration::from_secs(5),
            idle_timeout,
            Some(park),
        );
        // One request and its response, as hyper would drive them.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        state.request_started();
        state.request_ended();
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        io.flush().await.unwrap();
        let idle_from = Instant::now();
        // The next read waits for the client, then ends: parked.
        let n = tokio::time::timeout(Duration::from_secs(2), io.read(&mut buf))
            .await
            .expect("parked before the idle timeout")
            .unwrap();
        assert_eq!(n, 0);
        let waited = idle_from.elapsed();
        assert!(
            waited >= park_after(idle_timeout) - Duration::from_millis(5) && waited < idle_timeout,
            "parked after {waited:?}"
        );
        let mut socket = parked.await.expect("the socket came back");
        // It is the same connection: the client's next bytes arrive on it.
        client.write_all(b"next").await.unwrap();
        let mut got = [0u8; 4];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"next");
    }
    use super::HeadScan;

    fn both(pieces: &[&[u8]]) -> bool {
        let mut s = HeadScan::new_head();
        pieces.iter().any(|p| s.feed(p))
    }

    #[test]
    fn the_head_scan_finds_length_beside_chunked_across_reads() {
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(both(&[head]));
        for cut in 1..head.len() {
            assert!(both(&[&head[..cut], &head[cut..]]), "cut at {cut}");
        }
        assert!(both(&[
            b"POST / HTTP/1.1\nTRANSFER-ENCODING: chunked\ncontent-LENGTH: 5\n\n"
        ]));
        assert!(!both(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
        ]));
        assert!(!both(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        // A body that happens to hold the other name is not the head.
        assert!(!both(&[
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(!both(&[
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }

    /// What the scan must find, read off the whole head at once: its lines
    /// up to the first empty one (`""` or `"\r"`), each matched by its
    /// lowercase start.
    fn reference(head: &[u8]) -> bool {
        let (mut lengths, mut te) = (0, false);
        for line in head.split(|c| *c == b'\n') {
            if line.is_empty() || line == b"\r" {
                return (lengths > 0 && te) || lengths > 1;
            }
            let lower = line.to_ascii_lowercase();
            lengths += usize::from(lower.starts_with(b"content-length:"));
            te |= lower.starts_with(b"transfer-encoding:");
        }
        false
    }

    #[test]
    fn the_head_scan_agrees_with_a_whole_head_reading_however_the_head_is_split() {
        let lines: [&[u8]; 14] = [
            b"",
            b"\r",
            b"Content-Length: 5",
            b"content-length:5",
            b"Transfer-Encoding: chunked",
            b"TRANSFER-ENCODING:x",
            b"Content-Type: text/plain",
            b"Connection: close",
            b"Cookie: a=b",
            b"Transfer-Encodin: x",
            b"X-Content-Length: 1",
            b"te: trailers",
            b"C",
            b"Host: a",
        ];
        let mut rng = fastrand::Rng::with_seed(35);
        for _ in 0..3000 {
            let mut head = b"POST / HTTP/1.1".to_vec();
            for _ in 0..rng.usize(0..6) {
                head.extend_from_slice(if rng.bool() { b"\r\n" } else { b"\n" });
                head.extend_from_slice(lines[rng.usize(..lines.len())]);
            }
            head.extend_from_slice(b"\r\n\r\nContent-Length: 1\r\n\r\n");
            let want = reference(&head);
            let mut s = HeadScan::new_head();
            let mut rest = &head[..];
            let mut got = false;
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(9));
                got |= s.feed(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&head));
        }
    }
}
