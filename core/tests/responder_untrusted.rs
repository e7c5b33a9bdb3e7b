//! Red team: what a forged UDP syslog line can make the responder do.
//! With `[syslog] trust_udp = false` (the default) a UDP line counts
//! toward no rule, whatever its action: a forged line must not block, nor
//! raise a resource's protection mode cluster-wide, nor mark an innocent
//! address suspicious.
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

/// Lines as the worker passes them for a datagram (`trusted` false):
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
