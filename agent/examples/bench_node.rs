//! `cargo xtask bench`: what the agent costs a node, measured side by side.
//!
//! Usage (root): `bench_node --agent PATH [--quick] [--sustain-secs N]
//! [--run-secs N] [--pairs N] [--out FILE] [--policy-json FILE] [--exec PATH]
//! [--skip-inventory] [--only throughput,cost,drops,inventory]`.
//!
//! 1. Exec throughput: a spawner (`posix_spawn` + `waitpid` of a tiny static
//!    binary, 1 and 2 worker threads) with no agent, the agent in audit mode
//!    and in enforce mode; the three configurations are interleaved (order
//!    rotated every round) so that drift from other load cancels out.
//! 2. Cost per exec: the probe's kernel time (`kernel.bpf_stats_enabled`,
//!    `bpftool prog show`) and the agent's CPU per event (its threads'
//!    `schedstat`, and utime+stime from `/proc/PID/stat`).
//! 3. Drops: the spawner at full speed for `--sustain-secs` (zero drops
//!    wanted), a 10x burst against a small ring buffer while the agent is
//!    stopped (every drop counted, drain time), and the drain of a full
//!    default ring buffer.
//! 4. Memory and start-up with pods and containers in a private containerd.
//!
//! Every child (agents, containerd) is killed on every exit path: the agent
//! children die with this process (`PR_SET_PDEATHSIG`), SIGINT/SIGTERM stop
//! the sections early so that destructors run.
#![allow(dead_code)]

#[path = "../tests/support/containerd.rs"]
mod containerd;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CString,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// Set by SIGINT/SIGTERM: every loop returns early, destructors clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn sleep(d: Duration) {
    let end = Instant::now() + d;
    while !stopped() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

const SECTIONS: [&str; 5] = ["throughput", "cost", "drops", "inventory", "peer"];

#[derive(Debug, Clone)]
struct Opts {
    agent: PathBuf,
    quick: bool,
    sustain_secs: f64,
    run_secs: f64,
    pairs: usize,
    out: PathBuf,
    policy_json: Option<PathBuf>,
    exec: Option<PathBuf>,
    skip_inventory: bool,
    /// Sections to run (throughput, cost, drops, inventory); empty: all.
    only: Vec<String>,
    pods: usize,
    containers: usize,
    inventory_budget: Duration,
    /// `--inventory-sizes 250x750,737x2000`: pods x containers, measured in turn.
    inventory_sizes: Vec<(usize, usize)>,
    /// `--runtimes 1.6,2`: the containerd releases of the inventory section.
    runtimes: Vec<containerd::Runtime>,
    /// `--inventory-repeats N`: agent starts per inventory size; the
    /// figures are the run with the median RSS (one start's RSS moved by
    /// up to 7 MiB between runs of the same binary).
    inventory_repeats: usize,
    /// `--inventory-hold SECS`: after measuring each size, keep the
    /// populated containerd up (its endpoint printed) until the file
    /// `/tmp/imagewarden-bench-hold` is removed or SECS pass, for
    /// profiling the agent against it by hand.
    inventory_hold: Option<Duration>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        agent: PathBuf::new(),
        quick: false,
        sustain_secs: 60.0,
        run_secs: 2.0,
        pairs: 15,
        out: PathBuf::from("bench/results.json"),
        policy_json: None,
        exec: None,
        skip_inventory: false,
        only: Vec::new(),
        pods: 110,
        containers: 300,
        inventory_budget: Duration::from_secs(60),
        inventory_sizes: Vec::new(),
        runtimes: vec![containerd::Runtime::V1_6],
        inventory_repeats: 1,
        inventory_hold: None,
    };
    let mut budget_set = false;
    let mut sustain_set = false;
    let mut pairs_set = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let val = |it: &mut std::slice::Iter<String>, f: &str| -> String {
        it.next()
            .unwrap_or_else(|| panic!("{f} needs a value"))
            .clone()
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agent" => o.agent = val(&mut it, a).into(),
            "--quick" => o.quick = true,
            "--sustain-secs" => {
                o.sustain_secs = val(&mut it, a).parse().expect("--sustain-secs: seconds");
                sustain_set = true;
            }
            "--run-secs" => o.run_secs = val(&mut it, a).parse().expect("--run-secs: seconds"),
            "--pairs" => {
                o.pairs = val(&mut it, a).parse().expect("--pairs: count");
                pairs_set = true;
            }
            "--out" => o.out = val(&mut it, a).into(),
            "--policy-json" => o.policy_json = Some(val(&mut it, a).into()),
            "--exec" => o.exec = Some(val(&mut it, a).into()),
            "--skip-inventory" => o.skip_inventory = true,
            "--only" => {
                for sec in val(&mut it, a).split(',') {
                    assert!(
                        SECTIONS.contains(&sec),
                        "--only: unknown section {sec:?} (one of {SECTIONS:?})"
                    );
                    o.only.push(sec.to_string());
                }
            }
            "--pods" => o.pods = val(&mut it, a).parse().expect("--pods: count"),
            "--containers" => o.containers = val(&mut it, a).parse().expect("--containers: count"),
            "--inventory-sizes" => {
                for sz in val(&mut it, a).split(',') {
                    let (p, c) = sz.split_once('x').unwrap_or_else(|| {
                        panic!("--inventory-sizes: PODSxCONTAINERS, not {sz:?}")
                    });
                    o.inventory_sizes.push((
                        p.parse().expect("--inventory-sizes: pods"),
                        c.parse().expect("--inventory-sizes: containers"),
                    ));
                }
                o.inventory_sizes.sort();
            }
            "--inventory-budget" => {
                o.inventory_budget = Duration::from_secs_f64(
                    val(&mut it, a)
                        .parse()
                        .expect("--inventory-budget: seconds"),
                );
                budget_set = true;
            }
            "--runtimes" => {
                o.runtimes = val(&mut it, a)
                    .split(',')
                    .map(|r| match r {
                        "1.6" => containerd::Runtime::V1_6,
                        "2" => containerd::Runtime::V2,
                        other => panic!("--runtimes: 1.6 or 2, not {other:?}"),
                    })
                    .collect();
            }
            "--inventory-repeats" => {
                o.inventory_repeats = val(&mut it, a)
                    .parse::<usize>()
                    .expect("--inventory-repeats: count")
                    .max(1);
            }
            "--inventory-hold" => {
                o.inventory_hold = Some(Duration::from_secs_f64(
                    val(&mut it, a).parse().expect("--inventory-hold: seconds"),
                ));
            }
            "--bench" => {} // passed by `cargo bench`-style runners
            other => panic!("unknown argument {other}"),
        }
    }
    if o.quick {
        if !sustain_set {
            o.sustain_secs = 5.0;
        }
        o.run_secs = 1.0;
        if !pairs_set {
            o.pairs = 5;
        }
        if !budget_set {
            o.inventory_budget = Duration::from_secs(20);
        }
    }
    assert!(
        !o.agent.as_os_str().is_empty(),
        "--agent PATH-TO-imagewarden is required"
    );
    o
}

// ---------------------------------------------------------------- helpers

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// 90 % bootstrap interval of median(a) / median(b), resampling rounds
/// (pairs stay together: a round's runs share its moment's machine speed).
fn bootstrap_ratio_ci(a: &[f64], b: &[f64]) -> (f64, f64) {
    let n = a.len().min(b.len());
    if n < 3 {
        return (f64::NAN, f64::NAN);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15; // fixed seed: reproducible
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut ratios: Vec<f64> = (0..2000)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| next()).collect();
            let sa: Vec<f64> = idx.iter().map(|&i| a[i]).collect();
            let sb: Vec<f64> = idx.iter().map(|&i| b[i]).collect();
            median(&sa) / median(&sb)
        })
        .collect();
    ratios.sort_by(|p, q| p.total_cmp(q));
    (ratios[100], ratios[1899])
}

fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "kernel": sh("uname", &["-r"]),
        "arch": sh("uname", &["-m"]),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_mib": mem_kib / 1024,
        "date": sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "git_commit": sh("git", &["rev-parse", "--short", "HEAD"]),
        "loadavg_start": loadavg(),
    })
}

/// A minimal static x86-64 ELF that calls exit(0): the cheapest possible
/// exec, so the agent's share of each exec is as large as it can be.
fn tiny_elf() -> Vec<u8> {
    let base: u64 = 0x40_0000;
    let code: [u8; 12] = [
        0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05, 0xeb, 0xfe, 0x90,
    ];
    let total = (64 + 56 + code.len()) as u64;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(base + 64 + 56).to_le_bytes()); // entry
    b.extend_from_slice(&64u64.to_le_bytes()); // phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // R+X
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&0x1000u64.to_le_bytes());
    b.extend_from_slice(&code);
    b
}

/// The binary the spawner execs, and a description of it.
fn exec_target(o: &Opts, dir: &Path) -> (PathBuf, String) {
    if let Some(p) = &o.exec {
        return (p.clone(), p.display().to_string());
    }
    if std::env::consts::ARCH == "x86_64" {
        let p = dir.join("iw-bench-exit0");
        std::fs::write(&p, tiny_elf()).expect("write tiny ELF");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let st = Command::new(&p).status().expect("run the tiny ELF");
        assert!(st.success(), "tiny ELF exited {st}");
        return (p, "tiny static ELF (exit(0), 132 bytes)".into());
    }
    (
        PathBuf::from("/bin/busybox"),
        "/bin/busybox (static), no arguments".into(),
    )
}

// ---------------------------------------------------------------- spawner

struct SpawnResult {
    execs: u64,
    secs: f64,
    failures: u64,
    /// Median wall time of one posix_spawn + waitpid, in microseconds: the
    /// exec path's own cost, robust to the bursts of outside load (host
    /// steal, other tenants) that move a throughput figure by several %.
    median_us: f64,
}

impl SpawnResult {
    fn rate(&self) -> f64 {
        self.execs as f64 / self.secs
    }
}

/// A pid namespace fd the spawner's worker threads join before they spawn
/// (`--spawner` in a container), or -1.
static PID_NS_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// `workers` threads posix_spawn + waitpid `path` until `dur` is over;
/// `rate` (execs/s, all workers together) paces them when given.
fn spawn_for(path: &Path, workers: usize, dur: Duration, rate: Option<f64>) -> SpawnResult {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let execs = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let lats = std::sync::Mutex::new(Vec::<f64>::new());
    let t0 = Instant::now();
    let end = t0 + dur;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let ns = PID_NS_FD.load(Ordering::SeqCst);
                if ns >= 0 {
                    // SAFETY: setns of this thread's pid namespace for children.
                    let rc = unsafe { libc::setns(ns, libc::CLONE_NEWPID) };
                    assert_eq!(rc, 0, "setns pid: {}", std::io::Error::last_os_error());
                }
                let argv = [cpath.as_ptr() as *mut libc::c_char, std::ptr::null_mut()];
                let envp = [std::ptr::null_mut::<libc::c_char>()];
                let interval = rate.map(|r| Duration::from_secs_f64(workers as f64 / r));
                let mut next = Instant::now();
                let mut n = 0u64;
                let mut lat = Vec::with_capacity(16_384);
                while !stopped() {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    if let Some(iv) = interval {
                        if now < next {
                            std::thread::sleep(next - now);
                        }
                        next += iv;
                    }
                    let mut pid: libc::pid_t = 0;
                    let t = Instant::now();
                    // SAFETY: valid NUL-terminated path and NULL-terminated
                    // argv/envp arrays that outlive the call.
                    let rc = unsafe {
                        libc::posix_spawn(
                            &mut pid,
                            cpath.as_ptr(),
                            std::ptr::null(),
                            std::ptr::null(),
                            argv.as_ptr(),
                            envp.as_ptr(),
                        )
                    };
                    if rc != 0 {
                        failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                        n += 1;
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                execs.fetch_add(n, Ordering::Relaxed);
                lats.lock().unwrap_or_else(|e| e.into_inner()).extend(lat);
            });
        }
    });
    let lats = lats.into_inner().unwrap_or_else(|e| e.into_inner());
    SpawnResult {
        execs: execs.load(Ordering::Relaxed),
        secs: t0.elapsed().as_secs_f64(),
        failures: failures.load(Ordering::Relaxed),
        median_us: median(&lats),
    }
}

// ---------------------------------------------------------------- agent

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Audit,
    Enforce,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

/// A running agent; killed when dropped.
struct Agent {
    child: Child,
    port: u16,
    /// Time from spawn to the first `/readyz` 200.
    ready_after: Duration,
    /// `startup_ms` from the agent's "agent running" log line.
    startup_ms: Option<u64>,
    log: Arc<Mutex<Vec<String>>>,
    /// Ids of the exec programs this agent attached.
    prog_ids: BTreeSet<u64>,
    /// Exec programs of anything else on the machine when it started.
    foreign_progs: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `bpftool -j prog show`: (id, name, run_time_ns, run_cnt) of exec programs.
fn exec_programs() -> Vec<(u64, String, u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output();
    let Ok(out) = out else { return vec![] };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| matches!(p["name"].as_str(), Some("exec_btf" | "exec_tp")))
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or("").to_string(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

impl Agent {
    fn start(bin: &Path, mode: Mode, extra: &[String]) -> Agent {
        let port = free_port();
        let before: BTreeSet<u64> = exec_programs().into_iter().map(|p| p.0).collect();
        let t0 = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--standalone", "--mode", mode.as_str(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("IMAGEWARDEN_LOG", "warn,imagewarden::cmd_run=info")
            .env("IMAGEWARDEN_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start imagewarden");
        let log = Arc::new(Mutex::new(Vec::new()));
        let startup = Arc::new(Mutex::new(None::<u64>));
        let err = child.stderr.take().expect("stderr");
        {
            let log = log.clone();
            let startup = startup.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let l = strip_ansi(&l);
                    if l.contains("agent running") {
                        let ms = l
                            .split("startup_ms=")
                            .nth(1)
                            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|d| d.parse().ok());
                        *startup.lock().unwrap() = ms;
                    }
                    if let Ok(mut g) = log.lock() {
                        if g.len() < 10_000 {
                            g.push(l);
                        }
                    }
                }
            });
        }
        let deadline = t0 + Duration::from_secs(60);
        let ready_after = loop {
            if let Some((200, _)) = http_get(port, "/readyz") {
                break t0.elapsed();
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "imagewarden exited ({st}) before ready:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > deadline || stopped() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "imagewarden not ready within 60 s:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // The log line comes right before /readyz turns 200.
        let mut startup_ms = None;
        for _ in 0..100 {
            startup_ms = *startup.lock().unwrap();
            if startup_ms.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let now: Vec<u64> = exec_programs().into_iter().map(|p| p.0).collect();
        let prog_ids: BTreeSet<u64> = now
            .iter()
            .copied()
            .filter(|i| !before.contains(i))
            .collect();
        Agent {
            child,
            port,
            ready_after,
            startup_ms,
            log,
            prog_ids,
            foreign_progs: before.len(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> HashMap<String, f64> {
        let (code, body) = http_get(self.port, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        parse_metrics(&body)
    }

    /// On-CPU time of every thread (ns, from `/proc/PID/task/*/schedstat`).
    fn cpu_ns(&self) -> u64 {
        let mut sum = 0;
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) {
            for t in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    sum += s
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        sum
    }

    /// utime + stime of the process (clock ticks).
    fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12) // utime, stime (fields 14, 15)
    }

    /// (RssAnon, RssFile) in KiB: heap and stacks vs. mapped binary pages.
    /// Fields of /proc/PID/status, in KiB (0 when absent).
    fn status_kib<const N: usize>(&self, keys: [&str; N]) -> [u64; N] {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        keys.map(|k| {
            s.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }

    /// (RssAnon, RssFile) in KiB.
    fn rss_split_kib(&self) -> (u64, u64) {
        let [anon, file] = self.status_kib(["RssAnon:", "RssFile:"]);
        (anon, file)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let [rss, hwm] = self.status_kib(["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }

    /// Kernel memory of this agent's BPF maps (`bytes_memlock` of every map
    /// its exec program uses, as `bpftool` reports it), in KiB: not in RSS,
    /// but charged to the agent's memory cgroup.
    fn bpf_map_kernel_kib(&self) -> u64 {
        let json = |args: &[&str]| -> Value {
            Command::new("bpftool")
                .args(args)
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice(&o.stdout).ok())
                .unwrap_or(Value::Null)
        };
        let mut maps = BTreeSet::new();
        for id in &self.prog_ids {
            let p = json(&["-j", "prog", "show", "id", &id.to_string()]);
            maps.extend(
                p["map_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64),
            );
        }
        maps.iter()
            .map(|m| {
                json(&["-j", "map", "show", "id", &m.to_string()])["bytes_memlock"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum::<u64>()
            / 1024
    }

    /// RSS of the BPF map mappings (the ring buffer: kernel memory, its
    /// data pages mapped twice, so a 4 MiB ring shows as 8 MiB), in KiB.
    fn bpf_map_rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).unwrap_or_default();
        let mut in_map = false;
        let mut kib = 0;
        for l in s.lines() {
            if l.split_whitespace().next().is_some_and(|f| {
                f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            }) {
                in_map = l.ends_with("anon_inode:bpf-map");
            } else if in_map {
                if let Some(v) = l.strip_prefix("Rss:") {
                    kib += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
        kib
    }

    /// (run_time_ns, run_cnt) of this agent's exec programs.
    fn prog_stats(&self) -> (u64, u64) {
        exec_programs()
            .into_iter()
            .filter(|p| self.prog_ids.contains(&p.0))
            .fold((0, 0), |(t, c), p| (t + p.2, c + p.3))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    fn log_text(&self) -> String {
        self.log.lock().map(|g| g.join("\n")).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The text of a log line without terminal colour escapes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Plain HTTP/1.1 GET on 127.0.0.1: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn parse_metrics(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn m(map: &HashMap<String, f64>, k: &str) -> f64 {
    map.get(k).copied().unwrap_or(0.0)
}

const EXECS: &str = "imagewarden_kernel_execs_total";
const RECEIVED: &str = "imagewarden_events_received_total";
const RB_DROPS: &str = "imagewarden_ringbuf_drops_total";
const CH_DROPS: &str = "imagewarden_events_channel_drops_total";

/// What one measured run cost the agent.
#[derive(Debug, Default, Clone, Copy)]
struct AgentDelta {
    cpu_ns: u64,
    ticks: u64,
    events: f64,
    kernel_execs: f64,
    rb_drops: f64,
    ch_drops: f64,
    prog_ns: u64,
    prog_cnt: u64,
}

struct Snapshot {
    cpu_ns: u64,
    ticks: u64,
    metrics: HashMap<String, f64>,
    prog: (u64, u64),
}

fn snapshot(a: &Agent, with_prog: bool) -> Snapshot {
    Snapshot {
        cpu_ns: a.cpu_ns(),
        ticks: a.cpu_ticks(),
        metrics: a.metrics(),
        prog: if with_prog { a.prog_stats() } else { (0, 0) },
    }
}

fn delta(a: &Snapshot, b: &Snapshot) -> AgentDelta {
    let d = |k: &str| m(&b.metrics, k) - m(&a.metrics, k);
    AgentDelta {
        cpu_ns: b.cpu_ns.saturating_sub(a.cpu_ns),
        ticks: b.ticks.saturating_sub(a.ticks),
        events: d(RECEIVED),
        kernel_execs: d(EXECS),
        rb_drops: d(RB_DROPS),
        ch_drops: d(CH_DROPS),
        prog_ns: b.prog.0.saturating_sub(a.prog.0),
        prog_cnt: b.prog.1.saturating_sub(a.prog.1),
    }
}

/// Waits until user space has caught up with the kernel: every exec the
/// kernel counted is received or counted as dropped, and `received` has
/// stopped growing. Returns the time it took (from the call).
fn wait_drained(a: &Agent, timeout: Duration) -> (Duration, bool) {
    let t0 = Instant::now();
    let mut last = -1.0;
    loop {
        let mm = a.metrics();
        let recv = m(&mm, RECEIVED);
        let caught_up = m(&mm, RECEIVED) + m(&mm, RB_DROPS) >= m(&mm, EXECS);
        if caught_up || recv == last {
            // `recv == last`: nothing new in 5 ms; other execs on the machine
            // can keep `caught_up` from ever being exactly true.
            if caught_up || t0.elapsed() > Duration::from_millis(20) {
                return (t0.elapsed(), true);
            }
        }
        if t0.elapsed() > timeout {
            return (t0.elapsed(), false);
        }
        last = recv;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Enables `kernel.bpf_stats_enabled` while alive; restores the old value.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> BpfStats {
        let p = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(p)
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_string();
        let _ = std::fs::write(p, "1");
        BpfStats(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

// ---------------------------------------------------------------- sections

fn section(title: &str) {
    eprintln!("\n== {title}");
}

/// 1 and 2 (CPU from the same runs): throughput with and without the agent.
fn throughput(o: &Opts, exe: &Path) -> Value {
    section("1. exec throughput: no agent / audit / enforce, interleaved");
    let configs: [Option<Mode>; 3] = [None, Some(Mode::Audit), Some(Mode::Enforce)];
    let name = |c: Option<Mode>| c.map_or("none", Mode::as_str);
    let workers = [1usize, 2];
    let dur = Duration::from_secs_f64(o.run_secs);
    // (config, workers) -> rates per round
    let mut rates: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut lats: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut cpu_per_event: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut foreign = 0usize;
    let progs_before = exec_programs().len();
    for round in 0..o.pairs {
        if stopped() {
            break;
        }
        for k in 0..configs.len() {
            let cfg = configs[(round + k) % configs.len()];
            let agent = cfg.map(|mode| Agent::start(&o.agent, mode, &[]));
            if let Some(a) = &agent {
                foreign = foreign.max(a.foreign_progs);
            }
            // Every configuration settles the same way before it is
            // measured, "none" included: neither an agent's start nor the
            // previous one's teardown may fall into one configuration only.
            sleep(Duration::from_millis(300));
            for &w in &workers {
                let s0 = agent.as_ref().map(|a| snapshot(a, false));
                let r = spawn_for(exe, w, dur, None);
                if let (Some(a), Some(s0)) = (&agent, s0) {
                    let _ = wait_drained(a, Duration::from_secs(2));
                    let d = delta(&s0, &snapshot(a, false));
                    if d.events > 0.0 {
                        cpu_per_event
                            .entry(name(cfg).into())
                            .or_default()
                            .push(d.cpu_ns as f64 / d.events / 1000.0);
                    }
                }
                eprintln!(
                    "  round {} {:>7} x{w}: {:>8.0} execs/s, median {:.1} us per exec ({} failures)",
                    round + 1,
                    name(cfg),
                    r.rate(),
                    r.median_us,
                    r.failures
                );
                lats.entry((name(cfg).into(), w))
                    .or_default()
                    .push(r.median_us);
                rates
                    .entry((name(cfg).into(), w))
                    .or_default()
                    .push(r.rate());
            }
            if let Some(a) = agent {
                a.stop();
                // Its programs are gone before the next configuration starts.
                let deadline = Instant::now() + Duration::from_secs(3);
                while exec_programs().len() > progs_before && Instant::now() < deadline {
                    sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let mut rows = Vec::new();
    for &w in &workers {
        let base = rates.get(&("none".into(), w)).cloned().unwrap_or_default();
        let base_med = median(&base);
        let base_lat = lats.get(&("none".into(), w)).cloned().unwrap_or_default();
        let base_lat_med = median(&base_lat);
        rows.push(
            json!({"config": "none", "workers": w, "median_execs_per_s": base_med, "runs": base,
            "median_exec_us": base_lat_med, "exec_us_runs": base_lat}),
        );
        for cfg in ["audit", "enforce"] {
            let v = rates.get(&(cfg.into(), w)).cloned().unwrap_or_default();
            let med = median(&v);
            let pair_ratios: Vec<f64> = v.iter().zip(&base).map(|(a, b)| a / b).collect();
            let (ci_lo, ci_hi) = bootstrap_ratio_ci(&v, &base);
            // Extra wall time per exec for one worker: the whole cost on the exec path.
            let overhead_us = 1e6 * w as f64 / med - 1e6 * w as f64 / base_med;
            let lat = lats.get(&(cfg.into(), w)).cloned().unwrap_or_default();
            let lat_med = median(&lat);
            let lat_pair: Vec<f64> = lat.iter().zip(&base_lat).map(|(a, b)| b / a).collect();
            rows.push(json!({
                "median_exec_us": lat_med, "exec_us_runs": lat,
                // Throughput-equivalent (none / agent): per-exec medians shed
                // the outside bursts that move whole-run rates.
                "latency_ratio_of_medians": base_lat_med / lat_med,
                "latency_median_pair_ratio": median(&lat_pair),
                "extra_us_per_exec_median": lat_med - base_lat_med,
                "config": cfg, "workers": w, "median_execs_per_s": med, "runs": v,
                "ratio_of_medians": med / base_med,
                "ratio_of_medians_90ci": [ci_lo, ci_hi],
                "median_pair_ratio": median(&pair_ratios),
                "pair_ratios": pair_ratios,
                "extra_us_per_exec_per_worker": overhead_us,
                "target": 0.99,
                "meets_target": med / base_med >= 0.99,
            }));
        }
    }
    let cpu: BTreeMap<String, Value> = cpu_per_event
        .iter()
        .map(|(k, v)| (k.clone(), json!({"median_us": median(v), "runs": v})))
        .collect();
    json!({
        "run_secs": o.run_secs, "rounds": o.pairs, "order": "rotated every round",
        "foreign_exec_programs": foreign,
        "rows": rows,
        "agent_cpu_us_per_event_during_runs": cpu,
    })
}

/// 2. Kernel time per exec (bpf stats on) and agent CPU per event.
fn cost_per_exec(o: &Opts, exe: &Path) -> Value {
    section("2. cost per exec: probe run time (bpf_stats) and agent CPU per event");
    let mut out = serde_json::Map::new();
    let dur = Duration::from_secs_f64(o.run_secs.max(2.0));
    for mode in [Mode::Audit, Mode::Enforce] {
        if stopped() {
            break;
        }
        let a = Agent::start(&o.agent, mode, &[]);
        let stats = BpfStats::enable();
        sleep(Duration::from_millis(200));
        let idle0 = snapshot(&a, true);
        sleep(Duration::from_secs(1));
        let idle = delta(&idle0, &snapshot(&a, true));
        let s0 = snapshot(&a, true);
        let r = spawn_for(exe, 2, dur, None);
        let (drain, _) = wait_drained(&a, Duration::from_secs(2));
        let s1 = snapshot(&a, true);
        drop(stats);
        let d = delta(&s0, &s1);
        let kernel_ns = d.prog_ns as f64 / d.prog_cnt.max(1) as f64;
        // Per exec the kernel saw: without --all-execs most execs are never
        // submitted to user space at all, which is the point.
        let cpu_us = d.cpu_ns as f64 / d.kernel_execs.max(1.0) / 1000.0;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks_us = d.ticks as f64 * 1e6 / hz / d.kernel_execs.max(1.0);
        eprintln!(
            "  {:>7}: probe {kernel_ns:.0} ns/exec over {} runs; agent {cpu_us:.2} us/exec (schedstat), {ticks_us:.2} us/exec (utime+stime) over {} events; idle agent {:.2} ms CPU/s",
            mode.as_str(),
            d.prog_cnt,
            d.events,
            idle.cpu_ns as f64 / 1e6
        );
        out.insert(
            mode.as_str().into(),
            json!({
                "spawner_execs": r.execs, "spawner_execs_per_s": r.rate(),
                "probe_runs": d.prog_cnt, "probe_ns_per_exec": kernel_ns,
                "events": d.events, "kernel_execs": d.kernel_execs,
                "agent_cpu_us_per_event_schedstat": cpu_us,
                "agent_cpu_us_per_event_utime_stime": ticks_us,
                "agent_idle_cpu_ms_per_s": idle.cpu_ns as f64 / 1e6,
                "drain_ms_after_run": drain.as_secs_f64() * 1e3,
                "target_agent_us_per_exec": 5.0,
                "meets_target": cpu_us <= 5.0,
            }),
        );
        a.stop();
    }
    Value::Object(out)
}

/// Events a ring buffer of `bytes` holds (8-byte header + 320-byte event).
fn ring_capacity(bytes: u64) -> u64 {
    bytes / (8 + 320)
}

/// 3. Sustained rate with zero drops; bursts.
fn drops(o: &Opts, exe: &Path) -> Value {
    section(&format!(
        "3. drops: full-speed spawner for {} s, then bursts",
        o.sustain_secs
    ));
    let mut res = serde_json::Map::new();
    // Sustained: full speed first; if anything is lost, pace lower. With
    // --all-execs every exec is an event (without it the kernel submits only
    // what the agent acts on, and nothing could be dropped).
    let a = Agent::start(&o.agent, Mode::Audit, &["--all-execs".into()]);
    sleep(Duration::from_millis(200));
    let workers = 2;
    let mut rate: Option<f64> = None;
    let mut attempts = Vec::new();
    for attempt in 0..4 {
        if stopped() {
            break;
        }
        let secs = if attempt == 0 {
            o.sustain_secs
        } else {
            o.sustain_secs.min(10.0)
        };
        let s0 = snapshot(&a, false);
        let r = spawn_for(exe, workers, Duration::from_secs_f64(secs), rate);
        let (drain, _) = wait_drained(&a, Duration::from_secs(5));
        let d = delta(&s0, &snapshot(&a, false));
        let lost = d.rb_drops + d.ch_drops;
        eprintln!(
            "  {secs:.0} s at {}: spawner {:.0} execs/s, kernel saw {:.0} execs/s; ringbuf drops {}, channel drops {}",
            rate.map_or("full speed".into(), |r| format!("{r:.0}/s")),
            r.rate(),
            d.kernel_execs / r.secs,
            d.rb_drops,
            d.ch_drops
        );
        attempts.push(json!({
            "secs": secs, "paced_at": rate, "spawner_execs_per_s": r.rate(),
            "kernel_execs_per_s": d.kernel_execs / r.secs, "events": d.events,
            "ringbuf_drops": d.rb_drops, "channel_drops": d.ch_drops,
            "drain_ms": drain.as_secs_f64() * 1e3,
        }));
        if lost == 0.0 {
            break;
        }
        rate = Some(r.rate() * 0.75);
    }
    let (rss, hwm) = a.memory_kib();
    let last = attempts.last().cloned().unwrap_or(Value::Null);
    res.insert(
        "sustained".into(),
        json!({
            "workers": workers,
            "attempts": attempts,
            "zero_drop_execs_per_s": if last["ringbuf_drops"] == 0.0 && last["channel_drops"] == 0.0 { last["kernel_execs_per_s"].clone() } else { Value::Null },
            "full_duration_secs": o.sustain_secs,
            "agent_rss_kib_after": rss, "agent_hwm_kib_after": hwm,
        }),
    );
    a.stop();

    // Burst: the agent is stopped (SIGSTOP) while the spawner runs at full
    // speed, so the burst is >= 10x what the ring buffer can hold; then it
    // resumes. Every exec must be received or counted as dropped.
    let mut bursts = Vec::new();
    let sustained = res["sustained"]["attempts"][0]["kernel_execs_per_s"]
        .as_f64()
        .unwrap_or(2000.0)
        .max(100.0);
    for (label, ring_bytes, factor) in [
        ("10x a 64 KiB ring", 1u64 << 16, 10.0),
        ("a full default 4 MiB ring", 1u64 << 22, 1.0),
    ] {
        if stopped() {
            break;
        }
        let cap = ring_capacity(ring_bytes);
        let secs = (cap as f64 * factor / sustained * 1.2).clamp(0.5, 8.0);
        let a = Agent::start(
            &o.agent,
            Mode::Audit,
            &[
                "--all-execs".into(),
                "--ringbuf-bytes".into(),
                ring_bytes.to_string(),
            ],
        );
        sleep(Duration::from_millis(200));
        let s0 = snapshot(&a, false);
        a.signal(libc::SIGSTOP);
        let r = spawn_for(exe, workers, Duration::from_secs_f64(secs), None);
        a.signal(libc::SIGCONT);
        let (drain, ok) = wait_drained(&a, Duration::from_secs(10));
        sleep(Duration::from_millis(100));
        let d = delta(&s0, &snapshot(&a, false));
        let accounted = d.kernel_execs - d.events - d.rb_drops;
        let (_, hwm) = a.memory_kib();
        eprintln!(
            "  burst into {label} (capacity ~{cap} events): {} spawned, kernel {:.0} execs, received {:.0}, ring drops {:.0}, channel drops {:.0}, unaccounted {accounted:.0}; drained in {:.0} ms",
            r.execs,
            d.kernel_execs,
            d.events,
            d.rb_drops,
            d.ch_drops,
            drain.as_secs_f64() * 1e3
        );
        bursts.push(json!({
            "label": label, "ringbuf_bytes": ring_bytes, "capacity_events": cap,
            "burst_secs": r.secs, "spawned": r.execs, "kernel_execs": d.kernel_execs,
            "burst_over_capacity": d.kernel_execs / cap as f64,
            "received": d.events, "ringbuf_drops": d.rb_drops, "channel_drops": d.ch_drops,
            "unaccounted": accounted, "every_drop_counted": accounted.abs() < 0.5,
            "drain_ms": drain.as_secs_f64() * 1e3, "drained": ok,
            "meets_target": ok && drain < Duration::from_secs(1) && accounted.abs() < 0.5,
            "agent_hwm_kib": hwm,
        }));
        a.stop();
    }
    res.insert("bursts".into(), Value::Array(bursts));
    Value::Object(res)
}

/// 4. RSS and start-up, empty and with pods and containers in containerd.
fn inventory(o: &Opts) -> Value {
    section("4. memory and start-up (private containerd)");
    let mut res = serde_json::Map::new();
    // Empty inventory, no runtime: the floor.
    let a = Agent::start(&o.agent, Mode::Enforce, &[]);
    sleep(Duration::from_secs(1));
    let (rss, hwm) = a.memory_kib();
    eprintln!(
        "  no runtime: ready after {:.0} ms (startup_ms {:?}), RSS {} KiB, HWM {} KiB",
        a.ready_after.as_secs_f64() * 1e3,
        a.startup_ms,
        rss,
        hwm
    );
    res.insert(
        "no_runtime".into(),
        json!({"ready_ms": a.ready_after.as_secs_f64() * 1e3, "startup_ms": a.startup_ms, "rss_kib": rss, "hwm_kib": hwm,
            "rss_anon_kib": a.rss_split_kib().0, "rss_file_kib": a.rss_split_kib().1,
            "rss_bpf_maps_kib": a.bpf_map_rss_kib(), "bpf_maps_kernel_kib": a.bpf_map_kernel_kib()}),
    );
    a.stop();
    if o.skip_inventory {
        res.insert("containerd".into(), json!({"skipped": "--skip-inventory"}));
        return Value::Object(res);
    }
    if let Err(why) = containerd::preflight() {
        eprintln!("  containerd part skipped: {why}");
        res.insert("containerd".into(), json!({"skipped": why}));
        return Value::Object(res);
    }
    let sizes: Vec<(usize, usize)> = if !o.inventory_sizes.is_empty() {
        o.inventory_sizes.clone()
    } else if o.quick {
        vec![(o.pods.min(20), o.containers.min(55))]
    } else {
        vec![(o.pods, o.containers)]
    };
    let mut per_runtime = serde_json::Map::new();
    for rt in o.runtimes.clone() {
        if stopped() {
            break;
        }
        if let Err(why) = rt.preflight() {
            eprintln!("  {}: skipped: {why}", rt.name());
            per_runtime.insert(rt.short().into(), json!({"skipped": why}));
            continue;
        }
        per_runtime.insert(rt.short().into(), inventory_on(o, rt, &sizes));
    }
    // The first runtime's largest inventory stays where the table and older
    // readers of the JSON look for it.
    if let Some(first) = per_runtime.values().find(|v| v.get("sizes").is_some()) {
        res.insert("empty_containerd".into(), first["empty_containerd"].clone());
        if let Some(w) = first["sizes"].as_array().and_then(|a| a.first()) {
            res.insert("with_inventory".into(), w.clone());
        }
    }
    res.insert("runtimes".into(), Value::Object(per_runtime));
    Value::Object(res)
}

/// One containerd release: the agent with an empty containerd, then with
/// each inventory size in turn (created incrementally, measured after each).
fn inventory_on(o: &Opts, rt: containerd::Runtime, sizes: &[(usize, usize)]) -> Value {
    let images = containerd::TestImages::build();
    let ctd = containerd::Containerd::start_version(rt);
    eprintln!("  {} ({})", rt.name(), ctd.version);
    ctd.import("k8s.io", &images);
    let endpoint = ctd.endpoint();
    let rt_args = vec!["--runtime-endpoint".to_string(), endpoint.clone()];

    let measure_once = |label: &str| -> Value {
        let a = Agent::start(&o.agent, Mode::Enforce, &rt_args);
        sleep(Duration::from_secs(2));
        let (rss, hwm) = a.memory_kib();
        let summary = a
            .log_text()
            .lines()
            .find(|l| l.contains("agent running"))
            .and_then(|l| l.split("inventory=").nth(1))
            .map(|s| {
                s.split(" startup_ms")
                    .next()
                    .unwrap_or(s)
                    .trim_matches('"')
                    .to_string()
            });
        eprintln!(
            "  {label}: ready after {:.0} ms (startup_ms {:?}), RSS {} KiB, HWM {} KiB, inventory {:?}",
            a.ready_after.as_secs_f64() * 1e3,
            a.startup_ms,
            rss,
            hwm,
            summary
        );
        let (anon, file) = a.rss_split_kib();
        // The first resync's parts (containerd, CRI, apply), from the log.
        let resync_ms: Option<String> = a
            .log_text()
            .lines()
            .find(|l| l.contains("agent running"))
            .and_then(|l| l.split("resync_ms=").nth(1))
            .map(|s| {
                s.split(']')
                    .next()
                    .unwrap_or(s)
                    .trim_start_matches('[')
                    .to_string()
            });
        eprintln!("    first resync (containerd, CRI, apply) ms: {resync_ms:?}");
        // Verbose CRI status calls of the first resync (issue 16: only for
        // what containerd's listing did not describe).
        let cri_verbose: Option<u64> = a
            .log_text()
            .lines()
            .find(|l| l.contains("agent running"))
            .and_then(|l| l.split("cri_verbose=").nth(1))
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok());
        eprintln!("    first resync's verbose CRI status calls: {cri_verbose:?}");
        let v = json!({"first_resync_ms_containerd_cri_apply": resync_ms,
            "first_resync_cri_verbose_calls": cri_verbose,"ready_ms": a.ready_after.as_secs_f64() * 1e3, "startup_ms": a.startup_ms,
            "rss_kib": rss, "hwm_kib": hwm, "rss_anon_kib": anon, "rss_file_kib": file,
            "rss_bpf_maps_kib": a.bpf_map_rss_kib(), "bpf_maps_kernel_kib": a.bpf_map_kernel_kib(),
            "inventory": summary});
        a.stop();
        v
    };
    // `--inventory-repeats`: the run with the median RSS, every run's RSS
    // and RssAnon beside it.
    let measure = |label: &str| -> Value {
        let mut runs: Vec<Value> = (0..o.inventory_repeats)
            .map(|i| {
                measure_once(&format!(
                    "{label} (start {} of {})",
                    i + 1,
                    o.inventory_repeats
                ))
            })
            .collect();
        let all = |k: &str| -> Vec<Value> { runs.iter().map(|r| r[k].clone()).collect() };
        let (rss_runs, anon_runs) = (all("rss_kib"), all("rss_anon_kib"));
        runs.sort_by_key(|r| r["rss_kib"].as_u64().unwrap_or(0));
        let mut v = runs.swap_remove(runs.len() / 2);
        if o.inventory_repeats > 1 {
            v["rss_kib_runs"] = Value::Array(rss_runs);
            v["rss_anon_kib_runs"] = Value::Array(anon_runs);
        }
        v
    };
    let empty = measure("empty containerd");

    let rtm = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let mut sandboxes: Vec<(String, k8s_cri::v1::PodSandboxConfig)> = Vec::new();
    let mut made_total = 0usize;
    let mut out_sizes = Vec::new();
    for &(pods_want, ctrs_want) in sizes {
        if stopped() {
            break;
        }
        let t0 = Instant::now();
        let (new_sb, made, errors) = rtm.block_on(populate(
            &ctd,
            sandboxes.len()..pods_want.max(sandboxes.len()),
            made_total..ctrs_want.max(made_total),
            &sandboxes,
            o.inventory_budget,
        ));
        sandboxes.extend(new_sb);
        made_total += made;
        let populate_secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "  {}: {} pods (running sandboxes) and {} containers (created, not started) after {populate_secs:.1} s more; {} errors",
            rt.name(),
            sandboxes.len(),
            made_total,
            errors.len()
        );
        let mut full = measure(&format!(
            "{} pods + {} containers",
            sandboxes.len(),
            made_total
        ));
        let rss0 = empty["rss_kib"].as_f64().unwrap_or(0.0);
        let rss1 = full["rss_kib"].as_f64().unwrap_or(0.0);
        let have = (sandboxes.len() + made_total) as f64;
        let want = (pods_want + ctrs_want) as f64;
        let per_entry = if have > 0.0 {
            (rss1 - rss0) / have
        } else {
            0.0
        };
        full["pods"] = json!(sandboxes.len());
        full["containers"] = json!(made_total);
        full["populate_secs"] = json!(populate_secs);
        full["errors"] = json!(errors.iter().take(5).collect::<Vec<_>>());
        full["rss_kib_per_inventory_entry"] = json!(per_entry);
        full["extrapolated"] = json!(have < want);
        full["rss_kib_at_target_inventory"] = json!(if have >= want {
            rss1
        } else {
            rss0 + per_entry * want
        });
        full["target_inventory"] = json!({"pods": pods_want, "containers": ctrs_want});
        full["meets_rss_target_32mib"] = json!(
            full["rss_kib_at_target_inventory"]
                .as_f64()
                .unwrap_or(f64::MAX)
                <= 32.0 * 1024.0
        );
        full["meets_startup_target_1s"] =
            json!(full["ready_ms"].as_f64().unwrap_or(f64::MAX) <= 1000.0);
        out_sizes.push(full);
        if let Some(max) = o.inventory_hold {
            let flag = Path::new("/tmp/imagewarden-bench-hold");
            let _ = std::fs::write(flag, &endpoint);
            eprintln!(
                "  holding the inventory (--runtime-endpoint {endpoint}) until {} is removed, at most {:.0} s",
                flag.display(),
                max.as_secs_f64()
            );
            let t = Instant::now();
            while flag.exists() && t.elapsed() < max && !stopped() {
                sleep(Duration::from_millis(500));
            }
            let _ = std::fs::remove_file(flag);
        }
    }
    // The table shows the largest first.
    out_sizes.reverse();

    // Tear down through CRI in parallel (much faster than one ctr per object).
    let t1 = Instant::now();
    rtm.block_on(async {
        let Ok(cri) = imagewarden::sources::cri::CriClient::connect(&endpoint).await else {
            return;
        };
        let cri = Arc::new(cri);
        let mut set = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        for (id, _) in sandboxes {
            let (cri, sem) = (cri.clone(), sem.clone());
            set.spawn(async move {
                let _p = sem.acquire().await;
                let _ = cri.remove_pod_sandbox(&id).await;
            });
        }
        while set.join_next().await.is_some() {}
    });
    let version = ctd.version.clone();
    drop(ctd);
    drop(images);
    remove_cgroups(&format!("iwbench-{}", std::process::id()));
    eprintln!("  torn down in {:.1} s", t1.elapsed().as_secs_f64());
    json!({"runtime": rt.name(), "version": version, "empty_containerd": empty, "sizes": out_sizes})
}

/// RunPodSandbox up to `pods` (host network, pause image), then
/// CreateContainer up to `containers` spread over them (alternating a
/// denied and an allowed image), four requests in flight, within `budget`.
async fn populate(
    ctd: &containerd::Containerd,
    pods: std::ops::Range<usize>,
    containers: std::ops::Range<usize>,
    prior: &[(String, k8s_cri::v1::PodSandboxConfig)],
    budget: Duration,
) -> (
    Vec<(String, k8s_cri::v1::PodSandboxConfig)>,
    usize,
    Vec<String>,
) {
    use k8s_cri::v1 as cri;
    let cri = Arc::new(
        imagewarden::sources::cri::CriClient::connect(&ctd.endpoint())
            .await
            .expect("CRI connect"),
    );
    let deadline = Instant::now() + budget;
    let parent = format!("/iwbench-{}", std::process::id());
    let ns_opts = Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let sandbox_config = |i: usize| {
        let uid = format!("00000000-0000-4000-8000-{:012}", i);
        let labels: HashMap<String, String> = [
            ("io.kubernetes.pod.name".to_string(), format!("bench-{i}")),
            (
                "io.kubernetes.pod.namespace".to_string(),
                format!("ns-{}", i % 10),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
        ]
        .into_iter()
        .collect();
        let log_dir = ctd.dir.join("pods").join(&uid);
        let _ = std::fs::create_dir_all(&log_dir);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("bench-{i}"),
                uid: uid.clone(),
                namespace: format!("ns-{}", i % 10),
                attempt: 0,
            }),
            log_directory: log_dir.display().to_string(),
            labels,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{parent}/pod{uid}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: ns_opts.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let mut errors = Vec::new();
    let mut sandboxes: Vec<(String, cri::PodSandboxConfig)> = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    let (mut next, pods) = (pods.start, pods.end);
    while (next < pods || !set.is_empty()) && !stopped() {
        while next < pods && set.len() < 4 && Instant::now() < deadline {
            let cfg = sandbox_config(next);
            let cri = cri.clone();
            set.spawn(async move { cri.run_pod_sandbox(cfg.clone()).await.map(|id| (id, cfg)) });
            next += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => sandboxes.push(s),
            Some(Ok(Err(e))) => errors.push(format!("RunPodSandbox: {e}")),
            Some(Err(e)) => errors.push(format!("task: {e}")),
            None => break,
        }
    }
    let new_sandboxes = sandboxes.clone();
    sandboxes.splice(0..0, prior.iter().cloned());
    let mut made = 0;
    let (mut next, containers) = (containers.start, containers.end);
    while !sandboxes.is_empty() && (next < containers || !set.is_empty()) && !stopped() {
        let mut cset = tokio::task::JoinSet::new();
        while next < containers && cset.len() < 4 && Instant::now() < deadline {
            let (sid, scfg) = sandboxes[next % sandboxes.len()].clone();
            let image = if next % 2 == 0 {
                containerd::NGINX
            } else {
                containerd::ECR_NGINX
            };
            let name = format!("c{next}");
            let cfg = cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                labels: [("io.kubernetes.container.name".to_string(), name.clone())]
                    .into_iter()
                    .chain(scfg.labels.clone())
                    .collect(),
                log_path: format!("{name}.log"),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: ns_opts.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let cri = cri.clone();
            cset.spawn(async move { cri.create_container(&sid, cfg, scfg).await });
            next += 1;
        }
        if cset.is_empty() {
            break;
        }
        while let Some(r) = cset.join_next().await {
            match r {
                Ok(Ok(_)) => made += 1,
                Ok(Err(e)) => errors.push(format!("CreateContainer: {e}")),
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
    }
    (new_sandboxes, made, errors)
}

/// Removes the bench's cgroup parents (empty directories) in every hierarchy.
fn remove_cgroups(name: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let top = root.join(name);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

// ---------------------------------------------------------------- peer

/// Where the cgroup v2 hierarchy is mounted (`unified` on hybrid hosts).
fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// The cgroup v2 path of a process (`0::/path` of `/proc/PID/cgroup`).
fn cgroup2_of(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn usage_usec(f: &mut std::fs::File) -> u64 {
    use std::io::Seek;
    let mut s = String::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `bench_node --spawner EXE WORKERS SECS CGROUP_DIR|- NS_PID|0`: the
/// spawner as its own process, so that its cgroup holds only the exec'ing
/// tasks. It joins CGROUP_DIR (cgroup v2), and with NS_PID the mount and
/// pid namespaces of that process (a container's init), as `runc exec`
/// does; EXE is resolved there. Prints one JSON line: the spawn result and
/// the cgroup's `cpu.stat` usage during the run.
fn spawner_child(args: &[String]) -> ! {
    let [exe, workers, secs, cg, ns_pid] = args else {
        eprintln!("--spawner EXE WORKERS SECS CGROUP_DIR|- NS_PID|0");
        std::process::exit(2);
    };
    let workers: usize = workers.parse().expect("--spawner: workers");
    let secs: f64 = secs.parse().expect("--spawner: seconds");
    if cg != "-" {
        std::fs::write(
            Path::new(cg).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap_or_else(|e| panic!("join cgroup {cg}: {e}"));
    }
    let rel = cgroup2_of("self").expect("own cgroup v2 path");
    let stat_path = cgroup2_root()
        .join(rel.trim_start_matches('/'))
        .join("cpu.stat");
    // Opened before setns: the container's mount namespace has no /sys/fs/cgroup.
    let mut stat =
        std::fs::File::open(&stat_path).unwrap_or_else(|e| panic!("{}: {e}", stat_path.display()));
    if ns_pid != "0" {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let open = |ns: &str| {
            std::fs::File::open(format!("/proc/{ns_pid}/ns/{ns}"))
                .unwrap_or_else(|e| panic!("namespace {ns} of {ns_pid}: {e}"))
        };
        let mnt = open("mnt");
        // Opened before setns: the container's /proc is its own pid namespace's.
        let pid_ns = open("pid");
        // SAFETY: setns on an open namespace fd; this process is still
        // single-threaded (no thread has been spawned yet), as CLONE_NEWNS needs.
        let rc = unsafe { libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) };
        assert_eq!(rc, 0, "setns mnt: {}", std::io::Error::last_os_error());
        std::env::set_current_dir("/").expect("chdir /");
        // The pid namespace is joined by each worker thread for its own
        // children (a process whose pid namespace for children differs from
        // its own can no longer create threads).
        PID_NS_FD.store(pid_ns.into_raw_fd(), Ordering::SeqCst);
    }
    let u0 = usage_usec(&mut stat);
    let r = spawn_for(Path::new(exe), workers, Duration::from_secs_f64(secs), None);
    let u1 = usage_usec(&mut stat);
    println!(
        "{}",
        json!({"execs": r.execs, "secs": r.secs, "failures": r.failures, "median_us": r.median_us,
            "task_cpu_us": u1.saturating_sub(u0), "cgroup": rel})
    );
    std::process::exit(0);
}

/// Runs the spawner child (see [`spawner_child`]); its JSON line.
fn spawn_child(
    exe: &Path,
    workers: usize,
    secs: f64,
    cg: Option<&Path>,
    ns_pid: Option<u32>,
) -> Value {
    let me = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(me);
    cmd.arg("--spawner")
        .arg(exe)
        .arg(workers.to_string())
        .arg(secs.to_string())
        .arg(cg.map_or("-".into(), |p| p.display().to_string()))
        .arg(ns_pid.unwrap_or(0).to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let out = cmd.output().expect("run the spawner");
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .unwrap_or_else(|_| json!({"error": format!("spawner: {} {line}", out.status)}))
}

/// Every loaded BPF program: id -> (name, run_time_ns, run_cnt).
fn all_programs() -> BTreeMap<u64, (String, u64, u64)> {
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                (
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// The two bpftrace programs of the baseline (issue 16): counting per
/// cgroup, and printing one line per exec.
const BT_COUNT: &str = "tracepoint:sched:sched_process_exec { @[cgroup] = count(); }";
const BT_PRINT: &str =
    "tracepoint:sched:sched_process_exec { printf(\"%d %s %llu %s\\n\", pid, comm, cgroup, str(args->filename)); }";

/// A running `bpftrace -e PROG` (output to /dev/null); killed when dropped.
struct Bpftrace {
    child: Child,
    prog_ids: BTreeSet<u64>,
}

impl Bpftrace {
    fn start(prog: &str) -> Result<Bpftrace, String> {
        let before: BTreeSet<u64> = all_programs().into_keys().collect();
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-e", prog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("bpftrace: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Loaded, and attached: it runs on the next exec.
        loop {
            let now = all_programs();
            let ids: BTreeSet<u64> = now
                .keys()
                .copied()
                .filter(|i| !before.contains(i))
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("true").status();
                if ids.iter().any(|i| now.get(i).is_some_and(|p| p.2 > 0)) {
                    return Ok(Bpftrace {
                        child,
                        prog_ids: ids,
                    });
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("bpftrace exited ({st}) before its program ran"));
            }
            if Instant::now() > deadline || stopped() {
                let _ = child.kill();
                let _ = child.wait();
                return Err("bpftrace: program not running within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Tool {
    None,
    Agent(Agent),
    Bpftrace(Bpftrace),
}

impl Tool {
    fn prog_ids(&self) -> BTreeSet<u64> {
        match self {
            Tool::None => BTreeSet::new(),
            Tool::Agent(a) => a.prog_ids.clone(),
            Tool::Bpftrace(b) => b.prog_ids.clone(),
        }
    }
}

const PEER_CONFIGS: [&str; 6] = [
    "none",
    "audit",
    "enforce",
    // enforce without the exec-drift check (issue 17): the difference to
    // `enforce` on the container path is what the check costs per exec.
    "enforce-nodrift",
    "bpftrace-count",
    "bpftrace-print",
];

/// The container the container path execs in: a running allowed-image
/// container in a private containerd, and its pieces.
struct BenchContainer {
    ctd: containerd::Containerd,
    _images: containerd::TestImages,
    pid: u32,
    cgroup: PathBuf,
    exe_inside: PathBuf,
}

fn bench_container(exe: &Path) -> Result<BenchContainer, String> {
    containerd::preflight()?;
    // The tiny ELF is part of the image, and the root an overlayfs as on a
    // production node: a routine container exec runs a file of the image's
    // (lower) layer, which the exec-drift check classifies on every exec.
    let elf = std::fs::read(exe).map_err(|e| format!("read the exec target: {e}"))?;
    let images = containerd::TestImages::build_with(&[("bin/iw-bench-exit0", &elf)]);
    let ctd = containerd::Containerd::start_with(containerd::Runtime::V1_6, "overlayfs");
    ctd.import("k8s.io", &images);
    let id = ctd.id("peer");
    ctd.ctr_run("k8s.io", &id, containerd::ECR_NGINX, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let ls = ctd.ctr("k8s.io", &["tasks", "ls"]);
        if let Some(p) = ls
            .lines()
            .find(|l| l.starts_with(&id) && l.contains("RUNNING"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        {
            break p;
        }
        if Instant::now() > deadline {
            return Err(format!("container {id} not running: {ls}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rel = cgroup2_of(&pid.to_string()).ok_or("container's cgroup v2 path")?;
    if rel == "/" {
        return Err("the container is in the root cgroup v2: no by-id path to measure".into());
    }
    let cgroup = cgroup2_root().join(rel.trim_start_matches('/'));
    Ok(BenchContainer {
        ctd,
        _images: images,
        pid,
        cgroup,
        exe_inside: PathBuf::from("/bin/iw-bench-exit0"),
    })
}

/// Section 6, per-exec kernel time (bpf_stats) and the exec'ing tasks' CPU (their
/// cgroup's cpu.stat) of imagewarden (audit, enforce) and of bpftrace's two
/// programs, in the same run, on the host cgroup and inside a container.
fn peer(o: &Opts, exe: &Path) -> Value {
    section("6. per-exec cost on the host and container paths, next to bpftrace");
    let bt_ok = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let host_cg = cgroup2_root().join(format!("iwbench-spawn-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&host_cg);
    let ctr = match bench_container(exe) {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("  container path skipped: {why}");
            None
        }
    };
    let rt_args: Vec<String> = ctr
        .as_ref()
        .map(|c| vec!["--runtime-endpoint".to_string(), c.ctd.endpoint()])
        .unwrap_or_default();
    let rounds = if o.quick {
        o.pairs.min(3)
    } else {
        o.pairs.min(7)
    };
    let secs = o.run_secs;
    // (path, config) -> per round: kernel ns/exec, task us/exec, execs/s, extra
    let mut kns: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut tus: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut runs = Vec::new();
    let baseline: BTreeSet<u64> = all_programs().into_keys().collect();
    for round in 0..rounds {
        for k in 0..PEER_CONFIGS.len() {
            if stopped() {
                break;
            }
            let cfg = PEER_CONFIGS[(round + k) % PEER_CONFIGS.len()];
            let stats = BpfStats::enable();
            let tool = match cfg {
                "none" => Tool::None,
                "audit" => Tool::Agent(Agent::start(&o.agent, Mode::Audit, &rt_args)),
                "enforce" => Tool::Agent(Agent::start(&o.agent, Mode::Enforce, &rt_args)),
                "enforce-nodrift" => {
                    let mut a = rt_args.clone();
                    a.push("--no-exec-drift-check".into());
                    Tool::Agent(Agent::start(&o.agent, Mode::Enforce, &a))
                }
                _ if !bt_ok => continue,
                "bpftrace-count" | "bpftrace-print" => {
                    match Bpftrace::start(if cfg == "bpftrace-count" {
                        BT_COUNT
                    } else {
                        BT_PRINT
                    }) {
                        Ok(b) => Tool::Bpftrace(b),
                        Err(e) => {
                            eprintln!("  {cfg}: {e}");
                            continue;
                        }
                    }
                }
                _ => unreachable!(),
            };
            let ids = tool.prog_ids();
            sleep(Duration::from_millis(300));
            let mut paths: Vec<(&str, Option<&Path>, Option<u32>, &Path)> =
                vec![("host", Some(&host_cg), None, exe)];
            if let Some(c) = &ctr {
                paths.push(("container", Some(&c.cgroup), Some(c.pid), &c.exe_inside));
            }
            for (path, cg, ns, target) in paths {
                let m0 = if let Tool::Agent(a) = &tool {
                    Some(a.metrics())
                } else {
                    None
                };
                let p0 = all_programs();
                let r = spawn_child(target, 2, secs, cg, ns);
                let p1 = all_programs();
                let m1 = if let Tool::Agent(a) = &tool {
                    Some(a.metrics())
                } else {
                    None
                };
                let (mut dns, mut dcnt) = (0u64, 0u64);
                for id in &ids {
                    if let (Some(a), Some(b)) = (p0.get(id), p1.get(id)) {
                        dns += b.1.saturating_sub(a.1);
                        dcnt += b.2.saturating_sub(a.2);
                    }
                }
                let execs = r["execs"].as_f64().unwrap_or(0.0);
                let task_us = r["task_cpu_us"].as_f64().unwrap_or(f64::NAN) / execs.max(1.0);
                let ns_per = if dcnt > 0 {
                    dns as f64 / dcnt as f64
                } else {
                    f64::NAN
                };
                let name_hits = match (&m0, &m1) {
                    (Some(a), Some(b)) => Some(
                        m(b, "imagewarden_kernel_name_hits_total")
                            - m(a, "imagewarden_kernel_name_hits_total"),
                    ),
                    _ => None,
                };
                eprintln!(
                    "  round {} {path:>9} {cfg:>14}: {:.0} execs ({} failed), probe {ns_per:.0} ns/exec over {dcnt} runs, tasks {task_us:.1} us CPU/exec{}",
                    round + 1,
                    execs,
                    r["failures"],
                    name_hits.map_or(String::new(), |h| format!(", name-path hits {h:.0}"))
                );
                if execs == 0.0 {
                    eprintln!("    (no exec ran: this run is left out) {r}");
                    continue;
                }
                if cfg != "none" {
                    kns.entry((path.into(), cfg.into()))
                        .or_default()
                        .push(ns_per);
                }
                tus.entry((path.into(), cfg.into()))
                    .or_default()
                    .push(task_us);
                runs.push(
                    json!({"round": round + 1, "path": path, "config": cfg, "spawner": r,
                    "probe_run_time_ns": dns, "probe_run_cnt": dcnt, "probe_ns_per_exec": ns_per,
                    "task_cpu_us_per_exec": task_us, "name_path_hits": name_hits}),
                );
            }
            drop(stats);
            drop(tool);
            // Its programs are gone before the next configuration starts.
            let deadline = Instant::now() + Duration::from_secs(5);
            while all_programs()
                .keys()
                .any(|i| !baseline.contains(i) && ids.contains(i))
                && Instant::now() < deadline
            {
                sleep(Duration::from_millis(20));
            }
        }
    }
    let _ = std::fs::remove_dir(&host_cg);
    let mut table = Vec::new();
    for path in ["host", "container"] {
        let get = |map: &BTreeMap<(String, String), Vec<f64>>, c: &str| {
            map.get(&(path.to_string(), c.to_string()))
                .cloned()
                .unwrap_or_default()
        };
        for cfg in PEER_CONFIGS {
            let kv = get(&kns, cfg);
            let tv = get(&tus, cfg);
            if tv.is_empty() {
                continue;
            }
            let mut row = json!({"path": path, "config": cfg,
                "probe_ns_per_exec_median": median(&kv), "probe_ns_per_exec_runs": kv,
                "task_cpu_us_per_exec_median": median(&tv), "task_cpu_us_per_exec_runs": tv});
            if cfg == "audit" || cfg == "enforce" || cfg == "enforce-nodrift" {
                for peer in ["bpftrace-count", "bpftrace-print"] {
                    let pv = get(&kns, peer);
                    if pv.is_empty() {
                        continue;
                    }
                    let (lo, hi) = bootstrap_ratio_ci(&kv, &pv);
                    row[format!("kernel_ratio_vs_{peer}")] = json!(median(&kv) / median(&pv));
                    row[format!("kernel_ratio_vs_{peer}_90ci")] = json!([lo, hi]);
                }
            }
            let none = get(&tus, "none");
            if cfg != "none" && !none.is_empty() {
                let (lo, hi) = bootstrap_ratio_ci(&tv, &none);
                row["task_cpu_ratio_vs_none"] = json!(median(&tv) / median(&none));
                row["task_cpu_ratio_vs_none_90ci"] = json!([lo, hi]);
            }
            if cfg == "enforce" {
                let nd = get(&kns, "enforce-nodrift");
                if !nd.is_empty() && !kv.is_empty() {
                    row["drift_check_ns_per_exec"] = json!(median(&kv) - median(&nd));
                    let (lo, hi) = bootstrap_ratio_ci(&kv, &nd);
                    row["kernel_ratio_vs_enforce-nodrift_90ci"] = json!([lo, hi]);
                }
            }
            if path == "container" && cfg == "enforce" {
                row["target"] = json!("kernel time per container exec <= bpftrace-count");
                row["meets_target"] = row["kernel_ratio_vs_bpftrace-count"]
                    .as_f64()
                    .map(|r| r <= 1.0)
                    .into();
            }
            table.push(row);
        }
    }
    drop(ctr);
    remove_cgroups(&format!("iwbench-spawn-{}", std::process::id()));
    json!({"rounds": rounds, "run_secs": secs, "workers": 2, "bpftrace": sh("bpftrace", &["--version"]),
        "bpftrace_programs": {"bpftrace-count": BT_COUNT, "bpftrace-print": BT_PRINT}, "rows": table, "runs": runs})
}

// ---------------------------------------------------------------- report

fn pass(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "-",
    }
}

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "\nimagewarden bench — {} ({} cores, {}), kernel {}, {}",
        r["machine"]["cpu_model"].as_str().unwrap_or("?"),
        r["machine"]["cores"],
        r["machine"]["arch"].as_str().unwrap_or("?"),
        r["machine"]["kernel"].as_str().unwrap_or("?"),
        r["machine"]["date"].as_str().unwrap_or("?")
    );
    println!(
        "load average at start {:?}, at end {:?}; exec target: {}",
        r["machine"]["loadavg_start"],
        r["machine"]["loadavg_end"],
        r["exec_target"].as_str().unwrap_or("?")
    );
    println!(
        "\n{:<58} {:>14} {:>10} {:>6}",
        "measure", "value", "target", ""
    );
    let row = |name: String, v: String, t: &str, ok: Option<bool>| {
        println!("{name:<58} {v:>14} {t:>10} {:>6}", pass(ok))
    };
    if let Some(rows) = r["throughput"]["rows"].as_array() {
        for x in rows {
            let cfg = x["config"].as_str().unwrap_or("?");
            if cfg == "none" {
                row(
                    format!("1. execs/s, no agent, {} worker(s) (median)", x["workers"]),
                    format!("{:.0}", f(&x["median_execs_per_s"])),
                    "",
                    None,
                );
            } else {
                row(
                    format!(
                        "1. ratio {cfg}/none, {} worker(s) (90% CI {:.3}-{:.3})",
                        x["workers"],
                        f(&x["ratio_of_medians_90ci"][0]),
                        f(&x["ratio_of_medians_90ci"][1])
                    ),
                    format!("{:.3}", f(&x["ratio_of_medians"])),
                    ">= 0.99",
                    x["meets_target"].as_bool(),
                );
                row(
                    format!(
                        "   per-exec median {:.1} us, ratio none/{cfg} (pairs median {:.3})",
                        f(&x["median_exec_us"]),
                        f(&x["latency_median_pair_ratio"])
                    ),
                    format!("{:.3}", f(&x["latency_ratio_of_medians"])),
                    "",
                    None,
                );
            }
        }
    }
    for mode in ["audit", "enforce"] {
        let c = &r["cost"][mode];
        if c.is_null() {
            continue;
        }
        row(
            format!("2. probe kernel time per exec, {mode}"),
            format!("{:.0} ns", f(&c["probe_ns_per_exec"])),
            "",
            None,
        );
        row(
            format!("2. agent CPU per exec event, {mode} (schedstat)"),
            format!("{:.2} us", f(&c["agent_cpu_us_per_event_schedstat"])),
            "<= 5 us",
            c["meets_target"].as_bool(),
        );
        row(
            format!("2. agent CPU per exec event, {mode} (utime+stime)"),
            format!("{:.2} us", f(&c["agent_cpu_us_per_event_utime_stime"])),
            "",
            None,
        );
    }
    let s = &r["drops"]["sustained"];
    if !s.is_null() {
        let first = &s["attempts"][0];
        row(
            format!(
                "3. full speed {:.0} s: kernel execs/s (ring/channel drops {}/{})",
                f(&first["secs"]),
                first["ringbuf_drops"],
                first["channel_drops"]
            ),
            format!("{:.0}", f(&first["kernel_execs_per_s"])),
            "0 drops",
            Some(first["ringbuf_drops"] == 0.0 && first["channel_drops"] == 0.0),
        );
        row(
            "3. highest zero-drop rate measured (execs/s)".into(),
            format!("{:.0}", f(&s["zero_drop_execs_per_s"])),
            "",
            None,
        );
    }
    if let Some(b) = r["drops"]["bursts"].as_array() {
        for x in b {
            row(
                format!(
                    "3. burst {} ({:.0}x cap.): drops {} unaccounted {}",
                    x["label"].as_str().unwrap_or("?"),
                    f(&x["burst_over_capacity"]),
                    x["ringbuf_drops"],
                    x["unaccounted"]
                ),
                format!("{:.0} ms", f(&x["drain_ms"])),
                "< 1000 ms",
                x["meets_target"].as_bool(),
            );
        }
    }
    let inv = &r["inventory"];
    if !inv.is_null() {
        let nr = &inv["no_runtime"];
        row(
            "4. start to /readyz 200, no runtime".into(),
            format!("{:.0} ms", f(&nr["ready_ms"])),
            "<= 1000 ms",
            Some(f(&nr["ready_ms"]) <= 1000.0),
        );
        row(
            "4. RSS, no runtime".into(),
            format!("{:.1} MiB", f(&nr["rss_kib"]) / 1024.0),
            "",
            None,
        );
        let empty = serde_json::Map::new();
        for (rt, v) in inv["runtimes"].as_object().unwrap_or(&empty) {
            if let Some(why) = v["skipped"].as_str() {
                row(
                    format!("4. containerd {rt}: skipped ({why})"),
                    String::new(),
                    "",
                    None,
                );
                continue;
            }
            for w in v["sizes"].as_array().into_iter().flatten() {
                let inv = format!(
                    "{} pods + {} ctrs, containerd {rt}",
                    w["pods"], w["containers"]
                );
                row(
                    format!("4. start to /readyz 200, {inv}"),
                    format!("{:.0} ms", f(&w["ready_ms"])),
                    "<= 1000 ms",
                    w["meets_startup_target_1s"].as_bool(),
                );
                row(
                    "4.   first resync ms (containerd, CRI, apply)".to_string(),
                    w["first_resync_ms_containerd_cri_apply"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                    "",
                    None,
                );
                row(
                    format!("4. VmRSS / VmHWM, {inv}"),
                    format!(
                        "{:.1}/{:.1} MiB",
                        f(&w["rss_kib"]) / 1024.0,
                        f(&w["hwm_kib"]) / 1024.0
                    ),
                    "<= 32 MiB",
                    w["meets_rss_target_32mib"].as_bool(),
                );
                row(
                    format!("4. kernel memory of the BPF maps (memcg, not RSS), {inv}"),
                    format!("{:.1} MiB", f(&w["bpf_maps_kernel_kib"]) / 1024.0),
                    "",
                    None,
                );
                if w["extrapolated"] == true {
                    row(
                        format!(
                            "4. RSS at {} pods + {} ctrs (extrapolated)",
                            w["target_inventory"]["pods"], w["target_inventory"]["containers"]
                        ),
                        format!("{:.1} MiB", f(&w["rss_kib_at_target_inventory"]) / 1024.0),
                        "<= 32 MiB",
                        w["meets_rss_target_32mib"].as_bool(),
                    );
                }
            }
        }
    }
    if let Some(rows) = r["peer"]["rows"].as_array() {
        for x in rows {
            let cfg = x["config"].as_str().unwrap_or("?");
            let path = x["path"].as_str().unwrap_or("?");
            if cfg != "none" {
                row(
                    format!("6. {path}: probe kernel time per exec, {cfg}"),
                    format!("{:.0} ns", f(&x["probe_ns_per_exec_median"])),
                    "",
                    None,
                );
            }
            row(
                format!("6. {path}: exec'ing tasks' CPU per exec, {cfg}"),
                format!("{:.1} us", f(&x["task_cpu_us_per_exec_median"])),
                "",
                None,
            );
            if !x["drift_check_ns_per_exec"].is_null() {
                row(
                    format!(
                        "6. {path}: exec-drift check, enforce - enforce-nodrift (ratio 90% CI {:.2}-{:.2})",
                        f(&x["kernel_ratio_vs_enforce-nodrift_90ci"][0]),
                        f(&x["kernel_ratio_vs_enforce-nodrift_90ci"][1])
                    ),
                    format!("{:+.0} ns", f(&x["drift_check_ns_per_exec"])),
                    "",
                    None,
                );
            }
            for peer in ["bpftrace-count", "bpftrace-print"] {
                let k = format!("kernel_ratio_vs_{peer}");
                if x[&k].is_null() {
                    continue;
                }
                let is_target = path == "container" && cfg == "enforce" && peer == "bpftrace-count";
                row(
                    format!(
                        "6. {path}: kernel ratio {cfg} / {peer} (90% CI {:.2}-{:.2})",
                        f(&x[format!("{k}_90ci")][0]),
                        f(&x[format!("{k}_90ci")][1])
                    ),
                    format!("{:.2}", f(&x[&k])),
                    if is_target { "<= 1.00" } else { "" },
                    if is_target {
                        x["meets_target"].as_bool()
                    } else {
                        None
                    },
                );
            }
        }
    }
    if let Some(p) = r["policy"]["policies"].as_array() {
        for x in p {
            row(
                format!("7. policy eval, {}", x["name"].as_str().unwrap_or("?")),
                format!("{:.0}/s", f(&x["images_per_s"])),
                "",
                None,
            );
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--spawner") {
        spawner_child(&argv[2..]);
    }
    let o = parse_opts();
    // SAFETY: installing a handler that only stores an atomic flag.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench_node: must run as root (loads eBPF, runs containerd)");
        std::process::exit(2);
    }
    let work = std::env::temp_dir().join(format!("iw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let (exe, exe_desc) = exec_target(&o, &work);
    let mut r = json!({
        "machine": machine_info(),
        "quick": o.quick,
        "exec_target": exe_desc,
        "agent": o.agent.display().to_string(),
    });
    let t0 = Instant::now();
    let want = |sec: &str| !stopped() && (o.only.is_empty() || o.only.iter().any(|s| s == sec));
    if want("throughput") {
        r["throughput"] = throughput(&o, &exe);
    }
    if want("cost") {
        r["cost"] = cost_per_exec(&o, &exe);
    }
    if want("drops") {
        r["drops"] = drops(&o, &exe);
    }
    if want("peer") {
        r["peer"] = peer(&o, &exe);
    }
    if want("inventory") {
        r["inventory"] = inventory(&o);
    }
    r["sections"] = json!(if o.only.is_empty() {
        SECTIONS.to_vec()
    } else {
        o.only.iter().map(String::as_str).collect()
    });
    if let Some(p) = &o.policy_json {
        r["policy"] = std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
    }
    r["machine"]["loadavg_end"] = json!(loadavg());
    r["elapsed_secs"] = json!(t0.elapsed().as_secs_f64());
    r["interrupted"] = json!(stopped());
    let _ = std::fs::remove_dir_all(&work);
    if let Some(d) = o.out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&r).expect("json") + "\n",
    )
    .expect("write results");
    print_table(&r);
    println!("\nwritten to {}", o.out.display());
    if stopped() {
        std::process::exit(130);
    }
}
