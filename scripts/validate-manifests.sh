#!/usr/bin/env bash
# Validates every Kubernetes manifest under deploy/ against the JSON schemas
# of a current Kubernetes release, offline and strict (unknown fields are
# errors), with PyPI's kubernetes-validate, which ships the schemas inside
# the package. Installs it into a venv under target/ when missing
# (idempotent, quiet; needs PyPI only the first time).
#
# Kinds without a schema in kubernetes-validate are skipped by name, and
# only these: Kustomization (kustomize's own file), ServiceMonitor
# (Prometheus Operator CRD), ClusterPolicy/Policy (Kyverno CRDs). The
# ImagePolicy examples are checked against the openAPIV3Schema of our own
# CustomResourceDefinition (deploy/crds/imagepolicy.yaml), which itself
# validates as a CustomResourceDefinition. Any other kind without a schema
# fails.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.37.0}"
KV_VERSION="1.37.0"
VENV="target/kubernetes-validate-venv"
KV="$VENV/bin/kubernetes-validate"

if ! "$KV" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    echo "validate-manifests: installing kubernetes-validate $KV_VERSION into $VENV"
    mkdir -p target
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

SKIP_KINDS='Kustomization|ServiceMonitor|ClusterPolicy|Policy|ImagePolicy'
mapfile -t files < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
failed=0
checked=0
for f in "${files[@]}"; do
    out="$("$KV" --strict --quiet -k "$K8S_VERSION" "$f" 2>&1)" || { echo "$out"; failed=$((failed + 1)); continue; }
    # kubernetes-validate warns (exit 0) on kinds it has no schema for.
    while IFS= read -r line; do
        [ -z "$line" ] && continue
        if [[ "$line" =~ "Couldn't find schema for kind "($SKIP_KINDS)" " ]]; then
            echo "validate-manifests: skipped (no schema): $line"
        else
            echo "$line"
            failed=$((failed + 1))
        fi
    done <<<"$out"
    checked=$((checked + 1))
done

# ImagePolicy instances against our CRD's schema (jsonschema comes with
# kubernetes-validate).
"$VENV/bin/python" - <<'EOF' || failed=$((failed + 1))
import glob, sys, yaml, jsonschema
crd = yaml.safe_load(open("deploy/crds/imagepolicy.yaml"))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
bad = 0
for path in sorted(glob.glob("deploy/**/*.yaml", recursive=True)):
    for doc in yaml.safe_load_all(open(path)):
        if isinstance(doc, dict) and doc.get("kind") == "ImagePolicy":
            try:
                jsonschema.validate(doc, schema)
                print(f"validate-manifests: {path}: ImagePolicy {doc['metadata']['name']} matches the CRD schema")
            except jsonschema.ValidationError as e:
                print(f"ERROR {path}: ImagePolicy does not match the CRD schema: {e.message}")
                bad += 1
sys.exit(1 if bad else 0)
EOF

if [ "$failed" -ne 0 ]; then
    echo "validate-manifests: $failed problem(s) in ${#files[@]} files (Kubernetes $K8S_VERSION, strict)"
    exit 1
fi
echo "validate-manifests: ${checked} files valid against Kubernetes $K8S_VERSION (strict, offline)"
