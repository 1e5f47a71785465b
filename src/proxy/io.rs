//! The client socket with the two downstream timeouts hyper cannot express
//! the way an operator expects (SPEC §3 `[limits]`):
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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::error::REQUEST_TIMEOUT_RESPONSE;

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

    fn is_upgraded(&self) -> bool {
        self.upgraded.load(Relaxed)
    }

    fn busy(&self) -> bool {
        self.active.load(Relaxed) > 0
    }

    fn started(&self) -> usize {
        self.started.load(Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Just accepted, nothing read yet.
    Fresh,
    /// Between requests.
    Idle,
    /// Part of a request head has arrived.
    Head,
    /// A request is being served; no downstream timeout applies.
    Busy,
}

pub struct TimedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    phase: Phase,
    // When the current phase times out.
    deadline: Instant,
    // Armed at or before `deadline`; re-armed when it fires early.
    timer: Pin<Box<Sleep>>,
    header_timeout: Duration,
    idle_timeout: Duration,
    // The client spoke HTTP/2 (prior knowledge): no 408, only idle.
    h2: bool,
    // `ConnState::started` at the last read.
    seen_started: usize,
}

impl<T> TimedIo<T> {
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let deadline = Instant::now() + header_timeout;
        TimedIo {
            inner,
            state,
            phase: Phase::Fresh,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            header_timeout,
            idle_timeout,
            h2: false,
            seen_started: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TimedIo<T> {
    /// Follow the requests: busy while one is in progress, idle (with the
    /// idle deadline) once it ended. A tunnel is busy for good.
    fn track_requests(&mut self) {
        let started = self.state.started();
        if self.state.busy() || self.state.is_upgraded() {
            self.phase = Phase::Busy;
            self.seen_started = started;
        } else if self.phase == Phase::Busy || started != self.seen_started {
            self.seen_started = started;
            self.phase = Phase::Idle;
            self.deadline = Instant::now() + self.idle_timeout;
            pull_in(self.timer.as_mut(), self.deadline);
        }
    }

    /// Poll the timer (which registers this task with it); `true` once the
    /// current phase's deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.phase == Phase::Busy {
            return false;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= self.deadline {
                return true;
            }
            // Fired for an earlier phase: re-arm for this one.
            let next = self.deadline.min(now + self.header_timeout);
            self.timer.as_mut().reset(next);
        }
        false
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.track_requests();
        if this.expired(cx) {
            let head = this.phase == Phase::Head && !this.h2;
            if head {
                // Best effort: the socket is idle, so this small write
                // normally goes out at once.
                let mut inner = Pin::new(&mut this.inner);
                let _ = inner.as_mut().poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
                let _ = inner.as_mut().poll_flush(cx);
            }
            let what = if head {
                "request head"
            } else {
                "idle connection"
            };
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timed out"),
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                if this.phase == Phase::Fresh && got.starts_with(b"PRI * HTTP/2") {
                    this.h2 = true;
                }
                let starts_head = matches!(this.phase, Phase::Idle | Phase::Fresh);
                if this.h2 {
                    if this.phase == Phase::Fresh {
                        this.phase = Phase::Idle;
                        this.deadline = Instant::now() + this.idle_timeout;
                        pull_in(this.timer.as_mut(), this.deadline);
                    }
                } else if starts_head {
                    // A fresh connection's head timer runs from accept.
                    if this.phase == Phase::Idle {
                        this.deadline = Instant::now() + this.header_timeout;
                        pull_in(this.timer.as_mut(), this.deadline);
                    }
                    this.phase = Phase::Head;
                }
            }
        }
        result
    }
}

/// Make sure the timer fires no later than `deadline`.
fn pull_in(timer: Pin<&mut Sleep>, deadline: Instant) {
    if timer.deadline() > deadline {
        timer.reset(deadline);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes a response after dropping its body, which ends the
        // request: start the idle timer here, since the read side may stay
        // parked on the socket without calling us again.
        if this.phase == Phase::Busy {
            this.track_requests();
            let _ = this.expired(cx);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
