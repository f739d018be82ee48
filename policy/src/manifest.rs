//! Images of the workloads in a (multi-document) Kubernetes YAML file:
//! Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and
//! ReplicationController (also inside a `kind: List`). Other kinds are
//! skipped and counted.
use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;

use crate::load::{split_documents, yaml_error_position};
use crate::model::ContainerType;

/// One image of one container of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadImage {
    /// The image as written (empty when the container has no image).
    pub image: String,
    pub container: Option<String>,
    pub container_type: ContainerType,
    pub kind: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// Labels of the Pod, or of the Pod template of a controller.
    pub pod_labels: BTreeMap<String, String>,
    /// 1-based line of the document in the file.
    pub line: usize,
    /// The Pod (a controller's template as a Pod, in the controller's
    /// namespace), for rules that judge whole Pods (CEL). `None` when the
    /// document cannot be represented as JSON.
    pub pod: Option<std::sync::Arc<serde_json::Value>>,
}

/// The images found, and what was not a workload.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub images: Vec<WorkloadImage>,
    /// `kind name` of documents that are not workloads.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read manifest: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

/// Where the Pod template sits for a workload kind: path to the Pod spec's
/// parent object (the one with `metadata` and `spec`).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.as_mapping()?.get(*p)?;
    }
    Some(cur)
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    lookup(v, path).and_then(Value::as_str).map(str::to_string)
}

fn labels_at(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let k = k.as_str()?.to_string();
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((k, v))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Pod a workload runs: the Pod itself, or a controller's template with
/// `apiVersion: v1`, `kind: Pod` and the controller's namespace (what
/// Kyverno's autogen evaluates Pod rules on).
fn pod_of(
    kind: &str,
    template: Option<&Value>,
    namespace: Option<&str>,
) -> Option<std::sync::Arc<serde_json::Value>> {
    let mut pod = serde_json::to_value(template?).ok()?;
    let obj = pod.as_object_mut()?;
    if kind != "Pod" {
        obj.insert("apiVersion".into(), "v1".into());
        obj.insert("kind".into(), "Pod".into());
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let (Some(m), Some(ns)) = (meta.as_object_mut(), namespace) {
            m.entry("namespace").or_insert_with(|| ns.into());
        }
    }
    default_pull_policies(&mut pod);
    Some(std::sync::Arc::new(pod))
}

/// The API server defaults `imagePullPolicy` before admission sees the Pod
/// (`Always` for `:latest` or no tag and no digest, else `IfNotPresent`,
/// as `SetDefaults_Container` does); CEL rules read it.
fn default_pull_policies(pod: &mut serde_json::Value) {
    let Some(spec) = pod
        .get_mut("spec")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for ct in ContainerType::ALL {
        let Some(list) = spec
            .get_mut(ct.field())
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        for c in list.iter_mut().filter_map(serde_json::Value::as_object_mut) {
            if c.contains_key("imagePullPolicy") {
                continue;
            }
            let Some(image) = c.get("image").and_then(serde_json::Value::as_str) else {
                continue;
            };
            let Ok(r) = crate::reference::parse_normalized_named(image) else {
                continue;
            };
            let always =
                r.tag.as_deref() == Some("latest") || (r.tag.is_none() && r.digest.is_none());
            c.insert(
                "imagePullPolicy".into(),
                if always { "Always" } else { "IfNotPresent" }.into(),
            );
        }
    }
}

fn extract_object(
    obj: &Value,
    line: usize,
    file: &str,
    out: &mut Manifest,
    depth: usize,
) -> Result<(), ManifestError> {
    let Some(kind) = str_at(obj, &["kind"]) else {
        return Err(ManifestError::Invalid {
            file: file.to_string(),
            line,
            message: "document has no kind".into(),
        });
    };
    if kind == "List" || kind.ends_with("List") {
        if depth > 4 {
            return Err(ManifestError::Invalid {
                file: file.to_string(),
                line,
                message: "lists nested too deeply".into(),
            });
        }
        for item in lookup(obj, &["items"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            extract_object(item, line, file, out, depth + 1)?;
        }
        return Ok(());
    }
    let name = str_at(obj, &["metadata", "name"]);
    let namespace = str_at(obj, &["metadata", "namespace"]);
    let Some(tpath) = template_path(&kind) else {
        out.skipped
            .push(format!("{kind} {}", name.as_deref().unwrap_or("(unnamed)")));
        return Ok(());
    };
    let template = lookup(obj, tpath);
    let pod_labels = labels_at(template.and_then(|t| lookup(t, &["metadata", "labels"])));
    let spec = template.and_then(|t| lookup(t, &["spec"]));
    let pod = pod_of(&kind, template, namespace.as_deref());
    for ct in ContainerType::ALL {
        let Some(list) = spec.and_then(|s| lookup(s, &[ct.field()])) else {
            continue;
        };
        let Some(list) = list.as_sequence() else {
            return Err(ManifestError::Invalid {
                file: file.to_string(),
                line,
                message: format!(
                    "{kind} {}: {} is not a list",
                    name.as_deref().unwrap_or("(unnamed)"),
                    ct.field()
                ),
            });
        };
        for c in list {
            out.images.push(WorkloadImage {
                image: str_at(c, &["image"]).unwrap_or_default(),
                container: str_at(c, &["name"]),
                container_type: ct,
                kind: kind.clone(),
                name: name.clone(),
                namespace: namespace.clone(),
                pod_labels: pod_labels.clone(),
                line,
                pod: pod.clone(),
            });
        }
    }
    Ok(())
}

/// Extracts the images of every workload of a multi-document YAML text.
pub fn extract_images(text: &str, source_name: &str) -> Result<Manifest, ManifestError> {
    if let Some((line, column)) = crate::load::flow_depth_exceeded(text) {
        return Err(ManifestError::Syntax {
            file: source_name.to_string(),
            line,
            column,
            message: format!(
                "recursion limit exceeded: flow nesting deeper than {} levels",
                crate::load::MAX_FLOW_DEPTH
            ),
        });
    }
    let mut out = Manifest::default();
    for (doc, first_line) in split_documents(text) {
        let value: Value = serde_yaml::from_str(&doc).map_err(|e| {
            let (line, column) = yaml_error_position(&e, &doc, first_line);
            let msg = e.to_string();
            let msg = msg
                .find(" at line ")
                .map(|i| msg[..i].to_string())
                .unwrap_or(msg);
            ManifestError::Syntax {
                file: source_name.to_string(),
                line,
                column,
                message: msg,
            }
        })?;
        if value.is_null() {
            continue;
        }
        // The document's first non-blank line, for messages.
        let line = first_line
            + doc
                .lines()
                .position(|l| {
                    let t = l.trim();
                    !t.is_empty() && !t.starts_with('#') && t != "---"
                })
                .unwrap_or(0);
        extract_object(&value, line, source_name, &mut out, 0)?;
    }
    Ok(out)
}

/// Reads a manifest file and extracts its images.
pub fn extract_images_file(path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        file: name.clone(),
        source,
    })?;
    extract_images(&text, &name)
}
