//! Shoal's native expiry worker: a Tarantool Lua C module (`cdylib`)
//! whose background fiber deletes expired `shoal_log` tuples on every
//! master, instead of Lua expirationd, whose garbage overwhelmed the GC
//! under attack in the original system; and the native `shoal_save`
//! stored procedure the nodes may save with (below).
//!
//! ```lua
//! local ex = require('shoal_expirer')  -- libshoal_expirer.so via LUA_CPATH 'lib?.so'
//! ex.start({space = 'shoal_log', batch = 300, idle_ms = 100})
//! ex.stats()  --> {deleted, scanned, batches, lag_ms, running, errors}
//! ex.stop()   --> true if a worker was stopped (waits for its fiber)
//! ```
//!
//! What it does: a pass positions with GE `{}`, deletes the expired front
//! of each node's range and, at the first live tuple, jumps to the next
//! node with GT `{node}`: no full scan, no extra index (see [`walk`]).
//! Up to `batch` deletes per transaction; `fiber.sleep(0)` between
//! batches; when a pass finds nothing more to do, `idle_ms` of sleep.
//! Iterators live within one batch and never across a yield: after each
//! commit the walk positions again by key. Running on both masters at
//! once is safe: deleting a key twice deletes nothing the second time.
//! `lag_ms` is read when `stats()` is called: now minus the oldest front
//! over all ranges, 0 when every front is live.
//!
//! # The native `shoal_save`
//!
//! The same library is also a stored C procedure: `shoal_save` (called as
//! `shoal_expirer.shoal_save`, registered by `shoal_store.lua` when the
//! module is configured) takes the Lua `shoal_save`'s arguments, `[node,
//! rows]`, checks all of them (`mp::parse_save`: the node name as
//! `check_node`, every row exactly 10 unsigned integers), then replaces
//! each tuple `[node, row...]`, built by copying the row's MessagePack
//! after the name, in one transaction. No Lua table per row: that decode
//! was most of the tx thread's cost of a save. A bad call fails with
//! `ER_PROC_C` "shoal_save: ..." and writes nothing. Over IPROTO `call`
//! Tarantool 2.6 returns the count as `[n]` (the Lua procedure's is `n`).
//! `benches/src/bin/shoal-store.rs --both`: 280k-310k records/s persisted
//! by a node against 121k-137k with the Lua procedure (medians of 3, 2
//! cores), 1.3-1.4x the in-instance Lua loop.
//!
//! # Layout
//!
//! - `mp`: the little MessagePack it reads and writes (safe, tested).
//! - [`walk`]: the walk over a [`walk::Log`], unit-tested on a `BTreeMap`.
//! - `ffi`: hand-written declarations of the Tarantool 2.6 API.
//! - `tt`: safe wrappers (iterator, batch delete in a transaction, fiber,
//!   `say`, clock) holding most of the `unsafe`.
//! - `worker`: the fiber loop and its thread-local state.
//! - `save`: the `shoal_save` stored C procedure.
//! - `lua`: `luaopen_shoal_expirer` and the three raw functions behind
//!   `shoal_expirer.lua`, which checks arguments and raises the errors.
//!
//! # Binding: hand-written `extern "C"`, not the `tarantool` crate
//!
//! The picodata `tarantool` crate (11.0, `default-features = false`) works
//! on 2.6, but a clean release build of it alone takes 57 s on the 2-core
//! CI machine (proc macros, serde, tlua, ...), for the ~30 functions used
//! here. This crate has no dependencies and builds clean in 1.2 s (release).
//! The price is our own `unsafe`: 35 declarations in `ffi` and 34
//! `unsafe` blocks, each with a `// SAFETY:` note, kept in `tt`, `lua`
//! and `save` behind safe wrappers (the iterator is freed by a guard, the worker's
//! state is a thread-local of `Cell`s). Soundness rules kept:
//! no panic crosses the FFI (every entry point runs under `catch_unwind`),
//! no native function raises a Lua error (the Lua wrapper does) except
//! `luaopen_shoal_expirer`, which raises a failed chunk's error as its last
//! act from a `"C-unwind"` frame holding nothing to drop (so `require`
//! fails instead of returning the message as the module); the worker's box
//! errors go to Tarantool's log through `say` and count in `errors`;
//! `shoal_save`'s are returned to its caller (`box_error_set`). Every
//! transaction (a worker batch, a `shoal_save` call) is a `tt::Txn`,
//! rolled back by its drop on every early return or panic. `log_level` and
//! `_say`, which Tarantool changes at run time, are `static mut` read
//! volatile at each `say`. `fiber_start`'s `va_list` is taken as a pointer:
//! the crate refuses to build for targets other than x86_64 and aarch64
//! Linux, where that is checked. Only memtx spaces: `start` refuses any
//! other engine (a vinyl read may yield, and the walk assumes it does not).
//!
//! # Default batch: 300
//!
//! `benches/src/bin/expiry-compare.rs` (1M tuples over 16 nodes, 500k
//! expired, 10k inserts/s, 2 cores, medians of 3-5 runs): batch 300 gave
//! 457k-722k deletes/s at a p99 tx-thread stall of 0.9-1.2 ms in both
//! sessions measured; 100 gave 307k-556k at 0.5 ms (under the 400k target
//! when other processes shared the cores); 500 crossed 1.3-1.5 ms.
//! expirationd 1.1.1 tuned (10000/1/0): 35k/s, p99 1.7 ms, 17 MiB of Lua
//! garbage per run, against ~2-4 MiB for the load alone.
//!
//! Not here: the schema, when the worker is started and the registration
//! of `shoal_save` (`tarantool/lua/shoal_store.lua`, from
//! `SHOAL_TT_EXPIRER*`).

// Key writers used only by the worker.
#![cfg_attr(feature = "fuzzing", allow(dead_code))]

// The FFI half links against the `tarantool` executable's symbols: left
// out of unit tests and of the fuzz build (feature `fuzzing`), which need
// only the pure parsers.
#[cfg(not(any(test, feature = "fuzzing")))]
mod ffi;
#[cfg(not(any(test, feature = "fuzzing")))]
mod lua;
mod mp;
#[cfg(not(any(test, feature = "fuzzing")))]
mod save;
#[cfg(not(any(test, feature = "fuzzing")))]
mod tt;
pub mod walk;
#[cfg(not(any(test, feature = "fuzzing")))]
mod worker;

#[cfg(not(any(test, feature = "fuzzing")))]
pub use lua::luaopen_shoal_expirer;
pub use mp::Row;
#[cfg(not(any(test, feature = "fuzzing")))]
pub use save::shoal_save;

/// The argument parser of the native `shoal_save`, for the fuzz target in
/// `fuzz/` (feature `fuzzing`; not part of the module's interface).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// `shoal_save`'s check of its MessagePack arguments, `[node, rows]`:
    /// the node name and each row's raw fields, or the message the call
    /// would fail with.
    pub fn parse_save(args: &[u8]) -> Result<(&[u8], Vec<&[u8]>), String> {
        crate::mp::parse_save(args).map(|a| (a.node, a.rows))
    }

    /// Writes into `out` the tuple `shoal_save` would replace for `node`
    /// and one parsed row; returns the key the worker reads back from it.
    pub fn tuple<'a>(node: &[u8], row: &[u8], out: &'a mut Vec<u8>) -> Option<crate::Row<'a>> {
        crate::mp::tuple_head(out, node);
        out.extend_from_slice(row);
        crate::mp::parse_row(out)
    }

    /// The longest tuple `shoal_save` builds.
    pub const TUPLE_MAX: usize = crate::mp::TUPLE_MAX;
}
