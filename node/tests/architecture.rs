//! ARCHITECTURE.md must name every workspace member in its code map.

#[test]
fn every_workspace_member_is_in_the_code_map() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace manifest");
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let members = manifest
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("members list");
    let mut n = 0;
    for m in members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        n += 1;
        assert!(
            arch.contains(&format!("### `{m}/`")),
            "{m} missing from ARCHITECTURE.md"
        );
    }
    assert!(n >= 3, "found the members");
}

/// Crates that do I/O or hold config types: none may reach `shoal-core`.
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "libc",
    "nix",
    "hyper",
    "hyper-util",
    "serde",
    "toml",
    "tracing",
];

#[test]
fn core_depends_on_no_io_crate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // This host's graph only: other targets' crates need not be fetched.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("host triple");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve graph");
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["id"] == id))
            .and_then(|p| p["name"].as_str())
            .unwrap_or(id)
            .to_string()
    };
    let core = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "shoal-core"))
        .and_then(|p| p["id"].as_str())
        .expect("shoal-core in the workspace")
        .to_string();
    // Walk normal (non-dev, non-build) dependencies from the core.
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![core];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).expect("node");
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal {
                todo.push(dep["pkg"].as_str().expect("pkg id").to_string());
            }
        }
    }
    let names: Vec<String> = seen.iter().map(|id| name_of(id)).collect();
    assert!(names.iter().any(|n| n == "shoal-wire"), "walked: {names:?}");
    for bad in NOT_IN_CORE {
        assert!(
            !names.iter().any(|n| n == bad),
            "shoal-core depends on {bad}: {names:?}"
        );
    }
}
