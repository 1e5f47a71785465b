//! `[apps.NAME.blue]` and `[apps.NAME.green]`: a pool's servers, balance,
//! health checks and the TLS and PROXY protocol it speaks to them.
//! Servers given by host name stay names here: they are resolved where
//! the daemon starts and on its resolve interval (`control::resolve`),
//! never while a config is validated.

use std::net::SocketAddr;
use std::path::Path;

use rustls_pki_types::ServerName;

use super::error::Errors;
use super::raw::{RawHealth, RawPassive, RawPool, RawProxyProtocol, RawServerEntry};
use super::types::*;
use super::values::{duration, int_range, one_of, positive_duration};

/// A pool, or (when its table is missing, an error) an empty one.
pub fn pool(
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
    let (servers, names) = servers(key, &raw.servers, errs);
    let balance = one_of(
        &format!("{key}.balance"),
        &raw.balance,
        &[
            ("round_robin", Balance::RoundRobin),
            ("least_requests", Balance::LeastRequests),
        ],
        errs,
    );
    let protocol = one_of(
        &format!("{key}.protocol"),
        &raw.protocol,
        &[("http1", Protocol::Http1), ("h2", Protocol::H2)],
        errs,
    );
    let tls = upstream_tls(key, &raw, protocol, base, errs, warnings);
    let proxy_protocol = send_proxy_protocol(key, &raw.send_proxy_protocol, protocol, errs);
    PoolConfig {
        servers,
        names,
        balance,
        health: raw
            .health
            .map(|h| health(&format!("{key}.health"), h, errs)),
        passive: passive(&format!("{key}.passive"), raw.passive, errs),
        protocol,
        tls,
        proxy_protocol,
    }
}

/// The servers given by address, and those given by host name (resolved
/// later, each again every `server.resolve_interval`).
fn servers(
    key: &str,
    entries: &[RawServerEntry],
    errs: &mut Errors,
) -> (Vec<ServerConfig>, Vec<NamedServer>) {
    if entries.is_empty() {
        errs.push(format!("{key}.servers"), "a pool needs at least one server");
    }
    let mut servers: Vec<ServerConfig> = Vec::new();
    let mut names: Vec<NamedServer> = Vec::new();
    for (i, s) in entries.iter().enumerate() {
        let k = format!("{key}.servers[{i}]");
        let (a, w) = match s {
            RawServerEntry::Addr(a) => (a.as_str(), 1),
            RawServerEntry::Full(f) => (
                f.addr.as_str(),
                int_range(&format!("{k}.weight"), f.weight, 1, 1000, errs),
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
        } else if a
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            errs.push(
                &k,
                format!("{a:?} is not an address like \"127.0.0.1:8080\" or \"host.example:8080\""),
            );
        } else if names.iter().any(|n| n.name == a) {
            errs.push(&k, format!("{a} is listed twice"));
        } else {
            names.push(NamedServer {
                name: a.to_string(),
                weight,
                key: k,
            });
        }
    }
    (servers, names)
}

fn health(k: &str, h: RawHealth, errs: &mut Errors) -> HealthConfig {
    if !h.path.starts_with('/') {
        errs.push(
            format!("{k}.path"),
            format!("must start with '/', got {:?}", h.path),
        );
    }
    HealthConfig {
        interval: positive_duration(&format!("{k}.interval"), &h.interval, errs),
        timeout: positive_duration(&format!("{k}.timeout"), &h.timeout, errs),
        rise: int_range(&format!("{k}.rise"), h.rise, 1, 100, errs) as u32,
        fall: int_range(&format!("{k}.fall"), h.fall, 1, 100, errs) as u32,
        path: h.path,
    }
}

fn passive(k: &str, p: RawPassive, errs: &mut Errors) -> PassiveConfig {
    PassiveConfig {
        failures: int_range(&format!("{k}.failures"), p.failures, 0, 1000, errs) as u32,
        cooldown: duration(&format!("{k}.cooldown"), &p.cooldown, errs),
    }
}

/// `send_proxy_protocol`: `"v1"`, `"v2"` or `false`, never with h2.
fn send_proxy_protocol(
    key: &str,
    raw: &RawProxyProtocol,
    protocol: Protocol,
    errs: &mut Errors,
) -> Option<ProxyProtocol> {
    let k = format!("{key}.send_proxy_protocol");
    let version = match raw {
        RawProxyProtocol::Off(false) => None,
        RawProxyProtocol::Version(v) if v == "v1" => Some(ProxyProtocol::V1),
        RawProxyProtocol::Version(v) if v == "v2" => Some(ProxyProtocol::V2),
        o => {
            let got = match o {
                RawProxyProtocol::Off(b) => b.to_string(),
                RawProxyProtocol::Version(v) => format!("{v:?}"),
            };
            errs.push(&k, format!("must be \"v1\", \"v2\" or false, got {got}"));
            None
        }
    };
    if version.is_some() && protocol == Protocol::H2 {
        // One h2 connection carries every client's requests at once: no
        // one client's address can head it.
        errs.push(
            &k,
            "is not supported with protocol = \"h2\" (its connection is shared by every client)",
        );
    }
    version
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
    if !raw.tls {
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
            errs.push(format!("{key}.{k}"), "needs tls = true in the same pool");
        }
        return None;
    }
    let server_name = raw.tls_server_name.as_ref().and_then(|n| {
        let name = ServerName::try_from(n.clone()).ok();
        if name.is_none() {
            errs.push(
                format!("{key}.tls_server_name"),
                format!("{n:?} is not a host name or an IP address"),
            );
        }
        name
    });
    let client_cert = client_cert(key, raw, base, errs);
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
            errs.push(format!("{key}.{k}"), msg);
            None
        }
    }
}

/// `tls_cert_file` and `tls_key_file`: both or neither.
fn client_cert(key: &str, raw: &RawPool, base: &Path, errs: &mut Errors) -> Option<CertPaths> {
    match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(c), Some(k)) => Some(CertPaths {
            cert: base.join(c),
            key: base.join(k),
        }),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                format!("{key}.tls_cert_file"),
                "needs tls_key_file too (a client certificate needs its key)",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                format!("{key}.tls_key_file"),
                "needs tls_cert_file too (a client key needs its certificate)",
            );
            None
        }
    }
}
