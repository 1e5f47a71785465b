//! The admin client behind `cutover status|flip|shift|mirror|rollback|rules|history`
//!: finds the admin endpoint and token, calls the admin API (over
//! `https://` too, trusting `--ca-file` or the system's roots), prints the
//! answer for people.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::{json, Value};

use crate::config::Config;

/// The admin API said no: its HTTP status (which the CLI's exit code
/// follows) and its message.
#[derive(Debug, thiserror::Error)]
#[error("refused ({status}): {message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// Where and how to reach the admin API.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// For an `https://` URL: the TLS client and the name the server's
    /// certificate must have (the URL's host).
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub token: Option<String>,
    /// Sent with every change as `x-cutover-reason`, for the history.
    pub reason: Option<String>,
}

/// What the user gave on the command line.
#[derive(Debug, Clone, Default)]
pub struct EndpointArgs {
    pub admin: Option<String>,
    pub token_file: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an `https://` admin URL instead
    /// of the system's.
    pub ca_file: Option<PathBuf>,
}

impl Endpoint {
    /// `--admin`, then `CUTOVER_ADMIN`, then `[admin] listen` of `-c FILE`
    /// (`https://` when it has `tls_cert_file`), then
    /// `http://127.0.0.1:9901`; the token from `--token-file`, then
    /// `CUTOVER_TOKEN`, then the config's token source.
    pub fn resolve(args: &EndpointArgs) -> Result<Endpoint> {
        let config = match &args.config {
            Some(path) => Some(
                Config::load(path).map_err(|e| anyhow!("{}: {}", path.display(), e.join("; ")))?,
            ),
            None => None,
        };
        let url = args
            .admin
            .clone()
            .or_else(|| {
                std::env::var("CUTOVER_ADMIN")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| {
                config.as_ref().map(|c| {
                    let mut a = c.admin.listen;
                    if a.ip().is_unspecified() {
                        a.set_ip(if a.is_ipv6() {
                            "::1".parse().unwrap()
                        } else {
                            "127.0.0.1".parse().unwrap()
                        });
                    }
                    let scheme = if c.admin.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{a}")
                })
            })
            .unwrap_or_else(|| "http://127.0.0.1:9901".into());
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => {
                return Err(anyhow!(
                    "admin URL {url:?}: give http://HOST:PORT or https://HOST:PORT"
                ))
            }
        };
        let authority = rest.trim_end_matches('/').to_string();
        let tls = match (https, &args.ca_file) {
            (true, ca_file) => Some(tls_client(&authority, ca_file.as_deref())?),
            (false, Some(_)) => {
                return Err(anyhow!(
                    "--ca-file: the admin URL {url} is not https:// (the CA would verify nothing)"
                ))
            }
            (false, None) => None,
        };
        let token = if let Some(f) = &args.token_file {
            Some(read_trimmed(f)?)
        } else if let Some(t) = std::env::var("CUTOVER_TOKEN")
            .ok()
            .filter(|s| !s.is_empty())
        {
            Some(t.trim().to_string())
        } else {
            // Read with the config: `default`, else its first operate token.
            config
                .as_ref()
                .and_then(|c| c.admin.client_token())
                .map(|s| s.expose().to_string())
        };
        Ok(Endpoint {
            authority,
            tls,
            token,
            reason: None,
        })
    }

    /// `http://host:port` or `https://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// Is the admin API on this host: does its URL name a loopback address
    /// or `localhost`?
    pub fn is_loopback(&self) -> bool {
        let host = match host_of(&self.authority) {
            Some(h) => h,
            None => return false,
        };
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_canonical().is_loopback(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// One call: `(status, JSON body)`. Network failures are errors.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<(u16, Value)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(self.call_async(method, path, body, if_match))
            .with_context(|| format!("cannot reach the admin API at {}", self.url()))
    }

    async fn call_async(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<(u16, Value)> {
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
        let mut tx = match &self.tls {
            None => {
                let (tx, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                tx
            }
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    connector.connect(name.clone(), stream),
                )
                .await
                .map_err(|_| anyhow!("TLS handshake timed out"))?
                .map_err(|e| {
                    anyhow!("TLS handshake failed: {e} (signed by a private CA? give it with --ca-file)")
                })?;
                let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                tx
            }
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority);
        // Who made a change is the token's name, never what the client
        // says; `$USER` is not sent. Why is the user's to say.
        if let Some(r) = self
            .reason
            .as_deref()
            .filter(|_| !matches!(method, "GET" | "HEAD"))
        {
            req = req.header("x-cutover-reason", r);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(e) = if_match {
            req = req.header("if-match", e.to_string());
        }
        // The daemon takes a change only as JSON (a web page cannot send
        // that cross-origin without asking first): every call but a read
        // says so, with `{}` when it has nothing to say.
        let read = matches!(method, "GET" | "HEAD");
        if !read || body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let bytes = match &body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None if read => Bytes::new(),
            None => Bytes::from_static(b"{}"),
        };
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tx.send_request(req.body(Full::new(bytes))?),
        )
        .await
        .map_err(|_| anyhow!("no answer within 60s"))??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        Ok((status, value))
    }

    /// A call that must succeed: non-2xx becomes an error with the
    /// server's message.
    pub fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<Value> {
        let (status, v) = self.call(method, path, body, if_match)?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            Err(Refused {
                status,
                message: msg,
            }
            .into())
        }
    }
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(authority: &str) -> Option<&str> {
    match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h),
        None => Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h)),
    }
}

/// The TLS client for an `https://` admin URL: HTTP/1.1, verifying the
/// server's certificate for the URL's host against `ca_file` or the
/// system's roots (the Mozilla roots when it has none).
fn tls_client(
    authority: &str,
    ca_file: Option<&Path>,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>)> {
    let host = host_of(authority)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("admin URL: no host in {authority:?}"))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("admin URL: {host:?} is not a host name or address: {e}"))?;
    let (config, _) = crate::config::upstream_tls::client_config(
        crate::config::Protocol::Http1,
        ca_file,
        None,
        false,
    )
    .map_err(|(_, message)| anyhow!("--ca-file: {message}"))?;
    Ok((tokio_rustls::TlsConnector::from(config), name))
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?
        .trim()
        .to_string())
}

/// The app to act on: the one named, or the only app there is.
pub fn pick_app(ep: &Endpoint, app: Option<String>) -> Result<String, String> {
    if let Some(a) = app {
        return Ok(a);
    }
    let status = ep
        .ok("GET", "/v1/status", None, None)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = status["apps"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    match names.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(format!("name the app: one of {}", names.join(", "))),
    }
}

fn percent(v: &Value) -> String {
    let p = v.as_f64().unwrap_or(0.0);
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

/// A one-line summary per app of a status document, for the apps named.
pub fn describe_change(v: &Value) -> String {
    let mut out = String::new();
    let dry = v["dry_run"].as_bool().unwrap_or(false);
    let changed: Vec<&str> = v["changed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if changed.is_empty() {
        let _ = writeln!(out, "nothing to change (epoch {})", v["epoch"]);
        return out;
    }
    for name in changed {
        let a = &v["apps"][name];
        let mirror = match a["mirror"]["percent"].as_f64() {
            Some(p) if p > 0.0 => format!(", {} of live traffic mirrored", percent(&json!(p))),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{}{name}: live {}, {} of default traffic to standby {}, {} rule(s){mirror}",
            if dry { "dry run: " } else { "" },
            a["live"].as_str().unwrap_or("?"),
            percent(&a["standby_percent"]),
            a["standby"].as_str().unwrap_or("?"),
            a["rules"].as_array().map_or(0, Vec::len),
        );
    }
    let _ = writeln!(
        out,
        "epoch {}{}",
        v["epoch"],
        if dry { " (unchanged: dry run)" } else { "" }
    );
    out
}

/// A rule of the API's JSON in words, as history describes rules.
fn rule_conditions(r: &Value) -> String {
    serde_json::from_value::<crate::config::RuleSpec>(r.clone())
        .map(|spec| crate::control::changes::conditions(&spec))
        .unwrap_or_else(|_| "?".into())
}

pub fn rules_table(rules: &Value) -> String {
    let mut out = String::new();
    let list = rules.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out.push_str("no rules\n");
    }
    for (i, r) in list.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}. {} -> {} {} when {}",
            i + 1,
            r["name"].as_str().unwrap_or("?"),
            r["to"].as_str().unwrap_or("?"),
            percent(&r.get("percent").cloned().unwrap_or(json!(100))),
            rule_conditions(r)
        );
    }
    out
}

/// `cutover status`: apps, colours, split, rules, servers.
pub fn status_table(v: &Value) -> String {
    let mut out = String::new();
    let p = &v["process"];
    if p.is_object() {
        let _ = writeln!(
            out,
            "cutover {} pid {} started {} upgrades {}",
            p["version"].as_str().unwrap_or("?"),
            p["pid"],
            p["started"].as_str().unwrap_or("?"),
            p["upgrades"]
        );
    }
    let _ = writeln!(out, "epoch {}", v["epoch"]);
    let Some(apps) = v["apps"].as_object() else {
        return out;
    };
    for (name, a) in apps {
        let hosts = a["hosts"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\napp {name}  ({}, prefix {})  live {}  standby {} {}  sticky {}",
            if hosts.is_empty() { "any host" } else { &hosts },
            a["path_prefix"].as_str().unwrap_or("/"),
            a["live"].as_str().unwrap_or("?"),
            a["standby"].as_str().unwrap_or("?"),
            percent(&a["standby_percent"]),
            a["sticky"].as_str().unwrap_or("?")
        );
        for color in ["blue", "green"] {
            let p = &a["pools"][color];
            let role = if a["live"] == color {
                "live"
            } else {
                "standby"
            };
            let _ = writeln!(
                out,
                "  {color:<5} {role:<7}  {:<11} in-flight {:<4} tunnels {}",
                if p["receives_traffic"].as_bool().unwrap_or(false) {
                    "traffic"
                } else {
                    "no traffic"
                },
                p["in_flight"],
                p["tunnels"]
            );
            let servers: Vec<&Value> = p["servers"].as_array().into_iter().flatten().collect();
            for s in &servers {
                let _ = writeln!(
                    out,
                    "    {:<22} {:<11} in-flight {:<4} conns {:<4} weight {}",
                    s["addr"].as_str().unwrap_or("?"),
                    server_state(s["state"].as_str().unwrap_or("ready"), s["healthy"] == true),
                    s["in_flight"],
                    s["open_connections"],
                    s["weight"]
                );
            }
            let takes_requests = |s: &&Value| s["healthy"] == true && s["state"] == "ready";
            if p["receives_traffic"] == true && !servers.iter().any(takes_requests) {
                let _ = writeln!(
                    out,
                    "    ! {color} receives traffic but has no healthy server in rotation: its requests get 503"
                );
            }
        }
        for line in rules_table(&a["rules"]).lines() {
            let _ = writeln!(out, "  rule {line}");
        }
        mirror_lines(&a["mirror"], a["standby"].as_str().unwrap_or("?"), &mut out);
        if a["rollout"].is_object() {
            for line in rollout_text(&a["rollout"]).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// A server's state as `cutover status` shows it: `ready`, `drain` or
/// `maint` as set, and `down` for a server in rotation that fails its
/// health checks (a drained one that fails them too: `drain, down`).
fn server_state(state: &str, healthy: bool) -> String {
    match (state, healthy) {
        ("ready", true) => "ready".into(),
        ("ready", false) => "down".into(),
        ("drain", false) => "drain, down".into(),
        (other, _) => other.into(),
    }
}

/// A rollout in a few lines: where it is, why, and what the judge sees.
pub fn rollout_text(r: &Value) -> String {
    let mut out = String::new();
    let steps: Vec<String> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    let _ = writeln!(
        out,
        "rollout of {}: {}, step {} of {} ({}), {} of traffic; steps {} every {}",
        r["target"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["step"],
        steps.len(),
        steps
            .get(r["step"].as_u64().unwrap_or(1).saturating_sub(1) as usize)
            .map_or("?".to_string(), |s| format!("{s} %")),
        percent(&r["percent"]),
        steps.join(","),
        r["every"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "  reason: {}", r["reason"].as_str().unwrap_or(""));
    let w = &r["window"];
    if w.is_object() {
        let counts = |c: &str| {
            format!(
                "{c} {} bad / {} requests ({} slow)",
                w[c]["bad"], w[c]["requests"], w[c]["slow"]
            )
        };
        let _ = writeln!(
            out,
            "  since {} s: {}; {}",
            w["age_seconds"],
            counts("green"),
            counts("blue")
        );
        let _ = writeln!(out, "  judge: {}", w["judge"].as_str().unwrap_or(""));
    }
    out
}

/// Shadow traffic in `cutover status`: the percent, the copies compared
/// and mismatched, and the last few differences; nothing while it is off
/// and has never run.
fn mirror_lines(m: &Value, standby: &str, out: &mut String) {
    let on = m["percent"].as_f64().unwrap_or(0.0) > 0.0;
    let compared = m["compared"].as_u64().unwrap_or(0);
    if !on && compared == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "  mirror {} to {standby}: {compared} compared, {} mismatched",
        percent(&m["percent"]),
        m["mismatched"].as_u64().unwrap_or(0),
    );
    for d in m["differences"].as_array().into_iter().flatten().take(5) {
        let shadow = match d["shadow_status"].as_u64() {
            Some(s) => s.to_string(),
            None => d["error"].as_str().unwrap_or("error").to_string(),
        };
        let _ = writeln!(
            out,
            "    {} {} {} live {} shadow {} ({})",
            d["time"].as_str().unwrap_or("?"),
            d["method"].as_str().unwrap_or("?"),
            d["path"].as_str().unwrap_or("?"),
            d["live_status"],
            shadow,
            d["outcome"].as_str().unwrap_or("?"),
        );
    }
}

/// `cutover history`: one line per change, newest last: time, epoch,
/// app, kind, actor (the token's name), what changed in words, and the
/// reason given, if any.
pub fn history_table(v: &Value, limit: usize) -> String {
    let mut out = String::new();
    let list = v["history"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out.push_str("no changes recorded\n");
    }
    let skip = list.len().saturating_sub(limit);
    for h in list.iter().skip(skip) {
        let changes = history_changes(h);
        let _ = write!(
            out,
            "{}  #{:<4} {:<10} {:<9} {:<12} {}",
            h["time"].as_str().unwrap_or("?"),
            h["epoch"].to_string(),
            h["app"].as_str().unwrap_or("?"),
            h["kind"].as_str().unwrap_or("?"),
            h["actor"].as_str().unwrap_or("?"),
            if changes.is_empty() {
                "(no visible change)".to_string()
            } else {
                changes.join("; ")
            },
        );
        if h["forced"].as_bool().unwrap_or(false) {
            out.push_str("  (forced)");
        }
        if let Some(r) = h["reason"].as_str() {
            let _ = write!(out, "  reason: {r:?}");
        }
        out.push('\n');
    }
    out
}

/// An entry's `changes` as the daemon computed them; from its `before`
/// and `after` for a daemon too old to send them.
fn history_changes(h: &Value) -> Vec<String> {
    if let Some(list) = h["changes"].as_array() {
        return list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    let side = |k: &str| serde_json::from_value::<crate::route::AppState>(h[k].clone()).ok();
    match (side("before"), side("after")) {
        (Some(b), Some(a)) => crate::control::changes::describe(&b, &a),
        _ => Vec::new(),
    }
}

/// How the running state (a status document) differs from a config file:
/// one line per difference, per app. The file gives the initial live
/// colour and split, and the rules it declares; the runtime state owns
/// them once changed.
pub fn diff(config: &Config, status: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for app in &config.apps {
        let mut lines = Vec::new();
        let run = &status["apps"][&app.name];
        if run.is_null() {
            lines.push("not running (the daemon's config has no such app: reload it)".into());
            out.push((app.name.clone(), lines));
            continue;
        }
        let live = run["live"].as_str().unwrap_or("?");
        if live != app.live.to_string() {
            lines.push(format!("live: {live} (file: {})", app.live));
        }
        let split = run["standby_percent"].as_f64().unwrap_or(0.0);
        if split != app.standby_percent {
            lines.push(format!(
                "standby_percent: {split} (file: {})",
                app.standby_percent
            ));
        }
        // A daemon too old to report a mirror has none running.
        let mirror = run["mirror"]["percent"].as_f64().unwrap_or(0.0);
        if mirror != app.mirror.percent {
            lines.push(format!(
                "mirror percent: {mirror} (file: {})",
                app.mirror.percent
            ));
        }
        let running: Vec<crate::config::RuleSpec> =
            serde_json::from_value(run["rules"].clone()).unwrap_or_default();
        for r in &running {
            match app.rules.iter().find(|f| f.name == r.name) {
                None => lines.push(format!(
                    "rule {:?}: added at runtime ({})",
                    r.name,
                    crate::control::changes::conditions(r)
                )),
                Some(f) if f != r => lines.push(format!(
                    "rule {:?}: {} -> {} when {} (file: {} -> {} when {})",
                    r.name,
                    r.percent.unwrap_or(100.0),
                    r.to,
                    crate::control::changes::conditions(r),
                    f.percent.unwrap_or(100.0),
                    f.to,
                    crate::control::changes::conditions(f),
                )),
                Some(_) => {}
            }
        }
        for f in &app.rules {
            if !running.iter().any(|r| r.name == f.name) {
                lines.push(format!("rule {:?}: in the file, not running", f.name));
            }
        }
        let order: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
        let file_order: Vec<&str> = app.rules.iter().map(|r| r.name.as_str()).collect();
        if order.len() == file_order.len()
            && order != file_order
            && file_order.iter().all(|n| order.contains(n))
        {
            lines.push(format!(
                "rule order: {} (file: {})",
                order.join(", "),
                file_order.join(", ")
            ));
        }
        for color in ["blue", "green"] {
            let servers = run["pools"][color]["servers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for s in servers {
                let state = s["state"].as_str().unwrap_or("ready");
                if state != "ready" {
                    lines.push(format!(
                        "{color} server {}: {state}",
                        s["addr"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        if !lines.is_empty() {
            out.push((app.name.clone(), lines));
        }
    }
    if let Some(apps) = status["apps"].as_object() {
        for name in apps.keys() {
            if config.app(name).is_none() {
                out.push((name.clone(), vec!["running, but not in the file".into()]));
            }
        }
    }
    out
}
