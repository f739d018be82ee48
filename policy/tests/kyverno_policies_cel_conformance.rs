//! kyverno/policies' image policies in every form (ClusterPolicy with
//! patterns, ClusterPolicy with `validate.cel`, ValidatingPolicy), driven by
//! their own upstream tests (tests/data/kyverno_policies_cel, vendored from
//! shared/conformance with SOURCE.txt):
//!
//! - `kyverno/kyverno-test.yaml` (`kyverno test`): each result names a
//!   policy, optionally a rule, a kind, resources and `pass`/`fail`/`skip`;
//!   the resources come from the files it lists. A resource fails when some
//!   image of it fails the policy (the rule, when named), passes when the
//!   policy's rules apply and all allow it, is skipped when none applies.
//! - `chainsaw/chainsaw-test.yaml`: every `apply` of a resource file is
//!   expected to be admitted, or rejected when it carries
//!   `expect: check: ($error != null): true`; chainsaw checks that per
//!   resource. A workload is rejected when some rule of the policy denies
//!   one of its images; each chainsaw test runs the policy in
//!   Enforce/Deny (patched or as written; asserted below).
//!
//! Nothing is copied by hand but the list of rules imagewarden refuses,
//! with why; their cases are counted, not evaluated. `script` steps (kubectl
//! debug) need a cluster and are counted.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use imagewarden_policy::manifest::{extract_images_file, WorkloadImage};
use imagewarden_policy::{load_policy_file, EvalContext, PolicySet};
use serde_yaml::Value;

/// (policy directory, rule) refused, and the construct that makes it so.
/// Only rules on Ingress objects remain: imagewarden judges what runs
/// (Pods and their controllers), and these rules check Ingress annotations.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "other/check-ingress-nginx-controller-version-and-annotation-policy",
        "validate-auth-tls-verify-client",
        "JMESPath on Ingress annotations (not a workload)",
    ),
    (
        "other/check-ingress-nginx-controller-version-and-annotation-policy",
        "validate-ingress-annotations",
        "pattern on metadata (Ingress annotations; not a workload)",
    ),
];

/// `kyverno test` evaluates resources as written: no API server applies
/// its defaults (the manifest reader defaults `imagePullPolicy`, as
/// admission sees Pods, which is what chainsaw tests). Removes the defaulted
/// `imagePullPolicy` of containers that do not write one.
fn as_written(images: &mut [WorkloadImage], file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    for w in images.iter_mut() {
        let Some(pod) = &w.pod else { continue };
        let Some(doc) = docs.iter().find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(w.kind.as_str())
                && d.get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    == w.name.as_deref()
        }) else {
            continue;
        };
        let spec = doc.get("spec");
        let podspec = match w.kind.as_str() {
            "Pod" => spec,
            "CronJob" => spec
                .and_then(|s| s.get("jobTemplate"))
                .and_then(|j| j.get("spec"))
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec")),
            _ => spec
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec")),
        };
        let mut pod = (**pod).clone();
        for field in ["containers", "initContainers", "ephemeralContainers"] {
            let written = podspec
                .and_then(|p| p.get(field))
                .and_then(Value::as_sequence);
            let Some(list) = pod
                .pointer_mut(&format!("/spec/{field}"))
                .and_then(|l| l.as_array_mut())
            else {
                continue;
            };
            for (i, c) in list.iter_mut().enumerate() {
                let has = written
                    .and_then(|l| l.get(i))
                    .is_some_and(|c| c.get("imagePullPolicy").is_some());
                if !has {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("imagePullPolicy");
                    }
                }
            }
        }
        w.pod = Some(std::sync::Arc::new(pod));
    }
}

/// Upstream expectations that contradict Kyverno's own operator code,
/// kept out of the agreement count but required to stay divergent (so the
/// list shrinks when upstream or imagewarden changes): (policy directory,
/// chainsaw file, resource, why).
const DIVERGENT: &[(&str, &str, &str, &str)] = &[(
    "other/require-imagepullsecrets",
    "pod-bad.yaml",
    "badpod03",
    "its images are from quay.io and ghcr.io, so the precondition {{ images.containers.*.registry }} AnyNotIn \
     [ghcr.io, quay.io] is false (Kyverno's isAnyNotIn: some key matching no value) and Kyverno skips the rule; \
     the chainsaw file expects a rejection",
)];

/// Kinds each ClusterPolicy/Policy rule matches (`match.resources`,
/// `match.any/all[].resources`), by rule name.
fn rule_kinds(policy_file: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let text = std::fs::read_to_string(policy_file).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
        let rules = doc
            .get("spec")
            .and_then(|s| s.get("rules"))
            .and_then(Value::as_sequence);
        for r in rules.into_iter().flatten() {
            let Some(name) = r.get("name").and_then(Value::as_str) else {
                continue;
            };
            let m = r.get("match");
            let mut rds: Vec<&Value> = m.and_then(|m| m.get("resources")).into_iter().collect();
            for k in ["any", "all"] {
                for f in m
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    rds.extend(f.get("resources"));
                }
            }
            let ks: Vec<String> = rds
                .iter()
                .flat_map(|rd| strs(rd.get("kinds")))
                .map(|k| k.rsplit('/').next().unwrap_or(&k).to_string())
                .collect();
            out.insert(name.to_string(), ks);
        }
    }
    out
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kyverno_policies_cel")
}

fn policy_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for cat in std::fs::read_dir(data()).unwrap() {
        let cat = cat.unwrap().path();
        if !cat.is_dir() {
            continue;
        }
        for d in std::fs::read_dir(&cat).unwrap() {
            let d = d.unwrap().path();
            let name = d.file_name().unwrap().to_str().unwrap().to_string();
            if d.join(format!("{name}.yaml")).exists() {
                out.push(d);
            }
        }
    }
    out.sort();
    out
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Results of the policy's rules on every image of a workload: (rule, allowed).
fn results(set: &PolicySet, policy: &str, images: &[&WorkloadImage]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for w in images {
        let ctx = EvalContext::new(w.container_type)
            .with_namespace(w.namespace.as_deref())
            .with_kind(&w.kind)
            .with_labels(&w.pod_labels)
            .with_pod(w.pod.as_deref(), w.container.as_deref());
        for r in set.rule_results(&w.image, &ctx) {
            if r.policy == policy {
                out.push((r.rule, r.allowed));
            }
        }
        if !set.evaluate(&w.image, &ctx).allowed && set.rule_results(&w.image, &ctx).is_empty() {
            // Invalid reference: denied by imagewarden whatever the policy.
            out.push(("(invalid reference)".into(), false));
        }
    }
    out
}

/// Workloads of a manifest, grouped by (kind, name, document line).
fn workloads(images: &[WorkloadImage]) -> BTreeMap<(String, String, usize), Vec<&WorkloadImage>> {
    let mut m: BTreeMap<(String, String, usize), Vec<&WorkloadImage>> = BTreeMap::new();
    for w in images {
        m.entry((w.kind.clone(), w.name.clone().unwrap_or_default(), w.line))
            .or_default()
            .push(w);
    }
    m
}

#[derive(Default)]
struct Tally {
    kyverno_checked: usize,
    chainsaw_checked: usize,
    refused: usize,
    scripts: usize,
    missing: Vec<String>,
    not_workloads: usize,
}

const WORKLOAD_KINDS: [&str; 7] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

#[test]
fn kyverno_policies_cel_upstream_tests() {
    assert!(std::fs::read_to_string(data().join("SOURCE.txt"))
        .unwrap()
        .contains("b9c4317ce02256dc66118e08bb3e9345e7bfce5c"));
    let mut tally = Tally::default();
    let mut mismatches = Vec::new();
    let mut refusals: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut divergent: BTreeSet<(String, String, String)> = BTreeSet::new();
    let dirs = policy_dirs();
    assert!(dirs.len() >= 20, "{} policy directories", dirs.len());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let rel = dir.strip_prefix(data()).unwrap().display().to_string();
        let policy_file = dir.join(format!("{name}.yaml"));
        let set = load_policy_file(&policy_file).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let refused: BTreeSet<String> = set.unsupported().iter().map(|u| u.rule.clone()).collect();
        for u in set.unsupported() {
            refusals.insert((rel.clone(), u.rule.clone(), u.reason.clone()));
        }
        let policy_text = std::fs::read_to_string(&policy_file).unwrap();
        // A refused rule hides a workload's result unless it only matches
        // other kinds (Ingress): imagewarden judges Pods and controllers.
        let kinds = rule_kinds(&policy_file);
        let blocking = refused.iter().any(|r| {
            kinds.get(r).is_none_or(|ks| {
                ks.is_empty()
                    || ks
                        .iter()
                        .any(|k| k == "*" || WORKLOAD_KINDS.contains(&k.as_str()))
            })
        });

        // kyverno test
        let kt_path = dir.join("kyverno/kyverno-test.yaml");
        if kt_path.exists() {
            let kt = yaml(&kt_path);
            let mut images = Vec::new();
            for r in strs(kt.get("resources")) {
                let file = dir.join("kyverno").join(&r);
                let mut got = extract_images_file(&file).unwrap().images;
                as_written(&mut got, &file);
                images.extend(got);
            }
            for res in kt
                .get("results")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let policy = res.get("policy").and_then(Value::as_str).unwrap();
                let kind = res.get("kind").and_then(Value::as_str).unwrap();
                let rule = res.get("rule").and_then(Value::as_str);
                let want = res.get("result").and_then(Value::as_str).unwrap();
                if !WORKLOAD_KINDS.contains(&kind) {
                    // imagewarden judges what runs: Pods and their controllers.
                    tally.not_workloads += strs(res.get("resources")).len();
                    continue;
                }
                for rname in strs(res.get("resources")) {
                    // `name` or `namespace/name`.
                    let (ns, n) = match rname.split_once('/') {
                        Some((ns, n)) => (Some(ns), n),
                        None => (None, rname.as_str()),
                    };
                    let ws: Vec<&WorkloadImage> = images
                        .iter()
                        .filter(|w| w.kind == kind && w.name.as_deref() == Some(n))
                        .filter(|w| ns.is_none() || w.namespace.as_deref() == ns)
                        .collect();
                    assert!(
                        !ws.is_empty(),
                        "{rel}: kyverno-test resource {kind} {rname} not found"
                    );
                    if rule.map_or(blocking, |r| refused.contains(r)) {
                        tally.refused += 1;
                        continue;
                    }
                    let rs: Vec<(String, bool)> = results(&set, policy, &ws)
                        .into_iter()
                        .filter(|(r, _)| {
                            rule.is_none_or(|want| r == want || r == "(invalid reference)")
                        })
                        .collect();
                    let got = if rs.iter().any(|(_, ok)| !ok) {
                        "fail"
                    } else if rs.is_empty() {
                        "skip"
                    } else {
                        "pass"
                    };
                    tally.kyverno_checked += 1;
                    if got != want {
                        mismatches.push(format!(
                            "{rel}: kyverno-test {kind} {rname} rule {rule:?}: want {want}, got {got}"
                        ));
                    }
                }
            }
        }

        // chainsaw
        let ct_path = dir.join("chainsaw/chainsaw-test.yaml");
        if ct_path.exists() {
            let ct_text = std::fs::read_to_string(&ct_path).unwrap();
            let enforcing = ct_text.contains("patch:")
                || policy_text.lines().any(|l| {
                    let l = l.trim();
                    !l.starts_with('#')
                        && (l.starts_with("validationFailureAction: Enforce")
                            || l.starts_with("validationActions: [Deny]")
                            || l == "- Deny")
                });
            assert!(
                enforcing,
                "{rel}: the chainsaw test does not run the policy in Enforce/Deny"
            );
            let ct = yaml(&ct_path);
            for step in ct.pointer_steps() {
                for op in step
                    .get("try")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    if op.get("script").is_some() {
                        tally.scripts += 1;
                        continue;
                    }
                    let Some(apply) = op.get("apply") else {
                        continue;
                    };
                    let file = apply.get("file").and_then(Value::as_str).unwrap();
                    if file.starts_with("../") {
                        continue;
                    }
                    let want_reject = apply
                        .get("expect")
                        .and_then(Value::as_sequence)
                        .is_some_and(|l| {
                            l.iter().any(|e| {
                                e.get("check").and_then(|c| c.get("($error != null)"))
                                    == Some(&Value::Bool(true))
                            })
                        });
                    let path = dir.join("chainsaw").join(file);
                    if !path.exists() {
                        // Not part of the vendored data (ns.yaml: the Namespace).
                        tally.missing.push(format!("{rel}/chainsaw/{file}"));
                        continue;
                    }
                    let manifest = extract_images_file(path).unwrap();
                    for ((kind, wname, _), ws) in workloads(&manifest.images) {
                        if blocking {
                            tally.refused += 1;
                            continue;
                        }
                        let rejected = set
                            .policy_names()
                            .iter()
                            .any(|p| results(&set, p, &ws).iter().any(|(_, ok)| !ok));
                        if rejected != want_reject
                            && DIVERGENT
                                .iter()
                                .any(|(d, f, n, _)| *d == rel && *f == file && *n == wname)
                        {
                            divergent.insert((rel.clone(), file.to_string(), wname.clone()));
                            continue;
                        }
                        tally.chainsaw_checked += 1;
                        if rejected != want_reject {
                            mismatches.push(format!(
                                "{rel}: chainsaw {file} {kind} {wname}: want {}, got {}",
                                if want_reject { "rejected" } else { "admitted" },
                                if rejected { "rejected" } else { "admitted" }
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "kyverno/policies CEL conformance: {} kyverno-test results and {} chainsaw applies checked; {} cases of refused rules; {} chainsaw scripts (need a cluster); {} results on other kinds (Ingress)",
        tally.kyverno_checked, tally.chainsaw_checked, tally.refused, tally.scripts, tally.not_workloads
    );
    eprintln!(
        "chainsaw files not in the upstream data: {:?}",
        tally.missing
    );
    assert!(
        tally.missing.iter().all(|f| f.ends_with("/ns.yaml")),
        "{:?}",
        tally.missing
    );
    for (d, r, why) in &refusals {
        eprintln!("refused: {d} rule {r}: {why}");
    }
    assert!(
        mismatches.is_empty(),
        "{} disagreements:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    let want_divergent: BTreeSet<(String, String, String)> = DIVERGENT
        .iter()
        .map(|(d, f, n, _)| (d.to_string(), f.to_string(), n.to_string()))
        .collect();
    for (d, f, n, why) in DIVERGENT {
        eprintln!("divergent upstream expectation: {d} {f} {n}: {why}");
    }
    assert_eq!(
        divergent, want_divergent,
        "upstream divergences changed; update DIVERGENT"
    );
    let listed: BTreeSet<(String, String)> = REFUSED
        .iter()
        .map(|(d, r, _)| (d.to_string(), r.to_string()))
        .collect();
    let found: BTreeSet<(String, String)> = refusals
        .iter()
        .map(|(d, r, _)| (d.clone(), r.clone()))
        .collect();
    assert_eq!(
        found, listed,
        "refused rules changed; update REFUSED with the construct and why"
    );
    assert!(
        tally.kyverno_checked >= 60 && tally.chainsaw_checked >= 60,
        "too few cases checked"
    );
}

trait Steps {
    fn pointer_steps(&self) -> Vec<&Value>;
}

impl Steps for Value {
    fn pointer_steps(&self) -> Vec<&Value> {
        self.get("spec")
            .and_then(|s| s.get("steps"))
            .and_then(Value::as_sequence)
            .map(|l| l.iter().collect())
            .unwrap_or_default()
    }
}
