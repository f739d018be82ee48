//! The agent as `deploy/daemonset.yaml` runs it, without a cluster: its
//! image built from the agent binary (as `deploy/Dockerfile`'s runtime stage
//! describes it), imported into the test's private containerd, and started
//! through CRI the way the kubelet starts a pod (`RunPodSandbox`,
//! `CreateContainer`, `StartContainer`) with the pod's and the container's
//! settings **read from the manifest**: a change to the manifest is what the
//! test runs. What a test must override is overridden by name, through
//! [`Overrides`], and said in its comment.
//!
//! The kubelet's mapping, reproduced (Kubernetes `pkg/kubelet/kuberuntime`):
//! `hostPID: true` → `NamespaceOption.pid = NODE` (pod and container);
//! `securityContext.capabilities` → `Capability{add,drop}` with the names as
//! written (the runtime adds `CAP_`); `readOnlyRootFilesystem` →
//! `readonly_rootfs`; `allowPrivilegeEscalation: false` → `no_new_privs`;
//! `runAsUser/Group` → `run_as_user/group`; `seccompProfile: RuntimeDefault`
//! → `seccomp{RuntimeDefault}`; the default `procMount` → the kubelet's
//! masked and read-only /proc paths; `resources` → CFS shares/quota and the
//! memory limit; downward-API `fieldRef: spec.nodeName` → the node's name;
//! hostPath volumes → bind mounts of the host path (type `Directory`
//! checked), a configMap → its keys as files in a directory, emptyDir → a
//! fresh directory; the pod's cgroup parent `/kubepods/<qos>/pod<uid>` (the
//! cgroupfs driver); its log at `<log dir>/<container>/0.log` (CRI format).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imagewarden::sources::cri::CriClient;
use k8s_cri::v1 as cri;
use serde_yaml::Value;

use super::containerd::{run, tail, Containerd};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kubelet's default masked /proc and /sys paths (`procMount: Default`).
pub const KUBELET_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// The kubelet's default read-only /proc paths.
pub const KUBELET_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One `volumeMounts` entry joined with its volume.
#[derive(Debug, Clone)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    pub source: VolumeSource,
}

/// The volume kinds the agent's manifest uses.
#[derive(Debug, Clone)]
pub enum VolumeSource {
    HostPath { path: String, kind: Option<String> },
    ConfigMap { name: String },
    EmptyDir,
}

/// An `env` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    Value(String),
    FieldRef(String),
}

/// The agent's pod and container, as the manifest says.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub namespace: String,
    pub pod_name: String,
    pub host_pid: bool,
    pub host_network: bool,
    pub container_name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    pub security_context: Value,
    pub mounts: Vec<VolumeMount>,
    pub readiness_path: Option<String>,
    pub requests: Value,
    pub limits: Value,
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|q| q.iter().filter_map(s).collect())
        .unwrap_or_default()
}

impl AgentSpec {
    /// Reads the DaemonSet in `deploy/daemonset.yaml` and its first container.
    pub fn load() -> Result<AgentSpec, String> {
        let path = repo_root().join("deploy/daemonset.yaml");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text)
    }

    /// Parses a DaemonSet manifest.
    pub fn parse(text: &str) -> Result<AgentSpec, String> {
        let ds: Value = serde_yaml::from_str(text).map_err(|e| format!("daemonset.yaml: {e}"))?;
        if ds["kind"].as_str() != Some("DaemonSet") {
            return Err(format!("not a DaemonSet: kind {:?}", ds["kind"]));
        }
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let volumes: HashMap<String, Value> = pod["volumes"]
            .as_sequence()
            .map(|v| {
                v.iter()
                    .filter_map(|v| Some((s(&v["name"])?, v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = s(&m["name"]).ok_or("volumeMount without name")?;
            let vol = volumes
                .get(&name)
                .ok_or_else(|| format!("volumeMount {name}: no such volume"))?;
            let source = if vol["hostPath"].is_mapping() {
                VolumeSource::HostPath {
                    path: s(&vol["hostPath"]["path"])
                        .ok_or_else(|| format!("volume {name}: hostPath without path"))?,
                    kind: s(&vol["hostPath"]["type"]),
                }
            } else if vol["configMap"].is_mapping() {
                VolumeSource::ConfigMap {
                    name: s(&vol["configMap"]["name"]).unwrap_or_default(),
                }
            } else if vol["emptyDir"].is_mapping() {
                VolumeSource::EmptyDir
            } else {
                return Err(format!(
                    "volume {name}: unsupported kind (only hostPath, configMap, emptyDir)"
                ));
            };
            mounts.push(VolumeMount {
                mount_path: s(&m["mountPath"])
                    .ok_or_else(|| format!("volumeMount {name} without mountPath"))?,
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                name,
                source,
            });
        }
        let mut env = Vec::new();
        for e in c["env"].as_sequence().into_iter().flatten() {
            let name = s(&e["name"]).ok_or("env entry without name")?;
            let v = if let Some(v) = s(&e["value"]) {
                EnvValue::Value(v)
            } else if let Some(f) = s(&e["valueFrom"]["fieldRef"]["fieldPath"]) {
                EnvValue::FieldRef(f)
            } else {
                return Err(format!("env {name}: unsupported source"));
            };
            env.push((name, v));
        }
        Ok(AgentSpec {
            namespace: s(&ds["metadata"]["namespace"]).unwrap_or_else(|| "default".into()),
            pod_name: s(&ds["metadata"]["name"]).ok_or("DaemonSet without a name")?,
            host_pid: pod["hostPID"].as_bool().unwrap_or(false),
            host_network: pod["hostNetwork"].as_bool().unwrap_or(false),
            container_name: s(&c["name"]).ok_or("container without a name")?,
            image: s(&c["image"]).ok_or("container without an image")?,
            command: strings(&c["command"]),
            args: strings(&c["args"]),
            env,
            security_context: c["securityContext"].clone(),
            mounts,
            readiness_path: s(&c["readinessProbe"]["httpGet"]["path"]),
            requests: c["resources"]["requests"].clone(),
            limits: c["resources"]["limits"].clone(),
        })
    }

    /// `--flag value` in the args: the value replaced, or both appended.
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// The QoS class the kubelet derives (one container).
    pub fn qos(&self) -> &'static str {
        let (r, l) = (&self.requests, &self.limits);
        if r.is_null() && l.is_null() {
            "besteffort"
        } else if !l.is_null()
            && ["cpu", "memory"]
                .iter()
                .all(|k| !l[*k].is_null() && (r[*k].is_null() || r[*k] == l[*k]))
        {
            "guaranteed"
        } else {
            "burstable"
        }
    }
}

/// `100m` / `1` / `0.5` → millicores.
pub fn millicores(v: &Value) -> Option<i64> {
    let t = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    if let Some(m) = t.strip_suffix('m') {
        return m.parse().ok();
    }
    t.parse::<f64>().ok().map(|c| (c * 1000.0).round() as i64)
}

/// `64Mi` / `1Gi` / `1000000` → bytes.
pub fn bytes(v: &Value) -> Option<i64> {
    let t = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    for (suf, mul) in [
        ("Ki", 1i64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ] {
        if let Some(n) = t.strip_suffix(suf) {
            return n.parse::<i64>().ok().map(|n| n * mul);
        }
    }
    t.parse().ok()
}

/// What the runtime stage of `deploy/Dockerfile` says about the image.
#[derive(Debug, Clone, Default)]
pub struct DockerfileRuntime {
    /// Where `COPY --from=builder` puts the binary.
    pub binary_path: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub exposed: Vec<String>,
}

impl DockerfileRuntime {
    /// Parses the last stage of a Dockerfile (exec-form ENTRYPOINT/CMD).
    pub fn parse(text: &str) -> Result<DockerfileRuntime, String> {
        let last = text
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
            .ok_or("Dockerfile without FROM")?;
        let mut d = DockerfileRuntime::default();
        for l in text.lines().skip(last + 1).map(str::trim) {
            let (instr, rest) = l.split_once(' ').unwrap_or((l, ""));
            let json = |r: &str| -> Result<Vec<String>, String> {
                serde_json::from_str(r.trim())
                    .map_err(|e| format!("Dockerfile {instr}: exec form expected ({e})"))
            };
            match instr.to_ascii_uppercase().as_str() {
                "COPY" => {
                    d.binary_path = rest
                        .split_whitespace()
                        .last()
                        .unwrap_or_default()
                        .to_string()
                }
                "ENTRYPOINT" => d.entrypoint = json(rest)?,
                "CMD" => d.cmd = json(rest)?,
                "USER" => d.user = Some(rest.trim().to_string()),
                "EXPOSE" => d
                    .exposed
                    .extend(rest.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        if d.binary_path.is_empty() || d.entrypoint.is_empty() {
            return Err("Dockerfile runtime stage: no COPY of the binary or no ENTRYPOINT".into());
        }
        Ok(d)
    }
}

/// The agent's image as an importable OCI archive.
#[derive(Debug)]
pub struct AgentImage {
    pub dir: PathBuf,
    pub archive: PathBuf,
    pub name: String,
}

impl Drop for AgentImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Shared libraries a dynamically linked binary loads (from `ldd`).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p = l.split("=>").last()?.split_whitespace().next()?;
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// Builds the agent's image with umoci: what `deploy/Dockerfile`'s runtime
/// stage (`distroless/cc-debian12` + the binary) holds — the binary at the
/// Dockerfile's path, the C libraries it links (glibc, libgcc_s; taken from
/// this host with `ldd`, where distroless ships Debian 12's), /etc/passwd
/// and /etc/group for uid 0, /tmp — with the Dockerfile's ENTRYPOINT, CMD,
/// USER and EXPOSE, named `name` (the manifest's image).
pub fn build_agent_image(binary: &Path, name: &str) -> AgentImage {
    let df = std::fs::read_to_string(repo_root().join("deploy/Dockerfile"))
        .expect("read deploy/Dockerfile");
    let df = DockerfileRuntime::parse(&df).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!(
        "iw-agent-image-{}-{:x}",
        std::process::id(),
        nanos()
    ));
    std::fs::create_dir_all(&dir).expect("image dir");
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let img = format!("{}:agent", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let put = |src: &Path, dst: &str| {
        let to = rootfs.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).expect("rootfs dir");
        std::fs::copy(src, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), to.display()));
    };
    put(binary, &df.binary_path);
    for lib in shared_libraries(binary) {
        put(&lib, &lib.display().to_string());
    }
    for d in ["tmp", "proc", "sys", "dev", "etc", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\n",
    )
    .expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    let mut cfg = Command::new("umoci");
    cfg.args([
        "config",
        "--image",
        &img,
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    for e in &df.entrypoint {
        cfg.args(["--config.entrypoint", e]);
    }
    for c in &df.cmd {
        cfg.args(["--config.cmd", c]);
    }
    if let Some(u) = &df.user {
        cfg.args(["--config.user", u]);
    }
    for p in &df.exposed {
        let p = if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        };
        cfg.args(["--config.exposedports", &p]);
    }
    run(&mut cfg);
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("parse index.json");
    let m = &mut index["manifests"][0];
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    m["annotations"] = serde_json::json!({
        "org.opencontainers.image.ref.name": tag,
        "io.containerd.image.name": name,
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .expect("write index");
    let archive = dir.join("agent.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    AgentImage {
        dir,
        archive,
        name: name.to_string(),
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// What the test changes from the manifest, each for a stated reason.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// hostPath path → host directory to mount instead.
    pub host_paths: HashMap<String, PathBuf>,
    /// The pod's network: the test's containerd has no CNI, so a pod that is
    /// not `hostNetwork` gets the node's network anyway.
    pub node_network: bool,
    /// Capabilities the host cannot grant (not in this process's bounding
    /// set): removed from the add list, with a message.
    pub drop_unavailable_caps: bool,
}

/// The agent's pod, started.
pub struct AgentPod {
    pub sandbox_id: String,
    pub container_id: String,
    pub log_path: PathBuf,
    pub pod_uid: String,
    pub cgroup_parent: String,
    /// Time of `StartContainer`'s return.
    pub started: Instant,
    /// Directories made for configMap / emptyDir volumes.
    pub scratch: PathBuf,
    /// Capabilities left out (host limit), for the report.
    pub caps_left_out: Vec<String>,
}

/// Capabilities in this process's bounding set.
fn bounding_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX)
}

/// Capability number by name (`BPF`, `SYS_ADMIN`, ...).
pub fn cap_number(name: &str) -> Option<u32> {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let n = name.trim_start_matches("CAP_").to_ascii_uppercase();
    NAMES.iter().position(|c| *c == n).map(|i| i as u32)
}

/// The node's name as the kubelet registers it (its hostname, lower-case).
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Starts the agent's pod through CRI as the kubelet would.
pub async fn start_agent_pod(
    ctd: &Containerd,
    cri_client: &CriClient,
    spec: &AgentSpec,
    ov: &Overrides,
) -> AgentPod {
    let t = &ctd.token;
    let hex: String = t.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let pod_uid = format!(
        "a9e17000-0000-4000-8000-{:0>12}",
        &hex[hex.len().saturating_sub(12)..]
    );
    let cgroup_parent = format!("/kubepods/{}/pod{pod_uid}", spec.qos());
    let pod_name = format!("{}-{t}", spec.pod_name);
    let log_dir = ctd
        .dir
        .join("pods")
        .join(format!("{}_{pod_name}_{pod_uid}", spec.namespace));
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let scratch = ctd.dir.join("volumes").join(&pod_uid);
    std::fs::create_dir_all(&scratch).expect("volume dir");
    let ns_opts = cri::NamespaceOption {
        network: if spec.host_network || ov.node_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: if spec.host_pid {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Container
        } as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let labels = |extra: &[(&str, &str)]| {
        let mut m: HashMap<String, String> = [
            ("io.kubernetes.pod.name", pod_name.as_str()),
            ("io.kubernetes.pod.namespace", spec.namespace.as_str()),
            ("io.kubernetes.pod.uid", pod_uid.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        m
    };
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod_name.clone(),
            uid: pod_uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        labels: labels(&[]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(ns_opts.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox_id = cri_client
        .run_pod_sandbox(sandbox_config.clone())
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox (agent): {e}\n{}", tail(&ctd.log(), 40)));

    // Volumes.
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        let host_path = match &m.source {
            VolumeSource::HostPath { path, kind } => {
                let p = ov
                    .host_paths
                    .get(path)
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(path));
                if kind.as_deref() == Some("Directory") && !p.is_dir() {
                    panic!(
                        "hostPath volume {}: {} is not a directory (type: Directory)",
                        m.name,
                        p.display()
                    );
                }
                p
            }
            VolumeSource::ConfigMap { name } => {
                let d = scratch.join(format!("configmap-{}", m.name));
                std::fs::create_dir_all(&d).expect("configmap dir");
                for (k, v) in configmap_data(name) {
                    std::fs::write(d.join(k), v).expect("configmap file");
                }
                d
            }
            VolumeSource::EmptyDir => {
                let d = scratch.join(format!("emptydir-{}", m.name));
                std::fs::create_dir_all(&d).expect("emptyDir");
                d
            }
        };
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: m.read_only,
            propagation: cri::MountPropagation::PropagationPrivate as i32,
            ..Default::default()
        });
    }

    // Environment, downward API filled in.
    let envs = spec
        .env
        .iter()
        .map(|(k, v)| cri::KeyValue {
            key: k.clone(),
            value: match v {
                EnvValue::Value(v) => v.clone(),
                EnvValue::FieldRef(f) if f == "spec.nodeName" => node_name(),
                EnvValue::FieldRef(f) if f == "metadata.name" => pod_name.clone(),
                EnvValue::FieldRef(f) if f == "metadata.namespace" => spec.namespace.clone(),
                EnvValue::FieldRef(f) if f == "metadata.uid" => pod_uid.clone(),
                EnvValue::FieldRef(f) => panic!("env {k}: fieldRef {f} not supported by the test"),
            },
        })
        .collect();

    // Security context.
    let sc = &spec.security_context;
    let mut caps_left_out = Vec::new();
    let bounding = bounding_caps();
    let add: Vec<String> = strings(&sc["capabilities"]["add"])
        .into_iter()
        .filter(|c| {
            let ok = cap_number(c).is_some_and(|n| bounding & (1u64 << n) != 0);
            if !ok && ov.drop_unavailable_caps {
                caps_left_out.push(c.clone());
                return false;
            }
            true
        })
        .collect();
    let seccomp = match sc["seccompProfile"]["type"].as_str() {
        Some("RuntimeDefault") => Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            ..Default::default()
        }),
        Some("Unconfined") | None => Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            ..Default::default()
        }),
        Some(other) => panic!("seccompProfile {other} not supported by the test"),
    };
    let security_context = cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: add,
            drop_capabilities: strings(&sc["capabilities"]["drop"]),
            ..Default::default()
        }),
        privileged: sc["privileged"].as_bool().unwrap_or(false),
        namespace_options: Some(ns_opts),
        run_as_user: sc["runAsUser"]
            .as_i64()
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc["runAsGroup"]
            .as_i64()
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
        masked_paths: KUBELET_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
        readonly_paths: KUBELET_READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        seccomp,
        ..Default::default()
    };
    // Resources, as the kubelet's cgroupfs mapping computes them.
    let cpu_req = millicores(&spec.requests["cpu"]).unwrap_or(0);
    let cpu_lim = millicores(&spec.limits["cpu"]);
    let resources = cri::LinuxContainerResources {
        cpu_shares: (cpu_req * 1024 / 1000).max(2),
        cpu_period: if cpu_lim.is_some() { 100_000 } else { 0 },
        cpu_quota: cpu_lim.map(|m| m * 100_000 / 1000).unwrap_or(0),
        memory_limit_in_bytes: bytes(&spec.limits["memory"]).unwrap_or(0),
        oom_score_adj: -997, // system-node-critical
        ..Default::default()
    };
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: spec.container_name.clone(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: spec.image.clone(),
            ..Default::default()
        }),
        command: spec.command.clone(),
        args: spec.args.clone(),
        envs,
        mounts,
        labels: labels(&[("io.kubernetes.container.name", &spec.container_name)]),
        log_path: format!("{}/0.log", spec.container_name),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(security_context),
        }),
        ..Default::default()
    };
    let container_id = cri_client
        .create_container(&sandbox_id, config, sandbox_config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer (agent): {e}\n{}", tail(&ctd.log(), 40)));
    cri_client
        .start_container(&container_id)
        .await
        .unwrap_or_else(|e| panic!("StartContainer (agent): {e}\n{}", tail(&ctd.log(), 40)));
    AgentPod {
        sandbox_id,
        container_id,
        log_path: log_dir.join(&spec.container_name).join("0.log"),
        pod_uid,
        cgroup_parent,
        started: Instant::now(),
        scratch,
        caps_left_out,
    }
}

/// The `data` of the ConfigMap `name` among `deploy/*.yaml`.
pub fn configmap_data(name: &str) -> Vec<(String, String)> {
    let dir = repo_root().join("deploy");
    for e in std::fs::read_dir(&dir).expect("deploy/").flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(v) = Value::deserialize(doc) else {
                continue;
            };
            if v["kind"].as_str() == Some("ConfigMap")
                && v["metadata"]["name"].as_str() == Some(name)
            {
                return v["data"]
                    .as_mapping()
                    .map(|m| m.iter().filter_map(|(k, v)| Some((s(k)?, s(v)?))).collect())
                    .unwrap_or_default();
            }
        }
    }
    panic!("ConfigMap {name} not found under {}", dir.display());
}

use serde::Deserialize;

/// One line of a CRI container log: (stream, message), full lines only
/// (`<time> <stream> F <message>`; partial `P` lines are joined).
pub fn parse_cri_log(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for l in text.lines() {
        let mut it = l.splitn(4, ' ');
        let (Some(_ts), Some(stream), Some(tag), msg) =
            (it.next(), it.next(), it.next(), it.next().unwrap_or(""))
        else {
            continue;
        };
        let acc = partial.entry(stream.to_string()).or_default();
        acc.push_str(msg);
        if tag == "F" {
            out.push((stream.to_string(), std::mem::take(acc)));
        }
    }
    out
}

/// Reads the agent container's log.
pub struct AgentLog {
    pub path: PathBuf,
}

impl AgentLog {
    /// Every full line so far.
    pub fn lines(&self) -> Vec<(String, String)> {
        parse_cri_log(&std::fs::read_to_string(&self.path).unwrap_or_default())
    }

    /// Findings (JSON objects on stdout) so far.
    pub fn findings(&self) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|(s, _)| s == "stdout")
            .filter_map(|(_, m)| serde_json::from_str(&m).ok())
            .collect()
    }

    /// Waits (bounded) for a finding matching `pred`.
    pub fn wait_finding(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<(serde_json::Value, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.findings().into_iter().find(&pred) {
                return Some((f, Instant::now()));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole log, for failure messages.
    pub fn dump(&self) -> String {
        self.lines()
            .into_iter()
            .map(|(s, m)| format!("{s}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `GET http://addr/path` → status code.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut c =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The cgroup namespace inode of a process (`/proc/PID/ns/cgroup`).
pub fn cgroupns_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/cgroup"))
        .ok()
        .map(|p| p.display().to_string())
}

/// containerd's CRI gives a container a private cgroup namespace exactly
/// when the host runs the unified hierarchy (`/sys/fs/cgroup` is cgroup2)
/// and the container is not privileged (`containerSpec`: "cgroupns is not
/// used when running in cgroup v1 mode or in privileged").
pub fn expect_private_cgroupns(privileged: bool) -> bool {
    !privileged && imagewarden::sources::cgroup::is_cgroup2_mount(Path::new("/sys/fs/cgroup"))
}

/// Ensures a cgroup v2 directory (and its parents) exists under `mount`.
pub fn ensure_cgroup(mount: &Path, rel: &str) -> PathBuf {
    let p = mount.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    p
}

/// Time since `t0` as milliseconds, for `[timing]` lines.
pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Removes a pod's cgroup directories (its containers', then its own, then
/// empty parents up to `kubepods`) from every hierarchy: runc leaves the pod
/// level behind, as the kubelet would remove it.
pub fn remove_pod_cgroups(cgroup_parent: &str) {
    let rel = cgroup_parent.trim_start_matches('/');
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let pod = root.join(rel);
        if let Ok(rd) = std::fs::read_dir(&pod) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let mut d = pod;
        while d.starts_with(root.join("kubepods")) {
            let _ = std::fs::remove_dir(&d);
            if !d.pop() {
                break;
            }
        }
    }
}
