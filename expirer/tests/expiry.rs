//! The expiry worker in a real master pair (`tarantool/scripts/pair.sh`),
//! loaded by `instance.lua` from `SHOAL_TT_EXPIRER=shoal_expirer` and the
//! cdylib this package builds (`target/<profile>/libshoal_expirer.so`).
//! Driven through each master's admin console (Lua in, JSON out), so the
//! tests depend on nothing but Tarantool.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use shoal_tarantool::statelog::{LOG_SPACE, SAVE_LUA};
use shoal_tarantool::testkit::{Master, Pair};

mod common;
use common::module_cpath;

fn start(name: &str, env: &[(&str, &str)]) -> Pair {
    let cpath = module_cpath();
    let mut all = vec![
        ("SHOAL_TT_EXPIRER", "shoal_expirer"),
        ("LUA_CPATH", cpath.as_str()),
        ("SHOAL_TT_MEMTX_MB", "256"),
    ];
    all.extend_from_slice(env);
    let dir = std::env::temp_dir().join(format!("shoal-expirer-{name}-{}", std::process::id()));
    Pair::start_with(&dir, &all).expect("pair starts")
}

/// Runs `body` (Lua ending in `return value`) on a master; the value comes
/// back as JSON.
fn eval(pair: &Pair, m: Master, body: &str) -> Value {
    let lua = format!("return require('json').encode((function() {body} end)())");
    let out = pair.console(m, &lua).expect("console");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("- "))
        .unwrap_or_else(|| panic!("no value in console answer {out:?}"));
    let text = match line.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
        Some(quoted) => quoted.replace("''", "'"),
        None => line.to_string(),
    };
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{m:?} answered {out:?} ({e}) to {body}\nlog:\n{}",
            pair.log(m)
        )
    })
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}")) as u64
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn stats(pair: &Pair, m: Master) -> Value {
    eval(pair, m, "return require('shoal_expirer').stats()")
}

fn len(pair: &Pair, m: Master) -> u64 {
    eval(pair, m, &format!("return box.space.{LOG_SPACE}:len()"))
        .as_u64()
        .expect("a length")
}

/// Every key of the log, as `node:expires_us:id`.
fn keys(pair: &Pair, m: Master) -> BTreeSet<String> {
    let v = eval(
        pair,
        m,
        &format!(
            "local t = {{}} for _, x in box.space.{LOG_SPACE}:pairs() do \
             t[#t + 1] = (string.format('%s:%s:%s', x[1], tostring(x[2]), tostring(x[3])) \
             :gsub('ULL', '')) end return t"
        ),
    );
    v.as_array()
        .expect("an array")
        .iter()
        .map(|k| k.as_str().expect("a key").to_string())
        .collect()
}

/// Saves rows `(expires_us, id)` of `node` on master `m` through the
/// store's own `shoal_save`.
fn save(pair: &Pair, m: Master, node: &str, rows: &[(u64, u64)]) {
    let body: Vec<String> = rows
        .iter()
        .map(|(exp, id)| format!("{{{exp}, {id}, {exp}, 1, 2, 3, 4, 5, 6, 7}}"))
        .collect();
    let n = eval(
        pair,
        m,
        &format!("return {SAVE_LUA}('{node}', {{{}}})", body.join(", ")),
    );
    assert_eq!(n.as_u64(), Some(rows.len() as u64));
}

/// Waits (up to 10 s: a master started before its peer connects to it on
/// its next retry) for both masters to see each other as follow/follow.
fn assert_replication_follows(pair: &Pair) {
    let follows = |m: Master| {
        let h = eval(pair, m, "return shoal_health()");
        let peers = h["peers"].as_array().cloned().unwrap_or_default();
        let ok = peers.len() == 1
            && peers[0]["upstream"] == "follow"
            && peers[0]["downstream"] == "follow";
        (ok, h)
    };
    let t0 = Instant::now();
    for m in [Master::A, Master::B] {
        loop {
            let (ok, h) = follows(m);
            if ok {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{m:?} replication: {h}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// (1) Several nodes, mixed TTLs, written to both masters, the worker on
/// both: expired rows go, live ones stay, both masters end with the same
/// tuples, replication still follow/follow.
#[test]
fn expires_on_both_masters_and_keeps_live_rows() {
    let pair = start("both", &[("SHOAL_TT_EXPIRER_IDLE_MS", "50")]);
    for m in [Master::A, Master::B] {
        let s = stats(&pair, m);
        assert_eq!(s["running"], true, "{m:?}: {s}");
    }
    let now = now_us();
    let soon = now + 1_500_000;
    let mut live = BTreeSet::new();
    let mut expired = 0;
    let mut id = 0;
    let nodes = [
        ("n1", Master::A),
        ("n2", Master::A),
        ("n3", Master::A),
        ("n4", Master::B),
        ("n5", Master::B),
        ("n6", Master::B),
        // A node that failed over: rows on both masters.
        ("n7", Master::A),
        ("n7", Master::B),
    ];
    for (node, m) in nodes {
        let mut rows = Vec::new();
        for i in 0..40u64 {
            id += 1;
            // Expired 1 ms .. 20 s ago, TTLs of every length.
            rows.push((now - 1_000 - i * 500_000, id));
            expired += 1;
        }
        for i in 0..10u64 {
            id += 1;
            rows.push((soon + i, id)); // expires during the test
            id += 1;
            let exp = now + 120_000_000 + i * 1_000_000; // stays
            rows.push((exp, id));
            live.insert(format!("{node}:{exp}:{id}"));
        }
        save(&pair, m, node, &rows);
    }
    let total = expired + 2 * 8 * 10;
    let live_keys: BTreeSet<String> = live;
    wait_until(
        "only live rows on both masters",
        Duration::from_secs(10),
        || {
            now_us() > soon + 10
                && [Master::A, Master::B]
                    .iter()
                    .all(|&m| keys(&pair, m) == live_keys)
        },
    );
    assert_eq!(keys(&pair, Master::A), keys(&pair, Master::B));
    assert_replication_follows(&pair);

    let (a, b) = (stats(&pair, Master::A), stats(&pair, Master::B));
    let gone = (total - live_keys.len()) as u64;
    let (da, db) = (num(&a, "deleted"), num(&b, "deleted"));
    // Each row went once on some master; a row both deleted before the
    // other's delete arrived counts on both.
    assert!(
        da + db >= gone && da <= gone && db <= gone,
        "deleted a {da} b {db} of {gone}"
    );
    for s in [&a, &b] {
        assert_eq!(num(s, "errors"), 0, "{s}");
        assert_eq!(num(s, "lag_ms"), 0, "{s}");
        assert_eq!(s["running"], true, "{s}");
    }
}

/// (2) Steady inserts with a 1 s TTL on both masters for 3 s. Bound: no
/// expired row stays in the log more than `MAX_LAG` past its expiry (the
/// worker's idle interval is 100 ms; the rest is slack for a busy
/// machine), so the log holds at most what was inserted in the last
/// TTL + `MAX_LAG`, whatever the insert rate; after inserts stop, it is
/// empty within TTL + 1 s.
#[test]
fn steady_load_stays_bounded_and_drains() {
    let pair = start("steady", &[]);
    const TTL_US: u64 = 1_000_000;
    let load = |nodes: &str| {
        format!(
            "local fiber = require('fiber') local clock = require('clock') \
             _G.load_done = false _G.load_rows = 0 \
             fiber.create(function() \
               local id = 0 local t_end = clock.time() + 3 \
               while clock.time() < t_end do \
                 local now = tonumber(clock.time64() / 1000ULL) \
                 for _, node in ipairs({{{nodes}}}) do \
                   local rows = {{}} \
                   for i = 1, 50 do id = id + 1 rows[i] = {{now + {TTL_US}, id, now, 1, 1, 0, 0, 0, 0, 0}} end \
                   {SAVE_LUA}(node, rows) _G.load_rows = _G.load_rows + 50 \
                 end \
                 fiber.sleep(0.02) \
               end \
               _G.load_done = true \
             end) return true"
        )
    };
    let t0 = Instant::now();
    eval(&pair, Master::A, &load("'a1', 'a2'"));
    eval(&pair, Master::B, &load("'b1', 'b2'"));
    const MAX_LAG: Duration = Duration::from_millis(1500);
    // Age of the oldest expired row still present, by a scan of the log.
    let lag_us = &format!(
        "local now = tonumber(require('clock').time64() / 1000ULL) \
         local oldest = nil \
         for _, t in box.space.{LOG_SPACE}:pairs() do \
           if t[2] <= now and (oldest == nil or t[2] < oldest) then oldest = t[2] end \
         end \
         return oldest and tonumber(now - oldest) or 0"
    );
    let mut peak = 0;
    let mut worst_lag = Duration::ZERO;
    loop {
        let done = [Master::A, Master::B]
            .iter()
            .all(|&m| eval(&pair, m, "return _G.load_done") == true);
        for m in [Master::A, Master::B] {
            peak = peak.max(len(&pair, m));
            let lag = eval(&pair, m, lag_us).as_u64().expect("lag");
            worst_lag = worst_lag.max(Duration::from_micros(lag));
        }
        if done {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "load did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let load_s = t0.elapsed().as_secs_f64();
    let rows: u64 = [Master::A, Master::B]
        .iter()
        .map(|&m| {
            eval(&pair, m, "return _G.load_rows")
                .as_u64()
                .expect("rows")
        })
        .sum();
    let rate = rows as f64 / load_s;
    eprintln!(
        "steady: {rows} rows in {load_s:.2} s ({rate:.0}/s), peak {peak}, oldest expired row {worst_lag:?} past its expiry"
    );
    assert!(peak > rows / 10, "the load reached the log: peak {peak}");
    assert!(
        peak < rows,
        "expiry ran during the load: peak {peak} of {rows}"
    );
    assert!(
        worst_lag <= MAX_LAG,
        "an expired row stayed {worst_lag:?} past its expiry"
    );
    let drained = wait_until("both logs empty", Duration::from_secs(10), || {
        [Master::A, Master::B].iter().all(|&m| len(&pair, m) == 0)
    });
    eprintln!("steady: empty {drained:?} after the last insert");
    assert!(
        drained <= Duration::from_micros(TTL_US) + Duration::from_secs(1),
        "drained in {drained:?}"
    );
    assert_replication_follows(&pair);
}

/// (3) The counters add up: `deleted` is what vanished, `batches` the
/// transactions at the configured size, `lag_ms` the age of the oldest
/// expired row until it is gone, then 0. Deletes replicate to a master
/// whose own worker is stopped.
#[test]
fn stats_counters_are_consistent() {
    let pair = start("stats", &[]);
    for m in [Master::A, Master::B] {
        let stopped = eval(&pair, m, "return require('shoal_expirer').stop()");
        assert_eq!(stopped, true);
        assert_eq!(stats(&pair, m)["running"], false);
    }
    let now = now_us();
    let mut id = 0;
    let mut expired = 0u64;
    for (node, n) in [("s1", 30u64), ("s2", 23)] {
        let mut rows = Vec::new();
        for i in 0..n {
            id += 1;
            rows.push((now - 30_000_000 + i * 100_000, id));
            expired += 1;
        }
        for i in 0..3 {
            id += 1;
            rows.push((now + 600_000_000 + i, id));
        }
        save(&pair, Master::A, node, &rows);
    }
    let total = expired + 6;
    wait_until("rows replicated to b", Duration::from_secs(5), || {
        len(&pair, Master::B) == total
    });
    let before = stats(&pair, Master::A);
    let lag = num(&before, "lag_ms");
    assert!(
        (29_000..40_000).contains(&lag),
        "lag before expiry {before}"
    );
    let b_before = num(&stats(&pair, Master::B), "deleted");

    eval(
        &pair,
        Master::A,
        &format!("return require('shoal_expirer').start({{space = '{LOG_SPACE}', batch = 7, idle_ms = 50}})"),
    );
    wait_until("a expired", Duration::from_secs(5), || {
        len(&pair, Master::A) == 6
    });
    let after = stats(&pair, Master::A);
    let d = |k: &str| num(&after, k) - num(&before, k);
    assert_eq!(d("deleted"), expired, "{before} -> {after}");
    assert_eq!(d("deleted"), total - len(&pair, Master::A));
    assert_eq!(d("batches"), expired.div_ceil(7), "{before} -> {after}");
    assert!(d("scanned") >= expired, "{before} -> {after}");
    assert_eq!(num(&after, "lag_ms"), 0);
    assert_eq!(num(&after, "errors"), 0);
    assert_eq!(after["running"], true);

    // Replicated deletes empty b too, its own worker idle.
    wait_until("b follows a's deletes", Duration::from_secs(5), || {
        len(&pair, Master::B) == 6
    });
    let b_after = stats(&pair, Master::B);
    assert_eq!(num(&b_after, "deleted"), b_before);
    assert_eq!(num(&b_after, "lag_ms"), 0);
    assert_eq!(keys(&pair, Master::A), keys(&pair, Master::B));
    assert_replication_follows(&pair);
}
