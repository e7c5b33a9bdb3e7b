//! Cluster-wide rate limits on real `shoal` processes (3 nodes, loopback
//! multicast, signed datagrams). Each node's filter asks only its own
//! sidecar (`QUERY_LIMIT`, batched); one source address offered at 10
//! times its limit, spread evenly and 80 % to one node: the cluster admits
//! it at its limit (within 10 % after the first second), where the same
//! limit applied per node admits what each node's own limit lets through.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_node::{LimitDecision, LimitHit};
use shoal_wire::{Code, Record};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const RATE: f64 = 200.0;
/// 192.0.2.7 as the low 64 bits of `::ffff:192.0.2.7`.
const SOURCE: u64 = 0x0000_ffff_c000_0207;

fn limits() -> String {
    format!(
        "[[limits]]\nname = \"conn\"\nkey = \"addr\"\nrate = {RATE}\nburst = 50\n\n\
         [[limits]]\nname = \"conn_node\"\nkey = \"addr\"\nrate = {RATE}\nburst = 50\nscope = \"node\"\n"
    )
}

/// FNV-1a 32 of a limit's name (what `shoal_limit_id()` computes).
fn id(name: &str) -> u32 {
    shoal_core::keyrate::name_id(name)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn cluster(name: &str) -> Vec<NodeProcess> {
    let dir = tempdir(name);
    let (group, port) = unique_group();
    (1..=3)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = limits();
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
        })
        .collect()
}

/// What one node's filter saw over the counted window.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    offered: u64,
    cluster: u64,
    per_node: u64,
}

/// Offers `per_s` hits/s of `SOURCE` at `node` for `run`, asking both
/// limits about every hit in batches every 5 ms; counts from `warm` on.
/// Reports a load every 100 ms so the nodes hear from each other.
fn filter(node: &NodeProcess, per_s: f64, warm: Duration, run: Duration, go: &Barrier) -> Seen {
    let mut c = node.client().expect("client");
    let mut out = Vec::new();
    let mut seen = Seen::default();
    go.wait();
    let start = Instant::now();
    let mut next_load = start;
    let mut carry = 0.0;
    let mut last = start;
    let tick = Duration::from_millis(5);
    while start.elapsed() < run {
        let now = Instant::now();
        if now >= next_load {
            c.send(&[Record::new(Code::LOAD, [1, 10, 0, 0])])
                .expect("load");
            next_load += Duration::from_millis(100);
        }
        carry += per_s * now.duration_since(last).as_secs_f64();
        last = now;
        let n = (carry as usize).min(32);
        carry -= n as f64;
        if n > 0 {
            let mut hits = Vec::with_capacity(2 * n);
            for _ in 0..n {
                hits.push(LimitHit {
                    limit: id("conn"),
                    key: SOURCE,
                    n: 1,
                });
                hits.push(LimitHit {
                    limit: id("conn_node"),
                    key: SOURCE,
                    n: 1,
                });
            }
            c.limit_hits(&hits, &mut out, Duration::from_secs(2))
                .expect("decisions");
            assert_eq!(out.len(), hits.len());
            if now.duration_since(start) >= warm {
                seen.offered += n as u64;
                for (h, d) in hits.iter().zip(&out) {
                    let allowed = match d {
                        LimitDecision::Allow => true,
                        LimitDecision::Deny { retry_after } => {
                            assert!(!retry_after.is_zero());
                            false
                        }
                        other => panic!("{other:?}"),
                    };
                    if allowed && h.limit == id("conn") {
                        seen.cluster += 1;
                    } else if allowed {
                        seen.per_node += 1;
                    }
                }
            }
        }
        std::thread::sleep(tick.saturating_sub(now.elapsed()));
    }
    seen
}

/// Runs the three filters at once; returns what each saw and the length
/// of the counted window in seconds.
fn offer(nodes: &[NodeProcess], rates: [f64; 3]) -> ([Seen; 3], f64) {
    let warm = Duration::from_secs(1);
    let run = Duration::from_secs(4);
    let go = Arc::new(Barrier::new(3));
    let seen = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(rates)
            .map(|(n, r)| {
                let go = go.clone();
                s.spawn(move || filter(n, r, warm, run, &go))
            })
            .collect();
        let v: Vec<Seen> = handles
            .into_iter()
            .map(|h| h.join().expect("filter"))
            .collect();
        [v[0], v[1], v[2]]
    });
    (seen, (run - warm).as_secs_f64())
}

fn total(seen: &[Seen; 3], f: fn(&Seen) -> u64) -> f64 {
    seen.iter().map(f).sum::<u64>() as f64
}

#[test]
fn a_source_spread_over_three_nodes_is_admitted_at_its_limit_cluster_wide() {
    let mut nodes = cluster("ratelimit-even");
    // 10x the limit, evenly: 667/s per node.
    let (seen, secs) = offer(&nodes, [10.0 * RATE / 3.0; 3]);
    let (offered, cluster, per_node) = (
        total(&seen, |s| s.offered) / secs,
        total(&seen, |s| s.cluster) / secs,
        total(&seen, |s| s.per_node) / secs,
    );
    println!("even: offered {offered:.0}/s, cluster limit {cluster:.0}/s, per-node limits {per_node:.0}/s (limit {RATE}/s)");
    assert!(
        offered > 8.0 * RATE,
        "the load was not offered: {offered:.0}/s"
    );
    assert!(
        (cluster - RATE).abs() <= 0.10 * RATE,
        "cluster-wide {cluster:.0}/s, limit {RATE}/s"
    );
    // Per node: each admits its own 200/s, so 3 times the limit.
    assert!(
        (per_node - 3.0 * RATE).abs() <= 0.10 * 3.0 * RATE,
        "per node {per_node:.0}/s"
    );
    // The nodes told each other: each holds the others' rates of the key,
    // and the status page shows the key.
    for n in &nodes {
        let peer_rates = n
            .metric("shoal_limit_peer_rates_total{limit=\"conn\"}")
            .expect("peer rates metric");
        assert!(peer_rates > 0.0, "node {} heard no rates", n.id);
    }
    let status = shoal_node::http_get(&nodes[0].admin, "/status").expect("status");
    assert!(status.contains("limit conn "), "{status}");
    assert!(status.contains("192.0.2.7"), "{status}");
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_source_80_percent_on_one_node_is_admitted_at_its_limit_cluster_wide() {
    let mut nodes = cluster("ratelimit-skewed");
    let offered = 10.0 * RATE;
    let (seen, secs) = offer(&nodes, [0.8 * offered, 0.1 * offered, 0.1 * offered]);
    let (offered, cluster, per_node) = (
        total(&seen, |s| s.offered) / secs,
        total(&seen, |s| s.cluster) / secs,
        total(&seen, |s| s.per_node) / secs,
    );
    println!("skewed: offered {offered:.0}/s, cluster limit {cluster:.0}/s, per-node limits {per_node:.0}/s (limit {RATE}/s)");
    assert!(
        offered > 8.0 * RATE,
        "the load was not offered: {offered:.0}/s"
    );
    assert!(
        (cluster - RATE).abs() <= 0.10 * RATE,
        "cluster-wide {cluster:.0}/s, limit {RATE}/s"
    );
    // Per node: 200/s on each node (each is offered more than that).
    assert!(
        (per_node - 3.0 * RATE).abs() <= 0.10 * 3.0 * RATE,
        "per node {per_node:.0}/s"
    );
    // The node with most of the traffic got most of the budget.
    let busiest = seen[0].cluster as f64 / secs;
    assert!(busiest > 0.6 * RATE, "node 1 admitted {busiest:.0}/s");
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn an_unknown_limit_and_a_too_large_query_are_answered() {
    let mut nodes = cluster("ratelimit-errors");
    let mut c = nodes[0].client().expect("client");
    let mut out = Vec::new();
    c.limit_hits(
        &[
            LimitHit {
                limit: id("nope"),
                key: 1,
                n: 1,
            },
            LimitHit {
                limit: id("conn"),
                key: 1,
                n: 51,
            },
            LimitHit {
                limit: id("conn"),
                key: 1,
                n: 50,
            },
        ],
        &mut out,
        Duration::from_secs(2),
    )
    .expect("decisions");
    // The whole burst of a key never seen, on a node that does not know
    // its peers yet, is the node's share of it (50 / 1 live node).
    assert_eq!(
        out,
        vec![
            LimitDecision::Refused(8),
            LimitDecision::TooLarge,
            LimitDecision::Allow
        ]
    );
    assert!(wait_until(Duration::from_secs(2), || {
        nodes[0].metric("shoal_local_rejected_total{reason=\"unknown_limit\"}") == Some(1.0)
    }));
    for n in &mut nodes {
        n.stop();
    }
}
