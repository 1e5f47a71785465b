//! Health checks, health-gated changes, retries, connection hygiene,
//! WebSocket tunnels and metrics, with real servers.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn two_pools(blue: &str, green: &str, app_extra: &str, pool_extra: &str) -> String {
    format!(
        r#"
[apps.shop]
{app_extra}
[apps.shop.blue]
servers = [{blue}]
{pool_extra}
[apps.shop.green]
servers = [{green}]
{pool_extra}
"#
    )
}

/// Wait (bounded) until at most `n` connections to `u` are open.
async fn until_open_at_most(u: &Upstream, n: usize, limit: Duration) {
    let start = Instant::now();
    while u.open.load(SeqCst) > n {
        assert!(
            start.elapsed() < limit,
            "{} connections to {} still open",
            u.open.load(SeqCst),
            u.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One worker (so one connection pool per server) and `extra` config.
fn one_worker(b: &Upstream, g: &Upstream, extra: &str) -> String {
    format!(
        "[server]\nworkers = 1\n{extra}\n{}",
        two_pools(&q(b), &q(g), "", "")
    )
}

fn q(u: &Upstream) -> String {
    format!("\"{}\"", u.addr)
}

/// Wait (bounded) until `f` holds for the status document.
async fn until_status(
    c: &Client,
    proxy: &Proxy,
    limit: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if f(&status(c, proxy).await) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}: {}",
            status(c, proxy).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn green_healthy(s: &serde_json::Value) -> bool {
    s["apps"]["shop"]["pools"]["green"]["servers"][0]["healthy"]
        .as_bool()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_path_marks_green_down_and_a_flip_to_it_needs_force() {
    let (b, g) = blue_green().await;
    let health = r#"health = { path = "/healthz", interval = "100ms", timeout = "200ms", rise = 2, fall = 3 }"#;
    let proxy = Proxy::start(&two_pools(&q(&b), &q(&g), "", health));
    let c = client();
    assert!(green_healthy(&status(&c, &proxy).await));
    g.healthy.store(false, SeqCst);
    // interval × fall = 300 ms, plus slack for a loaded machine.
    let took = until_status(&c, &proxy, Duration::from_secs(5), |s| !green_healthy(s)).await;
    assert!(
        took >= Duration::from_millis(150),
        "marked down after {took:?}, before `fall` checks could fail"
    );

    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("green"));
    assert_eq!(
        get(&c, &proxy.url("/"), &[]).await.text(),
        "blue",
        "the refused flip changed nothing"
    );

    let r = admin_call(
        &c,
        &proxy,
        "POST",
        "/v1/apps/shop/flip",
        "{\"force\": true}",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(&c, &proxy.url("/"), &[]).await;
    assert_eq!(r.status, 503, "traffic must not move silently to blue");
    let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[])
        .await
        .json();
    assert_eq!(h["history"][0]["forced"], true);

    g.healthy.store(true, SeqCst);
    until_status(&c, &proxy, Duration::from_secs(5), green_healthy).await;
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_blue_servers_dead_all_200_requests_succeed() {
    let (b, g) = blue_green().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(&two_pools(
        &format!("\"{dead}\", {}", q(&b)),
        &q(&g),
        "",
        "",
    ));
    let c = client();
    for i in 0..200 {
        let r = get(&c, &proxy.url("/"), &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "blue"),
            "request {i}"
        );
    }
    let s = status(&c, &proxy).await;
    let dead_entry = &s["apps"]["shop"]["pools"]["blue"]["servers"][0];
    assert!(dead_entry["connect_errors"].as_u64().unwrap() >= 1);
    assert_eq!(
        dead_entry["healthy"], false,
        "passive checks took the dead server out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_5xx_is_taken_out_by_passive_checks_and_probed_back() {
    let (b1, b2, g) = (
        Upstream::start("blue-1").await,
        Upstream::start("blue-2").await,
        Upstream::start("green").await,
    );
    let proxy = Proxy::start(&two_pools(
        &format!("{}, {}", q(&b1), q(&b2)),
        &q(&g),
        "",
        r#"passive = { failures = 3, cooldown = "300ms" }"#,
    ));
    let c = client();
    // /status/500 fails on both servers; after 3 in a row each is marked down.
    for _ in 0..6 {
        assert_eq!(get(&c, &proxy.url("/status/500"), &[]).await.status, 500);
    }
    let s = status(&c, &proxy).await;
    let blues = s["apps"]["shop"]["pools"]["blue"]["servers"]
        .as_array()
        .unwrap()
        .clone();
    assert!(blues.iter().all(|s| s["healthy"] == false), "{blues:?}");
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.status, 503);
    // After the cool-off a probe (TCP connect: no health path) brings them back.
    until_status(&c, &proxy, Duration::from_secs(5), |s| {
        s["apps"]["shop"]["pools"]["blue"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["healthy"] == true)
    })
    .await;
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_burst_the_upstream_pool_shrinks_to_what_steady_traffic_uses() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&one_worker(
        &b,
        &g,
        "[limits]\nupstream_idle_timeout = \"60s\"",
    ));
    // A burst: 16 requests at once, each held 400 ms by the upstream, so
    // each needs its own upstream connection.
    let c = client();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (c, url) = (c.clone(), proxy.url("/delay/400"));
            tokio::spawn(async move { get(&c, &url, &[]).await.status })
        })
        .collect();
    for t in burst {
        assert_eq!(t.await.unwrap(), 200);
    }
    let after_burst = b.open.load(SeqCst);
    assert!(after_burst >= 12, "{after_burst} upstream connections");
    // Two clients keep sending; the surplus is closed within a few sweeps
    // (500 ms each), long before the 60 s idle timeout, and the
    // connections the steady traffic uses stay open.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady: Vec<_> = (0..2)
        .map(|_| {
            let (url, stop) = (proxy.url("/"), stop.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(SeqCst) {
                    assert_eq!(get(&c, &url, &[]).await.status, 200);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    until_open_at_most(&b, 2, Duration::from_secs(6)).await;
    let accepted = b.accepted.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, SeqCst);
    for t in steady {
        t.await.unwrap();
    }
    assert_eq!(
        b.accepted.load(SeqCst),
        accepted,
        "steady traffic reuses its connections: none closed and reopened"
    );
    assert!(b.open.load(SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_undone_at_once_keeps_the_connections_to_blue() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&one_worker(&b, &g, ""));
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    }
    let accepted = b.accepted.load(SeqCst);
    assert!(accepted >= 1);
    // Flip and flip back straight away (within the pools' grace).
    admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    }
    assert_eq!(
        b.accepted.load(SeqCst),
        accepted,
        "the idle connections to blue were kept through the flip and back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flip_no_connection_to_blue_stays_open() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&two_pools(&q(&b), &q(&g), "", ""));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let url = proxy.url("/");
        clients.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..10 {
                assert_eq!(get(&c, &url, &[]).await.text(), "blue");
            }
        }));
    }
    for t in clients {
        t.await.unwrap();
    }
    assert!(
        b.open.load(SeqCst) > 0,
        "the proxy keeps connections to blue while it is live"
    );
    let c = client();
    let s = status(&c, &proxy).await;
    assert!(
        s["apps"]["shop"]["pools"]["blue"]["servers"][0]["open_connections"]
            .as_u64()
            .unwrap()
            > 0
    );
    admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    until_open_at_most(&b, 0, Duration::from_secs(2)).await;
    until_status(&c, &proxy, Duration::from_secs(2), |s| {
        s["apps"]["shop"]["pools"]["blue"]["servers"][0]["open_connections"] == 0
    })
    .await;
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_closing_idle_connections_after_1s_causes_no_502_across_flips() {
    let b = KeepAliveUpstream::start("blue", Duration::from_secs(1)).await;
    let g = KeepAliveUpstream::start("green", Duration::from_secs(1)).await;
    let proxy = std::sync::Arc::new(Proxy::start(&two_pools(
        &format!("\"{}\"", b.addr),
        &format!("\"{}\"", g.addr),
        "",
        "",
    )));
    let end = Instant::now() + Duration::from_secs(15);
    let mut clients = Vec::new();
    for k in 0..4u64 {
        let proxy = proxy.clone();
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            // Requests spaced around the upstream's 1 s keep-alive timeout.
            tokio::time::sleep(Duration::from_millis(k * 37)).await;
            while Instant::now() < end {
                let r = get(&c, &proxy.url("/"), &[]).await;
                assert_eq!(r.status, 200, "request {n} of client {k}: {}", r.text());
                n += 1;
                let jitter = [990u64, 1000, 1003, 997, 1010, 985][n % 6];
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            n
        }));
    }
    let c = client();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
        assert_eq!(r.status, 200);
    }
    let mut total = 0;
    for t in clients {
        total += t.await.expect("a request failed");
    }
    assert!(total >= 40, "{total} requests");
    assert_eq!(
        b.requests.load(SeqCst) + g.requests.load(SeqCst),
        total,
        "every request reached an upstream exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_blue_survives_a_flip_and_is_drained_after_drain_timeout() {
    let (b, g) = (
        WsUpstream::start("blue").await,
        WsUpstream::start("green").await,
    );
    let proxy = Proxy::start(&two_pools(
        &format!("\"{}\"", b.addr),
        &format!("\"{}\"", g.addr),
        "drain_timeout = \"1s\"",
        "",
    ));
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut old, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket through the proxy");
    assert_eq!(ws_echo(&mut old, "one").await, "blue:one");
    let c = client();
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["pools"]["blue"]["tunnels"], 1);

    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    assert_eq!(r.status, 200);
    let flipped = Instant::now();
    // The old session keeps echoing from blue after the flip...
    assert_eq!(ws_echo(&mut old, "two").await, "blue:two");
    // ...while new sessions go to green.
    let (mut new, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(ws_echo(&mut new, "hi").await, "green:hi");
    // Blue lost all traffic: its tunnel is closed after drain_timeout.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match old.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the blue tunnel was not closed");
    let after = flipped.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(4),
        "closed after {after:?}"
    );
    assert_eq!(ws_echo(&mut new, "still").await, "green:still");
}

/// Shutdown waits for an open tunnel, which keeps working while the proxy
/// drains, and closes it at `shutdown_timeout`; a tunnel that closes
/// sooner lets the proxy exit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_open_tunnel_up_to_shutdown_timeout() {
    let (b, g) = (
        WsUpstream::start("blue").await,
        WsUpstream::start("green").await,
    );
    let toml = format!(
        "[server]\nshutdown_timeout = \"1500ms\"\n{}",
        two_pools(
            &format!("\"{}\"", b.addr),
            &format!("\"{}\"", g.addr),
            "",
            ""
        )
    );
    // Held to its deadline.
    let proxy = Proxy::start(&toml);
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(ws_echo(&mut ws, "one").await, "blue:one");
    let begun = Instant::now();
    let stopped = tokio::spawn(proxy.join());
    assert_eq!(ws_echo(&mut ws, "draining").await, "blue:draining");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived shutdown_timeout");
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("the proxy stopped")
        .unwrap();
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(4),
        "stopped after {took:?}"
    );

    // Closed by its client: the proxy does not wait for the deadline.
    let proxy = Proxy::start(&toml.replace("1500ms", "30s"));
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(ws_echo(&mut ws, "two").await, "blue:two");
    let stopped = tokio::spawn(proxy.join());
    assert_eq!(ws_echo(&mut ws, "still").await, "blue:still");
    let begun = Instant::now();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the proxy stopped once its last tunnel closed")
        .unwrap();
    assert!(begun.elapsed() < Duration::from_secs(5));
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_sent_per_colour() {
    let (b, g) = blue_green().await;
    let rules = "[[apps.shop.rules]]\nname = \"t\"\nheader = { name = \"x-t\", value = \"1\" }\nto = \"green\"\n";
    let proxy = Proxy::start(&(two_pools(&q(&b), &q(&g), "", "") + rules));
    let c = client();
    for _ in 0..37 {
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    }
    for _ in 0..11 {
        assert_eq!(
            get(&c, &proxy.url("/"), &[("x-t", "1")]).await.text(),
            "green"
        );
    }
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy.url("/status/404"), &[]).await.status, 404);
    }
    let blue2 = "cutover_requests_total{app=\"shop\",color=\"blue\",code_class=\"2xx\"}";
    let start = Instant::now();
    let text = loop {
        let text = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
            .await
            .text();
        // The last response is counted when its body has been sent: wait for it.
        if metric(&text, blue2) == 37 || start.elapsed() > Duration::from_secs(5) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(metric(&text, blue2), 37, "{text}");
    assert_eq!(
        metric(
            &text,
            "cutover_requests_total{app=\"shop\",color=\"green\",code_class=\"2xx\"}"
        ),
        11
    );
    assert_eq!(
        metric(
            &text,
            "cutover_requests_total{app=\"shop\",color=\"blue\",code_class=\"4xx\"}"
        ),
        5
    );
    assert_eq!(
        metric(
            &text,
            "cutover_request_duration_seconds_count{app=\"shop\",color=\"blue\"}"
        ),
        42
    );
    assert_eq!(
        metric(
            &text,
            "cutover_request_duration_seconds_bucket{le=\"+Inf\",app=\"shop\",color=\"green\"}"
        ),
        11
    );
    for series in [
        "cutover_in_flight_requests{app=\"shop\",color=\"blue\"}",
        "cutover_upstream_connections{app=\"shop\",color=\"blue\",server=",
        "cutover_upstream_connect_errors_total{app=\"shop\",color=\"green\",server=",
        "cutover_server_healthy{app=\"shop\",color=\"green\",server=",
        "cutover_standby_percent{app=\"shop\"}",
        "cutover_live{app=\"shop\",color=\"blue\"} 1",
        "cutover_live{app=\"shop\",color=\"green\"} 0",
        "cutover_config_reloads_total{result=\"ok\"}",
        "cutover_downstream_connections",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    let text = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    assert_eq!(
        metric(
            &text,
            "cutover_state_changes_total{app=\"shop\",kind=\"flip\"}"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_client_header_and_idle_timeouts() {
    let (b, g) = (
        WsUpstream::start("blue").await,
        WsUpstream::start("green").await,
    );
    let proxy = Proxy::start(&format!(
        "[limits]\nclient_header_timeout = \"200ms\"\nclient_idle_timeout = \"300ms\"\n{}",
        two_pools(
            &format!("\"{}\"", b.addr),
            &format!("\"{}\"", g.addr),
            "",
            ""
        )
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
        .await
        .unwrap();
    for i in 0..4 {
        assert_eq!(
            ws_echo(&mut ws, &format!("m{i}")).await,
            format!("blue:m{i}")
        );
        // Longer than both client timeouts: they apply to HTTP, not to tunnels.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_outage_the_way_back_is_never_blocked_by_the_gate() {
    // Green live with a rule pointing at green, then every green server
    // dies: rolling back (or flipping) to the healthy blue must pass
    // without force; sending more to green must not.
    let (b, g) = blue_green().await;
    let health = r#"health = { path = "/healthz", interval = "100ms", timeout = "200ms", rise = 1, fall = 1 }"#;
    let proxy = Proxy::start(&two_pools(&q(&b), &q(&g), "", health));
    let c = client();
    let rules =
        r#"[{"name": "testers", "to": "green", "header": {"name": "x-preview", "value": "1"}}]"#;
    let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", rules, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");

    g.healthy.store(false, SeqCst);
    until_status(&c, &proxy, Duration::from_secs(5), |s| !green_healthy(s)).await;

    // More traffic to dead green: refused, naming what causes it.
    let more = r#"[{"name": "testers", "to": "green", "header": {"name": "x-preview", "value": "1"}}, {"name": "mobile", "to": "green", "user_agent": "iPhone"}]"#;
    let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", more, &[]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("rule \"mobile\"") && msg.contains("--force"),
        "{msg}"
    );
    assert!(
        !msg.contains("testers"),
        "an unchanged rule is no cause: {msg}"
    );

    // The way back: roll back the flip, without force, though a rule
    // still points at green.
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollback", "{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let st = status(&c, &proxy).await;
    assert_eq!(st["apps"]["shop"]["live"], "blue", "{st}");
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    // Now a split towards dead green is refused, naming the split.
    let r = admin_call(
        &c,
        &proxy,
        "POST",
        "/v1/apps/shop/shift",
        r#"{"percent": 10}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("the split (0% -> 10%"),
        "{}",
        r.text()
    );
    // Removing the rule to dead green always passes too.
    let r = admin_call(&c, &proxy, "DELETE", "/v1/apps/shop/rules/testers", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_drained_put_in_maintenance_and_reweighted_at_runtime() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let (b1, b2, g) = (
            Upstream::start("blue-1").await,
            Upstream::start("blue-2").await,
            Upstream::start("green").await,
        );
        let toml = format!(
            "[server]\nworkers = 1\n[state]\nfile = \"{}\"\n{}",
            dir.path().join("state.json").display(),
            two_pools(&format!("{}, {}", q(&b1), q(&b2)), &q(&g), "", "")
        );
        let proxy = Proxy::start(&toml);
        let c = client();
        let spread = |n: usize| {
            let (c, url) = (c.clone(), proxy.url("/"));
            async move {
                let mut seen = std::collections::BTreeMap::<String, usize>::new();
                for _ in 0..n {
                    *seen.entry(get(&c, &url, &[]).await.text()).or_default() += 1;
                }
                seen
            }
        };
        let both = spread(20).await;
        assert_eq!((both["blue-1"], both["blue-2"]), (10, 10));
        let b2_addr = b2.addr.to_string();
        let server = |addr: &str, body: &str| {
            let (c, path, body) = (
                c.clone(),
                format!("/v1/apps/shop/servers/{addr}"),
                body.to_string(),
            );
            let proxy = &proxy;
            async move { admin_call(&c, proxy, "POST", &path, &body, &[]).await }
        };

        // Drain: no new requests, its idle connections close.
        let r = server(&b2_addr, r#"{"state": "drain"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let st = r.json();
        assert_eq!(
            st["apps"]["shop"]["pools"]["blue"]["servers"][1]["state"], "drain",
            "{st}"
        );
        let seen = spread(10).await;
        assert_eq!(seen.get("blue-2"), None, "{seen:?}");
        until_open_at_most(&b2, 0, Duration::from_secs(5)).await;

        // Maintenance of the last server in rotation would leave blue's
        // traffic nowhere: refused unless forced.
        let r = server(&b1.addr.to_string(), r#"{"state": "maint"}"#).await;
        assert_eq!(r.status, 409, "{}", r.text());
        // Maintenance of the drained one: it reports unhealthy.
        let r = server(&b2_addr, r#"{"state": "maint"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["apps"]["shop"]["pools"]["blue"]["servers"][1]["healthy"],
            false
        );

        // Ready again, with three times the weight.
        let r = server(&b2_addr, r#"{"state": "ready", "weight": 3}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = spread(40).await;
        assert_eq!((seen["blue-1"], seen["blue-2"]), (10, 30), "{seen:?}");
        // Bad input changes nothing.
        for bad in [
            r#"{"state": "gone"}"#,
            r#"{"weight": 0}"#,
            r#"{"color": "green"}"#,
        ] {
            let r = server(&b2_addr, bad).await;
            assert!(
                matches!(r.status.as_u16(), 400 | 404),
                "{bad}: {}",
                r.text()
            );
        }
        let r = server("127.0.0.1:1", r#"{"state": "drain"}"#).await;
        assert_eq!(r.status, 404, "{}", r.text());

        // The setting is runtime state: it survives a restart. (The
        // client goes first: its idle kept-alive connections would hold
        // the drain, which waits for their next request.)
        drop(c);
        proxy.join().await;
        let c = client();
        let proxy = Proxy::start(&toml);
        let st = status(&c, &proxy).await;
        assert_eq!(
            st["apps"]["shop"]["pools"]["blue"]["servers"][1]["weight"], 3,
            "{st}"
        );
        let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[])
            .await
            .json();
        assert_eq!(
            h["history"].as_array().unwrap().last().unwrap()["kind"],
            "server"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_given_by_name_serve_and_re_resolving_them_changes_nothing_that_stands() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let toml = format!(
            "[server]\nworkers = 1\nresolve_interval = \"50ms\"\n{}",
            two_pools(&format!("\"localhost:{}\"", b.addr.port()), &q(&g), "", "")
        );
        let proxy = Proxy::start(&toml);
        let c = client();
        let st = status(&c, &proxy).await;
        let servers = st["apps"]["shop"]["pools"]["blue"]["servers"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            servers
                .iter()
                .any(|s| s["addr"] == format!("127.0.0.1:{}", b.addr.port())),
            "{st}"
        );
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
        // Several re-resolutions later: the same servers, the same
        // connection, still serving.
        let accepted = b.accepted.load(SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
        let st = status(&c, &proxy).await;
        let addrs = |list: &[serde_json::Value]| {
            list.iter()
                .map(|s| s["addr"].to_string())
                .collect::<Vec<_>>()
        };
        let now = st["apps"]["shop"]["pools"]["blue"]["servers"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(addrs(&now), addrs(&servers), "{st}");
        assert_eq!(
            b.accepted.load(SeqCst),
            accepted,
            "the pooled connection was kept"
        );
    })
    .await
    .unwrap();
}
