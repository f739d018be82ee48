//! Builds the eBPF object (agent-ebpf) and puts it in OUT_DIR, where
//! `src/probes` embeds it with `include_bytes_aligned!`.
//! `IMAGEWARDEN_EBPF_OBJECT=/path` uses a prebuilt object instead.
use std::{env, path::PathBuf};

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dest = out.join("imagewarden.bpf.o");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    println!("cargo:rerun-if-env-changed=IMAGEWARDEN_EBPF_OBJECT");
    println!("cargo:rerun-if-changed=../agent-ebpf/src");
    println!("cargo:rerun-if-changed=../agent-ebpf/Cargo.toml");
    println!("cargo:rerun-if-changed=../agent-common/src");
    println!("cargo:rerun-if-changed=../xtask/src/ebpf_build.rs");

    let obj = match env::var_os("IMAGEWARDEN_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            match ebpf_build::build_ebpf(&root.join("agent-ebpf"), &out.join("ebpf-target"), true) {
                Ok(p) => p,
                Err(e) => panic!("imagewarden: {e}"),
            }
        }
    };
    std::fs::copy(&obj, &dest).unwrap_or_else(|e| {
        panic!(
            "imagewarden: cannot copy {} to {}: {e}",
            obj.display(),
            dest.display()
        )
    });
}
