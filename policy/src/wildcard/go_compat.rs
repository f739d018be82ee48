//! Go matchers that Kyverno and distribution use elsewhere, kept for
//! contrast and for their conformance vectors: go-wildcard `MatchSimple`,
//! Kyverno's list helpers over [`glob_match`] (`CheckPatterns`,
//! `ImageMatches`, `MatchPatterns`), gobwas/glob (ImageValidatingPolicy
//! `matchImageReferences.glob`), CEL `MatchImage` (a tiny expression
//! subset) and Go `path.Match` / distribution's `FamiliarMatch`.
//!
//! Evaluation uses none of them: compiled for this crate's tests and with
//! the `go-compat` feature (the conformance tests and the fuzz targets).

use super::glob_match;
use crate::reference::Reference;

/// go-wildcard v1.0.3 `deepMatchRune`, evaluated bottom-up (O(n*m) time,
/// O(m) memory). With `simple`, a `?` facing the end of the value matches
/// (that is `MatchSimple`'s quirk).
pub(super) fn deep_match(value: &str, pattern: &str, simple: bool) -> bool {
    let s: Vec<char> = value.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (n, m) = (s.len(), p.len());
    // next[j] = f(i+1, j), cur[j] = f(i, j)
    let mut next = vec![false; m + 1];
    let mut cur = vec![false; m + 1];
    for i in (0..=n).rev() {
        cur[m] = i == n;
        for j in (0..m).rev() {
            cur[j] = match p[j] {
                '*' => j + 1 == m || cur[j + 1] || (i < n && next[j]),
                '?' => {
                    if i == n {
                        simple
                    } else {
                        next[j + 1]
                    }
                }
                c => i < n && s[i] == c && next[j + 1],
            };
        }
        std::mem::swap(&mut next, &mut cur);
    }
    next[0]
}

/// go-wildcard v1.0.3 `MatchSimple` (NOT what Kyverno uses): like
/// [`glob_match`] but a `?` at the end of the value also matches nothing.
pub fn go_wildcard_match_simple(pattern: &str, value: &str) -> bool {
    if pattern.is_empty() {
        return value.is_empty();
    }
    if pattern == "*" {
        return true;
    }
    deep_match(value, pattern, true)
}

/// Kyverno `ext/wildcard.CheckPatterns`: any pattern matches.
pub fn check_patterns<S: AsRef<str>>(patterns: &[S], value: &str) -> bool {
    patterns.iter().any(|p| glob_match(p.as_ref(), value))
}

/// Kyverno `pkg/engine/utils.ImageMatches`: any pattern matches the image.
pub fn image_matches<S: AsRef<str>>(image: &str, patterns: &[S]) -> bool {
    check_patterns(patterns, image)
}

/// Kyverno `ext/wildcard.MatchPatterns`: the first input (in order) that
/// any pattern matches, with the first such pattern: `(pattern, input)`.
pub fn match_patterns<P: AsRef<str>, I: AsRef<str>>(
    patterns: &[P],
    inputs: &[I],
) -> Option<(String, String)> {
    for input in inputs {
        for pattern in patterns {
            if glob_match(pattern.as_ref(), input.as_ref()) {
                return Some((pattern.as_ref().to_string(), input.as_ref().to_string()));
            }
        }
    }
    None
}

/// Error of the secondary matchers below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A malformed pattern (`path.ErrBadPattern`, bad glob class).
    #[error("syntax error in pattern")]
    BadPattern,
    /// A construct this implementation does not support.
    #[error("unsupported pattern construct: {0}")]
    Unsupported(String),
}

/// gobwas/glob v0.2.3 compiled without separators, as Kyverno's
/// ImageValidatingPolicy `matchImageReferences.glob` uses it: `*` any run,
/// `?` one character, `[abc]`, `[a-z]`, `[!abc]` classes, `\` escapes.
/// Alternatives `{a,b}` are not supported (an error, never a silent result).
pub fn gobwas_glob_match(pattern: &str, value: &str) -> Result<bool, PatternError> {
    #[derive(Clone)]
    enum Tok {
        Lit(char),
        Any,
        One,
        Class(bool, Vec<(char, char)>),
    }
    let mut toks = Vec::new();
    let mut it = pattern.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '*' => toks.push(Tok::Any),
            '?' => toks.push(Tok::One),
            '\\' => toks.push(Tok::Lit(it.next().ok_or(PatternError::BadPattern)?)),
            '{' | '}' => return Err(PatternError::Unsupported("{alternatives}".into())),
            '[' => {
                let neg = it.peek() == Some(&'!');
                if neg {
                    it.next();
                }
                let mut ranges = Vec::new();
                loop {
                    let lo = it.next().ok_or(PatternError::BadPattern)?;
                    if lo == ']' {
                        break;
                    }
                    if it.peek() == Some(&'-') {
                        it.next();
                        let hi = it.next().ok_or(PatternError::BadPattern)?;
                        ranges.push((lo, hi));
                    } else {
                        ranges.push((lo, lo));
                    }
                }
                if ranges.is_empty() {
                    return Err(PatternError::BadPattern);
                }
                toks.push(Tok::Class(neg, ranges));
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    let s: Vec<char> = value.chars().collect();
    let one = |t: &Tok, c: char| match t {
        Tok::Lit(l) => *l == c,
        Tok::One => true,
        Tok::Class(neg, r) => r.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *neg,
        Tok::Any => false,
    };
    Ok(super::star_match(&toks, &s, |t| matches!(t, Tok::Any), one))
}

/// One entry of Kyverno's `matchImageReferences`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReferenceMatcher {
    Glob(String),
    /// A CEL expression over `ref`. Only `ref == "<literal>"` and
    /// `ref != "<literal>"` (either operand order) are understood here; any
    /// other expression is an error, never a guess.
    Expression(String),
}

/// Kyverno `pkg/cel/matching.MatchImage`: true if any matcher matches.
pub fn kyverno_match_image(
    matchers: &[ImageReferenceMatcher],
    image: &str,
) -> Result<bool, PatternError> {
    for m in matchers {
        let hit = match m {
            ImageReferenceMatcher::Glob(g) => gobwas_glob_match(g, image)?,
            ImageReferenceMatcher::Expression(e) => eval_ref_expression(e, image)?,
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

fn cel_string_literal(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next()? {
                c @ ('"' | '\\' | '\'') => out.push(c),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn eval_ref_expression(expr: &str, image: &str) -> Result<bool, PatternError> {
    let unsupported = || PatternError::Unsupported(format!("CEL expression {expr:?}"));
    let (op, (l, r)) = if let Some(p) = expr.split_once("==") {
        ("==", p)
    } else if let Some(p) = expr.split_once("!=") {
        ("!=", p)
    } else {
        return Err(unsupported());
    };
    let (l, r) = (l.trim(), r.trim());
    let lit = match (l, r) {
        ("ref", lit) | (lit, "ref") => cel_string_literal(lit).ok_or_else(unsupported)?,
        _ => return Err(unsupported()),
    };
    Ok((lit == image) == (op == "=="))
}

/// Decodes one UTF-8 character from bytes as Go does (invalid: U+FFFD, 1 byte).
fn decode_rune(b: &[u8]) -> (u32, usize) {
    let n = match b.first() {
        None => return (0xFFFD, 0),
        Some(&c) if c < 0x80 => return (c as u32, 1),
        Some(&c) if c >= 0xF0 => 4,
        Some(&c) if c >= 0xE0 => 3,
        Some(_) => 2,
    };
    match b.get(..n).and_then(|x| std::str::from_utf8(x).ok()) {
        Some(s) => (s.chars().next().map(u32::from).unwrap_or(0xFFFD), n),
        None => (0xFFFD, 1),
    }
}

/// Go `path.Match`: `*` any run of non-`/`, `?` one non-`/` character,
/// `[...]` classes (`^` negates, ranges, `\` escapes), `\` escapes.
pub fn go_path_match(pattern: &str, name: &str) -> Result<bool, PatternError> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'outer: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let first = match_chunk(chunk, name);
        if let Ok(Some(t)) = first {
            if t.is_empty() || !pattern.is_empty() {
                name = t;
                continue;
            }
        }
        let err = first.err();
        if let Some(e) = err {
            return Err(e);
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Ok(Some(t)) => {
                        if pattern.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'outer;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
                i += 1;
            }
        }
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Go `path.scanChunk`: (leading stars, the chunk up to the next star
/// outside a class, the rest).
fn scan_chunk(p: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = p;
    let mut star = false;
    while p.first() == Some(&b'*') {
        p = &p[1..];
        star = true;
    }
    let mut inrange = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => inrange = true,
            b']' => inrange = false,
            b'*' if !inrange => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// Go `path.getEsc`: one (possibly escaped) character of a class.
fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), PatternError> {
    let mut chunk = chunk;
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return Err(PatternError::BadPattern);
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(PatternError::BadPattern);
        }
    }
    let (r, n) = decode_rune(chunk);
    if r == 0xFFFD && n == 1 {
        return Err(PatternError::BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(PatternError::BadPattern);
    }
    Ok((r, rest))
}

/// Go `path.matchChunk`: what is left of `s` once `chunk` (no star) has
/// matched its start, `None` when it does not; the whole chunk is read
/// even after a mismatch, so that a malformed one is always an error.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, PatternError> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = 0u32;
                if !failed {
                    let (rr, n) = decode_rune(s);
                    r = rr;
                    s = &s[n..];
                }
                let (matched, rest) = match_class(&chunk[1..], r)?;
                chunk = rest;
                if !matched {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let mut c = c;
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(PatternError::BadPattern);
                    }
                    c = chunk[0];
                }
                if !failed {
                    if c != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// A character class after its `[`: whether rune `r` is in it (`^`
/// negates), and what follows its `]`.
fn match_class(chunk: &[u8], r: u32) -> Result<(bool, &[u8]), PatternError> {
    let mut chunk = chunk;
    let mut negated = false;
    if chunk.first() == Some(&b'^') {
        negated = true;
        chunk = &chunk[1..];
    }
    let mut matched = false;
    let mut nrange = 0;
    loop {
        if chunk.first() == Some(&b']') && nrange > 0 {
            chunk = &chunk[1..];
            break;
        }
        let (lo, rest) = get_esc(chunk)?;
        chunk = rest;
        let mut hi = lo;
        if chunk[0] == b'-' {
            let (h, rest) = get_esc(&chunk[1..])?;
            hi = h;
            chunk = rest;
        }
        if lo <= r && r <= hi {
            matched = true;
        }
        nrange += 1;
    }
    Ok((matched != negated, chunk))
}

/// distribution `reference.FamiliarMatch`: [`go_path_match`] on the
/// familiar string, then on the familiar name.
pub fn familiar_match(pattern: &str, r: &Reference) -> Result<bool, PatternError> {
    // Upstream returns the error of the first match together with the
    // result of the second; an error wins here.
    if go_path_match(pattern, &r.familiar_string())? {
        return Ok(true);
    }
    Ok(go_path_match(pattern, &r.familiar_name()).unwrap_or(false))
}
