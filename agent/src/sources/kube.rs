//! The API server as a source: Pods on this node, and policies from the
//! cluster (Kyverno `ClusterPolicy`/`Policy`, `ValidatingPolicy`/
//! `NamespacedValidatingPolicy`, Kubernetes `ValidatingAdmissionPolicy` with
//! its bindings, native `ImagePolicy`).
//!
//! One shared [`kube::Client`] ([`client`]) serves every watcher. Each
//! source returns a handle to read from and a future the caller spawns;
//! nothing is spawned here, so the run loop decides about lifetimes.
//!
//! - [`pod_source`]: a reflector on Pods with `spec.nodeName=<node>`,
//!   managed fields trimmed, kube-runtime's default backoff, bookmarks on.
//! - [`namespace_source`]: a reflector on Namespaces (their labels decide
//!   policies' `namespaceSelector`s).
//! - [`policy_source`]: watches the policy kinds that exist (discovered,
//!   and rediscovered periodically when a CRD is missing), compiles each
//!   object with `imagewarden_policy::load_policy_str` and publishes a
//!   merged [`PolicySet`] on every change. An object whose update does not
//!   compile keeps its last good version.
//!
//! Health: every source has a [`SourceHealth`] whose `up` flag goes false
//! on the first error and true again on the next success, without restart.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use imagewarden_policy::{load_policy_str, PolicySet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Errors building the shared client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No in-cluster service account and no usable kubeconfig.
    #[error("no Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// A kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The client could not be built (TLS setup, bad URL).
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// The shared client: in-cluster service account, else `KUBECONFIG` (or
/// `~/.kube/config`), as `kube::Client::try_default` decides.
pub async fn client() -> Result<Client, KubeError> {
    let config = Config::infer().await?;
    Client::try_from(config).map_err(KubeError::Client)
}

/// A client from one kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, KubeError> {
    let wrap = |source| KubeError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    let kc = Kubeconfig::read_from(path).map_err(wrap)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(wrap)?;
    Client::try_from(config).map_err(KubeError::Client)
}

/// Whether a source currently works; shared with the metrics and `/readyz`.
#[derive(Debug)]
pub struct SourceHealth {
    name: &'static str,
    up: AtomicBool,
    errors: AtomicU64,
    /// Bumped on every change of `up`, so waiters can tell flaps apart.
    transitions: AtomicU64,
}

impl SourceHealth {
    /// A source that starts down (nothing seen yet).
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(SourceHealth {
            name,
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
        })
    }
    /// Source name for metrics labels (`api`, `kubelet`, `policy`).
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Whether the last attempt worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    /// Errors seen since start.
    pub fn errors_total(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// How many times `up` changed.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }
    /// Records a success; logs the recovery once.
    pub fn set_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.transitions.fetch_add(1, Ordering::Relaxed);
            info!(source = self.name, "source up");
        }
    }
    /// Records a failure; logs the first one of an outage at warn.
    pub fn set_down(&self, err: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            self.transitions.fetch_add(1, Ordering::Relaxed);
            warn!(source = self.name, error = %err, "source down");
        } else {
            debug!(source = self.name, error = %err, "source still down");
        }
    }
}

/// How often a down API source is probed (a `limit=1` list with the same
/// selector the watcher uses) so that `up` comes back even when no pod
/// changes after the outage.
pub const API_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Pods of this node, as the API server has them.
#[derive(Clone)]
pub struct PodSource {
    /// The reflector's store (managed fields trimmed).
    pub store: Store<Pod>,
    /// `up` flag of the API server source.
    pub health: Arc<SourceHealth>,
    /// Bumped after every applied change (and after each complete
    /// (re)list): a single-slot channel, so a slow reader sees only the
    /// latest generation and nothing queues up.
    pub changes: watch::Receiver<u64>,
}

/// The field selector for pods scheduled on `node`.
pub fn node_field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Watches the Pods with `spec.nodeName=<node>`. Spawn the returned future;
/// it runs until dropped.
pub fn pod_source(client: Client, node: &str) -> (PodSource, BoxFuture<'static, ()>) {
    pod_source_with_probe(client, node, API_PROBE_INTERVAL)
}

/// [`pod_source`] with a chosen probe interval (tests use a short one).
pub fn pod_source_with_probe(
    client: Client,
    node: &str,
    probe_every: Duration,
) -> (PodSource, BoxFuture<'static, ()>) {
    let selector = node_field_selector(node);
    let (store, health, changes, fut) = reflect(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&selector), // bookmarks are on by default
        ListParams::default().fields(&selector).limit(1),
        "api",
        probe_every,
    );
    (
        PodSource {
            store,
            health,
            changes,
        },
        fut,
    )
}

/// The cluster's Namespaces (for their labels: `namespaceSelector`).
#[derive(Clone)]
pub struct NamespaceSource {
    pub store: Store<Namespace>,
    pub health: Arc<SourceHealth>,
    /// Bumped after every applied change, as [`PodSource::changes`].
    pub changes: watch::Receiver<u64>,
}

impl NamespaceSource {
    /// A Namespace's labels, `None` when it is not known (not listed yet,
    /// or the source cannot list Namespaces).
    pub fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let ns = self
            .store
            .get(&kube::runtime::reflector::ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}

/// Watches every Namespace (list/watch `namespaces`, cluster-wide: their
/// labels decide `namespaceSelector`s). Spawn the returned future.
pub fn namespace_source(client: Client) -> (NamespaceSource, BoxFuture<'static, ()>) {
    let (store, health, changes, fut) = reflect(
        Api::<Namespace>::all(client),
        watcher::Config::default(),
        ListParams::default().limit(1),
        "api_namespaces",
        API_PROBE_INTERVAL,
    );
    (
        NamespaceSource {
            store,
            health,
            changes,
        },
        fut,
    )
}

/// A reflector on one kind (managed fields trimmed, kube-runtime's default
/// backoff), its health (down on the first error, up on the next success;
/// probed while down, as the watcher emits nothing when a watch restarts
/// cleanly), and a change generation bumped after every applied change and
/// every complete (re)list: a single-slot channel, so a slow reader sees
/// only the latest generation and nothing queues up.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    probe_params: ListParams,
    name: &'static str,
    probe_every: Duration,
) -> (
    Store<K>,
    Arc<SourceHealth>,
    watch::Receiver<u64>,
    BoxFuture<'static, ()>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let health = SourceHealth::new(name);
    let (tx, rx) = watch::channel(0u64);
    let h = health.clone();
    let fut = async move {
        let stream = watcher(api.clone(), cfg)
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None)
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        let mut probe = tokio::time::interval(probe_every);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    None => break,
                    Some(Ok(ev)) => {
                        h.set_up();
                        if matches!(
                            ev,
                            watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
                        ) {
                            tx.send_modify(|g| *g += 1);
                        }
                    }
                    Some(Err(e)) => h.set_down(&e),
                },
                _ = probe.tick(), if !h.is_up() => {
                    if api.list(&probe_params).await.is_ok() {
                        h.set_up();
                    }
                }
            }
        }
    }
    .boxed();
    (store, health, rx, fut)
}

/// One kind of policy object imagewarden reads from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `kyverno.io/v1` `ClusterPolicy`.
    KyvernoClusterPolicy,
    /// `kyverno.io/v1` `Policy` (namespaced; all namespaces are watched).
    KyvernoPolicy,
    /// `imagewarden.dev/v1alpha1` `ImagePolicy` (cluster-scoped).
    ImagePolicy,
    /// `policies.kyverno.io` `ValidatingPolicy` (v1, else v1beta1, else v1alpha1).
    ValidatingPolicy,
    /// `policies.kyverno.io` `NamespacedValidatingPolicy` (all namespaces).
    NamespacedValidatingPolicy,
    /// `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicy`.
    ValidatingAdmissionPolicy,
    /// `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicyBinding`.
    ValidatingAdmissionPolicyBinding,
}

impl PolicyKind {
    /// Every kind, in merge order.
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::ImagePolicy,
        PolicyKind::KyvernoClusterPolicy,
        PolicyKind::KyvernoPolicy,
        PolicyKind::ValidatingPolicy,
        PolicyKind::NamespacedValidatingPolicy,
        PolicyKind::ValidatingAdmissionPolicy,
        PolicyKind::ValidatingAdmissionPolicyBinding,
    ];
    /// `(group, preferred version, kind, plural)`.
    pub fn gvkp(self) -> (&'static str, &'static str, &'static str, &'static str) {
        let (group, kind, plural) = self.gkp();
        (group, self.versions()[0], kind, plural)
    }
    fn gkp(self) -> (&'static str, &'static str, &'static str) {
        match self {
            PolicyKind::KyvernoClusterPolicy => ("kyverno.io", "ClusterPolicy", "clusterpolicies"),
            PolicyKind::KyvernoPolicy => ("kyverno.io", "Policy", "policies"),
            PolicyKind::ImagePolicy => ("imagewarden.dev", "ImagePolicy", "imagepolicies"),
            PolicyKind::ValidatingPolicy => (
                "policies.kyverno.io",
                "ValidatingPolicy",
                "validatingpolicies",
            ),
            PolicyKind::NamespacedValidatingPolicy => (
                "policies.kyverno.io",
                "NamespacedValidatingPolicy",
                "namespacedvalidatingpolicies",
            ),
            PolicyKind::ValidatingAdmissionPolicy => (
                "admissionregistration.k8s.io",
                "ValidatingAdmissionPolicy",
                "validatingadmissionpolicies",
            ),
            PolicyKind::ValidatingAdmissionPolicyBinding => (
                "admissionregistration.k8s.io",
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
            ),
        }
    }
    /// Served versions to look for, preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            PolicyKind::KyvernoClusterPolicy | PolicyKind::KyvernoPolicy => &["v1"],
            PolicyKind::ImagePolicy => &["v1alpha1"],
            PolicyKind::ValidatingPolicy | PolicyKind::NamespacedValidatingPolicy => {
                &["v1", "v1beta1", "v1alpha1"]
            }
            PolicyKind::ValidatingAdmissionPolicy
            | PolicyKind::ValidatingAdmissionPolicyBinding => &["v1"],
        }
    }
    fn api_resource(self, version: &str) -> ApiResource {
        let (group, kind, plural) = self.gkp();
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }
    /// ValidatingAdmissionPolicies and their bindings only mean something
    /// together: they are compiled as one document set.
    fn is_vap(self) -> bool {
        matches!(
            self,
            PolicyKind::ValidatingAdmissionPolicy | PolicyKind::ValidatingAdmissionPolicyBinding
        )
    }
    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            PolicyKind::KyvernoClusterPolicy => "clusterpolicy",
            PolicyKind::KyvernoPolicy => "policy",
            PolicyKind::ImagePolicy => "imagepolicy",
            PolicyKind::ValidatingPolicy => "validatingpolicy",
            PolicyKind::NamespacedValidatingPolicy => "namespacedvalidatingpolicy",
            PolicyKind::ValidatingAdmissionPolicy => "validatingadmissionpolicy",
            PolicyKind::ValidatingAdmissionPolicyBinding => "validatingadmissionpolicybinding",
        }
    }
}

/// Which policy kinds to watch, and what else goes into the merged set.
#[derive(Debug, Clone)]
pub struct PolicyWatchConfig {
    /// Kinds to watch (absent CRDs are rediscovered periodically).
    pub kinds: Vec<PolicyKind>,
    /// A policy text always merged first (the `--policy` file), with its
    /// name for messages. It must compile: it is checked by the caller.
    pub base: Option<(String, String)>,
    /// How often to look again for a CRD that is not installed (or after
    /// its watch fails with 404).
    pub rediscover_every: Duration,
    /// How often the ValidatingAdmissionPolicy params are read again.
    pub param_refresh: Duration,
}

impl Default for PolicyWatchConfig {
    fn default() -> Self {
        PolicyWatchConfig {
            kinds: PolicyKind::ALL.to_vec(),
            base: None,
            rediscover_every: Duration::from_secs(60),
            param_refresh: PARAM_REFRESH,
        }
    }
}

/// Counters and flags of the policy source (for the metrics module:
/// `imagewarden_policy_reloads_total{result="ok|failed"}`).
#[derive(Debug, Default)]
pub struct PolicyStats {
    /// Merged sets published.
    pub reloads_ok: AtomicU64,
    /// Object versions rejected (the previous good version stays).
    pub reloads_failed: AtomicU64,
    /// Whether the Kyverno CRDs were found at the last discovery.
    pub kyverno_installed: AtomicBool,
    /// Whether the ImagePolicy CRD was found at the last discovery.
    pub imagepolicy_installed: AtomicBool,
    /// Whether Kyverno's `policies.kyverno.io` ValidatingPolicy CRD was
    /// found at the last discovery.
    pub validatingpolicy_installed: AtomicBool,
}

/// The merged policy, republished on every change.
#[derive(Clone)]
pub struct PolicySource {
    /// Latest merged set (single slot: readers see the newest only).
    pub policy: watch::Receiver<Arc<PolicySet>>,
    /// Reload counters.
    pub stats: Arc<PolicyStats>,
    /// `up` of the policy watches (down while a present kind fails).
    pub health: Arc<SourceHealth>,
}

enum PolicyMsg {
    Init(PolicyKind),
    Apply(PolicyKind, Box<DynamicObject>, bool),
    Delete(PolicyKind, Box<DynamicObject>),
    InitDone(PolicyKind),
    /// The kind is not (or no longer) installed: forget its objects.
    Absent(PolicyKind),
}

/// Policy messages in flight from the per-kind watchers to the merger. The
/// watchers wait when it is full (backpressure, nothing dropped); policy
/// objects are few and change rarely, so 64 is plenty.
const POLICY_CHANNEL: usize = 64;

/// Watches cluster policies and publishes the merged [`PolicySet`]. The
/// initial value is the base policy alone (or empty). Spawn the future.
pub fn policy_source(
    client: Client,
    cfg: PolicyWatchConfig,
) -> (PolicySource, BoxFuture<'static, ()>) {
    let base_set = cfg
        .base
        .as_ref()
        .and_then(|(text, name)| load_policy_str(text, name).ok())
        .unwrap_or_default();
    let (ptx, prx) = watch::channel(Arc::new(base_set));
    let stats = Arc::new(PolicyStats::default());
    let health = SourceHealth::new("policy");
    let (mtx, mrx) = mpsc::channel::<PolicyMsg>(POLICY_CHANNEL);
    let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
    for kind in cfg.kinds.iter().copied() {
        tasks.push(
            watch_policy_kind(
                client.clone(),
                kind,
                mtx.clone(),
                stats.clone(),
                health.clone(),
                cfg.rediscover_every,
            )
            .boxed(),
        );
    }
    drop(mtx);
    let merger = merge_policies(
        client.clone(),
        mrx,
        ptx,
        stats.clone(),
        cfg.base.clone(),
        cfg.param_refresh,
    )
    .boxed();
    tasks.push(merger);
    let fut = async move {
        futures_util::future::join_all(tasks).await;
    }
    .boxed();
    (
        PolicySource {
            policy: prx,
            stats,
            health,
        },
        fut,
    )
}

fn is_not_found(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 404,
        _ => false,
    }
}

/// The first of `kind`'s versions that is served: `Ok(None)` on 404 / not
/// listed.
async fn discover(client: &Client, kind: PolicyKind) -> Result<Option<&'static str>, kube::Error> {
    let (group, _, plural) = kind.gkp();
    for version in kind.versions() {
        match client
            .list_api_group_resources(&format!("{group}/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == plural) => {
                return Ok(Some(version))
            }
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

async fn watch_policy_kind(
    client: Client,
    kind: PolicyKind,
    tx: mpsc::Sender<PolicyMsg>,
    stats: Arc<PolicyStats>,
    health: Arc<SourceHealth>,
    rediscover_every: Duration,
) {
    let set_installed = |v: bool| match kind {
        PolicyKind::ImagePolicy => stats.imagepolicy_installed.store(v, Ordering::Relaxed),
        PolicyKind::KyvernoClusterPolicy | PolicyKind::KyvernoPolicy => {
            stats.kyverno_installed.store(v, Ordering::Relaxed)
        }
        PolicyKind::ValidatingPolicy | PolicyKind::NamespacedValidatingPolicy => {
            stats.validatingpolicy_installed.store(v, Ordering::Relaxed)
        }
        PolicyKind::ValidatingAdmissionPolicy | PolicyKind::ValidatingAdmissionPolicyBinding => {}
    };
    loop {
        let version = match discover(&client, kind).await {
            Ok(Some(v)) => {
                set_installed(true);
                v
            }
            Ok(None) => {
                set_installed(false);
                debug!(
                    kind = kind.label(),
                    "policy CRD not installed; will look again"
                );
                if tx.send(PolicyMsg::Absent(kind)).await.is_err() {
                    return;
                }
                tokio::time::sleep(rediscover_every).await;
                continue;
            }
            Err(e) => {
                health.set_down(&e);
                tokio::time::sleep(rediscover_every.min(Duration::from_secs(5))).await;
                continue;
            }
        };
        let ar = kind.api_resource(version);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut DynamicObject| o.managed_fields_mut().clear());
        let mut stream = std::pin::pin!(stream);
        let mut in_init = false;
        while let Some(ev) = stream.next().await {
            let msg = match ev {
                Ok(watcher::Event::Init) => {
                    in_init = true;
                    PolicyMsg::Init(kind)
                }
                Ok(watcher::Event::InitApply(o)) => PolicyMsg::Apply(kind, Box::new(o), in_init),
                Ok(watcher::Event::InitDone) => {
                    in_init = false;
                    PolicyMsg::InitDone(kind)
                }
                Ok(watcher::Event::Apply(o)) => PolicyMsg::Apply(kind, Box::new(o), false),
                Ok(watcher::Event::Delete(o)) => PolicyMsg::Delete(kind, Box::new(o)),
                Err(e) => {
                    let gone = match &e {
                        watcher::Error::InitialListFailed(k)
                        | watcher::Error::WatchStartFailed(k) => is_not_found(k),
                        _ => false,
                    };
                    health.set_down(&e);
                    if gone {
                        // The CRD was removed: forget its objects, rediscover.
                        break;
                    }
                    continue;
                }
            };
            health.set_up();
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        set_installed(false);
        if tx.send(PolicyMsg::Absent(kind)).await.is_err() {
            return;
        }
        tokio::time::sleep(rediscover_every).await;
    }
}

/// The text handed to `load_policy_str` for one object: its JSON with the
/// metadata cut to what a policy uses (JSON is YAML, one line, no `---`).
pub fn policy_object_text(obj: &DynamicObject) -> String {
    let mut v = serde_json::to_value(obj).unwrap_or(serde_json::Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
        if let Some(ann) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            // kubectl's copy of the whole object: large, and never policy.
            ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v.to_string()
}

fn object_key(kind: PolicyKind, obj: &DynamicObject) -> (PolicyKind, String, String) {
    (kind, obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The merger's state: per object, the last version that compiled.
#[derive(Default)]
struct Merged {
    good: BTreeMap<(PolicyKind, String, String), (String, String)>,
    /// Keys seen during a (re)list of a kind, to drop the ones now gone.
    listing: BTreeMap<PolicyKind, Vec<(PolicyKind, String, String)>>,
    /// The ValidatingAdmissionPolicy params read from the cluster (YAML
    /// documents), compiled with the policies and bindings.
    params: String,
}

impl Merged {
    /// Takes one watcher message in; whether the merged policy changed and
    /// is to be published.
    fn on_message(&mut self, msg: PolicyMsg, stats: &PolicyStats) -> bool {
        match msg {
            PolicyMsg::Init(kind) => {
                self.listing.insert(kind, Vec::new());
                false
            }
            PolicyMsg::Apply(kind, obj, during_init) => self.apply(kind, &obj, during_init, stats),
            PolicyMsg::Delete(kind, obj) => self.good.remove(&object_key(kind, &obj)).is_some(),
            PolicyMsg::InitDone(kind) => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                self.good.retain(|k, _| k.0 != kind || listed.contains(k));
                true
            }
            PolicyMsg::Absent(kind) => {
                // The kind is no longer served (CRD removed, API trouble):
                // its last good policies stay in force rather than vanish;
                // a fresh listing once it is back replaces them.
                let kept = self.good.keys().filter(|k| k.0 == kind).count();
                if kept > 0 {
                    warn!(
                        kind = kind.label(),
                        kept, "policy kind no longer served; its last good policies stay in force"
                    );
                }
                false
            }
        }
    }

    /// A policy object added or changed: kept when it compiles, else the
    /// last good version stays (and the failure is counted). Whether to
    /// publish (never during the kind's initial listing).
    fn apply(
        &mut self,
        kind: PolicyKind,
        obj: &DynamicObject,
        during_init: bool,
        stats: &PolicyStats,
    ) -> bool {
        let key = object_key(kind, obj);
        if during_init {
            self.listing.entry(kind).or_default().push(key.clone());
        }
        let text = policy_object_text(obj);
        let name = format!("{}/{}", kind.label(), display_key(&key));
        if self.good.get(&key).is_some_and(|(t, _)| *t == text) {
            return false;
        }
        match load_policy_str(&text, &name) {
            Ok(set) => {
                // A lone VAP or binding is judged with its partners in
                // build_set.
                for u in set.unsupported().iter().filter(|_| !kind.is_vap()) {
                    warn!(policy = %name, "{u}");
                }
                self.good.insert(key, (text, name));
                !during_init
            }
            Err(e) => {
                stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                let kept = self.good.contains_key(&key);
                warn!(policy = %name, error = %e, kept_previous = kept,
                    "invalid policy update ignored; the last good version stays in force");
                false
            }
        }
    }
}

/// How often the params of the cluster's ValidatingAdmissionPolicies are
/// read again (they are ordinary objects, such as ConfigMaps, that change
/// without any policy changing).
const PARAM_REFRESH: Duration = Duration::from_secs(30);

/// The ValidatingAdmissionPolicies and bindings in force, as one text.
fn vap_text(st: &Merged) -> String {
    let mut vap = String::new();
    for (key, (text, _)) in &st.good {
        if key.0.is_vap() {
            vap.push_str("---\n");
            vap.push_str(text);
            vap.push('\n');
        }
    }
    vap
}

/// Reads the params the bindings in force select; whether they changed.
async fn refresh_params(client: &Client, st: &mut Merged) -> bool {
    let refs = super::vap_params::param_refs(&vap_text(st));
    let params = if refs.is_empty() {
        String::new()
    } else {
        super::vap_params::fetch(client, &refs).await
    };
    let changed = params != st.params;
    st.params = params;
    changed
}

async fn merge_policies(
    client: Client,
    mut rx: mpsc::Receiver<PolicyMsg>,
    tx: watch::Sender<Arc<PolicySet>>,
    stats: Arc<PolicyStats>,
    base: Option<(String, String)>,
    param_refresh: Duration,
) {
    let mut st = Merged::default();
    let mut refresh = tokio::time::interval(param_refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = refresh.tick() => {
                if st.good.keys().any(|k| k.0.is_vap()) && refresh_params(&client, &mut st).await {
                    info!("ValidatingAdmissionPolicy params changed");
                    let set = build_set(&st, base.as_ref());
                    stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    if tx.send(Arc::new(set)).is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        let publish = st.on_message(msg, &stats);
        if publish {
            refresh_params(&client, &mut st).await;
            let set = build_set(&st, base.as_ref());
            info!(
                policies = set.policy_names().len(),
                rules = set.rule_count(),
                partial = set.is_partial(),
                "policy reloaded"
            );
            stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            if tx.send(Arc::new(set)).is_err() {
                return;
            }
        }
    }
}

fn display_key(k: &(PolicyKind, String, String)) -> String {
    if k.1.is_empty() {
        k.2.clone()
    } else {
        format!("{}/{}", k.1, k.2)
    }
}

fn build_set(st: &Merged, base: Option<&(String, String)>) -> PolicySet {
    let mut set = base
        .and_then(|(text, name)| load_policy_str(text, name).ok())
        .unwrap_or_default();
    let mut vap = vap_text(st);
    for (key, (text, name)) in &st.good {
        if key.0.is_vap() {
            continue;
        }
        // Compiled once already when stored; compiling is deterministic.
        match load_policy_str(text, name) {
            Ok(s) => set.extend(s),
            Err(e) => warn!(policy = %name, error = %e, "stored policy no longer compiles"),
        }
    }
    if !vap.is_empty() {
        vap.push_str(&st.params);
        // Policies and bindings are linked by name across objects, and
        // bindings to their params.
        match load_policy_str(&vap, "validatingadmissionpolicies") {
            Ok(s) => {
                for u in s.unsupported() {
                    warn!("{u}");
                }
                set.extend(s)
            }
            Err(e) => warn!(error = %e, "ValidatingAdmissionPolicies no longer compile together"),
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_text_keeps_policy_fields_only() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "imagewarden.dev/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "p", "uid": "u", "resourceVersion": "9",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "a": "b"}},
            "spec": {"rules": [{"name": "r", "allow": [{"registry": "public.ecr.aws"}]}]},
            "status": {"x": 1}
        }))
        .unwrap();
        let t = policy_object_text(&obj);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v["metadata"],
            serde_json::json!({"name": "p", "annotations": {"a": "b"}})
        );
        assert!(v.get("status").is_none());
        load_policy_str(&t, "imagepolicy/p").expect("compiles");
    }

    #[test]
    fn health_flag_flips_and_counts() {
        let h = SourceHealth::new("api");
        assert!(!h.is_up());
        h.set_up();
        h.set_down(&"boom");
        h.set_down(&"boom");
        assert!(!h.is_up());
        assert_eq!(h.errors_total(), 2);
        h.set_up();
        assert!(h.is_up());
        assert_eq!(h.transitions(), 3);
    }
}
