//! `shoal_save` as a stored C procedure: Tarantool calls it as function
//! `shoal_expirer.shoal_save` (registered by `shoal_store.lua` when the
//! module is configured) with the IPROTO call's arguments as they came,
//! `[node, rows]` in MessagePack. No Lua table is made per row: each
//! tuple is the node name followed by the row's own bytes.
//!
//! All of the arguments are checked first (`mp::parse_save`); a bad call
//! writes nothing and fails with a message naming the row and field. Then
//! one transaction of `box_replace`s, as the Lua procedure does, and the
//! row count is returned as a single unsigned integer (the same reply as
//! the Lua `return #rows`).

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::ffi::{self, BoxFunctionCtx};
use crate::mp;
use crate::tt::Txn;

const SPACE: &str = "shoal_log";

/// Why a call failed.
enum Failure {
    /// Tarantool set the error (a box call failed): passed on as it is.
    Box,
    /// Ours, set with `ER_PROC_C`.
    Refused(String),
}

/// Sets the fiber's error to `shoal_save: msg`.
fn set_error(msg: &str) {
    let msg = CString::new(format!("shoal_save: {msg}").replace('\0', " ")).unwrap_or_default();
    // SAFETY: a printf-style call with the format "%s" and one valid
    // NUL-terminated argument; the file name is a static C string. The
    // message is copied into the error.
    unsafe {
        ffi::box_error_set(
            c"shoal_save".as_ptr(),
            line!(),
            ffi::ER_PROC_C,
            c"%s".as_ptr(),
            msg.as_ptr(),
        );
    }
}

/// Whether the fiber has an error set.
fn error_is_set() -> bool {
    // SAFETY: no arguments; returns NULL or the fiber's current error.
    !unsafe { ffi::box_error_last() }.is_null()
}

/// Checks, writes, returns the count.
fn save(ctx: *mut BoxFunctionCtx, args: &[u8]) -> Result<(), Failure> {
    let call = mp::parse_save(args).map_err(Failure::Refused)?;
    let count = call.rows.len() as u64;
    if !call.rows.is_empty() {
        let len = u32::try_from(SPACE.len()).unwrap_or(0);
        // SAFETY: the name is valid for `len` bytes and not kept.
        let space = unsafe { ffi::box_space_id_by_name(SPACE.as_ptr().cast::<c_char>(), len) };
        if space == ffi::BOX_ID_NIL {
            return Err(if error_is_set() {
                Failure::Box
            } else {
                Failure::Refused(format!("no space {SPACE}"))
            });
        }
        let mut tuple = Vec::with_capacity(mp::TUPLE_MAX);
        mp::tuple_head(&mut tuple, call.node);
        let head = tuple.len();
        // Rolled back by its drop on every way out but the commit.
        let txn = Txn::begin().map_err(|_| Failure::Box)?;
        for row in &call.rows {
            tuple.truncate(head);
            tuple.extend_from_slice(row);
            let range = tuple.as_ptr_range();
            // SAFETY: `tuple` is one complete MessagePack array of 11
            // fields in [start, end), copied by box; the result is not
            // asked for. memtx replaces do not yield, so `args` (the
            // request, alive for the whole call) and `tuple` stay put.
            let rc = unsafe {
                ffi::box_replace(
                    space,
                    range.start.cast::<c_char>(),
                    range.end.cast::<c_char>(),
                    ptr::null_mut(),
                )
            };
            if rc != 0 {
                return Err(Failure::Box); // `txn` rolls back
            }
        }
        txn.commit().map_err(|_| Failure::Box)?;
    }
    let mut out = Vec::with_capacity(9);
    mp::encode_uint(&mut out, count);
    let range = out.as_ptr_range();
    // SAFETY: `ctx` is this call's context; the value is one complete
    // MessagePack object, copied by the call.
    let rc = unsafe {
        ffi::box_return_mp(
            ctx,
            range.start.cast::<c_char>(),
            range.end.cast::<c_char>(),
        )
    };
    if rc != 0 {
        return Err(Failure::Box);
    }
    Ok(())
}

/// `shoal_save(node, rows)` -> the number of rows saved, in one
/// transaction; see `shoal_store.lua` for the Lua procedure it stands in
/// for. Errors: `ER_PROC_C` "shoal_save: ..." for bad arguments (nothing
/// written), or the box error of a failed replace or commit (rolled back).
///
/// # Safety
///
/// Called by Tarantool as a stored C procedure: `ctx` is the call's
/// `box_function_ctx_t` and `[args, args_end)` its arguments, checked MessagePack.
#[no_mangle]
pub unsafe extern "C" fn shoal_save(
    ctx: *mut c_void,
    args: *const c_char,
    args_end: *const c_char,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let len = (args_end as usize).saturating_sub(args as usize);
        let args: &[u8] = if args.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: Tarantool passes the call's arguments as one buffer
            // [args, args_end), alive and unchanged for the whole call.
            unsafe { std::slice::from_raw_parts(args.cast::<u8>(), len) }
        };
        save(ctx.cast::<BoxFunctionCtx>(), args)
    }));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(Failure::Box)) => {
            if !error_is_set() {
                set_error("a box call failed without an error");
            }
            -1
        }
        Ok(Err(Failure::Refused(msg))) => {
            set_error(&msg);
            -1
        }
        Err(_) => {
            set_error("internal error");
            -1
        }
    }
}
