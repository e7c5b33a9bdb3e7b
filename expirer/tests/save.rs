//! The native `shoal_save` (`shoal_expirer.shoal_save`, a stored C
//! procedure in the cdylib this package builds) in a real master pair,
//! called over IPROTO as user `shoal`, exactly as a node calls it: it
//! saves what the Lua `shoal_save` saves, refuses bad calls with a clear
//! error and nothing written, and its writes replicate.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use shoal_tarantool::statelog::{LogTuple as Tuple, TarantoolLog, SAVE_LUA, SAVE_NATIVE as NATIVE};
use shoal_tarantool::testkit::{Master, Pair};
use shoal_tarantool::{Client, ClientConfig, Error, Tarantool};

mod common;

type Row = [u64; 10];

/// The reply of a save: the Lua procedure's `n`; the C procedure's value
/// comes back as `[n]` (Tarantool 2.6 wraps each value a C procedure
/// returns in an array over IPROTO `call`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Count {
    Bare(u64),
    Wrapped((u64,)),
}

impl Count {
    fn n(&self) -> u64 {
        match self {
            Count::Bare(n) | Count::Wrapped((n,)) => *n,
        }
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    pair: Pair,
    a: Client,
    b: Client,
}

fn start(name: &str) -> Fixture {
    let cpath = common::module_cpath();
    let env = [
        ("SHOAL_TT_EXPIRER", "shoal_expirer"),
        ("LUA_CPATH", cpath.as_str()),
        ("SHOAL_TT_MEMTX_MB", "256"),
    ];
    let dir = std::env::temp_dir().join(format!("shoal-native-save-{name}-{}", std::process::id()));
    let pair = Pair::start_with(&dir, &env).expect("pair starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (a, b) = rt.block_on(async {
        let connect = |m: Master| {
            Client::new(ClientConfig::new(
                pair.addr(m).to_string(),
                "shoal",
                pair.password.clone(),
            ))
        };
        let (a, b) = (connect(Master::A), connect(Master::B));
        for c in [&a, &b] {
            assert!(c.wait_connected(Duration::from_secs(5)).await, "connected");
        }
        (a, b)
    });
    Fixture { rt, pair, a, b }
}

impl Fixture {
    fn client(&self, m: Master) -> &Client {
        match m {
            Master::A => &self.a,
            Master::B => &self.b,
        }
    }

    /// Calls `function(args...)` on master `m`: the count it returned.
    fn save<A>(&self, m: Master, function: &str, args: &A) -> Result<u64, Error>
    where
        A: serde::Serialize + Sync + ?Sized,
    {
        self.rt.block_on(async {
            self.client(m)
                .call::<_, (Count,)>(function, args)
                .await
                .map(|(n,)| n.n())
        })
    }

    /// As [`Fixture::save`], which must succeed.
    fn saved<A>(&self, m: Master, function: &str, args: &A) -> u64
    where
        A: serde::Serialize + Sync + ?Sized,
    {
        self.save(m, function, args)
            .unwrap_or_else(|e| panic!("{function} on {m:?}: {e}"))
    }

    /// Everything in `shoal_log` on master `m`, sorted.
    fn tuples(&self, m: Master) -> Vec<Tuple> {
        self.rt.block_on(async {
            let log = TarantoolLog::new(self.client(m).clone(), NATIVE, Duration::ZERO);
            let mut t = log.all_tuples().await.expect("select");
            t.sort();
            t
        })
    }

    fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}\na:\n{}\nb:\n{}",
                self.pair.log(Master::A),
                self.pair.log(Master::B)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both masters see each other as follow/follow.
    fn replication_follows(&self) -> bool {
        [Master::A, Master::B].iter().all(|&m| {
            let out = self
                .pair
                .console(
                    m,
                    "local n = 0 for _, r in pairs(box.info.replication) do \
                     if r.uuid ~= box.info.uuid and r.upstream and r.downstream \
                     and r.upstream.status == 'follow' and r.downstream.status == 'follow' \
                     then n = n + 1 end end return n",
                )
                .unwrap_or_default();
            out.contains("- 1\n")
        })
    }
}

/// `n` rows with every width of MessagePack unsigned integer among their
/// fields, 0 to `u64::MAX` (past 2^53, where a Lua number would round),
/// expiring in an hour (the expiry worker runs).
fn rows(n: u64, salt: u64) -> Vec<Row> {
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
        + 3_600_000_000;
    const WIDTHS: [u64; 8] = [
        0,
        0x7f,
        0x80,
        0xffff,
        0x1_0000,
        u32::MAX as u64,
        (1 << 53) + 1,
        u64::MAX,
    ];
    (0..n)
        .map(|i| {
            let w = |k: u64| WIDTHS[((i + k) % 8) as usize];
            [
                hour + i * 1000 + salt, // expires_us
                salt * 1_000_000 + i,   // id
                w(0),
                w(1) & 0xffff,
                w(2) & 0xff,
                w(3) & 0xffff_ffff,
                w(4),
                w(5),
                w(6),
                w(7) ^ i,
            ]
        })
        .collect()
}

/// The module's function is registered on both masters (b got it by
/// replication) and saves, row for row, what the Lua procedure saves,
/// with the same reply.
#[test]
fn native_save_writes_what_the_lua_save_writes() {
    let f = start("same");
    for m in [Master::A, Master::B] {
        let out = f
            .pair
            .console(
                m,
                &format!("return box.func['{NATIVE}'] ~= nil and box.func['{NATIVE}'].language"),
            )
            .expect("console");
        assert!(out.contains("- C\n"), "{m:?}: {out}");
    }
    let rows = rows(1000, 7);
    assert_eq!(f.saved(Master::A, SAVE_LUA, &("lua-n1", &rows)), 1000);
    assert_eq!(f.saved(Master::A, NATIVE, &("c-n1", &rows)), 1000);
    // Saved twice: replaced, same values.
    assert_eq!(f.saved(Master::A, NATIVE, &("c-n1", &rows)), 1000);
    // No rows: nothing written, 0 returned, as from Lua.
    let none: &[Row] = &[];
    assert_eq!(f.saved(Master::A, NATIVE, &("c-n1", none)), 0);
    assert_eq!(f.saved(Master::A, SAVE_LUA, &("lua-n1", none)), 0);

    let all = f.tuples(Master::A);
    assert_eq!(all.len(), 2000);
    let of =
        |node: &str| -> Vec<Row> { all.iter().filter(|t| t.0 == node).map(Tuple::row).collect() };
    let (lua, native) = (of("lua-n1"), of("c-n1"));
    assert_eq!(lua.len(), 1000);
    assert_eq!(native, lua);
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(native, sorted);
    // The longest node name a node may have.
    let long = "x".repeat(64);
    assert_eq!(f.saved(Master::A, NATIVE, &(&long, &rows[..3])), 3);
}

/// Every malformed call fails with a message saying what was wrong, and
/// writes nothing, however many good rows came before the bad one.
#[test]
fn native_save_refuses_bad_calls_and_writes_nothing() {
    let f = start("bad");
    let good: Vec<Value> = rows(999, 1).iter().map(|r| json!(r)).collect();
    let with_last = |bad: Value| {
        let mut v = good.clone();
        v.push(bad);
        Value::Array(v)
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!(["", good]), "bad node name: ''"),
        (json!(["a b", good]), "bad node name: 'a b'"),
        (json!(["n/1", good]), "bad node name: 'n/1'"),
        (json!(["x".repeat(65), good]), "bad node name: 'xxxx"),
        (json!([7, good]), "bad node name: an unsigned integer"),
        (json!([null, good]), "bad node name: nil"),
        (
            json!(["n1", with_last(json!([1, 2, 3, 4, 5, 6, 7, 8, 9]))]),
            "row 1000 has 9 fields, not 10",
        ),
        (
            json!(["n1", with_last(json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]))]),
            "row 1000 has 11 fields, not 10",
        ),
        (
            json!(["n1", with_last(json!([1, 2, 3, 4, -5, 6, 7, 8, 9, 10]))]),
            "row 1000: op is a negative integer, not an unsigned integer",
        ),
        (
            json!(["n1", with_last(json!([1, 2, 3, 4, 5, 6, 7, 8, 9, "10"]))]),
            "row 1000: f3 is a string, not an unsigned integer",
        ),
        (
            json!(["n1", with_last(json!([1.5, 2, 3, 4, 5, 6, 7, 8, 9, 10]))]),
            "row 1000: expires_us is a float, not an unsigned integer",
        ),
        (
            json!(["n1", with_last(json!([1, null, 3, 4, 5, 6, 7, 8, 9, 10]))]),
            "row 1000: id is nil, not an unsigned integer",
        ),
        (
            json!(["n1", with_last(json!({"a": 1}))]),
            "row 1000 is a map, not an array of 10 unsigned integers",
        ),
        (
            json!(["n1", with_last(json!(5))]),
            "row 1000 is an unsigned integer, not an array",
        ),
        (
            json!(["n1", "rows"]),
            "rows must be an array of rows, not a string",
        ),
        (
            json!(["n1", {"1": [1]}]),
            "rows must be an array of rows, not a map",
        ),
        (json!(["n1"]), "expected 2 arguments (node, rows), got 1"),
        (
            json!(["n1", good, 3]),
            "expected 2 arguments (node, rows), got 3",
        ),
    ];
    for (args, want) in &cases {
        let args = args.as_array().expect("an argument list");
        match f.save(Master::A, NATIVE, args) {
            Err(Error::Server { code, message }) => {
                // ER_PROC_C
                assert_eq!(code, 102, "{message}");
                assert!(
                    message.starts_with("shoal_save: ") && message.contains(want),
                    "wanted {want:?}, got {message:?}"
                );
            }
            other => panic!("wanted the error {want:?}, got {other:?}"),
        }
    }
    assert_eq!(f.tuples(Master::A), vec![]);
    // The refused calls left no transaction behind: a good call works.
    assert_eq!(f.saved(Master::A, NATIVE, &("n1", rows(10, 2))), 10);
    f.wait("b has the good rows", || f.tuples(Master::B).len() == 10);
    assert_eq!(f.tuples(Master::A), f.tuples(Master::B));
}

/// Rows saved natively on either master reach the other; replication
/// stays follow/follow.
#[test]
fn native_saves_replicate_both_ways() {
    let f = start("repl");
    let (ra, rb) = (rows(1000, 3), rows(1000, 4));
    assert_eq!(f.saved(Master::A, NATIVE, &("c1-n1", &ra)), 1000);
    assert_eq!(f.saved(Master::B, NATIVE, &("c1-n2", &rb)), 1000);
    f.wait("both masters hold both batches", || {
        f.tuples(Master::A).len() == 2000 && f.tuples(Master::B).len() == 2000
    });
    let a = f.tuples(Master::A);
    assert_eq!(a, f.tuples(Master::B));
    let mut want: Vec<Tuple> = ra
        .iter()
        .map(|r| ("c1-n1", r))
        .chain(rb.iter().map(|r| ("c1-n2", r)))
        .map(|(n, r)| {
            Tuple(
                n.to_string(),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
            )
        })
        .collect();
    want.sort();
    assert_eq!(a, want);
    f.wait("replication follows", || f.replication_follows());
}

/// How the reply of each save procedure is wrapped over IPROTO `call`, per
/// version (the node's `SaveReply` accepts both): the Lua procedure's `n`
/// comes back as `[n]` everywhere; the C procedure's (`box_return_mp`) as
/// `[[n]]` on 2.x and `[n]` on 3.x, which dropped the extra array.
#[test]
fn reply_wrapping_by_version() {
    let v = shoal_tarantool::testkit::tarantool_version().expect("version");
    let f = start("wrap");
    let raw = |function: &str, node: &str| -> Value {
        f.rt.block_on(f.a.call::<_, Value>(function, &(node, rows(2, 3))))
            .expect("save")
    };
    assert_eq!(raw("shoal_save", "lua-w"), json!([2]), "Lua on {v}");
    let want = if v.major >= 3 {
        json!([2])
    } else {
        json!([[2]])
    };
    assert_eq!(raw(NATIVE, "c-w"), want, "C procedure on {v}");
    println!("{v}: Lua shoal_save -> [2], native -> {want}");
}
