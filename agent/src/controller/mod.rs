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
//!
//! One file a job: [`decide`] (the verdict), [`inventory`] (what runs
//! here), [`cri_confirm`] (CRI's word on `k8s.io` containers), [`enforcer`]
//! (kernel maps, kills), [`holds`] (stopped execs); the event forwarder is
//! `crate::sources::events`.

mod cri_confirm;
pub mod decide;
mod enforcer;
mod holds;
pub mod inventory;

use cri_confirm::CRI_ASK_INTERVAL;
pub use decide::{
    awaits_cri, decide, decide_with, distrust_labels, drift_with, is_image_id, judge, Decision,
    Judged, PodContext, PodLookup, Violation, CRI_NAMESPACE,
};
pub use enforcer::kill_cgroup;
use enforcer::{cgroup_pids, process_stopped, resume};
use holds::Held;
pub use inventory::{cgroup_key_of_path, Entry};

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use imagewarden_policy::PolicySet;

use crate::{
    finding::{Attribution, Finding, FindingAction, FindingVerdict},
    probes::{
        event::{ExecRecord, KernelVerdict},
        kernel_maps::KernelMaps,
        Probes,
    },
    sources::{kyverno_config::Exemptions, SharedSource},
};

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

/// The inventory and its decisions, over the kernel maps `K` ([`Probes`]
/// in the agent; a recording fake in tests).
pub struct Controller<K = Probes> {
    cfg: ControllerConfig,
    probes: K,
    policy: Arc<PolicySet>,
    /// Boxed: an `Entry` is ~0.8 KiB, and the table keeps up to twice as
    /// many slots as entries (measured: 1.5 MiB of table for 997
    /// containers unboxed, docs/benchmarks.md round 6).
    entries: HashMap<String, Box<Entry>>,
    by_cgroup: HashMap<u64, String>,
    held: HashMap<u64, Held>,
    /// containerd's own API: every namespace; image, task and cgroup,
    /// never identity.
    containerd: Option<SharedSource>,
    /// CRI: the kind and the Pod of what it lists.
    cri: Option<SharedSource>,
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
    /// A hold on a cgroup no runtime lists may resync again from then on
    /// (see `holds::Controller::hold_resync_due`).
    hold_resync_after: Option<Instant>,
}

/// Bound of the queue of exec-drift findings waiting for their Event.
pub const DRIFT_FINDINGS_CAPACITY: usize = 256;

impl<K: KernelMaps> Controller<K> {
    pub fn new(
        cfg: ControllerConfig,
        probes: K,
        policy: Arc<PolicySet>,
        containerd: Option<SharedSource>,
        cri: Option<SharedSource>,
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
            hold_resync_after: None,
        }
    }

    pub fn probes(&self) -> &K {
        &self.probes
    }

    pub fn probes_mut(&mut self) -> &mut K {
        &mut self.probes
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|e| &**e)
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
            let may = self.hold_resync_due();
            self.resolve_held(rec.cgroup_id, rec.tgid, may).await;
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

    /// Every container the runtimes reported, with its decision: what the
    /// Kubernetes cross-checks read of the controller (they report its
    /// decision instead of evaluating the policy again).
    pub fn snapshot(&self) -> Vec<Judged> {
        self.entries
            .values()
            .map(|e| Judged {
                info: e.info.clone(),
                decision: e.decision.clone(),
            })
            .collect()
    }

    /// Whether the controller knows (and so has judged) this container.
    pub fn knows(&self, container_id: &str) -> bool {
        self.entries.values().any(|e| e.info.id == container_id)
    }

    /// Whether CRI says the container belongs to a static Pod (see
    /// [`ContainerInfo::static_pod`]); false for a container not known.
    pub fn is_static_pod(&self, container_id: &str) -> bool {
        self.entries
            .values()
            .any(|e| e.info.id == container_id && e.info.static_pod)
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
