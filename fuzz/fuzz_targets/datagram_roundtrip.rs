//! Decodes arbitrary bytes as a datagram, with a fixed MAC key and with no
//! key. Whatever is accepted is re-encoded with `DatagramWriter`, decoded
//! again, and must give the same header and records; where the encoding
//! is canonical the bytes must be identical too.
//!
//! Each input is tried as is and with its CRC trailer recomputed.
//!
//! The key is the one of the signed test vector in `docs/wire.md` (id 1,
//! secret `shoal-test-vector-secret`) and the seed corpus holds those
//! vectors, so the fuzzer starts from datagrams that pass every check.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_wire::{Datagram, DatagramWriter, MacKey, MacKeys, Record, CRC_LEN, MAX_DATAGRAM};

const SECRET: &[u8] = b"shoal-test-vector-secret";

fuzz_target!(|data: &[u8]| {
    check(data);
    // A random mutation almost never keeps the CRC valid, which would stop
    // nearly every input at the CRC check: also try the input with its
    // trailer recomputed, as an attacker on the segment can.
    if data.len() >= CRC_LEN {
        let mut fixed = data.to_vec();
        let n = fixed.len();
        let crc = crc32fast::hash(&fixed[..n - CRC_LEN]);
        fixed[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    static KEYS: OnceLock<MacKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| MacKeys {
        current: MacKey::derive(1, SECRET),
        previous: None,
    });
    let key = &keys.current;
    // Take the cluster from the input, so that the fuzzer is not stopped
    // at the cluster check, and also try a different one.
    let cluster = match data.get(8..12) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    };
    let _ = Datagram::parse(data, cluster.wrapping_add(1), None);

    let verified = Datagram::parse(data, cluster, Some(keys)).is_ok();
    if verified {
        round_trip(data, cluster, Some(keys), key, true);
    }
    if Datagram::parse(data, cluster, None).is_ok() {
        round_trip(data, cluster, None, key, verified);
    } else {
        assert!(!verified, "accepted with keys but not without");
    }
}

/// `data` parsed with `keys`: re-encode it and check the result.
fn round_trip(data: &[u8], cluster: u32, keys: Option<&MacKeys>, key: &MacKey, verified: bool) {
    let d = Datagram::parse(data, cluster, keys).expect("the caller parsed it");
    let h = d.header;
    assert_eq!(d.records().len(), usize::from(h.count));
    let Ok(records) = d.records().collect::<Result<Vec<Record>, _>>() else {
        // A bad record is skipped by receivers and cannot be re-encoded.
        return;
    };
    let write_key = match h.key_id {
        None => None,
        Some(id) if id == key.id => Some(key.clone()),
        // Signed with a key we do not hold (only possible without keys).
        Some(_) => return,
    };
    let mut w = DatagramWriter::new(h.cluster, h.sender, h.incarnation, MAX_DATAGRAM, write_key);
    w.set_next_seq(h.seq);
    for r in &records {
        assert!(w.push(r), "a parsed datagram always fits MAX_DATAGRAM");
    }
    let Some(out) = w.finish() else {
        assert_eq!(h.count, 0, "writer refused a datagram with records");
        return;
    };

    let again = Datagram::parse(out, cluster, keys).expect("re-encoded datagram parses");
    assert_eq!(again.header, h, "header changed in the round trip");
    let records_again: Vec<Record> = again
        .records()
        .map(|r| r.expect("re-encoded record decodes"))
        .collect();
    assert_eq!(records_again, records, "records changed in the round trip");

    // Byte identity: exact for verified signed datagrams; for unsigned
    // ones except byte 32 (key_id, unchecked when unsigned) and the CRC;
    // for signed ones read without keys, exactly when the MAC is genuine.
    match h.key_id {
        Some(_) => assert_eq!(out == data, verified, "bytes vs MAC verdict"),
        None => {
            let n = data.len();
            assert_eq!(out.len(), n);
            if data[32] == 0 {
                assert_eq!(out, data);
            } else {
                assert_eq!(out[..32], data[..32]);
                assert_eq!(out[33..n - CRC_LEN], data[33..n - CRC_LEN]);
            }
        }
    }
}
