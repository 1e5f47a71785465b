//! Front-door request hygiene: what reaches an upstream is exactly what
//! cutover routed. Raw bytes from a real client, a real cutover, and real
//! upstreams that record every request head they receive.

mod support;

use std::time::Duration;

use support::*;

/// Three apps: `shop.test` under `/public` and under `/api`, and
/// `api.test`, each on its own recording upstream.
struct Front {
    proxy: Proxy,
    public: RecordingUpstream,
    api: RecordingUpstream,
    api_host: RecordingUpstream,
}

impl Front {
    async fn start(extra: &str) -> Front {
        let public = RecordingUpstream::start().await;
        let api = RecordingUpstream::start().await;
        let api_host = RecordingUpstream::start().await;
        let pool = |u: &RecordingUpstream| {
            format!(
                "servers = [\"{}\"]\npassive = {{ failures = 5, cooldown = \"10s\" }}",
                u.addr
            )
        };
        let toml = format!(
            r#"
[server]
shutdown_timeout = "2s"
{extra}

[limits]
client_header_timeout = "2s"

[apps.public]
hosts = ["shop.test"]
path_prefix = "/public"
[apps.public.blue]
{p}
[apps.public.green]
{p}

[apps.api]
hosts = ["shop.test"]
path_prefix = "/api"
[apps.api.blue]
{a}
[apps.api.green]
{a}

[apps.apihost]
hosts = ["api.test"]
[apps.apihost.blue]
{h}
[apps.apihost.green]
{h}
"#,
            p = pool(&public),
            a = pool(&api),
            h = pool(&api_host),
        );
        Front {
            proxy: Proxy::start(&toml),
            public,
            api,
            api_host,
        }
    }

    /// Wait (up to `limit`) for a request recorded after `before`.
    async fn recorded_since(&self, before: [usize; 3], limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified =
                    [&self.public, &self.api, &self.api_host].map(|u| u.notify.notified());
                if self.counts() != before {
                    break;
                }
                let [a, b, c] = notified;
                tokio::select! {
                    _ = a => {}
                    _ = b => {}
                    _ = c => {}
                }
            }
        })
        .await;
    }

    /// Every request whose head reached an upstream is recorded.
    async fn settled(&self) {
        for u in [&self.public, &self.api, &self.api_host] {
            u.settled(Duration::from_secs(3)).await;
        }
    }

    fn counts(&self) -> [usize; 3] {
        [self.public.count(), self.api.count(), self.api_host.count()]
    }

    /// Everything the upstreams received since `before`.
    fn since(&self, before: [usize; 3]) -> Vec<(&'static str, SeenRequest)> {
        let mut all = Vec::new();
        for (name, u, from) in [
            ("public", &self.public, before[0]),
            ("api", &self.api, before[1]),
            ("apihost", &self.api_host, before[2]),
        ] {
            all.extend(u.since(from).into_iter().map(|r| (name, r)));
        }
        all
    }
}

/// What an upstream may see of a case: nothing, or exactly one request,
/// to this app, with this path and this `Host`.
#[derive(Debug, Clone, Copy)]
enum Reaches {
    Nothing,
    /// The request head may reach the routed upstream (its body then
    /// breaks off), or not at all.
    AtMost(&'static str, &'static str, &'static str),
    Exactly(&'static str, &'static str, &'static str),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    statuses: &'static [u16],
    reaches: Reaches,
}

fn case(name: &'static str, bytes: &str, statuses: &'static [u16], reaches: Reaches) -> Case {
    Case {
        name,
        bytes: bytes.as_bytes().to_vec(),
        statuses,
        reaches,
    }
}

/// The corpus. Every case that smuggles hides `GET /smuggled` in its body.
fn corpus() -> Vec<Case> {
    use Reaches::*;
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let body_then = |head: &str, body: &str| format!("{head}\r\n\r\n{body}{SMUGGLED}");
    let many_fields: String = (0..150).map(|i| format!("x-f{i}: v\r\n")).collect();
    let long_target = "a".repeat(70_000);
    let mut cases = vec![
        case(
            "a plain request (control)",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[200],
            Exactly("public", "/public/x", "shop.test"),
        ),
        case(
            "Content-Length and Transfer-Encoding",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "Transfer-Encoding before Content-Length",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "two different Content-Lengths",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 6",
                "hello",
            ),
            &[400],
            Nothing,
        ),
        case(
            "Content-Length: +5",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: +5",
                "hello",
            ),
            &[400],
            Nothing,
        ),
        case(
            "Transfer-Encoding: chunked, identity",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked, identity",
                "0\r\n\r\n",
            ),
            &[400, 501],
            Nothing,
        ),
        case(
            "an unknown coding",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: foo",
                "0\r\n\r\n",
            ),
            &[400, 501],
            Nothing,
        ),
        case(
            "Transfer-Encoding with obs-fold",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "HTTP/1.0 with Transfer-Encoding",
            &body_then(
                "POST /public/x HTTP/1.0\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "obs-fold in another field",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-A: 1\r\n 2\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "NUL in a field value",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-A: a\0b\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "bare CR in a field value",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-A: a\rb\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "bare LF in a field value",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-A: a\nb\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "whitespace before the colon",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "a space in a field name",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX A: b\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "a bad chunk size",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "zz\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
            AtMost("public", "/public/x", "shop.test"),
        ),
        case(
            "a bad chunk size after a good chunk",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
            AtMost("public", "/public/x", "shop.test"),
        ),
        case(
            "a chunk longer than announced",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "5\r\nhello, world\r\n0\r\n\r\n",
            ),
            &[400],
            AtMost("public", "/public/x", "shop.test"),
        ),
        case(
            "bare LF in a chunk line",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "5\nhello\r\n0\r\n\r\n",
            ),
            &[400],
            AtMost("public", "/public/x", "shop.test"),
        ),
        case(
            "bare LF in a chunk extension",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "5;a\nb\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
            AtMost("public", "/public/x", "shop.test"),
        ),
        case(
            "a chunk size that overflows",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked",
                "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
            AtMost("public", "/public/x", "shop.test"),
        ),
        case(
            "no Host",
            "GET /public/x HTTP/1.1\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "two Host lines",
            "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nHost: api.test\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "absolute form with a different Host",
            "GET http://api.test/x HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[200],
            Exactly("apihost", "/x", "api.test"),
        ),
        case(
            "/public/../admin",
            "GET /public/../admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[404],
            Nothing,
        ),
        case(
            "/public/%2e%2e/admin",
            "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[404],
            Nothing,
        ),
        case(
            "/public/./x arrives normalized",
            "GET /public/./x HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[200],
            Exactly("public", "/public/x", "shop.test"),
        ),
        case(
            "/api/../public/x arrives at /public, normalized",
            "GET /api/../public/x?q=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[200],
            Exactly("public", "/public/x?q=1", "shop.test"),
        ),
        case(
            "%2F passes unchanged",
            "GET /api/a%2Fb HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[200],
            Exactly("api", "/api/a%2Fb", "shop.test"),
        ),
        case(
            "/apiary is not under /api",
            "GET /apiary HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[404],
            Nothing,
        ),
        case(
            "150 header fields",
            &format!("GET /public/x HTTP/1.1\r\nHost: shop.test\r\n{many_fields}\r\n"),
            &[431],
            Nothing,
        ),
        case(
            "a 70 kB target",
            &format!("GET /public/{long_target} HTTP/1.1\r\nHost: shop.test\r\n\r\n"),
            &[414, 431],
            Nothing,
        ),
        case(
            "Transfer-Encoding: identity, chunked",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: identity, chunked",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "two Transfer-Encoding lines",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                "0\r\n\r\n",
            ),
            &[400],
            Nothing,
        ),
        case(
            "two equal Content-Lengths",
            &body_then(
                "POST /public/x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 5",
                "hello",
            ),
            &[400],
            Nothing,
        ),
        case(
            "/public/..;/admin",
            "GET /public/..;/admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "/public/%2e%2e;x/admin",
            "GET /public/%2e%2e;x/admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "a backslash",
            "GET /public\\..\\admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "an encoded backslash",
            "GET /public/%5c../admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[400],
            Nothing,
        ),
        case(
            "a path parameter is not ambiguous",
            "GET /public/x;jsessionid=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[200],
            Exactly("public", "/public/x;jsessionid=1", "shop.test"),
        ),
        case(
            "CONNECT to an app that did not opt in",
            "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n",
            &[405],
            Nothing,
        ),
        case(
            "an asterisk target for GET",
            "GET * HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            &[400],
            Nothing,
        ),
    ];
    for (what, host) in [
        ("Host with `/`", "shop.test/admin"),
        ("Host with `#`", "shop.test#x"),
        ("Host with `@`", "user@shop.test"),
        ("Host with `?`", "shop.test?x"),
        ("Host with a space", "shop .test"),
        ("Host `[shop.test]/admin#`", "[shop.test]/admin#"),
    ] {
        cases.push(Case {
            name: what,
            bytes: format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            statuses: &[400],
            reaches: Reaches::Nothing,
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_only_what_cutover_routed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let front = Front::start("").await;
        let mut failures = Vec::new();
        // Upstream connections that carried a body the client broke.
        let mut broken: Vec<(&str, usize)> = Vec::new();
        for c in corpus() {
            let before = front.counts();
            let (codes, text) =
                raw_statuses(front.proxy.addr, &c.bytes, Duration::from_secs(3)).await;
            if let Reaches::AtMost(..) = c.reaches {
                // A body cut off reaches the upstream (if at all) as the
                // client gets its answer: wait for it to be recorded here,
                // not in the next case's window.
                front
                    .recorded_since(before, Duration::from_millis(500))
                    .await;
            }
            front.settled().await;
            let seen = front.since(before);
            let first = codes.first().copied().unwrap_or(0);
            if !c.statuses.contains(&first) {
                failures.push(format!(
                    "{}: status {first}, want {:?}\n{text}",
                    c.name, c.statuses
                ));
            }
            if codes.len() > 1 {
                failures.push(format!(
                    "{}: {} responses on one connection",
                    c.name,
                    codes.len()
                ));
            }
            let fits = |(app, r): &(&str, SeenRequest), want: (&str, &str, &str)| {
                *app == want.0 && r.path() == want.1 && r.all("host") == [want.2]
            };
            let ok = match c.reaches {
                Reaches::Nothing => seen.is_empty(),
                Reaches::AtMost(a, p, h) => {
                    seen.len() <= 1 && seen.iter().all(|s| fits(s, (a, p, h)))
                }
                Reaches::Exactly(a, p, h) => seen.len() == 1 && fits(&seen[0], (a, p, h)),
            };
            if !ok {
                failures.push(format!(
                    "{}: the upstreams saw {seen:?}, want {:?}",
                    c.name, c.reaches
                ));
            }
            if let Reaches::AtMost(..) = c.reaches {
                broken.extend(seen.iter().map(|(app, r)| (*app, r.conn)));
            }
        }
        // Such a connection is closed, never reused for another request.
        assert!(
            !broken.is_empty(),
            "no broken body reached an upstream: the check would prove nothing"
        );
        let all = front.since([0, 0, 0]);
        for (app, conn) in &broken {
            // After a body that broke off, nothing more on its connection.
            let on_it: Vec<&SeenRequest> = all
                .iter()
                .filter(|(a, r)| a == app && r.conn == *conn)
                .map(|(_, r)| r)
                .collect();
            let cut = on_it.iter().position(|r| !r.complete);
            assert!(
                cut.is_some_and(|i| i + 1 == on_it.len()),
                "{app} connection {conn} carried a broken body and was reused: {on_it:?}"
            );
        }
        // Nothing smuggled arrived later either.
        let all = front.since([0, 0, 0]);
        assert!(
            all.iter()
                .all(|(_, r)| r.path() != "/smuggled" && r.path() != "/admin"),
            "smuggled: {all:?}"
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_claims_are_removed_unless_the_peer_is_trusted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let claims = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\nX-Real-IP: 203.0.113.7\r\nForwarded: for=203.0.113.7\r\n";
        let request = format!("GET /public/x HTTP/1.1\r\nHost: shop.test\r\n{claims}\r\n");

        let untrusted = Front::start("").await;
        let (codes, _) = raw_statuses(untrusted.proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(codes, [200]);
        let r = &untrusted.public.since(0)[0];
        assert_eq!(r.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(r.all("x-forwarded-proto"), ["http"]);
        assert_eq!(r.all("x-forwarded-host"), ["shop.test"]);
        for gone in ["x-forwarded-port", "x-forwarded-prefix", "x-real-ip", "forwarded"] {
            assert!(r.all(gone).is_empty(), "{gone}: {r:?}");
        }

        let trusted = Front::start("trusted_proxies = [\"127.0.0.0/8\"]").await;
        let (codes, _) = raw_statuses(trusted.proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(codes, [200]);
        let r = &trusted.public.since(0)[0];
        assert_eq!(r.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
        assert_eq!(r.all("x-forwarded-proto"), ["https"]);
        assert_eq!(r.all("x-forwarded-host"), ["evil.test"]);
        assert_eq!(r.all("x-real-ip"), ["203.0.113.7"]);
    })
    .await
    .unwrap();
}

/// Bad requests from one client must not mark the upstream down: a probe
/// client keeps 0 failures while 50 malformed chunked requests and 50
/// aborted uploads go through the same app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_never_count_against_an_upstreams_health() {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let front = Front::start("").await;
        let addr = front.proxy.addr;
        let probe = |n: usize| async move {
            let mut failures = 0;
            for _ in 0..n {
                let (codes, _) = raw_statuses(
                    addr,
                    b"GET /public/probe HTTP/1.1\r\nHost: shop.test\r\n\r\n",
                    Duration::from_secs(3),
                )
                .await;
                failures += usize::from(codes != [200]);
            }
            failures
        };
        let mut failures = 0;
        for _ in 0..50 {
            let (codes, _) = raw_statuses(
                addr,
                b"POST /public/up HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
                Duration::from_secs(3),
            )
            .await;
            assert_eq!(codes, [400]);
            // An upload the client gives up on midway.
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /public/up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100000\r\n\r\n")
                .await
                .unwrap();
            s.write_all(&[b'x'; 1000]).await.unwrap();
            drop(s);
            failures += probe(1).await;
        }
        failures += probe(20).await;
        assert_eq!(failures, 0);
        let c = client();
        let st = status(&c, &front.proxy).await;
        let servers = &st["apps"]["public"]["pools"]["blue"]["servers"];
        assert_eq!(servers[0]["healthy"], true, "{st}");
        let metrics = admin_call(&c, &front.proxy, "GET", "/metrics", "", &[]).await.text();
        let fivexx = metrics
            .lines()
            .find(|l| l.starts_with("cutover_requests_total") && l.contains("app=\"public\"") && l.contains("color=\"blue\"") && l.contains("5xx"))
            .unwrap_or_default()
            .to_string();
        assert!(fivexx.ends_with(" 0"), "{fivexx}");
        // The aborted uploads are counted as such, apart from responses.
        let aborts = metrics
            .lines()
            .find(|l| {
                l.starts_with("cutover_client_aborts_total")
                    && l.contains("app=\"public\"")
                    && l.contains("color=\"blue\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(aborts >= 1, "{metrics}");
    })
    .await
    .unwrap();
}

/// Fields a client may not send upstream: every forwarding field in any
/// spelling and cutover's own from an untrusted peer; an `h2c` upgrade
/// (forwarded as a plain request, without `Upgrade` or `HTTP2-Settings`);
/// and from a trusted proxy, `Connection` naming `X-Forwarded-For` does
/// not drop the address it appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_in_every_spelling_and_h2c_never_reach_an_upstream() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let claims = "X-Forwarded-Ssl: on\r\nX-Forwarded-Scheme: https\r\nX-Forwarded-Client-Cert: Hash=abc\r\nX_Forwarded_For: 203.0.113.7\r\nX-Real_IP: 203.0.113.7\r\nX-Cutover-Mirror: 1\r\n";
        let request = format!("GET /public/x HTTP/1.1\r\nHost: shop.test\r\n{claims}\r\n");
        let front = Front::start("").await;
        let (codes, _) = raw_statuses(front.proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(codes, [200]);
        let r = &front.public.since(0)[0];
        for (name, _) in &r.headers {
            let n = name.to_ascii_lowercase().replace('_', "-");
            assert!(
                !n.starts_with("x-cutover-") && n != "x-real-ip" && (!n.starts_with("x-forwarded-") || ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].contains(&name.to_ascii_lowercase().as_str())),
                "{name} reached the upstream: {r:?}"
            );
        }
        assert_eq!(r.all("x-forwarded-for"), ["127.0.0.1"]);

        // h2c: answered as a plain request; the upstream never sees the upgrade.
        let before = front.counts();
        let h2c = "GET /public/h2c HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
        let (codes, _) = raw_statuses(front.proxy.addr, h2c.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(codes, [200]);
        let seen = front.since(before);
        assert_eq!(seen.len(), 1);
        let r = &seen[0].1;
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(r.all(gone).is_empty(), "{gone}: {r:?}");
        }

        // A trusted proxy's client names X-Forwarded-For in Connection.
        let trusted = Front::start("trusted_proxies = [\"127.0.0.0/8\"]").await;
        let req = "GET /public/x HTTP/1.1\r\nHost: shop.test\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n";
        let (codes, _) = raw_statuses(trusted.proxy.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(codes, [200]);
        let r = &trusted.public.since(0)[0];
        assert_eq!(r.all("x-forwarded-for"), ["198.51.100.7, 127.0.0.1"]);
    })
    .await
    .unwrap();
}

/// A request's trailers reach the upstream without the fields that must
/// not travel there: framing, routing, credentials, forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_lose_framing_routing_and_forwarding_fields() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let front = Front::start("").await;
        let req = "POST /public/up HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nHost: admin.test\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.1\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nX-Checksum: abc\r\n\r\n";
        let (codes, _) = raw_statuses(front.proxy.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(codes, [200]);
        let r = &front.public.since(0)[0];
        assert_eq!(r.body, b"hello");
        let names: Vec<String> = r.trailers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        assert_eq!(names, ["x-checksum"], "{r:?}");
    })
    .await
    .unwrap();
}
