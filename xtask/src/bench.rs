//! `cargo xtask bench [--quick] [--sustain-secs N] [--out FILE] [-- MORE]`:
//! builds the agent and the benchmark driver (release), runs the policy
//! evaluation bench, then the node benchmarks (`agent/examples/bench_node.rs`)
//! as root. Prints one table; writes the same figures as JSON
//! (default `bench/results.json`). See docs/benchmarks.md.
use std::process::Command;

use anyhow::{bail, Result};

use crate::{root_dir, run, setup};

/// Prerequisites of the benchmark only (not of the agent or its tests):
/// Debian's `bpftrace`, the peer the exec cost is compared with. Idempotent:
/// installs only what is missing.
fn bench_setup() -> Result<()> {
    setup::apt_install(&[(
        "bpftrace",
        "the peer baseline of the benchmark's exec-cost section",
    )])
}

pub fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    if !setup::is_root() {
        bail!(
            "the benchmarks load eBPF programs and run containerd: run `cargo xtask bench` as root"
        );
    }
    bench_setup()?;
    let root = root_dir();
    let quick = args.iter().any(|a| a == "--quick");
    // Everything but `--`, passed on to the driver.
    let mut driver_args: Vec<String> = args.iter().filter(|a| *a != "--").cloned().collect();
    if !driver_args.iter().any(|a| a == "--out") {
        driver_args.push("--out".into());
        driver_args.push(root.join("bench/results.json").display().to_string());
    }
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "imagewarden",
        "--bin",
        "imagewarden",
        "--example",
        "bench_node",
    ]))?;
    let policy_json = root.join("target/bench/policy.json");
    let _ = std::fs::remove_file(&policy_json);
    let mut pb = Command::new("cargo");
    pb.current_dir(&root)
        .args([
            "bench",
            "-p",
            "imagewarden-policy",
            "--bench",
            "policy_eval",
            "--",
            "--json",
        ])
        .arg(&policy_json);
    if quick {
        pb.arg("--quick");
    }
    run(&mut pb)?;
    run(
        Command::new(root.join("target/release/examples/bench_node"))
            .current_dir(&root)
            .arg("--agent")
            .arg(root.join("target/release/imagewarden"))
            .arg("--policy-json")
            .arg(&policy_json)
            .args(&driver_args),
    )
}
