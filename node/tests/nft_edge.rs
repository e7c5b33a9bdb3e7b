//! The nftables edge against the real kernel, in a network namespace of
//! the test thread's own (root): the table, sets, chain and rules are made
//! without touching elements already there, elements go in with their
//! timeouts and read back as the same prefixes, a batch the kernel refuses
//! leaves the previous set in force, a hand-made range is cleaned up, and
//! the kernel expires elements by itself. `nft` (the CLI) is used only to
//! look, from outside the edge.
// Timing a kernel expiry needs the clock.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use shoal_core::enforce::{Batch, EnforceRules, Enforcer, SetKind};
use shoal_node::nft::{HookPoint, Nft, NftError, TableSpec};
use shoal_wire::Prefix;

mod common;

fn p(s: &str) -> Prefix {
    s.parse().expect("prefix")
}

fn adds(list: &[(&str, u64)]) -> Batch {
    let now = Instant::now();
    Batch {
        id: 1,
        adds: list
            .iter()
            .map(|(s, ms)| {
                let d = Duration::from_millis(*ms);
                (p(s), d, now + d)
            })
            .collect(),
        ..Batch::default()
    }
}

fn held(nft: &mut Nft) -> Vec<String> {
    let mut v: Vec<String> = nft
        .read()
        .expect("read back")
        .elements
        .iter()
        .map(|o| o.prefix.to_string())
        .collect();
    v.sort();
    v
}

/// `nft` run in this thread's namespace.
fn nft_cli(args: &str) -> String {
    let tid = unsafe { libc::gettid() };
    let out = Command::new("nsenter")
        .arg(format!(
            "--net=/proc/{}/task/{tid}/ns/net",
            std::process::id()
        ))
        .arg("nft")
        .args(args.split_whitespace())
        .output()
        .expect("nsenter nft");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_own_netns(f: impl FnOnce() + Send + 'static) {
    if unsafe { libc::geteuid() } != 0 {
        common::skip(
            "edge_applies_reads_back_and_rolls_back_in_the_kernel",
            "needs root (a network namespace and CAP_NET_ADMIN)",
        );
        return;
    }
    std::thread::spawn(move || {
        // SAFETY: affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("test thread");
}

#[test]
fn edge_applies_reads_back_and_rolls_back_in_the_kernel() {
    in_own_netns(|| {
        let spec = TableSpec {
            table: "shoal_t".into(),
            hook: HookPoint::Prerouting,
            priority: -300,
        };
        let mut nft = Nft::open(spec).expect("open");
        nft.setup().expect("setup");
        let rb = nft.read().expect("read");
        assert!(rb.rules_ok && rb.elements.is_empty());
        let listing = nft_cli("list table inet shoal_t");
        assert!(listing.contains("ip saddr @v4 drop"), "{listing}");
        assert!(listing.contains("ip6 saddr @v6 drop"), "{listing}");
        assert!(listing.contains("ip saddr @v4addr drop"), "{listing}");
        assert!(listing.contains("ip6 saddr @v6addr drop"), "{listing}");
        assert_eq!(listing.matches("gc-interval 10s").count(), 2, "{listing}");
        assert!(
            listing.contains("hook prerouting priority raw"),
            "{listing}"
        );

        nft.apply(
            &adds(&[
                ("192.0.2.0/24", 30_000),
                ("198.51.100.7", 30_000),
                ("2001:db8::/32", 30_000),
                ("2001:db8:1::9", 30_000),
            ]),
            &[],
        )
        .expect("apply");
        assert_eq!(
            held(&mut nft),
            [
                "192.0.2.0/24",
                "198.51.100.7/32",
                "2001:db8:1::9/128",
                "2001:db8::/32"
            ]
        );
        // Full addresses are in the hash sets, prefixes in the interval
        // sets.
        assert!(nft_cli("list set inet shoal_t v4addr").contains("198.51.100.7"));
        assert!(!nft_cli("list set inet shoal_t v4").contains("198.51.100.7"));
        assert!(nft_cli("list set inet shoal_t v6addr").contains("2001:db8:1::9"));
        let kinds: Vec<SetKind> = {
            let mut v: Vec<_> = nft
                .read()
                .expect("read")
                .elements
                .iter()
                .map(|o| o.set)
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            kinds,
            [SetKind::Addr4, SetKind::Net4, SetKind::Addr6, SetKind::Net6]
        );
        nft.apply(
            &Batch {
                deletes: vec![(p("2001:db8:1::9"), SetKind::Addr6)],
                ..Batch::default()
            },
            &[],
        )
        .expect("delete");
        let rb = nft.read().expect("read");
        for o in &rb.elements {
            let left = o.remaining.expect("timeout");
            assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30));
        }

        // Setting up again (a restart) keeps the elements and the rules.
        nft.setup().expect("setup again");
        assert_eq!(held(&mut nft).len(), 3);
        assert!(nft.read().expect("read").rules_ok);

        // A batch the kernel refuses (an element overlapping one already
        // there): nothing of it applies, the previous set stays.
        let bad = Batch {
            deletes: vec![(p("198.51.100.7"), SetKind::Addr4)],
            ..adds(&[("203.0.113.0/24", 30_000), ("192.0.2.128/25", 30_000)])
        };
        match nft.apply(&bad, &[]) {
            Err(NftError::Refused { what, .. }) => assert!(what.contains("adding"), "{what}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            held(&mut nft),
            ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]
        );

        // A range added by hand that is no prefix reads as foreign and
        // the next batch deletes it.
        nft_cli("add element inet shoal_t v4 { 10.0.0.1-10.0.0.5 }");
        let rb = nft.read().expect("read");
        assert_eq!(rb.foreign.len(), 1);
        nft.apply(&Batch::default(), &rb.foreign).expect("clean");
        let rb = nft.read().expect("read");
        assert!(rb.foreign.is_empty());
        assert_eq!(rb.elements.len(), 3);

        // `nft flush table` by hand removes the rules: the read-back says.
        nft_cli("flush table inet shoal_t");
        assert!(!nft.read().expect("read").rules_ok);
        nft.setup().expect("repair");
        assert!(nft.read().expect("read").rules_ok);

        // The kernel expires elements by itself.
        nft.apply(&adds(&[("203.0.113.9", 300)]), &[])
            .expect("short");
        assert!(held(&mut nft).contains(&"203.0.113.9/32".to_string()));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!held(&mut nft).contains(&"203.0.113.9/32".to_string()));

        nft.remove_table().expect("remove");
        assert!(nft.read().expect("read").elements.is_empty());
    });
}

/// A table of the older layout (two interval sets, a /32 in the interval
/// set; its chain is left out: nft 1.0.6 cannot name a chain `drop`, and
/// setup replacing a chain's rules is tested above) is taken over without
/// a gap: setup adds the hash sets, the chain and the four rules, the read-back finds the /32 in the interval set,
/// and the planned batch moves it to the hash set in one transaction.
#[test]
fn an_older_two_set_table_is_taken_over_in_place() {
    in_own_netns(|| {
        nft_cli("add table inet shoal_o");
        nft_cli("add set inet shoal_o v4 { type ipv4_addr; flags interval, timeout; }");
        nft_cli("add set inet shoal_o v6 { type ipv6_addr; flags interval, timeout; }");
        nft_cli(
            "add element inet shoal_o v4 { 198.51.100.7 timeout 60s, 192.0.2.0/24 timeout 60s }",
        );
        let mut nft = Nft::open(TableSpec {
            table: "shoal_o".into(),
            hook: HookPoint::Prerouting,
            priority: -300,
        })
        .expect("open");
        nft.setup().expect("setup over the older table");
        let rb = nft.read().expect("read");
        assert!(rb.rules_ok, "four rules after setup");
        let stray = rb
            .elements
            .iter()
            .find(|o| o.prefix == p("198.51.100.7"))
            .expect("the /32 is still there");
        assert_eq!(stray.set, SetKind::Net4);

        let now = Instant::now();
        let mut enf = Enforcer::new(EnforceRules::default(), false);
        let d = enf.desired(
            now,
            [
                (p("198.51.100.7"), now + Duration::from_secs(60)),
                (p("192.0.2.0/24"), now + Duration::from_secs(60)),
            ],
        );
        let b = enf.plan(now, &d, Some(&rb.elements)).expect("a move");
        assert_eq!(b.deletes, [(p("198.51.100.7"), SetKind::Net4)]);
        assert_eq!(b.adds.len(), 1);
        nft.apply(&b, &rb.foreign).expect("apply the move");
        enf.batch_ok(&b);
        let rb = nft.read().expect("read");
        let mut got: Vec<(String, SetKind)> = rb
            .elements
            .iter()
            .map(|o| (o.prefix.to_string(), o.set))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("192.0.2.0/24".to_string(), SetKind::Net4),
                ("198.51.100.7/32".to_string(), SetKind::Addr4)
            ]
        );
        assert!(enf.plan(now, &d, Some(&rb.elements)).is_none(), "settled");
        nft.remove_table().expect("remove");
    });
}
