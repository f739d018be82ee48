//! Image references, exactly as github.com/distribution/reference parses them.
//!
//! The grammar of distribution/reference (regexp.go) is implemented by hand,
//! without a regex engine, as linear scans over the bytes of the input:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain-and-port "/"] remote-name
//! domain-and-port  := host [":" port-number]
//! host             := domain-name | IPv4address | "[" IPv6address "]"
//! domain-name      := domain-component ["." domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! path (or "remote-name") := path-component ["/" path-component]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := digest-algorithm ":" digest-hex
//! digest-algorithm := digest-algorithm-component [ digest-algorithm-separator digest-algorithm-component ]*
//! digest-algorithm-separator := /[+.-_]/
//! digest-algorithm-component := /[A-Za-z][A-Za-z0-9]*/
//! digest-hex       := /[0-9a-fA-F]{32,}/
//! identifier       := /[a-f0-9]{64}/
//! ```
//!
//! Digests found by the grammar are then validated as go-digest does
//! (`digest.Parse`): for the registered algorithms `sha256`, `sha384` and
//! `sha512` the encoded part must be lower-case hex of exactly 64/96/128
//! characters; any other algorithm is "unsupported".
//!
//! Besides the distribution functions this module has the small pieces of
//! containerd that interpret references: [`containerd_parse`] (containerd's
//! loose `pkg/reference.Parse`), [`cri_parse_image_references`] and
//! [`cri_repo_digest_and_tag`].
//!
//! Nothing here panics, whatever the input, and every function runs in time
//! linear in the length of its input.

use std::fmt;

/// Docker Hub's canonical domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy domain, rewritten to [`DEFAULT_DOMAIN`] by normalisation.
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of Docker Hub's official images.
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The reserved `localhost` domain.
pub const LOCALHOST: &str = "localhost";
/// Maximum length of the path of a name (upstream `NameTotalLengthMax`).
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Maximum length of a tag (128, from the grammar `[\w][\w.-]{0,127}`).
pub const TAG_MAX_LEN: usize = 128;

/// A parsed reference. `domain` and `path` are as distribution stores them:
/// after `parse_normalized_named`, `domain` is `docker.io` for Docker Hub and
/// `path` has `library/` for official images. After the non-normalising
/// [`parse`], `domain` may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Errors, mirroring the error values of distribution/reference and
/// go-digest (same messages). [`ReferenceError::kind`] gives a stable label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// `ErrReferenceInvalidFormat`
    #[error("invalid reference format")]
    InvalidFormat,
    /// `ErrTagInvalidFormat`
    #[error("invalid tag format")]
    TagInvalidFormat,
    /// `ErrDigestInvalidFormat` (distribution's, from `WithDigest`)
    #[error("invalid digest format")]
    DigestInvalidFormat,
    /// `ErrNameContainsUppercase` (from `Parse`)
    #[error("repository name must be lowercase")]
    NameContainsUppercase,
    /// `ErrNameEmpty`
    #[error("repository name must have at least one component")]
    NameEmpty,
    /// `ErrNameTooLong`
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    /// `ErrNameNotCanonical`
    #[error("repository name must be canonical")]
    NameNotCanonical,
    /// The `fmt.Errorf` of `ParseNormalizedNamed` when the remote name has
    /// upper-case letters; carries the remote name.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    RepositoryNameNotLowercase(String),
    /// The `fmt.Errorf` of `ParseNormalizedNamed` for a bare 64-hex identifier.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    NameIsIdentifier(String),
    /// go-digest `ErrDigestInvalidFormat`
    #[error("invalid checksum digest format")]
    DigestChecksumInvalidFormat,
    /// go-digest `ErrDigestInvalidLength`
    #[error("invalid checksum digest length")]
    DigestInvalidLength,
    /// go-digest `ErrDigestUnsupported`
    #[error("unsupported digest algorithm")]
    DigestUnsupported,
}

impl ReferenceError {
    /// Stable snake_case label (metric label, JSON `reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            ReferenceError::InvalidFormat => "invalid_format",
            ReferenceError::TagInvalidFormat => "tag_invalid_format",
            ReferenceError::DigestInvalidFormat => "digest_invalid_format",
            ReferenceError::NameContainsUppercase => "name_contains_uppercase",
            ReferenceError::NameEmpty => "name_empty",
            ReferenceError::NameTooLong => "name_too_long",
            ReferenceError::NameNotCanonical => "name_not_canonical",
            ReferenceError::RepositoryNameNotLowercase(_) => "repository_name_not_lowercase",
            ReferenceError::NameIsIdentifier(_) => "name_is_identifier",
            ReferenceError::DigestChecksumInvalidFormat => "digest_checksum_invalid_format",
            ReferenceError::DigestInvalidLength => "digest_invalid_length",
            ReferenceError::DigestUnsupported => "digest_unsupported",
        }
    }

    /// Name of the upstream error value this corresponds to, as Go spells it
    /// (`ErrReferenceInvalidFormat`, `digest.ErrDigestUnsupported`, ...).
    /// The two `fmt.Errorf` errors of `ParseNormalizedNamed` give their message.
    pub fn upstream_name(&self) -> String {
        match self {
            ReferenceError::InvalidFormat => "ErrReferenceInvalidFormat".into(),
            ReferenceError::TagInvalidFormat => "ErrTagInvalidFormat".into(),
            ReferenceError::DigestInvalidFormat => "ErrDigestInvalidFormat".into(),
            ReferenceError::NameContainsUppercase => "ErrNameContainsUppercase".into(),
            ReferenceError::NameEmpty => "ErrNameEmpty".into(),
            ReferenceError::NameTooLong => "ErrNameTooLong".into(),
            ReferenceError::NameNotCanonical => "ErrNameNotCanonical".into(),
            ReferenceError::RepositoryNameNotLowercase(_) | ReferenceError::NameIsIdentifier(_) => {
                self.to_string()
            }
            ReferenceError::DigestChecksumInvalidFormat => "digest.ErrDigestInvalidFormat".into(),
            ReferenceError::DigestInvalidLength => "digest.ErrDigestInvalidLength".into(),
            ReferenceError::DigestUnsupported => "digest.ErrDigestUnsupported".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Grammar pieces (the regexps of regexp.go), hand written.
// ---------------------------------------------------------------------------

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `pathComponent = [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, anchored.
fn is_path_component(s: &[u8]) -> bool {
    let mut i = 0;
    let n = s.len();
    loop {
        // alphanumeric run (at least one)
        let start = i;
        while i < n && is_lower_alnum(s[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == n {
            return true;
        }
        // separator
        match s[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < n && s[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < n && s[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `remoteName = pathComponent(?:/pathComponent)*`, anchored.
fn is_remote_name(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(|c| is_path_component(c.as_bytes()))
}

/// `domainNameComponent`, anchored.
fn is_domain_name_component(s: &[u8]) -> bool {
    match (s.first(), s.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && s.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

fn is_port(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// `^domainAndPort$`: `(?:domainName|\[[a-fA-F0-9:]+\])(?::[0-9]+)?`.
pub fn matches_anchored_domain_and_port(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() == Some(&b'[') {
        let Some(close) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &b[1..close];
        if inner.is_empty() || !inner.iter().all(|c| c.is_ascii_hexdigit() || *c == b':') {
            return false;
        }
        let rest = &b[close + 1..];
        return rest.is_empty() || (rest[0] == b':' && is_port(&rest[1..]));
    }
    let (host, port) = match b.iter().position(|&c| c == b':') {
        Some(p) => (&b[..p], Some(&b[p + 1..])),
        None => (b, None),
    };
    if let Some(port) = port {
        if !is_port(port) {
            return false;
        }
    }
    !host.is_empty() && host.split(|&c| c == b'.').all(is_domain_name_component)
}

/// `anchoredNameRegexp`: `^(?:(domainAndPort)/)?(remoteName)$`, returning
/// the two captures (domain is empty when the optional group did not take part).
pub fn match_anchored_name(s: &str) -> Option<(&str, &str)> {
    // Leftmost-first semantics prefer the optional domain group. A domain
    // cannot contain '/', so it can only be the text before the first '/'.
    if let Some(slash) = s.find('/') {
        let (domain, rest) = (&s[..slash], &s[slash + 1..]);
        if matches_anchored_domain_and_port(domain) && is_remote_name(rest) {
            return Some((domain, rest));
        }
    }
    if is_remote_name(s) {
        return Some(("", s));
    }
    None
}

/// `anchoredTagRegexp`: `^[\w][\w.-]{0,127}$`.
pub fn matches_anchored_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX_LEN
        && is_word(b[0])
        && b[1..].iter().all(|&c| is_word(c) || c == b'.' || c == b'-')
}

/// `anchoredDigestRegexp` of distribution:
/// `^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}$`.
pub fn matches_anchored_digest(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(colon) = b.iter().position(|&c| c == b':') else {
        return false;
    };
    let (alg, hex) = (&b[..colon], &b[colon + 1..]);
    hex.len() >= 32 && hex.iter().all(u8::is_ascii_hexdigit) && is_reference_algorithm(alg)
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`, anchored.
fn is_reference_algorithm(alg: &[u8]) -> bool {
    let mut i = 0;
    let n = alg.len();
    loop {
        if i >= n || !alg[i].is_ascii_alphabetic() {
            return false;
        }
        i += 1;
        while i < n && alg[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i == n {
            return true;
        }
        if !matches!(alg[i], b'-' | b'_' | b'+' | b'.') {
            return false;
        }
        i += 1;
    }
}

/// `anchoredIdentifierRegexp`: `^[a-f0-9]{64}$`.
pub fn matches_anchored_identifier(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The three captures of `ReferenceRegexp` (tag and digest empty when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceMatch<'a> {
    pub name: &'a str,
    pub tag: &'a str,
    pub digest: &'a str,
}

/// `ReferenceRegexp`: `^(namePat)(?::(tag))?(?:@(digestPat))?$`.
pub fn match_reference(s: &str) -> Option<ReferenceMatch<'_>> {
    // '@' occurs neither in a name, nor a tag, nor a digest: the first '@'
    // starts the digest.
    let (left, digest) = match s.find('@') {
        Some(at) => {
            let d = &s[at + 1..];
            if !matches_anchored_digest(d) {
                return None;
            }
            (&s[..at], d)
        }
        None => (s, ""),
    };
    // A ':' after the last '/' cannot belong to the name (ports only occur
    // in the domain, which is followed by '/'), and a tag has no ':'; so if
    // there is one, the last ':' separates the tag.
    let last_colon = left.rfind(':');
    let last_slash = left.rfind('/');
    let (name, tag) = match (last_colon, last_slash) {
        (Some(c), Some(sl)) if c > sl => (&left[..c], &left[c + 1..]),
        (Some(c), None) => (&left[..c], &left[c + 1..]),
        _ => (left, ""),
    };
    if name.len() != left.len() && !matches_anchored_tag(tag) {
        return None;
    }
    match_anchored_name(name)?;
    Some(ReferenceMatch { name, tag, digest })
}

/// Lower-cases as Go's `strings.ToLower` would, as far as it matters for the
/// (ASCII-only) grammar: the only non-ASCII letters whose lower case is ASCII
/// are U+0130 (İ -> i) and U+212A (Kelvin sign -> k).
fn go_lower_for_grammar(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{130}' => 'i',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// `strings.ToLower(s) != s`.
fn has_upper(s: &str) -> bool {
    s.chars().any(|c| {
        let mut l = c.to_lowercase();
        !(l.next() == Some(c) && l.next().is_none())
    })
}

// ---------------------------------------------------------------------------
// go-digest
// ---------------------------------------------------------------------------

/// The hex length of a registered ("available") go-digest algorithm.
///
/// Deliberate difference from the conformance data: the upstream test binary
/// only links `crypto/sha256`, so there `sha512` is "unsupported"; in the
/// programs that matter here (containerd, kubelet, Kyverno) sha384 and sha512
/// are linked and available, so they are here too.
fn available_algorithm_hex_len(alg: &str) -> Option<usize> {
    match alg {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    }
}

/// go-digest `DigestRegexpAnchored`: `^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`.
fn matches_go_digest_regexp(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(colon) = b.iter().position(|&c| c == b':') else {
        return false;
    };
    let (alg, enc) = (&b[..colon], &b[colon + 1..]);
    if enc.is_empty()
        || !enc
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'=' || c == b'_' || c == b'-')
    {
        return false;
    }
    // alg: components of [a-z0-9]+ separated by single [.+_-]
    !alg.is_empty()
        && alg
            .split(|&c| matches!(c, b'.' | b'+' | b'_' | b'-'))
            .all(|comp| !comp.is_empty() && comp.iter().all(|&c| is_lower_alnum(c)))
}

/// go-digest `Digest.Validate` (what `digest.Parse` checks).
pub fn validate_digest(s: &str) -> Result<(), ReferenceError> {
    let i = match s.find(':') {
        Some(i) if i > 0 && i + 1 != s.len() => i,
        _ => return Err(ReferenceError::DigestChecksumInvalidFormat),
    };
    let (alg, enc) = (&s[..i], &s[i + 1..]);
    let Some(hex_len) = available_algorithm_hex_len(alg) else {
        return if matches_go_digest_regexp(s) {
            Err(ReferenceError::DigestUnsupported)
        } else {
            Err(ReferenceError::DigestChecksumInvalidFormat)
        };
    };
    if enc.len() != hex_len {
        return Err(ReferenceError::DigestInvalidLength);
    }
    if enc
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ReferenceError::DigestChecksumInvalidFormat)
    }
}

// ---------------------------------------------------------------------------
// Reference
// ---------------------------------------------------------------------------

impl Reference {
    /// `Named.Name()`: `domain/path`, or just `path` when the domain is empty.
    pub fn name(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// `reference.Domain(named)`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `reference.Path(named)`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `reference.IsNameOnly`: neither tagged nor digested.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// `FamiliarName`: Docker Hub names without `docker.io/` and, for
    /// one-level official images, without `library/`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            if let Some(rest) = self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                if !rest.contains('/') {
                    return rest.to_string();
                }
            }
            return self.path.clone();
        }
        self.name()
    }

    /// `FamiliarString`: familiar name plus `:tag` and `@digest`.
    pub fn familiar_string(&self) -> String {
        let mut s = self.familiar_name();
        self.push_tag_digest(&mut s);
        s
    }

    fn push_tag_digest(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
    }
}

/// `String()`: name, then `:tag` and `@digest` when present (both kept).
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_tag_digest(&mut s);
        f.write_str(&s)
    }
}

/// Result of [`parse_any_reference`]: a named reference or a bare digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyReference {
    Named(Reference),
    /// `digestReference`: a bare digest such as `sha256:...`.
    Digest(String),
}

impl fmt::Display for AnyReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyReference::Named(r) => r.fmt(f),
            AnyReference::Digest(d) => f.write_str(d),
        }
    }
}

/// `reference.Parse`: parses without normalising (no default domain, no
/// `library/`). The name must match the grammar as written (lower-case path).
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    let Some(m) = match_reference(s) else {
        if s.is_empty() {
            return Err(ReferenceError::NameEmpty);
        }
        if match_reference(&go_lower_for_grammar(s)).is_some() {
            return Err(ReferenceError::NameContainsUppercase);
        }
        return Err(ReferenceError::InvalidFormat);
    };
    let (domain, path) = match_anchored_name(m.name).unwrap_or(("", m.name));
    if path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    let digest = if m.digest.is_empty() {
        None
    } else {
        validate_digest(m.digest)?;
        Some(m.digest.to_string())
    };
    Ok(Reference {
        domain: domain.to_string(),
        path: path.to_string(),
        tag: (!m.tag.is_empty()).then(|| m.tag.to_string()),
        digest,
    })
}

/// `splitDockerDomain`: the first component is a domain only if it contains
/// `.` or `:`, is `localhost`, or has upper-case letters; `index.docker.io`
/// becomes `docker.io`; one-component Docker Hub names get `library/`.
pub fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            if !first.contains(['.', ':']) && first != LOCALHOST && !has_upper(first) {
                (DEFAULT_DOMAIN.to_string(), name.to_string())
            } else {
                (first.to_string(), name[i + 1..].to_string())
            }
        }
        None => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

/// `reference.ParseNormalizedNamed`: parses a user-facing name (`ubuntu`,
/// `nginx:1.25`, `ghcr.io/x/y@sha256:...`) into its canonical form.
pub fn parse_normalized_named(s: &str) -> Result<Reference, ReferenceError> {
    if matches_anchored_identifier(s) {
        return Err(ReferenceError::NameIsIdentifier(s.to_string()));
    }
    let (domain, remainder) = split_docker_domain(s);
    let remote = match remainder.find(':') {
        Some(i) => &remainder[..i],
        None => &remainder[..],
    };
    if has_upper(remote) {
        return Err(ReferenceError::RepositoryNameNotLowercase(
            remote.to_string(),
        ));
    }
    parse(&format!("{domain}/{remainder}"))
}

/// `reference.ParseNamed`: like [`parse_normalized_named`] but the input
/// must already be in canonical form.
pub fn parse_named(s: &str) -> Result<Reference, ReferenceError> {
    let named = parse_normalized_named(s)?;
    if named.to_string() != s {
        return Err(ReferenceError::NameNotCanonical);
    }
    Ok(named)
}

/// `reference.ParseDockerRef`: normalised; a reference with both tag and
/// digest keeps only the digest; a bare name gets `:latest`.
pub fn parse_docker_ref(s: &str) -> Result<Reference, ReferenceError> {
    let named = parse_normalized_named(s)?;
    if named.tag.is_some() {
        if let Some(d) = &named.digest {
            let n = with_name(&named.name())?;
            return with_digest(&n, d);
        }
    }
    Ok(tag_name_only(named))
}

/// `reference.TagNameOnly`: adds `latest` to a name-only reference.
pub fn tag_name_only(r: Reference) -> Reference {
    if r.is_name_only() {
        Reference {
            tag: Some("latest".to_string()),
            ..r
        }
    } else {
        r
    }
}

/// `reference.ParseAnyReference`: a 64-hex string is an image id
/// (`sha256:` + it), a valid digest is a digest, anything else is parsed
/// with [`parse_normalized_named`].
pub fn parse_any_reference(s: &str) -> Result<AnyReference, ReferenceError> {
    if matches_anchored_identifier(s) {
        return Ok(AnyReference::Digest(format!("sha256:{s}")));
    }
    if validate_digest(s).is_ok() {
        return Ok(AnyReference::Digest(s.to_string()));
    }
    parse_normalized_named(s).map(AnyReference::Named)
}

/// `reference.WithName`: a name without tag or digest, not normalised.
pub fn with_name(name: &str) -> Result<Reference, ReferenceError> {
    let (domain, path) = match_anchored_name(name).ok_or(ReferenceError::InvalidFormat)?;
    if path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    Ok(Reference {
        domain: domain.to_string(),
        path: path.to_string(),
        tag: None,
        digest: None,
    })
}

/// `reference.WithTag`: sets the tag, keeping a digest.
pub fn with_tag(r: &Reference, tag: &str) -> Result<Reference, ReferenceError> {
    if !matches_anchored_tag(tag) {
        return Err(ReferenceError::TagInvalidFormat);
    }
    Ok(Reference {
        tag: Some(tag.to_string()),
        ..r.clone()
    })
}

/// `reference.WithDigest`: sets the digest, keeping a tag. Like upstream it
/// checks only the grammar (≥ 32 hex digits), not the algorithm's length.
pub fn with_digest(r: &Reference, digest: &str) -> Result<Reference, ReferenceError> {
    if !matches_anchored_digest(digest) {
        return Err(ReferenceError::DigestInvalidFormat);
    }
    Ok(Reference {
        digest: Some(digest.to_string()),
        ..r.clone()
    })
}

/// `reference.TrimNamed`: the name only.
pub fn trim_named(r: &Reference) -> Reference {
    Reference {
        domain: r.domain.clone(),
        path: r.path.clone(),
        tag: None,
        digest: None,
    }
}

/// `reference.FamiliarName`.
pub fn familiar_name(r: &Reference) -> String {
    r.familiar_name()
}

/// `reference.FamiliarString`.
pub fn familiar_string(r: &Reference) -> String {
    r.familiar_string()
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// containerd `pkg/reference.Spec`: a loose "locator" + "object" split, NOT
/// the distribution grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerdSpec {
    /// Host and path, cleaned as Go's `path.Join(host, path)`.
    pub locator: String,
    /// Everything from the first `:` or `@` of the path (a leading `:` dropped).
    pub object: String,
}

/// Errors of [`containerd_parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerdRefError {
    /// containerd `ErrInvalid`
    #[error("invalid reference")]
    Invalid,
    /// containerd `ErrHostnameRequired`
    #[error("hostname required")]
    HostnameRequired,
    /// An error of Go's `url.Parse` on `dummy://` + input.
    #[error("parse \"dummy://{0}\": invalid URL")]
    Url(String),
}

impl ContainerdRefError {
    /// Stable snake_case label.
    pub fn kind(&self) -> &'static str {
        match self {
            ContainerdRefError::Invalid => "containerd_invalid",
            ContainerdRefError::HostnameRequired => "containerd_hostname_required",
            ContainerdRefError::Url(_) => "containerd_url_invalid",
        }
    }
}

impl ContainerdSpec {
    /// `Spec.Hostname()`: the locator up to its first `/`.
    pub fn hostname(&self) -> &str {
        match self.locator.find('/') {
            Some(i) => &self.locator[..i],
            None => &self.locator,
        }
    }

    /// `Spec.Digest()`: the object after its first `@` (empty if none).
    pub fn digest(&self) -> &str {
        match self.object.find('@') {
            Some(i) => &self.object[i + 1..],
            None => "",
        }
    }
}

impl fmt::Display for ContainerdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            f.write_str(&self.locator)
        } else if self.object.starts_with('@') {
            write!(f, "{}{}", self.locator, self.object)
        } else {
            write!(f, "{}:{}", self.locator, self.object)
        }
    }
}

/// Go's `unhex`.
fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding as Go's `url.unescape` (bad escapes are errors).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = unhex(*b.get(i + 1)?)?;
            let lo = unhex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Characters Go's URL parser accepts in a host (`shouldEscape` for
/// `encodeHost` is false), besides `%` escapes.
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
        || b >= 0x80
}

/// Go's `path.Clean` (lexical).
fn go_path_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// containerd `pkg/reference.Parse`: `url.Parse("dummy://" + s)`, then the
/// path is split at its first `:` or `@` into locator and object.
///
/// Go's `url.Parse` is reproduced for what can occur here: control
/// characters are rejected, `#fragment` and `?query` are dropped, the
/// authority runs to the first `/`, userinfo (up to the last `@` of the
/// authority) is dropped, a port must be numeric, host characters are
/// checked and `%` escapes decoded. Approximation: IPv6 zone handling and
/// userinfo character checks are not reproduced.
pub fn containerd_parse(s: &str) -> Result<ContainerdSpec, ContainerdRefError> {
    if s.contains("://") {
        return Err(ContainerdRefError::Invalid);
    }
    let url_err = || ContainerdRefError::Url(s.to_string());
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(url_err());
    }
    // fragment
    let (rest, frag) = match s.find('#') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if let Some(f) = frag {
        percent_decode(f).ok_or_else(url_err)?;
    }
    // query
    let rest = match rest.find('?') {
        Some(i) => &rest[..i],
        None => rest,
    };
    // authority
    let (authority, raw_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host_port = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    let host = if host_port.starts_with('[') {
        let close = host_port.rfind(']').ok_or_else(url_err)?;
        let after = &host_port[close + 1..];
        if !(after.is_empty()
            || (after.starts_with(':') && after[1..].bytes().all(|b| b.is_ascii_digit())))
        {
            return Err(url_err());
        }
        host_port
    } else {
        if let Some(i) = host_port.rfind(':') {
            if !host_port[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
                return Err(url_err());
            }
        }
        host_port
    };
    if !host.bytes().all(|b| is_host_char(b) || b == b'%') {
        return Err(url_err());
    }
    let host = percent_decode(host).ok_or_else(url_err)?;
    let mut path = percent_decode(raw_path).ok_or_else(url_err)?;
    if host.is_empty() {
        return Err(ContainerdRefError::HostnameRequired);
    }
    let mut object = String::new();
    if let Some(i) = path.find([':', '@']) {
        object = path[i..].to_string();
        if object.starts_with(':') {
            object.remove(0);
        }
        path.truncate(i);
    }
    // path.Join(host, path): join non-empty elements with '/', then Clean.
    let joined = if path.is_empty() {
        host
    } else {
        format!("{host}/{path}")
    };
    Ok(ContainerdSpec {
        locator: go_path_clean(&joined),
        object,
    })
}

/// containerd CRI `util.ParseImageReferences`: of the references an image
/// is known by, keeps those that [`parse_any_reference`] accepts and returns
/// `(repo_tags, repo_digests)` in input order: references with a digest go to
/// the digests (even with a tag), tagged ones to the tags, bare names and bare
/// digests are dropped.
pub fn cri_parse_image_references<S: AsRef<str>>(refs: &[S]) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    let mut digests = Vec::new();
    for r in refs {
        if let Ok(AnyReference::Named(named)) = parse_any_reference(r.as_ref()) {
            if named.digest.is_some() {
                digests.push(named.to_string());
            } else if named.tag.is_some() {
                tags.push(named.to_string());
            }
        }
    }
    (tags, digests)
}

/// containerd CRI `GetRepoDigestAndTag`: `(repo_digest, repo_tag)` for a
/// named reference and the image's digest.
pub fn cri_repo_digest_and_tag(named: &Reference, digest: &str) -> (String, String) {
    let repo_tag = if named.tag.is_some() {
        named.to_string()
    } else {
        String::new()
    };
    let repo_digest = if named.digest.is_some() {
        named.to_string()
    } else {
        format!("{}@{}", named.name(), digest)
    };
    (repo_digest, repo_tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn pnn(s: &str) -> Reference {
        parse_normalized_named(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalisation_basics() {
        assert_eq!(pnn("nginx").to_string(), "docker.io/library/nginx");
        assert_eq!(pnn("nginx").familiar_string(), "nginx");
        assert_eq!(
            pnn("index.docker.io/nginx").to_string(),
            "docker.io/library/nginx"
        );
        assert_eq!(pnn("user/app:1").to_string(), "docker.io/user/app:1");
        assert_eq!(pnn("localhost/app").domain, "localhost");
        assert_eq!(pnn("localhost:5000/app").domain, "localhost:5000");
        assert_eq!(pnn("Registry/app").domain, "Registry");
        let both = pnn(&format!("busybox:1@sha256:{H64}"));
        assert_eq!(
            both.to_string(),
            format!("docker.io/library/busybox:1@sha256:{H64}")
        );
        assert_eq!(
            parse_docker_ref(&format!("busybox:1@sha256:{H64}"))
                .unwrap()
                .to_string(),
            format!("docker.io/library/busybox@sha256:{H64}")
        );
    }

    #[test]
    fn look_alike_registries() {
        let r = pnn("public.ecr.aws.evil.com/x");
        assert_eq!(r.domain, "public.ecr.aws.evil.com");
        assert_eq!(r.path, "x");
        let r = pnn("evil.com/public.ecr.aws/x");
        assert_eq!(r.domain, "evil.com");
        assert_eq!(r.path, "public.ecr.aws/x");
        // A Docker Hub user namespace that looks like a registry without a dot.
        let r = pnn("publicecraws/x");
        assert_eq!(r.domain, "docker.io");
        // Upper case: domain allowed, path not.
        assert_eq!(pnn("EVIL.COM/x").domain, "EVIL.COM");
        assert_eq!(
            parse_normalized_named("evil.com/X").unwrap_err(),
            ReferenceError::RepositoryNameNotLowercase("X".into())
        );
        assert_eq!(
            parse("evil.com/X").unwrap_err(),
            ReferenceError::NameContainsUppercase
        );
        // dot-dot and empty components are not paths.
        for bad in [
            "public.ecr.aws/../x",
            "public.ecr.aws/./x",
            "public.ecr.aws//x",
            "public.ecr.aws/x/",
            "public.ecr.aws/.x",
            "/x",
            "public.ecr.aws/x/..",
        ] {
            assert_eq!(
                parse_normalized_named(bad),
                Err(ReferenceError::InvalidFormat),
                "{bad}"
            );
        }
        // '@' in the domain (userinfo style) is not a reference.
        assert!(parse_normalized_named("public.ecr.aws@evil.com/x").is_err());
        // ports
        assert_eq!(pnn("r.io:443/x").domain, "r.io:443");
        assert!(parse_normalized_named("r.io:https/x").is_err());
        assert!(parse_normalized_named("r.io:/x").is_err());
        // IPv6
        assert_eq!(pnn("[::1]:5000/x").domain, "[::1]:5000");
        assert_eq!(pnn("[::1]/x:t").tag.as_deref(), Some("t"));
        assert!(parse_normalized_named("[::1]").is_err());
        assert!(parse_normalized_named("[fe80::1%25eth0]/x").is_err());
        assert!(parse_normalized_named("::1/x").is_err());
    }

    #[test]
    fn digests() {
        assert!(validate_digest(&format!("sha256:{H64}")).is_ok());
        assert_eq!(
            validate_digest(&format!("sha256:{}", &H64[1..])),
            Err(ReferenceError::DigestInvalidLength)
        );
        assert_eq!(
            validate_digest(&format!("sha256:{}", H64.to_uppercase())),
            Err(ReferenceError::DigestChecksumInvalidFormat)
        );
        assert!(validate_digest(&format!("sha384:{}", "a".repeat(96))).is_ok());
        assert!(validate_digest(&format!("sha512:{}", "a".repeat(128))).is_ok());
        assert_eq!(
            validate_digest("md5:abc"),
            Err(ReferenceError::DigestUnsupported)
        );
        assert_eq!(
            validate_digest("MD5:abc"),
            Err(ReferenceError::DigestChecksumInvalidFormat)
        );
        assert_eq!(
            validate_digest(":abc"),
            Err(ReferenceError::DigestChecksumInvalidFormat)
        );
        assert_eq!(
            validate_digest("sha256:"),
            Err(ReferenceError::DigestChecksumInvalidFormat)
        );
        // The reference grammar wants >= 32 hex digits before go-digest is asked.
        assert_eq!(parse("x@sha256:abc"), Err(ReferenceError::InvalidFormat));
    }

    #[test]
    fn tags() {
        assert!(matches_anchored_tag(&"a".repeat(128)));
        assert!(!matches_anchored_tag(&"a".repeat(129)));
        assert!(!matches_anchored_tag(".a"));
        assert!(!matches_anchored_tag("-a"));
        assert!(matches_anchored_tag("_a.B-c"));
        assert!(parse(&format!("x:{}", "a".repeat(129))).is_err());
    }

    #[test]
    fn kinds_are_snake_case_and_distinct() {
        let all = [
            ReferenceError::InvalidFormat,
            ReferenceError::TagInvalidFormat,
            ReferenceError::DigestInvalidFormat,
            ReferenceError::NameContainsUppercase,
            ReferenceError::NameEmpty,
            ReferenceError::NameTooLong,
            ReferenceError::NameNotCanonical,
            ReferenceError::RepositoryNameNotLowercase(String::new()),
            ReferenceError::NameIsIdentifier(String::new()),
            ReferenceError::DigestChecksumInvalidFormat,
            ReferenceError::DigestInvalidLength,
            ReferenceError::DigestUnsupported,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in &all {
            let k = e.kind();
            assert!(
                k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{k}"
            );
            assert!(seen.insert(k), "duplicate kind {k}");
        }
    }

    #[test]
    fn go_lowercase_special_letters() {
        // Go lower-cases U+0130 and the Kelvin sign to ASCII, so upstream
        // reports "must be lowercase" for these.
        assert_eq!(
            parse("\u{130}mage"),
            Err(ReferenceError::NameContainsUppercase)
        );
        assert_eq!(
            parse("\u{212A}ube"),
            Err(ReferenceError::NameContainsUppercase)
        );
        assert_eq!(parse("\u{e9}t\u{e9}"), Err(ReferenceError::InvalidFormat));
    }

    #[test]
    fn huge_and_weird_inputs_do_not_panic() {
        let big = 64 * 1024;
        let mut inputs: Vec<String> = vec![
            "a".repeat(big),
            "a/".repeat(big / 2),
            "a-".repeat(big / 2) + "a",
            "a_".repeat(big / 2),
            ":".repeat(big),
            "@".repeat(big),
            "/".repeat(big),
            "[".repeat(big),
            "]".repeat(big),
            format!("[{}]/x", ":".repeat(big)),
            format!("x@sha256:{}", "f".repeat(big)),
            format!("x:{}", "t".repeat(big)),
            format!("{}.com/x", "a.".repeat(big / 2)),
            "é".repeat(big / 2),
            "\u{0}\u{1}\u{7f}\u{feff}\u{10ffff}".repeat(1000),
            "%".repeat(big),
            "%zz/%".to_string(),
            "a@b@c:d:e/f".to_string(),
            "\u{130}".repeat(big / 2),
        ];
        for c in [
            "", ":", "@", "/", "[", "]", ".", "-", "_", "%", "?", "#", "é", "\u{130}",
        ] {
            for d in ["", ":", "@", "/", "[", "]", ".", "-", "_", "%", "?", "#"] {
                inputs.push(format!("{c}{d}"));
                inputs.push(format!("a{c}b{d}c"));
                inputs.push(format!("{c}a/b{d}"));
            }
        }
        for s in &inputs {
            let _ = parse(s);
            let _ = parse_normalized_named(s);
            let _ = parse_named(s);
            let _ = parse_docker_ref(s);
            let _ = parse_any_reference(s);
            let _ = with_name(s);
            let _ = validate_digest(s);
            let _ = containerd_parse(s);
            let _ = match_reference(s);
            let _ = matches_anchored_domain_and_port(s);
            let _ = cri_parse_image_references(&[s.as_str()]);
        }
        // The long path is over the 255 limit, not a panic.
        assert_eq!(parse(&"a".repeat(big)), Err(ReferenceError::NameTooLong));
    }

    #[test]
    fn linear_time_on_adversarial_input() {
        // Inputs that make backtracking regex engines explode.
        let s = "a-".repeat(200_000) + "!";
        let t = std::time::Instant::now();
        assert!(parse(&s).is_err());
        let s = "a.".repeat(200_000) + "-/x";
        assert!(parse(&s).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn containerd_loose_parser() {
        let s = containerd_parse("docker.io/library/redis:foo@sha256:abcdef?fooo=asdf").unwrap();
        assert_eq!(s.locator, "docker.io/library/redis");
        assert_eq!(s.object, "foo@sha256:abcdef");
        assert_eq!(s.digest(), "sha256:abcdef");
        // Userinfo is dropped by the URL parser: the host is what follows '@'.
        let s = containerd_parse("public.ecr.aws@evil.com/x:1").unwrap();
        assert_eq!(s.hostname(), "evil.com");
        // path.Join cleans '..'.
        let s = containerd_parse("good.io/../evil/x").unwrap();
        assert_eq!(s.locator, "evil/x");
        assert_eq!(
            containerd_parse("http://x/y"),
            Err(ContainerdRefError::Invalid)
        );
        assert_eq!(
            containerd_parse("/x/y"),
            Err(ContainerdRefError::HostnameRequired)
        );
        assert!(matches!(
            containerd_parse("redis:foo"),
            Err(ContainerdRefError::Url(_))
        ));
    }
}
