//! Loading, configuring and attaching the eBPF programs; the verdict map and
//! the kernel counters. Detection of what this kernel allows happens here,
//! once, at start: tp_btf or the classic tracepoint for exec events, BPF LSM
//! or `bpf_send_signal(SIGKILL)` for enforcement.
pub mod attach;
pub mod btf;
pub mod counters;
pub mod ebpf_log;
pub mod event;
pub mod kernel_maps;
pub mod kernelfs;
pub mod layout;
pub mod reader;

pub use counters::{CounterReader, ErrorCause, ErrorCounts, KernelCounters};

use std::{os::unix::fs::MetadataExt, path::Path};

use agent_common::{verdict, CgroupKey, Config, CONFIG_MAGIC};
use attach::{chain, AttachError, ProgramSpec};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::links::{FdLink, PinnedLink},
    Ebpf, EbpfLoader,
};
use event::KernelVerdict;
use tracing::{info, warn};

/// The eBPF object built by `build.rs` (see `xtask/src/ebpf_build.rs`).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imagewarden.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "must run as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): effective uid is not 0"
    )]
    NotRoot,
    #[error("must run as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): {0}")]
    Permission(#[source] aya::EbpfError),
    #[error("kernel filesystems: {0}")]
    KernelFs(#[from] kernelfs::KernelFsError),
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("tracepoint format: {0}")]
    TracepointFormat(String),
    #[error("tracepoint format {path}: {source}")]
    TracepointFormatRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// Every exec-event source of `attach::PROGRAMS` was refused (or not
    /// tried): each with its reason; the last one's is the source.
    #[error("no exec hook could be attached: {tried}")]
    NoExecHook {
        tried: String,
        #[source]
        last: AttachError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object")]
    MapMissing(&'static str),
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "invalid ring buffer size {0}: must be a power of two and a multiple of the page size"
    )]
    RingBufSize(u32),
    #[error("pinning in bpffs: {path}: {source}")]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning link {path}: {source}")]
    PinLink {
        path: std::path::PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("another imagewarden agent (or cleanup) holds the lock on {0}; one agent per node")]
    Locked(std::path::PathBuf),
    #[error("layout of the eBPF object: {}", attach::chain(.0))]
    Layout(#[source] &'static layout::LayoutError),
}

impl ProbeError {
    fn map(name: &'static str, source: aya::maps::MapError) -> Self {
        ProbeError::Map { name, source }
    }
    fn pin(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| ProbeError::Pin {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Which exec hook to use (`--exec-hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// tp_btf, falling back to the classic tracepoint.
    Auto,
    /// tp_btf/sched_process_exec only (the agent fails where it cannot attach).
    TpBtf,
    /// The classic sched/sched_process_exec tracepoint only.
    Tracepoint,
}

pub use event::Hook;

/// How a denied exec is stopped in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// `lsm/bprm_check_security` returns -EPERM: the exec fails.
    Lsm,
    /// `bpf_send_signal(SIGKILL)` from the exec hook: the new program is
    /// killed before it runs one instruction.
    Signal,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lsm => "lsm",
            Self::Signal => "signal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub ringbuf_bytes: u32,
    pub hook: HookChoice,
    pub enforce: bool,
    /// Try to attach the BPF LSM program (falls back to signals when refused).
    pub try_lsm: bool,
    /// Hold (SIGSTOP, in enforce mode) the execs of a cgroup whose name holds
    /// a container id that user space has not classified yet.
    pub hold_unknown_containers: bool,
    /// Fail closed: pin the exec link and the verdict maps here (on bpffs),
    /// so that the kernel keeps enforcing when the agent dies, and a
    /// restarted agent takes over the same state. `None`: fail open.
    pub pin_dir: Option<std::path::PathBuf>,
    /// Emit every exec into the ring buffer; otherwise only those user space
    /// acts on (deny, audit, hold, kill, fileless).
    pub emit_all: bool,
    /// Dead-man's switch: how old the agent's heartbeat may get before the
    /// kernel stops holding unknown containers (zero: never).
    pub heartbeat_timeout: std::time::Duration,
    /// Classify container execs as fileless or drift (issue 17).
    pub drift_check: bool,
}

/// Maps that survive an agent restart in fail-closed mode.
pub const PINNED_MAPS: &[&str] = &[
    "VERDICTS",
    "NAME_VERDICTS",
    "CGROUP_NAMES",
    "HOLD_PARENTS",
    "CONFIG",
    "HEARTBEAT",
    "UNENFORCED",
    "UNENFORCED_CGROUPS",
    "HELD",
    "DRIFT_POLICY",
];

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/imagewarden";

/// The pin directory under a root, named after the layout hash (see
/// [`layout`]): an agent whose maps or programs differ uses another
/// directory and never reuses pins of another shape.
pub fn pin_dir_under(root: &Path) -> std::path::PathBuf {
    match layout::embedded() {
        Ok(l) => root.join(format!("{LAYOUT_PREFIX}{:016x}", l.hash)),
        Err(_) => root.join(format!("{LAYOUT_PREFIX}unparsed")),
    }
}

/// Every layout directory (this agent's and other versions') starts so.
const LAYOUT_PREFIX: &str = "v2-";

/// Pin directories under `root` of other layouts (other agent versions,
/// including the first, `v1-c..-k..`) than `ours`.
pub fn other_layout_dirs(root: &Path, ours: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.as_path() != ours)
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('v'))
        })
        .collect()
}

pub fn default_pin_dir() -> std::path::PathBuf {
    pin_dir_under(Path::new(DEFAULT_PIN_ROOT))
}

/// The one-agent lock: an exclusive `flock` on the pin root directory
/// itself, in bpffs, so that it lives on the host (not in a pod's
/// emptyDir) and is shared by every agent pod and `imagewarden cleanup` on
/// the node. Two agents sharing pinned maps would overwrite each other's
/// state and unpin each other's programs.
pub struct PinLock(#[allow(dead_code)] std::fs::File);

impl PinLock {
    /// Takes the lock of `root` (created when missing); fails at once when
    /// another process holds it.
    pub fn acquire(root: &Path) -> Result<Self, ProbeError> {
        Self::take(root, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// Takes the lock, waiting for the holder to let go.
    pub fn acquire_wait(root: &Path) -> Result<Self, ProbeError> {
        Self::take(root, libc::LOCK_EX)
    }

    fn take(root: &Path, how: i32) -> Result<Self, ProbeError> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(root).map_err(ProbeError::pin(root))?;
        let f = std::fs::File::open(root).map_err(ProbeError::pin(root))?;
        // SAFETY: valid fd owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
            return Err(ProbeError::Locked(root.to_path_buf()));
        }
        Ok(PinLock(f))
    }
}

/// An attached link: owned (detached on drop) or pinned (stays attached).
enum Attached {
    Owned(#[allow(dead_code)] FdLink),
    Pinned(PinnedLink),
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            ringbuf_bytes: 1 << 22,
            hook: HookChoice::Auto,
            enforce: false,
            try_lsm: true,
            hold_unknown_containers: true,
            pin_dir: None,
            emit_all: true,
            heartbeat_timeout: std::time::Duration::from_secs(5),
            drift_check: true,
        }
    }
}

/// The maps user space reads and writes (taken out of the object).
struct Maps {
    verdicts: HashMap<MapData, u64, u32>,
    name_verdicts: HashMap<MapData, CgroupKey, u32>,
    cgroup_names: HashMap<MapData, u64, CgroupKey>,
    /// cgroup id -> `agent_common::hold_parent` mark.
    hold_parents: HashMap<MapData, u64, u32>,
    config_map: Array<MapData, Config>,
    /// Generation of the kernel's by-name decision cache (see `bump_gen`).
    name_gen_map: Array<MapData, u32>,
    heartbeat: Array<MapData, u64>,
    unenforced: PerCpuArray<MapData, u64>,
    unenforced_cgroups: HashMap<MapData, u64, u64>,
    /// Processes the kernel holds (stopped at exec): tgid -> cgroup id.
    held: HashMap<MapData, u32, u64>,
    /// cgroup id -> `agent_common::drift_policy` bits.
    drift_policy: HashMap<MapData, u64, u32>,
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    // Field order matters: maps taken out of `ebpf` are dropped first.
    maps: Maps,
    counters: CounterReader,
    config: Config,
    name_gen: u32,
    events: Option<RingBuf<MapData>>,
    pub exec_hook: Hook,
    pub enforcement: Enforcement,
    /// Why the preferred mechanisms were not used (for logs and /metrics).
    pub fallbacks: Vec<String>,
    /// A previous agent's pinned state was found and taken over.
    pub took_over: bool,
    pin_dir: Option<std::path::PathBuf>,
    links: Vec<Attached>,
    _log: Option<ebpf_log::LogPump>,
    _lock: Option<PinLock>,
    _ebpf: Ebpf,
}

/// What the pin directory held at start (fail-closed mode).
#[derive(Default)]
struct PinState {
    lock: Option<PinLock>,
    /// A previous agent's links were found (same or another layout).
    took_over: bool,
    /// Other layouts' directories: removed once our programs run.
    stale_layouts: Vec<std::path::PathBuf>,
}

/// The attached programs: the chosen exec hook and enforcement, and why
/// the preferred ones were not used.
struct Attachment {
    exec_hook: Hook,
    enforcement: Enforcement,
    fallbacks: Vec<String>,
    /// (pin name, link), enforcer first.
    links: Vec<(&'static str, FdLink)>,
}

fn check_ringbuf_size(n: u32) -> Result<(), ProbeError> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    if n == 0 || !n.is_power_of_two() || !n.is_multiple_of(page) {
        return Err(ProbeError::RingBufSize(n));
    }
    Ok(())
}

/// Offsets of the kernel struct members the programs read.
fn kernel_offsets(cfg: &mut Config) -> Result<(), ProbeError> {
    let b = btf::Btf::from_sys_fs()?;
    cfg.off_task_real_parent = b.member_offset("task_struct", "real_parent")?;
    cfg.off_task_tgid = b.member_offset("task_struct", "tgid")?;
    cfg.off_task_mm = b.member_offset("task_struct", "mm")?;
    cfg.off_mm_exe_file = b.member_offset("mm_struct", "exe_file")?;
    cfg.off_file_f_inode = b.member_offset("file", "f_inode")?;
    cfg.off_inode_i_nlink = b.member_offset("inode", "i_nlink")?;
    cfg.off_bprm_filename = b.member_offset("linux_binprm", "filename")?;
    cfg.off_task_cgroups = b.member_offset("task_struct", "cgroups")?;
    cfg.off_css_set_dfl_cgrp = b.member_offset("css_set", "dfl_cgrp")?;
    cfg.off_cgroup_kn = b.member_offset("cgroup", "kn")?;
    cfg.off_kernfs_node_name = b.member_offset("kernfs_node", "name")?;
    // Renamed `__parent` when it became RCU-protected (Linux 6.15).
    cfg.off_kernfs_node_parent = b
        .member_offset("kernfs_node", "__parent")
        .or_else(|_| b.member_offset("kernfs_node", "parent"))?;
    cfg.off_bprm_file = b.member_offset("linux_binprm", "file")?;
    cfg.off_file_dentry = b.path_offset(&[("file", "f_path"), ("path", "dentry")])?;
    cfg.off_inode_i_sb = b.member_offset("inode", "i_sb")?;
    cfg.off_sb_s_magic = b.member_offset("super_block", "s_magic")?;
    // overlayfs' `struct ovl_inode` is in its module's BTF, not vmlinux';
    // its `__upperdentry` has followed the embedded `vfs_inode` (its last
    // `struct inode`) since overlayfs began, as Falco's probe also relies on.
    cfg.off_ovl_upperdentry = b.struct_size("inode")?;
    cfg.off_dentry_d_hash_pprev =
        b.path_offset(&[("dentry", "d_hash"), ("hlist_bl_node", "pprev")])?;
    cfg.off_dentry_d_parent = b.member_offset("dentry", "d_parent")?;
    cfg.off_dentry_d_name = b.path_offset(&[("dentry", "d_name"), ("qstr", "name")])?;
    Ok(())
}

/// Offset of `__data_loc char[] filename` in the classic tracepoint record.
pub fn tracepoint_filename_offset(format: &str) -> Result<u32, ProbeError> {
    for line in format.lines() {
        let line = line.trim();
        if line.starts_with("field:__data_loc char[] filename;") {
            let off = line
                .split(';')
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or_else(|| ProbeError::TracepointFormat(format!("no offset in {line:?}")))?;
            return Ok(off);
        }
    }
    Err(ProbeError::TracepointFormat(
        "no `__data_loc char[] filename` field".into(),
    ))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MapMissing(name))?;
    T::try_from(map).map_err(|e| ProbeError::map(name, e))
}

impl Probes {
    /// Loads, configures and attaches. The config (offsets, mode) is written
    /// before any program is attached, so no event is ever produced with a
    /// half-written configuration.
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        check_ringbuf_size(opts.ringbuf_bytes)?;
        let tracefs = kernelfs::ensure_kernel_filesystems()?;
        raise_memlock_rlimit();
        let cfg = config_for(opts, &tracefs)?;
        let globals = globals_for(&cfg);
        let mut loader = new_loader(opts, &globals);
        let pins = match &opts.pin_dir {
            Some(dir) => prepare_pins(dir, &mut loader)?,
            None => PinState::default(),
        };
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            if is_eperm(&e) {
                ProbeError::Permission(e)
            } else {
                ProbeError::Load(e)
            }
        })?;
        // The loader holds its own parse of the kernel BTF: free it before
        // the next one (start-up's memory peak; see crate::memory).
        drop(loader);
        let log = ebpf_log::start(&mut ebpf);
        let (maps, counters, events) = take_maps(&mut ebpf, &cfg)?;
        let att = attach_programs(&mut ebpf, opts)?;
        let links = hand_over(att.links, opts.pin_dir.as_deref())?;
        // Our programs run: a previous agent version's pinned programs
        // (another layout) go now, so that exactly one set is attached.
        for d in &pins.stale_layouts {
            warn!(dir = %d.display(), "removing the pinned state of another layout (previous agent version)");
            remove_pins(d);
        }
        if opts.pin_dir.is_none() {
            remove_fail_closed_leftovers();
        }
        info!(
            exec_hook = att.exec_hook.as_str(),
            enforcement = att.enforcement.as_str(),
            "eBPF programs attached"
        );
        Ok(Probes {
            maps,
            counters,
            config: cfg,
            name_gen: 0,
            events: Some(events),
            exec_hook: att.exec_hook,
            enforcement: att.enforcement,
            fallbacks: att.fallbacks,
            took_over: pins.took_over,
            pin_dir: opts.pin_dir.clone(),
            links,
            _log: log,
            _lock: pins.lock,
            _ebpf: ebpf,
        })
    }

    /// Clean shutdown: unpin links and maps, so that dropping the probes
    /// detaches everything and leaves nothing behind in bpffs.
    pub fn unpin_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        for l in links {
            if let Attached::Pinned(p) = l {
                match p.unpin() {
                    Ok(fd) => self.links.push(Attached::Owned(fd)),
                    Err(e) => warn!("unpinning a link: {e}"),
                }
            } else {
                self.links.push(l);
            }
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir);
            if let Some(root) = dir.parent() {
                let _ = std::fs::remove_dir(root); // only if empty
            }
        }
    }

    /// Dead-man's switch: tells the kernel the agent is alive (call at least
    /// every second; see `ProbeOptions::heartbeat_timeout`).
    pub fn heartbeat(&mut self) -> Result<(), ProbeError> {
        self.maps
            .heartbeat
            .set(0, boot_ns(), 0)
            .map_err(|e| ProbeError::map("HEARTBEAT", e))
    }

    /// What ran unenforced while no agent was alive (the heartbeat was
    /// stale): the number of execs let through unheld, and the cgroups
    /// (with the boot ns of their first such exec). Both are reset.
    pub fn take_unenforced(&mut self) -> (u64, Vec<(u64, u64)>) {
        let n = self
            .maps
            .unenforced
            .get(&0, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
            .unwrap_or(0);
        if n > 0 {
            if let Ok(cpus) = aya::util::nr_cpus() {
                let zero = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]);
                if let Ok(z) = zero {
                    let _ = self.maps.unenforced.set(0, z, 0);
                }
            }
        }
        let cgroups: Vec<(u64, u64)> = self
            .maps
            .unenforced_cgroups
            .iter()
            .filter_map(Result::ok)
            .collect();
        for (id, _) in &cgroups {
            let _ = self.maps.unenforced_cgroups.remove(id);
        }
        (n, cgroups)
    }

    /// The processes the kernel holds, as (tgid, cgroup id), whether or not
    /// their events reached user space.
    pub fn held_processes(&self) -> Vec<(u32, u64)> {
        self.maps.held.iter().filter_map(Result::ok).collect()
    }

    /// A held process was released, killed or is gone.
    pub fn forget_held(&mut self, tgid: u32) {
        let _ = self.maps.held.remove(&tgid);
    }

    /// Cgroup ids that have a verdict in the kernel.
    pub fn verdict_cgroups(&self) -> Vec<u64> {
        self.maps.verdicts.keys().filter_map(Result::ok).collect()
    }

    /// Name keys that have a verdict in the kernel.
    pub fn verdict_names(&self) -> Vec<CgroupKey> {
        self.maps
            .name_verdicts
            .keys()
            .filter_map(Result::ok)
            .collect()
    }

    /// The ring buffer of exec events (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Switches between audit (false) and enforce (true) without reloading.
    pub fn set_enforce(&mut self, enforce: bool) -> Result<(), ProbeError> {
        self.config.enforce = enforce as u32;
        self.maps
            .config_map
            .set(0, self.config, 0)
            .map_err(|e| ProbeError::map("CONFIG", e))?;
        self.bump_gen()
    }

    /// Invalidates the kernel's cache of cgroups decided by name (the
    /// DECIDED map): called after every change that could change such a
    /// decision. The kernel reads the generation before it looks the names
    /// up, so a decision made before a change is never used after it.
    fn bump_gen(&mut self) -> Result<(), ProbeError> {
        let next = self.name_gen.wrapping_add(1);
        self.maps
            .name_gen_map
            .set(0, next, 0)
            .map_err(|e| ProbeError::map("NAME_GEN", e))?;
        self.name_gen = next;
        Ok(())
    }

    pub fn enforcing(&self) -> bool {
        self.config.enforce != 0
    }

    pub fn set_verdict(&mut self, cgroup_id: u64, v: KernelVerdict) -> Result<(), ProbeError> {
        self.maps
            .verdicts
            .insert(cgroup_id, v.raw(), 0)
            .map_err(|e| ProbeError::map("VERDICTS", e))
    }

    pub fn clear_verdict(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        removed(self.maps.verdicts.remove(&cgroup_id))
            .map_err(|e| ProbeError::map("VERDICTS", e))?;
        self.set_drift_policy(cgroup_id, 0)
    }

    /// Which fileless/drift execs the kernel refuses in a container's
    /// cgroup (`agent_common::drift_policy` bits; 0 removes the entry).
    pub fn set_drift_policy(&mut self, cgroup_id: u64, bits: u32) -> Result<(), ProbeError> {
        let r = if bits == 0 {
            removed(self.maps.drift_policy.remove(&cgroup_id)).map(|_| ())
        } else if self.maps.drift_policy.get(&cgroup_id, 0).ok() == Some(bits) {
            Ok(())
        } else {
            self.maps.drift_policy.insert(cgroup_id, bits, 0)
        };
        r.map_err(|e| ProbeError::map("DRIFT_POLICY", e))
    }

    /// The cgroups with a drift policy entry.
    pub fn drift_policy_cgroups(&self) -> Vec<u64> {
        self.maps
            .drift_policy
            .keys()
            .filter_map(Result::ok)
            .collect()
    }

    /// Verdict for a cgroup that does not exist yet, by the names of its
    /// directory and its parent (see [`CgroupKey`]).
    pub fn set_name_verdict(
        &mut self,
        key: &CgroupKey,
        v: KernelVerdict,
    ) -> Result<(), ProbeError> {
        let v = v.raw();
        if self.maps.name_verdicts.get(key, 0).ok() == Some(v) {
            return Ok(()); // a refresh: nothing to invalidate
        }
        self.maps
            .name_verdicts
            .insert(key, v, 0)
            .map_err(|e| ProbeError::map("NAME_VERDICTS", e))?;
        self.bump_gen()
    }

    pub fn clear_name_verdict(&mut self, key: &CgroupKey) -> Result<(), ProbeError> {
        match removed(self.maps.name_verdicts.remove(key)) {
            Ok(true) => self.bump_gen(),
            Ok(false) => Ok(()),
            Err(e) => Err(ProbeError::map("NAME_VERDICTS", e)),
        }
    }

    /// Marks one cgroup, by id (its full path, never its name; issue 13,
    /// case 9), with an `agent_common::hold_parent` mark:
    /// `NAMESPACE` (every unclassified child is held: containerd
    /// namespaces, whose container ids need not look like ids) or
    /// `CONTAINER` (a cgroup below it that no verdict names is judged as
    /// this container: nested runtimes).
    pub fn add_hold_parent(&mut self, cgroup_id: u64, mark: u32) -> Result<(), ProbeError> {
        if self.maps.hold_parents.get(&cgroup_id, 0).ok() == Some(mark) {
            return Ok(());
        }
        self.maps
            .hold_parents
            .insert(cgroup_id, mark, 0)
            .map_err(|e| ProbeError::map("HOLD_PARENTS", e))?;
        self.bump_gen()
    }

    /// Removes a cgroup's hold-parent mark (gone, or no longer a container).
    pub fn remove_hold_parent(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        match removed(self.maps.hold_parents.remove(&cgroup_id)) {
            Ok(true) => self.bump_gen(),
            Ok(false) => Ok(()),
            Err(e) => Err(ProbeError::map("HOLD_PARENTS", e)),
        }
    }

    /// Every marked cgroup id with its mark.
    pub fn hold_parents(&self) -> Vec<(u64, u32)> {
        self.maps
            .hold_parents
            .iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// The names the kernel saw for a cgroup it decided by name or held.
    pub fn cgroup_names(&self, cgroup_id: u64) -> Option<CgroupKey> {
        self.maps.cgroup_names.get(&cgroup_id, 0).ok()
    }

    pub fn verdict(&self, cgroup_id: u64) -> Option<u32> {
        self.maps.verdicts.get(&cgroup_id, 0).ok()
    }

    /// Sets the verdict of a cgroup v2 directory (its id is its inode).
    pub fn set_cgroup_path_verdict(
        &mut self,
        path: &Path,
        v: KernelVerdict,
    ) -> Result<u64, ProbeError> {
        let id = cgroup_id_of(path)?;
        self.set_verdict(id, v)?;
        Ok(id)
    }

    /// Per-CPU counters summed now (scrape time).
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        self.counters.read()
    }

    /// A handle that reads the kernel counters from another thread (the
    /// metrics scrape) without touching the rest of the probes.
    pub fn counter_reader(&self) -> CounterReader {
        self.counters.clone()
    }
}

/// The active LSMs, comma-separated (securityfs; mounted at start).
pub const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";

/// Whether `bpf` is among the active LSMs of a `/sys/kernel/security/lsm` text.
pub fn bpf_lsm_listed(lsms: &str) -> bool {
    lsms.trim().split(',').any(|l| l == "bpf")
}

/// The cgroup v2 id of a directory in the unified hierarchy: its inode.
pub fn cgroup_id_of(path: &Path) -> Result<u64, ProbeError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| ProbeError::Cgroup {
            path: path.display().to_string(),
            source,
        })
}

/// Whether an error, or any error behind it, is EPERM (the errno of a map
/// or program creation sits in the source chain, not in the message).
fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    attach::sources(e).any(|err| {
        err.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
            || err.to_string().contains("Operation not permitted")
    })
}

/// Removes a pin directory: links (detaching them once no one holds them)
/// and maps.
pub fn remove_pins(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Uninstall: takes the one-agent lock of `root` (waiting up to `wait` for
/// a running agent to let go), removes every layout's pins (detaching the
/// programs) and the root. Returns the directories removed.
pub fn cleanup_root(
    root: &Path,
    wait: std::time::Duration,
) -> Result<Vec<std::path::PathBuf>, ProbeError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let deadline = std::time::Instant::now() + wait;
    let _lock = loop {
        match PinLock::acquire(root) {
            Ok(l) => break l,
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    let dirs = other_layout_dirs(root, Path::new(""));
    for d in &dirs {
        remove_pins(d);
    }
    let _ = std::fs::remove_dir(root);
    Ok(dirs)
}
/// The run-time configuration: mode from the options, struct offsets from
/// the kernel's BTF, the tracepoint record's layout from tracefs.
fn config_for(opts: &ProbeOptions, tracefs: &Path) -> Result<Config, ProbeError> {
    let mut cfg = Config {
        magic: CONFIG_MAGIC,
        default_verdict: verdict::UNKNOWN,
        enforce: opts.enforce as u32,
        emit_all: opts.emit_all as u32,
        drift_check: opts.drift_check as u32,
        unknown_container_verdict: if opts.hold_unknown_containers {
            verdict::HOLD
        } else {
            verdict::UNKNOWN
        },
        heartbeat_stale_ns: u64::try_from(opts.heartbeat_timeout.as_nanos()).unwrap_or(u64::MAX),
        ..Default::default()
    };
    kernel_offsets(&mut cfg)?;
    let path = tracefs.join("events/sched/sched_process_exec/format");
    let fmt = std::fs::read_to_string(&path)
        .map_err(|source| ProbeError::TracepointFormatRead { path, source })?;
    cfg.off_tp_filename_loc = tracepoint_filename_offset(&fmt)?;
    Ok(cfg)
}

/// The `.rodata` constants written before load.
struct Globals {
    /// The BTF-typed programs (tp_btf, LSM) read these struct offsets from
    /// `.rodata`, as constants the verifier knows: each field is a plain
    /// load instead of a probe-read helper call (issue 16: the exec-drift
    /// check's cost per container exec).
    typed_offsets: [(&'static str, u64); 8],
    /// aya-log's `AYA_LOG_LEVEL` (see `ebpf_log`).
    log_level: u8,
}

fn globals_for(cfg: &Config) -> Globals {
    let typed_offsets = [
        ("IW_OFF_BPRM_FILE", cfg.off_bprm_file.into()),
        ("IW_OFF_FILE_F_INODE", cfg.off_file_f_inode.into()),
        ("IW_OFF_INODE_I_NLINK", cfg.off_inode_i_nlink.into()),
        ("IW_OFF_INODE_I_SB", cfg.off_inode_i_sb.into()),
        ("IW_OFF_SB_S_MAGIC", cfg.off_sb_s_magic.into()),
        ("IW_OFF_FILE_DENTRY", cfg.off_file_dentry.into()),
        (
            "IW_OFF_DENTRY_D_HASH_PPREV",
            cfg.off_dentry_d_hash_pprev.into(),
        ),
        ("IW_OFF_DENTRY_D_PARENT", cfg.off_dentry_d_parent.into()),
    ];
    Globals {
        typed_offsets,
        log_level: ebpf_log::level(),
    }
}

/// The loader with what is fixed before load: the ring buffer's size and
/// the `.rodata` constants.
fn new_loader<'a>(opts: &ProbeOptions, globals: &'a Globals) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries("EVENTS", opts.ringbuf_bytes);
    for (name, value) in &globals.typed_offsets {
        loader.override_global(name, value, true);
    }
    loader.override_global(aya_log::LEVEL, &globals.log_level, true);
    loader
}

/// Fail-closed start: takes the one-agent lock, checks the pinned maps
/// against this agent's layout (rebuilding mismatches), finds other
/// layouts' state, and points the loader at the pins.
fn prepare_pins(dir: &Path, loader: &mut EbpfLoader<'_>) -> Result<PinState, ProbeError> {
    let lock = PinLock::acquire(dir.parent().unwrap_or(dir))?;
    std::fs::create_dir_all(dir).map_err(ProbeError::pin(dir))?;
    let mut took_over = dir.join("exec_link").exists();
    // Reuse only maps of this agent's exact definition.
    let layout = layout::embedded().map_err(ProbeError::Layout)?;
    let bad = layout::mismatches(dir, layout);
    if !bad.is_empty() {
        for (m, why) in &bad {
            warn!(map = %m, "pinned map of another definition: {why}");
        }
        warn!(dir = %dir.display(), "rebuilding the pinned maps (their state is not reused)");
        for m in PINNED_MAPS {
            let _ = std::fs::remove_file(dir.join(m));
        }
    }
    // A previous agent version's state: its links are replaced by ours
    // once attached, then its pins are removed.
    let mut stale_layouts = Vec::new();
    if let Some(root) = dir.parent() {
        stale_layouts = other_layout_dirs(root, dir);
        for d in &stale_layouts {
            took_over |= d.join("exec_link").exists();
            info!(dir = %d.display(), "found the pinned state of another agent version (another layout): it is rebuilt, not reused");
        }
    }
    for m in PINNED_MAPS {
        loader.map_pin_path(m, dir.join(m));
    }
    Ok(PinState {
        lock: Some(lock),
        took_over,
        stale_layouts,
    })
}

/// Takes the maps out of the object and writes the heartbeat, then the
/// configuration (which arms the programs), in that order.
fn take_maps(
    ebpf: &mut Ebpf,
    cfg: &Config,
) -> Result<(Maps, CounterReader, RingBuf<MapData>), ProbeError> {
    // The heartbeat first: the configuration below arms the switch.
    let mut heartbeat: Array<MapData, u64> = take(ebpf, "HEARTBEAT")?;
    heartbeat
        .set(0, boot_ns(), 0)
        .map_err(|e| ProbeError::map("HEARTBEAT", e))?;
    let mut config_map: Array<MapData, Config> = take(ebpf, "CONFIG")?;
    config_map
        .set(0, *cfg, 0)
        .map_err(|e| ProbeError::map("CONFIG", e))?;
    let maps = Maps {
        verdicts: take(ebpf, "VERDICTS")?,
        name_verdicts: take(ebpf, "NAME_VERDICTS")?,
        cgroup_names: take(ebpf, "CGROUP_NAMES")?,
        hold_parents: take(ebpf, "HOLD_PARENTS")?,
        config_map,
        name_gen_map: take(ebpf, "NAME_GEN")?,
        heartbeat,
        unenforced: take(ebpf, "UNENFORCED")?,
        unenforced_cgroups: take(ebpf, "UNENFORCED_CGROUPS")?,
        held: take(ebpf, "HELD")?,
        drift_policy: take(ebpf, "DRIFT_POLICY")?,
    };
    let counters = CounterReader::new(take(ebpf, "COUNTERS")?);
    Ok((maps, counters, take(ebpf, "EVENTS")?))
}

/// Attaches the enforcer where BPF LSM is active (before events flow), then
/// the first exec-event source of `attach::PROGRAMS` that `--exec-hook`
/// allows and the kernel accepts.
fn attach_programs(ebpf: &mut Ebpf, opts: &ProbeOptions) -> Result<Attachment, ProbeError> {
    let kbtf = aya::Btf::from_sys_fs().ok();
    let mut fallbacks = Vec::new();
    let mut links = Vec::new();
    let mut enforcement = Enforcement::Signal;
    if lsm_active(opts.try_lsm, &mut fallbacks) {
        for (spec, e) in attach::enforcers() {
            match attach::attach(ebpf, spec, kbtf.as_ref()) {
                Ok(l) => {
                    enforcement = e;
                    links.push((spec.link, l));
                    break;
                }
                Err(e) => {
                    let msg = format!(
                        "BPF LSM refused ({}); enforcing with bpf_send_signal(SIGKILL)",
                        chain(&e)
                    );
                    info!("{msg}");
                    fallbacks.push(msg);
                }
            }
        }
    }
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<(&ProgramSpec, AttachError)> = None;
    for (spec, h) in attach::exec_sources() {
        if !opts.hook.allows(h) {
            tried.push(format!(
                "{}: not tried (--exec-hook {})",
                h.as_str(),
                opts.hook.flag()
            ));
            continue;
        }
        if let Some((prev, e)) = &last {
            // The one before was refused: say so, and go on down the table.
            let (prev, e, next) = (prev.describe(), chain(e), spec.describe());
            let msg = format!("{prev} refused ({e}); using {next}");
            warn!("{msg}");
            fallbacks.push(msg);
        }
        match attach::attach(ebpf, spec, kbtf.as_ref()) {
            Ok(l) => {
                links.push((spec.link, l));
                return Ok(Attachment {
                    exec_hook: h,
                    enforcement,
                    fallbacks,
                    links,
                });
            }
            Err(e) => {
                tried.push(format!("{}: {}", h.as_str(), chain(&e)));
                last = Some((spec, e));
            }
        }
    }
    Err(ProbeError::NoExecHook {
        tried: tried.join("; "),
        last: last.map_or(AttachError::NotTried(opts.hook.flag()), |(_, e)| e),
    })
}

/// Whether to try the BPF LSM program: wanted (`try_lsm`) and `bpf` an
/// active LSM. Read from securityfs (and logged either way), not inferred
/// from an attach: a kernel built with BPF LSM but booted without `bpf` in
/// `lsm=` would accept the program and never call it. Unknown (no
/// securityfs) counts as active: the attach decides.
fn lsm_active(try_lsm: bool, fallbacks: &mut Vec<String>) -> bool {
    let active = std::fs::read_to_string(ACTIVE_LSMS)
        .ok()
        .map(|s| s.trim().to_string());
    info!(
        active_lsms = active.as_deref().unwrap_or("unknown"),
        "active LSMs ({ACTIVE_LSMS})"
    );
    match active {
        _ if !try_lsm => false,
        Some(l) if !bpf_lsm_listed(&l) => {
            let msg = format!(
                "BPF LSM not active ({ACTIVE_LSMS}: {l}); enforcing with bpf_send_signal(SIGKILL)"
            );
            info!("{msg}");
            fallbacks.push(msg);
            false
        }
        _ => true,
    }
}

/// Our programs are attached; now (and only now) a previous agent's links
/// are let go, so that there is no moment without enforcement and, once
/// done, exactly one set of programs. Fail-closed: ours are pinned.
fn hand_over(
    links: Vec<(&'static str, FdLink)>,
    pin_dir: Option<&Path>,
) -> Result<Vec<Attached>, ProbeError> {
    let Some(dir) = pin_dir else {
        return Ok(links.into_iter().map(|(_, l)| Attached::Owned(l)).collect());
    };
    let mut attached = Vec::new();
    for (name, link) in links {
        let path = dir.join(name);
        if let Ok(old) = PinnedLink::from_pin(&path) {
            match old.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => warn!("removing the previous agent's {name}: {e}"),
            }
            info!(link = name, "took over from a previous agent's pinned link");
        }
        let pinned = link
            .pin(&path)
            .map_err(|source| ProbeError::PinLink { path, source })?;
        attached.push(Attached::Pinned(pinned));
    }
    Ok(attached)
}

/// Fail open now: a previous fail-closed agent's pins would keep a second
/// set of programs attached; a dead agent's are removed (a live one holds
/// the lock).
fn remove_fail_closed_leftovers() {
    let root = Path::new(DEFAULT_PIN_ROOT);
    let mut old = other_layout_dirs(root, Path::new(""));
    old.retain(|d| d.join("exec_link").exists());
    if old.is_empty() {
        return;
    }
    match PinLock::acquire(root) {
        Ok(_lock) => {
            for d in old {
                warn!(dir = %d.display(), "removing a previous agent's pinned programs (running fail-open now)");
                remove_pins(&d);
            }
        }
        Err(e) => warn!("leaving pinned programs alone: {e}"),
    }
}

/// `CLOCK_BOOTTIME` in ns: what `bpf_ktime_get_boot_ns` reads in the kernel.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock_rlimit() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } != 0 {
        // Harmless on 5.11+ (memcg accounting), which is what this agent targets.
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A map delete whose key may be absent. aya 0.14 reports an absent key as
/// the syscall's ENOENT, not as `MapError::KeyNotFound` (before this, every
/// clear of a container without a drift policy logged a failed delete).
/// `Ok(true)`: removed; `Ok(false)`: was not there.
fn removed(r: Result<(), aya::maps::MapError>) -> Result<bool, aya::maps::MapError> {
    match r {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: sched_process_exec\nID: 311\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n";

    #[test]
    fn finds_the_filename_field_in_a_tracepoint_format() {
        assert_eq!(tracepoint_filename_offset(FORMAT).unwrap(), 8);
        let moved = FORMAT.replace("offset:8;", "offset:16;");
        assert_eq!(tracepoint_filename_offset(&moved).unwrap(), 16);
        assert!(tracepoint_filename_offset("format:\n\tfield:int x;\toffset:8;").is_err());
        assert!(
            tracepoint_filename_offset("\tfield:__data_loc char[] filename;\toffset:x;").is_err()
        );
    }

    #[test]
    fn bpf_is_found_in_the_active_lsm_list_by_name() {
        assert!(bpf_lsm_listed(
            "lockdown,capability,landlock,yama,apparmor,tomoyo,bpf,ipe,ima,evm\n"
        ));
        assert!(bpf_lsm_listed("bpf"));
        assert!(!bpf_lsm_listed(
            "lockdown,capability,landlock,yama,apparmor"
        ));
        assert!(!bpf_lsm_listed("bpfx,xbpf"));
        assert!(!bpf_lsm_listed(""));
    }

    #[test]
    fn ring_buffer_size_must_be_pages_and_power_of_two() {
        assert!(check_ringbuf_size(4096).is_ok());
        assert!(check_ringbuf_size(1 << 22).is_ok());
        assert!(check_ringbuf_size(0).is_err());
        assert!(check_ringbuf_size(3 * 4096).is_err());
        assert!(check_ringbuf_size(1024).is_err());
    }
}
