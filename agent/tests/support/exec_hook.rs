//! Which exec path a kernel must take, and what a denied exec looks like on
//! each: with BPF LSM `execve` fails with EPERM and nothing of the image
//! runs; with the signal path the new program is killed by SIGKILL before
//! its first instruction. Included with
//! `#[path = "support/exec_hook.rs"] mod exec_hook;`.
#![allow(dead_code)]

use std::{
    os::unix::process::ExitStatusExt,
    process::{Command, ExitStatus},
};

use imagewarden::probes::Enforcement;

/// The active LSMs (`/sys/kernel/security/lsm`; securityfs is mounted by
/// the probes at load, so read this after loading).
pub fn active_lsms() -> Option<String> {
    std::fs::read_to_string(imagewarden::probes::ACTIVE_LSMS)
        .ok()
        .map(|s| s.trim().to_string())
}

/// What the agent must pick here, when that is known: from
/// `IMAGEWARDEN_EXPECT_ENFORCEMENT` (set by `cargo xtask vmtest`, which
/// knows what it booted), else signals wherever `bpf` is not an active LSM.
/// `None`: `bpf` is active but the kernel may still refuse the program
/// (this development host's lockdown does): either, with a recorded reason.
pub fn expected_enforcement() -> Option<Enforcement> {
    match std::env::var("IMAGEWARDEN_EXPECT_ENFORCEMENT").as_deref() {
        Ok("lsm") => return Some(Enforcement::Lsm),
        Ok("signal") => return Some(Enforcement::Signal),
        Ok(other) => panic!("IMAGEWARDEN_EXPECT_ENFORCEMENT={other:?}: expected lsm or signal"),
        Err(_) => {}
    }
    match active_lsms() {
        Some(l) if !imagewarden::probes::bpf_lsm_listed(&l) => Some(Enforcement::Signal),
        _ => None,
    }
}

/// Asserts that the enforcement the probes picked is the one this kernel calls for.
/// Prints `agent picked enforcement <lsm|signal>` (read by `cargo xtask vmtest` for its table).
pub fn assert_enforcement_matches_kernel(got: Enforcement, fallbacks: &[String]) {
    let lsms = active_lsms();
    eprintln!(
        "agent picked enforcement {} (active LSMs {lsms:?}; fallbacks {fallbacks:?})",
        got.as_str()
    );
    match expected_enforcement() {
        Some(want) => assert_eq!(got, want, "active LSMs {lsms:?}; fallbacks {fallbacks:?}"),
        None if got == Enforcement::Signal => assert!(
            fallbacks.iter().any(|f| f.contains("BPF LSM refused")),
            "bpf is an active LSM ({lsms:?}) but signals were used without a recorded refusal: {fallbacks:?}"
        ),
        None => {}
    }
    if got == Enforcement::Signal
        && lsms
            .as_deref()
            .is_some_and(|l| !imagewarden::probes::bpf_lsm_listed(l))
    {
        assert!(
            fallbacks.iter().any(|f| f.contains("BPF LSM not active")),
            "the fallback must say that bpf is not an active LSM: {fallbacks:?}"
        );
    }
}

/// What became of an exec.
#[derive(Debug)]
pub enum Outcome {
    /// The program ran and exited (or died of something other than SIGKILL).
    Ran(ExitStatus),
    /// Killed by SIGKILL (the signal path).
    Killed,
    /// `execve` failed with EPERM (BPF LSM): no process image was replaced.
    Refused,
}

impl Outcome {
    pub fn of(cmd: &mut Command) -> Outcome {
        match cmd.status() {
            Ok(st) if st.signal() == Some(libc::SIGKILL) => Outcome::Killed,
            Ok(st) => Outcome::Ran(st),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Outcome::Refused,
            Err(e) => panic!("spawning {cmd:?}: {e}"),
        }
    }

    pub fn ran(&self) -> bool {
        matches!(self, Outcome::Ran(_))
    }

    pub fn code(&self) -> Option<i32> {
        match self {
            Outcome::Ran(st) => st.code(),
            _ => None,
        }
    }

    /// Asserts the denial `enforcement` produces: EPERM from execve with
    /// LSM, SIGKILL with signals.
    pub fn assert_denied(&self, enforcement: Enforcement) {
        match (enforcement, self) {
            (Enforcement::Lsm, Outcome::Refused) | (Enforcement::Signal, Outcome::Killed) => {}
            (e, o) => panic!(
                "a denied exec under {} enforcement must be {}, got {o:?}",
                e.as_str(),
                match e {
                    Enforcement::Lsm => "refused with EPERM",
                    Enforcement::Signal => "killed by SIGKILL",
                }
            ),
        }
    }
}
