//! Configuration in two layers: [`raw`] mirrors the TOML through serde,
//! with every default and the unknown keys it collects; [`validate`] turns
//! it into the typed [`Config`] (`types.rs`) — with `app`, `pool` and
//! `admin` for those tables, `app_edits` for an app's own limits, header
//! rules and path rewriting (typed in [`edits`]), and `values` for single
//! values — or into every
//! [`ConfigError`] found, each naming its key path and line (`error.rs`).
//! A rule is compiled by [`rule`]. The children import from
//! [`crate::model`] and from each other, never from this file, which only
//! re-exports them.
//!
//! After validation invalid states are unrepresentable: addresses are
//! `SocketAddr`s, durations `Duration`s, regexes compiled, CIDRs parsed.
//! Servers given by host name stay names ([`PoolConfig::names`]): no DNS
//! is asked while a config is validated; the daemon resolves them
//! (`control::resolve`).

mod access;
mod acme;
mod admin;
mod app;
mod app_edits;
pub mod certs;
pub mod edits;
mod error;
pub mod json_path;
mod pool;
pub mod raw;
pub mod rule;
mod state;
mod types;
pub(crate) mod upstream_tls;
mod validate;
mod values;

pub use crate::model::{Color, NameValue, RuleSpec};
pub use app::compile_rules;
pub use edits::{AppLimits, HeaderRules, PathRewrite, RequestLimits};
pub use error::{ConfigError, ConfigErrors};
pub use json_path::JsonPath;
pub use rule::Rule;
pub use types::*;
pub use validate::parse_config;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn resolved_names_replace_only_their_own_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let server = |addr: &str, name: Option<&str>| ServerConfig {
            addr: a(addr),
            weight: 2,
            name: name.map(str::to_string),
        };
        let pool = PoolConfig {
            servers: vec![
                server("10.0.0.1:80", None),
                server("10.0.0.2:80", Some("api.test:80")),
            ],
            names: ["api.test:80", "down.test:80"]
                .iter()
                .enumerate()
                .map(|(i, n)| NamedServer {
                    name: n.to_string(),
                    weight: 2,
                    key: format!("apps.a.blue.servers[{}]", i + 1),
                })
                .collect(),
            balance: Balance::RoundRobin,
            health: None,
            passive: PassiveConfig::default(),
            protocol: Protocol::Http1,
            tls: None,
            proxy_protocol: None,
        };
        let mut resolved = std::collections::HashMap::new();
        resolved.insert(
            "api.test:80".to_string(),
            vec![a("10.0.0.3:80"), a("10.0.0.4:80")],
        );
        resolved.insert("down.test:80".to_string(), vec![a("10.0.0.5:80")]);
        let next = pool.with_resolved(&resolved);
        let addrs: Vec<String> = next.servers.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"]
        );
        assert!(next.servers[1..].iter().all(|s| s.weight == 2));
        // A name that did not resolve keeps what it had.
        let kept = pool.with_resolved(&std::collections::HashMap::new());
        assert_eq!(kept.servers, pool.servers);
    }

    #[test]
    fn a_tls_server_is_verified_as_its_host_name_or_its_ip_address() {
        let text = |name: &str| {
            format!("[apps.a.blue]\nservers = [\"127.0.0.1:1\"]\ntls = true\n{name}\n[apps.a.green]\nservers = [\"127.0.0.1:2\"]\n")
        };
        let tls = |t: &str| {
            Config::from_toml(t).unwrap().apps[0].pools[0]
                .tls
                .clone()
                .unwrap()
        };
        let server = |addr: &str, name: Option<&str>| ServerConfig {
            addr: addr.parse().unwrap(),
            weight: 1,
            name: name.map(str::to_string),
        };
        let dns = |n: &str| rustls_pki_types::ServerName::try_from(n.to_string()).unwrap();
        let by_name = tls(&text(""));
        assert_eq!(
            by_name.name_for(&server("10.0.0.1:443", Some("api.test:443"))),
            dns("api.test")
        );
        assert_eq!(
            by_name.name_for(&server("10.0.0.1:443", None)),
            dns("10.0.0.1")
        );
        let fixed = tls(&text("tls_server_name = \"internal.test\""));
        assert_eq!(
            fixed.name_for(&server("10.0.0.1:443", Some("api.test:443"))),
            dns("internal.test")
        );
        // The same files and keys: equal, so a reload keeps the pool.
        assert_eq!(tls(&text("")), by_name);
    }
}
