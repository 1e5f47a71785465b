//! An app's front door: `allow`/`deny` by the client's address (here
//! named by a trusted proxy's `X-Forwarded-For`), `basic_auth` from an
//! htpasswd file, and `rate_limit`.

mod support;

use support::*;

/// The config file `cutover.toml` in `dir`, with `[server]` trusting the
/// loopback proxy (the tests themselves) to name the client.
fn write_config(dir: &std::path::Path, apps: &str) -> std::path::PathBuf {
    let path = dir.join("cutover.toml");
    let toml = format!("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{apps}");
    std::fs::write(&path, toml).unwrap();
    path
}

/// `[apps.NAME]` on `host` with both colours on `up`, and `extra` keys.
fn app(name: &str, host: &str, up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[apps.{name}]\nhosts = [\"{host}\"]\n{extra}\n[apps.{name}.blue]\nservers = [\"{up}\"]\n[apps.{name}.green]\nservers = [\"{up}\"]\n"
    )
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_decide_by_the_client_behind_a_trusted_proxy_with_403() {
    let (b, _g) = blue_green().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = app(
        "office",
        "office.test",
        b.addr,
        "allow = [\"10.0.0.0/8\"]\ndeny = [\"10.1.0.0/16\"]",
    ) + &app("open", "open.test", b.addr, "");
    let proxy = Proxy::start_file(&write_config(dir.path(), &apps));
    let c = client();
    let from = |host: &'static str, ip: &'static str| [("host", host), ("x-forwarded-for", ip)];
    let url = proxy.url("/");
    assert_eq!(
        get(&c, &url, &from("office.test", "10.2.0.1")).await.status,
        200
    );
    let denied = get(&c, &url, &from("office.test", "10.1.0.1")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "forbidden\n");
    assert_eq!(
        get(&c, &url, &from("office.test", "192.0.2.1"))
            .await
            .status,
        403
    );
    // The loopback peer itself is not in `allow` either.
    assert_eq!(get(&c, &url, &[("host", "office.test")]).await.status, 403);
    // Another app has no door.
    assert_eq!(
        get(&c, &url, &from("open.test", "10.1.0.1")).await.status,
        200
    );
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["office"]["access"]["allow"][0], "10.0.0.0/8");
    assert_eq!(s["apps"]["office"]["access"]["deny"][0], "10.1.0.0/16");
    assert!(
        s["apps"]["open"].get("access").is_none(),
        "{}",
        s["apps"]["open"]
    );
    assert!(s["apps"]["open"].get("rate_limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_asks_with_401_and_keeps_the_password_from_the_upstream() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("# ops\nalice:{hash}\n"),
    )
    .unwrap();
    let apps = app(
        "ops",
        "ops.test",
        up.addr,
        "basic_auth = { realm = \"Ops only\", users_file = \"htpasswd\" }",
    ) + &app(
        "pass",
        "pass.test",
        up.addr,
        "basic_auth = { users_file = \"htpasswd\", forward = true }",
    );
    let path = write_config(dir.path(), &apps);
    let proxy = Proxy::start_file(&path);
    let c = client();
    let url = proxy.url("/");
    let asked = get(&c, &url, &[("host", "ops.test")]).await;
    assert_eq!(asked.status, 401);
    assert_eq!(
        asked.headers["www-authenticate"],
        "Basic realm=\"Ops only\""
    );
    let wrong = basic("alice", "guess");
    let wrong = get(&c, &url, &[("host", "ops.test"), ("authorization", &wrong)]).await;
    assert_eq!(wrong.status, 401);
    let nobody = basic("mallory", "s3cret");
    let nobody = get(
        &c,
        &url,
        &[("host", "ops.test"), ("authorization", &nobody)],
    )
    .await;
    assert_eq!(nobody.status, 401);
    assert_eq!(up.count(), 0, "no refused request reached the upstream");
    let right = basic("alice", "s3cret");
    for host in ["ops.test", "pass.test"] {
        let ok = get(&c, &url, &[("host", host), ("authorization", &right)]).await;
        assert_eq!(ok.status, 200, "{host}");
    }
    let seen = up.since(0);
    assert!(
        seen[0].all("authorization").is_empty(),
        "not forwarded by default"
    );
    assert_eq!(
        seen[1].all("authorization"),
        [right.as_str()],
        "forward = true"
    );
    let s = status(&c, &proxy).await;
    let auth = &s["apps"]["ops"]["access"]["basic_auth"];
    assert_eq!(auth["users"], 1);
    assert_eq!(auth["realm"], "Ops only");

    // A reload reads the file again: the new password works, the old not.
    let hash = bcrypt::hash("n3w", 4).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let old = get(&c, &url, &[("host", "ops.test"), ("authorization", &right)]).await;
    assert_eq!(old.status, 401);
    let new = basic("alice", "n3w");
    let new = get(&c, &url, &[("host", "ops.test"), ("authorization", &new)]).await;
    assert_eq!(new.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after_counts_it_and_survives_a_flip_and_a_reload() {
    let (b, _g) = blue_green().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = app(
        "api",
        "api.test",
        b.addr,
        "rate_limit = { key = \"client_ip\", rate = \"1/m\", burst = 2 }",
    );
    let path = write_config(dir.path(), &apps);
    let proxy = Proxy::start_file(&path);
    let c = client();
    let url = proxy.url("/");
    let from = |ip: &'static str| [("host", "api.test"), ("x-forwarded-for", ip)];
    for _ in 0..2 {
        assert_eq!(get(&c, &url, &from("10.0.0.1")).await.status, 200);
    }
    let limited = get(&c, &url, &from("10.0.0.1")).await;
    assert_eq!(limited.status, 429);
    let after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "Retry-After {after}");
    // Another client has a bucket of its own.
    assert_eq!(get(&c, &url, &from("10.0.0.2")).await.status, 200);
    // A flip rebuilds the routing snapshot; the limiter's state stays.
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/api/flip", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &url, &from("10.0.0.1")).await.status, 429);
    // So does a reload of the same config.
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &url, &from("10.0.0.1")).await.status, 429);
    let metrics = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    assert!(
        metrics.contains("cutover_rate_limited_total{app=\"api\"} 3"),
        "{metrics}"
    );
    let s = status(&c, &proxy).await;
    let rl = &s["apps"]["api"]["rate_limit"];
    assert_eq!(rl["limited"], 3);
    assert_eq!(rl["rate"], "1/m");
    assert_eq!(rl["key"], "client_ip");
    assert_eq!(rl["keys"], 2);

    // A reload that changes the limit starts a new table; the count of
    // refusals goes on.
    write_config(dir.path(), &apps.replace("burst = 2", "burst = 3"));
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &url, &from("10.0.0.1")).await.status, 200);
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["api"]["rate_limit"]["burst"], 3);
    assert_eq!(s["apps"]["api"]["rate_limit"]["limited"], 3);
}

#[test]
fn check_names_the_key_of_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        "alice:$apr1$abc$defghijklmnopqrstuvwxy\n",
    )
    .unwrap();
    let apps = app(
        "a",
        "a.test",
        "127.0.0.1:1".parse().unwrap(),
        "allow = [\"10.0.0.0/33\"]\nbasic_auth = { users_file = \"htpasswd\" }\n\
         rate_limit = { key = \"query:x\", rate = \"20/d\", burst = 0 }",
    ) + &app(
        "b",
        "b.test",
        "127.0.0.1:1".parse().unwrap(),
        "rate_limit = { rate = \"5/s\", bust = 1 }",
    );
    let path = write_config(dir.path(), &apps);
    let errs = cutover::Config::load(&path).unwrap_err();
    let text = errs.join("\n");
    for want in [
        "apps.a.allow[0]: not a network",
        "apps.a.basic_auth.users_file: ",
        "htpasswd:1: user \"alice\": only bcrypt",
        "apps.a.rate_limit.key: must be one of",
        "apps.a.rate_limit.rate: \"20/d\" is not a rate",
        "apps.b.rate_limit.bust: unknown field `bust`, did you mean `burst`?",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

/// `[apps.shop]` on `shop.test`, blue on `b` and green on `g`, with a
/// rule sending `X-Beta: 1` to green under its own `rate_limit`.
fn beta_rule_app(b: std::net::SocketAddr, g: std::net::SocketAddr, limit: &str) -> String {
    format!(
        "[apps.shop]\nhosts = [\"shop.test\"]\n\
         [[apps.shop.rules]]\nname = \"beta\"\nto = \"green\"\n\
         header = {{ name = \"x-beta\", value = \"1\" }}\nrate_limit = {limit}\n\
         [apps.shop.blue]\nservers = [\"{b}\"]\n[apps.shop.green]\nservers = [\"{g}\"]\n"
    )
}

/// Line `n` (from 0) of the JSON access log at `path`, once written.
async fn access_line(path: &std::path::Path, n: usize) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().nth(n) {
            return serde_json::from_str(line).unwrap();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no line {n} in:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_own_rate_limit_holds_its_requests_only_and_survives_a_reload_and_a_rule_change() {
    use std::sync::atomic::Ordering::SeqCst;
    let (b, g) = blue_green().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let limit = "{ key = \"header:x-user\", rate = \"1/m\", burst = 2 }";
    let apps = format!(
        "[log]\naccess = \"{}\"\n{}",
        log.display(),
        beta_rule_app(b.addr, g.addr, limit)
    );
    let path = write_config(dir.path(), &apps);
    let proxy = Proxy::start_file(&path);
    let c = client();
    let url = proxy.url("/");
    let beta = |user: &'static str| [("host", "shop.test"), ("x-beta", "1"), ("x-user", user)];
    let plain = [("host", "shop.test"), ("x-user", "ann")];
    for _ in 0..2 {
        assert_eq!(get(&c, &url, &beta("ann")).await.status, 200);
    }
    assert_eq!(g.requests.load(SeqCst), 2, "the rule sent them to green");
    let limited = get(&c, &url, &beta("ann")).await;
    assert_eq!(limited.status, 429);
    let after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "Retry-After {after}");
    // The app's other traffic, from the same user, is not limited…
    for _ in 0..5 {
        assert_eq!(get(&c, &url, &plain).await.status, 200);
    }
    assert_eq!(b.requests.load(SeqCst), 5);
    // …and another user of the rule has a bucket of its own.
    assert_eq!(get(&c, &url, &beta("bob")).await.status, 200);
    // The refusal is in the access log, with the rule that placed it.
    let line = access_line(&log, 2).await;
    assert_eq!(
        (line["status"].as_u64(), line["placed"].as_str()),
        (Some(429), Some("beta"))
    );

    // A reload of the same config keeps the rule's buckets.
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &url, &beta("ann")).await.status, 429);
    // So does a change of the rules at runtime that leaves this one's
    // limit alone, even moving it down the list.
    let rules = r#"[
        {"name": "mobile", "to": "green", "user_agent": "(?i)android"},
        {"name": "beta", "to": "green", "header": {"name": "x-beta", "value": "1"},
         "rate_limit": {"key": "header:x-user", "rate": "1/m", "burst": 2}}
    ]"#;
    let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", rules, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &url, &beta("ann")).await.status, 429);
    let metrics = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    assert!(
        metrics.contains("cutover_rate_limited_total{app=\"shop\"} 3"),
        "{metrics}"
    );
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["rules"][1]["rate_limit"]["rate"], "1/m");
    // One table all along: its refusals and its two keys (ann, bob).
    let table = &s["apps"]["shop"]["rule_rate_limits"]["beta"];
    assert_eq!(
        (table["limited"].as_u64(), table["keys"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(table["key"], "header:x-user");

    // A bad limit through the API is refused naming the key, and changes
    // nothing; so is a key the limit does not know.
    for (bad, names) in [
        (r#"{"rate": "fast"}"#, "apps.shop.rules[0].rate_limit.rate"),
        (
            r#"{"rate": "1/s", "key": "query:q"}"#,
            "apps.shop.rules[0].rate_limit.key",
        ),
        (r#"{"rate": "1/s", "bust": 3}"#, "bust"),
    ] {
        let body = format!(r#"[{{"name": "x", "to": "green", "all": true, "rate_limit": {bad}}}]"#);
        let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", &body, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains(names), "{bad}: {}", r.text());
    }
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["rules"][1]["name"], "beta");
    assert_eq!(get(&c, &url, &beta("ann")).await.status, 429);

    // A new limit for the rule is a new table: ann may come again.
    let rules = rules.replace("\"burst\": 2", "\"burst\": 5");
    let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", &rules, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &url, &beta("ann")).await.status, 200);
}

#[test]
fn check_names_the_key_of_a_rules_rate_limit_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let up: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let bad_rate = beta_rule_app(up, up, "{ rate = \"20/d\", burst = 0 }");
    let path = write_config(dir.path(), &bad_rate);
    let text = cutover::Config::load(&path).unwrap_err().join("\n");
    for want in [
        "apps.shop.rules[0].rate_limit.rate: \"20/d\" is not a rate",
        "apps.shop.rules[0].rate_limit.burst: ",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let typo = beta_rule_app(up, up, "{ rate = \"20/s\", bust = 1 }");
    let path = write_config(dir.path(), &typo);
    let text = cutover::Config::load(&path).unwrap_err().join("\n");
    assert!(
        text.contains("apps.shop.rules[0].rate_limit.bust: unknown field `bust`"),
        "{text}"
    );
}
