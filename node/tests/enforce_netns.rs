//! Kernel enforcement with real packets: three `shoal` nodes with
//! `[enforce]` in three network namespaces on a bridge and an attacker in a
//! fourth, sending UDP and TCP to every node. A block made with `shoal
//! block` on one node drops the attacker on all three; `kill -9` and a
//! restart of a node keep the drop; the attacker gets through after the
//! TTL; `nft flush table` by hand is repaired within `reconcile_ms`; a
//! batch the kernel refuses leaves the previous set in force and is
//! retried; an allowlisted or too-short prefix is refused with a clear
//! error. Needs root, iproute2 and nft (for the hand-made damage only);
//! skipped with a message otherwise. Serialized with the other namespace
//! tests by `flock /tmp/shoal-netns.lock`.
// Timing and probing real packets need the clock.
#![allow(clippy::disallowed_methods)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shoal_node::testkit::{wait_until, NodeProcess, NodeSpec};
use shoal_node::ClientError;
use shoal_wire::{Code, Op, Prefix, Record};

mod common;
mod lan;
mod nskit;

use lan::Lan;
use nskit::{http_port, netns_lock, udp_echo, Attacker};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const UDP_PORT: u16 = 9977;
/// The test's `reconcile_ms`: the stated repair period.
const RECONCILE: Duration = Duration::from_millis(3000);

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("`{tool}` missing"));
        }
    }
    None
}

fn shoal_in(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, BIN])
        .args(args)
        .output()
        .expect("shoal cli")
}

fn nft_in(ns: &str, args: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args.split_whitespace())
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn set_has(ns: &str, prefix: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "inet", "shoal"])
        .output()
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).contains(prefix)
}

#[test]
fn a_block_drops_the_attacker_on_every_node_and_survives_what_goes_wrong() {
    if let Some(why) = skip_reason() {
        common::skip(
            "a_block_drops_the_attacker_on_every_node",
            &format!("{why}; run as root with iproute2 and nftables"),
        );
        return;
    }
    let _lock = netns_lock();
    let lan = Lan::up("she", 21, 4).expect("namespaces up");
    let dir = std::env::temp_dir().join(format!("shoal-enforce-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let group = Ipv4Addr::new(239, 77, 11, 1);
    let spec = |k: u32| {
        let mut spec = NodeSpec::loopback(k, group, 7711, &dir);
        spec.interface = lan.addr(k);
        spec.netns = Some(lan.ns(k));
        spec.extra = format!(
            "[enforce]\nmin_prefix_v4 = 24\nprotect_sync_network = false\nreconcile_ms = {}\nretry_ms = 500\n",
            RECONCILE.as_millis()
        );
        spec
    };
    let mut nodes: Vec<NodeProcess> = (1..=3)
        .map(|k| NodeProcess::spawn(Path::new(BIN), &spec(k)).expect("node starts"))
        .collect();
    for k in 1..=3 {
        udp_echo(&lan.ns(k), lan.addr(k), UDP_PORT);
    }
    let attacker = Attacker::new(&lan.ns(4), lan.addr(4), UDP_PORT);
    let all = |nodes: &[NodeProcess], through: bool| {
        nodes
            .iter()
            .enumerate()
            .all(|(i, n)| attacker.gets_through(lan.addr(i as u32 + 1), http_port(n)) == through)
    };
    assert!(
        all(&nodes, true),
        "before any block the attacker gets through"
    );

    // 1. A block on node 1 drops the attacker on all three.
    let attacker_ip = lan.addr(4).to_string();
    let cfg1 = nodes[0].config.display().to_string();
    let t = Instant::now();
    let out = shoal_in(
        &lan.ns(1),
        &[
            "block",
            "-c",
            &cfg1,
            &attacker_ip,
            "--ttl",
            "8s",
            "--reason",
            "test",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(3), || (1..=3)
            .all(|k| set_has(&lan.ns(k), &attacker_ip))),
        "the block reached every node's kernel"
    );
    println!("block -> in every node's kernel: {:?}", t.elapsed());
    assert!(all(&nodes, false), "the attacker is dropped by every node");
    let listed = shoal_in(
        &lan.ns(2),
        &["blocks", "-c", &nodes[1].config.display().to_string()],
    );
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(&format!("{attacker_ip}/32"))
            && listed.contains("reason=\"test\"")
            && listed.contains("enforced"),
        "{listed}"
    );

    // 2. kill -9 of node 2: the kernel keeps dropping; after the restart
    //    the node takes the kernel's element back and keeps it.
    nodes[1].kill();
    assert!(!attacker.gets_through(lan.addr(2), http_port(&nodes[0])));
    nodes[1] = NodeProcess::spawn(Path::new(BIN), &spec(2)).expect("node 2 restarts");
    assert!(!attacker.gets_through(lan.addr(2), http_port(&nodes[1])));
    let listed = shoal_in(
        &lan.ns(2),
        &["blocks", "-c", &nodes[1].config.display().to_string()],
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&format!("{attacker_ip}/32")),
        "the restarted node holds the block"
    );

    // 3. After the TTL the attacker gets through everywhere.
    assert!(
        wait_until(Duration::from_secs(12), || all(&nodes, true)),
        "the attacker gets through after the TTL"
    );
    println!("block expired everywhere after {:?} (ttl 8 s)", t.elapsed());

    // 4. `nft flush table` by hand on node 3 is repaired within the
    //    read-back period.
    let out = shoal_in(
        &lan.ns(1),
        &["block", "-c", &cfg1, &attacker_ip, "--ttl", "60s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(3), || all(&nodes, false)));
    nft_in(&lan.ns(3), "flush table inet shoal");
    let flushed = Instant::now();
    assert!(
        wait_until(RECONCILE + Duration::from_secs(2), || !attacker
            .gets_through(lan.addr(3), http_port(&nodes[2]))),
        "repaired within the stated period"
    );
    println!(
        "hand flush repaired after {:?} (reconcile {:?})",
        flushed.elapsed(),
        RECONCILE
    );
    assert!(
        nodes[2]
            .metric("shoal_enforce_repaired_total{kind=\"rules\"}")
            .unwrap_or(0.0)
            >= 1.0
    );

    // 5. A batch the kernel refuses (its prefix overlaps an element added
    //    by hand to the interval set) leaves the previous set in force,
    //    then the read-back fixes it.
    //    Wait for a read-back first, so the hand-made element is still
    //    there when the block's batch goes in.
    let reads = nodes[0]
        .metric("shoal_enforce_reconciles_total")
        .unwrap_or(0.0);
    assert!(wait_until(RECONCILE * 2, || nodes[0]
        .metric("shoal_enforce_reconciles_total")
        .is_some_and(|r| r > reads)));
    let read_s = nodes[0]
        .metric("shoal_enforce_readback_seconds")
        .expect("the last read-back's time is exported");
    assert!(read_s > 0.0 && read_s < 5.0, "{read_s}");
    nft_in(&lan.ns(1), "add element inet shoal v4 { 192.0.2.0/24 }");
    let out = shoal_in(
        &lan.ns(1),
        &["block", "-c", &cfg1, "192.0.2.128/25", "--ttl", "60s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(2), || nodes[0]
            .metric("shoal_enforce_batches_total{result=\"failed\"}")
            .is_some_and(|f| f >= 1.0)),
        "the overlapping batch was refused"
    );
    assert!(
        !attacker.gets_through(lan.addr(1), http_port(&nodes[0])),
        "the previous set stays in force"
    );
    assert!(
        wait_until(RECONCILE * 2, || set_has(&lan.ns(1), "192.0.2.128/25")
            && !set_has(&lan.ns(1), "192.0.2.0/24")),
        "retried after the read-back removed the hand-made element"
    );
    assert!(!attacker.gets_through(lan.addr(1), http_port(&nodes[0])));

    // 6. Refusals, with the reason.
    let out = shoal_in(&lan.ns(1), &["block", "-c", &cfg1, "10.0.0.0/8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("shorter than the /24 minimum"),
        "{err}"
    );
    let lan_net = format!("10.213.{}.0/24", lan.subnet);
    let out = shoal_in(&lan.ns(1), &["block", "-c", &cfg1, &lan_net]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("overlaps the allowlisted 10.213."),
        "{err}"
    );
    // Past the CLI, the node itself refuses (local API error 7).
    let p: Prefix = lan_net.parse().expect("prefix");
    let [f0, f1, f2] = p.to_fields(0);
    let mut r = Record::new(Code::BLOCK, [f0, f1, f2, 0]);
    r.ttl_ms = 60_000;
    r.op = Op::SEND_SAVE;
    match nodes[0]
        .client()
        .expect("client")
        .submit(r, Duration::from_secs(2))
    {
        Err(ClientError::Refused { reason: 7, .. }) => {}
        other => panic!("expected error 7, got {other:?}"),
    }
    assert!(
        all(&nodes, false),
        "nothing refused reached the kernel; the drop holds"
    );

    // 7. Unblock lifts it everywhere.
    let out = shoal_in(
        &lan.ns(3),
        &[
            "unblock",
            "-c",
            &nodes[2].config.display().to_string(),
            &attacker_ip,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(3), || all(&nodes, true)),
        "unblocked everywhere"
    );

    drop(nodes);
    for k in 1..=3 {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lan.ns(k),
                "nft",
                "delete",
                "table",
                "inet",
                "shoal",
            ])
            .output();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
