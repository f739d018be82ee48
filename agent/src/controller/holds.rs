//! Holds: processes the kernel stopped (SIGSTOP) at exec until user space
//! decides their container; adopted from the kernel's map, released, killed
//! after `--hold-timeout`, handed over across agent restarts.
use std::time::Instant;

use agent_common::CgroupKey;
use tracing::{debug, info, warn};

use super::*;
use crate::{
    finding::{Attribution, Finding, FindingAction, FindingVerdict, Reason, ReasonKind},
    probes::event::KernelVerdict,
    sources::cgroup,
};

/// Least time between two resyncs asked for by holds on cgroups no runtime
/// lists (see [`Controller::hold_resync_due`]).
const HOLD_RESYNC_GAP: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) struct Held {
    pub(super) pids: Vec<u32>,
    pub(super) since: Instant,
}

impl<K: KernelMaps> Controller<K> {
    /// Holds as the kernel keeps them (its pinned HELD map), not only as
    /// events told: a held process whose ring-buffer event was dropped, or
    /// went to an agent that died or handed over, is adopted here and
    /// decided like any other hold (released, killed, or killed after
    /// `--hold-timeout`). Entries of processes that run again or are gone
    /// are dropped. Called every hold tick; the map is empty when nothing
    /// is held.
    pub async fn scan_kernel_holds(&mut self) {
        for (tgid, cgroup_id) in self.probes.held_processes() {
            if !process_stopped(tgid as i32) {
                self.probes.forget_held(tgid);
                continue;
            }
            let h = self.held.entry(cgroup_id).or_insert_with(|| Held {
                pids: Vec::new(),
                since: Instant::now(),
            });
            if h.pids.contains(&tgid) {
                continue;
            }
            h.pids.push(tgid);
            self.stats.holds_adopted += 1;
            let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm")).unwrap_or_default();
            info!(
                tgid,
                cgroup_id,
                comm = comm.trim_end(),
                "adopted a hold the kernel kept (its event never reached this agent)"
            );
            let may = self.hold_resync_due();
            self.resolve_held(cgroup_id, tgid, may).await;
        }
    }

    /// Whether a hold on a cgroup no runtime lists may resync now. A resync
    /// is bounded by the runtime call timeout, not by the runtime: one that
    /// answers slowly or not at all (a held `runc init` keeps its shim in
    /// Create, and containerd's Tasks.List then times out) must not stall
    /// the loop once per held process, since the loop's own hold timeouts
    /// are what unwedge the node. After a resync for a hold, the next waits
    /// as long as it took (at least [`HOLD_RESYNC_GAP`]); the periodic
    /// resync, runtime events and the last look before a hold expires
    /// (always) still run.
    pub(super) fn hold_resync_due(&self) -> bool {
        self.hold_resync_after.is_none_or(|t| Instant::now() >= t)
    }

    /// Detaching (uninstall, fail-open exit): nobody will decide what the
    /// kernel holds, and nothing enforces any more, so every held process
    /// runs on. Returns how many were resumed.
    pub fn release_all_holds(&mut self) -> usize {
        let mut pids: Vec<u32> = self.held.drain().flat_map(|(_, h)| h.pids).collect();
        pids.extend(
            self.probes
                .held_processes()
                .into_iter()
                .map(|(tgid, _)| tgid),
        );
        pids.sort_unstable();
        pids.dedup();
        let mut resumed = 0;
        for pid in pids {
            self.probes.forget_held(pid);
            if process_stopped(pid as i32) {
                resume(pid as i32);
                resumed += 1;
            }
        }
        resumed
    }

    /// Tries to attribute a held cgroup to a container and decide.
    pub(super) async fn resolve_held(&mut self, cgroup_id: u64, pid: u32, may_resync: bool) {
        if let Some(k) = self.by_cgroup.get(&cgroup_id).cloned() {
            if self
                .entries
                .get(&k)
                .is_some_and(|e| e.pending_since.is_some())
            {
                self.settle_pending(Some(&k), false).await;
            }
            if let Some(v) = self.entries.get(&k).map(|e| e.decision.kernel) {
                if v != KernelVerdict::Hold {
                    self.release(cgroup_id, v);
                }
                return;
            }
        }
        // Which container does the process's cgroup name?
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return;
        };
        let Some(cc) = cgroup::resolve_proc_cgroup(&text) else {
            return;
        };
        let dir = self.probes.cgroup_dir_of_pid(&self.cfg.cgroup2, pid).ok();
        let mut found = self
            .entries
            .iter()
            .find(|(_, e)| e.info.id == cc.id)
            .map(|(k, _)| k.clone());
        let find = |c: &Self| {
            c.entries
                .iter()
                .find(|(_, e)| e.info.id == cc.id)
                .map(|(k, _)| k.clone())
        };
        if found.is_none() && may_resync {
            let t = Instant::now();
            self.resync().await;
            self.hold_resync_after = Some(Instant::now() + t.elapsed().max(HOLD_RESYNC_GAP));
            found = find(self);
        }
        // Held under a containerd namespace's cgroup and still not listed
        // (the listing failed: a held runc init keeps its shim in Create,
        // and Tasks.List times out): ask for that one container, whose own
        // record says its image.
        if found.is_none() {
            let ns = dir
                .as_deref()
                .and_then(|d| d.parent())
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .filter(|n| self.hold_parents.contains_key(*n))
                .map(str::to_string);
            if let Some(ns) = ns {
                self.fetch_one("containerd", Some(&ns), &cc.id).await;
                found = find(self);
            }
        }
        if let Some(k) = found {
            if let Some(e) = self.entries.get_mut(&k) {
                e.cgroup_id = Some(cgroup_id);
                e.cgroup_dir = dir;
            }
            self.apply(&k);
            return;
        }
        // No runtime here knows it: a nested runtime's container (docker in
        // docker, a kind node) is judged as the container it runs in. The
        // kernel does so itself once that container's cgroup is marked;
        // this covers a hold taken before the mark was.
        if let Some((outer, v)) = dir.as_deref().and_then(|d| self.outer_container_of(d)) {
            debug!(cgroup_id, outer = %outer, verdict = v.raw(), "held cgroup is nested in a known container");
            if v != KernelVerdict::Hold {
                let _ = self.probes.set_verdict(cgroup_id, v);
                self.release(cgroup_id, v);
            }
        }
    }

    /// Kills held cgroups that nobody could classify in time (fail closed),
    /// after one last look at the runtimes: an approved container must never
    /// be killed because the agent was slow.
    pub async fn expire_holds(&mut self) {
        self.settle_pending(None, false).await;
        let now = Instant::now();
        let expired: Vec<(u64, Option<u32>)> = self
            .held
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= self.cfg.hold_timeout)
            .map(|(id, h)| (*id, h.pids.first().copied()))
            .collect();
        // One last look at the runtimes before killing: one resync for
        // every hold that expires now.
        let mut may_resync = true;
        for (id, pid) in expired {
            if let Some(pid) = pid {
                self.resolve_held(id, pid, may_resync).await;
                may_resync = false;
            }
            // Held for the whole timeout by a container still waiting for
            // CRI: judged by its image now (a finding that names it).
            if let Some(k) = self.by_cgroup.get(&id).cloned() {
                if self
                    .entries
                    .get(&k)
                    .is_some_and(|e| e.pending_since.is_some())
                {
                    self.settle_pending(Some(&k), true).await;
                }
            }
            let Some(h) = self.held.remove(&id) else {
                continue;
            };
            for pid in &h.pids {
                self.probes.forget_held(*pid);
            }
            let dir = h
                .pids
                .first()
                .and_then(|p| self.probes.cgroup_dir_of_pid(&self.cfg.cgroup2, *p).ok());
            let _ = self.probes.set_verdict(id, KernelVerdict::Deny);
            self.kill_held(dir.as_deref(), &h.pids);
            let reason = Reason::new(
                ReasonKind::Unresolved,
                format!(
                    "unresolved: container cgroup {} not known to any runtime within {:?}; killed (fail closed)",
                    dir.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| id.to_string()),
                    self.cfg.hold_timeout
                ),
            );
            warn!("{reason}");
            (self.out)(&Finding::container(
                FindingVerdict::Deny,
                FindingAction::Killed,
                reason,
                h.pids.first().copied(),
                Some(id),
                Attribution::default(),
            ));
        }
    }

    /// After taking over a dead agent's pinned maps: remove verdicts of
    /// cgroups and names no container has any more, and decide the processes
    /// that were held (stopped) while no agent was there to decide.
    pub fn after_takeover(&mut self) {
        let known_ids: std::collections::HashSet<u64> = self
            .by_cgroup
            .keys()
            .chain(self.static_attributions.keys())
            .copied()
            .collect();
        let mut pruned = 0;
        for id in self.probes.verdict_cgroups() {
            if !known_ids.contains(&id) && self.probes.clear_verdict(id).is_ok() {
                pruned += 1;
            }
        }
        let namespaces: std::collections::HashSet<u64> =
            self.hold_parents.values().copied().collect();
        for (id, _) in self.probes.hold_parents() {
            if !self.by_cgroup.contains_key(&id)
                && !namespaces.contains(&id)
                && self.probes.remove_hold_parent(id).is_ok()
            {
                pruned += 1;
            }
        }
        let known_names: Vec<CgroupKey> = self.entries.values().filter_map(|e| e.key).collect();
        for k in self.probes.verdict_names() {
            if !known_names.contains(&k) && self.probes.clear_name_verdict(&k).is_ok() {
                pruned += 1;
            }
        }
        let mut resumed = 0;
        for e in self.entries.values() {
            let Some(dir) = &e.cgroup_dir else { continue };
            if e.decision.kernel == KernelVerdict::Deny {
                continue; // already killed by apply() in enforce mode
            }
            let Ok(pids) = cgroup_pids(dir) else {
                continue;
            };
            for pid in pids {
                if process_stopped(pid) {
                    resume(pid);
                    resumed += 1;
                }
            }
        }
        info!(pruned, resumed, "took over a previous agent's pinned state");
    }

    /// Whether anything waits on the hold tick: held processes, or
    /// containers waiting for CRI's word.
    pub fn has_holds(&self) -> bool {
        !self.held.is_empty() || self.entries.values().any(|e| e.pending_since.is_some())
    }
}
