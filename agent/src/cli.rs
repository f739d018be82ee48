//! Command-line contract (see docs/architecture.md): names are relied upon by
//! scripts; extend, never rename. Every flag also reads IMAGEWARDEN_*.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::probes::HookChoice;

#[derive(Debug, Parser)]
#[command(
    name = "imagewarden",
    version,
    about = "Only images from trusted registries run on this node."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "IMAGEWARDEN_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of the `Run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate image references or a manifest against a policy; one JSON line per image.
    Check(CheckArgs),
    /// Run the node agent.
    Run(RunArgs),
    /// Remove the programs and maps a fail-closed agent left pinned in
    /// bpffs (after a crash, when uninstalling): detaches enforcement. Takes
    /// the one-agent lock first, so it never pulls a running agent's pins.
    Cleanup {
        #[arg(long, default_value = crate::probes::DEFAULT_PIN_ROOT, env = "IMAGEWARDEN_PIN_DIR")]
        pin_dir: PathBuf,
        /// How long to wait for a running agent to let go of the lock.
        #[arg(long, default_value = "30s", value_parser = parse_duration, env = "IMAGEWARDEN_CLEANUP_WAIT")]
        wait: std::time::Duration,
    },
}

/// What happens to enforcement when the agent dies without a clean shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    /// Programs and verdict maps stay pinned in bpffs: the kernel keeps
    /// killing denied containers and holding unclassified ones until an
    /// agent is back, which takes the state over.
    Closed,
    /// Nothing is pinned: the programs go away with the agent.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainerType {
    Container,
    Init,
    Ephemeral,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Native policy or Kyverno ClusterPolicy/Policy (single or multi-document YAML).
    #[arg(long, env = "IMAGEWARDEN_POLICY")]
    pub policy: PathBuf,
    /// Namespace the images are evaluated for.
    #[arg(long, env = "IMAGEWARDEN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Which kind of container the images belong to.
    #[arg(long, value_enum, default_value_t = ContainerType::Container, env = "IMAGEWARDEN_CONTAINER_TYPE")]
    pub container_type: ContainerType,
    /// Evaluate every workload in this (multi-document) YAML file instead of IMAGE arguments.
    #[arg(long, env = "IMAGEWARDEN_MANIFEST", conflicts_with = "images")]
    pub manifest: Option<PathBuf>,
    /// Accept a Kyverno policy of which some rules cannot be enforced faithfully (they are still reported).
    #[arg(long, env = "IMAGEWARDEN_ALLOW_PARTIAL")]
    pub allow_partial: bool,
    /// Image references to evaluate.
    #[arg(required_unless_present = "manifest")]
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Audit,
    Enforce,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run without Kubernetes (runtime and kernel only).
    #[arg(long, env = "IMAGEWARDEN_STANDALONE")]
    pub standalone: bool,
    /// Policy file; without it the embedded default (the seed's Kyverno
    /// restrict-image-registries policy: only public.ecr.aws/*) is used.
    #[arg(long, env = "IMAGEWARDEN_POLICY")]
    pub policy: Option<PathBuf>,
    /// audit: report only; enforce: also kill in the kernel.
    #[arg(long, value_enum, default_value_t = Mode::Audit, env = "IMAGEWARDEN_MODE")]
    pub mode: Mode,
    /// CRI endpoint, e.g. unix:///run/containerd/containerd.sock (autodetected when absent).
    #[arg(long, env = "IMAGEWARDEN_RUNTIME_ENDPOINT")]
    pub runtime_endpoint: Option<String>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "IMAGEWARDEN_LISTEN")]
    pub listen: Option<String>,
    /// Also append findings (JSON lines) to this file (created 0600).
    #[arg(long, env = "IMAGEWARDEN_FINDINGS_FILE")]
    pub findings_file: Option<PathBuf>,
    /// Also POST findings (JSON lines) to this http:// URL; bounded queue,
    /// bounded retries, never blocks the agent (drops are counted).
    #[arg(long, env = "IMAGEWARDEN_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Also print allowed exec events (one JSON line each).
    #[arg(long, env = "IMAGEWARDEN_ALL_EXECS")]
    pub all_execs: bool,
    /// Refuse (enforce mode) execs of programs that are not part of the
    /// image in every container: fileless (memfd, unlinked) and files of
    /// the container's writable layer. Without it, only native policy rules
    /// with `execDrift` refuse them; they are reported either way.
    #[arg(
        long,
        env = "IMAGEWARDEN_DENY_EXEC_DRIFT",
        conflicts_with = "no_exec_drift_check"
    )]
    pub deny_exec_drift: bool,
    /// Do not classify execs in containers as fileless or drift: they are
    /// then neither reported nor refused (saves the check's kernel time,
    /// see docs/benchmarks.md; for measurement and troubleshooting).
    #[arg(long, env = "IMAGEWARDEN_NO_EXEC_DRIFT_CHECK")]
    pub no_exec_drift_check: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    #[arg(long, default_value_t = 1 << 22, env = "IMAGEWARDEN_RINGBUF_BYTES")]
    pub ringbuf_bytes: u32,
    /// Exec hook: auto picks tp_btf and falls back to the classic tracepoint.
    #[arg(long, value_enum, default_value_t = HookChoice::Auto, env = "IMAGEWARDEN_EXEC_HOOK")]
    pub exec_hook: HookChoice,
    /// Run with a Kyverno policy of which some rules cannot be enforced
    /// faithfully (they are reported and not enforced).
    #[arg(long, env = "IMAGEWARDEN_ALLOW_PARTIAL")]
    pub allow_partial: bool,
    /// How long an unclassified container's first exec is held (stopped)
    /// waiting for the runtime to describe it; then it is killed (enforce).
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "IMAGEWARDEN_HOLD_TIMEOUT")]
    pub hold_timeout: std::time::Duration,
    /// Full resync with the container runtimes (safety net under the event streams).
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "IMAGEWARDEN_RESYNC_INTERVAL")]
    pub resync_interval: std::time::Duration,
    /// When the agent dies (crash, OOM, SIGKILL) or stops (SIGTERM, SIGINT):
    /// closed keeps enforcing in the kernel (pinned in /sys/fs/bpf/imagewarden)
    /// and the next agent takes the state over (rolling updates without a
    /// gap); open stops. `imagewarden cleanup` or --detach-on-exit detach.
    #[arg(long, value_enum, default_value_t = FailMode::Closed, env = "IMAGEWARDEN_FAIL_MODE")]
    pub fail_mode: FailMode,
    /// On SIGTERM/SIGINT, detach and unpin everything instead of handing the
    /// pinned state over to the next agent (enforcement ends with the agent).
    #[arg(long, env = "IMAGEWARDEN_DETACH_ON_EXIT")]
    pub detach_on_exit: bool,
    /// Where a fail-closed agent pins its programs and verdict maps (bpffs).
    /// One agent per directory: a second one refuses to start.
    #[arg(long, default_value = crate::probes::DEFAULT_PIN_ROOT, env = "IMAGEWARDEN_PIN_DIR")]
    pub pin_dir: PathBuf,
    /// Dead-man's switch: when the agent's heartbeat in the kernel is older
    /// than this (the agent died or hangs), the kernel stops holding unknown
    /// containers: they run, are counted, and the next agent reports and
    /// judges them. Known-denied containers stay denied. 0 disables it.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "IMAGEWARDEN_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: std::time::Duration,
    /// Do not hold execs of unclassified containers (the kernel lets them
    /// run until user space has a verdict).
    #[arg(long, env = "IMAGEWARDEN_NO_HOLD")]
    pub no_hold: bool,
    /// This node's name (Kubernetes mode); falls back to $NODE_NAME, which
    /// the DaemonSet sets from spec.nodeName.
    #[arg(long, env = "IMAGEWARDEN_NODE_NAME")]
    pub node_name: Option<String>,
    /// The kubelet's base URL for /pods (e.g. https://$HOST_IP:10250); the
    /// kubelet source is off without it.
    #[arg(long, env = "IMAGEWARDEN_KUBELET_URL")]
    pub kubelet_url: Option<String>,
    /// Do not verify the kubelet's serving certificate (self-signed kubelet
    /// certificates); the service-account token is still sent.
    #[arg(long, env = "IMAGEWARDEN_KUBELET_INSECURE_SKIP_TLS_VERIFY")]
    pub kubelet_insecure_skip_tls_verify: bool,
    /// Enforce mode: also delete the Pod of a killed container through the
    /// API (never in exempt namespaces). Off by default.
    #[arg(long, env = "IMAGEWARDEN_DELETE_PODS")]
    pub delete_pods: bool,
    /// Namespaces never acted on: their containers are never stopped in the
    /// kernel nor killed, untrusted images there are reported (audit).
    /// Repeatable. Kubernetes mode adds what Kyverno's resourceFilters exclude.
    #[arg(
        long = "exempt-namespace",
        env = "IMAGEWARDEN_EXEMPT_NAMESPACES",
        value_delimiter = ','
    )]
    pub exempt_namespaces: Vec<String>,
    /// Namespace of Kyverno and of its ConfigMap (Kubernetes mode): its
    /// resourceFilters are honoured; without the ConfigMap, Kyverno's
    /// defaults (kube-system, kube-public, kube-node-lease, this namespace).
    #[arg(long, default_value = "kyverno", env = "IMAGEWARDEN_KYVERNO_NAMESPACE")]
    pub kyverno_namespace: String,
    /// Name of Kyverno's ConfigMap.
    #[arg(long, default_value = "kyverno", env = "IMAGEWARDEN_KYVERNO_CONFIGMAP")]
    pub kyverno_configmap: String,
    /// Enforce mode in Kubernetes: how long to wait at start for the
    /// cluster's policies; with none by then (and no --policy), the agent
    /// refuses to start rather than allow every image.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "IMAGEWARDEN_POLICY_WAIT")]
    pub policy_wait: std::time::Duration,
    /// How often Kyverno's ConfigMap is read again.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "IMAGEWARDEN_KYVERNO_CONFIG_INTERVAL")]
    pub kyverno_config_interval: std::time::Duration,
    /// Write wgpolicyk8s.io/v1alpha2 PolicyReports with the runtime findings.
    #[arg(long, env = "IMAGEWARDEN_POLICY_REPORTS")]
    pub policy_reports: bool,
    /// Mark a cgroup (v2 directory path) as denied. Repeatable. For tests and
    /// manual quarantine of a workload without a container runtime.
    #[arg(
        long = "deny-cgroup",
        env = "IMAGEWARDEN_DENY_CGROUP",
        value_delimiter = ','
    )]
    pub deny_cgroups: Vec<PathBuf>,
}

/// Parses `500ms`, `2s`, `1m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500ms").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("2s").unwrap(),
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            parse_duration("3").unwrap(),
            std::time::Duration::from_secs(3)
        );
        assert_eq!(
            parse_duration("1m").unwrap(),
            std::time::Duration::from_secs(60)
        );
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
