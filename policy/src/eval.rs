//! The one evaluation model that both front ends compile into.
//!
//! A [`PolicySet`] holds policies, each a list of rules. A rule has a scope
//! (kinds, namespaces, pod labels; match and exclude) and, for each of the
//! three container types, an optional image test. `None` means the rule does
//! not look at that container type at all (Kyverno's seed policy only checks
//! `spec.containers`): such images are *not governed* by the rule.
//!
//! Per image: invalid references are always denied (stricter than Kyverno,
//! whose glob patterns also match strings that are not references); every
//! governing rule is tested; the first failing `Enforce` rule decides, else
//! the first failing `Audit` rule (allowed = false, action = Audit), else the
//! image is allowed.
use std::collections::BTreeMap;

use std::sync::Arc;

use crate::model::{
    Action, ContainerType, EvalContext, Unsupported, Verdict, VerdictKind, Warning,
};
use crate::native::RefMatcher;
use crate::reference::{parse_normalized_named, Reference};
use crate::vpol::{CelRule, Judgement, LabelSelector};
use crate::wildcard::glob_match;

/// A set of loaded policies, ready to evaluate images.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub(crate) policies: Vec<Policy>,
    pub(crate) warnings: Vec<Warning>,
    pub(crate) unsupported: Vec<Unsupported>,
}

#[derive(Debug)]
pub(crate) struct Policy {
    pub name: String,
    /// `ImagePolicy`, `ClusterPolicy`, `Policy`, `ValidatingPolicy`.
    pub kind: String,
    /// A namespaced Kyverno `Policy` only applies in its own namespace.
    pub namespace: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub action: Action,
    pub message: Option<String>,
    pub scope: Scope,
    /// Indexed by [`ContainerType::index`]; `None`: not governed.
    pub tests: [Option<ImageTest>; 3],
    /// Exec drift: which execs of files that are not the image's the rule
    /// refuses in the containers it covers (native `execDrift`).
    pub drift: Option<DriftRule>,
}

/// A rule's `execDrift` (native policies only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DriftRule {
    pub deny_fileless: bool,
    pub deny_writable_layer: bool,
    /// Container types it covers, by [`ContainerType::index`].
    pub types: [bool; 3],
}

/// What the policies say about exec drift in one container
/// ([`PolicySet::exec_drift`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftDecision {
    /// Refuse execs of files with no name on disk (memfd, unlinked):
    /// `Some(Enforce)` stops them in enforce mode, `Some(Audit)` reports
    /// them as denied without stopping them.
    pub fileless: Option<Action>,
    /// The same for files in the container's writable (upper) layer.
    pub writable_layer: Option<Action>,
    /// `policy/rule` that decided each (the first Enforce rule, else the
    /// first Audit rule).
    pub fileless_rule: Option<String>,
    pub writable_layer_rule: Option<String>,
}

impl DriftDecision {
    /// Both kinds denied by `action`, decided by `rule` (a command-line flag).
    pub fn deny_all(action: Action, rule: &str) -> Self {
        DriftDecision {
            fileless: Some(action),
            writable_layer: Some(action),
            fileless_rule: Some(rule.to_string()),
            writable_layer_rule: Some(rule.to_string()),
        }
    }

    /// Keeps, for each kind, the stronger of `self` and `other`.
    pub fn merge(&mut self, other: &DriftDecision) {
        fn pick(
            a: &mut Option<Action>,
            ar: &mut Option<String>,
            b: Option<Action>,
            br: &Option<String>,
        ) {
            let stronger = match (*a, b) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Action::Audit), Some(Action::Enforce)) => true,
                _ => false,
            };
            if stronger {
                *a = b;
                *ar = br.clone();
            }
        }
        pick(
            &mut self.fileless,
            &mut self.fileless_rule,
            other.fileless,
            &other.fileless_rule,
        );
        pick(
            &mut self.writable_layer,
            &mut self.writable_layer_rule,
            other.writable_layer,
            &other.writable_layer_rule,
        );
    }
}

/// Which resources a rule looks at.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// The rule applies when this matches (empty `any` list: everything).
    pub matches: FilterSet,
    /// The rule does not apply when this matches (empty: nothing excluded).
    pub excludes: Option<FilterSet>,
}

#[derive(Debug, Default)]
pub(crate) struct FilterSet {
    /// true: every filter must match (Kyverno `match.all`); false: any.
    pub all: bool,
    pub filters: Vec<Filter>,
}

/// The label the API server sets on every Namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One resource filter. Unset fields match everything.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    /// Kind patterns (Kyverno wildcards allowed: `*`).
    pub kinds: Option<Vec<String>>,
    pub namespaces: Option<NamespaceFilter>,
    /// Every label must be present with this value.
    pub labels: Option<BTreeMap<String, String>>,
    /// A Kubernetes label selector on the Pod's labels (`objectSelector`).
    pub object_selector: Option<LabelSelector>,
    /// A label selector on the workload's Namespace (its labels from
    /// [`EvalContext::namespace_labels`], plus `kubernetes.io/metadata.name`).
    pub namespace_selector: Option<LabelSelector>,
    /// The filter excludes (Kyverno's `exclude`): a namespace selector
    /// whose labels are not known does not match, so the rule still
    /// applies (the stricter answer either way).
    pub in_exclude: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct NamespaceFilter {
    pub names: Vec<String>,
    /// Kyverno namespaces are wildcard patterns; native ones exact names.
    pub wildcard: bool,
    /// Answer when the namespace is not known.
    pub when_unknown: bool,
}

/// A test on one image; `true` means the image passes.
#[derive(Debug, Clone)]
pub(crate) enum ImageTest {
    /// Kyverno `validate.pattern` string leaf on the image as written.
    KyvernoPattern(String),
    /// Kyverno condition operator `Equals`: `ext/wildcard.Match(value, key)`.
    Equals {
        field: ImageField,
        pattern: String,
    },
    /// Kyverno `AnyIn`/`In` on one value: wildcard match either way round.
    InList {
        field: ImageField,
        values: Vec<String>,
    },
    /// Native structural matcher on the normalised reference.
    Native(Box<RefMatcher>),
    /// A CEL rule on the Pod (Kyverno `validate.cel`, ValidatingPolicy,
    /// ValidatingAdmissionPolicy), judged per container; only at the top
    /// of a rule's tests.
    Cel(Arc<CelRule>),
    /// Kyverno `validate.pattern` element of a container list (`containers:
    /// [{(image): ..., imagePullPolicy: ...}]`) on this image's container;
    /// a failed conditional anchor skips it ([`crate::kyverno::PatternOutcome`]).
    ContainerPattern(Arc<serde_json::Value>),
    /// Kyverno `validate.pattern` on the whole Pod (fields outside the
    /// container lists, such as `spec.imagePullSecrets`).
    PodPattern(Arc<serde_json::Value>),
    /// JMESPath filter `[?name=='v']` on a string field of the container.
    ContainerFieldEquals {
        field: String,
        value: String,
    },
    /// Kyverno rule `preconditions`: when `pre` does not hold the rule does
    /// not apply to the image (skip), else `test` decides.
    Pre {
        pre: Box<ImageTest>,
        test: Box<ImageTest>,
    },
    Not(Box<ImageTest>),
    All(Vec<ImageTest>),
    Any(Vec<ImageTest>),
    /// Always true (an alternative that does not constrain this container type).
    True,
}

/// Which string of an image a Kyverno condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageField {
    /// The image as written in the Pod spec (`{{element.image}}`).
    Raw,
    /// A field of Kyverno's image info (`images.containers.*.registry`...).
    Info(InfoField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InfoField {
    Registry,
    Path,
    Name,
    Tag,
    Digest,
    Reference,
    ReferenceWithTag,
}

impl InfoField {
    pub fn from_name(s: &str) -> Option<InfoField> {
        Some(match s {
            "registry" => InfoField::Registry,
            "path" => InfoField::Path,
            "name" => InfoField::Name,
            "tag" => InfoField::Tag,
            "digest" => InfoField::Digest,
            "reference" => InfoField::Reference,
            "referenceWithTag" => InfoField::ReferenceWithTag,
            _ => return None,
        })
    }
}

/// An image being evaluated: as written, and parsed, with the Pod it runs
/// in when known.
pub(crate) struct ImageView<'a> {
    pub raw: &'a str,
    pub reference: &'a Reference,
    pub pod: Option<&'a serde_json::Value>,
    pub container_type: ContainerType,
    pub container_name: Option<&'a str>,
}

impl ImageView<'_> {
    fn field(&self, field: ImageField) -> std::borrow::Cow<'_, str> {
        match field {
            ImageField::Raw => std::borrow::Cow::Borrowed(self.raw),
            ImageField::Info(f) => std::borrow::Cow::Owned(kyverno_info_field(self.raw, f)),
        }
    }
}

/// A field of Kyverno's image info (`GetImageInfo`, default configuration),
/// from [`crate::imageinfo`]. Empty when Kyverno could not parse the image.
pub(crate) fn kyverno_info_field(raw: &str, field: InfoField) -> String {
    let Ok(info) = crate::imageinfo::kyverno_image_info(raw) else {
        return String::new();
    };
    match field {
        InfoField::Registry => info.registry,
        InfoField::Path => info.path,
        InfoField::Name => info.name,
        InfoField::Tag => info.tag,
        InfoField::Digest => info.digest,
        InfoField::Reference => info.reference(),
        InfoField::ReferenceWithTag => info.reference_with_tag(),
    }
}

impl ImageView<'_> {
    /// The Pod, or without one a Pod reduced to this container with only
    /// its name and image (`imagePullPolicy` defaulted as the API server
    /// does): what the agent knows at run time.
    fn pod_or_synthetic(&self) -> std::borrow::Cow<'_, serde_json::Value> {
        match self.pod {
            Some(p) => std::borrow::Cow::Borrowed(p),
            None => {
                let mut c = serde_json::Map::new();
                if let Some(n) = self.container_name {
                    c.insert("name".into(), n.into());
                }
                c.insert("image".into(), self.raw.into());
                let always = self.reference.tag.as_deref() == Some("latest")
                    || (self.reference.tag.is_none() && self.reference.digest.is_none());
                c.insert(
                    "imagePullPolicy".into(),
                    if always { "Always" } else { "IfNotPresent" }.into(),
                );
                std::borrow::Cow::Owned(serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "spec": { self.container_type.field(): [serde_json::Value::Object(c)] },
                }))
            }
        }
    }

    /// Tri-state evaluation of a pattern test (`None`: skipped).
    fn pattern(&self, test: &ImageTest) -> Option<bool> {
        use crate::kyverno::{match_pattern, PatternOutcome};
        if self.pod.is_none() && matches!(test, ImageTest::PodPattern(_)) {
            // Pod fields are not known without the Pod: not judged (the
            // rule carries a load-time warning saying so).
            return None;
        }
        let pod = self.pod_or_synthetic();
        let target = match test {
            ImageTest::PodPattern(p) => return outcome(match_pattern(p, Some(&pod))),
            ImageTest::ContainerPattern(p) => (p, container_of(&pod, self)),
            _ => return Some(test.eval(self)),
        };
        fn outcome(o: PatternOutcome) -> Option<bool> {
            match o {
                PatternOutcome::Pass => Some(true),
                PatternOutcome::Fail => Some(false),
                PatternOutcome::Skip => None,
            }
        }
        // No such container: nothing to check (cannot happen for a Pod
        // the image was taken from).
        target
            .1
            .and_then(|c| outcome(match_pattern(target.0, Some(c))))
    }

    /// Whether the test only reads what is known without the Pod: the
    /// container's image, the defaulted `imagePullPolicy`, and its name
    /// when given.
    fn known_without_pod(&self, test: &ImageTest) -> bool {
        let known = |field: &str| {
            matches!(field, "image" | "imagePullPolicy")
                || (field == "name" && self.container_name.is_some())
        };
        match test {
            ImageTest::PodPattern(_) => false,
            ImageTest::ContainerPattern(p) => {
                crate::kyverno::pattern_fields(p).iter().all(|f| known(f))
            }
            ImageTest::ContainerFieldEquals { field, .. } => known(field),
            ImageTest::Pre { pre, test } => {
                self.known_without_pod(pre) && self.known_without_pod(test)
            }
            ImageTest::Not(t) => self.known_without_pod(t),
            ImageTest::All(ts) | ImageTest::Any(ts) => ts.iter().all(|t| self.known_without_pod(t)),
            _ => true,
        }
    }

    /// Tri-state judgement of a rule's test: `None` when a precondition or
    /// a conditional anchor makes the rule skip this image, or when the
    /// Pod is not known and the test reads fields only the Pod has (not
    /// judged; the rule carries a load-time warning saying so).
    pub(crate) fn judge(&self, test: &ImageTest) -> Option<bool> {
        if self.pod.is_none() && !self.known_without_pod(test) {
            return None;
        }
        match test {
            ImageTest::Pre { pre, test } => {
                if pre.eval(self) {
                    self.judge(test)
                } else {
                    None
                }
            }
            ImageTest::PodPattern(_) | ImageTest::ContainerPattern(_) => self.pattern(test),
            ImageTest::All(ts) => {
                let mut any = false;
                for t in ts {
                    match self.judge(t) {
                        Some(false) => return Some(false),
                        Some(true) => any = true,
                        None => {}
                    }
                }
                any.then_some(true)
            }
            t => Some(t.eval(self)),
        }
    }
}

/// This image's container in the Pod (by list, name and image).
fn container_of<'p>(
    pod: &'p serde_json::Value,
    img: &ImageView<'_>,
) -> Option<&'p serde_json::Value> {
    pod.get("spec")?
        .get(img.container_type.field())?
        .as_array()?
        .iter()
        .find(|c| {
            c.get("image").and_then(serde_json::Value::as_str) == Some(img.raw)
                && (img.container_name.is_none()
                    || c.get("name").and_then(serde_json::Value::as_str) == img.container_name)
        })
}

impl ImageTest {
    pub(crate) fn eval(&self, img: &ImageView<'_>) -> bool {
        match self {
            ImageTest::ContainerPattern(_) | ImageTest::PodPattern(_) => {
                img.pattern(self).unwrap_or(true)
            }
            ImageTest::ContainerFieldEquals { field, value } => {
                let pod = img.pod_or_synthetic();
                container_of(&pod, img)
                    .and_then(|c| c.get(field))
                    .and_then(serde_json::Value::as_str)
                    == Some(value.as_str())
            }
            ImageTest::Pre { pre, test } => !pre.eval(img) || test.eval(img),
            ImageTest::KyvernoPattern(p) => crate::wildcard::kyverno_match(p, img.raw),
            ImageTest::Equals { field, pattern } => glob_match(pattern, &img.field(*field)),
            ImageTest::InList { field, values } => {
                let key = img.field(*field);
                values
                    .iter()
                    .any(|v| glob_match(v, &key) || glob_match(&key, v))
            }
            ImageTest::Native(m) => m.matches(img.reference),
            // Judged in `PolicySet::evaluate_parsed`, which has the context.
            ImageTest::Cel(_) => true,
            ImageTest::Not(t) => !t.eval(img),
            ImageTest::All(ts) => ts.iter().all(|t| t.eval(img)),
            ImageTest::Any(ts) => ts.iter().any(|t| t.eval(img)),
            ImageTest::True => true,
        }
    }
}

impl NamespaceFilter {
    fn matches(&self, ns: Option<&str>) -> bool {
        match ns {
            None => self.when_unknown,
            Some(ns) => self.names.iter().any(|n| {
                if self.wildcard {
                    glob_match(n, ns)
                } else {
                    n == ns
                }
            }),
        }
    }
}

impl Filter {
    fn matches(&self, ctx: &EvalContext<'_>) -> bool {
        if let Some(kinds) = &self.kinds {
            if !kinds.iter().any(|k| glob_match(k, ctx.kind)) {
                return false;
            }
        }
        if let Some(ns) = &self.namespaces {
            if !ns.matches(ctx.namespace) {
                return false;
            }
        }
        if let Some(labels) = &self.labels {
            if !labels
                .iter()
                .all(|(k, v)| ctx.pod_labels.get(k).is_some_and(|x| x == v))
            {
                return false;
            }
        }
        if let Some(sel) = &self.object_selector {
            if !sel.matches(ctx.pod_labels) {
                return false;
            }
        }
        if let (Some(sel), Some(ns)) = (&self.namespace_selector, ctx.namespace) {
            // The API server sets kubernetes.io/metadata.name on every
            // Namespace; the other labels are the Namespace object's.
            let mut labels = ctx.namespace_labels.cloned().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
            let known =
                ctx.namespace_labels.is_some() || sel.keys().all(|k| k == NAMESPACE_NAME_LABEL);
            // Labels not known (the Namespace not seen yet, no Namespace
            // source): the policy applies, as the stricter answer (a match
            // selects, an exclude does not); the agent re-judges when the
            // Namespace's labels arrive.
            let selected = if known {
                sel.matches(&labels)
            } else {
                !self.in_exclude
            };
            if !selected {
                return false;
            }
        }
        true
    }
}

impl FilterSet {
    fn matches(&self, ctx: &EvalContext<'_>) -> bool {
        if self.filters.is_empty() {
            return true;
        }
        if self.all {
            self.filters.iter().all(|f| f.matches(ctx))
        } else {
            self.filters.iter().any(|f| f.matches(ctx))
        }
    }
}

impl Scope {
    fn applies(&self, ctx: &EvalContext<'_>) -> bool {
        if !self.matches.matches(ctx) {
            return false;
        }
        match &self.excludes {
            Some(ex) if !ex.filters.is_empty() => !ex.matches(ctx),
            _ => true,
        }
    }
}

impl Policy {
    fn applies(&self, ctx: &EvalContext<'_>) -> bool {
        match &self.namespace {
            Some(ns) => ctx.namespace == Some(ns.as_str()),
            None => true,
        }
    }
}

impl PolicySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Unsupported constructs, uncovered container types and other remarks,
    /// in the order they were found.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Rules (by name) that are not enforced because imagewarden cannot
    /// enforce them faithfully.
    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }

    /// True when some rule of a loaded policy is not enforced.
    pub fn is_partial(&self) -> bool {
        !self.unsupported.is_empty()
    }

    /// Names of the loaded policies.
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }

    /// `(kind, name)` of the loaded policies.
    pub fn policy_kinds(&self) -> Vec<(&str, &str)> {
        self.policies
            .iter()
            .map(|p| (p.kind.as_str(), p.name.as_str()))
            .collect()
    }

    /// Number of enforced rules over all policies.
    pub fn rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.len()).sum()
    }

    /// Adds the policies, warnings and unsupported rules of `other`.
    pub fn extend(&mut self, other: PolicySet) {
        self.policies.extend(other.policies);
        self.warnings.extend(other.warnings);
        self.unsupported.extend(other.unsupported);
    }

    /// Whether any rule says anything about exec drift.
    pub fn has_drift_rules(&self) -> bool {
        self.policies
            .iter()
            .any(|p| p.rules.iter().any(|r| r.drift.is_some()))
    }

    /// What the rules covering a container (kind, namespace, labels,
    /// container type, exemptions) say about exec drift.
    pub fn exec_drift(&self, ctx: &EvalContext<'_>) -> DriftDecision {
        let ct = ctx.container_type.index();
        let mut d = DriftDecision::default();
        for policy in &self.policies {
            if !policy.applies(ctx) {
                continue;
            }
            for rule in &policy.rules {
                let Some(dr) = rule.drift.filter(|dr| dr.types[ct]) else {
                    continue;
                };
                if !rule.scope.applies(ctx) {
                    continue;
                }
                let name = Some(format!("{}/{}", policy.name, rule.name));
                d.merge(&DriftDecision {
                    fileless: dr.deny_fileless.then_some(rule.action),
                    writable_layer: dr.deny_writable_layer.then_some(rule.action),
                    fileless_rule: name.clone(),
                    writable_layer_rule: name,
                });
            }
        }
        d
    }

    /// Evaluates one image as written in a Pod spec.
    pub fn evaluate(&self, image: &str, ctx: &EvalContext<'_>) -> Verdict {
        let reference = match parse_normalized_named(image) {
            Ok(r) => r,
            Err(e) => {
                return Verdict {
                    allowed: false,
                    kind: VerdictKind::InvalidReference,
                    action: Action::Enforce,
                    reason: format!(
                        "invalid-reference: {:?}: {}",
                        crate::text::quote(image),
                        crate::text::quote(&e.to_string())
                    ),
                    rule: None,
                    policy: None,
                }
            }
        };
        self.evaluate_parsed(image, &reference, ctx)
    }

    /// Evaluates an image already parsed with `parse_normalized_named`.
    pub fn evaluate_parsed(
        &self,
        image: &str,
        reference: &Reference,
        ctx: &EvalContext<'_>,
    ) -> Verdict {
        let view = ImageView {
            raw: image,
            reference,
            pod: ctx.pod,
            container_type: ctx.container_type,
            container_name: ctx.container_name,
        };
        let ct = ctx.container_type.index();
        let mut first_pass: Option<(&Policy, &Rule)> = None;
        let mut passes = 0usize;
        let mut audit_fail: Option<(&Policy, &Rule, Option<String>)> = None;
        for policy in &self.policies {
            if !policy.applies(ctx) {
                continue;
            }
            for rule in &policy.rules {
                let Some(test) = &rule.tests[ct] else {
                    continue;
                };
                if !rule.scope.applies(ctx) {
                    continue;
                }
                match judge_test(test, &view, ctx) {
                    Judgement::NotApplicable => {}
                    Judgement::Pass => {
                        passes += 1;
                        first_pass.get_or_insert((policy, rule));
                    }
                    Judgement::Fail(msg) if rule.action == Action::Enforce => {
                        return fail_verdict(image, policy, rule, msg.as_deref());
                    }
                    Judgement::Fail(msg) => {
                        if audit_fail.is_none() {
                            audit_fail = Some((policy, rule, msg));
                        }
                    }
                }
            }
        }
        if let Some((policy, rule, msg)) = audit_fail {
            return fail_verdict(image, policy, rule, msg.as_deref());
        }
        match first_pass {
            Some((policy, rule)) => {
                let others = if passes > 1 {
                    format!(" (and {} other rule(s))", passes - 1)
                } else {
                    String::new()
                };
                Verdict {
                    allowed: true,
                    kind: VerdictKind::Allowed,
                    action: rule.action,
                    reason: format!(
                        "allowed: {} satisfies rule {} of policy {}{others}",
                        crate::text::quote(image),
                        rule.name,
                        policy.name
                    ),
                    rule: Some(rule.name.clone()),
                    policy: Some(policy.name.clone()),
                }
            }
            None => Verdict {
                allowed: true,
                kind: VerdictKind::Allowed,
                action: Action::Audit,
                reason: format!(
                    "allowed: no rule applies to {} images of a {} in namespace {}",
                    ctx.container_type,
                    ctx.kind,
                    ctx.namespace.unwrap_or("(unknown)")
                ),
                rule: None,
                policy: None,
            },
        }
    }
}

/// What one rule says about one image ([`PolicySet::rule_results`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    pub policy: String,
    pub rule: String,
    pub allowed: bool,
    pub action: Action,
    /// The failure message (validation message for CEL rules).
    pub message: Option<String>,
}

impl PolicySet {
    /// The result of every rule that governs this image in this context
    /// (rules that do not apply are left out). Invalid references give no
    /// rule results; [`PolicySet::evaluate`] denies them.
    pub fn rule_results(&self, image: &str, ctx: &EvalContext<'_>) -> Vec<RuleResult> {
        let Ok(reference) = parse_normalized_named(image) else {
            return Vec::new();
        };
        let view = ImageView {
            raw: image,
            reference: &reference,
            pod: ctx.pod,
            container_type: ctx.container_type,
            container_name: ctx.container_name,
        };
        let mut out = Vec::new();
        for policy in &self.policies {
            if !policy.applies(ctx) {
                continue;
            }
            for rule in &policy.rules {
                let Some(test) = &rule.tests[ctx.container_type.index()] else {
                    continue;
                };
                if !rule.scope.applies(ctx) {
                    continue;
                }
                let (allowed, message) = match judge_test(test, &view, ctx) {
                    Judgement::NotApplicable => continue,
                    Judgement::Pass => (true, None),
                    Judgement::Fail(m) => (false, m.or_else(|| rule.message.clone())),
                };
                out.push(RuleResult {
                    policy: policy.name.clone(),
                    rule: rule.name.clone(),
                    allowed,
                    action: rule.action,
                    message,
                });
            }
        }
        out
    }
}

fn judge_test(test: &ImageTest, view: &ImageView<'_>, ctx: &EvalContext<'_>) -> Judgement {
    match test {
        ImageTest::Cel(cel) => crate::vpol::judge(cel, view.raw, ctx),
        t => match view.judge(t) {
            None => Judgement::NotApplicable,
            Some(true) => Judgement::Pass,
            Some(false) => Judgement::Fail(None),
        },
    }
}

fn fail_verdict(image: &str, policy: &Policy, rule: &Rule, judged: Option<&str>) -> Verdict {
    let message = judged
        .or(rule.message.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("image not allowed");
    Verdict {
        allowed: false,
        kind: VerdictKind::UntrustedImage,
        action: rule.action,
        reason: format!(
            "untrusted-image: {} fails rule {} of policy {} ({}): {message}",
            crate::text::quote(image),
            rule.name,
            policy.name,
            rule.action
        ),
        rule: Some(rule.name.clone()),
        policy: Some(policy.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kyverno_info_like_kyverno() {
        use InfoField::*;
        let f = kyverno_info_field;
        assert_eq!(f("nginx", Registry), "docker.io");
        assert_eq!(f("nginx", Path), "nginx");
        assert_eq!(f("nginx", Tag), "latest");
        assert_eq!(f("nginx", Reference), "docker.io/nginx:latest");
        assert_eq!(
            f("index.docker.io/busybox:v1.2.3", Registry),
            "index.docker.io"
        );
        assert_eq!(f("localhost:4443/test/nginx", Name), "nginx");
        assert_eq!(f("localhost:4443/test/nginx", Path), "test/nginx");
        let d = "docker.io/test/centos@sha256:dead07b4d8ed7e29e98de0f4504d87e8880d4347859d839686a31da35a3b532f";
        assert_eq!(f(d, Tag), "");
        assert_eq!(f(d, ReferenceWithTag), "docker.io/test/centos:");
        assert_eq!(f(d, Reference), d);
    }
}
