//! Raw TOML → typed [`Config`], collecting every error with the key it
//! belongs to (`apps.shop.rules[1].percent: must be between 0 and 100, got 150`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use http::HeaderValue;
use rustls_pki_types::ServerName;

use super::raw::*;
use super::rule::Rule;
use super::types::*;
use crate::model::{Color, RuleSpec};

/// Collects errors so that one run reports all of them.
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, key: &str, msg: impl fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }
}

pub fn parse_config(text: &str, path: Option<&Path>) -> Result<Config, Vec<String>> {
    let name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "config".into());
    let (raw, unknown) = parse_known(text).map_err(|e| vec![format!("{name}: {e}")])?;
    let base = path
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut errs = Errors(Vec::new());
    let cfg = build(raw, &base, path, &mut errs);
    let unknown: Vec<String> = unknown
        .into_iter()
        .map(|e| format!("{name}: {e}"))
        .collect();
    if !unknown.is_empty() {
        let rest = errs.0.into_iter().map(|e| with_line(text, e));
        return Err(unknown.into_iter().chain(rest).collect());
    }
    if errs.0.is_empty() {
        Ok(cfg)
    } else {
        Err(errs.0.into_iter().map(|e| with_line(text, e)).collect())
    }
}

/// Deserialize the text, reporting every unknown key rather than only the
/// first: each one is reported (with its line) and its line blanked — a
/// table header with its whole table — and the rest parsed again, so a
/// typo hides no other error. `Err`: the text is not TOML, or a known key
/// has the wrong type.
fn parse_known(text: &str) -> Result<(RawConfig, Vec<String>), String> {
    let mut text = text.to_string();
    let mut unknown = Vec::new();
    loop {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => return Ok((raw, unknown)),
            Err(e) => e,
        };
        let message = e.message().trim_end().to_string();
        let Some(span) = e.span().filter(|_| message.starts_with("unknown field")) else {
            return Err(e.to_string().trim_end().to_string());
        };
        if unknown.len() >= 100 {
            return Err(e.to_string().trim_end().to_string());
        }
        let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let line_no = text[..span.start].matches('\n').count() + 1;
        let line_end = text[span.start..]
            .find('\n')
            .map_or(text.len(), |i| span.start + i);
        let line = text[line_start..line_end].trim().to_string();
        unknown.push(format!("{message} (line {line_no}: {line})"));
        // A table header takes its table with it, up to the next header.
        let end = if line.starts_with('[') {
            text[line_end..]
                .match_indices('\n')
                .map(|(i, _)| line_end + i + 1)
                .find(|&i| text[i..].trim_start().starts_with('['))
                .map_or(text.len(), |i| i - 1)
        } else {
            line_end
        };
        // Blank it, keeping the line count (so later lines keep their numbers).
        let blank: String = text[line_start..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        text.replace_range(line_start..end, &blank);
    }
}

/// Append `(line N)` to an error `KEY: message` when the key can be found
/// in the text: the table header, then the key inside that table.
fn with_line(text: &str, error: String) -> String {
    let key = error.split(": ").next().unwrap_or("");
    match line_of(text, key) {
        Some(n) => format!("{error} (line {n})"),
        None => error,
    }
}

/// Best effort: the 1-based line where `key` (`apps.shop.rules[1].percent`)
/// is written, or its table's header.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    // Split into the table path and the field: the longest prefix of the
    // segments that names a table header in the text is the table.
    let segments: Vec<&str> = key.split('.').collect();
    let lines: Vec<&str> = text.lines().collect();
    for cut in (1..=segments.len()).rev() {
        let table = segments[..cut].join(".");
        let (table_name, index) = match table.rsplit_once('[') {
            Some((name, rest)) if rest.ends_with(']') => (
                name.to_string(),
                rest.trim_end_matches(']').parse::<usize>().ok(),
            ),
            _ => (table.clone(), None),
        };
        let header = match index {
            Some(_) => format!("[[{table_name}]]"),
            None => format!("[{table_name}]"),
        };
        let mut seen = 0;
        let start = lines.iter().position(|l| {
            if l.trim() == header {
                seen += 1;
                seen > index.unwrap_or(0)
            } else {
                false
            }
        });
        let Some(start) = start else { continue };
        let Some(field) = segments.get(cut) else {
            return Some(start + 1);
        };
        let field = field.split('[').next().unwrap_or(field);
        for (i, l) in lines.iter().enumerate().skip(start + 1) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if t.strip_prefix(field)
                .is_some_and(|r| r.trim_start().starts_with('='))
            {
                return Some(i + 1);
            }
        }
        return Some(start + 1);
    }
    None
}

fn log_settings(raw: RawLog, base: &Path, errs: &mut Errors) -> LogSettings {
    let d = LogSettings::default();
    LogSettings {
        access: match raw.access.as_deref() {
            None | Some("off") => AccessLog::Off,
            Some("stdout") => AccessLog::Stdout,
            Some("") => {
                errs.push("log.access", "\"stdout\", \"off\" or a file path");
                AccessLog::Off
            }
            Some(path) => AccessLog::File(base.join(path)),
        },
        format: match raw.access_format.as_deref() {
            None | Some("json") => AccessFormat::Json,
            Some("combined") => AccessFormat::Combined,
            Some(other) => {
                errs.push(
                    "log.access_format",
                    format!("{other:?} is not \"json\" or \"combined\""),
                );
                AccessFormat::Json
            }
        },
        query: raw.access_query.unwrap_or(false),
        buffer: int_range(
            "log.access_buffer",
            raw.access_buffer,
            d.buffer as i64,
            16,
            1 << 20,
            errs,
        ) as usize,
    }
}

/// CIDR networks (`10.0.0.0/8`) or single addresses (`192.0.2.1`).
fn networks(key: &str, list: Vec<String>, errs: &mut Errors) -> Vec<ipnet::IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let net = s
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
            if net.is_none() {
                errs.push(
                    &format!("{key}[{i}]"),
                    format!("not a network (CIDR) or an address: {s:?}"),
                );
            }
            net.map(|n| n.trunc())
        })
        .collect()
}

fn build(raw: RawConfig, base: &Path, path: Option<&Path>, errs: &mut Errors) -> Config {
    let d = Limits::default();
    let server = ServerSettings {
        listen: addrs(
            "server.listen",
            raw.server
                .listen
                .unwrap_or_else(|| vec!["0.0.0.0:8080".into()]),
            errs,
        ),
        listen_tls: addrs(
            "server.listen_tls",
            raw.server.listen_tls.unwrap_or_default(),
            errs,
        ),
        workers: int_range("server.workers", raw.server.workers, 0, 0, 1024, errs) as usize,
        shutdown_timeout: duration(
            "server.shutdown_timeout",
            raw.server.shutdown_timeout,
            Duration::from_secs(30),
            errs,
        ),
        color_header: raw.server.color_header.unwrap_or(false),
        resolve_interval: positive_duration(
            "server.resolve_interval",
            raw.server.resolve_interval,
            Duration::from_secs(30),
            errs,
        ),
        upgrade_timeout: positive_duration(
            "server.upgrade_timeout",
            raw.server.upgrade_timeout,
            Duration::from_secs(30),
            errs,
        ),
        trusted_proxies: networks(
            "server.trusted_proxies",
            raw.server.trusted_proxies.unwrap_or_default(),
            errs,
        ),
        proxy_protocol: AcceptProxy::Off,
        request_id: match raw.server.request_id.as_deref() {
            None | Some("keep") => RequestId::Keep,
            Some("always") => RequestId::Always,
            Some("off") => RequestId::Off,
            Some(other) => {
                errs.push(
                    "server.request_id",
                    format!("{other:?} is not one of \"keep\", \"always\", \"off\""),
                );
                RequestId::Keep
            }
        },
        request_id_header: match raw.server.request_id_header.as_deref() {
            None => http::HeaderName::from_static("x-request-id"),
            Some(name) => http::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
                errs.push(
                    "server.request_id_header",
                    format!("{name:?} is not a header field name"),
                );
                http::HeaderName::from_static("x-request-id")
            }),
        },
        upgrades: upgrades(raw.server.upgrades, errs),
        answers: OwnAnswers::default(),
    };
    let mut server = server;
    server.proxy_protocol = match raw.server.proxy_protocol {
        None | Some(RawAcceptProxy::All(false)) => AcceptProxy::Off,
        Some(RawAcceptProxy::All(true)) => AcceptProxy::All,
        Some(RawAcceptProxy::Only(list)) => {
            let mut only = Vec::new();
            for (i, a) in list.iter().enumerate() {
                match a.parse::<SocketAddr>() {
                    Ok(addr)
                        if server.listen.contains(&addr) || server.listen_tls.contains(&addr) =>
                    {
                        only.push(addr)
                    }
                    Ok(_) => errs.push(
                        &format!("server.proxy_protocol[{i}]"),
                        format!("{a} is not one of listen or listen_tls"),
                    ),
                    Err(_) => errs.push(
                        &format!("server.proxy_protocol[{i}]"),
                        format!("{a:?} is not an address (host:port)"),
                    ),
                }
            }
            AcceptProxy::Only(only)
        }
    };
    if server.proxy_protocol != AcceptProxy::Off && server.trusted_proxies.is_empty() {
        errs.push(
            "server.proxy_protocol",
            "needs server.trusted_proxies: the balancers allowed to send the header",
        );
    }
    let https_port = match raw.server.https_port {
        Some(_) => int_range(
            "server.https_port",
            raw.server.https_port,
            443,
            1,
            65535,
            errs,
        ) as u16,
        // Port 0 (a test's free port) says nothing about the public one.
        None => server
            .listen_tls
            .first()
            .map(|a| a.port())
            .filter(|p| *p != 0)
            .unwrap_or(443),
    };
    let defaults = OwnAnswers {
        redirect_https: false,
        https_port,
        hsts: None,
        retry_after: Some(HeaderValue::from_static("5")),
        pages: ErrorPages::default(),
        allow_connect: false,
    };
    let own = RawAnswers {
        redirect_https: raw.server.redirect_https,
        hsts: raw.server.hsts,
        retry_after: raw.server.retry_after,
        error_pages: raw.server.error_pages,
    };
    server.answers = answers("server", own, &defaults, base, errs);
    if server.listen.is_empty() && server.listen_tls.is_empty() {
        errs.push(
            "server.listen",
            "at least one listen or listen_tls address is needed",
        );
    }
    let l = raw.limits;
    let limits = Limits {
        max_header_bytes: int_range(
            "limits.max_header_bytes",
            l.max_header_bytes,
            d.max_header_bytes as i64,
            1024,
            16 << 20,
            errs,
        ) as usize,
        max_body_bytes: int_range(
            "limits.max_body_bytes",
            l.max_body_bytes,
            0,
            0,
            i64::MAX,
            errs,
        ) as u64,
        client_header_timeout: positive_duration(
            "limits.client_header_timeout",
            l.client_header_timeout,
            d.client_header_timeout,
            errs,
        ),
        client_idle_timeout: positive_duration(
            "limits.client_idle_timeout",
            l.client_idle_timeout,
            d.client_idle_timeout,
            errs,
        ),
        client_body_timeout: positive_duration(
            "limits.client_body_timeout",
            l.client_body_timeout,
            d.client_body_timeout,
            errs,
        ),
        client_send_timeout: positive_duration(
            "limits.client_send_timeout",
            l.client_send_timeout,
            d.client_send_timeout,
            errs,
        ),
        upstream_read_timeout: positive_duration(
            "limits.upstream_read_timeout",
            l.upstream_read_timeout,
            d.upstream_read_timeout,
            errs,
        ),
        tunnel_idle_timeout: positive_duration(
            "limits.tunnel_idle_timeout",
            l.tunnel_idle_timeout,
            d.tunnel_idle_timeout,
            errs,
        ),
        upstream_connect_timeout: positive_duration(
            "limits.upstream_connect_timeout",
            l.upstream_connect_timeout,
            d.upstream_connect_timeout,
            errs,
        ),
        upstream_response_timeout: positive_duration(
            "limits.upstream_response_timeout",
            l.upstream_response_timeout,
            d.upstream_response_timeout,
            errs,
        ),
        upstream_idle_timeout: duration(
            "limits.upstream_idle_timeout",
            l.upstream_idle_timeout,
            d.upstream_idle_timeout,
            errs,
        ),
        upstream_max_lifetime: duration(
            "limits.upstream_max_lifetime",
            l.upstream_max_lifetime,
            d.upstream_max_lifetime,
            errs,
        ),
        max_connections: int_range(
            "limits.max_connections",
            l.max_connections,
            d.max_connections as i64,
            1,
            10_000_000,
            errs,
        ) as usize,
    };
    let tls = raw
        .tls
        .certs
        .into_iter()
        .map(|c| CertPaths {
            cert: base.join(c.cert),
            key: base.join(c.key),
        })
        .collect::<Vec<_>>();
    if !server.listen_tls.is_empty() && tls.is_empty() {
        errs.push(
            "server.listen_tls",
            "TLS listeners need at least one [[tls.certs]] entry",
        );
    }
    // Certificates are read now, so `check` and a reload catch unreadable
    // files, bad PEM and keys that do not match their certificate.
    let mut warnings = Vec::new();
    if !tls.is_empty() {
        match super::certs::load(&tls) {
            Ok((_, _, w)) => warnings = w,
            Err(list) => {
                for e in list {
                    errs.push("tls.certs", e);
                }
            }
        }
    }
    let admin = admin(raw.admin, base, errs, &mut warnings);
    listeners_once(&server, &admin, errs);
    let log = log_settings(raw.log, base, errs);
    let state = StateSettings {
        file: raw.state.file.map(|f| base.join(f)),
    };
    let apps = raw
        .apps
        .into_iter()
        .map(|(name, app)| build_app(name, app, &server.answers, base, errs, &mut warnings))
        .collect::<Vec<_>>();
    if apps.is_empty() {
        errs.push("apps", "at least one app is needed");
    }
    check_overlaps(&apps, errs);
    Config {
        path: path.map(Path::to_path_buf),
        server,
        limits,
        tls,
        admin,
        state,
        log,
        apps,
        warnings,
    }
}

fn admin(
    raw: RawAdmin,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> AdminSettings {
    let listen = match raw.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9901)),
        Some(s) => {
            addr("admin.listen", &s, errs).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901)))
        }
    };
    let tokens = admin_tokens(
        raw.token_file,
        raw.token_env,
        raw.tokens,
        base,
        errs,
        warnings,
    );
    if tokens.is_empty() && !listen.ip().is_loopback() {
        errs.push(
            "admin.listen",
            format!("{listen} is not a loopback address: set admin.token_file, admin.token_env or [[admin.tokens]]"),
        );
    }
    let hosts = raw
        .hosts
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, h)| admin_host(&format!("admin.hosts[{i}]"), h, errs))
        .collect();
    let header_timeout = positive_duration(
        "admin.header_timeout",
        raw.header_timeout,
        AdminSettings::DEFAULT_HEADER_TIMEOUT,
        errs,
    );
    let idle_timeout = positive_duration(
        "admin.idle_timeout",
        raw.idle_timeout,
        AdminSettings::DEFAULT_IDLE_TIMEOUT,
        errs,
    );
    let max_connections = int_range(
        "admin.max_connections",
        raw.max_connections,
        AdminSettings::DEFAULT_MAX_CONNECTIONS as i64,
        1,
        1_000_000,
        errs,
    ) as usize;
    let upgrade_binary = raw.upgrade_binary.map(|b| base.join(b));
    if let Some(b) = &upgrade_binary {
        // A warning: the package that installs it may not have yet.
        if !b.is_file() {
            warnings.push(format!(
                "admin.upgrade_binary: {} is not a file (yet): an upgrade would fail until it is",
                b.display()
            ));
        }
    }
    let tls = admin_tls(raw.tls_cert_file, raw.tls_key_file, base, errs, warnings);
    if !tokens.is_empty() && !listen.ip().is_loopback() && tls.is_none() {
        warnings.push(format!(
            "admin.listen: {listen} is not a loopback address and the admin API speaks clear HTTP there: \
             its bearer tokens cross the network readable; set admin.tls_cert_file and admin.tls_key_file"
        ));
    }
    AdminSettings {
        listen,
        tokens,
        hosts,
        header_timeout,
        idle_timeout,
        max_connections,
        upgrade_binary,
        allow_local_binary: raw.allow_local_binary.unwrap_or(false),
        tls,
    }
}

/// `[admin] tls_cert_file` and `tls_key_file`: both or neither; the files
/// read and the server config built now.
fn admin_tls(
    cert: Option<String>,
    key: Option<String>,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<AdminTls> {
    let files = match (cert, key) {
        (None, None) => return None,
        (Some(cert), Some(key)) => CertPaths {
            cert: base.join(cert),
            key: base.join(key),
        },
        (Some(_), None) => {
            errs.push(
                "admin.tls_key_file",
                "missing: admin.tls_cert_file needs its private key",
            );
            return None;
        }
        (None, Some(_)) => {
            errs.push(
                "admin.tls_cert_file",
                "missing: admin.tls_key_file needs its certificate",
            );
            return None;
        }
    };
    match super::certs::admin_server_config(&files) {
        Ok((server, w)) => {
            warnings.extend(w.into_iter().map(|w| format!("admin.tls_cert_file: {w}")));
            Some(AdminTls { files, server })
        }
        Err(list) => {
            // Each message starts with the file it is about.
            let key_file = files.key.display().to_string();
            for e in list {
                let k = if e.starts_with(&key_file) {
                    "admin.tls_key_file"
                } else {
                    "admin.tls_cert_file"
                };
                errs.push(k, e);
            }
            None
        }
    }
}

/// Names the history uses for actors that are no token.
const RESERVED_TOKEN_NAMES: [&str; 3] = ["local", "start", "reload"];

/// The legacy `token_file`/`token_env` (the operate token `default`) and
/// every `[[admin.tokens]]` entry, each secret read now, so that `check`
/// and a reload catch what `run` would: an unreadable or empty file is an
/// error; an unset environment variable is a warning here (the service
/// manager may set it) and an error when the daemon starts.
fn admin_tokens(
    token_file: Option<String>,
    token_env: Option<String>,
    raw: Vec<RawToken>,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Vec<AdminToken> {
    let mut tokens = Vec::new();
    let legacy = match (token_file, token_env) {
        (Some(_), Some(_)) => {
            errs.push("admin.token_file", "give token_file or token_env, not both");
            None
        }
        (Some(f), None) => Some(("admin.token_file", TokenSource::File(base.join(f)))),
        (None, Some(e)) if e.is_empty() => {
            errs.push("admin.token_env", "must name an environment variable");
            None
        }
        (None, Some(e)) => Some(("admin.token_env", TokenSource::Env(e))),
        (None, None) => None,
    };
    // Every name given so far, with where: a clash names both.
    let mut names: Vec<(String, String)> = Vec::new();
    if let Some((key, source)) = legacy {
        names.push(("default".into(), format!("the token of {key}")));
        let secret = read_secret(key, &source, errs, warnings);
        tokens.push(AdminToken {
            name: "default".into(),
            role: Role::Operate,
            source,
            key: key.into(),
            secret,
        });
    }
    for (i, t) in raw.into_iter().enumerate() {
        let key = format!("admin.tokens[{i}]");
        let name = match t.name {
            None => {
                errs.push(&format!("{key}.name"), "missing (a name like \"ci\" or \"prometheus\", recorded in the history as who made a change)");
                None
            }
            Some(n)
                if n.is_empty()
                    || n.len() > 64
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) =>
            {
                errs.push(
                    &format!("{key}.name"),
                    format!("{n:?}: a token name is 1 to 64 letters, digits, '_', '.' or '-'"),
                );
                None
            }
            Some(n) if RESERVED_TOKEN_NAMES.contains(&n.as_str()) => {
                errs.push(
                    &format!("{key}.name"),
                    format!(
                        "{n:?} is reserved: the history uses it for changes made without a token"
                    ),
                );
                None
            }
            Some(n) => match names.iter().find(|(o, _)| *o == n) {
                Some((_, other)) => {
                    errs.push(
                        &format!("{key}.name"),
                        format!("{n:?} is already the name of {other}: token names must be unique"),
                    );
                    None
                }
                None => {
                    names.push((n.clone(), key.clone()));
                    Some(n)
                }
            },
        };
        let role = match t.role.as_deref() {
            Some("read") => Some(Role::Read),
            Some("operate") => Some(Role::Operate),
            Some(other) => {
                errs.push(
                    &format!("{key}.role"),
                    format!("must be \"read\" or \"operate\", got {other:?}"),
                );
                None
            }
            None => {
                errs.push(&format!("{key}.role"), "missing: \"read\" (status, history, metrics: every GET) or \"operate\" (changes too)");
                None
            }
        };
        let source = match (t.file, t.env) {
            (Some(_), Some(_)) => {
                errs.push(&key, "give file or env, not both");
                None
            }
            (None, None) => {
                errs.push(&key, "give file or env: where the token's secret is");
                None
            }
            (Some(f), None) if f.is_empty() => {
                errs.push(&format!("{key}.file"), "must name a file");
                None
            }
            (Some(f), None) => Some((format!("{key}.file"), TokenSource::File(base.join(f)))),
            (None, Some(e)) if e.is_empty() => {
                errs.push(&format!("{key}.env"), "must name an environment variable");
                None
            }
            (None, Some(e)) => Some((format!("{key}.env"), TokenSource::Env(e))),
        };
        let Some((source_key, source)) = source else {
            continue;
        };
        let secret = read_secret(&source_key, &source, errs, warnings);
        if let (Some(name), Some(role)) = (name, role) {
            tokens.push(AdminToken {
                name,
                role,
                source,
                key: source_key,
                secret,
            });
        }
    }
    // One secret, one name: otherwise the history could not tell which
    // token made a change.
    for (i, t) in tokens.iter().enumerate() {
        let Some(s) = &t.secret else { continue };
        if let Some(o) = tokens[..i].iter().find(|o| o.secret.as_ref() == Some(s)) {
            errs.push(
                &t.key,
                format!(
                    "token {:?} has the same secret as token {:?} ({}): each token needs its own",
                    t.name, o.name, o.key
                ),
            );
        }
    }
    tokens
}

/// A token's secret, trimmed: from its file (an error when unreadable or
/// empty) or its environment variable (`None` and a warning when unset).
fn read_secret(
    key: &str,
    source: &TokenSource,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Secret> {
    let (text, what) = match source {
        TokenSource::File(path) => match std::fs::read_to_string(path) {
            Ok(t) => (t, path.display().to_string()),
            Err(e) => {
                errs.push(key, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        },
        TokenSource::Env(var) => match std::env::var(var) {
            Ok(t) => (t, format!("environment variable {var}")),
            Err(std::env::VarError::NotPresent) => {
                warnings.push(format!(
                    "{key}: environment variable {var} is not set (cutover run refuses to start without it)"
                ));
                return None;
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                errs.push(
                    key,
                    format!("environment variable {var} is not valid UTF-8"),
                );
                return None;
            }
        },
    };
    let secret = text.trim();
    if secret.is_empty() {
        errs.push(key, format!("{what} is empty: a token needs a secret"));
        return None;
    }
    if !secret.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        errs.push(
            key,
            format!("{what} holds characters other than printable ASCII (a line break, a control or non-ASCII character): a bearer token cannot carry them"),
        );
        return None;
    }
    Some(Secret::new(secret.to_string()))
}

/// One `[admin] hosts` entry: a DNS name (letters, digits, '-', '.') or
/// an IP address, without a port; stored in the form the admin compares
/// (lower case, no trailing dot; an IP canonical, without brackets).
fn admin_host(key: &str, s: &str, errs: &mut Errors) -> Option<String> {
    let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if let Ok(ip) = bare.unwrap_or(s).parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        errs.push(
            key,
            format!("{s:?} is not a host name like \"admin.example.com\" or an IP address (no port, no wildcard)"),
        );
        return None;
    }
    Some(name)
}

fn build_app(
    name: String,
    raw: RawApp,
    defaults: &OwnAnswers,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> AppConfig {
    let key = format!("apps.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errs.push(&key, "app names may hold only letters, digits, '-' and '_'");
    }
    let hosts = raw
        .hosts
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, h)| host_pattern(&format!("{key}.hosts[{i}]"), h, errs))
        .collect();
    let path_prefix = raw.path_prefix.unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') {
        errs.push(
            &format!("{key}.path_prefix"),
            format!("must start with '/', got {path_prefix:?}"),
        );
    }
    let live = match raw.live.as_deref() {
        None => Color::Blue,
        Some(s) => color(&format!("{key}.live"), s, errs),
    };
    let standby_percent = raw.standby_percent.unwrap_or(0.0);
    percent(&format!("{key}.standby_percent"), standby_percent, errs);
    let sticky = sticky(
        &format!("{key}.sticky"),
        raw.sticky.as_deref().unwrap_or("cookie:cutover"),
        errs,
    );
    let drain_timeout = raw.drain_timeout.map(|s| {
        duration(
            &format!("{key}.drain_timeout"),
            Some(s),
            Duration::ZERO,
            errs,
        )
    });
    let compress = compression(
        &key,
        raw.compress,
        raw.compress_types,
        raw.compress_min_length,
        errs,
        warnings,
    );
    let blue = pool(&format!("{key}.blue"), raw.blue, base, errs, warnings);
    let green = pool(&format!("{key}.green"), raw.green, base, errs, warnings);
    if let Err(e) = compile_rules(&key, &raw.rules) {
        errs.0.extend(e);
    }
    let own = RawAnswers {
        redirect_https: raw.redirect_https,
        hsts: raw.hsts,
        retry_after: raw.retry_after,
        error_pages: raw.error_pages,
    };
    let mut answers = answers(&key, own, defaults, base, errs);
    answers.allow_connect = raw.allow_connect.unwrap_or(false);
    let mirror = mirror(
        &format!("{key}.mirror"),
        raw.mirror.unwrap_or_default(),
        errs,
    );
    AppConfig {
        name,
        hosts,
        path_prefix,
        live,
        standby_percent,
        sticky,
        drain_timeout,
        compress,
        pools: [blue, green],
        rules: raw.rules,
        answers,
        mirror,
    }
}

/// `[apps.NAME.mirror]`; an absent table is every default.
fn mirror(key: &str, raw: RawMirror, errs: &mut Errors) -> MirrorConfig {
    let d = MirrorConfig::default();
    let percent_in_force = raw.percent.unwrap_or(d.percent);
    percent(&format!("{key}.percent"), percent_in_force, errs);
    let methods = match raw.methods {
        None => d.methods,
        Some(list) => {
            if list.is_empty() {
                errs.push(
                    &format!("{key}.methods"),
                    "an empty list copies nothing: set percent = 0 instead",
                );
            }
            let mut out: Vec<http::Method> = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let k = format!("{key}.methods[{i}]");
                match mirror_method(m) {
                    Ok(m) if !out.contains(&m) => out.push(m),
                    Ok(_) => errs.push(&k, format!("{m:?} is listed twice")),
                    Err(why) => errs.push(&k, why),
                }
            }
            out
        }
    };
    let max_body = int_range(
        &format!("{key}.max_body"),
        raw.max_body,
        d.max_body as i64,
        0,
        1 << 30,
        errs,
    ) as u64;
    let compare_body = match raw.compare {
        None => d.compare_body,
        Some(list) => {
            let k = format!("{key}.compare");
            for (i, c) in list.iter().enumerate() {
                if c != "status" && c != "body" {
                    errs.push(
                        &format!("{k}[{i}]"),
                        format!("must be \"status\" or \"body\", got {c:?}"),
                    );
                }
            }
            if !list.iter().any(|c| c == "status") {
                errs.push(
                    &k,
                    "status classes are always compared: write [\"status\"] or [\"status\", \"body\"]",
                );
            }
            list.iter().any(|c| c == "body")
        }
    };
    let timeout = positive_duration(&format!("{key}.timeout"), raw.timeout, d.timeout, errs);
    let max_in_flight = int_range(
        &format!("{key}.max_in_flight"),
        raw.max_in_flight,
        d.max_in_flight as i64,
        1,
        100_000,
        errs,
    ) as u64;
    MirrorConfig {
        percent: percent_in_force,
        methods,
        max_body,
        compare_body,
        timeout,
        max_in_flight,
    }
}

/// A method `methods` may list: a token as the request line carries it
/// (methods are case-sensitive, RFC 9110 §9.1), never `CONNECT`, whose
/// tunnel has no answer to compare.
fn mirror_method(m: &str) -> Result<http::Method, String> {
    let method = http::Method::from_bytes(m.as_bytes())
        .map_err(|_| format!("{m:?} is not a method like \"GET\" or \"POST\""))?;
    if method == http::Method::CONNECT {
        return Err("CONNECT opens a tunnel and is never copied".into());
    }
    let upper = m.to_ascii_uppercase();
    if m != upper
        && http::Method::from_bytes(upper.as_bytes()).is_ok_and(|u| {
            matches!(
                u,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::POST
                    | http::Method::PUT
                    | http::Method::DELETE
                    | http::Method::OPTIONS
                    | http::Method::PATCH
                    | http::Method::TRACE
            )
        })
    {
        return Err(format!(
            "methods are case-sensitive: {m:?} is not {upper:?}, which is what clients send"
        ));
    }
    Ok(method)
}

/// The keys of [`OwnAnswers`] as `[server]` and `[apps.NAME]` both have them.
struct RawAnswers {
    redirect_https: Option<bool>,
    hsts: Option<String>,
    retry_after: Option<String>,
    error_pages: Option<BTreeMap<String, String>>,
}

/// The answers of `key` (`server` or `apps.NAME`): each of its keys, or
/// `defaults`' value where it has none; an error page per status.
fn answers(
    key: &str,
    raw: RawAnswers,
    defaults: &OwnAnswers,
    base: &Path,
    errs: &mut Errors,
) -> OwnAnswers {
    let hsts = match raw.hsts {
        None => defaults.hsts.clone(),
        Some(v) => hsts(&format!("{key}.hsts"), &v, errs),
    };
    let retry_after = match raw.retry_after {
        None => defaults.retry_after.clone(),
        Some(v) => {
            let d = duration(&format!("{key}.retry_after"), Some(v), Duration::ZERO, errs);
            // Whole seconds, rounded up: `Retry-After` has no fractions
            // (RFC 9110 §10.2.3).
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            (secs > 0).then(|| HeaderValue::from(secs))
        }
    };
    let mut pages = defaults.pages.clone();
    for (status, file) in raw.error_pages.unwrap_or_default() {
        let k = format!("{key}.error_pages.{status}");
        let Some(i) = PAGE_STATUSES.iter().position(|s| s.to_string() == status) else {
            errs.push(&k, "only 404, 502, 503 and 504 can be replaced by a page");
            continue;
        };
        if status == "404" && key != "server" {
            // cutover answers 404 itself only when no app matched.
            errs.push(
                &k,
                "an app's requests never get cutover's own 404: set it in [server.error_pages]",
            );
            continue;
        }
        let path = base.join(&file);
        match std::fs::read(&path) {
            Ok(body) => {
                pages.0[i] = Some(ErrorPage {
                    content_type: page_type(&path),
                    body: body.into(),
                    path,
                })
            }
            Err(e) => errs.push(&k, format!("cannot read {}: {e}", path.display())),
        }
    }
    OwnAnswers {
        redirect_https: raw.redirect_https.unwrap_or(defaults.redirect_https),
        https_port: defaults.https_port,
        hsts,
        retry_after,
        pages,
        allow_connect: defaults.allow_connect,
    }
}

/// `server.upgrades`: protocol names (`Upgrade` tokens) requests may
/// upgrade to. Default `["websocket"]`; `h2c` is refused.
fn upgrades(raw: Option<Vec<String>>, errs: &mut Errors) -> Vec<String> {
    let Some(list) = raw else {
        return vec!["websocket".to_string()];
    };
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

/// A page's `Content-Type`, from its file's extension.
fn page_type(path: &Path) -> HeaderValue {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    HeaderValue::from_static(match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    })
}

/// A `Strict-Transport-Security` value: `max-age=N` first (RFC 6797
/// §6.1.1), then any other directives.
fn hsts(key: &str, v: &str, errs: &mut Errors) -> Option<HeaderValue> {
    let first = v.split(';').next().unwrap_or("").trim();
    let age = first
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("max-age="))
        .map(|_| first[8..].trim_matches('"'));
    if !age.is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit())) {
        errs.push(
            key,
            format!("must start with max-age=SECONDS, like \"max-age=31536000; includeSubDomains\", got {v:?}"),
        );
        return None;
    }
    match HeaderValue::from_str(v.trim()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(key, format!("{v:?} is not a valid header value"));
            None
        }
    }
}

/// `compress`, `compress_types`, `compress_min_length` of `[apps.NAME]`.
/// The last two are checked even while compression is off, so that turning
/// it on cannot reveal an old mistake.
fn compression(
    key: &str,
    on: Option<bool>,
    types: Option<Vec<String>>,
    min_length: Option<i64>,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Compression> {
    let given = types.is_some() || min_length.is_some();
    let types = match types {
        None => Compression::DEFAULT_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect(),
        Some(list) => {
            if list.is_empty() {
                errs.push(
                    &format!("{key}.compress_types"),
                    "an empty list compresses nothing: leave compress = false instead",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, t)| media_range(&format!("{key}.compress_types[{i}]"), t, errs))
                .collect()
        }
    };
    let min_length = int_range(
        &format!("{key}.compress_min_length"),
        min_length,
        Compression::DEFAULT_MIN_LENGTH as i64,
        0,
        i64::MAX,
        errs,
    ) as u64;
    if on == Some(true) {
        Some(Compression { types, min_length })
    } else {
        if given {
            warnings.push(format!(
                "{key}: compress_types and compress_min_length have no effect without compress = true"
            ));
        }
        None
    }
}

/// A media type or range for `compress_types`: `type/subtype`, `type/*` or
/// `*/*`, without parameters; kept lowercase (media types are
/// case-insensitive, RFC 9110 §8.3.1).
fn media_range(key: &str, t: &str, errs: &mut Errors) -> Option<String> {
    let t = t.trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let ok = match t.split_once('/') {
        Some(("*", "*")) => true,
        Some((ty, "*")) => token(ty),
        Some((ty, sub)) => token(ty) && token(sub),
        None => false,
    };
    if ok {
        Some(t)
    } else {
        errs.push(
            key,
            format!("{t:?} is not a media type like \"text/html\" or \"text/*\""),
        );
        None
    }
}

fn pool(
    key: &str,
    raw: Option<RawPool>,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> PoolConfig {
    let Some(raw) = raw else {
        errs.push(key, "missing: every app needs a blue and a green pool");
        return PoolConfig {
            servers: vec![],
            names: vec![],
            balance: Balance::RoundRobin,
            health: None,
            passive: PassiveConfig::default(),
            protocol: Protocol::Http1,
            tls: None,
            proxy_protocol: None,
        };
    };
    if raw.servers.is_empty() {
        errs.push(
            &format!("{key}.servers"),
            "a pool needs at least one server",
        );
    }
    let mut servers: Vec<ServerConfig> = Vec::new();
    let mut names = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        let k = format!("{key}.servers[{i}]");
        let (a, w) = match s {
            RawServerEntry::Addr(a) => (a.as_str(), 1),
            RawServerEntry::Full(f) => (
                f.addr.as_str(),
                int_range(&format!("{k}.weight"), f.weight, 1, 1, 1000, errs),
            ),
        };
        let weight = w as u32;
        if let Ok(addr) = a.parse::<SocketAddr>() {
            if servers.iter().any(|s| s.addr == addr) {
                errs.push(&k, format!("{addr} is listed twice"));
            }
            servers.push(ServerConfig {
                addr,
                weight,
                name: None,
            });
            continue;
        }
        // A host name: every address it resolves to now is a server, and
        // it is resolved again every `server.resolve_interval`. One that
        // does not resolve yet is a warning, not an error: it joins when
        // it does.
        let Some((host, _)) = a
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        else {
            errs.push(
                &k,
                format!("{a:?} is not an address like \"127.0.0.1:8080\" or \"host.example:8080\""),
            );
            continue;
        };
        if names.iter().any(|(n, _): &(String, u32)| n == a) {
            errs.push(&k, format!("{a} is listed twice"));
            continue;
        }
        names.push((a.to_string(), weight));
        match resolve(a) {
            Ok(addrs) => {
                for addr in addrs {
                    if !servers.iter().any(|s| s.addr == addr) {
                        servers.push(ServerConfig {
                            addr,
                            weight,
                            name: Some(a.to_string()),
                        });
                    }
                }
            }
            Err(e) => warnings.push(format!(
                "{k}: host name {host:?} does not resolve now ({e}); it is tried again every server.resolve_interval"
            )),
        }
    }
    let balance = match raw.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_requests") => Balance::LeastRequests,
        Some(o) => {
            errs.push(
                &format!("{key}.balance"),
                format!("must be \"round_robin\" or \"least_requests\", got {o:?}"),
            );
            Balance::RoundRobin
        }
    };
    let protocol = match raw.protocol.as_deref() {
        None | Some("http1") => Protocol::Http1,
        Some("h2") => Protocol::H2,
        Some(o) => {
            errs.push(
                &format!("{key}.protocol"),
                format!("must be \"http1\" or \"h2\", got {o:?}"),
            );
            Protocol::Http1
        }
    };
    let tls = upstream_tls(key, &raw, protocol, base, errs, warnings);
    let health = raw.health.map(|h| {
        let k = format!("{key}.health");
        let path = h.path.unwrap_or_else(|| "/healthz".into());
        if !path.starts_with('/') {
            errs.push(
                &format!("{k}.path"),
                format!("must start with '/', got {path:?}"),
            );
        }
        let interval = positive_duration(
            &format!("{k}.interval"),
            h.interval,
            Duration::from_secs(2),
            errs,
        );
        let timeout = positive_duration(
            &format!("{k}.timeout"),
            h.timeout,
            Duration::from_secs(1),
            errs,
        );
        HealthConfig {
            path,
            interval,
            timeout,
            rise: int_range(&format!("{k}.rise"), h.rise, 2, 1, 100, errs) as u32,
            fall: int_range(&format!("{k}.fall"), h.fall, 3, 1, 100, errs) as u32,
        }
    });
    let passive = match raw.passive {
        None => PassiveConfig::default(),
        Some(p) => {
            let k = format!("{key}.passive");
            let d = PassiveConfig::default();
            PassiveConfig {
                failures: int_range(
                    &format!("{k}.failures"),
                    p.failures,
                    d.failures.into(),
                    0,
                    1000,
                    errs,
                ) as u32,
                cooldown: duration(&format!("{k}.cooldown"), p.cooldown, d.cooldown, errs),
            }
        }
    };
    let proxy_protocol = match &raw.send_proxy_protocol {
        None | Some(RawProxyProtocol::Off(false)) => None,
        Some(RawProxyProtocol::Version(v)) if v == "v1" => Some(ProxyProtocol::V1),
        Some(RawProxyProtocol::Version(v)) if v == "v2" => Some(ProxyProtocol::V2),
        Some(o) => {
            let got = match o {
                RawProxyProtocol::Off(b) => b.to_string(),
                RawProxyProtocol::Version(v) => format!("{v:?}"),
            };
            errs.push(
                &format!("{key}.send_proxy_protocol"),
                format!("must be \"v1\", \"v2\" or false, got {got}"),
            );
            None
        }
    };
    if proxy_protocol.is_some() && protocol == Protocol::H2 {
        // One h2 connection carries every client's requests at once: no
        // one client's address can head it.
        errs.push(
            &format!("{key}.send_proxy_protocol"),
            "is not supported with protocol = \"h2\" (its connection is shared by every client)",
        );
    }
    PoolConfig {
        servers,
        names,
        balance,
        health,
        passive,
        protocol,
        tls,
        proxy_protocol,
    }
}

/// A pool's `tls` keys: the files read and the rustls config built now, so
/// that `check` and a reload refuse what a connection could not use.
fn upstream_tls(
    key: &str,
    raw: &RawPool,
    protocol: Protocol,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<UpstreamTls> {
    if raw.tls != Some(true) {
        let set = [
            ("tls_server_name", raw.tls_server_name.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("tls_cert_file", raw.tls_cert_file.is_some()),
            ("tls_key_file", raw.tls_key_file.is_some()),
            (
                "tls_insecure_skip_verify",
                raw.tls_insecure_skip_verify.is_some(),
            ),
        ];
        for (k, _) in set.iter().filter(|(_, on)| *on) {
            errs.push(&format!("{key}.{k}"), "needs tls = true in the same pool");
        }
        return None;
    }
    let server_name = raw.tls_server_name.as_ref().and_then(|n| {
        let name = ServerName::try_from(n.clone()).ok();
        if name.is_none() {
            errs.push(
                &format!("{key}.tls_server_name"),
                format!("{n:?} is not a host name or an IP address"),
            );
        }
        name
    });
    let client_cert = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(c), Some(k)) => Some(CertPaths {
            cert: base.join(c),
            key: base.join(k),
        }),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                &format!("{key}.tls_cert_file"),
                "needs tls_key_file too (a client certificate needs its key)",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                &format!("{key}.tls_key_file"),
                "needs tls_cert_file too (a client key needs its certificate)",
            );
            None
        }
    };
    let ca_file = raw.ca_file.as_ref().map(|f| base.join(f));
    let insecure_skip_verify = raw.tls_insecure_skip_verify.unwrap_or(false);
    if insecure_skip_verify {
        warnings.push(format!(
            "{key}.tls_insecure_skip_verify: the servers' certificates are not verified; anyone between cutover and them can read and change the traffic"
        ));
    }
    match super::upstream_tls::client_config(
        protocol,
        ca_file.as_deref(),
        client_cert.as_ref(),
        insecure_skip_verify,
    ) {
        Ok((client, contents)) => Some(UpstreamTls {
            server_name,
            ca_file,
            client_cert,
            insecure_skip_verify,
            contents: contents.into(),
            client,
        }),
        Err((k, msg)) => {
            errs.push(&format!("{key}.{k}"), msg);
            None
        }
    }
}

/// Validates and compiles an app's rules; `app_key` is `apps.NAME`.
/// Used for the config, the state file and `PUT /v1/apps/{app}/rules` alike.
pub fn compile_rules(app_key: &str, specs: &[RuleSpec]) -> Result<Vec<Rule>, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let mut out = Vec::with_capacity(specs.len());
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = format!("{app_key}.rules[{i}]");
        if spec.name.is_empty() {
            errs.push(&format!("{key}.name"), "must not be empty");
        } else if let Some(j) = names.insert(&spec.name, i) {
            errs.push(
                &format!("{key}.name"),
                format!("{:?} is already the name of rules[{j}]", spec.name),
            );
        }
        match Rule::compile(spec) {
            Ok(rule) => out.push(rule),
            Err(list) => {
                for (field, msg) in list {
                    errs.push(&format!("{key}.{field}"), msg);
                }
            }
        }
    }
    if errs.0.is_empty() {
        Ok(out)
    } else {
        Err(errs.0)
    }
}

fn check_overlaps(apps: &[AppConfig], errs: &mut Errors) {
    let mut seen: HashMap<(Option<&HostPattern>, &str), &str> = HashMap::new();
    for app in apps {
        let hosts: Vec<Option<&HostPattern>> = if app.hosts.is_empty() {
            vec![None]
        } else {
            app.hosts.iter().map(Some).collect()
        };
        for h in hosts {
            if let Some(other) = seen.insert((h, app.path_prefix.as_str()), &app.name) {
                let what = h
                    .map(|h| format!("host {h}"))
                    .unwrap_or_else(|| "the catch-all (no hosts)".into());
                errs.push(
                    &format!("apps.{}", app.name),
                    format!(
                        "{what} with path_prefix {:?} is already served by apps.{other}",
                        app.path_prefix
                    ),
                );
            }
        }
    }
}

fn host_pattern(key: &str, h: &str, errs: &mut Errors) -> Option<HostPattern> {
    let lower = h.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, lower),
    };
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        errs.push(
            key,
            format!("{h:?} is not a host name or a \"*.\" wildcard"),
        );
        return None;
    }
    Some(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

fn sticky(key: &str, s: &str, errs: &mut Errors) -> Sticky {
    if let Some(name) = s.strip_prefix("cookie:") {
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Sticky::Cookie(name.to_string());
        }
    } else if let Some(name) = s.strip_prefix("header:") {
        if let Ok(h) = http::HeaderName::from_bytes(name.as_bytes()) {
            return Sticky::Header(h);
        }
    } else if s == "ip" {
        return Sticky::Ip;
    } else if s == "none" {
        return Sticky::None;
    }
    errs.push(
        key,
        format!("must be \"cookie:NAME\", \"header:NAME\", \"ip\" or \"none\", got {s:?}"),
    );
    Sticky::None
}

fn color(key: &str, s: &str, errs: &mut Errors) -> Color {
    Color::parse(s).unwrap_or_else(|| {
        errs.push(key, format!("must be \"blue\" or \"green\", got {s:?}"));
        Color::Blue
    })
}

fn percent(key: &str, p: f64, errs: &mut Errors) {
    if !(0.0..=100.0).contains(&p) {
        errs.push(key, format!("must be between 0 and 100, got {p}"));
    }
}

/// The longest any duration key may be. Longer is a typo, or a way of
/// saying "never" that a deadline (`Instant` + it) cannot be computed
/// from; no timeout or period of a proxy needs more.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A duration key where `0s` has a meaning of its own (the key's doc says
/// which): from 0 to [`MAX_DURATION`].
fn duration(key: &str, s: Option<String>, default: Duration, errs: &mut Errors) -> Duration {
    bounded_duration(key, s, default, true, errs)
}

/// A timeout or a period, which `0s` cannot work as (every request would
/// time out, a timer would spin): above 0, at most [`MAX_DURATION`].
fn positive_duration(
    key: &str,
    s: Option<String>,
    default: Duration,
    errs: &mut Errors,
) -> Duration {
    bounded_duration(key, s, default, false, errs)
}

fn bounded_duration(
    key: &str,
    s: Option<String>,
    default: Duration,
    zero_allowed: bool,
    errs: &mut Errors,
) -> Duration {
    let Some(s) = s else { return default };
    match humantime::parse_duration(&s) {
        Ok(d) if d.is_zero() && !zero_allowed => {
            errs.push(key, format!("must be longer than 0s, got {s:?}"));
            default
        }
        Ok(d) if d > MAX_DURATION => {
            errs.push(key, format!("must be at most 1 day (\"24h\"), got {s:?}"));
            default
        }
        Ok(d) => d,
        Err(e) => {
            errs.push(
                key,
                format!("{s:?} is not a duration like \"250ms\", \"2s\" or \"5m\" ({e})"),
            );
            default
        }
    }
}

fn int_range(
    key: &str,
    v: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
    errs: &mut Errors,
) -> i64 {
    match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => v,
        Some(v) => {
            errs.push(key, format!("must be between {min} and {max}, got {v}"));
            default
        }
    }
}

fn addrs(key: &str, list: Vec<String>, errs: &mut Errors) -> Vec<SocketAddr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, a)| addr(&format!("{key}[{i}]"), a, errs))
        .collect()
}

/// Every address `host:port` resolves to, in order, without repeats.
pub fn resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in host_port.to_socket_addrs()? {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::other("no address"));
    }
    Ok(out)
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

/// `IP:PORT`, or `HOST:PORT` resolved once, now (as nginx does at start).
fn addr(key: &str, s: &str, errs: &mut Errors) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let Some((host, _)) = s
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    else {
        errs.push(
            key,
            format!("{s:?} is not an address like \"127.0.0.1:8080\" or \"host.example:8080\""),
        );
        return None;
    };
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        Ok(None) => {
            errs.push(key, format!("host name {host:?} resolves to no address"));
            None
        }
        Err(e) => {
            errs.push(key, format!("host name {host:?} does not resolve: {e}"));
            None
        }
    }
}

/// Reading a config is validating it.
impl Config {
    /// Read and validate a config file. Errors come back all at once.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        parse_config(&text, Some(path))
    }

    /// Parse a config from a string; relative paths resolve against the
    /// current directory.
    pub fn from_toml(text: &str) -> Result<Config, Vec<String>> {
        parse_config(text, None)
    }
}

#[cfg(test)]
mod tests {
    use super::line_of;
    use crate::config::Config;

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

    /// Timeouts and periods: `0s` would time every request out or spin a
    /// timer.
    const NEVER_ZERO: [&str; 15] = [
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
                errors.iter().any(|e| e.starts_with(&want)),
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
                    errors.iter().any(|e| e.starts_with(&format!("{key}: "))),
                    "{key} = {long:?}: {errors:?}"
                );
            }
            let errors = Config::from_toml(&with_duration(key, "25h")).unwrap_err();
            let want = format!("{key}: must be at most 1 day (\"24h\"), got \"25h\"");
            assert!(
                errors.iter().any(|e| e.starts_with(&want)),
                "{want:?} in {errors:?}"
            );
            assert!(
                Config::from_toml(&with_duration(key, "24h")).is_ok(),
                "{key}"
            );
        }
    }

    const TEXT: &str = "[server]\nworkers = 2\n\n[apps.shop]\nlive = \"red\"\n[apps.shop.blue]\nservers = []\n[[apps.shop.rules]]\nname = \"a\"\n[[apps.shop.rules]]\nname = \"b\"\npercent = 150\n";

    #[test]
    fn errors_point_at_their_line() {
        assert_eq!(line_of(TEXT, "server.workers"), Some(2));
        assert_eq!(line_of(TEXT, "apps.shop.live"), Some(5));
        assert_eq!(line_of(TEXT, "apps.shop.blue.servers"), Some(7));
        assert_eq!(line_of(TEXT, "apps.shop.rules[1].percent"), Some(12));
        assert_eq!(line_of(TEXT, "apps.shop.rules[0].to"), Some(8));
        assert_eq!(line_of(TEXT, "apps.shop"), Some(4));
        assert_eq!(line_of(TEXT, "limits.max_body_bytes"), None);
    }
}
