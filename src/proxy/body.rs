//! Body wrappers of the request path. Both stream: nothing is buffered.
//!
//! - [`RequestBody`] carries the client's body to the upstream and stops it
//!   past `max_body_bytes`;
//! - [`ResponseBody`] carries the upstream's (or our own) body to the
//!   client and holds the [`Exchange`] guard, whose drop ends the request:
//!   counters, statistics, and returning the upstream connection to the pool.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::exchange::Exchange;
use super::h1;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

pin_project_lite::pin_project! {
    /// The client's body on its way upstream, cut off past `limit` bytes
    /// (0 = no limit) with a [`TooLarge`] error, which the handler finds in
    /// the upstream error's source chain and answers with 413.
    pub struct RequestBody {
        // `None`: a request sent again without a body.
        #[pin]
        inner: Option<Incoming>,
        seen: u64,
        limit: u64,
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            seen: 0,
            limit,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            seen: 0,
            limit: 0,
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
            return Poll::Ready(None);
        };
        match ready!(inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.limit > 0 && *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBody::new(e))))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What the client receives. `exchange` is dropped when the body ends
/// (or the client goes away), which ends the request's accounting.
pub struct ResponseBody {
    inner: Inner,
    exchange: Option<Exchange>,
}

enum Inner {
    /// From hyper's client.
    Hyper(Incoming),
    /// From cutover's own client, read from the connection as polled.
    Lite(h1::Body),
    /// The proxy's own answer.
    Full(Full<Bytes>),
}

impl ResponseBody {
    pub fn upstream(inner: Incoming, exchange: Exchange) -> ResponseBody {
        ResponseBody {
            inner: Inner::Hyper(inner),
            exchange: Some(exchange),
        }
    }

    /// A body of cutover's own client. Its connection goes to `exchange`,
    /// to be pooled again, as soon as the body is complete.
    pub fn lite(mut body: h1::Body, mut exchange: Exchange) -> ResponseBody {
        if let Some(up) = body.take_reusable() {
            exchange.set_upstream(up);
        }
        ResponseBody {
            inner: Inner::Lite(body),
            exchange: Some(exchange),
        }
    }

    pub fn full(bytes: Bytes, exchange: Option<Exchange>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Full::new(bytes)),
            exchange,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new(), None)
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
        let out = match &mut this.inner {
            Inner::Hyper(b) => {
                ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(BoxError::from))
            }
            Inner::Full(b) => ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(|e| match e {})),
            Inner::Lite(b) => {
                let out = ready!(b.poll_frame(cx));
                // Read whole: the connection can take the next request now,
                // even if hyper drops the body without polling it again
                // (as it does after trailers).
                if let (Some(up), Some(ex)) = (b.take_reusable(), this.exchange.as_mut()) {
                    ex.set_upstream(up);
                    ex.mark_complete();
                }
                out
            }
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
            Some(Ok(_)) => {}
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        let end = match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Lite(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_end_stream(),
        };
        if end {
            if let Some(ex) = &self.exchange {
                ex.mark_complete();
            }
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::Lite(b) => b.size_hint(),
            Inner::Full(b) => b.size_hint(),
        }
    }
}
