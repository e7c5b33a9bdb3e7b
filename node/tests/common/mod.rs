//! What the tests that need the machine's privileges (root, network
//! namespaces) share: how a test that cannot run here says so, without
//! showing green.

use std::io::Write;

/// Reports that `test` cannot run here, and why; the caller then returns.
///
/// With `SHOAL_REQUIRE_ALL=1` (set by `.ci/run`, which runs as root) a skip
/// is a failure: this panics. Otherwise it writes `SKIPPED: <test>: <reason>`
/// to the process's stderr handle directly (the test harness captures
/// `eprintln!` of passing tests, not the handle, so the line shows in the
/// default output) and appends it to the file named by `SHOAL_SKIP_LOG`,
/// which `scripts/test.sh` lists at the end of the run.
pub(crate) fn skip(test: &str, reason: &str) {
    if std::env::var("SHOAL_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run here ({reason}) and SHOAL_REQUIRE_ALL=1 forbids skipping");
    }
    let line = format!("SKIPPED: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("SHOAL_SKIP_LOG") {
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = logged {
            panic!("cannot record the skip in SHOAL_SKIP_LOG={path:?}: {e}");
        }
    }
}
