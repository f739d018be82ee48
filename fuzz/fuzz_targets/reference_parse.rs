//! Image reference parsers (distribution/reference, containerd, Kyverno
//! image info): never panic, and what parses prints back to something that
//! parses to the same reference.
#![no_main]

use imagewarden_policy::{imageinfo, reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = reference::parse_normalized_named(s) {
        let printed = r.to_string();
        let again = reference::parse_normalized_named(&printed)
            .unwrap_or_else(|e| panic!("{s:?} parsed, its string {printed:?} does not: {e}"));
        assert_eq!(
            again.to_string(),
            printed,
            "normalisation is not idempotent for {s:?}"
        );
        let _ = reference::familiar_string(&r);
        let _ = imagewarden_policy::check::normalized_string(&r);
    }
    let _ = reference::parse(s);
    let _ = reference::parse_any_reference(s);
    let _ = reference::parse_docker_ref(s);
    let _ = reference::containerd_parse(s);
    let _ = imageinfo::kyverno_image_info(s);
});
