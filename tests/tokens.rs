//! Admin tokens with roles and the audit trail: who (the token's name,
//! never the client's claim), why (`x-cutover-reason`, `--reason`) and
//! what changed, in words — against the real proxy, the real CLI binary
//! and `cutover check`.

mod support;

use std::path::Path;
use std::process::Output;

use support::*;

const OPERATE: &str = "ci-secret-0123";
const READ: &str = "prom-secret-4567";
const LEGACY: &str = "legacy-secret-89";

/// A config file in `dir` with the legacy `token_file` (`default`), a read
/// token `prometheus` and an operate token `ci`, each in its own file.
fn write_config(dir: &Path, b: &Upstream, g: &Upstream) -> std::path::PathBuf {
    std::fs::write(dir.join("admin.token"), format!("{LEGACY}\n")).unwrap();
    std::fs::write(dir.join("prom.token"), format!("  {READ}\n")).unwrap();
    std::fs::write(dir.join("ci.token"), OPERATE).unwrap();
    let path = dir.join("cutover.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[admin]
token_file = "admin.token"

[[admin.tokens]]
name = "prometheus"
role = "read"
file = "prom.token"

[[admin.tokens]]
name = "ci"
role = "operate"
file = "ci.token"

[apps.shop]
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{g}"]
[[apps.shop.rules]]
name = "canary"
to = "green"
percent = 5
header = {{ name = "x-canary", value = "1" }}
"#,
            b = b.addr,
            g = g.addr
        ),
    )
    .unwrap();
    path
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

type Http =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

async fn call(c: &Http, proxy: &Proxy, method: &str, path: &str, body: &str, token: &str) -> Reply {
    let auth = bearer(token);
    admin_call(c, proxy, method, path, body, &[("authorization", &auth)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_reads_everything_and_changes_nothing_an_operate_token_changes() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let (b, g) = blue_green().await;
        let proxy = Proxy::start_file(&write_config(dir.path(), &b, &g));
        let c = client();

        // No token, or one that is none of them: 401, /healthz aside.
        assert_eq!(admin_call(&c, &proxy, "GET", "/healthz", "", &[]).await.status, 200);
        for (method, path) in [("GET", "/v1/status"), ("GET", "/metrics"), ("POST", "/v1/apps/shop/flip")] {
            let r = admin_call(&c, &proxy, method, path, "", &[]).await;
            assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
            let r = call(&c, &proxy, method, path, "", "guess").await;
            assert_eq!(r.status, 401, "{method} {path} with a wrong token");
        }
        // A prefix or an extension of a real secret is no secret.
        let short = &READ[..READ.len() - 1];
        assert_eq!(call(&c, &proxy, "GET", "/v1/status", "", short).await.status, 401);
        let long = format!("{READ}x");
        assert_eq!(call(&c, &proxy, "GET", "/v1/status", "", &long).await.status, 401);

        // The read token (its file's whitespace trimmed) reads everything.
        let r = call(&c, &proxy, "GET", "/metrics", "", READ).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("cutover_"), "{}", r.text());
        for path in ["/v1/status", "/v1/history", "/v1/apps/shop/rules", "/healthz"] {
            let r = call(&c, &proxy, "GET", path, "", READ).await;
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        }
        // ... and changes nothing, whatever the change.
        for (method, path, body) in [
            ("POST", "/v1/apps/shop/flip", ""),
            ("POST", "/v1/flip", ""),
            ("POST", "/v1/apps/shop/shift", r#"{"percent": 50}"#),
            ("POST", "/v1/apps/shop/rollback", ""),
            ("POST", "/v1/rollback", ""),
            ("PUT", "/v1/apps/shop/rules", "[]"),
            ("DELETE", "/v1/apps/shop/rules/canary", ""),
            ("POST", &format!("/v1/apps/shop/servers/{}", b.addr), r#"{"state": "drain"}"#),
            ("POST", "/v1/reload", ""),
        ] {
            let r = call(&c, &proxy, method, path, body, READ).await;
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            assert_eq!(
                r.json()["error"],
                "token \"prometheus\" has role read: changes need an operate token",
                "{method} {path}"
            );
        }
        let s = call(&c, &proxy, "GET", "/v1/status", "", READ).await.json();
        assert_eq!(s["epoch"], 0, "a refused change changed nothing");
        assert_eq!(s["apps"]["shop"]["live"], "blue");
        assert_eq!(s["apps"]["shop"]["rules"].as_array().unwrap().len(), 1);
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "blue");

        // The operate token flips; the client's claim of who it is and a
        // reason: the history records the token's name, and the reason.
        let auth = bearer(OPERATE);
        let r = admin_call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/flip",
            "",
            &[
                ("authorization", &auth),
                ("x-cutover-actor", "mallory"),
                ("x-cutover-reason", "  release 1.4.2 (ticket OPS-12)  "),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
        // The legacy token_file is the operate token `default`.
        let r = call(&c, &proxy, "POST", "/v1/apps/shop/shift", r#"{"percent": 10}"#, LEGACY).await;
        assert_eq!(r.status, 200, "{}", r.text());

        // A reason of other bytes than printable ASCII keeps only those,
        // cut to 200 characters (a raw request: no client library sends
        // such bytes).
        let mut head = format!(
            "POST /v1/apps/shop/shift HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {OPERATE}\r\n\
             Content-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\nx-cutover-reason: ",
            admin = proxy.admin
        )
        .into_bytes();
        head.extend_from_slice(b"caf\xc3\xa9\tok ");
        head.extend_from_slice("y".repeat(300).as_bytes());
        head.extend_from_slice(b"\r\n\r\n{\"percent\": 20}");
        let answer = raw_exchange(proxy.admin, &head, std::time::Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let h = call(&c, &proxy, "GET", "/v1/history", "", READ).await.json();
        let list = h["history"].as_array().unwrap();
        assert_eq!(list.len(), 3, "{h:#}");
        assert_eq!(list[0]["actor"], "ci", "never the client's x-cutover-actor");
        assert_eq!(list[0]["reason"], "release 1.4.2 (ticket OPS-12)");
        assert_eq!(list[0]["changes"], serde_json::json!(["live blue -> green"]));
        assert_eq!(list[1]["actor"], "default");
        assert!(list[1].get("reason").is_none(), "no reason given: {}", list[1]);
        assert_eq!(list[1]["changes"], serde_json::json!(["split 0% -> 10%"]));
        let reason = list[2]["reason"].as_str().unwrap();
        assert_eq!(reason.len(), 200, "{reason}");
        assert!(reason.starts_with("cafok yyy"), "{reason}");
        assert_eq!(list[2]["actor"], "ci");
        // A spoofed actor is not recorded anywhere.
        assert!(!h.to_string().contains("mallory"), "{h}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_rotated_token() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let (b, g) = blue_green().await;
        let proxy = Proxy::start_file(&write_config(dir.path(), &b, &g));
        let c = client();
        std::fs::write(dir.path().join("ci.token"), "rotated-secret-01\n").unwrap();
        let r = call(&c, &proxy, "POST", "/v1/reload", "", OPERATE).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            call(&c, &proxy, "GET", "/v1/status", "", OPERATE)
                .await
                .status,
            401
        );
        let r = call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/flip",
            "",
            "rotated-secret-01",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let h = call(&c, &proxy, "GET", "/v1/history", "", READ)
            .await
            .json();
        assert_eq!(h["history"][0]["actor"], "ci");
    })
    .await
    .unwrap();
}

/// `cutover ARGS --admin URL` off the runtime, without the caller's
/// CUTOVER_* variables.
async fn cli(proxy: &Proxy, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--admin".to_string(), format!("http://{}", proxy.admin)]);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(&all)
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_TOKEN")
            .env("USER", "mallory")
            .output()
            .expect("run cutover")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_records_its_token_and_reason_and_history_says_what_changed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let (b, g) = blue_green().await;
        let config = write_config(dir.path(), &b, &g);
        let proxy = Proxy::start_file(&config);
        let c = client();
        let (ci, prom) = (dir.path().join("ci.token"), dir.path().join("prom.token"));
        let (ci, prom) = (ci.to_str().unwrap(), prom.to_str().unwrap());

        // A read token cannot flip: exit 4, the role named, nothing changed.
        let o = cli(&proxy, &["flip", "shop", "--token-file", prom]).await;
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("has role read"), "{}", text(&o));
        let o = cli(&proxy, &["status", "--token-file", prom, "--json"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((v["epoch"].as_u64(), v["apps"]["shop"]["live"].as_str()), (Some(0), Some("blue")));
        // No token at all: 401, exit 4 too.
        let o = cli(&proxy, &["status"]).await;
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));

        let o = cli(&proxy, &["flip", "shop", "--token-file", ci, "--reason", "release 1.4.2"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = cli(&proxy, &["shift", "shop", "10", "--token-file", ci, "--reason", "warm up"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        // With -c FILE the CLI takes the file's `default` token.
        let file = config.to_str().unwrap();
        let o = cli(
            &proxy,
            &[
                "rules", "shop", "add", "--name", "testers", "--to", "green", "--header",
                "x-preview=1", "-c", file, "--reason", "QA from today",
            ],
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        // One rule's share changed, through the API.
        let rules = serde_json::json!([
            {"name": "canary", "to": "green", "percent": 20, "header": {"name": "x-canary", "value": "1"}},
            {"name": "testers", "to": "green", "header": {"name": "x-preview", "value": "1"}},
        ]);
        let r = call(&c, &proxy, "PUT", "/v1/apps/shop/rules", &rules.to_string(), OPERATE).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let o = cli(&proxy, &["rules", "shop", "remove", "canary", "--token-file", ci]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let addr = b.addr.to_string();
        let o = cli(
            &proxy,
            &["server", "shop", "blue", &addr, "drain", "--token-file", ci, "--force", "--reason", "kernel update"],
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        // An unprintable reason is refused before anything is sent.
        let o = cli(&proxy, &["flip", "shop", "--token-file", ci, "--reason", "caf\u{e9}"]).await;
        assert_eq!(o.status.code(), Some(64), "{}", text(&o));

        let o = cli(&proxy, &["history", "--token-file", prom]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        let want: [&[&str]; 6] = [
            &["flip", " ci ", "live blue -> green", "reason: \"release 1.4.2\""],
            &["shift", " ci ", "split 0% -> 10%", "reason: \"warm up\""],
            &["rules", " default ", "rules: added \"testers\" (header x-preview=1 -> green)", "reason: \"QA from today\""],
            &["rules", " ci ", "rules: \"canary\" 5% -> 20%"],
            &["rules", " ci ", "rules: removed \"canary\""],
            &["server", " ci ", &format!("server blue/{addr} ready -> drain"), "(forced)", "reason: \"kernel update\""],
        ];
        for (line, words) in lines.iter().zip(want) {
            for w in words {
                assert!(line.contains(w), "{w:?} not in {line:?}\n{out}");
            }
        }
        assert!(!out.contains("mallory"), "the client's $USER is no actor: {out}");
        assert!(!lines[3].contains("reason"), "{}", lines[3]);

        let o = cli(&proxy, &["history", "--json", "--token-file", prom]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let list = v["history"].as_array().unwrap();
        assert_eq!(list[0]["actor"], "ci");
        assert_eq!(list[0]["reason"], "release 1.4.2");
        assert_eq!(list[2]["actor"], "default");
        assert_eq!(
            list[2]["changes"],
            serde_json::json!(["rules: added \"testers\" (header x-preview=1 -> green)"])
        );
        assert_eq!(list[4]["changes"], serde_json::json!(["rules: removed \"canary\""]));

        // A reload takes --reason too (recorded when it changes rules).
        let o = cli(&proxy, &["reload", "--token-file", ci, "--reason", "file edited"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    })
    .await
    .unwrap();
}

// ---- `cutover check` and `cutover run` on token settings ----

fn cutover(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.args(args).env_remove("CUTOVER_TEST_UNSET_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cutover")
}

const APP: &str = r#"
[apps.shop]
[apps.shop.blue]
servers = ["127.0.0.1:9001"]
[apps.shop.green]
servers = ["127.0.0.1:9002"]
"#;

fn check(dir: &Path, admin: &str) -> (Option<i32>, String) {
    let path = dir.join("cutover.toml");
    std::fs::write(&path, format!("{admin}\n{APP}")).unwrap();
    let o = cutover(&["check", "-c", path.to_str().unwrap()], &[]);
    (o.status.code(), text(&o))
}

#[test]
fn check_reads_every_token_file_and_names_each_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ci.token"), "ci-secret\n").unwrap();
    std::fs::write(d.join("empty.token"), "\n  \n").unwrap();

    // A missing token file: exit 64, the key and the file named.
    let missing = d.join("nope.token");
    let (code, out) = check(
        d,
        "[admin]\n[[admin.tokens]]\nname = \"ci\"\nrole = \"operate\"\nfile = \"nope.token\"\n",
    );
    assert_eq!(code, Some(64), "{out}");
    let want = format!(
        "admin.tokens[0].file: cannot read {}: No such file or directory",
        missing.display()
    );
    assert!(out.contains(&want), "{want:?} not in {out}");

    // The legacy token_file is read by check too, as run reads it.
    let (code, out) = check(d, "[admin]\ntoken_file = \"nope.token\"\n");
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains(&format!(
            "admin.token_file: cannot read {}",
            missing.display()
        )),
        "{out}"
    );

    // Every other mistake at once, each by its key.
    let (code, out) = check(
        d,
        r#"[admin]
token_file = "ci.token"
[[admin.tokens]]
name = "ci"
role = "admin"
file = "empty.token"
[[admin.tokens]]
name = "ci"
role = "read"
env = "X"
file = "ci.token"
[[admin.tokens]]
name = "default"
role = "read"
env = "CUTOVER_TEST_SOME_TOKEN"
[[admin.tokens]]
name = "has space"
[[admin.tokens]]
name = "local"
role = "read"
file = "ci.token"
[[admin.tokens]]
name = "ops"
role = "operate"
file = "ci.token"
"#,
    );
    assert_eq!(code, Some(64), "{out}");
    let empty = d.join("empty.token");
    for want in [
        r#"admin.tokens[0].role: must be "read" or "operate", got "admin""#,
        &format!("admin.tokens[0].file: {} is empty", empty.display()),
        r#"admin.tokens[1].name: "ci" is already the name of admin.tokens[0]"#,
        "admin.tokens[1]: give file or env, not both",
        r#"admin.tokens[2].name: "default" is already the name of the token of admin.token_file"#,
        r#"admin.tokens[3].name: "has space": a token name is"#,
        "admin.tokens[3].role: missing",
        "admin.tokens[3]: give file or env",
        r#"admin.tokens[4].name: "local" is reserved"#,
        // Same file, same secret: the history could not tell them apart.
        "admin.tokens[5].file: token \"ops\" has the same secret as token \"default\" (admin.token_file)",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }

    // A non-loopback admin listener needs a token; one in
    // [[admin.tokens]] does.
    let (code, out) = check(d, "[admin]\nlisten = \"0.0.0.0:19901\"\n");
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("admin.listen: 0.0.0.0:19901 is not a loopback address"),
        "{out}"
    );
    let (code, out) = check(
        d,
        "[admin]\nlisten = \"0.0.0.0:19901\"\n[[admin.tokens]]\nname = \"ci\"\nrole = \"operate\"\nfile = \"ci.token\"\n",
    );
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn check_warns_of_tokens_in_clear_off_loopback_and_reads_the_admin_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ci.token"), "ci-secret\n").unwrap();
    let ca = TestCa::new();
    ca.issue(d, "admin", &["admin.internal"]);
    let token = "[[admin.tokens]]\nname = \"ci\"\nrole = \"operate\"\nfile = \"ci.token\"\n";
    let warning = "warning: admin.listen: 0.0.0.0:19901 is not a loopback address and the admin API speaks clear HTTP";

    // A token on a clear-HTTP listener others can reach: a warning, exit 0.
    let (code, out) = check(d, &format!("[admin]\nlisten = \"0.0.0.0:19901\"\n{token}"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(warning), "{out}");
    assert!(out.contains("admin.tls_cert_file"), "{out}");
    // Over TLS, or on loopback, none.
    let tls = "tls_cert_file = \"admin.pem\"\ntls_key_file = \"admin.key\"\n";
    let (code, out) = check(
        d,
        &format!("[admin]\nlisten = \"0.0.0.0:19901\"\n{tls}{token}"),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
    let (code, out) = check(d, &format!("[admin]\n{token}"));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");

    // Both files or neither; each read, and a key must match its certificate.
    ca.issue(d, "other", &["other.internal"]);
    for (admin, want) in [
        (
            "tls_cert_file = \"admin.pem\"",
            "admin.tls_key_file: missing",
        ),
        (
            "tls_key_file = \"admin.key\"",
            "admin.tls_cert_file: missing",
        ),
        (
            "tls_cert_file = \"nope.pem\"\ntls_key_file = \"admin.key\"",
            "admin.tls_cert_file: ",
        ),
        (
            "tls_cert_file = \"admin.pem\"\ntls_key_file = \"other.key\"",
            "admin.tls_key_file: ",
        ),
    ] {
        let (code, out) = check(d, &format!("[admin]\n{admin}\n"));
        assert_eq!(code, Some(64), "{admin}: {out}");
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    let (_, out) = check(
        d,
        "[admin]\ntls_cert_file = \"admin.pem\"\ntls_key_file = \"other.key\"\n",
    );
    assert!(out.contains("does not match the certificate"), "{out}");
    let (_, out) = check(
        d,
        "[admin]\ntls_cert_file = \"nope.pem\"\ntls_key_file = \"admin.key\"\n",
    );
    assert!(out.contains("nope.pem: cannot read"), "{out}");

    // An upgrade_binary that is not there (yet) is a warning.
    let (code, out) = check(d, "[admin]\nupgrade_binary = \"bin/cutover\"\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("warning: admin.upgrade_binary: "), "{out}");
}

#[test]
fn an_unset_token_variable_is_a_warning_for_check_and_an_error_for_run() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [[admin.tokens]]\nname = \"ci\"\nrole = \"operate\"\nenv = \"CUTOVER_TEST_UNSET_TOKEN\"\n{APP}"
        ),
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let o = cutover(&["check", "-c", file], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("warning: admin.tokens[0].env: environment variable CUTOVER_TEST_UNSET_TOKEN is not set"),
        "{}",
        text(&o)
    );
    let o = cutover(&["run", "-c", file], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "admin.tokens[0].env: environment variable CUTOVER_TEST_UNSET_TOKEN is not set"
        ),
        "{}",
        text(&o)
    );
    // Set but empty: an error for both.
    let o = cutover(&["check", "-c", file], &[("CUTOVER_TEST_UNSET_TOKEN", " ")]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "admin.tokens[0].env: environment variable CUTOVER_TEST_UNSET_TOKEN is empty"
        ),
        "{}",
        text(&o)
    );
}

#[test]
fn token_file_is_the_operate_token_default_and_no_secret_is_ever_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, ci) = (dir.path().join("admin.token"), dir.path().join("ci.token"));
    std::fs::write(&legacy, "legacy-secret\n").unwrap();
    std::fs::write(&ci, "ci-secret\n").unwrap();
    let text = format!(
        "[admin]\ntoken_file = \"{}\"\n[[admin.tokens]]\nname = \"ci\"\nrole = \"read\"\nfile = \"{}\"\n{APP}",
        legacy.display(),
        ci.display()
    );
    let config = cutover::Config::from_toml(&text).unwrap();
    let tokens = &config.admin.tokens;
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        (
            tokens[0].name.as_str(),
            tokens[0].role,
            tokens[0].key.as_str()
        ),
        (
            "default",
            cutover::config::Role::Operate,
            "admin.token_file"
        )
    );
    assert_eq!(tokens[0].secret.as_ref().unwrap().expose(), "legacy-secret");
    assert_eq!(
        (tokens[1].name.as_str(), tokens[1].role),
        ("ci", cutover::config::Role::Read)
    );
    // What a client reading this config sends: `default`.
    assert_eq!(
        config.admin.client_token().map(|s| s.expose()),
        Some("legacy-secret")
    );
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("legacy-secret") && !shown.contains("ci-secret"),
        "{shown}"
    );
}
