//! ValidatingAdmissionPolicy + bindings + params (tests/data/vap), and
//! Kyverno ValidatingPolicy forms: scope, actions, params, per-container
//! verdicts, refusals by name.
use std::collections::BTreeMap;
use std::path::Path;

use imagewarden_policy::check::check_workloads;
use imagewarden_policy::manifest::extract_images;
use imagewarden_policy::{load_policy_file, load_policy_str, Action, ContainerType, EvalContext};

fn vap(name: &str) -> imagewarden_policy::PolicySet {
    load_policy_file(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/vap")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn binding_actions_namespaces_and_params() {
    let set = vap("registries-params.yaml");
    assert!(!set.is_partial(), "{:?}", set.unsupported());
    let ctx =
        |ns: &'static str| EvalContext::new(ContainerType::Container).with_namespace(Some(ns));
    // prod: Deny binding, params registries-prod (registry.example.com/ only).
    let v = set.evaluate("public.ecr.aws/nginx/nginx:1", &ctx("prod"));
    assert_eq!((v.allowed, v.action), (false, Action::Enforce), "{v:?}");
    assert!(
        v.reason
            .contains("images must come from registry.example.com/"),
        "{}",
        v.reason
    );
    assert!(
        v.reason.contains("public.ecr.aws/nginx/nginx:1"),
        "{}",
        v.reason
    );
    assert_eq!(
        v.policy.as_deref(),
        Some("allowed-registries.example.com/allowed-registries-prod")
    );
    assert!(
        set.evaluate("registry.example.com/app:1", &ctx("prod"))
            .allowed
    );
    // elsewhere: Warn+Audit binding, params selected by label (two prefixes).
    assert!(
        set.evaluate("public.ecr.aws/nginx/nginx:1", &ctx("dev"))
            .allowed
    );
    let v = set.evaluate("docker.io/library/nginx:1", &ctx("dev"));
    assert_eq!((v.allowed, v.action), (false, Action::Audit), "{v:?}");
    // kube-system is matched by neither binding.
    let v = set.evaluate("docker.io/library/nginx:1", &ctx("kube-system"));
    assert!(v.allowed && v.rule.is_none(), "{v:?}");
    // objectSelector: an exempt Pod outside prod is not judged.
    let exempt: BTreeMap<String, String> =
        [("imagewarden.dev/exempt".to_string(), "yes".to_string())].into();
    assert!(
        set.evaluate(
            "docker.io/library/nginx:1",
            &ctx("dev").with_labels(&exempt)
        )
        .allowed
    );
    // init and ephemeral containers are covered too.
    let v = set.evaluate(
        "docker.io/library/nginx:1",
        &EvalContext::new(ContainerType::Ephemeral).with_namespace(Some("prod")),
    );
    assert!(!v.allowed);
}

#[test]
fn match_conditions_and_unbound_policies() {
    let set = vap("registries-simple.yaml");
    assert!(!set.is_partial(), "{:?}", set.unsupported());
    assert!(set
        .warnings()
        .iter()
        .any(|w| w.policy == "unbound.example.com"
            && w.message.contains("no ValidatingAdmissionPolicyBinding")));
    let ctx = EvalContext::new(ContainerType::Container);
    let v = set.evaluate("nginx:latest", &ctx);
    assert_eq!((v.allowed, v.action), (false, Action::Enforce));
    assert!(
        v.reason.contains("a pinned tag is required"),
        "{}",
        v.reason
    );
    assert!(set.evaluate("nginx:1.25", &ctx).allowed);
    assert!(!set.evaluate("nginx", &ctx).allowed);
    let exempt: BTreeMap<String, String> =
        [("imagewarden.dev/exempt".to_string(), "".to_string())].into();
    assert!(
        set.evaluate("nginx:latest", &ctx.with_labels(&exempt))
            .allowed
    );
    // The unbound policy (validation "false") is not in effect.
    assert_eq!(set.rule_count(), 1);
}

#[test]
fn vap_refusals_are_named() {
    let base = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: p}\nspec:\n  matchConstraints:\n    resourceRules: [{apiGroups: [''], apiVersions: [v1], operations: [CREATE], resources: [pods]}]\n  validations:\n  - expression: EXPR\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {name: b}\nspec: {policyName: p, validationActions: [Deny]}\n";
    for (expr, needle) in [
        (
            "\"request.userInfo.username == 'admin'\"",
            "request.userInfo",
        ),
        (
            "\"authorizer.group('').resource('pods').check('create').allowed()\"",
            "authorizer",
        ),
        ("\"oldObject == null\"", "oldObject"),
        (
            "\"namespaceObject.metadata.labels.x == 'y'\"",
            "namespaceObject",
        ),
    ] {
        let set = load_policy_str(&base.replace("EXPR", expr), "v.yaml").unwrap();
        let u = set.unsupported();
        assert_eq!(u.len(), 1, "{expr}: {u:?}");
        assert!(u[0].reason.contains(needle), "{expr}: {}", u[0].reason);
        assert_eq!(set.rule_count(), 0);
    }
    // A binding for a policy that is not there.
    let set = load_policy_str(
        &base
            .replace("policyName: p", "policyName: q")
            .replace("EXPR", "'true'"),
        "v.yaml",
    )
    .unwrap();
    assert!(set.unsupported().iter().any(|u| u.reason.contains("\"q\"")));
    // A lone ConfigMap is not a policy.
    assert!(load_policy_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "c.yaml"
    )
    .is_err());
}

#[test]
fn validating_policy_forms_and_autogen() {
    for (api, kind, ns) in [
        ("policies.kyverno.io/v1", "ValidatingPolicy", ""),
        ("policies.kyverno.io/v1beta1", "ValidatingPolicy", ""),
        ("policies.kyverno.io/v1alpha1", "ValidatingPolicy", ""),
        (
            "policies.kyverno.io/v1",
            "NamespacedValidatingPolicy",
            "\n  namespace: team",
        ),
    ] {
        let text = format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: vp{ns}\nspec:\n  validationActions: [Deny]\n  matchConstraints:\n    resourceRules: [{{apiGroups: [''], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}}]\n  variables:\n  - name: cs\n    expression: object.spec.containers + object.spec.?initContainers.orValue([])\n  validations:\n  - expression: \"variables.cs.all(c, image(c.image).registry() == 'ghcr.io')\"\n    messageExpression: \"'bad registry: ' + variables.cs.filter(c, image(c.image).registry() != 'ghcr.io').map(c, c.image).join(', ')\"\n"
        );
        let set = load_policy_str(&text, "vp.yaml").unwrap_or_else(|e| panic!("{kind} {api}: {e}"));
        assert!(!set.is_partial(), "{kind} {api}: {:?}", set.unsupported());
        let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: team}\nspec:\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      initContainers: [{name: i, image: ghcr.io/x/init:1}]\n      containers:\n      - {name: ok, image: ghcr.io/x/app:1}\n      - {name: bad, image: docker.io/library/nginx:1}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c, namespace: team}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers: [{name: only, image: quay.io/a/b:1}]\n";
        let m = extract_images(manifest, "m.yaml").unwrap();
        let recs = check_workloads(&set, &m.images, None);
        let by: BTreeMap<&str, bool> = recs
            .iter()
            .map(|r| (r.container.as_deref().unwrap(), r.allowed))
            .collect();
        assert_eq!(
            by,
            BTreeMap::from([("i", true), ("ok", true), ("bad", false), ("only", false)]),
            "{kind} {api}"
        );
        let bad = recs
            .iter()
            .find(|r| r.container.as_deref() == Some("bad"))
            .unwrap();
        assert!(
            bad.reason
                .contains("bad registry: docker.io/library/nginx:1"),
            "{}",
            bad.reason
        );
        assert_eq!(bad.action.as_deref(), Some("Enforce"));
        if kind == "NamespacedValidatingPolicy" {
            let other = EvalContext::new(ContainerType::Container).with_namespace(Some("other"));
            assert!(set.evaluate("docker.io/library/nginx:1", &other).allowed);
        }
    }
}

#[test]
fn namespace_selectors_on_namespace_labels() {
    // A binding that applies to namespaces labelled env=prod only, and a
    // Kyverno rule that applies where team != infra.
    let text = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: p}\nspec:\n  matchConstraints:\n    resourceRules: [{apiGroups: [''], apiVersions: [v1], operations: [CREATE], resources: [pods]}]\n  validations:\n  - expression: \"object.spec.containers.all(c, c.image.startsWith('public.ecr.aws/'))\"\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {name: b}\nspec:\n  policyName: p\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels: {env: prod}\n---\napiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: k}\nspec:\n  validationFailureAction: Enforce\n  rules:\n  - name: no-quay\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n          namespaceSelector:\n            matchExpressions:\n            - {key: team, operator: NotIn, values: [infra]}\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"!quay.io/*\"\n";
    let set = load_policy_str(text, "ns.yaml").unwrap();
    assert!(set.unsupported().is_empty(), "{:?}", set.unsupported());
    let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let prod = labels(&[("env", "prod")]);
    let dev = labels(&[("env", "dev")]);
    let infra = labels(&[("env", "dev"), ("team", "infra")]);
    let judge = |image: &str, ns_labels: Option<&BTreeMap<String, String>>| {
        set.evaluate(
            image,
            &EvalContext::new(ContainerType::Container)
                .with_namespace(Some("web"))
                .with_namespace_labels(ns_labels),
        )
        .allowed
    };
    // The VAP binding: by the Namespace's labels.
    assert!(!judge("docker.io/library/nginx:1", Some(&prod)));
    assert!(judge("public.ecr.aws/nginx/nginx:1", Some(&prod)));
    assert!(judge("docker.io/library/nginx:1", Some(&dev)));
    // The Kyverno rule: NotIn on a label the Namespace has or lacks.
    assert!(!judge("quay.io/x/y:1", Some(&dev)));
    assert!(judge("quay.io/x/y:1", Some(&infra)));
    // Labels not known: both apply (the stricter answer), never skipped.
    assert!(!judge("docker.io/library/nginx:1", None));
    assert!(!judge("quay.io/x/y:1", None));
    // A Kyverno exclude on Namespace labels not known does not exclude.
    let excl = load_policy_str(
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: k}\nspec:\n  validationFailureAction: Enforce\n  rules:\n  - name: no-quay\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    exclude:\n      any:\n      - resources:\n          namespaceSelector:\n            matchLabels: {team: infra}\n    validate:\n      pattern:\n        spec:\n          containers:\n          - image: \"!quay.io/*\"\n",
        "x.yaml",
    )
    .unwrap();
    let excl_allows = |ns_labels: Option<&BTreeMap<String, String>>| {
        excl.evaluate(
            "quay.io/x/y:1",
            &EvalContext::new(ContainerType::Container)
                .with_namespace(Some("web"))
                .with_namespace_labels(ns_labels),
        )
        .allowed
    };
    assert!(
        excl_allows(Some(&infra)),
        "excluded by the Namespace's labels"
    );
    assert!(!excl_allows(Some(&dev)));
    assert!(
        !excl_allows(None),
        "labels not known: the exclude does not apply"
    );
    // kubernetes.io/metadata.name is known without the Namespace's labels.
    let by_name = load_policy_str(
        &text.replace(
            "matchLabels: {env: prod}",
            "matchLabels: {kubernetes.io/metadata.name: prod}",
        ),
        "n.yaml",
    )
    .unwrap();
    let in_ns = |ns: &str| {
        by_name
            .evaluate(
                "docker.io/library/nginx:1",
                &EvalContext::new(ContainerType::Container).with_namespace(Some(ns)),
            )
            .allowed
    };
    assert!(!in_ns("prod"));
    assert!(in_ns("web"));
}
