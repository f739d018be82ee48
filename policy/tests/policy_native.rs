//! Native ImagePolicy: structural matching, look-alike attacks, globs,
//! digests, exemptions, actions, coverage, and the JSON schema.
use std::collections::BTreeMap;
use std::path::Path;

use imagewarden_policy::{
    load_policy_str, Action, ContainerType, EvalContext, PolicySet, VerdictKind,
};
use serde_json::Value;

const D1: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
const D2: &str = "sha256:dead07b4d8ed7e29e98de0f4504d87e8880d4347859d839686a31da35a3b532f";

fn policy(rules: &str) -> PolicySet {
    let text = format!(
        "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: p\nspec:\n  rules:\n{rules}"
    );
    load_policy_str(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn allowed(set: &PolicySet, image: &str) -> bool {
    set.evaluate(image, &EvalContext::default()).allowed
}

fn ecr() -> PolicySet {
    policy("  - name: ecr\n    allow:\n    - registry: public.ecr.aws\n")
}

/// The typed kind is what callers match on; the reason text keeps its
/// stable head (`<kind>: ...`) for people and scripts.
#[test]
fn verdict_kind_agrees_with_allowed_and_the_reason_head() {
    let set = ecr();
    let none =
        policy("  - name: r\n    match: {namespaces: [prod]}\n    allow: [{registry: ghcr.io}]\n");
    for (set, image, kind) in [
        (&set, "public.ecr.aws/nginx/nginx:1", VerdictKind::Allowed),
        (&set, "docker.io/library/nginx", VerdictKind::UntrustedImage),
        (&set, "public.ecr.aws/Nginx", VerdictKind::InvalidReference),
        (&none, "nginx", VerdictKind::Allowed),
    ] {
        let v = set.evaluate(image, &EvalContext::default().with_namespace(Some("dev")));
        assert_eq!(v.kind, kind, "{image}: {}", v.reason);
        assert_eq!(v.allowed, kind == VerdictKind::Allowed, "{image}");
        assert!(
            v.reason.starts_with(&format!("{}: ", kind.as_str())),
            "{}",
            v.reason
        );
    }
}

#[test]
fn registry_is_exact_and_structural() {
    let set = ecr();
    for ok in [
        "public.ecr.aws/nginx/nginx:latest",
        "public.ecr.aws/x",
        "PUBLIC.ECR.AWS/nginx/nginx",
        "public.ecr.aws/a/b/c",
    ] {
        assert!(allowed(&set, ok), "{ok}");
    }
    for bad in [
        "public.ecr.aws.evil.com/x",
        "evil.com/public.ecr.aws/x",
        "public.ecr.aws:443/x",
        "public.ecr.aws",
        "nginx",
        "docker.io/library/nginx",
        "public-ecr.aws/x",
        "xpublic.ecr.aws/x",
    ] {
        let v = set.evaluate(bad, &EvalContext::default());
        assert!(!v.allowed, "{bad} must not pass");
        assert!(v.reason.starts_with("untrusted-image: "), "{}", v.reason);
        assert_eq!(v.kind, VerdictKind::UntrustedImage);
        assert_eq!(v.rule.as_deref(), Some("ecr"));
        assert_eq!(v.policy.as_deref(), Some("p"));
        assert_eq!(v.action, Action::Enforce);
    }
}

#[test]
fn invalid_references_always_denied_even_where_kyverno_glob_matches() {
    let native = ecr();
    let seed = load_policy_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/policies/restrict-registries.yaml"),
        )
        .unwrap(),
        "seed.yaml",
    )
    .unwrap();
    for bad in [
        "public.ecr.aws/../x",
        "public.ecr.aws/Nginx",
        "public.ecr.aws/x:",
        "public.ecr.aws/ x",
        "",
    ] {
        // Kyverno's pattern "public.ecr.aws/*" accepts the string...
        if !bad.is_empty() {
            assert!(
                imagewarden_policy::wildcard::kyverno_match("public.ecr.aws/*", bad),
                "{bad}"
            );
        }
        // ...imagewarden does not, with either front end.
        for set in [&native, &seed] {
            let v = set.evaluate(bad, &EvalContext::default());
            assert!(!v.allowed, "{bad:?}");
            assert!(v.reason.starts_with("invalid-reference: "), "{}", v.reason);
            assert_eq!(v.kind, VerdictKind::InvalidReference);
            assert_eq!(v.action, Action::Enforce);
        }
    }
    // Invalid references are denied even when no rule governs them.
    let init = EvalContext::new(ContainerType::Init);
    let v = seed.evaluate("public.ecr.aws/../x", &init);
    assert!(!v.allowed && v.reason.starts_with("invalid-reference: "));
}

#[test]
fn docker_hub_normalisation() {
    let set = policy("  - name: hub\n    allow:\n    - registry: index.docker.io\n      repositories: [library/*]\n");
    assert!(allowed(&set, "nginx"));
    assert!(allowed(&set, "docker.io/nginx:1.27"));
    assert!(allowed(&set, "index.docker.io/library/busybox"));
    assert!(!allowed(&set, "bitnami/nginx"));
    assert!(!allowed(&set, "library/nginx/evil"));
}

#[test]
fn star_within_segment_double_star_across() {
    let set = policy(
        "  - name: r\n    allow:\n    - registry: registry.example.com\n      repositories: [\"team/*\", \"platform/**\", \"app-?\"]\n",
    );
    assert!(allowed(&set, "registry.example.com/team/api:1"));
    assert!(!allowed(&set, "registry.example.com/team/sub/api"));
    assert!(!allowed(&set, "registry.example.com/team"));
    assert!(allowed(&set, "registry.example.com/platform/a/b/c"));
    assert!(allowed(&set, "registry.example.com/platform/a"));
    assert!(!allowed(&set, "registry.example.com/platformx/a"));
    assert!(allowed(&set, "registry.example.com/app-1"));
    assert!(!allowed(&set, "registry.example.com/app-12"));
    assert!(!allowed(&set, "registry.example.com/other/team/api"));
}

#[test]
fn digests() {
    let set = policy(&format!(
        "  - name: pinned\n    allow:\n    - registry: public.ecr.aws\n      requireDigest: true\n    - registry: ghcr.io\n      digests: [\"{D1}\"]\n"
    ));
    assert!(!allowed(&set, "public.ecr.aws/nginx/nginx:latest"));
    assert!(allowed(&set, &format!("public.ecr.aws/nginx/nginx@{D1}")));
    assert!(allowed(&set, &format!("public.ecr.aws/nginx/nginx:1@{D2}")));
    assert!(allowed(&set, &format!("ghcr.io/x/y@{D1}")));
    assert!(!allowed(&set, &format!("ghcr.io/x/y@{D2}")));
    assert!(!allowed(&set, "ghcr.io/x/y:latest"));
}

#[test]
fn deny_entries_and_allow_together() {
    let set = policy(
        "  - name: r\n    allow:\n    - registry: registry.k8s.io\n    - registry: k8s.gcr.io\n    deny:\n    - registry: k8s.gcr.io\n",
    );
    assert!(allowed(&set, "registry.k8s.io/pause:3.9"));
    assert!(!allowed(&set, "k8s.gcr.io/pause:3.9"));
    let only_deny = policy("  - name: r\n    deny:\n    - registry: k8s.gcr.io\n");
    assert!(allowed(&only_deny, "nginx"));
    assert!(!allowed(&only_deny, "K8S.GCR.IO/pause"));
}

#[test]
fn exemptions_by_namespace_and_labels() {
    let set = policy(
        "  - name: r\n    allow:\n    - registry: public.ecr.aws\n    exemptions:\n    - namespaces: [kube-system]\n    - podLabels: {imagewarden.dev/exempt: \"true\", team: infra}\n",
    );
    let ks = EvalContext::default().with_namespace(Some("kube-system"));
    assert!(set.evaluate("nginx", &ks).allowed);
    assert!(set
        .evaluate("nginx", &ks)
        .reason
        .contains("no rule applies"));
    let other = EvalContext::default().with_namespace(Some("default"));
    assert!(!set.evaluate("nginx", &other).allowed);
    // Unknown namespace is never exempt.
    assert!(!set.evaluate("nginx", &EvalContext::default()).allowed);
    let mut labels = BTreeMap::new();
    labels.insert("imagewarden.dev/exempt".to_string(), "true".to_string());
    let partial = EvalContext::default().with_labels(&labels);
    assert!(
        !set.evaluate("nginx", &partial).allowed,
        "all labels must match"
    );
    labels.insert("team".to_string(), "infra".to_string());
    let full = EvalContext::default().with_labels(&labels);
    assert!(set.evaluate("nginx", &full).allowed);
}

#[test]
fn match_scope_and_actions() {
    let set = policy(
        "  - name: prod\n    match:\n      namespaces: [prod]\n      kinds: [Pod, Deployment]\n    allow:\n    - registry: public.ecr.aws\n  - name: audit-all\n    action: Audit\n    allow:\n    - registry: public.ecr.aws\n    - registry: ghcr.io\n",
    );
    let prod = EvalContext::default().with_namespace(Some("prod"));
    let dev = EvalContext::default().with_namespace(Some("dev"));
    let v = set.evaluate("ghcr.io/a/b", &prod);
    assert!(!v.allowed);
    assert_eq!(
        (v.action, v.rule.as_deref()),
        (Action::Enforce, Some("prod"))
    );
    let v = set.evaluate("ghcr.io/a/b", &dev);
    assert!(v.allowed, "{}", v.reason);
    assert!(v.reason.starts_with("allowed: "));
    assert_eq!(v.kind, VerdictKind::Allowed);
    let v = set.evaluate("docker.io/a/b", &dev);
    assert!(!v.allowed);
    assert_eq!(
        (v.action, v.rule.as_deref()),
        (Action::Audit, Some("audit-all"))
    );
    // Enforce wins over Audit when both fail.
    let v = set.evaluate("docker.io/a/b", &prod);
    assert_eq!(v.action, Action::Enforce);
    // Kind scope: a CronJob in prod is only governed by audit-all.
    let cj = EvalContext::default()
        .with_namespace(Some("prod"))
        .with_kind("CronJob");
    assert!(set.evaluate("ghcr.io/a/b", &cj).allowed);
    // Unknown namespace: a namespace-scoped rule still applies (fail safe).
    assert!(!set.evaluate("ghcr.io/a/b", &EvalContext::default()).allowed);
    // Policy-level default action.
    let audit = load_policy_str(
        "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: a}\nspec:\n  action: Audit\n  rules:\n  - name: r\n    allow: [{registry: ghcr.io}]\n",
        "a.yaml",
    )
    .unwrap();
    let v = audit.evaluate("nginx", &EvalContext::default());
    assert_eq!((v.allowed, v.action), (false, Action::Audit));
}

#[test]
fn all_container_types_covered_by_default() {
    let set = ecr();
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
    for ct in ContainerType::ALL {
        assert!(
            !set.evaluate("nginx", &EvalContext::new(ct)).allowed,
            "{ct}"
        );
    }
    let only = policy("  - name: r\n    match:\n      containerTypes: [container]\n    allow: [{registry: ghcr.io}]\n");
    assert!(
        !only
            .evaluate("nginx", &EvalContext::new(ContainerType::Container))
            .allowed
    );
    assert!(
        only.evaluate("nginx", &EvalContext::new(ContainerType::Init))
            .allowed
    );
    let w = only
        .warnings()
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        w.contains("initContainers") && w.contains("ephemeralContainers"),
        "{w}"
    );
}

#[test]
fn no_rule_applies_message() {
    let set =
        policy("  - name: r\n    match: {namespaces: [prod]}\n    allow: [{registry: ghcr.io}]\n");
    let v = set.evaluate("nginx", &EvalContext::default().with_namespace(Some("dev")));
    assert!(v.allowed);
    assert!(
        v.reason.starts_with("allowed: no rule applies"),
        "{}",
        v.reason
    );
    assert_eq!(v.rule, None);
}

#[test]
fn semantic_errors_are_rejected() {
    for (rules, needle) in [
        ("  - name: r\n    allow: [{registry: \"public.ecr.aws/*\"}]\n", "registry"),
        ("  - name: r\n    allow: [{registry: \"*.ecr.aws\"}]\n", "no globs"),
        ("  - name: r\n    allow: [{registry: ghcr.io, repositories: [Team/app]}]\n", "could never match"),
        ("  - name: r\n    allow: [{registry: ghcr.io, digests: [\"sha256:abc\"]}]\n", "digest"),
        ("  - name: r\n", "allow"),
        ("  - name: r\n    match: {kinds: [Pods]}\n    allow: [{registry: ghcr.io}]\n", "unknown kind"),
        ("  - name: r\n    exemptions: [{}]\n    allow: [{registry: ghcr.io}]\n", "exempt everything"),
        ("  - name: r\n    allow: [{registry: ghcr.io}]\n  - name: r\n    allow: [{registry: ghcr.io}]\n", "duplicate"),
    ] {
        let text = format!("apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: p\nspec:\n  rules:\n{rules}");
        let e = load_policy_str(&text, "bad.yaml").expect_err(rules).to_string();
        assert!(e.contains(needle), "{e}");
        assert!(e.starts_with("bad.yaml:"), "{e}");
        assert!(e.contains("rule r"), "{e}");
    }
}

// ---- JSON schema ----------------------------------------------------------

/// A small JSON-schema validator for the keywords the schema uses.
fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let s = schema.as_object().unwrap();
    for key in s.keys() {
        assert!(
            [
                "$schema",
                "$id",
                "title",
                "description",
                "type",
                "required",
                "properties",
                "additionalProperties",
                "items",
                "enum",
                "minItems",
                "minLength",
                "minProperties",
                "pattern"
            ]
            .contains(&key.as_str()),
            "schema keyword {key} not understood by this test"
        );
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            _ => panic!("type {t}"),
        };
        if !ok {
            errs.push(format!("{path}: expected {t}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{path}: {v} not in enum"));
        }
    }
    if let (Some(p), Some(x)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
        if !regex::Regex::new(p).unwrap().is_match(x) {
            errs.push(format!("{path}: {x:?} does not match {p}"));
        }
    }
    if let (Some(n), Some(x)) = (s.get("minLength").and_then(Value::as_u64), v.as_str()) {
        if (x.len() as u64) < n {
            errs.push(format!("{path}: too short"));
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(n) = s.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < n {
                errs.push(format!("{path}: fewer than {n} items"));
            }
        }
        if let Some(items) = s.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(items, x, &format!("{path}[{i}]"), errs);
            }
        }
    }
    if let Some(o) = v.as_object() {
        if let Some(n) = s.get("minProperties").and_then(Value::as_u64) {
            if (o.len() as u64) < n {
                errs.push(format!("{path}: fewer than {n} properties"));
            }
        }
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !o.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{path}: missing {r}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, x, &format!("{path}.{k}"), errs),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => errs.push(format!("{path}: unknown field {k}")),
                    Some(ap @ Value::Object(_)) => validate(ap, x, &format!("{path}.{k}"), errs),
                    _ => {}
                },
            }
        }
    }
}

fn schema() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/imagepolicy.schema.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    text.split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

const FULL_EXAMPLE: &str = r#"
apiVersion: imagewarden.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: full
spec:
  action: Audit
  rules:
  - name: prod
    action: Enforce
    message: only pinned images from our registry
    match:
      kinds: [Pod, Deployment, CronJob]
      namespaces: [prod]
      containerTypes: [container, init, ephemeral]
    exemptions:
    - namespaces: [kube-system]
    - podLabels: {imagewarden.dev/exempt: "true"}
    allow:
    - registry: registry.example.com:5000
      repositories: ["team/*", "platform/**"]
      requireDigest: true
    - registry: ghcr.io
      digests: ["sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"]
    execDrift:
      fileless: deny
      writableLayer: report
    deny:
    - registry: k8s.gcr.io
"#;

#[test]
fn schema_accepts_the_example_policies_and_rejects_typos() {
    let schema = schema();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    let mut checked = 0;
    let mut texts: Vec<(String, String)> = vec![("FULL_EXAMPLE".into(), FULL_EXAMPLE.into())];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        texts.push((
            p.display().to_string(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    for (name, text) in &texts {
        for doc in yaml_docs(text) {
            if doc["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("imagewarden.dev/"))
            {
                let mut errs = Vec::new();
                validate(&schema, &doc, "", &mut errs);
                assert!(errs.is_empty(), "{name}: {errs:?}");
                // And imagewarden loads it.
                load_policy_str(text, name).unwrap();
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "expected the deploy example and FULL_EXAMPLE");

    for (from, to) in [
        ("requireDigest", "requireDigests"),
        ("registry: ghcr.io", "registry: \"ghcr.io/x\""),
        (
            "containerTypes: [container, init, ephemeral]",
            "containerTypes: [containers]",
        ),
        ("action: Enforce", "action: Deny"),
        ("writableLayer: report", "writableLayer: block"),
        ("repositories: [\"team/*\"", "repositories: [\"Team/*\""),
    ] {
        let bad = FULL_EXAMPLE.replacen(from, to, 1);
        assert_ne!(bad, FULL_EXAMPLE);
        let mut errs = Vec::new();
        validate(&schema, &yaml_docs(&bad)[0], "", &mut errs);
        assert!(!errs.is_empty(), "schema accepted {to}");
        assert!(
            load_policy_str(&bad, "bad.yaml").is_err(),
            "loader accepted {to}"
        );
    }
}

#[test]
fn schema_is_crd_compatible_after_stripping_markers() {
    fn walk(v: &Value, path: &str) {
        if let Some(o) = v.as_object() {
            for (k, x) in o {
                assert!(
                    !["$ref", "oneOf", "anyOf", "allOf", "not"].contains(&k.as_str()),
                    "{path}.{k}"
                );
                if k == "additionalProperties" {
                    assert!(
                        x == &Value::Bool(false) || !o.contains_key("properties"),
                        "{path}: additionalProperties schema beside properties"
                    );
                }
                walk(x, &format!("{path}.{k}"));
            }
        }
    }
    walk(&schema(), "");
}

/// `execDrift` (issue 17): which execs of programs that are not the
/// image's a rule refuses, in the containers it covers.
#[test]
fn exec_drift_follows_the_rules_scope_and_action() {
    use imagewarden_policy::DriftDecision;
    let set = policy(
        "  - name: ecr\n    allow:\n    - registry: public.ecr.aws\n    execDrift:\n      fileless: deny\n      writableLayer: report\n    exemptions:\n    - namespaces: [dev]\n\
         \x20 - name: prod-drift\n    action: Audit\n    match:\n      namespaces: [prod]\n      containerTypes: [container]\n    execDrift:\n      writableLayer: deny\n",
    );
    assert!(set.has_drift_rules());
    let ctx = |ns: &'static str, ct: ContainerType| EvalContext::new(ct).with_namespace(Some(ns));
    // Everywhere but dev: fileless denied (Enforce), writable layer reported.
    assert_eq!(
        set.exec_drift(&ctx("default", ContainerType::Container)),
        DriftDecision {
            fileless: Some(Action::Enforce),
            writable_layer: None,
            fileless_rule: Some("p/ecr".into()),
            writable_layer_rule: None,
        }
    );
    // prod adds an Audit rule for the writable layer, for containers only.
    let prod = set.exec_drift(&ctx("prod", ContainerType::Container));
    assert_eq!(prod.fileless, Some(Action::Enforce));
    assert_eq!(prod.writable_layer, Some(Action::Audit));
    assert_eq!(prod.writable_layer_rule.as_deref(), Some("p/prod-drift"));
    let init = set.exec_drift(&ctx("prod", ContainerType::Init));
    assert_eq!(init.writable_layer, None);
    // dev is exempt from the first rule.
    assert_eq!(
        set.exec_drift(&ctx("dev", ContainerType::Container)),
        DriftDecision::default()
    );
    // A drift-only rule judges no image.
    let v = set.evaluate("public.ecr.aws/x", &ctx("prod", ContainerType::Container));
    assert!(v.allowed && v.rule.as_deref() == Some("ecr"), "{v:?}");
    // Enforce wins over Audit when both cover a container.
    let mut d = DriftDecision::default();
    d.merge(&DriftDecision::deny_all(Action::Audit, "a"));
    d.merge(&DriftDecision::deny_all(Action::Enforce, "flag"));
    d.merge(&DriftDecision::deny_all(Action::Audit, "b"));
    assert_eq!(d, DriftDecision::deny_all(Action::Enforce, "flag"));
    assert!(!ecr().has_drift_rules());
}

#[test]
fn exec_drift_mistakes_are_errors_with_their_line() {
    for (rules, needle) in [
        (
            "  - name: r\n    allow:\n    - registry: public.ecr.aws\n    execDrift: {}\n",
            "execDrift",
        ),
        (
            "  - name: r\n    allow:\n    - registry: public.ecr.aws\n    execDrift:\n      fileless: block\n",
            "block",
        ),
        (
            "  - name: r\n    allow:\n    - registry: public.ecr.aws\n    execDrift:\n      upperLayer: deny\n",
            "upperLayer",
        ),
    ] {
        let text = format!(
            "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: p\nspec:\n  rules:\n{rules}"
        );
        let e = load_policy_str(&text, "t.yaml").expect_err(rules).to_string();
        assert!(e.contains(needle), "{e}");
        assert!(e.starts_with("t.yaml:"), "the file and line: {e}");
    }
}
