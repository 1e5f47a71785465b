//! Certificates that renew themselves, end to end: Debian's `pebble` (the
//! ACME test CA) with validation on, its `pebble-challtestsrv` answering
//! DNS with 127.0.0.1, and the real cutover daemon answering the CA's
//! tls-alpn-01 and http-01 challenges on its own listeners.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pebble, checking challenges on cutover's ports, and a DNS server that
/// says every name is 127.0.0.1.
struct Pebble {
    dir: PathBuf,
    port: u16,
    management: u16,
    children: Vec<Option<Child>>,
}

impl Pebble {
    /// `dir` gets pebble's own certificate (from `ca`, whose PEM cutover
    /// trusts as `ca_file`) and config.
    fn start(dir: &Path, ca: &TestCa, http_port: u16, tls_port: u16) -> Pebble {
        ca.issue(dir, "pebble", &["127.0.0.1", "localhost"]);
        let (port, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian's pebble package) must be installed");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}"), "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian's package) must be installed");
        wait_port(port, "pebble");
        Pebble {
            dir: dir.to_path_buf(),
            port,
            management,
            children: vec![Some(dns_server), Some(pebble)],
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root pebble issues under (made afresh at each start).
    fn root(&self) -> rustls_pki_types::CertificateDer<'static> {
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(self.dir.join("pebble-ca.pem"))
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(out.status.success(), "cannot fetch pebble's root");
        rustls_pki_types::pem::PemObject::from_pem_slice(&out.stdout).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill(c);
        }
    }
}

/// The cutover daemon with `[tls.acme]` for `shop.test`.
struct Daemon {
    dir: PathBuf,
    plain: u16,
    tls: u16,
    admin: u16,
    child: Option<Child>,
}

impl Daemon {
    fn new(dir: &Path) -> Daemon {
        Daemon {
            dir: dir.to_path_buf(),
            plain: free_port(),
            tls: free_port(),
            admin: free_port(),
            child: None,
        }
    }

    fn start(&mut self, directory: &str, challenge: &str, upstream: std::net::SocketAddr) {
        let (plain, tls, admin) = (self.plain, self.tls, self.admin);
        let config = format!(
            r#"
[server]
listen = ["127.0.0.1:{plain}"]
listen_tls = ["127.0.0.1:{tls}"]
workers = 1
shutdown_timeout = "1s"
[tls.acme]
directory = "{directory}"
email = "ops@shop.test"
domains = ["shop.test"]
ca_file = "pebble-ca.pem"
challenge = "{challenge}"
cache_dir = "acme"
[admin]
listen = "127.0.0.1:{admin}"
[apps.shop]
[apps.shop.blue]
servers = ["{upstream}"]
[apps.shop.green]
servers = ["{upstream}"]
"#
        );
        std::fs::write(self.dir.join("cutover.toml"), config).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(self.dir.join("cutover.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("cutover.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(admin, "cutover");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cutover.log")).unwrap_or_default()
    }

    async fn status(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/v1/status", self.admin);
        get(&client(), &url, &[]).await.json()
    }

    async fn until(&self, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + limit;
        loop {
            let s = self.status().await;
            if done(&s["acme"]) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "gave up; acme: {:#}\n{}",
                s["acme"],
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request over TLS with SNI `shop.test`, trusting only `root`: the
    /// body, or why the handshake failed.
    async fn fetch(
        &self,
        root: &rustls_pki_types::CertificateDer<'static>,
    ) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.tls))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("shop.test").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET / HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A certificate is obtained with `challenge`, served, cached, and served
/// from the cache after a restart even with the CA away.
async fn obtains_with(challenge: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("pebble-ca.pem"), &ca.pem).unwrap();
    let up = Upstream::start("shop").await;
    let mut cutover = Daemon::new(dir.path());
    // The CA is not there yet: the daemon serves, says why it has no
    // certificate, and tries again.
    cutover.start("https://127.0.0.1:9/dir", challenge, up.addr);
    let s = cutover
        .until(Duration::from_secs(10), |a| {
            a["failures"].as_u64() >= Some(1)
        })
        .await;
    assert!(s["acme"]["last_error"].as_str().is_some(), "{s:#}");
    assert!(s["acme"]["not_after"].is_null());
    kill(&mut cutover.child);
    let pebble = Pebble::start(dir.path(), &ca, cutover.plain, cutover.tls);
    cutover.start(&pebble.directory(), challenge, up.addr);
    let s = cutover
        .until(Duration::from_secs(30), |a| a["not_after"].is_string())
        .await;
    assert_eq!(s["acme"]["domains"], serde_json::json!(["shop.test"]));
    let url = format!("http://127.0.0.1:{}/metrics", cutover.admin);
    let m = get(&client(), &url, &[]).await.text();
    assert!(
        m.contains("cutover_acme_failures{domains=\"shop.test\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("cutover_acme_certificate_expiry_seconds{domains=\"shop.test\"} 1"),
        "{m}"
    );
    let root = pebble.root();
    let answer = cutover
        .fetch(&root)
        .await
        .expect("a certificate pebble issued");
    assert!(answer.ends_with("shop"), "{answer}");
    let cache = dir.path().join("acme");
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("shop.test.key")), 0o600);
    // Kept across a restart: served at once, the CA gone.
    kill(&mut cutover.child);
    drop(pebble);
    cutover.start("https://127.0.0.1:9/dir", challenge, up.addr);
    let answer = cutover.fetch(&root).await.expect("the cached certificate");
    assert!(answer.ends_with("shop"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_by_tls_alpn_01_cached_and_kept() {
    obtains_with("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_by_http_01() {
    obtains_with("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_two_thirds_through_its_life_is_renewed_and_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("pebble-ca.pem"), &ca.pem).unwrap();
    // In the cache: a certificate for shop.test from another CA, issued
    // in 2020 for ten years, so more than two thirds through its life.
    let cache = dir.path().join("acme");
    std::fs::create_dir(&cache).unwrap();
    let old = TestCa::new();
    old.issue_dated(
        &cache,
        "shop.test",
        &["shop.test"],
        ((2020, 1, 1), (2030, 1, 1)),
    );
    std::fs::rename(cache.join("shop.test.pem"), cache.join("shop.test.crt")).unwrap();
    let up = Upstream::start("shop").await;
    let mut cutover = Daemon::new(dir.path());
    let pebble = Pebble::start(dir.path(), &ca, cutover.plain, cutover.tls);
    cutover.start(&pebble.directory(), "tls-alpn-01", up.addr);
    // The old one serves at once; the new one replaces it, no restart.
    let root = pebble.root();
    let end = Instant::now() + Duration::from_secs(30);
    assert!(
        cutover.fetch(&old.der).await.is_ok(),
        "the cached one serves first"
    );
    while cutover.fetch(&root).await.is_err() {
        assert!(Instant::now() < end, "not renewed: {}", cutover.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cutover.fetch(&old.der).await.is_err(),
        "the old certificate is gone"
    );
}
