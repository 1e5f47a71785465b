//! Forwarding rules, limits and errors with real servers.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

fn config(blue: &str, green: &str, limits: &str) -> String {
    format!(
        r#"
[server]
shutdown_timeout = "5s"
color_header = true

[limits]
{limits}

[apps.shop]
[apps.shop.blue]
servers = [{blue}]
[apps.shop.green]
servers = [{green}]
"#
    )
}

fn one(u: &Upstream) -> String {
    format!("\"{}\"", u.addr)
}

/// An address nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("\"{a}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_headers_are_set_and_host_is_kept() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let r = get(
        &client(),
        &proxy.url("/echo?q=1"),
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    let seen = r.json();
    assert_eq!(seen["host"][0], "shop.example.com");
    // The client is no trusted proxy: its own claim is replaced.
    assert_eq!(seen["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], "shop.example.com");
    assert_eq!(seen["_uri"][0], "/echo?q=1");
    assert_eq!(r.headers["x-cutover-color"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_field_naming_host_does_not_take_host_away() {
    // `Connection` may name any field, `Host` too: it is removed with the
    // hop-by-hop fields and put back, as `Host` is kept.
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let r = get(
        &client(),
        &proxy.url("/echo"),
        &[
            ("host", "shop.example.com"),
            ("connection", "host, x-private"),
            ("x-private", "secret"),
        ],
    )
    .await;
    let seen = r.json();
    assert_eq!(seen["host"][0], "shop.example.com");
    // A request without `X-Forwarded-*` fields of its own gets each once.
    assert_eq!(
        seen["x-forwarded-host"],
        serde_json::json!(["shop.example.com"])
    );
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));
    assert!(seen.get("x-private").is_none(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_do_not_reach_the_upstream() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let r = get(
        &client(),
        &proxy.url("/echo"),
        &[
            ("connection", "x-private, keep-alive"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-sum"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    let seen = r.json();
    for h in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream: {seen}");
    }
    assert_eq!(seen["x-end-to-end"][0], "kept");
    // `Trailer` is end to end (RFC 9110 §6.6.2), not hop-by-hop.
    assert_eq!(seen["trailer"][0], "x-sum");
    // `TE: trailers` is the one TE value a proxy forwards.
    let r = get(&client(), &proxy.url("/echo"), &[("te", "trailers")]).await;
    assert_eq!(r.json()["te"][0], "trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let r = get(&client(), &proxy.url("/hop"), &[]).await;
    assert_eq!(r.status, 200);
    for h in ["x-secret", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(r.headers.get(h).is_none(), "{h} reached the client");
    }
    assert_eq!(r.headers["x-end-to-end"], "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_upload_and_a_16_mib_download_arrive_intact() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let cl = client();
    let size = 16 << 20;
    let upload: Vec<u8> = (0..size).map(|i: usize| (i * 7 + 3) as u8).collect();
    let expected = format!("{size} {}", sha256_hex(&upload));
    let r = send(&cl, "POST", &proxy.url("/digest"), &[], Bytes::from(upload)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), expected);

    let r = get(&cl, &proxy.url(&format!("/download/{size}")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    let want: Vec<u8> = (0..size).map(pattern_byte).collect();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_gives_502() {
    let g = Upstream::start("green").await;
    let proxy = Proxy::start(&config(
        &dead_addr(),
        &one(&g),
        r#"upstream_connect_timeout = "500ms""#,
    ));
    let r = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "bad gateway\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_on_another_server_of_the_same_colour() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(
        &format!("{}, {}", dead_addr(), one(&b)),
        &one(&g),
        "",
    ));
    let cl = client();
    for _ in 0..20 {
        let r = get(&cl, &proxy.url("/"), &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "blue"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_on_a_reused_connection_is_sent_again_only_if_idempotent() {
    // hyper#2136: the upstream closes a kept-alive connection as the proxy
    // reuses it. A bodiless GET on a connection idle for a while is sent
    // again on a fresh one; a POST may have been acted on: 502.
    let up = KeepAliveUpstream::start_dropping_second("blue").await;
    let proxy = Proxy::start(&format!(
        r#"
[server]
workers = 1
[apps.shop]
[apps.shop.blue]
servers = ["{0}"]
[apps.shop.green]
servers = ["{0}"]
"#,
        up.addr
    ));
    let c = client();
    let first = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "blue")
    );
    // Idle past the point where the proxy keeps a copy to send again (the
    // condition is the idle time itself: there is nothing to wait on).
    tokio::time::sleep(Duration::from_millis(250)).await;
    let again = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!(
        (again.status.as_u16(), again.text().as_str()),
        (200, "blue")
    );
    assert_eq!(up.requests.load(SeqCst), 3, "lost once, then sent again");

    tokio::time::sleep(Duration::from_millis(250)).await;
    let post = send(&c, "POST", &proxy.url("/"), &[], "order 66").await;
    assert_eq!(post.status, 502);
    assert_eq!(up.requests.load(SeqCst), 4, "a POST is not sent twice");

    // The same through cutover's own client, which carries bodiless
    // requests and keeps their heads: a GET lost on reuse is sent again
    // at once, with no idle time needed; a bodiless POST lost the same way
    // is still not sent twice.
    let get_again = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!(get_again.status, 200);
    assert_eq!(up.requests.load(SeqCst), 5, "a fresh connection");
    let lost_get = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!(lost_get.status, 200);
    assert_eq!(
        up.requests.load(SeqCst),
        7,
        "lost on reuse, then sent again"
    );
    let empty_post = send(&c, "POST", &proxy.url("/"), &[], "").await;
    assert_eq!(empty_post.status, 502);
    assert_eq!(
        up.requests.load(SeqCst),
        8,
        "a bodiless POST is not sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gives_504() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(
        &one(&b),
        &one(&g),
        r#"upstream_response_timeout = "300ms""#,
    ));
    let start = Instant::now();
    let r = get(&client(), &proxy.url("/delay/3000"), &[]).await;
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kib_header_gives_431() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let big = "a".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let out = raw_exchange(proxy.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:.80}");
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_gives_408_and_the_connection_closes() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(
        &one(&b),
        &one(&g),
        r#"client_header_timeout = "300ms""#,
    ));
    let start = Instant::now();
    let out = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_after_a_kept_alive_request_gives_408() {
    // The head timer of a second request is set while the connection's
    // timer is already armed for the idle timeout, much later.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(
        &one(&b),
        &one(&g),
        "client_header_timeout = \"300ms\"\nclient_idle_timeout = \"30s\"",
    ));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("blue"));
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_client_idle_timeout() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(
        &one(&b),
        &one(&g),
        "client_idle_timeout = \"300ms\"\nclient_header_timeout = \"5s\"",
    ));
    let start = Instant::now();
    let out = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("blue"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_gives_413() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), "max_body_bytes = 1024"));
    let cl = client();
    let r = send(&cl, "POST", &proxy.url("/digest"), &[], vec![b'x'; 2048]).await;
    assert_eq!(r.status, 413);
    let r = send(&cl, "POST", &proxy.url("/digest"), &[], vec![b'x'; 1000]).await;
    assert_eq!(r.text(), format!("1000 {}", sha256_hex(&[b'x'; 1000])));
    // A chunked body declares no length: it is cut off while streaming.
    let chunk = "400\r\n".to_string() + &"y".repeat(1024) + "\r\n";
    let req = format!("POST /digest HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n");
    let out = raw_exchange(proxy.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served_like_http1() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let h2: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let r = get(&h2, &proxy.url("/echo"), &[]).await;
    let seen = r.json();
    assert_eq!(seen["_upstream"][0], "blue");
    assert_eq!(seen["_version"][0], "HTTP/1.1");
    assert_eq!(seen["host"][0], proxy.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_1s_in_flight_request_finish() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), ""));
    let url = proxy.url("/delay/1000");
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    // Wait until the upstream has the request, then begin the shutdown.
    while b.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = proxy.addr;
    let stopped = tokio::spawn(proxy.join());
    let r = in_flight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "blue"));
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("proxy stopped")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// A keep-alive connection that was answered once (by blue) and then sat
/// idle well past the 50 ms park delay: parked.
async fn parked_connection(proxy: &Proxy) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("blue"));
    // The condition is the idle time itself: there is nothing to wait on.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s
}

/// A parked kept-alive connection outlives the start of a shutdown: its
/// client may be sending its next request right now, and closing would
/// fail it. That request is answered, with `Connection: close`, and the
/// connection then closes; the proxy stops once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_parked_connections_next_request_with_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    // Idle timeout and shutdown_timeout both far longer than the wait
    // allowed below.
    let proxy = Proxy::start(&config(&one(&b), &one(&g), "client_idle_timeout = \"60s\""));
    let mut s = parked_connection(&proxy).await;
    let begun = Instant::now();
    let stopped = tokio::spawn(proxy.join());
    // Well into the drain, the client sends its next request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
        .await
        .expect("the connection closed after its answer")
        .unwrap();
    let text = String::from_utf8_lossy(&rest).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with("blue"), "{text}");
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("the proxy stopped without waiting for shutdown_timeout")
        .unwrap();
    assert!(begun.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_makes_further_clients_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), "max_connections = 1"));
    // The first client holds the only slot with a keep-alive connection.
    let mut first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The second is accepted by the kernel but not served...
    let url = proxy.url("/");
    let second = tokio::spawn(async move { get(&client(), &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served past max_connections"
    );
    // ...until the first goes away.
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served after the slot freed")
        .unwrap();
    assert_eq!(r.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_listener() {
    let (b, g) = blue_green().await;
    let text = config(&one(&b), &one(&g), "").replace("[server]", "[server]\nworkers = 3");
    let proxy = Proxy::start(&text);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = proxy.url("/");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..20 {
                assert_eq!(get(&c, &url, &[]).await.text(), "blue");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Read one response (head and a body of `content-length`) from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_parked_while_idle_serves_its_next_requests_and_still_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&config(&one(&b), &one(&g), "client_idle_timeout = \"3s\""));
    // Parked, then woken by the next request.
    let mut s = parked_connection(&proxy).await;
    s.write_all(b"POST /digest HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.contains(&format!("5 {}", sha256_hex(b"hello"))), "{r}");
    // After a request with a body, and a pipelined pair sent as one write.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut both = read_response(&mut s).await;
    if both.matches("HTTP/1.1 200").count() < 2 {
        both += &read_response(&mut s).await;
    }
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    // A parked connection is still closed at the idle timeout (3 s).
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap();
    assert_eq!(n, 0);
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_millis(4500),
        "closed after {waited:?}"
    );
}
