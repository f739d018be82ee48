//! The native policy: `apiVersion: imagewarden.dev/v1alpha1`, `kind: ImagePolicy`.
//!
//! Safer than glob patterns on the image string: it matches the
//! *normalised* reference structurally.
//! - `registry` is compared with the reference's domain exactly (ASCII
//!   case-insensitive): `public.ecr.aws` never matches
//!   `public.ecr.aws.evil.com/x` nor `evil.com/public.ecr.aws/x`.
//! - `repositories` are globs on the normalised path (`library/nginx` for
//!   `nginx`): `*` and `?` stay within one path segment, `**` crosses
//!   segments. Default: `**` (any repository of the registry).
//! - `requireDigest` and `digests` pin images by content.
//! - Exemptions by namespace or Pod labels; `Audit` or `Enforce` per rule.
//! - Containers, init containers and ephemeral containers are all covered
//!   unless `match.containerTypes` says otherwise.
//!
//! Every struct denies unknown fields: a typo is an error, never a silently
//! weaker policy.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::eval::{DriftRule, Filter, FilterSet, ImageTest, NamespaceFilter, Policy, Rule, Scope};
use crate::load::DocSource;
use crate::model::{Action, ContainerType, PolicyError, Warning};
use crate::reference::Reference;

pub const API_GROUP: &str = "imagewarden.dev";
pub const API_VERSION: &str = "imagewarden.dev/v1alpha1";
pub const KIND: &str = "ImagePolicy";

/// Kinds a native rule may name (the workloads `check --manifest` reads).
pub const WORKLOAD_KINDS: [&str; 8] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagePolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
    /// Present when read back from the API server; ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// Object metadata. Only `name` is used; the other fields Kubernetes adds
/// (uid, resourceVersion, managedFields...) are accepted and ignored since
/// none of them changes what the policy enforces.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Default action of the rules (default `Enforce`).
    #[serde(default)]
    pub action: Option<ActionName>,
    pub rules: Vec<NativeRule>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum ActionName {
    #[serde(alias = "audit")]
    Audit,
    #[serde(alias = "enforce")]
    Enforce,
}

impl From<ActionName> for Action {
    fn from(a: ActionName) -> Action {
        match a {
            ActionName::Audit => Action::Audit,
            ActionName::Enforce => Action::Enforce,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeRule {
    pub name: String,
    #[serde(default)]
    pub action: Option<ActionName>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "match")]
    pub match_: Option<NativeMatch>,
    #[serde(default)]
    pub exemptions: Vec<Exemption>,
    /// The image must match one of these (when the list is not empty).
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    /// The image must match none of these.
    #[serde(default)]
    pub deny: Vec<DenyEntry>,
    /// Execs of programs that are not part of the image, in the containers
    /// the rule covers: `deny` refuses them (in enforce mode, with the rule's
    /// action), `report` (the default) only reports them.
    #[serde(default)]
    pub exec_drift: Option<ExecDriftSpec>,
}

/// A rule's `execDrift`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecDriftSpec {
    /// A file with no name on disk: a memfd, an unlinked file.
    #[serde(default)]
    pub fileless: Option<DriftAction>,
    /// A file in the container's writable layer: written, copied or
    /// modified after the container started.
    #[serde(default)]
    pub writable_layer: Option<DriftAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftAction {
    Deny,
    Report,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeMatch {
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub container_types: Option<Vec<ContainerTypeName>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerTypeName {
    Container,
    Init,
    Ephemeral,
}

impl From<ContainerTypeName> for ContainerType {
    fn from(c: ContainerTypeName) -> ContainerType {
        match c {
            ContainerTypeName::Container => ContainerType::Container,
            ContainerTypeName::Init => ContainerType::Init,
            ContainerTypeName::Ephemeral => ContainerType::Ephemeral,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemption {
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub pod_labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowEntry {
    pub registry: String,
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
    #[serde(default)]
    pub require_digest: bool,
    #[serde(default)]
    pub digests: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DenyEntry {
    pub registry: String,
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
}

/// Structural matcher on a normalised reference.
#[derive(Debug, Clone)]
pub struct RefMatcher {
    /// Lower-case host[:port], `index.docker.io` folded to `docker.io`.
    registry: String,
    repositories: Vec<RepoGlob>,
    require_digest: bool,
    digests: Vec<String>,
}

impl RefMatcher {
    pub fn matches(&self, r: &Reference) -> bool {
        if !r.domain.eq_ignore_ascii_case(&self.registry) {
            return false;
        }
        if !self.repositories.iter().any(|g| g.matches(&r.path)) {
            return false;
        }
        if self.require_digest && r.digest.is_none() {
            return false;
        }
        if !self.digests.is_empty() {
            match &r.digest {
                Some(d) => return self.digests.iter().any(|x| x == d),
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(String),
    /// `?`: one character, not `/`.
    One,
    /// `*`: any run within one segment.
    Star,
    /// `**`: any run, across segments.
    DoubleStar,
}

/// A repository glob, compiled once.
#[derive(Debug, Clone)]
pub struct RepoGlob {
    toks: Vec<Tok>,
}

impl RepoGlob {
    pub fn compile(pattern: &str) -> Result<RepoGlob, String> {
        if pattern.is_empty() {
            return Err("empty repository pattern".into());
        }
        if pattern.starts_with('/') || pattern.ends_with('/') || pattern.contains("//") {
            return Err(format!(
                "repository pattern {pattern:?} has an empty path segment"
            ));
        }
        if let Some(c) = pattern.chars().find(|c| {
            !(c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '.' | '_' | '-' | '/' | '*' | '?'))
        }) {
            return Err(format!(
                "repository pattern {pattern:?} contains {c:?}: repositories are lower-case \
                 [a-z0-9._-] segments separated by '/' (globs: *, **, ?), so it could never match"
            ));
        }
        if pattern.contains("***") {
            return Err(format!("repository pattern {pattern:?}: use * or **"));
        }
        let mut toks = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' | '?' => {
                    if !lit.is_empty() {
                        toks.push(Tok::Lit(std::mem::take(&mut lit)));
                    }
                    if c == '?' {
                        toks.push(Tok::One);
                    } else if chars.peek() == Some(&'*') {
                        chars.next();
                        toks.push(Tok::DoubleStar);
                    } else {
                        toks.push(Tok::Star);
                    }
                }
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        Ok(RepoGlob { toks })
    }

    pub fn matches(&self, path: &str) -> bool {
        let p = path.as_bytes();
        let n = p.len();
        // prev[j]: the tokens so far match p[..j].
        let mut prev = vec![false; n + 1];
        let mut cur = vec![false; n + 1];
        prev[0] = true;
        for tok in &self.toks {
            match tok {
                Tok::Lit(s) => {
                    let s = s.as_bytes();
                    for j in 0..=n {
                        cur[j] = j >= s.len() && prev[j - s.len()] && &p[j - s.len()..j] == s;
                    }
                }
                Tok::One => {
                    cur[0] = false;
                    for j in 1..=n {
                        cur[j] = prev[j - 1] && p[j - 1] != b'/';
                    }
                }
                Tok::Star => {
                    cur[0] = prev[0];
                    for j in 1..=n {
                        cur[j] = prev[j] || (cur[j - 1] && p[j - 1] != b'/');
                    }
                }
                Tok::DoubleStar => {
                    cur[0] = prev[0];
                    for j in 1..=n {
                        cur[j] = prev[j] || cur[j - 1];
                    }
                }
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        prev[n]
    }
}

fn normalize_registry(registry: &str) -> Result<String, String> {
    let r = registry.trim();
    if r.is_empty() {
        return Err("empty registry".into());
    }
    if r.contains('/') {
        return Err(format!(
            "registry {registry:?} contains '/': give the host (and port) only, and put the \
             path in `repositories`"
        ));
    }
    if r.contains(['*', '?']) {
        return Err(format!(
            "registry {registry:?}: registries are exact host names, no globs"
        ));
    }
    if let Some(c) = r
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
    {
        return Err(format!("registry {registry:?} contains {c:?}"));
    }
    let lower = r.to_ascii_lowercase();
    Ok(if lower == "index.docker.io" {
        "docker.io".to_string()
    } else {
        lower
    })
}

fn check_digest(d: &str) -> Result<(), String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| format!("digest {d:?} is not ALGORITHM:HEX"))?;
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "digest {d:?}: algorithm must be sha256, sha384 or sha512"
            ))
        }
    };
    if hex.len() != len
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(format!(
            "digest {d:?}: expected {len} lower-case hex characters after {alg}:"
        ));
    }
    Ok(())
}

fn compile_repos(repos: &Option<Vec<String>>) -> Result<Vec<RepoGlob>, String> {
    match repos {
        None => Ok(vec![RepoGlob::compile("**")?]),
        Some(list) if list.is_empty() => {
            Err("`repositories` is empty: omit it to allow every repository".into())
        }
        Some(list) => list.iter().map(|r| RepoGlob::compile(r)).collect(),
    }
}

/// The state one rule's compilation shares: where it is, for errors.
struct RuleCtx<'a> {
    src: &'a DocSource<'a>,
    policy: &'a str,
    rule: &'a str,
}

impl RuleCtx<'_> {
    fn err(&self, field: &str, msg: String) -> PolicyError {
        self.src
            .invalid(Some(self.policy), Some(self.rule), field, msg)
    }
}

/// Compiles one native document into a policy.
pub(crate) fn compile(
    doc: ImagePolicyDoc,
    src: &DocSource<'_>,
) -> Result<(Policy, Vec<Warning>), PolicyError> {
    let policy_name = doc.metadata.name.clone();
    check_header(&doc, src)?;
    let default_action: Action = doc.spec.action.map(Into::into).unwrap_or(Action::Enforce);
    let mut rules = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in &doc.spec.rules {
        let cx = RuleCtx {
            src,
            policy: &policy_name,
            rule: &r.name,
        };
        if r.name.trim().is_empty() {
            return Err(cx.err("name", "rule name is empty".into()));
        }
        if !seen.insert(r.name.clone()) {
            return Err(cx.err("name", "duplicate rule name".into()));
        }
        let (rule, warning) = compile_rule(r, &cx, default_action)?;
        rules.push(rule);
        warnings.extend(warning);
    }
    Ok((
        Policy {
            name: policy_name,
            kind: KIND.to_string(),
            namespace: None,
            rules,
        },
        warnings,
    ))
}

/// `kind`, `apiVersion` and a non-empty rule list.
fn check_header(doc: &ImagePolicyDoc, src: &DocSource<'_>) -> Result<(), PolicyError> {
    let policy_name = &doc.metadata.name;
    let invalid = |field: &str, msg: String| src.invalid(Some(policy_name), None, field, msg);
    if doc.kind != KIND {
        return Err(invalid(
            "kind",
            format!("expected {KIND}, got {}", doc.kind),
        ));
    }
    if doc.api_version != API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!(
                "unsupported version {}; expected {API_VERSION}",
                doc.api_version
            ),
        ));
    }
    if doc.spec.rules.is_empty() {
        return Err(invalid("rules", "a policy needs at least one rule".into()));
    }
    Ok(())
}

/// One rule whose name has been checked; the warning says which container
/// types it leaves unchecked.
fn compile_rule(
    r: &NativeRule,
    cx: &RuleCtx<'_>,
    default_action: Action,
) -> Result<(Rule, Option<Warning>), PolicyError> {
    let drift = compile_drift(r.exec_drift.as_ref(), cx)?;
    if r.allow.is_empty() && r.deny.is_empty() && drift.is_none() {
        return Err(cx.err(
            "allow",
            "a rule needs `allow` or `deny` entries, or `execDrift` (an empty rule would \
             allow everything)"
                .into(),
        ));
    }
    let test = compile_image_test(r, cx)?;
    let (filter, types) = compile_match(r.match_.as_ref(), cx)?;
    let excludes = r
        .exemptions
        .iter()
        .map(|ex| compile_exemption(ex, cx))
        .collect::<Result<Vec<_>, _>>()?;
    let warning = uncovered_warning(&types, cx);
    let mut tests: [Option<ImageTest>; 3] = [None, None, None];
    let mut drift_types = [false; 3];
    for t in types {
        tests[t.index()] = test.clone();
        drift_types[t.index()] = true;
    }
    let rule = Rule {
        name: r.name.clone(),
        action: r.action.map(Into::into).unwrap_or(default_action),
        message: r.message.clone(),
        scope: Scope {
            matches: FilterSet {
                all: false,
                filters: vec![filter],
            },
            excludes: Some(FilterSet {
                all: false,
                filters: excludes,
            }),
        },
        tests,
        drift: drift.map(|(f, w)| DriftRule {
            deny_fileless: f,
            deny_writable_layer: w,
            types: drift_types,
        }),
    };
    Ok((rule, warning))
}

/// `execDrift`: (deny fileless, deny writable layer), `None` when absent.
fn compile_drift(
    spec: Option<&ExecDriftSpec>,
    cx: &RuleCtx<'_>,
) -> Result<Option<(bool, bool)>, PolicyError> {
    match spec {
        None => Ok(None),
        Some(ExecDriftSpec {
            fileless: None,
            writable_layer: None,
        }) => Err(cx.err(
            "execDrift",
            "empty: give `fileless` and/or `writableLayer` (deny or report)".into(),
        )),
        Some(d) => Ok(Some((
            d.fileless == Some(DriftAction::Deny),
            d.writable_layer == Some(DriftAction::Deny),
        ))),
    }
}

/// The image test of `allow` and `deny`: any allow entry and no deny entry;
/// `None` for an `execDrift`-only rule.
fn compile_image_test(r: &NativeRule, cx: &RuleCtx<'_>) -> Result<Option<ImageTest>, PolicyError> {
    let allow = r
        .allow
        .iter()
        .map(|e| {
            let digests = compile_digests(e.digests.as_ref(), cx)?;
            ref_matcher(&e.registry, &e.repositories, e.require_digest, digests, cx)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deny = r
        .deny
        .iter()
        .map(|e| ref_matcher(&e.registry, &e.repositories, false, Vec::new(), cx))
        .collect::<Result<Vec<_>, _>>()?;
    let mut parts = Vec::new();
    if !allow.is_empty() {
        parts.push(ImageTest::Any(allow));
    }
    if !deny.is_empty() {
        parts.push(ImageTest::Not(Box::new(ImageTest::Any(deny))));
    }
    Ok(match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(ImageTest::All(parts)),
    })
}

/// One `allow` or `deny` entry.
fn ref_matcher(
    registry: &str,
    repositories: &Option<Vec<String>>,
    require_digest: bool,
    digests: Vec<String>,
    cx: &RuleCtx<'_>,
) -> Result<ImageTest, PolicyError> {
    let registry = normalize_registry(registry).map_err(|m| cx.err("registry", m))?;
    let repositories = compile_repos(repositories).map_err(|m| cx.err("repositories", m))?;
    Ok(ImageTest::Native(Box::new(RefMatcher {
        registry,
        repositories,
        require_digest,
        digests,
    })))
}

/// An allow entry's `digests`: absent, or a non-empty list of valid digests.
fn compile_digests(
    digests: Option<&Vec<String>>,
    cx: &RuleCtx<'_>,
) -> Result<Vec<String>, PolicyError> {
    match digests {
        None => Ok(Vec::new()),
        Some(ds) if ds.is_empty() => Err(cx.err(
            "digests",
            "`digests` is empty: omit it or list digests".into(),
        )),
        Some(ds) => {
            for d in ds {
                check_digest(d).map_err(|m| cx.err("digests", m))?;
            }
            Ok(ds.clone())
        }
    }
}

/// `match`: the workload filter and the container types the rule covers.
fn compile_match(
    m: Option<&NativeMatch>,
    cx: &RuleCtx<'_>,
) -> Result<(Filter, Vec<ContainerType>), PolicyError> {
    let mut filter = Filter::default();
    let mut types: Vec<ContainerType> = ContainerType::ALL.to_vec();
    let Some(m) = m else {
        return Ok((filter, types));
    };
    if let Some(kinds) = &m.kinds {
        if kinds.is_empty() {
            return Err(cx.err(
                "match.kinds",
                "empty list: omit it to match every workload".into(),
            ));
        }
        if let Some(k) = kinds.iter().find(|k| !WORKLOAD_KINDS.contains(&k.as_str())) {
            return Err(cx.err(
                "match.kinds",
                format!(
                    "unknown kind {k:?}; expected one of {}",
                    WORKLOAD_KINDS.join(", ")
                ),
            ));
        }
        filter.kinds = Some(kinds.clone());
    }
    if let Some(ns) = &m.namespaces {
        if ns.is_empty() {
            return Err(cx.err(
                "match.namespaces",
                "empty list: omit it to match every namespace".into(),
            ));
        }
        filter.namespaces = Some(NamespaceFilter {
            names: ns.clone(),
            wildcard: false,
            // Fail safe: a rule for some namespaces also governs
            // images whose namespace is not known.
            when_unknown: true,
        });
    }
    if let Some(ct) = &m.container_types {
        if ct.is_empty() {
            return Err(cx.err(
                "match.containerTypes",
                "empty list: omit it to cover every container type".into(),
            ));
        }
        types = ct.iter().map(|c| (*c).into()).collect();
    }
    Ok((filter, types))
}

/// One entry of `exemptions`.
fn compile_exemption(ex: &Exemption, cx: &RuleCtx<'_>) -> Result<Filter, PolicyError> {
    if ex.namespaces.is_none() && ex.pod_labels.is_none() {
        return Err(cx.err(
            "exemptions",
            "an exemption needs `namespaces` or `podLabels` (an empty one would exempt \
             everything)"
                .into(),
        ));
    }
    let mut f = Filter::default();
    if let Some(ns) = &ex.namespaces {
        if ns.is_empty() {
            return Err(cx.err("exemptions.namespaces", "empty list".into()));
        }
        f.namespaces = Some(NamespaceFilter {
            names: ns.clone(),
            wildcard: false,
            // Fail safe: an unknown namespace is never exempt.
            when_unknown: false,
        });
    }
    if let Some(l) = &ex.pod_labels {
        if l.is_empty() {
            return Err(cx.err(
                "exemptions.podLabels",
                "empty map (would exempt every Pod)".into(),
            ));
        }
        f.labels = Some(l.clone());
    }
    Ok(f)
}

/// The warning for a rule that leaves some container types unchecked.
fn uncovered_warning(types: &[ContainerType], cx: &RuleCtx<'_>) -> Option<Warning> {
    let uncovered: Vec<&str> = ContainerType::ALL
        .iter()
        .filter(|c| !types.contains(c))
        .map(|c| c.field())
        .collect();
    if uncovered.is_empty() {
        return None;
    }
    Some(cx.src.warning(
        cx.policy,
        cx.rule,
        format!(
            "does not check {} (match.containerTypes)",
            uncovered.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str, s: &str) -> bool {
        RepoGlob::compile(p).unwrap().matches(s)
    }

    #[test]
    fn repo_globs() {
        assert!(g("**", "library/nginx"));
        assert!(g("nginx/*", "nginx/nginx"));
        assert!(!g("nginx/*", "nginx/a/b"));
        assert!(g("nginx/**", "nginx/a/b"));
        assert!(!g("nginx/**", "nginx"));
        assert!(!g("nginx/**", "nginxx/a"));
        assert!(g("library/*", "library/nginx"));
        assert!(!g("*", "library/nginx"));
        assert!(g("team-?/app", "team-a/app"));
        assert!(!g("team-?/app", "team-/app"));
        assert!(g("a/**/z", "a/b/c/z"));
        assert!(!g("a/*/z", "a/b/c/z"));
        assert!(g("*-svc", "web-svc"));
    }

    #[test]
    fn registry_validation() {
        assert_eq!(
            normalize_registry("Public.ECR.aws").unwrap(),
            "public.ecr.aws"
        );
        assert_eq!(normalize_registry("index.docker.io").unwrap(), "docker.io");
        assert!(normalize_registry("public.ecr.aws/*").is_err());
        assert!(normalize_registry("*.ecr.aws").is_err());
        assert!(normalize_registry("").is_err());
        assert!(RepoGlob::compile("Library/nginx").is_err());
        assert!(check_digest("sha256:abc").is_err());
    }
}
