//! `imagewarden run`: load and attach the probes, apply verdicts, turn exec
//! events into findings. SIGTERM and SIGINT detach everything cleanly.
use std::{
    io::Write,
    sync::{atomic::Ordering, Arc},
};

use agent_common::verdict;
use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    cli::{ExecHook as CliHook, Mode, RunArgs},
    finding::{Attribution, Finding},
    probes::{
        event::{ExecRecord, KernelVerdict},
        reader::{self, ReaderStats, CHANNEL_CAPACITY},
        HookChoice, ProbeOptions, Probes,
    },
};

/// The default policy when `--policy` is absent: the seed's Kyverno
/// `restrict-image-registries` (only `public.ecr.aws/*`).
pub const EMBEDDED_POLICY: &str = include_str!("../../deploy/policies/restrict-registries.yaml");

/// Whether a record becomes an output line.
pub fn should_print(rec: &ExecRecord, all_execs: bool) -> bool {
    all_execs || rec.verdict == KernelVerdict::Deny || rec.killed || rec.held || rec.lsm_denied
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.standalone {
        bail!(
            "only --standalone is available in this version: the Kubernetes sources (API server, \
             kubelet) are not built yet"
        );
    }
    let (policy_name, _policy_text) = match &args.policy {
        Some(p) => (p.display().to_string(), std::fs::read_to_string(p).with_context(|| format!("reading policy {}", p.display()))?),
        None => ("embedded default (restrict-image-registries: public.ecr.aws/*)".to_string(), EMBEDDED_POLICY.to_string()),
    };
    info!(policy = %policy_name, "policy");

    let opts = ProbeOptions {
        ringbuf_bytes: args.ringbuf_bytes,
        hook: match args.exec_hook {
            CliHook::Auto => HookChoice::Auto,
            CliHook::TpBtf => HookChoice::TpBtf,
            CliHook::Tracepoint => HookChoice::Tracepoint,
        },
        enforce: args.mode == Mode::Enforce,
        try_lsm: true,
        hold_unknown_containers: true,
    };
    let mut probes = Probes::load(&opts).context("loading the eBPF probes")?;
    info!(
        mode = ?args.mode,
        exec_hook = probes.exec_hook.as_str(),
        enforcement = probes.enforcement.as_str(),
        "agent running"
    );
    let mut attributions = std::collections::HashMap::new();
    for path in &args.deny_cgroups {
        let id = probes
            .set_cgroup_path_verdict(path, verdict::DENY)
            .with_context(|| format!("--deny-cgroup {}", path.display()))?;
        attributions.insert(
            id,
            Attribution { reason: Some(format!("denied-cgroup: {}", path.display())), ..Default::default() },
        );
        info!(cgroup = %path.display(), cgroup_id = id, "cgroup denied");
    }

    let ring = probes.take_events().context("ring buffer already taken")?;
    let (tx, mut rx) = mpsc::channel::<ExecRecord>(CHANNEL_CAPACITY);
    let stats = Arc::new(ReaderStats::default());
    let pump = tokio::spawn(reader::pump(ring, tx, stats.clone()));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            rec = rx.recv() => {
                let Some(rec) = rec else { break };
                let mut out = stdout.lock();
                emit(&mut out, &rec, &attributions, args.all_execs);
                // Take what is already queued before flushing once.
                while let Ok(rec) = rx.try_recv() {
                    emit(&mut out, &rec, &attributions, args.all_execs);
                }
                if let Err(e) = out.flush() {
                    warn!("stdout: {e}");
                }
            }
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break }
        }
    }
    pump.abort();
    let k = probes.counters().unwrap_or_default();
    info!(
        execs = k.execs,
        kills = k.kills,
        ringbuf_drops = k.ringbuf_drops,
        channel_drops = stats.channel_drops.load(Ordering::Relaxed),
        decode_errors = stats.decode_errors.load(Ordering::Relaxed),
        "stopped"
    );
    drop(probes);
    Ok(())
}

fn emit(out: &mut impl Write, rec: &ExecRecord, attrs: &std::collections::HashMap<u64, Attribution>, all: bool) {
    if !should_print(rec, all) {
        return;
    }
    let f = Finding::from_exec(rec, attrs.get(&rec.cgroup_id));
    match serde_json::to_string(&f) {
        Ok(line) => {
            let _ = writeln!(out, "{line}");
        }
        Err(e) => warn!("cannot serialise finding: {e}"),
    }
}
