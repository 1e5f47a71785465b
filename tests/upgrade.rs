//! Upgrading cutover itself, as real processes on loopback: the listening
//! sockets are handed to the new binary, the old one drains, and no
//! client — kept alive or connecting anew — sees a failure. Also socket
//! activation: sockets bound by someone else (systemd) are served.

mod support;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// A daemon started as `cutover run -c FILE`, stopped (whatever pid now
/// holds its sockets) when dropped.
struct Daemon {
    admin: String,
    addr: std::net::SocketAddr,
    first: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(blue: &Upstream, green: &Upstream, extra: &str) -> Daemon {
        Daemon::start_addrs(blue.addr, green.addr, extra)
    }

    fn start_addrs(blue: std::net::SocketAddr, green: std::net::SocketAddr, extra: &str) -> Daemon {
        Daemon::start_env(blue, green, extra, tempfile::tempdir().unwrap(), &[])
    }

    /// In `dir`, with `env` set for the daemon (and its successors).
    fn start_env(
        blue: std::net::SocketAddr,
        green: std::net::SocketAddr,
        extra: &str,
        dir: tempfile::TempDir,
        env: &[(&str, &std::path::Path)],
    ) -> Daemon {
        Daemon::start_admin(blue, green, extra, ("127.0.0.1", ""), dir, env)
    }

    /// `admin`: the admin listener's IP address, and more `[admin]` keys.
    fn start_admin(
        blue: std::net::SocketAddr,
        green: std::net::SocketAddr,
        extra: &str,
        (admin_ip, admin_extra): (&str, &str),
        dir: tempfile::TempDir,
        env: &[(&str, &std::path::Path)],
    ) -> Daemon {
        let (port, admin) = (free_port(), free_port());
        let config = format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
workers = 2
shutdown_timeout = "10s"
{extra}
[admin]
listen = "{admin_ip}:{admin}"
{admin_extra}
[state]
file = "state.json"
[apps.shop]
[apps.shop.blue]
servers = ["{blue}"]
[apps.shop.green]
servers = ["{green}"]
"#
        );
        std::fs::write(dir.path().join("cutover.toml"), config).unwrap();
        let first = std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(dir.path().join("cutover.toml"))
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            admin: format!("http://127.0.0.1:{admin}"),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            first: Some(first),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
            assert!(Instant::now() < deadline, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cutover.toml")
    }

    async fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--admin".into(), self.admin.clone()]);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN).args(&all).output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn status(&self) -> serde_json::Value {
        let o = self.cli(&["status", "--json"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Wait until the process answering status is `pid`.
    async fn until_pid(&self, pid: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.cli(&["status", "--json"]).await;
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                if v["process"]["pid"] == pid {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "pid {pid} never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The process serving now may be a successor: stop it by its pid.
        if let Ok(o) = std::process::Command::new(BIN)
            .args(["status", "--json", "--admin", &self.admin])
            .output()
        {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                if let Some(pid) = v["process"]["pid"].as_u64() {
                    let _ = std::process::Command::new("kill")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
        if let Some(mut c) = self.first.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Clients that run until `stop`: keep-alive ones and one that opens a
/// new connection per request. Counts requests and failures. The
/// keep-alive clients are plain ones, as Python's `http.client` is: a
/// request on a connection the server closed without saying so fails,
/// and is not retried (hyper's pooled client would retry it and hide the
/// loss).
fn load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<tokio::net::TcpStream> = None;
            while !stop.load(SeqCst) {
                if conn.is_none() {
                    match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => conn = Some(s),
                        Err(e) => {
                            eprintln!("connect failed: {e}");
                            failed.fetch_add(1, SeqCst);
                            continue;
                        }
                    }
                }
                let s = conn.as_mut().expect("connected above");
                let got = tokio::time::timeout(Duration::from_secs(10), keep_alive_get(s)).await;
                match got {
                    Ok(Ok(close)) => {
                        ok.fetch_add(1, SeqCst);
                        if close {
                            conn = None;
                        }
                    }
                    other => {
                        eprintln!("kept-alive request failed: {other:?}");
                        failed.fetch_add(1, SeqCst);
                        conn = None;
                    }
                }
            }
        }));
    }
    let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop);
    tasks.push(tokio::spawn(async move {
        while !stop2.load(SeqCst) {
            let (codes, _) = raw_statuses(
                addr,
                b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
                Duration::from_secs(10),
            )
            .await;
            if codes == [200] {
                ok2.fetch_add(1, SeqCst);
            } else {
                failed2.fetch_add(1, SeqCst);
            }
        }
    }));
    (ok, failed, tasks)
}

/// One `GET /` on a kept-alive connection, its answer read whole (by its
/// `Content-Length`). `Ok(true)`: the answer said `Connection: close`.
async fn keep_alive_get(s: &mut tokio::net::TcpStream) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n").await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(std::io::Error::other(format!("answered {head:?}")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(head.contains("\r\nconnection: close\r\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_upgrades_under_load_drop_no_request_and_keep_the_routing_state() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let (b, g) = blue_green().await;
        let d = Daemon::start(&b, &g, "");
        let o = d.cli(&["flip", "shop"]).await;
        assert!(o.status.success());
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, tasks) = load(d.addr, stop.clone());
        // wrk too, when the machine has it (CI installs it).
        let wrk = which("wrk").map(|wrk| {
            let url = format!("http://{}/", d.addr);
            std::thread::spawn(move || {
                std::process::Command::new(wrk)
                    .args(["-t1", "-c8", "-d10s", "--timeout", "10s", &url])
                    .output()
                    .unwrap()
            })
        });
        let mut pids = vec![d.status().await["process"]["pid"].as_u64().unwrap()];
        for i in 0..50 {
            let o = d.cli(&["upgrade", "--json"]).await;
            assert!(
                o.status.success(),
                "upgrade {i}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let pid = v["pid"].as_u64().unwrap();
            d.until_pid(pid).await;
            let st = d.status().await;
            assert_eq!(
                st["apps"]["shop"]["live"], "green",
                "upgrade {i}: the flip holds"
            );
            assert_eq!(st["process"]["upgrades"], i + 1);
            pids.push(pid);
        }
        // The last one drains under the same load before we stop.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        let mut distinct = pids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 51, "{pids:?}");
        let (ok, failed) = (ok.load(SeqCst), failed.load(SeqCst));
        assert!(ok > 500, "{ok} requests only");
        assert_eq!(
            failed,
            0,
            "{failed} of {} requests failed across 50 upgrades",
            ok + failed
        );
        if let Some(w) = wrk {
            let out = w.join().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                !text.contains("Socket errors") && !text.contains("Non-2xx"),
                "wrk: {text}"
            );
            let summary = text
                .lines()
                .find(|l| l.contains("requests in"))
                .unwrap_or("")
                .trim()
                .to_string();
            eprintln!("wrk (keep-alive, 8 connections) across the upgrades: {summary}, 0 errors");
        }
        eprintln!("50 upgrades: {ok} requests, 0 failed");
    })
    .await
    .unwrap();
}

fn which(cmd: &str) -> Option<String> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| std::path::Path::new(p).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_response_and_a_websocket_opened_before_an_upgrade_finish_on_the_old_process() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // A response that takes 1.5 s, under way when the upgrade happens.
        let (b, g) = blue_green().await;
        let d = Daemon::start(&b, &g, "");
        let long = {
            let url = format!("http://{}/delay/1500", d.addr);
            tokio::spawn(async move { get(&client(), &url, &[]).await })
        };
        while b.requests.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let o = d.cli(&["upgrade"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = long.await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "blue"),
            "the request in flight finished"
        );

        // A WebSocket tunnel opened before an upgrade keeps working on the
        // old process while it drains.
        let (wb, wg) = (
            WsUpstream::start("blue").await,
            WsUpstream::start("green").await,
        );
        let mut d = Daemon::start_addrs(wb.addr, wg.addr, "");
        let url = format!("ws://{}/", d.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert_eq!(ws_echo(&mut ws, "one").await, "blue:one");
        let before = d.status().await["process"]["pid"].as_u64().unwrap();
        let o = d.cli(&["upgrade", "--json"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        d.until_pid(v["pid"].as_u64().unwrap()).await;
        assert_eq!(
            ws_echo(&mut ws, "two").await,
            "blue:two",
            "the tunnel outlived the hand-over"
        );
        // A new tunnel goes to the new process.
        let (mut fresh, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert_eq!(ws_echo(&mut fresh, "three").await, "blue:three");
        assert_ne!(d.status().await["process"]["pid"].as_u64().unwrap(), before);
        drop(ws);
        // The old process (the one this test started), its tunnel closed,
        // exits on its own, with 0.
        let deadline = Instant::now() + Duration::from_secs(10);
        let old = d.first.as_mut().unwrap();
        let status = loop {
            if let Some(s) = old.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the old process never exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_keeps_the_old_process_serving_and_says_why() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let d = Daemon::start_admin(
            b.addr,
            g.addr,
            "upgrade_timeout = \"1s\"",
            ("127.0.0.1", "allow_local_binary = true"),
            tempfile::tempdir().unwrap(),
            &[],
        );
        let pid = d.status().await["process"]["pid"].as_u64().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, tasks) = load(d.addr, stop.clone());

        // A binary that exits at once.
        let o = d.cli(&["upgrade", "--binary", "/bin/false"]).await;
        assert_eq!(o.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("exited before it was ready"),
            "{o:?}"
        );

        // One that never says it is ready.
        let never = d.dir.path().join("never.sh");
        std::fs::write(&never, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&never)
            .status()
            .unwrap();
        let upgrading = {
            let (admin, never) = (d.admin.clone(), never.to_str().unwrap().to_string());
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(BIN)
                    .args(["upgrade", "--binary", &never, "--admin", &admin])
                    .output()
                    .unwrap()
            })
        };
        // While it is under way, changes are refused (503, retry later).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let o = d.cli(&["shift", "shop", "5"]).await;
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("(503)"),
            "{o:?}"
        );
        let again = d.cli(&["upgrade"]).await;
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("already under way"),
            "{again:?}"
        );
        let o = upgrading.await.unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not ready within 1s"),
            "{o:?}"
        );

        // A config made invalid before the upgrade: the new process says so.
        let text = std::fs::read_to_string(d.config_path()).unwrap();
        std::fs::write(
            d.config_path(),
            text.replace("[apps.shop.green]", "[apps.shop.grene]"),
        )
        .unwrap();
        let o = d.cli(&["upgrade"]).await;
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains("exited before it was ready") && err.contains("grene"),
            "{err}"
        );

        // Changes still work on the old process, which never stopped serving.
        let o = d.cli(&["shift", "shop", "10"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(d.status().await["process"]["pid"], pid);
        stop.store(true, SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        assert!(ok.load(SeqCst) > 10);
        assert_eq!(failed.load(SeqCst), 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_bound_by_a_service_manager_are_served() {
    use command_fds::{CommandFdExt, FdMapping};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        // Bound here, without SO_REUSEPORT: cutover could not bind the
        // address itself, so an answer proves it serves this socket.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, aa) = (plain.local_addr().unwrap(), admin.local_addr().unwrap());
        let config = format!(
            "[server]\nlisten = [\"{pa}\"]\n[admin]\nlisten = \"{aa}\"\n[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
            b.addr, g.addr
        );
        std::fs::write(dir.path().join("c.toml"), config).unwrap();
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["run", "-c"])
            .arg(dir.path().join("c.toml"))
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", "plain:admin")
            .stderr(std::process::Stdio::null());
        cmd.fd_mappings(vec![
            FdMapping { parent_fd: OwnedFd::from(plain.try_clone().unwrap()), child_fd: 3 },
            FdMapping { parent_fd: OwnedFd::from(admin.try_clone().unwrap()), child_fd: 4 },
        ])
        .unwrap();
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let (codes, text) = raw_statuses(pa, b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n", Duration::from_secs(2)).await;
            if codes == [200] {
                break text;
            }
            assert!(Instant::now() < deadline, "never served on the handed socket: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(text.ends_with("blue"), "{text}");
        let _ = child.kill();
        let _ = child.wait();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_manager_hears_ready_reloading_stopping_and_the_new_main_pid() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // A stand-in for systemd's notification socket.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let next = move || {
            let mut buf = [0u8; 512];
            let n = sock.recv(&mut buf).expect("a notification within 10 s");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let (next_tx, next_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || while let Ok(()) = next_tx.send(next()) {});
        let heard = || {
            next_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a notification")
        };

        let (b, g) = blue_green().await;
        let d = Daemon::start_env(b.addr, g.addr, "", dir, &[("NOTIFY_SOCKET", &path)]);
        let pid = d.status().await["process"]["pid"].as_u64().unwrap();
        assert_eq!(heard(), format!("MAINPID={pid}\nREADY=1\n"));

        // systemctl reload: SIGHUP.
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(heard().starts_with("RELOADING=1\n"));
        assert_eq!(heard(), "READY=1\n");

        // An upgrade: the successor names itself the main process; the old
        // one says it is stopping.
        let o = d.cli(&["upgrade", "--json"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let new: u64 = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"]
            .as_u64()
            .unwrap();
        let mut got = vec![heard(), heard()];
        got.sort();
        assert_eq!(
            got,
            [
                format!("MAINPID={new}\nREADY=1\n"),
                "STOPPING=1\n".to_string()
            ]
        );
    })
    .await
    .unwrap();
}

/// SIGTERM: the listening socket closes at once (a new client is refused,
/// not queued behind a drain), a kept-alive client's next request is
/// answered with `Connection: close` rather than lost, and a download
/// under way finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_refuses_new_clients_at_once_and_answers_kept_alive_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(30), async {
        let (b, g) = blue_green().await;
        let proxy = Proxy::start(&format!(
            "[server]\nworkers = 1\nshutdown_timeout = \"10s\"\n[apps.shop]\n[apps.shop.blue]\nservers = [\"{}\"]\n[apps.shop.green]\nservers = [\"{}\"]\n",
            b.addr, g.addr
        ));
        let addr = proxy.addr;
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(!keep_alive_get(&mut kept).await.unwrap(), "kept alive");
        let size = 20 << 20;
        let mut download = tokio::net::TcpStream::connect(addr).await.unwrap();
        download
            .write_all(format!("GET /download/{size} HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let mut got = download.read(&mut first).await.unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200"));

        let stopped_at = Instant::now();
        let proxy_join = tokio::spawn(proxy.join());
        // Refused at once, not accepted and left hanging.
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Queued as the socket closed: reset, as nginx does too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("connect: {e}"),
                Ok(_) => {
                    assert!(stopped_at.elapsed() < Duration::from_secs(1), "still accepting");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(1));
        // The kept-alive client's next request is answered, with close.
        assert!(keep_alive_get(&mut kept).await.unwrap(), "answered with Connection: close");
        // The download finishes.
        let head_len = first[..got]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("the head came in the first read")
            + 4;
        let mut buf = vec![0u8; 64 * 1024];
        while got < head_len + size {
            match download.read(&mut buf).await {
                Ok(0) => panic!("download ended after {got} bytes"),
                Ok(n) => got += n,
                Err(e) => panic!("download broke after {got} bytes: {e}"),
            }
        }
        // With its clients gone, the process ends without waiting out
        // its shutdown timeout.
        drop((kept, download));
        proxy_join.await.unwrap();
        assert!(
            stopped_at.elapsed() < Duration::from_secs(5),
            "drained after {:?}",
            stopped_at.elapsed()
        );
    })
    .await
    .unwrap();
}

/// An executable shell script at `path`.
fn script(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(path)
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_starts_the_configured_upgrade_binary_by_the_cli_and_by_sigusr2() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        // The installed binary: a wrapper that says it ran, then is cutover.
        script(
            &dir.path().join("installed.sh"),
            &format!("#!/bin/sh\necho started >> \"$(dirname \"$0\")/installed.log\"\nexec {BIN} \"$@\"\n"),
        );
        let log = dir.path().join("installed.log");
        let started = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
        let d = Daemon::start_admin(
            b.addr,
            g.addr,
            "",
            ("127.0.0.1", "upgrade_binary = \"installed.sh\""),
            dir,
            &[],
        );
        let o = d.cli(&["upgrade", "--json"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let pid = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"]
            .as_u64()
            .unwrap();
        d.until_pid(pid).await;
        assert_eq!(started(), 1);

        // SIGUSR2 starts the same binary.
        std::process::Command::new("kill")
            .args(["-USR2", &pid.to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.status().await["process"]["pid"] == pid {
            assert!(Instant::now() < deadline, "SIGUSR2 never handed over");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(started(), 2);
    })
    .await
    .unwrap();
}

/// This host's address on its default route, if it has one: connecting
/// from it, a caller is not on loopback. (A UDP "connect" sends nothing.)
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("198.51.100.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operate_token_never_makes_the_daemon_run_a_path_of_the_callers_choosing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ops.token"), "ops-secret\n").unwrap();
        // What a caller would have run: it leaves a mark, and fails.
        let evil = dir.path().join("evil.sh");
        script(
            &evil,
            "#!/bin/sh\ntouch \"$(dirname \"$0\")/ran\"\nexit 1\n",
        );
        let ran = dir.path().join("ran");
        let token = dir.path().join("ops.token").display().to_string();
        let evil = evil.display().to_string();
        let tokens = "allow_local_binary = false\n\
                      [[admin.tokens]]\nname = \"ops\"\nrole = \"operate\"\nfile = \"ops.token\"";
        let d = Daemon::start_admin(b.addr, g.addr, "", ("0.0.0.0", tokens), dir, &[]);
        let pid = {
            let o = d.cli(&["status", "--json", "--token-file", &token]).await;
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["process"]["pid"]
                .clone()
        };

        // By default the API takes no path, from loopback neither.
        let o = d
            .cli(&["upgrade", "--binary", &evil, "--token-file", &token])
            .await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("(400): binary: the admin API takes no binary path")
                && err.contains("upgrade_binary"),
            "{err}"
        );
        assert!(!ran.exists());

        // Allowed for local callers: still nothing from another address.
        let text = std::fs::read_to_string(d.config_path()).unwrap();
        std::fs::write(
            d.config_path(),
            text.replace("allow_local_binary = false", "allow_local_binary = true"),
        )
        .unwrap();
        let o = d.cli(&["reload", "--token-file", &token]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        match non_loopback_ip() {
            Some(ip) => {
                let port = d.admin.rsplit(':').next().unwrap();
                let url = format!(
                    "http://{}/v1/upgrade",
                    std::net::SocketAddr::new(ip, port.parse().unwrap())
                );
                let r = send(
                    &client(),
                    "POST",
                    &url,
                    &[
                        ("authorization", "Bearer ops-secret"),
                        ("content-type", "application/json"),
                    ],
                    serde_json::json!({ "binary": evil }).to_string(),
                )
                .await;
                assert_eq!(r.status, 400, "{}", r.text());
                assert!(
                    r.text()
                        .contains("binary: only a caller on the daemon's host"),
                    "{}",
                    r.text()
                );
                // The CLI does not even ask.
                let admin = format!(
                    "http://{}",
                    std::net::SocketAddr::new(ip, port.parse().unwrap())
                );
                let o = tokio::task::spawn_blocking({
                    let (evil, token) = (evil.clone(), token.clone());
                    move || {
                        std::process::Command::new(BIN)
                            .args([
                                "upgrade",
                                "--binary",
                                &evil,
                                "--token-file",
                                &token,
                                "--admin",
                                &admin,
                            ])
                            .output()
                            .unwrap()
                    }
                })
                .await
                .unwrap();
                assert_eq!(o.status.code(), Some(64), "{o:?}");
                assert!(
                    String::from_utf8_lossy(&o.stderr).contains("--binary"),
                    "{o:?}"
                );
                assert!(!ran.exists());
            }
            None => eprintln!(
                "this host has no address but loopback: a remote caller is left to \
                 control::upgrade's unit test"
            ),
        }

        // From this host, allowed: it runs (the mark shows the test could
        // see it), fails, and the daemon keeps serving.
        let o = d
            .cli(&["upgrade", "--binary", &evil, "--token-file", &token])
            .await;
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(ran.exists());
        let o = d.cli(&["status", "--json", "--token-file", &token]).await;
        let now: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(now["process"]["pid"], pid);
    })
    .await
    .unwrap();
}

/// Has process `pid` exited (gone, or a zombie: its files are closed)?
fn exited(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => true,
    }
}

async fn until_exited(pid: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exited(pid) {
        assert!(Instant::now() < deadline, "pid {pid} never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second `cutover run` on `d`'s config (same state file, same ports)
/// exits 1 at once, naming `holder` as the state file's user.
async fn second_daemon_is_refused(d: &Daemon, holder: u64) {
    let config = d.config_path();
    let o = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("a second daemon started on a state file in use");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "is in use by another cutover (pid {holder}; lock "
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_stays_locked_through_upgrades_and_is_free_once_the_last_process_exits() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (b, g) = blue_green().await;
        let mut d = Daemon::start(&b, &g, "");
        let mut pid = d.status().await["process"]["pid"].as_u64().unwrap();
        second_daemon_is_refused(&d, pid).await;
        // Reaped here once it has handed over (a successor is not our child).
        let mut first = d.first.take();

        // Two hand-overs: the lock passes on each time, and the process
        // before has exited, so only the successor holds it.
        for _ in 0..2 {
            let o = d.cli(&["upgrade", "--json"]).await;
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let next = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"]
                .as_u64()
                .unwrap();
            d.until_pid(next).await;
            if let Some(mut c) = first.take() {
                tokio::task::spawn_blocking(move || c.wait().unwrap())
                    .await
                    .unwrap();
            }
            until_exited(pid).await;
            pid = next;
            second_daemon_is_refused(&d, pid).await;
        }

        // The last holder stops: the state file is free for the next one.
        std::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .unwrap();
        until_exited(pid).await;
        let mut next = std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(d.config_path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.cli(&["status"]).await.status.code() != Some(0) {
            assert!(next.try_wait().unwrap().is_none(), "the next daemon exited");
            assert!(Instant::now() < deadline, "the next daemon never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        next.kill().unwrap();
        next.wait().unwrap();
    })
    .await
    .unwrap();
}
