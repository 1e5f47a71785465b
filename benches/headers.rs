//! Header rewrite micro-benchmark: hop-by-hop removal and
//! `X-Forwarded-*` on a typical browser request, and the response side.
//!
//! Run: `cargo bench --bench headers`

use std::hint::black_box;

mod common;

use common::browser_headers;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use cutover::proxy::headers::{add_forwarded, client_value, strip_hop_by_hop};
use http::{HeaderMap, HeaderValue};

fn request_headers() -> HeaderMap {
    browser_headers(Some("cutover=5f2c7a1e9b3d4c6a8e0f1a2b3c4d5e6f"))
}

fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", "text/html".parse().unwrap());
    h.insert("content-length", "5".parse().unwrap());
    h.insert("date", "Thu, 26 Nov 2026 05:00:00 GMT".parse().unwrap());
    h.insert("connection", "keep-alive".parse().unwrap());
    h
}

fn bench(c: &mut Criterion) {
    let client = client_value("192.0.2.10".parse().unwrap());
    let host = HeaderValue::from_static("shop.example.com");
    c.bench_function("rewrite_request_headers", |b| {
        b.iter_batched_ref(
            request_headers,
            |h| {
                strip_hop_by_hop(h, false);
                add_forwarded(h, &client, false, Some(host.clone()), false);
                black_box(h);
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("strip_hop_by_hop_request", |b| {
        b.iter_batched_ref(
            request_headers,
            |h| {
                strip_hop_by_hop(h, false);
                black_box(h);
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("add_forwarded_request_spare_capacity", |b| {
        b.iter_batched_ref(
            || {
                let mut h = request_headers();
                h.reserve(8);
                h
            },
            |h| {
                add_forwarded(h, &client, false, Some(host.clone()), false);
                black_box(h);
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("add_forwarded_request", |b| {
        b.iter_batched_ref(
            request_headers,
            |h| {
                add_forwarded(h, &client, false, Some(host.clone()), false);
                black_box(h);
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("rewrite_response_headers", |b| {
        b.iter_batched_ref(
            response_headers,
            |h| {
                strip_hop_by_hop(h, false);
                black_box(h);
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
