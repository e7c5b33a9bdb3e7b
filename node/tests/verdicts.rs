//! Two clusters on loopback, each with two real `shoal` nodes and its own
//! verdict store; the two stores are real Tarantool instances replicating
//! master-master (`tarantool/scripts/pair.sh`, verdict schema). Covers the
//! post-markup API, session tokens across clusters, and the elected queue
//! forwarders, including `kill -9` of both forwarders under traffic. The
//! same across network namespaces with 20 ms between the clusters is in
//! `twoclusters.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_node::{http_request, LocalClient};
use shoal_tarantool::testkit::{Master, Pair};
use shoal_wire::{Code, Op, Record};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(20);
const API_TOKEN: &str = "test-api-token-0123456789";
const LEASE_MS: u64 = 1000;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-verdicts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `(key id, secret)` pairs a node mints with and still accepts.
type Keys = ((u8, &'static str), Option<(u8, &'static str)>);
const KEY1: (u8, &str) = (1, "token-secret-one-0123456789");
const KEY2: (u8, &str) = (2, "token-secret-two-0123456789");
const KEY3: (u8, &str) = (3, "token-secret-three-012345678");

fn verdicts_toml(store: &str, password: &str, keys: Keys) -> String {
    let ((id, secret), previous) = keys;
    let prev = previous.map_or(String::new(), |(pid, ps)| {
        format!("previous_token_key_id = {pid}\nprevious_token_secret = \"{ps}\"\n")
    });
    format!(
        "[verdicts]\nstore = \"{store}\"\npassword = \"{password}\"\napi_tokens = [\"{API_TOKEN}\"]\ntoken_key_id = {id}\ntoken_secret = \"{secret}\"\n{prev}lease_ms = {LEASE_MS}\npoll_ms = 20\nmax_body = 1024\n"
    )
}

/// `n` nodes of `cluster` on one multicast group, on `store`.
fn cluster(
    dir: &Path,
    cluster: u32,
    ids: &[u32],
    store: &str,
    password: &str,
    keys: Keys,
) -> Vec<NodeProcess> {
    let (group, port) = unique_group();
    ids.iter()
        .map(|&id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir.join(format!("c{cluster}")));
            spec.cluster = cluster;
            spec.extra = verdicts_toml(store, password, keys);
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
        })
        .collect()
}

fn post(n: &NodeProcess, body: &str) -> (u16, Value) {
    call(n, "POST", "/v1/verdicts", Some(API_TOKEN), body)
}

fn call(n: &NodeProcess, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let (status, text) =
        http_request(&n.api, method, path, auth, body.as_bytes()).expect("http answer");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn get(n: &NodeProcess, subject: u64) -> (u16, Value) {
    call(
        n,
        "GET",
        &format!("/v1/verdicts/{subject}"),
        Some(API_TOKEN),
        "",
    )
}

fn verify(n: &NodeProcess, token: &str) -> Value {
    let (status, v) = call(
        n,
        "POST",
        "/v1/tokens/verify",
        Some(API_TOKEN),
        &format!("{{\"token\":\"{token}\"}}"),
    );
    assert_eq!(status, 200, "{v}");
    v
}

/// One sample; a sample missing from the page fails the test (it must not
/// read as 0, which `== 0` checks would take for a pass).
fn metric(n: &NodeProcess, name: &str) -> u64 {
    n.metric(name)
        .unwrap_or_else(|| panic!("{name} is not on node {}'s metrics page", n.id)) as u64
}

fn leaders(nodes: &[NodeProcess]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].metric("shoal_forwarder_leader") == Some(1.0))
        .collect()
}

fn send_mode(c: &mut LocalClient, resource: u64, level: u64) {
    let mut r = Record::new(Code::MODE, [resource, level, 0, 0]);
    r.ttl_ms = 120_000;
    r.op = Op::SEND;
    c.send(&[r]).expect("send");
}

struct Two {
    pair: Pair,
    a: Vec<NodeProcess>,
    b: Vec<NodeProcess>,
}

fn two_clusters(name: &str, b_keys: Keys) -> Two {
    let dir = tempdir(name);
    let pair = Pair::start_verdict(&dir.join("tt")).expect("verdict store pair");
    let a = cluster(&dir, 1, &[1, 2], &pair.a, &pair.password, (KEY1, None));
    let b = cluster(&dir, 2, &[1, 2], &pair.b, &pair.password, b_keys);
    Two { pair, a, b }
}

#[test]
fn a_verdict_posted_in_one_cluster_is_read_in_the_other_and_marks_its_own() {
    let t = two_clusters("read", (KEY2, Some(KEY1)));
    let subject = 0x1234_5678_9abc_def0u64;
    let (status, v) = post(
        &t.a[0],
        &format!(
            r#"{{"subject":"{subject}","verdict":"bot","score":90,"ttl_s":600,"source":"pixel"}}"#
        ),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["subject"], subject.to_string());
    assert_eq!(v["cluster"], 1);
    // The cluster's other node has it as a session mark at once.
    let mut c = t.a[1].client().expect("client");
    assert!(wait_until(Duration::from_secs(2), || {
        c.query(Code::QUERY_SESSION, subject, Duration::from_secs(1))
            .is_ok_and(|r| r.fields[1] == Record::MARK_SUSPICIOUS)
    }));
    // The other cluster reads it once replication brought it.
    assert!(
        wait_until(WAIT, || get(&t.b[1], subject).0 == 200),
        "not replicated: {:?}",
        get(&t.b[1], subject)
    );
    let (_, got) = get(&t.b[1], subject);
    assert_eq!(got["verdict"], "bot");
    assert_eq!(got["score"], 90);
    assert_eq!(got["cluster"], 1);
    assert_eq!(got["node"], "c1-n1");
    assert_eq!(got["source"], "pixel");
    // A later verdict on the other side wins on both sides.
    std::thread::sleep(Duration::from_millis(5));
    let (status, _) = post(
        &t.b[0],
        &format!(r#"{{"subject":{subject},"verdict":"human","ttl_s":600}}"#),
    );
    assert_eq!(status, 201);
    assert!(wait_until(WAIT, || get(&t.a[0], subject).1["verdict"] == "human"));
    assert_eq!(get(&t.b[0], subject).1["verdict"], "human");
    assert_eq!(get(&t.a[0], 77).0, 404);
    assert_eq!(metric(&t.a[0], "shoal_verdicts_accepted_total"), 1);
}

#[test]
fn tokens_cross_clusters_before_replication_and_bad_ones_are_refused() {
    let t = two_clusters("tokens", (KEY2, Some(KEY1)));
    // B's store is down: whatever B accepts cannot have come from it.
    t.pair.stop(Master::B).expect("stop b");
    let (status, v) = post(&t.a[0], r#"{"subject":99,"verdict":"human","ttl_s":600}"#);
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    let ok = verify(&t.b[0], &token);
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["subject"], "99");
    assert_eq!(ok["verdict"], "human");
    assert_eq!(ok["cluster"], 1);
    assert_eq!(get(&t.b[0], 99).0, 503, "B's store is down");

    // Tampered: every position of the signed body and of the tag.
    for i in [0, 3, 10, 20, 30, 40, 52] {
        let mut b = token.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let bad = verify(&t.b[0], std::str::from_utf8(&b).unwrap());
        assert_eq!(bad["valid"], false, "tampered at {i}");
    }
    assert_eq!(verify(&t.b[0], "not-a-token")["valid"], false);

    // Expired.
    let (_, short) = post(&t.a[0], r#"{"subject":5,"verdict":"bot","ttl_s":1}"#);
    let short = short["token"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let e = verify(&t.a[1], &short);
    assert_eq!(e["valid"], false);
    assert!(e["reason"].as_str().unwrap().contains("expired"), "{e}");

    // Key rotation: a node that dropped key 1 refuses A's tokens.
    let dir = tempdir("tokens-rotated");
    let rotated = cluster(&dir, 2, &[9], "127.0.0.1:1", "unused", (KEY3, Some(KEY2)));
    let old = verify(&rotated[0], &token);
    assert_eq!(old["valid"], false);
    assert!(old["reason"].as_str().unwrap().contains("key 1"), "{old}");
    assert_eq!(metric(&t.b[0], "shoal_tokens_valid_total"), 1);
}

#[test]
fn the_api_refuses_bad_requests_with_4xx_and_keeps_serving() {
    let t = two_clusters("bad", (KEY2, Some(KEY1)));
    let n = &t.a[0];
    let good = r#"{"subject":1,"verdict":"bot","ttl_s":60}"#;
    let cases: Vec<(&str, &str, Option<&str>, String, u16)> = vec![
        ("POST", "/v1/verdicts", None, good.into(), 401),
        (
            "POST",
            "/v1/verdicts",
            Some("wrong-token-0123456789"),
            good.into(),
            401,
        ),
        (
            "POST",
            "/v1/verdicts",
            Some(API_TOKEN),
            "{not json".into(),
            400,
        ),
        (
            "POST",
            "/v1/verdicts",
            Some(API_TOKEN),
            r#"{"subject":1}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/verdicts",
            Some(API_TOKEN),
            r#"{"subject":1,"verdict":"bot","ttl_s":0}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/verdicts",
            Some(API_TOKEN),
            "x".repeat(2000),
            413,
        ),
        (
            "GET",
            "/v1/verdicts/abc",
            Some(API_TOKEN),
            String::new(),
            400,
        ),
        ("GET", "/v1/nothing", Some(API_TOKEN), String::new(), 404),
        ("PUT", "/v1/verdicts", Some(API_TOKEN), good.into(), 405),
        (
            "POST",
            "/v1/tokens/verify",
            Some(API_TOKEN),
            "[]".into(),
            400,
        ),
    ];
    for (method, path, auth, body, want) in &cases {
        let (status, v) = call(n, method, path, *auth, body);
        assert_eq!(status, *want, "{method} {path} {body:.40}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // Garbage on the socket, a slow client, then a good request.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&n.api).unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let (status, v) = post(n, good);
    assert_eq!(status, 201, "{v}");
    assert_eq!(metric(n, "shoal_api_unauthorized_total"), 2);
    assert_eq!(metric(n, "shoal_verdicts_accepted_total"), 1);

    // The store down: not acknowledged, and nothing claimed stored.
    t.pair.stop(Master::A).expect("stop a");
    let (status, v) = post(n, good);
    assert_eq!(status, 503, "{v}");
    t.pair.restart(Master::A).expect("a back");
    assert!(
        wait_until(WAIT, || post(n, good).0 == 201),
        "serving again once the store is back"
    );
}

#[test]
fn modes_cross_clusters_once_and_survive_killing_both_forwarders() {
    let mut t = two_clusters("fwd", (KEY2, Some(KEY1)));
    assert!(
        wait_until(WAIT, || leaders(&t.a).len() == 1
            && leaders(&t.b).len() == 1),
        "one forwarder per cluster: {:?} {:?}",
        leaders(&t.a),
        leaders(&t.b)
    );
    // Send from A's non-forwarder node, so killing A's forwarder leaves
    // the sender up.
    let a_fwd = leaders(&t.a)[0];
    let sender = 1 - a_fwd;
    let sender_id = t.a[sender].id;
    // The writer sends one mode per resource until told to stop, so both
    // kills happen under traffic; `sent` is how far it got. MAX stays under
    // the relay ring's capacity (4096), so a new forwarder can publish all.
    const MAX: u64 = 4000;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let mut c = t.a[sender].client().expect("client");
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        move || {
            for r in 1..=MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                send_mode(&mut c, r, 2);
                sent.store(r, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            sent.load(Ordering::Relaxed)
        }
    });
    // Traffic flows before each kill and after the last takeover.
    let under_way = |what: &str| {
        let from = sent.load(Ordering::Relaxed);
        assert!(
            wait_until(WAIT, || sent.load(Ordering::Relaxed) >= from + 100),
            "the writer is stuck at {from} ({what})"
        );
    };
    under_way("before A's forwarder is killed");
    let killed_at = Instant::now();
    t.a[a_fwd].kill();
    assert!(
        wait_until(WAIT, || t.a[sender].metric("shoal_forwarder_leader")
            == Some(1.0)),
        "A's other node takes over"
    );
    let a_takeover = killed_at.elapsed();

    let b_fwd = leaders(&t.b)[0];
    let watcher = 1 - b_fwd;
    under_way("before B's forwarder is killed");
    let killed_at = Instant::now();
    t.b[b_fwd].kill();
    assert!(
        wait_until(WAIT, || t.b[watcher].metric("shoal_forwarder_leader")
            == Some(1.0)),
        "B's other node takes over"
    );
    let b_takeover = killed_at.elapsed();
    under_way("after both takeovers");
    stop.store(true, Ordering::Relaxed);
    let n = writer.join().expect("writer");
    assert!(
        n < MAX,
        "the writer ran out ({MAX} modes) before the takeovers were over"
    );
    let bound = Duration::from_millis(LEASE_MS + LEASE_MS / 3 + 500);
    eprintln!(
        "takeover after kill -9: A {a_takeover:?}, B {b_takeover:?} (bound {bound:?}); {n} modes sent"
    );
    assert!(a_takeover < bound && b_takeover < bound);

    // Every message applied exactly once on B's surviving node.
    let w = &t.b[watcher];
    assert!(
        wait_until(WAIT, || metric(w, "shoal_xc_applied_total") >= n),
        "applied {} of {n}",
        metric(w, "shoal_xc_applied_total")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(w, "shoal_xc_applied_total"),
        n,
        "nothing applied twice"
    );
    let mut c = w.client().expect("client");
    for r in 1..=n {
        let m = c
            .query(Code::QUERY_MODE, r, Duration::from_secs(1))
            .expect("mode");
        assert_eq!(m.fields[1], 2, "resource {r}");
        assert_eq!(m.fields[3], 1 << 32 | u64::from(sender_id), "claimant");
    }
    // And the way back: B's mode reaches A.
    send_mode(&mut c, 5000, 3);
    let mut ca = t.a[sender].client().expect("client");
    assert!(wait_until(WAIT, || {
        ca.query(Code::QUERY_MODE, 5000, Duration::from_secs(1))
            .is_ok_and(|m| m.fields[1] == 3 && m.fields[3] >> 32 == 2)
    }));
}

/// What `docs/verdict-store.md` says of a cluster whose verdict store is
/// down: posts and reads get 503 (counted, nothing acknowledged, no mark),
/// tokens still verify, the forwarder stands down within its lease and
/// nobody takes over; once the store is back a forwarder is elected and
/// posts are acknowledged again.
#[test]
fn a_verdict_store_outage_refuses_posts_keeps_tokens_and_stands_the_forwarder_down() {
    let t = two_clusters("outage", (KEY2, Some(KEY1)));
    assert!(
        wait_until(WAIT, || leaders(&t.a).len() == 1),
        "A elects a forwarder"
    );
    let (status, v) = post(&t.a[0], r#"{"subject":31,"verdict":"bot","ttl_s":600}"#);
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().expect("token").to_string();

    let stopping = Instant::now();
    t.pair.stop(Master::A).expect("stop A's store");
    let stopped = Instant::now();
    assert!(
        wait_until(WAIT, || leaders(&t.a).is_empty()),
        "A's forwarder stands down"
    );
    let stood_down = stopped.elapsed();
    let bound = Duration::from_millis(LEASE_MS + LEASE_MS / 3 + 500);
    eprintln!(
        "forwarder stood down {stood_down:?} after the store stopped, which took {:?} (bound {bound:?})",
        stopped - stopping
    );
    assert!(stood_down < bound, "{stood_down:?}");
    for n in &t.a {
        assert!(
            wait_until(WAIT, || metric(n, "shoal_forwarder_lease_errors_total") > 0),
            "node {} counts its failed lease requests",
            n.id
        );
    }
    // Not acknowledged, counted, and no mark for it in the cluster.
    let errors = metric(&t.a[1], "shoal_verdicts_store_errors_total");
    let (status, v) = post(&t.a[1], r#"{"subject":32,"verdict":"bot","ttl_s":600}"#);
    assert_eq!(status, 503, "{v}");
    assert_eq!(get(&t.a[1], 31).0, 503);
    assert_eq!(
        metric(&t.a[1], "shoal_verdicts_store_errors_total"),
        errors + 2
    );
    // Tokens need no store; the marks the cluster has stay.
    assert_eq!(verify(&t.a[1], &token)["valid"], true);
    let mut c = t.a[1].client().expect("client");
    let mark = |c: &mut LocalClient, subject: u64| {
        c.query(Code::QUERY_SESSION, subject, Duration::from_secs(1))
            .expect("reply")
            .fields[1]
    };
    assert_eq!(mark(&mut c, 31), Record::MARK_SUSPICIOUS);
    assert_eq!(mark(&mut c, 32), 0, "a refused verdict marks nothing");
    // Nobody took the lease while the store was down.
    assert!(leaders(&t.a).is_empty());

    t.pair.restart(Master::A).expect("A's store back");
    assert!(
        wait_until(WAIT, || leaders(&t.a).len() == 1),
        "a forwarder again once the store is back: {:?}",
        leaders(&t.a)
    );
    assert!(
        wait_until(WAIT, || post(
            &t.a[1],
            r#"{"subject":32,"verdict":"bot","ttl_s":600}"#
        )
        .0 == 201),
        "posts acknowledged again"
    );
    assert!(wait_until(WAIT, || mark(&mut c, 32) == Record::MARK_SUSPICIOUS));
}

#[test]
fn a_verdicts_session_mark_is_saved_and_replayed_after_kill_9() {
    let dir = tempdir("replay");
    let verdicts = Pair::start_verdict(&dir.join("vs")).expect("verdict store");
    let state = Pair::start(&dir.join("ss")).expect("state store");
    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, &dir.join("n"));
    spec.extra = format!(
        "{}[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\n",
        verdicts_toml(&verdicts.a, &verdicts.password, (KEY1, None)),
        state.a,
        state.b,
        state.password
    );
    let mut n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts");
    let subject = 4242u64;
    assert!(wait_until(WAIT, || post(
        &n,
        &format!(r#"{{"subject":{subject},"verdict":"bot","ttl_s":600}}"#)
    )
    .0 == 201));
    assert!(
        wait_until(WAIT, || metric(&n, "shoal_store_saved_total") == 1),
        "the mark reached the state store"
    );
    n.kill();
    let n = NodeProcess::spawn(Path::new(BIN), &spec).expect("node restarts");
    let mut c = n.client().expect("client");
    let r = c
        .query(Code::QUERY_SESSION, subject, Duration::from_secs(1))
        .expect("reply");
    assert_eq!(
        r.fields[1],
        Record::MARK_SUSPICIOUS,
        "replayed before serving"
    );
}
