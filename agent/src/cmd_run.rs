//! `imagewarden run`: load the policy, attach the probes, learn every
//! container from the runtimes, push verdicts into the kernel, turn exec
//! events into findings. SIGTERM and SIGINT detach everything cleanly.
use std::{
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
    cli::{ExecHook as CliHook, FailMode, Mode, RunArgs},
    controller::{self, Controller, ControllerConfig, RUNTIME_EVENT_CAPACITY},
    finding::{Attribution, Finding, FindingAction, FindingVerdict, Reason, ReasonKind},
    kube_run::KubeState,
    metrics::{self, Metrics, ModeLabel, ReloadResult},
    probes::{
        event::ExecRecord,
        reader::{self, ReaderStats, CHANNEL_CAPACITY},
        HookChoice, ProbeOptions, Probes,
    },
    server::{self, Health, ReadyGate, ServerState},
    sink::{SinkConfig, Sinks, WebhookConfig},
    sources::{
        cgroup::find_cgroup2_mount, containerd::ContainerdClient, cri::CriClient,
        kyverno_config::Exemptions,
    },
};

/// The default policy when `--policy` is absent: the seed's Kyverno
/// `restrict-image-registries` (only `public.ecr.aws/*`).
pub const EMBEDDED_POLICY: &str = include_str!("../../deploy/policies/restrict-registries.yaml");

/// Loads the policy (file, or the embedded default when standalone);
/// refuses a partial policy unless allowed; logs every warning. Also
/// returns the text, which Kubernetes mode merges with cluster policies.
pub fn load_policy(args: &RunArgs) -> anyhow::Result<(PolicySet, Option<(String, String)>)> {
    let (text, name) = match &args.policy {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("reading policy {}", p.display()))?,
            p.display().to_string(),
        ),
        None if args.standalone => {
            info!("no --policy: using the embedded default (the seed's restrict-image-registries: only public.ecr.aws/*)");
            (
                EMBEDDED_POLICY.to_string(),
                "embedded:restrict-registries.yaml".to_string(),
            )
        }
        None => {
            info!("no --policy: enforcing the cluster's policies only (Kyverno ClusterPolicy/Policy/ValidatingPolicy, ValidatingAdmissionPolicy, ImagePolicy)");
            return Ok((PolicySet::new(), None));
        }
    };
    let set =
        imagewarden_policy::load_policy_str(&text, &name).map_err(|e| anyhow::anyhow!("{e}"))?;
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
    Ok((set, Some((text, name))))
}

enum KubeChange {
    Policy,
    Pods,
    Namespaces,
    Exemptions,
}

/// Resolves when the cluster's merged policy or the API server's Pods
/// changed (never without Kubernetes, nor once a source has ended).
async fn kube_changed(k: &mut Option<KubeState>) -> KubeChange {
    let Some(k) = k else {
        return std::future::pending().await;
    };
    tokio::select! {
        r = k.policy.policy.changed() => match r {
            Ok(()) => KubeChange::Policy,
            Err(_) => std::future::pending().await,
        },
        r = k.pods.changes.changed() => match r {
            Ok(()) => KubeChange::Pods,
            Err(_) => std::future::pending().await,
        },
        r = k.exemptions.changed() => match r {
            Ok(()) => KubeChange::Exemptions,
            Err(_) => std::future::pending().await,
        },
        r = k.namespaces.changes.changed() => match r {
            Ok(()) => KubeChange::Namespaces,
            Err(_) => std::future::pending().await,
        },
    }
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

/// Where the controller sends findings.
type FindingsOut = Box<dyn FnMut(&Finding) + Send>;

/// Findings go to every sink and are counted by reason.
fn findings_out(sinks: Sinks, metrics: Metrics) -> (FindingsOut, Arc<Sinks>) {
    let sinks = Arc::new(sinks);
    let s2 = sinks.clone();
    let out = Box::new(move |f: &Finding| {
        crate::finding::emit(f, &metrics, &s2);
        s2.flush();
    });
    (out, sinks)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let metrics = Metrics::new();
    let health = Health::with_gates(std::time::Duration::from_secs(30), &ReadyGate::ALL);
    let enforce = args.mode == Mode::Enforce;
    metrics.set_mode(if enforce {
        ModeLabel::Enforce
    } else {
        ModeLabel::Audit
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = match &args.listen {
        Some(l) => {
            let addr: std::net::SocketAddr = l
                .parse()
                .with_context(|| format!("--listen {l}: not ADDR:PORT"))?;
            let srv = server::bind(
                addr,
                ServerState {
                    metrics: metrics.clone(),
                    health: health.clone(),
                },
            )
            .await
            .with_context(|| format!("--listen {l}"))?;
            info!(addr = %srv.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz, /readyz");
            Some(tokio::spawn(srv.run(async {
                let _ = stop_rx.await;
            })))
        }
        None => None,
    };
    let (policy, base_policy) = match load_policy(&args) {
        Ok(p) => p,
        Err(e) => {
            metrics.policy_reload(ReloadResult::Error);
            return Err(e);
        }
    };
    metrics.policy_reload(ReloadResult::Success);
    // Kubernetes mode: the cluster's policies (and exclusions) before
    // anything reaches the kernel, so that the first verdicts written are
    // the policy's, never an empty set's ALLOW.
    let mut kube = if args.standalone {
        None
    } else {
        Some(KubeState::start(&args, base_policy, metrics.clone()).await?)
    };
    let mut policy = Arc::new(policy);
    if let Some(k) = kube.as_mut() {
        if enforce {
            k.wait_for_policy(args.policy_wait).await;
        }
        // Before the first judgement: a namespaceSelector with labels not
        // known yet would select every namespace.
        k.wait_for_namespaces(args.policy_wait).await;
        policy = k.take_policy();
        info!(policies = ?policy.policy_names(), rules = policy.rule_count(), "policy reloaded (the cluster's, at start)");
    }
    if enforce && policy.rule_count() == 0 {
        metrics.policy_reload(ReloadResult::Error);
        bail!(
            "enforce mode refuses to start without a policy: {} has no rule that checks images{}; \
             an empty policy would allow every image (use --mode audit to run without one)",
            match &args.policy {
                Some(p) => format!("--policy {}", p.display()),
                None => "the cluster (Kyverno ClusterPolicy/Policy/ValidatingPolicy, ValidatingAdmissionPolicy, ImagePolicy)".to_string(),
            },
            if kube.is_some() && args.policy.is_none() {
                format!(" after waiting {:?} (--policy-wait)", args.policy_wait)
            } else {
                String::new()
            }
        );
    }
    if policy.rule_count() == 0 && kube.is_none() {
        warn!("audit mode with an empty policy: nothing will be reported");
    }
    health.set_ready(ReadyGate::PolicyLoaded, true);
    let sink_cfg = SinkConfig {
        stdout: true,
        file: args.findings_file.clone(),
        webhook: args.webhook_url.as_ref().map(WebhookConfig::new),
    };
    let sinks = Sinks::open(&sink_cfg, metrics.clone()).context("opening the findings sinks")?;
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
        pin_dir: (args.fail_mode == FailMode::Closed)
            .then(|| crate::probes::pin_dir_under(&args.pin_dir)),
        emit_all: args.all_execs,
        heartbeat_timeout: if enforce {
            args.heartbeat_timeout
        } else {
            std::time::Duration::ZERO
        },
        drift_check: !args.no_exec_drift_check,
    };
    let mut probes = Probes::load(&opts).context("loading the eBPF probes")?;
    metrics.set_enforcement(probes.enforcement, probes.exec_hook);
    let reader = probes.counter_reader();
    metrics.set_kernel_source(Arc::new(move || reader.read().ok()));
    health.set_ready(ReadyGate::ProbesAttached, true);
    let mut static_attr = std::collections::HashMap::new();
    for path in &args.deny_cgroups {
        let id = probes
            .set_cgroup_path_verdict(path, verdict::DENY)
            .with_context(|| format!("--deny-cgroup {}", path.display()))?;
        static_attr.insert(
            id,
            Attribution {
                reason: Some(Reason::new(
                    ReasonKind::DeniedCgroup,
                    format!("denied-cgroup: {}", path.display()),
                )),
                ..Default::default()
            },
        );
        info!(cgroup = %path.display(), cgroup_id = id, "cgroup denied");
    }
    // The agent's own pod is never held nor killed: its cgroup is allowed
    // by id (a restarted agent's new container runs through the dead-man's
    // switch while no agent is alive).
    if let Some(cg2) = find_cgroup2_mount() {
        match crate::sources::cgroup::cgroup2_dir_of_pid(&cg2, std::process::id()) {
            Ok(dir) if dir != cg2 => match probes.set_cgroup_path_verdict(&dir, verdict::ALLOW) {
                Ok(id) => {
                    static_attr.entry(id).or_insert_with(|| Attribution {
                        reason: Some(Reason::new(
                            ReasonKind::AgentItself,
                            "imagewarden itself: never held nor killed",
                        )),
                        ..Default::default()
                    });
                }
                Err(e) => warn!("allowing the agent's own cgroup: {e}"),
            },
            Ok(_) => {}
            Err(e) => warn!("the agent's own cgroup: {e}"),
        }
    }
    let ring = probes.take_events().context("ring buffer already taken")?;
    let (tx, mut rx) = mpsc::channel::<ExecRecord>(CHANNEL_CAPACITY);
    let stats = Arc::new(ReaderStats::default());
    metrics.set_reader_stats(stats.clone());
    let pump = tokio::spawn(reader::pump(ring, tx, stats.clone()));

    let cgroup2 = find_cgroup2_mount().context("no cgroup2 hierarchy is mounted")?;
    let (containerd, cri) = connect_runtimes(args.runtime_endpoint.as_deref()).await;
    let (rt_tx, mut rt_rx) = mpsc::channel(RUNTIME_EVENT_CAPACITY);
    let rt_drops = Arc::new(AtomicU64::new(0));
    let resync_now = Arc::new(tokio::sync::Notify::new());
    let forwarder = containerd.clone().map(|c| {
        tokio::spawn(controller::forward_containerd_events(
            c,
            rt_tx.clone(),
            rt_drops.clone(),
            resync_now.clone(),
        ))
    });
    drop(rt_tx);

    let cfg = ControllerConfig {
        enforce,
        all_execs: args.all_execs,
        hold_timeout: args.hold_timeout,
        resync_interval: args.resync_interval,
        cgroup2,
        deny_exec_drift: args.deny_exec_drift,
    };
    let (out, sinks) = findings_out(sinks, metrics.clone());
    let mut ctrl = Controller::new(cfg, probes, policy, containerd, cri, out);
    ctrl.static_attributions = static_attr;
    ctrl.metrics = Some(metrics.clone());
    match kube.as_ref() {
        None => ctrl.set_exemptions(Arc::new(Exemptions::from_namespaces(
            &args.exempt_namespaces,
        ))),
        Some(k) => {
            ctrl.pod_lookup = Some(k.pod_lookup());
            ctrl.queue_drift_findings();
            ctrl.set_exemptions(k.exemptions.borrow().clone());
        }
    }
    ctrl.resync().await;
    if ctrl.probes().took_over {
        // A previous agent died and left its pinned state: the kernel kept
        // enforcing with it until now. Drop what no longer exists, let
        // containers it held while nobody decided go on (or die).
        ctrl.after_takeover();
        // What the kernel let run unheld while no agent was alive (the
        // dead-man's switch): reported now, and judged by the resync above
        // (a denied one is killed like any other in enforce mode).
        let (execs, cgroups) = ctrl.probes_mut().take_unenforced();
        if execs > 0 || !cgroups.is_empty() {
            warn!(
                execs,
                containers = cgroups.len(),
                "while no agent was alive, unknown containers ran unenforced"
            );
            metrics.unenforced_execs(execs);
            for (id, _since) in cgroups {
                let attr = ctrl.attribution_of(id);
                let f = Finding::container(
                    FindingVerdict::Unknown,
                    FindingAction::None,
                    Reason::new(
                        ReasonKind::RanUnenforced,
                        format!("ran-unenforced: cgroup {id} ran while no agent was alive (heartbeat stale); judged on takeover"),
                    ),
                    None,
                    Some(id),
                    attr,
                );
                ctrl.report(&f);
            }
        }
    }
    health.set_ready(ReadyGate::InventorySynced, true);
    health.tick();
    let _ = ctrl.probes_mut().heartbeat();
    // Start-up's peak (the kernel BTF parsed and freed) goes back now.
    crate::memory::trim();
    info!(
        mode = ?args.mode,
        exec_hook = ctrl.probes().exec_hook.as_str(),
        enforcement = ctrl.probes().enforcement.as_str(),
        inventory = %ctrl.summary(),
        startup_ms = started.elapsed().as_millis() as u64,
        resync_ms = ?ctrl.stats.last_resync_ms,
        cri_verbose = ctrl.stats.last_resync_cri_verbose,
        "agent running"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(args.resync_interval);
    resync.tick().await; // the first tick is immediate: just synced
    let mut hold_tick = tokio::time::interval(std::time::Duration::from_millis(100));
    // Liveness: the loop ticks on a timer, so an idle node stays healthy.
    let mut health_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut cross_tick = tokio::time::interval(crate::kube_run::CROSSCHECK_INTERVAL);
    let mut seen_rt_drops = 0;
    let mut last_loss_check = Instant::now();
    let mut seen_losses = (
        ctrl.probes()
            .counters()
            .map(|k| k.ringbuf_drops)
            .unwrap_or(0),
        stats.channel_drops.load(Ordering::Relaxed),
    );
    loop {
        tokio::select! {
            rec = rx.recv() => {
                let Some(rec) = rec else { break };
                metrics.exec_event(metrics::Verdict::from_kernel(rec.verdict));
                ctrl.on_exec(&rec).await;
                // Take what is already queued before waiting again.
                while let Ok(rec) = rx.try_recv() {
                    metrics.exec_event(metrics::Verdict::from_kernel(rec.verdict));
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
                ctrl.resync().await;
            }
            _ = hold_tick.tick() => {
                ctrl.scan_kernel_holds().await;
                if ctrl.has_holds() {
                    ctrl.expire_holds().await;
                }
            }
            _ = resync_now.notified() => ctrl.resync().await,
            _ = health_tick.tick() => {
                health.tick();
                if let Err(e) = ctrl.probes_mut().heartbeat() {
                    warn!("heartbeat: {e}");
                }
                // Lost exec events are counted in /metrics; say so in the
                // log too, at most once every 10 s.
                if last_loss_check.elapsed() >= std::time::Duration::from_secs(10) {
                    last_loss_check = Instant::now();
                    let kernel = ctrl.probes().counters().map(|k| k.ringbuf_drops).unwrap_or(0);
                    let channel = stats.channel_drops.load(Ordering::Relaxed);
                    if kernel > seen_losses.0 || channel > seen_losses.1 {
                        warn!(
                            ringbuf_drops = kernel - seen_losses.0,
                            channel_drops = channel - seen_losses.1,
                            "exec events were dropped (ring buffer or pipeline full); kills in the kernel are unaffected"
                        );
                    }
                    seen_losses = (kernel, channel);
                }
            }
            change = kube_changed(&mut kube) => match change {
                KubeChange::Policy => {
                    if let Some(k) = kube.as_mut() {
                        let p = k.take_policy();
                        if p.rule_count() == 0 {
                            // Deleted policies or a CRD gone: an empty set
                            // would allow every image. Keep the last good one
                            // and say so (metric, /readyz).
                            tracing::error!(
                                kept_rules = ctrl.policy().rule_count(),
                                "the cluster's policies disappeared (no rule left); the last good policy stays \
                                 in force; /readyz is not ready until a policy is back"
                            );
                            metrics.set_policy_missing(true);
                            health.set_ready(ReadyGate::PolicyLoaded, false);
                        } else {
                            metrics.set_policy_missing(false);
                            health.set_ready(ReadyGate::PolicyLoaded, true);
                            info!(policies = ?p.policy_names(), rules = p.rule_count(), "policy reloaded");
                            ctrl.set_policy(p);
                        }
                    }
                }
                KubeChange::Exemptions => {
                    if let Some(k) = kube.as_mut() {
                        let e = k.exemptions.borrow_and_update().clone();
                        ctrl.set_exemptions(e);
                    }
                }
                KubeChange::Pods | KubeChange::Namespaces => {
                    // New Pod knowledge may change a container's type or
                    // image as written; a Namespace's labels, which
                    // namespaceSelectors select.
                    ctrl.redecide();
                    if let Some(k) = kube.as_mut() { k.crosscheck(&mut ctrl, &sinks).await }
                }
            },
            _ = cross_tick.tick(), if kube.is_some() => {
                if let Some(k) = kube.as_mut() { k.crosscheck(&mut ctrl, &sinks).await }
            }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break }
        }
    }
    pump.abort();
    if let Some(f) = forwarder {
        f.abort();
    }
    if args.fail_mode == FailMode::Closed && !args.detach_on_exit {
        // A rolling update: the kernel keeps enforcing with the pinned
        // state, which the next agent takes over. Unknown containers are
        // held until it does (or until --heartbeat-timeout, the dead-man's
        // switch). Uninstalling detaches: `imagewarden cleanup`.
        let _ = ctrl.probes_mut().heartbeat();
        info!("leaving the pinned state to the next agent (enforcement continues; `imagewarden cleanup` detaches)");
    } else {
        // Detach everything, leave nothing pinned; what the kernel held
        // runs on (nobody is left to decide it).
        let resumed = ctrl.release_all_holds();
        ctrl.probes_mut().unpin_all();
        info!(resumed_holds = resumed, "detached");
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
    drop(kube);
    if let Ok(sinks) = Arc::try_unwrap(sinks) {
        sinks.shutdown(std::time::Duration::from_secs(5)).await;
    }
    let _ = stop_tx.send(());
    if let Some(t) = server_task {
        let _ = t.await;
    }
    Ok(())
}
