#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh                 # every target, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh policy_load reference_parse
#
# Installs cargo-fuzz when it is missing (cargo install, idempotent) and
# uses the nightly toolchain (libFuzzer and the sanitizers need it). Each
# target's corpus lives in fuzz/corpus/<target> (kept between runs, not
# committed); a crash leaves its input in fuzz/artifacts/<target> and makes
# this script fail. The exec_event_decode target links the agent crate,
# whose build script compiles the eBPF object (bpf-linker, as for any
# build of the agent: `cargo xtask setup` installs it); it is built with the
# fuzz crate's `agent` feature, and skipped with FUZZ_AGENT=0 (its cold
# build is ~15 min on 2 cores, the policy targets' ~1 min).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${FUZZ_SECONDS:-20}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
# Largest input libFuzzer generates (bytes): parsers get realistic sizes,
# and the YAML loader's known quadratic case (deep flow nesting, see
# policy/tests/hostile_input.rs) stays out of a time-bounded run.
max_len="${FUZZ_MAX_LEN:-4096}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: the $toolchain toolchain is missing (rustup toolchain install $toolchain)" >&2
    exit 2
fi

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "+$toolchain" fuzz list)
    if [ "${FUZZ_AGENT:-1}" = 0 ]; then
        mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -vx exec_event_decode)
    fi
fi

# Seeds: the project's own policies and test references.
seed() {
    local t="$1" dir="corpus/$1"
    mkdir -p "$dir"
    case "$t" in
        policy_load)
            cp -n ../deploy/policies/*.yaml "$dir/" 2>/dev/null || true
            ;;
        reference_parse)
            local i=0
            for r in nginx docker.io/library/nginx:latest public.ecr.aws/nginx/nginx:1.25 \
                "localhost:5000/a/b@sha256:$(printf '0%.0s' {1..64})" "[::1]:5000/x:y"; do
                printf '%s' "$r" > "$dir/seed-$i"; i=$((i + 1))
            done
            ;;
    esac
}

failed=()
for t in "${targets[@]}"; do
    seed "$t"
    echo "fuzz: $t for ${seconds}s"
    features=()
    [ "$t" = exec_event_decode ] && features=(--features agent)
    if ! cargo "+$toolchain" fuzz run "${features[@]}" "$t" -- \
            -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s), ${seconds}s each: no crash"
