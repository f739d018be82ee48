//! `cargo xtask vmtest`: the privileged test binaries on other kernels.
//!
//! Debian's own kernel packages (6.1 and 6.12 of this release) are fetched
//! with `apt-get download`, extracted with `dpkg-deb -x` into a cache outside
//! the clone (never installed as the host's kernel) and booted under
//! `qemu-system-x86_64` with software emulation. A hand-made initramfs
//! (busybox-static and the 9p/virtio modules of that kernel) mounts the
//! host's root read-only over 9p and a writable 9p share for results,
//! mounts the kernel filesystems of a pure cgroup v2 node, runs one script
//! chrooted into the host's root (so the host's dynamically linked test
//! binaries run unchanged), writes each binary's exit status to the results
//! share and powers off. The `host` column runs the same binaries here,
//! under the host-wide privileged lock. See docs/vmtest.md.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The kernel cache: outside the clone, so that a fresh CI clone reuses it.
pub const CACHE_DIR: &str = "/var/cache/imagewarden/vm";
/// The host-wide lock every privileged run on this host takes.
const PRIVILEGED_LOCK: &str = "/tmp/imagewarden-privileged.lock";
/// Test binaries run by default (integration tests of the `imagewarden` package).
const DEFAULT_TESTS: &[&str] = &["privileged_exec", "privileged_run"];
/// Kernels of the full matrix, in table order.
const ALL_KERNELS: &[&str] = &["6.1", "6.12", "6.12-nolsm", "host"];
/// The CI subset: one LSM-active guest kernel (the host column runs in `cargo xtask test`).
const CI_KERNELS: &[&str] = &["6.12"];
/// The CI subset's test binaries: the probe tests and the agent in its
/// DaemonSet container (issue 12: LSM active, agent in its container),
/// enforce-mode safety (issue 13) and exec drift refused by the LSM hook
/// (issue 17).
const CI_TESTS: &[&str] = &[
    "privileged_exec",
    "privileged_run",
    "e2e_daemonset",
    "enforce_safety",
    "exec_drift",
];
/// Tests the CI subset leaves out, by binary, and why: on a pure cgroup v2
/// guest containerd itself gives the agent's container its private cgroup
/// namespace, so the runc-wrapper variant repeats the first DaemonSet test
/// (and its ~1.5 min image build under TCG). The full matrix runs it.
/// enforce_safety's user-space-only cases (policy loading, admission
/// exclusions, identity from CRI) run on the host in `cargo xtask test`;
/// the guest runs its kernel cases (dead-man's switch, handover, holds,
/// nested cgroups) under BPF LSM.
const CI_SKIPS: &[(&str, &str)] = &[
    (
        "e2e_daemonset",
        "daemonset_container_in_a_private_cgroup_namespace_enforces_the_seed_policy",
    ),
    ("enforce_safety", "enforce_mode_refuses_an_empty_policy"),
    (
        "enforce_safety",
        "policies_disappearing_keep_the_last_good_set",
    ),
    (
        "enforce_safety",
        "admission_exclusions_are_reported_never_stopped",
    ),
    (
        "enforce_safety",
        "forged_labels_through_containerd_buy_nothing",
    ),
    (
        "enforce_safety",
        "k8s_io_container_of_the_node_sandbox_image_runs_before_cri_lists_it",
    ),
];
/// The containerd release the CI subset's e2e tests use (`IW_TEST_CONTAINERD`).
const CI_CONTAINERD: &str = "2";
/// Modules the initramfs loads (with their dependencies), where not built in:
/// the 9p root, and overlayfs for containerd's overlayfs snapshotter.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// The active LSMs of Debian's kernels without `bpf`: the signal fallback.
const LSM_WITHOUT_BPF: &str = "lockdown,capability,landlock,yama,apparmor";
/// Where the results share is mounted inside the guest's view of the host root.
const GUEST_RESULTS: &str = "/run/iw-vm";
/// A test binary still running after this is killed in the guest (exit
/// status 124 in the table), so that the binaries after it still run.
const BINARY_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// A guest that has not powered off by then is killed and reported.
const GUEST_DEADLINE: Duration = Duration::from_secs(40 * 60);

/// One column of the matrix.
#[derive(Debug, Clone)]
struct KernelSpec {
    /// The name given on the command line and shown in the table.
    name: String,
    /// Debian package name pattern (regex for `apt-cache search --names-only`); None: the host.
    package_re: Option<&'static str>,
    /// Extra kernel command line.
    cmdline: &'static str,
    /// The enforcement the agent must pick there (None: the host, derived by the tests).
    expect: Option<&'static str>,
}

fn spec(name: &str) -> Result<KernelSpec> {
    let (package_re, cmdline, expect) = match name {
        "6.1" => (
            Some(r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
            "",
            Some("lsm"),
        ),
        "6.12" => (
            Some(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"),
            "",
            Some("lsm"),
        ),
        "6.12-nolsm" => (
            Some(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"),
            "nolsm",
            Some("signal"),
        ),
        "6.1-nolsm" => (
            Some(r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
            "nolsm",
            Some("signal"),
        ),
        "host" => (None, "", None),
        other => bail!(
            "unknown kernel {other:?}: known are {} (and 6.1-nolsm)",
            ALL_KERNELS.join(", ")
        ),
    };
    let cmdline = if cmdline == "nolsm" {
        "lsm=NOLSM"
    } else {
        cmdline
    };
    Ok(KernelSpec {
        name: name.to_string(),
        package_re,
        cmdline,
        expect,
    })
}

struct Options {
    kernels: Vec<KernelSpec>,
    tests: Vec<String>,
    /// Guest memory; None: [`default_memory_mib`].
    memory_mib: Option<u32>,
    keep: bool,
    /// libtest `--skip` filters by binary (the CI subset's [`CI_SKIPS`]).
    skips: Vec<(String, String)>,
    /// `IW_TEST_CONTAINERD` for the tests (`1.6`, `2`, `all`); None: unset.
    containerd: Option<String>,
    /// A libtest name filter passed to every binary (`--filter NAME`): one
    /// test of a slow binary, e.g. while diagnosing it in a guest; its
    /// output is not captured (`--nocapture`), so a test the deadline kills
    /// still leaves its progress in the log.
    filter: Option<String>,
}

/// Guest memory by default: 1 GiB for the probe tests; 3 GiB where an
/// `e2e_*` binary runs containerd, whose state and images (the agent's own
/// image with a debug build's binary: ~270 MB, copied per snapshot) live in
/// the guest's tmpfs `/tmp`.
fn default_memory_mib(tests: &[String]) -> u32 {
    if tests.iter().any(|t| t.starts_with("e2e_")) {
        3072
    } else {
        1024
    }
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut kernels: Vec<String> = ALL_KERNELS.iter().map(|s| s.to_string()).collect();
    let mut tests: Vec<String> = DEFAULT_TESTS.iter().map(|s| s.to_string()).collect();
    let mut memory_mib = None;
    let mut keep = false;
    let mut ci = false;
    let mut tests_given = false;
    let mut containerd = None;
    let mut filter = None;
    let mut it = args.iter();
    let list = |v: Option<&String>, what: &str| -> Result<Vec<String>> {
        let v = v.with_context(|| format!("{what} needs a comma-separated list"))?;
        Ok(v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kernels" => kernels = list(it.next(), "--kernels")?,
            "--tests" => {
                tests = list(it.next(), "--tests")?;
                tests_given = true;
            }
            "--ci" => {
                kernels = CI_KERNELS.iter().map(|s| s.to_string()).collect();
                ci = true;
            }
            "--memory" => {
                memory_mib = Some(it.next().and_then(|v| v.parse().ok()).context("--memory needs a size in MiB")?);
            }
            "--keep" => keep = true,
            "--filter" => {
                let v = it.next().context("--filter needs a test name (substring)")?;
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    bail!("vmtest: --filter {v:?}: a test name (letters, digits, _ and ::)");
                }
                filter = Some(v.clone());
            }
            "--containerd" => {
                let v = it.next().context("--containerd needs 1.6, 2 or all")?;
                if !v.split(',').all(|r| ["1.6", "2", "all"].contains(&r.trim())) {
                    bail!("vmtest: --containerd {v:?}: known are 1.6, 2 and all");
                }
                containerd = Some(v.clone());
            }
            other => bail!(
                "vmtest: unknown argument {other:?}\nusage: cargo xtask vmtest [--kernels {}] [--tests {}] [--ci] [--memory MIB] [--containerd 1.6|2|all] [--filter TEST] [--keep]",
                ALL_KERNELS.join(","),
                DEFAULT_TESTS.join(",")
            ),
        }
    }
    let mut skips = Vec::new();
    if ci {
        if !tests_given {
            tests = CI_TESTS.iter().map(|s| s.to_string()).collect();
        }
        skips = CI_SKIPS
            .iter()
            .map(|(b, t)| (b.to_string(), t.to_string()))
            .collect();
        // The node CI stands for runs containerd 2 (AL2023's EKS AMIs);
        // containerd 1.6 runs the same tests in the host column.
        containerd.get_or_insert_with(|| CI_CONTAINERD.to_string());
    }
    if kernels.is_empty() || tests.is_empty() {
        bail!("vmtest: empty --kernels or --tests");
    }
    for t in &tests {
        if !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("vmtest: {t:?} is not a test binary name (agent/tests/<name>.rs)");
        }
    }
    let kernels = kernels
        .iter()
        .map(|k| spec(k))
        .collect::<Result<Vec<_>>>()?;
    Ok(Options {
        kernels,
        tests,
        memory_mib,
        keep,
        skips,
        containerd,
        filter,
    })
}

pub fn vmtest(root: &Path, args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    if !crate::setup::is_root() {
        bail!("vmtest: the privileged tests need root (and the kernel cache lives in {CACHE_DIR}): run it as root");
    }
    crate::setup::setup()?;
    crate::setup::vm()?;
    let bins = build_tests(root, &opts.tests)?;
    let out_dir = root.join("target/vmtest");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut results = Vec::new();
    for k in &opts.kernels {
        eprintln!("vmtest: === {} ===", k.name);
        let r = match &k.package_re {
            None => run_on_host(root, &bins, &out_dir, opts.containerd.as_deref()),
            Some(_) => run_in_guest(root, k, &bins, &out_dir, &opts),
        };
        let r = r.unwrap_or_else(|e| KernelResult::failed(format!("{e:#}")));
        results.push((k.clone(), r));
    }
    let table = render(&results, &opts.tests);
    println!("{table}");
    let _ = fs::write(out_dir.join("table.txt"), &table);
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(k, r)| {
            let mut v: Vec<String> = r.error.iter().map(|e| format!("{}: {e}", k.name)).collect();
            for t in &opts.tests {
                match r.binaries.get(t) {
                    Some(b) if b.passed() => {}
                    Some(_) => v.push(format!("{} {t}", k.name)),
                    None if r.error.is_none() => v.push(format!("{} {t}: no result", k.name)),
                    None => {}
                }
            }
            v
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "vmtest: failed: {} (logs in {})",
            failed.join("; "),
            out_dir.display()
        );
    }
    Ok(())
}

/// A test binary to run: its name and executable.
#[derive(Debug, Clone)]
struct TestBin {
    name: String,
    exe: PathBuf,
}

/// Builds the test binaries of the `imagewarden` package and finds their
/// executables in cargo's JSON messages.
fn build_tests(root: &Path, tests: &[String]) -> Result<Vec<TestBin>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "test",
        "-p",
        "imagewarden",
        "--no-run",
        "--message-format=json",
    ]);
    for t in tests {
        cmd.args(["--test", t]);
    }
    eprintln!("vmtest: building {}", tests.join(", "));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("vmtest: building the test binaries failed: {cmd:?}");
    }
    let mut found = BTreeMap::new();
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if tests.iter().any(|t| t == name) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    tests
        .iter()
        .map(|t| {
            let exe = found
                .get(t)
                .with_context(|| format!("cargo built no test executable named {t}"))?;
            Ok(TestBin {
                name: t.clone(),
                exe: exe.clone(),
            })
        })
        .collect()
}

/// Outcome of one test binary on one kernel.
#[derive(Debug, Default, Clone)]
struct BinResult {
    exit: Option<i32>,
    millis: Option<u64>,
    /// The enforcement the tests report the agent picked (`enforcement lsm` in their output).
    enforcement: Option<String>,
    /// libtest's per-test results: name -> Ok(()) or Err(reason).
    tests: BTreeMap<String, std::result::Result<(), String>>,
    log: PathBuf,
}

impl BinResult {
    fn passed(&self) -> bool {
        self.exit == Some(0) && !self.tests.is_empty() && self.tests.values().all(|r| r.is_ok())
    }
}

#[derive(Debug, Default)]
struct KernelResult {
    /// Package and version booted ("host: <uname -r>" for the host).
    kernel: String,
    boot: Option<Duration>,
    lsm: String,
    binaries: BTreeMap<String, BinResult>,
    /// Why the column could not run at all.
    error: Option<String>,
}

impl KernelResult {
    fn failed(e: String) -> Self {
        KernelResult {
            error: Some(e),
            ..Default::default()
        }
    }
}

/// libtest's `test NAME ... ok|FAILED` lines and the first line of each
/// failure's panic message.
fn parse_libtest(log: &str) -> BTreeMap<String, std::result::Result<(), String>> {
    let mut tests = BTreeMap::new();
    // Uncaptured output (`--filter` runs with `--nocapture`) splits a
    // result line: `test NAME ... <output>` ... a line `ok` or `FAILED`.
    let mut pending: Option<&str> = None;
    let mut record = |name: &str, res: &str| match res {
        "ok" => {
            tests.insert(name.to_string(), Ok(()));
            true
        }
        "FAILED" => {
            tests.insert(name.to_string(), Err("failed".to_string()));
            true
        }
        _ => false,
    };
    for l in log.lines() {
        if let Some(name) = pending {
            if record(name, l.trim()) {
                pending = None;
                continue;
            }
        }
        let Some(rest) = l.strip_prefix("test ") else {
            continue;
        };
        let Some((name, res)) = rest.split_once(" ... ") else {
            continue;
        };
        if !record(name, res.trim()) {
            pending = Some(name);
        }
    }
    // Reasons: `---- NAME stdout ----` sections, the line after "panicked at".
    let lines: Vec<&str> = log.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        else {
            continue;
        };
        let reason = lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with("---- "))
            .skip_while(|l| !l.contains("panicked at"))
            .nth(1)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "failed (see log)".to_string());
        // `--show-output` prints the sections of passing tests too.
        if let Some(r @ Err(_)) = tests.get_mut(name) {
            *r = Err(reason);
        }
    }
    tests
}

/// The enforcement the tests say the agent picked by default: their
/// `agent picked enforcement lsm` line (see agent/tests/support/exec_hook.rs).
fn enforcement_in(log: &str) -> Option<String> {
    log.match_indices("agent picked enforcement ")
        .find_map(|(i, k)| {
            let rest = &log[i + k.len()..];
            ["lsm", "signal"]
                .into_iter()
                .find(|m| rest.starts_with(m))
                .map(String::from)
        })
}

fn host_kernel() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Active LSMs as securityfs lists them (mounted privately when missing).
fn host_lsm() -> String {
    if let Ok(s) = fs::read_to_string("/sys/kernel/security/lsm") {
        return s.trim().to_string();
    }
    Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t securityfs none /sys/kernel/security && cat /sys/kernel/security/lsm",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The host column: the same binaries, here, one at a time under the
/// host-wide privileged lock.
fn run_on_host(
    root: &Path,
    bins: &[TestBin],
    out_dir: &Path,
    containerd: Option<&str>,
) -> Result<KernelResult> {
    let dir = out_dir.join("host");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut r = KernelResult {
        kernel: format!("host {}", host_kernel()),
        lsm: host_lsm(),
        ..Default::default()
    };
    for b in bins {
        let log = dir.join(format!("{}.log", b.name));
        let f = fs::File::create(&log)?;
        eprintln!("vmtest: host: {} (waiting for {PRIVILEGED_LOCK})", b.name);
        let t0 = Instant::now();
        let mut cmd = Command::new("flock");
        if let Some(c) = containerd {
            cmd.env("IW_TEST_CONTAINERD", c);
        }
        let st = cmd
            .arg(PRIVILEGED_LOCK)
            .arg(&b.exe)
            .arg("--show-output")
            .current_dir(root.join("agent"))
            .env("CI", "true")
            .env("RUST_BACKTRACE", "1")
            .env("IMAGEWARDEN_VM_KERNEL", "host")
            .env_remove("IMAGEWARDEN_EXPECT_ENFORCEMENT")
            .stdout(f.try_clone()?)
            .stderr(f)
            .status()
            .context("running flock (util-linux)")?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        r.binaries.insert(
            b.name.clone(),
            BinResult {
                exit: st.code(),
                millis: Some(t0.elapsed().as_millis() as u64),
                enforcement: enforcement_in(&text),
                tests: parse_libtest(&text),
                log,
            },
        );
    }
    Ok(r)
}

// ---------------------------------------------------------------- kernels

/// An extracted kernel package in the cache.
struct Kernel {
    package: String,
    version: String,
    vmlinux: PathBuf,
    modules: PathBuf,
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest package matching `re` that apt knows, and its version.
fn newest_package(re: &str) -> Result<Option<(String, String)>> {
    let names = capture(Command::new("apt-cache").args(["search", "--names-only", re]))?;
    let mut best: Option<(Vec<u64>, String)> = None;
    for name in names
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .map(str::trim)
    {
        // Compare the numbers in the name: 6.12.118 > 6.12.99, 6.1.0-57 > 6.1.0-9.
        let key: Vec<u64> = name
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, name.to_string()));
        }
    }
    let Some((_, name)) = best else {
        return Ok(None);
    };
    let show = capture(Command::new("apt-cache").args(["show", "--no-all-versions", &name]))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("apt-cache show {name}: no Version"))?
        .trim()
        .to_string();
    Ok(Some((name, version)))
}

/// A cached kernel for `re` when apt cannot be asked (offline).
fn cached_kernel(re: &str) -> Option<(String, String)> {
    let pattern = re.trim_start_matches('^').trim_end_matches('$');
    let prefix: String = pattern
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let mut found: Vec<(String, String)> = fs::read_dir(CACHE_DIR)
        .ok()?
        .flatten()
        .filter(|e| e.path().join(".complete").exists())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let (p, v) = n.split_once('_')?;
            p.starts_with(&prefix)
                .then(|| (p.to_string(), v.to_string()))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Fetches (once) and extracts (once) the newest kernel package of `spec`.
fn prepare_kernel(spec: &KernelSpec) -> Result<Kernel> {
    let re = spec.package_re.expect("a guest kernel");
    let mut pkg = newest_package(re)?;
    if pkg.is_none() {
        eprintln!("vmtest: apt knows no package matching {re}: running apt-get update");
        crate::run(
            Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        pkg = newest_package(re)?;
    }
    let (package, version) = match pkg.or_else(|| cached_kernel(re)) {
        Some(p) => p,
        None => {
            bail!("no Debian package matches {re} (is Debian 12's archive in the apt sources?)")
        }
    };
    let dir = Path::new(CACHE_DIR).join(format!("{package}_{}", version.replace([':', '~'], "-")));
    // Two harnesses filling the cache at once wait for each other.
    fs::create_dir_all(CACHE_DIR).with_context(|| format!("creating {CACHE_DIR}"))?;
    let lock = fs::File::create(Path::new(CACHE_DIR).join(".lock"))?;
    lock.lock()
        .with_context(|| format!("locking {CACHE_DIR}/.lock"))?;
    if !dir.join(".complete").exists() {
        let _ = fs::remove_dir_all(&dir);
        let tmp = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        eprintln!(
            "vmtest: fetching {package} {version} into {}",
            dir.display()
        );
        crate::run(Command::new("apt-get").current_dir(&tmp).args([
            "download",
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            &format!("{package}={version}"),
        ]))?;
        let deb = fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let tree = tmp.join("root");
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        fs::remove_file(&deb)?;
        let kver = only_entry(&tree.join("lib/modules"))?;
        // The package has no modules.dep (the postinst makes it): make it here.
        crate::run(Command::new("depmod").arg("-b").arg(&tree).arg(&kver))?;
        let vmlinuz = tree.join(format!("boot/vmlinuz-{kver}"));
        let vmlinux = extract_vmlinux(
            &fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?,
        )
        .with_context(|| format!("extracting vmlinux from {}", vmlinuz.display()))?;
        fs::write(tmp.join("vmlinux"), vmlinux)?;
        fs::write(tmp.join("kernel-release"), &kver)?;
        fs::write(tmp.join(".complete"), format!("{package} {version}\n"))?;
        fs::rename(&tmp, &dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    }
    let kver = fs::read_to_string(dir.join("kernel-release"))?;
    Ok(Kernel {
        package,
        version,
        vmlinux: dir.join("vmlinux"),
        modules: dir.join("root/lib/modules").join(kver.trim()),
    })
}

fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel release in {}, found {names:?}",
            dir.display()
        ),
    }
}

/// The uncompressed ELF `vmlinux` inside a bzImage (QEMU boots it through
/// its PVH note, skipping the decompressor: much faster under emulation).
/// The payload is located by the setup header (`payload_offset`,
/// `payload_length`) and decompressed by its magic.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let u32_at = |o: usize| -> Result<u32> {
        let b = bz.get(o..o + 4).context("bzImage too short")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS setup header)");
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let len = u32_at(0x24c)? as usize;
    let payload = bz
        .get(start..start + len)
        .context("payload outside the image")?;
    let tool: &[&str] = if payload.starts_with(b"\xfd7zXZ\x00") {
        &["xz", "-dc", "--single-stream"]
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        &["zstd", "-dcq"]
    } else if payload.starts_with(b"\x1f\x8b") {
        &["gzip", "-dc"]
    } else {
        bail!(
            "unknown compression of the kernel payload (magic {:02x?})",
            &payload[..payload.len().min(6)]
        );
    };
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", tool[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    // zstd may complain about the bytes after the frame (the size field):
    // what counts is a complete ELF image.
    if out.stdout.get(..4) != Some(b"\x7fELF") {
        bail!("{} produced no ELF image ({})", tool[0], out.status);
    }
    Ok(out.stdout)
}

// ------------------------------------------------------------- initramfs

/// Load order of `wanted` modules and their dependencies (modules.dep lists
/// every dependency, deepest last).
fn module_order(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let dep = fs::read_to_string(modules.join("modules.dep")).context("modules.dep")?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let name_of = |p: &str| -> String {
        let base = p.rsplit('/').next().unwrap_or(p);
        base.split(".ko").next().unwrap_or(base).replace('-', "_")
    };
    let deps: BTreeMap<String, (String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                name_of(m),
                (
                    m.to_string(),
                    d.split_whitespace().map(String::from).collect(),
                ),
            )
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    for w in wanted {
        if builtin.lines().any(|l| name_of(l) == *w) {
            continue;
        }
        let (path, ds) = deps
            .get(*w)
            .with_context(|| format!("module {w} neither built in nor in modules.dep"))?;
        for d in ds.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
    }
    Ok(order.into_iter().map(|p| modules.join(p)).collect())
}

/// A module file, decompressed (busybox insmod loads plain ELF only).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

/// A newc cpio archive, built in memory.
struct Cpio(Vec<u8>, u32);

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.1 += 1;
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.1,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.0.extend_from_slice(hdr.as_bytes());
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.pad();
        self.0.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.0
    }
}

/// The guest's `/init`: mounts, runs `run.sh` chrooted into the host root,
/// hands back its exit status, powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fatal() { echo "imagewarden-vm: FATAL: $*"; poweroff -f; }
for m in $(cat /modules/order); do insmod "/modules/$m" || fatal "insmod $m"; done
R=/newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R || fatal "mount host root"
mount -t proc proc $R/proc || fatal proc
mount -t sysfs sys $R/sys || fatal sysfs
mount -o bind /dev $R/dev || fatal dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
# /tmp holds containerd's state and images (native snapshots copy each
# layer): up to 80% of guest memory rather than tmpfs's default half.
mount -t tmpfs -o mode=1777,size=80% tmpfs $R/tmp || fatal "tmpfs tmp"
for d in run var/tmp root; do mount -t tmpfs -o mode=1777 tmpfs $R/$d || fatal "tmpfs $d"; done
# The workspace (test binaries, CARGO_MANIFEST_DIR files, the agent binary)
# at its host path, on top of the tmpfs mounts above: a clone under /tmp or
# /root is hidden by them otherwise.
mkdir -p "$R@WORKSPACE@" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose workspace "$R@WORKSPACE@" || fatal "mount workspace"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fatal cgroup2
mount -t bpf bpf $R/sys/fs/bpf || fatal bpffs
mount -t tracefs tracefs $R/sys/kernel/tracing || fatal tracefs
mount -t securityfs securityfs $R/sys/kernel/security || fatal securityfs
mount -t debugfs debugfs $R/sys/kernel/debug
ip link set lo up || fatal "loopback"
mkdir -p $R@RESULTS@
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results $R@RESULTS@ || fatal "mount results"
echo "imagewarden-vm: ready $(cut -d' ' -f1 /proc/uptime) lsm=$(cat $R/sys/kernel/security/lsm)"
# The host root becomes the root of the mount namespace (switch_root's
# move, not a chroot): a process that joins a container's mount namespace
# (`runc exec`) lands in the namespace's root, which must be the
# container's pivoted root and not the initramfs underneath.
cd $R || fatal "cd newroot"
mount --move . / || fatal "move the host root to /"
exec /bin/busybox chroot . /bin/busybox sh -c '/bin/sh @RESULTS@/run.sh; echo $? > @RESULTS@/exit-status; sync; umount @RESULTS@; echo "imagewarden-vm: done"; /bin/busybox poweroff -f'
"#;

fn initramfs(kernel: &Kernel) -> Result<Vec<u8>> {
    let mut c = Cpio(Vec::new(), 0);
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        c.dir(d);
    }
    c.file(
        "bin/busybox",
        0o755,
        &fs::read("/bin/busybox").context("/bin/busybox (busybox-static)")?,
    );
    c.file(
        "init",
        0o755,
        INIT.replace("@RESULTS@", GUEST_RESULTS)
            .replace("@WORKSPACE@", &crate::root_dir().display().to_string())
            .as_bytes(),
    );
    let mut order = String::new();
    for m in module_order(&kernel.modules, GUEST_MODULES)? {
        let base = m
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split(".ko")
            .next()
            .unwrap()
            .to_string()
            + ".ko";
        c.file(&format!("modules/{base}"), 0o644, &module_bytes(&m)?);
        order.push_str(&base);
        order.push('\n');
    }
    c.file("modules/order", 0o644, order.as_bytes());
    Ok(c.finish())
}

/// The one command the guest runs: every test binary in turn, each with its
/// exit status, run time and output in the results share.
fn run_script(root: &Path, spec: &KernelSpec, bins: &[TestBin], opts: &Options) -> String {
    let skips = &opts.skips;
    let mut s = String::from("set -u\nexport CI=true RUST_BACKTRACE=1 HOME=/root\n");
    if let Some(c) = &opts.containerd {
        let _ = writeln!(s, "export IW_TEST_CONTAINERD='{c}'");
    }
    let _ = writeln!(
        s,
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let _ = writeln!(s, "export IMAGEWARDEN_VM_KERNEL='{}'", spec.name);
    if let Some(e) = spec.expect {
        let _ = writeln!(s, "export IMAGEWARDEN_EXPECT_ENFORCEMENT={e}");
    }
    let _ = writeln!(
        s,
        "R={GUEST_RESULTS}\ncat /sys/kernel/security/lsm > $R/lsm"
    );
    let _ = writeln!(s, "cd '{}'", root.join("agent").display());
    for b in bins {
        let _ = writeln!(
            s,
            "echo 'imagewarden-vm: running {n}' > /dev/console\n\
             t0=$(date +%s%N)\ntimeout -k 10 {secs} '{exe}' --show-output{skip} > $R/{n}.log 2>&1\necho $? > $R/{n}.status\n\
             echo $(( ($(date +%s%N) - t0) / 1000000 )) > $R/{n}.ms\n\
             echo \"imagewarden-vm: {n} exit $(cat $R/{n}.status)\" > /dev/console",
            n = b.name,
            exe = b.exe.display(),
            skip = {
                let s: String =
                    skips.iter().filter(|(bin, _)| *bin == b.name).map(|(_, t)| format!(" --skip {t}")).collect();
                let s = if s.is_empty() { s } else { format!(" --exact{s}") };
                match &opts.filter {
                    Some(f) => format!("{s} --nocapture {f}"),
                    None => s,
                }
            },
            secs = BINARY_DEADLINE.as_secs()
        );
    }
    s
}

/// Kills QEMU if the harness stops early (no guest left behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn run_in_guest(
    root: &Path,
    spec: &KernelSpec,
    bins: &[TestBin],
    out_dir: &Path,
    opts: &Options,
) -> Result<KernelResult> {
    let kernel = prepare_kernel(spec)?;
    let dir = out_dir.join(&spec.name);
    let _ = fs::remove_dir_all(&dir);
    let results = dir.join("results");
    fs::create_dir_all(&results)?;
    let initrd = dir.join("initramfs.cpio");
    fs::write(&initrd, initramfs(&kernel)?)?;
    fs::write(results.join("run.sh"), run_script(root, spec, bins, opts))?;

    let mut append = String::from("console=ttyS0 quiet panic=-1 rdinit=/init");
    if !spec.cmdline.is_empty() {
        append.push(' ');
        append.push_str(&spec.cmdline.replace("NOLSM", LSM_WITHOUT_BPF));
    }
    let mut cmd = qemu_command(&kernel, &initrd, &append, &results, opts);
    eprintln!(
        "vmtest: booting {} {} ({append})",
        kernel.package, kernel.version
    );
    let t0 = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().context("starting qemu-system-x86_64")?);
    let console = watch_console(&mut child, spec, &dir, t0)?;
    let st = child.0.wait()?;
    let mut r = KernelResult {
        kernel: format!("{} {}", kernel.package, kernel.version),
        boot: console.boot,
        lsm: fs::read_to_string(results.join("lsm"))
            .unwrap_or_default()
            .trim()
            .to_string(),
        ..Default::default()
    };
    if let Some(f) = console.fatal {
        r.error = Some(format!(
            "{f} (console: {})",
            dir.join("console.log").display()
        ));
        return Ok(r);
    }
    if !results.join("exit-status").exists() {
        r.error = Some(format!(
            "guest stopped ({st}) without an exit status (console: {})",
            dir.join("console.log").display()
        ));
    }
    collect_results(&results, bins, &mut r);
    if !opts.keep {
        let _ = fs::remove_file(&initrd);
    }
    Ok(r)
}

/// qemu with software emulation, the kernel and initramfs, the host root
/// and the workspace shared read-only and the results directory writable.
fn qemu_command(
    kernel: &Kernel,
    initrd: &Path,
    append: &str,
    results: &Path,
    opts: &Options,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1"])
        .args([
            "-m",
            &opts
                .memory_mib
                .unwrap_or_else(|| default_memory_mib(&opts.tests))
                .to_string(),
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-no-reboot",
        ])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=workspace,security_model=none,readonly=on,multidevs=remap",
            crate::root_dir().display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none,multidevs=remap",
            results.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What the guest's console said: when it was ready, and its first fatal line.
struct Console {
    boot: Option<Duration>,
    fatal: Option<String>,
}

/// Copies the guest's console (stdout and qemu's stderr) to console.log,
/// echoing the harness's own lines, until qemu closes both; fails after
/// [`GUEST_DEADLINE`].
fn watch_console(
    child: &mut KillOnDrop,
    spec: &KernelSpec,
    dir: &Path,
    t0: Instant,
) -> Result<Console> {
    let stdout = child.0.stdout.take().expect("piped");
    let stderr = child.0.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((t0.elapsed(), l));
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send((t0.elapsed(), format!("qemu: {l}")));
        }
    });
    let mut console = fs::File::create(dir.join("console.log"))?;
    let mut seen = Console {
        boot: None,
        fatal: None,
    };
    let deadline = t0 + GUEST_DEADLINE;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((at, line)) => {
                let line = line.trim_end_matches('\r').to_string();
                let _ = writeln!(console, "[{:7.2}] {line}", at.as_secs_f64());
                if line.contains("imagewarden-vm:") {
                    eprintln!("vmtest: {} [{:.1}s] {line}", spec.name, at.as_secs_f64());
                }
                if line.contains("imagewarden-vm: ready") {
                    seen.boot = Some(at);
                }
                if line.contains("imagewarden-vm: FATAL") || line.contains("Kernel panic") {
                    seen.fatal.get_or_insert(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(seen),
        }
        if Instant::now() > deadline {
            bail!(
                "guest still running after {GUEST_DEADLINE:?}: killed (console: {})",
                dir.join("console.log").display()
            );
        }
    }
}

/// Each test binary's status, time, log and libtest results, as the
/// guest's run.sh left them in `results`.
fn collect_results(results: &Path, bins: &[TestBin], r: &mut KernelResult) {
    for b in bins {
        let read = |ext: &str| fs::read_to_string(results.join(format!("{}.{ext}", b.name))).ok();
        let Some(status) = read("status") else {
            continue;
        };
        let log = results.join(format!("{}.log", b.name));
        r.binaries.insert(
            b.name.clone(),
            BinResult {
                exit: status.trim().parse().ok(),
                millis: read("ms").and_then(|m| m.trim().parse().ok()),
                enforcement: enforcement_in(&read("log").unwrap_or_default()),
                tests: parse_libtest(&read("log").unwrap_or_default()),
                log,
            },
        );
    }
}

// ----------------------------------------------------------------- table

/// The exec path a test exercises, from its name.
fn path_of(test: &str) -> &'static str {
    if test.contains("lsm") {
        "lsm"
    } else if test.ends_with("tp_btf") {
        "tp_btf+signal"
    } else if test.contains("tracepoint") {
        "tracepoint+signal"
    } else {
        "default"
    }
}

const PATHS: &[&str] = &["lsm", "tp_btf+signal", "tracepoint+signal", "default"];
// "lsm": the agent's own choice (BPF LSM where active, else signals with the
// reason); "default": the agent's defaults, whatever this kernel gives.

fn cell(b: Option<&BinResult>, path: &str) -> String {
    let Some(b) = b else {
        return "no result".into();
    };
    let of: Vec<(&String, &std::result::Result<(), String>)> =
        b.tests.iter().filter(|(n, _)| path_of(n) == path).collect();
    if of.is_empty() {
        return if b.tests.is_empty() && b.exit != Some(0) {
            format!("FAIL exit {:?}", b.exit)
        } else {
            "-".into()
        };
    }
    let ok = of.iter().filter(|(_, r)| r.is_ok()).count();
    if ok == of.len() && b.exit != Some(0) {
        // The binary failed elsewhere (a timeout: 124, a crash): not a pass.
        format!("FAIL: {ok}/{} passed, binary exit {:?}", of.len(), b.exit)
    } else if ok == of.len() {
        format!("pass {ok}/{}", of.len())
    } else {
        let (n, why) = of
            .iter()
            .find(|(_, r)| r.is_err())
            .map(|(n, r)| (n, r.as_ref().err().cloned().unwrap_or_default()))
            .unwrap();
        format!("FAIL {ok}/{}: {n}: {why}", of.len())
    }
}

fn render(results: &[(KernelSpec, KernelResult)], tests: &[String]) -> String {
    let mut rows: Vec<Vec<String>> = vec![{
        let mut h = vec![
            "kernel".to_string(),
            "boot".into(),
            "bpf lsm".into(),
            "tests".into(),
            "time".into(),
            "agent picked".into(),
        ];
        h.extend(PATHS.iter().map(|p| p.to_string()));
        h
    }];
    for (k, r) in results {
        if let Some(e) = &r.error {
            if r.binaries.is_empty() {
                let mut row = vec![
                    k.name.clone(),
                    "-".into(),
                    "-".into(),
                    "*".into(),
                    "-".into(),
                    "-".into(),
                ];
                row.push(format!("FAIL: {e}"));
                rows.push(row);
                continue;
            }
        }
        let lsm = if r.lsm.split(',').any(|l| l == "bpf") {
            "active"
        } else if r.lsm.is_empty() {
            "?"
        } else {
            "inactive"
        };
        for t in tests {
            let b = r.binaries.get(t);
            let mut row = vec![
                k.name.clone(),
                r.boot
                    .map(|d| format!("{:.1}s", d.as_secs_f64()))
                    .unwrap_or_else(|| "-".into()),
                lsm.to_string(),
                t.clone(),
                b.and_then(|b| b.millis)
                    .map(|m| format!("{:.1}s", m as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                b.and_then(|b| b.enforcement.clone())
                    .unwrap_or_else(|| "?".into()),
            ];
            row.extend(PATHS.iter().map(|p| cell(b, p)));
            rows.push(row);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.len().min(60)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, c)| format!("{c:<w$}", w = widths[j]))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let _ = writeln!(
                out,
                "|{}|",
                widths
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("|")
            );
        }
    }
    let _ = writeln!(out);
    for (k, r) in results {
        let _ = writeln!(
            out,
            "{}: {} (active LSMs: {})",
            k.name,
            r.kernel,
            if r.lsm.is_empty() { "?" } else { &r.lsm }
        );
        for (t, b) in &r.binaries {
            for (n, res) in &b.tests {
                if let Err(why) = res {
                    let _ = writeln!(out, "  FAIL {t}::{n}: {why}");
                }
            }
            if !b.passed() {
                let _ = writeln!(out, "  {t}: exit {:?}, log {}", b.exit, b.log.display());
            }
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_output_is_parsed_with_reasons() {
        let log =
            "running 2 tests\ntest a_tp_btf ... ok\ntest b_lsm ... FAILED\n\nfailures:\n\n---- b_lsm stdout ----\n\
thread 'b_lsm' panicked at agent/tests/x.rs:1:2:\nexec should fail with EPERM\nnote: ...\n\nfailures:\n    b_lsm\n";
        let log = format!(
            "{log}\nsuccesses:\n\n---- a_tp_btf stdout ----\nagent picked enforcement lsm\n"
        );
        let t = parse_libtest(&log);
        assert_eq!(t["a_tp_btf"], Ok(()));
        assert_eq!(t["b_lsm"], Err("exec should fail with EPERM".to_string()));
        assert_eq!(path_of("a_tp_btf"), "tp_btf+signal");
        assert_eq!(path_of("denied_classic_tracepoint"), "tracepoint+signal");
        assert_eq!(
            enforcement_in("enforcement signal\nagent picked enforcement lsm (tp_btf)"),
            Some("lsm".into())
        );
        assert_eq!(
            enforcement_in("agent picked enforcement signal: BPF LSM refused"),
            Some("signal".into())
        );
        assert_eq!(enforcement_in("enforcement lsm"), None);
    }

    #[test]
    fn libtest_results_survive_uncaptured_output() {
        let r = parse_libtest(
            "running 1 test\ntest a_lsm ... agent: starting\nx: 1.0s: step\nok\n\ntest b_lsm ... FAILED\n",
        );
        assert_eq!(r.get("a_lsm"), Some(&Ok(())), "{r:?}");
        assert!(matches!(r.get("b_lsm"), Some(Err(_))), "{r:?}");
    }

    #[test]
    fn bad_arguments_are_refused_by_name() {
        let e = parse_args(&["--kernels".into(), "5.4".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("5.4"), "{e}");
        assert!(parse_args(&["--tests".into(), "../x".into()]).is_err());
        assert!(parse_args(&["--bogus".into()]).is_err());
        let o = parse_args(&["--ci".into()]).unwrap();
        assert_eq!(o.kernels.len(), 1);
        assert!(
            o.tests.iter().any(|t| t == "e2e_daemonset"),
            "{:?}",
            o.tests
        );
        assert_eq!(o.skips.len(), CI_SKIPS.len());
        // The rolling handover runs in the guest (issue 13).
        assert!(!o
            .skips
            .iter()
            .any(|(b, t)| b == "enforce_safety" && t.starts_with("rolling_replacement")));
        assert_eq!(o.containerd.as_deref(), Some("2"));
        assert!(parse_args(&["--containerd".into(), "3".into()]).is_err());
        let o = parse_args(&["--ci".into(), "--tests".into(), "privileged_exec".into()]).unwrap();
        assert_eq!(o.tests, ["privileged_exec"]);
        assert!(parse_args(&[]).unwrap().skips.is_empty());
    }

    #[test]
    fn vmlinux_extraction_refuses_what_is_not_a_bzimage() {
        assert!(extract_vmlinux(b"not a kernel").is_err());
        assert!(extract_vmlinux(&vec![0u8; 4096]).is_err());
    }
}
