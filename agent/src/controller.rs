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
//!
//! Limits: a container whose cgroup is named without a container id (`ctr
//! run` ids such as `web1`) relies on step 1 alone; a container whose spec
//! has no cgroupsPath is recognised only once its task has started.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{verdict, CgroupKey};
use imagewarden_policy::{Action, ContainerType, DriftDecision, EvalContext, PolicySet};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    finding::{Attribution, Finding},
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
    /// Kernel verdict: ALLOW, DENY (enforce rule) or AUDIT (audit rule).
    pub kernel: u32,
    pub reason: String,
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
}

impl Entry {
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
            .with_labels(&p.labels),
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

/// What the Kubernetes sources say about a runtime container: the image as
/// the Pod spec writes it (what Kyverno matched), which kind of container
/// it is, the Pod's namespace and labels.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub image: String,
    pub container_type: ContainerType,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
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
    if d.kernel == verdict::DENY {
        let ns = pod
            .map(|p| p.namespace.as_str())
            .or(info.pod_namespace.as_deref());
        if let Some(why) = ns.and_then(|ns| exempt.exempt(ns, info.pod_name.as_deref())) {
            d.kernel = verdict::AUDIT;
            d.reason = format!("{}; not stopped: {why}", d.reason);
        }
    }
    d
}

fn decide_policy(policy: &PolicySet, info: &ContainerInfo, pod: Option<&PodContext>) -> Decision {
    if info.kind == Some(ContainerKind::Sandbox) {
        // Kyverno never checks the pause image either: it is node
        // configuration (containerd's sandbox_image), not a workload.
        return Decision {
            kernel: verdict::ALLOW,
            reason: "allowed: pod sandbox".into(),
        };
    }
    let image = pod
        .map(|p| p.image.as_str())
        .or(info.image_as_written.as_deref().filter(|i| !is_image_id(i)))
        .or(info.image_ref.as_deref());
    let Some(image) = image else {
        return Decision {
            kernel: verdict::DENY,
            reason: "unresolved: the runtime reports no image name".into(),
        };
    };
    let ctx = match pod {
        Some(p) => EvalContext::new(p.container_type)
            .with_namespace(Some(&p.namespace))
            .with_labels(&p.labels),
        None => {
            EvalContext::new(ContainerType::Container).with_namespace(info.pod_namespace.as_deref())
        }
    };
    let v = policy.evaluate(image, &ctx);
    let kernel = if v.allowed {
        verdict::ALLOW
    } else if v.action == Action::Enforce {
        verdict::DENY
    } else {
        verdict::AUDIT
    };
    Decision {
        kernel,
        reason: v.reason,
    }
}

fn entry_key(info: &ContainerInfo) -> String {
    format!("{}/{}", info.namespace.as_deref().unwrap_or(""), info.id)
}

/// The containerd namespace of Kubernetes' containers (containerd's CRI plugin).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Identity from labels is not trusted (issue 13, case 6): anyone with
/// containerd's API can set `io.cri-containerd.kind=sandbox` or
/// `io.kubernetes.pod.*` on a container. Outside the CRI plugin's namespace
/// no container is a Pod's: the kind and Pod fields a containerd report
/// took from labels are dropped, so the container is judged by the image
/// it runs, as a plain container of no namespace.
pub fn distrust_labels(info: &mut ContainerInfo) {
    if info.runtime != "containerd" || info.namespace.as_deref() == Some(CRI_NAMESPACE) {
        return;
    }
    info.kind = None;
    info.pod_name = None;
    info.pod_namespace = None;
    info.pod_uid = None;
    info.container_name = None;
    info.sandbox_id = None;
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
}

pub struct Controller {
    cfg: ControllerConfig,
    probes: Probes,
    policy: Arc<PolicySet>,
    entries: HashMap<String, Entry>,
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
    hold_parents: std::collections::HashSet<String>,
    /// What admission excluded: never stopped, only reported.
    exemptions: Arc<Exemptions>,
    /// Kubernetes mode: fileless and drift exec findings waiting for their
    /// Event (bounded; the oldest is dropped and counted).
    drift_findings: Option<std::collections::VecDeque<Finding>>,
}

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
        }
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Lists every container of every runtime and namespace and applies
    /// the policy to each. Containers that disappeared are forgotten.
    pub async fn resync(&mut self) {
        self.stats.resyncs += 1;
        let t0 = std::time::Instant::now();
        let mut seen: HashMap<String, ContainerInfo> = HashMap::new();
        let mut complete = true;
        use crate::metrics::Source;
        if let Some(c) = &self.containerd {
            // Children of a containerd namespace's cgroup are its containers:
            // hold any the agent has not classified yet (kernel side).
            if let Ok(nss) = c.namespaces().await {
                for ns in nss {
                    if self.hold_parents.insert(ns.clone()) {
                        if let Err(e) = self.probes.add_hold_parent(&ns) {
                            warn!(namespace = %ns, "hold parent: {e}");
                        }
                    }
                }
            }
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
            let r = c.list_all().await;
            self.source_up(Source::RuntimeCri, r.is_ok());
            match r {
                Ok(list) => {
                    for i in list {
                        match seen.get_mut(&entry_key(&i)) {
                            Some(existing) => {
                                // CRI knows the pod; containerd the image digest.
                                let mut cri = i.clone();
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
        debug!(entries = n, ms = ?self.stats.last_resync_ms, "resync (containerd, CRI, apply)");
    }

    fn source_up(&self, s: crate::metrics::Source, up: bool) {
        if let Some(m) = &self.metrics {
            m.set_source_up(s, up);
        }
    }

    fn update_gauges(&self) {
        use crate::metrics::Verdict as V;
        let Some(m) = &self.metrics else { return };
        let count = |k: u32| {
            self.entries
                .values()
                .filter(|e| e.decision.kernel == k)
                .count() as u64
        };
        m.set_containers(V::Allow, count(verdict::ALLOW));
        m.set_containers(V::Deny, count(verdict::DENY) + count(verdict::AUDIT));
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
                let _ = self.probes.clear_verdict(id);
                self.by_cgroup.remove(&id);
            }
            debug!(container = %e.info.id, "container forgotten");
        }
    }

    /// Records (or refreshes) a container and pushes its verdict into the kernel.
    pub fn upsert(&mut self, mut info: ContainerInfo) {
        distrust_labels(&mut info);
        let key = entry_key(&info);
        let pod = self.pod_lookup.as_ref().and_then(|f| f(&info));
        let decision = decide_with(&self.policy, &info, pod.as_ref(), &self.exemptions);
        let drift = drift_with(
            &self.policy,
            &info,
            pod.as_ref(),
            &self.exemptions,
            self.cfg.deny_exec_drift,
        );
        let e = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            info: info.clone(),
            key: None,
            cgroup_id: None,
            cgroup_dir: None,
            decision: decision.clone(),
            drift: drift.clone(),
            reported: None,
            killed: false,
            kill_reported: false,
        });
        let mut fresh = info;
        merge(&mut fresh, &e.info);
        // Another task of the same container (its events were missed): its
        // cgroup is new too.
        let restarted = matches!((fresh.pid, e.info.pid), (Some(a), Some(b)) if a != b);
        let stale = if restarted { e.cgroup_id.take() } else { None };
        if stale.is_some() {
            e.cgroup_dir = None;
        }
        e.info = fresh;
        e.decision = decision;
        e.drift = drift;
        if let Some(old) = stale {
            let _ = self.probes.clear_verdict(old);
            self.by_cgroup.remove(&old);
        }
        self.apply(&key);
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
        debug!(container = %e.info.id, verdict = v, key = e.key.is_some(), cgroup_id = ?e.cgroup_id, pid = ?e.info.pid, "apply");
        if let Some(k) = &e.key {
            if let Err(err) = self.probes.set_name_verdict(k, v) {
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
            if let Err(err) = self.probes.set_verdict(id, v) {
                warn!(container = %e.info.id, "kernel verdict: {err}");
            }
            if let Err(err) = self.probes.set_drift_policy(id, e.drift_bits()) {
                warn!(container = %e.info.id, "kernel drift policy: {err}");
            }
            debug!(container = %e.info.id, cgroup_id = id, verdict = v, drift = e.drift_bits(), "kernel maps set by id");
            self.by_cgroup.insert(id, key.to_string());
        }
        let denied = v == verdict::DENY;
        let running = e.info.state == ContainerState::Running || e.info.pid.is_some();
        let mut action = if v == verdict::ALLOW {
            "none"
        } else {
            "alerted"
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
                        action = "killed";
                    }
                    Err(err) => warn!(container = %e.info.id, "cgroup.kill: {err}"),
                }
            }
        } else if e.killed {
            action = "killed";
        }
        let newly_killed = action == "killed" && !e.kill_reported;
        if e.reported.as_ref() != Some(&e.decision) || newly_killed {
            e.kill_reported |= action == "killed";
            let show = v != verdict::ALLOW || self.cfg.all_execs;
            if show {
                let f = Finding::container(
                    if v == verdict::ALLOW { "allow" } else { "deny" },
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
        // A held exec in this cgroup can be decided now.
        if let Some(id) = e.cgroup_id {
            if self.held.contains_key(&id) {
                self.release(id, v);
            }
        }
    }

    /// A held cgroup's fate: continue (allow/audit) or kill (deny).
    fn release(&mut self, cgroup_id: u64, v: u32) {
        let Some(h) = self.held.remove(&cgroup_id) else {
            return;
        };
        for pid in &h.pids {
            self.probes.forget_held(*pid);
        }
        if v == verdict::DENY && self.cfg.enforce {
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
        match ev.kind {
            EventKind::Created | EventKind::Started { .. } => {
                if let EventKind::Started { pid: Some(pid) } = ev.kind {
                    if let Some(e) = self.entries.get_mut(&key) {
                        // A restarted task (same container, `ctr tasks
                        // start`) runs in a new cgroup with a new id: the
                        // old id's entries go, the new id is learnt below.
                        if e.info.pid.is_some_and(|p| p != pid)
                            || e.info.state == ContainerState::Exited
                        {
                            if let Some(old) = e.cgroup_id.take() {
                                e.cgroup_dir = None;
                                let _ = self.probes.clear_verdict(old);
                                self.by_cgroup.remove(&old);
                            }
                        }
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
        let entry = self
            .by_cgroup
            .get(&rec.cgroup_id)
            .and_then(|k| self.entries.get(k));
        let attr = entry
            .map(Entry::attribution)
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
            Some(v) if v == verdict::DENY && self.cfg.enforce => {
                (f.verdict, f.action) = ("deny", "killed")
            }
            Some(v) if v == verdict::DENY || v == verdict::AUDIT => {
                (f.verdict, f.action) = ("deny", "alerted")
            }
            Some(v) if v == verdict::ALLOW => (f.verdict, f.action) = ("allow", "none"),
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
            if let Some(v) = self.entries.get(&k).map(|e| e.decision.kernel) {
                self.release(cgroup_id, v);
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
        }
    }

    /// Kills held cgroups that nobody could classify in time (fail closed),
    /// after one last look at the runtimes: an approved container must never
    /// be killed because the agent was slow.
    pub async fn expire_holds(&mut self) {
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
            let _ = self.probes.set_verdict(id, verdict::DENY);
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
            let reason = format!(
                "unresolved: container cgroup {} not known to any runtime within {:?}; killed (fail closed)",
                dir.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| id.to_string()),
                self.cfg.hold_timeout
            );
            warn!("{reason}");
            (self.out)(&Finding::container(
                "deny",
                "killed",
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
        let known_names: Vec<CgroupKey> = self.entries.values().filter_map(|e| e.key).collect();
        for k in self.probes.verdict_names() {
            if !known_names.contains(&k) && self.probes.clear_name_verdict(&k).is_ok() {
                pruned += 1;
            }
        }
        let mut resumed = 0;
        for e in self.entries.values() {
            let Some(dir) = &e.cgroup_dir else { continue };
            if e.decision.kernel == verdict::DENY {
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
            .map(Entry::attribution)
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
            let pod = self.pod_lookup.as_ref().and_then(|f| f(&e.info));
            let d = decide_with(&self.policy, &e.info, pod.as_ref(), &self.exemptions);
            let drift = drift_with(
                &self.policy,
                &e.info,
                pod.as_ref(),
                &self.exemptions,
                self.cfg.deny_exec_drift,
            );
            if d != e.decision || drift != e.drift {
                if let Some(e) = self.entries.get_mut(&k) {
                    e.decision = d;
                    e.drift = drift;
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
            let _ = self.probes.set_verdict(id, verdict::DENY);
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

    pub fn has_holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Summary line for logs.
    pub fn summary(&self) -> String {
        let denied = self
            .entries
            .values()
            .filter(|e| e.decision.kernel != verdict::ALLOW)
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
        let entry = |d: DriftDecision| Entry {
            info: info(None),
            key: None,
            cgroup_id: None,
            cgroup_dir: None,
            decision: Decision {
                kernel: verdict::ALLOW,
                reason: String::new(),
            },
            drift: d,
            reported: None,
            killed: false,
            kill_reported: false,
        };
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
        assert_eq!(d.kernel, verdict::DENY, "{d:?}");
        assert!(d.reason.starts_with("untrusted-image"), "{d:?}");
        let d = decide(
            &policy,
            &info(Some("public.ecr.aws/nginx/nginx:latest")),
            None,
        );
        assert_eq!(d.kernel, verdict::ALLOW, "{d:?}");
        let d = decide(&policy, &info(Some("public.ecr.aws/../x")), None);
        assert_eq!(d.kernel, verdict::DENY, "{d:?}");
        assert!(d.reason.starts_with("invalid-reference"), "{d:?}");
        let d = decide(&policy, &info(None), None);
        assert_eq!(d.kernel, verdict::DENY);
        let mut sb = info(Some("registry.k8s.io/pause:3.6"));
        sb.kind = Some(ContainerKind::Sandbox);
        assert_eq!(decide(&policy, &sb, None).kernel, verdict::ALLOW);
        let audit = crate::cmd_run::EMBEDDED_POLICY.replace("Enforce", "Audit");
        let policy = imagewarden_policy::load_policy_str(&audit, "seed-audit").unwrap();
        assert_eq!(
            decide(&policy, &info(Some("nginx")), None).kernel,
            verdict::AUDIT
        );
    }

    #[test]
    fn image_ids_are_not_judged_as_names_and_pod_context_wins() {
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
        assert_eq!(decide(&policy, &i, None).kernel, verdict::ALLOW);
        // The seed policy does not cover init containers: the Pod says this is one.
        let init = PodContext {
            image: "docker.io/library/busybox:1".into(),
            container_type: ContainerType::Init,
            namespace: "prod".into(),
            labels: BTreeMap::new(),
        };
        let d = decide(
            &policy,
            &info(Some("docker.io/library/busybox:1")),
            Some(&init),
        );
        assert_eq!(d.kernel, verdict::ALLOW, "{d:?}");
        let regular = PodContext {
            container_type: ContainerType::Container,
            ..init
        };
        assert_eq!(
            decide(&policy, &info(Some("x")), Some(&regular)).kernel,
            verdict::DENY
        );
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
        assert_eq!(d.kernel, verdict::AUDIT, "{d:?}");
        assert!(
            d.reason.starts_with("untrusted-image") && d.reason.contains("kube-system"),
            "{d:?}"
        );
        // The Pod's namespace from the API wins over the runtime's.
        let pod = PodContext {
            image: "docker.io/library/nginx:1".into(),
            container_type: ContainerType::Container,
            namespace: "prod".into(),
            labels: BTreeMap::new(),
        };
        assert_eq!(
            decide_with(&policy, &i, Some(&pod), &ex).kernel,
            verdict::DENY
        );
        i.pod_namespace = Some("ops".into());
        assert_eq!(decide_with(&policy, &i, None, &ex).kernel, verdict::AUDIT);
        i.pod_namespace = Some("prod".into());
        assert_eq!(decide_with(&policy, &i, None, &ex).kernel, verdict::DENY);
        // Allowed images stay allowed, exempt or not.
        i.image_as_written = Some("public.ecr.aws/nginx/nginx:1".into());
        i.pod_namespace = Some("kube-system".into());
        assert_eq!(decide_with(&policy, &i, None, &ex).kernel, verdict::ALLOW);
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
            verdict::ALLOW,
            "what labels used to buy"
        );
        distrust_labels(&mut forged);
        assert_eq!(forged.kind, None);
        assert_eq!(
            decide_with(&policy, &forged, None, &ex).kernel,
            verdict::DENY
        );
        // The CRI plugin's namespace keeps them (CRI confirms them on resync).
        let mut cri = info(Some("registry.k8s.io/pause:3.6"));
        cri.namespace = Some(CRI_NAMESPACE.into());
        cri.kind = Some(ContainerKind::Sandbox);
        distrust_labels(&mut cri);
        assert_eq!(cri.kind, Some(ContainerKind::Sandbox));
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
}
