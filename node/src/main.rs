//! The `shoal` command: run the sidecar, inspect it, and poke it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use shoal_node::{http_get, probe, ClientError, Config, LocalClient, Preflight, Probe, SocketPath};
use shoal_wire::{reason_to_field, Code, Op, Prefix, Record};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Cluster sync sidecar for L7 anti-DDoS filter nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sidecar.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file as `run` does (secret files read, socket
    /// path and group checked) and print what it resolves to, secrets
    /// redacted.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Print only `config ok` (and warnings): for the unit's
        /// `ExecStartPre`, so every start does not copy the resolved
        /// config into the journal.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print peers with their loss, and resources with totals and modes.
    Status {
        #[arg(short, long)]
        config: PathBuf,
        /// Print the Prometheus metrics instead.
        #[arg(long)]
        metrics: bool,
    },
    /// Inject a record through the local socket, as a filter would.
    Send {
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        what: SendWhat,
        /// Operation: send, save or send-save.
        #[arg(long, value_enum, default_value_t = OpArg::Send, global = true)]
        op: OpArg,
    },
    /// Check a responder rules file, or run a log through it.
    Rules {
        #[command(subcommand)]
        what: RulesWhat,
    },
    /// Ask the local sidecar a question.
    Query {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(value_enum)]
        what: QueryWhat,
        key: u64,
    },
    /// Blocks ADDR[/LEN] on every node of the cluster (kernel drop).
    Block {
        #[arg(short, long)]
        config: PathBuf,
        prefix: String,
        /// How long: 500ms, 30s, 10m, 2h, 1d.
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// Up to 8 printable ASCII characters.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lifts the block on exactly ADDR[/LEN].
    Unblock {
        #[arg(short, long)]
        config: PathBuf,
        prefix: String,
    },
    /// Lists the live blocks this node holds.
    Blocks {
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesWhat {
    /// Print each line a rule acts on (with -v every match) and a
    /// summary, as the node would see the log (fail2ban-regex's job).
    Test {
        rules: PathBuf,
        /// A log file; `-` reads stdin.
        log: PathBuf,
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum SendWhat {
    /// This node's current rate (req/s) for a resource.
    Load { resource: u64, rate: u64 },
    /// A protection-mode claim (level 0 withdraws).
    Mode {
        resource: u64,
        level: u8,
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u32,
    },
    /// A session mark.
    Mark {
        key: u64,
        #[arg(value_enum)]
        mark: MarkArg,
        #[arg(long, default_value_t = 600_000)]
        ttl_ms: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OpArg {
    Send,
    Save,
    SendSave,
}

#[derive(Clone, Copy, ValueEnum)]
enum MarkArg {
    Legitimate,
    Suspicious,
}

#[derive(Clone, Copy, ValueEnum)]
enum QueryWhat {
    Load,
    Mode,
    Session,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain, each error once: library
            // errors keep their I/O cause as a source, not in the message.
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?;
            shoal_node::run(cfg)?;
        }
        Cmd::Check { config, quiet } => {
            let cfg = Config::load(&config)?;
            let pre = cfg.preflight()?;
            check_report(&cfg, &pre, quiet).context("writing the report")?;
        }
        Cmd::Rules {
            what:
                RulesWhat::Test {
                    rules,
                    log,
                    verbose,
                },
        } => {
            let set = shoal_node::load_rules(&rules)?;
            let n = set.len();
            let mut out = std::io::stdout().lock();
            let sum = if log.as_os_str() == "-" {
                shoal_node::test_log(set, std::io::stdin().lock(), &mut out, verbose)
            } else {
                let f = std::fs::File::open(&log)
                    .with_context(|| format!("opening {}", log.display()))?;
                shoal_node::test_log(set, std::io::BufReader::new(f), &mut out, verbose)
            }
            .context("reading the log")?;
            writeln!(
                out,
                "{} lines, {} malformed, {} matched, {} ignored, {} bad address; {} rules; {} would-be actions",
                sum.lines, sum.malformed, sum.matched, sum.ignored, sum.bad_address, n, sum.actions.len()
            )?;
            for (name, c) in &sum.per_rule {
                writeln!(out, "  {name}: {c} matches")?;
            }
        }
        Cmd::Status { config, metrics } => {
            let cfg = Config::load(&config)?;
            let path = if metrics { "/metrics" } else { "/status" };
            if cfg.http.admin.is_empty() {
                bail!("http.admin is empty in the config: the node serves no status");
            }
            let body = http_get(&cfg.http.admin, path)
                .with_context(|| format!("asking the node at {}", cfg.http.admin))?;
            print!("{body}");
        }
        Cmd::Send { config, what, op } => {
            let cfg = Config::load(&config)?;
            let mut r = match what {
                SendWhat::Load { resource, rate } => {
                    Record::new(Code::LOAD, [resource, rate, 0, 0])
                }
                SendWhat::Mode {
                    resource,
                    level,
                    ttl_ms,
                } => {
                    let mut r = Record::new(Code::MODE, [resource, level as u64, 0, 0]);
                    r.ttl_ms = ttl_ms;
                    r
                }
                SendWhat::Mark { key, mark, ttl_ms } => {
                    let m = match mark {
                        MarkArg::Legitimate => Record::MARK_LEGITIMATE,
                        MarkArg::Suspicious => Record::MARK_SUSPICIOUS,
                    };
                    let mut r = Record::new(Code::SESSION_MARK, [key, m, 0, 0]);
                    r.ttl_ms = ttl_ms;
                    r
                }
            };
            r.op = match op {
                OpArg::Send => Op::SEND,
                OpArg::Save => Op::SAVE,
                OpArg::SendSave => Op::SEND_SAVE,
            };
            LocalClient::connect(&cfg.local.socket)?.send(&[r])?;
        }
        Cmd::Query { config, what, key } => {
            let cfg = Config::load(&config)?;
            let code = match what {
                QueryWhat::Load => Code::QUERY_LOAD,
                QueryWhat::Mode => Code::QUERY_MODE,
                QueryWhat::Session => Code::QUERY_SESSION,
            };
            let r = LocalClient::connect(&cfg.local.socket)?.query(
                code,
                key,
                Duration::from_secs(1),
            )?;
            let [k, a, b, c] = r.fields;
            match what {
                QueryWhat::Load => println!("resource={k} total={a} local={b} nodes={c}"),
                QueryWhat::Mode if c >> 32 != 0 => println!(
                    "resource={k} level={a} remaining_ms={b} origin=cluster {} node {}",
                    c >> 32,
                    c & 0xffff_ffff
                ),
                QueryWhat::Mode => println!("resource={k} level={a} remaining_ms={b} origin={c}"),
                QueryWhat::Session => println!("session={k} mark={a} remaining_ms={b} origin={c}"),
            }
        }
        Cmd::Block {
            config,
            prefix,
            ttl,
            reason,
        } => {
            let cfg = Config::load(&config)?;
            let ttl_ms = parse_ttl(&ttl)?;
            send_block(&cfg, Code::BLOCK, &prefix, ttl_ms, &reason)?;
            println!("blocked {prefix} for {ttl_ms} ms");
        }
        Cmd::Unblock { config, prefix } => {
            let cfg = Config::load(&config)?;
            // 0: the node keeps the unblock as long as the block had left.
            send_block(&cfg, Code::UNBLOCK, &prefix, 0, "")?;
            println!("unblocked {prefix}");
        }
        Cmd::Blocks { config } => {
            let cfg = Config::load(&config)?;
            if cfg.http.admin.is_empty() {
                bail!("http.admin is empty in the config: the node serves no block list");
            }
            let body = http_get(&cfg.http.admin, "/blocks")
                .with_context(|| format!("asking the node at {}", cfg.http.admin))?;
            print!("{body}");
        }
    }
    Ok(())
}

/// What `shoal check` prints once the config passed the same checks as
/// `run`: the resolved config and preflight (secrets redacted by their
/// `Debug`), what will happen to the socket path, and warnings on stderr.
/// `500ms`, `30s`, `10m`, `2h`, `1d` (a plain number is seconds).
fn parse_ttl(s: &str) -> anyhow::Result<u32> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: expected a number and ms, s, m, h or d"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => bail!("--ttl {s:?}: unit must be ms, s, m, h or d"),
    };
    match u32::try_from(ms) {
        Ok(0) => bail!("--ttl must be more than 0: a block must end"),
        Ok(ms) => Ok(ms),
        Err(_) => bail!("--ttl {s:?} is more than 49 days"),
    }
}

/// Sends a BLOCK or UNBLOCK through the local API and says why the
/// sidecar refused it, if it did.
fn send_block(
    cfg: &Config,
    code: Code,
    prefix: &str,
    ttl_ms: u32,
    reason: &str,
) -> anyhow::Result<()> {
    let p: Prefix = prefix
        .parse()
        .with_context(|| format!("{prefix:?} is not ADDR or ADDR/LEN"))?;
    let reason = reason_to_field(reason).context("--reason")?;
    if code == Code::BLOCK {
        if let Some(e) = &cfg.enforce {
            // The same rules the node applies, said here with the reason.
            if let Err(r) = e.rules(&cfg.protected_prefixes()).check(&p) {
                bail!("refused: {r}");
            }
        }
    }
    let [f0, f1, f2] = p.to_fields(0);
    let mut r = Record::new(code, [f0, f1, f2, reason]);
    r.ttl_ms = ttl_ms;
    r.op = Op::SEND_SAVE;
    match LocalClient::connect(&cfg.local.socket)?.submit(r, Duration::from_secs(2)) {
        Ok(()) => Ok(()),
        Err(ClientError::Refused { reason, .. }) => bail!(
            "refused by the sidecar: {}",
            match reason {
                2 => "malformed block (see docs/wire.md 2.3)",
                5 => "applied and sent, but NOT saved: the store backlog is full",
                6 => "the cluster has no [auth] and [enforce] allow_unsigned is off",
                7 => "the prefix is allowlisted or shorter than the minimum on that node",
                _ => "see docs/local-api.md for the reason code",
            }
        ),
        Err(e) => Err(e.into()),
    }
}

fn check_report(cfg: &Config, pre: &Preflight, quiet: bool) -> anyhow::Result<()> {
    let path = &cfg.local.socket;
    let socket = match &pre.socket {
        SocketPath::Free => "free".to_string(),
        SocketPath::CreateDir(d) => format!("directory {} will be created", d.display()),
        SocketPath::Socket => match probe(path) {
            Probe::Stale => "a stale socket, replaced at start".to_string(),
            Probe::Live => "served by a running sidecar: `run` refuses until it stops".to_string(),
            Probe::Unknown(e) => bail!(
                "local.socket: a socket exists at {} and cannot be probed ({e}): `run` would refuse",
                path.display()
            ),
        },
    };
    let mut out = std::io::stdout().lock();
    if !quiet {
        writeln!(out, "{cfg:#?}")?;
        writeln!(out, "{pre:#?}")?;
        writeln!(out, "local.socket {}: {socket}", path.display())?;
    }
    writeln!(out, "config ok")?;
    out.flush()?;
    if cfg.auth.is_none() {
        eprintln!(
            "shoal: warning: no [auth]: datagrams are not signed, so every host that can reach {}:{} is trusted to change this cluster's state",
            cfg.multicast.group, cfg.multicast.port
        );
    }
    Ok(())
}
