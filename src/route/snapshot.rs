use std::collections::BTreeMap;

use fnv::FnvHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::access::Gate;
use super::mirror::MirrorStats;
use super::rule::{RequestView, RuleTable};
use super::sticky::{self, CookieId, BUCKETS};
use crate::config::{
    compile_rules, AppConfig, Balance, Color, Compression, Config, HeaderRules, HealthConfig,
    HostPattern, Limits, MirrorConfig, OwnAnswers, PassiveConfig, PathRewrite, PoolConfig,
    Protocol, RequestLimits, ServerConfig, Sticky,
};
pub use crate::model::{server_key, AppState, ServerSetting, ServerState};
use crate::tls::{ServerTls, Transport};

impl AppState {
    pub fn initial(app: &AppConfig) -> AppState {
        AppState {
            live: app.live,
            standby_percent: app.standby_percent,
            rules: app.rules.clone(),
            runtime_rules: false,
            servers: BTreeMap::new(),
            mirror_percent: None,
            mirror_compare: None,
        }
    }
}

/// Per-listener settings the data plane reads on every connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    pub color_header: bool,
    /// See `ServerSettings::trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub proxy_protocol: crate::config::AcceptProxy,
    pub request_id: crate::config::RequestId,
    pub request_id_header: http::HeaderName,
    /// The access log's format, when there is one.
    pub access_log: Option<crate::config::AccessFormat>,
    pub access_query: bool,
    /// `server.upgrades`: what a request may upgrade to.
    pub upgrades: Vec<String>,
    /// `[server]`'s own answers: for a request no app matched, or refused
    /// before routing.
    pub answers: Arc<OwnAnswers>,
}

/// One upstream server. Lives as long as any snapshot (or in-flight
/// request) names it, so its health and counters survive flips and reloads.
#[derive(Debug)]
pub struct Server {
    /// Process-unique id; workers index their connection pools by it.
    pub id: usize,
    pub addr: SocketAddr,
    pub weight: u32,
    pub app: Arc<str>,
    pub color: Color,
    pub protocol: Protocol,
    /// TLS and the PROXY header, as its pool has them.
    pub transport: Transport,
    /// `active_ok && !passive_down`: the one flag the request path reads.
    pub healthy: AtomicBool,
    /// The active health check's verdict (true without an active check).
    pub active_ok: AtomicBool,
    /// Marked down by passive checks, until a probe after the cool-off.
    pub passive_down: AtomicBool,
    /// Requests bound to this server and not yet finished.
    pub in_flight: AtomicU64,
    /// Open upstream TCP connections, over all workers.
    pub open_connections: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Consecutive connect failures or 5xx answers (passive health).
    pub consecutive_failures: AtomicU64,
}

static NEXT_SERVER_ID: AtomicUsize = AtomicUsize::new(0);

impl Server {
    pub fn new(
        app: Arc<str>,
        color: Color,
        addr: SocketAddr,
        weight: u32,
        protocol: Protocol,
        transport: Transport,
    ) -> Server {
        Server {
            id: NEXT_SERVER_ID.fetch_add(1, Relaxed),
            addr,
            weight,
            app,
            color,
            protocol,
            transport,
            healthy: AtomicBool::new(true),
            active_ok: AtomicBool::new(true),
            passive_down: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Recompute `healthy` from the active and passive verdicts.
    pub fn refresh_health(&self) {
        let healthy = self.active_ok.load(Relaxed) && !self.passive_down.load(Relaxed);
        if self.healthy.swap(healthy, Relaxed) != healthy {
            tracing::warn!(
                app = %self.app,
                color = %self.color,
                server = %self.addr,
                healthy,
                "server health changed"
            );
        }
    }

    /// Passive health: a connect failure or a 5xx answer. Past the pool's
    /// threshold the server is marked down until the health task probes it
    /// again after the cool-off.
    pub fn record_failure(&self, passive: &PassiveConfig) {
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if passive.failures > 0
            && n >= u64::from(passive.failures)
            && !self.passive_down.swap(true, Relaxed)
        {
            tracing::warn!(
                app = %self.app,
                color = %self.color,
                server = %self.addr,
                failures = n,
                "marked down by passive health check"
            );
            self.refresh_health();
        }
    }

    /// Passive health: an answer that was not a 5xx. Only writes when
    /// there is something to reset, to keep the cache line quiet.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }
}

/// Upper bounds (seconds) of the request duration histogram.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Request statistics of one colour of one app. Atomics only: the request
/// path adds to them without a lock. Shared by every snapshot.
///
/// (See [`Timeout`] for the phases a request may time out in.)
/// Where a request or connection ran out of time, as the `phase` label of
/// `cutover_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The client paused too long within its request body.
    ClientBody,
    /// The client left the response unread too long.
    ClientSend,
    /// No response head in `upstream_response_timeout`.
    UpstreamResponse,
    /// The upstream paused too long within its response body.
    UpstreamRead,
    /// A tunnel carried no byte either way for `tunnel_idle_timeout`.
    TunnelIdle,
}

impl Timeout {
    pub const ALL: [Timeout; 5] = [
        Timeout::ClientBody,
        Timeout::ClientSend,
        Timeout::UpstreamResponse,
        Timeout::UpstreamRead,
        Timeout::TunnelIdle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::ClientBody => "client_body",
            Timeout::ClientSend => "client_send",
            Timeout::UpstreamResponse => "upstream_response",
            Timeout::UpstreamRead => "upstream_read",
            Timeout::TunnelIdle => "tunnel_idle",
        }
    }
}

impl ColorStats {
    /// Count a timeout of `phase`.
    pub fn timed_out(&self, phase: Timeout) {
        self.timeouts[phase as usize].fetch_add(1, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct ColorStats {
    /// Index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    pub in_flight: AtomicU64,
    /// Open upgraded (WebSocket) tunnels.
    pub tunnels: AtomicU64,
    /// Requests whose client went away before sending all of it: counted
    /// here, not among the responses.
    pub client_aborts: AtomicU64,
    /// Timeouts by [`Timeout`] phase.
    pub timeouts: [AtomicU64; Timeout::ALL.len()],
    /// Non-cumulative counts per bucket; the last is +Inf.
    pub duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    pub duration_sum_micros: AtomicU64,
    /// What a rollout's judge counts: requests placed by the split (or as
    /// the live colour), not by rules — `[total, bad, slow]`. Bad: a 5xx
    /// (cutover's own 502/503/504 for connect errors, no healthy server
    /// and timeouts included) or an upstream that stalled mid-body.
    pub judged: [AtomicU64; 3],
    /// What counts as slow, in microseconds to the response head: a
    /// running rollout's `max_slow`, else the app's `guard_max_slow`; 0
    /// while neither judges slowness (see `Control::slow_micros`).
    pub slow_micros: AtomicU64,
}

impl ColorStats {
    /// One judged request's end: its status (0: the client left before
    /// any answer) and, if one came, how long the upstream took to answer
    /// with a head.
    pub fn record_judged(
        &self,
        status: u16,
        faulted: bool,
        head: Option<Duration>,
        elapsed: Duration,
    ) {
        self.judged[0].fetch_add(1, Relaxed);
        if status >= 500 || faulted {
            self.judged[1].fetch_add(1, Relaxed);
        }
        let slow = self.slow_micros.load(Relaxed);
        if slow > 0 && head.unwrap_or(elapsed).as_micros() as u64 > slow {
            self.judged[2].fetch_add(1, Relaxed);
        }
    }

    /// `[total, bad, slow]` so far.
    pub fn judged(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.judged[i].load(Relaxed))
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[i].fetch_add(1, Relaxed);
        self.duration_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }
}

/// The servers of one colour of one app.
#[derive(Debug)]
pub struct Pool {
    pub color: Color,
    pub config: PoolConfig,
    pub servers: Vec<Arc<Server>>,
    pub stats: Arc<ColorStats>,
    /// The app's own answers (the same `Arc` as [`App::answers`]): here
    /// because every request holds its pool, so an error answer or HSTS
    /// costs the normal path nothing more.
    pub answers: Arc<OwnAnswers>,
    /// Per server (same order): its runtime state and effective weight.
    settings: Vec<(ServerState, u32)>,
    /// Smooth weighted round-robin order, as server indexes.
    schedule: Vec<u32>,
    rr: AtomicUsize,
}

impl Pool {
    fn new(
        color: Color,
        config: PoolConfig,
        servers: Vec<Arc<Server>>,
        stats: Arc<ColorStats>,
        answers: Arc<OwnAnswers>,
        overrides: &BTreeMap<String, ServerSetting>,
    ) -> Pool {
        let settings = Pool::settings_for(color, &servers, overrides);
        // Servers out of rotation take no turn in the schedule.
        let weights: Vec<u32> = settings
            .iter()
            .map(|(st, w)| if *st == ServerState::Ready { *w } else { 0 })
            .collect();
        let schedule = smooth_wrr(&weights);
        Pool {
            color,
            config,
            servers,
            stats,
            answers,
            settings,
            schedule,
            rr: AtomicUsize::new(0),
        }
    }

    fn settings_for(
        color: Color,
        servers: &[Arc<Server>],
        overrides: &BTreeMap<String, ServerSetting>,
    ) -> Vec<(ServerState, u32)> {
        servers
            .iter()
            .map(|s| match overrides.get(&server_key(color, s.addr)) {
                Some(o) => (o.state, o.weight.unwrap_or(s.weight)),
                None => (ServerState::Ready, s.weight),
            })
            .collect()
    }

    /// This pool with `overrides` applied: itself when they change nothing
    /// for it, else a new pool of the same servers and statistics.
    fn with_overrides(self: &Arc<Pool>, overrides: &BTreeMap<String, ServerSetting>) -> Arc<Pool> {
        if Pool::settings_for(self.color, &self.servers, overrides) == self.settings {
            return self.clone();
        }
        Arc::new(Pool::new(
            self.color,
            self.config.clone(),
            self.servers.clone(),
            self.stats.clone(),
            self.answers.clone(),
            overrides,
        ))
    }

    /// Server `i`'s runtime state and effective weight.
    pub fn setting(&self, i: usize) -> (ServerState, u32) {
        self.settings[i]
    }

    /// May server `i` take new requests (ready and healthy)?
    fn usable(&self, i: usize) -> bool {
        self.settings[i].0 == ServerState::Ready && self.servers[i].is_healthy()
    }

    /// Is server `i` in rotation (whatever its health)?
    pub fn in_rotation(&self, i: usize) -> bool {
        self.settings[i].0 == ServerState::Ready
    }

    pub fn balance(&self) -> Balance {
        self.config.balance
    }

    pub fn health(&self) -> Option<&HealthConfig> {
        self.config.health.as_ref()
    }

    /// Has the pool a server that can take requests (healthy and in
    /// rotation)?
    pub fn any_healthy(&self) -> bool {
        (0..self.servers.len()).any(|i| self.usable(i))
    }

    /// A healthy server in rotation, by the pool's balance, other than
    /// `exclude`. `None` when none is left: never another colour's.
    pub fn pick(&self, exclude: Option<usize>) -> Option<&Arc<Server>> {
        let usable = |i: usize| self.usable(i) && Some(self.servers[i].id) != exclude;
        match self.config.balance {
            Balance::RoundRobin => {
                let n = self.rr.fetch_add(1, Relaxed);
                let first = self.schedule[n % self.schedule.len()] as usize;
                let len = self.servers.len();
                (0..len)
                    .map(|k| (first + k) % len)
                    .find(|i| usable(*i))
                    .map(|i| &self.servers[i])
            }
            Balance::LeastRequests => {
                // Power of two choices: two random candidates, the one with
                // fewer requests in flight per unit of weight wins.
                let len = self.servers.len();
                let a = fastrand::usize(..len);
                let b = if len > 1 {
                    (a + 1 + fastrand::usize(..len - 1)) % len
                } else {
                    a
                };
                let load = |i: usize| {
                    self.servers[i].in_flight.load(Relaxed) * 1000
                        / u64::from(self.settings[i].1.max(1))
                };
                let (best, other) = if load(b) < load(a) { (b, a) } else { (a, b) };
                let i = if usable(best) {
                    Some(best)
                } else if usable(other) {
                    Some(other)
                } else {
                    (0..len).map(|k| (a + k) % len).find(|i| usable(*i))
                };
                i.map(|i| &self.servers[i])
            }
        }
    }
}

/// Smooth weighted round robin (as nginx does it), unrolled into one cycle.
fn smooth_wrr(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    // No server in rotation (all drained, say): one slot, so that `pick`
    // finds none usable and answers 503 rather than dividing by zero.
    if total == 0 {
        return vec![0];
    }
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from(*w);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, -(*i as i64)))
                .unwrap();
            current[best] -= total;
            best as u32
        })
        .collect()
}

/// One app as the request path sees it.
#[derive(Debug)]
pub struct App {
    pub name: Arc<str>,
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    pub sticky: Sticky,
    pub state: AppState,
    pub drain_timeout: Option<Duration>,
    /// `compress = true`: how responses are compressed. `None` costs the
    /// request path one branch.
    pub compress: Option<Arc<Compression>>,
    /// Compiled `state.rules`. Shared with the next snapshot when a change
    /// leaves the rules alone (a flip, a shift): nothing is compiled again,
    /// and what connections and workers remember about it stays valid.
    pub rules: Arc<RuleTable>,
    /// `[blue, green]`.
    pub pools: [Arc<Pool>; 2],
    /// Redirect, HSTS and error pages, merged with `[server]`'s.
    pub answers: Arc<OwnAnswers>,
    /// `[apps.NAME.mirror]`: what is copied to the standby colour and how,
    /// as the config file says (the next snapshot's starting point).
    pub mirror_config: Arc<MirrorConfig>,
    /// The same with the runtime state's `mirror_compare` applied: what
    /// copies are compared by now.
    pub mirror_in_force: Arc<MirrorConfig>,
    /// How the copies went. Always there, mirroring on or off, and carried
    /// over by every rebuild, so the counts only ever grow.
    pub mirror_stats: Arc<MirrorStats>,
    /// The mirror percent in force, in basis points of [`BUCKETS`]: the
    /// request path's one read when mirroring is off.
    mirror_bp: u32,
    standby_bp: u32,
    /// A partial split or a partial rule is in force: new users get a cookie.
    set_cookie: bool,
    /// `allow`/`deny`, `basic_auth`, `rate_limit`; `None` (all off) costs
    /// the request path one pointer test.
    pub gate: Option<Arc<Gate>>,
    /// Requests refused by the app's `rate_limit` or a rule's
    /// (`cutover_rate_limited_total{app}`): every limiter of the app counts
    /// here, and every rebuild carries it over, so the count only grows.
    pub rate_limited: Arc<AtomicU64>,
    /// `[limits]` with the app's own keys over it: what one request of
    /// the app runs under.
    pub limits: RequestLimits,
    /// Header rules, path rewriting and the app's own limits as written.
    /// `None` (the default) costs a request one test.
    pub edits: Option<Arc<Edits>>,
}

/// What an app changes in the requests and answers it passes.
#[derive(Debug, PartialEq)]
pub struct Edits {
    /// The app's own limits keys (for `status`; [`App::limits`] is what
    /// requests read).
    pub own_limits: crate::config::AppLimits,
    pub request_headers: Option<Arc<HeaderRules>>,
    pub response_headers: Option<Arc<HeaderRules>>,
    pub paths: Option<Arc<PathRewrite>>,
}

impl Edits {
    /// `None` when the app changes nothing.
    fn of(app: &AppConfig) -> Option<Arc<Edits>> {
        let edits = Edits {
            own_limits: app.limits.clone(),
            request_headers: app.request_headers.clone(),
            response_headers: app.response_headers.clone(),
            paths: app.paths.clone(),
        };
        let none = edits.own_limits == crate::config::AppLimits::default()
            && edits.request_headers.is_none()
            && edits.response_headers.is_none()
            && edits.paths.is_none();
        (!none).then(|| Arc::new(edits))
    }
}

/// What an app is besides its runtime state: fixed by the config.
struct Shape {
    name: Arc<str>,
    hosts: Vec<HostPattern>,
    path_prefix: String,
    sticky: Sticky,
    drain_timeout: Option<Duration>,
    compress: Option<Arc<Compression>>,
    pools: [Arc<Pool>; 2],
    answers: Arc<OwnAnswers>,
    mirror_config: Arc<MirrorConfig>,
    mirror_stats: Arc<MirrorStats>,
    gate: Option<Arc<Gate>>,
    rate_limited: Arc<AtomicU64>,
    limits: RequestLimits,
    edits: Option<Arc<Edits>>,
}

impl App {
    /// An app from its shape and runtime state; the rules are compiled
    /// (errors keyed `apps.NAME.rules[i]…`), their limiters taken from
    /// `old_rules` where unchanged.
    fn assemble(
        shape: Shape,
        state: AppState,
        old_rules: Option<&RuleTable>,
    ) -> Result<App, Vec<String>> {
        let compiled = compile_rules(&format!("apps.{}", shape.name), &state.rules)?;
        let sticky_cookie = match &shape.sticky {
            Sticky::Cookie(name) => Some(name.as_str()),
            _ => None,
        };
        let rules = RuleTable::new(compiled, sticky_cookie);
        let rules = Arc::new(rules.with_limiters(old_rules, &shape.rate_limited));
        Ok(App::with_rules(shape, state, rules))
    }

    /// An app from its shape, runtime state and the compiled form of
    /// `state.rules`.
    fn with_rules(shape: Shape, state: AppState, rules: Arc<RuleTable>) -> App {
        let standby_bp = (state.standby_percent * 100.0)
            .round()
            .clamp(0.0, BUCKETS as f64) as u32;
        let set_cookie = (standby_bp > 0 && standby_bp < BUCKETS)
            || rules.rules().iter().any(|r| r.percent_bp < BUCKETS);
        let mirror_percent = state.mirror_percent.unwrap_or(shape.mirror_config.percent);
        let mirror_bp = (mirror_percent * 100.0).round().clamp(0.0, BUCKETS as f64) as u32;
        let mirror_in_force = match &state.mirror_compare {
            Some(list) => Arc::new(shape.mirror_config.with_compared(list)),
            None => shape.mirror_config.clone(),
        };
        App {
            name: shape.name,
            hosts: shape.hosts,
            path_prefix: shape.path_prefix,
            sticky: shape.sticky,
            state,
            drain_timeout: shape.drain_timeout,
            compress: shape.compress,
            rules,
            pools: shape.pools,
            answers: shape.answers,
            mirror_config: shape.mirror_config,
            mirror_in_force,
            mirror_stats: shape.mirror_stats,
            mirror_bp,
            standby_bp,
            set_cookie,
            gate: shape.gate,
            rate_limited: shape.rate_limited,
            limits: shape.limits,
            edits: shape.edits,
        }
    }
}

impl App {
    pub fn pool(&self, color: Color) -> &Arc<Pool> {
        &self.pools[color.index()]
    }

    /// The share of live-colour requests copied to the standby colour, as
    /// in force: the runtime state's, else the config's.
    pub fn mirror_percent(&self) -> f64 {
        f64::from(self.mirror_bp) / 100.0
    }

    /// The mirror percent in basis points of [`BUCKETS`] (0: off).
    pub fn mirror_bp(&self) -> u32 {
        self.mirror_bp
    }

    /// Are copies sent to `color` now? To the standby colour, while a
    /// mirror percent is in force.
    pub fn mirrors_to(&self, color: Color) -> bool {
        self.mirror_bp > 0 && color == self.state.standby()
    }

    /// Does any traffic go to `color` now? The live colour does unless the
    /// split sends everyone to standby; standby needs a share; either gets
    /// traffic from a rule that names it.
    pub fn receives_traffic(&self, color: Color) -> bool {
        let ruled = self
            .rules
            .rules()
            .iter()
            .any(|r| r.to == color && r.percent_bp > 0);
        if color == self.state.live {
            self.standby_bp < BUCKETS || ruled
        } else {
            self.standby_bp > 0 || ruled
        }
    }

    /// The rules, then the split, with the sticky bucket
    /// computed only if a partial rule or split needs it.
    pub fn decide(&self, req: &RequestView<'_>) -> Decision {
        let scan = self.rules.scan(req);
        // Slot 0 of the jar is the sticky cookie (see `RuleTable::new`).
        let sticky_cookie = match &self.sticky {
            Sticky::Cookie(name) => scan.cookies.get(0, name.as_bytes()),
            _ => None,
        };
        let new_cookie = (self.set_cookie
            && sticky_cookie.is_none()
            && matches!(self.sticky, Sticky::Cookie(_)))
        .then(CookieId::random);
        let mut memo = None;
        let mut bucket = || {
            *memo.get_or_insert_with(|| match (&self.sticky, sticky_cookie, new_cookie) {
                (Sticky::Cookie(_), Some(v), _) => scan
                    .cookies
                    .sticky_bucket()
                    .unwrap_or_else(|| sticky::bucket(v)),
                (Sticky::Cookie(_), None, Some(id)) => id.bucket(),
                (Sticky::Header(name), ..) => match req.headers.get(name) {
                    Some(v) => sticky::bucket(v.as_bytes()),
                    None => sticky::random_bucket(),
                },
                (Sticky::Ip, ..) => sticky::ip_bucket(req.client_ip),
                _ => sticky::random_bucket(),
            })
        };
        if let Some((index, rule)) = self.rules.first_match(req, &scan) {
            if rule.percent_bp >= BUCKETS || bucket() < rule.percent_bp {
                return Decision {
                    color: rule.to,
                    new_cookie,
                    placed: Placed::Rule(index as u32),
                };
            }
        }
        let (color, placed) = match self.standby_bp {
            0 => (self.state.live, Placed::Live),
            bp if bp >= BUCKETS || bucket() < bp => (self.state.standby(), Placed::Split),
            _ => (self.state.live, Placed::Split),
        };
        Decision {
            color,
            new_cookie,
            placed,
        }
    }
}

/// The outcome of [`App::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub color: Color,
    /// Set when the sticky cookie was missing and the app needs one: the
    /// fresh id to send back in `Set-Cookie`.
    pub new_cookie: Option<sticky::CookieId>,
    pub placed: Placed,
}

/// What placed a request on its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// The rule at this index of the app's rules.
    Rule(u32),
    /// The random split between live and standby (`standby_percent`).
    Split,
    /// No split: everything goes to the live colour.
    Live,
}

/// Everything the request path reads, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every change; `If-Match` compares against it.
    pub epoch: u64,
    pub apps: Vec<Arc<App>>,
    pub settings: Arc<Settings>,
    /// Host → apps, longest prefix first.
    exact: HostTable,
    wildcard: HostTable,
    catch_all: Vec<u32>,
}

/// Host names → apps. A handful of names are compared one by one (the
/// length check rejects most without reading them), which costs less than
/// hashing the request's host; more go through an FNV map (the keys are
/// fixed at build time, so SipHash's DoS resistance buys nothing).
#[derive(Debug, Default)]
struct HostTable {
    few: Vec<(Box<str>, Vec<u32>)>,
    many: FnvHashMap<String, Vec<u32>>,
}

/// Up to this many names, [`HostTable`] compares instead of hashing.
const FEW_HOSTS: usize = 8;

impl HostTable {
    fn new(map: FnvHashMap<String, Vec<u32>>) -> HostTable {
        if map.len() > FEW_HOSTS {
            return HostTable {
                few: Vec::new(),
                many: map,
            };
        }
        HostTable {
            few: map.into_iter().map(|(h, a)| (h.into(), a)).collect(),
            many: FnvHashMap::default(),
        }
    }

    fn get(&self, host: &str) -> Option<&Vec<u32>> {
        if self.many.is_empty() {
            self.few.iter().find(|(h, _)| **h == *host).map(|(_, a)| a)
        } else {
            self.many.get(host)
        }
    }

    fn is_empty(&self) -> bool {
        self.few.is_empty() && self.many.is_empty()
    }
}

impl Settings {
    fn from_config(config: &Config) -> Settings {
        Settings {
            limits: config.limits.clone(),
            color_header: config.server.color_header,
            trusted_proxies: config.server.trusted_proxies.clone(),
            proxy_protocol: config.server.proxy_protocol.clone(),
            request_id: config.server.request_id,
            request_id_header: config.server.request_id_header.clone(),
            access_log: (config.log.access != crate::config::AccessLog::Off)
                .then_some(config.log.format),
            access_query: config.log.query,
            upgrades: config.server.upgrades.clone(),
            answers: Arc::new(config.server.answers.clone()),
        }
    }
}

impl Shape {
    /// The shape of `app_cfg`, reusing what `old_app` has that the config
    /// did not change.
    fn build(
        app_cfg: &AppConfig,
        limits: &Limits,
        state: &AppState,
        old_app: Option<&App>,
    ) -> Shape {
        let name: Arc<str> = old_app
            .map(|a| a.name.clone())
            .unwrap_or_else(|| app_cfg.name.as_str().into());
        // Kept when unchanged, so that the pools are too.
        let answers = match old_app {
            Some(a) if *a.answers == app_cfg.answers => a.answers.clone(),
            _ => Arc::new(app_cfg.answers.clone()),
        };
        let pools = Color::ALL.map(|color| {
            let cfg = &app_cfg.pools[color.index()];
            let old_pool = old_app.map(|a| a.pool(color));
            match old_pool {
                Some(p) if p.config == *cfg && Arc::ptr_eq(&p.answers, &answers) => p.clone(),
                _ => Pool::build(color, cfg, old_pool, &name, &answers, state),
            }
            .with_overrides(&state.servers)
        });
        let rate_limited = old_app.map(|a| a.rate_limited.clone()).unwrap_or_default();
        Shape {
            name,
            hosts: app_cfg.hosts.clone(),
            path_prefix: app_cfg.path_prefix.clone(),
            sticky: app_cfg.sticky.clone(),
            drain_timeout: app_cfg.drain_timeout,
            compress: app_cfg.compress.clone().map(Arc::new),
            pools,
            answers,
            mirror_config: Arc::new(app_cfg.mirror.clone()),
            mirror_stats: old_app.map(|a| a.mirror_stats.clone()).unwrap_or_default(),
            gate: Gate::build(
                app_cfg,
                old_app.and_then(|a| a.gate.as_ref()),
                &rate_limited,
            ),
            rate_limited,
            limits: app_cfg.limits.over(limits),
            edits: Edits::of(app_cfg),
        }
    }
}

impl Pool {
    /// A new pool for `cfg`, keeping the servers and statistics of
    /// `old_pool` that still fit.
    fn build(
        color: Color,
        cfg: &PoolConfig,
        old_pool: Option<&Arc<Pool>>,
        app: &Arc<str>,
        answers: &Arc<OwnAnswers>,
        state: &AppState,
    ) -> Arc<Pool> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| Pool::server_for(color, cfg, s, old_pool, app))
            .collect();
        let stats = old_pool.map(|p| p.stats.clone()).unwrap_or_default();
        Arc::new(Pool::new(
            color,
            cfg.clone(),
            servers,
            stats,
            answers.clone(),
            &state.servers,
        ))
    }

    /// Server `s` of `cfg`: the one in `old_pool` if it is reached the same
    /// way, else a new one.
    fn server_for(
        color: Color,
        cfg: &PoolConfig,
        s: &ServerConfig,
        old_pool: Option<&Arc<Pool>>,
        app: &Arc<str>,
    ) -> Arc<Server> {
        let transport = Transport {
            tls: cfg.tls.as_ref().map(|t| {
                Arc::new(ServerTls {
                    pool: t.clone(),
                    name: t.name_for(s),
                })
            }),
            proxy_protocol: cfg.proxy_protocol,
        };
        // Pooled connections are by server: one reached another way is
        // another server.
        old_pool
            .and_then(|p| {
                p.servers.iter().find(|o| {
                    o.addr == s.addr
                        && o.weight == s.weight
                        && o.protocol == cfg.protocol
                        && o.transport == transport
                })
            })
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Server::new(
                    app.clone(),
                    color,
                    s.addr,
                    s.weight,
                    cfg.protocol,
                    transport,
                ))
            })
    }
}

impl Snapshot {
    /// Build a snapshot of `config` with the runtime `states` (apps missing
    /// from `states` take the config's initial values). Servers, pools and
    /// statistics of `old` are reused where the config did not change them,
    /// so health, counters and connection pools survive.
    pub fn build(
        config: &Config,
        states: &BTreeMap<String, AppState>,
        old: Option<&Snapshot>,
        epoch: u64,
    ) -> Result<Snapshot, Vec<String>> {
        let mut errors = Vec::new();
        let mut apps = Vec::with_capacity(config.apps.len());
        for app_cfg in &config.apps {
            let state = states
                .get(&app_cfg.name)
                .cloned()
                .unwrap_or_else(|| AppState::initial(app_cfg));
            let old_app = old.and_then(|o| o.app(&app_cfg.name));
            let shape = Shape::build(app_cfg, &config.limits, &state, old_app.map(|a| &**a));
            match App::assemble(shape, state, old_app.map(|a| &*a.rules)) {
                Ok(app) => apps.push(Arc::new(app)),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let settings = Arc::new(Settings::from_config(config));
        Ok(Snapshot::index(apps, settings, epoch))
    }

    /// The same topology with some apps' runtime state replaced: what a
    /// flip, shift or rules change stores. Pools and servers are shared.
    pub fn with_states(
        &self,
        states: &BTreeMap<String, AppState>,
        epoch: u64,
    ) -> Result<Snapshot, Vec<String>> {
        let mut errors = Vec::new();
        let apps = self
            .apps
            .iter()
            .map(|app| match states.get(&*app.name) {
                Some(state) if *state != app.state => {
                    let shape = Shape {
                        name: app.name.clone(),
                        hosts: app.hosts.clone(),
                        path_prefix: app.path_prefix.clone(),
                        sticky: app.sticky.clone(),
                        drain_timeout: app.drain_timeout,
                        compress: app.compress.clone(),
                        pools: app.pools.clone().map(|p| p.with_overrides(&state.servers)),
                        answers: app.answers.clone(),
                        mirror_config: app.mirror_config.clone(),
                        mirror_stats: app.mirror_stats.clone(),
                        gate: app.gate.clone(),
                        rate_limited: app.rate_limited.clone(),
                        limits: app.limits,
                        edits: app.edits.clone(),
                    };
                    if state.rules == app.state.rules {
                        Arc::new(App::with_rules(shape, state.clone(), app.rules.clone()))
                    } else {
                        match App::assemble(shape, state.clone(), Some(&app.rules)) {
                            Ok(new) => Arc::new(new),
                            Err(e) => {
                                errors.extend(e);
                                app.clone()
                            }
                        }
                    }
                }
                _ => app.clone(),
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Snapshot::index(apps, self.settings.clone(), epoch))
    }

    fn index(apps: Vec<Arc<App>>, settings: Arc<Settings>, epoch: u64) -> Snapshot {
        let mut exact: FnvHashMap<String, Vec<u32>> = FnvHashMap::default();
        let mut wildcard: FnvHashMap<String, Vec<u32>> = FnvHashMap::default();
        let mut catch_all = Vec::new();
        for (i, app) in apps.iter().enumerate() {
            if app.hosts.is_empty() {
                catch_all.push(i as u32);
            }
            for h in &app.hosts {
                match h {
                    HostPattern::Exact(n) => exact.entry(n.clone()).or_default().push(i as u32),
                    HostPattern::Wildcard(s) => {
                        wildcard.entry(s.clone()).or_default().push(i as u32)
                    }
                }
            }
        }
        // Longest prefix first, so the first prefix that matches wins.
        let by_prefix = |v: &mut Vec<u32>| {
            v.sort_by_key(|i| std::cmp::Reverse(apps[*i as usize].path_prefix.len()))
        };
        exact.values_mut().for_each(by_prefix);
        wildcard.values_mut().for_each(by_prefix);
        by_prefix(&mut catch_all);
        Snapshot {
            epoch,
            apps,
            settings,
            exact: HostTable::new(exact),
            wildcard: HostTable::new(wildcard),
            catch_all,
        }
    }

    pub fn app(&self, name: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| &*a.name == name)
    }

    /// The app for a host (case-insensitive, port ignored):
    /// exact host names first, then `*.` wildcards from the longest suffix,
    /// then the catch-all apps; within each, the longest matching
    /// `path_prefix`.
    pub fn find_app(&self, host: &str, path: &str) -> Option<&Arc<App>> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        let pick = |list: &Vec<u32>| {
            list.iter()
                .map(|i| &self.apps[*i as usize])
                .find(|a| super::rule::under_prefix(path, &a.path_prefix))
        };
        if let Some(host) = host {
            if let Some(app) = self.exact.get(host).and_then(pick) {
                return Some(app);
            }
            if !self.wildcard.is_empty() {
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(app) = self.wildcard.get(rest).and_then(pick) {
                        return Some(app);
                    }
                }
            }
        }
        pick(&self.catch_all)
    }
}

/// Strip the port (and IPv6 brackets) and lower-case into `buf` when
/// needed. `None` for an empty or oversized host.
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        // `name:digits` → `name`, by a scan from the end (ports are short).
        let b = host.as_bytes();
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        match b.len().checked_sub(digits + 1) {
            Some(colon) if b[colon] == b':' => &host[..colon],
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_interleaves_by_weight() {
        assert_eq!(smooth_wrr(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_wrr(&[2, 1]), vec![0, 1, 0]);
        let s = smooth_wrr(&[5, 1, 1]);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 5);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[0, 0]), vec![0]);
        assert_eq!(smooth_wrr(&[]), vec![0]);
    }

    #[test]
    fn a_change_that_leaves_the_rules_alone_shares_their_compiled_table() {
        let config = crate::config::parse_config(
            r#"
[apps.shop]
[[apps.shop.rules]]
name = "mobile"
user_agent = "(?i)android|iphone"
to = "green"
[apps.shop.blue]
servers = ["127.0.0.1:1"]
[apps.shop.green]
servers = ["127.0.0.1:2"]
"#,
            None,
        )
        .unwrap();
        let mut states: BTreeMap<String, AppState> = config
            .apps
            .iter()
            .map(|a| (a.name.clone(), AppState::initial(a)))
            .collect();
        let first = Snapshot::build(&config, &states, None, 1).unwrap();
        let shop = |s: &Snapshot| s.app("shop").unwrap().clone();

        // A flip and a shift: the same table, so nothing is compiled again
        // and what connections remember about it stays valid.
        let st = states.get_mut("shop").unwrap();
        st.live = st.live.other();
        st.standby_percent = 12.5;
        let flipped = first.with_states(&states, 2).unwrap();
        assert_eq!(shop(&flipped).state.live, Color::Green);
        assert!(Arc::ptr_eq(&shop(&first).rules, &shop(&flipped).rules));

        // New rules: a new table.
        states.get_mut("shop").unwrap().rules.clear();
        let ruleless = flipped.with_states(&states, 3).unwrap();
        assert!(!Arc::ptr_eq(&shop(&flipped).rules, &shop(&ruleless).rules));
        assert!(shop(&ruleless).rules.rules().is_empty());
    }

    #[test]
    fn hosts_are_normalized() {
        let mut b = [0u8; 256];
        assert_eq!(
            normalize_host("Shop.Example.COM:8080", &mut b),
            Some("shop.example.com")
        );
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("[::1]:80", &mut b), Some("::1"));
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("example.com.", &mut b), Some("example.com"));
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("example.com:", &mut b), Some("example.com"));
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("80", &mut b), Some("80"));
        let mut b = [0u8; 256];
        assert_eq!(normalize_host(":80", &mut b), None);
    }
}
