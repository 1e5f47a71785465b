//! `[state]`: where the runtime state lives — a file (the default), or
//! etcd shared by a fleet of instances, with the file as the local copy.

use std::path::Path;
use std::time::Duration;

use super::error::Errors;
use super::raw::RawState;
use super::types::{EtcdSettings, Secret, StateSettings};
use super::values::positive_duration;

/// How long one call to etcd may take unless `timeout` says otherwise.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

pub fn state_settings(raw: RawState, base: &Path, errs: &mut Errors) -> StateSettings {
    let file = raw.file.as_ref().map(|f| base.join(f));
    let etcd = match raw.backend.as_deref() {
        None | Some("file") => {
            only_with_etcd(&raw, errs);
            None
        }
        Some("etcd") => Some(etcd_settings(raw, base, errs)),
        Some(other) => {
            errs.push(
                "state.backend",
                format!("{other:?} is not a backend: \"file\" or \"etcd\""),
            );
            None
        }
    };
    StateSettings { file, etcd }
}

/// The etcd keys given without `backend = "etcd"`: each an error, since
/// the operator meant a fleet and would get a lone instance.
fn only_with_etcd(raw: &RawState, errs: &mut Errors) {
    let given = [
        ("endpoints", raw.endpoints.is_some()),
        ("cluster", raw.cluster.is_some()),
        ("instance", raw.instance.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("cert_file", raw.cert_file.is_some()),
        ("key_file", raw.key_file.is_some()),
        ("user", raw.user.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("password_env", raw.password_env.is_some()),
    ];
    for (key, _) in given.iter().filter(|(_, given)| *given) {
        errs.push(format!("state.{key}"), "only with backend = \"etcd\"");
    }
}

fn etcd_settings(raw: RawState, base: &Path, errs: &mut Errors) -> EtcdSettings {
    let endpoints = raw.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        errs.push(
            "state.endpoints",
            "missing: etcd's client addresses, like [\"http://127.0.0.1:2379\"]",
        );
    }
    for e in &endpoints {
        if let Err(why) = endpoint(e) {
            errs.push("state.endpoints", format!("{e:?}: {why}"));
        }
    }
    let cluster = match raw.cluster {
        Some(c) => name("state.cluster", c, errs),
        None => {
            errs.push(
                "state.cluster",
                "missing: the fleet's name (instances with the same one share their state)",
            );
            String::new()
        }
    };
    let client_cert = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
        (None, None) => None,
        (Some(_), None) => {
            errs.push("state.key_file", "missing: cert_file needs its key");
            None
        }
        (None, Some(_)) => {
            errs.push("state.cert_file", "missing: key_file needs its certificate");
            None
        }
    };
    let tls = raw.ca_file.is_some() || client_cert.is_some();
    if tls && endpoints.iter().any(|e| e.starts_with("http://")) {
        errs.push(
            "state.endpoints",
            "ca_file, cert_file and key_file are for https:// endpoints",
        );
    }
    EtcdSettings {
        endpoints,
        cluster,
        instance: raw.instance.map(|i| name("state.instance", i, errs)),
        timeout: raw.timeout.map_or(ETCD_TIMEOUT, |t| {
            positive_duration("state.timeout", &t, errs)
        }),
        ca_file: raw.ca_file.map(|f| base.join(f)),
        client_cert,
        user: user(raw.user, raw.password_file, raw.password_env, base, errs),
    }
}

/// An endpoint as the etcd client takes it: `http(s)://host:port`.
fn endpoint(e: &str) -> Result<(), &'static str> {
    let uri: http::Uri = e
        .parse()
        .map_err(|_| "not an address like \"http://127.0.0.1:2379\"")?;
    match (uri.scheme_str(), uri.port_u16(), uri.path()) {
        (Some("http" | "https"), Some(_), "" | "/") => Ok(()),
        (Some("http" | "https"), None, _) => Err("needs a port, like \"http://127.0.0.1:2379\""),
        (Some("http" | "https"), _, _) => Err("takes no path"),
        _ => Err("needs http:// or https://, like \"http://127.0.0.1:2379\""),
    }
}

/// A cluster or instance name: it is part of etcd keys, so letters,
/// digits, `-`, `_` and `.`, at most 64.
fn name(key: &str, n: String, errs: &mut Errors) -> String {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        errs.push(
            key,
            format!("{n:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    n
}

/// etcd's user and password (from a file or the environment).
fn user(
    user: Option<String>,
    file: Option<String>,
    env: Option<String>,
    base: &Path,
    errs: &mut Errors,
) -> Option<(String, Secret)> {
    let password = match (&file, &env) {
        (Some(_), Some(_)) => {
            errs.push(
                "state.password_file",
                "give password_file or password_env, not both",
            );
            return None;
        }
        (Some(f), None) => {
            let path = base.join(f);
            match std::fs::read_to_string(&path) {
                Ok(p) => Some(p.trim().to_string()),
                Err(e) => {
                    errs.push(
                        "state.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
            }
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(p) => Some(p.trim().to_string()),
            Err(_) => {
                errs.push(
                    "state.password_env",
                    format!("environment variable {var} is not set"),
                );
                return None;
            }
        },
        (None, None) => None,
    };
    match (user, password) {
        (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Some((u, Secret::new(p))),
        (None, None) => None,
        (Some(_), _) => {
            errs.push(
                "state.user",
                "needs a non-empty password (password_file or password_env)",
            );
            None
        }
        (None, Some(_)) => {
            errs.push("state.user", "missing: a password needs its user");
            None
        }
    }
}
