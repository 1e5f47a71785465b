//! Timeouts once a request is under way, against raw upstreams and clients
//! that stall: each cuts both sides off at its (short, here) limit and is
//! counted in `cutover_timeouts_total{app,phase}`. And connection
//! accounting: a TLS tunnel keeps its `max_connections` slot.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn config(addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
workers = 1
{extra}
[limits]
client_body_timeout = "300ms"
client_send_timeout = "300ms"
upstream_read_timeout = "300ms"
tunnel_idle_timeout = "300ms"
[apps.shop]
[apps.shop.blue]
servers = ["{addr}"]
passive = {{ failures = 100 }}
[apps.shop.green]
servers = ["{addr}"]
"#
    )
}

/// An upstream that reads a request head (and what came with it) and
/// answers with `script` on the socket.
async fn raw_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                        _ => return,
                    }
                }
                script(s).await;
            });
        }
    });
    addr
}

/// Hold the socket open, reading whatever comes, until the peer closes.
async fn hold(mut s: TcpStream) {
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b).await {
        if n == 0 {
            break;
        }
    }
}

/// Read until the peer closes (or resets); everything read.
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut b).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[..n]);
    }
    out
}

/// `cutover_timeouts_total` for app `shop` and `phase`, once it reaches
/// `want` (or what it is when `LIMIT` passes).
async fn timeouts(proxy: &Proxy, phase: &str, want: u64) -> u64 {
    let c = client();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let text = admin_call(&c, proxy, "GET", "/metrics", "", &[])
            .await
            .text();
        let n = text
            .lines()
            .find(|l| {
                l.starts_with("cutover_timeouts_total{")
                    && l.contains("app=\"shop\"")
                    && l.contains(&format!("phase=\"{phase}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        if n >= want || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(proxy: &Proxy, req: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(req).await.unwrap();
    s
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_within_its_body_is_cut_off() {
    tokio::time::timeout(LIMIT * 2, async {
        for (name, answer) in [
            (
                "after the head",
                &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"[..],
            ),
            (
                "after half a body",
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
            ),
        ] {
            let up = raw_upstream(move |mut s| async move {
                s.write_all(answer).await.unwrap();
                hold(s).await;
            })
            .await;
            let proxy = Proxy::start(&config(up, ""));
            let started = tokio::time::Instant::now();
            let mut s = send(&proxy, GET).await;
            let got = read_to_close(&mut s).await;
            let took = started.elapsed();
            assert!(got.starts_with(b"HTTP/1.1 200"), "{name}");
            let body = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| got.len() - at - 4);
            assert!(
                body.is_some_and(|n| n < 100),
                "{name}: the body is cut short ({body:?} bytes of 100)"
            );
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(5),
                "{name}: closed after {took:?}"
            );
            assert_eq!(timeouts(&proxy, "upstream_read", 1).await, 1, "{name}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_closed_after_tunnel_idle_timeout() {
    tokio::time::timeout(LIMIT, async {
        let up = raw_upstream(|mut s| async move {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                .await
                .unwrap();
            hold(s).await;
        })
        .await;
        let proxy = Proxy::start(&config(up, ""));
        let mut s = send(
            &proxy,
            b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .await;
        let started = tokio::time::Instant::now();
        let got = read_to_close(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(timeouts(&proxy, "tunnel_idle", 1).await, 1);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_of_a_large_response_is_cut_off() {
    tokio::time::timeout(LIMIT, async {
        let up = raw_upstream(|mut s| async move {
            let size = 10 << 20;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b'z'; 64 * 1024];
            for _ in 0..size / block.len() {
                if s.write_all(&block).await.is_err() {
                    return;
                }
            }
            hold(s).await;
        })
        .await;
        let proxy = Proxy::start(&config(up, ""));
        // A small receive window, so that the kernel's buffers cannot take
        // the whole response for the client.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(proxy.addr).await.unwrap();
        s.write_all(GET).await.unwrap();
        assert_eq!(timeouts(&proxy, "client_send", 1).await, 1);
        // The proxy reset the connection: what its kernel still held for
        // the client is thrown away, and the client gets only what its own
        // small window already held (not the megabytes queued for it).
        let got = read_to_close(&mut s).await;
        eprintln!(
            "after client_send_timeout the reader got {} bytes",
            got.len()
        );
        assert!(
            got.len() < 64 * 1024,
            "read {} bytes after the timeout",
            got.len()
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_within_its_body_gets_408() {
    tokio::time::timeout(LIMIT, async {
        let up = raw_upstream(hold).await;
        let proxy = Proxy::start(&config(up, ""));
        let mut s = send(
            &proxy,
            b"POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await;
        let got = read_to_close(&mut s).await;
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(timeouts(&proxy, "client_body", 1).await, 1);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_tunnel_keeps_its_connection_slot() {
    tokio::time::timeout(LIMIT, async {
        let up = raw_upstream(|mut s| async move {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                .await
                .unwrap();
            // An echo, so that the tunnel stays busy and open.
            let mut b = [0u8; 1024];
            while let Ok(n) = s.read(&mut b).await {
                if n == 0 || s.write_all(&b[..n]).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        ca.issue(dir.path(), "shop", &["shop.test"]);
        let path = dir.path().join("cutover.toml");
        let toml = config(up, "listen_tls = [\"127.0.0.1:0\"]")
            // One connection at a time, and tunnels that do not idle out here.
            .replace("[limits]", "[limits]\nmax_connections = 1")
            .replace("tunnel_idle_timeout = \"300ms\"", "tunnel_idle_timeout = \"1h\"")
            + "\n[[tls.certs]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
        std::fs::write(&path, toml).unwrap();
        let proxy = Proxy::start_file(&path);
        let addr = proxy.tls_addr.unwrap();
        let connector = ca.connector(&[b"http/1.1"]);

        let (mut ws, _, _) = tls_connect(&connector, addr, "shop.test").await;
        ws.write_all(b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = ws.read(&mut b).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
        ws.write_all(b"ping").await.unwrap();
        let n = ws.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"ping");

        // The tunnel holds the one slot: a second TLS client waits.
        let second = tokio::spawn({
            let connector = connector.clone();
            async move { tls_connect(&connector, addr, "shop.test").await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!second.is_finished(), "a second client got in beside the tunnel");
        // The tunnel closes: the slot is free, and the second one is served.
        drop(ws);
        let (mut io, _, _) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second client got in once the tunnel closed")
            .unwrap();
        io.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        let n = io.read(&mut b).await.unwrap();
        assert!(b[..n].starts_with(b"HTTP/1.1 101"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_connection_that_never_spoke_makes_room() {
    idle_ones_make_room(false).await;
}

/// On TLS, a connection still in its handshake is one that never spoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_tls_handshake_never_finished_makes_room() {
    idle_ones_make_room(true).await;
}

async fn idle_ones_make_room(tls: bool) {
    tokio::time::timeout(LIMIT, async {
        let up = raw_upstream(|mut s| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            hold(s).await;
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        ca.issue(dir.path(), "shop", &["shop.test"]);
        let mut toml = config(
            up,
            if tls {
                "listen_tls = [\"127.0.0.1:0\"]"
            } else {
                ""
            },
        )
        .replace(
            "[limits]",
            "[limits]\nmax_connections = 3\nclient_header_timeout = \"30s\"",
        );
        if tls {
            toml += "\n[[tls.certs]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
        }
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, toml).unwrap();
        let proxy = Proxy::start_file(&path);
        let addr = if tls {
            proxy.tls_addr.unwrap()
        } else {
            proxy.addr
        };
        // Three clients that connect and send nothing (no TLS handshake
        // either) fill the proxy.
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let c = client();
        loop {
            let text = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
                .await
                .text();
            let open = text
                .lines()
                .find_map(|l| l.strip_prefix("cutover_downstream_connections "))
                .and_then(|v| v.parse::<f64>().ok());
            if open == Some(3.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A newcomer is served at once, not after their 30 s head timeout.
        let started = tokio::time::Instant::now();
        let req = b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
        let got = if tls {
            let connector = ca.connector(&[b"http/1.1"]);
            let (mut s, _, _) = tls_connect(&connector, addr, "shop.test").await;
            s.write_all(req).await.unwrap();
            read_to_close(&mut s).await
        } else {
            read_to_close(&mut send(&proxy, req).await).await
        };
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The oldest of the silent ones was closed to make room.
        let first = read_to_close(&mut idle[0]).await;
        assert!(first.is_empty());
    })
    .await
    .unwrap();
}

/// The upstream's response timeout runs from when the request is sent
/// whole: clients uploading a byte at a time for longer than it get their
/// answers, and the upstream is not marked down (nginx starts
/// `proxy_read_timeout` once the request is sent, too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_the_upstreams_timeout() {
    tokio::time::timeout(LIMIT * 2, async {
        let up = Upstream::start("blue").await;
        let cfg = config(up.addr, "")
            .replace(
                "[limits]\n",
                "[limits]\nupstream_response_timeout = \"500ms\"\n",
            )
            .replace("failures = 100", "failures = 1");
        let proxy = Proxy::start(&cfg);
        let upload = |proxy_addr| async move {
            let mut s = TcpStream::connect(proxy_addr).await.unwrap();
            s.write_all(b"POST /digest HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 6\r\n\r\n")
                .await
                .unwrap();
            for b in b"abcdef" {
                tokio::time::sleep(Duration::from_millis(200)).await;
                s.write_all(&[*b]).await.unwrap();
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n6 ") {
                match s.read(&mut buf).await {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        };
        let answers = futures_util::future::join_all((0..5).map(|_| upload(proxy.addr))).await;
        for a in &answers {
            assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        }
        let st = status(&client(), &proxy).await;
        let server = &st["apps"]["shop"]["pools"]["blue"]["servers"][0];
        assert_eq!(server["healthy"], true, "{st}");
        assert_eq!(timeouts(&proxy, "upstream_response", 0).await, 0);
    })
    .await
    .unwrap();
}

/// An upstream that stops reading a request body is the upstream's fault:
/// 504 at its response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_times_out() {
    tokio::time::timeout(LIMIT, async {
        let up = raw_upstream(|s| async move {
            // Reads the head only, then nothing.
            tokio::time::sleep(Duration::from_secs(20)).await;
            drop(s);
        })
        .await;
        let cfg = config(up, "").replace(
            "[limits]\n",
            "[limits]\nupstream_response_timeout = \"500ms\"\n",
        );
        let proxy = Proxy::start(&cfg);
        let size = 64 << 20;
        let mut s = send(
            &proxy,
            format!("POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let (mut r, mut w) = s.split();
        let writer = async {
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..size / block.len() {
                if w.write_all(&block).await.is_err() {
                    break;
                }
            }
        };
        let reader = async {
            let got = read_to_close(&mut r).await;
            String::from_utf8_lossy(&got).into_owned()
        };
        let got = tokio::select! {
            got = reader => got,
            () = async { writer.await; std::future::pending::<()>().await } => unreachable!(),
        };
        assert!(got.starts_with("HTTP/1.1 504"), "{got}");
        assert_eq!(timeouts(&proxy, "upstream_response", 1).await, 1);
    })
    .await
    .unwrap();
}
