//! The nftables edge of the enforcer: netlink messages, no decisions and
//! no `nft` process. It owns one `inet` table holding four sets with
//! timeouts — per family a hash set of full addresses (`v4addr`,
//! `v6addr`: /32 and /128, one element each, O(1) to add) and an interval
//! set of shorter prefixes (`v4`, `v6`) — and one base chain whose four
//! rules drop packets whose source is in any of them. Everything it sends
//! goes in one nfnetlink batch, which the kernel applies whole or not at
//! all.
//!
//! Messages are built with `netlink-packet-netfilter` and sent over a
//! `netlink-sys` socket; it needs `CAP_NET_ADMIN` in the node's network
//! namespace. Set-element dumps (the read-back) are parsed here with a
//! small bounds-checked attribute walker instead: the crate's list parser
//! formats the whole message with `Debug` for every element it parses
//! (an error context built eagerly), which made reading back 100 k
//! elements take minutes. What to put in the sets is decided by
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
use shoal_core::enforce::{Batch, Observed, SetKind};
use shoal_wire::Prefix;

/// The nftables subsystem id in nfnetlink message types.
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWSETELEM`, the type of a set-element dump message.
const NFT_MSG_NEWSETELEM: u16 = 12;
/// `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Set-element attributes (`NFTA_SET_ELEM_LIST_ELEMENTS`, `NFTA_LIST_ELEM`,
/// `NFTA_SET_ELEM_*`, `NFTA_DATA_VALUE`).
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;
/// `NFT_SET_ELEM_INTERVAL_END`.
const ELEM_INTERVAL_END: u32 = 1;
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
/// `NLM_F_APPEND`: a new rule goes at the chain's end.
const NLM_F_APPEND: u16 = 0x800;
/// Bytes of element attributes per NEWSETELEM/DELSETELEM message: the
/// element list is one attribute, whose length is a `u16`. Fewer, fuller
/// messages cost the kernel less per element.
const ELEMENT_LIST_BYTES: usize = 60_000;
/// How often the kernel walks a hash set to free expired elements (its
/// default is every second). Expired elements never match and are not
/// dumped; the walk only reclaims memory, and at 1 M elements it cost 9 %
/// of a core at the default, 0.5 % at 10 s (`docs/benchmarks.md`).
/// Interval sets collect at commit time instead.
const HASH_GC_MS: u32 = 10_000;
/// Bytes read per `recv`. The kernel sizes dump messages by the largest
/// read it has seen but never above 32 KiB; a bigger buffer takes several
/// queued messages per call.
const RECV_BUF: usize = 256 << 10;
/// Longest wait for one read from the kernel.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// The chain holds exactly this node's four rules.
    pub rules_ok: bool,
}

/// An interval of an interval set as keys, for deleting what is not a
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInterval {
    v4: bool,
    start: u128,
    /// The first address after the interval (`None`: it runs to the end of
    /// the address space).
    end: Option<u128>,
}

/// The set's name in the table.
pub fn set_name(k: SetKind) -> &'static str {
    match k {
        SetKind::Addr4 => "v4addr",
        SetKind::Net4 => "v4",
        SetKind::Addr6 => "v6addr",
        SetKind::Net6 => "v6",
    }
}

/// The tag (rule user data) marking the rule that matches set `k`.
fn rule_tag(k: SetKind) -> Vec<u8> {
    format!("shoal:{}", set_name(k)).into_bytes()
}

/// One netlink socket and the table's names.
pub struct Nft {
    sock: Socket,
    seq: u32,
    spec: TableSpec,
    sndbuf: usize,
    /// Receive buffer, reused.
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
    /// the chain's rules with this node's four, in one batch: elements
    /// already in the sets are kept, so a restart leaves no gap (a table
    /// of the older two-set layout gets its hash sets added here; the
    /// read-back then moves its full addresses over).
    pub fn setup(&mut self) -> Result<(), NftError> {
        let t = &self.spec.table;
        let mut msgs = vec![(
            "the table",
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![
                    TableAttribute::Name(t.clone()),
                    TableAttribute::Flags(TableFlags::default()),
                ],
            }),
            NLM_F_CREATE,
        )];
        for (i, k) in SetKind::ALL.into_iter().enumerate() {
            msgs.push(("a set", new_set(t, k, i as u32 + 1), NLM_F_CREATE));
        }
        msgs.push((
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
        ));
        msgs.push((
            "flushing the chain",
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(t.clone()),
                    RuleAttribute::Chain("drop".into()),
                ],
            }),
            0,
        ));
        for k in SetKind::ALL {
            msgs.push(("a drop rule", drop_rule(t, k), NLM_F_CREATE | NLM_F_APPEND));
        }
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
    /// kernel transaction: deletes first, then adds, each set's elements
    /// packed into as few messages as fit.
    pub fn apply(&mut self, b: &Batch, foreign: &[RawInterval]) -> Result<(), NftError> {
        let t = self.spec.table.clone();
        let mut msgs = Vec::new();
        for k in SetKind::ALL {
            let mut elems: Vec<Vec<SetElementAttribute>> = Vec::new();
            if k.is_interval() {
                for r in foreign.iter().filter(|r| r.v4 == k.is_v4()) {
                    elems.extend(raw_elements(r));
                }
            }
            for (p, _) in b.deletes.iter().filter(|d| d.1 == k) {
                elems.extend(prefix_elements(p, k, None));
            }
            for chunk in elems.chunks(elements_per_message(k)) {
                msgs.push((
                    "deleting elements (one is not in the set)",
                    elem_msg(&t, k, chunk.to_vec(), true),
                    0,
                ));
            }
        }
        for k in SetKind::ALL {
            let mut elems = Vec::new();
            for (p, timeout, _) in b.adds.iter().filter(|a| SetKind::of(&a.0) == k) {
                let ms = (timeout.as_millis() as u64).max(1);
                elems.extend(prefix_elements(p, k, Some(ms)));
            }
            for chunk in elems.chunks(elements_per_message(k)) {
                msgs.push((
                    "adding elements (one overlaps an element already there)",
                    elem_msg(&t, k, chunk.to_vec(), false),
                    NLM_F_CREATE,
                ));
            }
        }
        if msgs.is_empty() {
            return Ok(());
        }
        self.batch(msgs)
    }

    /// Reads the four sets and the chain's rules back.
    pub fn read(&mut self) -> Result<Readback, NftError> {
        let mut out = Readback::default();
        let mut keys = Vec::new();
        for k in SetKind::ALL {
            keys.clear();
            self.dump_elements(set_name(k), &mut keys)?;
            if k.is_interval() {
                intervals(k, &mut keys, &mut out);
            } else {
                for e in &keys {
                    if let Some(prefix) = address(k.is_v4(), e.key) {
                        out.elements.push(Observed {
                            prefix,
                            remaining: e.expiration.map(std::time::Duration::from_millis),
                            set: k,
                        });
                    }
                }
            }
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
        let mut want: Vec<Vec<u8>> = SetKind::ALL.into_iter().map(rule_tag).collect();
        want.sort();
        out.rules_ok = tags == want;
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

    /// Sends `msgs` (nftables messages of family `inet`, each with what it
    /// is for the error text and its extra flags) between BATCH_BEGIN and
    /// BATCH_END in one `send`, and waits for the kernel's verdict on the
    /// last one (any error before it means the kernel aborted the whole
    /// batch). Usable by other edges on the same socket kind (the meter).
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

    /// Sends one dump request and collects the answers up to DONE, parsed
    /// by the crate (for small dumps: rules, sets). A missing table or set
    /// (ENOENT) reads as empty.
    pub(crate) fn dump(&mut self, req: NfTablesMessage) -> Result<Vec<NfTablesMessage>, NftError> {
        let seq = self.send_dump(req)?;
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

    fn send_dump(&mut self, req: NfTablesMessage) -> Result<u32, NftError> {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        push_msg(
            &mut buf,
            NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), req),
            NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK,
            seq,
        );
        self.sock.send(&buf, 0).map_err(NftError::Socket)?;
        Ok(seq)
    }

    /// Dumps the elements of set `set` (of this table) into `out`, parsing
    /// the messages here: linear in the set's size on our side (see the
    /// module docs for why not with the crate). A missing table or set
    /// reads as empty. Keys of 4 or 16 bytes only.
    pub(crate) fn dump_elements(
        &mut self,
        set: &str,
        out: &mut Vec<DumpElem>,
    ) -> Result<(), NftError> {
        let req = NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(self.spec.table.clone()),
                SetElementList::Set(set.into()),
            ],
        });
        let seq = self.send_dump(req)?;
        loop {
            self.recv()?;
            let mut at = 0;
            let data = &self.rbuf;
            while at + 16 <= data.len() {
                let len = u32::from_ne_bytes(bytes4(&data[at..])) as usize;
                if len < 16 || at + len > data.len() {
                    return Err(NftError::Reply(format!("message length {len}")));
                }
                let msg = &data[at..at + len];
                at += (len + 3) & !3;
                let kind = u16::from_ne_bytes([msg[4], msg[5]]);
                if u32::from_ne_bytes(bytes4(&msg[8..])) != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(bytes4(msg.get(16..).unwrap_or(&[])));
                        return match code {
                            0 => Ok(()),
                            c if c == -libc::ENOENT => {
                                out.clear();
                                Ok(())
                            }
                            c => Err(NftError::Refused {
                                what: "a read-back".into(),
                                source: io::Error::from_raw_os_error(-c),
                            }),
                        };
                    }
                    t if t == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM => {
                        // After the netlink header, the 4-byte nfgenmsg.
                        let attrs = msg.get(20..).unwrap_or(&[]);
                        parse_element_list(attrs, out)?;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One element of a set dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DumpElem {
    /// The key, as a number (IPv4 in the low 32 bits).
    pub(crate) key: u128,
    /// An interval set's end element.
    pub(crate) end: bool,
    /// Milliseconds left before the kernel expires it.
    pub(crate) expiration: Option<u64>,
}

fn bytes4(b: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    let n = b.len().min(4);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// Calls `f(type, payload)` for each netlink attribute in `b` (type
/// without the nested / byte-order flags). A length running past the
/// buffer is an error, not a panic.
fn walk_attrs<'a>(
    mut b: &'a [u8],
    mut f: impl FnMut(u16, &'a [u8]) -> Result<(), NftError>,
) -> Result<(), NftError> {
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return Err(NftError::Reply(format!("attribute length {len}")));
        }
        f(kind, &b[4..len])?;
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(())
}

/// Parses a NEWSETELEM message's attributes (after the nfgenmsg) into
/// elements. Keys that are not 4 or 16 bytes are skipped.
fn parse_element_list(attrs: &[u8], out: &mut Vec<DumpElem>) -> Result<(), NftError> {
    walk_attrs(attrs, |kind, list| {
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            return Ok(());
        }
        walk_attrs(list, |kind, elem| {
            if kind != NFTA_LIST_ELEM {
                return Ok(());
            }
            let mut key = None;
            let mut end = false;
            let mut expiration = None;
            walk_attrs(elem, |kind, v| {
                match kind {
                    NFTA_SET_ELEM_KEY => walk_attrs(v, |kind, data| {
                        if kind == NFTA_DATA_VALUE {
                            key = key_value(data);
                        }
                        Ok(())
                    })?,
                    NFTA_SET_ELEM_FLAGS if v.len() == 4 => {
                        end = u32::from_be_bytes(bytes4(v)) & ELEM_INTERVAL_END != 0
                    }
                    NFTA_SET_ELEM_EXPIRATION if v.len() == 8 => {
                        let mut b = [0; 8];
                        b.copy_from_slice(v);
                        expiration = Some(u64::from_be_bytes(b));
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if let Some(key) = key {
                out.push(DumpElem {
                    key,
                    end,
                    expiration,
                });
            }
            Ok(())
        })
    })
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

/// Appends one netlink message with these flags and sequence number.
pub(crate) fn push_msg(buf: &mut Vec<u8>, m: NetfilterMessage, flags: u16, seq: u32) {
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

fn new_set(table: &str, k: SetKind, id: u32) -> NfTablesMessage {
    let (key_type, key_len) = if k.is_v4() {
        (TYPE_IPADDR, 4)
    } else {
        (TYPE_IP6ADDR, 16)
    };
    let flags = if k.is_interval() {
        SetFlags::Interval | SetFlags::Timeout
    } else {
        // A hash set (the kernel picks its rhash type for a timeout set).
        SetFlags::Timeout
    };
    let mut attributes = vec![
        SetAttribute::Table(table.into()),
        SetAttribute::Name(set_name(k).into()),
        SetAttribute::Flags(flags),
        SetAttribute::KeyType(key_type),
        SetAttribute::KeyLen(key_len),
        SetAttribute::Id(id),
    ];
    if !k.is_interval() {
        attributes.push(SetAttribute::GarbageCollectionInterval(HASH_GC_MS));
    }
    NfTablesMessage::NewSet(SetMessage { attributes })
}

fn drop_rule(table: &str, k: SetKind) -> NfTablesMessage {
    let (proto, offset, len) = if k.is_v4() {
        (NFPROTO_IPV4, 12, 4)
    } else {
        (NFPROTO_IPV6, 8, 16)
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
                    Lookup::Set(set_name(k).into()),
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
            RuleAttribute::UserData(rule_tag(k)),
        ],
    })
}

/// The most bytes one element of set `k` takes in an element list: the
/// list-element header, the nested key with its value, and the larger of
/// a timeout (start) or flags (interval end).
fn element_bytes(k: SetKind) -> usize {
    let key = if k.is_v4() { 4 } else { 16 };
    4 + (4 + 4 + key) + 12
}

fn elements_per_message(k: SetKind) -> usize {
    ELEMENT_LIST_BYTES / element_bytes(k)
}

fn elem_msg(
    table: &str,
    k: SetKind,
    elems: Vec<Vec<SetElementAttribute>>,
    delete: bool,
) -> NfTablesMessage {
    let m = SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.into()),
            SetElementList::Set(set_name(k).into()),
            SetElementList::Elements(elems.into_iter().map(ListAttribute::Element).collect()),
        ],
    };
    if delete {
        NfTablesMessage::DeleteSetElement(m)
    } else {
        NfTablesMessage::NewSetElement(m)
    }
}

fn key_bytes(v4: bool, v: u128) -> Vec<u8> {
    if v4 {
        (v as u32).to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// A prefix as elements of set `k`: in a hash set its address (with the
/// timeout); in an interval set its first address (with the timeout) and,
/// unless it runs to the end of the address space, the address after its
/// last with the interval-end flag.
fn prefix_elements(
    p: &Prefix,
    k: SetKind,
    timeout_ms: Option<u64>,
) -> Vec<Vec<SetElementAttribute>> {
    let v4 = p.is_v4();
    let (lo, hi) = p.range();
    let (lo, hi, max) = if v4 {
        (lo & 0xffff_ffff, hi & 0xffff_ffff, u32::MAX as u128)
    } else {
        (lo, hi, u128::MAX)
    };
    let mut start = vec![SetElementAttribute::Key(DataAttribute::Value(key_bytes(
        v4, lo,
    )))];
    if let Some(ms) = timeout_ms {
        start.push(SetElementAttribute::Timeout(ms));
    }
    let mut out = vec![start];
    if k.is_interval() && hi < max {
        out.push(vec![
            SetElementAttribute::Key(DataAttribute::Value(key_bytes(v4, hi + 1))),
            SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
        ]);
    }
    out
}

fn raw_elements(r: &RawInterval) -> Vec<Vec<SetElementAttribute>> {
    let mut out = vec![vec![SetElementAttribute::Key(DataAttribute::Value(
        key_bytes(r.v4, r.start),
    ))]];
    if let Some(e) = r.end {
        out.push(vec![
            SetElementAttribute::Key(DataAttribute::Value(key_bytes(r.v4, e))),
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

/// A full-length address as a prefix; `None` if the key is of the other
/// family's size.
fn address(v4: bool, key: u128) -> Option<Prefix> {
    let ip = if v4 {
        std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(key).ok()?))
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::from(key))
    };
    Prefix::new(ip, if v4 { 32 } else { 128 }).ok()
}

/// Pairs an interval set's elements (start, then its end) back into
/// prefixes; intervals that are not exactly one prefix are `foreign`.
/// O(n log n): one sort, one pass.
fn intervals(k: SetKind, keys: &mut [DumpElem], out: &mut Readback) {
    let v4 = k.is_v4();
    // By key; at one key an end (of the interval before) sorts first.
    keys.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.end.cmp(&a.end)));
    let max = if v4 { u32::MAX as u128 } else { u128::MAX };
    let bits = if v4 { 32 } else { 128 };
    let mut i = 0;
    while i < keys.len() {
        let e = keys[i];
        i += 1;
        if e.end {
            // An end with no start before it (nft's leading 0 end).
            continue;
        }
        let start = e.key;
        let end_excl = match keys.get(i) {
            Some(n) if n.end => {
                i += 1;
                Some(n.key)
            }
            _ => None,
        };
        let last = match end_excl {
            Some(e) if e > 0 => e - 1,
            Some(_) => continue,
            None => max,
        };
        if last < start || last > max {
            out.foreign.push(RawInterval {
                v4,
                start,
                end: end_excl,
            });
            continue;
        }
        let size = last - start;
        // A prefix: size + 1 is a power of two and start is aligned.
        let is_prefix = size
            .checked_add(1)
            .map_or(start == 0, |n| n.is_power_of_two())
            && start & size == 0;
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
                remaining: e.expiration.map(std::time::Duration::from_millis),
                set: k,
            }),
            None => out.foreign.push(RawInterval {
                v4,
                start,
                end: end_excl,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    /// The dump elements a kernel would give for these prefixes in set
    /// `k` (each start with 4000 ms left), built as attributes.
    fn elems_of(k: SetKind, prefixes: &[&str]) -> Vec<Vec<SetElementAttribute>> {
        let mut out = Vec::new();
        for s in prefixes {
            for mut e in prefix_elements(&p(s), k, None) {
                if !e.iter().any(|a| matches!(a, SetElementAttribute::Flags(_))) {
                    e.push(SetElementAttribute::Timeout(5000));
                    e.push(SetElementAttribute::Expiration(4000));
                }
                out.push(e);
            }
        }
        out
    }

    /// The attributes of a NEWSETELEM message, as the crate emits them
    /// (the same layout as the kernel's dump).
    fn wire(k: SetKind, elems: Vec<Vec<SetElementAttribute>>) -> Vec<u8> {
        let NfTablesMessage::NewSetElement(m) = elem_msg("t", k, elems, false) else {
            unreachable!()
        };
        let mut buf = vec![0; m.attributes.as_slice().buffer_len()];
        m.attributes.as_slice().emit(&mut buf);
        buf
    }

    fn parsed(k: SetKind, prefixes: &[&str]) -> Vec<DumpElem> {
        let mut out = Vec::new();
        parse_element_list(&wire(k, elems_of(k, prefixes)), &mut out).expect("parse");
        out
    }

    #[test]
    fn elements_read_back_as_the_prefixes_they_came_from() {
        let v4 = [
            "0.0.0.0/1",
            "192.0.2.0/24",
            "192.0.3.0/24",
            "198.51.100.7/32",
            "255.255.255.255/32",
        ];
        let mut keys = parsed(SetKind::Net4, &v4);
        // nft's leading end element at 0 is not an interval.
        keys.push(DumpElem {
            key: 0,
            end: true,
            expiration: None,
        });
        keys.reverse(); // the kernel dumps in reverse order
        let mut out = Readback::default();
        intervals(SetKind::Net4, &mut keys, &mut out);
        let got: Vec<String> = out.elements.iter().map(|o| o.prefix.to_string()).collect();
        assert_eq!(got, v4);
        assert!(out.foreign.is_empty());
        assert!(out.elements.iter().all(|o| o.set == SetKind::Net4));
        assert_eq!(
            out.elements[1].remaining,
            Some(std::time::Duration::from_millis(4000))
        );

        let v6 = ["2001:db8::/32", "::1/128", "ff00::/8"];
        let mut out = Readback::default();
        intervals(SetKind::Net6, &mut parsed(SetKind::Net6, &v6), &mut out);
        let mut got: Vec<String> = out.elements.iter().map(|o| o.prefix.to_string()).collect();
        got.sort();
        let mut want: Vec<String> = v6.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn hash_set_elements_are_one_key_each() {
        assert_eq!(
            prefix_elements(&p("192.0.2.7"), SetKind::Addr4, Some(1)).len(),
            1
        );
        assert_eq!(
            prefix_elements(&p("192.0.2.7"), SetKind::Net4, Some(1)).len(),
            2
        );
        let got = parsed(SetKind::Addr6, &["2001:db8::1", "2001:db8::2"]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            address(false, got[0].key).map(|p| p.to_string()),
            Some("2001:db8::1/128".into())
        );
        assert_eq!(got[0].expiration, Some(4000));
        assert!(!got[0].end);
        let got = parsed(SetKind::Addr4, &["198.51.100.7"]);
        assert_eq!(
            address(true, got[0].key).map(|p| p.to_string()),
            Some("198.51.100.7/32".into())
        );
        assert_eq!(
            address(true, 1 << 40),
            None,
            "an IPv6-sized key in a v4 set"
        );
    }

    #[test]
    fn a_full_message_fits_the_element_list_length() {
        for k in SetKind::ALL {
            let n = elements_per_message(k);
            let (base, len) = if k.is_v4() {
                ("10.0.0.0", 32)
            } else {
                ("2001:db8::", 128)
            };
            let base: std::net::IpAddr = base.parse().expect("ip");
            let prefixes: Vec<Prefix> = (0..n as u32)
                .map(|i| {
                    let ip = match base {
                        std::net::IpAddr::V4(a) => {
                            std::net::IpAddr::V4((u32::from(a) + 2 * i).into())
                        }
                        std::net::IpAddr::V6(a) => {
                            std::net::IpAddr::V6((u128::from(a) + 2 * i as u128).into())
                        }
                    };
                    Prefix::new(ip, len - k.is_interval() as u8).expect("prefix")
                })
                .collect();
            // Interval sets: half as many prefixes (two elements each).
            let elems: Vec<_> = prefixes
                .iter()
                .take(if k.is_interval() { n / 2 } else { n })
                .flat_map(|p| prefix_elements(p, k, Some(u32::MAX as u64)))
                .collect();
            assert!(
                elems.len() <= n && elems.len() + 2 >= n,
                "{k:?} {}",
                elems.len()
            );
            let list =
                SetElementList::Elements(elems.into_iter().map(ListAttribute::Element).collect());
            assert!(list.buffer_len() <= 65_535, "{k:?}: {}", list.buffer_len());
            assert!(
                list.buffer_len() > 50_000,
                "{k:?}: messages are packed full"
            );
        }
    }

    #[test]
    fn a_malformed_dump_is_an_error_not_a_panic() {
        let good = wire(SetKind::Addr4, elems_of(SetKind::Addr4, &["192.0.2.1"]));
        // Every truncation, and every length byte bent, of a good message.
        for cut in 0..good.len() {
            let mut out = Vec::new();
            let _ = parse_element_list(&good[..cut], &mut out);
        }
        for at in 0..good.len() {
            for v in [0u8, 1, 3, 0xff] {
                let mut bad = good.clone();
                bad[at] = v;
                let mut out = Vec::new();
                let _ = parse_element_list(&bad, &mut out);
                assert!(out.len() <= 1);
            }
        }
        let mut out = Vec::new();
        assert!(parse_element_list(&[0xff, 0xff, 3, 0, 0, 0], &mut out).is_err());
    }

    #[test]
    fn a_range_that_is_no_prefix_is_foreign() {
        // 10.0.0.1 - 10.0.0.5 (end 10.0.0.6), made by hand.
        let mut keys = vec![
            DumpElem {
                key: 0x0a00_0001,
                end: false,
                expiration: None,
            },
            DumpElem {
                key: 0x0a00_0006,
                end: true,
                expiration: None,
            },
        ];
        let mut out = Readback::default();
        intervals(SetKind::Net4, &mut keys, &mut out);
        assert!(out.elements.is_empty());
        assert_eq!(out.foreign.len(), 1);
        assert_eq!(raw_elements(&out.foreign[0]).len(), 2);
    }
}
