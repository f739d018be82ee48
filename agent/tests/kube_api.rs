//! The API server source against a local stand-in that speaks the real
//! paths and JSON (tests/support/fakeapi.rs): pod list/watch with the node
//! field selector, bookmarks, 410 Gone and re-list, the `up` flag through an
//! outage, policy hot reload from Kyverno and ImagePolicy objects.
mod support;

use std::time::{Duration, Instant};

use imagewarden::controller::decide;
use imagewarden::kube_run::pod_lookup;
use imagewarden::probes::event::KernelVerdict;
use imagewarden::sources::kube::{
    client_from_kubeconfig, namespace_source, pod_source_with_probe, policy_source, PolicyKind,
    PolicyWatchConfig,
};
use imagewarden::sources::ContainerInfo;
use imagewarden_policy::{ContainerType, EvalContext};
use k8s_openapi::api::core::v1::Pod;
use kube::{Client, Config};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use support::fakeapi::{Coll, FakeApi};

fn client(api: &FakeApi) -> Client {
    Client::try_from(Config::new(api.url().parse().unwrap())).expect("client")
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(20), f).await
}

async fn eventually_within(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn pod(ns: &str, name: &str, node: &str, image: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
            "labels": {"app": name},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]},
        "status": {"phase": "Running"}
    })
}

fn pod_names(
    store: &kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>,
) -> Vec<String> {
    let mut v: Vec<String> = store
        .state()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn pods_are_listed_and_watched_with_the_node_field_selector() {
    let api = FakeApi::start().await;
    api.put(Coll::Pods, pod("prod", "web", "node-a", "nginx"));
    api.put(Coll::Pods, pod("prod", "elsewhere", "node-b", "nginx"));
    let (src, fut) = pod_source_with_probe(client(&api), "node-a", Duration::from_millis(200));
    let task = tokio::spawn(fut);
    let store = src.store.clone();
    eventually("initial list", || pod_names(&store) == ["web"]).await;
    assert!(src.health.is_up());

    let reqs = api.requests();
    let list = reqs
        .iter()
        .find(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .expect("a list request");
    assert_eq!(
        list.params.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a")
    );
    assert!(
        list.query.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "raw query: {}",
        list.query
    );
    eventually("a watch request", || {
        api.requests().iter().any(|r| r.is_watch())
    })
    .await;
    let w = api.requests().into_iter().find(|r| r.is_watch()).unwrap();
    assert_eq!(
        w.params.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a")
    );
    assert_eq!(
        w.params.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    assert!(w.params.contains_key("resourceVersion"));

    // managedFields are trimmed in the store.
    let stored = store.state()[0].clone();
    assert!(stored
        .metadata
        .managed_fields
        .as_ref()
        .is_none_or(|m| m.is_empty()));

    // ADDED / MODIFIED / DELETED through the watch.
    let mut gen = src.changes.clone();
    api.put(Coll::Pods, pod("prod", "api", "node-a", "nginx"));
    api.put(Coll::Pods, pod("prod", "other-node", "node-b", "nginx"));
    eventually("ADDED", || pod_names(&store) == ["api", "web"]).await;
    assert!(gen.has_changed().unwrap());
    gen.mark_unchanged();
    api.put(
        Coll::Pods,
        pod("prod", "api", "node-a", "public.ecr.aws/nginx/nginx"),
    );
    eventually("MODIFIED", || {
        store.state().iter().any(|p| {
            p.spec.as_ref().unwrap().containers[0].image.as_deref()
                == Some("public.ecr.aws/nginx/nginx")
        })
    })
    .await;
    api.remove(Coll::Pods, "prod", "web");
    eventually("DELETED", || pod_names(&store) == ["api"]).await;
    assert!(gen.has_changed().unwrap());
    task.abort();
}

#[tokio::test]
async fn bookmarks_move_the_resume_point_and_410_forces_a_relist() {
    let api = FakeApi::start().await;
    api.put(Coll::Pods, pod("prod", "web", "node-a", "nginx"));
    let (src, fut) = pod_source_with_probe(client(&api), "node-a", Duration::from_millis(200));
    let task = tokio::spawn(fut);
    let store = src.store.clone();
    eventually("initial list", || pod_names(&store) == ["web"]).await;
    eventually("watching", || api.requests().iter().any(|r| r.is_watch())).await;

    // A bookmark, then the watch ends: the re-watch resumes at the bookmark.
    // The stand-in cannot tell when the watcher has read the bookmark, so
    // the watch is ended until a re-watch resumes at it (a re-watch from
    // before it is served the bookmark again), within a deadline.
    let bm = api.bookmark(Coll::Pods);
    let watches = || api.requests().iter().filter(|r| r.is_watch()).count();
    let from_bm = || {
        api.requests()
            .iter()
            .any(|r| r.is_watch() && r.params.get("resourceVersion") == Some(&bm.to_string()))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !from_bm() {
        assert!(
            Instant::now() < deadline,
            "no re-watch from the bookmark's resourceVersion {bm}"
        );
        let before = watches();
        api.end_watches();
        eventually("a re-watch", || watches() > before).await;
    }

    // History compacted: the next re-watch gets an ERROR event with 410
    // Expired, and the watcher lists again (and sees a pod that was added
    // while its watch was not running).
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    api.down();
    api.put(Coll::Pods, pod("prod", "while-gone", "node-a", "nginx"));
    api.compact();
    api.up();
    eventually("re-list after 410", || {
        api.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
            .count()
            > lists_before
    })
    .await;
    eventually("store after re-list", || {
        pod_names(&store) == ["web", "while-gone"]
    })
    .await;

    // Plain HTTP 410 on the watch request is handled the same way.
    api.set_http_410(true);
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    api.remove(Coll::Pods, "prod", "web");
    api.compact();
    api.end_watches();
    eventually("re-list after HTTP 410", || {
        api.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
            .count()
            > lists_before
    })
    .await;
    // The watcher's backoff grows with each 410 it met (kube-rs' default
    // backoff); on a loaded machine (2 cores, parallel builds) the last
    // re-list once took longer than 20 s.
    eventually_within(
        "store after second re-list",
        Duration::from_secs(90),
        || pod_names(&store) == ["while-gone"],
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn up_flag_goes_down_with_the_api_and_recovers_without_restart() {
    let api = FakeApi::start().await;
    api.put(Coll::Pods, pod("prod", "web", "node-a", "nginx"));
    let (src, fut) = pod_source_with_probe(client(&api), "node-a", Duration::from_millis(200));
    let task = tokio::spawn(fut);
    let h = src.health.clone();
    eventually("up", || h.is_up()).await;

    api.down();
    eventually("down while the API refuses connections", || !h.is_up()).await;
    assert!(h.errors_total() >= 1);
    // The store keeps the last known pods while the API is away.
    assert_eq!(pod_names(&src.store), ["web"]);

    api.up();
    eventually("up again after recovery", || h.is_up()).await;
    api.put(Coll::Pods, pod("prod", "after", "node-a", "nginx"));
    let store = src.store.clone();
    eventually("changes flow again", || {
        pod_names(&store) == ["after", "web"]
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn kubeconfig_with_an_http_server_is_honoured() {
    let api = FakeApi::start().await;
    api.put(Coll::Pods, pod("prod", "web", "node-a", "nginx"));
    let dir = std::env::temp_dir().join(format!("iw-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config");
    std::fs::write(&path, api.kubeconfig()).unwrap();
    let client = client_from_kubeconfig(&path)
        .await
        .expect("client from kubeconfig");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
    let list = pods
        .list(&Default::default())
        .await
        .expect("list through kubeconfig client");
    assert_eq!(list.items.len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

fn yaml_to_json(text: &str) -> Value {
    serde_yaml::from_str(text).expect("yaml")
}

const SEED: &str = include_str!("../../deploy/policies/restrict-registries.yaml");

fn denied(set: &imagewarden_policy::PolicySet, image: &str) -> bool {
    let labels = Default::default();
    let ctx = EvalContext::new(ContainerType::Container)
        .with_namespace(Some("prod"))
        .with_labels(&labels);
    !set.evaluate(image, &ctx).allowed
}

#[tokio::test]
async fn kyverno_clusterpolicy_hot_reload_keeps_last_good_on_invalid_update() {
    let api = FakeApi::start().await;
    api.put(Coll::ClusterPolicies, yaml_to_json(SEED));
    let cfg = PolicyWatchConfig {
        kinds: vec![PolicyKind::KyvernoClusterPolicy, PolicyKind::KyvernoPolicy],
        base: None,
        rediscover_every: Duration::from_millis(200),
        ..Default::default()
    };
    let (src, fut) = policy_source(client(&api), cfg);
    let task = tokio::spawn(fut);
    let rx = src.policy.clone();
    eventually("seed policy loaded", || {
        denied(&rx.borrow(), "docker.io/library/nginx:latest")
    })
    .await;
    assert!(!denied(&rx.borrow(), "public.ecr.aws/nginx/nginx:latest"));
    let ok_before = src.stats.reloads_ok.load(Ordering::Relaxed);
    assert!(ok_before >= 1);
    assert!(src.stats.kyverno_installed.load(Ordering::Relaxed));
    // The watch starts right after the initial list has been applied.
    eventually("a ClusterPolicy watch", || {
        api.requests()
            .iter()
            .any(|r| r.path == "/apis/kyverno.io/v1/clusterpolicies" && r.is_watch())
    })
    .await;

    // An invalid update: counted, logged, the last good version stays.
    let mut bad = yaml_to_json(SEED);
    bad["spec"]["rules"] = json!("not a list");
    api.put(Coll::ClusterPolicies, bad);
    eventually("invalid update counted", || {
        src.stats.reloads_failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        denied(&rx.borrow(), "docker.io/library/nginx:latest"),
        "last good policy still enforced"
    );

    // A valid update takes effect.
    let mut wider = yaml_to_json(SEED);
    wider["spec"]["rules"][0]["validate"]["pattern"]["spec"]["containers"][0]["image"] =
        json!("public.ecr.aws/* | docker.io/*");
    api.put(Coll::ClusterPolicies, wider);
    eventually("valid update applied", || {
        !denied(&rx.borrow(), "docker.io/library/nginx:latest")
    })
    .await;
    assert!(denied(&rx.borrow(), "quay.io/x/y:1"));

    // Deletion removes it.
    api.remove(Coll::ClusterPolicies, "", "restrict-image-registries");
    eventually("policy removed", || rx.borrow().rule_count() == 0).await;
    task.abort();
}

#[tokio::test]
async fn missing_kyverno_crd_is_rediscovered_and_imagepolicy_merges() {
    let api = FakeApi::start().await;
    api.set_kyverno_installed(false);
    let native = json!({
        "apiVersion": "imagewarden.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": "trusted"},
        "spec": {"action": "Enforce", "rules": [{"name": "only-ecr",
            "allow": [{"registry": "public.ecr.aws"}, {"registry": "quay.io", "repositories": ["ok/**"]}]}]}
    });
    api.put(Coll::ImagePolicies, native);
    let (src, fut) = policy_source(
        client(&api),
        PolicyWatchConfig {
            rediscover_every: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let task = tokio::spawn(fut);
    let rx = src.policy.clone();
    eventually("ImagePolicy loaded", || rx.borrow().rule_count() == 1).await;
    assert!(denied(&rx.borrow(), "quay.io/bad/x:1"));
    assert!(!denied(&rx.borrow(), "quay.io/ok/x:1"));
    assert!(!src.stats.kyverno_installed.load(Ordering::Relaxed));
    assert!(src.stats.imagepolicy_installed.load(Ordering::Relaxed));
    // Discovery saw 404 for kyverno.io/v1; it looks again.
    eventually("kyverno rediscovered", || {
        api.requests()
            .iter()
            .filter(|r| r.path == "/apis/kyverno.io/v1")
            .count()
            >= 2
    })
    .await;

    // Kyverno gets installed with the seed policy: both merge.
    api.put(Coll::ClusterPolicies, yaml_to_json(SEED));
    api.set_kyverno_installed(true);
    eventually("merged", || rx.borrow().rule_count() == 2).await;
    assert!(src.stats.kyverno_installed.load(Ordering::Relaxed));
    assert!(
        denied(&rx.borrow(), "quay.io/ok/x:1"),
        "the seed only allows public.ecr.aws"
    );
    task.abort();
}

const VPOL: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: restrict-image-registries}
spec:
  validationActions: [Deny]
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}
  variables:
  - name: allContainers
    expression: "object.spec.containers + object.spec.?initContainers.orValue([]) + object.spec.?ephemeralContainers.orValue([])"
  validations:
  - expression: "variables.allContainers.all(c, c.image.startsWith('public.ecr.aws/'))"
    message: Unknown image registry.
"#;

#[tokio::test]
async fn validating_policy_and_admission_policy_from_the_cluster() {
    let api = FakeApi::start().await;
    let (src, fut) = policy_source(
        client(&api),
        PolicyWatchConfig {
            rediscover_every: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let task = tokio::spawn(fut);
    let rx = src.policy.clone();
    // A ValidatingPolicy added to the cluster reaches the merged set.
    api.put(Coll::ValidatingPolicies, yaml_to_json(VPOL));
    eventually("ValidatingPolicy loaded", || {
        denied(&rx.borrow(), "docker.io/library/nginx:1")
    })
    .await;
    assert!(!denied(&rx.borrow(), "public.ecr.aws/nginx/nginx:1"));
    assert!(src.stats.validatingpolicy_installed.load(Ordering::Relaxed));
    // An invalid update (no spec: the document does not load) is counted
    // and the last good version stays in force.
    let mut broken = yaml_to_json(VPOL);
    broken.as_object_mut().unwrap().remove("spec");
    let failed = src.stats.reloads_failed.load(Ordering::Relaxed);
    api.put(Coll::ValidatingPolicies, broken);
    eventually("broken update counted", || {
        src.stats.reloads_failed.load(Ordering::Relaxed) == failed + 1
    })
    .await;
    assert!(
        denied(&rx.borrow(), "docker.io/library/nginx:1"),
        "last good ValidatingPolicy still enforced"
    );
    api.remove(Coll::ValidatingPolicies, "", "restrict-image-registries");
    eventually("ValidatingPolicy removed", || rx.borrow().rule_count() == 0).await;

    // A ValidatingAdmissionPolicy is in effect once its binding exists.
    api.put(
        Coll::ValidatingAdmissionPolicies,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "no-latest"},
               "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                            "operations": ["CREATE"], "resources": ["pods"]}]},
                        "validations": [{"expression": "object.spec.containers.all(c, !c.image.endsWith(':latest'))"}]}}),
    );
    eventually("VAP listed", || {
        api.requests().iter().any(|r| {
            r.path == "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
                && r.is_watch()
        })
    })
    .await;
    assert_eq!(rx.borrow().rule_count(), 0, "no binding: not in effect");
    api.put(
        Coll::ValidatingAdmissionPolicyBindings,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "no-latest"},
               "spec": {"policyName": "no-latest", "validationActions": ["Deny"]}}),
    );
    eventually("VAP bound", || denied(&rx.borrow(), "quay.io/x/y:latest")).await;
    assert!(!denied(&rx.borrow(), "quay.io/x/y:1"));
    api.remove(Coll::ValidatingAdmissionPolicyBindings, "", "no-latest");
    eventually("binding removed", || rx.borrow().rule_count() == 0).await;
    task.abort();
}

/// A ValidatingAdmissionPolicy with `paramKind: ConfigMap`: its binding's
/// `paramRef` is read from the cluster, and a change of the ConfigMap alone
/// (no policy changes) reaches the merged set (issue 14).
#[tokio::test]
async fn admission_policy_params_are_read_from_the_cluster() {
    let api = FakeApi::start().await;
    let (src, fut) = policy_source(
        client(&api),
        PolicyWatchConfig {
            rediscover_every: Duration::from_millis(200),
            param_refresh: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let task = tokio::spawn(fut);
    let rx = src.policy.clone();
    let params = |registries: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "allowed-registries", "namespace": "policy-params"},
               "data": {"registries": registries}})
    };
    api.put(Coll::ConfigMaps, params("public.ecr.aws/"));
    api.put(
        Coll::ValidatingAdmissionPolicies,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "registries"},
               "spec": {"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                            "operations": ["CREATE"], "resources": ["pods"]}]},
                        "validations": [{"expression":
                            "object.spec.containers.all(c, params.data.registries.split(',').exists(r, c.image.startsWith(r)))"}]}}),
    );
    api.put(
        Coll::ValidatingAdmissionPolicyBindings,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "registries"},
               "spec": {"policyName": "registries", "validationActions": ["Deny"],
                        "paramRef": {"name": "allowed-registries", "namespace": "policy-params",
                                     "parameterNotFoundAction": "Deny"}}}),
    );
    eventually("VAP with params in force", || {
        denied(&rx.borrow(), "quay.io/x/y:1") && !denied(&rx.borrow(), "public.ecr.aws/x/y:1")
    })
    .await;
    assert!(
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/policy-params/configmaps/allowed-registries"),
        "the param ConfigMap was read from the API"
    );
    // Only the ConfigMap changes.
    api.put(Coll::ConfigMaps, params("public.ecr.aws/,quay.io/"));
    eventually("the new params reach the agent", || {
        !denied(&rx.borrow(), "quay.io/x/y:1")
    })
    .await;
    assert!(denied(&rx.borrow(), "docker.io/library/nginx:1"));
    task.abort();
}

#[tokio::test]
async fn validating_policy_crd_installed_later_is_discovered() {
    let api = FakeApi::start().await;
    api.set_validatingpolicy_installed(false);
    api.put(Coll::ValidatingPolicies, yaml_to_json(VPOL));
    let (src, fut) = policy_source(
        client(&api),
        PolicyWatchConfig {
            kinds: vec![PolicyKind::ValidatingPolicy],
            rediscover_every: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let task = tokio::spawn(fut);
    let rx = src.policy.clone();
    // v1, then v1beta1 and v1alpha1 are tried; none is served yet.
    eventually("all versions tried", || {
        let r = api.requests();
        ["v1", "v1beta1", "v1alpha1"].iter().all(|v| {
            r.iter()
                .any(|q| q.path == format!("/apis/policies.kyverno.io/{v}"))
        })
    })
    .await;
    assert!(!src.stats.validatingpolicy_installed.load(Ordering::Relaxed));
    api.set_validatingpolicy_installed(true);
    eventually("installed and loaded", || {
        denied(&rx.borrow(), "docker.io/library/nginx:1")
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn namespace_labels_decide_namespace_selectors_and_follow_relabels() {
    let api = FakeApi::start().await;
    let ns = |name: &str, env: &str| {
        json!({"metadata": {"name": name,
                            "labels": {"kubernetes.io/metadata.name": name, "env": env}}})
    };
    api.put(Coll::Namespaces, ns("shop", "prod"));
    api.put(Coll::Namespaces, ns("lab", "dev"));
    api.put(
        Coll::ValidatingAdmissionPolicies,
        json!({"metadata": {"name": "registries"},
               "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                            "operations": ["CREATE"], "resources": ["pods"]}]},
                        "validations": [{"expression":
                            "object.spec.containers.all(c, c.image.startsWith('public.ecr.aws/'))"}]}}),
    );
    api.put(
        Coll::ValidatingAdmissionPolicyBindings,
        json!({"metadata": {"name": "registries-prod"},
               "spec": {"policyName": "registries", "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {"env": "prod"}}}}}),
    );
    let (nss, fut) = namespace_source(client(&api));
    let ns_task = tokio::spawn(fut);
    let (pol, fut) = policy_source(client(&api), PolicyWatchConfig::default());
    let pol_task = tokio::spawn(fut);
    let rx = pol.policy.clone();
    eventually("namespaces listed and the policy loaded", || {
        nss.labels("lab").is_some() && rx.borrow().rule_count() > 0
    })
    .await;
    assert!(
        rx.borrow().unsupported().is_empty(),
        "{:?}",
        rx.borrow().unsupported()
    );
    assert_eq!(
        nss.labels("nope"),
        None,
        "an unknown namespace has no labels"
    );
    let allowed = |namespace: &str| {
        let labels = nss.labels(namespace);
        rx.borrow()
            .evaluate(
                "docker.io/library/nginx:1",
                &EvalContext::new(ContainerType::Container)
                    .with_namespace(Some(namespace))
                    .with_namespace_labels(labels.as_ref()),
            )
            .allowed
    };
    assert!(!allowed("shop"), "env=prod: the binding applies");
    assert!(allowed("lab"), "env=dev: not selected");
    assert!(!allowed("nope"), "labels not known: the policy applies");
    // The controller's lookup: a container whose Pod the agent does not
    // have is judged with the labels of the namespace CRI reports, as the
    // Pod's containers are (an empty Pod store here).
    let lookup = pod_lookup(
        kube::runtime::reflector::store::Writer::<Pod>::default().as_reader(),
        nss.clone(),
    );
    let policy = rx.borrow().clone();
    let judged = |namespace: Option<&str>| {
        let mut c = ContainerInfo::new("c1".into(), "cri");
        c.image_as_written = Some("docker.io/library/nginx:1".into());
        c.pod_namespace = namespace.map(str::to_string);
        c.pod_name = Some("gone".into());
        c.container_name = Some("main".into());
        decide(&policy, &c, lookup(&c).as_ref()).kernel
    };
    assert_eq!(judged(Some("lab")), KernelVerdict::Allow, "env=dev");
    assert_eq!(judged(Some("shop")), KernelVerdict::Deny, "env=prod");
    assert_eq!(
        judged(Some("nope")),
        KernelVerdict::Deny,
        "labels not known"
    );
    assert_eq!(judged(None), KernelVerdict::Deny, "no namespace: applies");
    // Relabel: the watch brings the new labels and bumps the generation.
    let generation = *nss.changes.borrow();
    api.put(Coll::Namespaces, ns("lab", "prod"));
    eventually("the relabel arrives", || {
        *nss.changes.borrow() > generation && !allowed("lab")
    })
    .await;
    assert!(
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces" && r.query.contains("watch=true")),
        "namespaces are watched, not polled"
    );
    ns_task.abort();
    pol_task.abort();
}
