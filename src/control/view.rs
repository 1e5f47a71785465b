//! The snapshot as the admin API shows it: [`status`] turns the routing
//! snapshot, the epoch and the rollouts into an [`api::Status`], the
//! document of `GET /v1/status` and of every change's answer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use crate::api;
use crate::config::Color;
use crate::route::access::Access;
use crate::route::rate::RateLimiter;
use crate::route::snapshot::ServerState;
use crate::route::{App, Pool, Snapshot};

/// Everything a status document shows beside the snapshot.
pub struct Extras<'a> {
    pub epoch: u64,
    /// A change's answer: whether it was a dry run, and the apps it changed.
    pub change: Option<(bool, Vec<String>)>,
    /// Apps whose runtime rules differ from the config file's.
    pub drift: &'a [String],
    /// Each app's latest rollout.
    pub rollouts: BTreeMap<String, api::Rollout>,
    pub process: &'a super::ProcessInfo,
    pub fleet: Option<api::FleetLink>,
    pub acme: Option<api::Acme>,
}

/// The status document: every app with its state, rules and pools.
pub fn status(snap: &Snapshot, mut extras: Extras<'_>) -> api::Status {
    let apps = snap
        .apps
        .iter()
        .map(|a| {
            let drift = extras.drift.iter().any(|d| **d == *a.name);
            let rollout = extras.rollouts.remove(&*a.name);
            (a.name.to_string(), app(a, drift, rollout))
        })
        .collect();
    let (dry_run, changed) = match extras.change {
        Some((dry, changed)) => (Some(dry), Some(changed)),
        None => (None, None),
    };
    let p = extras.process;
    api::Status {
        acme: extras.acme,
        apps,
        changed,
        dry_run,
        epoch: extras.epoch,
        fleet: extras.fleet,
        guard: None,
        process: Some(api::Process {
            pid: p.pid,
            started: p.started.clone(),
            upgrades: p.upgrades,
            version: p.version.to_string(),
        }),
        waited: None,
    }
}

fn app(app: &App, drift: bool, rollout: Option<api::Rollout>) -> api::App {
    let owner = if app.state.runtime_rules {
        api::RulesOwner::Runtime
    } else {
        api::RulesOwner::File
    };
    let gate = app.gate.as_deref();
    let edits = app.edits.as_deref();
    let paths = edits.and_then(|e| e.paths.as_deref());
    api::App {
        access: gate.and_then(|g| g.access.as_deref()).map(access),
        drift,
        hosts: app.hosts.iter().map(|h| h.to_string()).collect(),
        limits: edits.and_then(|e| own_limits(&e.own_limits)),
        request_headers: edits.and_then(|e| header_rules(e.request_headers.as_deref())),
        response_headers: edits.and_then(|e| header_rules(e.response_headers.as_deref())),
        rewrite: paths.map_or(vec![], |p| {
            p.rules
                .iter()
                .map(|r| api::Rewrite {
                    from: r.from.as_str().to_string(),
                    to: r.to.clone(),
                })
                .collect()
        }),
        strip_prefix: paths.is_some_and(|p| p.strip.is_some()),
        live: app.state.live,
        mirror: mirror(app),
        path_prefix: app.path_prefix.to_string(),
        pools: api::Pools {
            blue: pool(app, Color::Blue),
            green: pool(app, Color::Green),
        },
        rate_limit: gate.and_then(|g| g.rate.as_deref()).map(rate_limit),
        rollout,
        rule_rate_limits: rule_rate_limits(app),
        rules: app.state.rules.clone(),
        rules_owner: owner,
        standby: app.state.standby(),
        standby_percent: app.state.standby_percent,
        sticky: app.sticky.to_string(),
    }
}

/// `allow`, `deny` and `basic_auth`, without the hashes.
fn access(a: &Access) -> api::Access {
    let nets = |list: &[ipnet::IpNet]| list.iter().map(|n| n.to_string()).collect();
    let c = &a.config;
    api::Access {
        allow: nets(&c.allow),
        basic_auth: c.basic_auth.as_ref().map(|b| api::BasicAuth {
            forward: b.forward,
            realm: b.realm.clone(),
            users: b.users.len() as u64,
            users_file: b.users_file.display().to_string(),
        }),
        deny: nets(&c.deny),
    }
}

fn rate_limit(r: &RateLimiter) -> api::RateLimit {
    let c = &r.config;
    api::RateLimit {
        burst: c.burst,
        key: c.key.to_string(),
        keys: r.keys(std::time::Instant::now()) as u64,
        limited: r.limited.load(Relaxed),
        max_keys: c.max_keys,
        rate: c.rate.clone(),
    }
}

/// The rules' own limits, by rule name; each `limited` is its own table's
/// count (the app's `limited` sums every table of the app).
fn rule_rate_limits(app: &App) -> BTreeMap<String, api::RateLimit> {
    let rules = app.rules.rules().iter().enumerate();
    rules
        .filter_map(|(i, rule)| {
            let r = app.rules.limiter(i)?;
            let view = api::RateLimit {
                limited: r.refused(),
                ..rate_limit(r)
            };
            Some((rule.name.clone(), view))
        })
        .collect()
}

/// An app's own limits keys; `None` when it has none.
fn own_limits(l: &crate::config::AppLimits) -> Option<api::AppLimits> {
    let text =
        |d: Option<std::time::Duration>| d.map(|d| humantime::format_duration(d).to_string());
    let out = api::AppLimits {
        client_body_timeout: text(l.client_body_timeout),
        max_body_bytes: l.max_body_bytes,
        upstream_connect_timeout: text(l.upstream_connect_timeout),
        upstream_read_timeout: text(l.upstream_read_timeout),
        upstream_response_timeout: text(l.upstream_response_timeout),
    };
    (out != api::AppLimits::default()).then_some(out)
}

fn header_rules(rules: Option<&crate::config::HeaderRules>) -> Option<api::HeaderRules> {
    let r = rules?;
    let pairs = |list: &[(http::HeaderName, crate::config::edits::Template)]| {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.text.clone()))
            .collect()
    };
    Some(api::HeaderRules {
        add: pairs(&r.add),
        remove: r.remove.iter().map(|n| n.to_string()).collect(),
        set: pairs(&r.set),
    })
}

/// Shadow traffic: the percent in force, the copies compared, and the
/// last differences, newest first.
fn mirror(app: &App) -> api::Mirror {
    let stats = &app.mirror_stats;
    let (compared, mismatched) = stats.compared();
    let differences = stats
        .differences()
        .into_iter()
        .map(|d| api::MirrorDifference {
            error: d.error.map(str::to_string),
            live_status: d.live_status,
            method: d.method,
            outcome: d.outcome.to_string(),
            path: d.path,
            shadow_status: d.shadow_status,
            time: d.time,
            at: d.divergence.as_ref().map(|v| v.at.clone()),
            live_value: d.divergence.as_ref().and_then(|v| v.live_value.clone()),
            shadow_value: d.divergence.and_then(|v| v.shadow_value),
        })
        .collect();
    // Where the percent comes from: set at runtime, or the config's.
    let source = if app.state.mirror_percent.is_some() {
        "runtime"
    } else {
        "config"
    };
    let compare_source = match app.state.mirror_compare {
        Some(_) => "runtime",
        None => "config",
    };
    api::Mirror {
        compare: app.mirror_in_force.compared(),
        compare_source: compare_source.into(),
        compared,
        differences,
        in_flight: stats.in_flight.load(Relaxed),
        mismatched,
        percent: app.mirror_percent(),
        percent_source: source.into(),
    }
}

fn pool(app: &App, color: Color) -> api::Pool {
    let pool = app.pool(color);
    api::Pool {
        health_checked: pool.health().is_some(),
        in_flight: pool.stats.in_flight.load(Relaxed),
        receives_traffic: app.receives_traffic(color),
        servers: servers(pool),
        tunnels: pool.stats.tunnels.load(Relaxed),
    }
}

fn servers(pool: &Pool) -> Vec<api::Server> {
    pool.servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (state, weight) = pool.setting(i);
            api::Server {
                addr: s.addr,
                connect_errors: s.connect_errors.load(Relaxed),
                // A server in maintenance reports unhealthy, whatever its checks say.
                healthy: s.is_healthy() && state != ServerState::Maint,
                in_flight: s.in_flight.load(Relaxed),
                open_connections: s.open_connections.load(Relaxed),
                state,
                weight,
            }
        })
        .collect()
}
