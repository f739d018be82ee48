//! Params of the cluster's ValidatingAdmissionPolicies (issue 14): the
//! objects a binding's `paramRef` selects, of the kind its policy's
//! `paramKind` names (ConfigMaps, or any listed kind), read from the API
//! server and compiled together with the policies and bindings, as the
//! policy compiler does with params found in a policy file set.
//!
//! A `paramRef` names a namespace (a `paramRef` without one needs the
//! request's namespace, which the compiler refuses by name) and either an
//! object `name` or a label `selector`. What cannot be read (missing, not
//! allowed by RBAC, unknown kind) is logged; the compiler then applies the
//! binding's `parameterNotFoundAction`, as admission would.
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::Client;
use serde_json::Value;
use tracing::warn;

/// What one binding asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParamRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    /// An object by name, or...
    pub name: Option<String>,
    /// ...the objects a label selector matches (`a=b,c in (d)` form).
    pub selector: Option<String>,
}

/// The `paramRef`s of the bindings in `docs` (a multi-document YAML text of
/// ValidatingAdmissionPolicies and bindings), each with its policy's
/// `paramKind`. Sorted and deduplicated.
pub fn param_refs(docs: &str) -> Vec<ParamRef> {
    let objs: Vec<Value> = docs
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d.trim_start_matches("---")).ok())
        .filter(|v| v.is_object())
        .collect();
    let kind_of = |policy: &str| {
        objs.iter().find_map(|o| {
            (o["kind"] == "ValidatingAdmissionPolicy" && o["metadata"]["name"] == policy)
                .then(|| o["spec"]["paramKind"].clone())
                .filter(|pk| pk.is_object())
        })
    };
    let mut out = Vec::new();
    for b in objs
        .iter()
        .filter(|o| o["kind"] == "ValidatingAdmissionPolicyBinding")
    {
        let r = &b["spec"]["paramRef"];
        let (Some(policy), true) = (b["spec"]["policyName"].as_str(), r.is_object()) else {
            continue;
        };
        let Some(pk) = kind_of(policy) else { continue };
        let (Some(api_version), Some(kind), Some(namespace)) = (
            pk["apiVersion"].as_str(),
            pk["kind"].as_str(),
            r["namespace"].as_str(),
        ) else {
            continue;
        };
        out.push(ParamRef {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: r["name"].as_str().map(str::to_string),
            selector: r.get("selector").and_then(selector_string),
        });
    }
    out.sort();
    out.dedup();
    out
}

/// A `metav1.LabelSelector` as the API's `labelSelector` query string;
/// `None` when it uses an operator the API does not have.
pub fn selector_string(sel: &Value) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str()?));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str()?;
        let values = || -> Option<String> {
            let vs: Option<Vec<&str>> = e["values"].as_array()?.iter().map(Value::as_str).collect();
            Some(vs?.join(","))
        };
        parts.push(match e["operator"].as_str()? {
            "In" => format!("{key} in ({})", values()?),
            "NotIn" => format!("{key} notin ({})", values()?),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        });
    }
    Some(parts.join(","))
}

/// Reads the selected param objects; returns them as YAML documents (JSON
/// is YAML) to append to the policies' text, in a stable order.
pub async fn fetch(client: &Client, refs: &[ParamRef]) -> String {
    let mut docs = Vec::new();
    for r in refs {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &r.kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &r.namespace, &ar);
        let got: Result<Vec<DynamicObject>, kube::Error> = match (&r.name, &r.selector) {
            (Some(name), _) => api.get_opt(name).await.map(|o| o.into_iter().collect()),
            (None, Some(sel)) => api
                .list(&ListParams::default().labels(sel))
                .await
                .map(|l| l.items),
            (None, None) => Ok(Vec::new()),
        };
        match got {
            Ok(objs) => {
                for mut o in objs {
                    o.metadata.managed_fields = None;
                    o.types.get_or_insert_with(|| kube::api::TypeMeta {
                        api_version: r.api_version.clone(),
                        kind: r.kind.clone(),
                    });
                    match serde_json::to_string(&o) {
                        Ok(s) => docs.push(s),
                        Err(e) => warn!(kind = %r.kind, "param object not serialisable: {e}"),
                    }
                }
            }
            Err(e) => warn!(
                kind = %r.kind, namespace = %r.namespace, name = ?r.name, selector = ?r.selector,
                "reading ValidatingAdmissionPolicy params: {e}; the binding's parameterNotFoundAction applies"
            ),
        }
    }
    docs.sort();
    docs.dedup();
    docs.iter().map(|d| format!("---\n{d}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = "---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: registries}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  validations: [{expression: 'true'}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: by-name}
spec:
  policyName: registries
  paramRef: {name: allowed, namespace: policy-params}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: by-selector}
spec:
  policyName: registries
  paramRef:
    namespace: policy-params
    selector:
      matchLabels: {team: a}
      matchExpressions: [{key: tier, operator: In, values: [prod, stage]}, {key: x, operator: DoesNotExist}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: no-params}
spec:
  policyName: other
";

    #[test]
    fn bindings_name_their_params_with_the_policys_kind() {
        let refs = param_refs(DOCS);
        assert_eq!(
            refs,
            vec![
                ParamRef {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: "policy-params".into(),
                    name: None,
                    selector: Some("team=a,tier in (prod,stage),!x".into()),
                },
                ParamRef {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: "policy-params".into(),
                    name: Some("allowed".into()),
                    selector: None,
                },
            ]
        );
    }

    #[test]
    fn unknown_selector_operators_are_not_guessed() {
        let sel: Value = serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]});
        assert_eq!(selector_string(&sel), None);
        assert_eq!(selector_string(&serde_json::json!({})), Some(String::new()));
    }
}
