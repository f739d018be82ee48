//! containerd's native API: every namespace, not only the CRI plugin's
//! `k8s.io`, so containers started with `ctr run` or nerdctl (which bypass
//! Kubernetes entirely) are seen with their image.
//!
//! Generated client: the `containerd-client` crate (containerd 2.x protos;
//! the services used here are wire-compatible with containerd 1.6). Every
//! namespaced call carries the gRPC metadata `containerd-namespace`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::events as cev;
use containerd_client::services::v1 as svc;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::types::v1::Status as TaskStatus;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

use super::{
    autodetect, bounded_labels, boxed_events, connect_unix, endpoint_path, image_digest_ref,
    non_empty, Api, ContainerInfo, ContainerState, EventKind, EventStream, LazyStream, Listing,
    NextEvent, RuntimeEvent, RuntimeSource, SourceError, SourceFuture, DEFAULT_CALL_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, MAX_CONTAINERS, MAX_MESSAGE_BYTES, STREAM_SETTLE,
};

/// Where containerd listens, in the order autodetection tries them.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/k3s/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
];

/// Most namespaces looked at.
pub const MAX_NAMESPACES: usize = 1024;
/// Largest OCI spec, manifest or index read from containerd.
const MAX_BLOB_BYTES: usize = 4 * 1024 * 1024;

/// The event topics [`ContainerdClient::subscribe`] asks for.
pub const EVENT_TOPICS: &[&str] = &[
    "/tasks/start",
    "/tasks/exit",
    "/containers/create",
    "/containers/delete",
];

/// Errors of the containerd client (see [`SourceError`]).
pub type ContainerdError = SourceError;

/// An image's name and what it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTarget {
    /// Image name (`docker.io/library/nginx:latest`).
    pub name: String,
    /// Media type of the target (manifest or index).
    pub media_type: String,
    /// Target digest (the repo digest).
    pub digest: String,
    /// Config digest (the image id), when it could be read.
    pub config_digest: Option<String>,
}

/// A containerd API client bound to one socket.
#[derive(Clone)]
pub struct ContainerdClient {
    channel: Channel,
    socket: PathBuf,
    call_timeout: Duration,
}

impl std::fmt::Debug for ContainerdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdClient")
            .field("socket", &self.socket)
            .finish()
    }
}

/// Runs one unary call with a bound.
macro_rules! call {
    ($self:ident, $name:literal, $ns:expr, $fut:expr) => {
        super::unary(Api::Containerd, $name, $ns, $self.call_timeout, $fut).await
    };
}

/// A request carrying the `containerd-namespace` metadata.
fn with_ns<T>(msg: T, ns: &str) -> Result<Request<T>, ContainerdError> {
    let v: MetadataValue<_> = ns
        .parse()
        .map_err(|_| ContainerdError::BadNamespace(ns.to_string()))?;
    let mut req = Request::new(msg);
    req.metadata_mut().insert("containerd-namespace", v);
    Ok(req)
}

/// More containers than [`MAX_CONTAINERS`] on the node: the listing is
/// refused whole rather than cut.
fn too_many_containers() -> ContainerdError {
    ContainerdError::TooMany {
        api: Api::Containerd,
        call: "Containers.ListStream",
        max: MAX_CONTAINERS,
    }
}

impl ContainerdClient {
    /// Connects to `endpoint` (`unix:///path` or `/path`).
    pub async fn connect(endpoint: &str) -> Result<Self, ContainerdError> {
        let path = endpoint_path(endpoint)?;
        Self::connect_path(&path, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT).await
    }

    /// Connects to a socket path with explicit bounds, and checks that
    /// containerd answers (lists namespaces).
    pub async fn connect_path(
        path: &Path,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Self, ContainerdError> {
        let channel = connect_unix(path, connect_timeout).await?;
        let c = ContainerdClient {
            channel,
            socket: path.to_path_buf(),
            call_timeout,
        };
        c.namespaces().await?;
        Ok(c)
    }

    /// Uses `endpoint` if given, else the first of [`DEFAULT_SOCKETS`] that
    /// exists and answers.
    pub async fn autodetect(endpoint: Option<&str>) -> Result<Self, ContainerdError> {
        autodetect(Api::Containerd, endpoint, DEFAULT_SOCKETS, |p| async move {
            Self::connect_path(&p, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT).await
        })
        .await
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// All namespaces (bounded by [`MAX_NAMESPACES`]).
    pub async fn namespaces(&self) -> Result<Vec<String>, ContainerdError> {
        let mut c = NamespacesClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let resp = call!(
            self,
            "Namespaces.List",
            None,
            c.list(svc::ListNamespacesRequest::default())
        )?;
        if resp.namespaces.len() > MAX_NAMESPACES {
            return Err(ContainerdError::TooMany {
                api: Api::Containerd,
                call: "Namespaces.List",
                max: MAX_NAMESPACES,
            });
        }
        let mut names: Vec<String> = resp.namespaces.into_iter().map(|n| n.name).collect();
        names.sort();
        Ok(names)
    }

    /// Containers of every namespace.
    pub async fn list_all(&self) -> Result<Vec<ContainerInfo>, ContainerdError> {
        let mut out = Vec::new();
        for ns in self.namespaces().await? {
            out.extend(self.list_containers(&ns).await?);
            if out.len() > MAX_CONTAINERS {
                return Err(too_many_containers());
            }
        }
        Ok(out)
    }

    /// Containers of one namespace, with image target digest, task pid and
    /// status, labels and the spec's cgroups path.
    pub async fn list_containers(&self, ns: &str) -> Result<Vec<ContainerInfo>, ContainerdError> {
        let tasks = self.tasks(ns).await?;
        // Each streamed record is reduced to its ContainerInfo as it comes:
        // a CRI container's record carries its OCI spec and CRI's metadata
        // extension (kilobytes each), which held for the whole namespace
        // were most of a resync's peak and, freed, left the heap
        // fragmented (docs/benchmarks.md, round 6).
        let mut out = self
            .each_container(ns, |c| {
                let mut info = record_info(ns, c);
                match tasks.get(&info.id) {
                    Some((pid, status)) => {
                        info.state = *status;
                        info.pid = (*pid > 0 && *status != ContainerState::Exited).then_some(*pid);
                    }
                    None => info.state = ContainerState::Created,
                }
                info
            })
            .await?;
        let mut images: HashMap<String, Option<ImageTarget>> = HashMap::new();
        for info in &mut out {
            self.fill_image(ns, info, &mut images).await?;
        }
        Ok(out)
    }

    /// One container by id, from its own record (Containers.Get) and its
    /// own task (Tasks.Get): neither touches another container's shim, so
    /// a shim that is stuck elsewhere (a `runc init` the kernel holds keeps
    /// its shim in Create, and containerd's Tasks.List then times out) does
    /// not hide this container. A task call that fails leaves the state
    /// unknown rather than the container unknown. `Ok(None)`: no such
    /// container in `ns`.
    pub async fn container(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<Option<ContainerInfo>, ContainerdError> {
        let mut c = ContainersClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = with_ns(svc::GetContainerRequest { id: id.to_string() }, ns)?;
        let rec = match call!(self, "Containers.Get", Some(ns), c.get(req)) {
            Ok(r) => match r.container {
                Some(rec) => rec,
                None => return Ok(None),
            },
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut info = record_info(ns, rec);
        self.fill_image(ns, &mut info, &mut HashMap::new()).await?;
        let mut t = TasksClient::new(self.channel.clone());
        let req = with_ns(
            svc::GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            },
            ns,
        )?;
        match call!(self, "Tasks.Get", Some(ns), t.get(req)) {
            Ok(r) => {
                if let Some(p) = r.process {
                    let st = task_state(p.status);
                    info.state = st;
                    info.pid = (p.pid > 0 && st != ContainerState::Exited).then_some(p.pid);
                }
            }
            Err(e) if e.is_not_found() => info.state = ContainerState::Created,
            Err(e) => {
                tracing::warn!(
                    namespace = ns,
                    container = id,
                    "containerd task state unknown: {e}"
                );
                info.state = ContainerState::Unknown;
            }
        }
        Ok(Some(info))
    }

    /// Fills a container's image digest and id from its image record;
    /// `images` caches the lookups of one listing.
    async fn fill_image(
        &self,
        ns: &str,
        info: &mut ContainerInfo,
        images: &mut HashMap<String, Option<ImageTarget>>,
    ) -> Result<(), ContainerdError> {
        let Some(image) = info.image_as_written.as_deref() else {
            return Ok(());
        };
        if !images.contains_key(image) {
            let t = match self.image_target(ns, image).await {
                Ok(t) => t,
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            images.insert(image.to_string(), t);
        }
        if let Some(Some(t)) = images.get(image) {
            info.image_ref = image_digest_ref(&t.name, &t.digest);
            info.image_id = t.config_digest.clone();
        }
        Ok(())
    }

    /// The next message of a `call` stream in `ns`, bounded by the call timeout.
    async fn next_message<M>(
        &self,
        call: &'static str,
        ns: &str,
        stream: &mut tonic::Streaming<M>,
    ) -> Result<Option<M>, ContainerdError> {
        super::next_message(Api::Containerd, call, Some(ns), self.call_timeout, stream).await
    }

    /// Streams the namespace's container records (`Containers.ListStream`:
    /// one message per container, so a node with many large specs does not
    /// need one huge response), each turned into `T` as it arrives.
    async fn each_container<T>(
        &self,
        ns: &str,
        mut f: impl FnMut(svc::Container) -> T,
    ) -> Result<Vec<T>, ContainerdError> {
        let mut c = ContainersClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = with_ns(svc::ListContainersRequest::default(), ns)?;
        let mut stream = call!(self, "Containers.ListStream", Some(ns), c.list_stream(req))?;
        let mut out = Vec::new();
        while let Some(m) = self
            .next_message("Containers.ListStream", ns, &mut stream)
            .await?
        {
            if let Some(c) = m.container {
                out.push(f(c));
            }
            if out.len() > MAX_CONTAINERS {
                return Err(too_many_containers());
            }
        }
        Ok(out)
    }

    /// Task pid and state per container id in one namespace.
    pub async fn tasks(
        &self,
        ns: &str,
    ) -> Result<HashMap<String, (u32, ContainerState)>, ContainerdError> {
        let mut c =
            TasksClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = with_ns(svc::ListTasksRequest::default(), ns)?;
        let resp = call!(self, "Tasks.List", Some(ns), c.list(req))?;
        Ok(resp
            .tasks
            .into_iter()
            .take(MAX_CONTAINERS)
            .map(|p| {
                let st = task_state(p.status);
                // containerd 1.6 leaves `container_id` empty and puts the
                // container id in `id` (the init process's id).
                let id = if p.container_id.is_empty() {
                    p.id
                } else {
                    p.container_id
                };
                (id, (p.pid, st))
            })
            .collect())
    }

    /// An image's target digest and config digest; `Ok(None)` if the
    /// namespace has no such image.
    pub async fn image_target(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<ImageTarget>, ContainerdError> {
        let mut c =
            ImagesClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = with_ns(
            svc::GetImageRequest {
                name: name.to_string(),
            },
            ns,
        )?;
        let resp = match call!(self, "Images.Get", Some(ns), c.get(req)) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(img) = resp.image else {
            return Ok(None);
        };
        let Some(target) = img.target else {
            return Ok(None);
        };
        // The config digest is a nicety: an unreadable manifest (content
        // garbage-collected, foreign media type) still leaves the digest.
        let config_digest = match self
            .config_digest(ns, &target.media_type, &target.digest)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(namespace = ns, image = name, error = %e, "cannot read image manifest");
                None
            }
        };
        Ok(Some(ImageTarget {
            name: img.name,
            media_type: target.media_type,
            digest: target.digest,
            config_digest,
        }))
    }

    /// Follows an index (this platform) and a manifest to the config digest.
    async fn config_digest(
        &self,
        ns: &str,
        media_type: &str,
        digest: &str,
    ) -> Result<Option<String>, ContainerdError> {
        let mut media_type = media_type.to_string();
        let mut digest = digest.to_string();
        // At most: index -> manifest.
        for _ in 0..2 {
            let blob = self.read_blob(ns, &digest).await?;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&blob) else {
                return Ok(None);
            };
            let mt = v
                .get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or(&media_type)
                .to_string();
            if let Some(manifests) = v.get("manifests").and_then(|m| m.as_array()) {
                let _ = mt;
                let Some(m) = pick_platform(manifests) else {
                    return Ok(None);
                };
                media_type = m
                    .get("mediaType")
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string();
                digest = match m.get("digest").and_then(|x| x.as_str()) {
                    Some(d) => d.to_string(),
                    None => return Ok(None),
                };
                continue;
            }
            return Ok(v
                .pointer("/config/digest")
                .and_then(|d| d.as_str())
                .map(str::to_string));
        }
        Ok(None)
    }

    /// Reads a content blob, bounded by [`MAX_BLOB_BYTES`].
    async fn read_blob(&self, ns: &str, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let mut c =
            ContentClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = with_ns(
            svc::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
            ns,
        )?;
        let mut stream = call!(self, "Content.Read", Some(ns), c.read(req))?;
        let mut out = Vec::new();
        while let Some(chunk) = self.next_message("Content.Read", ns, &mut stream).await? {
            if out.len() + chunk.data.len() > MAX_BLOB_BYTES {
                return Err(ContainerdError::TooMany {
                    api: Api::Containerd,
                    call: "Content.Read",
                    max: MAX_BLOB_BYTES,
                });
            }
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Subscribes to container and task lifecycle events of every
    /// namespace ([`EVENT_TOPICS`]).
    pub async fn subscribe(&self) -> Result<ContainerdEventStream, ContainerdError> {
        let mut c =
            EventsClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let filters = EVENT_TOPICS
            .iter()
            .map(|t| format!("topic==\"{t}\""))
            .collect();
        let fut = Box::pin(async move { c.subscribe(svc::SubscribeRequest { filters }).await });
        let stream = LazyStream::start(fut, STREAM_SETTLE)
            .await
            .map_err(|s| ContainerdError::status(Api::Containerd, "Events.Subscribe", None, s))?;
        Ok(ContainerdEventStream { inner: stream })
    }
}

impl RuntimeSource for ContainerdClient {
    fn api(&self) -> Api {
        Api::Containerd
    }

    fn list<'a>(&'a self, _described: &'a Listing) -> SourceFuture<'a, Vec<ContainerInfo>> {
        Box::pin(self.list_all())
    }

    /// The container's own record and task ([`ContainerdClient::container`]).
    /// No namespace: nothing to look in.
    fn lookup<'a>(
        &'a self,
        namespace: Option<&'a str>,
        id: &'a str,
    ) -> SourceFuture<'a, Option<ContainerInfo>> {
        Box::pin(async move {
            let Some(ns) = namespace else {
                return Ok(None);
            };
            self.container(ns, id).await
        })
    }

    fn events(&self) -> SourceFuture<'_, EventStream> {
        Box::pin(async move { Ok(boxed_events(self.subscribe().await?)) })
    }

    fn namespaces(&self) -> SourceFuture<'_, Vec<String>> {
        Box::pin(ContainerdClient::namespaces(self))
    }
}

/// A container record as the runtime-neutral [`ContainerInfo`] (task and
/// image digest fields left to the caller).
fn record_info(ns: &str, c: svc::Container) -> ContainerInfo {
    let mut info = ContainerInfo::new(c.id, "containerd");
    info.namespace = Some(ns.to_string());
    // Labels are kept for display only: anyone with containerd's API sets
    // them, so they never say which Pod a container is or whether it is a
    // sandbox (issue 13, case 6; CRI does).
    info.labels = bounded_labels(c.labels);
    // The image judged is the container record's own image, never the CRI
    // metadata extension's name, which is as forgeable as a label; CRI's
    // status gives the name a pod wrote once CRI knows the container.
    info.image_as_written = non_empty(c.image);
    info.cgroup_path = c.spec.as_ref().and_then(cgroups_path_of_spec);
    info
}

/// A task's status, runtime-neutral.
fn task_state(status: i32) -> ContainerState {
    match TaskStatus::try_from(status) {
        Ok(TaskStatus::Created) => ContainerState::Created,
        Ok(TaskStatus::Running) => ContainerState::Running,
        Ok(TaskStatus::Stopped) => ContainerState::Exited,
        Ok(TaskStatus::Paused | TaskStatus::Pausing) => ContainerState::Paused,
        _ => ContainerState::Unknown,
    }
}

/// containerd's event stream, decoded to [`RuntimeEvent`]s.
pub struct ContainerdEventStream {
    inner: LazyStream<containerd_client::types::Envelope>,
}

impl ContainerdEventStream {
    /// Next container lifecycle event; `Ok(None)` when containerd closed
    /// the stream. Exits of exec'd processes and undecodable envelopes are
    /// skipped.
    pub async fn next(&mut self) -> Result<Option<RuntimeEvent>, ContainerdError> {
        loop {
            let Some(env) = self.inner.message().await.map_err(|s| {
                ContainerdError::status(Api::Containerd, "Events.Subscribe", None, s)
            })?
            else {
                return Ok(None);
            };
            if let Some(ev) = decode_envelope(&env) {
                return Ok(Some(ev));
            }
        }
    }
}

impl NextEvent for ContainerdEventStream {
    async fn next_event(&mut self) -> Result<Option<RuntimeEvent>, SourceError> {
        self.next().await
    }
}

/// Decodes one event envelope; `None` for topics and payloads we skip.
pub fn decode_envelope(env: &containerd_client::types::Envelope) -> Option<RuntimeEvent> {
    let any = env.event.as_ref()?;
    let value = any.value.as_slice();
    let (container_id, kind) = match env.topic.as_str() {
        "/tasks/start" => {
            let e = cev::TaskStart::decode(value).ok()?;
            let pid = (e.pid > 0).then_some(e.pid);
            (e.container_id, EventKind::Started { pid })
        }
        "/tasks/exit" => {
            let e = cev::TaskExit::decode(value).ok()?;
            // The init process has the container's id; exec'd ones do not.
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let pid = (e.pid > 0).then_some(e.pid);
            (
                e.container_id,
                EventKind::Exited {
                    pid,
                    exit_status: Some(e.exit_status),
                },
            )
        }
        "/containers/create" => (
            cev::ContainerCreate::decode(value).ok()?.id,
            EventKind::Created,
        ),
        "/containers/delete" => (
            cev::ContainerDelete::decode(value).ok()?.id,
            EventKind::Deleted,
        ),
        _ => return None,
    };
    let timestamp_ns = env.timestamp.as_ref().and_then(|t| {
        t.seconds
            .checked_mul(1_000_000_000)?
            .checked_add(i64::from(t.nanos))
    });
    Some(RuntimeEvent {
        runtime: "containerd",
        namespace: non_empty(env.namespace.clone()),
        container_id,
        kind,
        timestamp_ns,
    })
}

/// Whether an image name starts with a registry host (`public.ecr.aws/x`,
/// `localhost:5000/x`), not a Docker Hub short name (`nginx`, `library/x`).
pub(crate) fn names_registry(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(host, _)| host.contains('.') || host.contains(':') || host == "localhost")
}

/// `linux.cgroupsPath` from the container's OCI spec (an `Any` holding
/// JSON).
fn cgroups_path_of_spec(spec: &prost_types::Any) -> Option<String> {
    if spec.value.len() > MAX_BLOB_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&spec.value).ok()?;
    v.pointer("/linux/cgroupsPath")
        .and_then(|p| p.as_str())
        .and_then(non_empty)
}

/// GOARCH name of the running machine.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The index entry for linux on this architecture (or the only entry).
fn pick_platform(manifests: &[serde_json::Value]) -> Option<&serde_json::Value> {
    let arch = goarch();
    manifests
        .iter()
        .find(|m| {
            m.pointer("/platform/os").and_then(|v| v.as_str()) == Some("linux")
                && m.pointer("/platform/architecture").and_then(|v| v.as_str()) == Some(arch)
        })
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::Envelope;

    fn env(topic: &str, msg: &impl Message) -> Envelope {
        Envelope {
            timestamp: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 5,
            }),
            namespace: "default".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: "x".into(),
                value: msg.encode_to_vec(),
            }),
        }
    }

    #[test]
    fn decodes_lifecycle_events() {
        let e = decode_envelope(&env(
            "/tasks/start",
            &cev::TaskStart {
                container_id: "c1".into(),
                pid: 77,
            },
        ))
        .unwrap();
        assert_eq!(e.container_id, "c1");
        assert_eq!(e.kind, EventKind::Started { pid: Some(77) });
        assert_eq!(e.namespace.as_deref(), Some("default"));
        assert_eq!(e.timestamp_ns, Some(2_000_000_005));
        let exit = cev::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 77,
            exit_status: 137,
            exited_at: None,
        };
        let e = decode_envelope(&env("/tasks/exit", &exit)).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Exited {
                pid: Some(77),
                exit_status: Some(137)
            }
        );
        let exec_exit = cev::TaskExit {
            id: "exec-1".into(),
            ..exit
        };
        assert_eq!(decode_envelope(&env("/tasks/exit", &exec_exit)), None);
        let e = decode_envelope(&env(
            "/containers/delete",
            &cev::ContainerDelete { id: "c2".into() },
        ))
        .unwrap();
        assert_eq!(
            (e.container_id.as_str(), e.kind),
            ("c2", EventKind::Deleted)
        );
        assert_eq!(
            decode_envelope(&env(
                "/images/create",
                &cev::ContainerDelete { id: "x".into() }
            )),
            None
        );
        let mut garbage = env("/tasks/start", &cev::ContainerDelete { id: "x".into() });
        garbage.event = Some(prost_types::Any {
            type_url: String::new(),
            value: vec![0xff, 0xff, 0xff],
        });
        assert_eq!(decode_envelope(&garbage), None);
    }

    #[test]
    fn registry_names() {
        assert!(names_registry("public.ecr.aws/nginx/nginx:latest"));
        assert!(names_registry("localhost:5000/x"));
        assert!(names_registry("localhost/x"));
        assert!(!names_registry("nginx:latest"));
        assert!(!names_registry("library/nginx"));
    }

    #[test]
    fn spec_cgroups_path() {
        let any = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/default/c1"}}"#.to_vec(),
        };
        assert_eq!(cgroups_path_of_spec(&any).as_deref(), Some("/default/c1"));
        let bad = prost_types::Any {
            type_url: String::new(),
            value: b"{".to_vec(),
        };
        assert_eq!(cgroups_path_of_spec(&bad), None);
    }

    #[test]
    fn platform_pick() {
        let arch = goarch();
        let v: Vec<serde_json::Value> = serde_json::from_str(&format!(
            r#"[{{"digest":"sha256:a","platform":{{"os":"linux","architecture":"s390x"}}}},
                {{"digest":"sha256:b","platform":{{"os":"linux","architecture":"{arch}"}}}}]"#
        ))
        .unwrap();
        assert_eq!(pick_platform(&v).unwrap()["digest"], "sha256:b");
        assert!(pick_platform(&v[..1]).is_some());
        assert!(pick_platform(&[]).is_none());
    }

    #[test]
    fn namespace_metadata() {
        let r = with_ns((), "k8s.io").unwrap();
        assert_eq!(r.metadata().get("containerd-namespace").unwrap(), "k8s.io");
        assert!(with_ns((), "bad\nns").is_err());
    }
}
