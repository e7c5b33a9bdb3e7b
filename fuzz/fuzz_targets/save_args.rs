//! The argument parser of the native `shoal_save` (`expirer/src/mp.rs`,
//! `parse_save`), which reads the MessagePack of an IPROTO call as any
//! client with the right to call it sent it.
//!
//! Differential: a reference reader written here on the `rmp` crate says
//! whether the input is exactly `[node, [[u, u, u, u, u, u, u, u, u, u],
//! ...]]` (node: 1..=64 bytes of `[A-Za-z0-9._-]`, u: an unsigned integer
//! in any of its encodings, nothing after); the parser must agree, and
//! give the same node and row bytes. For each accepted row, the tuple
//! `shoal_save` would write is an array of 11 fields no longer than
//! `TUPLE_MAX` whose key reads back. A refusal's message stays short.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rmp::Marker;
use shoal_expirer::fuzzing::{parse_save, tuple, TUPLE_MAX};

fuzz_target!(|data: &[u8]| {
    let got = parse_save(data);
    let want = reference(data);
    match (&got, &want) {
        (Ok(g), Some(w)) => assert_eq!(g, w),
        (Err(msg), None) => assert!(msg.len() < 400, "a {}-byte message", msg.len()),
        _ => panic!("parser {got:?}, reference {want:?}"),
    }
    let Ok((node, rows)) = got else { return };
    let mut t = Vec::new();
    for row in rows {
        let key = tuple(node, row, &mut t).expect("the key of a built tuple reads back");
        assert_eq!(key.node, node);
        let (expires_us, id) = (key.expires_us, key.id);
        assert!(t.len() <= TUPLE_MAX, "tuple of {} bytes", t.len());
        let mut rd = &t[..];
        assert_eq!(rmp::decode::read_array_len(&mut rd).ok(), Some(11));
        let mut name = [0u8; 64];
        let s = rmp::decode::read_str(&mut rd, &mut name).expect("the name");
        assert_eq!(s.as_bytes(), node);
        let fields: Vec<u64> = (0..10).map(|_| uint(&mut rd).expect("a field")).collect();
        assert!(rd.is_empty());
        assert_eq!((fields[0], fields[1]), (expires_us, id));
    }
});

type Parsed<'a> = (&'a [u8], Vec<&'a [u8]>);

/// An unsigned integer in any of its MessagePack encodings (and no signed
/// one: Tarantool's `unsigned` fields take only these).
fn uint(rd: &mut &[u8]) -> Option<u64> {
    let marker = rmp::decode::read_marker(rd).ok()?;
    let n = match marker {
        Marker::FixPos(v) => return Some(u64::from(v)),
        Marker::U8 => 1,
        Marker::U16 => 2,
        Marker::U32 => 4,
        Marker::U64 => 8,
        _ => return None,
    };
    let bytes = take(rd, n)?;
    Some(bytes.iter().fold(0, |acc, &b| acc << 8 | u64::from(b)))
}

fn take<'a>(rd: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rd.len() < n {
        return None;
    }
    let (head, tail) = rd.split_at(n);
    *rd = tail;
    Some(head)
}

fn reference(data: &[u8]) -> Option<Parsed<'_>> {
    let rd = &mut &data[..];
    if rmp::decode::read_array_len(rd).ok()? != 2 {
        return None;
    }
    let len = rmp::decode::read_str_len(rd).ok()?;
    let node = take(rd, usize::try_from(len).ok()?)?;
    let name_ok = (1..=64).contains(&node.len())
        && node
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !name_ok {
        return None;
    }
    let count = rmp::decode::read_array_len(rd).ok()?;
    let mut rows = Vec::new();
    for _ in 0..count {
        if rmp::decode::read_array_len(rd).ok()? != 10 {
            return None;
        }
        let start = *rd;
        for _ in 0..10 {
            uint(rd)?;
        }
        rows.push(&start[..start.len() - rd.len()]);
    }
    rd.is_empty().then_some((node, rows))
}
