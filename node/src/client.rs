//! A client of the local API, as a filter would use it: the `shoal send`
//! and `shoal query` commands, the tests and the load harness all go
//! through it. The C equivalent is `node/include/shoal.h`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_wire::{Code, Record, RECORD_LEN};

use shoal_core::MAX_LOCAL_RECORDS;

/// I/O causes are sources, not part of the message: `{:#}` prints each
/// once.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("local socket {path}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("local socket I/O")]
    Io(#[from] std::io::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the sidecar refused the request: reason {reason} (record {index})")]
    Refused { reason: u64, index: u64 },
    #[error("at most {MAX_LOCAL_RECORDS} records per datagram")]
    TooMany,
}

/// A connected local-API client with its own (abstract) address, so the
/// sidecar can reply.
#[derive(Debug)]
pub struct LocalClient {
    sock: UnixDatagram,
    next_id: u64,
    buf: Vec<u8>,
}

static CLIENTS: AtomicU64 = AtomicU64::new(0);

impl Drop for LocalClient {
    fn drop(&mut self) {
        if let Some(p) = self
            .sock
            .local_addr()
            .ok()
            .as_ref()
            .and_then(|a| a.as_pathname())
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl LocalClient {
    pub fn connect(path: &Path) -> Result<LocalClient, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        };
        let name = format!(
            "shoal-client-{}-{}",
            std::process::id(),
            CLIENTS.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(connect_err)?;
        let sock = UnixDatagram::bind_addr(&addr).map_err(connect_err)?;
        sock.connect(path).map_err(connect_err)?;
        Ok(LocalClient {
            sock,
            next_id: 1,
            buf: Vec::with_capacity(MAX_LOCAL_RECORDS * RECORD_LEN),
        })
    }

    /// Like [`connect`](Self::connect) but bound to a filesystem path
    /// (abstract addresses do not cross network namespaces). The path is
    /// removed when the client is dropped.
    pub fn connect_from(path: &Path, own: &Path) -> Result<LocalClient, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        };
        let _ = std::fs::remove_file(own);
        let sock = UnixDatagram::bind(own).map_err(connect_err)?;
        sock.connect(path).map_err(connect_err)?;
        Ok(LocalClient {
            sock,
            next_id: 1,
            buf: Vec::with_capacity(MAX_LOCAL_RECORDS * RECORD_LEN),
        })
    }

    /// Sends up to 64 records in one datagram (fire and forget).
    pub fn send(&mut self, records: &[Record]) -> Result<(), ClientError> {
        if records.len() > MAX_LOCAL_RECORDS {
            return Err(ClientError::TooMany);
        }
        self.buf.clear();
        for r in records {
            self.buf.extend_from_slice(&r.to_bytes());
        }
        self.sock.send(&self.buf)?;
        Ok(())
    }

    /// Sends raw bytes (tests of malformed input).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.sock.send(bytes)?;
        Ok(())
    }

    /// Asks one query (`Code::QUERY_*`) about `key` and waits for its reply.
    pub fn query(
        &mut self,
        code: Code,
        key: u64,
        timeout: Duration,
    ) -> Result<Record, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut q = Record::new(code, [key, 0, 0, 0]);
        q.seq = id;
        self.sock.send(&q.to_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; MAX_LOCAL_RECORDS * RECORD_LEN];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            self.sock.set_read_timeout(Some(left))?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(timeout))
                }
                Err(e) => return Err(e.into()),
            };
            for chunk in buf[..n].chunks_exact(RECORD_LEN) {
                let Ok(r) = Record::decode_slice(chunk) else {
                    continue;
                };
                if r.seq != id {
                    continue;
                }
                if r.code == Code::REPLY_ERROR {
                    return Err(ClientError::Refused {
                        reason: r.fields[0],
                        index: r.fields[1],
                    });
                }
                return Ok(r);
            }
        }
    }

    /// Sends one ingest record and waits for the sidecar's verdict on it:
    /// a query rides along in the same datagram so that the sidecar
    /// answers (with an error in the record's place if it refused it).
    pub fn submit(&mut self, mut r: Record, timeout: Duration) -> Result<(), ClientError> {
        let id = self.next_id;
        self.next_id += 2;
        r.seq = id;
        let mut q = Record::new(Code::QUERY_LOAD, [0, 0, 0, 0]);
        q.seq = id + 1;
        let mut bytes = r.to_bytes().to_vec();
        bytes.extend_from_slice(&q.to_bytes());
        self.sock.send(&bytes)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            let reply = self.recv_raw(left)?;
            let mut answered = false;
            for chunk in reply.chunks_exact(RECORD_LEN) {
                let Ok(x) = Record::decode_slice(chunk) else {
                    continue;
                };
                if x.seq == id && x.code == Code::REPLY_ERROR {
                    return Err(ClientError::Refused {
                        reason: x.fields[0],
                        index: x.fields[1],
                    });
                }
                answered |= x.seq == id + 1;
            }
            if answered {
                return Ok(());
            }
        }
    }

    /// Asks for rate-limit decisions (`QUERY_LIMIT`), up to 64 in one
    /// datagram, and waits for the one reply datagram; `out` gets one
    /// decision per hit, in order.
    pub fn limit_hits(
        &mut self,
        hits: &[LimitHit],
        out: &mut Vec<LimitDecision>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        if hits.is_empty() {
            out.clear();
            return Ok(());
        }
        if hits.len() > MAX_LOCAL_RECORDS {
            return Err(ClientError::TooMany);
        }
        let first = self.next_id;
        self.next_id += hits.len() as u64;
        self.buf.clear();
        for (i, h) in hits.iter().enumerate() {
            let mut q = Record::new(
                Code::QUERY_LIMIT,
                [u64::from(h.limit), h.key, u64::from(h.n), 0],
            );
            q.seq = first + i as u64;
            q.op = shoal_wire::Op::default();
            self.buf.extend_from_slice(&q.to_bytes());
        }
        self.sock.send(&self.buf)?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; MAX_LOCAL_RECORDS * RECORD_LEN];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            self.sock.set_read_timeout(Some(left))?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(timeout))
                }
                Err(e) => return Err(e.into()),
            };
            // Late replies of earlier queries are skipped.
            let ours = buf[..n].chunks_exact(RECORD_LEN).any(|c| {
                Record::decode_slice(c).is_ok_and(|r| r.seq >= first && r.seq < self.next_id)
            });
            if !ours {
                continue;
            }
            out.clear();
            out.extend(buf[..n].chunks_exact(RECORD_LEN).filter_map(|c| {
                let r = Record::decode_slice(c).ok()?;
                Some(match (r.code, r.fields[2]) {
                    (Code::QUERY_LIMIT, 1) => LimitDecision::Allow,
                    (Code::QUERY_LIMIT, 2) => LimitDecision::Deny {
                        retry_after: Duration::from_micros(r.fields[3]),
                    },
                    (Code::QUERY_LIMIT, 3) => LimitDecision::TooLarge,
                    (Code::REPLY_ERROR, _) => LimitDecision::Refused(r.fields[0]),
                    _ => LimitDecision::Refused(0),
                })
            }));
            return Ok(());
        }
    }

    /// Waits for any reply datagram (tests of error replies).
    pub fn recv_raw(&self, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        self.sock.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 65536];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout(timeout))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// One question of [`LocalClient::limit_hits`]: `n` hits of `key` under
/// the limit whose id is `limit` (`shoal_core::keyrate::name_id(name)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    pub limit: u32,
    pub key: u64,
    pub n: u32,
}

/// The sidecar's answer to one [`LimitHit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    Allow,
    Deny {
        retry_after: Duration,
    },
    /// More hits at once than the limit's burst: never admitted.
    TooLarge,
    /// Refused with this reason (`docs/local-api.md`; 8 unknown limit).
    Refused(u64),
}

/// A minimal HTTP/1.1 GET; returns the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    match http_request(addr, "GET", path, None, b"")? {
        (200, body) => Ok(body),
        (status, _) => Err(std::io::Error::other(format!(
            "bad answer from {addr}{path}: status {status}"
        ))),
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with
/// an optional bearer token and a JSON body; returns status and body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let bad = || std::io::Error::other(format!("bad answer from {addr}{path}: {resp:?}"));
    let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
