//! One rate-limit decision in the core (`Limiter::hit`), without sockets:
//! a key already in the table, and a new key in a full table (a flood of
//! unique keys: every question evicts the lightest key).
//!
//! `cargo bench -p shoal-benches --bench ratelimit`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shoal_core::ratelimit::{KeyKind, LimitRule, Limiter, Scope};
use shoal_core::SeededState;

fn limiter(now: Instant) -> Limiter {
    Limiter::new(
        LimitRule {
            name: "conn".into(),
            kind: KeyKind::Opaque,
            rate: 1000.0,
            burst: 100.0,
            max_keys: 65_536,
            idle: Duration::from_secs(60),
            scope: Scope::Cluster,
            escalate: None,
        },
        now,
        SeededState::new(7),
    )
}

fn decisions(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("limiter_hit");
    let mut l = limiter(t0);
    for k in 0..50_000u64 {
        l.hit(t0, k, 1, 16);
    }
    let mut i = 0u64;
    g.bench_function("known_key", |b| {
        b.iter(|| {
            i = (i + 7919) % 50_000;
            black_box(l.hit(t0 + Duration::from_nanos(i), i, 1, 16))
        })
    });
    let mut l = limiter(t0);
    for k in 0..65_536u64 {
        l.hit(t0, k, 1, 16);
    }
    let mut next = 1u64 << 40;
    let mut t = t0;
    g.bench_function("new_key_full_table", |b| {
        b.iter(|| {
            next += 1;
            t += Duration::from_nanos(100);
            black_box(l.hit(t, next, 1, 16))
        })
    });
    g.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
