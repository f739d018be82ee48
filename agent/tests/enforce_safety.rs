//! Safe to leave in enforce mode on a production node (issue 13): what
//! admission excluded is never stopped, an empty policy is refused, pinned
//! state of another layout is rebuilt, forged labels buy nothing.
//!
//! Real parts: a private containerd + runc, the real kernel, the agent
//! binary; the stand-in API server of `support::fakeapi` in Kubernetes mode.
//! Privileged: run under the host-wide lock, one test at a time.

#[path = "support/exec_hook.rs"]
mod exec_hook;
mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use imagewarden::sources::cri::CriClient;
use serde_json::{json, Value};
use support::{
    agent::{AgentProcess, RUNNING},
    containerd::{Containerd, CriPod, Runtime, TestImages, NGINX},
    fakeapi::{Coll, FakeApi},
    host::{stopped, wait_for},
};

/// One enforcing agent at a time: two would judge each other's containers.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `imagewarden ARGS` with `env` added (the log level of
/// [`AgentProcess::command`]).
fn agent_command(args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut cmd = AgentProcess::command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `imagewarden ARGS`, waited for until it logs that it runs (30 s).
fn start_agent(args: &[&str], env: &[(&str, &Path)]) -> AgentProcess {
    AgentProcess::spawn(
        agent_command(args, env),
        |l| l.contains(RUNNING),
        Duration::from_secs(30),
    )
}

/// `imagewarden ARGS`, expected to refuse to start: its exit status and log.
fn refused_agent(args: &[&str], env: &[(&str, &Path)]) -> (std::process::ExitStatus, String) {
    match AgentProcess::try_spawn(
        agent_command(args, env),
        |l| l.contains(RUNNING),
        Duration::from_secs(30),
    ) {
        Ok(a) => panic!("the agent started:\n{}", a.log_text()),
        Err(e) => (e.status, e.log),
    }
}

/// The containerd release these tests run on: containerd 2 when
/// `IW_TEST_CONTAINERD` selects it alone (the CI guest: the release of
/// EKS's AL2023 nodes), else the host's 1.6. Each case runs on one release:
/// what they test is the agent's kernel state and decisions, and the
/// runtime differences are covered by the e2e and runtime_sources tests,
/// which run on both.
fn release() -> Runtime {
    if Runtime::V2.selected() && !Runtime::V1_6.selected() {
        Runtime::V2
    } else {
        Runtime::V1_6
    }
}

fn start_containerd() -> Containerd {
    Containerd::start_version(release())
}

fn root_or_skip(test: &str) -> bool {
    if let Err(why) = release().preflight() {
        support::skip_or_fail(test, &why);
        return false;
    }
    if !support::host::privileged() {
        support::skip_or_fail(test, "needs root (eBPF, cgroups, containerd)");
        return false;
    }
    true
}

fn seed_policy() -> Value {
    serde_yaml::from_str(include_str!(
        "../../deploy/policies/restrict-registries.yaml"
    ))
    .unwrap()
}

/// Case 3: what admission excluded is not killed. An untrusted image in
/// kube-system (Kyverno's default resourceFilters: no ConfigMap in the
/// cluster) runs its entrypoint and is reported as audit; the same image in
/// an ordinary namespace is killed; once the cluster's Kyverno ConfigMap
/// exists, its own resourceFilters decide (a `[Pod,NS,NAME-*]` entry exempts
/// one Pod; kube-public, which it does not list, is enforced again).
#[test]
fn admission_exclusions_are_reported_never_stopped() {
    let _serial = serial();
    let test = "admission_exclusions_are_reported_never_stopped";
    if !root_or_skip(test) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("k8s.io", &images);
    let api = rt.block_on(FakeApi::start());
    api.put(Coll::ClusterPolicies, seed_policy());
    let t = ctd.token.clone();
    let dir = support::host::tempdir("iw-safety-exempt");
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let endpoint = ctd.endpoint();
    let agent = start_agent(
        &[
            "run",
            "--mode",
            "enforce",
            "--fail-mode",
            "open",
            "--node-name",
            "node-a",
            "--kyverno-config-interval",
            "200ms",
            "--runtime-endpoint",
            &endpoint,
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    agent.log_line(
        "the cluster policy",
        |l| l.contains("restrict-image-registries"),
        Duration::from_secs(30),
    );
    let uid = |n: u32| format!("{n:08x}-0000-0000-0000-{t:0>12}");

    rt.block_on(async {
        let cri = CriClient::connect(&endpoint).await.expect("CRI");
        // Ran (its entrypoint's marker) and reported, not stopped: the
        // container finding says `alerted` and names why.
        let ran_and_alerted = |what: &str, id: &str, marker: &str, why: &str| {
            assert!(
                ctd.wait_marker(marker, Duration::from_secs(15)).is_some(),
                "{what} must run"
            );
            let f = agent.finding(
                &format!("the audit finding for {what}"),
                |v| v["container_id"] == id && v["type"] == "container",
                Duration::from_secs(15),
            );
            assert_eq!(f["action"], "alerted", "{f}");
            assert!(
                f["reason"].as_str().unwrap_or_default().contains(why),
                "{f}"
            );
            f
        };
        // Killed before its entrypoint ran: the kill's finding, no marker.
        let killed = |what: &str, id: &str, marker: &str| {
            agent.finding(
                &format!("the kill of {what}"),
                |v| v["container_id"] == id && v["action"] == "killed",
                Duration::from_secs(15),
            );
            assert!(
                !ctd.marker(marker).exists(),
                "the untrusted entrypoint of {what} ran"
            );
        };
        // No Kyverno ConfigMap: Kyverno's defaults exclude kube-system.
        let (_, sys_id) = ctd
            .cri_run_pod(
                &cri,
                "aws-node-x",
                "kube-system",
                &uid(1),
                "aws-node",
                NGINX,
                &format!("x-sys-{t}"),
            )
            .await;
        let f = ran_and_alerted(
            "an untrusted image in kube-system (excluded by Kyverno's defaults)",
            &sys_id,
            &format!("x-sys-{t}"),
            "[*,kube-system,*]",
        );
        assert_eq!(f["verdict"], "deny", "{f}");
        assert!(
            f["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("untrusted-image"),
            "{f}"
        );

        // The same image elsewhere: killed before its entrypoint.
        let (_, prod_id) = ctd
            .cri_run_pod_opt(
                &cri,
                "web-hub",
                "prod",
                &uid(2),
                "nginx",
                NGINX,
                &format!("x-prod-{t}"),
                true,
            )
            .await;
        killed("the same image in prod", &prod_id, &format!("x-prod-{t}"));

        // The cluster's Kyverno ConfigMap replaces the defaults.
        api.put(
            Coll::ConfigMaps,
            json!({"metadata": {"name": "kyverno", "namespace": "kyverno"},
                   "data": {"resourceFilters": "[Event,*,*][*/*,kube-system,*][Pod,prod,batch-*]",
                            "excludeGroups": "system:nodes"}}),
        );
        agent.log_line(
            "the ConfigMap's exclusions",
            |l| l.contains("admission exclusions changed"),
            Duration::from_secs(15),
        );
        let (_, batch_id) = ctd
            .cri_run_pod(
                &cri,
                "batch-7",
                "prod",
                &uid(3),
                "nginx",
                NGINX,
                &format!("x-batch-{t}"),
            )
            .await;
        ran_and_alerted(
            "a Pod the ConfigMap's [Pod,prod,batch-*] excludes",
            &batch_id,
            &format!("x-batch-{t}"),
            "ConfigMap kyverno/kyverno",
        );
        let (_, pub_id) = ctd
            .cri_run_pod_opt(
                &cri,
                "pub",
                "kube-public",
                &uid(4),
                "nginx",
                NGINX,
                &format!("x-pub-{t}"),
                true,
            )
            .await;
        // kube-public is not excluded by this ConfigMap.
        killed(
            "the same image in kube-public",
            &pub_id,
            &format!("x-pub-{t}"),
        );

        // A static Pod (the kubelet's own manifest: CRI's sandbox says
        // config.source=file): its mirror Pod is the kubelet's request,
        // which excludeGroups system:nodes keeps from Kyverno; it runs and
        // is reported. The same Pod as the API server's (config.source=api,
        // as above) was killed.
        let (_, static_id) = ctd
            .cri_run(
                &cri,
                &CriPod {
                    container_name: "nginx",
                    image_by_id: false,
                    config_source: "file",
                    ..CriPod::new(
                        "etcd-node-a",
                        "prod",
                        &uid(5),
                        NGINX,
                        &format!("x-static-{t}"),
                    )
                },
            )
            .await;
        ran_and_alerted(
            "a static Pod (excludeGroups system:nodes)",
            &static_id,
            &format!("x-static-{t}"),
            "static Pod",
        );
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
    drop(ctd);
    drop(images);
}

/// A free local port for `--listen`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on the agent's server: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf))
}

/// Case 8, at start: enforce mode with a policy that has no rule checking
/// images (here a Kyverno policy whose only rule cannot be enforced, run
/// with --allow-partial), or with no policy in the cluster, refuses to
/// start with a clear error instead of allowing every image. No root
/// needed: the refusal comes before anything is loaded.
#[test]
fn enforce_mode_refuses_an_empty_policy() {
    let _serial = serial();
    let dir = support::host::tempdir("iw-safety-empty");
    let pol = dir.join("labels-only.yaml");
    std::fs::write(
        &pol,
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: require-labels}\nspec:\n  \
         validationFailureAction: Enforce\n  rules:\n  - name: check-team\n    match: {any: [{resources: {kinds: [Pod]}}]}\n    \
         validate:\n      message: label team required\n      pattern: {metadata: {labels: {team: \"?*\"}}}\n",
    )
    .unwrap();
    let pol_s = pol.display().to_string();
    let (st, log) = refused_agent(
        &[
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--allow-partial",
            "--fail-mode",
            "open",
            "--policy",
            &pol_s,
        ],
        &[],
    );
    assert!(
        !st.success(),
        "enforce mode started with an empty policy:\n{log}"
    );
    assert!(log.contains("refuses to start without a policy"), "{log}");
    assert!(!log.contains("agent running"), "{log}");

    // Kubernetes mode, nothing in the cluster: refused after --policy-wait.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeApi::start());
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let (st, log) = refused_agent(
        &[
            "run",
            "--mode",
            "enforce",
            "--fail-mode",
            "open",
            "--node-name",
            "node-a",
            "--policy-wait",
            "1s",
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    assert!(
        !st.success(),
        "enforce mode started with no policy in the cluster:\n{log}"
    );
    assert!(
        log.contains("refuses to start without a policy") && log.contains("the cluster"),
        "{log}"
    );
    // Audit mode may run without a policy (it stops nothing).
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let audit = AgentProcess::try_spawn(
        agent_command(
            &[
                "run",
                "--standalone",
                "--mode",
                "audit",
                "--allow-partial",
                "--fail-mode",
                "open",
                "--policy",
                &pol_s,
                "--listen",
                &listen,
            ],
            &[],
        ),
        |l| l.contains(RUNNING),
        Duration::from_secs(30),
    );
    if support::host::privileged() {
        if let Err(e) = audit {
            panic!("the audit agent exited ({:?}):\n{}", e.status, e.log);
        }
    }
    drop(audit);
    drop(api);
    let _ = std::fs::remove_dir_all(dir);
}

/// Case 8, later: the cluster's policy is deleted while an enforcing agent
/// runs. The last good policy stays in force (a docker.io container started
/// afterwards is still killed), /readyz turns not ready and
/// `imagewarden_policy_missing` is 1; when a policy is back, both recover.
#[test]
fn policies_disappearing_keep_the_last_good_set() {
    let _serial = serial();
    let test = "policies_disappearing_keep_the_last_good_set";
    if !root_or_skip(test) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("k8s.io", &images);
    let api = rt.block_on(FakeApi::start());
    api.put(Coll::ClusterPolicies, seed_policy());
    let t = ctd.token.clone();
    let dir = support::host::tempdir("iw-safety-gone");
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let endpoint = ctd.endpoint();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = start_agent(
        &[
            "run",
            "--mode",
            "enforce",
            "--fail-mode",
            "open",
            "--node-name",
            "node-a",
            "--listen",
            &listen,
            "--runtime-endpoint",
            &endpoint,
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let ready = |want: u16| {
        wait_for("/readyz", Duration::from_secs(15), || {
            http_get(port, "/readyz").filter(|(c, _)| *c == want)
        })
    };
    let gauge = |want: &str| {
        wait_for(
            "imagewarden_policy_missing",
            Duration::from_secs(15),
            || {
                let (_, body) = http_get(port, "/metrics")?;
                body.lines()
                    .any(|l| l.starts_with("imagewarden_policy_missing ") && l.ends_with(want))
                    .then_some(())
            },
        )
    };
    ready(200);
    gauge(" 0");

    api.remove(Coll::ClusterPolicies, "", "restrict-image-registries");
    agent.log_line(
        "the disappearance",
        |l| l.contains("policies disappeared"),
        Duration::from_secs(15),
    );
    let (_, body) = ready(503);
    assert!(body.contains("policy"), "{body}");
    gauge(" 1");
    rt.block_on(async {
        let cri = CriClient::connect(&endpoint).await.expect("CRI");
        let (_, id) = ctd
            .cri_run_pod_opt(
                &cri,
                "web-hub",
                "prod",
                &format!("eeeeeeee-0000-0000-0000-{t:0>12}"),
                "nginx",
                NGINX,
                &format!("g-{t}"),
                true,
            )
            .await;
        agent.finding(
            "the kill under the kept policy",
            |v| v["container_id"] == id.as_str() && v["action"] == "killed",
            Duration::from_secs(15),
        );
        assert!(
            !ctd.marker(&format!("g-{t}")).exists(),
            "an untrusted entrypoint ran once the policy was deleted"
        );
    });
    api.put(Coll::ClusterPolicies, seed_policy());
    ready(200);
    gauge(" 0");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
    drop(ctd);
    drop(images);
}

/// Creates a map of the given definition in the kernel and pins it at
/// `path` (raw bpf(2): BPF_MAP_CREATE, BPF_OBJ_PIN), as an agent of another
/// version would have left it.
fn pin_foreign_map(path: &Path, map_type: u32, key: u32, value: u32, entries: u32, flags: u32) {
    use std::os::unix::ffi::OsStrExt;
    let mut attr = [0u8; 128];
    for (i, v) in [map_type, key, value, entries, flags].iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: bpf(BPF_MAP_CREATE = 0) with a zeroed attr of the right size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: bpf(BPF_OBJ_PIN = 6); the path outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_ptr(), attr.len()) };
    assert!(
        r == 0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: our fd.
    unsafe { libc::close(fd as i32) };
}

/// Case 7: pinned maps of another definition (same key and value sizes,
/// other max entries and flags, as the no-prealloc change made them) are
/// rebuilt, not reused; another version's pin directory is removed once
/// the new programs run; the agent's own pins are reused on restart (no
/// false mismatch); `cleanup` removes everything.
#[test]
fn pinned_maps_of_another_definition_are_rebuilt() {
    let _serial = serial();
    let test = "pinned_maps_of_another_definition_are_rebuilt";
    if !support::host::privileged() {
        support::skip_or_fail(test, "needs root (eBPF, bpffs)");
        return;
    }
    use imagewarden::probes::{layout, pin_dir_under};
    let root = Path::new("/sys/fs/bpf").join(format!("iw-test-layout-{}", std::process::id()));
    /// Whatever happens, no pinned program of this test stays attached.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = imagewarden::probes::cleanup_root(&self.0, Duration::from_secs(5));
        }
    }
    let _ = imagewarden::probes::cleanup_root(&root, Duration::from_secs(1));
    let _cleanup = Cleanup(root.clone());
    let dir = pin_dir_under(&root);
    std::fs::create_dir_all(&dir).unwrap();
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // The shape VERDICTS had before it stopped being preallocated.
    pin_foreign_map(&dir.join("VERDICTS"), BPF_MAP_TYPE_HASH, 8, 4, 8, 0);
    // A previous version's directory (the first layout tag).
    let old = root.join("v1-c100-k72");
    std::fs::create_dir_all(&old).unwrap();
    pin_foreign_map(&old.join("VERDICTS"), BPF_MAP_TYPE_HASH, 8, 4, 8, 0);

    let want = layout::embedded().expect("layout").maps["VERDICTS"];
    assert_ne!(layout::MapDef::of_pin(&dir.join("VERDICTS")).unwrap(), want);
    let root_s = root.display().to_string();
    let args = [
        "run",
        "--standalone",
        "--mode",
        "audit",
        "--fail-mode",
        "closed",
        "--pin-dir",
        &root_s,
    ];
    let a = start_agent(&args, &[]);
    assert_eq!(
        layout::MapDef::of_pin(&dir.join("VERDICTS")).unwrap(),
        want,
        "the pinned VERDICTS of another definition was reused"
    );
    a.log_line(
        "the rebuild logged",
        |l| l.contains("rebuilding the pinned maps"),
        Duration::from_secs(5),
    );
    assert!(!old.exists(), "the other layout's pins must be removed");
    // SIGKILL (a crash): the next agent reuses this layout's pins as they are.
    a.kill();
    let b = start_agent(&args, &[]);
    assert!(
        !b.logged("rebuilding") && !b.logged("another definition"),
        "the agent's own pins must be reused"
    );
    b.kill();
    // Uninstall.
    let out = Command::new(env!("CARGO_BIN_EXE_imagewarden"))
        .args(["cleanup", "--pin-dir", &root_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.exists(), "cleanup must remove {}", root.display());
}

/// Runs `sh -c 'exit 5'` in a cgroup: whether the kernel denied the exec —
/// refused with EPERM (BPF LSM) or killed by SIGKILL before its first
/// instruction (signals) — rather than letting it run.
fn exec_denied_in(cg: &Path) -> bool {
    let o = exec_hook::Outcome::of(support::host::in_cgroup(cg, "/bin/sh").args(["-c", "exit 5"]));
    match o {
        exec_hook::Outcome::Killed | exec_hook::Outcome::Refused => true,
        exec_hook::Outcome::Ran(st) => {
            assert_eq!(st.code(), Some(5), "{st:?}");
            false
        }
    }
}

/// Removes a test's pin root whatever happens (no program stays attached).
struct PinRoot(std::path::PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = imagewarden::probes::cleanup_root(&self.0, Duration::from_secs(5));
    }
}

/// Case 1, the dead-man's switch: SIGKILL an enforcing, fail-closed agent.
/// Within the staleness bound (--heartbeat-timeout) a new trusted container
/// starts and runs its entrypoint (containers the kernel held just before
/// the bound stay stopped until the next agent); a cgroup denied before
/// the crash still cannot exec; the next agent takes over, reports what ran
/// unenforced (finding `ran-unenforced` naming the container, metric) and
/// judges it. Prints the measured recovery time (SIGKILL to the first
/// trusted entrypoint).
#[test]
fn dead_agent_does_not_wedge_the_node_and_denied_stays_denied() {
    let _serial = serial();
    let test = "dead_agent_does_not_wedge_the_node_and_denied_stays_denied";
    if !root_or_skip(test) {
        return;
    }
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("default", &images);
    let root = Path::new("/sys/fs/bpf").join(format!("iw-test-deadman-{}", std::process::id()));
    let _ = imagewarden::probes::cleanup_root(&root, Duration::from_secs(1));
    let pins = PinRoot(root.clone());
    let denied = support::host::TestCgroup::new("deadman-denied");
    let root_s = root.display().to_string();
    let endpoint = ctd.endpoint();
    let denied_s = denied.path.display().to_string();
    let args = [
        "run",
        "--standalone",
        "--mode",
        "enforce",
        "--fail-mode",
        "closed",
        "--pin-dir",
        &root_s,
        "--heartbeat-timeout",
        "2s",
        "--runtime-endpoint",
        &endpoint,
        "--deny-cgroup",
        &denied_s,
    ];
    let a = start_agent(&args, &[]);
    assert!(
        exec_denied_in(&denied.path),
        "the denied cgroup must be denied"
    );
    let t = ctd.token.clone();
    ctd.ctr_run(
        "default",
        &format!("alive-{t}"),
        support::containerd::ECR_NGINX,
        &[],
    );
    assert!(
        ctd.wait_marker(&format!("alive-{t}"), Duration::from_secs(15))
            .is_some(),
        "trusted container with the agent alive"
    );

    a.kill();
    let t0 = Instant::now();
    // New trusted containers, one after another, until one runs. `ctr run`
    // is not waited for: while the kernel holds a container's first exec
    // (runc's own re-exec included) it does not return. Every container
    // started so far is watched (on a slow machine, a guest kernel under
    // TCG, one takes seconds to start: the first to run may be an earlier
    // one), and a new one starts at most every second.
    let sock = endpoint.trim_start_matches("unix://").to_string();
    let marker_dir = ctd.marker("x").parent().unwrap().to_path_buf();
    let mut ctrs: Vec<Child> = Vec::new();
    let mut started: Vec<String> = Vec::new();
    let ran = 'outer: loop {
        let id = format!("after-{}-{t}", started.len());
        let child = Command::new("ctr")
            .args(["-a", &sock, "-n", "default", "run", "-d", "--mount"])
            .arg(format!(
                "type=bind,src={},dst={},options=rbind:rw",
                marker_dir.display(),
                support::containerd::MARKER_MOUNT
            ))
            .args([
                "--env",
                &format!("IW_MARKER_NAME={id}"),
                support::containerd::ECR_NGINX,
                &id,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr run");
        ctrs.push(child);
        started.push(id);
        let next = Instant::now() + Duration::from_secs(1);
        while Instant::now() < next {
            if let Some(id) = started.iter().find(|id| ctd.marker(id).exists()) {
                break 'outer id.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            for c in &mut ctrs {
                let _ = c.kill();
                let _ = c.wait();
            }
            panic!("no trusted container ran within 60 s of the agent's death (held: {started:?})");
        }
    };
    let recovered = t0.elapsed();
    eprintln!("RECOVERY after SIGKILL of the enforcing agent: first trusted entrypoint after {} ms (heartbeat timeout 2 s)", recovered.as_millis());
    assert!(
        exec_denied_in(&denied.path),
        "a cgroup denied before the crash must stay denied"
    );

    // The next agent takes over and reports what ran while nobody decided.
    let b = start_agent(&args, &[]);
    b.log_line(
        "the unenforced report",
        |l| l.contains("ran unenforced"),
        Duration::from_secs(10),
    );
    let f = b.finding(
        "the ran-unenforced finding",
        |v| {
            v["container_id"] == ran.as_str()
                && v["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("ran-unenforced"))
        },
        Duration::from_secs(10),
    );
    assert_eq!(f["type"], "container", "{f}");
    assert!(exec_denied_in(&denied.path), "denied under the new agent");
    // Those started in the window before the bound run too (released by
    // the bound or by the new agent).
    for id in started.iter().filter(|id| **id != ran) {
        assert!(
            ctd.wait_marker(id, Duration::from_secs(15)).is_some(),
            "{id}, held while no agent was alive, must run once one is back"
        );
    }
    for mut c in ctrs {
        let done = wait_for("ctr run to return", Duration::from_secs(15), || {
            c.try_wait().ok().map(|s| s.is_some()).filter(|d| *d)
        });
        assert!(done);
    }
    drop(b);
    drop(pins);
    drop(denied);
    drop(ctd);
    drop(images);
}

/// Case 2, rolling update without a gap: while untrusted (docker.io)
/// containers start in a loop, the enforcing agent gets SIGTERM and a new
/// one starts a second later (as a DaemonSet rollout does). SIGTERM hands
/// the pinned state over: none of the untrusted containers runs its
/// entrypoint (held by the kernel until the new agent kills them).
#[test]
fn rolling_replacement_lets_no_untrusted_entrypoint_run() {
    let _serial = serial();
    let test = "rolling_replacement_lets_no_untrusted_entrypoint_run";
    if !root_or_skip(test) {
        return;
    }
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("default", &images);
    let root = Path::new("/sys/fs/bpf").join(format!("iw-test-rollout-{}", std::process::id()));
    let _ = imagewarden::probes::cleanup_root(&root, Duration::from_secs(1));
    let pins = PinRoot(root.clone());
    let root_s = root.display().to_string();
    let endpoint = ctd.endpoint();
    let args = [
        "run",
        "--standalone",
        "--mode",
        "enforce",
        "--fail-mode",
        "closed",
        "--pin-dir",
        &root_s,
        "--runtime-endpoint",
        &endpoint,
        "--hold-timeout",
        "10s",
        // The handover, not the dead-man's switch, is under test: agent B
        // may take far longer than the default 5 s to attach on a slow
        // machine (21 s in the TCG guest), and a stale heartbeat would let
        // the held containers run unenforced, as designed.
        "--heartbeat-timeout",
        "120s",
    ];
    let mut a = start_agent(&args, &[]);
    let t = ctd.token.clone();
    let sock = endpoint.trim_start_matches("unix://").to_string();
    let marker_dir = ctd.marker("x").parent().unwrap().to_path_buf();
    let mut ctrs: Vec<Child> = Vec::new();
    let mut ids = Vec::new();
    let mut start_one = |i: usize, ctrs: &mut Vec<Child>| {
        let id = format!("u-{i}-{t}");
        let child = Command::new("ctr")
            .args(["-a", &sock, "-n", "default", "run", "-d", "--mount"])
            .arg(format!(
                "type=bind,src={},dst={},options=rbind:rw",
                marker_dir.display(),
                support::containerd::MARKER_MOUNT
            ))
            .args(["--env", &format!("IW_MARKER_NAME={id}"), NGINX, &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr run");
        ctrs.push(child);
        ids.push(id);
    };
    let mut i = 0;
    let mut tick = |until: Instant, ctrs: &mut Vec<Child>| {
        while Instant::now() < until {
            start_one(i, ctrs);
            i += 1;
            let next = (Instant::now() + Duration::from_millis(300)).min(until);
            wait_for("a pause between starts", Duration::from_secs(1), || {
                (Instant::now() >= next).then_some(())
            });
        }
    };
    let t0 = Instant::now();
    tick(Instant::now() + Duration::from_secs(1), &mut ctrs);
    eprintln!("{test}: {:?}: SIGTERM to agent A", t0.elapsed());
    // SIGTERM; a clean exit within 30 s is asserted.
    a.grace = Duration::from_secs(30);
    a.stop();
    eprintln!("{test}: {:?}: agent A exited", t0.elapsed());
    tick(Instant::now() + Duration::from_secs(1), &mut ctrs);
    // In the TCG guest agent B needs 25-35 s: loading its programs, then
    // a containerd whose Tasks.List times out while runc init is held.
    let b = AgentProcess::spawn(
        agent_command(&args, &[]),
        |l| l.contains(RUNNING),
        Duration::from_secs(120),
    );
    eprintln!("{test}: {:?}: agent B running", t0.elapsed());
    tick(Instant::now() + Duration::from_secs(1), &mut ctrs);
    // Every one is decided (killed) by the new agent; none ran.
    for (n, mut c) in ctrs.into_iter().enumerate() {
        wait_for(
            &format!("`ctr run` of {} to return", ids[n]),
            Duration::from_secs(60),
            || c.try_wait().ok().flatten().map(|_| ()),
        );
    }
    eprintln!("{test}: {:?}: every `ctr run` returned", t0.elapsed());
    let ran: Vec<&String> = ids.iter().filter(|id| ctd.marker(id).exists()).collect();
    assert!(ids.len() >= 6, "too few containers started: {ids:?}");
    assert!(
        ran.is_empty(),
        "untrusted entrypoints ran across the handover: {ran:?} of {}",
        ids.len()
    );
    drop(b);
    drop(pins);
    drop(ctd);
    drop(images);
}

/// Case 6 (containerd namespaces outside CRI): a container created straight
/// through containerd's API (`ctr run`) with forged labels
/// `io.cri-containerd.kind=sandbox` and `io.kubernetes.pod.namespace=kube-system`
/// buys neither the sandbox allowance nor the kube-system exclusion: it is
/// judged by the image it runs (docker.io: killed before its entrypoint).
#[test]
fn forged_labels_through_containerd_buy_nothing() {
    let _serial = serial();
    let test = "forged_labels_through_containerd_buy_nothing";
    if !root_or_skip(test) {
        return;
    }
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("default", &images);
    let endpoint = ctd.endpoint();
    let a = start_agent(
        &[
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--fail-mode",
            "open",
            "--exempt-namespace",
            "kube-system",
            "--runtime-endpoint",
            &endpoint,
        ],
        &[],
    );
    let t = ctd.token.clone();
    let id = format!("forged-{t}");
    let sock = endpoint.trim_start_matches("unix://").to_string();
    let marker_dir = ctd.marker("x").parent().unwrap().to_path_buf();
    let mut ctr = Command::new("ctr")
        .env("CONTAINERD_SNAPSHOTTER", "native")
        .args([
            "-a",
            &sock,
            "-n",
            "default",
            "run",
            "-d",
            "--label",
            "io.cri-containerd.kind=sandbox",
        ])
        .args([
            "--label",
            "io.kubernetes.pod.namespace=kube-system",
            "--label",
            "io.kubernetes.pod.name=kube-proxy-x",
        ])
        .args(["--mount"])
        .arg(format!(
            "type=bind,src={},dst={},options=rbind:rw",
            marker_dir.display(),
            support::containerd::MARKER_MOUNT
        ))
        .args(["--env", &format!("IW_MARKER_NAME={id}"), NGINX, &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr run");
    let f = a.finding(
        "the kill of the forged container",
        |v| v["container_id"] == id.as_str() && v["action"] == "killed",
        Duration::from_secs(20),
    );
    assert_eq!(f["verdict"], "deny", "{f}");
    wait_for("ctr run to return", Duration::from_secs(20), || {
        ctr.try_wait().ok().flatten().map(|_| ())
    });
    assert!(
        !ctd.marker(&id).exists(),
        "a container with forged sandbox labels ran its entrypoint"
    );
    drop(a);
    drop(ctd);
    drop(images);
}

/// Case 4: holds are kept in a kernel map, not only learned from events.
/// Agent A holds the first exec of an unknown container-like cgroup (its
/// event reaches A alone) and is SIGKILLed before it decides. Agent B takes
/// the pinned state over: it never saw that event, yet it must find the
/// stopped process in the kernel's HELD map and decide it — here, as
/// nobody can say what the cgroup is, kill it after B's `--hold-timeout`
/// (fail closed). Before the kernel map, the process stayed stopped for
/// good: a wedged container.
#[test]
fn a_hold_whose_event_died_with_the_agent_is_decided_by_the_next() {
    use std::os::unix::process::ExitStatusExt;
    let _serial = serial();
    let test = "a_hold_whose_event_died_with_the_agent_is_decided_by_the_next";
    if !support::host::privileged() {
        support::skip_or_fail(test, "needs root (eBPF, cgroups)");
        return;
    }
    let root = Path::new("/sys/fs/bpf").join(format!("iw-test-heldmap-{}", std::process::id()));
    let _ = imagewarden::probes::cleanup_root(&root, Duration::from_secs(1));
    let _pins = PinRoot(root.clone());
    let parent = support::host::TestCgroup::new("heldmap");
    // A leaf named like a container id: the kernel holds its first exec
    // while no runtime has described it.
    let leaf = parent.child(&format!(
        "{:064x}",
        0x1f2e3d4c5b6a_u64 ^ std::process::id() as u64
    ));
    let root_s = root.display().to_string();
    let common = [
        "run",
        "--standalone",
        "--mode",
        "enforce",
        "--fail-mode",
        "closed",
        "--pin-dir",
        &root_s,
        "--runtime-endpoint",
        "unix:///nonexistent.sock",
        "--heartbeat-timeout",
        "120s",
    ];
    let mut a_args = common.to_vec();
    a_args.extend(["--hold-timeout", "120s"]);
    let a = start_agent(&a_args, &[]);
    let mut held = support::host::in_cgroup(&leaf.path, "/bin/sh")
        .arg("-c")
        .arg("exit 7")
        .spawn()
        .expect("spawn");
    let pid = held.id();
    wait_for(
        "the kernel to hold the exec (SIGSTOP)",
        Duration::from_secs(10),
        || stopped(pid).then_some(()),
    );
    a.kill();
    assert!(
        stopped(pid),
        "still held after agent A died (the heartbeat bound is 120 s)"
    );

    let mut b_args = common.to_vec();
    b_args.extend(["--hold-timeout", "1s"]);
    let b = start_agent(&b_args, &[]);
    // The positive signal: the held process dies by SIGKILL (fail closed),
    // decided by an agent that never received its event.
    let st = wait_for(
        "agent B to decide the hold it never heard of",
        Duration::from_secs(30),
        || held.try_wait().ok().flatten(),
    );
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the unresolvable held process must be killed: {st:?}"
    );
    b.log_line(
        "agent B's adoption log",
        |l| l.contains("adopted a hold the kernel kept"),
        Duration::from_secs(5),
    );
    drop(b);
}

/// Case 9, end to end on the host's cgroup2: an enforcing agent
/// (`--hold-timeout 1s`, fail closed) with a real containerd.
/// - A process in `/<x>/default/foo`, a cgroup merely *named* like the
///   containerd namespace `default`, runs (before: held by name, then
///   killed at the hold timeout as "not known to any runtime").
/// - A nested runtime inside an allowed `ctr run` container (its cgroup
///   `/default/<id>`): processes in `/default/<id>/default/inner`
///   (`/<ns>/<id>/<ns2>/<id2>`) and in a kind node's
///   `/default/<id>/kubelet.slice/.../cri-containerd-<hex>.scope` run to
///   completion, judged as that container (before: held and killed).
/// - The namespace's own cgroup still holds by id: an unclassified child
///   of `/default` that no runtime knows is held, then killed.
#[test]
fn nested_runtimes_are_judged_as_their_container_and_names_alone_hold_nothing() {
    let _serial = serial();
    let test = "nested_runtimes_are_judged_as_their_container_and_names_alone_hold_nothing";
    if !root_or_skip(test) {
        return;
    }
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("default", &images);
    let endpoint = ctd.endpoint();
    let root = Path::new("/sys/fs/bpf").join(format!("iw-test-nested-{}", std::process::id()));
    let _ = imagewarden::probes::cleanup_root(&root, Duration::from_secs(1));
    let pins = PinRoot(root.clone());
    let root_s = root.display().to_string();
    let a = start_agent(
        &[
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--fail-mode",
            "closed",
            "--pin-dir",
            &root_s,
            "--hold-timeout",
            "1s",
            "--runtime-endpoint",
            &endpoint,
        ],
        &[],
    );
    let cg2 = support::host::cgroup2_root();
    let t = ctd.token.clone();
    let mkdir = |p: &Path| -> support::host::TestCgroup {
        std::fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        support::host::TestCgroup {
            path: p.to_path_buf(),
            id: imagewarden::probes::cgroup_id_of(p).expect("cgroup id"),
        }
    };
    let marker_dir = support::host::tempdir("nested-e2e");
    // Runs `sh -c 'echo ran > marker'` in `cg`; its exit status, bounded:
    // a held process is killed by the agent at the hold timeout.
    let run_in = |cg: &Path, tag: &str| -> (Option<i32>, Option<i32>, bool) {
        use std::os::unix::process::ExitStatusExt;
        let marker = marker_dir.join(tag);
        let mut child = support::host::in_cgroup(cg, "/bin/sh")
            .arg("-c")
            .arg(format!("echo ran > {}", marker.display()))
            .spawn()
            .expect("spawn in cgroup");
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{tag}: neither ran nor was killed within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (st.code(), st.signal(), marker.exists())
    };

    // 1. A cgroup named like a containerd namespace, elsewhere.
    let decoy_root = support::host::TestCgroup::new("decoy-ns");
    let decoy_ns = mkdir(&decoy_root.path.join("default"));
    let decoy = mkdir(&decoy_ns.path.join("foo"));
    let (code, sig, ran) = run_in(&decoy.path, "decoy");
    assert!(
        code == Some(0) && ran,
        "a process in {} (named like a namespace only) did not run: exit {code:?} signal {sig:?}",
        decoy.path.display()
    );

    // 2. A nested runtime inside an allowed container.
    let id = format!("nest-{t}");
    ctd.ctr_run("default", &id, support::containerd::ECR_NGINX, &[]);
    assert!(
        ctd.wait_marker(&id, Duration::from_secs(20)).is_some(),
        "the allowed outer container did not run"
    );
    let outer = cg2.join("default").join(&id);
    wait_for(
        "the outer container's cgroup",
        Duration::from_secs(10),
        || outer.is_dir().then_some(()),
    );
    let inner_ns = mkdir(&outer.join("default"));
    let inner = mkdir(&inner_ns.path.join("inner"));
    let kubelet = mkdir(&outer.join("kubelet.slice"));
    let kind_pod = mkdir(&kubelet.path.join("kubelet-kubepods-besteffort-pod1.slice"));
    let kind_ctr = mkdir(
        &kind_pod
            .path
            .join(format!("cri-containerd-{}.scope", "c".repeat(64))),
    );
    for (cg, tag) in [(&inner, "nested-ctr"), (&kind_ctr, "nested-kind")] {
        let (code, sig, ran) = run_in(&cg.path, tag);
        assert!(
            code == Some(0) && ran,
            "{tag}: nested in an allowed container, it must run: exit {code:?} signal {sig:?}"
        );
    }

    // 3. The namespace's own cgroup still holds, by id: an unclassified
    // child no runtime knows is held, then killed (fail closed).
    let lone = mkdir(&cg2.join("default").join(format!("lone-{t}")));
    let (code, sig, ran) = run_in(&lone.path, "lone");
    assert!(
        sig == Some(libc::SIGKILL) && !ran,
        "an unknown child of the namespace cgroup must be held and killed: exit {code:?} signal {sig:?}"
    );
    let f = a.finding(
        "the kill of the unknown child of the namespace cgroup",
        |v| v["action"] == "killed" && v["cgroup_id"] == lone.id,
        Duration::from_secs(10),
    );
    assert_eq!(f["verdict"], "deny", "{f}");

    drop((lone, kind_ctr, kind_pod, kubelet, inner, inner_ns));
    drop((decoy, decoy_ns, decoy_root));
    drop(a);
    drop(pins);
    drop(ctd);
    drop(images);
    let _ = std::fs::remove_dir_all(marker_dir);
}

/// Case 6, the other side: a pod sandbox's pause process runs before CRI
/// lists the sandbox (containerd's CRI plugin adds it to its store only
/// after the task started; runc may even exec in the new cgroup while the
/// task is being created). A `k8s.io` container CRI does not list, running
/// the node's sandbox image (CRI's `sandbox_image`, here
/// `registry.k8s.io/pause`, which the seed policy does not trust), is
/// allowed by that image — no label involved — and is not held until the
/// hold timeout kills it: execs in it succeed.
#[test]
fn k8s_io_container_of_the_node_sandbox_image_runs_before_cri_lists_it() {
    let _serial = serial();
    let test = "k8s_io_container_of_the_node_sandbox_image_runs_before_cri_lists_it";
    if !root_or_skip(test) {
        return;
    }
    let images = TestImages::build();
    let ctd = start_containerd();
    ctd.import("k8s.io", &images);
    let endpoint = ctd.endpoint();
    let a = start_agent(
        &[
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--fail-mode",
            "open",
            "--hold-timeout",
            "1s",
            "--all-execs",
            "--runtime-endpoint",
            &endpoint,
        ],
        &[],
    );
    let id = format!("not-yet-a-sandbox-{}", ctd.token);
    let sock = endpoint.trim_start_matches("unix://").to_string();
    let st = Command::new("ctr")
        .env("CONTAINERD_SNAPSHOTTER", "native")
        .args(["-a", &sock, "-n", "k8s.io", "run", "-d"])
        .args([support::containerd::PAUSE, &id, "sleep", "600"])
        .stdout(Stdio::null())
        .status()
        .expect("ctr run");
    assert!(st.success(), "ctr run {id}: {st:?}");
    let f = a.finding(
        "the verdict of the pause-image container",
        |v| v["type"] == "container" && v["container_id"] == id.as_str(),
        Duration::from_secs(20),
    );
    assert_eq!(f["verdict"], "allow", "{f}");
    assert!(
        f["reason"].as_str().unwrap_or("").contains("sandbox image"),
        "{f}"
    );
    // Positive signal that it is neither held nor killed: an exec in it
    // runs to completion (a held one would stop, a killed one fail).
    let out = ctd.ctr_raw(
        "k8s.io",
        &["tasks", "exec", "--exec-id", "probe", &id, "sleep", "0"],
    );
    assert!(
        out.status.success(),
        "exec in the pause-image container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !a.findings()
            .iter()
            .any(|v| v["container_id"] == id.as_str() && v["action"] == "killed"),
        "the pause-image container was killed"
    );
    drop(a);
    drop(ctd);
    drop(images);
}
