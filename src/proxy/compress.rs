//! Response compression: gzip, brotli or zstd, for an app with
//! `compress = true`, chosen by the client's `Accept-Encoding`.
//!
//! Two steps, both pure but the encoder: [`Allowed::new`] reads the request
//! (which encoding the client takes best), [`Allowed::apply`] reads the
//! response head and rewrites it (`Content-Encoding`, `Vary`, no
//! `Content-Length`, a weak `ETag`) when the response is to be compressed.
//! The body is then compressed as it streams, by an [`Encoder`] that
//! [`super::response::ResponseBody`] holds: what the upstream sends is
//! written to the encoder as it comes, and the encoder is flushed whenever
//! the upstream pauses, so that a server-sent event or a streamed page
//! reaches the client as promptly as it would uncompressed. Nothing is
//! buffered beyond the encoder's own window.
//!
//! Levels are fixed, fast ones, for on-the-fly work (nginx's gzip default
//! is 1, and its brotli module's 6): gzip 4, brotli 4 with a 512 KiB
//! window, zstd 3 with a 512 KiB window. A stream's encoder holds a few
//! hundred KiB to about 1 MiB.

use std::io::Write;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body::Frame;

use super::body::BoxError;
use crate::config::Compression;

/// A content coding cutover produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    /// On a tie in q-values, the first of these the client takes wins.
    /// zstd 3 costs less CPU than brotli 4 and gzip 4, and its body is
    /// smaller than gzip's (figures: benches/README.md), so it goes first;
    /// brotli, the smallest, next; gzip last.
    const PREFERENCE: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

/// The best encoding `Accept-Encoding` allows, by q-value (RFC 9110
/// §12.5.3): a coding named with `q=0` is refused, `*` stands for every
/// coding not named, and ties go by [`Encoding::PREFERENCE`]. `identity`
/// changes nothing: when the client takes none of ours it gets the body as
/// it is (as nginx does), not a 406.
pub fn negotiate<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<Encoding> {
    // q in thousandths, per coding in PREFERENCE order; None = not named.
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    for value in values {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| qvalue(v.trim()))
                })
                .unwrap_or(Some(1000));
            // A malformed q-value: the item is ignored.
            let Some(q) = q else { continue };
            if coding == "*" {
                star = Some(q);
                continue;
            }
            let slot =
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    2
                } else if coding.eq_ignore_ascii_case("br") {
                    1
                } else if coding.eq_ignore_ascii_case("zstd") {
                    0
                } else {
                    continue;
                };
            named[slot] = Some(named[slot].map_or(q, |old| old.max(q)));
        }
    }
    let mut best: Option<(Encoding, u16)> = None;
    for (i, enc) in Encoding::PREFERENCE.into_iter().enumerate() {
        let q = named[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((enc, q));
        }
    }
    best.map(|(e, _)| e)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac),
        "1" if frac == 0 => Some(1000),
        _ => None,
    }
}

/// What a request of an app with `compress = true` allows its response.
pub struct Allowed {
    config: Arc<Compression>,
    /// `None`: the response may vary (and says so) but is not compressed —
    /// the client takes none of ours, or the request is `HEAD`.
    encoding: Option<Encoding>,
}

/// What [`Allowed::apply`] decided for a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Left as it is.
    Untouched,
    /// Not compressed, but `Vary: Accept-Encoding` added: another client
    /// may get it compressed, and a cache must not mix the two.
    Vary,
    /// Compressed with this encoding; the head is rewritten already.
    Compress(Encoding),
}

impl Allowed {
    /// `None` for a request whose answer is never compressed: an upgrade or
    /// `CONNECT`, whose answer becomes a tunnel.
    // Not inlined: only some requests need it, and inlined it spread
    // the request path's code over more cache lines.
    #[inline(never)]
    pub fn new(
        config: Arc<Compression>,
        method: &Method,
        headers: &HeaderMap,
        upgrade: bool,
    ) -> Option<Allowed> {
        if upgrade || method == Method::CONNECT {
            return None;
        }
        // A HEAD answer has no body, and its headers must be those of the
        // GET's but for what compression would change: left as they are.
        let encoding = if method == Method::HEAD {
            None
        } else {
            negotiate(headers.get_all(header::ACCEPT_ENCODING).iter())
        };
        Some(Allowed { config, encoding })
    }

    /// Decide for a response head, and rewrite it when it is compressed.
    pub fn apply(&self, status: StatusCode, headers: &mut HeaderMap) -> Decision {
        // No body (1xx, 204, 304), or a tunnel (a 101 never gets here).
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Decision::Untouched;
        }
        if !headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| type_matches(&self.config.types, ct))
        {
            return Decision::Untouched;
        }
        // Encoded by the upstream already, or not to be changed on the way
        // (RFC 9111 §5.2.2.6): whatever the client asked, it gets the same.
        if headers.contains_key(header::CONTENT_ENCODING) || no_transform(headers) {
            return Decision::Untouched;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|n| n < self.config.min_length) {
            return Decision::Untouched;
        }
        add_vary(headers);
        // A part of the body: its ranges count in the uncompressed bytes.
        let ranged =
            status == StatusCode::PARTIAL_CONTENT || headers.contains_key(header::CONTENT_RANGE);
        let Some(enc) = self.encoding.filter(|_| !ranged) else {
            return Decision::Vary;
        };
        headers.remove(header::CONTENT_LENGTH);
        // Ranges of the compressed body cannot be served.
        headers.remove(header::ACCEPT_RANGES);
        headers.insert(header::CONTENT_ENCODING, enc.header());
        // The compressed body is not byte for byte what the strong ETag
        // named (RFC 9110 §8.8.3); a weak one still validates it.
        if let Some(etag) = headers.get(header::ETAG) {
            let b = etag.as_bytes();
            if b.first() == Some(&b'"') {
                let mut weak = Vec::with_capacity(b.len() + 2);
                weak.extend_from_slice(b"W/");
                weak.extend_from_slice(b);
                if let Ok(v) = HeaderValue::from_bytes(&weak) {
                    headers.insert(header::ETAG, v);
                }
            }
        }
        Decision::Compress(enc)
    }
}

/// Does the response's media type match one of `types` (lowercase
/// `type/subtype`, `type/*` or `*/*`)? Parameters (`; charset=…`) are
/// ignored.
pub fn type_matches(types: &[String], content_type: &HeaderValue) -> bool {
    let Ok(ct) = content_type.to_str() else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, _)) = media.split_once('/') else {
        return false;
    };
    types.iter().any(|t| match t.strip_suffix("/*") {
        Some("*") => true,
        Some(range) => range.eq_ignore_ascii_case(ty),
        None => t.eq_ignore_ascii_case(media),
    })
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

/// `Vary: Accept-Encoding`, unless `Vary` names it (or `*`) already.
fn add_vary(headers: &mut HeaderMap) {
    let named = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !named {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// One response body's encoder. Each codec writes into a `Vec`, taken as a
/// frame at a flush, at the end, or once it holds 4 KiB.
pub struct Encoder {
    codec: Codec,
    /// Input written since the last flush: a flush with nothing new would
    /// only add an empty block.
    dirty: bool,
    /// The upstream's trailers, held while the encoder's last bytes go.
    trailers: Option<HeaderMap>,
    finished: bool,
}

enum Codec {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// (Boxed: its state is 5 KiB, the others' a few hundred bytes.)
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    /// Finished: its last bytes are sent.
    Done,
}

/// `lgwin` for brotli and `windowLog` for zstd: a 512 KiB window, which
/// bounds the memory of both.
const WINDOW_LOG: u32 = 19;

impl Encoder {
    pub fn new(encoding: Encoding) -> Encoder {
        let codec = match encoding {
            Encoding::Gzip => Codec::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(4),
            )),
            Encoding::Brotli => Codec::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                4,
                WINDOW_LOG,
            ))),
            Encoding::Zstd => {
                // Neither call fails but for an out-of-range parameter.
                let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3)
                    .expect("zstd level 3 is valid");
                z.window_log(WINDOW_LOG)
                    .expect("zstd window log 19 is valid");
                Codec::Zstd(z)
            }
        };
        Encoder {
            codec,
            dirty: false,
            trailers: None,
            finished: false,
        }
    }

    /// The next frame for the client, from `inner`, the upstream's body.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut inner: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.finished {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        loop {
            let (step, paused) = match inner(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => (self.write(&data), false),
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        (self.finish(), false)
                    }
                },
                Poll::Ready(None) => (self.finish(), false),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                // The upstream paused: what it sent so far goes out now.
                Poll::Pending if self.dirty => (self.flush(), true),
                Poll::Pending => return Poll::Pending,
            };
            match step {
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                Ok(out) if !out.is_empty() => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(_) if self.finished => return self.poll(cx, inner),
                // (The upstream's body has the waker.)
                Ok(_) if paused => return Poll::Pending,
                // The encoder keeps what it has until more comes.
                Ok(_) => {}
            }
        }
    }

    /// Done: the encoder's last bytes are out (trailers may follow).
    pub fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        if !data.is_empty() {
            self.dirty = true;
            match &mut self.codec {
                Codec::Gzip(e) => e.write_all(data)?,
                Codec::Brotli(e) => e.write_all(data)?,
                Codec::Zstd(e) => e.write_all(data)?,
                Codec::Done => {}
            }
        }
        // A few bytes (gzip's header) wait for more, or for the flush.
        let held = self.output().map_or(0, |b| b.len());
        Ok(if held >= 4096 {
            self.take()
        } else {
            Bytes::new()
        })
    }

    fn flush(&mut self) -> std::io::Result<Bytes> {
        self.dirty = false;
        match &mut self.codec {
            Codec::Gzip(e) => e.flush()?,
            Codec::Brotli(e) => e.flush()?,
            Codec::Zstd(e) => e.flush()?,
            Codec::Done => {}
        }
        Ok(self.take())
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        self.finished = true;
        self.dirty = false;
        let out = match std::mem::replace(&mut self.codec, Codec::Done) {
            Codec::Gzip(e) => e.finish()?,
            Codec::Brotli(e) => (*e).into_inner(),
            Codec::Zstd(e) => e.finish()?,
            Codec::Done => Vec::new(),
        };
        Ok(Bytes::from(out))
    }

    /// What the encoder wrote so far, taken.
    fn take(&mut self) -> Bytes {
        self.output()
            .map_or_else(Bytes::new, |b| Bytes::from(std::mem::take(b)))
    }

    /// The encoder's output buffer.
    fn output(&mut self) -> Option<&mut Vec<u8>> {
        match &mut self.codec {
            Codec::Gzip(e) => Some(e.get_mut()),
            Codec::Brotli(e) => Some(e.get_mut()),
            Codec::Zstd(e) => Some(e.get_mut()),
            Codec::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> Option<Encoding> {
        negotiate([HeaderValue::from_str(v).unwrap()].iter())
    }

    fn plan(ae: &str, method: Method) -> Allowed {
        let config = Arc::new(Compression {
            types: Compression::DEFAULT_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            min_length: 1024,
        });
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(ae).unwrap());
        Allowed::new(config, &method, &h, false).unwrap()
    }

    fn head(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    #[test]
    fn ties_go_to_zstd_then_brotli_then_gzip() {
        assert_eq!(ae("gzip, deflate, br, zstd"), Some(Encoding::Zstd));
        assert_eq!(ae("gzip, br"), Some(Encoding::Brotli));
        assert_eq!(ae("gzip"), Some(Encoding::Gzip));
        assert_eq!(ae("x-gzip"), Some(Encoding::Gzip));
        assert_eq!(ae("GZIP"), Some(Encoding::Gzip));
    }

    #[test]
    fn the_highest_q_value_wins() {
        assert_eq!(ae("zstd;q=0.5, br;q=0.8, gzip"), Some(Encoding::Gzip));
        assert_eq!(ae("zstd;q=0.5, gzip;q=0.501"), Some(Encoding::Gzip));
        assert_eq!(ae("br;q=1.0, zstd;q=0.999"), Some(Encoding::Brotli));
    }

    #[test]
    fn q_zero_refuses_a_coding() {
        assert_eq!(ae("zstd;q=0, br;q=0, gzip"), Some(Encoding::Gzip));
        assert_eq!(ae("gzip;q=0"), None);
        assert_eq!(ae("*;q=0"), None);
    }

    #[test]
    fn star_stands_for_codings_not_named() {
        assert_eq!(ae("*"), Some(Encoding::Zstd));
        assert_eq!(ae("zstd;q=0, *"), Some(Encoding::Brotli));
        assert_eq!(ae("gzip, *;q=0"), Some(Encoding::Gzip));
        assert_eq!(ae("gzip;q=0.5, *;q=0.1"), Some(Encoding::Gzip));
    }

    #[test]
    fn identity_and_unknown_codings_choose_nothing() {
        assert_eq!(ae("identity"), None);
        assert_eq!(ae("deflate, compress"), None);
        assert_eq!(ae(""), None);
        assert_eq!(negotiate([].iter()), None);
    }

    #[test]
    fn malformed_q_values_are_ignored() {
        assert_eq!(ae("zstd;q=2, gzip"), Some(Encoding::Gzip));
        assert_eq!(
            ae("zstd;q=0.1234, br;q=x, gzip;q=0.1"),
            Some(Encoding::Gzip)
        );
    }

    #[test]
    fn a_compressed_head_loses_its_length_and_strong_etag() {
        let mut h = head(&[
            JSON,
            ("content-length", "5000"),
            ("etag", "\"abc\""),
            ("accept-ranges", "bytes"),
        ]);
        let d = plan("gzip", Method::GET).apply(StatusCode::OK, &mut h);
        assert_eq!(d, Decision::Compress(Encoding::Gzip));
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["vary"], "accept-encoding");
        assert_eq!(h["etag"], "W/\"abc\"");
        assert!(!h.contains_key("content-length"));
        assert!(!h.contains_key("accept-ranges"));
    }

    #[test]
    fn a_weak_etag_stays_as_it_is() {
        let mut h = head(&[JSON, ("etag", "W/\"abc\"")]);
        plan("br", Method::GET).apply(StatusCode::OK, &mut h);
        assert_eq!(h["etag"], "W/\"abc\"");
    }

    #[test]
    fn vary_is_appended_to_once() {
        let mut h = head(&[JSON, ("vary", "Origin")]);
        plan("gzip", Method::GET).apply(StatusCode::OK, &mut h);
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "accept-encoding"]);
        let mut h = head(&[JSON, ("vary", "Origin, Accept-Encoding")]);
        plan("gzip", Method::GET).apply(StatusCode::OK, &mut h);
        assert_eq!(h.get_all("vary").iter().count(), 1);
    }

    #[test]
    fn a_client_that_takes_nothing_of_ours_gets_vary_only() {
        let mut h = head(&[JSON]);
        let d = plan("identity", Method::GET).apply(StatusCode::OK, &mut h);
        assert_eq!(d, Decision::Vary);
        assert_eq!(h["vary"], "accept-encoding");
        assert!(!h.contains_key("content-encoding"));
    }

    #[test]
    fn head_and_ranges_vary_but_are_not_compressed() {
        let mut h = head(&[JSON]);
        assert_eq!(
            plan("gzip", Method::HEAD).apply(StatusCode::OK, &mut h),
            Decision::Vary
        );
        let mut h = head(&[JSON, ("content-range", "bytes 0-9/5000")]);
        assert_eq!(
            plan("gzip", Method::GET).apply(StatusCode::PARTIAL_CONTENT, &mut h),
            Decision::Vary
        );
    }

    #[test]
    fn what_is_never_compressed_is_left_untouched() {
        let p = plan("gzip, br, zstd", Method::GET);
        let untouched = |status: u16, fields: &[(&str, &str)]| {
            let mut h = head(fields);
            let before = h.clone();
            let d = p.apply(StatusCode::from_u16(status).unwrap(), &mut h);
            d == Decision::Untouched && h == before
        };
        assert!(untouched(200, &[("content-type", "image/png")]));
        assert!(untouched(200, &[]), "no content type");
        assert!(untouched(200, &[JSON, ("content-encoding", "gzip")]));
        assert!(untouched(
            200,
            &[JSON, ("cache-control", "public, No-Transform")]
        ));
        assert!(untouched(200, &[JSON, ("content-length", "1023")]));
        assert!(untouched(204, &[JSON]));
        assert!(untouched(304, &[JSON]));
        assert!(!untouched(200, &[JSON, ("content-length", "1024")]));
        assert!(!untouched(404, &[("content-type", "text/html")]));
    }

    #[test]
    fn upgrades_and_connect_have_no_plan() {
        let config = Arc::new(Compression {
            types: vec!["*/*".into()],
            min_length: 0,
        });
        let h = HeaderMap::new();
        assert!(Allowed::new(config.clone(), &Method::GET, &h, true).is_none());
        assert!(Allowed::new(config, &Method::CONNECT, &h, false).is_none());
    }

    #[test]
    fn types_match_by_range_and_ignore_parameters_and_case() {
        let types: Vec<String> = vec!["text/*".into(), "application/json".into()];
        let m = |ct: &str| type_matches(&types, &HeaderValue::from_str(ct).unwrap());
        assert!(m("text/html"));
        assert!(m("Text/Event-Stream"));
        assert!(m("application/JSON; charset=utf-8"));
        assert!(!m("application/json-seq"));
        assert!(!m("image/png"));
        assert!(!m("text"));
        assert!(type_matches(
            &["*/*".into()],
            &HeaderValue::from_static("image/png")
        ));
    }

    /// Drive an encoder over `frames`, with a pause (Pending) after each.
    fn encode(enc: Encoding, frames: &[&[u8]]) -> Vec<Bytes> {
        let mut e = Encoder::new(enc);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut queue: Vec<Poll<Option<Frame<Bytes>>>> = Vec::new();
        for f in frames {
            queue.push(Poll::Ready(Some(Frame::data(Bytes::copy_from_slice(f)))));
            queue.push(Poll::Pending);
        }
        queue.push(Poll::Ready(None));
        queue.reverse();
        let mut out = Vec::new();
        loop {
            let polled = e.poll(&mut cx, |_| match queue.pop() {
                Some(Poll::Ready(f)) => Poll::Ready(f.map(Ok)),
                Some(Poll::Pending) => Poll::Pending,
                None => Poll::Ready(None),
            });
            match polled {
                Poll::Ready(Some(Ok(f))) => out.push(f.into_data().unwrap()),
                Poll::Ready(None) => return out,
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Pending => {}
            }
        }
    }

    fn decode(enc: Encoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match enc {
            Encoding::Gzip => {
                let mut d = flate2::write::GzDecoder::new(&mut out);
                d.write_all(data).unwrap();
                d.finish().unwrap();
            }
            Encoding::Brotli => {
                let mut d = brotli::DecompressorWriter::new(&mut out, 4096);
                d.write_all(data).unwrap();
                d.close().unwrap();
            }
            Encoding::Zstd => {
                out = zstd::stream::decode_all(data).unwrap();
            }
        }
        out
    }

    #[test]
    fn each_pause_flushes_what_came_before_it() {
        for enc in Encoding::PREFERENCE {
            let frames = encode(enc, &[b"data: one\n\n", b"data: two\n\n"]);
            // One frame per upstream frame (flushed at its pause), and the
            // encoder's end.
            assert_eq!(frames.len(), 3, "{enc:?}");
            let first = decode_prefix(enc, &frames[0]);
            assert_eq!(first, b"data: one\n\n", "{enc:?}");
            let all: Vec<u8> = frames.concat();
            assert_eq!(decode(enc, &all), b"data: one\n\ndata: two\n\n", "{enc:?}");
        }
    }

    /// What a decoder makes of the start of a stream, without its end.
    fn decode_prefix(enc: Encoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match enc {
            Encoding::Gzip => {
                let mut d = flate2::write::GzDecoder::new(&mut out);
                d.write_all(data).unwrap();
                d.flush().unwrap();
                drop(d);
            }
            Encoding::Brotli => {
                let mut d = brotli::DecompressorWriter::new(&mut out, 4096);
                d.write_all(data).unwrap();
                d.flush().unwrap();
                drop(d);
            }
            Encoding::Zstd => {
                let mut d = zstd::stream::write::Decoder::new(&mut out).unwrap();
                d.write_all(data).unwrap();
                d.flush().unwrap();
                drop(d);
            }
        }
        out
    }

    #[test]
    fn trailers_follow_the_encoders_last_bytes() {
        let mut e = Encoder::new(Encoding::Gzip);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut queue = vec![
            Frame::trailers(trailers.clone()),
            Frame::data(Bytes::from_static(b"hello")),
        ];
        let mut inner = |_: &mut Context<'_>| Poll::Ready(queue.pop().map(Ok));
        let Poll::Ready(Some(Ok(last))) = e.poll(&mut cx, &mut inner) else {
            panic!("no data");
        };
        assert_eq!(decode(Encoding::Gzip, last.data_ref().unwrap()), b"hello");
        assert!(!e.is_end_stream());
        let Poll::Ready(Some(Ok(t))) = e.poll(&mut cx, &mut inner) else {
            panic!("no trailers");
        };
        assert_eq!(t.trailers_ref(), Some(&trailers));
        assert!(e.is_end_stream());
        assert!(matches!(e.poll(&mut cx, &mut inner), Poll::Ready(None)));
    }

    #[test]
    fn a_large_body_round_trips() {
        let body: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("{{\"id\":{i},\"n\":\"x{}\"}}", i % 97).into_bytes())
            .collect();
        let chunks: Vec<&[u8]> = body.chunks(16 * 1024).collect();
        for enc in Encoding::PREFERENCE {
            let out: Vec<u8> = encode(enc, &chunks).concat();
            assert!(out.len() < body.len() / 4, "{enc:?}: {}", out.len());
            assert_eq!(decode(enc, &out), body, "{enc:?}");
        }
    }
}
