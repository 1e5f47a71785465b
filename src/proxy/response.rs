//! The response body on its way to the client: the upstream's (or the
//! proxy's own answer), streamed. It holds the [`Exchange`] guard, whose
//! drop ends the request — counters, statistics, and the upstream
//! connection back to its pool.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::body::{BoxError, Wait};
use super::compress::{Encoder, Encoding};
use super::exchange::Exchange;
use super::h1;
use super::upstream::{Lease, Pooled, Sender};
use super::worker::Stallable;
use crate::route::Timeout;

/// The upstream paused within its body past `upstream_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body: nothing for {0:?}")]
struct ReadTimeout(Duration);

/// What the client receives. `exchange` is dropped when the body ends
/// (or the client goes away), which ends the request's accounting.
pub struct ResponseBody {
    inner: Inner,
    exchange: Option<Exchange>,
    /// `upstream_read_timeout`: the longest the upstream may pause within
    /// its body.
    read_timeout: Duration,
    wait: Wait,
    /// Compressing the body on its way (boxed: most bodies have none).
    encoder: Option<Box<Encoder>>,
    slice: Slice,
}

/// A body passes on at most this much before it lets the worker's other
/// tasks run. A client socket's send buffer grows to megabytes, so a
/// large response can go on being written without ever waiting: many of
/// them starting at once held a worker long enough for every new request
/// on it to wait. With 64 KiB slices (and the worker looking for
/// ready sockets every 8 polls, see `run_worker`) a new request waits for
/// a few slices of each busy body, not for whole bodies. The price is one
/// extra task poll per 64 KiB (16,384 per GiB); the large-response
/// figure is in benches/README.md.
const SLICE: usize = 64 << 10;

/// The bytes a body has passed on since it last let its worker run others.
#[derive(Default)]
struct Slice(usize);

impl Slice {
    /// True (and the task woken again at once) when this body has had its
    /// slice: it returns `Pending`, and the tasks queued behind it run.
    fn used_up(&mut self, cx: &Context<'_>) -> bool {
        if self.0 < SLICE {
            return false;
        }
        self.0 = 0;
        cx.waker().wake_by_ref();
        true
    }

    fn passed(&mut self, bytes: usize) {
        self.0 += bytes;
    }
}

enum Inner {
    /// From an HTTP/2 upstream (hyper's client).
    H2(Incoming),
    /// From an HTTP/1.1 upstream, read off the connection as polled; the
    /// lease takes the connection back to the pool at the body's end.
    H1(h1::Body, Option<Lease>),
    /// The proxy's own answer.
    Full(Full<Bytes>),
    /// An HTTP/2 client's stream, watched for stalling ([`Watched`]).
    Watched(Rc<Watched>),
}

/// An HTTP/2 client's response body, shared with its worker's sweeper.
/// hyper polls a body for its next frame only once the client's flow
/// control window has room for the last one: a client that grants no
/// window holds the stream — and the upstream connection behind it — for
/// as long as it likes, with no write pending for `client_send_timeout`
/// to time. The sweeper sees a body that handed out a frame and was not
/// asked for the next one within `client_send_timeout`
/// ([`Watched::stalled`]) and takes it away: the upstream connection is
/// released at once, the request is counted as a `client_send` timeout,
/// and hyper resets the stream when it next polls (or the connection
/// closes at its idle timeout).
pub struct Watched {
    body: RefCell<Option<ResponseBody>>,
    /// Polls so far: the sweeper tells progress by it, with no clock read
    /// per frame.
    polls: Cell<u32>,
    /// A frame was handed out and the next one not yet asked for.
    waiting: Cell<bool>,
}

impl Watched {
    /// Wrap `body`; the sweeper follows it through the weak reference.
    pub fn wrap(body: ResponseBody) -> (ResponseBody, std::rc::Weak<Watched>) {
        let w = Rc::new(Watched {
            body: RefCell::new(Some(body)),
            polls: Cell::new(0),
            waiting: Cell::new(false),
        });
        let weak = Rc::downgrade(&w);
        let outer = ResponseBody {
            inner: Inner::Watched(w),
            exchange: None,
            read_timeout: Duration::ZERO,
            wait: Wait::default(),
            encoder: None,
            slice: Slice::default(),
        };
        (outer, weak)
    }

    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polls.set(self.polls.get().wrapping_add(1));
        self.waiting.set(false);
        let mut slot = self.body.borrow_mut();
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.waiting.set(true),
            Poll::Ready(_) => *slot = None,
            Poll::Pending => {}
        }
        polled
    }
}

impl Stallable for Watched {
    fn progress(&self) -> Option<(u32, bool)> {
        if self.body.borrow().is_none() {
            return None;
        }
        Some((self.polls.get(), self.waiting.get()))
    }

    /// The client left the stream stalled past `client_send_timeout`:
    /// the body goes, with its upstream connection.
    fn stalled(&self) {
        let Some(mut body) = self.body.borrow_mut().take() else {
            return;
        };
        if let Some(ex) = body.exchange.take() {
            tracing::debug!("client_send_timeout: an HTTP/2 stream made no progress");
            ex.timed_out(Timeout::ClientSend);
            ex.finish(false);
        }
    }
}

/// The stream was taken away from a client that stopped reading it.
#[derive(Debug, thiserror::Error)]
#[error("client_send_timeout: the HTTP/2 stream made no progress")]
struct Stalled;

impl ResponseBody {
    pub fn h2(inner: Incoming, exchange: Exchange, read_timeout: Duration) -> ResponseBody {
        ResponseBody {
            inner: Inner::H2(inner),
            exchange: Some(exchange),
            read_timeout,
            wait: Wait::default(),
            encoder: None,
            slice: Slice::default(),
        }
    }

    /// A body read off an HTTP/1.1 connection. The connection goes to
    /// `exchange`, to be pooled again, as soon as the body is complete.
    pub fn h1(
        body: h1::Body,
        lease: Lease,
        exchange: Exchange,
        read_timeout: Duration,
    ) -> ResponseBody {
        let mut this = ResponseBody {
            inner: Inner::H1(body, Some(lease)),
            exchange: Some(exchange),
            read_timeout,
            wait: Wait::default(),
            encoder: None,
            slice: Slice::default(),
        };
        this.pool_if_done();
        this
    }

    pub fn full(bytes: Bytes, exchange: Option<Exchange>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Full::new(bytes)),
            exchange,
            read_timeout: Duration::ZERO,
            wait: Wait::default(),
            encoder: None,
            slice: Slice::default(),
        }
    }

    /// Compress the body with `encoding` as it streams (the head says so
    /// already: [`super::compress::Allowed::apply`]).
    pub fn compress(&mut self, encoding: Encoding) {
        self.encoder = Some(Box::new(Encoder::new(encoding)));
    }

    /// Read whole: the connection can take the next request now, even if
    /// hyper drops the body without polling it again (as it does after
    /// trailers).
    fn pool_if_done(&mut self) {
        pool_if_done(&mut self.inner, &mut self.exchange);
    }
}

fn pool_if_done(inner: &mut Inner, exchange: &mut Option<Exchange>) {
    if let (Inner::H1(body, lease), Some(ex)) = (inner, exchange.as_mut()) {
        if lease.is_some() {
            if let Some(conn) = body.take_reusable() {
                let lease = lease.take().expect("checked above");
                ex.set_upstream(Pooled {
                    tx: Sender::H1(conn),
                    lease,
                });
                ex.mark_complete();
            }
        }
    }
}

impl ResponseBody {
    /// Is this body streamed from an upstream (not the proxy's own)?
    pub fn is_upstreams(&self) -> bool {
        matches!(self.inner, Inner::H1(..) | Inner::H2(_))
    }

    /// The request's bookkeeping, until the body ends.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        ResponseBody::full(b, None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Inner::Watched(w) = &this.inner {
            return w.poll_frame(cx);
        }
        if this.slice.used_up(cx) {
            return Poll::Pending;
        }
        let (inner, exchange) = (&mut this.inner, &mut this.exchange);
        let polled = match &mut this.encoder {
            None => poll_inner(inner, exchange, cx),
            Some(enc) => enc.poll(cx, |cx| poll_inner(inner, exchange, cx)),
        };
        let out = match polled {
            Poll::Ready(out) => {
                this.wait.got();
                out
            }
            Poll::Pending if this.wait.expired(cx, this.read_timeout) => {
                if let Some(ex) = this.exchange.take() {
                    tracing::debug!("upstream_read_timeout: the upstream paused within its body");
                    ex.timed_out(Timeout::UpstreamRead);
                    ex.finish(false);
                }
                this.inner = Inner::Full(Full::new(Bytes::new()));
                return Poll::Ready(Some(Err(Box::new(ReadTimeout(this.read_timeout)))));
            }
            Poll::Pending => return Poll::Pending,
        };
        match &out {
            None => {
                if let Some(ex) = this.exchange.take() {
                    ex.finish(true);
                }
            }
            Some(Err(_)) => {
                if let Some(ex) = this.exchange.take() {
                    ex.finish(false);
                }
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.slice.passed(data.len());
                }
                if let (Some(data), Some(ex)) = (frame.data_ref(), &this.exchange) {
                    ex.count_out(data.len());
                }
            }
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        if self.encoder.as_ref().is_some_and(|e| !e.is_end_stream()) {
            return false;
        }
        let end = match &self.inner {
            Inner::H2(b) => b.is_end_stream(),
            Inner::H1(b, _) => b.is_end_stream(),
            Inner::Full(b) => b.is_end_stream(),
            Inner::Watched(w) => return w.body.borrow().as_ref().is_none_or(|b| b.is_end_stream()),
        };
        if end {
            if let Some(ex) = &self.exchange {
                ex.mark_complete();
            }
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        if self.encoder.is_some() {
            return SizeHint::default();
        }
        match &self.inner {
            Inner::H2(b) => b.size_hint(),
            Inner::H1(b, _) => b.size_hint(),
            Inner::Full(b) => b.size_hint(),
            Inner::Watched(w) => w
                .body
                .borrow()
                .as_ref()
                .map_or_else(SizeHint::default, |b| b.size_hint()),
        }
    }
}

/// The next frame of the body as the upstream sent it (a mirrored
/// request's answer is kept here for its copy's comparison, before any
/// compression).
fn poll_inner(
    inner: &mut Inner,
    exchange: &mut Option<Exchange>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let polled = poll_upstream(inner, exchange, cx);
    if let (Poll::Ready(Some(Ok(frame))), Some(ex)) = (&polled, exchange.as_mut()) {
        if let Some(data) = frame.data_ref() {
            ex.upstream_data(data);
        }
    }
    polled
}

fn poll_upstream(
    inner: &mut Inner,
    exchange: &mut Option<Exchange>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    match inner {
        Inner::H2(b) => Pin::new(b)
            .poll_frame(cx)
            .map(|f| f.map(|f| f.map_err(BoxError::from))),
        Inner::Full(b) => Pin::new(b)
            .poll_frame(cx)
            .map(|f| f.map(|f| f.map_err(|e| match e {}))),
        Inner::H1(b, _) => {
            let polled = b.poll_frame(cx);
            if polled.is_ready() {
                pool_if_done(inner, exchange);
            }
            polled
        }
        // Polled by `ResponseBody::poll_frame` before it comes here.
        Inner::Watched(w) => w.poll_frame(cx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_body_yields_once_per_slice_and_wakes_itself() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut slice = Slice::default();
        let mut yields = 0;
        // 1 MiB in 16 KiB frames, as a large response is read.
        for _ in 0..64 {
            while slice.used_up(&cx) {
                yields += 1;
            }
            slice.passed(16 << 10);
        }
        assert!(slice.used_up(&cx), "the last 64 KiB used up a slice");
        yields += 1;
        assert_eq!(yields, (1 << 20) / SLICE);
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            yields,
            "each yield wakes the task"
        );
        assert!(!slice.used_up(&cx), "a fresh slice after a yield");
    }
}
