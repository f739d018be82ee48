//! A local stand-in for the Kubernetes API server (plain HTTP on
//! 127.0.0.1:0) speaking the real paths and JSON that imagewarden's kube-rs
//! client uses:
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3DX[&limit=N]` list with
//!   `metadata.resourceVersion`; `?watch=1&resourceVersion=N&allowWatchBookmarks=true`
//!   streams `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` events as JSON lines;
//!   a resourceVersion older than the compaction point gets an `ERROR` event
//!   with a 410 `Expired` Status (or plain HTTP 410, see [`FakeApi::set_http_410`]).
//! - `DELETE /api/v1/namespaces/NS/pods/NAME`, `POST /api/v1/namespaces/NS/events`.
//! - Kyverno `clusterpolicies`/`policies`, `imagewarden.dev` `imagepolicies`:
//!   list/watch as above, 404 while "not installed".
//! - Kyverno `policies.kyverno.io/v1` `validatingpolicies` and
//!   `namespacedvalidatingpolicies` (404 while not installed), and
//!   `admissionregistration.k8s.io/v1` `validatingadmissionpolicies` and
//!   `validatingadmissionpolicybindings` (always served, as since 1.30):
//!   list/watch as above.
//! - wgpolicyk8s.io `policyreports`: GET/POST/PUT by name.
//! - Discovery: `/api`, `/apis`, `/apis/GROUP/VERSION`, `/version`.
//!
//! [`FakeApi::down`] closes every open connection and refuses new ones
//! (accepts and drops them at once); [`FakeApi::up`] serves again.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

/// A collection the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Coll {
    Pods,
    ClusterPolicies,
    Policies,
    ImagePolicies,
    PolicyReports,
    ValidatingPolicies,
    NamespacedValidatingPolicies,
    ValidatingAdmissionPolicies,
    ValidatingAdmissionPolicyBindings,
    /// `GET /api/v1/namespaces/NS/configmaps/NAME` only (Kyverno's ConfigMap).
    ConfigMaps,
    /// Cluster-scoped: `GET /api/v1/namespaces` (list and watch).
    Namespaces,
}

impl Coll {
    fn list_kind(self) -> &'static str {
        match self {
            Coll::Pods => "PodList",
            Coll::ClusterPolicies => "ClusterPolicyList",
            Coll::Policies => "PolicyList",
            Coll::ImagePolicies => "ImagePolicyList",
            Coll::PolicyReports => "PolicyReportList",
            Coll::ValidatingPolicies => "ValidatingPolicyList",
            Coll::NamespacedValidatingPolicies => "NamespacedValidatingPolicyList",
            Coll::ValidatingAdmissionPolicies => "ValidatingAdmissionPolicyList",
            Coll::ValidatingAdmissionPolicyBindings => "ValidatingAdmissionPolicyBindingList",
            Coll::ConfigMaps => "ConfigMapList",
            Coll::Namespaces => "NamespaceList",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Coll::Pods => "Pod",
            Coll::ClusterPolicies => "ClusterPolicy",
            Coll::Policies => "Policy",
            Coll::ImagePolicies => "ImagePolicy",
            Coll::PolicyReports => "PolicyReport",
            Coll::ValidatingPolicies => "ValidatingPolicy",
            Coll::NamespacedValidatingPolicies => "NamespacedValidatingPolicy",
            Coll::ValidatingAdmissionPolicies => "ValidatingAdmissionPolicy",
            Coll::ValidatingAdmissionPolicyBindings => "ValidatingAdmissionPolicyBinding",
            Coll::ConfigMaps => "ConfigMap",
            Coll::Namespaces => "Namespace",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Coll::Pods | Coll::ConfigMaps | Coll::Namespaces => "v1",
            Coll::ClusterPolicies | Coll::Policies => "kyverno.io/v1",
            Coll::ImagePolicies => "imagewarden.dev/v1alpha1",
            Coll::PolicyReports => "wgpolicyk8s.io/v1alpha2",
            Coll::ValidatingPolicies | Coll::NamespacedValidatingPolicies => {
                "policies.kyverno.io/v1"
            }
            Coll::ValidatingAdmissionPolicies | Coll::ValidatingAdmissionPolicyBindings => {
                "admissionregistration.k8s.io/v1"
            }
        }
    }
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Raw query string (percent-encoded as sent).
    pub query: String,
    /// Decoded query parameters.
    pub params: BTreeMap<String, String>,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.params
            .get("watch")
            .is_some_and(|v| v == "1" || v == "true")
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Objects by collection and (namespace, name).
    objects: BTreeMap<Coll, BTreeMap<(String, String), Value>>,
    /// Watch history: (rv, collection, event type, object).
    history: Vec<(u64, Coll, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    http_410: bool,
    kyverno_installed: bool,
    imagepolicy_installed: bool,
    vpol_installed: bool,
    requests: Vec<Seen>,
    events: Vec<Value>,
    deleted_pods: Vec<(String, String)>,
    /// Bumped to end every open watch stream.
    watch_epoch: u64,
}

/// Handle to the running fake API server.
#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    st: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    up: watch::Sender<bool>,
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn field_matches(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let Some((k, v)) = term.split_once('=') else {
            return true;
        };
        let k = k.trim_end_matches('=');
        let got = match k {
            "spec.nodeName" => obj.pointer("/spec/nodeName"),
            "metadata.name" => obj.pointer("/metadata/name"),
            "metadata.namespace" => obj.pointer("/metadata/namespace"),
            _ => return true,
        };
        got.and_then(Value::as_str).unwrap_or("") == v
    })
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(v: impl Into<Bytes>) -> Body {
    Full::new(v.into()).boxed()
}

fn json_resp(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(v.to_string()))
        .unwrap()
}

fn status(code: u16, reason: &str, msg: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": msg, "reason": reason, "code": code})
}

fn not_found(msg: &str) -> Response<Body> {
    json_resp(StatusCode::NOT_FOUND, &status(404, "NotFound", msg))
}

/// A streaming body fed from a bounded channel (one watch's events; the
/// writer task waits when the client reads slowly).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

impl FakeApi {
    /// Starts the server on 127.0.0.1:0. Kyverno and ImagePolicy CRDs are
    /// installed.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API");
        let addr = listener.local_addr().unwrap();
        let st = State {
            rv: 100,
            kyverno_installed: true,
            imagepolicy_installed: true,
            vpol_installed: true,
            ..Default::default()
        };
        let (up, _) = watch::channel(true);
        let api = FakeApi {
            addr,
            st: Arc::new(Mutex::new(st)),
            changed: Arc::new(Notify::new()),
            up,
        };
        let a = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                if !*a.up.borrow() {
                    drop(sock); // down: refuse by closing at once
                    continue;
                }
                let a2 = a.clone();
                let mut up_rx = a.up.subscribe();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let a3 = a2.clone();
                        async move { Ok::<_, Infallible>(a3.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = up_rx.wait_for(|u| !*u) => {} // down: drop the connection
                    }
                });
            }
        });
        api
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig text pointing at this server (plain HTTP, no auth).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// Closes every connection and refuses new ones.
    pub fn down(&self) {
        self.up.send_replace(false);
        self.end_watches();
    }
    /// Serves again.
    pub fn up(&self) {
        self.up.send_replace(true);
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.st.lock().unwrap().requests.clone()
    }
    /// Events POSTed so far.
    pub fn events(&self) -> Vec<Value> {
        self.st.lock().unwrap().events.clone()
    }
    /// Pods DELETEd so far (namespace, name).
    pub fn deleted_pods(&self) -> Vec<(String, String)> {
        self.st.lock().unwrap().deleted_pods.clone()
    }
    /// Current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.st.lock().unwrap().rv
    }
    pub fn set_kyverno_installed(&self, v: bool) {
        self.st.lock().unwrap().kyverno_installed = v;
    }
    pub fn set_imagepolicy_installed(&self, v: bool) {
        self.st.lock().unwrap().imagepolicy_installed = v;
    }
    /// Whether Kyverno's `policies.kyverno.io/v1` group is served.
    pub fn set_validatingpolicy_installed(&self, v: bool) {
        self.st.lock().unwrap().vpol_installed = v;
    }
    /// Answer too-old resourceVersions with HTTP 410 rather than an ERROR event.
    pub fn set_http_410(&self, v: bool) {
        self.st.lock().unwrap().http_410 = v;
    }
    /// Stored object, if any.
    pub fn get(&self, coll: Coll, ns: &str, name: &str) -> Option<Value> {
        self.st
            .lock()
            .unwrap()
            .objects
            .get(&coll)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// Creates or replaces an object, recording ADDED/MODIFIED.
    pub fn put(&self, coll: Coll, mut obj: Value) -> u64 {
        let mut st = self.st.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj.pointer("/metadata/uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{name}-{rv}"));
        }
        obj["apiVersion"] = json!(coll.api_version());
        obj["kind"] = json!(coll.kind());
        let m = st.objects.entry(coll).or_default();
        let ty = if m.insert((ns, name), obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.history.push((rv, coll, ty, obj));
        drop(st);
        self.changed.notify_waiters();
        rv
    }

    /// Deletes an object, recording DELETED.
    pub fn remove(&self, coll: Coll, ns: &str, name: &str) -> Option<Value> {
        let mut st = self.st.lock().unwrap();
        let mut obj = st
            .objects
            .get_mut(&coll)?
            .remove(&(ns.to_string(), name.to_string()))?;
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push((rv, coll, "DELETED", obj.clone()));
        drop(st);
        self.changed.notify_waiters();
        Some(obj)
    }

    /// Sends a BOOKMARK at a new resourceVersion to the watches of `coll`.
    pub fn bookmark(&self, coll: Coll) -> u64 {
        let mut st = self.st.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let obj = json!({"kind": coll.kind(), "apiVersion": coll.api_version(),
            "metadata": {"resourceVersion": rv.to_string(),
                         "annotations": {"k8s.io/initial-events-end": "true"}}});
        st.history.push((rv, coll, "BOOKMARK", obj));
        drop(st);
        self.changed.notify_waiters();
        rv
    }

    /// Forgets history: every resourceVersion up to now is too old (410).
    pub fn compact(&self) {
        let mut st = self.st.lock().unwrap();
        st.compacted_below = st.rv + 1;
        st.history.clear();
    }

    /// Ends every open watch stream (the clients re-watch).
    pub fn end_watches(&self) {
        self.st.lock().unwrap().watch_epoch += 1;
        self.changed.notify_waiters();
    }

    fn record(&self, req: &Request<Incoming>) -> Seen {
        let q = req.uri().query().unwrap_or("").to_string();
        let seen = Seen {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            params: parse_query(&q),
            query: q,
        };
        self.st.lock().unwrap().requests.push(seen.clone());
        seen
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let seen = self.record(&req);
        let method = req.method().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let segs: Vec<&str> = seen.path.trim_matches('/').split('/').collect();
        let (kyverno, imagepolicy, vpol) = {
            let st = self.st.lock().unwrap();
            (
                st.kyverno_installed,
                st.imagepolicy_installed,
                st.vpol_installed,
            )
        };
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["version"]) => json_resp(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
            ),
            ("GET", ["api"]) => json_resp(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ),
            ("GET", ["apis"]) => {
                let mut groups = vec![
                    group("wgpolicyk8s.io", "v1alpha2"),
                    group("admissionregistration.k8s.io", "v1"),
                ];
                if vpol {
                    groups.push(group("policies.kyverno.io", "v1"));
                }
                if kyverno {
                    groups.push(group("kyverno.io", "v1"));
                }
                if imagepolicy {
                    groups.push(group("imagewarden.dev", "v1alpha1"));
                }
                json_resp(
                    StatusCode::OK,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                )
            }
            ("GET", ["api", "v1"]) => json_resp(
                StatusCode::OK,
                &resource_list("v1", &[("pods", "Pod", true), ("events", "Event", true)]),
            ),
            ("GET", ["apis", "kyverno.io", "v1"]) if kyverno => json_resp(
                StatusCode::OK,
                &resource_list(
                    "kyverno.io/v1",
                    &[
                        ("clusterpolicies", "ClusterPolicy", false),
                        ("policies", "Policy", true),
                    ],
                ),
            ),
            ("GET", ["apis", "imagewarden.dev", "v1alpha1"]) if imagepolicy => json_resp(
                StatusCode::OK,
                &resource_list(
                    "imagewarden.dev/v1alpha1",
                    &[("imagepolicies", "ImagePolicy", false)],
                ),
            ),
            ("GET", ["apis", "policies.kyverno.io", "v1"]) if vpol => json_resp(
                StatusCode::OK,
                &resource_list(
                    "policies.kyverno.io/v1",
                    &[
                        ("validatingpolicies", "ValidatingPolicy", false),
                        (
                            "namespacedvalidatingpolicies",
                            "NamespacedValidatingPolicy",
                            true,
                        ),
                    ],
                ),
            ),
            ("GET", ["apis", "admissionregistration.k8s.io", "v1"]) => json_resp(
                StatusCode::OK,
                &resource_list(
                    "admissionregistration.k8s.io/v1",
                    &[
                        (
                            "validatingadmissionpolicies",
                            "ValidatingAdmissionPolicy",
                            false,
                        ),
                        (
                            "validatingadmissionpolicybindings",
                            "ValidatingAdmissionPolicyBinding",
                            false,
                        ),
                    ],
                ),
            ),
            ("GET", ["apis", "policies.kyverno.io", "v1", "validatingpolicies"]) if vpol => {
                self.list_or_watch(Coll::ValidatingPolicies, None, &seen)
                    .await
            }
            ("GET", ["apis", "policies.kyverno.io", "v1", "namespacedvalidatingpolicies"])
                if vpol =>
            {
                self.list_or_watch(Coll::NamespacedValidatingPolicies, None, &seen)
                    .await
            }
            (
                "GET",
                ["apis", "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies"],
            ) => {
                self.list_or_watch(Coll::ValidatingAdmissionPolicies, None, &seen)
                    .await
            }
            (
                "GET",
                ["apis", "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings"],
            ) => {
                self.list_or_watch(Coll::ValidatingAdmissionPolicyBindings, None, &seen)
                    .await
            }
            ("GET", ["apis", "wgpolicyk8s.io", "v1alpha2"]) => json_resp(
                StatusCode::OK,
                &resource_list(
                    "wgpolicyk8s.io/v1alpha2",
                    &[("policyreports", "PolicyReport", true)],
                ),
            ),
            ("GET", ["api", "v1", "pods"]) => self.list_or_watch(Coll::Pods, None, &seen).await,
            ("GET", ["api", "v1", "namespaces"]) => {
                self.list_or_watch(Coll::Namespaces, None, &seen).await
            }
            ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
                self.list_or_watch(Coll::Pods, Some(ns), &seen).await
            }
            ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
                match self.get(Coll::Pods, ns, name) {
                    Some(p) => json_resp(StatusCode::OK, &p),
                    None => not_found("pod not found"),
                }
            }
            ("GET", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
                match self.get(Coll::ConfigMaps, ns, name) {
                    Some(p) => json_resp(StatusCode::OK, &p),
                    None => not_found(&format!("configmaps \"{name}\" not found")),
                }
            }
            ("DELETE", ["api", "v1", "namespaces", ns, "pods", name]) => {
                match self.remove(Coll::Pods, ns, name) {
                    Some(p) => {
                        self.st
                            .lock()
                            .unwrap()
                            .deleted_pods
                            .push((ns.to_string(), name.to_string()));
                        json_resp(StatusCode::OK, &p)
                    }
                    None => not_found(&format!("pods \"{name}\" not found")),
                }
            }
            ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
                let mut ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if ev
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n != *ns)
                {
                    return json_resp(
                        StatusCode::BAD_REQUEST,
                        &status(400, "BadRequest", "namespace mismatch"),
                    );
                }
                ev["metadata"]["resourceVersion"] = json!("1");
                self.st.lock().unwrap().events.push(ev.clone());
                json_resp(StatusCode::CREATED, &ev)
            }
            ("GET", ["apis", "kyverno.io", "v1", "clusterpolicies"]) if kyverno => {
                self.list_or_watch(Coll::ClusterPolicies, None, &seen).await
            }
            ("GET", ["apis", "kyverno.io", "v1", "policies"]) if kyverno => {
                self.list_or_watch(Coll::Policies, None, &seen).await
            }
            ("GET", ["apis", "imagewarden.dev", "v1alpha1", "imagepolicies"]) if imagepolicy => {
                self.list_or_watch(Coll::ImagePolicies, None, &seen).await
            }
            (
                "GET",
                ["apis", "wgpolicyk8s.io", "v1alpha2", "namespaces", ns, "policyreports", name],
            ) => match self.get(Coll::PolicyReports, ns, name) {
                Some(p) => json_resp(StatusCode::OK, &p),
                None => not_found("policyreport not found"),
            },
            ("POST", ["apis", "wgpolicyk8s.io", "v1alpha2", "namespaces", ns, "policyreports"]) => {
                let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if self.get(Coll::PolicyReports, ns, &name).is_some() {
                    return json_resp(
                        StatusCode::CONFLICT,
                        &status(409, "AlreadyExists", "exists"),
                    );
                }
                obj["metadata"]["namespace"] = json!(ns);
                self.put(Coll::PolicyReports, obj);
                json_resp(
                    StatusCode::CREATED,
                    &self.get(Coll::PolicyReports, ns, &name).unwrap(),
                )
            }
            (
                "PUT",
                ["apis", "wgpolicyk8s.io", "v1alpha2", "namespaces", ns, "policyreports", name],
            ) => {
                let Some(cur) = self.get(Coll::PolicyReports, ns, name) else {
                    return not_found("policyreport not found");
                };
                let obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if obj.pointer("/metadata/resourceVersion")
                    != cur.pointer("/metadata/resourceVersion")
                {
                    return json_resp(
                        StatusCode::CONFLICT,
                        &status(409, "Conflict", "resourceVersion mismatch"),
                    );
                }
                self.put(Coll::PolicyReports, obj);
                json_resp(
                    StatusCode::OK,
                    &self.get(Coll::PolicyReports, ns, name).unwrap(),
                )
            }
            _ => not_found(&format!(
                "the server could not find the requested resource ({} {})",
                method, seen.path
            )),
        }
    }

    async fn list_or_watch(&self, coll: Coll, ns: Option<&str>, seen: &Seen) -> Response<Body> {
        let selector = seen.params.get("fieldSelector").cloned();
        let ns = ns.map(str::to_string);
        if !seen.is_watch() {
            let st = self.st.lock().unwrap();
            let limit: usize = seen
                .params
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            let items: Vec<Value> = st
                .objects
                .get(&coll)
                .map(|m| {
                    m.iter()
                        .filter(|((n, _), _)| ns.as_ref().is_none_or(|w| w == n))
                        .map(|(_, o)| o.clone())
                        .filter(|o| field_matches(o, selector.as_ref()))
                        .take(limit)
                        .collect()
                })
                .unwrap_or_default();
            return json_resp(
                StatusCode::OK,
                &json!({"kind": coll.list_kind(), "apiVersion": coll.api_version(),
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            );
        }
        let from: u64 = seen
            .params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = seen
            .params
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let (tx, rx) = mpsc::channel::<Bytes>(16); // one watch: a few events in flight
        let (too_old, http_410, epoch) = {
            let st = self.st.lock().unwrap();
            (
                from != 0 && from < st.compacted_below,
                st.http_410,
                st.watch_epoch,
            )
        };
        if too_old && http_410 {
            return json_resp(
                StatusCode::GONE,
                &status(410, "Expired", "too old resource version"),
            );
        }
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(ChannelBody(rx).boxed())
            .unwrap();
        if too_old {
            let ev = json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {from}"))});
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from(format!("{ev}\n"))).await;
            });
            return resp;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut last = from;
            loop {
                let notified = me.changed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let batch: Vec<Value> = {
                    let st = me.st.lock().unwrap();
                    if st.watch_epoch != epoch {
                        return;
                    }
                    let mut out = Vec::new();
                    for (rv, c, ty, obj) in &st.history {
                        if *rv <= last || *c != coll {
                            continue;
                        }
                        last = *rv;
                        if *ty == "BOOKMARK" {
                            if bookmarks {
                                out.push(json!({"type": ty, "object": obj}));
                            }
                            continue;
                        }
                        let in_ns = ns.as_ref().is_none_or(|w| {
                            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(w)
                        });
                        if in_ns && field_matches(obj, selector.as_ref()) {
                            out.push(json!({"type": ty, "object": obj}));
                        }
                    }
                    out
                };
                for ev in batch {
                    if tx.send(Bytes::from(format!("{ev}\n"))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        });
        resp
    }
}

fn group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

fn resource_list(gv: &str, resources: &[(&str, &str, bool)]) -> Value {
    let rs: Vec<Value> = resources
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced,
                   "kind": kind, "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": rs})
}
