//! The inventory: every container the runtimes report, keyed by
//! `<runtime namespace>/<id>`, with its cgroup names and id; resync, runtime
//! events, and the cgroup bookkeeping that follows them.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::{hold_parent, CgroupKey};
use imagewarden_policy::{Action, DriftDecision};
use tracing::{debug, info, warn};

use super::*;
use crate::{
    finding::{Attribution, Reason, ReasonKind},
    probes::event::KernelVerdict,
    sources::{
        cgroup::cgroup_id_of_dir, container_key, ContainerInfo, ContainerState, EventKind, Listing,
        RuntimeEvent,
    },
};

#[derive(Debug, Clone)]
pub struct Entry {
    pub info: ContainerInfo,
    pub key: Option<CgroupKey>,
    pub cgroup_id: Option<u64>,
    pub cgroup_dir: Option<PathBuf>,
    pub decision: Decision,
    /// What the policies say about exec drift in this container.
    pub drift: DriftDecision,
    /// The decision already reported as a finding.
    pub(super) reported: Option<Decision>,
    pub(super) killed: bool,
    /// A `killed` container finding was printed.
    pub(super) kill_reported: bool,
    /// Since when the verdict waits for CRI's word (see [`judge`]).
    pub(super) pending_since: Option<Instant>,
    /// CRI did not confirm it within the hold timeout: judged by image.
    pub(super) unconfirmed_final: bool,
    /// When a finding last asked CRI about it (see `on_exec`).
    pub(super) cri_asked_at: Option<Instant>,
}

impl Entry {
    /// A container just learnt: no cgroup known yet, nothing reported.
    pub(super) fn new(info: ContainerInfo, decision: Decision, drift: DriftDecision) -> Self {
        Entry {
            info,
            key: None,
            cgroup_id: None,
            cgroup_dir: None,
            decision,
            drift,
            reported: None,
            killed: false,
            kill_reported: false,
            pending_since: None,
            unconfirmed_final: false,
            cri_asked_at: None,
        }
    }

    pub(super) fn attribution(&self) -> Attribution {
        Attribution {
            container_id: Some(self.info.id.clone()),
            image: self
                .info
                .image_as_written
                .clone()
                .filter(|i| !is_image_id(i))
                .or_else(|| self.info.image_ref.clone()),
            image_digest: self
                .info
                .image_ref
                .as_ref()
                .and_then(|r| r.split_once('@').map(|(_, d)| d.to_string())),
            pod: self.info.pod_name.clone(),
            namespace: self.info.pod_namespace.clone(),
            runtime_namespace: self.info.namespace.clone(),
            reason: Some(self.decision.reason.clone()),
        }
    }

    /// The kernel's `DRIFT_POLICY` bits for this container: what it refuses
    /// in enforce mode.
    pub(super) fn drift_bits(&self) -> u32 {
        use agent_common::drift_policy::{DENY_DRIFT, DENY_FILELESS};
        let on = |a: Option<Action>, bit: u32| if a == Some(Action::Enforce) { bit } else { 0 };
        on(self.drift.fileless, DENY_FILELESS) | on(self.drift.writable_layer, DENY_DRIFT)
    }
}

/// The cgroup v2 directory names (parent, leaf) that runc will create for
/// an OCI `linux.cgroupsPath`: `/a/b/id` (cgroupfs driver) or
/// `slice:prefix:name` (systemd driver: `slice/prefix-name.scope`).
pub fn cgroup_key_of_path(path: &str) -> Option<CgroupKey> {
    if path.is_empty() {
        return None;
    }
    if !path.starts_with('/') {
        let parts: Vec<&str> = path.split(':').collect();
        if parts.len() == 3 {
            let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
            if name.is_empty() {
                return None;
            }
            let leaf = if name.ends_with(".slice") {
                name.to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            let parent = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            return Some(CgroupKey::new(parent.as_bytes(), leaf.as_bytes()));
        }
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let leaf = comps.last()?;
    let parent = if comps.len() >= 2 {
        comps[comps.len() - 2]
    } else {
        ""
    };
    Some(CgroupKey::new(parent.as_bytes(), leaf.as_bytes()))
}

/// Whether a task with `pid` is another task than the one `e` knows (a
/// restart: it runs in a new cgroup with a new id): another pid, or the
/// old task exited; or the old task is gone without its Exited event
/// having been kept (a resync in between reported the container with no
/// task: containerd lists it as created) and `pid` runs in another cgroup
/// than the known one. Seen in the 6.12 guest: the restarted task kept
/// the old cgroup id, and its drift exec was not refused.
pub(super) fn new_task(cgroup2: &Path, e: &Entry, pid: u32) -> bool {
    if e.info.pid.is_some_and(|p| p != pid) || e.info.state == ContainerState::Exited {
        return true;
    }
    e.info.pid.is_none()
        && e.cgroup_id.is_some_and(|old| {
            crate::sources::cgroup::cgroup2_dir_of_pid(cgroup2, pid)
                .ok()
                .and_then(|d| cgroup_id_of_dir(&d).ok())
                .is_some_and(|now| now != old)
        })
}

/// Fills fields one report lacks from another report of the same container.
pub(super) fn merge(into: &mut ContainerInfo, from: &ContainerInfo) {
    macro_rules! fill {
        ($($f:ident),*) => { $( if into.$f.is_none() { into.$f = from.$f.clone(); } )* };
    }
    fill!(
        sandbox_id,
        pod_name,
        pod_namespace,
        pod_uid,
        container_name,
        kind,
        image_as_written,
        image_ref,
        image_id,
        pid,
        cgroup_path
    );
    if into.state == ContainerState::Unknown {
        into.state = from.state;
    }
    for (k, v) in &from.labels {
        into.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    // Only CRI sets it (containerd's own listing never does).
    into.static_pod |= from.static_pod;
}

impl<K: KernelMaps> Controller<K> {
    /// Lists every container of every runtime and namespace and applies
    /// the policy to each. Containers that disappeared are forgotten.
    pub async fn resync(&mut self) {
        self.stats.resyncs += 1;
        let t0 = std::time::Instant::now();
        let mut seen = Listing::new();
        let mut complete = true;
        use crate::metrics::Source;
        // Children of a containerd namespace's cgroup are its containers:
        // hold any the agent has not classified yet (kernel side).
        if let Some(c) = &self.containerd {
            if let Ok(nss) = c.namespaces().await {
                for ns in nss {
                    self.watch_namespace_cgroup(&ns);
                }
            }
        }
        if let Some(c) = &self.containerd {
            let r = c.list(&Listing::new()).await;
            self.source_up(Source::RuntimeContainerd, r.is_ok());
            match r {
                Ok(list) => {
                    for i in list {
                        seen.insert(i.key(), i);
                    }
                }
                Err(e) => {
                    complete = false;
                    self.stats.resync_errors += 1;
                    warn!("containerd resync failed: {e}");
                }
            }
        }
        let t_containerd = t0.elapsed();
        if let Some(c) = &self.cri {
            // Where containerd's listing (just above) describes a CRI
            // object, the verbose status call is skipped (issue 16).
            let verbose_before = c.verbose_calls();
            let r = c.list(&seen).await;
            self.stats.last_resync_cri_verbose = c.verbose_calls() - verbose_before;
            self.source_up(Source::RuntimeCri, r.is_ok());
            match r {
                Ok(list) => {
                    for i in list {
                        match seen.get_mut(&i.key()) {
                            Some(existing) => {
                                // CRI knows the pod; containerd the image digest.
                                let mut cri = i;
                                merge(&mut cri, existing);
                                *existing = cri;
                            }
                            None => {
                                seen.insert(i.key(), i);
                            }
                        }
                    }
                }
                Err(e) => {
                    complete = false;
                    self.stats.resync_errors += 1;
                    warn!("CRI resync failed: {e}");
                }
            }
        }
        let t_cri = t0.elapsed();
        if complete {
            let gone: Vec<String> = self
                .entries
                .keys()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect();
            for k in gone {
                self.forget(&k);
            }
        }
        self.refresh_sandbox_images(true).await;
        let n = seen.len();
        for (_, info) in seen {
            self.upsert(info);
        }
        self.update_gauges();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        self.stats.last_resync_ms = [
            ms(t_containerd),
            ms(t_cri - t_containerd),
            ms(t0.elapsed() - t_cri),
        ];
        debug!(
            entries = n,
            ms = ?self.stats.last_resync_ms,
            cri_verbose = self.stats.last_resync_cri_verbose,
            "resync (containerd, CRI, apply)"
        );
        // What the listing freed goes back now, whatever asked for this
        // resync (the timer, a lost event stream, a held process nobody
        // knew): left in the heap, a resync's garbage stayed in the RSS
        // (+6 MiB at 1,000 containers, docs/benchmarks.md round 6).
        crate::memory::trim();
    }

    /// Marks the cgroup of a containerd namespace (`<cgroup2>/<namespace>`,
    /// where `ctr run` and nerdctl put its containers with the cgroupfs
    /// driver) as a hold parent, by the directory's cgroup id: a cgroup
    /// elsewhere that is merely *named* like a namespace is never held for
    /// it (issue 13, case 9). The directory is created when missing, so the
    /// id exists before the namespace's first container; checked again on
    /// every resync and runtime event of the namespace, so a directory
    /// removed and made again is followed.
    pub(super) fn watch_namespace_cgroup(&mut self, ns: &str) {
        if ns.is_empty() || ns.len() > 76 || ns.contains('/') || ns.starts_with('.') {
            return;
        }
        let dir = self.cfg.cgroup2.join(ns);
        let mut id = cgroup_id_of_dir(&dir).ok();
        if id.is_none() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    debug!(namespace = ns, dir = %dir.display(), "created the namespace's cgroup")
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    debug!(namespace = ns, dir = %dir.display(), "cannot create the namespace's cgroup: {e}")
                }
            }
            id = cgroup_id_of_dir(&dir).ok();
        }
        let Some(id) = id else { return };
        let old = self.hold_parents.insert(ns.to_string(), id);
        if old == Some(id) {
            return;
        }
        if let Some(old) = old {
            let _ = self.probes.remove_hold_parent(old);
        }
        if let Err(e) = self.probes.add_hold_parent(id, hold_parent::NAMESPACE) {
            warn!(namespace = %ns, "hold parent: {e}");
        }
    }

    /// Marks a container's cgroup so that a cgroup below it no verdict
    /// names (a nested runtime's container) is judged as this container.
    pub(super) fn mark_container_cgroup(&mut self, cgroup_id: u64) {
        if let Err(e) = self
            .probes
            .add_hold_parent(cgroup_id, hold_parent::CONTAINER)
        {
            warn!(cgroup_id, "container hold parent: {e}");
        }
    }

    /// The known container whose cgroup is an ancestor of `dir` (the
    /// outermost), with its verdict: a nested runtime's container is judged
    /// as the container it runs in.
    pub(super) fn outer_container_of(&self, dir: &Path) -> Option<(String, KernelVerdict)> {
        let mut found = None;
        let mut d = dir.parent();
        while let Some(p) = d {
            if !p.starts_with(&self.cfg.cgroup2) || p == self.cfg.cgroup2 {
                break;
            }
            if let Ok(id) = cgroup_id_of_dir(p) {
                if let Some(k) = self.by_cgroup.get(&id) {
                    if let Some(e) = self.entries.get(k) {
                        found = Some((k.clone(), e.decision.kernel));
                    }
                }
            }
            d = p.parent();
        }
        found
    }

    pub(super) fn forget(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            if let Some(k) = &e.key {
                let _ = self.probes.clear_name_verdict(k);
            }
            if let Some(id) = e.cgroup_id {
                self.forget_cgroup(id);
            }
            debug!(container = %e.info.id, "container forgotten");
        }
    }

    /// A container's cgroup id that no longer is one (the container is
    /// gone, or its task restarted in a new cgroup): its verdict, drift
    /// policy and hold-parent mark go.
    pub(super) fn forget_cgroup(&mut self, id: u64) {
        let _ = self.probes.clear_verdict(id);
        let _ = self.probes.remove_hold_parent(id);
        self.by_cgroup.remove(&id);
    }

    /// Records (or refreshes) a container and pushes its verdict into the kernel.
    pub fn upsert(&mut self, mut info: ContainerInfo) {
        distrust_labels(&mut info);
        let key = info.key();
        // What an earlier report said (CRI's identity among it) fills what
        // this one lacks, before the container is judged.
        let unconfirmed_final = match self.entries.get(&key) {
            Some(e) => {
                merge(&mut info, &e.info);
                e.unconfirmed_final
            }
            None => false,
        };
        // The labels have done their work (the sources read CRI's
        // identity from them); nothing reads a known container's labels,
        // and they were a third of its memory (docs/benchmarks.md, round 6).
        info.labels = BTreeMap::new();
        let (decision, drift, pending) = self.judge_info(&info, unconfirmed_final);
        // A new entry's info, decision and drift are set below (a blank
        // info has no pid and no state: a new container is no restart).
        let e = self.entries.entry(key.clone()).or_insert_with(|| {
            Box::new(Entry::new(
                ContainerInfo::new(String::new(), info.runtime),
                Decision::new(
                    KernelVerdict::Hold,
                    Reason::new(ReasonKind::Pending, String::new()),
                ),
                DriftDecision::default(),
            ))
        });
        // Another task of the same container (its events were missed, or a
        // resync reports it between its Exited and its Started): its
        // cgroup is new too.
        let restarted = info
            .pid
            .is_some_and(|pid| new_task(&self.cfg.cgroup2, e, pid))
            || (e.info.state == ContainerState::Exited && info.state == ContainerState::Running);
        let stale = if restarted { e.cgroup_id.take() } else { None };
        if stale.is_some() {
            e.cgroup_dir = None;
        }
        e.info = info;
        e.decision = decision;
        e.drift = drift;
        if pending {
            e.pending_since.get_or_insert_with(Instant::now);
        } else {
            e.pending_since = None;
        }
        if let Some(old) = stale {
            self.forget_cgroup(old);
        }
        self.apply(&key);
    }

    /// Asks CRI for the node's sandbox image ids: always when `force`,
    /// else at most once a second (a pending container's image may be a
    /// sandbox image pulled since).
    pub(super) async fn refresh_sandbox_images(&mut self, force: bool) {
        let Some(c) = &self.cri else { return };
        if !force
            && self
                .sandbox_images_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.sandbox_images_at = Some(Instant::now());
        match c.sandbox_image_ids().await {
            Ok(ids) => {
                let ids: std::collections::HashSet<String> = ids.into_iter().collect();
                if ids != self.sandbox_images {
                    info!(images = ?ids, "the node's pod sandbox images (CRI)");
                    self.sandbox_images = ids;
                }
            }
            Err(e) => debug!("CRI sandbox images: {e}"),
        }
    }

    pub(super) fn is_node_sandbox_image(&self, info: &ContainerInfo) -> bool {
        info.image_id
            .as_ref()
            .is_some_and(|id| self.sandbox_images.contains(id))
    }

    /// Handles a runtime lifecycle event.
    pub async fn on_runtime_event(&mut self, ev: RuntimeEvent) {
        debug!(?ev, "runtime event");
        let key = container_key(ev.namespace.as_deref(), &ev.container_id);
        if let Some(ns) = ev
            .namespace
            .as_deref()
            .filter(|_| ev.runtime == "containerd")
        {
            if !self.hold_parents.contains_key(ns) {
                self.watch_namespace_cgroup(ns);
            }
        }
        match ev.kind {
            EventKind::Created | EventKind::Started { .. } => {
                if let EventKind::Started { pid: Some(pid) } = ev.kind {
                    let mut stale = None;
                    if let Some(e) = self.entries.get_mut(&key) {
                        // A restarted task (same container, `ctr tasks
                        // start`) runs in a new cgroup with a new id: the
                        // old id's entries go, the new id is learnt below.
                        if new_task(&self.cfg.cgroup2, e, pid) {
                            stale = e.cgroup_id.take();
                            if stale.is_some() {
                                e.cgroup_dir = None;
                            }
                        }
                    }
                    if let Some(old) = stale {
                        self.forget_cgroup(old);
                    }
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.info.pid = Some(pid);
                        e.info.state = ContainerState::Running;
                        self.apply(&key);
                        return;
                    }
                }
                self.fetch_one(ev.runtime, ev.namespace.as_deref(), &ev.container_id)
                    .await;
                if let EventKind::Started { pid: Some(pid) } = ev.kind {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.info.pid = Some(pid);
                        e.info.state = ContainerState::Running;
                        self.apply(&key);
                    }
                }
            }
            EventKind::Exited { .. } => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.info.state = ContainerState::Exited;
                    e.info.pid = None;
                }
            }
            EventKind::Deleted => self.forget(&key),
        }
    }

    /// Asks the runtime whose event named a container about it
    /// (containerd: by listing its namespace; CRI: its status).
    pub(super) async fn fetch_one(&mut self, runtime: &str, ns: Option<&str>, id: &str) {
        let source = if runtime == "cri" {
            &self.cri
        } else {
            &self.containerd
        };
        let Some(c) = source else { return };
        match c.lookup(ns, id).await {
            Ok(Some(info)) => {
                if awaits_cri(&info, self.cri.is_some()) && !self.is_node_sandbox_image(&info) {
                    self.refresh_sandbox_images(false).await;
                }
                self.upsert(info);
            }
            Ok(None) => {}
            Err(e) => warn!(
                namespace = ns,
                container = id,
                "{runtime} lookup failed: {e}"
            ),
        }
    }

    /// Attributes an unknown cgroup id through the names the kernel saw
    /// (the process may be gone already, killed at its first exec).
    pub(super) fn learn_cgroup(&mut self, cgroup_id: u64) {
        if self.by_cgroup.contains_key(&cgroup_id) {
            return;
        }
        let Some(names) = self.probes.cgroup_names(cgroup_id) else {
            return;
        };
        let Some(k) = self
            .entries
            .iter()
            .find(|(_, e)| e.key.as_ref() == Some(&names))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        if let Some(e) = self.entries.get_mut(&k) {
            e.cgroup_id = Some(cgroup_id);
            if let Some(p) = e.info.cgroup_path.as_deref().filter(|p| p.starts_with('/')) {
                e.cgroup_dir = Some(self.cfg.cgroup2.join(p.trim_start_matches('/')));
            }
        }
        self.by_cgroup.insert(cgroup_id, k);
        self.mark_container_cgroup(cgroup_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::decide::tests::info;

    #[test]
    fn cgroup_keys_from_oci_paths() {
        let id = "0123456789abcdef".repeat(4);
        let k = cgroup_key_of_path(&format!("/kubepods/besteffort/pod1234/{id}")).unwrap();
        assert_eq!(k, CgroupKey::new(b"pod1234", id.as_bytes()));
        let k = cgroup_key_of_path("/default/web1").unwrap();
        assert_eq!(k, CgroupKey::new(b"default", b"web1"));
        let k = cgroup_key_of_path(&format!(
            "kubepods-besteffort-pod12.slice:cri-containerd:{id}"
        ))
        .unwrap();
        assert_eq!(
            k,
            CgroupKey::new(
                b"kubepods-besteffort-pod12.slice",
                format!("cri-containerd-{id}.scope").as_bytes()
            )
        );
        let k = cgroup_key_of_path(":docker:abc").unwrap();
        assert_eq!(k, CgroupKey::new(b"system.slice", b"docker-abc.scope"));
        let k = cgroup_key_of_path("/single").unwrap();
        assert_eq!(k, CgroupKey::new(b"", b"single"));
        assert!(cgroup_key_of_path("").is_none());
        assert!(cgroup_key_of_path("/").is_none());
        assert!(cgroup_key_of_path("a:b:").is_none());
    }

    #[test]
    fn merge_fills_only_missing_fields() {
        let mut a = info(Some("x"));
        let mut b = info(Some("y"));
        b.pod_name = Some("p".into());
        b.pid = Some(9);
        a.pid = Some(7);
        merge(&mut a, &b);
        assert_eq!(a.image_as_written.as_deref(), Some("x"));
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert_eq!(a.pid, Some(7));
    }

    /// A restarted task is told apart from the known one even when a
    /// resync between its Exited and Started events reported the
    /// container with no task (state created, no pid): by its cgroup.
    #[test]
    fn a_new_task_is_told_by_pid_exit_or_cgroup() {
        let allowed = || Decision::new(KernelVerdict::Allow, Reason::new(ReasonKind::Allowed, ""));
        let entry = |pid: Option<u32>, state: ContainerState, cgroup_id: Option<u64>| Entry {
            cgroup_id,
            ..Entry::new(
                ContainerInfo {
                    pid,
                    state,
                    ..info(None)
                },
                allowed(),
                DriftDecision::default(),
            )
        };
        let none = Path::new("/nonexistent");
        use ContainerState::*;
        assert!(new_task(none, &entry(Some(1), Running, Some(5)), 2));
        assert!(!new_task(none, &entry(Some(2), Running, Some(5)), 2));
        assert!(new_task(none, &entry(None, Exited, Some(5)), 2));
        // No task known and no cgroup known: nothing is stale.
        assert!(!new_task(none, &entry(None, Created, None), 2));
        let Some(cg2) = crate::sources::cgroup::find_cgroup2_mount() else {
            return;
        };
        let me = std::process::id();
        let Ok(mine) =
            crate::sources::cgroup::cgroup2_dir_of_pid(&cg2, me).and_then(|d| cgroup_id_of_dir(&d))
        else {
            return;
        };
        // The resync's report (created, no pid), then a task in the
        // known cgroup: the same task (a hold resolved before Started)...
        assert!(!new_task(&cg2, &entry(None, Created, Some(mine)), me));
        // ...or in another cgroup: a restart.
        assert!(new_task(&cg2, &entry(None, Created, Some(mine + 1)), me));
    }
}
