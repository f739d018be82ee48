//! Loading: multi-document files, error positions, unknown fields; manifest
//! extraction; check records.
use imagewarden_policy::check::{check_images, check_workloads};
use imagewarden_policy::manifest::extract_images;
use imagewarden_policy::{load_policy_str, ContainerType, EvalContext, PolicyError};

const NATIVE: &str = "apiVersion: imagewarden.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: native
spec:
  rules:
  - name: ecr
    allow:
    - registry: public.ecr.aws
";

const KYVERNO: &str = "apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata:
  name: kyv
spec:
  validationFailureAction: Audit
  rules:
  - name: no-latest
    match:
      any:
      - resources:
          kinds: [Pod]
    validate:
      pattern:
        spec:
          containers:
          - image: \"!*:latest\"
";

#[test]
fn multi_document_mixing_front_ends() {
    let text = format!("# policies\n---\n{NATIVE}---\n{KYVERNO}...\n");
    let set = load_policy_str(&text, "mixed.yaml").unwrap();
    assert_eq!(set.policy_names(), vec!["native", "kyv"]);
    let c = EvalContext::default();
    let v = set.evaluate("public.ecr.aws/nginx/nginx:latest", &c);
    assert!(!v.allowed);
    assert_eq!(v.policy.as_deref(), Some("kyv"));
    assert!(set.evaluate("public.ecr.aws/nginx/nginx:1.27", &c).allowed);
    let v = set.evaluate("nginx:1", &c);
    assert_eq!(v.policy.as_deref(), Some("native"));
}

fn err(text: &str) -> PolicyError {
    load_policy_str(text, "pol.yaml").expect_err("must fail")
}

#[test]
fn unknown_field_is_an_error_with_line_and_column() {
    let text = format!(
        "{KYVERNO}---\n{}",
        NATIVE.replace(
            "    - registry: public.ecr.aws\n",
            "    - registry: public.ecr.aws\n      requireDigests: true\n"
        )
    );
    let e = err(&text);
    let line = KYVERNO.lines().count() + 1 + 10;
    match &e {
        PolicyError::Syntax {
            file,
            line: l,
            column,
            message,
        } => {
            assert_eq!(file, "pol.yaml");
            assert_eq!(*l, line, "{e}");
            assert!(*column > 1);
            assert!(
                message.contains("unknown field `requireDigests`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().starts_with(&format!("pol.yaml:{line}:")),
        "{e}"
    );
    // Typo at spec level too.
    let e = err(&NATIVE.replace("  rules:", "  rule:"));
    assert!(e.to_string().contains("unknown field `rule`"), "{e}");
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let text = format!("{NATIVE}---\napiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: [broken\n");
    let e = err(&text);
    let expected_line = NATIVE.lines().count() + 5;
    assert!(matches!(e, PolicyError::Syntax { .. }), "{e:?}");
    let l = e.line().unwrap();
    assert!(l >= expected_line && l <= expected_line + 1, "{e}");
    assert!(e.to_string().starts_with("pol.yaml:"), "{e}");
    let e = err("a: b: c\n");
    assert!(e.to_string().starts_with("pol.yaml:1:"), "{e}");
}

#[test]
fn semantic_errors_point_at_the_key() {
    let text = NATIVE.replace("public.ecr.aws", "\"public.ecr.aws/*\"");
    let e = err(&text);
    assert_eq!(e.line(), Some(9), "{e}");
    let s = e.to_string();
    assert!(
        s.starts_with("pol.yaml:9: policy native: rule ecr: field registry:"),
        "{s}"
    );
    let e = err(&format!(
        "{NATIVE}---\n{}",
        NATIVE
            .replace("name: native", "name: n2")
            .replace("kind: ImagePolicy", "kind: ImagePolicy\n")
            .replace(
                "    - registry: public.ecr.aws\n",
                "    - registry: public.ecr.aws\n    match:\n      kinds: [Pods]\n"
            )
    ));
    let line = NATIVE.lines().count() + 1 + 12;
    assert_eq!(e.line(), Some(line), "{e}");
}

#[test]
fn non_policy_documents_and_empty_files_are_errors() {
    assert!(
        err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
            .to_string()
            .contains("not a policy")
    );
    assert!(matches!(err("# nothing\n"), PolicyError::Empty { .. }));
    assert!(err("- a\n- b\n").to_string().contains("mapping"));
    assert!(err("apiVersion: imagewarden.dev/v1alpha1\nkind: Other\n")
        .to_string()
        .contains("unknown kind"));
    assert!(err(&NATIVE.replace("v1alpha1", "v9"))
        .to_string()
        .contains("unsupported version"));
}

#[test]
fn hostile_input_does_not_panic() {
    for t in [
        "\u{0}", "[[[[[[[[[[", "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\n", "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: x}\nspec: {rules: 3}\n",
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: x}\nspec: {rules: [{name: r, match: 1, validate: {pattern: []}}]}\n",
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: x}\nspec: {rules: [{name: r, match: {any: [{resources: {kinds: [Pod]}}]}, validate: {cel: {expressions: [{expression: \"((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((\"}]}}}]}\n",
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: x}\nspec: {rules: [{name: r, match: {any: [{resources: {kinds: [Pod]}}]}, validate: {foreach: [{list: 3}]}}]}\n",
    ] {
        let _ = load_policy_str(t, "h.yaml");
        let _ = extract_images(t, "h.yaml");
    }
    let set = load_policy_str(NATIVE, "n.yaml").unwrap();
    for img in [
        "",
        "@",
        ":",
        "/",
        "a".repeat(100_000).as_str(),
        "public.ecr.aws/\u{202e}x",
        "PUBLIC.ECR.AWS/x",
    ] {
        let _ = set.evaluate(img, &EvalContext::default());
    }
}

const MANIFEST: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  initContainers:
  - name: init
    image: busybox:1.36
  containers:
  - name: app
    image: public.ecr.aws/nginx/nginx:1.27
  ephemeralContainers:
  - name: debug
    image: evil.com/tools
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: ghcr.io/acme/api@sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  namespace: ops
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: job
            image: public.ecr.aws/x/y
---
apiVersion: v1
kind: Service
metadata:
  name: web
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: DaemonSet
  metadata: {name: agent, namespace: kube-system}
  spec:
    template:
      spec:
        containers:
        - {name: a, image: public.ecr.aws/a/b}
- apiVersion: v1
  kind: ReplicationController
  metadata: {name: rc}
  spec:
    template:
      spec:
        containers:
        - {name: c}
";

type Row<'a> = (String, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

#[test]
fn manifest_extraction() {
    let m = extract_images(MANIFEST, "m.yaml").unwrap();
    let got: Vec<Row> = m
        .images
        .iter()
        .map(|w| {
            (
                w.image.clone(),
                w.container_type.as_str(),
                w.kind.as_str(),
                w.name.as_deref(),
                w.namespace.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("public.ecr.aws/nginx/nginx:1.27".into(), "container", "Pod", Some("web"), Some("shop")),
            ("busybox:1.36".into(), "init", "Pod", Some("web"), Some("shop")),
            ("evil.com/tools".into(), "ephemeral", "Pod", Some("web"), Some("shop")),
            ("ghcr.io/acme/api@sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac".into(), "container", "Deployment", Some("api"), None),
            ("public.ecr.aws/x/y".into(), "container", "CronJob", Some("nightly"), Some("ops")),
            ("public.ecr.aws/a/b".into(), "container", "DaemonSet", Some("agent"), Some("kube-system")),
            ("".into(), "container", "ReplicationController", Some("rc"), None),
        ]
    );
    assert_eq!(m.images[0].container.as_deref(), Some("app"));
    assert_eq!(
        m.images[0].pod_labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        m.images[3].pod_labels.get("app").map(String::as_str),
        Some("api")
    );
    assert_eq!(m.skipped, vec!["Service web".to_string()]);
    assert_eq!(m.images[3].line, 18);

    let e = extract_images("kind: Pod\nspec:\n  containers: 3\n", "bad.yaml").unwrap_err();
    assert!(e.to_string().starts_with("bad.yaml:1:"), "{e}");
    let e = extract_images("kind: Pod\n---\nkind: [\n", "bad.yaml").unwrap_err();
    assert!(e.to_string().starts_with("bad.yaml:3:"), "{e}");
}

#[test]
fn check_records() {
    let set = load_policy_str(NATIVE, "n.yaml").unwrap();
    let recs = check_images(&set, &["nginx", "public.ecr.aws/nginx/nginx:1.27@sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac", "Bad//ref"], Some("ns"), ContainerType::Init);
    assert_eq!(
        recs[0].normalized.as_deref(),
        Some("docker.io/library/nginx")
    );
    assert_eq!(recs[0].registry.as_deref(), Some("docker.io"));
    assert_eq!(recs[0].repository.as_deref(), Some("library/nginx"));
    assert!(!recs[0].allowed);
    assert_eq!(recs[0].action.as_deref(), Some("Enforce"));
    assert_eq!(recs[0].namespace.as_deref(), Some("ns"));
    assert_eq!(recs[0].container_type, Some(ContainerType::Init));
    assert_eq!(recs[1].normalized.as_deref(), Some("public.ecr.aws/nginx/nginx:1.27@sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"));
    assert_eq!(recs[1].tag.as_deref(), Some("1.27"));
    assert!(recs[1].digest.as_deref().unwrap().starts_with("sha256:"));
    assert!(recs[1].allowed);
    assert!(!recs[2].valid && !recs[2].allowed);
    assert_eq!(recs[2].normalized, None);
    assert!(recs[2].reason.starts_with("invalid-reference: "));

    let m = extract_images(MANIFEST, "m.yaml").unwrap();
    let recs = check_workloads(&set, &m.images, Some("fallback"));
    let allowed: Vec<bool> = recs.iter().map(|r| r.allowed).collect();
    assert_eq!(allowed, vec![true, false, false, false, true, true, false]);
    assert_eq!(recs[3].namespace.as_deref(), Some("fallback"));
    assert_eq!(recs[3].kind.as_deref(), Some("Deployment"));
    assert_eq!(recs[1].container.as_deref(), Some("init"));
    let json = serde_json::to_value(&recs[2]).unwrap();
    for k in [
        "image",
        "valid",
        "normalized",
        "registry",
        "repository",
        "tag",
        "digest",
        "allowed",
        "reason",
        "container",
        "container_type",
        "kind",
        "name",
        "namespace",
        "rule",
        "policy",
        "action",
    ] {
        assert!(json.get(k).is_some(), "{k}");
    }
    assert_eq!(json["container_type"], "ephemeral");
}
