//! Kyverno pattern semantics: the glob and pattern-string matchers on any
//! (pattern, value) pair never panic; a pattern matches itself when it has
//! no operator or wildcard.
#![no_main]

use imagewarden_policy::wildcard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (pattern, value) = input;
    // Bounded: the matchers are O(pattern * value) by design.
    if pattern.len() > 4096 || value.len() > 4096 {
        return;
    }
    let g = wildcard::glob_match(pattern, value);
    let _ = wildcard::kyverno_match(pattern, value);
    let _ = wildcard::go_wildcard_match_simple(pattern, value);
    let _ = wildcard::gobwas_glob_match(pattern, value);
    if !pattern.contains(['*', '?']) {
        assert_eq!(
            g,
            pattern == value,
            "glob without wildcards must be equality: {pattern:?} {value:?}"
        );
    }
    assert!(wildcard::glob_match(
        value.replace(['*', '?'], "").as_str(),
        &value.replace(['*', '?'], "")
    ));
});
