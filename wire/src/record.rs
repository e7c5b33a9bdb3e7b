//! The fixed-size record: what a filter says, and what the cluster carries.

use crate::error::RecordError;

/// Every record is exactly this many bytes on the wire and on the local
/// socket.
pub const RECORD_LEN: usize = 64;

/// What a record means. Codes are grouped in ranges so that a node can
/// classify a code it has never heard of (see `docs/wire.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Code(pub u16);

impl Code {
    /// Load gauge: `f0` resource id, `f1` the origin's current rate
    /// (requests/s), `f2` its local window in ms (informational).
    pub const LOAD: Code = Code(0x0001);
    /// Protection mode: `f0` resource id, `f1` level (0 withdraws this
    /// origin's claim); `ttl_ms` bounds how long the claim holds.
    pub const MODE: Code = Code(0x0002);
    /// Session mark: `f0` session key, `f1` mark ([`Record::MARK_LEGITIMATE`]
    /// or [`Record::MARK_SUSPICIOUS`]); `ttl_ms` bounds it.
    pub const SESSION_MARK: Code = Code(0x0003);
    /// Protection mode relayed from another cluster by this cluster's
    /// forwarder: `f0` resource id, `f1` level (0 withdraws), `f2` the
    /// claimant (`origin cluster << 32 | origin node`), `f3` the message's
    /// sequence in the origin cluster's queue (receivers apply each
    /// sequence once). `ttl_ms` as for [`Code::MODE`].
    pub const REMOTE_MODE: Code = Code(0x0004);
    /// Per-key rate: `f0` the table (`domain << 32 | id`), `f1` the key,
    /// `f2` the origin's own rate of hits of that key in thousandths of a
    /// hit per second, `f3` zero. `ttl_ms` (never 0) is how long receivers
    /// hold the rate; the sender repeats it sooner while the key is heavy.
    pub const KEY_RATE: Code = Code(0x0008);
    /// Block (drop in the kernel) an IPv4 or IPv6 prefix for `ttl_ms`
    /// (> 0): `f0`..`f2` the prefix, `f3` a short reason (see
    /// [`crate::Prefix`] and `docs/wire.md` 2.3).
    pub const BLOCK: Code = Code(0x0005);
    /// Lift a block: fields as [`Code::BLOCK`]; `ttl_ms` bounds how long
    /// the unblock is remembered (saved), so that it outlives the block.
    pub const UNBLOCK: Code = Code(0x0006);
    /// A block or unblock relayed from another cluster by this cluster's
    /// forwarder: `f0`..`f2` the prefix with the origin cluster in `f2`'s
    /// high half, `f3` the queue sequence; `ttl_ms` 0 means unblock.
    pub const REMOTE_BLOCK: Code = Code(0x0007);
    /// Local API only: cluster load of resource `f0`.
    pub const QUERY_LOAD: Code = Code(0x0101);
    /// Local API only: effective mode of resource `f0`.
    pub const QUERY_MODE: Code = Code(0x0102);
    /// Local API only: mark of session `f0`.
    pub const QUERY_SESSION: Code = Code(0x0103);
    /// Local API only: count `f2` hits of key `f1` under limit `f0` and
    /// decide (see `docs/local-api.md`).
    pub const QUERY_LIMIT: Code = Code(0x0104);
    /// Local API only: the reply to a request that could not be served;
    /// `f0` holds the reason (see `docs/local-api.md`).
    pub const REPLY_ERROR: Code = Code(0x01ff);
    /// First code of the extension range, carried and counted but not
    /// interpreted by this version.
    pub const EXTENSION_FIRST: u16 = 0x8000;

    /// Classifies the code.
    pub fn kind(self) -> CodeKind {
        match self.0 {
            0x0001 => CodeKind::Load,
            0x0002 => CodeKind::Mode,
            0x0003 => CodeKind::SessionMark,
            0x0004 => CodeKind::RemoteMode,
            0x0008 => CodeKind::KeyRate,
            0x0005 => CodeKind::Block,
            0x0006 => CodeKind::Unblock,
            0x0007 => CodeKind::RemoteBlock,
            0x0101 => CodeKind::QueryLoad,
            0x0102 => CodeKind::QueryMode,
            0x0103 => CodeKind::QuerySession,
            0x0104 => CodeKind::QueryLimit,
            0x01ff => CodeKind::ReplyError,
            c if c >= Self::EXTENSION_FIRST => CodeKind::Extension,
            _ => CodeKind::Unknown,
        }
    }
}

/// The classes of [`Code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeKind {
    Load,
    Mode,
    SessionMark,
    RemoteMode,
    KeyRate,
    Block,
    Unblock,
    RemoteBlock,
    QueryLoad,
    QueryMode,
    QuerySession,
    QueryLimit,
    ReplyError,
    /// `0x8000..=0xffff`: application-defined, relayed as is.
    Extension,
    /// Anything else: reserved for future versions, skipped and counted.
    Unknown,
}

/// The operation a record asks for: send (multicast), save (persist) or
/// both. Stored as bit flags; other bits are invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Op(u8);

impl Op {
    pub const SEND: Op = Op(0x01);
    pub const SAVE: Op = Op(0x02);
    pub const SEND_SAVE: Op = Op(0x03);

    /// Parses the flag byte, rejecting unknown bits.
    pub fn from_bits(bits: u8) -> Result<Op, RecordError> {
        if bits & !0x03 != 0 {
            return Err(RecordError::UnknownOp(bits));
        }
        Ok(Op(bits))
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn sends(self) -> bool {
        self.0 & Self::SEND.0 != 0
    }

    pub fn saves(self) -> bool {
        self.0 & Self::SAVE.0 != 0
    }
}

/// One record. All integers are little-endian on the wire:
///
/// ```text
///  0 timing_us u64   8 seq u64   16 origin u32   20 ttl_ms u32
/// 24 code u16  26 op u8  27..32 reserved (zero)   32 fields [u64; 4]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Microseconds since the Unix epoch when the origin made the record.
    pub timing_us: u64,
    /// Per-origin record sequence, stamped by the origin's sidecar.
    pub seq: u64,
    /// Node id of the sidecar whose filter made the record.
    pub origin: u32,
    /// Lifetime in milliseconds; 0 means "no expiry meaning" for gauges.
    pub ttl_ms: u32,
    pub code: Code,
    pub op: Op,
    pub fields: [u64; 4],
}

impl Record {
    pub const MARK_LEGITIMATE: u64 = 1;
    pub const MARK_SUSPICIOUS: u64 = 2;

    /// A record with the given code and fields, operation SEND, everything
    /// else zero (the sidecar stamps origin, seq and timing).
    pub fn new(code: Code, fields: [u64; 4]) -> Record {
        Record {
            code,
            op: Op::SEND,
            fields,
            ..Record::default()
        }
    }

    /// Writes the record into exactly 64 bytes.
    #[inline]
    pub fn encode(&self, out: &mut [u8; RECORD_LEN]) {
        out[0..8].copy_from_slice(&self.timing_us.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.origin.to_le_bytes());
        out[20..24].copy_from_slice(&self.ttl_ms.to_le_bytes());
        out[24..26].copy_from_slice(&self.code.0.to_le_bytes());
        out[26] = self.op.0;
        out[27..32].fill(0);
        for (i, f) in self.fields.iter().enumerate() {
            let at = 32 + 8 * i;
            out[at..at + 8].copy_from_slice(&f.to_le_bytes());
        }
    }

    /// The record as a fresh 64-byte array.
    pub fn to_bytes(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        self.encode(&mut out);
        out
    }

    /// Reads a record from exactly 64 bytes. Unknown codes are not an
    /// error here (see [`Code::kind`]); unknown op bits and non-zero
    /// reserved bytes are.
    #[inline]
    pub fn decode(b: &[u8; RECORD_LEN]) -> Result<Record, RecordError> {
        if b[27..32] != [0u8; 5] {
            return Err(RecordError::Reserved);
        }
        let op = Op::from_bits(b[26])?;
        Ok(Record {
            timing_us: le64(b, 0),
            seq: le64(b, 8),
            origin: le32(b, 16),
            ttl_ms: le32(b, 20),
            code: Code(u16::from_le_bytes([b[24], b[25]])),
            op,
            fields: [le64(b, 32), le64(b, 40), le64(b, 48), le64(b, 56)],
        })
    }

    /// Reads a record from a slice that must be exactly 64 bytes long.
    pub fn decode_slice(b: &[u8]) -> Result<Record, RecordError> {
        let arr: &[u8; RECORD_LEN] = b.try_into().map_err(|_| RecordError::BadLength(b.len()))?;
        Record::decode(arr)
    }
}

#[inline]
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[inline]
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Record {
            timing_us: 0x0102_0304_0506_0708,
            seq: 42,
            origin: 7,
            ttl_ms: 5000,
            code: Code::MODE,
            op: Op::SEND_SAVE,
            fields: [1, 2, 3, u64::MAX],
        };
        assert_eq!(Record::decode(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn rejects_unknown_op_and_reserved() {
        let mut b = Record::new(Code::LOAD, [1, 2, 0, 0]).to_bytes();
        b[26] = 0x04;
        assert_eq!(Record::decode(&b), Err(RecordError::UnknownOp(0x04)));
        b[26] = 0x01;
        b[30] = 1;
        assert_eq!(Record::decode(&b), Err(RecordError::Reserved));
        assert_eq!(
            Record::decode_slice(&b[..63]),
            Err(RecordError::BadLength(63))
        );
    }

    #[test]
    fn code_ranges() {
        assert_eq!(Code(0x0001).kind(), CodeKind::Load);
        assert_eq!(Code(0x0005).kind(), CodeKind::Block);
        assert_eq!(Code(0x0008).kind(), CodeKind::KeyRate);
        assert_eq!(Code(0x0009).kind(), CodeKind::Unknown);
        assert_eq!(Code(0x0104).kind(), CodeKind::QueryLimit);
        assert_eq!(Code(0x7fff).kind(), CodeKind::Unknown);
        assert_eq!(Code(0x8000).kind(), CodeKind::Extension);
        assert_eq!(Code(0xffff).kind(), CodeKind::Extension);
    }
}
