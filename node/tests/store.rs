//! Real `shoal` processes saving to a real Tarantool master pair started
//! by `tarantool/scripts/pair.sh`: several nodes writing both masters at
//! once, replay after `kill -9`, a master stopped under load, and a store
//! that is down when the node starts.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_core::StateLog;
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_node::LocalClient;
use shoal_tarantool::statelog::{LogTuple as Tuple, TarantoolLog, SAVE_LUA, SAVE_NATIVE};
use shoal_tarantool::testkit::{Master, Pair};
use shoal_tarantool::{Client, ClientConfig};
use shoal_wire::{Code, Op, Record};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(20);

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Everything in `shoal_log` on one master, sorted.
fn tuples(rt: &tokio::runtime::Runtime, pair: &Pair, m: Master) -> Vec<Tuple> {
    rt.block_on(async {
        let c = Client::new(ClientConfig::new(
            pair.addr(m).to_string(),
            "shoal",
            pair.password.clone(),
        ));
        assert!(c.wait_connected(Duration::from_secs(5)).await, "connected");
        let mut t = TarantoolLog::new(c, SAVE_LUA, Duration::ZERO)
            .all_tuples()
            .await
            .expect("select");
        t.sort();
        t
    })
}

/// `upstream/downstream` of each master's view of the other.
fn replication(rt: &tokio::runtime::Runtime, pair: &Pair, m: Master) -> Vec<(String, String)> {
    rt.block_on(async {
        let c = Client::new(ClientConfig::new(
            pair.addr(m).to_string(),
            "shoal",
            pair.password.clone(),
        ));
        assert!(c.wait_connected(Duration::from_secs(5)).await, "connected");
        let log = TarantoolLog::new(c, SAVE_LUA, Duration::ZERO);
        log.health().await.expect("health").peers
    })
}

fn both_follow(rt: &tokio::runtime::Runtime, pair: &Pair) -> bool {
    let follow = vec![("follow".to_string(), "follow".to_string())];
    replication(rt, pair, Master::A) == follow && replication(rt, pair, Master::B) == follow
}

fn node(dir: &Path, id: u32, group: Ipv4Addr, port: u16, masters: [&str; 2], pw: &str) -> NodeSpec {
    let mut spec = NodeSpec::loopback(id, group, port, dir);
    spec.extra = format!(
        "[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{pw}\"\nbatch = 500\nrequest_timeout_ms = 2000\nreplay_timeout_ms = 3000\n",
        masters[0], masters[1]
    );
    spec
}

/// One sample; a sample missing from the page fails the test (it must not
/// read as 0, which `== 0` checks would take for a pass).
fn metric(n: &NodeProcess, name: &str) -> u64 {
    n.metric(name)
        .unwrap_or_else(|| panic!("{name} is not on node {}'s metrics page", n.id)) as u64
}

/// Sends `count` session marks (send+save) with keys from `first`, in
/// datagrams of 32, paced so the local socket never overflows.
fn send_marks(c: &mut LocalClient, first: u64, count: u64, ttl_ms: u32) {
    let mut batch = Vec::with_capacity(32);
    for k in first..first + count {
        batch.push(Record {
            op: Op::SEND_SAVE,
            ttl_ms,
            ..Record::new(Code::SESSION_MARK, [k, 1 + k % 2, 0, 0])
        });
        if batch.len() == 32 {
            c.send(&batch).expect("send");
            batch.clear();
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    if !batch.is_empty() {
        c.send(&batch).expect("send");
    }
}

#[test]
fn several_nodes_write_both_masters_and_they_agree() {
    let dir = tempdir("both");
    let pair = Pair::start(&dir.join("tt")).expect("tarantool pair");
    let rt = rt();
    let (group, port) = unique_group();
    // Nodes 1 and 3 prefer master a, node 2 prefers b: both are written
    // at once, by several nodes.
    let specs = [
        node(&dir, 1, group, port, [&pair.a, &pair.b], &pair.password),
        node(&dir, 2, group, port, [&pair.b, &pair.a], &pair.password),
        node(&dir, 3, group, port, [&pair.a, &pair.b], &pair.password),
    ];
    let nodes: Vec<NodeProcess> = specs
        .iter()
        .map(|s| NodeProcess::spawn(Path::new(BIN), s).expect("node starts"))
        .collect();
    const PER_NODE: u64 = 3_000;
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate() {
            let mut c = n.client().expect("client");
            s.spawn(move || send_marks(&mut c, i as u64 * 1_000_000, PER_NODE, 600_000));
        }
    });
    for n in &nodes {
        assert!(
            wait_until(WAIT, || metric(n, "shoal_store_saved_total") == PER_NODE),
            "node {} saved {} of {PER_NODE}",
            n.id,
            metric(n, "shoal_store_saved_total")
        );
        assert_eq!(metric(n, "shoal_store_backlog"), 0);
    }
    // Each node saved to its preferred master.
    let batches = |n: &NodeProcess, addr: &str| {
        metric(
            n,
            &format!("shoal_store_master_batches_total{{master=\"{addr}\"}}"),
        )
    };
    assert!(batches(&nodes[0], &pair.a) > 0 && batches(&nodes[0], &pair.b) == 0);
    assert!(batches(&nodes[1], &pair.b) > 0 && batches(&nodes[1], &pair.a) == 0);
    let total = 3 * PER_NODE as usize;
    assert!(
        wait_until(WAIT, || tuples(&rt, &pair, Master::A).len() == total
            && tuples(&rt, &pair, Master::B).len() == total),
        "both masters hold every tuple: a {} b {}",
        tuples(&rt, &pair, Master::A).len(),
        tuples(&rt, &pair, Master::B).len()
    );
    let a = tuples(&rt, &pair, Master::A);
    assert_eq!(a, tuples(&rt, &pair, Master::B), "the masters agree");
    let names: BTreeSet<&str> = a.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["c1-n1", "c1-n2", "c1-n3"]));
    assert!(
        wait_until(WAIT, || both_follow(&rt, &pair)),
        "replication follow/follow both ways: {:?} {:?}",
        replication(&rt, &pair, Master::A),
        replication(&rt, &pair, Master::B)
    );
}

#[test]
fn kill_9_and_restart_replays_the_live_records() {
    let dir = tempdir("replay");
    let pair = Pair::start(&dir.join("tt")).expect("tarantool pair");
    let rt = rt();
    let (group, port) = unique_group();
    let spec = node(&dir, 1, group, port, [&pair.a, &pair.b], &pair.password);
    let mut n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
    let mut c = n.client().expect("client");
    // Modes, and marks under load; some with a TTL that ends before the
    // restart, so replay has to leave them out.
    let modes: Vec<Record> = (0..20)
        .map(|r| Record {
            op: Op::SEND_SAVE,
            ttl_ms: 600_000,
            ..Record::new(Code::MODE, [r, 1 + r % 3, 0, 0])
        })
        .collect();
    c.send(&modes).expect("modes");
    send_marks(&mut c, 0, 200, 300);
    let short_sent = Instant::now();
    let writer = std::thread::spawn({
        let mut c = n.client().expect("client");
        move || send_marks(&mut c, 1_000, 20_000, 600_000)
    });
    // Killed under load, once saves of the long-lived marks are under way.
    assert!(
        wait_until(WAIT, || metric(&n, "shoal_store_saved_total") > 20 + 200),
        "saves under way: {}",
        metric(&n, "shoal_store_saved_total")
    );
    n.kill();
    writer.join().ok();
    // The short marks' 300 ms TTL must be over before the restart.
    std::thread::sleep(Duration::from_millis(400).saturating_sub(short_sent.elapsed()));

    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    let stored = tuples(&rt, &pair, Master::A);
    let live: Vec<&Tuple> = stored.iter().filter(|t| t.1 > now_us + 5_000_000).collect();
    assert!(
        live.len() > 20,
        "something was saved before the kill: {}",
        live.len()
    );

    let started = Instant::now();
    let n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node restarts");
    let replay_ms = started.elapsed().as_millis();
    assert_eq!(metric(&n, "shoal_replay_ok"), 1);
    assert_eq!(
        metric(&n, "shoal_replay_records") as usize,
        live.len(),
        "replayed exactly the live records (restart took {replay_ms} ms)"
    );
    let mut q = n.client().expect("client");
    for t in &live {
        let (code, key, value) = (t.4 as u16, t.7, t.8);
        let query = if code == Code::MODE.0 {
            Code::QUERY_MODE
        } else {
            Code::QUERY_SESSION
        };
        let r = q.query(query, key, Duration::from_secs(1)).expect("reply");
        assert_eq!(r.fields[1], value, "code {code:#x} key {key}");
        assert_eq!(r.fields[3], 1, "origin");
    }
    // The expired marks are not part of the context.
    for k in 0..200 {
        let r = q
            .query(Code::QUERY_SESSION, k, Duration::from_secs(1))
            .expect("reply");
        assert_eq!(r.fields[1], 0, "expired mark {k} replayed");
    }
}

#[test]
fn a_master_stopped_under_load_loses_nothing() {
    let dir = tempdir("failover");
    let pair = Pair::start(&dir.join("tt")).expect("tarantool pair");
    let rt = rt();
    let (group, port) = unique_group();
    let spec = node(&dir, 1, group, port, [&pair.a, &pair.b], &pair.password);
    let n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
    const TOTAL: u64 = 30_000;
    let writer = std::thread::spawn({
        let mut c = n.client().expect("client");
        move || send_marks(&mut c, 0, TOTAL, 600_000)
    });
    assert!(wait_until(WAIT, || metric(&n, "shoal_store_saved_total") > 2_000));
    pair.stop(Master::A).expect("stop master a");
    writer.join().expect("writer");
    assert!(
        wait_until(WAIT, || metric(&n, "shoal_store_saved_total") == TOTAL),
        "saved {} of {TOTAL} with master a down",
        metric(&n, "shoal_store_saved_total")
    );
    assert!(metric(&n, "shoal_store_failovers_total") >= 1);
    assert_eq!(metric(&n, "shoal_store_refused_total"), 0);
    // Batches master a acknowledged just before it stopped may not have
    // replicated to b yet (replication is asynchronous): they come back with
    // a, so "nothing lost" is checked once a has returned, on both masters.
    let on_b_alone = tuples(&rt, &pair, Master::B).len();
    assert!(on_b_alone > 0 && on_b_alone <= TOTAL as usize);

    pair.restart(Master::A).expect("master a back");
    for m in [Master::A, Master::B] {
        assert!(
            wait_until(WAIT, || tuples(&rt, &pair, m).len() == TOTAL as usize),
            "{m:?} caught up: {} of {TOTAL}",
            tuples(&rt, &pair, m).len()
        );
    }
    assert_eq!(tuples(&rt, &pair, Master::A), tuples(&rt, &pair, Master::B));
    assert!(
        wait_until(WAIT, || both_follow(&rt, &pair)),
        "replication follow/follow: {:?} {:?}",
        replication(&rt, &pair, Master::A),
        replication(&rt, &pair, Master::B)
    );
}

#[test]
fn a_store_down_at_start_delays_saves_but_loses_none() {
    let dir = tempdir("down");
    let pair = Pair::start(&dir.join("tt")).expect("tarantool pair");
    pair.stop(Master::A).expect("stop a");
    pair.stop(Master::B).expect("stop b");
    let rt = rt();
    let (group, port) = unique_group();
    let spec = node(&dir, 1, group, port, [&pair.a, &pair.b], &pair.password);
    let started = Instant::now();
    let n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts without a store");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by replay_timeout_ms"
    );
    assert_eq!(metric(&n, "shoal_replay_ok"), 0);
    let mut c = n.client().expect("client");
    send_marks(&mut c, 0, 1_000, 600_000);
    // Served meanwhile: the marks are applied and answered.
    let r = c
        .query(Code::QUERY_SESSION, 7, Duration::from_secs(1))
        .expect("reply");
    assert_eq!(r.fields[1], 2);
    assert!(wait_until(WAIT, || metric(&n, "shoal_store_backlog") == 1_000));
    assert_eq!(metric(&n, "shoal_store_saved_total"), 0);

    pair.restart(Master::B).expect("b back");
    assert!(
        wait_until(WAIT, || metric(&n, "shoal_store_saved_total") == 1_000),
        "saved {} once b is back",
        metric(&n, "shoal_store_saved_total")
    );
    assert_eq!(tuples(&rt, &pair, Master::B).len(), 1_000);
}

/// `LUA_CPATH` for `libshoal_expirer.so`: cargo builds it (a cdylib) as a
/// dev-dependency of this package, into `target/<profile>/deps/`, next to
/// this test binary; `cargo build` also links it to `target/<profile>/`.
fn expirer_cpath() -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let profile = deps.parent().expect("target/<profile>");
    assert!(
        [profile, deps]
            .iter()
            .any(|d| d.join("libshoal_expirer.so").exists()),
        "libshoal_expirer.so is in neither {} nor {}",
        profile.display(),
        deps.display()
    );
    format!("{}/lib?.so;{}/lib?.so;;", deps.display(), profile.display())
}

#[test]
fn a_node_saves_through_the_native_procedure() {
    let dir = tempdir("native");
    let cpath = expirer_cpath();
    let pair = Pair::start_with(
        &dir.join("tt"),
        &[
            ("SHOAL_TT_EXPIRER", "shoal_expirer"),
            ("LUA_CPATH", cpath.as_str()),
        ],
    )
    .expect("tarantool pair with the native module");
    let rt = rt();
    let (group, port) = unique_group();
    let mut spec = node(&dir, 1, group, port, [&pair.a, &pair.b], &pair.password);
    spec.extra
        .push_str(&format!("save_function = \"{SAVE_NATIVE}\"\n"));
    let n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
    const TOTAL: u64 = 5_000;
    let mut c = n.client().expect("client");
    send_marks(&mut c, 0, TOTAL, 600_000);
    assert!(
        wait_until(WAIT, || metric(&n, "shoal_store_saved_total") == TOTAL),
        "saved {} of {TOTAL}",
        metric(&n, "shoal_store_saved_total")
    );
    assert_eq!(metric(&n, "shoal_store_batches_failed_total"), 0);
    assert!(
        wait_until(WAIT, || tuples(&rt, &pair, Master::B).len()
            == TOTAL as usize),
        "b has every tuple: {}",
        tuples(&rt, &pair, Master::B).len()
    );
    let a = tuples(&rt, &pair, Master::A);
    assert_eq!(a, tuples(&rt, &pair, Master::B), "the masters agree");
    // What the node sent, as the Lua procedure would have stored it.
    let keys: BTreeSet<u64> = a.iter().map(|t| t.7).collect();
    assert_eq!(keys, (0..TOTAL).collect());
    for t in &a {
        assert_eq!(t.0, "c1-n1");
        assert_eq!(t.4, u64::from(Code::SESSION_MARK.0), "{t:?}");
        assert_eq!(t.8, 1 + t.7 % 2, "{t:?}");
        assert_eq!(t.6, 1, "origin {t:?}");
    }
}
