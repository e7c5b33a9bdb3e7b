//! The post-markup API (`/v1/...`, see `docs/api.md`): verdicts in and
//! out of the cluster's verdict store, and session tokens.
//!
//! A verdict is acknowledged (201) only after `shoal_verdict_put` has
//! returned, i.e. after the local store wrote it to its WAL; replication
//! carries it to the other clusters from there. Right after, the node
//! applies it as a session mark and multicasts it, so every filter of the
//! cluster sees it within a millisecond, and mints the signed token the
//! filter hands the browser: a node of any cluster accepts that token
//! before replication has arrived.
//!
//! Request checking ([`parse_submit`]) is plain code, tested here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use shoal_core::ports::{VerdictRow, VerdictStore};
use shoal_tarantool::verdict::VerdictClient;
use shoal_tarantool::Client;
use shoal_wire::{Code, Op, Record};
use tracing::debug;

use crate::http::{Request, Response};
use crate::metrics;
use crate::server::{wall_us, Shared};
use shoal_core::{Claims, TokenKeys, Verdict};

/// What a client may submit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    subject: Subject,
    verdict: String,
    #[serde(default)]
    score: Option<u64>,
    ttl_s: u64,
    #[serde(default)]
    source: Option<String>,
}

/// A subject is the 64-bit session (or user) key the filter uses: a JSON
/// number, or a decimal string for clients whose numbers are doubles.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Subject {
    Number(u64),
    Text(String),
}

/// A checked submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Submit {
    pub(crate) subject: u64,
    pub(crate) verdict: Verdict,
    pub(crate) score: u8,
    pub(crate) ttl_s: u64,
    pub(crate) source: String,
}

/// Longest `source`, in bytes.
pub(crate) const MAX_SOURCE: usize = 64;

/// Checks a submission body; the error says what is wrong, for a 400.
pub(crate) fn parse_submit(body: &[u8], max_ttl_s: u64) -> Result<Submit, String> {
    let b: SubmitBody = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let subject = match b.subject {
        Subject::Number(n) => n,
        Subject::Text(t) => t
            .parse::<u64>()
            .map_err(|_| "subject: a decimal 64-bit unsigned number".to_string())?,
    };
    let verdict = match b.verdict.as_str() {
        "human" => Verdict::Human,
        "bot" => Verdict::Bot,
        other => return Err(format!("verdict: \"human\" or \"bot\", not {other:?}")),
    };
    let score = match b.score {
        None => 100,
        Some(s) if s <= 100 => s as u8,
        Some(s) => return Err(format!("score: 0..=100, not {s}")),
    };
    if b.ttl_s == 0 || b.ttl_s > max_ttl_s {
        return Err(format!("ttl_s: 1..={max_ttl_s}, not {}", b.ttl_s));
    }
    let source = b.source.unwrap_or_default();
    if source.len() > MAX_SOURCE || source.chars().any(char::is_control) {
        return Err(format!(
            "source: at most {MAX_SOURCE} bytes, no control characters"
        ));
    }
    Ok(Submit {
        subject,
        verdict,
        score,
        ttl_s: b.ttl_s,
        source,
    })
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Human => "human",
        Verdict::Bot => "bot",
    }
}

/// Counters of the API, for metrics.
#[derive(Debug, Default)]
pub(crate) struct ApiStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) bad_request: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) tokens_valid: AtomicU64,
    pub(crate) tokens_invalid: AtomicU64,
}

impl ApiStats {
    /// Registers the API's counters as they are now.
    pub(crate) fn register(&self, reg: &mut Registry) {
        let [accepted, bad_request, unauthorized, store_errors, reads, valid, invalid] = [
            &self.accepted,
            &self.bad_request,
            &self.unauthorized,
            &self.store_errors,
            &self.reads,
            &self.tokens_valid,
            &self.tokens_invalid,
        ]
        .map(|a| a.load(Ordering::Relaxed));
        reg.register_collector(metrics::collector(move |o| {
            o.counter(
                "verdicts_accepted",
                "Verdicts stored and acknowledged (201).",
                accepted,
            )?;
            o.counter(
                "verdicts_bad_request",
                "API requests refused as malformed (400).",
                bad_request,
            )?;
            o.counter(
                "api_unauthorized",
                "API requests without an accepted bearer token (401).",
                unauthorized,
            )?;
            o.counter(
                "verdicts_store_errors",
                "API requests the verdict store did not serve (503).",
                store_errors,
            )?;
            o.counter("verdicts_reads", "Verdict reads.", reads)?;
            o.counter("tokens_valid", "Session tokens verified valid.", valid)?;
            o.counter(
                "tokens_invalid",
                "Session tokens refused (forged, expired, unknown key).",
                invalid,
            )
        }));
    }
}

/// The API of one node.
pub(crate) struct Api {
    /// The cluster's verdict store.
    pub(crate) store: VerdictClient<Client>,
    pub(crate) name: String,
    pub(crate) cluster: u32,
    pub(crate) api_tokens: Vec<String>,
    pub(crate) keys: TokenKeys,
    pub(crate) max_ttl_s: u64,
    pub(crate) shared: Arc<Shared>,
    /// Next verdict id: starts at the wall clock in µs, like the log's.
    pub(crate) next_id: AtomicU64,
}

/// Whether `given` is one of `accepted`, in time independent of where
/// they differ and of which one matches: SHA-256 digests (equal length,
/// so not even the tokens' lengths show) compared with `subtle`, every
/// accepted token compared.
fn accepted_token(accepted: &[String], given: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::{Choice, ConstantTimeEq};
    let g = Sha256::digest(given.as_bytes());
    accepted
        .iter()
        .fold(Choice::from(0), |any, k| {
            any | Sha256::digest(k.as_bytes()).ct_eq(&g)
        })
        .into()
}

impl Api {
    fn stats(&self) -> &ApiStats {
        &self.shared.io.api
    }

    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Serves `/v1/...`.
    pub(crate) async fn handle(&self, req: &Request) -> Response {
        let authorized = req
            .bearer()
            .is_some_and(|t| accepted_token(&self.api_tokens, t));
        if !authorized {
            self.count(&self.stats().unauthorized);
            let mut r = Response::error(
                401,
                if req.header("authorization").is_some() {
                    "bearer token not accepted"
                } else {
                    "missing Authorization: Bearer <token>"
                },
            );
            r.headers.push(("WWW-Authenticate", "Bearer".to_string()));
            return r;
        }
        let path = req.path.split('?').next().unwrap_or("");
        match (req.method.as_str(), path) {
            ("POST", "/v1/verdicts") => self.submit(&req.body).await,
            ("GET", p) if p.starts_with("/v1/verdicts/") => {
                self.read(&p["/v1/verdicts/".len()..]).await
            }
            ("POST", "/v1/tokens/verify") => self.verify(&req.body),
            (m, p) if p == "/v1/blocks" || p.starts_with("/v1/blocks/") => {
                crate::enforce::api(&self.shared, m, p, &req.body)
            }
            (_, "/v1/verdicts" | "/v1/tokens/verify") => Response::error(405, "use POST"),
            _ => Response::error(404, "no such endpoint"),
        }
    }

    async fn submit(&self, body: &[u8]) -> Response {
        let s = match parse_submit(body, self.max_ttl_s) {
            Ok(s) => s,
            Err(e) => {
                self.count(&self.stats().bad_request);
                return Response::error(400, e);
            }
        };
        let at_us = wall_us();
        let expires_us = at_us.saturating_add(s.ttl_s.saturating_mul(1_000_000));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let row = VerdictRow {
            expires_us,
            id,
            subject: s.subject,
            verdict: s.verdict,
            score: s.score,
            at_us,
            cluster: self.cluster,
            source: s.source.clone(),
        };
        if let Err(e) = self.store.put(&self.name, &[row]).await {
            self.count(&self.stats().store_errors);
            debug!(error = %e, "verdict not stored");
            return Response::error(
                503,
                format!("{e}; not acknowledged (it may or may not be stored: retrying is safe)"),
            );
        }
        self.count(&self.stats().accepted);
        let mark = match s.verdict {
            Verdict::Human => Record::MARK_LEGITIMATE,
            Verdict::Bot => Record::MARK_SUSPICIOUS,
        };
        let ttl_ms = u32::try_from(s.ttl_s.saturating_mul(1000)).unwrap_or(u32::MAX);
        let mut r = Record::new(Code::SESSION_MARK, [s.subject, mark, s.score as u64, 0]);
        r.ttl_ms = ttl_ms;
        r.timing_us = at_us;
        // Stored already; the mark is the cluster's fast path, and with a
        // state store it is saved too, so a restarted node replays it like
        // any mark. A full save backlog refuses only that save (counted),
        // not the verdict.
        let _ = self.shared.with_node(|node| {
            r.op = if node.backlog().is_some() {
                Op::SEND_SAVE
            } else {
                Op::SEND
            };
            let injected = node.inject(Instant::now(), r);
            node.flush();
            injected
        });
        let expires_s = expires_us / 1_000_000;
        let token = self.keys.mint(&Claims {
            cluster: self.cluster,
            subject: s.subject,
            verdict: s.verdict,
            score: s.score,
            expires_s,
        });
        Response::json(
            201,
            &json!({
                "subject": s.subject.to_string(),
                "verdict": verdict_name(s.verdict),
                "score": s.score,
                "expires_s": expires_s,
                "id": id.to_string(),
                "node": self.name,
                "cluster": self.cluster,
                "token": token,
            }),
        )
    }

    async fn read(&self, subject: &str) -> Response {
        let Ok(subject) = subject.parse::<u64>() else {
            self.count(&self.stats().bad_request);
            return Response::error(400, "subject: a decimal 64-bit unsigned number");
        };
        self.count(&self.stats().reads);
        match self.store.get(subject).await {
            Err(e) => {
                self.count(&self.stats().store_errors);
                Response::error(503, e.to_string())
            }
            Ok(None) => Response::error(404, "no live verdict for this subject"),
            Ok(Some(t)) => {
                let v = t.kind().map_or("unknown", verdict_name);
                Response::json(
                    200,
                    &json!({
                        "subject": t.subject.to_string(),
                        "verdict": v,
                        "score": t.score,
                        "expires_s": t.expires_us / 1_000_000,
                        "at_us": t.at_us.to_string(),
                        "node": t.node,
                        "cluster": t.cluster,
                        "source": t.source,
                    }),
                )
            }
        }
    }

    fn verify(&self, body: &[u8]) -> Response {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct VerifyBody {
            token: String,
        }
        let b: VerifyBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                self.count(&self.stats().bad_request);
                return Response::error(400, format!("bad JSON: {e}"));
            }
        };
        match self.keys.verify(&b.token, wall_us() / 1_000_000) {
            Ok(c) => {
                self.count(&self.stats().tokens_valid);
                Response::json(
                    200,
                    &json!({
                        "valid": true,
                        "subject": c.subject.to_string(),
                        "verdict": verdict_name(c.verdict),
                        "score": c.score,
                        "expires_s": c.expires_s,
                        "cluster": c.cluster,
                    }),
                )
            }
            Err(e) => {
                self.count(&self.stats().tokens_invalid);
                Response::json(200, &json!({ "valid": false, "reason": e.to_string() }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_full_and_a_minimal_submission() {
        let s = parse_submit(
            br#"{"subject":"18446744073709551615","verdict":"bot","score":87,"ttl_s":600,"source":"pixel"}"#,
            3600,
        )
        .unwrap();
        assert_eq!(
            s,
            Submit {
                subject: u64::MAX,
                verdict: Verdict::Bot,
                score: 87,
                ttl_s: 600,
                source: "pixel".into()
            }
        );
        let s = parse_submit(br#"{"subject":42,"verdict":"human","ttl_s":1}"#, 3600).unwrap();
        assert_eq!((s.subject, s.verdict, s.score), (42, Verdict::Human, 100));
    }

    #[test]
    fn says_what_is_wrong() {
        for (body, needle) in [
            (&br#"{"subject":1,"verdict":"bot""#[..], "bad JSON"),
            (br#"[]"#, "bad JSON"),
            (br#"{"verdict":"bot","ttl_s":1}"#, "missing field `subject`"),
            (br#"{"subject":"x1","verdict":"bot","ttl_s":1}"#, "subject"),
            (br#"{"subject":-1,"verdict":"bot","ttl_s":1}"#, "bad JSON"),
            (br#"{"subject":1,"verdict":"robot","ttl_s":1}"#, "verdict"),
            (br#"{"subject":1,"verdict":"bot","ttl_s":0}"#, "ttl_s"),
            (br#"{"subject":1,"verdict":"bot","ttl_s":3601}"#, "ttl_s"),
            (
                br#"{"subject":1,"verdict":"bot","ttl_s":1,"score":101}"#,
                "score",
            ),
            (
                br#"{"subject":1,"verdict":"bot","ttl_s":1,"extra":1}"#,
                "unknown field",
            ),
            (
                br#"{"subject":1,"verdict":"bot","ttl_s":1,"source":"a\nb"}"#,
                "source",
            ),
        ] {
            let e = parse_submit(body, 3600).unwrap_err();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        let long = format!(
            r#"{{"subject":1,"verdict":"bot","ttl_s":1,"source":"{}"}}"#,
            "s".repeat(MAX_SOURCE + 1)
        );
        assert!(parse_submit(long.as_bytes(), 3600)
            .unwrap_err()
            .contains("source"));
    }

    #[test]
    fn token_comparison_is_exact() {
        let keys = [
            "abcdefabcdefabcdef".to_string(),
            "0123456789abcdef".to_string(),
        ];
        assert!(accepted_token(&keys, "abcdefabcdefabcdef"));
        assert!(accepted_token(&keys, "0123456789abcdef"));
        assert!(!accepted_token(&keys, "abcdefabcdefabcdeF"));
        assert!(!accepted_token(&keys, "abc"));
        assert!(!accepted_token(&keys, ""));
        assert!(!accepted_token(&[], "abcdefabcdefabcdef"));
    }
}
