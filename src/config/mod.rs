//! Configuration in two layers: [`raw`] mirrors the TOML with
//! unknown keys rejected; [`validate`] turns it into the typed [`Config`]
//! (`types.rs`), or into every error found, each naming its key; a rule
//! is compiled by [`rule`]. The children import from [`crate::model`] and
//! from each other, never from this file, which only re-exports them.
//!
//! After validation invalid states are unrepresentable: addresses are
//! `SocketAddr`s, durations `Duration`s, regexes compiled, CIDRs parsed.

pub mod certs;
pub mod raw;
pub mod rule;
mod types;
mod upstream_tls;
mod validate;

pub use crate::model::{Color, NameValue, RuleSpec};
pub use rule::Rule;
pub use types::*;
pub use validate::{compile_rules, parse_config};

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
            names: vec![("api.test:80".into(), 2), ("down.test:80".into(), 2)],
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
}
