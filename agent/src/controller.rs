//! The node agent's decision loop: runtime sources -> inventory -> policy
//! verdicts -> kernel verdict maps -> actions and findings.
//!
//! One task owns the inventory and the kernel maps; everything reaches it
//! through bounded channels, so decisions are made in one order and never
//! race each other.
//!
//! How a container started while the agent runs never executes its
//! entrypoint when its image is denied (issue: no race):
//! 1. containerd announces the container (`/containers/create`) with its
//!    OCI spec before its task exists. Its `linux.cgroupsPath` gives the
//!    names of the cgroup directory runc will create; the verdict is stored
//!    under those names (`NAME_VERDICTS`), so the first exec in the new
//!    cgroup (runc init exec'ing the entrypoint) already finds it.
//! 2. Should the announcement come late (agent busy, event lost), a cgroup
//!    whose name holds a container id (64 hex digits) and has no verdict is
//!    held: the kernel stops the exec'ing process (SIGSTOP) and this loop
//!    decides — SIGCONT for an allowed image, cgroup.kill for a denied one,
//!    and cgroup.kill after `hold_timeout` for a container no runtime knows
//!    (fail closed).
//! 3. A container containerd reports in the CRI plugin's namespace
//!    (`k8s.io`) that CRI does not list yet has no Pod and no kind (labels
//!    are not identity): an image the policy allows runs; any other is
//!    pending (HOLD) until CRI confirms it, and judged by its own image
//!    once `hold_timeout` passed without CRI knowing it.
//! 4. Hold parents are cgroup ids (containerd namespaces' cgroups, and
//!    known containers' cgroups, under which a nested runtime's containers
//!    are judged as the outer container).
//!
//! Limits: a container whose cgroup is named without a container id (`ctr
//! run` ids such as `web1`) outside a containerd namespace's cgroup relies
//! on step 1 alone; a container whose spec has no cgroupsPath is recognised
//! only once its task has started.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{hold_parent, CgroupKey};
use imagewarden_policy::{Action, ContainerType, DriftDecision, EvalContext, PolicySet};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    finding::{Attribution, Finding, FindingAction, FindingVerdict, Reason, ReasonKind},
    probes::{
        event::{ExecRecord, KernelVerdict},
        Probes,
    },
    sources::{
        cgroup::{self, cgroup2_dir_of_pid, cgroup_id_of_dir},
        containerd::ContainerdClient,
        cri::CriClient,
        kyverno_config::Exemptions,
        ContainerInfo, ContainerKind, ContainerState, EventKind, RuntimeEvent,
    },
};

/// Capacity of the runtime event channel. Container lifecycle events are
/// rare (a busy node starts a few per second); 1,024 rides out a burst of
/// hundreds. When full, events are dropped, counted, and a resync is forced.
pub const RUNTIME_EVENT_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub enforce: bool,
    pub all_execs: bool,
    /// How long a held (unclassified) container may wait for a decision
    /// before it is killed (enforce mode, fail closed).
    pub hold_timeout: Duration,
    /// Full resync with the runtimes, the safety net under the event streams.
    pub resync_interval: Duration,
    /// The cgroup v2 mount (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    pub cgroup2: PathBuf,
    /// `--deny-exec-drift`: every container refuses fileless and
    /// writable-layer execs, whatever its policy says (enforce mode).
    pub deny_exec_drift: bool,
}

/// What the controller decided about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Kernel verdict: Allow, Deny (enforce rule), Audit (audit rule) or
    /// Hold (pending; see [`judge`]).
    pub kernel: KernelVerdict,
    pub reason: Reason,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub info: ContainerInfo,
    pub key: Option<CgroupKey>,
    pub cgroup_id: Option<u64>,
    pub cgroup_dir: Option<PathBuf>,
    pub decision: Decision,
    /// What the policies say about exec drift in this container.
    pub drift: DriftDecision,
    /// The decision already reported as a finding.
    reported: Option<Decision>,
    killed: bool,
    /// A `killed` container finding was printed.
    kill_reported: bool,
    /// Since when the verdict waits for CRI's word (see [`judge`]).
    pending_since: Option<Instant>,
    /// CRI did not confirm it within the hold timeout: judged by image.
    unconfirmed_final: bool,
    /// When a finding last asked CRI about it (see `on_exec`).
    cri_asked_at: Option<Instant>,
}

impl Entry {
    /// A container not acted on yet: no cgroup known, nothing reported.
    fn new(info: ContainerInfo, decision: Decision, drift: DriftDecision) -> Self {
        Entry {
            info,
            key: None,
            cgroup_id: None,
            cgroup_dir: None,
            decision,
            drift,
            reported: None,
            killed: false,
            kill_reported: false,
            pending_since: None,
            unconfirmed_final: false,
            cri_asked_at: None,
        }
    }

    fn attribution(&self) -> Attribution {
        Attribution {
            container_id: Some(self.info.id.clone()),
            image: self
                .info
                .image_as_written
                .clone()
                .filter(|i| !is_image_id(i))
                .or_else(|| self.info.image_ref.clone()),
            image_digest: self
                .info
                .image_ref
                .as_ref()
                .and_then(|r| r.split_once('@').map(|(_, d)| d.to_string())),
            pod: self.info.pod_name.clone(),
            namespace: self.info.pod_namespace.clone(),
            runtime_namespace: self.info.namespace.clone(),
            reason: Some(self.decision.reason.clone()),
        }
    }

    /// The kernel's `DRIFT_POLICY` bits for this container: what it refuses
    /// in enforce mode.
    fn drift_bits(&self) -> u32 {
        use agent_common::drift_policy::{DENY_DRIFT, DENY_FILELESS};
        let on = |a: Option<Action>, bit: u32| if a == Some(Action::Enforce) { bit } else { 0 };
        on(self.drift.fileless, DENY_FILELESS) | on(self.drift.writable_layer, DENY_DRIFT)
    }
}

/// The policy context of a container: its Pod's container type, namespace
/// and labels when the Pod is known, else a plain container of the
/// namespace its runtime reports.
fn eval_context<'a>(info: &'a ContainerInfo, pod: Option<&'a PodContext>) -> EvalContext<'a> {
    match pod {
        Some(p) => EvalContext::new(p.container_type)
            .with_namespace(Some(&p.namespace))
            .with_labels(&p.labels)
            .with_namespace_labels(p.namespace_labels.as_ref()),
        None => {
            EvalContext::new(ContainerType::Container).with_namespace(info.pod_namespace.as_deref())
        }
    }
}

/// What the policies (and `--deny-exec-drift`) say about exec drift in a
/// container. What admission excluded is reported, never stopped: an
/// Enforce there becomes an Audit.
pub fn drift_with(
    policy: &PolicySet,
    info: &ContainerInfo,
    pod: Option<&PodContext>,
    exempt: &Exemptions,
    deny_flag: bool,
) -> DriftDecision {
    let mut d = if policy.has_drift_rules() {
        policy.exec_drift(&eval_context(info, pod))
    } else {
        DriftDecision::default()
    };
    if deny_flag {
        d.merge(&DriftDecision::deny_all(
            Action::Enforce,
            "flag --deny-exec-drift",
        ));
    }
    let ns = pod
        .map(|p| p.namespace.as_str())
        .or(info.pod_namespace.as_deref());
    if ns
        .and_then(|ns| exempt.exempt(ns, info.pod_name.as_deref()))
        .is_some()
    {
        for a in [&mut d.fileless, &mut d.writable_layer] {
            if *a == Some(Action::Enforce) {
                *a = Some(Action::Audit);
            }
        }
    }
    d
}

/// The cgroup v2 directory names (parent, leaf) that runc will create for
/// an OCI `linux.cgroupsPath`: `/a/b/id` (cgroupfs driver) or
/// `slice:prefix:name` (systemd driver: `slice/prefix-name.scope`).
pub fn cgroup_key_of_path(path: &str) -> Option<CgroupKey> {
    if path.is_empty() {
        return None;
    }
    if !path.starts_with('/') {
        let parts: Vec<&str> = path.split(':').collect();
        if parts.len() == 3 {
            let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
            if name.is_empty() {
                return None;
            }
            let leaf = if name.ends_with(".slice") {
                name.to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            let parent = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            return Some(CgroupKey::new(parent.as_bytes(), leaf.as_bytes()));
        }
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let leaf = comps.last()?;
    let parent = if comps.len() >= 2 {
        comps[comps.len() - 2]
    } else {
        ""
    };
    Some(CgroupKey::new(parent.as_bytes(), leaf.as_bytes()))
}

/// What the Kubernetes sources say about a runtime container, found through
/// the Pod identity CRI reports: the image as the Pod spec writes it (what
/// Kyverno matched; for cross-checks only, never the image judged), which
/// kind of container it is, the Pod's namespace and labels.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub image: String,
    pub container_type: ContainerType,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The Namespace's labels (`None`: not known; see
    /// `EvalContext::namespace_labels`).
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

/// Looks a runtime container up in the Pods the agent knows (kube mode).
pub type PodLookup = Box<dyn Fn(&ContainerInfo) -> Option<PodContext> + Send>;

/// An image id (`sha256:<hex>` or bare hex), which a kubelet hands to CRI
/// instead of a name: not an image reference to judge.
pub fn is_image_id(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The policy's answer for a container, as a kernel verdict.
pub fn decide(policy: &PolicySet, info: &ContainerInfo, pod: Option<&PodContext>) -> Decision {
    decide_with(policy, info, pod, &Exemptions::default())
}

/// [`decide`], where what admission excluded (exempt namespaces, Kyverno's
/// resource filters) is never stopped: an image the policy denies there gets
/// the AUDIT verdict (reported, not killed).
pub fn decide_with(
    policy: &PolicySet,
    info: &ContainerInfo,
    pod: Option<&PodContext>,
    exempt: &Exemptions,
) -> Decision {
    let mut d = decide_policy(policy, info, pod);
    if d.kernel == KernelVerdict::Deny {
        let ns = pod
            .map(|p| p.namespace.as_str())
            .or(info.pod_namespace.as_deref());
        if let Some(why) = ns.and_then(|ns| exempt.exempt(ns, info.pod_name.as_deref())) {
            d.kernel = KernelVerdict::Audit;
            d.reason.text = format!("{}; not stopped: {why}", d.reason.text);
        }
    }
    d
}

fn decide_policy(policy: &PolicySet, info: &ContainerInfo, pod: Option<&PodContext>) -> Decision {
    if info.kind == Some(ContainerKind::Sandbox) {
        // Kyverno never checks the pause image either: it is node
        // configuration (containerd's sandbox_image), not a workload.
        return Decision {
            kernel: KernelVerdict::Allow,
            reason: Reason::new(ReasonKind::Allowed, "allowed: pod sandbox"),
        };
    }
    // The image the runtime runs, never the Pod spec's (issue 13, case 6):
    // a Pod found through forged or stale identity must not lend its image.
    let image = info
        .image_as_written
        .as_deref()
        .filter(|i| !is_image_id(i))
        .or(info.image_ref.as_deref());
    let Some(image) = image else {
        return Decision {
            kernel: KernelVerdict::Deny,
            reason: Reason::new(
                ReasonKind::Unresolved,
                "unresolved: the runtime reports no image name",
            ),
        };
    };
    let v = policy.evaluate(image, &eval_context(info, pod));
    let kernel = if v.allowed {
        KernelVerdict::Allow
    } else if v.action == Action::Enforce {
        KernelVerdict::Deny
    } else {
        KernelVerdict::Audit
    };
    Decision {
        kernel,
        reason: Reason::new(v.kind.into(), v.reason),
    }
}

fn entry_key(info: &ContainerInfo) -> String {
    format!("{}/{}", info.namespace.as_deref().unwrap_or(""), info.id)
}

/// The containerd namespace of Kubernetes' containers (containerd's CRI plugin).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Identity comes from CRI only (issue 13, case 6): anyone with
/// containerd's API can set `io.cri-containerd.kind=sandbox` or
/// `io.kubernetes.pod.*` on a container, in any namespace, `k8s.io`
/// included. A report from containerd's own API carries no kind and no Pod
/// (the source sets none; this drops any that slipped in), so until CRI
/// lists the container it is judged by the image it runs, as a plain
/// container of no namespace.
pub fn distrust_labels(info: &mut ContainerInfo) {
    if info.runtime != "containerd" {
        return;
    }
    info.kind = None;
    info.pod_name = None;
    info.pod_namespace = None;
    info.pod_uid = None;
    info.container_name = None;
    info.sandbox_id = None;
}

/// Whether a container must wait for CRI's word before its verdict is final:
/// containerd reports it in the CRI plugin's namespace, CRI has not listed
/// it (yet) and a CRI client is there to ask. Kubernetes' containers are
/// announced by containerd before CRI lists them (a sandbox only once its
/// pause process runs), so judging them by image alone at once would kill
/// a sandbox or an exempt Pod's container before CRI could say what it is.
pub fn awaits_cri(info: &ContainerInfo, cri_configured: bool) -> bool {
    cri_configured
        && info.runtime == "containerd"
        && info.kind.is_none()
        && info.namespace.as_deref() == Some(CRI_NAMESPACE)
}

/// The verdict of a container, and whether it is pending (HOLD: the kernel
/// stops its execs until CRI confirms it). A container awaiting CRI whose
/// image the policy allows is allowed at once (nothing to lose); one whose
/// image it does not allow is pending until CRI knows it, and judged by its
/// image for good once `unconfirmed_final` (the hold timeout passed and CRI
/// still does not know it): never allowed for a label.
///
/// `node_sandbox_image`: the container runs one of the node's pod sandbox
/// (pause) images as CRI configures them. Such a container awaiting CRI is
/// allowed by the image it runs (a sandbox's pause process runs before CRI
/// lists the sandbox, and may exec before its task is even started):
/// node configuration, which Kyverno never checks — a forged label buys
/// nothing, a forged container running the pause image gets the pause
/// image.
pub fn judge(
    policy: &PolicySet,
    info: &ContainerInfo,
    pod: Option<&PodContext>,
    exempt: &Exemptions,
    awaiting_cri: bool,
    unconfirmed_final: bool,
    node_sandbox_image: bool,
) -> (Decision, bool) {
    if awaiting_cri && node_sandbox_image {
        return (
            Decision {
                kernel: KernelVerdict::Allow,
                reason: Reason::new(
                    ReasonKind::Allowed,
                    "allowed: the node's pod sandbox image (CRI's sandbox image, node configuration)",
                ),
            },
            false,
        );
    }
    let pod = if awaiting_cri { None } else { pod };
    let mut d = decide_with(policy, info, pod, exempt);
    if !awaiting_cri || d.kernel == KernelVerdict::Allow {
        return (d, false);
    }
    if !unconfirmed_final {
        return (
            Decision {
                kernel: KernelVerdict::Hold,
                reason: Reason::new(
                    ReasonKind::Pending,
                    format!(
                        "pending: in containerd's {CRI_NAMESPACE} namespace but not (yet) known to CRI; held until CRI confirms it, else judged by the image it runs ({})",
                        d.reason.text
                    ),
                ),
            },
            true,
        );
    }
    d.reason.text = format!(
        "{}; in containerd's {CRI_NAMESPACE} namespace but unknown to CRI: judged by the image it runs",
        d.reason.text
    );
    (d, false)
}

/// Fills fields one report lacks from another report of the same container.
fn merge(into: &mut ContainerInfo, from: &ContainerInfo) {
    macro_rules! fill {
        ($($f:ident),*) => { $( if into.$f.is_none() { into.$f = from.$f.clone(); } )* };
    }
    fill!(
        sandbox_id,
        pod_name,
        pod_namespace,
        pod_uid,
        container_name,
        kind,
        image_as_written,
        image_ref,
        image_id,
        pid,
        cgroup_path
    );
    if into.state == ContainerState::Unknown {
        into.state = from.state;
    }
    for (k, v) in &from.labels {
        into.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Whether a task with `pid` is another task than the one `e` knows (a
/// restart: it runs in a new cgroup with a new id): another pid, or the
/// old task exited; or the old task is gone without its Exited event
/// having been kept (a resync in between reported the container with no
/// task: containerd lists it as created) and `pid` runs in another cgroup
/// than the known one. Seen in the 6.12 guest: the restarted task kept
/// the old cgroup id, and its drift exec was not refused.
fn new_task(cgroup2: &Path, e: &Entry, pid: u32) -> bool {
    if e.info.pid.is_some_and(|p| p != pid) || e.info.state == ContainerState::Exited {
        return true;
    }
    e.info.pid.is_none()
        && e.cgroup_id.is_some_and(|old| {
            cgroup2_dir_of_pid(cgroup2, pid)
                .ok()
                .and_then(|d| cgroup_id_of_dir(&d).ok())
                .is_some_and(|now| now != old)
        })
}

/// Kills every process of a cgroup v2 directory: `cgroup.kill` (Linux 5.14+)
/// where it exists, else SIGKILL to each pid of `cgroup.procs`.
pub fn kill_cgroup(dir: &Path) -> std::io::Result<()> {
    match std::fs::write(dir.join("cgroup.kill"), b"1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

struct Held {
    pids: Vec<u32>,
    since: Instant,
}

/// Statistics the loop keeps (exposed in logs and, later, metrics).
#[derive(Debug, Default, Clone)]
pub struct ControllerStats {
    pub resyncs: u64,
    pub resync_errors: u64,
    pub containers_killed: u64,
    pub holds_released: u64,
    pub holds_killed: u64,
    /// Holds found in the kernel's HELD map whose event never arrived.
    pub holds_adopted: u64,
    /// Exec-drift findings dropped from the full Event queue.
    pub drift_findings_dropped: u64,
    /// Wall time of the last resync's parts, in ms: containerd listing,
    /// CRI listing, and applying the verdicts (policy + kernel maps).
    pub last_resync_ms: [u64; 3],
    /// Verbose CRI status calls of the last resync: only for the objects
    /// containerd's listing did not describe (none with no containerd
    /// client is a CRI-O node: all of them).
    pub last_resync_cri_verbose: u64,
}

pub struct Controller {
    cfg: ControllerConfig,
    probes: Probes,
    policy: Arc<PolicySet>,
    /// Boxed: an `Entry` is ~0.8 KiB, and the table keeps up to twice as
    /// many slots as entries (measured: 1.5 MiB of table for 997
    /// containers unboxed, docs/benchmarks.md round 6).
    entries: HashMap<String, Box<Entry>>,
    by_cgroup: HashMap<u64, String>,
    held: HashMap<u64, Held>,
    containerd: Option<ContainerdClient>,
    cri: Option<CriClient>,
    out: Box<dyn FnMut(&Finding) + Send>,
    pub stats: ControllerStats,
    /// Extra attributions for cgroups that are not containers (--deny-cgroup).
    pub static_attributions: HashMap<u64, Attribution>,
    pub metrics: Option<crate::metrics::Metrics>,
    /// Kubernetes mode: the Pod spec behind a runtime container.
    pub pod_lookup: Option<PodLookup>,
    /// containerd namespace -> the cgroup id of its directory, marked
    /// NAMESPACE in the kernel's HOLD_PARENTS (by id: issue 13, case 9).
    hold_parents: HashMap<String, u64>,
    /// What admission excluded: never stopped, only reported.
    exemptions: Arc<Exemptions>,
    /// Kubernetes mode: fileless and drift exec findings waiting for their
    /// Event (bounded; the oldest is dropped and counted).
    drift_findings: Option<std::collections::VecDeque<Finding>>,
    /// Image ids of the node's pod sandbox images (CRI's config), and
    /// when they were last asked for.
    sandbox_images: std::collections::HashSet<String>,
    sandbox_images_at: Option<Instant>,
}

/// How often a finding may ask CRI about a container it does not list.
const CRI_ASK_INTERVAL: Duration = Duration::from_secs(1);

/// Bound of the queue of exec-drift findings waiting for their Event.
pub const DRIFT_FINDINGS_CAPACITY: usize = 256;

impl Controller {
    pub fn new(
        cfg: ControllerConfig,
        probes: Probes,
        policy: Arc<PolicySet>,
        containerd: Option<ContainerdClient>,
        cri: Option<CriClient>,
        out: Box<dyn FnMut(&Finding) + Send>,
    ) -> Self {
        Controller {
            cfg,
            probes,
            policy,
            entries: HashMap::new(),
            by_cgroup: HashMap::new(),
            held: HashMap::new(),
            containerd,
            cri,
            out,
            stats: ControllerStats::default(),
            static_attributions: HashMap::new(),
            metrics: None,
            pod_lookup: None,
            hold_parents: Default::default(),
            exemptions: Arc::new(Exemptions::default()),
            drift_findings: None,
            sandbox_images: Default::default(),
            sandbox_images_at: None,
        }
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|e| &**e)
    }

    /// Lists every container of every runtime and namespace and applies
    /// the policy to each. Containers that disappeared are forgotten.
    pub async fn resync(&mut self) {
        self.stats.resyncs += 1;
        let t0 = std::time::Instant::now();
        let mut seen: HashMap<String, ContainerInfo> = HashMap::new();
        let mut complete = true;
        use crate::metrics::Source;
        // Children of a containerd namespace's cgroup are its containers:
        // hold any the agent has not classified yet (kernel side).
        if let Some(c) = &self.containerd {
            if let Ok(nss) = c.namespaces().await {
                for ns in nss {
                    self.watch_namespace_cgroup(&ns);
                }
            }
        }
        if let Some(c) = &self.containerd {
            let r = c.list_all().await;
            self.source_up(Source::RuntimeContainerd, r.is_ok());
            match r {
                Ok(list) => {
                    for i in list {
                        seen.insert(entry_key(&i), i);
                    }
                }
                Err(e) => {
                    complete = false;
                    self.stats.resync_errors += 1;
                    warn!("containerd resync failed: {e}");
                }
            }
        }
        let t_containerd = t0.elapsed();
        if let Some(c) = &self.cri {
            // Where containerd's listing (just above) describes a CRI
            // object, the verbose status call is skipped (issue 16).
            let verbose_before = c.verbose_calls();
            let r = c
                .list_all_described(|id| seen.get(&format!("{CRI_NAMESPACE}/{id}")))
                .await;
            self.stats.last_resync_cri_verbose = c.verbose_calls() - verbose_before;
            self.source_up(Source::RuntimeCri, r.is_ok());
            match r {
                Ok(list) => {
                    for i in list {
                        match seen.get_mut(&entry_key(&i)) {
                            Some(existing) => {
                                // CRI knows the pod; containerd the image digest.
                                let mut cri = i;
                                merge(&mut cri, existing);
                                *existing = cri;
                            }
                            None => {
                                seen.insert(entry_key(&i), i);
                            }
                        }
                    }
                }
                Err(e) => {
                    complete = false;
                    self.stats.resync_errors += 1;
                    warn!("CRI resync failed: {e}");
                }
            }
        }
        let t_cri = t0.elapsed();
        if complete {
            let gone: Vec<String> = self
                .entries
                .keys()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect();
            for k in gone {
                self.forget(&k);
            }
        }
        self.refresh_sandbox_images(true).await;
        let n = seen.len();
        for (_, info) in seen {
            self.upsert(info);
        }
        self.update_gauges();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        self.stats.last_resync_ms = [
            ms(t_containerd),
            ms(t_cri - t_containerd),
            ms(t0.elapsed() - t_cri),
        ];
        debug!(
            entries = n,
            ms = ?self.stats.last_resync_ms,
            cri_verbose = self.stats.last_resync_cri_verbose,
            "resync (containerd, CRI, apply)"
        );
        // What the listing freed goes back now, whatever asked for this
        // resync (the timer, a lost event stream, a held process nobody
        // knew): left in the heap, a resync's garbage stayed in the RSS
        // (+6 MiB at 1,000 containers, docs/benchmarks.md round 6).
        crate::memory::trim();
    }

    /// Marks the cgroup of a containerd namespace (`<cgroup2>/<namespace>`,
    /// where `ctr run` and nerdctl put its containers with the cgroupfs
    /// driver) as a hold parent, by the directory's cgroup id: a cgroup
    /// elsewhere that is merely *named* like a namespace is never held for
    /// it (issue 13, case 9). The directory is created when missing, so the
    /// id exists before the namespace's first container; checked again on
    /// every resync and runtime event of the namespace, so a directory
    /// removed and made again is followed.
    fn watch_namespace_cgroup(&mut self, ns: &str) {
        if ns.is_empty() || ns.len() > 76 || ns.contains('/') || ns.starts_with('.') {
            return;
        }
        let dir = self.cfg.cgroup2.join(ns);
        let mut id = cgroup_id_of_dir(&dir).ok();
        if id.is_none() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    debug!(namespace = ns, dir = %dir.display(), "created the namespace's cgroup")
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    debug!(namespace = ns, dir = %dir.display(), "cannot create the namespace's cgroup: {e}")
                }
            }
            id = cgroup_id_of_dir(&dir).ok();
        }
        let Some(id) = id else { return };
        let old = self.hold_parents.insert(ns.to_string(), id);
        if old == Some(id) {
            return;
        }
        if let Some(old) = old {
            let _ = self.probes.remove_hold_parent(old);
        }
        if let Err(e) = self.probes.add_hold_parent(id, hold_parent::NAMESPACE) {
            warn!(namespace = %ns, "hold parent: {e}");
        }
    }

    /// Marks a container's cgroup so that a cgroup below it no verdict
    /// names (a nested runtime's container) is judged as this container.
    fn mark_container_cgroup(&mut self, cgroup_id: u64) {
        if let Err(e) = self
            .probes
            .add_hold_parent(cgroup_id, hold_parent::CONTAINER)
        {
            warn!(cgroup_id, "container hold parent: {e}");
        }
    }

    /// The known container whose cgroup is an ancestor of `dir` (the
    /// outermost), with its verdict: a nested runtime's container is judged
    /// as the container it runs in.
    fn outer_container_of(&self, dir: &Path) -> Option<(String, KernelVerdict)> {
        let mut found = None;
        let mut d = dir.parent();
        while let Some(p) = d {
            if !p.starts_with(&self.cfg.cgroup2) || p == self.cfg.cgroup2 {
                break;
            }
            if let Ok(id) = cgroup_id_of_dir(p) {
                if let Some(k) = self.by_cgroup.get(&id) {
                    if let Some(e) = self.entries.get(k) {
                        found = Some((k.clone(), e.decision.kernel));
                    }
                }
            }
            d = p.parent();
        }
        found
    }

    fn source_up(&self, s: crate::metrics::Source, up: bool) {
        if let Some(m) = &self.metrics {
            m.set_source_up(s, up);
        }
    }

    fn update_gauges(&self) {
        use crate::metrics::Verdict as V;
        let Some(m) = &self.metrics else { return };
        let count = |k: KernelVerdict| {
            self.entries
                .values()
                .filter(|e| e.decision.kernel == k)
                .count() as u64
        };
        m.set_containers(V::Allow, count(KernelVerdict::Allow));
        m.set_containers(
            V::Deny,
            count(KernelVerdict::Deny) + count(KernelVerdict::Audit),
        );
    }

    fn count_kill(&self) {
        if let Some(m) = &self.metrics {
            m.kill(crate::metrics::KillMechanism::CgroupKill);
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            if let Some(k) = &e.key {
                let _ = self.probes.clear_name_verdict(k);
            }
            if let Some(id) = e.cgroup_id {
                self.forget_cgroup(id);
            }
            debug!(container = %e.info.id, "container forgotten");
        }
    }

    /// A container's cgroup id that no longer is one (the container is
    /// gone, or its task restarted in a new cgroup): its verdict, drift
    /// policy and hold-parent mark go.
    fn forget_cgroup(&mut self, id: u64) {
        let _ = self.probes.clear_verdict(id);
        let _ = self.probes.remove_hold_parent(id);
        self.by_cgroup.remove(&id);
    }

    /// Records (or refreshes) a container and pushes its verdict into the kernel.
    pub fn upsert(&mut self, mut info: ContainerInfo) {
        distrust_labels(&mut info);
        let key = entry_key(&info);
        // What an earlier report said (CRI's identity among it) fills what
        // this one lacks, before the container is judged.
        let unconfirmed_final = match self.entries.get(&key) {
            Some(e) => {
                merge(&mut info, &e.info);
                e.unconfirmed_final
            }
            None => false,
        };
        // The labels have done their work (the sources read CRI's
        // identity from them); nothing reads a known container's labels,
        // and they were a third of its memory (docs/benchmarks.md, round 6).
        info.labels = BTreeMap::new();
        let (decision, drift, pending) = self.judge_info(&info, unconfirmed_final);
        // A new entry's info, decision and drift are set below (a blank
        // info has no pid and no state: a new container is no restart).
        let e = self.entries.entry(key.clone()).or_insert_with(|| {
            Box::new(Entry::new(
                ContainerInfo::new(String::new(), info.runtime),
                Decision {
                    kernel: KernelVerdict::Hold,
                    reason: Reason::new(ReasonKind::Pending, String::new()),
                },
                DriftDecision::default(),
            ))
        });
        // Another task of the same container (its events were missed, or a
        // resync reports it between its Exited and its Started): its
        // cgroup is new too.
        let restarted = info
            .pid
            .is_some_and(|pid| new_task(&self.cfg.cgroup2, e, pid))
            || (e.info.state == ContainerState::Exited && info.state == ContainerState::Running);
        let stale = if restarted { e.cgroup_id.take() } else { None };
        if stale.is_some() {
            e.cgroup_dir = None;
        }
        e.info = info;
        e.decision = decision;
        e.drift = drift;
        if pending {
            e.pending_since.get_or_insert_with(Instant::now);
        } else {
            e.pending_since = None;
        }
        if let Some(old) = stale {
            self.forget_cgroup(old);
        }
        self.apply(&key);
    }

    /// Asks CRI for the node's sandbox image ids: always when `force`,
    /// else at most once a second (a pending container's image may be a
    /// sandbox image pulled since).
    async fn refresh_sandbox_images(&mut self, force: bool) {
        let Some(c) = &self.cri else { return };
        if !force
            && self
                .sandbox_images_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.sandbox_images_at = Some(Instant::now());
        match c.sandbox_image_ids().await {
            Ok(ids) => {
                let ids: std::collections::HashSet<String> = ids.into_iter().collect();
                if ids != self.sandbox_images {
                    info!(images = ?ids, "the node's pod sandbox images (CRI)");
                    self.sandbox_images = ids;
                }
            }
            Err(e) => debug!("CRI sandbox images: {e}"),
        }
    }

    fn is_node_sandbox_image(&self, info: &ContainerInfo) -> bool {
        info.image_id
            .as_ref()
            .is_some_and(|id| self.sandbox_images.contains(id))
    }

    /// The container's decision, its exec-drift policy, and whether it
    /// waits for CRI's confirmation.
    fn judge_info(
        &self,
        info: &ContainerInfo,
        unconfirmed_final: bool,
    ) -> (Decision, DriftDecision, bool) {
        let awaiting = awaits_cri(info, self.cri.is_some());
        let pod = if awaiting {
            None
        } else {
            self.pod_lookup.as_ref().and_then(|f| f(info))
        };
        let (d, pending) = judge(
            &self.policy,
            info,
            pod.as_ref(),
            &self.exemptions,
            awaiting,
            unconfirmed_final,
            self.is_node_sandbox_image(info),
        );
        let drift = drift_with(
            &self.policy,
            info,
            pod.as_ref(),
            &self.exemptions,
            self.cfg.deny_exec_drift,
        );
        (d, drift, pending)
    }

    /// Containers waiting for CRI's word: asks CRI about each (one unary
    /// call each; such containers are rare: in `k8s.io`, not listed by CRI
    /// yet, of an image the policy does not allow). Confirmed ones are
    /// judged with CRI's identity; those CRI still does not know after
    /// `hold_timeout` (or at once when `force`) are judged by their image.
    /// Asks CRI about one container (by its exact id); what CRI says is
    /// upserted (its identity replaces what the runtime's report lacks).
    /// Returns whether CRI knows the container.
    async fn confirm_with_cri(&mut self, id: &str, what: &str) -> bool {
        let looked = match &self.cri {
            Some(c) => c.lookup(id).await,
            None => return false,
        };
        match looked {
            Ok(Some(mut cri)) => {
                cri.namespace = Some(CRI_NAMESPACE.to_string());
                debug!(container = %id, "CRI confirmed {what}");
                self.upsert(cri);
                true
            }
            Ok(None) => false,
            Err(e) => {
                warn!(container = %id, "CRI lookup of {what}: {e}");
                false
            }
        }
    }

    async fn settle_pending(&mut self, only: Option<&str>, force: bool) {
        let keys: Vec<(String, String, bool)> = self
            .entries
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
            .filter_map(|(k, e)| {
                let since = e.pending_since?;
                let expired = force || since.elapsed() >= self.cfg.hold_timeout;
                Some((k.clone(), e.info.id.clone(), expired))
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        self.refresh_sandbox_images(false).await;
        for (key, id, expired) in keys {
            if let Some(info) = self.entries.get(&key).map(|e| e.info.clone()) {
                if self.is_node_sandbox_image(&info) {
                    self.upsert(info);
                    continue;
                }
            }
            if self.confirm_with_cri(&id, "a pending container").await {
                continue;
            }
            if expired {
                let Some(e) = self.entries.get_mut(&key) else {
                    continue;
                };
                e.unconfirmed_final = true;
                let info = e.info.clone();
                let (d, drift, _) = self.judge_info(&info, true);
                if let Some(e) = self.entries.get_mut(&key) {
                    e.decision = d;
                    e.drift = drift;
                    e.pending_since = None;
                }
                self.apply(&key);
            }
        }
    }

    /// Kernel maps, kills and findings for one entry.
    fn apply(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let v = e.decision.kernel;
        if e.key.is_none() {
            e.key = e.info.cgroup_path.as_deref().and_then(cgroup_key_of_path);
        }
        debug!(container = %e.info.id, verdict = v.raw(), key = e.key.is_some(), cgroup_id = ?e.cgroup_id, pid = ?e.info.pid, "apply");
        if let Some(k) = &e.key {
            if let Err(err) = self.probes.set_name_verdict(k, v.raw()) {
                warn!(container = %e.info.id, "kernel name verdict: {err}");
            }
        }
        if e.cgroup_id.is_none() && e.info.state != ContainerState::Exited {
            if let Some(pid) = e.info.pid {
                if let Ok(dir) = cgroup2_dir_of_pid(&self.cfg.cgroup2, pid) {
                    if let Ok(id) = cgroup_id_of_dir(&dir) {
                        e.cgroup_id = Some(id);
                        e.cgroup_dir = Some(dir);
                    }
                }
            }
        }
        if let Some(id) = e.cgroup_id {
            if let Err(err) = self.probes.set_verdict(id, v.raw()) {
                warn!(container = %e.info.id, "kernel verdict: {err}");
            }
            if let Err(err) = self.probes.set_drift_policy(id, e.drift_bits()) {
                warn!(container = %e.info.id, "kernel drift policy: {err}");
            }
            debug!(container = %e.info.id, cgroup_id = id, verdict = v.raw(), drift = e.drift_bits(), "kernel maps set by id");
            if let Err(err) = self.probes.add_hold_parent(id, hold_parent::CONTAINER) {
                warn!(container = %e.info.id, "container hold parent: {err}");
            }
            self.by_cgroup.insert(id, key.to_string());
        }
        let denied = v == KernelVerdict::Deny;
        let running = e.info.state == ContainerState::Running || e.info.pid.is_some();
        let mut action = if v == KernelVerdict::Allow {
            FindingAction::None
        } else {
            FindingAction::Alerted
        };
        if denied && self.cfg.enforce && running && !e.killed {
            if let Some(dir) = &e.cgroup_dir {
                match kill_cgroup(dir) {
                    Ok(()) => {
                        e.killed = true;
                        self.stats.containers_killed += 1;
                        if let Some(m) = &self.metrics {
                            m.kill(crate::metrics::KillMechanism::CgroupKill);
                        }
                        action = FindingAction::Killed;
                    }
                    Err(err) => warn!(container = %e.info.id, "cgroup.kill: {err}"),
                }
            }
        } else if e.killed {
            action = FindingAction::Killed;
        }
        let newly_killed = action == FindingAction::Killed && !e.kill_reported;
        let pending = v == KernelVerdict::Hold;
        if !pending && (e.reported.as_ref() != Some(&e.decision) || newly_killed) {
            e.kill_reported |= action == FindingAction::Killed;
            let show = v != KernelVerdict::Allow || self.cfg.all_execs;
            if show {
                let f = Finding::container(
                    if v == KernelVerdict::Allow {
                        FindingVerdict::Allow
                    } else {
                        FindingVerdict::Deny
                    },
                    action,
                    e.decision.reason.clone(),
                    e.info.pid,
                    e.cgroup_id,
                    e.attribution(),
                );
                (self.out)(&f);
            }
            e.reported = Some(e.decision.clone());
        }
        // A held exec in this cgroup can be decided now (unless the
        // container itself still waits for CRI).
        if let Some(id) = e.cgroup_id.filter(|_| !pending) {
            if self.held.contains_key(&id) {
                self.release(id, v);
            }
        }
    }

    /// A held cgroup's fate: continue (allow/audit) or kill (deny).
    fn release(&mut self, cgroup_id: u64, v: KernelVerdict) {
        let Some(h) = self.held.remove(&cgroup_id) else {
            return;
        };
        for pid in &h.pids {
            self.probes.forget_held(*pid);
        }
        if v == KernelVerdict::Deny && self.cfg.enforce {
            let dir = self
                .by_cgroup
                .get(&cgroup_id)
                .and_then(|k| self.entries.get(k))
                .and_then(|e| e.cgroup_dir.clone());
            let killed = match dir {
                Some(d) => kill_cgroup(&d).is_ok(),
                None => false,
            };
            if !killed {
                for pid in &h.pids {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                }
            }
            self.stats.holds_killed += 1;
            self.count_kill();
        } else {
            for pid in &h.pids {
                // SAFETY: plain syscall; the pid was stopped by the kernel at exec.
                unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
            }
            self.stats.holds_released += 1;
        }
    }

    /// Handles a runtime lifecycle event.
    pub async fn on_runtime_event(&mut self, ev: RuntimeEvent) {
        debug!(?ev, "runtime event");
        let key = format!(
            "{}/{}",
            ev.namespace.as_deref().unwrap_or(""),
            ev.container_id
        );
        if let Some(ns) = ev
            .namespace
            .as_deref()
            .filter(|_| ev.runtime == "containerd")
        {
            if !self.hold_parents.contains_key(ns) {
                self.watch_namespace_cgroup(ns);
            }
        }
        match ev.kind {
            EventKind::Created | EventKind::Started { .. } => {
                if let EventKind::Started { pid: Some(pid) } = ev.kind {
                    let mut stale = None;
                    if let Some(e) = self.entries.get_mut(&key) {
                        // A restarted task (same container, `ctr tasks
                        // start`) runs in a new cgroup with a new id: the
                        // old id's entries go, the new id is learnt below.
                        if new_task(&self.cfg.cgroup2, e, pid) {
                            stale = e.cgroup_id.take();
                            if stale.is_some() {
                                e.cgroup_dir = None;
                            }
                        }
                    }
                    if let Some(old) = stale {
                        self.forget_cgroup(old);
                    }
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.info.pid = Some(pid);
                        e.info.state = ContainerState::Running;
                        self.apply(&key);
                        return;
                    }
                }
                self.fetch_one(ev.namespace.as_deref(), &ev.container_id)
                    .await;
                if let EventKind::Started { pid: Some(pid) } = ev.kind {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.info.pid = Some(pid);
                        e.info.state = ContainerState::Running;
                        self.apply(&key);
                    }
                }
            }
            EventKind::Exited { .. } => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.info.state = ContainerState::Exited;
                    e.info.pid = None;
                }
            }
            EventKind::Deleted => self.forget(&key),
        }
    }

    /// Asks the runtime about one container (by listing its namespace).
    async fn fetch_one(&mut self, ns: Option<&str>, id: &str) {
        let Some(c) = &self.containerd else { return };
        let Some(ns) = ns else { return };
        match c.list_containers(ns).await {
            Ok(list) => {
                if let Some(info) = list.into_iter().find(|i| i.id == id) {
                    if awaits_cri(&info, self.cri.is_some()) && !self.is_node_sandbox_image(&info) {
                        self.refresh_sandbox_images(false).await;
                    }
                    self.upsert(info);
                }
            }
            Err(e) => warn!(
                namespace = ns,
                container = id,
                "containerd lookup failed: {e}"
            ),
        }
    }

    /// Attributes an unknown cgroup id through the names the kernel saw
    /// (the process may be gone already, killed at its first exec).
    fn learn_cgroup(&mut self, cgroup_id: u64) {
        if self.by_cgroup.contains_key(&cgroup_id) {
            return;
        }
        let Some(names) = self.probes.cgroup_names(cgroup_id) else {
            return;
        };
        let Some(k) = self
            .entries
            .iter()
            .find(|(_, e)| e.key.as_ref() == Some(&names))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        if let Some(e) = self.entries.get_mut(&k) {
            e.cgroup_id = Some(cgroup_id);
            if let Some(p) = e.info.cgroup_path.as_deref().filter(|p| p.starts_with('/')) {
                e.cgroup_dir = Some(self.cfg.cgroup2.join(p.trim_start_matches('/')));
            }
        }
        self.by_cgroup.insert(cgroup_id, k);
        self.mark_container_cgroup(cgroup_id);
    }

    /// Handles one exec record from the kernel; prints its finding.
    pub async fn on_exec(&mut self, rec: &ExecRecord) {
        if rec.verdict != KernelVerdict::Unknown {
            self.learn_cgroup(rec.cgroup_id);
        }
        if rec.held {
            self.held
                .entry(rec.cgroup_id)
                .or_insert_with(|| Held {
                    pids: Vec::new(),
                    since: Instant::now(),
                })
                .pids
                .push(rec.tgid);
            self.resolve_held(rec.cgroup_id, rec.tgid).await;
        }
        // Held, then decided while this very exec was handled (killed, or
        // continued): its finding is that decision, not a hold that no later
        // finding would resolve.
        let decided_on_hold = (rec.held && !self.held.contains_key(&rec.cgroup_id))
            .then(|| {
                self.by_cgroup
                    .get(&rec.cgroup_id)
                    .and_then(|k| self.entries.get(k))
                    .map(|e| e.decision.kernel)
            })
            .flatten();
        // A container ran a program that is not its image's: reported
        // whatever the mode and flags (issue 17).
        let drift = rec.in_container && (rec.fileless || rec.drift);
        let print = self.cfg.all_execs
            || matches!(rec.verdict, KernelVerdict::Deny | KernelVerdict::Audit)
            || rec.killed
            || rec.held
            || rec.lsm_denied
            || drift;
        if !print {
            return;
        }
        // A finding names its Pod from CRI only: an allowed k8s.io container
        // CRI has not been asked about yet (it is not pending, so nothing
        // else asks before the next resync) is asked now, at most once per
        // CRI_ASK_INTERVAL.
        let unconfirmed = self
            .by_cgroup
            .get(&rec.cgroup_id)
            .and_then(|k| self.entries.get_mut(k))
            .filter(|e| awaits_cri(&e.info, self.cri.is_some()))
            .filter(|e| {
                e.cri_asked_at
                    .is_none_or(|t| t.elapsed() >= CRI_ASK_INTERVAL)
            })
            .map(|e| {
                e.cri_asked_at = Some(Instant::now());
                e.info.id.clone()
            });
        if let Some(id) = unconfirmed {
            self.confirm_with_cri(&id, "a container with a finding")
                .await;
        }
        let entry = self
            .by_cgroup
            .get(&rec.cgroup_id)
            .and_then(|k| self.entries.get(k));
        let attr = entry
            .map(|e| e.attribution())
            .or_else(|| self.static_attributions.get(&rec.cgroup_id).cloned());
        let mut f = Finding::from_exec(rec, attr.as_ref());
        if drift && matches!(rec.verdict, KernelVerdict::Allow | KernelVerdict::Unknown) {
            f.exec_drift(rec, entry.map(|e| &e.drift));
            if let Some(q) = &mut self.drift_findings {
                if q.len() >= DRIFT_FINDINGS_CAPACITY {
                    q.pop_front();
                    self.stats.drift_findings_dropped += 1;
                }
                q.push_back(f.clone());
            }
        }
        match decided_on_hold {
            Some(KernelVerdict::Deny) if self.cfg.enforce => {
                (f.verdict, f.action) = (FindingVerdict::Deny, FindingAction::Killed)
            }
            Some(KernelVerdict::Deny | KernelVerdict::Audit) => {
                (f.verdict, f.action) = (FindingVerdict::Deny, FindingAction::Alerted)
            }
            Some(KernelVerdict::Allow) => {
                (f.verdict, f.action) = (FindingVerdict::Allow, FindingAction::None)
            }
            _ => {}
        }
        (self.out)(&f);
    }

    /// Holds as the kernel keeps them (its pinned HELD map), not only as
    /// events told: a held process whose ring-buffer event was dropped, or
    /// went to an agent that died or handed over, is adopted here and
    /// decided like any other hold (released, killed, or killed after
    /// `--hold-timeout`). Entries of processes that run again or are gone
    /// are dropped. Called every hold tick; the map is empty when nothing
    /// is held.
    pub async fn scan_kernel_holds(&mut self) {
        for (tgid, cgroup_id) in self.probes.held_processes() {
            if !process_stopped(tgid as i32) {
                self.probes.forget_held(tgid);
                continue;
            }
            let h = self.held.entry(cgroup_id).or_insert_with(|| Held {
                pids: Vec::new(),
                since: Instant::now(),
            });
            if h.pids.contains(&tgid) {
                continue;
            }
            h.pids.push(tgid);
            self.stats.holds_adopted += 1;
            info!(
                tgid,
                cgroup_id, "adopted a hold the kernel kept (its event never reached this agent)"
            );
            self.resolve_held(cgroup_id, tgid).await;
        }
    }

    /// Detaching (uninstall, fail-open exit): nobody will decide what the
    /// kernel holds, and nothing enforces any more, so every held process
    /// runs on. Returns how many were resumed.
    pub fn release_all_holds(&mut self) -> usize {
        let mut pids: Vec<u32> = self.held.drain().flat_map(|(_, h)| h.pids).collect();
        pids.extend(
            self.probes
                .held_processes()
                .into_iter()
                .map(|(tgid, _)| tgid),
        );
        pids.sort_unstable();
        pids.dedup();
        let mut resumed = 0;
        for pid in pids {
            self.probes.forget_held(pid);
            if process_stopped(pid as i32) {
                // SAFETY: plain syscall; the pid was stopped by the kernel at exec.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                resumed += 1;
            }
        }
        resumed
    }

    /// Tries to attribute a held cgroup to a container and decide.
    async fn resolve_held(&mut self, cgroup_id: u64, pid: u32) {
        if let Some(k) = self.by_cgroup.get(&cgroup_id).cloned() {
            if self
                .entries
                .get(&k)
                .is_some_and(|e| e.pending_since.is_some())
            {
                self.settle_pending(Some(&k), false).await;
            }
            if let Some(v) = self.entries.get(&k).map(|e| e.decision.kernel) {
                if v != KernelVerdict::Hold {
                    self.release(cgroup_id, v);
                }
                return;
            }
        }
        // Which container does the process's cgroup name?
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return;
        };
        let Some(cc) = cgroup::resolve_proc_cgroup(&text) else {
            return;
        };
        let dir = cgroup2_dir_of_pid(&self.cfg.cgroup2, pid).ok();
        let mut found = self
            .entries
            .iter()
            .find(|(_, e)| e.info.id == cc.id)
            .map(|(k, _)| k.clone());
        if found.is_none() {
            self.resync().await;
            found = self
                .entries
                .iter()
                .find(|(_, e)| e.info.id == cc.id)
                .map(|(k, _)| k.clone());
        }
        if let Some(k) = found {
            if let Some(e) = self.entries.get_mut(&k) {
                e.cgroup_id = Some(cgroup_id);
                e.cgroup_dir = dir;
            }
            self.apply(&k);
            return;
        }
        // No runtime here knows it: a nested runtime's container (docker in
        // docker, a kind node) is judged as the container it runs in. The
        // kernel does so itself once that container's cgroup is marked;
        // this covers a hold taken before the mark was.
        if let Some((outer, v)) = dir.as_deref().and_then(|d| self.outer_container_of(d)) {
            debug!(cgroup_id, outer = %outer, verdict = v.raw(), "held cgroup is nested in a known container");
            if v != KernelVerdict::Hold {
                let _ = self.probes.set_verdict(cgroup_id, v.raw());
                self.release(cgroup_id, v);
            }
        }
    }

    /// Kills held cgroups that nobody could classify in time (fail closed),
    /// after one last look at the runtimes: an approved container must never
    /// be killed because the agent was slow.
    pub async fn expire_holds(&mut self) {
        self.settle_pending(None, false).await;
        let now = Instant::now();
        let expired: Vec<(u64, Option<u32>)> = self
            .held
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= self.cfg.hold_timeout)
            .map(|(id, h)| (*id, h.pids.first().copied()))
            .collect();
        for (id, pid) in expired {
            if let Some(pid) = pid {
                self.resolve_held(id, pid).await;
            }
            // Held for the whole timeout by a container still waiting for
            // CRI: judged by its image now (a finding that names it).
            if let Some(k) = self.by_cgroup.get(&id).cloned() {
                if self
                    .entries
                    .get(&k)
                    .is_some_and(|e| e.pending_since.is_some())
                {
                    self.settle_pending(Some(&k), true).await;
                }
            }
            let Some(h) = self.held.remove(&id) else {
                continue;
            };
            for pid in &h.pids {
                self.probes.forget_held(*pid);
            }
            let dir = h
                .pids
                .first()
                .and_then(|p| cgroup2_dir_of_pid(&self.cfg.cgroup2, *p).ok());
            let _ = self.probes.set_verdict(id, KernelVerdict::Deny.raw());
            let mut killed = false;
            if let Some(d) = &dir {
                killed = kill_cgroup(d).is_ok();
            }
            if !killed {
                for pid in &h.pids {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                }
            }
            self.stats.holds_killed += 1;
            self.count_kill();
            let reason = Reason::new(
                ReasonKind::Unresolved,
                format!(
                    "unresolved: container cgroup {} not known to any runtime within {:?}; killed (fail closed)",
                    dir.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| id.to_string()),
                    self.cfg.hold_timeout
                ),
            );
            warn!("{reason}");
            (self.out)(&Finding::container(
                FindingVerdict::Deny,
                FindingAction::Killed,
                reason,
                h.pids.first().copied(),
                Some(id),
                Attribution::default(),
            ));
        }
    }

    /// After taking over a dead agent's pinned maps: remove verdicts of
    /// cgroups and names no container has any more, and decide the processes
    /// that were held (stopped) while no agent was there to decide.
    pub fn after_takeover(&mut self) {
        let known_ids: std::collections::HashSet<u64> = self
            .by_cgroup
            .keys()
            .chain(self.static_attributions.keys())
            .copied()
            .collect();
        let mut pruned = 0;
        for id in self.probes.verdict_cgroups() {
            if !known_ids.contains(&id) && self.probes.clear_verdict(id).is_ok() {
                pruned += 1;
            }
        }
        let namespaces: std::collections::HashSet<u64> =
            self.hold_parents.values().copied().collect();
        for (id, _) in self.probes.hold_parents() {
            if !self.by_cgroup.contains_key(&id)
                && !namespaces.contains(&id)
                && self.probes.remove_hold_parent(id).is_ok()
            {
                pruned += 1;
            }
        }
        let known_names: Vec<CgroupKey> = self.entries.values().filter_map(|e| e.key).collect();
        for k in self.probes.verdict_names() {
            if !known_names.contains(&k) && self.probes.clear_name_verdict(&k).is_ok() {
                pruned += 1;
            }
        }
        let mut resumed = 0;
        for e in self.entries.values() {
            let Some(dir) = &e.cgroup_dir else { continue };
            if e.decision.kernel == KernelVerdict::Deny {
                continue; // already killed by apply() in enforce mode
            }
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if process_stopped(pid) {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                    resumed += 1;
                }
            }
        }
        info!(pruned, resumed, "took over a previous agent's pinned state");
    }

    /// New exemptions (Kyverno's ConfigMap changed): every container is decided again.
    pub fn set_exemptions(&mut self, exemptions: Arc<Exemptions>) {
        if *self.exemptions != *exemptions {
            self.exemptions = exemptions;
            self.redecide();
        }
    }

    /// What is known about a cgroup, for a finding.
    pub fn attribution_of(&self, cgroup_id: u64) -> Attribution {
        self.by_cgroup
            .get(&cgroup_id)
            .and_then(|k| self.entries.get(k))
            .map(|e| e.attribution())
            .or_else(|| self.static_attributions.get(&cgroup_id).cloned())
            .unwrap_or_default()
    }

    /// Prints a finding through the controller's sinks.
    pub fn report(&mut self, f: &Finding) {
        (self.out)(f);
    }

    /// The policy in force.
    pub fn policy(&self) -> &PolicySet {
        &self.policy
    }

    /// A new policy (hot reload): every container is decided again.
    pub fn set_policy(&mut self, policy: Arc<PolicySet>) {
        self.policy = policy;
        self.redecide();
    }

    /// Decides every container again (new policy, or new Pod knowledge).
    pub fn redecide(&mut self) {
        let keys: Vec<String> = self.entries.keys().cloned().collect();
        for k in keys {
            let Some(e) = self.entries.get(&k) else {
                continue;
            };
            let (d, drift, pending) = self.judge_info(&e.info, e.unconfirmed_final);
            if d != e.decision || drift != e.drift {
                if let Some(e) = self.entries.get_mut(&k) {
                    e.decision = d;
                    e.drift = drift;
                    if pending {
                        e.pending_since.get_or_insert_with(Instant::now);
                    } else {
                        e.pending_since = None;
                    }
                }
                self.apply(&k);
            }
        }
        self.update_gauges();
    }

    /// Kubernetes mode: keep fileless and drift exec findings for
    /// [`Controller::take_drift_findings`] (their Events).
    pub fn queue_drift_findings(&mut self) {
        self.drift_findings.get_or_insert_with(Default::default);
    }

    /// The fileless and drift exec findings since the last call.
    pub fn take_drift_findings(&mut self) -> Vec<Finding> {
        self.drift_findings
            .as_mut()
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Every container the runtimes reported (for the Kubernetes cross-checks).
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.entries.values().map(|e| e.info.clone()).collect()
    }

    /// Whether the controller knows (and so has judged) this container.
    pub fn knows(&self, container_id: &str) -> bool {
        self.entries.values().any(|e| e.info.id == container_id)
    }

    /// Kills a container by id (cgroup.kill) and denies its cgroup from now on.
    pub fn kill_container(&mut self, container_id: &str) -> bool {
        let Some(k) = self
            .entries
            .iter()
            .find(|(_, e)| e.info.id == container_id)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let Some(e) = self.entries.get_mut(&k) else {
            return false;
        };
        if let Some(id) = e.cgroup_id {
            let _ = self.probes.set_verdict(id, KernelVerdict::Deny.raw());
        }
        let ok = e
            .cgroup_dir
            .as_deref()
            .map(|d| kill_cgroup(d).is_ok())
            .unwrap_or(false);
        if ok {
            e.killed = true;
            self.count_kill();
        }
        ok
    }

    /// Whether anything waits on the hold tick: held processes, or
    /// containers waiting for CRI's word.
    pub fn has_holds(&self) -> bool {
        !self.held.is_empty() || self.entries.values().any(|e| e.pending_since.is_some())
    }

    /// Summary line for logs.
    pub fn summary(&self) -> String {
        let denied = self
            .entries
            .values()
            .filter(|e| e.decision.kernel != KernelVerdict::Allow)
            .count();
        format!("{} containers ({} denied)", self.entries.len(), denied)
    }
}

/// Whether a process is stopped (state `T` in /proc/PID/stat).
fn process_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Forwards a runtime's events into the controller's channel. When the
/// stream breaks (containerd restarted), it retries every 200 ms, and after
/// every re-subscription it asks the controller for a resync: what was
/// created while nobody listened is classified at once, not at the next
/// periodic resync.
pub async fn forward_containerd_events(
    client: ContainerdClient,
    tx: mpsc::Sender<RuntimeEvent>,
    drops: std::sync::Arc<std::sync::atomic::AtomicU64>,
    resync: std::sync::Arc<tokio::sync::Notify>,
) {
    const RETRY: Duration = Duration::from_millis(200);
    let mut first = true;
    let mut failing = false;
    loop {
        match client.subscribe().await {
            Ok(mut stream) => {
                if !first {
                    info!("resubscribed to containerd events; resyncing");
                    resync.notify_one();
                }
                first = false;
                failing = false;
                loop {
                    match stream.next().await {
                        Ok(Some(ev)) => {
                            if tx.try_send(ev).is_err() {
                                drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!("containerd event stream: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !failing {
                    warn!("containerd subscribe: {e}; retrying every {RETRY:?}");
                }
                failing = true;
                first = false;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_keys_from_oci_paths() {
        let id = "0123456789abcdef".repeat(4);
        let k = cgroup_key_of_path(&format!("/kubepods/besteffort/pod1234/{id}")).unwrap();
        assert_eq!(k, CgroupKey::new(b"pod1234", id.as_bytes()));
        let k = cgroup_key_of_path("/default/web1").unwrap();
        assert_eq!(k, CgroupKey::new(b"default", b"web1"));
        let k = cgroup_key_of_path(&format!(
            "kubepods-besteffort-pod12.slice:cri-containerd:{id}"
        ))
        .unwrap();
        assert_eq!(
            k,
            CgroupKey::new(
                b"kubepods-besteffort-pod12.slice",
                format!("cri-containerd-{id}.scope").as_bytes()
            )
        );
        let k = cgroup_key_of_path(":docker:abc").unwrap();
        assert_eq!(k, CgroupKey::new(b"system.slice", b"docker-abc.scope"));
        let k = cgroup_key_of_path("/single").unwrap();
        assert_eq!(k, CgroupKey::new(b"", b"single"));
        assert!(cgroup_key_of_path("").is_none());
        assert!(cgroup_key_of_path("/").is_none());
        assert!(cgroup_key_of_path("a:b:").is_none());
    }

    fn allowed() -> Decision {
        Decision {
            kernel: KernelVerdict::Allow,
            reason: Reason::new(ReasonKind::Allowed, ""),
        }
    }

    fn info(image: Option<&str>) -> ContainerInfo {
        let mut i = ContainerInfo {
            id: "c1".into(),
            runtime: "containerd",
            namespace: Some("default".into()),
            sandbox_id: None,
            pod_name: None,
            pod_namespace: None,
            pod_uid: None,
            container_name: None,
            kind: None,
            image_as_written: None,
            image_ref: None,
            image_id: None,
            state: ContainerState::Running,
            pid: None,
            cgroup_path: None,
            labels: Default::default(),
        };
        i.image_as_written = image.map(str::to_string);
        i
    }

    #[test]
    fn drift_policy_bits_follow_rules_flag_and_exemptions() {
        let seed =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let mut i = info(Some("public.ecr.aws/nginx/nginx:latest"));
        let none = Exemptions::default();
        let entry = |d: DriftDecision| Entry::new(info(None), allowed(), d);
        use agent_common::drift_policy::{DENY_DRIFT, DENY_FILELESS};
        // The seed policy says nothing about drift: reported, never refused.
        let d = drift_with(&seed, &i, None, &none, false);
        assert_eq!(d, DriftDecision::default());
        assert_eq!(entry(d).drift_bits(), 0);
        // The flag refuses both everywhere...
        let d = drift_with(&seed, &i, None, &none, true);
        assert_eq!(entry(d).drift_bits(), DENY_FILELESS | DENY_DRIFT);
        // ...but what admission excluded is only reported (Audit).
        i.pod_namespace = Some("kube-system".into());
        let kyverno_defaults = Exemptions::from_namespaces(&["kube-system".to_string()]);
        let d = drift_with(&seed, &i, None, &kyverno_defaults, true);
        assert_eq!(d.fileless, Some(Action::Audit));
        assert_eq!(entry(d).drift_bits(), 0);
        // A native rule: fileless only, and an Audit rule sets no kernel bit.
        let native = imagewarden_policy::load_policy_str(
            "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\n\
             spec:\n  rules:\n  - name: r\n    allow: [{registry: public.ecr.aws}]\n\
             \x20   execDrift: {fileless: deny}\n  - name: a\n    action: Audit\n\
             \x20   execDrift: {writableLayer: deny}\n",
            "p.yaml",
        )
        .unwrap();
        i.pod_namespace = None;
        let d = drift_with(&native, &i, None, &none, false);
        assert_eq!(d.writable_layer, Some(Action::Audit));
        assert_eq!(entry(d).drift_bits(), DENY_FILELESS);
    }

    #[test]
    fn decisions_follow_the_seed_policy() {
        let policy =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let d = decide(&policy, &info(Some("docker.io/library/nginx:latest")), None);
        assert_eq!(d.kernel, KernelVerdict::Deny, "{d:?}");
        assert_eq!(d.reason.kind, ReasonKind::UntrustedImage, "{d:?}");
        assert!(d.reason.text.starts_with("untrusted-image"), "{d:?}");
        let d = decide(
            &policy,
            &info(Some("public.ecr.aws/nginx/nginx:latest")),
            None,
        );
        assert_eq!(d.kernel, KernelVerdict::Allow, "{d:?}");
        let d = decide(&policy, &info(Some("public.ecr.aws/../x")), None);
        assert_eq!(d.kernel, KernelVerdict::Deny, "{d:?}");
        assert_eq!(d.reason.kind, ReasonKind::InvalidReference, "{d:?}");
        assert!(d.reason.text.starts_with("invalid-reference"), "{d:?}");
        let d = decide(&policy, &info(None), None);
        assert_eq!(d.kernel, KernelVerdict::Deny);
        let mut sb = info(Some("registry.k8s.io/pause:3.6"));
        sb.kind = Some(ContainerKind::Sandbox);
        assert_eq!(decide(&policy, &sb, None).kernel, KernelVerdict::Allow);
        let audit = crate::cmd_run::EMBEDDED_POLICY.replace("Enforce", "Audit");
        let policy = imagewarden_policy::load_policy_str(&audit, "seed-audit").unwrap();
        assert_eq!(
            decide(&policy, &info(Some("nginx")), None).kernel,
            KernelVerdict::Audit
        );
    }

    #[test]
    fn image_ids_are_not_judged_as_names_and_the_pod_gives_context_not_the_image() {
        let policy =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let id = format!("sha256:{}", "ab".repeat(32));
        assert!(is_image_id(&id) && is_image_id(&"cd".repeat(32)) && !is_image_id("nginx"));
        // A kubelet hands CRI the image id: judge the repo digest instead.
        let mut i = info(Some(&id));
        i.image_ref = Some(format!(
            "public.ecr.aws/nginx/nginx@sha256:{}",
            "cd".repeat(32)
        ));
        assert_eq!(decide(&policy, &i, None).kernel, KernelVerdict::Allow);
        // The seed policy does not cover init containers: the Pod says this is one.
        let init = PodContext {
            image: "docker.io/library/busybox:1".into(),
            container_type: ContainerType::Init,
            namespace: "prod".into(),
            labels: BTreeMap::new(),
            namespace_labels: None,
        };
        let d = decide(
            &policy,
            &info(Some("docker.io/library/busybox:1")),
            Some(&init),
        );
        assert_eq!(d.kernel, KernelVerdict::Allow, "{d:?}");
        let regular = PodContext {
            container_type: ContainerType::Container,
            ..init
        };
        assert_eq!(
            decide(&policy, &info(Some("x")), Some(&regular)).kernel,
            KernelVerdict::Deny
        );
        // The Pod spec's image is never the one judged (issue 13, case 6):
        // a Pod whose spec writes a trusted image does not lend it to a
        // container that runs another.
        let trusted_spec = PodContext {
            image: "public.ecr.aws/nginx/nginx:latest".into(),
            ..regular
        };
        let d = decide(
            &policy,
            &info(Some("docker.io/library/nginx:latest")),
            Some(&trusted_spec),
        );
        assert_eq!(d.kernel, KernelVerdict::Deny, "{d:?}");
        assert!(d.reason.text.contains("docker.io"), "{d:?}");
    }

    #[test]
    fn admission_exclusions_audit_instead_of_deny() {
        let policy =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let ex = Exemptions::kyverno_defaults(&["ops".into()], "kyverno");
        let mut i = info(Some(
            "602401280802.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.0",
        ));
        i.pod_namespace = Some("kube-system".into());
        i.pod_name = Some("aws-node-x".into());
        let d = decide_with(&policy, &i, None, &ex);
        assert_eq!(d.kernel, KernelVerdict::Audit, "{d:?}");
        assert!(
            d.reason.kind == ReasonKind::UntrustedImage && d.reason.text.contains("kube-system"),
            "{d:?}"
        );
        // The Pod's namespace from the API wins over the runtime's.
        let pod = PodContext {
            image: "docker.io/library/nginx:1".into(),
            container_type: ContainerType::Container,
            namespace: "prod".into(),
            labels: BTreeMap::new(),
            namespace_labels: None,
        };
        assert_eq!(
            decide_with(&policy, &i, Some(&pod), &ex).kernel,
            KernelVerdict::Deny
        );
        i.pod_namespace = Some("ops".into());
        assert_eq!(
            decide_with(&policy, &i, None, &ex).kernel,
            KernelVerdict::Audit
        );
        i.pod_namespace = Some("prod".into());
        assert_eq!(
            decide_with(&policy, &i, None, &ex).kernel,
            KernelVerdict::Deny
        );
        // Allowed images stay allowed, exempt or not.
        i.image_as_written = Some("public.ecr.aws/nginx/nginx:1".into());
        i.pod_namespace = Some("kube-system".into());
        assert_eq!(
            decide_with(&policy, &i, None, &ex).kernel,
            KernelVerdict::Allow
        );
    }

    #[test]
    fn namespace_labels_reach_the_namespace_selector() {
        let policy = imagewarden_policy::load_policy_str(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: p}\nspec:\n  matchConstraints:\n    resourceRules: [{apiGroups: [''], apiVersions: [v1], operations: [CREATE], resources: [pods]}]\n  validations:\n  - expression: \"object.spec.containers.all(c, c.image.startsWith('public.ecr.aws/'))\"\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {name: b}\nspec:\n  policyName: p\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels: {env: prod}\n",
            "ns.yaml",
        )
        .unwrap();
        let i = info(Some("docker.io/library/nginx:1"));
        let ex = Exemptions::default();
        let pod = |env: Option<&str>| PodContext {
            image: "docker.io/library/nginx:1".into(),
            container_type: ContainerType::Container,
            namespace: "shop".into(),
            labels: BTreeMap::new(),
            namespace_labels: env.map(|e| BTreeMap::from([("env".to_string(), e.to_string())])),
        };
        let kernel = |env| decide_with(&policy, &i, Some(&pod(env)), &ex).kernel;
        assert_eq!(kernel(Some("prod")), KernelVerdict::Deny);
        assert_eq!(kernel(Some("dev")), KernelVerdict::Allow);
        // Not known (yet): the stricter answer.
        assert_eq!(kernel(None), KernelVerdict::Deny);
    }

    #[test]
    fn labels_outside_the_cri_namespace_buy_nothing() {
        let policy =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let mut forged = info(Some("docker.io/library/nginx:latest"));
        forged.kind = Some(ContainerKind::Sandbox);
        forged.pod_namespace = Some("kube-system".into());
        let ex = Exemptions::kyverno_defaults(&[], "kyverno");
        assert_eq!(
            decide_with(&policy, &forged, None, &ex).kernel,
            KernelVerdict::Allow,
            "what labels used to buy"
        );
        distrust_labels(&mut forged);
        assert_eq!(forged.kind, None);
        assert_eq!(
            decide_with(&policy, &forged, None, &ex).kernel,
            KernelVerdict::Deny
        );
        assert!(!awaits_cri(&forged, true), "outside k8s.io: judged at once");
    }

    /// Issue 13, case 6, inside the CRI plugin's namespace: a container
    /// containerd reports in `k8s.io` with forged `io.cri-containerd.kind`
    /// and `io.kubernetes.pod.*` labels naming a Pod whose spec image is
    /// trusted gets neither the sandbox allowance nor that Pod's image: it
    /// waits for CRI (held), and CRI never knowing it, it is judged by the
    /// image it runs. What CRI itself reports is believed.
    #[test]
    fn cri_namespace_identity_comes_from_cri_only() {
        let policy =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let ex = Exemptions::kyverno_defaults(&[], "kyverno");
        let mut forged = info(Some("docker.io/library/nginx:latest"));
        forged.namespace = Some(CRI_NAMESPACE.into());
        forged.labels = crate::sources::bounded_labels(
            [
                ("io.cri-containerd.kind", "sandbox"),
                ("io.kubernetes.pod.name", "web-ecr"),
                ("io.kubernetes.pod.namespace", "kube-system"),
                ("io.kubernetes.container.name", "nginx"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        // Whatever put a kind or a Pod on a containerd report, it goes.
        forged.kind = Some(ContainerKind::Sandbox);
        forged.pod_name = Some("web-ecr".into());
        forged.pod_namespace = Some("kube-system".into());
        distrust_labels(&mut forged);
        assert_eq!(
            (
                forged.kind,
                forged.pod_name.as_deref(),
                forged.pod_namespace.as_deref()
            ),
            (None, None, None)
        );
        assert!(awaits_cri(&forged, true));
        // The Pod the labels name, as a lookup would find it.
        let pod = PodContext {
            image: "public.ecr.aws/nginx/nginx:latest".into(),
            container_type: ContainerType::Container,
            namespace: "kube-system".into(),
            labels: BTreeMap::new(),
            namespace_labels: None,
        };
        let (d, pending) = judge(&policy, &forged, Some(&pod), &ex, true, false, false);
        assert!(pending && d.kernel == KernelVerdict::Hold, "{d:?}");
        let (d, pending) = judge(&policy, &forged, Some(&pod), &ex, true, true, false);
        assert!(!pending, "{d:?}");
        assert_eq!(
            d.kernel,
            KernelVerdict::Deny,
            "judged by the image it runs: {d:?}"
        );
        assert!(
            d.reason.text.contains("docker.io") && d.reason.text.contains("unknown to CRI"),
            "{d:?}"
        );
        // No CRI to ask: judged by its image at once.
        assert!(!awaits_cri(&forged, false));
        let (d, pending) = judge(&policy, &forged, None, &ex, false, false, false);
        assert!(!pending && d.kernel == KernelVerdict::Deny, "{d:?}");
        // A trusted image waits for nobody.
        let mut good = forged.clone();
        good.image_as_written = Some("public.ecr.aws/nginx/nginx:latest".into());
        let (d, pending) = judge(&policy, &good, None, &ex, true, false, false);
        assert!(!pending && d.kernel == KernelVerdict::Allow, "{d:?}");
        // A k8s.io container CRI does not list yet that runs the node's
        // pod sandbox image (CRI's config: a sandbox's pause process runs
        // before CRI lists the sandbox) is allowed by that image; the same
        // image elsewhere, or CRI's word, is judged as usual.
        let mut pause = forged.clone();
        pause.image_as_written = Some("registry.k8s.io/pause:3.6".into());
        let (d, pending) = judge(&policy, &pause, None, &ex, true, false, true);
        assert!(!pending && d.kernel == KernelVerdict::Allow, "{d:?}");
        assert!(d.reason.text.contains("sandbox image"), "{d:?}");
        let (d, pending) = judge(&policy, &pause, None, &ex, true, false, false);
        assert!(
            pending && d.kernel == KernelVerdict::Hold,
            "not the node's: {d:?}"
        );
        let (d, _) = judge(&policy, &pause, None, &ex, false, false, true);
        assert_eq!(
            d.kernel,
            KernelVerdict::Deny,
            "outside k8s.io, judged by policy: {d:?}"
        );
        // What CRI reports is believed: its sandbox is the pod's pause
        // container (allowed), its Pod's namespace is exempt.
        let mut sb = info(Some("registry.k8s.io/pause:3.6"));
        sb.runtime = "cri";
        sb.namespace = Some(CRI_NAMESPACE.into());
        sb.kind = Some(ContainerKind::Sandbox);
        distrust_labels(&mut sb);
        assert!(!awaits_cri(&sb, true));
        assert_eq!(
            judge(&policy, &sb, None, &ex, false, false, false).0.kernel,
            KernelVerdict::Allow
        );
        let mut sys = forged.clone();
        sys.runtime = "cri";
        sys.kind = Some(ContainerKind::Container);
        sys.pod_namespace = Some("kube-system".into());
        assert!(!awaits_cri(&sys, true));
        let (d, _) = judge(&policy, &sys, Some(&pod), &ex, false, false, false);
        assert_eq!(d.kernel, KernelVerdict::Audit, "{d:?}");
        assert!(
            d.reason.text.contains("docker.io"),
            "still its own image: {d:?}"
        );
    }

    #[test]
    fn merge_fills_only_missing_fields() {
        let mut a = info(Some("x"));
        let mut b = info(Some("y"));
        b.pod_name = Some("p".into());
        b.pid = Some(9);
        a.pid = Some(7);
        merge(&mut a, &b);
        assert_eq!(a.image_as_written.as_deref(), Some("x"));
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert_eq!(a.pid, Some(7));
    }

    /// A restarted task is told apart from the known one even when a
    /// resync between its Exited and Started events reported the
    /// container with no task (state created, no pid): by its cgroup.
    #[test]
    fn a_new_task_is_told_by_pid_exit_or_cgroup() {
        let entry = |pid: Option<u32>, state: ContainerState, cgroup_id: Option<u64>| Entry {
            cgroup_id,
            ..Entry::new(
                ContainerInfo {
                    pid,
                    state,
                    ..info(None)
                },
                allowed(),
                DriftDecision::default(),
            )
        };
        let none = Path::new("/nonexistent");
        use ContainerState::*;
        assert!(new_task(none, &entry(Some(1), Running, Some(5)), 2));
        assert!(!new_task(none, &entry(Some(2), Running, Some(5)), 2));
        assert!(new_task(none, &entry(None, Exited, Some(5)), 2));
        // No task known and no cgroup known: nothing is stale.
        assert!(!new_task(none, &entry(None, Created, None), 2));
        let Some(cg2) = crate::sources::cgroup::find_cgroup2_mount() else {
            return;
        };
        let me = std::process::id();
        let Ok(mine) = cgroup2_dir_of_pid(&cg2, me).and_then(|d| cgroup_id_of_dir(&d)) else {
            return;
        };
        // The resync's report (created, no pid), then a task in the
        // known cgroup: the same task (a hold resolved before Started)...
        assert!(!new_task(&cg2, &entry(None, Created, Some(mine)), me));
        // ...or in another cgroup: a restart.
        assert!(new_task(&cg2, &entry(None, Created, Some(mine + 1)), me));
    }
}
