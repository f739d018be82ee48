//! Kubernetes CRI v1 client over a unix socket (containerd's CRI plugin,
//! CRI-O), built on the `k8s-cri` crate's generated tonic client.
//!
//! What the runtimes report (containerd 1.6):
//! - `ListContainers`: `image.image` is the image exactly as given to
//!   `CreateContainer` (kubelet passes the image *id* there, a direct CRI
//!   client the name), `image_ref` is the image id (`sha256:<config>`).
//! - `ContainerStatus`: `image.image` is the image's first repo tag,
//!   `image_ref` its first repo digest (`docker.io/library/nginx@sha256:...`);
//!   with `verbose`, `info["info"]` is JSON with the init `pid`, the
//!   `sandboxID` and the OCI `runtimeSpec` (hence `linux.cgroupsPath`).
//! - `GetContainerEvents` is answered `Unimplemented` by containerd 1.6 (it
//!   came with 1.7); [`CriClient::container_events`] then returns
//!   [`CriError::Unsupported`]. The agent uses containerd's event service
//!   ([`super::containerd`]) wherever it has containerd's API, and this
//!   stream only without it ([`super::events::forward_events`]); with
//!   neither, new containers wait for the next resync.
//!
//! What containerd 2 (2.1) reports differently:
//! - `ListContainers` keeps the `CreateContainer` image spec, with the
//!   kubelet's `user_specified_image` (the name the pod wrote; checked
//!   against 2.1 by `runtime_sources`'
//!   `cri_listing_described_by_containerd_needs_no_verbose_status`), so
//!   [`CriClient::list_all_described`] keeps that name without the
//!   verbose call.
//!   `ContainerStatus` still answers `image.image` with the image's first
//!   repo tag and leaves `user_specified_image` empty; the verbose info's
//!   `config.image.user_specified_image` has it, and is preferred here. With
//!   one image under two names (a registry and its byte-identical mirror)
//!   the first repo tag may be the other name. containerd 1.6 drops the
//!   field: there the first repo tag is all the runtime knows.
//! - The verbose info's other keys (`pid`, `sandboxID`, `runtimeSpec`; for
//!   sandboxes `image`) are unchanged.
//! - `GetContainerEvents` is implemented: created / started / stopped /
//!   deleted of containers and sandboxes, with no pid and no cgroup. The
//!   agent keeps containerd's own events (every namespace, the task's pid,
//!   and the spec's cgroup path at `/containers/create`, before the task
//!   exists); the CRI stream is the one it uses for a CRI-only runtime
//!   (CRI-O), each event followed by a status call for the pid and cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::{
    autodetect, bounded_labels, boxed_events, connect_unix, container_key, endpoint_path,
    non_empty, Api, ContainerInfo, ContainerKind, ContainerState, EventKind, EventStream,
    LazyStream, Listing, NextEvent, RuntimeEvent, RuntimeSource, SourceError, SourceFuture,
    DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, MAX_CONTAINERS, MAX_MESSAGE_BYTES,
    STREAM_SETTLE,
};

/// Where CRI runtimes listen, in the order autodetection tries them.
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/k3s/containerd/containerd.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
];

/// containerd's CRI plugin keeps everything in this containerd namespace.
pub const CONTAINERD_CRI_NAMESPACE: &str = "k8s.io";

/// Largest verbose `info` JSON parsed.
const MAX_INFO_BYTES: usize = 4 * 1024 * 1024;

/// Status calls in flight at once while listing. The runtime answers them
/// in parallel; one at a time, a node's ~400 round trips (110 pods, 300
/// containers) were most of the agent's start-up (docs/benchmarks.md).
/// Results keep the listing's order.
const STATUS_CONCURRENCY: usize = 8;

/// Errors of the CRI client (see [`SourceError`]).
pub type CriError = SourceError;

/// An image as the CRI image service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriImage {
    /// Image id (`sha256:<config digest>` on containerd).
    pub id: String,
    /// Repo tags, e.g. `docker.io/library/nginx:latest`.
    pub repo_tags: Vec<String>,
    /// Repo digests, e.g. `docker.io/library/nginx@sha256:...`.
    pub repo_digests: Vec<String>,
}

/// Output of `CriClient::exec_sync`.
#[cfg(any(test, feature = "cri-write"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// A CRI v1 client bound to one runtime socket.
#[derive(Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
    runtime_name: String,
    runtime_version: String,
    call_timeout: Duration,
    /// Verbose `ContainerStatus` / `PodSandboxStatus` calls made (shared by
    /// clones): what [`CriClient::list_all_described`] saves.
    verbose_calls: Arc<AtomicU64>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("socket", &self.socket)
            .field("runtime_name", &self.runtime_name)
            .field("runtime_version", &self.runtime_version)
            .finish()
    }
}

/// Runs one unary call with a bound.
macro_rules! call {
    ($self:ident, $name:literal, $fut:expr) => {
        super::unary(Api::Cri, $name, None, $self.call_timeout, $fut).await
    };
}

impl CriClient {
    /// Connects to `endpoint` (`unix:///path` or `/path`) and checks that
    /// a CRI v1 runtime answers `Version`.
    pub async fn connect(endpoint: &str) -> Result<Self, CriError> {
        let path = endpoint_path(endpoint)?;
        Self::connect_path(&path, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT).await
    }

    /// Connects to a socket path with explicit bounds.
    pub async fn connect_path(
        path: &Path,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Self, CriError> {
        let channel = connect_unix(path, connect_timeout).await?;
        let runtime =
            RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let images = ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut client = CriClient {
            runtime,
            images,
            socket: path.to_path_buf(),
            runtime_name: String::new(),
            runtime_version: String::new(),
            call_timeout,
            verbose_calls: Arc::default(),
        };
        let mut rt = client.runtime.clone();
        let v = call!(
            client,
            "Version",
            rt.version(api::VersionRequest {
                version: "v1".into()
            })
        )?;
        client.runtime_name = v.runtime_name;
        client.runtime_version = v.runtime_version;
        Ok(client)
    }

    /// Uses `endpoint` if given, else the first of [`DEFAULT_ENDPOINTS`]
    /// that exists and answers.
    pub async fn autodetect(endpoint: Option<&str>) -> Result<Self, CriError> {
        autodetect(Api::Cri, endpoint, DEFAULT_ENDPOINTS, |p| async move {
            Self::connect_path(&p, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT).await
        })
        .await
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runtime name from `Version` (`containerd`, `cri-o`).
    pub fn runtime_name(&self) -> &str {
        &self.runtime_name
    }

    /// Runtime version from `Version`.
    pub fn runtime_version(&self) -> &str {
        &self.runtime_version
    }

    /// The runtime namespace CRI objects live in (`k8s.io` on containerd).
    pub fn runtime_namespace(&self) -> Option<String> {
        (self.runtime_name == "containerd").then(|| CONTAINERD_CRI_NAMESPACE.to_string())
    }

    /// Verbose status calls (`ContainerStatus`, `PodSandboxStatus`) this
    /// client and its clones made so far.
    pub fn verbose_calls(&self) -> u64 {
        self.verbose_calls.load(Ordering::Relaxed)
    }

    /// The raw generated runtime client, for calls not wrapped here.
    #[cfg(any(test, feature = "cri-write"))]
    pub fn raw_runtime(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// Pod sandboxes, each with its status (pid, sandbox image).
    pub async fn list_pod_sandboxes(&self) -> Result<Vec<ContainerInfo>, CriError> {
        let mut rt = self.runtime.clone();
        let resp = call!(
            self,
            "ListPodSandbox",
            rt.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        )?;
        if resp.items.len() > MAX_CONTAINERS {
            return Err(CriError::TooMany {
                api: Api::Cri,
                call: "ListPodSandbox",
                max: MAX_CONTAINERS,
            });
        }
        let infos: Vec<ContainerInfo> = resp.items.iter().map(|sb| self.sandbox_base(sb)).collect();
        self.with_statuses(infos).await
    }

    /// Each listed sandbox or container with its verbose status,
    /// STATUS_CONCURRENCY calls at a time, in listing order. One removed
    /// between list and status keeps what the list said.
    async fn with_statuses(
        &self,
        infos: Vec<ContainerInfo>,
    ) -> Result<Vec<ContainerInfo>, CriError> {
        self.with_statuses_where_needed(infos.into_iter().map(|i| (i, true)).collect())
            .await
    }

    /// [`Self::with_statuses`] for the items flagged `true`; the others
    /// are kept as they are (in listing order).
    async fn with_statuses_where_needed(
        &self,
        infos: Vec<(ContainerInfo, bool)>,
    ) -> Result<Vec<ContainerInfo>, CriError> {
        stream::iter(infos)
            .map(|(mut info, needed)| async move {
                if !needed {
                    return Ok(info);
                }
                let r = if info.kind == Some(ContainerKind::Sandbox) {
                    self.pod_sandbox_status_into(&mut info).await
                } else {
                    self.container_status_into(&mut info).await
                };
                match r {
                    Ok(()) => Ok(info),
                    Err(e) if e.is_not_found() => Ok(info),
                    Err(e) => Err(e),
                }
            })
            .buffered(STATUS_CONCURRENCY)
            .try_collect()
            .await
    }

    fn sandbox_base(&self, sb: &api::PodSandbox) -> ContainerInfo {
        let mut info = ContainerInfo::new(sb.id.clone(), "cri");
        info.namespace = self.runtime_namespace();
        info.kind = Some(ContainerKind::Sandbox);
        info.sandbox_id = Some(sb.id.clone());
        if let Some(m) = &sb.metadata {
            info.pod_name = non_empty(m.name.clone());
            info.pod_namespace = non_empty(m.namespace.clone());
            info.pod_uid = non_empty(m.uid.clone());
        }
        info.static_pod = is_static_pod(sb);
        info.state = match api::PodSandboxState::try_from(sb.state) {
            Ok(api::PodSandboxState::SandboxReady) => ContainerState::Running,
            Ok(api::PodSandboxState::SandboxNotready) => ContainerState::Exited,
            Err(_) => ContainerState::Unknown,
        };
        info.labels = bounded_labels(sb.labels.clone());
        info.fill_from_cri_labels();
        info
    }

    async fn pod_sandbox_status_into(&self, info: &mut ContainerInfo) -> Result<(), CriError> {
        self.verbose_calls.fetch_add(1, Ordering::Relaxed);
        let mut rt = self.runtime.clone();
        let resp = call!(
            self,
            "PodSandboxStatus",
            rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: info.id.clone(),
                verbose: true,
            })
        )?;
        let v = parse_info(&resp.info);
        if let Some(v) = &v {
            info.pid = pid_of(v);
            info.cgroup_path = cgroups_path_of(v);
            if let Some(img) = v.get("image").and_then(|i| i.as_str()) {
                info.image_as_written = non_empty(img);
            }
        }
        if let Some(img) = info.image_as_written.clone() {
            if let Ok(Some(st)) = self.image_status(&img).await {
                info.image_id = non_empty(st.id);
                info.image_ref = st.repo_digests.into_iter().next();
            }
        }
        Ok(())
    }

    /// Workload containers, each with its verbose status (pid, cgroup,
    /// resolved image).
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, CriError> {
        let mut rt = self.runtime.clone();
        let resp = call!(
            self,
            "ListContainers",
            rt.list_containers(api::ListContainersRequest { filter: None })
        )?;
        if resp.containers.len() > MAX_CONTAINERS {
            return Err(CriError::TooMany {
                api: Api::Cri,
                call: "ListContainers",
                max: MAX_CONTAINERS,
            });
        }
        let sandboxes: HashMap<String, api::PodSandbox> = {
            let r = call!(
                self,
                "ListPodSandbox",
                rt.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            )?;
            r.items
                .into_iter()
                .take(MAX_CONTAINERS)
                .map(|s| (s.id.clone(), s))
                .collect()
        };
        let infos: Vec<ContainerInfo> = resp
            .containers
            .iter()
            .map(|c| self.container_base(c, sandboxes.get(&c.pod_sandbox_id)))
            .collect();
        self.with_statuses(infos).await
    }

    /// Sandboxes and workload containers together, each with its verbose
    /// status.
    pub async fn list_all(&self) -> Result<Vec<ContainerInfo>, CriError> {
        let mut all = self.list_pod_sandboxes().await?;
        all.extend(self.list_containers().await?);
        Ok(all)
    }

    /// Sandboxes and workload containers together, from the two List calls
    /// alone where containerd's own listing describes the object
    /// (`described(id)`: containerd's report of that id in the CRI plugin's
    /// namespace, see [`describe_from_containerd`]); the verbose status
    /// call only for the others (not listed by containerd yet, a report
    /// that lacks the task's pid, the spec's cgroups path or the image, or
    /// names another image than CRI's record). The kind and the Pod are
    /// always CRI's (its List calls); containerd gives the pid, the cgroups
    /// path and the image's digest. On a runtime with no containerd
    /// namespace (CRI-O) every object gets its verbose status.
    ///
    /// At 737 pods and 2,000 containers the verbose calls were 69-73 % of
    /// the agent's start-up (docs/benchmarks.md, round 4).
    pub async fn list_all_described<'a>(
        &self,
        described: impl Fn(&str) -> Option<&'a ContainerInfo>,
    ) -> Result<Vec<ContainerInfo>, CriError> {
        let mut rt = self.runtime.clone();
        let sandboxes = call!(
            self,
            "ListPodSandbox",
            rt.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        )?;
        if sandboxes.items.len() > MAX_CONTAINERS {
            return Err(CriError::TooMany {
                api: Api::Cri,
                call: "ListPodSandbox",
                max: MAX_CONTAINERS,
            });
        }
        let containers = call!(
            self,
            "ListContainers",
            rt.list_containers(api::ListContainersRequest { filter: None })
        )?;
        if containers.containers.len() > MAX_CONTAINERS {
            return Err(CriError::TooMany {
                api: Api::Cri,
                call: "ListContainers",
                max: MAX_CONTAINERS,
            });
        }
        let by_id: HashMap<&str, &api::PodSandbox> =
            sandboxes.items.iter().map(|s| (s.id.as_str(), s)).collect();
        let ns = self.runtime_namespace();
        let complete = |mut info: ContainerInfo| {
            let done = ns.is_some()
                && described(&info.id).is_some_and(|n| describe_from_containerd(&mut info, n));
            (info, !done)
        };
        let mut infos = Vec::with_capacity(sandboxes.items.len() + containers.containers.len());
        infos.extend(
            sandboxes
                .items
                .iter()
                .map(|sb| complete(self.sandbox_base(sb))),
        );
        infos.extend(containers.containers.iter().map(|c| {
            complete(self.container_base(c, by_id.get(c.pod_sandbox_id.as_str()).copied()))
        }));
        self.with_statuses_where_needed(infos).await
    }

    fn container_base(&self, c: &api::Container, sb: Option<&api::PodSandbox>) -> ContainerInfo {
        let mut info = ContainerInfo::new(c.id.clone(), "cri");
        info.namespace = self.runtime_namespace();
        info.kind = Some(ContainerKind::Container);
        info.sandbox_id = non_empty(c.pod_sandbox_id.clone());
        if let Some(m) = sb.and_then(|s| s.metadata.as_ref()) {
            info.pod_name = non_empty(m.name.clone());
            info.pod_namespace = non_empty(m.namespace.clone());
            info.pod_uid = non_empty(m.uid.clone());
        }
        info.static_pod = sb.is_some_and(is_static_pod);
        if let Some(m) = &c.metadata {
            info.container_name = non_empty(m.name.clone());
        }
        if let Some(spec) = &c.image {
            // A client that created the container by name (not kubelet,
            // which passes the image id) left the name here.
            info.image_as_written = non_empty(spec.user_specified_image.clone())
                .or_else(|| non_empty(spec.image.clone()).filter(|i| !is_image_id(i)));
        }
        info.image_id = non_empty(c.image_id.clone())
            .or_else(|| Some(c.image_ref.clone()).filter(|r| is_image_id(r)));
        info.state = state_of(c.state);
        info.labels = bounded_labels(c.labels.clone());
        info.fill_from_cri_labels();
        info
    }

    async fn container_status_into(&self, info: &mut ContainerInfo) -> Result<(), CriError> {
        self.verbose_calls.fetch_add(1, Ordering::Relaxed);
        let mut rt = self.runtime.clone();
        let resp = call!(
            self,
            "ContainerStatus",
            rt.container_status(api::ContainerStatusRequest {
                container_id: info.id.clone(),
                verbose: true,
            })
        )?;
        if let Some(st) = resp.status {
            // containerd resolves an id prefix to the one container it
            // names: an answer about another container is no answer about
            // this one (a forged container named by a prefix of a real one
            // must not borrow its identity).
            if !st.id.is_empty() && st.id != info.id {
                return Err(CriError::status(
                    Api::Cri,
                    "ContainerStatus",
                    None,
                    tonic::Status::not_found(format!("no container {:?}", info.id)),
                ));
            }
            info.state = state_of(st.state);
            if let Some(spec) = &st.image {
                let user = non_empty(spec.user_specified_image.clone());
                let tag = non_empty(spec.image.clone()).filter(|i| !is_image_id(i));
                info.image_as_written = user.or(info.image_as_written.take()).or(tag);
            }
            if st.image_ref.contains('@') {
                info.image_ref = Some(st.image_ref.clone());
            } else if is_image_id(&st.image_ref) && info.image_id.is_none() {
                info.image_id = Some(st.image_ref.clone());
            }
            if let Some(id) = non_empty(st.image_id.clone()) {
                info.image_id = Some(id);
            }
            if info.container_name.is_none() {
                info.container_name = st.metadata.as_ref().and_then(|m| non_empty(m.name.clone()));
            }
            if info.labels.is_empty() {
                info.labels = bounded_labels(st.labels);
                info.fill_from_cri_labels();
            }
        }
        if let Some(v) = parse_info(&resp.info) {
            info.pid = pid_of(&v).filter(|_| info.state == ContainerState::Running);
            info.cgroup_path = cgroups_path_of(&v);
            // containerd 2 answers `image` with the image's first repo tag
            // and an empty `user_specified_image`; the name the pod wrote
            // is only in the verbose config.
            if let Some(written) = user_specified_image_of(&v) {
                if let Some(r) = info.image_ref.as_deref() {
                    if let Some((_, digest)) = r.split_once('@') {
                        if super::containerd::names_registry(&written) {
                            info.image_ref = super::image_digest_ref(&written, digest);
                        }
                    }
                }
                info.image_as_written = Some(written);
            }
            if info.sandbox_id.is_none() {
                info.sandbox_id = v
                    .get("sandboxID")
                    .and_then(|s| s.as_str())
                    .and_then(non_empty);
            }
        }
        // Resolve the digest through the image service when the status did
        // not (CRI-O with an image pulled by id, or an image whose repo
        // digest is unknown).
        if info.image_ref.is_none() {
            let key = info
                .image_id
                .clone()
                .or_else(|| info.image_as_written.clone());
            if let Some(key) = key {
                if let Ok(Some(img)) = self.image_status(&key).await {
                    info.image_ref = img.repo_digests.into_iter().next();
                    if info.image_id.is_none() {
                        info.image_id = non_empty(img.id);
                    }
                }
            }
        }
        Ok(())
    }

    /// What CRI says about one id: the container, else the pod sandbox of
    /// that id, with their statuses; `Ok(None)` when CRI knows neither
    /// (yet). Pod fields come from the sandbox's CRI metadata.
    pub async fn lookup(&self, id: &str) -> Result<Option<ContainerInfo>, CriError> {
        match self.container_status(id).await {
            Ok(mut c) => {
                if let Some(sb) = c.sandbox_id.clone() {
                    match self.sandbox(&sb).await {
                        Ok(Some(s)) => {
                            c.pod_name = s.pod_name.or(c.pod_name.take());
                            c.pod_namespace = s.pod_namespace.or(c.pod_namespace.take());
                            c.pod_uid = s.pod_uid.or(c.pod_uid.take());
                            c.static_pod = s.static_pod;
                        }
                        Ok(None) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(Some(c));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        match self.sandbox(id).await {
            Err(e) if e.is_not_found() => Ok(None),
            r => r,
        }
    }

    /// One pod sandbox by id, from CRI's listing (with its status).
    async fn sandbox(&self, id: &str) -> Result<Option<ContainerInfo>, CriError> {
        let mut rt = self.runtime.clone();
        let resp = call!(
            self,
            "ListPodSandbox",
            rt.list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    id: id.to_string(),
                    ..Default::default()
                }),
            })
        )?;
        let Some(sb) = resp.items.iter().find(|s| s.id == id) else {
            return Ok(None);
        };
        let mut info = self.sandbox_base(sb);
        match self.pod_sandbox_status_into(&mut info).await {
            Ok(()) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(Some(info)),
            Err(e) => Err(e),
        }
    }

    /// One container, with its verbose status.
    pub async fn container_status(&self, id: &str) -> Result<ContainerInfo, CriError> {
        let mut info = ContainerInfo::new(id.to_string(), "cri");
        info.namespace = self.runtime_namespace();
        info.kind = Some(ContainerKind::Container);
        self.container_status_into(&mut info).await?;
        Ok(info)
    }

    /// `ImageStatus`: `Ok(None)` when the runtime does not have the image.
    pub async fn image_status(&self, image: &str) -> Result<Option<CriImage>, CriError> {
        let mut im = self.images.clone();
        let resp = call!(
            self,
            "ImageStatus",
            im.image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
        )?;
        Ok(resp.image.map(|i| CriImage {
            id: i.id,
            repo_tags: i.repo_tags,
            repo_digests: i.repo_digests,
        }))
    }

    /// The image ids (`sha256:<config digest>`) of the node's pod sandbox
    /// (pause) images, as CRI configures them: containerd 1.6/1.7's
    /// `sandbox_image` (in the verbose `Status` config, resolved through
    /// `ImageStatus`) and the images CRI reports pinned (containerd 1.7+
    /// and 2 pin the sandbox image). Node configuration, not workloads:
    /// Kyverno never checks them. Empty when CRI tells neither.
    pub async fn sandbox_image_ids(&self) -> Result<Vec<String>, CriError> {
        let mut ids = Vec::new();
        let mut rt = self.runtime.clone();
        let st = call!(
            self,
            "Status",
            rt.status(api::StatusRequest { verbose: true })
        )?;
        let configured = st
            .info
            .get("config")
            .filter(|c| c.len() <= MAX_INFO_BYTES)
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|v| {
                v.get("sandboxImage")
                    .and_then(|s| s.as_str())
                    .and_then(non_empty)
            });
        if let Some(name) = configured {
            if let Some(img) = self.image_status(&name).await? {
                ids.extend(non_empty(img.id));
            }
        }
        let mut im = self.images.clone();
        let list = call!(
            self,
            "ListImages",
            im.list_images(api::ListImagesRequest { filter: None })
        )?;
        ids.extend(
            list.images
                .into_iter()
                .take(MAX_CONTAINERS)
                .filter(|i| i.pinned)
                .filter_map(|i| non_empty(i.id)),
        );
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// `GetContainerEvents` (CRI runtimes that implement it: containerd
    /// 1.7+, CRI-O 1.26+). [`CriError::Unsupported`] on containerd 1.6.
    pub async fn container_events(&self) -> Result<CriEventStream, CriError> {
        let mut rt = self.runtime.clone();
        let fut = Box::pin(async move { rt.get_container_events(api::GetEventsRequest {}).await });
        let stream = LazyStream::start(fut, STREAM_SETTLE)
            .await
            .map_err(|s| CriError::status(Api::Cri, "GetContainerEvents", None, s))?;
        Ok(CriEventStream {
            inner: stream,
            namespace: self.runtime_namespace(),
        })
    }

    /// `ExecSync`: runs `cmd` in a running container, bounded by `timeout`.
    #[cfg(any(test, feature = "cri-write"))]
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, CriError> {
        let mut rt = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        let fut = rt.exec_sync(req);
        let bound = timeout + self.call_timeout;
        let resp = match tokio::time::timeout(bound, fut).await {
            Err(_) => {
                return Err(CriError::Timeout {
                    api: Api::Cri,
                    call: "ExecSync",
                    timeout: bound,
                })
            }
            Ok(Err(s)) => return Err(CriError::status(Api::Cri, "ExecSync", None, s)),
            Ok(Ok(r)) => r.into_inner(),
        };
        Ok(ExecOutput {
            exit_code: resp.exit_code,
            stdout: resp.stdout,
            stderr: resp.stderr,
        })
    }

    /// `RunPodSandbox`; returns the sandbox id.
    #[cfg(any(test, feature = "cri-write"))]
    pub async fn run_pod_sandbox(&self, config: api::PodSandboxConfig) -> Result<String, CriError> {
        let mut rt = self.runtime.clone();
        let r = call!(
            self,
            "RunPodSandbox",
            rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
        )?;
        Ok(r.pod_sandbox_id)
    }

    /// `CreateContainer` in a sandbox; returns the container id.
    #[cfg(any(test, feature = "cri-write"))]
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut rt = self.runtime.clone();
        let r = call!(
            self,
            "CreateContainer",
            rt.create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
        )?;
        Ok(r.container_id)
    }

    /// `StartContainer`.
    #[cfg(any(test, feature = "cri-write"))]
    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut rt = self.runtime.clone();
        call!(
            self,
            "StartContainer",
            rt.start_container(api::StartContainerRequest {
                container_id: id.to_string()
            })
        )?;
        Ok(())
    }

    /// `StopContainer` with a grace period in seconds.
    #[cfg(any(test, feature = "cri-write"))]
    pub async fn stop_container(&self, id: &str, grace_secs: i64) -> Result<(), CriError> {
        let mut rt = self.runtime.clone();
        call!(
            self,
            "StopContainer",
            rt.stop_container(api::StopContainerRequest {
                container_id: id.to_string(),
                timeout: grace_secs,
            })
        )?;
        Ok(())
    }

    /// `StopPodSandbox` then `RemovePodSandbox`.
    #[cfg(any(test, feature = "cri-write"))]
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut rt = self.runtime.clone();
        call!(
            self,
            "StopPodSandbox",
            rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string()
            })
        )?;
        call!(
            self,
            "RemovePodSandbox",
            rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string()
            })
        )?;
        Ok(())
    }
}

impl RuntimeSource for CriClient {
    fn api(&self) -> Api {
        Api::Cri
    }

    fn list<'a>(&'a self, described: &'a Listing) -> SourceFuture<'a, Vec<ContainerInfo>> {
        Box::pin(async move {
            let ns = self.runtime_namespace();
            self.list_all_described(|id| described.get(&container_key(ns.as_deref(), id)))
                .await
        })
    }

    /// CRI ids are unique on the node: the namespace is not needed.
    fn lookup<'a>(
        &'a self,
        _namespace: Option<&'a str>,
        id: &'a str,
    ) -> SourceFuture<'a, Option<ContainerInfo>> {
        Box::pin(CriClient::lookup(self, id))
    }

    fn events(&self) -> SourceFuture<'_, EventStream> {
        Box::pin(async move { Ok(boxed_events(self.container_events().await?)) })
    }

    fn sandbox_image_ids(&self) -> SourceFuture<'_, Vec<String>> {
        Box::pin(CriClient::sandbox_image_ids(self))
    }

    fn verbose_calls(&self) -> u64 {
        CriClient::verbose_calls(self)
    }
}

/// Stream of CRI container events.
pub struct CriEventStream {
    inner: LazyStream<api::ContainerEventResponse>,
    namespace: Option<String>,
}

impl CriEventStream {
    /// Next event; `Ok(None)` when the runtime closed the stream.
    pub async fn next(&mut self) -> Result<Option<RuntimeEvent>, CriError> {
        let msg = self
            .inner
            .message()
            .await
            .map_err(|s| CriError::status(Api::Cri, "GetContainerEvents", None, s))?;
        Ok(msg.map(|m| {
            let pid = None;
            let kind = match api::ContainerEventType::try_from(m.container_event_type) {
                Ok(api::ContainerEventType::ContainerCreatedEvent) => EventKind::Created,
                Ok(api::ContainerEventType::ContainerStartedEvent) => EventKind::Started { pid },
                Ok(api::ContainerEventType::ContainerStoppedEvent) => EventKind::Exited {
                    pid,
                    exit_status: m
                        .containers_statuses
                        .iter()
                        .find(|s| s.id == m.container_id)
                        .and_then(|s| u32::try_from(s.exit_code).ok()),
                },
                Ok(api::ContainerEventType::ContainerDeletedEvent) | Err(_) => EventKind::Deleted,
            };
            RuntimeEvent {
                runtime: "cri",
                namespace: self.namespace.clone(),
                container_id: m.container_id,
                kind,
                timestamp_ns: (m.created_at > 0).then_some(m.created_at),
            }
        }))
    }
}

impl NextEvent for CriEventStream {
    async fn next_event(&mut self) -> Result<Option<RuntimeEvent>, SourceError> {
        self.next().await
    }
}

/// Completes `info`, a sandbox or container as CRI's List calls describe
/// it, from `n`, containerd's own report of the same id in the same
/// namespace; `false` (and `info` untouched) when `n` does not describe it
/// well enough to skip CRI's verbose status:
/// - a running object needs the task's pid, every one the OCI spec's
///   cgroups path and the image's digest and id;
/// - a container's image id (CRI's record of what it created the
///   container from) must be the one containerd's record names: the image
///   judged stays the one the runtime runs.
///
/// Kept from CRI: the kind, the Pod, the sandbox id, the container name,
/// the labels, the state and the image as the Pod wrote it (containerd 2's
/// `user_specified_image`, which its `ListContainers` reports as the
/// verbose config does; containerd 1.6 drops it, and the name is then
/// containerd's record's, as the verbose status's first repo tag was one
/// of the image's names). The digest is named by the name the Pod wrote
/// where that names a registry, as the verbose path does.
pub fn describe_from_containerd(info: &mut ContainerInfo, n: &ContainerInfo) -> bool {
    if n.runtime != "containerd"
        || n.id != info.id
        || info.namespace.is_none()
        || n.namespace != info.namespace
    {
        return false;
    }
    let (Some(cgroup), Some(image_ref), Some(image_id)) =
        (&n.cgroup_path, &n.image_ref, &n.image_id)
    else {
        return false;
    };
    let Some((_, digest)) = image_ref.split_once('@') else {
        return false;
    };
    if info.image_id.as_ref().is_some_and(|id| id != image_id) {
        return false;
    }
    let sandbox = info.kind == Some(ContainerKind::Sandbox);
    let running = info.state == ContainerState::Running;
    if running && n.pid.is_none() {
        return false;
    }
    info.pid = n.pid.filter(|_| running || sandbox);
    info.cgroup_path = Some(cgroup.clone());
    info.image_id = Some(image_id.clone());
    if info.image_as_written.is_none() {
        info.image_as_written = n.image_as_written.clone();
    }
    info.image_ref = match info.image_as_written.as_deref() {
        Some(w) if !sandbox && super::containerd::names_registry(w) => {
            super::image_digest_ref(w, digest).or_else(|| Some(image_ref.clone()))
        }
        _ => Some(image_ref.clone()),
    };
    if info.state == ContainerState::Unknown {
        info.state = n.state;
    }
    true
}

fn state_of(s: i32) -> ContainerState {
    match api::ContainerState::try_from(s) {
        Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

/// `sha256:<64 hex>`: an image id, not a name.
fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses the verbose `info` map's `info` JSON (bounded).
fn parse_info(info: &HashMap<String, String>) -> Option<serde_json::Value> {
    let raw = info.get("info")?;
    if raw.len() > MAX_INFO_BYTES {
        return None;
    }
    serde_json::from_str(raw).ok()
}

fn pid_of(v: &serde_json::Value) -> Option<u32> {
    v.get("pid")
        .and_then(|p| p.as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// `config.image.user_specified_image` of the verbose info: the image as
/// the pod spec wrote it (containerd 2; containerd 1.6 drops the field).
fn user_specified_image_of(v: &serde_json::Value) -> Option<String> {
    v.pointer("/config/image/user_specified_image")
        .and_then(|p| p.as_str())
        .filter(|s| !s.is_empty() && !is_image_id(s))
        .map(str::to_string)
}

fn cgroups_path_of(v: &serde_json::Value) -> Option<String> {
    v.pointer("/runtimeSpec/linux/cgroupsPath")
        .and_then(|p| p.as_str())
        .and_then(non_empty)
}

/// The kubelet runs this sandbox's Pod from its own manifests: the
/// annotation the kubelet stamps on every Pod it runs (`file`, `http`; `api`
/// for the API server's Pods) and passes to RunPodSandbox.
fn is_static_pod(sb: &api::PodSandbox) -> bool {
    matches!(
        sb.annotations
            .get("kubernetes.io/config.source")
            .map(String::as_str),
        Some("file" | "http")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_info_of_containerd() {
        // Shape of containerd 1.6's ContainerStatus verbose info.
        let mut m = HashMap::new();
        m.insert(
            "info".to_string(),
            r#"{"sandboxID":"abc","pid":4242,"removing":false,"runtimeSpec":{"linux":{"cgroupsPath":"/kubepods/besteffort/podx/123"}}}"#
                .to_string(),
        );
        let v = parse_info(&m).unwrap();
        assert_eq!(pid_of(&v), Some(4242));
        assert_eq!(
            cgroups_path_of(&v).as_deref(),
            Some("/kubepods/besteffort/podx/123")
        );
        m.insert("info".into(), r#"{"pid":0}"#.into());
        assert_eq!(pid_of(&parse_info(&m).unwrap()), None);
        m.insert("info".into(), "not json".into());
        assert!(parse_info(&m).is_none());
        m.insert("info".into(), " ".repeat(MAX_INFO_BYTES + 1));
        assert!(parse_info(&m).is_none());
    }

    #[test]
    fn verbose_info_of_containerd_2_names_the_image_the_pod_wrote() {
        // containerd 2.1, a container the kubelet created by image id.
        let id = format!("sha256:{}", "b".repeat(64));
        let mut m = HashMap::new();
        m.insert(
            "info".to_string(),
            format!(
                r#"{{"sandboxID":"s1","pid":7,"config":{{"metadata":{{"name":"main"}},"image":{{"image":"{id}","user_specified_image":"public.ecr.aws/docker/library/nginx:latest"}}}},"runtimeSpec":{{"linux":{{"cgroupsPath":"/kubepods/burstable/podx/c1"}}}}}}"#
            ),
        );
        let v = parse_info(&m).unwrap();
        assert_eq!(
            user_specified_image_of(&v).as_deref(),
            Some("public.ecr.aws/docker/library/nginx:latest")
        );
        // containerd 1.6's config has no such field; an id is not a name.
        m.insert(
            "info".into(),
            format!(r#"{{"config":{{"image":{{"image":"{id}"}}}}}}"#),
        );
        assert_eq!(user_specified_image_of(&parse_info(&m).unwrap()), None);
        m.insert(
            "info".into(),
            format!(r#"{{"config":{{"image":{{"user_specified_image":"{id}"}}}}}}"#),
        );
        assert_eq!(user_specified_image_of(&parse_info(&m).unwrap()), None);
    }

    /// What containerd's listing reports of a running CRI container.
    fn containerd_report(id: &str, image: &str, digest: &str, config: &str) -> ContainerInfo {
        let mut n = ContainerInfo::new(id.into(), "containerd");
        n.namespace = Some("k8s.io".into());
        n.image_as_written = Some(image.into());
        n.image_ref = super::super::image_digest_ref(image, digest);
        n.image_id = Some(config.into());
        n.state = ContainerState::Running;
        n.pid = Some(4242);
        n.cgroup_path = Some(format!("/kubepods/burstable/podu/{id}"));
        // containerd's labels say nothing CRI is trusted with.
        n.kind = None;
        n.labels
            .insert("io.kubernetes.pod.name".into(), "forged".into());
        n
    }

    /// What CRI's ListContainers gives (kubelet: created by image id).
    fn cri_listed(id: &str, written: Option<&str>, config: &str) -> ContainerInfo {
        let mut c = ContainerInfo::new(id.into(), "cri");
        c.namespace = Some("k8s.io".into());
        c.kind = Some(ContainerKind::Container);
        c.sandbox_id = Some("sb1".into());
        c.pod_name = Some("web-0".into());
        c.pod_namespace = Some("prod".into());
        c.pod_uid = Some("uid-1".into());
        c.container_name = Some("nginx".into());
        c.image_as_written = written.map(str::to_string);
        c.image_id = Some(config.into());
        c.state = ContainerState::Running;
        c
    }

    #[test]
    fn containerd_report_completes_a_listed_container_without_verbose_status() {
        let config = format!("sha256:{}", "c".repeat(64));
        let digest = format!("sha256:{}", "d".repeat(64));
        let n = containerd_report("c1", "docker.io/library/nginx:latest", &digest, &config);

        // containerd 1.6: CRI's list names no image (the kubelet passed
        // the id); the name is containerd's record's.
        let mut c = cri_listed("c1", None, &config);
        assert!(describe_from_containerd(&mut c, &n));
        assert_eq!(c.pid, Some(4242));
        assert_eq!(
            c.cgroup_path.as_deref(),
            Some("/kubepods/burstable/podu/c1")
        );
        assert_eq!(
            c.image_as_written.as_deref(),
            Some("docker.io/library/nginx:latest")
        );
        assert_eq!(
            c.image_ref,
            Some(format!("docker.io/library/nginx@{digest}"))
        );
        assert_eq!(c.image_id.as_deref(), Some(config.as_str()));
        // Identity stays CRI's.
        assert_eq!(c.kind, Some(ContainerKind::Container));
        assert_eq!(c.pod_name.as_deref(), Some("web-0"));
        assert_eq!(c.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(c.pod_uid.as_deref(), Some("uid-1"));
        assert_eq!(c.runtime, "cri");

        // containerd 2: the name the Pod wrote (user_specified_image) is
        // kept, and names the digest, as the verbose path does.
        let mirror = "public.ecr.aws/docker/library/nginx:latest";
        let mut c = cri_listed("c1", Some(mirror), &config);
        assert!(describe_from_containerd(&mut c, &n));
        assert_eq!(c.image_as_written.as_deref(), Some(mirror));
        assert_eq!(
            c.image_ref,
            Some(format!("public.ecr.aws/docker/library/nginx@{digest}"))
        );
        // A Docker Hub short name keeps containerd's digest reference.
        let mut c = cri_listed("c1", Some("nginx"), &config);
        assert!(describe_from_containerd(&mut c, &n));
        assert_eq!(
            c.image_ref,
            Some(format!("docker.io/library/nginx@{digest}"))
        );

        // A sandbox: containerd's image, the pid, CRI's Pod.
        let mut sb = cri_listed("c1", None, &config);
        sb.kind = Some(ContainerKind::Sandbox);
        sb.image_id = None;
        assert!(describe_from_containerd(&mut sb, &n));
        assert_eq!(sb.kind, Some(ContainerKind::Sandbox));
        assert_eq!(sb.image_id.as_deref(), Some(config.as_str()));
        assert_eq!(sb.pid, Some(4242));
    }

    #[test]
    fn containerd_report_that_does_not_describe_the_container_leaves_it_to_verbose_status() {
        let config = format!("sha256:{}", "c".repeat(64));
        let other = format!("sha256:{}", "e".repeat(64));
        let digest = format!("sha256:{}", "d".repeat(64));
        let n = containerd_report("c1", "docker.io/library/nginx:latest", &digest, &config);
        let listed = cri_listed("c1", None, &config);
        let cases: Vec<(&str, ContainerInfo, ContainerInfo)> = vec![
            ("another id", listed.clone(), {
                let mut n = n.clone();
                n.id = "c2".into();
                n
            }),
            ("another namespace", listed.clone(), {
                let mut n = n.clone();
                n.namespace = Some("default".into());
                n
            }),
            ("a CRI report", listed.clone(), {
                let mut n = n.clone();
                n.runtime = "cri";
                n
            }),
            (
                "no namespace (CRI-O)",
                {
                    let mut c = listed.clone();
                    c.namespace = None;
                    c
                },
                {
                    let mut n = n.clone();
                    n.namespace = None;
                    n
                },
            ),
            ("running without a task pid", listed.clone(), {
                let mut n = n.clone();
                n.pid = None;
                n
            }),
            ("no cgroups path", listed.clone(), {
                let mut n = n.clone();
                n.cgroup_path = None;
                n
            }),
            ("no image digest", listed.clone(), {
                let mut n = n.clone();
                n.image_ref = None;
                n
            }),
            ("no image id", listed.clone(), {
                let mut n = n.clone();
                n.image_id = None;
                n
            }),
            ("another image than CRI created it from", listed.clone(), {
                let mut n = n.clone();
                n.image_id = Some(other.clone());
                n
            }),
        ];
        for (why, mut c, n) in cases {
            let before = c.clone();
            assert!(!describe_from_containerd(&mut c, &n), "{why}");
            assert_eq!(c, before, "{why}: left as listed");
        }
        // Not running: no pid needed, none taken.
        let mut c = cri_listed("c1", None, &config);
        c.state = ContainerState::Exited;
        let mut n2 = n.clone();
        n2.pid = None;
        assert!(describe_from_containerd(&mut c, &n2));
        assert_eq!(c.pid, None);
    }

    #[test]
    fn image_ids() {
        assert!(is_image_id(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_image_id("docker.io/library/nginx:latest"));
        assert!(!is_image_id("sha256:abc"));
    }

    #[test]
    fn unimplemented_is_unsupported() {
        let e = CriError::status(
            Api::Cri,
            "GetContainerEvents",
            None,
            tonic::Status::unimplemented("x"),
        );
        assert!(matches!(e, CriError::Unsupported { .. }));
        let e = CriError::status(
            Api::Cri,
            "ContainerStatus",
            None,
            tonic::Status::not_found("gone"),
        );
        assert!(e.is_not_found());
    }
}
