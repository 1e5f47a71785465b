//! Progressive rollouts end to end: real upstreams that fail on purpose,
//! the real proxy, real load, and the judge acting on what it saw.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::*;

/// An upstream answering `name`, or 500 for `fail_permille` of requests,
/// after `delay_ms`; `/fail` always answers 500, `/missing` 404.
struct Flaky {
    addr: SocketAddr,
    fail_permille: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU64>,
}

impl Flaky {
    async fn start(name: &'static str, fail_permille: u32) -> Flaky {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fail = Arc::new(AtomicU32::new(fail_permille));
        let delay = Arc::new(AtomicU64::new(0));
        let (f, d) = (fail.clone(), delay.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (f, d) = (f.clone(), d.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let status = match req.uri().path() {
                            "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
                            "/missing" => StatusCode::NOT_FOUND,
                            _ if fastrand::u32(0..1000) < f.load(SeqCst) => {
                                StatusCode::INTERNAL_SERVER_ERROR
                            }
                            _ => StatusCode::OK,
                        };
                        let delay = Duration::from_millis(d.load(SeqCst));
                        async move {
                            tokio::time::sleep(delay).await;
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                            *r.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Flaky {
            addr,
            fail_permille: fail,
            delay_ms: delay,
        }
    }
}

fn config(blue: &Flaky, green: &Flaky, state: Option<&std::path::Path>) -> String {
    let state = state.map_or(String::new(), |p| {
        format!("[state]\nfile = \"{}\"\n", p.display())
    });
    pools(blue, green, &state, "")
}

/// `extra` goes in both pools.
fn pools(blue: &Flaky, green: &Flaky, state: &str, extra: &str) -> String {
    format!(
        r#"
{state}
[apps.shop]
sticky = "none"
[apps.shop.blue]
servers = ["{}"]
{extra}
[apps.shop.green]
servers = ["{}"]
{extra}
"#,
        blue.addr, green.addr
    )
}

/// Requests sent and failed (5xx or no answer), by a load running until
/// `stop`.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// Clients sending requests until stopped.
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Stop, and wait for the last requests: `(sent, failed)`.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.tally.sent.load(SeqCst), self.tally.failed.load(SeqCst))
    }
}

/// `tasks` clients, each sending a request for `/` every `pace` (or back
/// to back, `None`).
fn load(proxy: &Proxy, tasks: usize, pace: Option<Duration>) -> Load {
    load_of(proxy, tasks, pace, "/", &[])
}

/// The same for `path`, with `headers`.
fn load_of(
    proxy: &Proxy,
    tasks: usize,
    pace: Option<Duration>,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Load {
    load_with(proxy, tasks, pace, "GET", path, headers)
}

/// The same with `method` (and no body).
fn load_with(
    proxy: &Proxy,
    tasks: usize,
    pace: Option<Duration>,
    method: &'static str,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let url = proxy.url(path);
    let headers = headers.to_vec();
    let handles = (0..tasks)
        .map(|_| {
            let (tally, stop, url) = (tally.clone(), stop.clone(), url.clone());
            let headers = headers.clone();
            tokio::spawn(async move {
                let c = client();
                let mut tick = pace.map(tokio::time::interval);
                while !stop.load(SeqCst) {
                    if let Some(t) = &mut tick {
                        t.tick().await;
                    }
                    tally.sent.fetch_add(1, SeqCst);
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        send(&c, method, &url, &headers, Bytes::new()),
                    )
                    .await;
                    if !matches!(r, Ok(ref r) if r.status.as_u16() < 500) {
                        tally.failed.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    Load {
        tally,
        stop,
        tasks: handles,
    }
}

/// The text at `key` of `v` (`""` if none).
fn text_at<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.pointer(key).and_then(|t| t.as_str()).unwrap_or("")
}

async fn rollout(c: &TestClient, proxy: &Proxy) -> serde_json::Value {
    let r = admin_call(c, proxy, "GET", "/v1/apps/shop/rollout", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rollout"].clone()
}

type TestClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    support::Body,
>;

/// Polls the rollout until `done` holds (or `limit` passes: a panic
/// naming the last rollout seen).
async fn until(
    c: &TestClient,
    proxy: &Proxy,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + limit;
    loop {
        let r = rollout(c, proxy).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < end, "gave up waiting; rollout: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(c: &TestClient, proxy: &Proxy, body: &str) -> serde_json::Value {
    let r = admin_call(c, proxy, "POST", "/v1/apps/shop/rollout", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rollout"].clone()
}

/// Start a rollout with `plan` and wait until it is at its first step.
async fn progressing(c: &TestClient, proxy: &Proxy, plan: &str) {
    start(c, proxy, plan).await;
    until(c, proxy, Duration::from_secs(5), |r| {
        r["state"] == "progressing"
    })
    .await;
}

/// `POST path` with `body`: its status, and the answer in words.
async fn post(c: &TestClient, proxy: &Proxy, path: &str, body: &str) -> (u16, String) {
    let r = admin_call(c, proxy, "POST", path, body, &[]).await;
    (r.status.as_u16(), r.text())
}

fn states(r: &serde_json::Value) -> Vec<String> {
    r["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}@{}", t["to"].as_str().unwrap(), t["percent"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_failing_half_its_requests_is_rolled_back_within_10_s() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 500).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    // 200 requests a second of split traffic for 60 s.
    let began = Instant::now();
    let load = load(&proxy, 10, Some(Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    start(
        &c,
        &proxy,
        r#"{"steps": [5, 25, 50, 100], "every": "30s", "max_error_rate": "1%"}"#,
    )
    .await;
    let started = Instant::now();
    let r = until(&c, &proxy, Duration::from_secs(10), |r| {
        r["state"] == "failed" || r["state"] == "rolling_back"
    })
    .await;
    let took = started.elapsed();
    assert!(
        r["reason"].as_str().unwrap().contains("bad"),
        "{:#}",
        r["reason"]
    );
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["standby_percent"], 0.0);
    assert_eq!(s["apps"]["shop"]["live"], "blue");
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(began.elapsed())).await;
    let (sent, failed) = load.stop().await;
    let r = rollout(&c, &proxy).await;
    assert_eq!(r["state"], "failed", "{r:#}");
    println!("rolled back after {took:?}; {failed} of {sent} requests failed");
    assert!(sent > 9_000, "only {sent} requests in 60 s");
    assert!(
        (failed as f64) < 0.005 * sent as f64,
        "{failed} of {sent} failed"
    );
    // Undoing the rollback would send users back to the failing green.
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollback", "", &[]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("rolling back (failed)"), "{}", r.text());
    let m = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    for line in [
        "cutover_rollout_state{app=\"shop\",state=\"failed\"} 1",
        "cutover_rollout_transitions_total{app=\"shop\",to=\"rolling_back\"} 1",
        "cutover_rollout_step_percent{app=\"shop\"} 0",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_green_walks_every_step_and_ends_live() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    let load = load(&proxy, 8, None);
    start(
        &c,
        &proxy,
        r#"{"steps": [1, 5, 25, 50, 100], "every": "1s", "max_error_rate": "10%"}"#,
    )
    .await;
    let r = until(&c, &proxy, Duration::from_secs(60), |r| {
        !r["state"].as_str().unwrap().ends_with("ing") && r["state"] != "preflight"
    })
    .await;
    load.stop().await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(
        states(&r),
        [
            "preflight@0.0",
            "progressing@1.0",
            "progressing@5.0",
            "progressing@25.0",
            "progressing@50.0",
            "promoting@100.0",
            "succeeded@100.0",
        ]
    );
    // Each step promoted on evidence: 30 green requests for a 10 % budget.
    for t in &r["transitions"].as_array().unwrap()[2..6] {
        assert!(
            t["reason"].as_str().unwrap().starts_with("promoted from"),
            "{t}"
        );
    }
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["live"], "green");
    assert_eq!(s["apps"]["shop"]["standby_percent"], 0.0);
    let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[])
        .await
        .json();
    let kinds: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    // Every transition, and shadow copies turned on where a small step
    // lacked requests.
    assert!(
        kinds.len() >= 7 && kinds.iter().all(|k| *k == "rollout"),
        "{kinds:?}"
    );
    assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_at_the_same_weight() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let toml = config(&blue, &green, Some(&file));
    let proxy = Proxy::start(&toml);
    let c = client();
    start(
        &c,
        &proxy,
        r#"{"steps": [10, 50, 100], "every": "5s", "allow_low_traffic": true}"#,
    )
    .await;
    let before = until(&c, &proxy, Duration::from_secs(20), |r| r["step"] == 2).await;
    assert_eq!(before["state"], "progressing");
    // (Its idle kept-alive connections would hold the drain.)
    drop(c);
    proxy.join().await;
    let c = client();

    let proxy = Proxy::start(&toml);
    let after = rollout(&c, &proxy).await;
    assert_eq!(
        (&after["state"], &after["step"], &after["percent"]),
        (&before["state"], &before["step"], &serde_json::json!(50.0)),
        "{after:#}"
    );
    assert_eq!(after["transitions"], before["transitions"]);
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["standby_percent"], 50.0);
    // The step is observed afresh, and the rollout goes on from it.
    let r = until(&c, &proxy, Duration::from_secs(5), |r| {
        r["window"].is_object()
    })
    .await;
    assert!(r["window"]["age_seconds"].as_f64().unwrap() < 4.0, "{r:#}");
    let r = until(&c, &proxy, Duration::from_secs(30), |r| {
        r["state"] == "succeeded"
    })
    .await;
    assert_eq!(r["percent"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_traffic_extends_the_step_then_pauses_as_inconclusive() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    // 10 requests a second: green sees 5 a second at 50 %, far from the
    // 300 a 1 % budget needs.
    let load = load(&proxy, 1, Some(Duration::from_millis(100)));
    start(&c, &proxy, r#"{"steps": [50, 100], "every": "1s"}"#).await;
    let extended = until(&c, &proxy, Duration::from_secs(8), |r| {
        text_at(r, "/window/judge").starts_with("step extended: samples")
    })
    .await;
    let judge = text_at(&extended, "/window/judge");
    assert!(judge.contains("/300"), "{judge}");
    let r = until(&c, &proxy, Duration::from_secs(20), |r| {
        r["state"] != "progressing"
    })
    .await;
    load.stop().await;
    assert_eq!(r["state"], "paused", "{r:#}");
    assert!(
        text_at(&r, "/reason").starts_with("inconclusive: samples"),
        "{r:#}"
    );
    // Paused keeps its weight; resume observes the step again.
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["standby_percent"], 50.0);
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollout/resume", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rollout"]["state"], "progressing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_colours_failing_hold_and_do_not_roll_back() {
    let (blue, green) = (
        Flaky::start("blue", 300).await,
        Flaky::start("green", 300).await,
    );
    // Passive checks off: 30 % errors would take the servers out of
    // rotation, and the baseline with them.
    let proxy = Proxy::start(&pools(&blue, &green, "", "passive = { failures = 0 }"));
    let c = client();
    let load = load(&proxy, 4, None);
    start(&c, &proxy, r#"{"steps": [50, 100], "every": "1s"}"#).await;
    let held = until(&c, &proxy, Duration::from_secs(10), |r| {
        r["window"]["holding"] == true
    })
    .await;
    let judge = text_at(&held, "/window/judge");
    assert!(judge.contains("both colours over budget"), "{judge}");
    let r = until(&c, &proxy, Duration::from_secs(15), |r| {
        r["state"] != "progressing"
    })
    .await;
    load.stop().await;
    assert_eq!(r["state"], "paused", "{r:#}");
    assert!(text_at(&r, "/reason").starts_with("held for"), "{r:#}");
    assert_eq!(blue.fail_permille.load(SeqCst), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_changes_during_a_rollout_are_refused_unless_forced_and_rollback_aborts() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    let rule = r#"[{"name": "qa", "header": {"name": "x-qa", "value": "1"}, "to": "green"}]"#;
    let r = admin_call(&c, &proxy, "PUT", "/v1/apps/shop/rules", rule, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let plan = r#"{"steps": [10, 100], "every": "60s"}"#;
    progressing(&c, &proxy, plan).await;
    let (status_of, text) = post(&c, &proxy, "/v1/apps/shop/rollout", plan).await;
    assert_eq!(status_of, 409, "{text}");
    for (path, body) in [
        ("/v1/apps/shop/flip", ""),
        ("/v1/apps/shop/shift", r#"{"percent": 30}"#),
        ("/v1/flip", ""),
    ] {
        let (status_of, text) = post(&c, &proxy, path, body).await;
        assert_eq!(status_of, 409, "{path}: {text}");
        assert!(text.contains("rollout under way"), "{text}");
    }
    for (method, path, body) in [
        ("PUT", "/v1/apps/shop/rules", "[]"),
        ("DELETE", "/v1/apps/shop/rules/qa", ""),
    ] {
        let r = admin_call(&c, &proxy, method, path, body, &[]).await;
        assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
    }
    // Rollback aborts it: straight back to blue alone.
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollback", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["apps"]["shop"]["standby_percent"], 0.0);
    let r = until(&c, &proxy, Duration::from_secs(5), |r| {
        r["state"] == "aborted"
    })
    .await;
    assert!(text_at(&r, "/reason").starts_with("aborted by"), "{r:#}");
    // A forced change ends a rollout as superseded; so does one that
    // changes no routing (10 % is the step's own share).
    for percent in [30.0, 10.0] {
        progressing(&c, &proxy, plan).await;
        let body = format!(r#"{{"percent": {percent}, "force": true}}"#);
        let (status_of, text) = post(&c, &proxy, "/v1/apps/shop/shift", &body).await;
        assert_eq!(status_of, 200, "{text}");
        assert_eq!(rollout(&c, &proxy).await["state"], "superseded");
        let s = status(&c, &proxy).await;
        assert_eq!(s["apps"]["shop"]["standby_percent"], percent);
    }
    // Steering an ended rollout is refused.
    let (status_of, text) = post(&c, &proxy, "/v1/apps/shop/rollout/pause", "").await;
    assert_eq!(status_of, 409, "{text}");
}

#[tokio::test]
async fn a_bad_plan_is_refused_with_what_is_wrong_and_nothing_changes() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    for (body, says) in [
        (r#"{"steps": [50, 10, 100]}"#, "does not rise"),
        (r#"{"steps": [5, 50]}"#, "the last step must be 100"),
        (r#"{"every": "soon"}"#, "is not a duration like 60s"),
        (r#"{"every": "100ms"}"#, "shorter than 1s"),
        (r#"{"every": "100years"}"#, "is longer than 1day"),
        (r#"{"bake": "30days"}"#, "is longer than 7days"),
        (
            r#"{"max_error_rate": "lots"}"#,
            "max_error_rate: expected a percent",
        ),
        (r#"{"max_slow_rate": "5%"}"#, "give max_slow too"),
        (r#"{"stepz": [1]}"#, "unknown field `stepz`"),
        ("[1, 2]", "bad JSON"),
    ] {
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollout", body, &[]).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/nope/rollout", "", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rollout", "", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollout/abort", "", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let s = status(&c, &proxy).await;
    assert_eq!(s["epoch"], 0, "nothing changed: {s:#}");
    assert!(s["apps"]["shop"]["rollout"].is_null());
}

#[tokio::test]
async fn the_cli_starts_shows_and_aborts_a_rollout() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let admin = proxy.admin_url("");
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let args = |list: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.extend(["--admin".to_string(), admin.clone()]);
        v
    };
    let out = run(args(&[
        "rollout",
        "shop",
        "--steps",
        "5,50,100",
        "--every",
        "60s",
        "--max-error-rate",
        "2%",
        "--max-slow",
        "500ms",
        "--max-slow-rate",
        "5%",
    ]))
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("rollout of green: preflight"), "{text}");
    let again = run(args(&["rollout", "shop", "--steps", "5,100"]))
        .await
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "a second rollout is refused (409)"
    );
    let out = run(args(&["rollout", "shop", "status", "--json"]))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rollout"]["max_error_rate"], 2.0);
    assert_eq!(v["rollout"]["max_slow"], "500ms");
    let out = run(args(&["rollout", "shop", "abort"])).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = run(args(&["rollout", "shop", "pause", "--every", "5s"]))
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "plan flags only with start");
    let out = run(args(&["status"])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rollout of green:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_phase_compares_copies_before_the_first_live_step() {
    // Copies' bodies are compared too: both colours answer alike.
    let (blue, green) = (Flaky::start("shop", 0).await, Flaky::start("shop", 0).await);
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    let load = load(&proxy, 4, None);
    let plan = r#"{"steps": [10, 100], "every": "60s", "shadow": "2s", "max_mismatch": "1%"}"#;
    start(&c, &proxy, plan).await;
    // While it compares, every live request may be copied; green takes
    // no real traffic.
    let r = until(&c, &proxy, Duration::from_secs(5), |r| {
        r["state"] == "shadow"
    })
    .await;
    assert_eq!(r["percent"], 0.0);
    assert_eq!(
        status(&c, &proxy).await["apps"]["shop"]["mirror"]["percent"],
        100.0
    );
    let r = until(&c, &proxy, Duration::from_secs(15), |r| {
        r["state"] != "shadow"
    })
    .await;
    assert_eq!(r["state"], "progressing", "{r:#}");
    assert!(
        text_at(&r, "/reason").starts_with("shadow passed: 0 of"),
        "{r:#}"
    );
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["mirror"]["percent"], 0.0, "handed back");
    assert_eq!(s["apps"]["shop"]["standby_percent"], 10.0);
    admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollout/abort", "", &[]).await;
    until(&c, &proxy, Duration::from_secs(5), |r| {
        r["state"] == "aborted"
    })
    .await;

    // A green that answers 500 where blue answers 200 never gets a user.
    green.fail_permille.store(1000, SeqCst);
    start(&c, &proxy, plan).await;
    let r = until(&c, &proxy, Duration::from_secs(15), |r| {
        r["state"] == "failed"
    })
    .await;
    load.stop().await;
    assert!(
        text_at(&r, "/reason").starts_with("shadow: fast fail"),
        "{r:#}"
    );
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["standby_percent"], 0.0);
    assert_eq!(s["apps"]["shop"]["mirror"]["percent"], 0.0);
    let to: Vec<&str> = r["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(to, ["preflight", "shadow", "failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_green_is_rolled_back_on_its_slow_responses() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    green.delay_ms.store(800, SeqCst);
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    let load = load(&proxy, 16, None);
    start(
        &c,
        &proxy,
        r#"{"steps": [20, 100], "every": "30s", "max_slow": "300ms", "max_slow_rate": "5%"}"#,
    )
    .await;
    let r = until(&c, &proxy, Duration::from_secs(20), |r| {
        r["state"] == "rolling_back" || r["state"] == "failed"
    })
    .await;
    load.stop().await;
    assert!(
        text_at(&r, "/reason").starts_with("slow responses: fast fail"),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_split_traffic_and_only_server_faults_are_judged() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&pools(&blue, &green, "", "passive = { failures = 0 }"));
    let c = client();
    // QA traffic a rule sends to green, all of it failing, is not a
    // sample; 4xx answers are the client's, not green's.
    let r = admin_call(
        &c,
        &proxy,
        "PUT",
        "/v1/apps/shop/rules",
        r#"[{"name": "qa", "header": {"name": "x-qa", "value": "1"}, "to": "green"}]"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let qa = load_of(&proxy, 2, None, "/fail", &[("x-qa", "1")]);
    let missing = load_of(&proxy, 2, None, "/missing", &[]);
    let good = load(&proxy, 2, None);
    start(
        &c,
        &proxy,
        r#"{"steps": [50, 100], "every": "2s", "max_error_rate": "5%"}"#,
    )
    .await;
    let r = until(&c, &proxy, Duration::from_secs(20), |r| {
        r["state"] != "preflight" && r["state"] != "progressing" && r["state"] != "promoting"
    })
    .await;
    let (qa_sent, qa_failed) = qa.stop().await;
    missing.stop().await;
    good.stop().await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert!(
        qa_sent > 0 && qa_failed == qa_sent,
        "QA traffic failed throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_rolls_back_even_when_the_state_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("state");
    std::fs::create_dir(&sub).unwrap();
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, Some(&sub.join("state.json"))));
    let c = client();
    let load = load(&proxy, 4, None);
    progressing(&c, &proxy, r#"{"steps": [20, 100], "every": "60s"}"#).await;
    // No more writes: the directory is gone. Then green fails.
    std::fs::remove_dir_all(&sub).unwrap();
    green.fail_permille.store(1000, SeqCst);
    let r = until(&c, &proxy, Duration::from_secs(10), |r| {
        r["state"] == "rolling_back"
    })
    .await;
    load.stop().await;
    assert!(text_at(&r, "/reason").contains("fast fail"), "{r:#}");
    assert_eq!(
        status(&c, &proxy).await["apps"]["shop"]["standby_percent"],
        0.0
    );
    // A change an operator asks for is still refused without its write.
    let r = admin_call(
        &c,
        &proxy,
        "POST",
        "/v1/apps/shop/shift",
        r#"{"percent": 5, "force": true}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
}

/// Run the CLI with `args` against `proxy`'s admin API.
async fn cli(proxy: &Proxy, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--admin".to_string(), proxy.admin_url("")]);
    run_cli(all).await
}

fn said(o: &std::process::Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_exits_6_while_it_runs_and_2_once_the_judge_rolled_it_back() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 1000).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    let o = cli(&proxy, &["rollout", "shop", "status"]).await;
    assert_eq!(o.status.code(), Some(1), "no rollout yet: {}", said(&o));
    assert!(said(&o).contains("has no rollout"), "{}", said(&o));
    let load = load(&proxy, 4, Some(Duration::from_millis(10)));
    start(
        &c,
        &proxy,
        r#"{"steps": [50, 100], "every": "30s", "max_error_rate": "1%"}"#,
    )
    .await;
    let o = cli(&proxy, &["rollout", "shop", "status"]).await;
    assert_eq!(o.status.code(), Some(6), "a running rollout: {}", said(&o));
    until(&c, &proxy, Duration::from_secs(20), |r| {
        r["state"] == "failed"
    })
    .await;
    load.stop().await;
    let o = cli(&proxy, &["rollout", "shop", "status"]).await;
    assert_eq!(o.status.code(), Some(2), "a failed rollout: {}", said(&o));
    assert!(said(&o).contains("failed"), "{}", said(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_start_wait_prints_every_move_and_exits_0_once_green_is_live() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let load = load(&proxy, 8, None);
    let o = cli(
        &proxy,
        &[
            "rollout",
            "shop",
            "start",
            "--steps",
            "50,100",
            "--every",
            "1s",
            "--max-error-rate",
            "10%",
            "--wait",
        ],
    )
    .await;
    load.stop().await;
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let moves: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(_, to)| to))
        .map(|to| to.split(' ').next().unwrap())
        .collect();
    assert_eq!(moves, ["progressing", "promoting", "succeeded"], "{out}");
    assert!(
        out.trim_end()
            .ends_with("rollout of green succeeded: green is live"),
        "{out}"
    );
    let o = cli(&proxy, &["rollout", "shop", "status", "--wait"]).await;
    assert_eq!(o.status.code(), Some(0), "ended: at once: {}", said(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_rollout_with_wait_answers_once_it_moves_or_at_the_limit() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    progressing(&c, &proxy, r#"{"steps": [50, 100], "every": "60s"}"#).await;

    // Nothing moves without traffic: the answer comes at the limit.
    let began = Instant::now();
    let r = admin_call(&c, &proxy, "GET", "/v1/apps/shop/rollout?wait=1s", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rollout"]["state"], "progressing");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A pause moves it: the answer comes at once, with the pause.
    let (c2, url) = (client(), proxy.admin_url("/v1/apps/shop/rollout?wait=30s"));
    let waiting = tokio::spawn(async move {
        let began = Instant::now();
        let r = send(&c2, "GET", &url, &[], String::new()).await;
        (r, began.elapsed())
    });
    // The watch must have begun before the pause it waits for; there is
    // no signal of that from outside, so give the call a moment to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, text) = post(&c, &proxy, "/v1/apps/shop/rollout/pause", "").await;
    assert_eq!(code, 200, "{text}");
    let (r, took) = waiting.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rollout"]["state"], "paused");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let o = cli(&proxy, &["rollout", "shop", "status"]).await;
    assert_eq!(
        o.status.code(),
        Some(6),
        "paused is still under way: {}",
        said(&o)
    );
    let o = cli(&proxy, &["rollout", "shop", "status", "--wait"]).await;
    assert_eq!(
        o.status.code(),
        Some(6),
        "--wait stops at a pause: {}",
        said(&o)
    );
    assert!(said(&o).contains("resume|abort"), "{}", said(&o));

    // `wait` goes with a rollout's read and with changes, nowhere else.
    for (path, needle) in [
        (
            "/v1/status?wait=1s",
            "wait: GET /v1/status does not take it",
        ),
        ("/v1/apps/shop/rollout?wait=0s", "wait: must be above 0s"),
        ("/v1/apps/shop/rollout?wait=2m", "at most 60s"),
        ("/v1/apps/nope/rollout?wait=1s", "no app named"),
    ] {
        let r = admin_call(&c, &proxy, "GET", path, "", &[]).await;
        assert!(
            matches!(r.status.as_u16(), 400 | 404),
            "{path}: {}",
            r.text()
        );
        assert!(r.text().contains(needle), "{path}: {}", r.text());
    }
}

/// A 2-request-a-second app: at 10 %, green alone would see one request
/// every 5 s.
fn two_a_second(proxy: &Proxy, method: &'static str) -> Load {
    load_with(proxy, 1, Some(Duration::from_millis(500)), method, "/", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_per_second_app_completes_its_rollout_on_shadow_evidence() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    let load = two_a_second(&proxy, "GET");
    // 30 requests a step for a 10 % budget: about 15 s of the whole app's
    // traffic, far past what the steps' shares of it would give in 30 s.
    start(
        &c,
        &proxy,
        r#"{"steps": [10, 50, 100], "every": "3s", "max_error_rate": "10%"}"#,
    )
    .await;
    let copying = until(&c, &proxy, Duration::from_secs(10), |r| {
        text_at(r, "/window/judge").contains("shadow copies to green")
    })
    .await;
    assert_eq!(copying["step"], 1, "{copying:#}");
    assert_eq!(
        status(&c, &proxy).await["apps"]["shop"]["mirror"]["percent"],
        100.0
    );
    let r = until(&c, &proxy, Duration::from_secs(50), |r| {
        r["state"] != "progressing" && r["state"] != "preflight" && r["state"] != "promoting"
    })
    .await;
    load.stop().await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(
        states(&r),
        [
            "preflight@0.0",
            "progressing@10.0",
            "progressing@50.0",
            "promoting@100.0",
            "succeeded@100.0",
        ]
    );
    for t in &r["transitions"].as_array().unwrap()[2..4] {
        let why = t["reason"].as_str().unwrap();
        assert!(why.contains("on live and shadow evidence"), "{why}");
    }
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["mirror"]["percent"], 0.0, "handed back");
    assert_eq!(s["apps"]["shop"]["live"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_app_that_cannot_be_shadowed_pauses_and_says_why() {
    let (blue, green) = (
        Flaky::start("blue", 0).await,
        Flaky::start("green", 0).await,
    );
    let proxy = Proxy::start(&config(&blue, &green, None));
    let c = client();
    // POSTs only: the mirror copies GET, HEAD and OPTIONS by default.
    let load = two_a_second(&proxy, "POST");
    start(
        &c,
        &proxy,
        r#"{"steps": [10, 100], "every": "1s", "max_error_rate": "10%"}"#,
    )
    .await;
    let r = until(&c, &proxy, Duration::from_secs(20), |r| {
        r["state"] != "progressing" && r["state"] != "preflight"
    })
    .await;
    load.stop().await;
    assert_eq!(r["state"], "paused", "{r:#}");
    let why = text_at(&r, "/reason");
    for part in [
        "inconclusive: samples",
        "/30 at 10 % after 10 × every",
        "shadow copies not possible",
        "not copied (their method is not among the mirror's `methods`)",
    ] {
        assert!(why.contains(part), "{part:?} in {why}");
    }
    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["shop"]["live"], "blue", "not promoted");
    assert_eq!(s["apps"]["shop"]["standby_percent"], 10.0);
    assert_eq!(s["apps"]["shop"]["mirror"]["percent"], 0.0, "handed back");
}
