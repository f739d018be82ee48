//! The kernel's per-CPU counters (the `COUNTERS` map), summed at read time.
use agent_common::{counter, error_cause};
use aya::maps::{MapData, PerCpuArray};

use super::ProbeError;

/// Why the kernel side failed: one counter each (`agent_common::error_cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCause {
    /// The exec'ing task's cgroup names could not be read.
    CgroupName,
    /// The executed file could not be read (not classified).
    ExeFile,
    /// The exec'd file name could not be read.
    Filename,
    /// `bpf_send_signal` failed: a deny, hold or refused drift exec was not stopped.
    Signal,
}

impl ErrorCause {
    /// Every cause, in the order of their kernel ids.
    pub const ALL: [ErrorCause; error_cause::COUNT as usize] = [
        Self::CgroupName,
        Self::ExeFile,
        Self::Filename,
        Self::Signal,
    ];

    /// The kernel's id (`agent_common::error_cause`).
    pub const fn id(self) -> u32 {
        match self {
            Self::CgroupName => error_cause::CGROUP_NAME,
            Self::ExeFile => error_cause::EXE_FILE,
            Self::Filename => error_cause::FILENAME,
            Self::Signal => error_cause::SIGNAL,
        }
    }

    /// The `cause` label of `imagewarden_kernel_errors_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CgroupName => "cgroup_name",
            Self::ExeFile => "exe_file",
            Self::Filename => "filename",
            Self::Signal => "signal",
        }
    }
}

/// Kernel failures by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ErrorCause::ALL.len()]);

impl ErrorCounts {
    pub fn get(&self, cause: ErrorCause) -> u64 {
        self.0[cause.id() as usize]
    }
    pub fn set(&mut self, cause: ErrorCause, v: u64) {
        self.0[cause.id() as usize] = v;
    }
    /// Every cause with its count, in `ErrorCause::ALL` order.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorCause, u64)> + '_ {
        ErrorCause::ALL.iter().map(|&c| (c, self.get(c)))
    }
    pub fn total(&self) -> u64 {
        self.0.iter().copied().fold(0, u64::wrapping_add)
    }
}

/// Sums of the per-CPU kernel counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub execs: u64,
    pub ringbuf_drops: u64,
    pub kills: u64,
    pub lsm_denies: u64,
    pub holds: u64,
    /// Failed kernel reads or signals, by cause.
    pub errors: ErrorCounts,
    pub name_hits: u64,
    /// Fileless or drift execs seen in containers.
    pub drift_execs: u64,
    /// Fileless or drift execs refused or killed by policy.
    pub drift_denies: u64,
}

/// Shared read access to the per-CPU counter map.
#[derive(Clone)]
pub struct CounterReader(std::sync::Arc<PerCpuArray<MapData, u64>>);

impl CounterReader {
    pub(super) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self(std::sync::Arc::new(map))
    }

    pub fn read(&self) -> Result<KernelCounters, ProbeError> {
        let get = |i: u32| -> Result<u64, ProbeError> {
            let v = self
                .0
                .get(&i, 0)
                .map_err(|e| ProbeError::map("COUNTERS", e))?;
            Ok(v.iter().copied().fold(0u64, u64::wrapping_add))
        };
        let mut errors = ErrorCounts::default();
        for c in ErrorCause::ALL {
            errors.set(c, get(counter::ERRORS_BASE + c.id())?);
        }
        Ok(KernelCounters {
            execs: get(counter::EXECS)?,
            ringbuf_drops: get(counter::RINGBUF_DROPS)?,
            kills: get(counter::KILLS)?,
            lsm_denies: get(counter::LSM_DENIES)?,
            holds: get(counter::HOLDS)?,
            errors,
            name_hits: get(counter::NAME_HITS)?,
            drift_execs: get(counter::DRIFT_EXECS)?,
            drift_denies: get(counter::DRIFT_DENIES)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_kernel_error_cause_has_one_label_and_one_counter() {
        let ids: BTreeSet<u32> = ErrorCause::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(ids, (0..error_cause::COUNT).collect::<BTreeSet<_>>());
        for (i, c) in ErrorCause::ALL.iter().enumerate() {
            assert_eq!(c.id() as usize, i, "ALL is in id order");
        }
        let labels: BTreeSet<&str> = ErrorCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), ErrorCause::ALL.len(), "labels are distinct");
        // The error counters are the last ones of the array, after the others.
        for other in [
            counter::EXECS,
            counter::RINGBUF_DROPS,
            counter::KILLS,
            counter::LSM_DENIES,
            counter::HOLDS,
            counter::NAME_HITS,
            counter::DRIFT_EXECS,
            counter::DRIFT_DENIES,
        ] {
            assert!(other < counter::ERRORS_BASE);
        }
        assert_eq!(counter::COUNT, counter::ERRORS_BASE + error_cause::COUNT);
    }

    #[test]
    fn the_kernel_counter_array_has_a_slot_per_counter() {
        let obj = aya_obj::Object::parse(super::super::EBPF_OBJECT).expect("the eBPF object");
        let m = obj.maps.get("COUNTERS").expect("COUNTERS map");
        assert_eq!(m.max_entries(), counter::COUNT);
    }

    #[test]
    fn error_counts_by_cause_and_total() {
        let mut e = ErrorCounts::default();
        e.set(ErrorCause::Signal, 3);
        e.set(ErrorCause::CgroupName, 4);
        assert_eq!(e.get(ErrorCause::Signal), 3);
        assert_eq!(e.get(ErrorCause::Filename), 0);
        assert_eq!(e.total(), 7);
        let rows: Vec<_> = e.iter().map(|(c, v)| (c.as_str(), v)).collect();
        assert_eq!(
            rows,
            [
                ("cgroup_name", 4),
                ("exe_file", 0),
                ("filename", 0),
                ("signal", 3)
            ]
        );
    }
}
