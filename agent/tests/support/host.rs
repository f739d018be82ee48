//! Host helpers shared by the privileged tests: the root check, the cgroup v2
//! mount, throw-away cgroups, private binaries. Self-contained, so that a
//! test that needs nothing else includes only this file:
//! `#[path = "support/host.rs"] mod host;` (`support::host` otherwise).
#![allow(dead_code)]

// Also included by containerd.rs (which examples include alone): one
// source, compiled into each self-contained helper that needs it.
#[allow(clippy::duplicate_mod)]
#[path = "skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::{in_ci, skip_or_fail};

use std::{
    ffi::OsStr,
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// Whether a privileged test can run: as root, yes; otherwise
/// [`skip_or_fail`] decides (a failure under `CI=true`, a visible SKIP
/// elsewhere) and the caller returns.
pub fn privileged() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // The harness names each test's thread after the test.
    let thread = std::thread::current();
    skip_or_fail(
        thread.name().unwrap_or("privileged test"),
        "needs root (run `sudo -E cargo xtask test`)",
    );
    false
}

/// Polls `f` (every 20 ms) until it gives a value, and returns it; panics
/// naming `what` when `timeout` passes first. The way a test waits for a
/// condition instead of sleeping a guessed time.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is stopped (state `T` in /proc/PID/stat): how a
/// test sees that the kernel held an exec.
pub fn stopped(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("no cgroup2 hierarchy mounted (need /sys/fs/cgroup or /sys/fs/cgroup/unified)")
}

/// A cgroup v2 directory of the test's own, emptied and removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl TestCgroup {
    /// A fresh directory under the cgroup v2 root, named after the test
    /// binary's pid so that parallel runs never share one.
    pub fn new(tag: &str) -> Self {
        let path = cgroup2_root().join(format!("imagewarden-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self::at(path)
    }

    /// A child directory `leaf` of this one (for tests about cgroup names).
    pub fn child(&self, leaf: &str) -> Self {
        let path = self.path.join(leaf);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self::at(path)
    }

    fn at(path: PathBuf) -> Self {
        let id = imagewarden::probes::cgroup_id_of(&path).expect("cgroup id");
        TestCgroup { path, id }
    }

    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// `cgroup.procs` opened for a child to move itself (see [`move_self`]).
    pub fn procs_fd(&self) -> fs::File {
        fs::OpenOptions::new()
            .write(true)
            .open(self.procs())
            .expect("open cgroup.procs")
    }

    /// A command whose child moves itself into this cgroup before exec.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        in_cgroup(&self.path, program)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            if let Ok(p) = fs::read_to_string(self.procs()) {
                for pid in p.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A command whose child moves itself into the cgroup v2 directory `cg`
/// before exec.
pub fn in_cgroup(cg: &Path, program: impl AsRef<OsStr>) -> Command {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let mut c = Command::new(program);
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        c.pre_exec(move || move_self(&procs));
    }
    c
}

/// Moves the calling process into the cgroup of `procs` (async-signal-safe:
/// callable between fork and exec).
pub fn move_self(procs: &fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: write(2) on an open fd; "0" means the writing process.
    if unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A fresh temporary directory for one test.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imagewarden-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A private copy of a binary under a unique name, so its exec is unambiguous.
pub fn private_binary(dir: &Path, name: impl AsRef<OsStr>, from: &str) -> PathBuf {
    let p = dir.join(name.as_ref());
    fs::copy(from, &p).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}
