//! Pure policy logic for imagewarden: image references parsed exactly as
//! distribution/reference does, Kyverno's wildcard semantics, the native and
//! Kyverno policy front ends, and one evaluation. No I/O beyond what callers
//! hand in, no unsafe, no kernel: kept in its own crate so that it can be
//! tested, fuzzed and benchmarked without building the eBPF object.
#![forbid(unsafe_code)]

pub mod imageinfo;
pub mod reference;
pub mod wildcard;

pub mod cel;
#[doc(hidden)]
pub mod cel_subset;
pub mod check;
pub mod eval;
pub mod kyverno;
pub mod load;
pub mod manifest;
pub mod model;
pub mod native;
pub mod text;
pub mod vpol;

pub use eval::{DriftDecision, PolicySet, RuleResult};
pub use load::{load_policy_file, load_policy_str};
pub use model::{
    Action, ContainerType, EvalContext, InvalidPolicy, PolicyError, Unsupported, Verdict,
    VerdictKind, Warning,
};
