//! Installs what a fresh machine lacks, idempotently: Debian packages, the
//! nightly toolchain's rust-src, and bpf-linker built against Debian's
//! LLVM 22. Quiet and fast when everything is there.
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Debian packages and why each is needed.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libzstd-dev", "linking bpf-linker against LLVM"),
    ("zlib1g-dev", "linking bpf-linker against LLVM"),
    ("bpftool", "inspecting loaded programs in tests"),
    (
        "protobuf-compiler",
        "protoc for the CRI and containerd API clients",
    ),
    ("containerd", "end-to-end tests run a private containerd"),
    ("runc", "containerd's runtime in the end-to-end tests"),
    ("umoci", "building test images without a registry"),
    ("busybox-static", "the root filesystem of test images"),
    (
        "gcc",
        "the static exec-drift helper in the test images (and the linker Rust uses)",
    ),
    ("libc6-dev", "static libc for the exec-drift test helper"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn is_root() -> bool {
    // `id -u` avoids a libc dependency in xtask.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("setup: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("setup: {what} failed ({status}); command: {cmd:?}");
    }
    Ok(())
}

fn apt() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// Installs the packages of `list` that are missing (each with why it is
/// needed), after one `apt-get update`; nothing when all are there.
pub fn apt_install(list: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (p, why) in list.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("setup: missing Debian package {p} ({why})");
    }
    if !is_root() {
        bail!(
            "setup: installing {} needs root: run `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(
        "apt-get update",
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    step(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("setup: cannot run `rustc +nightly` (is rustup installed?)")?;
    if !sysroot.status.success() {
        step(
            "rustup toolchain install nightly",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
        )?;
        return nightly_rust_src();
    }
    let root = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if std::path::Path::new(&root)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Ok(());
    }
    step(
        "rustup component add rust-src --toolchain nightly",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

fn bpf_linker() -> Result<()> {
    if quiet_ok(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    step(
        &format!("cargo install bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"),
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    if !quiet_ok(Command::new("bpf-linker").arg("--version")) {
        bail!("setup: bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// rustfmt and clippy for the stable toolchain (the workspace) and for
/// nightly (agent-ebpf, linted for its own target): `scripts/lint.sh`.
fn lint_components() -> Result<()> {
    for toolchain in ["stable", "nightly"] {
        let listed = Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", toolchain])
            .output()
            .context("setup: cannot run rustup")?;
        let have = String::from_utf8_lossy(&listed.stdout).to_string();
        for component in ["rustfmt", "clippy"] {
            if !have.lines().any(|l| l.starts_with(component)) {
                step(
                    &format!("rustup component add {component} --toolchain {toolchain} (scripts/lint.sh)"),
                    Command::new("rustup").args(["component", "add", component, "--toolchain", toolchain]),
                )?;
            }
        }
    }
    Ok(())
}

pub fn setup() -> Result<()> {
    apt()?;
    crate::containerd2::setup()?;
    nightly_rust_src()?;
    bpf_linker()?;
    lint_components()?;
    Ok(())
}

/// What `cargo xtask vmtest` needs besides [`setup`]: QEMU, the initramfs'
/// busybox, depmod for the extracted kernels' modules.dep, the kernel
/// payload decompressors. The kernel packages themselves are fetched into
/// a cache by the harness (`xtask/src/vm.rs`), never installed.
pub const VM_APT_PACKAGES: &[(&str, &str)] = &[
    (
        "qemu-system-x86",
        "booting Debian's 6.1 and 6.12 kernels for the test matrix",
    ),
    (
        "cpio",
        "inspecting the test initramfs (the harness writes it itself)",
    ),
    (
        "kmod",
        "depmod: modules.dep of the extracted kernel packages",
    ),
    ("busybox-static", "the test initramfs"),
    ("xz-utils", "decompressing the 6.1 kernel and modules"),
    ("zstd", "decompressing the 6.12 kernel"),
];

pub fn vm() -> Result<()> {
    apt_install(VM_APT_PACKAGES)
}
