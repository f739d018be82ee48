//! Prometheus metrics: one registry, prefix `imagewarden`.
//!
//! Hot paths (one call per exec event or finding) touch a pre-created
//! counter handle: one relaxed atomic add, no lock, no allocation, no hash.
//! Every label value comes from a fixed enum here, so the number of series
//! is bounded and known in advance: no pod names, container ids, images or
//! free-form reasons ever become labels (they belong in the findings).
//!
//! Counters that live elsewhere are read at scrape time by a collector:
//! the kernel's per-CPU counters through a [`KernelCounterSource`] (summed
//! by [`crate::probes::Probes::counters`]) and the ring-buffer reader's
//! [`ReaderStats`]. When a source is not set or cannot be read, its
//! samples are left out of the scrape (absent, not a false zero) and
//! `imagewarden_kernel_counters_readable` says 0.
//!
//! The reference of every family is in `docs/metrics.md`.
use std::sync::{atomic::Ordering, Arc, RwLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge,
        info::Info,
    },
    registry::{Metric, Registry},
};

use crate::finding::ReasonKind;
use crate::probes::{event::KernelVerdict, reader::ReaderStats, Enforcement, Hook, KernelCounters};

/// Content type of the Prometheus text format (0.0.4), the default of `/metrics`.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Content type of the OpenMetrics text format, served when the scraper asks for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the kernel's counters at scrape time. Implemented by any
/// `Fn() -> Option<KernelCounters> + Send + Sync`, for instance a closure
/// around a shared `Probes`:
/// `move || probes.lock().ok()?.counters().ok()`.
pub trait KernelCounterSource: Send + Sync {
    /// `None` when the counters cannot be read now (probes not loaded, map error).
    fn read(&self) -> Option<KernelCounters>;
}

impl<F> KernelCounterSource for F
where
    F: Fn() -> Option<KernelCounters> + Send + Sync,
{
    fn read(&self) -> Option<KernelCounters> {
        self()
    }
}

/// Declares a label enum with a fixed set of values and their label strings.
macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// Every value, in label order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            #[allow(dead_code)]
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum!(
    /// Verdict of an exec event or a container.
    Verdict {
        Allow => "allow",
        Deny => "deny",
        Unknown => "unknown",
        /// Held (SIGSTOP) until user space classifies the container.
        Hold => "hold",
    }
);

label_enum!(
    /// How a denied workload was stopped.
    KillMechanism {
        /// `bpf_send_signal(SIGKILL)` from the exec hook (kernel counter).
        KernelSignal => "kernel_signal",
        /// BPF LSM refused the exec (kernel counter of LSM denials).
        Lsm => "lsm",
        /// `cgroup.kill` written by user space.
        CgroupKill => "cgroup_kill",
    }
);

label_enum!(
    /// Result of a policy (re)load.
    ReloadResult {
        Success => "success",
        Error => "error",
    }
);

label_enum!(
    /// A source of node state.
    Source {
        RuntimeCri => "runtime_cri",
        RuntimeContainerd => "runtime_containerd",
        KubeApi => "kube_api",
        KubeNamespaces => "kube_namespaces",
        Kubelet => "kubelet",
    }
);

label_enum!(
    /// Agent mode.
    ModeLabel {
        Audit => "audit",
        Enforce => "enforce",
    }
);

label_enum!(
    /// A findings sink (see `crate::sink`).
    SinkLabel {
        Stdout => "stdout",
        File => "file",
        Webhook => "webhook",
    }
);

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn handles<E: Copy>(
    family: &Family<Labels1, Counter>,
    key: &'static str,
    all: &[E],
    s: fn(E) -> &'static str,
) -> Vec<Counter> {
    all.iter()
        .map(|&e| family.get_or_create(&[(key, s(e))]).clone())
        .collect()
}

fn gauge_handles<E: Copy>(
    family: &Family<Labels1, Gauge>,
    key: &'static str,
    all: &[E],
    s: fn(E) -> &'static str,
) -> Vec<Gauge> {
    all.iter()
        .map(|&e| family.get_or_create(&[(key, s(e))]).clone())
        .collect()
}

/// Registers a metric and returns a handle to it.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let m = M::default();
    registry.register(name, help, m.clone());
    m
}

/// The findings sinks' counters, one per sink: accepted lines, dropped
/// lines, errors.
fn sink_counters(registry: &mut Registry) -> [Vec<Counter>; 3] {
    let sink_lines: Family<Labels1, Counter> =
        register(registry, "sink_lines", "Finding lines accepted by a sink.");
    let sink_dropped: Family<Labels1, Counter> = register(
        registry,
        "sink_dropped",
        "Finding lines a sink dropped (queue full or retries exhausted).",
    );
    let sink_errors: Family<Labels1, Counter> = register(
        registry,
        "sink_errors",
        "Write or delivery errors of a sink (including retried ones).",
    );
    [sink_lines, sink_dropped, sink_errors]
        .map(|f| handles(&f, "sink", SinkLabel::ALL, SinkLabel::as_str))
}

/// Scrape-time sources, set once the run loop has them.
#[derive(Default)]
struct ScrapeSources {
    kernel: RwLock<Option<Arc<dyn KernelCounterSource>>>,
    reader: RwLock<Option<Arc<ReaderStats>>>,
    /// The user-space kill counter (cgroup_kill) of the kills family, which
    /// the collector encodes together with the kernel's.
    cgroup_kills: Counter,
}

impl std::fmt::Debug for ScrapeSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeSources").finish_non_exhaustive()
    }
}

/// Encodes what is read at scrape time.
#[derive(Debug)]
struct ScrapeCollector(Arc<ScrapeSources>);

fn const_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let me = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(me)
}

/// Whether the kernel's counters were readable, and the kills by mechanism
/// (the kernel's and user space's `cgroup_kill`).
fn encode_kills(
    enc: &mut DescriptorEncoder,
    kernel: Option<&KernelCounters>,
    cgroup_kills: u64,
) -> Result<(), std::fmt::Error> {
    let readable = ConstGauge::new(i64::from(kernel.is_some()));
    let me = enc.encode_descriptor(
        "kernel_counters_readable",
        "1 when the kernel's per-CPU counters could be read for this scrape.",
        None,
        readable.metric_type(),
    )?;
    readable.encode(me)?;

    {
        let kills = ConstCounter::new(0u64);
        let mut me = enc.encode_descriptor(
            "kills",
            "Denied workloads stopped, by mechanism (kernel_signal and lsm are kernel counters).",
            None,
            kills.metric_type(),
        )?;
        let mut rows: Vec<(KillMechanism, u64)> = Vec::with_capacity(4);
        if let Some(k) = kernel {
            rows.push((KillMechanism::KernelSignal, k.kills));
            rows.push((KillMechanism::Lsm, k.lsm_denies));
        }
        rows.push((KillMechanism::CgroupKill, cgroup_kills));
        for (m, v) in rows {
            let labels: Labels1 = [("mechanism", m.as_str())];
            ConstCounter::new(v).encode(me.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The ring-buffer reader's counters, when the reader is set.
fn encode_reader(enc: &mut DescriptorEncoder, src: &ScrapeSources) -> Result<(), std::fmt::Error> {
    let reader = src
        .reader
        .read()
        .ok()
        .and_then(|g| g.as_ref().map(Arc::clone));
    if let Some(r) = reader {
        const_counter(
            enc,
            "events_received",
            "Exec events read from the ring buffer by user space.",
            r.received.load(Ordering::Relaxed),
        )?;
        const_counter(
            enc,
            "events_channel_drops",
            "Exec events dropped in user space because the pipeline channel was full.",
            r.channel_drops.load(Ordering::Relaxed),
        )?;
        const_counter(
            enc,
            "event_decode_errors",
            "Exec events that could not be decoded.",
            r.decode_errors.load(Ordering::Relaxed),
        )?;
    }
    Ok(())
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let src = &self.0;
        let kernel = src
            .kernel
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(Arc::clone))
            .and_then(|s| s.read());

        encode_kills(&mut enc, kernel.as_ref(), src.cgroup_kills.get())?;

        if let Some(k) = kernel {
            const_counter(
                &mut enc,
                "kernel_execs",
                "Execs seen by the kernel hook (every exec on the node).",
                k.execs,
            )?;
            const_counter(
                &mut enc,
                "ringbuf_drops",
                "Exec events the kernel could not put in the ring buffer (full).",
                k.ringbuf_drops,
            )?;
            const_counter(
                &mut enc,
                "kernel_holds",
                "Execs held (SIGSTOP) in the kernel until classified.",
                k.holds,
            )?;
            {
                let mut me = enc.encode_descriptor(
                    "kernel_errors",
                    "Failures inside the eBPF programs, by cause (failed reads or signals).",
                    None,
                    ConstCounter::new(0u64).metric_type(),
                )?;
                for (cause, v) in k.errors.iter() {
                    let labels: Labels1 = [("cause", cause.as_str())];
                    ConstCounter::new(v).encode(me.encode_family(&labels)?)?;
                }
            }
            const_counter(
                &mut enc,
                "kernel_name_hits",
                "Verdicts found by cgroup name for a cgroup not yet known by id.",
                k.name_hits,
            )?;
            const_counter(
                &mut enc,
                "kernel_exec_drift",
                "Execs in containers of a file that is not the image's: fileless (memfd, \
                 unlinked) or in the container's writable layer (kernel count, reported or not).",
                k.drift_execs,
            )?;
            const_counter(
                &mut enc,
                "kernel_exec_drift_denied",
                "Fileless or writable-layer execs refused (LSM) or killed (signal) by policy.",
                k.drift_denies,
            )?;
        }

        encode_reader(&mut enc, src)?;
        Ok(())
    }
}

struct Inner {
    registry: Registry,
    scrape: Arc<ScrapeSources>,
    exec_events: Vec<Counter>,
    findings: Vec<Counter>,
    containers: Vec<Gauge>,
    reloads: Vec<Counter>,
    source_up: Vec<Gauge>,
    mode: Vec<Gauge>,
    enforcement: Family<Labels2, Gauge>,
    sink_lines: Vec<Counter>,
    sink_dropped: Vec<Counter>,
    sink_errors: Vec<Counter>,
    policy_missing: Gauge,
    unenforced_execs: Counter,
}

/// All the agent's metrics. Cheap to clone (one `Arc`); every update is a
/// relaxed atomic operation on a pre-created series.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Build information exposed as `imagewarden_build_info`.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo {
    pub version: &'static str,
    /// `IMAGEWARDEN_GIT_COMMIT` at build time, `unknown` otherwise.
    pub git_commit: &'static str,
}

impl BuildInfo {
    pub const fn current() -> Self {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            git_commit: match option_env!("IMAGEWARDEN_GIT_COMMIT") {
                Some(c) => c,
                None => "unknown",
            },
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_build_info(BuildInfo::current())
    }

    pub fn with_build_info(build: BuildInfo) -> Self {
        let mut registry = Registry::with_prefix("imagewarden");

        let exec_events: Family<Labels1, Counter> = register(
            &mut registry,
            "exec_events",
            "Exec events handled by user space, by kernel verdict.",
        );
        let findings: Family<Labels1, Counter> = register(
            &mut registry,
            "findings",
            "Findings reported, by stable reason prefix.",
        );
        let containers: Family<Labels1, Gauge> = register(
            &mut registry,
            "containers",
            "Containers on the node, by verdict.",
        );
        let reloads: Family<Labels1, Counter> = register(
            &mut registry,
            "policy_reloads",
            "Policy loads and reloads, by result.",
        );
        let source_up: Family<Labels1, Gauge> = register(
            &mut registry,
            "source_up",
            "1 when a node state source is connected and synced, 0 when down.",
        );
        let mode: Family<Labels1, Gauge> = register(
            &mut registry,
            "mode",
            "1 for the agent's mode (audit or enforce), 0 for the other.",
        );
        let enforcement: Family<Labels2, Gauge> = register(
            &mut registry,
            "enforcement_info",
            "1 for the enforcement mechanism (lsm or signal) and exec hook (tp_btf or tracepoint) in use.",
        );
        registry.register(
            "build",
            "Build information.",
            Info::new([("version", build.version), ("git_commit", build.git_commit)]),
        );
        let [sink_lines, sink_dropped, sink_errors] = sink_counters(&mut registry);

        let policy_missing: Gauge = register(
            &mut registry,
            "policy_missing",
            "1 while the cluster has no policy left: the last good policy stays in force and /readyz is not ready.",
        );

        let unenforced_execs: Counter = register(
            &mut registry,
            "unenforced_execs",
            "Execs of unknown containers the kernel let run unheld while no agent was alive (dead-man's switch), as reported by the next agent.",
        );

        let scrape = Arc::new(ScrapeSources::default());
        registry.register_collector(Box::new(ScrapeCollector(scrape.clone())));

        let inner = Inner {
            exec_events: handles(&exec_events, "verdict", Verdict::ALL, Verdict::as_str),
            // Indexed by kind; the kinds sharing `other` share its counter.
            findings: handles(
                &findings,
                "reason",
                ReasonKind::ALL,
                ReasonKind::metric_label,
            ),
            containers: gauge_handles(&containers, "verdict", Verdict::ALL, Verdict::as_str),
            reloads: handles(&reloads, "result", ReloadResult::ALL, ReloadResult::as_str),
            source_up: gauge_handles(&source_up, "source", Source::ALL, Source::as_str),
            mode: gauge_handles(&mode, "mode", ModeLabel::ALL, ModeLabel::as_str),
            sink_lines,
            sink_dropped,
            sink_errors,
            enforcement,
            policy_missing,
            unenforced_execs,
            registry,
            scrape,
        };
        Metrics(Arc::new(inner))
    }

    /// Where the kernel's counters are read at scrape time.
    pub fn set_kernel_source(&self, source: Arc<dyn KernelCounterSource>) {
        if let Ok(mut g) = self.0.scrape.kernel.write() {
            *g = Some(source);
        }
    }

    /// The ring-buffer reader's counters (read at scrape time).
    pub fn set_reader_stats(&self, stats: Arc<ReaderStats>) {
        if let Ok(mut g) = self.0.scrape.reader.write() {
            *g = Some(stats);
        }
    }

    /// One exec event handled by user space.
    pub fn exec_event(&self, v: Verdict) {
        self.0.exec_events[v.index()].inc();
    }

    /// One finding reported, by its reason kind.
    pub fn finding(&self, reason: ReasonKind) {
        self.0.findings[reason as usize].inc();
    }

    /// A kill done by user space. Kernel kills (`kernel_signal`, `lsm`) are
    /// counted by the kernel and read at scrape time: calling this with them
    /// is ignored so that nothing is counted twice.
    pub fn kill(&self, m: KillMechanism) {
        match m {
            KillMechanism::CgroupKill => {
                self.0.scrape.cgroup_kills.inc();
            }
            KillMechanism::KernelSignal | KillMechanism::Lsm => {}
        }
    }

    /// Sets the number of containers of a verdict (after each inventory change).
    pub fn set_containers(&self, v: Verdict, n: u64) {
        self.0.containers[v.index()].set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn policy_reload(&self, r: ReloadResult) {
        self.0.reloads[r.index()].inc();
    }

    /// Execs that ran unenforced while no agent was alive.
    pub fn unenforced_execs(&self, n: u64) {
        self.0.unenforced_execs.inc_by(n);
    }

    /// The cluster's policies disappeared (the last good set is kept).
    pub fn set_policy_missing(&self, missing: bool) {
        self.0.policy_missing.set(i64::from(missing));
    }

    pub fn set_source_up(&self, s: Source, up: bool) {
        self.0.source_up[s.index()].set(i64::from(up));
    }

    pub fn set_mode(&self, m: ModeLabel) {
        for &x in ModeLabel::ALL {
            self.0.mode[x.index()].set(i64::from(x == m));
        }
    }

    /// What the probes attached (call once after `Probes::load`).
    pub fn set_enforcement(&self, mechanism: Enforcement, exec_hook: Hook) {
        let f = &self.0.enforcement;
        f.clear();
        f.get_or_create(&[
            ("mechanism", mechanism.as_str()),
            ("exec_hook", exec_hook.as_str()),
        ])
        .set(1);
    }

    pub fn sink_line(&self, s: SinkLabel) {
        self.0.sink_lines[s.index()].inc();
    }

    pub fn sink_dropped(&self, s: SinkLabel, n: u64) {
        self.0.sink_dropped[s.index()].inc_by(n);
    }

    pub fn sink_error(&self, s: SinkLabel) {
        self.0.sink_errors[s.index()].inc();
    }

    /// Current value of a sink's drop counter (tests, logs).
    pub fn sink_dropped_count(&self, s: SinkLabel) -> u64 {
        self.0.sink_dropped[s.index()].get()
    }

    /// Current value of a sink's accepted-lines counter (tests, logs).
    pub fn sink_line_count(&self, s: SinkLabel) -> u64 {
        self.0.sink_lines[s.index()].get()
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// Encodes every metric, reading the scrape-time sources now.
    /// `openmetrics`: OpenMetrics text (with `# EOF`), else Prometheus text 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.0.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.0.registry)?;
        }
        Ok(out)
    }
}

impl Verdict {
    /// The verdict of a kernel record (a rule's deny in audit mode, the
    /// kernel's `audit`, counts as `deny`, as in the findings).
    pub fn from_kernel(v: KernelVerdict) -> Self {
        match v {
            KernelVerdict::Allow => Verdict::Allow,
            KernelVerdict::Deny | KernelVerdict::Audit => Verdict::Deny,
            KernelVerdict::Hold => Verdict::Hold,
            KernelVerdict::Unknown => Verdict::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_kind_counts_in_its_label() {
        let m = Metrics::new();
        for &k in ReasonKind::ALL {
            m.finding(k);
        }
        let text = m.encode(false).unwrap();
        for l in ReasonKind::metric_labels() {
            let n = ReasonKind::ALL
                .iter()
                .filter(|k| k.metric_label() == l)
                .count();
            assert!(
                text.contains(&format!(
                    "imagewarden_findings_total{{reason=\"{l}\"}} {n}\n"
                )),
                "{l}: {text}"
            );
        }
        assert_eq!(ReasonKind::FilelessExec.metric_label(), "fileless-exec");
        assert_eq!(ReasonKind::RanUnenforced.metric_label(), "other");
    }

    /// docs/metrics.md lists every `reason` label, and no other.
    #[test]
    fn the_reason_labels_are_the_documented_ones() {
        let doc = include_str!("../../docs/metrics.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `imagewarden_findings_total`"))
            .expect("the findings row of docs/metrics.md");
        let cell = row.split('|').nth(3).expect("its label column");
        let documented: Vec<&str> = cell
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| *s != "reason")
            .collect();
        let mut want = ReasonKind::metric_labels();
        let mut got = documented.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "docs/metrics.md: {cell}");
    }

    #[test]
    fn kernel_verdicts_map_to_their_label() {
        for (k, v) in [
            (KernelVerdict::Allow, Verdict::Allow),
            (KernelVerdict::Deny, Verdict::Deny),
            (KernelVerdict::Audit, Verdict::Deny),
            (KernelVerdict::Hold, Verdict::Hold),
            (KernelVerdict::Unknown, Verdict::Unknown),
        ] {
            assert_eq!(Verdict::from_kernel(k), v, "{k:?}");
        }
    }

    #[test]
    fn label_sets_are_fixed_and_precreated() {
        let m = Metrics::new();
        let text = m.encode(false).unwrap();
        for v in Verdict::ALL {
            assert!(
                text.contains(&format!(
                    "imagewarden_exec_events_total{{verdict=\"{}\"}} 0",
                    v.as_str()
                )),
                "{text}"
            );
        }
        for r in ReasonKind::metric_labels() {
            assert!(text.contains(&format!("imagewarden_findings_total{{reason=\"{r}\"}} 0")));
        }
        // Without a kernel source its samples are absent, not zero.
        assert!(text.contains("imagewarden_kernel_counters_readable 0"));
        assert!(!text.contains("imagewarden_ringbuf_drops_total"));
        assert!(!text.contains("mechanism=\"kernel_signal\""));
        assert!(text.contains("imagewarden_kills_total{mechanism=\"cgroup_kill\"} 0"));
    }

    #[test]
    fn updates_show_and_kernel_kills_are_not_double_counted() {
        let m = Metrics::new();
        m.exec_event(Verdict::Deny);
        m.exec_event(Verdict::Deny);
        m.finding(ReasonKind::UntrustedImage);
        m.kill(KillMechanism::CgroupKill);
        m.kill(KillMechanism::KernelSignal);
        m.set_containers(Verdict::Allow, 7);
        m.set_mode(ModeLabel::Enforce);
        m.set_source_up(Source::Kubelet, true);
        m.set_enforcement(Enforcement::Signal, Hook::Tracepoint);
        m.set_enforcement(Enforcement::Lsm, Hook::TpBtf);
        m.set_kernel_source(Arc::new(|| {
            Some(KernelCounters {
                kills: 3,
                lsm_denies: 1,
                ..Default::default()
            })
        }));
        let text = m.encode(true).unwrap();
        assert!(
            text.contains("imagewarden_exec_events_total{verdict=\"deny\"} 2"),
            "{text}"
        );
        assert!(text.contains("imagewarden_findings_total{reason=\"untrusted-image\"} 1"));
        assert!(text.contains("imagewarden_kills_total{mechanism=\"kernel_signal\"} 3"));
        assert!(text.contains("imagewarden_kills_total{mechanism=\"lsm\"} 1"));
        assert!(text.contains("imagewarden_kills_total{mechanism=\"cgroup_kill\"} 1"));
        assert!(text.contains("imagewarden_containers{verdict=\"allow\"} 7"));
        assert!(text.contains("imagewarden_mode{mode=\"enforce\"} 1"));
        assert!(text.contains("imagewarden_mode{mode=\"audit\"} 0"));
        assert!(text.contains("imagewarden_source_up{source=\"kubelet\"} 1"));
        assert!(
            text.contains("imagewarden_enforcement_info{mechanism=\"lsm\",exec_hook=\"tp_btf\"} 1")
        );
        assert!(
            !text.contains("mechanism=\"signal\""),
            "the previous mechanism is cleared"
        );
        assert!(text.contains("imagewarden_build_info{version="));
        assert!(text.ends_with("# EOF\n"));
    }
}
