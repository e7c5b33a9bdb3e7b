//! `tarantool-rs` behind the `Tarantool` trait (`RsClient`, feature
//! `tarantool-rs`) against a real local pair of the Tarantool under test
//! (`SHOAL_TARANTOOL`): what the node needs from a client: connect,
//! authenticate, pipeline, call the procedures, time out, survive a killed
//! master and reconnect. On 2.6 the crate cannot connect at all (it sends
//! IPROTO_ID); that is asserted, not skipped.

#![cfg(feature = "tarantool-rs")]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_tarantool::testkit::{self, Master, Pair, TempPair};
use shoal_tarantool::{ClientConfig, Error, RsClient, Select, Tarantool};
use tokio::task::JoinSet;

type Row = (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);
type Tuple = (String, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

fn start_pair(name: &str) -> TempPair {
    let dir: PathBuf = std::env::temp_dir().join(format!("shoal-rs-{}-{name}", std::process::id()));
    TempPair::new(Pair::start(&dir).expect("start the tarantool pair"))
}

fn on(addr: &str, pair: &Pair) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ClientConfig::new(addr, "shoal", pair.password.clone())
    }
}

fn row(i: u64) -> Row {
    (1_000 + i, i, 7, 0x100, 2, 3, i, i * 2, i * 3, u64::MAX - i)
}

fn tuple(node: &str, r: Row) -> Tuple {
    let (a, b, c, d, e, f, g, h, i, j) = r;
    (node.to_owned(), a, b, c, d, e, f, g, h, i, j)
}

/// Whether the crate can talk to this version at all (IPROTO_ID: 2.10+).
fn has_id() -> bool {
    let v = testkit::tarantool_version().expect("tarantool version");
    (v.major, v.minor) >= (2, 10)
}

fn signal(pair: &Pair, m: Master, sig: &str) {
    let name = if m == Master::A { "a" } else { "b" };
    let pid = std::fs::read_to_string(pair.dir.join(name).join("tarantool.pid")).expect("pid file");
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid.trim())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_auth_call_select() {
    let pair = start_pair("auth");
    let v = testkit::tarantool_version().expect("version");
    let got = RsClient::connect(&on(&pair.a, &pair)).await;
    if !has_id() {
        // 2.6 answers IPROTO_ID with ER_UNKNOWN_REQUEST_TYPE (48).
        match got {
            Err(Error::Server { code: 48, message }) => {
                println!("tarantool-rs on {v}: refused as expected: {message}")
            }
            Err(e) => panic!("tarantool-rs on {v}: expected error 48, got {e:?}"),
            Ok(_) => panic!("tarantool-rs connected to {v}, which has no IPROTO_ID"),
        }
        return;
    }
    let c = got.expect("connect");
    c.ping().await.expect("ping");

    let bad = ClientConfig {
        password: "wrong".into(),
        ..on(&pair.a, &pair)
    };
    match RsClient::connect(&bad).await {
        Err(Error::Auth { code, .. }) => assert_eq!(code, 47, "ER_CREDS_MISMATCH"),
        Err(e) => panic!("wrong password: expected Error::Auth, got {e:?}"),
        Ok(_) => panic!("wrong password accepted"),
    }

    let (n,): (u64,) = c
        .call("shoal_save", &("rs", [row(1), row(2)]))
        .await
        .expect("shoal_save");
    assert_eq!(n, 2);
    let got: Vec<Tuple> = c
        .select("shoal_log", &("rs",), Select::default())
        .await
        .expect("select");
    assert_eq!(got, [tuple("rs", row(1)), tuple("rs", row(2))]);
    // `shoal` has no universe grant: eval is refused, with the server's code.
    match c.eval::<_, (u64,)>("return ... + 1", &(41,)).await {
        Err(Error::Server { code: 42, .. }) => {}
        other => panic!("expected access denied (42), got {other:?}"),
    }
    // A server error keeps its code.
    match c
        .call::<_, (u64,)>("shoal_save", &("bad node!", [row(3)]))
        .await
    {
        Err(Error::Server { message, .. }) => assert!(message.contains("bad node"), "{message}"),
        other => panic!("expected a server error, got {other:?}"),
    }
    match c
        .select::<_, Tuple>("no_such_space", &(), Select::default())
        .await
    {
        Err(Error::NoSuchSpace(s)) => assert_eq!(s, "no_such_space"),
        other => panic!("expected NoSuchSpace, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_requests() {
    if !has_id() {
        println!("SKIPPED: tarantool-rs cannot connect to this version (no IPROTO_ID); see connect_auth_call_select");
        return;
    }
    const N: u64 = 10_000;
    let pair = start_pair("pipeline");
    let cfg = ClientConfig {
        max_in_flight: 2 * N as usize,
        request_timeout: Duration::from_secs(20),
        ..on(&pair.a, &pair)
    };
    let c = RsClient::connect(&cfg).await.expect("connect");
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        tasks.spawn(async move { c.replace("shoal_log", &tuple("pipe", row(i))).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("replace");
    }
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        tasks.spawn(async move {
            let key = ("pipe", 1_000 + i, i);
            let got: Vec<Tuple> = c.select("shoal_log", &key, Select::default()).await?;
            Ok::<_, Error>((i, got))
        });
    }
    let mut seen = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, got) = r.expect("task").expect("select");
        assert_eq!(
            got,
            [tuple("pipe", row(i))],
            "answer matched to request {i}"
        );
        seen += 1;
    }
    assert_eq!(seen, N);
    println!(
        "tarantool-rs: {} pipelined requests in {:?}",
        2 * N,
        t.elapsed()
    );
}

/// A stopped server: requests end with an error by the request timeout,
/// and the connection serves again once it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_then_recovery() {
    if !has_id() {
        println!("SKIPPED: tarantool-rs cannot connect to this version (no IPROTO_ID)");
        return;
    }
    let pair = start_pair("timeout");
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..on(&pair.a, &pair)
    };
    let c = RsClient::connect(&cfg).await.expect("connect");
    c.replace("shoal_log", &tuple("t", row(1)))
        .await
        .expect("replace");
    signal(&pair, Master::A, "-STOP");
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..100 {
        let c = c.clone();
        tasks.spawn(async move {
            c.select::<_, Tuple>("shoal_log", &("t",), Select::default())
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        let e = r
            .expect("task")
            .expect_err("a stopped server cannot answer");
        assert!(e.outcome_unknown(), "{e:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    signal(&pair, Master::A, "-CONT");
    let got: Vec<Tuple> = c
        .select("shoal_log", &("t",), Select::default())
        .await
        .expect("select after CONT");
    assert_eq!(got, [tuple("t", row(1))]);
}

/// kill -9 of the master: what was in flight fails, new requests fail
/// (how fast is printed: the node's failover waits on it), and after the
/// restart the crate reconnects on its own, within a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_then_restarted() {
    if !has_id() {
        println!("SKIPPED: tarantool-rs cannot connect to this version (no IPROTO_ID)");
        return;
    }
    let pair = start_pair("kill");
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(2),
        ..on(&pair.a, &pair)
    };
    let c = RsClient::connect(&cfg).await.expect("connect");
    let (n,): (u64,) = c.call("shoal_save", &("k", [row(1)])).await.expect("save");
    assert_eq!(n, 1);

    signal(&pair, Master::A, "-STOP");
    let mut tasks = JoinSet::new();
    for i in 0..50 {
        let c = c.clone();
        tasks.spawn(async move {
            c.call::<_, (u64,)>("shoal_save", &("k", [row(100 + i)]))
                .await
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    pair.kill(Master::A).expect("kill a");
    let t = Instant::now();
    while let Some(r) = tasks.join_next().await {
        let e = r.expect("task").expect_err("in flight on a killed server");
        assert!(e.outcome_unknown(), "in flight: {e:?}");
    }
    println!(
        "tarantool-rs: in-flight calls failed {:?} after the kill",
        t.elapsed()
    );

    let t = Instant::now();
    let down = c.ping().await;
    println!(
        "tarantool-rs: ping while down: {down:?} after {:?}",
        t.elapsed()
    );
    assert!(down.is_err(), "ping answered by a dead server");
    assert!(t.elapsed() <= Duration::from_secs(3), "{:?}", t.elapsed());

    pair.restart(Master::A).expect("restart a");
    let t = Instant::now();
    let deadline = t + Duration::from_secs(15);
    loop {
        match c.ping().await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("tarantool-rs did not reconnect within 15 s: {e:?}"),
        }
    }
    println!(
        "tarantool-rs: serving again {:?} after the restart",
        t.elapsed()
    );
    let got: Vec<Tuple> = c
        .select("shoal_log", &("k",), Select::default())
        .await
        .expect("select");
    assert_eq!(got[0], tuple("k", row(1)), "the acknowledged save survived");
}
