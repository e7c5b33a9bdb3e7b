//! The sans-IO node: everything a `shoal` sidecar decides, as one state
//! machine fed `now` and bytes. The driver (`server`) owns the sockets and
//! the clock; tests drive many `Node`s on a virtual clock instead.
//!
//! Inputs: [`Node::handle_local`] (a datagram from the filter),
//! [`Node::receive`] (a datagram from the cluster), [`Node::handle_timeout`].
//! Outputs: datagrams to multicast, drained with [`Node::take_transmit`]
//! (or one at a time with [`Node::poll_transmit`]), and the next deadline,
//! [`Node::poll_timeout`].
//!
//! Batching: records wait in the open datagram until it is full, until the
//! driver has no more input queued ([`Node::flush`]: the batch holds what
//! already arrived, so an idle node sends at once), or at the latest
//! `flush` after the first of them. Mode claims and keep-alives share
//! those datagrams; a claim change only makes the batch due at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shoal_wire::{
    Code, CodeKind, Datagram, DatagramWriter, DecodeError, MacKeys, Op, Record, ReplayVerdict,
    ReplayWindow, RECORD_LEN,
};

use shoal_wire::Prefix;

use crate::blocks::{BlockOutcome, BlockRules, BlockTable};
use crate::controller::{Decision, ModeController, ModeRules};
use crate::enforce::EnforceRules;
use crate::hash::{Map, SeededState};
use crate::keyrate::{self, KeyRateRecord};
use crate::outbox::Outbox;
use crate::ratelimit::{LimitRule, LimitSnapshot, Limits, LimitsError, TopKey, ANNOUNCE_EVERY};
use crate::relay::{Relay, RelayCounters, RelayMsg};
use crate::state::{Applied, ClusterState, LoadView, MarkView, ModeView, StateLimits};
use crate::store::{self, Backlog, BacklogCounters, BacklogLimits, BatchId, Offer, Row};

/// `f2` bit of a `REMOTE_BLOCK` that makes it an unblock.
pub const REMOTE_UNBLOCK: u64 = 1 << 16;

/// Most records a filter may put in one local datagram.
pub const MAX_LOCAL_RECORDS: usize = 64;

/// True when a 64-byte local record asks a question (`QUERY_*`).
fn is_query(record: &[u8]) -> bool {
    matches!(
        Code(u16::from_le_bytes([record[24], record[25]])).kind(),
        CodeKind::QueryLoad | CodeKind::QueryMode | CodeKind::QuerySession | CodeKind::QueryLimit
    )
}

/// True when a filter's datagram holds only queries (and is well formed
/// enough to be read as records): answering it changes no load, mode or
/// mark (a `QUERY_LIMIT` does take from its limit's budget, which has no
/// order between filters either), so the driver may answer it ahead of
/// other filters' reports.
pub fn queries_only(req: &[u8]) -> bool {
    !req.is_empty()
        && req.len() % RECORD_LEN == 0
        && req.len() / RECORD_LEN <= MAX_LOCAL_RECORDS
        && req.chunks_exact(RECORD_LEN).all(is_query)
}
/// Most claim timers run by one [`Node::handle_timeout`]: a burst of
/// keep-alives is cut into slices so the filter's queries get in between.
const CLAIM_SLICE: usize = 128;
/// Most resources and marks one purge slice looks at.
const PURGE_SLICE: usize = 512;
/// Mode records kept for the forwarder when no `[verdicts]` section says.
pub const DEFAULT_RELAY_CAPACITY: usize = 4096;
/// How often stale state is purged (in slices; each is cheap when little
/// is due).
const PURGE_EVERY: Duration = Duration::from_millis(10);
/// How often expired blocks are dropped from the block table.
const BLOCK_PURGE_EVERY: Duration = Duration::from_millis(250);

/// Everything a node needs to start (the binary builds it from its config).
#[derive(Debug, Clone)]
pub struct NodeParams {
    pub id: u32,
    pub cluster: u32,
    pub max_datagram: usize,
    pub flush: Duration,
    pub keys: Option<MacKeys>,
    pub limits: StateLimits,
    pub max_peers: usize,
    pub modes: ModeRules,
    /// The save backlog, when a Tarantool store is configured.
    pub store: Option<BacklogLimits>,
    /// Mode records kept for the cross-cluster forwarder (see `relay`).
    pub relay_capacity: usize,
    /// Key of the node's hash maps (see `hash`): secret and random in the
    /// binary (keys come from hostile traffic), fixed in the simulator.
    pub hash_seed: u128,
}

/// Error codes of the local API (`f0` of a [`Code::REPLY_ERROR`] record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum LocalError {
    /// Empty, or not a multiple of 64 bytes.
    BadLength = 1,
    /// Reserved bytes set, unknown op bits, or a field out of range.
    BadRecord = 2,
    UnknownCode = 3,
    TooManyRecords = 4,
    /// The save backlog is full of records Tarantool has not taken yet:
    /// the record was applied and sent, but not saved. Always replied.
    StoreFull = 5,
    /// A block record in a cluster without `[auth]` whose node does not
    /// accept unsigned blocks (`enforce.allow_unsigned`).
    BlocksUnsigned = 6,
    /// A BLOCK this node's enforcer would never apply: the prefix overlaps
    /// its allowlist or is shorter than its minimum (`[enforce]`).
    BlockRefused = 7,
    /// A `QUERY_LIMIT` for a limit this sidecar does not have.
    UnknownLimit = 8,
}

impl LocalError {
    pub const LABELS: [&'static str; 8] = [
        "bad_length",
        "bad_record",
        "unknown_code",
        "too_many_records",
        "store_full",
        "blocks_unsigned",
        "block_refused",
        "unknown_limit",
    ];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize - 1]
    }
}

/// Why a record from the cluster (or the store) was refused although its
/// datagram was accepted: the rules of `docs/wire.md` section 7. Each is
/// counted (`shoal_records_refused_total{reason}`); the record's
/// neighbours are still used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRefusal {
    /// `origin` is not the datagram's `sender`: only a node speaks for
    /// itself.
    Origin = 0,
    /// A `REMOTE_MODE` not in the form the forwarder makes: its claimant
    /// is a node of the receiver's own cluster.
    RelayForm = 1,
    /// Older than its lifetime plus the clock-skew allowance.
    TooOld = 2,
    /// Stamped further in the future than the clock-skew allowance.
    Future = 3,
}

impl RecordRefusal {
    pub const LABELS: [&'static str; 4] = ["origin", "relay_form", "too_old", "future"];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// What a record asks of the state, once checked. Shared by the local and
/// the cluster path so both accept exactly the same records.
enum Action {
    Load {
        resource: u64,
        value: u64,
    },
    Mode {
        resource: u64,
        level: u8,
    },
    Mark {
        key: u64,
        mark: u64,
    },
    RemoteMode {
        resource: u64,
        level: u8,
        claimant: u64,
        seq: u64,
    },
    /// A peer's rate of a key (never from the local filter).
    KeyRate(KeyRateRecord),
    Block {
        prefix: Prefix,
        reason: u64,
    },
    Unblock {
        prefix: Prefix,
    },
    RemoteBlock {
        prefix: Prefix,
        cluster: u32,
        seq: u64,
        unblock: bool,
    },
    Extension,
    Query,
}

impl Action {
    /// Whether the record lives for its `ttl_ms` (and so is judged by its
    /// age). Load gauges age out on the receiver's clock instead.
    fn has_lifetime(&self) -> bool {
        matches!(
            self,
            Action::Mode { .. }
                | Action::Mark { .. }
                | Action::RemoteMode { .. }
                | Action::KeyRate(_)
                | Action::Block { .. }
                | Action::Unblock { .. }
                | Action::RemoteBlock { .. }
        )
    }

    fn is_block(&self) -> bool {
        matches!(
            self,
            Action::Block { .. } | Action::Unblock { .. } | Action::RemoteBlock { .. }
        )
    }
}

fn classify(r: &Record) -> Result<Action, LocalError> {
    let [f0, f1, ..] = r.fields;
    match r.code.kind() {
        CodeKind::Load => Ok(Action::Load {
            resource: f0,
            value: f1,
        }),
        CodeKind::Mode => match u8::try_from(f1) {
            Ok(level) => Ok(Action::Mode {
                resource: f0,
                level,
            }),
            Err(_) => Err(LocalError::BadRecord),
        },
        CodeKind::SessionMark => match f1 {
            Record::MARK_LEGITIMATE | Record::MARK_SUSPICIOUS => {
                Ok(Action::Mark { key: f0, mark: f1 })
            }
            _ => Err(LocalError::BadRecord),
        },
        CodeKind::RemoteMode => match (u8::try_from(f1), r.fields[2] >> 32) {
            // The claimant's cluster is never 0: it would read as a node
            // of this cluster.
            (Ok(level), 1..) if r.fields[3] > 0 => Ok(Action::RemoteMode {
                resource: f0,
                level,
                claimant: r.fields[2],
                seq: r.fields[3],
            }),
            _ => Err(LocalError::BadRecord),
        },
        CodeKind::Block | CodeKind::Unblock => {
            let (prefix, cluster) =
                Prefix::from_fields(f0, f1, r.fields[2]).map_err(|_| LocalError::BadRecord)?;
            // A block must end; the reason must be text.
            if cluster != 0 || shoal_wire::reason_from_field(r.fields[3]).is_err() {
                return Err(LocalError::BadRecord);
            }
            match r.code.kind() {
                CodeKind::Block if r.ttl_ms > 0 => Ok(Action::Block {
                    prefix,
                    reason: r.fields[3],
                }),
                CodeKind::Block => Err(LocalError::BadRecord),
                _ => Ok(Action::Unblock { prefix }),
            }
        }
        CodeKind::RemoteBlock => {
            // Bit 16 of f2 says unblock (a REMOTE_BLOCK's own flag).
            let unblock = r.fields[2] & REMOTE_UNBLOCK != 0;
            match Prefix::from_fields(f0, f1, r.fields[2] & !REMOTE_UNBLOCK) {
                // As for REMOTE_MODE: the origin cluster is never 0.
                Ok((prefix, cluster @ 1..)) if r.fields[3] > 0 && r.ttl_ms > 0 => {
                    Ok(Action::RemoteBlock {
                        prefix,
                        cluster,
                        seq: r.fields[3],
                        unblock,
                    })
                }
                _ => Err(LocalError::BadRecord),
            }
        }
        CodeKind::Extension => Ok(Action::Extension),
        CodeKind::QueryLoad | CodeKind::QueryMode | CodeKind::QuerySession => Ok(Action::Query),
        CodeKind::KeyRate => KeyRateRecord::from_record(r)
            .map(Action::KeyRate)
            .ok_or(LocalError::BadRecord),
        // 1..=u32::MAX hits of a limit id (32 bits).
        CodeKind::QueryLimit => match (f0 >> 32, r.fields[2]) {
            (0, 1..=0xffff_ffff) => Ok(Action::Query),
            _ => Err(LocalError::BadRecord),
        },
        CodeKind::ReplyError | CodeKind::Unknown => Err(LocalError::UnknownCode),
    }
}

/// Accounting for one peer (sender) of the cluster. Every counter only
/// grows.
#[derive(Debug, Clone)]
pub struct PeerStats {
    window: ReplayWindow,
    pub datagrams: u64,
    pub records: u64,
    /// Sequence numbers skipped when a newer datagram arrived (some of
    /// them arrive later, counted in `late`).
    pub gaps: u64,
    /// Datagrams that arrived after a later one (within the window),
    /// whether or not a gap had counted them.
    pub late: u64,
    pub duplicates: u64,
    /// Too old for the window, or from an older incarnation.
    pub stale: u64,
    pub restarts: u64,
    pub last_seen: Instant,
}

impl PeerStats {
    /// Datagrams lost for good: skipped, and still missing when they left
    /// the replay window (128 datagrams later) or the sender restarted.
    /// Never decreases; a late datagram cannot take a loss back.
    pub fn lost(&self) -> u64 {
        self.window.lost()
    }

    /// Skipped datagrams still inside the window: lost, or not yet here.
    pub fn missing(&self) -> u64 {
        self.window.missing().into()
    }

    /// Lost and missing datagrams per datagram expected, 0..=1.
    pub fn loss_ratio(&self) -> f64 {
        let gone = self.lost() + self.missing();
        let expected = self.datagrams + gone;
        if expected == 0 {
            0.0
        } else {
            gone as f64 / expected as f64
        }
    }
}

/// Node-wide counters (per-peer ones live in [`PeerStats`]).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub datagrams_sent: u64,
    pub records_sent: u64,
    pub local_datagrams: u64,
    pub local_records: u64,
    pub local_queries: u64,
    /// Indexed like [`LocalError::LABELS`].
    pub local_rejected: [u64; LocalError::LABELS.len()],
    /// Save records taken while no store is configured.
    pub records_unsaved: u64,
    /// Stored records applied at start.
    pub replayed: u64,
    /// Stored records not applied at start: expired, load, or unreadable.
    pub replay_skipped: u64,
    /// Indexed like [`DecodeError::LABELS`].
    pub rejected: [u64; DecodeError::LABELS.len()],
    /// This node's own datagrams, looped back by multicast (checked like
    /// any other first, so junk claiming this node's id is counted as
    /// junk).
    pub own_looped: u64,
    /// Valid datagrams of this cluster with this node's id but another
    /// incarnation: a second node configured with the same id.
    pub own_id_conflict: u64,
    /// Records refused by the origin and age rules, indexed like
    /// [`RecordRefusal::LABELS`].
    pub records_refused: [u64; RecordRefusal::LABELS.len()],
    pub replay_rejected: u64,
    pub peer_table_full: u64,
    pub records_applied: u64,
    pub records_bad: u64,
    pub records_unknown_code: u64,
    pub records_extension: u64,
    pub resource_table_full: u64,
    pub mode_claims_sent: u64,
    /// Claim changes refused by `modes.max_changes_per_s` (tried again).
    pub mode_changes_deferred: u64,
}

/// The numbers a metrics scrape needs, copied out of the node so the
/// caller can release its lock before formatting anything.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub id: u32,
    pub cluster: u32,
    pub counters: Counters,
    pub relay: RelayCounters,
    pub session_evictions: u64,
    /// Resources with a load gauge, with a live mode claim, session marks.
    pub resources: usize,
    pub modes: usize,
    pub sessions: usize,
    /// In no particular order.
    pub peers: Vec<PeerSnapshot>,
    pub backlog: Option<BacklogSnapshot>,
    /// The rate limits (`ratelimit`), in config order.
    pub limits: Vec<LimitSnapshot>,
    /// `KEY_RATE` records for a limit this node does not have.
    pub key_rate_unknown_table: u64,
}

/// One peer's counters (see [`PeerStats`]), without its replay window.
#[derive(Debug, Clone, Copy)]
pub struct PeerSnapshot {
    pub id: u32,
    pub datagrams: u64,
    pub records: u64,
    /// [`PeerStats::lost`].
    pub lost: u64,
    /// [`PeerStats::missing`].
    pub missing: u64,
    pub late: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub restarts: u64,
    pub last_seen: Instant,
}

impl PeerSnapshot {
    /// Lost and missing datagrams per datagram expected, 0..=1.
    pub fn loss_ratio(&self) -> f64 {
        let gone = self.lost + self.missing;
        let expected = self.datagrams + gone;
        if expected == 0 {
            0.0
        } else {
            gone as f64 / expected as f64
        }
    }
}

/// The save backlog's size and counters.
#[derive(Debug, Clone, Copy)]
pub struct BacklogSnapshot {
    /// Records queued or in flight.
    pub len: usize,
    /// The most it holds before dropping load and refusing saves.
    pub capacity: usize,
    pub batches_in_flight: usize,
    pub counters: BacklogCounters,
}

/// The node state machine.
#[derive(Debug)]
pub struct Node {
    id: u32,
    cluster: u32,
    incarnation: u64,
    clock_skew_us: u64,
    keys: Option<MacKeys>,
    max_peers: usize,
    flush: Duration,
    state: ClusterState,
    controller: ModeController,
    writer: DatagramWriter,
    batch_since: Option<Instant>,
    /// A claim change waits in the open batch: seal it at the next timeout.
    urgent: bool,
    ready: Outbox,
    due: Vec<u64>,
    peers: Map<u32, PeerStats>,
    record_seq: u64,
    epoch: Instant,
    wall_at_epoch_us: u64,
    next_purge: Instant,
    /// When expired blocks are next dropped (a whole-table pass, so on its
    /// own slower clock than the sliced purge).
    next_block_purge: Instant,
    counters: Counters,
    backlog: Option<Backlog>,
    default_ttl: Duration,
    /// Next `id` of a stored row, and the floor of the next record `seq`.
    /// Both start at the incarnation and follow a hybrid clock (each new
    /// value is the larger of the previous one + 1 and the wall clock in
    /// µs): strictly increasing within a run, close to the saving node's
    /// clock (so replay can order rows of different nodes, see
    /// [`Node::replay`]), and above every value of the previous run since
    /// the incarnation is (the driver persists [`Node::high_water`]).
    /// [`Node::replay`] also raises it past every replayed id of this node.
    next_row_id: u64,
    relay: Relay,
    limits: Limits,
    next_announce: Instant,
    announce_buf: Vec<KeyRateRecord>,
    /// Nodes heard from lately, this one included (the share of a new
    /// key's burst).
    live_nodes: usize,
    /// Other nodes' responder counts (`KEY_RATE`, domain 2) waiting for
    /// the log responder, which owns the tables; `None` while no
    /// responder runs (the records are then unknown, as on a node
    /// without one).
    responder_inbox: Option<VecDeque<(u32, KeyRateRecord)>>,
    responder_inbox_dropped: u64,
    blocks: BlockTable,
    block_rules: BlockRules,
    /// This node's enforcement rules, when it enforces: a local BLOCK they
    /// refuse is refused with a reason rather than held and ignored.
    enforce_rules: Option<EnforceRules>,
    /// What became of due escalations, for the driver's log (bounded).
    escalation_events: VecDeque<crate::escalate::Event>,
    pub escalation_events_dropped: u64,
}

/// Responder counts held for the responder between its drains.
pub const RESPONDER_INBOX: usize = 65_536;

impl Node {
    /// A node starting at `now`, when the wall clock reads `wall_us`
    /// microseconds since the Unix epoch, as `incarnation`: a number
    /// larger than every incarnation, record `seq` and row id of this
    /// node's previous runs (the driver keeps it across restarts, see
    /// `docs/wire.md` section 5; tests may pass `wall_us`).
    pub fn new(p: NodeParams, now: Instant, wall_us: u64, incarnation: u64) -> Node {
        let hasher = SeededState::new(p.hash_seed);
        Node {
            default_ttl: p.limits.default_ttl,
            clock_skew_us: p.limits.clock_skew.as_micros() as u64,
            id: p.id,
            cluster: p.cluster,
            incarnation,
            writer: DatagramWriter::new(
                p.cluster,
                p.id,
                incarnation,
                p.max_datagram,
                p.keys.as_ref().map(|k| k.current.clone()),
            ),
            keys: p.keys,
            max_peers: p.max_peers,
            flush: p.flush,
            state: ClusterState::new(p.id, p.limits, hasher),
            controller: ModeController::new(&p.modes, hasher),
            batch_since: None,
            urgent: false,
            ready: Outbox::new(),
            due: Vec::new(),
            peers: Map::with_hasher(hasher),
            // From the incarnation, like row ids: a record's (origin, seq)
            // names it in the cross-cluster queue, also across restarts.
            record_seq: incarnation,
            epoch: now,
            wall_at_epoch_us: wall_us,
            next_purge: now + PURGE_EVERY,
            next_block_purge: now + BLOCK_PURGE_EVERY,
            counters: Counters::default(),
            backlog: p.store.map(Backlog::new),
            next_row_id: incarnation,
            relay: Relay::new(p.relay_capacity, hasher),
            limits: Limits::empty(hasher),
            next_announce: now + ANNOUNCE_EVERY,
            announce_buf: Vec::new(),
            live_nodes: 1,
            responder_inbox: None,
            responder_inbox_dropped: 0,
            blocks: BlockTable::new(BlockRules::default().capacity, hasher),
            block_rules: BlockRules::default(),
            enforce_rules: None,
            escalation_events: VecDeque::new(),
            escalation_events_dropped: 0,
        }
    }

    /// This run's incarnation (the header of every datagram it sends).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The highest incarnation, record `seq` or row id this run has used:
    /// the driver keeps a persisted floor above it, so that the next run
    /// starts above it even if the clock steps back.
    pub fn high_water(&self) -> u64 {
        self.record_seq
            .max(self.next_row_id.saturating_sub(1))
            .max(self.incarnation)
    }

    /// The next value of the hybrid clock after `prev`.
    fn hybrid_next(&self, now: Instant, prev: u64) -> u64 {
        prev.saturating_add(1).max(self.wall_us(now))
    }

    /// What is left of a record's lifetime when its own timing is taken
    /// into account (`docs/wire.md` 7.2): its TTL (the default
    /// for 0) minus its age beyond the clock-skew allowance, in ms, at
    /// least 1; or why it is refused. Records without a lifetime keep
    /// their `ttl_ms`.
    fn life_left(&self, now: Instant, r: &Record, action: &Action) -> Result<u32, RecordRefusal> {
        if !action.has_lifetime() {
            return Ok(r.ttl_ms);
        }
        let wall = self.wall_us(now);
        if r.timing_us > wall.saturating_add(self.clock_skew_us) {
            return Err(RecordRefusal::Future);
        }
        let ttl_us = match r.ttl_ms {
            0 => self.default_ttl.as_micros() as u64,
            ms => u64::from(ms) * 1_000,
        };
        let age = wall
            .saturating_sub(r.timing_us)
            .saturating_sub(self.clock_skew_us);
        if age >= ttl_us {
            return Err(RecordRefusal::TooOld);
        }
        Ok(u32::try_from((ttl_us - age).div_ceil(1_000)).unwrap_or(u32::MAX))
    }

    fn refuse(&mut self, why: RecordRefusal) {
        self.counters.records_refused[why as usize] += 1;
    }

    /// Installs the rate limits (`ratelimit`), replacing any before: keys
    /// counted so far are forgotten.
    pub fn set_limits(
        &mut self,
        now: Instant,
        rules: Vec<LimitRule>,
        hash_seed: u128,
    ) -> Result<(), LimitsError> {
        self.limits = Limits::new(rules, now, SeededState::new(hash_seed))?;
        Ok(())
    }

    /// The rate limits' numbers (O(limits)).
    pub fn limit_snapshots(&self) -> Vec<LimitSnapshot> {
        self.limits.iter().map(|l| l.snapshot()).collect()
    }

    /// `KEY_RATE` records for a limit this node does not have.
    pub fn key_rate_unknown_table(&self) -> u64 {
        self.limits.unknown_table
    }

    /// The busiest keys of each limit (name, keys), by cluster rate.
    pub fn limit_top(&self, now: Instant, n: usize) -> Vec<(String, Vec<TopKey>)> {
        self.limits
            .iter()
            .map(|l| (l.rule().name.clone(), l.top(now, n)))
            .collect()
    }

    /// Nodes heard from within the last second, this one included.
    pub fn live_nodes(&self) -> usize {
        self.live_nodes
    }

    /// Starts holding the responder's `KEY_RATE` records (domain 2) for
    /// [`Node::take_responder_rates`].
    pub fn enable_responder_rates(&mut self) {
        self.responder_inbox.get_or_insert_with(VecDeque::new);
    }

    /// Moves the held responder counts (origin, record) into `out`.
    pub fn take_responder_rates(&mut self, out: &mut Vec<(u32, KeyRateRecord)>) {
        if let Some(q) = self.responder_inbox.as_mut() {
            out.extend(q.drain(..));
        }
    }

    /// Responder counts dropped because the responder had not drained
    /// [`RESPONDER_INBOX`] of them.
    pub fn responder_inbox_dropped(&self) -> u64 {
        self.responder_inbox_dropped
    }

    /// Multicasts one of the responder's counts with the next batch.
    pub fn send_key_rate(&mut self, now: Instant, k: &KeyRateRecord) {
        let mut r = k.to_record();
        self.record_seq = self.hybrid_next(now, self.record_seq);
        r.timing_us = self.wall_us(now);
        r.seq = self.record_seq;
        r.origin = self.id;
        r.op = Op::SEND;
        self.enqueue(now, &r);
    }

    /// Sets how block records are taken (before [`Node::replay`]).
    pub fn set_block_rules(&mut self, rules: BlockRules) {
        self.blocks.set_capacity(rules.capacity);
        self.block_rules = rules;
    }

    /// Checks local blocks against this node's enforcement rules.
    pub fn set_enforce_rules(&mut self, rules: EnforceRules) {
        self.enforce_rules = Some(rules);
    }

    /// Takes a block the kernel still holds from this node's previous run
    /// when no store gave the blocks back: held here (counted as added),
    /// neither sent nor saved. Refused like any block when the cluster is
    /// unsigned and unsigned blocks are not allowed.
    pub fn adopt_block(&mut self, now: Instant, prefix: Prefix, ttl: Duration) -> bool {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        let reason = shoal_wire::reason_to_field("kernel").unwrap_or(0);
        self.apply_block(now, prefix, ttl_ms, self.id.into(), reason)
            .held()
    }

    /// The longest a block is held, sent or saved here (`max_ttl`).
    pub fn max_block_ttl(&self) -> Duration {
        self.block_rules.max_ttl
    }

    /// The blocks this node holds (what the enforcer reads).
    pub fn blocks(&self) -> &BlockTable {
        &self.blocks
    }

    /// Whether block records are taken at all: only in a signed cluster,
    /// unless unsigned blocks were explicitly allowed.
    pub fn blocks_accepted(&self) -> bool {
        self.keys.is_some() || self.block_rules.accept_unsigned
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn wall_us(&self, now: Instant) -> u64 {
        self.wall_at_epoch_us + now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn peers(&self) -> impl Iterator<Item = (u32, &PeerStats)> {
        self.peers.iter().map(|(id, p)| (*id, p))
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn session_evictions(&self) -> u64 {
        self.state.evictions
    }

    pub fn load(&self, now: Instant, resource: u64) -> LoadView {
        self.state.load(now, resource)
    }

    pub fn mode(&self, now: Instant, resource: u64) -> ModeView {
        self.state.mode(now, resource)
    }

    pub fn mark(&self, now: Instant, key: u64) -> MarkView {
        self.state.mark(now, key)
    }

    /// Handles one datagram from the local filter. `reply` is cleared and,
    /// when the request holds a query (or cannot be read at all), filled
    /// with the reply datagram to send back.
    pub fn handle_local(&mut self, now: Instant, req: &[u8], reply: &mut Vec<u8>) {
        reply.clear();
        self.counters.local_datagrams += 1;
        let n = req.len() / RECORD_LEN;
        let whole = if req.is_empty() || req.len() % RECORD_LEN != 0 {
            Some(LocalError::BadLength)
        } else if n > MAX_LOCAL_RECORDS {
            Some(LocalError::TooManyRecords)
        } else {
            None
        };
        if let Some(e) = whole {
            self.counters.local_rejected[e as usize - 1] += 1;
            self.push_reply(reply, now, Code::REPLY_ERROR, 0, [e as u64, 0, 0, 0]);
            return;
        }
        let has_query = req.chunks_exact(RECORD_LEN).any(is_query);
        for (i, chunk) in req.chunks_exact(RECORD_LEN).enumerate() {
            let parsed = Record::decode_slice(chunk).map_err(|_| LocalError::BadRecord);
            let seq = u64::from_le_bytes(chunk[8..16].try_into().unwrap_or_default());
            let outcome = parsed.and_then(|r| match classify(&r) {
                // Relayed modes come from the forwarder only: one from a
                // filter could move the apply-once mark of a whole cluster.
                Ok(Action::RemoteMode { .. } | Action::RemoteBlock { .. }) => {
                    Err(LocalError::UnknownCode)
                }
                // Only sidecars announce rates.
                Ok(Action::KeyRate(_)) => Err(LocalError::UnknownCode),
                other => other.map(|a| (r, a)),
            });
            match outcome {
                Ok((r, Action::Query)) => {
                    self.counters.local_queries += 1;
                    self.answer(now, &r, reply);
                }
                Ok((r, action)) => {
                    self.counters.local_records += 1;
                    if let Err(e) = self.submit(now, r, action) {
                        self.counters.local_rejected[e as usize - 1] += 1;
                        // A full store is said even to a filter that sent
                        // no query (a save is never lost silently); other
                        // refusals follow the query rule.
                        if e != LocalError::StoreFull && !has_query {
                            continue;
                        }
                        self.push_reply(
                            reply,
                            now,
                            Code::REPLY_ERROR,
                            seq,
                            [e as u64, i as u64, 0, 0],
                        );
                    }
                }
                Err(e) => {
                    self.counters.local_rejected[e as usize - 1] += 1;
                    if has_query {
                        self.push_reply(
                            reply,
                            now,
                            Code::REPLY_ERROR,
                            seq,
                            [e as u64, i as u64, 0, 0],
                        );
                    }
                }
            }
        }
        if self.flush.is_zero() {
            self.seal();
        }
    }

    fn push_reply(
        &self,
        reply: &mut Vec<u8>,
        now: Instant,
        code: Code,
        seq: u64,
        fields: [u64; 4],
    ) {
        let r = Record {
            timing_us: self.wall_us(now),
            seq,
            origin: self.id,
            ttl_ms: 0,
            code,
            op: Op::default(),
            fields,
        };
        reply.extend_from_slice(&r.to_bytes());
    }

    fn answer(&mut self, now: Instant, q: &Record, reply: &mut Vec<u8>) {
        let key = q.fields[0];
        let ms = |d: Duration| d.as_millis() as u64;
        let fields = match q.code.kind() {
            CodeKind::QueryLimit => {
                let (id, k, n) = (key as u32, q.fields[1], q.fields[2]);
                let nodes = self.live_nodes;
                let Some(l) = self.limits.get_mut(id) else {
                    self.counters.local_rejected[LocalError::UnknownLimit as usize - 1] += 1;
                    let e = LocalError::UnknownLimit as u64;
                    self.push_reply(reply, now, Code::REPLY_ERROR, q.seq, [e, key, 0, 0]);
                    return;
                };
                let v = l.hit(now, k, n, nodes);
                let retry_us = match v {
                    crate::ratelimit::Verdict::Deny { retry_after } => {
                        retry_after.as_micros().max(1) as u64
                    }
                    _ => 0,
                };
                [key, k, v.code(), retry_us]
            }
            CodeKind::QueryLoad => {
                let v = self.state.load(now, key);
                [key, v.total, v.local, v.nodes as u64]
            }
            CodeKind::QueryMode => {
                let v = self.state.mode(now, key);
                [key, v.level as u64, ms(v.remaining), v.origin]
            }
            _ => {
                let v = self.state.mark(now, key);
                [key, v.mark, ms(v.remaining), v.origin as u64]
            }
        };
        self.push_reply(reply, now, q.code, q.seq, fields);
    }

    /// Takes a record from the local filter: stamp it, apply it here, queue
    /// it for the cluster when its operation says send and for the store
    /// when it says save. Fails when its timing is outside what every
    /// receiver accepts (`BadRecord`: nothing done) or when the save
    /// backlog is full (`StoreFull`: applied and sent, not saved).
    fn submit(&mut self, now: Instant, mut r: Record, action: Action) -> Result<(), LocalError> {
        if action.is_block() && !self.blocks_accepted() {
            self.blocks.counters.refused_unsigned += 1;
            return Err(LocalError::BlocksUnsigned);
        }
        match &action {
            Action::Block { prefix, .. } => {
                if let Some(Err(_)) = self.enforce_rules.as_ref().map(|e| e.check(prefix)) {
                    return Err(LocalError::BlockRefused);
                }
                // Saved and sent as held: a row longer than `max_ttl`
                // would bring the block back on a node restarted after
                // the cluster dropped it.
                let max = u32::try_from(self.block_rules.max_ttl.as_millis()).unwrap_or(u32::MAX);
                r.ttl_ms = r.ttl_ms.min(max);
            }
            // Remembered at least as long as what is left of the block it
            // lifts (0: exactly that): an unblock the store forgets first
            // lets a restarted node replay the block alone.
            Action::Unblock { prefix } => {
                let left = self
                    .blocks
                    .get(now, prefix)
                    .map_or(self.default_ttl, |b| b.expires - now);
                let left = u32::try_from(left.as_millis().max(1_000)).unwrap_or(u32::MAX);
                r.ttl_ms = if r.ttl_ms == 0 {
                    left
                } else {
                    r.ttl_ms.max(left)
                };
            }
            _ => {}
        }
        if r.timing_us == 0 {
            r.timing_us = self.wall_us(now);
        }
        // The same rule as the receivers', so that this node keeps what
        // they keep, for as long.
        let ttl = self
            .life_left(now, &r, &action)
            .map_err(|_| LocalError::BadRecord)?;
        self.record_seq = self.hybrid_next(now, self.record_seq);
        r.origin = self.id;
        r.seq = self.record_seq;
        if r.op.bits() == 0 {
            r.op = Op::SEND;
        }
        let mut refused = Ok(());
        if r.op.saves() {
            refused = self.save(now, &r, ttl);
        }
        if r.op.sends() && self.crosses(&action) {
            self.observe_mode(now, &Record { ttl_ms: ttl, ..r });
        }
        // Blocks are rare and urgent, like mode claims: sealed at once
        // rather than at the batch deadline.
        let urgent = action.is_block();
        self.apply(now, self.id, action, ttl);
        if r.op.sends() {
            self.enqueue(now, &r);
            if urgent {
                self.seal();
            }
        }
        refused
    }

    /// Takes a record made by the sidecar itself on behalf of its filter
    /// (a verdict's session mark, a relayed mode): checked, stamped,
    /// applied, sent and saved exactly as if the filter had sent it; sent
    /// with the next batch, or at once after [`Node::flush`].
    pub fn inject(&mut self, now: Instant, r: Record) -> Result<(), LocalError> {
        let action = classify(&r)?;
        match action {
            Action::Query | Action::KeyRate(_) => return Err(LocalError::UnknownCode),
            // What every receiver would refuse (`relay_form`), this node
            // does not apply either.
            Action::RemoteMode { claimant, .. } if claimant >> 32 == u64::from(self.cluster) => {
                return Err(LocalError::BadRecord)
            }
            Action::RemoteBlock { cluster, .. } if cluster == self.cluster => {
                return Err(LocalError::BadRecord)
            }
            _ => {}
        }
        self.counters.local_records += 1;
        self.submit(now, r, action)
    }

    /// Seals the records queued so far into a datagram now instead of at
    /// the batch deadline: when the driver has no more input queued (so a
    /// lone record never waits for company), and after [`Node::inject`].
    pub fn flush(&mut self) {
        self.seal();
    }

    /// Whether a record of this cluster goes to the other clusters: modes,
    /// and blocks when this node takes blocks at all.
    fn crosses(&self, action: &Action) -> bool {
        match action {
            Action::Mode { .. } => true,
            Action::Block { .. } | Action::Unblock { .. } => self.blocks_accepted(),
            _ => false,
        }
    }

    /// Whether records wait in the open batch.
    pub fn has_batch(&self) -> bool {
        self.batch_since.is_some()
    }

    fn observe_mode(&mut self, now: Instant, r: &Record) {
        let default_ms = u32::try_from(self.default_ttl.as_millis()).unwrap_or(u32::MAX);
        let msg = RelayMsg::from_record(r, self.wall_us(now), default_ms);
        self.relay.observe(msg);
    }

    /// The cross-cluster relay: outbound ring and inbound dedup.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    pub fn relay_mut(&mut self) -> &mut Relay {
        &mut self.relay
    }

    pub fn cluster(&self) -> u32 {
        self.cluster
    }

    /// Queues `r` for the store, to expire `ttl_ms` from now (what is left
    /// of its lifetime; 0 for the default).
    fn save(&mut self, now: Instant, r: &Record, ttl_ms: u32) -> Result<(), LocalError> {
        if self.backlog.is_none() {
            self.counters.records_unsaved += 1;
            return Ok(());
        }
        let ttl = match ttl_ms {
            0 => self.default_ttl,
            ms => Duration::from_millis(ms.into()),
        };
        let wall = self.wall_us(now);
        let expires = wall + ttl.as_micros() as u64;
        let id = self.hybrid_next(now, self.next_row_id.saturating_sub(1));
        self.next_row_id = id + 1;
        let Some(backlog) = self.backlog.as_mut() else {
            return Ok(());
        };
        match backlog.offer(store::to_row(r, id, expires)) {
            Offer::Taken | Offer::DroppedLoad => Ok(()),
            Offer::Refused => Err(LocalError::StoreFull),
        }
    }

    /// Applies a checked record to the state, whoever it came from.
    fn apply(&mut self, now: Instant, origin: u32, action: Action, ttl_ms: u32) {
        let applied = match action {
            Action::Load { resource, value } => {
                let a = self.state.apply_load(now, origin, resource, value);
                if a == Applied::Ok {
                    self.reconsider(now, resource);
                }
                a
            }
            Action::Mode { resource, level } => {
                self.state
                    .apply_mode(now, origin.into(), resource, level, ttl_ms)
            }
            Action::RemoteMode {
                resource,
                level,
                claimant,
                seq,
            } => {
                let cluster = (claimant >> 32) as u32;
                if !self.relay.is_new(cluster, seq) {
                    return;
                }
                let a = self
                    .state
                    .apply_mode(now, claimant, resource, level, ttl_ms);
                // Not applied (table full): not counted as applied either,
                // so the same message sent again is still taken.
                if a == Applied::Ok {
                    self.relay.applied_now(cluster, seq);
                }
                a
            }
            Action::Mark { key, mark } => {
                self.state.apply_mark(now, origin, key, mark, ttl_ms);
                Applied::Ok
            }
            Action::KeyRate(rec) => {
                // Held for what is left of its lifetime (7.2).
                let rec = KeyRateRecord { ttl_ms, ..rec };
                let responder = rec.table >> 32 == u64::from(keyrate::domain::RESPONDER);
                match self.responder_inbox.as_mut() {
                    _ if origin == self.id => {}
                    // The log responder owns its tables: held until it
                    // takes them (bounded; what does not fit is counted).
                    Some(q) if responder => {
                        if q.len() < RESPONDER_INBOX {
                            q.push_back((origin, rec));
                        } else {
                            self.responder_inbox_dropped += 1;
                        }
                    }
                    _ => self.limits.absorb(now, origin, &rec),
                }
                Applied::Ok
            }
            Action::Block { prefix, reason } => {
                self.apply_block(now, prefix, ttl_ms, origin.into(), reason);
                Applied::Ok
            }
            Action::Unblock { prefix } => {
                if self.blocks_accepted() {
                    self.blocks.unblock(&prefix);
                } else {
                    self.blocks.counters.refused_unsigned += 1;
                }
                Applied::Ok
            }
            Action::RemoteBlock {
                prefix,
                cluster,
                seq,
                unblock,
            } => {
                if !self.relay.is_new(cluster, seq) {
                    return;
                }
                let applied = if unblock {
                    self.blocks_accepted() && {
                        self.blocks.unblock(&prefix);
                        true
                    }
                } else {
                    let origin = u64::from(cluster) << 32;
                    self.apply_block(now, prefix, ttl_ms, origin, 0).held()
                };
                // As for remote modes: not taken, not counted as applied.
                if applied {
                    self.relay.applied_now(cluster, seq);
                }
                Applied::Ok
            }
            Action::Extension => {
                self.counters.records_extension += 1;
                Applied::Ok
            }
            Action::Query => Applied::Ok,
        };
        if applied == Applied::ResourceTableFull {
            self.counters.resource_table_full += 1;
        }
    }

    fn apply_block(
        &mut self,
        now: Instant,
        prefix: Prefix,
        ttl_ms: u32,
        origin: u64,
        reason: u64,
    ) -> BlockOutcome {
        if !self.blocks_accepted() {
            self.blocks.counters.refused_unsigned += 1;
            return BlockOutcome::Refused;
        }
        let ttl = Duration::from_millis(ttl_ms.into()).min(self.block_rules.max_ttl);
        if ttl.is_zero() {
            self.blocks.counters.refused_bad += 1;
            return BlockOutcome::Refused;
        }
        self.blocks.block(now, prefix, ttl, origin, reason)
    }

    /// Re-runs the mode controller for a resource whose load changed and
    /// broadcasts this node's new claim at once.
    fn reconsider(&mut self, now: Instant, resource: u64) {
        if !self.controller.watches(resource) {
            return;
        }
        let (v, stale_at) = self.state.load_until(now, resource);
        let d = self
            .controller
            .evaluate(now, resource, v.local, v.total, stale_at);
        self.counters.mode_changes_deferred = self.controller.changes_deferred;
        if let Some(d) = d {
            self.claim(now, d);
        }
    }

    fn claim(&mut self, now: Instant, d: Decision) {
        let ttl_ms = u32::try_from(d.ttl.as_millis()).unwrap_or(u32::MAX);
        self.state
            .apply_mode(now, self.id.into(), d.resource, d.level, ttl_ms);
        self.record_seq = self.hybrid_next(now, self.record_seq);
        let r = Record {
            timing_us: self.wall_us(now),
            seq: self.record_seq,
            origin: self.id,
            ttl_ms,
            code: Code::MODE,
            op: Op::SEND,
            fields: [d.resource, d.level as u64, 0, 0],
        };
        self.counters.mode_claims_sent += 1;
        self.observe_mode(now, &r);
        self.enqueue(now, &r);
        // A change does not wait for the batch timer, but it shares the
        // datagram with whatever else this step makes (other claims,
        // keep-alives): sealed at the next timeout, due now.
        if d.change {
            self.urgent = true;
        }
    }

    fn enqueue(&mut self, now: Instant, r: &Record) {
        if !self.writer.push(r) {
            self.seal();
            // An empty writer always takes one record.
            let _ = self.writer.push(r);
        }
        self.batch_since.get_or_insert(now);
        if self.writer.is_full() {
            self.seal();
        }
    }

    /// Seals the current batch into a datagram ready to send.
    fn seal(&mut self) {
        self.batch_since = None;
        self.urgent = false;
        let n = self.writer.len() as u64;
        if let Some(bytes) = self.writer.finish() {
            self.ready.push(bytes);
            self.counters.datagrams_sent += 1;
            self.counters.records_sent += n;
        }
    }

    /// The save backlog, when a store is configured.
    pub fn backlog(&self) -> Option<&Backlog> {
        self.backlog.as_ref()
    }

    /// Copies the numbers a metrics scrape needs: O(peers), no sorting,
    /// nothing walked per resource.
    pub fn snapshot(&self) -> NodeSnapshot {
        let (resources, modes, sessions) = self.state.counts();
        NodeSnapshot {
            limits: self.limit_snapshots(),
            key_rate_unknown_table: self.limits.unknown_table,
            id: self.id,
            cluster: self.cluster,
            counters: self.counters.clone(),
            relay: self.relay.counters(),
            session_evictions: self.state.evictions,
            resources,
            modes,
            sessions,
            peers: self
                .peers
                .iter()
                .map(|(&id, p)| PeerSnapshot {
                    id,
                    datagrams: p.datagrams,
                    records: p.records,
                    lost: p.lost(),
                    missing: p.missing(),
                    late: p.late,
                    duplicates: p.duplicates,
                    stale: p.stale,
                    restarts: p.restarts,
                    last_seen: p.last_seen,
                })
                .collect(),
            backlog: self.backlog.as_ref().map(|b| BacklogSnapshot {
                len: b.len(),
                capacity: b.capacity(),
                batches_in_flight: b.batches_in_flight(),
                counters: b.counters(),
            }),
        }
    }

    /// Cuts the next batch of records to save into `buf`.
    pub fn take_save_batch(&mut self, buf: &mut Vec<Row>) -> Option<BatchId> {
        self.backlog.as_mut()?.next_batch(buf)
    }

    /// The store committed a batch.
    pub fn save_acked(&mut self, id: BatchId) {
        if let Some(b) = self.backlog.as_mut() {
            b.ack(id);
        }
    }

    /// A batch failed or its outcome is unknown: retry it.
    pub fn save_failed(&mut self, id: BatchId) {
        if let Some(b) = self.backlog.as_mut() {
            b.fail(id);
        }
    }

    /// Applies stored records at start (the context a restarted node gets
    /// back): `node` names the writer of each row and `own` is this node's
    /// name. Expired, load and unreadable rows are skipped; rows stamped
    /// further in the future than the clock-skew allowance are refused
    /// (`future`). The others are applied through the same checks as
    /// records from the cluster, in the order they were saved, the live
    /// rule (the last record applied wins): by row id, which each node
    /// takes from its hybrid clock, then by node name. Never by the
    /// filter-supplied `timing_us`. Returns the number applied.
    pub fn replay<'a>(
        &mut self,
        now: Instant,
        own: &str,
        rows: impl IntoIterator<Item = (&'a str, Row)>,
    ) -> usize {
        let wall = self.wall_us(now);
        let mut live: Vec<(u64, &'a str, Record, u32)> = Vec::new();
        for (node, row) in rows {
            if node == own {
                self.next_row_id = self.next_row_id.max(row[1].saturating_add(1));
            }
            let remaining_ms = row[0].saturating_sub(wall) / 1_000;
            match store::from_row(&row) {
                Some(r) if r.timing_us > wall.saturating_add(self.clock_skew_us) => {
                    self.refuse(RecordRefusal::Future);
                }
                Some(r) if remaining_ms > 0 && r.code != Code::LOAD => {
                    let ttl = u32::try_from(remaining_ms).unwrap_or(u32::MAX);
                    live.push((row[1], node, r, ttl));
                }
                _ => self.counters.replay_skipped += 1,
            }
        }
        live.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut applied = 0;
        for (_, _, r, ttl) in live {
            // A stored row keeps no `ttl_ms`: what is left of it is the TTL.
            match classify(&Record { ttl_ms: ttl, ..r }) {
                Ok(Action::Query) | Err(_) => self.counters.replay_skipped += 1,
                Ok(action) => {
                    self.apply(now, r.origin, action, ttl);
                    applied += 1;
                }
            }
        }
        self.counters.replayed += applied as u64;
        applied
    }

    /// Copies the next datagram to multicast into `out`. Returns false
    /// when none is ready.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        self.ready.pop_into(out)
    }

    /// Swaps every ready datagram into `out` (cleared first): the driver
    /// sends them outside the lock and hands the buffers back on its next
    /// call, so nothing is allocated once they have grown.
    pub fn take_transmit(&mut self, out: &mut Outbox) {
        out.clear();
        if !self.ready.is_empty() {
            std::mem::swap(out, &mut self.ready);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_purge.min(self.next_announce);
        if let Some(t) = self.batch_since {
            next = next.min(if self.urgent { t } else { t + self.flush });
        }
        if let Some(t) = self.controller.next_deadline() {
            next = next.min(t);
        }
        next
    }

    /// Flushes a due batch, runs the claim timers that are due (keep-alives,
    /// releases once the load went away; at most a slice of them per call,
    /// then [`poll_timeout`](Self::poll_timeout) says now), and purges a
    /// slice of stale state.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.controller.due(now, CLAIM_SLICE, &mut due);
        for &resource in &due {
            let (v, stale_at) = self.state.load_until(now, resource);
            if let Some(d) = self
                .controller
                .fire(now, resource, v.local, v.total, stale_at)
            {
                self.claim(now, d);
            }
        }
        self.due = due;
        self.counters.mode_changes_deferred = self.controller.changes_deferred;
        if self
            .batch_since
            .is_some_and(|t| self.urgent || now >= t + self.flush)
        {
            self.seal();
        }
        if now >= self.next_purge {
            let (_, more) = self.state.purge_some(now, PURGE_SLICE);
            self.next_purge = if more { now } else { now + PURGE_EVERY };
            if now >= self.next_block_purge {
                self.next_block_purge = now + BLOCK_PURGE_EVERY;
                self.blocks.purge(now);
            }
        }
        if now >= self.next_announce {
            self.next_announce = now + ANNOUNCE_EVERY;
            self.announce(now);
        }
    }

    /// Every announce round: counts the live nodes, sends this node's
    /// own rates of the heavy keys of each limit (`KEY_RATE`) and sweeps
    /// idle keys.
    fn announce(&mut self, now: Instant) {
        let recent = Duration::from_secs(1);
        self.live_nodes = 1 + self
            .peers
            .values()
            .filter(|p| now.saturating_duration_since(p.last_seen) < recent)
            .count();
        if self.limits.is_empty() {
            return;
        }
        let nodes = self.live_nodes;
        let mut out = std::mem::take(&mut self.announce_buf);
        for l in self.limits.iter_mut() {
            l.tick(now, nodes, |k| out.push(k));
        }
        self.escalate(now);
        let timing_us = self.wall_us(now);
        for k in out.drain(..) {
            self.record_seq = self.hybrid_next(now, self.record_seq);
            let r = Record {
                timing_us,
                seq: self.record_seq,
                origin: self.id,
                ..k.to_record()
            };
            self.enqueue(now, &r);
        }
        self.announce_buf = out;
    }

    /// The kernel meter of limit `id` dropped a new connection from `key`
    /// at `at` (read back by the driver): a denial for escalation.
    pub fn limit_kernel_denied(&mut self, id: u32, at: Instant, key: u64) {
        if let Some(l) = self.limits.get_mut(id) {
            l.kernel_denied(at, key);
        }
    }

    /// Moves what became of due escalations into `out` (for the log).
    pub fn take_escalation_events(&mut self, out: &mut Vec<crate::escalate::Event>) {
        out.extend(self.escalation_events.drain(..));
    }

    /// Acts on the escalations whose turn came (`escalate`): a prefix
    /// already blocked is left alone; otherwise the `BLOCK` goes through
    /// [`Node::inject`], the path of `shoal block` and `POST /v1/blocks`,
    /// so its rules (allowlist, minimum length, unsigned cluster) apply.
    fn escalate(&mut self, now: Instant) {
        use crate::escalate::{turn, Event, Outcome, EVENTS_MAX};
        if !self.limits.iter().any(|l| l.rule().escalate.is_some()) {
            return;
        }
        let recent = Duration::from_secs(1);
        let mut live: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_seen) < recent)
            .map(|(id, _)| *id)
            .collect();
        live.push(self.id);
        let me = self.id;
        let mut due = Vec::new();
        let mut work = Vec::new();
        for l in self.limits.iter_mut() {
            let Some(esc) = l.rule().escalate else {
                continue;
            };
            let wall = |t: Instant| {
                self.wall_at_epoch_us + t.saturating_duration_since(self.epoch).as_micros() as u64
            };
            let wall_now = wall(now);
            l.due_escalations(|k, at| turn(k, me, &live, wall(at)) <= wall_now, &mut due);
            for p in due.drain(..) {
                work.push((l.id(), l.rule().name.clone(), esc.ttl, p));
            }
        }
        for (id, name, ttl, prefix) in work {
            // Held already, as itself or inside a broader block (a block
            // by hand, or another node's first).
            let covered = (0..=prefix.prefix_len()).rev().any(|len| {
                Prefix::masked(prefix.ip(), len).is_ok_and(|p| self.blocks.get(now, &p).is_some())
            });
            let outcome = if covered {
                Outcome::AlreadyBlocked
            } else if let Some(Err(e)) = self.enforce_rules.as_ref().map(|r| r.check(&prefix)) {
                Outcome::Refused(e.to_string())
            } else {
                let reason = shoal_wire::reason_to_field(&name[..name.len().min(8)]).unwrap_or(0);
                let [f0, f1, f2] = prefix.to_fields(0);
                let mut r = Record::new(Code::BLOCK, [f0, f1, f2, reason]);
                r.ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
                r.op = Op::SEND_SAVE;
                match self.inject(now, r) {
                    // Applied and sent; only the save was refused.
                    Ok(()) | Err(LocalError::StoreFull) => Outcome::Blocked { ttl },
                    Err(LocalError::BlocksUnsigned) => Outcome::Refused(
                        "the cluster has no [auth] and unsigned blocks are not allowed".into(),
                    ),
                    Err(e) => Outcome::Refused(format!("{e:?}")),
                }
            };
            if let Some(c) = self
                .limits
                .get_mut(id)
                .and_then(|l| l.escalate_counters_mut())
            {
                match outcome {
                    Outcome::Blocked { .. } => c.blocked += 1,
                    Outcome::AlreadyBlocked => c.already_blocked += 1,
                    Outcome::Refused(_) => c.refused += 1,
                }
            }
            if self.escalation_events.len() < EVENTS_MAX {
                self.escalation_events.push_back(Event {
                    limit: name,
                    prefix,
                    outcome,
                });
            } else {
                self.escalation_events_dropped += 1;
            }
        }
    }

    /// Claims this node holds, and claim timers queued (live and dead).
    pub fn claims(&self) -> (usize, usize) {
        (self.controller.active(), self.controller.timers())
    }

    /// Takes a datagram from the cluster. Returns the number of records
    /// applied, or why the datagram was refused. Nothing in a refused
    /// datagram touches the state.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Result<usize, Refused> {
        // Every datagram, this node's own looped back included, is checked
        // in full first: junk claiming this node's id is counted as junk,
        // and a node of another cluster with the same id as wrong_cluster.
        let d = match Datagram::parse(bytes, self.cluster, self.keys.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                let i = DecodeError::LABELS
                    .iter()
                    .position(|l| *l == e.label())
                    .unwrap_or(0);
                self.counters.rejected[i] += 1;
                return Err(Refused::Decode(e));
            }
        };
        let h = d.header;
        let wall = self.wall_us(now);
        if h.sender == self.id {
            if h.incarnation == self.incarnation {
                self.counters.own_looped += 1;
                return Ok(0);
            }
            self.counters.own_id_conflict += 1;
            return Err(Refused::OwnId {
                incarnation: h.incarnation,
            });
        }
        if !self.peers.contains_key(&h.sender) && self.peers.len() >= self.max_peers {
            self.counters.peer_table_full += 1;
            return Err(Refused::PeerTableFull);
        }
        let peer = self.peers.entry(h.sender).or_insert_with(|| PeerStats {
            window: ReplayWindow::default(),
            datagrams: 0,
            records: 0,
            gaps: 0,
            late: 0,
            duplicates: 0,
            stale: 0,
            restarts: 0,
            last_seen: now,
        });
        let verdict = peer.window.check(h.incarnation, h.seq);
        match verdict {
            ReplayVerdict::Fresh { restarted } => peer.restarts += restarted as u64,
            ReplayVerdict::Next { gap } => peer.gaps += gap,
            ReplayVerdict::Late => peer.late += 1,
            ReplayVerdict::Duplicate => peer.duplicates += 1,
            ReplayVerdict::Stale => peer.stale += 1,
        }
        if !verdict.accepted() {
            self.counters.replay_rejected += 1;
            return Err(Refused::Replay(verdict));
        }
        // The first datagram this run hears from a peer passes any replay
        // window (it starts empty): a datagram captured on the segment and
        // replayed then would bring back a block lifted since. A block is
        // sealed at once, so a genuine one is fresh; an old one is refused.
        let first_contact = matches!(verdict, ReplayVerdict::Fresh { restarted: false });
        peer.datagrams += 1;
        peer.records += h.count as u64;
        peer.last_seen = now;
        // Each record is judged on its own (docs/wire.md 7): a refused
        // one is counted and skipped, the others are applied, the same on
        // every receiver since the rules depend only on the datagram and
        // the receiver's clock.
        let mut applied = 0;
        for r in d.records() {
            let Ok(r) = r else {
                self.counters.records_bad += 1;
                continue;
            };
            if r.origin != h.sender {
                self.refuse(RecordRefusal::Origin);
                continue;
            }
            match classify(&r) {
                // Queries are local-only; on the wire they are unknown.
                Ok(Action::Query) | Err(LocalError::UnknownCode) => {
                    self.counters.records_unknown_code += 1
                }
                Err(_) => self.counters.records_bad += 1,
                Ok(Action::RemoteMode { claimant, .. })
                    if claimant >> 32 == self.cluster.into() =>
                {
                    self.refuse(RecordRefusal::RelayForm);
                }
                Ok(Action::RemoteBlock { cluster, .. }) if cluster == self.cluster => {
                    self.refuse(RecordRefusal::RelayForm);
                }
                Ok(Action::Block { .. } | Action::Unblock { .. })
                    if first_contact && r.timing_us.saturating_add(self.clock_skew_us) < wall =>
                {
                    self.refuse(RecordRefusal::TooOld);
                }
                Ok(action) => {
                    let ttl = match self.life_left(now, &r, &action) {
                        Ok(ttl) => ttl,
                        Err(why) => {
                            self.refuse(why);
                            continue;
                        }
                    };
                    if self.crosses(&action) {
                        self.observe_mode(now, &Record { ttl_ms: ttl, ..r });
                    }
                    self.apply(now, r.origin, action, ttl);
                    applied += 1;
                }
            }
        }
        self.counters.records_applied += applied as u64;
        Ok(applied)
    }
}

/// Why [`Node::receive`] refused a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("replay window: {0:?}")]
    Replay(ReplayVerdict),
    #[error("peer table full")]
    PeerTableFull,
    #[error("a node of this cluster with this node's id (incarnation {incarnation})")]
    OwnId { incarnation: u64 },
}
