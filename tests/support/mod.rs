//! Test support: real upstream servers on 127.0.0.1:0, the real proxy
//! in-process, and a real HTTP client. Nothing is mocked.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};

pub type Body =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Every test is bounded in time.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A real upstream HTTP/1.1 server. It answers every path with its name,
/// except:
/// - `/delay/MS`: waits MS milliseconds first;
/// - `/echo`: the request headers as JSON (`{"name": ["v1", …]}`), plus
///   `"_method"`, `"_uri"` and `"_version"`;
/// - `/digest`: reads the whole body, answers `LEN SHA256HEX`;
/// - `/download/N`: streams N deterministic bytes in 64 KiB chunks;
/// - `/status/N`: answers status N;
/// - `/hop`: answers with hop-by-hop headers that must not reach clients;
/// - `/sts`: answers with its own `Strict-Transport-Security: max-age=60`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    /// TCP connections currently open to this upstream.
    pub open: Arc<AtomicUsize>,
    /// TCP connections accepted in all.
    pub accepted: Arc<AtomicUsize>,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
    /// What `/healthz` answers: 200 while true, 503 while false.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (o, r, h) = (open.clone(), requests.clone(), healthy.clone());
        let a = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let (o, r, h) = (o.clone(), r.clone(), h.clone());
                o.fetch_add(1, SeqCst);
                a.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let health = req.uri().path() == "/healthz";
                        if !health {
                            r.fetch_add(1, SeqCst);
                        }
                        let up = h.load(SeqCst);
                        async move {
                            if health {
                                let mut resp = Response::new(full(if up { "ok" } else { "down" }));
                                if !up {
                                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                }
                                return Ok(resp);
                            }
                            answer(name, req).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                    o.fetch_sub(1, SeqCst);
                });
            }
        });
        Upstream {
            addr,
            name,
            open,
            accepted,
            requests,
            healthy,
            stop: Some(stop),
        }
    }

    /// Stop accepting (open connections stay).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blue and a green upstream, answering `blue` and `green`.
pub async fn blue_green() -> (Upstream, Upstream) {
    (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    )
}

/// The deterministic byte at offset `i` of `/download/N`.
pub fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn answer(name: &'static str, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    let resp = match first {
        "delay" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            Response::new(full(name))
        }
        "echo" => {
            let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in req.headers() {
                map.entry(k.to_string())
                    .or_default()
                    .push(v.to_str().unwrap_or("").to_string());
            }
            map.insert("_method".into(), vec![req.method().to_string()]);
            map.insert("_uri".into(), vec![req.uri().to_string()]);
            map.insert("_version".into(), vec![format!("{:?}", req.version())]);
            map.insert("_upstream".into(), vec![name.to_string()]);
            Response::new(full(serde_json::to_vec(&map).unwrap()))
        }
        "digest" => {
            let mut hasher = Sha256::new();
            let mut len = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            len += d.len();
                            hasher.update(d);
                        }
                    }
                    Err(_) => break,
                }
            }
            Response::new(full(format!("{len} {}", hex(&hasher.finalize()))))
        }
        "download" => {
            let total: usize = arg.parse().unwrap_or(0);
            let chunks = (0..total).step_by(65536).map(move |start| {
                let end = (start + 65536).min(total);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                    (start..end).map(pattern_byte).collect::<Vec<u8>>(),
                )))
            });
            let stream = StreamBody::new(futures_stream(chunks));
            let mut r = Response::new(BodyExt::boxed(stream));
            r.headers_mut()
                .insert("content-length", total.to_string().parse().unwrap());
            r
        }
        "status" => {
            let mut r = Response::new(full(name));
            *r.status_mut() = StatusCode::from_u16(arg.parse().unwrap_or(500)).unwrap();
            r
        }
        "hop" => {
            let mut r = Response::new(full(name));
            let h = r.headers_mut();
            h.insert("connection", "x-secret".parse().unwrap());
            h.insert("x-secret", "s".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-connection", "keep-alive".parse().unwrap());
            h.insert("upgrade", "h2c".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            r
        }
        "sts" => {
            let mut r = Response::new(full(name));
            r.headers_mut()
                .insert("strict-transport-security", "max-age=60".parse().unwrap());
            r
        }
        _ => Response::new(full(name)),
    };
    Ok(resp)
}

/// An iterator as a `Stream` (no extra crate needed).
fn futures_stream<I: Iterator + Unpin>(it: I) -> IterStream<I> {
    IterStream(it)
}

pub struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// The proxy, in-process, on 127.0.0.1:0, with its admin API on another
/// loopback port.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when the config has `listen_tls`.
    pub tls_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Start the proxy with `toml` (its `[server] listen` is ignored: the
    /// proxy listens on a fresh loopback port).
    pub fn start(toml: &str) -> Proxy {
        let config =
            cutover::Config::from_toml(toml).unwrap_or_else(|e| panic!("test config: {e:?}"));
        Proxy::start_config(config)
    }

    /// Start from a config file on disk (so reload can re-read it).
    pub fn start_file(path: &std::path::Path) -> Proxy {
        let config = cutover::Config::load(path).unwrap_or_else(|e| panic!("test config: {e:?}"));
        Proxy::start_config(config)
    }

    pub fn start_config(config: cutover::Config) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let tls_listener = (!config.server.listen_tls.is_empty())
            .then(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let tls_addr = tls_listener.as_ref().map(|l| l.local_addr().unwrap());
        let listeners = cutover::Listeners {
            plain: vec![listener],
            tls: tls_listener.into_iter().collect(),
            admin: Some(admin_listener),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            cutover::run(config, listeners, async {
                let _ = stopped.await;
            })
            .expect("proxy run");
        });
        Proxy {
            addr,
            admin,
            tls_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begin a graceful shutdown; `join` waits for it.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn join(mut self) {
        self.shutdown();
        let t = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The whole response: status, headers and body.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `name=value` part of the first `Set-Cookie`, if any.
    pub fn set_cookie(&self) -> Option<String> {
        let v = self.headers.get("set-cookie")?.to_str().ok()?;
        Some(v.split(';').next()?.to_string())
    }
}

/// Send a request with the given headers and body; read the whole reply.
pub async fn send(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(body)).unwrap();
    let resp = tokio::time::timeout(TEST_TIMEOUT, c.request(req))
        .await
        .expect("request timed out")
        .expect("request");
    Reply::read(resp).await
}

pub async fn get(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(c, "GET", url, headers, Bytes::new()).await
}

/// Write raw bytes on a new connection and read until the server closes it
/// (or `limit` passes).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Call the admin API with an optional bearer token and JSON body. A
/// change (POST, PUT, PATCH, DELETE) says `Content-Type: application/json`, as
/// the admin API requires, unless `extra` gives a content type of its own.
pub async fn admin_call(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    proxy: &Proxy,
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let headers = with_json(method, extra);
    let url = proxy.admin_url(path);
    send(c, method, &url, &headers, body.to_string()).await
}

/// `extra`, plus `Content-Type: application/json` for a change (POST,
/// PUT, PATCH, DELETE) that names no content type itself.
pub fn with_json<'a>(method: &str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = extra.to_vec();
    let change = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
    if change
        && !extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("content-type", "application/json"));
    }
    headers
}

/// `GET /v1/status` as JSON.
pub async fn status(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    proxy: &Proxy,
) -> serde_json::Value {
    let r = admin_call(c, proxy, "GET", "/v1/status", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A free loopback port for a daemon started as a separate process, never
/// one this test process handed out before: the kernel may give a port
/// just released to the next bind, and two listeners of one daemon, or
/// two tests running at once, would then share it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// An HTTP/1.1 upstream written by hand that closes a keep-alive
/// connection after `idle` without a request — exactly what exposes the
/// reuse race of hyper#2136. Answers its name to everything.
pub struct KeepAliveUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl KeepAliveUpstream {
    pub async fn start(name: &'static str, idle: Duration) -> KeepAliveUpstream {
        Self::serve(name, idle, usize::MAX).await
    }

    /// Answers the first request of each connection only: it reads the
    /// second one and closes without an answer — the upstream that gave up
    /// on a kept-alive connection just as the proxy reused it.
    pub async fn start_dropping_second(name: &'static str) -> KeepAliveUpstream {
        Self::serve(name, TEST_TIMEOUT, 1).await
    }

    async fn serve(name: &'static str, idle: Duration, answers: usize) -> KeepAliveUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let r = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut answered = 0;
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return, // idle timeout, EOF or error: close
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        r.fetch_add(1, SeqCst);
                        if answered == answers {
                            return;
                        }
                        answered += 1;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        KeepAliveUpstream { addr, requests }
    }
}

/// A WebSocket echo server answering each text message `m` with
/// `"{name}:{m}"`.
pub struct WsUpstream {
    pub addr: SocketAddr,
}

impl WsUpstream {
    pub async fn start(name: &'static str) -> WsUpstream {
        use futures_util::{SinkExt, StreamExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                            let reply = format!("{name}:{}", t.as_str());
                            if ws.send(reply.into()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        WsUpstream { addr }
    }
}

/// A test certificate authority (rcgen), for TLS tests without committed keys.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: rustls::pki_types::CertificateDer<'static>,
    /// The CA certificate in PEM, for a `ca_file`.
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cutover test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Issue a certificate for `names` into `dir/stem.pem` and `dir/stem.key`;
    /// returns the certificate's DER.
    pub fn issue(&self, dir: &std::path::Path, stem: &str, names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    /// [`TestCa::issue`], valid from the first date to the second
    /// (year, month, day).
    pub fn issue_dated(
        &self,
        dir: &std::path::Path,
        stem: &str,
        names: &[&str],
        (from, until): ((i32, u8, u8), (i32, u8, u8)),
    ) {
        let from = rcgen::date_time_ymd(from.0, from.1, from.2);
        let until = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = from;
        params.not_after = until;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    /// A TLS client trusting this CA, offering `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}

/// Connect over TLS with SNI `name`: the stream, the certificate the
/// server showed (DER) and the ALPN protocol agreed.
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
    Option<Vec<u8>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = connector
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    (tls, cert, alpn)
}

/// One HTTP/1.1 `GET path` with `Host: host` over TLS (SNI `host`) on a
/// new connection: the whole reply.
pub async fn tls_get(ca: &TestCa, addr: SocketAddr, host: &str, path: &str) -> Reply {
    let (io, _, _) = tls_connect(&ca.connector(&[b"http/1.1"]), addr, host).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(TEST_TIMEOUT, tx.send_request(req))
        .await
        .expect("request timed out")
        .expect("request");
    Reply::read(resp).await
}

/// A WebSocket through the proxy.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Send `text` and return the echo (panics if the tunnel closed).
pub async fn ws_echo(ws: &mut Ws, text: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
    let reply = ws
        .next()
        .await
        .expect("the tunnel is open")
        .expect("a frame");
    reply.into_text().unwrap().as_str().to_string()
}

/// An HTTP/1.1 upstream written by hand that answers each request head
/// with the next of a list of raw responses — any framing, well-formed or
/// not — to test the proxy's upstream client byte for byte. A response
/// marked `close` is followed by closing the connection. A response given
/// in several pieces is written piece by piece, 2 ms apart, so that the
/// proxy reads it split there (the pause makes the split likely, not
/// certain; a test holds either way).
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted in all.
    pub accepted: Arc<AtomicUsize>,
    /// Request heads read, in order.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    pub async fn start(script: Vec<(Vec<u8>, bool)>) -> ScriptedUpstream {
        let pieces = script
            .into_iter()
            .map(|(r, close)| (vec![r], close))
            .collect();
        Self::start_in_pieces(pieces).await
    }

    pub async fn start_in_pieces(script: Vec<(Vec<Vec<u8>>, bool)>) -> ScriptedUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
            script,
        )));
        let (a, h) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, SeqCst);
                let (h, script) = (h.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head: Vec<u8> = buf.drain(..end).collect();
                        h.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let next = script.lock().unwrap().pop_front();
                        let Some((pieces, close)) = next else { return };
                        for (i, piece) in pieces.iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedUpstream {
            addr,
            accepted,
            heads,
        }
    }
}

/// One request head an upstream received: on which of its connections,
/// the request line, and the header lines, as received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub conn: usize,
    pub line: String,
    pub headers: Vec<(String, String)>,
    /// The body, decoded from its framing.
    pub body: Vec<u8>,
    /// The body arrived whole (else the connection ended inside it).
    pub complete: bool,
    /// A chunked body's trailer fields, as received.
    pub trailers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    /// Every value of the field `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An HTTP/1.1 upstream written by hand that records every request head
/// it receives, exactly as it came, and answers `200 ok` on a kept-alive
/// connection: a second request arriving on one connection, or a path or
/// host the proxy should not have sent, shows in [`RecordingUpstream::seen`].
/// A body is read by `Content-Length` or chunked framing; anything it
/// cannot frame closes the connection.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<SeenRequest>>>,
    /// Bumped after each request is recorded.
    pub notify: Arc<tokio::sync::Notify>,
    /// Requests whose head has arrived and that are not recorded yet.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, notify2, open2) = (seen.clone(), notify.clone(), open.clone());
        tokio::spawn(async move {
            let mut conn_id = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                conn_id += 1;
                let (seen, notify, conn) = (seen2.clone(), notify2.clone(), conn_id);
                let open = open2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    // Read until `want(&buf)` is Some, or the peer closes.
                    macro_rules! fill_until {
                        ($want:expr) => {
                            loop {
                                if let Some(v) = ($want)(&buf) {
                                    break Some(v);
                                }
                                match s.read(&mut chunk).await {
                                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                    _ => break None,
                                }
                            }
                        };
                    }
                    loop {
                        let find_end = |b: &Vec<u8>| b.windows(4).position(|w| w == b"\r\n\r\n");
                        let Some(end) = fill_until!(find_end) else {
                            return;
                        };
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let mut lines = text.split("\r\n");
                        let line = lines.next().unwrap_or("").to_string();
                        let headers: Vec<(String, String)> = lines
                            .filter(|l| !l.is_empty())
                            .map(|l| match l.split_once(':') {
                                Some((n, v)) => (n.to_string(), v.trim().to_string()),
                                None => (l.to_string(), String::new()),
                            })
                            .collect();
                        let field = |name: &str| {
                            headers
                                .iter()
                                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.to_ascii_lowercase())
                        };
                        let mut req = SeenRequest {
                            conn,
                            line,
                            headers: headers.clone(),
                            body: Vec::new(),
                            complete: true,
                            trailers: Vec::new(),
                        };
                        let mut ok = true;
                        if field("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
                            loop {
                                let find_line =
                                    |b: &Vec<u8>| b.windows(2).position(|w| w == b"\r\n");
                                let Some(eol) = fill_until!(find_line) else {
                                    ok = false;
                                    break;
                                };
                                let size_line: Vec<u8> = buf.drain(..eol + 2).collect();
                                let digits = String::from_utf8_lossy(&size_line[..eol]);
                                let digits = digits.split(';').next().unwrap_or("").trim();
                                let Ok(size) = usize::from_str_radix(digits, 16) else {
                                    ok = false;
                                    break;
                                };
                                if size == 0 {
                                    // Trailers, then the empty line.
                                    let Some(e) = fill_until!(|b: &Vec<u8>| b
                                        .windows(2)
                                        .position(|w| w == b"\r\n")
                                        .filter(|p| *p == 0)
                                        .or_else(|| b
                                            .windows(4)
                                            .position(|w| w == b"\r\n\r\n")
                                            .map(|p| p + 2)))
                                    else {
                                        ok = false;
                                        break;
                                    };
                                    let section: Vec<u8> = buf.drain(..e + 2).collect();
                                    req.trailers = String::from_utf8_lossy(&section)
                                        .split("\r\n")
                                        .filter_map(|l| l.split_once(':'))
                                        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
                                        .collect();
                                    break;
                                }
                                let Some(()) =
                                    fill_until!(|b: &Vec<u8>| (b.len() >= size + 2).then_some(()))
                                else {
                                    ok = false;
                                    break;
                                };
                                req.body.extend(buf.drain(..size));
                                buf.drain(..2);
                            }
                        } else if let Some(n) =
                            field("content-length").and_then(|v| v.parse::<usize>().ok())
                        {
                            match fill_until!(|b: &Vec<u8>| (b.len() >= n).then_some(())) {
                                Some(()) => req.body.extend(buf.drain(..n)),
                                None => ok = false,
                            }
                        }
                        req.complete = ok;
                        seen.lock().unwrap().push(req);
                        open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        notify.notify_waiters();
                        if !ok {
                            return;
                        }
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RecordingUpstream {
            addr,
            seen,
            notify,
            open,
        }
    }

    /// Wait (up to `limit`) until every request whose head arrived is
    /// recorded: a body cut off is recorded only when its connection
    /// closes, which may come after the client's answer.
    pub async fn settled(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified = self.notify.notified();
                if self.open.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
    }

    /// How many requests have been recorded.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The requests recorded from index `from` on.
    pub fn since(&self, from: usize) -> Vec<SeenRequest> {
        self.seen.lock().unwrap()[from..].to_vec()
    }
}

/// Send raw bytes on a new connection and read one answer: until the
/// server closes, or a whole response (head and `Content-Length` body)
/// has come, or `limit` passes. Returns every status line's code.
pub async fn raw_statuses(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (Vec<u16>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    let complete = |out: &[u8]| -> bool {
        let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        out.len() >= end + 4 + len
    };
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&chunk[..n]);
                if complete(&out) {
                    // Anything more (a second answer) comes at once or not at all.
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk)).await
                    {
                        out.extend_from_slice(&chunk[..n]);
                    }
                    break;
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let codes = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .filter_map(|c| c.parse().ok())
        .collect();
    (codes, text)
}

/// The `cutover` binary with `args`, off the async runtime, without the
/// caller's `CUTOVER_ADMIN`/`CUTOVER_TOKEN`.
pub async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(&args)
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_TOKEN")
            .output()
            .expect("run cutover")
    })
    .await
    .unwrap()
}
