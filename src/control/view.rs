//! The snapshot as the admin API shows it: [`status`] turns the routing
//! snapshot, the epoch and the rollouts into an [`api::Status`], the
//! document of `GET /v1/status` and of every change's answer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use crate::api;
use crate::config::Color;
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
    api::App {
        drift,
        hosts: app.hosts.iter().map(|h| h.to_string()).collect(),
        live: app.state.live,
        mirror: mirror(app),
        path_prefix: app.path_prefix.to_string(),
        pools: api::Pools {
            blue: pool(app, Color::Blue),
            green: pool(app, Color::Green),
        },
        rollout,
        rules: app.state.rules.clone(),
        rules_owner: owner,
        standby: app.state.standby(),
        standby_percent: app.state.standby_percent,
        sticky: app.sticky.to_string(),
    }
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
        })
        .collect();
    // Where the percent comes from: set at runtime, or the config's.
    let source = if app.state.mirror_percent.is_some() {
        "runtime"
    } else {
        "config"
    };
    api::Mirror {
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
