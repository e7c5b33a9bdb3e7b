//! Red team: what a forged UDP syslog line can make the responder do.
//! `[syslog] udp_may_block = false` keeps UDP lines from counting toward
//! a block rule because a UDP source address can be forged from anywhere
//! on the path; the same forged lines can still raise a resource's
//! protection mode for every user of it, cluster-wide (and mark an
//! innocent address suspicious): they are not gated at all.
// A test needs a base instant; the code under test never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use shoal_core::rules::{
    ActionSpec, ClusterBuckets, Miss, NetList, Outcome, Responder, RuleSet, RuleSpec,
};

fn spec(action: ActionSpec) -> RuleSpec {
    RuleSpec {
        name: "sshd".into(),
        host: None,
        program: Some("sshd".into()),
        pattern: r"Failed password for \S+ from <ADDR> port [0-9]+".into(),
        capacity: 2,
        leak_every: Duration::from_secs(60),
        action,
    }
}

/// Lines as the worker passes them for a datagram (`may_block` false):
/// how many of them reach an action.
fn forged(action: ActionSpec) -> (usize, usize) {
    let t0 = Instant::now();
    let rules = RuleSet::compile(&[spec(action)], NetList::default()).expect("rules");
    let buckets = ClusterBuckets::new(&rules, 1024, t0, 7);
    let mut r = Responder::new(rules, buckets);
    let (mut acted, mut untrusted) = (0, 0);
    for i in 0..10 {
        match r.observe_from(
            t0 + Duration::from_millis(i),
            "log1",
            "sshd",
            "Failed password for root from 198.51.100.7 port 22",
            false,
        ) {
            Outcome::Act { .. } => acted += 1,
            Outcome::Miss(Miss::Untrusted) => untrusted += 1,
            _ => {}
        }
    }
    (acted, untrusted)
}

#[test]
fn forged_udp_lines_never_block() {
    let (acted, untrusted) = forged(ActionSpec::Block {
        ttl: Duration::from_secs(600),
        prefix_v4: 32,
        prefix_v6: 64,
    });
    assert_eq!((acted, untrusted), (0, 10));
}

#[test]
fn forged_udp_lines_never_raise_a_resource_mode() {
    let (acted, _) = forged(ActionSpec::Mode {
        resource: 1,
        level: 3,
        ttl: Duration::from_secs(600),
    });
    assert_eq!(
        acted, 0,
        "forged UDP lines raised a resource's mode for everyone"
    );
}

#[test]
fn forged_udp_lines_never_mark_an_address() {
    let (acted, _) = forged(ActionSpec::Mark {
        suspicious: true,
        ttl: Duration::from_secs(600),
    });
    assert_eq!(
        acted, 0,
        "forged UDP lines marked an innocent address suspicious"
    );
}
