//! Signed session tokens: the verdict a node hands the browser as a
//! cookie, which a node of any cluster can check on its own, before the
//! verdict store has replicated (plain logic: no clock, no I/O).
//!
//! A token is 40 bytes, base64url without padding (54 characters):
//!
//! | bytes  | field                                      |
//! |--------|--------------------------------------------|
//! | 0      | version, 1                                 |
//! | 1      | key id                                     |
//! | 2..6   | issuing cluster, u32 LE                    |
//! | 6..14  | subject (session or user key), u64 LE      |
//! | 14     | verdict: 1 human, 2 bot                    |
//! | 15     | score, 0..=100                             |
//! | 16..24 | expiry, Unix seconds, u64 LE               |
//! | 24..40 | HMAC-SHA256(secret of key id, bytes 0..24), first 16 bytes |
//!
//! Two keys are accepted at once (current and previous) so keys can be
//! rotated without logging every browser out; tokens are minted with the
//! current one.

use base64::engine::GeneralPurpose;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const BODY: usize = 24;
const TAG: usize = 16;
/// Bytes of a token before base64url.
pub const TOKEN_BYTES: usize = BODY + TAG;
/// Characters of a token (base64url, no padding).
pub const TOKEN_CHARS: usize = (TOKEN_BYTES * 4).div_ceil(3);

/// What a token says about its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Human = 1,
    Bot = 2,
}

impl Verdict {
    fn from_byte(b: u8) -> Option<Verdict> {
        match b {
            1 => Some(Verdict::Human),
            2 => Some(Verdict::Bot),
            _ => None,
        }
    }
}

/// The signed content of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub cluster: u32,
    pub subject: u64,
    pub verdict: Verdict,
    /// 0..=100; how sure the source was.
    pub score: u8,
    pub expires_s: u64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token: {0}")]
    Malformed(&'static str),
    #[error("token version {0} is not supported")]
    Version(u8),
    #[error("token signed with key {0}, which is not active")]
    UnknownKey(u8),
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired at {0} (Unix seconds)")]
    Expired(u64),
}

/// Why keys could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("token secret {0} is shorter than 16 bytes")]
    Short(u8),
    #[error("current and previous token keys share id {0}")]
    SameId(u8),
}

#[derive(Clone)]
struct Key {
    id: u8,
    mac: HmacSha256,
}

/// The active token keys of a node.
#[derive(Clone)]
pub struct TokenKeys {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| k.id))
            .finish()
    }
}

fn key(id: u8, secret: &[u8]) -> Result<Key, KeyError> {
    if secret.len() < 16 {
        return Err(KeyError::Short(id));
    }
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| KeyError::Short(id))?;
    Ok(Key { id, mac })
}

impl TokenKeys {
    pub fn new(current: (u8, &[u8]), previous: Option<(u8, &[u8])>) -> Result<TokenKeys, KeyError> {
        if let Some((p, _)) = previous {
            if p == current.0 {
                return Err(KeyError::SameId(p));
            }
        }
        Ok(TokenKeys {
            current: key(current.0, current.1)?,
            previous: previous.map(|(id, s)| key(id, s)).transpose()?,
        })
    }

    /// A token for `claims`, signed with the current key.
    pub fn mint(&self, claims: &Claims) -> String {
        let mut b = [0u8; TOKEN_BYTES];
        b[0] = VERSION;
        b[1] = self.current.id;
        b[2..6].copy_from_slice(&claims.cluster.to_le_bytes());
        b[6..14].copy_from_slice(&claims.subject.to_le_bytes());
        b[14] = claims.verdict as u8;
        b[15] = claims.score.min(100);
        b[16..24].copy_from_slice(&claims.expires_s.to_le_bytes());
        let mut mac = self.current.mac.clone();
        mac.update(&b[..BODY]);
        let tag = mac.finalize().into_bytes();
        b[BODY..].copy_from_slice(&tag[..TAG]);
        B64.encode(b)
    }

    /// The claims of a valid, unexpired token (`now_s`: Unix seconds).
    /// Cheap checks first; the signature is checked before the content is
    /// trusted, in constant time.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() != TOKEN_CHARS {
            return Err(TokenError::Malformed("wrong length"));
        }
        let mut b = [0u8; TOKEN_BYTES];
        // 54 characters are 40 bytes and 4 spare bits: the length check
        // above makes the buffer exactly the right size.
        match B64.decode_slice(token.as_bytes(), &mut b) {
            Ok(TOKEN_BYTES) => {}
            _ => return Err(TokenError::Malformed("not base64url")),
        }
        if b[0] != VERSION {
            return Err(TokenError::Version(b[0]));
        }
        let key = if b[1] == self.current.id {
            &self.current
        } else {
            match &self.previous {
                Some(k) if k.id == b[1] => k,
                _ => return Err(TokenError::UnknownKey(b[1])),
            }
        };
        let mut mac = key.mac.clone();
        mac.update(&b[..BODY]);
        mac.verify_truncated_left(&b[BODY..])
            .map_err(|_| TokenError::BadSignature)?;
        let verdict = Verdict::from_byte(b[14]).ok_or(TokenError::Malformed("verdict"))?;
        let le64 = |r: std::ops::Range<usize>| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[r]);
            u64::from_le_bytes(x)
        };
        let claims = Claims {
            cluster: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
            subject: le64(6..14),
            verdict,
            score: b[15],
            expires_s: le64(16..24),
        };
        if claims.expires_s <= now_s {
            return Err(TokenError::Expired(claims.expires_s));
        }
        Ok(claims)
    }
}

/// base64url (RFC 4648 section 5) without padding. The engine refuses
/// `=`, characters outside the alphabet and non-zero spare bits in the
/// last character, so a token has exactly one spelling.
const B64: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600;
    /// `keys().mint(&claims())` as the hand-written codec wrote it.
    const KNOWN: &str = "AQIHAAAADfD-yu--rd4BXRDHVWkAAAAA3F_J1ORnX_93TRjwUHoiuw";

    fn keys() -> TokenKeys {
        TokenKeys::new(
            (2, b"current token secret!"),
            Some((1, b"previous token secret")),
        )
        .expect("keys")
    }

    fn claims() -> Claims {
        Claims {
            cluster: 7,
            subject: 0xdead_beef_cafe_f00d,
            verdict: Verdict::Human,
            score: 93,
            expires_s: NOW + 3600,
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let t = keys().mint(&claims());
        assert_eq!(t.len(), TOKEN_CHARS);
        assert!(t
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(keys().verify(&t, NOW), Ok(claims()));
    }

    #[test]
    fn base64url_matches_the_rfc_alphabet() {
        assert_eq!(B64.encode(b"\xfb\xff\xbf"), "-_-_");
        assert_eq!(B64.encode(b"foob"), "Zm9vYg");
        let mut out = [0u8; 4];
        assert_eq!(B64.decode_slice(b"Zm9vYg", &mut out), Ok(4));
        assert_eq!(&out, b"foob");
        assert!(
            B64.decode_slice(b"Zm9vYh", &mut out).is_err(),
            "non-zero spare bits"
        );
        assert!(B64.decode_slice(b"Zm9vY=", &mut out).is_err());
        assert!(B64.decode_slice(b"Zm9vYg==", &mut out).is_err());
        assert!(
            B64.decode_slice(b"Zm9v+g", &mut out).is_err(),
            "not url-safe"
        );
    }

    /// A token minted before the codec moved to the `base64` crate, byte
    /// for byte: the wire format did not change.
    #[test]
    fn known_token_vector() {
        let t = keys().mint(&claims());
        assert_eq!(t, KNOWN);
        assert_eq!(keys().verify(KNOWN, NOW), Ok(claims()));
        // The same token with the spare bits of its last character set
        // decodes to the same bytes with a hand-written decoder that does
        // not check them: it must be refused (one spelling per token).
        let last = KNOWN.as_bytes()[TOKEN_CHARS - 1];
        let pos = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            .iter()
            .position(|&c| c == last)
            .expect("alphabet");
        assert_eq!(pos & 0x0f, 0, "40 bytes leave 4 spare bits");
        let mut twin = KNOWN.as_bytes().to_vec();
        twin[TOKEN_CHARS - 1] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[pos | 1];
        let twin = String::from_utf8(twin).expect("ascii");
        assert_eq!(
            keys().verify(&twin, NOW),
            Err(TokenError::Malformed("not base64url"))
        );
    }

    #[test]
    fn previous_key_still_verifies_and_unknown_keys_do_not() {
        let old = TokenKeys::new((1, b"previous token secret"), None).expect("keys");
        let t = old.mint(&claims());
        assert_eq!(keys().verify(&t, NOW), Ok(claims()));
        // After the rotation ends, key 1 is gone.
        let next = TokenKeys::new(
            (3, b"the next token secret"),
            Some((2, b"current token secret!")),
        )
        .expect("keys");
        assert_eq!(next.verify(&t, NOW), Err(TokenError::UnknownKey(1)));
        // Same id, other secret: a forgery.
        let forger = TokenKeys::new((2, b"an attacker's secret!"), None).expect("keys");
        assert_eq!(
            keys().verify(&forger.mint(&claims()), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampering_expiry_and_garbage_are_rejected() {
        let t = keys().mint(&claims());
        assert_eq!(
            keys().verify(&t, NOW + 3600),
            Err(TokenError::Expired(NOW + 3600))
        );
        // Every single-character change is caught.
        for i in 0..t.len() {
            for c in [b'A', b'z', b'-'] {
                let mut m = t.clone().into_bytes();
                if m[i] == c {
                    continue;
                }
                m[i] = c;
                let m = String::from_utf8(m).expect("ascii");
                assert!(keys().verify(&m, NOW).is_err(), "accepted a change at {i}");
            }
        }
        assert_eq!(
            keys().verify("", NOW),
            Err(TokenError::Malformed("wrong length"))
        );
        assert_eq!(
            keys().verify(&"!".repeat(TOKEN_CHARS), NOW),
            Err(TokenError::Malformed("not base64url"))
        );
    }

    #[test]
    fn keys_are_checked() {
        assert!(matches!(
            TokenKeys::new((1, b"short"), None),
            Err(KeyError::Short(1))
        ));
        assert!(matches!(
            TokenKeys::new((1, b"long enough secret"), Some((1, b"long enough secret"))),
            Err(KeyError::SameId(1))
        ));
    }
}
