//! The kernel meter's netlink edge (`nft_meter`) against the real kernel,
//! in network namespaces of the test threads' own (root): what it installs
//! lists exactly as what `nft -f` makes of the equivalent rule text (a
//! dynamic set per family with `limit rate over` in the rule); install
//! twice is idempotent and a changed config replaces the sets; `nft flush
//! chain` and `flush table` are seen and repaired; on loopback, every one
//! of many sources over its limit at once gets its burst only and is read
//! back as dropped, and IPv6 sources share a budget per /64.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};

use shoal_node::nft::{HookPoint, TableSpec};
use shoal_node::nft_meter::{KernelLimit, Meter};

mod common;

fn nft_cli(args: &[&str], stdin: Option<&str>) -> String {
    tool("nft", args, stdin)
}

/// `cmd args` run in this thread's network namespace.
fn tool(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let tid = unsafe { libc::gettid() };
    let mut child = Command::new("nsenter")
        .arg(format!(
            "--net=/proc/{}/task/{tid}/ns/net",
            std::process::id()
        ))
        .arg(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The expression lines of `nft --debug=netlink list`.
fn exprs(debug: &str) -> Vec<String> {
    debug
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .map(str::to_string)
        .collect()
}

fn in_own_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("test thread")
}

fn spec() -> TableSpec {
    TableSpec {
        table: "shoal_m".into(),
        hook: HookPoint::Prerouting,
        priority: -300,
    }
}

fn limits() -> Vec<KernelLimit> {
    vec![
        KernelLimit {
            name: "conn".into(),
            rate: 10,
            unit_s: 1,
            burst: 7,
            size: 4096,
            idle_ms: 60_000,
            v4_prefix: 32,
            v6_prefix: 64,
        },
        KernelLimit {
            name: "slow.net".into(),
            rate: 30,
            unit_s: 60,
            burst: 3,
            size: 1024,
            idle_ms: 120_000,
            v4_prefix: 24,
            v6_prefix: 48,
        },
    ]
}

/// What an operator would write for the same meters.
const RULE_TEXT: &str = r#"table inet shoal_m {
  chain ratelimit { type filter hook prerouting priority -299; policy accept; }
  set meter_v4_conn { type ipv4_addr; size 4096; flags dynamic,timeout; timeout 60s; }
  set over_v4_conn { type ipv4_addr; size 4096; flags dynamic,timeout; timeout 2s; }
  set meter_v6_conn { type ipv6_addr; size 4096; flags dynamic,timeout; timeout 60s; }
  set over_v6_conn { type ipv6_addr; size 4096; flags dynamic,timeout; timeout 2s; }
  set meter_v4_slow.net { type ipv4_addr; size 1024; flags dynamic,timeout; timeout 120s; }
  set over_v4_slow.net { type ipv4_addr; size 1024; flags dynamic,timeout; timeout 2s; }
  set meter_v6_slow.net { type ipv6_addr; size 1024; flags dynamic,timeout; timeout 120s; }
  set over_v6_slow.net { type ipv6_addr; size 1024; flags dynamic,timeout; timeout 2s; }
}
add rule inet shoal_m ratelimit tcp flags & (syn|ack) == syn update @meter_v4_conn { ip saddr limit rate over 10/second burst 7 packets } update @over_v4_conn { ip saddr } drop comment "shoal limit conn v4"
add rule inet shoal_m ratelimit tcp flags & (syn|ack) == syn update @meter_v6_conn { ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over 10/second burst 7 packets } update @over_v6_conn { ip6 saddr & ffff:ffff:ffff:ffff:: } drop comment "shoal limit conn v6"
add rule inet shoal_m ratelimit tcp flags & (syn|ack) == syn update @meter_v4_slow.net { ip saddr & 255.255.255.0 limit rate over 30/minute burst 3 packets } update @over_v4_slow.net { ip saddr & 255.255.255.0 } drop comment "shoal limit slow.net v4"
add rule inet shoal_m ratelimit tcp flags & (syn|ack) == syn update @meter_v6_slow.net { ip6 saddr & ffff:ffff:ffff:: limit rate over 30/minute burst 3 packets } update @over_v6_slow.net { ip6 saddr & ffff:ffff:ffff:: } drop comment "shoal limit slow.net v6"
"#;

fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } != 0 {
        common::skip(test, "needs root (network namespaces and CAP_NET_ADMIN)");
        return false;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        common::skip(test, "`nft` missing (used to compare listings)");
        return false;
    }
    true
}

#[test]
fn the_meter_lists_as_nft_makes_the_same_rule_text() {
    if !root_or_skip("the_meter_lists_as_nft_makes_the_same_rule_text") {
        return;
    }
    let ours = in_own_netns(|| {
        let mut m = Meter::open(spec(), limits()).expect("open");
        m.install().expect("install");
        (
            nft_cli(&["list", "table", "inet", "shoal_m"], None),
            exprs(&nft_cli(
                &["--debug=netlink", "list", "table", "inet", "shoal_m"],
                None,
            )),
        )
    });
    let theirs = in_own_netns(|| {
        nft_cli(&["-f", "-"], Some(RULE_TEXT));
        (
            nft_cli(&["list", "table", "inet", "shoal_m"], None),
            exprs(&nft_cli(
                &["--debug=netlink", "list", "table", "inet", "shoal_m"],
                None,
            )),
        )
    });
    let ((ours, our_exprs), (theirs, their_exprs)) = (ours, theirs);
    // The kernel's expressions, one line each, the same to the byte.
    assert_eq!(our_exprs.len(), 12 + 3 * 14, "{our_exprs:#?}");
    assert_eq!(our_exprs, their_exprs);
    println!("{ours}");
    assert!(ours.contains("flags dynamic,timeout"), "{ours}");
    assert!(
        ours.contains(
            "update @meter_v4_conn { ip saddr limit rate over 10/second burst 7 packets }"
        ),
        "{ours}"
    );
    assert_eq!(ours, theirs, "our listing (left) and nft's (right) differ");
}

#[test]
fn install_is_idempotent_repairs_a_flushed_chain_and_replaces_changed_sets() {
    if !root_or_skip("install_is_idempotent_repairs_a_flushed_chain_and_replaces_changed_sets") {
        return;
    }
    in_own_netns(|| {
        let mut m = Meter::open(spec(), limits()).expect("open");
        m.install().expect("install");
        m.install().expect("install again");
        assert!(m.rules_ok().expect("read"));
        let before = nft_cli(&["list", "table", "inet", "shoal_m"], None);
        // Damage by hand: the rules go, the sets stay.
        nft_cli(&["flush", "chain", "inet", "shoal_m", "ratelimit"], None);
        assert!(!m.rules_ok().expect("read"));
        m.repair().expect("repair");
        assert!(m.rules_ok().expect("read"));
        assert_eq!(nft_cli(&["list", "table", "inet", "shoal_m"], None), before);
        // The whole table flushed.
        nft_cli(&["flush", "table", "inet", "shoal_m"], None);
        assert!(!m.rules_ok().expect("read"));
        m.repair().expect("repair");
        assert!(m.rules_ok().expect("read"));
        // A rule of someone else's in the chain is noticed.
        nft_cli(
            &[
                "add",
                "rule",
                "inet",
                "shoal_m",
                "ratelimit",
                "tcp",
                "dport",
                "22",
                "accept",
            ],
            None,
        );
        assert!(!m.rules_ok().expect("read"));
        m.repair().expect("repair");
        assert!(m.rules_ok().expect("read"));
        // A new config (another rate and size): the sets are made again.
        let mut changed = limits();
        changed[0].rate = 20;
        changed[0].size = 8192;
        let mut m2 = Meter::open(spec(), changed).expect("open");
        // A repair alone would clash with the old sets: it falls back.
        m2.repair().expect("repair with a changed config");
        let after = nft_cli(&["list", "table", "inet", "shoal_m"], None);
        assert!(
            after.contains("limit rate over 20/second burst 7 packets"),
            "{after}"
        );
        assert!(after.contains("size 8192"), "{after}");
        assert!(m2.rules_ok().expect("read"));
        // Nothing dropped yet.
        assert!(m2.dropped().expect("read drops").is_empty());
    });
}

/// Many sources over their limit at once, on loopback (which passes the
/// prerouting hook): each gets its burst and nothing more, and every one
/// is in the `over_` set. A `dynset` that cannot add to a full set ends
/// the rule before its `drop`, so an `over_` set smaller than the meter
/// would let the sources beyond its size through.
#[test]
fn every_source_over_its_limit_is_dropped_and_read_back() {
    if !root_or_skip("every_source_over_its_limit_is_dropped_and_read_back") {
        return;
    }
    in_own_netns(|| {
        tool("ip", &["link", "set", "lo", "up"], None);
        let limit = KernelLimit {
            name: "few".into(),
            rate: 1,
            unit_s: 60, // no refill within the test
            burst: 1,
            size: 8,
            idle_ms: 60_000,
            v4_prefix: 32,
            v6_prefix: 64,
        };
        let mut m = Meter::open(spec(), vec![limit]).expect("open");
        m.install().expect("install");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let to = listener.local_addr().expect("addr");
        let sources: Vec<std::net::Ipv4Addr> = (2..=7)
            .map(|k| std::net::Ipv4Addr::new(127, 0, 0, k))
            .collect();
        // Round-robin, so every source's last drop is within the last
        // round (the `over_` set forgets a source 2 s after its last).
        let mut admitted = vec![0; sources.len()];
        for _ in 0..4 {
            for (i, src) in sources.iter().enumerate() {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("socket");
                s.bind(&std::net::SocketAddr::from((*src, 0)).into())
                    .expect("bind source");
                // Shorter than the SYN resend (1 s): a dropped SYN fails.
                if s.connect_timeout(&to.into(), std::time::Duration::from_millis(150))
                    .is_ok()
                {
                    admitted[i] += 1;
                }
            }
        }
        assert_eq!(
            admitted,
            vec![1; sources.len()],
            "burst 1 per source, then dropped"
        );
        let mut seen: Vec<std::net::IpAddr> = m
            .dropped()
            .expect("read drops")
            .into_iter()
            .inspect(|d| assert!(d.limit == "few" && d.ago_ms < 2_000, "{d:?}"))
            .map(|d| d.addr)
            .collect();
        seen.sort();
        let want: Vec<std::net::IpAddr> = sources.iter().map(|a| (*a).into()).collect();
        assert_eq!(seen, want);
    });
}

/// IPv6 sources are metered per `/prefix_v6` (here /64): two addresses of
/// one /64 share a budget, another /64 has its own, and the drops read
/// back as the masked prefix.
#[test]
fn ipv6_sources_share_a_budget_per_prefix() {
    if !root_or_skip("ipv6_sources_share_a_budget_per_prefix") {
        return;
    }
    in_own_netns(|| {
        tool("ip", &["link", "set", "lo", "up"], None);
        let srcs = ["fd00:0:0:1::2", "fd00:0:0:1::3", "fd00:0:0:2::2"];
        for a in srcs {
            tool(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ],
                None,
            );
        }
        let limit = KernelLimit {
            name: "v6".into(),
            rate: 1,
            unit_s: 60,
            burst: 2,
            size: 64,
            idle_ms: 60_000,
            v4_prefix: 32,
            v6_prefix: 64,
        };
        let mut m = Meter::open(spec(), vec![limit]).expect("open");
        m.install().expect("install");
        let listener = std::net::TcpListener::bind("[::1]:0").expect("listen");
        let to = listener.local_addr().expect("addr");
        let mut admitted = [0; 3];
        for _ in 0..3 {
            for (i, a) in srcs.iter().enumerate() {
                let ip: std::net::Ipv6Addr = a.parse().expect("address");
                let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                    .expect("socket");
                s.bind(&std::net::SocketAddr::from((ip, 0)).into())
                    .expect("bind source");
                if s.connect_timeout(&to.into(), std::time::Duration::from_millis(150))
                    .is_ok()
                {
                    admitted[i] += 1;
                }
            }
        }
        // The first /64's two addresses: 2 in all (its burst); the other
        // /64: 2 of its own.
        assert_eq!(admitted[0] + admitted[1], 2, "{admitted:?}");
        assert_eq!(admitted[2], 2, "{admitted:?}");
        let mut seen: Vec<String> = m
            .dropped()
            .expect("read drops")
            .into_iter()
            .map(|d| d.addr.to_string())
            .collect();
        seen.sort();
        assert_eq!(seen, ["fd00:0:0:1::", "fd00:0:0:2::"]);
    });
}
