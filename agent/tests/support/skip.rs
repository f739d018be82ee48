//! Skip-or-fail, decided in one place for every test and example: a test
//! that cannot run here fails under `CI=true` and is skipped loudly
//! elsewhere. Self-contained, included by `host.rs` and `containerd.rs`
//! (which examples include alone): `#[path = "skip.rs"] mod skip;`.
#![allow(dead_code)]

/// Whether this is CI (`CI=true` or `CI=1`), where every test must run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The one place that decides skip-or-fail for a test that cannot run
/// here: under CI it fails; otherwise it prints a loud SKIP and the caller
/// returns.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: cannot run in CI: {why}");
    }
    // Straight to fd 2: the test harness captures `eprintln!` of passing
    // tests, and a skip must not be silent.
    use std::io::Write;
    let msg = format!(
        "\n==================== SKIP ====================\n\
         SKIP {test}: {why}\n\
         (set CI=true to make this a failure)\n\
         ==============================================\n"
    );
    let _ = std::io::stderr().write_all(msg.as_bytes());
}
