//! Shadow traffic end to end: a real blue upstream takes the live
//! requests, a real green one (the standby) receives the copies and
//! answers as each test tells it, and the real proxy in between copies,
//! compares and counts.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

use support::*;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    support::Body,
>;

/// How the standby answers.
#[derive(Clone)]
enum Behaviour {
    /// At once, with this status.
    Answer(u16),
    /// 200, after this long.
    Sleep(Duration),
    /// 200, once the sender says `true`.
    Hold(watch::Receiver<bool>),
    /// 200, with the body this gives for the request's path (JSON when it
    /// starts with `{`).
    Say(fn(&str) -> String),
}

/// One request the standby received.
#[derive(Debug, Clone)]
struct Copy {
    version: http::Version,
    method: String,
    path: String,
    mirror: Option<String>,
    body: Bytes,
}

/// A standby upstream that records each request as soon as its head and
/// body have arrived (before answering), and answers by its [`Behaviour`];
/// HTTP/1.1 and h2c alike.
struct Green {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Copy>>>,
    arrived: Arc<Notify>,
}

impl Green {
    async fn start(behaviour: Behaviour) -> Green {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (s, a) = (seen.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, a, b) = (s.clone(), a.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, a, b) = (s.clone(), a.clone(), b.clone());
                        async move {
                            let version = req.version();
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let mirror = req
                                .headers()
                                .get("x-cutover-mirror")
                                .map(|v| v.to_str().unwrap_or("").to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            s.lock().unwrap().push(Copy {
                                version,
                                method,
                                path: path.clone(),
                                mirror,
                                body,
                            });
                            a.notify_waiters();
                            let mut said = None;
                            let status = match b {
                                Behaviour::Answer(n) => n,
                                Behaviour::Say(say) => {
                                    said = Some(say(&path));
                                    200
                                }
                                Behaviour::Sleep(d) => {
                                    tokio::time::sleep(d).await;
                                    200
                                }
                                Behaviour::Hold(mut go) => {
                                    let _ = go.wait_for(|g| *g).await;
                                    200
                                }
                            };
                            let body = said.clone().unwrap_or_else(|| "green".into());
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            r.headers_mut()
                                .insert("x-upstream", http::HeaderValue::from_static("green"));
                            if said.is_some_and(|b| b.starts_with('{')) {
                                r.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/json"),
                                );
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Green {
            addr,
            seen,
            arrived,
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn copies(&self) -> Vec<Copy> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait (at most `limit`) until `n` requests have arrived.
    async fn arrived(&self, n: usize, limit: Duration) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let notified = self.arrived.notified();
                if self.count() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{} of {n} requests reached green in {limit:?}",
            self.count()
        );
    }
}

/// One app, `shop.test`, live on blue, with `mirror` as its
/// `[apps.shop.mirror]` table.
fn config(blue: SocketAddr, green: SocketAddr, mirror: &str) -> String {
    format!(
        r#"
[apps.shop]
hosts = ["shop.test"]
[apps.shop.mirror]
{mirror}
[apps.shop.blue]
servers = ["{blue}"]
[apps.shop.green]
servers = ["{green}"]
"#
    )
}

async fn metrics(c: &Client, proxy: &Proxy) -> String {
    let r = admin_call(c, proxy, "GET", "/metrics", "", &[]).await;
    assert_eq!(r.status, 200);
    r.text()
}

/// The value of the sample `series` (name and labels, as written).
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

fn outcome(text: &str, app: &str, outcome: &str) -> u64 {
    sample(
        text,
        &format!("cutover_mirror_total{{app=\"{app}\",outcome=\"{outcome}\"}}"),
    )
}

fn skipped(text: &str, app: &str, reason: &str) -> u64 {
    sample(
        text,
        &format!("cutover_mirror_skipped_total{{app=\"{app}\",reason=\"{reason}\"}}"),
    )
}

/// Read `/metrics` until `done` holds (at most `limit`): a copy is
/// counted by its own task, after the live answer was sent.
async fn metrics_until(
    c: &Client,
    proxy: &Proxy,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = metrics(c, proxy).await;
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached in {limit:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn shop(path: &str, proxy: &Proxy) -> String {
    proxy.url(path)
}

const HOST: &[(&str, &str)] = &[("host", "shop.test")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenth_of_live_gets_reach_the_standby_marked_as_copies() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let green = Green::start(Behaviour::Answer(200)).await;
        // Blue and green answer other bodies: statuses only, here.
        let mirror = "percent = 10\ncompare = [\"status\"]";
        let proxy = Proxy::start(&config(blue.addr, green.addr, mirror));
        let c = client();
        const N: usize = 1000;
        for i in 0..N {
            let r = get(&c, &shop(&format!("/items/{i}?q=1"), &proxy), HOST).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "blue", "live requests stay on blue");
        }
        // Every copy is compared once its own task is done: none in flight.
        let text = metrics_until(&c, &proxy, Duration::from_secs(10), |t| {
            sample(t, "cutover_mirror_in_flight{app=\"shop\"}") == 0
                && outcome(t, "shop", "same") + outcome(t, "shop", "dropped")
                    == green.count() as u64
        })
        .await;
        let copies = green.copies();
        // Binomial(1000, 0.1): mean 100, sd 9.5; this band is ±4.7 sd.
        assert!(
            (55..=145).contains(&copies.len()),
            "{} copies of {N} requests at 10%",
            copies.len()
        );
        assert!(copies
            .iter()
            .all(|c| c.mirror.as_deref() == Some("1") && c.method == "GET"));
        assert!(copies.iter().all(|c| c.path.starts_with("/items/")));
        for o in ["status_differs", "body_differs", "error", "skipped"] {
            assert_eq!(outcome(&text, "shop", o), 0, "{o}:\n{text}");
        }
        assert_eq!(sample(&text, "cutover_mirror_percent{app=\"shop\"}"), 10);
        // Copies are not green's real traffic.
        assert!(
            !text.lines().any(|l| l.starts_with("cutover_requests_total")
                && l.contains("color=\"green\"")
                && !l.ends_with(" 0")),
            "{text}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_copied_only_when_methods_name_it_and_its_body_fits() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let (green_shop, green_api) = (
            Green::start(Behaviour::Answer(200)).await,
            Green::start(Behaviour::Answer(200)).await,
        );
        // Blue and green answer other bodies: statuses only, here.
        let toml = format!(
            r#"
[apps.shop]
hosts = ["shop.test"]
[apps.shop.mirror]
percent = 100
compare = ["status"]
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{gs}"]

[apps.api]
hosts = ["api.test"]
[apps.api.mirror]
percent = 100
methods = ["GET", "POST"]
max_body = 1024
compare = ["status"]
[apps.api.blue]
servers = ["{b}"]
[apps.api.green]
servers = ["{ga}"]
"#,
            b = blue.addr,
            gs = green_shop.addr,
            ga = green_api.addr
        );
        let proxy = Proxy::start(&toml);
        let c = client();
        let api: &[(&str, &str)] = &[("host", "api.test")];

        // By default a POST is not copied; the GET after it is, and once
        // its copy is in, green has had nothing else.
        let r = send(&c, "POST", &proxy.url("/digest"), HOST, "a=1").await;
        assert_eq!(r.text(), format!("3 {}", sha256_hex(b"a=1")));
        let r = get(&c, &proxy.url("/after"), HOST).await;
        assert_eq!(r.status, 200);
        green_shop.arrived(1, Duration::from_secs(5)).await;
        let seen = green_shop.copies();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/after"));

        // Named in `methods`, with a small body of known length: copied,
        // body and all, while the live request gets its own whole.
        let body = "hello, standby";
        let r = send(&c, "POST", &proxy.url("/digest"), api, body).await;
        assert_eq!(r.text(), format!("{} {}", body.len(), sha256_hex(body.as_bytes())));
        green_api.arrived(1, Duration::from_secs(5)).await;
        let copy = &green_api.copies()[0];
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.mirror.as_deref(), Some("1"));
        assert_eq!(copy.body, body.as_bytes());

        // Past max_body, or of unknown length (chunked): not copied, and
        // the live request is untouched.
        let big = "x".repeat(2000);
        let r = send(&c, "POST", &proxy.url("/digest"), api, big.clone()).await;
        assert_eq!(r.text(), format!("2000 {}", sha256_hex(big.as_bytes())));
        let chunked = b"POST /digest HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let (codes, text) = raw_statuses(proxy.addr, chunked, Duration::from_secs(5)).await;
        assert_eq!(codes, [200], "{text}");

        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "api", "same") == 1 && outcome(t, "shop", "same") == 1
        })
        .await;
        assert_eq!(skipped(&text, "shop", "method"), 1, "{text}");
        assert_eq!(outcome(&text, "shop", "skipped"), 1);
        assert_eq!(skipped(&text, "api", "body_too_large"), 1, "{text}");
        assert_eq!(skipped(&text, "api", "body_length_unknown"), 1, "{text}");
        assert_eq!(outcome(&text, "api", "skipped"), 2);
        assert_eq!(green_api.count(), 1, "nothing else was copied");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_past_max_in_flight_are_dropped_and_counted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let (release, hold) = watch::channel(false);
        let green = Green::start(Behaviour::Hold(hold)).await;
        let mirror = "percent = 100\nmax_in_flight = 1\ntimeout = \"30s\"\ncompare = [\"status\"]";
        let proxy = Proxy::start(&config(blue.addr, green.addr, mirror));
        let c = client();
        // The first copy takes the only place and is held by green; the
        // nine after it find none, while their live requests go on.
        for i in 0..10 {
            let r = get(&c, &shop(&format!("/{i}"), &proxy), HOST).await;
            assert_eq!(r.text(), "blue");
        }
        green.arrived(1, Duration::from_secs(5)).await;
        let text = metrics(&c, &proxy).await;
        assert_eq!(outcome(&text, "shop", "dropped"), 9, "{text}");
        assert_eq!(sample(&text, "cutover_mirror_in_flight{app=\"shop\"}"), 1);
        assert_eq!(green.count(), 1);

        release.send_replace(true);
        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "same") == 1
        })
        .await;
        assert_eq!(sample(&text, "cutover_mirror_in_flight{app=\"shop\"}"), 0);
        assert_eq!(outcome(&text, "shop", "dropped"), 9);
        // With its place free again, the next copy goes.
        get(&c, &shop("/again", &proxy), HOST).await;
        green.arrived(2, Duration::from_secs(5)).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answering_500_where_live_answers_200_shows_as_status_differs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let green = Green::start(Behaviour::Answer(500)).await;
        // Off in the file; turned on at runtime, through the CLI.
        let proxy = Proxy::start(&config(blue.addr, green.addr, "percent = 0"));
        let c = client();
        let bad = admin_call(
            &c,
            &proxy,
            "PUT",
            "/v1/apps/shop/mirror",
            r#"{"percent": 150}"#,
            &[],
        )
        .await;
        assert_eq!(bad.status, 400, "{}", bad.text());
        let admin = format!("http://{}", proxy.admin);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args(["mirror", "shop", "100", "--admin", &admin])
                .env_remove("CUTOVER_ADMIN")
                .env_remove("CUTOVER_TOKEN")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("100% of live traffic mirrored"), "{said}");
        let st = status(&c, &proxy).await;
        assert_eq!(st["apps"]["shop"]["mirror"]["percent"], 100.0);
        assert_eq!(st["apps"]["shop"]["mirror"]["percent_source"], "runtime");

        // More 500s than passive health's threshold (5).
        for _ in 0..8 {
            let r = get(&c, &shop("/orders/7?token=secret", &proxy), HOST).await;
            assert_eq!(r.status, 200);
        }
        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "status_differs") == 8
        })
        .await;
        assert_eq!(outcome(&text, "shop", "same"), 0);

        let st = status(&c, &proxy).await;
        let m = &st["apps"]["shop"]["mirror"];
        assert_eq!(
            (m["compared"].as_u64(), m["mismatched"].as_u64()),
            (Some(8), Some(8))
        );
        let diffs = m["differences"].as_array().unwrap();
        assert_eq!(diffs.len(), 8);
        let d = &diffs[0];
        assert_eq!(d["method"], "GET");
        assert_eq!(d["path"], "/orders/7", "the query stays out: {d}");
        assert_eq!(d["live_status"], 200);
        assert_eq!(d["shadow_status"], 500);
        assert_eq!(d["outcome"], "status_differs");
        assert!(d["time"].as_str().unwrap().ends_with('Z'), "{d}");
        // Copies' 500s are no evidence against green's health.
        let server = &st["apps"]["shop"]["pools"]["green"]["servers"][0];
        assert_eq!(server["healthy"], true, "{server}");

        // The change is in the history, in words.
        let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[])
            .await
            .json();
        let last = h["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["kind"], "mirror");
        assert_eq!(last["changes"][0], "mirror configured -> 100%");
        // POST works as PUT does, and 0 turns it off.
        let off = admin_call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/mirror",
            r#"{"percent": 0}"#,
            &[],
        )
        .await;
        assert_eq!(off.status, 200, "{}", off.text());
        assert_eq!(off.json()["apps"]["shop"]["mirror"]["percent"], 0.0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_sleeps_five_seconds_adds_no_latency_to_live_requests() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let green = Green::start(Behaviour::Sleep(Duration::from_secs(5))).await;
        let proxy = Proxy::start(&config(blue.addr, green.addr, "percent = 100"));
        let c = client();
        let mut took = Vec::new();
        for i in 0..40 {
            let started = Instant::now();
            let r = get(&c, &shop(&format!("/{i}"), &proxy), HOST).await;
            took.push(started.elapsed());
            assert_eq!(r.text(), "blue");
        }
        // Each live request is answered while its copy still waits on
        // green: a live request that waited would take 2 s (the copies'
        // timeout) or 5 s.
        took.sort();
        let slowest = *took.last().unwrap();
        assert!(slowest < Duration::from_secs(1), "{took:?}");
        green.arrived(40, Duration::from_secs(5)).await;
        let text = metrics(&c, &proxy).await;
        assert!(
            sample(&text, "cutover_mirror_in_flight{app=\"shop\"}") > 0,
            "{text}"
        );
        // Past their timeout, the copies count as errors.
        let text = metrics_until(&c, &proxy, Duration::from_secs(10), |t| {
            outcome(t, "shop", "error") == 40
        })
        .await;
        assert_eq!(sample(&text, "cutover_mirror_in_flight{app=\"shop\"}"), 0);
        let st = status(&c, &proxy).await;
        assert_eq!(
            st["apps"]["shop"]["mirror"]["differences"][0]["error"],
            "timeout"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_never_copied() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = WsUpstream::start("blue").await;
        let green = Green::start(Behaviour::Answer(200)).await;
        let toml = format!(
            "[apps.ws]\n[apps.ws.mirror]\npercent = 100\n[apps.ws.blue]\nservers = [\"{}\"]\n[apps.ws.green]\nservers = [\"{}\"]\n",
            blue.addr, green.addr
        );
        let proxy = Proxy::start(&toml);
        let c = client();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr))
            .await
            .unwrap();
        assert_eq!(ws_echo(&mut ws, "hi").await, "blue:hi");
        let text = metrics(&c, &proxy).await;
        assert_eq!(skipped(&text, "ws", "upgrade"), 1, "{text}");
        assert_eq!(green.count(), 0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_compared_by_default_and_only_up_to_max_body() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let green = Green::start(Behaviour::Answer(200)).await;
        let mirror = "percent = 100\nmax_body = 4096";
        let proxy = Proxy::start(&config(blue.addr, green.addr, mirror));
        let c = client();
        // Blue answers "blue", green "green": same status, other body.
        get(&c, &shop("/page", &proxy), HOST).await;
        // A live answer past max_body is compared by its status only.
        let r = get(&c, &shop("/download/10000", &proxy), HOST).await;
        assert_eq!(r.body.len(), 10000);
        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "body_differs") + outcome(t, "shop", "same") == 2
        })
        .await;
        assert_eq!(outcome(&text, "shop", "body_differs"), 1, "{text}");
        assert_eq!(outcome(&text, "shop", "same"), 1, "{text}");
        let st = status(&c, &proxy).await;
        let m = &st["apps"]["shop"]["mirror"];
        assert_eq!(m["compare"], serde_json::json!(["status", "body"]));
        assert_eq!(m["compare_source"], "config");
        let d = &m["differences"][0];
        assert_eq!(
            (d["path"].as_str(), d["outcome"].as_str()),
            (Some("/page"), Some("body_differs"))
        );
        // Plain text differs at its first differing byte, both sides shown.
        assert_eq!(d["where"], "byte 0", "{d}");
        assert_eq!(
            (d["live_value"].as_str(), d["shadow_value"].as_str()),
            (Some("blue"), Some("green"))
        );
    })
    .await
    .expect("test timed out");
}

/// Blue's cart: a time and a request id that differ on every answer.
fn blue_cart(_: &str) -> String {
    r#"{"timestamp": "12:00:01", "request_id": "a1", "cart": {"items": [{"sku": "x", "price": 10}]}}"#.into()
}

/// Green's: other times and ids; on `/cart/other`, another price too.
fn green_cart(path: &str) -> String {
    let price = if path == "/cart/other" { 12 } else { 10 };
    format!(
        r#"{{"cart": {{"items": [{{"price": {price}, "sku": "x"}}]}}, "request_id": "b2", "timestamp": "12:00:02"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_differing_only_in_ignored_fields_match_and_others_name_their_path() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Green::start(Behaviour::Say(blue_cart)).await;
        let green = Green::start(Behaviour::Say(green_cart)).await;
        let mirror = "percent = 100\nignore_json_fields = [\"$.timestamp\", \"$.request_id\"]";
        let proxy = Proxy::start(&config(blue.addr, green.addr, mirror));
        let c = client();
        let r = get(&c, &shop("/cart/same", &proxy), HOST).await;
        assert_eq!(r.text(), blue_cart(""));
        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "same") + outcome(t, "shop", "body_differs") == 1
        })
        .await;
        assert_eq!(
            outcome(&text, "shop", "same"),
            1,
            "other order, ignored fields: {text}"
        );

        get(&c, &shop("/cart/other", &proxy), HOST).await;
        metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "body_differs") == 1
        })
        .await;
        let st = status(&c, &proxy).await;
        let d = &st["apps"]["shop"]["mirror"]["differences"][0];
        assert_eq!(d["path"], "/cart/other");
        assert_eq!(d["outcome"], "body_differs");
        assert_eq!(d["where"], "$.cart.items[0].price", "{d}");
        assert_eq!(
            (d["live_value"].as_str(), d["shadow_value"].as_str()),
            (Some("10"), Some("12"))
        );
        let mismatched = &st["apps"]["shop"]["mirror"]["mismatched"];
        assert_eq!(mismatched, 1);
        // `cutover status` says it in words.
        let admin = format!("http://{}", proxy.admin);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args(["status", "--admin", &admin])
                .env_remove("CUTOVER_ADMIN")
                .env_remove("CUTOVER_TOKEN")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("compared, 1 mismatched (compare status, body)"),
            "{said}"
        );
        assert!(
            said.contains("at $.cart.items[0].price: live \"10\" shadow \"12\""),
            "{said}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fields_are_compared_when_asked_but_not_those_ignored() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        // Green adds `x-upstream: green`; blue has no such field.
        let green = Green::start(Behaviour::Answer(200)).await;
        let mirror = "percent = 100\ncompare = [\"status\", \"headers\"]";
        let proxy = Proxy::start(&config(blue.addr, green.addr, mirror));
        let c = client();
        get(&c, &shop("/h", &proxy), HOST).await;
        metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "headers_differ") == 1
        })
        .await;
        let st = status(&c, &proxy).await;
        let d = &st["apps"]["shop"]["mirror"]["differences"][0];
        assert_eq!(d["where"], "header x-upstream", "{d}");
        assert_eq!(d["live_value"], serde_json::Value::Null, "{d}");
        assert_eq!(d["shadow_value"], "green", "{d}");

        let ignored = format!("{mirror}\nignore_headers = [\"X-Upstream\"]");
        let proxy = Proxy::start(&config(blue.addr, green.addr, &ignored));
        get(&c, &shop("/h", &proxy), HOST).await;
        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "same") + outcome(t, "shop", "headers_differ") == 1
        })
        .await;
        assert_eq!(outcome(&text, "shop", "same"), 1, "{text}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_copies_are_compared_by_is_switched_at_runtime() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let green = Green::start(Behaviour::Answer(200)).await;
        let mirror = "percent = 100\ncompare = [\"status\"]";
        let proxy = Proxy::start(&config(blue.addr, green.addr, mirror));
        let c = client();
        // Status only, as the file says: "blue" and "green" are the same.
        get(&c, &shop("/a", &proxy), HOST).await;
        metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "same") == 1
        })
        .await;

        let admin = format!("http://{}", proxy.admin);
        let cli = |args: &'static [&'static str]| {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                    .args(args)
                    .args(["--admin", &admin])
                    .env_remove("CUTOVER_ADMIN")
                    .env_remove("CUTOVER_TOKEN")
                    .output()
                    .unwrap()
            })
        };
        let out = cli(&["mirror", "shop", "100", "--compare", "status,body"])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = &status(&c, &proxy).await["apps"]["shop"]["mirror"];
        assert_eq!(m["compare"], serde_json::json!(["status", "body"]));
        assert_eq!(m["compare_source"], "runtime");
        get(&c, &shop("/b", &proxy), HOST).await;
        metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "body_differs") == 1
        })
        .await;
        let h = admin_call(&c, &proxy, "GET", "/v1/history", "", &[])
            .await
            .json();
        let last = h["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last["changes"],
            serde_json::json!([
                "mirror configured -> 100%",
                "mirror compare configured -> [status, body]"
            ])
        );

        // A list without status, a word that is no item, or a compare
        // list given to shift: refused.
        let bad = cli(&["mirror", "shop", "100", "--compare", "status,bodies"])
            .await
            .unwrap();
        assert_eq!(
            bad.status.code(),
            Some(64),
            "{}",
            String::from_utf8_lossy(&bad.stderr)
        );
        for (path, body) in [
            (
                "/v1/apps/shop/mirror",
                r#"{"percent": 100, "compare": ["body"]}"#,
            ),
            (
                "/v1/apps/shop/shift",
                r#"{"percent": 10, "compare": ["status"]}"#,
            ),
        ] {
            let r = admin_call(&c, &proxy, "POST", path, body, &[]).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            assert!(r.text().contains("compare"), "{}", r.text());
        }

        // Back to status only, through the API.
        let r = admin_call(
            &c,
            &proxy,
            "PUT",
            "/v1/apps/shop/mirror",
            r#"{"percent": 100, "compare": ["status"]}"#,
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        get(&c, &shop("/c", &proxy), HOST).await;
        let text = metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "same") == 2
        })
        .await;
        assert_eq!(outcome(&text, "shop", "body_differs"), 1, "{text}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_speaks_h2_gets_its_copies_over_h2() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let blue = Upstream::start("blue").await;
        let green = Green::start(Behaviour::Answer(200)).await;
        let toml = format!(
            r#"
[apps.shop]
hosts = ["shop.test"]
[apps.shop.mirror]
percent = 100
methods = ["GET", "POST"]
compare = ["status"]
[apps.shop.blue]
servers = ["{}"]
[apps.shop.green]
servers = ["{}"]
protocol = "h2"
"#,
            blue.addr, green.addr
        );
        let proxy = Proxy::start(&toml);
        let c = client();
        get(&c, &shop("/a?x=1", &proxy), HOST).await;
        send(&c, "POST", &proxy.url("/b"), HOST, "body over h2").await;
        green.arrived(2, Duration::from_secs(5)).await;
        let copies = green.copies();
        assert!(
            copies
                .iter()
                .all(|c| c.version == http::Version::HTTP_2 && c.mirror.as_deref() == Some("1")),
            "{copies:?}"
        );
        let post = copies.iter().find(|c| c.method == "POST").unwrap();
        assert_eq!(
            (post.path.as_str(), &post.body[..]),
            ("/b", &b"body over h2"[..])
        );
        metrics_until(&c, &proxy, Duration::from_secs(5), |t| {
            outcome(t, "shop", "same") == 2
        })
        .await;
    })
    .await
    .expect("test timed out");
}
