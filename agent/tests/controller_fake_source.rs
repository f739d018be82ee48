//! The controller driven by fake runtime sources and a fake kernel: no
//! containerd, no eBPF, no root. A fake [`RuntimeSource`] lists containers
//! and streams lifecycle events through the agent's own forwarder
//! (`sources::events::forward_events`); a fake [`KernelMaps`] records the
//! verdict plan (name verdicts, cgroup-id verdicts, hold parents) and maps
//! pids to cgroup directories in a temporary "cgroup2" tree, where the
//! controller's kill (`cgroup.kill`) is a file it writes.
//!
//! Covered: a container appears (listed, then announced by an event before
//! its task exists), a denied one (name verdict before its start, killed
//! once it runs), an exit, a restart in a new cgroup, a deletion; a
//! CRI-only runtime (CRI-O) whose events reach the controller; a source
//! without an event stream (containerd 1.6's CRI) giving way to the next;
//! the cross-check's kill actions applied to the controller by the agent
//! loop's `apply_kube_actions`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::{hold_parent, CgroupKey};
use futures_util::StreamExt;
use imagewarden::controller::{Controller, ControllerConfig};
use imagewarden::finding::{Finding, FindingAction, FindingVerdict};
use imagewarden::probes::kernel_maps::KernelMaps;
use imagewarden::probes::{event::KernelVerdict, ProbeError};
use imagewarden::sources::cgroup::cgroup_id_of_dir;
use imagewarden::sources::events::forward_events;
use imagewarden::sources::{
    Api, ContainerInfo, ContainerKind, ContainerState, EventKind, EventStream, Listing,
    RuntimeEvent, RuntimeSource, SharedSource, SourceError, SourceFuture,
};
use tokio::sync::{mpsc, Notify};

const TRUSTED: &str = "public.ecr.aws/nginx/nginx:latest";
const UNTRUSTED: &str = "docker.io/library/nginx:latest";

/// A runtime: what it lists now, and the events a test sends.
struct FakeSource {
    api: Api,
    containers: Mutex<Vec<ContainerInfo>>,
    events: Mutex<Option<mpsc::UnboundedReceiver<RuntimeEvent>>>,
    /// How `events()` answers when the test sends none.
    no_events: NoEvents,
}

#[derive(Clone, Copy, PartialEq)]
enum NoEvents {
    /// The test's channel is the stream.
    No,
    /// Unimplemented (containerd 1.6's CRI).
    Unsupported,
    /// A stream that closes at once (CRI-O without enable_pod_events).
    ClosesAtOnce,
}

impl FakeSource {
    fn new(api: Api) -> (Arc<Self>, mpsc::UnboundedSender<RuntimeEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Arc::new(FakeSource {
            api,
            containers: Mutex::default(),
            events: Mutex::new(Some(rx)),
            no_events: NoEvents::No,
        });
        (s, tx)
    }

    fn without_events(api: Api, how: NoEvents) -> Arc<Self> {
        Arc::new(FakeSource {
            api,
            containers: Mutex::default(),
            events: Mutex::default(),
            no_events: how,
        })
    }

    /// Adds or replaces a container.
    fn put(&self, info: ContainerInfo) {
        let mut c = self.containers.lock().unwrap();
        c.retain(|i| i.id != info.id);
        c.push(info);
    }

    fn remove(&self, id: &str) {
        self.containers.lock().unwrap().retain(|i| i.id != id);
    }

    fn edit(&self, id: &str, f: impl FnOnce(&mut ContainerInfo)) {
        let mut c = self.containers.lock().unwrap();
        f(c.iter_mut()
            .find(|i| i.id == id)
            .expect("no such container"));
    }
}

impl RuntimeSource for FakeSource {
    fn api(&self) -> Api {
        self.api
    }

    fn list<'a>(&'a self, _described: &'a Listing) -> SourceFuture<'a, Vec<ContainerInfo>> {
        let list = self.containers.lock().unwrap().clone();
        Box::pin(async move { Ok(list) })
    }

    fn lookup<'a>(
        &'a self,
        namespace: Option<&'a str>,
        id: &'a str,
    ) -> SourceFuture<'a, Option<ContainerInfo>> {
        let found = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.id == id && (self.api == Api::Cri || i.namespace.as_deref() == namespace))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn events(&self) -> SourceFuture<'_, EventStream> {
        let rx = self.events.lock().unwrap().take();
        let no_events = self.no_events;
        Box::pin(async move {
            match no_events {
                NoEvents::Unsupported => {
                    return Err(SourceError::Unsupported {
                        call: "GetContainerEvents",
                    })
                }
                NoEvents::ClosesAtOnce => return Ok(futures_util::stream::empty().boxed()),
                NoEvents::No => {}
            }
            let rx = rx.expect("subscribed twice");
            Ok(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|ev| (Ok(ev), rx))
            })
            .boxed())
        })
    }

    fn namespaces(&self) -> SourceFuture<'_, Vec<String>> {
        let mut ns: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|i| i.namespace.clone())
            .collect();
        ns.sort();
        ns.dedup();
        Box::pin(async move { Ok(ns) })
    }
}

/// The kernel as the controller writes it.
#[derive(Default)]
struct FakeKernel {
    verdicts: HashMap<u64, KernelVerdict>,
    drift: HashMap<u64, u32>,
    names: HashMap<CgroupKey, KernelVerdict>,
    hold_parents: HashMap<u64, u32>,
    /// pid -> its cgroup directory (in the temporary tree).
    pid_dirs: Arc<Mutex<HashMap<u32, PathBuf>>>,
}

impl KernelMaps for FakeKernel {
    fn set_verdict(&mut self, cgroup_id: u64, v: KernelVerdict) -> Result<(), ProbeError> {
        self.verdicts.insert(cgroup_id, v);
        Ok(())
    }
    fn clear_verdict(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        self.verdicts.remove(&cgroup_id);
        self.drift.remove(&cgroup_id);
        Ok(())
    }
    fn set_drift_policy(&mut self, cgroup_id: u64, bits: u32) -> Result<(), ProbeError> {
        if bits == 0 {
            self.drift.remove(&cgroup_id);
        } else {
            self.drift.insert(cgroup_id, bits);
        }
        Ok(())
    }
    fn set_name_verdict(&mut self, key: &CgroupKey, v: KernelVerdict) -> Result<(), ProbeError> {
        self.names.insert(*key, v);
        Ok(())
    }
    fn clear_name_verdict(&mut self, key: &CgroupKey) -> Result<(), ProbeError> {
        self.names.remove(key);
        Ok(())
    }
    fn add_hold_parent(&mut self, cgroup_id: u64, mark: u32) -> Result<(), ProbeError> {
        self.hold_parents.insert(cgroup_id, mark);
        Ok(())
    }
    fn remove_hold_parent(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        self.hold_parents.remove(&cgroup_id);
        Ok(())
    }
    fn hold_parents(&self) -> Vec<(u64, u32)> {
        self.hold_parents.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn held_processes(&self) -> Vec<(u32, u64)> {
        Vec::new()
    }
    fn forget_held(&mut self, _tgid: u32) {}
    fn verdict_cgroups(&self) -> Vec<u64> {
        self.verdicts.keys().copied().collect()
    }
    fn verdict_names(&self) -> Vec<CgroupKey> {
        self.names.keys().copied().collect()
    }
    fn cgroup_names(&self, _cgroup_id: u64) -> Option<CgroupKey> {
        None
    }
    fn cgroup_dir_of_pid(&self, _cgroup2: &Path, pid: u32) -> io::Result<PathBuf> {
        self.pid_dirs
            .lock()
            .unwrap()
            .get(&pid)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

/// A temporary "cgroup2" tree, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "imagewarden-fake-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempTree(p)
    }

    /// Creates `<root>/<rel>` and returns it with its id (inode).
    fn cgroup(&self, rel: &str) -> (PathBuf, u64) {
        let d = self.0.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        let id = cgroup_id_of_dir(&d).unwrap();
        (d, id)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Findings = Arc<Mutex<Vec<Finding>>>;

fn controller(
    root: &Path,
    kernel: FakeKernel,
    containerd: Option<SharedSource>,
    cri: Option<SharedSource>,
) -> (Controller<FakeKernel>, Findings) {
    let policy = imagewarden_policy::load_policy_str(
        imagewarden::cmd_run::EMBEDDED_POLICY,
        "embedded:restrict-registries.yaml",
    )
    .expect("embedded policy");
    let cfg = ControllerConfig {
        enforce: true,
        all_execs: false,
        hold_timeout: Duration::from_secs(5),
        resync_interval: Duration::from_secs(60),
        cgroup2: root.to_path_buf(),
        deny_exec_drift: false,
    };
    let findings: Findings = Arc::default();
    let f2 = findings.clone();
    let out = Box::new(move |f: &Finding| f2.lock().unwrap().push(f.clone()));
    let ctrl = Controller::new(cfg, kernel, Arc::new(policy), containerd, cri, out);
    (ctrl, findings)
}

/// A `ctr run`-style container in containerd namespace `ns`.
fn ctr_container(ns: &str, id: &str, image: &str) -> ContainerInfo {
    let mut c = ContainerInfo::new(id.into(), "containerd");
    c.namespace = Some(ns.into());
    c.image_as_written = Some(image.into());
    c.image_ref = Some(format!(
        "{}@sha256:{}",
        image.rsplit_once(':').unwrap().0,
        "a".repeat(64)
    ));
    c.state = ContainerState::Created;
    c.cgroup_path = Some(format!("/{ns}/{id}"));
    c
}

fn event(api: Api, ns: Option<&str>, id: &str, kind: EventKind) -> RuntimeEvent {
    RuntimeEvent {
        runtime: api.runtime(),
        namespace: ns.map(str::to_string),
        container_id: id.into(),
        kind,
        timestamp_ns: None,
    }
}

/// An event of containerd namespace `default`.
fn ctr(id: &str, kind: EventKind) -> RuntimeEvent {
    event(Api::Containerd, Some("default"), id, kind)
}

fn started(pid: u32) -> EventKind {
    EventKind::Started { pid: Some(pid) }
}

/// `ev` sent by the fake runtime, passed on as it is by the forwarder,
/// and handled by the controller.
async fn deliver(
    ctrl: &mut Controller<FakeKernel>,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
    fwd: &mut Forwarder,
    ev: RuntimeEvent,
) {
    events.send(ev.clone()).unwrap();
    let got = forwarded(&mut fwd.rx).await;
    assert_eq!(got, ev);
    ctrl.on_runtime_event(got).await;
}

/// The next event the forwarder passes on.
async fn forwarded(rx: &mut mpsc::Receiver<RuntimeEvent>) -> RuntimeEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no event forwarded within 5 s")
        .expect("forwarder ended")
}

struct Forwarder {
    rx: mpsc::Receiver<RuntimeEvent>,
    task: tokio::task::JoinHandle<()>,
}

fn forward(sources: Vec<SharedSource>) -> Forwarder {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(forward_events(
        sources,
        tx,
        Arc::new(AtomicU64::new(0)),
        Arc::new(Notify::new()),
    ));
    Forwarder { rx, task }
}

fn name_key(parent: &str, leaf: &str) -> CgroupKey {
    CgroupKey::new(parent.as_bytes(), leaf.as_bytes())
}

fn last_finding(findings: &Findings) -> Finding {
    findings
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("no finding")
}

#[tokio::test]
async fn containerd_source_list_and_events_drive_the_kernel_plan() {
    let tree = TempTree::new("containerd");
    let kernel = FakeKernel::default();
    let pids = kernel.pid_dirs.clone();
    let (src, events) = FakeSource::new(Api::Containerd);
    let (mut ctrl, findings) = controller(&tree.0, kernel, Some(src.clone() as SharedSource), None);
    let mut fwd = forward(vec![src.clone() as SharedSource]);

    // A running container of a trusted image, listed at the first resync.
    let (good_dir, good_id) = tree.cgroup("default/good");
    pids.lock().unwrap().insert(4_200_001, good_dir.clone());
    let mut good = ctr_container("default", "good", TRUSTED);
    good.state = ContainerState::Running;
    good.pid = Some(4_200_001);
    src.put(good);
    ctrl.resync().await;
    let (_, ns_id) = tree.cgroup("default");
    let k = ctrl.probes();
    assert_eq!(
        k.names.get(&name_key("default", "good")),
        Some(&KernelVerdict::Allow)
    );
    assert_eq!(k.verdicts.get(&good_id), Some(&KernelVerdict::Allow));
    assert_eq!(k.hold_parents.get(&good_id), Some(&hold_parent::CONTAINER));
    assert_eq!(
        k.hold_parents.get(&ns_id),
        Some(&hold_parent::NAMESPACE),
        "the namespace's cgroup holds what is not classified yet"
    );
    assert!(findings.lock().unwrap().is_empty(), "allowed: no finding");

    // An untrusted container is created: its event arrives before its
    // task exists, and the kernel refuses its cgroup by name already.
    src.put(ctr_container("default", "bad", UNTRUSTED));
    deliver(&mut ctrl, &events, &mut fwd, ctr("bad", EventKind::Created)).await;
    assert_eq!(
        ctrl.probes().names.get(&name_key("default", "bad")),
        Some(&KernelVerdict::Deny),
        "denied by name before the entrypoint's exec"
    );
    let f = last_finding(&findings);
    assert_eq!(f.container_id.as_deref(), Some("bad"));
    assert_eq!(
        (f.verdict, f.action),
        (FindingVerdict::Deny, FindingAction::Alerted)
    );

    // Its task starts anyway (say the exec raced): the running container
    // is killed through its cgroup and its id is denied.
    let (bad_dir, bad_id) = tree.cgroup("default/bad");
    pids.lock().unwrap().insert(4_200_002, bad_dir.clone());
    deliver(&mut ctrl, &events, &mut fwd, ctr("bad", started(4_200_002))).await;
    assert_eq!(
        ctrl.probes().verdicts.get(&bad_id),
        Some(&KernelVerdict::Deny)
    );
    assert_eq!(
        std::fs::read_to_string(bad_dir.join("cgroup.kill"))
            .ok()
            .as_deref(),
        Some("1"),
        "cgroup.kill written"
    );
    let f = last_finding(&findings);
    assert_eq!(
        (f.container_id.as_deref(), f.verdict, f.action),
        (Some("bad"), FindingVerdict::Deny, FindingAction::Killed)
    );
    assert_eq!(ctrl.stats.containers_killed, 1);

    // The trusted one exits, then restarts in a new cgroup: the old id's
    // verdict and mark go, the new id is allowed and marked.
    deliver(
        &mut ctrl,
        &events,
        &mut fwd,
        ctr(
            "good",
            EventKind::Exited {
                pid: Some(4_200_001),
                exit_status: Some(0),
            },
        ),
    )
    .await;
    let e = ctrl.entries().find(|e| e.info.id == "good").unwrap();
    assert_eq!((e.info.state, e.info.pid), (ContainerState::Exited, None));
    let (new_dir, new_id) = tree.cgroup("default/good-restarted");
    assert_ne!(new_id, good_id);
    pids.lock().unwrap().insert(4_200_003, new_dir);
    deliver(
        &mut ctrl,
        &events,
        &mut fwd,
        ctr("good", started(4_200_003)),
    )
    .await;
    let k = ctrl.probes();
    assert_eq!(
        k.verdicts.get(&good_id),
        None,
        "the old cgroup's verdict went"
    );
    assert_eq!(k.hold_parents.get(&good_id), None);
    assert_eq!(k.verdicts.get(&new_id), Some(&KernelVerdict::Allow));
    assert_eq!(k.hold_parents.get(&new_id), Some(&hold_parent::CONTAINER));
    let e = ctrl.entries().find(|e| e.info.id == "good").unwrap();
    assert_eq!(
        (e.info.state, e.cgroup_id),
        (ContainerState::Running, Some(new_id))
    );

    // The denied one is deleted: every trace of it leaves the kernel.
    src.remove("bad");
    deliver(&mut ctrl, &events, &mut fwd, ctr("bad", EventKind::Deleted)).await;
    let k = ctrl.probes();
    assert_eq!(k.names.get(&name_key("default", "bad")), None);
    assert_eq!(k.verdicts.get(&bad_id), None);
    assert!(!ctrl.knows("bad"));

    // A resync agrees with what the events built.
    src.edit("good", |g| g.pid = Some(4_200_003));
    ctrl.resync().await;
    assert_eq!(
        ctrl.probes().verdicts.get(&new_id),
        Some(&KernelVerdict::Allow)
    );
    assert_eq!(ctrl.entries().count(), 1);
    fwd.task.abort();
}

/// A CRI-only runtime (CRI-O: no containerd API, no runtime namespace):
/// its GetContainerEvents stream tells the controller of a new container,
/// which is judged by what CRI's status says, before any resync.
#[tokio::test]
async fn cri_only_runtime_events_reach_the_controller_before_a_resync() {
    let tree = TempTree::new("crio");
    let kernel = FakeKernel::default();
    let pids = kernel.pid_dirs.clone();
    let (cri, events) = FakeSource::new(Api::Cri);
    let (mut ctrl, findings) = controller(&tree.0, kernel, None, Some(cri.clone() as SharedSource));
    ctrl.resync().await;
    assert_eq!(ctrl.entries().count(), 0);
    let mut fwd = forward(vec![cri.clone() as SharedSource]);

    let id = "f".repeat(64);
    let scope = format!("crio-{id}.scope");
    let mut c = ContainerInfo::new(id.clone(), "cri");
    c.kind = Some(ContainerKind::Container);
    c.pod_name = Some("web-0".into());
    c.pod_namespace = Some("prod".into());
    c.container_name = Some("web".into());
    c.image_as_written = Some(UNTRUSTED.into());
    c.state = ContainerState::Created;
    c.cgroup_path = Some(format!("kubepods-besteffort-podu.slice:crio:{id}"));
    cri.put(c);
    deliver(
        &mut ctrl,
        &events,
        &mut fwd,
        event(Api::Cri, None, &id, EventKind::Created),
    )
    .await;
    assert_eq!(
        ctrl.probes()
            .names
            .get(&name_key("kubepods-besteffort-podu.slice", &scope)),
        Some(&KernelVerdict::Deny),
        "the systemd scope CRI-O will create is denied by name"
    );
    let f = last_finding(&findings);
    assert_eq!(
        (f.pod.as_deref(), f.namespace.as_deref(), f.verdict),
        (Some("web-0"), Some("prod"), FindingVerdict::Deny),
        "the Pod comes from CRI"
    );

    // Started: CRI's event has no pid; the controller asks CRI's status.
    let (dir, cg_id) = tree.cgroup(&format!("kubepods.slice/{scope}"));
    pids.lock().unwrap().insert(4_200_010, dir.clone());
    cri.edit(&id, |c| {
        c.state = ContainerState::Running;
        c.pid = Some(4_200_010);
    });
    deliver(
        &mut ctrl,
        &events,
        &mut fwd,
        event(Api::Cri, None, &id, EventKind::Started { pid: None }),
    )
    .await;
    assert_eq!(
        ctrl.probes().verdicts.get(&cg_id),
        Some(&KernelVerdict::Deny)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.kill"))
            .ok()
            .as_deref(),
        Some("1")
    );
    assert_eq!(last_finding(&findings).action, FindingAction::Killed);
    fwd.task.abort();
}

/// A source without an event stream (containerd 1.6 answers CRI's
/// GetContainerEvents Unimplemented; CRI-O without `enable_pod_events`
/// closes it at once) gives way to the next; with none left the forwarder
/// ends (no retry loop, no resync storm) and the resync is the only way
/// new containers are learnt.
#[tokio::test]
async fn a_source_without_events_gives_way_then_resync_is_left() {
    for how in [NoEvents::Unsupported, NoEvents::ClosesAtOnce] {
        let silent = FakeSource::without_events(Api::Cri, how);
        let (next, events) = FakeSource::new(Api::Cri);
        let mut fwd = forward(vec![silent.clone() as SharedSource, next as SharedSource]);
        events
            .send(event(Api::Cri, None, "c1", EventKind::Created))
            .unwrap();
        assert_eq!(forwarded(&mut fwd.rx).await.container_id, "c1");
        fwd.task.abort();

        let mut fwd = forward(vec![silent as SharedSource]);
        tokio::time::timeout(Duration::from_secs(5), &mut fwd.task)
            .await
            .expect("the forwarder gave up")
            .unwrap();
        assert!(
            fwd.rx.recv().await.is_none(),
            "nothing forwarded, channel closed"
        );
    }
}

/// The Kubernetes side plans from a snapshot of the controller; the agent
/// loop applies its kill actions to the controller: a container the
/// controller knows is killed through its cgroup (`killed`), one it does
/// not know cannot be (`alerted`), as when the cross-check killed itself.
#[tokio::test]
async fn kube_kill_actions_applied_by_the_loop_kill_and_record() {
    use std::collections::{BTreeMap, HashSet};

    use imagewarden::agent_loop::apply_kube_actions;
    use imagewarden::cli::Mode;
    use imagewarden::crosscheck::{crosscheck, CrossCheckInput, Observations};
    use imagewarden::finding::ReasonKind;
    use imagewarden::kube_actions::ActionOptions;
    use imagewarden::kube_run::{plan_findings, ControllerView, KubeAction};
    use imagewarden::sources::kyverno_config::Exemptions;
    use k8s_openapi::api::core::v1::Pod;

    let tree = TempTree::new("kube-actions");
    let kernel = FakeKernel::default();
    let pids = kernel.pid_dirs.clone();
    let cri = FakeSource::without_events(Api::Cri, NoEvents::Unsupported);
    let (mut ctrl, _) = controller(&tree.0, kernel, None, Some(cri.clone() as SharedSource));

    // prod/web-0's container runs a trusted image, but not the digest its
    // spec pins (image drift, killable); the controller allows its image.
    let id = "e".repeat(64);
    let pinned = format!("public.ecr.aws/nginx/nginx@sha256:{}", "b".repeat(64));
    let running = format!("public.ecr.aws/nginx/nginx@sha256:{}", "a".repeat(64));
    let (dir, cg_id) = tree.cgroup("kubepods.slice/web");
    pids.lock().unwrap().insert(4_200_020, dir.clone());
    let mut c = ContainerInfo::new(id.clone(), "cri");
    c.kind = Some(ContainerKind::Container);
    c.pod_name = Some("web-0".into());
    c.pod_namespace = Some("prod".into());
    c.pod_uid = Some("uid-web".into());
    c.container_name = Some("web".into());
    c.image_as_written = Some(TRUSTED.into());
    c.image_ref = Some(running.clone());
    c.state = ContainerState::Running;
    c.pid = Some(4_200_020);
    c.cgroup_path = Some(format!("kubepods-besteffort-podu.slice:crio:{id}"));
    cri.put(c);
    ctrl.resync().await;
    assert_eq!(
        ctrl.probes().verdicts.get(&cg_id),
        Some(&KernelVerdict::Allow)
    );

    // prod/other's container, untrusted, is one the runtime does not list.
    let pods: Vec<Pod> = [
        ("web-0", "uid-web", "web", pinned.as_str(), id.as_str()),
        ("other", "uid-other", "app", UNTRUSTED, "gone"),
    ]
    .iter()
    .map(|(pod, uid, name, image, cid)| {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": pod, "namespace": "prod", "uid": uid},
            "spec": {"containers": [{"name": name, "image": image}]},
            "status": {"containerStatuses": [{
                "name": name, "image": image, "imageID": "",
                "containerID": format!("containerd://{cid}"), "ready": true,
                "restartCount": 0, "state": {"running": {}}
            }]}
        }))
        .unwrap()
    })
    .collect();
    let policy = imagewarden_policy::load_policy_str(imagewarden::cmd_run::EMBEDDED_POLICY, "p")
        .expect("policy");
    let containers = ctrl.snapshot();
    let out = crosscheck(&CrossCheckInput {
        api_pods: Some(pods.iter().collect()),
        kubelet_pods: None,
        runtime: &containers,
        policy: &policy,
        previous: &Observations::default(),
        namespace_labels: &BTreeMap::new(),
    });
    let mut plan = plan_findings(
        out.findings,
        &ControllerView {
            containers: &containers,
        },
        &Exemptions::default(),
        Mode::Enforce,
        &ActionOptions::default(),
        &mut HashSet::new(),
    );
    let index_of = |reason: ReasonKind| {
        plan.findings
            .iter()
            .position(|p| p.finding.reason == reason)
            .unwrap_or_else(|| panic!("no {reason:?} finding"))
    };
    let (drift, untrusted) = (
        index_of(ReasonKind::ImageDrift),
        index_of(ReasonKind::UntrustedImage),
    );
    for a in [
        KubeAction::KillContainer {
            id: id.clone(),
            finding: drift,
        },
        KubeAction::KillContainer {
            id: "gone".into(),
            finding: untrusted,
        },
    ] {
        assert!(plan.actions.contains(&a), "{a:?} in {:?}", plan.actions);
    }
    assert_eq!(plan.actions.len(), 2, "{:?}", plan.actions);
    assert!(
        std::fs::read_to_string(dir.join("cgroup.kill")).is_err(),
        "planning kills nothing"
    );

    apply_kube_actions(&mut ctrl, &mut plan);
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.kill"))
            .ok()
            .as_deref(),
        Some("1"),
        "cgroup.kill written"
    );
    assert_eq!(
        ctrl.probes().verdicts.get(&cg_id),
        Some(&KernelVerdict::Deny)
    );
    assert_eq!(plan.findings[drift].finding.action, FindingAction::Killed);
    assert_eq!(
        plan.findings[untrusted].finding.action,
        FindingAction::Alerted,
        "not known to the controller: could not be killed"
    );
}
