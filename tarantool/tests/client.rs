//! The client against a real local Tarantool pair (`testkit::Pair`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;
use shoal_tarantool::testkit::{Master, Pair, TempPair};
use shoal_tarantool::{Client, ClientConfig, Error, Iter, Select, Tarantool};
use tokio::task::JoinSet;

/// {expires_us, id, timing_us, code, op, origin, f0, f1, f2, f3}
type Row = (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);
/// A `shoal_log` tuple: the node, then a row.
type Tuple = (String, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

fn start_pair(name: &str) -> TempPair {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("shoal-iproto-{}-{name}", std::process::id()));
    TempPair::new(Pair::start(&dir).expect("start the tarantool pair"))
}

fn config(pair: &Pair) -> ClientConfig {
    on(&pair.a, pair)
}

/// The `shoal` user on `addr`, reconnecting quickly.
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
    (
        node.to_owned(),
        r.0,
        r.1,
        r.2,
        r.3,
        r.4,
        r.5,
        r.6,
        r.7,
        r.8,
        r.9,
    )
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
async fn auth_ok_and_refused() {
    let pair = start_pair("auth");
    let client = Client::connect(config(&pair)).await.expect("connect");
    assert!(client.is_connected());
    client.ping().await.expect("ping");

    let mut wrong = config(&pair);
    wrong.password = "not-the-password".into();
    match Client::connect(wrong.clone()).await {
        // 47: ER_PASSWORD_MISMATCH "Incorrect password supplied ..." on
        // 2.6; ER_CREDS_MISMATCH "User not found or supplied credentials
        // are invalid" from 2.11 on (no longer says whether the user exists).
        Err(Error::Auth { code, message }) => {
            assert_eq!(code, 47, "{message}");
            assert!(
                message.contains("Incorrect password")
                    || message.contains("credentials are invalid"),
                "{code}: {message}"
            );
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
    let stranger = ClientConfig {
        user: "nobody".into(),
        ..on(&pair.b, &pair)
    };
    assert!(matches!(
        Client::connect(stranger).await,
        Err(Error::Auth { .. })
    ));

    // In the background it keeps trying; requests fail fast meanwhile.
    let background = Client::new(wrong);
    assert!(!background.wait_connected(Duration::from_millis(300)).await);
    let t = Instant::now();
    assert!(matches!(background.ping().await, Err(Error::Disconnected)));
    assert!(t.elapsed() < Duration::from_millis(100));

    // Nothing listening: a typed connect error.
    let c = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        ..on("127.0.0.1:1", &pair)
    };
    assert!(matches!(Client::connect(c).await, Err(Error::Io(_))));
}

#[derive(Debug, Deserialize)]
struct Health {
    status: String,
    ro: bool,
    log_len: u64,
    peers: Vec<Peer>,
}

#[derive(Debug, Deserialize)]
struct Peer {
    upstream: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_select_and_write_operations() {
    let pair = start_pair("crud");
    let c = Client::connect(config(&pair)).await.expect("connect");

    // shoal_save returns the number of rows; they read back in key order.
    let rows: Vec<Row> = (0..10).map(row).collect();
    let (saved,): (u64,) = c.call("shoal_save", &("n1", &rows)).await.expect("save");
    assert_eq!(saved, 10);
    let all: Vec<Tuple> = c
        .select("shoal_log", &("n1",), Select::default())
        .await
        .expect("all");
    assert_eq!(
        all,
        rows.iter().map(|&r| tuple("n1", r)).collect::<Vec<_>>()
    );

    // Iterators, limit, offset.
    let ge = Select {
        iter: Iter::Ge,
        limit: 3,
        ..Select::default()
    };
    let got: Vec<Tuple> = c
        .select("shoal_log", &("n1", 1_004u64), ge)
        .await
        .expect("ge");
    assert_eq!(got.iter().map(|t| t.2).collect::<Vec<_>>(), [4, 5, 6]);
    let lt = Select {
        iter: Iter::Lt,
        limit: 2,
        offset: 1,
        ..Select::default()
    };
    let got: Vec<Tuple> = c
        .select("shoal_log", &("n1", 1_004u64), lt)
        .await
        .expect("lt");
    assert_eq!(got.iter().map(|t| t.2).collect::<Vec<_>>(), [2, 1]);
    let everything = Select {
        iter: Iter::All,
        ..Select::default()
    };
    let got: Vec<IgnoredAny> = c
        .select("shoal_log", &(), everything)
        .await
        .expect("all, no key");
    assert_eq!(got.len(), 10);

    // Replace, update, upsert, delete, insert.
    let mut t = tuple("n2", row(1));
    c.replace("shoal_log", &t).await.expect("replace");
    t.4 = 0x200;
    c.replace("shoal_log", &t).await.expect("replace again");
    let key = ("n2", t.1, t.2);
    let got: Vec<Tuple> = c
        .select("shoal_log", &key, Select::default())
        .await
        .expect("select");
    assert_eq!(got, [t.clone()]);

    c.update("shoal_log", 0, &key, &[("+", 5, 1)])
        .await
        .expect("update");
    let got: Vec<Tuple> = c
        .select("shoal_log", &key, Select::default())
        .await
        .expect("select");
    assert_eq!(got[0].4, 0x201, "field 5 (code) is 1-based");

    let fresh = tuple("n3", row(2));
    c.upsert("shoal_log", &fresh, &[("+", 7, 10)])
        .await
        .expect("upsert inserts");
    c.upsert("shoal_log", &fresh, &[("+", 7, 10)])
        .await
        .expect("upsert updates");
    let got: Vec<Tuple> = c
        .select("shoal_log", &("n3",), Select::default())
        .await
        .expect("select");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].6, fresh.6 + 10, "field 7 (origin) incremented once");

    let deleted: Option<Tuple> = c.delete("shoal_log", 0, &key).await.expect("delete");
    assert_eq!(deleted.map(|d| d.0), Some("n2".to_owned()));
    let again: Option<IgnoredAny> = c.delete("shoal_log", 0, &key).await.expect("delete again");
    assert!(again.is_none());

    c.insert("shoal_log", &fresh.clone())
        .await
        .expect_err("duplicate");
    match c.insert("shoal_log", &fresh).await {
        Err(Error::Server { code: 3, message }) => {
            assert!(message.contains("Duplicate"), "{message}")
        }
        other => panic!("expected a duplicate-key error, got {other:?}"),
    }

    // A map return value into a struct.
    let (health,): (Health,) = c.call("shoal_health", &()).await.expect("health");
    assert_eq!(health.status, "running");
    assert!(!health.ro);
    assert_eq!(health.log_len, 11, "10 of n1, 1 of n3");
    assert_eq!(health.peers.len(), 1, "{health:?}");
    let _ = &health.peers[0].upstream;

    // Errors: typed, with the server's message; the connection stays.
    match c
        .select::<_, Tuple>("no_such_space", &(), Select::default())
        .await
    {
        Err(Error::NoSuchSpace(name)) => assert_eq!(name, "no_such_space"),
        other => panic!("expected NoSuchSpace, got {other:?}"),
    }
    match c.eval::<_, (u64,)>("return 1", &()).await {
        Err(Error::Server { message, .. }) => {
            assert!(message.contains("Execute access to universe"), "{message}");
        }
        other => panic!("expected access denied, got {other:?}"),
    }
    match c
        .call::<_, (u64,)>("shoal_save", &("bad node!", &rows))
        .await
    {
        Err(e @ Error::Server { .. }) => assert!(e.to_string().contains("bad node name"), "{e}"),
        other => panic!("expected the function's error, got {other:?}"),
    }
    match c.call::<_, (u64,)>("no_such_function", &()).await {
        Err(Error::Server { .. }) => {}
        other => panic!("expected a server error, got {other:?}"),
    }
    match c
        .call::<_, (String,)>("shoal_save", &("n1", &rows[..1]))
        .await
    {
        Err(Error::Decode(_)) => {}
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(matches!(
        c.replace("shoal_log", &5u64).await,
        Err(Error::Encode(_))
    ));
    c.ping().await.expect("still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_requests() {
    const N: u64 = 10_000;
    let pair = start_pair("pipeline");
    let mut cfg = config(&pair);
    cfg.max_in_flight = 2 * N as usize;
    cfg.request_timeout = Duration::from_secs(20);
    let c = Client::connect(cfg).await.expect("connect");

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
    eprintln!("{} requests in {:?}", 2 * N, t.elapsed());

    // Backpressure: a cap of 4 in flight still serves 1000 concurrent calls.
    let cfg = ClientConfig {
        max_in_flight: 4,
        ..on(&pair.b, &pair)
    };
    let narrow = Client::connect(cfg).await.expect("connect b");
    let mut tasks = JoinSet::new();
    for i in 0..1_000u64 {
        let c = narrow.clone();
        tasks.spawn(async move {
            let rows: Vec<Row> = (0..i % 5).map(|j| row(i * 10 + j)).collect();
            let (n,): (u64,) = c.call("shoal_save", &("narrow", rows)).await?;
            Ok::<_, Error>((i % 5, n))
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (want, got) = r.expect("task").expect("save");
        assert_eq!(want, got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_then_recovery() {
    let pair = start_pair("timeout");
    let c = Client::connect(config(&pair)).await.expect("connect");
    c.replace("shoal_log", &tuple("t", row(1)))
        .await
        .expect("replace");

    signal(&pair, Master::A, "-STOP");
    let quick = c.with_timeout(Duration::from_millis(150));
    let mut tasks = JoinSet::new();
    for _ in 0..100 {
        let quick = quick.clone();
        tasks.spawn(async move {
            quick
                .select::<_, Tuple>("shoal_log", &("t",), Select::default())
                .await
        });
    }
    let t = Instant::now();
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Err(e @ Error::Timeout(_)) => assert!(e.outcome_unknown()),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    signal(&pair, Master::A, "-CONT");

    // The late answers to the timed-out requests are dropped; new requests
    // get their own.
    let got: Vec<Tuple> = c
        .select("shoal_log", &("t",), Select::default())
        .await
        .expect("select");
    assert_eq!(got, [tuple("t", row(1))]);
    let (saved,): (u64,) = c
        .call("shoal_save", &("t", [row(2), row(3)]))
        .await
        .expect("save");
    assert_eq!(saved, 2);
    assert!(c.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_then_restarted() {
    let pair = start_pair("kill");
    let c = Client::connect(config(&pair)).await.expect("connect");
    let (n,): (u64,) = c.call("shoal_save", &("k", [row(1)])).await.expect("save");
    assert_eq!(n, 1);

    // Requests in flight when the server dies: outcome unknown.
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
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Err(e @ Error::OutcomeUnknown(_)) => assert!(e.outcome_unknown()),
            other => panic!("expected outcome unknown, got {other:?}"),
        }
    }
    assert!(!c.is_connected());

    // New requests fail fast while it is down.
    let t = Instant::now();
    assert!(matches!(c.ping().await, Err(Error::Disconnected)));
    let got = c
        .select::<_, Tuple>("shoal_log", &("k",), Select::default())
        .await;
    assert!(matches!(got, Err(Error::Disconnected)), "{got:?}");
    assert!(t.elapsed() < Duration::from_millis(100));

    // Back up: the client reconnects by itself.
    pair.restart(Master::A).expect("restart a");
    assert!(
        c.wait_connected(Duration::from_secs(10)).await,
        "reconnected"
    );
    let got: Vec<Tuple> = c
        .select("shoal_log", &("k",), Select::default())
        .await
        .expect("select");
    assert_eq!(got[0], tuple("k", row(1)), "the acknowledged save survived");
    c.ping().await.expect("ping");
}

/// The load figure: `shoal_save` calls of 1000 rows, 8 in flight, on one
/// connection, for 5 s. Run with
/// `cargo test --release -p shoal-tarantool --test client -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load figure, run by hand"]
async fn load_shoal_save_1000_rows_8_in_flight() {
    const ROWS: u64 = 1_000;
    const IN_FLIGHT: u64 = 8;
    let pair = start_pair("load");
    let c = Client::connect(config(&pair)).await.expect("connect");
    let until = Instant::now() + Duration::from_secs(5);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..IN_FLIGHT {
        let c = c.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut batch = 0u64;
            while Instant::now() < until {
                let base = (batch * IN_FLIGHT + w) * ROWS;
                let rows: Vec<Row> = (base..base + ROWS).map(row).collect();
                let t = Instant::now();
                let (n,): (u64,) = c.call("shoal_save", &("load", &rows)).await.expect("save");
                latencies.push(t.elapsed());
                assert_eq!(n, ROWS);
                batch += 1;
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.expect("task"));
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let calls = latencies.len();
    let at = |q: f64| latencies[((calls as f64 * q) as usize).min(calls - 1)];
    eprintln!(
        "{calls} calls in {secs:.2} s: {:.0} calls/s, {:.0} records/s; latency p50 {:?}, p99 {:?}, max {:?}",
        calls as f64 / secs,
        calls as f64 * ROWS as f64 / secs,
        at(0.5),
        at(0.99),
        at(1.0),
    );
}

/// A fake server: the client survives answers split into single bytes,
/// garbage after a good answer and a garbage greeting, without panicking;
/// it drops the connection, fails what was in flight and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_split_answers_and_garbage() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn read_request(s: &mut TcpStream) -> Vec<u8> {
        let mut prefix = [0u8; 5];
        s.read_exact(&mut prefix).await.expect("prefix");
        assert_eq!(prefix[0], 0xce);
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
        let mut req = vec![0u8; len as usize];
        s.read_exact(&mut req).await.expect("request");
        req
    }
    /// `{code: 0, sync, schema_version: 1}` and an empty body; the sync of
    /// a fresh client's request is a positive fixint at byte 4.
    fn ok_answer(req: &[u8]) -> Vec<u8> {
        assert_eq!(&req[..2], &[0x82, 0x00]);
        vec![
            0xce, 0, 0, 0, 8, 0x83, 0x00, 0x00, 0x01, req[4], 0x05, 0x01, 0x80,
        ]
    }
    let mut greeting = format!("{:<63}\n", "Tarantool 2.6.0 (Binary) fake").into_bytes();
    greeting
        .extend(format!("{:<63}\n", "5c7QmaxO5xpcVUVu3UvjNXNTTGHrb5vjDR0A6Z/k6r8=").into_bytes());

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.write_all(&greeting).await.expect("greeting");
        let auth = read_request(&mut s).await;
        assert_eq!(auth[2], 0x07, "auth first");
        s.write_all(&ok_answer(&auth)).await.expect("auth answer");
        // One byte per write.
        let ping = read_request(&mut s).await;
        for b in ok_answer(&ping) {
            s.write_all(&[b]).await.expect("byte");
            s.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Garbage where a length prefix belongs.
        let _ = read_request(&mut s).await;
        s.write_all(&[0xa3, b'b', b'a', b'd'])
            .await
            .expect("garbage");
        // The client reconnects; a garbage greeting this time.
        let (mut s2, _) = listener.accept().await.expect("reconnect");
        s2.write_all(&[0xff; 128]).await.expect("bad greeting");
        // And once more.
        let (_s3, _) = listener.accept().await.expect("reconnect again");
        drop(s);
    });

    let cfg = ClientConfig {
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(20),
        ..ClientConfig::new(addr, "shoal", "secret")
    };
    let c = Client::connect(cfg).await.expect("connect to the fake");
    c.ping().await.expect("answer split into single bytes");
    match c.ping().await {
        Err(e @ Error::OutcomeUnknown(_)) => {
            assert!(e.to_string().contains("length prefix"), "{e}")
        }
        other => panic!("expected the connection to drop, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the client reconnected twice")
        .expect("server");
}
