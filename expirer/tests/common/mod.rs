//! What the module's integration tests share.

/// `LUA_CPATH` for the cdylib this package builds: cargo writes it to
/// `target/<profile>/deps/` (next to this test binary) and links it up to
/// `target/<profile>/` only on `cargo build`. `deps/` comes first: the copy
/// up there may be older than the one the test was built with.
pub(crate) fn module_cpath() -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let profile = deps.parent().expect("target/<profile>");
    let found = [profile, deps]
        .iter()
        .any(|d| d.join("libshoal_expirer.so").exists());
    assert!(
        found,
        "libshoal_expirer.so is in neither {} nor {}: build the package",
        profile.display(),
        deps.display()
    );
    format!("{}/lib?.so;{}/lib?.so;;", deps.display(), profile.display())
}
