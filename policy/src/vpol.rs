//! CEL policies on whole Pods: Kyverno `policies.kyverno.io`
//! `ValidatingPolicy` / `NamespacedValidatingPolicy` (v1, v1beta1,
//! v1alpha1), Kubernetes `ValidatingAdmissionPolicy` with its bindings and
//! params, and Kyverno `ClusterPolicy` `validate.cel` rules, all compiled
//! into one [`CelRule`].
//!
//! A CEL rule judges a Pod; the kernel needs a verdict per container
//! ([`judge`]):
//! - with the whole Pod at hand (`check --manifest`, a controller's template
//!   as a Pod): when the Pod passes, every container passes. When it fails,
//!   the rule is evaluated on the Pod reduced to each container in turn (the
//!   container lists hold only that container); the containers whose reduced
//!   Pod fails are denied. When no reduced Pod fails (the rule is about the
//!   combination, e.g. `size(object.spec.containers) <= 2`), every container
//!   of the Pod is denied: admission would have rejected the Pod.
//! - with only the image (the agent's view of a running container): the
//!   rule is evaluated on a Pod holding just that container (`name`,
//!   `image`), the namespace and the labels. When such a Pod cannot be
//!   judged (the rule reads a field the node does not have: an evaluation
//!   error), the rule does not decide for that image.
//!
//! A rule governs the container types its expressions name (`containers`,
//! `initContainers`, `ephemeralContainers`); one that names none governs all.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value as Json};
use serde_yaml::{Mapping, Value};

use crate::cel::{cel_map, json_to_cel, with_scope, CelError, CelProgram};
use crate::eval::{Filter, FilterSet, ImageTest, Policy, PolicySet, Rule, Scope};
use crate::load::DocSource;
use crate::model::{Action, ContainerType, EvalContext, PolicyError, Unsupported, Warning};
use kube_cel::cel::Value as CelValue;

/// The Pod controllers Kyverno's autogen covers for a ValidatingPolicy.
pub const VPOL_AUTOGEN_KINDS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicaSet",
];

/// One `validations[]` entry.
#[derive(Debug, Clone)]
pub struct CelValidation {
    pub expr: CelProgram,
    pub message: Option<String>,
    pub message_expr: Option<CelProgram>,
}

/// A compiled CEL rule: evaluated as admission would on a Pod.
#[derive(Debug, Clone, Default)]
pub struct CelRule {
    pub match_conditions: Vec<(String, CelProgram)>,
    pub variables: Vec<(String, CelProgram)>,
    pub validations: Vec<CelValidation>,
    /// The params the rule is evaluated with (a ValidatingAdmissionPolicy
    /// binding may select several: each must pass). Empty: `params` is null.
    pub params: Vec<CelValue>,
    /// Indexed by [`ContainerType::index`].
    pub governs: [bool; 3],
    /// `failurePolicy: Ignore`: an evaluation error does not decide.
    pub ignore_errors: bool,
}

/// The result of a rule on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CelOutcome {
    /// A match condition is false.
    NotApplicable,
    Pass,
    /// A validation is false: its message.
    Fail(String),
    /// An expression could not be evaluated.
    Error(String),
}

/// What a rule says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    NotApplicable,
    Pass,
    /// Denied, with the message to report (rule message when `None`).
    Fail(Option<String>),
}

impl CelRule {
    /// Compiles a rule; the error names the failing expression.
    pub fn compile(
        match_conditions: &[(String, String)],
        variables: &[(String, String)],
        validations: &[ValidationSrc],
    ) -> Result<CelRule, String> {
        let prog = |what: &str, src: &str| {
            CelProgram::compile(src).map_err(|e| match e {
                CelError::Unenforceable(_) => format!("{what} {e}"),
                _ => format!("{what}: {e}: {src}"),
            })
        };
        let mut rule = CelRule::default();
        let mut text = String::new();
        for (n, e) in match_conditions {
            rule.match_conditions
                .push((n.clone(), prog(&format!("matchCondition {n}"), e)?));
            text.push_str(e);
        }
        for (n, e) in variables {
            rule.variables
                .push((n.clone(), prog(&format!("variable {n}"), e)?));
            text.push_str(e);
        }
        if validations.is_empty() {
            return Err("no validations".into());
        }
        for (i, (e, msg, msg_expr)) in validations.iter().enumerate() {
            rule.validations.push(CelValidation {
                expr: prog(&format!("validations[{i}]"), e)?,
                message: msg.clone(),
                message_expr: match msg_expr {
                    Some(m) => Some(prog(&format!("validations[{i}].messageExpression"), m)?),
                    None => None,
                },
            });
            text.push_str(e);
        }
        rule.governs = governed_types(&text);
        Ok(rule)
    }

    /// Evaluates the rule on `object` (a Pod) as admission of a CREATE in
    /// `namespace` would.
    pub fn evaluate(&self, object: &Json, namespace: Option<&str>) -> CelOutcome {
        let name = object
            .pointer("/metadata/name")
            .and_then(Json::as_str)
            .unwrap_or("");
        self.evaluate_value(json_to_cel(object), namespace, name)
    }

    /// [`CelRule::evaluate`] on an object already converted to CEL.
    pub fn evaluate_value(
        &self,
        object: CelValue,
        namespace: Option<&str>,
        name: &str,
    ) -> CelOutcome {
        match self.evaluate_inner(object, namespace, name) {
            CelOutcome::Error(_) if self.ignore_errors => CelOutcome::NotApplicable,
            other => other,
        }
    }

    fn evaluate_inner(&self, object: CelValue, namespace: Option<&str>, name: &str) -> CelOutcome {
        let s = |x: &str| CelValue::String(Arc::new(x.to_string()));
        let request = cel_map([
            ("operation".to_string(), s("CREATE")),
            ("namespace".to_string(), s(namespace.unwrap_or(""))),
            ("name".to_string(), s(name)),
            (
                "kind".to_string(),
                cel_map([
                    ("group".to_string(), s("")),
                    ("version".to_string(), s("v1")),
                    ("kind".to_string(), s("Pod")),
                ]),
            ),
            (
                "resource".to_string(),
                cel_map([
                    ("group".to_string(), s("")),
                    ("version".to_string(), s("v1")),
                    ("resource".to_string(), s("pods")),
                ]),
            ),
            ("dryRun".to_string(), CelValue::Bool(false)),
        ]);
        let params: Vec<CelValue> = if self.params.is_empty() {
            vec![CelValue::Null]
        } else {
            self.params.clone()
        };
        with_scope(|ctx| {
            ctx.add_variable_from_value("object", object);
            ctx.add_variable_from_value("oldObject", CelValue::Null);
            ctx.add_variable_from_value("request", request);
            for p in params {
                ctx.add_variable_from_value("params", p);
                for (n, c) in &self.match_conditions {
                    match c.eval_bool(ctx) {
                        Ok(true) => {}
                        Ok(false) => return CelOutcome::NotApplicable,
                        Err(e) => return CelOutcome::Error(format!("matchCondition {n}: {e}")),
                    }
                }
                let mut vars: Vec<(String, CelValue)> = Vec::new();
                let mut var_errors: Vec<String> = Vec::new();
                for (n, v) in &self.variables {
                    ctx.add_variable_from_value("variables", cel_map(vars.clone()));
                    match v.eval(ctx) {
                        Ok(x) => vars.push((n.clone(), x)),
                        Err(e) => var_errors.push(format!("variable {n}: {e}")),
                    }
                }
                ctx.add_variable_from_value("variables", cel_map(vars));
                for v in &self.validations {
                    match v.expr.eval_bool(ctx) {
                        Ok(true) => {}
                        Ok(false) => {
                            let msg = v
                                .message_expr
                                .as_ref()
                                .and_then(|m| match m.eval(ctx) {
                                    Ok(CelValue::String(s)) => Some(s.to_string()),
                                    _ => None,
                                })
                                .or_else(|| v.message.clone())
                                .map(|m| m.trim().to_string())
                                .filter(|m| !m.is_empty())
                                .unwrap_or_else(|| {
                                    format!("failed expression: {}", v.expr.source().trim())
                                });
                            return CelOutcome::Fail(msg);
                        }
                        Err(e) => {
                            let mut msg =
                                format!("error evaluating {}: {e}", v.expr.source().trim());
                            if !var_errors.is_empty() {
                                msg.push_str(&format!(" ({})", var_errors.join("; ")));
                            }
                            return CelOutcome::Error(msg);
                        }
                    }
                }
            }
            CelOutcome::Pass
        })
    }
}

/// The container types the expressions name (all when they name none).
fn governed_types(text: &str) -> [bool; 3] {
    let named = |field: &str| {
        text.match_indices(field).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + field.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    let g = [
        named("containers"),
        named("initContainers"),
        named("ephemeralContainers"),
    ];
    if g.iter().any(|x| *x) {
        g
    } else {
        [true; 3]
    }
}

/// The Pod reduced to one container: the container lists hold only the
/// container `name` (with `image`) of `ty`; `spec.containers` is kept (as
/// an empty list) because a Pod always has it.
pub fn reduce_pod(pod: &Json, ty: ContainerType, name: Option<&str>, image: &str) -> Json {
    let mut out = pod.clone();
    let Some(spec) = out.get_mut("spec").and_then(Json::as_object_mut) else {
        return out;
    };
    for t in ContainerType::ALL {
        let kept: Vec<Json> = if t == ty {
            spec.get(t.field())
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter(|c| {
                    c.get("name").and_then(Json::as_str) == name
                        && c.get("image").and_then(Json::as_str).unwrap_or("") == image
                })
                .take(1)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if kept.is_empty() && t != ContainerType::Container {
            spec.remove(t.field());
        } else {
            spec.insert(t.field().to_string(), Json::Array(kept));
        }
    }
    out
}

/// A Pod with only this container, as the agent knows it.
pub fn synthetic_pod(image: &str, ctx: &EvalContext<'_>) -> Json {
    let mut container = json!({"image": image});
    if let Some(n) = ctx.container_name {
        container["name"] = json!(n);
    }
    let mut spec = serde_json::Map::new();
    spec.insert("containers".into(), json!([]));
    spec.insert(ctx.container_type.field().into(), json!([container]));
    let mut meta = serde_json::Map::new();
    if let Some(ns) = ctx.namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    if !ctx.pod_labels.is_empty() {
        meta.insert("labels".into(), json!(ctx.pod_labels));
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// [`synthetic_pod`] built directly as a CEL value (the agent's hot path).
fn synthetic_pod_cel(image: &str, ctx: &EvalContext<'_>) -> CelValue {
    let s = |x: &str| CelValue::String(Arc::new(x.to_string()));
    let mut container = vec![("image".to_string(), s(image))];
    if let Some(n) = ctx.container_name {
        container.push(("name".to_string(), s(n)));
    }
    let one = CelValue::List(Arc::new(vec![cel_map(container)]));
    let mut spec = vec![(
        "containers".to_string(),
        CelValue::List(Arc::new(Vec::new())),
    )];
    match ctx.container_type {
        ContainerType::Container => spec[0].1 = one,
        t => spec.push((t.field().to_string(), one)),
    }
    let mut meta = Vec::new();
    if let Some(ns) = ctx.namespace {
        meta.push(("namespace".to_string(), s(ns)));
    }
    if !ctx.pod_labels.is_empty() {
        meta.push((
            "labels".to_string(),
            cel_map(ctx.pod_labels.iter().map(|(k, v)| (k.clone(), s(v)))),
        ));
    }
    cel_map([
        ("apiVersion".to_string(), s("v1")),
        ("kind".to_string(), s("Pod")),
        ("metadata".to_string(), cel_map(meta)),
        ("spec".to_string(), cel_map(spec)),
    ])
}

/// The verdict of `rule` for the container of `ctx` running `image`
/// (semantics in the module documentation).
pub fn judge(rule: &CelRule, image: &str, ctx: &EvalContext<'_>) -> Judgement {
    if !rule.governs[ctx.container_type.index()] {
        return Judgement::NotApplicable;
    }
    let ns = ctx.namespace;
    let Some(pod) = ctx.pod else {
        return match rule.evaluate_value(synthetic_pod_cel(image, ctx), ns, "") {
            CelOutcome::NotApplicable | CelOutcome::Error(_) => Judgement::NotApplicable,
            CelOutcome::Pass => Judgement::Pass,
            CelOutcome::Fail(m) => Judgement::Fail(Some(m)),
        };
    };
    let whole = match rule.evaluate(pod, ns) {
        CelOutcome::NotApplicable => return Judgement::NotApplicable,
        CelOutcome::Pass => return Judgement::Pass,
        CelOutcome::Fail(m) | CelOutcome::Error(m) => m,
    };
    let reduced = reduce_pod(pod, ctx.container_type, ctx.container_name, image);
    match rule.evaluate(&reduced, ns) {
        CelOutcome::Fail(m) | CelOutcome::Error(m) => return Judgement::Fail(Some(m)),
        CelOutcome::NotApplicable | CelOutcome::Pass => {}
    }
    // This container passes alone: is another one to blame?
    let spec = pod.get("spec");
    for t in ContainerType::ALL {
        for c in spec
            .and_then(|s| s.get(t.field()))
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let name = c.get("name").and_then(Json::as_str);
            let img = c.get("image").and_then(Json::as_str).unwrap_or("");
            if t == ctx.container_type && name == ctx.container_name && img == image {
                continue;
            }
            if rule.governs[t.index()]
                && matches!(
                    rule.evaluate(&reduce_pod(pod, t, name, img), ns),
                    CelOutcome::Fail(_) | CelOutcome::Error(_)
                )
            {
                return Judgement::Pass;
            }
        }
    }
    Judgement::Fail(Some(format!(
        "{whole} (the Pod as a whole fails; no single container does)"
    )))
}

// ---------------------------------------------------------------------------
// Label selectors (objectSelector, namespaceSelector, paramRef.selector).
// ---------------------------------------------------------------------------

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    /// (key, operator, values)
    pub match_expressions: Vec<(String, SelectorOp, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn parse(v: &Value) -> Result<LabelSelector, String> {
        let Some(m) = v.as_mapping() else {
            return Err("a label selector must be a mapping".into());
        };
        let mut sel = LabelSelector::default();
        for (k, v) in m {
            match k.as_str().unwrap_or("") {
                "matchLabels" => {
                    for (lk, lv) in v.as_mapping().into_iter().flatten() {
                        let (Some(lk), Some(lv)) = (lk.as_str(), scalar(lv)) else {
                            return Err("matchLabels must map strings to strings".into());
                        };
                        sel.match_labels.insert(lk.to_string(), lv);
                    }
                }
                "matchExpressions" => {
                    for e in v.as_sequence().into_iter().flatten() {
                        let key = e
                            .get("key")
                            .and_then(Value::as_str)
                            .ok_or("matchExpressions[].key missing")?;
                        let op = match e.get("operator").and_then(Value::as_str) {
                            Some("In") => SelectorOp::In,
                            Some("NotIn") => SelectorOp::NotIn,
                            Some("Exists") => SelectorOp::Exists,
                            Some("DoesNotExist") => SelectorOp::DoesNotExist,
                            other => {
                                return Err(format!(
                                    "matchExpressions operator {other:?} is not valid"
                                ))
                            }
                        };
                        let values = e
                            .get("values")
                            .and_then(Value::as_sequence)
                            .map(|l| l.iter().filter_map(scalar).collect())
                            .unwrap_or_default();
                        sel.match_expressions.push((key.to_string(), op, values));
                    }
                }
                other => return Err(format!("label selector field {other} is not valid")),
            }
        }
        Ok(sel)
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.match_labels
            .keys()
            .map(String::as_str)
            .chain(self.match_expressions.iter().map(|e| e.0.as_str()))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(k, op, vals)| match op {
                SelectorOp::In => labels.get(k).is_some_and(|v| vals.contains(v)),
                SelectorOp::NotIn => !labels.get(k).is_some_and(|v| vals.contains(v)),
                SelectorOp::Exists => labels.contains_key(k),
                SelectorOp::DoesNotExist => !labels.contains_key(k),
            })
    }
}

/// A YAML scalar as the string Kubernetes would compare.
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Import.
// ---------------------------------------------------------------------------

/// A per-rule failure to import: reported by name, not enforced.
pub(crate) struct Skip(pub String);

pub(crate) type R<T> = Result<T, Skip>;

fn get<'a>(m: &'a Mapping, k: &str) -> Option<&'a Value> {
    m.get(k)
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|l| l.iter().filter_map(scalar).collect())
        .unwrap_or_default()
}

/// `(name, expression)` pairs of `variables` or `matchConditions`.
fn named_exprs(v: Option<&Value>, what: &str) -> R<Vec<(String, String)>> {
    let mut out = Vec::new();
    let Some(v) = v else { return Ok(out) };
    let Some(l) = v.as_sequence() else {
        return Err(Skip(format!("{what} is not a list")));
    };
    for x in l {
        let n = x
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Skip(format!("{what}[] has no name")))?;
        let e = x
            .get("expression")
            .and_then(Value::as_str)
            .ok_or_else(|| Skip(format!("{what} {n} has no expression")))?;
        out.push((n.to_string(), e.to_string()));
    }
    Ok(out)
}

/// `(expression, message, messageExpression)` of `validations`.
/// `(expression, message, messageExpression)`.
pub type ValidationSrc = (String, Option<String>, Option<String>);

fn validations(v: Option<&Value>) -> R<Vec<ValidationSrc>> {
    let Some(l) = v.and_then(Value::as_sequence) else {
        return Err(Skip("validations is missing or not a list".into()));
    };
    let mut out = Vec::new();
    for x in l {
        let Some(m) = x.as_mapping() else {
            return Err(Skip("validations[] is not a mapping".into()));
        };
        for (k, _) in m {
            match k.as_str().unwrap_or("") {
                "expression" | "message" | "messageExpression" | "reason" => {}
                other => return Err(Skip(format!("validations[].{other} is not supported"))),
            }
        }
        let e = get(m, "expression")
            .and_then(Value::as_str)
            .ok_or_else(|| Skip("validations[] has no expression".into()))?;
        out.push((
            e.to_string(),
            get(m, "message")
                .and_then(Value::as_str)
                .map(str::to_string),
            get(m, "messageExpression")
                .and_then(Value::as_str)
                .map(str::to_string),
        ));
    }
    Ok(out)
}

/// What `matchConstraints` selects: kinds (Pods, and with autogen the Pod
/// controllers) and selectors.
struct Constraints {
    filter: Filter,
    /// Every resource rule is about Pods (autogen applies).
    pods_only: bool,
}

fn resource_kinds(rules: Option<&Value>, what: &str) -> R<(Vec<String>, bool)> {
    let mut pods = false;
    let mut others = false;
    for rr in rules.and_then(Value::as_sequence).into_iter().flatten() {
        let Some(m) = rr.as_mapping() else {
            return Err(Skip(format!("{what}[] is not a mapping")));
        };
        for (k, _) in m {
            match k.as_str().unwrap_or("") {
                "apiGroups" | "apiVersions" | "operations" | "resources" | "scope" => {}
                "resourceNames" => {
                    return Err(Skip(format!("{what}[].resourceNames is not supported")))
                }
                other => return Err(Skip(format!("{what}[].{other} is not supported"))),
            }
        }
        let ops = strs(get(m, "operations"));
        let groups = strs(get(m, "apiGroups"));
        let core = groups.is_empty() || groups.iter().any(|g| g.is_empty() || g == "*");
        let creates = ops.iter().any(|o| o == "CREATE" || o == "*");
        let mut this_pods = false;
        for r in strs(get(m, "resources")) {
            match r.as_str() {
                "pods" | "pods/ephemeralcontainers" | "*" | "pods/*" | "*/*" if core && creates => {
                    this_pods = true
                }
                _ => others = true,
            }
        }
        pods |= this_pods;
    }
    Ok((
        if pods {
            vec!["Pod".to_string()]
        } else {
            Vec::new()
        },
        pods && !others,
    ))
}

fn match_constraints(mc: &Mapping) -> R<Constraints> {
    let mut filter = Filter::default();
    let mut pods_only = false;
    let mut kinds = Vec::new();
    for (k, v) in mc {
        match k.as_str().unwrap_or("") {
            "resourceRules" => {
                let (ks, only) = resource_kinds(Some(v), "matchConstraints.resourceRules")?;
                kinds = ks;
                pods_only = only;
            }
            "excludeResourceRules" => {
                let (ks, _) = resource_kinds(Some(v), "matchConstraints.excludeResourceRules")?;
                if !ks.is_empty() {
                    return Err(Skip("excludeResourceRules excludes every Pod".into()));
                }
            }
            "namespaceSelector" => {
                let sel = LabelSelector::parse(v).map_err(Skip)?;
                if !sel.is_empty() {
                    filter.namespace_selector = Some(sel);
                }
            }
            "objectSelector" => {
                let sel = LabelSelector::parse(v).map_err(Skip)?;
                if !sel.is_empty() {
                    filter.object_selector = Some(sel);
                }
            }
            "matchPolicy" => {}
            other => return Err(Skip(format!("matchConstraints.{other} is not supported"))),
        }
    }
    if kinds.is_empty() {
        return Err(Skip("matchConstraints selects no Pod CREATE".into()));
    }
    filter.kinds = Some(kinds);
    Ok(Constraints { filter, pods_only })
}

/// `failurePolicy`: `Fail` (the default) or `Ignore`.
fn failure_policy_ignore(spec: &Mapping) -> R<bool> {
    match get(spec, "failurePolicy").map(|v| v.as_str()) {
        None | Some(Some("Fail")) => Ok(false),
        Some(Some("Ignore")) => Ok(true),
        Some(other) => Err(Skip(format!(
            "failurePolicy {other:?} is not valid (Fail or Ignore)"
        ))),
    }
}

fn action_of(actions: &[String]) -> Action {
    if actions.iter().any(|a| a == "Deny") {
        Action::Enforce
    } else {
        Action::Audit
    }
}

fn report(set: &mut PolicySet, src: &DocSource<'_>, policy: &str, rule: &str, reason: String) {
    let unsupported = Unsupported {
        source: src.file.to_string(),
        policy: policy.into(),
        rule: rule.into(),
        reason,
    };
    set.warnings.push(unsupported.warning());
    set.unsupported.push(unsupported);
}

/// The rule's tests: the CEL rule for each governed container type.
fn tests_of(rule: CelRule) -> [Option<ImageTest>; 3] {
    let rule = Arc::new(rule);
    let mut t: [Option<ImageTest>; 3] = [None, None, None];
    for ct in ContainerType::ALL {
        if rule.governs[ct.index()] {
            t[ct.index()] = Some(ImageTest::Cel(rule.clone()));
        }
    }
    t
}

fn uncovered_warning(
    rule: &CelRule,
    src: &DocSource<'_>,
    policy: &str,
    rule_name: &str,
) -> Option<Warning> {
    let missing: Vec<&str> = ContainerType::ALL
        .iter()
        .filter(|c| !rule.governs[c.index()])
        .map(|c| c.field())
        .collect();
    (!missing.is_empty()).then(|| {
        src.warning(
            policy,
            rule_name,
            format!(
                "the expressions never name {}: their images are not checked",
                missing.join(", ")
            ),
        )
    })
}

/// `policies.kyverno.io` `ValidatingPolicy` / `NamespacedValidatingPolicy`.
pub(crate) fn import_vpol(
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    spec: &Mapping,
    src: &DocSource<'_>,
) -> Result<PolicySet, PolicyError> {
    let mut set = PolicySet::new();
    let rule_name = "validations";
    let mut rules = Vec::new();
    match vpol_rule(kind, spec) {
        Ok(rule) => {
            if let Some(w) = uncovered_warning(&rule.cel, src, name, rule_name) {
                set.warnings.push(w);
            }
            rules.push(Rule {
                name: rule_name.into(),
                action: rule.action,
                message: None,
                scope: Scope {
                    matches: FilterSet {
                        all: false,
                        filters: vec![rule.filter],
                    },
                    excludes: None,
                },
                tests: tests_of(rule.cel),
                drift: None,
            });
        }
        Err(Skip(reason)) => report(&mut set, src, name, rule_name, reason),
    }
    set.policies.push(Policy {
        name: name.to_string(),
        kind: kind.into(),
        namespace: namespace.map(str::to_string),
        rules,
    });
    Ok(set)
}

/// What a ValidatingPolicy compiles to: its one rule's action, match filter
/// and CEL.
struct VpolRule {
    action: Action,
    filter: Filter,
    cel: CelRule,
}

fn vpol_rule(kind: &str, spec: &Mapping) -> R<VpolRule> {
    let autogen_kinds = vpol_spec_fields(kind, spec)?;
    let action = action_of(&strs(get(spec, "validationActions")));
    let mc = get(spec, "matchConstraints")
        .and_then(Value::as_mapping)
        .ok_or_else(|| Skip("no matchConstraints".into()))?;
    let Constraints {
        mut filter,
        pods_only,
    } = match_constraints(mc)?;
    if pods_only {
        let kinds = filter.kinds.get_or_insert_with(Vec::new);
        match &autogen_kinds {
            Some(k) => kinds.extend(k.iter().cloned()),
            None => kinds.extend(VPOL_AUTOGEN_KINDS.iter().map(|k| k.to_string())),
        }
    }
    let cel = compile_spec_cel(spec)?;
    Ok(VpolRule {
        action,
        filter,
        cel,
    })
}

/// Checks the fields of a ValidatingPolicy's spec; returns the Pod
/// controllers its `autogen` names (`None`: the default ones).
fn vpol_spec_fields(kind: &str, spec: &Mapping) -> R<Option<Vec<String>>> {
    let mut autogen_kinds: Option<Vec<String>> = None;
    for (k, v) in spec {
        match k.as_str().unwrap_or("") {
            "validationActions"
            | "matchConstraints"
            | "matchConditions"
            | "variables"
            | "validations"
            | "failurePolicy"
            | "auditAnnotations"
            | "webhookConfiguration" => {}
            "evaluation" => {
                for (ek, ev) in v.as_mapping().into_iter().flatten() {
                    match ek.as_str().unwrap_or("") {
                        // `admission.enabled: false`: the policy only
                        // reports on existing resources, which is what
                        // the agent does at runtime too.
                        "background" | "admission" => {}
                        "mode" if ev.as_str() == Some("Kubernetes") => {}
                        other => return Err(Skip(format!("evaluation.{other} is not supported"))),
                    }
                }
            }
            "autogen" => {
                let ctrls = v
                    .get("podControllers")
                    .and_then(|p| p.get("controllers"))
                    .map(|c| strs(Some(c)));
                if let Some(c) = ctrls {
                    autogen_kinds = Some(c.iter().filter_map(|r| autogen_kind(r)).collect());
                }
            }
            other => return Err(Skip(format!("{kind} spec.{other} is not supported"))),
        }
    }
    Ok(autogen_kinds)
}

/// The kind an autogen controller names (`deployments` or `Deployment`).
fn autogen_kind(resource: &str) -> Option<String> {
    VPOL_AUTOGEN_KINDS
        .iter()
        .find(|k| {
            format!("{}s", k.to_ascii_lowercase()) == resource || k.eq_ignore_ascii_case(resource)
        })
        .map(|k| k.to_string())
}

/// The CEL of a ValidatingPolicy or ValidatingAdmissionPolicy spec: its
/// `matchConditions`, `variables`, `validations` and `failurePolicy`.
fn compile_spec_cel(spec: &Mapping) -> R<CelRule> {
    let mut rule = CelRule::compile(
        &named_exprs(get(spec, "matchConditions"), "matchConditions")?,
        &named_exprs(get(spec, "variables"), "variables")?,
        &validations(get(spec, "validations"))?,
    )
    .map_err(Skip)?;
    rule.ignore_errors = failure_policy_ignore(spec)?;
    Ok(rule)
}

/// A Kyverno `validate.cel` block (ClusterPolicy/Policy rule).
pub(crate) fn compile_validate_cel(v: &Value) -> Result<[Option<ImageTest>; 3], String> {
    let Some(m) = v.as_mapping() else {
        return Err("validate.cel is not a mapping".into());
    };
    for (k, _) in m {
        match k.as_str().unwrap_or("") {
            "expressions" | "variables" | "auditAnnotations" => {}
            other => return Err(format!("validate.cel.{other} is not supported")),
        }
    }
    let vars = named_exprs(get(m, "variables"), "cel variables").map_err(|s| s.0)?;
    let exprs = validations(get(m, "expressions")).map_err(|s| s.0)?;
    let rule = CelRule::compile(&[], &vars, &exprs).map_err(|e| format!("CEL: {e}"))?;
    Ok(tests_of(rule))
}

// ---------------------------------------------------------------------------
// ValidatingAdmissionPolicy + ValidatingAdmissionPolicyBinding + params.
// ---------------------------------------------------------------------------

/// Documents of a file set that only mean something together.
#[derive(Default)]
pub(crate) struct VapDocs {
    /// (name, spec, file, first line)
    pub policies: Vec<(String, Mapping, String, usize, String)>,
    pub bindings: Vec<(String, Mapping, String, usize, String)>,
    /// Param objects: (apiVersion, kind, namespace, name, labels, object as JSON).
    pub params: Vec<ParamObject>,
}

pub(crate) struct ParamObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub object: Json,
}

impl ParamObject {
    pub fn from_doc(doc: &Value) -> Option<ParamObject> {
        let api_version = doc.get("apiVersion")?.as_str()?.to_string();
        let kind = doc.get("kind")?.as_str()?.to_string();
        let meta = doc.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)?
            .to_string();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_mapping)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let object = serde_json::to_value(doc).ok()?;
        Some(ParamObject {
            api_version,
            kind,
            namespace,
            name,
            labels,
            object,
        })
    }
}

/// Links every binding to its policy and params; a policy without binding
/// is not enforced (as in Kubernetes) and reported.
pub(crate) fn link_vaps(docs: VapDocs, set: &mut PolicySet) {
    let mut bound: Vec<bool> = vec![false; docs.policies.len()];
    for (bname, bspec, file, line, text) in &docs.bindings {
        let src = DocSource {
            file,
            text,
            first_line: *line,
        };
        let pname = bspec
            .get("policyName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(pi) = docs.policies.iter().position(|p| p.0 == pname) else {
            report(
                set,
                &src,
                bname,
                "binding",
                format!("binds policy {pname:?}, which is not in the policy files"),
            );
            continue;
        };
        bound[pi] = true;
        let (_, pspec, pfile, pline, ptext) = &docs.policies[pi];
        let psrc = DocSource {
            file: pfile,
            text: ptext,
            first_line: *pline,
        };
        let policy_name = format!("{pname}/{bname}");
        let mut sub = PolicySet::new();
        let binding = Binding {
            pname,
            pspec,
            bspec,
            params: &docs.params,
            src: &psrc,
        };
        match binding.rule(&mut sub) {
            Ok(rule) => sub.policies.push(Policy {
                name: policy_name,
                kind: "ValidatingAdmissionPolicy".into(),
                namespace: None,
                rules: vec![rule],
            }),
            Err(Skip(reason)) => {
                report(&mut sub, &psrc, &policy_name, "validations", reason);
                sub.policies.push(Policy {
                    name: policy_name,
                    kind: "ValidatingAdmissionPolicy".into(),
                    namespace: None,
                    rules: Vec::new(),
                });
            }
        }
        set.extend(sub);
    }
    for (i, (pname, _, file, line, _)) in docs.policies.iter().enumerate() {
        if !bound[i] {
            set.warnings.push(Warning {
                source: file.clone(),
                policy: pname.clone(),
                rule: None,
                message: format!("line {line}: ValidatingAdmissionPolicy has no ValidatingAdmissionPolicyBinding in the policy files; it is not in effect (as in Kubernetes)"),
            });
        }
    }
}

/// A ValidatingAdmissionPolicy with one of its bindings, and the param
/// objects of the policy files.
struct Binding<'a> {
    pname: &'a str,
    pspec: &'a Mapping,
    bspec: &'a Mapping,
    params: &'a [ParamObject],
    /// Where the policy is, for its warnings.
    src: &'a DocSource<'a>,
}

impl Binding<'_> {
    /// The policy's rule as bound; warnings go to `set`.
    fn rule(&self, set: &mut PolicySet) -> R<Rule> {
        let Binding {
            pname,
            pspec,
            bspec,
            src,
            ..
        } = *self;
        only_fields(
            pspec,
            &[
                "matchConstraints",
                "matchConditions",
                "variables",
                "validations",
                "failurePolicy",
                "auditAnnotations",
                "paramKind",
            ],
            "ValidatingAdmissionPolicy",
        )?;
        only_fields(
            bspec,
            &[
                "policyName",
                "validationActions",
                "matchResources",
                "paramRef",
            ],
            "ValidatingAdmissionPolicyBinding",
        )?;
        let actions = strs(get(bspec, "validationActions"));
        if actions.is_empty() {
            return Err(Skip("binding has no validationActions".into()));
        }
        let action = action_of(&actions);
        let matches = bound_matches(pspec, bspec)?;
        let mut rule = compile_spec_cel(pspec)?;
        rule.params = self.params(set)?;
        if let Some(w) = uncovered_warning(&rule, src, pname, "validations") {
            set.warnings.push(w);
        }
        Ok(Rule {
            name: "validations".into(),
            action,
            message: None,
            scope: Scope {
                matches,
                excludes: None,
            },
            tests: tests_of(rule),
            drift: None,
        })
    }

    /// The params the binding's `paramRef` selects for the policy's
    /// `paramKind`, as CEL values (none without `paramKind`).
    fn params(&self, set: &mut PolicySet) -> R<Vec<CelValue>> {
        let Binding {
            pname,
            pspec,
            bspec,
            params,
            src,
        } = *self;
        let Some(pk) = get(pspec, "paramKind") else {
            if get(bspec, "paramRef").is_some() {
                return Err(Skip(
                    "binding has a paramRef but the policy no paramKind".into(),
                ));
            }
            return Ok(Vec::new());
        };
        let api_version = pk.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = pk.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some(pr) = get(bspec, "paramRef") else {
            return Err(Skip(format!(
                "policy {pname} has paramKind {kind} but the binding has no paramRef"
            )));
        };
        let selected = select_params(pr, api_version, kind, params)?;
        if selected.is_empty() {
            let deny = pr.get("parameterNotFoundAction").and_then(Value::as_str) == Some("Deny");
            if deny {
                return Err(Skip(format!(
                "paramRef selects no {kind} in the policy files and parameterNotFoundAction is Deny (every Pod would be denied)"
            )));
            }
            set.warnings.push(Warning {
            source: src.file.to_string(),
            policy: pname.into(),
            rule: None,
            message: format!("paramRef selects no {kind} in the policy files: the binding allows everything (parameterNotFoundAction Allow)"),
        });
            return Err(Skip(format!(
                "paramRef selects no {kind} in the policy files"
            )));
        }
        Ok(selected.iter().map(|p| json_to_cel(&p.object)).collect())
    }
}

/// A spec may only have these fields; `what` names it in the reason.
fn only_fields(spec: &Mapping, known: &[&str], what: &str) -> R<()> {
    for (k, _) in spec {
        let k = k.as_str().unwrap_or("");
        if !known.contains(&k) {
            return Err(Skip(format!("{what} spec.{k} is not supported")));
        }
    }
    Ok(())
}

/// What a bound policy matches: the policy's `matchConstraints` and, when
/// given, the binding's `matchResources` (both must match).
fn bound_matches(pspec: &Mapping, bspec: &Mapping) -> R<FilterSet> {
    let mc = get(pspec, "matchConstraints")
        .and_then(Value::as_mapping)
        .ok_or_else(|| Skip("no matchConstraints".into()))?;
    let Constraints { filter, .. } = match_constraints(mc)?;
    let mut matches = FilterSet {
        all: true,
        filters: vec![filter],
    };
    if let Some(mr) = get(bspec, "matchResources").and_then(Value::as_mapping) {
        // The binding narrows what the policy matches: both must match.
        // Its resourceRules may be omitted (then the policy's apply).
        let mut narrowed = mr.clone();
        if !narrowed.contains_key("resourceRules") {
            narrowed.insert(
                "resourceRules".into(),
                mc.get("resourceRules").cloned().unwrap_or(Value::Null),
            );
        }
        let Constraints { filter, .. } = match_constraints(&narrowed)?;
        matches.filters.push(filter);
    }
    Ok(matches)
}

fn select_params<'a>(
    pr: &Value,
    api_version: &str,
    kind: &str,
    params: &'a [ParamObject],
) -> R<Vec<&'a ParamObject>> {
    let name = pr.get("name").and_then(Value::as_str);
    let ns = pr.get("namespace").and_then(Value::as_str);
    let selector = match pr.get("selector") {
        Some(s) => Some(LabelSelector::parse(s).map_err(Skip)?),
        None => None,
    };
    if name.is_none() && selector.is_none() {
        return Err(Skip("paramRef has neither name nor selector".into()));
    }
    if ns.is_none() {
        // Without a namespace, a namespaced param is looked up in the
        // namespace of the object being admitted: not supported from files.
        let namespaced = params
            .iter()
            .any(|p| p.kind == kind && p.api_version == api_version && p.namespace.is_some());
        if namespaced {
            return Err(Skip(
                "paramRef without namespace (per-request namespace lookup) is not supported".into(),
            ));
        }
    }
    Ok(params
        .iter()
        .filter(|p| p.kind == kind && p.api_version == api_version)
        .filter(|p| p.namespace.as_deref() == ns)
        .filter(|p| name.is_none_or(|n| p.name == n))
        .filter(|p| selector.as_ref().is_none_or(|s| s.matches(&p.labels)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(vars: &[(&str, &str)], exprs: &[&str]) -> CelRule {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let v: Vec<(String, Option<String>, Option<String>)> = exprs
            .iter()
            .map(|e| (e.to_string(), Some(format!("msg {e}")), None))
            .collect();
        CelRule::compile(&[], &vars, &v).unwrap()
    }

    #[test]
    fn per_container_verdicts() {
        let r = rule(
            &[(
                "all",
                "object.spec.containers + object.spec.?initContainers.orValue([])",
            )],
            &["variables.all.all(c, c.image.startsWith('ok/'))"],
        );
        assert_eq!(r.governs, [true, true, false]);
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "ok/a"}, {"name": "b", "image": "bad/b"}],
            "initContainers": [{"name": "i", "image": "ok/i"}]}});
        let ctx = |ty, n: &'static str| EvalContext::new(ty).with_pod(Some(&pod), Some(n));
        assert_eq!(
            judge(&r, "ok/a", &ctx(ContainerType::Container, "a")),
            Judgement::Pass
        );
        assert!(matches!(
            judge(&r, "bad/b", &ctx(ContainerType::Container, "b")),
            Judgement::Fail(Some(_))
        ));
        assert_eq!(
            judge(&r, "ok/i", &ctx(ContainerType::Init, "i")),
            Judgement::Pass
        );
        assert_eq!(
            judge(&r, "x", &EvalContext::new(ContainerType::Ephemeral)),
            Judgement::NotApplicable
        );
        // The synthetic Pod is the same as JSON and as CEL.
        let c = EvalContext::new(ContainerType::Init).with_namespace(Some("n"));
        assert_eq!(
            json_to_cel(&synthetic_pod("i", &c)),
            synthetic_pod_cel("i", &c)
        );
        // Without the Pod: the reduced synthetic Pod.
        assert!(
            matches!(judge(&r, "bad/x", &EvalContext::new(ContainerType::Init)), Judgement::Fail(Some(m)) if m.starts_with("msg"))
        );
        // A rule about the combination: everyone is denied.
        let size = rule(&[], &["size(object.spec.containers) <= 1"]);
        assert!(
            matches!(judge(&size, "ok/a", &ctx(ContainerType::Container, "a")), Judgement::Fail(Some(m)) if m.contains("as a whole"))
        );
        // exists(): the Pod passes, so every container does.
        let ex = rule(
            &[],
            &["object.spec.containers.exists(c, c.image.startsWith('ok/'))"],
        );
        assert_eq!(
            judge(&ex, "bad/b", &ctx(ContainerType::Container, "b")),
            Judgement::Pass
        );
        // failurePolicy Ignore: an error does not decide.
        let mut ign = rule(&[], &["object.spec.containers.all(c, c.nope == 1)"]);
        let whole = ctx(ContainerType::Container, "a");
        assert!(matches!(
            judge(&ign, "ok/a", &whole),
            Judgement::Fail(Some(_))
        ));
        ign.ignore_errors = true;
        assert_eq!(judge(&ign, "ok/a", &whole), Judgement::NotApplicable);
        // A field the agent does not have: the rule does not decide.
        let ipp = rule(
            &[],
            &["object.spec.containers.all(c, c.imagePullPolicy == 'Always')"],
        );
        assert_eq!(
            judge(&ipp, "x", &EvalContext::new(ContainerType::Container)),
            Judgement::NotApplicable
        );
    }

    #[test]
    fn label_selectors() {
        let sel = LabelSelector::parse(
            &serde_yaml::from_str(
                "{matchLabels: {a: b}, matchExpressions: [{key: c, operator: NotIn, values: [x]}]}",
            )
            .unwrap(),
        )
        .unwrap();
        let l = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(sel.matches(&l(&[("a", "b")])));
        assert!(sel.matches(&l(&[("a", "b"), ("c", "y")])));
        assert!(!sel.matches(&l(&[("a", "b"), ("c", "x")])));
        assert!(!sel.matches(&l(&[])));
    }
}
