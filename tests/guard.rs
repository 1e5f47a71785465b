//! Guarded changes end to end: a plain flip to a green that passes its
//! health check and fails real requests, or answers them slowly, is undone
//! by the guard, a good flip stays, and `--no-guard` leaves a bad flip
//! alone.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::*;

/// How an upstream answers every request but `/healthz` (which it
/// answers 200 at once).
#[derive(Clone, Copy)]
enum Answers {
    Ok,
    /// 500 to everything.
    Failing,
    /// 200, each after this long.
    After(Duration),
}

/// An upstream that passes `/healthz` and answers `name` as `answers`.
async fn upstream(name: &'static str, answers: Answers) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let health = req.uri().path() == "/healthz";
                    let status = match answers {
                        Answers::Failing if !health => StatusCode::INTERNAL_SERVER_ERROR,
                        Answers::After(delay) if !health => {
                            tokio::time::sleep(delay).await;
                            StatusCode::OK
                        }
                        _ => StatusCode::OK,
                    };
                    let mut r = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                    *r.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// `shop` with a health-checked blue and green, and `extra` in the app.
fn config(blue: SocketAddr, green: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[apps.shop]
sticky = "none"
{extra}
[apps.shop.blue]
servers = ["{blue}"]
health = {{ path = "/healthz", interval = "500ms" }}
[apps.shop.green]
servers = ["{green}"]
health = {{ path = "/healthz", interval = "500ms" }}
"#
    )
}

/// Requests at a steady `per_second` until stopped; `(sent, failed)`.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: &Proxy, per_second: u64) -> Load {
        let stop: Arc<AtomicBool> = Arc::default();
        let (sent, failed): (Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
        let url = proxy.url("/");
        let (s, n, f) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
            while !s.load(SeqCst) {
                tick.tick().await;
                let (c, url, n, f) = (c.clone(), url.clone(), n.clone(), f.clone());
                tokio::spawn(async move {
                    n.fetch_add(1, SeqCst);
                    let r = tokio::time::timeout(Duration::from_secs(5), get(&c, &url, &[])).await;
                    if !matches!(r, Ok(ref r) if r.status.as_u16() < 500) {
                        f.fetch_add(1, SeqCst);
                    }
                });
            }
        });
        Load {
            stop,
            sent,
            failed,
            task,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, SeqCst);
        self.task.await.unwrap();
        (self.sent.load(SeqCst), self.failed.load(SeqCst))
    }
}

type TestClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    support::Body,
>;

/// Both colours healthy, by the status document.
async fn both_healthy(c: &TestClient, proxy: &Proxy) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(c, proxy).await;
        let pools = &s["apps"]["shop"]["pools"];
        let healthy = |c: &str| pools[c]["servers"][0]["healthy"] == true;
        if healthy("blue") && healthy("green") {
            return;
        }
        assert!(Instant::now() < end, "never healthy: {s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The live colour once it is `want`, and how long that took; `None`
/// if it is still something else after `limit`.
async fn live_becomes(
    c: &TestClient,
    proxy: &Proxy,
    want: &str,
    limit: Duration,
) -> Option<Duration> {
    let began = Instant::now();
    loop {
        if status(c, proxy).await["apps"]["shop"]["live"] == want {
            return Some(began.elapsed());
        }
        if began.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn history(c: &TestClient, proxy: &Proxy) -> Vec<serde_json::Value> {
    let r = admin_call(c, proxy, "GET", "/v1/history", "", &[]).await;
    r.json()["history"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_answering_500_flipped_without_a_rollout_is_reverted_within_5_s() {
    let (blue, green) = (
        upstream("blue", Answers::Ok).await,
        upstream("green", Answers::Failing).await,
    );
    let proxy = Proxy::start(&config(blue, green, ""));
    let c = client();
    both_healthy(&c, &proxy).await;
    let load = Load::start(&proxy, 20);
    // The guard's baseline: blue's requests before the flip.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    let flipped = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["apps"]["shop"]["live"], "green");
    assert_eq!(answer["guard"]["shop"]["window_seconds"], 120, "{answer:#}");
    let took = live_becomes(&c, &proxy, "blue", Duration::from_secs(10))
        .await
        .map(|_| flipped.elapsed());
    let (sent, failed) = load.stop().await;
    println!("guard reverted a 100 % 5xx green {took:?} after the flip at 20 req/s; {failed} of {sent} requests failed");
    let took = took.expect("the guard did not revert within 10 s");
    assert!(took <= Duration::from_secs(5), "reverted after {took:?}");
    let h = history(&c, &proxy).await;
    let last = h.last().unwrap();
    assert_eq!(last["kind"], "guard", "{last:#}");
    assert_eq!(last["actor"], "guard");
    assert_eq!(last["after"]["live"], "blue");
    let reason = last["reason"].as_str().unwrap();
    println!("history: {reason}");
    assert!(
        reason.contains("fast fail") && reason.contains("green") && reason.contains("bad"),
        "{reason}"
    );
    let flip = &h[h.len() - 2];
    assert_eq!(
        (&flip["kind"], &flip["guard"]),
        (&"flip".into(), &"2m".into())
    );
    // Undoing the revert would send users back to the failing green.
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollback", "", &[]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("its guard reverting"), "{}", r.text());
    let m = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    let line = "cutover_guard_reverts_total{app=\"shop\"} 1";
    assert!(m.contains(line), "{line} not in\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_answering_slowly_flipped_without_a_rollout_is_reverted_for_slowness() {
    // Every answer three times the default `guard_max_slow` (500ms).
    let slow = Answers::After(Duration::from_millis(1500));
    let (blue, green) = (
        upstream("blue", Answers::Ok).await,
        upstream("green", slow).await,
    );
    let proxy = Proxy::start(&config(blue, green, ""));
    let c = client();
    both_healthy(&c, &proxy).await;
    let load = Load::start(&proxy, 20);
    // The guard's baseline: blue's requests, none slow, before the flip.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    let flipped = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["guard"]["shop"]["max_slow"], "500ms", "{answer:#}");
    let took = live_becomes(&c, &proxy, "blue", Duration::from_secs(10))
        .await
        .map(|_| flipped.elapsed());
    let (sent, failed) = load.stop().await;
    println!("guard reverted a green answering in 1.5 s {took:?} after the flip at 20 req/s; {failed} of {sent} requests failed");
    let took = took.expect("the guard did not revert within 10 s");
    // Green's first answers end 1.5 s after the flip; the judge looks
    // once a second.
    assert!(took <= Duration::from_secs(5), "reverted after {took:?}");
    let h = history(&c, &proxy).await;
    let last = h.last().unwrap();
    assert_eq!(
        (&last["kind"], &last["actor"]),
        (&"guard".into(), &"guard".into())
    );
    assert_eq!(last["after"]["live"], "blue");
    let reason = last["reason"].as_str().unwrap();
    println!("history: {reason}");
    assert!(
        reason.starts_with("guard (slow responses, ") && reason.contains("slower than 500ms"),
        "{reason}"
    );
    let m = admin_call(&c, &proxy, "GET", "/metrics", "", &[])
        .await
        .text();
    for line in [
        "cutover_guard_reverts_total{app=\"shop\"} 1",
        "cutover_guard_slow_reverts_total{app=\"shop\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_green_flipped_stays_flipped_after_its_guard() {
    let (blue, green) = (
        upstream("blue", Answers::Ok).await,
        upstream("green", Answers::Ok).await,
    );
    let proxy = Proxy::start(&config(blue, green, "guard = \"3s\""));
    let c = client();
    both_healthy(&c, &proxy).await;
    let load = Load::start(&proxy, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (path, body, why) in [
        ("flip", r#"{"guard": "soon"}"#, "is neither"),
        ("flip", r#"{"guard": "0s"}"#, "shorter than 1s"),
        ("rollback", r#"{"guard": "off"}"#, "only flip and shift"),
        (
            "mirror",
            r#"{"percent": 5, "guard": "off"}"#,
            "only flip and shift",
        ),
    ] {
        let r = admin_call(
            &c,
            &proxy,
            "POST",
            &format!("/v1/apps/shop/{path}"),
            body,
            &[],
        )
        .await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(r.text().contains(why), "{path} {body}: {}", r.text());
    }
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["guard"]["shop"]["window_seconds"], 3);
    // Past the guard's window and a look more.
    assert_eq!(
        live_becomes(&c, &proxy, "blue", Duration::from_secs(5)).await,
        None,
        "a good flip was reverted"
    );
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} failed");
    let h = history(&c, &proxy).await;
    assert_eq!(h.last().unwrap()["kind"], "flip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_guard_leaves_a_bad_flip_alone_and_the_cli_says_when_a_guard_watches() {
    let (blue, green) = (
        upstream("blue", Answers::Ok).await,
        upstream("green", Answers::Failing).await,
    );
    let proxy = Proxy::start(&config(blue, green, ""));
    let c = client();
    both_healthy(&c, &proxy).await;
    let load = Load::start(&proxy, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = format!("http://{}", proxy.admin);
    let cli = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--admin".to_string(), admin.clone()]);
        run_cli(all)
    };
    let out = cli(&["flip", "shop", "--no-guard"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("guard"), "{text}");
    assert_eq!(
        live_becomes(&c, &proxy, "blue", Duration::from_secs(4)).await,
        None,
        "a flip made with --no-guard was reverted"
    );
    // A shift back to half on blue, guarded for 30 s by the command line.
    let out = cli(&["shift", "shop", "50", "--guard", "30s"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("guard: watching shop for 30s"), "{text}");
    let (_, failed) = load.stop().await;
    assert!(failed > 0, "the bad green answered no request");
    let bad = cli(&["flip", "shop", "--guard", "0s"]).await;
    assert!(!bad.status.success(), "--guard 0s was taken");
}
