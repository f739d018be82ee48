//! Builds the eBPF object. Shared by `cargo xtask build-ebpf` and the agent's
//! build script (included there with `#[path]`), so there is one recipe.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Environment that the outer cargo sets and that must not leak into the
/// nightly, cross-target build.
const SCRUB: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_LLVM_COV",
    "RUSTDOCFLAGS",
];

pub const EBPF_TARGET: &str = "bpfel-unknown-none";
pub const EBPF_BIN: &str = "imagewarden";

/// Compiles `agent-ebpf` with nightly, `-Z build-std=core` and bpf-linker,
/// keeping BTF. Returns the path of the object.
pub fn build_ebpf(ebpf_dir: &Path, target_dir: &Path, release: bool) -> Result<PathBuf, String> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(ebpf_dir)
        .arg("+nightly")
        .args([
            "build",
            "--quiet",
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--bin")
        .arg(EBPF_BIN)
        .arg("--target-dir")
        .arg(target_dir);
    if release {
        cmd.arg("--release");
    }
    for k in SCRUB {
        cmd.env_remove(k);
    }
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CARGO_CFG_")
                || k.starts_with("CARGO_FEATURE_")
                || k.starts_with("CARGO_PKG_")
            {
                cmd.env_remove(k);
            }
        }
    }
    // BTF is emitted only when asked; it is needed for tp_btf/LSM and bpftool.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    );
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run `cargo +nightly` ({e}); run `cargo xtask setup`"))?;
    if !status.success() {
        return Err(format!(
            "building the eBPF object failed ({status}). It needs the nightly toolchain with \
             rust-src and bpf-linker on PATH: run `cargo xtask setup`."
        ));
    }
    let obj = target_dir
        .join(EBPF_TARGET)
        .join(if release { "release" } else { "debug" })
        .join(EBPF_BIN);
    if !obj.is_file() {
        return Err(format!(
            "the eBPF build succeeded but {} is missing",
            obj.display()
        ));
    }
    Ok(obj)
}
