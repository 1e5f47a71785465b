//! Routing decision micro-benchmarks: app lookup, ten rules with
//! a user-agent regex, the sticky hash, the server pick.
//!
//! Run: `cargo bench --bench routing`
//! (`cargo bench --bench routing -- --quick` for a fast look.)

use std::collections::BTreeMap;
use std::hint::black_box;

mod common;

use common::browser_headers;
use criterion::{criterion_group, criterion_main, Criterion};
use cutover::route::rule::RequestView;
use cutover::route::{sticky, Snapshot};

fn snapshot() -> Snapshot {
    let text = include_str!("realistic.toml").replace("UPSTREAM", "127.0.0.1:1");
    let config = cutover::Config::from_toml(&text).expect("realistic.toml");
    Snapshot::build(&config, &BTreeMap::new(), None, 1).expect("snapshot")
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let returning = browser_headers(Some(
        "_ga=GA1.2.3; cutover=5f2c7a1e9b3d4c6a8e0f1a2b3c4d5e6f; theme=dark",
    ));
    let fresh = browser_headers(None);
    let ip = "10.1.2.3".parse().unwrap();

    c.bench_function("find_app", |b| {
        b.iter(|| {
            black_box(snap.find_app(black_box("shop.example.com"), black_box("/products/42")))
        })
    });

    c.bench_function("decide/returning_user_10_rules", |b| {
        let app = snap.find_app("shop.example.com", "/products/42").unwrap();
        b.iter(|| {
            let view = RequestView::new("/products/42", black_box(&returning), ip, None);
            black_box(app.decide(&view))
        })
    });

    c.bench_function("sticky_bucket", |b| {
        b.iter(|| {
            black_box(sticky::bucket(black_box(
                b"5f2c7a1e9b3d4c6a8e0f1a2b3c4d5e6f",
            )))
        })
    });

    c.bench_function("pick/round_robin", |b| {
        let app = snap.find_app("shop.example.com", "/").unwrap();
        let pool = app.pool(app.state.live);
        b.iter(|| black_box(pool.pick(None)))
    });

    c.bench_function("route/whole_decision_returning_user_new_connection", |b| {
        b.iter(|| {
            let app = snap
                .find_app(black_box("shop.example.com"), black_box("/products/42"))
                .unwrap();
            let view = RequestView::new("/products/42", &returning, ip, None);
            let d = app.decide(&view);
            black_box(app.pool(d.color).pick(None))
        })
    });

    c.bench_function("route/whole_decision_returning_user_same_connection", |b| {
        let cache = cutover::route::rule::ConnMemo::default();
        b.iter(|| {
            let app = snap
                .find_app(black_box("shop.example.com"), black_box("/products/42"))
                .unwrap();
            let view = RequestView::new("/products/42", &returning, ip, Some(&cache));
            let d = app.decide(&view);
            black_box(app.pool(d.color).pick(None))
        })
    });

    // A thousand distinct user agents, more than a worker remembers: the
    // user-agent regex runs on every decision.
    let unseen: Vec<http::HeaderMap> = (0..1000)
        .map(|i| {
            let mut h = returning.clone();
            let ua =
                format!("Mozilla/5.0 (X11; Linux x86_64; rv:{i}.0) Gecko/20100101 Firefox/{i}.0");
            h.insert(http::header::USER_AGENT, ua.parse().unwrap());
            h
        })
        .collect();
    c.bench_function("route/whole_decision_unseen_user_agent", |b| {
        let mut next = unseen.iter().cycle();
        b.iter(|| {
            let headers = next.next().unwrap();
            let app = snap
                .find_app(black_box("shop.example.com"), black_box("/products/42"))
                .unwrap();
            let view = RequestView::new("/products/42", headers, ip, None);
            let d = app.decide(&view);
            black_box(app.pool(d.color).pick(None))
        })
    });

    c.bench_function("route/whole_decision_new_user_gets_cookie", |b| {
        b.iter(|| {
            let app = snap
                .find_app(black_box("shop.example.com"), black_box("/"))
                .unwrap();
            let view = RequestView::new("/", &fresh, ip, None);
            let d = app.decide(&view);
            black_box((app.pool(d.color).pick(None), d.new_cookie))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
