//! Import of Kyverno policies (`kyverno.io/v1`, `v2beta1`... `ClusterPolicy`
//! and `Policy`; `policies.kyverno.io` `ValidatingPolicy` and
//! `NamespacedValidatingPolicy`, compiled by [`crate::vpol`]) into the
//! evaluation model.
//!
//! What is understood, with Kyverno's semantics on the image as written:
//! - `validate.pattern` / `validate.anyPattern` on the Pod spec (`spec`,
//!   `spec.template.spec` or `spec.jobTemplate.spec.template.spec`): the
//!   element pattern of `containers`, `=(initContainers)`,
//!   `=(ephemeralContainers)` judged on each container (an image-only
//!   element as an image pattern; other fields, conditional `(key)`,
//!   equality `=(key)` and negation `X(key)` anchors with
//!   [`match_pattern`]), and Pod fields beside the container lists (such as
//!   `imagePullSecrets`) judged on the Pod for every governed container;
//! - rule `preconditions` (`any`/`all`) with the condition keys below: a
//!   container whose image makes them false is skipped, as Kyverno skips
//!   the rule for a Pod where they are false;
//! - `validate.deny.conditions` whose keys are Kyverno image infos
//!   (`{{ images.containers.*.registry }}`, `{{ images.[containers,
//!   initContainers, ephemeralContainers][].*.name[] }}`...) or
//!   `request.object.spec.containers[].image` (or filtered by a container
//!   field, `containers[?(@.name=='x')].image`), with the operators
//!   `Equals`, `NotEquals`, `AnyIn`, `AnyNotIn` (and `In`/`NotIn` on single values);
//! - `validate.foreach` over the container lists with `deny.conditions` on
//!   `{{ element.image }}` or an element `pattern` on `image`;
//! - `validate.cel` on the CEL engine ([`crate::cel`], [`crate::vpol`]),
//!   judged per container on the Pod;
//! - match/exclude on kinds, namespaces and Pod labels; autogen of Pod rules
//!   for Pod controllers as Kyverno does it; `validationFailureAction` /
//!   `failureAction` (per policy and per rule).
//!
//! Everything else (context, other preconditions, JMESPath beyond those forms,
//! other operators, user info, namespace selectors...) makes the *rule* not
//! enforced and is reported by rule name with the reason.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use crate::eval::{
    Filter, FilterSet, ImageField, ImageTest, InfoField, NamespaceFilter, Policy, PolicySet, Rule,
    Scope,
};
use crate::load::DocSource;
use crate::model::{Action, ContainerType, PolicyError, Unsupported, Warning};
use crate::vpol::{scalar, Skip, R};

/// Pod controllers Kyverno generates rules for by default.
pub const AUTOGEN_CONTROLLERS: [&str; 7] = [
    "DaemonSet",
    "Deployment",
    "Job",
    "StatefulSet",
    "ReplicaSet",
    "ReplicationController",
    "CronJob",
];

const AUTOGEN_ANNOTATION: &str = "pod-policies.kyverno.io/autogen-controllers";

/// Where the Pod spec sits in the resources a pattern or list addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `spec` (Pod)
    Pod,
    /// `spec.template.spec` (Deployment, StatefulSet, DaemonSet, Job, ReplicaSet...)
    Template,
    /// `spec.jobTemplate.spec.template.spec` (CronJob)
    CronJob,
}

impl Shape {
    fn kinds(self) -> &'static [&'static str] {
        match self {
            Shape::Pod => &["Pod"],
            Shape::Template => &[
                "Deployment",
                "StatefulSet",
                "DaemonSet",
                "ReplicaSet",
                "Job",
                "ReplicationController",
            ],
            Shape::CronJob => &["CronJob"],
        }
    }
}

fn get<'a>(m: &'a Mapping, k: &str) -> Option<&'a Value> {
    m.get(k)
}

fn str_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

fn skip<T>(msg: impl Into<String>) -> R<T> {
    Err(Skip(msg.into()))
}

fn parse_action(s: &str) -> Option<Action> {
    match s.to_ascii_lowercase().as_str() {
        "enforce" | "deny" => Some(Action::Enforce),
        "audit" => Some(Action::Audit),
        _ => None,
    }
}

/// Imports one Kyverno document.
pub(crate) fn import(doc: &Value, src: &DocSource<'_>) -> Result<PolicySet, PolicyError> {
    let map = doc
        .as_mapping()
        .ok_or_else(|| src.invalid(None, None, "kind", "not a mapping".into()))?;
    let kind = str_of(get(map, "kind")).unwrap_or("");
    let meta = get(map, "metadata").and_then(Value::as_mapping);
    let name = meta
        .and_then(|m| str_of(get(m, "name")))
        .ok_or_else(|| src.invalid(None, None, "metadata", "policy has no metadata.name".into()))?
        .to_string();
    let spec = get(map, "spec")
        .and_then(Value::as_mapping)
        .ok_or_else(|| src.invalid(Some(&name), None, "spec", "policy has no spec".into()))?;
    match kind {
        "ClusterPolicy" | "Policy" => import_classic(kind, &name, meta, spec, src),
        "ValidatingPolicy" | "NamespacedValidatingPolicy" => {
            let namespace = meta.and_then(|m| str_of(get(m, "namespace")));
            if kind == "NamespacedValidatingPolicy" && namespace.is_none() {
                return Err(src.invalid(
                    Some(&name),
                    None,
                    "metadata.namespace",
                    "a NamespacedValidatingPolicy needs metadata.namespace".into(),
                ));
            }
            let namespace = if kind == "NamespacedValidatingPolicy" {
                namespace
            } else {
                None
            };
            crate::vpol::import_vpol(kind, &name, namespace, spec, src)
        }
        _ => {
            // Other Kyverno kinds: reported, not enforced.
            let mut set = PolicySet::new();
            set.unsupported.push(Unsupported {
                source: src.file.to_string(),
                policy: name.clone(),
                rule: "*".into(),
                reason: format!("Kyverno kind {kind} is not supported"),
            });
            Ok(set)
        }
    }
}

fn import_classic(
    kind: &str,
    name: &str,
    meta: Option<&Mapping>,
    spec: &Mapping,
    src: &DocSource<'_>,
) -> Result<PolicySet, PolicyError> {
    let policy_action = policy_action(spec, name, src)?;
    let rules = get(spec, "rules")
        .and_then(Value::as_sequence)
        .ok_or_else(|| {
            src.invalid(
                Some(name),
                None,
                "rules",
                "spec.rules must be a list".into(),
            )
        })?;
    let annotations = meta
        .and_then(|m| get(m, "annotations"))
        .and_then(Value::as_mapping);
    let autogen = autogen_controllers(annotations, rules);
    let policy_level_unsupported = policy_level_unsupported(spec);
    let namespace = (kind == "Policy").then(|| {
        meta.and_then(|m| str_of(get(m, "namespace")))
            .unwrap_or("default")
            .to_string()
    });
    let mut set = PolicySet::new();
    let mut out_rules = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let (rm, rule_name) = rule_mapping(i, r, name, src)?;
        let site = RuleSite {
            src,
            policy: name,
            rule: rule_name,
        };
        let imported = match &policy_level_unsupported {
            Some(reason) => Err(Skip(reason.clone())),
            None => import_rule(rm, &site, policy_action, &autogen),
        };
        match imported {
            Ok((rule, mut warns)) => {
                set.warnings.append(&mut warns);
                out_rules.push(rule);
            }
            Err(Skip(reason)) => set.unsupported.push(Unsupported {
                source: src.file.to_string(),
                policy: name.into(),
                rule: rule_name.into(),
                reason,
            }),
        }
    }
    let not_enforced: Vec<Warning> = set.unsupported.iter().map(Unsupported::warning).collect();
    set.warnings.extend(not_enforced);
    set.policies.push(Policy {
        name: name.to_string(),
        kind: kind.to_string(),
        namespace,
        rules: out_rules,
    });
    Ok(set)
}

/// `spec.validationFailureAction`: the rules' action unless they give one.
fn policy_action(spec: &Mapping, name: &str, src: &DocSource<'_>) -> Result<Action, PolicyError> {
    match str_of(get(spec, "validationFailureAction")) {
        None => Ok(Action::Audit),
        Some(s) => parse_action(s).ok_or_else(|| {
            src.invalid(
                Some(name),
                None,
                "validationFailureAction",
                format!(
                    "unknown action {:?} (Enforce or Audit)",
                    crate::text::quote(s)
                ),
            )
        }),
    }
}

/// Why no rule of the policy can be enforced, when a policy-level field
/// says so.
fn policy_level_unsupported(spec: &Mapping) -> Option<String> {
    if get(spec, "validationFailureActionOverrides").is_some() {
        Some(
            "spec.validationFailureActionOverrides (per-namespace actions) is not supported".into(),
        )
    } else if str_of(get(spec, "applyRules")).is_some_and(|s| s != "All") {
        Some("spec.applyRules other than All is not supported".into())
    } else {
        None
    }
}

/// Rule `#i` of `spec.rules` as a mapping, with its name.
fn rule_mapping<'a>(
    i: usize,
    r: &'a Value,
    policy: &str,
    src: &DocSource<'_>,
) -> Result<(&'a Mapping, &'a str), PolicyError> {
    let Some(rm) = r.as_mapping() else {
        return Err(src.invalid(
            Some(policy),
            None,
            "rules",
            format!("rule #{i} is not a mapping"),
        ));
    };
    let rule_name = str_of(get(rm, "name")).ok_or_else(|| {
        src.invalid(
            Some(policy),
            None,
            "rules",
            format!("rule #{i} has no name"),
        )
    })?;
    Ok((rm, rule_name))
}

/// Kyverno's `CanAutoGen`: which controllers a Pod rule also applies to.
fn autogen_controllers(annotations: Option<&Mapping>, rules: &[Value]) -> Vec<String> {
    let configured = annotations.and_then(|a| str_of(get(a, AUTOGEN_ANNOTATION)));
    if let Some(c) = configured {
        if c.trim().eq_ignore_ascii_case("none") {
            return Vec::new();
        }
    }
    let mut needed = false;
    for r in rules {
        let Some(rm) = r.as_mapping() else { continue };
        for key in ["match", "exclude"] {
            for rd in resource_descriptions(get(rm, key)) {
                if get(rd, "name").is_some()
                    || get(rd, "names").is_some()
                    || get(rd, "selector").is_some()
                    || get(rd, "annotations").is_some()
                {
                    return Vec::new();
                }
                let kinds = kinds_of(rd);
                if kinds.len() > 1 && kinds.iter().any(|k| k == "Pod") {
                    return Vec::new();
                }
                if key == "match" && kinds.iter().any(|k| k == "Pod") {
                    needed = true;
                }
            }
        }
    }
    if !needed {
        return Vec::new();
    }
    match configured {
        Some(c) => c
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => AUTOGEN_CONTROLLERS.iter().map(|s| s.to_string()).collect(),
    }
}

/// All `resources` blocks of a match/exclude (legacy, any, all).
fn resource_descriptions(m: Option<&Value>) -> Vec<&Mapping> {
    let mut out = Vec::new();
    let Some(m) = m.and_then(Value::as_mapping) else {
        return out;
    };
    if let Some(rd) = get(m, "resources").and_then(Value::as_mapping) {
        out.push(rd);
    }
    for k in ["any", "all"] {
        if let Some(list) = get(m, k).and_then(Value::as_sequence) {
            for f in list {
                if let Some(rd) = f
                    .as_mapping()
                    .and_then(|f| get(f, "resources"))
                    .and_then(Value::as_mapping)
                {
                    out.push(rd);
                }
            }
        }
    }
    out
}

/// Kind names of a resource description (`apps/v1/Deployment` → `Deployment`,
/// `Pod/ephemeralcontainers` → `Pod`).
fn kinds_of(rd: &Mapping) -> Vec<String> {
    get(rd, "kinds")
        .and_then(Value::as_sequence)
        .map(|ks| ks.iter().filter_map(Value::as_str).map(kind_name).collect())
        .unwrap_or_default()
}

fn kind_name(k: &str) -> String {
    k.split('/')
        .rfind(|p| p.starts_with(|c: char| c.is_ascii_uppercase()) || *p == "*")
        .unwrap_or(k)
        .to_string()
}

/// Compiles Kyverno match or exclude into filters.
fn filters(m: &Value, what: &str) -> R<FilterSet> {
    let Some(m) = m.as_mapping() else {
        return skip(format!("{what} is not a mapping"));
    };
    let mut set = FilterSet::default();
    for (k, v) in m {
        let k = k.as_str().unwrap_or("");
        match k {
            "resources" => set.filters.push(resource_filter(v, what)?),
            "any" | "all" => {
                let Some(list) = v.as_sequence() else {
                    return skip(format!("{what}.{k} is not a list"));
                };
                if k == "all" {
                    set.all = true;
                }
                for f in list {
                    let Some(fm) = f.as_mapping() else {
                        return skip(format!("{what}.{k} entry is not a mapping"));
                    };
                    for (fk, fv) in fm {
                        match fk.as_str().unwrap_or("") {
                            "resources" => set.filters.push(resource_filter(fv, what)?),
                            other => {
                                return skip(format!(
                                    "{what}.{k}[].{other} (admission user info) cannot be known at run time"
                                ))
                            }
                        }
                    }
                }
            }
            other => {
                return skip(format!(
                    "{what}.{other} (admission user info) cannot be known at run time"
                ))
            }
        }
    }
    if set.all && m.get("any").is_some() {
        return skip(format!("{what} with both any and all is not supported"));
    }
    Ok(set)
}

fn resource_filter(v: &Value, what: &str) -> R<Filter> {
    let Some(rd) = v.as_mapping() else {
        return skip(format!("{what}.resources is not a mapping"));
    };
    let mut f = Filter {
        in_exclude: what == "exclude",
        ..Filter::default()
    };
    for (k, val) in rd {
        match k.as_str().unwrap_or("") {
            "kinds" => {
                let ks = kinds_of(rd);
                if ks.is_empty() {
                    return skip(format!(
                        "{what}.resources.kinds is empty or not a list of strings"
                    ));
                }
                f.kinds = Some(ks);
            }
            "namespaces" => {
                let Some(list) = val.as_sequence() else {
                    return skip(format!("{what}.resources.namespaces is not a list"));
                };
                let names: Vec<String> = list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                if names.len() != list.len() {
                    return skip(format!("{what}.resources.namespaces must be strings"));
                }
                f.namespaces = Some(NamespaceFilter {
                    names,
                    wildcard: true,
                    // Kyverno compares the empty namespace of an unknown one.
                    when_unknown: false,
                });
            }
            "operations" => {
                let ops: Vec<&str> = val
                    .as_sequence()
                    .map(|l| l.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !ops.contains(&"CREATE") {
                    return skip(format!(
                        "{what}.resources.operations {ops:?} does not include CREATE: what runs on a node was created"
                    ));
                }
            }
            "selector" => {
                let sel = val.as_mapping();
                let only_labels =
                    sel.is_some_and(|s| s.iter().all(|(k, _)| k.as_str() == Some("matchLabels")));
                let labels = sel
                    .and_then(|s| get(s, "matchLabels"))
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
                            .collect::<BTreeMap<_, _>>()
                    });
                match (only_labels, labels) {
                    (true, Some(l)) => f.labels = Some(l),
                    _ => {
                        return skip(format!(
                            "{what}.resources.selector other than matchLabels is not supported"
                        ))
                    }
                }
            }
            "namespaceSelector" => {
                // A metav1.LabelSelector on the Namespace's labels, as in
                // ValidatingAdmissionPolicy (see `Filter::matches`).
                match crate::vpol::LabelSelector::parse(val) {
                    Ok(sel) if !sel.is_empty() => f.namespace_selector = Some(sel),
                    Ok(_) => {}
                    Err(e) => return skip(format!("{what}.resources.namespaceSelector: {e}")),
                }
            }
            other => {
                return skip(format!("{what}.resources.{other} is not supported"));
            }
        }
    }
    Ok(f)
}

/// One compiled validation: a pass test per container type and the shape of
/// resource it addresses.
struct Compiled {
    tests: [Option<ImageTest>; 3],
    shape: Shape,
    warnings: Vec<String>,
}

/// Where one rule sits: its warnings name the file, the policy and the rule.
struct RuleSite<'a> {
    src: &'a DocSource<'a>,
    policy: &'a str,
    rule: &'a str,
}

impl RuleSite<'_> {
    fn warning(&self, message: String) -> Warning {
        self.src.warning(self.policy, self.rule, message)
    }
}

fn import_rule(
    rm: &Mapping,
    site: &RuleSite<'_>,
    policy_action: Action,
    autogen: &[String],
) -> R<(Rule, Vec<Warning>)> {
    check_rule_fields(rm)?;
    let Some(validate) = get(rm, "validate").and_then(Value::as_mapping) else {
        return skip("rule has no validate block");
    };
    let mut matches = match get(rm, "match") {
        Some(m) => filters(m, "match")?,
        None => return skip("rule has no match block"),
    };
    let excludes = match get(rm, "exclude") {
        Some(m) => Some(filters(m, "exclude")?),
        None => None,
    };
    let Validate {
        action,
        mut message,
        compiled,
    } = compile_validate(validate, policy_action)?;
    let mut compiled = compiled;
    let preconditions = get(rm, "preconditions");
    if let Some(pre) = preconditions {
        add_preconditions(&mut compiled.tests, pre)?;
    }
    check_what_is_read(&mut compiled, preconditions.is_some())?;
    if message.as_deref().is_some_and(|m| m.contains("{{")) {
        // Variables in messages only change the text, not the verdict.
        message = message.map(|m| format!("{m} (variables not substituted)"));
    }
    let extra_kinds = autogen_kinds(&matches, compiled.shape, autogen)?;
    let mut warnings: Vec<Warning> = compiled
        .warnings
        .into_iter()
        .map(|w| site.warning(w))
        .collect();
    if !extra_kinds.is_empty() {
        // The same image test applies to the Pod templates of controllers.
        for f in &mut matches.filters {
            if let Some(k) = &mut f.kinds {
                if k.iter().any(|x| x == "Pod") {
                    k.extend(extra_kinds.iter().cloned());
                }
            }
        }
    } else if compiled.shape == Shape::Pod {
        warnings.push(site.warning(
            "autogen is off for this policy: Pod controllers (Deployment, CronJob...) are not checked by this rule".into(),
        ));
    }
    let rule = Rule {
        name: site.rule.to_string(),
        action,
        message,
        scope: Scope { matches, excludes },
        tests: compiled.tests,
        drift: None,
    };
    warnings.extend(coverage_warning(&rule.tests, site)?);
    Ok((rule, warnings))
}

/// Rule fields other than match, exclude, validate and preconditions make
/// the rule not enforced; every such field is named.
fn check_rule_fields(rm: &Mapping) -> R<()> {
    let mut problems: Vec<String> = Vec::new();
    for (k, _) in rm {
        match k.as_str().unwrap_or("") {
            "name"
            | "match"
            | "exclude"
            | "validate"
            | "preconditions"
            | "skipBackgroundRequests"
            | "reportProperties" => {}
            "context" => {
                problems.push("context (API calls, ConfigMaps, variables) is not supported".into())
            }
            "celPreconditions" => problems.push("celPreconditions are not supported".into()),
            k @ ("mutate" | "generate" | "verifyImages") => problems.push(format!(
                "{k} rules are not enforced by imagewarden (only validate)"
            )),
            other => problems.push(format!("rule field {other} is not supported")),
        }
    }
    if !problems.is_empty() {
        return skip(problems.join("; "));
    }
    Ok(())
}

/// A rule's `validate` block.
struct Validate {
    action: Action,
    message: Option<String>,
    compiled: Compiled,
}

fn compile_validate(validate: &Mapping, policy_action: Action) -> R<Validate> {
    let mut action = policy_action;
    let mut message = None;
    let mut compiled: Option<Compiled> = None;
    for (k, v) in validate {
        let key = k.as_str().unwrap_or("");
        match key {
            "message" => message = v.as_str().map(str::to_string),
            "failureAction" => {
                action = v.as_str().and_then(parse_action).ok_or_else(|| {
                    Skip(format!(
                        "validate.failureAction {v:?} is not Enforce or Audit"
                    ))
                })?
            }
            "allowExistingViolations" => {}
            "pattern" => compiled = Some(compile_pattern_rule(std::slice::from_ref(v))?),
            "anyPattern" => {
                let Some(list) = v.as_sequence() else {
                    return skip("validate.anyPattern is not a list");
                };
                if list.is_empty() {
                    return skip("validate.anyPattern is empty");
                }
                compiled = Some(compile_pattern_rule(list)?);
            }
            "deny" => compiled = Some(compile_deny(v)?),
            "foreach" => compiled = Some(compile_foreach(v)?),
            "cel" => compiled = Some(compile_cel(v)?),
            "failureActionOverrides" => {
                return skip(
                    "validate.failureActionOverrides (per-namespace actions) is not supported",
                )
            }
            other => return skip(format!("validate.{other} is not supported")),
        }
    }
    let Some(compiled) = compiled else {
        return skip("validate has none of pattern, anyPattern, deny, foreach, cel");
    };
    Ok(Validate {
        action,
        message,
        compiled,
    })
}

/// Rule `preconditions` guard each container type's test (a type for which
/// they never hold is no longer checked).
fn add_preconditions(tests: &mut [Option<ImageTest>; 3], pre: &Value) -> R<()> {
    if tests
        .iter()
        .flatten()
        .any(|t| matches!(t, ImageTest::Cel(_)))
    {
        return skip("preconditions on a validate.cel rule are not supported");
    }
    let pre = compile_preconditions(pre)?;
    for (t, p) in tests.iter_mut().zip(pre) {
        *t = match (t.take(), p) {
            (Some(test), Some(pre)) => Some(ImageTest::Pre {
                pre: Box::new(pre),
                test: Box::new(test),
            }),
            // The preconditions never hold for this container type.
            _ => None,
        };
    }
    Ok(())
}

/// What a test reads: (Pod fields, container fields, the image).
fn reads(t: &ImageTest) -> (bool, bool, bool) {
    match t {
        ImageTest::PodPattern(_) => (true, false, false),
        ImageTest::ContainerPattern(_) | ImageTest::ContainerFieldEquals { .. } => {
            (false, true, false)
        }
        ImageTest::KyvernoPattern(_) | ImageTest::Equals { .. } | ImageTest::InList { .. } => {
            (false, false, true)
        }
        ImageTest::Not(x) => reads(x),
        ImageTest::All(l) | ImageTest::Any(l) => l
            .iter()
            .map(reads)
            .fold((false, false, false), |(p, c, i), (p2, c2, i2)| {
                (p || p2, c || c2, i || i2)
            }),
        ImageTest::Pre { pre, test } => {
            let ((p, c, i), (p2, c2, i2)) = (reads(pre), reads(test));
            (p || p2, c || c2, i || i2)
        }
        _ => (false, false, false),
    }
}

/// A rule must check container images; one that reads more than the image
/// is warned about (it is judged only when the Pod is known).
fn check_what_is_read(compiled: &mut Compiled, has_preconditions: bool) -> R<()> {
    let (mut pod_fields, mut container_fields, mut image_tests) = (false, false, false);
    for t in compiled.tests.iter().flatten() {
        let (p, c, i) = reads(t);
        pod_fields |= p;
        container_fields |= c;
        image_tests |= i;
    }
    if pod_fields && !container_fields && !image_tests && !has_preconditions {
        return skip("pattern does not check container images (no containers, initContainers or ephemeralContainers, no preconditions on images)");
    }
    if pod_fields || container_fields {
        compiled.warnings.push(format!(
            "reads {} beyond the image: judged on the Pod when it is known (check --manifest); without it, only when it reads no more than the container's image, defaulted imagePullPolicy and name (when known), else not judged",
            if pod_fields { "Pod fields" } else { "container fields" }
        ));
    }
    Ok(())
}

/// The kinds the rule matches: `None` when some match filter does not
/// restrict kinds.
fn matched_kinds(matches: &FilterSet) -> Option<Vec<String>> {
    let mut ks: Vec<String> = Vec::new();
    let mut any_unrestricted = matches.filters.is_empty();
    for f in &matches.filters {
        match &f.kinds {
            Some(k) => ks.extend(k.iter().cloned()),
            None => any_unrestricted = true,
        }
    }
    if any_unrestricted {
        None
    } else {
        Some(ks)
    }
}

/// The controllers a Pod rule extends to by autogen (none for other
/// rules), once every matched kind is known to have the Pod spec where the
/// rule reads it.
fn autogen_kinds(matches: &FilterSet, shape: Shape, autogen: &[String]) -> R<Vec<String>> {
    let Some(ks) = matched_kinds(matches) else {
        return skip("match does not restrict kinds: the pattern cannot apply to every kind");
    };
    let shape_kinds = shape.kinds();
    for k in &ks {
        if k == "*" {
            return skip("match kinds '*' is not supported");
        }
        let autogen_pod = shape == Shape::Pod && k == "Pod";
        if !shape_kinds.contains(&k.as_str()) && !autogen_pod {
            return skip(format!(
                "the rule matches {k} but checks the Pod spec at a path that {k} does not have (Kyverno fails every {k})"
            ));
        }
    }
    if ks.iter().any(|k| k == "Pod") && shape == Shape::Pod {
        Ok(autogen.to_vec())
    } else {
        Ok(Vec::new())
    }
}

/// A rule that checks no container type is not enforced; one that checks
/// only some is warned about.
fn coverage_warning(tests: &[Option<ImageTest>; 3], site: &RuleSite<'_>) -> R<Option<Warning>> {
    let uncovered: Vec<&str> = ContainerType::ALL
        .iter()
        .filter(|c| tests[c.index()].is_none())
        .map(|c| c.field())
        .collect();
    if uncovered.len() == 3 {
        return skip("the rule does not check any container image");
    }
    if uncovered.is_empty() {
        return Ok(None);
    }
    Ok(Some(site.warning(format!(
        "checks only {}: {} are not covered (their images run unchecked)",
        ContainerType::ALL
            .iter()
            .filter(|c| tests[c.index()].is_some())
            .map(|c| c.field())
            .collect::<Vec<_>>()
            .join(", "),
        uncovered.join(", ")
    ))))
}

/// `v` as a mapping; `what` is the skip reason when it is not one.
fn mapping<'a>(v: &'a Value, what: &str) -> R<&'a Mapping> {
    v.as_mapping().ok_or_else(|| Skip(what.into()))
}

/// Strips a Kyverno anchor: `=(x)` conditional → (x, true); plain → (x, false).
fn anchor(key: &str) -> R<(&str, bool)> {
    if let Some(inner) = key.strip_prefix("=(").and_then(|k| k.strip_suffix(')')) {
        return Ok((inner, true));
    }
    if key.contains('(') {
        return skip(format!("pattern anchor {key} is not supported"));
    }
    Ok((key, false))
}

fn single_key<'a>(m: &'a Mapping, want: &str, path: &str) -> R<&'a Value> {
    if m.len() != 1 {
        return skip(format!("pattern at {path} has fields other than {want}"));
    }
    let (k, v) = m
        .iter()
        .next()
        .ok_or_else(|| Skip("empty pattern".into()))?;
    let (name, _) = anchor(k.as_str().unwrap_or(""))?;
    if name != want {
        return skip(format!("pattern at {path} checks {name}, not supported"));
    }
    Ok(v)
}

/// The per-container-type tests of one `validate.pattern`: the element
/// pattern of each container list (an image-only element as a Kyverno
/// image pattern, any other element, such as `(image)` conditional anchors
/// or `imagePullPolicy`, as a [`ImageTest::ContainerPattern`] on the
/// container), and the Pod fields outside the container lists (such as
/// `imagePullSecrets`) as a [`ImageTest::PodPattern`] that every governed
/// container shares (all three types when the pattern has no container list).
fn compile_pattern(p: &Value) -> R<(Shape, [Option<ImageTest>; 3], Vec<String>)> {
    let Some(top) = p.as_mapping() else {
        return skip("pattern is not a mapping");
    };
    let spec = mapping(
        single_key(top, "spec", "pattern")?,
        "pattern spec is not a mapping",
    )?;
    let (shape, podspec) = pattern_pod_spec(spec)?;
    let mut tests: [Option<ImageTest>; 3] = [None, None, None];
    let mut pod_level = serde_json::Map::new();
    let mut warnings = Vec::new();
    for (k, v) in podspec {
        let key = k.as_str().unwrap_or("");
        let (name, a) = anchor_of(key)?;
        let Some(ct) = ContainerType::from_field(name) else {
            // A Pod field outside the container lists: checked on the Pod.
            if name.is_empty() {
                return skip("pattern spec has a non-string key");
            }
            let mut one = Mapping::new();
            one.insert(k.clone(), v.clone());
            check_pattern(&Value::Mapping(one), "spec")?;
            pod_level.insert(key.to_string(), to_json(v)?);
            continue;
        };
        if !matches!(a, Anchor::Plain | Anchor::Equality) {
            return skip(format!(
                "pattern anchor {key} on a container list is not supported"
            ));
        }
        tests[ct.index()] = Some(container_list_test(key, name, v)?);
        let conditional = a == Anchor::Equality;
        if !conditional && ct != ContainerType::Container {
            warnings.push(format!(
                "pattern requires {name} to be present (no =() anchor): Kyverno fails Pods without {name}; imagewarden only checks the images present"
            ));
        }
    }
    if !pod_level.is_empty() {
        let pp = ImageTest::PodPattern(Arc::new(serde_json::json!({ "spec": pod_level })));
        if tests.iter().all(Option::is_none) {
            tests = [Some(pp.clone()), Some(pp.clone()), Some(pp)];
        } else {
            for t in tests.iter_mut().flatten() {
                *t = ImageTest::All(vec![pp.clone(), t.clone()]);
            }
        }
    }
    Ok((shape, tests, warnings))
}

/// Where the Pod spec sits in a pattern's `spec`: the spec itself (a Pod,
/// or a pattern with no controller keys), `template.spec` or
/// `jobTemplate.spec.template.spec`.
fn pattern_pod_spec(spec: &Mapping) -> R<(Shape, &Mapping)> {
    let pod_keys = spec.iter().any(|(k, _)| {
        k.as_str()
            .and_then(|k| anchor(k).ok())
            .is_some_and(|(n, _)| ContainerType::from_field(n).is_some())
    });
    let controller_keys = spec
        .iter()
        .any(|(k, _)| matches!(k.as_str(), Some("template" | "jobTemplate")));
    if pod_keys || !controller_keys {
        Ok((Shape::Pod, spec))
    } else if let Ok(t) = single_key(spec, "template", "spec") {
        let ts = mapping(t, "pattern template is not a mapping")?;
        let ps = mapping(
            single_key(ts, "spec", "spec.template")?,
            "bad template spec",
        )?;
        Ok((Shape::Template, ps))
    } else if let Ok(j) = single_key(spec, "jobTemplate", "spec") {
        let js = mapping(j, "bad jobTemplate")?;
        let jss = mapping(
            single_key(js, "spec", "spec.jobTemplate")?,
            "bad jobTemplate spec",
        )?;
        let t = mapping(
            single_key(jss, "template", "spec.jobTemplate.spec")?,
            "bad template",
        )?;
        let ps = mapping(
            single_key(t, "spec", "spec.jobTemplate.spec.template")?,
            "bad template spec",
        )?;
        Ok((Shape::CronJob, ps))
    } else {
        skip("pattern checks the controller spec beside its Pod template, not supported")
    }
}

/// The test of one container list's single element pattern (`key` as
/// written, `name` without its anchor): an image-only element (other keys
/// `*`) as a Kyverno image pattern, any other as a container pattern.
fn container_list_test(key: &str, name: &str, v: &Value) -> R<ImageTest> {
    let Some(list) = v.as_sequence() else {
        return skip(format!("pattern {key} is not a list"));
    };
    if list.len() != 1 {
        return skip(format!(
            "pattern {key} has {} elements (only one element patterns are supported)",
            list.len()
        ));
    }
    let Some(elem) = list[0].as_mapping() else {
        return skip(format!("pattern {key}[] is not a mapping"));
    };
    check_pattern(&list[0], &format!("spec.{name}[]"))?;
    let mut image = None;
    let mut image_only = true;
    for (ek, ev) in elem {
        let (en, ea) = anchor_of(ek.as_str().unwrap_or(""))?;
        if en == "image" && matches!(ea, Anchor::Plain | Anchor::Equality) {
            match ev.as_str() {
                Some(s) => image = Some(s.to_string()),
                None => image_only = false,
            }
        } else if !(matches!(ea, Anchor::Plain | Anchor::Equality) && ev.as_str() == Some("*")) {
            image_only = false;
        }
    }
    Ok(match image {
        Some(image) if image_only => ImageTest::KyvernoPattern(image),
        _ => ImageTest::ContainerPattern(Arc::new(to_json(&list[0])?)),
    })
}

fn compile_pattern_rule(patterns: &[Value]) -> R<Compiled> {
    let mut shape = None;
    let mut alts = Vec::new();
    let mut warnings = Vec::new();
    for p in patterns {
        let (s, pats, w) = compile_pattern(p)?;
        if shape.is_some_and(|x| x != s) {
            return skip("anyPattern alternatives address different resource shapes");
        }
        shape = Some(s);
        warnings.extend(w);
        alts.push(pats);
    }
    let shape = shape.ok_or_else(|| Skip("no pattern".into()))?;
    if alts.len() > 1 {
        warnings.push(
            "anyPattern is decided image by image: a Pod whose images satisfy different alternatives passes here but fails in Kyverno".into(),
        );
    }
    let mut tests: [Option<ImageTest>; 3] = [None, None, None];
    for ct in ContainerType::ALL {
        let i = ct.index();
        // An alternative that does not constrain this container type lets
        // every such image through: the type is then not governed.
        if alts.iter().all(|a| a[i].is_some()) {
            let mut ts: Vec<ImageTest> = alts.iter().filter_map(|a| a[i].clone()).collect();
            tests[i] = Some(if ts.len() == 1 {
                ts.pop().unwrap_or(ImageTest::True)
            } else {
                ImageTest::Any(ts)
            });
        }
    }
    Ok(Compiled {
        tests,
        shape,
        warnings,
    })
}

/// The expression inside `{{ }}`, trimmed; `None` if the string is not
/// exactly one variable.
fn variable(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") {
        return None;
    }
    Some(inner.trim())
}

/// Container groups named by `[a, b, c][]` or `a`.
fn groups(sel: &str) -> Option<Vec<ContainerType>> {
    let s = sel.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix("][]")) {
        let mut v = Vec::new();
        for g in inner.split(',') {
            let ct = ContainerType::from_field(g.trim())?;
            if !v.contains(&ct) {
                v.push(ct);
            }
        }
        return Some(v);
    }
    ContainerType::from_field(s).map(|c| vec![c])
}

/// What a condition key refers to.
enum Key {
    /// One image per element (foreach `element.image`).
    Element,
    /// A list over the images of these container groups, optionally
    /// filtered on a container field (JMESPath `[?name=='v']`).
    Images(
        ImageField,
        Vec<ContainerType>,
        Shape,
        Option<(String, String)>,
    ),
}

/// The key of one condition (`condition is not a mapping` otherwise).
fn condition_key(c: &Value, in_foreach: bool) -> R<Key> {
    let m = mapping(c, "condition is not a mapping")?;
    parse_key(get(m, "key").unwrap_or(&Value::Null), in_foreach)
}

fn parse_key(key: &Value, in_foreach: bool) -> R<Key> {
    let Some(s) = key.as_str() else {
        return skip(format!(
            "condition key {} is not a string",
            crate::text::quote(&format!("{key:?}"))
        ));
    };
    let Some(expr) = variable(s) else {
        return skip(format!(
            "condition key {:?} is not a single {{{{ }}}} expression",
            crate::text::quote(s)
        ));
    };
    if in_foreach && expr == "element.image" {
        return Ok(Key::Element);
    }
    if let Some(rest) = expr.strip_prefix("images.") {
        // images.<groups>.*.<field>[ [] ]
        let rest = rest.strip_suffix("[]").unwrap_or(rest);
        if let Some((sel, field)) = rest.rsplit_once(".*.") {
            if let (Some(gs), Some(f)) = (groups(sel), InfoField::from_name(field)) {
                return Ok(Key::Images(ImageField::Info(f), gs, Shape::Pod, None));
            }
        }
    }
    for (prefix, shape) in [
        ("request.object.spec.template.spec.", Shape::Template),
        (
            "request.object.spec.jobTemplate.spec.template.spec.",
            Shape::CronJob,
        ),
        ("request.object.spec.", Shape::Pod),
    ] {
        if let Some(rest) = expr.strip_prefix(prefix) {
            if let Some(sel) = rest.strip_suffix("[].image") {
                if let Some(gs) = groups(sel) {
                    return Ok(Key::Images(ImageField::Raw, gs, shape, None));
                }
            }
            if let Some(sel) = rest.strip_suffix(".image") {
                if let Some((group, filter)) = sel.split_once("[?") {
                    if let (Some(ct), Some(f)) = (
                        ContainerType::from_field(group),
                        filter.strip_suffix(']').and_then(jmespath_equality),
                    ) {
                        return Ok(Key::Images(ImageField::Raw, vec![ct], shape, Some(f)));
                    }
                }
            }
        }
    }
    skip(format!(
        "condition key {{{{ {expr} }}}}: JMESPath expression not supported"
    ))
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Sequence(l) => l.iter().map(scalar).collect(),
        Value::String(s) => {
            if let Ok(arr) = serde_json::from_str::<Vec<String>>(s) {
                Some(arr)
            } else {
                Some(vec![s.clone()])
            }
        }
        _ => None,
    }
}

/// Compiles one condition into a per-image "condition holds" test. `list`
/// tells whether the key is a list over the Pod's images.
fn condition(c: &Value, key: &Key) -> R<ImageTest> {
    let Some(m) = c.as_mapping() else {
        return skip("condition is not a mapping");
    };
    let op = str_of(get(m, "operator")).ok_or_else(|| Skip("condition has no operator".into()))?;
    let value = get(m, "value").ok_or_else(|| Skip("condition has no value".into()))?;
    if let Some(s) = value.as_str() {
        if s.contains("{{") {
            return skip(format!(
                "condition value {:?} uses variables (context) which are not supported",
                crate::text::quote(s)
            ));
        }
    }
    let (field, is_list) = match key {
        Key::Element => (ImageField::Raw, false),
        Key::Images(f, _, _, _) => (*f, true),
    };
    let scalar = || -> R<String> {
        match value {
            Value::String(s) => {
                if s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.') {
                    return skip(format!("Equals with {:?}: Kyverno compares durations and quantities numerically, not supported", crate::text::quote(s)));
                }
                Ok(s.clone())
            }
            _ => skip(format!("operator {op} needs a string value")),
        }
    };
    let list =
        || string_list(value).ok_or_else(|| Skip(format!("operator {op} needs a list of strings")));
    Ok(match (op, is_list) {
        ("Equals", false) => ImageTest::Equals { field, pattern: scalar()? },
        ("NotEquals", false) => ImageTest::Not(Box::new(ImageTest::Equals { field, pattern: scalar()? })),
        ("AnyIn" | "In" | "AllIn", false) => ImageTest::InList { field, values: list()? },
        ("AnyNotIn" | "NotIn" | "AllNotIn", false) => ImageTest::Not(Box::new(ImageTest::InList { field, values: list()? })),
        // On a list of images: "some image's value is (not) in the list".
        ("AnyIn", true) => ImageTest::InList { field, values: list()? },
        ("AnyNotIn", true) => ImageTest::Not(Box::new(ImageTest::InList { field, values: list()? })),
        (op @ ("In" | "NotIn" | "AllIn" | "AllNotIn" | "Equals" | "NotEquals"), true) => {
            return skip(format!("operator {op} on the list of all images depends on the Pod as a whole, not supported"))
        }
        (op, _) => return skip(format!("operator {op} is not supported")),
    })
}

/// `any`/`all` blocks (or a legacy plain list, meaning all).
fn condition_blocks(conds: &Value) -> R<(Vec<&Value>, Vec<&Value>)> {
    match conds {
        Value::Sequence(l) => Ok((Vec::new(), l.iter().collect())),
        Value::Mapping(m) => {
            let mut any = Vec::new();
            let mut all = Vec::new();
            for (k, v) in m {
                let Some(l) = v.as_sequence() else {
                    return skip("conditions.any/all must be lists");
                };
                match k.as_str() {
                    Some("any") => any.extend(l.iter()),
                    Some("all") => all.extend(l.iter()),
                    _ => return skip(format!("conditions.{k:?} is not supported")),
                }
            }
            Ok((any, all))
        }
        _ => skip("conditions must be a list or a mapping of any/all"),
    }
}

fn deny_conditions(deny: &Value) -> R<&Value> {
    let Some(d) = deny.as_mapping() else {
        return skip("deny is not a mapping");
    };
    for (k, _) in d {
        if k.as_str() != Some("conditions") {
            return skip(format!("deny.{k:?} is not supported"));
        }
    }
    get(d, "conditions").ok_or_else(|| Skip("deny has no conditions".into()))
}

/// `validate.deny` outside foreach: keys are lists over all images.
fn compile_deny(deny: &Value) -> R<Compiled> {
    let conds = deny_conditions(deny)?;
    let (any, all) = condition_blocks(conds)?;
    let total = any.len() + all.len();
    if total == 0 {
        return skip("deny without conditions denies every resource");
    }
    if !all.is_empty() && total > 1 {
        return skip("several deny conditions on the Pod's image list combined with all: cannot be decided image by image");
    }
    let mut shape = None;
    let mut per: [Vec<ImageTest>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for c in any.iter().chain(all.iter()) {
        let key = condition_key(c, false)?;
        let Key::Images(_, gs, s, filter) = &key else {
            return skip("element.image outside foreach");
        };
        if shape.is_some_and(|x| x != *s) {
            return skip("conditions address different resource shapes");
        }
        shape = Some(*s);
        let t = filtered(condition(c, &key)?, filter);
        for g in gs {
            per[g.index()].push(t.clone());
        }
    }
    // Deny when some condition holds for the image: pass = not any.
    let tests = per.map(|ts| {
        if ts.is_empty() {
            None
        } else {
            Some(ImageTest::Not(Box::new(ImageTest::Any(ts))))
        }
    });
    Ok(Compiled {
        tests,
        shape: shape.unwrap_or(Shape::Pod),
        warnings: Vec::new(),
    })
}

/// A JMESPath filter body `(@.field=='v')`, `@.field=='v'` or
/// `field=='v'` (raw string literal or JSON string literal in backquotes):
/// exact equality of a string field of the container.
fn jmespath_equality(f: &str) -> Option<(String, String)> {
    let f = f.trim();
    let f = f
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(f)
        .trim();
    let (lhs, rhs) = f.split_once("==")?;
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    let field = lhs.strip_prefix("@.").unwrap_or(lhs);
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let value = if let Some(v) = rhs.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        if v.contains(['\'', '\\']) {
            return None;
        }
        v.to_string()
    } else if let Some(v) = rhs.strip_prefix('`').and_then(|x| x.strip_suffix('`')) {
        serde_json::from_str::<String>(v.trim()).ok()?
    } else {
        return None;
    };
    Some((field.to_string(), value))
}

/// A per-image condition on a filtered list: it can only hold for the
/// containers the filter keeps (the reduced list of any other is empty, and
/// `AnyIn`/`AnyNotIn` on an empty list are false).
fn filtered(t: ImageTest, filter: &Option<(String, String)>) -> ImageTest {
    match filter {
        None => t,
        Some((field, value)) => ImageTest::All(vec![
            ImageTest::ContainerFieldEquals {
                field: field.clone(),
                value: value.clone(),
            },
            t,
        ]),
    }
}

/// Rule `preconditions` as a per-image test per container type, on the Pod
/// reduced to the image's container (Kyverno evaluates them on the whole
/// resource; with the keys supported here, `AnyIn`/`AnyNotIn` over the
/// images, "some image" holds for the Pod exactly when it holds for one of
/// its containers alone). `None`: never holds for that type (its images are
/// not in any key's list).
fn compile_preconditions(v: &Value) -> R<[Option<ImageTest>; 3]> {
    let (any, all) = condition_blocks(v).map_err(|Skip(m)| Skip(format!("preconditions: {m}")))?;
    let never = || ImageTest::Not(Box::new(ImageTest::True));
    let mut any_t: [Vec<ImageTest>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut all_t: [Vec<ImageTest>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (block, out) in [(&any, &mut any_t), (&all, &mut all_t)] {
        for c in block.iter() {
            let cm = mapping(c, "precondition is not a mapping")?;
            let key = parse_key(get(cm, "key").unwrap_or(&Value::Null), false)
                .map_err(|Skip(m)| Skip(format!("preconditions: {m}")))?;
            let Key::Images(_, gs, _, filter) = &key else {
                return skip("preconditions: element.image outside foreach");
            };
            let t = filtered(
                condition(c, &key).map_err(|Skip(m)| Skip(format!("preconditions: {m}")))?,
                filter,
            );
            for ct in ContainerType::ALL {
                out[ct.index()].push(if gs.contains(&ct) { t.clone() } else { never() });
            }
        }
    }
    let mut out: [Option<ImageTest>; 3] = [None, None, None];
    for ct in ContainerType::ALL {
        let i = ct.index();
        let mut parts = std::mem::take(&mut all_t[i]);
        if !any_t[i].is_empty() {
            parts.push(ImageTest::Any(std::mem::take(&mut any_t[i])));
        }
        // A type for which some part can never hold is not governed.
        let impossible = parts.iter().any(|p| match p {
            ImageTest::Any(l) => l.iter().all(is_never),
            p => is_never(p),
        });
        if !impossible {
            out[i] = Some(ImageTest::All(parts));
        }
    }
    Ok(out)
}

fn is_never(t: &ImageTest) -> bool {
    matches!(t, ImageTest::Not(b) if matches!(**b, ImageTest::True))
}

/// The container groups and shape of a foreach `list`.
fn foreach_list(list: &str) -> R<(Vec<ContainerType>, Shape)> {
    let expr = variable(list).unwrap_or(list).trim();
    for (prefix, shape) in [
        ("request.object.spec.template.spec.", Shape::Template),
        (
            "request.object.spec.jobTemplate.spec.template.spec.",
            Shape::CronJob,
        ),
        ("request.object.spec.", Shape::Pod),
    ] {
        if let Some(rest) = expr.strip_prefix(prefix) {
            if let Some(gs) = groups(rest) {
                return Ok((gs, shape));
            }
        }
    }
    skip(format!("foreach list {list:?} is not a list of containers"))
}

fn compile_foreach(v: &Value) -> R<Compiled> {
    let Some(entries) = v.as_sequence() else {
        return skip("foreach is not a list");
    };
    let mut shape = None;
    let mut per: [Vec<ImageTest>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for e in entries {
        let Some(em) = e.as_mapping() else {
            return skip("foreach entry is not a mapping");
        };
        let mut list = None;
        let mut test: Option<ImageTest> = None;
        for (k, val) in em {
            match k.as_str().unwrap_or("") {
                "list" => list = val.as_str(),
                "deny" => test = Some(foreach_deny(val)?),
                "pattern" => test = Some(foreach_pattern(val)?),
                other => return skip(format!("foreach.{other} is not supported")),
            }
        }
        let list = list.ok_or_else(|| Skip("foreach entry has no list".into()))?;
        let (gs, s) = foreach_list(list)?;
        if shape.is_some_and(|x| x != s) {
            return skip("foreach lists address different resource shapes");
        }
        shape = Some(s);
        let test = test.ok_or_else(|| Skip("foreach entry has neither deny nor pattern".into()))?;
        for g in gs {
            per[g.index()].push(test.clone());
        }
    }
    let tests = per.map(|mut ts| match ts.len() {
        0 => None,
        1 => ts.pop(),
        _ => Some(ImageTest::All(ts)),
    });
    Ok(Compiled {
        tests,
        shape: shape.unwrap_or(Shape::Pod),
        warnings: Vec::new(),
    })
}

/// A foreach entry's `deny`: the element passes unless its conditions hold.
fn foreach_deny(deny: &Value) -> R<ImageTest> {
    let conds = deny_conditions(deny)?;
    let (any, all) = condition_blocks(conds)?;
    if any.is_empty() && all.is_empty() {
        return skip("foreach deny without conditions denies every container");
    }
    let any_t = element_conditions(&any)?;
    let all_t = element_conditions(&all)?;
    let mut parts = Vec::new();
    if !any_t.is_empty() {
        parts.push(ImageTest::Any(any_t));
    }
    if !all_t.is_empty() {
        parts.push(ImageTest::All(all_t));
    }
    Ok(ImageTest::Not(Box::new(ImageTest::All(parts))))
}

/// Foreach conditions, each on `{{ element.image }}`, as "condition holds"
/// tests.
fn element_conditions(conds: &[&Value]) -> R<Vec<ImageTest>> {
    conds
        .iter()
        .map(|c| {
            let key = condition_key(c, true)?;
            if !matches!(key, Key::Element) {
                return skip("foreach condition key is not {{ element.image }}");
            }
            condition(c, &key)
        })
        .collect()
}

/// A foreach entry's `pattern`: an image pattern only.
fn foreach_pattern(pattern: &Value) -> R<ImageTest> {
    let Some(pm) = pattern.as_mapping() else {
        return skip("foreach pattern is not a mapping");
    };
    let img = single_key(pm, "image", "foreach pattern")?;
    let Some(s) = img.as_str() else {
        return skip("foreach pattern image is not a string");
    };
    Ok(ImageTest::KyvernoPattern(s.to_string()))
}

fn compile_cel(v: &Value) -> R<Compiled> {
    let tests = crate::vpol::compile_validate_cel(v).map_err(Skip)?;
    Ok(Compiled {
        tests,
        shape: Shape::Pod,
        warnings: Vec::new(),
    })
}

/// Result of a Kyverno pattern on a resource (`pkg/engine/validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternOutcome {
    Pass,
    Fail,
    /// A conditional anchor `(key)` did not hold: the pattern does not apply.
    Skip,
}

/// Kinds of anchor on a pattern key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// `key`: must be present and match.
    Plain,
    /// `(key)`: if absent or not matching, the enclosing pattern is skipped.
    Condition,
    /// `=(key)`: if present, must match.
    Equality,
    /// `X(key)`: must be absent.
    Negation,
}

fn anchor_of(key: &str) -> R<(&str, Anchor)> {
    let inner = |p: &str| key.strip_prefix(p).and_then(|k| k.strip_suffix(')'));
    if let Some(k) = inner("=(") {
        return Ok((k, Anchor::Equality));
    }
    if let Some(k) = inner("X(") {
        return Ok((k, Anchor::Negation));
    }
    if let Some(k) = inner("(") {
        return Ok((k, Anchor::Condition));
    }
    if key.ends_with(')') && key.contains('(') {
        return skip(format!("pattern anchor {key} is not supported"));
    }
    Ok((key, Anchor::Plain))
}

/// Checks that a pattern only uses what [`match_pattern`] implements:
/// maps with plain, `(conditional)`, `=(equality)` and `X(negation)` keys,
/// lists of one map, and scalar leaves.
fn check_pattern(p: &Value, path: &str) -> R<()> {
    match p {
        Value::Mapping(m) => {
            for (k, v) in m {
                let Some(k) = k.as_str() else {
                    return skip(format!("pattern at {path} has a non-string key"));
                };
                let (name, a) = anchor_of(k)?;
                if a == Anchor::Negation && !matches!(v, Value::String(_) | Value::Null) {
                    return skip(format!(
                        "pattern {path}.{k}: X() with a nested pattern is not supported"
                    ));
                }
                check_pattern(v, &format!("{path}.{name}"))?;
            }
            Ok(())
        }
        Value::Sequence(l) => match l.as_slice() {
            [Value::Mapping(_)] => check_pattern(&l[0], &format!("{path}[]")),
            _ => skip(format!(
                "pattern {path} is a list other than one mapping, not supported"
            )),
        },
        Value::String(s) if s.contains("{{") => skip(format!(
            "pattern {path} uses variables, which are not supported"
        )),
        Value::String(_) | Value::Bool(_) | Value::Number(_) => Ok(()),
        _ => skip(format!("pattern {path} has a value of an unsupported type")),
    }
}

/// Kyverno's validation of a resource against a pattern, for the patterns
/// [`check_pattern`] accepts: a map matches when every conditional anchor
/// holds (else the map is skipped), every plain key is present and matches,
/// every `=()` key is absent or matches and every `X()` key is absent; a
/// list of one map matches when every element does (elements skipped by a
/// conditional anchor do not count; all skipped: skip; an empty list
/// matches); a string leaf is a Kyverno value pattern
/// ([`crate::wildcard::kyverno_match`]) on the scalar as a string; other
/// leaves compare equal. A missing value fails.
pub(crate) fn match_pattern(
    pattern: &serde_json::Value,
    resource: Option<&serde_json::Value>,
) -> PatternOutcome {
    use serde_json::Value as J;
    let Some(res) = resource else {
        return PatternOutcome::Fail;
    };
    match pattern {
        J::Object(m) => {
            let Some(rm) = res.as_object() else {
                return PatternOutcome::Fail;
            };
            // Conditional anchors first: they decide whether the map applies.
            for (k, v) in m {
                if let Ok((name, Anchor::Condition)) = anchor_of(k) {
                    if match_pattern(v, rm.get(name)) != PatternOutcome::Pass {
                        return PatternOutcome::Skip;
                    }
                }
            }
            let mut skipped = false;
            for (k, v) in m {
                let Ok((name, a)) = anchor_of(k) else {
                    return PatternOutcome::Fail;
                };
                let got = match a {
                    Anchor::Condition => continue,
                    Anchor::Negation => {
                        if rm.contains_key(name) {
                            return PatternOutcome::Fail;
                        }
                        continue;
                    }
                    Anchor::Equality if !rm.contains_key(name) => continue,
                    Anchor::Equality | Anchor::Plain => match_pattern(v, rm.get(name)),
                };
                match got {
                    PatternOutcome::Fail => return PatternOutcome::Fail,
                    PatternOutcome::Skip => skipped = true,
                    PatternOutcome::Pass => {}
                }
            }
            if skipped {
                PatternOutcome::Skip
            } else {
                PatternOutcome::Pass
            }
        }
        J::Array(pl) => {
            let (Some(elem), Some(rl)) = (pl.first(), res.as_array()) else {
                return PatternOutcome::Fail;
            };
            let (mut applied, mut skipped) = (0usize, 0usize);
            for r in rl {
                match match_pattern(elem, Some(r)) {
                    PatternOutcome::Fail => return PatternOutcome::Fail,
                    PatternOutcome::Skip => skipped += 1,
                    PatternOutcome::Pass => applied += 1,
                }
            }
            if applied == 0 && skipped > 0 {
                PatternOutcome::Skip
            } else {
                PatternOutcome::Pass
            }
        }
        J::String(p) => {
            let v = match res {
                J::String(s) => s.clone(),
                J::Bool(b) => b.to_string(),
                J::Number(n) => n.to_string(),
                _ => return PatternOutcome::Fail,
            };
            if crate::wildcard::kyverno_match(p, &v) {
                PatternOutcome::Pass
            } else {
                PatternOutcome::Fail
            }
        }
        p => {
            if p == res {
                PatternOutcome::Pass
            } else {
                PatternOutcome::Fail
            }
        }
    }
}

/// The field names (anchors stripped) at the top of a map pattern.
pub(crate) fn pattern_fields(p: &serde_json::Value) -> Vec<&str> {
    p.as_object()
        .map(|m| {
            m.keys()
                .map(|k| anchor_of(k).map_or(k.as_str(), |(n, _)| n))
                .collect()
        })
        .unwrap_or_default()
}

fn to_json(v: &Value) -> R<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Skip(format!("pattern cannot be converted: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EvalContext;
    use serde_json::json;

    fn policy(rule: &str) -> PolicySet {
        let text = format!(
            "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata:\n  name: p\nspec:\n  validationFailureAction: Enforce\n  rules:\n{rule}"
        );
        let set = crate::load_policy_str(&text, "p.yaml").unwrap();
        assert!(!set.is_partial(), "{:?}", set.unsupported());
        set
    }

    /// (allowed) per rule result of the image of container `name` in `pod`;
    /// `None` when the rule skips it.
    fn judge(
        set: &PolicySet,
        pod: &serde_json::Value,
        ct: ContainerType,
        name: &str,
    ) -> Option<bool> {
        let image = pod["spec"][ct.field()]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["image"]
            .as_str()
            .unwrap()
            .to_string();
        let ctx = EvalContext::new(ct).with_pod(Some(pod), Some(name));
        let rs = set.rule_results(&image, &ctx);
        assert!(rs.len() <= 1, "{rs:?}");
        rs.first().map(|r| r.allowed)
    }

    fn pat(p: serde_json::Value, r: serde_json::Value) -> PatternOutcome {
        match_pattern(&p, Some(&r))
    }

    #[test]
    fn pattern_anchor_semantics() {
        use PatternOutcome::*;
        let p = json!({"(image)": "*:latest | !*:*", "imagePullPolicy": "Always"});
        assert_eq!(
            pat(
                p.clone(),
                json!({"image": "nginx:latest", "imagePullPolicy": "Always"})
            ),
            Pass
        );
        assert_eq!(
            pat(
                p.clone(),
                json!({"image": "nginx", "imagePullPolicy": "IfNotPresent"})
            ),
            Fail
        );
        assert_eq!(
            pat(
                p.clone(),
                json!({"image": "nginx:1.2", "imagePullPolicy": "Never"})
            ),
            Skip
        );
        // Absent conditional key: the pattern does not apply.
        assert_eq!(pat(p.clone(), json!({"imagePullPolicy": "Never"})), Skip);
        // Plain keys must be present.
        assert_eq!(pat(p, json!({"image": "nginx:latest"})), Fail);
        // Equality anchor: absent is fine, present must match.
        let e = json!({"=(imagePullPolicy)": "Always"});
        assert_eq!(pat(e.clone(), json!({})), Pass);
        assert_eq!(pat(e, json!({"imagePullPolicy": "Never"})), Fail);
        // Negation anchor: must be absent.
        let x = json!({"X(hostPort)": "null"});
        assert_eq!(pat(x.clone(), json!({})), Pass);
        assert_eq!(pat(x, json!({"hostPort": 80})), Fail);
        // Lists: every element; skipped elements do not count; all
        // skipped skips; an empty list matches.
        let l = json!({"containers": [{"(name)": "app", "image": "ghcr.io/*"}]});
        assert_eq!(
            pat(
                l.clone(),
                json!({"containers": [{"name": "x", "image": "a"}]})
            ),
            Skip
        );
        assert_eq!(
            pat(
                l.clone(),
                json!({"containers": [{"name": "x", "image": "a"}, {"name": "app", "image": "ghcr.io/a"}]})
            ),
            Pass
        );
        assert_eq!(
            pat(
                l.clone(),
                json!({"containers": [{"name": "app", "image": "a"}]})
            ),
            Fail
        );
        assert_eq!(pat(l.clone(), json!({"containers": []})), Pass);
        assert_eq!(pat(l, json!({})), Fail);
        // Non-string scalars compare as strings under a string pattern.
        assert_eq!(pat(json!({"a": "1-3"}), json!({"a": 2})), Pass);
        assert_eq!(pat(json!({"a": false}), json!({"a": false})), Pass);
        assert_eq!(pat(json!({"a": false}), json!({})), Fail);
    }

    #[test]
    fn conditional_anchor_on_image_is_per_container() {
        let set = policy(
            "  - name: always\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    validate:\n      pattern:\n        spec:\n          containers:\n          - (image): \"*:latest | !*:*\"\n            imagePullPolicy: Always\n",
        );
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "nginx:latest", "imagePullPolicy": "Never"},
            {"name": "b", "image": "nginx:1.2", "imagePullPolicy": "Never"},
            {"name": "c", "image": "nginx", "imagePullPolicy": "Always"},
        ]}});
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "a"),
            Some(false)
        );
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "b"),
            None,
            "tag 1.2: skipped"
        );
        assert_eq!(judge(&set, &pod, ContainerType::Container, "c"), Some(true));
        // Without the Pod: the container's defaulted imagePullPolicy.
        assert!(
            set.evaluate("nginx:latest", &EvalContext::default())
                .allowed
        );
        assert!(set
            .rule_results("nginx:1.2", &EvalContext::default())
            .is_empty());
        // Init containers are not governed by a containers pattern.
        let ctx = EvalContext::new(ContainerType::Init);
        assert!(set.rule_results("nginx:latest", &ctx).is_empty());
    }

    #[test]
    fn container_name_in_pattern_applies_to_every_container() {
        let set = policy(
            "  - name: v\n    match:\n      resources:\n        kinds: [Pod]\n    validate:\n      pattern:\n        spec:\n          containers:\n          - name: controller\n            image: \"registry.k8s.io/ingress-nginx/controller:v1.11.*\"\n",
        );
        let pod = json!({"spec": {"containers": [
            {"name": "controller", "image": "registry.k8s.io/ingress-nginx/controller:v1.11.2"},
            {"name": "controller2", "image": "registry.k8s.io/ingress-nginx/controller:v1.11.2"},
            {"name": "controller3", "image": "registry.k8s.io/ingress-nginx/controller:v1.10.0"},
        ]}});
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "controller"),
            Some(true)
        );
        // No anchor: Kyverno requires every element to match, names included.
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "controller2"),
            Some(false)
        );
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "controller3"),
            Some(false)
        );
        // Without the Pod: judged on the name when it is known, else not.
        let img = "registry.k8s.io/ingress-nginx/controller:v1.11.2";
        let named = EvalContext::default().with_pod(None, Some("controller"));
        assert!(set.evaluate(img, &named).allowed);
        let named = EvalContext::default().with_pod(None, Some("other"));
        assert!(!set.evaluate(img, &named).allowed);
        assert!(set.rule_results(img, &EvalContext::default()).is_empty());
    }

    #[test]
    fn preconditions_on_image_infos() {
        let set = policy(
            "  - name: secrets\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    preconditions:\n      all:\n      - key: \"{{ images.containers.*.registry }}\"\n        operator: AnyNotIn\n        value: [ghcr.io, quay.io]\n    validate:\n      pattern:\n        spec:\n          imagePullSecrets:\n          - name: \"?*\"\n",
        );
        let bare = json!({"spec": {
            "containers": [{"name": "a", "image": "nginx"}, {"name": "g", "image": "ghcr.io/x/y"}],
            "initContainers": [{"name": "i", "image": "nginx"}],
        }});
        assert_eq!(
            judge(&set, &bare, ContainerType::Container, "a"),
            Some(false)
        );
        assert_eq!(
            judge(&set, &bare, ContainerType::Container, "g"),
            None,
            "precondition false"
        );
        assert_eq!(
            judge(&set, &bare, ContainerType::Init, "i"),
            None,
            "key covers containers only"
        );
        let mut with = bare.clone();
        with["spec"]["imagePullSecrets"] = json!([{"name": "k"}]);
        assert_eq!(
            judge(&set, &with, ContainerType::Container, "a"),
            Some(true)
        );
        with["spec"]["imagePullSecrets"] = json!([{"name": ""}]);
        assert_eq!(
            judge(&set, &with, ContainerType::Container, "a"),
            Some(false),
            "?* needs a name"
        );
        // Without the Pod, Pod fields are not known: not judged, and said so.
        assert!(set
            .rule_results("nginx", &EvalContext::default())
            .is_empty());
        assert!(set
            .warnings()
            .iter()
            .any(|w| w.message.contains("else not judged")));

        // any: some condition; AnyIn; a key on init containers.
        let set = policy(
            "  - name: r\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    preconditions:\n      any:\n      - key: \"{{ images.initContainers.*.registry }}\"\n        operator: AnyIn\n        value: [\"docker.io\"]\n    validate:\n      pattern:\n        spec:\n          =(initContainers):\n          - image: \"nginx*\"\n",
        );
        assert_eq!(judge(&set, &bare, ContainerType::Init, "i"), Some(true));
        let other = json!({"spec": {"containers": [], "initContainers": [{"name": "i", "image": "quay.io/a/b"}]}});
        assert_eq!(judge(&set, &other, ContainerType::Init, "i"), None);
        let ctx = EvalContext::new(ContainerType::Container).with_pod(Some(&bare), Some("a"));
        assert!(
            set.rule_results("nginx", &ctx).is_empty(),
            "containers not governed"
        );
    }

    #[test]
    fn unsupported_preconditions_are_reported() {
        let text = "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata:\n  name: p\nspec:\n  rules:\n  - name: op\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    preconditions:\n      all:\n      - key: \"{{ request.operation }}\"\n        operator: Equals\n        value: CREATE\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"a/*\"\n";
        let set = crate::load_policy_str(text, "p.yaml").unwrap();
        assert_eq!(set.unsupported().len(), 1);
        assert!(
            set.unsupported()[0].reason.starts_with("preconditions:"),
            "{:?}",
            set.unsupported()
        );
        assert_eq!(set.rule_count(), 0);
    }

    #[test]
    fn jmespath_container_filter() {
        for f in [
            "(@.name=='controller')",
            "@.name == 'controller'",
            "name=='controller'",
            "name==`\"controller\"`",
        ] {
            assert_eq!(
                jmespath_equality(f),
                Some(("name".into(), "controller".into())),
                "{f}"
            );
        }
        for f in [
            "name=='a' && image=='b'",
            "name>'a'",
            "@.a.b=='x'",
            "name==controller",
        ] {
            assert_eq!(jmespath_equality(f), None, "{f}");
        }
        let set = policy(
            "  - name: deny-old\n    match:\n      resources:\n        kinds: [Pod]\n    validate:\n      deny:\n        conditions:\n        - key: \"{{ request.object.spec.containers[?(@.name=='controller')].image }}\"\n          operator: AnyIn\n          value: [\"registry.k8s.io/ingress-nginx/controller:v1.10.*\"]\n",
        );
        let pod = json!({"spec": {"containers": [
            {"name": "controller", "image": "registry.k8s.io/ingress-nginx/controller:v1.10.3"},
            {"name": "sidecar", "image": "registry.k8s.io/ingress-nginx/controller:v1.10.3"},
            {"name": "controller2", "image": "registry.k8s.io/ingress-nginx/controller:v1.11.2"},
        ]}});
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "controller"),
            Some(false)
        );
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "sidecar"),
            Some(true),
            "filtered out"
        );
        assert_eq!(
            judge(&set, &pod, ContainerType::Container, "controller2"),
            Some(true)
        );
        // Without the Pod and the container's name: not judged.
        let img = "registry.k8s.io/ingress-nginx/controller:v1.10.3";
        assert!(set.rule_results(img, &EvalContext::default()).is_empty());
        let named = EvalContext::default().with_pod(None, Some("controller"));
        assert!(!set.evaluate(img, &named).allowed);
    }
}
