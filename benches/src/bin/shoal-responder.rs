//! Log responder harness, three figures:
//!
//! 1. **Lines per second per core** (per CPU-second of the matching
//!    thread, so a busy machine does not skew it): a generated auth log (RFC 3164 lines
//!    as in `/var/log/auth.log`, brute force mixed with noise) through the
//!    node's own code on one thread: parse (`shoal_core::syslog`) then
//!    match and count (`shoal_core::rules`, the cluster buckets), with 50
//!    rules and with 1 rule (the cost per line should not grow with the
//!    rules that do not match).
//! 2. **fail2ban-regex** (Debian's, if installed) on the same log file
//!    with the same 50 patterns as `failregex` lines, in the same run: its
//!    lines/s and the ratio. Both must find the same number of matches.
//! 3. **Trigger to action on every node**: three real `shoal` nodes on
//!    loopback; for each of `--latency` addresses four failures are
//!    spread over the nodes first, then the fifth is sent (UDP, RFC 5424)
//!    to one node and every node's local socket is polled until the
//!    address's mark is there. p50/p99 of the slowest node.
//!
//! Usage: shoal-responder [--lines 200000] [--passes 5] [--bin target/release/shoal]
//!                        [--latency 200] [--no-fail2ban] [--keep DIR]

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use shoal_core::rules::{
    ActionSpec, ClusterBuckets, NetList, Outcome, Responder, RuleSet, RuleSpec,
};
use shoal_node::testkit::{unique_group, NodeProcess, NodeSpec};
use shoal_wire::{Code, Record};

#[derive(Parser)]
struct Args {
    /// Lines in the generated log.
    #[arg(long, default_value_t = 200_000)]
    lines: usize,
    /// Passes over the log for our figure (the median pass is reported).
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// The `shoal` binary for the latency figure.
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Addresses triggered for the latency figure (0: skip it).
    #[arg(long, default_value_t = 200)]
    latency: usize,
    /// Skip fail2ban-regex.
    #[arg(long)]
    no_fail2ban: bool,
    /// Keep the log, rules and filter in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// (program, message pattern with `<ADDR>`): 50 rules in the style of
/// fail2ban's filters, written once for both engines (the pattern
/// syntax used is common to Rust's regex and Python's re).
fn patterns() -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("sshd", r"Failed password for (?:invalid user )?\S+ from <ADDR> port \d+(?: ssh2)?".into()),
        ("sshd", r"Invalid user \S+ from <ADDR> port \d+".into()),
        ("sshd", r"Connection closed by authenticating user \S+ <ADDR> port \d+ \[preauth\]".into()),
        ("sshd", r"Received disconnect from <ADDR> port \d+:11: Bye Bye \[preauth\]".into()),
        ("sshd", r"Did not receive identification string from <ADDR> port \d+".into()),
        ("sshd", r"error: maximum authentication attempts exceeded for \S+ from <ADDR> port \d+ ssh2 \[preauth\]".into()),
        ("sshd", r"Unable to negotiate with <ADDR> port \d+: no matching key exchange method found\..*".into()),
        ("sshd", r"User \S+ from <ADDR> not allowed because not listed in AllowUsers".into()),
        ("sshd", r"ROOT LOGIN REFUSED FROM <ADDR> port \d+".into()),
        ("sshd", r"Bad protocol version identification '.*' from <ADDR> port \d+".into()),
        ("postfix/smtpd", r"warning: unknown\[<ADDR>\]: SASL (?:LOGIN|PLAIN) authentication failed: \S+".into()),
        ("postfix/smtpd", r"NOQUEUE: reject: RCPT from \S+\[<ADDR>\]: 554 5\.7\.1 .*".into()),
        ("postfix/smtpd", r"lost connection after AUTH from unknown\[<ADDR>\]".into()),
        ("dovecot", r"imap-login: Disconnected \(auth failed, \d+ attempts in \d+ secs\): user=<\S*>, method=\S+, rip=<ADDR>, lip=\S+.*".into()),
        ("dovecot", r"pop3-login: Aborted login \(auth failed, \d+ attempts in \d+ secs\): user=<\S*>, method=\S+, rip=<ADDR>, lip=\S+.*".into()),
        ("vsftpd", r"pam_unix\(vsftpd:auth\): authentication failure; logname=\S* uid=\d+ euid=\d+ tty=ftp ruser=\S* rhost=<ADDR>(?:\s+user=\S*)?".into()),
        ("proftpd", r"\S+ \(<ADDR>\[<ADDR2>\]\) - USER \S+ \(Login failed\): .*".into()),
        ("named", r"client @0x[0-9a-f]+ <ADDR>#\d+ \([^)]*\): query \(cache\) '[^']*' denied".into()),
        ("nginx", r"\d+#\d+: \*\d+ user \S+ was not found in \S+, client: <ADDR>, server: \S+, request: .*".into()),
        ("nginx", r"\d+#\d+: \*\d+ limiting requests, excess: [\d.]+ by zone \S+, client: <ADDR>, server: \S+, request: .*".into()),
        ("asterisk", r"NOTICE\[\d+\]: chan_sip\.c:\d+ in handle_request_register: Registration from '[^']*' failed for '<ADDR>:\d+' - Wrong password".into()),
        ("courier-pop3d", r"LOGIN FAILED, user=\S+, ip=\[<ADDR>\]".into()),
        ("xrdp", r"\[ERROR\] \[\d+\] login failed for display \d+ from <ADDR>".into()),
        ("openvpn", r"<ADDR>:\d+ TLS Error: TLS handshake failed".into()),
        ("grafana", r"logger=context userId=0 orgId=0 uname= t=\S+ level=error msg=.Invalid username or password. remote_addr=<ADDR>.*".into()),
    ];
    // The rest: rules for other daemons, same shape, that the noise never
    // matches (real rule sets are mostly rules for what is not happening).
    let daemons = [
        "gitea",
        "gitlab",
        "jenkins",
        "mysqld",
        "postgres",
        "mongod",
        "redis",
        "haproxy",
        "squid",
        "sogo",
        "roundcube",
        "nextcloud",
        "monit",
        "webmin",
        "cockpit",
        "pure-ftpd",
        "exim",
        "sendmail",
        "cyrus",
        "mosquitto",
        "zabbix",
        "kibana",
        "traefik",
        "caddy",
        "ejabberd",
    ];
    for d in daemons {
        v.push((
            d,
            format!(r"authentication failure for \S+ from <ADDR> \(service {d}\)"),
        ));
    }
    v
}

/// Our rule specs from the shared patterns. `<ADDR2>` (a second address
/// in a line: the one the rule does not take) becomes a plain group.
fn specs(p: &[(&'static str, String)]) -> Vec<RuleSpec> {
    p.iter()
        .enumerate()
        .map(|(i, (prog, pat))| {
            let (capacity, leak_every) = RuleSpec::leak_from_findtime(5, Duration::from_secs(600));
            RuleSpec {
                name: format!("r{i}"),
                host: None,
                program: Some(regex_escape(prog)),
                pattern: pat.replace("<ADDR2>", r"[0-9.]+"),
                capacity,
                leak_every,
                action: ActionSpec::Mark {
                    suspicious: true,
                    ttl: Duration::from_secs(600),
                },
            }
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc = "\\.+*?()|[]{}^$".contains(c);
            esc.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// A fail2ban filter with the same patterns, anchored the same way (the
/// whole line after fail2ban strips the date: `host program[pid]: msg`).
fn fail2ban_filter(p: &[(&'static str, String)]) -> String {
    let mut s = String::from("[Definition]\nfailregex = ");
    for (i, (prog, pat)) in p.iter().enumerate() {
        if i > 0 {
            s.push_str("            ");
        }
        let pat = pat
            .replace("<ADDR2>", r"[0-9.]+")
            .replace("<ADDR>", "<HOST>");
        s.push_str(&format!(
            r"^\s*\S+ {}(?:\[\d+\])?: {}$",
            regex_escape(prog),
            pat
        ));
        s.push('\n');
    }
    s.push_str("ignoreregex =\n");
    s
}

/// A small deterministic generator.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// An auth log: 30% sshd failures (800 sources), 5% planted
/// addresses in user names, 10% other rule shapes, the rest noise.
fn generate(n: usize) -> String {
    let mut r = Lcg(42);
    let mut out = String::with_capacity(n * 100);
    for i in 0..n {
        let (h, m, s) = ((i / 3600) % 24, (i / 60) % 60, i % 60);
        let ts = format!("Nov 26 {h:02}:{m:02}:{s:02}");
        let host = ["fw1", "fw2", "vyos"][r.next() as usize % 3];
        let pid = 1000 + r.next() % 5000;
        // A few hundred sources, so brute force repeats.
        let a = format!("10.{}.{}.{}", r.next() % 4, r.next() % 4, 1 + r.next() % 50);
        let k = r.next() % 100;
        let line = match k {
            0..=29 => format!(
                "{ts} {host} sshd[{pid}]: Failed password for {}root from {a} port {} ssh2",
                if k % 2 == 0 { "invalid user " } else { "" },
                1024 + r.next() % 60000
            ),
            30..=34 => format!(
                "{ts} {host} sshd[{pid}]: Failed password for invalid user x from 10.99.0.1 port 22 from {a} port {} ssh2",
                1024 + r.next() % 60000
            ),
            35..=39 => format!("{ts} {host} sshd[{pid}]: Invalid user admin from {a} port {}", 1024 + r.next() % 60000),
            40..=42 => format!("{ts} {host} postfix/smtpd[{pid}]: warning: unknown[{a}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"),
            43..=44 => format!("{ts} {host} dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<bob>, method=PLAIN, rip={a}, lip=10.0.0.1, session=<abc>"),
            45..=59 => format!("{ts} {host} sshd[{pid}]: Accepted publickey for deploy from {a} port {} ssh2: ED25519 SHA256:abcdef", 1024 + r.next() % 60000),
            60..=74 => format!("{ts} {host} CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"),
            75..=84 => format!("{ts} {host} kernel: [12345.678901] IN=eth0 OUT= MAC=00:11:22:33:44:55 SRC={a} DST=10.0.0.1 LEN=60 PROTO=TCP SPT=4444 DPT=22"),
            85..=94 => format!("{ts} {host} systemd[1]: Started Session {pid} of user deploy."),
            _ => format!("{ts} {host} sshd[{pid}]: pam_unix(sshd:session): session closed for user deploy"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// CPU seconds this thread has used: the figure is per core, and the
/// machine is shared, so wall time would measure the neighbours.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; the clock id is a constant.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds (user + system) of the waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Pass {
    /// CPU seconds of the matching thread.
    secs: f64,
    wall: f64,
    matched: u64,
    acted: u64,
}

fn run_ours(log: &str, rules: RuleSet, with_parse: bool) -> anyhow::Result<Pass> {
    let base = Instant::now();
    let buckets = ClusterBuckets::new(&rules, 8192, base, 7);
    let mut r = Responder::new(rules, buckets);
    let mut framed = Vec::with_capacity(256);
    // Pre-parsed lines for the rules-only figure.
    let pre: Vec<(String, String, String)> = if with_parse {
        Vec::new()
    } else {
        log.lines()
            .map(|l| {
                framed.clear();
                framed.extend_from_slice(b"<13>");
                framed.extend_from_slice(l.as_bytes());
                let p = shoal_core::syslog::parse(&framed).expect("generated lines parse");
                (p.host.to_string(), p.app.to_string(), p.msg.to_string())
            })
            .collect()
    };
    let (mut matched, mut acted) = (0, 0);
    let mut tally = |o: Outcome| match o {
        Outcome::Counted { .. } | Outcome::Dropped { .. } => matched += 1,
        Outcome::Act { .. } => {
            matched += 1;
            acted += 1
        }
        Outcome::Miss(_) => {}
    };
    let started = Instant::now();
    let cpu0 = thread_cpu();
    if with_parse {
        for (i, l) in log.lines().enumerate() {
            framed.clear();
            framed.extend_from_slice(b"<13>");
            framed.extend_from_slice(l.as_bytes());
            let now = base + Duration::from_micros(i as u64 * 10);
            let Ok(p) = shoal_core::syslog::parse(&framed) else {
                bail!("line {i} does not parse");
            };
            tally(r.observe(now, p.host, p.app, p.msg));
        }
    } else {
        for (i, (h, a, m)) in pre.iter().enumerate() {
            let now = base + Duration::from_micros(i as u64 * 10);
            tally(r.observe(now, h, a, m));
        }
    }
    Ok(Pass {
        secs: thread_cpu() - cpu0,
        wall: started.elapsed().as_secs_f64(),
        matched,
        acted,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.lines == 0 || a.passes == 0 {
        bail!("--lines and --passes must be positive");
    }
    let dir = match &a.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("shoal-responder-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let pats = patterns();
    let log = generate(a.lines);
    let log_path = dir.join("auth.log");
    std::fs::write(&log_path, &log)?;
    println!(
        "log: {} lines, {} bytes, {} rules",
        a.lines,
        log.len(),
        pats.len()
    );

    let mut matched50 = 0;
    for (label, n, with_parse) in [
        ("50 rules, rules only", pats.len(), false),
        ("50 rules, parse + rules", pats.len(), true),
        ("1 rule, parse + rules", 1, true),
    ] {
        let mut secs = Vec::new();
        let mut walls = Vec::new();
        let mut last = None;
        for _ in 0..a.passes {
            let set = RuleSet::compile(&specs(&pats[..n]), NetList::default())?;
            let p = run_ours(&log, set, with_parse)?;
            secs.push(p.secs);
            walls.push(p.wall);
            last = Some(p);
        }
        let p = last.context("a pass")?;
        if n == pats.len() {
            matched50 = p.matched;
        }
        let s = median(secs);
        let w = median(walls);
        println!(
            "shoal {label}: {:.0} lines per CPU-second on one thread (median of {} passes: {:.3} s CPU, {:.3} s wall); {} matched, {} overflows",
            a.lines as f64 / s,
            a.passes,
            s,
            w,
            p.matched,
            p.acted
        );
    }

    if !a.no_fail2ban {
        let filter = dir.join("shoal-bench.conf");
        std::fs::write(&filter, fail2ban_filter(&pats))?;
        let started = Instant::now();
        let cpu0 = children_cpu();
        let out = Command::new("fail2ban-regex")
            .arg(&log_path)
            .arg(&filter)
            .output();
        match out {
            Err(e) => println!("SKIPPED fail2ban-regex: {e} (apt-get install fail2ban)"),
            Ok(o) => {
                let wall = started.elapsed().as_secs_f64();
                let secs = children_cpu() - cpu0;
                let text = String::from_utf8_lossy(&o.stdout);
                if !o.status.success() {
                    bail!(
                        "fail2ban-regex failed: {text}{}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                let lines_line = text
                    .lines()
                    .find(|l| l.starts_with("Lines:"))
                    .context("no Lines: in fail2ban-regex output")?;
                let matched: u64 = lines_line
                    .split(',')
                    .find(|p| p.contains("matched"))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .context("no matched count")?;
                let ours = {
                    let set = RuleSet::compile(&specs(&pats), NetList::default())?;
                    run_ours(&log, set, true)?.secs
                };
                println!(
                    "fail2ban-regex (50 failregex, same file): {:.0} lines per CPU-second ({:.2} s CPU incl. start-up, {:.2} s wall); {} matched ({lines_line})",
                    a.lines as f64 / secs,
                    secs,
                    wall,
                    matched
                );
                println!(
                    "ratio shoal (parse + rules) / fail2ban-regex, CPU time: {:.0}x",
                    secs / ours
                );
                if matched != matched50 {
                    println!("WARNING: match counts differ: shoal {matched50}, fail2ban {matched}");
                }
            }
        }
    }

    if a.latency > 0 {
        latency(&a, &dir)?;
    }
    if a.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = t.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn latency(a: &Args, dir: &Path) -> anyhow::Result<()> {
    if !a.bin.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p shoal-node",
            a.bin.display()
        );
    }
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"sshd\"\nprogram = \"sshd\"\npattern = 'Failed password for (?:invalid user )?\\S+ from <ADDR> port [0-9]+(?: ssh2)?'\nmaxretry = 5\nfindtime_s = 600\naction = \"mark\"\nttl_s = 600\n",
    )?;
    let (group, port) = unique_group();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let sp = free_port();
        let mut spec = NodeSpec::loopback(id, group, port, dir);
        spec.extra = format!(
            "[syslog]\nudp = \"127.0.0.1:{sp}\"\nallow = [\"127.0.0.0/8\"]\nrules = \"{}\"\ntrust_udp = true\n",
            rules.display()
        );
        nodes.push((NodeProcess::spawn(&a.bin, &spec)?, sp));
    }
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let send = |port: u16, addr: Ipv4Addr, n: usize| -> std::io::Result<()> {
        let m = format!("<38>1 2026-11-26T15:00:00Z fw1 sshd 42 - - Failed password for root from {addr} port {} ssh2", 1000 + n);
        udp.send_to(m.as_bytes(), ("127.0.0.1", port)).map(|_| ())
    };
    let addr = |i: usize| {
        Ipv4Addr::new(
            10,
            150 + (i / 60000) as u8,
            ((i / 250) % 240) as u8,
            (i % 250) as u8 + 1,
        )
    };
    // Four failures per address, spread over the nodes.
    for i in 0..a.latency {
        for k in 0..4 {
            send(nodes[(i + k) % 3].1, addr(i), k)?;
        }
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Every node has announced and absorbed them.
    std::thread::sleep(Duration::from_millis(500));
    let mut clients: Vec<_> = nodes
        .iter()
        .map(|(n, _)| n.client())
        .collect::<Result<_, _>>()?;
    let mut worst = Vec::with_capacity(a.latency);
    for i in 0..a.latency {
        let key = u64::from(addr(i).to_bits());
        let t0 = Instant::now();
        send(nodes[i % 3].1, addr(i), 4)?;
        let mut seen = [None; 3];
        // Polled every 100 µs (a local query costs tens of µs), not with
        // testkit's 5 ms wait_until: the figure is a few ms.
        let deadline = t0 + Duration::from_secs(5);
        while Instant::now() < deadline {
            for (j, c) in clients.iter_mut().enumerate() {
                if seen[j].is_none() {
                    let r = c.query(Code::QUERY_SESSION, key, Duration::from_secs(1));
                    if r.is_ok_and(|r| r.fields[1] == Record::MARK_SUSPICIOUS) {
                        seen[j] = Some(t0.elapsed());
                    }
                }
            }
            if seen.iter().all(Option::is_some) {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        if !seen.iter().all(Option::is_some) {
            bail!(
                "address {} not marked on every node within 5 s: {seen:?}",
                addr(i)
            );
        }
        let w = seen.iter().flatten().max().copied().unwrap_or_default();
        worst.push(w.as_secs_f64() * 1e3);
    }
    let acted: f64 = nodes
        .iter()
        .filter_map(|(n, _)| n.metric("shoal_responder_lines_total{result=\"acted\"}"))
        .sum();
    println!(
        "trigger line -> mark on all 3 nodes (loopback, UDP syslog): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} addresses; {} actions in total",
        pct(&worst, 0.5),
        pct(&worst, 0.99),
        pct(&worst, 1.0),
        a.latency,
        acted
    );
    let _ = std::io::stdout().flush();
    Ok(())
}
