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

use std::io;
use std::future::Future;
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
}

impl ConnState {
    pub fn request_started(&self) {
        self.active.fetch_add(1, Relaxed);
    }

    pub fn request_ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    fn busy(&self) -> bool {
        self.active.load(Relaxed) > 0
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
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>, header_timeout: Duration, idle_timeout: Duration) -> Self {
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
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = Pin::new(&mut this.inner);
        if this.state.busy() {
            this.phase = Phase::Busy;
        } else if this.phase == Phase::Busy {
            this.phase = Phase::Idle;
            this.deadline = Instant::now() + this.idle_timeout;
            pull_in(this.timer.as_mut(), this.deadline);
        }
        let before = buf.filled().len();
        match inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
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
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase == Phase::Busy {
                    return Poll::Pending;
                }
                loop {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let now = Instant::now();
                    if now < this.deadline {
                        // Fired for an earlier phase: re-arm for this one.
                        let next = (this.deadline).min(now + this.header_timeout);
                        this.timer.as_mut().reset(next);
                        continue;
                    }
                    if this.phase == Phase::Head {
                        // Best effort: the socket is idle, so this small
                        // write normally goes out at once.
                        let _ = inner.as_mut().poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
                        let _ = inner.as_mut().poll_flush(cx);
                    }
                    let what = if this.phase == Phase::Head { "request head" } else { "idle connection" };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))));
                }
            }
        }
    }
}

/// Make sure the timer fires no later than `deadline`.
fn pull_in(timer: Pin<&mut Sleep>, deadline: Instant) {
    if timer.deadline() > deadline {
        timer.reset(deadline);
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
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
