//! An app's own limits, header rules and path rewriting, with real
//! servers; and `check`'s errors for each, naming the key.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn pools(b: &Upstream, g: &Upstream) -> String {
    format!(
        "blue = {{ servers = [\"{}\"] }}\ngreen = {{ servers = [\"{}\"] }}\n",
        b.addr, g.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_own_limits_override_the_global_ones_for_its_requests_only() {
    let (b, g) = blue_green().await;
    let p = pools(&b, &g);
    let proxy = Proxy::start(&format!(
        r#"
[limits]
upstream_response_timeout = "10s"

[apps.api]
hosts = ["api.test"]
max_body_bytes = 1024
upstream_response_timeout = "300ms"
{p}
[apps.shop]
{p}
"#
    ));
    let c = client();
    let api = [("host", "api.test")];
    let r = send(&c, "POST", &proxy.url("/digest"), &api, vec![b'x'; 2048]).await;
    assert_eq!(r.status, 413);
    let r = send(&c, "POST", &proxy.url("/digest"), &[], vec![b'x'; 2048]).await;
    assert_eq!(
        r.status, 200,
        "the other app keeps [limits]' unlimited body"
    );
    let start = Instant::now();
    let r = get(&c, &proxy.url("/delay/3000"), &api).await;
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(2));
    let r = get(&c, &proxy.url("/delay/400"), &[]).await;
    assert_eq!(r.status, 200, "the other app waits [limits]' 10s");

    let s = status(&c, &proxy).await;
    assert_eq!(
        s["apps"]["api"]["limits"],
        serde_json::json!({ "max_body_bytes": 1024, "upstream_response_timeout": "300ms" })
    );
    assert!(s["apps"]["shop"].get("limits").is_none(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_edit_the_request_after_cutovers_own_fields_and_every_answer() {
    let (b, g) = blue_green().await;
    let p = pools(&b, &g);
    let proxy = Proxy::start(&format!(
        r#"
[server]
request_headers = {{ set = {{ "x-from-server" = "yes" }} }}

[apps.shop]
hosts = ["shop.test"]
request_headers = {{ set = {{ "x-forwarded-proto" = "https", "x-who" = "$client_ip $color $host $scheme $$" }}, add = {{ "x-extra" = "two" }}, remove = ["x-secret"] }}
response_headers = {{ set = {{ "x-frame-options" = "DENY" }}, add = {{ "x-served-by" = "$color" }}, remove = ["x-end-to-end"] }}
{p}
[apps.other]
{p}
"#
    ));
    let c = client();
    let shop = [("host", "shop.test"), ("x-secret", "s"), ("x-extra", "one")];
    let r = get(&c, &proxy.url("/echo"), &shop).await;
    let seen = r.json();
    // Set over cutover's own field, which is then there once.
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-who"][0], "127.0.0.1 blue shop.test http $");
    assert_eq!(seen["x-extra"], serde_json::json!(["one", "two"]));
    assert!(seen.get("x-secret").is_none(), "{seen}");
    // The app's own table replaces [server]'s.
    assert!(seen.get("x-from-server").is_none(), "{seen}");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["x-served-by"], "blue");

    // Whatever the status, as nginx's `add_header … always`.
    let r = get(&c, &proxy.url("/status/404"), &shop).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let r = get(&c, &proxy.url("/hop"), &shop).await;
    assert!(r.headers.get("x-end-to-end").is_none());

    // An app without its own rules has [server]'s.
    let r = get(&c, &proxy.url("/echo"), &[("x-secret", "s")]).await;
    let seen = r.json();
    assert_eq!(seen["x-from-server"], serde_json::json!(["yes"]));
    assert_eq!(seen["x-secret"], serde_json::json!(["s"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));
    assert!(r.headers.get("x-frame-options").is_none());

    let s = status(&c, &proxy).await;
    assert_eq!(
        s["apps"]["shop"]["response_headers"],
        serde_json::json!({
            "add": { "x-served-by": "$color" },
            "remove": ["x-end-to-end"],
            "set": { "x-frame-options": "DENY" },
        })
    );
    assert_eq!(
        s["apps"]["other"]["request_headers"],
        serde_json::json!({ "set": { "x-from-server": "yes" } })
    );
    assert!(s["apps"]["other"].get("response_headers").is_none(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_rewrite_change_the_path_sent_upstream() {
    let (b, g) = blue_green().await;
    let p = pools(&b, &g);
    let proxy = Proxy::start(&format!(
        r#"
[apps.api]
path_prefix = "/api"
strip_prefix = true
rewrite = [
  {{ from = "^/old/(.*)$", to = "/$1" }},
  {{ from = "^/dot/(.)(.*)$", to = "/a/$1$1/b" }},
]
{p}
[apps.site]
{p}
"#
    ));
    let c = client();
    let r = get(&c, &proxy.url("/api/echo?q=1"), &[]).await;
    assert_eq!(r.json()["_uri"][0], "/echo?q=1");
    // Normalized first, then stripped, then rewritten; the query stays.
    let r = get(&c, &proxy.url("/api/x/../old/echo?q=2"), &[]).await;
    assert_eq!(r.json()["_uri"][0], "/echo?q=2");
    // The prefix alone becomes "/".
    let r = get(&c, &proxy.url("/api"), &[]).await;
    assert_eq!(r.status, 200);
    // A rewrite that makes a dot segment is the config's fault.
    let r = get(&c, &proxy.url("/api/dot/.x"), &[]).await;
    assert_eq!(r.status, 500);
    // Other apps' paths are left alone.
    let r = get(&c, &proxy.url("/echo"), &[]).await;
    assert_eq!(r.json()["_uri"][0], "/echo");

    let s = status(&c, &proxy).await;
    assert_eq!(s["apps"]["api"]["strip_prefix"], true);
    assert_eq!(s["apps"]["api"]["rewrite"][0]["from"], "^/old/(.*)$");
    assert!(s["apps"]["site"].get("strip_prefix").is_none(), "{s}");
    assert!(s["apps"]["site"].get("rewrite").is_none(), "{s}");
}

/// `check`'s errors for `[apps.a]` holding `lines`, as `key: message`.
fn errors(lines: &str) -> Vec<String> {
    let text = format!(
        "[apps.a]\n{lines}\n[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n"
    );
    match cutover::Config::from_toml(&text) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn refused(lines: &str, want: &str) {
    let errs = errors(lines);
    assert!(
        errs.iter().any(|e| e.starts_with(want)),
        "{want:?} in {errs:?}"
    );
}

#[test]
fn check_names_the_key_of_each_bad_limit_rule_or_rewrite() {
    refused(
        "max_body_bytes = -1",
        "apps.a.max_body_bytes: must be between 0",
    );
    refused(
        "upstream_read_timeout = \"0s\"",
        "apps.a.upstream_read_timeout: must be longer than 0s",
    );
    refused(
        "client_body_timeout = \"soon\"",
        "apps.a.client_body_timeout: \"soon\" is not a duration",
    );
    for name in [
        "host",
        "connection",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "te",
    ] {
        refused(
            &format!("request_headers = {{ set = {{ \"{name}\" = \"x\" }} }}"),
            &format!("apps.a.request_headers.set.{name}: {name} cannot be changed"),
        );
    }
    refused(
        "response_headers = { remove = [\"Keep-Alive\"] }",
        "apps.a.response_headers.remove[0]: keep-alive cannot be changed",
    );
    refused(
        "request_headers = { add = { \"x-request-id\" = \"1\" } }",
        "apps.a.request_headers.add.x-request-id: x-request-id is the request id's field",
    );
    refused(
        "request_headers = { set = { \"x-a\" = \"$nope\" } }",
        "apps.a.request_headers.set.x-a: $nope is no variable",
    );
    refused(
        "request_headers = { set = { \"bad name\" = \"1\" } }",
        "apps.a.request_headers.set.bad name: \"bad name\" is not a header field name",
    );
    refused(
        "request_headers = { sett = {} }",
        "apps.a.request_headers.sett: unknown field `sett`, did you mean `set`?",
    );
    refused(
        "rewrite = [{ from = \"(\", to = \"/\" }]",
        "apps.a.rewrite[0].from: not a regex",
    );
    refused(
        "rewrite = [{ from = \"^/(.*)$\", to = \"$1\" }]",
        "apps.a.rewrite[0].to: must start with '/'",
    );
    refused(
        "rewrite = [{ from = \"^/(.*)$\", to = \"/$2\" }]",
        "apps.a.rewrite[0].to: $2 names no group of from",
    );
    refused(
        "rewrite = [{ from = \"^/(.*)$\", to = \"/../$1\" }]",
        "apps.a.rewrite[0].to: \"/../$1\" is not a path",
    );
    refused(
        "rewrite = [{ from = \"^/(.*)$\", to = \"/x?y=$1\" }]",
        "apps.a.rewrite[0].to: \"/x?y=$1\" is not a path",
    );
    refused(
        "rewrite = [{ form = \"^/\", to = \"/\" }]",
        "apps.a.rewrite[0].form: unknown field `form`, did you mean `from`?",
    );
    // And the good ones pass.
    assert_eq!(
        errors(
            "max_body_bytes = 10\nupstream_connect_timeout = \"1s\"\nstrip_prefix = true\nrewrite = [{ from = \"^/(?P<r>.*)$\", to = \"/v2/${r}\" }]\nrequest_headers = { set = { \"x-real-ip\" = \"$client_ip\" } }\n"
        ),
        Vec::<String>::new()
    );
}
