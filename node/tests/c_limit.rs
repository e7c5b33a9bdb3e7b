//! The C header's rate-limit helpers (`shoal_limit()`, `shoal_limit_id()`,
//! `shoal_key_ipv4()`), compiled with gcc (and g++) and run against a live
//! node: a C filter asking its sidecar whether to admit a source.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_node::testkit::{unique_group, NodeProcess, NodeSpec};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn compile(compiler: &str, out: &Path, extra: &[&str]) -> Result<(), String> {
    let o = Command::new(compiler)
        .args(extra)
        .args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg(root().join("examples/c/shoal_limit.c"))
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|e| format!("{compiler}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn run(exe: &Path, socket: &Path, limit: &str, hits: &str) -> String {
    let out = Command::new(exe)
        .arg(socket)
        .args([limit, "192.0.2.9", hits])
        .output()
        .expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {line}"))
}

#[test]
fn a_c_filter_gets_rate_limit_decisions() {
    let dir = std::env::temp_dir().join(format!("shoal-c-limit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let exe = dir.join("shoal_limit");
    compile("gcc", &exe, &["-std=c99", "-pedantic"]).expect("the C example compiles cleanly");
    compile("g++", &dir.join("shoal_limit_cxx"), &["-x", "c++"])
        .expect("the header compiles as C++");

    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, &dir);
    // 1 hit per second, a burst of 5, so the run cannot refill it.
    spec.extra = "[[limits]]\nname = \"conn\"\nkey = \"addr\"\nrate = 1\nburst = 5\n".into();
    let mut node = NodeProcess::spawn(Path::new(BIN), &spec).expect("node");

    // 150 hits (3 datagrams) of one source: the burst passes, the rest not.
    let line = run(&exe, &node.socket, "conn", "150");
    assert_eq!(field(&line, "allowed"), 5, "{line}");
    assert_eq!(field(&line, "denied"), 145, "{line}");
    let retry = field(&line, "last_retry_after_us");
    assert!((900_000..=1_000_000).contains(&retry), "{line}");
    // The sidecar counted the same (the C id is the Rust id of the name).
    assert_eq!(
        node.metric("shoal_limit_allowed_total{limit=\"conn\"}"),
        Some(5.0)
    );
    // A limit the sidecar does not have: refused with reason 8.
    let line = run(&exe, &node.socket, "nope", "3");
    assert_eq!(
        (field(&line, "refused"), field(&line, "reason")),
        (3, 8),
        "{line}"
    );
    node.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
