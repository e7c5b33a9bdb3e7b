//! The alert rules (`packaging/prometheus/shoal-alerts.yml`) and the
//! Grafana dashboard (`packaging/grafana/shoal-dashboard.json`) against
//! live nodes: two real `shoal` processes with a real Tarantool pair
//! running the native expiry module, scraped by Debian's `prometheus`
//! with the rules loaded. It fails if a rule or a panel names a metric
//! Prometheus did not ingest from the nodes, if `promtool check rules`
//! refuses the file, if a rule does not evaluate cleanly on the real
//! series (e.g. a many-to-many join), or if the unsigned cluster does not
//! raise `ShoalAuthDisabled`. Without `prometheus`/`promtool` it prints
//! `SKIPPED` (a failure under `SHOAL_REQUIRE_ALL=1`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_tarantool::testkit::Pair;
use shoal_wire::{Code, Op, Record};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-obs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Every `shoal_*` name in `text` (a name ends at the first character
/// that is not `[a-z0-9_]`).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("shoal_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not a suffix of a longer identifier (e.g. `x_shoal_y`).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The metric names the alert rules use: every `shoal_*` name outside
/// comment lines (expressions and the descriptions that point to a metric).
fn rule_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("packaging/prometheus/shoal-alerts.yml"))
        .expect("alert rules");
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    names_in(&body)
}

/// The metric names the dashboard's queries use.
fn dashboard_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("packaging/grafana/shoal-dashboard.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = String::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"].as_str() {
            exprs.push_str(q);
            exprs.push('\n');
        }
    }
    names_in(&exprs)
}

/// The sample names of a Prometheus text page.
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn name_extraction_finds_names_and_nothing_else() {
    let got = names_in("rate(shoal_a_total[5m]) / x_shoal_b + shoal_c{peer=\"1\"} shoal-tarantool");
    assert_eq!(got, ["shoal_a_total", "shoal_c"].map(String::from).into());
    assert!(rule_names().contains("shoal_auth_enabled"));
    assert!(dashboard_names().contains("shoal_peer_lost_total"));
}

#[test]
fn promtool_accepts_the_rules() {
    if !have("promtool") {
        common::skip(
            "promtool_accepts_the_rules",
            "promtool missing (apt-get install prometheus)",
        );
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join("packaging/prometheus/shoal-alerts.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET` over HTTP/1.0 (Prometheus then sends the body unchunked).
fn get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("{path}: {head}")));
    }
    Ok(body.to_string())
}

fn json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&get(addr, path).ok()?).ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_every_metric_the_rules_and_panels_name() {
    for tool in ["prometheus", "promtool", "tarantool"] {
        if !have(tool) {
            common::skip(
                "prometheus_scrapes_every_metric_the_rules_and_panels_name",
                &format!("{tool} missing (apt-get install prometheus tarantool)"),
            );
            return;
        }
    }
    let dir = tempdir("prom");
    let cpath = expirer_cpath();
    let pair = Pair::start_with(
        &dir.join("tt"),
        &[
            ("SHOAL_TT_EXPIRER", "shoal_expirer"),
            ("LUA_CPATH", cpath.as_str()),
        ],
    )
    .expect("tarantool pair with the native module");

    // Two unsigned nodes (no [auth]: ShoalAuthDisabled must fire), both
    // saving to the pair.
    let (group, port) = unique_group();
    let nodes: Vec<NodeProcess> = (1..=2)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.secret = None;
            spec.extra = format!(
                "[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\nsave_function = \"shoal_expirer.shoal_save\"\n",
                pair.a, pair.b, pair.password
            );
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
        })
        .collect();
    // A saved session mark (store families), and traffic both ways (peer
    // families on both nodes).
    for n in &nodes {
        let mut c = n.client().expect("client");
        let rec = Record {
            op: Op::SEND_SAVE,
            ttl_ms: 600_000,
            ..Record::new(Code::SESSION_MARK, [7_000 + u64::from(n.id), 1, 0, 0])
        };
        c.send(&[rec]).expect("send");
    }
    assert!(
        wait_until(WAIT, || nodes.iter().all(|n| {
            let page = n.metrics().unwrap_or_default();
            let names = sample_names(&page);
            [
                "shoal_peer_last_seen_seconds",
                "shoal_expirer_lag_seconds",
                "shoal_store_saved_total",
            ]
            .iter()
            .all(|m| names.contains(*m))
        })),
        "the nodes never exported their peer, store and expirer families"
    );

    // `promtool check metrics` on a real page: report its lint, fail on
    // a page it cannot parse.
    let page = nodes[0].metrics().expect("scrape");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("feed promtool");
    let lint = lint.wait_with_output().expect("promtool output");
    let lint_text = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        !lint_text.contains("error while linting"),
        "promtool cannot parse the page: {lint_text}"
    );

    // Prometheus, with the rules, scraping both nodes every second.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let web = format!("127.0.0.1:{port}");
    let rules = repo().join("packaging/prometheus/shoal-alerts.yml");
    let targets: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.admin)).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .expect("prometheus config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom_log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();

    // Every rule evaluated at least once, without error, on real series.
    let mut last = serde_json::Value::Null;
    let rules_ok = wait_until(WAIT, || {
        let Some(data) = json(&web, "/api/v1/rules") else {
            return false;
        };
        last = data.clone();
        let rules: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        !rules.is_empty()
            && rules.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            })
    });
    assert!(
        rules_ok,
        "rules not all evaluated cleanly: {last}\n{}",
        prom_log()
    );

    // Every metric the rules and panels name was scraped from the nodes.
    let mut scraped = BTreeSet::new();
    let all_in = wait_until(WAIT, || {
        let Some(v) = json(&web, "/api/v1/label/__name__/values") else {
            return false;
        };
        scraped = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        rule_names()
            .union(&dashboard_names())
            .all(|n| scraped.contains(n))
    });
    let missing: Vec<String> = rule_names()
        .union(&dashboard_names())
        .filter(|n| !scraped.contains(*n))
        .cloned()
        .collect();
    assert!(
        all_in && missing.is_empty(),
        "named by a rule or panel but not exported: {missing:?}"
    );

    // The unsigned nodes raise ShoalAuthDisabled (pending: `for: 5m`).
    let mut alerts = serde_json::Value::Null;
    let raised = wait_until(WAIT, || {
        let Some(v) = json(&web, "/api/v1/alerts") else {
            return false;
        };
        alerts = v.clone();
        let n = v["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == "ShoalAuthDisabled")
            .count();
        n == nodes.len()
    });
    assert!(
        raised,
        "ShoalAuthDisabled not raised for both nodes: {alerts}"
    );
    let firing_other: Vec<String> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
        .filter(|n| n != "ShoalAuthDisabled")
        .collect();
    eprintln!(
        "observability: {} names checked, {} series names scraped, other alerts: {firing_other:?}, promtool check metrics said: {}",
        rule_names().union(&dashboard_names()).count(),
        scraped.len(),
        lint_text.trim()
    );
    drop(nodes);
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `LUA_CPATH` for `libshoal_expirer.so`, which cargo builds (a cdylib)
/// as a dev-dependency of this package next to this test binary.
fn expirer_cpath() -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let profile = deps.parent().expect("target/<profile>");
    format!("{}/lib?.so;{}/lib?.so;;", deps.display(), profile.display())
}
