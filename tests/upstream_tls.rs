//! TLS and the PROXY protocol to upstreams, with real servers: rustls
//! upstreams with certificates made here (rcgen), a raw upstream that
//! reads PROXY headers, and the real proxy in front.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A rustls upstream: only TLS, HTTP/1.1 or (with ALPN `h2`) HTTP/2. It
/// answers `tls VERSION TARGET` (and `LENGTH`, of a body).
struct TlsUpstream {
    addr: SocketAddr,
    /// Handshakes completed, and how many of them resumed a session.
    handshakes: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// The server name each handshake asked for (None: no SNI), and the
    /// protocol ALPN chose (None: the client offered none we serve).
    names: Arc<Mutex<Vec<Handshake>>>,
}

/// A handshake's SNI name and ALPN protocol.
type Handshake = (Option<String>, Option<String>);

/// A rustls acceptor for `dir/stem.pem` + `dir/stem.key`, offering `alpn`,
/// asking for a client certificate signed by `client_ca` if given.
fn acceptor(
    dir: &Path,
    stem: &str,
    alpn: &[&[u8]],
    client_ca: Option<&TestCa>,
) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("{stem}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{stem}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serve `dir/stem.pem` + `dir/stem.key`, offering `alpn`; with
/// `client_ca`, only to clients with a certificate it signed; with
/// `close`, one request per connection (so the next one reconnects).
async fn tls_upstream(
    dir: &Path,
    stem: &str,
    alpn: &[&[u8]],
    client_ca: Option<&TestCa>,
    close: bool,
) -> TlsUpstream {
    let acceptor = acceptor(dir, stem, alpn, client_ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = TlsUpstream {
        addr: listener.local_addr().unwrap(),
        handshakes: Arc::default(),
        resumed: Arc::default(),
        requests: Arc::default(),
        names: Arc::default(),
    };
    let (handshakes, resumed, requests, names) = (
        up.handshakes.clone(),
        up.resumed.clone(),
        up.requests.clone(),
        up.names.clone(),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let (handshakes, resumed, requests, names) = (
                handshakes.clone(),
                resumed.clone(),
                requests.clone(),
                names.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                handshakes.fetch_add(1, SeqCst);
                let conn = tls.get_ref().1;
                names.lock().unwrap().push((
                    conn.server_name().map(str::to_string),
                    conn.alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                ));
                if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed.fetch_add(1, SeqCst);
                }
                let h2 = conn.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    requests.fetch_add(1, SeqCst);
                    let mut answer = format!("tls {:?} {}", req.version(), req.uri());
                    async move {
                        // A body is read whole, and its length said.
                        let body = http_body_util::BodyExt::collect(req.into_body()).await;
                        let len = body.map_or(0, |b| b.to_bytes().len());
                        if len > 0 {
                            answer += &format!(" {len}");
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            answer,
                        ))))
                    }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close)
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    up
}

/// A config whose blue pool is `blue` (the pool table's lines) and whose
/// green pool nobody uses.
fn config(blue: &str) -> String {
    format!(
        r#"
[server]
shutdown_timeout = "2s"

[apps.web]
[apps.web.blue]
{blue}
[apps.web.green]
servers = ["127.0.0.1:9"]
"#
    )
}

/// A CA with `ca.pem` in `dir`, and a server certificate it signed for
/// upstream.test and 127.0.0.1 (`server.pem`, `server.key`).
fn ca_and_server(dir: &Path) -> TestCa {
    let ca = TestCa::new();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    ca.issue(dir, "server", &["upstream.test", "127.0.0.1"]);
    ca
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_pool_reaches_its_server_verified_by_the_ca_file_and_name() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    let proxy = Proxy::start(&config(&format!(
        "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"",
        up.addr,
        path(dir.path(), "ca.pem")
    )));
    let bodies = on_one_connection(proxy.addr, &["/a", "/b", "/c"]).await;
    assert_eq!(
        bodies,
        ["tls HTTP/1.1 /a", "tls HTTP/1.1 /b", "tls HTTP/1.1 /c"]
    );
    // Kept alive: one handshake for all three, which named the server and
    // chose HTTP/1.1 by ALPN.
    assert_eq!(up.handshakes.load(SeqCst), 1);
    assert_eq!(
        *up.names.lock().unwrap(),
        [(Some("upstream.test".into()), Some("http/1.1".into()))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_goes_up_over_tls_whole() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    let proxy = Proxy::start(&config(&format!(
        "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"",
        up.addr,
        path(dir.path(), "ca.pem")
    )));
    let c = client();
    for len in [1, 100_000, 3 << 20] {
        let r = send(&c, "POST", &proxy.url("/up"), &[], vec![7u8; len]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("tls HTTP/1.1 /up {len}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnels_over_tls_to_its_server() {
    use futures_util::{SinkExt, StreamExt};
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let acceptor = acceptor(dir.path(), "server", &[b"http/1.1"], None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let _ = ws.send(format!("tls:{}", t.as_str()).into()).await;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&config(&format!(
        "servers = [\"{addr}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"",
        path(dir.path(), "ca.pem")
    )));
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(ws_echo(&mut ws, "one").await, "tls:one");
    assert_eq!(ws_echo(&mut ws, "two").await, "tls:two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_is_verified_against_the_certificates_ip_without_a_name() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    let proxy = Proxy::start(&config(&format!(
        "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"",
        up.addr,
        path(dir.path(), "ca.pem")
    )));
    let r = get(&client(), &proxy.url("/ip"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tls HTTP/1.1 /ip");
    // An address is not a name: no SNI (RFC 6066 §3).
    assert_eq!(up.names.lock().unwrap()[0].0, None);
}

/// The real binary, its stderr in a file: a certificate that does not
/// verify — signed by no trusted CA, or for another name — answers 502,
/// sends nothing, and the log names the server and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_is_logged_with_the_server_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let own = rcgen::generate_simple_self_signed(vec!["upstream.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("self.pem"), own.cert.pem()).unwrap();
    std::fs::write(dir.path().join("self.key"), own.signing_key.serialize_pem()).unwrap();
    let stranger = tls_upstream(dir.path(), "self", &[b"http/1.1"], None, false).await;
    let misnamed = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    // Signed by the test CA, but the pool has no ca_file: the system's
    // roots (or the built-in ones) decide, and they do not know that CA.
    let unknown = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    let (port, admin) = (free_port(), free_port());
    let ca = path(dir.path(), "ca.pem");
    let conf = dir.path().join("cutover.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [apps.a]\nhosts = [\"a.test\"]\n\
             [apps.a.blue]\nservers = [\"{}\"]\ntls = true\nca_file = \"{ca}\"\ntls_server_name = \"upstream.test\"\n\
             [apps.a.green]\nservers = [\"127.0.0.1:9\"]\n\
             [apps.b]\nhosts = [\"b.test\"]\n\
             [apps.b.blue]\nservers = [\"{}\"]\ntls = true\nca_file = \"{ca}\"\ntls_server_name = \"elsewhere.test\"\n\
             [apps.b.green]\nservers = [\"127.0.0.1:9\"]\n\
             [apps.c]\nhosts = [\"c.test\"]\n\
             [apps.c.blue]\nservers = [\"{}\"]\ntls = true\ntls_server_name = \"upstream.test\"\n\
             [apps.c.green]\nservers = [\"127.0.0.1:9\"]\n",
            stranger.addr, misnamed.addr, unknown.addr
        ),
    )
    .unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", conf.to_str().unwrap()])
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = client();
    let url = format!("http://127.0.0.1:{port}/secret");
    for host in ["a.test", "b.test", "c.test"] {
        assert_eq!(get(&c, &url, &[("host", host)]).await.status, 502, "{host}");
    }
    assert_eq!(
        stranger.requests.load(SeqCst) + misnamed.requests.load(SeqCst),
        0
    );
    // The lines are written as the requests fail: wait for both.
    let line_for = |text: &str, addr: SocketAddr| {
        text.lines()
            .find(|l| l.contains("upstream connect failed") && l.contains(&addr.to_string()))
            .map(str::to_string)
    };
    let (a, b) = loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if let (Some(a), Some(b)) = (
            line_for(&text, stranger.addr),
            line_for(&text, misnamed.addr),
        ) {
            break (a, b);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log lines in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        a.contains("invalid peer certificate") && a.contains("UnknownIssuer"),
        "{a}"
    );
    assert!(
        b.contains("invalid peer certificate") && b.contains("elsewhere.test"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resume_the_pools_tls_session() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    // One request per connection: every request after the first reconnects.
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, true).await;
    let proxy = Proxy::start(&config(&format!(
        "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"",
        up.addr,
        path(dir.path(), "ca.pem")
    )));
    let c = client();
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy.url("/r"), &[]).await.status, 200);
    }
    assert_eq!(up.handshakes.load(SeqCst), 4);
    // Workers share the pool's one session store; the first handshake of
    // all is the only one that cannot resume.
    assert!(
        up.resumed.load(SeqCst) >= 2,
        "resumed {} of 4",
        up.resumed.load(SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pool_offers_h2_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"h2"], None, false).await;
    let proxy = Proxy::start(&config(&format!(
        "servers = [\"{}\"]\nprotocol = \"h2\"\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"",
        up.addr,
        path(dir.path(), "ca.pem")
    )));
    let r = get(&client(), &proxy.url("/two"), &[]).await;
    assert_eq!(r.status, 200);
    // Over TLS the target's scheme is https.
    assert_eq!(r.text(), format!("tls HTTP/2.0 https://{}/two", proxy.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asking_for_a_client_certificate_gets_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_and_server(dir.path());
    ca.issue(dir.path(), "client", &["cutover.test"]);
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], Some(&ca), false).await;
    let pool = |client_cert: &str| {
        config(&format!(
            "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"\n{client_cert}",
            up.addr,
            path(dir.path(), "ca.pem")
        ))
    };
    let with = Proxy::start(&pool(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        path(dir.path(), "client.pem"),
        path(dir.path(), "client.key")
    )));
    let r = get(&client(), &with.url("/mtls"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tls HTTP/1.1 /mtls");

    let without = Proxy::start(&pool(""));
    let r = get(&client(), &without.url("/mtls"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.requests.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_502_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let own = rcgen::generate_simple_self_signed(vec![
        "upstream.test".to_string(),
        "127.0.0.1".to_string(),
    ])
    .unwrap();
    std::fs::write(dir.path().join("self.pem"), own.cert.pem()).unwrap();
    std::fs::write(dir.path().join("self.key"), own.signing_key.serialize_pem()).unwrap();
    let up = tls_upstream(dir.path(), "self", &[b"http/1.1"], None, false).await;
    let verified = Proxy::start(&config(&format!(
        "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"upstream.test\"",
        up.addr,
        path(dir.path(), "ca.pem")
    )));
    let r = get(&client(), &verified.url("/secret"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.requests.load(SeqCst), 0);
    // Counted as a connect failure.
    let m = get(&client(), &verified.admin_url("/metrics"), &[]).await;
    assert!(
        m.text().lines().any(|l| l.contains("connect_errors")
            && l.contains(&up.addr.to_string())
            && !l.ends_with(" 0")),
        "{}",
        m.text()
    );

    let insecure = config(&format!(
        "servers = [\"{}\"]\ntls = true\ntls_insecure_skip_verify = true",
        up.addr
    ));
    let skipping = Proxy::start(&insecure);
    let r = get(&client(), &skipping.url("/secret"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tls HTTP/1.1 /secret");

    // `cutover check` accepts it, and says what it costs.
    let file = dir.path().join("insecure.toml");
    std::fs::write(&file, &insecure).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["check", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("apps.web.blue.tls_insecure_skip_verify")
            && stderr.contains("not verified"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[tls, not verified]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_tls_files_and_half_a_client_certificate_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let cases = [
        (
            "ca_file = \"missing.pem\"".to_string(),
            "apps.web.blue.ca_file",
            "missing.pem",
        ),
        (
            format!("ca_file = \"{}\"", path(dir.path(), "junk.pem")),
            "apps.web.blue.ca_file",
            "junk.pem",
        ),
        (
            format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
                path(dir.path(), "server.pem"),
                path(dir.path(), "nothing.key")
            ),
            "apps.web.blue.tls_key_file",
            "nothing.key",
        ),
        (
            format!("tls_cert_file = \"{}\"", path(dir.path(), "server.pem")),
            "apps.web.blue.tls_cert_file",
            "tls_key_file",
        ),
    ];
    for (keys, key, names) in cases {
        let text = config(&format!("servers = [\"127.0.0.1:1\"]\ntls = true\n{keys}"));
        let errors = cutover::Config::from_toml(&text).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.key == key && e.message.contains(names)),
            "{keys}: {errors:?}"
        );
    }
    let errors =
        cutover::Config::from_toml(&config("servers = [\"127.0.0.1:1\"]\nca_file = \"x.pem\""))
            .unwrap_err();
    assert!(errors[0].message.contains("needs tls = true"), "{errors:?}");
}

/// A raw HTTP/1.1 upstream that reads a PROXY header at the start of each
/// connection, records it, and answers `ok` to each request after it.
struct ProxyProtocolUpstream {
    addr: SocketAddr,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn proxy_protocol_upstream() -> ProxyProtocolUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = ProxyProtocolUpstream {
        addr: listener.local_addr().unwrap(),
        headers: Arc::default(),
    };
    let headers = up.headers.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let headers = headers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The header: v2 says its length; v1 ends at its CRLF.
                let len = loop {
                    let v2 = buf.len() >= 16 && buf.starts_with(b"\r\n\r\n\0\r\nQUIT\n");
                    if v2 {
                        let n = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
                        if buf.len() >= n {
                            break n;
                        }
                    } else if buf.starts_with(b"PROXY ") {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i + 2;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                headers.lock().unwrap().push(buf[..len].to_vec());
                buf.drain(..len);
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    up
}

/// `GET path` for each of `paths`, one after another on one connection to
/// `addr` (one worker, one client port): the bodies.
async fn on_one_connection(addr: SocketAddr, paths: &[&str]) -> Vec<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut bodies = Vec::new();
    for path in paths {
        tx.ready().await.unwrap();
        let req = Request::get(*path)
            .header("host", "web.test")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        bodies.push(String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap());
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_header_names_the_client_and_connections_stay_with_it() {
    for version in ["v1", "v2"] {
        let up = proxy_protocol_upstream().await;
        let proxy = Proxy::start(&config(&format!(
            "servers = [\"{}\"]\nsend_proxy_protocol = \"{version}\"",
            up.addr
        )));
        // One client connection, two requests: one upstream connection.
        // Another client connection (another port) is not given it.
        assert_eq!(
            on_one_connection(proxy.addr, &["/a", "/b"]).await,
            ["ok", "ok"]
        );
        assert_eq!(on_one_connection(proxy.addr, &["/c"]).await, ["ok"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let headers = up.headers.lock().unwrap().clone();
        assert_eq!(headers.len(), 2, "{version}: {headers:?}");
        let mut sources = Vec::new();
        for h in &headers {
            let (src, dst): (SocketAddr, SocketAddr) = match ppp::HeaderResult::parse(h) {
                ppp::HeaderResult::V1(Ok(h)) => {
                    assert_eq!(version, "v1");
                    match h.addresses {
                        ppp::v1::Addresses::Tcp4(a) => (
                            (a.source_address, a.source_port).into(),
                            (a.destination_address, a.destination_port).into(),
                        ),
                        other => panic!("v1 addresses {other:?}"),
                    }
                }
                ppp::HeaderResult::V2(Ok(h)) => {
                    assert_eq!(version, "v2");
                    assert_eq!(h.command, ppp::v2::Command::Proxy);
                    match h.addresses {
                        ppp::v2::Addresses::IPv4(a) => (
                            (a.source_address, a.source_port).into(),
                            (a.destination_address, a.destination_port).into(),
                        ),
                        other => panic!("v2 addresses {other:?}"),
                    }
                }
                other => panic!("{version}: not a PROXY header: {other:?}"),
            };
            assert_eq!(src.ip().to_string(), "127.0.0.1");
            assert_eq!(dst, proxy.addr);
            sources.push(src);
        }
        assert_ne!(sources[0], sources[1], "two clients, two source ports");
    }
}

fn blue_healthy(s: &serde_json::Value) -> bool {
    s["apps"]["web"]["pools"]["blue"]["servers"][0]["healthy"] == true
}

/// Poll the status until `want` holds for the blue server's health.
async fn until_blue(c: &Client<HttpConnector, Body>, proxy: &Proxy, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while blue_healthy(&status(c, proxy).await) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "blue healthy never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_connect_with_the_pools_tls() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    let pool = |name: &str| {
        config(&format!(
            "servers = [\"{}\"]\ntls = true\nca_file = \"{}\"\ntls_server_name = \"{name}\"\nhealth = {{ interval = \"50ms\", rise = 1, fall = 1 }}",
            up.addr,
            path(dir.path(), "ca.pem")
        ))
    };
    let c = client();
    let good = Proxy::start(&pool("upstream.test"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_blue(&c, &good, true).await;
    assert!(
        up.requests.load(SeqCst) >= 2,
        "the probes reached it over TLS"
    );
    // A name the certificate does not carry: the probes fail as requests would.
    let wrong = Proxy::start(&pool("other.test"));
    until_blue(&c, &wrong, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_missing_ca_file_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, false).await;
    let file = dir.path().join("cutover.toml");
    let text = |ca: &str| {
        config(&format!(
            "servers = [\"{}\"]\ntls = true\nca_file = \"{ca}\"\ntls_server_name = \"upstream.test\"",
            up.addr
        ))
    };
    std::fs::write(&file, text("ca.pem")).unwrap();
    let proxy = Proxy::start_file(&file);
    let c = client();
    assert_eq!(get(&c, &proxy.url("/before"), &[]).await.status, 200);
    std::fs::write(&file, text("gone.pem")).unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("apps.web.blue.ca_file") && r.text().contains("gone.pem"),
        "{}",
        r.text()
    );
    let r = get(&c, &proxy.url("/after"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tls HTTP/1.1 /after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_same_files_keeps_the_tls_sessions() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_server(dir.path());
    let up = tls_upstream(dir.path(), "server", &[b"http/1.1"], None, true).await;
    let file = dir.path().join("cutover.toml");
    std::fs::write(
        &file,
        config(&format!(
            "servers = [\"{}\"]\ntls = true\nca_file = \"ca.pem\"\ntls_server_name = \"upstream.test\"",
            up.addr
        )),
    )
    .unwrap();
    let proxy = Proxy::start_file(&file);
    let c = client();
    assert_eq!(get(&c, &proxy.url("/1"), &[]).await.status, 200);
    assert_eq!(up.resumed.load(SeqCst), 0);
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &proxy.url("/2"), &[]).await.status, 200);
    assert_eq!(up.handshakes.load(SeqCst), 2);
    assert_eq!(
        up.resumed.load(SeqCst),
        1,
        "the session survived the reload"
    );
}
