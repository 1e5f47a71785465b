//! The admin API, durable state and the CLI client
//! against the real proxy and real upstreams.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn shop(blue: &Upstream, green: &Upstream, extra: &str) -> String {
    format!(
        r#"
{extra}
[apps.shop]
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{g}"]
"#,
        b = blue.addr,
        g = green.addr
    )
}

async fn flip(c: &Client, proxy: &Proxy) -> serde_json::Value {
    let r = admin_call(c, proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_storm_drops_no_request_among_32_keep_alive_clients() {
    let (b, g) = blue_green().await;
    let proxy = Arc::new(Proxy::start(&shop(&b, &g, "")));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, seen_blue, seen_green) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (proxy, stop, ok, sb, sg) = (
            proxy.clone(),
            stop.clone(),
            ok.clone(),
            seen_blue.clone(),
            seen_green.clone(),
        );
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(SeqCst) {
                let r = get(&c, &proxy.url("/"), &[]).await;
                assert_eq!(
                    r.status,
                    200,
                    "a request failed during the flip storm: {}",
                    r.text()
                );
                match r.text().as_str() {
                    "blue" => sb.fetch_add(1, SeqCst),
                    "green" => sg.fetch_add(1, SeqCst),
                    other => panic!("unexpected body {other:?}"),
                };
                ok.fetch_add(1, SeqCst);
            }
        }));
    }
    let c = client();
    let end = Instant::now() + Duration::from_secs(10);
    let mut flips = 0;
    while Instant::now() < end {
        flip(&c, &proxy).await;
        flips += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, SeqCst);
    for t in clients {
        t.await.expect("a client saw a failure");
    }
    assert!(flips > 50, "{flips} flips");
    assert!(seen_blue.load(SeqCst) > 0 && seen_green.load(SeqCst) > 0);
    assert!(ok.load(SeqCst) > 1000, "{} requests", ok.load(SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_hands_new_requests_to_green_while_slow_blue_requests_finish() {
    let (b, g) = blue_green().await;
    let proxy = Arc::new(Proxy::start(&shop(&b, &g, "")));
    let mut slow = Vec::new();
    for _ in 0..10 {
        let proxy = proxy.clone();
        slow.push(tokio::spawn(async move {
            get(&client(), &proxy.url("/delay/1000"), &[]).await
        }));
    }
    // All ten are held by blue before the flip.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.requests.load(SeqCst) < 10 {
        assert!(
            Instant::now() < deadline,
            "slow requests never reached blue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = client();
    flip(&c, &proxy).await;
    for _ in 0..10 {
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
    }
    for s in slow {
        let r = s.await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "blue"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_after_each_of_50_flips_sees_the_new_colour() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let mut expected = "blue";
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), expected);
    for i in 0..50 {
        let v = flip(&c, &proxy).await;
        expected = if expected == "blue" { "green" } else { "blue" };
        assert_eq!(v["apps"]["shop"]["live"], expected);
        assert_eq!(v["epoch"], i + 1);
        assert_eq!(
            get(&c, &proxy.url("/"), &[]).await.text(),
            expected,
            "after flip {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifting_25_then_50_percent_never_moves_a_sticky_user_back_to_live() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let shift = |p: f64| {
        let (c, proxy) = (&c, &proxy);
        async move {
            let r = admin_call(
                c,
                proxy,
                "POST",
                "/v1/apps/shop/shift",
                &format!("{{\"percent\": {p}}}"),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["apps"]["shop"]["standby_percent"], p);
        }
    };
    shift(25.0).await;
    let mut users = Vec::new();
    for _ in 0..400 {
        let r = get(&c, &proxy.url("/"), &[]).await;
        users.push((r.set_cookie().expect("sticky cookie"), r.text()));
    }
    let at25 = users.iter().filter(|(_, col)| col == "green").count();
    assert!((60..=140).contains(&at25), "{at25} of 400 at 25%");
    shift(50.0).await;
    let mut at50 = 0;
    for (cookie, before) in &users {
        let now = get(&c, &proxy.url("/"), &[("cookie", cookie)]).await.text();
        if before == "green" {
            assert_eq!(now, "green", "a standby user went back to live");
        }
        if now == "green" {
            at50 += 1;
        }
    }
    assert!((150..=250).contains(&at50), "{at50} of 400 at 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_and_checked_and_get_on_a_mutation_is_405() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").unwrap();
    let (b, g) = blue_green().await;
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, shop(&b, &g, "[admin]\ntoken_file = \"admin.token\"")).unwrap();
    let proxy = Proxy::start_file(&path);
    let c = client();
    let good = [("authorization", "Bearer s3cret-token")];
    assert_eq!(
        admin_call(&c, &proxy, "GET", "/healthz", "", &[])
            .await
            .status,
        200
    );
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("token"));
    let r = admin_call(
        &c,
        &proxy,
        "POST",
        "/v1/apps/shop/flip",
        "",
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        admin_call(&c, &proxy, "GET", "/v1/status", "", &[])
            .await
            .status,
        401
    );
    let r = admin_call(&c, &proxy, "GET", "/v1/status", "", &good).await;
    assert_eq!(
        r.json()["apps"]["shop"]["live"],
        "blue",
        "a refused call changed nothing"
    );
    let r = admin_call(&c, &proxy, "GET", "/v1/apps/shop/flip", "", &good).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &good).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["apps"]["shop"]["live"], "green");
    let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &good)
        .await
        .json();
    assert_eq!(
        h["history"][0]["actor"], "default",
        "token_file is the operate token named default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_by_name_and_change_nothing() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let before = status(&c, &proxy).await;
    /// method, path, body, headers, expected status, words of the error.
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            "POST",
            "/v1/apps/shop/shift",
            "{\"percent\": 150}",
            &[],
            400,
            "percent",
        ),
        (
            "POST",
            "/v1/apps/shop/shift",
            "{\"percent\": -1}",
            &[],
            400,
            "percent",
        ),
        ("POST", "/v1/apps/shop/shift", "{}", &[], 400, "percent"),
        (
            "POST",
            "/v1/apps/shop/shift",
            "{\"percent\": \"ten\"}",
            &[],
            400,
            "bad JSON",
        ),
        (
            "POST",
            "/v1/apps/shop/shift",
            "{\"percent\": 10, \"speed\": 1}",
            &[],
            400,
            "unknown field `speed`",
        ),
        (
            "POST",
            "/v1/apps/shop/flip",
            "{not json",
            &[],
            400,
            "bad JSON",
        ),
        (
            "POST",
            "/v1/apps/nope/flip",
            "",
            &[],
            404,
            "no app named \"nope\"",
        ),
        (
            "POST",
            "/v1/apps/nope/shift",
            "{\"percent\": 5}",
            &[],
            404,
            "nope",
        ),
        (
            "POST",
            "/v1/apps/shop/flip",
            "",
            &[("if-match", "999")],
            412,
            "stale epoch",
        ),
        (
            "POST",
            "/v1/apps/shop/flip",
            "",
            &[("if-match", "abc")],
            400,
            "If-Match",
        ),
        (
            "PUT",
            "/v1/apps/shop/rules",
            "[{\"name\": \"x\", \"to\": \"purple\"}]",
            &[],
            400,
            "apps.shop.rules[0].to",
        ),
        (
            "PUT",
            "/v1/apps/shop/rules",
            "[{\"name\": \"x\", \"to\": \"green\", \"user_agent\": \"(\"}]",
            &[],
            400,
            "user_agent",
        ),
        (
            "PUT",
            "/v1/apps/shop/rules",
            "[{\"name\": \"x\", \"to\": \"green\", \"percent\": 101}]",
            &[],
            400,
            "percent",
        ),
        (
            "PUT",
            "/v1/apps/shop/rules",
            "[{\"name\": \"x\", \"to\": \"green\"}, {\"name\": \"x\", \"to\": \"blue\"}]",
            &[],
            400,
            "already the name",
        ),
        (
            "PUT",
            "/v1/apps/shop/rules",
            "[{\"name\": \"x\", \"to\": \"green\", \"colour\": 1}]",
            &[],
            400,
            "colour",
        ),
        ("DELETE", "/v1/apps/shop/rules/ghost", "", &[], 404, "ghost"),
        (
            "POST",
            "/v1/apps/shop/rollback",
            "",
            &[],
            409,
            "nothing to roll back",
        ),
        ("POST", "/v1/nowhere", "", &[], 404, "no such endpoint"),
        (
            "DELETE",
            "/v1/apps/shop/flip",
            "",
            &[],
            405,
            "method not allowed",
        ),
    ];
    for (method, path, body, headers, status_code, needle) in cases {
        let r = admin_call(&c, &proxy, method, path, body, headers).await;
        assert_eq!(
            r.status.as_u16(),
            *status_code,
            "{method} {path} {body}: {}",
            r.text()
        );
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains(needle),
            "{method} {path} {body}: {msg:?} lacks {needle:?}"
        );
    }
    assert_eq!(
        status(&c, &proxy).await,
        before,
        "a refused call changed the state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_if_match_with_the_current_epoch_applies() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let r = admin_call(&c, &proxy, "POST", "/v1/flip", "{\"dry_run\": true}", &[])
        .await
        .json();
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["apps"]["shop"]["live"], "green");
    assert_eq!(r["epoch"], 0);
    assert_eq!(status(&c, &proxy).await["apps"]["shop"]["live"], "blue");
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    let r = admin_call(&c, &proxy, "POST", "/v1/flip", "", &[("if-match", "0")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["epoch"], 1);
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_answers_are_pretty_json_with_keys_in_alphabetical_order() {
    // The documents are written straight from the snapshot, not through a
    // `serde_json::Value`: they must read as one would have.
    let (b, g) = blue_green().await;
    let rules = r#"
[[apps.shop.rules]]
name = "testers"
header = { name = "x-tester", value = "1" }
to = "green""#;
    let proxy = Proxy::start(&format!("{}{rules}", shop(&b, &g, "")));
    let c = client();
    for (method, path, body) in [
        ("GET", "/v1/status", ""),
        (
            "POST",
            "/v1/apps/shop/shift",
            r#"{"percent": 12.5, "dry_run": true}"#,
        ),
        ("POST", "/v1/flip", ""),
    ] {
        let r = admin_call(&c, &proxy, method, path, body, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let value: serde_json::Value = r.json();
        let sorted = serde_json::to_string_pretty(&value).unwrap() + "\n";
        assert_eq!(r.text(), sorted, "{method} {path}");
        assert!(value["apps"]["shop"]["pools"]["green"]["servers"][0]["addr"].is_string());
        assert_eq!(value["apps"]["shop"]["rules"][0]["name"], "testers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_can_be_replaced_read_and_deleted_and_route_at_once() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let rules =
        r#"[{"name": "testers", "header": {"name": "x-preview", "value": "1"}, "to": "green"}]"#;
    let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", rules, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(&c, &proxy.url("/"), &[("x-preview", "1")]).await.text(),
        "green"
    );
    let listed = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rules", "", &[])
        .await
        .json();
    assert_eq!(listed["rules"][0]["name"], "testers");
    let r = admin_call(&c, &proxy, "DELETE", "/v1/apps/shop/rules/testers", "", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&c, &proxy.url("/"), &[("x-preview", "1")]).await.text(),
        "blue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_state_and_history_lists_every_change() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    admin_call(
        &c,
        &proxy,
        "POST",
        "/v1/apps/shop/shift",
        "{\"percent\": 10}",
        &[],
    )
    .await;
    flip(&c, &proxy).await;
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollback", "", &[])
        .await
        .json();
    assert_eq!(r["apps"]["shop"]["live"], "blue");
    assert_eq!(r["apps"]["shop"]["standby_percent"], 10.0);
    let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[])
        .await
        .json();
    let kinds: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["shift", "flip", "rollback"]);
    let last = &h["history"][2];
    assert_eq!(last["before"]["live"], "green");
    assert_eq!(last["after"]["live"], "blue");
    assert_eq!(last["app"], "shop");
    assert_eq!(last["actor"], "local");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_every_app_is_one_atomic_change() {
    let (b, g) = blue_green().await;
    let two = format!(
        "{}\n[apps.api]\nhosts = [\"api.test\"]\n[apps.api.blue]\nservers = [\"{}\"]\n[apps.api.green]\nservers = [\"{}\"]\n",
        shop(&b, &g, ""),
        b.addr,
        g.addr
    );
    let proxy = Proxy::start(&two);
    let c = client();
    let r = admin_call(&c, &proxy, "POST", "/v1/flip", "", &[])
        .await
        .json();
    assert_eq!(r["epoch"], 1);
    assert_eq!(r["apps"]["shop"]["live"], "green");
    assert_eq!(r["apps"]["api"]["live"], "green");
    assert_eq!(
        get(&c, &proxy.url("/"), &[("host", "api.test")])
            .await
            .text(),
        "green"
    );
    // Undo the last change, whatever apps it touched.
    let r = admin_call(&c, &proxy, "POST", "/v1/rollback", "", &[])
        .await
        .json();
    assert_eq!(
        (
            r["apps"]["shop"]["live"].as_str(),
            r["apps"]["api"]["live"].as_str()
        ),
        (Some("blue"), Some("blue"))
    );
}

/// A daemon as a separate process, so it can be killed hard.
struct Daemon {
    child: std::process::Child,
    admin: String,
    proxy: String,
}

impl Daemon {
    fn start(config: &std::path::Path, extra: &[&str]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["run", "-c", config.to_str().unwrap()])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    async fn ready(config: &std::path::Path, admin: u16, proxy: u16) -> Daemon {
        let child = Daemon::start(config, &[]);
        let d = Daemon {
            child,
            admin: format!("http://127.0.0.1:{admin}"),
            proxy: format!("http://127.0.0.1:{proxy}"),
        };
        let c = client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let req = http::Request::get(format!("{}/healthz", d.admin))
                .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                .unwrap();
            if let Ok(r) = c.request(req).await {
                if r.status() == 200 {
                    return d;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use http_body_util::BodyExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_a_sigkill_and_a_corrupt_state_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (b, g) = blue_green().await;
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        shop(
            &b,
            &g,
            &format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[state]\nfile = \"state.json\"\n"),
        ),
    )
    .unwrap();
    let c = client();
    let d = Daemon::ready(&config, admin, port).await;
    let flip = send(
        &c,
        "POST",
        &format!("{}/v1/apps/shop/flip", d.admin),
        &with_json("POST", &[]),
        "",
    )
    .await;
    assert_eq!(flip.status, 200);
    let shift = send(
        &c,
        "POST",
        &format!("{}/v1/apps/shop/shift", d.admin),
        &with_json("POST", &[]),
        "{\"percent\": 12.5}",
    )
    .await;
    assert_eq!(shift.status, 200);
    drop(d); // SIGKILL: no chance to flush anything.

    let d = Daemon::ready(&config, admin, port).await;
    let s = send(&c, "GET", &format!("{}/v1/status", d.admin), &[], "")
        .await
        .json();
    assert_eq!(s["apps"]["shop"]["live"], "green");
    assert_eq!(s["apps"]["shop"]["standby_percent"], 12.5);
    assert_eq!(s["epoch"], 2);
    assert_eq!(
        get(&c, &format!("{}/", d.proxy), &[("cookie", "cutover=x")])
            .await
            .status,
        200
    );
    drop(d);

    std::fs::write(dir.path().join("state.json"), "{\"format\": 1, \"epo").unwrap();
    let out = Daemon::start(&config, &[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );

    let mut d = Daemon {
        child: Daemon::start(&config, &["--reset-state"]),
        admin: format!("http://127.0.0.1:{admin}"),
        proxy: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let req = http::Request::get(format!("{}/v1/status", d.admin))
            .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
            .unwrap();
        if let Ok(r) = c.request(req).await {
            let body = r.into_body().collect().await.unwrap().to_bytes();
            break serde_json::from_slice::<serde_json::Value>(&body).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "daemon with --reset-state did not come up"
        );
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "daemon with --reset-state exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["apps"]["shop"]["live"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_running_daemon() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let admin = proxy.admin_url("");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["status"]));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("app shop") && out.contains("live blue"),
        "{out}"
    );
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["flip", "shop"]));
    assert_eq!(code, Some(0));
    assert!(out.contains("shop: live green"), "{out}");
    let c = client();
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["shift", "shop", "12.5"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("12.5%"), "{out}");
    let (code, _, err) = tokio::task::block_in_place(|| cli(&["shift", "shop", "150"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("percent"), "{err}");
    let (code, _, _) = tokio::task::block_in_place(|| cli(&["shift"]));
    assert_eq!(code, Some(64));
    let (code, out, _) = tokio::task::block_in_place(|| {
        cli(&[
            "rules",
            "shop",
            "add",
            "--name",
            "testers",
            "--to",
            "blue",
            "--header",
            "x-preview=1",
        ])
    });
    assert_eq!(code, Some(0));
    assert!(out.contains("testers -> blue"), "{out}");
    assert_eq!(
        get(&c, &proxy.url("/"), &[("x-preview", "1")]).await.text(),
        "blue"
    );
    let (code, out, _) = tokio::task::block_in_place(|| cli(&["history"]));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("flip") && out.contains("shift") && out.contains("rules"),
        "{out}"
    );
    let (code, _, err) = tokio::task::block_in_place(|| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["status", "--admin", "http://127.0.0.1:1"])
            .output()
            .unwrap();
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach"), "{err}");
}

// ---- The admin plane against web pages and slow clients ----

/// `cutover ARGS --admin http://ADDR`: exit code, stdout, and how long it took.
fn run_cli(admin: std::net::SocketAddr, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .args(["--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        started.elapsed(),
    )
}

/// No answer of the admin API ever allows another origin anything.
fn assert_no_cors(r: &Reply) {
    for (name, _) in &r.headers {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "a CORS header: {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_does_not_say_json_is_refused_with_415_and_changes_nothing() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let before = status(&c, &proxy).await;
    let url = |p: &str| proxy.admin_url(p);
    for (method, path, content_type, body) in [
        // What a web page can send without a CORS preflight.
        (
            "POST",
            "/v1/apps/shop/shift",
            Some("text/plain"),
            r#"{"percent": 50}"#,
        ),
        (
            "POST",
            "/v1/apps/shop/shift",
            Some("application/x-www-form-urlencoded"),
            r#"{"percent": 50}"#,
        ),
        (
            "POST",
            "/v1/apps/shop/flip",
            Some("multipart/form-data; boundary=x"),
            "",
        ),
        ("POST", "/v1/apps/shop/flip", None, ""),
        ("POST", "/v1/flip", None, "{}"),
        ("POST", "/v1/rollback", Some("text/plain"), ""),
        ("POST", "/v1/reload", None, ""),
        (
            "PUT",
            "/v1/apps/shop/rules",
            Some("text/plain"),
            r#"[{"name": "all", "to": "green"}]"#,
        ),
        ("DELETE", "/v1/apps/shop/rules/any", None, ""),
        (
            "POST",
            "/v1/apps/shop/shift",
            Some("application/jsonx"),
            r#"{"percent": 50}"#,
        ),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let r = send(&c, method, &url(path), &headers, body).await;
        assert_eq!(
            r.status,
            415,
            "{method} {path} {content_type:?}: {}",
            r.text()
        );
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains("Content-Type") && msg.contains("application/json"),
            "{msg}"
        );
        assert_no_cors(&r);
    }
    let after = status(&c, &proxy).await;
    assert_eq!(after, before, "a refused change changed the state");
    assert_eq!(after["epoch"], 0);
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
    // Any case, any parameters; an empty body is no body.
    let r = send(
        &c,
        "POST",
        &url("/v1/apps/shop/shift"),
        &[("content-type", "Application/JSON; charset=utf-8")],
        r#"{"percent": 100}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        &c,
        "POST",
        &url("/v1/apps/shop/flip"),
        &[("content-type", "application/json")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["epoch"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_with_403_and_the_listeners_own_is_not() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, ""));
    let c = client();
    let before = status(&c, &proxy).await;
    let port = proxy.admin.port();
    for origin in [
        "http://evil.example".to_string(),
        format!("http://evil.example:{port}"),
        "null".to_string(),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        "http://127.0.0.1".to_string(),
    ] {
        for (method, path, body) in [
            ("POST", "/v1/apps/shop/shift", r#"{"percent": 50}"#),
            ("POST", "/v1/apps/shop/flip", "{}"),
            ("GET", "/v1/status", ""),
            ("OPTIONS", "/v1/apps/shop/flip", ""),
        ] {
            let r = admin_call(&c, &proxy, method, path, body, &[("origin", &origin)]).await;
            assert_eq!(r.status, 403, "{method} {path} from {origin}: {}", r.text());
            assert!(r.json()["error"].as_str().unwrap().contains("Origin"));
            assert_no_cors(&r);
        }
    }
    assert_eq!(
        status(&c, &proxy).await,
        before,
        "a refused call changed the state"
    );
    // The admin listener's own origin, by its address or as localhost.
    for (i, origin) in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ]
    .iter()
    .enumerate()
    {
        let r = admin_call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/flip",
            "{}",
            &[("origin", origin)],
        )
        .await;
        assert_eq!(r.status, 200, "{origin}: {}", r.text());
        assert_eq!(r.json()["epoch"], i as u64 + 1);
        assert_no_cors(&r);
        // A preflight from it gets no CORS allowance either.
        let r = admin_call(
            &c,
            &proxy,
            "OPTIONS",
            "/v1/apps/shop/flip",
            "",
            &[("origin", origin)],
        )
        .await;
        assert_eq!(r.status, 405);
        assert_no_cors(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_name_the_admin_listener_is_refused_with_421() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, "[admin]\nhosts = [\"Admin.Internal\"]\n"));
    let c = client();
    let before = status(&c, &proxy).await;
    let port = proxy.admin.port();
    // A page on evil.example whose name now points at 127.0.0.1.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("admin.internal.evil.example:{port}"),
    ] {
        for (method, path, body) in [
            ("POST", "/v1/apps/shop/flip", "{}"),
            ("GET", "/v1/status", ""),
            ("GET", "/healthz", ""),
        ] {
            let r = admin_call(&c, &proxy, method, path, body, &[("host", &host)]).await;
            assert_eq!(r.status, 421, "{method} {path} Host {host}: {}", r.text());
            assert!(r.json()["error"].as_str().unwrap().contains("Host"));
        }
    }
    assert_eq!(
        status(&c, &proxy).await,
        before,
        "a refused call changed the state"
    );
    // Its address, localhost, and the names in [admin] hosts, with the
    // listener's port or none.
    let good = [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("admin.internal:{port}"),
        "ADMIN.internal".to_string(),
    ];
    for (i, host) in good.iter().enumerate() {
        let r = admin_call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/flip",
            "{}",
            &[("host", host)],
        )
        .await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
        assert_eq!(r.json()["epoch"], i as u64 + 1);
    }
    // HTTP/1.1 must name a host; HTTP/1.0 need not (no browser speaks it).
    let r = raw_exchange(
        proxy.admin,
        b"GET /v1/status HTTP/1.1\r\nconnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("Host"), "{r}");
    let r = raw_exchange(
        proxy.admin,
        b"GET /v1/status HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
        "{r}"
    );
    // An absolute-form target names the host too, and wins over Host.
    let r = raw_exchange(
        proxy.admin,
        format!("POST http://evil.example/v1/apps/shop/flip HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 421"), "{r}");
    assert_eq!(status(&c, &proxy).await["epoch"], good.len() as u64);
}

/// A raw connection to `addr` that sends `head` (then says so on `sent`)
/// and then one byte of a header every `dribble` (or nothing more, when
/// `None`), until the server closes it; answers how long after connecting
/// that was.
async fn slow_client(
    addr: std::net::SocketAddr,
    head: String,
    dribble: Option<Duration>,
    sent: tokio::sync::mpsc::Sender<()>,
) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = sent.send(()).await;
    drop(sent);
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(dribble.unwrap_or(TEST_TIMEOUT));
    tick.tick().await;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => panic!("a slow client got an answer"),
            },
            _ = tick.tick(), if dribble.is_some() => {
                if s.write_all(b"x").await.is_err() {
                    return started.elapsed();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_slow_clients_do_not_stop_cutover_status_and_are_cut_off_at_the_header_timeout()
{
    let (b, g) = blue_green().await;
    let header_timeout = Duration::from_secs(2);
    let proxy = Proxy::start(&shop(&b, &g, "[admin]\nheader_timeout = \"2s\"\n"));
    let admin = proxy.admin;
    let head = format!(
        "POST /v1/apps/shop/flip HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\nx-slow: "
    );
    let mut slow = Vec::new();
    let (sent, mut all_sent) = tokio::sync::mpsc::channel(200);
    for i in 0..200 {
        let dribble = (i % 2 == 0).then_some(Duration::from_millis(100));
        slow.push(tokio::spawn(slow_client(
            admin,
            head.clone(),
            dribble,
            sent.clone(),
        )));
    }
    drop(sent);
    while all_sent.recv().await.is_some() {}
    // The slow ones are connected: the listener has taken them all when a
    // call after them is answered (it accepts in order).
    let c = client();
    assert_eq!(
        admin_call(&c, &proxy, "GET", "/healthz", "", &[])
            .await
            .status,
        200
    );
    let (code, out, took) = tokio::task::block_in_place(|| run_cli(admin, &["status"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("app shop") && out.contains("live blue"),
        "{out}"
    );
    assert!(
        took < Duration::from_secs(1),
        "cutover status took {took:?}"
    );
    for s in slow {
        let cut = tokio::time::timeout(TEST_TIMEOUT, s)
            .await
            .expect("a slow client was never cut off")
            .unwrap();
        assert!(
            cut >= header_timeout - Duration::from_millis(100)
                && cut < header_timeout + Duration::from_secs(3),
            "a slow client was cut off after {cut:?}"
        );
    }
    assert_eq!(
        status(&c, &proxy).await["epoch"],
        0,
        "no slow request was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_call_waits_for_a_slot_and_idle_connections_free_theirs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    let idle_timeout = Duration::from_millis(1500);
    let proxy = Proxy::start(&shop(
        &b,
        &g,
        "[admin]\nmax_connections = 4\nheader_timeout = \"500ms\"\nidle_timeout = \"1500ms\"\n",
    ));
    let admin = proxy.admin;
    // Four keep-alive clients, each answered once (so each holds a slot),
    // then idle.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {admin}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push((s, Instant::now()));
    }
    // The fifth waits in the accept queue, not refused, until the idle
    // ones time out — after the idle timeout, not the (shorter) head one.
    let (code, out, took) = tokio::task::block_in_place(|| run_cli(admin, &["status"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        took >= Duration::from_millis(700),
        "answered after {took:?}: the cap did not hold"
    );
    for (mut s, answered) in idle {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(TEST_TIMEOUT, s.read(&mut buf))
            .await
            .expect("an idle connection was never closed");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let after = answered.elapsed();
        assert!(
            after >= idle_timeout - Duration::from_millis(100),
            "an idle connection was closed after {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_changes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, "[admin]\nheader_timeout = \"500ms\"\n"));
    let admin = proxy.admin;
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let started = Instant::now();
    s.write_all(
        format!("POST /v1/apps/shop/shift HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{{\"per")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TEST_TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let c = client();
    assert_eq!(status(&c, &proxy).await["epoch"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_is_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (b, g) = blue_green().await;
    let file = dir.path().join("state.json");
    let proxy = Proxy::start(&shop(
        &b,
        &g,
        &format!("[state]\nfile = {:?}\n", file.to_str().unwrap()),
    ));
    let c = client();
    flip(&c, &proxy).await;
    flip(&c, &proxy).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    let tmp = dir.path().join("state.json.tmp");
    if tmp.exists() {
        assert_eq!(mode(&tmp), 0o600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_admin_hosts_and_refuses_a_new_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (b, g) = blue_green().await;
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, shop(&b, &g, "")).unwrap();
    let proxy = Proxy::start_file(&path);
    let c = client();
    let named = [("host", "admin.internal")];
    let r = admin_call(&c, &proxy, "GET", "/v1/status", "", &named).await;
    assert_eq!(r.status, 421);
    std::fs::write(
        &path,
        shop(&b, &g, "[admin]\nhosts = [\"admin.internal\"]\n"),
    )
    .unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_call(&c, &proxy, "GET", "/v1/status", "", &named).await;
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(
        &path,
        shop(
            &b,
            &g,
            "[admin]\nhosts = [\"admin.internal\"]\nmax_connections = 8\n",
        ),
    )
    .unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("admin.max_connections"), "{}", r.text());
}

// ---- The admin API over TLS ----

/// `cutover ARGS`: exit code and stdout + stderr.
fn cutover(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_cli_reaches_the_admin_api_trusting_its_ca_file_and_nothing_in_clear() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = TestCa::new();
        std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
        ca.issue(d, "admin", &["localhost", "127.0.0.1"]);
        std::fs::write(d.join("ops.token"), "ops-secret\n").unwrap();
        let (b, g) = blue_green().await;
        let conf = d.join("cutover.toml");
        let admin = "[admin]\ntls_cert_file = \"admin.pem\"\ntls_key_file = \"admin.key\"\n\
                     [[admin.tokens]]\nname = \"ops\"\nrole = \"operate\"\nfile = \"ops.token\"\n";
        std::fs::write(&conf, shop(&b, &g, admin)).unwrap();
        let proxy = Proxy::start_file(&conf);
        let port = proxy.admin.port();
        let (ca_file, token) = (
            d.join("ca.pem").display().to_string(),
            d.join("ops.token").display().to_string(),
        );
        let https = format!("https://127.0.0.1:{port}");
        let by_name = format!("https://localhost:{port}");
        let with = |admin: &str, extra: &[&str], args: &[&str]| {
            let mut all: Vec<&str> = args.to_vec();
            all.extend(["--admin", admin, "--token-file", &token]);
            all.extend(extra);
            tokio::task::block_in_place(|| cutover(&all))
        };

        // Trusting the private CA: status, and a change, by address and by name.
        let (code, out) = with(&https, &["--ca-file", &ca_file], &["status"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("app shop"), "{out}");
        let (code, out) = with(&by_name, &["--ca-file", &ca_file], &["flip", "shop"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("shop: live green"), "{out}");

        // Without it, the system's roots do not know that CA: refused, saying why.
        let (code, out) = with(&https, &[], &["status"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("TLS handshake failed") && out.contains("--ca-file"),
            "{out}"
        );

        // The listener speaks only TLS: a request in clear gets no answer.
        let (code, out) = with(&format!("http://127.0.0.1:{port}"), &[], &["status"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("cannot reach"), "{out}");

        // A CA for a clear-HTTP URL would verify nothing: a usage error.
        let (code, out) = with(
            &format!("http://127.0.0.1:{port}"),
            &["--ca-file", &ca_file],
            &["status"],
        );
        assert_eq!(code, Some(64), "{out}");
        assert!(out.contains("--ca-file"), "{out}");

        // The URL from a config (-c) is https:// when it has a certificate;
        // the token comes from it too.
        let cli_conf = d.join("cli.toml");
        let listen = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n{}", &admin[8..]);
        std::fs::write(&cli_conf, shop(&b, &g, &listen)).unwrap();
        let (code, out) = tokio::task::block_in_place(|| {
            cutover(&[
                "status",
                "-c",
                cli_conf.to_str().unwrap(),
                "--ca-file",
                &ca_file,
            ])
        });
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("live green"), "{out}");
    })
    .await
    .unwrap();
}
