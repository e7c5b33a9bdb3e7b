//! The background fiber and its shared state.
//!
//! Everything runs on Tarantool's tx thread (Lua calls and fibers alike),
//! so the state is a thread-local of `Cell`s: no lock, no `static mut`, and
//! no borrow held across a yield.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::ffi;
use crate::tt::{self, BoxLog, FiberHandle};
use crate::walk::{oldest_front, KeyBatch, Walk};

/// Ranges `stats()` looks at for the lag (a cluster has ~16 nodes).
const LAG_RANGES: usize = 4096;

/// Settings of a running worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) space_id: u32,
    pub(crate) batch: usize,
    pub(crate) idle_s: f64,
}

/// The counters `stats()` returns.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) deleted: u64,
    pub(crate) scanned: u64,
    pub(crate) batches: u64,
    pub(crate) errors: u64,
    pub(crate) lag_ms: u64,
    pub(crate) running: bool,
}

struct Shared {
    fiber: Cell<Option<FiberHandle>>,
    config: Cell<Option<Config>>,
    running: Cell<bool>,
    stop: Cell<bool>,
    stopping: Cell<bool>,
    sleeping: Cell<bool>,
    deleted: Cell<u64>,
    scanned: Cell<u64>,
    batches: Cell<u64>,
    errors: Cell<u64>,
}

thread_local! {
    static SHARED: Shared = const {
        Shared {
            fiber: Cell::new(None),
            config: Cell::new(None),
            running: Cell::new(false),
            stop: Cell::new(false),
            stopping: Cell::new(false),
            sleeping: Cell::new(false),
            deleted: Cell::new(0),
            scanned: Cell::new(0),
            batches: Cell::new(0),
            errors: Cell::new(0),
        }
    };
}

fn with<R>(f: impl FnOnce(&Shared) -> R) -> R {
    SHARED.with(f)
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// Starts the worker on `space` (by name). Fails if it runs already or the
/// space does not exist.
pub(crate) fn start(space: &str, batch: usize, idle_ms: f64) -> Result<(), String> {
    if with(|s| s.stopping.get()) {
        return Err("shoal_expirer is stopping".to_string());
    }
    if with(|s| s.running.get()) {
        return Err("shoal_expirer is already running".to_string());
    }
    // A worker that ended by itself (cancelled, or a panic) is reaped.
    if let Some(old) = with(|s| s.fiber.take()) {
        old.join();
    }
    let space_id = tt::space_id(space).ok_or_else(|| format!("no space named {space:?}"))?;
    let config = Config {
        space_id,
        batch: batch.max(1),
        idle_s: idle_ms.max(0.0) / 1000.0,
    };
    with(|s| {
        s.config.set(Some(config));
        s.stop.set(false);
        s.running.set(true);
    });
    match FiberHandle::spawn(c"shoal_expirer", worker_main) {
        Ok(f) => {
            with(|s| s.fiber.set(Some(f)));
            tt::say(
                ffi::S_INFO,
                &format!(
                    "started on space {space} (batch {}, idle {} ms)",
                    config.batch, idle_ms
                ),
            );
            Ok(())
        }
        Err(e) => {
            with(|s| s.running.set(false));
            Err(e.to_string())
        }
    }
}

/// Stops the worker and waits for its fiber to end (yields). `false` if
/// none was started.
pub(crate) fn stop() -> bool {
    let Some(fiber) = with(|s| s.fiber.take()) else {
        return false;
    };
    with(|s| {
        s.stopping.set(true);
        s.stop.set(true);
        if s.sleeping.get() {
            fiber.wakeup();
        }
    });
    fiber.join();
    with(|s| {
        s.stopping.set(false);
        s.stop.set(false);
        s.running.set(false);
    });
    tt::say(ffi::S_INFO, "stopped");
    true
}

/// The counters, and the lag read from the fronts of the ranges now.
pub(crate) fn stats() -> Stats {
    let mut st = with(|s| Stats {
        deleted: s.deleted.get(),
        scanned: s.scanned.get(),
        batches: s.batches.get(),
        errors: s.errors.get(),
        lag_ms: 0,
        running: s.running.get(),
    });
    if let Some(config) = with(|s| s.config.get()) {
        let now = tt::realtime_us();
        match oldest_front(&mut BoxLog::new(config.space_id), LAG_RANGES) {
            Ok(Some(oldest)) if oldest < now => st.lag_ms = (now - oldest) / 1000,
            Ok(_) => {}
            Err(e) => tt::say(ffi::S_WARN, &format!("stats: {e}")),
        }
    }
    st
}

fn should_stop() -> bool {
    // SAFETY: reads the current fiber's cancel flag; no arguments.
    with(|s| s.stop.get()) || unsafe { ffi::fiber_is_cancelled() }
}

fn sleep(seconds: f64) -> bool {
    with(|s| s.sleeping.set(true));
    let alive = tt::sleep(seconds);
    with(|s| s.sleeping.set(false));
    alive && !should_stop()
}

fn failed(what: &str, e: &tt::BoxError) {
    let n = with(|s| {
        add(&s.errors, 1);
        s.errors.get()
    });
    // The first few, then one in a thousand: an error that repeats every
    // idle interval must not flood the log.
    if n <= 10 || n % 1000 == 0 {
        tt::say(ffi::S_ERROR, &format!("{what}: {e} (errors so far: {n})"));
    }
}

/// One worker's life: passes over the index until told to stop.
fn run(config: Config) {
    let mut log = BoxLog::new(config.space_id);
    let mut walk = Walk::new();
    let mut batch = KeyBatch::with_capacity(config.batch);
    loop {
        if should_stop() {
            return;
        }
        walk.restart();
        while !walk.is_done() {
            let now = tt::realtime_us();
            match walk.collect(&mut log, now, config.batch, &mut batch) {
                Ok(n) => with(|s| add(&s.scanned, n)),
                Err(e) => {
                    failed("scan", &e);
                    break;
                }
            }
            if !batch.is_empty() {
                match log.delete(&batch) {
                    Ok(n) => with(|s| {
                        add(&s.deleted, n);
                        add(&s.batches, 1);
                    }),
                    Err(e) => {
                        failed("delete", &e);
                        break;
                    }
                }
            }
            // Between batches: let every other fiber run, then position
            // again by key (the walk holds no iterator).
            if !walk.is_done() && !sleep(0.0) {
                return;
            }
        }
        // Nothing more expired (or an error): wait.
        if !sleep(config.idle_s) {
            return;
        }
    }
}

/// The fiber's entry point (`fiber_func`).
pub(crate) extern "C" fn worker_main(_args: *mut c_void) -> c_int {
    let rc = match with(|s| s.config.get()) {
        Some(config) => match catch_unwind(AssertUnwindSafe(|| run(config))) {
            Ok(()) => 0,
            Err(_) => {
                tt::say(ffi::S_ERROR, "worker panicked; stopped");
                -1
            }
        },
        None => -1,
    };
    with(|s| {
        s.running.set(false);
        s.sleeping.set(false);
    });
    rc
}
