//! The HTML status page (`/status.html`) of a live cluster rendered by
//! headless Chromium: two real nodes on loopback multicast saving to a
//! real Tarantool pair, one given load and a protection mode by its
//! filter socket; the other node's page, as the browser built its DOM,
//! must show the peer, the resource with its total load and mode, the
//! store's masters up and the backlog. The screenshot is kept as
//! `target/status-page.png`. Without `chromium` it prints `SKIPPED` (a
//! failure under `SHOAL_REQUIRE_ALL=1`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_tarantool::testkit::Pair;
use shoal_wire::{Code, Record};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(20);

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-page-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout
/// then stderr.
fn headless(browser: &str, profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--metrics-recording-only",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The text of the row of table `id` whose first cell is `first`, cells
/// joined by `|` (markup removed).
fn row(dom: &str, table: &str, first: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{table}\""))?;
    let t = &dom[start..start + dom[start..].find("</table>")?];
    t.split("<tr>").skip(1).find_map(|r| {
        let cells: Vec<String> = r
            .split("<td")
            .skip(1)
            .map(|c| {
                let c = &c[c.find('>').map_or(0, |i| i + 1)..];
                let mut text = String::new();
                let mut in_tag = false;
                for ch in c.chars() {
                    match ch {
                        '<' => in_tag = true,
                        '>' => in_tag = false,
                        _ if !in_tag => text.push(ch),
                        _ => {}
                    }
                }
                text.trim().to_string()
            })
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then(|| cells.join("|"))
    })
}

#[test]
fn chromium_renders_the_cluster_at_a_glance() {
    let Some(browser) = chromium() else {
        common::skip(
            "chromium_renders_the_cluster_at_a_glance",
            "chromium missing (apt-get install chromium)",
        );
        return;
    };
    let dir = tempdir("chromium");
    let pair = Pair::start(&dir.join("tt")).expect("tarantool pair");
    let (group, port) = unique_group();
    let nodes: Vec<NodeProcess> = (1..=2)
        .map(|id| {
            let mut spec = NodeSpec::loopback(id, group, port, &dir);
            spec.extra = format!(
                "[store]\nmasters = [\"{}\", \"{}\"]\npassword = \"{}\"\n",
                pair.a, pair.b, pair.password
            );
            NodeProcess::spawn(Path::new(BIN), &spec).expect("node starts")
        })
        .collect();
    // Node 1's filter: a level-2 mode for resource 4242 and its load,
    // refreshed (a gauge goes stale after 2 s) while the page is rendered.
    let mut c = nodes[0].client().expect("client");
    c.send(&[Record {
        ttl_ms: 60_000,
        ..Record::new(Code::MODE, [4242, 2, 0, 0])
    }])
    .expect("send");
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Errors show as a stale gauge, which the test reports.
                let _ = c.send(&[Record::new(Code::LOAD, [4242, 3_100, 1_000, 0])]);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let url = format!("http://{}/status.html", nodes[1].admin);
    assert!(
        wait_until(WAIT, || {
            let page = shoal_node::http_get(&nodes[1].admin, "/status.html").unwrap_or_default();
            row(&page, "resources", "4242").is_some_and(|r| r.starts_with("4242|3100|0|1|2|node 1"))
                && [&pair.a, &pair.b]
                    .iter()
                    .all(|m| row(&page, "masters", m).is_some_and(|r| r.contains("|up|")))
        }),
        "node 2's page never showed node 1's load and mode and the masters up: {}",
        shoal_node::http_get(&nodes[1].admin, "/status.html").unwrap_or_default()
    );

    // What the browser makes of it.
    let profile = dir.join("chromium-profile");
    let dom = headless(browser, &profile, &url, &["--dump-dom"]);
    assert!(dom.contains("shoal node 2, cluster 1"), "title: {dom}");
    let peer = row(&dom, "peers", "1").unwrap_or_else(|| panic!("no row for peer 1: {dom}"));
    let cells: Vec<&str> = peer.split('|').collect();
    assert!(
        cells[1].parse::<u64>().is_ok_and(|d| d > 0),
        "peer 1 datagrams: {peer}"
    );
    assert_eq!(cells[4], "0.000", "no loss on loopback: {peer}");
    let res = row(&dom, "resources", "4242").unwrap_or_else(|| panic!("no row for 4242: {dom}"));
    assert!(
        res.starts_with("4242|3100|0|1|2|node 1|"),
        "resource row: {res}"
    );
    for m in [&pair.a, &pair.b] {
        let r = row(&dom, "masters", m).unwrap_or_else(|| panic!("no row for master {m}: {dom}"));
        assert!(r.contains("|up|"), "master {m}: {r}");
    }
    assert!(dom.contains("backlog 0 of "), "store line: {dom}");
    assert!(dom.contains("id=\"forwarder\""), "forwarder: {dom}");

    // The screenshot, kept for people.
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .canonicalize()
        .expect("target dir");
    let shot = target.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let said = headless(
        browser,
        &profile,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,800",
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a real screenshot: {} bytes ({said})",
        png.len()
    );
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("feeder");
    eprintln!(
        "status page screenshot: {} ({} bytes)",
        shot.display(),
        png.len()
    );
    drop(nodes);
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}
