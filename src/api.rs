//! The admin API's answers as types: the daemon ([`crate::control::admin`])
//! serializes them and the CLI ([`crate::client`]) deserializes the same
//! ones, so the two cannot drift apart unnoticed.
//!
//! Every struct lists its fields in alphabetical order: the API has
//! always written its keys so, and serializing in declaration order keeps
//! that without building a `serde_json::Value` on the way. Fields a
//! daemon of an older release did not send are `#[serde(default)]`, so
//! the CLI still reads its answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    AppState, Color, Compared, RolloutPhase, RolloutTransition, RuleSpec, ServerState,
};

/// `GET /v1/status`, and the answer to every change (with `changed` and
/// `dry_run`) and to `POST /v1/reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Every app, by name.
    pub apps: BTreeMap<String, App>,
    /// A change's answer: the apps it changed (or would change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    /// A change's answer: `true` when nothing was changed, only shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    pub epoch: u64,
    /// `[tls.acme]`: the certificate that renews itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<Acme>,
    /// This instance in its fleet; absent with the file backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetLink>,
    /// A flip's or shift's answer: each app a guard now watches, and
    /// until when (see `docs/rollouts.md`, guarded changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<BTreeMap<String, Guard>>,
    #[serde(default)]
    pub process: Option<Process>,
    /// A change made with `?wait=`: which instances serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited: Option<Waited>,
}

/// `[tls.acme]` in status: the certificate that renews itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acme {
    pub domains: Vec<String>,
    /// Attempts that failed since the last success.
    pub failures: u64,
    pub last_error: Option<String>,
    /// RFC 3339: the next attempt (a renewal, or a retry).
    pub next_renewal: Option<String>,
    /// RFC 3339: when the certificate in use expires; `None` before the
    /// first is obtained.
    pub not_after: Option<String>,
}

/// A guard watching a change: it may revert the change until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// What the guard counts as slow (the app's `guard_max_slow`, `500ms`);
    /// absent: slowness is not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slow: Option<String>,
    /// RFC 3339, UTC.
    pub until: String,
    pub window_seconds: u64,
}

/// How an instance stands with its fleet's shared store (etcd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetLink {
    pub cluster: String,
    /// Reaching etcd now.
    pub connected: bool,
    /// This instance judges the fleet's rollouts.
    pub judge: bool,
    /// Seconds since this instance last knew it served the fleet's
    /// latest state (0 while connected and in step).
    pub lag_seconds: f64,
    /// Why etcd could not be reached or a write failed, last time.
    pub last_error: Option<String>,
    /// This instance's name in the fleet.
    pub instance: String,
}

/// The answer's part about a change made with `?wait=`: the instances
/// that serve its epoch, and those that did not within the wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waited {
    pub confirmed: Vec<String>,
    pub epoch: u64,
    pub missing: Vec<String>,
}

/// `GET /v1/fleet`: every instance of the fleet and what it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// `etcd`, or `file` for a lone instance.
    pub backend: String,
    pub cluster: Option<String>,
    pub connected: bool,
    /// The fleet's latest epoch, as this instance knows it.
    pub epoch: u64,
    pub instances: Vec<Instance>,
}

/// One instance as it reports itself to the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The admin API's address, for reaching it.
    pub admin: Option<String>,
    /// Per app the instance serves: the epoch it serves it at.
    pub apps: BTreeMap<String, u64>,
    pub epoch: u64,
    pub id: String,
    /// Serves the fleet's latest epoch.
    pub in_sync: bool,
    /// Holds the rollout judge's lease.
    #[serde(default)]
    pub judge: bool,
    pub last_error: Option<String>,
    pub pid: u32,
    /// RFC 3339, UTC: when it last reported.
    pub updated: String,
    pub version: String,
}

/// Who serves: the daemon's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
    /// Upgrades since the listening sockets were first bound.
    pub upgrades: u64,
    pub version: String,
}

/// One app in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// `allow`, `deny` and `basic_auth`; absent when none is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// The runtime rules differ from the config file's (`cutover diff`).
    #[serde(default)]
    pub drift: bool,
    pub hosts: Vec<String>,
    /// The app's own `[limits]` keys; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AppLimits>,
    pub live: Color,
    #[serde(default)]
    pub mirror: Mirror,
    pub path_prefix: String,
    pub pools: Pools,
    /// `rate_limit`; absent when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Header rules in force (the app's own or `[server]`'s); absent when
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRules>,
    /// `rewrite`, as written; absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<Rewrite>,
    /// The latest rollout, under way or ended; `null` when none ran.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Each rule's own `rate_limit` in force, by rule name, with its
    /// table's `keys` and `limited` (refused by that table since it was
    /// made); absent when no rule has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_rate_limits: BTreeMap<String, RateLimit>,
    pub rules: Vec<RuleSpec>,
    /// `runtime` once the rules were changed at runtime, else `file`.
    #[serde(default)]
    pub rules_owner: RulesOwner,
    pub standby: Color,
    pub standby_percent: f64,
    pub sticky: String,
    /// `strip_prefix = true`; absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
}

/// An app's own limits for one request; durations as written in the
/// config's units (`"250ms"`, `"2s"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_body_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_read_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_response_timeout: Option<String>,
}

/// `request_headers` / `response_headers`: field names lowercase, values
/// as written (variables unexpanded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
}

/// One `rewrite` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
}

/// Who may reach an app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    pub deny: Vec<String>,
}

/// An app's `basic_auth`, without its hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    pub forward: bool,
    pub realm: String,
    /// How many users the file holds.
    pub users: u64,
    pub users_file: String,
}

/// An app's `rate_limit` and what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub burst: u32,
    /// `client_ip`, `header:NAME` or `cookie:NAME`.
    pub key: String,
    /// Keys the limiter holds now (their buckets not yet full again).
    pub keys: u64,
    /// Requests refused with 429 so far.
    pub limited: u64,
    pub max_keys: u32,
    pub rate: String,
}

/// Whose rules an app runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesOwner {
    /// The config file's: an edit of the file applies on reload.
    #[default]
    File,
    /// Changed at runtime: the file's rules are reported as drift.
    Runtime,
}

/// Shadow traffic of one app: the percent in force, the copies compared,
/// and the last differences, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    /// What copies are compared by now: `["status", "body"]`.
    #[serde(default)]
    pub compare: Vec<Compared>,
    /// `runtime` when `compare` was set at runtime, else `config`.
    #[serde(default)]
    pub compare_source: String,
    pub compared: u64,
    pub differences: Vec<MirrorDifference>,
    pub in_flight: u64,
    pub mismatched: u64,
    pub percent: f64,
    /// `runtime` when set at runtime, else `config`.
    pub percent_source: String,
}

/// One shadow copy whose answer differed from the live one (or failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorDifference {
    /// For an `error`: `connect`, `timeout` or `upstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub live_status: u16,
    pub method: String,
    /// `status_differs`, `body_differs`, `headers_differ` or `error`.
    pub outcome: String,
    /// Without its query.
    pub path: String,
    /// `None` when the standby gave no answer.
    pub shadow_status: Option<u16>,
    /// RFC 3339, UTC, to the millisecond.
    pub time: String,
    /// For `body_differs` and `headers_differ`: where the answers first
    /// differ — a JSON path (`$.items[0].price`) when both bodies are
    /// JSON, `byte N` otherwise, `header NAME` for a header field.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The live answer's value there, cut to 64 bytes (`null`: it has
    /// none there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_value: Option<String>,
    /// The standby's value there, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_value: Option<String>,
}

/// An app's two pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pools {
    pub blue: Pool,
    pub green: Pool,
}

impl Pools {
    pub fn get(&self, color: Color) -> &Pool {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub health_checked: bool,
    pub in_flight: u64,
    /// The routing sends it some requests (split, rules or live).
    pub receives_traffic: bool,
    pub servers: Vec<Server>,
    pub tunnels: u64,
}

impl Pool {
    /// Does any server take new requests (in rotation and healthy)?
    pub fn any_usable(&self) -> bool {
        self.servers.iter().any(Server::usable)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub addr: SocketAddr,
    pub connect_errors: u64,
    /// Health checks pass; a server in maintenance reports `false`.
    pub healthy: bool,
    pub in_flight: u64,
    pub open_connections: u64,
    #[serde(default)]
    pub state: ServerState,
    pub weight: u32,
}

impl Server {
    /// In rotation and healthy: it takes new requests.
    pub fn usable(&self) -> bool {
        self.healthy && self.state == ServerState::Ready
    }
}

/// A progressive rollout, as status and the rollout calls show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub allow_low_traffic: bool,
    pub bake: String,
    pub baseline: Color,
    pub every: String,
    /// Percent.
    pub max_error_rate: f64,
    /// Percent.
    pub max_mismatch: f64,
    /// `null`: slowness is not judged.
    pub max_slow: Option<String>,
    /// Percent.
    pub max_slow_rate: f64,
    /// The target's share of traffic now.
    pub percent: f64,
    /// Why it is where it is (the last transition's reason).
    pub reason: String,
    pub shadow: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub state: RolloutPhase,
    /// The current step, from 1.
    pub step: usize,
    pub steps: Vec<f64>,
    pub target: Color,
    pub transitions: Vec<RolloutTransition>,
    /// What the judge sees in the current window; `null` once it ended.
    pub window: Option<Window>,
}

/// The judge's current window of a running rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub age_seconds: f64,
    pub blue: Counts,
    pub green: Counts,
    pub holding: bool,
    /// The judge's last word.
    pub judge: String,
}

/// One colour's responses in a [`Window`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub bad: u64,
    pub requests: u64,
    pub slow: u64,
}

/// `GET|POST /v1/apps/{app}/rollout` and its pause, resume and abort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutAnswer {
    pub epoch: u64,
    pub rollout: Rollout,
}

/// `GET /v1/apps/{app}/rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    pub epoch: u64,
    pub rules: Vec<RuleSpec>,
}

/// `GET /v1/history`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epoch: u64,
    pub history: Vec<HistoryEntry>,
}

/// One change, as recorded, with what it changed in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Who: the admin token's name, `local`, `reload` or `start`.
    pub actor: String,
    pub after: AppState,
    pub app: String,
    pub before: AppState,
    /// What changed, in words (computed when asked, not stored).
    #[serde(default)]
    pub changes: Vec<String>,
    pub epoch: u64,
    /// Forced past a health check.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// A flip or shift watched by a guard: the guard's window (`2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// `flip`, `shift`, `rules`, `rollback`, `reload`, `guard` (a guard's
    /// revert), …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub time: String,
}

/// `POST /v1/upgrade`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upgraded {
    pub old_pid: u32,
    pub pid: u32,
    pub upgraded: bool,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// Every refusal: what is wrong; with the current `epoch` for a stale
/// `If-Match` (412), and each error of a refused reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Error {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            epoch: None,
            error: message.into(),
            errors: None,
        }
    }
}

/// The body of flip, shift, mirror and rollback calls; every field is
/// optional (an empty body is `{}`). `force` and `dry_run` may be given
/// in the query string instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// Apply even if traffic would go to a pool with no healthy server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Answer with the state that would result; change nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Shift and mirror only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Mirror only: what copies are compared by from now on (`["status",
    /// "body"]`), in place of the config's `compare`. Absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Vec<Compared>>,
    /// Flip only: the colour to make live; an app already live there
    /// with no split is left as it is. Absent: each app to its standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Color>,
    /// Flip and shift only: the guard window, `"30s"`, or `"off"` for no
    /// guard. Absent: the app's `guard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
}

/// The body of `POST /v1/apps/{app}/servers/{addr}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerBody {
    /// Default `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServerState>,
    /// Replaces the configured weight while set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Needed only when the address is in both pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Color>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// The body of `POST /v1/reload`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadBody {
    /// Replace runtime rules that differ from the file's.
    #[serde(default)]
    pub take_rules_from_file: bool,
}

/// The body of `POST /v1/upgrade`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    /// Another binary than the installed one: allowed only from the
    /// daemon's own host, and only when its config says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<std::path::PathBuf>,
}

/// `GET /v1/events`, first event (`hello`): who is looking, and each
/// colour's last five minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The token's name (`local` with none configured).
    pub actor: String,
    /// `read` or `operate`: a page shows its buttons to `operate` only.
    pub role: String,
    /// Per app, per colour: one point a second, oldest first.
    pub series: BTreeMap<String, ColorSeries>,
}

/// One app's points, by colour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColorSeries {
    pub blue: Vec<Point>,
    pub green: Vec<Point>,
}

/// One colour's second: answers per second, the share of 5xx, and the
/// median and 99th percentile of the time to answer, estimated from the
/// duration histogram's buckets (`null` with no answer that second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix time, seconds.
    pub t: u64,
    pub rps: f64,
    /// Percent of that second's answers.
    pub error_pct: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests bound to the colour and not finished, at the sample.
    pub in_flight: u64,
}

/// `GET /v1/events`, every second (`tick`): the state as status shows
/// it, the last changes, the guards, the fleet, and each colour's newest
/// point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub epoch: u64,
    /// The fleet's instances; `null` with the file backend.
    pub fleet: Option<Fleet>,
    /// Each guard under way, by app.
    pub guards: BTreeMap<String, GuardView>,
    /// The newest changes, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Per app: this second's point of each colour.
    pub points: BTreeMap<String, ColorSeries>,
    pub status: Status,
    /// RFC 3339, UTC.
    pub time: String,
}

/// A guard watching a change, as its judge sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardView {
    /// The epoch of the change it watches.
    pub epoch: u64,
    /// `flip` or `shift`.
    pub kind: String,
    /// The colour that took the traffic, and its answers since.
    pub new: Color,
    pub new_counts: Counts,
    /// The colour that had it, and its answers in the baseline.
    pub old: Color,
    pub old_counts: Counts,
    pub remaining_seconds: u64,
    pub window_seconds: u64,
}
