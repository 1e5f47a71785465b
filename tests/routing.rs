//! Routing decisions through the real proxy and real upstreams.

mod support;

use std::collections::HashMap;

use support::*;

/// One app `shop` on any host with blue/green upstreams and extra TOML.
fn shop(blue: &Upstream, green: &Upstream, app_extra: &str, rules: &str) -> String {
    format!(
        r#"
[apps.shop]
{app_extra}
[apps.shop.blue]
servers = ["{b}"]
[apps.shop.green]
servers = ["{g}"]
{rules}
"#,
        b = blue.addr,
        g = green.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_prefix_pick_the_app() {
    let (a, b, c) = (
        Upstream::start("shop").await,
        Upstream::start("api").await,
        Upstream::start("other").await,
    );
    let proxy = Proxy::start(&format!(
        r#"
[apps.shop]
hosts = ["shop.test", "*.shop.test"]
[apps.shop.blue]
servers = ["{a}"]
[apps.shop.green]
servers = ["{a}"]

[apps.api]
hosts = ["shop.test"]
path_prefix = "/api"
[apps.api.blue]
servers = ["{b}"]
[apps.api.green]
servers = ["{b}"]

[apps.rest]
[apps.rest.blue]
servers = ["{c}"]
[apps.rest.green]
servers = ["{c}"]
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr
    ));
    let cl = client();
    let u = |p: &str| proxy.url(p);
    assert_eq!(
        get(&cl, &u("/"), &[("host", "shop.test")]).await.text(),
        "shop"
    );
    assert_eq!(
        get(&cl, &u("/api/users"), &[("host", "SHOP.test:8080")])
            .await
            .text(),
        "api"
    );
    assert_eq!(
        get(&cl, &u("/"), &[("host", "www.shop.test")]).await.text(),
        "shop"
    );
    assert_eq!(
        get(&cl, &u("/api"), &[("host", "elsewhere.test")])
            .await
            .text(),
        "other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_app_matches_gets_404() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, r#"hosts = ["shop.test"]"#, ""));
    let r = get(&client(), &proxy.url("/"), &[("host", "unknown.test")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "not found\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agent_rule_sends_iphone_and_android_to_green_and_desktop_to_blue() {
    let (b, g) = blue_green().await;
    let rules = r#"
[[apps.shop.rules]]
name = "mobile"
user_agent = "(?i)android|iphone|ipad|mobile"
to = "green"
"#;
    let proxy = Proxy::start(&shop(&b, &g, "", rules));
    let cl = client();
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)";
    let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8)";
    let desktop = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0";
    for _ in 0..5 {
        assert_eq!(
            get(&cl, &proxy.url("/"), &[("user-agent", iphone)])
                .await
                .text(),
            "green"
        );
        assert_eq!(
            get(&cl, &proxy.url("/"), &[("user-agent", android)])
                .await
                .text(),
            "green"
        );
        assert_eq!(
            get(&cl, &proxy.url("/"), &[("user-agent", desktop)])
                .await
                .text(),
            "blue"
        );
    }
    assert_eq!(get(&cl, &proxy.url("/"), &[]).await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rule_sends_testers_to_green() {
    let (b, g) = blue_green().await;
    let rules = r#"
[[apps.shop.rules]]
name = "testers"
header = { name = "x-preview", value = "letmein" }
to = "green"
"#;
    let proxy = Proxy::start(&shop(&b, &g, "", rules));
    let cl = client();
    assert_eq!(
        get(&cl, &proxy.url("/"), &[("x-preview", "letmein")])
            .await
            .text(),
        "green"
    );
    assert_eq!(
        get(&cl, &proxy.url("/"), &[("x-preview", "nope")])
            .await
            .text(),
        "blue"
    );
    assert_eq!(get(&cl, &proxy.url("/"), &[]).await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_rule_sends_the_named_cookie_to_green() {
    let (b, g) = blue_green().await;
    let rules = r#"
[[apps.shop.rules]]
name = "beta-users"
cookie = { name = "beta", value = "1" }
to = "green"
"#;
    let proxy = Proxy::start(&shop(&b, &g, "", rules));
    let cl = client();
    assert_eq!(
        get(&cl, &proxy.url("/"), &[("cookie", "a=b; beta=1")])
            .await
            .text(),
        "green"
    );
    assert_eq!(
        get(&cl, &proxy.url("/"), &[("cookie", "beta=0")])
            .await
            .text(),
        "blue"
    );
    assert_eq!(
        get(&cl, &proxy.url("/"), &[("cookie", "notbeta=1")])
            .await
            .text(),
        "blue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_rule_matches_the_office_network_only() {
    let (b, g) = blue_green().await;
    // Loopback is "the office"; a second rule for another network never matches.
    let rules = r#"
[[apps.shop.rules]]
name = "elsewhere"
client_ip = ["192.0.2.0/24"]
to = "blue"
path_prefix = "/x"

[[apps.shop.rules]]
name = "office"
client_ip = ["10.0.0.0/8", "127.0.0.0/8"]
path_prefix = "/office"
to = "green"
"#;
    let proxy = Proxy::start(&shop(&b, &g, "", rules));
    let cl = client();
    assert_eq!(
        get(&cl, &proxy.url("/office/page"), &[]).await.text(),
        "green"
    );
    assert_eq!(get(&cl, &proxy.url("/"), &[]).await.text(), "blue");

    let (b2, g2) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let other = Proxy::start(&shop(
        &b2,
        &g2,
        "",
        "[[apps.shop.rules]]\nname = \"office\"\nclient_ip = [\"192.0.2.0/24\"]\nto = \"green\"\n",
    ));
    assert_eq!(get(&cl, &other.url("/"), &[]).await.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_with_percent_50_splits_matching_users_about_half_and_stickily() {
    let (b, g) = blue_green().await;
    let rules = r#"
[[apps.shop.rules]]
name = "mobile-half"
user_agent = "iPhone"
to = "green"
percent = 50
"#;
    let proxy = Proxy::start(&shop(&b, &g, "", rules));
    let cl = client();
    let mut green = 0;
    for i in 0..400 {
        let cookie = format!("cutover=user-{i}");
        let first = get(
            &cl,
            &proxy.url("/"),
            &[("user-agent", "iPhone"), ("cookie", &cookie)],
        )
        .await
        .text();
        for _ in 0..2 {
            let again = get(
                &cl,
                &proxy.url("/"),
                &[("user-agent", "iPhone"), ("cookie", &cookie)],
            )
            .await
            .text();
            assert_eq!(again, first, "user {i} changed colour");
        }
        if first == "green" {
            green += 1;
        }
        // Non-matching users are untouched by the rule.
        if i % 50 == 0 {
            assert_eq!(
                get(&cl, &proxy.url("/"), &[("cookie", &cookie)])
                    .await
                    .text(),
                "blue"
            );
        }
    }
    assert!(
        (160..=240).contains(&green),
        "{green} of 400 matching users went green"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_split_30_percent_gives_22_to_38_percent_standby_and_returning_cookies_stick() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, "standby_percent = 30", ""));
    let cl = client();
    let mut users = Vec::new();
    for _ in 0..1000 {
        let r = get(&cl, &proxy.url("/"), &[]).await;
        let cookie = r.set_cookie().expect("a fresh user gets a sticky cookie");
        assert!(cookie.starts_with("cutover="));
        let sc = r.headers.get("set-cookie").unwrap().to_str().unwrap();
        assert!(
            sc.contains("Path=/") && sc.contains("HttpOnly") && sc.contains("SameSite=Lax"),
            "{sc}"
        );
        users.push((cookie, r.text()));
    }
    let standby = users.iter().filter(|(_, c)| c == "green").count();
    assert!(
        (220..=380).contains(&standby),
        "{standby} of 1000 went to standby"
    );
    for (cookie, color) in users.iter().step_by(10) {
        for _ in 0..3 {
            let r = get(&cl, &proxy.url("/"), &[("cookie", cookie)]).await;
            assert_eq!(&r.text(), color);
            assert!(
                r.set_cookie().is_none(),
                "a returning user is not given a new cookie"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cookie_is_set_without_a_partial_split_or_rule() {
    let (b, g) = blue_green().await;
    let proxy = Proxy::start(&shop(&b, &g, "standby_percent = 0", ""));
    let r = get(&client(), &proxy.url("/"), &[]).await;
    assert_eq!(r.text(), "blue");
    assert!(r.set_cookie().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_split_from_10_to_40_never_moves_a_user_from_standby_back_to_live() {
    let (b, g) = blue_green().await;
    let cookies: Vec<String> = (0..600).map(|i| format!("cutover=returning-{i}")).collect();
    let mut at: HashMap<u32, Vec<String>> = HashMap::new();
    // The same users against a proxy at 10% and then one at 40%: the
    // bucket function is the same across instances and restarts.
    for percent in [10u32, 40] {
        let proxy = Proxy::start(&shop(&b, &g, &format!("standby_percent = {percent}"), ""));
        // A client per proxy: its idle kept-alive connections would hold
        // the drain, which waits for their next request.
        let cl = client();
        let mut colors = Vec::new();
        for c in &cookies {
            colors.push(get(&cl, &proxy.url("/"), &[("cookie", c)]).await.text());
        }
        at.insert(percent, colors);
        drop(cl);
        proxy.join().await;
    }
    let (low, high) = (&at[&10], &at[&40]);
    for i in 0..cookies.len() {
        if low[i] == "green" {
            assert_eq!(high[i], "green", "user {i} moved from standby back to live");
        }
    }
    let g10 = low.iter().filter(|c| *c == "green").count();
    let g40 = high.iter().filter(|c| *c == "green").count();
    assert!(g10 > 20 && g10 < 110, "{g10}");
    assert!(g40 > 180 && g40 < 300, "{g40}");
}
