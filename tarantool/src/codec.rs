//! The IPROTO bytes, sans I/O: greeting, chap-sha1 scramble, request
//! encoding and incremental response framing and decoding.
//!
//! Requests are written whole into a caller's `Vec<u8>`: a 5-byte length
//! prefix (msgpack uint32), the header map `{REQUEST_TYPE, SYNC}` and the
//! body map. Responses are cut out of a read buffer once their length
//! prefix is satisfied; the body's `DATA` value is located, not copied, so
//! the caller deserializes it straight from the frame.
//!
//! Nothing here panics on input from the network: every length is checked
//! against what is there and each failure is a [`DecodeError`].

use std::fmt::Display;
use std::ops::Range;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use rmp::Marker;
use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::error::{DecodeError, Error};

/// Length of the server's greeting.
pub(crate) const GREETING_LEN: usize = 128;

/// Request types.
pub(crate) mod request {
    pub(crate) const SELECT: u8 = 1;
    pub(crate) const INSERT: u8 = 2;
    pub(crate) const REPLACE: u8 = 3;
    pub(crate) const UPDATE: u8 = 4;
    pub(crate) const DELETE: u8 = 5;
    pub(crate) const AUTH: u8 = 7;
    pub(crate) const EVAL: u8 = 8;
    pub(crate) const UPSERT: u8 = 9;
    pub(crate) const CALL: u8 = 10;
    pub(crate) const PING: u8 = 64;
}

/// Header and body keys.
mod key {
    pub(super) const REQUEST_TYPE: u8 = 0x00;
    pub(super) const SYNC: u8 = 0x01;
    pub(super) const SCHEMA_VERSION: u8 = 0x05;
    pub(super) const SPACE_ID: u8 = 0x10;
    pub(super) const INDEX_ID: u8 = 0x11;
    pub(super) const LIMIT: u8 = 0x12;
    pub(super) const OFFSET: u8 = 0x13;
    pub(super) const ITERATOR: u8 = 0x14;
    pub(super) const INDEX_BASE: u8 = 0x15;
    pub(super) const KEY: u8 = 0x20;
    pub(super) const TUPLE: u8 = 0x21;
    pub(super) const FUNCTION_NAME: u8 = 0x22;
    pub(super) const USER_NAME: u8 = 0x23;
    pub(super) const EXPR: u8 = 0x27;
    pub(super) const OPS: u8 = 0x28;
    pub(super) const DATA: u8 = 0x30;
    pub(super) const ERROR_24: u8 = 0x31;
    pub(super) const ERROR: u8 = 0x52;
    /// Inside an `ERROR` (0x52) value: the stack, and an entry's message.
    pub(super) const ERROR_STACK: u8 = 0x00;
    pub(super) const ERROR_MESSAGE: u8 = 0x03;
}

/// Response code of an out-of-band push (`box.session.push`), which
/// precedes the final response to the same sync.
const CODE_PUSH: u64 = 0x80;
/// Set in the response code of every error.
const CODE_ERROR: u64 = 0x8000;

// ---------------------------------------------------------------- greeting

/// The parsed server greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeting {
    /// The first line without padding, e.g. `Tarantool 2.6.0 (Binary) <uuid>`.
    pub(crate) version: String,
    /// The decoded salt (32 bytes from 2.x servers; 20 are used).
    pub(crate) salt: Vec<u8>,
}

/// Parses the 128-byte greeting: two 64-byte lines, each ending in `\n`,
/// the second the base64 salt padded with spaces.
pub(crate) fn parse_greeting(buf: &[u8]) -> Result<Greeting, DecodeError> {
    if buf.len() != GREETING_LEN {
        return Err(DecodeError::Greeting("not 128 bytes"));
    }
    let (line1, line2) = buf.split_at(64);
    if line1[63] != b'\n' || line2[63] != b'\n' {
        return Err(DecodeError::Greeting("lines do not end in a newline"));
    }
    if !line1.starts_with(b"Tarantool ") {
        return Err(DecodeError::Greeting("not a Tarantool server"));
    }
    let version = std::str::from_utf8(&line1[..63])
        .map_err(|_| DecodeError::Greeting("version line is not UTF-8"))?
        .trim_end()
        .to_owned();
    let salt_text = trim_ascii(&line2[..63]);
    let salt = base64_decode(salt_text).ok_or(DecodeError::Greeting("salt is not base64"))?;
    if salt.len() < 20 {
        return Err(DecodeError::Greeting("salt shorter than 20 bytes"));
    }
    Ok(Greeting { version, salt })
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() || *first == 0 {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() || *last == 0 {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Standard base64 (RFC 4648 alphabet) as in the greeting; lenient where
/// that costs nothing: `=` padding optional, spare bits not checked (the
/// salt is whatever the server sent; a bad one only fails the auth).
const SALT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    SALT_B64.decode(text).ok()
}

/// The chap-sha1 scramble:
/// `sha1(password) XOR sha1(salt[..20] ++ sha1(sha1(password)))`.
pub(crate) fn scramble(salt: &[u8], password: &str) -> [u8; 20] {
    let step1: [u8; 20] = Sha1::digest(password.as_bytes()).into();
    let step2: [u8; 20] = Sha1::digest(step1).into();
    let mut h = Sha1::new();
    h.update(&salt[..salt.len().min(20)]);
    h.update(step2);
    let step3: [u8; 20] = h.finalize().into();
    let mut out = [0u8; 20];
    for (o, (a, b)) in out.iter_mut().zip(step1.iter().zip(step3.iter())) {
        *o = a ^ b;
    }
    out
}

// ---------------------------------------------------------------- requests

fn enc(e: impl Display) -> Error {
    Error::Encode(e.to_string())
}

/// Starts a frame: placeholder length prefix, header, body map header.
/// Returns where the frame starts, for [`finish`].
fn begin(out: &mut Vec<u8>, ty: u8, sync: u64, body_len: u32) -> Result<usize, Error> {
    let start = out.len();
    out.extend_from_slice(&[0xce, 0, 0, 0, 0]);
    rmp::encode::write_map_len(out, 2).map_err(enc)?;
    rmp::encode::write_pfix(out, key::REQUEST_TYPE).map_err(enc)?;
    rmp::encode::write_uint(out, u64::from(ty)).map_err(enc)?;
    rmp::encode::write_pfix(out, key::SYNC).map_err(enc)?;
    rmp::encode::write_uint(out, sync).map_err(enc)?;
    rmp::encode::write_map_len(out, body_len).map_err(enc)?;
    Ok(start)
}

/// Writes the length prefix of the frame begun at `start`.
fn finish(out: &mut [u8], start: usize) -> Result<(), Error> {
    let len = u32::try_from(out.len() - start - 5)
        .map_err(|_| Error::Encode("request larger than 4 GiB".into()))?;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_uint(out: &mut Vec<u8>, k: u8, v: u64) -> Result<(), Error> {
    rmp::encode::write_pfix(out, k).map_err(enc)?;
    rmp::encode::write_uint(out, v).map_err(enc)?;
    Ok(())
}

fn put_str(out: &mut Vec<u8>, k: u8, v: &str) -> Result<(), Error> {
    rmp::encode::write_pfix(out, k).map_err(enc)?;
    rmp::encode::write_str(out, v).map_err(enc)?;
    Ok(())
}

/// Serializes a caller's value, which must come out as a msgpack array
/// (a tuple, key, argument list or list of operations). A unit `()`
/// (msgpack nil) stands for the empty array.
fn put_array<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    k: u8,
    what: &str,
    v: &T,
) -> Result<(), Error> {
    rmp::encode::write_pfix(out, k).map_err(enc)?;
    let at = out.len();
    rmp_serde::encode::write(out, v).map_err(|e| Error::Encode(format!("{what}: {e}")))?;
    match out.get(at..) {
        Some([0xc0]) => out[at] = 0x90,
        Some([0x90..=0x9f | 0xdc | 0xdd, ..]) => {}
        _ => {
            return Err(Error::Encode(format!(
                "{what} must serialize to a msgpack array (a tuple, slice or Vec)"
            )))
        }
    }
    Ok(())
}

pub(crate) fn encode_ping(out: &mut Vec<u8>, sync: u64) -> Result<(), Error> {
    let start = begin(out, request::PING, sync, 0)?;
    finish(out, start)
}

pub(crate) fn encode_auth(
    out: &mut Vec<u8>,
    sync: u64,
    user: &str,
    scramble: &[u8; 20],
) -> Result<(), Error> {
    let start = begin(out, request::AUTH, sync, 2)?;
    put_str(out, key::USER_NAME, user)?;
    rmp::encode::write_pfix(out, key::TUPLE).map_err(enc)?;
    rmp::encode::write_array_len(out, 2).map_err(enc)?;
    rmp::encode::write_str(out, "chap-sha1").map_err(enc)?;
    // As a string of 20 raw bytes, as 2.x's own connector sends it.
    rmp::encode::write_str_len(out, 20).map_err(enc)?;
    out.extend_from_slice(scramble);
    finish(out, start)
}

/// What a SELECT asks for besides the space and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SelectArgs {
    pub(crate) index: u32,
    pub(crate) iterator: u8,
    pub(crate) limit: u32,
    pub(crate) offset: u32,
}

pub(crate) fn encode_select<K: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    space: u32,
    args: SelectArgs,
    key: &K,
) -> Result<(), Error> {
    let start = begin(out, request::SELECT, sync, 6)?;
    put_uint(out, key::SPACE_ID, space.into())?;
    put_uint(out, key::INDEX_ID, args.index.into())?;
    put_uint(out, key::LIMIT, args.limit.into())?;
    put_uint(out, key::OFFSET, args.offset.into())?;
    put_uint(out, key::ITERATOR, args.iterator.into())?;
    put_array(out, key::KEY, "key", key)?;
    finish(out, start)
}

/// INSERT or REPLACE (`ty`).
pub(crate) fn encode_store<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    ty: u8,
    space: u32,
    tuple: &T,
) -> Result<(), Error> {
    let start = begin(out, ty, sync, 2)?;
    put_uint(out, key::SPACE_ID, space.into())?;
    put_array(out, key::TUPLE, "tuple", tuple)?;
    finish(out, start)
}

pub(crate) fn encode_delete<K: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    space: u32,
    index: u32,
    key: &K,
) -> Result<(), Error> {
    let start = begin(out, request::DELETE, sync, 3)?;
    put_uint(out, key::SPACE_ID, space.into())?;
    put_uint(out, key::INDEX_ID, index.into())?;
    put_array(out, key::KEY, "key", key)?;
    finish(out, start)
}

/// UPDATE: the operations go under `TUPLE`; field numbers in them are
/// 1-based (`INDEX_BASE` 1), as in Lua.
pub(crate) fn encode_update<K: Serialize + ?Sized, O: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    space: u32,
    index: u32,
    key: &K,
    ops: &O,
) -> Result<(), Error> {
    let start = begin(out, request::UPDATE, sync, 5)?;
    put_uint(out, key::SPACE_ID, space.into())?;
    put_uint(out, key::INDEX_ID, index.into())?;
    put_uint(out, key::INDEX_BASE, 1)?;
    put_array(out, key::KEY, "key", key)?;
    put_array(out, key::TUPLE, "operations", ops)?;
    finish(out, start)
}

/// UPSERT: the tuple under `TUPLE`, the operations under `OPS`; field
/// numbers in them are 1-based (`INDEX_BASE` 1), as in Lua.
pub(crate) fn encode_upsert<T: Serialize + ?Sized, O: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    space: u32,
    tuple: &T,
    ops: &O,
) -> Result<(), Error> {
    let start = begin(out, request::UPSERT, sync, 4)?;
    put_uint(out, key::SPACE_ID, space.into())?;
    put_uint(out, key::INDEX_BASE, 1)?;
    put_array(out, key::TUPLE, "tuple", tuple)?;
    put_array(out, key::OPS, "operations", ops)?;
    finish(out, start)
}

pub(crate) fn encode_call<A: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    function: &str,
    args: &A,
) -> Result<(), Error> {
    let start = begin(out, request::CALL, sync, 2)?;
    put_str(out, key::FUNCTION_NAME, function)?;
    put_array(out, key::TUPLE, "arguments", args)?;
    finish(out, start)
}

pub(crate) fn encode_eval<A: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    sync: u64,
    expr: &str,
    args: &A,
) -> Result<(), Error> {
    let start = begin(out, request::EVAL, sync, 2)?;
    put_str(out, key::EXPR, expr)?;
    put_array(out, key::TUPLE, "arguments", args)?;
    finish(out, start)
}

// ---------------------------------------------------------------- framing

/// Cuts the next whole response out of `buf`, without its length prefix.
/// `Ok(None)` means more bytes are needed (room for them is reserved).
/// A frame longer than `max` is refused before anything is allocated.
pub(crate) fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let prefix = match first {
        0x00..=0x7f => 1,
        0xcc => 2,
        0xcd => 3,
        0xce => 5,
        0xcf => 9,
        _ => {
            return Err(DecodeError::Malformed(
                "length prefix is not an unsigned integer",
            ))
        }
    };
    if buf.len() < prefix {
        return Ok(None);
    }
    let len = match read_uint(&mut &buf[..prefix]) {
        Ok(len) => len,
        Err(_) => return Err(DecodeError::Malformed("length prefix")),
    };
    if len > max as u64 {
        return Err(DecodeError::FrameTooLarge { len, max });
    }
    // `len <= max` fits in usize.
    let total = prefix + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(prefix);
    Ok(Some(buf.split_to(len as usize).freeze()))
}

// ---------------------------------------------------------------- responses

/// One decoded response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) sync: u64,
    /// 0 when the header had none.
    pub(crate) schema_version: u64,
    pub(crate) body: Body,
}

/// What a response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// Success; where the `DATA` value lies in the frame, if there is one.
    Ok(Option<Range<usize>>),
    /// An error: its code (without the 0x8000 bit) and message.
    Error { code: u32, message: String },
    /// An out-of-band push; the final response follows.
    Push,
    /// A code this client does not know.
    Unknown(u64),
}

fn malformed<E>(what: &'static str) -> impl FnOnce(E) -> DecodeError {
    move |_| DecodeError::Malformed(what)
}

fn read_uint(rd: &mut &[u8]) -> Result<u64, DecodeError> {
    rmp::decode::read_int::<u64, _>(rd).map_err(malformed("expected an unsigned integer"))
}

fn read_map_len(rd: &mut &[u8]) -> Result<u32, DecodeError> {
    rmp::decode::read_map_len(rd).map_err(malformed("expected a map"))
}

fn read_array_len(rd: &mut &[u8]) -> Result<u32, DecodeError> {
    rmp::decode::read_array_len(rd).map_err(malformed("expected an array"))
}

fn take<'a>(rd: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if rd.len() < n {
        return Err(DecodeError::Malformed(
            "value runs past the end of the frame",
        ));
    }
    let (head, tail) = rd.split_at(n);
    *rd = tail;
    Ok(head)
}

fn be_len(rd: &mut &[u8], n: usize) -> Result<usize, DecodeError> {
    Ok(take(rd, n)?
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)))
}

fn read_string(rd: &mut &[u8]) -> Result<String, DecodeError> {
    let len = rmp::decode::read_str_len(rd).map_err(malformed("expected a string"))?;
    Ok(String::from_utf8_lossy(take(rd, len as usize)?).into_owned())
}

/// Skips one msgpack value of any type, iteratively (no recursion, so no
/// stack to exhaust on deeply nested input).
fn skip_value(rd: &mut &[u8]) -> Result<(), DecodeError> {
    let mut left: usize = 1;
    while left > 0 {
        left -= 1;
        let marker = Marker::from_u8(take(rd, 1)?[0]);
        let (bytes, items) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::Reserved => return Err(DecodeError::Malformed("reserved marker 0xc1")),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (usize::from(n), 0),
            Marker::Str8 | Marker::Bin8 => (be_len(rd, 1)?, 0),
            Marker::Str16 | Marker::Bin16 => (be_len(rd, 2)?, 0),
            Marker::Str32 | Marker::Bin32 => (be_len(rd, 4)?, 0),
            Marker::FixArray(n) => (0, usize::from(n)),
            Marker::Array16 => (0, be_len(rd, 2)?),
            Marker::Array32 => (0, be_len(rd, 4)?),
            Marker::FixMap(n) => (0, 2 * usize::from(n)),
            Marker::Map16 => (0, 2 * be_len(rd, 2)?),
            Marker::Map32 => (0, be_len(rd, 4)?.saturating_mul(2)),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (be_len(rd, 1)? + 1, 0),
            Marker::Ext16 => (be_len(rd, 2)? + 1, 0),
            Marker::Ext32 => (be_len(rd, 4)?.saturating_add(1), 0),
        };
        take(rd, bytes)?;
        left = left.saturating_add(items);
        // Every value takes at least one byte.
        if left > rd.len() {
            return Err(DecodeError::Malformed(
                "value runs past the end of the frame",
            ));
        }
    }
    Ok(())
}

/// Decodes a frame cut by [`next_frame`]: the header, then the body.
pub(crate) fn decode_response(frame: &[u8]) -> Result<Response, DecodeError> {
    let rd = &mut &frame[..];
    let mut code = None;
    let mut sync = None;
    let mut schema_version = 0;
    for _ in 0..read_map_len(rd)? {
        match read_uint(rd)? {
            k if k == u64::from(key::REQUEST_TYPE) => code = Some(read_uint(rd)?),
            k if k == u64::from(key::SYNC) => sync = Some(read_uint(rd)?),
            k if k == u64::from(key::SCHEMA_VERSION) => schema_version = read_uint(rd)?,
            _ => skip_value(rd)?,
        }
    }
    let code = code.ok_or(DecodeError::Malformed("header without a code"))?;
    let sync = sync.ok_or(DecodeError::Malformed("header without a sync"))?;

    let mut data = None;
    let mut message_24 = None;
    let mut message_stack = None;
    if !rd.is_empty() {
        for _ in 0..read_map_len(rd)? {
            match read_uint(rd)? {
                k if k == u64::from(key::DATA) => {
                    let from = frame.len() - rd.len();
                    skip_value(rd)?;
                    data = Some(from..frame.len() - rd.len());
                }
                k if k == u64::from(key::ERROR_24) => message_24 = Some(read_string(rd)?),
                k if k == u64::from(key::ERROR) => message_stack = error_stack_message(rd)?,
                _ => skip_value(rd)?,
            }
        }
    }
    if !rd.is_empty() {
        return Err(DecodeError::Malformed("bytes after the body"));
    }
    let body = if code == 0 {
        Body::Ok(data)
    } else if code & CODE_ERROR != 0 {
        Body::Error {
            code: (code & 0x7fff) as u32,
            message: message_24.or(message_stack).unwrap_or_default(),
        }
    } else if code == CODE_PUSH {
        Body::Push
    } else {
        Body::Unknown(code)
    };
    Ok(Response {
        sync,
        schema_version,
        body,
    })
}

/// The message of the first entry of an extended error (`ERROR`, 0x52):
/// `{STACK: [{.., MESSAGE: str, ..}, ..]}`.
fn error_stack_message(rd: &mut &[u8]) -> Result<Option<String>, DecodeError> {
    let mut message = None;
    for _ in 0..read_map_len(rd)? {
        if read_uint(rd)? != u64::from(key::ERROR_STACK) {
            skip_value(rd)?;
            continue;
        }
        for _ in 0..read_array_len(rd)? {
            for _ in 0..read_map_len(rd)? {
                if read_uint(rd)? == u64::from(key::ERROR_MESSAGE) && message.is_none() {
                    message = Some(read_string(rd)?);
                } else {
                    skip_value(rd)?;
                }
            }
        }
    }
    Ok(message)
}

/// The first field of the first tuple in a `DATA` value, as a `u32`
/// (a space id from `_vspace`); `None` when there is no tuple.
pub(crate) fn first_field_u32(data: &[u8]) -> Result<Option<u32>, DecodeError> {
    let rd = &mut &data[..];
    if read_array_len(rd)? == 0 {
        return Ok(None);
    }
    if read_array_len(rd)? == 0 {
        return Err(DecodeError::Malformed("empty tuple"));
    }
    let v = read_uint(rd)?;
    u32::try_from(v)
        .map(Some)
        .map_err(|_| DecodeError::Malformed("space id out of range"))
}

// ---------------------------------------------------------------- fuzzing

/// The response path as the client runs it, for the fuzz targets in
/// `fuzz/` (feature `fuzzing`; not part of the API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;

    use super::{decode_response, first_field_u32, next_frame, parse_greeting, scramble, Body};
    use crate::error::DecodeError;

    /// Feeds `stream` to the framer `chunk` bytes at a time (as reads
    /// would bring it) and decodes every frame cut, as the client's reader
    /// and `dispatch` do, until the stream ends or an error would close
    /// the connection. Returns what each frame decoded to, then the error
    /// if there was one, as text: the same stream read in other chunks
    /// must give the same list.
    pub fn responses(stream: &[u8], chunk: usize, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for piece in stream.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match next_frame(&mut buf, max) {
                    Ok(Some(frame)) => {
                        assert!(frame.len() <= max, "a frame longer than max was cut");
                        match decode_response(&frame) {
                            Ok(r) => {
                                if let Body::Ok(Some(range)) = &r.body {
                                    // Where the client slices the reply's data.
                                    let data = &frame[range.clone()];
                                    let _ = first_field_u32(data);
                                }
                                out.push(format!("{r:?}"));
                            }
                            Err(e) => {
                                out.push(format!("{e:?}"));
                                return out;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(format!("{e:?}"));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Parses a greeting and, if it is one, computes the auth scramble
    /// from its salt.
    pub fn greeting(buf: &[u8]) -> Result<(), DecodeError> {
        let g = parse_greeting(buf)?;
        let _ = scramble(&g.salt, "secret");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greeting as Tarantool 2.6.0 sends it (salt from a real server).
    fn greeting_bytes(salt_b64: &str) -> Vec<u8> {
        let mut g = Vec::new();
        let mut l1 = b"Tarantool 2.6.0 (Binary) 7b1a3b2e-2d8c-4f0e-9c51-8a7e7f3d6f11".to_vec();
        l1.resize(63, b' ');
        l1.push(b'\n');
        let mut l2 = salt_b64.as_bytes().to_vec();
        l2.resize(63, b' ');
        l2.push(b'\n');
        g.extend(l1);
        g.extend(l2);
        g
    }

    const SALT_TEXT: &str = "5c7QmaxO5xpcVUVu3UvjNXNTTGHrb5vjDR0A6Z/k6r8=";

    #[test]
    fn parses_greeting() {
        let g = parse_greeting(&greeting_bytes(SALT_TEXT)).expect("greeting");
        assert_eq!(
            g.version,
            "Tarantool 2.6.0 (Binary) 7b1a3b2e-2d8c-4f0e-9c51-8a7e7f3d6f11"
        );
        assert_eq!(g.salt.len(), 32);
        // python3: base64.b64decode(SALT_TEXT)[:4].hex()
        assert_eq!(&g.salt[..4], &[0xe5, 0xce, 0xd0, 0x99]);
        assert_eq!(&g.salt[30..], &[0xea, 0xbf]);
    }

    #[test]
    fn refuses_bad_greetings() {
        let good = greeting_bytes(SALT_TEXT);
        assert!(parse_greeting(&good[..127]).is_err());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(parse_greeting(&bad).is_err());
        let mut bad = good.clone();
        bad[63] = b' ';
        assert!(parse_greeting(&bad).is_err());
        assert!(parse_greeting(&greeting_bytes("!!!notbase64")).is_err());
        assert!(parse_greeting(&greeting_bytes("c2hvcnQ=")).is_err());
        assert!(parse_greeting(&[0xff; 128]).is_err());
    }

    #[test]
    fn base64_vectors() {
        assert_eq!(base64_decode(b"").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode(b"Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode(b"Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64_decode(b"Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64_decode(b"Zm9vYg").as_deref(), Some(&b"foob"[..]));
        assert_eq!(
            base64_decode(b"+/+/").as_deref(),
            Some(&[0xfb, 0xff, 0xbf][..])
        );
        assert_eq!(base64_decode(b"Zg=").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode(b"Zh==").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode(b"Z"), None);
        assert_eq!(base64_decode(b"Zm9v-g=="), None);
        assert_eq!(base64_decode(b"Zm9vYg==="), None);
        assert_eq!(base64_decode(b"Zm=9v"), None);
    }

    #[test]
    fn scramble_vector() {
        // Computed independently with python3:
        //   s1 = sha1(b"secret"); s2 = sha1(s1); s3 = sha1(salt[:20] + s2)
        //   bytes(a ^ b for a, b in zip(s1, s3)).hex()
        let salt = base64_decode(SALT_TEXT.as_bytes()).expect("salt");
        let s = scramble(&salt, "secret");
        assert_eq!(hex(&s), SCRAMBLE_SECRET);
    }

    const SCRAMBLE_SECRET: &str = "187dc16f60380579fbe0910da5cd04841ebde45f";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn encodes_ping_and_auth_byte_for_byte() {
        let mut out = Vec::new();
        encode_ping(&mut out, 7).expect("ping");
        // ce 00000006 | {REQUEST_TYPE: PING, SYNC: 7} | {}
        assert_eq!(out, [0xce, 0, 0, 0, 6, 0x82, 0x00, 0x40, 0x01, 0x07, 0x80]);

        let mut out = Vec::new();
        encode_auth(&mut out, 1, "u", &[0xab; 20]).expect("auth");
        let mut want = vec![0xce, 0, 0, 0, 0, 0x82, 0x00, 0x07, 0x01, 0x01, 0x82];
        want.extend([0x23, 0xa1, b'u', 0x21, 0x92, 0xa9]);
        want.extend(b"chap-sha1");
        want.push(0xb4);
        want.extend([0xab; 20]);
        let len = (want.len() - 5) as u8;
        want[4] = len;
        assert_eq!(out, want);
    }

    #[test]
    fn encodes_select_and_call() {
        let mut out = Vec::new();
        let args = SelectArgs {
            index: 2,
            iterator: 0,
            limit: 1,
            offset: 0,
        };
        encode_select(&mut out, 300, 281, args, &("shoal_log",)).expect("select");
        let mut want = vec![
            0xce, 0, 0, 0, 0, 0x82, 0x00, 0x01, 0x01, 0xcd, 0x01, 0x2c, 0x86,
        ];
        want.extend([
            0x10, 0xcd, 0x01, 0x19, 0x11, 0x02, 0x12, 0x01, 0x13, 0x00, 0x14, 0x00,
        ]);
        want.extend([0x20, 0x91, 0xa9]);
        want.extend(b"shoal_log");
        want[4] = (want.len() - 5) as u8;
        assert_eq!(out, want);

        let mut out = Vec::new();
        encode_call(&mut out, 2, "f", &()).expect("call with no arguments");
        let want = [
            0xce, 0, 0, 0, 11, 0x82, 0x00, 0x0a, 0x01, 0x02, 0x82, 0x22, 0xa1, b'f', 0x21, 0x90,
        ];
        assert_eq!(out, want);

        // A key that is not an array is refused, not sent.
        let mut out = Vec::new();
        assert!(matches!(
            encode_delete(&mut out, 3, 512, 0, &5u64),
            Err(Error::Encode(_))
        ));
    }

    /// A response as the server frames it: prefix, header, body.
    fn frame(header: &[u8], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0xce];
        f.extend(((header.len() + body.len()) as u32).to_be_bytes());
        f.extend(header);
        f.extend(body);
        f
    }

    // {code: 0, sync: 9, schema_version: 80}
    const OK_HEADER: [u8; 7] = [0x83, 0x00, 0x00, 0x01, 0x09, 0x05, 0x50];
    // {DATA: [[1, "a"]]}
    const DATA_BODY: [u8; 7] = [0x81, 0x30, 0x91, 0x92, 0x01, 0xa1, b'a'];

    #[test]
    fn decodes_a_response_split_across_reads() {
        let bytes = [frame(&OK_HEADER, &DATA_BODY), frame(&OK_HEADER, &[0x80])].concat();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = next_frame(&mut buf, 1 << 20).expect("frame") {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert!(buf.is_empty());
            let r = decode_response(&frames[0]).expect("response");
            assert_eq!(r.sync, 9);
            assert_eq!(r.schema_version, 80);
            let Body::Ok(Some(range)) = r.body else {
                panic!("no data: {:?}", r.body)
            };
            let tuples: Vec<(u32, String)> =
                rmp_serde::from_slice(&frames[0][range]).expect("tuples");
            assert_eq!(tuples, [(1, "a".to_string())]);
            assert_eq!(
                decode_response(&frames[1]).expect("empty body").body,
                Body::Ok(None)
            );
        }
    }

    #[test]
    fn decodes_errors_old_and_extended() {
        // {code: 0x8000|36, sync: 1}
        let header = [0x82, 0x00, 0xcd, 0x80, 0x24, 0x01, 0x01];
        // {ERROR_24: "no", ERROR: {STACK: [{TYPE: "ClientError", MESSAGE: "long"}]}}
        let mut body = vec![
            0x82, 0x31, 0xa2, b'n', b'o', 0x52, 0x81, 0x00, 0x91, 0x82, 0x00, 0xab,
        ];
        body.extend(b"ClientError");
        body.extend([0x03, 0xa4]);
        body.extend(b"long");
        let r = decode_response(&frame(&header, &body)[5..]).expect("error");
        assert_eq!(
            r.body,
            Body::Error {
                code: 36,
                message: "no".into()
            }
        );

        // Only the extended form: its first message is used.
        let mut ext_only = vec![0x81];
        ext_only.extend(&body[5..]);
        let r = decode_response(&frame(&header, &ext_only)[5..]).expect("error");
        assert_eq!(
            r.body,
            Body::Error {
                code: 36,
                message: "long".into()
            }
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let good = frame(&OK_HEADER, &DATA_BODY);
        // Every truncation of the frame's content is refused.
        // (At the header's end it is a valid response with no body.)
        for n in (0..good.len() - 5).filter(|&n| n != OK_HEADER.len()) {
            assert!(decode_response(&good[5..5 + n]).is_err(), "n={n}");
        }
        // A prefix that is not an unsigned integer.
        let mut buf = BytesMut::from(&[0xa3, 1, 2, 3][..]);
        assert!(next_frame(&mut buf, 1 << 20).is_err());
        // A frame over the limit is refused before it is read.
        let mut buf = BytesMut::from(&[0xce, 0x7f, 0, 0, 0][..]);
        assert_eq!(
            next_frame(&mut buf, 1 << 20),
            Err(DecodeError::FrameTooLarge {
                len: 0x7f00_0000,
                max: 1 << 20
            })
        );
        // Lengths that run past the end, deep nesting, bad markers.
        for body in [
            &[0x81, 0x30, 0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0x81, 0x30, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x'][..],
            &[0x81, 0x30, 0xc1][..],
            &[0x81, 0x31, 0x07][..],
            &[0x81, 0x52, 0x81, 0x00, 0x91, 0x81, 0x03, 0xc3][..],
            &[0x81, 0x30, 0xc7, 0xff, 0x01][..],
            &[0x80, 0x00][..],
            &[0x91; 64][..],
        ] {
            assert!(
                decode_response(&frame(&OK_HEADER, body)[5..]).is_err(),
                "{body:x?}"
            );
        }
        let deep = [[0x81u8, 0x30].as_slice(), &[0x91; 100_000], &[0x00]].concat();
        assert!(decode_response(&frame(&OK_HEADER, &deep)[5..]).is_ok());
        // Missing sync or code.
        assert!(decode_response(&[0x81, 0x00, 0x00]).is_err());
        assert!(decode_response(&[0x81, 0x01, 0x00]).is_err());
        // Pseudo-random garbage never panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut g = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                g.push((x >> 24) as u8);
            }
            let _ = decode_response(&g);
            let mut buf = BytesMut::from(&g[..]);
            while let Ok(Some(f)) = next_frame(&mut buf, 1 << 16) {
                let _ = decode_response(&f);
            }
        }
    }

    #[test]
    fn finds_space_id() {
        // [[512, 1, "shoal_log", ...]]
        let data = [0x91, 0x93, 0xcd, 0x02, 0x00, 0x01, 0xa1, b'x'];
        assert_eq!(first_field_u32(&data), Ok(Some(512)));
        assert_eq!(first_field_u32(&[0x90]), Ok(None));
        assert!(first_field_u32(&[0x91, 0x90]).is_err());
        assert!(first_field_u32(&[0x91]).is_err());
    }
}
