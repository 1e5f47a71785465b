//! The everyday front-door jobs: the access log, request ids, and the
//! client address from the PROXY protocol.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Three apps by host: `shop.test` (blue and green upstreams), `dead.test`
/// (nothing listens: 502) and `ws.test` (a WebSocket echo).
fn apps(b: &Upstream, g: &Upstream, ws: &WsUpstream) -> String {
    format!(
        r#"
[limits]
max_body_bytes = 100

[apps.shop]
hosts = ["shop.test"]
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{g}"]
[[apps.shop.rules]]
name = "office"
client_ip = ["203.0.113.0/24"]
to = "green"

[apps.dead]
hosts = ["dead.test"]
[apps.dead.blue]
servers = ["127.0.0.1:{dead}"]
[apps.dead.green]
servers = ["127.0.0.1:{dead}"]

[apps.ws]
hosts = ["ws.test"]
[apps.ws.blue]
servers = ["{w}"]
[apps.ws.green]
servers = ["{w}"]
"#,
        b = b.addr,
        g = g.addr,
        w = ws.addr,
        dead = free_port(),
    )
}

/// The first `n` lines of `path`, once it has them (bounded wait).
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} has {} lines, not {n}:\n{text}",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn websocket(proxy: &Proxy) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = "ws://ws.test/chat".into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send("hi".into()).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "blue:hi");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_match_the_requests_sent() {
    let (b, g) = blue_green().await;
    let ws = WsUpstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[log]\naccess = \"access.log\"\naccess_query = true\n{}",
        apps(&b, &g, &ws)
    );
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    let proxy = Proxy::start_file(&path);
    let c = client();
    let ok = send(
        &c,
        "GET",
        &proxy.url("/a/b?x=1"),
        &[
            ("host", "shop.test"),
            ("user-agent", "probe/1.0"),
            ("referer", "https://example.test/"),
        ],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    let id = ok.headers["x-request-id"].to_str().unwrap().to_string();
    let posted = send(
        &c,
        "POST",
        &proxy.url("/post"),
        &[("host", "shop.test")],
        b"0123456789".to_vec(),
    )
    .await;
    assert_eq!(posted.status, 200);
    // Behind a trusted proxy, even a request no app takes is logged with
    // the client the proxy names.
    assert_eq!(
        get(
            &c,
            &proxy.url("/"),
            &[
                ("host", "nowhere.test"),
                ("x-forwarded-for", "198.51.100.7")
            ]
        )
        .await
        .status,
        404
    );
    let big = send(
        &c,
        "POST",
        &proxy.url("/up"),
        &[("host", "shop.test")],
        vec![b'x'; 500],
    )
    .await;
    assert_eq!(big.status, 413);
    assert_eq!(
        get(&c, &proxy.url("/"), &[("host", "dead.test")])
            .await
            .status,
        502
    );
    websocket(&proxy).await;

    let got = lines(&log, 6).await;
    let json: Vec<serde_json::Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |status: u64| {
        json.iter()
            .find(|j| j["status"] == status)
            .unwrap_or_else(|| panic!("no {status} line in {got:#?}"))
    };
    let l = find(200);
    assert_eq!(l["request_id"], id.as_str());
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "shop.test");
    assert_eq!(l["path"], "/a/b");
    assert_eq!(l["query"], "x=1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["bytes_out"], 4); // "blue"
    assert_eq!(l["upstream"], b.addr.to_string());
    assert_eq!(l["app"], "shop");
    assert_eq!(l["color"], "blue");
    assert_eq!(l["placed"], "live");
    assert_eq!(l["user_agent"], "probe/1.0");
    assert_eq!(l["referer"], "https://example.test/");
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert!(l["time"].as_str().unwrap().ends_with('Z'));

    let l = json.iter().find(|j| j["path"] == "/post").unwrap();
    assert_eq!(
        (l["bytes_in"].as_u64(), l["status"].as_u64()),
        (Some(10), Some(200))
    );
    let l = find(404);
    assert_eq!(
        (l["host"].as_str(), l["app"].is_null()),
        (Some("nowhere.test"), true)
    );
    assert_eq!(l["client"], "198.51.100.7");
    assert!(l["request_id"].as_str().is_some_and(|s| s.len() == 32));
    let l = find(413);
    assert_eq!(
        (l["method"].as_str(), l["app"].as_str()),
        (Some("POST"), Some("shop"))
    );
    let l = find(502);
    assert_eq!(l["app"], "dead");
    assert!(l["upstream_ms"].is_null(), "no response head came");
    // Written when the tunnel closed, with what went through it: "hi"
    // and a close frame from the client (masked), "blue:hi" and a close
    // frame back.
    let l = find(101);
    assert_eq!(
        (l["app"].as_str(), l["path"].as_str()),
        (Some("ws"), Some("/chat"))
    );
    let (bytes_in, bytes_out) = (
        l["bytes_in"].as_u64().unwrap(),
        l["bytes_out"].as_u64().unwrap(),
    );
    assert!(bytes_in >= 8 + 6 && bytes_out >= 9 + 2, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_are_nginx_combined_with_the_app_and_colour() {
    let (b, g) = blue_green().await;
    let ws = WsUpstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!(
        "[log]\naccess = \"access.log\"\naccess_format = \"combined\"\n{}",
        apps(&b, &g, &ws)
    );
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    let proxy = Proxy::start_file(&path);
    let r = get(
        &client(),
        &proxy.url("/p?q=%221%22"),
        &[("host", "shop.test"), ("user-agent", "a \"quoted\" agent")],
    )
    .await;
    assert_eq!(r.status, 200);
    let got = lines(&log, 1).await;
    let l = &got[0];
    // 127.0.0.1 - - [02/Dec/2026:03:00:00 +0000] "GET /p?q=%221%22 HTTP/1.1" 200 4 "-" "a \x22quoted\x22 agent" shop blue
    let (head, rest) = l.split_once(" [").unwrap();
    assert_eq!(head, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert_eq!(
        rest,
        "\"GET /p?q=%221%22 HTTP/1.1\" 200 4 \"-\" \"a \\x22quoted\\x22 agent\" shop blue"
    );
    // Refused, failed and upgraded requests are logged too.
    let c = client();
    assert_eq!(
        get(&c, &proxy.url("/x"), &[("host", "nowhere.test")])
            .await
            .status,
        404
    );
    let big = send(
        &c,
        "POST",
        &proxy.url("/up"),
        &[("host", "shop.test")],
        vec![b'x'; 500],
    )
    .await;
    assert_eq!(big.status, 413);
    assert_eq!(
        get(&c, &proxy.url("/y"), &[("host", "dead.test")])
            .await
            .status,
        502
    );
    websocket(&proxy).await;
    let got = lines(&log, 5).await;
    for (request, end) in [
        ("\"GET /x HTTP/1.1\" 404 ", "\"-\" \"-\" - -"),
        ("\"POST /up HTTP/1.1\" 413 ", " shop blue"),
        ("\"GET /y HTTP/1.1\" 502 ", " dead blue"),
        ("\"GET /chat HTTP/1.1\" 101 ", " ws blue"),
    ] {
        assert!(
            got.iter().any(|l| l.contains(request) && l.ends_with(end)),
            "no line with {request}…{end} in {got:#?}"
        );
    }
    // The tunnel's bytes to the client, as nginx counts them.
    let ws_line = got.iter().find(|l| l.contains(" 101 ")).unwrap();
    let sent: u64 = ws_line
        .split(" 101 ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent >= 9 + 2, "{ws_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_queue_drops_lines_without_slowing_requests() {
    let (b, g) = blue_green().await;
    let ws = WsUpstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    // A pipe nobody reads: once its 64 KiB fill, the writer thread blocks
    // and the queue of 16 lines behind it fills.
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).unwrap())
    };
    let toml = format!(
        "[log]\naccess = \"access.fifo\"\naccess_buffer = 16\n{}",
        apps(&b, &g, &ws)
    );
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    let proxy = Proxy::start_file(&path);
    let _held = reader.join().unwrap();
    let c = client();
    let long = "x".repeat(2000);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..300 {
        let t = Instant::now();
        let r = get(
            &c,
            &proxy.url(&format!("/{long}")),
            &[("host", "shop.test")],
        )
        .await;
        assert_eq!(r.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let metrics = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cutover_access_log_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped counter in\n{metrics}"));
    // 300 lines of 2 KiB: at most 64 KiB in the pipe, the writer's batch
    // (which it hands to the pipe once 256 KiB are gathered) and 16 queued.
    assert!(dropped >= 300 - 32 - 128 - 16 - 2, "only {dropped} dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_kept_or_replaced_and_forwarded() {
    let (b, g) = blue_green().await;
    let base = format!(
        "[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
        b.addr, g.addr
    );
    let proxy = Proxy::start(&base);
    let c = client();
    let r = get(&c, &proxy.url("/echo"), &[]).await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(r.json()["x-request-id"], serde_json::json!([id]));
    // A client's own (well-formed) id is kept...
    let r = get(&c, &proxy.url("/echo"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert_eq!(r.json()["x-request-id"], serde_json::json!(["abc-123"]));
    // ...one with spaces is not.
    let r = get(&c, &proxy.url("/echo"), &[("x-request-id", "a b")]).await;
    assert_ne!(r.headers["x-request-id"], "a b");
    drop(proxy);

    // `always`, under another name.
    let proxy = Proxy::start(&format!(
        "[server]\nrequest_id = \"always\"\nrequest_id_header = \"x-trace\"\n{base}"
    ));
    let r = get(&c, &proxy.url("/echo"), &[("x-trace", "mine")]).await;
    let id = r.headers["x-trace"].to_str().unwrap().to_string();
    assert_ne!(id, "mine");
    assert_eq!(r.json()["x-trace"], serde_json::json!([id]));
    assert!(r.headers.get("x-request-id").is_none());
    drop(proxy);

    // `off`: nothing added.
    let proxy = Proxy::start(&format!("[server]\nrequest_id = \"off\"\n{base}"));
    let r = get(&c, &proxy.url("/echo"), &[]).await;
    assert!(r.headers.get("x-request-id").is_none());
    assert!(r.json().get("x-request-id").is_none());
}

/// Send `header` then a request for `/echo` on shop.test; the response.
async fn through_proxy_protocol(proxy: &Proxy, header: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"GET /echo HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(&bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_a_trusted_peer_sets_the_client_address() {
    let (b, g) = blue_green().await;
    let ws = WsUpstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = |trusted: &str| {
        format!(
            "[server]\nproxy_protocol = true\ntrusted_proxies = [\"{trusted}\"]\n\
             [log]\naccess = \"{}\"\n{}",
            log.display(),
            apps(&b, &g, &ws)
        )
    };
    let proxy = Proxy::start(&config("127.0.0.1/32"));
    // v1: the office address is routed by the client_ip rule to green,
    // and is the client in X-Forwarded-For.
    let r = through_proxy_protocol(&proxy, b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"x-forwarded-for\":[\"203.0.113.9\"]"), "{r}");
    assert_eq!(g.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The access log names the client the header named, and the rule.
    let line: serde_json::Value = serde_json::from_str(&lines(&log, 1).await[0]).unwrap();
    assert_eq!(
        (line["client"].as_str(), line["placed"].as_str()),
        (Some("203.0.113.9"), Some("office"))
    );
    // v2, from elsewhere: blue.
    let addrs: ppp::v2::Addresses = (
        "198.51.100.4:4000".parse::<std::net::SocketAddr>().unwrap(),
        "10.0.0.1:80".parse::<std::net::SocketAddr>().unwrap(),
    )
        .into();
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addrs,
    )
    .build()
    .unwrap();
    let r = through_proxy_protocol(&proxy, &v2).await;
    assert!(r.contains("\"x-forwarded-for\":[\"198.51.100.4\"]"), "{r}");
    let v2_office = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ppp::v2::Addresses::from((
            "203.0.113.10:4000".parse::<std::net::SocketAddr>().unwrap(),
            "10.0.0.1:80".parse::<std::net::SocketAddr>().unwrap(),
        )),
    )
    .build()
    .unwrap();
    let r = through_proxy_protocol(&proxy, &v2_office).await;
    assert!(r.contains("\"x-forwarded-for\":[\"203.0.113.10\"]"), "{r}");
    assert_eq!(g.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    // No header, or a malformed one: closed without an answer.
    assert_eq!(through_proxy_protocol(&proxy, b"").await, "");
    assert_eq!(
        through_proxy_protocol(&proxy, b"PROXY TCP4 nonsense\r\n").await,
        ""
    );
    drop(proxy);

    // From a peer that is not a trusted proxy: closed, even with a header.
    let proxy = Proxy::start(&config("10.0.0.0/8"));
    let r = through_proxy_protocol(&proxy, b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\n").await;
    assert_eq!(r, "");
    assert_eq!(through_proxy_protocol(&proxy, &v2_office).await, "");
    assert_eq!(g.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_without_trusted_proxies_is_a_config_error() {
    let err = cutover::Config::from_toml(
        "[server]\nproxy_protocol = true\n[apps.a]\n[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n",
    )
    .unwrap_err();
    assert!(
        format!("{err:?}").contains("server.proxy_protocol"),
        "{err:?}"
    );
}

/// logrotate's way: move the file, send SIGUSR1, and the next lines go to
/// a new file at the configured path (the real binary, a real signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let (b, g) = blue_green().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [log]\naccess = \"access.log\"\n\
             [apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
            b.addr, g.addr
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The admin API answers once the daemon's signal handlers are set.
    let healthz = format!("http://127.0.0.1:{admin}/healthz");
    loop {
        let req = http::Request::get(&healthz)
            .body(
                http_body_util::Empty::<bytes::Bytes>::new()
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap();
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), c.request(req)).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = dir.path().join("access.log");
    assert_eq!(get(&c, &url("/before"), &[]).await.status, 200);
    assert!(lines(&log, 1).await[0].contains("\"/before\""));
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The reopen is asynchronous: ask until a line lands in the new file.
    let start = Instant::now();
    loop {
        assert_eq!(get(&c, &url("/after"), &[]).await.status, 200);
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"/after\"")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no new file after SIGUSR1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("\"/before\""));
    let _ = child.kill();
    let _ = child.wait();
}

/// On a TLS listener the line carries the TLS version and the SNI name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_request_is_logged_with_its_version_and_sni() {
    let (b, g) = blue_green().await;
    let ws = WsUpstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "shop", &["shop.test"]);
    let toml = format!(
        "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n[[tls.certs]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n\
         [log]\naccess = \"access.log\"\n{}",
        apps(&b, &g, &ws)
    );
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    let proxy = Proxy::start_file(&path);
    let r = tls_get(&ca, proxy.tls_addr.unwrap(), "shop.test", "/t").await;
    assert_eq!(r.status, 200);
    let got = lines(&dir.path().join("access.log"), 1).await;
    let line: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(line["tls_version"], "TLSv1.3");
    assert_eq!(line["sni"], "shop.test");
    assert_eq!(line["path"], "/t");
}
