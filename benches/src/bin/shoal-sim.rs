//! Bigger clusters on the simulator: N real `shoal_core::Node`s on a
//! virtual clock, joined by links that lose a fraction of datagrams at
//! random (independently per receiver, as multicast does) and delay them.
//! No sockets: what it measures is the core's own work and the protocol's
//! convergence, at cluster sizes no 2-core machine could run as processes.
//!
//! Every node's filter reports a gauge for each of `--resources`
//! resources every `--report-ms` (as filters do: the current rate, again
//! and again, which is also what repairs a lost datagram). A probe every
//! `--probe-ms`: one node's filter reports a new value for a fresh
//! resource, and the convergence time is until every other node's cluster
//! total shows it. Prints, per cluster size: the CPU time spent inside
//! each node's own calls per simulated second ("core": what a node's CPU
//! would do; the thread CPU clock read around each call adds ~10 %), the whole process's CPU per node per simulated second (the
//! simulator's event queue included), and convergence p50 / p99 / max.
//! With loss, a probe a receiver missed arrives with its filter's next
//! report, so the p99 follows `--report-ms`.
//!
//! Usage: shoal-sim [--nodes 4,16,64] [--loss 0.01] [--seconds 2]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_core::{Level, ModeRules, Node, NodeParams, Rule, StateLimits};
use shoal_wire::{Code, MacKey, MacKeys, Record, RECORD_LEN};

#[derive(Debug, Parser)]
#[command(name = "shoal-sim")]
struct Args {
    /// Cluster sizes to simulate.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    nodes: Vec<usize>,
    /// Fraction of datagrams each receiver loses.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Simulated seconds per cluster size.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Resources each node's filter reports.
    #[arg(long, default_value_t = 100)]
    resources: u64,
    /// How often a filter reports its gauges, ms.
    #[arg(long, default_value_t = 10)]
    report_ms: u64,
    /// How often a probe starts, ms.
    #[arg(long, default_value_t = 5)]
    probe_ms: u64,
    /// Link delay and jitter, µs.
    #[arg(long, default_value_t = 100)]
    delay_us: u64,
    #[arg(long, default_value_t = 50)]
    jitter_us: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

/// The wall clock at the start of the simulation, and every incarnation.
const WALL_US: u64 = 1_700_000_000_000_000;

fn params(id: u32) -> NodeParams {
    NodeParams {
        id,
        cluster: 5,
        max_datagram: 1400,
        flush: Duration::from_micros(200),
        keys: Some(MacKeys {
            current: MacKey::derive(1, b"simulated cluster secret"),
            previous: None,
        }),
        limits: StateLimits {
            load_stale: Duration::from_millis(2_000),
            max_resources: 100_000,
            session_capacity: 1_000,
            default_ttl: Duration::from_secs(10),
            clock_skew: Duration::from_millis(500),
        },
        max_peers: 256,
        modes: ModeRules {
            default: Some(Rule {
                min_hold: Duration::from_secs(5),
                claim_ttl: Duration::from_secs(10),
                levels: vec![Level {
                    level: 1,
                    total_up: u64::MAX / 2,
                    total_down: u64::MAX / 4,
                    local_up: None,
                    local_down: None,
                }],
            }),
            resources: vec![],
            max_changes_per_s: 10_000,
        },
        store: None,
        relay_capacity: 64,
        // Fixed, so a run is the same run every time.
        hash_seed: 0x5eed,
    }
}

/// Events: (time, order, kind). Kinds: a datagram for a node, a node's
/// timer, a filter's report, a probe.
enum Event {
    Datagram { to: usize, bytes: Rc<[u8]> },
    Report { node: usize },
    Probe,
}

struct Probe {
    resource: u64,
    value: u64,
    from: usize,
    at: Duration,
    seen: Vec<bool>,
    left: usize,
}

struct Sim {
    t0: Instant,
    now: Duration,
    nodes: Vec<Node>,
    events: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    pending: Vec<Option<Event>>,
    free: Vec<usize>,
    order: u64,
    rng: Rng,
    a: Args,
    probes: Vec<Probe>,
    next_probe: u64,
    converged: Vec<f64>,
    datagrams: u64,
    dropped: u64,
    /// CPU seconds of this thread spent inside the nodes' own calls.
    in_core: f64,
}

impl Sim {
    fn push(&mut self, at: Duration, e: Event) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.pending[i] = Some(e);
                i
            }
            None => {
                self.pending.push(Some(e));
                self.pending.len() - 1
            }
        };
        self.order += 1;
        self.events.push(Reverse((at, self.order, slot)));
    }

    fn transmit(&mut self, from: usize) {
        let mut buf = Vec::new();
        let t = thread_cpu();
        self.nodes[from].flush();
        self.in_core += thread_cpu() - t;
        loop {
            let t = thread_cpu();
            let more = self.nodes[from].poll_transmit(&mut buf);
            self.in_core += thread_cpu() - t;
            if !more {
                break;
            }
            let bytes: Rc<[u8]> = Rc::from(buf.as_slice());
            self.datagrams += 1;
            for to in 0..self.nodes.len() {
                if to == from {
                    continue;
                }
                if self.rng.chance(self.a.loss) {
                    self.dropped += 1;
                    continue;
                }
                let jitter = match self.a.jitter_us {
                    0 => 0,
                    j => self.rng.next() % j,
                };
                let at = self.now + Duration::from_micros(self.a.delay_us + jitter);
                self.push(
                    at,
                    Event::Datagram {
                        to,
                        bytes: Rc::clone(&bytes),
                    },
                );
            }
        }
    }

    /// The node's filter hands over its gauges (and the probes it owns).
    fn report(&mut self, i: usize) {
        let now = self.t0 + self.now;
        let mut records: Vec<Record> = (0..self.a.resources)
            .map(|r| Record::new(Code::LOAD, [r, 100 + i as u64, 0, 0]))
            .collect();
        for p in self.probes.iter().filter(|p| p.from == i) {
            records.push(Record::new(Code::LOAD, [p.resource, p.value, 0, 0]));
        }
        let mut reply = Vec::new();
        for chunk in records.chunks(64) {
            let req: Vec<u8> = chunk.iter().flat_map(|r| r.to_bytes()).collect();
            debug_assert_eq!(req.len(), chunk.len() * RECORD_LEN);
            let t = thread_cpu();
            self.nodes[i].handle_local(now, &req, &mut reply);
            self.in_core += thread_cpu() - t;
        }
        self.transmit(i);
    }

    fn probe(&mut self) {
        let n = self.nodes.len();
        let from = (self.next_probe as usize) % n;
        self.next_probe += 1;
        let p = Probe {
            resource: 1 << 40 | self.next_probe,
            value: 1_000 + self.next_probe,
            from,
            at: self.now,
            seen: (0..n).map(|i| i == from).collect(),
            left: n - 1,
        };
        let now = self.t0 + self.now;
        let r = Record::new(Code::LOAD, [p.resource, p.value, 0, 0]);
        let mut reply = Vec::new();
        self.nodes[from].handle_local(now, &r.to_bytes(), &mut reply);
        self.probes.push(p);
        self.transmit(from);
    }

    fn check_probes(&mut self, to: usize) {
        let now = self.t0 + self.now;
        let mut done = false;
        for p in self.probes.iter_mut() {
            if p.seen[to] {
                continue;
            }
            if self.nodes[to].load(now, p.resource).total == p.value {
                p.seen[to] = true;
                p.left -= 1;
                if p.left == 0 {
                    self.converged.push((self.now - p.at).as_secs_f64() * 1e6);
                    done = true;
                }
            }
        }
        if done {
            self.probes.retain(|p| p.left > 0);
        }
    }

    fn run(&mut self, end: Duration) {
        loop {
            let timer = (0..self.nodes.len())
                .map(|i| (self.nodes[i].poll_timeout() - self.t0, i))
                .min();
            let event = self.events.peek().map(|Reverse((t, ..))| *t);
            let next = match (timer, event) {
                (Some((tt, _)), Some(et)) => tt.min(et),
                (Some((tt, _)), None) => tt,
                (None, Some(et)) => et,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if event == Some(next) {
                let Some(Reverse((_, _, slot))) = self.events.pop() else {
                    break;
                };
                let Some(e) = self.pending[slot].take() else {
                    continue;
                };
                self.free.push(slot);
                match e {
                    Event::Datagram { to, bytes } => {
                        let now = self.t0 + self.now;
                        let t = thread_cpu();
                        let _ = self.nodes[to].receive(now, &bytes);
                        self.in_core += thread_cpu() - t;
                        self.check_probes(to);
                        self.transmit(to);
                    }
                    Event::Report { node } => {
                        self.report(node);
                        let at = self.now + Duration::from_millis(self.a.report_ms);
                        self.push(at, Event::Report { node });
                    }
                    Event::Probe => {
                        self.probe();
                        let at = self.now + Duration::from_millis(self.a.probe_ms);
                        self.push(at, Event::Probe);
                    }
                }
            } else if let Some((_, i)) = timer {
                let now = self.t0 + self.now;
                let t = thread_cpu();
                self.nodes[i].handle_timeout(now);
                self.in_core += thread_cpu() - t;
                self.transmit(i);
            }
        }
    }
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

/// CPU seconds of this process.
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn pct(v: &[f64], p: f64) -> f64 {
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    let args = Args::parse();
    println!(
        "shoal-sim: {} resources per node reported every {} ms, {:.1} % loss per receiver, delay {} us + jitter up to {} us, {} simulated s per size",
        args.resources, args.report_ms, args.loss * 100.0, args.delay_us, args.jitter_us, args.seconds
    );
    println!(
        "{:>6} | {:>13} | {:>17} | {:>17} | {:>18} | {:>13} | {:>10} | {:>8}",
        "nodes",
        "rec/s in/node",
        "core ms/node/sim s",
        "cpu ms/node/sim s",
        "convergence p50/p99",
        "max",
        "probes",
        "lost %"
    );
    for &n in &args.nodes {
        let t0 = Instant::now();
        let mut sim = Sim {
            t0,
            now: Duration::ZERO,
            nodes: (1..=n as u32)
                .map(|id| Node::new(params(id), t0, WALL_US, WALL_US))
                .collect(),
            events: BinaryHeap::new(),
            pending: Vec::new(),
            free: Vec::new(),
            order: 0,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            a: args_clone(&args),
            probes: Vec::new(),
            next_probe: 0,
            converged: Vec::new(),
            datagrams: 0,
            dropped: 0,
            in_core: 0.0,
        };
        // Filters report at staggered offsets, as independent machines do.
        for i in 0..n {
            let offset = Duration::from_micros(sim.rng.next() % (args.report_ms * 1000));
            sim.push(offset, Event::Report { node: i });
        }
        // Warm up (every table filled) before measuring.
        sim.run(Duration::from_millis(200));
        sim.push(sim.now, Event::Probe);
        let cpu0 = process_cpu();
        sim.in_core = 0.0;
        let start = sim.now;
        let end = start + Duration::from_secs_f64(args.seconds);
        sim.run(end);
        let cpu = process_cpu() - cpu0;
        let sim_s = (end - start).as_secs_f64();
        let mut conv = std::mem::take(&mut sim.converged);
        conv.sort_by(|a, b| a.total_cmp(b));
        let unconverged = sim.probes.len();
        let records_in =
            (n as f64 - 1.0) * (args.resources as f64) * 1000.0 / args.report_ms as f64;
        println!(
            "{:>6} | {:>13.0} | {:>18.2} | {:>17.2} | {:>8.0} / {:>6.0} us | {:>10.0} us | {:>6} ({} open) | {:.2}",
            n,
            records_in,
            sim.in_core * 1e3 / n as f64 / sim_s,
            cpu * 1e3 / n as f64 / sim_s,
            pct(&conv, 0.5),
            pct(&conv, 0.99),
            conv.last().copied().unwrap_or(f64::NAN),
            conv.len(),
            unconverged,
            sim.dropped as f64 * 100.0 / (sim.datagrams as f64 * (n as f64 - 1.0)).max(1.0)
        );
    }
}

fn args_clone(a: &Args) -> Args {
    Args {
        nodes: a.nodes.clone(),
        loss: a.loss,
        seconds: a.seconds,
        resources: a.resources,
        report_ms: a.report_ms,
        probe_ms: a.probe_ms,
        delay_us: a.delay_us,
        jitter_us: a.jitter_us,
        bench: a.bench,
    }
}
