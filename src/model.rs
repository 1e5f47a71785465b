//! The shared vocabulary: what the config, the routing table, the
//! control plane and the admin API all speak of — the two colours, a
//! canary rule as written, an app's runtime state. Plain data with serde;
//! it imports no other module of the crate, so every module may import it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One of the two pools of every app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The other colour: blue's standby is green and the other way round.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// Index into `[blue, green]` arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canary rule as written in the config, in the state file and in the
/// admin API (`PUT /v1/apps/{app}/rules`). The same type in all three places
/// so a rule is validated by one function wherever it comes from. Fields
/// in alphabetical order: the admin API lists keys so (see [`crate::api`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `true`: the rule has no condition on purpose and takes every
    /// request (of its `percent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NameValue>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// A limit of the rule's own on the requests it places, besides the
    /// app's `rate_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// A rule's `rate_limit = { key, rate, burst, max_keys }` as written,
/// checked by the same function as an app's. Unknown fields are refused
/// here (an app's are reported with a suggestion by the config's own
/// reader), so that an API call with a typo changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// What operators change at runtime for one app: the state file
/// owns it, the config only gives its initial value. Fields in
/// alphabetical order, as the admin API's history lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    pub live: Color,
    /// What shadow copies are compared by, as set at runtime (`cutover
    /// mirror APP PERCENT --compare status,body`). `None`: the config's
    /// `[apps.NAME.mirror] compare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_compare: Option<Vec<Compared>>,
    /// The share (0-100) of live-colour requests copied to the standby
    /// colour, as set at runtime. `None`: the config's `[apps.NAME.mirror]
    /// percent` (0 when the app has no such table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<f64>,
    pub rules: Vec<RuleSpec>,
    /// Who owns the rules: `false` while they are the config file's (an
    /// edit of the file's rules applies on reload and restart), `true` once
    /// they were changed at runtime (the file's rules then differ only as
    /// reported drift, applied on request). A state file written before
    /// this was recorded reads as `true`: nothing there is replaced
    /// silently.
    #[serde(default = "runtime_owned")]
    pub runtime_rules: bool,
    /// Servers an operator took out of rotation or reweighted at runtime,
    /// by `COLOR/ADDR` (`blue/10.0.0.1:8080`). A server not named here is
    /// ready with its configured weight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, ServerSetting>,
    pub standby_percent: f64,
}

/// What a shadow copy's answer is compared with the live one by: one
/// item of `[apps.NAME.mirror] compare` (and of `--compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compared {
    /// The status class (2xx, 3xx, ...); always compared.
    Status,
    /// The body, up to `max_body` bytes.
    Body,
    /// The response's end-to-end header fields, but those in
    /// `ignore_headers` and those that differ by nature (`Date`, framing).
    Headers,
}

impl Compared {
    pub const ALL: [Compared; 3] = [Compared::Status, Compared::Body, Compared::Headers];

    pub fn as_str(self) -> &'static str {
        match self {
            Compared::Status => "status",
            Compared::Body => "body",
            Compared::Headers => "headers",
        }
    }

    /// One item as written in the config or on the command line.
    pub fn parse(s: &str) -> Option<Compared> {
        Compared::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A list as `--compare` takes it: `status,body`.
    pub fn parse_list(s: &str) -> Result<Vec<Compared>, String> {
        s.split(',')
            .map(|w| {
                Compared::parse(w.trim()).ok_or_else(|| {
                    format!("must be status, body or headers, comma-separated; got {w:?}")
                })
            })
            .collect()
    }

    /// A list as status shows it: `status, body`.
    pub fn join(list: &[Compared]) -> String {
        let words: Vec<&str> = list.iter().map(|c| c.as_str()).collect();
        words.join(", ")
    }
}

fn runtime_owned() -> bool {
    true
}

/// One server's runtime setting (HAProxy's `set server ... state` and
/// `set weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSetting {
    pub state: ServerState,
    /// Replaces the configured weight while set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Whether a server takes new requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// In rotation.
    #[default]
    Ready,
    /// No new requests; requests in flight finish, idle connections close.
    Drain,
    /// Drained, and reported unhealthy: down for maintenance.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }
}

/// The key of a server in [`AppState::servers`].
pub fn server_key(color: Color, addr: SocketAddr) -> String {
    format!("{color}/{addr}")
}

impl AppState {
    /// The colour that receives the `standby_percent` share.
    pub fn standby(&self) -> Color {
        self.live.other()
    }
}

/// Where a progressive rollout is (`control::rollout` moves it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Preflight,
    Shadow,
    Progressing,
    Promoting,
    Baking,
    Succeeded,
    Paused,
    RollingBack,
    Failed,
    Aborted,
    Superseded,
}

impl RolloutPhase {
    pub const ALL: [RolloutPhase; 11] = [
        RolloutPhase::Preflight,
        RolloutPhase::Shadow,
        RolloutPhase::Progressing,
        RolloutPhase::Promoting,
        RolloutPhase::Baking,
        RolloutPhase::Succeeded,
        RolloutPhase::Paused,
        RolloutPhase::RollingBack,
        RolloutPhase::Failed,
        RolloutPhase::Aborted,
        RolloutPhase::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Preflight => "preflight",
            RolloutPhase::Shadow => "shadow",
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Promoting => "promoting",
            RolloutPhase::Baking => "baking",
            RolloutPhase::Succeeded => "succeeded",
            RolloutPhase::Paused => "paused",
            RolloutPhase::RollingBack => "rolling_back",
            RolloutPhase::Failed => "failed",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::Superseded => "superseded",
        }
    }

    /// Not yet ended: it holds the app's routing.
    pub fn is_active(self) -> bool {
        !matches!(
            self,
            RolloutPhase::Succeeded
                | RolloutPhase::Failed
                | RolloutPhase::Aborted
                | RolloutPhase::Superseded
        )
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One move, as the rollout's own record keeps it (fields in alphabetical
/// order, as the admin API lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutTransition {
    pub from: RolloutPhase,
    /// Green's share of split traffic after it.
    pub percent: f64,
    pub reason: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub to: RolloutPhase,
}

/// What may count as slow (a rollout's `max_slow`, an app's
/// `guard_max_slow`), in milliseconds: from 1 ms to an hour.
pub const MAX_SLOW_MS: (u64, u64) = (1, 3_600_000);

/// An app's `guard_max_slow` when it sets none: a guard counts a response
/// whose head takes longer than this as slow.
pub const DEFAULT_GUARD_MAX_SLOW: std::time::Duration = std::time::Duration::from_millis(500);

/// `text` as a duration within `range` (milliseconds, both ends
/// included), or why not; the message leads with the text as given.
pub fn duration_within(text: &str, range: (u64, u64)) -> Result<std::time::Duration, String> {
    let ms = std::time::Duration::from_millis;
    let (min, max) = (ms(range.0), ms(range.1));
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d < min => Err(format!(
            "{text:?} is shorter than {}",
            humantime::format_duration(min)
        )),
        Ok(d) if d > max => Err(format!(
            "{text:?} is longer than {}",
            humantime::format_duration(max)
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{text:?} is not a duration like 60s: {e}")),
    }
}

/// An app's `guard_max_slow`: `"off"` (slowness not judged, `None`) or
/// what counts as slow, as a rollout's `max_slow` (1ms to 1h).
pub fn guard_max_slow(text: &str) -> Result<Option<std::time::Duration>, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    duration_within(text, MAX_SLOW_MS)
        .map(Some)
        .map_err(|e| format!("{e} (or \"off\")"))
}

/// The longest guard window a flip or shift may ask for.
pub const GUARD_MAX: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A guard window as the config file, the admin API and the command line
/// give it: `"off"` (no guard, `Duration::ZERO`) or a duration from 1s to
/// a day (`"2m"`, `"30s"`).
pub fn guard_window(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(std::time::Duration::ZERO);
    }
    match humantime::parse_duration(text) {
        Ok(d) if d < std::time::Duration::from_secs(1) => Err(format!(
            "{text:?} is shorter than 1s (say \"off\" for no guard)"
        )),
        Ok(d) if d > GUARD_MAX => Err(format!("{text:?} is longer than a day (\"24h\")")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is neither \"off\" nor a duration like \"2m\" ({e})"
        )),
    }
}
