//! Types shared by both policy front ends (native `ImagePolicy`, Kyverno
//! import) and the evaluation: what a rule governs, how an image is tested,
//! what a verdict says, and the errors and warnings of loading.
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// What happens when a rule fails: only reported, or also blocked/killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Action {
    Audit,
    Enforce,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Audit => "Audit",
            Action::Enforce => "Enforce",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three lists of a Pod spec that hold images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerType {
    Container,
    Init,
    Ephemeral,
}

impl ContainerType {
    pub const ALL: [ContainerType; 3] = [
        ContainerType::Container,
        ContainerType::Init,
        ContainerType::Ephemeral,
    ];

    pub fn index(self) -> usize {
        match self {
            ContainerType::Container => 0,
            ContainerType::Init => 1,
            ContainerType::Ephemeral => 2,
        }
    }

    /// The name used on the command line and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerType::Container => "container",
            ContainerType::Init => "init",
            ContainerType::Ephemeral => "ephemeral",
        }
    }

    /// The Pod spec field that holds this kind of container.
    pub fn field(self) -> &'static str {
        match self {
            ContainerType::Container => "containers",
            ContainerType::Init => "initContainers",
            ContainerType::Ephemeral => "ephemeralContainers",
        }
    }

    pub fn from_field(field: &str) -> Option<ContainerType> {
        match field {
            "containers" => Some(ContainerType::Container),
            "initContainers" => Some(ContainerType::Init),
            "ephemeralContainers" => Some(ContainerType::Ephemeral),
            _ => None,
        }
    }
}

impl fmt::Display for ContainerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Where an image is seen: the facts a rule's scope is decided on.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext<'a> {
    /// Namespace of the workload; `None` when unknown (bare `check IMAGE`).
    pub namespace: Option<&'a str>,
    pub container_type: ContainerType,
    /// Labels of the Pod (or of the Pod template of a controller).
    pub pod_labels: &'a BTreeMap<String, String>,
    /// Resource kind (`Pod`, `Deployment`, ...). The agent sees Pods.
    pub kind: &'a str,
    /// The whole Pod (for a controller: its template as a Pod), when known.
    /// CEL rules judge it; without it they judge a Pod reduced to this one
    /// container with only its image, namespace and labels.
    pub pod: Option<&'a serde_json::Value>,
    /// Name of the container in `pod` this image belongs to.
    pub container_name: Option<&'a str>,
    /// Labels of the workload's Namespace, when known (the agent watches
    /// Namespaces in Kubernetes mode). A `namespaceSelector` on a label
    /// other than `kubernetes.io/metadata.name` needs them; without them
    /// such a selector selects the namespace (see `Filter::matches`).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

impl Default for EvalContext<'_> {
    fn default() -> Self {
        EvalContext {
            namespace: None,
            container_type: ContainerType::Container,
            pod_labels: &NO_LABELS,
            kind: "Pod",
            pod: None,
            container_name: None,
            namespace_labels: None,
        }
    }
}

impl<'a> EvalContext<'a> {
    pub fn new(container_type: ContainerType) -> Self {
        EvalContext {
            container_type,
            ..Default::default()
        }
    }
    pub fn with_namespace(mut self, namespace: Option<&'a str>) -> Self {
        self.namespace = namespace;
        self
    }
    pub fn with_kind(mut self, kind: &'a str) -> Self {
        self.kind = kind;
        self
    }
    pub fn with_labels(mut self, labels: &'a BTreeMap<String, String>) -> Self {
        self.pod_labels = labels;
        self
    }
    /// The labels of the workload's Namespace (`None`: not known).
    pub fn with_namespace_labels(mut self, labels: Option<&'a BTreeMap<String, String>>) -> Self {
        self.namespace_labels = labels;
        self
    }
    /// The Pod the image's container belongs to, and the container's name.
    pub fn with_pod(
        mut self,
        pod: Option<&'a serde_json::Value>,
        container_name: Option<&'a str>,
    ) -> Self {
        self.pod = pod;
        self.container_name = container_name;
        self
    }
}

/// What a [`Verdict`] says, typed: callers match on this, never on the
/// text of `reason` (which starts with [`VerdictKind::as_str`] and a `:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    /// A rule allows the image, or no rule applies to it.
    Allowed,
    /// A rule denies the image.
    UntrustedImage,
    /// The image is not a valid reference (denied, `Enforce`).
    InvalidReference,
}

impl VerdictKind {
    /// The stable head of the verdict's `reason` (`allowed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Allowed => "allowed",
            VerdictKind::UntrustedImage => "untrusted-image",
            VerdictKind::InvalidReference => "invalid-reference",
        }
    }
}

/// The answer for one image. `reason` starts with `kind`'s stable prefix:
/// `allowed:`, `untrusted-image:` or `invalid-reference:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// Why, typed (`allowed` is `kind == VerdictKind::Allowed`).
    pub kind: VerdictKind,
    /// Action of the deciding rule (`Enforce` for invalid references).
    pub action: Action,
    pub reason: String,
    pub rule: Option<String>,
    pub policy: Option<String>,
}

/// Something a policy says that imagewarden does not (or cannot) enforce
/// faithfully. Always reported by policy and rule name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsupported {
    pub source: String,
    pub policy: String,
    pub rule: String,
    pub reason: String,
}

impl Unsupported {
    /// The warning that says the rule is not enforced, and why.
    pub fn warning(&self) -> Warning {
        Warning {
            source: self.source.clone(),
            policy: self.policy.clone(),
            rule: Some(self.rule.clone()),
            message: format!("not enforced: {}", self.reason),
        }
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: policy {} rule {}: not enforced: {}",
            self.source, self.policy, self.rule, self.reason
        )
    }
}

/// A non-fatal remark about a loaded policy (uncovered container types,
/// semantics that differ from Kyverno in corner cases, unsupported rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub source: String,
    pub policy: String,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(
                f,
                "{}: policy {} rule {}: {}",
                self.source, self.policy, rule, self.message
            ),
            None => write!(
                f,
                "{}: policy {}: {}",
                self.source, self.policy, self.message
            ),
        }
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read policy: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML itself is malformed, or a native policy has an unknown or
    /// mistyped field (serde gives the position).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The YAML is well formed but says something invalid.
    #[error("{0}")]
    Invalid(Box<InvalidPolicy>),
    #[error("{file}: no policy found (expected imagewarden.dev ImagePolicy, Kyverno ClusterPolicy/Policy/ValidatingPolicy/NamespacedValidatingPolicy or ValidatingAdmissionPolicy documents)")]
    Empty { file: String },
}

/// Details of [`PolicyError::Invalid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy {
    pub file: String,
    /// 1-based line of the offending key (or of the document) when known.
    pub line: Option<usize>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(p) = &self.policy {
            write!(f, "policy {p}: ")?;
        }
        if let Some(r) = &self.rule {
            write!(f, "rule {r}: ")?;
        }
        if let Some(x) = &self.field {
            write!(f, "field {x}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl PolicyError {
    /// The line the error points at, if known (1-based).
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Syntax { line, .. } => Some(*line),
            PolicyError::Invalid(i) => i.line,
            _ => None,
        }
    }
}
