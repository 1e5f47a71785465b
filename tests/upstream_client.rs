//! cutover's own HTTP/1.1 upstream client (`src/proxy/h1.rs`): response
//! framing by RFC 9112 §6.3, connection reuse, and what it does with
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
    // Bodiless requests go through cutover's own client, requests with a
    // body through hyper's, on the same pooled connection.
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
