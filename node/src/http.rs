//! The node's HTTP listeners, on hyper (HTTP/1.1 server connections): we
//! parse no request ourselves. This module owns what hyper leaves to its
//! user on a socket that faces the network:
//!
//! - **a connection cap per listener that newcomers cannot be starved
//!   by**: at the cap, a new connection closes the connection that made
//!   the least progress (one already closing first, then the one that has
//!   waited longest in its phase: reading its first head, reading a body,
//!   or idle between requests). A connection whose handler runs is never
//!   closed; only when every one is in a handler is the newcomer refused.
//!   Evictions and refusals are counted.
//! - **timeouts**: hyper's header-read timeout (from accept, or from the
//!   previous response, to the end of the head), an idle timeout (no byte
//!   of a next request), a deadline for reading a body, and a close for a
//!   client that does not read its answers.
//! - **limits**: head size (431), body size (413, before any byte of it is
//!   read when `Content-Length` says so, which also skips the
//!   `100 Continue`), and a bounded lingering close so a refused client
//!   reads its answer rather than a reset.
//!
//! hyper itself refuses conflicting `Content-Length` headers and malformed
//! heads with 400, and answers pipelined requests in order.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::debug;

use crate::metrics::IoStats;

/// After the last response, how long a closing connection may still send
/// (read and dropped) so that closing with unread input does not reset
/// the connection before the client read its answer. Total, not per read:
/// a byte every 0.4 s does not keep it open.
const LINGER: Duration = Duration::from_millis(1000);
/// How much longer than the header-read timeout a connection may sit
/// answered without its next head under way (its answer unread).
const STALL_GRACE: Duration = Duration::from_secs(1);
/// At most this much is read while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// What one listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections open at once; a newcomer at the cap evicts one.
    pub(crate) max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    pub(crate) max_head: usize,
    /// Largest request body, in bytes.
    pub(crate) max_body: usize,
    /// From accept, or from the previous response, to a complete head.
    pub(crate) header_read_timeout: Duration,
    /// A connection that sent no byte of a request for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Reading a request's body, from the end of its head.
    pub(crate) body_timeout: Duration,
}

/// One request, its body read in full.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Path and query, as sent.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub(crate) fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    /// Extra headers, e.g. `WWW-Authenticate`.
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Response {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string();
        body.push('\n');
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    /// `{"error": message}` with the given status.
    pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// The same, and the connection is closed after it (the request's
    /// body was not read to its end).
    fn closing(status: u16, message: impl Into<String>) -> Response {
        let mut r = Response::error(status, message);
        r.headers.push(("connection", "close".to_string()));
        r
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut r = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                h.append(n, v);
            }
        }
        r
    }
}

/// Where a connection is; what eviction looks at.
mod phase {
    /// Accepted, no complete head yet.
    pub(super) const FIRST_HEAD: u8 = 0;
    /// Head read, body being read.
    pub(super) const BODY: u8 = 1;
    /// The handler runs: never evicted.
    pub(super) const BUSY: u8 = 2;
    /// Answered; waiting for (or reading the head of) the next request.
    pub(super) const IDLE: u8 = 3;
    /// Done with HTTP, lingering before the close.
    pub(super) const CLOSING: u8 = 4;
    /// Chosen for eviction; final.
    pub(super) const EVICTED: u8 = 5;
}

/// One open connection, shared by its task and the listener's table.
#[derive(Debug, Default)]
struct Conn {
    phase: AtomicU8,
    /// When it entered its phase, in ms since the table's epoch.
    since_ms: AtomicU64,
    /// Bytes read from the socket, and their count when the last
    /// response was made: equal means no byte of a next request yet.
    bytes_read: AtomicU64,
    read_mark: AtomicU64,
    kill: Notify,
}

impl Conn {
    /// Moves to `phase` unless evicted (then `false`: stop).
    fn enter(&self, phase: u8, now_ms: u64) -> bool {
        let moved = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p != phase::EVICTED).then_some(phase)
            })
            .is_ok();
        if moved {
            self.since_ms.store(now_ms, Ordering::Release);
        }
        moved
    }

    /// Waiting for a request and none of it has arrived: since when.
    fn idle_since(&self) -> Option<u64> {
        let p = self.phase.load(Ordering::Acquire);
        let quiet =
            self.bytes_read.load(Ordering::Acquire) == self.read_mark.load(Ordering::Acquire);
        ((p == phase::IDLE || p == phase::FIRST_HEAD) && quiet)
            .then(|| self.since_ms.load(Ordering::Acquire))
    }
}

/// Why a newcomer got its slot, or did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Free,
    Evicted,
    Refused,
}

/// The open connections of one listener.
#[derive(Debug)]
struct Table {
    epoch: Instant,
    max: usize,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            epoch: Instant::now(),
            max: max.max(1),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A slot for a new connection: a free one, or the one of the
    /// connection that made the least progress (closed here).
    fn admit(&self) -> (Admission, Option<(u64, Arc<Conn>)>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut how = Admission::Free;
        // A victim may change phase between the look and the claim; the
        // claim is a compare-and-swap, so look again a few times.
        let mut tries = 0;
        while conns.len() >= self.max {
            tries += 1;
            let victim = conns
                .iter()
                .filter_map(|(&id, c)| {
                    let p = c.phase.load(Ordering::Acquire);
                    let rank = match p {
                        phase::CLOSING | phase::EVICTED => 0,
                        phase::FIRST_HEAD | phase::BODY | phase::IDLE => 1,
                        _ => return None,
                    };
                    Some(((rank, c.since_ms.load(Ordering::Acquire)), id, p))
                })
                .min();
            let Some((_, id, seen)) = victim else {
                return (Admission::Refused, None);
            };
            let claimed = conns.get(&id).is_some_and(|c| {
                seen == phase::EVICTED
                    || c.phase
                        .compare_exchange(seen, phase::EVICTED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            });
            if claimed {
                if let Some(c) = conns.remove(&id) {
                    c.kill.notify_one();
                }
                how = Admission::Evicted;
            } else if tries >= 4 {
                return (Admission::Refused, None);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        conn.since_ms.store(self.now_ms(), Ordering::Release);
        conns.insert(id, Arc::clone(&conn));
        (how, Some((id, conn)))
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Takes a connection out of the table however its task ends.
struct Slot<'a>(&'a Table, u64);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// The socket, counting what is read (how eviction and the idle timeout
/// tell an idle connection from one sending a head).
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.conn.bytes_read.fetch_add(n as u64, Ordering::AcqRel);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What every connection of a listener shares.
struct Listener<H> {
    limits: Limits,
    table: Table,
    builder: http1::Builder,
    io: Arc<crate::server::Shared>,
    handler: H,
}

impl<H> Listener<H> {
    fn stats(&self) -> &IoStats {
        &self.io.io
    }
}

type Answer =
    Pin<Box<dyn Future<Output = Result<hyper::Response<Full<Bytes>>, Infallible>> + Send>>;

/// Serves `listener` until the task is dropped: every request, body read,
/// goes to `handler`.
pub(crate) async fn serve<H, Fut>(
    listener: TcpListener,
    limits: Limits,
    shared: Arc<crate::server::Shared>,
    handler: H,
) where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_head)
        .keep_alive(true)
        .half_close(false);
    let l = Arc::new(Listener {
        limits,
        table: Table::new(limits.max_connections),
        builder,
        io: shared,
        handler,
    });
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, typically: do not spin on it.
                debug!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (how, slot) = l.table.admit();
        match how {
            Admission::Free => {}
            Admission::Evicted => IoStats::inc(&l.stats().http_evicted),
            Admission::Refused => IoStats::inc(&l.stats().http_refused),
        }
        let Some((id, conn)) = slot else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(Arc::clone(&l), tcp, id, conn));
    }
}

/// One connection, from accept to close.
async fn connection<H, Fut>(l: Arc<Listener<H>>, tcp: TcpStream, id: u64, conn: Arc<Conn>)
where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let _slot = Slot(&l.table, id);
    let io = TokioIo::new(Tracked {
        inner: tcp,
        conn: Arc::clone(&conn),
    });
    let svc = {
        let l = Arc::clone(&l);
        let conn = Arc::clone(&conn);
        service_fn(move |req: hyper::Request<Incoming>| -> Answer {
            let l = Arc::clone(&l);
            let conn = Arc::clone(&conn);
            Box::pin(async move { Ok(answer(&l, &conn, req).await.into_hyper()) })
        })
    };
    let mut http = l.builder.serve_connection(io, svc);
    let idle = l.limits.idle_timeout.as_millis() as u64;
    // hyper's header timer starts only once the previous response is
    // written; a client that does not read its answers is cut off here,
    // a little after hyper would have cut off a slow head.
    let stall = (l.limits.header_read_timeout + STALL_GRACE).as_millis() as u64;
    // When the idle close was asked for (hyper then closes at once, or
    // after the response being written).
    let mut asked: Option<u64> = None;
    let done = loop {
        let now = l.table.now_ms();
        let quiet = conn.idle_since().filter(|_| asked.is_none());
        let answered = (conn.phase.load(Ordering::Acquire) == phase::IDLE)
            .then(|| conn.since_ms.load(Ordering::Acquire));
        if quiet.is_some_and(|s| now.saturating_sub(s) >= idle) {
            Pin::new(&mut http).graceful_shutdown();
            asked = Some(now);
            continue;
        }
        let stuck = answered.is_some_and(|s| now.saturating_sub(s) >= stall)
            || asked.is_some_and(|a| now.saturating_sub(a) >= idle);
        if stuck {
            debug!("http connection not reading its answers: closed");
            IoStats::inc(&l.stats().http_timeouts);
            return;
        }
        // The next moment one of the rules above may apply.
        let wake = [
            quiet.map(|s| s + idle),
            answered.map(|s| s + stall),
            asked.map(|a| a + idle),
            Some(now + idle),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + idle);
        let wait = Duration::from_millis(wake.saturating_sub(now).max(1));
        tokio::select! {
            r = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)) => break r,
            () = conn.kill.notified() => {
                // Evicted: dropping the connection closes the socket.
                debug!("http connection evicted");
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
    };
    if let Err(e) = done {
        if e.is_timeout() {
            IoStats::inc(&l.stats().http_timeouts);
        }
        debug!(error = %e, "http connection ended");
    }
    if !conn.enter(phase::CLOSING, l.table.now_ms()) {
        return;
    }
    let mut tcp = http.into_parts().io.into_inner().inner;
    let _ = tcp.shutdown().await;
    let end = tokio::time::Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        tokio::select! {
            r = tcp.read(&mut sink) => match r {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            },
            () = tokio::time::sleep_until(end) => break,
            () = conn.kill.notified() => break,
        }
    }
}

/// Reads the body within the limits, then asks the handler.
async fn answer<H, Fut>(l: &Listener<H>, conn: &Conn, req: hyper::Request<Incoming>) -> Response
where
    H: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let t = &l.table;
    if !conn.enter(phase::BODY, t.now_ms()) {
        return Response::closing(503, "connection closed to make room");
    }
    let (parts, body) = req.into_parts();
    let max = l.limits.max_body;
    // hyper has checked Content-Length already (digits only; several
    // headers only when they agree).
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Response::closing(
            413,
            format!(
                "body of {} bytes is over the limit of {max}",
                declared.unwrap_or(0)
            ),
        );
    }
    // No body (most requests): no timer to arm.
    let read = if hyper::body::Body::is_end_stream(&body) {
        Ok(Ok(http_body_util::Collected::default()))
    } else {
        tokio::time::timeout(l.limits.body_timeout, Limited::new(body, max).collect()).await
    };
    let body = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Response::closing(413, format!("body over the limit of {max} bytes"));
        }
        Ok(Err(e)) => return Response::closing(400, format!("unreadable body: {e}")),
        Err(_) => {
            IoStats::inc(&l.stats().http_timeouts);
            return Response::closing(408, "body too slow");
        }
    };
    if !conn.enter(phase::BUSY, t.now_ms()) {
        return Response::closing(503, "connection closed to make room");
    }
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        headers: parts.headers,
        body,
    };
    let response = (l.handler)(request).await;
    conn.read_mark
        .store(conn.bytes_read.load(Ordering::Acquire), Ordering::Release);
    conn.enter(phase::IDLE, t.now_ms());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closes(r: &hyper::Response<Full<Bytes>>) -> bool {
        r.headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v == "close")
    }

    fn table_with(phases: &[(u8, u64)]) -> (Table, Vec<Arc<Conn>>) {
        let t = Table::new(phases.len());
        let conns = phases
            .iter()
            .map(|&(p, since)| {
                let (how, slot) = t.admit();
                assert_eq!(how, Admission::Free);
                let (_, c) = slot.expect("a slot");
                c.phase.store(p, Ordering::Release);
                c.since_ms.store(since, Ordering::Release);
                c
            })
            .collect();
        (t, conns)
    }

    #[test]
    fn at_the_cap_the_connection_with_least_progress_goes() {
        let (t, c) = table_with(&[
            (phase::BUSY, 0),
            (phase::IDLE, 50),
            (phase::FIRST_HEAD, 10),
            (phase::BODY, 30),
        ]);
        let (how, slot) = t.admit();
        assert_eq!(how, Admission::Evicted);
        assert!(slot.is_some());
        // The oldest waiting one: the first head pending since 10.
        assert_eq!(c[2].phase.load(Ordering::Acquire), phase::EVICTED);
        assert_eq!(c[0].phase.load(Ordering::Acquire), phase::BUSY);
        // A closing one goes before any other.
        c[1].phase.store(phase::CLOSING, Ordering::Release);
        assert_eq!(t.admit().0, Admission::Evicted);
        assert_eq!(c[1].phase.load(Ordering::Acquire), phase::EVICTED);
        assert_eq!(c[3].phase.load(Ordering::Acquire), phase::BODY);
    }

    #[test]
    fn a_newcomer_is_refused_only_when_every_handler_runs() {
        let (t, _c) = table_with(&[(phase::BUSY, 0), (phase::BUSY, 1)]);
        let (how, slot) = t.admit();
        assert_eq!(how, Admission::Refused);
        assert!(slot.is_none());
        assert_eq!(t.conns.lock().map(|c| c.len()).unwrap_or(0), 2);
    }

    #[test]
    fn an_evicted_connection_cannot_come_back() {
        let c = Conn::default();
        assert!(c.enter(phase::BODY, 1));
        c.phase.store(phase::EVICTED, Ordering::Release);
        assert!(!c.enter(phase::BUSY, 2));
        assert_eq!(c.phase.load(Ordering::Acquire), phase::EVICTED);
    }

    #[test]
    fn idle_means_no_byte_of_a_next_request() {
        let c = Conn::default();
        assert!(c.enter(phase::IDLE, 7));
        assert_eq!(c.idle_since(), Some(7));
        c.bytes_read.fetch_add(1, Ordering::AcqRel);
        assert_eq!(c.idle_since(), None);
        assert!(c.enter(phase::BUSY, 8));
        c.read_mark.store(1, Ordering::Release);
        assert_eq!(c.idle_since(), None);
    }

    #[test]
    fn responses_keep_status_type_and_headers() {
        let mut r = Response::error(401, "no");
        r.headers.push(("www-authenticate", "Bearer".into()));
        let h = r.into_hyper();
        assert_eq!(h.status(), 401);
        assert_eq!(h.headers()["content-type"], "application/json");
        assert_eq!(h.headers()["www-authenticate"], "Bearer");
        assert!(!closes(&h));
        assert!(closes(&Response::closing(413, "big").into_hyper()));
    }
}
