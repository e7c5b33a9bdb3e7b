//! The module's edges with Tarantool, each in a standalone `tarantool`
//! process of its own (no listener, no replication): a script loads the
//! cdylib this package builds, does one thing and prints one JSON line.
//!
//! - `require` fails (an error, not a string module) when the embedded
//!   chunk fails;
//! - a vinyl space is refused by `start`;
//! - a batch whose delete fails is rolled back whole and the worker goes
//!   on (no transaction left open);
//! - the log level is read at each `say`, as `box.cfg` changes it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::module_cpath;

/// How long one script may run before it is killed.
const DEADLINE: Duration = Duration::from_secs(60);

/// The script around `body`: a fresh instance in `dir`, `body` (Lua that
/// returns a table) under `pcall`, its value printed as `RESULT <json>`.
fn script(dir: &Path, body: &str) -> String {
    format!(
        r#"
local json = require('json')
local fiber = require('fiber')
local clock = require('clock')
box.cfg{{work_dir = '{dir}', log = '{dir}/tt.log', log_level = 5}}
-- Polls `f` every 10 ms for up to 10 s.
local function wait(what, f)
    local t0 = clock.monotonic()
    while not f() do
        if clock.monotonic() - t0 > 10 then error('timed out waiting for ' .. what) end
        fiber.sleep(0.01)
    end
end
local function log_space(name, engine)
    local s = box.schema.space.create(name, {{engine = engine}})
    s:create_index('pk', {{parts = {{{{1, 'string'}}, {{2, 'unsigned'}}, {{3, 'unsigned'}}}}}})
    return s
end
local ok, res = pcall(function()
{body}
end)
if not ok then res = {{lua_error = tostring(res)}} end
io.stdout:write('RESULT ' .. json.encode(res) .. '\n')
io.stdout:flush()
os.exit(0)
"#,
        dir = dir.display()
    )
}

/// Runs `body` in a fresh standalone Tarantool with the module on
/// `LUA_CPATH`; returns what it printed and the instance's directory.
fn run(name: &str, body: &str) -> (Value, PathBuf) {
    let dir = std::env::temp_dir().join(format!("shoal-expirer-ffi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    let lua = dir.join("test.lua");
    std::fs::write(&lua, script(&dir, body)).expect("script");
    let mut child = Command::new("tarantool")
        .arg(&lua)
        .env("LUA_CPATH", module_cpath())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tarantool runs (is it installed?)");
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name}: tarantool still running after {DEADLINE:?}\nlog:\n{}",
                log(&dir)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "{name}: no RESULT ({status}); stdout {out:?} stderr {err:?}\nlog:\n{}",
                log(&dir)
            )
        });
    let v: Value = serde_json::from_str(line).expect("json");
    assert!(
        v.get("lua_error").is_none(),
        "{name}: {v}\nlog:\n{}",
        log(&dir)
    );
    (v, dir)
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tt.log")).unwrap_or_default()
}

/// Before the fix `luaopen` ignored `lua_pcall`'s status and `require`
/// returned the error message as the module.
#[test]
fn require_fails_when_the_chunk_fails() {
    let (v, dir) = run(
        "require",
        r#"
    -- The chunk needs box: without it, it fails.
    local real = box
    rawset(_G, 'box', nil)
    local ok, err = pcall(require, 'shoal_expirer')
    rawset(_G, 'box', real)
    -- A failed require leaves its sentinel: clear it and load for real.
    package.loaded.shoal_expirer = nil
    local ok2, m = pcall(require, 'shoal_expirer')
    return {ok = ok, err = tostring(err), ok2 = ok2,
            start = type(m) == 'table' and type(m.start) or type(m)}
"#,
    );
    assert_eq!(v["ok"], false, "require succeeded: {v}");
    let err = v["err"].as_str().expect("message");
    assert!(err.contains("must be loaded inside Tarantool"), "{err}");
    // The process survived the error crossing the module's frame, and the
    // module loads once box is back.
    assert_eq!(v["ok2"], true, "{v}");
    assert_eq!(v["start"], "function", "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_vinyl_space_is_refused() {
    let (v, dir) = run(
        "vinyl",
        r#"
    local ex = require('shoal_expirer')
    log_space('vlog', 'vinyl')
    log_space('mlog', 'memtx')
    local ok, err = pcall(ex.start, {space = 'vlog'})
    local running = ex.stats().running
    local ok_memtx, err_memtx = pcall(ex.start, {space = 'mlog', idle_ms = 10})
    local running_memtx = ex.stats().running
    ex.stop()
    return {ok = ok, err = tostring(err), running = running,
            ok_memtx = ok_memtx, err_memtx = tostring(err_memtx),
            running_memtx = running_memtx}
"#,
    );
    assert_eq!(v["ok"], false, "vinyl accepted: {v}");
    assert_eq!(
        v["err"].as_str().map(|e| e.ends_with(
            "shoal_expirer.start: space vlog is a vinyl space: only memtx is supported"
        )),
        Some(true),
        "{v}"
    );
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["ok_memtx"], true, "{v}");
    assert_eq!(v["running_memtx"], true, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Five expired rows, one batch; deleting the third fails (a trigger
/// raises). The two deletes before it must be undone, the error counted,
/// and, once the trigger is gone, the next pass must delete everything:
/// a transaction left open would make every later `box_txn_begin` fail.
#[test]
fn a_failed_delete_rolls_the_batch_back_and_the_worker_goes_on() {
    let (v, dir) = run(
        "rollback",
        r#"
    local ex = require('shoal_expirer')
    local s = log_space('shoal_log', 'memtx')
    local now = math.floor(clock.realtime() * 1e6)
    for i = 1, 5 do s:insert({'n1', now - 10e6 + i, i}) end
    local trigger = s:on_replace(function(old, new)
        if new == nil and old[3] == 3 then error('refused by the test') end
    end)
    ex.start({space = 'shoal_log', batch = 10, idle_ms = 10})
    wait('two failed batches', function() return ex.stats().errors >= 2 end)
    local len_failing = s:len()
    local st = ex.stats()
    s:on_replace(nil, trigger)
    -- The deletes show before the commit returns (it yields for the WAL).
    wait('the log emptied', function()
        return s:len() == 0 and ex.stats().deleted == 5
    end)
    local after = ex.stats()
    ex.stop()
    return {len_failing = len_failing, deleted_failing = st.deleted,
            batches_failing = st.batches, deleted = after.deleted,
            errors = after.errors, running = after.running}
"#,
    );
    assert_eq!(v["len_failing"], 5, "a failed batch left deletes: {v}");
    assert_eq!(v["deleted_failing"], 0, "{v}");
    assert_eq!(v["batches_failing"], 0, "{v}");
    assert_eq!(v["deleted"], 5, "{v}");
    assert_eq!(v["running"], true, "{v}");
    let text = log(&dir);
    assert!(
        text.lines()
            .any(|l| l.contains("shoal_expirer: delete: box_delete: ")
                && l.contains("refused by the test")),
        "{text}"
    );
    assert!(
        !text.contains("box_txn_begin"),
        "a transaction stayed open:\n{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `log_level` changes after the module is loaded; `say` must follow it.
#[test]
fn say_follows_the_log_level_set_at_run_time() {
    let (_, dir) = run(
        "loglevel",
        r#"
    local ex = require('shoal_expirer')
    log_space('shoal_log', 'memtx')
    box.cfg{log_level = 2}   -- errors only: the INFO line of start is not written
    ex.start({space = 'shoal_log', idle_ms = 10})
    box.cfg{log_level = 5}   -- info again: the one of stop is
    ex.stop()
    return {}
"#,
    );
    let text = log(&dir);
    assert!(!text.contains("shoal_expirer: started on space"), "{text}");
    assert!(text.contains("shoal_expirer: stopped"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
