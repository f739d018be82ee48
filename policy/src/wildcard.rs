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
//!
//! Kyverno's list helpers (`match_patterns`, `check_patterns`,
//! `image_matches`) and, for contrast, other Go semantics
//! (`go_wildcard_match_simple`, `gobwas_glob_match`, `kyverno_match_image`,
//! `go_path_match`, `familiar_match`) are in `go_compat`: evaluation uses
//! none of them, so they are compiled only for tests and with the
//! `go-compat` feature.
//!
//! All matchers run in O(len(pattern) * len(value)) at worst, without
//! recursion on the input.

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
    star_match(&p, &s, |c| *c == '*', |c, x| *c == '?' || *c == x)
}

/// Anchored matching of `toks` on `s` where a star token matches any run
/// and every other token one character (`one` says which): two pointers,
/// backtracking only to the last star, so O(n*m) at worst and no recursion.
pub(crate) fn star_match<T>(
    toks: &[T],
    s: &[char],
    is_star: impl Fn(&T) -> bool,
    one: impl Fn(&T, char) -> bool,
) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<usize> = None;
    let mut mark = 0usize;
    while si < s.len() {
        if pi < toks.len() && is_star(&toks[pi]) {
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
            return false;
        }
    }
    while pi < toks.len() && is_star(&toks[pi]) {
        pi += 1;
    }
    pi == toks.len()
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

#[cfg(any(test, feature = "go-compat"))]
mod go_compat;
#[cfg(any(test, feature = "go-compat"))]
pub use go_compat::*;

#[cfg(test)]
mod tests {
    use super::go_compat::deep_match;
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
