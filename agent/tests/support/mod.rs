//! Shared support for imagewarden's privileged integration tests.
//! Use with `mod support;` in a test file.

#![allow(dead_code)]

pub mod containerd;
pub mod daemonset;
pub mod fakeapi;
pub mod fakekubelet;
pub mod host;

/// Stops a test that cannot run here: under `CI=true` it fails, otherwise
/// it prints a loud SKIP line and the caller returns.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
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
