#![allow(clippy::useless_format, clippy::bool_comparison)]
//! Kyverno import: the seed policy's coverage warning, autogen, forms the
//! importer understands, and every unsupported construct reported by rule.
use std::path::Path;

use imagewarden_policy::{load_policy_str, Action, ContainerType, EvalContext, PolicySet};

fn seed() -> PolicySet {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/restrict-registries.yaml");
    imagewarden_policy::load_policy_file(p).unwrap()
}

fn cp(rules: &str) -> String {
    format!("apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata:\n  name: cp\nspec:\n  validationFailureAction: Enforce\n  rules:\n{rules}")
}

#[test]
fn seed_policy_checks_only_containers_and_says_so() {
    let set = seed();
    assert!(!set.is_partial());
    let warnings: Vec<String> = set.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.contains("restrict-image-registries") && w.contains("validate-registries"),
        "{w}"
    );
    assert!(
        w.contains("initContainers") && w.contains("ephemeralContainers"),
        "{w}"
    );
    assert!(w.contains("not covered"), "{w}");

    let c = EvalContext::new(ContainerType::Container);
    assert!(
        set.evaluate("public.ecr.aws/nginx/nginx:latest", &c)
            .allowed
    );
    let v = set.evaluate("nginx", &c);
    assert!(!v.allowed);
    assert_eq!(v.action, Action::Enforce);
    assert_eq!(v.rule.as_deref(), Some("validate-registries"));
    assert!(v.reason.contains("Unknown Image registry."), "{}", v.reason);
    // Kyverno's glob: look-alikes pass the seed (raw string, `*` crosses `/`).
    assert!(set.evaluate("public.ecr.aws/evil.com/x", &c).allowed);
    // Init and ephemeral containers are not governed: allowed, and the
    // reason says no rule applies.
    for ct in [ContainerType::Init, ContainerType::Ephemeral] {
        let v = set.evaluate("evil.com/miner", &EvalContext::new(ct));
        assert!(v.allowed);
        assert!(v.reason.contains("no rule applies"), "{}", v.reason);
    }
    // Autogen: Deployments and CronJobs are governed too.
    for kind in [
        "Deployment",
        "CronJob",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "ReplicaSet",
        "ReplicationController",
    ] {
        assert!(!set.evaluate("nginx", &c.with_kind(kind)).allowed, "{kind}");
    }
    assert!(set.evaluate("nginx", &c.with_kind("Service")).allowed);
}

#[test]
fn autogen_can_be_disabled_or_restricted() {
    let base = cp("  - name: r\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"ghcr.io/*\"\n");
    let none = base.replace(
        "  name: cp\n",
        "  name: cp\n  annotations:\n    pod-policies.kyverno.io/autogen-controllers: none\n",
    );
    let set = load_policy_str(&none, "n.yaml").unwrap();
    let c = EvalContext::default();
    assert!(!set.evaluate("nginx", &c).allowed);
    assert!(set.evaluate("nginx", &c.with_kind("Deployment")).allowed);
    assert!(set
        .warnings()
        .iter()
        .any(|w| w.message.contains("autogen is off")));
    let some = base.replace("  name: cp\n", "  name: cp\n  annotations:\n    pod-policies.kyverno.io/autogen-controllers: Deployment,StatefulSet\n");
    let set = load_policy_str(&some, "s.yaml").unwrap();
    assert!(!set.evaluate("nginx", &c.with_kind("Deployment")).allowed);
    assert!(set.evaluate("nginx", &c.with_kind("CronJob")).allowed);
}

#[test]
fn controller_shaped_patterns_and_match_exclude() {
    let text = cp(r#"  - name: deploy
    match:
      any:
      - resources:
          kinds: [apps/v1/Deployment]
          namespaces: ["prod-*"]
    exclude:
      any:
      - resources:
          namespaces: [prod-legacy]
    validate:
      failureAction: Audit
      message: bad
      pattern:
        spec:
          template:
            spec:
              =(initContainers):
              - image: "ghcr.io/*"
              containers:
              - image: "ghcr.io/* | quay.io/*"
  - name: cron
    match:
      resources:
        kinds: [CronJob]
    validate:
      pattern:
        spec:
          jobTemplate:
            spec:
              template:
                spec:
                  containers:
                  - image: "!*:latest"
"#);
    let set = load_policy_str(&text, "c.yaml").unwrap();
    assert!(!set.is_partial(), "{:?}", set.unsupported());
    let d = EvalContext::default()
        .with_kind("Deployment")
        .with_namespace(Some("prod-eu"));
    assert!(set.evaluate("quay.io/a/b", &d).allowed);
    let v = set.evaluate("docker.io/a/b", &d);
    assert_eq!((v.allowed, v.action), (false, Action::Audit));
    assert!(
        set.evaluate(
            "quay.io/a/b",
            &EvalContext {
                container_type: ContainerType::Init,
                ..d
            }
        )
        .allowed
            == false
    );
    assert!(
        set.evaluate("docker.io/a/b", &d.with_namespace(Some("prod-legacy")))
            .allowed
    );
    assert!(
        set.evaluate("docker.io/a/b", &d.with_namespace(Some("dev")))
            .allowed
    );
    assert!(
        set.evaluate("docker.io/a/b", &d.with_kind("Pod")).allowed,
        "no autogen from Deployment rules"
    );
    let cj = EvalContext::default().with_kind("CronJob");
    assert!(!set.evaluate("busybox:latest", &cj).allowed);
    assert!(set.evaluate("busybox:1.36", &cj).allowed);
}

#[test]
fn any_pattern_and_foreach_pattern() {
    let text = cp(r#"  - name: any
    match:
      any:
      - resources:
          kinds: [Pod]
    validate:
      anyPattern:
      - spec:
          containers:
          - image: "ghcr.io/*"
      - spec:
          containers:
          - image: "quay.io/*"
  - name: each
    match:
      any:
      - resources:
          kinds: [Pod]
    validate:
      foreach:
      - list: "request.object.spec.initContainers"
        pattern:
          image: "!*:latest"
"#);
    let set = load_policy_str(&text, "a.yaml").unwrap();
    assert!(!set.is_partial(), "{:?}", set.unsupported());
    let c = EvalContext::default();
    assert!(set.evaluate("ghcr.io/a", &c).allowed);
    assert!(set.evaluate("quay.io/a", &c).allowed);
    assert!(!set.evaluate("docker.io/a", &c).allowed);
    let i = EvalContext::new(ContainerType::Init);
    assert!(!set.evaluate("x:latest", &i).allowed);
    assert!(set.evaluate("x:1", &i).allowed);
    assert!(set
        .warnings()
        .iter()
        .any(|w| w.message.contains("anyPattern is decided image by image")));
}

#[test]
fn deny_with_image_infos() {
    let text = cp(r#"  - name: registries
    match:
      any:
      - resources:
          kinds: [Pod]
    validate:
      deny:
        conditions:
          any:
          - key: "{{ images.containers.*.registry }}"
            operator: AnyNotIn
            value: [ghcr.io, "*.example.com"]
"#);
    let set = load_policy_str(&text, "d.yaml").unwrap();
    assert!(!set.is_partial(), "{:?}", set.unsupported());
    let c = EvalContext::default();
    assert!(set.evaluate("ghcr.io/a", &c).allowed);
    assert!(set.evaluate("r.example.com/a", &c).allowed);
    assert!(!set.evaluate("nginx", &c).allowed, "registry docker.io");
    assert!(
        set.evaluate("nginx", &EvalContext::new(ContainerType::Init))
            .allowed,
        "init not covered"
    );
}

#[test]
fn unsupported_constructs_are_reported_by_rule() {
    let pod = "    match:\n      any:\n      - resources:\n          kinds: [Pod]\n";
    let cases = [
        ("ctx", format!("  - name: ctx\n{pod}    context:\n    - name: x\n      configMap: {{name: a, namespace: b}}\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"a/*\"\n"), "context"),
        ("pre", format!("  - name: pre\n{pod}    preconditions:\n      any:\n      - key: \"{{{{ request.object.metadata.labels.app }}}}\"\n        operator: Equals\n        value: x\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"a/*\"\n"), "preconditions"),
        ("op", format!("  - name: op\n{pod}    validate:\n      deny:\n        conditions:\n          any:\n          - key: \"{{{{ images.containers.*.tag }}}}\"\n            operator: GreaterThan\n            value: \"1\"\n"), "operator GreaterThan"),
        ("jmes", format!("  - name: jmes\n{pod}    validate:\n      deny:\n        conditions:\n          any:\n          - key: \"{{{{ request.object.metadata.labels.app }}}}\"\n            operator: Equals\n            value: x\n"), "JMESPath"),
        ("other", format!("  - name: other\n{pod}    validate:\n      pattern:\n        spec:\n          hostNetwork: false\n"), "images"),
        ("cel", format!("  - name: cel\n{pod}    validate:\n      cel:\n        expressions:\n        - expression: \"object.spec.containers.all(c, c.image.matches('^a')) || authorizer.group('').resource('pods').check('create').allowed()\"\n"), "needs authorizer"),
        ("subj", format!("  - name: subj\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n        subjects:\n        - kind: User\n          name: bob\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"a/*\"\n"), "user info"),
        ("annot", format!("  - name: annot\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n          annotations:\n            a: b\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"a/*\"\n"), "annotations"),
        ("verify", format!("  - name: verify\n{pod}    verifyImages:\n    - imageReferences: [\"*\"]\n"), "verifyImages"),
        ("allin", format!("  - name: allin\n{pod}    validate:\n      deny:\n        conditions:\n          all:\n          - key: \"{{{{ images.containers.*.registry }}}}\"\n            operator: AllIn\n            value: [a]\n"), "as a whole"),
    ];
    let mut text = String::new();
    for (_, r, _) in &cases {
        text.push_str(r);
    }
    text.push_str(&format!("  - name: good\n{pod}    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"ghcr.io/*\"\n"));
    let set = load_policy_str(&cp(&text), "u.yaml").unwrap();
    assert!(set.is_partial());
    for (rule, _, needle) in &cases {
        let u = set
            .unsupported()
            .iter()
            .find(|u| u.rule == *rule)
            .unwrap_or_else(|| panic!("rule {rule} not reported: {:?}", set.unsupported()));
        assert!(u.reason.contains(needle), "{rule}: {}", u.reason);
        assert_eq!(u.policy, "cp");
        assert!(set
            .warnings()
            .iter()
            .any(|w| w.rule.as_deref() == Some(*rule) && w.message.starts_with("not enforced")));
    }
    assert_eq!(set.unsupported().len(), cases.len());
    assert_eq!(set.rule_count(), 1);
    // The supported rule is still enforced.
    assert!(!set.evaluate("nginx", &EvalContext::default()).allowed);
}

#[test]
fn namespaced_policy_applies_in_its_namespace_only() {
    let text = "apiVersion: kyverno.io/v2beta1\nkind: Policy\nmetadata:\n  name: p\n  namespace: team\nspec:\n  validationFailureAction: enforce\n  rules:\n  - name: r\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"ghcr.io/*\"\n";
    let set = load_policy_str(text, "p.yaml").unwrap();
    let team = EvalContext::default().with_namespace(Some("team"));
    let v = set.evaluate("nginx", &team);
    assert_eq!((v.allowed, v.action), (false, Action::Enforce));
    assert!(
        set.evaluate("nginx", &team.with_namespace(Some("other")))
            .allowed
    );
}

#[test]
fn validating_policy_cel() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kyverno_policies/best-practices-vpol/restrict-image-registries/restrict-image-registries.yaml");
    let set = imagewarden_policy::load_policy_file(p).unwrap();
    assert!(!set.is_partial());
    let v = set.evaluate("busybox", &EvalContext::new(ContainerType::Ephemeral));
    assert_eq!((v.allowed, v.action), (false, Action::Audit));
    assert!(
        set.evaluate("bar.io/x", &EvalContext::new(ContainerType::Init))
            .allowed
    );
}
