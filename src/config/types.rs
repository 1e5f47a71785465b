//! The validated configuration: what [`super::validate`] makes of the
//! TOML. Every value is typed and checked; nothing here is parsed again.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::model::{Color, RuleSpec};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; `None` for a config built from a string
    /// (tests, the embedded demo). Reload re-reads this path.
    pub path: Option<PathBuf>,
    pub server: ServerSettings,
    pub limits: Limits,
    pub tls: Vec<CertPaths>,
    /// `[tls.acme]`: certificates that renew themselves.
    pub acme: Option<AcmeSettings>,
    pub admin: AdminSettings,
    pub state: StateSettings,
    pub log: LogSettings,
    /// Apps in name order.
    pub apps: Vec<AppConfig>,
    /// Not errors, but worth saying (an expired certificate).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Plain HTTP/1.1 + h2c listeners. Default `["0.0.0.0:8080"]`.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners. Default none.
    pub listen_tls: Vec<SocketAddr>,
    /// Data-plane worker threads; default 0 = one per core.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight work. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Add `x-cutover-color` to responses. Default false.
    pub color_header: bool,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` fields
    /// are believed (load balancers in front of cutover). Default none:
    /// every client's own such fields are removed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Servers given by host name are resolved again this often; new
    /// addresses join their pool, vanished ones leave it (their requests
    /// finish). Default 30 s.
    pub resolve_interval: Duration,
    /// `cutover upgrade`: how long the new process may take to serve
    /// before it is stopped and this one keeps serving. Default 30 s.
    pub upgrade_timeout: Duration,
    /// Listeners whose connections begin with a PROXY protocol header.
    pub proxy_protocol: AcceptProxy,
    pub request_id: RequestId,
    /// Default `x-request-id`.
    pub request_id_header: http::HeaderName,
    /// `upgrades`: the protocols a request may upgrade to (`Upgrade`),
    /// lowercase. Default `["websocket"]`. A request asking for another
    /// is forwarded as a plain request; `h2c` never is allowed.
    pub upgrades: Vec<String>,
    /// What cutover answers by itself for every app that does not say
    /// otherwise, and for a request no app matches (its 404).
    pub answers: OwnAnswers,
    /// `request_headers` and `response_headers`: every app's rules, unless
    /// it has its own. Default none.
    pub request_headers: Option<Arc<super::edits::HeaderRules>>,
    pub response_headers: Option<Arc<super::edits::HeaderRules>>,
}

/// Which listeners expect a PROXY protocol (v1 or v2) header, from an L4
/// balancer among `trusted_proxies`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AcceptProxy {
    #[default]
    Off,
    All,
    /// Listeners by their configured address.
    Only(Vec<SocketAddr>),
}

impl AcceptProxy {
    pub fn applies(&self, listener: SocketAddr) -> bool {
        match self {
            AcceptProxy::Off => false,
            AcceptProxy::All => true,
            AcceptProxy::Only(list) => list.contains(&listener),
        }
    }
}

/// What becomes of a request's id field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestId {
    /// Kept when the client sent a well-formed one, else generated.
    #[default]
    Keep,
    /// Always generated (a client's is replaced).
    Always,
    /// Neither added nor touched.
    Off,
}

/// `[log]`: the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub access: AccessLog,
    pub format: AccessFormat,
    /// Write the query string (JSON `query`; the combined format always
    /// has the whole request line).
    pub query: bool,
    /// Lines waiting for the writer thread; past it they are dropped.
    pub buffer: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    /// nginx's `combined`, then the app and the colour.
    Combined,
}

/// What cutover answers by itself rather than an upstream: the redirect
/// to https, `Strict-Transport-Security`, and its own error responses.
/// An app's copy is already merged with `[server]`'s: nothing is looked
/// up twice on the request path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnAnswers {
    /// `redirect_https`: a request on a plain listener gets a 308 to the
    /// same host, path and query on https. Default false.
    pub redirect_https: bool,
    /// The port of that redirect: `server.https_port`, else the port of
    /// the first `listen_tls` entry, else 443 (left out of the URL).
    pub https_port: u16,
    /// `hsts`: sent as `Strict-Transport-Security` on responses over TLS
    /// that have none. Default none.
    pub hsts: Option<http::HeaderValue>,
    /// `retry_after`, in whole seconds, on every 503. Default 5; 0 sends
    /// none.
    pub retry_after: Option<http::HeaderValue>,
    /// `error_pages`: bodies that replace cutover's own 404, 502, 503 and
    /// 504, read when the config is.
    pub pages: ErrorPages,
    /// `allow_connect` (apps only): `CONNECT` is forwarded, and a 2xx
    /// answer makes the connection a raw tunnel to the upstream, past
    /// every check cutover makes on requests. Default false: `CONNECT`
    /// gets 405.
    pub allow_connect: bool,
}

/// The statuses whose answer a page may replace, in [`ErrorPages`] order.
pub const PAGE_STATUSES: [u16; 4] = [404, 502, 503, 504];

/// One file per status of [`PAGE_STATUSES`], or none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorPages(pub [Option<ErrorPage>; 4]);

impl ErrorPages {
    pub fn get(&self, status: u16) -> Option<&ErrorPage> {
        let i = PAGE_STATUSES.iter().position(|s| *s == status)?;
        self.0[i].as_ref()
    }
}

/// A page's body as read from its file, and the type its extension gives.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorPage {
    pub path: PathBuf,
    /// Served as a refcount clone: no I/O on the request path.
    pub body: bytes::Bytes,
    pub content_type: http::HeaderValue,
}

impl ServerSettings {
    /// The request id's field when cutover writes it: no header rule may
    /// touch it.
    pub fn own_request_id(&self) -> Option<&http::HeaderName> {
        (self.request_id != RequestId::Off).then_some(&self.request_id_header)
    }

    /// The number of worker threads to start: `workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head in bytes (default 65536); larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes; 0 (default) = unlimited; larger gets 413.
    pub max_body_bytes: u64,
    /// Request head must be complete within this (default 10 s) or 408.
    pub client_header_timeout: Duration,
    /// Idle keep-alive client connections are closed after this (default 60 s).
    pub client_idle_timeout: Duration,
    /// Longest wait between two reads of a request body (default 60 s, as
    /// nginx's `client_body_timeout`); beyond it, 408 and both sides close.
    pub client_body_timeout: Duration,
    /// Longest a client may leave a response unread (default 60 s, as
    /// nginx's `send_timeout`); beyond it, both sides close.
    pub client_send_timeout: Duration,
    /// Longest wait between two reads of a response body (default 60 s, as
    /// nginx's `proxy_read_timeout`); beyond it, both sides close.
    pub upstream_read_timeout: Duration,
    /// An upgraded connection with no byte either way for this long is
    /// closed (default 1 h).
    pub tunnel_idle_timeout: Duration,
    /// Upstream TCP connect limit (default 2 s); beyond it, 502 (after one retry).
    pub upstream_connect_timeout: Duration,
    /// Upstream response head limit (default 60 s); beyond it, 504.
    pub upstream_response_timeout: Duration,
    /// Idle pooled upstream connections are closed after this (default 30 s).
    pub upstream_idle_timeout: Duration,
    /// No upstream connection is reused past this age (default 10 min).
    pub upstream_max_lifetime: Duration,
    /// Downstream connections at once (default 20000); beyond it accept waits.
    pub max_connections: usize,
}

/// An app's limits for one request: its own keys, `[limits]`' for the
/// others.
impl super::edits::AppLimits {
    /// `limits` with this app's keys over it.
    pub fn over(&self, limits: &Limits) -> super::edits::RequestLimits {
        super::edits::RequestLimits {
            max_body_bytes: self.max_body_bytes.unwrap_or(limits.max_body_bytes),
            client_body_timeout: self
                .client_body_timeout
                .unwrap_or(limits.client_body_timeout),
            upstream_connect_timeout: self
                .upstream_connect_timeout
                .unwrap_or(limits.upstream_connect_timeout),
            upstream_response_timeout: self
                .upstream_response_timeout
                .unwrap_or(limits.upstream_response_timeout),
            upstream_read_timeout: self
                .upstream_read_timeout
                .unwrap_or(limits.upstream_read_timeout),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Default `127.0.0.1:9901`.
    pub listen: SocketAddr,
    /// The bearer tokens the admin API accepts, each read when the config
    /// is: `token_file`/`token_env` as the operate token `default`, then
    /// every `[[admin.tokens]]` entry. Empty: no token, loopback only.
    pub tokens: Vec<AdminToken>,
    /// More names `Host` and `Origin` may give the admin listener, beyond
    /// its own address and `localhost`: lower case, without a trailing dot;
    /// an IP address in its canonical form, without brackets. Default none.
    pub hosts: Vec<String>,
    /// A request head must be complete within this, counted from accept or
    /// from its first byte; so must a request body, from the end of its
    /// head. Default 5 s.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after
    /// this. Default 30 s.
    pub idle_timeout: Duration,
    /// Admin connections open at once (default 256); beyond it the listener
    /// accepts no more until one closes (the kernel queues the others).
    pub max_connections: usize,
    /// The binary an upgrade starts (`cutover upgrade`, `POST /v1/upgrade`,
    /// SIGUSR2). Default none: the daemon's own executable, as it is on
    /// disk now.
    pub upgrade_binary: Option<PathBuf>,
    /// `POST /v1/upgrade` may name the binary (`cutover upgrade --binary`)
    /// when the caller connected from a loopback address. Default false:
    /// the API never takes a path to execute.
    pub allow_local_binary: bool,
    /// Serve the admin API over TLS only. Default none (clear HTTP).
    pub tls: Option<AdminTls>,
}

/// `[admin] tls_cert_file` and `tls_key_file`: the files, and the rustls
/// config built from them when the config is read, so that `check` and a
/// reload refuse what a handshake could not use.
#[derive(Debug, Clone)]
pub struct AdminTls {
    pub files: CertPaths,
    /// TLS 1.2 and 1.3, ALPN `http/1.1` only (the admin API speaks no h2).
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

impl AdminSettings {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
}

/// Where a token's secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file (trimmed), relative to the config file.
    File(PathBuf),
    /// An environment variable (trimmed).
    Env(String),
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every `GET`: status, history, rules, metrics.
    Read,
    /// Everything, changes included.
    Operate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bearer token of the admin API. Its name is what the history
/// records as the actor of the changes made with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// `default` for `token_file`/`token_env`; `[A-Za-z0-9_.-]+`, unique.
    pub name: String,
    pub role: Role,
    pub source: TokenSource,
    /// The key its source was given under, for messages:
    /// `admin.tokens[1].file`, `admin.token_env`.
    pub key: String,
    /// Read when the config was: `None` only for an environment variable
    /// that is not set (a warning for `check`, an error for `run`).
    pub secret: Option<Secret>,
}

/// A token's secret; never printed (`Debug` shows `Secret(..)`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl AdminSettings {
    /// The token a client reading this config should send: `default`,
    /// else the first operate token, else the first one (with a secret).
    pub fn client_token(&self) -> Option<&Secret> {
        let usable = || self.tokens.iter().filter(|t| t.secret.is_some());
        usable()
            .find(|t| t.name == "default")
            .or_else(|| usable().find(|t| t.role == Role::Operate))
            .or_else(|| usable().next())
            .and_then(|t| t.secret.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateSettings {
    /// Runtime state file; `None` keeps state in memory only (tests, demo).
    /// With etcd it is this instance's local copy of the fleet's state.
    pub file: Option<PathBuf>,
    /// The fleet's shared store (`backend = "etcd"`); `None`: the file.
    pub etcd: Option<EtcdSettings>,
}

/// `[tls.acme]`: certificates for `domains` from an ACME CA (RFC 8555),
/// obtained at start when the cache has none and renewed at two thirds
/// of their lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    /// The CA's directory URL (`https://…/directory`).
    pub directory: String,
    /// The account's contact, if any.
    pub email: Option<String>,
    pub domains: Vec<String>,
    /// PEM: the CA that signed the ACME server's own certificate, for a
    /// private ACME CA; default the system's roots.
    pub ca_file: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// The account and the certificates, kept across restarts (mode 0700).
    pub cache_dir: PathBuf,
}

/// How the CA checks that this server answers for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A plain HTTP request for `/.well-known/acme-challenge/TOKEN`.
    Http01,
    /// A TLS handshake offering ALPN `acme-tls/1`.
    TlsAlpn01,
}

/// Where a fleet keeps its one truth: `[state] backend = "etcd"`.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, one per etcd member.
    pub endpoints: Vec<String>,
    /// The fleet's name: instances with the same one share their state.
    pub cluster: String,
    /// This instance's name in the fleet; `None`: host name and admin
    /// address (or pid).
    pub instance: Option<String>,
    /// How long one call to etcd may take.
    pub timeout: Duration,
    /// TLS to etcd: the CA that signed its certificate, and this
    /// instance's own certificate and key when etcd asks for one.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd's own authentication.
    pub user: Option<(String, Secret)>,
}

/// How a user is recognised so that they stay on their colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Cookie(String),
    Header(http::HeaderName),
    Ip,
    None,
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Cookie(n) => write!(f, "cookie:{n}"),
            Sticky::Header(n) => write!(f, "header:{n}"),
            Sticky::Ip => f.write_str("ip"),
            Sticky::None => f.write_str("none"),
        }
    }
}

/// A host pattern: exact (`shop.example.com`) or wildcard (`*.shop.example.com`,
/// stored as the suffix `shop.example.com`). Always lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    /// Empty = the catch-all app.
    pub hosts: Vec<HostPattern>,
    /// Default "/".
    pub path_prefix: String,
    /// Initial live colour when no state exists. Default blue.
    pub live: Color,
    /// Initial standby share of default traffic, 0–100. Default 0.
    pub standby_percent: f64,
    /// Default `cookie:cutover`.
    pub sticky: Sticky,
    /// Upgraded connections on a pool with no traffic are closed after this.
    pub drain_timeout: Option<Duration>,
    /// `compress = true`: responses are compressed for clients that ask.
    /// `None` (the default) leaves every response as the upstream sent it.
    pub compress: Option<Compression>,
    /// `[blue, green]`.
    pub pools: [PoolConfig; 2],
    /// The initial rules, validated; compiled again into the snapshot.
    pub rules: Vec<RuleSpec>,
    /// Its own `redirect_https`, `hsts`, `retry_after` and `error_pages`,
    /// each defaulting to `[server]`'s.
    pub answers: OwnAnswers,
    /// `[apps.NAME.mirror]`: shadow traffic. Without the table, the
    /// defaults (off until a runtime percent is set).
    pub mirror: MirrorConfig,
    /// `allow`, `deny`, `basic_auth`; `None` (the default) when none is set.
    pub access: Option<AccessConfig>,
    /// `rate_limit`; `None` (the default): no limit.
    pub rate_limit: Option<RateLimitConfig>,
    /// Its own `max_body_bytes` and request timeouts; each absent one is
    /// `[limits]`'s.
    pub limits: super::edits::AppLimits,
    /// Header rules for the request sent upstream and the answer sent
    /// back: its own, or `[server]`'s. `None`: fields pass as they are.
    pub request_headers: Option<Arc<super::edits::HeaderRules>>,
    pub response_headers: Option<Arc<super::edits::HeaderRules>>,
    /// `strip_prefix` and `rewrite`; `None`: the path is sent as routed.
    pub paths: Option<Arc<super::edits::PathRewrite>>,
    /// `guard`: how long a flip or shift made outside a rollout is
    /// watched, and undone if the colour that took the traffic is clearly
    /// worse. Default [`DEFAULT_GUARD`] (2 minutes); `"off"`: zero, none.
    pub guard: std::time::Duration,
    /// `guard_max_slow`: a guard counts a response whose head takes longer
    /// than this as slow, and reverts a change whose new colour answers
    /// slowly more often than the old one beyond doubt. Default
    /// [`crate::model::DEFAULT_GUARD_MAX_SLOW`] (500 ms); `"off"`: `None`,
    /// slowness not judged.
    pub guard_max_slow: Option<std::time::Duration>,
}

/// An app's `guard` when it sets none.
pub const DEFAULT_GUARD: std::time::Duration = std::time::Duration::from_secs(120);

/// `[apps.NAME.mirror]`: a share of the live colour's requests copied to
/// the standby colour, whose answers are compared with the live ones and
/// thrown away.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// `percent`: share of live-colour requests copied, 0-100. Default 0
    /// (off); the runtime state's percent, when set, replaces it.
    pub percent: f64,
    /// `methods`: only requests of these methods are copied. Default
    /// GET, HEAD and OPTIONS. `CONNECT` never is.
    pub methods: Vec<http::Method>,
    /// `max_body`, bytes: a request body is copied only when its length is
    /// known and at most this; answers' bodies are compared (and read)
    /// only up to it. Default 65536.
    pub max_body: u64,
    /// `compare`: what answers are compared by, besides their status
    /// classes (always compared): `"body"` (up to `max_body`) and
    /// `"headers"`. Default `["status", "body"]`; the runtime state's
    /// list, when set, replaces it.
    pub compare_body: bool,
    /// `"headers"` in `compare`. Default false.
    pub compare_headers: bool,
    /// `ignore_json_fields`: JSON paths left out when both bodies are JSON
    /// (`$.timestamp`, `$.items[*].id`). Default none.
    pub ignore_json_fields: Vec<super::json_path::JsonPath>,
    /// `ignore_headers`: header fields whose values are not compared
    /// (with `compare` naming `"headers"`), lowercase. Default none.
    pub ignore_headers: Vec<http::HeaderName>,
    /// `timeout`: the longest a copy may take, from connect to the end of
    /// its answer. Default 2 s.
    pub timeout: Duration,
    /// `max_in_flight`: copies under way at once for the app (over all
    /// workers); one more is dropped and counted. Default 64.
    pub max_in_flight: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            percent: 0.0,
            methods: vec![http::Method::GET, http::Method::HEAD, http::Method::OPTIONS],
            max_body: MirrorConfig::DEFAULT_MAX_BODY,
            compare_body: true,
            compare_headers: false,
            ignore_json_fields: Vec::new(),
            ignore_headers: Vec::new(),
            timeout: MirrorConfig::DEFAULT_TIMEOUT,
            max_in_flight: MirrorConfig::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl MirrorConfig {
    /// The `compare` list in force.
    pub fn compared(&self) -> Vec<crate::model::Compared> {
        use crate::model::Compared;
        let mut list = vec![Compared::Status];
        list.extend(self.compare_body.then_some(Compared::Body));
        list.extend(self.compare_headers.then_some(Compared::Headers));
        list
    }

    /// With `list` as its `compare` (the runtime state's).
    pub fn with_compared(&self, list: &[crate::model::Compared]) -> MirrorConfig {
        use crate::model::Compared;
        MirrorConfig {
            compare_body: list.contains(&Compared::Body),
            compare_headers: list.contains(&Compared::Headers),
            ..self.clone()
        }
    }

    pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;
    /// Short: a copy that takes longer tells nothing a live request would
    /// wait for, and holds a slot of `max_in_flight` meanwhile.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Enough for a few hundred copies a second at a standby's usual
    /// latency; a standby that hangs holds at most this many sockets.
    pub const DEFAULT_MAX_IN_FLIGHT: u64 = 64;
}

/// An app's response compression (`compress = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// `compress_types`: media types compressed, lowercase, each
    /// `type/subtype`, `type/*` or `*/*`. Default [`Compression::DEFAULT_TYPES`].
    pub types: Vec<String>,
    /// `compress_min_length`, bytes: a response whose `Content-Length` is
    /// below it is sent as it is (one of unknown length is compressed).
    /// Default 1024.
    pub min_length: u64,
}

impl Compression {
    /// Text-like types that compress well; images, audio, video and
    /// archives are compressed already.
    pub const DEFAULT_TYPES: &'static [&'static str] = &[
        "text/*",
        "application/json",
        "application/javascript",
        "application/x-javascript",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/ld+json",
        "application/manifest+json",
        "application/problem+json",
        "application/vnd.api+json",
        "application/wasm",
        "image/svg+xml",
        "image/x-icon",
        "font/ttf",
        "font/otf",
    ];

    /// Below this a compressed body saves less than its headers and a
    /// round of the encoder cost: about one TCP segment's worth.
    pub const DEFAULT_MIN_LENGTH: u64 = 1024;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Every server: the configured addresses, and what the configured
    /// host names resolved to (none in a config fresh from validation:
    /// names are resolved by the daemon, see `control::resolve`).
    pub servers: Vec<ServerConfig>,
    /// The servers configured by host name, resolved at start and again
    /// every `server.resolve_interval`.
    pub names: Vec<NamedServer>,
    /// Default round robin.
    pub balance: Balance,
    pub health: Option<HealthConfig>,
    pub passive: PassiveConfig,
    /// Default HTTP/1.1.
    pub protocol: Protocol,
    /// `tls = true`: connect to the servers with TLS. Default off (plain TCP).
    pub tls: Option<UpstreamTls>,
    /// `send_proxy_protocol`: a PROXY header first on every new connection.
    /// Default none.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// The PROXY protocol version written to a pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// TLS to a pool's servers, its files read and its rustls config built
/// when the config is loaded.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// `tls_server_name`: the name sent as SNI and verified, for every
    /// server. Default: each server's configured host name, or for an IP
    /// address no SNI and its IP address verified.
    pub server_name: Option<ServerName<'static>>,
    /// `ca_file`: the only roots trusted. Default the system's (or, when it
    /// has none, the Mozilla roots of `webpki-roots`).
    pub ca_file: Option<PathBuf>,
    /// `tls_cert_file` and `tls_key_file`: a client certificate. Default none.
    pub client_cert: Option<CertPaths>,
    /// `tls_insecure_skip_verify`: accept any certificate. Default false.
    pub insecure_skip_verify: bool,
    /// What the files held when read, so that a reload with rotated files
    /// is a change and one with the same files keeps the old config.
    pub contents: Arc<[u8]>,
    /// One per pool and config load, shared by its every connection: its
    /// session store lets reconnects resume. ALPN is the pool's protocol.
    pub client: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    /// Equal settings and files; `client` is built from them.
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.ca_file == other.ca_file
            && self.client_cert == other.client_cert
            && self.insecure_skip_verify == other.insecure_skip_verify
            && self.contents == other.contents
    }
}

impl UpstreamTls {
    /// The name `server` is verified against (and sent as SNI when a DNS
    /// name): `tls_server_name`, else the host it was configured by, else
    /// its IP address.
    pub fn name_for(&self, server: &ServerConfig) -> ServerName<'static> {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        server
            .name
            .as_deref()
            .and_then(|n| n.rsplit_once(':'))
            .and_then(|(host, _)| ServerName::try_from(host.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(server.addr.ip().into()))
    }
}

/// Passive health: this many consecutive connect failures or 5xx answers
/// mark a server down for `cooldown`, after which it is probed again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassiveConfig {
    /// Default 5; 0 turns passive checks off.
    pub failures: u32,
    /// Default 10 s.
    pub cooldown: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            failures: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// A server configured by host name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedServer {
    /// `host:port` as written.
    pub name: String,
    /// The weight of each address it resolves to.
    pub weight: u32,
    /// Its key (`apps.shop.blue.servers[0]`), for warnings.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Relative share of the pool's traffic. Default 1.
    pub weight: u32,
    /// The host name (`host:port`) this address was resolved from.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Default `/healthz`.
    pub path: String,
    /// Default 2 s.
    pub interval: Duration,
    /// Default 1 s.
    pub timeout: Duration,
    /// Consecutive successes to mark a server up. Default 2.
    pub rise: u32,
    /// Consecutive failures to mark a server down. Default 3.
    pub fall: u32,
}

impl Config {
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// Every `host:port` some pool names a server by, once each.
    pub fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .apps
            .iter()
            .flat_map(|a| a.pools.iter())
            .flat_map(|p| p.names.iter().map(|n| n.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The addresses its pools' host names resolve to now, as far as it
    /// knows them (the servers it holds by name).
    pub fn resolved_names(&self) -> std::collections::HashMap<String, Vec<SocketAddr>> {
        let mut out: std::collections::HashMap<String, Vec<SocketAddr>> = Default::default();
        let pools = self.apps.iter().flat_map(|a| a.pools.iter());
        for s in pools.flat_map(|p| p.servers.iter()) {
            if let Some(name) = &s.name {
                let addrs = out.entry(name.clone()).or_default();
                if !addrs.contains(&s.addr) {
                    addrs.push(s.addr);
                }
            }
        }
        out
    }

    /// This config with every pool's host names resolved by `resolved`
    /// (a name missing from it keeps the addresses it has).
    pub fn with_resolved(
        &self,
        resolved: &std::collections::HashMap<String, Vec<SocketAddr>>,
    ) -> Config {
        let mut next = self.clone();
        for app in &mut next.apps {
            for pool in &mut app.pools {
                *pool = pool.with_resolved(resolved);
            }
        }
        next
    }
}

impl PoolConfig {
    /// This pool with its host names' addresses replaced by `resolved`
    /// (a name missing from it keeps the addresses it has).
    pub fn with_resolved(
        &self,
        resolved: &std::collections::HashMap<String, Vec<SocketAddr>>,
    ) -> PoolConfig {
        let mut servers: Vec<ServerConfig> = self
            .servers
            .iter()
            .filter(|s| s.name.as_ref().is_none_or(|n| !resolved.contains_key(n)))
            .cloned()
            .collect();
        for named in &self.names {
            for addr in resolved.get(&named.name).into_iter().flatten() {
                if !servers.iter().any(|s| s.addr == *addr) {
                    servers.push(ServerConfig {
                        addr: *addr,
                        weight: named.weight,
                        name: Some(named.name.clone()),
                    });
                }
            }
        }
        PoolConfig {
            servers,
            ..self.clone()
        }
    }
}

/// Who may reach an app: by address, then by password.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    /// `allow`: networks let in. Empty (the default): every address not
    /// denied.
    pub allow: Vec<ipnet::IpNet>,
    /// `deny`: networks refused. Default none.
    pub deny: Vec<ipnet::IpNet>,
    pub basic_auth: Option<BasicAuth>,
}

/// `basic_auth`: users and their bcrypt hashes, as read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuth {
    /// `realm`, sent in `WWW-Authenticate`. Default "restricted".
    pub realm: String,
    /// `users_file`, relative to the config file's directory.
    pub users_file: PathBuf,
    /// User name → bcrypt hash (`$2y$…`, `$2b$…`, `$2a$…`).
    pub users: std::collections::BTreeMap<String, String>,
    /// `forward`: the client's `Authorization` goes upstream. Default false.
    pub forward: bool,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl std::fmt::Display for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::ClientIp => f.write_str("client_ip"),
            RateKey::Header(h) => write!(f, "header:{h}"),
            RateKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// `rate_limit`: a token bucket (GCRA) per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub key: RateKey,
    /// `rate` as written (`"20/s"`), for status.
    pub rate: String,
    /// One request's share of the rate: a key earns a request back every
    /// `interval`.
    pub interval: Duration,
    /// `burst`: requests a key may make at once after being idle. Default
    /// the rate's count.
    pub burst: u32,
    /// `max_keys`: keys remembered at once. Default 100000.
    pub max_keys: u32,
}
