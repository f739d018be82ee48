//! `imagewarden run` in Kubernetes mode (not standalone), end to end: a
//! real private containerd + runc and the real kernel, and — since no
//! kube-apiserver can be installed here — the local stand-in API server of
//! `support::fakeapi`, which serves the real API paths and JSON (Pods list
//! and watch with field selectors, Kyverno ClusterPolicies, Events).
//!
//! The policy comes from the cluster (the seed's Kyverno ClusterPolicy),
//! not from a file. Pods are created through CRI as a kubelet would.
//! - a Pod the API lists, of a public.ecr.aws image: runs;
//! - a Pod the API lists, of a docker.io image: killed at its first exec,
//!   an `untrusted-image` Event is posted on the Pod;
//! - a Pod the API does not list (started behind Kubernetes' back): a
//!   `not-in-api` finding names its container, and an Event is posted;
//! - a memfd exec inside the allowed Pod is a `fileless-exec` finding with
//!   the Pod's name and a `FilelessExec` Event on the Pod (issue 17).

mod support;

use std::time::Duration;

use imagewarden::sources::cri::CriClient;
use serde_json::{json, Value};
use support::{
    agent::AgentProcess,
    containerd::{Containerd, TestImages, ECR_NGINX, NGINX},
    fakeapi::{Coll, FakeApi},
    host::wait_for,
};

fn api_pod(ns: &str, name: &str, uid: &str, image: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "nginx", "image": image}]},
        "status": {"phase": "Running"}
    })
}

/// Each test runs an enforcing agent that judges every exec on the host:
/// two at once would judge each other's containers. One at a time.
static ONE_AGENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn kubernetes_mode_enforces_cluster_policy_posts_events_and_finds_pods_not_in_the_api() {
    let test = "kubernetes_mode_enforces_cluster_policy_posts_events_and_finds_pods_not_in_the_api";
    let _one = ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner());
    // Root, containerd 1.6 and the image tools; else skipped or, under
    // CI, failed.
    if let Err(why) = support::containerd::preflight() {
        support::skip_or_fail(test, &why);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let images = TestImages::build();
    let ctd = Containerd::start();
    ctd.import("k8s.io", &images);
    let api = rt.block_on(FakeApi::start());
    let seed: Value = serde_yaml::from_str(include_str!(
        "../../deploy/policies/restrict-registries.yaml"
    ))
    .unwrap();
    api.put(Coll::ClusterPolicies, seed);
    let t = &ctd.token;
    let uid_ok = format!("aaaaaaaa-0000-0000-0000-{t:0>12}");
    let uid_bad = format!("bbbbbbbb-0000-0000-0000-{t:0>12}");
    let uid_ghost = format!("cccccccc-0000-0000-0000-{t:0>12}");
    api.put(Coll::Pods, api_pod("prod", "web-ecr", &uid_ok, ECR_NGINX));
    api.put(Coll::Pods, api_pod("prod", "web-hub", &uid_bad, NGINX));

    let dir = std::env::temp_dir().join(format!("iw-e2e-kube-{t}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();

    let mut cmd = AgentProcess::command();
    cmd.args([
        "run",
        "--mode",
        "enforce",
        "--fail-mode",
        "open",
        "--node-name",
        "node-a",
        "--runtime-endpoint",
    ])
    .arg(ctd.endpoint())
    .env("KUBECONFIG", &kubeconfig);
    // Ready once the programs are attached ("agent running": in enforce
    // mode the agent loads the cluster's policy before it attaches, so the
    // policy line alone came too early and a Pod could start unenforced),
    // and the cluster's ClusterPolicy is the one in force.
    let agent = AgentProcess::spawn(
        cmd,
        |l| l.contains(support::agent::RUNNING),
        Duration::from_secs(30),
    );
    agent
        .wait_for_log(
            |l| l.contains("policy reloaded") && l.contains("restrict-image-registries"),
            Duration::from_secs(30),
        )
        .expect("the cluster's ClusterPolicy reached the agent");
    let find = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        agent.finding(what, pred, Duration::from_secs(20))
    };

    rt.block_on(async {
        let cri = CriClient::connect(&ctd.endpoint()).await.expect("CRI");
        let (_, ok_id) = ctd
            .cri_run_pod(
                &cri,
                "web-ecr",
                "prod",
                &uid_ok,
                "nginx",
                ECR_NGINX,
                &format!("k-ok-{t}"),
            )
            .await;
        let (_, bad_id) = ctd
            .cri_run_pod_opt(
                &cri,
                "web-hub",
                "prod",
                &uid_bad,
                "nginx",
                NGINX,
                &format!("k-bad-{t}"),
                true,
            )
            .await;
        let (_, ghost_id) = ctd
            .cri_run_pod(
                &cri,
                "ghost",
                "prod",
                &uid_ghost,
                "nginx",
                ECR_NGINX,
                &format!("k-ghost-{t}"),
            )
            .await;
        assert!(
            ctd.wait_marker(&format!("k-ok-{t}"), Duration::from_secs(10))
                .is_some(),
            "the allowed Pod did not run"
        );

        let f = find(
            &|v| v["container_id"] == bad_id.as_str() && v["action"] == "killed",
            "the kill of the docker.io Pod",
        );
        assert_eq!(f["pod"], "web-hub", "{f}");
        assert_eq!(f["namespace"], "prod", "{f}");
        support::cri_assert_denied(&cri, &bad_id, Duration::from_secs(10)).await;
        assert!(
            !ctd.marker(&format!("k-bad-{t}")).exists(),
            "the untrusted entrypoint ran"
        );

        let f = find(
            &|v| v["container_id"] == ghost_id.as_str() && v["reason"] == "not-in-api",
            "not-in-api for the ghost Pod",
        );
        assert_eq!(f["type"], "container", "{f}");
        assert!(
            ctd.marker(&format!("k-ghost-{t}")).exists(),
            "an allowed image not in the API is reported, not killed"
        );
        // Exec drift in the allowed Pod (issue 17): a memfd exec is reported
        // with the Pod (and becomes an Event below); no rule denies it here.
        let out = ctd.ctr_raw(
            "k8s.io",
            &[
                "tasks",
                "exec",
                "--exec-id",
                "drift",
                &ok_id,
                "/bin/iw-drift",
                "memfd",
                "/bin/busybox",
                "true",
            ],
        );
        assert!(
            out.status.success(),
            "the memfd exec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = find(
            &|v| {
                v["container_id"] == ok_id.as_str()
                    && v["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("fileless-exec:"))
            },
            "the memfd exec in the allowed Pod",
        );
        assert_eq!(
            (&f["pod"], &f["namespace"], &f["file"], &f["action"]),
            (
                &Value::from("web-ecr"),
                &Value::from("prod"),
                &Value::from("memfd:iw-drift"),
                &Value::from("alerted")
            ),
            "{f}"
        );

        // Degraded: the API server goes away. The runtime and the kernel
        // keep enforcing the last good policy; nothing restarts.
        let mark = agent.log_mark();
        api.down();
        // The agent noticed: a source of the API logs the outage once.
        let seen_down =
            agent.wait_for_log_since(mark, |l| l.contains("source down"), Duration::from_secs(20));
        assert!(
            seen_down.is_some(),
            "the agent never noticed the API going away:\n{}",
            agent.log_text()
        );
        let (_, down_id) = ctd
            .cri_run_pod_opt(
                &cri,
                "while-down",
                "prod",
                &format!("dddddddd-0000-0000-0000-{t:0>12}"),
                "nginx",
                NGINX,
                &format!("k-down-{t}"),
                true,
            )
            .await;
        let f = find(
            &|v| v["container_id"] == down_id.as_str() && v["action"] == "killed",
            "a kill while the API is down",
        );
        assert_eq!(f["verdict"], "deny", "{f}");
        support::cri_assert_denied(&cri, &down_id, Duration::from_secs(10)).await;
        assert!(
            !ctd.marker(&format!("k-down-{t}")).exists(),
            "an untrusted entrypoint ran while the API was down"
        );
        api.up();
    });

    let events = wait_for("Events posted", Duration::from_secs(20), || {
        let ev = api.events();
        let has = |reason: &str| {
            ev.iter()
                .any(|e| e["reason"].as_str().is_some_and(|r| r.contains(reason)))
        };
        (has("Untrusted") && has("FilelessExec") && ev.len() >= 2).then_some(ev)
    });
    assert!(
        events.iter().any(|e| e["reason"] == "FilelessExec"
            && e["involvedObject"]["name"] == "web-ecr"
            && e["involvedObject"]["kind"] == "Pod"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("memfd:iw-drift"))),
        "no FilelessExec Event on Pod web-ecr: {events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["involvedObject"]["name"] == "web-hub"
                && e["involvedObject"]["kind"] == "Pod"),
        "no Event on Pod web-hub: {events:#?}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| format!("{r:?}").contains("spec.nodeName")),
        "the agent must watch Pods with the node field selector"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
    drop(images);
}

/// A ValidatingPolicy, then a ValidatingAdmissionPolicy with its binding,
/// added to the stand-in cluster while untrusted containers already run:
/// each reaches the agent, which kills the running containers it now
/// denies (and only those).
#[test]
fn kubernetes_mode_cel_policies_added_to_the_cluster_kill_running_containers() {
    let test = "kubernetes_mode_cel_policies_added_to_the_cluster_kill_running_containers";
    let _one = ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner());
    // Root, containerd 1.6 and the image tools; else skipped or, under
    // CI, failed.
    if let Err(why) = support::containerd::preflight() {
        support::skip_or_fail(test, &why);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let images = TestImages::build();
    let ctd = Containerd::start();
    ctd.import("k8s.io", &images);
    let api = rt.block_on(FakeApi::start());
    let t = &ctd.token;
    let uid_hub = format!("eeeeeeee-0000-0000-0000-{t:0>12}");
    let uid_ecr = format!("ffffffff-0000-0000-0000-{t:0>12}");
    api.put(Coll::Pods, api_pod("prod", "cel-hub", &uid_hub, NGINX));
    api.put(Coll::Pods, api_pod("prod", "cel-ecr", &uid_ecr, ECR_NGINX));

    let dir = std::env::temp_dir().join(format!("iw-e2e-kube-cel-{t}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let mut cmd = AgentProcess::command();
    cmd.args([
        "run",
        "--mode",
        "enforce",
        "--fail-mode",
        "open",
        "--node-name",
        "node-a",
        "--runtime-endpoint",
    ])
    .arg(ctd.endpoint())
    .env("KUBECONFIG", &kubeconfig);
    // The watches have listed (no policy yet): the first reload.
    let agent = AgentProcess::spawn(
        cmd,
        |l| l.contains("policy reloaded"),
        Duration::from_secs(30),
    );

    // The finding, and every finding printed so far.
    let find = |pred: &dyn Fn(&Value) -> bool, what: &str| -> (Value, Vec<Value>) {
        let f = agent.finding(what, pred, Duration::from_secs(30));
        (f, agent.findings())
    };
    rt.block_on(async {
        let cri = CriClient::connect(&ctd.endpoint()).await.expect("CRI");
        // No policy: both run.
        let (_, hub_id) = ctd.cri_run_pod(&cri, "cel-hub", "prod", &uid_hub, "nginx", NGINX, &format!("c-hub-{t}")).await;
        let (_, ecr_id) = ctd.cri_run_pod(&cri, "cel-ecr", "prod", &uid_ecr, "nginx", ECR_NGINX, &format!("c-ecr-{t}")).await;
        assert!(ctd.wait_marker(&format!("c-hub-{t}"), Duration::from_secs(10)).is_some(), "docker.io Pod did not run");
        assert!(ctd.wait_marker(&format!("c-ecr-{t}"), Duration::from_secs(10)).is_some(), "ECR Pod did not run");

        // A Kyverno ValidatingPolicy (the seed rewritten in CEL) arrives.
        let vpol: Value = serde_yaml::from_str(
            r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: restrict-image-registries-cel}
spec:
  validationActions: [Deny]
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}
  variables:
  - name: allContainers
    expression: "object.spec.containers + object.spec.?initContainers.orValue([]) + object.spec.?ephemeralContainers.orValue([])"
  validations:
  - expression: "variables.allContainers.all(c, c.image.startsWith('public.ecr.aws/'))"
    message: Unknown image registry.
"#,
        )
        .unwrap();
        api.put(Coll::ValidatingPolicies, vpol);
        let (f, all) = find(&|v| v["container_id"] == hub_id.as_str() && v["action"] == "killed", "the kill of the running docker.io container");
        assert_eq!(f["pod"], "cel-hub", "{f}");
        assert!(f["reason"].as_str().unwrap_or("").contains("restrict-image-registries-cel"), "{f}");
        assert!(
            !all.iter().any(|v| v["container_id"] == ecr_id.as_str() && v["action"] == "killed"),
            "the ECR container is allowed by the ValidatingPolicy"
        );
        assert!(ctd.marker(&format!("c-hub-{t}")).exists());

        // A ValidatingAdmissionPolicy without binding: not in effect; with
        // its binding (Deny): the running :latest ECR container is killed.
        api.put(
            Coll::ValidatingAdmissionPolicies,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": "no-latest"},
                   "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                "operations": ["CREATE"], "resources": ["pods"]}]},
                            "validations": [{"expression": "object.spec.containers.all(c, !c.image.endsWith(':latest'))",
                                             "message": "pin a tag"}]}}),
        );
        api.put(
            Coll::ValidatingAdmissionPolicyBindings,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                   "metadata": {"name": "no-latest"},
                   "spec": {"policyName": "no-latest", "validationActions": ["Deny"]}}),
        );
        let (f, _) = find(&|v| v["container_id"] == ecr_id.as_str() && v["action"] == "killed", "the kill of the running :latest ECR container");
        assert!(f["reason"].as_str().unwrap_or("").contains("pin a tag"), "{f}");
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
    drop(images);
}

/// Issue 13, case 6: Pod identity comes from CRI only. A container created
/// straight through containerd's API (`ctr run`) in the CRI plugin's own
/// namespace `k8s.io`, with forged labels `io.cri-containerd.kind=sandbox`
/// and `io.kubernetes.pod.*` naming a Pod the API lists with a trusted
/// (public.ecr.aws) spec image, runs a docker.io image: CRI never lists
/// it, so it gets neither the sandbox allowance nor that Pod's image. It is
/// held until the agent gives up waiting for CRI, then judged by the image
/// it really runs and killed before its entrypoint; the kill's finding
/// names that image and no Pod.
#[test]
fn forged_cri_identity_in_k8s_io_buys_nothing() {
    let test = "forged_cri_identity_in_k8s_io_buys_nothing";
    let _one = ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner());
    // Root, containerd 1.6 and the image tools; else skipped or, under
    // CI, failed.
    if let Err(why) = support::containerd::preflight() {
        support::skip_or_fail(test, &why);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let images = TestImages::build();
    let ctd = Containerd::start();
    ctd.import("k8s.io", &images);
    let api = rt.block_on(FakeApi::start());
    let seed: Value = serde_yaml::from_str(include_str!(
        "../../deploy/policies/restrict-registries.yaml"
    ))
    .unwrap();
    api.put(Coll::ClusterPolicies, seed);
    let t = ctd.token.clone();
    let uid = format!("abababab-0000-0000-0000-{t:0>12}");
    api.put(Coll::Pods, api_pod("prod", "web-ecr", &uid, ECR_NGINX));

    let dir = std::env::temp_dir().join(format!("iw-e2e-kube-forged-{t}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let mut cmd = AgentProcess::command();
    cmd.args([
        "run",
        "--mode",
        "enforce",
        "--fail-mode",
        "open",
        "--node-name",
        "node-a",
        "--runtime-endpoint",
    ])
    .arg(ctd.endpoint())
    .env("KUBECONFIG", &kubeconfig);
    let agent = AgentProcess::spawn(
        cmd,
        |l| l.contains(support::agent::RUNNING),
        Duration::from_secs(30),
    );
    agent
        .wait_for_log(
            |l| l.contains("policy reloaded") && l.contains("restrict-image-registries"),
            Duration::from_secs(30),
        )
        .expect("the cluster's ClusterPolicy reached the agent");

    let id = format!("forged-k8s-{t}");
    let sock = ctd.endpoint().trim_start_matches("unix://").to_string();
    let marker_dir = ctd.marker("x").parent().unwrap().to_path_buf();
    let mut ctr = std::process::Command::new("ctr")
        .env("CONTAINERD_SNAPSHOTTER", "native")
        .args(["-a", &sock, "-n", "k8s.io", "run", "-d"])
        .args(["--label", "io.cri-containerd.kind=sandbox"])
        .args(["--label", "io.kubernetes.pod.name=web-ecr"])
        .args(["--label", "io.kubernetes.pod.namespace=prod"])
        .args(["--label", &format!("io.kubernetes.pod.uid={uid}")])
        .args(["--label", "io.kubernetes.container.name=nginx"])
        .arg("--mount")
        .arg(format!(
            "type=bind,src={},dst={},options=rbind:rw",
            marker_dir.display(),
            support::containerd::MARKER_MOUNT
        ))
        .args(["--env", &format!("IW_MARKER_NAME={id}"), NGINX, &id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctr run");
    // The positive signal that it never ran: the agent's kill.
    let f = agent.finding(
        "the kill of the container with forged CRI identity",
        |v| v["container_id"] == id.as_str() && v["action"] == "killed",
        Duration::from_secs(30),
    );
    assert_eq!(f["verdict"], "deny", "{f}");
    assert_eq!(f["image"], NGINX, "judged by the image it runs: {f}");
    assert!(
        f["pod"].is_null() && f["namespace"].is_null(),
        "no Pod from labels: {f}"
    );
    assert!(
        f["reason"]
            .as_str()
            .unwrap_or("")
            .contains("unknown to CRI"),
        "{f}"
    );
    let status = wait_for("ctr run to return", Duration::from_secs(20), || {
        ctr.try_wait().ok().flatten()
    });
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(ctr.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let run = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr,
    };
    // Dead by SIGKILL (or never created) before the marker is checked.
    ctd.assert_ctr_denied("k8s.io", &id, &run, Duration::from_secs(10));
    assert!(
        !ctd.marker(&id).exists(),
        "the container with a forged sandbox label and a trusted Pod's identity ran its entrypoint"
    );
    drop(agent);
    drop(ctd);
    let _ = std::fs::remove_dir_all(dir);
    drop(images);
}
