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
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api;
use crate::config::Config;
use crate::model::{Color, RuleSpec, ServerState};

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
    /// Sent with every change as `?wait=`: answer once the fleet serves it.
    pub wait: Option<String>,
    /// A change made with `wait` was not confirmed by every instance.
    pub unconfirmed: std::cell::Cell<bool>,
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
            wait: None,
            unconfirmed: std::cell::Cell::new(false),
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
        let read = matches!(method, "GET" | "HEAD");
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
        let path = match (&self.wait, read) {
            (Some(w), false) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}wait={w}")
            }
            _ => path.to_string(),
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
    /// server's message. The answer as it came, for `--json`; read it as
    /// an [`api`] type with [`read`].
    pub fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<Value> {
        let (status, v) = self.call(method, path, body, if_match)?;
        if (200..300).contains(&status) {
            let missing = &v["waited"]["missing"];
            if missing.as_array().is_some_and(|m| !m.is_empty()) {
                self.unconfirmed.set(true);
            }
            return Ok(v);
        }
        let message = match serde_json::from_value::<api::Error>(v.clone()) {
            Ok(e) => e.error,
            Err(_) => v.to_string(),
        };
        Err(Refused { status, message }.into())
    }

    /// `GET path`, read as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        read(self.ok("GET", path, None, None)?)
    }
}

/// An answer of the admin API as the [`api`] type it should be.
pub fn read<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).context("the daemon's answer is not what this cutover reads")
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
    let status: api::Status = ep.get("/v1/status").map_err(|e| format!("{e:#}"))?;
    let names: Vec<String> = status.apps.into_keys().collect();
    match names.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(format!("name the app: one of {}", names.join(", "))),
    }
}

fn percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

/// A number as JSON writes it (`5.0`, `12.5`), as these texts always
/// showed them.
fn number(f: f64) -> String {
    serde_json::to_string(&f).unwrap_or_else(|_| f.to_string())
}

/// A one-line summary per app of a change's answer, for the apps it
/// changed.
pub fn describe_change(v: &api::Status) -> String {
    let mut out = String::new();
    let dry = v.dry_run.unwrap_or(false);
    let changed = v.changed.as_deref().unwrap_or_default();
    if changed.is_empty() {
        let _ = writeln!(out, "nothing to change (epoch {})", v.epoch);
        return out;
    }
    for name in changed {
        let Some(a) = v.apps.get(name) else { continue };
        let mirror = match a.mirror.percent {
            p if p > 0.0 => format!(", {} of live traffic mirrored", percent(p)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{}{name}: live {}, {} of default traffic to standby {}, {} rule(s){mirror}",
            if dry { "dry run: " } else { "" },
            a.live,
            percent(a.standby_percent),
            a.standby,
            a.rules.len(),
        );
    }
    let _ = writeln!(
        out,
        "epoch {}{}",
        v.epoch,
        if dry { " (unchanged: dry run)" } else { "" }
    );
    for (name, g) in v.guard.iter().flatten() {
        let hurts = match &g.max_slow {
            Some(slow) => format!("errors, or responses slower than {slow}, rise"),
            None => "errors rise".to_string(),
        };
        let _ = writeln!(
            out,
            "guard: watching {name} for {} (until {}); the change is reverted if it hurts ({hurts})",
            humantime::format_duration(std::time::Duration::from_secs(g.window_seconds)),
            g.until
        );
    }
    if let Some(w) = &v.waited {
        let _ = writeln!(out, "{}", waited(w));
    }
    out
}

/// Which instances of the fleet serve a change made with `--wait`.
pub fn waited(w: &api::Waited) -> String {
    let all = w.confirmed.len() + w.missing.len();
    match w.missing.is_empty() {
        true => format!("fleet: all {all} instance(s) serve epoch {}", w.epoch),
        false => format!(
            "fleet: {} of {all} instance(s) serve epoch {}; not confirmed: {}",
            w.confirmed.len(),
            w.epoch,
            w.missing.join(", ")
        ),
    }
}

/// `cutover fleet`: one line per instance.
pub fn fleet_table(f: &api::Fleet) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backend {}{}, epoch {}{}",
        f.backend,
        f.cluster
            .as_deref()
            .map_or(String::new(), |c| format!(", cluster {c}")),
        f.epoch,
        if f.connected {
            ""
        } else {
            " (this instance cannot reach etcd)"
        }
    );
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:<8} {:<5} {:<22} {:<8} LAST ERROR",
        "INSTANCE", "EPOCH", "IN SYNC", "JUDGE", "ADMIN", "VERSION"
    );
    for i in &f.instances {
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:<8} {:<5} {:<22} {:<8} {}",
            i.id,
            i.epoch,
            if i.in_sync { "yes" } else { "no" },
            if i.judge { "yes" } else { "" },
            i.admin.as_deref().unwrap_or("-"),
            i.version,
            i.last_error.as_deref().unwrap_or("-"),
        );
    }
    out
}

pub fn rules_table(rules: &[RuleSpec]) -> String {
    let mut out = String::new();
    if rules.is_empty() {
        out.push_str("no rules\n");
    }
    for (i, r) in rules.iter().enumerate() {
        let limit = crate::control::changes::limit(r)
            .map(|l| format!(", {l}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}. {} -> {} {} when {}{limit}",
            i + 1,
            r.name,
            r.to,
            percent(r.percent.unwrap_or(100.0)),
            crate::control::changes::conditions(r)
        );
    }
    out
}

/// `cutover status`: apps, colours, split, rules, servers.
pub fn status_table(v: &api::Status) -> String {
    let mut out = String::new();
    if let Some(p) = &v.process {
        let _ = writeln!(
            out,
            "cutover {} pid {} started {} upgrades {}",
            p.version, p.pid, p.started, p.upgrades
        );
    }
    let _ = writeln!(out, "epoch {}", v.epoch);
    for (name, a) in &v.apps {
        let hosts = a.hosts.join(", ");
        let _ = writeln!(
            out,
            "\napp {name}  ({}, prefix {})  live {}  standby {} {}  sticky {}",
            if hosts.is_empty() { "any host" } else { &hosts },
            a.path_prefix,
            a.live,
            a.standby,
            percent(a.standby_percent),
            a.sticky
        );
        for color in Color::ALL {
            pool_lines(color, a, &mut out);
        }
        for line in rules_table(&a.rules).lines() {
            let _ = writeln!(out, "  rule {line}");
        }
        mirror_lines(&a.mirror, a.standby, &mut out);
        if let Some(r) = &a.rollout {
            for line in rollout_text(r).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// One pool in `cutover status`: its role and traffic, each server with
/// its state, and a warning when it receives traffic no server can take.
fn pool_lines(color: Color, a: &api::App, out: &mut String) {
    let p = a.pools.get(color);
    let role = if a.live == color { "live" } else { "standby" };
    let _ = writeln!(
        out,
        "  {color:<5} {role:<7}  {:<11} in-flight {:<4} tunnels {}",
        if p.receives_traffic {
            "traffic"
        } else {
            "no traffic"
        },
        p.in_flight,
        p.tunnels
    );
    for s in &p.servers {
        let _ = writeln!(
            out,
            "    {:<22} {:<11} in-flight {:<4} conns {:<4} weight {}",
            s.addr.to_string(),
            server_state(s),
            s.in_flight,
            s.open_connections,
            s.weight
        );
    }
    if p.receives_traffic && !p.any_usable() {
        let _ = writeln!(
            out,
            "    ! {color} receives traffic but has no healthy server in rotation: its requests get 503"
        );
    }
}

/// A server's state as `cutover status` shows it: `ready`, `drain` or
/// `maint` as set, and `down` for a server in rotation that fails its
/// health checks (a drained one that fails them too: `drain, down`).
fn server_state(s: &api::Server) -> &'static str {
    match (s.state, s.healthy) {
        (ServerState::Ready, true) => "ready",
        (ServerState::Ready, false) => "down",
        (ServerState::Drain, true) => "drain",
        (ServerState::Drain, false) => "drain, down",
        (ServerState::Maint, _) => "maint",
    }
}

/// A rollout in a few lines: where it is, why, and what the judge sees.
pub fn rollout_text(r: &api::Rollout) -> String {
    let mut out = String::new();
    let steps: Vec<String> = r.steps.iter().map(|s| number(*s)).collect();
    let _ = writeln!(
        out,
        "rollout of {}: {}, step {} of {} ({}), {} of traffic; steps {} every {}",
        r.target,
        r.state,
        r.step,
        steps.len(),
        steps
            .get(r.step.saturating_sub(1))
            .map_or("?".to_string(), |s| format!("{s} %")),
        percent(r.percent),
        steps.join(","),
        r.every
    );
    let _ = writeln!(out, "  reason: {}", r.reason);
    if let Some(w) = &r.window {
        let counts = |c: &str, n: &api::Counts| {
            format!(
                "{c} {} bad / {} requests ({} slow)",
                n.bad, n.requests, n.slow
            )
        };
        let _ = writeln!(
            out,
            "  since {} s: {}; {}",
            number(w.age_seconds),
            counts("green", &w.green),
            counts("blue", &w.blue)
        );
        let _ = writeln!(out, "  judge: {}", w.judge);
    }
    out
}

/// The moves in `all` after `seen` (the last one printed); all of them
/// when `seen` is no longer among them (a new rollout, or more moves
/// than a rollout keeps).
pub fn transitions_after<'a>(
    seen: Option<&crate::model::RolloutTransition>,
    all: &'a [crate::model::RolloutTransition],
) -> &'a [crate::model::RolloutTransition] {
    match seen.and_then(|s| all.iter().rposition(|t| t == s)) {
        Some(i) => &all[i + 1..],
        None => all,
    }
}

/// One move of a rollout, as `rollout --wait` prints it.
pub fn transition_line(t: &crate::model::RolloutTransition) -> String {
    format!(
        "{} {} -> {} at {}: {}\n",
        t.time,
        t.from,
        t.to,
        percent(t.percent),
        t.reason
    )
}

/// Shadow traffic in `cutover status`: the percent, the copies compared
/// and mismatched, and the last few differences; nothing while it is off
/// and has never run.
fn mirror_lines(m: &api::Mirror, standby: Color, out: &mut String) {
    if m.percent <= 0.0 && m.compared == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "  mirror {} to {standby}: {} compared, {} mismatched (compare {})",
        percent(m.percent),
        m.compared,
        m.mismatched,
        crate::model::Compared::join(&m.compare),
    );
    for d in m.differences.iter().take(5) {
        let shadow = match (d.shadow_status, &d.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => "error".to_string(),
        };
        let _ = writeln!(
            out,
            "    {} {} {} live {} shadow {} ({})",
            d.time, d.method, d.path, d.live_status, shadow, d.outcome,
        );
        if let Some(at) = &d.at {
            let shown =
                |v: &Option<String>| v.as_deref().map_or("(none)".into(), |v| format!("{v:?}"));
            let _ = writeln!(
                out,
                "      at {at}: live {} shadow {}",
                shown(&d.live_value),
                shown(&d.shadow_value)
            );
        }
    }
}

/// `cutover history`: one line per change, newest last: time, epoch,
/// app, kind, actor (the token's name), what changed in words, and the
/// reason given, if any. At most `limit` (the newest), though the daemon
/// was asked for no more.
pub fn history_table(v: &api::History, limit: usize) -> String {
    let mut out = String::new();
    if v.history.is_empty() {
        out.push_str("no changes recorded\n");
    }
    let skip = v.history.len().saturating_sub(limit);
    for h in v.history.iter().skip(skip) {
        // A daemon too old to send `changes` sent `before` and `after`.
        let changes = if h.changes.is_empty() {
            crate::control::changes::describe(&h.before, &h.after)
        } else {
            h.changes.clone()
        };
        let _ = write!(
            out,
            "{}  #{:<4} {:<10} {:<9} {:<12} {}",
            h.time,
            h.epoch.to_string(),
            h.app,
            h.kind,
            h.actor,
            if changes.is_empty() {
                "(no visible change)".to_string()
            } else {
                changes.join("; ")
            },
        );
        if h.forced {
            out.push_str("  (forced)");
        }
        if let Some(r) = &h.reason {
            let _ = write!(out, "  reason: {r:?}");
        }
        out.push('\n');
    }
    out
}

/// How the running state (a status document) differs from a config file:
/// one line per difference, per app. The file gives the initial live
/// colour and split, and the rules it declares; the runtime state owns
/// them once changed.
pub fn diff(config: &Config, status: &api::Status) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for app in &config.apps {
        let lines = match status.apps.get(&app.name) {
            None => vec!["not running (the daemon's config has no such app: reload it)".into()],
            Some(run) => app_diff(app, run),
        };
        if !lines.is_empty() {
            out.push((app.name.clone(), lines));
        }
    }
    for name in status.apps.keys() {
        if config.app(name).is_none() {
            out.push((name.clone(), vec!["running, but not in the file".into()]));
        }
    }
    out
}

/// How one running app differs from its config.
fn app_diff(app: &crate::config::AppConfig, run: &api::App) -> Vec<String> {
    let mut lines = Vec::new();
    if run.live != app.live {
        lines.push(format!("live: {} (file: {})", run.live, app.live));
    }
    if run.standby_percent != app.standby_percent {
        lines.push(format!(
            "standby_percent: {} (file: {})",
            run.standby_percent, app.standby_percent
        ));
    }
    // A daemon too old to report a mirror has none running.
    if run.mirror.percent != app.mirror.percent {
        lines.push(format!(
            "mirror percent: {} (file: {})",
            run.mirror.percent, app.mirror.percent
        ));
    }
    rules_diff(&run.rules, &app.rules, &mut lines);
    for color in Color::ALL {
        for s in &run.pools.get(color).servers {
            if s.state != ServerState::Ready {
                lines.push(format!("{color} server {}: {}", s.addr, s.state.as_str()));
            }
        }
    }
    lines
}

/// The running rules against the file's: added, changed, missing, and
/// their order.
fn rules_diff(running: &[RuleSpec], file: &[RuleSpec], lines: &mut Vec<String>) {
    use crate::control::changes::conditions;
    for r in running {
        match file.iter().find(|f| f.name == r.name) {
            None => lines.push(format!(
                "rule {:?}: added at runtime ({})",
                r.name,
                conditions(r)
            )),
            Some(f) if f != r => lines.push(format!(
                "rule {:?}: {} -> {} when {} (file: {} -> {} when {})",
                r.name,
                r.percent.unwrap_or(100.0),
                r.to,
                conditions(r),
                f.percent.unwrap_or(100.0),
                f.to,
                conditions(f),
            )),
            Some(_) => {}
        }
    }
    for f in file {
        if !running.iter().any(|r| r.name == f.name) {
            lines.push(format!("rule {:?}: in the file, not running", f.name));
        }
    }
    let order: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
    let file_order: Vec<&str> = file.iter().map(|r| r.name.as_str()).collect();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RolloutPhase as P, RolloutTransition};

    fn moved(to: P, time: &str) -> RolloutTransition {
        RolloutTransition {
            from: P::Preflight,
            percent: 5.0,
            reason: "r".into(),
            time: time.into(),
            to,
        }
    }

    #[test]
    fn only_the_moves_after_the_last_one_printed_are_printed_again() {
        let all = [
            moved(P::Preflight, "t0"),
            moved(P::Progressing, "t1"),
            moved(P::Promoting, "t2"),
        ];
        assert_eq!(transitions_after(Some(&all[0]), &all), &all[1..]);
        assert!(transitions_after(Some(&all[2]), &all).is_empty());
        let gone = moved(P::Failed, "t9");
        assert_eq!(
            transitions_after(Some(&gone), &all),
            &all[..],
            "a new rollout"
        );
        assert_eq!(
            transition_line(&all[1]),
            "t1 preflight -> progressing at 5%: r\n"
        );
    }
}
