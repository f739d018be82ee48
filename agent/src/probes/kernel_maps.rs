//! What the controller reads and writes of the kernel: the verdict maps
//! and the cgroup of a process. [`super::Probes`] is the real one; tests
//! drive the controller with a fake that records the plan instead of
//! loading eBPF.

use std::io;
use std::path::{Path, PathBuf};

use agent_common::CgroupKey;

use super::{event::KernelVerdict, ProbeError, Probes};

/// The kernel maps (and host cgroup lookups) the controller uses; see
/// [`Probes`] for each method.
pub trait KernelMaps {
    /// `VERDICTS[cgroup_id] = v`.
    fn set_verdict(&mut self, cgroup_id: u64, v: KernelVerdict) -> Result<(), ProbeError>;
    /// Removes a cgroup's verdict (and drift policy).
    fn clear_verdict(&mut self, cgroup_id: u64) -> Result<(), ProbeError>;
    /// `DRIFT_POLICY[cgroup_id] = bits` (0 removes).
    fn set_drift_policy(&mut self, cgroup_id: u64, bits: u32) -> Result<(), ProbeError>;
    /// `NAME_VERDICTS[key] = v`: a cgroup that does not exist yet.
    fn set_name_verdict(&mut self, key: &CgroupKey, v: KernelVerdict) -> Result<(), ProbeError>;
    /// Removes a name verdict.
    fn clear_name_verdict(&mut self, key: &CgroupKey) -> Result<(), ProbeError>;
    /// `HOLD_PARENTS[cgroup_id] = mark`.
    fn add_hold_parent(&mut self, cgroup_id: u64, mark: u32) -> Result<(), ProbeError>;
    /// Removes a hold-parent mark.
    fn remove_hold_parent(&mut self, cgroup_id: u64) -> Result<(), ProbeError>;
    /// Every hold-parent mark.
    fn hold_parents(&self) -> Vec<(u64, u32)>;
    /// The processes the kernel holds, as (tgid, cgroup id).
    fn held_processes(&self) -> Vec<(u32, u64)>;
    /// A held process was released, killed or is gone.
    fn forget_held(&mut self, tgid: u32);
    /// Cgroup ids with a verdict.
    fn verdict_cgroups(&self) -> Vec<u64>;
    /// Name keys with a verdict.
    fn verdict_names(&self) -> Vec<CgroupKey>;
    /// The names the kernel saw for a cgroup.
    fn cgroup_names(&self, cgroup_id: u64) -> Option<CgroupKey>;
    /// The cgroup2 directory of a process under the mount `cgroup2`.
    fn cgroup_dir_of_pid(&self, cgroup2: &Path, pid: u32) -> io::Result<PathBuf> {
        crate::sources::cgroup::cgroup2_dir_of_pid(cgroup2, pid)
    }
}

impl KernelMaps for Probes {
    fn set_verdict(&mut self, cgroup_id: u64, v: KernelVerdict) -> Result<(), ProbeError> {
        Probes::set_verdict(self, cgroup_id, v)
    }
    fn clear_verdict(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        Probes::clear_verdict(self, cgroup_id)
    }
    fn set_drift_policy(&mut self, cgroup_id: u64, bits: u32) -> Result<(), ProbeError> {
        Probes::set_drift_policy(self, cgroup_id, bits)
    }
    fn set_name_verdict(&mut self, key: &CgroupKey, v: KernelVerdict) -> Result<(), ProbeError> {
        Probes::set_name_verdict(self, key, v)
    }
    fn clear_name_verdict(&mut self, key: &CgroupKey) -> Result<(), ProbeError> {
        Probes::clear_name_verdict(self, key)
    }
    fn add_hold_parent(&mut self, cgroup_id: u64, mark: u32) -> Result<(), ProbeError> {
        Probes::add_hold_parent(self, cgroup_id, mark)
    }
    fn remove_hold_parent(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        Probes::remove_hold_parent(self, cgroup_id)
    }
    fn hold_parents(&self) -> Vec<(u64, u32)> {
        Probes::hold_parents(self)
    }
    fn held_processes(&self) -> Vec<(u32, u64)> {
        Probes::held_processes(self)
    }
    fn forget_held(&mut self, tgid: u32) {
        Probes::forget_held(self, tgid)
    }
    fn verdict_cgroups(&self) -> Vec<u64> {
        Probes::verdict_cgroups(self)
    }
    fn verdict_names(&self) -> Vec<CgroupKey> {
        Probes::verdict_names(self)
    }
    fn cgroup_names(&self, cgroup_id: u64) -> Option<CgroupKey> {
        Probes::cgroup_names(self, cgroup_id)
    }
}
