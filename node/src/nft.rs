//! The nftables edge of the enforcer: netlink messages, no decisions and
//! no `nft` process. It owns one `inet` table holding two interval sets
//! with timeouts (`v4`, `v6`) and one base chain whose two rules drop
//! packets whose source is in either set. Everything it sends goes in one
//! nfnetlink batch, which the kernel applies whole or not at all.
//!
//! Messages are built with `netlink-packet-netfilter` and sent over a
//! `netlink-sys` socket; it needs `CAP_NET_ADMIN` in the node's network
//! namespace. What to put in the sets is decided by
//! `shoal_core::enforce`.

use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{ChainAttribute, ChainMessage};
use netlink_packet_netfilter::nftables::{
    Cmp, DataAttribute, Expressions, Hook, HookNumber, Immediate, InetHookNumber, ListAttribute,
    Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute,
    RuleMessage, SetAttribute, SetElementAttribute, SetElementFlags, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableFlags, TableMessage, Verdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::{
    none::ControlMessage, NetfilterHeader, NetfilterMessage, NetfilterMessageInner,
    NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use shoal_core::enforce::{Batch, Observed};
use shoal_wire::Prefix;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFPROTO_IPV4` / `NFPROTO_IPV6`, what `meta nfproto` compares with.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// nftables data types `ipv4_addr` and `ipv6_addr`.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
/// `NF_DROP`, the verdict code.
const NF_DROP: u32 = 0;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
const NETWORK_HEADER: u32 = 1;
/// Elements per netlink message inside a batch (each message stays well
/// under a page-sized kernel allocation per element list).
const ELEMENTS_PER_MESSAGE: usize = 512;
/// Bytes read per `recv` (the kernel's dump messages are at most 32 KiB).
const RECV_BUF: usize = 256 << 10;
/// Longest wait for one read from the kernel.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Rule tags (rule user data) that mark the rules as this node's.
const TAG_V4: &[u8] = b"shoal:v4";
const TAG_V6: &[u8] = b"shoal:v6";

/// Where the drop chain hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
}

impl HookPoint {
    pub fn parse(s: &str) -> Option<HookPoint> {
        match s {
            "prerouting" => Some(HookPoint::Prerouting),
            "input" => Some(HookPoint::Input),
            "forward" => Some(HookPoint::Forward),
            _ => None,
        }
    }

    pub(crate) fn number(self) -> InetHookNumber {
        match self {
            HookPoint::Prerouting => InetHookNumber::PreRouting,
            HookPoint::Input => InetHookNumber::LocalIn,
            HookPoint::Forward => InetHookNumber::Forward,
        }
    }
}

/// The table this node owns.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub table: String,
    pub hook: HookPoint,
    pub priority: i32,
}

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("netlink socket: {0} (the enforcer needs CAP_NET_ADMIN)")]
    Socket(#[source] io::Error),
    #[error("the kernel refused {what}: {source}; the whole batch was rolled back")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's reply could not be read: {0}")]
    Reply(String),
}

/// What a read-back found in the kernel.
#[derive(Debug, Default)]
pub struct Readback {
    pub elements: Vec<Observed>,
    /// Intervals that are not one prefix (made by hand): deleted by the
    /// next batch.
    pub foreign: Vec<RawInterval>,
    /// The chain holds exactly this node's two rules.
    pub rules_ok: bool,
}

/// An interval as keys, for deleting what is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInterval {
    v4: bool,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// One netlink socket and the table's names.
pub struct Nft {
    sock: Socket,
    seq: u32,
    spec: TableSpec,
    sndbuf: usize,
    /// Receive buffer, reused. Its size matters: the kernel sizes dump
    /// messages by the largest read it has seen (up to 32 KiB), and each
    /// dump message walks the set from its start, so small reads make a
    /// large set's read-back much slower.
    rbuf: Vec<u8>,
}

impl Nft {
    pub fn open(spec: TableSpec) -> Result<Nft, NftError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
        sock.bind_auto().map_err(NftError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Socket)?;
        // Large dumps (a million elements) arrive in many datagrams; a
        // small receive buffer would lose some (ENOBUFS).
        set_buf(&sock, libc::SO_RCVBUFFORCE, 8 << 20);
        // Never wait for the kernel forever: a reply that does not come
        // is an error, not a hung enforcer.
        set_timeout(&sock, REPLY_TIMEOUT);
        Ok(Nft {
            sock,
            seq: 1,
            spec,
            sndbuf: 0,
            rbuf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// Creates the table, sets, chain and rules if missing and replaces
    /// the chain's rules with this node's two, in one batch: elements
    /// already in the sets are kept, so a restart leaves no gap.
    pub fn setup(&mut self) -> Result<(), NftError> {
        let t = &self.spec.table;
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
                "the IPv4 set",
                new_set(t, "v4", TYPE_IPADDR, 4),
                NLM_F_CREATE,
            ),
            (
                "the IPv6 set",
                new_set(t, "v6", TYPE_IP6ADDR, 16),
                NLM_F_CREATE,
            ),
            (
                "the chain (is the hook or priority different from an existing chain's?)",
                NfTablesMessage::NewChain(ChainMessage {
                    attributes: vec![
                        ChainAttribute::Table(t.clone()),
                        ChainAttribute::Name("drop".into()),
                        ChainAttribute::Type("filter".into()),
                        ChainAttribute::Hook(vec![
                            Hook::Number(HookNumber::Inet(self.spec.hook.number())),
                            Hook::Priority(self.spec.priority as u32),
                        ]),
                        ChainAttribute::Policy(1), // accept
                    ],
                }),
                NLM_F_CREATE,
            ),
            (
                "flushing the chain",
                NfTablesMessage::DeleteRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(t.clone()),
                        RuleAttribute::Chain("drop".into()),
                    ],
                }),
                0,
            ),
        ];
        msgs.push(("the IPv4 rule", drop_rule(t, true), NLM_F_CREATE | 0x800));
        msgs.push(("the IPv6 rule", drop_rule(t, false), NLM_F_CREATE | 0x800));
        self.batch(msgs)
    }

    /// Deletes the table (`on_exit = "remove"`).
    pub fn remove_table(&mut self) -> Result<(), NftError> {
        let msg = NfTablesMessage::DeleteTable(TableMessage {
            attributes: vec![TableAttribute::Name(self.spec.table.clone())],
        });
        self.batch(vec![("deleting the table", msg, 0)])
    }

    /// Applies one planned batch (and deletes `foreign` intervals) as one
    /// kernel transaction: deletes first, then adds.
    pub fn apply(&mut self, b: &Batch, foreign: &[RawInterval]) -> Result<(), NftError> {
        let t = self.spec.table.clone();
        let mut msgs = Vec::new();
        for v4 in [true, false] {
            let mut elems: Vec<Vec<SetElementAttribute>> = foreign
                .iter()
                .filter(|r| r.v4 == v4)
                .flat_map(raw_elements)
                .collect();
            for p in b.deletes.iter().filter(|p| p.is_v4() == v4) {
                elems.extend(prefix_elements(p, None));
            }
            for chunk in elems.chunks(ELEMENTS_PER_MESSAGE * 2) {
                msgs.push((
                    "deleting elements (one is not in the set)",
                    elem_msg(&t, v4, chunk.to_vec(), true),
                    0,
                ));
            }
        }
        for v4 in [true, false] {
            let mut elems = Vec::new();
            for (p, timeout, _) in b.adds.iter().filter(|a| a.0.is_v4() == v4) {
                let ms = (timeout.as_millis() as u64).max(1);
                elems.extend(prefix_elements(p, Some(ms)));
            }
            for chunk in elems.chunks(ELEMENTS_PER_MESSAGE * 2) {
                msgs.push((
                    "adding elements (one overlaps an element already there)",
                    elem_msg(&t, v4, chunk.to_vec(), false),
                    NLM_F_CREATE,
                ));
            }
        }
        if msgs.is_empty() {
            return Ok(());
        }
        self.batch(msgs)
    }

    /// Reads both sets and the chain's rules back.
    pub fn read(&mut self) -> Result<Readback, NftError> {
        let mut out = Readback::default();
        for v4 in [true, false] {
            let req = NfTablesMessage::GetSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(self.spec.table.clone()),
                    SetElementList::Set(set_name(v4).into()),
                ],
            });
            let mut keys: Vec<(Vec<u8>, bool, Option<u64>)> = Vec::new();
            for m in self.dump(req)? {
                let NfTablesMessage::NewSetElement(m) = m else {
                    continue;
                };
                for a in m.attributes {
                    let SetElementList::Elements(list) = a else {
                        continue;
                    };
                    for e in list {
                        let ListAttribute::Element(attrs) = e else {
                            continue;
                        };
                        let mut key = None;
                        let mut end = false;
                        let mut expiration = None;
                        for a in attrs {
                            match a {
                                SetElementAttribute::Key(DataAttribute::Value(v)) => key = Some(v),
                                SetElementAttribute::Flags(f) => {
                                    end = f.contains(SetElementFlags::IntervalEnd)
                                }
                                SetElementAttribute::Expiration(ms) => expiration = Some(ms),
                                _ => {}
                            }
                        }
                        if let Some(k) = key {
                            keys.push((k, end, expiration));
                        }
                    }
                }
            }
            intervals(v4, keys, &mut out);
        }
        let req = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(self.spec.table.clone()),
                RuleAttribute::Chain("drop".into()),
            ],
        });
        let mut tags = Vec::new();
        for m in self.dump(req)? {
            if let NfTablesMessage::NewRule(r) = m {
                let tag = r.attributes.into_iter().find_map(|a| match a {
                    RuleAttribute::UserData(u) => Some(u),
                    _ => None,
                });
                tags.push(tag.unwrap_or_default());
            }
        }
        tags.sort();
        out.rules_ok = tags == [TAG_V4.to_vec(), TAG_V6.to_vec()];
        Ok(out)
    }

    fn recv(&mut self) -> Result<(), NftError> {
        self.rbuf.clear();
        self.sock
            .recv(&mut self.rbuf, 0)
            .map_err(NftError::Socket)?;
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `msgs` between BATCH_BEGIN and BATCH_END in one `send`, and
    /// waits for the kernel's verdict on the last one (any error before it
    /// means the kernel aborted the whole batch).
    pub(crate) fn batch(
        &mut self,
        msgs: Vec<(&'static str, NfTablesMessage, u16)>,
    ) -> Result<(), NftError> {
        let mut buf = Vec::new();
        let begin = self.next_seq();
        push_msg(
            &mut buf,
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                ControlMessage::BatchBegin,
            ),
            NLM_F_REQUEST,
            begin,
        );
        let mut whats = Vec::with_capacity(msgs.len());
        let n = msgs.len();
        let mut last = begin;
        for (i, (what, m, flags)) in msgs.into_iter().enumerate() {
            let seq = self.next_seq();
            let ack = if i + 1 == n { NLM_F_ACK } else { 0 };
            push_msg(
                &mut buf,
                NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), m),
                NLM_F_REQUEST | flags | ack,
                seq,
            );
            whats.push((seq, what));
            last = seq;
        }
        let end = self.next_seq();
        push_msg(
            &mut buf,
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                ControlMessage::BatchEnd,
            ),
            NLM_F_REQUEST,
            end,
        );
        if buf.len() * 2 > self.sndbuf {
            self.sndbuf = buf.len() * 2;
            set_buf(&self.sock, libc::SO_SNDBUFFORCE, self.sndbuf);
        }
        self.sock.send(&buf, 0).map_err(NftError::Socket)?;
        let mut first_error: Option<NftError> = None;
        loop {
            if let Err(e) = self.recv() {
                // After an error the kernel may send nothing more for the
                // aborted batch: the error is the answer.
                return Err(first_error.unwrap_or(e));
            }
            for msg in split(&self.rbuf)? {
                let seq = msg.header.sequence_number;
                if let NetlinkPayload::Error(e) = msg.payload {
                    if e.code.is_some() && first_error.is_none() {
                        let what = whats
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map_or("the batch", |(_, w)| w);
                        first_error = Some(NftError::Refused {
                            what: what.to_string(),
                            source: e.to_io(),
                        });
                    }
                    if seq == last || !(begin..=end).contains(&seq) && first_error.is_some() {
                        return first_error.map_or(Ok(()), Err);
                    }
                }
            }
        }
    }

    /// Sends one dump request and collects the answers up to DONE. A
    /// missing table or set (ENOENT) reads as empty.
    pub(crate) fn dump(&mut self, req: NfTablesMessage) -> Result<Vec<NfTablesMessage>, NftError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        push_msg(
            &mut buf,
            NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), req),
            NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK,
            seq,
        );
        self.sock.send(&buf, 0).map_err(NftError::Socket)?;
        let mut out = Vec::new();
        loop {
            self.recv()?;
            for msg in split(&self.rbuf)? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(c) if c.get() == -libc::ENOENT => Ok(Vec::new()),
                            Some(_) => Err(NftError::Refused {
                                what: "a read-back".into(),
                                source: e.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(m),
                        ..
                    }) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

fn set_buf(sock: &Socket, opt: libc::c_int, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a valid socket fd and a pointer to a c_int of the size
    // given; failure only leaves the default size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn set_timeout(sock: &Socket, d: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a pointer to a timeval of the size
    // given; failure leaves reads blocking.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

fn push_msg(buf: &mut Vec<u8>, m: NetfilterMessage, flags: u16, seq: u32) {
    let mut msg = NetlinkMessage::from(m);
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let at = buf.len();
    buf.resize(at + msg.buffer_len(), 0);
    msg.serialize(&mut buf[at..]);
}

fn split(data: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, NftError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() {
        let len = NetlinkBuffer::new_checked(&data[at..])
            .map_err(|e| NftError::Reply(e.to_string()))?
            .length() as usize;
        if len < 16 || at + len > data.len() {
            return Err(NftError::Reply(format!("message length {len}")));
        }
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&data[at..at + len])
            .map_err(|e| NftError::Reply(e.to_string()))?;
        out.push(msg);
        at += (len + 3) & !3;
    }
    Ok(out)
}

fn set_name(v4: bool) -> &'static str {
    if v4 {
        "v4"
    } else {
        "v6"
    }
}

fn new_set(table: &str, name: &str, key_type: u32, key_len: u32) -> NfTablesMessage {
    NfTablesMessage::NewSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(table.into()),
            SetAttribute::Name(name.into()),
            SetAttribute::Flags(SetFlags::Interval | SetFlags::Timeout),
            SetAttribute::KeyType(key_type),
            SetAttribute::KeyLen(key_len),
            SetAttribute::Id(if key_len == 4 { 1 } else { 2 }),
        ],
    })
}

fn drop_rule(table: &str, v4: bool) -> NfTablesMessage {
    let (proto, offset, len, tag) = if v4 {
        (NFPROTO_IPV4, 12, 4, TAG_V4)
    } else {
        (NFPROTO_IPV6, 8, 16, TAG_V6)
    };
    NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::Chain("drop".into()),
            RuleAttribute::Expressions(vec![
                Expressions::Meta(vec![
                    Meta::DestinationRegister(Register::Reg1),
                    Meta::Key(MetaKey::Nfproto),
                ])
                .into(),
                Expressions::Cmp(vec![
                    Cmp::SourceRegister(Register::Reg1),
                    Cmp::Op(Operator::Equal),
                    Cmp::Data(DataAttribute::Value(vec![proto])),
                ])
                .into(),
                Expressions::Payload(vec![
                    Payload::DestinationRegister(Register::Reg1),
                    Payload::Base(NETWORK_HEADER),
                    Payload::Offset(offset),
                    Payload::Len(len),
                ])
                .into(),
                Expressions::Lookup(vec![
                    Lookup::SourceRegister(Register::Reg1),
                    Lookup::Set(set_name(v4).into()),
                ])
                .into(),
                Expressions::Immediate(vec![
                    Immediate::DestinationRegister(Register::Verdict),
                    Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                        Verdict::Other(NF_DROP),
                    )])),
                ])
                .into(),
            ]),
            RuleAttribute::UserData(tag.to_vec()),
        ],
    })
}

fn elem_msg(
    table: &str,
    v4: bool,
    elems: Vec<Vec<SetElementAttribute>>,
    delete: bool,
) -> NfTablesMessage {
    let m = SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.into()),
            SetElementList::Set(set_name(v4).into()),
            SetElementList::Elements(elems.into_iter().map(ListAttribute::Element).collect()),
        ],
    };
    if delete {
        NfTablesMessage::DeleteSetElement(m)
    } else {
        NfTablesMessage::NewSetElement(m)
    }
}

/// A prefix as interval-set elements: its first address (with the
/// timeout) and, unless it runs to the end of the address space, the
/// address after its last with the interval-end flag.
fn prefix_elements(p: &Prefix, timeout_ms: Option<u64>) -> Vec<Vec<SetElementAttribute>> {
    let (lo, hi) = p.range();
    let key = |v: u128| -> Vec<u8> {
        if p.is_v4() {
            (v as u32).to_be_bytes().to_vec()
        } else {
            v.to_be_bytes().to_vec()
        }
    };
    let max = if p.is_v4() {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    let mut start = vec![SetElementAttribute::Key(DataAttribute::Value(key(
        if p.is_v4() { lo & 0xffff_ffff } else { lo },
    )))];
    if let Some(ms) = timeout_ms {
        start.push(SetElementAttribute::Timeout(ms));
    }
    let mut out = vec![start];
    let hi = if p.is_v4() { hi & 0xffff_ffff } else { hi };
    if hi < max {
        out.push(vec![
            SetElementAttribute::Key(DataAttribute::Value(key(hi + 1))),
            SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
        ]);
    }
    out
}

fn raw_elements(r: &RawInterval) -> Vec<Vec<SetElementAttribute>> {
    let mut out = vec![vec![SetElementAttribute::Key(DataAttribute::Value(
        r.start.clone(),
    ))]];
    if let Some(e) = &r.end {
        out.push(vec![
            SetElementAttribute::Key(DataAttribute::Value(e.clone())),
            SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
        ]);
    }
    out
}

fn key_value(k: &[u8]) -> Option<u128> {
    match k.len() {
        4 => Some(u32::from_be_bytes(k.try_into().ok()?) as u128),
        16 => Some(u128::from_be_bytes(k.try_into().ok()?)),
        _ => None,
    }
}

/// Pairs an interval set's elements (start, then its end) back into
/// prefixes; intervals that are not exactly one prefix are `foreign`.
fn intervals(v4: bool, mut keys: Vec<(Vec<u8>, bool, Option<u64>)>, out: &mut Readback) {
    keys.sort_by(|a, b| key_value(&a.0).cmp(&key_value(&b.0)).then(b.1.cmp(&a.1)));
    let max = if v4 { u32::MAX as u128 } else { u128::MAX };
    let mut i = 0;
    while i < keys.len() {
        let (k, is_end, expiration) = &keys[i];
        i += 1;
        if *is_end {
            // An end with no start before it (nft's leading 0 end).
            continue;
        }
        let Some(start) = key_value(k) else { continue };
        let (end_excl, end_key) = match keys.get(i) {
            Some((ek, true, _)) => {
                i += 1;
                (key_value(ek), Some(ek.clone()))
            }
            _ => (None, None),
        };
        let last = match end_excl {
            Some(e) if e > 0 => e - 1,
            Some(_) => continue,
            None => max,
        };
        let size = last - start;
        // A prefix: size + 1 is a power of two and start is aligned.
        let is_prefix = size
            .checked_add(1)
            .map_or(start == 0, |n| n.is_power_of_two())
            && start & size == 0;
        let bits = if v4 { 32 } else { 128 };
        let host_bits = 128 - size.leading_zeros();
        let prefix = is_prefix.then(|| {
            let ip = if v4 {
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(start as u32))
            } else {
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(start))
            };
            Prefix::new(ip, (bits - host_bits) as u8).ok()
        });
        match prefix.flatten() {
            Some(p) => out.elements.push(Observed {
                prefix: p,
                remaining: expiration.map(std::time::Duration::from_millis),
            }),
            None => out.foreign.push(RawInterval {
                v4,
                start: k.clone(),
                end: end_key,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn keys_of(prefixes: &[&str]) -> Vec<(Vec<u8>, bool, Option<u64>)> {
        let mut keys = Vec::new();
        for s in prefixes {
            for e in prefix_elements(&p(s), Some(5000)) {
                let mut key = None;
                let mut end = false;
                for a in e {
                    match a {
                        SetElementAttribute::Key(DataAttribute::Value(v)) => key = Some(v),
                        SetElementAttribute::Flags(_) => end = true,
                        _ => {}
                    }
                }
                keys.push((key.expect("key"), end, (!end).then_some(4000)));
            }
        }
        keys
    }

    #[test]
    fn elements_read_back_as_the_prefixes_they_came_from() {
        let v4 = [
            "0.0.0.0/1",
            "192.0.2.0/24",
            "192.0.3.0/24",
            "255.255.255.255/32",
        ];
        let mut keys = keys_of(&v4);
        // nft's leading end element at 0 is not an interval.
        keys.push((vec![0, 0, 0, 0], true, None));
        keys.reverse(); // the kernel dumps in reverse order
        let mut out = Readback::default();
        intervals(true, keys, &mut out);
        let got: Vec<String> = out.elements.iter().map(|o| o.prefix.to_string()).collect();
        assert_eq!(got, v4);
        assert!(out.foreign.is_empty());
        assert_eq!(
            out.elements[1].remaining,
            Some(std::time::Duration::from_millis(4000))
        );

        let v6 = ["2001:db8::/32", "::1/128", "ff00::/8"];
        let mut out = Readback::default();
        intervals(false, keys_of(&v6), &mut out);
        let mut got: Vec<String> = out.elements.iter().map(|o| o.prefix.to_string()).collect();
        got.sort();
        let mut want: Vec<String> = v6.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_range_that_is_no_prefix_is_foreign() {
        // 10.0.0.1 - 10.0.0.5 (end 10.0.0.6), made by hand.
        let keys = vec![
            (vec![10, 0, 0, 1], false, None),
            (vec![10, 0, 0, 6], true, None),
        ];
        let mut out = Readback::default();
        intervals(true, keys, &mut out);
        assert!(out.elements.is_empty());
        assert_eq!(out.foreign.len(), 1);
        assert_eq!(raw_elements(&out.foreign[0]).len(), 2);
    }
}
