//! Kyverno's pattern semantics for strings.
//!
//! * [`glob_match`]: Kyverno's `ext/wildcard.Match` (= go-wildcard v1.0.3
//!   `Match`): anchored, case-sensitive, on Unicode characters; `*` is any
//!   run of characters (including `/`, `:`, `@`, and empty), `?` exactly one
//!   character; no classes, no escapes.
//! * [`kyverno_match`]: a `validate.pattern` string leaf
//!   (`pkg/engine/pattern.validateStringPatterns`): `|` = OR, `&` = AND,
//!   operators `!`, `>`, `<`, `>=`, `<=`, ranges `a-b` / `a!-b`; operands are
//!   compared as Go durations, then as Kubernetes quantities, then (for `=`
//!   and `!`) with [`glob_match`].
//! * [`match_patterns`], [`check_patterns`], [`image_matches`]: the list
//!   helpers of Kyverno built on [`glob_match`].
//!
//! Clearly separate, for contrast and for other front ends:
//! [`go_wildcard_match_simple`] (go-wildcard `MatchSimple`, not used by
//! Kyverno), [`gobwas_glob_match`] (ImageValidatingPolicy
//! `matchImageReferences.glob`), [`kyverno_match_image`] (CEL `MatchImage`,
//! with only a tiny expression subset) and [`go_path_match`] /
//! [`familiar_match`] (distribution's `FamiliarMatch`).
//!
//! All matchers run in O(len(pattern) * len(value)) at worst, without
//! recursion on the input.

use crate::reference::Reference;

// ---------------------------------------------------------------------------
// Kyverno ext/wildcard.Match
// ---------------------------------------------------------------------------

/// Kyverno `ext/wildcard.Match`: `*` any run (including empty and `/`),
/// `?` exactly one character, everything else literal; anchored and
/// case-sensitive. Iterative two-pointer matching that backtracks only to
/// the last `*`.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern.is_empty() {
        return value.is_empty();
    }
    if pattern == "*" {
        return true;
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = value.chars().collect();
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<usize> = None;
    let mut mark = 0usize;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// go-wildcard v1.0.3 `deepMatchRune`, evaluated bottom-up (O(n*m) time,
/// O(m) memory). With `simple`, a `?` facing the end of the value matches
/// (that is `MatchSimple`'s quirk).
fn deep_match(value: &str, pattern: &str, simple: bool) -> bool {
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

// ---------------------------------------------------------------------------
// Kyverno validate.pattern string leaves
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    MoreEqual,
    LessEqual,
    NotEqual,
    More,
    Less,
    InRange,
    NotInRange,
}

impl Op {
    fn len(self) -> usize {
        match self {
            Op::Equal => 0,
            Op::More | Op::Less | Op::NotEqual | Op::InRange => 1,
            Op::MoreEqual | Op::LessEqual | Op::NotInRange => 2,
        }
    }
}

/// One operand of Kyverno's range regexps,
/// `[-|\+]?\d+(?:\.\d+)?[A-Za-z]*`, matched greedily from `i`; returns the end.
fn range_operand(b: &[u8], mut i: usize) -> Option<usize> {
    if i < b.len() && matches!(b[i], b'-' | b'|' | b'+') {
        i += 1;
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == start {
        return None;
    }
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    while i < b.len() && b[i].is_ascii_alphabetic() {
        i += 1;
    }
    Some(i)
}

/// `InRangeRegex` (`sep` = "-") / `NotInRangeRegex` (`sep` = "!-"):
/// `^(operand)<sep>(operand)$`, returning the two captures.
fn split_range<'a>(pattern: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let b = pattern.as_bytes();
    let l_end = range_operand(b, 0)?;
    if !pattern[l_end..].starts_with(sep) {
        return None;
    }
    let r_start = l_end + sep.len();
    let r_end = range_operand(b, r_start)?;
    (r_end == b.len()).then(|| (&pattern[..l_end], &pattern[r_start..]))
}

/// Kyverno `operator.GetOperatorFromStringPattern`.
fn operator_of(pattern: &str) -> Op {
    if pattern.len() < 2 {
        return Op::Equal;
    }
    let b = pattern.as_bytes();
    if b.starts_with(b">=") {
        Op::MoreEqual
    } else if b.starts_with(b"<=") {
        Op::LessEqual
    } else if b[0] == b'>' {
        Op::More
    } else if b[0] == b'<' {
        Op::Less
    } else if b[0] == b'!' {
        Op::NotEqual
    } else if split_range(pattern, "!-").is_some() {
        Op::NotInRange
    } else if split_range(pattern, "-").is_some() {
        Op::InRange
    } else {
        Op::Equal
    }
}

/// Kyverno `validate.pattern` matching of a string value against a string
/// pattern (`pkg/engine/pattern.validateStringPatterns`): equal strings
/// match; otherwise the pattern is split on `|` (OR), each part on `&`
/// (AND), each operand trimmed of spaces, and each operand is an optional
/// operator (`!`, `>`, `<`, `>=`, `<=`, range `a-b`, `a!-b`) and a value
/// compared as a Go duration, else a Kubernetes quantity, else (only for
/// equality and `!`) with [`glob_match`]. No normalisation of images.
pub fn kyverno_match(pattern: &str, value: &str) -> bool {
    if value == pattern {
        return true;
    }
    pattern.split('|').any(|cond| {
        cond.trim_matches(' ')
            .split('&')
            .all(|c| validate_string_pattern(value, c.trim_matches(' ')))
    })
}

fn validate_string_pattern(value: &str, pattern: &str) -> bool {
    let op = operator_of(pattern);
    match op {
        Op::InRange => match split_range(pattern, "-") {
            Some((l, r)) => {
                validate_string_pattern(value, &format!(">= {l}"))
                    && validate_string_pattern(value, &format!("<= {r}"))
            }
            None => false,
        },
        Op::NotInRange => match split_range(pattern, "!-") {
            Some((l, r)) => {
                validate_string_pattern(value, &format!("< {l}"))
                    || validate_string_pattern(value, &format!("> {r}"))
            }
            None => false,
        },
        _ => {
            let p = pattern.get(op.len()..).unwrap_or("").trim();
            validate_string(value, p, op)
        }
    }
}

fn compare<T: PartialOrd>(v: T, p: T, op: Op) -> Option<bool> {
    Some(match op {
        Op::Equal => v == p,
        Op::NotEqual => v != p,
        Op::More => v > p,
        Op::Less => v < p,
        Op::MoreEqual => v >= p,
        Op::LessEqual => v <= p,
        Op::InRange | Op::NotInRange => return None,
    })
}

fn validate_string(value: &str, pattern: &str, op: Op) -> bool {
    if let (Some(p), Some(v)) = (go_parse_duration(pattern), go_parse_duration(value)) {
        if let Some(r) = compare(v, p, op) {
            return r;
        }
    }
    if let (Some(p), Some(v)) = (k8s_parse_quantity(pattern), k8s_parse_quantity(value)) {
        if let Some(r) = compare(v, p, op) {
            return r;
        }
    }
    match op {
        Op::Equal => glob_match(pattern, value),
        Op::NotEqual => !glob_match(pattern, value),
        _ => false,
    }
}

/// Go `time.ParseDuration`, as nanoseconds (f64; Go's overflow limit of
/// 2^63 ns is kept).
fn go_parse_duration(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut neg = false;
    if let Some(&c) = b.first() {
        if c == b'-' || c == b'+' {
            neg = c == b'-';
            i = 1;
        }
    }
    if &s[i..] == "0" {
        return Some(0.0);
    }
    if i == b.len() {
        return None;
    }
    let mut total = 0f64;
    while i < b.len() {
        if !(b[i] == b'.' || b[i].is_ascii_digit()) {
            return None;
        }
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &s[st..i];
        let pre = i > st;
        let mut frac_part = "";
        let mut post = false;
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let fs = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &s[fs..i];
            post = i > fs;
        }
        if !pre && !post {
            return None;
        }
        let us = i;
        while i < b.len() && b[i] != b'.' && !b[i].is_ascii_digit() {
            i += 1;
        }
        let unit = match &s[us..i] {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        let num: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .ok()?;
        total += num * unit;
        if total > 9.223_372_036_854_776e18 {
            return None;
        }
    }
    Some(if neg { -total } else { total })
}

/// Kubernetes `resource.ParseQuantity`, as an f64 value (exact for the
/// magnitudes that occur; beyond 2^53 comparisons are approximate).
fn k8s_parse_quantity(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0.0);
    }
    let b = s.as_bytes();
    let mut pos = 0;
    let mut positive = true;
    match b[0] {
        b'-' => {
            positive = false;
            pos = 1;
        }
        b'+' => pos = 1,
        _ => {}
    }
    // strip leading zeros; all zeros (or nothing) is the number 0
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= b.len() {
        return Some(0.0);
    }
    let ns = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = &s[ns..pos];
    let mut denom = "";
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let ds = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[ds..pos];
    }
    // suffix: [eEinumkKMGTP]* then optional sign and digits to the end
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() {
        if matches!(b[pos], b'-' | b'+') {
            pos += 1;
        }
        if !b[pos..].iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    let suffix = &s[suffix_start..];
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        x if x.len() > 1 && (x.starts_with('e') || x.starts_with('E')) => {
            let e: i64 = x[1..].parse().ok()?;
            10f64.powi(e.clamp(-400, 400) as i32)
        }
        _ => return None,
    };
    let mantissa: f64 = format!(
        "{}.{}",
        if num.is_empty() { "0" } else { num },
        if denom.is_empty() { "0" } else { denom }
    )
    .parse()
    .ok()?;
    let v = mantissa * mult;
    Some(if positive { v } else { -v })
}

// ---------------------------------------------------------------------------
// Other semantics, for contrast / other front ends
// ---------------------------------------------------------------------------

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
    // Two-pointer with backtracking to the last '*'.
    let (mut pi, mut si, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while si < s.len() {
        if pi < toks.len() && matches!(toks[pi], Tok::Any) {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < toks.len() && one(&toks[pi], s[si]) {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return Ok(false);
        }
    }
    while pi < toks.len() && matches!(toks[pi], Tok::Any) {
        pi += 1;
    }
    Ok(pi == toks.len())
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
                    chunk = &chunk[1..];
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
                    if matched == negated {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kyverno_image_patterns() {
        let p = "public.ecr.aws/*";
        assert!(kyverno_match(p, "public.ecr.aws/x/y:1"));
        assert!(kyverno_match(p, "public.ecr.aws/../x"));
        assert!(!kyverno_match(p, "public.ecr.aws.evil.com/x"));
        assert!(!kyverno_match(p, "evil.com/public.ecr.aws/x"));
        assert!(!kyverno_match(p, "PUBLIC.ECR.AWS/x"));
        assert!(!kyverno_match("docker.io/*", "nginx"));
        assert!(kyverno_match("*:*", "r.io:5000/x"));
        assert!(kyverno_match("*@sha256:*", "r.io/x@sha256:abc"));
        assert!(kyverno_match("eu.foo.io/* | bar.io/*", "bar.io/busybox"));
        assert!(!kyverno_match(
            "eu.foo.io/* | bar.io/*",
            "registry.k8s.io/nginx:1.7.9"
        ));
        assert!(kyverno_match("!*:latest", "nginx:1.25"));
        assert!(!kyverno_match("!*:latest", "nginx:latest"));
        assert!(kyverno_match("r.io/* & !*:latest", "r.io/a:1"));
        assert!(!kyverno_match("r.io/* & !*:latest", "r.io/a:latest"));
        assert!(kyverno_match("[::1]:5000/*", "[::1]:5000/x"));
        assert!(kyverno_match("r.io:?443/*", "r.io:4443/x"));
        assert!(!kyverno_match("r.io:?443/*", "r.io:443/x"));
        // '?' is one character, not one byte.
        assert!(kyverno_match("r.io/?", "r.io/é"));
        // '|' and '&' split even where they are not meant as operators.
        assert!(kyverno_match("a|b", "b"));
    }

    #[test]
    fn glob_semantics() {
        assert!(glob_match("*", ""));
        assert!(glob_match("k8s.gcr.io/*", "k8s.gcr.io/pause:3.1"));
        assert!(!glob_match("k8s.gcr.io/*", "registry.k8s.io/pause"));
        assert!(glob_match("my-bucket?abc*", "my-bucket/abc"));
        assert!(!glob_match("my-bucket/abc?", "my-bucket/abc"));
        assert!(glob_match("my-bucket/mnop*?and", "my-bucket/mnopqand"));
        assert!(!glob_match("my-bucket/mnop*?and", "my-bucket/mnopand"));
        assert!(!glob_match("", "x"));
        // No Kyverno pattern operators here.
        assert!(!glob_match("a|b", "a"));
    }

    #[test]
    fn numeric_operators() {
        assert!(kyverno_match(">1 & <20", "10"));
        assert!(!kyverno_match(">1 & <20", "21"));
        assert!(kyverno_match("1-10", "5"));
        assert!(!kyverno_match("1-10", "11"));
        assert!(kyverno_match("1!-10", "11"));
        assert!(kyverno_match(">1Gi", "2Gi"));
        assert!(kyverno_match("<1h", "30m"));
        assert!(!kyverno_match(">image", "image"));
        // Quantities compare by value.
        assert!(kyverno_match("1Gi", "1024Mi"));
    }

    #[test]
    fn two_pointer_agrees_with_reference_semantics() {
        // Exhaustive over a small alphabet: the iterative matcher equals
        // go-wildcard's recursive definition (evaluated as a table).
        let alpha = ['a', 'b', '*', '?', '/'];
        let mut words = vec![String::new()];
        for _ in 0..4 {
            let mut more = Vec::new();
            for w in &words {
                for c in alpha {
                    more.push(format!("{w}{c}"));
                }
            }
            words.extend(more);
            words.sort();
            words.dedup();
        }
        let values: Vec<&String> = words.iter().filter(|w| !w.contains(['*', '?'])).collect();
        for p in &words {
            for v in &values {
                let want = if p.is_empty() {
                    v.is_empty()
                } else {
                    p == "*" || deep_match(v, p, false)
                };
                assert_eq!(glob_match(p, v), want, "pattern {p:?} value {v:?}");
            }
        }
    }

    #[test]
    fn no_exponential_blowup() {
        let v = "a".repeat(20_000);
        let p = "*a".repeat(50) + "b";
        let t = std::time::Instant::now();
        assert!(!glob_match(&p, &v));
        assert!(!kyverno_match(&p, &v));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn weird_inputs_do_not_panic() {
        let inputs = [
            "",
            "!",
            "!-",
            "-",
            ">",
            "<",
            ">=",
            "<=",
            "1-",
            "-1",
            "1!-",
            "|",
            "&",
            " | & ",
            "é",
            "1e",
            "1e999999999999999999",
            "1Ki",
            ".",
            "+",
            "-.",
            "0x",
            "1.5h2m",
            "µs",
            "1µs",
            "[",
            "[]",
            "[!",
            "\\",
            "{",
            "**",
            "\u{0}",
        ];
        for p in inputs {
            for v in inputs {
                let _ = kyverno_match(p, v);
                let _ = go_wildcard_match_simple(p, v);
                let _ = gobwas_glob_match(p, v);
                let _ = go_path_match(p, v);
            }
        }
    }

    #[test]
    fn path_match_basics() {
        assert_eq!(go_path_match("a/*/c", "a/b/c"), Ok(true));
        assert_eq!(go_path_match("a/*", "a/b/c"), Ok(false));
        assert_eq!(go_path_match("a[", "a"), Err(PatternError::BadPattern));
        assert_eq!(go_path_match("[a-c]x", "bx"), Ok(true));
        assert_eq!(go_path_match("[^a-c]x", "bx"), Ok(false));
    }
}
