//! The policy loader on any text (native ImagePolicy, Kyverno, garbage),
//! and the manifest extractor: an error or a policy, never a panic; a
//! loaded policy evaluates a few references without panicking.
#![no_main]

use imagewarden_policy::{load_policy_str, manifest, ContainerType, EvalContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Deep flow nesting is quadratic in libyaml (see policy/tests/hostile_input.rs):
    // keep inputs small so that a run explores rather than parses.
    if data.len() > 16 << 10 {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = load_policy_str(text, "fuzz.yaml") {
        for ct in [
            ContainerType::Container,
            ContainerType::Init,
            ContainerType::Ephemeral,
        ] {
            let ctx = EvalContext::new(ct).with_namespace(Some("default"));
            for image in ["nginx", "public.ecr.aws/nginx/nginx:1@sha256:0000000000000000000000000000000000000000000000000000000000000000", "", "::"] {
                let v = set.evaluate(image, &ctx);
                assert!(!(v.allowed && image == "::"), "an invalid reference was allowed");
            }
        }
        let _ = set.rule_count();
    }
    let _ = manifest::extract_images(text, "fuzz.yaml");
});
