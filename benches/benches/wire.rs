//! Wire throughput: encoding records into datagrams, and checking and
//! decoding datagrams, unsigned and signed (AEGIS-256 MAC). Throughput
//! is in records, so criterion reports records/s ("elem/s").
//!
//! Every datagram carries 20 records of 64 bytes, which fits the default
//! 1400-byte limit signed or not.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_wire::{Code, Datagram, DatagramWriter, MacKey, MacKeys, Op, Record};

const RECORDS: usize = 20;
const MAX_LEN: usize = 1400;
const CLUSTER: u32 = 7;

/// A realistic batch: load gauges, a mode claim and session marks.
fn records() -> Vec<Record> {
    (0..RECORDS as u64)
        .map(|i| {
            let (code, fields) = match i % 4 {
                0 | 1 => (Code::LOAD, [0x1000 + i, 12_000 + i * 37, 1_000, 0]),
                2 => (
                    Code::SESSION_MARK,
                    [0x9e37_79b9_7f4a_7c15 ^ i, Record::MARK_SUSPICIOUS, 0, 0],
                ),
                _ => (Code::MODE, [0x1000 + i, 2, 0, 0]),
            };
            Record {
                timing_us: 1_767_225_600_000_000 + i * 250,
                seq: 1_000 + i,
                origin: 3,
                ttl_ms: if code == Code::LOAD { 0 } else { 30_000 },
                code,
                op: Op::SEND,
                fields,
            }
        })
        .collect()
}

fn key() -> MacKey {
    MacKey::derive(1, b"bench secret")
}

fn writer(key: Option<MacKey>) -> DatagramWriter {
    let w = DatagramWriter::new(CLUSTER, 3, 1_767_225_600_000_000, MAX_LEN, key);
    assert!(w.max_records() >= RECORDS, "20 records fit in 1400 bytes");
    w
}

fn datagram(key: Option<MacKey>) -> Vec<u8> {
    let mut w = writer(key);
    for r in &records() {
        assert!(w.push(r));
    }
    w.finish().expect("records pushed").to_vec()
}

fn encode(c: &mut Criterion) {
    let recs = records();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, key) in [("unsigned", None), ("signed", Some(key()))] {
        let mut w = writer(key);
        g.bench_function(name, |b| {
            b.iter(|| {
                for r in &recs {
                    w.push(black_box(r));
                }
                black_box(w.finish().map(<[u8]>::len))
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let keys = MacKeys {
        current: key(),
        previous: None,
    };
    for (name, bytes, keys) in [
        ("unsigned", datagram(None), None),
        ("signed", datagram(Some(key())), Some(&keys)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = Datagram::parse(black_box(&bytes), CLUSTER, keys).expect("valid datagram");
                let mut sum = 0u64;
                for r in d.records() {
                    let r = r.expect("valid record");
                    sum = sum.wrapping_add(r.fields[1]).wrapping_add(r.seq);
                }
                black_box(sum)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
