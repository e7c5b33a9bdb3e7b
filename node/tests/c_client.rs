//! The C header and example, compiled with gcc (and the header with g++)
//! and run against a live node: what a C/C++ filter would do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_node::testkit::{unique_group, wait_until, NodeProcess, NodeSpec};
use shoal_wire::Code;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn compile(compiler: &str, out: &Path, extra: &[&str]) -> Result<(), String> {
    let o = Command::new(compiler)
        .args(extra)
        .args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg(root().join("examples/c/shoal_example.c"))
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

#[test]
fn c_example_talks_to_a_live_node() {
    let dir = std::env::temp_dir().join(format!("shoal-c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let exe = dir.join("shoal_example");
    compile("gcc", &exe, &["-std=c99", "-pedantic"]).expect("the C example compiles cleanly");
    // The header is also valid C++ (built as C++ with g++).
    compile("g++", &dir.join("shoal_example_cxx"), &["-x", "c++"])
        .expect("the header compiles as C++");

    let (group, port) = unique_group();
    let n1 = NodeProcess::spawn(Path::new(BIN), &NodeSpec::loopback(1, group, port, &dir))
        .expect("node 1");
    let n2 = NodeProcess::spawn(Path::new(BIN), &NodeSpec::loopback(2, group, port, &dir))
        .expect("node 2");
    let mut c2 = n2.client().expect("client");
    c2.send(&[shoal_wire::Record::new(Code::LOAD, [31, 250, 0, 0])])
        .expect("send");
    assert!(wait_until(Duration::from_secs(5), || c2
        .query(Code::QUERY_LOAD, 31, Duration::from_secs(1))
        .is_ok_and(|r| r.fields[1] == 250)));

    let mut c1 = n1.client().expect("client");
    assert!(
        wait_until(Duration::from_secs(5), || c1
            .query(Code::QUERY_LOAD, 31, Duration::from_secs(1))
            .is_ok_and(|r| r.fields[1] == 250)),
        "{}",
        n1.metrics().unwrap_or_default()
    );
    // The C filter reports 1000 req/s on node 1 and reads the cluster total.
    let out = Command::new(&exe)
        .arg(&n1.socket)
        .args(["31", "1000"])
        .output()
        .expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "resource=31 total=1250 local=1000 nodes=2");
    // Node 2 sees the C filter's load too.
    assert!(wait_until(Duration::from_secs(5), || c2
        .query(Code::QUERY_LOAD, 31, Duration::from_secs(1))
        .is_ok_and(|r| r.fields[1] == 1250)));

    // Mode query through the C client.
    let out = Command::new(&exe)
        .arg(&n1.socket)
        .args(["--mode", "31"])
        .output()
        .expect("example runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("resource=31 level=0"));

    // Usage errors exit 2; a dead socket exits 1.
    assert_eq!(
        Command::new(&exe).output().expect("runs").status.code(),
        Some(2)
    );
    let dead = Command::new(&exe)
        .arg(dir.join("nobody.sock"))
        .args(["1", "1"])
        .output()
        .expect("runs");
    assert_eq!(dead.status.code(), Some(1));
    drop((n1, n2));
    let _ = std::fs::remove_dir_all(&dir);
}
