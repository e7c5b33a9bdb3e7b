//! The `shoal` sidecar: it takes records from the local L7 filter over a
//! Unix datagram socket, shares them with every sidecar of the cluster
//! over UDP multicast, and answers the filter's questions about the
//! cluster (load of a resource, its protection mode, a session's mark).
//!
//! It owns the cluster state and the decisions; the byte format belongs to
//! `shoal-wire`. Saves go to the cluster's Tarantool store (`shoal-tarantool`).
//!
//! # Layout
//! The decisions live in `shoal-core` (sans-IO); this crate is the I/O
//! around it.
//!
//! - `config`: TOML configuration, validated with errors naming the key,
//!   turned into the core's parameter types.
//! - `metrics`: `/metrics` (prometheus-client, from a snapshot taken
//!   outside the node's lock; each component registers its own) and
//!   `/status`.
//! - `transport`: the multicast socket (socket2), buffer sizing.
//! - `storage`: the Tarantool edge: replay at start, the save loop,
//!   failover between masters, the masters' counters.
//! - `http`: request heads, bodies and keep-alive for the HTTP endpoint.
//! - `verdicts`: the post-markup API (verdicts, session tokens) on the
//!   cluster's verdict store.
//! - `forwarder`: lease election and the queue <-> multicast forwarder.
//! - `preflight`: what `run` and `check` both check outside the config
//!   text (secret files, the socket's path and group), and binding the
//!   local socket with its mode and group.
//! - `incarnation`: the persisted floor that keeps the node's incarnation
//!   (and its record seqs and row ids) growing across restarts.
//! - `syslog`: the log responder's edge: syslog over UDP and TCP, the
//!   bounded queue, and the worker applying `shoal_core::rules` actions.
//! - `rulesfile`: the responder's rules file (TOML) read into the core's
//!   rule specs, for `run` and `shoal rules test`.
//! - `nft`: the enforcer's nftables edge (netlink batches, read-back).
//! - `enforce`: the enforcer's thread: blocks -> desired set -> batches.
//! - `limits`: the rate limits' metrics collector and `/status` section
//!   (the decisions are `shoal_core::ratelimit`).
//! - `server`: threads, sockets, HTTP and signals around the node.
//! - `client`: the local API client used by the CLI, tests and harness.
//! - `testkit`: starting real `shoal` processes for tests and benches.

mod client;
mod config;
pub mod enforce;
mod forwarder;
mod http;
mod incarnation;
mod limits;
mod metrics;
pub mod nft;
pub mod nft_meter;
mod preflight;
mod rulesfile;
mod server;
mod status_page;
mod storage;
mod syslog;
pub mod testkit;
mod transport;
mod verdicts;

pub use client::{http_get, http_request, ClientError, LimitDecision, LimitHit, LocalClient};
pub use config::{
    Config, ConfigError, GroupSpec, LevelSection, LocalSection, ModesSection, ResourceRuleSection,
    RuleSection, Secret, StoreSection, MAX_PEERS, MAX_RESOURCES, MAX_SESSION_CAPACITY,
};
pub use preflight::{probe, BindError, Preflight, Probe, SocketPath};
pub use rulesfile::{load_rules, parse_rules, test_log, TestSummary};
pub use server::{run, wall_us, ServerError};
pub use transport::{open as open_multicast, Multicast, RcvBuf, TransportError};
