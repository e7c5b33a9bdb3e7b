//! The module's hand-written FFI (`src/ffi.rs`) against the `module.h` of
//! the Tarantool under test (`SHOAL_TARANTOOL`, Debian's 2.6 by default; its
//! headers from `testkit::tarantool_include_dir`). The declarations are not
//! generated from a header, so this is where a version whose ABI differs
//! would show: a C file includes that version's `module.h`, `lua.h` and
//! `lauxlib.h`, declares every symbol again with the types `ffi.rs`
//! assumes (a conflicting redeclaration is a compile error) and asserts
//! every constant `ffi.rs` hard-codes. Every symbol and constant of
//! `ffi.rs` must have its C twin here, so a new one cannot slip past.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use shoal_tarantool::testkit;

/// Each symbol of `ffi.rs`'s `extern "C"` block as `module.h` or the Lua
/// headers declare it, with the types the Rust side passes.
const C_DECLS: &[(&str, &str)] = &[
    ("_say", "extern sayfunc_t _say;"),
    ("log_level", "extern int log_level;"),
    ("fiber_new", "struct fiber *fiber_new(const char *name, fiber_func f);"),
    ("fiber_start", "void fiber_start(struct fiber *callee, ...);"),
    ("fiber_set_joinable", "void fiber_set_joinable(struct fiber *fiber, bool yesno);"),
    ("fiber_join", "int fiber_join(struct fiber *f);"),
    ("fiber_wakeup", "void fiber_wakeup(struct fiber *f);"),
    ("fiber_sleep", "void fiber_sleep(double s);"),
    ("fiber_is_cancelled", "bool fiber_is_cancelled(void);"),
    // uint64_t in 2.6, int64_t from 2.11 on: the same register and bits for
    // a time since 1970 in ns (< 2^63); ffi.rs reads it as u64.
    (
        "clock_realtime64",
        "_Static_assert(__builtin_types_compatible_p(__typeof__(&clock_realtime64), uint64_t (*)(void)) \
         || __builtin_types_compatible_p(__typeof__(&clock_realtime64), int64_t (*)(void)), \
         \"clock_realtime64 is a 64-bit integer of no arguments\");",
    ),
    ("box_error_last", "box_error_t *box_error_last(void);"),
    ("box_error_message", "const char *box_error_message(const box_error_t *error);"),
    (
        "box_error_set",
        "int box_error_set(const char *file, unsigned line, uint32_t code, const char *format, ...);",
    ),
    (
        "box_return_mp",
        "int box_return_mp(box_function_ctx_t *ctx, const char *mp, const char *mp_end);",
    ),
    (
        "box_replace",
        "int box_replace(uint32_t space_id, const char *tuple, const char *tuple_end, box_tuple_t **result);",
    ),
    ("box_space_id_by_name", "uint32_t box_space_id_by_name(const char *name, uint32_t len);"),
    (
        "box_index_iterator",
        "box_iterator_t *box_index_iterator(uint32_t space_id, uint32_t index_id, int type, const char *key, const char *key_end);",
    ),
    ("box_iterator_next", "int box_iterator_next(box_iterator_t *iterator, box_tuple_t **result);"),
    ("box_iterator_free", "void box_iterator_free(box_iterator_t *iterator);"),
    ("box_tuple_to_buf", "ssize_t box_tuple_to_buf(box_tuple_t *tuple, char *buf, size_t size);"),
    ("box_txn_begin", "int box_txn_begin(void);"),
    ("box_txn_commit", "int box_txn_commit(void);"),
    ("box_txn_rollback", "int box_txn_rollback(void);"),
    (
        "box_delete",
        "int box_delete(uint32_t space_id, uint32_t index_id, const char *key, const char *key_end, box_tuple_t **result);",
    ),
    ("lua_pushcclosure", "LUA_API void lua_pushcclosure(lua_State *L, lua_CFunction fn, int n);"),
    ("lua_pushnumber", "LUA_API void lua_pushnumber(lua_State *L, lua_Number n);"),
    ("lua_pushboolean", "LUA_API void lua_pushboolean(lua_State *L, int b);"),
    ("lua_pushnil", "LUA_API void lua_pushnil(lua_State *L);"),
    ("lua_pushlstring", "LUA_API void lua_pushlstring(lua_State *L, const char *s, size_t l);"),
    ("lua_type", "LUA_API int lua_type(lua_State *L, int idx);"),
    ("lua_tonumber", "LUA_API lua_Number lua_tonumber(lua_State *L, int idx);"),
    ("lua_tolstring", "LUA_API const char *lua_tolstring(lua_State *L, int idx, size_t *len);"),
    (
        "luaL_loadbuffer",
        "LUALIB_API int luaL_loadbuffer(lua_State *L, const char *buff, size_t sz, const char *name);",
    ),
    ("lua_pcall", "LUA_API int lua_pcall(lua_State *L, int nargs, int nresults, int errfunc);"),
];

/// What the Rust types stand for, checked in C: `lua_Number` is the
/// `c_double` the Rust side passes, `fiber_func` takes a `va_list` that the
/// Rust side receives as one pointer, `sayfunc_t` is the variadic function
/// pointer type `SayFunc`.
const C_TYPE_CHECKS: &str = r#"
_Static_assert(sizeof(lua_Number) == sizeof(double) && (lua_Number)0.5 == 0.5, "lua_Number is double");
_Static_assert(sizeof(va_list) == 24 || sizeof(va_list) == sizeof(void *), "va_list passed as a pointer");
typedef void (*shoal_sayfunc)(int, const char *, int, const char *, const char *, ...);
static shoal_sayfunc shoal_say_check __attribute__((unused)) = (sayfunc_t)0;
"#;

fn ffi_source() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs");
    std::fs::read_to_string(&p).expect("src/ffi.rs")
}

/// Names declared in `ffi.rs`'s `extern "C"` block.
fn rust_symbols(src: &str) -> BTreeSet<String> {
    let start = src.find("extern \"C\" {").expect("an extern block");
    let block = &src[start..];
    let end = block.find("\n}").expect("end of the extern block");
    let mut names = BTreeSet::new();
    for line in block[..end].lines() {
        let line = line.trim();
        for prefix in ["pub(crate) fn ", "pub(crate) static "] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let rest = rest.strip_prefix("mut ").unwrap_or(rest);
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// `(NAME, value)` of every `pub(crate) const NAME: T = value;` in `ffi.rs`.
fn rust_consts(src: &str) -> Vec<(String, String)> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub(crate) const "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(':')?;
            let value = rest.split_once('=')?.1.trim().trim_end_matches(';');
            Some((name.trim().to_string(), value.replace('_', "")))
        })
        .collect()
}

#[test]
fn every_ffi_symbol_has_a_c_twin() {
    let src = ffi_source();
    let rust = rust_symbols(&src);
    let c: BTreeSet<String> = C_DECLS.iter().map(|(n, _)| n.to_string()).collect();
    assert!(
        rust.len() > 20,
        "parsed too few symbols from ffi.rs: {rust:?}"
    );
    assert_eq!(rust, c, "ffi.rs and this test's C declarations differ");
    assert!(rust_consts(&src).len() >= 9, "{:?}", rust_consts(&src));
}

#[test]
fn ffi_matches_module_h_of_the_tarantool_under_test() {
    let version = testkit::tarantool_version().map_or_else(|e| e.to_string(), |v| v.to_string());
    let Some(inc) = testkit::tarantool_include_dir() else {
        println!(
            "SKIPPED: no module.h for {} ({version}); set SHOAL_TARANTOOL_INCLUDE or install tarantool-dev",
            testkit::tarantool_bin().display()
        );
        return;
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = ffi_source();
    let mut c = String::from(
        "#include <stdarg.h>\n#include <stdbool.h>\n#include <stdint.h>\n#include <sys/types.h>\n\
         #include \"module.h\"\n#include \"lua.h\"\n#include \"lauxlib.h\"\n",
    );
    for (_, decl) in C_DECLS {
        c.push_str(decl);
        c.push('\n');
    }
    c.push_str(C_TYPE_CHECKS);
    for (name, value) in rust_consts(&src) {
        c.push_str(&format!(
            "_Static_assert({name} == {value}, \"{name} is {value} in ffi.rs\");\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("shoal-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("abi.c");
    std::fs::write(&file, &c).expect("write abi.c");
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-fsyntax-only", "-Werror", "-I"])
        .arg(&inc)
        .arg(&file)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("SKIPPED: no C compiler ({cc}: {e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "ffi.rs disagrees with {}/module.h ({version}):\n{}\n--- abi.c\n{c}",
        inc.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("ffi.rs matches {}/module.h ({version})", inc.display());
}
