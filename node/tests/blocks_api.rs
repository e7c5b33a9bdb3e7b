//! `/v1/blocks` against real nodes: two clusters of two nodes on loopback,
//! each with its verdict store (a replicated Tarantool pair). A block
//! posted on one node of cluster 1 is listed by a node of cluster 2 (it
//! crossed through the forwarders), its delete lifts it there too, and bad
//! requests get 4xx with the reason. No `[enforce]` here (no root): the
//! nodes hold and relay blocks; the kernel side is `enforce_netns.rs`.
// Waiting on real processes needs the clock.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_node::http_request;
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_tarantool::testkit::Pair;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const TOKEN: &str = "blocks-api-token-0123456789";

fn cluster(dir: &Path, cluster: u32, store: &str, password: &str) -> Vec<NodeProcess> {
    let (group, port) = unique_group();
    (1..=2)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir.join(format!("c{cluster}")));
            spec.cluster = cluster;
            spec.extra = format!(
                "[verdicts]\nstore = \"{store}\"\npassword = \"{password}\"\napi_tokens = [\"{TOKEN}\"]\ntoken_key_id = 1\ntoken_secret = \"blocks-token-secret-0123456\"\nlease_ms = 1000\npoll_ms = 20\n"
            );
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
        })
        .collect()
}

fn call(n: &NodeProcess, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let (status, text) =
        http_request(&n.api, method, path, auth, body.as_bytes()).expect("http answer");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn listed(n: &NodeProcess, prefix: &str) -> Option<Value> {
    let (status, v) = call(n, "GET", "/v1/blocks", Some(TOKEN), "");
    assert_eq!(status, 200, "{v}");
    v["blocks"]
        .as_array()?
        .iter()
        .find(|b| b["prefix"] == prefix)
        .cloned()
}

#[test]
fn a_block_posted_in_one_cluster_is_held_in_the_other_and_lifted_there() {
    let dir = std::env::temp_dir().join(format!("shoal-blocks-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pair = Pair::start_verdict(&dir.join("tt")).expect("verdict store pair");
    let a = cluster(&dir, 1, &pair.a, &pair.password);
    let b = cluster(&dir, 2, &pair.b, &pair.password);

    let (status, v) = call(
        &a[0],
        "POST",
        "/v1/blocks",
        Some(TOKEN),
        r#"{"prefix":"198.51.100.0/24","ttl_s":600,"reason":"scan"}"#,
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["ttl_ms"], 600_000);
    // A TTL past the node's max_ttl is cut to it (and sent and saved so):
    // the answer says what is held.
    let (status, v) = call(
        &a[0],
        "POST",
        "/v1/blocks",
        Some(TOKEN),
        r#"{"prefix":"203.0.113.0/24","ttl_s":4294967,"reason":"long"}"#,
    );
    assert_eq!(status, 201, "{v}");
    let held = v["ttl_ms"].as_u64().expect("ttl_ms");
    assert!(held < 4_294_967_000, "held as asked past max_ttl: {v}");
    // Held by the other node of cluster 1 (multicast) and by both nodes of
    // cluster 2 (forwarders and the queue).
    for n in [&a[1], &b[0], &b[1]] {
        assert!(
            wait_until(Duration::from_secs(20), || listed(n, "198.51.100.0/24")
                .is_some()),
            "node {} of cluster {} holds the block",
            n.id,
            if std::ptr::eq(n, &a[1]) { 1 } else { 2 }
        );
    }
    let held = listed(&b[0], "198.51.100.0/24").expect("held");
    assert_eq!(held["origin_cluster"], 1);
    assert!(held["ttl_left_ms"]
        .as_u64()
        .is_some_and(|ms| ms <= 600_000 && ms > 500_000));

    let (status, v) = call(
        &a[1],
        "DELETE",
        "/v1/blocks/198.51.100.0/24",
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 200, "{v}");
    for n in [&a[0], &b[0], &b[1]] {
        assert!(
            wait_until(Duration::from_secs(20), || listed(n, "198.51.100.0/24")
                .is_none()),
            "lifted on node {}",
            n.id
        );
    }

    // Bad requests: 4xx with the reason, and the node keeps serving.
    for (auth, body, want) in [
        (None, r#"{"prefix":"192.0.2.0/24","ttl_s":60}"#, 401),
        (Some(TOKEN), r#"{"prefix":"192.0.2.1/24","ttl_s":60}"#, 400),
        (Some(TOKEN), r#"{"prefix":"192.0.2.0/24","ttl_s":0}"#, 400),
        (
            Some(TOKEN),
            r#"{"prefix":"192.0.2.0/24","ttl_s":60,"reason":"far too long"}"#,
            400,
        ),
        (
            Some(TOKEN),
            r#"{"prefix":"192.0.2.0/24","ttl_s":60,"x":1}"#,
            400,
        ),
        (Some(TOKEN), "not json", 400),
    ] {
        let (status, v) = call(&a[0], "POST", "/v1/blocks", auth, body);
        assert_eq!(status, want, "{body}: {v}");
    }
    let (status, _) = call(&a[0], "DELETE", "/v1/blocks/not-a-prefix", Some(TOKEN), "");
    assert_eq!(status, 400);
    assert!(listed(&a[0], "192.0.2.0/24").is_none());
    drop((a, b, pair));
    let _ = std::fs::remove_dir_all(&dir);
}
