//! cgroup path -> container.
//!
//! Pure functions that recognise the cgroup layouts container runtimes and
//! the kubelet create, plus the two filesystem helpers the kernel side needs:
//! where cgroup2 is mounted, and the cgroup id (= inode number) of a cgroup2
//! directory, which is what `bpf_get_current_cgroup_id()` returns.
//!
//! Layouts recognised (searched from the innermost path segment outwards, so
//! nested layouts such as kind's `/docker/<id>/kubepods/...` resolve to the
//! innermost container):
//!
//! | layout | example |
//! |---|---|
//! | kubelet systemd driver, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | kubelet systemd driver, CRI-O | `.../kubepods-pod<uid_>.slice/crio-<id>.scope`, `crio-conmon-<id>.scope`, `crio-<id>.scope/container` |
//! | kubelet systemd driver, docker | `.../docker-<id>.scope` |
//! | kubelet cgroupfs driver | `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/crio-<id>` |
//! | docker cgroupfs | `/docker/<id>` |
//! | docker / podman systemd | `/system.slice/docker-<id>.scope`, `/machine.slice/libpod-<id>.scope` |
//! | containerd default (`ctr run`, nerdctl cgroupfs) | `/<namespace>/<id>` |
//!
//! Paths in `/proc/PID/cgroup` are relative to the *reader's* cgroup
//! namespace. In a container with a private one (containerd and CRI-O give
//! it on cgroup v2; the DaemonSet's pod) another pod's cgroup reads
//! `/../../../besteffort/pod<uid>/<id>`; [`dir_in_mount`] places such a path
//! under the cgroup2 mount (the host's hierarchy, hostPath-mounted) from the
//! mount's root as `/proc/self/mountinfo` shows it and, when needed, where
//! this process's namespace root lies under the mount.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Which runtime a cgroup layout belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// containerd (its CRI plugin: `cri-containerd-<id>.scope`, or its own
    /// default layout `/<namespace>/<id>`).
    Containerd,
    /// CRI-O (`crio-<id>`).
    Crio,
    /// Docker / moby (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// Podman (`libpod-<id>.scope`).
    Podman,
    /// A kubelet cgroupfs-driver layout (`/kubepods/.../pod<uid>/<id>`):
    /// some CRI runtime, the path does not say which.
    Cri,
}

impl RuntimeKind {
    /// Stable lower-case name (for logs and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::Crio => "crio",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Podman => "podman",
            RuntimeKind::Cri => "cri",
        }
    }
}

/// What a cgroup path says about the container whose processes live in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupContainer {
    /// Runtime the layout belongs to.
    pub runtime: RuntimeKind,
    /// Container id as the runtime knows it.
    pub id: String,
    /// Kubernetes pod UID (with dashes), when the path is under a kubepods
    /// pod cgroup.
    pub pod_uid: Option<String>,
    /// containerd namespace, for the containerd default layout
    /// `/<namespace>/<id>`.
    pub namespace: Option<String>,
    /// The cgroup holds the runtime's per-container monitor (CRI-O / podman
    /// `conmon`), not the container's own processes.
    pub monitor: bool,
}

/// Longest cgroup path we look at; longer input is refused (bounded work).
const MAX_PATH_LEN: usize = 4096;
/// Most segments we walk.
const MAX_SEGMENTS: usize = 64;

/// Resolves a cgroup path (as in `/proc/PID/cgroup`, i.e. relative to the
/// hierarchy root, with a leading `/`) to the container it belongs to.
pub fn resolve_cgroup_path(path: &str) -> Option<CgroupContainer> {
    if path.len() > MAX_PATH_LEN {
        return None;
    }
    let all: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .take(MAX_SEGMENTS * 2 + 1)
        .collect();
    // Seen from a private cgroup namespace, other containers' paths start
    // with `..` (`/../../kubepods/...`): what follows still names them, but
    // its depth in the hierarchy is unknown.
    let ups = all.iter().take_while(|s| **s == "..").count();
    let segs = &all[ups..];
    if segs.contains(&"..") {
        return None;
    }
    if segs.is_empty() || segs.len() > MAX_SEGMENTS {
        return None;
    }
    // Innermost first: a recognisable container segment wins over the ones
    // around it (nested layouts, or sub-cgroups such as CRI-O's
    // `crio-<id>.scope/container` or systemd-in-container `init.scope`).
    for i in (0..segs.len()).rev() {
        let parent = if i > 0 { Some(segs[i - 1]) } else { None };
        if let Some(found) = match_segment(segs[i], parent) {
            let pod_uid = segs[..i].iter().rev().find_map(|s| pod_uid_of(s));
            return Some(CgroupContainer { pod_uid, ..found });
        }
    }
    // containerd's default layout (`ctr run`, nerdctl with cgroupfs):
    // exactly `/<namespace>/<id>`.
    if ups == 0
        && segs.len() == 2
        && is_containerd_namespace(segs[0])
        && is_plain_container_id(segs[1])
    {
        return Some(CgroupContainer {
            runtime: RuntimeKind::Containerd,
            id: segs[1].to_string(),
            pod_uid: None,
            namespace: Some(segs[0].to_string()),
            monitor: false,
        });
    }
    None
}

fn container(runtime: RuntimeKind, id: &str, monitor: bool) -> CgroupContainer {
    CgroupContainer {
        runtime,
        id: id.to_string(),
        pod_uid: None,
        namespace: None,
        monitor,
    }
}

/// Matches one path segment against the runtime-specific patterns.
fn match_segment(seg: &str, parent: Option<&str>) -> Option<CgroupContainer> {
    if let Some(stem) = seg.strip_suffix(".scope") {
        // systemd driver: <prefix>-<id>.scope
        const SCOPES: &[(&str, RuntimeKind, bool)] = &[
            ("cri-containerd-", RuntimeKind::Containerd, false),
            ("crio-conmon-", RuntimeKind::Crio, true),
            ("crio-", RuntimeKind::Crio, false),
            ("docker-", RuntimeKind::Docker, false),
            ("libpod-conmon-", RuntimeKind::Podman, true),
            ("libpod-", RuntimeKind::Podman, false),
        ];
        for (prefix, kind, monitor) in SCOPES {
            if let Some(id) = stem.strip_prefix(prefix) {
                if is_hex_id(id) {
                    return Some(container(*kind, id, *monitor));
                }
            }
        }
        return None;
    }
    // cgroupfs driver.
    if let Some(id) = seg.strip_prefix("crio-conmon-") {
        if is_hex_id(id) {
            return Some(container(RuntimeKind::Crio, id, true));
        }
    }
    if let Some(id) = seg.strip_prefix("crio-") {
        if is_hex_id(id) {
            return Some(container(RuntimeKind::Crio, id, false));
        }
    }
    if is_hex_id(seg) {
        match parent {
            Some("docker") => return Some(container(RuntimeKind::Docker, seg, false)),
            Some(p) if pod_uid_of(p).is_some() => {
                return Some(container(RuntimeKind::Cri, seg, false))
            }
            _ => {}
        }
    }
    None
}

/// Pod UID from a pod cgroup segment: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(seg: &str) -> Option<String> {
    let raw = if let Some(stem) = seg.strip_suffix(".slice") {
        let idx = stem.rfind("-pod")?;
        if !(stem.starts_with("kubepods") || stem.contains("-kubepods-")) {
            return None;
        }
        &stem[idx + 4..]
    } else {
        seg.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let hex = uid.chars().filter(|c| *c != '-').count();
    let ok = (32..=36).contains(&uid.len())
        && hex == 32
        && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    ok.then_some(uid)
}

/// A 64 character lower-case hex id (containerd, CRI-O, docker, podman).
fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// containerd namespace names: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, and not
/// a systemd unit nor a kubelet / docker cgroup root.
fn is_containerd_namespace(s: &str) -> bool {
    if s.len() > 76
        || matches!(s, "kubepods" | "docker" | "system" | "user" | "init")
        || [".slice", ".scope", ".service", ".mount", ".socket"]
            .iter()
            .any(|suf| s.ends_with(suf))
    {
        return false;
    }
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = false;
    for c in b {
        let sep = matches!(c, b'.' | b'_' | b'-');
        if !(c.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return false;
        }
        prev_sep = sep;
    }
    true
}

/// containerd container ids: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76.
fn is_plain_container_id(s: &str) -> bool {
    is_containerd_namespace(s)
}

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroupLine<'a> {
    /// Hierarchy id (0 for cgroup2).
    pub hierarchy: u32,
    /// Controllers (`cpu,cpuacct`, `name=systemd`, empty for cgroup2).
    pub controllers: &'a str,
    /// Path relative to the hierarchy root.
    pub path: &'a str,
}

/// Parses `/proc/PID/cgroup` (bounded to the first 256 lines).
pub fn parse_proc_cgroup(content: &str) -> Vec<ProcCgroupLine<'_>> {
    content
        .lines()
        .take(256)
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let hierarchy = it.next()?.parse().ok()?;
            let controllers = it.next()?;
            let path = it.next()?;
            Some(ProcCgroupLine {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// The cgroup2 (unified) path from `/proc/PID/cgroup`, `0::<path>`.
pub fn unified_path(content: &str) -> Option<&str> {
    parse_proc_cgroup(content)
        .into_iter()
        .find(|l| l.hierarchy == 0 && l.controllers.is_empty())
        .map(|l| l.path)
}

/// Resolves the content of `/proc/PID/cgroup` to a container: the unified
/// line first (cgroup v2 and hybrid), then `name=systemd`, then any v1
/// controller.
pub fn resolve_proc_cgroup(content: &str) -> Option<CgroupContainer> {
    let lines = parse_proc_cgroup(content);
    let rank = |l: &ProcCgroupLine<'_>| -> u8 {
        if l.hierarchy == 0 && l.controllers.is_empty() {
            0
        } else if l.controllers == "name=systemd" {
            1
        } else {
            2
        }
    };
    let mut sorted: Vec<&ProcCgroupLine<'_>> = lines.iter().collect();
    sorted.sort_by_key(|l| rank(l));
    sorted.into_iter().find_map(|l| resolve_cgroup_path(l.path))
}

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is the root of a cgroup2 filesystem.
pub fn is_cgroup2_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct from a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    rc == 0 && magic == CGROUP2_SUPER_MAGIC
}

/// Where the cgroup2 hierarchy is mounted: `/sys/fs/cgroup` on a pure v2
/// host, `/sys/fs/cgroup/unified` on a hybrid one, else the first cgroup2
/// mount in `/proc/self/mountinfo`.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if is_cgroup2_mount(Path::new(p)) {
            return Some(PathBuf::from(p));
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_from_mountinfo(&info)
}

/// The first cgroup2 mount point in a `/proc/PID/mountinfo` text.
pub fn cgroup2_mount_from_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().take(10_000).find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split(' ').next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mnt = pre.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mnt)))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id of a cgroup2 directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns for tasks in it.
pub fn cgroup_id_of_dir(path: &Path) -> io::Result<u64> {
    let md = std::fs::metadata(path)?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", path.display()),
        ));
    }
    Ok(md.ino())
}

/// The cgroup2 directory of a process: its `0::` line of `/proc/PID/cgroup`
/// resolved under `mount` (see [`dir_in_mount`]: the line is relative to
/// this process's cgroup namespace, which in a container need not be the
/// hierarchy's root nor the mount's).
pub fn cgroup2_dir_of_pid(mount: &Path, pid: u32) -> io::Result<PathBuf> {
    let content = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = unified_path(&content).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} has no cgroup2 entry"),
        )
    })?;
    dir_in_mount(mount, rel)
}

/// The cgroup id of a process's cgroup2 directory.
pub fn cgroup_id_of_pid(mount: &Path, pid: u32) -> io::Result<u64> {
    cgroup_id_of_dir(&cgroup2_dir_of_pid(mount, pid)?)
}

/// A cgroup path relative to this process's cgroup namespace root, as the
/// kernel prints it in `/proc/PID/cgroup` and in the root field of
/// `/proc/self/mountinfo`: `ups` times `..`, then `names` downwards. In the
/// initial cgroup namespace `ups` is always 0; in a container with a private
/// cgroup namespace another pod's cgroup reads `/../../kubepods/...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NsPath {
    /// Levels above the namespace root.
    pub ups: usize,
    /// Names below that ancestor.
    pub names: Vec<String>,
}

impl NsPath {
    /// Parses and normalises a kernel cgroup path (`.` dropped, a `..` after a
    /// name cancels it). `None` for a relative or over-long path.
    pub fn parse(path: &str) -> Option<NsPath> {
        if !path.starts_with('/') || path.len() > MAX_PATH_LEN {
            return None;
        }
        let mut p = NsPath::default();
        for seg in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
            if seg == ".." {
                if p.names.pop().is_none() {
                    p.ups += 1;
                }
            } else {
                p.names.push(seg.to_string());
            }
            if p.ups + p.names.len() > MAX_SEGMENTS * 4 {
                return None;
            }
        }
        Some(p)
    }
}

/// Where a cgroup (given relative to this process's cgroup namespace root)
/// lies under a cgroup2 mount whose root is `mount_root` (also relative to
/// the namespace root, from `/proc/self/mountinfo`): the names below the
/// mount's root, or `None` when it is outside the mount or cannot be placed.
///
/// `ns_root_names` are the `mount_root.ups` names that lead from the mount's
/// root down to the namespace root, when the mount's root is an ancestor of
/// the namespace root (a host's hierarchy bind-mounted into a container with
/// a private cgroup namespace); they are needed only for a cgroup that is
/// not itself under the mount's root by name, e.g. `/../../besteffort/...`
/// seen from `/kubepods/burstable/pod<uid>/<id>` with the mount at the
/// hierarchy root (`/../../../..`).
pub fn place_under_mount(
    mount_root: &NsPath,
    ns_root_names: Option<&[String]>,
    cgroup: &NsPath,
) -> Option<Vec<String>> {
    if cgroup.ups > mount_root.ups {
        return None; // above the mount's root
    }
    // The cgroup relative to A, the `mount_root.ups`-th ancestor of the
    // namespace root (the mount's root is A/mount_root.names).
    let keep = mount_root.ups - cgroup.ups;
    let mut from_a: Vec<&str> = Vec::with_capacity(keep + cgroup.names.len());
    if keep > 0 {
        let ns = ns_root_names?;
        if ns.len() != mount_root.ups {
            return None;
        }
        from_a.extend(ns[..keep].iter().map(String::as_str));
    }
    from_a.extend(cgroup.names.iter().map(String::as_str));
    let rest = from_a.strip_prefix(
        mount_root
            .names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    )?;
    Some(rest.iter().map(|s| s.to_string()).collect())
}

/// The root field (4th) of the last `/proc/self/mountinfo` entry mounted at
/// `mount` (the topmost one), when it is a cgroup2 mount.
pub fn cgroup2_mount_root_from_mountinfo(info: &str, mount: &Path) -> Option<String> {
    info.lines()
        .take(10_000)
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let (root, point) = (f.get(3)?, f.get(4)?);
            (Path::new(&unescape_mountinfo(point)) == mount).then(|| {
                (
                    post.split(' ').next() == Some("cgroup2"),
                    unescape_mountinfo(root),
                )
            })
        })
        .last()
        .and_then(|(is_cgroup2, root)| is_cgroup2.then_some(root))
}

/// How this process sees one cgroup2 mount: its root relative to our cgroup
/// namespace and, when needed, where our namespace root lies under it.
#[derive(Debug, Clone)]
struct MountView {
    root: NsPath,
    ns_root_names: Option<Vec<String>>,
}

/// Most directories [`find_ns_root`] looks at.
const MAX_NS_ROOT_SEARCH: usize = 100_000;

/// Finds this process's cgroup namespace root under `mount`, whose root is
/// its `depth`-th ancestor: the directory at that depth whose `self_names`
/// sub-cgroup lists this process in `cgroup.procs`. The kernel never prints
/// the namespace root's own names to a process inside the namespace; this
/// finds them from the host's hierarchy mount, which a DaemonSet mounts.
fn find_ns_root(mount: &Path, depth: usize, self_names: &[String]) -> Option<Vec<String>> {
    let me = std::process::id().to_string();
    let mut level: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0usize;
    for _ in 0..depth {
        let mut next = Vec::new();
        for names in &level {
            let dir = names.iter().fold(mount.to_path_buf(), |d, n| d.join(n));
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                seen += 1;
                if seen > MAX_NS_ROOT_SEARCH {
                    return None;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let mut n = names.clone();
                    n.push(e.file_name().to_string_lossy().into_owned());
                    next.push(n);
                }
            }
        }
        level = next;
    }
    level.into_iter().find(|names| {
        let dir = names
            .iter()
            .chain(self_names)
            .fold(mount.to_path_buf(), |d, n| d.join(n));
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == me))
    })
}

fn mount_view(mount: &Path) -> io::Result<MountView> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static VIEWS: OnceLock<Mutex<HashMap<PathBuf, MountView>>> = OnceLock::new();
    let views = VIEWS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = views.lock().ok().and_then(|m| m.get(mount).cloned()) {
        return Ok(v);
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Not a mount point itself (a directory inside a cgroup2 mount, as some
    // tests pass): taken as rooted at our namespace root, the old behaviour.
    let root = cgroup2_mount_root_from_mountinfo(&info, mount).unwrap_or_else(|| "/".into());
    let root = NsPath::parse(&root).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cgroup2 mount {}: unusable root {root:?}", mount.display()),
        )
    })?;
    let mut view = MountView {
        root,
        ns_root_names: None,
    };
    if view.root.ups > 0 && view.root.names.is_empty() {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let own = unified_path(&own)
            .and_then(NsPath::parse)
            .unwrap_or_default();
        if own.ups == 0 {
            view.ns_root_names = find_ns_root(mount, view.root.ups, &own.names);
        }
        match &view.ns_root_names {
            Some(n) => tracing::info!(
                mount = %mount.display(),
                "private cgroup namespace: rooted at /{} of the cgroup2 mount",
                n.join("/")
            ),
            None => tracing::warn!(
                mount = %mount.display(),
                "private cgroup namespace whose root was not found under the cgroup2 mount: \
                 cgroups of other pods may not resolve"
            ),
        }
    } else if view.root.ups > 0 {
        tracing::warn!(
            mount = %mount.display(),
            "the cgroup2 mount is not an ancestor of this process's cgroup namespace: \
             only cgroups under it resolve"
        );
    }
    if let Ok(mut m) = views.lock() {
        m.insert(mount.to_path_buf(), view.clone());
    }
    Ok(view)
}

/// The directory under the cgroup2 mount `mount` of a cgroup given as the
/// kernel prints it to this process (`/proc/PID/cgroup`: relative to our
/// cgroup namespace root). Handles a private cgroup namespace (a container
/// on cgroup v2: `/../../kubepods/...`) with the host's hierarchy mounted,
/// by reading the mount's root from `/proc/self/mountinfo` and, when needed,
/// finding our namespace root under it once (cached per mount).
pub fn dir_in_mount(mount: &Path, path: &str) -> io::Result<PathBuf> {
    let cg = NsPath::parse(path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unusable cgroup path {path:?}"),
        )
    })?;
    let view = mount_view(mount)?;
    let names =
        place_under_mount(&view.root, view.ns_root_names.as_deref(), &cg).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "cgroup {path} is outside the cgroup2 mount {} (its root: {:?})",
                    mount.display(),
                    view.root
                ),
            )
        })?;
    Ok(names.iter().fold(mount.to_path_buf(), |d, n| d.join(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4ff2c2b5c5e1bd6f4e6a0ef5ad1f3a1b7c7c1d2e3f4a5b6c7d8e9f0a1b2c3d4e";
    const UID: &str = "8d3f6a2e-1b2c-4d5e-9f80-123456789abc";
    const UID_: &str = "8d3f6a2e_1b2c_4d5e_9f80_123456789abc";

    fn r(p: &str) -> CgroupContainer {
        resolve_cgroup_path(p).unwrap_or_else(|| panic!("no container in {p}"))
    }

    #[test]
    fn systemd_containerd_qos_classes() {
        for (qos_slice, pod_slice) in [
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{UID_}.slice"),
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{UID_}.slice"),
            ),
            ("", format!("kubepods-pod{UID_}.slice")),
        ] {
            let p = format!("/kubepods.slice/{qos_slice}{pod_slice}/cri-containerd-{ID}.scope");
            let c = r(&p);
            assert_eq!(c.runtime, RuntimeKind::Containerd, "{p}");
            assert_eq!(c.id, ID);
            assert_eq!(c.pod_uid.as_deref(), Some(UID), "{p}");
            assert!(!c.monitor);
        }
    }

    #[test]
    fn systemd_crio_and_conmon() {
        let base =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let c = r(&format!("{base}/crio-{ID}.scope"));
        assert_eq!(
            (c.runtime, c.id.as_str(), c.monitor),
            (RuntimeKind::Crio, ID, false)
        );
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        let c = r(&format!("{base}/crio-conmon-{ID}.scope"));
        assert_eq!(
            (c.runtime, c.id.as_str(), c.monitor),
            (RuntimeKind::Crio, ID, true)
        );
        // CRI-O on cgroup v2 puts the workload in a `container` sub-cgroup.
        let c = r(&format!("{base}/crio-{ID}.scope/container"));
        assert_eq!((c.runtime, c.id.as_str()), (RuntimeKind::Crio, ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroupfs_kubepods() {
        for qos in ["burstable/", "besteffort/", ""] {
            let p = format!("/kubepods/{qos}pod{UID}/{ID}");
            let c = r(&p);
            assert_eq!(c.runtime, RuntimeKind::Cri, "{p}");
            assert_eq!(c.id, ID);
            assert_eq!(c.pod_uid.as_deref(), Some(UID));
        }
        let c = r(&format!("/kubepods/burstable/pod{UID}/crio-{ID}"));
        assert_eq!(
            (c.runtime, c.pod_uid.as_deref()),
            (RuntimeKind::Crio, Some(UID))
        );
        let c = r(&format!("/kubepods/pod{UID}/crio-conmon-{ID}"));
        assert!(c.monitor);
        // Static pods have a 32-hex UID without dashes.
        let c = r(&format!(
            "/kubepods/burstable/pod0f1e2d3c4b5a69788796a5b4c3d2e1f0/{ID}"
        ));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
        );
        // The pod cgroup itself is no container.
        assert_eq!(
            resolve_cgroup_path(&format!("/kubepods/burstable/pod{UID}")),
            None
        );
        assert_eq!(resolve_cgroup_path("/kubepods/burstable"), None);
    }

    #[test]
    fn docker_layouts() {
        let c = r(&format!("/docker/{ID}"));
        assert_eq!(
            (c.runtime, c.id.as_str(), c.pod_uid.clone()),
            (RuntimeKind::Docker, ID, None)
        );
        let c = r(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!((c.runtime, c.id.as_str()), (RuntimeKind::Docker, ID));
        let c = r(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(c.runtime, RuntimeKind::Podman);
        let c = r(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert!(c.monitor);
    }

    #[test]
    fn containerd_default_layout() {
        let c = r("/default/c1");
        assert_eq!(c.runtime, RuntimeKind::Containerd);
        assert_eq!(
            (c.namespace.as_deref(), c.id.as_str()),
            (Some("default"), "c1")
        );
        let c = r("/k8s.io/my-ctr_2");
        assert_eq!(
            (c.namespace.as_deref(), c.id.as_str()),
            (Some("k8s.io"), "my-ctr_2")
        );
        let c = r("/moby/abc"); // nerdctl/moby namespace
        assert_eq!(c.namespace.as_deref(), Some("moby"));
        for not in [
            "/",
            "",
            "/user.slice/user-0.slice",
            "/system.slice/containerd.service",
            "/init.scope",
            "/kubepods/burstable",
            "/a/b/c",
            "/default/-bad",
            "/default/a..b",
        ] {
            assert_eq!(resolve_cgroup_path(not), None, "{not}");
        }
    }

    #[test]
    fn nested_layouts_resolve_innermost() {
        // kind: kubelet inside a docker container.
        let outer = "1111111111111111111111111111111111111111111111111111111111111111";
        let c = r(&format!(
            "/docker/{outer}/kubepods/besteffort/pod{UID}/{ID}"
        ));
        assert_eq!((c.runtime, c.id.as_str()), (RuntimeKind::Cri, ID));
        let c = r(&format!(
            "/system.slice/docker-{outer}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!((c.runtime, c.id.as_str()), (RuntimeKind::Containerd, ID));
        // kind's nested kubelet prefixes its slices with `kubelet-`.
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        // systemd inside a docker container.
        let c = r(&format!("/system.slice/docker-{ID}.scope/init.scope"));
        assert_eq!((c.runtime, c.id.as_str()), (RuntimeKind::Docker, ID));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(resolve_cgroup_path(&"/a".repeat(3000)), None);
        assert_eq!(
            resolve_cgroup_path(&format!("/kubepods/pod{UID}/{}", &ID[..63])),
            None
        );
        assert_eq!(
            resolve_cgroup_path(&format!("/kubepods/pod{UID}/{}", ID.to_uppercase())),
            None
        );
        assert_eq!(
            resolve_cgroup_path(&format!("/x/cri-containerd-{}.scope", "g".repeat(64))),
            None
        );
        assert_eq!(pod_uid_of("podnot-a-uid"), None);
    }

    #[test]
    fn proc_cgroup_hybrid_v1_and_v2() {
        // Hybrid host, cgroupfs driver, `ctr run` container (this machine).
        let hybrid = "9:name=systemd:/default/c1\n8:pids:/default/c1\n4:memory:/default/c1\n1:cpu:/default/c1\n0::/default/c1\n";
        assert_eq!(unified_path(hybrid), Some("/default/c1"));
        let c = resolve_proc_cgroup(hybrid).unwrap();
        assert_eq!(
            (c.namespace.as_deref(), c.id.as_str()),
            (Some("default"), "c1")
        );
        // Pure cgroup v2, systemd driver.
        let v2 = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        let c = resolve_proc_cgroup(&v2).unwrap();
        assert_eq!(
            (c.runtime, c.pod_uid.as_deref()),
            (RuntimeKind::Containerd, Some(UID))
        );
        // Pure v1 (no 0:: line), docker.
        let v1 = format!(
            "12:cpuset:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
        );
        assert_eq!(unified_path(&v1), None);
        assert_eq!(
            resolve_proc_cgroup(&v1).unwrap().runtime,
            RuntimeKind::Docker
        );
        // Hybrid where only v1 controllers carry the container path.
        let mixed = format!("4:memory:/kubepods/burstable/pod{UID}/{ID}\n0::/\n");
        assert_eq!(resolve_proc_cgroup(&mixed).unwrap().id, ID);
        // A host process.
        assert_eq!(resolve_proc_cgroup("0::/init.scope\n"), None);
        assert_eq!(resolve_proc_cgroup("garbage\n"), None);
    }

    #[test]
    fn mountinfo_cgroup2() {
        let info = "25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_from_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let esc = "26 25 0:23 / /mnt/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_from_mountinfo(esc),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(
            cgroup2_mount_from_mountinfo("26 25 0:23 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }

    fn ns(p: &str) -> NsPath {
        NsPath::parse(p).unwrap_or_else(|| panic!("unparsable {p}"))
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ns_path_parses_kernel_paths() {
        assert_eq!(ns("/"), NsPath::default());
        assert_eq!(
            ns("/../../kubepods/x"),
            NsPath {
                ups: 2,
                names: names(&["kubepods", "x"])
            }
        );
        assert_eq!(
            ns("/a/./b/../c"),
            NsPath {
                ups: 0,
                names: names(&["a", "c"])
            }
        );
        assert_eq!(NsPath::parse("relative/x"), None);
        assert_eq!(NsPath::parse(&"/..".repeat(1000)), None);
        assert_eq!(NsPath::parse(&"/a".repeat(3000)), None);
    }

    /// A DaemonSet pod on cgroup v2: its container has a private cgroup
    /// namespace rooted at its own cgroup, and the host's hierarchy is
    /// bind-mounted at /sys/fs/cgroup (mountinfo root `/../../../..`).
    #[test]
    fn private_cgroupns_with_the_hosts_hierarchy_mounted() {
        let agent_cg = names(&["kubepods", "burstable", &format!("pod{UID}"), "agentid"]);
        let root = ns("/../../../..");
        // Another pod under another QoS class shares `kubepods` with us.
        let other = ns(&format!("/../../../besteffort/pod{UID}/{ID}"));
        assert_eq!(
            place_under_mount(&root, Some(&agent_cg), &other),
            Some(names(&["kubepods", "besteffort", &format!("pod{UID}"), ID]))
        );
        // Without knowing where our namespace root is, that one cannot be
        // placed (this was the bug: mount + "../../.." left the mount).
        assert_eq!(place_under_mount(&root, None, &other), None);
        // Up to the hierarchy root: no need to know it.
        let sys = ns("/../../../../system.slice/containerd.service");
        assert_eq!(
            place_under_mount(&root, None, &sys),
            Some(names(&["system.slice", "containerd.service"]))
        );
        // Our own cgroup, and a sibling container of the same pod.
        assert_eq!(
            place_under_mount(&root, Some(&agent_cg), &ns("/")),
            Some(agent_cg.clone())
        );
        assert_eq!(
            place_under_mount(&root, Some(&agent_cg), &ns("/../sidecar")),
            Some(names(&[
                "kubepods",
                "burstable",
                &format!("pod{UID}"),
                "sidecar"
            ]))
        );
        // Above the mount: nothing.
        assert_eq!(
            place_under_mount(&root, Some(&agent_cg), &ns("/../../../../..")),
            None
        );
        // ns root names of the wrong length are not trusted.
        assert_eq!(place_under_mount(&root, Some(&agent_cg[..2]), &other), None);
        // The systemd driver's names, same shape.
        let sd = names(&[
            "kubepods.slice",
            "kubepods-burstable.slice",
            &format!("kubepods-burstable-pod{UID_}.slice"),
            &format!("cri-containerd-{ID}.scope"),
        ]);
        let p = ns(&format!("/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"));
        assert_eq!(
            place_under_mount(&root, Some(&sd), &p).unwrap()[1],
            "kubepods-besteffort.slice"
        );
    }

    #[test]
    fn host_and_own_namespace_mounts() {
        // The initial cgroup namespace: paths are the hierarchy's.
        let p = ns(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(place_under_mount(&ns("/"), None, &p), Some(p.names.clone()));
        // A container's own cgroup2 mount (root = its namespace root): other
        // pods are outside it.
        assert_eq!(place_under_mount(&ns("/"), None, &ns("/../x/y")), None);
        assert_eq!(
            place_under_mount(&ns("/"), None, &ns("/sub")),
            Some(names(&["sub"]))
        );
        // A mount of a sub-tree: stripped; outside it, nothing.
        assert_eq!(
            place_under_mount(&ns("/kubepods"), None, &p),
            Some(p.names[1..].to_vec())
        );
        assert_eq!(place_under_mount(&ns("/system.slice"), None, &p), None);
        // A mount of a sibling sub-tree seen from a private namespace.
        assert_eq!(
            place_under_mount(&ns("/../x"), None, &ns("/../x/y")),
            Some(names(&["y"]))
        );
        assert_eq!(place_under_mount(&ns("/../x"), None, &ns("/../z")), None);
    }

    #[test]
    fn mountinfo_root_of_a_cgroup2_mount() {
        // `unshare --cgroup` from a sub-cgroup on a hybrid host (measured).
        let info = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                    41 31 0:38 /../.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_root_from_mountinfo(info, Path::new("/sys/fs/cgroup/unified")),
            Some("/../..".into())
        );
        // Not cgroup2 at that point.
        assert_eq!(
            cgroup2_mount_root_from_mountinfo(info, Path::new("/sys/fs/cgroup")),
            None
        );
        // runc's own cgroup2 mount, then the hostPath volume over it: the top one wins.
        let over = "700 600 0:30 / /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
                    701 600 0:30 /../../../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_root_from_mountinfo(over, Path::new("/sys/fs/cgroup")),
            Some("/../../../..".into())
        );
        assert_eq!(
            cgroup2_mount_root_from_mountinfo(over, Path::new("/elsewhere")),
            None
        );
    }

    #[test]
    fn proc_cgroup_seen_from_a_private_namespace() {
        let c = resolve_proc_cgroup(&format!("0::/../../../besteffort/pod{UID}/{ID}\n")).unwrap();
        assert_eq!(
            (c.runtime, c.id.as_str(), c.pod_uid.as_deref()),
            (RuntimeKind::Cri, ID, Some(UID))
        );
        let c = resolve_proc_cgroup(&format!(
            "0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        ))
        .unwrap();
        assert_eq!((c.runtime, c.id.as_str()), (RuntimeKind::Containerd, ID));
        // `/<namespace>/<id>` is containerd's layout only from the root:
        // below `..` its depth is unknown.
        assert_eq!(resolve_proc_cgroup("0::/../default/c1\n"), None);
        assert_eq!(
            resolve_proc_cgroup(&format!("0::/a/../kubepods/pod{UID}/{ID}\n")),
            None
        );
    }

    #[test]
    fn cgroup_id_of_own_cgroup() {
        // Works unprivileged wherever cgroup2 is mounted; nothing to check
        // where it is not.
        let Some(mount) = find_cgroup2_mount() else {
            eprintln!("no cgroup2 mount here; skipping the filesystem half");
            return;
        };
        let id = cgroup_id_of_pid(&mount, std::process::id()).unwrap();
        assert!(id > 0);
        assert_eq!(
            cgroup_id_of_dir(&mount).unwrap(),
            1,
            "cgroup2 root has id 1"
        );
        assert!(cgroup_id_of_dir(Path::new("/proc/self/cgroup")).is_err());
    }
}
