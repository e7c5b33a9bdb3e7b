//! Shoal's Tarantool side: a small pipelined IPROTO client that speaks
//! what Tarantool 2.6 has (greeting, chap-sha1 auth, select, insert,
//! replace, update, delete, upsert, call, eval, ping), and the test kit
//! that runs a real local master pair.
//!
//! # Layout
//!
//! - `codec`: the IPROTO bytes without I/O: greeting and scramble, request
//!   encoding, incremental response framing and decoding. Never panics on
//!   network input; a [`DecodeError`] says why.
//! - `client`: the tokio driver. One TCP connection per [`Client`], owned
//!   by a background task (writer that coalesces queued requests, reader
//!   that matches answers by sync id, reconnect with backoff), per-request
//!   timeouts, a cap on requests in flight, space ids by name, cached.
//! - `api`: the [`Tarantool`] trait the node programs against, and the
//!   [`Select`] options.
//! - `error`: [`Error`], which says whether a failed request may have been
//!   executed ([`Error::outcome_unknown`]).
//! - [`verdict`]: the verdict store's procedures behind `shoal-core`'s
//!   traits (`VerdictStore`, `CrossQueue`, `Lease`): the only code that
//!   knows their names and tuple layouts.
//! - [`statelog`]: the state store's procedure names and `shoal_log`
//!   tuple layout, in one place, and [`TarantoolLog`], the
//!   [`StateLog`](shoal_core::StateLog) of one master.
//! - `rs` (feature `tarantool-rs`, off by default): `RsClient`, the
//!   `tarantool-rs` crate behind the same trait, for Tarantool >= 2.10
//!   (measured against ours; ARCHITECTURE.md has the decision).
//! - [`testkit`]: starts and stops a real local pair of state-store masters
//!   through `tarantool/scripts/pair.sh`, for tests, benches and the demo.
//!
//! Not here: which master to use, retries, batching of records (the node's
//! `storage` and `store`). The client does not queue requests while
//! disconnected: they fail with [`Error::Disconnected`] at once.
//!
//! The Lua instance files (`instance.lua`, `lua/shoal_store.lua`) and the
//! scripts (`scripts/install.sh`, `scripts/pair.sh`) live next to this
//! crate.
//!
//! ```no_run
//! use shoal_tarantool::{statelog, Client, ClientConfig, Tarantool};
//! # async fn f() -> Result<(), shoal_tarantool::Error> {
//! let client = Client::connect(ClientConfig::new("127.0.0.1:3301", "shoal", "secret")).await?;
//! let rows: Vec<(u64, u64, u64, u64, u64, u64, u64, u64, u64, u64)> = Vec::new();
//! let (saved,): (u64,) = client.call(statelog::SAVE_LUA, &("node-1", rows)).await?;
//! # let _ = saved; Ok(()) }
//! ```

mod api;
mod client;
mod codec;
mod error;
#[cfg(feature = "tarantool-rs")]
mod rs;
pub mod statelog;
pub mod testkit;
pub mod verdict;

pub use api::{Iter, Select, Tarantool};
pub use client::{Client, ClientConfig};
#[cfg(feature = "fuzzing")]
pub use codec::fuzzing;
pub use error::{DecodeError, Error};
#[cfg(feature = "tarantool-rs")]
pub use rs::RsClient;
pub use statelog::{LogTuple, TarantoolLog};
