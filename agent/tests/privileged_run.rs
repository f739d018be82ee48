//! The `imagewarden run --standalone` binary end to end: real kernel, real
//! cgroups. Needs root; under `CI=true` fails instead of skipping.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    process::Command,
    time::{Duration, Instant},
};

#[path = "support/agent.rs"]
mod agent;
#[path = "support/exec_hook.rs"]
mod exec_hook;
#[path = "support/host.rs"]
mod host;

use agent::{AgentProcess, NO_RUNTIME, STANDALONE_ENFORCE};
use exec_hook::{assert_enforcement_matches_kernel, Outcome};
use host::{cgroup2_root, in_cgroup, privileged};
use imagewarden::probes::Enforcement;

/// The tests look at programs loaded machine-wide: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `imagewarden ARGS` with the text log, waited for until it runs; with
/// the enforcement its log says it picked, checked against the kernel.
fn start(args: &[&str]) -> (AgentProcess, Enforcement) {
    let mut cmd = AgentProcess::command();
    cmd.args(args).env("IMAGEWARDEN_LOG_FORMAT", "text");
    let agent = AgentProcess::spawn(cmd, |l| l.contains(agent::RUNNING), Duration::from_secs(20));
    let attached = agent
        .wait_for_log(|l| l.contains("eBPF programs attached"), Duration::ZERO)
        .expect("no 'eBPF programs attached' log line");
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
    let enforcement = match value(&attached, "enforcement").as_deref() {
        Some("lsm") => Enforcement::Lsm,
        Some("signal") => Enforcement::Signal,
        other => panic!("the agent must log its enforcement: {other:?} in {attached}"),
    };
    let fallbacks: Vec<String> = agent
        .log_since(0)
        .into_iter()
        .filter(|l| l.contains("BPF LSM"))
        .collect();
    assert_enforcement_matches_kernel(enforcement, &fallbacks);
    (agent, enforcement)
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

    let own = ["--detach-on-exit", "--deny-cgroup", cg.to_str().unwrap()];
    let (agent, enforcement) = start(&[&STANDALONE_ENFORCE[..], &own].concat());
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

    let f = agent.finding(
        "the kill in the denied cgroup",
        |v| v["cgroup_id"] == cg_id,
        Duration::from_secs(5),
    );
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
    agent.stop();
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
    let (agent, enforcement) = start(&[
        "run",
        "--standalone",
        "--listen",
        "127.0.0.1:0",
        "--runtime-endpoint",
        NO_RUNTIME,
    ]);
    let addr = agent.metrics_addr();
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

fn start_agent(cg: &std::path::Path, extra: &[&str]) -> (AgentProcess, Enforcement) {
    let cg = cg.to_str().unwrap();
    let own = ["--runtime-endpoint", NO_RUNTIME, "--deny-cgroup", cg];
    start(&[&STANDALONE_ENFORCE[..], &own, extra].concat())
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

    let (a, enf) = start_agent(&cg, &[]);
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
    a.kill();
    runs_in(&cg).assert_denied(enf); // enforcement survives the agent (fail closed)
    assert!(ids_a.iter().all(|id| exec_program_ids().contains(id)));

    let (b, enf_b) = start_agent(&cg, &[]);
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
    b.stop();
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
    let (c, _) = start_agent(&cg, &["--fail-mode", "open"]);
    runs_in(&cg).assert_denied(enf);
    assert!(
        !pin_dir.join("exec_link").exists(),
        "fail-open agent must not pin"
    );
    c.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !runs_in(&cg).ran() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_runs(&cg, "fail open: nothing enforced once the agent is gone");
    let _ = fs::remove_dir(&cg);
}
