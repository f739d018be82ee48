//! `cargo xtask <command>`:
//!   setup                 install what a fresh machine lacks (idempotent)
//!   build-ebpf [--release] build the eBPF object, print its path
//!   test [-- ARGS]        setup, then every test (privileged ones need root)
//!   run [-- AGENT ARGS]   setup, build, then `imagewarden run --standalone ...` as root
//!   demo                  the seed's lab on a private containerd (root)
//!   vmtest [--kernels 6.1,6.12,6.12-nolsm,host] [--tests a,b] [--ci]
//!                         the privileged test binaries on Debian's kernels under qemu (root)
mod bench;
mod containerd2;
mod ebpf_build;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    let passthrough: Vec<String> = match rest.iter().position(|a| a == "--") {
        Some(i) => rest[i + 1..].to_vec(),
        None => rest.clone(),
    };
    match cmd {
        "setup" => setup::setup(),
        "build-ebpf" => {
            setup::setup()?;
            let release = rest.iter().any(|a| a == "--release");
            let root = root_dir();
            let obj = ebpf_build::build_ebpf(
                &root.join("agent-ebpf"),
                &root.join("target/ebpf"),
                release,
            )
            .map_err(anyhow::Error::msg)?;
            println!("{}", obj.display());
            Ok(())
        }
        "test" => {
            setup::setup()?;
            if !setup::is_root() {
                eprintln!(
                    "xtask: not root: the privileged tests (eBPF, cgroups, containerd) will {}",
                    if std::env::var_os("CI").is_some() {
                        "FAIL (CI is set)"
                    } else {
                        "be reported as SKIPPED"
                    }
                );
            }
            let root = root_dir();
            // --no-fail-fast: one failing test binary must not hide the others.
            let tests = run(Command::new("cargo")
                .current_dir(&root)
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(&passthrough));
            // The deploy manifests against the Kubernetes JSON schemas (offline, strict).
            let manifests = run(Command::new("bash")
                .current_dir(&root)
                .arg("scripts/validate-manifests.sh"));
            tests.and(manifests)
        }
        "run" => {
            setup::setup()?;
            let root = root_dir();
            run(Command::new("cargo").current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "imagewarden",
            ]))?;
            let bin = root.join("target/release/imagewarden");
            let mut c = if setup::is_root() {
                Command::new(&bin)
            } else {
                eprintln!("xtask: the agent loads eBPF programs: running it with sudo");
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            let mut a = vec!["run".to_string(), "--standalone".to_string()];
            a.extend(passthrough);
            run(c.args(a))
        }
        "demo" => {
            setup::setup()?;
            if !setup::is_root() {
                bail!("the demo loads eBPF programs and runs containerd: run it as root");
            }
            let root = root_dir();
            run(Command::new("cargo").current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "imagewarden",
                "--bin",
                "imagewarden",
                "--example",
                "demo",
            ]))?;
            run(Command::new(root.join("target/release/examples/demo"))
                .arg(root.join("target/release/imagewarden")))
        }
        "bench" => bench::bench(&rest),
        "vmtest" => vm::vmtest(&root_dir(), &rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup | build-ebpf [--release] | test [-- cargo test args] | run [-- agent args] | demo | bench | vmtest [--kernels 6.1,6.12,6.12-nolsm,host] [--tests a,b] [--ci]>"
            );
            if cmd == "help" {
                Ok(())
            } else {
                bail!("unknown command {cmd}")
            }
        }
    }
}
