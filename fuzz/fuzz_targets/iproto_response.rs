//! What a Tarantool server (or anything answering on its port) sends the
//! client: the 128-byte greeting, then length-prefixed response frames,
//! cut and decoded by `tarantool/src/codec.rs` as the client's reader does
//! (`shoal_tarantool::fuzzing`).
//!
//! Input: one byte choosing the read size, then the stream. Checked: no
//! panic, no frame over the limit, and the same stream read whole, in
//! small reads and (after a greeting) past the greeting gives the same
//! frames and the same error: framing does not depend on how TCP cut it.
//!
//! Seeds (`fuzz/seeds/iproto_response/`) are byte streams captured from a
//! real Tarantool 2.6: greeting, then the answers to ping, select, a call
//! error, an eval with a push and an eval error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_tarantool::fuzzing::{greeting, responses};

/// Small, so that a frame that claims to be huge costs the fuzzer nothing
/// (the client's limit is a setting; the check is the same).
const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&read, stream)) = data.split_first() else {
        return;
    };
    let small = usize::from(read % 16) + 1;
    let whole = responses(stream, stream.len(), MAX);
    assert_eq!(whole, responses(stream, small, MAX), "read size {small}");

    if let Some(head) = stream.get(..128) {
        if greeting(head).is_ok() {
            let rest = &stream[128..];
            let after = responses(rest, rest.len(), MAX);
            assert_eq!(after, responses(rest, small, MAX), "read size {small}");
        }
    }
});
