//! The little MessagePack the worker needs: reading the key fields of a
//! `shoal_log` tuple, and writing the keys it positions and deletes with.
//! Safe code over slices; a malformed tuple is `None`, never a panic.

/// The primary-key fields of one `shoal_log` tuple, borrowed from its
/// MessagePack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub node: &'a [u8],
    pub expires_us: u64,
    pub id: u64,
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

fn be(buf: &mut &[u8], n: usize) -> Option<u64> {
    Some(
        take(buf, n)?
            .iter()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
    )
}

fn array_len(buf: &mut &[u8]) -> Option<u64> {
    match *take(buf, 1)?.first()? {
        b @ 0x90..=0x9f => Some(u64::from(b & 0x0f)),
        0xdc => be(buf, 2),
        0xdd => be(buf, 4),
        _ => None,
    }
}

fn str<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = match *take(buf, 1)?.first()? {
        b @ 0xa0..=0xbf => u64::from(b & 0x1f),
        0xd9 => be(buf, 1)?,
        0xda => be(buf, 2)?,
        0xdb => be(buf, 4)?,
        _ => return None,
    };
    take(buf, usize::try_from(n).ok()?)
}

fn uint(buf: &mut &[u8]) -> Option<u64> {
    match *take(buf, 1)?.first()? {
        b @ 0x00..=0x7f => Some(u64::from(b)),
        0xcc => be(buf, 1),
        0xcd => be(buf, 2),
        0xce => be(buf, 4),
        0xcf => be(buf, 8),
        _ => None,
    }
}

/// Reads `{node, expires_us, id, ...}` from a tuple's MessagePack.
pub(crate) fn parse_row(mut buf: &[u8]) -> Option<Row<'_>> {
    if array_len(&mut buf)? < 3 {
        return None;
    }
    let node = str(&mut buf)?;
    let expires_us = uint(&mut buf)?;
    let id = uint(&mut buf)?;
    Some(Row {
        node,
        expires_us,
        id,
    })
}

fn put_array(out: &mut Vec<u8>, n: u8) {
    debug_assert!(n < 16);
    out.push(0x90 | (n & 0x0f));
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[0xd9, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xda);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        // Longer than any string a tuple can hold (u32 range) is cut to
        // it; such a key cannot match and the call fails cleanly.
        out.push(0xdb);
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
    }
    out.extend_from_slice(s);
}

fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if let Ok(v) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, v]);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(0xcd);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(0xce);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// `[]`: positions at the very first tuple (with GE).
pub(crate) fn key_empty(out: &mut Vec<u8>) {
    out.clear();
    put_array(out, 0);
}

/// `[node]`: a partial key, the whole range of one node.
pub(crate) fn key_node(out: &mut Vec<u8>, node: &[u8]) {
    out.clear();
    put_array(out, 1);
    put_str(out, node);
}

/// `[node, expires_us, id]`, appended: the full primary key of a row.
pub(crate) fn push_key(out: &mut Vec<u8>, row: &Row<'_>) {
    put_array(out, 3);
    put_str(out, row.node);
    put_uint(out, row.expires_us);
    put_uint(out, row.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(node: &[u8], exp: u64, id: u64, extra: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let n = 3 + extra;
        if n < 16 {
            v.push(0x90 | n as u8);
        } else {
            v.push(0xdc);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        put_str(&mut v, node);
        put_uint(&mut v, exp);
        put_uint(&mut v, id);
        for i in 0..extra {
            put_uint(&mut v, i as u64 * 1000);
        }
        v
    }

    #[test]
    fn round_trips_keys_of_every_width() {
        let long = vec![b'x'; 300];
        for node in [&b"n1"[..], &[b'a'; 31][..], &[b'b'; 32][..], &long[..]] {
            for v in [
                0,
                0x7f,
                0x80,
                0xff,
                0x100,
                0xffff,
                0x1_0000,
                u64::from(u32::MAX),
                u64::MAX,
            ] {
                for extra in [0, 8, 20] {
                    let t = tuple(node, v, v ^ 1, extra);
                    let row = parse_row(&t).expect("parses");
                    assert_eq!(
                        row,
                        Row {
                            node,
                            expires_us: v,
                            id: v ^ 1
                        }
                    );
                    let mut k = Vec::new();
                    push_key(&mut k, &row);
                    assert_eq!(parse_row(&k), Some(row));
                }
            }
        }
    }

    #[test]
    fn rejects_malformed_tuples_without_panicking() {
        let good = tuple(b"node", 1_700_000_000_000_000, 42, 8);
        let key_end = tuple(b"node", 1_700_000_000_000_000, 42, 0).len();
        // Every prefix shorter than the three key fields fails; the rest
        // of the tuple is not read.
        for cut in 0..key_end {
            assert_eq!(parse_row(&good[..cut]), None, "cut {cut}");
        }
        assert!(parse_row(&good[..key_end]).is_some());
        assert_eq!(parse_row(&[0x92, 0xa1, b'a', 0x01]), None, "two fields");
        assert_eq!(
            parse_row(&[0x93, 0x01, 0x01, 0x01]),
            None,
            "node not a string"
        );
        assert_eq!(
            parse_row(&[0x93, 0xa1, b'a', 0xff, 0x01]),
            None,
            "negative expiry"
        );
        assert_eq!(parse_row(&[0x83]), None, "a map");
    }

    #[test]
    fn writes_partial_keys() {
        let mut k = Vec::new();
        key_empty(&mut k);
        assert_eq!(k, [0x90]);
        key_node(&mut k, b"ab");
        assert_eq!(k, [0x91, 0xa2, b'a', b'b']);
    }
}
