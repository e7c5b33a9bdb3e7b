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
