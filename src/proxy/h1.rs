//! cutover's own HTTP/1.1 upstream client, driven in the request's task.
//!
//! hyper's client runs every connection in a task of its own: the request
//! is handed to it over a channel, the response head comes back over
//! another, and the body over a third, with a wake-up across tasks at each
//! step. Per request that is more code and data than the whole exchange
//! needs. Here the
//! request's future writes the head and reads the response head itself,
//! and the response body is read from the socket by whoever polls it —
//! the client connection's task, as it streams the body out.
//!
//! It carries what most traffic is: requests without a body that ask for
//! no upgrade. A request with a body, an upgrade or a `CONNECT` goes through
//! hyper's client instead, on the same kind of connection (handed to hyper
//! for good, see `upstream::Pooled::into_hyper`).
//!
//! The response head is parsed by `httparse` (the parser hyper uses); its
//! framing follows RFC 9112 §6.3, strictly:
//! - no body for `HEAD`, 1xx, 204 and 304; other 1xx heads are skipped, and
//!   a `101` to a request that asked for no upgrade is an error;
//! - `Transfer-Encoding` ending in `chunked`: a chunked body, trailers
//!   included; any other coding: the body runs to the connection's close.
//!   With a `Content-Length` beside it the length is ignored and the
//!   connection is not reused; in an HTTP/1.0 response it is an error;
//! - `Content-Length`: that many bytes. Differing or malformed lengths are
//!   an error;
//! - neither: the body runs to the connection's close.
//!
//! The response head comes out without its hop-by-hop fields (RFC 9110
//! §7.6.1, the fields `Connection` names included).
//!
//! A connection goes back to the pool only after a whole response that
//! keeps it alive (`Connection: close` or an HTTP/1.0 response without
//! `keep-alive` does not), with no byte left over past its end.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::BoxError;
use super::headers;
use super::upstream::{Pooled, Sender};
use crate::route::Server;

/// The most header fields a response head (or a trailer section) may
/// have, as in hyper.
const MAX_HEADERS: usize = 100;

/// The largest response head, and the longest chunk-size line or trailer
/// section, in bytes.
const MAX_HEAD: usize = 64 * 1024;

/// What a read asks the socket for, at least.
const READ_SIZE: usize = 8 * 1024;

/// The most a single read of a long body asks for.
const MAX_READ_SIZE: usize = 64 * 1024;

/// Keeps a connection counted in its server's `open_connections` for as
/// long as it lives, whichever client drives it.
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

/// An upstream HTTP/1.1 connection of cutover's own client.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    out: Vec<u8>,
    /// The next read's size; grows while a long body fills every read.
    read_size: usize,
    counted: Counted,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the request failed; `unsent`: not one byte of it was
    /// written, so it may be sent again whatever its method.
    #[error("writing the request: {source}")]
    Write { source: io::Error, unsent: bool },
    /// The upstream closed the connection (or reset it) before a byte of
    /// its answer: an idle connection it gave up on as we reused it.
    #[error("connection closed before any response")]
    NoResponse(Option<io::Error>),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("invalid response: {0}")]
    Parse(#[from] httparse::Error),
}

impl Error {
    /// May the request be sent again on another connection? `idempotent`:
    /// its method allows it (RFC 9110 §9.2.2) when the upstream may have
    /// seen it.
    pub fn may_send_again(&self, idempotent: bool) -> bool {
        match self {
            Error::Write { unsent, .. } => *unsent || idempotent,
            Error::NoResponse(_) => idempotent,
            _ => false,
        }
    }
}

/// The `X-Forwarded-*` fields, when the request has none of its own: they
/// are written straight after its other fields instead of being inserted
/// into its header map (which usually had to grow for them).
pub struct Forwarded<'a> {
    /// The client's address, as an `X-Forwarded-For` element.
    pub client: &'a HeaderValue,
    pub tls: bool,
    /// The host the client asked for.
    pub host: Option<&'a HeaderValue>,
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// To the connection's close.
    Close,
}

impl Conn {
    pub fn new(io: TcpStream, server: &Arc<Server>) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            read_size: READ_SIZE,
            counted: Counted::new(server),
        }
    }

    /// The socket and its count, for hyper's client to take over. Only an
    /// idle connection is handed over, with nothing buffered.
    pub fn into_parts(self) -> (TcpStream, Counted) {
        debug_assert!(self.buf.is_empty());
        (self.io, self.counted)
    }

    /// Has the upstream closed this idle connection (or sent something
    /// unasked)? The reactor's readiness says whether anything arrived
    /// since the last read; only then is the socket read.
    pub fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => !matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Send a request without a body and read the response head. The
    /// response's body, if any, is then read through [`Body`].
    pub async fn send(
        &mut self,
        parts: &http::request::Parts,
        forwarded: Option<Forwarded<'_>>,
    ) -> Result<(Response<()>, Framing, bool), Error> {
        encode_head(&mut self.out, parts, forwarded);
        let mut written = 0;
        while written < self.out.len() {
            match self.io.write(&self.out[written..]).await {
                Ok(0) => {
                    return Err(Error::Write {
                        source: io::ErrorKind::WriteZero.into(),
                        unsent: written == 0,
                    })
                }
                Ok(n) => written += n,
                Err(source) => {
                    return Err(Error::Write {
                        source,
                        unsent: written == 0,
                    })
                }
            }
        }
        if self.out.capacity() > 16 * 1024 {
            // A rare large head: its buffer is not kept for the connection's life.
            self.out = Vec::new();
        }
        self.read_size = READ_SIZE;
        let head_request = parts.method == Method::HEAD;
        let mut answered = false;
        loop {
            if let Some(head) = parse_head(&mut self.buf, head_request)? {
                return Ok(head);
            }
            answered |= !self.buf.is_empty();
            if self.buf.len() >= MAX_HEAD {
                return Err(Error::Invalid("response head larger than 64 KiB"));
            }
            self.buf.reserve(READ_SIZE);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if !answered => return Err(Error::NoResponse(None)),
                Ok(0) => return Err(Error::Invalid("connection closed within the head")),
                Ok(_) => answered = true,
                Err(e) if !answered && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(Error::NoResponse(Some(e)))
                }
                Err(e) => return Err(Error::Read(e)),
            }
        }
    }

    /// Read more into the buffer: `Ok(0)` at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = self.read_size;
        self.buf.reserve(want);
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
}

/// The request head, in origin form, with the fields as they are (the
/// handler has already rewritten them), and then `forwarded`'s.
fn encode_head(out: &mut Vec<u8>, parts: &http::request::Parts, forwarded: Option<Forwarded<'_>>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = forwarded {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(f.client.as_bytes());
        out.extend_from_slice(if f.tls {
            &b"\r\nx-forwarded-proto: https\r\n"[..]
        } else {
            &b"\r\nx-forwarded-proto: http\r\n"[..]
        });
        if let Some(host) = f.host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Parse one final response head from the front of `buf`, consuming it
/// (and any 1xx heads before it). `None`: more bytes are needed. The third
/// value says whether the connection may be reused after the body.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
    loop {
        // The parser's slots are left uninitialized: zeroing 100 of them
        // per response cost more than the parse.
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("more than 100 header fields"))
            }
            Err(e) => return Err(e.into()),
        };
        let code = res.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code out of range"))?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each field lies in `buf`: names and values become slices
        // of one shared buffer instead of copies.
        let base = buf.as_ptr() as usize;
        let at: Vec<(usize, usize, usize, usize)> = res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.as_ptr() as usize - base,
                    h.name.len(),
                    h.value.as_ptr() as usize - base,
                    h.value.len(),
                )
            })
            .collect();
        let count = at.len();
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .map(|r| (r.as_ptr() as usize - base, r.len()));
        let head = buf.split_to(len).freeze();

        match code {
            101 => return Err(Error::Invalid("101 Switching Protocols without an upgrade")),
            100..=199 => continue, // informational: the final head follows
            _ => {}
        }

        // The head is built without its hop-by-hop fields (RFC 9110
        // §7.6.1), read here for framing and keep-alive instead: this
        // client carries no upgrades, so none of them goes on.
        let mut headers = HeaderMap::with_capacity(count);
        let mut length: Option<u64> = None;
        // The `Content-Length` must be written anew as one number.
        let mut refold = false;
        let mut coding = None; // `Some(chunked?)` once `Transfer-Encoding` is seen
        let (mut close, mut keep_alive) = (false, false);
        let mut named: Vec<HeaderName> = Vec::new();
        for &(ns, nl, vs, vl) in &at {
            let name = HeaderName::from_bytes(&head[ns..ns + nl])
                .map_err(|_| Error::Invalid("header field name"))?;
            let value = &head[vs..vs + vl];
            if name == header::CONTENT_LENGTH {
                for part in value.split(|b| *b == b',') {
                    let n = parse_length(part.trim_ascii())
                        .ok_or(Error::Invalid("malformed Content-Length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(Error::Invalid("differing Content-Length values"));
                    }
                    length = Some(n);
                }
                // Plain digits (the common case) go on as they came, a
                // slice of the buffer; anything else (`5, 5`) as the
                // parsed number, below.
                if !value.iter().all(u8::is_ascii_digit)
                    || headers.contains_key(header::CONTENT_LENGTH)
                {
                    refold = true;
                    continue;
                }
            } else if headers::is_hop_by_hop(&name) {
                if name == header::TRANSFER_ENCODING {
                    let last = value.rsplit(|b| *b == b',').next();
                    coding =
                        Some(last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")));
                } else if name == header::CONNECTION {
                    for token in value.split(|b| *b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive = true;
                        } else if let Ok(other) = HeaderName::from_bytes(token) {
                            named.push(other);
                        }
                    }
                }
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
                .map_err(|_| Error::Invalid("header field value"))?;
            headers.append(name, value);
        }
        // And the fields `Connection` names.
        for name in named {
            headers.remove(name);
        }
        if let (true, Some(n)) = (refold, length) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }

        let mut reuse = if version == Version::HTTP_11 {
            !close
        } else {
            keep_alive && !close
        };
        let framing = if head_request || code == 204 || code == 304 {
            Framing::Empty
        } else if let Some(chunked) = coding {
            if version == Version::HTTP_10 {
                return Err(Error::Invalid("Transfer-Encoding in an HTTP/1.0 response"));
            }
            // A length beside it is ignored — removed before the response
            // goes on — and the connection not trusted again (RFC 9112
            // §6.3, item 3).
            if length.is_some() {
                headers.remove(header::CONTENT_LENGTH);
                reuse = false;
            }
            if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            match length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        if framing == Framing::Close {
            reuse = false;
        }

        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if let Some((rs, rl)) = reason {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(head.slice(rs..rs + rl)) {
                resp.extensions_mut().insert(r);
            }
        }
        return Ok(Some((resp, framing, reuse)));
    }
}

/// A `Content-Length` value: digits only, no sign, no overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Where a body is in its framing.
#[derive(Clone, Copy, Debug)]
enum State {
    /// This many bytes are left.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of the current chunk are left.
    ChunkData(u64),
    /// The CRLF after a chunk's data is next.
    ChunkEnd,
    /// The trailer section (perhaps empty) ends the body.
    Trailers,
    /// Everything until the connection closes.
    Close,
    Done,
}

/// A response body read from its connection as it is polled. At its end
/// the connection is handed back, through [`Body::take_reusable`], if it
/// may be reused.
pub struct Body {
    up: Option<Pooled>,
    state: State,
    reuse: bool,
}

impl Body {
    /// The body of a response just read on `up`, whose head said `framing`.
    pub fn new(up: Pooled, framing: Framing, reuse: bool) -> Body {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Body {
            up: Some(up),
            state,
            reuse,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The connection, once the body is complete, if it may carry another
    /// request: the response kept it alive and nothing follows the body.
    pub fn take_reusable(&mut self) -> Option<Pooled> {
        if !matches!(self.state, State::Done) || !self.reuse {
            return None;
        }
        let up = self.up.take()?;
        match &up.tx {
            Sender::Lite(c) if c.buf.is_empty() => Some(up),
            _ => None,
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(Pooled {
            tx: Sender::Lite(conn),
            ..
        }) = &mut self.up
        else {
            // Ended, or never a body of this client.
            return Poll::Ready(None);
        };
        loop {
            match self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::ChunkData(left) if !conn.buf.is_empty() => {
                    let n = (conn.buf.len() as u64).min(left);
                    let data = conn.buf.split_to(n as usize).freeze();
                    let left = left - n;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), left) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkSize => match chunk_size_line(&conn.buf) {
                    Ok(Some((len, size))) => {
                        conn.buf.advance(len);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                        continue;
                    }
                    Ok(None) if conn.buf.len() < MAX_HEAD => {}
                    Ok(None) => return fail("chunk size line longer than 64 KiB"),
                    Err(msg) => return fail(msg),
                },
                State::ChunkEnd if conn.buf.len() >= 2 => {
                    if &conn.buf[..2] != b"\r\n" {
                        return fail("chunk data not followed by CRLF");
                    }
                    conn.buf.advance(2);
                    self.state = State::ChunkSize;
                    continue;
                }
                State::Trailers => match parse_trailers(&mut conn.buf) {
                    Ok(Some(trailers)) => {
                        self.state = State::Done;
                        return match trailers {
                            Some(map) => Poll::Ready(Some(Ok(Frame::trailers(map)))),
                            None => Poll::Ready(None),
                        };
                    }
                    Ok(None) if conn.buf.len() < MAX_HEAD => {}
                    Ok(None) => return fail("trailer section larger than 64 KiB"),
                    Err(msg) => return fail(msg),
                },
                _ => {}
            }
            // Nothing buffered to go on with: read.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, State::Close) => {
                    self.state = State::Done;
                    self.reuse = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return fail("connection closed before the body's end"),
                Ok(_) => {}
                Err(e) => {
                    self.up = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }
}

/// A chunk-size line (RFC 9112 §7.1) at the front of `b`: its length and
/// the chunk's size, `Ok(None)` while incomplete. As strict as hyper's
/// decoder: one or more hex digits that fit in 64 bits, optional blanks,
/// extensions after `;` with no control byte, and CRLF — an empty size, a
/// bare LF (in the size or an extension) or an overflow is an error.
fn chunk_size_line(b: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(d) = b.get(i).and_then(|c| (*c as char).to_digit(16)) {
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or("chunk size overflows")?;
        i += 1;
    }
    if i == b.len() {
        return Ok(None);
    }
    if i == 0 {
        return Err("empty chunk size");
    }
    let mut in_ext = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'\r' => {
                return match b.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err("CR without LF in a chunk size line"),
                }
            }
            b'\n' if in_ext => return Err("bare LF in a chunk extension"),
            b'\n' => return Err("bare LF in a chunk size line"),
            b';' => in_ext = true,
            b' ' | b'\t' => {}
            c if in_ext && c >= 0x20 && c != 0x7f => {}
            _ => return Err("invalid byte in a chunk size line"),
        }
        i += 1;
    }
    Ok(None)
}

fn fail(msg: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Err(Box::new(Error::Invalid(msg)))))
}

/// The trailer section after the last chunk, consumed from `buf`:
/// `Ok(None)` while incomplete, `Ok(Some(None))` when empty.
#[allow(clippy::type_complexity)]
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(found)) => found,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("invalid trailer section"),
    };
    if fields.is_empty() {
        buf.advance(len);
        return Ok(Some(None));
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "trailer field name")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "trailer field value")?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(Some(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        bytes: &[u8],
        head_request: bool,
    ) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, head_request)
    }

    fn framing(bytes: &[u8]) -> (Framing, bool) {
        let (_, f, reuse) = head(bytes, false).unwrap().unwrap();
        (f, reuse)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], Framing, bool); 12] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                Framing::Empty,
                true,
            ),
            (b"HTTP/1.1 304 Not Modified\r\n\r\n", Framing::Empty, true),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            // A length beside `Transfer-Encoding` is ignored; the connection is not reused.
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Framing::Close,
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Framing::Close, false),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
                Framing::Length(2),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
                Framing::Length(2),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n",
                Framing::Length(2),
                true,
            ),
        ];
        for (bytes, want, reuse) in cases {
            let got = framing(bytes);
            assert_eq!(got, (want, reuse), "{}", String::from_utf8_lossy(bytes));
        }
        let (resp, ..) = head(cases[6].0, false).unwrap().unwrap();
        assert!(!resp.headers().contains_key("content-length"));
        // A HEAD answer's length describes the body a GET would get.
        let (resp, f, reuse) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 70\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!((f, reuse), (Framing::Empty, true));
        assert_eq!(resp.headers()["content-length"], "70");
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
        let (resp, f, reuse) = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nkeep-alive: timeout=5\r\n\
              x-secret: 1\r\nupgrade: h2c\r\ntrailer: x-t\r\nproxy-connection: close\r\n\
              x-kept: yes\r\ntransfer-encoding: chunked\r\nte: trailers\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        // `Trailer` is end to end (RFC 9110 §6.6.2).
        assert_eq!(names, ["x-kept", "trailer"]);
        assert_eq!((f, reuse), (Framing::Chunked, true));
    }

    #[test]
    fn bad_heads_are_errors_and_partial_heads_wait() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(
                head(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
        let many: String = (0..101).map(|i| format!("x-{i}: y\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(head(many.as_bytes(), false).is_err());
    }

    #[test]
    fn informational_heads_are_skipped_and_the_rest_stays_buffered() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 Fine\r\nx-a: 1\r\nX-A: 2\r\ncontent-length: 3\r\n\r\nabc"[..],
        );
        let (resp, f, _) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(f, Framing::Length(3));
        let all: Vec<_> = resp.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(
            resp.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes()),
            Some(&b"Fine"[..])
        );
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn the_request_head_is_written_in_origin_form() {
        let req = http::Request::builder()
            .method("GET")
            .uri("/a/b?c=d")
            .header("host", "example.test")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, None);
        assert_eq!(
            out,
            b"GET /a/b?c=d HTTP/1.1\r\nhost: example.test\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
        let client = HeaderValue::from_static("192.0.2.1");
        let host = HeaderValue::from_static("shop.test");
        let forwarded = |tls, host| Forwarded {
            client: &client,
            tls,
            host,
        };
        encode_head(&mut out, &parts, Some(forwarded(true, Some(&host))));
        assert!(out.ends_with(
            b"x-two: 2\r\nx-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: shop.test\r\n\r\n"
        ));
        encode_head(&mut out, &parts, Some(forwarded(false, None)));
        assert!(out.ends_with(
            b"x-two: 2\r\nx-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\n\r\n"
        ));
    }

    #[test]
    fn chunk_size_lines_are_parsed_strictly() {
        assert_eq!(chunk_size_line(b"5\r\nhello"), Ok(Some((3, 5))));
        assert_eq!(chunk_size_line(b"1aF\r\n"), Ok(Some((5, 0x1af))));
        assert_eq!(chunk_size_line(b"5;name=val\r\n"), Ok(Some((12, 5))));
        assert_eq!(chunk_size_line(b"5 ;a\r\n"), Ok(Some((6, 5))));
        assert_eq!(chunk_size_line(b"0\r\n"), Ok(Some((3, 0))));
        assert_eq!(chunk_size_line(b"5"), Ok(None));
        assert_eq!(chunk_size_line(b"5\r"), Ok(None));
        assert_eq!(chunk_size_line(b"5;ext"), Ok(None));
        for bad in [
            &b"\r\n"[..],
            b";a\r\n",
            b"zz\r\n",
            b"5\n",
            b"5;a\nb\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\rx",
            b"5x\r\n",
            b"5;a\0\r\n",
        ] {
            assert!(
                chunk_size_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_content_length_is_sent_on_as_the_number_it_parsed_to() {
        let (resp, f, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Length(5));
        let all: Vec<_> = resp.headers().get_all("content-length").iter().collect();
        assert_eq!(all, ["5"]);
    }

    #[test]
    fn trailers_end_a_chunked_body() {
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert!(matches!(parse_trailers(&mut buf), Ok(Some(None))));
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"grpc-status: 0\r\n\r\n"[..]);
        let map = parse_trailers(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(map["grpc-status"], "0");
        let mut buf = BytesMut::from(&b"grpc-status: 0\r\n"[..]);
        assert!(matches!(parse_trailers(&mut buf), Ok(None)));
    }
}
