//! The `imagewarden run --standalone` binary end to end: real kernel, real
//! cgroups. Needs root; under `CI=true` fails instead of skipping.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

#[path = "support/exec_hook.rs"]
mod exec_hook;
#[path = "support/host.rs"]
mod host;

use exec_hook::{assert_enforcement_matches_kernel, Outcome};
use host::{cgroup2_root, in_cgroup, privileged};
use imagewarden::probes::Enforcement;

/// The tests look at programs loaded machine-wide: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lines of the agent's stdout, read on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for "agent running" on the agent's stderr; returns the enforcement
/// its log says it picked (checked against the kernel) and its listen
/// address, if it logged one.
fn wait_ready(child: &mut Child) -> (Enforcement, Option<String>) {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut before = Vec::new();
        let mut sent = false;
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("agent: {l}");
            if !sent {
                let plain = strip_ansi(&l);
                sent = plain.contains("agent running");
                before.push(plain);
                if sent {
                    let _ = tx.send(std::mem::take(&mut before));
                }
            }
        }
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("agent did not start within 20 s");
    let value = |l: &str, key: &str| -> Option<String> {
        let i = l.find(&format!("{key}="))?;
        Some(
            l[i + key.len() + 1..]
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    };
    let attached = lines
        .iter()
        .find(|l| l.contains("eBPF programs attached"))
        .expect("no 'eBPF programs attached' log line");
    let enforcement = match value(attached, "enforcement").as_deref() {
        Some("lsm") => Enforcement::Lsm,
        Some("signal") => Enforcement::Signal,
        other => panic!("the agent must log its enforcement: {other:?} in {attached}"),
    };
    let fallbacks: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("BPF LSM"))
        .cloned()
        .collect();
    assert_enforcement_matches_kernel(enforcement, &fallbacks);
    (enforcement, lines.iter().find_map(|l| value(l, "addr")))
}

/// Kills the agent if the test fails half-way (no leftover agent holding programs).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ids of the loaded exec programs (ours are named exec_btf / exec_tp, and
/// bprm_check for BPF LSM).
fn exec_program_ids() -> std::collections::BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            matches!(
                p["name"].as_str(),
                Some("exec_btf" | "exec_tp" | "bprm_check")
            )
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

#[test]
fn standalone_enforce_kills_denied_cgroup_prints_finding_and_detaches_on_sigterm() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let cg = cgroup2_root().join(format!("imagewarden-test-run-{}", std::process::id()));
    let _ = fs::remove_dir(&cg);
    fs::create_dir(&cg).unwrap();
    let cg_id = fs::metadata(&cg).unwrap().ino();
    let before = exec_program_ids();

    let mut agent = Command::new(env!("CARGO_BIN_EXE_imagewarden"))
        .args([
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--detach-on-exit",
            "--deny-cgroup",
        ])
        .arg(&cg)
        .env("IMAGEWARDEN_LOG_FORMAT", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let (enforcement, _) = wait_ready(&mut agent);
    let lines = lines_of(&mut agent);
    let mut agent = KillOnDrop(agent);
    // Compared by id, so programs of anything else running on the machine do not matter.
    let ours: Vec<u64> = exec_program_ids().difference(&before).copied().collect();
    assert!(
        !ours.is_empty(),
        "no exec program attached while the agent runs"
    );

    let marker = std::env::temp_dir().join(format!("iw-run-marker-{}", std::process::id()));
    let _ = fs::remove_file(&marker);
    Outcome::of(
        in_cgroup(&cg, "/bin/sh")
            .arg("-c")
            .arg(format!("echo ran > {}", marker.display())),
    )
    .assert_denied(enforcement);
    assert!(!marker.exists());

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut finding = None;
    while Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
            if v["cgroup_id"] == cg_id {
                finding = Some(v);
                break;
            }
        }
    }
    let f = finding.expect("no finding for the denied cgroup");
    assert_eq!(f["type"], "exec");
    assert_eq!(f["verdict"], "deny");
    assert_eq!(f["action"], "killed");
    assert_eq!(f["filename"], "/bin/sh");
    assert!(
        f["reason"].as_str().unwrap().starts_with("denied-cgroup"),
        "{f}"
    );
    for k in [
        "pid",
        "container_id",
        "image",
        "image_digest",
        "pod",
        "namespace",
    ] {
        assert!(f.get(k).is_some(), "key {k} missing in {f}");
    }

    // SIGTERM with --detach-on-exit: clean exit, programs detached.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let st = agent.0.wait().unwrap();
    assert!(st.success(), "agent exit after SIGTERM: {st:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let still = || {
        let now = exec_program_ids();
        ours.iter().filter(|id| now.contains(id)).count()
    };
    while still() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(still(), 0, "programs {ours:?} still loaded after SIGTERM");
    let o = Outcome::of(in_cgroup(&cg, "/bin/sh").arg("-c").arg("exit 4"));
    assert_eq!(
        o.code(),
        Some(4),
        "enforcement must end with the agent: {o:?}"
    );
    let _ = fs::remove_dir(&cg);
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A scrape of a running standalone agent parses with a Prometheus parser
/// and shows the operational families; /readyz is ready.
#[test]
fn standalone_agent_serves_metrics_health_and_readiness() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let mut agent = Command::new(env!("CARGO_BIN_EXE_imagewarden"))
        .args([
            "run",
            "--standalone",
            "--listen",
            "127.0.0.1:0",
            "--runtime-endpoint",
            "unix:///nonexistent.sock",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let (enforcement, addr) = wait_ready(&mut agent);
    let agent = KillOnDrop(agent);
    let addr = addr.expect("no listen address logged");
    for _ in 0..20 {
        let _ = Command::new("/bin/true").status();
    }
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "readyz: {body}");
    let (code, _) = http_get(&addr, "/healthz");
    assert_eq!(code, 200);
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in [
        "imagewarden_exec_events_total",
        "imagewarden_kernel_execs_total",
        "imagewarden_ringbuf_drops_total",
        "imagewarden_kills_total",
        "imagewarden_findings_total",
        "imagewarden_containers",
        "imagewarden_policy_reloads_total",
        "imagewarden_source_up",
        "imagewarden_enforcement_info",
        "imagewarden_build_info",
    ] {
        assert!(
            names.contains(family),
            "family {family} missing from the scrape: {names:?}"
        );
    }
    let execs = scrape
        .samples
        .iter()
        .find(|s| s.metric == "imagewarden_kernel_execs_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Gauge(v) => v,
            _ => -1.0,
        })
        .unwrap();
    assert!(
        execs >= 20.0,
        "kernel exec counter read at scrape time: {execs}"
    );
    let info = scrape
        .samples
        .iter()
        .find(|s| s.metric == "imagewarden_enforcement_info")
        .unwrap();
    assert_eq!(
        info.labels.get("mechanism"),
        Some(enforcement.as_str()),
        "metric and log disagree: {info:?}"
    );
    assert!(info.labels.get("exec_hook").is_some(), "{info:?}");
    drop(agent);
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn start_agent(cg: &std::path::Path, extra: &[&str]) -> (KillOnDrop, Enforcement) {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_imagewarden"))
        .args([
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--runtime-endpoint",
            "unix:///nonexistent.sock",
            "--deny-cgroup",
        ])
        .arg(cg)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let (enforcement, _) = wait_ready(&mut agent);
    (KillOnDrop(agent), enforcement)
}

fn runs_in(cg: &std::path::Path) -> Outcome {
    Outcome::of(in_cgroup(cg, "/bin/sh").arg("-c").arg("exit 5"))
}

fn assert_runs(cg: &std::path::Path, why: &str) {
    let o = runs_in(cg);
    assert_eq!(o.code(), Some(5), "{why}: {o:?}");
}

/// Fail closed: SIGKILL the agent, enforcement stays (pinned in bpffs); a
/// new agent takes over with no gap and no duplicate programs; SIGTERM
/// hands the state over and `cleanup` leaves nothing behind. Fail open:
/// the programs go with the agent.
#[test]
fn killed_agent_keeps_enforcing_and_restart_takes_over_without_duplicates() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged() {
        return;
    }
    let cg = cgroup2_root().join(format!("imagewarden-test-restart-{}", std::process::id()));
    let _ = fs::remove_dir(&cg);
    fs::create_dir(&cg).unwrap();
    let pin_dir = imagewarden::probes::default_pin_dir();
    let before = exec_program_ids();

    let (mut a, enf) = start_agent(&cg, &[]);
    // One exec program, plus the LSM program where BPF LSM enforces.
    let per_agent = if enf == Enforcement::Lsm { 2 } else { 1 };
    let ids_a: Vec<u64> = exec_program_ids().difference(&before).copied().collect();
    assert_eq!(
        ids_a.len(),
        per_agent,
        "programs of agent A ({} enforcement): {ids_a:?}",
        enf.as_str()
    );
    assert!(
        pin_dir.join("exec_link").exists(),
        "fail-closed agent must pin its exec link"
    );
    assert_eq!(
        pin_dir.join("lsm_link").exists(),
        enf == Enforcement::Lsm,
        "the LSM link is pinned iff LSM enforces"
    );
    runs_in(&cg).assert_denied(enf);

    // SIGKILL: no chance to clean up.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    drop(a);
    runs_in(&cg).assert_denied(enf); // enforcement survives the agent (fail closed)
    assert!(ids_a.iter().all(|id| exec_program_ids().contains(id)));

    let (mut b, enf_b) = start_agent(&cg, &[]);
    assert_eq!(enf_b, enf);
    // The kernel frees an unlinked program asynchronously: wait for it (deadline).
    let deadline = Instant::now() + Duration::from_secs(3);
    while ids_a.iter().any(|id| exec_program_ids().contains(id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = exec_program_ids();
    let ours: Vec<u64> = now.difference(&before).copied().collect();
    assert_eq!(
        ours.len(),
        per_agent,
        "exactly one set of programs after the restart, got {ours:?}"
    );
    assert!(
        ids_a.iter().all(|id| !now.contains(id)),
        "agent A's programs must be gone after B took over"
    );
    runs_in(&cg).assert_denied(enf);

    // SIGTERM hands the pinned state over (a rolling update): enforcement
    // stays until the next agent; `imagewarden cleanup` detaches.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    assert!(b.0.wait().unwrap().success());
    drop(b);
    assert!(
        pin_dir.join("exec_link").exists(),
        "SIGTERM must leave the pinned state to the next agent"
    );
    // Enforcement survives a clean SIGTERM (handover).
    runs_in(&cg).assert_denied(enf);
    let out = Command::new(env!("CARGO_BIN_EXE_imagewarden"))
        .arg("cleanup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while exec_program_ids().difference(&before).count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        exec_program_ids().difference(&before).count(),
        0,
        "programs left after cleanup"
    );
    assert!(
        !pin_dir.exists(),
        "pin directory left after cleanup: {}",
        pin_dir.display()
    );
    assert_runs(&cg, "no enforcement after cleanup");

    // Fail open: SIGKILL takes enforcement away.
    let (mut c, _) = start_agent(&cg, &["--fail-mode", "open"]);
    runs_in(&cg).assert_denied(enf);
    assert!(
        !pin_dir.join("exec_link").exists(),
        "fail-open agent must not pin"
    );
    c.0.kill().unwrap();
    c.0.wait().unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !runs_in(&cg).ran() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_runs(&cg, "fail open: nothing enforced once the agent is gone");
    let _ = fs::remove_dir(&cg);
}
