//! Why a datagram or a record was rejected.

/// Why a datagram was rejected. Every variant is a counted, logged drop;
/// none of them ever changes cluster state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("datagram of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort { len: usize, min: usize },
    #[error("datagram of {len} bytes exceeds the {max}-byte maximum")]
    TooLong { len: usize, max: usize },
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("CRC32 mismatch: datagram says {stated:08x}, bytes give {computed:08x}")]
    BadCrc { stated: u32, computed: u32 },
    #[error("unknown header flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("non-zero reserved header bytes")]
    Reserved,
    #[error("length {len} does not match {count} records (expected {expected})")]
    BadLength {
        len: usize,
        count: u16,
        expected: usize,
    },
    #[error("datagram for cluster {got}, this node is in cluster {expected}")]
    WrongCluster { expected: u32, got: u32 },
    #[error("datagram carries no MAC but this cluster requires one")]
    MacMissing,
    #[error("datagram signed with unknown key id {0}")]
    UnknownKey(u8),
    #[error("MAC does not verify (forged, corrupted or wrong key)")]
    BadMac,
}

impl DecodeError {
    /// A short stable label, used as a metric label value.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::TooShort { .. } => "too_short",
            DecodeError::TooLong { .. } => "too_long",
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "unknown_version",
            DecodeError::BadCrc { .. } => "bad_crc",
            DecodeError::UnknownFlags(_) => "unknown_flags",
            DecodeError::Reserved => "reserved",
            DecodeError::BadLength { .. } => "bad_length",
            DecodeError::WrongCluster { .. } => "wrong_cluster",
            DecodeError::MacMissing => "mac_missing",
            DecodeError::UnknownKey(_) => "unknown_key",
            DecodeError::BadMac => "bad_mac",
        }
    }

    /// All labels, so a metrics page can list every reason, zeros included.
    pub const LABELS: [&'static str; 12] = [
        "too_short",
        "too_long",
        "bad_magic",
        "unknown_version",
        "bad_crc",
        "unknown_flags",
        "reserved",
        "bad_length",
        "wrong_cluster",
        "mac_missing",
        "unknown_key",
        "bad_mac",
    ];
}

/// Why a single record inside an otherwise valid datagram (or a local
/// request) was rejected. The record is skipped; its neighbours are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record is {0} bytes, records are exactly 64")]
    BadLength(usize),
    #[error("unknown operation flags {0:#04x}")]
    UnknownOp(u8),
    #[error("non-zero reserved record bytes")]
    Reserved,
}
