//! One upstream HTTP/1.1 connection, driven by the request's own task: it
//! writes the request head and streams the body, reads the response head,
//! and then hands itself to the response [`Body`], which reads the body
//! off the socket as the client takes it. Knows nothing of pools.
//!
//! Sending a body and reading the answer go on together: an upstream may
//! answer before the body is complete (a 413, a redirect), and then the
//! rest of the body is not sent and the connection is not reused. A
//! request that says `Expect: 100-continue` waits for the upstream's `100`
//! (or its final answer, or [`CONTINUE_AFTER`]) before any of its body is
//! taken from the client — so the client's own `100` comes only then.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::codec::{self, Asked, Decoded, Decoder, Forwarded, Framing, Head, Malformed, Parsed};
use crate::route::Server;
use crate::tls::Stream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a read asks the socket for, at least.
const READ_SIZE: usize = 8 * 1024;

/// The most a single read of a long body asks for.
const MAX_READ_SIZE: usize = 64 * 1024;

/// How long a request with `Expect: 100-continue` waits for the upstream's
/// `100` before it sends its body anyway (as curl does).
pub const CONTINUE_AFTER: Duration = Duration::from_secs(1);

/// A write buffer that grew past this (a large head, a body's frames) is
/// not kept for the connection's life.
const KEEP_OUT: usize = 16 * 1024;

/// Keeps a connection counted in its server's `open_connections` for as
/// long as it lives.
pub struct Counted(Arc<Server>);

impl Counted {
    pub fn new(server: &Arc<Server>) -> Counted {
        server.open_connections.fetch_add(1, Relaxed);
        Counted(server.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Relaxed);
    }
}

/// An upstream HTTP/1.1 connection.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Bytes to write: the request head, a chunk's framing, a small body.
    out: Vec<u8>,
    /// The next read's size; grows while a long body fills every read.
    read_size: usize,
    /// `None` for a health probe's connection, which carries no traffic.
    counted: Option<Counted>,
    /// The client whose address the connection's PROXY header gave, if it
    /// sent one: the pool hands the connection to no other client.
    pub proxied_for: Option<SocketAddr>,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the request failed; `unsent`: not one byte of it was
    /// written and none of its body taken from the client, so it may be
    /// sent again whatever its method; `bodiless`: it had no body, so an
    /// idempotent one may be written again even if the upstream saw part.
    #[error("writing the request: {source}")]
    Write {
        source: io::Error,
        unsent: bool,
        bodiless: bool,
    },
    /// The upstream closed the connection (or reset it) before a byte of
    /// its answer: an idle connection it gave up on as we reused it.
    /// `bodiless`: the request had no body, so it can be written again.
    #[error("connection closed before any response")]
    NoResponse {
        source: Option<io::Error>,
        bodiless: bool,
    },
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("invalid response: {0}")]
    Invalid(#[from] Malformed),
    /// The request body failed on its way (too large, or the client's).
    #[error("request body: {0}")]
    Body(BoxError),
    /// The upstream left a write of the request waiting past its limit.
    #[error("the upstream stopped reading the request")]
    WriteTimeout,
}

impl Error {
    /// May the request be sent again on another connection? `idempotent`:
    /// its method allows it (RFC 9110 §9.2.2) when the upstream may have
    /// seen it. A request whose body was (partly) sent cannot be: the
    /// body is gone.
    pub fn may_send_again(&self, idempotent: bool) -> bool {
        match self {
            Error::Write {
                unsent, bodiless, ..
            } => *unsent || (*bodiless && idempotent),
            Error::NoResponse { bodiless, .. } => *bodiless && idempotent,
            _ => false,
        }
    }
}

/// A request to send: its head (already rewritten for the upstream) and
/// what decides how it is framed.
pub struct Outgoing<'a> {
    pub parts: &'a http::request::Parts,
    /// The `X-Forwarded-*` fields still to add, if any.
    pub forwarded: Option<Forwarded<'a>>,
    pub asked: Asked,
    /// The request id, written after the header map's fields (it is not
    /// in the map: one insert fewer per request).
    pub request_id: Option<&'a (http::HeaderName, http::HeaderValue)>,
    /// Set once the whole request (head and body) is written: the
    /// upstream's response deadline starts then.
    pub sent: Option<&'a std::cell::Cell<bool>>,
    /// The longest the upstream may leave a write of the request waiting
    /// (it stopped reading); `None`: no limit here.
    pub write_timeout: Option<std::time::Duration>,
}

/// Where sending the body is.
enum Sending {
    /// Waiting for the upstream's `100 Continue` until the timer fires.
    Expecting(Pin<Box<tokio::time::Sleep>>),
    Body,
    Done,
}

/// Where one exchange on a connection is.
struct Progress<'a> {
    sending: Sending,
    /// Set once the whole request is written ([`Outgoing::sent`]).
    sent: Option<&'a std::cell::Cell<bool>>,
    /// [`Outgoing::write_timeout`].
    write_timeout: Option<std::time::Duration>,
    /// The body goes out chunked (it has no length).
    chunked: bool,
    has_body: bool,
    /// How much of `out` is written.
    at: usize,
    wrote_any: bool,
    /// A frame of the body was taken from the client.
    taken: bool,
    /// A write failed: the answer may still come, else this says why not.
    write_failed: Option<io::Error>,
    /// A byte of the answer came.
    answered: bool,
    write_wait: crate::proxy::deadline::Wait,
}

impl Progress<'_> {
    /// The connection ended before a byte of the answer: a write that
    /// failed says why, else the upstream gave up on it (`reset`).
    fn closed(&mut self, reset: Option<io::Error>) -> Error {
        let bodiless = !self.has_body;
        match self.write_failed.take() {
            Some(source) => Error::Write {
                source,
                unsent: !self.wrote_any && !self.taken,
                bodiless,
            },
            None => Error::NoResponse {
                source: reset,
                bodiless,
            },
        }
    }
}

impl Conn {
    pub fn new(io: Stream, counted: Option<Counted>, proxied_for: Option<SocketAddr>) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            read_size: READ_SIZE,
            counted,
            proxied_for,
        }
    }

    /// Has the upstream closed this idle connection (or sent something
    /// unasked)? See [`Stream::is_closed`].
    pub fn is_closed(&mut self) -> bool {
        self.io.is_closed()
    }

    /// Send the request, with `body` (`None`: it has none), and read the
    /// final response head. Its body, if any, is then read through
    /// [`Body`]; a switched connection becomes a tunnel through
    /// [`Conn::into_tunnel`].
    pub async fn send<B>(
        &mut self,
        req: Outgoing<'_>,
        mut body: Option<&mut B>,
    ) -> Result<Head, Error>
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
    {
        let has_body = body.is_some();
        let chunked = has_body && !req.parts.headers.contains_key(header::CONTENT_LENGTH);
        codec::encode_head(
            &mut self.out,
            req.parts,
            req.forwarded,
            req.request_id,
            chunked,
        );
        let expect = has_body
            && req
                .parts
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let sending = match (has_body, expect) {
            (false, _) => Sending::Done,
            (true, false) => Sending::Body,
            (true, true) => Sending::Expecting(Box::pin(tokio::time::sleep(CONTINUE_AFTER))),
        };
        self.read_size = READ_SIZE;
        let mut p = Progress {
            sending,
            sent: req.sent,
            write_timeout: req.write_timeout,
            chunked,
            has_body,
            at: 0,
            wrote_any: false,
            taken: false,
            write_failed: None,
            answered: false,
            write_wait: crate::proxy::deadline::Wait::default(),
        };
        // The answer may come before the body is sent.
        let head = std::future::poll_fn(|cx| {
            self.poll_request(cx, &mut p, &mut body)?;
            self.poll_answer(cx, &mut p, req.asked)
        })
        .await;
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        head
    }

    /// Write what is due of the request, taking more of the body as it
    /// goes, until the socket or the body has to wait or all is sent. A
    /// failed write is kept in `p` (the answer may still come); `Err`: the
    /// body failed, or the upstream left a write waiting past its limit.
    fn poll_request<B>(
        &mut self,
        cx: &mut Context<'_>,
        p: &mut Progress<'_>,
        body: &mut Option<&mut B>,
    ) -> Result<(), Error>
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
    {
        while p.write_failed.is_none() {
            if p.at < self.out.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.out[p.at..]) {
                    Poll::Ready(Ok(0)) => p.write_failed = Some(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        p.at += n;
                        p.wrote_any = true;
                        p.write_wait.got();
                    }
                    Poll::Ready(Err(e)) => p.write_failed = Some(e),
                    Poll::Pending => {
                        let limit = p.write_timeout;
                        if limit.is_some_and(|limit| p.write_wait.expired(cx, limit)) {
                            return Err(Error::WriteTimeout);
                        }
                        return Ok(());
                    }
                }
                continue;
            }
            // TLS may hold back bytes it took (a full socket): they go out
            // before the answer is awaited. Plain TCP: a no-op.
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    p.write_failed = Some(e);
                    continue;
                }
                Poll::Pending => return Ok(()),
            }
            self.out.clear();
            p.at = 0;
            match &mut p.sending {
                Sending::Done => {
                    if let Some(sent) = p.sent {
                        sent.set(true);
                    }
                    return Ok(());
                }
                Sending::Expecting(timer) => match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => p.sending = Sending::Body,
                    Poll::Pending => return Ok(()),
                },
                Sending::Body => {
                    let Some(b) = body.as_deref_mut() else {
                        p.sending = Sending::Done;
                        continue;
                    };
                    match Pin::new(b).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            p.taken = true;
                            if frame_out(&mut self.out, frame, p.chunked) {
                                p.sending = Sending::Done;
                            }
                        }
                        Poll::Ready(Some(Err(e))) => return Err(Error::Body(e)),
                        Poll::Ready(None) => {
                            if p.chunked {
                                codec::last_chunk(&mut self.out, None);
                            }
                            p.sending = Sending::Done;
                        }
                        Poll::Pending => return Ok(()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Read the final response head (interim ones let a body held for
    /// `100 Continue` go).
    fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
        p: &mut Progress<'_>,
        asked: Asked,
    ) -> Poll<Result<Head, Error>> {
        loop {
            // Nothing read yet (the usual case when first polled, and when
            // woken before the answer came): no head to parse.
            let parsed = if self.buf.is_empty() {
                None
            } else {
                codec::parse_head(&mut self.buf, asked)?
            };
            match parsed {
                Some(Parsed::Final(mut head)) => {
                    if !matches!(p.sending, Sending::Done) || p.at < self.out.len() {
                        // Answered early: the rest of the body is not
                        // sent, and the connection is not framed for
                        // another request.
                        head.reuse = false;
                    }
                    return Poll::Ready(Ok(head));
                }
                Some(Parsed::Interim(status)) => {
                    if status == http::StatusCode::CONTINUE
                        && matches!(p.sending, Sending::Expecting(_))
                    {
                        p.sending = Sending::Body;
                        cx.waker().wake_by_ref();
                    }
                    continue;
                }
                None => {}
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if !p.answered => return Poll::Ready(Err(p.closed(None))),
                Ok(0) => {
                    let why = Malformed::Why("connection closed within the head");
                    return Poll::Ready(Err(why.into()));
                }
                Ok(_) => p.answered = true,
                Err(e) if !p.answered && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Err(p.closed(Some(e))))
                }
                Err(e) => return Poll::Ready(Err(Error::Read(e))),
            }
        }
    }

    /// Read more into the buffer: `Ok(0)` at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // A long body's reads grow while the client takes each chunk before
        // the next read. While it still holds the last one (a slow reader,
        // a full socket), the next read is a small one in a new block: a
        // stalled client keeps one large chunk, not two.
        if !self.buf.try_reclaim(self.read_size) {
            self.read_size = READ_SIZE;
        }
        self.buf.reserve(self.read_size);
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == spare && self.read_size < MAX_READ_SIZE {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// The connection after a `101` or a 2xx to `CONNECT`: the socket, what
    /// was read past the head (the tunnel's first bytes), and its count.
    pub fn into_tunnel(self) -> (Stream, Bytes, Option<Counted>) {
        (self.io, self.buf.freeze(), self.counted)
    }
}

/// A body frame as it goes out: data (with its chunk framing when
/// `chunked`), or trailers, which only a chunked body carries. `true`
/// when the frame ended the body (trailers come last).
fn frame_out(out: &mut Vec<u8>, frame: Frame<Bytes>, chunked: bool) -> bool {
    match frame.into_data() {
        Ok(data) if data.is_empty() => false,
        Ok(data) => {
            if chunked {
                codec::chunk_head(out, data.len());
            }
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(codec::CHUNK_END);
            }
            false
        }
        // Trailers go in the last chunk; a body sent with a length has no
        // place for them.
        Err(frame) => match (chunked, frame.into_trailers()) {
            (true, Ok(trailers)) => {
                codec::last_chunk(out, Some(&trailers));
                true
            }
            _ => false,
        },
    }
}

/// A response body read from its connection as it is polled. At its end
/// the connection is handed back, through [`Body::take_reusable`], if it
/// may be reused.
pub struct Body {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    reuse: bool,
}

impl Body {
    /// The body of the response whose head `conn` has just read, framed
    /// as it said; `reuse`: the head allows the connection another request.
    pub fn new(conn: Box<Conn>, framing: Framing, reuse: bool) -> Body {
        Body {
            conn: Some(conn),
            decoder: Decoder::new(framing),
            reuse,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_end()
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    /// The connection, once the body is complete, if it may carry another
    /// request: the response kept it alive and nothing follows the body.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        if !self.decoder.is_end() || !self.reuse {
            return None;
        }
        let conn = self.conn.take()?;
        conn.buf.is_empty().then_some(conn)
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(None);
        };
        loop {
            match self.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Box::new(Error::Invalid(e)))));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    self.reuse = false;
                    return match self.decoder.closed() {
                        Ok(()) => Poll::Ready(None),
                        Err(e) => {
                            self.conn = None;
                            Poll::Ready(Some(Err(Box::new(Error::Invalid(e)))))
                        }
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }
}
