//! Hand-written declarations of the few Tarantool 2.6 symbols the module
//! uses (`/usr/include/tarantool/module.h`) and of the LuaJIT C API the
//! `tarantool` executable exports. They resolve when Tarantool loads the
//! shared object; nothing here is linked at build time.

use std::ffi::{c_char, c_double, c_int, c_uint, c_void};

// `FiberFunc` below receives the `va_list` of `fiber_start` as one pointer
// argument, which it never reads. That holds where `va_list` is an array
// type passed as a pointer (x86-64 System V: `__va_list_tag[1]`) or a
// struct larger than 16 bytes passed by reference (AArch64 AAPCS64: the
// 32-byte `__va_list`). Other targets are unchecked: refuse to build there
// rather than guess.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "shoal-expirer passes fiber_start's va_list as a pointer: checked only on x86_64 and aarch64 Linux"
);

/// `struct fiber`, `box_iterator_t`, `box_tuple_t`, `box_error_t`,
/// `lua_State`: opaque.
#[repr(C)]
pub(crate) struct Fiber {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct BoxIterator {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct BoxTuple {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct BoxError {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct LuaState {
    _private: [u8; 0],
}
/// `box_function_ctx_t`: what Tarantool passes a stored C procedure.
#[repr(C)]
pub(crate) struct BoxFunctionCtx {
    _private: [u8; 0],
}

/// `int (*fiber_func)(va_list)`. The worker takes no arguments and never
/// reads the `va_list`; on x86-64 and AArch64 Linux it is passed as a
/// pointer (see the guard at the top of this file).
pub(crate) type FiberFunc = unsafe extern "C" fn(*mut c_void) -> c_int;
/// `sayfunc_t`.
pub(crate) type SayFunc =
    unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, *const c_char, ...);
/// `lua_CFunction`.
pub(crate) type LuaCFunction = unsafe extern "C" fn(*mut LuaState) -> c_int;

pub(crate) const ITER_GE: c_int = 5;
pub(crate) const ITER_GT: c_int = 6;
pub(crate) const BOX_ID_NIL: u32 = 2_147_483_647;
pub(crate) const S_ERROR: c_int = 2;
pub(crate) const S_WARN: c_int = 4;
pub(crate) const S_INFO: c_int = 5;
/// `ER_PROC_C` of `enum box_error_code`: message format "%s".
pub(crate) const ER_PROC_C: u32 = 102;
pub(crate) const LUA_TSTRING: c_int = 4;
pub(crate) const LUA_TNUMBER: c_int = 3;

extern "C" {
    // Both are written by Tarantool after the module is loaded
    // (`box.cfg{log_level = ...}`, the logger's set-up), so they are
    // `static mut` (an immutable static must never change) and read with
    // `ptr::read_volatile(&raw const ...)` each time, never through a
    // reference (`tt::say`).
    pub(crate) static mut _say: Option<SayFunc>;
    pub(crate) static mut log_level: c_int;

    pub(crate) fn fiber_new(name: *const c_char, f: FiberFunc) -> *mut Fiber;
    pub(crate) fn fiber_start(callee: *mut Fiber, ...);
    pub(crate) fn fiber_set_joinable(fiber: *mut Fiber, yesno: bool);
    pub(crate) fn fiber_join(fiber: *mut Fiber) -> c_int;
    pub(crate) fn fiber_wakeup(fiber: *mut Fiber);
    pub(crate) fn fiber_sleep(s: c_double);
    pub(crate) fn fiber_is_cancelled() -> bool;
    pub(crate) fn clock_realtime64() -> u64;

    pub(crate) fn box_error_last() -> *mut BoxError;
    pub(crate) fn box_error_message(error: *const BoxError) -> *const c_char;
    pub(crate) fn box_error_set(
        file: *const c_char,
        line: c_uint,
        code: u32,
        format: *const c_char,
        ...
    ) -> c_int;
    pub(crate) fn box_return_mp(
        ctx: *mut BoxFunctionCtx,
        mp: *const c_char,
        mp_end: *const c_char,
    ) -> c_int;
    pub(crate) fn box_replace(
        space_id: u32,
        tuple: *const c_char,
        tuple_end: *const c_char,
        result: *mut *mut BoxTuple,
    ) -> c_int;
    pub(crate) fn box_space_id_by_name(name: *const c_char, len: u32) -> u32;
    pub(crate) fn box_index_iterator(
        space_id: u32,
        index_id: u32,
        kind: c_int,
        key: *const c_char,
        key_end: *const c_char,
    ) -> *mut BoxIterator;
    pub(crate) fn box_iterator_next(it: *mut BoxIterator, result: *mut *mut BoxTuple) -> c_int;
    pub(crate) fn box_iterator_free(it: *mut BoxIterator);
    pub(crate) fn box_tuple_to_buf(tuple: *mut BoxTuple, buf: *mut c_char, size: usize) -> isize;
    pub(crate) fn box_txn_begin() -> c_int;
    pub(crate) fn box_txn_commit() -> c_int;
    pub(crate) fn box_txn_rollback() -> c_int;
    pub(crate) fn box_delete(
        space_id: u32,
        index_id: u32,
        key: *const c_char,
        key_end: *const c_char,
        result: *mut *mut BoxTuple,
    ) -> c_int;

    pub(crate) fn lua_pushcclosure(l: *mut LuaState, f: LuaCFunction, n: c_int);
    pub(crate) fn lua_pushnumber(l: *mut LuaState, n: c_double);
    pub(crate) fn lua_pushboolean(l: *mut LuaState, b: c_int);
    pub(crate) fn lua_pushnil(l: *mut LuaState);
    pub(crate) fn lua_pushlstring(l: *mut LuaState, s: *const c_char, len: usize);
    pub(crate) fn lua_type(l: *mut LuaState, idx: c_int) -> c_int;
    pub(crate) fn lua_tonumber(l: *mut LuaState, idx: c_int) -> c_double;
    pub(crate) fn lua_tolstring(l: *mut LuaState, idx: c_int, len: *mut usize) -> *const c_char;
    pub(crate) fn luaL_loadbuffer(
        l: *mut LuaState,
        buf: *const c_char,
        size: usize,
        name: *const c_char,
    ) -> c_int;
    pub(crate) fn lua_pcall(
        l: *mut LuaState,
        nargs: c_int,
        nresults: c_int,
        errfunc: c_int,
    ) -> c_int;
}

extern "C-unwind" {
    /// Raises the value on top of the stack as a Lua error: never returns,
    /// it unwinds (LuaJIT's own unwinder) to the nearest protected call.
    /// Only called as the last act of `luaopen_shoal_expirer`, a
    /// `"C-unwind"` frame with no value to drop.
    pub(crate) fn lua_error(l: *mut LuaState) -> c_int;
}
