//! The kubelet source against a local HTTPS stand-in for `/pods`
//! (tests/support/fakekubelet.rs: rcgen CA and serving certificate, rustls):
//! static pods read with the CA and the bearer token, a wrong CA refused,
//! the insecure flag, and the `up` flag through an outage.
mod support;

use std::time::{Duration, Instant};

use imagewarden::sources::kubelet::{kubelet_source, KubeletClient, KubeletConfig, KubeletError};
use serde_json::Value;
use support::fakekubelet::FakeKubelet;

const KUBELET_PODS: &str = include_str!("../../testdata/kube/kubelet-pods.json");

fn items() -> Vec<Value> {
    let v: Value = serde_json::from_str(KUBELET_PODS).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn cfg(k: &FakeKubelet, tag: &str) -> KubeletConfig {
    let dir = std::env::temp_dir().join(format!("iw-kubelet-{}-{tag}", std::process::id()));
    let (ca, token) = k.write_files(&dir);
    KubeletConfig {
        url: k.url(),
        token_file: Some(token),
        ca_file: Some(ca),
        tls_server_name: None,
        insecure_skip_tls_verify: false,
        timeout: Duration::from_secs(5),
        interval: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn static_pods_are_read_over_https_with_the_ca_and_token() {
    let k = FakeKubelet::start("s3cr3t-token").await;
    k.set_pods(items());
    let client = KubeletClient::new(&cfg(&k, "ok")).expect("client");
    let pods = client.pods().await.expect("GET /pods");
    assert_eq!(pods.len(), 3);
    let rogue = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("node-helper-node-a"))
        .expect("the static pod without mirror is listed");
    let ann = rogue.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["kubernetes.io/config.source"], "file");
    assert_eq!(
        rogue.metadata.uid.as_deref(),
        Some(ann["kubernetes.io/config.hash"].as_str())
    );
    assert_eq!(k.auth_results(), vec![true], "the bearer token was sent");
}

#[tokio::test]
async fn wrong_ca_is_refused_and_insecure_flag_skips_verification() {
    let k = FakeKubelet::start("t").await;
    let other = FakeKubelet::start("t").await;
    k.set_pods(items());
    let mut c = cfg(&k, "wrongca");
    let (other_ca, _) = other.write_files(
        &std::env::temp_dir().join(format!("iw-kubelet-{}-other", std::process::id())),
    );
    c.ca_file = Some(other_ca);
    let err = KubeletClient::new(&c)
        .unwrap()
        .pods()
        .await
        .expect_err("a certificate from another CA");
    assert!(
        matches!(err, KubeletError::Request { .. }),
        "a TLS failure is a request error: {err:?}"
    );
    assert!(
        k.auth_results().is_empty(),
        "no request reached the handler"
    );
    c.insecure_skip_tls_verify = true;
    assert_eq!(
        KubeletClient::new(&c)
            .unwrap()
            .pods()
            .await
            .expect("insecure")
            .len(),
        3
    );
}

#[tokio::test]
async fn kubelet_up_flag_goes_down_and_recovers() {
    let k = FakeKubelet::start("t").await;
    k.set_pods(items());
    let c = cfg(&k, "updown");
    let (src, fut) = kubelet_source(KubeletClient::new(&c).unwrap(), c.interval);
    let task = tokio::spawn(fut);
    let wait = |what: &'static str, f: Box<dyn Fn() -> bool>| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let h = src.health.clone();
    wait("up", Box::new(move || h.is_up())).await;
    assert_eq!(src.pods.borrow().len(), 3);
    k.down();
    let h = src.health.clone();
    wait("down", Box::new(move || !h.is_up())).await;
    assert_eq!(
        src.pods.borrow().len(),
        3,
        "the last answer stays while down"
    );
    k.set_pods(items()[..1].to_vec());
    k.up();
    let rx = src.pods.clone();
    wait(
        "recovered with new pods",
        Box::new(move || rx.borrow().len() == 1),
    )
    .await;
    assert!(src.health.is_up());
    task.abort();
}
