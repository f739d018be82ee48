//! Kubernetes mode of `imagewarden run`: Pods from the API server (watch,
//! field selector on this node) and the kubelet, policies from the cluster
//! (Kyverno ClusterPolicy/Policy/ValidatingPolicy, ValidatingAdmissionPolicy,
//! ImagePolicy; hot reload), cross-checks into findings, and their actions
//! (Event, kill, optional Pod deletion, optional PolicyReport).
use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use imagewarden_policy::{ContainerType, PolicySet};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use crate::{
    cli::{Mode, RunArgs},
    controller::{Judged, PodContext, PodLookup},
    crosscheck::{self, CrossCheckInput, KubeFinding, Observations},
    finding::{FindingAction, ReasonKind},
    kube_actions::{self, ActionOptions},
    metrics::{Metrics, ReloadResult, Source},
    sink::Sinks,
    sources::{
        kube::{self as ksrc, NamespaceSource, PodSource, PolicySource, PolicyWatchConfig},
        kubelet::{kubelet_source, KubeletClient, KubeletConfig, KubeletSource},
        kyverno_config::{self, Exemptions},
        ContainerInfo,
    },
};

/// Bound on the first read of Kyverno's ConfigMap at start.
const KYVERNO_CONFIG_FIRST_READ: Duration = Duration::from_secs(5);

/// How often the cross-checks run besides on Pod changes.
pub const CROSSCHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Most finding keys remembered for de-duplication; beyond this the set is
/// cleared (findings may then be reported once more, never lost).
const MAX_REPORTED: usize = 100_000;

pub struct KubeState {
    client: kube::Client,
    node: String,
    pub pods: PodSource,
    /// Namespaces, for their labels (policies' `namespaceSelector`s).
    pub namespaces: NamespaceSource,
    pub policy: PolicySource,
    pub kubelet: Option<KubeletSource>,
    mode: Mode,
    opts: ActionOptions,
    reports: bool,
    obs: Observations,
    reported: HashSet<String>,
    reloads_seen: (u64, u64),
    metrics: Metrics,
    /// What admission excluded (Kyverno's resourceFilters, --exempt-namespace).
    pub exemptions: tokio::sync::watch::Receiver<Arc<Exemptions>>,
}

/// The Pod behind a runtime container: the one CRI names (namespace and
/// name, from the store's index, not a scan of every Pod), if its uid is the
/// one CRI reports; by uid alone when CRI gave no name.
fn pod_of(store: &Store<Pod>, c: &ContainerInfo) -> Option<Arc<Pod>> {
    if let (Some(ns), Some(name)) = (c.pod_namespace.as_deref(), c.pod_name.as_deref()) {
        let pod = store.get(&ObjectRef::new(name).within(ns))?;
        let same = match (c.pod_uid.as_deref(), pod.metadata.uid.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        return same.then_some(pod);
    }
    let uid = c.pod_uid.as_deref()?;
    store
        .state()
        .into_iter()
        .find(|p| p.metadata.uid.as_deref() == Some(uid))
}

/// The Pod spec behind a runtime container of `pod`.
pub fn pod_context(pod: &Pod, c: &ContainerInfo) -> Option<PodContext> {
    let name = c.container_name.as_deref()?;
    let (ty, _, _) = crosscheck::spec_containers(pod)
        .into_iter()
        .find(|(_, n, _)| *n == name)?;
    Some(PodContext {
        container_type: ty,
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        labels: pod
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        namespace_labels: None,
    })
}

/// Reads Kyverno's ConfigMap once (bounded) and keeps it current.
async fn start_exemptions(
    client: &kube::Client,
    args: &RunArgs,
    node: &str,
) -> tokio::sync::watch::Receiver<Arc<Exemptions>> {
    let (ns, name) = (
        args.kyverno_namespace.clone(),
        args.kyverno_configmap.clone(),
    );
    let first = tokio::time::timeout(
        KYVERNO_CONFIG_FIRST_READ,
        kyverno_config::fetch(client, &ns, &name),
    )
    .await;
    let data = match first {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            warn!("reading the Kyverno ConfigMap {ns}/{name}: {e}; using Kyverno's default exclusions until it can be read");
            None
        }
        Err(_) => {
            warn!("reading the Kyverno ConfigMap {ns}/{name} timed out; using Kyverno's default exclusions until it can be read");
            None
        }
    };
    let (e, notes) = kyverno_config::exemptions_of(
        &args.exempt_namespaces,
        &ns,
        &name,
        Some(node),
        data.as_ref(),
    );
    for n in notes {
        warn!("Kyverno configuration: {n}");
    }
    info!(origin = ?e.origin, filters = ?e.filters, exempt_namespaces = ?e.namespaces, "admission exclusions (never stopped, reported as audit)");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(e));
    tokio::spawn(kyverno_config::watch_exemptions(
        client.clone(),
        args.exempt_namespaces.clone(),
        ns,
        name,
        Some(node.to_string()),
        tx,
        args.kyverno_config_interval.max(Duration::from_millis(100)),
    ));
    rx
}

/// A container whose Pod the agent does not have (not yet, or no longer, or
/// never: a static Pod without its mirror), in the Kubernetes namespace CRI
/// reports: a plain container of that namespace, without Pod labels.
fn namespace_context(c: &ContainerInfo) -> Option<PodContext> {
    Some(PodContext {
        container_type: ContainerType::Container,
        namespace: c.pod_namespace.clone()?,
        labels: BTreeMap::new(),
        namespace_labels: None,
    })
}

/// The controller's view of a container's Pod: the Pod's context, else the
/// namespace CRI reports, with that Namespace's labels when known (so a
/// `namespaceSelector` judges a container the same whether or not its Pod
/// is in the store; unknown labels: the policy applies).
pub fn pod_lookup(store: Store<Pod>, namespaces: NamespaceSource) -> PodLookup {
    Box::new(move |c: &ContainerInfo| {
        let mut p = pod_of(&store, c)
            .and_then(|pod| pod_context(&pod, c))
            .or_else(|| namespace_context(c))?;
        p.namespace_labels = namespaces.labels(&p.namespace);
        Some(p)
    })
}

impl KubeState {
    /// Connects to the cluster and starts the watches (spawned tasks).
    pub async fn start(
        args: &RunArgs,
        base: Option<(String, String)>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let node = args
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
            .context("Kubernetes mode needs the node name: --node-name, IMAGEWARDEN_NODE_NAME or NODE_NAME (or run --standalone)")?;
        let client = ksrc::client()
            .await
            .context("Kubernetes client (in-cluster or KUBECONFIG)")?;
        let (pods, fut) = ksrc::pod_source(client.clone(), &node);
        tokio::spawn(fut);
        let (namespaces, fut) = ksrc::namespace_source(client.clone());
        tokio::spawn(fut);
        let (policy, fut) = ksrc::policy_source(
            client.clone(),
            PolicyWatchConfig {
                base,
                ..Default::default()
            },
        );
        tokio::spawn(fut);
        let kubelet = match &args.kubelet_url {
            Some(url) => {
                let mut cfg = KubeletConfig::in_cluster("localhost");
                cfg.url = url.trim_end_matches('/').to_string();
                cfg.insecure_skip_tls_verify = args.kubelet_insecure_skip_tls_verify;
                if !PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token").exists() {
                    cfg.token_file = None;
                    cfg.ca_file = None;
                }
                let c = KubeletClient::new(&cfg).context("kubelet client")?;
                let (src, fut) = kubelet_source(c, cfg.interval);
                tokio::spawn(fut);
                Some(src)
            }
            None => {
                info!("no --kubelet-url: the kubelet source is off (static pods are seen through the runtime only)");
                None
            }
        };
        let exemptions = start_exemptions(&client, args, &node).await;
        info!(node = %node, "Kubernetes sources started");
        Ok(KubeState {
            client,
            node,
            pods,
            namespaces,
            policy,
            kubelet,
            mode: args.mode,
            opts: ActionOptions {
                delete_pods: args.delete_pods,
                exempt_namespaces: args.exempt_namespaces.clone(),
            },
            reports: args.policy_reports,
            obs: Observations::default(),
            reported: HashSet::new(),
            reloads_seen: (0, 0),
            metrics,
            exemptions,
        })
    }

    pub fn pod_lookup(&self) -> PodLookup {
        pod_lookup(self.pods.store.clone(), self.namespaces.clone())
    }

    /// Waits (bounded) until the Namespaces are listed (their labels decide
    /// `namespaceSelector`s; not known, such a policy applies everywhere).
    pub async fn wait_for_namespaces(&mut self, timeout: Duration) {
        let mut rx = self.namespaces.changes.clone();
        if tokio::time::timeout(timeout, rx.wait_for(|g| *g > 0))
            .await
            .is_err()
        {
            warn!(
                ?timeout,
                "the Namespaces could not be listed (RBAC: list/watch namespaces): a policy's \
                 namespaceSelector on Namespace labels selects every namespace until they are"
            );
        }
    }

    /// Waits (bounded) until the cluster's merged policy has a rule.
    pub async fn wait_for_policy(&mut self, timeout: Duration) {
        let mut rx = self.policy.policy.clone();
        let wait = rx.wait_for(|p| p.rule_count() > 0);
        if tokio::time::timeout(timeout, wait).await.is_err() {
            warn!(?timeout, "no cluster policy with a rule arrived");
        }
    }

    /// The newest merged policy; counts reloads (an invalid update keeps
    /// the last good policy inside the source and shows up here as an error).
    pub fn take_policy(&mut self) -> Arc<PolicySet> {
        let ok = self.policy.stats.reloads_ok.load(Ordering::Relaxed);
        let failed = self.policy.stats.reloads_failed.load(Ordering::Relaxed);
        for _ in self.reloads_seen.0..ok {
            self.metrics.policy_reload(ReloadResult::Success);
        }
        for _ in self.reloads_seen.1..failed {
            self.metrics.policy_reload(ReloadResult::Error);
            warn!("an invalid policy update was rejected; the last good policy stays in force");
        }
        self.reloads_seen = (ok, failed);
        self.policy.policy.borrow_and_update().clone()
    }

    /// Runs the cross-checks against a read-only view of the controller and
    /// plans what to do about new findings. Nothing here touches the
    /// controller: the agent loop applies the plan's actions
    /// ([`crate::agent_loop::apply_kube_actions`]), then [`Self::publish`]
    /// reports.
    pub fn plan_crosscheck(
        &mut self,
        drift: Vec<crate::finding::Finding>,
        view: &ControllerView<'_>,
    ) -> CrossCheckPlan {
        let api_up = self.pods.health.is_up();
        let kubelet_up = self.kubelet.as_ref().is_some_and(|k| k.health.is_up());
        self.metrics.set_source_up(Source::KubeApi, api_up);
        if self.kubelet.is_some() {
            self.metrics.set_source_up(Source::Kubelet, kubelet_up);
        }
        let api: Option<Vec<Arc<Pod>>> = api_up.then(|| self.pods.store.state());
        let kl: Option<Arc<Vec<Pod>>> = if kubelet_up {
            self.kubelet.as_ref().map(|k| k.pods.borrow().clone())
        } else {
            None
        };
        let runtime = view.containers;
        let policy = self.policy.policy.borrow().clone();
        self.metrics
            .set_source_up(Source::KubeNamespaces, self.namespaces.health.is_up());
        // The labels of the namespaces this node's Pods are in (their spec
        // images are judged here; runtime containers by the controller).
        let namespace_labels: BTreeMap<String, BTreeMap<String, String>> = api
            .iter()
            .flatten()
            .filter_map(|p| p.metadata.namespace.clone())
            .chain(
                kl.iter()
                    .flat_map(|v| v.iter())
                    .filter_map(|p| p.metadata.namespace.clone()),
            )
            .collect::<HashSet<String>>()
            .into_iter()
            .filter_map(|ns| Some((ns.clone(), self.namespaces.labels(&ns)?)))
            .collect();
        let out = crosscheck::crosscheck(&CrossCheckInput {
            api_pods: api.as_ref().map(|v| v.iter().map(|p| p.as_ref()).collect()),
            kubelet_pods: kl.as_ref().map(|v| v.iter().collect()),
            runtime,
            policy: &policy,
            previous: &self.obs,
            namespace_labels: &namespace_labels,
        });
        self.obs = out.observations;
        if self.reported.len() > MAX_REPORTED {
            self.reported.clear();
        }
        let exemptions = self.exemptions.borrow().clone();
        let mut plan = plan_findings(
            out.findings,
            view,
            &exemptions,
            self.mode,
            &self.opts,
            &mut self.reported,
        );
        // Fileless and drift execs: their findings are printed already;
        // here each gets its Event on the Pod, and nothing else.
        plan.findings.extend(drift.iter().map(|f| PlannedFinding {
            finding: KubeFinding::from_exec_drift(f),
            emit: false,
            delete_pod: false,
            policy_report: false,
        }));
        plan
    }

    /// Reports a plan whose actions the agent loop applied: Events,
    /// printed findings, Pod deletions, PolicyReports.
    pub async fn publish(&self, plan: CrossCheckPlan, sinks: &Sinks) {
        let mut report_batch: BTreeMap<String, Vec<KubeFinding>> = BTreeMap::new();
        for PlannedFinding {
            finding: f,
            emit,
            delete_pod,
            policy_report,
        } in plan.findings
        {
            if emit {
                crate::finding::emit(&f, &self.metrics, sinks);
            }
            if let Err(e) = kube_actions::post_event(&self.client, &f, &self.node, f.action).await {
                warn!("posting an Event: {e}");
            }
            if delete_pod {
                if let (Some(ns), Some(pod)) = (&f.namespace, &f.pod) {
                    match kube_actions::delete_pod(
                        &self.client,
                        ns,
                        pod,
                        &self.opts.exempt_namespaces,
                    )
                    .await
                    {
                        Ok(o) => info!(namespace = %ns, pod = %pod, outcome = ?o, "pod deletion"),
                        Err(e) => warn!(namespace = %ns, pod = %pod, "deleting the pod: {e}"),
                    }
                }
            }
            if self.reports && policy_report {
                report_batch
                    .entry(f.namespace.clone().unwrap_or_else(|| "default".into()))
                    .or_default()
                    .push(f);
            }
        }
        sinks.flush();
        for (ns, fs) in report_batch {
            let refs: Vec<&KubeFinding> = fs.iter().collect();
            if let Err(e) =
                kube_actions::apply_policy_report(&self.client, &ns, &self.node, &refs).await
            {
                warn!(namespace = %ns, "PolicyReport: {e}");
            }
        }
    }
}

/// What the controller knows, read-only, for the cross-checks: a snapshot
/// of its containers and its decision about each (`Controller::snapshot`).
pub struct ControllerView<'a> {
    pub containers: &'a [Judged],
}

impl ControllerView<'_> {
    /// Whether the runtime path has this container (and so judged it).
    pub fn knows(&self, container_id: &str) -> bool {
        self.containers.iter().any(|c| c.info.id == container_id)
    }

    /// Whether CRI describes this container as a static Pod's.
    pub fn is_static_pod(&self, container_id: &str) -> bool {
        self.containers
            .iter()
            .any(|c| c.info.id == container_id && c.info.static_pod)
    }
}

/// What the cross-checks ask of the controller. The agent loop applies
/// them; the Kubernetes side never mutates the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAction {
    /// Kill the container (`Controller::kill_container`: `cgroup.kill`, a
    /// DENY verdict for its cgroup). If that fails, the finding at index
    /// `finding` of the plan's `findings` is only `alerted`.
    KillContainer { id: String, finding: usize },
}

/// A new finding and what to do with it besides its Event.
#[derive(Debug, Clone)]
pub struct PlannedFinding {
    /// Its `action` is final once the plan's actions are applied.
    pub finding: KubeFinding,
    /// Print and count it: not when the runtime path judged the container
    /// already (it reported it itself).
    pub emit: bool,
    /// Delete its Pod (`--delete-pods`).
    pub delete_pod: bool,
    /// A result in its namespace's PolicyReport (`--policy-reports`): the
    /// cross-checks' findings, not the exec findings that only get their
    /// Event here.
    pub policy_report: bool,
}

/// One cross-check's outcome: the controller actions to apply, then what
/// to report.
#[derive(Debug, Default)]
pub struct CrossCheckPlan {
    /// The cross-checks' new findings, then the fileless and drift exec
    /// findings the controller queued (an Event each, nothing else).
    pub findings: Vec<PlannedFinding>,
    pub actions: Vec<KubeAction>,
}

/// Plans the new (not yet `reported`) findings of a cross-check: the
/// action of each ([`kube_actions::plan`]), never a kill or deletion where
/// admission excluded the Pod, and no kill or second report of an image
/// verdict for a container the runtime path knows (it judged, killed and
/// reported it by the image it runs).
pub fn plan_findings(
    findings: Vec<KubeFinding>,
    view: &ControllerView<'_>,
    exemptions: &Exemptions,
    mode: Mode,
    opts: &ActionOptions,
    reported: &mut HashSet<String>,
) -> CrossCheckPlan {
    let mut plan = CrossCheckPlan::default();
    for mut f in findings {
        if !reported.insert(f.dedup_key()) {
            continue;
        }
        let mut p = kube_actions::plan(&f, mode, opts);
        // A mirror Pod's status names the static Pod's containers, which
        // CRI describes: only that says the Pod is static.
        let static_pod = f
            .container_id
            .as_deref()
            .is_some_and(|id| view.is_static_pod(id));
        let exempt = f
            .namespace
            .as_deref()
            .and_then(|ns| exemptions.exempt(ns, f.pod.as_deref(), static_pod));
        if exempt.is_some() {
            // Admission excluded this Pod: report, never kill or delete.
            p.kill = false;
            p.delete_pod = false;
            p.action = FindingAction::Alerted;
        }
        // The runtime path already judged (and killed) containers it
        // knows by their image; here only what it cannot see.
        let judged_by_runtime = matches!(
            f.reason,
            ReasonKind::UntrustedImage | ReasonKind::InvalidReference
        ) && f.container_id.as_deref().is_some_and(|id| view.knows(id));
        f.action = p.action;
        if p.kill && !judged_by_runtime {
            if let Some(id) = f.container_id.clone() {
                plan.actions.push(KubeAction::KillContainer {
                    id,
                    finding: plan.findings.len(),
                });
            }
        }
        plan.findings.push(PlannedFinding {
            finding: f,
            emit: !judged_by_runtime,
            delete_pod: p.delete_pod,
            policy_report: true,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crosscheck::Observations;
    use crate::sources::{ContainerKind, ContainerState};
    use imagewarden_policy::load_policy_str;

    const UNTRUSTED: &str = "docker.io/library/nginx:1.25";

    /// A running Pod `shop/web` whose container `app` (id `c1`) runs an
    /// image the embedded policy (Enforce) does not trust.
    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web"},
            "spec": {"containers": [{"name": "app", "image": UNTRUSTED}]},
            "status": {"containerStatuses": [{
                "name": "app", "image": UNTRUSTED, "imageID": "",
                "containerID": "containerd://c1", "ready": true,
                "restartCount": 0, "state": {"running": {}}
            }]}
        }))
        .unwrap()
    }

    fn runtime_c1() -> ContainerInfo {
        let mut c = ContainerInfo::new("c1".into(), "cri");
        c.kind = Some(ContainerKind::Container);
        c.pod_name = Some("web".into());
        c.pod_namespace = Some("shop".into());
        c.pod_uid = Some("uid-web".into());
        c.container_name = Some("app".into());
        c.image_as_written = Some(UNTRUSTED.into());
        c.state = ContainerState::Running;
        c
    }

    #[test]
    fn a_container_finds_its_pod_by_name_and_uid() {
        let mut w = kube::runtime::reflector::store::Writer::<Pod>::default();
        w.apply_watcher_event(&kube::runtime::watcher::Event::Apply(pod()));
        let mut other = pod();
        other.metadata.name = Some("db".into());
        other.metadata.uid = Some("uid-db".into());
        w.apply_watcher_event(&kube::runtime::watcher::Event::Apply(other));
        let store = w.as_reader();
        let name_of = |c: &ContainerInfo| pod_of(&store, c).and_then(|p| p.metadata.name.clone());
        let c = runtime_c1();
        assert_eq!(name_of(&c).as_deref(), Some("web"));
        let ctx = pod_context(&pod_of(&store, &c).unwrap(), &c).expect("its container");
        assert_eq!(
            (ctx.namespace.as_str(), ctx.container_type),
            ("shop", ContainerType::Container)
        );
        // A Pod of that name with another uid (recreated): not this one.
        let mut stale = runtime_c1();
        stale.pod_uid = Some("uid-old".into());
        assert_eq!(name_of(&stale), None);
        // Another namespace: not found.
        let mut elsewhere = runtime_c1();
        elsewhere.pod_namespace = Some("lab".into());
        assert_eq!(name_of(&elsewhere), None);
        // No name from CRI: by uid alone.
        let mut by_uid = runtime_c1();
        by_uid.pod_name = None;
        by_uid.pod_uid = Some("uid-db".into());
        assert_eq!(name_of(&by_uid).as_deref(), Some("db"));
        // A container the Pod spec does not name: no context.
        let mut unnamed = runtime_c1();
        unnamed.container_name = Some("sidecar".into());
        assert!(pod_context(&pod(), &unnamed).is_none());
    }

    fn plan_of(
        runtime: &[ContainerInfo],
        exemptions: &Exemptions,
        reported: &mut HashSet<String>,
    ) -> CrossCheckPlan {
        let policy = load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "embedded").expect("policy");
        let pods = [pod()];
        let runtime: Vec<Judged> = runtime
            .iter()
            .map(|c| Judged {
                info: c.clone(),
                decision: crate::controller::decide(&policy, c, None),
            })
            .collect();
        let runtime = runtime.as_slice();
        let out = crosscheck::crosscheck(&CrossCheckInput {
            api_pods: Some(pods.iter().collect()),
            kubelet_pods: None,
            runtime,
            policy: &policy,
            previous: &Observations::default(),
            namespace_labels: &BTreeMap::new(),
        });
        plan_findings(
            out.findings,
            &ControllerView {
                containers: runtime,
            },
            exemptions,
            Mode::Enforce,
            &ActionOptions::default(),
            reported,
        )
    }

    fn untrusted(plan: &CrossCheckPlan) -> (usize, &PlannedFinding) {
        plan.findings
            .iter()
            .enumerate()
            .find(|(_, p)| p.finding.reason == ReasonKind::UntrustedImage)
            .expect("an untrusted-image finding")
    }

    #[test]
    fn an_untrusted_container_the_runtime_cannot_see_gets_a_kill_action() {
        let mut reported = HashSet::new();
        let plan = plan_of(&[], &Exemptions::default(), &mut reported);
        let (i, p) = untrusted(&plan);
        assert_eq!(
            plan.actions,
            vec![KubeAction::KillContainer {
                id: "c1".into(),
                finding: i
            }]
        );
        assert!(p.emit, "the runtime path never reported it: printed here");
        assert_eq!(p.finding.action, FindingAction::Killed);
        // Reported once: the next run plans nothing for it.
        let again = plan_of(&[], &Exemptions::default(), &mut reported);
        assert!(again.findings.is_empty() && again.actions.is_empty());
    }

    #[test]
    fn a_container_the_runtime_judged_is_neither_killed_nor_reported_twice() {
        let plan = plan_of(&[runtime_c1()], &Exemptions::default(), &mut HashSet::new());
        let (_, p) = untrusted(&plan);
        assert!(plan.actions.is_empty(), "the controller killed it already");
        assert!(
            !p.emit,
            "the controller printed it already; only its Event here"
        );
    }

    #[test]
    fn what_admission_excluded_is_alerted_never_killed() {
        let exempt = Exemptions {
            namespaces: vec!["shop".into()],
            ..Exemptions::default()
        };
        let plan = plan_of(&[], &exempt, &mut HashSet::new());
        let (_, p) = untrusted(&plan);
        assert!(plan.actions.is_empty());
        assert_eq!(p.finding.action, FindingAction::Alerted);
        assert!(!p.delete_pod);
    }
}
