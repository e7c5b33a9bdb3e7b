//! Load harness: three real `shoal` processes on loopback multicast, and a
//! bare multicast send/recv loop over the same kind of sockets and the
//! same datagram sizes, measured in the same run as the yardstick.
//!
//! Phases (`--phases`, comma-separated; default `throughput,latency,bare`,
//! which prints the rows of earlier versions plus the bare loop):
//!
//! - `throughput`: a filter blasts LOAD records into node 1 as fast as its
//!   local socket takes them; nodes 2 and 3 count what they receive from
//!   node 1 and what they lost. Records/s delivered per node, loss, CPU.
//! - `latency`: at a paced background rate (`--rate`) a probe record every
//!   10 ms is sent to node 1 and node 2 is polled until the probe's value
//!   is visible in its cluster total. p50/p99/max.
//!   With `--wire`, a passive receiver on the group also times when node
//!   1's datagram carrying the probe is on the wire, which splits the
//!   figure into node 1's part and the peer's part plus the poll.
//! - `bare`: the same two measurements on a bare loop (one sender thread,
//!   two receiver threads with their own sockets joined to a group), and
//!   Shoal's figures as ratios to it: latency at `--rate`, CPU per
//!   delivered record in the throughput run.
//! - `rates`: Shoal's and the bare loop's latency at each of `--rates`,
//!   and a bare relay's: the same hops as Shoal (filter -> Unix socket ->
//!   relay -> multicast -> peer, polled with Unix queries) with no logic.
//! - `claims`: for each of `--claims`, node 1 first holds that many active
//!   mode claims, then intake (throughput) and the p99 of local queries
//!   on node 1 under a paced `--rate` background.
//! - `flood`: `--flood` LOAD records for distinct resources at
//!   `--flood-rate`, with a `[modes.default]` rule they all trip, while
//!   queries to node 1 and node 2 are timed.
//!
//! Each phase runs `--runs` times; medians are reported, and ratios are
//! the median of the per-run ratios (each run measures both sides).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_wire::{Code, Record};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Throughput,
    Latency,
    Bare,
    Rates,
    Claims,
    Flood,
    All,
}

/// Three `shoal` nodes on loopback against a bare multicast loop.
#[derive(Debug, Parser)]
#[command(name = "shoal-load")]
struct Args {
    /// The `shoal` binary under test.
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Runs of each phase (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Background records/s of the latency phase (and the bare ratio).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Filter threads blasting node 1 in the throughput phase.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "throughput,latency,bare"
    )]
    phases: Vec<Phase>,
    /// Background rates of the `rates` phase.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    rates: Vec<u64>,
    /// Active claims of the `claims` phase.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000")]
    claims: Vec<u64>,
    /// Distinct resources of the `flood` phase.
    #[arg(long, default_value_t = 10_000_000)]
    flood: u64,
    /// Records/s of the flood.
    #[arg(long, default_value_t = 1_000_000)]
    flood_rate: u64,
    /// `[modes] max_changes_per_s` for the claims and flood phases (not
    /// set when absent, so binaries without the key still start).
    #[arg(long)]
    max_changes: Option<u32>,
    /// Also time when node 1's datagram with the probe reaches the group
    /// (a passive receiver; its own cost is part of the run).
    #[arg(long)]
    wire: bool,
    /// Run the threads that time (the probe and poll loop, the query
    /// loops) at SCHED_FIFO priority 1, so a figure holds the nodes' delay
    /// and not the harness's own wait for a core (needs root).
    #[arg(long)]
    rt_probes: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn runs(&self, p: Phase) -> bool {
        self.phases.contains(&p) || self.phases.contains(&Phase::All)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn metric(n: &NodeProcess, sample: &str) -> f64 {
    n.metric(sample).unwrap_or(0.0)
}

fn start_cluster(bin: &Path, tag: &str, extra: &str) -> anyhow::Result<Vec<NodeProcess>> {
    start_cluster_on(bin, tag, extra, unique_group())
}

fn start_cluster_on(
    bin: &Path,
    tag: &str,
    extra: &str,
    (group, port): (Ipv4Addr, u16),
) -> anyhow::Result<Vec<NodeProcess>> {
    let dir = std::env::temp_dir().join(format!("shoal-load-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (1..=3)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = format!("[state]\nload_stale_ms = 60000\n{extra}");
            NodeProcess::spawn(bin, &spec).context("starting a node")
        })
        .collect()
}

/// The bytes of a Shoal datagram of `records` records on this cluster's
/// config: 40-byte header, 64 per record, 16-byte MAC, 4-byte CRC.
fn datagram_len(records: usize) -> usize {
    40 + 64 * records + 16 + 4
}

/// Records per full datagram at the default `max_datagram` of 1400.
const PER_DATAGRAM: usize = 20;

#[derive(Debug, Clone, Copy, Default)]
struct Throughput {
    offered: f64,
    delivered: [f64; 2],
    loss: [f64; 2],
    cpu_per_m: [f64; 3],
    /// Every process's CPU per record delivered to a receiver, µs.
    cpu_per_delivered_us: f64,
}

fn throughput(a: &Args) -> anyhow::Result<Throughput> {
    let nodes = start_cluster(&a.bin, "tput", "")?;
    throughput_on(a, &nodes)
}

fn throughput_on(a: &Args, nodes: &[NodeProcess]) -> anyhow::Result<Throughput> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let peer1 =
        |n: &NodeProcess, what: &str| metric(n, &format!("shoal_peer_{what}_total{{peer=\"1\"}}"));
    let before_rx: Vec<(f64, f64, f64)> = nodes[1..]
        .iter()
        .map(|n| (peer1(n, "records"), peer1(n, "datagrams"), peer1(n, "lost")))
        .collect();
    let sent_by_1 = || metric(&nodes[0], "shoal_records_sent_total");
    let sent0 = sent_by_1();
    let cpu0: Vec<f64> = nodes.iter().map(|n| cpu_seconds(n.pid())).collect();
    let started = Instant::now();
    let workers: Vec<_> = (0..a.senders)
        .map(|w| {
            let mut c = nodes[0].client()?;
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            Ok(std::thread::spawn(move || {
                let mut batch: Vec<Record> = (0..64)
                    .map(|i| Record::new(Code::LOAD, [w as u64 * 1000 + i, 0, 0, 0]))
                    .collect();
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    for r in batch.iter_mut() {
                        r.fields[1] = v % 1000;
                    }
                    if c.send(&batch).is_ok() {
                        sent.fetch_add(64, Ordering::Relaxed);
                    }
                }
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let offered = sent.load(Ordering::Relaxed) as f64;
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last datagrams land before reading the counters.
    let _ = wait_until(Duration::from_secs(2), || {
        nodes[1..]
            .iter()
            .all(|n| peer1(n, "records") >= sent_by_1())
    });
    let cpu: Vec<f64> = nodes
        .iter()
        .zip(&cpu0)
        .map(|(n, c0)| cpu_seconds(n.pid()) - c0)
        .collect();
    let mut t = Throughput {
        offered: offered / elapsed,
        ..Throughput::default()
    };
    let mut delivered = 0.0;
    for (i, n) in nodes[1..].iter().enumerate() {
        let (r0, d0, l0) = before_rx[i];
        let records = peer1(n, "records") - r0;
        let datagrams = peer1(n, "datagrams") - d0;
        let lost = peer1(n, "lost") - l0;
        delivered += records;
        t.delivered[i] = records / elapsed;
        t.loss[i] = if datagrams + lost > 0.0 {
            lost / (datagrams + lost)
        } else {
            0.0
        };
        t.cpu_per_m[i + 1] = cpu[i + 1] / (records / 1e6).max(1e-9);
    }
    // Node 1's CPU per record it sent (claims and keep-alives included).
    let sent_records = (sent_by_1() - sent0).max(offered);
    t.cpu_per_m[0] = cpu[0] / (sent_records / 1e6).max(1e-9);
    t.cpu_per_delivered_us = cpu.iter().sum::<f64>() / delivered.max(1.0) * 1e6;
    Ok(t)
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    samples: usize,
    background: f64,
    /// Send -> node 1's datagram on the group, p50 / p99 µs (Shoal only).
    wire: Option<(f64, f64)>,
}

fn percentiles(mut samples: Vec<f64>, background: f64) -> Latency {
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Latency {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: samples.last().copied().unwrap_or(f64::NAN),
        samples: samples.len(),
        background,
        wire: None,
    }
}

/// Sends `rate` records/s in 1 ms slices of up to 64 records per call to
/// `send` until `stop`; returns the records sent. Slices are what a
/// filter batching per millisecond would hand over.
fn paced(rate: u64, stop: &AtomicBool, mut send: impl FnMut(&[Record]) -> bool) -> u64 {
    let per_ms = (rate / 1000).max(1);
    let start = Instant::now();
    let mut v = 0u64;
    let mut slice = 0u64;
    let mut sent = 0;
    let mut batch = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        let mut left = per_ms;
        while left > 0 {
            batch.clear();
            for i in 0..left.min(64) {
                v += 1;
                batch.push(Record::new(Code::LOAD, [v % 1000 + i % 2, v % 1000, 0, 0]));
            }
            left -= batch.len() as u64;
            if send(&batch) {
                sent += batch.len() as u64;
            }
        }
        slice += 1;
        let due = start + Duration::from_millis(slice);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

/// A paced background into node 1 (`rate` records/s) until dropped.
struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
    started: Instant,
}

impl Background {
    fn start(node: &NodeProcess, rate: u64) -> anyhow::Result<Background> {
        let mut c = node.client()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || paced(rate, &s, |b| c.send(b).is_ok()));
        Ok(Background {
            stop,
            handle: Some(handle),
            started: Instant::now(),
        })
    }

    /// Stops it; returns the achieved records/s.
    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0);
        sent as f64 / self.started.elapsed().as_secs_f64()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn latency(a: &Args, rate: u64) -> anyhow::Result<Latency> {
    let group = unique_group();
    let nodes = start_cluster_on(&a.bin, "lat", "", group)?;
    const PROBE: u64 = u64::MAX - 1;
    let wire = a.wire.then(|| WireWatch::start(group, PROBE)).transpose()?;
    let bg = Background::start(&nodes[0], rate)?;
    let mut probe = nodes[0].client()?;
    let mut watch = nodes[1].client()?;
    let _rt = Realtime::enter(a.rt_probes);
    let mut samples = Vec::new();
    let mut on_wire = Vec::new();
    let started = Instant::now();
    let mut value = 0u64;
    while started.elapsed().as_secs_f64() < a.seconds {
        value += 1;
        let t0 = Instant::now();
        probe.send(&[Record::new(Code::LOAD, [PROBE, value, 0, 0])])?;
        let seen = wait_until_spin(Duration::from_secs(1), || {
            watch
                .query(Code::QUERY_LOAD, PROBE, Duration::from_millis(100))
                .is_ok_and(|r| r.fields[1] == value)
        });
        if seen {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
            if let Some(at) = wire.as_ref().and_then(|w| w.seen(value)) {
                on_wire.push(at.saturating_duration_since(t0).as_secs_f64() * 1e6);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut l = percentiles(samples, bg.finish());
    if wire.is_some() {
        let w = percentiles(on_wire, 0.0);
        l.wire = Some((w.p50_us, w.p99_us));
    }
    Ok(l)
}

/// A passive receiver joined to the cluster's group: when node 1's
/// datagram carrying a probe value reached a socket on the group (what
/// nodes 2 and 3 are woken by), so a run splits into node 1's part and
/// the receiving node's part plus the poll.
struct WireWatch {
    stop: Arc<AtomicBool>,
    rx: mpsc::Receiver<(u64, Instant)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl WireWatch {
    fn start((group, port): (Ipv4Addr, u16), probe: u64) -> anyhow::Result<WireWatch> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddrV4::new(group, port).into())?;
        s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
        s.set_recv_buffer_size(8 << 20)?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let sock: UdpSocket = s.into();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let st = Arc::clone(&stop);
        let key = probe.to_le_bytes();
        let handle = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let at = Instant::now();
                // Records start after the 40-byte header; fields[0] at 32,
                // fields[1] at 40 of each 64-byte record.
                for r in buf[..n].get(40..).unwrap_or(&[]).chunks_exact(64) {
                    if r[32..40] == key {
                        let v = u64::from_le_bytes(r[40..48].try_into().unwrap_or_default());
                        let _ = tx.send((v, at));
                    }
                }
            }
        });
        Ok(WireWatch {
            stop,
            rx,
            handle: Some(handle),
        })
    }

    /// When the datagram with probe value `v` was first seen, if it was.
    fn seen(&self, v: u64) -> Option<Instant> {
        let mut found = None;
        while let Ok((got, at)) = self.rx.try_recv() {
            if got == v && found.is_none() {
                found = Some(at);
            }
        }
        found
    }
}

impl Drop for WireWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Like `wait_until` but polling every ~10 µs (plus the query's round
/// trip; the harness runs with a 1 µs timer slack), so the figure's
/// resolution is tens of microseconds without spinning a core away from
/// the nodes.
fn wait_until_spin(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(10));
    }
    false
}

/// The bare loop's sockets: one sender and two receivers joined to a
/// fresh group on loopback, with the node's buffer sizes.
struct Bare {
    dest: SocketAddrV4,
    send: UdpSocket,
    recv: [UdpSocket; 2],
}

fn bare_sockets() -> anyhow::Result<Bare> {
    let (group, port) = unique_group();
    let open = || -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddrV4::new(group, port).into())?;
        s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        s.set_multicast_loop_v4(true)?;
        s.set_recv_buffer_size(8 << 20)?;
        s.set_send_buffer_size(1 << 20)?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s.into())
    };
    let send = open().context("bare sender socket")?;
    // The sender's own socket must not take its datagrams as a receiver.
    send.set_read_timeout(None)?;
    Ok(Bare {
        dest: SocketAddrV4::new(group, port),
        recv: [open()?, open()?],
        send,
    })
}

/// A receiver thread: counts records (by datagram size) until `stop`;
/// reports probes (first byte 1) by id. Returns (records, CPU seconds).
fn bare_receiver(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
    probes: Option<mpsc::Sender<(u64, Instant)>>,
) -> std::thread::JoinHandle<(u64, f64)> {
    std::thread::spawn(move || {
        let cpu0 = thread_cpu();
        let mut buf = vec![0u8; 65_536];
        let mut records = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            records += (n.saturating_sub(60) / 64) as u64;
            if buf[0] == 1 {
                if let Some(p) = &probes {
                    let id = u64::from_le_bytes(buf[1..9].try_into().unwrap_or_default());
                    let _ = p.send((id, Instant::now()));
                }
            }
        }
        (records, thread_cpu() - cpu0)
    })
}

/// The bare loop's throughput: full datagrams as fast as the sender goes.
fn bare_throughput(a: &Args) -> anyhow::Result<Throughput> {
    let b = bare_sockets()?;
    let stop = Arc::new(AtomicBool::new(false));
    let [r1, r2] = b.recv;
    let rx = [
        bare_receiver(r1, Arc::clone(&stop), None),
        bare_receiver(r2, Arc::clone(&stop), None),
    ];
    let send_stop = Arc::new(AtomicBool::new(false));
    let tx = {
        let (sock, dest, stop) = (b.send, b.dest, Arc::clone(&send_stop));
        std::thread::spawn(move || {
            let cpu0 = thread_cpu();
            let d = vec![0u8; datagram_len(PER_DATAGRAM)];
            let mut records = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sock.send_to(&d, dest).is_ok() {
                    records += PER_DATAGRAM as u64;
                }
            }
            (records, thread_cpu() - cpu0)
        })
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    send_stop.store(true, Ordering::Relaxed);
    let (sent, tx_cpu) = tx.join().unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let got: Vec<(u64, f64)> = rx
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    let delivered: u64 = got.iter().map(|g| g.0).sum();
    let cpu = tx_cpu + got.iter().map(|g| g.1).sum::<f64>();
    let mut t = Throughput {
        offered: sent as f64 / elapsed,
        cpu_per_delivered_us: cpu / delivered.max(1) as f64 * 1e6,
        ..Throughput::default()
    };
    for (i, (records, c)) in got.iter().enumerate() {
        t.delivered[i] = *records as f64 / elapsed;
        t.loss[i] = 1.0 - *records as f64 / sent.max(1) as f64;
        t.cpu_per_m[i + 1] = c / (*records as f64 / 1e6).max(1e-9);
    }
    t.cpu_per_m[0] = tx_cpu / (sent as f64 / 1e6).max(1e-9);
    Ok(t)
}

/// The bare loop's latency under the same paced background: the same
/// 1 ms slices, packed into datagrams of up to 20 records as node 1 would
/// pack them; a probe datagram of one record every 10 ms, timed from its
/// send to its receipt by a receiver thread.
fn bare_latency(a: &Args, rate: u64) -> anyhow::Result<Latency> {
    let b = bare_sockets()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ptx, prx) = mpsc::channel();
    let [r1, r2] = b.recv;
    let rx = [
        bare_receiver(r1, Arc::clone(&stop), Some(ptx)),
        bare_receiver(r2, Arc::clone(&stop), None),
    ];
    let send = Arc::new(b.send);
    let bg_stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let bg = {
        let (sock, dest, stop) = (Arc::clone(&send), b.dest, Arc::clone(&bg_stop));
        std::thread::spawn(move || {
            let mut d = vec![0u8; datagram_len(PER_DATAGRAM)];
            paced(rate, &stop, |batch| {
                for chunk in batch.chunks(PER_DATAGRAM) {
                    let len = datagram_len(chunk.len());
                    for (i, r) in chunk.iter().enumerate() {
                        d[40 + 64 * i..40 + 64 * (i + 1)].copy_from_slice(&r.to_bytes());
                    }
                    d[0] = 0;
                    let _ = sock.send_to(&d[..len], dest);
                }
                true
            })
        })
    };
    let mut samples = Vec::new();
    let mut id = 0u64;
    let mut probe = vec![0u8; datagram_len(1)];
    let _rt = Realtime::enter(a.rt_probes);
    while started.elapsed().as_secs_f64() < a.seconds {
        id += 1;
        probe[0] = 1;
        probe[1..9].copy_from_slice(&id.to_le_bytes());
        let t0 = Instant::now();
        send.send_to(&probe, b.dest)?;
        let deadline = t0 + Duration::from_secs(1);
        while let Ok((got, at)) =
            prx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if got == id {
                samples.push(at.duration_since(t0).as_secs_f64() * 1e6);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bg_stop.store(true, Ordering::Relaxed);
    let sent = bg.join().unwrap_or(0);
    let background = sent as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in rx {
        let _ = h.join();
    }
    Ok(percentiles(samples, background))
}

/// The path a record takes through Shoal with none of Shoal's logic, as
/// the yardstick of `rates`: a relay thread (node 1) takes the filter's
/// datagrams on a Unix socket and multicasts them in datagrams of up to
/// 20 records; a peer thread (node 2) takes the group's datagrams, keeps
/// the probe's last value and answers a Unix query for it; a receiver
/// thread (node 3) only counts. Timed exactly like [`latency`]: a probe
/// sent to the relay, the peer polled until its answer holds it. The
/// difference to Shoal is Shoal's own work, not the hops of the design.
fn relay_latency(a: &Args, rate: u64) -> anyhow::Result<Latency> {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    const PROBE: u64 = u64::MAX - 1;
    let dir = std::env::temp_dir().join(format!("shoal-load-relay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let b = bare_sockets()?;
    let stop = Arc::new(AtomicBool::new(false));
    let [peer_udp, r2] = b.recv;
    let node3 = bare_receiver(r2, Arc::clone(&stop), None);
    let relay_sock = UnixDatagram::bind(dir.join("relay.sock"))?;
    relay_sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let relay = {
        let (udp, dest, stop) = (b.send, b.dest, Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut d = vec![0u8; datagram_len(PER_DATAGRAM)];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = relay_sock.recv(&mut buf) else {
                    continue;
                };
                for chunk in buf[..n].chunks(64 * PER_DATAGRAM) {
                    let len = 40 + chunk.len() + 20;
                    d[40..40 + chunk.len()].copy_from_slice(chunk);
                    let _ = udp.send_to(&d[..len], dest);
                }
            }
        })
    };
    let peer_local = UnixDatagram::bind(dir.join("peer.sock"))?;
    let peer = {
        let stop = Arc::clone(&stop);
        let key = PROBE.to_le_bytes();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut value = 0u64;
            let (udp_fd, local_fd) = (peer_udp.as_raw_fd(), peer_local.as_raw_fd());
            peer_udp.set_nonblocking(true).ok();
            peer_local.set_nonblocking(true).ok();
            while !stop.load(Ordering::Relaxed) {
                let mut fds = [udp_fd, local_fd].map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: two valid pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
                while let Ok(n) = peer_udp.recv(&mut buf) {
                    for r in buf[..n].get(40..).unwrap_or(&[]).chunks_exact(64) {
                        if r[32..40] == key {
                            value = u64::from_le_bytes(r[40..48].try_into().unwrap_or_default());
                        }
                    }
                }
                while let Ok((_, from)) = peer_local.recv_from(&mut buf) {
                    if let Some(path) = from.as_pathname() {
                        let _ = peer_local.send_to(&value.to_le_bytes(), path);
                    }
                }
            }
        })
    };
    let bg = {
        let c = UnixDatagram::unbound()?;
        c.connect(dir.join("relay.sock"))?;
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut bytes = Vec::with_capacity(64 * 64);
            paced(rate, &stop, |batch| {
                bytes.clear();
                for r in batch {
                    bytes.extend_from_slice(&r.to_bytes());
                }
                c.send(&bytes).is_ok()
            })
        })
    };
    let probe = UnixDatagram::unbound()?;
    probe.connect(dir.join("relay.sock"))?;
    let watch = UnixDatagram::bind(dir.join("watch.sock"))?;
    watch.connect(dir.join("peer.sock"))?;
    watch.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _rt = Realtime::enter(a.rt_probes);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut value = 0u64;
    let mut answer = [0u8; 8];
    while started.elapsed().as_secs_f64() < a.seconds {
        value += 1;
        let t0 = Instant::now();
        probe.send(&Record::new(Code::LOAD, [PROBE, value, 0, 0]).to_bytes())?;
        let seen = wait_until_spin(Duration::from_secs(1), || {
            watch.send(&[0u8; 8]).is_ok()
                && watch.recv(&mut answer).is_ok()
                && u64::from_le_bytes(answer) == value
        });
        if seen {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = bg.join().unwrap_or(0);
    let background = sent as f64 / started.elapsed().as_secs_f64();
    for h in [relay, peer] {
        let _ = h.join();
    }
    let _ = node3.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(percentiles(samples, background))
}

/// SCHED_FIFO priority 1 for the calling thread while alive (`--rt-probes`),
/// back to SCHED_OTHER on drop; a no-op when not asked for.
struct Realtime(bool);

impl Realtime {
    fn enter(on: bool) -> Realtime {
        if !on {
            return Realtime(false);
        }
        let p = libc::sched_param { sched_priority: 1 };
        // SAFETY: the calling thread (0), a valid policy and parameter.
        let ok = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } == 0;
        if !ok {
            eprintln!(
                "--rt-probes: SCHED_FIFO refused ({}); timing at normal priority",
                std::io::Error::last_os_error()
            );
        }
        Realtime(ok)
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.0 {
            let p = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &p) };
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `[modes]` config of the claims and flood phases: every resource is
/// watched; a load of 1 M/s or more on the node's own filter raises level
/// 1 (the cluster total never does, so only node 1 claims: N active
/// claims are node 1's, and nodes 2 and 3 hold them as peers' claims).
fn modes_config(a: &Args) -> String {
    let bound = a.max_changes.map_or(String::new(), |m| {
        format!("[modes]\nmax_changes_per_s = {m}\n")
    });
    format!(
        "max_resources = 1000000\n{bound}[modes.default]\nlevels = [{{ level = 1, total_up = 1000000000000, total_down = 500000000000, local_up = 1000000, local_down = 500000 }}]\n"
    )
}

/// A load that trips the rule of [`modes_config`].
const TRIP: u64 = 2_000_000;
/// First resource id of the claimed and flooded ranges.
const CLAIMED: u64 = 1 << 40;

/// Sends a tripping load for `n` distinct resources from `first`, paced
/// at `rate` records/s; returns the records sent.
fn trip(node: &NodeProcess, first: u64, n: u64, rate: u64) -> anyhow::Result<u64> {
    let mut c = node.client()?;
    let per_ms = (rate / 1000).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(64);
    let mut slice = 0u64;
    while sent < n {
        let mut left = per_ms.min(n - sent);
        while left > 0 {
            batch.clear();
            for _ in 0..left.min(64) {
                batch.push(Record::new(Code::LOAD, [first + sent, TRIP, 0, 0]));
                sent += 1;
            }
            left -= batch.len() as u64;
            c.send(&batch)?;
        }
        slice += 1;
        let due = start + Duration::from_millis(slice);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(sent)
}

/// Round trips of local queries to `node`, one every millisecond, until
/// `stop` (or `seconds`), in µs.
fn query_loop(
    node: &NodeProcess,
    key: u64,
    seconds: f64,
    stop: Arc<AtomicBool>,
    rt: bool,
) -> anyhow::Result<std::thread::JoinHandle<(Vec<f64>, u64)>> {
    let mut c = node.client()?;
    Ok(std::thread::spawn(move || {
        let _rt = Realtime::enter(rt);
        let mut samples = Vec::new();
        let mut failed = 0;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs_f64() < seconds {
            let t0 = Instant::now();
            match c.query(Code::QUERY_MODE, key, Duration::from_secs(1)) {
                Ok(_) => samples.push(t0.elapsed().as_secs_f64() * 1e6),
                Err(_) => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (samples, failed)
    }))
}

#[derive(Debug, Clone, Copy)]
struct ClaimsRun {
    claims: f64,
    arm_s: f64,
    intake: Throughput,
    query: Latency,
    query_failed: u64,
}

fn claims_run(a: &Args, n: u64) -> anyhow::Result<ClaimsRun> {
    let nodes = start_cluster(&a.bin, "claims", &modes_config(a))?;
    let t0 = Instant::now();
    // Reported again and again, as a filter does, until node 1 holds every
    // claim: `modes.max_changes_per_s` defers the excess of each pass.
    let mut armed = n == 0;
    while !armed && t0.elapsed() < Duration::from_secs(120) {
        trip(&nodes[0], CLAIMED, n, 200_000)?;
        armed = wait_until(Duration::from_millis(500), || {
            metric(&nodes[1], "shoal_modes_active") >= n as f64
        });
    }
    if !armed {
        println!(
            "  claims {n}: node 2 sees only {} active claims after 120 s",
            metric(&nodes[1], "shoal_modes_active")
        );
    }
    let arm_s = t0.elapsed().as_secs_f64();
    let claims = metric(&nodes[0], "shoal_modes_active");
    let intake = throughput_on(a, &nodes)?;
    // Local queries on node 1 under the paced background, while its held
    // claims are kept alive.
    let bg = Background::start(&nodes[0], a.rate)?;
    let stop = Arc::new(AtomicBool::new(false));
    let q = query_loop(&nodes[0], CLAIMED, a.seconds, stop, a.rt_probes)?;
    let (samples, query_failed) = q.join().unwrap_or_default();
    let query = percentiles(samples, bg.finish());
    Ok(ClaimsRun {
        claims,
        arm_s,
        intake,
        query,
        query_failed,
    })
}

#[derive(Debug, Clone, Copy)]
struct FloodRun {
    sent: u64,
    rate: f64,
    q1: Latency,
    q2: Latency,
    failed: u64,
    table_full: f64,
    claims_sent: f64,
    deferred: f64,
    node1_cpu_s: f64,
}

fn flood_run(a: &Args) -> anyhow::Result<FloodRun> {
    let nodes = start_cluster(&a.bin, "flood", &modes_config(a))?;
    let stop = Arc::new(AtomicBool::new(false));
    let long = 1e9;
    let q1 = query_loop(&nodes[0], 7, long, Arc::clone(&stop), a.rt_probes)?;
    let q2 = query_loop(&nodes[1], 7, long, Arc::clone(&stop), a.rt_probes)?;
    let cpu0 = cpu_seconds(nodes[0].pid());
    let t0 = Instant::now();
    let sent = trip(&nodes[0], CLAIMED, a.flood, a.flood_rate)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let node1_cpu_s = cpu_seconds(nodes[0].pid()) - cpu0;
    stop.store(true, Ordering::Relaxed);
    let (s1, f1) = q1.join().unwrap_or_default();
    let (s2, f2) = q2.join().unwrap_or_default();
    Ok(FloodRun {
        sent,
        rate: sent as f64 / elapsed,
        q1: percentiles(s1, 0.0),
        q2: percentiles(s2, 0.0),
        failed: f1 + f2,
        table_full: metric(&nodes[0], "shoal_resource_table_full_total"),
        claims_sent: metric(&nodes[0], "shoal_mode_claims_sent_total"),
        deferred: metric(&nodes[0], "shoal_mode_changes_deferred_total"),
        node1_cpu_s,
    })
}

fn print_throughput(label: &str, run: usize, t: &Throughput) {
    println!(
        "run {run} {label}: offered {:.0} rec/s; delivered {:.0} / {:.0} rec/s; loss {:.4}% {:.4}%; cpu s/M rec: sender {:.3} receivers {:.3} {:.3}; cpu per delivered record {:.3} us",
        t.offered, t.delivered[0], t.delivered[1], t.loss[0] * 100.0, t.loss[1] * 100.0,
        t.cpu_per_m[0], t.cpu_per_m[1], t.cpu_per_m[2], t.cpu_per_delivered_us
    );
}

fn print_latency(label: &str, run: usize, l: &Latency) {
    let wire = l.wire.map_or(String::new(), |(p50, p99)| {
        format!("; on the wire p50 {p50:.0} us, p99 {p99:.0} us")
    });
    println!(
        "run {run} {label} at {:.0} rec/s background: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} probes){wire}",
        l.background, l.p50_us, l.p99_us, l.max_us, l.samples
    );
}

/// The machine's load average (`/proc/loadavg`), printed with the
/// figures: on a shared host they mean little without it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let load_at_start = load_average();
    if !a.bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p shoal-node`",
            a.bin.display()
        );
    }
    // Sleeps of the probe loops wake within ~1 µs of their deadline instead
    // of the default 50 µs slack; threads inherit it.
    // SAFETY: prctl with an integer argument has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    println!(
        "shoal-load: {} ({}), 3 nodes on loopback, {} s per measurement, {} runs, {} sender thread(s)",
        a.bin.display(),
        a.phases
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
        a.seconds,
        a.runs,
        a.senders
    );
    let mut tp = Vec::new();
    let mut bare_tp = Vec::new();
    let mut lat = Vec::new();
    let mut bare_lat = Vec::new();
    for run in 1..=a.runs {
        if a.runs(Phase::Throughput) || a.runs(Phase::Bare) {
            let t = throughput(&a)?;
            print_throughput("throughput", run, &t);
            tp.push(t);
        }
        if a.runs(Phase::Bare) {
            let t = bare_throughput(&a)?;
            print_throughput("bare throughput", run, &t);
            bare_tp.push(t);
        }
    }
    for run in 1..=a.runs {
        if a.runs(Phase::Latency) || a.runs(Phase::Bare) {
            let l = latency(&a, a.rate)?;
            print_latency("latency", run, &l);
            lat.push(l);
        }
        if a.runs(Phase::Bare) {
            let l = bare_latency(&a, a.rate)?;
            print_latency("bare latency", run, &l);
            bare_lat.push(l);
        }
    }
    let mut rates = Vec::new();
    if a.runs(Phase::Rates) {
        for &rate in &a.rates {
            let mut runs = Vec::new();
            for run in 1..=a.runs {
                let s = latency(&a, rate)?;
                let b = bare_latency(&a, rate)?;
                let r = relay_latency(&a, rate)?;
                print_latency(&format!("rate {rate} shoal"), run, &s);
                print_latency(&format!("rate {rate} bare"), run, &b);
                print_latency(&format!("rate {rate} relay"), run, &r);
                runs.push((s, b, r));
            }
            rates.push((rate, runs));
        }
    }
    let mut claims = Vec::new();
    if a.runs(Phase::Claims) {
        for &n in &a.claims {
            let mut runs = Vec::new();
            for run in 1..=a.runs {
                let c = claims_run(&a, n)?;
                println!(
                    "run {run} claims {n}: {:.0} active on node 1 (armed in {:.1} s); intake {:.0} rec/s, delivered {:.0} / {:.0}, loss {:.4}% {:.4}%; local query p50 {:.0} us p99 {:.0} us max {:.0} us ({} queries, {} failed)",
                    c.claims, c.arm_s, c.intake.offered, c.intake.delivered[0], c.intake.delivered[1],
                    c.intake.loss[0] * 100.0, c.intake.loss[1] * 100.0,
                    c.query.p50_us, c.query.p99_us, c.query.max_us, c.query.samples, c.query_failed
                );
                runs.push(c);
            }
            claims.push((n, runs));
        }
    }
    let mut floods = Vec::new();
    if a.runs(Phase::Flood) {
        for run in 1..=a.runs {
            let f = flood_run(&a)?;
            println!(
                "run {run} flood: {} distinct resources at {:.0} rec/s; query p50/p99/max node 1 {:.0}/{:.0}/{:.0} us, node 2 {:.0}/{:.0}/{:.0} us ({} + {} queries, {} failed); table full {:.0}, claims sent {:.0}, deferred {:.0}; node 1 cpu {:.2} s",
                f.sent, f.rate, f.q1.p50_us, f.q1.p99_us, f.q1.max_us, f.q2.p50_us, f.q2.p99_us, f.q2.max_us,
                f.q1.samples, f.q2.samples, f.failed, f.table_full, f.claims_sent, f.deferred, f.node1_cpu_s
            );
            floods.push(f);
        }
    }

    println!(
        "\nmedians of {} runs (load average at start {load_at_start}, at end {}):",
        a.runs,
        load_average()
    );
    let m = |v: &[Throughput], f: &dyn Fn(&Throughput) -> f64| median(v.iter().map(f).collect());
    let ml = |v: &[Latency], f: &dyn Fn(&Latency) -> f64| median(v.iter().map(f).collect());
    if !tp.is_empty() {
        println!(
            "  offered to node 1          {:>12.0} records/s",
            m(&tp, &|t| t.offered)
        );
        println!(
            "  delivered per node         {:>12.0} records/s (node 2), {:.0} (node 3)",
            m(&tp, &|t| t.delivered[0]),
            m(&tp, &|t| t.delivered[1])
        );
        println!(
            "  loss                       {:>12.4} % (node 2), {:.4} % (node 3)",
            m(&tp, &|t| t.loss[0] * 100.0),
            m(&tp, &|t| t.loss[1] * 100.0)
        );
        println!(
            "  cpu per million records    {:>12.3} s (sender), {:.3} s, {:.3} s (receivers)",
            m(&tp, &|t| t.cpu_per_m[0]),
            m(&tp, &|t| t.cpu_per_m[1]),
            m(&tp, &|t| t.cpu_per_m[2])
        );
        println!(
            "  cpu per delivered record   {:>12.3} us (all three nodes / records delivered to nodes 2 and 3)",
            m(&tp, &|t| t.cpu_per_delivered_us)
        );
    }
    if !lat.is_empty() {
        println!(
            "  send->visible latency      p50 {:.0} us, p99 {:.0} us at {:.0} records/s",
            ml(&lat, &|l| l.p50_us),
            ml(&lat, &|l| l.p99_us),
            ml(&lat, &|l| l.background)
        );
    }
    if !bare_tp.is_empty() {
        println!(
            "  bare loop throughput       {:>12.0} records/s per receiver; cpu per delivered record {:.3} us",
            m(&bare_tp, &|t| t.delivered[0]),
            m(&bare_tp, &|t| t.cpu_per_delivered_us)
        );
        let ratios: Vec<f64> = tp
            .iter()
            .zip(&bare_tp)
            .map(|(s, b)| s.cpu_per_delivered_us / b.cpu_per_delivered_us)
            .collect();
        println!(
            "  cpu per delivered record   {:>12.2} x the bare loop (median of same-run ratios)",
            median(ratios)
        );
    }
    if !bare_lat.is_empty() {
        println!(
            "  bare loop latency          p50 {:.0} us, p99 {:.0} us at {:.0} records/s",
            ml(&bare_lat, &|l| l.p50_us),
            ml(&bare_lat, &|l| l.p99_us),
            ml(&bare_lat, &|l| l.background)
        );
        let ratios: Vec<f64> = lat
            .iter()
            .zip(&bare_lat)
            .map(|(s, b)| s.p99_us / b.p99_us)
            .collect();
        println!(
            "  send->visible p99          {:>12.2} x the bare loop (median of same-run ratios)",
            median(ratios)
        );
    }
    if !rates.is_empty() {
        println!("  latency by rate (shoal p50 / p99 | bare p50 / p99 | p99 x bare | relay p50 / p99 | p99 x relay):");
        for (rate, runs) in &rates {
            let s: Vec<Latency> = runs.iter().map(|r| r.0).collect();
            let b: Vec<Latency> = runs.iter().map(|r| r.1).collect();
            let r: Vec<Latency> = runs.iter().map(|r| r.2).collect();
            let ratio = median(runs.iter().map(|(s, b, _)| s.p99_us / b.p99_us).collect());
            let relay = median(runs.iter().map(|(s, _, r)| s.p99_us / r.p99_us).collect());
            println!(
                "    {:>9} rec/s (achieved {:>9.0}): {:>5.0} / {:>5.0} us | {:>5.0} / {:>5.0} us | {:.2}x | {:>5.0} / {:>5.0} us | {:.2}x",
                rate,
                ml(&s, &|l| l.background),
                ml(&s, &|l| l.p50_us),
                ml(&s, &|l| l.p99_us),
                ml(&b, &|l| l.p50_us),
                ml(&b, &|l| l.p99_us),
                ratio,
                ml(&r, &|l| l.p50_us),
                ml(&r, &|l| l.p99_us),
                relay
            );
        }
    }
    if !claims.is_empty() {
        println!("  active claims: intake (node 1) | delivered per node | loss | query p50 / p99 | intake vs none");
        let none = claims
            .iter()
            .find(|(n, _)| *n == 0)
            .map(|(_, r)| median(r.iter().map(|c| c.intake.offered).collect()));
        for (n, runs) in &claims {
            let mc = |f: &dyn Fn(&ClaimsRun) -> f64| median(runs.iter().map(f).collect());
            let intake = mc(&|c| c.intake.offered);
            println!(
                "    {:>7} ({:>7.0} held): {:>9.0} rec/s | {:>9.0} | {:.4} % | {:.0} / {:.0} us | {}",
                n,
                mc(&|c| c.claims),
                intake,
                mc(&|c| c.intake.delivered[0]),
                mc(&|c| c.intake.loss[0].max(c.intake.loss[1]) * 100.0),
                mc(&|c| c.query.p50_us),
                mc(&|c| c.query.p99_us),
                none.map_or("-".into(), |z| format!("{:.2}", intake / z))
            );
        }
    }
    if !floods.is_empty() {
        let mf = |f: &dyn Fn(&FloodRun) -> f64| median(floods.iter().map(f).collect());
        println!(
            "  flood of {} distinct resources at {:.0} rec/s: query p99 node 1 {:.0} us, node 2 {:.0} us (p50 {:.0} / {:.0}); table full {:.0}, claims sent {:.0}, deferred {:.0}",
            a.flood,
            mf(&|f| f.rate),
            mf(&|f| f.q1.p99_us),
            mf(&|f| f.q2.p99_us),
            mf(&|f| f.q1.p50_us),
            mf(&|f| f.q2.p50_us),
            mf(&|f| f.table_full),
            mf(&|f| f.claims_sent),
            mf(&|f| f.deferred)
        );
    }
    Ok(())
}
