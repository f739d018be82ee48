//! Types shared by the eBPF programs and user space. `#[repr(C)]`, `Copy`,
//! explicit padding, `u32` flags instead of `bool`/enums, and compile-time
//! size assertions: the kernel and user space read the same bytes.
#![cfg_attr(not(test), no_std)]

use core::mem::{offset_of, size_of};

/// Bytes reserved for the exec'd file name, NUL included. Longer names are
/// cut and flagged with [`flags::TRUNCATED`].
pub const FILENAME_LEN: usize = 256;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// Bits of [`ExecEvent::flags`].
pub mod flags {
    /// The file name did not fit in [`super::FILENAME_LEN`] bytes.
    pub const TRUNCATED: u32 = 1 << 0;
    /// The executed file has no name on disk (memfd, or unlinked): link count 0.
    pub const FILELESS: u32 = 1 << 1;
    /// The kernel sent SIGKILL to the process at exec (enforce mode, denied cgroup).
    pub const KILLED: u32 = 1 << 2;
    /// The kernel sent SIGSTOP to the process at exec (held cgroup: user space decides).
    pub const HELD: u32 = 1 << 3;
    /// The exec was refused by the BPF LSM hook (`bprm_check_security`, -EPERM).
    pub const LSM_DENIED: u32 = 1 << 4;
    /// The file name could not be read.
    pub const NAME_UNREADABLE: u32 = 1 << 5;
    /// The link count of the executed file could not be read.
    pub const NLINK_UNREADABLE: u32 = 1 << 6;
    /// Exec drift: the executed file lives in the upper (writable) layer of
    /// the container's overlayfs root, i.e. it was written or modified after
    /// the container started; it is not one of the image's files.
    pub const DRIFT: u32 = 1 << 7;
    /// The exec ran in a container's cgroup (known to user space by id or
    /// name, or container-like): the fileless and drift checks apply.
    pub const IN_CONTAINER: u32 = 1 << 8;
    /// The exec was refused (LSM) or killed (signal) because it was fileless
    /// or drift in a container whose policy denies such execs.
    pub const DRIFT_DENIED: u32 = 1 << 9;
    /// The executed file was unlinked (`d_unlinked` of its dentry) although
    /// its link count was not 0 (another hard link remains): also fileless.
    pub const UNLINKED: u32 = 1 << 10;
}

/// Bits of the `DRIFT_POLICY` map's value (cgroup id -> what to refuse).
pub mod drift_policy {
    /// Refuse (enforce mode) execs of files without a name on disk.
    pub const DENY_FILELESS: u32 = 1 << 0;
    /// Refuse (enforce mode) execs of files in the container's upper layer.
    pub const DENY_DRIFT: u32 = 1 << 1;
}

/// `OVERLAYFS_SUPER_MAGIC` (`include/uapi/linux/magic.h`).
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Values of the verdict map (cgroup id -> verdict).
pub mod verdict {
    /// Not in the map: nothing known about this cgroup.
    pub const UNKNOWN: u32 = 0;
    pub const ALLOW: u32 = 1;
    /// Enforce mode: every exec in the cgroup is stopped in the kernel.
    pub const DENY: u32 = 2;
    /// Enforce mode: an exec is stopped (SIGSTOP) until user space decides.
    pub const HOLD: u32 = 3;
    /// Denied by a rule in Audit mode: reported, never acted on in the kernel.
    pub const AUDIT: u32 = 4;
}

/// Values of the `HOLD_PARENTS` map (cgroup id -> mark), which user space
/// fills with full-path cgroups, by id (issue 13, case 9).
pub mod hold_parent {
    /// A containerd namespace's cgroup (`/<namespace>`): an unclassified
    /// child is held like an unclassified container-id cgroup.
    pub const NAMESPACE: u32 = 1;
    /// A container's cgroup: a cgroup below it that no verdict names (a
    /// nested runtime's container, a sub-cgroup) is judged as this
    /// container, by this cgroup's own verdict.
    pub const CONTAINER: u32 = 2;
}

/// Indices of the per-CPU counter array.
pub mod counter {
    /// Exec events seen by the exec hook.
    pub const EXECS: u32 = 0;
    /// Ring-buffer reservations that failed: events lost in the kernel.
    pub const RINGBUF_DROPS: u32 = 1;
    /// SIGKILLs sent at exec.
    pub const KILLS: u32 = 2;
    /// Execs refused by the LSM hook.
    pub const LSM_DENIES: u32 = 3;
    /// SIGSTOPs sent at exec (hold).
    pub const HOLDS: u32 = 4;
    /// Verdicts found by cgroup name (container announced, id not yet known).
    pub const NAME_HITS: u32 = 5;
    /// Fileless or drift execs seen in containers (reported or refused).
    pub const DRIFT_EXECS: u32 = 6;
    /// Fileless or drift execs refused (LSM) or killed (signal) by policy.
    pub const DRIFT_DENIES: u32 = 7;
    /// First of the per-cause error counters: the counter of a failure is
    /// `ERRORS_BASE + ` its [`super::error_cause`].
    pub const ERRORS_BASE: u32 = 8;
    pub const COUNT: u32 = ERRORS_BASE + super::error_cause::COUNT;
}

/// Why the kernel side failed (one counter each, at
/// `counter::ERRORS_BASE + cause`). The event, when there is one, is still
/// emitted, flagged. A new cause is a constant here, its counter in the
/// programs and its label in user space (`probes::ErrorCause`).
pub mod error_cause {
    /// The names of the exec'ing task's cgroup could not be read: the
    /// verdict by name (and the container-id test) fell back to the default.
    pub const CGROUP_NAME: u32 = 0;
    /// The executed file (its inode, link count, superblock or dentry)
    /// could not be read: not classified (`NLINK_UNREADABLE`).
    pub const EXE_FILE: u32 = 1;
    /// The exec'd file name could not be read (`NAME_UNREADABLE`).
    pub const FILENAME: u32 = 2;
    /// `bpf_send_signal` (SIGKILL for a deny or a refused drift exec,
    /// SIGSTOP for a hold) failed: the exec was not stopped.
    pub const SIGNAL: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Bytes kept of each of the two last cgroup path components in
/// [`CgroupKey`]. Longer names are cut (and user space cuts the same way).
pub const CGROUP_NAME_LEN: usize = 96;

/// The last two components of a cgroup v2 path (`parent`, `leaf`), NUL
/// padded: how the kernel recognises a container whose cgroup id user space
/// does not know yet. The runtime announces a container, with its OCI
/// `cgroupsPath`, before its task (and so its cgroup) exists; user space
/// stores the verdict under this key, and the first exec in the new cgroup
/// already finds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    pub leaf: [u8; CGROUP_NAME_LEN],
    pub parent: [u8; CGROUP_NAME_LEN],
}

const _: () = assert!(size_of::<CgroupKey>() == 2 * CGROUP_NAME_LEN);

impl CgroupKey {
    pub const fn zeroed() -> Self {
        CgroupKey {
            leaf: [0; CGROUP_NAME_LEN],
            parent: [0; CGROUP_NAME_LEN],
        }
    }

    /// Builds a key the way the kernel reads one: each name cut to
    /// `CGROUP_NAME_LEN - 1` bytes, NUL padded.
    pub fn new(parent: &[u8], leaf: &[u8]) -> Self {
        let mut k = Self::zeroed();
        let n = if leaf.len() < CGROUP_NAME_LEN {
            leaf.len()
        } else {
            CGROUP_NAME_LEN - 1
        };
        k.leaf[..n].copy_from_slice(&leaf[..n]);
        let n = if parent.len() < CGROUP_NAME_LEN {
            parent.len()
        } else {
            CGROUP_NAME_LEN - 1
        };
        k.parent[..n].copy_from_slice(&parent[..n]);
        k
    }

    /// Whether the leaf name holds a container id: a run of 64 lower-case
    /// hex digits (containerd/CRI, CRI-O, docker, any cgroup driver).
    pub fn leaf_looks_like_container(&self) -> bool {
        // Branch-free on purpose: BPF has no conditional set, so every
        // comparison would be a branch and 96 iterations of branches make
        // the verifier explore too many states (E2BIG).
        let mut run: i32 = 0;
        let mut found: u32 = 0;
        let mut i = 0;
        while i < CGROUP_NAME_LEN {
            let c = self.leaf[i] as i32;
            let d = c - b'0' as i32; // digit: 0..=9
            let h = c - b'a' as i32; // lower-case hex letter: 0..=5
            let is_digit = 1 ^ (((d | (9 - d)) as u32) >> 31);
            let is_hex = 1 ^ (((h | (5 - h)) as u32) >> 31);
            run = (run + 1) * (is_digit | is_hex) as i32;
            found |= ((63 - run) as u32) >> 31; // run >= 64
            i += 1;
        }
        found != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_like_leaf_names() {
        let id = "0123456789abcdef".repeat(4);
        for leaf in [
            id.clone(),
            format!("cri-containerd-{id}.scope"),
            format!("crio-{id}.scope"),
            format!("docker-{id}.scope"),
        ] {
            assert!(
                CgroupKey::new(b"p", leaf.as_bytes()).leaf_looks_like_container(),
                "{leaf}"
            );
        }
        let short = &id[..63];
        let upper = id.to_uppercase();
        let gap = format!("{}-{}", &id[..32], &id[32..]);
        for leaf in [
            "",
            "init.scope",
            "user.slice",
            short,
            upper.as_str(),
            gap.as_str(),
            "ggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
        ] {
            assert!(
                !CgroupKey::new(b"p", leaf.as_bytes()).leaf_looks_like_container(),
                "{leaf}"
            );
        }
    }

    #[test]
    fn keys_are_cut_like_the_kernel_cuts() {
        let long = [b'x'; 200];
        let k = CgroupKey::new(&long, &long);
        assert_eq!(k.leaf[CGROUP_NAME_LEN - 2], b'x');
        assert_eq!(k.leaf[CGROUP_NAME_LEN - 1], 0);
        assert_eq!(k.parent[CGROUP_NAME_LEN - 1], 0);
        assert_eq!(CgroupKey::new(b"a", b"b"), CgroupKey::new(b"a", b"b"));
        assert_ne!(CgroupKey::new(b"a", b"b"), CgroupKey::new(b"b", b"a"));
    }
}

/// Which exec hook a program is ([`RecordHeader::hook`]).
pub mod hook {
    pub const TP_BTF: u32 = 1;
    pub const TRACEPOINT: u32 = 2;
    pub const LSM: u32 = 3;
}

/// What a ring-buffer record is ([`RecordHeader::kind`]): user space
/// decodes each kind with its own arm and counts an unknown kind as a
/// decode error. A new record kind is a constant here, its `#[repr(C)]`
/// struct starting with a [`RecordHeader`], and its decode arm.
pub mod record_kind {
    /// An [`super::ExecEvent`].
    pub const EXEC: u16 = 1;
}

/// The first 8 bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// [`record_kind`] of the record.
    pub kind: u16,
    /// [`hook`] of the program that wrote it.
    pub hook: u16,
    /// Zero.
    pub _reserved: u32,
}

const _: () = assert!(size_of::<RecordHeader>() == 8);

/// One successful exec (or one refused by the LSM hook).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// `kind` [`record_kind::EXEC`].
    pub header: RecordHeader,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// cgroup v2 id (inode of the cgroup directory in the unified hierarchy).
    pub cgroup_id: u64,
    /// Thread id after exec (equals tgid: exec makes the caller the leader).
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// The [`verdict`] the kernel applied.
    pub verdict: u32,
    /// Length of `filename` without the NUL.
    pub filename_len: u16,
    pub _pad: u16,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
    /// The executed file's own name (its dentry's last component, NUL
    /// padded), read for fileless and drift execs only: a memfd's
    /// `memfd:<name>`, where `filename` says `/dev/fd/3`.
    pub file_name: [u8; FILE_NAME_LEN],
}

/// Bytes kept of [`ExecEvent::file_name`], NUL included.
pub const FILE_NAME_LEN: usize = 64;

const _: () = assert!(size_of::<ExecEvent>() == 392);
const _: () = assert!(size_of::<ExecEvent>().is_multiple_of(8));
const _: () = assert!(offset_of!(ExecEvent, header) == 0);
const _: () = assert!(offset_of!(ExecEvent, boot_ns) == 8);
const _: () = assert!(offset_of!(ExecEvent, cgroup_id) == 16);
const _: () = assert!(offset_of!(ExecEvent, pid) == 24);
const _: () = assert!(offset_of!(ExecEvent, verdict) == 48);
const _: () = assert!(offset_of!(ExecEvent, filename_len) == 52);
const _: () = assert!(offset_of!(ExecEvent, comm) == 56);
const _: () = assert!(offset_of!(ExecEvent, filename) == 72);
const _: () = assert!(offset_of!(ExecEvent, file_name) == 328);

/// Run-time configuration written by user space before attaching.
/// Kernel struct offsets are resolved from the running kernel's BTF
/// (`/sys/kernel/btf/vmlinux`) so the object is not tied to one kernel build.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// 1: act on DENY/HOLD verdicts (enforce mode); 0: audit only.
    pub enforce: u32,
    /// Verdict for cgroups absent from the verdict map.
    pub default_verdict: u32,
    pub off_task_real_parent: u32,
    pub off_task_tgid: u32,
    pub off_task_mm: u32,
    pub off_mm_exe_file: u32,
    pub off_file_f_inode: u32,
    pub off_inode_i_nlink: u32,
    /// `linux_binprm::filename` (tp_btf and LSM programs).
    pub off_bprm_filename: u32,
    /// Offset of the `__data_loc char[] filename` field in the classic
    /// `sched/sched_process_exec` tracepoint record.
    pub off_tp_filename_loc: u32,
    /// Set to [`CONFIG_MAGIC`] by user space; the programs do nothing until then.
    pub magic: u32,
    /// Verdict for a cgroup absent from both verdict maps whose leaf name
    /// looks like a container id (HOLD in enforce mode: user space decides).
    pub unknown_container_verdict: u32,
    pub off_task_cgroups: u32,
    pub off_css_set_dfl_cgrp: u32,
    pub off_cgroup_kn: u32,
    pub off_kernfs_node_name: u32,
    pub off_kernfs_node_parent: u32,
    /// 1: emit every exec; 0: only those user space acts on (deny, audit,
    /// hold, killed, fileless). Routine execs then cost no ring-buffer
    /// submit and no wake-up of user space (see docs/benchmarks.md).
    pub emit_all: u32,
    /// Dead-man's switch: when the agent's heartbeat (the `HEARTBEAT` map,
    /// `CLOCK_BOOTTIME` ns written by user space every second) is older
    /// than this, the kernel stops holding unknown containers (they run and
    /// are counted in `UNENFORCED`); known-denied cgroups stay denied.
    /// 0: off (hold regardless).
    pub heartbeat_stale_ns: u64,
    /// `file::f_path` + `path::dentry`.
    pub off_file_dentry: u32,
    /// `inode::i_sb`.
    pub off_inode_i_sb: u32,
    /// `super_block::s_magic`.
    pub off_sb_s_magic: u32,
    /// `sizeof(struct inode)`: overlayfs' `struct ovl_inode` keeps its
    /// `__upperdentry` right after its embedded `vfs_inode`, which ends
    /// the inode the file points at (Linux 4.x to 6.18).
    pub off_ovl_upperdentry: u32,
    /// `dentry::d_hash` + `hlist_bl_node::pprev` (NULL: unhashed).
    pub off_dentry_d_hash_pprev: u32,
    /// `dentry::d_parent`.
    pub off_dentry_d_parent: u32,
    /// `dentry::d_name` + `qstr::name`.
    pub off_dentry_d_name: u32,
    /// `linux_binprm::file` (LSM program).
    pub off_bprm_file: u32,
    /// 1: classify every exec in a container (fileless, drift); 0: off
    /// (`--no-exec-drift-check`: neither reported nor refused).
    pub drift_check: u32,
    pub _pad: u32,
}

pub const CONFIG_MAGIC: u32 = 0x1a6e_3a2d;

const _: () = assert!(size_of::<Config>() == 120);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding, no pointers.
    unsafe impl aya::Pod for super::ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above (two byte arrays).
    unsafe impl aya::Pod for super::CgroupKey {}
}
