//! Three `shoal` processes in three network namespaces joined by a bridge:
//! several hosts on one machine, real multicast across veth links. Needs
//! root and iproute2; otherwise it prints `SKIPPED` (and fails under
//! `SHOAL_REQUIRE_ALL=1`, as in `.ci/run`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_node::testkit::{wait_until, NodeProcess, NodeSpec};
use shoal_wire::{Code, Record};

mod common;
mod lan;

use lan::Lan;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(5);

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) missing".into());
    }
    None
}

#[test]
fn three_namespaces_on_a_bridge_share_state() {
    if let Some(why) = skip_reason() {
        common::skip(
            "three_namespaces_on_a_bridge_share_state",
            &format!("{why}; run as root with iproute2"),
        );
        return;
    }
    let lan = Lan::up("sht", 20, 3).expect("namespaces up");
    let dir = std::env::temp_dir().join(format!("shoal-netns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let nodes: Vec<NodeProcess> = (1..=3)
        .map(|k| {
            let mut spec = NodeSpec::loopback(k, Ipv4Addr::new(239, 77, 9, 1), 7709, &dir);
            spec.interface = lan.addr(k);
            spec.netns = Some(lan.ns(k));
            spec.extra = "[modes.default]\nlevels = [{ level = 1, total_up = 100000, total_down = 50000, local_up = 5000, local_down = 4000 }]\n".into();
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts in its namespace")
        })
        .collect();
    let mut clients: Vec<_> = nodes.iter().map(|n| n.client().expect("client")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&[Record::new(Code::LOAD, [11, 100 * (i as u64 + 1), 0, 0])])
            .expect("send");
    }
    for c in clients.iter_mut() {
        assert!(
            wait_until(WAIT, || c
                .query(Code::QUERY_LOAD, 11, WAIT)
                .is_ok_and(|r| r.fields[1] == 600 && r.fields[3] == 3)),
            "every namespace sees the cluster total"
        );
    }
    clients[1]
        .send(&[Record::new(Code::LOAD, [11, 9_000, 0, 0])])
        .expect("send");
    for c in clients.iter_mut() {
        assert!(wait_until(WAIT, || c
            .query(Code::QUERY_MODE, 11, WAIT)
            .is_ok_and(|r| r.fields[1] == 1 && r.fields[3] == 2)));
    }
    let mut mark = Record::new(Code::SESSION_MARK, [77, Record::MARK_SUSPICIOUS, 0, 0]);
    mark.ttl_ms = 30_000;
    clients[2].send(&[mark]).expect("send");
    assert!(wait_until(WAIT, || clients[0]
        .query(Code::QUERY_SESSION, 77, WAIT)
        .is_ok_and(|r| r.fields[1] == Record::MARK_SUSPICIOUS)));
    drop(clients);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
