//! The kernel enforcer: a container's verdict into the kernel maps, kills of
//! denied containers and held cgroups, and the container findings that say so.
use std::path::Path;

use agent_common::hold_parent;
use tracing::{debug, warn};

use super::*;
use crate::{
    finding::{Finding, FindingAction, FindingVerdict},
    probes::event::KernelVerdict,
    sources::{cgroup::cgroup_id_of_dir, ContainerState},
};

/// Kills every process of a cgroup v2 directory: `cgroup.kill` (Linux 5.14+)
/// where it exists, else SIGKILL to each pid of `cgroup.procs`.
pub fn kill_cgroup(dir: &Path) -> std::io::Result<()> {
    match std::fs::write(dir.join("cgroup.kill"), b"1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for pid in cgroup_pids(dir)? {
                signal(pid, libc::SIGKILL);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The processes of a cgroup v2 directory (`cgroup.procs`).
pub(super) fn cgroup_pids(dir: &Path) -> std::io::Result<Vec<i32>> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .collect())
}

/// The agent's one `kill(2)`.
fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: plain syscall; no memory is passed.
    unsafe { libc::kill(pid, sig) };
}

/// Lets a process the kernel stopped at exec (SIGSTOP) run on.
pub(super) fn resume(pid: i32) {
    signal(pid, libc::SIGCONT);
}

/// Whether a process is stopped (state `T` in /proc/PID/stat).
pub(super) fn process_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

impl<K: KernelMaps> Controller<K> {
    /// Kernel maps, kills and findings for one entry.
    pub(super) fn apply(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let v = e.decision.kernel;
        if e.key.is_none() {
            e.key = e.info.cgroup_path.as_deref().and_then(cgroup_key_of_path);
        }
        debug!(container = %e.info.id, verdict = v.raw(), key = e.key.is_some(), cgroup_id = ?e.cgroup_id, pid = ?e.info.pid, "apply");
        if let Some(k) = &e.key {
            if let Err(err) = self.probes.set_name_verdict(k, v) {
                warn!(container = %e.info.id, "kernel name verdict: {err}");
            }
        }
        if e.cgroup_id.is_none() && e.info.state != ContainerState::Exited {
            if let Some(pid) = e.info.pid {
                if let Ok(dir) = self.probes.cgroup_dir_of_pid(&self.cfg.cgroup2, pid) {
                    if let Ok(id) = cgroup_id_of_dir(&dir) {
                        e.cgroup_id = Some(id);
                        e.cgroup_dir = Some(dir);
                    }
                }
            }
        }
        if let Some(id) = e.cgroup_id {
            if let Err(err) = self.probes.set_verdict(id, v) {
                warn!(container = %e.info.id, "kernel verdict: {err}");
            }
            if let Err(err) = self.probes.set_drift_policy(id, e.drift_bits()) {
                warn!(container = %e.info.id, "kernel drift policy: {err}");
            }
            debug!(container = %e.info.id, cgroup_id = id, verdict = v.raw(), drift = e.drift_bits(), "kernel maps set by id");
            if let Err(err) = self.probes.add_hold_parent(id, hold_parent::CONTAINER) {
                warn!(container = %e.info.id, "container hold parent: {err}");
            }
            self.by_cgroup.insert(id, key.to_string());
        }
        let denied = v == KernelVerdict::Deny;
        let running = e.info.state == ContainerState::Running || e.info.pid.is_some();
        let mut action = if v == KernelVerdict::Allow {
            FindingAction::None
        } else {
            FindingAction::Alerted
        };
        if denied && self.cfg.enforce && running && !e.killed {
            if let Some(dir) = &e.cgroup_dir {
                match kill_cgroup(dir) {
                    Ok(()) => {
                        e.killed = true;
                        self.stats.containers_killed += 1;
                        if let Some(m) = &self.metrics {
                            m.kill(crate::metrics::KillMechanism::CgroupKill);
                        }
                        action = FindingAction::Killed;
                    }
                    Err(err) => warn!(container = %e.info.id, "cgroup.kill: {err}"),
                }
            }
        } else if e.killed {
            action = FindingAction::Killed;
        }
        let newly_killed = action == FindingAction::Killed && !e.kill_reported;
        let pending = v == KernelVerdict::Hold;
        if !pending && (e.reported.as_ref() != Some(&e.decision) || newly_killed) {
            e.kill_reported |= action == FindingAction::Killed;
            let show = v != KernelVerdict::Allow || self.cfg.all_execs;
            if show {
                let f = Finding::container(
                    if v == KernelVerdict::Allow {
                        FindingVerdict::Allow
                    } else {
                        FindingVerdict::Deny
                    },
                    action,
                    e.decision.reason.clone(),
                    e.info.pid,
                    e.cgroup_id,
                    e.attribution(),
                );
                (self.out)(&f);
            }
            e.reported = Some(e.decision.clone());
        }
        // A held exec in this cgroup can be decided now (unless the
        // container itself still waits for CRI).
        if let Some(id) = e.cgroup_id.filter(|_| !pending) {
            if self.held.contains_key(&id) {
                self.release(id, v);
            }
        }
    }

    /// A held cgroup's fate: continue (allow/audit) or kill (deny).
    pub(super) fn release(&mut self, cgroup_id: u64, v: KernelVerdict) {
        let Some(h) = self.held.remove(&cgroup_id) else {
            return;
        };
        for pid in &h.pids {
            self.probes.forget_held(*pid);
        }
        if v == KernelVerdict::Deny && self.cfg.enforce {
            let dir = self
                .by_cgroup
                .get(&cgroup_id)
                .and_then(|k| self.entries.get(k))
                .and_then(|e| e.cgroup_dir.clone());
            self.kill_held(dir.as_deref(), &h.pids);
        } else {
            for pid in &h.pids {
                resume(*pid as i32);
            }
            self.stats.holds_released += 1;
        }
    }

    /// The one kill of held processes: their cgroup (`cgroup.kill`) where
    /// its directory is known, else each of them (SIGKILL); counted.
    pub(super) fn kill_held(&mut self, dir: Option<&Path>, pids: &[u32]) {
        let by_cgroup = dir.is_some_and(|d| kill_cgroup(d).is_ok());
        if !by_cgroup {
            for pid in pids {
                signal(*pid as i32, libc::SIGKILL);
            }
        }
        self.stats.holds_killed += 1;
        self.count_kill();
    }

    /// Kills a container by id (cgroup.kill) and denies its cgroup from now on.
    pub fn kill_container(&mut self, container_id: &str) -> bool {
        let Some(k) = self
            .entries
            .iter()
            .find(|(_, e)| e.info.id == container_id)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let Some(e) = self.entries.get_mut(&k) else {
            return false;
        };
        if let Some(id) = e.cgroup_id {
            let _ = self.probes.set_verdict(id, KernelVerdict::Deny);
        }
        let ok = e
            .cgroup_dir
            .as_deref()
            .map(|d| kill_cgroup(d).is_ok())
            .unwrap_or(false);
        if ok {
            e.killed = true;
            self.count_kill();
        }
        ok
    }

    pub(super) fn count_kill(&self) {
        if let Some(m) = &self.metrics {
            m.kill(crate::metrics::KillMechanism::CgroupKill);
        }
    }
}
