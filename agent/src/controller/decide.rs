//! The decision: one verdict per container from the policy, what admission
//! excluded and whether CRI has confirmed the container (pure functions, plus
//! the controller's `judge_info` that gathers their inputs).
use std::collections::BTreeMap;

use imagewarden_policy::{Action, ContainerType, DriftDecision, EvalContext, PolicySet};

use super::*;
use crate::{
    finding::{Reason, ReasonKind},
    probes::event::KernelVerdict,
    sources::{kyverno_config::Exemptions, ContainerInfo, ContainerKind},
};

/// What the controller decided about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Kernel verdict: Allow, Deny (enforce rule), Audit (audit rule) or
    /// Hold (pending; see [`judge`]).
    pub kernel: KernelVerdict,
    pub reason: Reason,
    /// The policy's refusal of the image the container runs, as evaluated:
    /// before what admission excluded turned a Deny into an Audit, and kept
    /// while the container waits for CRI (Hold). `None` when the policy
    /// allowed the image or was not asked (a pod sandbox, no image name).
    /// The cross-checks report it instead of evaluating the container again
    /// (docs/architecture.md, "Where the policy is evaluated").
    pub violation: Option<Box<Violation>>,
}

impl Decision {
    /// A decision the policy had no say in (no violation).
    pub fn new(kernel: KernelVerdict, reason: Reason) -> Self {
        Decision {
            kernel,
            reason,
            violation: None,
        }
    }
}

/// What a finding about a container the policy refused names: the reason
/// (kind and the policy's text), the deciding policy and rule, and the
/// rule's action (`kube_actions::plan` never kills on an `Audit` rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: Reason,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub action: Action,
}

impl Violation {
    /// The refusal in a policy verdict; `None` when it allows the image.
    pub fn of(v: imagewarden_policy::Verdict) -> Option<Box<Self>> {
        (!v.allowed).then(|| {
            Box::new(Violation {
                reason: Reason::new(v.kind.into(), v.reason),
                policy: v.policy,
                rule: v.rule,
                action: v.action,
            })
        })
    }
}

/// A container and the controller's decision about it: what the
/// Kubernetes side reads of the controller (`Controller::snapshot`).
#[derive(Debug, Clone)]
pub struct Judged {
    pub info: ContainerInfo,
    pub decision: Decision,
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
        .and_then(|ns| exempt.exempt(ns, info.pod_name.as_deref(), info.static_pod))
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

/// What the Kubernetes sources say about a runtime container, found through
/// the Pod identity CRI reports: which kind of container it is, the Pod's
/// namespace and labels, the Namespace's labels. (Never the Pod spec's
/// image: the image judged is the one the runtime runs.)
#[derive(Debug, Clone)]
pub struct PodContext {
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
        if let Some(why) =
            ns.and_then(|ns| exempt.exempt(ns, info.pod_name.as_deref(), info.static_pod))
        {
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
        return Decision::new(
            KernelVerdict::Allow,
            Reason::new(ReasonKind::Allowed, "allowed: pod sandbox"),
        );
    }
    // The image the runtime runs, never the Pod spec's (issue 13, case 6):
    // a Pod found through forged or stale identity must not lend its image.
    let image = info
        .image_as_written
        .as_deref()
        .filter(|i| !is_image_id(i))
        .or(info.image_ref.as_deref());
    let Some(image) = image else {
        return Decision::new(
            KernelVerdict::Deny,
            Reason::new(
                ReasonKind::Unresolved,
                "unresolved: the runtime reports no image name",
            ),
        );
    };
    let v = policy.evaluate(image, &eval_context(info, pod));
    let kernel = if v.allowed {
        KernelVerdict::Allow
    } else if v.action == Action::Enforce {
        KernelVerdict::Deny
    } else {
        KernelVerdict::Audit
    };
    let reason = Reason::new(v.kind.into(), v.reason.clone());
    Decision {
        kernel,
        reason,
        violation: Violation::of(v),
    }
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
            Decision::new(
                KernelVerdict::Allow,
                Reason::new(
                    ReasonKind::Allowed,
                    "allowed: the node's pod sandbox image (CRI's sandbox image, node configuration)",
                ),
            ),
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
                violation: d.violation,
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

impl<K: KernelMaps> Controller<K> {
    /// The container's decision, its exec-drift policy, and whether it
    /// waits for CRI's confirmation.
    pub(super) fn judge_info(
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sources::ContainerState;

    /// A running container of containerd namespace `default` (what
    /// containerd's API reports: no kind, no Pod).
    pub(in crate::controller) fn info(image: Option<&str>) -> ContainerInfo {
        let mut i = ContainerInfo::new("c1".into(), "containerd");
        i.namespace = Some("default".into());
        i.state = ContainerState::Running;
        i.image_as_written = image.map(str::to_string);
        i
    }

    #[test]
    fn drift_policy_bits_follow_rules_flag_and_exemptions() {
        let seed =
            imagewarden_policy::load_policy_str(crate::cmd_run::EMBEDDED_POLICY, "seed").unwrap();
        let mut i = info(Some("public.ecr.aws/nginx/nginx:latest"));
        let none = Exemptions::default();
        let entry = |d: DriftDecision| {
            Entry::new(
                info(None),
                Decision::new(KernelVerdict::Allow, Reason::new(ReasonKind::Allowed, "")),
                d,
            )
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
        // PodContext does not carry it, so a Pod whose spec writes a trusted
        // image cannot lend it to a container that runs another.
        let d = decide(
            &policy,
            &info(Some("docker.io/library/nginx:latest")),
            Some(&regular),
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
        // A static Pod (CRI says so): Kyverno never checks what the
        // kubelet sends (default excludeGroups system:nodes): audit, and
        // the reason says why; the same image in an API Pod is denied.
        i.static_pod = true;
        let d = decide_with(&policy, &i, None, &ex);
        assert_eq!(d.kernel, KernelVerdict::Audit, "{d:?}");
        assert!(d.reason.text.contains("static Pod"), "{d:?}");
        let mut cm = BTreeMap::new();
        cm.insert("excludeGroups".to_string(), "team-a".to_string());
        let (judged, _) = Exemptions::from_configmap(&[], "kyverno/kyverno", Some("n1"), &cm);
        assert_eq!(
            decide_with(&policy, &i, None, &judged).kernel,
            KernelVerdict::Deny
        );
        i.static_pod = false;
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
}
