//! The I/O driver around [`Node`]: the multicast socket, the filter's
//! Unix datagram socket, the HTTP endpoint and the clock. The hot path is
//! one plain thread, `shoal-io`, that owns both sockets: it waits on both
//! with `ppoll` (microsecond deadlines, below tokio's timer resolution),
//! takes up to [`RX_BATCH`] cluster datagrams per `recvmmsg`, serves the
//! filter, runs the node's timers, and sends what the node sealed with one
//! `sendmmsg`. When neither socket has anything queued it seals the open
//! batch at once (an idle node sends a lone record without waiting), so
//! `flush_us` only bounds the wait under sustained load.
//!
//! The node stays behind a `Mutex` for the rare users outside the hot
//! thread (the API, the forwarder, the saver, `/metrics`); the hot thread
//! is its only frequent user, so the lock is uncontended. tokio runs the
//! HTTP listeners (admin: `/metrics`, `/status`, `/healthz`; API:
//! `/v1/...`), the Tarantool edges and the signal handling.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::config::Config;
use crate::forwarder::Forwarder;
use crate::http::{self, Request, Response};
use crate::metrics::{self, IoStats};
use crate::preflight::{bind_local, file_id, remove_if_same, BindError};
use crate::storage::Storage;
use crate::transport::{self, TransportError};
use crate::verdicts::Api;
use shoal_core::{Node, Outbox};
use shoal_tarantool::verdict::VerdictClient;

/// The verdict store as the API and the forwarder use it.
type Store = VerdictClient<shoal_tarantool::Client>;

/// Why the node could not start or stopped. I/O causes are sources, not
/// part of the message: `{:#}` prints each once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Local(#[from] BindError),
    #[error("http listener {addr}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
    #[error("runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Incarnation(#[from] crate::incarnation::IncarnationError),
    #[error("syslog listener")]
    Syslog(#[source] std::io::Error),
    #[error("enforcer")]
    Enforce(#[source] crate::nft::NftError),
    #[error(transparent)]
    Limits(#[from] shoal_core::ratelimit::LimitsError),
}

/// Microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) struct Shared {
    node: Mutex<Node>,
    pub(crate) io: IoStats,
    /// Woken when the filter hands over records to save.
    pub(crate) store_wake: tokio::sync::Notify,
    shutdown: AtomicBool,
    multicast: UdpSocket,
    dest: SocketAddr,
    /// The enforcer's rules and stats, once it runs (`[enforce]`).
    pub(crate) enforce: std::sync::OnceLock<EnforceView>,
    /// The enforcer's thread, unparked when the blocks change so a block
    /// reaches the kernel without waiting for its poll.
    pub(crate) enforce_thread: std::sync::OnceLock<std::thread::Thread>,
}

/// What the API and the metrics read of the enforcer.
#[derive(Clone)]
pub(crate) struct EnforceView {
    pub(crate) rules: Arc<shoal_core::enforce::EnforceRules>,
}

impl Shared {
    /// True once the node is shutting down (threads outside this module
    /// poll it).
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Tells the enforcer the blocks changed (a no-op without one).
    pub(crate) fn wake_enforcer(&self) {
        if let Some(t) = self.enforce_thread.get() {
            t.unpark();
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug; the state is still the
        // best we have, so keep serving it.
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the node from outside the hot thread (the API, the
    /// forwarder) and multicasts whatever it made ready.
    pub(crate) fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let mut outbox = Outbox::new();
        let r = {
            let mut node = self.lock();
            let gen = node.blocks().generation();
            let r = f(&mut node);
            if node.backlog().is_some_and(|b| b.queued() > 0) {
                self.store_wake.notify_one();
            }
            if node.blocks().generation() != gen {
                self.wake_enforcer();
            }
            node.take_transmit(&mut outbox);
            r
        };
        let mut tx = transport::Tx::new(self.dest);
        self.send_all(&mut tx, &outbox);
        r
    }

    fn send_all(&self, tx: &mut transport::Tx, outbox: &Outbox) {
        let failed = tx.send(&self.multicast, outbox);
        if failed > 0 {
            self.io.send_errors.fetch_add(failed, Ordering::Relaxed);
        }
    }
}

/// Runs the sidecar until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), ServerError> {
    let started = Instant::now();
    let span = tracing::info_span!("node", id = cfg.node.id, cluster = cfg.node.cluster);
    let _enter = span.enter();
    // The same checks as `shoal check`, before anything is opened.
    let pre = cfg.preflight()?;
    if cfg.auth.is_none() {
        warn!(
            group = %cfg.multicast.group,
            port = cfg.multicast.port,
            "no [auth]: datagrams are not signed, so every host that can reach the multicast group is trusted to change this cluster's state"
        );
    }
    let mc = transport::open(&cfg.multicast)?;
    let io = IoStats::default();
    // 0 without [auth]: alert on it (shoal_auth_enabled).
    io.auth_enabled
        .store(u64::from(cfg.auth.is_some()), Ordering::Relaxed);
    io.rcvbuf_requested
        .store(mc.rcvbuf.requested as u64, Ordering::Relaxed);
    io.rcvbuf_effective
        .store(mc.rcvbuf.effective as u64, Ordering::Relaxed);
    if mc.rcvbuf.capped() {
        io.rcvbuf_capped.store(1, Ordering::Relaxed);
        warn!(
            requested = mc.rcvbuf.requested,
            granted = mc.rcvbuf.effective,
            "kernel capped the multicast receive buffer; raise net.core.rmem_max (or run with CAP_NET_ADMIN) or expect loss under bursts"
        );
    } else {
        info!(
            bytes = mc.rcvbuf.effective,
            forced = mc.rcvbuf.forced,
            "receive buffer sized"
        );
    }
    let local = bind_local(&cfg.local, pre.socket_gid)?;
    let local_id = file_id(&cfg.local.socket);
    info!(
        socket = %cfg.local.socket.display(),
        mode = cfg.local.mode.as_deref().unwrap_or("umask"),
        gid = pre.socket_gid,
        "local socket bound"
    );
    // Read before anything is served: a bad rules file stops the start.
    let rules = match &cfg.syslog {
        Some(s) => Some(crate::rulesfile::load_rules(&s.rules)?),
        None => None,
    };
    // Persisted before the node speaks: above every value of its last run.
    let (incarnation_file, incarnation) =
        crate::incarnation::IncarnationFile::start(&cfg.incarnation_file(), wall_us())?;
    info!(
        incarnation,
        file = %cfg.incarnation_file().display(),
        "incarnation"
    );
    // Only with loop on do this node's datagrams come back to it. Without
    // it no filter is attached, so a forgery carrying this node's id and
    // incarnation is refused and counted in user space like any other.
    if cfg.multicast.loopback {
        if let Err(e) = transport::drop_own(&mc.socket, cfg.node.id, incarnation) {
            // Only a cost: the node drops its own datagrams itself.
            warn!(error = %e, "cannot attach the socket filter for own looped datagrams");
        }
    }
    let params = cfg.node_params();
    let seed = params.hash_seed;
    let mut node = Node::new(params, Instant::now(), wall_us(), incarnation);
    if let Some(e) = &cfg.enforce {
        node.set_block_rules(e.block_rules());
        node.set_enforce_rules(e.rules(&cfg.protected_prefixes()));
    }
    node.set_limits(Instant::now(), cfg.limit_rules(), seed)?;
    for l in node.limit_snapshots() {
        info!(
            limit = %l.name,
            id = format_args!("{:#010x}", l.id),
            rate = l.rate,
            burst = l.burst,
            "rate limit"
        );
    }
    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        io,
        store_wake: tokio::sync::Notify::new(),
        shutdown: AtomicBool::new(false),
        multicast: mc.socket,
        dest: mc.dest,
        enforce: std::sync::OnceLock::new(),
        enforce_thread: std::sync::OnceLock::new(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let storage = match &cfg.store {
        Some(st) => Some(start_storage(&rt, st, &cfg, &shared)?),
        None => None,
    };
    let (api, forwarder) = match &cfg.verdicts {
        Some(v) => {
            let (a, f) = start_verdicts(&rt, v, &cfg, &shared)?;
            (Some(Arc::new(a)), f)
        }
        None => (None, None),
    };
    // After the replay: the first reconcile starts from the blocks the
    // store gave back, so nothing correct in the kernel is removed.
    let enforcer = match &cfg.enforce {
        Some(e) => {
            let own = [cfg.multicast.interface.into()];
            let replayed = shared.io.store.replay_ok.load(Ordering::Relaxed) == 1;
            let h = crate::enforce::start(e, &own, Arc::clone(&shared), span.clone(), !replayed)
                .map_err(ServerError::Enforce)?;
            let _ = shared.enforce.set(EnforceView {
                rules: Arc::clone(&h.rules),
            });
            Some(h)
        }
        None => None,
    };
    // The kernel meters and escalation, in the enforcer's table.
    let limits = crate::limits::start(&cfg, Arc::clone(&shared), span.clone())
        .map_err(ServerError::Enforce)?;
    // Bound before the node says it serves, so /metrics answers as soon as
    // the log line is out.
    let api_addr = cfg.http.api_addr(api.is_some());
    raise_fd_limit(cfg.http.max_connections * (1 + usize::from(api_addr.is_some())));
    let admin_listener = bind_http(&rt, &cfg.http.admin)?;
    let api_listener = match &api_addr {
        Some(a) => bind_http(&rt, a)?,
        None => None,
    };
    let hot = {
        let s = Arc::clone(&shared);
        let span = span.clone();
        spawn("shoal-io", move || {
            let _e = span.enter();
            io_loop(&s, &local)
        })?
    };
    let syslog = match (&cfg.syslog, rules) {
        (Some(sc), Some(rules)) => {
            info!(rules = rules.len(), file = %sc.rules.display(), "responder rules loaded");
            Some(crate::syslog::start(sc, rules, seed, &shared).map_err(ServerError::Syslog)?)
        }
        _ => None,
    };
    shared
        .io
        .startup_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    info!(
        group = %cfg.multicast.group,
        port = cfg.multicast.port,
        interface = %cfg.multicast.interface,
        socket = %cfg.local.socket.display(),
        admin = %cfg.http.admin,
        api = api_addr.as_deref().unwrap_or(""),
        auth = cfg.auth.is_some(),
        verdicts = api.is_some(),
        startup_us = started.elapsed().as_micros() as u64,
        "shoal node serving"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let saver = storage.map(|st| {
        rt.spawn(st.run(async move {
            let _ = stop_rx.await;
        }))
    });
    let (fwd_stop_tx, fwd_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let forwarder = forwarder.map(|f| {
        rt.spawn(f.run(async move {
            let _ = fwd_stop_rx.await;
        }))
    });
    rt.spawn(keep_incarnation_ahead(
        Arc::clone(&shared),
        incarnation_file,
    ));
    let listeners = Listeners {
        admin: admin_listener,
        api: api_listener.zip(api),
        admin_limits: http_limits(&cfg.http, ADMIN_MAX_BODY),
        api_limits: http_limits(
            &cfg.http,
            cfg.verdicts.as_ref().map_or(ADMIN_MAX_BODY, |v| v.max_body),
        ),
    };
    let result = rt.block_on(serve_until_signal(Arc::clone(&shared), listeners));
    shared.shutdown.store(true, Ordering::Relaxed);
    if let Some(f) = forwarder {
        // Hands the lease over at once rather than after it runs out.
        let _ = fwd_stop_tx.send(());
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), f).await });
    }
    let _ = hot.join();
    if let Some(s) = syslog {
        s.join();
    }
    if let Some(saver) = saver {
        // Stop taking records first, then let the saver drain.
        let _ = stop_tx.send(());
        let _ = rt.block_on(saver);
    }
    if let Some(l) = limits {
        let _ = l.join();
    }
    if let Some(e) = enforcer {
        e.stop();
    }
    remove_if_same(&cfg.local.socket, local_id);
    info!("shoal node stopped");
    result
}

/// Connects to the store and replays the cluster's live records into the
/// node before the filter is served. A store that does not answer within
/// `replay_timeout_ms` does not keep the node down: it serves without the
/// stored context and says so (log, `shoal_replay_ok 0`).
fn start_storage(
    rt: &tokio::runtime::Runtime,
    st: &crate::config::StoreSection,
    cfg: &Config,
    shared: &Arc<Shared>,
) -> Result<Storage, ServerError> {
    let _rt = rt.enter();
    let name = st.node_name(cfg.node.cluster, cfg.node.id);
    let mut storage = Storage::new(st, name.clone(), Arc::clone(shared))?;
    if !st.replay {
        return Ok(storage);
    }
    match rt.block_on(storage.replay(wall_us())) {
        Ok(r) => {
            let s = &shared.io.store;
            s.replay_records.store(r.applied as u64, Ordering::Relaxed);
            s.replay_us
                .store(r.took.as_micros() as u64, Ordering::Relaxed);
            s.replay_ok.store(1, Ordering::Relaxed);
            info!(
                name = %name,
                read = r.read,
                applied = r.applied,
                ms = r.took.as_millis() as u64,
                reading_ms = r.reading.as_millis() as u64,
                "replayed live records from the store"
            );
        }
        Err(e) => warn!(
            error = %e,
            "no replay: serving without the stored context"
        ),
    }
    Ok(storage)
}

/// The verdict API and, when this node takes part in the election, the
/// forwarder; both on one connection to the cluster's verdict store, which
/// connects in the background (the API answers 503 until it is up).
fn start_verdicts(
    rt: &tokio::runtime::Runtime,
    v: &crate::config::VerdictsSection,
    cfg: &Config,
    shared: &Arc<Shared>,
) -> Result<(Api, Option<Forwarder<Store>>), ServerError> {
    let _rt = rt.enter();
    let name = v.node_name(cfg.node.cluster, cfg.node.id);
    let client = shoal_tarantool::Client::new(shoal_tarantool::ClientConfig {
        request_timeout: Duration::from_millis(v.request_timeout_ms),
        ..shoal_tarantool::ClientConfig::new(v.store.clone(), v.user.clone(), v.password()?)
    });
    let store = VerdictClient::new(client);
    let forwarder = v.forwarder.then(|| Forwarder {
        port: store.clone(),
        name: name.clone(),
        cluster: cfg.node.cluster,
        lease: Duration::from_millis(v.lease_ms),
        poll: Duration::from_millis(v.poll_ms),
        request_timeout: Duration::from_millis(v.request_timeout_ms),
        shared: Arc::clone(shared),
    });
    let api = Api {
        store,
        name,
        cluster: cfg.node.cluster,
        api_tokens: v.api_tokens()?,
        keys: v.token_keys()?,
        max_ttl_s: v.max_ttl_s,
        shared: Arc::clone(shared),
        next_id: wall_us().into(),
    };
    Ok((api, forwarder))
}

/// Keeps the persisted incarnation floor ahead of what the node uses (a
/// write about every 5 s, off the runtime's thread).
async fn keep_incarnation_ahead(s: Arc<Shared>, file: crate::incarnation::IncarnationFile) {
    let file = Arc::new(Mutex::new(file));
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let high_water = s.lock().high_water();
        let f = Arc::clone(&file);
        let done = tokio::task::spawn_blocking(move || {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            f.keep_ahead(high_water)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot persist the incarnation floor; a restart may repeat record seqs")
            }
            Err(e) => warn!(error = %e, "incarnation writer failed"),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ServerError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(ServerError::Runtime)
}

/// Waits until one of `fds` is readable or `wait` passes (microsecond
/// resolution, unlike tokio's timers); returns which are readable.
fn wait_readable(fds: [std::os::fd::RawFd; 2], wait: Duration) -> [bool; 2] {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two valid pollfds, a valid timespec, no signal mask.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
    if rc < 0 {
        // EINTR and the like: look at both, as if woken.
        return [true; 2];
    }
    pfds.map(|p| p.revents != 0)
}

/// Cluster datagrams taken per `recvmmsg`.
const RX_BATCH: usize = 32;

/// Filter datagrams taken per `recvmmsg`: more than the kernel queues on
/// one Unix datagram socket by default (`net.unix.max_dgram_qlen`, 10), so
/// one call usually empties it and frees every blocked sender at once.
const LOCAL_BATCH: usize = 16;

/// Largest filter datagram read whole; longer ones are cut to it and
/// still refused, as too many records (a filter may send at most
/// `MAX_LOCAL_RECORDS`, 4 KiB): the slot must stay well above that.
const LOCAL_SLOT: usize = 65_536;
const _: () = assert!(LOCAL_SLOT > (shoal_core::MAX_LOCAL_RECORDS + 1) * shoal_wire::RECORD_LEN);

/// Which of the hot thread's two sockets to read in the next round of a
/// wake-up. A socket is read again while its last batch came back full
/// (more may be queued), and a full batch on either has the other read in
/// the same round too: neither a filter flood nor a busy cluster socket (a
/// peer's flood, a backlog after a stall) keeps the other waiting for its
/// queue to run dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Readiness {
    local: bool,
    cluster: bool,
}

impl Readiness {
    /// From what `ppoll` said was readable.
    fn new(local: bool, cluster: bool) -> Readiness {
        Readiness { local, cluster }
    }

    /// The cluster socket gave `n` datagrams of at most `batch`.
    fn cluster_took(&mut self, n: usize, batch: usize) {
        self.cluster = n == batch;
        self.local |= self.cluster;
    }

    /// The filters' socket gave `n` datagrams of at most `batch`.
    fn local_took(&mut self, n: usize, batch: usize) {
        self.local = n == batch;
        self.cluster |= self.local;
    }

    /// Neither socket has more queued: time to seal and sleep.
    fn drained(&self) -> bool {
        !self.local && !self.cluster
    }
}

/// The order in which to serve a batch of filter datagrams: first those
/// that only ask (`query[i]`) and whose sender reported nothing earlier
/// in the batch, then the rest as they came. A filter waiting for an answer does
/// not queue behind other filters' reports (a flood of them, in an
/// attack), and each filter still sees its own reports before its later
/// questions. `same(i, j)`: datagrams i and j came from one sender.
fn serve_order(query: &[bool], same: impl Fn(usize, usize) -> bool, order: &mut Vec<usize>) {
    order.clear();
    let first = |i: usize| query[i] && !(0..i).any(|j| !query[j] && same(i, j));
    order.extend((0..query.len()).filter(|&i| first(i)));
    order.extend((0..query.len()).filter(|&i| !first(i)));
}

/// The hot thread: both sockets, the node's timers and the sends.
fn io_loop(s: &Shared, sock: &UnixDatagram) {
    // Non-blocking: a filter that never reads its replies must not stall
    // the sidecar; its replies are dropped and counted instead.
    if let Err(e) = sock.set_nonblocking(true) {
        warn!(error = %e, "cannot make the local socket non-blocking");
    }
    let fds = [sock.as_raw_fd(), s.multicast.as_raw_fd()];
    let mut rx = transport::Rx::new(RX_BATCH);
    let mut local_rx = transport::Rx::with_senders(LOCAL_BATCH, LOCAL_SLOT);
    let mut tx = transport::Tx::new(s.dest);
    // One reply buffer per filter datagram of a batch: the replies go out
    // after the batch's multicast and outside the node's lock.
    let mut replies: Vec<Vec<u8>> = (0..LOCAL_BATCH).map(|_| Vec::with_capacity(4096)).collect();
    let mut outbox = Outbox::new();
    let mut query = Vec::with_capacity(LOCAL_BATCH);
    let mut order = Vec::with_capacity(LOCAL_BATCH);
    let mut deadline = s.lock().poll_timeout();
    let mut blocks_gen = s.lock().blocks().generation();
    while !s.shutdown.load(Ordering::Relaxed) {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        // Which sockets may have input: only those are read at first, so
        // a node woken by one datagram pays one `recvmmsg`, not a failed
        // one on the other socket too.
        let [local, cluster] = if wait.is_zero() {
            [true; 2]
        } else {
            wait_readable(fds, wait)
        };
        let mut ready = Readiness::new(local, cluster);
        // Serve everything queued on both sockets, then seal what is left.
        loop {
            let mut cluster = 0;
            if ready.cluster {
                cluster = rx.recv(&s.multicast).unwrap_or_else(|e| {
                    IoStats::inc(&s.io.recv_errors);
                    debug!(error = %e, "multicast receive failed");
                    0
                });
                ready.cluster_took(cluster, RX_BATCH);
            }
            let mut local = 0;
            if ready.local {
                local = local_rx.recv(sock).unwrap_or_else(|e| {
                    debug!(error = %e, "local receive failed");
                    0
                });
                ready.local_took(local, LOCAL_BATCH);
            }
            query.clear();
            query.extend((0..local).map(|i| shoal_core::queries_only(local_rx.datagram(i))));
            serve_order(
                &query,
                |i, j| local_rx.sender(i) == local_rx.sender(j),
                &mut order,
            );
            let drained = ready.drained();
            let now = Instant::now();
            {
                let mut node = s.lock();
                // What the cluster sent (so answers include it), then
                // the questions (see `serve_order`), then the reports.
                for d in rx.datagrams(cluster) {
                    if let Err(refused) = node.receive(now, d) {
                        debug!(reason = %refused, len = d.len(), "datagram refused");
                    }
                }
                for &i in &order {
                    node.handle_local(now, local_rx.datagram(i), &mut replies[i]);
                    if node.backlog().is_some_and(|b| b.queued() > 0) {
                        s.store_wake.notify_one();
                    }
                }
                if now >= node.poll_timeout() {
                    node.handle_timeout(now);
                }
                if drained && node.has_batch() {
                    // Nothing more is queued: the batch holds what already
                    // arrived, and waiting would only add latency.
                    node.flush();
                }
                node.take_transmit(&mut outbox);
                deadline = node.poll_timeout();
                if node.blocks().generation() != blocks_gen {
                    blocks_gen = node.blocks().generation();
                    s.wake_enforcer();
                }
            }
            s.send_all(&mut tx, &outbox);
            // Answers last: when a filter has its answer, the records it
            // sent before are already on their way to the cluster.
            for &i in &order {
                let (reply, to) = (&replies[i], local_rx.sender(i));
                if !reply.is_empty()
                    && !to.is_empty()
                    && transport::send_to_unix(sock, reply, to).is_err()
                {
                    IoStats::inc(&s.io.local_reply_errors);
                }
            }
            if drained || s.shutdown.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

/// Connections the kernel queues for accept: a burst of newcomers during
/// an attack is not dropped at SYN (a dropped SYN costs the client 1 s).
const HTTP_BACKLOG: i32 = 1024;

fn bind_http(
    rt: &tokio::runtime::Runtime,
    listen: &str,
) -> Result<Option<tokio::net::TcpListener>, ServerError> {
    if listen.is_empty() {
        return Ok(None);
    }
    let err = |source| ServerError::Http {
        addr: listen.to_string(),
        source,
    };
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| err(std::io::Error::new(ErrorKind::InvalidInput, e)))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(HTTP_BACKLOG).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    let _rt = rt.enter();
    tokio::net::TcpListener::from_std(sock.into())
        .map(Some)
        .map_err(err)
}

/// Largest body the admin listener reads (its endpoints take none).
const ADMIN_MAX_BODY: usize = 4096;

/// Descriptors the node needs besides its HTTP connections.
const FD_MARGIN: usize = 256;

/// Raises the soft descriptor limit towards the hard one so that the HTTP
/// connection caps, not `EMFILE` at accept, decide who is served.
fn raise_fd_limit(http_connections: usize) {
    let want = (http_connections + FD_MARGIN) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur < want {
        warn!(
            limit = lim.rlim_cur,
            wanted = want,
            "descriptor limit below the HTTP connection caps; raise LimitNOFILE/ulimit -n"
        );
    }
}

fn http_limits(h: &crate::config::HttpSection, max_body: usize) -> http::Limits {
    http::Limits {
        max_connections: h.max_connections,
        max_head: h.max_head,
        max_body,
        header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(h.idle_timeout_ms),
        body_timeout: Duration::from_millis(h.body_timeout_ms),
    }
}

/// The bound HTTP listeners: admin (`/metrics`, `/status`, `/healthz`)
/// and, with `[verdicts]`, the API (`/v1/...`).
struct Listeners {
    admin: Option<tokio::net::TcpListener>,
    api: Option<(tokio::net::TcpListener, Arc<Api>)>,
    admin_limits: http::Limits,
    api_limits: http::Limits,
}

async fn serve_until_signal(s: Arc<Shared>, l: Listeners) -> Result<(), ServerError> {
    let admin = async {
        match l.admin {
            Some(listener) => {
                let st = Arc::clone(&s);
                http::serve(listener, l.admin_limits, Arc::clone(&s), move |req| {
                    let s = Arc::clone(&st);
                    async move { admin_route(&s, req) }
                })
                .await
            }
            None => std::future::pending().await,
        }
    };
    let api = async {
        match l.api {
            Some((listener, api)) => {
                http::serve(listener, l.api_limits, Arc::clone(&s), move |req| {
                    let api = Arc::clone(&api);
                    async move { api_route(&api, req).await }
                })
                .await
            }
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::Runtime)?;
    tokio::select! {
        () = admin => Ok(()),
        () = api => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}

/// The admin listener: the node's own pages, nothing of the API.
fn admin_route(s: &Shared, req: Request) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    let known = matches!(
        path,
        "/metrics" | "/status" | "/status.html" | "/healthz" | "/blocks"
    );
    if !known {
        return Response::text(
            404,
            "try /metrics, /status, /status.html, /healthz or /blocks (the API has its own listener)\n",
        );
    }
    if req.method != "GET" {
        return Response::text(405, "GET only\n");
    }
    match path {
        "/metrics" => {
            let mut r = Response::text(200, metrics::render(s));
            r.content_type = metrics::CONTENT_TYPE;
            r
        }
        "/status" => Response::text(200, metrics::status(s)),
        "/blocks" => Response::text(200, crate::enforce::list(s)),
        "/status.html" => {
            let mut r = Response::text(200, crate::status_page::render(s));
            r.content_type = crate::status_page::CONTENT_TYPE;
            r
        }
        _ => Response::text(200, "ok\n"),
    }
}

/// The API listener: `/v1/...` only.
async fn api_route(api: &Api, req: Request) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    if !path.starts_with("/v1/") {
        return Response::error(
            404,
            "the API serves /v1/... (the node's pages are on the admin listener)",
        );
    }
    api.handle(&req).await
}

#[cfg(test)]
mod tests {
    use super::{serve_order, Readiness};

    /// Runs up to `n` rounds where each socket's batch comes back full
    /// when its flag says so; returns the rounds that read each socket.
    fn rounds(start: (bool, bool), full: (bool, bool), n: u32) -> (Vec<u32>, Vec<u32>, bool) {
        let mut r = Readiness::new(start.0, start.1);
        let (mut local, mut cluster) = (Vec::new(), Vec::new());
        for round in 1..=n {
            if r.cluster {
                cluster.push(round);
                r.cluster_took(if full.1 { 32 } else { 3 }, 32);
            }
            if r.local {
                local.push(round);
                r.local_took(if full.0 { 16 } else { 0 }, 16);
            }
            if r.drained() {
                break;
            }
        }
        (local, cluster, r.drained())
    }

    #[test]
    fn a_flooded_cluster_socket_does_not_starve_the_filters() {
        // ppoll saw only the cluster socket; it stays full for 40 rounds:
        // the filters' socket is read in every one of them.
        let (local, cluster, drained) = rounds((false, true), (false, true), 40);
        assert_eq!(cluster.len(), 40);
        assert_eq!(local, (1..=40).collect::<Vec<_>>());
        assert!(!drained);
    }

    #[test]
    fn a_flooded_filter_socket_does_not_starve_the_cluster() {
        // ppoll saw only the filters' socket: from the first full batch
        // on, the cluster's is read in every round too.
        let (local, cluster, _) = rounds((true, false), (true, false), 40);
        assert_eq!(local.len(), 40);
        assert_eq!(cluster, (2..=40).collect::<Vec<_>>());
    }

    #[test]
    fn a_wake_up_ends_when_both_run_dry() {
        let (local, cluster, drained) = rounds((true, true), (false, false), 10);
        assert_eq!((local, cluster, drained), (vec![1], vec![1], true));
    }

    fn order(query: &[bool], sender: &[u8]) -> Vec<usize> {
        let mut o = Vec::new();
        serve_order(query, |i, j| sender[i] == sender[j], &mut o);
        o
    }

    #[test]
    fn questions_go_first_unless_their_sender_reported_earlier() {
        // 0: A reports, 1: B asks, 2: A asks (after its report), 3: C asks.
        assert_eq!(order(&[false, true, true, true], b"ABAC"), vec![1, 3, 0, 2]);
        // A sender's questions keep their order among themselves.
        assert_eq!(order(&[true, true, false], b"AAB"), vec![0, 1, 2]);
        assert_eq!(order(&[true, false, true], b"ABA"), vec![0, 2, 1]);
        assert_eq!(order(&[], b""), Vec::<usize>::new());
        assert_eq!(order(&[false, false], b"AB"), vec![0, 1]);
    }
}
