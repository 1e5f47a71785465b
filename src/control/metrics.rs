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
use crate::route::Timeout;

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
#[derive(Debug, Default)]
struct Gathered {
    counters: Vec<Family<u64>>,
    gauges: Vec<Family<f64>>,
    durations: Vec<Histogram>,
}

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn gather(ctl: &Control) -> Gathered {
    let snap = ctl.shared.snapshot.load();
    let mut requests = Vec::new();
    let mut in_flight = Vec::new();
    let mut tunnels = Vec::new();
    let mut aborts = Vec::new();
    let mut timeouts: Vec<(Labels, u64)> = Vec::new();
    let mut upstream_conns = Vec::new();
    let mut connect_errors = Vec::new();
    let mut healthy = Vec::new();
    let mut standby = Vec::new();
    let mut live = Vec::new();
    let mut durations = Vec::new();
    let mut mirror = Vec::new();
    let mut mirror_skipped = Vec::new();
    let mut mirror_percent = Vec::new();
    let mut mirror_in_flight = Vec::new();
    for app in &snap.apps {
        let a = app.name.to_string();
        standby.push((vec![("app", a.clone())], app.state.standby_percent));
        let m = &app.mirror_stats;
        for o in Outcome::ALL {
            let l = vec![("app", a.clone()), ("outcome", o.as_str().to_string())];
            mirror.push((l, m.outcome(o)));
        }
        for why in Skip::ALL {
            let l = vec![("app", a.clone()), ("reason", why.as_str().to_string())];
            mirror_skipped.push((l, m.skipped(why)));
        }
        mirror_percent.push((vec![("app", a.clone())], app.mirror_percent()));
        mirror_in_flight.push((vec![("app", a.clone())], m.in_flight.load(Relaxed) as f64));
        for color in Color::ALL {
            let pool = app.pool(color);
            let ac: Labels = vec![("app", a.clone()), ("color", color.to_string())];
            live.push((ac.clone(), if app.state.live == color { 1.0 } else { 0.0 }));
            for (i, class) in CODE_CLASSES.iter().enumerate() {
                let mut l = ac.clone();
                l.push(("code_class", class.to_string()));
                requests.push((l, pool.stats.responses[i].load(Relaxed)));
            }
            in_flight.push((ac.clone(), pool.stats.in_flight.load(Relaxed) as f64));
            tunnels.push((ac.clone(), pool.stats.tunnels.load(Relaxed) as f64));
            aborts.push((ac.clone(), pool.stats.client_aborts.load(Relaxed)));
            for (i, phase) in Timeout::ALL.iter().enumerate() {
                let n = pool.stats.timeouts[i].load(Relaxed);
                let labels = vec![("app", a.clone()), ("phase", phase.as_str().to_string())];
                match timeouts.iter_mut().find(|(l, _)| *l == labels) {
                    Some((_, total)) => *total += n,
                    None => timeouts.push((labels, n)),
                }
            }
            let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .zip(&pool.stats.duration_buckets)
                .map(|(le, n)| (*le, n.load(Relaxed)))
                .collect();
            buckets.push((
                f64::INFINITY,
                pool.stats.duration_buckets[DURATION_BUCKETS.len()].load(Relaxed),
            ));
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum = pool.stats.duration_sum_micros.load(Relaxed) as f64 / 1e6;
            durations.push(Histogram {
                labels: ac.clone(),
                sum,
                count,
                buckets,
            });
            for s in &pool.servers {
                let mut l = ac.clone();
                l.push(("server", s.addr.to_string()));
                upstream_conns.push((l.clone(), s.open_connections.load(Relaxed) as f64));
                connect_errors.push((l.clone(), s.connect_errors.load(Relaxed)));
                healthy.push((l, if s.is_healthy() { 1.0 } else { 0.0 }));
            }
        }
    }
    let changes = ctl
        .stats
        .state_changes
        .iter()
        .map(|((app, kind), n)| (vec![("app", app.clone()), ("kind", kind.clone())], *n))
        .collect();
    let reloads = vec![
        (vec![("result", "ok".to_string())], ctl.stats.reloads_ok),
        (
            vec![("result", "error".to_string())],
            ctl.stats.reloads_error,
        ),
    ];
    let mut rollout_state = Vec::new();
    let mut rollout_percent = Vec::new();
    for (app, r) in ctl.rollouts() {
        if ctl.config().app(app).is_none() {
            continue;
        }
        for phase in crate::control::rollout::Phase::ALL {
            let l = vec![("app", app.clone()), ("state", phase.as_str().to_string())];
            rollout_state.push((l, if r.phase == phase { 1.0 } else { 0.0 }));
        }
        let share = snap.app(app).map_or(0.0, |a| {
            if a.state.live == r.target {
                100.0 - a.state.standby_percent
            } else {
                a.state.standby_percent
            }
        });
        rollout_percent.push((vec![("app", app.clone())], share));
    }
    let rollout_transitions = ctl
        .stats
        .rollout_transitions
        .iter()
        .map(|((app, to), n)| (vec![("app", app.clone()), ("to", to.clone())], *n))
        .collect();
    let downstream = vec![(
        Labels::new(),
        ctl.shared.downstream_connections.load(Relaxed) as f64,
    )];
    Gathered {
        counters: vec![
            (
                "cutover_requests",
                "Responses sent, by app, colour and status class.",
                requests,
            ),
            (
                "cutover_client_aborts",
                "Requests whose client went away before sending all of it.",
                aborts,
            ),
            (
                "cutover_timeouts",
                "Requests and connections cut off by a timeout, by app and phase.",
                timeouts,
            ),
            (
                "cutover_upstream_connect_errors",
                "Failed connects to an upstream server.",
                connect_errors,
            ),
            (
                "cutover_state_changes",
                "Runtime state changes applied, by kind.",
                changes,
            ),
            (
                "cutover_config_reloads",
                "Config reloads, by result.",
                reloads,
            ),
            (
                "cutover_rollout_transitions",
                "Rollout moves since start, by app and the state moved to.",
                rollout_transitions,
            ),
            (
                "cutover_access_log_dropped",
                "Access log lines dropped because the writer's queue was full.",
                vec![(
                    Labels::new(),
                    ctl.shared.access_log.get().map_or(0, |l| l.dropped()),
                )],
            ),
            (
                "cutover_mirror",
                "Live requests sampled for shadow traffic, by how their copy to the standby colour ended.",
                mirror,
            ),
            (
                "cutover_mirror_skipped",
                "Sampled live requests not compared with a copy, by reason (their sum is outcome=\"skipped\").",
                mirror_skipped,
            ),
        ],
        gauges: vec![
            (
                "cutover_in_flight_requests",
                "Requests bound to a colour and not finished.",
                in_flight,
            ),
            (
                "cutover_upstream_connections",
                "Open connections to an upstream server.",
                upstream_conns,
            ),
            (
                "cutover_server_healthy",
                "1 if the server is healthy, else 0.",
                healthy,
            ),
            (
                "cutover_standby_percent",
                "Share of default traffic sent to the standby colour.",
                standby,
            ),
            (
                "cutover_live",
                "1 for the live colour of an app, else 0.",
                live,
            ),
            (
                "cutover_mirror_percent",
                "Share of live-colour requests copied to the standby colour.",
                mirror_percent,
            ),
            (
                "cutover_mirror_in_flight",
                "Copies to the standby colour under way.",
                mirror_in_flight,
            ),
            (
                "cutover_tunnels",
                "Open upgraded (WebSocket) tunnels.",
                tunnels,
            ),
            (
                "cutover_rollout_state",
                "1 for the state an app's latest rollout is in, else 0.",
                rollout_state,
            ),
            (
                "cutover_rollout_step_percent",
                "The rolled-out colour's share of traffic in the app's latest rollout.",
                rollout_percent,
            ),
            (
                "cutover_downstream_connections",
                "Open client connections.",
                downstream,
            ),
            (
                "cutover_config_drift",
                "1 while the app's runtime rules differ from the config file's.",
                ctl.drift()
                    .into_iter()
                    .map(|(app, d)| (vec![("app", app)], if d { 1.0 } else { 0.0 }))
                    .collect(),
            ),
            (
                "cutover_state_epoch",
                "Epoch of the runtime state.",
                vec![(Labels::new(), ctl.epoch() as f64)],
            ),
        ],
        durations,
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
