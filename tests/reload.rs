//! Reloading the config and certificates without dropping
//! anything in flight.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;

fn write_config(
    path: &std::path::Path,
    blue: &[&Upstream],
    green: &[&Upstream],
    rules: &str,
    extra: &str,
) {
    let list = |us: &[&Upstream]| {
        us.iter()
            .map(|u| format!("\"{}\"", u.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        path,
        format!(
            "{extra}\n[apps.shop]\n[apps.shop.blue]\nservers = [{}]\n[apps.shop.green]\nservers = [{}]\n{rules}",
            list(blue),
            list(green)
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_server_and_a_rule_keeps_the_flip_and_drops_nothing_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let (b, g1, g2) = (
        Upstream::start("blue").await,
        Upstream::start("green-1").await,
        Upstream::start("green-2").await,
    );
    write_config(&path, &[&b], &[&g1], "", "");
    let proxy = std::sync::Arc::new(Proxy::start_file(&path));
    let c = client();
    assert_eq!(
        admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[])
            .await
            .status,
        200
    );

    let p = proxy.clone();
    let in_flight = tokio::spawn(async move { get(&client(), &p.url("/delay/1500"), &[]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while g1.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let rule = "[[apps.shop.rules]]\nname = \"testers\"\nheader = { name = \"x-preview\", value = \"1\" }\nto = \"blue\"\n";
    write_config(&path, &[&b], &[&g1, &g2], rule, "");
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(
        s["apps"]["shop"]["live"], "green",
        "the runtime flip survives the reload"
    );
    assert_eq!(
        s["apps"]["shop"]["pools"]["green"]["servers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(s["apps"]["shop"]["rules"][0]["name"], "testers");

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(get(&c, &proxy.url("/"), &[]).await.text());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["green-1", "green-2"]);
    assert_eq!(
        get(&c, &proxy.url("/"), &[("x-preview", "1")]).await.text(),
        "blue"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "green-1"),
        "the request in flight completed"
    );
    let metrics = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    assert!(
        metrics.contains("cutover_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_an_invalid_file_is_refused_and_the_old_config_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let (b, g) = blue_green().await;
    write_config(&path, &[&b], &[&g], "", "");
    let proxy = Proxy::start_file(&path);
    let c = client();
    let before = status(&c, &proxy).await;
    std::fs::write(
        &path,
        "[apps.shop]\nlive = \"purple\"\nstandby_percent = 300\n",
    )
    .unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 400);
    let errors: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("apps.shop.live")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("apps.shop.standby_percent")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("apps.shop.blue")),
        "{errors:?}"
    );
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    let after = status(&c, &proxy).await;
    assert_eq!(after["epoch"], before["epoch"]);
    assert_eq!(
        after["apps"]["shop"]["live"],
        before["apps"]["shop"]["live"]
    );
    assert_eq!(
        after["apps"]["shop"]["pools"]["green"]["servers"][0]["addr"],
        before["apps"]["shop"]["pools"]["green"]["servers"][0]["addr"]
    );
    let metrics = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    assert!(
        metrics.contains("cutover_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    // A listener change is refused with a clear message, not applied by
    // dropping connections.
    write_config(
        &path,
        &[&b],
        &[&g],
        "",
        "[server]\nlisten = [\"127.0.0.1:1\"]\n",
    );
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_handshakes_while_open_tls_connections_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old_der = ca.issue(dir.path(), "shop", &["shop.test"]);
    let path = dir.path().join("cutover.toml");
    let (b, g) = blue_green().await;
    write_config(&path, &[&b], &[&g], "", "[server]\nlisten_tls = [\"127.0.0.1:0\"]\n[[tls.certs]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n");
    let proxy = Proxy::start_file(&path);
    let connector = ca.connector(&[b"http/1.1"]);
    let (io, cert, _) = tls_connect(&connector, proxy.tls_addr.unwrap(), "shop.test").await;
    assert_eq!(cert, old_der);
    let (mut open, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let send = |tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        let req = Request::get("/")
            .header("host", "shop.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = tx.send_request(req);
        async move {
            String::from_utf8(
                fut.await
                    .unwrap()
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        }
    };
    assert_eq!(send(&mut open).await, "blue");

    let new_der = ca.issue(dir.path(), "shop", &["shop.test"]);
    assert_ne!(new_der, old_der);
    let c = client();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A fresh client (no session to resume) makes a full handshake.
    let (_, cert, _) = tls_connect(
        &ca.connector(&[b"http/1.1"]),
        proxy.tls_addr.unwrap(),
        "shop.test",
    )
    .await;
    assert_eq!(cert, new_der, "a new handshake gets the new certificate");
    assert_eq!(
        send(&mut open).await,
        "blue",
        "the open keep-alive TLS connection still works"
    );

    // A key that does not match its certificate is refused by name.
    std::fs::copy(dir.path().join("shop.key"), dir.path().join("other.key")).unwrap();
    ca.issue(dir.path(), "shop", &["shop.test"]);
    std::fs::copy(dir.path().join("other.key"), dir.path().join("shop.key")).unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{}",
        r.text()
    );
    let (_, cert, _) = tls_connect(
        &ca.connector(&[b"http/1.1"]),
        proxy.tls_addr.unwrap(),
        "shop.test",
    )
    .await;
    assert_eq!(
        cert, new_der,
        "a refused reload keeps the certificates in use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let (b, g, g2) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
        Upstream::start("green-2").await,
    );
    let (port, admin) = (free_port(), free_port());
    let head = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    );
    write_config(&path, &[&b], &[&g], "", &head);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let url = format!("http://127.0.0.1:{admin}/v1/status");
    let servers = |s: &serde_json::Value| {
        s["apps"]["shop"]["pools"]["green"]["servers"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = Request::get(&url)
            .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
            .unwrap();
        if let Ok(r) = c.request(req).await {
            let s: serde_json::Value =
                serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
            assert_eq!(servers(&s), 1);
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_config(&path, &[&b], &[&g, &g2], "", &head);
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = send(&c, "GET", &url, &[], "").await.json();
        if servers(&s) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_websockets_and_closes_connections_to_removed_servers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let ws = WsUpstream::start("blue-ws").await;
    let (b2, g) = (
        Upstream::start("blue-2").await,
        Upstream::start("green").await,
    );
    let write = |with_b2: bool| {
        let blue = if with_b2 {
            format!("\"{}\", \"{}\"", ws.addr, b2.addr)
        } else {
            format!("\"{}\"", ws.addr)
        };
        std::fs::write(
            &path,
            format!("[apps.shop]\n[apps.shop.blue]\nservers = [{blue}]\n[apps.shop.green]\nservers = [\"{}\"]\n", g.addr),
        )
        .unwrap();
    };
    write(true);
    let proxy = Proxy::start_file(&path);
    // Round robin puts the WebSocket on the ws server or on blue-2; retry
    // until it lands on the WebSocket server.
    let url = format!("ws://{}/ws", proxy.addr);
    let mut socket = None;
    for _ in 0..4 {
        if let Ok((s, _)) = tokio_tungstenite::connect_async(&url).await {
            socket = Some(s);
            break;
        }
    }
    let mut socket = socket.expect("a WebSocket through the proxy");
    // Requests to blue-2 leave pooled connections open to it.
    let c = client();
    for _ in 0..4 {
        get(&c, &proxy.url("/"), &[]).await;
    }
    assert!(b2.open.load(std::sync::atomic::Ordering::SeqCst) > 0);

    write(false);
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ws_echo(&mut socket, "after").await, "blue-ws:after");
    let start = Instant::now();
    while b2.open.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "connections to the removed server stay open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(text: &str, name: &str, labels: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_rules_survive_reloads_and_restarts_and_a_changed_file_is_drift_until_told() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        let (b, g) = blue_green().await;
        let state = format!("[state]\nfile = \"{}\"\n", dir.path().join("state.json").display());
        let file_rule = "[[apps.shop.rules]]\nname = \"office\"\nclient_ip = [\"192.0.2.0/24\"]\nto = \"green\"\n";
        write_config(&path, &[&b], &[&g], file_rule, &state);
        let proxy = Proxy::start_file(&path);
        let c = client();
        let st = status(&c, &proxy).await;
        assert_eq!(st["apps"]["shop"]["rules_owner"], "file");
        assert_eq!(st["apps"]["shop"]["drift"], false);

        // An operator adds a rule at runtime: the runtime owns the rules now.
        let rules = r#"[{"name": "office", "client_ip": ["192.0.2.0/24"], "to": "green"},
                        {"name": "testers", "header": {"name": "x-preview", "value": "1"}, "to": "green"}]"#;
        let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", rules, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let preview = [("x-preview", "1")];
        assert_eq!(get(&c, &proxy.url("/"), &preview).await.text(), "green");

        // A reload of the unchanged file keeps them, and reports drift.
        let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let st = r.json();
        assert_eq!(st["apps"]["shop"]["rules"].as_array().unwrap().len(), 2, "{st}");
        assert_eq!(st["apps"]["shop"]["rules_owner"], "runtime");
        assert_eq!(st["apps"]["shop"]["drift"], true);
        let m = admin_call(&c, &proxy, "GET", "/metrics", "", &[]).await.text();
        assert_eq!(metric(&m, "cutover_config_drift", "app=\"shop\"").as_deref(), Some("1.0"), "{m}");

        // An edit of the file's rules is drift too: reported, not applied.
        let edited = "[[apps.shop.rules]]\nname = \"mobile\"\nuser_agent = \"iPhone\"\nto = \"green\"\n";
        write_config(&path, &[&b], &[&g], edited, &state);
        let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["apps"]["shop"]["rules"][1]["name"], "testers");
        assert_eq!(get(&c, &proxy.url("/"), &preview).await.text(), "green");

        // A restart keeps the runtime rules too. (The client goes first:
        // its idle kept-alive connections would hold the drain.)
        drop(c);
        proxy.join().await;
        let c = client();
        let proxy = Proxy::start_file(&path);
        let st = status(&c, &proxy).await;
        assert_eq!(st["apps"]["shop"]["rules"].as_array().unwrap().len(), 2, "{st}");
        assert_eq!(st["apps"]["shop"]["drift"], true);
        assert_eq!(get(&c, &proxy.url("/"), &preview).await.text(), "green");

        // Told to, the reload takes the file's rules, recorded in history
        // with the rules they replaced.
        let r = admin_call(&c, &proxy, "POST", "/v1/reload", r#"{"take_rules_from_file": true}"#, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let st = r.json();
        assert_eq!(st["apps"]["shop"]["rules"][0]["name"], "mobile", "{st}");
        assert_eq!(st["apps"]["shop"]["rules_owner"], "file");
        assert_eq!(st["apps"]["shop"]["drift"], false);
        assert_eq!(get(&c, &proxy.url("/"), &preview).await.text(), "blue");
        let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[]).await.json();
        let last = h["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["kind"], "rules-from-file", "{last}");
        assert_eq!(last["before"]["rules"][1]["name"], "testers", "{last}");

        // Now the file owns the rules: its edits apply on reload, no drift.
        write_config(&path, &[&b], &[&g], file_rule, &state);
        let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
        assert_eq!(r.json()["apps"]["shop"]["rules"][0]["name"], "office");
        assert_eq!(r.json()["apps"]["shop"]["drift"], false);
        drop(c);
        proxy.join().await;
    })
    .await
    .unwrap();
}

/// A reload asks no DNS under the control lock: a host name it already
/// knew keeps its addresses at once, and a new one is looked up by the
/// resolver, which the reload wakes (long before `resolve_interval`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_known_host_names_addresses_and_resolves_new_names_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let (b, g) = blue_green().await;
    let by_name = |u: &Upstream| format!("\"localhost:{}\"", u.addr.port());
    let text = |green: &str| {
        format!(
            "[server]\nresolve_interval = \"1h\"\n[apps.shop]\n[apps.shop.blue]\nservers = [{}]\n[apps.shop.green]\nservers = [{green}]\n",
            by_name(&b)
        )
    };
    std::fs::write(&path, text("\"127.0.0.1:1\"")).unwrap();
    let proxy = Proxy::start_file(&path);
    let c = client();
    let has = |st: &serde_json::Value, color: &str, u: &Upstream| {
        st["apps"]["shop"]["pools"][color]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["addr"] == format!("127.0.0.1:{}", u.addr.port()))
    };
    assert!(has(&status(&c, &proxy).await, "blue", &b));

    std::fs::write(&path, text(&by_name(&g))).unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(has(&r.json(), "blue", &b), "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has(&status(&c, &proxy).await, "green", &g) {
        assert!(Instant::now() < deadline, "the new name was never resolved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
}
