//! Safe to leave in enforce mode on a production node (issue 13): what
//! admission excluded is never stopped, an empty policy is refused, pinned
//! state of another layout is rebuilt, forged labels buy nothing.
//!
//! Real parts: a private containerd + runc, the real kernel, the agent
//! binary; the stand-in API server of `support::fakeapi` in Kubernetes mode.
//! Privileged: run under the host-wide lock, one test at a time.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagewarden::sources::cri::CriClient;
use serde_json::{json, Value};
use support::{
    containerd::{Containerd, TestImages, NGINX},
    fakeapi::{Coll, FakeApi},
};

/// Waits for `f` with a deadline (never a fixed sleep).
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running agent: its findings (stdout JSON lines) and log (stderr).
struct Agent {
    child: Child,
    findings: Arc<Mutex<Vec<Value>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(args: &[&str], env: &[(&str, &Path)]) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagewarden"));
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start agent");
        let findings = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let f2 = findings.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("non-JSON {l:?}: {e}"));
                f2.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("agent: {l}");
                l2.lock().unwrap().push(l);
            }
        });
        Agent { child, findings, log }
    }

    fn finding(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, timeout, || self.findings.lock().unwrap().iter().find(|v| pred(v)).cloned())
    }

    fn wait_log(&self, what: &str, timeout: Duration, needle: &str) {
        wait_for(what, timeout, || self.log.lock().unwrap().iter().any(|l| l.contains(needle)).then_some(()));
    }

    /// Waits for the agent to exit by itself; its status and log.
    fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let st = wait_for("the agent to exit", timeout, || self.child.try_wait().ok().flatten());
        // Let the reader thread drain what the agent wrote last.
        let _ = wait_for("the agent's log", Duration::from_secs(2), || {
            (!self.log.lock().unwrap().is_empty()).then_some(())
        });
        (st, self.log.lock().unwrap().join("\n"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root_or_skip(test: &str) -> bool {
    if let Err(why) = support::containerd::preflight() {
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
    serde_yaml::from_str(include_str!("../../deploy/policies/restrict-registries.yaml")).unwrap()
}

/// Case 3: what admission excluded is not killed. An untrusted image in
/// kube-system (Kyverno's default resourceFilters: no ConfigMap in the
/// cluster) runs its entrypoint and is reported as audit; the same image in
/// an ordinary namespace is killed; once the cluster's Kyverno ConfigMap
/// exists, its own resourceFilters decide (a `[Pod,NS,NAME-*]` entry exempts
/// one Pod; kube-public, which it does not list, is enforced again).
#[test]
fn admission_exclusions_are_reported_never_stopped() {
    let test = "admission_exclusions_are_reported_never_stopped";
    if !root_or_skip(test) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let images = TestImages::build();
    let ctd = Containerd::start();
    ctd.import("k8s.io", &images);
    let api = rt.block_on(FakeApi::start());
    api.put(Coll::ClusterPolicies, seed_policy());
    let t = ctd.token.clone();
    let dir = support::host::tempdir("iw-safety-exempt");
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let endpoint = ctd.endpoint();
    let agent = Agent::start(
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
    agent.wait_log("the cluster policy", Duration::from_secs(30), "restrict-image-registries");
    agent.wait_log("the agent running", Duration::from_secs(30), "agent running");
    let uid = |n: u32| format!("{n:08x}-0000-0000-0000-{t:0>12}");

    rt.block_on(async {
        let cri = CriClient::connect(&endpoint).await.expect("CRI");
        // No Kyverno ConfigMap: Kyverno's defaults exclude kube-system.
        let (_, sys_id) =
            ctd.cri_run_pod(&cri, "aws-node-x", "kube-system", &uid(1), "aws-node", NGINX, &format!("x-sys-{t}")).await;
        assert!(
            ctd.wait_marker(&format!("x-sys-{t}"), Duration::from_secs(15)).is_some(),
            "an untrusted image in kube-system (excluded by Kyverno's defaults) must run"
        );
        let f = agent.finding("the audit finding in kube-system", Duration::from_secs(15), |v| {
            v["container_id"] == sys_id.as_str() && v["type"] == "container"
        });
        assert_eq!(f["verdict"], "deny", "{f}");
        assert_eq!(f["action"], "alerted", "{f}");
        let reason = f["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("untrusted-image") && reason.contains("[*,kube-system,*]"), "{f}");

        // The same image elsewhere: killed before its entrypoint.
        let (_, prod_id) =
            ctd.cri_run_pod_opt(&cri, "web-hub", "prod", &uid(2), "nginx", NGINX, &format!("x-prod-{t}"), true).await;
        agent.finding("the kill in prod", Duration::from_secs(15), |v| {
            v["container_id"] == prod_id.as_str() && v["action"] == "killed"
        });
        assert!(!ctd.marker(&format!("x-prod-{t}")).exists(), "the untrusted entrypoint ran in prod");

        // The cluster's Kyverno ConfigMap replaces the defaults.
        api.put(
            Coll::ConfigMaps,
            json!({"metadata": {"name": "kyverno", "namespace": "kyverno"},
                   "data": {"resourceFilters": "[Event,*,*][*/*,kube-system,*][Pod,prod,batch-*]",
                            "excludeGroups": "system:nodes"}}),
        );
        agent.wait_log("the ConfigMap's exclusions", Duration::from_secs(15), "admission exclusions changed");
        let (_, batch_id) =
            ctd.cri_run_pod(&cri, "batch-7", "prod", &uid(3), "nginx", NGINX, &format!("x-batch-{t}")).await;
        assert!(
            ctd.wait_marker(&format!("x-batch-{t}"), Duration::from_secs(15)).is_some(),
            "a Pod the ConfigMap's [Pod,prod,batch-*] excludes must run"
        );
        let f = agent.finding("the audit finding for batch-7", Duration::from_secs(15), |v| {
            v["container_id"] == batch_id.as_str() && v["type"] == "container"
        });
        assert_eq!(f["action"], "alerted", "{f}");
        assert!(f["reason"].as_str().unwrap_or_default().contains("ConfigMap kyverno/kyverno"), "{f}");
        let (_, pub_id) = ctd
            .cri_run_pod_opt(&cri, "pub", "kube-public", &uid(4), "nginx", NGINX, &format!("x-pub-{t}"), true)
            .await;
        agent.finding("the kill in kube-public", Duration::from_secs(15), |v| {
            v["container_id"] == pub_id.as_str() && v["action"] == "killed"
        });
        assert!(!ctd.marker(&format!("x-pub-{t}")).exists(), "kube-public is not excluded by this ConfigMap");
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
    drop(ctd);
    drop(images);
}
