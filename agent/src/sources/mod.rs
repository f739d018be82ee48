//! Node state sources: what the container runtime says really runs here.
//!
//! - [`cgroup`]: cgroup path / cgroup id -> container (pure functions).
//! - [`cri`]: Kubernetes CRI v1 client (containerd's CRI plugin, CRI-O).
//! - [`containerd`]: containerd's own API, every namespace, so containers
//!   started with `ctr run` or nerdctl, which bypass Kubernetes, are seen.
//!
//! Both runtime clients return the runtime-neutral [`ContainerInfo`] and
//! [`RuntimeEvent`], and both are a [`RuntimeSource`] (list, lookup by id,
//! event stream): the controller sees runtimes through that trait only.
//! [`events::forward_events`] feeds one source's event stream to the
//! controller (containerd's where there is containerd, else CRI's).

pub mod cgroup;
pub mod containerd;
pub mod cri;
pub mod events;
pub mod kube;
pub mod kubelet;
pub mod kyverno_config;
pub mod vap_params;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};

use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

/// Default bound on one unary runtime call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on connecting to a runtime socket.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest gRPC message accepted from a runtime (a node with a few hundred
/// containers answers ListContainers in well under this).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Most containers (or sandboxes) taken from one list call; more is
/// reported as truncated rather than read without end.
pub const MAX_CONTAINERS: usize = 20_000;
/// Most labels kept per container, and longest label key/value kept.
pub const MAX_LABELS: usize = 256;
const MAX_LABEL_LEN: usize = 4096;

/// What kind of container this is, when the runtime says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    /// A pod sandbox (pause container).
    Sandbox,
    /// A workload container (init and ephemeral containers are not told
    /// apart by the runtime; the kubelet/API server source knows).
    Container,
}

/// Lifecycle state, runtime-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Created, not started (or no task).
    Created,
    /// Running.
    Running,
    /// Paused / pausing.
    Paused,
    /// Exited / stopped.
    Exited,
    /// The runtime did not say.
    Unknown,
}

/// One container as a runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Which API reported it: `"cri"` or `"containerd"`.
    pub runtime: &'static str,
    /// Runtime namespace (containerd namespace; `k8s.io` for containerd's
    /// CRI plugin; `None` where the runtime has none, e.g. CRI-O).
    pub namespace: Option<String>,
    /// Pod sandbox id (CRI only).
    pub sandbox_id: Option<String>,
    /// Kubernetes pod name, namespace and UID: from CRI only (its metadata,
    /// else the labels CRI reports), never from containerd's labels.
    pub pod_name: Option<String>,
    /// Kubernetes namespace of the pod.
    pub pod_namespace: Option<String>,
    /// Kubernetes pod UID.
    pub pod_uid: Option<String>,
    /// Container name inside the pod.
    pub container_name: Option<String>,
    /// Sandbox or workload, where CRI says (never from a label).
    pub kind: Option<ContainerKind>,
    /// The image reference as written (the container spec's image, or the
    /// name the container was created from).
    pub image_as_written: Option<String>,
    /// The image resolved to a digest: `docker.io/library/nginx@sha256:...`.
    pub image_ref: Option<String>,
    /// The image id (the config digest, `sha256:...`).
    pub image_id: Option<String>,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Host pid of the container's init process, when running.
    pub pid: Option<u32>,
    /// The OCI spec's `linux.cgroupsPath`, when the runtime tells.
    pub cgroup_path: Option<String>,
    /// Labels (bounded, see [`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
    /// The kubelet runs this Pod from its own manifests (a static Pod): CRI's
    /// sandbox annotation `kubernetes.io/config.source` is `file` or `http`.
    /// The kubelet stamps that annotation on every Pod it runs (`api` for
    /// the API server's), so a Pod cannot claim it; never read from
    /// containerd's own labels.
    pub static_pod: bool,
}

/// The key of a container across reports: `<runtime namespace>/<id>`
/// (`/<id>` where the runtime has no namespace, e.g. CRI-O).
pub fn container_key(namespace: Option<&str>, id: &str) -> String {
    format!("{}/{}", namespace.unwrap_or(""), id)
}

impl ContainerInfo {
    /// This container's [`container_key`].
    pub fn key(&self) -> String {
        container_key(self.namespace.as_deref(), &self.id)
    }

    /// A report of container `id` by `runtime` (see [`Api::runtime`]) with
    /// nothing known yet.
    pub fn new(id: String, runtime: &'static str) -> Self {
        ContainerInfo {
            id,
            runtime,
            namespace: None,
            sandbox_id: None,
            pod_name: None,
            pod_namespace: None,
            pod_uid: None,
            container_name: None,
            kind: None,
            image_as_written: None,
            image_ref: None,
            image_id: None,
            state: ContainerState::Unknown,
            pid: None,
            cgroup_path: None,
            labels: BTreeMap::new(),
            static_pod: false,
        }
    }

    /// Fills pod fields from the `io.kubernetes.*` labels CRI reports for
    /// this container, where CRI's metadata left them empty. Only for what
    /// CRI reports (the kubelet set those labels through CRI): labels read
    /// from containerd's own API are never identity, since anyone with that
    /// API can set them (issue 13, case 6). The kind never comes from a
    /// label: CRI says it by the call that listed the container.
    pub(crate) fn fill_from_cri_labels(&mut self) {
        let get = |k: &str| self.labels.get(k).filter(|v| !v.is_empty()).cloned();
        let pod_name = get("io.kubernetes.pod.name");
        let pod_ns = get("io.kubernetes.pod.namespace");
        let pod_uid = get("io.kubernetes.pod.uid");
        let cname = get("io.kubernetes.container.name");
        let sandbox = get("io.kubernetes.sandbox.id");
        self.pod_name = self.pod_name.take().or(pod_name);
        self.pod_namespace = self.pod_namespace.take().or(pod_ns);
        self.pod_uid = self.pod_uid.take().or(pod_uid);
        self.container_name = self.container_name.take().or(cname);
        self.sandbox_id = self.sandbox_id.take().or(sandbox);
    }
}

/// What happened to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventKind {
    /// Container created.
    Created,
    /// Container (its init process) started.
    Started {
        /// Host pid, when the runtime tells (containerd does).
        pid: Option<u32>,
    },
    /// Container (its init process) exited.
    Exited {
        /// Host pid of the exited process, when told.
        pid: Option<u32>,
        /// Exit status, when told.
        exit_status: Option<u32>,
    },
    /// Container deleted.
    Deleted,
}

/// A container lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeEvent {
    /// `"cri"` or `"containerd"`.
    pub runtime: &'static str,
    /// containerd namespace, where there is one.
    pub namespace: Option<String>,
    /// Container id.
    pub container_id: String,
    /// What happened.
    pub kind: EventKind,
    /// Event time, nanoseconds since the epoch, when told.
    pub timestamp_ns: Option<i64>,
}

/// Inserts at most [`MAX_LABELS`] labels, skipping oversized ones.
pub(crate) fn bounded_labels<I>(it: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    it.into_iter()
        .filter(|(k, v)| k.len() <= MAX_LABEL_LEN && v.len() <= MAX_LABEL_LEN)
        .take(MAX_LABELS)
        .collect()
}

/// `Some(s)` unless empty.
pub(crate) fn non_empty(s: impl Into<String>) -> Option<String> {
    let s = s.into();
    (!s.is_empty()).then_some(s)
}

/// Turns `unix:///path`, `unix:/path` or a bare absolute path into a path.
pub fn socket_path(endpoint: &str) -> Option<PathBuf> {
    let p = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    let p = Path::new(p);
    p.is_absolute().then(|| p.to_path_buf())
}

/// Errors connecting to a runtime socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is not a unix socket path.
    #[error("runtime endpoint {0:?} is not unix:///absolute/path")]
    BadEndpoint(String),
    /// Connecting took too long.
    #[error("connecting to {path} timed out after {timeout:?}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// The bound.
        timeout: Duration,
    },
    /// The socket refused / does not exist.
    #[error("connecting to {path}: {source}")]
    Transport {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Opens a gRPC channel over a unix socket, bounded by `timeout`.
pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<Channel, ConnectError> {
    let path_buf = path.to_path_buf();
    // The URI is a placeholder: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .tcp_nodelay(false);
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let p = path_buf.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(p).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    match tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await {
        Err(_) => Err(ConnectError::Timeout {
            path: path.to_path_buf(),
            timeout,
        }),
        Ok(Err(source)) => Err(ConnectError::Transport {
            path: path.to_path_buf(),
            source,
        }),
        Ok(Ok(ch)) => Ok(ch),
    }
}

/// Which runtime API a client, a report or an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// containerd's own API (every namespace).
    Containerd,
    /// Kubernetes CRI v1 (containerd's CRI plugin, CRI-O).
    Cri,
}

impl Api {
    /// The `runtime` field of [`ContainerInfo`] and [`RuntimeEvent`].
    pub fn runtime(self) -> &'static str {
        match self {
            Api::Containerd => "containerd",
            Api::Cri => "cri",
        }
    }

    /// What autodetection looks for, for its error.
    fn what(self) -> &'static str {
        match self {
            Api::Containerd => "containerd",
            Api::Cri => "CRI runtime",
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Containerd => "containerd",
            Api::Cri => "CRI",
        })
    }
}

/// Errors of the runtime clients (both APIs).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// No endpoint given and none of the default sockets answered.
    #[error("no {} found at {tried:?}", .api.what())]
    NotFound {
        /// Which API was looked for.
        api: Api,
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// The runtime answered with an error status.
    #[error("{api} {call}{}: {status}", namespace_note(.api, .namespace))]
    Status {
        /// Which API answered.
        api: Api,
        /// RPC name.
        call: &'static str,
        /// containerd namespace, if the call had one.
        namespace: Option<String>,
        /// gRPC status.
        status: Box<tonic::Status>,
    },
    /// The call took longer than the bound.
    #[error("{api} {call} timed out after {timeout:?}")]
    Timeout {
        /// Which API was called.
        api: Api,
        /// RPC name.
        call: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// The runtime does not implement this call (containerd 1.6's CRI
    /// `GetContainerEvents`).
    #[error("{call} is not implemented by this runtime")]
    Unsupported {
        /// RPC name.
        call: &'static str,
    },
    /// A namespace name that cannot be sent as gRPC metadata.
    #[error("invalid containerd namespace {0:?}")]
    BadNamespace(String),
    /// More items than we take.
    #[error("{api} {call} returned more than {max} items")]
    TooMany {
        /// Which API answered.
        api: Api,
        /// RPC name.
        call: &'static str,
        /// The bound.
        max: usize,
    },
}

/// containerd's errors name the namespace of the call (none: `None`).
fn namespace_note(api: &Api, namespace: &Option<String>) -> String {
    match api {
        Api::Containerd => format!(" (namespace {namespace:?})"),
        Api::Cri => String::new(),
    }
}

impl SourceError {
    /// An error status of `call`; `Unimplemented` is [`SourceError::Unsupported`].
    pub(crate) fn status(
        api: Api,
        call: &'static str,
        namespace: Option<&str>,
        status: tonic::Status,
    ) -> Self {
        if status.code() == tonic::Code::Unimplemented {
            return SourceError::Unsupported { call };
        }
        SourceError::Status {
            api,
            call,
            namespace: namespace.map(str::to_string),
            status: Box::new(status),
        }
    }

    /// Whether the runtime said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SourceError::Status { status, .. } if status.code() == tonic::Code::NotFound)
    }

    /// Whether the runtime does not implement the call.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, SourceError::Unsupported { .. })
    }
}

/// The next message of a server stream of `call`, bounded by `timeout`
/// per message; `None` at the end of the stream.
pub(crate) async fn next_message<M>(
    api: Api,
    call: &'static str,
    namespace: Option<&str>,
    timeout: Duration,
    stream: &mut tonic::Streaming<M>,
) -> Result<Option<M>, SourceError> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => Err(SourceError::Timeout { api, call, timeout }),
        Ok(Err(status)) => Err(SourceError::status(api, call, namespace, status)),
        Ok(Ok(m)) => Ok(m),
    }
}

/// Runs one unary call of `api`, bounded by `timeout`.
pub(crate) async fn unary<T>(
    api: Api,
    call: &'static str,
    namespace: Option<&str>,
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(SourceError::Timeout { api, call, timeout }),
        Ok(Err(status)) => Err(SourceError::status(api, call, namespace, status)),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}

/// The socket path of `endpoint` (`unix:///path` or `/path`).
pub(crate) fn endpoint_path(endpoint: &str) -> Result<PathBuf, SourceError> {
    socket_path(endpoint).ok_or_else(|| ConnectError::BadEndpoint(endpoint.to_string()).into())
}

/// Connects with `connect` to `endpoint` if given, else to the first of
/// `defaults` that exists and answers.
pub(crate) async fn autodetect<C, F, Fut>(
    api: Api,
    endpoint: Option<&str>,
    defaults: &[&str],
    connect: F,
) -> Result<C, SourceError>
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<C, SourceError>>,
{
    if let Some(e) = endpoint {
        return connect(endpoint_path(e)?).await;
    }
    let mut tried = Vec::new();
    for p in defaults {
        let path = PathBuf::from(p);
        tried.push(path.clone());
        if !path.exists() {
            continue;
        }
        match connect(path.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::debug!(socket = %path.display(), error = %e, "{api} socket did not answer")
            }
        }
    }
    Err(SourceError::NotFound { api, tried })
}

/// A boxed future of a [`RuntimeSource`] call.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SourceError>> + Send + 'a>>;

/// A runtime's container lifecycle events; ends after an error or when the
/// runtime closes the stream.
pub type EventStream = BoxStream<'static, Result<RuntimeEvent, SourceError>>;

/// Reports of containers by [`ContainerInfo::key`].
pub type Listing = HashMap<String, ContainerInfo>;

/// A container runtime as the controller sees it: containerd's own API and
/// CRI implement it (and tests' fakes).
pub trait RuntimeSource: Send + Sync {
    /// Which API this is (it names the reports: [`ContainerInfo::runtime`]).
    fn api(&self) -> Api;

    /// Every container (and pod sandbox) the runtime reports. `described`:
    /// what another source already reported, which a source may use to
    /// skip its own expensive calls (CRI: containerd's listing spares the
    /// verbose status; see `cri::describe_from_containerd`).
    fn list<'a>(&'a self, described: &'a Listing) -> SourceFuture<'a, Vec<ContainerInfo>>;

    /// One container (or sandbox) by id, in `namespace` where the runtime
    /// has namespaces; `Ok(None)` when the runtime does not know it.
    fn lookup<'a>(
        &'a self,
        namespace: Option<&'a str>,
        id: &'a str,
    ) -> SourceFuture<'a, Option<ContainerInfo>>;

    /// Subscribes to container lifecycle events;
    /// [`SourceError::Unsupported`] when the runtime has no such stream.
    fn events(&self) -> SourceFuture<'_, EventStream>;

    /// The runtime's namespaces (containerd); none by default.
    fn namespaces(&self) -> SourceFuture<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Image ids of the node's pod sandbox images (CRI); none by default.
    fn sandbox_image_ids(&self) -> SourceFuture<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Verbose status calls made so far (CRI); 0 by default.
    fn verbose_calls(&self) -> u64 {
        0
    }
}

/// A runtime as the controller and the event forwarder hold it.
pub type SharedSource = std::sync::Arc<dyn RuntimeSource>;

/// A client event stream that yields one decoded event at a time.
pub(crate) trait NextEvent: Send + 'static {
    /// Next event; `Ok(None)` once the runtime closed the stream.
    fn next_event(
        &mut self,
    ) -> impl Future<Output = Result<Option<RuntimeEvent>, SourceError>> + Send;
}

/// An [`EventStream`] of a client stream: it ends after the first error.
pub(crate) fn boxed_events<S: NextEvent>(s: S) -> EventStream {
    futures_util::stream::unfold(Some(s), |state| async move {
        let mut s = state?;
        match s.next_event().await {
            Ok(Some(ev)) => Some((Ok(ev), Some(s))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// How long a streaming call is given to answer with headers before the
/// caller gets the stream anyway. containerd (grpc-go) sends a server
/// stream's headers only with its first message, so waiting for them would
/// wait for the first event; this bound only makes sure the request is on
/// the wire.
pub const STREAM_SETTLE: Duration = Duration::from_millis(100);

type StreamFuture<T> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
            > + Send,
    >,
>;

/// A server stream whose headers may not have arrived yet.
pub(crate) enum LazyStream<T> {
    Pending(StreamFuture<T>),
    Open(Box<tonic::Streaming<T>>),
    Closed,
}

impl<T> LazyStream<T> {
    /// Sends the call and waits at most `settle` for the response headers:
    /// an immediate error (e.g. `Unimplemented`) is returned, a call still
    /// pending is kept for [`LazyStream::message`].
    pub(crate) async fn start(
        mut fut: StreamFuture<T>,
        settle: Duration,
    ) -> Result<Self, tonic::Status> {
        match tokio::time::timeout(settle, &mut fut).await {
            Ok(Ok(resp)) => Ok(LazyStream::Open(Box::new(resp.into_inner()))),
            Ok(Err(s)) => Err(s),
            Err(_) => Ok(LazyStream::Pending(fut)),
        }
    }

    /// Next message; `Ok(None)` once the stream is closed.
    pub(crate) async fn message(&mut self) -> Result<Option<T>, tonic::Status> {
        if let LazyStream::Pending(fut) = self {
            match fut.await {
                Ok(resp) => *self = LazyStream::Open(Box::new(resp.into_inner())),
                Err(s) => {
                    *self = LazyStream::Closed;
                    return Err(s);
                }
            }
        }
        match self {
            LazyStream::Open(s) => {
                let r = s.message().await;
                if !matches!(r, Ok(Some(_))) {
                    *self = LazyStream::Closed;
                }
                r
            }
            LazyStream::Pending(_) | LazyStream::Closed => Ok(None),
        }
    }
}

/// Strips the tag from an image name: `docker.io/library/nginx:latest` ->
/// `docker.io/library/nginx`; a digest suffix is stripped too. A `:` before
/// the last `/` is a registry port, not a tag.
pub fn image_repository(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    }
}

/// `repository@digest` for an image name and its target digest.
pub fn image_digest_ref(name: &str, digest: &str) -> Option<String> {
    if name.is_empty() || digest.is_empty() || name.starts_with("sha256:") {
        return None;
    }
    Some(format!("{}@{}", image_repository(name), digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_of_names() {
        assert_eq!(
            image_repository("docker.io/library/nginx:latest"),
            "docker.io/library/nginx"
        );
        assert_eq!(image_repository("localhost:5000/a/b"), "localhost:5000/a/b");
        assert_eq!(
            image_repository("localhost:5000/a/b:v1"),
            "localhost:5000/a/b"
        );
        assert_eq!(image_repository("nginx@sha256:abc"), "nginx");
        assert_eq!(image_repository("nginx:1@sha256:abc"), "nginx");
        assert_eq!(
            image_digest_ref("public.ecr.aws/nginx/nginx:latest", "sha256:0a").as_deref(),
            Some("public.ecr.aws/nginx/nginx@sha256:0a")
        );
        assert_eq!(image_digest_ref("sha256:ff", "sha256:0a"), None);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/x.sock"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            socket_path("/run/x.sock"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            socket_path("unix:/run/x.sock"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(socket_path("tcp://1.2.3.4:5"), None);
        assert_eq!(socket_path("relative.sock"), None);
    }

    #[test]
    fn cri_labels_fill_pod_fields_but_never_the_kind() {
        let mut c = ContainerInfo::new("x".into(), "containerd");
        c.labels = bounded_labels([
            ("io.kubernetes.pod.name".to_string(), "web".to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                "prod".to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), "u".to_string()),
            (
                "io.kubernetes.container.name".to_string(),
                "nginx".to_string(),
            ),
            (
                "io.cri-containerd.kind".to_string(),
                "container".to_string(),
            ),
        ]);
        c.fill_from_cri_labels();
        assert_eq!(c.pod_name.as_deref(), Some("web"));
        assert_eq!(c.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(c.container_name.as_deref(), Some("nginx"));
        assert_eq!(c.kind, None, "a label never says what kind a container is");
        let many = (0..1000).map(|i| (format!("k{i}"), String::new()));
        assert_eq!(bounded_labels(many).len(), MAX_LABELS);
    }
}
