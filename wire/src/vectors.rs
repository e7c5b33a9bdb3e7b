//! Reads the hex test vectors that `docs/wire.md` and `docs/local-api.md`
//! carry, so the tests of every crate check the documents the same way.
//!
//! A vector is a fenced block whose info string is `hex vector=NAME`; its
//! body is hex bytes, either as pairs separated by whitespace or as one run
//! of digits (two per byte). Any other fenced block is skipped.

use std::collections::BTreeMap;

/// Why a document's vectors could not be read; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VectorError {
    #[error("line {line}: hex block without vector=NAME")]
    Unnamed { line: usize },
    #[error("line {line}: `{token}` is not hex bytes")]
    BadHex { line: usize, token: String },
    #[error("line {line}: vector {name} is empty")]
    Empty { line: usize, name: String },
    #[error("line {line}: vector {name} appears twice")]
    Duplicate { line: usize, name: String },
    #[error("a fenced block is still open at the end of the document")]
    Unclosed,
}

/// Every `hex vector=NAME` block of a Markdown document, by name.
pub fn hex_vectors(markdown: &str) -> Result<BTreeMap<String, Vec<u8>>, VectorError> {
    let mut vectors = BTreeMap::new();
    // Inside a fenced block: `Some(None)` for any other block,
    // `Some(Some((name, bytes)))` for a hex vector.
    let mut fence: Option<Option<(String, Vec<u8>)>> = None;
    for (n, text) in markdown.lines().enumerate() {
        let line = n + 1;
        if let Some(info) = text.trim_start().strip_prefix("```") {
            match fence.take() {
                Some(Some((name, bytes))) => {
                    if bytes.is_empty() {
                        return Err(VectorError::Empty { line, name });
                    }
                    if vectors.contains_key(&name) {
                        return Err(VectorError::Duplicate { line, name });
                    }
                    vectors.insert(name, bytes);
                }
                Some(None) => {}
                None => {
                    let mut words = info.split_whitespace();
                    fence = Some(if words.next() == Some("hex") {
                        let name = words
                            .find_map(|w| w.strip_prefix("vector="))
                            .ok_or(VectorError::Unnamed { line })?;
                        Some((name.to_string(), Vec::new()))
                    } else {
                        None
                    });
                }
            }
            continue;
        }
        if let Some(Some((_, bytes))) = &mut fence {
            for token in text.split_whitespace() {
                push_hex(token, bytes).ok_or_else(|| VectorError::BadHex {
                    line,
                    token: token.to_string(),
                })?;
            }
        }
    }
    match fence {
        None => Ok(vectors),
        Some(_) => Err(VectorError::Unclosed),
    }
}

fn push_hex(token: &str, out: &mut Vec<u8>) -> Option<()> {
    let digits = token.as_bytes();
    if digits.is_empty() || digits.len() % 2 != 0 {
        return None;
    }
    for pair in digits.chunks(2) {
        let pair = std::str::from_utf8(pair).ok()?;
        out.push(u8::from_str_radix(pair, 16).ok()?);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_spaced_and_run_together_hex_and_skips_other_blocks() {
        let doc = "text\n```text\n00 11\n```\n```hex vector=a\n00 ff\n10\n```\n```hex vector=b\n0a0B\n```\n";
        let v = hex_vectors(doc).expect("valid");
        assert_eq!(v.len(), 2);
        assert_eq!(v["a"], [0x00, 0xff, 0x10]);
        assert_eq!(v["b"], [0x0a, 0x0b]);
    }

    #[test]
    fn names_the_bad_line() {
        assert_eq!(
            hex_vectors("```hex\n00\n```\n"),
            Err(VectorError::Unnamed { line: 1 })
        );
        assert_eq!(
            hex_vectors("```hex vector=a\n00 0g\n```\n"),
            Err(VectorError::BadHex {
                line: 2,
                token: "0g".into()
            })
        );
        assert_eq!(
            hex_vectors("```hex vector=a\n001\n```\n"),
            Err(VectorError::BadHex {
                line: 2,
                token: "001".into()
            })
        );
        assert_eq!(
            hex_vectors("```hex vector=a\n```\n"),
            Err(VectorError::Empty {
                line: 2,
                name: "a".into()
            })
        );
        assert_eq!(
            hex_vectors("```hex vector=a\n00\n```\n```hex vector=a\n01\n```\n"),
            Err(VectorError::Duplicate {
                line: 6,
                name: "a".into()
            })
        );
        assert_eq!(
            hex_vectors("```hex vector=a\n00\n"),
            Err(VectorError::Unclosed)
        );
    }
}
