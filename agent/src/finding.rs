//! Findings: the JSON lines the agent prints (contract in docs/architecture.md:
//! `type`, `verdict`, `action`, `reason`, `pid`, `cgroup_id`, `filename`,
//! `container_id`, `image`, `image_digest`, `pod`, `namespace`; null where
//! unknown).
use serde::Serialize;

use imagewarden_policy::{Action, DriftDecision};

use crate::probes::event::{ExecRecord, Hook, KernelVerdict};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// `exec` or `container`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `allow`, `deny` or `unknown`.
    pub verdict: &'static str,
    /// `none`, `alerted`, `killed` (and `held` while user space decides).
    pub action: &'static str,
    pub reason: String,
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
    pub hook: Option<&'static str>,
    /// Nanoseconds since boot when the kernel saw the exec.
    pub boot_ns: Option<u64>,
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
    pub reason: Option<String>,
}

fn hook_name(h: Hook) -> Option<&'static str> {
    match h {
        Hook::TpBtf => Some("tp_btf"),
        Hook::Tracepoint => Some("tracepoint"),
        Hook::Lsm => Some("lsm"),
        Hook::Other(_) => None,
    }
}

impl Finding {
    /// An exec finding from a kernel record. `enforcing` says whether the
    /// agent is in enforce mode (a deny in audit mode is `alerted`).
    pub fn from_exec(rec: &ExecRecord, attr: Option<&Attribution>) -> Self {
        let verdict = match rec.verdict {
            KernelVerdict::Allow => "allow",
            KernelVerdict::Deny | KernelVerdict::Audit => "deny",
            KernelVerdict::Unknown | KernelVerdict::Hold => "unknown",
        };
        let action = if rec.killed || rec.lsm_denied {
            "killed"
        } else if rec.held {
            "held"
        } else if matches!(rec.verdict, KernelVerdict::Deny | KernelVerdict::Audit) {
            "alerted"
        } else {
            "none"
        };
        let reason = attr.and_then(|a| a.reason.clone()).unwrap_or_else(|| {
            match rec.verdict {
                KernelVerdict::Allow => "allowed",
                KernelVerdict::Deny | KernelVerdict::Audit => "denied-cgroup",
                KernelVerdict::Hold => "held-until-classified",
                KernelVerdict::Unknown => "unattributed",
            }
            .to_string()
        });
        let a = attr.cloned().unwrap_or_default();
        Finding {
            kind: "exec",
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
            hook: hook_name(rec.hook),
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
                "fileless-exec",
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
                "drift-exec",
                "a file of the container's writable layer",
                policy.and_then(|p| p.writable_layer),
                policy.and_then(|p| p.writable_layer_rule.as_deref()),
            )
        };
        let stopped = rec.drift_denied && (rec.killed || rec.lsm_denied);
        let (verdict, action, why) = match (action, stopped) {
            (_, true) => (
                "deny",
                "killed",
                format!("refused by {}", rule.unwrap_or("policy")),
            ),
            (Some(a), false) => (
                "deny",
                "alerted",
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
            (None, false) => ("allow", "alerted", "no rule denies it".to_string()),
        };
        let file = self
            .file
            .clone()
            .or_else(|| self.filename.clone())
            .unwrap_or_default();
        self.reason = format!(
            "{kind}: {:?} ran {what} ({:?}) in a container of image {}; {why}",
            imagewarden_policy::text::quote(self.filename.as_deref().unwrap_or("")),
            imagewarden_policy::text::quote(&file),
            self.image.as_deref().unwrap_or("(unknown)"),
        );
        self.verdict = verdict;
        self.action = action;
    }

    /// A container-level finding (the runtime reported a container; the
    /// policy decided on its image).
    #[allow(clippy::too_many_arguments)]
    pub fn container(
        verdict: &'static str,
        action: &'static str,
        reason: String,
        pid: Option<u32>,
        cgroup_id: Option<u64>,
        attr: Attribution,
    ) -> Self {
        Finding {
            kind: "container",
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
            reason: Some(
                "untrusted-image: \"nginx\" fails rule r of policy p (Enforce): no".into(),
            ),
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
            "deny",
            "killed",
            "unresolved: the runtime reports no image name".into(),
            Some(42),
            Some(7),
            attr.clone(),
        );
        assert_eq!(json(&f), PIN_CONTAINER_KILLED, "{}", json(&f));
        let f = Finding::container(
            "allow",
            "none",
            "allowed: pod sandbox".into(),
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
        assert_eq!((f.verdict, f.action), ("allow", "alerted"));
        assert!(
            f.reason
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
        assert_eq!((f.verdict, f.action), ("deny", "killed"));
        assert!(f.reason.ends_with("refused by p/r"), "{}", f.reason);
        // Denied by an Audit rule: alerted. A drift (not fileless) exec.
        let mut r = rec(KernelVerdict::Allow, false);
        r.drift = true;
        r.in_container = true;
        r.filename = b"/tmp/sh".to_vec();
        r.file_name = b"sh".to_vec();
        let d = DriftDecision::deny_all(Action::Audit, "p/a");
        let mut f = Finding::from_exec(&r, Some(&attr));
        f.exec_drift(&r, Some(&d));
        assert_eq!((f.verdict, f.action), ("deny", "alerted"));
        assert!(f.reason.starts_with("drift-exec: "), "{}", f.reason);
        assert!(f.reason.contains("writable layer"), "{}", f.reason);
        assert!(f.drift && !f.fileless);
        assert_eq!(
            crate::metrics::FindingReason::from_reason(&f.reason),
            crate::metrics::FindingReason::DriftExec
        );
    }

    #[test]
    fn action_follows_verdict_and_kernel_flags() {
        assert_eq!(
            Finding::from_exec(&rec(KernelVerdict::Deny, false), None).action,
            "alerted"
        );
        assert_eq!(
            Finding::from_exec(&rec(KernelVerdict::Allow, false), None).action,
            "none"
        );
        assert_eq!(
            Finding::from_exec(&rec(KernelVerdict::Unknown, false), None).verdict,
            "unknown"
        );
        let attr = Attribution {
            reason: Some("untrusted-image: x".into()),
            image: Some("nginx".into()),
            ..Default::default()
        };
        let f = Finding::from_exec(&rec(KernelVerdict::Deny, true), Some(&attr));
        assert_eq!(f.reason, "untrusted-image: x");
        assert_eq!(f.image.as_deref(), Some("nginx"));
    }

    const PIN_EXEC_KILLED: &str = r#"{"type":"exec","verdict":"deny","action":"killed","reason":"untrusted-image: \"nginx\" fails rule r of policy p (Enforce): no","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/bin/sh","comm":"sh","container_id":"c1","image":"docker.io/library/nginx:latest","image_digest":"sha256:ab","pod":"web","namespace":"prod","runtime_namespace":"k8s.io","fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":"tracepoint","boot_ns":1}"#;
    const PIN_EXEC_UNATTRIBUTED: &str = r#"{"type":"exec","verdict":"unknown","action":"none","reason":"unattributed","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/bin/sh","comm":"sh","container_id":null,"image":null,"image_digest":null,"pod":null,"namespace":null,"runtime_namespace":null,"fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":"tracepoint","boot_ns":1}"#;
    const PIN_EXEC_HELD: &str = r#"{"type":"exec","verdict":"unknown","action":"held","reason":"held-until-classified","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/bin/sh","comm":"sh","container_id":null,"image":null,"image_digest":null,"pod":null,"namespace":null,"runtime_namespace":null,"fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":"lsm","boot_ns":1}"#;
    const PIN_EXEC_FILELESS: &str = r#"{"type":"exec","verdict":"allow","action":"alerted","reason":"fileless-exec: \"/dev/fd/3\" ran a memfd (\"memfd:x\") in a container of image docker.io/library/nginx:latest; no rule denies it","pid":5,"ppid":1,"uid":0,"cgroup_id":99,"filename":"/dev/fd/3","comm":"sh","container_id":"c1","image":"docker.io/library/nginx:latest","image_digest":"sha256:ab","pod":"web","namespace":"prod","runtime_namespace":"k8s.io","fileless":true,"drift":false,"file":"memfd:x","filename_truncated":false,"hook":"tp_btf","boot_ns":1}"#;
    const PIN_CONTAINER_KILLED: &str = r#"{"type":"container","verdict":"deny","action":"killed","reason":"unresolved: the runtime reports no image name","pid":42,"ppid":null,"uid":null,"cgroup_id":7,"filename":null,"comm":null,"container_id":"c1","image":"docker.io/library/nginx:latest","image_digest":"sha256:ab","pod":"web","namespace":"prod","runtime_namespace":"k8s.io","fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":null,"boot_ns":null}"#;
    const PIN_CONTAINER_ALLOWED: &str = r#"{"type":"container","verdict":"allow","action":"none","reason":"allowed: pod sandbox","pid":null,"ppid":null,"uid":null,"cgroup_id":null,"filename":null,"comm":null,"container_id":null,"image":null,"image_digest":null,"pod":null,"namespace":null,"runtime_namespace":null,"fileless":false,"drift":false,"file":null,"filename_truncated":false,"hook":null,"boot_ns":null}"#;
}
