//! The tokio driver: one TCP connection per [`Client`], owned by a
//! background task that connects, authenticates, writes queued requests in
//! few writes, matches responses to their waiters by sync id, and
//! reconnects with exponential backoff when the connection drops.
//!
//! Liveness: a peer that stops answering without closing (a stopped
//! process, a blackholed link) would otherwise look connected forever.
//! The socket has TCP keepalive and `TCP_USER_TIMEOUT` (unacknowledged
//! data for that long drops the connection in the kernel); the connection
//! task pings when nothing has been read for `ping_idle`, and drops the
//! connection when nothing has been read for `dead_after` while a request
//! or a ping waits (the process is stopped but its kernel still acks).
//! The waiting requests then fail with [`Error::OutcomeUnknown`].

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, trace, warn, Instrument};

use crate::api::{Select, Tarantool};
use crate::codec::{self, Body, SelectArgs};
use crate::error::{DecodeError, Error};

/// `_vspace`, the system view of the spaces a user may see, and its index
/// by name.
const VSPACE: u32 = 281;
const VSPACE_NAME_INDEX: u32 = 2;
/// Tarantool's `ER_NO_SUCH_SPACE`: a cached space id went stale.
const ER_NO_SUCH_SPACE: u32 = 36;
/// The writer stops coalescing queued requests at this many bytes.
const WRITE_BATCH: usize = 256 * 1024;
/// Free room the reader keeps in its buffer before each read.
const READ_CHUNK: usize = 64 * 1024;

/// Where and how a [`Client`] connects, and how it behaves. Build it with
/// [`ClientConfig::new`] and struct update syntax.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of the server.
    pub addr: String,
    /// The user to authenticate as (chap-sha1); empty for guest, no auth.
    pub user: String,
    pub password: String,
    /// Limit on TCP connect, greeting and authentication together.
    pub connect_timeout: Duration,
    /// Default limit on one request, from the call to the answer
    /// (waiting for an in-flight permit included); see
    /// [`Client::with_timeout`].
    pub request_timeout: Duration,
    /// First delay before reconnecting; doubled after each failed attempt
    /// up to `reconnect_max`, back to `reconnect_min` once connected.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Requests in flight at most; more wait for a permit.
    pub max_in_flight: usize,
    /// Responses larger than this drop the connection.
    pub max_response: usize,
    /// Ping when nothing has been read for this long; `None`: never.
    pub ping_idle: Option<Duration>,
    /// Drop the connection when nothing has been read for this long while
    /// a request or a ping waits for its answer. Also the socket's
    /// `TCP_USER_TIMEOUT` and, divided by three, its keepalive idle time
    /// and interval.
    pub dead_after: Duration,
}

impl ClientConfig {
    /// Defaults: connect 2 s, request 5 s, reconnect 100 ms doubling to
    /// 5 s, 1024 requests in flight, responses up to 128 MiB, ping after
    /// 1 s of silence, dead after 3 s.
    pub fn new(
        addr: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            user: user.into(),
            password: password.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_in_flight: 1024,
            max_response: 128 << 20,
            ping_idle: Some(Duration::from_secs(1)),
            dead_after: Duration::from_secs(3),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_response", &self.max_response)
            .field("ping_idle", &self.ping_idle)
            .field("dead_after", &self.dead_after)
            .finish()
    }
}

/// A pipelined connection to one Tarantool instance. Cheap to clone; the
/// clones share the connection, which closes when the last is dropped.
/// Implements [`Tarantool`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    shared: Arc<Shared>,
    /// Dropped with the last `Client`: the connection task ends.
    _shutdown: oneshot::Sender<()>,
}

/// What the clients and the connection task share.
struct Shared {
    config: ClientConfig,
    /// The live connection, if any.
    conn: Mutex<Option<Arc<Conn>>>,
    connected: watch::Sender<bool>,
    permits: Semaphore,
    next_sync: AtomicU64,
    /// Space ids by name; cleared on reconnect and schema change.
    spaces: Mutex<HashMap<String, u32>>,
    schema_version: AtomicU64,
}

type Waiter = oneshot::Sender<Result<Reply, Error>>;

/// One live connection: the writer's queue and the waiting requests.
struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<Pending>,
    /// When the reader last got bytes, in ms since `born`.
    read_ms: AtomicU64,
    born: tokio::time::Instant,
}

#[derive(Default)]
struct Pending {
    /// Set when the connection is gone: nothing more is registered.
    closed: bool,
    waiters: HashMap<u64, Waiter>,
}

/// A successful answer: the frame and where its `DATA` lies in it.
struct Reply {
    frame: Bytes,
    data: Option<Range<usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reply {
    fn data(&self) -> Result<&[u8], Error> {
        self.data
            .clone()
            .and_then(|r| self.frame.get(r))
            .ok_or(Error::Protocol(DecodeError::Malformed(
                "answer without data",
            )))
    }

    /// Deserializes `DATA` straight from the frame.
    fn decode<R: DeserializeOwned>(&self) -> Result<R, Error> {
        rmp_serde::from_slice(self.data()?).map_err(|e| Error::Decode(e.to_string()))
    }
}

impl Conn {
    fn register(&self, sync: u64, waiter: Waiter) -> Result<(), Error> {
        let mut p = lock(&self.pending);
        if p.closed {
            return Err(Error::Disconnected);
        }
        p.waiters.insert(sync, waiter);
        Ok(())
    }

    fn mark_read(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.read_ms.store(ms, Ordering::Relaxed);
    }

    /// How long nothing has been read.
    fn silent_for(&self) -> Duration {
        let read = Duration::from_millis(self.read_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(read)
    }

    fn waiting(&self) -> bool {
        !lock(&self.pending).waiters.is_empty()
    }

    fn take(&self, sync: u64) -> Option<Waiter> {
        lock(&self.pending).waiters.remove(&sync)
    }

    /// Fails every waiting request; returns how many there were.
    fn close(&self, reason: &str) -> usize {
        let waiters = {
            let mut p = lock(&self.pending);
            p.closed = true;
            std::mem::take(&mut p.waiters)
        };
        let n = waiters.len();
        for (_, w) in waiters {
            let _ = w.send(Err(Error::OutcomeUnknown(reason.to_owned())));
        }
        n
    }
}

/// Removes a request's waiter when the request ends early (timeout,
/// cancellation, failed send).
struct Unregister<'a> {
    conn: &'a Conn,
    sync: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.conn.take(self.sync);
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Conn>> {
        lock(&self.conn).clone()
    }

    fn publish(&self, conn: Arc<Conn>) {
        lock(&self.spaces).clear();
        self.schema_version.store(0, Ordering::Relaxed);
        *lock(&self.conn) = Some(conn);
        self.connected.send_replace(true);
    }

    fn unpublish(&self) {
        *lock(&self.conn) = None;
        self.connected.send_replace(false);
    }

    /// Hands one response to its waiter.
    fn dispatch(&self, conn: &Conn, frame: Bytes) -> Result<(), DecodeError> {
        let resp = codec::decode_response(&frame)?;
        if resp.schema_version != 0 {
            let old = self
                .schema_version
                .swap(resp.schema_version, Ordering::Relaxed);
            if old != 0 && old != resp.schema_version {
                debug!(
                    old,
                    new = resp.schema_version,
                    "schema changed; space ids forgotten"
                );
                lock(&self.spaces).clear();
            }
        }
        let result = match resp.body {
            Body::Push => return Ok(()),
            Body::Ok(data) => Ok(Reply { frame, data }),
            Body::Error { code, message } => Err(Error::Server { code, message }),
            Body::Unknown(code) => {
                debug!(code, sync = resp.sync, "response with an unknown code");
                Err(Error::Protocol(DecodeError::Malformed(
                    "unknown response code",
                )))
            }
        };
        match conn.take(resp.sync) {
            Some(w) => {
                let _ = w.send(result);
            }
            None => trace!(sync = resp.sync, "answer to a request no longer waiting"),
        }
        Ok(())
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.shared.config.addr)
            .field("connected", &self.is_connected())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client that connects in the background and keeps reconnecting;
    /// requests fail with [`Error::Disconnected`] until it is connected.
    /// Must be called within a Tokio runtime.
    pub fn new(config: ClientConfig) -> Client {
        Client::spawn(config, None)
    }

    /// As [`Client::new`], but waits for the first connection attempt and
    /// returns its error (e.g. [`Error::Auth`]) if it fails.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let (tx, rx) = oneshot::channel();
        let client = Client::spawn(config, Some(tx));
        match rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Disconnected),
        }
    }

    fn spawn(config: ClientConfig, first: Option<oneshot::Sender<Result<(), Error>>>) -> Client {
        let (shutdown, shutdown_rx) = oneshot::channel();
        let timeout = config.request_timeout;
        let permits = config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            config,
            conn: Mutex::new(None),
            connected: watch::channel(false).0,
            permits: Semaphore::new(permits),
            next_sync: AtomicU64::new(1),
            spaces: Mutex::new(HashMap::new()),
            schema_version: AtomicU64::new(0),
        });
        let span = tracing::info_span!("tarantool", addr = %shared.config.addr);
        tokio::spawn(run(shared.clone(), shutdown_rx, first).instrument(span));
        Client {
            inner: Arc::new(Inner {
                shared,
                _shutdown: shutdown,
            }),
            timeout,
        }
    }

    /// A handle on the same connection whose requests time out after
    /// `timeout` instead of the configured default.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// The server's address as given.
    pub fn addr(&self) -> &str {
        &self.inner.shared.config.addr
    }

    /// Whether the connection is up and authenticated now.
    pub fn is_connected(&self) -> bool {
        *self.inner.shared.connected.borrow()
    }

    /// Waits up to `timeout` for the connection to be up; returns whether
    /// it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.shared.connected.subscribe();
        let up = tokio::time::timeout(timeout, rx.wait_for(|up| *up)).await;
        matches!(up, Ok(Ok(_)))
    }

    /// Sends one request, encoded by `encode` with the sync id it is given,
    /// and waits for its answer.
    async fn request<F>(&self, encode: F) -> Result<Reply, Error>
    where
        F: FnOnce(&mut Vec<u8>, u64) -> Result<(), Error> + Send,
    {
        let shared = &self.inner.shared;
        let exchange = async {
            // Fail fast rather than wait for a permit when disconnected.
            if shared.current().is_none() {
                return Err(Error::Disconnected);
            }
            let _permit = shared
                .permits
                .acquire()
                .await
                .map_err(|_| Error::Disconnected)?;
            let conn = shared.current().ok_or(Error::Disconnected)?;
            let sync = shared.next_sync.fetch_add(1, Ordering::Relaxed);
            let mut frame = Vec::with_capacity(128);
            encode(&mut frame, sync)?;
            let (tx, rx) = oneshot::channel();
            conn.register(sync, tx)?;
            let _unregister = Unregister { conn: &conn, sync };
            conn.tx.send(frame).map_err(|_| Error::Disconnected)?;
            rx.await
                .unwrap_or_else(|_| Err(Error::OutcomeUnknown("connection task ended".into())))
        };
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout(self.timeout)));
        if let Err(Error::Server {
            code: ER_NO_SUCH_SPACE,
            ..
        }) = &result
        {
            lock(&shared.spaces).clear();
        }
        result
    }

    /// The id of a space by name, from the cache or `_vspace`.
    async fn space_id(&self, name: &str) -> Result<u32, Error> {
        let spaces = &self.inner.shared.spaces;
        if let Some(&id) = lock(spaces).get(name) {
            return Ok(id);
        }
        let args = SelectArgs {
            index: VSPACE_NAME_INDEX,
            iterator: 0,
            limit: 1,
            offset: 0,
        };
        let reply = self
            .request(|out, sync| codec::encode_select(out, sync, VSPACE, args, &(name,)))
            .await?;
        let id = codec::first_field_u32(reply.data()?)?
            .ok_or_else(|| Error::NoSuchSpace(name.to_owned()))?;
        lock(spaces).insert(name.to_owned(), id);
        Ok(id)
    }
}

impl Tarantool for Client {
    async fn ping(&self) -> Result<(), Error> {
        self.request(codec::encode_ping).await.map(drop)
    }

    async fn call<A, R>(&self, function: &str, args: &A) -> Result<R, Error>
    where
        A: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        self.request(|out, sync| codec::encode_call(out, sync, function, args))
            .await?
            .decode()
    }

    async fn eval<A, R>(&self, expr: &str, args: &A) -> Result<R, Error>
    where
        A: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        self.request(|out, sync| codec::encode_eval(out, sync, expr, args))
            .await?
            .decode()
    }

    async fn select<K, R>(&self, space: &str, key: &K, opts: Select) -> Result<Vec<R>, Error>
    where
        K: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        let space = self.space_id(space).await?;
        let args = SelectArgs {
            index: opts.index,
            iterator: opts.iter.code(),
            limit: opts.limit,
            offset: opts.offset,
        };
        self.request(|out, sync| codec::encode_select(out, sync, space, args, key))
            .await?
            .decode()
    }

    async fn insert<T>(&self, space: &str, tuple: &T) -> Result<(), Error>
    where
        T: Serialize + ?Sized + Sync,
    {
        let space = self.space_id(space).await?;
        let ty = codec::request::INSERT;
        self.request(|out, sync| codec::encode_store(out, sync, ty, space, tuple))
            .await
            .map(drop)
    }

    async fn replace<T>(&self, space: &str, tuple: &T) -> Result<(), Error>
    where
        T: Serialize + ?Sized + Sync,
    {
        let space = self.space_id(space).await?;
        let ty = codec::request::REPLACE;
        self.request(|out, sync| codec::encode_store(out, sync, ty, space, tuple))
            .await
            .map(drop)
    }

    async fn update<K, O>(&self, space: &str, index: u32, key: &K, ops: &O) -> Result<(), Error>
    where
        K: Serialize + ?Sized + Sync,
        O: Serialize + ?Sized + Sync,
    {
        let space = self.space_id(space).await?;
        self.request(|out, sync| codec::encode_update(out, sync, space, index, key, ops))
            .await
            .map(drop)
    }

    async fn delete<K, R>(&self, space: &str, index: u32, key: &K) -> Result<Option<R>, Error>
    where
        K: Serialize + ?Sized + Sync,
        R: DeserializeOwned + Send,
    {
        let space = self.space_id(space).await?;
        let reply = self
            .request(|out, sync| codec::encode_delete(out, sync, space, index, key))
            .await?;
        let mut tuples: Vec<R> = reply.decode()?;
        Ok(tuples.pop())
    }

    async fn upsert<T, O>(&self, space: &str, tuple: &T, ops: &O) -> Result<(), Error>
    where
        T: Serialize + ?Sized + Sync,
        O: Serialize + ?Sized + Sync,
    {
        let space = self.space_id(space).await?;
        self.request(|out, sync| codec::encode_upsert(out, sync, space, tuple, ops))
            .await
            .map(drop)
    }
}

// ---------------------------------------------------------------- the task

/// The connection task: connect, serve until the connection drops,
/// back off, again; until the last `Client` is dropped.
async fn run(
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
    mut first: Option<oneshot::Sender<Result<(), Error>>>,
) {
    let cfg = &shared.config;
    let mut delay = cfg.reconnect_min;
    let mut failures: u32 = 0;
    loop {
        debug!(attempt = failures + 1, "connecting");
        let attempt = tokio::select! {
            _ = &mut shutdown => return,
            r = tokio::time::timeout(cfg.connect_timeout, handshake(&shared)) => {
                r.unwrap_or(Err(Error::ConnectTimeout(cfg.connect_timeout)))
            }
        };
        match attempt {
            Ok((stream, buf, version)) => {
                info!(%version, after_failures = failures, "connected");
                failures = 0;
                delay = cfg.reconnect_min;
                let (tx, rx) = mpsc::unbounded_channel();
                let conn = Arc::new(Conn {
                    tx,
                    pending: Mutex::new(Pending::default()),
                    read_ms: AtomicU64::new(0),
                    born: tokio::time::Instant::now(),
                });
                shared.publish(conn.clone());
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
                let mut stopping = false;
                let reason = tokio::select! {
                    _ = &mut shutdown => {
                        stopping = true;
                        "client dropped".to_owned()
                    }
                    r = serve(&shared, &conn, stream, buf, rx) => r,
                };
                shared.unpublish();
                let lost = conn.close(&reason);
                if stopping {
                    debug!(in_flight = lost, "closed: client dropped");
                    return;
                }
                warn!(%reason, in_flight = lost, "disconnected");
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(error = %e, "connect failed; retrying with backoff");
                } else {
                    debug!(error = %e, failures, next_in = ?delay, "connect failed");
                }
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = delay
            .saturating_mul(2)
            .min(cfg.reconnect_max)
            .max(cfg.reconnect_min);
    }
}

/// TCP connect, greeting, authentication. Returns the stream, any bytes
/// read past the auth answer, and the server's version line.
async fn handshake(shared: &Shared) -> Result<(TcpStream, BytesMut, String), Error> {
    let cfg = &shared.config;
    let mut stream = TcpStream::connect(&cfg.addr).await?;
    stream.set_nodelay(true)?;
    set_liveness(&stream, cfg.dead_after)?;
    let mut greeting = [0u8; codec::GREETING_LEN];
    stream.read_exact(&mut greeting).await?;
    let greeting = codec::parse_greeting(&greeting)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if cfg.user.is_empty() {
        return Ok((stream, buf, greeting.version));
    }
    let sync = shared.next_sync.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(128);
    let scramble = codec::scramble(&greeting.salt, &cfg.password);
    codec::encode_auth(&mut out, sync, &cfg.user, &scramble)?;
    stream.write_all(&out).await?;
    loop {
        if let Some(frame) = codec::next_frame(&mut buf, cfg.max_response)? {
            let resp = codec::decode_response(&frame)?;
            return match resp.body {
                Body::Ok(_) if resp.sync == sync => Ok((stream, buf, greeting.version)),
                Body::Error { code, message } => Err(Error::Auth { code, message }),
                _ => Err(DecodeError::Malformed("unexpected answer to auth").into()),
            };
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// Runs the reader and the writer of one connection until either stops;
/// returns why.
async fn serve(
    shared: &Shared,
    conn: &Conn,
    stream: TcpStream,
    buf: BytesMut,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> String {
    let (rd, wr) = stream.into_split();
    tokio::select! {
        r = read_loop(shared, conn, rd, buf) => r,
        r = write_loop(rx, wr) => r,
        r = watchdog(shared, conn) => r,
    }
}

/// Keepalive probes after a third of `dead_after` idle, every third, and
/// `TCP_USER_TIMEOUT` of `dead_after`: a link that drops our packets
/// fails the socket in the kernel.
fn set_liveness(stream: &TcpStream, dead_after: Duration) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    let third = (dead_after / 3).max(Duration::from_secs(1));
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(third)
            .with_interval(third)
            .with_retries(3),
    )?;
    sock.set_tcp_user_timeout(Some(dead_after))
}

/// Pings a quiet connection and gives up on one that stays silent while
/// something waits for an answer; returns why.
async fn watchdog(shared: &Shared, conn: &Conn) -> String {
    let cfg = &shared.config;
    let tick = cfg
        .ping_idle
        .unwrap_or(cfg.dead_after)
        .min(cfg.dead_after)
        .checked_div(4)
        .unwrap_or_default()
        .max(Duration::from_millis(10));
    let mut pinged = false;
    loop {
        tokio::time::sleep(tick).await;
        let silent = conn.silent_for();
        if silent >= cfg.dead_after && (pinged || conn.waiting()) {
            return format!("no answer for {} ms", silent.as_millis());
        }
        match cfg.ping_idle {
            Some(idle) if silent >= idle => {
                if !pinged {
                    // The answer goes to no waiter; reading it is the point.
                    let sync = shared.next_sync.fetch_add(1, Ordering::Relaxed);
                    let mut frame = Vec::with_capacity(16);
                    if codec::encode_ping(&mut frame, sync).is_ok() && conn.tx.send(frame).is_err()
                    {
                        return "writer gone".to_owned();
                    }
                    pinged = true;
                }
            }
            _ => pinged = false,
        }
    }
}

async fn read_loop(
    shared: &Shared,
    conn: &Conn,
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
) -> String {
    loop {
        loop {
            match codec::next_frame(&mut buf, shared.config.max_response) {
                Ok(Some(frame)) => {
                    if let Err(e) = shared.dispatch(conn, frame) {
                        return e.to_string();
                    }
                }
                Ok(None) => break,
                Err(e) => return e.to_string(),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return "closed by the server".to_owned(),
            Ok(_) => conn.mark_read(),
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

/// Writes queued requests: a lone one as it is, several (up to
/// `WRITE_BATCH` bytes) copied into one buffer and written at once.
async fn write_loop(mut rx: mpsc::UnboundedReceiver<Vec<u8>>, mut wr: OwnedWriteHalf) -> String {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        let Some(first) = rx.recv().await else {
            return "client dropped".to_owned();
        };
        let written = match rx.try_recv() {
            Err(_) => wr.write_all(&first).await,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                let mut frames = 2;
                while batch.len() < WRITE_BATCH {
                    let Ok(frame) = rx.try_recv() else { break };
                    batch.extend_from_slice(&frame);
                    frames += 1;
                }
                trace!(frames, bytes = batch.len(), "write");
                let written = wr.write_all(&batch).await;
                if batch.capacity() > 4 * WRITE_BATCH {
                    batch = Vec::with_capacity(WRITE_BATCH);
                }
                written
            }
        };
        if let Err(e) = written {
            return format!("write failed: {e}");
        }
    }
}
