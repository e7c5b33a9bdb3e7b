//! The verdict store (`lua/shoal_verdict.lua`) on a real verdict pair
//! started by the scripts (`testkit::Pair::start_verdict`: instance a is
//! cluster 1, b is cluster 2, replicating master-master), called as the
//! nodes call it: user `shoal`, stored procedures only.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use shoal_tarantool::testkit::{instance_script, Master, Pair, TempPair};
use shoal_tarantool::verdict::procs;
use shoal_tarantool::{Client, ClientConfig, Error, Tarantool};

/// {expires_us, id, subject, verdict, score, at_us, cluster, source}
type Row = (u64, u64, u64, u64, u64, u64, u64, String);
/// A `verdict` tuple: node, then a row.
type Verdict = (String, u64, u64, u64, u64, u64, u64, u64, String);
/// An `xmsg` tuple: cluster, seq, node, oseq, code, ttl_ms, at_us, f0..f3.
type Xmsg = (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);
/// A message as `shoal_xq_publish` takes it: node_id, oseq, code, ttl_ms,
/// at_us, f0..f3.
type Msg = (u64, u64, u64, u64, u64, u64, u64, u64, u64);
/// What `shoal_lease` returns: holder, epoch, expires_us, now_us.
type Lease = (String, u64, u64, u64);

const WAIT: Duration = Duration::from_secs(10);

fn tempdir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shoal-verdict-{}-{name}", std::process::id()))
}

fn start_pair(name: &str) -> TempPair {
    let pair = Pair::start_verdict(&tempdir(name)).expect("start the verdict pair");
    assert_eq!(pair.cluster(Master::A), Some(1));
    assert_eq!(pair.cluster(Master::B), Some(2));
    TempPair::new(pair)
}

async fn client(pair: &Pair, m: Master) -> Client {
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::new(pair.addr(m), "shoal", pair.password.clone())
    };
    Client::connect(cfg).await.expect("connect as shoal")
}

#[derive(Debug, Deserialize)]
struct Stats {
    verdicts: u64,
    xmsg: u64,
    xmsg_last_seq: u64,
    lease_holder: Option<String>,
    lease_epoch: u64,
    now_us: u64,
    cursors: Vec<Cursor>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Cursor {
    consumer: u64,
    origin: u64,
    seq: u64,
    epoch: u64,
}

async fn stats(c: &Client) -> Stats {
    let (s,): (Stats,) = c.call(procs::VERDICT_STATS, &()).await.expect("stats");
    s
}

#[derive(Debug, Deserialize)]
struct Health {
    peers: Vec<Peer>,
}

#[derive(Debug, Deserialize)]
struct Peer {
    upstream: String,
    downstream: String,
}

/// Each instance sees the other as follow/follow.
async fn both_follow(a: &Client, b: &Client) -> bool {
    for c in [a, b] {
        let (h,): (Health,) = c.call(procs::HEALTH, &()).await.expect("health");
        if h.peers.len() != 1
            || h.peers
                .iter()
                .any(|p| p.upstream != "follow" || p.downstream != "follow")
        {
            return false;
        }
    }
    true
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's error message; panics on success or another error.
fn server_error<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Server { message, .. }) => message,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn get(c: &Client, subject: u64) -> Option<Verdict> {
    let (v,): (Option<Verdict>,) = c.call(procs::VERDICT_GET, &(subject,)).await.expect("get");
    v
}

async fn put(c: &Client, node: &str, rows: &[Row]) -> Result<u64, Error> {
    c.call::<_, (u64,)>(procs::VERDICT_PUT, &(node, rows))
        .await
        .map(|(n,)| n)
}

fn row(expires_us: u64, id: u64, subject: u64, verdict: u64, at_us: u64, cluster: u64) -> Row {
    (
        expires_us,
        id,
        subject,
        verdict,
        id % 100,
        at_us,
        cluster,
        "pixel".into(),
    )
}

fn full(node: &str, r: &Row) -> Verdict {
    (node.into(), r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_latest_live_replicated_both_ways() {
    let pair = start_pair("verdicts");
    let (a, b) = (
        client(&pair, Master::A).await,
        client(&pair, Master::B).await,
    );
    let now = stats(&a).await.now_us;
    let live = now + 60_000_000;

    // Subject 42: the latest by at_us wins, whichever cluster wrote it.
    let a1 = [
        row(live, 1, 42, 2, now - 3_000_000, 1),
        row(live, 2, 42, 1, now - 1_000_000, 1),
        // 43: same at_us on both clusters: the higher node name wins.
        row(live, 3, 43, 2, now, 1),
        // 44: the newest is expired: the older live one is the answer.
        row(live, 4, 44, 1, now - 5_000_000, 1),
        row(now - 1, 5, 44, 2, now, 1),
        // 45: nothing live.
        row(now - 1, 6, 45, 2, now, 1),
    ];
    let b1 = [
        row(live, 1, 42, 2, now - 2_000_000, 2),
        row(live, 2, 43, 1, now, 2),
    ];
    assert_eq!(put(&a, "a1", &a1).await.expect("put on a"), 6);
    assert_eq!(put(&b, "b1", &b1).await.expect("put on b"), 2);
    // Retried: replace, same values, same count.
    assert_eq!(put(&b, "b1", &b1).await.expect("put again"), 2);
    assert_eq!(put(&a, "a1", &[]).await.expect("empty put"), 0);

    for c in [&a, &b] {
        wait_for("verdicts replicated", || async {
            get(c, 42).await == Some(full("a1", &a1[1]))
                && get(c, 43).await == Some(full("b1", &b1[1]))
        })
        .await;
        assert_eq!(get(c, 44).await, Some(full("a1", &a1[3])));
        assert_eq!(get(c, 45).await, None);
        assert_eq!(get(c, 46).await, None);
    }
    // The expiry fiber removes the two expired rows on both instances.
    for c in [&a, &b] {
        wait_for("expired verdicts deleted", || async {
            stats(c).await.verdicts == 6
        })
        .await;
    }

    // Bad input: a clear error and nothing written.
    let mut bad = vec![row(live, 10, 50, 1, now, 1), row(live, 11, 50, 3, now, 1)];
    let e = server_error(put(&a, "a1", &bad).await);
    assert!(
        e.contains("row 2: verdict must be 1 (human) or 2 (bot)"),
        "{e}"
    );
    bad[1].3 = 1;
    bad[1].6 = 2;
    let e = server_error(put(&a, "a1", &bad).await);
    assert!(
        e.contains("row 2: cluster 2 is not this store's cluster (1)"),
        "{e}"
    );
    let e = server_error(put(&a, "no spaces", &bad[..1]).await);
    assert!(e.contains("bad node name"), "{e}");
    let e = server_error(
        a.call::<_, (u64,)>(procs::VERDICT_PUT, &("a1", [(1u64, 2u64)]))
            .await,
    );
    assert!(
        e.contains(
            "row 1 must be {expires_us, id, subject, verdict, score, at_us, cluster, source}"
        ),
        "{e}"
    );
    let e = server_error(
        a.call::<_, (u64,)>(
            procs::VERDICT_PUT,
            &("a1", [(live, 12u64, 50u64, 1u64, 1u64, now, 1u64, 7u64)]),
        )
        .await,
    );
    assert!(e.contains("row 1: source must be a string"), "{e}");
    let e = server_error(a.call::<_, (u64,)>(procs::VERDICT_PUT, &("a1", 5u64)).await);
    assert!(e.contains("rows must be an array"), "{e}");
    // A node name of another cluster's range is refused.
    let e = server_error(put(&b, "a1", &[row(live, 99, 51, 1, now, 2)]).await);
    assert!(e.contains("node name a1 is in use by cluster 1"), "{e}");
    assert_eq!(get(&a, 50).await, None);
    assert_eq!(get(&b, 51).await, None);
    assert_eq!(stats(&a).await.verdicts, 6);
    let e = server_error(
        a.call::<_, (Option<Verdict>,)>(procs::VERDICT_GET, &("x",))
            .await,
    );
    assert!(e.contains("subject must be an unsigned integer"), "{e}");

    // Writes go through the procs only.
    let e = server_error(a.replace("verdict", &full("x", &a1[0])).await);
    assert!(
        e.contains("Write access to space 'verdict' is denied"),
        "{e}"
    );

    // Full 64-bit values survive.
    let big = row(u64::MAX, u64::MAX, u64::MAX, 2, now, 2);
    put(&b, "b1", std::slice::from_ref(&big))
        .await
        .expect("put u64::MAX");
    wait_for("64-bit row replicated", || async {
        get(&a, u64::MAX).await == Some(full("b1", &big))
    })
    .await;

    assert!(both_follow(&a, &b).await, "replication follow/follow");

    // b down: a takes verdicts alone; b, restarted by the script from the
    // directory's settings (schema, cluster 2), catches up.
    let other = Pair::attach(&pair.dir).expect("attach");
    assert_eq!(other.cluster(Master::B), Some(2));
    other.stop(Master::B).expect("stop b");
    let late = row(live, 20, 60, 1, now, 1);
    put(&a, "a1", std::slice::from_ref(&late))
        .await
        .expect("put with b down");
    other.restart(Master::B).expect("restart b");
    drop(other);
    let b = client(&pair, Master::B).await;
    wait_for("b caught up", || async {
        get(&b, 60).await == Some(full("a1", &late))
    })
    .await;
    assert_eq!(stats(&b).await.verdicts, 8);
    wait_for("follow/follow after the restart", || both_follow(&a, &b)).await;
    let console = pair
        .console(Master::B, "box.info.replication[1].upstream.status")
        .expect("console");
    assert!(console.contains("follow"), "{console}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_fencing_and_retention() {
    let pair = start_pair("lease");
    let a = client(&pair, Master::A).await;
    let lease = |node: &'static str, ttl_ms: u64| {
        let a = &a;
        async move {
            let (l,): (Lease,) = a
                .call(procs::LEASE, &(1u64, node, ttl_ms))
                .await
                .expect("lease");
            l
        }
    };

    // Take: epoch 1, expires at now + ttl.
    let (holder, epoch, expires, now) = lease("n1", 5_000).await;
    assert_eq!((holder.as_str(), epoch), ("n1", 1));
    assert_eq!(expires, now + 5_000_000);
    // Renew: same epoch, later expiry.
    let (holder, epoch, expires2, _) = lease("n1", 5_000).await;
    assert_eq!((holder.as_str(), epoch), ("n1", 1));
    assert!(expires2 >= expires);
    // Another node is refused while it is live: it is told the holder.
    let (holder, epoch, expires3, now3) = lease("n2", 5_000).await;
    assert_eq!((holder.as_str(), epoch, expires3), ("n1", 1, expires2));
    assert!(now3 < expires3);
    // Only this store's cluster.
    let e = server_error(
        a.call::<_, (Lease,)>(procs::LEASE, &(2u64, "n1", 1_000u64))
            .await,
    );
    assert!(
        e.contains("cluster 2 is not this store's cluster (1)"),
        "{e}"
    );
    let e = server_error(
        a.call::<_, (Lease,)>(procs::LEASE, &(1u64, "n1", 0u64))
            .await,
    );
    assert!(e.contains("ttl_ms must be at least 1"), "{e}");

    // Takeover after expiry bumps the epoch.
    let (_, epoch, ..) = lease("n1", 200).await;
    assert_eq!(epoch, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (holder, epoch, ..) = lease("n2", 5_000).await;
    assert_eq!((holder.as_str(), epoch), ("n2", 2));

    // Fencing: the old holder's epoch, or a wrong node, is refused.
    let msg = |oseq: u64, at_us: u64| -> Msg { (7, oseq, 2, 10_000, at_us, 1, 2, 3, 4) };
    let publish = |node: &'static str, epoch: u64, msgs: Vec<Msg>| {
        let a = &a;
        async move {
            a.call::<_, (u64, u64)>(procs::XQ_PUBLISH, &(1u64, node, epoch, msgs))
                .await
        }
    };
    let e = server_error(publish("n1", 1, vec![msg(1, now)]).await);
    assert!(e.starts_with("fenced:"), "{e}");
    let e = server_error(publish("n1", 2, vec![msg(1, now)]).await);
    assert!(e.starts_with("fenced:"), "{e}");
    let e = server_error(
        a.call::<_, (u64,)>(procs::XQ_ACK, &(1u64, "n1", 1u64, 2u64, 0u64))
            .await,
    );
    assert!(e.starts_with("fenced:"), "{e}");
    assert_eq!(stats(&a).await.xmsg, 0, "nothing published while fenced");
    let (n,): (u64,) = a
        .call(procs::XQ_ACK, &(1u64, "n2", 2u64, 2u64, 0u64))
        .await
        .expect("ack by the holder");
    assert_eq!(n, 0);

    // Release lets another node take it at once; a non-holder's release
    // does nothing.
    let (released,): (bool,) = a
        .call(procs::LEASE_RELEASE, &(1u64, "n1"))
        .await
        .expect("release");
    assert!(!released);
    let (released,): (bool,) = a
        .call(procs::LEASE_RELEASE, &(1u64, "n2"))
        .await
        .expect("release");
    assert!(released);
    let e = server_error(publish("n2", 2, vec![msg(1, now)]).await);
    assert!(e.starts_with("fenced:"), "a released lease fences: {e}");
    let (holder, epoch, ..) = lease("n1", 30_000).await;
    assert_eq!((holder.as_str(), epoch), ("n1", 3));
    let s = stats(&a).await;
    assert_eq!((s.lease_holder.as_deref(), s.lease_epoch), (Some("n1"), 3));

    // Retention trims this cluster's messages older than an hour (by
    // at_us), on both instances, but never the newest: the sequence goes on.
    let old = now - 7_200_000_000;
    let (ins, _) = publish("n1", 3, vec![msg(1, old), msg(2, old), msg(3, old)])
        .await
        .expect("publish old");
    assert_eq!(ins, 3);
    let b = client(&pair, Master::B).await;
    for c in [&a, &b] {
        wait_for("old messages trimmed but the newest", || async {
            let s = stats(c).await;
            s.xmsg == 1
        })
        .await;
    }
    assert_eq!(stats(&a).await.xmsg_last_seq, 3);
    let (ins, _) = publish("n1", 3, vec![msg(4, now)])
        .await
        .expect("publish new");
    assert_eq!(ins, 1);
    assert_eq!(stats(&a).await.xmsg_last_seq, 4);
    for c in [&a, &b] {
        wait_for("seq 3 trimmed once not the newest", || async {
            let (rows,): (Vec<Xmsg>,) = b
                .call(procs::XQ_FETCH, &(2u64, 100u64))
                .await
                .expect("fetch");
            stats(c).await.xmsg == 1 && rows.iter().map(|r| r.1).collect::<Vec<_>>() == [4]
        })
        .await;
    }
    assert!(both_follow(&a, &b).await, "replication follow/follow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_publish_dedup_fetch_and_ack() {
    let pair = start_pair("queue");
    let (a, b) = (
        client(&pair, Master::A).await,
        client(&pair, Master::B).await,
    );
    let (l1,): (Lease,) = a
        .call(procs::LEASE, &(1u64, "fa", 30_000u64))
        .await
        .expect("lease 1");
    let (l2,): (Lease,) = b
        .call(procs::LEASE, &(2u64, "fb", 30_000u64))
        .await
        .expect("lease 2");
    let (e1, e2) = (l1.1, l2.1);
    let now = l1.3;
    let msg =
        |node: u64, oseq: u64| -> Msg { (node, oseq, 2, 10_000, now + oseq, oseq, 1, 0, u64::MAX) };

    // Dedup by {origin node, oseq}; seqs are contiguous per cluster.
    let (ins, skip): (u64, u64) = a
        .call(
            procs::XQ_PUBLISH,
            &(1u64, "fa", e1, [msg(5, 1), msg(5, 2), msg(5, 3)]),
        )
        .await
        .expect("publish");
    assert_eq!((ins, skip), (3, 0));
    let (ins, skip): (u64, u64) = a
        .call(
            procs::XQ_PUBLISH,
            &(1u64, "fa", e1, [msg(5, 2), msg(5, 3), msg(6, 2), msg(5, 3)]),
        )
        .await
        .expect("publish again");
    assert_eq!((ins, skip), (1, 3));
    let (ins, skip): (u64, u64) = b
        .call(procs::XQ_PUBLISH, &(2u64, "fb", e2, [msg(9, 1), msg(9, 2)]))
        .await
        .expect("publish on b");
    assert_eq!((ins, skip), (2, 0));
    // Only a store's own cluster publishes there; shapes are checked.
    let e = server_error(
        b.call::<_, (u64, u64)>(procs::XQ_PUBLISH, &(1u64, "fa", e1, [msg(5, 9)]))
            .await,
    );
    assert!(
        e.contains("cluster 1 is not this store's cluster (2)"),
        "{e}"
    );
    let e = server_error(
        a.call::<_, (u64, u64)>(procs::XQ_PUBLISH, &(1u64, "fa", e1, [(1u64, 2u64)]))
            .await,
    );
    assert!(e.contains("msg 1 must be {node_id, oseq"), "{e}");
    let e = server_error(
        a.call::<_, (u64, u64)>(
            procs::XQ_PUBLISH,
            &(
                1u64,
                "fa",
                e1,
                [(1u64, 2u64, 3u64, 4u64, -5i64, 6u64, 7u64, 8u64, 9u64)],
            ),
        )
        .await,
    );
    assert!(
        e.contains("msg 1: at_us must be an unsigned integer"),
        "{e}"
    );

    // b (consumer 2) fetches cluster 1's messages in order, never its own.
    let fetch = |c: &'static str, consumer: u64, limit: u64| {
        let cl = if c == "a" { &a } else { &b };
        async move {
            let (rows,): (Vec<Xmsg>,) = cl
                .call(procs::XQ_FETCH, &(consumer, limit))
                .await
                .expect("fetch");
            rows
        }
    };
    wait_for("cluster 1's messages on b", || async {
        fetch("b", 2, 100).await.len() == 4
    })
    .await;
    let rows = fetch("b", 2, 100).await;
    let expected: Vec<Xmsg> = [
        (1, msg(5, 1)),
        (2, msg(5, 2)),
        (3, msg(5, 3)),
        (4, msg(6, 2)),
    ]
    .iter()
    .map(|&(seq, m)| (1, seq, m.0, m.1, m.2, m.3, m.4, m.5, m.6, m.7, m.8))
    .collect();
    assert_eq!(rows, expected);
    assert_eq!(fetch("b", 2, 2).await, expected[..2]);

    // The cursor: acked messages are not fetched again; it never goes back.
    let (cur,): (u64,) = b
        .call(procs::XQ_ACK, &(2u64, "fb", e2, 1u64, 2u64))
        .await
        .expect("ack");
    assert_eq!(cur, 2);
    assert_eq!(fetch("b", 2, 100).await, expected[2..]);
    let (cur,): (u64,) = b
        .call(procs::XQ_ACK, &(2u64, "fb", e2, 1u64, 1u64))
        .await
        .expect("ack lower");
    assert_eq!(cur, 2);
    let e = server_error(
        b.call::<_, (u64,)>(procs::XQ_ACK, &(2u64, "fb", e2, 1u64, 99u64))
            .await,
    );
    assert!(e.contains("past the last message of cluster 1"), "{e}");
    let e = server_error(
        b.call::<_, (u64,)>(procs::XQ_ACK, &(1u64, "fa", e1, 2u64, 1u64))
            .await,
    );
    assert!(
        e.contains("consumer 1 is not this store's cluster (2)"),
        "{e}"
    );
    let e = server_error(
        b.call::<_, (u64,)>(procs::XQ_ACK, &(2u64, "fb", e2 + 1, 1u64, 3u64))
            .await,
    );
    assert!(e.starts_with("fenced:"), "{e}");
    let (cur,): (u64,) = b
        .call(procs::XQ_ACK, &(2u64, "fb", e2, 1u64, 4u64))
        .await
        .expect("ack all");
    assert_eq!(cur, 4);
    assert!(fetch("b", 2, 100).await.is_empty());
    let s = stats(&b).await;
    assert_eq!(
        s.cursors,
        [Cursor {
            consumer: 2,
            origin: 1,
            seq: 4,
            epoch: e2
        }]
    );
    assert_eq!(
        (s.lease_holder.as_deref(), s.xmsg_last_seq),
        (Some("fb"), 2)
    );

    // And the other way: a (consumer 1) gets cluster 2's messages.
    wait_for("cluster 2's messages on a", || async {
        fetch("a", 1, 100)
            .await
            .iter()
            .map(|r| (r.0, r.1))
            .collect::<Vec<_>>()
            == [(2, 1), (2, 2)]
    })
    .await;
    // A third cluster's messages would come after cluster 2's: a fetch for
    // consumer 3 sees both others, in {cluster, seq} order.
    let all: Vec<(u64, u64)> = fetch("a", 3, 100)
        .await
        .iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(all, [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]);
    assert_eq!(fetch("a", 3, 5).await.len(), 5);

    assert!(both_follow(&a, &b).await, "replication follow/follow");
}

/// `VerdictClient`, the implementation of the core's traits, against the
/// real procedures: each trait call does what the fake does (the
/// simulator's assumptions hold on Tarantool), and a lost lease comes back
/// as `StoreError::Fenced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_traits_on_the_real_store() {
    use shoal_core::ports::{CrossQueue, Lease as _, StoreError, VerdictRow, VerdictStore};
    use shoal_core::{RelayMsg, Verdict as Kind};
    use shoal_tarantool::verdict::VerdictClient;

    let t = start_pair("traits");
    let (a, b) = (
        VerdictClient::new(client(&t, Master::A).await),
        VerdictClient::new(client(&t, Master::B).await),
    );
    let now_us = stats(a.conn()).await.now_us;

    // Verdicts: put on cluster 1, read back on cluster 2 after replication.
    let row = VerdictRow {
        expires_us: now_us + 600_000_000,
        id: 1,
        subject: 77,
        verdict: Kind::Bot,
        score: 90,
        at_us: now_us,
        cluster: 1,
        source: "trait".into(),
    };
    assert_eq!(a.put("ta1", std::slice::from_ref(&row)).await, Ok(1));
    let wrong = VerdictRow {
        cluster: 2,
        ..row.clone()
    };
    assert!(matches!(
        a.put("ta1", &[wrong]).await,
        Err(StoreError::Refused(_))
    ));
    wait_for("the verdict on b", || async {
        b.get(77).await.expect("get").is_some()
    })
    .await;
    let got = b.get(77).await.expect("get").expect("live");
    assert_eq!(
        (
            got.node.as_str(),
            got.subject,
            got.kind(),
            got.score,
            got.cluster,
            got.source.as_str()
        ),
        ("ta1", 77, Some(Kind::Bot), 90, 1, "trait")
    );
    assert_eq!(b.get(78).await, Ok(None));

    // Lease: taken, held against another node, fenced once taken over.
    let l = a.acquire(1, "fa", 30_000).await.expect("lease");
    assert_eq!((l.holder.as_str(), l.epoch), ("fa", 1));
    assert!(l.expires_us > l.now_us);
    assert_eq!(
        a.acquire(1, "fb", 30_000).await.expect("lease").holder,
        "fa"
    );
    let msg = |oseq: u64| RelayMsg {
        node: 4,
        oseq,
        code: 2,
        ttl_ms: 60_000,
        at_us: now_us,
        fields: [500, 2, 0, 0],
    };
    let p = a
        .publish(1, "fa", 1, &[msg(1), msg(2), msg(1)])
        .await
        .expect("publish");
    assert_eq!((p.inserted, p.skipped), (2, 1));
    assert!(matches!(
        a.publish(1, "fb", 1, &[msg(3)]).await,
        Err(StoreError::Fenced(m)) if m.starts_with("fenced:")
    ));

    // Queue: cluster 2 fetches cluster 1's messages and acks them.
    b.acquire(2, "fz", 30_000).await.expect("lease b");
    wait_for("the messages on b", || async {
        b.fetch(2, 10).await.expect("fetch").len() == 2
    })
    .await;
    let q = b.fetch(2, 10).await.expect("fetch");
    assert_eq!(
        q.iter()
            .map(|m| (m.cluster, m.seq, m.node, m.oseq))
            .collect::<Vec<_>>(),
        [(1, 1, 4, 1), (1, 2, 4, 2)]
    );
    assert_eq!(q[0].fields, [500, 2, 0, 0]);
    assert!(q[0].to_record(now_us).is_some());
    assert_eq!(b.ack(2, "fz", 1, 1, 2).await, Ok(2));
    assert_eq!(b.ack(2, "fz", 1, 1, 1).await, Ok(2), "never back");
    assert!(matches!(
        b.ack(2, "fz", 1, 1, 9).await,
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        b.ack(2, "fy", 1, 1, 2).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(b.fetch(2, 10).await.expect("fetch").is_empty());

    // Release: anyone takes it at once, at the next epoch.
    assert_eq!(a.release(1, "fb").await, Ok(false));
    assert_eq!(a.release(1, "fa").await, Ok(true));
    let l = a.acquire(1, "fb", 30_000).await.expect("lease");
    assert_eq!((l.holder.as_str(), l.epoch), ("fb", 2));
    assert!(matches!(
        a.publish(1, "fa", 1, &[msg(4)]).await,
        Err(StoreError::Fenced(_))
    ));
}

#[test]
fn instance_script_checks_its_settings() {
    let dir = tempdir("instance");
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(instance_script())
            .arg("start")
            .arg(&dir)
            .args(args)
            .env("SHOAL_TT_PASSWORD", "p")
            .env("SHOAL_TT_REPL_PASSWORD", "r")
            .env_remove("SHOAL_TT_CLUSTER")
            .output()
            .expect("instance.sh")
    };
    let out = run(&["--listen", "127.0.0.1:1", "--schema", "verdict"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SHOAL_TT_CLUSTER or --cluster must be 1..4294967295"),
        "{err}"
    );
    let out = run(&["--listen", "127.0.0.1:1", "--schema", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be store or verdict"));
    assert!(!dir.join("tarantool.pid").exists(), "nothing started");
    let status = Command::new("bash")
        .arg(instance_script())
        .arg("status")
        .arg(&dir)
        .status()
        .expect("status");
    assert!(!status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
