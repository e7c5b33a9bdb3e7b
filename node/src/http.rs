//! A small HTTP/1.1 server side, enough for `/metrics` and the post-markup
//! API: request heads parsed as plain bytes (sans-IO, tested here), bodies
//! read by `Content-Length` up to a limit, keep-alive, one response per
//! request. No chunked request bodies, no pipelining beyond reading the
//! next request after answering.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// How long a connection may take to send a request, or sit idle.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Header names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Why a request could not be read; each maps to the status to answer
/// with (none when the peer just went away).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("a body needs Content-Length (chunked bodies are not taken)")]
    LengthRequired,
    #[error("body of {0} bytes is over the limit of {1}")]
    BodyTooLarge(usize, usize),
}

impl HeadError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) => 400,
            HeadError::LengthRequired => 411,
            HeadError::BodyTooLarge(..) => 413,
        }
    }
}

/// A parsed head: the request without its body, and the body's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) request: Request,
    pub(crate) head_len: usize,
    pub(crate) body_len: usize,
    pub(crate) keep_alive: bool,
}

/// Parses the head at the start of `buf`. `Ok(None)` means "not complete
/// yet"; a complete head is checked against `max_body`.
pub(crate) fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, HeadError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| HeadError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("request line"));
    };
    if method.is_empty() || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed("request line"));
    }
    let mut headers = Vec::new();
    for l in lines {
        let (name, value) = l
            .split_once(':')
            .ok_or(HeadError::Malformed("header line"))?;
        if name.is_empty() || name.contains(' ') {
            return Err(HeadError::Malformed("header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let request = Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(HeadError::LengthRequired);
    }
    let body_len = match request.header("content-length") {
        None => 0,
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse::<usize>()
            .map_err(|_| HeadError::Malformed("Content-Length"))?,
        Some(_) => return Err(HeadError::Malformed("Content-Length")),
    };
    if body_len > max_body {
        return Err(HeadError::BodyTooLarge(body_len, max_body));
    }
    let connection = request.header("connection").unwrap_or("");
    let keep_alive = if version == "HTTP/1.0" {
        connection.eq_ignore_ascii_case("keep-alive")
    } else {
        !connection.eq_ignore_ascii_case("close")
    };
    Ok(Some(Head {
        request,
        head_len: end + 4,
        body_len,
        keep_alive,
    }))
}

/// Serves requests on `conn` with `handle` until the peer closes, asks to
/// close, sends something unreadable (answered with a 4xx first) or stays
/// idle too long.
pub(crate) async fn serve<F, Fut>(
    mut conn: TcpStream,
    max_body: usize,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 8192];
    loop {
        // One deadline for the whole request (head and body), however
        // slowly it trickles in; it also bounds an idle keep-alive.
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        // Bytes already searched for the end of the head, so a head sent
        // a byte at a time is not scanned again from the start each time.
        let mut scanned = 0usize;
        let head = loop {
            let fresh = &buf[scanned.saturating_sub(3)..];
            if buf.len() > MAX_HEAD || fresh.windows(4).any(|w| w == b"\r\n\r\n") {
                match parse_head(&buf, max_body) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(e) => {
                        let r = Response::error(e.status(), e.to_string());
                        write(&mut conn, &r, false).await?;
                        return Ok(());
                    }
                }
            }
            scanned = buf.len();
            let n = match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) if buf.is_empty() => return Ok(()),
                Err(_) => {
                    write(&mut conn, &Response::error(408, "request too slow"), false).await?;
                    return Ok(());
                }
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let total = head.head_len + head.body_len;
        if buf.len() < total
            && head
                .request
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        while buf.len() < total {
            let n = match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => {
                    write(&mut conn, &Response::error(408, "body too slow"), false).await?;
                    return Ok(());
                }
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut request = head.request;
        request.body = buf[head.head_len..total].to_vec();
        buf.drain(..total);
        let response = handle(request).await;
        write(&mut conn, &response, head.keep_alive).await?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

async fn write(conn: &mut TcpStream, r: &Response, keep_alive: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in &r.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(r.body.as_bytes());
    conn.write_all(&out).await?;
    if !keep_alive {
        conn.shutdown().await?;
        // Read what the client still sends (a refused body) before closing:
        // closing with unread input resets the connection, and the client
        // may lose the answer.
        let mut sink = [0u8; 4096];
        let mut left = 1usize << 20;
        while left > 0 {
            match tokio::time::timeout(Duration::from_millis(500), conn.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_waits_for_the_rest() {
        let req = b"POST /v1/verdicts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nAuthorization: Bearer abc\r\n\r\nhello";
        assert_eq!(parse_head(&req[..20], 100), Ok(None));
        let h = parse_head(req, 100).unwrap().unwrap();
        assert_eq!(h.request.method, "POST");
        assert_eq!(h.request.path, "/v1/verdicts");
        assert_eq!(h.request.bearer(), Some("abc"));
        assert_eq!(h.body_len, 5);
        assert_eq!(&req[h.head_len..], b"hello");
        assert!(h.keep_alive);
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let big = b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(
            parse_head(big, 100).unwrap_err(),
            HeadError::BodyTooLarge(101, 100)
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_head(chunked, 100).unwrap_err(),
            HeadError::LengthRequired
        );
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad, 100).unwrap_err().status(), 400, "{bad:?}");
        }
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&endless, 100).unwrap_err().status(), 431);
    }

    #[test]
    fn connection_header_decides_keep_alive() {
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(!parse_head(close, 0).unwrap().unwrap().keep_alive);
        let old = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!parse_head(old, 0).unwrap().unwrap().keep_alive);
        let bearer = b"GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n";
        assert_eq!(
            parse_head(bearer, 0).unwrap().unwrap().request.bearer(),
            None
        );
    }
}
