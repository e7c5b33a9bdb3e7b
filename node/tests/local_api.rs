//! Keeps `docs/local-api.md` honest: its hex vectors are what the record
//! codec produces for the values the document states, and a live `shoal`
//! node answers the documented query bytes with a reply laid out as the
//! document's reply vector.

use std::path::Path;
use std::time::Duration;

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_wire::{hex_vectors, Code, Op, Record, RECORD_LEN};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/local-api.md");

fn vectors() -> std::collections::BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(DOC).expect("docs/local-api.md");
    hex_vectors(&text).unwrap_or_else(|e| panic!("local-api.md: {e}"))
}

fn documented() -> [(&'static str, Record); 7] {
    let prefix: shoal_wire::Prefix = "198.51.100.0/24".parse().expect("prefix");
    let [f0, f1, f2] = prefix.to_fields(0);
    let block = Record {
        op: Op::SEND_SAVE,
        ttl_ms: 600_000,
        ..Record::new(
            Code::BLOCK,
            [
                f0,
                f1,
                f2,
                shoal_wire::reason_to_field("scan").expect("reason"),
            ],
        )
    };
    let unblock = Record {
        code: Code::UNBLOCK,
        fields: [f0, f1, f2, 0],
        ..block
    };
    let load = Record {
        op: Op::SEND,
        ..Record::new(Code::LOAD, [7, 1500, 0, 0])
    };
    let query = Record {
        seq: 99,
        op: Op::from_bits(0).expect("op 0"),
        ..Record::new(Code::QUERY_LOAD, [7, 0, 0, 0])
    };
    let reply = Record {
        timing_us: 1_700_000_000_000_000,
        origin: 2,
        ..Record {
            fields: [7, 4500, 1500, 3],
            ..query
        }
    };
    // Rate limits: the limit `login`, source 192.0.2.1.
    let query_limit = Record {
        seq: 100,
        op: Op::from_bits(0).expect("op 0"),
        ..Record::new(
            Code::QUERY_LIMIT,
            [0xc97f_2f32, 0x0000_ffff_c000_0201, 1, 0],
        )
    };
    let reply_limit = Record {
        timing_us: 1_700_000_000_000_000,
        origin: 2,
        fields: [0xc97f_2f32, 0x0000_ffff_c000_0201, 2, 4000],
        ..query_limit
    };
    assert_eq!(shoal_core::keyrate::name_id("login"), 0xc97f_2f32);
    [
        ("local_load", load),
        ("local_query_load", query),
        ("local_reply_load", reply),
        ("local_block", block),
        ("local_unblock", unblock),
        ("local_query_limit", query_limit),
        ("local_reply_limit", reply_limit),
    ]
}

#[test]
fn documented_vectors_are_the_codec_bytes() {
    let v = vectors();
    let expected = documented();
    assert_eq!(
        v.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
            names.sort_unstable();
            names
        },
        "local-api.md's vectors and this test's list differ"
    );
    for (name, record) in expected {
        let bytes = &v[name];
        assert_eq!(bytes.len(), RECORD_LEN, "{name}");
        assert_eq!(&record.to_bytes()[..], &bytes[..], "{name}: encoding");
        assert_eq!(Record::decode_slice(bytes), Ok(record), "{name}: decoding");
    }
}

#[test]
fn live_node_answers_the_documented_query() {
    let v = vectors();
    let dir = std::env::temp_dir().join(format!("shoal-it-localapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (group, port) = unique_group();
    let node = NodeProcess::spawn(Path::new(BIN), &NodeSpec::loopback(2, group, port, &dir))
        .expect("node starts");
    let client = node.client().expect("client");
    client.send_raw(&v["local_load"]).expect("send load");

    let mut reply = None;
    let seen = wait_until(Duration::from_secs(5), || {
        client.send_raw(&v["local_query_load"]).expect("send query");
        let Ok(bytes) = client.recv_raw(Duration::from_millis(500)) else {
            return false;
        };
        let r = Record::decode_slice(&bytes).expect("reply is one valid record");
        let done = r.fields[2] == 1500;
        reply = Some((bytes, r));
        done
    });
    let (bytes, r) = reply.expect("a reply");
    assert!(seen, "the load never showed up: last reply {r:?}");
    let doc = &v["local_reply_load"];
    // seq, code, op and reserved bytes, f0: as documented.
    assert_eq!(bytes[8..16], doc[8..16], "seq echoed");
    assert_eq!(bytes[20..40], doc[20..40], "ttl, code, op, reserved, f0");
    assert_eq!(r.origin, 2, "origin is the answering node");
    assert_eq!(r.fields, [7, 1500, 1500, 1], "total, local, nodes");
    assert!(r.timing_us > 1_700_000_000_000_000, "wall-clock µs");
}

/// The node reads its filters' datagrams in batches and answers questions
/// ahead of other filters' reports; a filter's own reports still come
/// before its later questions. A second filter floods reports while the
/// first sends a report and, without waiting, a question about it: every
/// answer holds the report.
#[test]
fn a_question_sees_the_same_filters_report_sent_just_before() {
    let dir = std::env::temp_dir().join(format!("shoal-it-localorder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (group, port) = unique_group();
    let node = NodeProcess::spawn(Path::new(BIN), &NodeSpec::loopback(1, group, port, &dir))
        .expect("node starts");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let mut c = node.client().expect("client");
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let batch: Vec<Record> = (0..64)
                .map(|i| Record::new(Code::LOAD, [1_000_000 + i, 5, 0, 0]))
                .collect();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.send(&batch).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let client = node.client().expect("client");
    let mut stale = Vec::new();
    for i in 0..400u64 {
        let key = 10 + i;
        client
            .send_raw(&Record::new(Code::LOAD, [key, 1000 + i, 0, 0]).to_bytes())
            .expect("send load");
        client
            .send_raw(&Record::new(Code::QUERY_LOAD, [key, 0, 0, 0]).to_bytes())
            .expect("send query");
        let bytes = client
            .recv_raw(Duration::from_secs(2))
            .expect("an answer within 2 s");
        let r = Record::decode_slice(&bytes).expect("one record");
        if r.fields[2] != 1000 + i {
            stale.push((key, r.fields));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flood.join().expect("flooder");
    assert!(flooded > 100, "the flood ran ({flooded} datagrams)");
    assert!(
        stale.is_empty(),
        "answers without the report sent just before: {stale:?}"
    );
}
