//! `imagewarden check` as a user runs it: the built binary, exit codes,
//! JSON lines, manifest mode, policy errors with file and line.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imagewarden"));
    // Keep the environment from changing flags.
    for (k, _) in std::env::vars() {
        if k.starts_with("IMAGEWARDEN_") {
            c.env_remove(k);
        }
    }
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seed() -> PathBuf {
    repo().join("deploy/policies/restrict-registries.yaml")
}

fn native() -> PathBuf {
    repo().join("deploy/policies/restrict-registries-native.yaml")
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imagewarden-check-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    bin().arg("check").args(args).output().unwrap()
}

fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const KEYS: [&str; 17] = [
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
];

#[test]
fn all_allowed_exits_0_with_json_lines() {
    let o = run(&["--policy", seed().to_str().unwrap(), "public.ecr.aws/nginx/nginx:latest", "public.ecr.aws/docker/library/busybox@sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l = lines(&o);
    assert_eq!(l.len(), 2);
    for v in &l {
        for k in KEYS {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["allowed"], true);
        assert_eq!(v["valid"], true);
        assert!(v["reason"].as_str().unwrap().starts_with("allowed: "));
    }
    assert_eq!(l[0]["normalized"], "public.ecr.aws/nginx/nginx:latest");
    assert_eq!(l[0]["registry"], "public.ecr.aws");
    assert_eq!(l[0]["repository"], "nginx/nginx");
    assert_eq!(l[0]["tag"], "latest");
    assert_eq!(l[0]["digest"], Value::Null);
    assert_eq!(
        l[1]["digest"],
        "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"
    );
    // The seed's coverage gap is reported on stderr.
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l.starts_with("warning:")
            && l.contains("validate-registries")
            && l.contains("initContainers")),
        "{err}"
    );
}

#[test]
fn any_denied_exits_1() {
    let o = run(&[
        "--policy",
        seed().to_str().unwrap(),
        "public.ecr.aws/nginx/nginx",
        "nginx",
        "public.ecr.aws/../x",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let l = lines(&o);
    assert_eq!(l.len(), 3);
    assert_eq!(l[1]["allowed"], false);
    assert_eq!(l[1]["normalized"], "docker.io/library/nginx");
    assert_eq!(l[1]["rule"], "validate-registries");
    assert_eq!(l[1]["policy"], "restrict-image-registries");
    assert_eq!(l[1]["action"], "Enforce");
    assert!(l[1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("untrusted-image: "));
    // Kyverno's glob would accept it; imagewarden denies invalid references.
    assert_eq!(l[2]["valid"], false);
    assert_eq!(l[2]["normalized"], Value::Null);
    assert!(l[2]["reason"]
        .as_str()
        .unwrap()
        .starts_with("invalid-reference: "));
}

#[test]
fn container_type_and_namespace_flags() {
    // Seed: init containers are not governed...
    let o = run(&[
        "--policy",
        seed().to_str().unwrap(),
        "--container-type",
        "init",
        "--namespace",
        "prod",
        "evil.com/x",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l = lines(&o);
    assert_eq!(l[0]["container_type"], "init");
    assert_eq!(l[0]["namespace"], "prod");
    assert!(l[0]["reason"].as_str().unwrap().contains("no rule applies"));
    // ...the native equivalent covers them, and rejects look-alikes.
    let o = run(&[
        "--policy",
        native().to_str().unwrap(),
        "--container-type",
        "init",
        "evil.com/x",
        "public.ecr.aws.evil.com/x",
        "evil.com/public.ecr.aws/x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(lines(&o).iter().all(|v| v["allowed"] == false));
    assert!(!stderr(&o).contains("warning:"), "{}", stderr(&o));
}

#[test]
fn manifest_mode() {
    let m = tmp(
        "manifest.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  initContainers:\n  - name: init\n    image: busybox\n  containers:\n  - name: app\n    image: public.ecr.aws/nginx/nginx:1.27\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  template:\n    spec:\n      containers:\n      - name: api\n        image: ghcr.io/acme/api:1\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - name: job\n            image: public.ecr.aws/x/y\n",
    );
    let o = run(&[
        "--policy",
        seed().to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let l = lines(&o);
    let summary: Vec<(String, String, String, bool)> = l
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_string(),
                v["container"].as_str().unwrap().to_string(),
                v["container_type"].as_str().unwrap().to_string(),
                v["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Pod".into(), "app".into(), "container".into(), true),
            ("Pod".into(), "init".into(), "init".into(), true), // the seed's gap
            ("Deployment".into(), "api".into(), "container".into(), false), // autogen
            ("CronJob".into(), "job".into(), "container".into(), true),
        ]
    );
    assert_eq!(l[0]["namespace"], "shop");
    assert_eq!(l[0]["name"], "web");
    for k in KEYS {
        assert!(l[2].get(k).is_some(), "{k}");
    }
    // Native policy: the init container's busybox is denied too.
    let o = run(&[
        "--policy",
        native().to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let allowed: Vec<bool> = lines(&o)
        .iter()
        .map(|v| v["allowed"].as_bool().unwrap())
        .collect();
    assert_eq!(allowed, vec![true, false, false, true]);
    let all_good = tmp("good.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: public.ecr.aws/a/b}\n");
    let o = run(&[
        "--policy",
        native().to_str().unwrap(),
        "--manifest",
        all_good.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn malformed_policy_exits_2_with_file_and_line() {
    let p = tmp(
        "typo.yaml",
        "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: x\nspec:\n  rules:\n  - name: r\n    allow:\n    - registry: public.ecr.aws\n      requireDigests: true\n",
    );
    let o = run(&["--policy", p.to_str().unwrap(), "nginx"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:10:", p.display())), "{err}");
    assert!(err.contains("requireDigests"), "{err}");

    let p = tmp(
        "broken.yaml",
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata:\n  name: [x\n",
    );
    let o = run(&["--policy", p.to_str().unwrap(), "nginx"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("{}:4:", p.display())),
        "{}",
        stderr(&o)
    );

    let p = tmp("semantic.yaml", "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: x\nspec:\n  rules:\n  - name: r\n    allow:\n    - registry: \"public.ecr.aws/*\"\n");
    let o = run(&["--policy", p.to_str().unwrap(), "nginx"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:9:", p.display())) && err.contains("rule r"),
        "{err}"
    );

    let o = run(&["--policy", "/nonexistent/policy.yaml", "nginx"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/policy.yaml"));
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["--policy", seed().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "--policy",
        seed().to_str().unwrap(),
        "--container-type",
        "sidecar",
        "nginx",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["nginx"]);
    assert_eq!(o.status.code(), Some(2));
    let m = tmp("bad-manifest.yaml", "kind: Pod\nspec:\n  containers: [\n");
    let o = run(&[
        "--policy",
        seed().to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad-manifest.yaml:3:"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn partial_kyverno_policy_needs_allow_partial() {
    let p = tmp(
        "partial.yaml",
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata:\n  name: mixed\nspec:\n  validationFailureAction: Enforce\n  rules:\n  - name: with-context\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    context:\n    - name: cm\n      configMap: {name: regs, namespace: default}\n    validate:\n      deny:\n        conditions:\n          any:\n          - key: \"{{ element.image }}\"\n            operator: NotEquals\n            value: \"{{ cm.data.registry }}\"\n  - name: plain\n    match:\n      any:\n      - resources:\n          kinds: [Pod]\n    validate:\n      pattern:\n        spec:\n          =(initContainers):\n          - image: \"ghcr.io/*\"\n          =(ephemeralContainers):\n          - image: \"ghcr.io/*\"\n          containers:\n          - image: \"ghcr.io/*\"\n",
    );
    let o = run(&["--policy", p.to_str().unwrap(), "ghcr.io/a/b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains("with-context") && err.contains("context"),
        "{err}"
    );
    assert!(err.contains("--allow-partial"), "{err}");
    let o = run(&[
        "--policy",
        p.to_str().unwrap(),
        "--allow-partial",
        "ghcr.io/a/b",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("with-context"));
    let o = run(&["--policy", p.to_str().unwrap(), "--allow-partial", "nginx"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(lines(&o)[0]["rule"], "plain");
    // The upstream advanced policy (context + preconditions) is partial too.
    let adv = repo().join("policy/tests/data/kyverno_policies/other/advanced-restrict-image-registries/advanced-restrict-image-registries.yaml");
    let o = run(&["--policy", adv.to_str().unwrap(), "nginx"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("validate-corp-registries"));
}

/// One `--policy` file mixing every policy kind imagewarden reads (issue
/// 14): a native ImagePolicy, a Kyverno ClusterPolicy, a Kyverno
/// ValidatingPolicy and a Kubernetes ValidatingAdmissionPolicy with its
/// binding. Each of four images fails exactly one of them, and the finding
/// names that one; the fifth passes all four.
#[test]
fn one_policy_file_mixing_every_kind() {
    let policy = tmp(
        "mixed.yaml",
        r#"apiVersion: imagewarden.dev/v1alpha1
kind: ImagePolicy
metadata: {name: native-registries}
spec:
  rules:
  - name: allow
    allow:
    - registry: public.ecr.aws
    - registry: ghcr.io
    - registry: quay.io
---
apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata: {name: kyverno-registries}
spec:
  validationFailureAction: Enforce
  rules:
  - name: validate-registries
    match:
      any:
      - resources:
          kinds: [Pod]
    validate:
      message: "Unknown image registry."
      pattern:
        spec:
          containers:
          - image: "public.ecr.aws/* | ghcr.io/* | docker.io/*"
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: vpol-no-evil}
spec:
  validationActions: [Deny]
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [pods]
  validations:
  - expression: "object.spec.containers.all(c, !c.image.startsWith('ghcr.io/evil/'))"
    message: no evil images
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: vap-no-latest}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [pods]
  validations:
  - expression: "object.spec.containers.all(c, !c.image.endsWith(':latest'))"
    message: no latest tags
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: vap-no-latest-binding}
spec:
  policyName: vap-no-latest
  validationActions: [Deny]
"#,
    );
    let m = tmp(
        "mixed-pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  containers:\n  \
         - {name: ok, image: public.ecr.aws/a/b:1}\n  - {name: quay, image: quay.io/a/b:1}\n  \
         - {name: evil, image: ghcr.io/evil/x:1}\n  - {name: latest, image: public.ecr.aws/a/b:latest}\n  \
         - {name: hub, image: docker.io/library/nginx:1}\n",
    );
    let o = run(&[
        "--policy",
        policy.to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let got: Vec<(String, bool, Option<String>)> = lines(&o)
        .iter()
        .map(|v| {
            (
                v["container"].as_str().unwrap().to_string(),
                v["allowed"].as_bool().unwrap(),
                v["policy"]
                    .as_str()
                    .map(str::to_string)
                    .filter(|_| v["allowed"] == false),
            )
        })
        .collect();
    let want = |c: &str, p: Option<&str>| (c.to_string(), p.is_none(), p.map(str::to_string));
    assert_eq!(
        got,
        vec![
            want("ok", None),
            want("quay", Some("kyverno-registries")),
            want("evil", Some("vpol-no-evil")),
            // A VAP is named with the binding that put it in force.
            want("latest", Some("vap-no-latest/vap-no-latest-binding")),
            want("hub", Some("native-registries")),
        ],
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
