//! Keeps `docs/wire.md` section 2.3 honest: the block vectors are what
//! `shoal-wire` encodes for the listed values, and their fields read back
//! as the documented prefix, reason, cluster and sequence.

use shoal_wire::{hex_vectors, reason_from_field, reason_to_field, Code, Op, Prefix, Record};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire.md");

#[test]
fn block_vectors_are_the_codec_bytes() {
    let text = std::fs::read_to_string(DOC_PATH).expect("wire.md");
    let v = hex_vectors(&text).expect("vectors");
    let p: Prefix = "192.0.2.0/24".parse().expect("prefix");
    let [f0, f1, f2] = p.to_fields(0);
    let block = Record {
        timing_us: 1_767_225_600_123_456,
        seq: 43,
        origin: 7,
        ttl_ms: 600_000,
        code: Code::BLOCK,
        op: Op::SEND_SAVE,
        fields: [f0, f1, f2, reason_to_field("scan").expect("reason")],
    };
    assert_eq!([f0, f1, f2], [0, 0x0000_ffff_c000_0200, 0x418]);
    assert_eq!(&block.to_bytes()[..], &v["block-record"][..]);
    let back = Record::decode_slice(&v["block-record"]).expect("decode");
    assert_eq!(
        Prefix::from_fields(back.fields[0], back.fields[1], back.fields[2]),
        Ok((p, 0))
    );
    assert_eq!(reason_from_field(back.fields[3]).as_deref(), Ok("scan"));

    let p6: Prefix = "2001:db8::/32".parse().expect("prefix");
    let [f0, f1, f2] = p6.to_fields(2);
    let remote = Record {
        timing_us: 1_767_225_600_223_456,
        seq: 44,
        origin: 7,
        ttl_ms: 30_000,
        code: Code::REMOTE_BLOCK,
        op: Op::SEND,
        fields: [f0, f1, f2, 9],
    };
    assert_eq!(
        [f0, f1, f2],
        [0x2001_0db8_0000_0000, 0, 0x0000_0002_0000_0620]
    );
    assert_eq!(&remote.to_bytes()[..], &v["block-remote"][..]);
    assert_eq!(Prefix::from_fields(f0, f1, f2), Ok((p6, 2)));
}
