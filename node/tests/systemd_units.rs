//! The systemd units of `packaging/systemd/` pass `systemd-analyze verify`
//! with no output at all (it exits 0 on unknown keys and bad values, so
//! any stderr line is a failure), and the sysctl drop-in names keys this
//! kernel has. Without `systemd-analyze` it prints `SKIPPED` (a failure
//! under `SHOAL_REQUIRE_ALL=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?;
    let p = p.trim();
    (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
}

/// Copies the units into `dir` with their binaries pointed at what this
/// machine has (verify checks that every Exec* command exists), the
/// template under an instance name.
fn staged_units(dir: &Path, tarantool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (src, dst) in [
        ("shoal.service", "shoal.service"),
        (
            "shoal-tarantool@.service",
            "shoal-tarantool@store-a.service",
        ),
    ] {
        let text = std::fs::read_to_string(packaging().join(src)).expect("unit readable");
        assert!(
            text.contains("/usr/bin/shoal") || text.contains("/usr/bin/tarantool"),
            "{src}: no ExecStart to stage"
        );
        let text = text
            .replace("/usr/bin/shoal ", &format!("{BIN} "))
            .replace("/usr/bin/tarantool ", &format!("{} ", tarantool.display()));
        let path = dir.join(dst);
        std::fs::write(&path, text).expect("write staged unit");
        out.push(path);
    }
    out
}

fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn units_verify_without_a_single_warning() {
    let Some(_) = which("systemd-analyze") else {
        common::skip(
            "units_verify_without_a_single_warning",
            "systemd-analyze missing (apt-get install systemd)",
        );
        return;
    };
    let tarantool = which("tarantool").unwrap_or_else(|| PathBuf::from("/bin/true"));
    let dir = tempdir("units");
    let units = staged_units(&dir, &tarantool);
    let (ok, output) = verify(&units);
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify complained:\n{output}"
    );

    // The check itself can fail: a unit with an unknown key is caught.
    let bad = dir.join("shoal.service");
    let mut text = std::fs::read_to_string(&bad).expect("staged unit");
    text = text.replace("[Service]\n", "[Service]\nProtectEverything=yes\n");
    std::fs::write(&bad, text).expect("write");
    let (_, output) = verify(&[bad]);
    assert!(
        output.contains("ProtectEverything"),
        "a unit with an unknown key went unnoticed: {output:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The node's unit grants no capability; only the enforcement drop-in
/// adds one, and only CAP_NET_ADMIN.
#[test]
fn node_unit_grants_no_capability_but_enforce_drop_in_net_admin() {
    let unit = std::fs::read_to_string(packaging().join("shoal.service")).expect("unit");
    let caps: Vec<&str> = unit
        .lines()
        .filter(|l| {
            l.starts_with("CapabilityBoundingSet=") || l.starts_with("AmbientCapabilities=")
        })
        .collect();
    assert_eq!(caps, ["CapabilityBoundingSet=", "AmbientCapabilities="]);
    for key in [
        "RuntimeDirectory=shoal",
        "UMask=0027",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(key), "shoal.service lacks {key}");
    }
    let dropin = std::fs::read_to_string(packaging().join("enforce.conf")).expect("drop-in");
    let caps: Vec<&str> = dropin
        .lines()
        .filter(|l| l.contains("Capabilit"))
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        caps,
        [
            "CapabilityBoundingSet=CAP_NET_ADMIN",
            "AmbientCapabilities=CAP_NET_ADMIN"
        ]
    );
}

#[test]
fn sysctl_drop_in_names_keys_this_kernel_has() {
    let text = std::fs::read_to_string(packaging().join("60-shoal.conf")).expect("drop-in");
    let mut keys = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = value");
        let (key, value) = (key.trim(), value.trim());
        let proc_path = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(proc_path.exists(), "{key}: no {}", proc_path.display());
        let v: u64 = value.parse().expect("a number");
        assert!(
            v >= 8 << 20 || key != "net.core.rmem_max",
            "{key} = {v}: below the default rcvbuf"
        );
        keys += 1;
    }
    assert!(keys >= 1, "no key in 60-shoal.conf");
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}
