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
use imagewarden_policy::PolicySet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use tracing::{info, warn};

use crate::{
    cli::{Mode, RunArgs},
    controller::{Controller, PodContext, PodLookup},
    crosscheck::{self, CrossCheckInput, KubeFinding, Observations},
    finding::{FindingAction, ReasonKind},
    kube_actions::{self, ActionOptions, ModeResolver},
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
    modes: ModeResolver,
    opts: ActionOptions,
    reports: bool,
    obs: Observations,
    reported: HashSet<String>,
    reloads_seen: (u64, u64),
    metrics: Metrics,
    /// What admission excluded (Kyverno's resourceFilters, --exempt-namespace).
    pub exemptions: tokio::sync::watch::Receiver<Arc<Exemptions>>,
}

/// The Pod spec behind a runtime container, from a Pod store.
pub fn pod_context(pods: &[Arc<Pod>], c: &ContainerInfo) -> Option<PodContext> {
    let name = c.container_name.as_deref()?;
    let pod = pods.iter().find(|p| {
        let m = &p.metadata;
        match (&c.pod_uid, &m.uid) {
            (Some(a), Some(b)) => a == b,
            _ => {
                m.name.as_deref() == c.pod_name.as_deref()
                    && m.namespace.as_deref() == c.pod_namespace.as_deref()
            }
        }
    })?;
    let (ty, _, image) = crosscheck::spec_containers(pod)
        .into_iter()
        .find(|(_, n, _)| *n == name)?;
    Some(PodContext {
        image: image.to_string(),
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

fn lookup(store: Store<Pod>, namespaces: NamespaceSource) -> PodLookup {
    Box::new(move |c: &ContainerInfo| {
        let mut p = pod_context(&store.state(), c)?;
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
        let modes = ModeResolver::new(match args.mode {
            Mode::Audit => kube_actions::Mode::Audit,
            Mode::Enforce => kube_actions::Mode::Enforce,
        });
        info!(node = %node, "Kubernetes sources started");
        Ok(KubeState {
            client,
            node,
            pods,
            namespaces,
            policy,
            kubelet,
            modes,
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
        lookup(self.pods.store.clone(), self.namespaces.clone())
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

    /// Runs the cross-checks and acts on new findings.
    pub async fn crosscheck(&mut self, ctrl: &mut Controller, sinks: &Sinks) {
        // Fileless and drift execs: their findings are printed already; here
        // each gets its Event on the Pod.
        for f in ctrl.take_drift_findings() {
            let k = KubeFinding::from_exec_drift(&f);
            if let Err(e) = kube_actions::post_event(&self.client, &k, &self.node, k.action).await {
                warn!("posting an Event: {e}");
            }
        }
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
        let runtime = ctrl.containers();
        let policy = self.policy.policy.borrow().clone();
        self.metrics
            .set_source_up(Source::KubeNamespaces, self.namespaces.health.is_up());
        // The labels of the namespaces this node's Pods and containers are in.
        let namespace_labels: BTreeMap<String, BTreeMap<String, String>> = api
            .iter()
            .flatten()
            .filter_map(|p| p.metadata.namespace.clone())
            .chain(
                kl.iter()
                    .flat_map(|v| v.iter())
                    .filter_map(|p| p.metadata.namespace.clone()),
            )
            .chain(runtime.iter().filter_map(|c| c.pod_namespace.clone()))
            .collect::<HashSet<String>>()
            .into_iter()
            .filter_map(|ns| Some((ns.clone(), self.namespaces.labels(&ns)?)))
            .collect();
        let out = crosscheck::crosscheck(&CrossCheckInput {
            api_pods: api.as_ref().map(|v| v.iter().map(|p| p.as_ref()).collect()),
            kubelet_pods: kl.as_ref().map(|v| v.iter().collect()),
            runtime: &runtime,
            policy: &policy,
            previous: &self.obs,
            namespace_labels: &namespace_labels,
        });
        self.obs = out.observations;
        if self.reported.len() > MAX_REPORTED {
            self.reported.clear();
        }
        let mut report_batch: BTreeMap<String, Vec<KubeFinding>> = BTreeMap::new();
        for mut f in out.findings {
            if !self.reported.insert(f.dedup_key()) {
                continue;
            }
            let mut p = kube_actions::plan(&f, &self.modes, &self.opts);
            // A mirror Pod's status names the static Pod's containers, which
            // CRI describes: only that says the Pod is static.
            let static_pod = f
                .container_id
                .as_deref()
                .is_some_and(|id| ctrl.is_static_pod(id));
            let exempt = f.namespace.as_deref().and_then(|ns| {
                self.exemptions
                    .borrow()
                    .exempt(ns, f.pod.as_deref(), static_pod)
            });
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
            ) && f.container_id.as_deref().is_some_and(|id| ctrl.knows(id));
            f.action = p.action;
            if p.kill && !judged_by_runtime {
                if let Some(id) = f.container_id.clone() {
                    if !ctrl.kill_container(&id) {
                        f.action = FindingAction::Alerted;
                    }
                }
            }
            if !judged_by_runtime {
                crate::finding::emit(&f, &self.metrics, sinks);
            }
            if let Err(e) = kube_actions::post_event(&self.client, &f, &self.node, f.action).await {
                warn!("posting an Event: {e}");
            }
            if p.delete_pod {
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
            if self.reports {
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
