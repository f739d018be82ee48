//! Actions through the API server on cross-check findings: a core/v1 Event
//! on the Pod (or the Node when no pod is known), an optional pod DELETE
//! (off by default, never in exempt namespaces), an optional PolicyReport
//! (`wgpolicyk8s.io/v1alpha2`, one per namespace), and what a finding gets
//! under the agent's `--mode` (there is no per-namespace override: a
//! Namespace annotation that loosens enforcement would be a lever for
//! whoever can edit the Namespace).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::Client;
use serde_json::json;

use crate::cli::Mode;
use crate::crosscheck::KubeFinding;
use crate::finding::{FindingAction, FindingVerdict, ReasonKind};
use imagewarden_policy::Action;

/// `source.component` / `reportingComponent` of the Events.
pub const COMPONENT: &str = "imagewarden";

/// Errors of the API actions. [`ActionError::kind`] is a stable metric label.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The API server refused or failed the call.
    #[error("{action}: {source}")]
    Api {
        /// `event`, `delete_pod` or `policy_report`.
        action: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The finding has no pod (or namespace) to act on.
    #[error("{0}: the finding names no pod")]
    NoPod(&'static str),
}

/// What to do about one finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Print the JSON finding, post an Event, count it.
    pub alert: bool,
    /// Stop the container: `cgroup.kill` of its cgroup and a DENY verdict
    /// for later execs (`Controller::kill_container`).
    pub kill: bool,
    /// Delete the pod through the API.
    pub delete_pod: bool,
    /// The `action` the JSON finding gets: `alerted` or `killed`.
    pub action: FindingAction,
}

/// Options for [`plan`].
#[derive(Debug, Clone, Default)]
pub struct ActionOptions {
    /// Delete pods with killable findings (off by default).
    pub delete_pods: bool,
    /// Namespaces where nothing is ever killed or deleted.
    pub exempt_namespaces: Vec<String>,
}

/// Decides the action for a finding: audit alerts; enforce also kills
/// `deny` findings whose rule is `Enforce` (a rule in `Audit` never kills),
/// never in exempt namespaces; suspicious-only findings (`not-in-api`,
/// `spec-status-mismatch`, a tag that moved) only alert.
pub fn plan(f: &KubeFinding, mode: Mode, opts: &ActionOptions) -> Plan {
    let ns = f.namespace.as_deref();
    let exempt = ns.is_some_and(|n| opts.exempt_namespaces.iter().any(|e| e == n));
    let killable = f.verdict == FindingVerdict::Deny
        && matches!(
            f.reason,
            ReasonKind::UntrustedImage | ReasonKind::InvalidReference | ReasonKind::ImageDrift
        )
        && f.policy_action != Some(Action::Audit);
    let kill = killable && !exempt && mode == Mode::Enforce;
    Plan {
        alert: true,
        kill,
        delete_pod: kill && opts.delete_pods && f.pod.is_some() && ns.is_some(),
        action: if kill {
            FindingAction::Killed
        } else {
            FindingAction::Alerted
        },
    }
}

fn event_name(base: &str, now: chrono_like::Now) -> String {
    // Like the kubelet's: `<object>.<hex nanos>`; names stay unique.
    let base: String = base.chars().take(200).collect();
    format!("{base}.{:x}", now.nanos)
}

mod chrono_like {
    /// Wall-clock time as Kubernetes wants it.
    #[derive(Clone, Copy)]
    pub struct Now {
        pub nanos: u128,
        pub secs: i64,
        pub subsec_micros: u32,
    }
    pub fn now() -> Now {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Now {
            nanos: d.as_nanos(),
            secs: d.as_secs() as i64,
            subsec_micros: d.subsec_micros(),
        }
    }
}

fn k8s_time(now: chrono_like::Now) -> Option<(Time, MicroTime)> {
    let ts = k8s_openapi::jiff::Timestamp::new(now.secs, (now.subsec_micros * 1000) as i32).ok()?;
    Some((Time(ts), MicroTime(ts)))
}

/// The core/v1 Event for a finding: on the Pod when there is one, else on
/// the Node (`not-in-api` containers started outside Kubernetes).
pub fn event_for(f: &KubeFinding, node: &str, action: FindingAction) -> Event {
    let now = chrono_like::now();
    let (involved, ns, base) = match (&f.pod, &f.namespace) {
        (Some(pod), Some(ns)) if f.source != crate::crosscheck::Source::Runtime => (
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                namespace: Some(ns.clone()),
                uid: f.pod_uid.clone(),
                field_path: f.container_name.as_ref().map(|c| {
                    let field = f.container_type.map(|t| t.field()).unwrap_or("containers");
                    format!("spec.{field}{{{c}}}")
                }),
                ..Default::default()
            },
            ns.clone(),
            pod.clone(),
        ),
        _ => (
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                uid: Some(node.to_string()),
                ..Default::default()
            },
            "default".to_string(),
            node.to_string(),
        ),
    };
    let times = k8s_time(now);
    let mut message = format!(
        "{}: {} (image {}, action {action})",
        f.reason.as_str(),
        f.message,
        f.image.as_deref().unwrap_or("unknown")
    );
    if message.len() > 1024 {
        let mut cut = 1024;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(&base, now)),
            namespace: Some(ns),
            ..Default::default()
        },
        involved_object: involved,
        reason: Some(f.reason.event_reason().to_string()),
        message: Some(message),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.to_string()),
        }),
        first_timestamp: times.as_ref().map(|t| t.0.clone()),
        last_timestamp: times.as_ref().map(|t| t.0.clone()),
        event_time: times.map(|t| t.1),
        count: Some(1),
        action: Some(action.as_str().to_string()),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(format!("{COMPONENT}-{node}")),
        ..Default::default()
    }
}

/// POSTs the Event for a finding.
pub async fn post_event(
    client: &Client,
    f: &KubeFinding,
    node: &str,
    action: FindingAction,
) -> Result<(), ActionError> {
    let ev = event_for(f, node, action);
    let ns = ev
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &ev)
        .await
        .map(|_| ())
        .map_err(|source| ActionError::Api {
            action: "event",
            source,
        })
}

/// Whether a pod was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// DELETE accepted.
    Deleted,
    /// Already gone (404).
    Gone,
    /// Not done: the namespace is exempt.
    Exempt,
}

/// DELETEs a pod unless its namespace is exempt.
pub async fn delete_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    exempt_namespaces: &[String],
) -> Result<DeleteOutcome, ActionError> {
    if exempt_namespaces.iter().any(|e| e == namespace) {
        return Ok(DeleteOutcome::Exempt);
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(DeleteOutcome::Deleted),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(DeleteOutcome::Gone),
        Err(source) => Err(ActionError::Api {
            action: "delete_pod",
            source,
        }),
    }
}

fn policy_report_resource() -> ApiResource {
    ApiResource {
        group: "wgpolicyk8s.io".into(),
        version: "v1alpha2".into(),
        api_version: "wgpolicyk8s.io/v1alpha2".into(),
        kind: "PolicyReport".into(),
        plural: "policyreports".into(),
    }
}

/// Name of the agent's PolicyReport in a namespace (one per node, so agents
/// on different nodes do not overwrite each other).
pub fn policy_report_name(node: &str) -> String {
    format!("imagewarden-{node}")
}

/// The PolicyReport for one namespace's findings (all `fail` results; a
/// namespace without findings gets an empty report).
pub fn policy_report(namespace: &str, node: &str, findings: &[&KubeFinding]) -> serde_json::Value {
    let now = chrono_like::now();
    let results: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            let severity = match f.verdict {
                FindingVerdict::Deny => "high",
                FindingVerdict::Allow | FindingVerdict::Unknown => "medium",
            };
            let mut props = serde_json::Map::new();
            for (k, v) in [
                ("container", f.container_name.clone()),
                (
                    "containerType",
                    f.container_type.map(|t| t.as_str().to_string()),
                ),
                ("containerID", f.container_id.clone()),
                ("image", f.image.clone()),
                ("imageDigest", f.image_digest.clone()),
                ("node", Some(node.to_string())),
                ("source", Some(format!("{:?}", f.source).to_lowercase())),
            ] {
                if let Some(v) = v {
                    props.insert(k.into(), json!(v));
                }
            }
            json!({
                "source": COMPONENT,
                "policy": f.policy.clone().unwrap_or_else(|| COMPONENT.to_string()),
                "rule": f.rule.clone().unwrap_or_else(|| f.reason.as_str().to_string()),
                "category": "Runtime Image Security",
                "severity": severity,
                "result": "fail",
                "scored": true,
                "message": f.message,
                "timestamp": {"seconds": now.secs, "nanos": 0},
                "resources": [{
                    "apiVersion": "v1", "kind": "Pod",
                    "name": f.pod.clone().unwrap_or_default(),
                    "namespace": namespace,
                    "uid": f.pod_uid.clone().unwrap_or_default(),
                }],
                "properties": props,
            })
        })
        .collect();
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": policy_report_name(node),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": COMPONENT, "imagewarden.dev/node": node},
        },
        "scope": {"apiVersion": "v1", "kind": "Node", "name": node},
        "summary": {"pass": 0, "fail": results.len(), "warn": 0, "error": 0, "skip": 0},
        "results": results,
    })
}

/// Creates or replaces the namespace's PolicyReport (GET, then POST or PUT
/// with the current resourceVersion).
pub async fn apply_policy_report(
    client: &Client,
    namespace: &str,
    node: &str,
    findings: &[&KubeFinding],
) -> Result<(), ActionError> {
    let ar = policy_report_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let body = policy_report(namespace, node, findings);
    let err = |source| ActionError::Api {
        action: "policy_report",
        source,
    };
    let mut obj: DynamicObject =
        serde_json::from_value(body).map_err(|e| err(kube::Error::SerdeError(e)))?;
    let name = policy_report_name(node);
    match api.get_opt(&name).await.map_err(err)? {
        None => {
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(err)?;
        }
        Some(cur) => {
            obj.metadata.resource_version = cur.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &obj)
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crosscheck::Source;
    use imagewarden_policy::ContainerType;

    fn finding(
        reason: ReasonKind,
        verdict: FindingVerdict,
        ns: &str,
        policy_action: Option<Action>,
    ) -> KubeFinding {
        let mut f = base();
        f.reason = reason;
        f.verdict = verdict;
        f.namespace = Some(ns.into());
        f.policy_action = policy_action;
        f
    }

    fn base() -> KubeFinding {
        let api = include_str!("../../testdata/kube/api-pods.json");
        let v: serde_json::Value = serde_json::from_str(api).unwrap();
        let pods: Vec<Pod> = serde_json::from_value(v["items"].clone()).unwrap();
        let set = imagewarden_policy::load_policy_str(
            "apiVersion: imagewarden.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - name: r\n    allow:\n    - registry: quay.io\n",
            "t",
        )
        .unwrap();
        let out = crate::crosscheck::crosscheck(&crate::crosscheck::CrossCheckInput {
            api_pods: Some(pods.iter().collect()),
            kubelet_pods: None,
            runtime: &[],
            policy: &set,
            previous: &Default::default(),
            namespace_labels: &Default::default(),
        });
        out.findings
            .into_iter()
            .find(|f| {
                f.pod.as_deref() == Some("web-7d9c6b8f5-x2x9k")
                    && f.container_type == Some(ContainerType::Init)
            })
            .unwrap()
    }

    #[test]
    fn modes_and_plans() {
        let opts = ActionOptions {
            delete_pods: true,
            exempt_namespaces: vec!["kube-system".into()],
        };
        let p = plan(
            &finding(
                ReasonKind::UntrustedImage,
                FindingVerdict::Deny,
                "prod",
                Some(Action::Enforce),
            ),
            Mode::Enforce,
            &opts,
        );
        assert!(p.kill && p.delete_pod && p.alert);
        // Audit mode: the same finding only alerts.
        let audit = plan(
            &finding(
                ReasonKind::UntrustedImage,
                FindingVerdict::Deny,
                "prod",
                Some(Action::Enforce),
            ),
            Mode::Audit,
            &opts,
        );
        assert!(!audit.kill && !audit.delete_pod && audit.alert);
        assert_eq!(audit.action, FindingAction::Alerted);
        assert_eq!(p.action, FindingAction::Killed);
        // Audit rule, non-deny reasons: alert only.
        for f in [
            finding(
                ReasonKind::UntrustedImage,
                FindingVerdict::Deny,
                "prod",
                Some(Action::Audit),
            ),
            finding(ReasonKind::NotInApi, FindingVerdict::Unknown, "prod", None),
            finding(
                ReasonKind::SpecStatusMismatch,
                FindingVerdict::Unknown,
                "prod",
                None,
            ),
            finding(
                ReasonKind::ImageDrift,
                FindingVerdict::Unknown,
                "prod",
                None,
            ),
        ] {
            let p = plan(&f, Mode::Enforce, &opts);
            assert!(!p.kill && !p.delete_pod, "{f:?}");
            assert_eq!(p.action, FindingAction::Alerted);
        }
        // An exempt namespace: never killed.
        assert!(
            !plan(
                &finding(
                    ReasonKind::UntrustedImage,
                    FindingVerdict::Deny,
                    "kube-system",
                    Some(Action::Enforce)
                ),
                Mode::Enforce,
                &opts
            )
            .kill
        );
        // Deleting stays off unless asked.
        let p = plan(
            &finding(ReasonKind::ImageDrift, FindingVerdict::Deny, "prod", None),
            Mode::Enforce,
            &ActionOptions::default(),
        );
        assert!(p.kill && !p.delete_pod);
    }

    #[test]
    fn event_shape() {
        let f = base();
        let ev = event_for(&f, "node-a", FindingAction::Alerted);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("prod"));
        assert!(ev
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("web-7d9c6b8f5-x2x9k."));
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(
            ev.involved_object.uid.as_deref(),
            Some("6f1c2a9e-1111-4c3b-9d7e-000000000001")
        );
        assert_eq!(
            ev.involved_object.field_path.as_deref(),
            Some("spec.initContainers{setup}")
        );
        assert_eq!(ev.reason.as_deref(), Some("UntrustedImage"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        let src = ev.source.as_ref().unwrap();
        assert_eq!(src.component.as_deref(), Some("imagewarden"));
        assert_eq!(src.host.as_deref(), Some("node-a"));
        // A container outside Kubernetes: the Event goes on the Node.
        let mut orphan = f.clone();
        orphan.source = Source::Runtime;
        let ev = event_for(&orphan, "node-a", FindingAction::Alerted);
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn policy_report_shape() {
        let f = base();
        let r = policy_report("prod", "node-a", &[&f]);
        assert_eq!(r["metadata"]["name"], "imagewarden-node-a");
        assert_eq!(r["summary"]["fail"], 1);
        let res = &r["results"][0];
        assert_eq!(res["policy"], "p");
        assert_eq!(res["rule"], "r");
        assert_eq!(res["result"], "fail");
        assert_eq!(res["resources"][0]["kind"], "Pod");
        assert_eq!(res["resources"][0]["name"], "web-7d9c6b8f5-x2x9k");
        assert_eq!(res["properties"]["containerType"], "init");
    }
}
