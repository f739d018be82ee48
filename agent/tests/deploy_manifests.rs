//! The manifests in deploy/ against the agent itself: every arg and every
//! IMAGEWARDEN_* env of the DaemonSet is a real flag (clap parses them the
//! way the container would), the mounts the agent reads are there, the
//! probes hit the --listen port, the ConfigMap carries the seed policy, and
//! the ImagePolicy CRD's schema is the native policy's JSON schema.
//! (Schema validation against Kubernetes: scripts/validate-manifests.sh.)
use std::{collections::BTreeSet, path::PathBuf};

use clap::{CommandFactory, Parser};
use imagewarden::cli::{Cli, Command};
use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn one(rel: &str, kind: &str) -> Value {
    let mut d: Vec<Value> = docs(rel)
        .into_iter()
        .filter(|v| v["kind"] == kind)
        .collect();
    assert_eq!(d.len(), 1, "{rel}: one {kind}");
    d.remove(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn agent_container(ds: &Value) -> &Value {
    let cs = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    cs.iter()
        .find(|c| c["name"] == "agent")
        .expect("container `agent`")
}

/// The DaemonSet's args plus its IMAGEWARDEN_* env turned into the flags
/// that read them, as one command line.
fn command_line(ds: &Value) -> Vec<String> {
    let c = agent_container(ds);
    let mut argv = vec!["imagewarden".to_string()];
    argv.extend(
        c["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .map(|a| s(a).to_string()),
    );
    assert!(
        c["command"].is_null(),
        "the image's entrypoint is the agent; no command override"
    );

    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").expect("run subcommand");
    let all_args: Vec<&clap::Arg> = run.get_arguments().chain(cmd.get_arguments()).collect();
    for e in c["env"].as_sequence().expect("env") {
        let name = s(&e["name"]);
        if !name.starts_with("IMAGEWARDEN_") {
            continue;
        }
        let arg = all_args
            .iter()
            .find(|a| a.get_env().and_then(|x| x.to_str()) == Some(name))
            .unwrap_or_else(|| panic!("env {name} is read by no flag of `imagewarden run`"));
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("{name}: flag without a long name"));
        let value = s(&e["value"]);
        match arg.get_action() {
            clap::ArgAction::SetTrue => {
                assert!(
                    ["true", "false", "1", "0"].contains(&value),
                    "{name}={value}"
                );
                if value == "true" || value == "1" {
                    argv.push(format!("--{long}"));
                }
            }
            _ => {
                argv.push(format!("--{long}"));
                argv.push(value.to_string());
            }
        }
    }
    argv
}

fn daemonset() -> Value {
    one("deploy/daemonset.yaml", "DaemonSet")
}

#[test]
fn daemonset_args_and_env_are_flags_the_agent_reads() {
    let ds = daemonset();
    let argv = command_line(&ds);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
    let Command::Run(run) = cli.command else {
        panic!("the DaemonSet must run `imagewarden run`")
    };
    assert_eq!(
        run.policy.as_deref(),
        Some(std::path::Path::new("/etc/imagewarden/policy.yaml"))
    );
    assert_eq!(run.listen.as_deref(), Some("0.0.0.0:9090"));
    assert_eq!(
        run.runtime_endpoint.as_deref(),
        Some("unix:///run/containerd/containerd.sock")
    );
    assert!(!run.standalone, "the DaemonSet runs with Kubernetes");

    let c = agent_container(&ds);
    // NODE_NAME from the downward API.
    let env = c["env"].as_sequence().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME env");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
}

#[test]
fn probes_and_port_match_listen() {
    let ds = daemonset();
    let c = agent_container(&ds);
    let ports = c["ports"].as_sequence().unwrap();
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("port `metrics`");
    assert_eq!(
        metrics["containerPort"].as_u64(),
        Some(9090),
        "the port of --listen 0.0.0.0:9090"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for p in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[p]["httpGet"]["port"], "metrics", "{p}");
    }
    let svc = one("deploy/service.yaml", "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
}

#[test]
fn mounts_the_agent_needs_are_present() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "host pids in exec events and /proc"
    );
    let c = agent_container(&ds);
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let host_path_of = |mount_path: &str| -> Option<(String, bool)> {
        let m = mounts.iter().find(|m| m["mountPath"] == mount_path)?;
        let v = volumes.iter().find(|v| v["name"] == m["name"])?;
        Some((
            v["hostPath"]["path"].as_str()?.to_string(),
            m["readOnly"].as_bool().unwrap_or(false),
        ))
    };
    // (path in the container = path on the host, must be read-only)
    for (path, ro) in [
        ("/sys/fs/bpf", false),
        ("/sys/kernel/btf", true),
        ("/sys/kernel/tracing", true),
        ("/sys/kernel/security", true),
        ("/sys/fs/cgroup", false),
        ("/run/containerd", true),
    ] {
        let (host, is_ro) =
            host_path_of(path).unwrap_or_else(|| panic!("no hostPath mount at {path}"));
        assert_eq!(host, path, "{path} is the host's {path}");
        if ro {
            assert!(is_ro, "{path} must be read-only");
        }
    }
    // The runtime endpoint's socket is inside a mounted directory.
    let argv = command_line(&ds);
    let Command::Run(run) = Cli::try_parse_from(&argv).unwrap().command else {
        unreachable!()
    };
    let sock = run.runtime_endpoint.unwrap();
    let sock = sock.strip_prefix("unix://").expect("unix socket endpoint");
    assert!(
        mounts
            .iter()
            .any(|m| sock.starts_with(&format!("{}/", s(&m["mountPath"])))),
        "{sock} is not mounted"
    );
    // The policy file comes from the ConfigMap.
    let policy = run.policy.unwrap();
    let dir = policy.parent().unwrap().to_str().unwrap();
    let m = mounts
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("policy mount");
    let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
    assert_eq!(v["configMap"]["name"], "imagewarden-policy");
    // Propagation: the agent pins nothing, so nothing is Bidirectional.
    assert!(mounts.iter().all(|m| m["mountPropagation"].is_null()));
}

#[test]
fn security_context_lists_capabilities_instead_of_privileged() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let sc = &agent_container(&ds)["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["runAsUser"].as_u64(), Some(0));
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let add: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    let want: BTreeSet<&str> = [
        "BPF",
        "PERFMON",
        "SYS_ADMIN",
        "SYS_RESOURCE",
        "KILL",
        "SYS_PTRACE",
    ]
    .into();
    assert_eq!(add, want);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    let tol = pod["tolerations"].as_sequence().unwrap();
    assert!(
        tol.iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "tolerates every taint"
    );
    let res = &agent_container(&ds)["resources"];
    for k in ["requests", "limits"] {
        assert!(
            !res[k]["memory"].is_null() && !res[k]["cpu"].is_null(),
            "resources.{k}"
        );
    }
}

#[test]
fn configmap_carries_the_seed_policy() {
    let cm = one("deploy/configmap-policy.yaml", "ConfigMap");
    let seed =
        std::fs::read_to_string(repo().join("deploy/policies/restrict-registries.yaml")).unwrap();
    assert_eq!(
        s(&cm["data"]["policy.yaml"]),
        seed,
        "deploy/configmap-policy.yaml drifted from deploy/policies/restrict-registries.yaml"
    );
}

fn strip_markers(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .filter(|(k, v)| {
                    !(k.as_str() == "additionalProperties" && **v == serde_json::Value::Bool(false))
                })
                .filter(|(k, _)| !["$schema", "$id", "title"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), strip_markers(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(strip_markers).collect())
        }
        x => x.clone(),
    }
}

#[test]
fn crd_schema_is_the_native_policy_schema() {
    let crd = one("deploy/crds/imagepolicy.yaml", "CustomResourceDefinition");
    assert_eq!(crd["spec"]["group"], "imagewarden.dev");
    assert_eq!(crd["spec"]["names"]["kind"], "ImagePolicy");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    let crd_spec: serde_json::Value =
        serde_json::to_value(&v["schema"]["openAPIV3Schema"]["properties"]["spec"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("policy/schema/imagepolicy.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        crd_spec,
        strip_markers(&json["properties"]["spec"]),
        "deploy/crds/imagepolicy.yaml drifted from policy/schema/imagepolicy.schema.json"
    );
}

#[test]
fn rbac_is_least_privilege() {
    let rules = |rel: &str| -> Vec<(String, String, BTreeSet<String>)> {
        let cr = docs(rel)
            .into_iter()
            .find(|d| d["kind"] == "ClusterRole")
            .unwrap();
        let mut out = Vec::new();
        for r in cr["rules"].as_sequence().unwrap() {
            let verbs: BTreeSet<String> = r["verbs"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| s(v).to_string())
                .collect();
            for g in r["apiGroups"].as_sequence().unwrap() {
                for res in r["resources"].as_sequence().unwrap() {
                    out.push((s(g).to_string(), s(res).to_string(), verbs.clone()));
                }
            }
        }
        out
    };
    let base = rules("deploy/rbac.yaml");
    for (g, r, verbs) in &base {
        assert!(
            !verbs.contains("*") && g != "*" && r != "*",
            "no wildcards: {g}/{r} {verbs:?}"
        );
        assert!(
            !(r == "pods" && verbs.contains("delete")),
            "pod delete is optional, not in the base"
        );
        assert!(
            r != "nodes/proxy",
            "nodes/proxy is optional, not in the base"
        );
        assert!(r != "secrets", "no secrets");
    }
    let opt = rules("deploy/optional/rbac-pod-delete.yaml");
    assert_eq!(
        opt,
        vec![(
            "".to_string(),
            "pods".to_string(),
            BTreeSet::from(["delete".to_string()])
        )]
    );
    let kubelet = rules("deploy/optional/rbac-kubelet.yaml");
    assert_eq!(
        kubelet,
        vec![(
            "".to_string(),
            "nodes/proxy".to_string(),
            BTreeSet::from(["get".to_string()])
        )]
    );
}

#[test]
fn kustomization_lists_every_base_manifest() {
    let k = docs("deploy/kustomization.yaml").remove(0);
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| s(v).to_string())
        .collect();
    let mut present = BTreeSet::new();
    for e in std::fs::read_dir(repo().join("deploy")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    present.insert("crds/imagepolicy.yaml".into());
    assert_eq!(listed, present);
}
