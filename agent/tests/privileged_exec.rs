//! Privileged tests: the real kernel, real execs, real cgroup v2 directories.
//! They need root. Without it they print SKIPPED, and under `CI=true` they
//! fail instead: CI must run them.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

#[path = "support/exec_hook.rs"]
mod exec_hook;
#[path = "support/host.rs"]
mod host;

use exec_hook::{assert_enforcement_matches_kernel, Outcome};
use host::{private_binary, privileged, stopped, tempdir, wait_for, TestCgroup};
use imagewarden::probes::{
    event::{ExecRecord, Hook, KernelVerdict},
    reader::drain,
    Enforcement, ErrorCause, HookChoice, ProbeOptions, Probes,
};

/// The tests count kernel-wide events: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn load(opts: ProbeOptions) -> (Probes, aya::maps::RingBuf<aya::maps::MapData>) {
    let mut p = Probes::load(&opts).unwrap_or_else(|e| panic!("loading probes: {e}"));
    let ring = p.take_events().expect("ring buffer");
    (p, ring)
}

/// Everything read from the ring buffer, handed out per cgroup.
struct Events {
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    seen: Vec<ExecRecord>,
}

impl Events {
    fn new(ring: aya::maps::RingBuf<aya::maps::MapData>) -> Self {
        Events {
            ring,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 5 s) until `n` events of `cgroup_id` arrived; takes them.
    fn take(&mut self, cgroup_id: u64, n: usize) -> Vec<ExecRecord> {
        let deadline = Instant::now() + Duration::from_secs(5);
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
}

fn exec_is_reported(hook: HookChoice, want: Hook) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (probes, ring) = load(ProbeOptions {
        hook,
        ..Default::default()
    });
    let mut events = Events::new(ring);
    let dir = tempdir("report");
    let bin = private_binary(&dir, "iw-true-report", "/bin/true");
    let cg = TestCgroup::new("report");

    let child = cg.command(&bin).spawn().expect("spawn");
    let child_pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "child failed: {:?}", out.status);

    let evs = events.take(cg.id, 1);
    assert_eq!(
        evs.len(),
        1,
        "expected exactly one exec in cgroup {}: {evs:?}",
        cg.id
    );
    let e = &evs[0];
    assert_eq!(e.hook, want);
    assert_eq!(e.filename, bin.as_os_str().as_encoded_bytes(), "file name");
    assert_eq!(e.tgid, child_pid, "pid");
    assert_eq!(e.pid, child_pid, "thread id after exec");
    assert_eq!(e.ppid, std::process::id(), "ppid");
    assert_eq!(e.uid, 0);
    assert_eq!(e.comm, b"iw-true-report");
    assert_eq!(e.verdict, KernelVerdict::Unknown);
    assert!(
        !e.killed && !e.fileless && !e.truncated && !e.name_unreadable && !e.nlink_unreadable,
        "{e:?}"
    );
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn exec_in_fresh_cgroup_is_reported_tp_btf() {
    exec_is_reported(HookChoice::TpBtf, Hook::TpBtf);
}

#[test]
fn exec_in_fresh_cgroup_is_reported_classic_tracepoint_fallback() {
    exec_is_reported(HookChoice::Tracepoint, Hook::Tracepoint);
}

/// A denied cgroup's exec fails before the new program runs, through the
/// mechanism `try_lsm` and the kernel give: with BPF LSM `execve` returns
/// EPERM to the caller (and no exec event follows: the image was never
/// replaced); with signals the new program dies by SIGKILL at its exec event.
/// Either way its first act, writing a marker, never happens.
fn denied_exec_is_stopped(hook: HookChoice, try_lsm: bool) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, ring) = load(ProbeOptions {
        hook,
        enforce: true,
        try_lsm,
        ..Default::default()
    });
    let mut events = Events::new(ring);
    let enforcement = probes.enforcement;
    if try_lsm {
        assert_enforcement_matches_kernel(enforcement, &probes.fallbacks);
    } else {
        assert_eq!(
            enforcement,
            Enforcement::Signal,
            "try_lsm=false must enforce with signals"
        );
    }
    let lsm = enforcement == Enforcement::Lsm;
    let dir = tempdir("deny");
    let sh = private_binary(&dir, "iw-sh-deny", "/bin/sh");
    let denied = TestCgroup::new("denied");
    let other = TestCgroup::new("other");
    probes
        .set_verdict(denied.id, KernelVerdict::Deny)
        .expect("set verdict");
    let before = probes.counters().expect("counters");

    // The program's first act would be to write a marker.
    let marker = dir.join("marker-denied");
    let outcome = Outcome::of(
        denied
            .command(&sh)
            .arg("-c")
            .arg(format!("echo ran > {}", marker.display())),
    );
    outcome.assert_denied(enforcement);

    // The same program in another cgroup, and in ours, is untouched.
    let marker2 = dir.join("marker-other");
    let st = other
        .command(&sh)
        .arg("-c")
        .arg(format!("echo ran > {}", marker2.display()))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "exec in an unrelated cgroup was disturbed: {st:?}"
    );
    assert_eq!(fs::read_to_string(&marker2).unwrap(), "ran\n");
    let st = Command::new(&sh).arg("-c").arg("exit 3").status().unwrap();
    assert_eq!(
        st.code(),
        Some(3),
        "exec in the test's own cgroup was disturbed"
    );
    assert!(
        !marker.exists(),
        "the denied program ran: marker {} exists",
        marker.display()
    );

    let evs = events.take(denied.id, 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = &evs[0];
    assert_eq!(e.verdict, KernelVerdict::Deny);
    assert_eq!(e.filename, sh.as_os_str().as_encoded_bytes());
    assert_eq!(e.ppid, std::process::id(), "ppid");
    assert_eq!(e.uid, 0);
    assert!(!e.truncated && !e.name_unreadable, "{e:?}");
    if lsm {
        assert!(
            e.lsm_denied && !e.killed && e.hook == Hook::Lsm,
            "LSM event expected: {e:?}"
        );
    } else {
        let want = if hook == HookChoice::Tracepoint {
            Hook::Tracepoint
        } else {
            Hook::TpBtf
        };
        assert!(
            e.killed && !e.lsm_denied && e.hook == want,
            "signal event from {want:?} expected: {e:?}"
        );
        // The exec happened (the kill comes at its event) under the new name.
        assert_eq!(e.comm, b"iw-sh-deny");
    }
    let others = events.take(other.id, 1);
    assert_eq!(others.len(), 1);
    assert!(
        !others[0].killed && others[0].verdict == KernelVerdict::Unknown,
        "{:?}",
        others[0]
    );
    // With LSM the image was never replaced: no exec event of the denied
    // cgroup arrived before the later exec of the other cgroup did.
    let late = events.take(denied.id, 0);
    assert!(late.is_empty(), "events after the denial: {late:?}");
    let after = probes.counters().unwrap();
    let (kills, denies) = (
        after.kills - before.kills,
        after.lsm_denies - before.lsm_denies,
    );
    assert_eq!(
        (kills, denies),
        if lsm { (0, 1) } else { (1, 0) },
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.errors.get(ErrorCause::Signal),
        before.errors.get(ErrorCause::Signal),
        "no failed signal: {before:?} -> {after:?}"
    );

    // Back to audit: the same cgroup runs again, and the event still says deny.
    probes.set_enforce(false).unwrap();
    let marker3 = dir.join("marker-audit");
    let st = denied
        .command(&sh)
        .arg("-c")
        .arg(format!("echo ran > {}", marker3.display()))
        .status()
        .unwrap();
    assert!(
        st.success() && marker3.exists(),
        "audit mode must not kill: {st:?}"
    );
    let evs = events.take(denied.id, 1);
    assert!(
        evs.iter()
            .any(|e| e.verdict == KernelVerdict::Deny && !e.killed && !e.lsm_denied),
        "{evs:?}"
    );
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}

/// The agent's default: BPF LSM where the kernel runs it, else signals (with
/// the reason); the hook picked must match the kernel.
#[test]
fn denied_cgroup_exec_is_refused_by_lsm_where_active() {
    denied_exec_is_stopped(HookChoice::Auto, true);
}

#[test]
fn denied_cgroup_exec_is_killed_before_it_runs_tp_btf() {
    denied_exec_is_stopped(HookChoice::TpBtf, false);
}

#[test]
fn denied_cgroup_exec_is_killed_before_it_runs_classic_tracepoint() {
    denied_exec_is_stopped(HookChoice::Tracepoint, false);
}

/// The programs at the agent's default level (info: every aya-log
/// statement dropped by the verifier) and with every statement kept
/// (trace) pass the verifier on every hook, LSM included where it is
/// active, and still stop a denied exec. (Elsewhere the tests load with no
/// subscriber: level 0.) No kernel failure can be provoked from here, so
/// the records themselves are not checked.
#[test]
fn programs_with_their_kernel_log_statements_pass_the_verifier() {
    for (filter, level) in [("info", 3), ("info,imagewarden::ebpf=trace", 5)] {
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .finish();
        tracing::subscriber::with_default(sub, || {
            assert_eq!(imagewarden::probes::ebpf_log::level(), level, "{filter}");
            denied_exec_is_stopped(HookChoice::Auto, true);
            denied_exec_is_stopped(HookChoice::Tracepoint, false);
        });
    }
}

#[test]
fn flood_against_tiny_ring_buffer_is_counted_not_lost() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    // One page: room for about a dozen 320-byte events.
    let (probes, mut ring) = load(ProbeOptions {
        ringbuf_bytes: 4096,
        ..Default::default()
    });
    let dir = tempdir("flood");
    let bin = private_binary(&dir, "iw-true-flood", "/bin/true");
    let cg = TestCgroup::new("flood");
    drain(&mut ring);
    let c0 = probes.counters().unwrap();
    const N: usize = 300;
    for _ in 0..N {
        let st = cg.command(&bin).status().expect("spawn");
        assert!(st.success());
    }
    // Each exec's event was submitted or counted as dropped before the exec
    // returned, so before its process exited: nothing of ours is in flight.
    // The counters are machine-wide (other execs on the machine count too),
    // so they are compared with this test's own execs, not for equality.
    let got = drain(&mut ring);
    let c1 = probes.counters().unwrap();
    let ours = got.iter().filter(|r| r.cgroup_id == cg.id).count();
    let drops = c1.ringbuf_drops - c0.ringbuf_drops;
    let execs = c1.execs - c0.execs;
    eprintln!(
        "flood: execs={execs} received={} (ours {ours}) drops={drops}",
        got.len()
    );
    assert!(ours <= 16, "a 4 KiB ring cannot hold {ours} events");
    assert!(execs >= N as u64, "the kernel saw {execs} of our {N} execs");
    // Every exec of ours not delivered is counted as dropped...
    assert!(
        drops as usize >= N - ours,
        "every exec not delivered must be counted: drops {drops}, ours {ours}"
    );
    // ...and a drop is an exec the kernel saw.
    assert!(drops <= execs, "drops {drops} > execs {execs}");
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn fileless_and_long_names_are_flagged() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (probes, ring) = load(ProbeOptions::default());
    let mut events = Events::new(ring);
    let cg = TestCgroup::new("flags");

    // memfd: a program with no name on disk, exec'd through /proc/self/fd.
    let name = std::ffi::CString::new("iw-memfd").unwrap();
    // SAFETY: valid C string; no MFD_CLOEXEC so the child inherits the fd.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd.
    let mut f = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all(&fs::read("/bin/true").unwrap()).unwrap();
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let st = cg.command(&path).status().expect("exec memfd");
    assert!(st.success());
    let evs = events.take(cg.id, 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(
        evs[0].fileless,
        "memfd exec must be flagged fileless: {:?}",
        evs[0]
    );
    drop(f);

    // A path longer than the kernel buffer: cut at 255 bytes and flagged.
    let mut long = tempdir("long");
    let base = long.clone();
    while long.as_os_str().len() < 400 {
        long = long.join("d".repeat(60));
    }
    fs::create_dir_all(&long).unwrap();
    let bin = private_binary(&long, "iw-true-long", "/bin/true");
    let st = cg.command(&bin).status().expect("exec long path");
    assert!(st.success());
    let evs = events.take(cg.id, 1);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(evs[0].truncated && !evs[0].fileless, "{:?}", evs[0]);
    let full = bin.as_os_str().as_encoded_bytes();
    assert_eq!(evs[0].filename.len(), 255);
    assert_eq!(&evs[0].filename[..], &full[..255]);
    drop(probes);
    let _ = fs::remove_dir_all(base);
}

/// A container announced before its cgroup exists is recognised by its
/// cgroup names at the very first exec; an unannounced container-like cgroup
/// is held (SIGSTOP) until user space decides.
#[test]
fn announced_names_are_enforced_and_unknown_containers_held() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, ring) = load(ProbeOptions {
        enforce: true,
        ..Default::default()
    });
    let mut events = Events::new(ring);
    let dir = tempdir("names");
    let sh = private_binary(&dir, "iw-sh-names", "/bin/sh");
    let parent = TestCgroup::new("names");
    let parent_name = parent.path.file_name().unwrap().as_encoded_bytes().to_vec();

    // Announced and denied: the verdict is stored before the cgroup exists.
    let leaf_denied = "iw-denied-leaf";
    probes
        .set_name_verdict(
            &agent_common::CgroupKey::new(&parent_name, leaf_denied.as_bytes()),
            KernelVerdict::Deny,
        )
        .unwrap();
    let c = parent.path.join(leaf_denied);
    fs::create_dir(&c).unwrap();
    let denied = TestCgroup {
        id: imagewarden::probes::cgroup_id_of(&c).unwrap(),
        path: c,
    };
    let marker = dir.join("marker-names");
    Outcome::of(
        denied
            .command(&sh)
            .arg("-c")
            .arg(format!("echo ran > {}", marker.display())),
    )
    .assert_denied(probes.enforcement);
    assert!(!marker.exists());
    let ev = events.take(denied.id, 1);
    assert_eq!(ev.len(), 1);
    assert!(
        (ev[0].killed || ev[0].lsm_denied) && ev[0].verdict == KernelVerdict::Deny,
        "{:?}",
        ev[0]
    );
    assert!(probes.counters().unwrap().name_hits >= 1);

    // Not announced, named like a container (64 hex digits): held.
    let hex = "cri-containerd-".to_string() + &"0123456789abcdef".repeat(4) + ".scope";
    let c = parent.path.join(&hex);
    fs::create_dir(&c).unwrap();
    let held = TestCgroup {
        id: imagewarden::probes::cgroup_id_of(&c).unwrap(),
        path: c,
    };
    let marker = dir.join("marker-held");
    let mut child = held
        .command(&sh)
        .arg("-c")
        .arg(format!("echo ran > {}", marker.display()))
        .spawn()
        .unwrap();
    let ev = events.take(held.id, 1);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].held && ev[0].verdict == KernelVerdict::Hold,
        "{:?}",
        ev[0]
    );
    // The positive signal: the held process is stopped, not gone.
    wait_for("the held process to stop", Duration::from_secs(5), || {
        stopped(child.id()).then_some(())
    });
    assert!(!marker.exists(), "held program ran");
    // User space decides "allow": the program continues from its first instruction.
    probes.set_verdict(held.id, KernelVerdict::Allow).unwrap();
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "ran\n");
    drop(denied);
    drop(held);
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}

/// Without --all-execs the kernel emits only what user space acts on:
/// routine execs cost no ring-buffer submit; denied ones still arrive, and
/// fileless ones in a container's cgroup (known by id: here ALLOW); a
/// fileless exec in a host cgroup is not emitted (runc execs a memfd copy
/// of itself on every container start), and every exec is still counted.
#[test]
fn routine_execs_are_counted_but_not_emitted_unless_asked() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, ring) = load(ProbeOptions {
        emit_all: false,
        ..Default::default()
    });
    let mut events = Events::new(ring);
    let routine = TestCgroup::new("routine");
    let denied = TestCgroup::new("quiet-denied");
    let container = TestCgroup::new("quiet-container");
    probes.set_verdict(denied.id, KernelVerdict::Deny).unwrap();
    probes
        .set_verdict(container.id, KernelVerdict::Allow)
        .unwrap();
    let c0 = probes.counters().unwrap();
    for _ in 0..20 {
        assert!(routine
            .command(Path::new("/bin/true"))
            .status()
            .unwrap()
            .success());
    }
    assert!(
        denied
            .command(Path::new("/bin/true"))
            .status()
            .unwrap()
            .success(),
        "audit mode: runs"
    );
    // A fileless exec in the routine (host) cgroup, then one in the
    // container's: only the second is emitted.
    let memfd_exec = |cg: &TestCgroup| {
        let name = std::ffi::CString::new("iw-quiet-memfd").unwrap();
        // SAFETY: valid C string; the child inherits the fd.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: we own fd.
        let mut f = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(&fs::read("/bin/true").unwrap()).unwrap();
        assert!(cg
            .command(Path::new(&format!("/proc/self/fd/{fd}")))
            .status()
            .unwrap()
            .success());
    };
    memfd_exec(&routine);
    memfd_exec(&container);

    let d = events.take(denied.id, 1);
    assert_eq!(d.len(), 1, "denied exec must be emitted: {d:?}");
    let c = events.take(container.id, 1);
    assert_eq!(c.len(), 1, "the container's fileless exec: {c:?}");
    assert!(c[0].fileless && c[0].in_container, "{:?}", c[0]);
    assert_eq!(c[0].file_name, b"memfd:iw-quiet-memfd", "{:?}", c[0]);
    // The routine cgroup's events were reserved before the container's,
    // which arrived: none of them is in the ring.
    let r = events.take(routine.id, 0);
    assert!(
        r.is_empty(),
        "routine execs, fileless or not, stay quiet: {r:?}"
    );
    let c1 = probes.counters().unwrap();
    assert!(
        c1.execs - c0.execs >= 23,
        "every exec is counted: {c0:?} -> {c1:?}"
    );
}

/// The kernel caches the default verdict of cgroups it decided by name
/// (routine host cgroups). Announcing a verdict for those names later, or
/// declaring their parent a containerd namespace, must take effect at the
/// very next exec: the cache may never hide a change.
#[test]
fn names_announced_after_a_cached_decision_take_effect_at_the_next_exec() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let (mut probes, ring) = load(ProbeOptions {
        enforce: true,
        ..Default::default()
    });
    let mut events = Events::new(ring);
    let dir = tempdir("cache");
    let sh = private_binary(&dir, "iw-sh-cache", "/bin/sh");
    let parent = TestCgroup::new("cache");
    let parent_name = parent.path.file_name().unwrap().as_encoded_bytes().to_vec();
    let mk = |leaf: &str| parent.child(leaf);
    let run = |cg: &TestCgroup, tag: &str| {
        let marker = dir.join(format!("marker-{tag}"));
        let _ = fs::remove_file(&marker);
        let o = Outcome::of(
            cg.command(&sh)
                .arg("-c")
                .arg(format!("echo ran > {}", marker.display())),
        );
        (o, marker.exists())
    };
    let enforcement = probes.enforcement;

    // 1. Decided by name as "nothing known" (cached), then denied by name.
    let late = mk("iw-late-leaf");
    for i in 0..3 {
        let (st, ran) = run(&late, &format!("late-{i}"));
        assert!(
            st.code() == Some(0) && ran,
            "unknown host cgroup runs: {st:?}"
        );
    }
    assert_eq!(events.take(late.id, 3).len(), 3);
    let hits0 = probes.counters().unwrap().name_hits;
    probes
        .set_name_verdict(
            &agent_common::CgroupKey::new(&parent_name, b"iw-late-leaf"),
            KernelVerdict::Deny,
        )
        .unwrap();
    let (st, ran) = run(&late, "late-denied");
    st.assert_denied(enforcement); // not the stale cached "unknown"
    assert!(!ran);
    assert!(probes.counters().unwrap().name_hits > hits0);
    let ev = events.take(late.id, 1);
    assert!(
        ev.len() == 1 && (ev[0].killed || ev[0].lsm_denied),
        "{ev:?}"
    );
    // Cleared again: back to the default.
    probes
        .clear_name_verdict(&agent_common::CgroupKey::new(&parent_name, b"iw-late-leaf"))
        .unwrap();
    let (st, ran) = run(&late, "late-cleared");
    assert!(st.code() == Some(0) && ran, "{st:?}");

    // 2. Decided (cached) under a parent that later becomes a hold parent.
    let child = mk("plain-name");
    let (st, ran) = run(&child, "child-0");
    assert!(st.code() == Some(0) && ran, "{st:?}");
    assert_eq!(events.take(child.id, 1).len(), 1);
    probes
        .add_hold_parent(parent.id, agent_common::hold_parent::NAMESPACE)
        .unwrap();
    let marker = dir.join("marker-child-held");
    let mut p = child
        .command(&sh)
        .arg("-c")
        .arg(format!("echo ran > {}", marker.display()))
        .spawn()
        .unwrap();
    let ev = events.take(child.id, 1);
    assert!(
        ev.len() == 1 && ev[0].held,
        "cached verdict hid the new hold parent: {ev:?}"
    );
    assert!(!marker.exists());
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(p.id() as i32, libc::SIGKILL) };
    let _ = p.wait();
    drop(late);
    drop(child);
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}

/// Issue 13, case 9, on the host's real cgroup2: hold parents are matched
/// by cgroup id (the full path), not by name, and a nested runtime's
/// containers are judged as the container they run in.
/// - `<ns>/web3` under the namespace cgroup marked NAMESPACE: held;
/// - `other/default/foo`, merely *named* like the namespace: runs (before,
///   by name, it was held, and the agent killed it after the hold timeout);
/// - under a container cgroup marked CONTAINER (`<ns>/web1`, allowed): a
///   nested `default/web2` (`/<ns>/<id>/<ns2>/<id2>`) and a kind node's
///   `kubelet.slice/cri-containerd-<id>.scope` run, unheld; once the outer
///   container is denied, the nested ones are denied with it;
/// - the same container-like leaf under an unmarked cgroup: held.
#[test]
fn hold_parents_by_cgroup_id_and_nested_containers_judged_as_the_outer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    use agent_common::hold_parent;
    let (mut probes, ring) = load(ProbeOptions {
        enforce: true,
        ..Default::default()
    });
    let enforcement = probes.enforcement;
    let mut events = Events::new(ring);
    let dir = tempdir("nested");
    let sh = private_binary(&dir, "iw-sh-nested", "/bin/sh");
    let run = |cg: &TestCgroup, tag: &str| {
        let marker = dir.join(format!("marker-{tag}"));
        let _ = fs::remove_file(&marker);
        let o = Outcome::of(
            cg.command(&sh)
                .arg("-c")
                .arg(format!("echo ran > {}", marker.display())),
        );
        (o, marker.exists())
    };
    // Spawns `sh` in `cg`, expects the kernel to hold it; kills it.
    let expect_held = |events: &mut Events, cg: &TestCgroup, tag: &str| {
        let marker = dir.join(format!("marker-{tag}"));
        let mut child = cg
            .command(&sh)
            .arg("-c")
            .arg(format!("echo ran > {}", marker.display()))
            .spawn()
            .unwrap();
        let ev = events.take(cg.id, 1);
        assert!(
            ev.len() == 1 && ev[0].held && ev[0].verdict == KernelVerdict::Hold,
            "{tag}: must be held: {ev:?}"
        );
        // The stop is delivered on the way back to user space, after the
        // event: wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stopped(child.id()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stopped(child.id()), "{tag}: held process must be stopped");
        assert!(!marker.exists(), "{tag}: held program ran");
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    };
    let hex = |c: &str| c.repeat(64);

    let root = TestCgroup::new("nested");
    let ns = root.child("default");
    probes
        .add_hold_parent(ns.id, hold_parent::NAMESPACE)
        .unwrap();
    // The namespace's own unclassified child: held.
    let web3 = ns.child("web3");
    expect_held(&mut events, &web3, "ns-child");

    // Named like the namespace, elsewhere: not a hold parent.
    let other = root.child("other");
    let decoy_ns = other.child("default");
    let decoy = decoy_ns.child("foo");
    let (o, ran) = run(&decoy, "decoy");
    assert!(
        o.code() == Some(0) && ran,
        "a cgroup merely named like a namespace was not let run: {o:?}"
    );

    // A known, allowed container, and a nested runtime inside it.
    let outer = ns.child("web1");
    probes.set_verdict(outer.id, KernelVerdict::Allow).unwrap();
    probes
        .add_hold_parent(outer.id, hold_parent::CONTAINER)
        .unwrap();
    let inner_ns = outer.child("default");
    let inner = inner_ns.child("web2");
    let kubelet = outer.child("kubelet.slice");
    let kind_pod = kubelet.child("kubelet-kubepods-besteffort-pod1.slice");
    let kind_ctr = kind_pod.child(&format!("cri-containerd-{}.scope", hex("a")));
    for (cg, tag) in [(&inner, "nested-ctr"), (&kind_ctr, "nested-kind")] {
        let (o, ran) = run(cg, tag);
        assert!(
            o.code() == Some(0) && ran,
            "{tag}: nested in an allowed container, it must run unheld: {o:?}"
        );
    }
    // The outer container denied: what it runs nested is denied with it.
    probes.set_verdict(outer.id, KernelVerdict::Deny).unwrap();
    for (cg, tag) in [
        (&inner, "nested-ctr-denied"),
        (&kind_ctr, "nested-kind-denied"),
    ] {
        let (o, ran) = run(cg, tag);
        o.assert_denied(enforcement);
        assert!(!ran, "{tag}: ran");
        let ev = events.take(cg.id, 1);
        assert!(
            ev.iter()
                .any(|e| (e.killed || e.lsm_denied) && e.verdict == KernelVerdict::Deny),
            "{tag}: {ev:?}"
        );
    }

    // The same container-like leaf under a cgroup no container owns: held.
    let plain = root.child("plain");
    let lone = plain.child(&format!("cri-containerd-{}.scope", hex("b")));
    expect_held(&mut events, &lone, "unowned-container-like");

    // Unmarked: the nested cgroups are unknown containers again.
    probes.remove_hold_parent(outer.id).unwrap();
    probes.clear_verdict(outer.id).unwrap();
    expect_held(&mut events, &kind_ctr, "after-unmark");
    drop((
        lone, plain, kind_ctr, kind_pod, kubelet, inner, inner_ns, outer,
    ));
    drop((decoy, decoy_ns, other, web3, ns, root));
    drop(probes);
    let _ = fs::remove_dir_all(dir);
}
