//! The TOML file as serde sees it: every section and key of the config, with
//! unknown keys rejected. Nothing here is checked beyond its TOML type;
//! [`super::validate`] turns these into typed values or a list of errors.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::RuleSpec;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub apps: BTreeMap<String, RawApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub listen_tls: Option<Vec<String>>,
    pub workers: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub color_header: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    pub resolve_interval: Option<String>,
    pub upgrade_timeout: Option<String>,
    pub proxy_protocol: Option<RawAcceptProxy>,
    pub request_id: Option<String>,
    pub request_id_header: Option<String>,
    pub redirect_https: Option<bool>,
    pub https_port: Option<i64>,
    pub hsts: Option<String>,
    pub retry_after: Option<String>,
    pub upgrades: Option<Vec<String>>,
    /// `[server.error_pages]`: status → file.
    pub error_pages: Option<BTreeMap<String, String>>,
}

/// `proxy_protocol = true` (every listener) or a list of listen addresses.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAcceptProxy {
    All(bool),
    Only(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<String>,
    pub access_format: Option<String>,
    pub access_query: Option<bool>,
    pub access_buffer: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub client_header_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub client_send_timeout: Option<String>,
    pub upstream_read_timeout: Option<String>,
    pub tunnel_idle_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_response_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub upstream_max_lifetime: Option<String>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certs: Vec<RawCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    /// `[[admin.tokens]]`: named tokens, each with a role.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    pub hosts: Option<Vec<String>>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub upgrade_binary: Option<String>,
    pub allow_local_binary: Option<bool>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
}

/// One `[[admin.tokens]]` entry. Every key is optional here so that a
/// missing one is reported by [`super::validate`] with its key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: Option<String>,
    pub role: Option<String>,
    pub file: Option<String>,
    pub env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub hosts: Option<Vec<String>>,
    pub path_prefix: Option<String>,
    pub live: Option<String>,
    pub standby_percent: Option<f64>,
    pub sticky: Option<String>,
    pub drain_timeout: Option<String>,
    pub compress: Option<bool>,
    pub compress_types: Option<Vec<String>>,
    pub compress_min_length: Option<i64>,
    pub blue: Option<RawPool>,
    pub green: Option<RawPool>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    pub redirect_https: Option<bool>,
    pub hsts: Option<String>,
    pub retry_after: Option<String>,
    pub allow_connect: Option<bool>,
    /// `[apps.NAME.error_pages]`: status → file.
    pub error_pages: Option<BTreeMap<String, String>>,
    /// `[apps.NAME.mirror]`: shadow traffic to the standby colour.
    pub mirror: Option<RawMirror>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub percent: Option<f64>,
    pub methods: Option<Vec<String>>,
    pub max_body: Option<i64>,
    pub compare: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub max_in_flight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub servers: Vec<RawServerEntry>,
    pub balance: Option<String>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub protocol: Option<String>,
    pub tls: Option<bool>,
    pub tls_server_name: Option<String>,
    pub ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_insecure_skip_verify: Option<bool>,
    pub send_proxy_protocol: Option<RawProxyProtocol>,
}

/// `send_proxy_protocol = "v1"`, `"v2"` or `false`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawProxyProtocol {
    Off(bool),
    Version(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub failures: Option<i64>,
    pub cooldown: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawServerEntry {
    Addr(String),
    Full(RawServerFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerFull {
    pub addr: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}
