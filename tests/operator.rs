//! An operator's day through the real `cutover` binary: exit codes a
//! script can rely on, commands that refuse typos, drift between the file
//! and the running state, completions and the man page.

mod support;

use std::process::Output;

use support::*;

/// Run the CLI against `proxy`'s admin API (off the async runtime: the
/// binary blocks until it has its answer).
async fn cli(proxy: &Proxy, args: &[&str]) -> Output {
    let admin = format!("http://{}", proxy.admin);
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--admin".to_string(), admin]);
    run(all).await
}

async fn run(args: Vec<String>) -> Output {
    run_cli(args).await
}

/// Every green server fails its health check; wait (bounded) until shop's
/// status says so.
async fn green_dies(g: &Upstream, c: &Client, proxy: &Proxy) {
    g.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while status(c, proxy).await["apps"]["shop"]["pools"]["green"]["servers"][0]["healthy"] == true
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "green never went down"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// `rules shop add` of a header rule to green.
const ADD_TESTERS: [&str; 9] = [
    "rules",
    "shop",
    "add",
    "--name",
    "testers",
    "--to",
    "green",
    "--header",
    "x-preview=1",
];

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn two_apps(b: &Upstream, g: &Upstream, extra: &str) -> String {
    format!(
        r#"
{extra}
[apps.shop]
hosts = ["shop.test"]
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{g}"]
health = {{ path = "/healthz", interval = "100ms", timeout = "200ms", rise = 1, fall = 1 }}
[apps.api]
hosts = ["api.test"]
[apps.api.blue]
servers = ["{b}"]
[apps.api.green]
servers = ["{g}"]
"#,
        b = b.addr,
        g = g.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_has_its_own_exit_code() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));

        // 0: done; --json prints the API's answer.
        let o = cli(&proxy, &["flip", "shop", "--json"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["apps"]["shop"]["live"], "green");
        let epoch = v["epoch"].as_u64().unwrap();

        // 3: a stale --if-match (412).
        let stale = (epoch - 1).to_string();
        let o = cli(&proxy, &["flip", "shop", "--if-match", &stale]).await;
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let now = epoch.to_string();
        let o = cli(&proxy, &["rollback", "shop", "--if-match", &now]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));

        // 2: refused by the gate (409) — green is dead.
        let c = client();
        green_dies(&g, &c, &proxy).await;
        let o = cli(&proxy, &["flip", "shop"]).await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--force"),
            "{}",
            text(&o)
        );
        let o = cli(&proxy, &["flip", "shop", "--dry-run", "--force"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));

        // 1: failed (404 here), or nothing answers.
        let o = cli(&proxy, &["flip", "nosuchapp"]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let nobody = format!("http://127.0.0.1:{}", free_port());
        let o = run(vec!["status".into(), "--admin".into(), nobody]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));

        // 64: usage — an unknown command, an unknown rules action, a flip
        // of several apps that names none.
        for args in [
            &["frobnicate"][..],
            &["rules", "shop", "delete", "testers"],
            &["rules", "shop", "rm", "testers"],
            &["rules", "shop", "lsit"],
            &["flip"],
        ] {
            let o = cli(&proxy, args).await;
            assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
        }
        // `flip --all` would send shop's traffic to dead green too: refused.
        let o = cli(&proxy, &["flip", "--all"]).await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        g.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_exits_4_and_a_read_only_path_is_not_a_change() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let (b, g) = blue_green().await;
        let extra = format!("[admin]\ntoken_file = \"{}\"\n", token.display());
        let proxy = Proxy::start(&two_apps(&b, &g, &extra));
        let wrong = dir.path().join("wrong.token");
        std::fs::write(&wrong, "guess\n").unwrap();
        let o = cli(&proxy, &["status", "--token-file", wrong.to_str().unwrap()]).await;
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        let o = cli(&proxy, &["status", "--token-file", token.to_str().unwrap()]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_refuse_typos_and_conditionless_rules_unless_meant() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));
        let o = cli(
            &proxy,
            &[
                "rules", "shop", "add", "--name", "everyone", "--to", "green",
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("all = true"),
            "{}",
            text(&o)
        );

        // --dry-run shows and changes nothing.
        let o = cli(&proxy, &[&ADD_TESTERS[..], &["--dry-run"]].concat()).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["rules", "shop", "list", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["rules"], serde_json::json!([]), "{v}");

        let o = cli(
            &proxy,
            &[
                "rules",
                "shop",
                "add",
                "--name",
                "canary",
                "--to",
                "green",
                "--percent",
                "5",
                "--every-request",
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["rules", "shop", "remove", "canary"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["rules", "shop", "remove", "canary"]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_add_gives_a_rule_its_own_rate_limit_and_a_bad_one_is_refused_by_key() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));
        let limited = [
            &ADD_TESTERS[..],
            &[
                "--rate-limit",
                "1/m",
                "--rate-burst",
                "1",
                "--rate-key",
                "header:x-user",
            ],
        ]
        .concat();
        let bad: Vec<&str> = (limited.iter())
            .map(|a| if *a == "1/m" { "fast" } else { a })
            .collect();
        let o = cli(&proxy, &bad).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("apps.shop.rules[0].rate_limit.rate"),
            "{}",
            text(&o)
        );
        let o = cli(&proxy, &limited).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["rules", "shop", "list"]).await;
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("rate_limit 1/m burst 1 by header:x-user"),
            "{}",
            text(&o)
        );
        // The rule's requests are held to it; the app's others are not.
        let c = client();
        let url = proxy.url("/");
        let tester = [("host", "shop.test"), ("x-preview", "1"), ("x-user", "ann")];
        assert_eq!(get(&c, &url, &tester).await.status, 200);
        assert_eq!(get(&c, &url, &tester).await.status, 429);
        let other = [("host", "shop.test"), ("x-user", "ann")];
        assert_eq!(get(&c, &url, &other).await.status, 200);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_and_reload_show_and_settle_drift_between_the_file_and_the_running_state() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        let (b, g) = blue_green().await;
        std::fs::write(&path, two_apps(&b, &g, "")).unwrap();
        let proxy = Proxy::start_file(&path);
        let file = path.to_str().unwrap();

        let o = cli(&proxy, &["diff", "-c", file]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("matches"),
            "{}",
            text(&o)
        );

        let o = cli(&proxy, &ADD_TESTERS).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["shift", "api", "10"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));

        let o = cli(&proxy, &["diff", "-c", file]).await;
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            out.contains("shop: rule \"testers\": added at runtime"),
            "{}",
            text(&o)
        );
        assert!(
            out.contains("api: standby_percent: 10 (file: 0)"),
            "{}",
            text(&o)
        );
        let o = cli(&proxy, &["diff", "-c", file, "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["differs"], true);

        // The runtime rule survives a reload of the unchanged file; the
        // reload says the file's rules differ.
        let o = cli(&proxy, &["reload"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("shop: the file's rules differ"),
            "{}",
            text(&o)
        );
        let o = cli(&proxy, &["rules", "shop", "list", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["rules"][0]["name"], "testers");

        // Told to, the file's (empty) rules replace the runtime ones.
        let o = cli(&proxy, &["reload", "--take-rules-from-file"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["rules", "shop", "list", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["rules"], serde_json::json!([]));
        let o = cli(&proxy, &["history", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let last = v["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["kind"], "rules-from-file", "{last}");
    })
    .await
    .unwrap();
}

/// `history --json`: how many entries.
async fn history_len(proxy: &Proxy) -> usize {
    let o = cli(proxy, &["history", "--json", "--limit", "100"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["history"].as_array().unwrap().len()
}

/// `cli` with `--json`: the exit code and the answer.
async fn cli_json(proxy: &Proxy, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let o = cli(proxy, &all).await;
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    (o.status.code(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_to_a_colour_sets_it_once_and_then_changes_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));

        let (code, v) = cli_json(&proxy, &["flip", "shop", "--to", "green"]).await;
        assert_eq!(code, Some(0));
        assert_eq!(v["apps"]["shop"]["live"], "green");
        assert_eq!(v["changed"], serde_json::json!(["shop"]));
        let epoch = v["epoch"].as_u64().unwrap();
        let entries = history_len(&proxy).await;

        // Again: exit 0, nothing changed, no new epoch, no history entry.
        let (code, v) = cli_json(&proxy, &["flip", "shop", "--to", "green"]).await;
        assert_eq!(code, Some(0));
        assert_eq!(v["apps"]["shop"]["live"], "green");
        assert_eq!(v["changed"], serde_json::json!([]));
        assert_eq!(v["epoch"], epoch);
        assert_eq!(history_len(&proxy).await, entries);
        let o = cli(&proxy, &["flip", "shop", "--to", "green"]).await;
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.starts_with("nothing to change"), "{}", text(&o));

        // Live green with a split is not "already green": the split goes.
        let (code, _) = cli_json(&proxy, &["shift", "shop", "10"]).await;
        assert_eq!(code, Some(0));
        let (code, v) = cli_json(&proxy, &["flip", "shop", "--to", "green"]).await;
        assert_eq!(code, Some(0));
        assert_eq!(v["changed"], serde_json::json!(["shop"]));
        assert_eq!(v["apps"]["shop"]["standby_percent"], 0.0);

        // Every app: only those not there yet change, in one epoch.
        let (code, v) = cli_json(&proxy, &["flip", "--all", "--to", "green"]).await;
        assert_eq!(code, Some(0));
        assert_eq!(v["changed"], serde_json::json!(["api"]));
        let (_, again) = cli_json(&proxy, &["flip", "--all", "--to", "green"]).await;
        assert_eq!(again["changed"], serde_json::json!([]));
        assert_eq!(again["epoch"], v["epoch"]);

        // Without --to, flip still toggles; a colour that is none is usage.
        let (_, v) = cli_json(&proxy, &["flip", "shop"]).await;
        assert_eq!(v["apps"]["shop"]["live"], "blue");
        let o = cli(&proxy, &["flip", "shop", "--to", "purple"]).await;
        assert_eq!(o.status.code(), Some(64), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("purple"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_to_beside_force_and_dry_run_and_refuses_a_colour_that_is_none() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));
        let c = client();
        let post = |path: &'static str, body: &'static str| {
            let (c, proxy) = (&c, &proxy);
            async move { admin_call(c, proxy, "POST", path, body, &[]).await }
        };

        // A dry run says what would change, and changes nothing.
        let r = post("/v1/apps/shop/flip", r#"{"to":"green","dry_run":true}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["apps"]["shop"]["live"], "green");
        assert_eq!(status(&c, &proxy).await["apps"]["shop"]["live"], "blue");

        let r = post("/v1/apps/shop/flip", r#"{"to":"green"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let epoch = r.json()["epoch"].clone();
        let r = post("/v1/apps/shop/flip", r#"{"to":"green"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["epoch"], epoch, "a second call bumps no epoch");
        assert_eq!(r.json()["changed"], serde_json::json!([]));

        // Every app to blue: shop changes, api is there already.
        let r = post("/v1/flip", r#"{"to":"blue"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["changed"], serde_json::json!(["shop"]));

        // A colour that is none, and `to` where it means nothing: 400.
        let r = post("/v1/apps/shop/flip", r#"{"to":"purple"}"#).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("purple"), "{}", r.text());
        let r = post("/v1/apps/shop/rollback", r#"{"to":"green"}"#).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("to: only flip"), "{}", r.text());
        let r = post("/v1/apps/shop/shift", r#"{"percent":5,"to":"green"}"#).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(status(&c, &proxy).await["apps"]["shop"]["live"], "blue");
    })
    .await
    .unwrap();
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let out = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(args)
            .output()
            .unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let o = out(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("cutover") && script.contains("rollback"),
            "{shell}: {script}"
        );
    }
    let o = out(&["man"]);
    assert!(o.status.success());
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert_eq!(out(&["completions", "tcsh"]).status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_when_the_running_daemon_differs_from_the_file() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        let (b, g) = blue_green().await;
        let (listen, admin) = (free_port(), free_port());
        let extra = format!("[server]\nlisten = [\"127.0.0.1:{listen}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
        std::fs::write(&path, two_apps(&b, &g, &extra)).unwrap();
        let file = path.to_str().unwrap().to_string();
        struct Killed(std::process::Child);
        impl Drop for Killed {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _daemon = Killed(
            std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args(["run", "-c", &file])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let admin_url = format!("http://127.0.0.1:{admin}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", admin)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the daemon never listened");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let o = run(vec!["check".into(), "-c".into(), file.clone()]).await;
        assert!(String::from_utf8_lossy(&o.stdout).contains("matches this file"), "{}", text(&o));
        let o = run(vec!["shift".into(), "api".into(), "5".into(), "--admin".into(), admin_url]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = run(vec!["check".into(), "-c".into(), file]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(out.contains("runtime state differs") && out.contains("api: standby_percent: 5"), "{}", text(&o));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_outage_cutover_rollback_brings_users_back_without_force() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));
        // A rule to green, then green made live; then every green server dies.
        let o = cli(&proxy, &ADD_TESTERS).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["flip", "shop"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let c = client();
        green_dies(&g, &c, &proxy).await;
        let shop = [("host", "shop.test")];
        assert_eq!(get(&c, &proxy.url("/"), &shop).await.status, 503);
        // The way back passes the gate without --force.
        let o = cli(&proxy, &["rollback", "shop"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(get(&c, &proxy.url("/"), &shop).await.text(), "blue");
        g.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_of_a_dead_green_is_refused_at_once_unless_forced() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));
        let c = client();
        green_dies(&g, &c, &proxy).await;

        let o = cli(&proxy, &["rollout", "shop", "start", "--every", "1s"]).await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("green has no healthy server") && text(&o).contains("--force"),
            "{}",
            text(&o)
        );
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollout", "{}", &[]).await;
        assert_eq!(r.status, 409, "{}", r.text());
        let r = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rollout", "", &[]).await;
        assert_eq!(r.status, 404, "nothing started: {}", r.text());

        // Forced, it starts, and its preflight fails once a step passed.
        let o = cli(
            &proxy,
            &[
                "rollout", "shop", "start", "--every", "1s", "--force", "--wait",
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("forced: green had no healthy server"), "{out}");
        assert!(
            out.contains("preflight -> failed") && out.contains("green has no healthy server"),
            "{out}"
        );
        let o = cli(&proxy, &["rollout", "shop", "status", "--force"]).await;
        assert_eq!(o.status.code(), Some(64), "--force goes with start only");
        g.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_set_changes_one_rules_percent_in_place() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&two_apps(&b, &g, ""));
        let c = client();
        let o = cli(&proxy, &[&ADD_TESTERS[..], &["--percent", "5"]].concat()).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let canary = r#"[{"name": "testers", "to": "green", "percent": 5, "header": {"name": "x-preview", "value": "1"}},
                         {"name": "canary", "to": "green", "percent": 1, "all": true}]"#;
        let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", canary, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());

        let o = cli(
            &proxy,
            &["rules", "shop", "set", "testers", "--percent", "25"],
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let rules = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rules", "", &[])
            .await
            .json();
        let rule = &rules["rules"][0];
        assert_eq!(rule["percent"], 25.0, "{rules}");
        assert_eq!(rule["to"], "green", "the rest of the rule is as it was");
        assert_eq!(rule["header"]["name"], "x-preview", "{rules}");
        assert_eq!(rules["rules"][1]["name"], "canary", "the other rules stay");
        assert_eq!(rules["rules"][1]["percent"], 1.0, "{rules}");
        let h = admin_call(&c, &proxy, "GET", "/v1/history?limit=1", "", &[])
            .await
            .json();
        assert_eq!(h["history"][0]["kind"], "rules", "{h}");

        // A dry run shows the change and makes none; a stale epoch is refused.
        let o = cli(
            &proxy,
            &[
                "rules",
                "shop",
                "set",
                "testers",
                "--percent",
                "75",
                "--dry-run",
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("dry run, unchanged"), "{}", text(&o));
        let now = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rules", "", &[])
            .await
            .json();
        assert_eq!(
            now["rules"][0]["percent"], 25.0,
            "a dry run changes nothing"
        );
        let o = cli(
            &proxy,
            &[
                "rules",
                "shop",
                "set",
                "testers",
                "--percent",
                "50",
                "--if-match",
                "1",
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let epoch = rules["epoch"].to_string();
        let r = admin_call(
            &c,
            &proxy,
            "PATCH",
            "/v1/apps/shop/rules/testers",
            r#"{"percent": 50}"#,
            &[("if-match", &epoch)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["apps"]["shop"]["rules"][0]["percent"], 50.0);

        // Unknown rule: 404 (exit 1); a percent out of range: 400; no percent: 400.
        let r = admin_call(
            &c,
            &proxy,
            "PATCH",
            "/v1/apps/shop/rules/nope",
            r#"{"percent": 5}"#,
            &[],
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.text());
        let o = cli(&proxy, &["rules", "shop", "set", "nope", "--percent", "5"]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        for (body, needle) in [
            (r#"{"percent": 150}"#, "percent"),
            (r#"{"percent": -1}"#, "percent"),
            ("{}", "percent: missing"),
            (r#"{"percent": 5, "to": "blue"}"#, "to:"),
        ] {
            let r = admin_call(
                &c,
                &proxy,
                "PATCH",
                "/v1/apps/shop/rules/testers",
                body,
                &[],
            )
            .await;
            assert_eq!(r.status, 400, "{body}: {}", r.text());
            assert!(r.text().contains(needle), "{body}: {}", r.text());
        }
        let o = cli(
            &proxy,
            &[
                "rules",
                "shop",
                "set",
                "testers",
                "--percent",
                "5",
                "--to",
                "blue",
            ],
        )
        .await;
        assert_eq!(
            o.status.code(),
            Some(64),
            "set changes the percent only: {}",
            text(&o)
        );
        let rules = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rules", "", &[])
            .await
            .json();
        assert_eq!(
            rules["rules"][0]["percent"], 50.0,
            "refusals changed nothing"
        );
    })
    .await
    .unwrap();
}
