//! The `imagewarden` binary as a test child: spawned with its arguments,
//! stopped on drop (SIGTERM, then SIGKILL after a grace period), its stdout
//! read as JSON findings and its stderr as log lines, both on threads.
//! Self-contained (std, `libc`, `serde_json`), so that a test may include
//! only this file: `#[path = "support/agent.rs"] mod agent;`
//! (`support::agent` otherwise).
#![allow(dead_code)]

use std::{
    cell::RefCell,
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The log line the agent prints once its probes are attached and its
/// inventory is synced.
pub const RUNNING: &str = "agent running";

/// The arguments of an agent that enforces on its own, without the
/// Kubernetes API: `run --standalone --mode enforce`.
pub const STANDALONE_ENFORCE: [&str; 4] = ["run", "--standalone", "--mode", "enforce"];

/// A `--runtime-endpoint` where no runtime answers: whatever runs on the
/// machine stays out of the test.
pub const NO_RUNTIME: &str = "unix:///nonexistent.sock";

/// A running agent. Dropping it stops it; [`AgentProcess::stop`] also
/// asserts a clean exit.
pub struct AgentProcess {
    child: Option<Child>,
    /// stdout lines: a finding, or why the line is not one (non-UTF-8, not
    /// JSON) — reported by the test thread, where a panic fails the test.
    lines: Receiver<Result<Value, String>>,
    seen: RefCell<Vec<Value>>,
    log_rx: Receiver<String>,
    log: RefCell<Vec<String>>,
    metrics_addr: RefCell<Option<String>>,
    /// When the child was spawned.
    pub started: Instant,
    /// Spawn -> ready line.
    pub ready_after: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// An agent that exited before it was ready: see [`AgentProcess::try_spawn`].
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    /// Its stderr (ANSI colours removed).
    pub log: String,
}

impl AgentProcess {
    /// `imagewarden` (the binary cargo built for this test) with the log
    /// level of `IMAGEWARDEN_LOG` (default `info`); the caller adds args.
    pub fn command() -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imagewarden"));
        c.env(
            "IMAGEWARDEN_LOG",
            std::env::var("IMAGEWARDEN_LOG").unwrap_or_else(|_| "info".into()),
        );
        c
    }

    /// `imagewarden ARGS`, waited for until it logs [`RUNNING`] (30 s).
    pub fn start(args: &[&str]) -> AgentProcess {
        let mut c = Self::command();
        c.args(args);
        Self::spawn(c, |l| l.contains(RUNNING), Duration::from_secs(30))
    }

    /// Spawns `cmd` (stdout and stderr piped here) and waits until a log
    /// line satisfies `ready`; panics with the log if the deadline passes
    /// or the agent exits first.
    pub fn spawn(cmd: Command, ready: impl Fn(&str) -> bool, timeout: Duration) -> AgentProcess {
        Self::try_spawn(cmd, ready, timeout).unwrap_or_else(|e| {
            panic!(
                "the agent exited ({:?}) before it was ready; its log:\n{}",
                e.status, e.log
            )
        })
    }

    /// [`Self::spawn`] for a test that expects the agent may refuse to
    /// start: its exit status and log when it exited before `ready`.
    /// Panics only when it neither got ready nor exited within `timeout`.
    pub fn try_spawn(
        mut cmd: Command,
        ready: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<AgentProcess, Exited> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let raw = std::mem::take(&mut buf);
                let v = match String::from_utf8(raw) {
                    Ok(s) => serde_json::from_str::<Value>(&s)
                        .map_err(|e| format!("not JSON ({e}): {s:?}")),
                    Err(e) => Err(format!("not UTF-8: {:?}", e.as_bytes())),
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let (ltx, log_rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let l = strip_ansi(&l);
                eprintln!("agent: {l}");
                if ltx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut a = AgentProcess {
            child: Some(child),
            lines,
            seen: RefCell::default(),
            log_rx,
            log: RefCell::default(),
            metrics_addr: RefCell::default(),
            started,
            ready_after: Duration::ZERO,
            grace: Duration::from_secs(10),
        };
        if a.wait_for_log(&ready, timeout).is_none() {
            // stderr closed before the deadline: the agent is exiting.
            let deadline = started + timeout + a.grace;
            while Instant::now() < deadline {
                if let Some(status) = a.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    a.child = None;
                    let log = a.log_text();
                    return Err(Exited { status, log });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!(
                "the agent was neither ready nor exited within {timeout:?}; its log:\n{}",
                a.log_text()
            );
        }
        a.ready_after = started.elapsed();
        Ok(a)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent already stopped").id()
    }

    /// Takes one log line, keeping it; notes the `--listen` address.
    fn take_log(&self, l: String) {
        if l.contains("serving /metrics") {
            *self.metrics_addr.borrow_mut() = listen_addr(&l);
        }
        self.log.borrow_mut().push(l);
    }

    /// Waits until a log line (ANSI colours removed) satisfies `pred`,
    /// looking at the lines already seen first.
    pub fn wait_for_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_for_log_since(0, pred, timeout)
    }

    /// [`Self::wait_for_log`], panicking (with the log) when no such line
    /// came: `what` names the line.
    pub fn log_line(&self, what: &str, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_log(pred, timeout).unwrap_or_else(|| {
            panic!(
                "no log line within {timeout:?}: {what}\n{}",
                self.log_text()
            )
        })
    }

    /// How many log lines the agent printed so far: a mark for
    /// [`Self::wait_for_log_since`].
    pub fn log_mark(&self) -> usize {
        self.drain_log();
        self.log.borrow().len()
    }

    /// [`Self::wait_for_log`] among the lines printed after `mark`.
    pub fn wait_for_log_since(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        if let Some(l) = self.log.borrow().iter().skip(mark).find(|l| pred(l)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .log_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    let hit = pred(&l);
                    self.take_log(l.clone());
                    if hit {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The log lines printed after `mark` (see [`Self::log_mark`]).
    pub fn log_since(&self, mark: usize) -> Vec<String> {
        self.drain_log();
        self.log.borrow().iter().skip(mark).cloned().collect()
    }

    /// Whether a log line seen so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.drain_log();
        self.log.borrow().iter().any(|l| l.contains(needle))
    }

    fn drain_log(&self) {
        while let Ok(l) = self.log_rx.try_recv() {
            self.take_log(l);
        }
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.drain_log();
        self.log.borrow().join("\n")
    }

    /// Keeps one stdout line; a line that is not a JSON finding fails the
    /// test here, on the test's thread.
    fn take_line(&self, r: Result<Value, String>) -> Value {
        let v = r.unwrap_or_else(|e| {
            panic!("the agent printed a line on stdout that is not a finding: {e}")
        });
        self.seen.borrow_mut().push(v.clone());
        v
    }

    /// Waits for a finding satisfying `pred`, looking at those already seen
    /// first (a finding can be waited for more than once).
    pub fn wait_for_finding(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        if let Some(v) = self.seen.borrow().iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(r) => {
                    let v = self.take_line(r);
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// [`Self::wait_for_finding`], panicking (with the findings seen and the
    /// log) when none came: `what` names the finding.
    pub fn finding(&self, what: &str, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.wait_for_finding(pred, timeout)
            .unwrap_or_else(|| panic!("no finding within {timeout:?}: {what}\n{}", self.dump()))
    }

    /// Every finding printed so far.
    pub fn findings(&self) -> Vec<Value> {
        while let Ok(r) = self.lines.try_recv() {
            self.take_line(r);
        }
        self.seen.borrow().clone()
    }

    /// The findings and the log so far, for failure messages.
    pub fn dump(&self) -> String {
        let f: Vec<String> = self.findings().iter().map(Value::to_string).collect();
        format!(
            "--- findings ---\n{}\n--- agent log ---\n{}",
            f.join("\n"),
            self.log_text()
        )
    }

    /// The `--listen` address the agent logged (`127.0.0.1:0` resolved).
    pub fn metrics_addr(&self) -> String {
        self.drain_log();
        self.metrics_addr.borrow().clone().unwrap_or_else(|| {
            panic!(
                "no `serving /metrics` address logged (run with --listen):\n{}",
                self.log_text()
            )
        })
    }

    /// One scrape of `/metrics`: sample (name with labels) -> value.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        scrape(&self.metrics_addr())
    }

    /// SIGTERM, then waits up to [`Self::grace`]; the exit status if it
    /// exited, `None` if it had to be killed.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL, as a crash or the OOM killer would: the agent gets no
    /// chance to clean up. Returns its exit status.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        let _ = child.kill();
        child.wait().expect("wait for the killed agent")
    }

    /// Stops the agent with SIGTERM and asserts it exits cleanly within
    /// [`Self::grace`].
    pub fn stop(mut self) {
        let grace = self.grace;
        match self.terminate() {
            Some(st) => assert!(
                st.success(),
                "agent exit status {st:?}:\n{}",
                self.log_text()
            ),
            None => panic!(
                "the agent did not exit within {grace:?} of SIGTERM:\n{}",
                self.log_text()
            ),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// One `GET /metrics` from `addr`: sample (name with labels) -> value.
pub fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read /metrics");
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        })
        .collect()
}

/// `s` without ANSI escape sequences (the text log colours its fields).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The address of a `serving /metrics` log line: `addr=HOST:PORT` in the
/// text format, `"addr":"HOST:PORT"` in the JSON one.
fn listen_addr(line: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return v["fields"]["addr"].as_str().map(str::to_string);
    }
    let rest = &line[line.find("addr=")? + 5..];
    let a = rest.split_whitespace().next()?.trim_matches('"');
    (!a.is_empty()).then(|| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listen_address_of_either_log_format() {
        let text = "\u{1b}[2m2026\u{1b}[0m  INFO imagewarden: serving /metrics, /healthz, /readyz \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4321";
        assert_eq!(
            listen_addr(&strip_ansi(text)).as_deref(),
            Some("127.0.0.1:4321")
        );
        let json =
            r#"{"level":"INFO","fields":{"message":"serving /metrics","addr":"127.0.0.1:9"}}"#;
        assert_eq!(listen_addr(json).as_deref(), Some("127.0.0.1:9"));
    }

    #[test]
    fn scrape_reads_samples_with_their_labels() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = c.read(&mut req).unwrap();
            let body = "# HELP x_total x\nx_total 3\ny{mechanism=\"cgroup_kill\"} 1.5\n";
            write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        let m = scrape(&addr);
        assert!(server.join().unwrap().starts_with("GET /metrics "));
        assert_eq!(m.get("x_total"), Some(&3.0));
        assert_eq!(m.get("y{mechanism=\"cgroup_kill\"}"), Some(&1.5));
        assert_eq!(m.len(), 2, "{m:?}");
    }
}
