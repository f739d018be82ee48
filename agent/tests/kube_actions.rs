//! Actions through the API (Events, pod DELETE, PolicyReport) against the
//! local API stand-in, and the end-to-end path from pods on the fake API to
//! a cross-check finding to a posted Event.
mod support;

use std::time::Duration;

use imagewarden::cli::Mode;
use imagewarden::crosscheck::{crosscheck, CrossCheckInput, Observations};
use imagewarden::finding::ReasonKind;
use imagewarden::kube_actions::{
    apply_policy_report, delete_pod, plan, post_event, ActionOptions, DeleteOutcome,
};
use imagewarden::sources::kube::pod_source_with_probe;
use kube::{Client, Config};
use serde_json::Value;
use support::fakeapi::{Coll, FakeApi};

const API_PODS: &str = include_str!("../../testdata/kube/api-pods.json");
const SEED: &str = include_str!("../../deploy/policies/restrict-registries.yaml");

fn client(api: &FakeApi) -> Client {
    Client::try_from(Config::new(api.url().parse().unwrap())).unwrap()
}

#[tokio::test]
async fn findings_from_watched_pods_become_events_reports_and_deletes() {
    let api = FakeApi::start().await;
    let v: Value = serde_json::from_str(API_PODS).unwrap();
    for p in v["items"].as_array().unwrap() {
        api.put(Coll::Pods, p.clone());
    }
    let c = client(&api);
    let (src, fut) = pod_source_with_probe(c.clone(), "node-a", Duration::from_millis(200));
    let task = tokio::spawn(fut);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while src.store.state().len() < 7 {
        assert!(std::time::Instant::now() < deadline, "pods not listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let policy = imagewarden_policy::load_policy_str(SEED, "seed").unwrap();
    let pods = src.store.state();
    let out = crosscheck(&CrossCheckInput {
        api_pods: Some(pods.iter().map(|p| p.as_ref()).collect()),
        kubelet_pods: None,
        runtime: &[],
        policy: &policy,
        previous: &Observations::default(),
        namespace_labels: &Default::default(),
    });
    let f = out
        .findings
        .iter()
        .find(|f| {
            f.reason == ReasonKind::UntrustedImage
                && f.pod.as_deref() == Some("kube-apiserver-node-a")
        })
        .expect("the seed denies registry.k8s.io");

    let opts = ActionOptions {
        delete_pods: true,
        exempt_namespaces: vec!["kube-system".into()],
    };
    let p = plan(f, Mode::Enforce, &opts);
    assert!(!p.kill && !p.delete_pod, "kube-system is exempt");
    post_event(&c, f, "node-a", p.action)
        .await
        .expect("POST event");
    let evs = api.events();
    assert_eq!(evs.len(), 1);
    let ev = &evs[0];
    assert_eq!(ev["reason"], "UntrustedImage");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["kind"], "Pod");
    assert_eq!(ev["involvedObject"]["name"], "kube-apiserver-node-a");
    assert_eq!(ev["involvedObject"]["namespace"], "kube-system");
    assert_eq!(ev["source"]["component"], "imagewarden");
    assert_eq!(ev["source"]["host"], "node-a");
    assert!(api
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path == "/api/v1/namespaces/kube-system/events"));

    // Pod DELETE: refused in an exempt namespace, done elsewhere, 404 is "gone".
    assert_eq!(
        delete_pod(
            &c,
            "kube-system",
            "kube-apiserver-node-a",
            &opts.exempt_namespaces
        )
        .await
        .unwrap(),
        DeleteOutcome::Exempt
    );
    assert_eq!(
        delete_pod(&c, "prod", "pinned", &opts.exempt_namespaces)
            .await
            .unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        delete_pod(&c, "prod", "pinned", &opts.exempt_namespaces)
            .await
            .unwrap(),
        DeleteOutcome::Gone
    );
    assert_eq!(
        api.deleted_pods(),
        vec![("prod".to_string(), "pinned".to_string())]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while src.store.state().len() != 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "DELETED not seen by the watcher"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // PolicyReport: created, then replaced.
    let ks: Vec<_> = out
        .findings
        .iter()
        .filter(|f| f.namespace.as_deref() == Some("kube-system"))
        .collect();
    apply_policy_report(&c, "kube-system", "node-a", &ks)
        .await
        .expect("create report");
    let r = api
        .get(Coll::PolicyReports, "kube-system", "imagewarden-node-a")
        .expect("stored");
    assert_eq!(r["summary"]["fail"], ks.len());
    apply_policy_report(&c, "kube-system", "node-a", &[])
        .await
        .expect("replace report");
    let r = api
        .get(Coll::PolicyReports, "kube-system", "imagewarden-node-a")
        .unwrap();
    assert_eq!(r["summary"]["fail"], 0);
    assert!(api.requests().iter().any(|r| r.method == "PUT"));
    task.abort();
}
