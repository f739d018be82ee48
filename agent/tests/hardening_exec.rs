//! Hardening (issue 8, items 1, 2 and part of 5), on the real kernel with
//! real cgroup v2 directories and the probes in enforce mode:
//!
//! - indirect and fileless execs (memfd + `execveat(AT_EMPTY_PATH)`,
//!   `/proc/self/fd/N`, an unlinked binary, `ld.so BIN`) are attributed to
//!   the exec'ing cgroup, killed where it is denied, flagged fileless where
//!   the file has no name;
//! - identity tricks: moving oneself into another cgroup through
//!   `cgroup.procs` (both directions), PID reuse, nested PID namespaces;
//! - hostile exec arguments: a file name and comm that are not UTF-8,
//!   arguments at the kernel's limit.
//!
//! Needs root. Without it the tests print SKIPPED; under `CI=true` they fail.
use std::{
    ffi::{CString, OsStr},
    fs,
    io::Write,
    os::unix::{
        ffi::OsStrExt,
        fs::PermissionsExt,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

#[path = "support/host.rs"]
mod host;

use host::{move_self, private_binary, privileged, tempdir, TestCgroup};
use imagewarden::{
    finding::Finding,
    probes::{
        event::{ExecRecord, KernelVerdict},
        reader::drain,
        Enforcement, HookChoice, ProbeOptions, Probes,
    },
};

/// Each test attaches its own programs and counts kernel-wide events.
static SERIAL: Mutex<()> = Mutex::new(());

fn cstr(b: impl AsRef<[u8]>) -> CString {
    CString::new(b.as_ref()).expect("no NUL")
}

/// Everything read from the ring buffer, handed out per cgroup.
struct Events {
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    seen: Vec<ExecRecord>,
}

impl Events {
    /// Waits (up to 5 s) until `n` events of `cgroup_id` arrived; takes them.
    fn take(&mut self, cgroup_id: u64, n: usize) -> Vec<ExecRecord> {
        self.take_within(cgroup_id, n, Duration::from_secs(5))
    }

    fn take_within(&mut self, cgroup_id: u64, n: usize, wait: Duration) -> Vec<ExecRecord> {
        let deadline = Instant::now() + wait;
        loop {
            self.seen.extend(drain(&mut self.ring));
            let count = self
                .seen
                .iter()
                .filter(|r| r.cgroup_id == cgroup_id)
                .count();
            if count >= n || Instant::now() >= deadline {
                let (ours, rest) = std::mem::take(&mut self.seen)
                    .into_iter()
                    .partition(|r| r.cgroup_id == cgroup_id);
                self.seen = rest;
                return ours;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes every event whose file name is `name` (waits up to 5 s for `n`).
    fn take_named(&mut self, name: &[u8], n: usize) -> Vec<ExecRecord> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.seen.extend(drain(&mut self.ring));
            let count = self.seen.iter().filter(|r| r.filename == name).count();
            if count >= n || Instant::now() >= deadline {
                let (ours, rest) = std::mem::take(&mut self.seen)
                    .into_iter()
                    .partition(|r| r.filename == name);
                self.seen = rest;
                return ours;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn load(hook: HookChoice) -> (Probes, Events) {
    let mut p = Probes::load(&ProbeOptions {
        hook,
        enforce: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("loading probes: {e}"));
    let ring = p.take_events().expect("ring buffer");
    (
        p,
        Events {
            ring,
            seen: Vec::new(),
        },
    )
}

/// Pre-built argv/envp for an exec done between fork and exec (no
/// allocation there).
struct ExecArgs {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`, owned by the same value and
// never mutated; the value is only read (in the forked child).
unsafe impl Send for ExecArgs {}
// SAFETY: as above.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    fn new(argv: &[&[u8]]) -> Self {
        let mut strings: Vec<CString> = argv.iter().map(cstr).collect();
        let n = strings.len();
        strings.push(cstr("PATH=/usr/bin:/bin"));
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        let env = ptrs.split_off(n);
        ptrs.push(std::ptr::null());
        let mut envp = env;
        envp.push(std::ptr::null());
        ExecArgs {
            _strings: strings,
            argv: ptrs,
            envp,
        }
    }
}

/// How the child execs the program (a private copy of /bin/sh running a
/// script whose first act is to write a marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trick {
    /// `memfd_create` + `execveat(fd, "", AT_EMPTY_PATH)`.
    MemfdExecveat,
    /// `fexecve` the way older libcs do it: `execve("/proc/self/fd/N")`.
    ProcSelfFd,
    /// An opened, then unlinked binary exec'd through `/proc/self/fd/N`.
    Unlinked,
    /// The dynamic loader executing the binary: `ld.so BIN`.
    LdSo,
}

const TRICKS: [Trick; 4] = [
    Trick::MemfdExecveat,
    Trick::ProcSelfFd,
    Trick::Unlinked,
    Trick::LdSo,
];

fn ld_so() -> PathBuf {
    [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-linux-x86-64.so.2",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("no dynamic loader found")
}

/// What the kernel should report for a trick.
struct Expect {
    filename: Vec<u8>,
    fileless: bool,
}

/// Runs `script` through `trick` in `cg`; returns the exit status, the
/// child's pid and the expected event.
fn run_trick(trick: Trick, cg: &TestCgroup, dir: &Path, script: &str) -> (ExitStatus, u32, Expect) {
    let sh_bytes = fs::read("/bin/sh").expect("read /bin/sh");
    let procs = cg.procs_fd();
    let tag = format!("{trick:?}").to_lowercase();
    // Keeps what the child needs open until it has exec'd.
    let mut keep: Vec<fs::File> = Vec::new();
    let (args, target, fd, expect): (ExecArgs, CString, i32, Expect) = match trick {
        Trick::MemfdExecveat => {
            let name = cstr(format!("iw-{tag}"));
            // SAFETY: valid C string.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            // SAFETY: we own fd.
            let mut f = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            f.write_all(&sh_bytes).unwrap();
            keep.push(f);
            let args = ExecArgs::new(&[b"iw-memfd", b"-c", script.as_bytes()]);
            (
                args,
                cstr(""),
                fd,
                Expect {
                    filename: format!("/dev/fd/{fd}").into_bytes(),
                    fileless: true,
                },
            )
        }
        Trick::ProcSelfFd | Trick::Unlinked => {
            let bin = private_binary(dir, format!("iw-{tag}"), "/bin/sh");
            let f = fs::File::open(&bin).unwrap();
            use std::os::fd::AsRawFd;
            let fd = f.as_raw_fd();
            keep.push(f);
            if trick == Trick::Unlinked {
                fs::remove_file(&bin).unwrap();
            }
            let path = format!("/proc/self/fd/{fd}");
            let args = ExecArgs::new(&[b"iw-fd", b"-c", script.as_bytes()]);
            (
                args,
                cstr(&path),
                -1,
                Expect {
                    filename: path.into_bytes(),
                    fileless: trick == Trick::Unlinked,
                },
            )
        }
        Trick::LdSo => {
            let bin = private_binary(dir, format!("iw-{tag}"), "/bin/sh");
            let ld = ld_so();
            let args = ExecArgs::new(&[
                b"ld.so",
                bin.as_os_str().as_bytes(),
                b"-c",
                script.as_bytes(),
            ]);
            let target = cstr(ld.as_os_str().as_bytes());
            (
                args,
                target,
                -1,
                Expect {
                    filename: ld.as_os_str().as_bytes().to_vec(),
                    fileless: false,
                },
            )
        }
    };
    let mut c = Command::new("/nonexistent-placeholder");
    // SAFETY: between fork and exec only write(2) and exec syscalls on
    // memory prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            // The whole value (Send + Sync), not its raw-pointer fields.
            let args = &args;
            move_self(&procs)?;
            if fd >= 0 {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    target.as_ptr(),
                    args.argv.as_ptr(),
                    args.envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
            } else {
                libc::execve(target.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
            }
            Err(std::io::Error::last_os_error())
        });
    }
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("{trick:?}: exec failed: {e}"));
    let pid = child.id();
    let st = child.wait().unwrap();
    drop(keep);
    (st, pid, expect)
}

fn check_attribution(trick: Trick, e: &ExecRecord, cg: &TestCgroup, pid: u32, want: &Expect) {
    assert_eq!(
        e.cgroup_id, cg.id,
        "{trick:?}: attributed to the wrong cgroup: {e:?}"
    );
    assert_eq!(e.tgid, pid, "{trick:?}: pid: {e:?}");
    assert_eq!(e.ppid, std::process::id(), "{trick:?}: ppid: {e:?}");
    assert_eq!(
        String::from_utf8_lossy(&e.filename),
        String::from_utf8_lossy(&want.filename),
        "{trick:?}: file name"
    );
    assert_eq!(e.fileless, want.fileless, "{trick:?}: fileless flag: {e:?}");
    assert!(
        !e.nlink_unreadable && !e.name_unreadable,
        "{trick:?}: {e:?}"
    );
}

#[test]
fn indirect_and_fileless_execs_in_a_denied_cgroup_are_attributed_and_killed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    for hook in [HookChoice::TpBtf, HookChoice::Tracepoint] {
        let (mut probes, mut events) = load(hook);
        let lsm = probes.enforcement == Enforcement::Lsm;
        let dir = tempdir("tricks-deny");
        let cg = TestCgroup::new("tricks-deny");
        probes.set_verdict(cg.id, KernelVerdict::Deny).unwrap();
        for trick in TRICKS {
            let marker = dir.join(format!("marker-{trick:?}"));
            let (st, pid, want) = run_trick(
                trick,
                &cg,
                &dir,
                &format!("echo ran > {}", marker.display()),
            );
            if !lsm {
                assert_eq!(
                    st.signal(),
                    Some(libc::SIGKILL),
                    "{hook:?} {trick:?}: parent must see SIGKILL: {st:?}"
                );
            }
            // The shell writes the marker itself and has been reaped: its
            // SIGKILL (above) and the deny event (below) are the positive
            // signals, after which the marker's absence proves it never ran.
            let evs = events.take(cg.id, 1);
            assert_eq!(
                evs.len(),
                1,
                "{hook:?} {trick:?}: one exec event expected: {evs:?}"
            );
            let e = &evs[0];
            check_attribution(trick, e, &cg, pid, &want);
            assert_eq!(e.verdict, KernelVerdict::Deny, "{trick:?}");
            assert!(
                e.killed || e.lsm_denied,
                "{hook:?} {trick:?}: the event must say killed: {e:?}"
            );
            assert!(
                !marker.exists(),
                "{hook:?} {trick:?}: the denied program ran"
            );
            eprintln!(
                "{hook:?} {trick:?}: killed, comm {:?}",
                String::from_utf8_lossy(&e.comm)
            );
        }
        drop(cg);
        drop(probes);
        let _ = fs::remove_dir_all(dir);
    }
}

#[test]
fn indirect_and_fileless_execs_in_an_allowed_cgroup_are_attributed_and_flagged() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    for hook in [HookChoice::TpBtf, HookChoice::Tracepoint] {
        let (mut probes, mut events) = load(hook);
        let dir = tempdir("tricks-allow");
        let cg = TestCgroup::new("tricks-allow");
        probes.set_verdict(cg.id, KernelVerdict::Allow).unwrap();
        for trick in TRICKS {
            let marker = dir.join(format!("marker-{trick:?}"));
            let (st, pid, want) = run_trick(
                trick,
                &cg,
                &dir,
                &format!("echo ran > {}", marker.display()),
            );
            assert!(
                st.success(),
                "{hook:?} {trick:?}: allowed program failed: {st:?}"
            );
            assert_eq!(
                fs::read_to_string(&marker).unwrap_or_default(),
                "ran\n",
                "{hook:?} {trick:?}"
            );
            let evs = events.take(cg.id, 1);
            assert_eq!(
                evs.len(),
                1,
                "{hook:?} {trick:?}: one exec event expected: {evs:?}"
            );
            let e = &evs[0];
            check_attribution(trick, e, &cg, pid, &want);
            assert_eq!(e.verdict, KernelVerdict::Allow, "{trick:?}");
            assert!(!e.killed && !e.held, "{trick:?}: {e:?}");
            // The finding the agent would print says fileless too.
            let f = serde_json::to_value(Finding::from_exec(e, None)).unwrap();
            assert_eq!(f["fileless"], want.fileless, "{trick:?}: {f}");
        }
        drop(cg);
        drop(probes);
        let _ = fs::remove_dir_all(dir);
    }
}

/// A process that moves itself from an allowed cgroup into a denied one
/// (it needs write access to the target's `cgroup.procs`): its next exec is
/// attributed to, and decided by, the new cgroup — killed. Same pid, two
/// cgroups, two verdicts.
#[test]
fn moving_into_a_denied_cgroup_kills_the_next_exec() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, mut events) = load(HookChoice::Auto);
    let dir = tempdir("move-in");
    let sh = private_binary(&dir, "iw-sh-move-in", "/bin/sh");
    let bin = private_binary(&dir, "iw-next-move-in", "/bin/sh");
    let allowed = TestCgroup::new("move-in-allowed");
    let denied = TestCgroup::new("move-in-denied");
    probes
        .set_verdict(allowed.id, KernelVerdict::Allow)
        .unwrap();
    probes.set_verdict(denied.id, KernelVerdict::Deny).unwrap();
    let marker = dir.join("marker");
    let script = format!(
        "echo 0 > {} || exit 7; exec {} -c 'echo ran > {}'",
        denied.procs().display(),
        bin.display(),
        marker.display()
    );
    let mut child = allowed.command(&sh).arg("-c").arg(&script).spawn().unwrap();
    let pid = child.id();
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the exec after the move must be killed: {st:?}"
    );
    assert!(!marker.exists());
    let first = events.take(allowed.id, 1);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0].tgid, first[0].verdict, first[0].killed),
        (pid, KernelVerdict::Allow, false)
    );
    let next = events.take(denied.id, 1);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].tgid, pid, "same process");
    assert_eq!(next[0].filename, bin.as_os_str().as_bytes());
    assert!(
        next[0].killed && next[0].verdict == KernelVerdict::Deny,
        "{:?}",
        next[0]
    );
    drop((allowed, denied, probes));
    let _ = fs::remove_dir_all(dir);
}

/// The escape direction. A process already running in a cgroup that
/// becomes denied (its execs are killed) moves itself into an allowed
/// cgroup, then execs: the exec is attributed to the allowed cgroup and
/// runs. Attribution is right (the kernel decides by the cgroup at exec
/// time); what stops the escape is permission: moving needs write access to
/// the target cgroup's `cgroup.procs` (root-owned, 0644; containers see
/// cgroupfs read-only in their own cgroup namespace). Shown here: root
/// escapes; the same process as an unprivileged user cannot move, and its
/// exec is killed.
#[test]
fn moving_out_of_a_denied_cgroup_needs_write_access_to_the_target() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, mut events) = load(HookChoice::Auto);
    let dir = tempdir("move-out");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let sh = private_binary(&dir, "iw-sh-move-out", "/bin/sh");
    let bin = private_binary(&dir, "iw-next-move-out", "/bin/sh");
    let allowed = TestCgroup::new("move-out-allowed");
    probes
        .set_verdict(allowed.id, KernelVerdict::Allow)
        .unwrap();
    for (who, uid) in [("root", 0u32), ("nobody", 65534)] {
        let denied = TestCgroup::new(&format!("move-out-denied-{who}"));
        let marker = dir.join(format!("marker-{who}"));
        // Builtins only until the exec: `read` waits for the test.
        let script = format!(
            "read go; if echo 0 > {}; then echo moved; else echo refused; fi; exec {} -c 'echo ran > {}'",
            allowed.procs().display(),
            bin.display(),
            marker.display()
        );
        let mut cmd = denied.command(&sh);
        cmd.arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if uid != 0 {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        // Running in the cgroup (its own exec happened there, unknown verdict).
        let first = events.take(denied.id, 1);
        assert_eq!(first.len(), 1, "{who}: {first:?}");
        assert_eq!(first[0].tgid, pid);
        probes.set_verdict(denied.id, KernelVerdict::Deny).unwrap();
        // Any new exec in the denied cgroup is killed now.
        let st = denied
            .command(&sh)
            .arg("-c")
            .arg("exit 0")
            .status()
            .unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{who}: {st:?}");
        let _ = events.take(denied.id, 1);
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if uid == 0 {
            assert_eq!(said, "moved");
            assert!(
                out.status.success(),
                "root escaped: its exec runs in the allowed cgroup: {:?}",
                out.status
            );
            assert_eq!(fs::read_to_string(&marker).unwrap_or_default(), "ran\n");
            let evs = events.take(allowed.id, 1);
            assert_eq!(evs.len(), 1, "{evs:?}");
            assert_eq!(
                (evs[0].tgid, evs[0].verdict),
                (pid, KernelVerdict::Allow),
                "attributed to the new cgroup"
            );
        } else {
            assert_eq!(
                said, "refused",
                "an unprivileged process moved itself out of its cgroup"
            );
            assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{:?}", out.status);
            assert!(!marker.exists());
            let evs = events.take(denied.id, 1);
            assert_eq!(evs.len(), 1, "{evs:?}");
            assert!(
                evs[0].tgid == pid && evs[0].killed && evs[0].uid == uid,
                "{:?}",
                evs[0]
            );
        }
    }
    drop((allowed, probes));
    let _ = fs::remove_dir_all(dir);
}

/// Writes `/proc/sys/kernel/ns_last_pid` (init pid namespace) so that the
/// next fork gets `pid`; retries while another fork on the machine takes it.
fn spawn_with_pid(pid: u32, mut make: impl FnMut() -> Command) -> Option<std::process::Child> {
    for _ in 0..200 {
        if fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            return None;
        }
        let child = make().spawn().expect("spawn");
        if child.id() == pid {
            return Some(child);
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// PID reuse: the same pid in an allowed, then a denied, then the allowed
/// cgroup again. Every exec is decided and attributed by the cgroup id the
/// kernel reads at exec time; nothing is remembered by pid.
#[test]
fn a_reused_pid_is_decided_by_its_cgroup_not_its_number() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, mut events) = load(HookChoice::Auto);
    let dir = tempdir("pid-reuse");
    let sh = private_binary(&dir, "iw-sh-pid-reuse", "/bin/sh");
    let allowed = TestCgroup::new("pid-allowed");
    let denied = TestCgroup::new("pid-denied");
    probes
        .set_verdict(allowed.id, KernelVerdict::Allow)
        .unwrap();
    probes.set_verdict(denied.id, KernelVerdict::Deny).unwrap();
    let mut first = allowed
        .command(&sh)
        .arg("-c")
        .arg("exit 0")
        .spawn()
        .unwrap();
    let pid = first.id();
    assert!(first.wait().unwrap().success());
    let mut seq = vec![(allowed.id, pid, KernelVerdict::Allow, false)];
    for (cg, v, killed) in [
        (&denied, KernelVerdict::Deny, true),
        (&allowed, KernelVerdict::Allow, false),
    ] {
        let Some(mut child) = spawn_with_pid(pid, || {
            let mut c = cg.command(&sh);
            c.arg("-c").arg("exit 0");
            c
        }) else {
            panic!("could not get pid {pid} again through ns_last_pid");
        };
        let st = child.wait().unwrap();
        assert_eq!(
            st.signal() == Some(libc::SIGKILL),
            killed,
            "pid {pid} in {v:?}: {st:?}"
        );
        seq.push((cg.id, pid, v, killed));
    }
    let evs = events.take_named(sh.as_os_str().as_bytes(), 3);
    let ours: Vec<_> = evs
        .iter()
        .filter(|e| e.tgid == pid)
        .map(|e| (e.cgroup_id, e.tgid, e.verdict, e.killed))
        .collect();
    assert_eq!(ours, seq, "the same pid, three cgroups, three verdicts");
    drop((allowed, denied, probes));
    let _ = fs::remove_dir_all(dir);
}

/// Nested PID namespaces: the event carries host pids (the child that is
/// pid 1 in its namespace is reported by its host pid), and the cgroup is
/// attributed the same; a process of a nested namespace that moves into a
/// denied cgroup is killed at exec.
#[test]
fn nested_pid_namespace_execs_carry_host_pids() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, mut events) = load(HookChoice::Auto);
    let dir = tempdir("pidns");
    let sh = private_binary(&dir, "iw-sh-pidns", "/bin/sh");
    let sleep = private_binary(&dir, "iw-sleep-pidns", "/bin/sleep");
    let cg = TestCgroup::new("pidns");
    let denied = TestCgroup::new("pidns-denied");
    probes.set_verdict(denied.id, KernelVerdict::Deny).unwrap();
    let marker = dir.join("marker-pidns");
    let mut unshare = cg
        .command("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(&sh)
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; exec {} 30",
            marker.display(),
            sleep.display()
        ))
        .spawn()
        .expect("unshare (util-linux)");
    let evs = events.take_named(sleep.as_os_str().as_bytes(), 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = &evs[0];
    assert_eq!(e.cgroup_id, cg.id);
    assert_ne!(
        e.tgid, 1,
        "the event must carry the host pid, not the namespace's"
    );
    assert_eq!(
        e.ppid,
        unshare.id(),
        "the parent is unshare, by its host pid"
    );
    assert_eq!(
        fs::read_to_string(&marker).unwrap().trim(),
        "1",
        "pid 1 inside the namespace"
    );
    let status =
        fs::read_to_string(format!("/proc/{}/status", e.tgid)).expect("the process is alive");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    let ids: Vec<&str> = nspid.split_whitespace().skip(1).collect();
    assert_eq!(ids, [e.tgid.to_string().as_str(), "1"], "{nspid}");
    let _ = unshare.kill();
    let _ = unshare.wait();

    // Inside a nested namespace, moving into the denied cgroup: killed.
    let marker2 = dir.join("marker-pidns-denied");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(&sh)
        .arg("-c")
        .arg(format!(
            "echo 0 > {} || exit 7; exec {} -c 'echo ran > {}'",
            denied.procs().display(),
            sleep.display(),
            marker2.display()
        ))
        .spawn()
        .unwrap();
    let _ = unshare.wait();
    let evs = events.take(denied.id, 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(
        evs[0].killed && evs[0].tgid != 1 && evs[0].ppid == unshare.id(),
        "{:?}",
        evs[0]
    );
    assert!(!marker2.exists());
    drop((cg, denied, probes));
    let _ = fs::remove_dir_all(dir);
}

/// A binary whose path and comm are not UTF-8: the event keeps the raw
/// bytes, the finding JSON is valid and lossy (U+FFFD), in an allowed and in
/// a denied (killed) cgroup.
#[test]
fn non_utf8_file_name_and_comm_give_valid_lossy_findings() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, mut events) = load(HookChoice::Auto);
    let dir = tempdir("utf8");
    let name = OsStr::from_bytes(b"iw-\xff\xfe\xc3(-bin");
    let bin = private_binary(&dir, name, "/bin/true");
    for v in [KernelVerdict::Allow, KernelVerdict::Deny] {
        let cg = TestCgroup::new(&format!("utf8-{}", v.as_str()));
        probes.set_verdict(cg.id, v).unwrap();
        let st = cg.command(&bin).status().unwrap();
        assert_eq!(
            st.signal() == Some(libc::SIGKILL),
            v == KernelVerdict::Deny,
            "{st:?}"
        );
        let evs = events.take(cg.id, 1);
        assert_eq!(evs.len(), 1, "{evs:?}");
        let e = &evs[0];
        assert_eq!(e.filename, bin.as_os_str().as_bytes(), "raw bytes kept");
        assert_eq!(e.comm, b"iw-\xff\xfe\xc3(-bin", "raw comm kept");
        let line = serde_json::to_string(&Finding::from_exec(e, None)).expect("serialises");
        let f: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        let shown = f["filename"].as_str().unwrap();
        assert!(
            shown.ends_with("iw-\u{fffd}\u{fffd}\u{fffd}(-bin"),
            "{shown}"
        );
        assert_eq!(f["comm"], "iw-\u{fffd}\u{fffd}\u{fffd}(-bin");
    }
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}

/// Arguments at the kernel's limit (ARG_MAX: a quarter of the stack limit,
/// 2 MiB here; 128 KiB per string): the exec event arrives whole and
/// right, and the exec is killed where denied; one byte too many is the
/// kernel's E2BIG, with no event.
#[test]
fn arguments_at_the_kernel_limit() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, mut events) = load(HookChoice::Auto);
    let dir = tempdir("argmax");
    let bin = private_binary(&dir, "iw-true-argmax", "/bin/true");
    // SAFETY: sysconf has no preconditions.
    let arg_max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) } as usize;
    const MAX_ARG_STRLEN: usize = 32 * 4096;
    let argv0 = bin.as_os_str().len() + 1 + 8;
    // Fill the budget: each argument costs its bytes, a NUL and a pointer.
    let mut args: Vec<String> = Vec::new();
    let mut used = argv0 + 8; // argv NULL, empty environment
                              // A little under the limit: the kernel also copies the file name.
    let budget = arg_max - 512;
    while used < budget {
        let room = (budget - used).saturating_sub(9).min(MAX_ARG_STRLEN - 1);
        if room == 0 {
            break;
        }
        args.push("a".repeat(room));
        used += room + 9;
    }
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    eprintln!("ARG_MAX {arg_max}: {} arguments, {total} bytes", args.len());
    for v in [KernelVerdict::Allow, KernelVerdict::Deny] {
        let cg = TestCgroup::new(&format!("argmax-{}", v.as_str()));
        probes.set_verdict(cg.id, v).unwrap();
        let mut child = cg
            .command(&bin)
            .args(&args)
            .env_clear()
            .spawn()
            .expect("exec at the limit");
        let pid = child.id();
        let st = child.wait().unwrap();
        assert_eq!(
            st.signal() == Some(libc::SIGKILL),
            v == KernelVerdict::Deny,
            "{st:?}"
        );
        if v == KernelVerdict::Allow {
            assert!(st.success());
        }
        let evs = events.take(cg.id, 1);
        assert_eq!(evs.len(), 1, "{evs:?}");
        let e = &evs[0];
        assert_eq!(
            (e.tgid, e.filename.as_slice(), e.killed),
            (pid, bin.as_os_str().as_bytes(), v == KernelVerdict::Deny)
        );
        assert!(!e.truncated && !e.name_unreadable);
    }
    // Over the limit: refused by the kernel before any exec event.
    let cg = TestCgroup::new("argmax-over");
    let mut over = args.clone();
    over.push("a".repeat(MAX_ARG_STRLEN - 1));
    let r = cg.command(&bin).args(&over).env_clear().spawn();
    let err = r.expect_err("exec over ARG_MAX must fail");
    assert_eq!(err.raw_os_error(), Some(libc::E2BIG), "{err}");
    let one_string = cg
        .command(&bin)
        .arg("a".repeat(MAX_ARG_STRLEN))
        .env_clear()
        .spawn();
    assert_eq!(
        one_string
            .expect_err("one string over 128 KiB")
            .raw_os_error(),
        Some(libc::E2BIG)
    );
    let late = events.take_within(cg.id, 1, Duration::from_millis(200));
    assert!(late.is_empty(), "no event for a refused exec: {late:?}");
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}
