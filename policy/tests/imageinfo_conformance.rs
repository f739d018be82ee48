//! Conformance of `imagewarden_policy::imageinfo` with Kyverno's
//! `GetImageInfo` / `addDefaultRegistry` (tests/data/kyverno_imageinfo_vectors.jsonl,
//! vendored unchanged). Every record is checked on its `asserted` fields.
//!
//! The 18 `ExtractImagesFromResource` records also say WHICH images Kyverno
//! extracts from a resource (kind, container group, JSON pointer); that part
//! belongs to policy/src/manifest.rs and is tested there. Here those records
//! are checked only for the image-info fields of their image, and counted.

use imagewarden_policy::imageinfo::{
    kyverno_add_default_registry, kyverno_image_info_with, ImageInfoConfig,
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

#[test]
fn kyverno_imageinfo_vectors() {
    let recs = load("kyverno_imageinfo_vectors.jsonl");
    let mut fails = Vec::new();
    let (mut info, mut add_default, mut extraction) = (0, 0, 0);
    for (i, rec) in recs.iter().enumerate() {
        let input = rec["input"].as_str().unwrap_or("");
        let api = rec["api"].as_str().unwrap_or("");
        let id = format!(
            "kyverno_imageinfo_vectors.jsonl:{} [{} line {}] {input:?}",
            i + 1,
            rec["test"].as_str().unwrap_or("?"),
            rec["line"]
        );
        assert!(
            rec["source"].is_string() && rec["commit"].is_string(),
            "{id}"
        );
        let cfg = ImageInfoConfig {
            default_registry: rec["defaultRegistry"]
                .as_str()
                .unwrap_or("docker.io")
                .to_string(),
            enable_default_registry_mutation: rec["enableDefaultRegistryMutation"]
                .as_bool()
                .unwrap_or(true),
        };
        let asserted: Vec<&str> = rec["asserted"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if api == "kyverno pkg/utils/image.addDefaultRegistry" {
            add_default += 1;
            let got = kyverno_add_default_registry(input, &cfg.default_registry);
            if Some(got.as_str()) != rec["withDefaultRegistry"].as_str() {
                fails.push(format!("{id}: withDefaultRegistry {got:?}"));
            }
            continue;
        }
        if api.starts_with("kyverno pkg/utils/api.ExtractImagesFromResource") {
            extraction += 1;
        } else if api == "kyverno pkg/utils/image.GetImageInfo" {
            info += 1;
        } else {
            fails.push(format!("{id}: unhandled api {api:?}"));
            continue;
        }
        let want_valid = rec["valid"].as_bool().unwrap_or(true);
        match (kyverno_image_info_with(input, &cfg), want_valid) {
            (Ok(ii), true) => {
                for f in &asserted {
                    let have = match *f {
                        "registry" => ii.registry.clone(),
                        "name" => ii.name.clone(),
                        "path" => ii.path.clone(),
                        "tag" => ii.tag.clone(),
                        "digest" => ii.digest.clone(),
                        "string" | "reference" => ii.reference(),
                        "referenceWithTag" => ii.reference_with_tag(),
                        other => {
                            fails.push(format!("{id}: unknown asserted field {other}"));
                            continue;
                        }
                    };
                    if rec[*f].as_str() != Some(have.as_str()) {
                        fails.push(format!("{id}: {f}: want {}, got {have:?}", rec[*f]));
                    }
                }
            }
            (Err(_), false) => {}
            (got, _) => fails.push(format!("{id}: want valid={want_valid}, got {got:?}")),
        }
    }
    for f in &fails {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "kyverno_imageinfo_vectors: {} records ({info} GetImageInfo, {add_default} addDefaultRegistry, {extraction} extraction records checked for image info only), {} failures",
        recs.len(),
        fails.len()
    );
    assert_eq!(recs.len(), 46);
    assert_eq!((info, add_default, extraction), (21, 7, 18));
    assert!(fails.is_empty(), "{} failures", fails.len());
}
