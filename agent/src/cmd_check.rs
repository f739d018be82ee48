//! `imagewarden check`: evaluates image references, or the workloads of a
//! manifest, against a policy and prints one JSON object per image per line.
//!
//! Exit status: 0 every image allowed, 1 any denied (Audit or Enforce), 2 on
//! a usage or policy error (message on stderr, with file and line for YAML
//! errors). A Kyverno policy of which some rule cannot be enforced
//! faithfully is an error unless `--allow-partial`; the rules are listed
//! either way. Warnings go to stderr as lines starting `warning:`.
use std::io::Write;

use imagewarden_policy::check::{check_images, check_workloads, CheckRecord};
use imagewarden_policy::manifest::extract_images_file;
use imagewarden_policy::{load_policy_file, ContainerType};

use crate::cli::{self, CheckArgs};

fn container_type(c: cli::ContainerType) -> ContainerType {
    match c {
        cli::ContainerType::Container => ContainerType::Container,
        cli::ContainerType::Init => ContainerType::Init,
        cli::ContainerType::Ephemeral => ContainerType::Ephemeral,
    }
}

/// Runs `check`; returns the process exit status (0 all allowed, 1 any denied, 2 usage/policy error).
pub fn run(args: &CheckArgs) -> i32 {
    let set = match load_policy_file(&args.policy) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("imagewarden check: error: {e}");
            return 2;
        }
    };
    for w in set.warnings() {
        eprintln!("warning: {w}");
    }
    if set.is_partial() {
        let level = if args.allow_partial {
            "warning"
        } else {
            "error"
        };
        eprintln!(
            "{level}: {}: {} rule(s) cannot be enforced faithfully:",
            args.policy.display(),
            set.unsupported().len()
        );
        for u in set.unsupported() {
            eprintln!(
                "{level}:   policy {} rule {}: {}",
                u.policy, u.rule, u.reason
            );
        }
        if !args.allow_partial {
            eprintln!(
                "error: refusing a partial policy; pass --allow-partial to enforce the other rules"
            );
            return 2;
        }
    }
    let records: Vec<CheckRecord> = match &args.manifest {
        Some(path) => {
            let manifest = match extract_images_file(path) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("imagewarden check: error: {e}");
                    return 2;
                }
            };
            for s in &manifest.skipped {
                eprintln!(
                    "warning: {}: {s} is not a workload; skipped",
                    path.display()
                );
            }
            if manifest.images.is_empty() {
                eprintln!("warning: {}: no workload images found", path.display());
            }
            check_workloads(&set, &manifest.images, args.namespace.as_deref())
        }
        None => {
            if args.images.is_empty() {
                eprintln!("imagewarden check: error: give IMAGE arguments or --manifest FILE");
                return 2;
            }
            check_images(
                &set,
                &args.images,
                args.namespace.as_deref(),
                container_type(args.container_type),
            )
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut denied = false;
    for r in &records {
        denied |= !r.allowed;
        let line = match serde_json::to_string(r) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("imagewarden check: error: {e}");
                return 2;
            }
        };
        if writeln!(out, "{line}").is_err() {
            // stdout closed (e.g. `| head`): the verdict still decides the status.
            break;
        }
    }
    let _ = out.flush();
    i32::from(denied)
}
