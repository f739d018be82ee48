//! Shared support for imagewarden's privileged integration tests.
//! Use with `mod support;` in a test file.

#![allow(dead_code)]

pub mod agent;
pub mod containerd;
pub mod daemonset;
pub mod fakeapi;
pub mod fakekubelet;
pub mod host;

/// Stops a test that cannot run here: under `CI=true` it fails, otherwise
/// it prints a loud SKIP line (straight to fd 2) and the caller returns.
/// Decided in one place, [`host::skip_or_fail`], which `host::privileged`
/// uses too.
#[allow(unused_imports)]
pub use host::skip_or_fail;

/// Whether an end-to-end test against containerd release `rt` runs here:
/// the release is selected and present ([`containerd::runtime_ready`]) and
/// the test runs as root (eBPF); else it is skipped, or fails under `CI=true`.
pub fn e2e_ready(test: &str, rt: containerd::Runtime) -> bool {
    if !containerd::runtime_ready(test, rt) {
        return false;
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(test, "needs root (eBPF)");
        return false;
    }
    true
}

/// CRI's own record of a container (state, exit code, reason, times in ns).
pub async fn cri_status(
    cri: &imagewarden::sources::cri::CriClient,
    id: &str,
) -> k8s_cri::v1::ContainerStatus {
    let mut c = cri.raw_runtime();
    c.container_status(k8s_cri::v1::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
    .into_inner()
    .status
    .unwrap_or_else(|| panic!("ContainerStatus {id}: no status"))
}

/// The positive signal that a denied CRI container was stopped: waits (up
/// to `timeout`) until CRI reports it exited, then asserts it died by
/// SIGKILL (exit code 137) or never started (`StartError`: killed while
/// runc created it, so nothing of the image ran). Returns its status.
pub async fn cri_assert_denied(
    cri: &imagewarden::sources::cri::CriClient,
    id: &str,
    timeout: std::time::Duration,
) -> k8s_cri::v1::ContainerStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let st = cri_status(cri, id).await;
        if st.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
            assert!(
                st.exit_code == 128 + libc::SIGKILL || st.reason == "StartError",
                "the denied container {id} exited, but neither by SIGKILL nor at start: {st:?}"
            );
            eprintln!(
                "denied container {id}: exited, code {} ({})",
                st.exit_code, st.reason
            );
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the denied container {id} has not exited after {timeout:?}: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
