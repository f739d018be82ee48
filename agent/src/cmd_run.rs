//! `imagewarden run`: load the policy, attach the probes, learn every
//! container from the runtimes, push verdicts into the kernel, turn exec
//! events into findings. SIGTERM and SIGINT detach everything cleanly.
use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use agent_common::verdict;
use anyhow::{bail, Context};
use imagewarden_policy::PolicySet;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    cli::{ExecHook as CliHook, Mode, RunArgs},
    controller::{self, Controller, ControllerConfig, RUNTIME_EVENT_CAPACITY},
    finding::{Attribution, Finding},
    probes::{
        event::ExecRecord,
        reader::{self, ReaderStats, CHANNEL_CAPACITY},
        HookChoice, ProbeOptions, Probes,
    },
    sources::{cgroup::find_cgroup2_mount, containerd::ContainerdClient, cri::CriClient},
};

/// The default policy when `--policy` is absent: the seed's Kyverno
/// `restrict-image-registries` (only `public.ecr.aws/*`).
pub const EMBEDDED_POLICY: &str = include_str!("../../deploy/policies/restrict-registries.yaml");

/// Loads the policy (file or embedded default); refuses a partial policy
/// unless allowed; logs every warning.
pub fn load_policy(args: &RunArgs) -> anyhow::Result<PolicySet> {
    let set = match &args.policy {
        Some(p) => imagewarden_policy::load_policy_file(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => {
            info!("no --policy: using the embedded default (the seed's restrict-image-registries: only public.ecr.aws/*)");
            imagewarden_policy::load_policy_str(EMBEDDED_POLICY, "embedded:restrict-registries.yaml")
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    for w in set.warnings() {
        warn!("policy: {w}");
    }
    if set.is_partial() {
        for u in set.unsupported() {
            warn!("policy: not enforced: {u}");
        }
        if !args.allow_partial {
            bail!(
                "the policy has {} rule(s) that cannot be enforced faithfully (listed above); \
                 fix them or pass --allow-partial",
                set.unsupported().len()
            );
        }
    }
    info!(policies = ?set.policy_names(), rules = set.rule_count(), "policy loaded");
    Ok(set)
}

async fn connect_runtimes(endpoint: Option<&str>) -> (Option<ContainerdClient>, Option<CriClient>) {
    let containerd = match ContainerdClient::autodetect(endpoint).await {
        Ok(c) => {
            info!(socket = %c.socket().display(), "containerd API connected (all namespaces)");
            Some(c)
        }
        Err(e) => {
            info!("containerd API not available: {e}");
            None
        }
    };
    let cri = match CriClient::autodetect(endpoint).await {
        Ok(c) => {
            info!(socket = %c.socket().display(), runtime = c.runtime_name(), version = c.runtime_version(), "CRI connected");
            Some(c)
        }
        Err(e) => {
            info!("CRI not available: {e}");
            None
        }
    };
    if containerd.is_none() && cri.is_none() {
        warn!("no container runtime found: only execs in --deny-cgroup cgroups and held containers are acted on");
    }
    (containerd, cri)
}

fn stdout_sink() -> Box<dyn FnMut(&Finding) + Send> {
    Box::new(|f: &Finding| match serde_json::to_string(f) {
        Ok(line) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                // stdout closed: nothing sensible left to do with findings.
            }
        }
        Err(e) => warn!("cannot serialise finding: {e}"),
    })
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.standalone {
        bail!(
            "only --standalone is available in this version: the Kubernetes sources (API server, \
             kubelet) are not wired into `run` yet"
        );
    }
    let started = Instant::now();
    let policy = load_policy(&args)?;
    let enforce = args.mode == Mode::Enforce;
    let opts = ProbeOptions {
        ringbuf_bytes: args.ringbuf_bytes,
        hook: match args.exec_hook {
            CliHook::Auto => HookChoice::Auto,
            CliHook::TpBtf => HookChoice::TpBtf,
            CliHook::Tracepoint => HookChoice::Tracepoint,
        },
        enforce,
        try_lsm: true,
        hold_unknown_containers: !args.no_hold,
    };
    let mut probes = Probes::load(&opts).context("loading the eBPF probes")?;
    let mut static_attr = std::collections::HashMap::new();
    for path in &args.deny_cgroups {
        let id = probes
            .set_cgroup_path_verdict(path, verdict::DENY)
            .with_context(|| format!("--deny-cgroup {}", path.display()))?;
        static_attr.insert(
            id,
            Attribution { reason: Some(format!("denied-cgroup: {}", path.display())), ..Default::default() },
        );
        info!(cgroup = %path.display(), cgroup_id = id, "cgroup denied");
    }
    let ring = probes.take_events().context("ring buffer already taken")?;
    let (tx, mut rx) = mpsc::channel::<ExecRecord>(CHANNEL_CAPACITY);
    let stats = Arc::new(ReaderStats::default());
    let pump = tokio::spawn(reader::pump(ring, tx, stats.clone()));

    let cgroup2 = find_cgroup2_mount().context("no cgroup2 hierarchy is mounted")?;
    let (containerd, cri) = connect_runtimes(args.runtime_endpoint.as_deref()).await;
    let (rt_tx, mut rt_rx) = mpsc::channel(RUNTIME_EVENT_CAPACITY);
    let rt_drops = Arc::new(AtomicU64::new(0));
    let forwarder = containerd
        .clone()
        .map(|c| tokio::spawn(controller::forward_containerd_events(c, rt_tx.clone(), rt_drops.clone())));
    drop(rt_tx);

    let cfg = ControllerConfig {
        enforce,
        all_execs: args.all_execs,
        hold_timeout: args.hold_timeout,
        resync_interval: args.resync_interval,
        cgroup2,
    };
    let mut ctrl = Controller::new(cfg, probes, policy, containerd, cri, stdout_sink());
    ctrl.static_attributions = static_attr;
    ctrl.resync().await;
    info!(
        mode = ?args.mode,
        exec_hook = ctrl.probes().exec_hook.as_str(),
        enforcement = ctrl.probes().enforcement.as_str(),
        inventory = %ctrl.summary(),
        startup_ms = started.elapsed().as_millis() as u64,
        "agent running"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(args.resync_interval);
    resync.tick().await; // the first tick is immediate: just synced
    let mut hold_tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut seen_rt_drops = 0;
    loop {
        tokio::select! {
            rec = rx.recv() => {
                let Some(rec) = rec else { break };
                ctrl.on_exec(&rec).await;
                // Take what is already queued before waiting again.
                while let Ok(rec) = rx.try_recv() {
                    ctrl.on_exec(&rec).await;
                }
            }
            Some(ev) = rt_rx.recv() => ctrl.on_runtime_event(ev).await,
            _ = resync.tick() => {
                let d = rt_drops.load(Ordering::Relaxed);
                if d != seen_rt_drops {
                    warn!(dropped = d - seen_rt_drops, "runtime events were dropped (channel full); resyncing");
                    seen_rt_drops = d;
                }
                ctrl.resync().await
            }
            _ = hold_tick.tick(), if ctrl.has_holds() => ctrl.expire_holds(),
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break }
        }
    }
    pump.abort();
    if let Some(f) = forwarder {
        f.abort();
    }
    let k = ctrl.probes().counters().unwrap_or_default();
    info!(
        execs = k.execs,
        kills = k.kills,
        ringbuf_drops = k.ringbuf_drops,
        channel_drops = stats.channel_drops.load(Ordering::Relaxed),
        decode_errors = stats.decode_errors.load(Ordering::Relaxed),
        runtime_event_drops = rt_drops.load(Ordering::Relaxed),
        stats = ?ctrl.stats,
        "stopped"
    );
    drop(ctrl);
    Ok(())
}
