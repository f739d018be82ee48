//! imagewarden's kernel side: one event per successful exec, and the
//! in-kernel verdict for the exec'ing cgroup.
//!
//! Programs (user space attaches the first one the kernel accepts):
//! - `tp_btf/sched_process_exec` (`exec_btf`), preferred;
//! - `tracepoint/sched/sched_process_exec` (`exec_tp`), the fallback;
//! - `lsm/bprm_check_security` (`bprm_check`), refuses a denied exec with
//!   -EPERM where the kernel allows BPF LSM programs.
//!
//! Enforcement comes before event emission: a full ring buffer loses the
//! event (counted), never the kill.
//!
//! A failed kernel read or signal is counted per cause
//! (`agent_common::error_cause`) and logged through aya-log, on the failure
//! branch only, at debug. The log level is a `.rodata` constant
//! (`AYA_LOG_LEVEL`) that the agent sets at load time from its own log
//! filter: the verifier sees it as a constant and prunes the statements
//! below it, so at the default level (info) they cost no instruction at all.
#![no_std]
#![no_main]

use agent_common::{
    counter, drift_policy, error_cause, flags, hold_parent, hook, record_kind, verdict, CgroupKey,
    Config, ExecEvent, RecordHeader, CGROUP_NAME_LEN, CONFIG_MAGIC, FILENAME_LEN,
    OVERLAYFS_SUPER_MAGIC,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_send_signal,
    },
    macros::{btf_tracepoint, lsm, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, LsmContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;
const EPERM: i32 = 1;

/// Exec events to user space. Default 4 MiB (~13,000 events); user space
/// sets the size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Hash maps that only user space writes are not preallocated: their
/// elements are allocated when user space inserts them (outside the exec
/// path; the programs here only look them up), so the kernel memory they
/// take follows the node's containers instead of the bound. Preallocated,
/// VERDICTS and NAME_VERDICTS took 5.2 and 17.3 MB of kernel memory
/// (charged to the agent's memory cgroup) on every node.
const NO_PREALLOC: u32 = 1; // BPF_F_NO_PREALLOC

/// cgroup id -> verdict (see `agent_common::verdict`). 65,536 cgroups is far
/// above the pods-per-node limit times containers per pod.
#[map]
static VERDICTS: HashMap<u64, u32> = HashMap::with_max_entries(65_536, NO_PREALLOC);

/// (parent, leaf) cgroup names -> verdict, for containers that the runtime
/// announced before their cgroup existed. Same bound as VERDICTS.
#[map]
static NAME_VERDICTS: HashMap<CgroupKey, u32> = HashMap::with_max_entries(65_536, NO_PREALLOC);

/// cgroup id -> names, written by the kernel when it decided by name (or
/// held a container-like cgroup), so that user space can attribute the
/// event even when the process and its cgroup are gone by the time it looks.
#[map]
static CGROUP_NAMES: LruHashMap<u64, CgroupKey> = LruHashMap::with_max_entries(16_384, 0);

/// cgroup id -> `agent_common::hold_parent` mark, by full path (the id of
/// one directory), never by name (issue 13, case 9):
/// - NAMESPACE: a containerd namespace's cgroup (`ctr run` puts a container
///   in `/<namespace>/<id>`, whose id need not look like one); an
///   unclassified child is held like an unclassified container-id cgroup.
/// - CONTAINER: a container's cgroup; an unclassified cgroup below it (a
///   nested runtime's container: docker-in-docker, a kind node) is judged
///   as that container. Same bound as VERDICTS.
#[map]
static HOLD_PARENTS: HashMap<u64, u32> = HashMap::with_max_entries(65_536, NO_PREALLOC);

/// Deepest cgroup level the ancestry walk reads; below it, a cgroup's
/// parent is not looked up (a container-like leaf is still held).
const MAX_CGROUP_LEVEL: i32 = 32;

/// What the current task's cgroup ancestry says (by cgroup id, from the
/// root down): `Some(verdict)` of the outermost ancestor marked CONTAINER,
/// and whether the direct parent is marked NAMESPACE.
#[inline(always)]
fn ancestry(cgroup_id: u64, cfg: &Config) -> (Option<u32>, bool) {
    let mut parent: u64 = 0;
    let mut reached = false;
    let mut level: i32 = 1;
    while level <= MAX_CGROUP_LEVEL {
        // SAFETY: helper call.
        let a = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if a == 0 {
            break;
        }
        if a == cgroup_id {
            reached = true;
            break;
        }
        // SAFETY: the values are plain u32s copied out immediately.
        if let Some(m) = unsafe { HOLD_PARENTS.get(a) } {
            if *m == hold_parent::CONTAINER {
                let v = unsafe { VERDICTS.get(a) }
                    .copied()
                    .unwrap_or(cfg.unknown_container_verdict);
                return (Some(v), false);
            }
        }
        parent = a;
        level += 1;
    }
    let ns = reached
        && parent != 0
        // SAFETY: as above.
        && unsafe { HOLD_PARENTS.get(parent) }.is_some_and(|m| *m == hold_parent::NAMESPACE);
    (None, ns)
}

/// cgroup id -> [`drift_policy`] bits: the containers whose policy refuses
/// fileless and drift execs (enforce mode). Looked up only for an exec that
/// is fileless or drift (tracepoints), or in a container that has an entry
/// (LSM), so routine execs pay nothing for it.
#[map]
static DRIFT_POLICY: HashMap<u64, u32> = HashMap::with_max_entries(65_536, NO_PREALLOC);

/// Per-CPU scratch space for a CgroupKey (192 bytes: kept off the stack).
#[map]
static SCRATCH: PerCpuArray<CgroupKey> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// cgroup id -> (generation << 32 | verdict) for cgroups decided by name
/// with the default verdict: routine host cgroups, which have no entry in
/// VERDICTS. Caching them spares every later exec there the name lookup
/// (the probe's costliest part). An entry is valid only while its
/// generation equals NAME_GEN[0], which user space increments after every
/// change to NAME_VERDICTS, HOLD_PARENTS or CONFIG. Not pinned: a new
/// agent starts with an empty cache and its own generation.
#[map]
static DECIDED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

#[map]
static NAME_GEN: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The agent's heartbeat: `CLOCK_BOOTTIME` ns, written by user space every
/// second. Pinned: it outlives the agent, which is the point.
#[map]
static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Execs let through unheld while the heartbeat was stale (no agent).
/// Pinned: the next agent reports them.
#[map]
static UNENFORCED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// cgroup id -> boot ns of the first exec let through unheld there.
/// Pinned, for the next agent to report and judge.
#[map]
static UNENFORCED_CGROUPS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Processes the kernel stopped (SIGSTOP) at exec, waiting for a decision:
/// tgid -> cgroup id. Pinned and scanned by user space every tick, so a hold
/// is decided even when its ring-buffer event was lost or went to an agent
/// that died (issue 13, case 4). LRU: bounded; user space removes entries
/// as it releases or kills them.
#[map]
static HELD: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Whether the agent is gone: its heartbeat is older than the bound.
#[inline(always)]
fn agent_gone(cfg: &Config, now: u64) -> bool {
    if cfg.heartbeat_stale_ns == 0 {
        return false;
    }
    match HEARTBEAT.get_ptr(0) {
        // SAFETY: array slot; an aligned u64 read is not torn.
        Some(p) => {
            now.saturating_sub(unsafe { core::ptr::read_volatile(p) }) > cfg.heartbeat_stale_ns
        }
        None => false,
    }
}

/// Dead-man's switch: an unknown container's exec is not held while no
/// agent is there to decide; it is counted instead.
#[inline(always)]
fn unless_agent_gone(v: u32, cgroup_id: u64, cfg: &Config) -> u32 {
    if v != verdict::HOLD {
        return v;
    }
    // SAFETY: helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !agent_gone(cfg, now) {
        return v;
    }
    if let Some(p) = UNENFORCED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
    // SAFETY: the value is a plain u64 copied out immediately.
    if unsafe { UNENFORCED_CGROUPS.get(cgroup_id) }.is_none() {
        let _ = UNENFORCED_CGROUPS.insert(cgroup_id, now, 0);
    }
    verdict::UNKNOWN
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The aya-log target of this side's records (user space filters on it).
const LOG_TARGET: &str = "imagewarden::ebpf";

/// Counts a failure under its [`error_cause`]. The caller logs it.
#[inline(always)]
fn failed(cause: u32) {
    count(counter::ERRORS_BASE + cause);
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    let c = CONFIG.get(0)?;
    if c.magic == CONFIG_MAGIC {
        Some(c)
    } else {
        None
    }
}

/// The verdict for the current task's cgroup: by id; else by the (parent,
/// leaf) names of the cgroup (a container announced before its cgroup
/// existed); else, for a cgroup whose name holds a container id, the
/// unknown-container verdict; else the default. The second value says
/// whether the cgroup is a container's (every case but the default).
// The cgroup names stay where they are (a per-CPU scratch map) and are
// passed by reference: by value, each lookup would copy the 192-byte key
// onto the 512-byte BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn verdict_of(cgroup_id: u64, cfg: &Config) -> (u32, bool) {
    // SAFETY: the value is a plain u32 copied out immediately.
    if let Some(v) = unsafe { VERDICTS.get(cgroup_id) } {
        return (*v, true);
    }
    // Read the generation before the names are looked up: a change made by
    // user space after this point bumps it, so the entry written below
    // cannot outlive that change.
    let gen = match NAME_GEN.get_ptr(0) {
        // SAFETY: array slot; a torn read is impossible for an aligned u32.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => return (cfg.default_verdict, false),
    };
    // SAFETY: the value is a plain u64 copied out immediately.
    if let Some(d) = unsafe { DECIDED.get(cgroup_id) } {
        let d = *d;
        if (d >> 32) as u32 == gen {
            return (d as u32, false);
        }
    }
    let Some(key) = SCRATCH.get_ptr_mut(0) else {
        return (cfg.default_verdict, false);
    };
    // SAFETY: per-CPU scratch slot; kernel memory only through probe helpers.
    unsafe {
        if let Err(e) = current_cgroup_key(key, cfg) {
            failed(error_cause::CGROUP_NAME);
            debug!(
                &(),
                target: LOG_TARGET,
                "cgroup {}: names unreadable ({}), default verdict",
                cgroup_id,
                e
            );
            return (cfg.default_verdict, false);
        }
        if let Some(v) = NAME_VERDICTS.get(&*key) {
            count(counter::NAME_HITS);
            let _ = CGROUP_NAMES.insert(cgroup_id, &*key, 0);
            return (*v, true);
        }
        let (outer, under_namespace) = ancestry(cgroup_id, cfg);
        if let Some(v) = outer {
            // Nested in a known container: its verdict, as it changes (not
            // cached: VERDICTS changes do not bump the generation).
            return (v, true);
        }
        if (*key).leaf_looks_like_container() || under_namespace {
            let _ = CGROUP_NAMES.insert(cgroup_id, &*key, 0);
            return (cfg.unknown_container_verdict, true);
        }
    }
    let _ = DECIDED.insert(
        cgroup_id,
        ((gen as u64) << 32) | cfg.default_verdict as u64,
        0,
    );
    (cfg.default_verdict, false)
}

/// Fills `key` with the names of the current task's cgroup v2 directory and
/// its parent: task->cgroups->dfl_cgrp->kn->{name, parent->name}.
#[inline(always)]
unsafe fn current_cgroup_key(key: *mut CgroupKey, cfg: &Config) -> Result<(), i64> {
    // Zero with volatile stores: the key is hashed whole, and a plain loop
    // would become a memset call, which BPF does not have.
    let words = key as *mut u64;
    let mut i = 0;
    while i < (2 * CGROUP_NAME_LEN) / 8 {
        core::ptr::write_volatile(words.add(i), 0);
        i += 1;
    }
    let task = bpf_get_current_task() as *const u8;
    let css_set = read_ptr(task, cfg.off_task_cgroups)?;
    let cgrp = read_ptr(css_set, cfg.off_css_set_dfl_cgrp)?;
    let kn = read_ptr(cgrp, cfg.off_cgroup_kn)?;
    let name = read_ptr(kn, cfg.off_kernfs_node_name)?;
    bpf_probe_read_kernel_str_bytes(name, &mut (*key).leaf).map_err(|e| e as i64)?;
    let parent = read_ptr(kn, cfg.off_kernfs_node_parent)?;
    if !parent.is_null() {
        let pname = read_ptr(parent, cfg.off_kernfs_node_name)?;
        bpf_probe_read_kernel_str_bytes(pname, &mut (*key).parent).map_err(|e| e as i64)?;
    }
    Ok(())
}

/// Reads a kernel pointer field at `base + off`.
#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> Result<*const u8, i64> {
    bpf_probe_read_kernel(base.add(off as usize) as *const *const u8).map_err(|e| e as i64)
}

// Struct offsets for the BTF-typed programs (tp_btf, LSM), set by user
// space at load time (the same values as `Config`'s). They live in
// `.rodata`, which aya freezes read-only for programs: the verifier reads
// them as constants, so `ptr + OFF` stays a typed pointer at a known
// offset and a field is a plain load (checked against the kernel's BTF,
// faults read as 0) instead of a `bpf_probe_read_kernel` helper call.
// u64: a spilled 8-byte scalar keeps its known value on every kernel.
#[no_mangle]
static IW_OFF_BPRM_FILE: u64 = 0;
#[no_mangle]
static IW_OFF_FILE_F_INODE: u64 = 0;
#[no_mangle]
static IW_OFF_INODE_I_NLINK: u64 = 0;
#[no_mangle]
static IW_OFF_INODE_I_SB: u64 = 0;
#[no_mangle]
static IW_OFF_SB_S_MAGIC: u64 = 0;
#[no_mangle]
static IW_OFF_FILE_DENTRY: u64 = 0;
#[no_mangle]
static IW_OFF_DENTRY_D_HASH_PPREV: u64 = 0;
#[no_mangle]
static IW_OFF_DENTRY_D_PARENT: u64 = 0;

/// How [`exe_class`] reads kernel memory, and at which offsets.
trait Kmem {
    unsafe fn ptr(base: *const u8, off: u64) -> Result<*const u8, i64>;
    unsafe fn u32_at(base: *const u8, off: u64) -> Result<u32, i64>;
    unsafe fn u64_at(base: *const u8, off: u64) -> Result<u64, i64>;
    /// (bprm->file, file->f_inode, inode->i_nlink, inode->i_sb,
    /// sb->s_magic, file->f_path.dentry, dentry->d_hash.pprev,
    /// dentry->d_parent)
    fn offsets(cfg: &Config) -> [u64; 8];
}

/// Any pointer (the classic tracepoint's `task->mm->exe_file`): probe reads.
struct Probed;

impl Kmem for Probed {
    #[inline(always)]
    unsafe fn ptr(base: *const u8, off: u64) -> Result<*const u8, i64> {
        bpf_probe_read_kernel(base.add(off as usize) as *const *const u8).map_err(|e| e as i64)
    }
    #[inline(always)]
    unsafe fn u32_at(base: *const u8, off: u64) -> Result<u32, i64> {
        bpf_probe_read_kernel(base.add(off as usize) as *const u32).map_err(|e| e as i64)
    }
    #[inline(always)]
    unsafe fn u64_at(base: *const u8, off: u64) -> Result<u64, i64> {
        bpf_probe_read_kernel(base.add(off as usize) as *const u64).map_err(|e| e as i64)
    }
    #[inline(always)]
    fn offsets(cfg: &Config) -> [u64; 8] {
        [
            cfg.off_bprm_file as u64,
            cfg.off_file_f_inode as u64,
            cfg.off_inode_i_nlink as u64,
            cfg.off_inode_i_sb as u64,
            cfg.off_sb_s_magic as u64,
            cfg.off_file_dentry as u64,
            cfg.off_dentry_d_hash_pprev as u64,
            cfg.off_dentry_d_parent as u64,
        ]
    }
}

/// A BTF-typed pointer (tp_btf's and LSM's `bprm` and what is read
/// through it): plain loads at the `.rodata` offsets.
struct Typed;

impl Kmem for Typed {
    #[inline(always)]
    unsafe fn ptr(base: *const u8, off: u64) -> Result<*const u8, i64> {
        Ok(core::ptr::read_volatile(
            base.add(off as usize) as *const *const u8
        ))
    }
    #[inline(always)]
    unsafe fn u32_at(base: *const u8, off: u64) -> Result<u32, i64> {
        Ok(core::ptr::read_volatile(
            base.add(off as usize) as *const u32
        ))
    }
    #[inline(always)]
    unsafe fn u64_at(base: *const u8, off: u64) -> Result<u64, i64> {
        Ok(core::ptr::read_volatile(
            base.add(off as usize) as *const u64
        ))
    }
    #[inline(always)]
    fn offsets(_cfg: &Config) -> [u64; 8] {
        // SAFETY: plain reads of this object's own read-only globals.
        unsafe {
            [
                core::ptr::read_volatile(&IW_OFF_BPRM_FILE),
                core::ptr::read_volatile(&IW_OFF_FILE_F_INODE),
                core::ptr::read_volatile(&IW_OFF_INODE_I_NLINK),
                core::ptr::read_volatile(&IW_OFF_INODE_I_SB),
                core::ptr::read_volatile(&IW_OFF_SB_S_MAGIC),
                core::ptr::read_volatile(&IW_OFF_FILE_DENTRY),
                core::ptr::read_volatile(&IW_OFF_DENTRY_D_HASH_PPREV),
                core::ptr::read_volatile(&IW_OFF_DENTRY_D_PARENT),
            ]
        }
    }
}

/// Fills the process fields shared by every hook. `file` is the executed
/// file (`struct file *`); `class` its [`exe_class`] when already known,
/// else [`UNCLASSIFIED`]. (Not an `Option`: its payload would be an
/// uninitialised register on the `None` path, which the verifier refuses
/// once the compiler copies it.)
#[inline(always)]
unsafe fn fill_common(
    ev: *mut ExecEvent,
    cfg: &Config,
    cgroup_id: u64,
    v: u32,
    hk: u32,
    file: *const u8,
    class: u32,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    (*ev).boot_ns = bpf_ktime_get_boot_ns();
    (*ev).cgroup_id = cgroup_id;
    (*ev).pid = pid_tgid as u32;
    (*ev).tgid = (pid_tgid >> 32) as u32;
    (*ev).uid = uid_gid as u32;
    (*ev).gid = (uid_gid >> 32) as u32;
    (*ev).header = RecordHeader {
        kind: record_kind::EXEC,
        hook: hk as u16,
        _reserved: 0,
    };
    (*ev).verdict = v;
    (*ev).filename_len = 0;
    (*ev)._pad = 0;
    (*ev).comm = bpf_get_current_comm().unwrap_or([0u8; 16]);

    let mut fl = 0u32;
    let task = bpf_get_current_task() as *const u8;
    // ppid: task->real_parent->tgid
    (*ev).ppid = match read_ptr(task, cfg.off_task_real_parent) {
        Ok(parent) if !parent.is_null() => {
            bpf_probe_read_kernel(parent.add(cfg.off_task_tgid as usize) as *const u32).unwrap_or(0)
        }
        _ => 0,
    };
    fl |= if class == UNCLASSIFIED {
        exe_class::<Probed>(file, cfg)
    } else {
        class
    };
    (*ev).file_name[0] = 0;
    if fl & (flags::FILELESS | flags::DRIFT) != 0 {
        read_file_name(ev, file, cfg);
    }
    (*ev).flags = fl;
}

/// [`fill_common`]'s `class` when the exec was not classified yet.
const UNCLASSIFIED: u32 = u32::MAX;

/// The file the current task runs since its exec: task->mm->exe_file.
#[inline(always)]
unsafe fn current_exe_file(cfg: &Config) -> *const u8 {
    let task = bpf_get_current_task() as *const u8;
    match read_ptr(task, cfg.off_task_mm) {
        Ok(mm) if !mm.is_null() => read_ptr(mm, cfg.off_mm_exe_file).unwrap_or(core::ptr::null()),
        _ => core::ptr::null(),
    }
}

/// What the executed file is, as [`flags`] bits:
/// - `FILELESS`: it has no name on disk: its link count is 0 (a memfd, an
///   unlinked file) or its dentry is unlinked (`d_unlinked`: unhashed and
///   not a root; then also `UNLINKED`);
/// - `DRIFT`: it is on an overlayfs whose inode has an upper dentry: the
///   container's writable layer holds it (created, or copied up because it
///   was modified, after the container started). The image's own files
///   live in the lower layers and have none.
///
/// `NLINK_UNREADABLE` when the file could not be read (counted as an error).
#[inline(always)]
unsafe fn exe_class<K: Kmem>(file: *const u8, cfg: &Config) -> u32 {
    match exe_class_inner::<K>(file, cfg) {
        Ok(c) => c,
        Err(e) => {
            failed(error_cause::EXE_FILE);
            debug!(&(), target: LOG_TARGET, "executed file unreadable ({})", e);
            flags::NLINK_UNREADABLE
        }
    }
}

#[inline(always)]
unsafe fn exe_class_inner<K: Kmem>(file: *const u8, cfg: &Config) -> Result<u32, i64> {
    if file.is_null() {
        return Err(-1);
    }
    let [_, f_inode, i_nlink, i_sb, s_magic, f_dentry, d_pprev, d_parent] = K::offsets(cfg);
    let inode = K::ptr(file, f_inode)?;
    if inode.is_null() {
        return Err(-1);
    }
    let mut c = 0;
    let nlink = K::u32_at(inode, i_nlink)?;
    if nlink == 0 {
        c |= flags::FILELESS;
    }
    // The common case first, in the fewest reads: a container's file on
    // its overlayfs root, lower (the image) or upper.
    let sb = K::ptr(inode, i_sb)?;
    let magic = if sb.is_null() {
        0
    } else {
        K::u64_at(sb, s_magic)?
    };
    if magic == OVERLAYFS_SUPER_MAGIC {
        // Behind the inode, outside its BTF type: a probe read either way.
        let upper = read_ptr(inode, cfg.off_ovl_upperdentry)?;
        if !upper.is_null() {
            c |= flags::DRIFT;
        }
        // An unlinked overlay file has its link count dropped (0 above):
        // no dentry walk needed.
    } else if nlink != 0 {
        // Elsewhere (a volume, tmpfs): a file unlinked while another hard
        // link keeps its count above 0 still has an unlinked dentry.
        let dentry = K::ptr(file, f_dentry)?;
        if !dentry.is_null() {
            let pprev = K::ptr(dentry, d_pprev)?;
            let parent = K::ptr(dentry, d_parent)?;
            if pprev.is_null() && parent != dentry {
                c |= flags::FILELESS | flags::UNLINKED;
            }
        }
    }
    Ok(c)
}

/// Copies the executed file's own name (its dentry's) into the event.
#[inline(always)]
unsafe fn read_file_name(ev: *mut ExecEvent, file: *const u8, cfg: &Config) {
    let Ok(dentry) = read_ptr(file, cfg.off_file_dentry) else {
        return;
    };
    if dentry.is_null() {
        return;
    }
    let Ok(name) = read_ptr(dentry, cfg.off_dentry_d_name) else {
        return;
    };
    if !name.is_null() && bpf_probe_read_kernel_str_bytes(name, &mut (*ev).file_name).is_err() {
        (*ev).file_name[0] = 0;
    }
}

/// Whether the container's policy refuses an exec of this class.
#[inline(always)]
fn drift_refused(cgroup_id: u64, class: u32) -> bool {
    // SAFETY: the value is a plain u32 copied out immediately.
    let Some(p) = (unsafe { DRIFT_POLICY.get(cgroup_id) }) else {
        return false;
    };
    let p = *p;
    (class & flags::FILELESS != 0 && p & drift_policy::DENY_FILELESS != 0)
        || (class & flags::DRIFT != 0 && p & drift_policy::DENY_DRIFT != 0)
}

/// Copies a NUL-terminated kernel string into the event, flagging truncation.
#[inline(always)]
unsafe fn read_filename(ev: *mut ExecEvent, src: *const u8) {
    match bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) {
        Ok(name) => {
            // `name` excludes the NUL. A full buffer is a truncation unless
            // the source string ends exactly there.
            let len = name.len();
            (*ev).filename_len = (len & 0xffff) as u16;
            if len >= FILENAME_LEN - 1 {
                let next: u8 = bpf_probe_read_kernel(src.add(FILENAME_LEN - 1)).unwrap_or(1);
                if next != 0 {
                    (*ev).flags |= flags::TRUNCATED;
                }
            }
        }
        Err(e) => {
            (*ev).flags |= flags::NAME_UNREADABLE;
            failed(error_cause::FILENAME);
            debug!(&(), target: LOG_TARGET, "exec'd file name unreadable ({})", e);
        }
    }
}

/// The verdict at exec: SIGKILL for DENY, SIGSTOP for HOLD (enforce mode).
/// Returns the flags to record.
#[inline(always)]
fn act(v: u32, cfg: &Config) -> u32 {
    if cfg.enforce == 0 {
        return 0;
    }
    if v == verdict::DENY {
        // SAFETY: helper call; signals the current process (thread group).
        let r = unsafe { bpf_send_signal(SIGKILL) };
        if r == 0 {
            count(counter::KILLS);
            return flags::KILLED;
        }
        signal_failed(SIGKILL, r);
    } else if v == verdict::HOLD {
        // SAFETY: as above.
        let r = unsafe { bpf_send_signal(SIGSTOP) };
        if r == 0 {
            count(counter::HOLDS);
            return flags::HELD;
        }
        signal_failed(SIGSTOP, r);
    }
    0
}

/// A denied, held or refused exec that could not be stopped. Logged at
/// debug like the others: a warn statement would be kept at the agent's
/// default level, and its record-building code, although never run on
/// the normal path, made the verifier walk 3.7 times the instructions
/// (19,494 -> 72,410 on tp_btf) and the program a third larger. The
/// counter (`cause="signal"`) is what to alert on.
#[inline(always)]
fn signal_failed(sig: u32, r: i64) {
    failed(error_cause::SIGNAL);
    debug!(
        &(),
        target: LOG_TARGET,
        "bpf_send_signal({}) failed ({}): the exec was not stopped",
        sig,
        r
    );
}

/// Shared body of both exec hooks. `filename` yields the kernel pointer of
/// the exec'd file name.
#[inline(always)]
fn on_exec<K: Kmem>(
    hk: u32,
    exe_file: impl FnOnce(&Config) -> *const u8,
    filename: impl FnOnce(&Config) -> Result<*const u8, i64>,
) -> Result<u32, i64> {
    let cfg = match config() {
        Some(c) => c,
        None => return Ok(0),
    };
    count(counter::EXECS);
    // SAFETY: helper call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (v, in_container) = verdict_of(cgroup_id, cfg);
    let v = unless_agent_gone(v, cgroup_id, cfg);
    let mut acted = act(v, cfg);
    if acted & flags::HELD != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = HELD.insert(tgid, cgroup_id, 0);
    }
    let file = exe_file(cfg);
    // Every exec in a container that still runs is classified (fileless,
    // drift); host execs only when every exec is emitted anyway.
    let mut class = UNCLASSIFIED;
    if in_container && cfg.drift_check != 0 && acted & flags::KILLED == 0 {
        // SAFETY: as above.
        let c = unsafe { exe_class::<K>(file, cfg) } | flags::IN_CONTAINER;
        if c & (flags::FILELESS | flags::DRIFT) != 0 {
            count(counter::DRIFT_EXECS);
            if cfg.enforce != 0 && acted == 0 && drift_refused(cgroup_id, c) {
                // SAFETY: helper call; signals the current thread group.
                let r = unsafe { bpf_send_signal(SIGKILL) };
                if r == 0 {
                    count(counter::KILLS);
                    count(counter::DRIFT_DENIES);
                    acted = flags::KILLED | flags::DRIFT_DENIED;
                } else {
                    signal_failed(SIGKILL, r);
                }
            }
        }
        class = c;
    }
    let notable = class != UNCLASSIFIED && class & (flags::FILELESS | flags::DRIFT) != 0;
    if cfg.emit_all == 0 && acted == 0 && (v == verdict::UNKNOWN || v == verdict::ALLOW) && !notable
    {
        // A routine exec: user space does not want it.
        return Ok(0);
    }

    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(counter::RINGBUF_DROPS);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved ring-buffer slot of the right size.
    unsafe {
        fill_common(ev, cfg, cgroup_id, v, hk, file, class);
        (*ev).flags |= acted;
        match filename(cfg) {
            Ok(p) if !p.is_null() => read_filename(ev, p),
            _ => {
                (*ev).flags |= flags::NAME_UNREADABLE;
                failed(error_cause::FILENAME);
                debug!(&(), target: LOG_TARGET, "exec'd file name pointer unreadable");
            }
        }
    }
    entry.submit(0);
    Ok(0)
}

/// `tp_btf/sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_btf(ctx: BtfTracePointContext) -> i32 {
    match try_exec_btf(&ctx) {
        Ok(r) => r as i32,
        Err(_) => 0,
    }
}

fn try_exec_btf(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let bprm: *const u8 = ctx.arg(2);
    on_exec::<Typed>(
        hook::TP_BTF,
        // bprm->file: one typed load where task->mm->exe_file takes three
        // probe reads.
        // SAFETY: a BTF-typed load at a verifier-known offset.
        |cfg| unsafe { Typed::ptr(bprm, Typed::offsets(cfg)[0]) }.unwrap_or(core::ptr::null()),
        // SAFETY: as above.
        |cfg| unsafe { read_ptr(bprm, cfg.off_bprm_filename) },
    )
}

/// Classic `sched/sched_process_exec` tracepoint: `__data_loc char[] filename`.
#[tracepoint]
pub fn exec_tp(ctx: TracePointContext) -> u32 {
    try_exec_tp(&ctx).unwrap_or_default()
}

fn try_exec_tp(ctx: &TracePointContext) -> Result<u32, i64> {
    on_exec::<Probed>(
        hook::TRACEPOINT,
        // SAFETY: kernel memory read through probe helpers only.
        |cfg| unsafe { current_exe_file(cfg) },
        |cfg| {
            // SAFETY: in-bounds read of the tracepoint record (offset from its format file).
            let loc: u32 =
                unsafe { ctx.read_at(cfg.off_tp_filename_loc as usize) }.map_err(|e| e as i64)?;
            let off = (loc & 0xffff) as usize;
            Ok(unsafe { (ctx.as_ptr() as *const u8).add(off) })
        },
    )
}

/// `lsm/bprm_check_security(struct linux_binprm *bprm, int ret)`: refuses a
/// denied cgroup's exec before the point of no return.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check(ctx: LsmContext) -> i32 {
    try_bprm_check(&ctx).unwrap_or(0)
}

fn try_bprm_check(ctx: &LsmContext) -> Result<i32, i64> {
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return Ok(prev);
    }
    let cfg = match config() {
        Some(c) => c,
        None => return Ok(0),
    };
    if cfg.enforce == 0 {
        return Ok(0);
    }
    // SAFETY: helper call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (v, in_container) = verdict_of(cgroup_id, cfg);
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: a BTF-typed load at a verifier-known offset.
    let file = unsafe { Typed::ptr(bprm, Typed::offsets(cfg)[0]) }.unwrap_or(core::ptr::null());
    let mut class = UNCLASSIFIED;
    let mut denied = flags::LSM_DENIED;
    if v != verdict::DENY {
        // A container whose policy refuses fileless or drift execs: the
        // file being exec'd (for a script: the script itself, before its
        // interpreter) is known here, before the point of no return.
        // SAFETY: the value is a plain u32 copied out immediately.
        if !in_container || cfg.drift_check == 0 || unsafe { DRIFT_POLICY.get(cgroup_id) }.is_none()
        {
            return Ok(0);
        }
        // SAFETY: as above.
        let c = unsafe { exe_class::<Typed>(file, cfg) } | flags::IN_CONTAINER;
        if !drift_refused(cgroup_id, c) {
            return Ok(0);
        }
        count(counter::DRIFT_EXECS);
        count(counter::DRIFT_DENIES);
        class = c;
        denied |= flags::DRIFT_DENIED;
    }
    count(counter::LSM_DENIES);
    if let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) {
        let ev = entry.as_mut_ptr();
        // SAFETY: reserved slot; kernel reads through probe helpers.
        unsafe {
            fill_common(ev, cfg, cgroup_id, v, hook::LSM, file, class);
            (*ev).flags |= denied;
            match read_ptr(bprm, cfg.off_bprm_filename) {
                Ok(p) if !p.is_null() => read_filename(ev, p),
                _ => (*ev).flags |= flags::NAME_UNREADABLE,
            }
        }
        entry.submit(0);
    } else {
        count(counter::RINGBUF_DROPS);
    }
    Ok(-EPERM)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
