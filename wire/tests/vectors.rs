//! Keeps `docs/wire.md` honest: every ```` ```hex vector=NAME ```` block in
//! it must be exactly what `shoal-wire` produces for the values the
//! document lists (repeated below, keep both in step), and parsing those
//! bytes must give those values back. The rejected examples of the
//! document are checked too.
//!
//! A second part is a deterministic randomized round-trip test: random
//! bytes and mutated valid datagrams must never make the parser panic, and
//! whatever it accepts must re-encode to the very same bytes.

use std::collections::BTreeMap;

use shoal_wire::{
    hex_vectors, Code, Datagram, DatagramWriter, DecodeError, Header, MacKey, MacKeys, Op, Record,
    RecordError, CRC_LEN, HEADER_LEN, MAC_LEN, MAX_DATAGRAM, RECORD_LEN,
};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire.md");
const SECRET: &[u8] = b"shoal-test-vector-secret";
const CLUSTER: u32 = 42;

// ---------------------------------------------------------------------------
// Reading the document.

/// Every ```` ```hex vector=NAME ```` block of the document, by name.
fn doc_vectors() -> BTreeMap<String, Vec<u8>> {
    let text =
        std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("cannot read {DOC_PATH}: {e}"));
    hex_vectors(&text).unwrap_or_else(|e| panic!("wire.md: {e}"))
}

// ---------------------------------------------------------------------------
// The documented values (docs/wire.md section 6).

fn key() -> MacKey {
    MacKey::derive(1, SECRET)
}

fn keys_of(key: MacKey) -> MacKeys {
    MacKeys {
        current: key,
        previous: None,
    }
}

fn record_a() -> Record {
    Record {
        timing_us: 1_767_225_600_123_456,
        seq: 42,
        origin: 7,
        ttl_ms: 30_000,
        code: Code::MODE,
        op: Op::SEND_SAVE,
        fields: [0x0123_4567_89ab_cdef, 2, 0, 0],
    }
}

struct DatagramVector {
    header: Header,
    records: Vec<Record>,
    key: Option<MacKey>,
}

fn vector_b() -> DatagramVector {
    DatagramVector {
        header: Header {
            cluster: CLUSTER,
            sender: 3,
            incarnation: 1_767_225_600_000_000,
            seq: 1,
            count: 2,
            key_id: None,
        },
        records: vec![
            Record {
                timing_us: 1_767_225_601_000_000,
                seq: 1,
                origin: 3,
                ttl_ms: 0,
                code: Code::LOAD,
                op: Op::SEND,
                fields: [0x0123_4567_89ab_cdef, 12_500, 1_000, 0],
            },
            Record {
                timing_us: 1_767_225_601_000_250,
                seq: 2,
                origin: 3,
                ttl_ms: 60_000,
                code: Code::SESSION_MARK,
                op: Op::SEND,
                fields: [0xdead_beef_cafe_f00d, Record::MARK_SUSPICIOUS, 0, 0],
            },
        ],
        key: None,
    }
}

fn vector_c() -> DatagramVector {
    DatagramVector {
        header: Header {
            cluster: CLUSTER,
            sender: 4,
            incarnation: 1_767_225_700_000_000,
            seq: 7,
            count: 1,
            key_id: Some(1),
        },
        records: vec![Record {
            timing_us: 1_767_225_701_500_000,
            seq: 19,
            origin: 4,
            ttl_ms: 30_000,
            code: Code::MODE,
            op: Op::SEND_SAVE,
            fields: [0x0123_4567_89ab_cdef, 2, 0, 0],
        }],
        key: Some(key()),
    }
}

fn encode(v: &DatagramVector) -> Vec<u8> {
    let h = &v.header;
    let mut w = DatagramWriter::new(h.cluster, h.sender, h.incarnation, 1400, v.key.clone());
    w.set_next_seq(h.seq);
    for r in &v.records {
        assert!(w.push(r), "vector does not fit in one datagram");
    }
    w.finish().expect("vector has records").to_vec()
}

fn check_datagram_vector(name: &str, bytes: &[u8], v: &DatagramVector) {
    assert_eq!(
        hex(&encode(v)),
        hex(bytes),
        "vector {name}: encoding the documented values gives other bytes"
    );
    let keys = v.key.clone().map(keys_of);
    let d = Datagram::parse(bytes, v.header.cluster, keys.as_ref())
        .unwrap_or_else(|e| panic!("vector {name} does not parse: {e}"));
    assert_eq!(d.header, v.header, "vector {name}: header");
    let records: Vec<Record> = d
        .records()
        .map(|r| r.unwrap_or_else(|e| panic!("vector {name}: bad record: {e}")))
        .collect();
    assert_eq!(records, v.records, "vector {name}: records");
    // A receiver without keys accepts it too and reads the same values.
    let d = Datagram::parse(bytes, v.header.cluster, None)
        .unwrap_or_else(|e| panic!("vector {name} does not parse without keys: {e}"));
    assert_eq!(d.header, v.header, "vector {name}: header without keys");
}

#[test]
fn documented_vectors_match_the_implementation() {
    let vectors = doc_vectors();
    let expected = [
        "a-record",
        "b-unsigned",
        "c-signed",
        "c-signed-key",
        "c-signed-nonce",
        "c-signed-aegismac-not-the-tag",
        KEY_RATE_VECTOR,
        "block-record",
        "block-remote",
    ]
    .into_iter()
    .chain(TRUST_VECTORS);
    let found: Vec<&str> = vectors.keys().map(String::as_str).collect();
    let expected: Vec<&str> = expected.collect();
    for name in &expected {
        assert!(vectors.contains_key(*name), "wire.md lacks vector {name}");
    }
    for name in &found {
        assert!(
            expected.contains(name),
            "wire.md has vector {name} that this test does not check"
        );
    }

    let a = &vectors["a-record"];
    assert_eq!(a.len(), RECORD_LEN);
    assert_eq!(hex(&record_a().to_bytes()), hex(a), "vector a-record");
    assert_eq!(Record::decode_slice(a), Ok(record_a()), "vector a-record");

    check_datagram_vector("b-unsigned", &vectors["b-unsigned"], &vector_b());
    check_datagram_vector("c-signed", &vectors["c-signed"], &vector_c());

    let h = &vectors[KEY_RATE_VECTOR];
    assert_eq!(hex(&record_h().to_bytes()), hex(h), "vector h-key-rate");
    assert_eq!(Record::decode_slice(h), Ok(record_h()), "vector h-key-rate");
}

/// Section 8.1: a per-key rate.
const KEY_RATE_VECTOR: &str = "h-key-rate";

fn record_h() -> Record {
    Record {
        timing_us: 1_767_225_601_000_000,
        seq: 43,
        origin: 3,
        ttl_ms: 250,
        code: Code::KEY_RATE,
        op: Op::SEND,
        // Domain 1 (limits), FNV-1a 32 of "login"; ::ffff:192.0.2.1.
        fields: [0x0000_0001_c97f_2f32, 0x0000_ffff_c000_0201, 1_250_000, 0],
    }
}

/// Section 6.3's intermediate values, computed here with the primitives
/// themselves (`blake3`, `aegis`) rather than through `shoal-wire`: the
/// key, the nonce, the tag as the AEGIS-256 AEAD over an empty message with
/// the datagram as associated data, and the different tag the RFC's MAC
/// mode (AEGISMAC-256) gives, which the document warns against.
#[test]
fn documented_mac_is_the_aead_tag_not_the_mac_mode() {
    use aegis::aegis256::{Aegis256, Aegis256Mac};
    let vectors = doc_vectors();
    let c = &vectors["c-signed"];
    let signed = &c[..c.len() - MAC_LEN - CRC_LEN];
    let stored = &c[signed.len()..signed.len() + MAC_LEN];

    let derived = blake3::derive_key("shoal 2026 datagram mac v2", SECRET);
    assert_eq!(hex(&derived), hex(&vectors["c-signed-key"]), "derived key");
    let mut nonce = [0u8; 32];
    nonce[..24].copy_from_slice(&signed[8..32]);
    assert_eq!(hex(&nonce), hex(&vectors["c-signed-nonce"]), "nonce");

    let aead: [u8; MAC_LEN] =
        Aegis256::<MAC_LEN>::new(&derived, &nonce).encrypt_in_place(&mut [], signed);
    assert_eq!(hex(&aead), hex(stored), "the tag is the AEAD's");

    let mut mac = Aegis256Mac::<MAC_LEN>::new_with_nonce(&derived, &nonce);
    mac.update(signed);
    let mac_mode = mac.finalize();
    assert_eq!(
        hex(&mac_mode),
        hex(&vectors["c-signed-aegismac-not-the-tag"]),
        "the MAC mode's value as documented"
    );
    assert_ne!(mac_mode, aead, "the MAC mode gives another tag");

    // A datagram carrying the MAC mode's value is refused.
    let mut forged = c.clone();
    forged[signed.len()..signed.len() + MAC_LEN].copy_from_slice(&mac_mode);
    refix_crc(&mut forged);
    assert_eq!(
        Datagram::parse(&forged, CLUSTER, Some(&keys_of(key()))).map(|d| d.header),
        Err(DecodeError::BadMac)
    );
}

// ---------------------------------------------------------------------------
// The trust vectors (docs/wire.md section 7). Their bytes are checked here;
// what a receiver does with them is checked by `core/tests/trust.rs`.

/// Vectors of section 7, checked by [`trust_vectors_match_the_implementation`].
const TRUST_VECTORS: [&str; 4] = ["d-forged-origin", "e-relayed", "f-aged", "g-replay-order"];

/// 2026-01-01T00:00:00Z in µs.
const T: u64 = 1_767_225_600_000_000;

fn unsigned(sender: u32, seq: u64, records: Vec<Record>) -> DatagramVector {
    DatagramVector {
        header: Header {
            cluster: CLUSTER,
            sender,
            incarnation: T,
            seq,
            count: records.len() as u16,
            key_id: None,
        },
        records,
        key: None,
    }
}

fn vector_d() -> DatagramVector {
    unsigned(
        77,
        1,
        vec![
            Record {
                timing_us: T + 1_000_000,
                seq: 5,
                origin: 1,
                ttl_ms: 0,
                code: Code::LOAD,
                op: Op::SEND,
                fields: [0x0123_4567_89ab_cdef, 12_499, 1_000, 0],
            },
            Record {
                timing_us: T + 1_000_000,
                seq: 6,
                origin: 77,
                ttl_ms: 60_000,
                code: Code::SESSION_MARK,
                op: Op::SEND,
                fields: [0xdead_beef_cafe_f00d, Record::MARK_SUSPICIOUS, 0, 0],
            },
        ],
    )
}

fn remote_mode(claimant_cluster: u64, queue_seq: u64, seq: u64) -> Record {
    Record {
        timing_us: T + 2_000_000,
        seq,
        origin: 5,
        ttl_ms: 9_000,
        code: Code::REMOTE_MODE,
        op: Op::SEND,
        fields: [
            0x0123_4567_89ab_cdef,
            2,
            claimant_cluster << 32 | 4,
            queue_seq,
        ],
    }
}

fn vector_e() -> DatagramVector {
    unsigned(
        5,
        3,
        vec![
            remote_mode(2, 17, 11),
            remote_mode(u64::from(CLUSTER), 18, 12),
        ],
    )
}

fn vector_f() -> DatagramVector {
    unsigned(
        3,
        9,
        vec![Record {
            timing_us: T + 10_000_000,
            seq: 21,
            origin: 3,
            ttl_ms: 3_000,
            code: Code::SESSION_MARK,
            op: Op::SEND,
            fields: [4242, Record::MARK_SUSPICIOUS, 0, 0],
        }],
    )
}

/// Two local records, in the order a filter sends them.
fn vector_g() -> [Record; 2] {
    let mark = |timing_us, mark| Record {
        timing_us,
        seq: 0,
        origin: 0,
        ttl_ms: 60_000,
        code: Code::SESSION_MARK,
        op: Op::SEND_SAVE,
        fields: [42, mark, 0, 0],
    };
    [
        mark(T + 20_000_000, Record::MARK_LEGITIMATE),
        mark(T + 19_999_000, Record::MARK_SUSPICIOUS),
    ]
}

#[test]
fn trust_vectors_match_the_implementation() {
    let vectors = doc_vectors();
    check_datagram_vector("d-forged-origin", &vectors["d-forged-origin"], &vector_d());
    check_datagram_vector("e-relayed", &vectors["e-relayed"], &vector_e());
    check_datagram_vector("f-aged", &vectors["f-aged"], &vector_f());
    let g: Vec<u8> = vector_g().iter().flat_map(|r| r.to_bytes()).collect();
    assert_eq!(
        hex(&g),
        hex(&vectors["g-replay-order"]),
        "vector g-replay-order"
    );
    for (chunk, r) in vectors["g-replay-order"].chunks(RECORD_LEN).zip(vector_g()) {
        assert_eq!(Record::decode_slice(chunk), Ok(r), "vector g-replay-order");
    }
}

#[test]
fn documented_rejections() {
    let vectors = doc_vectors();
    let a = vectors.get("a-record").expect("vector a-record");
    let b = vectors.get("b-unsigned").expect("vector b-unsigned");
    let c = vectors.get("c-signed").expect("vector c-signed");
    let good_keys = keys_of(key());
    let parse = |bytes: &[u8], cluster: u32, keys: Option<&MacKeys>| {
        Datagram::parse(bytes, cluster, keys).map(|d| d.header)
    };

    let mut flipped = b.clone();
    flipped[64] ^= 0x01;
    assert_eq!(
        parse(&flipped, CLUSTER, None),
        Err(DecodeError::BadCrc {
            stated: 0xd4b7_c4bd,
            computed: 0xd809_0450
        })
    );

    assert_eq!(
        parse(&b[..43], CLUSTER, None),
        Err(DecodeError::TooShort { len: 43, min: 44 })
    );

    let mut flags = b.clone();
    flags[5] = 0x02;
    refix_crc(&mut flags);
    assert_eq!(flags[168..], [0xd0, 0x97, 0x6b, 0xfd]);
    assert_eq!(
        parse(&flags, CLUSTER, None),
        Err(DecodeError::UnknownFlags(0x02))
    );

    let mut count = b.clone();
    count[6] = 3;
    refix_crc(&mut count);
    assert_eq!(count[168..], [0x21, 0x3d, 0xc2, 0x3b]);
    assert_eq!(
        parse(&count, CLUSTER, None),
        Err(DecodeError::BadLength {
            len: 172,
            count: 3,
            expected: 236
        })
    );

    assert_eq!(
        parse(b, 43, None),
        Err(DecodeError::WrongCluster {
            expected: 43,
            got: 42
        })
    );
    assert_eq!(
        parse(b, CLUSTER, Some(&good_keys)),
        Err(DecodeError::MacMissing)
    );

    let other_id = keys_of(MacKey::derive(2, SECRET));
    assert_eq!(
        parse(c, CLUSTER, Some(&other_id)),
        Err(DecodeError::UnknownKey(1))
    );
    let wrong_secret = keys_of(MacKey::derive(1, b"wrong secret"));
    assert_eq!(
        parse(c, CLUSTER, Some(&wrong_secret)),
        Err(DecodeError::BadMac)
    );

    let mut forged = c.clone();
    forged[72] ^= 0x01;
    refix_crc(&mut forged);
    assert_eq!(forged[120..], [0x59, 0x04, 0xd5, 0x12]);
    assert_eq!(
        parse(&forged, CLUSTER, Some(&good_keys)),
        Err(DecodeError::BadMac)
    );
    assert!(parse(&forged, CLUSTER, None).is_ok());

    let mut op = a.clone();
    op[26] = 0x04;
    assert_eq!(Record::decode_slice(&op), Err(RecordError::UnknownOp(0x04)));
    let mut reserved = a.clone();
    reserved[27] = 0x01;
    assert_eq!(Record::decode_slice(&reserved), Err(RecordError::Reserved));
}

#[test]
fn own_crc32_is_ieee() {
    // The test's CRC is written from the spec, not taken from crc32fast.
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(crc32(b""), 0);
}

// ---------------------------------------------------------------------------
// Randomized round trip.

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// A value biased towards edge cases.
    fn value(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.next_u64() & 0xff,
            _ => self.next_u64(),
        }
    }
}

fn random_record(rng: &mut Rng) -> Record {
    let code = match rng.below(6) {
        0 => Code::LOAD,
        1 => Code::MODE,
        2 => Code::SESSION_MARK,
        3 => Code(0x8000 | rng.next_u64() as u16),
        _ => Code(rng.next_u64() as u16),
    };
    let op = Op::from_bits(rng.byte() & 0x03).expect("two low bits are valid");
    Record {
        timing_us: rng.value(),
        seq: rng.value(),
        origin: rng.value() as u32,
        ttl_ms: rng.value() as u32,
        code,
        op,
        fields: [rng.value(), rng.value(), rng.value(), rng.value()],
    }
}

/// A valid datagram, signed with `key` or not.
fn random_datagram(rng: &mut Rng, key: &MacKey) -> Vec<u8> {
    let signed = rng.chance(2);
    let cluster = if rng.chance(8) {
        rng.value() as u32
    } else {
        CLUSTER
    };
    let mut w = DatagramWriter::new(
        cluster,
        rng.value() as u32,
        rng.value(),
        MAX_DATAGRAM,
        signed.then(|| key.clone()),
    );
    w.set_next_seq(rng.value());
    let n = if rng.chance(16) {
        rng.below(40) + 1
    } else {
        rng.below(4) + 1
    };
    for _ in 0..n {
        assert!(w.push(&random_record(rng)));
    }
    w.finish().expect("records pushed").to_vec()
}

/// One random change: flips, overwrites, truncation, extension, header
/// fields made consistent or not.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    match rng.below(9) {
        0 | 1 if !buf.is_empty() => {
            let i = rng.below(buf.len());
            buf[i] ^= 1 << rng.below(8);
        }
        2 if !buf.is_empty() => {
            let i = rng.below(buf.len());
            buf[i] = rng.byte();
        }
        3 => {
            // Header bytes are where the parser makes its decisions.
            let i = rng.below(HEADER_LEN);
            if i < buf.len() {
                buf[i] = match rng.below(3) {
                    0 => 0,
                    1 => 1,
                    _ => rng.byte(),
                };
            }
        }
        4 => {
            let len = rng.below(buf.len() + 1);
            buf.truncate(len);
        }
        5 => {
            for _ in 0..rng.below(80) + 1 {
                buf.push(rng.byte());
            }
        }
        6 => {
            // Insert or remove whole records.
            if rng.chance(2) && buf.len() > HEADER_LEN + RECORD_LEN {
                buf.drain(HEADER_LEN..HEADER_LEN + RECORD_LEN);
            } else if buf.len() >= HEADER_LEN {
                let junk: Vec<u8> = (0..RECORD_LEN).map(|_| rng.byte()).collect();
                buf.splice(HEADER_LEN..HEADER_LEN, junk);
            }
        }
        7 if buf.len() >= 8 => {
            let count = rng.below(8) as u16;
            buf[6..8].copy_from_slice(&count.to_le_bytes());
        }
        _ if buf.len() > 32 => {
            // Flags and key id: the signed/unsigned switch.
            buf[5] = rng.below(3) as u8;
            buf[32] = rng.below(3) as u8;
        }
        _ => {}
    }
}

#[derive(Debug, Default)]
struct Stats {
    accepted: usize,
    round_trips: usize,
    signed_round_trips: usize,
    empty: usize,
    bad_records: usize,
    unsigned_key_id: usize,
    unverified_macs: usize,
}

/// Parses `input` with and without keys; every accepted datagram must
/// re-encode to exactly the input.
fn check_round_trip(input: &[u8], key: &MacKey, stats: &mut Stats) {
    let keys = keys_of(key.clone());
    let cluster = if input.len() >= 12 {
        u32::from_le_bytes([input[8], input[9], input[10], input[11]])
    } else {
        CLUSTER
    };
    let with_keys = Datagram::parse(input, cluster, Some(&keys));
    let without = Datagram::parse(input, cluster, None);
    // Also exercise the wrong-cluster path; it must never panic.
    let _ = Datagram::parse(input, cluster ^ 1, Some(&keys));

    if let Ok(d) = &with_keys {
        assert_eq!(
            d.header.key_id,
            Some(key.id),
            "keys accepted an unsigned datagram"
        );
        assert!(without.is_ok(), "accepted with keys, rejected without");
        if re_encode(input, d, Some(key.clone()), stats) {
            assert_eq!(
                hex(&reencoded(d, Some(key.clone()))),
                hex(input),
                "signed datagram does not round-trip"
            );
            stats.signed_round_trips += 1;
        }
    }
    if let Ok(d) = &without {
        stats.accepted += 1;
        match d.header.key_id {
            None => {
                if re_encode(input, d, None, stats) {
                    let out = reencoded(d, None);
                    if input[32] != 0 {
                        // Known: byte 32 (key_id) is not checked in
                        // unsigned datagrams, so it is the one byte that
                        // can differ (and, with it, the CRC).
                        stats.unsigned_key_id += 1;
                        let n = input.len();
                        assert_eq!(out.len(), n);
                        assert_eq!(out[32], 0);
                        assert_eq!(hex(&out[..32]), hex(&input[..32]));
                        assert_eq!(hex(&out[33..n - CRC_LEN]), hex(&input[33..n - CRC_LEN]));
                    } else {
                        assert_eq!(
                            hex(&out),
                            hex(input),
                            "unsigned datagram does not round-trip"
                        );
                        stats.round_trips += 1;
                    }
                }
            }
            Some(id) => {
                // Signed, MAC not verified: the bytes re-encode exactly
                // only if the MAC was genuine.
                stats.unverified_macs += 1;
                if id == key.id && re_encode(input, d, Some(key.clone()), stats) {
                    let same = reencoded(d, Some(key.clone())) == input;
                    assert_eq!(same, with_keys.is_ok(), "MAC check and round trip disagree");
                }
            }
        }
    }
}

/// Whether `d` can be re-encoded at all: every record must decode, and a
/// datagram without records is valid on the wire but never written.
fn re_encode(input: &[u8], d: &Datagram<'_>, key: Option<MacKey>, stats: &mut Stats) -> bool {
    assert_eq!(d.records().len(), usize::from(d.header.count));
    if d.records().any(|r| r.is_err()) {
        stats.bad_records += 1;
        return false;
    }
    if d.header.count == 0 {
        stats.empty += 1;
        let mac = if d.header.key_id.is_some() {
            MAC_LEN
        } else {
            0
        };
        assert_eq!(input.len(), HEADER_LEN + mac + CRC_LEN);
        let h = d.header;
        let mut w = DatagramWriter::new(h.cluster, h.sender, h.incarnation, MAX_DATAGRAM, key);
        assert!(w.finish().is_none(), "writer sealed an empty datagram");
        return false;
    }
    true
}

fn reencoded(d: &Datagram<'_>, key: Option<MacKey>) -> Vec<u8> {
    let h = d.header;
    let mut w = DatagramWriter::new(h.cluster, h.sender, h.incarnation, MAX_DATAGRAM, key);
    w.set_next_seq(h.seq);
    for r in d.records() {
        let r = r.expect("checked by re_encode");
        assert!(w.push(&r), "a parsed datagram always fits MAX_DATAGRAM");
    }
    w.finish().expect("has records").to_vec()
}

#[test]
fn random_bytes_never_panic() {
    let key = key();
    let mut rng = Rng::new(0x5eed_0001);
    let mut stats = Stats::default();
    for _ in 0..20_000 {
        let buf = if rng.chance(4) {
            // Pure noise, of any length around the limits.
            let len = match rng.below(64) {
                0 => MAX_DATAGRAM - 2 + rng.below(4),
                1..=20 => rng.below(HEADER_LEN + CRC_LEN + 1),
                _ => rng.below(400),
            };
            let mut buf: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if rng.chance(2) {
                refix_crc(&mut buf);
            }
            buf
        } else {
            plausible_noise(&mut rng)
        };
        check_round_trip(&buf, &key, &mut stats);
    }
    eprintln!("random bytes: {stats:?}");
    assert!(
        stats.accepted > 1_000 && stats.round_trips > 100,
        "random input too rarely accepted: {stats:?}"
    );
}

/// Random bytes shaped like a datagram (magic, version, a length that
/// matches the count), each rule broken now and then.
fn plausible_noise(rng: &mut Rng) -> Vec<u8> {
    let signed = rng.chance(2);
    let count = rng.below(4);
    let mac = if signed { MAC_LEN } else { 0 };
    let mut len = HEADER_LEN + count * RECORD_LEN + mac + CRC_LEN;
    if rng.chance(8) {
        len = (len + rng.below(130)).saturating_sub(65);
    }
    let mut buf: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    if buf.len() >= HEADER_LEN {
        if !rng.chance(16) {
            buf[0..4].copy_from_slice(b"SHOL");
            buf[4] = 1;
        }
        if !rng.chance(8) {
            buf[5] = u8::from(signed);
            buf[33..40].fill(0);
            if !signed {
                buf[32] = 0;
            }
        }
        if !rng.chance(8) {
            buf[6..8].copy_from_slice(&(count as u16).to_le_bytes());
        }
        // Valid-looking records, so that they decode and round-trip.
        let mut at = HEADER_LEN;
        while at + RECORD_LEN <= buf.len() && !rng.chance(8) {
            buf[at + 26] &= 0x03;
            buf[at + 27..at + 32].fill(0);
            at += RECORD_LEN;
        }
    }
    if !rng.chance(8) {
        refix_crc(&mut buf);
    }
    buf
}

#[test]
fn mutated_datagrams_never_panic_and_round_trip() {
    let key = key();
    let mut rng = Rng::new(0x5eed_0002);
    let mut stats = Stats::default();
    for _ in 0..20_000 {
        let mut buf = random_datagram(&mut rng, &key);
        for _ in 0..rng.below(3) + 1 {
            mutate(&mut rng, &mut buf);
        }
        // Most of the time fix the CRC, as an attacker would: otherwise
        // nearly everything stops at BadCrc.
        if !rng.chance(4) {
            refix_crc(&mut buf);
        }
        check_round_trip(&buf, &key, &mut stats);
        // The unmutated kind must always round-trip.
        let valid = random_datagram(&mut rng, &key);
        check_round_trip(&valid, &key, &mut stats);
    }
    eprintln!("mutated datagrams: {stats:?}");
    assert!(
        stats.round_trips > 1_000,
        "too few unsigned round trips: {stats:?}"
    );
    assert!(
        stats.signed_round_trips > 1_000,
        "too few signed round trips: {stats:?}"
    );
    assert!(
        stats.bad_records > 10,
        "record errors never reached: {stats:?}"
    );
    assert!(
        stats.unverified_macs > 100,
        "unverified MACs never reached: {stats:?}"
    );
}

// ---------------------------------------------------------------------------
// Helpers.

/// IEEE CRC32 (reflected 0xEDB88320), bit by bit, straight from the spec.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the trailer of `buf` (no-op when it is too short to have one).
fn refix_crc(buf: &mut [u8]) {
    let n = buf.len();
    if n < CRC_LEN {
        return;
    }
    let crc = crc32(&buf[..n - CRC_LEN]);
    buf[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
}

/// Hex with a space every byte, so that assertion diffs point at offsets.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
