//! What admission deliberately excluded: Kyverno's global configuration
//! (the `kyverno` ConfigMap's `resourceFilters`) and `--exempt-namespace`.
//!
//! Kyverno never checks a Pod that a resource filter matches, so the agent
//! must not kill its containers either: they get the `audit` kernel verdict
//! (an untrusted image is still reported, never stopped).
//!
//! `resourceFilters` is a string of `[Kind,Namespace,Name]` entries, e.g.
//! `[Event,*,*][*/*,kube-system,*][Pod,kyverno,*]`, with `*` and `?`
//! wildcards. The kind may be `Kind`, `Kind/subresource` or
//! `group/version/Kind`; only entries whose kind matches a Pod (not a Pod
//! subresource) matter here. Missing namespace or name fields match
//! anything, as in Kyverno.
//!
//! When the cluster has no Kyverno ConfigMap, Kyverno's documented defaults
//! apply: kube-system, kube-public, kube-node-lease and Kyverno's own
//! namespace are excluded.
//!
//! `excludeGroups` / `excludeUsernames` (and Kyverno's older
//! `excludeGroupRole` / `excludeUsername`) decide on the user who sends an
//! admission request, which a Pod object does not record — with one
//! exception the agent can prove: a static Pod. The kubelet runs it from
//! its own manifests and creates its mirror Pod in the API server as
//! itself (user `system:node:<node>`, group `system:nodes`), so when
//! Kyverno excludes that group (its default) or that user, Kyverno never
//! checked the Pod, and its containers are reported, never stopped. Which
//! Pods are static comes from CRI (the sandbox annotation
//! `kubernetes.io/config.source`, which the kubelet stamps on every Pod it
//! runs, `api` for the API server's: a Pod cannot claim it), never from the
//! API server's copy. Every other group, user and role entry is logged as
//! not applied: who created an ordinary Pod is not recorded anywhere the
//! agent could trust.
use std::collections::BTreeMap;

/// Kyverno's wildcard match (`*` any run, `?` one character): the one the
/// Kyverno conformance vectors test.
use imagewarden_policy::wildcard::glob_match as glob;

/// One `[Kind,Namespace,Name]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFilter {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ResourceFilter {
    fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ResourceFilter {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Whether the filter's kind covers the creation of a Pod.
    pub fn matches_pod_kind(&self) -> bool {
        let parts: Vec<&str> = self.kind.split('/').collect();
        match parts.as_slice() {
            [kind] => glob(kind, "Pod"),
            // `Kind/subresource` (a Pod creation has no subresource) or
            // `version/Kind` (Kyverno's GVK forms).
            [a, b] => (glob(a, "Pod") && glob(b, "")) || (glob(a, "v1") && glob(b, "Pod")),
            [group, version, kind] => glob(group, "") && glob(version, "v1") && glob(kind, "Pod"),
            _ => false,
        }
    }

    /// Whether this filter excludes the Pod `name` in `namespace` from admission.
    pub fn matches_pod(&self, namespace: &str, name: Option<&str>) -> bool {
        self.matches_pod_kind()
            && glob(&self.namespace, namespace)
            && match name {
                Some(n) => glob(&self.name, n),
                // Pod unknown: only a filter for every name applies.
                None => self.name == "*",
            }
    }

    fn render(&self) -> String {
        format!("[{},{},{}]", self.kind, self.namespace, self.name)
    }
}

/// Parses a `resourceFilters` value. Entries with more than three fields are
/// returned as unsupported (by their text) and ignored.
pub fn parse_resource_filters(s: &str) -> (Vec<ResourceFilter>, Vec<String>) {
    let mut filters = Vec::new();
    let mut unsupported = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            unsupported.push(rest[open..].trim().to_string());
            break;
        };
        let body = &after[..close];
        rest = &after[close + 1..];
        if body.contains('[') {
            unsupported.push(format!("[{body}]"));
            continue;
        }
        let f: Vec<&str> = body.split(',').map(str::trim).collect();
        match f.as_slice() {
            [k] if !k.is_empty() => filters.push(ResourceFilter::new(k, "*", "*")),
            [k, ns] => filters.push(ResourceFilter::new(
                k,
                if ns.is_empty() { "*" } else { ns },
                "*",
            )),
            [k, ns, n] => filters.push(ResourceFilter::new(
                k,
                if ns.is_empty() { "*" } else { ns },
                if n.is_empty() { "*" } else { n },
            )),
            _ => unsupported.push(format!("[{body}]")),
        }
    }
    (filters, unsupported)
}

/// Where the resource filters in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOrigin {
    /// No Kubernetes (standalone): only `--exempt-namespace`.
    None,
    /// No Kyverno ConfigMap in the cluster: Kyverno's defaults.
    KyvernoDefaults,
    /// The cluster's Kyverno ConfigMap `namespace/name`.
    ConfigMap(String),
}

/// The group the kubelet sends its requests as (with `system:authenticated`).
pub const NODES_GROUP: &str = "system:nodes";
/// Kyverno's default `excludeGroups` entry that covers the kubelet.
const DEFAULT_EXCLUDED_NODE_GROUP: &str = NODES_GROUP;

/// Namespaces and Pods never stopped by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemptions {
    /// `--exempt-namespace` (exact names).
    pub namespaces: Vec<String>,
    /// Kyverno resource filters that match Pods.
    pub filters: Vec<ResourceFilter>,
    pub origin: FilterOrigin,
    /// Why Kyverno never checks what this node's kubelet sends (the mirror
    /// Pods of static Pods): the group or user entry that excludes it.
    /// `None`: static Pods are judged like any other.
    pub kubelet_excluded: Option<String>,
}

impl Default for Exemptions {
    fn default() -> Self {
        Exemptions {
            namespaces: Vec::new(),
            filters: Vec::new(),
            origin: FilterOrigin::None,
            kubelet_excluded: None,
        }
    }
}

/// A comma-separated list of Kyverno's configuration (`a, b,c`).
fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

impl Exemptions {
    /// `--exempt-namespace` only.
    pub fn from_namespaces(namespaces: &[String]) -> Self {
        Exemptions {
            namespaces: namespaces.to_vec(),
            ..Default::default()
        }
    }

    /// Kyverno's defaults (no ConfigMap in the cluster), plus `--exempt-namespace`.
    pub fn kyverno_defaults(namespaces: &[String], kyverno_namespace: &str) -> Self {
        let filters = [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            kyverno_namespace,
        ]
        .iter()
        .map(|ns| ResourceFilter::new("*", ns, "*"))
        .collect();
        Exemptions {
            namespaces: namespaces.to_vec(),
            filters,
            origin: FilterOrigin::KyvernoDefaults,
            kubelet_excluded: Some(format!(
                "Kyverno's default excludeGroups {DEFAULT_EXCLUDED_NODE_GROUP} (no Kyverno ConfigMap)"
            )),
        }
    }

    /// The filters of a Kyverno ConfigMap's data, plus `--exempt-namespace`;
    /// also returns what is not applied (unsupported entries and keys).
    /// `node`: this node's name (for `excludeUsernames` entries naming the
    /// kubelet's user `system:node:<node>`).
    pub fn from_configmap(
        namespaces: &[String],
        origin: &str,
        node: Option<&str>,
        data: &BTreeMap<String, String>,
    ) -> (Self, Vec<String>) {
        let (all, mut notes) = parse_resource_filters(
            data.get("resourceFilters")
                .map(String::as_str)
                .unwrap_or(""),
        );
        notes
            .iter_mut()
            .for_each(|u| *u = format!("resourceFilters entry {u} not understood"));
        let kubelet_excluded = kubelet_exclusion(data, node, &mut notes);
        for key in ["excludeRoles", "excludeClusterRoles"] {
            if data.get(key).is_some_and(|v| !v.trim().is_empty()) {
                notes.push(format!(
                    "{key}: not applied (a Pod does not record who created it)"
                ));
            }
        }
        let filters = all
            .into_iter()
            .filter(ResourceFilter::matches_pod_kind)
            .collect();
        (
            Exemptions {
                namespaces: namespaces.to_vec(),
                filters,
                origin: FilterOrigin::ConfigMap(origin.into()),
                kubelet_excluded,
            },
            notes,
        )
    }

    /// Why a Pod is exempt (for the finding's reason), or `None`.
    /// `static_pod`: CRI says the kubelet runs the Pod from its own
    /// manifests (see the module's documentation).
    pub fn exempt(&self, namespace: &str, pod: Option<&str>, static_pod: bool) -> Option<String> {
        if self.namespaces.iter().any(|n| n == namespace) {
            return Some(format!(
                "namespace {namespace} is exempt (--exempt-namespace)"
            ));
        }
        if static_pod {
            if let Some(why) = &self.kubelet_excluded {
                return Some(format!(
                    "a static Pod, whose mirror Pod the kubelet creates: excluded from admission by {why}"
                ));
            }
        }
        let f = self
            .filters
            .iter()
            .find(|f| f.matches_pod(namespace, pod))?;
        let origin = match &self.origin {
            FilterOrigin::None => "resource filter".to_string(),
            FilterOrigin::KyvernoDefaults => {
                "Kyverno's default resourceFilters (no Kyverno ConfigMap)".to_string()
            }
            FilterOrigin::ConfigMap(c) => format!("Kyverno ConfigMap {c} resourceFilters"),
        };
        Some(format!(
            "excluded from admission by {origin} {}",
            f.render()
        ))
    }
}

/// Whether Kyverno's user exclusions cover the kubelet of `node` (its
/// group [`NODES_GROUP`], `system:authenticated`, or its user), and by which
/// entry; every entry that names someone else is noted as not applied.
/// Kyverno's newer keys (`excludeGroups`, `excludeUsernames`) replace its
/// default `system:nodes` when present; the older `excludeGroupRole` is
/// added to it (Kyverno before 1.10 always kept its defaults).
fn kubelet_exclusion(
    data: &BTreeMap<String, String>,
    node: Option<&str>,
    notes: &mut Vec<String>,
) -> Option<String> {
    let kubelet_user = node.map(|n| format!("system:node:{n}"));
    let mut found = None;
    let mut groups: Vec<(&str, String)> = Vec::new();
    match data.get("excludeGroups") {
        Some(v) => groups.extend(parse_list(v).into_iter().map(|g| ("excludeGroups", g))),
        None => groups.push(("default excludeGroups", DEFAULT_EXCLUDED_NODE_GROUP.into())),
    }
    if let Some(v) = data.get("excludeGroupRole") {
        groups.extend(parse_list(v).into_iter().map(|g| ("excludeGroupRole", g)));
        groups.push((
            "default excludeGroupRole",
            DEFAULT_EXCLUDED_NODE_GROUP.into(),
        ));
    }
    for (key, g) in &groups {
        if g.starts_with('!') {
            notes.push(format!(
                "{key} entry {g}: negation not understood, not applied"
            ));
        } else if glob(g, NODES_GROUP) || glob(g, "system:authenticated") {
            found.get_or_insert_with(|| format!("{key} {g}"));
        } else {
            notes.push(format!(
                "{key} entry {g}: not applied (a Pod does not record who created it; only the kubelet's static Pods are known)"
            ));
        }
    }
    for key in ["excludeUsernames", "excludeUsername"] {
        for u in data.get(key).map(|v| parse_list(v)).unwrap_or_default() {
            if !u.starts_with('!') && kubelet_user.as_deref().is_some_and(|k| glob(&u, k)) {
                found.get_or_insert_with(|| format!("{key} {u}"));
            } else {
                notes.push(format!(
                    "{key} entry {u}: not applied (a Pod does not record who created it; only this node's kubelet is known)"
                ));
            }
        }
    }
    found
}

/// Reads the Kyverno ConfigMap: `Ok(None)` when it does not exist (then
/// Kyverno's defaults apply), `Err` when the API cannot say.
pub async fn fetch(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await?
        .map(|cm| cm.data.unwrap_or_default()))
}

/// The exemptions in force given what [`fetch`] returned.
pub fn exemptions_of(
    namespaces: &[String],
    kyverno_namespace: &str,
    name: &str,
    node: Option<&str>,
    data: Option<&BTreeMap<String, String>>,
) -> (Exemptions, Vec<String>) {
    match data {
        Some(d) => {
            Exemptions::from_configmap(namespaces, &format!("{kyverno_namespace}/{name}"), node, d)
        }
        None => (
            Exemptions::kyverno_defaults(namespaces, kyverno_namespace),
            Vec::new(),
        ),
    }
}

/// Keeps the exemptions current: reads the ConfigMap every `every`; while
/// the API cannot answer, the last known exemptions stay. Spawn it.
pub async fn watch_exemptions(
    client: kube::Client,
    namespaces: Vec<String>,
    kyverno_namespace: String,
    name: String,
    node: Option<String>,
    tx: tokio::sync::watch::Sender<std::sync::Arc<Exemptions>>,
    every: std::time::Duration,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        match fetch(&client, &kyverno_namespace, &name).await {
            Ok(data) => {
                failing = false;
                let (e, notes) = exemptions_of(
                    &namespaces,
                    &kyverno_namespace,
                    &name,
                    node.as_deref(),
                    data.as_ref(),
                );
                if **tx.borrow() != e {
                    for n in notes {
                        tracing::warn!("Kyverno configuration: {n}");
                    }
                    tracing::info!(filters = e.filters.len(), origin = ?e.origin, "admission exclusions changed");
                    if tx.send(std::sync::Arc::new(e)).is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!("reading the Kyverno ConfigMap {kyverno_namespace}/{name}: {err}; the last known exclusions stay");
                }
                failing = true;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob("*", ""));
        assert!(glob("*", "kube-system"));
        assert!(glob("kube-*", "kube-system"));
        assert!(!glob("kube-*", "kyverno"));
        assert!(glob("k?verno", "kyverno"));
        assert!(glob("*-lease", "kube-node-lease"));
        assert!(!glob("Pod", "Pods"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn parses_kyverno_resource_filters() {
        let s = "[Event,*,*][*/*,kube-system,*] [*,kube-public,*]\n[Pod,prod,web-*][Pod/binding,*,*][ReplicaSet,*,*]\
                 [v1/Pod,ns2,*][Node][a,b,c,d]";
        let (f, u) = parse_resource_filters(s);
        assert_eq!(u, vec!["[a,b,c,d]".to_string()]);
        assert_eq!(f.len(), 8);
        let pods: Vec<String> = f
            .iter()
            .filter(|f| f.matches_pod_kind())
            .map(ResourceFilter::render)
            .collect();
        assert_eq!(
            pods,
            vec![
                "[*/*,kube-system,*]",
                "[*,kube-public,*]",
                "[Pod,prod,web-*]",
                "[v1/Pod,ns2,*]"
            ]
        );
    }

    #[test]
    fn exemptions_by_namespace_and_pod() {
        let mut data = BTreeMap::new();
        data.insert(
            "resourceFilters".to_string(),
            "[Event,*,*][*/*,kube-system,*][Pod,prod,web-*]".to_string(),
        );
        data.insert("excludeGroups".to_string(), "system:nodes".to_string());
        let (e, notes) =
            Exemptions::from_configmap(&["ops".into()], "kyverno/kyverno", None, &data);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(e
            .exempt("kube-system", Some("aws-node-x"), false)
            .unwrap()
            .contains("[*/*,kube-system,*]"));
        assert!(e.exempt("kube-system", None, false).is_some());
        assert!(e.exempt("prod", Some("web-1"), false).is_some());
        assert!(e.exempt("prod", Some("db-1"), false).is_none());
        assert!(
            e.exempt("prod", None, false).is_none(),
            "a name filter needs the Pod's name"
        );
        assert!(e
            .exempt("ops", None, false)
            .unwrap()
            .contains("--exempt-namespace"));
        // The ConfigMap replaces Kyverno's defaults: kube-public is checked here.
        assert!(e.exempt("kube-public", Some("x"), false).is_none());
        let d = Exemptions::kyverno_defaults(&[], "kyverno");
        for ns in ["kube-system", "kube-public", "kube-node-lease", "kyverno"] {
            assert!(
                d.exempt(ns, None, false).unwrap().contains("default"),
                "{ns}"
            );
        }
        assert!(d.exempt("default", None, false).is_none());
        assert!(Exemptions::default()
            .exempt("kube-system", None, false)
            .is_none());
    }

    /// A static Pod (CRI says the kubelet runs it from its manifests) is
    /// excluded exactly when Kyverno excludes the kubelet's requests; an
    /// ordinary Pod never is by a user or group entry.
    #[test]
    fn static_pods_follow_the_kubelets_exclusion() {
        let cm = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let node = Some("ip-10-0-0-1");
        // No ConfigMap: Kyverno's default excludeGroups system:nodes.
        let d = Exemptions::kyverno_defaults(&[], "kyverno");
        let why = d
            .exempt("prod", Some("etcd-x"), true)
            .expect("static Pod exempt");
        assert!(
            why.contains("static Pod") && why.contains("system:nodes"),
            "{why}"
        );
        assert!(d.exempt("prod", Some("etcd-x"), false).is_none());
        // A ConfigMap without the key keeps the default.
        let (e, notes) = Exemptions::from_configmap(&[], "kyverno/kyverno", node, &cm(&[]));
        assert!(
            e.exempt("prod", None, true).is_some() && notes.is_empty(),
            "{notes:?}"
        );
        // excludeGroups replaces the default: without system:nodes the
        // static Pod is judged, and the other group is noted.
        let (e, notes) = Exemptions::from_configmap(
            &[],
            "kyverno/kyverno",
            node,
            &cm(&[("excludeGroups", "system:serviceaccounts:kube-system")]),
        );
        assert!(e.exempt("prod", None, true).is_none());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("system:serviceaccounts:kube-system"),
            "{notes:?}"
        );
        // Wildcards, the kubelet's user on this node (not another node's),
        // the older keys (which keep the default).
        let (e, _) =
            Exemptions::from_configmap(&[], "c", node, &cm(&[("excludeGroups", "system:*")]));
        assert!(e
            .exempt("prod", None, true)
            .unwrap()
            .contains("excludeGroups system:*"));
        let user = |u: &str| {
            Exemptions::from_configmap(
                &[],
                "c",
                node,
                &cm(&[("excludeGroups", ""), ("excludeUsernames", u)]),
            )
        };
        assert!(user("system:node:ip-10-0-0-1")
            .0
            .exempt("p", None, true)
            .is_some());
        assert!(user("system:node:*").0.exempt("p", None, true).is_some());
        let (other, notes) = user("system:node:ip-10-0-0-2, alice");
        assert!(other.exempt("p", None, true).is_none());
        assert_eq!(notes.len(), 2, "{notes:?}");
        let (old, _) = Exemptions::from_configmap(
            &[],
            "c",
            node,
            &cm(&[("excludeGroups", ""), ("excludeGroupRole", "team-a")]),
        );
        assert!(old
            .exempt("p", None, true)
            .unwrap()
            .contains("default excludeGroupRole"));
        // A negation is not understood: not applied, and said.
        let (neg, notes) =
            Exemptions::from_configmap(&[], "c", node, &cm(&[("excludeGroups", "!system:nodes")]));
        assert!(neg.exempt("p", None, true).is_none());
        assert!(notes.iter().any(|n| n.contains("negation")), "{notes:?}");
        // No Kubernetes (standalone): nothing.
        assert!(Exemptions::default().exempt("p", None, true).is_none());
    }
}
