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

/// Fields of a `shoal_log` row after the node name: `{expires_us, id,
/// timing_us, code, op, origin, f0, f1, f2, f3}`.
pub(crate) const ROW_FIELDS: [&str; 10] = [
    "expires_us",
    "id",
    "timing_us",
    "code",
    "op",
    "origin",
    "f0",
    "f1",
    "f2",
    "f3",
];

/// The longest node name `shoal_save` takes (as `check_node` in
/// `shoal_common.lua`).
pub(crate) const NODE_MAX: usize = 64;

/// The largest tuple `shoal_save` builds: array header, the longest node
/// name with its header, ten 9-byte unsigned integers.
pub(crate) const TUPLE_MAX: usize = 1 + 2 + NODE_MAX + 10 * 9;

/// The arguments of one `shoal_save(node, rows)` call, checked: a valid
/// node name and, per row, the raw MessagePack of its ten unsigned
/// integers (copied as they are into the tuple).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SaveArgs<'a> {
    pub(crate) node: &'a [u8],
    pub(crate) rows: Vec<&'a [u8]>,
}

/// Whether `node` is a name a node may have: 1..=64 bytes of
/// `[A-Za-z0-9._-]` (the rule of `check_node`).
pub(crate) fn node_ok(node: &[u8]) -> bool {
    (1..=NODE_MAX).contains(&node.len())
        && node
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the next MessagePack value is, for error messages.
fn kind(buf: &[u8]) -> &'static str {
    match buf.first() {
        None => "nothing",
        Some(0x00..=0x7f | 0xcc..=0xcf) => "an unsigned integer",
        Some(0xe0..=0xff | 0xd0..=0xd3) => "a negative integer",
        Some(0x80..=0x8f | 0xde | 0xdf) => "a map",
        Some(0x90..=0x9f | 0xdc | 0xdd) => "an array",
        Some(0xa0..=0xbf | 0xd9..=0xdb) => "a string",
        Some(0xc0) => "nil",
        Some(0xc2 | 0xc3) => "a boolean",
        Some(0xca | 0xcb) => "a float",
        Some(0xc4..=0xc6) => "binary",
        Some(_) => "an extension",
    }
}

/// Shows a rejected node name: printable ASCII as is, anything else
/// escaped, cut after 80 bytes.
fn show(name: &[u8]) -> String {
    let mut s: String = name
        .iter()
        .take(80)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if name.len() > 80 {
        s.push_str("...");
    }
    s
}

/// Checks the whole of `shoal_save`'s arguments, `[node, rows]`, before
/// anything is written. Every error names what was wrong and where.
pub(crate) fn parse_save(args: &[u8]) -> Result<SaveArgs<'_>, String> {
    let mut buf = args;
    match array_len(&mut buf) {
        Some(2) => {}
        Some(n) => return Err(format!("expected 2 arguments (node, rows), got {n}")),
        None => return Err("arguments are not an array".to_string()),
    }
    let before = buf;
    let node = match str(&mut buf) {
        Some(node) if node_ok(node) => node,
        Some(node) => return Err(format!("bad node name: '{}'", show(node))),
        None => {
            return Err(format!(
                "bad node name: {} (a string of 1..64 of [A-Za-z0-9._-] is needed)",
                kind(before)
            ))
        }
    };
    let before = buf;
    let Some(count) = array_len(&mut buf) else {
        return Err(format!(
            "rows must be an array of rows, not {}",
            kind(before)
        ));
    };
    // Each row takes at least 11 bytes: no more rows than that fit.
    let mut rows = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(buf.len() / 11));
    for i in 1..=count {
        let before = buf;
        let n = match array_len(&mut buf) {
            Some(10) => 10,
            Some(n) => {
                return Err(format!(
                    "row {i} has {n} fields, not 10 ({{expires_us, id, timing_us, code, op, origin, f0, f1, f2, f3}})"
                ))
            }
            None => {
                return Err(format!(
                    "row {i} is {}, not an array of 10 unsigned integers",
                    kind(before)
                ))
            }
        };
        let start = buf;
        for field in ROW_FIELDS.iter().take(n) {
            let at = buf;
            if uint(&mut buf).is_none() {
                return Err(match kind(at) {
                    "an unsigned integer" => format!("row {i}: {field} is truncated"),
                    other => format!("row {i}: {field} is {other}, not an unsigned integer"),
                });
            }
        }
        rows.push(&start[..start.len() - buf.len()]);
    }
    if !buf.is_empty() {
        return Err("trailing bytes after the arguments".to_string());
    }
    Ok(SaveArgs { node, rows })
}

/// Starts a `shoal_log` tuple of `node`: the array header (11 fields) and
/// the name. Each row's fields are appended to it.
pub(crate) fn tuple_head(out: &mut Vec<u8>, node: &[u8]) {
    out.clear();
    out.push(0x9b);
    put_str(out, node);
}

/// `n`, encoded: what `shoal_save` returns.
pub(crate) fn encode_uint(out: &mut Vec<u8>, n: u64) {
    out.clear();
    put_uint(out, n);
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

    /// `[node, rows]` with each row given as raw MessagePack values.
    fn save_args(node: &[u8], rows: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0x92];
        put_str(&mut v, node);
        assert!(rows.len() < 0x1_0000);
        v.push(0xdc);
        v.extend_from_slice(&(rows.len() as u16).to_be_bytes());
        for r in rows {
            v.extend_from_slice(r);
        }
        v
    }

    /// A row of `n` unsigned integers `base, base + 1, ...`.
    fn row(n: u8, base: u64) -> Vec<u8> {
        let mut v = vec![0x90 | n];
        for i in 0..u64::from(n) {
            put_uint(&mut v, base + i);
        }
        v
    }

    #[test]
    fn parses_save_arguments() {
        let big = u64::MAX - 20;
        let rows = vec![row(10, 0), row(10, 1_700_000_000_000_000), row(10, big)];
        let args = save_args(b"c1-n1", &rows);
        let got = parse_save(&args).expect("valid");
        assert_eq!(got.node, b"c1-n1");
        assert_eq!(got.rows.len(), 3);
        for (raw, r) in got.rows.iter().zip(&rows) {
            // The fields without the row's array header.
            assert_eq!(*raw, &r[1..]);
            // Head + fields is a whole tuple whose key reads back.
            let mut t = Vec::new();
            tuple_head(&mut t, got.node);
            t.extend_from_slice(raw);
            assert!(t.len() <= TUPLE_MAX);
            let key = parse_row(&t).expect("a tuple");
            assert_eq!(key.node, b"c1-n1");
        }
        let mut t = Vec::new();
        tuple_head(&mut t, b"n");
        t.extend_from_slice(got.rows[2]);
        assert_eq!(
            parse_row(&t),
            Some(Row {
                node: b"n",
                expires_us: big,
                id: big + 1
            })
        );
        let args = save_args(b"n", &[]);
        let empty = parse_save(&args).expect("no rows is valid");
        assert!(empty.rows.is_empty());
        // The reply: the count, one unsigned integer.
        let mut out = vec![0xff];
        encode_uint(&mut out, 1000);
        assert_eq!(out, [0xcd, 0x03, 0xe8]);
        encode_uint(&mut out, 0);
        assert_eq!(out, [0x00]);
        // The longest tuple fits TUPLE_MAX.
        let long = [b'x'; NODE_MAX];
        let max_row = row(10, u64::MAX - 10);
        let args = save_args(&long, &[max_row]);
        let got = parse_save(&args).expect("valid");
        let mut t = Vec::new();
        tuple_head(&mut t, got.node);
        t.extend_from_slice(got.rows[0]);
        assert_eq!(t.len(), TUPLE_MAX);
    }

    #[test]
    fn refuses_bad_save_arguments_with_a_reason() {
        let ok = || vec![row(10, 5), row(10, 6)];
        let err = |args: Vec<u8>| parse_save(&args).expect_err("refused");
        for name in [&b""[..], b"a b", b"a/b", b"\xff", &[b'x'; NODE_MAX + 1]] {
            let e = err(save_args(name, &ok()));
            assert!(e.starts_with("bad node name"), "{e}");
        }
        assert!(node_ok(b"A-z_0.9"));
        let mut not_str = vec![0x92, 0x05];
        not_str.extend_from_slice(&save_args(b"n", &ok())[3..]);
        assert_eq!(
            err(not_str),
            "bad node name: an unsigned integer (a string of 1..64 of [A-Za-z0-9._-] is needed)"
        );
        let mut short = ok();
        short.push(row(9, 1));
        assert!(err(save_args(b"n", &short)).starts_with("row 3 has 9 fields, not 10"));
        let mut long = ok();
        long.insert(0, row(11, 1));
        assert!(err(save_args(b"n", &long)).starts_with("row 1 has 11 fields"));
        let mut neg = row(10, 1);
        neg[5] = 0xff; // -1 as the op
        assert_eq!(
            err(save_args(b"n", &[neg])),
            "row 1: op is a negative integer, not an unsigned integer"
        );
        let mut s = row(10, 1);
        s[10] = 0xa0; // "" as f3
        assert_eq!(
            err(save_args(b"n", &[s])),
            "row 1: f3 is a string, not an unsigned integer"
        );
        let mut float = vec![0x9a, 0xcb];
        float.extend_from_slice(&1.5f64.to_be_bytes());
        float.extend_from_slice(&row(9, 0)[1..]);
        assert_eq!(
            err(save_args(b"n", &[float])),
            "row 1: expires_us is a float, not an unsigned integer"
        );
        assert_eq!(
            err(save_args(b"n", &[vec![0x07]])),
            "row 1 is an unsigned integer, not an array of 10 unsigned integers"
        );
        let mut rows_map = vec![0x92];
        put_str(&mut rows_map, b"n");
        rows_map.push(0x80);
        assert_eq!(err(rows_map), "rows must be an array of rows, not a map");
        let mut rows_nil = vec![0x92];
        put_str(&mut rows_nil, b"n");
        rows_nil.push(0xc0);
        assert_eq!(err(rows_nil), "rows must be an array of rows, not nil");
        assert_eq!(
            err(vec![0x91, 0xa1, b'n']),
            "expected 2 arguments (node, rows), got 1"
        );
        assert_eq!(err(vec![0x81]), "arguments are not an array");
        // More rows announced than present.
        let mut missing = save_args(b"n", &ok());
        let at = missing.len() - 2 * 11 - 2;
        missing[at..at + 2].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            err(missing),
            "row 3 is nothing, not an array of 10 unsigned integers"
        );
        let mut trailing = save_args(b"n", &ok());
        trailing.push(0x01);
        assert_eq!(err(trailing), "trailing bytes after the arguments");
        // Every prefix of a valid call is refused, never a panic.
        let good = save_args(b"node", &ok());
        for cut in 0..good.len() {
            assert!(parse_save(&good[..cut]).is_err(), "cut {cut}");
        }
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
