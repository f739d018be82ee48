//! The kernel side's log (aya-log): records written by the eBPF programs
//! on their rare failure paths (a failed read, a failed signal), passed
//! to the agent's own log under the target [`TARGET`].
//!
//! The level is the agent's: [`level`] is the most verbose level the
//! agent's filter (`IMAGEWARDEN_LOG`) enables for [`TARGET`], written into
//! the programs' `.rodata` (`AYA_LOG_LEVEL`) before load. The verifier
//! then knows it as a constant and drops the statements below it. The
//! programs log at debug only ([`STATEMENT_LEVEL`]), so at the default
//! level (info) they cost no instruction (measured: the same verified and
//! translated size as with logging off) and no thread reads the log.
//! `IMAGEWARDEN_LOG=info,imagewarden::ebpf=debug` turns them on.
use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::Ebpf;
use tracing::Level;

/// The target of the kernel side's records (the programs set it).
pub const TARGET: &str = "imagewarden::ebpf";

/// The level of every statement of the programs (aya-log's debug).
pub const STATEMENT_LEVEL: u8 = 4;

/// aya-log's level for the agent's filter: 0 (off), 1 (error) to 5 (trace).
pub fn level() -> u8 {
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        5
    } else if tracing::enabled!(target: TARGET, Level::DEBUG) {
        4
    } else if tracing::enabled!(target: TARGET, Level::INFO) {
        3
    } else if tracing::enabled!(target: TARGET, Level::WARN) {
        2
    } else if tracing::enabled!(target: TARGET, Level::ERROR) {
        1
    } else {
        0
    }
}

/// A thread that moves the programs' log records into the agent's log.
/// Stopped (and joined) on drop.
pub struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the pump waits for a record before it checks for a stop.
const POLL_MS: i32 = 500;

/// Starts reading the programs' log records when their statements are
/// kept (the level is debug or more verbose). A failure is logged and
/// costs only the kernel side's log.
pub fn start(ebpf: &mut Ebpf) -> Option<LogPump> {
    if level() < STATEMENT_LEVEL {
        return None;
    }
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "the eBPF programs' log is not read: {}",
                super::attach::chain(&e)
            );
            return None;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("ebpf-log".into())
        .spawn(move || {
            let fd = logger.as_raw_fd();
            while !flag.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; the fd lives as long as `logger`.
                if unsafe { libc::poll(&mut p, 1, POLL_MS) } > 0 {
                    logger.flush();
                }
            }
        })
        .map_err(|e| tracing::warn!("the eBPF programs' log is not read: {e}"))
        .ok()?;
    Some(LogPump {
        stop,
        thread: Some(thread),
    })
}
