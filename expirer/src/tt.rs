//! Safe wrappers over the box and fiber calls the worker makes. Every
//! `unsafe` block of the module outside `lua.rs` is here.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr;

use crate::ffi;
use crate::mp;
use crate::walk::{Flow, KeyBatch, Log, Seek};

/// A failed box call: Tarantool's own message.
#[derive(Debug, Clone)]
pub(crate) struct BoxError(pub String);

impl std::fmt::Display for BoxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message of the last box error of this fiber, or `what` when there
/// is none.
fn last_error(what: &str) -> BoxError {
    // SAFETY: box_error_last takes no argument and returns NULL or the
    // fiber's current error, alive until the next box call of this fiber.
    let e = unsafe { ffi::box_error_last() };
    if e.is_null() {
        return BoxError(what.to_string());
    }
    // SAFETY: `e` is a live error (above); box_error_message returns a
    // NUL-terminated string owned by it, copied out at once.
    let msg = unsafe { CStr::from_ptr(ffi::box_error_message(e)) };
    BoxError(format!("{what}: {}", msg.to_string_lossy()))
}

/// Writes one line to Tarantool's log (`say`), as `shoal_expirer: msg`.
pub(crate) fn say(level: c_int, msg: &str) {
    // SAFETY: both are plain words owned by Tarantool, written only on
    // this (the tx) thread, between our calls: a volatile read through a
    // raw pointer sees the value of now (no reference to a `static mut`).
    let (current, f) = unsafe {
        (
            ptr::read_volatile(&raw const ffi::log_level),
            ptr::read_volatile(&raw const ffi::_say),
        )
    };
    let enabled = level <= current;
    let Some(f) = f else { return };
    if !enabled {
        return;
    }
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: a printf-style call with the format "%s" and one valid
    // NUL-terminated string argument; the file name is a static C string.
    unsafe {
        f(
            level,
            c"shoal_expirer".as_ptr(),
            0,
            ptr::null(),
            c"shoal_expirer: %s".as_ptr(),
            msg.as_ptr(),
        );
    }
}

/// Wall-clock microseconds, as `expires_us` is written.
pub(crate) fn realtime_us() -> u64 {
    // SAFETY: no arguments, reads CLOCK_REALTIME.
    let ns = unsafe { ffi::clock_realtime64() };
    ns / 1000
}

/// The id of space `name`, if there is one.
pub(crate) fn space_id(name: &str) -> Option<u32> {
    let len = u32::try_from(name.len()).ok()?;
    // SAFETY: `name` is valid for `len` bytes; the call does not keep it.
    let id = unsafe { ffi::box_space_id_by_name(name.as_ptr().cast::<c_char>(), len) };
    (id != ffi::BOX_ID_NIL).then_some(id)
}

/// Sleeps the current fiber; `false` if it was cancelled.
pub(crate) fn sleep(seconds: f64) -> bool {
    // SAFETY: called from a fiber (the worker or a Lua caller), where
    // sleeping is allowed; the call only yields.
    unsafe {
        ffi::fiber_sleep(seconds);
        !ffi::fiber_is_cancelled()
    }
}

/// The fiber's transaction: begun by [`Txn::begin`], rolled back when
/// dropped uncommitted, so an error, an early return or a panic (caught at
/// the FFI edge) never leaves it open.
pub(crate) struct Txn {
    open: bool,
}

impl Txn {
    /// Fails (`ER_ACTIVE_TRANSACTION`) when this fiber already has a
    /// transaction open, which is then left alone.
    pub(crate) fn begin() -> Result<Txn, BoxError> {
        // SAFETY: no arguments; fails cleanly when one is open.
        if unsafe { ffi::box_txn_begin() } != 0 {
            return Err(last_error("box_txn_begin"));
        }
        Ok(Txn { open: true })
    }

    /// Commits; yields for the WAL write. Nothing borrowed from box may be
    /// used after it.
    pub(crate) fn commit(mut self) -> Result<(), BoxError> {
        self.open = false;
        // SAFETY: commits the transaction begun in `begin`.
        if unsafe { ffi::box_txn_commit() } != 0 {
            let e = last_error("box_txn_commit");
            // A failed commit has rolled back already; the rollback is
            // then a no-op, kept in case a version leaves it open.
            // SAFETY: as in `drop`.
            unsafe { ffi::box_txn_rollback() };
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if self.open {
            // SAFETY: the transaction begun in `begin` is still open (not
            // committed); rollback does not yield and keeps the error.
            unsafe { ffi::box_txn_rollback() };
        }
    }
}

/// Frees a box iterator when dropped, so no path leaks one.
struct Iter(*mut ffi::BoxIterator);

impl Drop for Iter {
    fn drop(&mut self) {
        // SAFETY: the pointer came from box_index_iterator, is non-null
        // and is freed exactly once, here.
        unsafe { ffi::box_iterator_free(self.0) }
    }
}

/// The primary index of one space, read with box iterators that never
/// outlive one `scan` (no iterator across a yield).
#[derive(Debug)]
pub(crate) struct BoxLog {
    space_id: u32,
    key: Vec<u8>,
    tuple: Vec<u8>,
}

impl BoxLog {
    pub(crate) fn new(space_id: u32) -> BoxLog {
        BoxLog {
            space_id,
            key: Vec::with_capacity(80),
            tuple: vec![0; 256],
        }
    }

    /// Deletes `batch` in one transaction; returns how many keys were
    /// still there (the others master may have deleted some first).
    pub(crate) fn delete(&mut self, batch: &KeyBatch) -> Result<u64, BoxError> {
        // Rolled back by its drop on every way out but the commit.
        let txn = Txn::begin()?;
        let mut deleted = 0;
        for key in batch.keys() {
            let mut old: *mut ffi::BoxTuple = ptr::null_mut();
            let range = key.as_ptr_range();
            // SAFETY: `key` is one complete MessagePack array; the call
            // reads [start, end) and writes the old tuple (or NULL) into
            // `old`, which box keeps referenced until the next call.
            let rc = unsafe {
                ffi::box_delete(
                    self.space_id,
                    0,
                    range.start.cast::<c_char>(),
                    range.end.cast::<c_char>(),
                    &mut old,
                )
            };
            if rc != 0 {
                // The message is read before `txn` rolls back.
                return Err(last_error("box_delete"));
            }
            deleted += u64::from(!old.is_null());
        }
        // No iterator is open here (scan frees its own) across the yield.
        txn.commit()?;
        Ok(deleted)
    }
}

impl Log for BoxLog {
    type Error = BoxError;

    fn scan(
        &mut self,
        from: Seek<'_>,
        visit: &mut dyn FnMut(mp::Row<'_>) -> Flow,
    ) -> Result<(), BoxError> {
        let kind = match from {
            Seek::First => {
                mp::key_empty(&mut self.key);
                ffi::ITER_GE
            }
            Seek::From(node) => {
                mp::key_node(&mut self.key, node);
                ffi::ITER_GE
            }
            Seek::After(node) => {
                mp::key_node(&mut self.key, node);
                ffi::ITER_GT
            }
        };
        let range = self.key.as_ptr_range();
        // SAFETY: the key is a complete MessagePack array in [start, end),
        // copied by the call.
        let it = unsafe {
            ffi::box_index_iterator(
                self.space_id,
                0,
                kind,
                range.start.cast::<c_char>(),
                range.end.cast::<c_char>(),
            )
        };
        if it.is_null() {
            return Err(last_error("box_index_iterator"));
        }
        let it = Iter(it);
        loop {
            let mut t: *mut ffi::BoxTuple = ptr::null_mut();
            // SAFETY: `it` is a live iterator (freed only by `Iter`'s drop
            // at the end of this function); memtx iteration never yields.
            if unsafe { ffi::box_iterator_next(it.0, &mut t) } != 0 {
                return Err(last_error("box_iterator_next"));
            }
            if t.is_null() {
                return Ok(());
            }
            let n = loop {
                // SAFETY: `t` is the tuple just returned, valid until the
                // next box call; the call writes at most `len` bytes into
                // our buffer and returns the tuple's full size.
                let n = unsafe {
                    ffi::box_tuple_to_buf(
                        t,
                        self.tuple.as_mut_ptr().cast::<c_char>(),
                        self.tuple.len(),
                    )
                };
                let Ok(n) = usize::try_from(n) else {
                    return Err(last_error("box_tuple_to_buf"));
                };
                if n <= self.tuple.len() {
                    break n;
                }
                self.tuple.resize(n, 0);
            };
            let Some(row) = mp::parse_row(&self.tuple[..n]) else {
                return Err(BoxError(
                    "a tuple whose key is not {string, unsigned, unsigned}".to_string(),
                ));
            };
            if visit(row) == Flow::Stop {
                return Ok(());
            }
        }
    }
}

/// The worker fiber, joinable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FiberHandle(*mut ffi::Fiber);

impl FiberHandle {
    /// Creates and starts a joinable fiber running `f` (which runs at once,
    /// up to its first yield).
    pub(crate) fn spawn(name: &CStr, f: ffi::FiberFunc) -> Result<FiberHandle, BoxError> {
        // SAFETY: `name` is NUL-terminated and copied; `f` has the ABI of
        // fiber_func and ignores its argument.
        let fiber = unsafe { ffi::fiber_new(name.as_ptr(), f) };
        if fiber.is_null() {
            return Err(last_error("fiber_new"));
        }
        // SAFETY: `fiber` was just created and not started; fiber_start
        // is called with no extra arguments.
        unsafe {
            ffi::fiber_set_joinable(fiber, true);
            ffi::fiber_start(fiber);
        }
        Ok(FiberHandle(fiber))
    }

    /// Wakes the fiber from a `sleep` (only call when it is in one).
    pub(crate) fn wakeup(self) {
        // SAFETY: joinable fibers stay allocated until joined, so the
        // pointer is valid; waking a sleeping fiber ends its sleep early.
        unsafe { ffi::fiber_wakeup(self.0) }
    }

    /// Waits for the fiber to end and releases it. Call at most once per
    /// handle.
    pub(crate) fn join(self) -> c_int {
        // SAFETY: the fiber is joinable and joined only here, once (the
        // caller took the handle out of the shared state first).
        unsafe { ffi::fiber_join(self.0) }
    }
}
