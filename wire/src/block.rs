//! The fields of the block records (`BLOCK`, `UNBLOCK`, `REMOTE_BLOCK`):
//! an IPv4 or IPv6 prefix, a short reason, and for a relayed block its
//! origin cluster and queue sequence (`docs/wire.md` section 2.3).
//!
//! ```text
//! f0  address bits 127..64 (IPv6 bytes 0..8, big-endian); 0 for IPv4
//! f1  address bits  63..0; IPv4 as ::ffff:a.b.c.d (0x0000_ffff_aabb_ccdd)
//! f2  bits 0..8 prefix length (0..=32 for IPv4, 0..=128 for IPv6),
//!     bits 8..16 family (4 or 6), bits 16..32 zero,
//!     bits 32..64 origin cluster (REMOTE_BLOCK only, else zero)
//! f3  BLOCK/UNBLOCK: reason, up to 8 printable ASCII bytes, first at the
//!     lowest address (f3's low byte), zero-padded;
//!     REMOTE_BLOCK: queue sequence (> 0)
//! ```
//!
//! Bits below the prefix length must be zero, and an IPv4-mapped IPv6
//! prefix (inside `::ffff:0:0/96`) is carried as IPv4 (family 4), never
//! family 6: every prefix has exactly one encoding.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network prefix with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// IPv6 address, or IPv4-mapped (`::ffff:a.b.c.d`) for IPv4.
    addr: u128,
    /// Prefix length on the family's own scale.
    len: u8,
    v4: bool,
}

const V4_MAPPED: u128 = 0xffff_0000_0000;

/// Why block fields or a prefix text are not a valid prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("family {0} is neither 4 nor 6")]
    Family(u8),
    #[error("prefix length {len} is longer than the {max} bits of the address")]
    Length { len: u8, max: u8 },
    #[error("an IPv4 prefix must be carried as ::ffff:a.b.c.d")]
    NotMapped,
    #[error("an IPv4-mapped IPv6 prefix is carried as IPv4 (family 4)")]
    Mapped,
    #[error("address has bits set below the /{0} prefix")]
    HostBits(u8),
    #[error("reserved bits of f2 are set")]
    Reserved,
    #[error("reason is not up to 8 printable ASCII bytes")]
    Reason,
    #[error("`{0}` is not an IPv4 or IPv6 address or prefix")]
    Syntax(String),
}

impl Prefix {
    /// The prefix of `ip` with `len` bits, host bits required to be zero.
    pub fn new(ip: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let p = Self::masked(ip, len)?;
        if p.addr != Self::raw(ip) {
            return Err(PrefixError::HostBits(len));
        }
        Ok(p)
    }

    /// The prefix of `ip` with `len` bits, host bits cleared.
    pub fn masked(ip: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let v4 = ip.is_ipv4();
        let max = if v4 { 32 } else { 128 };
        if len > max {
            return Err(PrefixError::Length { len, max });
        }
        let bits = if v4 { 96 + len as u32 } else { len as u32 };
        Ok(Prefix {
            addr: Self::raw(ip) & mask(bits),
            len,
            v4,
        })
    }

    fn raw(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => V4_MAPPED | u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    pub fn is_v4(&self) -> bool {
        self.v4
    }

    /// Prefix length on the family's scale.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The network address.
    pub fn ip(&self) -> IpAddr {
        if self.v4 {
            IpAddr::V4(Ipv4Addr::from(self.addr as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        }
    }

    /// First and last address of the prefix, on the 128-bit scale.
    pub fn range(&self) -> (u128, u128) {
        let bits = self.bits128();
        (self.addr, self.addr | !mask(bits))
    }

    fn bits128(&self) -> u32 {
        if self.v4 {
            96 + self.len as u32
        } else {
            self.len as u32
        }
    }

    /// Whether `other` is inside this prefix (or equal to it).
    pub fn contains(&self, other: &Prefix) -> bool {
        self.v4 == other.v4
            && self.len <= other.len
            && other.addr & mask(self.bits128()) == self.addr
    }

    /// `f0`, `f1`, `f2` of a record carrying this prefix; `cluster` goes in
    /// `f2`'s high half (a `REMOTE_BLOCK`'s origin cluster, else 0).
    pub fn to_fields(&self, cluster: u32) -> [u64; 3] {
        let family: u64 = if self.v4 { 4 } else { 6 };
        [
            (self.addr >> 64) as u64,
            self.addr as u64,
            self.len as u64 | family << 8 | (cluster as u64) << 32,
        ]
    }

    /// Reads `f0`, `f1`, `f2`: the prefix and the cluster in `f2`'s high
    /// half. Any non-canonical encoding is refused.
    pub fn from_fields(f0: u64, f1: u64, f2: u64) -> Result<(Prefix, u32), PrefixError> {
        if f2 & 0xffff_0000 != 0 {
            return Err(PrefixError::Reserved);
        }
        let len = f2 as u8;
        let family = (f2 >> 8) as u8;
        let addr = (f0 as u128) << 64 | f1 as u128;
        let ip = match family {
            4 if addr >> 32 == V4_MAPPED >> 32 => IpAddr::V4(Ipv4Addr::from(addr as u32)),
            4 => return Err(PrefixError::NotMapped),
            6 if len >= 96 && addr >> 32 == V4_MAPPED >> 32 => return Err(PrefixError::Mapped),
            6 => IpAddr::V6(Ipv6Addr::from(addr)),
            f => return Err(PrefixError::Family(f)),
        };
        Ok((Prefix::new(ip, len)?, (f2 >> 32) as u32))
    }
}

fn mask(bits: u32) -> u128 {
    match bits {
        0 => 0,
        b => u128::MAX << (128 - b.min(128)),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip(), self.len)
    }
}

/// The host prefix of an address (/32 or /128).
impl From<std::net::Ipv4Addr> for Prefix {
    fn from(a: Ipv4Addr) -> Prefix {
        Prefix {
            addr: V4_MAPPED | u32::from(a) as u128,
            len: 32,
            v4: true,
        }
    }
}

/// `ADDR` (a host: /32 or /128) or `ADDR/LEN`, host bits required zero;
/// an IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d`, /96 or longer) reads as
/// the IPv4 prefix it is.
impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let syntax = || PrefixError::Syntax(s.chars().take(64).collect());
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| syntax())?;
        let len = match len {
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        // `::ffff:a.b.c.d/96+n` is the IPv4 prefix `a.b.c.d/n`: the kernel
        // sees those packets as IPv4, so that is the set and the allowlist
        // it belongs to.
        match ip {
            IpAddr::V6(v6) if len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Prefix::new(IpAddr::V4(v4), len - 96),
                None => Prefix::new(ip, len),
            },
            _ => Prefix::new(ip, len),
        }
    }
}

/// A block's reason: up to 8 printable ASCII bytes packed in a `u64`,
/// the first byte lowest.
pub fn reason_to_field(reason: &str) -> Result<u64, PrefixError> {
    let b = reason.as_bytes();
    if b.len() > 8 || !b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(PrefixError::Reason);
    }
    let mut out = [0u8; 8];
    out[..b.len()].copy_from_slice(b);
    Ok(u64::from_le_bytes(out))
}

/// Reads a reason field: printable ASCII then only zero bytes.
pub fn reason_from_field(f: u64) -> Result<String, PrefixError> {
    let b = f.to_le_bytes();
    let n = b.iter().position(|&c| c == 0).unwrap_or(8);
    if b[n..].iter().any(|&c| c != 0) || !b[..n].iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(PrefixError::Reason);
    }
    Ok(b[..n].iter().map(|&c| c as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_round_trips_fields() {
        for s in [
            "192.0.2.0/24",
            "192.0.2.7/32",
            "2001:db8::/32",
            "::/0",
            "0.0.0.0/0",
        ] {
            let p: Prefix = s.parse().expect(s);
            assert_eq!(p.to_string(), s);
            let [f0, f1, f2] = p.to_fields(0);
            assert_eq!(Prefix::from_fields(f0, f1, f2), Ok((p, 0)));
        }
        let host: Prefix = "198.51.100.9".parse().expect("host");
        assert_eq!(host.to_string(), "198.51.100.9/32");
        assert_eq!(host.to_fields(7)[1], 0x0000_ffff_c633_6409);
        assert_eq!(host.to_fields(7)[2], 32 | 4 << 8 | 7 << 32);
    }

    #[test]
    fn refuses_non_canonical_input() {
        assert_eq!(
            "192.0.2.1/24".parse::<Prefix>(),
            Err(PrefixError::HostBits(24))
        );
        assert_eq!(
            "192.0.2.0/33".parse::<Prefix>(),
            Err(PrefixError::Length { len: 33, max: 32 })
        );
        assert!(matches!(
            "192.0.2.0/+8".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            "example.com".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        // IPv4 family with an address that is not IPv4-mapped.
        assert_eq!(
            Prefix::from_fields(1, 0xffff_c000_0200, 24 | 4 << 8),
            Err(PrefixError::NotMapped)
        );
        assert_eq!(
            Prefix::from_fields(0, 0, 5 << 8),
            Err(PrefixError::Family(5))
        );
        assert_eq!(
            Prefix::from_fields(0, 0, 6 << 8 | 1 << 16),
            Err(PrefixError::Reserved)
        );
        assert_eq!(
            Prefix::from_fields(0, 1, 64 | 6 << 8),
            Err(PrefixError::HostBits(64))
        );
    }

    /// Red team: `::ffff:a.b.c.d` is an IPv4 host, but it was read as an
    /// IPv6 prefix: a block of it went into the IPv6 set and dropped
    /// nothing, it passed an IPv4 allowlist (families never contain each
    /// other), and an allowlist entry written that way protected nothing.
    #[test]
    fn ipv4_mapped_text_is_ipv4_and_its_v6_encoding_is_refused() {
        for (mapped, v4) in [
            ("::ffff:192.0.2.7", "192.0.2.7/32"),
            ("::ffff:127.0.0.1/128", "127.0.0.1/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
        ] {
            let p: Prefix = mapped.parse().expect(mapped);
            assert!(p.is_v4(), "{mapped}");
            assert_eq!(p.to_string(), v4);
        }
        let lo: Prefix = "127.0.0.0/8".parse().expect("lo");
        assert!(lo.contains(&"::ffff:127.0.0.1".parse().expect("mapped")));
        // Broader than the mapped range: stays IPv6.
        assert!(!"::fffe:0:0/95".parse::<Prefix>().expect("v6").is_v4());
        // The same host as family 6 on the wire: a second encoding.
        let ip: Ipv6Addr = "::ffff:192.0.2.7".parse().expect("ip");
        let a = u128::from(ip);
        assert_eq!(
            Prefix::from_fields((a >> 64) as u64, a as u64, 128 | 6 << 8),
            Err(PrefixError::Mapped)
        );
        assert_eq!(
            Prefix::from_fields(0, 0xffff_0000_0000, 96 | 6 << 8),
            Err(PrefixError::Mapped)
        );
        assert!(Prefix::from_fields(0, 0, 95 | 6 << 8).is_ok());
    }

    #[test]
    fn containment_and_ranges() {
        let a: Prefix = "10.0.0.0/8".parse().expect("a");
        let b: Prefix = "10.1.0.0/16".parse().expect("b");
        let c: Prefix = "::10.1.0.0/112".parse().expect("c");
        assert!(a.contains(&b) && !b.contains(&a) && a.contains(&a));
        assert!(!a.contains(&c), "families never contain each other");
        let (lo, hi) = b.range();
        assert_eq!(hi - lo, 0xffff);
    }

    #[test]
    fn reasons() {
        let f = reason_to_field("scan").expect("ok");
        assert_eq!(f, u64::from_le_bytes(*b"scan\0\0\0\0"));
        assert_eq!(reason_from_field(f).as_deref(), Ok("scan"));
        assert_eq!(reason_from_field(0).as_deref(), Ok(""));
        assert_eq!(reason_to_field("ninechars"), Err(PrefixError::Reason));
        assert_eq!(reason_to_field("tab\t"), Err(PrefixError::Reason));
        assert_eq!(
            reason_from_field(u64::from_le_bytes(*b"a\0b\0\0\0\0\0")),
            Err(PrefixError::Reason)
        );
    }
}
