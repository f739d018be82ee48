//! The agent's loop once everything is set up (`cmd_run::run`): one
//! `on_*` handler per input — exec records from the kernel, runtime
//! events, the resync, hold and health ticks, Kubernetes changes and
//! cross-checks — all on one task, so decisions never race each other.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::{
    controller::Controller,
    finding::FindingAction,
    kube_run::{ControllerView, CrossCheckPlan, KubeAction, KubeState},
    metrics::{self, Metrics},
    probes::{event::ExecRecord, kernel_maps::KernelMaps, reader::ReaderStats},
    server::{Health, ReadyGate},
    sink::Sinks,
    sources::RuntimeEvent,
};

/// What changed on the Kubernetes side.
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

/// The loop's inputs (channels and timers it waits on).
pub struct Inputs {
    /// Exec records from the ring buffer reader.
    pub execs: mpsc::Receiver<ExecRecord>,
    /// Runtime lifecycle events from the forwarder.
    pub runtime_events: mpsc::Receiver<RuntimeEvent>,
    /// The forwarder asks for a resync after it subscribed again.
    pub resync_now: Arc<Notify>,
    /// `--resync-interval`.
    pub resync_interval: Duration,
}

/// The controller and what the loop reports to.
pub struct AgentLoop {
    pub ctrl: Controller,
    pub kube: Option<KubeState>,
    pub metrics: Metrics,
    pub health: Health,
    pub sinks: Arc<Sinks>,
    /// The ring buffer reader's counters.
    pub reader_stats: Arc<ReaderStats>,
    /// Runtime events the full channel refused.
    pub rt_drops: Arc<AtomicU64>,
    seen_rt_drops: u64,
    last_loss_check: Instant,
    /// Ring buffer and channel drops last logged.
    seen_losses: (u64, u64),
}

impl AgentLoop {
    pub fn new(
        ctrl: Controller,
        kube: Option<KubeState>,
        metrics: Metrics,
        health: Health,
        sinks: Arc<Sinks>,
        reader_stats: Arc<ReaderStats>,
        rt_drops: Arc<AtomicU64>,
    ) -> Self {
        let seen_losses = (
            ctrl.probes()
                .counters()
                .map(|k| k.ringbuf_drops)
                .unwrap_or(0),
            reader_stats.channel_drops.load(Ordering::Relaxed),
        );
        AgentLoop {
            ctrl,
            kube,
            metrics,
            health,
            sinks,
            reader_stats,
            rt_drops,
            seen_rt_drops: 0,
            last_loss_check: Instant::now(),
            seen_losses,
        }
    }

    /// Runs until SIGTERM, SIGINT or the end of the exec records.
    pub async fn run(&mut self, inputs: Inputs) -> anyhow::Result<()> {
        let Inputs {
            mut execs,
            mut runtime_events,
            resync_now,
            resync_interval,
        } = inputs;
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut resync = tokio::time::interval(resync_interval);
        resync.tick().await; // the first tick is immediate: just synced
        let mut hold_tick = tokio::time::interval(Duration::from_millis(100));
        // Liveness: the loop ticks on a timer, so an idle node stays healthy.
        let mut health_tick = tokio::time::interval(Duration::from_secs(1));
        let mut cross_tick = tokio::time::interval(crate::kube_run::CROSSCHECK_INTERVAL);
        loop {
            tokio::select! {
                rec = execs.recv() => {
                    let Some(rec) = rec else { break };
                    self.on_exec(rec, &mut execs).await;
                }
                Some(ev) = runtime_events.recv() => self.ctrl.on_runtime_event(ev).await,
                _ = resync.tick() => self.on_resync_tick().await,
                _ = hold_tick.tick() => self.on_hold_tick().await,
                _ = resync_now.notified() => self.ctrl.resync().await,
                _ = health_tick.tick() => self.on_health_tick(),
                change = kube_changed(&mut self.kube) => self.on_kube_change(change).await,
                _ = cross_tick.tick(), if self.kube.is_some() => self.on_crosscheck_tick().await,
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); break }
                _ = sigint.recv() => { info!("SIGINT: stopping"); break }
            }
        }
        Ok(())
    }

    /// One exec record, then those already queued before waiting again.
    async fn on_exec(&mut self, rec: ExecRecord, execs: &mut mpsc::Receiver<ExecRecord>) {
        self.metrics
            .exec_event(metrics::Verdict::from_kernel(rec.verdict));
        self.ctrl.on_exec(&rec).await;
        while let Ok(rec) = execs.try_recv() {
            self.metrics
                .exec_event(metrics::Verdict::from_kernel(rec.verdict));
            self.ctrl.on_exec(&rec).await;
        }
    }

    async fn on_resync_tick(&mut self) {
        let d = self.rt_drops.load(Ordering::Relaxed);
        if d != self.seen_rt_drops {
            warn!(
                dropped = d - self.seen_rt_drops,
                "runtime events were dropped (channel full); resyncing"
            );
            self.seen_rt_drops = d;
        }
        // The resync gives back what it freed itself (memory::trim).
        self.ctrl.resync().await;
    }

    async fn on_hold_tick(&mut self) {
        self.ctrl.scan_kernel_holds().await;
        if self.ctrl.has_holds() {
            self.ctrl.expire_holds().await;
        }
    }

    fn on_health_tick(&mut self) {
        self.health.tick();
        if let Err(e) = self.ctrl.probes_mut().heartbeat() {
            warn!("heartbeat: {e}");
        }
        // Lost exec events are counted in /metrics; say so in the log too,
        // at most once every 10 s.
        if self.last_loss_check.elapsed() >= Duration::from_secs(10) {
            self.last_loss_check = Instant::now();
            let kernel = self
                .ctrl
                .probes()
                .counters()
                .map(|k| k.ringbuf_drops)
                .unwrap_or(0);
            let channel = self.reader_stats.channel_drops.load(Ordering::Relaxed);
            let seen = self.seen_losses;
            if kernel > seen.0 || channel > seen.1 {
                warn!(
                    ringbuf_drops = kernel - seen.0,
                    channel_drops = channel - seen.1,
                    "exec events were dropped (ring buffer or pipeline full); kills in the kernel are unaffected"
                );
            }
            self.seen_losses = (kernel, channel);
        }
    }

    async fn on_kube_change(&mut self, change: KubeChange) {
        match change {
            KubeChange::Policy => self.on_cluster_policy(),
            KubeChange::Exemptions => {
                if let Some(k) = self.kube.as_mut() {
                    let e = k.exemptions.borrow_and_update().clone();
                    self.ctrl.set_exemptions(e);
                }
            }
            KubeChange::Pods | KubeChange::Namespaces => {
                // New Pod knowledge may change a container's type or image
                // as written; a Namespace's labels, which
                // namespaceSelectors select.
                self.ctrl.redecide();
                self.on_crosscheck_tick().await;
            }
        }
    }

    /// The cluster's merged policy changed.
    fn on_cluster_policy(&mut self) {
        let Some(k) = self.kube.as_mut() else { return };
        let p = k.take_policy();
        if p.rule_count() == 0 {
            // Deleted policies or a CRD gone: an empty set would allow
            // every image. Keep the last good one and say so (metric,
            // /readyz).
            tracing::error!(
                kept_rules = self.ctrl.policy().rule_count(),
                "the cluster's policies disappeared (no rule left); the last good policy stays \
                 in force; /readyz is not ready until a policy is back"
            );
            self.metrics.set_policy_missing(true);
            self.health.set_ready(ReadyGate::PolicyLoaded, false);
        } else {
            self.metrics.set_policy_missing(false);
            self.health.set_ready(ReadyGate::PolicyLoaded, true);
            info!(policies = ?p.policy_names(), rules = p.rule_count(), "policy reloaded");
            self.ctrl.set_policy(p);
        }
    }

    /// The cross-checks: the Kubernetes side plans from a snapshot of the
    /// controller, the loop applies the plan's actions to the controller,
    /// then the Kubernetes side reports.
    async fn on_crosscheck_tick(&mut self) {
        let Some(k) = self.kube.as_mut() else { return };
        let drift = self.ctrl.take_drift_findings();
        let containers = self.ctrl.snapshot();
        let mut plan = k.plan_crosscheck(
            drift,
            &ControllerView {
                containers: &containers,
            },
        );
        apply_kube_actions(&mut self.ctrl, &mut plan);
        k.publish(plan, &self.sinks).await;
    }
}

/// Applies what the cross-checks ask of the controller; a kill that fails
/// (the container is not known, or its cgroup could not be killed) leaves
/// its finding `alerted`.
pub fn apply_kube_actions<K: KernelMaps>(ctrl: &mut Controller<K>, plan: &mut CrossCheckPlan) {
    for a in &plan.actions {
        match a {
            KubeAction::KillContainer { id, finding } => {
                if !ctrl.kill_container(id) {
                    if let Some(p) = plan.findings.get_mut(*finding) {
                        p.finding.action = FindingAction::Alerted;
                    }
                }
            }
        }
    }
}
