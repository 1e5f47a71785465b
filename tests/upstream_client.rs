//! cutover's HTTP/1.1 upstream client (`src/proxy/h1/`): response framing
//! by RFC 9112 §6.3, request bodies both framings, `Expect: 100-continue`,
//! early answers, `CONNECT`, connection reuse, and what it does with
//! responses it must not trust — against upstreams that write raw bytes.

mod support;

use std::sync::atomic::Ordering::SeqCst;

use http_body_util::BodyExt;
use hyper::Request;
use support::*;

fn config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
workers = 1
[apps.shop]
[apps.shop.blue]
servers = ["{addr}"]
# Every bad answer below counts as a failure: none may take the server out.
passive = {{ failures = 100 }}
[apps.shop.green]
servers = ["{addr}"]
"#
    )
}

fn keep(resp: &str) -> (Vec<u8>, bool) {
    (resp.as_bytes().to_vec(), false)
}

fn then_close(resp: &str) -> (Vec<u8>, bool) {
    (resp.as_bytes().to_vec(), true)
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_with_trailers_after_1xx_heads_arrives_whole_on_a_reused_connection() {
    let up = ScriptedUpstream::start(vec![
        keep(concat!(
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\r\n",
            "5;name=value\r\nhello\r\n",
            "6\r\n world\r\n",
            "0\r\nx-trailer: yes\r\n\r\n",
        )),
        keep(OK),
    ])
    .await;
    let proxy = Proxy::start(&config(up.addr));
    let c = client();
    let r = get(&c, &proxy.url("/one"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello world"));
    assert_eq!(r.headers["x-kind"], "chunked");
    let r = get(&c, &proxy.url("/two"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.accepted.load(SeqCst), 1, "the connection was reused");
    let heads = up.heads.lock().unwrap().clone();
    assert!(
        heads[0].starts_with("GET /one HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /two HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_do_not_keep_the_connection_alive_are_not_reused() {
    // Each of these ends its connection's use; the upstream keeps every
    // connection open all the same, so only the proxy can tell.
    let up = ScriptedUpstream::start(vec![
        // Delimited by the connection's close (the upstream closes it).
        then_close("HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        keep("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose"),
        keep("HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold1"),
        // An HTTP/1.0 response that asks for keep-alive is reused...
        keep("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 4\r\n\r\nold2"),
        keep(OK),
        // ...but not after bytes past the end of a response.
        keep("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nmoreEXTRA"),
        // A length beside `Transfer-Encoding` is ignored, and not trusted.
        keep("HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n"),
        keep(OK),
    ])
    .await;
    let proxy = Proxy::start(&config(up.addr));
    let c = client();
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let r = get(&c, &proxy.url("/"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        bodies.push(r.text());
    }
    assert_eq!(
        bodies,
        [
            "until the end",
            "close",
            "old1",
            "old2",
            "ok",
            "more",
            "bad",
            "ok"
        ]
    );
    // New connections for requests 2, 3, 4, 7 and 8; the fifth reused the fourth's.
    assert_eq!(up.accepted.load(SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_keeps_its_length_and_has_no_body() {
    let up = ScriptedUpstream::start(vec![
        keep("HTTP/1.1 200 OK\r\ncontent-length: 70\r\n\r\n"),
        keep("HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n"),
        keep("HTTP/1.1 204 No Content\r\n\r\n"),
        keep(OK),
    ])
    .await;
    let proxy = Proxy::start(&config(up.addr));
    let c = client();
    let r = send(&c, "HEAD", &proxy.url("/"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], "70");
    assert!(r.body.is_empty());
    let r = get(&c, &proxy.url("/"), &[("if-none-match", "\"x\"")]).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (304, 0));
    let r = send(&c, "DELETE", &proxy.url("/"), &[], "").await;
    assert_eq!((r.status.as_u16(), r.body.len()), (204, 0));
    let r = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!(r.text(), "ok");
    assert_eq!(
        up.accepted.load(SeqCst),
        1,
        "bodiless answers keep the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_give_502_and_their_connection_is_dropped() {
    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let up = ScriptedUpstream::start(vec![
        keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"),
        keep("HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"),
        keep("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        keep("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
        keep("SMTP ready\r\n\r\n"),
        keep(&huge),
        keep(OK),
    ])
    .await;
    let proxy = Proxy::start(&config(up.addr));
    let c = client();
    for i in 0..6 {
        let r = get(&c, &proxy.url("/"), &[]).await;
        assert_eq!(r.status, 502, "response {i}: {}", r.text());
    }
    let r = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(
        up.accepted.load(SeqCst),
        7,
        "no connection was trusted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_fails_the_client_response_and_drops_the_connection() {
    let up = ScriptedUpstream::start(vec![
        then_close("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"),
        then_close("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"),
        keep(OK),
    ])
    .await;
    let proxy = Proxy::start(&config(up.addr));
    for _ in 0..2 {
        // A client of its own each time: the proxy closes the connection
        // of a response it could not finish.
        // The head may not even have left the proxy when the body broke;
        // either way the client must not see a complete response.
        let req = Request::get(proxy.url("/")).body(Body::default()).unwrap();
        if let Ok(resp) = client().request(req).await {
            assert_eq!(resp.status(), 200);
            assert!(
                resp.into_body().collect().await.is_err(),
                "a cut body must not look complete"
            );
        }
    }
    let r = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(r.text(), "ok");
    assert_eq!(up.accepted.load(SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_body_share_the_pool_with_bodiless_ones() {
    // One client carries both, on the same pooled connection.
    let up = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(up.addr));
    let c = client();
    for i in 0..3 {
        let r = get(&c, &proxy.url("/"), &[]).await;
        assert_eq!(r.text(), "blue", "round {i}");
        let r = send(&c, "POST", &proxy.url("/digest"), &[], vec![7u8; 100_000]).await;
        assert_eq!(r.text(), format!("100000 {}", sha256_hex(&[7u8; 100_000])));
        let r = get(&c, &proxy.url("/download/300000"), &[]).await;
        assert_eq!(r.body.len(), 300_000);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i)));
    }
    assert_eq!(up.accepted.load(SeqCst), 1, "one connection served all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_split_anywhere_arrives_whole() {
    // Every split point of a head with a chunked body and trailers, and of
    // one with a length: the client must not care where reads end.
    let chunked = concat!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-n: 1\r\n\r\n",
        "4;ext=\"a b\"\r\nwiki\r\n5\r\npedia\r\n0\r\nx-t: done\r\n\r\n",
    )
    .as_bytes();
    let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nwikipedia";
    let mut script = Vec::new();
    for resp in [chunked, &sized[..]] {
        for at in 1..resp.len() {
            script.push((vec![resp[..at].to_vec(), resp[at..].to_vec()], false));
        }
    }
    let n = script.len();
    let up = ScriptedUpstream::start_in_pieces(script).await;
    let proxy = Proxy::start(&config(up.addr));
    let c = client();
    for i in 0..n {
        let r = get(&c, &proxy.url("/"), &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "wikipedia"),
            "response {i}"
        );
    }
    assert_eq!(
        up.accepted.load(SeqCst),
        1,
        "every response left the connection clean"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_reach_http1_clients_cleaned_up() {
    let up = ScriptedUpstream::start(vec![
        // An HTTP/1.0 upstream: the HTTP/1.1 client still gets HTTP/1.1.
        then_close("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        // A folded length goes on as the number it parsed to.
        keep("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"),
        // Trailers reach a client that asked for them, named by `Trailer`.
        keep(concat!(
            "HTTP/1.1 200 OK\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n",
        )),
    ])
    .await;
    let proxy = Proxy::start(&config(up.addr));
    let limit = std::time::Duration::from_secs(3);
    let (codes, text) =
        raw_statuses(proxy.addr, b"GET /a HTTP/1.1\r\nHost: shop\r\n\r\n", limit).await;
    assert_eq!(codes, [200]);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let (_, text) = raw_statuses(proxy.addr, b"GET /b HTTP/1.1\r\nHost: shop\r\n\r\n", limit).await;
    let lengths: Vec<&str> = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    assert_eq!(lengths, ["content-length: 5"], "{text}");
    let text = raw_exchange(
        proxy.addr,
        b"GET /c HTTP/1.1\r\nHost: shop\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await;
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("trailer: x-sum"), "{text}");
    assert!(lower.contains("\r\n0\r\nx-sum: 42\r\n\r\n"), "{text}");
}

/// Read from `s` until `done(&buf)` or the peer closes or `limit` passes.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(limit, async {
        while !done(&buf) {
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    })
    .await;
    buf
}

fn has_head(b: &[u8]) -> bool {
    b.windows(4).any(|w| w == b"\r\n\r\n")
}

const SHORT: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_keep_their_framing_and_the_connection_is_reused_after_them() {
    use tokio::io::AsyncWriteExt;
    let up = RecordingUpstream::start().await;
    let proxy = Proxy::start(&config(up.addr));
    // A length-framed body, then a chunked one with a trailer, then a
    // large chunked one, all on one client connection.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let body = vec![b'x'; 4096];
    let mut req = b"POST /a HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 4096\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    s.write_all(&req).await.unwrap();
    let got = read_until(&mut s, SHORT, |b| b.ends_with(b"ok")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(
        b"POST /b HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut s, SHORT, |b| b.ends_with(b"ok")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"POST /c HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for i in 0..64u8 {
        let piece = vec![i; 16 * 1024];
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&piece).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, SHORT, |b| b.ends_with(b"ok")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let seen = up.since(0);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].all("content-length"), ["4096"]);
    assert!(seen[0].all("transfer-encoding").is_empty());
    assert_eq!(seen[0].body, body);
    assert_eq!(seen[1].all("transfer-encoding"), ["chunked"]);
    assert_eq!(seen[1].body, b"hello world");
    assert_eq!(seen[2].body.len(), 64 * 16 * 1024);
    assert!(seen[2]
        .body
        .chunks(16 * 1024)
        .enumerate()
        .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
    assert!(
        seen.iter().all(|r| r.complete && r.conn == seen[0].conn),
        "one upstream connection carried all three: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_without_a_length_goes_upstream_chunked() {
    let up = RecordingUpstream::start().await;
    let proxy = Proxy::start(&config(up.addr));
    let io = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://shop.test{}", "/h2"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"from h2",
        )))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.since(0);
    assert_eq!(seen.len(), 1);
    // hyper's h2 client sends no `content-length` for this body.
    if seen[0].all("content-length").is_empty() {
        assert_eq!(seen[0].all("transfer-encoding"), ["chunked"]);
    }
    assert_eq!(seen[0].body, b"from h2");
    assert_eq!(seen[0].line, "POST /h2 HTTP/1.1");
}

/// An upstream that reads one request head and then runs `script` on the
/// socket; counts the connections it accepted.
async fn one_shot<F, Fut>(
    script: F,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
)
where
    F: Fn(tokio::net::TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, script) = (accepted.clone(), std::sync::Arc::new(script));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let head = read_until(&mut s, SHORT, has_head).await;
                script(s, head).await;
            });
        }
    });
    (addr, accepted)
}

/// A PUT of five bytes that says `Expect: 100-continue`, head only: the
/// connection and the first answer head that comes back.
async fn put_expecting_continue(proxy: &Proxy) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(
        b"PUT /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut c, SHORT, has_head).await;
    (c, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_waits_for_the_upstreams_word() {
    use tokio::io::AsyncWriteExt;
    // An upstream that agrees: 100, then it reads the body and answers.
    let (addr, _) = one_shot(|mut s, head| async move {
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(text.contains("expect: 100-continue"), "{text}");
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        let at = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = head[at..].to_vec();
        body.extend(read_until(&mut s, SHORT, |b| body.len() + b.len() >= 5).await);
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
    })
    .await;
    let proxy = Proxy::start(&config(addr));
    let (mut c, got) = put_expecting_continue(&proxy).await;
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    c.write_all(b"hello").await.unwrap();
    let got = read_until(&mut c, SHORT, |b| b.ends_with(b"hello")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // An upstream that refuses: its answer reaches the client, which never
    // had a `100` and never sent its body.
    let (addr, accepted) = one_shot(|mut s, _| async move {
        s.write_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let _ = read_until(&mut s, SHORT, |_| false).await;
    })
    .await;
    let proxy = Proxy::start(&config(addr));
    let (_held, got) = put_expecting_continue(&proxy).await;
    assert!(
        got.starts_with(b"HTTP/1.1 417"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // That connection was left waiting for a body: it is not used again.
    let r = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(r.status, 417);
    assert_eq!(accepted.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_ends_stops_the_body_and_the_connection() {
    use tokio::io::AsyncWriteExt;
    let (addr, accepted) = one_shot(|mut s, _| async move {
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
            .await
            .unwrap();
        let _ = read_until(&mut s, SHORT, |_| false).await;
    })
    .await;
    let proxy = Proxy::start(&config(addr));
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10485760\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&[0u8; 65536]).await.unwrap();
    // The client is still sending when the answer comes.
    let got = read_until(&mut c, SHORT, |b| b.ends_with(b"big!")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let r = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        accepted.load(SeqCst),
        2,
        "the first connection was not reused"
    );
}

/// `CONNECT` makes a raw tunnel: forwarded only for an app that says
/// `allow_connect = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_becomes_a_tunnel_after_a_2xx_when_the_app_allows_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _) = one_shot(|mut s, head| async move {
        let text = String::from_utf8_lossy(&head).into_owned();
        assert!(
            text.starts_with("CONNECT shop.test:443 HTTP/1.1\r\n"),
            "{text}"
        );
        // The tunnel's first bytes come with the answer's head.
        s.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\nhi ")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await;
    let refusing = Proxy::start(&config(addr));
    let (codes, text) = raw_statuses(
        refusing.addr,
        b"CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test:443\r\n\r\n",
        SHORT,
    )
    .await;
    assert_eq!(codes, [405], "CONNECT without allow_connect");
    // RFC 9110 §15.5.6: a 405 lists the methods the target takes.
    let allow = text.lines().find_map(|l| {
        l.strip_prefix("allow: ")
            .or_else(|| l.strip_prefix("Allow: "))
    });
    let allow = allow.expect("a 405 says what is allowed");
    assert!(
        !allow.contains("CONNECT") && allow.contains("GET"),
        "{allow}"
    );
    let allowing = config(addr).replace("[apps.shop]\n", "[apps.shop]\nallow_connect = true\n");
    let proxy = Proxy::start(&allowing);
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test:443\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, SHORT, |b| b.ends_with(b"hi ")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    c.write_all(b"ping").await.unwrap();
    let got = read_until(&mut c, SHORT, |b| b.ends_with(b"ping")).await;
    assert_eq!(got, b"ping");
}
