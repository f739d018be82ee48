//! Exec drift (issue 17): programs a container runs that are not part of
//! its image. A real containerd (1.6 and 2.x, overlayfs snapshotter), the
//! real kernel, the `imagewarden` binary in its default mode (no
//! `--all-execs`) with a native policy that allows `public.ecr.aws` and
//! carries `execDrift: {fileless: deny, writableLayer: deny}`.
//!
//! Inside one allowed container (`ctr tasks exec`), the cases of
//! `docs/hardening.md` ("Exec drift"):
//! - (f) the image's own `/bin/sh` — never reported, never stopped;
//! - (e) a binary on a volume (the bind-mounted marker directory) — not
//!   drift: not the container's writable layer;
//! - (d) `sh /tmp/x.sh` — the program exec'd is the image's `sh`; the
//!   script is data (interpreter indirection, like `ld.so /tmp/x`);
//! - (a) a memfd exec (`memfd_create` + `execveat(AT_EMPTY_PATH)`) —
//!   `fileless-exec`;
//! - (b) an exec of an unlinked copy — `fileless-exec`;
//! - (c) `cp /bin/busybox /tmp/sh && /tmp/sh` — `drift-exec`.
//!
//! "Not reported" is proven by order: the exec events of one ring buffer
//! arrive in the order the kernel reserved them, and (f), (e), (d) finish
//! before (a) starts; so when (a)'s finding arrives, any finding of theirs
//! would have arrived before it. "Never ran" is proven by the marker file
//! the command would write first, absent after the kernel's kill finding
//! and the exec's SIGKILL exit status.
//!
//! Each test runs once per containerd release (`containerd_1_6::` and
//! `containerd_2::`, `IW_TEST_CONTAINERD` picks). Needs root, containerd,
//! runc, umoci, busybox-static and a C compiler with a static libc (all
//! installed by `cargo xtask setup`); fails under `CI=true` without them.

#[path = "support/exec_hook.rs"]
mod exec_hook;
mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::agent::AgentProcess;
use support::containerd::{Containerd, Runtime, TestImages, ECR_NGINX};

crate::per_containerd_release!(
    audit_reports_fileless_and_drift_execs_and_nothing_of_the_image,
    enforce_refuses_fileless_and_drift_execs_and_runs_the_images_own_programs,
);

const WAIT: Duration = Duration::from_secs(20);

/// The policy: trusted registry, and exec drift denied.
const POLICY: &str = "\
apiVersion: imagewarden.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: ecr-no-drift
spec:
  rules:
    - name: ecr-only
      allow:
        - registry: public.ecr.aws
      execDrift:
        fileless: deny
        writableLayer: deny
";

/// One agent at a time in this file (an enforcing agent judges every exec
/// on the host).
static ONE_AGENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Lab {
    ctd: Containerd,
    _images: TestImages,
    agent: AgentProcess,
    _policy: tempfile_path::TempFile,
    id: String,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempFile(pub std::path::PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const NS: &str = "default";

/// containerd, the images, the agent in `mode`, and one running container
/// of the allowed image that the agent has put in its kernel maps by id.
fn lab(test: &str, rt: Runtime, mode: &str) -> Option<Lab> {
    if !support::e2e_ready(test, rt) {
        return None;
    }
    let images = TestImages::build();
    let ctd = Containerd::start_with(rt, "overlayfs");
    let policy = tempfile_path::TempFile(
        std::env::temp_dir().join(format!("iw-drift-policy-{}.yaml", std::process::id())),
    );
    std::fs::write(&policy.0, POLICY).expect("write the policy");
    let endpoint = ctd.endpoint();
    let mut cmd = AgentProcess::command();
    // The controller's debug line says when a container's verdict and
    // drift policy are in the kernel by cgroup id.
    cmd.env("IMAGEWARDEN_LOG", "info,imagewarden::controller=debug");
    cmd.args([
        "run",
        "--standalone",
        "--fail-mode",
        "open",
        "--mode",
        mode,
        "--runtime-endpoint",
        &endpoint,
        "--policy",
    ]);
    cmd.arg(&policy.0);
    let agent = AgentProcess::spawn(
        cmd,
        |l| l.contains(support::agent::RUNNING),
        Duration::from_secs(30),
    );
    ctd.import(NS, &images);
    let id = ctd.id("drift");
    ctd.ctr_run(NS, &id, ECR_NGINX, &[]);
    assert!(
        ctd.wait_marker(&id, WAIT).is_some(),
        "the allowed container's entrypoint did not run\n{}",
        agent.dump()
    );
    let known = agent.wait_for_log(
        |l| l.contains("kernel maps set by id") && l.contains(&id),
        WAIT,
    );
    assert!(
        known.is_some(),
        "the agent never put {id} in its kernel maps by id\n{}",
        agent.dump()
    );
    Some(Lab {
        ctd,
        _images: images,
        agent,
        _policy: policy,
        id,
    })
}

impl Lab {
    /// `ctr tasks exec` of `cmd` in the container, whatever its outcome.
    fn exec(&self, exec_id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["tasks", "exec", "--exec-id", exec_id, &self.id];
        args.extend_from_slice(cmd);
        self.ctd.ctr_raw(NS, &args)
    }

    /// Runs `script` with the image's `sh`; it must succeed.
    fn sh(&self, exec_id: &str, script: &str) {
        let out = self.exec(exec_id, &["/bin/sh", "-c", script]);
        if !out.status.success() {
            let diag = self.exec(
                &format!("{exec_id}-diag"),
                &["/bin/sh", "-c", "ls -la / ; cat /proc/self/mountinfo"],
            );
            panic!(
                "{exec_id}: `{script}` failed: {}\n--- what the exec sees ---\n{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&diag.stdout),
                String::from_utf8_lossy(&diag.stderr)
            );
        }
    }

    /// (a): busybox copied into a memfd and exec'd from it, writing the
    /// marker of `case` as its first act.
    fn memfd_exec(&self, case: &str) -> Output {
        let script = busybox_sh(&self.marker_in(case));
        self.exec(
            case,
            &[
                "/bin/iw-drift",
                "memfd",
                "/bin/busybox",
                "sh",
                "-c",
                &script,
            ],
        )
    }

    /// (b): busybox copied to `/tmp/u`, opened, unlinked and exec'd from its fd.
    fn unlinked_exec(&self, case: &str) -> Output {
        let script = busybox_sh(&self.marker_in(case));
        self.exec(
            case,
            &[
                "/bin/iw-drift",
                "unlinked",
                "/bin/busybox",
                "/tmp/u",
                "sh",
                "-c",
                &script,
            ],
        )
    }

    /// The path, in the container, of a marker named `name`.
    fn marker_in(&self, name: &str) -> String {
        format!("/iw-marker/{}-{name}", self.id)
    }

    fn marker_on_host(&self, name: &str) -> std::path::PathBuf {
        self.ctd.marker(&format!("{}-{name}", self.id))
    }

    /// The finding of this container's exec with `reason` whose `field`
    /// (`filename`: the exec'd path; `file`: the file's own name) is `value`.
    fn drift_finding(&self, what: &str, reason: &str, field: &str, value: &str) -> Value {
        let id = self.id.clone();
        self.agent.finding(
            what,
            |v| {
                v["container_id"] == id.as_str()
                    && v[field] == value
                    && v["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with(&format!("{reason}:")))
            },
            WAIT,
        )
    }
}

fn busybox_sh(marker: &str) -> String {
    format!("echo ran > {marker}")
}

fn audit_reports_fileless_and_drift_execs_and_nothing_of_the_image(test: &str, rt: Runtime) {
    let _one = ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = lab(test, rt, "audit") else {
        return;
    };
    // (f) the image's own programs, (e) a volume, (d) a script: not drift.
    lab.sh("f", &busybox_sh(&lab.marker_in("f")));
    let vol = lab.marker_in("vol");
    lab.sh(
        "e",
        &format!(
            "mkdir -p {vol} && cp /bin/busybox {vol}/sh && {vol}/sh -c '{}'",
            busybox_sh(&lab.marker_in("e"))
        ),
    );
    lab.sh(
        "d",
        &format!(
            "echo '{}' > /tmp/x.sh && sh /tmp/x.sh",
            busybox_sh(&lab.marker_in("d"))
        ),
    );
    for m in ["f", "e", "d"] {
        assert!(lab.marker_on_host(m).exists(), "case ({m}) did not run");
    }
    // (a) memfd: reported, and it ran (audit).
    let a = lab.memfd_exec("a");
    assert!(
        a.status.success(),
        "memfd exec failed: {}",
        String::from_utf8_lossy(&a.stderr)
    );
    // An execveat(fd, "", AT_EMPTY_PATH) has the path `/dev/fd/N`; the
    // file's own name says memfd.
    lab.drift_finding("the memfd exec", "fileless-exec", "file", "memfd:iw-drift");
    let found: Vec<Value> = lab.agent.findings();
    let first_drift = found
        .iter()
        .position(|v| {
            v["container_id"] == lab.id.as_str()
                && v["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("fileless-exec"))
        })
        .expect("the memfd finding");
    for v in &found[..first_drift] {
        assert!(
            v["container_id"] != lab.id.as_str(),
            "a finding for the image's own programs, a volume or a script: {v}"
        );
    }
    let f = &found[first_drift];
    assert_eq!(f["type"], "exec", "{f}");
    assert_eq!(f["verdict"], "deny", "{f}");
    assert_eq!(f["action"], "alerted", "{f}");
    assert_eq!(f["fileless"], true, "{f}");
    assert_eq!(f["file"], "memfd:iw-drift", "{f}");
    assert_eq!(f["image"], ECR_NGINX, "{f}");
    assert!(
        lab.marker_on_host("a").exists(),
        "audit: the memfd exec ran"
    );
    // (b) unlinked copy.
    let b = lab.unlinked_exec("b");
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let f = lab.drift_finding("the unlinked exec", "fileless-exec", "file", "u");
    assert!(
        f["reason"]
            .as_str()
            .unwrap_or("")
            .contains("an unlinked file"),
        "{f}"
    );
    // (c) a copy in the writable layer.
    lab.sh(
        "c",
        &format!(
            "cp /bin/busybox /tmp/sh && /tmp/sh -c '{}'",
            busybox_sh(&lab.marker_in("c"))
        ),
    );
    let f = lab.drift_finding(
        "the writable-layer exec",
        "drift-exec",
        "filename",
        "/tmp/sh",
    );
    assert_eq!(f["drift"], true, "{f}");
    assert_eq!(f["fileless"], false, "{f}");
    assert_eq!(f["file"], "sh", "{f}");
    assert_eq!(f["action"], "alerted", "{f}");
    for m in ["b", "c"] {
        assert!(lab.marker_on_host(m).exists(), "audit: case ({m}) ran");
    }
}

fn enforce_refuses_fileless_and_drift_execs_and_runs_the_images_own_programs(
    test: &str,
    rt: Runtime,
) {
    let _one = ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = lab(test, rt, "enforce") else {
        return;
    };
    // Which hook refuses: the LSM (execve fails with EPERM) where the
    // kernel runs BPF LSM programs, else the exec hook's SIGKILL.
    let picked = lab
        .agent
        .wait_for_log(|l| l.contains("eBPF programs attached"), WAIT)
        .expect("the attach line");
    let lsm = picked.contains("enforcement=\"lsm\"");
    eprintln!(
        "agent picked enforcement {}",
        if lsm { "lsm" } else { "signal" }
    );
    match exec_hook::expected_enforcement() {
        Some(imagewarden::probes::Enforcement::Lsm) => assert!(lsm, "{picked}"),
        Some(imagewarden::probes::Enforcement::Signal) => assert!(!lsm, "{picked}"),
        None => {}
    }
    let want_hook = if lsm { "lsm" } else { "tp_btf" };
    let assert_refused = |case: &str, out: &Output, reason: &str, field: &str, value: &str| {
        let f = lab.drift_finding(case, reason, field, value);
        assert_eq!(f["verdict"], "deny", "{f}");
        assert_eq!(f["hook"], want_hook, "{f}");
        assert_eq!(f["action"], "killed", "{f}");
        assert!(
            !out.status.success(),
            "{case}: the refused exec exited 0: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !lab.marker_on_host(case).exists(),
            "{case}: the refused program ran (its marker exists)"
        );
    };
    // (f) runs.
    lab.sh("f", &busybox_sh(&lab.marker_in("f")));
    assert!(lab.marker_on_host("f").exists());
    // (a) memfd: refused / killed before its first instruction.
    let a = lab.memfd_exec("a");
    assert_refused("a", &a, "fileless-exec", "file", "memfd:iw-drift");
    // (b) unlinked.
    let b = lab.unlinked_exec("b");
    assert_refused("b", &b, "fileless-exec", "file", "u");
    // (c) writable layer: the copy is made by the image's programs, its
    // exec is refused.
    lab.sh("c-copy", "cp /bin/busybox /tmp/sh");
    let c = lab.exec("c", &["/tmp/sh", "-c", &busybox_sh(&lab.marker_in("c"))]);
    assert_refused("c", &c, "drift-exec", "filename", "/tmp/sh");
    // A script written into the writable layer and exec'd by path: the LSM
    // hook sees the script itself (before its interpreter) and refuses it;
    // the tracepoints see only the image's interpreter, so it runs there.
    let script = "/tmp/s.sh";
    lab.sh(
        "s-write",
        &format!(
            "printf '#!/bin/sh\\n{}\\n' > {script} && chmod +x {script}",
            busybox_sh(&lab.marker_in("s"))
        ),
    );
    let s_out = lab.exec("s", &[script]);
    if lsm {
        assert_refused("s", &s_out, "drift-exec", "filename", script);
    } else {
        assert!(
            s_out.status.success() && lab.marker_on_host("s").exists(),
            "signal path: the script runs (its interpreter is the image's): {}",
            String::from_utf8_lossy(&s_out.stderr)
        );
    }
    // (e) a volume: runs.
    let vol = lab.marker_in("vol");
    lab.sh(
        "e",
        &format!(
            "mkdir -p {vol} && cp /bin/busybox {vol}/sh && {vol}/sh -c '{}'",
            busybox_sh(&lab.marker_in("e"))
        ),
    );
    assert!(lab.marker_on_host("e").exists(), "(e) volume binary ran");
    // The container itself lives on: only the drifting execs died.
    lab.sh("alive", "true");

    // A restart of the container (same snapshot, so /tmp/sh is still in the
    // writable layer): the image's programs still run, the copy still not.
    lab.ctd.ctr_kill(NS, &lab.id);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = lab.ctd.ctr_raw(NS, &["tasks", "rm", &lab.id]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed task was never removed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mark = lab.agent.log_mark();
    lab.ctd.ctr(NS, &["tasks", "start", "-d", &lab.id]);
    assert!(
        lab.agent
            .wait_for_log_since(
                mark,
                |l| l.contains("kernel maps set by id") && l.contains(&lab.id),
                WAIT
            )
            .is_some(),
        "the restarted container never reached the kernel maps\n{}",
        lab.agent.dump()
    );
    lab.sh("f2", &busybox_sh(&lab.marker_in("f2")));
    assert!(
        lab.marker_on_host("f2").exists(),
        "after a restart: /bin/sh ran"
    );
    let c2 = lab.exec("c2", &["/tmp/sh", "-c", &busybox_sh(&lab.marker_in("c2"))]);
    assert_refused("c2", &c2, "drift-exec", "filename", "/tmp/sh");
    let killed: Vec<Value> = lab
        .agent
        .findings()
        .into_iter()
        .filter(|v| v["container_id"] == lab.id.as_str() && v["action"] == "killed")
        .collect();
    assert_eq!(
        killed.len(),
        if lsm { 5 } else { 4 },
        "the kills of (a), (b), (c), the script (LSM) and (c) after the restart, and nothing \
         else: {killed:?}\nevery finding naming /tmp/sh: {:?}",
        lab.agent
            .findings()
            .into_iter()
            .filter(|v| v["filename"] == "/tmp/sh")
            .collect::<Vec<_>>()
    );
}
