//! Findings: the JSON lines the agent prints (contract in docs/architecture.md:
//! `type`, `verdict`, `action`, `reason`, `pid`, `cgroup_id`, `filename`,
//! `container_id`, `image`, `image_digest`, `pod`, `namespace`; null where
//! unknown).
//!
//! `type`, `verdict`, `action` and the kind of `reason` are enums here, the
//! one set the agent uses for both finding lines ([`Finding`] and the
//! Kubernetes side's [`crate::crosscheck::KubeFinding`]): each serialises as
//! its [`as_str`](ReasonKind::as_str), metric labels are derived from them by
//! exhaustive matches, and nothing reads a kind back out of text.
use serde::{Serialize, Serializer};

use imagewarden_policy::{Action, DriftDecision, VerdictKind};

use crate::metrics::Metrics;
use crate::probes::event::{ExecRecord, Hook, KernelVerdict};
use crate::sink::Sinks;

/// Declares an enum of a finding's field whose JSON value is its `as_str`;
/// with `=> "wire" / "Event"` each value also names its Kubernetes Event
/// reason (`event_reason`).
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal / $ev:literal),+ $(,)? }) => {
        wire_enum!($(#[$m])* $name { $($(#[$vm])* $v => $s),+ });
        impl $name {
            /// The Kubernetes Event reason (CamelCase).
            pub fn event_reason(self) -> &'static str {
                match self { $($name::$v => $ev),+ }
            }
        }
    };
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The value on the wire (JSON lines, Events, logs).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// What a finding is about (its `type`).
    FindingKind {
        /// One exec the kernel saw.
        Exec => "exec",
        /// A container (the runtime reported it, or Kubernetes names it).
        Container => "container",
    }
);

wire_enum!(
    /// A finding's `verdict`.
    FindingVerdict {
        Allow => "allow",
        /// A policy (or the agent's configuration) denies it; a rule's deny
        /// in audit mode too.
        Deny => "deny",
        /// Not a policy verdict: unknown, held, or only suspicious.
        Unknown => "unknown",
    }
);

wire_enum!(
    /// A finding's `action`: what was done about it.
    FindingAction {
        None => "none",
        /// Reported only.
        Alerted => "alerted",
        /// Stopped: killed, or its exec refused.
        Killed => "killed",
        /// Stopped (SIGSTOP) while user space decides.
        Held => "held",
    }
);

wire_enum!(
    /// Why a finding was raised: the stable head of its reason text (the
    /// part before the first `:`), except [`ReasonKind::AgentItself`], whose
    /// text reads `imagewarden itself: ...`. A finding's reason kind is set
    /// where the finding is made, never parsed back out of the text.
    ///
    /// Each kind names its wire string (JSON lines, the `reason` label of
    /// `imagewarden_findings_total`, see [`ReasonKind::metric_label`]) and
    /// its Event reason here: a new kind is one line, plus the check that
    /// raises it (and its row in docs/metrics.md, which a test compares).
    ReasonKind {
        /// A rule allows the image, no rule applies, or a pod sandbox.
        Allowed => "allowed" / "Allowed",
        /// The policy denies the image.
        UntrustedImage => "untrusted-image" / "UntrustedImage",
        /// The image is not a valid reference.
        InvalidReference => "invalid-reference" / "InvalidImageReference",
        /// The running digest differs from the pinned one, or a tag moved.
        ImageDrift => "image-drift" / "ImageDrift",
        /// A running container no API pod accounts for.
        NotInApi => "not-in-api" / "NotInAPI",
        /// The status image is another image than the spec's.
        SpecStatusMismatch => "spec-status-mismatch" / "SpecStatusMismatch",
        /// No image name, or a held cgroup no runtime claimed in time.
        Unresolved => "unresolved" / "Unresolved",
        /// Held until CRI confirms the container.
        Pending => "pending" / "Pending",
        /// An exec in a `--deny-cgroup` cgroup.
        DeniedCgroup => "denied-cgroup" / "DeniedCgroup",
        /// An exec held until its container is classified.
        HeldUntilClassified => "held-until-classified" / "HeldUntilClassified",
        /// An exec of a cgroup no source knows.
        Unattributed => "unattributed" / "Unattributed",
        /// A container exec'd a file with no name on disk (memfd, unlinked).
        FilelessExec => "fileless-exec" / "FilelessExec",
        /// A container exec'd a file of its writable (overlayfs upper) layer.
        DriftExec => "drift-exec" / "ExecDrift",
        /// A container ran while no agent was alive (dead-man's switch).
        RanUnenforced => "ran-unenforced" / "RanUnenforced",
        /// The agent's own cgroup: never held nor killed.
        AgentItself => "imagewarden-itself" / "AgentItself",
    }
);

impl ReasonKind {
    /// The `reason` label of `imagewarden_findings_total`: the kind's wire
    /// string. The four kinds listed here share the series `other`, as
    /// they did before the kinds were typed (a dashboard's label set stays);
    /// any other kind, a new one included, gets its own series.
    pub fn metric_label(self) -> &'static str {
        match self {
            ReasonKind::Allowed
            | ReasonKind::Pending
            | ReasonKind::RanUnenforced
            | ReasonKind::AgentItself => "other",
            k => k.as_str(),
        }
    }

    /// Every `reason` label of `imagewarden_findings_total`, each once, in
    /// the order of [`ReasonKind::ALL`].
    pub fn metric_labels() -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for k in ReasonKind::ALL {
            if !out.contains(&k.metric_label()) {
                out.push(k.metric_label());
            }
        }
        out
    }
}

impl From<VerdictKind> for ReasonKind {
    fn from(k: VerdictKind) -> Self {
        match k {
            VerdictKind::Allowed => ReasonKind::Allowed,
            VerdictKind::UntrustedImage => ReasonKind::UntrustedImage,
            VerdictKind::InvalidReference => ReasonKind::InvalidReference,
        }
    }
}

/// Why, typed and in words: the JSON line's `reason` is `text` (which
/// starts with `kind`'s stable head, see [`ReasonKind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub kind: ReasonKind,
    pub text: String,
}

impl Reason {
    pub fn new(kind: ReasonKind, text: impl Into<String>) -> Self {
        Reason {
            kind,
            text: text.into(),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    #[serde(rename = "type")]
    pub kind: FindingKind,
    pub verdict: FindingVerdict,
    pub action: FindingAction,
    /// Serialised as its text.
    pub reason: Reason,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub filename: Option<String>,
    pub comm: Option<String>,
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub image_digest: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// containerd namespace (`k8s.io` for Kubernetes, `default` for `ctr`, ...).
    pub runtime_namespace: Option<String>,
    /// The executed file has no name on disk (memfd, unlinked).
    pub fileless: bool,
    /// The executed file is in the container's writable (overlayfs upper)
    /// layer: written or modified after the container started.
    pub drift: bool,
    /// The executed file's own name, for fileless and drift execs
    /// (`memfd:<name>` for a memfd, whose `filename` is `/dev/fd/N`).
    pub file: Option<String>,
    /// The file name was cut at the kernel's buffer size.
    pub filename_truncated: bool,
    /// Kernel hook that saw the exec (`tp_btf`, `tracepoint`, `lsm`).
    pub hook: Option<Hook>,
    /// Nanoseconds since boot when the kernel saw the exec.
    pub boot_ns: Option<u64>,
}

/// A finding line of either shape: [`Finding`] (execs, containers the
/// runtime reported) or [`crate::crosscheck::KubeFinding`] (the cross-checks).
pub trait FindingLine: Serialize {
    fn verdict(&self) -> FindingVerdict;
    fn reason_kind(&self) -> ReasonKind;
}

impl FindingLine for Finding {
    fn verdict(&self) -> FindingVerdict {
        self.verdict
    }
    fn reason_kind(&self) -> ReasonKind {
        self.reason.kind
    }
}

impl FindingLine for crate::crosscheck::KubeFinding {
    fn verdict(&self) -> FindingVerdict {
        self.verdict
    }
    fn reason_kind(&self) -> ReasonKind {
        self.reason
    }
}

/// The one way a finding leaves the agent: counted by its reason kind
/// (unless its verdict is `allow`) and written to every sink. The caller
/// flushes (after each finding, or after a batch).
pub fn emit(f: &impl FindingLine, metrics: &Metrics, sinks: &Sinks) {
    if f.verdict() != FindingVerdict::Allow {
        metrics.finding(f.reason_kind());
    }
    sinks.emit(f);
}

/// What the agent knows about the exec'ing cgroup (filled by the inventory).
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub image_digest: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub runtime_namespace: Option<String>,
    /// Why the cgroup has its verdict (policy reason), if known.
    pub reason: Option<Reason>,
}

impl Finding {
    /// An exec finding from a kernel record. `enforcing` says whether the
    /// agent is in enforce mode (a deny in audit mode is `alerted`).
    pub fn from_exec(rec: &ExecRecord, attr: Option<&Attribution>) -> Self {
        let verdict = match rec.verdict {
            KernelVerdict::Allow => FindingVerdict::Allow,
            KernelVerdict::Deny | KernelVerdict::Audit => FindingVerdict::Deny,
            KernelVerdict::Unknown | KernelVerdict::Hold => FindingVerdict::Unknown,
        };
        let action = if rec.killed || rec.lsm_denied {
            FindingAction::Killed
        } else if rec.held {
            FindingAction::Held
        } else if matches!(rec.verdict, KernelVerdict::Deny | KernelVerdict::Audit) {
            FindingAction::Alerted
        } else {
            FindingAction::None
        };
        let reason = attr.and_then(|a| a.reason.clone()).unwrap_or_else(|| {
            let kind = match rec.verdict {
                KernelVerdict::Allow => ReasonKind::Allowed,
                KernelVerdict::Deny | KernelVerdict::Audit => ReasonKind::DeniedCgroup,
                KernelVerdict::Hold => ReasonKind::HeldUntilClassified,
                KernelVerdict::Unknown => ReasonKind::Unattributed,
            };
            Reason::new(kind, kind.as_str())
        });
        let a = attr.cloned().unwrap_or_default();
        Finding {
            kind: FindingKind::Exec,
            verdict,
            action,
            reason,
            pid: Some(rec.tgid),
            ppid: Some(rec.ppid),
            uid: Some(rec.uid),
            cgroup_id: Some(rec.cgroup_id),
            filename: Some(rec.filename_lossy()),
            comm: Some(rec.comm_lossy()),
            container_id: a.container_id,
            image: a.image,
            image_digest: a.image_digest,
            pod: a.pod,
            namespace: a.namespace,
            runtime_namespace: a.runtime_namespace,
            fileless: rec.fileless,
            drift: rec.drift,
            file: (!rec.file_name.is_empty())
                .then(|| String::from_utf8_lossy(&rec.file_name).into_owned()),
            filename_truncated: rec.truncated,
            hook: Some(rec.hook),
            boot_ns: Some(rec.boot_ns),
        }
    }
}

impl Finding {
    /// Makes an exec finding in a container whose verdict allowed it (or
    /// did not know it) the finding of a fileless or drift exec: reason
    /// `fileless-exec` or `drift-exec`, verdict `deny` when a rule (or the
    /// flag) denies such execs there, action `killed` when the kernel
    /// refused or killed it, else `alerted`.
    pub fn exec_drift(&mut self, rec: &ExecRecord, policy: Option<&DriftDecision>) {
        let (kind, what, action, rule) = if rec.fileless {
            (
                ReasonKind::FilelessExec,
                if rec.file_name.starts_with(b"memfd:") {
                    "a memfd"
                } else {
                    "an unlinked file"
                },
                policy.and_then(|p| p.fileless),
                policy.and_then(|p| p.fileless_rule.as_deref()),
            )
        } else {
            (
                ReasonKind::DriftExec,
                "a file of the container's writable layer",
                policy.and_then(|p| p.writable_layer),
                policy.and_then(|p| p.writable_layer_rule.as_deref()),
            )
        };
        let stopped = rec.drift_denied && (rec.killed || rec.lsm_denied);
        let (verdict, action, why) = match (action, stopped) {
            (_, true) => (
                FindingVerdict::Deny,
                FindingAction::Killed,
                format!("refused by {}", rule.unwrap_or("policy")),
            ),
            (Some(a), false) => (
                FindingVerdict::Deny,
                FindingAction::Alerted,
                format!(
                    "denied by {} ({}), not stopped",
                    rule.unwrap_or("policy"),
                    if a == Action::Audit {
                        "Audit rule or exempt namespace"
                    } else {
                        "audit mode, or the container's cgroup was not known yet"
                    }
                ),
            ),
            (None, false) => (
                FindingVerdict::Allow,
                FindingAction::Alerted,
                "no rule denies it".to_string(),
            ),
        };
        let file = self
            .file
            .clone()
            .or_else(|| self.filename.clone())
            .unwrap_or_default();
        let text = format!(
            "{kind}: {:?} ran {what} ({:?}) in a container of image {}; {why}",
            imagewarden_policy::text::quote(self.filename.as_deref().unwrap_or("")),
            imagewarden_policy::text::quote(&file),
            self.image.as_deref().unwrap_or("(unknown)"),
        );
        self.reason = Reason::new(kind, text);
        self.verdict = verdict;
        self.action = action;
    }

    /// A container-level finding (the runtime reported a container; the
    /// policy decided on its image).
    #[allow(clippy::too_many_arguments)]
    pub fn container(
        verdict: FindingVerdict,
        action: FindingAction,
        reason: Reason,
        pid: Option<u32>,
        cgroup_id: Option<u64>,
        attr: Attribution,
    ) -> Self {
        Finding {
            kind: FindingKind::Container,
            verdict,
            action,
            reason,
            pid,
            ppid: None,
            uid: None,
            cgroup_id,
            filename: None,
            comm: None,
            container_id: attr.container_id,
            image: attr.image,
            image_digest: attr.image_digest,
            pod: attr.pod,
            namespace: attr.namespace,
            runtime_namespace: attr.runtime_namespace,
            fileless: false,
            drift: false,
            file: None,
            filename_truncated: false,
            hook: None,
            boot_ns: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: KernelVerdict, killed: bool) -> ExecRecord {
        ExecRecord {
            boot_ns: 1,
            cgroup_id: 99,
            pid: 5,
            tgid: 5,
            ppid: 1,
            uid: 0,
            gid: 0,
            verdict: v,
            hook: Hook::Tracepoint,
            comm: b"sh".to_vec(),
            filename: b"/bin/sh".to_vec(),
            truncated: false,
            fileless: false,
            drift: false,
            in_container: false,
            drift_denied: false,
            file_name: Vec::new(),
            killed,
            held: false,
            lsm_denied: false,
            name_unreadable: false,
            nlink_unreadable: false,
        }
    }

    #[test]
    fn contract_keys_are_present_and_null_when_unknown() {
        let f = Finding::from_exec(&rec(KernelVerdict::Deny, true), None);
        let v = serde_json::to_value(&f).unwrap();
        for k in [
            "type",
            "verdict",
            "action",
            "reason",
            "pid",
            "cgroup_id",
            "filename",
            "container_id",
            "image",
            "image_digest",
            "pod",
            "namespace",
        ] {
            assert!(v.get(k).is_some(), "missing key {k}");
        }
        assert_eq!(v["type"], "exec");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["action"], "killed");
        assert_eq!(v["cgroup_id"], 99);
        assert!(v["container_id"].is_null() && v["image"].is_null() && v["pod"].is_null());
    }

    /// The JSON line of a finding is a contract (README, docs, scripts and
    /// tests parse it): these pin its exact text, key order included.
    #[test]
    fn json_lines_are_pinned() {
        let attr = Attribution {
            container_id: Some("c1".into()),
            image: Some("docker.io/library/nginx:latest".into()),
            image_digest: Some("sha256:ab".into()),
            pod: Some("web".into()),
            namespace: Some("prod".into()),
            runtime_namespace: Some("k8s.io".into()),
            reason: Some(Reason::new(
                ReasonKind::UntrustedImage,
                "untrusted-image: \"nginx\" fails rule r of policy p (Enforce): no",
            )),
        };
        let json = |f: &Finding| serde_json::to_string(f).unwrap();
        // An exec the kernel killed, in a denied container.
        let f = Finding::from_exec(&rec(KernelVerdict::Deny, true), Some(&attr));
        assert_eq!(json(&f), PIN_EXEC_KILLED, "{}", json(&f));
        // An exec nobody knows (no attribution), not killed.
        let f = Finding::from_exec(&rec(KernelVerdict::Unknown, false), None);
        assert_eq!(json(&f), PIN_EXEC_UNATTRIBUTED, "{}", json(&f));
        // A held exec.
        let mut r = rec(KernelVerdict::Hold, false);
        r.held = true;
        r.hook = Hook::Lsm;
        let f = Finding::from_exec(&r, None);
        assert_eq!(json(&f), PIN_EXEC_HELD, "{}", json(&f));
        // A fileless exec no rule denies.
        let mut r = rec(KernelVerdict::Allow, false);
        r.fileless = true;
        r.in_container = true;
        r.hook = Hook::TpBtf;
        r.filename = b"/dev/fd/3".to_vec();
        r.file_name = b"memfd:x".to_vec();
        let mut f = Finding::from_exec(&r, Some(&attr));
        f.exec_drift(&r, None);
        assert_eq!(json(&f), PIN_EXEC_FILELESS, "{}", json(&f));
        // A container finding.
        let f = Finding::container(
            FindingVerdict::Deny,
            FindingAction::Killed,
            Reason::new(
                ReasonKind::Unresolved,
                "unresolved: the runtime reports no image name",
            ),
            Some(42),
            Some(7),
            attr.clone(),
        );
        assert_eq!(json(&f), PIN_CONTAINER_KILLED, "{}", json(&f));
        let f = Finding::container(
            FindingVerdict::Allow,
            FindingAction::None,
            Reason::new(ReasonKind::Allowed, "allowed: pod sandbox"),
            None,
            None,
            Attribution::default(),
        );
        assert_eq!(json(&f), PIN_CONTAINER_ALLOWED, "{}", json(&f));
    }

    #[test]
    fn exec_drift_findings_say_what_ran_and_what_the_policy_did() {
        let mut r = rec(KernelVerdict::Allow, false);
        r.fileless = true;
        r.in_container = true;
        r.filename = b"/dev/fd/3".to_vec();
        r.file_name = b"memfd:x".to_vec();
        let attr = Attribution {
            image: Some("public.ecr.aws/a:1".into()),
            ..Default::default()
        };
        // No rule: reported, not denied.
        let mut f = Finding::from_exec(&r, Some(&attr));
        f.exec_drift(&r, None);
        assert_eq!(
            (f.verdict, f.action),
            (FindingVerdict::Allow, FindingAction::Alerted)
        );
        assert_eq!(f.reason.kind, ReasonKind::FilelessExec);
        assert!(
            f.reason
                .text
                .starts_with("fileless-exec: \"/dev/fd/3\" ran a memfd (\"memfd:x\")"),
            "{}",
            f.reason
        );
        assert_eq!(f.file.as_deref(), Some("memfd:x"));
        // A rule denies it, the kernel killed it.
        let d = DriftDecision::deny_all(Action::Enforce, "p/r");
        r.killed = true;
        r.drift_denied = true;
        let mut f = Finding::from_exec(&r, Some(&attr));
        f.exec_drift(&r, Some(&d));
        assert_eq!(
            (f.verdict, f.action),
            (FindingVerdict::Deny, FindingAction::Killed)
        );
        assert!(f.reason.text.ends_with("refused by p/r"), "{}", f.reason);
        // Denied by an Audit rule: alerted. A drift (not fileless) exec.
        let mut r = rec(KernelVerdict::Allow, false);
        r.drift = true;
        r.in_container = true;
        r.filename = b"/tmp/sh".to_vec();
        r.file_name = b"sh".to_vec();
        let d = DriftDecision::deny_all(Action::Audit, "p/a");
        let mut f = Finding::from_exec(&r, Some(&attr));
        f.exec_drift(&r, Some(&d));
        assert_eq!(
            (f.verdict, f.action),
            (FindingVerdict::Deny, FindingAction::Alerted)
        );
        assert!(f.reason.text.starts_with("drift-exec: "), "{}", f.reason);
        assert!(f.reason.text.contains("writable layer"), "{}", f.reason);
        assert!(f.drift && !f.fileless);
        assert_eq!(f.reason.kind, ReasonKind::DriftExec);
    }

    /// The wire strings of the enums, each once: a finding line never
    /// carries anything else, and the reason kinds' heads are unique.
    #[test]
    fn enums_serialise_as_their_wire_strings() {
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }
        for k in FindingKind::ALL {
            assert_eq!(json(k), format!("\"{}\"", k.as_str()));
        }
        for v in FindingVerdict::ALL {
            assert_eq!(json(v), format!("\"{}\"", v.as_str()));
        }
        for a in FindingAction::ALL {
            assert_eq!(json(a), format!("\"{}\"", a.as_str()));
        }
        let mut heads = std::collections::BTreeSet::new();
        for r in ReasonKind::ALL {
            assert_eq!(json(r), format!("\"{}\"", r.as_str()));
            assert!(heads.insert(r.as_str()), "{r:?}");
        }
        assert_eq!(
            [
                FindingAction::None,
                FindingAction::Alerted,
                FindingAction::Killed,
                FindingAction::Held
            ]
            .map(FindingAction::as_str),
            ["none", "alerted", "killed", "held"]
        );
        assert_eq!(
            FindingVerdict::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["allow", "deny", "unknown"]
        );
    }

    #[test]
    fn emit_counts_what_is_not_allowed_and_writes_every_line() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let metrics = Metrics::new();
        let buf = Buf::default();
        let sinks = Sinks::with_writer(
            crate::metrics::SinkLabel::Stdout,
            Box::new(buf.clone()),
            metrics.clone(),
        );
        let denied = Finding::from_exec(&rec(KernelVerdict::Deny, true), None);
        let allowed = Finding::from_exec(&rec(KernelVerdict::Allow, false), None);
        emit(&denied, &metrics, &sinks);
        emit(&allowed, &metrics, &sinks);
        sinks.flush();
        let text = metrics.encode(false).unwrap();
        assert!(
            text.contains("imagewarden_findings_total{reason=\"denied-cgroup\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imagewarden_findings_total{reason=\"other\"} 0"),
            "an allowed exec is printed, not counted: {text}"
        );
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    #[test]
    fn action_follows_verdict_and_kernel_flags() {
        assert_eq!(
            Finding::from_exec(&rec(KernelVerdict::Deny, false), None).action,
            FindingAction::Alerted
        );
        assert_eq!(
            Finding::from_exec(&rec(KernelVerdict::Allow, false), None).action,
            FindingAction::None
        );
        assert_eq!(
            Finding::from_exec(&rec(KernelVerdict::Unknown, false), None).verdict,
            FindingVerdict::Unknown
        );
        let attr = Attribution {
            reason: Some(Reason::new(
                ReasonKind::UntrustedImage,
                "untrusted-image: x",
            )),
            image: Some("nginx".into()),
            ..Default::default()
        };
        let f = Finding::from_exec(&rec(KernelVerdict::Deny, true), Some(&attr));
        assert_eq!(
            f.reason,
            Reason::new(ReasonKind::UntrustedImage, "untrusted-image: x")
        );
        assert_eq!(f.image.as_deref(), Some("nginx"));
    }

    const PIN_EXEC_KILLED: &str = r#"{"type":"exec","verdict":"deny","action":"killed","reason":"untrusted-image: \"nginx\" fails rule r of policy p (Enforce): no","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/bin/sh","comm":"sh","container_id":"c1","image":"docker.io/library/nginx:latest","image_digest":"sha256:ab","pod":"web","namespace":"prod","runtime_namespace":"k8s.io","fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":"tracepoint","boot_ns":1}"#;
    const PIN_EXEC_UNATTRIBUTED: &str = r#"{"type":"exec","verdict":"unknown","action":"none","reason":"unattributed","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/bin/sh","comm":"sh","container_id":null,"image":null,"image_digest":null,"pod":null,"namespace":null,"runtime_namespace":null,"fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":"tracepoint","boot_ns":1}"#;
    const PIN_EXEC_HELD: &str = r#"{"type":"exec","verdict":"unknown","action":"held","reason":"held-until-classified","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/bin/sh","comm":"sh","container_id":null,"image":null,"image_digest":null,"pod":null,"namespace":null,"runtime_namespace":null,"fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":"lsm","boot_ns":1}"#;
    const PIN_EXEC_FILELESS: &str = r#"{"type":"exec","verdict":"allow","action":"alerted","reason":"fileless-exec: \"/dev/fd/3\" ran a memfd (\"memfd:x\") in a container of image docker.io/library/nginx:latest; no rule denies it","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/dev/fd/3","comm":"sh","container_id":"c1","image":"docker.io/library/nginx:latest","image_digest":"sha256:ab","pod":"web","namespace":"prod","runtime_namespace":"k8s.io","fileless":true,"drift":false,"file":"memfd:x","filename_truncated":false,"hook":"tp_btf","boot_ns":1}"#;
    const PIN_CONTAINER_KILLED: &str = r#"{"type":"container","verdict":"deny","action":"killed","reason":"unresolved: the runtime reports no image name","pid":42,"ppid":null,"uid":null,"cgroup_id":7,"filename":null,"comm":null,"container_id":"c1","image":"docker.io/library/nginx:latest","image_digest":"sha256:ab","pod":"web","namespace":"prod","runtime_namespace":"k8s.io","fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":null,"boot_ns":null}"#;
    const PIN_CONTAINER_ALLOWED: &str = r#"{"type":"container","verdict":"allow","action":"none","reason":"allowed: pod sandbox","pid":null,"ppid":null,"uid":null,"cgroup_id":null,"filename":null,"comm":null,"container_id":null,"image":null,"image_digest":null,"pod":null,"namespace":null,"runtime_namespace":null,"fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":null,"boot_ns":null}"#;
}
