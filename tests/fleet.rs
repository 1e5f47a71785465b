//! A fleet end to end: a real etcd (Debian's `etcd-server`) on loopback,
//! several real cutover daemons sharing their state through it, real
//! upstreams and real clients. etcd is stopped, cut off and compacted on
//! purpose; daemons are killed.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// A one-member etcd in a temporary folder, on free loopback ports.
struct Etcd {
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    child: Option<Child>,
    /// Serving TLS (with `etcd.pem`, `etcd.key` and `ca.pem` in `dir`)
    /// and asking clients for certificates.
    tls: bool,
}

impl Etcd {
    fn start() -> Etcd {
        Etcd::start_tls(None)
    }

    /// With a certificate from `ca`: TLS both ways.
    fn start_tls(ca: Option<&TestCa>) -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
            child: None,
            tls: ca.is_some(),
        };
        if let Some(ca) = ca {
            ca.issue(etcd.dir.path(), "etcd", &["127.0.0.1"]);
            std::fs::write(etcd.dir.path().join("ca.pem"), &ca.pem).unwrap();
        }
        etcd.launch();
        etcd
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    /// Start (again, on the same data) and wait until it answers.
    fn launch(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let dir = self.dir.path();
        let tls: Vec<std::ffi::OsString> = match self.tls {
            true => vec![
                "--cert-file".into(),
                dir.join("etcd.pem").into(),
                "--key-file".into(),
                dir.join("etcd.key").into(),
                "--trusted-ca-file".into(),
                dir.join("ca.pem").into(),
                "--client-cert-auth".into(),
            ],
            false => vec![],
        };
        let child = Command::new("etcd")
            .args(tls)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server package) must be installed for the fleet tests");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client)).is_err() {
            assert!(Instant::now() < end, "etcd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP or SIGCONT: etcd stops answering without closing a thing.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay in front of etcd that can be cut: one instance's link to
/// etcd, broken while the others keep theirs.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let cut = tokio::sync::watch::Sender::new(0u64);
        let (o, c) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(SeqCst) {
                    continue;
                }
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { addr, open, cut }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drop every connection and refuse new ones.
    fn cut(&self) {
        self.open.store(false, SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn mend(&self) {
        self.open.store(true, SeqCst);
    }
}

/// A cutover daemon of the fleet, as its own process.
struct Instance {
    name: String,
    dir: PathBuf,
    admin: u16,
    port: u16,
    child: Option<Child>,
}

impl Instance {
    /// `name` in `dir` (its config and local copy), reaching etcd at
    /// `etcd`, with blue and green servers.
    fn start(name: &str, dir: &Path, etcd: &str, blue: SocketAddr, green: SocketAddr) -> Instance {
        Instance::start_with(name, dir, etcd, (blue, green), "")
    }

    /// With more `[state]` keys.
    fn start_with(
        name: &str,
        dir: &Path,
        etcd: &str,
        (blue, green): (SocketAddr, SocketAddr),
        state: &str,
    ) -> Instance {
        let (port, admin) = (free_port(), free_port());
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
shutdown_timeout = "2s"
[admin]
listen = "127.0.0.1:{admin}"
[state]
backend = "etcd"
file = "state.json"
endpoints = ["{etcd}"]
cluster = "test"
instance = "{name}"
timeout = "1s"
{state}
[apps.shop]
[apps.shop.blue]
servers = ["{blue}"]
[apps.shop.green]
servers = ["{green}"]
"#
        );
        std::fs::write(dir.join("cutover.toml"), config).unwrap();
        let mut i = Instance {
            name: name.to_string(),
            dir,
            admin,
            port,
            child: None,
        };
        i.launch();
        i
    }

    fn launch(&mut self) {
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(self.dir.join("cutover.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_err() {
            assert!(
                Instant::now() < end,
                "{} did not start: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn admin_arg(&self) -> String {
        format!("--admin=http://127.0.0.1:{}", self.admin)
    }

    /// SIGKILL: the instance dies without a word to etcd.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for it to exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> Reply {
        let headers = with_json(method, &[]);
        send(
            &client(),
            method,
            &self.admin_url(path),
            &headers,
            body.to_string(),
        )
        .await
    }

    async fn status(&self) -> Value {
        let r = self.call("GET", "/v1/status", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The colour that answers a proxied request.
    async fn serves(&self) -> String {
        get(&client(), &self.url("/"), &[]).await.text()
    }

    /// Wait until `done` holds of this instance's status (at most
    /// `limit`; a panic with the last status seen).
    async fn until(&self, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + limit;
        loop {
            let s = self.status().await;
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "{}: gave up waiting; status: {s:#}\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until this instance lists `n` instances in its fleet.
    async fn sees(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(15);
        while self.call("GET", "/v1/fleet", "").await.json()["instances"]
            .as_array()
            .map(Vec::len)
            != Some(n)
        {
            assert!(
                Instant::now() < end,
                "{} does not see {n} instances",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn connected(&self) -> Value {
        self.until(Duration::from_secs(15), |s| s["fleet"]["connected"] == true)
            .await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three instances of one fleet, connected.
async fn fleet_of(n: usize, etcd: &str, dir: &Path, up: &(Upstream, Upstream)) -> Vec<Instance> {
    let names = ["a", "b", "c", "d", "e"];
    let mut all = Vec::new();
    for name in &names[..n] {
        all.push(Instance::start(name, dir, etcd, up.0.addr, up.1.addr));
    }
    for i in &all {
        i.connected().await;
    }
    // Each has seen every report: a change made now waits for them all.
    for i in &all {
        let end = Instant::now() + Duration::from_secs(15);
        while i.call("GET", "/v1/fleet", "").await.json()["instances"]
            .as_array()
            .map(Vec::len)
            != Some(n)
        {
            assert!(
                Instant::now() < end,
                "{} does not see the whole fleet",
                i.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    all
}

fn live(s: &Value) -> &str {
    s["apps"]["shop"]["live"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_on_one_instance_is_served_by_all_within_a_second_and_acknowledged() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let fleet = fleet_of(3, &etcd.url(), dir.path(), &up).await;
    for i in &fleet {
        assert_eq!(i.serves().await, "blue");
    }
    let started = Instant::now();
    let r = fleet[0]
        .call("POST", "/v1/apps/shop/flip?wait=5s", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let epoch = answer["epoch"].as_u64().unwrap();
    assert_eq!(
        answer["waited"]["missing"],
        serde_json::json!([]),
        "{answer:#}"
    );
    assert_eq!(
        answer["waited"]["confirmed"],
        serde_json::json!(["a", "b", "c"])
    );
    // Each instance serves it: checked by a proxied request, not only by
    // its report.
    for i in &fleet {
        while i.serves().await != "green" {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{} still serves blue",
                i.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    // The epoch is the fleet's: the same on every instance.
    for i in &fleet {
        assert_eq!(i.status().await["epoch"].as_u64(), Some(epoch));
    }
    let f = fleet[1].call("GET", "/v1/fleet", "").await.json();
    assert_eq!(f["backend"], "etcd");
    let ids: Vec<&str> = f["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    for i in f["instances"].as_array().unwrap() {
        assert_eq!(i["in_sync"], true, "{f:#}");
        assert_eq!(i["epoch"].as_u64(), Some(epoch));
    }
    // The CLI lists them too, and `--wait` answers 0 when all confirm.
    let out = run_cli(vec!["fleet".into(), fleet[2].admin_arg()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in ["a", "b", "c"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("yes")),
            "{text}"
        );
    }
    let out = run_cli(vec![
        "flip".into(),
        "shop".into(),
        "--wait=5s".into(),
        fleet[2].admin_arg(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("fleet: all 3 instance(s) serve epoch"),
        "{text}"
    );
    for i in &fleet {
        assert_eq!(i.serves().await, "blue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_flips_on_two_instances_never_lose_an_update() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let fleet = fleet_of(2, &etcd.url(), dir.path(), &up).await;
    let first = fleet[0].status().await["epoch"].as_u64().unwrap();
    let mut applied = 0;
    for _ in 0..10 {
        let (x, y) = tokio::join!(
            fleet[0].call("POST", "/v1/apps/shop/flip", ""),
            fleet[1].call("POST", "/v1/apps/shop/flip", "")
        );
        for r in [x, y] {
            match r.status.as_u16() {
                200 => applied += 1,
                409 => {
                    assert!(r.text().contains("moved on"), "{}", r.text());
                    assert!(
                        r.json()["epoch"].is_u64(),
                        "the fleet's epoch now: {}",
                        r.text()
                    );
                }
                other => panic!("flip answered {other}: {}", r.text()),
            }
        }
    }
    assert!(
        applied >= 10,
        "one of each pair at least applies: {applied}"
    );
    // Every flip that was answered 200 is in the fleet's state: the
    // epoch counts them, the colour is their parity, on both instances.
    let want = if applied % 2 == 0 { "blue" } else { "green" };
    for i in &fleet {
        let s = i
            .until(Duration::from_secs(5), |s| {
                s["epoch"].as_u64() == Some(first + applied)
            })
            .await;
        assert_eq!(live(&s), want);
        assert_eq!(i.serves().await, want);
    }
    let h = fleet[1].call("GET", "/v1/history", "").await.json();
    let flips = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "flip")
        .count();
    assert_eq!(flips as u64, applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_traffic_flows_changes_are_refused_and_the_instance_says_so() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let fleet = fleet_of(2, &etcd.url(), dir.path(), &up).await;
    etcd.stop();
    for i in &fleet {
        let s = i
            .until(Duration::from_secs(15), |s| {
                s["fleet"]["connected"] == false
            })
            .await;
        assert!(s["fleet"]["last_error"].as_str().is_some(), "{s:#}");
        assert_eq!(i.serves().await, "blue");
    }
    let r = fleet[0].call("POST", "/v1/apps/shop/flip", "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("etcd"), "{}", r.text());
    assert_eq!(live(&fleet[0].status().await), "blue", "nothing changed");
    let m = get(&client(), &fleet[1].admin_url("/metrics"), &[])
        .await
        .text();
    assert!(
        m.contains("cutover_fleet_connected{cluster=\"test\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("cutover_fleet_lag_seconds{cluster=\"test\"}"),
        "{m}"
    );
    // etcd back: both reconnect, and a change goes through again.
    etcd.launch();
    for i in &fleet {
        i.connected().await;
    }
    let r = fleet[0]
        .call("POST", "/v1/apps/shop/flip?wait=5s", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["waited"]["missing"], serde_json::json!([]));
    assert_eq!(fleet[1].serves().await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_catches_up_even_past_a_compaction() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let relay = Relay::start(etcd.client).await;
    let a = Instance::start("a", dir.path(), &etcd.url(), up.0.addr, up.1.addr);
    let c = Instance::start("c", dir.path(), &relay.url(), up.0.addr, up.1.addr);
    a.connected().await;
    c.connected().await;
    a.sees(2).await;
    relay.cut();
    c.until(Duration::from_secs(15), |s| {
        s["fleet"]["connected"] == false
    })
    .await;
    // Three changes it misses — the first made waiting for the fleet,
    // which says c did not confirm it (exit 5) — then the history it
    // would watch from is compacted away.
    let args = ["flip", "shop", "--wait=1s", &a.admin_arg()];
    let out = run_cli(args.iter().map(|s| s.to_string()).collect()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains("not confirmed: c"), "{text}");
    for _ in 0..2 {
        assert_eq!(a.call("POST", "/v1/apps/shop/flip", "").await.status, 200);
    }
    let mut e = etcd.client().await;
    let rev = e.get("x", None).await.unwrap().header().unwrap().revision();
    e.compact(rev, None).await.unwrap();
    assert_eq!(c.serves().await, "blue", "cut off, it serves what it had");
    let epoch = a.status().await["epoch"].as_u64().unwrap();
    relay.mend();
    let s = c
        .until(Duration::from_secs(15), |s| {
            s["epoch"].as_u64() == Some(epoch)
        })
        .await;
    assert_eq!(live(&s), "green");
    assert_eq!(c.serves().await, "green");
    assert_eq!(s["fleet"]["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_while_etcd_is_down_serves_its_local_copy() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let mut a = Instance::start("a", dir.path(), &etcd.url(), up.0.addr, up.1.addr);
    a.connected().await;
    assert_eq!(a.call("POST", "/v1/apps/shop/flip", "").await.status, 200);
    a.stop();
    etcd.stop();
    a.launch();
    let s = a.status().await;
    assert_eq!(live(&s), "green", "{s:#}");
    assert_eq!(a.serves().await, "green");
    assert_eq!(s["fleet"]["connected"], false);
    etcd.launch();
    a.connected().await;
    assert_eq!(a.serves().await, "green");
}

/// Green that fails every request.
async fn failing_green() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer =
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\ngreen";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Requests through `i` until `stop` is set.
fn load(i: &Instance, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = i.url("/");
    tokio::spawn(async move {
        let c = client();
        while !stop.load(SeqCst) {
            let req = hyper::Request::get(&url).body(Default::default()).unwrap();
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), c.request(req)).await
            {
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_judged_on_every_instances_traffic() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let blue = Upstream::start("blue").await;
    let green = failing_green().await;
    let a = Instance::start("a", dir.path(), &etcd.url(), blue.addr, green);
    a.until(Duration::from_secs(15), |s| s["fleet"]["judge"] == true)
        .await;
    let b = Instance::start("b", dir.path(), &etcd.url(), blue.addr, green);
    b.connected().await;
    let plan = r#"{"steps": [50, 100], "every": "30s", "max_error_rate": "1%"}"#;
    let r = a.call("POST", "/v1/apps/shop/rollout", plan).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Traffic only through b, which does not judge: a sees its failures
    // in b's reports, and fails the rollout (rolling back) long before
    // the 30 s step is over.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&b, stop.clone());
    let s = a
        .until(Duration::from_secs(20), |s| {
            s["apps"]["shop"]["rollout"]["state"] == "failed"
        })
        .await;
    stop.store(true, SeqCst);
    traffic.await.unwrap();
    assert_eq!(live(&s), "blue");
    let s = b
        .until(Duration::from_secs(5), |s| {
            s["apps"]["shop"]["rollout"]["state"] == "failed"
        })
        .await;
    assert_eq!(s["apps"]["shop"]["standby_percent"], 0.0);
    assert_eq!(b.serves().await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_on_when_the_instance_judging_it_dies() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let mut a = Instance::start("a", dir.path(), &etcd.url(), up.0.addr, up.1.addr);
    a.until(Duration::from_secs(15), |s| s["fleet"]["judge"] == true)
        .await;
    let b = Instance::start("b", dir.path(), &etcd.url(), up.0.addr, up.1.addr);
    b.connected().await;
    let plan = r#"{"steps": [50, 100], "every": "2s", "allow_low_traffic": true}"#;
    let r = a.call("POST", "/v1/apps/shop/rollout", plan).await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.kill();
    // b takes the judge's lease once a's runs out, and finishes from the
    // stored record.
    b.until(Duration::from_secs(20), |s| s["fleet"]["judge"] == true)
        .await;
    let s = b
        .until(Duration::from_secs(30), |s| {
            s["apps"]["shop"]["rollout"]["state"] == "succeeded"
        })
        .await;
    assert_eq!(live(&s), "green");
    assert_eq!(b.serves().await, "green");
    let f = b.call("GET", "/v1/fleet", "").await.json();
    let ids: Vec<&str> = f["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b"], "a's report went with its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_refused_without_a_fleet() {
    let up = blue_green().await;
    let proxy = Proxy::start(&format!(
        "[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
        up.0.addr, up.1.addr
    ));
    let c = client();
    let r = admin_call(&c, &proxy, "POST", "/v1/apps/shop/flip?wait=5s", "", &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("wait"), "{}", r.text());
    assert_eq!(status(&c, &proxy).await["epoch"], 0, "nothing changed");
    let f = admin_call(&c, &proxy, "GET", "/v1/fleet", "", &[])
        .await
        .json();
    assert_eq!(f["backend"], "file");
    assert_eq!(f["instances"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_signs_in_to_an_etcd_with_authentication_on() {
    let etcd = Etcd::start();
    let mut e = etcd.client().await;
    e.user_add("root", "root-secret", None).await.unwrap();
    e.user_grant_role("root", "root").await.unwrap();
    e.auth_enable().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("right"), "root-secret\n").unwrap();
    std::fs::write(dir.path().join("wrong"), "guess\n").unwrap();
    let up = blue_green().await;
    let keys = |file: &str| format!("user = \"root\"\npassword_file = \"../{file}\"");
    let a = Instance::start_with(
        "a",
        dir.path(),
        &etcd.url(),
        (up.0.addr, up.1.addr),
        &keys("right"),
    );
    let b = Instance::start_with(
        "b",
        dir.path(),
        &etcd.url(),
        (up.0.addr, up.1.addr),
        &keys("wrong"),
    );
    a.connected().await;
    let s = b
        .until(Duration::from_secs(15), |s| {
            s["fleet"]["last_error"].is_string()
        })
        .await;
    assert_eq!(s["fleet"]["connected"], false, "{s:#}");
    let r = a.call("POST", "/v1/apps/shop/flip", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.serves().await, "blue", "b never got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reaches_etcd_over_tls_with_its_own_certificate() {
    let ca = TestCa::new();
    let etcd = Etcd::start_tls(Some(&ca));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    ca.issue(dir.path(), "client", &["cutover"]);
    let up = blue_green().await;
    let with_cert =
        "ca_file = \"../ca.pem\"\ncert_file = \"../client.pem\"\nkey_file = \"../client.key\"";
    let a = Instance::start_with(
        "a",
        dir.path(),
        &etcd.url(),
        (up.0.addr, up.1.addr),
        with_cert,
    );
    let b = Instance::start_with(
        "b",
        dir.path(),
        &etcd.url(),
        (up.0.addr, up.1.addr),
        "ca_file = \"../ca.pem\"",
    );
    a.connected().await;
    let s = b
        .until(Duration::from_secs(15), |s| {
            s["fleet"]["last_error"].is_string()
        })
        .await;
    assert_eq!(
        s["fleet"]["connected"], false,
        "without a client certificate: {s:#}"
    );
    let r = a.call("POST", "/v1/apps/shop/flip?wait=5s", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.serves().await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_etcd_never_answers_is_answered_honestly_and_the_fleet_converges() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let up = blue_green().await;
    let a = Instance::start("a", dir.path(), &etcd.url(), up.0.addr, up.1.addr);
    a.connected().await;
    etcd.signal("-STOP");
    let started = Instant::now();
    let r = a.call("POST", "/v1/apps/shop/flip", "").await;
    etcd.signal("-CONT");
    // The write and the check of its outcome each had a second.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 503, "{}", r.text());
    // Sent, it may still be applied ("may still be applied"); if the
    // link had already timed out on the lease, it was never sent.
    assert!(r.text().contains("etcd"), "{}", r.text());
    // Whatever etcd did with the write once it woke, the instance ends up
    // serving what etcd holds.
    a.connected().await;
    let mut e = etcd.client().await;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = e.get("/cutover/v1/test/apps/shop", None).await.unwrap();
        let stored: Value = serde_json::from_slice(doc.kvs()[0].value()).unwrap();
        let s = a.status().await;
        if stored["state"]["live"] == s["apps"]["shop"]["live"] {
            assert_eq!(a.serves().await, stored["state"]["live"].as_str().unwrap());
            break;
        }
        assert!(Instant::now() < end, "etcd holds {stored}, a serves {s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_on_an_instance_that_does_not_judge_is_guarded_by_the_one_that_does() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let blue = Upstream::start("blue").await;
    let green = failing_green().await;
    let a = Instance::start("a", dir.path(), &etcd.url(), blue.addr, green);
    a.until(Duration::from_secs(15), |s| s["fleet"]["judge"] == true)
        .await;
    let b = Instance::start("b", dir.path(), &etcd.url(), blue.addr, green);
    b.connected().await;
    // Traffic only through b, which does not judge: a guards b's flip on
    // b's reports.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&b, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = b.call("POST", "/v1/apps/shop/flip", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["guard"]["shop"]["window_seconds"], 120);
    a.until(Duration::from_secs(20), |s| live(s) == "blue")
        .await;
    let s = b.until(Duration::from_secs(5), |s| live(s) == "blue").await;
    stop.store(true, SeqCst);
    traffic.await.unwrap();
    let h = b.call("GET", "/v1/history", "").await.json();
    let last = h["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["kind"], &last["actor"]),
        (&"guard".into(), &"guard".into()),
        "{last:#}"
    );
    assert!(s["epoch"].as_u64().unwrap() >= 2);
    assert_eq!(b.serves().await, "blue");
}
