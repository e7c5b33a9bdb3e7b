//! The save backlog when the store is down: a backlog full of save
//! records must refuse the next save in constant time, whatever its size
//! (it runs under the node's lock, once per refused record).
//!
//! `cargo bench -p shoal-benches --bench backlog`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shoal_core::{to_row, Backlog, BacklogLimits, Offer, Row};
use shoal_wire::{Code, Op, Record};

fn row(code: Code, id: u64) -> Row {
    let r = Record {
        op: Op::SEND_SAVE,
        ..Record::new(code, [id, 1, 0, 0])
    };
    to_row(&r, id, 1_000 + id)
}

fn full_of_saves(capacity: usize) -> Backlog {
    let mut b = Backlog::new(BacklogLimits {
        capacity,
        batch: 500,
    });
    for id in 0..capacity as u64 {
        assert_eq!(b.offer(row(Code::SESSION_MARK, id)), Offer::Taken);
    }
    b
}

fn refused_save(c: &mut Criterion) {
    let mut g = c.benchmark_group("backlog_full_refuses_a_save");
    for capacity in [1_000usize, 1_000_000] {
        let mut b = full_of_saves(capacity);
        let extra = row(Code::SESSION_MARK, u64::MAX);
        g.bench_with_input(
            BenchmarkId::from_parameter(capacity),
            &capacity,
            |bench, _| {
                bench.iter(|| assert_eq!(b.offer(black_box(extra)), Offer::Refused));
            },
        );
    }
    g.finish();
}

criterion_group!(benches, refused_save);
criterion_main!(benches);
