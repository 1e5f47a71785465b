//! Raw TOML → typed [`Config`], collecting every error with the key it
//! belongs to and its line (`apps.shop.rules[1].percent: must be between 0
//! and 100, got 150 (line 12)`). This file reads the top-level tables; an
//! app is [`super::app`]'s, a pool [`super::pool`]'s, `[admin]`
//! [`super::admin`]'s. Validation reads the files a config names
//! (certificates, tokens, pages) but asks no DNS.

use std::net::SocketAddr;
use std::path::Path;

use super::admin::admin;
use super::app::{answers, build_app, check_overlaps, RawAnswers};
use super::certs::PairFile;
use super::edits::HeaderRules;
use super::error::{ConfigErrors, Errors};
use super::raw::*;
use super::types::*;
use super::values::{duration, int_range, listen_addrs, networks, positive_duration};

/// Parse and validate `text`, read from `path` (relative paths in it are
/// relative to the path's folder). Errors come back all at once: unknown
/// keys first, then every value that is wrong.
pub fn parse_config(text: &str, path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let mut errors = ConfigErrors::single(e.message().trim_end().replace('\n', ": "));
            errors.0[0].line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            return Err(errors);
        }
    };
    let mut errs = Errors::default();
    let (raw, unknown) = match parse(text) {
        Ok(parsed) => parsed,
        Err((unknown, error)) => {
            errs.0.extend(unknown.iter().map(UnknownKey::to_error));
            errs.0.push(error);
            return Err(errs.located(&doc));
        }
    };
    errs.0.extend(unknown.iter().map(UnknownKey::to_error));
    let base = path
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let config = build(raw, &base, path, &mut errs);
    if errs.is_empty() {
        Ok(config)
    } else {
        Err(errs.located(&doc))
    }
}

fn build(mut raw: RawConfig, base: &Path, path: Option<&Path>, errs: &mut Errors) -> Config {
    let mut warnings = Vec::new();
    let server = server_settings(raw.server, base, errs);
    let acme = super::acme::acme(raw.tls.acme.take(), &server, base, errs);
    let tls = certs(raw.tls, &server, acme.is_some(), base, errs, &mut warnings);
    let admin = admin(raw.admin, base, errs, &mut warnings);
    listeners_once(&server, &admin, errs);
    let apps = raw
        .apps
        .into_iter()
        .map(|(name, app)| {
            build_app(
                name,
                app,
                &server.answers,
                &server,
                base,
                errs,
                &mut warnings,
            )
        })
        .collect::<Vec<_>>();
    if apps.is_empty() {
        errs.push("apps", "at least one app is needed");
    }
    check_overlaps(&apps, errs);
    Config {
        path: path.map(Path::to_path_buf),
        server,
        limits: limits(raw.limits, errs),
        tls,
        acme,
        admin,
        state: super::state::state_settings(raw.state, base, errs),
        log: log_settings(raw.log, base, errs),
        apps,
        warnings,
    }
}

fn server_settings(raw: RawServer, base: &Path, errs: &mut Errors) -> ServerSettings {
    let listen = listen_addrs("server.listen", &raw.listen, errs);
    let listen_tls = listen_addrs("server.listen_tls", &raw.listen_tls, errs);
    // As written: an address that is wrong has its own error.
    if raw.listen.is_empty() && raw.listen_tls.is_empty() {
        errs.push(
            "server.listen",
            "at least one listen or listen_tls address is needed",
        );
    }
    let trusted_proxies = networks("server.trusted_proxies", &raw.trusted_proxies, errs);
    let proxy_protocol = accept_proxy(&raw.proxy_protocol, &listen, &listen_tls, errs);
    if proxy_protocol != AcceptProxy::Off && trusted_proxies.is_empty() {
        errs.push(
            "server.proxy_protocol",
            "needs server.trusted_proxies: the balancers allowed to send the header",
        );
    }
    let answers = server_answers(&raw, &listen_tls, base, errs);
    let request_id = request_id(&raw.request_id, errs);
    let request_id_header = http::HeaderName::from_bytes(raw.request_id_header.as_bytes())
        .unwrap_or_else(|_| {
            errs.push(
                "server.request_id_header",
                format!("{:?} is not a header field name", raw.request_id_header),
            );
            http::HeaderName::from_static("x-request-id")
        });
    let own = (request_id != RequestId::Off).then_some(&request_id_header);
    let headers = |key: &str, raw: &Option<RawHeaderRules>, errs: &mut Errors| {
        let rules = super::app_edits::header_rules(key, raw.as_ref()?, own, errs);
        (rules != HeaderRules::default()).then(|| std::sync::Arc::new(rules))
    };
    let request_headers = headers("server.request_headers", &raw.request_headers, errs);
    let response_headers = headers("server.response_headers", &raw.response_headers, errs);
    ServerSettings {
        workers: int_range("server.workers", raw.workers, 0, 1024, errs) as usize,
        shutdown_timeout: duration("server.shutdown_timeout", &raw.shutdown_timeout, errs),
        color_header: raw.color_header,
        resolve_interval: positive_duration("server.resolve_interval", &raw.resolve_interval, errs),
        upgrade_timeout: positive_duration("server.upgrade_timeout", &raw.upgrade_timeout, errs),
        trusted_proxies,
        proxy_protocol,
        request_id,
        request_id_header,
        request_headers,
        response_headers,
        upgrades: upgrades(&raw.upgrades, errs),
        answers,
        listen,
        listen_tls,
    }
}

fn request_id(s: &str, errs: &mut Errors) -> RequestId {
    match s {
        "keep" => RequestId::Keep,
        "always" => RequestId::Always,
        "off" => RequestId::Off,
        other => {
            errs.push(
                "server.request_id",
                format!("{other:?} is not one of \"keep\", \"always\", \"off\""),
            );
            RequestId::Keep
        }
    }
}

/// `server.proxy_protocol`: every listener, or some of them by address.
fn accept_proxy(
    raw: &RawAcceptProxy,
    listen: &[SocketAddr],
    listen_tls: &[SocketAddr],
    errs: &mut Errors,
) -> AcceptProxy {
    let list = match raw {
        RawAcceptProxy::All(false) => return AcceptProxy::Off,
        RawAcceptProxy::All(true) => return AcceptProxy::All,
        RawAcceptProxy::Only(list) => list,
    };
    let mut only = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let key = format!("server.proxy_protocol[{i}]");
        match a.parse::<SocketAddr>() {
            Ok(addr) if listen.contains(&addr) || listen_tls.contains(&addr) => only.push(addr),
            Ok(_) => errs.push(key, format!("{a} is not one of listen or listen_tls")),
            Err(_) => errs.push(key, format!("{a:?} is not an address (host:port)")),
        }
    }
    AcceptProxy::Only(only)
}

/// `[server]`'s answers, which are every app's defaults.
fn server_answers(
    raw: &RawServer,
    listen_tls: &[SocketAddr],
    base: &Path,
    errs: &mut Errors,
) -> OwnAnswers {
    let https_port = match raw.https_port {
        Some(p) => int_range("server.https_port", p, 1, 65535, errs) as u16,
        // Port 0 (a test's free port) says nothing about the public one.
        None => listen_tls
            .first()
            .map(|a| a.port())
            .filter(|p| *p != 0)
            .unwrap_or(443),
    };
    let defaults = OwnAnswers {
        https_port,
        ..OwnAnswers::default()
    };
    let own = RawAnswers {
        redirect_https: Some(raw.redirect_https),
        hsts: raw.hsts.clone(),
        retry_after: Some(raw.retry_after.clone()),
        error_pages: raw.error_pages.clone(),
    };
    answers("server", own, &defaults, base, errs)
}

fn limits(l: RawLimits, errs: &mut Errors) -> Limits {
    let positive = |key: &str, d: &RawDuration, errs: &mut Errors| {
        positive_duration(&format!("limits.{key}"), d, errs)
    };
    Limits {
        max_header_bytes: int_range(
            "limits.max_header_bytes",
            l.max_header_bytes,
            1024,
            16 << 20,
            errs,
        ) as usize,
        max_body_bytes: int_range("limits.max_body_bytes", l.max_body_bytes, 0, i64::MAX, errs)
            as u64,
        client_header_timeout: positive("client_header_timeout", &l.client_header_timeout, errs),
        client_idle_timeout: positive("client_idle_timeout", &l.client_idle_timeout, errs),
        client_body_timeout: positive("client_body_timeout", &l.client_body_timeout, errs),
        client_send_timeout: positive("client_send_timeout", &l.client_send_timeout, errs),
        upstream_read_timeout: positive("upstream_read_timeout", &l.upstream_read_timeout, errs),
        tunnel_idle_timeout: positive("tunnel_idle_timeout", &l.tunnel_idle_timeout, errs),
        upstream_connect_timeout: positive(
            "upstream_connect_timeout",
            &l.upstream_connect_timeout,
            errs,
        ),
        upstream_response_timeout: positive(
            "upstream_response_timeout",
            &l.upstream_response_timeout,
            errs,
        ),
        upstream_idle_timeout: duration(
            "limits.upstream_idle_timeout",
            &l.upstream_idle_timeout,
            errs,
        ),
        upstream_max_lifetime: duration(
            "limits.upstream_max_lifetime",
            &l.upstream_max_lifetime,
            errs,
        ),
        max_connections: int_range(
            "limits.max_connections",
            l.max_connections,
            1,
            10_000_000,
            errs,
        ) as usize,
    }
}

/// `[[tls.certs]]`, read now, so that `check` and a reload catch
/// unreadable files, bad PEM and keys that do not match their certificate.
fn certs(
    raw: RawTls,
    server: &ServerSettings,
    acme: bool,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Vec<CertPaths> {
    let tls: Vec<CertPaths> = raw
        .certs
        .into_iter()
        .map(|c| CertPaths {
            cert: base.join(c.cert),
            key: base.join(c.key),
        })
        .collect();
    if !server.listen_tls.is_empty() && tls.is_empty() && !acme {
        errs.push(
            "server.listen_tls",
            "TLS listeners need at least one [[tls.certs]] entry or [tls.acme]",
        );
    }
    if !tls.is_empty() {
        match super::certs::load(&tls) {
            Ok((_, _, w)) => warnings.extend(w),
            Err(list) => {
                for e in list {
                    let file = match e.file {
                        PairFile::Cert => "cert",
                        PairFile::Key => "key",
                    };
                    errs.push(format!("tls.certs[{}].{file}", e.index), e.message);
                }
            }
        }
    }
    tls
}

fn log_settings(raw: RawLog, base: &Path, errs: &mut Errors) -> LogSettings {
    LogSettings {
        access: match raw.access.as_str() {
            "off" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            "" => {
                errs.push("log.access", "\"stdout\", \"off\" or a file path");
                AccessLog::Off
            }
            path => AccessLog::File(base.join(path)),
        },
        format: match raw.access_format.as_str() {
            "json" => AccessFormat::Json,
            "combined" => AccessFormat::Combined,
            other => {
                errs.push(
                    "log.access_format",
                    format!("{other:?} is not \"json\" or \"combined\""),
                );
                AccessFormat::Json
            }
        },
        query: raw.access_query,
        buffer: int_range("log.access_buffer", raw.access_buffer, 16, 1 << 20, errs) as usize,
    }
}

/// `server.upgrades`: protocol names (`Upgrade` tokens) requests may
/// upgrade to; `h2c` is refused.
fn upgrades(list: &[String], errs: &mut Errors) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let key = format!("server.upgrades[{i}]");
        let lower = p.trim().to_ascii_lowercase();
        if lower == "h2c" {
            errs.push(
                &key,
                "h2c is never forwarded: an upstream that took it would get the client's raw HTTP/2 connection",
            );
        } else if lower.is_empty()
            || !lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            errs.push(&key, format!("{p:?} is not a protocol name (a token)"));
        } else {
            out.push(lower);
        }
    }
    out
}

/// Every listener address at most once: two listeners on one port (the
/// admin API on a proxy port, say) would fail to bind at run.
fn listeners_once(server: &ServerSettings, admin: &AdminSettings, errs: &mut Errors) {
    let all = server
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("server.listen[{i}]"), *a))
        .chain(
            server
                .listen_tls
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("server.listen_tls[{i}]"), *a)),
        )
        .chain(std::iter::once(("admin.listen".to_string(), admin.listen)));
    let mut seen: Vec<(String, SocketAddr)> = Vec::new();
    for (key, a) in all {
        // Port 0 picks a free port: never a clash.
        let clash = seen.iter().find(|(_, b)| {
            a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        });
        if let Some((other, _)) = clash {
            errs.push(
                &key,
                format!("{a} is also {other}: each listener needs its own address"),
            );
        }
        seen.push((key, a));
    }
}

/// Reading a config is validating it.
impl Config {
    /// Read and validate a config file. Errors come back all at once.
    /// Servers given by host name are not resolved yet (see
    /// `control::resolve`).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(format!("{}: cannot read: {e}", path.display())))?;
        parse_config(&text, Some(path))
    }

    /// Parse a config from a string; relative paths resolve against the
    /// current directory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        parse_config(text, None)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError};

    /// A valid config but for `key` (a duration) set to `value`.
    fn with_duration(key: &str, value: &str) -> String {
        let (table, name) = key.rsplit_once('.').unwrap();
        let line = format!("{name} = \"{value}\"\n");
        let (mut top, mut app, mut blue, mut mirror) =
            (String::new(), String::new(), String::new(), String::new());
        match table {
            "apps.a" => app = line,
            "apps.a.mirror" => mirror = format!("[apps.a.mirror]\n{line}"),
            "apps.a.blue.health" | "apps.a.blue.passive" => {
                let inline = table.rsplit('.').next().unwrap();
                blue = format!("{inline} = {{ {} }}\n", line.trim());
            }
            _ => top = format!("[{table}]\n{line}"),
        }
        format!(
            "{top}[apps.a]\n{app}[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n{blue}[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n{mirror}"
        )
    }

    #[test]
    fn an_apps_guard_is_two_minutes_unless_off_or_a_duration_from_1s_to_a_day() {
        let guard = |v: &str| Config::from_toml(&with_duration("apps.a.guard", v));
        let of = |c: Config| c.app("a").unwrap().guard;
        let default = Config::from_toml(&with_duration("apps.a.drain_timeout", "1s")).unwrap();
        assert_eq!(of(default), Duration::from_secs(120));
        assert_eq!(of(guard("off").unwrap()), Duration::ZERO);
        assert_eq!(of(guard("30s").unwrap()), Duration::from_secs(30));
        for bad in ["0s", "500ms", "25h", "soon"] {
            let errors = guard(bad).unwrap_err();
            assert!(
                errors.iter().any(|e| e.key == "apps.a.guard"),
                "guard = {bad:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn an_apps_guard_max_slow_is_500ms_unless_off_or_a_duration_from_1ms_to_1h() {
        let slow = |v: &str| Config::from_toml(&with_duration("apps.a.guard_max_slow", v));
        let of = |c: Config| c.app("a").unwrap().guard_max_slow;
        let default = Config::from_toml(&with_duration("apps.a.drain_timeout", "1s")).unwrap();
        assert_eq!(of(default), Some(Duration::from_millis(500)));
        assert_eq!(of(slow("off").unwrap()), None);
        assert_eq!(of(slow("2s").unwrap()), Some(Duration::from_secs(2)));
        for bad in ["0s", "2h", "soon"] {
            let errors = slow(bad).unwrap_err();
            assert!(
                errors.iter().any(|e| e.key == "apps.a.guard_max_slow"),
                "guard_max_slow = {bad:?}: {errors:?}"
            );
        }
    }

    /// Timeouts and periods: `0s` would time every request out or spin a
    /// timer.
    const NEVER_ZERO: [&str; 19] = [
        "server.resolve_interval",
        "server.upgrade_timeout",
        "limits.client_header_timeout",
        "limits.client_idle_timeout",
        "limits.client_body_timeout",
        "limits.client_send_timeout",
        "limits.upstream_read_timeout",
        "limits.tunnel_idle_timeout",
        "limits.upstream_connect_timeout",
        "limits.upstream_response_timeout",
        "admin.header_timeout",
        "admin.idle_timeout",
        "apps.a.mirror.timeout",
        "apps.a.client_body_timeout",
        "apps.a.upstream_connect_timeout",
        "apps.a.upstream_response_timeout",
        "apps.a.upstream_read_timeout",
        "apps.a.blue.health.interval",
        "apps.a.blue.health.timeout",
    ];

    /// Keys whose `0s` says something: stop, close or probe at once, never
    /// reuse a connection, send no Retry-After.
    const ZERO_MEANS_AT_ONCE: [&str; 7] = [
        "server.shutdown_timeout",
        "server.retry_after",
        "limits.upstream_idle_timeout",
        "limits.upstream_max_lifetime",
        "apps.a.drain_timeout",
        "apps.a.retry_after",
        "apps.a.blue.passive.cooldown",
    ];

    #[test]
    fn a_timeout_or_period_of_0s_is_refused_naming_its_key() {
        for key in NEVER_ZERO {
            let errors = Config::from_toml(&with_duration(key, "0s")).unwrap_err();
            let want = format!("{key}: must be longer than 0s, got \"0s\"");
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(&want)),
                "{want:?} in {errors:?}"
            );
            assert!(
                Config::from_toml(&with_duration(key, "250ms")).is_ok(),
                "{key}"
            );
        }
        for key in ZERO_MEANS_AT_ONCE {
            let config = Config::from_toml(&with_duration(key, "0s"));
            assert!(config.is_ok(), "{key}: {config:?}");
        }
    }

    #[test]
    fn no_duration_may_be_longer_than_a_day() {
        for key in NEVER_ZERO.iter().chain(&ZERO_MEANS_AT_ONCE) {
            // What overflowed a deadline before: a century, and more.
            for long in ["25h", "100years", "18446744073709551615s"] {
                let errors = Config::from_toml(&with_duration(key, long)).unwrap_err();
                assert!(
                    errors.iter().any(|e| e.key == *key),
                    "{key} = {long:?}: {errors:?}"
                );
            }
            let errors = Config::from_toml(&with_duration(key, "25h")).unwrap_err();
            let want = format!("{key}: must be at most 1 day (\"24h\"), got \"25h\"");
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(&want)),
                "{want:?} in {errors:?}"
            );
            assert!(
                Config::from_toml(&with_duration(key, "24h")).is_ok(),
                "{key}"
            );
        }
    }

    const GOOD_POOLS: &str =
        "[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n";

    fn errors_of(text: &str) -> Vec<ConfigError> {
        Config::from_toml(text).unwrap_err().0
    }

    #[test]
    fn an_unknown_key_names_its_path_and_line_and_the_key_it_is_near() {
        let text = format!(
            "[limits]\nclient_idel_timeout = \"5s\"\n{GOOD_POOLS}health = {{ pth = \"/\" }}\n"
        );
        assert_eq!(
            errors_of(&text),
            [
                ConfigError {
                    key: "limits.client_idel_timeout".into(),
                    line: Some(2),
                    message:
                        "unknown field `client_idel_timeout`, did you mean `client_idle_timeout`?"
                            .into(),
                },
                ConfigError {
                    key: "apps.a.green.health.pth".into(),
                    line: Some(7),
                    message: "unknown field `pth`, did you mean `path`?".into(),
                },
            ]
        );
        // Nothing near: no guess.
        let errors = errors_of(&format!("{GOOD_POOLS}[frobnicate]\nx = 1\n"));
        assert_eq!(errors[0].key, "frobnicate");
        assert_eq!(errors[0].line, Some(5));
        assert_eq!(errors[0].message, "unknown field `frobnicate`");
    }

    #[test]
    fn a_server_table_names_its_unknown_key_and_a_missing_addr() {
        let text = "[apps.a.blue]\nservers = [\"127.0.0.1:1\", { addr = \"127.0.0.1:2\", wieght = 2 }, { weight = 3 }]\n[apps.a.green]\nservers = [\"127.0.0.1:3\"]\n";
        let errors: Vec<String> = errors_of(text).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "apps.a.blue.servers[1].wieght: unknown field `wieght`, did you mean `weight`? (line 2)",
                "apps.a.blue.servers[2]: missing field `addr` (line 2)",
            ]
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_line() {
        let errors = errors_of(&format!(
            "[server]\ncolor_header = true\nworkers = \"two\"\n{GOOD_POOLS}"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "server.workers");
        assert_eq!(errors[0].line, Some(3));
        assert!(errors[0].message.contains("invalid type"), "{errors:?}");
        assert!(errors[0]
            .to_string()
            .starts_with("server.workers: invalid type"));
    }

    #[test]
    fn a_duration_that_is_none_names_its_key_and_line() {
        let errors = errors_of(&format!(
            "{GOOD_POOLS}[apps.a.mirror]\npercent = 5\ntimeout = \"soon\"\n"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "apps.a.mirror.timeout");
        assert_eq!(errors[0].line, Some(7));
        assert!(
            errors[0]
                .message
                .starts_with("\"soon\" is not a duration like \"250ms\", \"2s\" or \"5m\""),
            "{errors:?}"
        );
    }

    #[test]
    fn an_absent_key_takes_its_default() {
        let config =
            Config::from_toml(&format!("[limits]\nmax_connections = 10\n{GOOD_POOLS}")).unwrap();
        assert_eq!(config.limits.max_connections, 10);
        assert_eq!(config.limits.client_idle_timeout, Duration::from_secs(60));
        assert_eq!(
            config.limits.upstream_max_lifetime,
            Duration::from_secs(600)
        );
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9901");
        let app = &config.apps[0];
        assert_eq!(app.path_prefix, "/");
        assert_eq!(app.sticky.to_string(), "cookie:cutover");
        assert_eq!(app.mirror, crate::config::MirrorConfig::default());
        assert_eq!(
            app.pools[0].passive,
            crate::config::PassiveConfig::default()
        );
        assert_eq!(
            app.answers.retry_after,
            Some(http::HeaderValue::from_static("5"))
        );
    }

    #[test]
    fn a_value_error_is_given_the_line_of_its_key() {
        let errors = errors_of(&format!("{GOOD_POOLS}[[apps.a.rules]]\nname = \"a\"\nto = \"green\"\nall = true\n[[apps.a.rules]]\nname = \"b\"\nto = \"green\"\nall = true\npercent = 150\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "apps.a.rules[1].percent");
        assert_eq!(errors[0].line, Some(13));
        // A key that is missing: the line of its table.
        let errors =
            errors_of("[apps.a]\nlive = \"blue\"\n[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\n");
        assert_eq!(errors[0].key, "apps.a.green");
        assert_eq!(errors[0].line, Some(1));
    }

    #[test]
    fn validation_asks_no_dns() {
        // `.invalid` never resolves (RFC 6761): it stays a name, no warning.
        let config = Config::from_toml(
            "[apps.a.blue]\nservers = [\"api.invalid:80\"]\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let blue = &config.apps[0].pools[0];
        assert!(blue.servers.is_empty());
        assert_eq!(blue.names[0].name, "api.invalid:80");
        assert_eq!(blue.names[0].key, "apps.a.blue.servers[0]");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }
}
