//! The agent as production runs it: in a private cgroup namespace, and in
//! the container `deploy/daemonset.yaml` describes, started through CRI the
//! way the kubelet starts it (see `support/daemonset.rs`), against a real
//! containerd and runc with kubelet-style cgroup parents, enforcing the seed
//! policy (only `public.ecr.aws/*`).
//!
//! 1. `private_cgroup_namespace_agent_...`: the agent binary on the host,
//!    under `unshare --cgroup` from a pod-like cgroup
//!    (`/kubepods/burstable/pod<uid>/<id>`), so that other pods' cgroups
//!    read `/../../../besteffort/...` to it, as in a DaemonSet pod on
//!    cgroup v2. A docker.io container running before the agent is killed
//!    at start, and the per-cgroup-id verdicts are written (read back from
//!    the pinned map).
//! 2. `daemonset_container_...`: the agent's image built from the agent
//!    binary (`IW_AGENT_BINARY`, e.g. `target/release/imagewarden`; by
//!    default this test build's binary), run with the manifest's security
//!    context, capabilities, hostPID, mounts, read-only root, env and args.
//!    A running docker.io container is killed at agent start, a new one
//!    never runs its entrypoint, the public.ecr.aws one runs and accepts an
//!    exec, findings (from the CRI log) name container, image and pod. It
//!    asserts which cgroup namespace the agent got: private where containerd
//!    gives one (unified hierarchy at /sys/fs/cgroup), the host's on hybrid
//!    hosts such as this project's development machine.
//!
//! Nothing host-specific is hard-coded: the cgroup2 mount is discovered,
//! so the same binary runs in a pure cgroup v2 guest.
//!
//! Needs root and `containerd runc umoci busybox-static`; prints SKIP
//! without them, fails under `CI=true`.

#[path = "support/exec_hook.rs"]
mod exec_hook;
mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agent_common::verdict;
use exec_hook::Outcome;
use imagewarden::probes::Enforcement;
use imagewarden::sources::{cgroup, cri::CriClient, ContainerState};
use serde_json::Value;
use support::agent::{AgentProcess, RUNNING};
use support::containerd::{Containerd, Runtime, TestImages, ECR_NGINX, NGINX};
use support::daemonset::{self as ds, AgentLog, AgentSpec, Overrides};

/// The agent binary the tests run: `$IW_AGENT_BINARY` (the release build,
/// as the image ships it), else this test build's.
fn agent_binary() -> PathBuf {
    std::env::var_os("IW_AGENT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imagewarden")))
}

/// A runc wrapper that gives the agent's container a private cgroup
/// namespace, as containerd does on a unified (pure v2) host: it adds
/// `{"type":"cgroup"}` to `linux.namespaces` of a bundle under the prefix
/// written to `<dir>/prefix` whose process is `/usr/bin/imagewarden`, then
/// runs the real runc. Lets a hybrid host (this project's machines) run the
/// agent's container the way a cgroup v2 node does.
struct CgroupnsRunc {
    dir: PathBuf,
    wrapper: PathBuf,
}

impl CgroupnsRunc {
    fn new() -> CgroupnsRunc {
        let real = support::containerd::which("runc").expect("runc");
        let dir = std::env::temp_dir().join(format!(
            "iw-runc-cgns-{}-{:x}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = dir.join("runc");
        let script = format!(
            r#"#!/bin/sh
# imagewarden test: private cgroup namespace for the agent's container.
prefix=$(cat "{dir}/prefix" 2>/dev/null)
prev=
bundle=
for a in "$@"; do
  if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then bundle=$a; fi
  prev=$a
done
if [ -n "$prefix" ] && [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  case "$bundle" in
    "$prefix"*)
      if grep -q '"/usr/bin/imagewarden"' "$bundle/config.json" && ! grep -q '"type":"cgroup"' "$bundle/config.json"; then
        sed -i 's/"namespaces":\[/"namespaces":[{{"type":"cgroup"}},/' "$bundle/config.json"
        echo "$bundle" >> "{dir}/applied"
      fi;;
  esac
fi
exec {real} "$@"
"#,
            dir = dir.display(),
            real = real.display()
        );
        std::fs::write(&wrapper, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        CgroupnsRunc { dir, wrapper }
    }

    fn enable_for(&self, prefix: &Path) {
        std::fs::write(self.dir.join("prefix"), prefix.display().to_string()).unwrap();
    }

    fn applied(&self) -> String {
        std::fs::read_to_string(self.dir.join("applied")).unwrap_or_default()
    }
}

impl Drop for CgroupnsRunc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One enforcing agent at a time: an agent judges every exec on the host, and
/// the two DaemonSet tests share the manifest's pin directory.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup(test: &str) -> Option<(Containerd, TestImages, PathBuf)> {
    setup_with(test, None)
}

fn setup_with(
    test: &str,
    runc: Option<&CgroupnsRunc>,
) -> Option<(Containerd, TestImages, PathBuf)> {
    if let Err(why) = support::containerd::preflight() {
        support::skip_or_fail(test, &why);
        return None;
    }
    for b in ["unshare", "nsenter", "ldd"] {
        if support::containerd::which(b).is_none() {
            support::skip_or_fail(test, &format!("`{b}` not found (util-linux, libc-bin)"));
            return None;
        }
    }
    let rt = daemonset_runtime();
    if let Err(why) = rt.preflight() {
        support::skip_or_fail(test, &why);
        return None;
    }
    eprintln!("[runtime] {test}: {}", rt.name());
    let mount = cgroup::find_cgroup2_mount().expect("preflight checked cgroup2");
    let images = TestImages::build();
    let ctd = match runc {
        Some(w) => {
            // Read by Containerd::start; the wrapper acts only under this
            // instance's directory (enable_for), so a concurrent test that
            // picks the variable up is not affected.
            std::env::set_var("IW_TEST_RUNC", &w.wrapper);
            let ctd = Containerd::start_version(rt);
            std::env::remove_var("IW_TEST_RUNC");
            w.enable_for(&ctd.dir);
            ctd
        }
        None => Containerd::start_version(rt),
    };
    ctd.import("k8s.io", &images);
    Some((ctd, images, mount))
}

/// The containerd these tests run: the host's 1.6, or containerd 2 when
/// `IW_TEST_CONTAINERD=2` selects only it (`cargo xtask vmtest --ci` does:
/// AL2023's EKS nodes run containerd 2).
fn daemonset_runtime() -> Runtime {
    if Runtime::V1_6.selected() {
        Runtime::V1_6
    } else {
        Runtime::V2
    }
}

/// The verdicts the agent pinned by cgroup id (fail-closed pin directory).
fn pinned_verdicts(pin_root: &Path) -> std::collections::HashMap<u64, u32> {
    let path = imagewarden::probes::pin_dir_under(pin_root).join("VERDICTS");
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map: aya::maps::HashMap<_, u64, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
            .expect("VERDICTS is a hash map");
    map.iter().filter_map(Result::ok).collect()
}

/// A cgroup directory's id.
fn cgroup_id(dir: &Path) -> u64 {
    cgroup::cgroup_id_of_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The cgroup directory of a CRI pod's container (cgroupfs driver).
fn pod_container_dir(mount: &Path, pod_uid: &str, id: &str) -> PathBuf {
    mount.join(format!("kubepods/besteffort/pod{pod_uid}/{id}"))
}

fn uid(prefix: &str, token: &str) -> String {
    let t: String = token.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    format!(
        "{prefix}-2222-4333-8444-{:0>12}",
        &t[t.len().saturating_sub(12)..]
    )
}

/// A denied container: exited by SIGKILL, never having run its entrypoint;
/// returns CreateContainer -> death by containerd's clock.
async fn assert_killed_by_sigkill(cri: &CriClient, id: &str) -> Duration {
    let st = support::cri_status(cri, id).await;
    assert_eq!(
        st.exit_code,
        128 + libc::SIGKILL,
        "{id} did not die by SIGKILL: {st:?}"
    );
    assert!(
        st.finished_at >= st.created_at && st.created_at > 0,
        "{st:?}"
    );
    Duration::from_nanos((st.finished_at - st.created_at) as u64)
}

/// What became of a new container whose first exec was denied, from CRI's
/// record: killed by SIGKILL after it started (exit 137: the signal path),
/// or never started (`Refused` here: containerd records a `StartError` with
/// no start time because `runc init` failed — its `execve` refused with
/// EPERM by BPF LSM, or, where its first exec came before the agent knew
/// the cgroup, held by the kernel and then killed by the agent).
fn container_outcome(st: &k8s_cri::v1::ContainerStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    if st.exit_code == 128 + libc::SIGKILL {
        Outcome::Killed
    } else if st.started_at == 0 && st.reason == "StartError" {
        Outcome::Refused
    } else {
        Outcome::Ran(std::process::ExitStatus::from_raw(
            (st.exit_code & 0xff) << 8,
        ))
    }
}

/// A new denied container: never started under LSM; killed, or never
/// started (a held `runc init` killed), under signals. Returns
/// CreateContainer -> denial by containerd's clock.
async fn assert_new_container_denied(
    cri: &CriClient,
    id: &str,
    enforcement: Enforcement,
) -> Duration {
    let st = support::cri_status(cri, id).await;
    let outcome = container_outcome(&st);
    eprintln!(
        "[outcome] new untrusted container {id}: {outcome:?} ({}: {})",
        st.reason, st.message
    );
    if !matches!(
        (enforcement, &outcome),
        (Enforcement::Lsm, Outcome::Refused)
            | (Enforcement::Signal, Outcome::Killed | Outcome::Refused)
    ) {
        panic!(
            "{id}: under {} enforcement, got {outcome:?}: {st:?}",
            enforcement.as_str()
        );
    }
    assert!(
        st.finished_at >= st.created_at && st.created_at > 0,
        "{st:?}"
    );
    Duration::from_nanos((st.finished_at - st.created_at) as u64)
}

/// The enforcement the agent reports on its `agent running` line (the
/// JSON log's `fields.enforcement`, or the text log's `enforcement="lsm"`),
/// checked against what this kernel calls for where that is known.
fn picked_enforcement(running_line: &str) -> Enforcement {
    let v: Value = serde_json::from_str(running_line).unwrap_or_default();
    let text: String = match v["fields"]["enforcement"].as_str() {
        Some(e) => e.to_string(),
        None => strip_ansi(running_line),
    };
    let got = if text == "lsm" || text.contains("enforcement=\"lsm\"") {
        Enforcement::Lsm
    } else if text == "signal" || text.contains("enforcement=\"signal\"") {
        Enforcement::Signal
    } else {
        panic!("no enforcement on the agent's running line: {running_line}")
    };
    eprintln!(
        "agent picked enforcement {} (active LSMs {:?})",
        got.as_str(),
        exec_hook::active_lsms()
    );
    if let Some(want) = exec_hook::expected_enforcement() {
        assert_eq!(
            got, want,
            "the agent picked the wrong enforcement: {running_line}"
        );
    }
    got
}

/// Text without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn state_of(cri: &CriClient, id: &str) -> ContainerState {
    cri.container_status(id)
        .await
        .map(|i| i.state)
        .unwrap_or(ContainerState::Exited)
}

async fn wait_state(cri: &CriClient, id: &str, want: ContainerState, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if state_of(cri, id).await == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Removes a cgroup directory chain (innermost first) when empty.
struct CgroupChain(Vec<PathBuf>);

impl Drop for CgroupChain {
    fn drop(&mut self) {
        // Only the innermost (the agent's own) is killed and waited for; its
        // parents are shared with the test pods and go when empty.
        if let Some(d) = self.0.last() {
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for d in self.0.iter().rev().skip(1) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn private_cgroup_namespace_agent_kills_running_untrusted_container_and_writes_per_id_verdicts() {
    let test = "private_cgroup_namespace_agent_kills_running_untrusted_container_and_writes_per_id_verdicts";
    let _serial = serial();
    let Some((ctd, images, mount)) = setup(test) else {
        return;
    };
    let t = ctd.token.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cri = rt
        .block_on(CriClient::connect(&ctd.endpoint()))
        .expect("CRI");

    // Running before the agent: an untrusted and a trusted pod.
    let (bad_uid, good_uid) = (uid("b0000001", &t), uid("a0000001", &t));
    let (_, pre_bad) = rt.block_on(ctd.cri_run_pod(
        &cri,
        "pre-hub",
        "prod",
        &bad_uid,
        "nginx",
        NGINX,
        &format!("ns-pre-bad-{t}"),
    ));
    let (_, pre_good) = rt.block_on(ctd.cri_run_pod(
        &cri,
        "pre-ecr",
        "prod",
        &good_uid,
        "nginx",
        ECR_NGINX,
        &format!("ns-pre-good-{t}"),
    ));
    assert!(
        ctd.wait_marker(&format!("ns-pre-bad-{t}"), Duration::from_secs(10))
            .is_some(),
        "untrusted pod did not start"
    );
    assert!(
        ctd.wait_marker(&format!("ns-pre-good-{t}"), Duration::from_secs(10))
            .is_some(),
        "trusted pod did not start"
    );
    let bad_dir = pod_container_dir(&mount, &bad_uid, &pre_bad);
    let good_dir = pod_container_dir(&mount, &good_uid, &pre_good);
    let (bad_id, good_id) = (cgroup_id(&bad_dir), cgroup_id(&good_dir));

    // The agent's own cgroup, where a kubelet would put a DaemonSet pod.
    let agent_uid = uid("c0000001", &t);
    let rels = [
        "kubepods",
        "kubepods/burstable",
        &format!("kubepods/burstable/pod{agent_uid}"),
        &format!("kubepods/burstable/pod{agent_uid}/iw-agent-{t}"),
    ];
    let chain = CgroupChain(rels.iter().map(|r| ds::ensure_cgroup(&mount, r)).collect());
    let agent_cg = chain.0.last().unwrap().clone();
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/imagewarden-test-ns-{t}"));
    let started = Instant::now();
    let _unpin = PinCleanup(pin_root.clone());
    let mut cmd = support::host::in_cgroup(&agent_cg, "unshare");
    cmd.arg("--cgroup")
        .arg(agent_binary())
        .args([
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--fail-mode",
            "closed",
            "--pin-dir",
        ])
        .arg(&pin_root)
        .arg("--runtime-endpoint")
        .arg(ctd.endpoint())
        .env(
            "IMAGEWARDEN_LOG",
            std::env::var("IMAGEWARDEN_LOG").unwrap_or_else(|_| "info".into()),
        );
    // `unshare` execs the agent: the child's pid is the agent's.
    let agent = AgentProcess::spawn(cmd, |l| l.contains(RUNNING), Duration::from_secs(60));
    let agent_pid = agent.pid();
    let running = agent
        .wait_for_log(|l| l.contains(RUNNING), Duration::from_secs(1))
        .expect("the agent's running line");
    let enforcement = picked_enforcement(&running);
    eprintln!(
        "[timing] agent (private cgroupns) start -> running: {}",
        ds::ms(started.elapsed())
    );

    // The scenario is the real one: the agent's cgroup namespace is its own,
    // rooted at its cgroup, and another pod's cgroup reads `/../..` to it.
    let own_ns = ds::cgroupns_of(std::process::id()).unwrap();
    assert_ne!(
        ds::cgroupns_of(agent_pid).as_deref(),
        Some(own_ns.as_str()),
        "unshare --cgroup gave no new namespace"
    );
    let seen = Command::new("nsenter")
        .arg(format!("--cgroup=/proc/{agent_pid}/ns/cgroup"))
        .args([
            "cat",
            &format!(
                "/proc/{}/cgroup",
                rt.block_on(cri.container_status(&pre_good))
                    .unwrap()
                    .pid
                    .unwrap()
            ),
        ])
        .output()
        .expect("nsenter");
    let seen = String::from_utf8_lossy(&seen.stdout);
    let line = cgroup::unified_path(&seen).unwrap_or_else(|| panic!("no cgroup2 line in {seen:?}"));
    assert!(
        line.starts_with("/../../../besteffort/"),
        "another pod's cgroup as the agent reads it: {line}"
    );
    eprintln!("[ns] the agent reads the trusted pod's cgroup as {line}");

    // Killed at start, with its cgroup id: its cgroup was found.
    let f = agent
        .wait_for_finding(
            |v| v["container_id"] == pre_bad.as_str() && v["action"] == "killed",
            Duration::from_secs(15),
        )
        .expect("the running untrusted container was not killed at agent start (private cgroup namespace)");
    assert_eq!(f["verdict"], "deny", "{f}");
    assert_eq!(f["image"], NGINX, "{f}");
    assert_eq!(f["pod"], "pre-hub", "{f}");
    assert_eq!(f["cgroup_id"], bad_id, "{f}");
    eprintln!(
        "[timing] agent start -> running untrusted container killed: {}",
        ds::ms(started.elapsed())
    );
    rt.block_on(async {
        assert!(
            wait_state(
                &cri,
                &pre_bad,
                ContainerState::Exited,
                Duration::from_secs(10)
            )
            .await,
            "untrusted container still running"
        );
        assert_killed_by_sigkill(&cri, &pre_bad).await;
        assert_eq!(
            state_of(&cri, &pre_good).await,
            ContainerState::Running,
            "trusted container disturbed"
        );
    });

    // Per-id verdicts, written for both running containers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut v = pinned_verdicts(&pin_root);
    while (v.get(&good_id) != Some(&verdict::ALLOW) || v.get(&bad_id) != Some(&verdict::DENY))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        v = pinned_verdicts(&pin_root);
    }
    assert_eq!(
        v.get(&good_id),
        Some(&verdict::ALLOW),
        "trusted container's cgroup {good_id} has no per-id verdict: {v:?}"
    );
    assert_eq!(
        v.get(&bad_id),
        Some(&verdict::DENY),
        "untrusted container's cgroup {bad_id} has no per-id verdict: {v:?}"
    );

    // A new untrusted pod never runs its entrypoint; a trusted one does.
    let new_bad_uid = uid("b0000002", &t);
    let (_, new_bad) = rt.block_on(ctd.cri_run_pod_opt(
        &cri,
        "new-hub",
        "prod",
        &new_bad_uid,
        "nginx",
        NGINX,
        &format!("ns-new-bad-{t}"),
        true,
    ));
    let f = agent
        .wait_for_finding(
            |v| v["container_id"] == new_bad.as_str() && v["action"] == "killed",
            Duration::from_secs(15),
        )
        .expect("no kill of the new untrusted container");
    assert_eq!(f["image"], NGINX, "{f}");
    rt.block_on(async {
        assert!(
            wait_state(&cri, &new_bad, ContainerState::Exited, Duration::from_secs(10)).await,
            "new untrusted container running"
        );
        let d = assert_new_container_denied(&cri, &new_bad, enforcement).await;
        eprintln!(
            "[timing] private cgroupns agent: CreateContainer -> untrusted container denied ({}, {}): {}",
            f["type"],
            enforcement.as_str(),
            ds::ms(d)
        );
    });
    assert!(
        !ctd.marker(&format!("ns-new-bad-{t}")).exists(),
        "the untrusted entrypoint ran"
    );
    let out = rt
        .block_on(cri.exec_sync(
            &pre_good,
            &["/bin/sh", "-c", "echo ns-exec-ok"],
            Duration::from_secs(10),
        ))
        .expect("ExecSync into the trusted container");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ns-exec-ok"),
        "{out:?}"
    );
    drop(agent);
    drop(chain);
    drop(images);
}

/// Removes a test pin directory (the agent unpins on SIGTERM; this covers a
/// test that failed before).
struct PinCleanup(PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let dir = imagewarden::probes::pin_dir_under(&self.0);
        imagewarden::probes::remove_pins(&dir);
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn daemonset_container_enforces_the_seed_policy_from_the_manifest() {
    daemonset_case(
        "daemonset_container_enforces_the_seed_policy_from_the_manifest",
        false,
    );
}

/// The same, with the private cgroup namespace a cgroup v2 node gives the
/// container (on a pure v2 host the first test already has it; here the
/// runc wrapper adds it on hybrid hosts too).
#[test]
fn daemonset_container_in_a_private_cgroup_namespace_enforces_the_seed_policy() {
    daemonset_case(
        "daemonset_container_in_a_private_cgroup_namespace_enforces_the_seed_policy",
        true,
    );
}

fn daemonset_case(test: &str, force_private_cgroupns: bool) {
    let _serial = serial();
    let mut spec = match AgentSpec::load() {
        Ok(s) => s,
        Err(e) => panic!("deploy/daemonset.yaml: {e}"),
    };
    let wrapper = force_private_cgroupns.then(CgroupnsRunc::new);
    let Some((ctd, images, mount)) = setup_with(test, wrapper.as_ref()) else {
        return;
    };
    let t = ctd.token.clone();
    let binary = agent_binary();
    let t_img = Instant::now();
    let image = ds::build_agent_image(&binary, &spec.image);
    ctd.ctr(
        "k8s.io",
        &["images", "import", image.archive.to_str().unwrap()],
    );
    eprintln!(
        "[image] {} from {} built and imported in {}",
        spec.image,
        binary.display(),
        ds::ms(t_img.elapsed())
    );

    // What the test changes from the manifest, and why:
    // - the mode: the manifest ships `audit`; this test is about `enforce`.
    ds_override(&mut spec, "--mode", "enforce");
    // - no API server here: the runtime and the kernel are the sources.
    spec.args.push("--standalone".into());
    // - the metrics listener: the pod shares the node's network here (no
    //   CNI in the test's containerd), so a free loopback port, not :9090.
    let port = ds::free_port();
    let listen = format!("127.0.0.1:{port}");
    ds_override(&mut spec, "--listen", &listen);
    // The policy stays the manifest's (`--policy /etc/imagewarden/policy.yaml`
    // from the ConfigMap in deploy/configmap-policy.yaml: the seed policy),
    // the runtime endpoint stays `unix:///run/containerd/containerd.sock`:
    // the `/run/containerd` hostPath is this test's containerd directory.
    let mut ov = Overrides {
        node_network: true,
        drop_unavailable_caps: true,
        ..Default::default()
    };
    ov.host_paths
        .insert("/run/containerd".into(), ctd.dir.clone());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cri = rt
        .block_on(CriClient::connect(&ctd.endpoint()))
        .expect("CRI");

    // Running before the agent.
    let (bad_uid, good_uid) = (uid("d0000001", &t), uid("e0000001", &t));
    let (_, pre_bad) = rt.block_on(ctd.cri_run_pod(
        &cri,
        "pre-hub",
        "prod",
        &bad_uid,
        "nginx",
        NGINX,
        &format!("ds-pre-bad-{t}"),
    ));
    let (_, pre_good) = rt.block_on(ctd.cri_run_pod(
        &cri,
        "pre-ecr",
        "prod",
        &good_uid,
        "nginx",
        ECR_NGINX,
        &format!("ds-pre-good-{t}"),
    ));
    assert!(
        ctd.wait_marker(&format!("ds-pre-bad-{t}"), Duration::from_secs(10))
            .is_some(),
        "untrusted pod did not start"
    );
    assert!(
        ctd.wait_marker(&format!("ds-pre-good-{t}"), Duration::from_secs(10))
            .is_some(),
        "trusted pod did not start"
    );
    let bad_id = cgroup_id(&pod_container_dir(&mount, &bad_uid, &pre_bad));

    let t_create = Instant::now();
    let pod = rt.block_on(ds::start_agent_pod(&ctd, &cri, &spec, &ov));
    let _stop = AgentPodStop {
        ctd: &ctd,
        container_id: pod.container_id.clone(),
        sandbox_id: pod.sandbox_id.clone(),
        cgroup_parent: pod.cgroup_parent.clone(),
    };
    if !pod.caps_left_out.is_empty() {
        eprintln!(
            "[caps] NOTE: this host's capability bounding set lacks {:?}: left out of the agent's add list \
             (a kubelet here could not grant them either)",
            pod.caps_left_out
        );
    }
    let log = AgentLog {
        path: pod.log_path.clone(),
    };
    // Ready as the kubelet's readinessProbe sees it.
    let ready_path = spec
        .readiness_path
        .clone()
        .unwrap_or_else(|| "/readyz".into());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ds::http_status(&listen, &ready_path) != Some(200) {
        if Instant::now() > deadline
            || rt.block_on(state_of(&cri, &pod.container_id)) == ContainerState::Exited
        {
            panic!(
                "the agent's container did not become ready:\n{}\n--- containerd ---\n{}",
                log.dump(),
                support::containerd::tail(&ctd.log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "[timing] agent container: CreateContainer -> ready {} (StartContainer returned -> ready {})",
        ds::ms(t_create.elapsed()),
        ds::ms(pod.started.elapsed())
    );

    let running_line = || {
        log.lines()
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| m.contains("agent running"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_line().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = running_line()
        .unwrap_or_else(|| panic!("the agent never said it is running:\n{}", log.dump()));
    let v: Value = serde_json::from_str(&running).unwrap_or_default();
    eprintln!(
        "[timing] agent container: its own start-up (process start -> running): {} ms",
        v["fields"]["startup_ms"]
    );
    let enforcement = picked_enforcement(&running);
    // Which cgroup namespace the agent got.
    let info = rt
        .block_on(cri.container_status(&pod.container_id))
        .expect("agent status");
    let agent_pid = info.pid.expect("agent pid");
    let private = ds::cgroupns_of(agent_pid) != ds::cgroupns_of(std::process::id());
    let privileged = spec.security_context["privileged"]
        .as_bool()
        .unwrap_or(false);
    eprintln!(
        "[ns] agent container pid {agent_pid}: {} cgroup namespace (cgroup2 at {}, unified at /sys/fs/cgroup: {})",
        if private { "a private" } else { "the host's" },
        mount.display(),
        ds::expect_private_cgroupns(privileged)
    );
    if let Some(w) = &wrapper {
        // On a unified host containerd has put it there already.
        assert!(
            ds::expect_private_cgroupns(privileged) || w.applied().contains(&pod.container_id),
            "the runc wrapper did not add the cgroup namespace: {:?}",
            w.applied()
        );
        assert!(
            private,
            "the agent's container did not get a private cgroup namespace"
        );
        // What the agent sees: another pod's cgroup relative to its own.
        let other = rt
            .block_on(cri.container_status(&pre_good))
            .unwrap()
            .pid
            .unwrap();
        let seen = Command::new("nsenter")
            .arg(format!("--cgroup=/proc/{agent_pid}/ns/cgroup"))
            .args(["cat", &format!("/proc/{other}/cgroup")])
            .output()
            .expect("nsenter");
        let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
        let line = cgroup::unified_path(&seen).unwrap_or_default().to_string();
        assert!(
            line.starts_with("/../../../besteffort/"),
            "another pod's cgroup as the agent reads it: {line:?}"
        );
        eprintln!("[ns] the agent reads the trusted pod's cgroup as {line}");
    } else {
        assert_eq!(
            private,
            ds::expect_private_cgroupns(privileged),
            "containerd gives a private cgroup namespace exactly on a unified hierarchy"
        );
    }
    // The settings from the manifest are the ones in force.
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let want: u64 = ds_caps_add(&spec)
        .iter()
        .filter(|c| !pod.caps_left_out.contains(c))
        .filter_map(|c| ds::cap_number(c))
        .map(|n| 1u64 << n)
        .sum();
    assert_eq!(
        eff, want,
        "the agent's effective capabilities are not the manifest's add list"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "allowPrivilegeEscalation: false not applied"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "seccomp RuntimeDefault not applied"
    );
    let root_ro = std::fs::read_to_string(format!("/proc/{agent_pid}/mountinfo"))
        .unwrap()
        .lines()
        .any(|l| {
            l.split(' ').nth(4) == Some("/")
                && l.split(' ')
                    .nth(5)
                    .is_some_and(|o| o.split(',').any(|x| x == "ro"))
        });
    assert!(root_ro, "read-only root not applied");

    // Killed at agent start.
    let (f, at) = log
        .wait_finding(Duration::from_secs(15), |v| {
            v["container_id"] == pre_bad.as_str() && v["action"] == "killed"
        })
        .unwrap_or_else(|| {
            panic!(
                "the running untrusted container was not killed at start:\n{}",
                log.dump()
            )
        });
    assert_eq!(
        (
            f["verdict"].as_str(),
            f["image"].as_str(),
            f["pod"].as_str(),
            f["namespace"].as_str()
        ),
        (Some("deny"), Some(NGINX), Some("pre-hub"), Some("prod")),
        "{f}"
    );
    assert_eq!(f["cgroup_id"], bad_id, "{f}");
    eprintln!(
        "[timing] agent container start -> running untrusted container killed: {}",
        ds::ms(at - pod.started)
    );
    rt.block_on(async {
        assert!(
            wait_state(
                &cri,
                &pre_bad,
                ContainerState::Exited,
                Duration::from_secs(10)
            )
            .await,
            "untrusted container still running"
        );
        assert_killed_by_sigkill(&cri, &pre_bad).await;
        assert_eq!(
            state_of(&cri, &pre_good).await,
            ContainerState::Running,
            "trusted container disturbed"
        );
    });

    // A new untrusted pod: its entrypoint never runs.
    let new_bad_uid = uid("d0000002", &t);
    let t0 = Instant::now();
    let (_, new_bad) = rt.block_on(ctd.cri_run_pod_opt(
        &cri,
        "new-hub",
        "prod",
        &new_bad_uid,
        "nginx",
        NGINX,
        &format!("ds-new-bad-{t}"),
        true,
    ));
    let (f, at) = log
        .wait_finding(Duration::from_secs(15), |v| {
            v["container_id"] == new_bad.as_str() && v["action"] == "killed"
        })
        .unwrap_or_else(|| panic!("no kill of the new untrusted container:\n{}", log.dump()));
    eprintln!(
        "[timing] RunPodSandbox+CreateContainer+StartContainer of an untrusted pod -> denial ({}): {}",
        f["type"],
        ds::ms(at - t0)
    );
    assert_eq!(
        (
            f["verdict"].as_str(),
            f["image"].as_str(),
            f["pod"].as_str()
        ),
        (Some("deny"), Some(NGINX), Some("new-hub")),
        "{f}"
    );
    rt.block_on(async {
        assert!(
            wait_state(
                &cri,
                &new_bad,
                ContainerState::Exited,
                Duration::from_secs(10)
            )
            .await,
            "new untrusted container running"
        );
        let d = assert_new_container_denied(&cri, &new_bad, enforcement).await;
        eprintln!(
            "[timing] agent container: CreateContainer -> untrusted container denied ({}, {}): {}",
            f["type"],
            enforcement.as_str(),
            ds::ms(d)
        );
    });
    assert!(
        !ctd.marker(&format!("ds-new-bad-{t}")).exists(),
        "the untrusted entrypoint ran"
    );

    // A new trusted pod runs and accepts an exec.
    let (_, new_good) = rt.block_on(ctd.cri_run_pod(
        &cri,
        "new-ecr",
        "prod",
        &uid("e0000002", &t),
        "nginx",
        ECR_NGINX,
        &format!("ds-new-good-{t}"),
    ));
    assert!(
        ctd.wait_marker(&format!("ds-new-good-{t}"), Duration::from_secs(10))
            .is_some(),
        "the trusted entrypoint did not run"
    );
    let out = rt
        .block_on(cri.exec_sync(
            &new_good,
            &["/bin/sh", "-c", "echo ds-exec-ok"],
            Duration::from_secs(10),
        ))
        .expect("ExecSync into the trusted container");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ds-exec-ok"),
        "{out:?}"
    );
    assert_eq!(
        rt.block_on(state_of(&cri, &pod.container_id)),
        ContainerState::Running,
        "the agent died:\n{}",
        log.dump()
    );
    // The agent never judged itself nor the trusted pods.
    let wrong: Vec<Value> = log
        .findings()
        .into_iter()
        .filter(|v| {
            [
                pod.container_id.as_str(),
                pre_good.as_str(),
                new_good.as_str(),
            ]
            .contains(&v["container_id"].as_str().unwrap_or(""))
        })
        .filter(|v| v["verdict"] != "allow")
        .collect();
    assert!(wrong.is_empty(), "trusted containers reported: {wrong:#?}");
    if private {
        let said = log
            .lines()
            .into_iter()
            .any(|(_, m)| m.contains("private cgroup namespace: rooted at"));
        assert!(
            said,
            "the agent did not say where its cgroup namespace is rooted:\n{}",
            log.dump()
        );
    }
    drop(_stop);
    drop(image);
    drop(images);
}

fn ds_override(spec: &mut AgentSpec, flag: &str, value: &str) {
    assert!(
        spec.args.iter().any(|a| a == flag) || flag == "--listen",
        "manifest has no {flag}"
    );
    spec.set_arg(flag, value);
}

fn ds_caps_add(spec: &AgentSpec) -> Vec<String> {
    spec.security_context["capabilities"]["add"]
        .as_sequence()
        .map(|q| {
            q.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the agent's container (SIGTERM: it unpins) and removes its pod.
struct AgentPodStop<'a> {
    ctd: &'a Containerd,
    container_id: String,
    sandbox_id: String,
    cgroup_parent: String,
}

impl Drop for AgentPodStop<'_> {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(cri) = CriClient::connect(&self.ctd.endpoint()).await {
                let _ = cri.stop_container(&self.container_id, 10).await;
                let _ = cri.remove_pod_sandbox(&self.sandbox_id).await;
            }
        });
        ds::remove_pod_cgroups(&self.cgroup_parent);
        // A test that failed early may leave the manifest's pins behind.
        let dir =
            imagewarden::probes::pin_dir_under(Path::new(imagewarden::probes::DEFAULT_PIN_ROOT));
        if dir.exists() {
            imagewarden::probes::remove_pins(&dir);
        }
    }
}

// ---- The manifest and Dockerfile readers (no privileges needed) ----

#[test]
fn the_manifest_reads_as_the_kubelet_would_see_it() {
    let spec = AgentSpec::load().expect("deploy/daemonset.yaml");
    assert!(spec.host_pid, "the agent needs hostPID");
    assert_eq!(spec.container_name, "agent");
    assert!(
        spec.image.starts_with("public.ecr.aws/"),
        "the seed policy must allow the agent's own image: {}",
        spec.image
    );
    assert!(
        spec.args.windows(2).any(|w| w[0] == "--policy"),
        "{:?}",
        spec.args
    );
    assert!(spec
        .env
        .iter()
        .any(|(k, v)| k == "NODE_NAME" && *v == ds::EnvValue::FieldRef("spec.nodeName".into())));
    assert_eq!(spec.qos(), "burstable");
    assert_eq!(ds::millicores(&spec.requests["cpu"]), Some(50));
    assert_eq!(ds::bytes(&spec.limits["memory"]), Some(256 << 20));
    let cg = spec
        .mounts
        .iter()
        .find(|m| m.mount_path == "/sys/fs/cgroup")
        .expect("cgroup mount");
    assert!(
        matches!(&cg.source, ds::VolumeSource::HostPath { path, .. } if path == "/sys/fs/cgroup"),
        "{cg:?}"
    );
    assert!(!cg.read_only, "cgroup.kill needs the hierarchy writable");
    for c in ds_caps_add(&spec) {
        assert!(
            ds::cap_number(&c).is_some(),
            "unknown capability {c} in the manifest"
        );
    }
    let policy = ds::configmap_data("imagewarden-policy");
    assert!(
        policy
            .iter()
            .any(|(k, v)| k == "policy.yaml" && v.contains("restrict-image-registries")),
        "{policy:?}"
    );
    let mut s = spec.clone();
    s.set_arg("--mode", "enforce");
    assert!(s.args.windows(2).any(|w| w == ["--mode", "enforce"]));
    s.set_arg("--new-flag", "x");
    assert_eq!(&s.args[s.args.len() - 2..], ["--new-flag", "x"]);
}

#[test]
fn manifest_reader_refuses_what_it_cannot_run() {
    assert!(AgentSpec::parse("kind: Deployment\n")
        .unwrap_err()
        .contains("not a DaemonSet"));
    assert!(AgentSpec::parse(": : :").is_err());
    let nfs = "kind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: i\n        volumeMounts: [{name: v, mountPath: /v}]\n      volumes: [{name: v, nfs: {server: s, path: /}}]\n";
    let e = AgentSpec::parse(nfs).unwrap_err();
    assert!(e.contains("volume v") && e.contains("unsupported"), "{e}");
    let missing = nfs.replace(
        "volumes: [{name: v, nfs: {server: s, path: /}}]",
        "volumes: []",
    );
    assert!(AgentSpec::parse(&missing)
        .unwrap_err()
        .contains("no such volume"));
}

#[test]
fn dockerfile_runtime_stage_and_cri_log_readers() {
    let df = std::fs::read_to_string(ds::repo_root().join("deploy/Dockerfile")).unwrap();
    let d = ds::DockerfileRuntime::parse(&df).expect("deploy/Dockerfile");
    assert_eq!(d.binary_path, "/usr/bin/imagewarden");
    assert_eq!(d.entrypoint, ["/usr/bin/imagewarden"]);
    assert_eq!(d.cmd.first().map(String::as_str), Some("run"));
    assert!(
        ds::DockerfileRuntime::parse("FROM x\nENTRYPOINT /bin/sh -c x\n")
            .unwrap_err()
            .contains("exec form")
    );
    assert!(ds::DockerfileRuntime::parse("RUN x\n").is_err());
    let log = "2026-01-01T00:00:00.1Z stdout P {\"a\":\n2026-01-01T00:00:00.2Z stdout F 1}\n2026-01-01T00:00:00.3Z stderr F hello world\ngarbage\n";
    assert_eq!(
        ds::parse_cri_log(log),
        [
            ("stdout".to_string(), "{\"a\":1}".to_string()),
            ("stderr".to_string(), "hello world".to_string())
        ]
    );
    assert_eq!(ds::millicores(&serde_yaml::Value::from("1")), Some(1000));
    assert_eq!(ds::millicores(&serde_yaml::Value::from("250m")), Some(250));
    assert_eq!(ds::bytes(&serde_yaml::Value::from("1Gi")), Some(1 << 30));
    assert_eq!(ds::bytes(&serde_yaml::Value::from("lots")), None);
}
