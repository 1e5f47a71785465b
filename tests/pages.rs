//! What cutover answers by itself: the redirect to https, HSTS over TLS,
//! and error pages from files (with `Retry-After` on a 503).

mod support;

use std::path::{Path, PathBuf};

use support::*;

/// `dir/cutover.toml` with `text`, and each `(name, body)` under `dir/pages/`.
fn write(dir: &Path, text: &str, pages: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir.join("pages")).unwrap();
    for (name, body) in pages {
        std::fs::write(dir.join("pages").join(name), body).unwrap();
    }
    let path = dir.join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One app `shop` on `shop.test`, blue `b`, green `g`; `server` and `app`
/// are extra lines for `[server]` and `[apps.shop]`.
fn shop(server: &str, app: &str, b: &str, g: &str) -> String {
    format!(
        "[server]\n{server}\n\n[apps.shop]\nhosts = [\"shop.test\"]\n{app}\n\
         [apps.shop.blue]\nservers = [\"{b}\"]\n[apps.shop.green]\nservers = [\"{g}\"]\n"
    )
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_gets_a_308_to_the_same_host_path_and_query_on_https() {
    let (b, g) = blue_green().await;
    let (b, g) = (b.addr.to_string(), g.addr.to_string());
    let c = client();

    // No TLS listener of its own (a balancer in front terminates TLS): 443.
    let proxy = Proxy::start(&shop("redirect_https = true", "", &b, &g));
    let r = send(
        &c,
        "POST",
        &proxy.url("/cart/add?item=7&n=2"),
        &[("host", "shop.test:8080")],
        "x",
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        header(&r, "location"),
        Some("https://shop.test/cart/add?item=7&n=2")
    );
    assert!(header(&r, "strict-transport-security").is_none());
    // A host no app has is redirected too: `[server]` says every plain
    // request.
    let r = get(&c, &proxy.url("/x"), &[("host", "other.test")]).await;
    assert_eq!(header(&r, "location"), Some("https://other.test/x"));
    // The admin API is its own listener: never redirected.
    assert_eq!(status(&c, &proxy).await["apps"]["shop"]["live"], "blue");
    drop(proxy);

    // `https_port` names the public TLS port; an app may opt out.
    let text = format!(
        "{}\n[apps.api]\nhosts = [\"api.test\"]\nredirect_https = false\n\
         [apps.api.blue]\nservers = [\"{b}\"]\n[apps.api.green]\nservers = [\"{g}\"]\n",
        shop("redirect_https = true\nhttps_port = 8443", "", &b, &g)
    );
    let proxy = Proxy::start(&text);
    let url = proxy.url("/a?q=1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
            ])
            .args(["-H", "Host: shop.test:8080", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "308 https://shop.test:8443/a?q=1"
    );
    let r = get(&c, &proxy.url("/"), &[("host", "api.test")]).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "blue".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_proxy_that_says_https_is_spared_the_redirect() {
    let (b, g) = blue_green().await;
    let (b, g) = (b.addr.to_string(), g.addr.to_string());
    let c = client();
    let over_https = [("host", "shop.test"), ("x-forwarded-proto", "https")];

    // The balancer in front (127.0.0.1) terminated TLS: no loop.
    let trusted = shop(
        "trusted_proxies = [\"127.0.0.1\"]",
        "redirect_https = true",
        &b,
        &g,
    );
    let proxy = Proxy::start(&trusted);
    let r = get(&c, &proxy.url("/"), &over_https).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "blue".to_string()));
    let r = get(&c, &proxy.url("/"), &[("host", "shop.test")]).await;
    assert_eq!(r.status, 308);
    let plain = [("host", "shop.test"), ("x-forwarded-proto", "http")];
    assert_eq!(get(&c, &proxy.url("/"), &plain).await.status, 308);
    drop(proxy);

    // Anyone else's claim is not believed.
    let proxy = Proxy::start(&shop("", "redirect_https = true", &b, &g));
    let r = get(&c, &proxy.url("/"), &over_https).await;
    assert_eq!(r.status, 308);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_responses_carry_hsts_and_plain_ones_never_do() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "shop", &["shop.test", "nowhere.test"]);
    let (b, g) = blue_green().await;
    let text = shop(
        "listen_tls = [\"127.0.0.1:0\"]\nhsts = \"max-age=600\"",
        "hsts = \"max-age=31536000; includeSubDomains\"",
        &b.addr.to_string(),
        &g.addr.to_string(),
    ) + "\n[[tls.certs]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n";
    let proxy = Proxy::start_file(&write(dir.path(), &text, &[]));
    let tls = proxy.tls_addr.unwrap();

    let r = tls_get(&ca, tls, "shop.test", "/").await;
    assert_eq!(r.text(), "blue");
    let all: Vec<_> = r
        .headers
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(all, ["max-age=31536000; includeSubDomains"]);
    // The upstream's own value is kept, not doubled.
    let r = tls_get(&ca, tls, "shop.test", "/sts").await;
    let all: Vec<_> = r
        .headers
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(all, ["max-age=60"]);
    // cutover's own answers over TLS carry `[server]`'s when no app matched.
    let r = tls_get(&ca, tls, "nowhere.test", "/").await;
    assert_eq!(r.status, 404);
    assert_eq!(header(&r, "strict-transport-security"), Some("max-age=600"));

    let c = client();
    let r = get(&c, &proxy.url("/"), &[("host", "shop.test")]).await;
    assert_eq!(r.text(), "blue");
    assert!(header(&r, "strict-transport-security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_the_apps_page_with_retry_after_and_a_502_its_other_page() {
    let dir = tempfile::tempdir().unwrap();
    let (b, g) = blue_green().await;
    // Nobody listens on the closed port: connects are refused (502).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut text = shop(
        "retry_after = \"30s\"",
        "retry_after = \"1500ms\"\n[apps.shop.error_pages]\n503 = \"pages/503.html\"\n502 = \"pages/502.json\"",
        &b.addr.to_string(),
        &g.addr.to_string(),
    );
    text += &format!(
        "\n[apps.down]\nhosts = [\"down.test\"]\n[apps.down.blue]\nservers = [\"{closed_addr}\"]\n\
         [apps.down.green]\nservers = [\"{closed_addr}\"]\n[apps.down.error_pages]\n502 = \"pages/502.json\"\n"
    );
    // A slow app with no page of its own takes `[server]`'s 504.
    text += &format!(
        "\n[apps.slow]\nhosts = [\"slow.test\"]\n[apps.slow.blue]\nservers = [\"{g}\"]\n\
         [apps.slow.green]\nservers = [\"{g}\"]\n\
         [limits]\nupstream_response_timeout = \"200ms\"\n[server.error_pages]\n504 = \"pages/504.txt\"\n",
        g = g.addr
    );
    let pages = [
        ("503.html", "<h1>back soon</h1>\n"),
        ("502.json", "{\"error\": \"bad gateway\"}\n"),
        ("504.txt", "too slow\n"),
    ];
    let proxy = Proxy::start_file(&write(dir.path(), &text, &pages));
    let c = client();

    // Blue's only server down for maintenance: no healthy server.
    let path = format!("/v1/apps/shop/servers/{}", b.addr);
    let r = admin_call(
        &c,
        &proxy,
        "POST",
        &path,
        r#"{"state": "maint", "force": true}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&c, &proxy.url("/"), &[("host", "shop.test")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "<h1>back soon</h1>\n");
    assert_eq!(header(&r, "content-type"), Some("text/html; charset=utf-8"));
    // 1.5 s, rounded up to whole seconds.
    assert_eq!(header(&r, "retry-after"), Some("2"));

    let r = get(&c, &proxy.url("/"), &[("host", "down.test")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "{\"error\": \"bad gateway\"}\n");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert!(header(&r, "retry-after").is_none());

    let r = get(&c, &proxy.url("/delay/2000"), &[("host", "slow.test")]).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (504, "too slow\n".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_app_matches_gets_the_servers_404_page_and_a_503_the_default_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (b, g) = blue_green().await;
    let text = shop(
        "[server.error_pages]\n404 = \"pages/404.txt\"",
        "",
        &b.addr.to_string(),
        &g.addr.to_string(),
    );
    let proxy = Proxy::start_file(&write(dir.path(), &text, &[("404.txt", "no such site\n")]));
    let c = client();
    let r = get(&c, &proxy.url("/"), &[("host", "elsewhere.test")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no such site\n");
    assert_eq!(
        header(&r, "content-type"),
        Some("text/plain; charset=utf-8")
    );

    // With no page of its own, a 503 is cutover's text with 5 s.
    let path = format!("/v1/apps/shop/servers/{}", b.addr);
    let r = admin_call(
        &c,
        &proxy,
        "POST",
        &path,
        r#"{"state": "maint", "force": true}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&c, &proxy.url("/"), &[("host", "shop.test")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "service unavailable: no healthy server\n");
    assert_eq!(header(&r, "retry-after"), Some("5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_a_changed_page_and_one_with_a_missing_page_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (b, g) = blue_green().await;
    let text = shop(
        "[server.error_pages]\n404 = \"pages/404.html\"",
        "",
        &b.addr.to_string(),
        &g.addr.to_string(),
    );
    let path = write(dir.path(), &text, &[("404.html", "first\n")]);
    let proxy = Proxy::start_file(&path);
    let c = client();
    let nowhere = [("host", "nowhere.test")];
    assert_eq!(get(&c, &proxy.url("/"), &nowhere).await.text(), "first\n");

    // The file is read at load, not per request: new content after a reload.
    std::fs::write(dir.path().join("pages/404.html"), "second\n").unwrap();
    assert_eq!(get(&c, &proxy.url("/"), &nowhere).await.text(), "first\n");
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&c, &proxy.url("/"), &nowhere).await.text(), "second\n");

    // A page that is not there: refused, naming the key and the file.
    std::fs::write(&path, text.replace("404.html", "gone.html")).unwrap();
    let r = admin_call(&c, &proxy, "POST", "/v1/reload", "", &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let errors = r.json()["errors"].to_string();
    assert!(
        errors.contains("server.error_pages.404") && errors.contains("gone.html"),
        "{errors}"
    );
    assert_eq!(get(&c, &proxy.url("/"), &nowhere).await.text(), "second\n");
}

#[test]
fn bad_hsts_retry_after_and_page_statuses_are_config_errors_naming_their_key() {
    let text = shop(
        "hsts = \"includeSubDomains\"\nretry_after = \"soon\"",
        "[apps.shop.error_pages]\n418 = \"pages/teapot.html\"\n404 = \"pages/404.html\"",
        "127.0.0.1:1",
        "127.0.0.1:2",
    );
    let errors = cutover::Config::from_toml(&text).unwrap_err().join("\n");
    for key in [
        "server.hsts: must start with max-age=",
        "server.retry_after:",
        "apps.shop.error_pages.418: only 404, 502, 503 and 504",
        "apps.shop.error_pages.404: an app's requests never get cutover's own 404",
    ] {
        assert!(errors.contains(key), "{key} missing from:\n{errors}");
    }
    let ok = shop("hsts = \"max-age=0\"", "", "127.0.0.1:1", "127.0.0.1:2");
    assert!(cutover::Config::from_toml(&ok).is_ok());
}

#[test]
fn an_app_takes_each_of_servers_answers_it_does_not_set_itself() {
    let dir = tempfile::tempdir().unwrap();
    let text = shop(
        "redirect_https = true\nhsts = \"max-age=600\"\n[server.error_pages]\n502 = \"pages/502.html\"\n503 = \"pages/503.html\"",
        "redirect_https = false\n[apps.shop.error_pages]\n503 = \"pages/shop-503.txt\"",
        "127.0.0.1:1",
        "127.0.0.1:2",
    );
    let pages = [("502.html", "a"), ("503.html", "b"), ("shop-503.txt", "c")];
    let config = cutover::Config::load(&write(dir.path(), &text, &pages)).unwrap();
    let own = &config.apps[0].answers;
    assert!(!own.redirect_https);
    assert_eq!(own.hsts.as_ref().unwrap(), "max-age=600");
    assert_eq!(own.retry_after.as_ref().unwrap(), "5");
    assert_eq!(own.https_port, 443);
    assert_eq!(&own.pages.get(502).unwrap().body[..], b"a");
    let shop_503 = own.pages.get(503).unwrap();
    assert_eq!(
        (&shop_503.body[..], shop_503.content_type.to_str().unwrap()),
        (&b"c"[..], "text/plain; charset=utf-8")
    );
    assert!(own.pages.get(504).is_none());
}
