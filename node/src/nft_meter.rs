//! The kernel side of `[[limits]]` with `kernel = true`: netlink messages
//! for nftables meters, no decisions and no `nft` process.
//!
//! In the enforcer's table (`[enforce] table`) it owns one base chain,
//! `ratelimit`, at the enforcer's hook and priority + 1 (after the block
//! drop: a blocked source spends no meter budget), and per limit and
//! family two dynamic sets:
//!
//! - `meter_v4_NAME` / `meter_v6_NAME` (`flags dynamic,timeout`, `size`
//!   the limit's `max_keys`, `timeout` its `idle_ms`): one `limit` state
//!   per source, what `hashlimit` keeps per hash entry;
//! - `over_v4_NAME` / `over_v6_NAME` (`flags dynamic,timeout`, the same
//!   size, timeout [`OVER_TIMEOUT_MS`] or `idle_ms` if shorter): the
//!   sources the rule dropped lately, read back for escalation (an
//!   element's expiration says when it last dropped).
//!
//! A `dynset` that cannot add to a full set ends the rule (`NFT_BREAK`)
//! before the `drop`. So the `over_` set is as large as the meter and
//! lives no longer: each of its elements was refreshed together with a
//! meter element that expires no sooner, so it is never fuller than the
//! meter and never lets a metered source through. A full *meter* does:
//! a source new to a meter holding `max_keys` sources is not metered
//! (nftables' semantics; `hashlimit` dropped it), so `max_keys` must
//! exceed the sources expected within `idle_ms`.
//!
//! and one rule per family, the same as `nft` makes of
//!
//! ```text
//! tcp flags & (syn|ack) == syn update @meter_v4_NAME { ip saddr [& MASK]
//!     limit rate over R/UNIT burst B packets } update @over_v4_NAME
//!     { ip saddr [& MASK] } drop comment "shoal limit NAME v4"
//! ```
//!
//! (`node/tests/meter_netns.rs` checks that `nft list` prints both alike).
//! Only new TCP connections (SYN without ACK) are metered: UDP has no
//! connection start the kernel can see at this priority, before conntrack.

use netlink_packet_core::{DefaultNla, Emitable, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, HookNumber, Immediate, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload,
    Register, RuleAttribute, RuleMessage, SetAttribute, SetDescription, SetFlags, SetMessage,
    TableAttribute, TableFlags, TableMessage, Verdict, VerdictAttribute,
};

use crate::nft::{Nft, NftError, TableSpec};

/// The chain this module owns in the enforcer's table.
pub const CHAIN: &str = "ratelimit";
/// How long a dropped source stays in its `over_` set after its last
/// dropped SYN: longer than the read-back period, so none is missed.
pub const OVER_TIMEOUT_MS: u64 = 2_000;

const NLA_F_NESTED: u16 = 0x8000;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;
const NF_DROP: u32 = 0;
/// `NFTA_DYNSET_*`.
const DYNSET_SET_NAME: u16 = 1;
const DYNSET_SET_ID: u16 = 2;
const DYNSET_OP: u16 = 3;
const DYNSET_SREG_KEY: u16 = 4;
const DYNSET_EXPR: u16 = 7;
const DYNSET_OP_UPDATE: u32 = 1;
/// `NFTA_LIMIT_*`.
const LIMIT_RATE: u16 = 1;
const LIMIT_UNIT: u16 = 2;
const LIMIT_BURST: u16 = 3;
const LIMIT_TYPE: u16 = 4;
const LIMIT_FLAGS: u16 = 5;
const LIMIT_PKTS: u32 = 0;
const LIMIT_F_INV: u32 = 1;
/// `NFTNL_UDATA_SET_KEYBYTEORDER` = big endian, as `nft` tags its sets.
const SET_USERDATA: [u8; 6] = [0, 4, 2, 0, 0, 0];
/// `NFTNL_UDATA_RULE_COMMENT`.
const RULE_COMMENT: u8 = 0;
/// Set ids in a batch (unique per batch; the enforcer's sets use 1, 2).
const SET_ID_BASE: u32 = 0x5100;

/// One limit as the kernel enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLimit {
    pub name: String,
    /// `rate` packets per `unit_s` seconds (`nft` units: 1, 60, 3600,
    /// 86400, 604800).
    pub rate: u64,
    pub unit_s: u64,
    pub burst: u32,
    /// Sources a meter set holds (`max_keys`).
    pub size: u32,
    /// A source idle this long is forgotten (`idle_ms`).
    pub idle_ms: u64,
    pub v4_prefix: u8,
    /// 0..=64 (the limit's IPv6 key is the address's high 64 bits).
    pub v6_prefix: u8,
}

impl KernelLimit {
    /// A rate per second as `nft` can say it: the smallest unit in which
    /// it is a whole number of packets (e.g. 0.5/s is 30/minute).
    pub fn rate_unit(per_s: f64) -> Option<(u64, u64)> {
        if !(per_s.is_finite() && per_s > 0.0) {
            return None;
        }
        [1u64, 60, 3_600, 86_400, 604_800]
            .into_iter()
            .find_map(|u| {
                let n = per_s * u as f64;
                let r = n.round();
                ((n - r).abs() < 1e-6 * n.max(1.0) && (1.0..1e15).contains(&r))
                    .then_some((r as u64, u))
            })
    }

    pub fn set(&self, meter: bool, v4: bool) -> String {
        let kind = if meter { "meter" } else { "over" };
        let fam = if v4 { "v4" } else { "v6" };
        format!("{kind}_{fam}_{}", self.name)
    }

    /// The `over_` set's timeout: never longer than the meter's.
    pub fn over_timeout_ms(&self) -> u64 {
        OVER_TIMEOUT_MS.min(self.idle_ms).max(1)
    }

    /// The rule's comment: what a read-back recognizes it by.
    pub fn comment(&self, v4: bool) -> String {
        format!("shoal limit {} {}", self.name, if v4 { "v4" } else { "v6" })
    }

    /// The mask on the source address, when the limit counts a prefix.
    fn mask(&self, v4: bool) -> Option<Vec<u8>> {
        let (bits, len) = if v4 {
            (self.v4_prefix.min(32) as u32, 4usize)
        } else {
            (self.v6_prefix.min(128) as u32, 16usize)
        };
        if bits as usize == len * 8 {
            return None;
        }
        let m: u128 = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        Some(m.to_be_bytes()[..len].to_vec())
    }
}

/// Messages (with the flags to send them with) that make the chain, the
/// sets and the rules, in one batch: the table and chain if missing, the
/// chain's rules replaced, sets created if missing (`drop_sets`, existing
/// sets of this module to delete first, for a fresh start or a changed
/// config).
pub fn setup_msgs(
    spec: &TableSpec,
    limits: &[KernelLimit],
    drop_sets: &[String],
) -> Vec<(&'static str, NfTablesMessage, u16)> {
    let t = &spec.table;
    let mut msgs = vec![
        (
            "the table",
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![
                    TableAttribute::Name(t.clone()),
                    TableAttribute::Flags(TableFlags::default()),
                ],
            }),
            NLM_F_CREATE,
        ),
        (
            "the ratelimit chain (is the hook or priority different from an existing chain's?)",
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(t.clone()),
                    ChainAttribute::Name(CHAIN.into()),
                    ChainAttribute::Type("filter".into()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(HookNumber::Inet(spec.hook.number())),
                        Hook::Priority(spec.priority.saturating_add(1) as u32),
                    ]),
                    ChainAttribute::Policy(1), // accept
                ],
            }),
            NLM_F_CREATE,
        ),
        (
            "flushing the ratelimit chain",
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(t.clone()),
                    RuleAttribute::Chain(CHAIN.into()),
                ],
            }),
            0,
        ),
    ];
    for name in drop_sets {
        msgs.push((
            "deleting an old meter set",
            NfTablesMessage::DeleteSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(t.clone()),
                    SetAttribute::Name(name.clone()),
                ],
            }),
            0,
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        for v4 in [true, false] {
            for meter in [true, false] {
                let id = set_id(i, meter, v4);
                let (size, timeout) = if meter {
                    (l.size, l.idle_ms)
                } else {
                    (l.size, l.over_timeout_ms())
                };
                msgs.push((
                    "a meter set (one with this name and other parameters exists?)",
                    new_set(t, &l.set(meter, v4), v4, size, timeout, id),
                    NLM_F_CREATE,
                ));
            }
        }
    }
    for (i, l) in limits.iter().enumerate() {
        for v4 in [true, false] {
            msgs.push((
                "a meter rule",
                rule(t, l, v4, set_id(i, true, v4)),
                NLM_F_CREATE | 0x800, // NLM_F_APPEND
            ));
        }
    }
    msgs
}

/// The batch id of limit `i`'s set (its `over_` set is the meter's + 1).
fn set_id(i: usize, meter: bool, v4: bool) -> u32 {
    SET_ID_BASE + 4 * i as u32 + if v4 { 0 } else { 2 } + u32::from(!meter)
}

fn new_set(
    table: &str,
    name: &str,
    v4: bool,
    size: u32,
    timeout_ms: u64,
    id: u32,
) -> NfTablesMessage {
    let (ty, len) = if v4 {
        (TYPE_IPADDR, 4)
    } else {
        (TYPE_IP6ADDR, 16)
    };
    NfTablesMessage::NewSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(table.into()),
            SetAttribute::Name(name.into()),
            SetAttribute::Flags(SetFlags::Timeout | SetFlags::Eval),
            SetAttribute::KeyType(ty),
            SetAttribute::KeyLen(len),
            SetAttribute::Id(id),
            SetAttribute::Description(vec![SetDescription::Size(size)]),
            SetAttribute::Timeout(timeout_ms),
            SetAttribute::UserData(SET_USERDATA.to_vec()),
        ],
    })
}

fn expr(e: Expressions) -> ListAttribute<ExpressionAttribute> {
    e.into()
}

fn meta(key: MetaKey) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Meta(vec![
        Meta::DestinationRegister(Register::Reg1),
        Meta::Key(key),
    ]))
}

fn cmp_eq(v: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(v)),
    ]))
}

fn payload(base: u32, offset: u32, len: u32) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ]))
}

fn bitwise(mask: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    let xor = vec![0; mask.len()];
    expr(Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(mask.len() as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ]))
}

/// Nested attributes as the bytes of one attribute's value.
fn nested<T: netlink_packet_core::Nla>(attrs: &[T]) -> Vec<u8> {
    let mut buf = vec![0; attrs.buffer_len()];
    attrs.emit(&mut buf);
    buf
}

/// `dynset update reg 1 set NAME [expr limit ...]`, built from raw
/// attributes (the crate has no dynset or limit expression).
fn dynset(set: &str, id: u32, limit: Option<&KernelLimit>) -> ListAttribute<ExpressionAttribute> {
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    let mut attrs = vec![
        DefaultNla::new(DYNSET_SREG_KEY, 1u32.to_be_bytes().to_vec()),
        DefaultNla::new(DYNSET_OP, DYNSET_OP_UPDATE.to_be_bytes().to_vec()),
        DefaultNla::new(DYNSET_SET_NAME, name),
        DefaultNla::new(DYNSET_SET_ID, id.to_be_bytes().to_vec()),
    ];
    if let Some(l) = limit {
        let data = vec![
            DefaultNla::new(LIMIT_RATE, l.rate.to_be_bytes().to_vec()),
            DefaultNla::new(LIMIT_UNIT, l.unit_s.to_be_bytes().to_vec()),
            DefaultNla::new(LIMIT_BURST, l.burst.to_be_bytes().to_vec()),
            DefaultNla::new(LIMIT_TYPE, LIMIT_PKTS.to_be_bytes().to_vec()),
            DefaultNla::new(LIMIT_FLAGS, LIMIT_F_INV.to_be_bytes().to_vec()),
        ];
        let limit_expr = [
            ExpressionAttribute::Name("limit".into()),
            ExpressionAttribute::Data(Expressions::Other {
                expression_type: "limit".into(),
                attributes: data,
            }),
        ];
        attrs.push(DefaultNla::new(
            DYNSET_EXPR | NLA_F_NESTED,
            nested(&limit_expr),
        ));
    }
    expr(Expressions::Other {
        expression_type: "dynset".into(),
        attributes: attrs,
    })
}

/// The rule of one limit and family (the layout `nft --debug=netlink`
/// shows for the rule text in the module docs).
fn rule(table: &str, l: &KernelLimit, v4: bool, meter_set_id: u32) -> NfTablesMessage {
    let (proto, offset, len) = if v4 {
        (NFPROTO_IPV4, 12, 4)
    } else {
        (NFPROTO_IPV6, 8, 16)
    };
    let mask = l.mask(v4);
    let key = |out: &mut Vec<ListAttribute<ExpressionAttribute>>| {
        out.push(payload(NETWORK_HEADER, offset, len));
        if let Some(m) = &mask {
            out.push(bitwise(m.clone()));
        }
    };
    let mut e = vec![
        meta(MetaKey::L4Proto),
        cmp_eq(vec![IPPROTO_TCP]),
        payload(TRANSPORT_HEADER, 13, 1),
        bitwise(vec![0x12]), // SYN | ACK
        cmp_eq(vec![0x02]),  // SYN alone
        meta(MetaKey::Nfproto),
        cmp_eq(vec![proto]),
    ];
    key(&mut e);
    e.push(dynset(&l.set(true, v4), meter_set_id, Some(l)));
    key(&mut e);
    e.push(dynset(&l.set(false, v4), meter_set_id + 1, None));
    e.push(expr(Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(NF_DROP),
        )])),
    ])));
    let comment = l.comment(v4);
    let mut udata = vec![RULE_COMMENT, (comment.len() + 1) as u8];
    udata.extend_from_slice(comment.as_bytes());
    udata.push(0);
    NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::Chain(CHAIN.into()),
            RuleAttribute::Expressions(e),
            RuleAttribute::UserData(udata),
        ],
    })
}

/// Reads a rule comment back from its user data.
fn comment_of(udata: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 2 <= udata.len() {
        let (ty, len) = (udata[at], udata[at + 1] as usize);
        let v = udata.get(at + 2..at + 2 + len)?;
        if ty == RULE_COMMENT {
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            return String::from_utf8(v[..end].to_vec()).ok();
        }
        at += 2 + len;
    }
    None
}

/// The meter edge: its own netlink socket on the enforcer's table.
pub struct Meter {
    nft: Nft,
    limits: Vec<KernelLimit>,
}

/// A source an `over_` set held: it was dropped `ago_ms` before the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub limit: String,
    pub addr: std::net::IpAddr,
    pub ago_ms: u64,
}

impl Meter {
    pub fn open(spec: TableSpec, limits: Vec<KernelLimit>) -> Result<Meter, NftError> {
        Ok(Meter {
            nft: Nft::open(spec)?,
            limits,
        })
    }

    pub fn limits(&self) -> &[KernelLimit] {
        &self.limits
    }

    /// Installs from scratch: this module's sets found in the table are
    /// deleted and made again (a changed size or timeout would otherwise
    /// be refused; meters start empty, as `hashlimit`'s do on load).
    pub fn install(&mut self) -> Result<(), NftError> {
        let old = self.own_sets()?;
        let msgs = setup_msgs(self.nft.spec(), &self.limits, &old);
        self.nft.batch(msgs)
    }

    /// Puts the chain and rules back, keeping the sets that are there
    /// (their meters go on); falls back to [`Meter::install`] when the
    /// kernel refuses that.
    pub fn repair(&mut self) -> Result<(), NftError> {
        let msgs = setup_msgs(self.nft.spec(), &self.limits, &[]);
        match self.nft.batch(msgs) {
            Ok(()) => Ok(()),
            Err(_) => self.install(),
        }
    }

    /// Whether the chain holds exactly this module's rules.
    pub fn rules_ok(&mut self) -> Result<bool, NftError> {
        let mut got = self.comments()?;
        got.sort();
        let mut want: Vec<String> = self
            .limits
            .iter()
            .flat_map(|l| [l.comment(true), l.comment(false)])
            .collect();
        want.sort();
        Ok(got == want)
    }

    /// The comments of the chain's rules (one per rule, empty if none).
    pub fn comments(&mut self) -> Result<Vec<String>, NftError> {
        let req = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(self.nft.spec().table.clone()),
                RuleAttribute::Chain(CHAIN.into()),
            ],
        });
        Ok(self
            .nft
            .dump(req)?
            .into_iter()
            .filter_map(|m| match m {
                NfTablesMessage::NewRule(r) => Some(
                    r.attributes
                        .into_iter()
                        .find_map(|a| match a {
                            RuleAttribute::UserData(u) => comment_of(&u),
                            _ => None,
                        })
                        .unwrap_or_default(),
                ),
                _ => None,
            })
            .collect())
    }

    /// The sources the rules dropped lately, per limit. Read with the
    /// edge's own element walker: under attack these sets hold many
    /// sources and are read every few hundred milliseconds.
    pub fn dropped(&mut self) -> Result<Vec<Dropped>, NftError> {
        let mut out = Vec::new();
        let mut elems = Vec::new();
        for i in 0..self.limits.len() {
            for v4 in [true, false] {
                let name = self.limits[i].set(false, v4);
                elems.clear();
                self.nft.dump_elements(&name, &mut elems)?;
                let t = self.limits[i].over_timeout_ms();
                for e in elems.iter().filter(|e| !e.end) {
                    let addr = if v4 {
                        match u32::try_from(e.key) {
                            Ok(k) => std::net::IpAddr::from(std::net::Ipv4Addr::from(k)),
                            Err(_) => continue,
                        }
                    } else {
                        std::net::IpAddr::from(std::net::Ipv6Addr::from(e.key))
                    };
                    out.push(Dropped {
                        limit: self.limits[i].name.clone(),
                        addr,
                        ago_ms: t.saturating_sub(e.expiration.unwrap_or(t)),
                    });
                }
            }
        }
        Ok(out)
    }

    /// This module's sets now in the table (`meter_*`, `over_*`).
    fn own_sets(&mut self) -> Result<Vec<String>, NftError> {
        let req = NfTablesMessage::GetSet(SetMessage {
            attributes: vec![SetAttribute::Table(self.nft.spec().table.clone())],
        });
        Ok(self
            .nft
            .dump(req)?
            .into_iter()
            .filter_map(|m| match m {
                NfTablesMessage::NewSet(s) => s.attributes.into_iter().find_map(|a| match a {
                    SetAttribute::Name(n) if n.starts_with("meter_") || n.starts_with("over_") => {
                        Some(n)
                    }
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_said_in_the_smallest_whole_unit() {
        assert_eq!(KernelLimit::rate_unit(10.0), Some((10, 1)));
        assert_eq!(KernelLimit::rate_unit(0.5), Some((30, 60)));
        assert_eq!(KernelLimit::rate_unit(2.5), Some((150, 60)));
        assert_eq!(KernelLimit::rate_unit(1.0 / 3600.0), Some((1, 3600)));
        assert_eq!(KernelLimit::rate_unit(0.0), None);
        assert_eq!(KernelLimit::rate_unit(f64::NAN), None);
        assert_eq!(KernelLimit::rate_unit(1.0 / 13.0), None);
    }

    #[test]
    fn masks_and_comments() {
        let l = KernelLimit {
            name: "conn".into(),
            rate: 10,
            unit_s: 1,
            burst: 5,
            size: 1024,
            idle_ms: 60_000,
            v4_prefix: 24,
            v6_prefix: 64,
        };
        assert_eq!(l.mask(true), Some(vec![255, 255, 255, 0]));
        let mut v6 = vec![0xff; 8];
        v6.extend([0; 8]);
        assert_eq!(l.mask(false), Some(v6));
        assert_eq!(
            KernelLimit {
                v4_prefix: 32,
                ..l.clone()
            }
            .mask(true),
            None
        );
        let NfTablesMessage::NewRule(r) = rule("t", &l, true, 1) else {
            panic!()
        };
        let udata = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::UserData(u) => Some(u.clone()),
                _ => None,
            })
            .expect("user data");
        assert_eq!(comment_of(&udata).as_deref(), Some("shoal limit conn v4"));
        assert_eq!(comment_of(b"shoal:v4"), None);
    }
}
