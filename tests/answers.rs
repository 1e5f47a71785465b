//! The admin API and the CLI do what they say and say what they did: a
//! dry run asked for in the query acts on nothing, a history limit is
//! kept, `cutover diff` and `cutover status` tell the truth by their exit
//! code and their words.

mod support;

use std::process::Output;
use std::time::Duration;

use support::*;

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn shop(blue: &str, green: &str, extra: &str) -> String {
    format!(
        r#"
[apps.shop]
[apps.shop.blue]
servers = [{blue}]
[apps.shop.green]
servers = [{green}]
{extra}
"#
    )
}

fn quoted(u: &Upstream) -> String {
    format!("\"{}\"", u.addr)
}

/// The CLI against `proxy`'s admin API, off the async runtime.
async fn cli(proxy: &Proxy, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--admin".to_string(), format!("http://{}", proxy.admin)]);
    run_cli(all).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

/// Waits (bounded) until `done` holds of shop's status.
async fn until_status(c: &Client, proxy: &Proxy, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(c, proxy).await;
        if done(&s["apps"]["shop"]) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never came: {s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_and_shift_with_dry_run_in_the_query_act_on_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&shop(&quoted(&b), &quoted(&g), ""));
        let c = client();
        for (path, body, key, would) in [
            (
                "/v1/apps/shop/flip?dry_run=true",
                "",
                "live",
                serde_json::json!("green"),
            ),
            (
                "/v1/apps/shop/shift?dry_run=true",
                r#"{"percent": 30}"#,
                "standby_percent",
                serde_json::json!(30.0),
            ),
            ("/v1/flip?dry_run=1", "", "live", serde_json::json!("green")),
        ] {
            let r = admin_call(&c, &proxy, "POST", path, body, &[]).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let v = r.json();
            assert_eq!(v["dry_run"], true, "{path}: {v:#}");
            assert_eq!(
                v["apps"]["shop"][key], would,
                "{path} shows what would change"
            );
            assert_eq!(v["epoch"], 0, "{path}");
            let now = status(&c, &proxy).await;
            assert_eq!(now["epoch"], 0, "{path} changed the epoch");
            assert_eq!(now["apps"]["shop"]["live"], "blue", "{path} acted");
            assert_eq!(now["apps"]["shop"]["standby_percent"], 0.0, "{path} acted");
            assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");
        }
        let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[]).await;
        assert_eq!(
            h.json()["history"],
            serde_json::json!([]),
            "nothing recorded"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_in_the_query_is_read_like_force_in_the_body() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let health = r#"health = { path = "/healthz", interval = "100ms", timeout = "200ms", rise = 1, fall = 1 }"#;
        let proxy = Proxy::start(&shop(&quoted(&b), &quoted(&g), health));
        let c = client();
        g.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        until_status(&c, &proxy, |a| a["pools"]["green"]["servers"][0]["healthy"] == false).await;
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/shift", r#"{"percent": 10}"#, &[]).await;
        assert_eq!(r.status, 409, "{}", r.text());
        let r = admin_call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/shift?force=true&dry_run=true",
            r#"{"percent": 10}"#,
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(status(&c, &proxy).await["epoch"], 0, "a forced dry run acted");
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/shift?force=true", r#"{"percent": 10}"#, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["apps"]["shop"]["standby_percent"], 10.0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_limit_returns_only_the_newest_entries() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&shop(&quoted(&b), &quoted(&g), ""));
        let c = client();
        for _ in 0..3 {
            let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let epochs = |v: &serde_json::Value| -> Vec<u64> {
            v["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["epoch"].as_u64().unwrap())
                .collect()
        };
        let all = admin_call(&c, &proxy, "GET", "/v1/history", "", &[]).await;
        assert_eq!(epochs(&all.json()), [1, 2, 3]);
        let two = admin_call(&c, &proxy, "GET", "/v1/history?limit=2", "", &[]).await;
        assert_eq!(two.status, 200, "{}", two.text());
        assert_eq!(epochs(&two.json()), [2, 3], "the newest two, oldest first");

        let o = cli(&proxy, &["history", "--json", "--limit", "1"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(epochs(&v), [3], "{v:#}");
        let o = cli(&proxy, &["history", "--limit", "2"]).await;
        assert_eq!(stdout(&o).lines().count(), 2, "{}", both(&o));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exits_1_while_the_running_state_differs_from_the_file_and_0_once_it_matches() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        let (b, g) = blue_green().await;
        std::fs::write(&path, shop(&quoted(&b), &quoted(&g), "")).unwrap();
        let proxy = Proxy::start_file(&path);
        let file = path.to_str().unwrap();

        let o = cli(&proxy, &["diff", "-c", file]).await;
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));

        let o = cli(&proxy, &["shift", "shop", "10"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        let o = cli(&proxy, &["diff", "-c", file]).await;
        assert_eq!(o.status.code(), Some(1), "{}", both(&o));
        assert!(
            stdout(&o).contains("shop: standby_percent: 10 (file: 0)"),
            "{}",
            both(&o)
        );
        let o = cli(&proxy, &["diff", "-c", file, "--json"]).await;
        assert_eq!(o.status.code(), Some(1), "{}", both(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["differs"], true);

        let o = cli(&proxy, &["shift", "shop", "0"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        let o = cli(&proxy, &["diff", "-c", file]).await;
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        assert!(stdout(&o).contains("matches"), "{}", both(&o));
    })
    .await
    .unwrap();
}

/// The line of `status` output that names `addr`.
fn line_of(out: &str, addr: std::net::SocketAddr) -> String {
    out.lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("{addr} not in\n{out}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_each_servers_state_and_flags_a_live_pool_with_no_healthy_server() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b1, b2, g) = (
            Upstream::start("blue").await,
            Upstream::start("blue").await,
            Upstream::start("green").await,
        );
        let health = r#"health = { path = "/healthz", interval = "100ms", timeout = "200ms", rise = 1, fall = 1 }"#;
        let blue = format!("{}, {}", quoted(&b1), quoted(&b2));
        let proxy = Proxy::start(&shop(&blue, &quoted(&g), health));
        let c = client();

        let o = cli(&proxy, &["status"]).await;
        let out = stdout(&o);
        assert!(line_of(&out, b1.addr).contains(" ready "), "{out}");
        assert!(!out.contains(" ! "), "nothing to flag yet:\n{out}");

        g.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        until_status(&c, &proxy, |a| a["pools"]["green"]["servers"][0]["healthy"] == false).await;
        let (b1a, b2a) = (b1.addr.to_string(), b2.addr.to_string());
        for (addr, action) in [(&b1a, "drain"), (&b2a, "maint")] {
            let o = cli(&proxy, &["server", "shop", "blue", addr, action, "--force"]).await;
            assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        }

        let o = cli(&proxy, &["status"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        let out = stdout(&o);
        let drained = line_of(&out, b1.addr);
        assert!(drained.contains(" drain ") && !drained.contains("healthy"), "{out}");
        let maint = line_of(&out, b2.addr);
        assert!(maint.contains(" maint ") && !maint.contains("DOWN"), "{out}");
        assert!(line_of(&out, g.addr).contains(" down "), "{out}");
        let flags: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with('!')).collect();
        assert_eq!(flags.len(), 1, "only the live pool is flagged:\n{out}");
        assert!(flags[0].contains("blue") && flags[0].contains("no healthy server"), "{out}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_parameter_or_one_the_endpoint_does_not_take_is_refused_by_name() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&shop(&quoted(&b), &quoted(&g), ""));
        let c = client();
        for (method, path, headers, needle) in [
            (
                "POST",
                "/v1/apps/shop/flip?dry_run=maybe",
                &[][..],
                "dry_run: must be true or false",
            ),
            (
                "POST",
                "/v1/apps/shop/flip?dryrun=true",
                &[][..],
                "unknown query parameter \"dryrun\"",
            ),
            (
                "GET",
                "/v1/history?limit=all",
                &[][..],
                "limit: must be a whole number",
            ),
            (
                "POST",
                "/v1/reload?dry_run=true",
                &[][..],
                "dry_run: POST /v1/reload does not take it",
            ),
            (
                "POST",
                "/v1/apps/shop/rollout?force=true",
                &[][..],
                "force:",
            ),
            ("POST", "/v1/apps/shop/flip?limit=1", &[][..], "limit:"),
            (
                "GET",
                "/v1/status",
                &[("if-match", "0")][..],
                "If-Match: GET /v1/status does not take it",
            ),
        ] {
            let r = admin_call(&c, &proxy, method, path, "", headers).await;
            assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
            let message = r.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(
                message.contains(needle),
                "{method} {path}: {message:?} lacks {needle:?}"
            );
        }
        let s = status(&c, &proxy).await;
        assert_eq!(s["epoch"], 0, "a refused call changed something");
        let r = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rollout", "", &[]).await;
        assert_eq!(r.status, 404, "no rollout was started: {}", r.text());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_pretty_json_with_keys_in_alphabetical_order() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&shop(&quoted(&b), &quoted(&g), ""));
        let c = client();
        let rule = r#"[{"name": "t", "to": "green", "percent": 50, "header": {"name": "x-t", "value": "1"}, "user_agent": "Mobile"}]"#;
        for (method, path, body, code) in [
            ("PUT", "/v1/apps/shop/rules", rule, 200),
            ("GET", "/v1/apps/shop/rules", "", 200),
            ("POST", "/v1/apps/shop/shift", r#"{"percent": 5}"#, 200),
            ("GET", "/v1/history", "", 200),
            ("POST", "/v1/apps/shop/rollout", r#"{"steps": [50, 100], "every": "60s"}"#, 200),
            ("GET", "/v1/apps/shop/rollout", "", 200),
            ("GET", "/v1/status", "", 200),
            ("POST", "/v1/apps/shop/flip", "", 409),
            ("POST", "/v1/apps/shop/flip", "", 409),
            ("GET", "/healthz", "", 200),
        ] {
            let r = admin_call(&c, &proxy, method, path, body, &[]).await;
            assert_eq!(r.status, code, "{method} {path}: {}", r.text());
            let sorted = serde_json::to_string_pretty(&r.json()).unwrap() + "\n";
            assert_eq!(r.text(), sorted, "{method} {path}");
        }
        let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[]).await.json();
        assert_eq!(h["history"][0]["after"]["rules"][0]["user_agent"], "Mobile");
        assert!(h["history"][0]["changes"].is_array(), "{h:#}");
    })
    .await
    .unwrap();
}
