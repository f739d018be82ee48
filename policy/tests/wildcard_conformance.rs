//! Conformance of `imagewarden_policy::wildcard` with Kyverno (and, for
//! contrast, go-wildcard MatchSimple, gobwas/glob and distribution's
//! FamiliarMatch): tests/data/wildcard_vectors.jsonl, vendored unchanged.
//! Every record is checked; failures are collected, printed, then asserted
//! empty. Counts per api are pinned so that a change of the data is noticed.

use std::collections::BTreeMap;

use imagewarden_policy::reference::parse_normalized_named;
use imagewarden_policy::wildcard::{
    check_patterns, familiar_match, glob_match, go_wildcard_match_simple, gobwas_glob_match,
    image_matches, kyverno_match, kyverno_match_image, match_patterns, ImageReferenceMatcher,
};
use serde_json::Value;

fn load(file: &str) -> Vec<Value> {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Short api family name (the text before the first space-separated detail).
fn family(api: &str) -> &'static str {
    const FAMILIES: &[&str] = &[
        "kyverno ext/wildcard.MatchPatterns",
        "kyverno ext/wildcard.Match",
        "kyverno ext/wildcard.CheckPatterns",
        "go-wildcard v1.0.3 MatchSimple",
        "kyverno ImageValidatingPolicy matchImageReferences.glob",
        "kyverno pkg/cel/matching.MatchImage",
        "kyverno pkg/engine/pattern.Validate",
        "kyverno pkg/engine/pattern.validateStringPatterns",
        "kyverno pkg/engine/pattern.compareString",
        "kyverno pkg/engine/utils.ImageMatches",
        "distribution/reference.FamiliarMatch",
    ];
    FAMILIES
        .iter()
        .find(|f| api == **f || api.starts_with(&format!("{f} ")))
        .copied()
        .unwrap_or("?")
}

#[test]
fn wildcard_vectors() {
    let recs = load("wildcard_vectors.jsonl");
    let mut fails = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kyverno = 0;
    for (i, rec) in recs.iter().enumerate() {
        let api = rec["api"].as_str().unwrap_or("");
        let pattern = rec["pattern"].as_str().unwrap_or("");
        let input = rec["input"].as_str().unwrap_or("");
        let want = rec["match"].as_bool().expect("match");
        let id = format!(
            "wildcard_vectors.jsonl:{} [{api}] line {} pattern {pattern:?} input {input:?}",
            i + 1,
            rec["line"]
        );
        assert!(
            rec["source"].is_string() && rec["commit"].is_string(),
            "{id}"
        );
        let fam = family(api);
        *counts.entry(fam).or_default() += 1;
        if api.starts_with("kyverno") {
            kyverno += 1;
        }
        let got: Result<bool, String> = match fam {
            "kyverno ext/wildcard.Match" | "kyverno pkg/engine/pattern.compareString" => {
                Ok(glob_match(pattern, input))
            }
            "kyverno pkg/engine/pattern.Validate"
            | "kyverno pkg/engine/pattern.validateStringPatterns" => {
                Ok(kyverno_match(pattern, input))
            }
            "kyverno ext/wildcard.MatchPatterns" => {
                let got = match_patterns(&strs(&rec["patterns"]), &strs(&rec["inputs"]));
                let (mp, mi) = got.clone().unwrap_or_default();
                if rec["matched_pattern"].as_str() != Some(mp.as_str())
                    || rec["matched_input"].as_str() != Some(mi.as_str())
                {
                    fails.push(format!("{id}: matched ({mp:?}, {mi:?})"));
                }
                Ok(got.is_some())
            }
            "kyverno ext/wildcard.CheckPatterns" => {
                Ok(check_patterns(&strs(&rec["patterns"]), input))
            }
            "kyverno pkg/engine/utils.ImageMatches" => {
                Ok(image_matches(input, &strs(&rec["patterns"])))
            }
            "go-wildcard v1.0.3 MatchSimple" => Ok(go_wildcard_match_simple(pattern, input)),
            "kyverno ImageValidatingPolicy matchImageReferences.glob" => {
                gobwas_glob_match(pattern, input).map_err(|e| e.to_string())
            }
            "kyverno pkg/cel/matching.MatchImage" => {
                let matchers: Vec<ImageReferenceMatcher> = rec["matchImageReferences"]
                    .as_array()
                    .expect("matchImageReferences")
                    .iter()
                    .map(|m| {
                        if let Some(g) = m["Glob"].as_str() {
                            ImageReferenceMatcher::Glob(g.to_string())
                        } else {
                            ImageReferenceMatcher::Expression(
                                m["Expression"].as_str().unwrap_or("").to_string(),
                            )
                        }
                    })
                    .collect();
                kyverno_match_image(&matchers, input).map_err(|e| e.to_string())
            }
            "distribution/reference.FamiliarMatch" => match parse_normalized_named(input) {
                Ok(r) => familiar_match(pattern, &r).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            _ => Err("unhandled api".to_string()),
        };
        match got {
            Ok(g) if g == want => {}
            Ok(g) => fails.push(format!("{id}: got {g}, want {want}")),
            Err(e) => fails.push(format!("{id}: error {e}")),
        }
    }
    for f in &fails {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "wildcard_vectors: {} records ({kyverno} kyverno), {} failures; per api: {counts:?}",
        recs.len(),
        fails.len()
    );
    assert_eq!(recs.len(), 130);
    assert_eq!(kyverno, 100);
    let expect: BTreeMap<&str, usize> = [
        ("kyverno ext/wildcard.Match", 52),
        ("kyverno ext/wildcard.MatchPatterns", 7),
        ("go-wildcard v1.0.3 MatchSimple", 21),
        ("kyverno ImageValidatingPolicy matchImageReferences.glob", 2),
        ("kyverno pkg/cel/matching.MatchImage", 3),
        ("kyverno pkg/engine/pattern.Validate", 5),
        ("kyverno pkg/engine/pattern.validateStringPatterns", 7),
        ("kyverno pkg/engine/pattern.compareString", 12),
        ("kyverno pkg/engine/utils.ImageMatches", 6),
        ("kyverno ext/wildcard.CheckPatterns", 6),
        ("distribution/reference.FamiliarMatch", 9),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expect);
    assert!(fails.is_empty(), "{} failures", fails.len());
}

/// Every Kyverno `ext/wildcard.Match` / `compareString` record gives the
/// same answer through the full `validate.pattern` leaf, as long as the
/// pattern has no operator characters: kyverno_match is a superset.
#[test]
fn kyverno_match_agrees_with_glob_on_plain_patterns() {
    for rec in load("wildcard_vectors.jsonl") {
        let api = rec["api"].as_str().unwrap_or("");
        if !(api.starts_with("kyverno ext/wildcard.Match ")
            || api.starts_with("kyverno pkg/engine/pattern.compareString"))
        {
            continue;
        }
        let p = rec["pattern"].as_str().unwrap_or("");
        let v = rec["input"].as_str().unwrap_or("");
        if p.contains(['|', '&', '!', '<', '>']) {
            continue;
        }
        assert_eq!(kyverno_match(p, v), glob_match(p, v), "{p:?} {v:?}");
    }
}
