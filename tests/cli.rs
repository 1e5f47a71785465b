//! The `cutover` binary from the outside: `check` and `run` exit codes and
//! messages.

use std::path::Path;
use std::process::{Command, Output};

fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("run cutover")
}

fn check_text(dir: &Path, text: &str) -> Output {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    cutover(&["check", "-c", path.to_str().unwrap()])
}

const GOOD_APP: &str = r#"
[apps.shop]
[apps.shop.blue]
servers = ["127.0.0.1:9001"]
[apps.shop.green]
servers = ["127.0.0.1:9002"]
"#;

#[test]
fn check_accepts_the_reference_config_and_prints_a_summary() {
    let ref_config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cutover.toml");
    let out = cutover(&["check", "-c", ref_config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("app shop"), "{stdout}");
    assert!(
        stdout.contains("rule mobile-canary -> green (20%)"),
        "{stdout}"
    );
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    assert!(cutover(&["check", "-c", demo]).status.success());
}

#[test]
fn check_rejects_bad_configs_naming_every_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            r#"
[apps.shop]
live = "purple"
standby_percent = 150
sticky = "session"
drain_timeout = "soon"
[apps.shop.blue]
servers = []
[apps.shop.green]
servers = ["not-an-address"]
[[apps.shop.rules]]
name = "a"
to = "red"
[[apps.shop.rules]]
name = "b"
to = "green"
percent = 150
user_agent = "(unclosed"
client_ip = ["300.1.1.1/8"]
"#,
            &[
                "apps.shop.live: must be \"blue\" or \"green\", got \"purple\"",
                "apps.shop.standby_percent: must be between 0 and 100, got 150",
                "apps.shop.sticky:",
                "apps.shop.drain_timeout:",
                "apps.shop.blue.servers: a pool needs at least one server",
                "apps.shop.green.servers[0]:",
                "apps.shop.rules[0].to: must be \"blue\" or \"green\", got \"red\"",
                "apps.shop.rules[1].percent: must be between 0 and 100, got 150",
                "apps.shop.rules[1].user_agent: invalid regex",
                "apps.shop.rules[1].client_ip:",
            ],
        ),
        (
            &format!("{GOOD_APP}\n[apps.shop2]\n[apps.shop2.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.shop2.green]\nservers = [\"127.0.0.1:2\"]\n"),
            &["apps.shop2: the catch-all (no hosts) with path_prefix \"/\" is already served by apps.shop"],
        ),
        (
            r#"
[apps.a]
hosts = ["x.test"]
[apps.a.blue]
servers = ["127.0.0.1:1"]
[apps.a.green]
servers = ["127.0.0.1:2"]
[apps.b]
hosts = ["X.test"]
[apps.b.blue]
servers = ["127.0.0.1:1"]
"#,
            &["apps.b: host x.test with path_prefix \"/\" is already served by apps.a", "apps.b.green: missing"],
        ),
        (&format!("[limits]\nclient_idle_timeout = \"forever\"\n{GOOD_APP}"), &["limits.client_idle_timeout:"]),
        (&format!("[server]\nlisten = [\"nowhere\"]\n{GOOD_APP}"), &["server.listen[0]:"]),
        (&format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{GOOD_APP}"), &["admin.listen: 0.0.0.0:9901 is not a loopback address"]),
        (&format!("[server]\nlistn = []\n{GOOD_APP}"), &["server.listn: unknown field `listn`, did you mean `listen`? (line 2)"]),
        (
            &format!("[server]\nupgrades = [\"websocket\", \"H2C\", \"a b\"]\n{GOOD_APP}"),
            &[
                "server.upgrades[1]: h2c is never forwarded",
                "server.upgrades[2]: \"a b\" is not a protocol name",
            ],
        ),
        (
            &format!("{GOOD_APP}[apps.shop.mirror]\npercent = 150\nmethods = [\"get\", \"CONNECT\", \"PUT\", \"PUT\"]\nmax_body = -1\ncompare = [\"headers\", \"bodies\"]\nignore_json_fields = [\"timestamp\", \"$..id\"]\nignore_headers = [\"x date\"]\ntimeout = \"0s\"\nmax_in_flight = 0\n"),
            &[
                "apps.shop.mirror.percent: must be between 0 and 100, got 150",
                "apps.shop.mirror.methods[0]: methods are case-sensitive",
                "apps.shop.mirror.methods[1]: CONNECT opens a tunnel and is never copied",
                "apps.shop.mirror.methods[3]: \"PUT\" is listed twice",
                "apps.shop.mirror.max_body: must be between 0 and",
                "apps.shop.mirror.compare[1]: must be \"status\", \"body\" or \"headers\", got \"bodies\"",
                "apps.shop.mirror.ignore_json_fields[0]: \"timestamp\" must start with \"$\"",
                "apps.shop.mirror.ignore_json_fields[1]: \"$..id\": a \".\" must be followed by a name",
                "apps.shop.mirror.ignore_headers[0]: \"x date\" is not a header field name",
                "apps.shop.mirror.compare: status classes are always compared",
                "apps.shop.mirror.timeout: must be longer than 0",
                "apps.shop.mirror.max_in_flight: must be between 1 and 100000, got 0",
            ],
        ),
        (&format!("{GOOD_APP}[apps.shop.mirror]\npercnt = 10\n"), &["apps.shop.mirror.percnt: unknown field `percnt`, did you mean `percent`?"]),
        (
            &format!("[limits]\nupstream_connect_timeout = \"0s\"\nupstream_response_timeout = \"100years\"\n[server]\nshutdown_timeout = \"0s\"\nresolve_interval = \"25h\"\n{GOOD_APP}health = {{ interval = \"0ms\" }}\n"),
            &[
                "limits.upstream_connect_timeout: must be longer than 0s, got \"0s\"",
                "limits.upstream_response_timeout: must be at most 1 day (\"24h\"), got \"100years\"",
                "server.resolve_interval: must be at most 1 day (\"24h\"), got \"25h\"",
                "apps.shop.green.health.interval: must be longer than 0s, got \"0ms\"",
            ],
        ),
        (&format!("{GOOD_APP}\n[[apps.shop.rules]]\nname = \"x\"\nto = \"green\"\nheader = {{ name = \"x\" }}\n"), &["missing field `value`"]),
    ];
    for (text, wanted) in cases {
        let out = check_text(dir.path(), text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "config accepted:\n{text}\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for w in *wanted {
            assert!(stderr.contains(w), "missing {w:?} in:\n{stderr}");
        }
        // `shutdown_timeout = "0s"` (stop at once) is not among them.
        assert!(!stderr.contains("server.shutdown_timeout"), "{stderr}");
    }
}

#[test]
fn run_exits_64_on_a_bad_config_and_on_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[apps.x]\nlive = \"red\"\n").unwrap();
    let out = cutover(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("apps.x.live"));
    assert_eq!(cutover(&["run"]).status.code(), Some(64));
    assert_eq!(cutover(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(
        cutover(&["check", "-c", "/nonexistent/cutover.toml"])
            .status
            .code(),
        Some(64)
    );
}

#[test]
fn check_reports_every_error_at_once_and_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[server]
listen = ["127.0.0.1:9911"]
shutdwn_timeout = "5s"

[admin]
listen = "127.0.0.1:9911"

[apps.shop]
live = "red"
[apps.shop.blue]
servers = ["no-such-host.invalid:80"]
helth = { path = "/" }
[apps.shop.bleen]
servers = ["127.0.0.1:1"]
[apps.shop.green]
servers = ["127.0.0.1:2"]
"#;
    let out = check_text(dir.path(), text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for want in [
        "server.shutdwn_timeout: unknown field `shutdwn_timeout`, did you mean `shutdown_timeout`? (line 4)",
        "apps.shop.blue.helth: unknown field `helth`, did you mean `health`? (line 13)",
        "apps.shop.bleen: unknown field `bleen`, did you mean `blue`? (line 14)",
        "admin.listen: 127.0.0.1:9911 is also server.listen[0]",
        r#"apps.shop.live: must be "blue" or "green", got "red""#,
    ] {
        assert!(
            stderr.contains(want),
            "missing {want:?} in:
{stderr}"
        );
    }
    // The bleen table's keys are not reported as misplaced.
    assert_eq!(stderr.matches("unknown field").count(), 3, "{stderr}");
    // A host name that does not resolve now is a warning naming it: it is
    // tried again every resolve_interval.
    let text = "[apps.shop]\n[apps.shop.blue]\nservers = [\"no-such-host.invalid:80\"]\n[apps.shop.green]\nservers = [\"127.0.0.1:2\"]\n";
    let out = check_text(dir.path(), text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: apps.shop.blue.servers[0]: host name \"no-such-host.invalid\" does not resolve now"),
        "{stderr}"
    );
    // The same listener clash with an unspecified address.
    let text = format!(
        "[server]\nlisten = [\"0.0.0.0:9912\"]\nlisten_tls = [\"127.0.0.1:9912\"]\n{GOOD_APP}"
    );
    let out = check_text(dir.path(), &text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.listen_tls[0]: 127.0.0.1:9912 is also server.listen[0]"),
        "{stderr}"
    );
}

#[test]
fn check_reads_certificates_naming_a_bad_file_and_warning_of_an_expired_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("old.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("wrong.key"), other.serialize_pem()).unwrap();
    let tls = |key_file: &str| {
        format!("[server]\nlisten_tls = [\"127.0.0.1:8443\"]\n[[tls.certs]]\ncert = \"old.pem\"\nkey = \"{key_file}\"\n{GOOD_APP}")
    };
    let path = dir.path().join("tls.toml");
    std::fs::write(&path, tls("old.key")).unwrap();
    let out = cutover(&["check", "-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("old.pem: the certificate has expired"));

    std::fs::write(&path, tls("wrong.key")).unwrap();
    let out = cutover(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("wrong.key: the key does not match the certificate"));

    std::fs::write(&path, tls("missing.key")).unwrap();
    let out = cutover(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));
}

/// `cutover run` with a config that serves on free ports, with `env` set:
/// the running child and its log lines up to the one that says it serves
/// (or all of them, if it exits first; the wait is bounded).
fn run_until_serving(dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{GOOD_APP}"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cutover");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.push_str(&line);
            lines.push('\n');
            if line.contains("cutover is serving") {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let lines = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_default();
    (child, lines)
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, line) = run_until_serving(dir.path(), &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("cutover is serving"), "{line}");
    assert!(
        !line.contains('\x1b'),
        "terminal colour codes in a pipe: {line:?}"
    );
}

/// Transparent huge pages are off for the daemon (where the host has them
/// `always`, a 2 MiB page is resident for every region it touches), unless
/// the operator asked mimalloc for them.
#[cfg(target_os = "linux")]
#[test]
fn the_daemon_runs_without_transparent_huge_pages_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    for (env, want) in [(&[][..], "0"), (&[("MIMALLOC_ALLOW_THP", "1")][..], "1")] {
        let (mut child, lines) = run_until_serving(dir.path(), env);
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(lines.contains("cutover is serving"), "{lines}");
        let status = status.unwrap();
        let thp = status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .expect("/proc/PID/status has THP_enabled (Linux 5.0 on)");
        assert_eq!(thp.trim(), want, "with {env:?}");
    }
}

#[test]
fn check_json_gives_scripts_the_errors_and_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[apps.x]\nlive = \"red\"\n").unwrap();
    let out = cutover(&["check", "--json", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["errors"].to_string().contains("apps.x.live"), "{v}");
    std::fs::write(&path, GOOD_APP).unwrap();
    let out = cutover(&["check", "--json", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
}

/// `cutover run -c CONFIG`, expected to exit at once: its output, or a
/// failed test if it is still running after 10 s (it started serving).
fn run_expecting_exit(config: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second daemon started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Wait (bounded) until something accepts on `port`.
fn until_listening(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_second_daemon_on_a_state_file_in_use_exits_1_naming_the_holder_until_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, admin) = (free(), free());
    let config = dir.path().join("cutover.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[state]\nfile = \"state.json\"\n{GOOD_APP}"
    );
    std::fs::write(&config, text).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until_listening(admin);

    // Same config, same ports: the lock is what refuses it, before it
    // tries to bind anything.
    let second = run_expecting_exit(&config);
    assert_eq!(second.status.code(), Some(1));
    let state = dir.path().join("state.json");
    let stderr = String::from_utf8_lossy(&second.stderr);
    let expected = format!(
        "state file {} is in use by another cutover (pid {}; lock {}.lock): stop it, or give this one its own [state] file",
        state.display(),
        first.id(),
        state.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");
    let lock = dir.path().join("state.json.lock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // `check` reads the same config and takes no lock.
    assert!(cutover(&["check", "-c", config.to_str().unwrap()])
        .status
        .success());

    // Once the holder is gone (even killed), the next one starts.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut third = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until_listening(admin);
    assert!(third.try_wait().unwrap().is_none(), "the third one serves");
    third.kill().unwrap();
    third.wait().unwrap();
}
