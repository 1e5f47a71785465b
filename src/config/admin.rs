//! `[admin]`: the admin API's listener, its bearer tokens (each secret
//! read now, so that `check` and a reload catch what `run` would), the
//! names it answers to and its own TLS.

use std::net::SocketAddr;
use std::path::Path;

use super::certs::PairFile;
use super::error::Errors;
use super::raw::{RawAdmin, RawToken};
use super::types::*;
use super::values::{int_range, listen_addr, positive_duration};

pub fn admin(
    raw: RawAdmin,
    base: &Path,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> AdminSettings {
    // When it is wrong (an error already), a loopback stand-in: no
    // second error about tokens follows from it.
    let listen = listen_addr("admin.listen", &raw.listen, errs)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
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
        .iter()
        .enumerate()
        .filter_map(|(i, h)| admin_host(&format!("admin.hosts[{i}]"), h, errs))
        .collect();
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
        header_timeout: positive_duration("admin.header_timeout", &raw.header_timeout, errs),
        idle_timeout: positive_duration("admin.idle_timeout", &raw.idle_timeout, errs),
        max_connections: int_range(
            "admin.max_connections",
            raw.max_connections,
            1,
            1_000_000,
            errs,
        ) as usize,
        upgrade_binary,
        allow_local_binary: raw.allow_local_binary,
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
            for e in list {
                let k = match e.file {
                    PairFile::Cert => "admin.tls_cert_file",
                    PairFile::Key => "admin.tls_key_file",
                };
                errs.push(k, e.message);
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
    // Every name given so far, with where: a clash names both.
    let mut names: Vec<(String, String)> = Vec::new();
    if let Some((key, source)) = legacy_token(token_file, token_env, base, errs) {
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
        let name = token_name(&key, t.name, &mut names, errs);
        let role = token_role(&key, t.role.as_deref(), errs);
        let Some((source_key, source)) = token_source(&key, t.file, t.env, base, errs) else {
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
    secrets_unique(&tokens, errs);
    tokens
}

/// `token_file` or `token_env`: the operate token `default`.
fn legacy_token(
    token_file: Option<String>,
    token_env: Option<String>,
    base: &Path,
    errs: &mut Errors,
) -> Option<(&'static str, TokenSource)> {
    match (token_file, token_env) {
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
    }
}

/// A token's `name`: well-formed, not reserved, not taken (`names` holds
/// those given so far, with where).
fn token_name(
    key: &str,
    name: Option<String>,
    names: &mut Vec<(String, String)>,
    errs: &mut Errors,
) -> Option<String> {
    let k = format!("{key}.name");
    let Some(n) = name else {
        errs.push(k, "missing (a name like \"ci\" or \"prometheus\", recorded in the history as who made a change)");
        return None;
    };
    let well_formed = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !well_formed {
        errs.push(
            k,
            format!("{n:?}: a token name is 1 to 64 letters, digits, '_', '.' or '-'"),
        );
        return None;
    }
    if RESERVED_TOKEN_NAMES.contains(&n.as_str()) {
        errs.push(
            k,
            format!("{n:?} is reserved: the history uses it for changes made without a token"),
        );
        return None;
    }
    if let Some((_, other)) = names.iter().find(|(o, _)| *o == n) {
        errs.push(
            k,
            format!("{n:?} is already the name of {other}: token names must be unique"),
        );
        return None;
    }
    names.push((n.clone(), key.to_string()));
    Some(n)
}

fn token_role(key: &str, role: Option<&str>, errs: &mut Errors) -> Option<Role> {
    let k = format!("{key}.role");
    match role {
        Some("read") => Some(Role::Read),
        Some("operate") => Some(Role::Operate),
        Some(other) => {
            errs.push(k, format!("must be \"read\" or \"operate\", got {other:?}"));
            None
        }
        None => {
            errs.push(k, "missing: \"read\" (status, history, metrics: every GET) or \"operate\" (changes too)");
            None
        }
    }
}

/// A token's `file` or `env`, with the key it was given under.
fn token_source(
    key: &str,
    file: Option<String>,
    env: Option<String>,
    base: &Path,
    errs: &mut Errors,
) -> Option<(String, TokenSource)> {
    match (file, env) {
        (Some(_), Some(_)) => {
            errs.push(key, "give file or env, not both");
            None
        }
        (None, None) => {
            errs.push(key, "give file or env: where the token's secret is");
            None
        }
        (Some(f), None) if f.is_empty() => {
            errs.push(format!("{key}.file"), "must name a file");
            None
        }
        (Some(f), None) => Some((format!("{key}.file"), TokenSource::File(base.join(f)))),
        (None, Some(e)) if e.is_empty() => {
            errs.push(format!("{key}.env"), "must name an environment variable");
            None
        }
        (None, Some(e)) => Some((format!("{key}.env"), TokenSource::Env(e))),
    }
}

/// One secret, one name: otherwise the history could not tell which
/// token made a change.
fn secrets_unique(tokens: &[AdminToken], errs: &mut Errors) {
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
