#!/usr/bin/env bash
# Lints every crate, user space and eBPF apart (a workspace-wide clippy would
# leak agent-common's `user` feature into the eBPF build): rustfmt on all of
# them, clippy with warnings as errors on the workspace (all targets) and on
# agent-ebpf for its own target with nightly. Run by .ci/run; needs
# `cargo xtask setup` (rustfmt and clippy for both toolchains).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: cargo fmt --check (workspace, agent-ebpf, fuzz)"
cargo fmt --all -- --check
(cd agent-ebpf && cargo +nightly fmt -- --check)
(cd fuzz && cargo fmt -- --check)
echo "lint: cargo clippy --workspace --all-targets -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings
echo "lint: cargo +nightly clippy agent-ebpf (bpfel-unknown-none) -D warnings"
(cd agent-ebpf && cargo +nightly clippy --quiet --target bpfel-unknown-none -Z build-std=core \
    --target-dir ../target/ebpf-clippy -- -D warnings)
echo "lint: ok"
