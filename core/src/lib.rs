//! Shoal's sans-IO core: every decision the sidecar makes, as plain code
//! fed `now`. No sockets, no threads, no clock, no config parsing; the
//! `shoal-node` binary drives it and the simulator runs it on a virtual
//! clock.
//!
//! # Layout
//! - `node`: the state machine joining the rest: local records in,
//!   datagrams out, datagrams in, timers; per-peer accounting.
//! - `state`: load gauges, mode claims, session marks.
//! - `controller`: thresholds, hysteresis and hold for modes.
//! - `relay`: what crosses clusters: the outbound ring of mode records and
//!   the apply-once rule for relayed ones.
//! - `outbox`: sealed datagrams waiting to be multicast, in one buffer.
//! - `store`: the bounded save backlog and its batches.
//! - `savelog`: the state-log trait (save, replay, health) with an
//!   in-memory fake, and the save path's master choice and failover.
//! - `token`: signed session tokens (verdict cookies).
//! - `ports`: the verdict store's traits (verdicts, cross-cluster queue,
//!   lease) and their typed error; `fakes`: in-memory implementations with
//!   faults on command, for the simulator.
//! - `election`: the forwarder's lease and forwarding rounds as a state
//!   machine that emits store calls.
//! - `keyrate`: per-key decayed rates in fixed memory (Space-Saving), the
//!   heavy keys a node announces and the peers' rates per origin: the
//!   counting under rate limits and the log responder.
//! - `ratelimit`: cluster-wide rate limits on top of `keyrate`: token
//!   buckets refilled at this node's share of each key's limit.
//! - `syslog`: the syslog parser (RFC 5424, RFC 3164) and the RFC 6587
//!   stream framer, strict and bounded.
//! - `rules`: the log responder's rules (anchored patterns, one
//!   `RegexSet`), its cluster buckets on `keyrate`, and the actions.
//! - `blocks`: the bounded table of blocked prefixes (BLOCK records).
//! - `enforce`: what the kernel drop sets should hold vs what they hold,
//!   as batches (the netlink edge is in the node).
//! - `hash`: the keyed hasher of every map here (seeded by the caller).

pub mod blocks;
mod controller;
pub mod election;
pub mod enforce;
pub mod escalate;
pub mod fakes;
mod hash;
pub mod keyrate;
mod node;
mod outbox;
pub mod ports;
pub mod ratelimit;
mod relay;
pub mod rules;
mod savelog;
mod state;
mod store;
pub mod syslog;
mod token;

pub use controller::{Decision, Level, ModeController, ModeRules, Rule};
pub use hash::{Map, SeededState, ShardedMap};
pub use node::{
    queries_only, BacklogSnapshot, Counters, LocalError, Node, NodeParams, NodeSnapshot,
    PeerSnapshot, PeerStats, RecordRefusal, Refused, DEFAULT_RELAY_CAPACITY, MAX_LOCAL_RECORDS,
    REMOTE_UNBLOCK, RESPONDER_INBOX,
};
pub use outbox::Outbox;
pub use relay::{Relay, RelayCounters, RelayMsg};
pub use savelog::{
    AckLevel, Failure, FakeLog, FakeReply, FakeStore, Fault, Health, LogError, Replication,
    SaveAck, SaveEvent, SavePath, SavePathCounters, SavePathParams, StateLog,
};
pub use state::{LoadView, MarkView, ModeView, StateLimits};
pub use store::{from_row, to_row, Backlog, BacklogCounters, BacklogLimits, BatchId, Offer, Row};
pub use token::{Claims, KeyError, TokenError, TokenKeys, Verdict, TOKEN_BYTES, TOKEN_CHARS};
