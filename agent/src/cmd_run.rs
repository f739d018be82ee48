//! `imagewarden run`: load the policy, attach the probes, learn every
//! container from the runtimes, push verdicts into the kernel, turn exec
//! events into findings. SIGTERM and SIGINT detach everything cleanly.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use crate::probes::event::KernelVerdict;
use anyhow::{bail, Context};
use imagewarden_policy::PolicySet;
use tokio::{
    sync::{mpsc, oneshot, Notify},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    agent_loop::{AgentLoop, Inputs},
    cli::{FailMode, Mode, RunArgs},
    controller::{Controller, ControllerConfig},
    finding::{Attribution, Finding, FindingAction, FindingVerdict, Reason, ReasonKind},
    kube_run::KubeState,
    metrics::{Metrics, ModeLabel, ReloadResult},
    probes::{
        event::ExecRecord,
        reader::{self, ReaderStats, CHANNEL_CAPACITY},
        ProbeOptions, Probes,
    },
    server::{self, Health, ReadyGate, ServerState},
    sink::{SinkConfig, Sinks, WebhookConfig},
    sources::{
        cgroup::find_cgroup2_mount,
        containerd::ContainerdClient,
        cri::CriClient,
        events::{forward_events, RUNTIME_EVENT_CAPACITY},
        kyverno_config::Exemptions,
        RuntimeEvent, SharedSource,
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
    // The typed error is kept (its text carries the line and the reason).
    let set = imagewarden_policy::load_policy_str(&text, &name)?;
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

async fn connect_runtimes(endpoint: Option<&str>) -> (Option<SharedSource>, Option<SharedSource>) {
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
    (
        containerd.map(|c| Arc::new(c) as SharedSource),
        cri.map(|c| Arc::new(c) as SharedSource),
    )
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

/// `--listen`: serves /metrics, /healthz and /readyz until the returned
/// sender fires (or is dropped).
async fn start_server(
    listen: Option<&str>,
    metrics: &Metrics,
    health: &Health,
) -> anyhow::Result<(Option<JoinHandle<()>>, oneshot::Sender<()>)> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = match listen {
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
    Ok((server_task, stop_tx))
}

/// The policy the agent starts with: `--policy` (or the embedded one),
/// and in Kubernetes mode the cluster's, once the API server told them
/// (and the Namespaces' labels). Enforce mode refuses an empty policy.
async fn policy_at_start(
    args: &RunArgs,
    metrics: &Metrics,
    enforce: bool,
) -> anyhow::Result<(Arc<PolicySet>, Option<KubeState>)> {
    let (policy, base_policy) = match load_policy(args) {
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
        Some(KubeState::start(args, base_policy, metrics.clone()).await?)
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
    Ok((policy, kube))
}

/// What to load into the kernel, from the flags.
fn probe_options(args: &RunArgs, enforce: bool) -> ProbeOptions {
    ProbeOptions {
        ringbuf_bytes: args.ringbuf_bytes,
        hook: args.exec_hook,
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
    }
}

/// Verdicts by cgroup that no runtime gives: `--deny-cgroup`, and the
/// agent's own cgroup (allowed); their attributions for findings.
fn static_cgroups(
    args: &RunArgs,
    probes: &mut Probes,
) -> anyhow::Result<HashMap<u64, Attribution>> {
    let mut static_attr = HashMap::new();
    for path in &args.deny_cgroups {
        let id = probes
            .set_cgroup_path_verdict(path, KernelVerdict::Deny)
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
            Ok(dir) if dir != cg2 => {
                match probes.set_cgroup_path_verdict(&dir, KernelVerdict::Allow) {
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
                }
            }
            Ok(_) => {}
            Err(e) => warn!("the agent's own cgroup: {e}"),
        }
    }
    Ok(static_attr)
}

/// A previous agent died and left its pinned state: the kernel kept
/// enforcing with it until now.
fn take_over(ctrl: &mut Controller, metrics: &Metrics) {
    // Drop what no longer exists, let containers it held while nobody
    // decided go on (or die).
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

/// Leaves the pinned state to the next agent (`--fail-mode closed`) or
/// detaches, and logs the totals.
fn stop_enforcing(
    ctrl: &mut Controller,
    args: &RunArgs,
    stats: &ReaderStats,
    rt_drops: &AtomicU64,
) {
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
}

/// The runtime event channel, filled by one forwarder task
/// (`sources::events`): the task, the receiver, the count of events the
/// full channel refused, and the forwarder's request for a resync.
fn spawn_forwarder(
    containerd: &Option<SharedSource>,
    cri: &Option<SharedSource>,
) -> (
    Option<JoinHandle<()>>,
    mpsc::Receiver<RuntimeEvent>,
    Arc<AtomicU64>,
    Arc<Notify>,
) {
    let (rt_tx, rt_rx) = mpsc::channel(RUNTIME_EVENT_CAPACITY);
    let rt_drops = Arc::new(AtomicU64::new(0));
    let resync_now = Arc::new(Notify::new());
    // containerd's own events where the agent has its API (every
    // namespace, the task's pid, the spec's cgroup path before the task
    // exists); else CRI's GetContainerEvents (CRI-O), so that a new
    // container is judged before the next resync (docs/runtimes.md).
    let event_sources: Vec<SharedSource> = containerd.iter().chain(cri.iter()).cloned().collect();
    let forwarder = (!event_sources.is_empty()).then(|| {
        tokio::spawn(forward_events(
            event_sources,
            rt_tx.clone(),
            rt_drops.clone(),
            resync_now.clone(),
        ))
    });
    drop(rt_tx);
    (forwarder, rt_rx, rt_drops, resync_now)
}

/// What admission excluded, and in Kubernetes mode the Pods' context.
fn wire_exemptions(ctrl: &mut Controller, kube: Option<&KubeState>, args: &RunArgs) {
    match kube {
        None => ctrl.set_exemptions(Arc::new(Exemptions::from_namespaces(
            &args.exempt_namespaces,
        ))),
        Some(k) => {
            ctrl.pod_lookup = Some(k.pod_lookup());
            ctrl.queue_drift_findings();
            ctrl.set_exemptions(k.exemptions.borrow().clone());
        }
    }
}

/// The start-up line scripts and tests wait for (`agent running`), with
/// what the agent attached and how long start-up took.
fn log_running(ctrl: &Controller, args: &RunArgs, started: Instant) {
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
    let (server_task, stop_tx) = start_server(args.listen.as_deref(), &metrics, &health).await?;
    let (policy, kube) = policy_at_start(&args, &metrics, enforce).await?;
    health.set_ready(ReadyGate::PolicyLoaded, true);
    let sink_cfg = SinkConfig {
        stdout: true,
        file: args.findings_file.clone(),
        webhook: args.webhook_url.as_ref().map(WebhookConfig::new),
    };
    let sinks = Sinks::open(&sink_cfg, metrics.clone()).context("opening the findings sinks")?;
    let opts = probe_options(&args, enforce);
    let mut probes = Probes::load(&opts).context("loading the eBPF probes")?;
    metrics.set_enforcement(probes.enforcement, probes.exec_hook);
    let reader = probes.counter_reader();
    metrics.set_kernel_source(Arc::new(move || reader.read().ok()));
    health.set_ready(ReadyGate::ProbesAttached, true);
    let static_attr = static_cgroups(&args, &mut probes)?;
    let ring = probes.take_events().context("ring buffer already taken")?;
    let (tx, rx) = mpsc::channel::<ExecRecord>(CHANNEL_CAPACITY);
    let stats = Arc::new(ReaderStats::default());
    metrics.set_reader_stats(stats.clone());
    let pump = tokio::spawn(reader::pump(ring, tx, stats.clone()));

    let cgroup2 = find_cgroup2_mount().context("no cgroup2 hierarchy is mounted")?;
    let (containerd, cri) = connect_runtimes(args.runtime_endpoint.as_deref()).await;
    let (forwarder, rt_rx, rt_drops, resync_now) = spawn_forwarder(&containerd, &cri);

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
    wire_exemptions(&mut ctrl, kube.as_ref(), &args);
    ctrl.resync().await;
    if ctrl.probes().took_over {
        take_over(&mut ctrl, &metrics);
    }
    health.set_ready(ReadyGate::InventorySynced, true);
    health.tick();
    let _ = ctrl.probes_mut().heartbeat();
    // Start-up's peak (the kernel BTF parsed and freed) goes back now.
    crate::memory::trim();
    log_running(&ctrl, &args, started);

    let mut agent = AgentLoop::new(ctrl, kube, metrics, health, sinks, stats, rt_drops);
    agent
        .run(Inputs {
            execs: rx,
            runtime_events: rt_rx,
            resync_now,
            resync_interval: args.resync_interval,
        })
        .await?;
    let AgentLoop {
        mut ctrl,
        kube,
        sinks,
        reader_stats: stats,
        rt_drops,
        ..
    } = agent;
    pump.abort();
    if let Some(f) = forwarder {
        f.abort();
    }
    stop_enforcing(&mut ctrl, &args, &stats, &rt_drops);
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
