//! Shoal's wire format: the fixed-size [`Record`] and the [`Datagram`]
//! that carries a batch of them between the sidecars of one cluster.
//!
//! This crate owns bytes and nothing else: it does no I/O, reads no clock
//! and keeps no state beyond what a caller hands it. The node crate owns
//! sockets, time and the cluster state that records feed.
//!
//! # Layout
//! - `record`: the 64-byte record, its codes and operation flags.
//! - `datagram`: header, batching writer ([`DatagramWriter`]) and the
//!   checking reader ([`Datagram::parse`]); CRC32 and the optional MAC.
//! - `replay`: the per-sender sequence window that rejects replays and
//!   counts loss, duplicates and reordering ([`ReplayWindow`]).
//! - `block`: the prefix and reason fields of the block records.
//! - `error`: the typed reasons a datagram or record is rejected.
//! - `vectors`: reads the hex test vectors out of the Markdown docs.
//!
//! The format is specified, with test vectors, in `docs/wire.md`.

mod block;
mod datagram;
mod error;
mod record;
mod replay;
mod vectors;

pub use block::{reason_from_field, reason_to_field, Prefix, PrefixError};
pub use datagram::{
    Datagram, DatagramWriter, Header, MacKey, MacKeys, CRC_LEN, HEADER_LEN, MAC_LEN, MAGIC,
    MAX_DATAGRAM, VERSION,
};
pub use error::{DecodeError, RecordError};
pub use record::{Code, CodeKind, Op, Record, RECORD_LEN};
pub use replay::{ReplayVerdict, ReplayWindow, REPLAY_WINDOW};
pub use vectors::{hex_vectors, VectorError};
