//! The HTTP listeners of a real node over loopback TCP: what hyper and
//! our limits answer to malformed, oversized, slow and pipelined
//! requests, the admin/API split, and that a newcomer is served at the
//! connection cap.
//!
//! The node has a `[verdicts]` section whose store never answers (a
//! closed port): the API listener is up and answers (401, or 503 with a
//! token), which is all these tests need from it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const TOKEN: &str = "http-test-token-0123456789";

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-http-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A node with both listeners; `http` adds keys to its `[http]` section.
fn node(name: &str, http: &str) -> NodeProcess {
    let dir = tempdir(name);
    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, &dir);
    spec.http_extra = http.to_string();
    spec.extra = format!(
        "[verdicts]\nstore = \"127.0.0.1:1\"\npassword = \"pw\"\napi_tokens = [\"{TOKEN}\"]\ntoken_key_id = 1\ntoken_secret = \"http-test-secret-0123456789\"\nforwarder = false\nmax_body = 1024\n"
    );
    NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads until the peer closes, an error, or `limit` passes; what came.
fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let end = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the peer has closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// One request on a fresh connection that asks to close; the status.
fn status_of(addr: &str, head: &str) -> u16 {
    let mut s = connect(addr);
    s.write_all(head.as_bytes()).expect("write");
    let answer = read_all(&mut s, Duration::from_secs(10));
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

fn metric(n: &NodeProcess, name: &str) -> u64 {
    n.metric(name)
        .unwrap_or_else(|| panic!("no {name} on the metrics page")) as u64
}

#[test]
fn conflicting_content_length_is_refused_with_400() {
    let n = node("cl", "");
    for addr in [&n.admin, &n.api] {
        let status = status_of(
            addr,
            "POST /v1/tokens/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        );
        assert_eq!(status, 400, "two different Content-Length on {addr}");
        let status = status_of(
            addr,
            "POST /v1/tokens/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        );
        assert_eq!(status, 400, "a list of lengths on {addr}");
    }
    // The same length twice is no conflict: it reaches the API (401).
    let status = status_of(
        &n.api,
        "POST /v1/tokens/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert_eq!(status, 401);
}

#[test]
fn an_oversized_head_gets_431_or_a_close_never_a_hang() {
    let n = node("head", "");
    let mut s = connect(&n.admin);
    let filler = "a".repeat(100 << 10);
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
    // The node may close before all of it is written: that is an answer.
    let _ = s.write_all(head.as_bytes());
    let started = Instant::now();
    let answer = read_all(&mut s, Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "no answer nor close for {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.200}"
    );
    // The node still serves.
    assert_eq!(
        status_of(
            &n.admin,
            "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
        ),
        200
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let n = node("pipe", "");
    let mut s = connect(&n.admin);
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let answer = read_all(&mut s, Duration::from_secs(10));
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200", "200"], "{answer}");
    let ok = answer.find("ok\n").expect("healthz body");
    let status_page = answer.find("try /metrics").expect("404 body");
    assert!(ok < status_page, "answers out of order: {answer}");
}

#[test]
fn admin_and_api_serve_only_their_own_paths() {
    let n = node("split", "");
    let get = |addr: &str, path: &str, auth: bool| {
        let auth = if auth {
            format!("Authorization: Bearer {TOKEN}\r\n")
        } else {
            String::new()
        };
        status_of(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
        )
    };
    for path in ["/metrics", "/status", "/healthz"] {
        assert_eq!(get(&n.admin, path, false), 200, "admin {path}");
        assert_eq!(get(&n.api, path, true), 404, "api {path}");
    }
    assert_eq!(get(&n.admin, "/v1/verdicts/1", true), 404);
    assert_eq!(get(&n.admin, "/v1/tokens/verify", true), 404);
    // The API answers: no token 401, a token and no store 503.
    assert_eq!(get(&n.api, "/v1/verdicts/1", false), 401);
    assert_eq!(get(&n.api, "/v1/verdicts/1", true), 503);
}

#[test]
fn at_the_cap_a_newcomer_is_served_and_the_oldest_slow_one_goes() {
    let n = node("cap", "max_connections = 8\n");
    // Eight connections that never finish their first head.
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(&n.api);
            s.write_all(b"GET /v1/verdicts/1 HTTP/1.1\r\nHost: x\r\n")
                .expect("write");
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = status_of(
        &n.api,
        &format!(
            "GET /v1/verdicts/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 503, "the newcomer reaches the API");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The oldest slow one was closed for it; the newest is still open.
    assert!(closed_within(&mut slow[0], Duration::from_secs(2)));
    assert!(!closed_within(&mut slow[7], Duration::from_millis(200)));
    assert!(metric(&n, "shoal_http_evicted_total") >= 1);
    assert_eq!(metric(&n, "shoal_http_refused_total"), 0);
}

#[test]
fn idle_slow_head_and_slow_body_connections_are_closed() {
    let n = node(
        "timeouts",
        "idle_timeout_ms = 300\nheader_read_timeout_ms = 1000\nbody_timeout_ms = 500\n",
    );
    // Connected, nothing sent: closed by the idle timeout.
    let mut idle = connect(&n.admin);
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // A kept-alive connection after its answer: closed the same way.
    let mut kept = connect(&n.admin);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 512];
    let k = kept.read(&mut buf).expect("answer");
    assert!(buf[..k].starts_with(b"HTTP/1.1 200"));
    let t = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    // A head a byte at a time: closed by the header-read timeout.
    let mut slow = connect(&n.admin);
    let t = Instant::now();
    let mut closed = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: y\r\n"
        .iter()
        .cycle()
        .take(200)
    {
        if slow.write_all(&[*b]).is_err() || closed_within(&mut slow, Duration::from_millis(100)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled head is cut off");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A body that never completes: 408.
    let mut body = connect(&n.api);
    body.write_all(b"POST /v1/verdicts HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"sub")
        .expect("write");
    let answer = read_all(&mut body, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(wait_until(Duration::from_secs(5), || metric(
        &n,
        "shoal_http_timeouts_total"
    ) >= 2));
}

#[test]
fn expect_100_continue_and_body_limits() {
    let n = node("continue", "");
    // Within the limit: 100 Continue, then the answer (401: no token).
    let mut s = connect(&n.api);
    s.write_all(
        b"POST /v1/tokens/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut buf = [0u8; 64];
    let k = s.read(&mut buf).expect("read");
    assert!(
        buf[..k].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..k])
    );
    s.write_all(b"{\"token\":\"\"}\n").expect("body");
    let answer = read_all(&mut s, Duration::from_secs(5));
    assert!(answer.contains("HTTP/1.1 401"), "{answer}");
    // Over the limit: 413 at once, no 100 Continue.
    let mut s = connect(&n.api);
    s.write_all(
        b"POST /v1/verdicts HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("write");
    let answer = read_all(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A chunked body over the limit: 413 too.
    let mut s = connect(&n.api);
    let chunk = "x".repeat(900);
    s.write_all(
        format!(
            "POST /v1/verdicts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n384\r\n{chunk}\r\n384\r\n{chunk}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("write");
    let answer = read_all(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn a_client_that_never_reads_its_answers_is_closed() {
    let n = node(
        "unread",
        "idle_timeout_ms = 500\nheader_read_timeout_ms = 1000\n",
    );
    let mut s = connect(&n.admin);
    s.set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // Far more answers than the socket buffers hold, none of them read.
    let burst = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    let _ = s.write_all(burst.as_bytes());
    std::thread::sleep(Duration::from_secs(3));
    // Draining what was buffered ends in a close, not in more answers.
    assert!(closed_within(&mut s, Duration::from_secs(10)));
    assert!(metric(&n, "shoal_http_timeouts_total") >= 1);
}
