//! The client's request body on its way upstream, streamed (nothing is
//! buffered) and stopped past `max_body_bytes`; a mirrored request's frames
//! are copied off as they pass ([`Tee`]). The response's way back is
//! [`super::response`].

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::deadline::BodySent;
pub use super::deadline::Wait;
pub use super::h1::conn::BoxError;

#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// The client's own body failed on its way upstream: its framing was
/// broken (a bad chunk size, a chunk longer than announced, ...) or the
/// client went away before its end. Either is the client's doing, never
/// the upstream's: the handler answers 400 (or records a client abort),
/// and passive health does not count it.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {source}")]
pub struct ClientBody {
    /// The client went away (or reset) mid-body, rather than sending a
    /// malformed one.
    pub aborted: bool,
    source: hyper::Error,
}

impl ClientBody {
    fn new(source: hyper::Error) -> ClientBody {
        let mut aborted = source.is_incomplete_message() || source.is_canceled();
        let mut src: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(&source);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                aborted |= matches!(
                    io.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
                );
            }
            src = s.source();
        }
        ClientBody { aborted, source }
    }
}

/// The client paused within its body for longer than
/// `client_body_timeout`: the handler answers 408.
#[derive(Debug, thiserror::Error)]
#[error("client request body: nothing for {0:?}")]
pub struct BodyTimeout(pub Duration);

pin_project_lite::pin_project! {
    /// The client's body on its way upstream, cut off past `limit` bytes
    /// (0 = no limit) with a [`TooLarge`] error, which the handler finds in
    /// the upstream error's source chain and answers with 413; and with a
    /// [`BodyTimeout`] when the client sends nothing for `timeout` while
    /// the body is wanted.
    pub struct RequestBody {
        // `None`: a request sent again without a body.
        #[pin]
        inner: Option<Incoming>,
        seen: u64,
        // Where the access log reads the count (when it is on).
        counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
        limit: u64,
        timeout: Duration,
        wait: Wait,
        // A mirrored request's tee, or a copy's own body (boxed: nearly
        // every request has neither).
        side: Option<Box<Side>>,
        // Told when the last frame is taken (a body that hyper's HTTP/2
        // client sends, in a task of its own): the upstream's response
        // deadline starts then.
        ended: Option<std::sync::Arc<BodySent>>,
    }
}

/// What a body carries besides the client's stream.
enum Side {
    Tee(Tee),
    /// A copy's body, whole, sent as one frame.
    Copy(Bytes),
}

/// A mirrored request's body, copied for its copy as it streams upstream:
/// each frame is kept by reference count, not copied, and only a body
/// whose length is known (and at most `max_body`) is teed, so what is kept
/// is bounded. Complete, it is handed to the copy's task; a body that never
/// completes (the client went away, the upstream answered early) is never
/// handed over, and the copy is not compared.
pub struct Tee {
    frames: Vec<Bytes>,
    want: u64,
    got: u64,
    done: Option<tokio::sync::oneshot::Sender<Vec<Bytes>>>,
}

impl Tee {
    /// A tee for a body of exactly `len` bytes, and where it arrives whole.
    pub fn new(len: u64) -> (Tee, tokio::sync::oneshot::Receiver<Vec<Bytes>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tee = Tee {
            frames: Vec::new(),
            want: len,
            got: 0,
            done: Some(tx),
        };
        (tee, rx)
    }

    fn copy(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        self.got += data.len() as u64;
        if self.got > self.want {
            // Longer than it said: nothing whole to hand over.
            self.done = None;
            self.frames = Vec::new();
            return;
        }
        self.frames.push(data.clone());
        if self.got == self.want {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(std::mem::take(&mut self.frames));
            }
        }
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, timeout: Duration) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            seen: 0,
            counted: None,
            limit,
            timeout,
            wait: Wait::default(),
            side: None,
            ended: None,
        }
    }

    /// Copy the frames off to `tee` as they pass.
    pub fn teeing(mut self, tee: Option<Tee>) -> Self {
        self.side = tee.map(|t| Box::new(Side::Tee(t)));
        self
    }

    /// Tell `to` when the last frame is taken.
    pub fn signalling(mut self, to: std::sync::Arc<BodySent>) -> Self {
        self.ended = Some(to);
        self
    }

    /// A copy's body: `bytes`, in one frame.
    pub fn copy(bytes: Bytes) -> RequestBody {
        let mut body = RequestBody::empty();
        body.side = Some(Box::new(Side::Copy(bytes)));
        body
    }

    /// Publish the bytes read to `to` as they come.
    pub fn counting(mut self, to: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>) -> Self {
        self.counted = to;
        self
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            seen: 0,
            counted: None,
            limit: 0,
            timeout: Duration::ZERO,
            wait: Wait::default(),
            side: None,
            ended: None,
        }
    }

    /// The bytes of a copy's body not yet sent.
    fn copied(&self) -> Option<&Bytes> {
        match self.side.as_deref() {
            Some(Side::Copy(b)) => Some(b),
            _ => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            if let Some(Side::Copy(b)) = this.side.as_deref_mut() {
                if !b.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(b)))));
                }
            }
            return Poll::Ready(None);
        };
        let mut inner = inner;
        let polled = inner.as_mut().poll_frame(cx);
        if let Some(ended) = this.ended {
            let last = match &polled {
                Poll::Ready(Some(Ok(f))) => f.is_trailers() || inner.is_end_stream(),
                Poll::Ready(_) => true,
                Poll::Pending => false,
            };
            if last {
                ended.set();
            }
        }
        if polled.is_pending() {
            if this.wait.expired(cx, *this.timeout) {
                return Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.timeout)))));
            }
            return Poll::Pending;
        }
        this.wait.got();
        match ready!(polled) {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    super::headers::clean_trailers(trailers);
                }
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if let Some(c) = this.counted {
                        c.store(*this.seen, std::sync::atomic::Ordering::Relaxed);
                    }
                    if *this.limit > 0 && *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                    if let Some(Side::Tee(t)) = this.side.as_deref_mut() {
                        t.copy(data);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBody::new(e))))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(b) => b.is_end_stream(),
            None => self.copied().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(self.copied().map_or(0, |b| b.len() as u64)),
        }
    }
}
