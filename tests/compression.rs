//! Response compression (`compress = true`): real upstreams, the real
//! proxy, and real `curl --compressed` decoding what the proxy sends (or
//! the Rust decoders where a test looks at the stream itself).

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::sync::Notify;

/// `len` bytes of text that compresses well but not trivially.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("{{\"id\":{i},\"name\":\"item-{}\"}},\n", i * 7 % 1009).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

const FIRST: &[u8] = b"data: first event\n\n";
const REST: &[u8] = b"data: second event\n\n";

/// An upstream whose answers each test a rule. `/pause` sends its first
/// event, then waits for `resume` before the rest.
struct Up {
    addr: SocketAddr,
    resume: Arc<Notify>,
}

async fn upstream(h2: bool) -> Up {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resume = Arc::new(Notify::new());
    let r = resume.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(req, r.clone()));
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
            });
        }
    });
    Up { addr, resume }
}

type Chunk = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

async fn answer(req: Request<Incoming>, resume: Arc<Notify>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let fixed = |ct: &str, body: Vec<u8>| {
        let mut r = Response::new(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed(),
        );
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        r
    };
    let mut r = match path.as_str() {
        "/big" => {
            let mut r = fixed("application/json", text(1 << 20));
            r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            r.headers_mut().insert("vary", "Origin".parse().unwrap());
            r
        }
        "/small" => fixed("text/plain", text(1000)),
        "/png" => fixed("image/png", text(50_000)),
        "/encoded" => {
            let mut r = fixed("text/plain", text(50_000));
            // Not really gzip: the proxy must pass it on untouched all the same.
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        "/no-transform" => {
            let mut r = fixed("text/html", text(50_000));
            r.headers_mut()
                .insert("cache-control", "public, no-transform".parse().unwrap());
            r
        }
        "/range" => {
            let mut r = fixed("text/plain", text(50_000));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut()
                .insert("content-range", "bytes 0-49999/100000".parse().unwrap());
            r
        }
        "/chunked" => {
            // 200 pieces of unknown total length.
            let body = text(200 * 4096);
            let chunks: Vec<Chunk> = body
                .chunks(4096)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let stream = futures_util::stream::iter(chunks);
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            r
        }
        "/pause" => {
            let stream = futures_util::stream::unfold(0, move |step| {
                let resume = resume.clone();
                async move {
                    let data = match step {
                        0 => FIRST,
                        1 => {
                            resume.notified().await;
                            REST
                        }
                        _ => return None,
                    };
                    let chunk: Chunk = Ok(Frame::data(Bytes::from_static(data)));
                    Some((chunk, step + 1))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        _ => fixed("text/plain", b"not found".to_vec()),
    };
    if path != "/pause" && path != "/chunked" {
        let len = r.body().size_hint().exact().unwrap();
        r.headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
    }
    Ok(r)
}

/// Two apps on one upstream: `on.test` compresses, `off.test` does not.
fn proxy(up: SocketAddr, protocol: &str) -> Proxy {
    Proxy::start(&format!(
        r#"
[apps.on]
hosts = ["on.test"]
compress = true
[apps.on.blue]
servers = ["{up}"]
protocol = "{protocol}"
[apps.on.green]
servers = ["{up}"]
protocol = "{protocol}"

[apps.off]
hosts = ["off.test"]
[apps.off.blue]
servers = ["{up}"]
[apps.off.green]
servers = ["{up}"]
"#
    ))
}

/// What curl got: the head's fields (lowercase names) and the body as
/// curl decoded it.
struct Got {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn curl(url: &str, args: &[&str]) -> Got {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&head)
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Got {
        status,
        fields,
        body: out.stdout,
    }
}

/// The codings this machine's curl decodes: `gzip` needs libz, `br` and
/// `zstd` their own features.
fn curl_decodes(coding: &str) -> bool {
    let v = std::process::Command::new("curl").arg("-V").output();
    let Ok(v) = v else {
        return false;
    };
    let features = String::from_utf8_lossy(&v.stdout).to_ascii_lowercase();
    let feature = match coding {
        "gzip" => "libz",
        "br" => "brotli",
        other => other,
    };
    features
        .lines()
        .find(|l| l.starts_with("features:"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == feature))
}

/// These tests are about what curl receives: a curl that cannot decode a
/// coding fails them rather than skipping (Debian's decodes all three;
/// `.ci/run` installs it).
fn need_curl_decoding(coding: &str) {
    assert!(
        curl_decodes(coding),
        "this machine's curl cannot decode {coding}: install Debian's curl"
    );
}

/// GET `path` with `host`, asking for `coding` and letting curl decode it.
async fn fetch(p: &Proxy, host: &str, path: &str, coding: &str) -> Got {
    let host = format!("Host: {host}");
    let ae = format!("Accept-Encoding: {coding}");
    curl(&p.url(path), &["--compressed", "-H", &host, "-H", &ae]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_compressed_with_each_coding_and_decodes_to_the_same_bytes() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let want = text(1 << 20);
    for coding in ["gzip", "br", "zstd"] {
        need_curl_decoding(coding);
        let got = fetch(&p, "on.test", "/big", coding).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.field("content-encoding"), Some(coding));
        assert_eq!(got.field("content-length"), None);
        assert_eq!(
            got.field("etag"),
            Some("W/\"v1\""),
            "a strong ETag turns weak"
        );
        assert_eq!(got.all("vary"), ["Origin", "accept-encoding"]);
        assert!(
            got.body == want,
            "{coding}: {} bytes decoded",
            got.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_of_unknown_length_is_compressed_whole() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let want = text(200 * 4096);
    for coding in ["gzip", "br", "zstd"] {
        need_curl_decoding(coding);
        let got = fetch(&p, "on.test", "/chunked", coding).await;
        assert_eq!(got.field("content-encoding"), Some(coding));
        assert!(
            got.body == want,
            "{coding}: {} bytes decoded",
            got.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstreams_answer_is_compressed_too() {
    let up = upstream(true).await;
    let p = proxy(up.addr, "h2");
    need_curl_decoding("gzip");
    let got = fetch(&p, "on.test", "/big", "gzip").await;
    assert_eq!(got.field("content-encoding"), Some("gzip"));
    assert!(got.body == text(1 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_a_compressed_stream_too() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    need_curl_decoding("zstd");
    let got = curl(
        &p.url("/chunked"),
        &[
            "--http2-prior-knowledge",
            "--compressed",
            "-H",
            "Host: on.test",
            "-H",
            "Accept-Encoding: zstd",
        ],
    )
    .await;
    assert_eq!(got.field("content-encoding"), Some("zstd"));
    assert!(got.body == text(200 * 4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_the_q_values_best_coding() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let c = client();
    let url = p.url("/big");
    let coding = |ae: &'static str| {
        let (c, url) = (&c, &url);
        async move {
            let r = get(c, url, &[("host", "on.test"), ("accept-encoding", ae)]).await;
            r.headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(
        coding("gzip, deflate, br, zstd").await.as_deref(),
        Some("zstd")
    );
    assert_eq!(coding("gzip, br").await.as_deref(), Some("br"));
    assert_eq!(coding("br;q=0.5, gzip").await.as_deref(), Some("gzip"));
    assert_eq!(coding("*;q=0, gzip;q=0").await, None);
    assert_eq!(coding("identity").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_compressed_is_passed_on_as_it_came() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let c = client();
    let ae = ("accept-encoding", "gzip, br, zstd");
    // (path, host, why, whether Vary is still due)
    let cases = [
        ("/encoded", "on.test", "already encoded", false),
        ("/range", "on.test", "a 206", true),
        (
            "/no-transform",
            "on.test",
            "Cache-Control: no-transform",
            false,
        ),
        ("/small", "on.test", "below compress_min_length", false),
        ("/png", "on.test", "image/png", false),
        ("/big", "off.test", "app without compress = true", false),
    ];
    for (path, host, why, vary) in cases {
        let r = get(&c, &p.url(path), &[("host", host), ae]).await;
        let upstream = get(&c, &format!("http://{}{path}", up.addr), &[ae]).await;
        assert_eq!(
            r.headers.get("content-encoding"),
            upstream.headers.get("content-encoding"),
            "{why}"
        );
        assert_eq!(
            r.headers.get("content-length"),
            upstream.headers.get("content-length"),
            "{why}"
        );
        assert!(r.body == upstream.body, "{why}: the body changed");
        let count = |h: &http::HeaderMap| h.get_all("vary").iter().count();
        assert_eq!(
            count(&r.headers),
            count(&upstream.headers) + vary as usize,
            "{why}: vary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_is_not_compressed_but_says_it_varies() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let r = send(
        &client(),
        "HEAD",
        &p.url("/big"),
        &[("host", "on.test"), ("accept-encoding", "gzip")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("content-encoding"));
    assert_eq!(r.headers["content-length"], (1 << 20).to_string().as_str());
    assert_eq!(r.headers.get_all("vary").iter().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_no_coding_gets_the_body_as_it_is_with_vary() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let r = get(&client(), &p.url("/big"), &[("host", "on.test")]).await;
    assert!(!r.headers.contains_key("content-encoding"));
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert!(r.body == text(1 << 20));
    let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["Origin", "accept-encoding"]);
}

/// A decoder fed the stream as it comes; what it has decoded so far.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn new(coding: &str) -> Decoder {
        match coding {
            "gzip" => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            "br" => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            _ => Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Decoder::Brotli(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Decoder::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_upstreams_first_event_arrives_before_it_sends_the_next() {
    let up = upstream(false).await;
    let p = proxy(up.addr, "http1");
    let c = client();
    for coding in ["gzip", "br", "zstd"] {
        let req = Request::get(p.url("/pause"))
            .header("host", "on.test")
            .header("accept-encoding", coding)
            .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
            .unwrap();
        let resp = tokio::time::timeout(TEST_TIMEOUT, c.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], coding);
        let mut body = resp.into_body();
        let mut dec = Decoder::new(coding);
        // The upstream holds its second event until told: the first must
        // come through decodable on its own, flushed at the pause.
        let mut seen = Vec::new();
        while seen.len() < FIRST.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("{coding}: the first event was held back"))
                .unwrap()
                .unwrap();
            if let Some(d) = frame.data_ref() {
                seen = dec.feed(d);
            }
        }
        assert_eq!(seen, FIRST, "{coding}");
        up.resume.notify_one();
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.unwrap().data_ref() {
                seen = dec.feed(d);
            }
        }
        assert_eq!(seen, [FIRST, REST].concat(), "{coding}");
    }
}

fn app_config(extra: &str) -> String {
    format!(
        r#"
[apps.on]
{extra}
[apps.on.blue]
servers = ["127.0.0.1:1"]
[apps.on.green]
servers = ["127.0.0.1:1"]
"#
    )
}

#[test]
fn compression_is_off_unless_asked_and_defaults_to_text_types_from_1024_bytes() {
    let off = cutover::Config::from_toml(&app_config("")).unwrap();
    assert!(off.apps[0].compress.is_none());
    let on = cutover::Config::from_toml(&app_config("compress = true")).unwrap();
    let c = on.apps[0].compress.as_ref().unwrap();
    assert_eq!(c.min_length, 1024);
    assert!(c.types.iter().any(|t| t == "text/*"));
    assert!(c.types.iter().any(|t| t == "application/json"));
    let custom = cutover::Config::from_toml(&app_config(
        "compress = true\ncompress_types = [\"Text/HTML\", \"*/*\"]\ncompress_min_length = 0",
    ))
    .unwrap();
    let c = custom.apps[0].compress.as_ref().unwrap();
    assert_eq!(c.types, ["text/html", "*/*"]);
    assert_eq!(c.min_length, 0);
}

#[test]
fn bad_compression_settings_are_errors_naming_their_key() {
    let errors = cutover::Config::from_toml(&app_config(
        "compress = true\ncompress_types = [\"text\", \"text/html; charset=utf-8\", \"*/html\"]\ncompress_min_length = -1",
    ))
    .unwrap_err();
    let all = errors.join("\n");
    for key in [
        "apps.on.compress_types[0]",
        "apps.on.compress_types[1]",
        "apps.on.compress_types[2]",
        "apps.on.compress_min_length",
    ] {
        assert!(all.contains(key), "{key} not in:\n{all}");
    }
    let empty = cutover::Config::from_toml(&app_config("compress = true\ncompress_types = []"));
    assert!(empty
        .unwrap_err()
        .join("\n")
        .contains("apps.on.compress_types"));
}
