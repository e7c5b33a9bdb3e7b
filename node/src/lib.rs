//! The `shoal` sidecar: it takes records from the local L7 filter over a
//! Unix datagram socket, shares them with every sidecar of the cluster
//! over UDP multicast, and answers the filter's questions about the
//! cluster (load of a resource, its protection mode, a session's mark).
//!
//! It owns the cluster state and the decisions; the byte format belongs to
//! `shoal-wire`. Saves go to the cluster's Tarantool store (`shoal-tarantool`).
//!
//! # Layout
//! - `config`: TOML configuration, validated with errors naming the key.
//! - `state`: load gauges, mode claims, session marks (sans-IO).
//! - `controller`: thresholds, hysteresis and hold for modes (sans-IO).
//! - `node`: the sans-IO state machine joining them: local records in,
//!   datagrams out, datagrams in, timers; per-peer accounting.
//! - `store`: the bounded save backlog and its batches (sans-IO).
//! - `token`: signed session tokens (verdict cookies) any cluster can
//!   verify before replication (sans-IO).
//! - `metrics`: Prometheus text and the status page, in one place.
//! - `transport`: the multicast socket (socket2), buffer sizing.
//! - `storage`: the Tarantool edge: replay at start, the save loop,
//!   failover between masters, the masters' counters.
//! - `relay`: what crosses clusters: the outbound ring of mode records and
//!   the apply-once rule for relayed ones (sans-IO).
//! - `http`: request heads, bodies and keep-alive for the HTTP endpoint.
//! - `verdicts`: the post-markup API (verdicts, session tokens) on the
//!   cluster's verdict store.
//! - `forwarder`: lease election and the queue <-> multicast forwarder.
//! - `server`: threads, sockets, HTTP and signals around the node.
//! - `client`: the local API client used by the CLI, tests and harness.
//! - `testkit`: starting real `shoal` processes for tests and benches.

mod client;
mod config;
mod controller;
mod forwarder;
mod http;
mod metrics;
mod node;
mod relay;
mod server;
mod state;
mod storage;
mod store;
pub mod testkit;
mod token;
mod transport;
mod verdicts;

pub use client::{http_get, http_request, ClientError, LocalClient};
pub use config::{
    Config, ConfigError, LevelSection, ModesSection, ResourceRuleSection, RuleSection, StoreSection,
};
pub use controller::{Decision, ModeController};
pub use metrics::{render as render_metrics, status as render_status, IoStats};
pub use node::{
    Counters, LocalError, Node, NodeParams, PeerStats, Refused, DEFAULT_RELAY_CAPACITY,
    MAX_LOCAL_RECORDS,
};
pub use relay::{Relay, RelayCounters, RelayMsg};
pub use server::{run, wall_us, ServerError};
pub use state::{LoadView, MarkView, ModeView, StateLimits};
pub use store::{from_row, to_row, Backlog, BacklogCounters, BacklogLimits, BatchId, Offer, Row};
pub use token::{Claims, KeyError, TokenError, TokenKeys, Verdict, TOKEN_BYTES, TOKEN_CHARS};
pub use transport::{open as open_multicast, Multicast, RcvBuf, TransportError};
