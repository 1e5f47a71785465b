//! TLS termination, HTTP/2 both ways, and trailers.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

fn tls_config(dir: &std::path::Path, blue: &Upstream, green: &Upstream) -> std::path::PathBuf {
    let path = dir.join("cutover.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen_tls = ["127.0.0.1:0"]

[[tls.certs]]
cert = "shop.pem"
key = "shop.key"
[[tls.certs]]
cert = "api.pem"
key = "api.key"

[apps.shop]
hosts = ["shop.test"]
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{g}"]

[apps.api]
hosts = ["api.test", "*.api.test"]
[apps.api.blue]
servers = ["{g}"]
[apps.api.green]
servers = ["{g}"]
"#,
            b = blue.addr,
            g = green.addr
        ),
    )
    .unwrap();
    path
}

async fn h1_get(
    io: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
) -> (hyper::client::conn::http1::SendRequest<Full<Bytes>>, String) {
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = h1_send(&mut tx, host).await;
    (tx, body)
}

async fn h1_send(
    tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
) -> String {
    let req = Request::get("/")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hostnames_on_one_tls_port_each_get_their_certificate_and_alpn_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let shop_der = ca.issue(dir.path(), "shop", &["shop.test"]);
    let api_der = ca.issue(dir.path(), "api", &["api.test", "*.api.test"]);
    let (b, g) = blue_green().await;
    let proxy = Proxy::start_file(&tls_config(dir.path(), &b, &g));
    let addr = proxy.tls_addr.unwrap();

    let h1 = ca.connector(&[b"http/1.1"]);
    let (io, cert, alpn) = tls_connect(&h1, addr, "shop.test").await;
    assert_eq!(cert, shop_der);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (_, body) = h1_get(io, "shop.test").await;
    assert_eq!(body, "blue");

    let (io, cert, _) = tls_connect(&h1, addr, "v2.api.test").await;
    assert_eq!(cert, api_der, "the wildcard certificate covers a subdomain");
    assert_eq!(h1_get(io, "v2.api.test").await.1, "green");

    let h2 = ca.connector(&[b"h2", b"http/1.1"]);
    let (io, cert, alpn) = tls_connect(&h2, addr, "api.test").await;
    assert_eq!(cert, api_der);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://api.test/echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen["x-forwarded-proto"][0], "https");
    assert_eq!(seen["_upstream"][0], "green");
}

/// A client speaking h2c with prior knowledge.
fn h2c_client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_prior_knowledge_request_is_routed_by_rules_like_http1() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&format!(
        r#"
[apps.shop]
[apps.shop.blue]
servers = ["{}"]
[apps.shop.green]
servers = ["{}"]
[[apps.shop.rules]]
name = "testers"
header = {{ name = "x-preview", value = "1" }}
to = "green"
[[apps.shop.rules]]
name = "mobile"
user_agent = "iPhone"
to = "green"
"#,
        b.addr, g.addr
    ));
    let h2 = h2c_client();
    assert_eq!(get(&h2, &proxy.url("/"), &[]).await.text(), "blue");
    assert_eq!(
        get(&h2, &proxy.url("/"), &[("x-preview", "1")])
            .await
            .text(),
        "green"
    );
    assert_eq!(
        get(&h2, &proxy.url("/"), &[("user-agent", "Mozilla (iPhone)")])
            .await
            .text(),
        "green"
    );
}

/// An h2c-only upstream answering every request with `answer`.
async fn h2c_upstream<F, Fut, B>(answer: F) -> std::net::SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = answer(req);
                    async move { Ok::<_, Infallible>(resp.await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gRPC-like h2c upstream: answers with a data frame and trailers
/// echoing what the request's trailers said.
async fn grpc_upstream() -> std::net::SocketAddr {
    h2c_upstream(|req: Request<Incoming>| async move {
        let te = req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let collected = req.into_body().collect().await.unwrap();
        let got = collected
            .trailers()
            .and_then(|t| t.get("x-request-checksum"))
            .map(|v| v.to_str().unwrap().to_string());
        let data = collected.to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert(
            "x-echo-checksum",
            got.unwrap_or_else(|| "missing".into()).parse().unwrap(),
        );
        trailers.insert(
            "x-echo-te",
            if te.is_empty() {
                "none".parse().unwrap()
            } else {
                te.parse().unwrap()
            },
        );
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                "echo:{}",
                String::from_utf8_lossy(&data)
            )))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        resp
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_style_exchange_through_an_h2_pool_keeps_trailers_both_ways() {
    let up = grpc_upstream().await;
    let proxy = Proxy::start(&format!(
        r#"
[apps.rpc]
[apps.rpc.blue]
servers = ["{up}"]
protocol = "h2"
health = {{ path = "/grpc.health.v1.Health/Check", interval = "50ms", timeout = "1s", rise = 1, fall = 1 }}
[apps.rpc.green]
servers = ["{up}"]
protocol = "h2"
"#
    ));
    // The health check speaks h2c to an h2c-only server: after several
    // intervals (fall = 1) the server is still up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = status(&client(), &proxy).await;
    assert_eq!(
        s["apps"]["rpc"]["pools"]["blue"]["servers"][0]["healthy"], true,
        "{s}"
    );
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-request-checksum", format!("sum-{i}").parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("call-{i}")))),
            Ok(Frame::trailers(trailers)),
        ];
        let req = Request::post(format!("http://{}/pkg.Service/Method", proxy.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("response trailers arrived");
        assert_eq!(collected.to_bytes(), format!("echo:call-{i}"));
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(
            trailers["x-echo-checksum"],
            format!("sum-{i}").as_str(),
            "request trailers arrived"
        );
        assert_eq!(trailers["x-echo-te"], "trailers", "TE: trailers was kept");
    }
}

/// An h2c upstream answering with the request's `:authority` and how many
/// `Host` fields came beside it.
async fn authority_upstream() -> std::net::SocketAddr {
    h2c_upstream(|req: Request<Incoming>| async move {
        let text = format!(
            "authority={} host-fields={}",
            req.uri().authority().map(|a| a.as_str()).unwrap_or("none"),
            req.headers().get_all("host").iter().count()
        );
        Response::new(Full::new(Bytes::from(text)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pool_gets_the_host_as_the_authority_and_no_host_field() {
    // RFC 9113 §8.3.1: the authority stands for Host; nginx answers 400 to
    // a request that carries both ("duplicate host header").
    let up = authority_upstream().await;
    let proxy = Proxy::start(&format!(
        "[apps.shop]\n\
         [apps.shop.blue]\nservers = [\"{up}\"]\nprotocol = \"h2\"\n\
         [apps.shop.green]\nservers = [\"{up}\"]\nprotocol = \"h2\"\n"
    ));
    let want = "authority=shop.test:8443 host-fields=0";
    let host = [("host", "shop.test:8443")];
    let h1 = get(&client(), &proxy.url("/a?b=c"), &host).await;
    assert_eq!((h1.status.as_u16(), h1.text().as_str()), (200, want));
    let posted = send(
        &client(),
        "POST",
        &proxy.url("/upload"),
        &host,
        "x".repeat(3000),
    )
    .await;
    assert_eq!(
        (posted.status.as_u16(), posted.text().as_str()),
        (200, want)
    );
    // An HTTP/2 client names its host in `:authority` alone ...
    let h2 = get(&h2c_client(), &proxy.url("/a"), &[]).await;
    let want = format!("authority={} host-fields=0", proxy.addr);
    assert_eq!((h2.status.as_u16(), h2.text()), (200, want));
    // ... and a `Host` beside it that names another is refused (RFC 9113 §8.3.1).
    let h2 = get(&h2c_client(), &proxy.url("/a"), &host).await;
    assert_eq!(h2.status.as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_h2c_connection_at_once() {
    // An idle HTTP/2 connection is never parked: shutdown's own wake-up
    // makes it send GOAWAY and close, at once. (Without that wake-up the
    // socket's next timer, 1 s after the request, is what would notice.)
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&format!(
        "[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
        b.addr, g.addr
    ));
    let h2 = h2c_client();
    assert_eq!(get(&h2, &proxy.url("/"), &[]).await.text(), "blue");
    tokio::time::timeout(Duration::from_millis(800), proxy.join())
        .await
        .expect("the proxy stopped within 800 ms");
}

/// One raw HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, as
/// fast as the socket takes them. None reaches the upstream, and the
/// connection is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_reaches_no_upstream_and_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&format!(
        "[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
        b.addr, g.addr
    ));
    // Idle upstream connections in the pool, so that a request could be
    // written upstream in its first poll, before its reset is looked at.
    let h2 = h2c_client();
    let warm: Vec<_> = (0..16)
        .map(|_| {
            let (h2, url) = (h2.clone(), proxy.url("/warm"));
            tokio::spawn(async move { get(&h2, &url, &[]).await })
        })
        .collect();
    for w in warm {
        assert_eq!(w.await.unwrap().status, 200);
    }
    let warmed = b.requests.load(SeqCst);
    // GET http://shop.test/reset: indexed :method and :scheme, literal
    // :path and :authority (HPACK, RFC 7541 appendix C).
    let mut block = vec![0x82, 0x86, 0x04, 6];
    block.extend_from_slice(b"/reset");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"shop.test");
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let cut_off = tokio::time::timeout(Duration::from_secs(10), async {
        for batch in 0..200u32 {
            let mut out = Vec::new();
            for k in 0..50 {
                let id = 2 * (batch * 50 + k) + 1;
                out.extend(h2_frame(1, 0x5, id, &block)); // END_STREAM | END_HEADERS
                out.extend(h2_frame(3, 0, id, &8u32.to_be_bytes())); // CANCEL
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
        // Everything was taken: the connection must still end.
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(cut_off.is_ok(), "the connection was not cut off");
    // A request made now is answered: anything of the flood that got
    // through would have reached the upstream before it.
    assert_eq!(get(&h2, &proxy.url("/after"), &[]).await.text(), "blue");
    assert_eq!(
        b.requests.load(SeqCst) - warmed,
        1,
        "a reset stream reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_http2_cookies_reach_an_http1_upstream_joined() {
    // Browsers send one `cookie` field per pair on HTTP/2 (RFC 9113
    // §8.2.3); an HTTP/1.1 upstream must get them as one field.
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&format!(
        "[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
        b.addr, g.addr
    ));
    let r = get(
        &h2c_client(),
        &proxy.url("/echo"),
        &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cookie"], serde_json::json!(["a=1; b=2; c=3"]));
}

/// An HPACK literal field with incremental indexing and a new name, not
/// Huffman-coded (RFC 7541 §6.2.1): it enters the connection's dynamic
/// table at index 62, pushing the older entries one up.
fn hpack_indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut f = vec![0x40, name.len() as u8];
    f.extend_from_slice(name);
    f.push(value.len() as u8);
    f.extend_from_slice(value);
    f
}

/// The head of `GET http://shop.test/echo`, leaving the dynamic table as
/// it was: indexed `:method` and `:scheme`, literal `:path` and
/// `:authority` without indexing.
fn hpack_get_echo() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, 5];
    b.extend_from_slice(b"/echo");
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"shop.test");
    b
}

/// What a raw HTTP/2 client saw of one stream.
#[derive(Default, Debug)]
struct RawStream {
    /// First byte of the response's header block: 0x88 is `:status: 200`.
    head: Option<u8>,
    body: Vec<u8>,
    ended: bool,
    /// The RST_STREAM error code, if the stream was reset.
    reset: Option<u32>,
}

/// An HTTP/2 client written frame by frame, so it can send what a real
/// client library refuses to.
struct RawH2 {
    socket: tokio::net::TcpStream,
    buf: Vec<u8>,
    streams: std::collections::HashMap<u32, RawStream>,
}

impl RawH2 {
    async fn connect(addr: std::net::SocketAddr) -> RawH2 {
        let mut raw = RawH2 {
            socket: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            streams: Default::default(),
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(4, 0, 0, &[]));
        raw.send(&[hello]).await;
        raw
    }

    async fn send(&mut self, frames: &[Vec<u8>]) {
        use tokio::io::AsyncWriteExt;
        self.socket.write_all(&frames.concat()).await.unwrap();
    }

    /// Reads frames until each of `ids` has ended or been reset. A GOAWAY
    /// or the end of the connection fails the test.
    async fn until_done(&mut self, ids: &[u32]) {
        while !ids.iter().all(|id| {
            self.streams
                .get(id)
                .is_some_and(|s| s.ended || s.reset.is_some())
        }) {
            let (kind, flags, id, payload) = self.next_frame().await;
            let stream = self.streams.entry(id).or_default();
            match kind {
                0 => stream.body.extend_from_slice(&payload),
                1 => stream.head = payload.first().copied(),
                3 => stream.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap())),
                4 if flags & 1 == 0 => self.send(&[h2_frame(4, 1, 0, &[])]).await,
                7 => panic!("GOAWAY {:?} while waiting on {ids:?}", &payload[4..8]),
                _ => {}
            }
            if matches!(kind, 0 | 1) && flags & 1 == 1 {
                self.streams.entry(id).or_default().ended = true;
            }
        }
    }

    async fn next_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let frame: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let id = u32::from_be_bytes(frame[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    return (frame[3], frame[4], id, frame[9..].to_vec());
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the proxy closed the connection: {:?}", self.streams);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asserts that stream `id` was reset with PROTOCOL_ERROR.
    fn assert_reset(&self, id: u32) {
        assert_eq!(
            self.streams[&id].reset,
            Some(1),
            "stream {id}: {:?}",
            self.streams[&id]
        );
    }

    /// Asserts that stream `id` got a 200 and returns its body as JSON.
    fn ok_json(&self, id: u32) -> serde_json::Value {
        let s = &self.streams[&id];
        assert_eq!((s.head, s.reset), (Some(0x88), None), "stream {id}: {s:?}");
        serde_json::from_slice(&s.body).unwrap()
    }
}

/// On one connection: `bad_field` (HPACK bytes, with incremental
/// indexing) in stream 1, then requests that show the connection and its
/// HPACK table went on as the client expects. `valid_name` is the bad
/// field's name when only its value was wrong.
async fn a_malformed_field_costs_only_its_stream(
    addr: std::net::SocketAddr,
    bad_field: &[u8],
    valid_name: Option<&str>,
) {
    use serde_json::json;
    let mut h2 = RawH2::connect(addr).await;
    let (end_both, end_headers) = (0x5, 0x4);
    // Table after this step: 62 x-after, 63 the bad field, 64 x-before.
    let mut bad = hpack_get_echo();
    bad.extend(hpack_indexed_literal(b"x-before", b"b"));
    bad.extend_from_slice(bad_field);
    let mut good = hpack_get_echo();
    good.extend(hpack_indexed_literal(b"x-after", b"a"));
    h2.send(&[
        h2_frame(1, end_both, 1, &bad),
        h2_frame(1, end_both, 3, &good),
    ])
    .await;
    h2.until_done(&[1, 3]).await;
    h2.assert_reset(1);
    assert_eq!(h2.ok_json(3)["x-after"], json!(["a"]));

    // By index: x-after and x-before decode; the bad field does not.
    let mut by_index = hpack_get_echo();
    by_index.extend([0x80 | 62, 0x80 | 64]);
    let mut names_bad = hpack_get_echo();
    names_bad.push(0x80 | 63);
    h2.send(&[
        h2_frame(1, end_both, 5, &by_index),
        h2_frame(1, end_both, 7, &names_bad),
    ])
    .await;
    h2.until_done(&[5, 7]).await;
    let seen = h2.ok_json(5);
    assert_eq!(
        (&seen["x-after"], &seen["x-before"]),
        (&json!(["a"]), &json!(["b"]))
    );
    h2.assert_reset(7);

    // The bad field in HEADERS, the block's end in CONTINUATION, which
    // adds x-late: 62 x-late, 63 x-after, 64 the bad field, 65 x-before.
    let mut split = hpack_get_echo();
    split.push(0x80 | 63);
    let late = hpack_indexed_literal(b"x-late", b"l");
    let mut after = hpack_get_echo();
    after.extend([0x80 | 62, 0x80 | 65]);
    h2.send(&[
        h2_frame(1, 0x1, 9, &split),
        h2_frame(9, end_headers, 9, &late),
        h2_frame(1, end_both, 11, &after),
    ])
    .await;
    h2.until_done(&[9, 11]).await;
    h2.assert_reset(9);
    let seen = h2.ok_json(11);
    assert_eq!(
        (&seen["x-late"], &seen["x-before"]),
        (&json!(["l"]), &json!(["b"]))
    );

    // The bad field's name (index 64) with a good value, not indexed: a
    // valid field if the name was, else malformed again.
    let mut reuse = hpack_get_echo();
    reuse.extend([0x0f, 64 - 15, 2, b'o', b'k']);
    h2.send(&[h2_frame(1, end_both, 13, &reuse)]).await;
    h2.until_done(&[13]).await;
    match valid_name {
        Some(name) => assert_eq!(h2.ok_json(13)[name], json!(["ok"])),
        None => h2.assert_reset(13),
    }
}

/// A request with a field HTTP/2 does not allow is malformed (RFC 9113
/// §8.1.1, §8.2.1): that stream is reset with PROTOCOL_ERROR and the
/// connection's other streams go on. Each bad field is sent with
/// incremental indexing, so it still takes its place in the connection's
/// HPACK table: later requests that name entries older and newer than it
/// decode to what the client meant, and one that names it is malformed
/// too. The same holds when the block ends in a CONTINUATION frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_http2_field_resets_its_stream_and_the_connection_goes_on() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&format!(
        "[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
        b.addr, g.addr
    ));
    let field = hpack_indexed_literal;
    let cases = [
        ("an uppercase name", field(b"X-Upper", b"x"), None),
        ("a space in a name", field(b"x bad", b"x"), None),
        ("an unknown pseudo-header", field(b":foo", b"x"), None),
        ("CR in a value", field(b"x-bad", b"a\rb"), Some("x-bad")),
        ("LF in a value", field(b"x-bad", b"a\nb"), Some("x-bad")),
        ("NUL in a value", field(b"x-bad", b"a\0b"), Some("x-bad")),
        // The name by its static-table index (58, user-agent).
        (
            "CR in the value of a known name",
            vec![0x40 | 58, 3, b'a', b'\r', b'b'],
            Some("user-agent"),
        ),
    ];
    for (case, bad_field, valid_name) in cases {
        eprintln!("case: {case}");
        let on_one_connection =
            a_malformed_field_costs_only_its_stream(proxy.addr, &bad_field, valid_name);
        tokio::time::timeout(Duration::from_secs(10), on_one_connection)
            .await
            .unwrap_or_else(|_| panic!("{case}: no answer within 10 s"));
    }
}

/// An h2c upstream whose first connection refuses everything with a
/// GOAWAY whose last stream id is 0 — none of the streams was processed —
/// once `streams` requests have arrived on it (or after 300 ms); later
/// connections are served by hyper, answering `ok`. Counts the first
/// connection's streams.
async fn goaway_upstream(streams: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut s, _)) = listener.accept().await {
            if !std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
                continue;
            }
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if s.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Our SETTINGS (empty), then read frames, acking theirs.
                let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
                let mut headers = 0;
                while headers < streams {
                    let mut head = [0u8; 9];
                    match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
                        Ok(Ok(_)) => {}
                        _ => break,
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    if s.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    match (head[3], head[4]) {
                        (4, flags) if flags & 1 == 0 => {
                            let _ = s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                        }
                        (1, _) => headers += 1,
                        _ => {}
                    }
                }
                counter.store(headers, SeqCst);
                // GOAWAY: last stream id 0, NO_ERROR.
                let _ = s
                    .write_all(&[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                    .await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_an_h2_upstream_never_processed_are_sent_again() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (up, refused) = goaway_upstream(4).await;
        let proxy = Proxy::start(&format!(
            "[apps.shop]\n[apps.shop.blue]\nservers = [\"{up}\"]\nprotocol = \"h2\"\n\
             [apps.shop.green]\nservers = [\"{up}\"]\nprotocol = \"h2\"\n"
        ));
        // A first request opens the connection the upstream will refuse.
        let c = h2c_client();
        let mut calls = Vec::new();
        for i in 0..4 {
            let (c, url) = (c.clone(), proxy.url(&format!("/r{i}")));
            calls.push(tokio::spawn(async move { get(&c, &url, &[]).await }));
        }
        for call in calls {
            let r = call.await.unwrap();
            assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
        }
        assert!(refused.load(SeqCst) >= 1, "the GOAWAY refused no stream");
    })
    .await
    .unwrap();
}

/// An HTTP/2 client that grants no flow-control window (`nghttp -w 0`)
/// never asks for the rest of its responses: each stalled stream is taken
/// away after `client_send_timeout`, its upstream connection released and
/// the request counted as a `client_send` timeout, instead of 50 upstream
/// connections held for as long as the client likes. (Heads may take a
/// while on a loaded machine: the test judges by the time since the first
/// request, not by a count at one moment.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_a_client_never_reads_are_taken_away_with_their_upstreams() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&format!(
            "[server]\nworkers = 1\n[limits]\nclient_send_timeout = \"3s\"\nupstream_read_timeout = \"60s\"\n[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
            b.addr, g.addr
        ));
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut h2, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut pending = Vec::new();
        let began = tokio::time::Instant::now();
        for _ in 0..50 {
            let req = Request::get(format!("http://shop/download/{}", 10 << 20))
                .body(())
                .unwrap();
            h2 = h2.ready().await.unwrap();
            let (resp, _) = h2.send_request(req, true).unwrap();
            pending.push(resp);
        }
        // Every head arrives (HEADERS are not flow-controlled); no body.
        let mut bodies = Vec::new();
        for resp in pending {
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            bodies.push(resp.into_body());
        }
        let open = |u: &Upstream| u.open.load(SeqCst);
        // Held: none released before the timeout (the first streams' time
        // runs from their first frame, before the last head came).
        assert!(
            began.elapsed() >= Duration::from_millis(2500) || open(&b) >= 45,
            "each stream holds an upstream connection: {} open after {:?}",
            open(&b),
            began.elapsed()
        );
        while open(&b) > 0 {
            assert!(
                began.elapsed() < Duration::from_secs(15),
                "{} upstream connections still held",
                open(&b)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = began.elapsed();
        assert!(took >= Duration::from_millis(2500), "released after {took:?}");
        let metrics = admin_call(&client(), &proxy, "GET", "/metrics", "", &[])
            .await
            .text();
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("cutover_timeouts_total{")
                    && l.contains("phase=\"client_send\"")
                    && l.contains("app=\"shop\"")
            })
            .unwrap_or_default();
        assert!(line.ends_with(" 50"), "{line}");
        drop(bodies);
    })
    .await
    .unwrap();
}
