//! Two clusters in network namespaces (`scripts/twoclusters.sh`): two
//! `shoal` nodes and a verdict store per cluster, the stores joined by a
//! link that delays each direction by 20 ms. Measures the cross-cluster
//! delay of a verdict, then partitions the link while both sides post
//! 10,000 verdicts each, heals it, and checks that every verdict is on
//! both sides and replication is healthy again. Needs root: otherwise it
//! prints `SKIPPED` (and fails under `SHOAL_REQUIRE_ALL=1`, as in
//! `.ci/run`). One test: the topology has fixed names.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_node::http_request;
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_tarantool::testkit::{console, instance_script};
use shoal_tarantool::{Client, ClientConfig, Iter, Select, Tarantool};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const API_TOKEN: &str = "netns-api-token-0123456789";
const PASSWORD: &str = "netns-verdict-password";
const PER_SIDE: u64 = 10_000;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/twoclusters.sh")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn topo(args: &[&str]) -> Result<String, String> {
    run(Command::new("bash").arg(script()).args(args))
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    // SHOAL_TARANTOOL (a path) or `tarantool` on PATH: what instance.sh runs.
    let tarantool = shoal_tarantool::testkit::tarantool_bin();
    for tool in ["ip", &tarantool.to_string_lossy(), "python3"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// The topology and the stores in it; torn down when dropped.
struct Topology {
    stores: Vec<PathBuf>,
}

impl Topology {
    fn up(dir: &Path) -> Result<Topology, String> {
        let _ = topo(&["down"]);
        topo(&["up", "3"])?;
        let mut t = Topology { stores: Vec::new() };
        // A first: B joins A's replica set (instance.sh, "first start").
        for (side, cluster) in [("a", 1), ("b", 2)] {
            let d = dir.join(format!("store-{side}"));
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            t.stores.push(d.clone());
            run(Command::new("bash")
                .arg(script())
                .args(["exec", side, "3", "bash"])
                .arg(instance_script())
                .arg("start")
                .arg(&d)
                .args(["--listen", "0.0.0.0:3301"])
                .args(["--peers", "10.213.80.1:3301,10.213.80.2:3301"])
                .args(["--schema", "verdict", "--cluster", &cluster.to_string()])
                .env("SHOAL_TT_PASSWORD", PASSWORD)
                .env("SHOAL_TT_REPL_PASSWORD", "netns-replication-password")
                .env("SHOAL_TT_CONNECT_S", "2"))?;
        }
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for d in &self.stores {
            let _ = Command::new("bash")
                .arg(instance_script())
                .arg("stop")
                .arg(d)
                .status();
        }
        let _ = topo(&["down"]);
    }
}

fn store_addr(side: &str) -> String {
    let subnet = if side == "a" { 81 } else { 82 };
    format!("10.213.{subnet}.3:3301")
}

fn nodes(dir: &Path, side: &str, cluster: u32) -> Vec<NodeProcess> {
    let (group, port) = unique_group();
    let subnet = if side == "a" { 81 } else { 82 };
    (1..=2u32)
        .map(|k| {
            let iface = Ipv4Addr::new(10, 213, subnet, k as u8);
            let mut spec = NodeSpec::loopback(k, group, port, &dir.join(side));
            spec.cluster = cluster;
            spec.interface = iface;
            spec.netns = Some(format!("x{side}{k}"));
            spec.extra = format!(
                "[verdicts]\nstore = \"{}\"\npassword = \"{PASSWORD}\"\napi_tokens = [\"{API_TOKEN}\"]\ntoken_key_id = 1\ntoken_secret = \"netns-token-secret-0123456789\"\nlease_ms = 1000\npoll_ms = 20\n",
                store_addr(side)
            );
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts in its namespace")
        })
        .collect()
}

fn post(n: &NodeProcess, subject: u64) -> u16 {
    let body = format!(r#"{{"subject":{subject},"verdict":"bot","ttl_s":3600}}"#);
    http_request(
        &n.api,
        "POST",
        "/v1/verdicts",
        Some(API_TOKEN),
        body.as_bytes(),
    )
    .map_or(0, |(s, _)| s)
}

fn get(n: &NodeProcess, subject: u64) -> u16 {
    http_request(
        &n.api,
        "GET",
        &format!("/v1/verdicts/{subject}"),
        Some(API_TOKEN),
        b"",
    )
    .map_or(0, |(s, _)| s)
}

/// `(node, id)` of every verdict in one cluster's store.
fn verdict_keys(rt: &tokio::runtime::Runtime, side: &str) -> BTreeSet<(String, u64)> {
    rt.block_on(async {
        let c = Client::new(ClientConfig::new(store_addr(side), "shoal", PASSWORD));
        assert!(
            c.wait_connected(Duration::from_secs(5)).await,
            "store {side}"
        );
        let all: &[u64] = &[];
        let rows: Vec<Vec<serde_json::Value>> = c
            .select(
                "verdict",
                &all,
                Select {
                    iter: Iter::All,
                    limit: u32::MAX,
                    ..Select::default()
                },
            )
            .await
            .expect("select");
        rows.iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap_or_default().to_string(),
                    r[2].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    })
}

fn both_follow(store: &Path) -> bool {
    let lua = "local ok = true for _, r in pairs(box.info.replication) do if r.uuid ~= box.info.uuid and (r.upstream == nil or r.upstream.status ~= 'follow' or r.downstream == nil or r.downstream.status ~= 'follow') then ok = false end end return ok";
    console(&store.join("console.sock"), lua).is_ok_and(|y| y.contains("- true"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What `post_many` got: acknowledged posts, the time taken, and the
/// answers that were not 201 (each retried until `POST_DEADLINE`).
struct Posted {
    acked: u64,
    took: Duration,
    retried: u64,
    /// The first subject that was still not acknowledged at the deadline,
    /// with its last status (0: no HTTP answer).
    gave_up: Option<(u64, u16)>,
}

/// How long `post_many` keeps retrying before it gives up on a side.
const POST_DEADLINE: Duration = Duration::from_secs(120);

/// Posts `count` verdicts from `first` on, spread over the nodes and 4
/// threads each. A post that is not acknowledged (a 503 stores nothing) is
/// retried, but only until `POST_DEADLINE` from the start: then the lane
/// stops and reports the subject it gave up on.
fn post_many(nodes: &[NodeProcess], first: u64, count: u64) -> Posted {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Mutex;
    let started = Instant::now();
    let deadline = started + POST_DEADLINE;
    let acked = AtomicU64::new(0);
    let retried = AtomicU64::new(0);
    let gave_up = Mutex::new(None);
    std::thread::scope(|s| {
        let lanes = nodes.len() as u64 * 4;
        for lane in 0..lanes {
            let n = &nodes[(lane % nodes.len() as u64) as usize];
            let (acked, retried, gave_up) = (&acked, &retried, &gave_up);
            s.spawn(move || {
                let mut i = lane;
                while i < count {
                    let subject = first + i;
                    let mut status = post(n, subject);
                    while status != 201 && Instant::now() < deadline {
                        retried.fetch_add(1, Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                        status = post(n, subject);
                    }
                    if status != 201 {
                        gave_up
                            .lock()
                            .expect("a lane panicked")
                            .get_or_insert((subject, status));
                        return;
                    }
                    acked.fetch_add(1, Relaxed);
                    i += lanes;
                }
            });
        }
    });
    Posted {
        acked: acked.load(Relaxed),
        took: started.elapsed(),
        retried: retried.load(Relaxed),
        gave_up: gave_up.into_inner().expect("a lane panicked"),
    }
}

#[test]
fn verdicts_cross_a_delayed_link_and_survive_a_partition() {
    if let Some(why) = skip_reason() {
        common::skip(
            "verdicts_cross_a_delayed_link_and_survive_a_partition",
            &why,
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("shoal-2c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Topology::up(&dir).expect("topology");
    let a = nodes(&dir, "a", 1);
    let b = nodes(&dir, "b", 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || both_follow(&t.stores[0])
            && both_follow(&t.stores[1])),
        "stores replicate"
    );

    // Delay A -> B of an acknowledged verdict, seen through B's API.
    let mut delays = Vec::new();
    for i in 0..200u64 {
        let subject = 1_000_000 + i;
        assert_eq!(post(&a[(i % 2) as usize], subject), 201);
        let acked = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || get(&b[0], subject) == 200),
            "verdict {subject} never reached B"
        );
        delays.push(acked.elapsed());
    }
    delays.sort();
    eprintln!(
        "A->B verdict delay over a 20 ms link: p50 {:?} p99 {:?} max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
    assert!(
        percentile(&delays, 0.5) >= Duration::from_millis(20),
        "the link delays"
    );

    // Partition, post on both sides, heal.
    let before_a = verdict_keys(&rt, "a").len() as u64;
    topo(&["partition"]).expect("partition");
    let (ha, hb) = std::thread::scope(|s| {
        let ha = s.spawn(|| post_many(&a, 10_000_000, PER_SIDE));
        let hb = s.spawn(|| post_many(&b, 20_000_000, PER_SIDE));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for (side, p) in [("A", &ha), ("B", &hb)] {
        eprintln!(
            "accepted during the partition: {side} {} in {:?} ({:.0}/s over 2 nodes, {} retried)",
            p.acked,
            p.took,
            p.acked as f64 / p.took.as_secs_f64(),
            p.retried
        );
        assert_eq!(
            (p.acked, p.gave_up),
            (PER_SIDE, None),
            "{side}: acknowledged {} of {PER_SIDE} within {POST_DEADLINE:?}; \
             gave up on (subject, last status 0 = no answer)",
            p.acked
        );
    }
    assert_eq!(
        verdict_keys(&rt, "a").len() as u64,
        before_a + PER_SIDE,
        "A holds only its own while partitioned"
    );
    topo(&["heal"]).expect("heal");
    let want = before_a + 2 * PER_SIDE;
    let healed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || {
            verdict_keys(&rt, "a").len() as u64 == want
                && verdict_keys(&rt, "b").len() as u64 == want
        }),
        "after heal: A {} B {} of {want}",
        verdict_keys(&rt, "a").len(),
        verdict_keys(&rt, "b").len()
    );
    eprintln!("caught up {:?} after heal", healed.elapsed());
    assert_eq!(
        verdict_keys(&rt, "a"),
        verdict_keys(&rt, "b"),
        "same verdicts"
    );
    assert!(
        wait_until(Duration::from_secs(20), || both_follow(&t.stores[0])
            && both_follow(&t.stores[1])),
        "replication follow/follow after heal"
    );
    for side in [&a, &b] {
        for n in side.iter() {
            assert_eq!(n.metric("shoal_verdicts_store_errors_total"), Some(0.0));
        }
    }
}
