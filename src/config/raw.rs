//! The TOML file as serde sees it: every section and key of the config,
//! each key's default in this file's `Default` impls (the one place it is
//! written), durations parsed by humantime. Nothing here is checked beyond
//! its TOML type; [`super::validate`] turns these into typed values or a
//! list of errors. Unknown keys are not refused here but collected by
//! [`parse`], so that one run reports all of them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::error::{key_of, ConfigError, Segment};
use super::types::{AdminSettings, MirrorConfig, PassiveConfig};
use crate::model::{RateLimitSpec, RuleSpec};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub server: RawServer,
    pub limits: RawLimits,
    pub tls: RawTls,
    pub admin: RawAdmin,
    pub state: RawState,
    pub log: RawLog,
    pub apps: BTreeMap<String, RawApp>,
}

/// A duration as written (`"250ms"`, `"2s"`, `"5m"`) and what humantime
/// makes of it. Text that is no duration is kept as the parser's reason,
/// not refused here, so that validation reports it with every other error
/// of the file; the text is kept for messages about its range.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDuration {
    pub text: String,
    pub value: Result<Duration, String>,
}

impl From<Duration> for RawDuration {
    fn from(value: Duration) -> RawDuration {
        RawDuration {
            text: humantime::format_duration(value).to_string(),
            value: Ok(value),
        }
    }
}

fn secs(n: u64) -> RawDuration {
    Duration::from_secs(n).into()
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawDuration, D::Error> {
        let text = String::deserialize(d)?;
        let value = humantime::parse_duration(&text).map_err(|e| e.to_string());
        Ok(RawDuration { text, value })
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawServer {
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
    pub workers: i64,
    pub shutdown_timeout: RawDuration,
    pub color_header: bool,
    pub trusted_proxies: Vec<String>,
    pub resolve_interval: RawDuration,
    pub upgrade_timeout: RawDuration,
    pub proxy_protocol: RawAcceptProxy,
    pub request_id: String,
    pub request_id_header: String,
    pub redirect_https: bool,
    /// No default of its own: the first `listen_tls` port, else 443.
    pub https_port: Option<i64>,
    pub hsts: Option<String>,
    pub retry_after: RawDuration,
    pub upgrades: Vec<String>,
    /// `[server.error_pages]`: status → file.
    pub error_pages: BTreeMap<String, String>,
    /// Every app's header rules, unless it has its own.
    pub request_headers: Option<RawHeaderRules>,
    pub response_headers: Option<RawHeaderRules>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: vec!["0.0.0.0:8080".into()],
            listen_tls: vec![],
            workers: 0,
            shutdown_timeout: secs(30),
            color_header: false,
            trusted_proxies: vec![],
            resolve_interval: secs(30),
            upgrade_timeout: secs(30),
            proxy_protocol: RawAcceptProxy::All(false),
            request_id: "keep".into(),
            request_id_header: "x-request-id".into(),
            redirect_https: false,
            https_port: None,
            hsts: None,
            retry_after: secs(5),
            upgrades: vec!["websocket".into()],
            error_pages: BTreeMap::new(),
            request_headers: None,
            response_headers: None,
        }
    }
}

/// `proxy_protocol = true` (every listener) or a list of listen addresses.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAcceptProxy {
    All(bool),
    Only(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawLog {
    pub access: String,
    pub access_format: String,
    pub access_query: bool,
    pub access_buffer: i64,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            access: "off".into(),
            access_format: "json".into(),
            access_query: false,
            access_buffer: 8192,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawLimits {
    pub max_header_bytes: i64,
    pub max_body_bytes: i64,
    pub client_header_timeout: RawDuration,
    pub client_idle_timeout: RawDuration,
    pub client_body_timeout: RawDuration,
    pub client_send_timeout: RawDuration,
    pub upstream_read_timeout: RawDuration,
    pub tunnel_idle_timeout: RawDuration,
    pub upstream_connect_timeout: RawDuration,
    pub upstream_response_timeout: RawDuration,
    pub upstream_idle_timeout: RawDuration,
    pub upstream_max_lifetime: RawDuration,
    pub max_connections: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_header_bytes: 65536,
            max_body_bytes: 0,
            client_header_timeout: secs(10),
            client_idle_timeout: secs(60),
            client_body_timeout: secs(60),
            client_send_timeout: secs(60),
            upstream_read_timeout: secs(60),
            tunnel_idle_timeout: secs(3600),
            upstream_connect_timeout: secs(2),
            upstream_response_timeout: secs(60),
            upstream_idle_timeout: secs(30),
            upstream_max_lifetime: secs(600),
            max_connections: 20000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawTls {
    pub certs: Vec<RawCert>,
    pub acme: Option<RawAcme>,
}

/// `[tls.acme]`: certificates obtained and renewed from an ACME CA.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAcme {
    pub directory: Option<String>,
    pub email: Option<String>,
    pub domains: Vec<String>,
    pub ca_file: Option<String>,
    pub challenge: Option<String>,
    pub cache_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawAdmin {
    pub listen: String,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    /// `[[admin.tokens]]`: named tokens, each with a role.
    pub tokens: Vec<RawToken>,
    pub hosts: Vec<String>,
    pub header_timeout: RawDuration,
    pub idle_timeout: RawDuration,
    pub max_connections: i64,
    pub upgrade_binary: Option<String>,
    pub allow_local_binary: bool,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9901".into(),
            token_file: None,
            token_env: None,
            tokens: vec![],
            hosts: vec![],
            header_timeout: AdminSettings::DEFAULT_HEADER_TIMEOUT.into(),
            idle_timeout: AdminSettings::DEFAULT_IDLE_TIMEOUT.into(),
            max_connections: AdminSettings::DEFAULT_MAX_CONNECTIONS as i64,
            upgrade_binary: None,
            allow_local_binary: false,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// One `[[admin.tokens]]` entry. Every key is optional here so that a
/// missing one is reported by [`super::validate`] with its key.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawToken {
    pub name: Option<String>,
    pub role: Option<String>,
    pub file: Option<String>,
    pub env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawState {
    pub file: Option<String>,
    /// `file` (the default) or `etcd`.
    pub backend: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub cluster: Option<String>,
    pub instance: Option<String>,
    pub timeout: Option<RawDuration>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawApp {
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub live: String,
    pub standby_percent: f64,
    pub sticky: String,
    /// No default: without it upgraded connections are never closed for it.
    pub drain_timeout: Option<RawDuration>,
    pub compress: bool,
    /// `None` is the default list; given, it is checked even while
    /// `compress` is off.
    pub compress_types: Option<Vec<String>>,
    pub compress_min_length: Option<i64>,
    pub blue: Option<RawPool>,
    pub green: Option<RawPool>,
    pub rules: Vec<RuleSpec>,
    /// These four default to `[server]`'s.
    pub redirect_https: Option<bool>,
    pub hsts: Option<String>,
    pub retry_after: Option<RawDuration>,
    /// `[apps.NAME.error_pages]`: status → file.
    pub error_pages: BTreeMap<String, String>,
    pub allow_connect: bool,
    /// `[apps.NAME.mirror]`: shadow traffic to the standby colour.
    pub mirror: RawMirror,
    /// Front-door checks (`super::access`).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub basic_auth: Option<RawBasicAuth>,
    pub rate_limit: Option<RawRateLimit>,
    /// The `[limits]` of one request, for this app; `None` takes
    /// `[limits]`'s.
    pub max_body_bytes: Option<i64>,
    pub client_body_timeout: Option<RawDuration>,
    pub upstream_connect_timeout: Option<RawDuration>,
    pub upstream_response_timeout: Option<RawDuration>,
    pub upstream_read_timeout: Option<RawDuration>,
    /// `None` takes `[server]`'s rules.
    pub request_headers: Option<RawHeaderRules>,
    pub response_headers: Option<RawHeaderRules>,
    pub strip_prefix: bool,
    pub rewrite: Vec<RawRewrite>,
    /// `"off"` or a duration; `None`: [`crate::config::DEFAULT_GUARD`].
    pub guard: Option<String>,
    /// `"off"` or a duration; `None`:
    /// [`crate::model::DEFAULT_GUARD_MAX_SLOW`].
    pub guard_max_slow: Option<String>,
}

/// `request_headers` / `response_headers = { set, add, remove }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct RawHeaderRules {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// One `rewrite = [{ from, to }]` entry; both keys are needed.
#[derive(Debug, Deserialize)]
pub struct RawRewrite {
    pub from: String,
    pub to: String,
}

impl Default for RawApp {
    fn default() -> Self {
        RawApp {
            hosts: vec![],
            path_prefix: "/".into(),
            live: "blue".into(),
            standby_percent: 0.0,
            sticky: "cookie:cutover".into(),
            drain_timeout: None,
            compress: false,
            compress_types: None,
            compress_min_length: None,
            blue: None,
            green: None,
            rules: vec![],
            redirect_https: None,
            hsts: None,
            retry_after: None,
            error_pages: BTreeMap::new(),
            allow_connect: false,
            mirror: RawMirror::default(),
            allow: vec![],
            deny: vec![],
            basic_auth: None,
            rate_limit: None,
            max_body_bytes: None,
            client_body_timeout: None,
            upstream_connect_timeout: None,
            upstream_response_timeout: None,
            upstream_read_timeout: None,
            request_headers: None,
            response_headers: None,
            strip_prefix: false,
            rewrite: vec![],
            guard: None,
            guard_max_slow: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawMirror {
    pub percent: f64,
    /// `None`: [`MirrorConfig`]'s default methods.
    pub methods: Option<Vec<String>>,
    pub max_body: i64,
    /// `None`: status classes and bodies.
    pub compare: Option<Vec<String>>,
    pub ignore_json_fields: Vec<String>,
    pub ignore_headers: Vec<String>,
    pub timeout: RawDuration,
    pub max_in_flight: i64,
}

impl Default for RawMirror {
    fn default() -> Self {
        let d = MirrorConfig::default();
        RawMirror {
            percent: d.percent,
            methods: None,
            max_body: d.max_body as i64,
            compare: None,
            ignore_json_fields: Vec::new(),
            ignore_headers: Vec::new(),
            timeout: d.timeout.into(),
            max_in_flight: d.max_in_flight as i64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawPool {
    pub servers: Vec<RawServerEntry>,
    pub balance: String,
    pub health: Option<RawHealth>,
    pub passive: RawPassive,
    pub protocol: String,
    pub tls: bool,
    /// The TLS keys are options: each one given needs `tls = true`.
    pub tls_server_name: Option<String>,
    pub ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_insecure_skip_verify: Option<bool>,
    pub send_proxy_protocol: RawProxyProtocol,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            servers: vec![],
            balance: "round_robin".into(),
            health: None,
            passive: RawPassive::default(),
            protocol: "http1".into(),
            tls: false,
            tls_server_name: None,
            ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_insecure_skip_verify: None,
            send_proxy_protocol: RawProxyProtocol::Off(false),
        }
    }
}

/// `send_proxy_protocol = "v1"`, `"v2"` or `false`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawProxyProtocol {
    Off(bool),
    Version(String),
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawPassive {
    pub failures: i64,
    pub cooldown: RawDuration,
}

impl Default for RawPassive {
    fn default() -> Self {
        let d = PassiveConfig::default();
        RawPassive {
            failures: d.failures.into(),
            cooldown: d.cooldown.into(),
        }
    }
}

/// A server: `"IP:PORT"`, `"HOST:PORT"` or `{ addr = "…", weight = N }`.
#[derive(Debug)]
pub enum RawServerEntry {
    Addr(String),
    Full(RawServerFull),
}

/// By hand rather than `untagged`, so that a table's own errors (a
/// missing `addr`, an unknown key) reach the operator with their key.
impl<'de> Deserialize<'de> for RawServerEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawServerEntry, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = RawServerEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address like \"127.0.0.1:8080\" or a table { addr, weight }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawServerEntry, E> {
                Ok(RawServerEntry::Addr(s.to_string()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<RawServerEntry, M::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                RawServerFull::deserialize(de).map(RawServerEntry::Full)
            }
        }
        d.deserialize_any(Entry)
    }
}

#[derive(Debug, Deserialize)]
pub struct RawServerFull {
    pub addr: String,
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawHealth {
    pub path: String,
    pub interval: RawDuration,
    pub timeout: RawDuration,
    pub rise: i64,
    pub fall: i64,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            path: "/healthz".into(),
            interval: secs(2),
            timeout: secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// A key the file has and the config does not know, with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownKey(pub(crate) Vec<Segment>);

/// Deserialize `text`, collecting every unknown key on the way. `Err`:
/// the text is not TOML, or a known key has the wrong type; the error
/// names the key and its line.
pub(crate) fn parse(
    text: &str,
) -> Result<(RawConfig, Vec<UnknownKey>), (Vec<UnknownKey>, ConfigError)> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let mut collect = |path: serde_ignored::Path<'_>| unknown.push(unknown_key(&path));
    let ignored = serde_ignored::Deserializer::new(de, &mut collect);
    match serde_path_to_error::deserialize::<_, RawConfig>(ignored) {
        Ok(raw) => Ok((raw, unknown)),
        Err(e) => {
            let path: Vec<Segment> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                    _ => None,
                })
                .collect();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1);
            let error = ConfigError {
                key: key_of(&path),
                line,
                message: inner.message().trim_end().to_string(),
            };
            Err((unknown, error))
        }
    }
}

/// serde_ignored's path as key segments (its `Some` and newtype steps are
/// no keys).
fn unknown_key(path: &serde_ignored::Path<'_>) -> UnknownKey {
    fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
        use serde_ignored::Path;
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(Segment::Index(*index));
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                out.push(Segment::Key(key.clone()));
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = Vec::new();
    walk(path, &mut out);
    UnknownKey(out)
}

impl UnknownKey {
    /// `KEY: unknown field `x`, did you mean `y`?` with the nearest key
    /// its table knows, when one is near enough to be a typo.
    pub fn to_error(&self) -> ConfigError {
        let (name, table) = match self.0.split_last() {
            Some((Segment::Key(k), table)) => (k.as_str(), table),
            _ => ("", &self.0[..]),
        };
        let mut message = format!("unknown field `{name}`");
        if let Some(near) = nearest(name, known_keys(table)) {
            message.push_str(&format!(", did you mean `{near}`?"));
        }
        ConfigError {
            key: key_of(&self.0),
            line: None,
            message,
        }
    }
}

/// The known key nearest to `name` by edit distance, if at most a third
/// of its length (at least 1, at most 3) away: `helth` → `health`.
fn nearest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = name.chars().count().div_ceil(3).clamp(1, 3);
    known
        .iter()
        .map(|k| (strsim::levenshtein(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The keys the table at `path` may hold, as serde's derive lists them.
fn known_keys(path: &[Segment]) -> &'static [&'static str] {
    use Segment::{Index, Key};
    let k = |s: &Segment, want: &str| matches!(s, Key(k) if k == want);
    match path {
        [] => fields_of::<RawConfig>(),
        [s] if k(s, "server") => fields_of::<RawServer>(),
        [s] if k(s, "limits") => fields_of::<RawLimits>(),
        [s] if k(s, "tls") => fields_of::<RawTls>(),
        [s, c, Index(_)] if k(s, "tls") && k(c, "certs") => fields_of::<RawCert>(),
        [s, a] if k(s, "tls") && k(a, "acme") => fields_of::<RawAcme>(),
        [s] if k(s, "admin") => fields_of::<RawAdmin>(),
        [s, t, Index(_)] if k(s, "admin") && k(t, "tokens") => fields_of::<RawToken>(),
        [s] if k(s, "state") => fields_of::<RawState>(),
        [s] if k(s, "log") => fields_of::<RawLog>(),
        [s, Key(_)] if k(s, "apps") => fields_of::<RawApp>(),
        [s, Key(_), m] if k(s, "apps") && k(m, "mirror") => fields_of::<RawMirror>(),
        [s, Key(_), m] if k(s, "apps") && k(m, "basic_auth") => fields_of::<RawBasicAuth>(),
        [s, Key(_), m] if k(s, "apps") && k(m, "rate_limit") => fields_of::<RawRateLimit>(),
        [s, h] if k(s, "server") && (k(h, "request_headers") || k(h, "response_headers")) => {
            fields_of::<RawHeaderRules>()
        }
        [s, Key(_), h] if k(s, "apps") && (k(h, "request_headers") || k(h, "response_headers")) => {
            fields_of::<RawHeaderRules>()
        }
        [s, Key(_), r, Index(_)] if k(s, "apps") && k(r, "rewrite") => fields_of::<RawRewrite>(),
        [s, Key(_), p] if k(s, "apps") && (k(p, "blue") || k(p, "green")) => fields_of::<RawPool>(),
        [s, Key(_), _, h] if k(s, "apps") && k(h, "health") => fields_of::<RawHealth>(),
        [s, Key(_), _, v, Index(_)] if k(s, "apps") && k(v, "servers") => {
            fields_of::<RawServerFull>()
        }
        [s, Key(_), _, h] if k(s, "apps") && k(h, "passive") => fields_of::<RawPassive>(),
        _ => &[],
    }
}

/// The field names serde's derive gives `T` (what it passes to
/// `deserialize_struct`), read by a deserializer that stops there.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(FieldNames) {
        Err(Fields(names)) => names,
        Ok(_) => &[],
    }
}

/// Carries the field names out of [`FieldNames`].
#[derive(Debug)]
struct Fields(&'static [&'static str]);

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for Fields {}

impl serde::de::Error for Fields {
    fn custom<M: fmt::Display>(_: M) -> Fields {
        Fields(&[])
    }
}

struct FieldNames;

impl<'de> Deserializer<'de> for FieldNames {
    type Error = Fields;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
        Err(Fields(&[]))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Fields> {
        Err(Fields(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `basic_auth = { realm, users_file, forward }`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawBasicAuth {
    pub realm: Option<String>,
    pub users_file: Option<String>,
    pub forward: bool,
}

/// `rate_limit = { key, rate, burst, max_keys }` of an app. A rule's is
/// the shared [`RateLimitSpec`], which refuses unknown keys as rules do.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRateLimit {
    pub key: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<i64>,
    pub max_keys: Option<i64>,
}

impl From<RawRateLimit> for RateLimitSpec {
    fn from(r: RawRateLimit) -> RateLimitSpec {
        RateLimitSpec {
            key: r.key,
            rate: r.rate,
            burst: r.burst,
            max_keys: r.max_keys,
        }
    }
}
