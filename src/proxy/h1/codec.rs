//! HTTP/1.1 on the wire, for cutover's upstream client: request heads and
//! bodies framed, response heads parsed and response bodies decoded. No
//! I/O and no pools: [`super::conn`] drives it over a socket.
//!
//! The response head is parsed by `httparse` (the parser hyper uses); its
//! framing follows RFC 9112 §6.3, strictly:
//! - no body for `HEAD`, 1xx, 204 and 304; 1xx heads come out one by one as
//!   [`Parsed::Interim`], except a `101` to a request that asked for an
//!   upgrade, which is final — as is a 2xx to `CONNECT` — and then the
//!   connection carries a tunnel; a `101` to any other request is an error;
//! - `Transfer-Encoding` ending in `chunked`: a chunked body, trailers
//!   included; any other coding: the body runs to the connection's close.
//!   With a `Content-Length` beside it the length is ignored and the
//!   connection is not reused; in an HTTP/1.0 response it is an error;
//! - `Content-Length`: that many bytes. Differing or malformed lengths are
//!   an error;
//! - neither: the body runs to the connection's close.
//!
//! The response head comes out in two parts: the message's own fields,
//! and the fields of the connection it came on (RFC 9110 §7.6.1:
//! `Connection`, `Keep-Alive`, `Transfer-Encoding`, `Upgrade`…), which are
//! read here for framing and keep-alive and handed over as
//! [`ConnectionFields`] — what a proxy makes of them (the fields
//! `Connection` names, an upgrade's `Upgrade`) is the proxy's business. A
//! response may keep its connection alive for the next request unless it
//! says `Connection: close`, is an HTTP/1.0 response without
//! `keep-alive`, or runs to the connection's close.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::Frame;

use crate::proxy::headers;

/// The most header fields a response head (or a trailer section) may
/// have, as in hyper.
const MAX_HEADERS: usize = 100;

/// The largest response head, and the longest chunk-size line or trailer
/// section, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// What is wrong with a response.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("{0}")]
    Why(&'static str),
    #[error("{0}")]
    Parse(#[from] httparse::Error),
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

/// What the request asked for, which decides how its answer is read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    /// A `HEAD` request: the answer has no body whatever it says.
    pub head: bool,
    /// An `Upgrade` request: a `101` switches the connection to a tunnel.
    pub upgrade: bool,
    /// A `CONNECT` request: a 2xx makes the connection a tunnel.
    pub connect: bool,
}

impl Asked {
    pub fn new(method: &Method, upgrade: bool) -> Asked {
        Asked {
            head: method == Method::HEAD,
            upgrade,
            connect: method == Method::CONNECT,
        }
    }
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

/// A final response head.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request after this response's
    /// body (if nothing else is left on it).
    pub reuse: bool,
    /// The connection is now a tunnel (a `101` to an upgrade, a 2xx to
    /// `CONNECT`).
    pub switched: bool,
    pub connection: ConnectionFields,
}

/// What a response said about its connection, apart from its message.
#[derive(Debug, Default)]
pub struct ConnectionFields {
    /// The other fields its `Connection` field named (beyond `close`,
    /// `keep-alive` and `upgrade`), which belong to the connection too.
    pub named: Vec<HeaderName>,
    /// Its `Upgrade` field: the protocol a `101` switched to.
    pub upgrade: Option<HeaderValue>,
}

/// A head parsed from the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A 1xx head; the final one follows.
    Interim(StatusCode),
    Final(Head),
}

/// The request head, with the fields as they are (the handler has already
/// rewritten them), then `forwarded`'s, and `Transfer-Encoding: chunked`
/// when the body is sent `chunked`. The target is in origin form (the
/// authority for `CONNECT`).
pub fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    forwarded: Option<Forwarded<'_>>,
    request_id: Option<&(http::HeaderName, http::HeaderValue)>,
    chunked: bool,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = if parts.method == Method::CONNECT {
        parts.uri.authority().map_or("", |a| a.as_str())
    } else {
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, id)) = request_id {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(id.as_bytes());
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
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The size line of a chunk of `len` bytes (not zero), before its data;
/// [`CHUNK_END`] follows the data.
pub fn chunk_head(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len > 0);
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4) as usize;
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(len >> (4 * i)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// What ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk and the trailer section that ends a chunked body.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parse one response head from the front of `buf`, consuming it. `None`:
/// more bytes are needed.
pub fn parse_head(buf: &mut BytesMut, asked: Asked) -> Result<Option<Parsed>, Malformed> {
    // The parser's slots are left uninitialized: zeroing 100 of them per
    // response cost more than the parse.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Malformed::Why("response head larger than 64 KiB"))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Malformed::Why("response head larger than 64 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed::Why("more than 100 header fields"))
        }
        Err(e) => return Err(e.into()),
    };
    let code = res.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| Malformed::Why("status code out of range"))?;
    let switched = match code {
        101 if asked.upgrade => true,
        101 => return Err(Malformed::Why("101 Switching Protocols without an upgrade")),
        100..=199 => {
            buf.advance(len);
            return Ok(Some(Parsed::Interim(status)));
        }
        200..=299 => asked.connect,
        _ => false,
    };
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Where each field lies in `buf`: names and values become slices of
    // one shared buffer instead of copies.
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
    // A reason phrase that is not UTF-8 comes back from httparse as a
    // static "", outside the buffer: only a phrase within it is kept.
    let reason = res
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
        .and_then(|r| {
            let at = (r.as_ptr() as usize).checked_sub(base)?;
            (at + r.len() <= buf.len()).then_some((at, r.len()))
        });
    let head = buf.split_to(len).freeze();
    let mut fields = fields(&head, &at)?;
    let framing = framing(&mut fields, version, code, switched, asked)?;
    let Fields {
        mut headers,
        length,
        refold,
        reuse,
        connection,
        ..
    } = fields;
    if let (true, Some(n)) = (refold, length) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }

    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some((rs, rl)) = reason {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(head.slice(rs..rs + rl)) {
            response.extensions_mut().insert(r);
        }
    }
    Ok(Some(Parsed::Final(Head {
        response,
        framing,
        reuse,
        switched,
        connection,
    })))
}

/// A response head's fields, and what its framing fields say.
struct Fields {
    headers: HeaderMap,
    /// The `Content-Length`, checked.
    length: Option<u64>,
    /// The `Content-Length` must be written anew as one number.
    refold: bool,
    /// `Some(chunked?)` once `Transfer-Encoding` is seen.
    coding: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// The connection may carry another request.
    reuse: bool,
    connection: ConnectionFields,
}

/// The fields at `at` (name and value offsets into `head`), as shared
/// slices of it, with the framing and keep-alive fields read.
fn fields(head: &Bytes, at: &[(usize, usize, usize, usize)]) -> Result<Fields, Malformed> {
    let mut f = Fields {
        headers: HeaderMap::with_capacity(at.len()),
        length: None,
        refold: false,
        coding: None,
        close: false,
        keep_alive: false,
        reuse: false,
        connection: ConnectionFields::default(),
    };
    for &(ns, nl, vs, vl) in at {
        let name = HeaderName::from_bytes(&head[ns..ns + nl])
            .map_err(|_| Malformed::Why("header field name"))?;
        let value = &head[vs..vs + vl];
        if name == header::CONTENT_LENGTH {
            // A `Content-Length` before this one is in the map, or was
            // refolded already.
            let again = f.length.is_some();
            for part in value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii())
                    .ok_or(Malformed::Why("malformed Content-Length"))?;
                if f.length.is_some_and(|l| l != n) {
                    return Err(Malformed::Why("differing Content-Length values"));
                }
                f.length = Some(n);
            }
            // Plain digits (the common case) go on as they came, a slice
            // of the buffer; anything else (`5, 5`) as the parsed number.
            if again || !value.iter().all(u8::is_ascii_digit) {
                f.refold = true;
                continue;
            }
        } else if headers::is_hop_by_hop(&name) {
            connection_field(&mut f, &name, value, head.slice(vs..vs + vl))?;
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
            .map_err(|_| Malformed::Why("header field value"))?;
        f.headers.append(name, value);
    }
    Ok(f)
}

/// A field of the connection (`name` is hop-by-hop): what it says about
/// framing and keep-alive, the fields `Connection` names, `Upgrade`.
fn connection_field(
    f: &mut Fields,
    name: &HeaderName,
    value: &[u8],
    shared: Bytes,
) -> Result<(), Malformed> {
    if name == header::TRANSFER_ENCODING {
        let last = value.rsplit(|b| *b == b',').next();
        f.coding = Some(last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")));
    } else if name == header::CONNECTION {
        for token in value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                f.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                f.keep_alive = true;
            } else if !token.eq_ignore_ascii_case(b"upgrade") {
                if let Ok(other) = HeaderName::from_bytes(token) {
                    f.connection.named.push(other);
                }
            }
        }
    } else if name == header::UPGRADE {
        let value = HeaderValue::from_maybe_shared(shared)
            .map_err(|_| Malformed::Why("header field value"))?;
        f.connection.upgrade = Some(value);
    }
    Ok(())
}

/// How the body is framed (RFC 9112 §6.3), and whether the connection may
/// be reused after it (set in `f`).
fn framing(
    f: &mut Fields,
    version: Version,
    code: u16,
    switched: bool,
    asked: Asked,
) -> Result<Framing, Malformed> {
    f.reuse = if version == Version::HTTP_11 {
        !f.close
    } else {
        f.keep_alive && !f.close
    };
    let framing = if switched {
        // A tunnel's bytes follow: no body framing applies (RFC 9110
        // §9.3.6 for `CONNECT`), and the connection is the tunnel's.
        f.headers.remove(header::CONTENT_LENGTH);
        f.reuse = false;
        Framing::Empty
    } else if asked.head || code == 204 || code == 304 {
        Framing::Empty
    } else if let Some(chunked) = f.coding {
        if version == Version::HTTP_10 {
            return Err(Malformed::Why("Transfer-Encoding in an HTTP/1.0 response"));
        }
        // A length beside it is ignored — removed before the response goes
        // on — and the connection not trusted again (RFC 9112 §6.3, item 3).
        if f.length.is_some() {
            f.headers.remove(header::CONTENT_LENGTH);
            f.refold = false;
            f.reuse = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match f.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if framing == Framing::Close {
        f.reuse = false;
    }
    Ok(framing)
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

/// What decoding the buffered bytes gave.
#[derive(Debug)]
pub enum Decoded {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body is complete.
    End,
}

/// Takes a response body's frames out of the bytes read for it.
#[derive(Debug)]
pub struct Decoder(State);

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        Decoder(match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        })
    }

    pub fn is_end(&self) -> bool {
        matches!(self.0, State::Done)
    }

    /// The bytes left, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.0 {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The next frame from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.0 {
                State::Done => return Ok(Decoded::End),
                State::Length(left) | State::ChunkData(left) if !buf.is_empty() => {
                    let n = (buf.len() as u64).min(left);
                    let data = buf.split_to(n as usize).freeze();
                    let left = left - n;
                    self.0 = match (self.0, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), left) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                State::Close if !buf.is_empty() => {
                    return Ok(Decoded::Frame(Frame::data(buf.split().freeze())));
                }
                State::ChunkSize => match chunk_size_line(buf).map_err(Malformed::Why)? {
                    Some((len, size)) => {
                        buf.advance(len);
                        self.0 = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    None if buf.len() < MAX_HEAD => return Ok(Decoded::More),
                    None => return Err(Malformed::Why("chunk size line longer than 64 KiB")),
                },
                State::ChunkEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed::Why("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.0 = State::ChunkSize;
                }
                State::Trailers => match parse_trailers(buf).map_err(Malformed::Why)? {
                    Some(trailers) => {
                        self.0 = State::Done;
                        return Ok(match trailers {
                            Some(map) => Decoded::Frame(Frame::trailers(map)),
                            None => Decoded::End,
                        });
                    }
                    None if buf.len() < MAX_HEAD => return Ok(Decoded::More),
                    None => return Err(Malformed::Why("trailer section larger than 64 KiB")),
                },
                _ => return Ok(Decoded::More),
            }
        }
    }

    /// The connection closed with everything buffered decoded: the end of
    /// a body that runs to the close, an error for any other.
    pub fn closed(&mut self) -> Result<(), Malformed> {
        match self.0 {
            State::Close | State::Done => {
                self.0 = State::Done;
                Ok(())
            }
            _ => Err(Malformed::Why("connection closed before the body's end")),
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

    /// The final head, past any 1xx heads.
    fn final_head(buf: &mut BytesMut, asked: Asked) -> Result<Option<Head>, Malformed> {
        loop {
            match parse_head(buf, asked)? {
                Some(Parsed::Interim(_)) => continue,
                Some(Parsed::Final(h)) => return Ok(Some(h)),
                None => return Ok(None),
            }
        }
    }

    fn head(
        bytes: &[u8],
        head_request: bool,
    ) -> Result<Option<(Response<()>, Framing, bool)>, Malformed> {
        let mut buf = BytesMut::from(bytes);
        let asked = Asked {
            head: head_request,
            ..Asked::default()
        };
        Ok(final_head(&mut buf, asked)?.map(|h| (h.response, h.framing, h.reuse)))
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
    fn hop_by_hop_fields_come_out_as_they_came_and_decide_the_framing() {
        let (resp, f, reuse) = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nkeep-alive: timeout=5\r\n\
              x-secret: 1\r\nupgrade: h2c\r\ntrailer: x-t\r\nproxy-connection: close\r\n\
              x-kept: yes\r\ntransfer-encoding: chunked\r\nte: trailers\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        // The connection's fields come apart from the message's; what is
        // forwarded of either is the proxy's choice.
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-secret", "trailer", "x-kept"]);
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
        let h = final_head(&mut buf, Asked::default()).unwrap().unwrap();
        let (resp, f) = (h.response, h.framing);
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
        encode_head(&mut out, &parts, None, None, false);
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
        encode_head(
            &mut out,
            &parts,
            Some(forwarded(true, Some(&host))),
            None,
            false,
        );
        assert!(out.ends_with(
            b"x-two: 2\r\nx-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: shop.test\r\n\r\n"
        ));
        encode_head(&mut out, &parts, Some(forwarded(false, None)), None, true);
        assert!(out.ends_with(
            b"x-two: 2\r\nx-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\ntransfer-encoding: chunked\r\n\r\n"
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
        // One field listing the length twice, and the same length in two
        // fields: one `Content-Length` goes on either way.
        let heads: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\ncontent-length: 5\r\n\r\n",
        ];
        for raw in heads {
            let (resp, f, _) = head(raw, false).unwrap().unwrap();
            assert_eq!(f, Framing::Length(5));
            let all: Vec<_> = resp.headers().get_all("content-length").iter().collect();
            assert_eq!(all, ["5"]);
        }
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

    #[test]
    fn a_reason_phrase_that_is_not_utf8_is_dropped() {
        // Found by the upstream_response fuzz target: it panicked.
        let mut bytes = b"HTTP/1.1 101 Switching Prob".to_vec();
        bytes.extend_from_slice(&[0xce; 20]);
        bytes.extend_from_slice(b"\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
        let upgrade = Asked {
            upgrade: true,
            ..Asked::default()
        };
        let h = final_head(&mut BytesMut::from(&bytes[..]), upgrade)
            .unwrap()
            .unwrap();
        assert!(h.switched);
        assert!(h
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .is_none());
        let (resp, ..) = head(b"HTTP/1.1 200 \xff\r\ncontent-length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn a_switch_keeps_what_the_tunnel_needs() {
        let upgrade = Asked {
            upgrade: true,
            ..Asked::default()
        };
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nx-a: 1\r\n\r\nframe"[..],
        );
        let h = final_head(&mut buf, upgrade).unwrap().unwrap();
        assert!(h.switched && !h.reuse);
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.connection.upgrade.as_ref().unwrap(), "websocket");
        assert!(h.connection.named.is_empty());
        assert_eq!(&buf[..], b"frame", "the tunnel's first bytes stay");
        let connect = Asked::new(&Method::CONNECT, false);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"[..]);
        let h = final_head(&mut buf, connect).unwrap().unwrap();
        assert!(h.switched);
        assert!(!h.response.headers().contains_key("content-length"));
        // A refusal of CONNECT is an ordinary answer.
        let mut buf = BytesMut::from(&b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno"[..]);
        let h = final_head(&mut buf, connect).unwrap().unwrap();
        assert!(!h.switched && h.framing == Framing::Length(2));
    }

    #[test]
    fn request_bodies_are_framed_in_chunks() {
        let mut out = Vec::new();
        for (len, line) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (65536, "10000\r\n"),
        ] {
            out.clear();
            chunk_head(&mut out, len);
            assert_eq!(out, line.as_bytes());
        }
        out.clear();
        last_chunk(&mut out, None);
        assert_eq!(out, b"0\r\n\r\n");
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("11"));
        out.clear();
        last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"0\r\nx-sum: 11\r\n\r\n");
    }

    #[test]
    fn a_body_decodes_the_same_however_it_is_split() {
        let wire = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..wire.len() {
            let mut d = Decoder::new(Framing::Chunked);
            let mut buf = BytesMut::new();
            let (mut data, mut trailers) = (Vec::new(), None);
            for piece in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(piece);
                while let Decoded::Frame(f) = d.decode(&mut buf).unwrap() {
                    match f.into_data() {
                        Ok(b) => data.extend_from_slice(&b),
                        Err(f) => trailers = f.into_trailers().ok(),
                    }
                }
            }
            assert!(d.is_end(), "cut at {cut}");
            assert_eq!(data, b"hello world", "cut at {cut}");
            assert_eq!(trailers.unwrap()["x-t"], "1");
        }
        let mut d = Decoder::new(Framing::Length(3));
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Frame(_))));
        assert!(d.closed().is_err(), "short of its length");
        let mut d = Decoder::new(Framing::Close);
        assert!(d.closed().is_ok() && d.is_end());
    }
}
