//! The dashboard on the admin listener (`GET /`) and its live feed
//! (`GET /v1/events`): served without a token under a strict policy, fed
//! once a second to every open page together, and driven for real in
//! headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs) through WebDriver.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ: &str = "read-token-for-the-wall-screen";
const OPERATE: &str = "operate-token-for-the-release-manager";

/// `dir/cutover.toml`: app `shop` (blue `b`, green `g`, health-checked),
/// with a read and an operate token when `tokens`, and `extra` lines.
fn write_config(dir: &Path, b: &Upstream, g: &Upstream, tokens: bool, extra: &str) -> PathBuf {
    std::fs::write(dir.join("read.token"), READ).unwrap();
    std::fs::write(dir.join("operate.token"), OPERATE).unwrap();
    let tokens = match tokens {
        true => "[[admin.tokens]]\nname = \"wall\"\nrole = \"read\"\nfile = \"read.token\"\n\
                 [[admin.tokens]]\nname = \"release\"\nrole = \"operate\"\nfile = \"operate.token\"\n",
        false => "",
    };
    let health = "health = { path = \"/healthz\", interval = \"200ms\", timeout = \"500ms\", rise = 1, fall = 2 }";
    let text = format!(
        "[admin]\nmax_connections = 200\n{tokens}\n{extra}\n[apps.shop]\nguard = \"off\"\n\
         [apps.shop.blue]\nservers = [\"{}\"]\n{health}\n[apps.shop.green]\nservers = [\"{}\"]\n{health}\n",
        b.addr, g.addr
    );
    let path = dir.join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// `GET path` on the admin API with `token`, as a raw exchange, bounded.
async fn admin_get(proxy: &Proxy, path: &str, token: Option<&str>) -> Reply {
    let c = client();
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    admin_call(&c, proxy, "GET", path, "", &headers).await
}

/// The first `n` events of a `GET /v1/events` stream, as (name, JSON).
async fn first_events(admin: std::net::SocketAddr, token: &str, n: usize) -> Vec<(String, Value)> {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 16384];
    while text.matches("\n\n").count() < n + 1 {
        let got = s.read(&mut buf).await.unwrap();
        assert!(got > 0, "the stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..got]));
    }
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    body.split("\n\n")
        .filter(|e| e.contains("data: "))
        .take(n)
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.split_once("data: ")).unwrap().1;
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn the_page_needs_no_token_but_its_feed_does_and_both_keep_web_pages_out() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start_file(&write_config(dir.path(), &b, &g, true, ""));

        // The page, its script and its style: no token, a strict policy.
        for (path, kind) in [
            ("/", "text/html"),
            ("/dashboard.js", "text/javascript"),
            ("/dashboard.css", "text/css"),
        ] {
            let r = admin_get(&proxy, path, None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let header = |name: &str| r.headers[name].to_str().unwrap().to_string();
            assert!(header("content-type").starts_with(kind), "{path}");
            let csp = header("content-security-policy");
            for must in [
                "default-src 'none'",
                "script-src 'self'",
                "frame-ancestors 'none'",
            ] {
                assert!(csp.contains(must), "{path}: {csp}");
            }
            assert!(!csp.contains("unsafe-inline"), "{csp}");
            assert_eq!(header("x-content-type-options"), "nosniff");
        }
        let page = admin_get(&proxy, "/", None).await.text();
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "nothing inline: {page}"
        );

        // The feed is the admin API's: 401 without the token.
        let r = admin_get(&proxy, "/v1/events", None).await;
        assert_eq!(r.status, 401, "{}", r.text());
        // A page of another name (DNS rebinding) gets nothing, page included.
        let c = client();
        let evil = [("host", "evil.example")];
        let r = admin_call(&c, &proxy, "GET", "/", "", &evil).await;
        assert_eq!(r.status, 421, "{}", r.text());

        // A read token's feed: hello (the role, five minutes of series),
        // then each second a tick with the state.
        let events = first_events(proxy.admin, READ, 2).await;
        assert_eq!(events[0].0, "hello");
        assert_eq!(events[0].1["role"], "read");
        assert_eq!(events[0].1["actor"], "wall");
        assert_eq!(events[1].0, "tick");
        assert_eq!(events[1].1["status"]["apps"]["shop"]["live"], "blue");
        assert!(events[1].1["points"]["shop"]["blue"].is_array());
        let r = admin_get(&proxy, "/v1/events?wait=1s", Some(READ)).await;
        assert_eq!(r.status, 400, "the feed takes no parameter: {}", r.text());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_rollout_is_steered_with_the_epoch_the_caller_saw() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start_file(&write_config(dir.path(), &b, &g, false, ""));
        let c = client();
        let body =
            r#"{"steps": [10, 100], "every": "1h", "allow_low_traffic": true, "force": true}"#;
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/rollout", body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Once it holds at its first step (for an hour), its epoch stays.
        let start = Instant::now();
        let epoch = loop {
            let s = status(&c, &proxy).await;
            if s["apps"]["shop"]["rollout"]["state"] == "progressing" {
                break s["epoch"].as_u64().unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pause = |seen: u64| {
            let (c, proxy) = (&c, &proxy);
            async move {
                let seen = seen.to_string();
                let headers = [("if-match", seen.as_str())];
                let path = "/v1/apps/shop/rollout/pause";
                admin_call(c, proxy, "POST", path, "", &headers).await
            }
        };
        let r = pause(epoch - 1).await;
        assert_eq!(r.status, 412, "{}", r.text());
        assert_eq!(r.json()["epoch"], epoch);
        let r = pause(epoch).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["rollout"]["state"], "paused");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_feed_outlives_the_admin_idle_timeout_it_is_a_request_in_progress() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &b, &g, false, "");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("[admin]\n", "[admin]\nidle_timeout = \"1s\"\n");
        std::fs::write(&path, text).unwrap();
        let proxy = Proxy::start_file(&path);
        // Five ticks take about four seconds: four idle timeouts.
        let events = first_events(proxy.admin, "any", 6).await;
        assert_eq!(events.len(), 6);
        assert!(events[1..].iter().all(|(name, _)| name == "tick"));
    })
    .await
    .expect("test timed out");
}

/// The daemon's CPU time so far (user + system), from `/proc`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A daemon started as its own process, so that its CPU time is its own.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn fifty_open_pages_cost_the_daemon_one_feed_not_fifty() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let extra = format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n");
        let path = write_config(dir.path(), &b, &g, true, &extra);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "[admin]\n",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"),
        );
        std::fs::write(&path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["run", "--config"])
            .arg(&path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon(child);
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        // Ready once its feed answers.
        let start = Instant::now();
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut pages = Vec::new();
        for _ in 0..50 {
            pages.push(tokio::spawn(async move {
                // Each page reads its feed for the whole measurement.
                first_events(admin, READ, 10).await.len()
            }));
        }
        // Once all of them have their first tick, measure five seconds.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu0, t0) = (cpu_time(daemon.0.id()), Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let used = cpu_time(daemon.0.id()) - cpu0;
        let share = used.as_secs_f64() / t0.elapsed().as_secs_f64();
        eprintln!(
            "50 open pages: the daemon used {:.2} % of a core",
            100.0 * share
        );
        for p in pages {
            assert_eq!(p.await.unwrap(), 10, "every page got its ticks");
        }
        assert!(
            share < 0.05,
            "50 open pages cost the daemon {:.1} % of a core",
            100.0 * share
        );
    })
    .await
    .expect("test timed out");
}

// ---- in a real browser ----------------------------------------------------

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Start chromedriver and wait for its word that it listens.
    fn start() -> Driver {
        let port = free_port();
        let mut child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian's chromium-driver) must be installed: .ci/run installs it",
            );
        // Its output is read to the end (a closed pipe would stop it);
        // the line saying it listens is the signal to go on.
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("chromedriver did not start within 20 s");
        Driver { child, port }
    }

    /// A fresh headless Chromium with its own profile in `profile`.
    async fn browser(&self, profile: &Path) -> Browser {
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session in headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's text at `css`, once `ok` holds for it, within `limit`.
async fn until_text(b: &Browser, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Ok(e) = b.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css}: still {last:?} after {limit:?}");
}

async fn click(b: &Browser, css: &str) {
    let e = b
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css(css))
        .await;
    e.unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn use_token(b: &Browser, token: &str) {
    let input = b
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css("#token"))
        .await;
    input.unwrap().send_keys(token).await.unwrap();
    click(b, "#token-form button").await;
}

/// `GET /v1/status` with the operate token.
async fn live_of(proxy: &Proxy) -> (String, u64) {
    let s = admin_get(proxy, "/v1/status", Some(OPERATE)).await.json();
    let live = s["apps"]["shop"]["live"].as_str().unwrap().to_string();
    (live, s["epoch"].as_u64().unwrap())
}

/// The number in a figure like `blue 12.0`.
fn figure(text: &str) -> f64 {
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_shows_a_release_and_steers_it_safely() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start_file(&write_config(dir.path(), &b, &g, true, ""));
        let driver = Driver::start();
        let browser = driver.browser(&dir.path().join("profile")).await;
        browser.set_window_size(1280, 800).await.unwrap();
        let page = proxy.admin_url("/");
        browser.goto(&page).await.unwrap();

        // Tokens are configured: the page asks for one; a wrong one is
        // refused with an error, and nothing changes.
        let before = live_of(&proxy).await;
        use_token(&browser, "not-the-token").await;
        until_text(&browser, "#message", Duration::from_secs(5), |t| {
            t.contains("Wrong token")
        })
        .await;
        assert_eq!(live_of(&proxy).await, before);

        // A read token sees the page, without buttons.
        use_token(&browser, READ).await;
        until_text(
            &browser,
            "[data-app=shop] [data-live]",
            Duration::from_secs(5),
            |t| t == "BLUE" || t == "blue",
        )
        .await;
        assert!(
            browser
                .find(Locator::Css("[data-action=flip]"))
                .await
                .is_err(),
            "a read token gets no buttons"
        );

        // The operate token: blue live, and traffic shows up within 2 s.
        browser
            .execute(
                &format!(
                    "sessionStorage.setItem('cutover-token', '{OPERATE}'); location.reload();"
                ),
                vec![],
            )
            .await
            .unwrap();
        until_text(
            &browser,
            "[data-app=shop] [data-live]",
            Duration::from_secs(5),
            |t| t.eq_ignore_ascii_case("blue"),
        )
        .await;
        let c = client();
        let traffic = {
            let url = proxy.url("/");
            tokio::spawn(async move {
                let c = client();
                for _ in 0..400 {
                    let _ = get(&c, &url, &[]).await;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        };
        let sent = Instant::now();
        until_text(
            &browser,
            "[data-figure=rps-blue]",
            Duration::from_secs(2),
            |t| figure(t) > 0.0,
        )
        .await;
        assert!(
            sent.elapsed() <= Duration::from_secs(2),
            "{:?}",
            sent.elapsed()
        );
        assert!(
            browser
                .find(Locator::Css("[data-app=shop] polyline.blue"))
                .await
                .is_ok(),
            "a line drawn"
        );
        // A tenth to green for a while, for both colours' charts.
        let auth = bearer(OPERATE);
        let headers = [("authorization", auth.as_str())];
        let r = admin_call(
            &c,
            &proxy,
            "POST",
            "/v1/apps/shop/shift",
            r#"{"percent": 10}"#,
            &headers,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        until_text(
            &browser,
            "[data-figure=rps-green]",
            Duration::from_secs(3),
            |t| figure(t) > 0.0,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::fs::write(
            artifact("dashboard-1280.png"),
            browser.screenshot().await.unwrap(),
        )
        .unwrap();

        // Flip with the button (and its confirmation): green is live, for
        // the API and for a proxied request.
        click(&browser, "[data-action=flip]").await;
        click(&browser, "[data-action=confirm]").await;
        until_text(&browser, "#message", Duration::from_secs(5), |t| {
            t.contains("green is live")
        })
        .await;
        assert_eq!(live_of(&proxy).await.0, "green");
        assert_eq!(get(&c, &proxy.url("/"), &[]).await.text(), "green");
        until_text(
            &browser,
            "[data-app=shop] [data-live]",
            Duration::from_secs(3),
            |t| t.eq_ignore_ascii_case("green"),
        )
        .await;

        // Someone else flips while the page asks for confirmation: the
        // page's action is refused (412), changes nothing, and it refreshes.
        click(&browser, "[data-action=flip]").await;
        let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip", "", &headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let theirs = live_of(&proxy).await;
        assert_eq!(theirs.0, "blue");
        click(&browser, "[data-action=confirm]").await;
        until_text(&browser, "#message", Duration::from_secs(5), |t| {
            t.contains("nothing was done")
        })
        .await;
        assert_eq!(
            live_of(&proxy).await,
            theirs,
            "the stale page changed nothing"
        );
        until_text(
            &browser,
            "[data-app=shop] [data-live]",
            Duration::from_secs(3),
            |t| t.eq_ignore_ascii_case("blue"),
        )
        .await;
        traffic.abort();

        // At phone width nothing runs off the side.
        browser.set_window_size(390, 844).await.unwrap();
        let wide = browser
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            wide.as_i64().unwrap() <= 0,
            "the page is {wide} px wider than a phone"
        );
        std::fs::write(
            artifact("dashboard-phone.png"),
            browser.screenshot().await.unwrap(),
        )
        .unwrap();
        browser.close().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_without_tokens_the_page_works_and_other_origins_cannot_post() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start_file(&write_config(dir.path(), &b, &g, false, ""));
        let driver = Driver::start();
        let browser = driver.browser(&dir.path().join("profile")).await;

        // No token configured (the loopback default): no question asked.
        browser.goto(&proxy.admin_url("/")).await.unwrap();
        until_text(&browser, "[data-app=shop] [data-live]", Duration::from_secs(5), |t| t.eq_ignore_ascii_case("blue")).await;
        assert!(browser.find(Locator::Css("[data-action=flip]")).await.is_ok());
        let form = browser.find(Locator::Css("#token-form")).await.unwrap();
        assert!(!form.is_displayed().await.unwrap(), "no token asked for");

        // A page of another origin (the blue upstream's) posts a flip as
        // a form would: the admin API refuses it and nothing changes.
        let before = live_of(&proxy).await;
        browser.goto(&format!("http://{}/", b.addr)).await.unwrap();
        let flip = proxy.admin_url("/v1/apps/shop/flip");
        let sent = browser
            .execute_async(
                "const [url, done] = arguments; \
                 fetch(url, {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body: '{}'}) \
                   .then(r => done('sent ' + r.type), e => done('error ' + e));",
                vec![json!(flip)],
            )
            .await
            .unwrap();
        assert_eq!(sent, "sent opaque", "the request left the browser");
        assert_eq!(live_of(&proxy).await, before, "a cross-origin POST changed nothing");
        browser.close().await.unwrap();
    })
    .await
    .expect("test timed out");
}
