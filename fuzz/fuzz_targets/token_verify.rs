//! The session token verifier (`shoal_core::TokenKeys::verify`), which
//! reads a cookie any browser sends.
//!
//! 1. The input as the token text: never a panic, and whatever is accepted
//!    (only a seed can be: the fuzzer cannot forge the MAC) is exactly
//!    what `mint` writes for its claims.
//! 2. The first 24 bytes as a token body, signed here with the current
//!    key, the previous one or a stranger's (byte 24 chooses): the parser
//!    past the MAC sees arbitrary content, and its verdict must be the one
//!    this harness computes on its own from the layout in `token.rs`.
//!
//! Keys and clock are those of the unit tests (the seed `known-token` is
//! their vector).

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use shoal_core::{Claims, TokenError, TokenKeys, Verdict, TOKEN_BYTES, TOKEN_CHARS};

const NOW: u64 = 1_767_225_600;
const CURRENT: (u8, &[u8]) = (2, b"current token secret!");
const PREVIOUS: (u8, &[u8]) = (1, b"previous token secret");
const STRANGER: &[u8] = b"an attacker's secret!";

fn keys() -> &'static TokenKeys {
    static KEYS: OnceLock<TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| TokenKeys::new(CURRENT, Some(PREVIOUS)).expect("keys"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        as_text(text);
    }
    if data.len() > 24 {
        signed_body(data[..24].try_into().expect("24 bytes"), data[24]);
    }
});

fn as_text(text: &str) {
    let Ok(claims) = keys().verify(text, NOW) else {
        return;
    };
    assert_eq!(text.len(), TOKEN_CHARS);
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .expect("accepted, so base64url");
    if bytes[1] == CURRENT.0 && claims.score <= 100 {
        assert_eq!(keys().mint(&claims), text, "accepted a second spelling");
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

fn signed_body(body: [u8; 24], choice: u8) {
    let secret = match choice % 3 {
        0 => CURRENT.1,
        1 => PREVIOUS.1,
        _ => STRANGER,
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(&body);
    let tag = mac.finalize().into_bytes();
    let mut token = [0u8; TOKEN_BYTES];
    token[..24].copy_from_slice(&body);
    token[24..].copy_from_slice(&tag[..16]);
    let text = URL_SAFE_NO_PAD.encode(token);
    assert_eq!(text.len(), TOKEN_CHARS);

    let got = keys().verify(&text, NOW);
    // The checks in the order `verify` documents: version, key id,
    // signature, then content.
    let key_secret = match body[1] {
        id if id == CURRENT.0 => Some(CURRENT.1),
        id if id == PREVIOUS.0 => Some(PREVIOUS.1),
        _ => None,
    };
    let expires_s = le64(&body[16..24]);
    let want = if body[0] != 1 {
        Err(TokenError::Version(body[0]))
    } else if key_secret.is_none() {
        Err(TokenError::UnknownKey(body[1]))
    } else if key_secret != Some(secret) {
        Err(TokenError::BadSignature)
    } else if !matches!(body[14], 1 | 2) {
        Err(TokenError::Malformed("verdict"))
    } else if expires_s <= NOW {
        Err(TokenError::Expired(expires_s))
    } else {
        Ok(Claims {
            cluster: u32::from_le_bytes(body[2..6].try_into().expect("4 bytes")),
            subject: le64(&body[6..14]),
            verdict: if body[14] == 1 {
                Verdict::Human
            } else {
                Verdict::Bot
            },
            score: body[15],
            expires_s,
        })
    };
    assert_eq!(
        got,
        want,
        "token body {body:02x?}, key choice {}",
        choice % 3
    );
    if let Ok(claims) = got {
        if body[1] == CURRENT.0 && claims.score <= 100 {
            assert_eq!(keys().mint(&claims), text);
        }
    }
}
