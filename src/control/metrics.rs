//! `GET /metrics`, rendered at scrape time from the atomics the
//! request path updates and the control plane's own counters. Scraping is
//! off the request path; the request path only ever does atomic adds.
//! Exposition is prometheus-client's text encoder (OpenMetrics text).

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::ops::Control;
use crate::config::Color;
use crate::route::mirror::{Outcome, Skip};
use crate::route::snapshot::DURATION_BUCKETS;
use crate::route::{App, Snapshot, Timeout};

type Labels = Vec<(&'static str, String)>;
/// `(name, help, samples)`.
type Family<V> = (&'static str, &'static str, Vec<(Labels, V)>);

/// One histogram series: labels, sum, count, non-cumulative buckets.
#[derive(Debug)]
struct Histogram {
    labels: Labels,
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

/// One scrape's values, gathered first so that encoding owns its data.
#[derive(Debug)]
struct Gathered {
    counters: Vec<Family<u64>>,
    gauges: Vec<Family<f64>>,
    durations: Vec<Histogram>,
}

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every counter family, `(name, help)`, in the order they are exposed.
const COUNTERS: [(&str, &str); 13] = [
    ("cutover_requests", "Responses sent, by app, colour and status class."),
    ("cutover_client_aborts", "Requests whose client went away before sending all of it."),
    ("cutover_timeouts", "Requests and connections cut off by a timeout, by app and phase."),
    ("cutover_upstream_connect_errors", "Failed connects to an upstream server."),
    ("cutover_state_changes", "Runtime state changes applied, by kind."),
    ("cutover_config_reloads", "Config reloads, by result."),
    ("cutover_rollout_transitions", "Rollout moves since start, by app and the state moved to."),
    ("cutover_guard_reverts", "Flips and shifts undone by their guard since start, by app."),
    ("cutover_guard_slow_reverts", "Of those, the ones undone for slow responses, by app."),
    ("cutover_access_log_dropped", "Access log lines dropped because the writer's queue was full."),
    ("cutover_mirror", "Live requests sampled for shadow traffic, by how their copy to the standby colour ended."),
    ("cutover_mirror_skipped", "Sampled live requests not compared with a copy, by reason (their sum is outcome=\"skipped\")."),
    ("cutover_rate_limited", "Requests refused with 429 by the app's rate_limit or a rule's."),
];

/// Every gauge family, `(name, help)`, in the order they are exposed.
const GAUGES: [(&str, &str); 17] = [
    (
        "cutover_in_flight_requests",
        "Requests bound to a colour and not finished.",
    ),
    (
        "cutover_upstream_connections",
        "Open connections to an upstream server.",
    ),
    (
        "cutover_server_healthy",
        "1 if the server is healthy, else 0.",
    ),
    (
        "cutover_standby_percent",
        "Share of default traffic sent to the standby colour.",
    ),
    ("cutover_live", "1 for the live colour of an app, else 0."),
    (
        "cutover_mirror_percent",
        "Share of live-colour requests copied to the standby colour.",
    ),
    (
        "cutover_mirror_in_flight",
        "Copies to the standby colour under way.",
    ),
    ("cutover_tunnels", "Open upgraded (WebSocket) tunnels."),
    (
        "cutover_rollout_state",
        "1 for the state an app's latest rollout is in, else 0.",
    ),
    (
        "cutover_rollout_step_percent",
        "The rolled-out colour's share of traffic in the app's latest rollout.",
    ),
    ("cutover_downstream_connections", "Open client connections."),
    (
        "cutover_config_drift",
        "1 while the app's runtime rules differ from the config file's.",
    ),
    ("cutover_state_epoch", "Epoch of the runtime state."),
    (
        "cutover_acme_certificate_expiry_seconds",
        "Unix time at which the ACME certificate in use expires.",
    ),
    (
        "cutover_acme_failures",
        "ACME attempts that failed since the last success.",
    ),
    (
        "cutover_fleet_connected",
        "1 while this instance reaches its fleet's state store (etcd), else 0.",
    ),
    (
        "cutover_fleet_lag_seconds",
        "Seconds since this instance last knew it served its fleet's latest state (0 when in step).",
    ),
];

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Gathered {
    fn new() -> Gathered {
        Gathered {
            counters: COUNTERS.iter().map(|(n, h)| (*n, *h, Vec::new())).collect(),
            gauges: GAUGES.iter().map(|(n, h)| (*n, *h, Vec::new())).collect(),
            durations: Vec::new(),
        }
    }

    /// A sample of the counter family `name` (one of [`COUNTERS`]).
    fn count(&mut self, name: &str, labels: Labels, v: u64) {
        let family = self.counters.iter_mut().find(|f| f.0 == name);
        family.expect("a counter of COUNTERS").2.push((labels, v));
    }

    /// A sample of the gauge family `name` (one of [`GAUGES`]).
    fn gauge(&mut self, name: &str, labels: Labels, v: f64) {
        let family = self.gauges.iter_mut().find(|f| f.0 == name);
        family.expect("a gauge of GAUGES").2.push((labels, v));
    }
}

fn gather(ctl: &Control) -> Gathered {
    let snap = ctl.shared.snapshot.load();
    let mut g = Gathered::new();
    for app in &snap.apps {
        app_samples(&mut g, app);
        for color in Color::ALL {
            pool_samples(&mut g, app, color);
        }
    }
    control_samples(&mut g, ctl);
    rollout_samples(&mut g, ctl, &snap);
    g
}

/// An app's split, its shadow traffic, and its timeouts (both colours).
fn app_samples(g: &mut Gathered, app: &App) {
    let a: &str = &app.name;
    g.gauge(
        "cutover_standby_percent",
        labels(&[("app", a)]),
        app.state.standby_percent,
    );
    let m = &app.mirror_stats;
    for o in Outcome::ALL {
        g.count(
            "cutover_mirror",
            labels(&[("app", a), ("outcome", o.as_str())]),
            m.outcome(o),
        );
    }
    for why in Skip::ALL {
        let l = labels(&[("app", a), ("reason", why.as_str())]);
        g.count("cutover_mirror_skipped", l, m.skipped(why));
    }
    g.gauge(
        "cutover_mirror_percent",
        labels(&[("app", a)]),
        app.mirror_percent(),
    );
    let in_flight = m.in_flight.load(Relaxed) as f64;
    g.gauge("cutover_mirror_in_flight", labels(&[("app", a)]), in_flight);
    // One series per app, for its own limit and its rules' alike.
    if app.gate.as_ref().is_some_and(|g| g.rate.is_some()) || app.rules.limits_any() {
        let n = app.rate_limited.load(Relaxed);
        g.count("cutover_rate_limited", labels(&[("app", a)]), n);
    }
    for (i, phase) in Timeout::ALL.iter().enumerate() {
        let n = Color::ALL
            .iter()
            .map(|c| app.pool(*c).stats.timeouts[i].load(Relaxed))
            .sum();
        g.count(
            "cutover_timeouts",
            labels(&[("app", a), ("phase", phase.as_str())]),
            n,
        );
    }
}

/// One pool's requests, connections, durations and servers.
fn pool_samples(g: &mut Gathered, app: &App, color: Color) {
    let pool = app.pool(color);
    let stats = &pool.stats;
    let ac = labels(&[("app", &app.name), ("color", color.as_str())]);
    let live = if app.state.live == color { 1.0 } else { 0.0 };
    g.gauge("cutover_live", ac.clone(), live);
    for (i, class) in CODE_CLASSES.iter().enumerate() {
        let mut l = ac.clone();
        l.push(("code_class", class.to_string()));
        g.count("cutover_requests", l, stats.responses[i].load(Relaxed));
    }
    g.gauge(
        "cutover_in_flight_requests",
        ac.clone(),
        stats.in_flight.load(Relaxed) as f64,
    );
    g.gauge(
        "cutover_tunnels",
        ac.clone(),
        stats.tunnels.load(Relaxed) as f64,
    );
    g.count(
        "cutover_client_aborts",
        ac.clone(),
        stats.client_aborts.load(Relaxed),
    );
    let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
        .iter()
        .zip(&stats.duration_buckets)
        .map(|(le, n)| (*le, n.load(Relaxed)))
        .collect();
    let over = stats.duration_buckets[DURATION_BUCKETS.len()].load(Relaxed);
    buckets.push((f64::INFINITY, over));
    g.durations.push(Histogram {
        labels: ac.clone(),
        sum: stats.duration_sum_micros.load(Relaxed) as f64 / 1e6,
        count: buckets.iter().map(|(_, n)| n).sum(),
        buckets,
    });
    for s in &pool.servers {
        let mut l = ac.clone();
        l.push(("server", s.addr.to_string()));
        let open = s.open_connections.load(Relaxed) as f64;
        g.gauge("cutover_upstream_connections", l.clone(), open);
        g.count(
            "cutover_upstream_connect_errors",
            l.clone(),
            s.connect_errors.load(Relaxed),
        );
        g.gauge(
            "cutover_server_healthy",
            l,
            if s.is_healthy() { 1.0 } else { 0.0 },
        );
    }
}

/// The control plane's own counters: changes, reloads, the access log,
/// client connections, drift and the epoch.
fn control_samples(g: &mut Gathered, ctl: &Control) {
    for ((app, kind), n) in &ctl.stats.state_changes {
        g.count(
            "cutover_state_changes",
            labels(&[("app", app), ("kind", kind)]),
            *n,
        );
    }
    g.count(
        "cutover_config_reloads",
        labels(&[("result", "ok")]),
        ctl.stats.reloads_ok,
    );
    let errors = ctl.stats.reloads_error;
    g.count(
        "cutover_config_reloads",
        labels(&[("result", "error")]),
        errors,
    );
    for ((app, to), n) in &ctl.stats.rollout_transitions {
        g.count(
            "cutover_rollout_transitions",
            labels(&[("app", app), ("to", to)]),
            *n,
        );
    }
    for (app, n) in ctl.guard_reverts() {
        g.count("cutover_guard_reverts", labels(&[("app", app)]), *n);
    }
    for (app, n) in ctl.guard_slow_reverts() {
        g.count("cutover_guard_slow_reverts", labels(&[("app", app)]), *n);
    }
    let dropped = ctl.shared.access_log.get().map_or(0, |l| l.dropped());
    g.count("cutover_access_log_dropped", Labels::new(), dropped);
    let clients = ctl.shared.downstream_connections.load(Relaxed) as f64;
    g.gauge("cutover_downstream_connections", Labels::new(), clients);
    for (app, drifting) in ctl.drift() {
        let v = if drifting { 1.0 } else { 0.0 };
        g.gauge("cutover_config_drift", labels(&[("app", &app)]), v);
    }
    g.gauge("cutover_state_epoch", Labels::new(), ctl.epoch() as f64);
    if let Some(acme) = ctl.shared.acme.load_full() {
        let expiry = acme
            .not_after
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let d = labels(&[("domains", &acme.domains.join(","))]);
        g.gauge("cutover_acme_certificate_expiry_seconds", d.clone(), expiry);
        g.gauge("cutover_acme_failures", d, acme.failures as f64);
    }
    if let Some(fleet) = &ctl.fleet {
        let link = fleet.link(*ctl.shared.swapped.borrow());
        let c = labels(&[("cluster", &link.cluster)]);
        let connected = if link.connected { 1.0 } else { 0.0 };
        g.gauge("cutover_fleet_connected", c.clone(), connected);
        g.gauge("cutover_fleet_lag_seconds", c, link.lag_seconds);
    }
}

/// Each configured app's latest rollout: its state and the rolled-out
/// colour's share.
fn rollout_samples(g: &mut Gathered, ctl: &Control, snap: &Snapshot) {
    for (app, r) in ctl.rollouts() {
        if ctl.config().app(app).is_none() {
            continue;
        }
        for phase in crate::control::rollout::Phase::ALL {
            let v = if r.phase == phase { 1.0 } else { 0.0 };
            g.gauge(
                "cutover_rollout_state",
                labels(&[("app", app), ("state", phase.as_str())]),
                v,
            );
        }
        let share = snap.app(app).map_or(0.0, |a| {
            if a.state.live == r.target {
                100.0 - a.state.standby_percent
            } else {
                a.state.standby_percent
            }
        });
        g.gauge(
            "cutover_rollout_step_percent",
            labels(&[("app", app)]),
            share,
        );
    }
}

impl Collector for Gathered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, samples) in &self.counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, v) in samples {
                family
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(v, None)?;
            }
        }
        for (name, help, samples) in &self.gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, v) in samples {
                family.encode_family(labels)?.encode_gauge(v)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "cutover_request_duration_seconds",
            "Time from request head to the end of the response body.",
            None,
            MetricType::Histogram,
        )?;
        for h in &self.durations {
            family
                .encode_family(&h.labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// The Prometheus text exposition of everything.
pub fn render(ctl: &Control) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(gather(ctl)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}
