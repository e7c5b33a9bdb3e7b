//! The Lua entry point. `require('shoal_expirer')` calls
//! `luaopen_shoal_expirer`, which runs `shoal_expirer.lua` (embedded) with
//! three raw C functions as arguments; that chunk checks arguments, raises
//! the errors and builds the `stats()` table, so no function here ever
//! raises a Lua error (a LuaJIT error unwinding through Rust frames would
//! abort). Every body runs under `catch_unwind`.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::ffi::{self, LuaState};
use crate::worker;

const CHUNK: &str = include_str!("shoal_expirer.lua");

/// Pushes a Lua string.
///
/// SAFETY (callers): `l` is the live state of the current C call, which
/// has at least `LUA_MINSTACK` (20) free slots.
unsafe fn push_str(l: *mut LuaState, s: &str) {
    // SAFETY: see above; the bytes are copied by Lua.
    unsafe { ffi::lua_pushlstring(l, s.as_ptr().cast::<c_char>(), s.len()) }
}

/// `raw_start(space, batch, idle_ms)` -> `true` | `nil, message`.
extern "C" fn raw_start(l: *mut LuaState) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `l` is the state of this call; lua_type, lua_tolstring on
        // a string argument and lua_tonumber never raise. The string's
        // bytes stay valid while it is on the stack (the whole call).
        let (space, batch, idle_ms) = unsafe {
            if ffi::lua_type(l, 1) != ffi::LUA_TSTRING
                || ffi::lua_type(l, 2) != ffi::LUA_TNUMBER
                || ffi::lua_type(l, 3) != ffi::LUA_TNUMBER
            {
                return Err("raw_start(space, batch, idle_ms)".to_string());
            }
            let mut len = 0usize;
            let p = ffi::lua_tolstring(l, 1, &mut len);
            let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len);
            (
                String::from_utf8_lossy(bytes).into_owned(),
                ffi::lua_tonumber(l, 2),
                ffi::lua_tonumber(l, 3),
            )
        };
        // The Lua side checked the range; `as` saturates anyway.
        worker::start(&space, batch as usize, idle_ms)
    }));
    let result = result.unwrap_or_else(|_| Err("shoal_expirer: internal error".to_string()));
    // SAFETY: `l` is the state of this call, with room for two values.
    unsafe {
        match result {
            Ok(()) => {
                ffi::lua_pushboolean(l, 1);
                1
            }
            Err(msg) => {
                ffi::lua_pushnil(l);
                push_str(l, &msg);
                2
            }
        }
    }
}

/// `raw_stop()` -> whether a worker was stopped. Yields until it ends.
extern "C" fn raw_stop(l: *mut LuaState) -> c_int {
    let stopped = catch_unwind(worker::stop).unwrap_or(false);
    // SAFETY: `l` is the state of this call.
    unsafe { ffi::lua_pushboolean(l, c_int::from(stopped)) };
    1
}

/// `raw_stats()` -> deleted, scanned, batches, lag_ms, running, errors.
extern "C" fn raw_stats(l: *mut LuaState) -> c_int {
    let s = catch_unwind(worker::stats).unwrap_or_default();
    // SAFETY: `l` is the state of this call, with room for six values;
    // pushing numbers and booleans never raises. Counters are exact in a
    // Lua number up to 2^53.
    unsafe {
        ffi::lua_pushnumber(l, s.deleted as f64);
        ffi::lua_pushnumber(l, s.scanned as f64);
        ffi::lua_pushnumber(l, s.batches as f64);
        ffi::lua_pushnumber(l, s.lag_ms as f64);
        ffi::lua_pushboolean(l, c_int::from(s.running));
        ffi::lua_pushnumber(l, s.errors as f64);
    }
    6
}

/// `require('shoal_expirer')`: returns the module table (see
/// `shoal_expirer.lua`), or raises the chunk's error so that `require`
/// fails with it (a module that is a string would load "successfully").
///
/// # Safety
///
/// Called by Lua's `require` with a live `lua_State`.
#[no_mangle]
pub unsafe extern "C-unwind" fn luaopen_shoal_expirer(l: *mut c_void) -> c_int {
    let l = l.cast::<LuaState>();
    // SAFETY: `l` is the live state of this call. luaL_loadbuffer and
    // lua_pcall are protected (they return a status, never raise); the
    // pushes can only raise on out-of-memory, where LuaJIT gives up anyway.
    let status = unsafe {
        match ffi::luaL_loadbuffer(
            l,
            CHUNK.as_ptr().cast::<c_char>(),
            CHUNK.len(),
            c"=shoal_expirer".as_ptr(),
        ) {
            0 => {
                ffi::lua_pushcclosure(l, raw_start, 0);
                ffi::lua_pushcclosure(l, raw_stop, 0);
                ffi::lua_pushcclosure(l, raw_stats, 0);
                ffi::lua_pcall(l, 3, 1, 0)
            }
            failed => failed,
        }
    };
    if status != 0 {
        // SAFETY: the error message is on top of the stack. This frame is
        // "C-unwind" and holds nothing to drop, so LuaJIT's unwinding may
        // pass through it to `require`'s caller; nothing runs after it.
        return unsafe { ffi::lua_error(l) };
    }
    1
}
