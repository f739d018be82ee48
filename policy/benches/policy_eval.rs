//! Policy evaluation throughput (images per second) for the policies in
//! `deploy/policies/` over a realistic mix of image references: what the
//! agent pays per container it learns (`controller::decide` calls
//! `PolicySet::evaluate` once per container and resync).
//!
//! `cargo bench -p imagewarden-policy --bench policy_eval [-- --quick] [-- --json FILE]`
//! (`cargo xtask bench` runs it and folds the JSON into bench/results.json).
//! A plain timed loop (no criterion): five samples, median reported.
use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use imagewarden_policy::{
    reference::parse_normalized_named, ContainerType, EvalContext, PolicySet,
};

/// What a node's pod specs hold: short Docker Hub names, tags, digests,
/// registries with ports, the allowed registry, look-alikes and a few
/// invalid references.
const IMAGES: &[&str] = &[
    "nginx",
    "nginx:1.25.3",
    "library/redis:7.2-alpine",
    "docker.io/library/postgres:16",
    "docker.io/bitnami/kafka:3.6.1",
    "public.ecr.aws/nginx/nginx:latest",
    "public.ecr.aws/eks-distro/kubernetes/pause:3.9",
    "public.ecr.aws/aws-observability/aws-otel-collector:v0.35.0",
    "public.ecr.aws/karpenter/controller@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "public.ecr.aws/bitnami/redis:7.2.4-debian-12-r0",
    "registry.k8s.io/pause:3.9",
    "registry.k8s.io/kube-proxy:v1.29.1",
    "registry.k8s.io/coredns/coredns:v1.11.1",
    "quay.io/prometheus/node-exporter:v1.7.0",
    "quay.io/jetstack/cert-manager-controller:v1.14.2",
    "ghcr.io/fluxcd/source-controller:v1.2.4",
    "gcr.io/distroless/static-debian12@sha256:6a3500b086c2856fbc189f5d11351bdbcf7c4dc0673a8a0ad5b0ee1e3e4ba1aa",
    "gcr.io/google-containers/busybox:1.27",
    "mcr.microsoft.com/dotnet/aspnet:8.0",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/api:2024.02.01-abcdef1",
    "localhost:5000/app:dev",
    "registry.example.com:8443/platform/sidecar:1.0.0@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
    "public.ecr.aws.evil.com/nginx/nginx:latest",
    "evil.com/public.ecr.aws/nginx:latest",
    "public.ecr.aws/../x",
    "UPPERCASE/image:tag",
    "nginx:",
    "",
];

struct Sample {
    name: String,
    images_per_s: f64,
    ns_per_image: f64,
    allowed: usize,
}

/// Median of five samples of `f` over the whole mix, each about `per_sample`.
fn measure(name: &str, per_sample: Duration, mut f: impl FnMut(&str) -> bool) -> Sample {
    let allowed = IMAGES.iter().filter(|i| f(i)).count();
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < per_sample {
            for img in IMAGES {
                black_box(f(black_box(img)));
            }
            n += IMAGES.len() as u64;
        }
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let r = rates[2];
    Sample {
        name: name.to_string(),
        images_per_s: r,
        ns_per_image: 1e9 / r,
        allowed,
    }
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let per_sample = if quick {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(400)
    };

    let mut files: Vec<PathBuf> = std::fs::read_dir(policies_dir())
        .expect("deploy/policies")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut samples = Vec::new();
    samples.push(measure("parse_normalized_named only", per_sample, |i| {
        parse_normalized_named(i).is_ok()
    }));
    let mut loads = Vec::new();
    for f in &files {
        let t0 = Instant::now();
        let set: PolicySet = imagewarden_policy::load_policy_file(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let load_us = t0.elapsed().as_secs_f64() * 1e6;
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        for (ns, label) in [(None, ""), (Some("prod"), " (namespace prod)")] {
            let ctx = EvalContext::new(ContainerType::Container).with_namespace(ns);
            samples.push(measure(&format!("{name}{label}"), per_sample, |i| {
                set.evaluate(i, &ctx).allowed
            }));
        }
        loads.push((name, load_us));
    }
    // The seed policy as a ValidatingPolicy: the CEL engine (kube-cel/cel
    // 0.13) against the hand-written subset it replaced, on the same
    // expression. The subset tested the image string only; the engine
    // evaluates the rule on a Pod holding the container (what the agent
    // knows), so this is the whole per-image cost of each.
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/seed-vpol.yaml");
    let set = imagewarden_policy::load_policy_file(&seed).expect("seed-vpol.yaml");
    let ctx = EvalContext::new(ContainerType::Container);
    samples.push(measure(
        "seed as ValidatingPolicy: CEL engine",
        per_sample,
        |i| set.evaluate(i, &ctx).allowed,
    ));
    let old = imagewarden_policy::cel_subset::compile_rule(
        &[],
        &[
            "object.spec.containers.all(container, container.image.startsWith('public.ecr.aws/'))"
                .to_string(),
        ],
    )
    .expect("subset compiles the seed expression");
    let old = old[0].clone().expect("containers test");
    samples.push(measure(
        "seed as ValidatingPolicy: old CEL subset",
        per_sample,
        |i| parse_normalized_named(i).is_ok() && old.eval_image(i),
    ));
    println!(
        "{:<56} {:>14} {:>10} {:>8}",
        "policy evaluation", "images/s", "ns/image", "allowed"
    );
    for s in &samples {
        println!(
            "{:<56} {:>14.0} {:>10.0} {:>5}/{}",
            s.name,
            s.images_per_s,
            s.ns_per_image,
            s.allowed,
            IMAGES.len()
        );
    }
    for (n, us) in &loads {
        println!("load {n}: {us:.0} us");
    }
    if let Some(out) = json_out {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let rows: Vec<String> = samples
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\":\"{}\",\"images_per_s\":{:.0},\"ns_per_image\":{:.1},\"allowed\":{},\"images\":{}}}",
                    esc(&s.name),
                    s.images_per_s,
                    s.ns_per_image,
                    s.allowed,
                    IMAGES.len()
                )
            })
            .collect();
        let loads: Vec<String> = loads
            .iter()
            .map(|(n, us)| format!("{{\"name\":\"{}\",\"load_us\":{us:.0}}}", esc(n)))
            .collect();
        let text = format!(
            "{{\"image_mix\":{},\"samples\":5,\"policies\":[{}],\"load\":[{}]}}\n",
            IMAGES.len(),
            rows.join(","),
            loads.join(",")
        );
        if let Some(d) = out.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::write(&out, text).expect("write --json");
    }
}
