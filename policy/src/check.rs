//! The logic of `imagewarden check`: one record per image, serialised by
//! the CLI as one JSON object per line.
use serde::Serialize;

use crate::eval::PolicySet;
use crate::manifest::WorkloadImage;
use crate::model::{ContainerType, EvalContext, Verdict};
use crate::reference::{parse_normalized_named, Reference};

/// One line of `check` output. `null` where unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRecord {
    pub image: String,
    pub valid: bool,
    /// `ParseNormalizedNamed(image).String()`: tag and digest kept.
    pub normalized: Option<String>,
    pub registry: Option<String>,
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub allowed: bool,
    pub reason: String,
    /// `Enforce` or `Audit` of the deciding rule; null when no rule applies.
    pub action: Option<String>,
    pub rule: Option<String>,
    pub policy: Option<String>,
    pub container: Option<String>,
    pub container_type: Option<ContainerType>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// distribution's `String()` of a normalised named reference.
pub fn normalized_string(r: &Reference) -> String {
    let mut s = format!("{}/{}", r.domain, r.path);
    if let Some(t) = &r.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &r.digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

fn record(image: &str, set: &PolicySet, ctx: &EvalContext<'_>) -> CheckRecord {
    let parsed = parse_normalized_named(image);
    let verdict: Verdict = match &parsed {
        Ok(r) => set.evaluate_parsed(image, r, ctx),
        Err(_) => set.evaluate(image, ctx),
    };
    let r = parsed.as_ref().ok();
    let action = if verdict.rule.is_some() || r.is_none() {
        Some(verdict.action.as_str().to_string())
    } else {
        None
    };
    CheckRecord {
        image: image.to_string(),
        valid: r.is_some(),
        normalized: r.map(normalized_string),
        registry: r.map(|r| r.domain.clone()),
        repository: r.map(|r| r.path.clone()),
        tag: r.and_then(|r| r.tag.clone()),
        digest: r.and_then(|r| r.digest.clone()),
        allowed: verdict.allowed,
        reason: verdict.reason,
        action,
        rule: verdict.rule,
        policy: verdict.policy,
        container: None,
        container_type: Some(ctx.container_type),
        kind: None,
        name: None,
        namespace: ctx.namespace.map(str::to_string),
    }
}

/// Checks bare image references (as `check IMAGE...` does). They are
/// evaluated as the images of a Pod.
pub fn check_images<S: AsRef<str>>(
    set: &PolicySet,
    images: &[S],
    namespace: Option<&str>,
    container_type: ContainerType,
) -> Vec<CheckRecord> {
    let ctx = EvalContext::new(container_type).with_namespace(namespace);
    images
        .iter()
        .map(|i| record(i.as_ref(), set, &ctx))
        .collect()
}

/// Checks the images of workloads extracted from a manifest. The workload's
/// own namespace wins; `default_namespace` applies to those without one.
pub fn check_workloads(
    set: &PolicySet,
    workloads: &[WorkloadImage],
    default_namespace: Option<&str>,
) -> Vec<CheckRecord> {
    workloads
        .iter()
        .map(|w| {
            let ns = w.namespace.as_deref().or(default_namespace);
            let ctx = EvalContext::new(w.container_type)
                .with_namespace(ns)
                .with_kind(&w.kind)
                .with_labels(&w.pod_labels)
                .with_pod(w.pod.as_deref(), w.container.as_deref());
            let mut rec = record(&w.image, set, &ctx);
            rec.container = w.container.clone();
            rec.kind = Some(w.kind.clone());
            rec.name = w.name.clone();
            rec
        })
        .collect()
}
