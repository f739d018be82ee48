//! Cross-checks of what the API server, the kubelet and the container
//! runtime say runs on this node. Pure functions: pods, runtime containers,
//! the policy and the previous tag -> digest observations in; findings and
//! the new observations out. No I/O, no clock.
//!
//! Each [`KubeFinding`] has a stable `reason` (a [`ReasonKind`]):
//!
//! - `untrusted-image`: the policy denies the image (containers, init and
//!   ephemeral containers alike, each with its container type, the pod's
//!   namespace and labels);
//! - `invalid-reference`: the image is not a valid reference;
//! - `image-drift`: the running digest differs from the digest the spec
//!   pinned, or a tag now resolves to another digest than before;
//! - `not-in-api`: a running container no API pod accounts for: a static
//!   pod whose mirror pod was rejected (the kubelet knows it), or a
//!   container started outside Kubernetes (only the runtime knows it);
//! - `spec-status-mismatch`: `status.*ContainerStatuses[].image` names
//!   another image than the spec, beyond normalisation.
//!
//! Runtime containers are matched to pods by pod UID (a mirror pod's
//! `kubernetes.io/config.mirror` annotation is the static pod's UID), else
//! by namespace + name (`io.kubernetes.pod.*` labels), and to a container of
//! the pod by name.
use std::collections::{BTreeMap, BTreeSet};

use imagewarden_policy::reference::{parse_normalized_named, tag_name_only, Reference};
use imagewarden_policy::{Action, ContainerType, EvalContext, PolicySet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::Serialize;

use crate::controller::Judged;
use crate::finding::{FindingAction, FindingKind, FindingVerdict, ReasonKind};
use crate::sources::{ContainerInfo, ContainerKind, ContainerState};

/// Annotation of a mirror pod: the UID (config hash) of its static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Annotation of a static pod: its config hash (= its UID on the kubelet).
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Most tag -> digest observations kept; the least recently seen go first.
pub const MAX_OBSERVATIONS: usize = 4096;

/// Which source the pod (or container) of a finding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A pod of the API server.
    Api,
    /// A pod only the kubelet has (static pod without mirror, or the API
    /// server is unreachable).
    Kubelet,
    /// A container only the runtime has.
    Runtime,
}

/// One finding about a container, a JSON line of type `container`. The
/// contract keys (`type`, `verdict`, `action`, `reason`, `pid`,
/// `cgroup_id`, `filename`, `container_id`, `image`, `image_digest`, `pod`,
/// `namespace`) are always present, null where unknown.
///
/// It shares its enums with [`crate::finding::Finding`] but stays its own
/// struct: its line is another contract (`reason` is the kind alone, the
/// text is `message`; Pod, container and policy keys instead of the exec's
/// process keys), which one struct could only produce with two shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeFinding {
    /// Always `container`.
    #[serde(rename = "type")]
    pub kind: FindingKind,
    /// `deny` (policy violation, invalid reference, pinned digest not
    /// honoured) or `unknown` (suspicious, not a policy verdict).
    pub verdict: FindingVerdict,
    /// `none` here; the action layer sets `alerted` / `killed`.
    pub action: FindingAction,
    pub reason: ReasonKind,
    /// Human-readable detail.
    pub message: String,
    pub pid: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub filename: Option<String>,
    /// Runtime container id, without the `containerd://` scheme.
    pub container_id: Option<String>,
    /// The image as written in the spec (or as the runtime knows it).
    pub image: Option<String>,
    /// The digest the container runs, when known (`sha256:...`).
    pub image_digest: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
    /// `container`, `init` or `ephemeral`.
    pub container_type: Option<ContainerType>,
    pub source: Source,
    /// Deciding policy and rule, and the rule's action (`Audit`/`Enforce`).
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub policy_action: Option<Action>,
}

impl KubeFinding {
    /// The Kubernetes side of a fileless or drift exec finding (its Event):
    /// the Pod and container the runtime attributed the exec to.
    pub fn from_exec_drift(f: &crate::finding::Finding) -> Self {
        let source = if f.pod.is_some() && f.namespace.is_some() {
            Source::Api
        } else {
            Source::Runtime
        };
        let mut k = KubeFinding::new(f.reason.kind, f.verdict, source, f.reason.text.clone());
        k.action = f.action;
        k.pid = f.pid;
        k.cgroup_id = f.cgroup_id;
        k.filename = f.filename.clone();
        k.container_id = f.container_id.clone();
        k.image = f.image.clone();
        k.image_digest = f.image_digest.clone();
        k.pod = f.pod.clone();
        k.namespace = f.namespace.clone();
        k
    }

    fn new(reason: ReasonKind, verdict: FindingVerdict, source: Source, message: String) -> Self {
        KubeFinding {
            kind: FindingKind::Container,
            verdict,
            action: FindingAction::None,
            reason,
            message,
            pid: None,
            cgroup_id: None,
            filename: None,
            container_id: None,
            image: None,
            image_digest: None,
            pod: None,
            namespace: None,
            pod_uid: None,
            container_name: None,
            container_type: None,
            source,
            policy: None,
            rule: None,
            policy_action: None,
        }
    }

    /// A key that stays the same while the situation does, for deduplicating
    /// findings across runs (report once, again only when it changes).
    pub fn dedup_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.reason.as_str(),
            self.namespace.as_deref().unwrap_or(""),
            self.pod.as_deref().unwrap_or(""),
            self.container_name.as_deref().unwrap_or(""),
            self.container_id.as_deref().unwrap_or(""),
            self.image.as_deref().unwrap_or(""),
            self.image_digest.as_deref().unwrap_or("")
        )
    }
}

/// Tag -> digest observations carried from one cross-check to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// Normalised `name:tag` -> (digest, generation last seen).
    seen: BTreeMap<String, (String, u64)>,
    generation: u64,
}

impl Observations {
    /// The digest last observed for a normalised `name:tag`.
    pub fn digest_of(&self, tagged: &str) -> Option<&str> {
        self.seen.get(tagged).map(|(d, _)| d.as_str())
    }
    /// Records an observation (for seeding from a previous run).
    pub fn record(&mut self, tagged: &str, digest: &str) {
        self.seen
            .insert(tagged.to_string(), (digest.to_string(), self.generation));
    }
    /// Number of tags observed.
    pub fn len(&self) -> usize {
        self.seen.len()
    }
    /// No observations.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// What the cross-check looks at. `None` for a source means it is
/// unavailable (down): findings that need it are not raised.
pub struct CrossCheckInput<'a> {
    /// Pods of this node from the API server.
    pub api_pods: Option<Vec<&'a Pod>>,
    /// Pods from the kubelet's `/pods`.
    pub kubelet_pods: Option<Vec<&'a Pod>>,
    /// Containers from the runtime(s), each with the controller's decision
    /// (reported for a container no Pod accounts for, never re-evaluated).
    pub runtime: &'a [Judged],
    /// Judges the Pod specs' images (what admission judged).
    pub policy: &'a PolicySet,
    /// Observations returned by the previous run.
    pub previous: &'a Observations,
    /// Labels of the Namespaces the Pods are in, where known (policies'
    /// `namespaceSelector`s); a namespace missing here is not known.
    pub namespace_labels: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// Findings, and the observations to pass to the next run.
#[derive(Debug)]
pub struct CrossCheckOutput {
    pub findings: Vec<KubeFinding>,
    pub observations: Observations,
}

/// What a `status.imageID` (or a runtime's image ref) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageId {
    /// `repo@digest` form: the repository (as written) and the manifest
    /// (or index) digest it was pulled by.
    pub repo_digest: Option<(String, String)>,
    /// Bare `sha256:...`: the image (config) id; not comparable with a
    /// manifest digest.
    pub image_id: Option<String>,
}

fn is_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == want
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses the image id formats of containerd (`docker.io/library/nginx@sha256:...`,
/// `sha256:...`), CRI-O (the same two) and dockershim / cri-dockerd
/// (`docker-pullable://nginx@sha256:...`, `docker://sha256:...`).
pub fn parse_image_id(s: &str) -> ImageId {
    let s = s
        .strip_prefix("docker-pullable://")
        .or_else(|| s.strip_prefix("docker://"))
        .unwrap_or(s);
    let mut out = ImageId {
        repo_digest: None,
        image_id: None,
    };
    if let Some((name, digest)) = s.rsplit_once('@') {
        if is_digest(digest) && !name.is_empty() {
            out.repo_digest = Some((name.to_string(), digest.to_string()));
        }
    } else if is_digest(s) {
        out.image_id = Some(s.to_string());
    }
    out
}

/// `containerd://abc` -> `abc` (also `cri-o://`, `docker://`).
pub fn strip_container_id(s: &str) -> &str {
    s.split_once("://").map_or(s, |(_, id)| id)
}

/// The normalised, comparable form of an image: `name`, tag (defaulting to
/// `latest` without a digest) and digest. `None` for an invalid reference
/// or a bare image id.
fn normalise(image: &str) -> Option<Reference> {
    if is_digest(image) {
        return None;
    }
    parse_normalized_named(image).ok().map(tag_name_only)
}

/// Whether the spec's and the status's image name the same thing, after
/// normalisation (`nginx` = `docker.io/library/nginx:latest`; a status that
/// shows only the digest, or only the tag, is compared on what both have).
pub fn same_image(spec: &str, status: &str) -> bool {
    if spec == status {
        return true;
    }
    let (Some(a), Some(b)) = (normalise(spec), normalise(status)) else {
        // A bare image id or an unparsable status image: not comparable.
        return true;
    };
    if a.domain != b.domain || a.path != b.path {
        return false;
    }
    match (&a.digest, &b.digest) {
        (Some(x), Some(y)) => return x == y,
        (Some(_), None) | (None, Some(_)) => return true,
        (None, None) => {}
    }
    // Tags are only compared when the status carries a tag it did not get
    // from defaulting (both have tags here, after tag_name_only).
    a.tag == b.tag
}

struct PodView<'a> {
    pod: &'a Pod,
    source: Source,
    ns: &'a str,
    name: &'a str,
    uid: &'a str,
    labels: BTreeMap<String, String>,
}

fn view(pod: &Pod, source: Source) -> PodView<'_> {
    let m = &pod.metadata;
    PodView {
        pod,
        source,
        ns: m.namespace.as_deref().unwrap_or(""),
        name: m.name.as_deref().unwrap_or(""),
        uid: m.uid.as_deref().unwrap_or(""),
        labels: m.labels.clone().unwrap_or_default(),
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// UIDs under which a pod's containers may run: its own, and for a mirror
/// pod the static pod's (the config hash).
fn pod_uids(pod: &Pod) -> Vec<&str> {
    let mut v: Vec<&str> = pod.metadata.uid.as_deref().into_iter().collect();
    v.extend(annotation(pod, MIRROR_ANNOTATION));
    v.extend(annotation(pod, CONFIG_HASH_ANNOTATION));
    v
}

struct Index<'a> {
    by_uid: BTreeMap<&'a str, usize>,
    by_name: BTreeMap<(&'a str, &'a str), usize>,
}

fn index<'a>(pods: &[PodView<'a>]) -> Index<'a> {
    let mut by_uid = BTreeMap::new();
    let mut by_name = BTreeMap::new();
    for (i, p) in pods.iter().enumerate() {
        for u in pod_uids(p.pod) {
            by_uid.entry(u).or_insert(i);
        }
        by_name.entry((p.ns, p.name)).or_insert(i);
    }
    Index { by_uid, by_name }
}

impl Index<'_> {
    fn find(&self, uids: &[&str], ns: &str, name: &str) -> Option<usize> {
        uids.iter()
            .find_map(|u| self.by_uid.get(u).copied())
            .or_else(|| self.by_name.get(&(ns, name)).copied())
    }
    fn find_container(&self, c: &ContainerInfo) -> Option<usize> {
        let uids: Vec<&str> = c.pod_uid.as_deref().into_iter().collect();
        match (c.pod_namespace.as_deref(), c.pod_name.as_deref()) {
            (Some(ns), Some(name)) => self.find(&uids, ns, name),
            _ => uids.iter().find_map(|u| self.by_uid.get(u).copied()),
        }
    }
}

/// The spec containers of a pod: (type, name, image).
pub fn spec_containers(pod: &Pod) -> Vec<(ContainerType, &str, &str)> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for c in &spec.containers {
        out.push((
            ContainerType::Container,
            c.name.as_str(),
            c.image.as_deref().unwrap_or(""),
        ));
    }
    for c in spec.init_containers.iter().flatten() {
        out.push((
            ContainerType::Init,
            c.name.as_str(),
            c.image.as_deref().unwrap_or(""),
        ));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        out.push((
            ContainerType::Ephemeral,
            c.name.as_str(),
            c.image.as_deref().unwrap_or(""),
        ));
    }
    out
}

fn status_of<'a>(pod: &'a Pod, ty: ContainerType, name: &str) -> Option<&'a ContainerStatus> {
    let st = pod.status.as_ref()?;
    let list = match ty {
        ContainerType::Container => st.container_statuses.as_ref(),
        ContainerType::Init => st.init_container_statuses.as_ref(),
        ContainerType::Ephemeral => st.ephemeral_container_statuses.as_ref(),
    }?;
    list.iter().find(|s| s.name == name)
}

fn status_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn runtime_live(c: &ContainerInfo) -> bool {
    c.kind != Some(ContainerKind::Sandbox)
        && matches!(
            c.state,
            ContainerState::Running | ContainerState::Paused | ContainerState::Unknown
        )
}

/// A tag seen running at some digest, for the drift pass.
struct TagSighting {
    tagged: String,
    digest: String,
    finding: KubeFinding,
}

/// Runs every cross-check.
pub fn crosscheck(input: &CrossCheckInput<'_>) -> CrossCheckOutput {
    let mut findings = Vec::new();
    let api: Vec<PodView<'_>> = input
        .api_pods
        .iter()
        .flatten()
        .map(|p| view(p, Source::Api))
        .collect();
    let api_idx = index(&api);
    // Kubelet pods the API does not account for (all of them when the API
    // source is down).
    let kubelet_only: Vec<PodView<'_>> = input
        .kubelet_pods
        .iter()
        .flatten()
        .map(|p| view(p, Source::Kubelet))
        .filter(|k| {
            input.api_pods.is_none() || api_idx.find(&pod_uids(k.pod), k.ns, k.name).is_none()
        })
        .collect();
    let kubelet_idx = index(&kubelet_only);
    let api_up = input.api_pods.is_some();

    // Runtime containers per pod (by index into api / kubelet_only), and the
    // ones nobody accounts for.
    let mut rt_api: BTreeMap<usize, Vec<&ContainerInfo>> = BTreeMap::new();
    let mut rt_kubelet: BTreeMap<usize, Vec<&ContainerInfo>> = BTreeMap::new();
    let mut orphans = Vec::new();
    for j in input.runtime.iter().filter(|j| runtime_live(&j.info)) {
        let c = &j.info;
        if let Some(i) = api_idx.find_container(c) {
            rt_api.entry(i).or_default().push(c);
        } else if let Some(i) = kubelet_idx.find_container(c) {
            rt_kubelet.entry(i).or_default().push(c);
        } else {
            orphans.push(j);
        }
    }

    let mut sightings = Vec::new();
    for (pods, rt) in [(&api, &rt_api), (&kubelet_only, &rt_kubelet)] {
        for (i, p) in pods.iter().enumerate() {
            let runtime = rt.get(&i).map(Vec::as_slice).unwrap_or(&[]);
            check_pod(
                input.policy,
                input.namespace_labels.get(p.ns),
                p,
                runtime,
                api_up,
                &mut findings,
                &mut sightings,
            );
        }
    }

    if api_up || input.kubelet_pods.is_some() {
        for j in orphans {
            check_orphan(j, api_up, &mut findings);
        }
    }

    let observations = drift_pass(input.previous, sightings, &mut findings);
    CrossCheckOutput {
        findings,
        observations,
    }
}

fn base_finding(
    reason: ReasonKind,
    verdict: FindingVerdict,
    p: &PodView<'_>,
    ty: ContainerType,
    name: &str,
    image: &str,
    message: String,
) -> KubeFinding {
    let mut f = KubeFinding::new(reason, verdict, p.source, message);
    f.pod = Some(p.name.to_string());
    f.namespace = Some(p.ns.to_string());
    f.pod_uid = Some(p.uid.to_string()).filter(|u| !u.is_empty());
    f.container_name = Some(name.to_string());
    f.container_type = Some(ty);
    f.image = Some(image.to_string());
    f
}

/// What the runtime and the Pod's status say of one spec container.
struct SpecContainer<'a> {
    p: &'a PodView<'a>,
    ty: ContainerType,
    name: &'a str,
    /// The image as the spec writes it.
    image: &'a str,
    status: Option<&'a ContainerStatus>,
    /// The repository and digest the container runs: the runtime's word
    /// first, else the status's.
    running: Option<(String, String)>,
    running_digest: Option<String>,
    container_id: Option<String>,
    pid: Option<u32>,
    /// The runtime runs it, or the status says it runs.
    is_live: bool,
}

impl<'a> SpecContainer<'a> {
    fn observe(
        p: &'a PodView<'a>,
        (ty, name, image): (ContainerType, &'a str, &'a str),
        runtime: &[&ContainerInfo],
    ) -> Self {
        let status = status_of(p.pod, ty, name);
        let rt = runtime
            .iter()
            .find(|c| c.container_name.as_deref() == Some(name));
        let status_id = status.map(|s| s.image_id.as_str()).map(parse_image_id);
        let rt_id = rt.and_then(|c| c.image_ref.as_deref()).map(parse_image_id);
        let running = rt_id
            .as_ref()
            .and_then(|i| i.repo_digest.clone())
            .or_else(|| status_id.as_ref().and_then(|i| i.repo_digest.clone()));
        let running_digest = running
            .as_ref()
            .map(|(_, d)| d.clone())
            .or_else(|| status_id.as_ref().and_then(|i| i.image_id.clone()))
            .or_else(|| rt.and_then(|c| c.image_id.clone()));
        let container_id = rt.map(|c| c.id.clone()).or_else(|| {
            status
                .and_then(|s| s.container_id.as_deref())
                .map(|s| strip_container_id(s).to_string())
                .filter(|s| !s.is_empty())
        });
        SpecContainer {
            p,
            ty,
            name,
            image,
            status,
            running,
            running_digest,
            container_id,
            pid: rt.and_then(|c| c.pid),
            is_live: rt.is_some() || status.is_some_and(status_running),
        }
    }

    /// A finding about this container, with what the runtime says of it.
    fn finding(&self, reason: ReasonKind, verdict: FindingVerdict, message: String) -> KubeFinding {
        let mut f = base_finding(
            reason, verdict, self.p, self.ty, self.name, self.image, message,
        );
        f.container_id = self.container_id.clone();
        f.image_digest = self.running_digest.clone();
        f.pid = self.pid;
        f
    }
}

fn check_pod(
    policy: &PolicySet,
    namespace_labels: Option<&BTreeMap<String, String>>,
    p: &PodView<'_>,
    runtime: &[&ContainerInfo],
    api_up: bool,
    findings: &mut Vec<KubeFinding>,
    sightings: &mut Vec<TagSighting>,
) {
    for spec in spec_containers(p.pod) {
        let c = SpecContainer::observe(p, spec, runtime);
        findings.extend(check_spec_image(policy, namespace_labels, &c));
        // A static pod the API server does not have.
        if p.source == Source::Kubelet && api_up && c.is_live {
            let msg = format!(
                "{}/{} container {} runs on the node but no API pod accounts for it (static pod without mirror pod?)",
                p.ns, p.name, c.name
            );
            findings.push(c.finding(ReasonKind::NotInApi, FindingVerdict::Unknown, msg));
        }
        findings.extend(check_status_image(&c));
        check_digest(&c, findings, sightings);
    }
}

/// The policy on the spec's image (what admission judged), another question
/// than the controller's verdict on the image the runtime runs
/// (docs/architecture.md, "Where the policy is evaluated").
fn check_spec_image(
    policy: &PolicySet,
    namespace_labels: Option<&BTreeMap<String, String>>,
    c: &SpecContainer<'_>,
) -> Option<KubeFinding> {
    let ctx = EvalContext::new(c.ty)
        .with_namespace(Some(c.p.ns))
        .with_labels(&c.p.labels)
        .with_namespace_labels(namespace_labels)
        .with_kind("Pod");
    let verdict = policy.evaluate(c.image, &ctx);
    if verdict.allowed {
        return None;
    }
    let mut f = c.finding(
        ReasonKind::from(verdict.kind),
        FindingVerdict::Deny,
        verdict.reason,
    );
    f.policy = verdict.policy;
    f.rule = verdict.rule;
    f.policy_action = Some(verdict.action);
    Some(f)
}

/// The status's image against the spec's.
fn check_status_image(c: &SpecContainer<'_>) -> Option<KubeFinding> {
    let st_image = c
        .status
        .map(|s| s.image.as_str())
        .filter(|s| !s.is_empty())?;
    if same_image(c.image, st_image) {
        return None;
    }
    let msg = format!(
        "spec image {:?} but status image {:?}",
        imagewarden_policy::text::quote(c.image),
        imagewarden_policy::text::quote(st_image)
    );
    Some(c.finding(ReasonKind::SpecStatusMismatch, FindingVerdict::Unknown, msg))
}

/// The digest the container runs against the one its spec pins; a tag's
/// digest is recorded for the drift pass.
fn check_digest(
    c: &SpecContainer<'_>,
    findings: &mut Vec<KubeFinding>,
    sightings: &mut Vec<TagSighting>,
) {
    let Some(spec_ref) = normalise(c.image) else {
        return;
    };
    match (&spec_ref.digest, &c.running) {
        (Some(pinned), Some((_, run))) if pinned != run => {
            let msg = format!("spec pins {pinned} but the container runs {run}");
            findings.push(c.finding(ReasonKind::ImageDrift, FindingVerdict::Deny, msg));
        }
        (None, Some((_, run))) if c.is_live => {
            let tagged = format!(
                "{}/{}:{}",
                spec_ref.domain,
                spec_ref.path,
                spec_ref.tag.as_deref().unwrap_or("latest")
            );
            sightings.push(TagSighting {
                tagged,
                digest: run.clone(),
                finding: c.finding(
                    ReasonKind::ImageDrift,
                    FindingVerdict::Unknown,
                    String::new(),
                ),
            });
        }
        _ => {}
    }
}

/// A live runtime container no Pod accounts for: `not-in-api`, and the
/// controller's policy violation for it, if any.
fn check_orphan(j: &Judged, api_up: bool, findings: &mut Vec<KubeFinding>) {
    let c = &j.info;
    let image = c
        .image_as_written
        .clone()
        .or_else(|| c.image_ref.clone())
        .unwrap_or_default();
    let digest = c
        .image_ref
        .as_deref()
        .map(parse_image_id)
        .and_then(|i| i.repo_digest.map(|(_, d)| d))
        .or_else(|| c.image_id.clone());
    let fill = |mut f: KubeFinding| {
        f.container_id = Some(c.id.clone());
        f.image = Some(image.clone()).filter(|s| !s.is_empty());
        f.image_digest = digest.clone();
        f.pod = c.pod_name.clone();
        f.namespace = c.pod_namespace.clone();
        f.pod_uid = c.pod_uid.clone();
        f.container_name = c.container_name.clone();
        f.pid = c.pid;
        f
    };
    let whence = if c.pod_uid.is_some() || c.pod_name.is_some() {
        "has Kubernetes pod labels but no pod of the API server or the kubelet matches"
    } else {
        "was started outside Kubernetes"
    };
    let by = if api_up { "API server" } else { "kubelet" };
    let msg = format!(
        "container {} ({} namespace {}) {whence} (checked against the {by})",
        c.id,
        c.runtime,
        c.namespace.as_deref().unwrap_or("-")
    );
    findings.push(fill(KubeFinding::new(
        ReasonKind::NotInApi,
        FindingVerdict::Unknown,
        Source::Runtime,
        msg,
    )));
    // The controller judged this container already (it is one of its
    // snapshot): its decision is reported, the policy is not evaluated
    // again (docs/architecture.md, "Where the policy is evaluated").
    let Some(v) = &j.decision.violation else {
        return;
    };
    let mut f = fill(KubeFinding::new(
        v.reason.kind,
        FindingVerdict::Deny,
        Source::Runtime,
        v.reason.text.clone(),
    ));
    f.container_type = Some(ContainerType::Container);
    f.policy = v.policy.clone();
    f.rule = v.rule.clone();
    f.policy_action = Some(v.action);
    findings.push(f);
}

/// Compares the digests tags run at with the previous observations.
fn drift_pass(
    previous: &Observations,
    sightings: Vec<TagSighting>,
    findings: &mut Vec<KubeFinding>,
) -> Observations {
    let mut next = previous.clone();
    next.generation += 1;
    let gen = next.generation;
    // Digests per tag in this run.
    let mut now: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &sightings {
        now.entry(s.tagged.as_str())
            .or_default()
            .insert(s.digest.as_str());
    }
    // The reference digest per tag: the previous one if it still runs,
    // else the first one seen now.
    let mut reference: BTreeMap<String, String> = BTreeMap::new();
    for s in &sightings {
        if reference.contains_key(&s.tagged) {
            continue;
        }
        let prev = previous.digest_of(&s.tagged);
        let r = match prev {
            Some(p) if now[s.tagged.as_str()].contains(p) => p.to_string(),
            _ => s.digest.clone(),
        };
        reference.insert(s.tagged.clone(), r);
    }
    for s in sightings {
        let prev = previous.digest_of(&s.tagged).map(str::to_string);
        let reference_digest = &reference[&s.tagged];
        let moved_since_last_run = prev.as_ref().is_some_and(|p| *p != s.digest);
        let differs_now = *reference_digest != s.digest;
        if moved_since_last_run || differs_now {
            let before = prev.as_deref().unwrap_or(reference_digest);
            let mut f = s.finding;
            f.message = format!("{} now resolves to {} (was {before})", s.tagged, s.digest);
            findings.push(f);
        }
    }
    for (tagged, digest) in reference {
        next.seen.insert(tagged, (digest, gen));
    }
    if next.seen.len() > MAX_OBSERVATIONS {
        let mut by_age: Vec<(u64, String)> = next
            .seen
            .iter()
            .map(|(k, (_, g))| (*g, k.clone()))
            .collect();
        by_age.sort();
        let excess = next.seen.len() - MAX_OBSERVATIONS;
        for (_, k) in by_age.into_iter().take(excess) {
            next.seen.remove(&k);
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagewarden_policy::load_policy_str;

    const API_PODS: &str = include_str!("../../testdata/kube/api-pods.json");
    const KUBELET_PODS: &str = include_str!("../../testdata/kube/kubelet-pods.json");
    const SEED: &str = include_str!("../../deploy/policies/restrict-registries.yaml");
    /// Trusts public.ecr.aws and registry.k8s.io for every container type.
    const NATIVE: &str = r#"
apiVersion: imagewarden.dev/v1alpha1
kind: ImagePolicy
metadata: {name: trusted}
spec:
  rules:
  - name: trusted-registries
    allow:
    - registry: public.ecr.aws
    - registry: registry.k8s.io
"#;

    fn pods(text: &str) -> Vec<Pod> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        serde_json::from_value(v["items"].clone()).unwrap()
    }

    fn rt(
        id: &str,
        ns: &str,
        pod: &str,
        uid: &str,
        name: &str,
        image: &str,
        image_ref: &str,
    ) -> ContainerInfo {
        let mut c = ContainerInfo::new(id.to_string(), "cri");
        c.namespace = Some("k8s.io".into());
        c.pod_name = Some(pod.into()).filter(|s: &String| !s.is_empty());
        c.pod_namespace = Some(ns.into()).filter(|s: &String| !s.is_empty());
        c.pod_uid = Some(uid.into()).filter(|s: &String| !s.is_empty());
        c.container_name = Some(name.into()).filter(|s: &String| !s.is_empty());
        c.kind = Some(ContainerKind::Container);
        c.image_as_written = Some(image.into());
        c.image_ref = Some(image_ref.into()).filter(|s: &String| !s.is_empty());
        c.state = ContainerState::Running;
        c.pid = Some(4242);
        c
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    struct Run {
        findings: Vec<KubeFinding>,
        obs: Observations,
    }

    fn run(
        policy: &str,
        api: Option<&[Pod]>,
        kubelet: Option<&[Pod]>,
        runtime: &[ContainerInfo],
        prev: &Observations,
    ) -> Run {
        let set = load_policy_str(policy, "test").unwrap();
        // Each container as the controller decided it (no Pod context: only
        // the decisions of containers no Pod accounts for are read).
        let runtime = judged(&set, runtime);
        let out = crosscheck(&CrossCheckInput {
            api_pods: api.map(|p| p.iter().collect()),
            kubelet_pods: kubelet.map(|p| p.iter().collect()),
            runtime: &runtime,
            policy: &set,
            previous: prev,
            namespace_labels: &BTreeMap::new(),
        });
        Run {
            findings: out.findings,
            obs: out.observations,
        }
    }

    fn judged(policy: &PolicySet, runtime: &[ContainerInfo]) -> Vec<Judged> {
        runtime
            .iter()
            .map(|c| Judged {
                info: c.clone(),
                decision: crate::controller::decide(policy, c, None),
            })
            .collect()
    }

    fn find<'a>(
        fs: &'a [KubeFinding],
        reason: ReasonKind,
        pod: &str,
        container: &str,
    ) -> Vec<&'a KubeFinding> {
        fs.iter()
            .filter(|f| {
                f.reason == reason
                    && f.pod.as_deref().unwrap_or("") == pod
                    && f.container_name.as_deref().unwrap_or("") == container
            })
            .collect()
    }

    #[test]
    fn image_id_formats() {
        let h = "a".repeat(64);
        assert_eq!(
            parse_image_id(&format!("docker.io/library/nginx@sha256:{h}")).repo_digest,
            Some(("docker.io/library/nginx".into(), format!("sha256:{h}")))
        );
        assert_eq!(
            parse_image_id(&format!("sha256:{h}")).image_id,
            Some(format!("sha256:{h}"))
        );
        assert_eq!(parse_image_id(&format!("sha256:{h}")).repo_digest, None);
        assert_eq!(
            parse_image_id(&format!("docker-pullable://nginx@sha256:{h}")).repo_digest,
            Some(("nginx".into(), format!("sha256:{h}")))
        );
        assert_eq!(
            parse_image_id(&format!("docker://sha256:{h}")).image_id,
            Some(format!("sha256:{h}"))
        );
        assert_eq!(
            parse_image_id("nginx@sha256:short"),
            ImageId {
                repo_digest: None,
                image_id: None
            }
        );
        assert_eq!(
            parse_image_id(""),
            ImageId {
                repo_digest: None,
                image_id: None
            }
        );
        assert_eq!(strip_container_id("containerd://abc"), "abc");
        assert_eq!(strip_container_id("cri-o://abc"), "abc");
        assert_eq!(strip_container_id("abc"), "abc");
    }

    #[test]
    fn normalisation_of_spec_and_status_images() {
        let h = "a".repeat(64);
        assert!(same_image("nginx", "docker.io/library/nginx:latest"));
        assert!(same_image("busybox:1.36", "docker.io/library/busybox:1.36"));
        assert!(same_image(
            &format!("nginx:1.25@sha256:{h}"),
            &format!("docker.io/library/nginx@sha256:{h}")
        ));
        assert!(same_image(
            "public.ecr.aws/x/y:1",
            &format!("public.ecr.aws/x/y@sha256:{h}")
        ));
        assert!(
            same_image("nginx", &format!("sha256:{h}")),
            "an image id is not comparable"
        );
        assert!(!same_image(
            "public.ecr.aws/app/api:v2",
            "public.ecr.aws/app/api:v1"
        ));
        assert!(!same_image("nginx", "docker.io/library/httpd:latest"));
        assert!(!same_image("nginx:1", "quay.io/library/nginx:1"));
    }

    #[test]
    fn untrusted_images_for_every_container_type_with_the_right_context() {
        let api = pods(API_PODS);
        let r = run(SEED, Some(&api), None, &[], &Observations::default());
        // The seed only governs spec.containers: the init and ephemeral
        // busybox are not governed by it, the legacy pod is fine.
        assert!(find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "setup"
        )
        .is_empty());
        let apiserver = find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "kube-apiserver-node-a",
            "kube-apiserver",
        );
        assert_eq!(apiserver.len(), 1, "registry.k8s.io is not public.ecr.aws");
        assert_eq!(apiserver[0].verdict, FindingVerdict::Deny);
        assert_eq!(
            apiserver[0].policy.as_deref(),
            Some("restrict-image-registries")
        );
        assert_eq!(apiserver[0].policy_action, Some(Action::Enforce));
        assert_eq!(
            apiserver[0].container_id.as_deref(),
            Some("f1".repeat(32).as_str())
        );

        // A native policy governs all three types.
        let only_ecr = NATIVE.replace("    - registry: registry.k8s.io\n", "");
        let r = run(&only_ecr, Some(&api), None, &[], &Observations::default());
        let init = find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "setup",
        );
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].container_type, Some(ContainerType::Init));
        assert_eq!(init[0].namespace.as_deref(), Some("prod"));
        assert_eq!(init[0].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(init[0].image_digest, Some(d('b')));
        assert_eq!(init[0].source, Source::Api);
        let eph = find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "debugger-abcde",
        );
        assert_eq!(eph.len(), 1);
        assert_eq!(eph[0].container_type, Some(ContainerType::Ephemeral));
        assert_eq!(
            eph[0].container_id.as_deref(),
            Some("a3".repeat(32).as_str())
        );
        assert!(find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "nginx"
        )
        .is_empty());

        // Pod labels reach the policy: an exemption by label.
        let exempt = format!("{only_ecr}    exemptions:\n    - podLabels: {{app: web}}\n");
        let r = run(&exempt, Some(&api), None, &[], &Observations::default());
        assert!(find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "setup"
        )
        .is_empty());
        // ... and the namespace.
        let ns_exempt = format!("{only_ecr}    exemptions:\n    - namespaces: [prod]\n");
        let r = run(&ns_exempt, Some(&api), None, &[], &Observations::default());
        assert!(find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "setup"
        )
        .is_empty());
        assert_eq!(
            find(
                &r.findings,
                ReasonKind::UntrustedImage,
                "kube-apiserver-node-a",
                "kube-apiserver"
            )
            .len(),
            1
        );
    }

    #[test]
    fn invalid_reference() {
        let api = pods(API_PODS);
        let r = run(NATIVE, Some(&api), None, &[], &Observations::default());
        let f = find(&r.findings, ReasonKind::InvalidReference, "bad-ref", "app");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].verdict, FindingVerdict::Deny);
        assert!(
            f[0].message.starts_with("invalid-reference"),
            "{}",
            f[0].message
        );
        assert!(find(&r.findings, ReasonKind::UntrustedImage, "bad-ref", "app").is_empty());
    }

    #[test]
    fn pinned_digest_not_honoured_is_drift() {
        let api = pods(API_PODS);
        let r = run(NATIVE, Some(&api), None, &[], &Observations::default());
        let f = find(&r.findings, ReasonKind::ImageDrift, "pinned", "app");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].verdict, FindingVerdict::Deny);
        assert_eq!(f[0].image_digest, Some(d('2')));
        assert!(f[0].message.contains(&d('1')));
        // No other drift on a first run (no previous observations).
        assert_eq!(
            r.findings
                .iter()
                .filter(|f| f.reason == ReasonKind::ImageDrift)
                .count(),
            1
        );
        // The runtime's word wins over the status: it runs the pinned digest.
        let c = rt(
            &"b1".repeat(32),
            "prod",
            "pinned",
            "6f1c2a9e-1111-4c3b-9d7e-000000000002",
            "app",
            "public.ecr.aws/nginx/nginx",
            &format!("public.ecr.aws/nginx/nginx@{}", d('1')),
        );
        let r = run(NATIVE, Some(&api), None, &[c], &Observations::default());
        assert!(find(&r.findings, ReasonKind::ImageDrift, "pinned", "app").is_empty());
    }

    #[test]
    fn a_tag_resolving_to_another_digest_is_drift() {
        let api = pods(API_PODS);
        let first = run(NATIVE, Some(&api), None, &[], &Observations::default());
        assert_eq!(
            first.obs.digest_of("public.ecr.aws/nginx/nginx:1.25"),
            Some(d('3').as_str())
        );
        // dockershim's docker-pullable:// form; the spec had no tag (latest).
        assert_eq!(
            first.obs.digest_of("public.ecr.aws/nginx/nginx:latest"),
            Some(d('5').as_str())
        );
        assert_eq!(
            first.obs.digest_of("public.ecr.aws/docker/library/redis:7"),
            Some(d('4').as_str())
        );
        // Unchanged: no finding.
        let again = run(NATIVE, Some(&api), None, &[], &first.obs);
        assert_eq!(
            again
                .findings
                .iter()
                .filter(|f| f.reason == ReasonKind::ImageDrift)
                .count(),
            1,
            "only the pinned one"
        );
        // The tag moved: the runtime now runs another digest for nginx:1.25.
        let c = rt(
            &"a1".repeat(32),
            "prod",
            "web-7d9c6b8f5-x2x9k",
            "6f1c2a9e-1111-4c3b-9d7e-000000000001",
            "nginx",
            "public.ecr.aws/nginx/nginx:1.25",
            &format!("public.ecr.aws/nginx/nginx@{}", d('9')),
        );
        let moved = run(NATIVE, Some(&api), None, &[c], &first.obs);
        let f = find(
            &moved.findings,
            ReasonKind::ImageDrift,
            "web-7d9c6b8f5-x2x9k",
            "nginx",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].verdict, FindingVerdict::Unknown);
        assert_eq!(f[0].image_digest, Some(d('9')));
        assert_eq!(f[0].pid, Some(4242));
        assert!(f[0].message.contains(&d('3')), "{}", f[0].message);
        assert_eq!(
            moved.obs.digest_of("public.ecr.aws/nginx/nginx:1.25"),
            Some(d('9').as_str())
        );
        // Init containers that finished are not "live": their digest is not
        // recorded as a tag observation.
        assert_eq!(first.obs.digest_of("docker.io/library/busybox:1.36"), None);
    }

    #[test]
    fn spec_status_mismatch() {
        let api = pods(API_PODS);
        let r = run(NATIVE, Some(&api), None, &[], &Observations::default());
        let mm: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.reason == ReasonKind::SpecStatusMismatch)
            .collect();
        assert_eq!(mm.len(), 1, "{mm:#?}");
        assert_eq!(mm[0].pod.as_deref(), Some("mismatch"));
        assert_eq!(
            mm[0].image_digest,
            Some(format!("sha256:{}", "e".repeat(64)))
        );
        // busybox:1.36 vs docker.io/library/busybox:1.36, nginx vs :latest,
        // the CRI-O pod: all equal after normalisation (checked by len above).
    }

    #[test]
    fn static_pod_with_rejected_mirror_is_not_in_api() {
        let api = pods(API_PODS);
        let kubelet = pods(KUBELET_PODS);
        let r = run(
            NATIVE,
            Some(&api),
            Some(&kubelet),
            &[],
            &Observations::default(),
        );
        let nia: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.reason == ReasonKind::NotInApi)
            .collect();
        assert_eq!(
            nia.len(),
            1,
            "the mirrored static pod is accounted for: {nia:#?}"
        );
        assert_eq!(nia[0].pod.as_deref(), Some("node-helper-node-a"));
        assert_eq!(nia[0].source, Source::Kubelet);
        assert_eq!(
            nia[0].container_id.as_deref(),
            Some("99".repeat(32).as_str())
        );
        // Its image is also judged by the policy, in its namespace.
        let u = find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "node-helper-node-a",
            "helper",
        );
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].source, Source::Kubelet);
        assert_eq!(u[0].namespace.as_deref(), Some("kube-system"));
    }

    #[test]
    fn runtime_containers_are_matched_by_uid_mirror_and_name() {
        let api = pods(API_PODS);
        let kubelet = pods(KUBELET_PODS);
        let static_uid = "3b0d6c4ff6a3bc5e92a0c8e21c0b4e2f";
        let runtime = vec![
            // The static kube-apiserver: runs under the static pod's UID.
            rt(
                "s1",
                "kube-system",
                "kube-apiserver-node-a",
                static_uid,
                "kube-apiserver",
                "registry.k8s.io/kube-apiserver:v1.33.0",
                "",
            ),
            // A web container found by namespace + name only (no uid label).
            rt(
                "w1",
                "prod",
                "web-7d9c6b8f5-x2x9k",
                "",
                "nginx",
                "public.ecr.aws/nginx/nginx:1.25",
                "",
            ),
            // A sandbox and an exited container: ignored.
            {
                let mut c = rt("sb", "", "", "", "", "registry.k8s.io/pause:3.10", "");
                c.kind = Some(ContainerKind::Sandbox);
                c
            },
            {
                let mut c = rt(
                    "old",
                    "gone",
                    "deleted-pod",
                    "x",
                    "c",
                    "docker.io/library/nginx",
                    "",
                );
                c.state = ContainerState::Exited;
                c
            },
            // Started with `ctr run` in containerd's default namespace.
            {
                let mut c = rt(
                    "ctr-1",
                    "",
                    "",
                    "",
                    "",
                    "docker.io/library/nginx:latest",
                    &format!("docker.io/library/nginx@{}", d('8')),
                );
                c.runtime = "containerd";
                c.namespace = Some("default".into());
                c
            },
            // CRI labels of a pod that neither API nor kubelet have.
            rt(
                "ghost-1",
                "prod",
                "ghost",
                "ghost-uid",
                "app",
                "public.ecr.aws/nginx/nginx:1.25",
                "",
            ),
        ];
        let r = run(
            NATIVE,
            Some(&api),
            Some(&kubelet),
            &runtime,
            &Observations::default(),
        );
        let nia: BTreeSet<String> = r
            .findings
            .iter()
            .filter(|f| f.reason == ReasonKind::NotInApi)
            .map(|f| f.container_id.clone().unwrap_or_default())
            .collect();
        let want: BTreeSet<String> = ["ctr-1", "ghost-1", &"99".repeat(32)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(nia, want);
        let ctr = r
            .findings
            .iter()
            .find(|f| {
                f.container_id.as_deref() == Some("ctr-1") && f.reason == ReasonKind::NotInApi
            })
            .unwrap();
        assert_eq!(ctr.source, Source::Runtime);
        assert!(
            ctr.message.contains("outside Kubernetes"),
            "{}",
            ctr.message
        );
        assert_eq!(ctr.image_digest, Some(d('8')));
        assert!(ctr.pod.is_none() && ctr.namespace.is_none());
        // ... and its image is judged too.
        let u = r
            .findings
            .iter()
            .find(|f| {
                f.container_id.as_deref() == Some("ctr-1") && f.reason == ReasonKind::UntrustedImage
            })
            .unwrap();
        assert_eq!(u.verdict, FindingVerdict::Deny);
        // The static pod's container got its runtime id through the mirror.
        let w = find(
            &r.findings,
            ReasonKind::UntrustedImage,
            "web-7d9c6b8f5-x2x9k",
            "nginx",
        );
        assert!(w.is_empty());
    }

    #[test]
    fn degraded_modes() {
        let api = pods(API_PODS);
        let kubelet = pods(KUBELET_PODS);
        let ctr = {
            let mut c = rt(
                "ctr-1",
                "",
                "",
                "",
                "",
                "docker.io/library/nginx:latest",
                "",
            );
            c.runtime = "containerd";
            c
        };
        // API down: the kubelet's pods are judged; no static pod is "not in
        // API" (the API cannot be asked), but a container outside
        // Kubernetes still is (the kubelet does not have it either).
        let r = run(
            NATIVE,
            None,
            Some(&kubelet),
            std::slice::from_ref(&ctr),
            &Observations::default(),
        );
        assert_eq!(
            find(
                &r.findings,
                ReasonKind::UntrustedImage,
                "node-helper-node-a",
                "helper"
            )
            .len(),
            1
        );
        let nia: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.reason == ReasonKind::NotInApi)
            .collect();
        assert_eq!(nia.len(), 1);
        assert_eq!(nia[0].container_id.as_deref(), Some("ctr-1"));
        assert!(nia[0].message.contains("kubelet"));
        // Kubelet down: API pods are judged, the orphan found.
        let r = run(
            NATIVE,
            Some(&api),
            None,
            std::slice::from_ref(&ctr),
            &Observations::default(),
        );
        assert_eq!(
            r.findings
                .iter()
                .filter(|f| f.reason == ReasonKind::NotInApi)
                .count(),
            1
        );
        // Both down: only the runtime; nothing can be "not in API".
        let r = run(NATIVE, None, None, &[ctr], &Observations::default());
        assert!(r.findings.iter().all(|f| f.reason != ReasonKind::NotInApi));
    }

    /// A container no Pod accounts for is one the controller decided: its
    /// decision is reported as it stands, whatever the cross-check's policy
    /// would say of the image now.
    #[test]
    fn an_orphan_reports_the_controllers_decision_and_is_not_evaluated_again() {
        let api = pods(API_PODS);
        let ctr = {
            let mut c = rt("ctr-1", "", "", "", "", "docker.io/library/nginx:1", "");
            c.runtime = "containerd";
            c
        };
        let native = load_policy_str(NATIVE, "native").unwrap();
        let allow_all = load_policy_str(
            "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\n\
             metadata: {name: everything}\nspec:\n  rules:\n  - name: any\n\
             \x20   allow: [{registry: docker.io}]\n",
            "all",
        )
        .unwrap();
        let input = |runtime: &'_ [Judged], policy: &'_ PolicySet| {
            crosscheck(&CrossCheckInput {
                api_pods: Some(api.iter().collect()),
                kubelet_pods: None,
                runtime,
                policy,
                previous: &Observations::default(),
                namespace_labels: &BTreeMap::new(),
            })
            .findings
        };
        let of_ctr = |fs: &[KubeFinding], reason: ReasonKind| {
            fs.iter()
                .filter(|f| f.container_id.as_deref() == Some("ctr-1") && f.reason == reason)
                .cloned()
                .collect::<Vec<_>>()
        };
        // The controller allowed it (say, under an older policy): the
        // cross-check's policy, which denies it, is not asked.
        let allowed = judged(&allow_all, std::slice::from_ref(&ctr));
        assert!(allowed[0].decision.violation.is_none());
        let fs = input(&allowed, &native);
        assert!(
            of_ctr(&fs, ReasonKind::UntrustedImage).is_empty(),
            "{fs:#?}"
        );
        assert_eq!(of_ctr(&fs, ReasonKind::NotInApi).len(), 1);
        // The controller denied it: reported with its policy, rule and
        // action, though the cross-check's policy would allow it.
        let denied = judged(&native, std::slice::from_ref(&ctr));
        let v = denied[0].decision.violation.clone().expect("a violation");
        let fs = input(&denied, &allow_all);
        let u = of_ctr(&fs, ReasonKind::UntrustedImage);
        assert_eq!(u.len(), 1, "{fs:#?}");
        assert_eq!(u[0].message, v.reason.text);
        assert_eq!(u[0].policy.as_deref(), Some("trusted"));
        assert_eq!((&u[0].rule, u[0].policy_action), (&v.rule, Some(v.action)));
        assert_eq!(u[0].container_type, Some(ContainerType::Container));
        assert_eq!(u[0].source, Source::Runtime);
    }

    #[test]
    fn findings_serialise_with_the_contract_keys() {
        let api = pods(API_PODS);
        let r = run(NATIVE, Some(&api), None, &[], &Observations::default());
        let f = find(&r.findings, ReasonKind::ImageDrift, "pinned", "app")[0];
        let v = serde_json::to_value(f).unwrap();
        for k in [
            "type",
            "verdict",
            "action",
            "reason",
            "pid",
            "cgroup_id",
            "filename",
            "container_id",
            "image",
            "image_digest",
            "pod",
            "namespace",
            "container_name",
            "container_type",
            "source",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["type"], "container");
        assert_eq!(v["reason"], "image-drift");
        assert_eq!(v["action"], "none");
        assert_eq!(v["container_type"], "container");
        assert_eq!(v["source"], "api");
        assert!(v["pid"].is_null() && v["cgroup_id"].is_null() && v["filename"].is_null());
        assert_ne!(
            f.dedup_key(),
            find(
                &r.findings,
                ReasonKind::SpecStatusMismatch,
                "mismatch",
                "api"
            )[0]
            .dedup_key()
        );
    }

    /// The JSON line of a Kubernetes-side finding is a contract: pinned
    /// text, key order included.
    #[test]
    fn json_lines_are_pinned() {
        let api = pods(API_PODS);
        let r = run(NATIVE, Some(&api), None, &[], &Observations::default());
        let json = |f: &KubeFinding| serde_json::to_string(f).unwrap();
        let f = find(&r.findings, ReasonKind::ImageDrift, "pinned", "app")[0];
        assert_eq!(json(f), PIN_IMAGE_DRIFT, "{}", json(f));
        let f = r
            .findings
            .iter()
            .find(|f| f.reason == ReasonKind::UntrustedImage)
            .unwrap();
        assert_eq!(json(f), PIN_UNTRUSTED, "{}", json(f));
        // The Kubernetes side of a fileless exec.
        let mut e = crate::finding::Finding::container(
            FindingVerdict::Deny,
            FindingAction::Killed,
            crate::finding::Reason::new(ReasonKind::FilelessExec, "fileless-exec: x"),
            Some(3),
            Some(9),
            crate::finding::Attribution {
                pod: Some("web".into()),
                namespace: Some("prod".into()),
                ..Default::default()
            },
        );
        e.fileless = true;
        e.filename = Some("/dev/fd/3".into());
        let k = KubeFinding::from_exec_drift(&e);
        assert_eq!(json(&k), PIN_FILELESS, "{}", json(&k));
    }

    const PIN_IMAGE_DRIFT: &str = r#"{"type":"container","verdict":"deny","action":"none","reason":"image-drift","message":"spec pins sha256:1111111111111111111111111111111111111111111111111111111111111111 but the container runs sha256:2222222222222222222222222222222222222222222222222222222222222222","pid":null,"cgroup_id":null,"filename":null,"container_id":"b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1","image":"public.ecr.aws/nginx/nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111","image_digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","pod":"pinned","namespace":"prod","pod_uid":"6f1c2a9e-1111-4c3b-9d7e-000000000002","container_name":"app","container_type":"container","source":"api","policy":null,"rule":null,"policy_action":null}"#;
    const PIN_UNTRUSTED: &str = r#"{"type":"container","verdict":"deny","action":"none","reason":"untrusted-image","message":"untrusted-image: busybox:1.36 fails rule trusted-registries of policy trusted (Enforce): image not allowed","pid":null,"cgroup_id":null,"filename":null,"container_id":"a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2","image":"busybox:1.36","image_digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","pod":"web-7d9c6b8f5-x2x9k","namespace":"prod","pod_uid":"6f1c2a9e-1111-4c3b-9d7e-000000000001","container_name":"setup","container_type":"init","source":"api","policy":"trusted","rule":"trusted-registries","policy_action":"Enforce"}"#;
    const PIN_FILELESS: &str = r#"{"type":"container","verdict":"deny","action":"killed","reason":"fileless-exec","message":"fileless-exec: x","pid":3,"cgroup_id":9,"filename":"/dev/fd/3","container_id":null,"image":null,"image_digest":null,"pod":"web","namespace":"prod","pod_uid":null,"container_name":null,"container_type":null,"source":"api","policy":null,"rule":null,"policy_action":null}"#;

    #[test]
    fn observations_are_bounded() {
        let mut prev = Observations::default();
        for i in 0..MAX_OBSERVATIONS + 10 {
            prev.record(&format!("r/x:{i}"), "sha256:0");
        }
        let r = run(NATIVE, Some(&pods(API_PODS)), None, &[], &prev);
        assert_eq!(r.obs.len(), MAX_OBSERVATIONS);
        assert!(
            r.obs.digest_of("public.ecr.aws/nginx/nginx:1.25").is_some(),
            "fresh ones kept"
        );
    }
}
