#!/usr/bin/env bash
# Tests what docs/ shows and generates, from the repository root or anywhere:
#   - the receiver snippets verify.py and verify.mjs against the Standard Webhooks specification's example (clock
#     pinned to its timestamp) and against deliveries captured live from hookrelay-agent (real clock), including a
#     secret rotation's double signature; altered requests must be refused;
#   - live.py: real hookrelay-control + hookrelay-agent deliver to both snippets (which must accept) and to a
#     receiver holding the wrong secret (which must refuse);
#   - the code blocks of docs/*.md marked as snippets are in the tested files (docs/tools/check_snippets.py);
#   - docs/tools: gen_api.py's parser (unit tests and a comparison with protoc), `gen_api.py --check`,
#     `gen_flags.py --check` (the flag tables of operating.md against the binaries' --help), and check_docs.py (unit
#     tests, then every command, flag, variable, link, path, exit code and default the pages name against the
#     binaries and the repository, the metrics against what live.py scraped, the chart's flags against its
#     templates, and the standardwebhooks versions the pages name against the ones the snippet checks above, and
#     the cargo tests, ran with).
# Installs what it needs locally: a Python venv in target/docs-venv, npm packages in docs/examples/node_modules
# (git-ignored), and builds the two binaries, the CLI and the benchmark (target/debug). Everything it starts listens on 127.0.0.1
# and is stopped before it exits. Prints `docs: N passed, N failed, N skipped` and exits non-zero on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
EXAMPLES=docs/examples
VENV=target/docs-venv
LOGS=target/docs-test
mkdir -p "$LOGS"

passed=0
failed=0
skipped=0

# Counts the PASS/FAIL lines a step printed (at least one failure if it exited non-zero without saying why).
count() {
  local name=$1 status=$2 output=$3
  local p f
  p=$(grep -c '^PASS ' "$output" || true)
  f=$(grep -c '^FAIL ' "$output" || true)
  if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $name: exited $status (output in $output)"
    f=1
  fi
  passed=$((passed + p))
  failed=$((failed + f))
}

# Runs a step whose output has PASS/FAIL lines; shows them.
step() {
  local name=$1
  shift
  local output="$LOGS/$name.out"
  "$@" >"$output" 2>&1
  local status=$?
  grep -E '^(PASS|FAIL) ' "$output"
  count "$name" "$status" "$output"
}

# Runs a check that passes or fails as a whole.
check() {
  local name=$1
  shift
  local output="$LOGS/$name.out"
  if "$@" >"$output" 2>&1; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name (output in $output):"
    tail -n 20 "$output" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

# Runs unittest with -v and counts its per-test lines.
unittests() {
  local name=$1
  shift
  local output="$LOGS/$name.out"
  "$@" -v >"$output" 2>&1
  local status=$?
  sed -nE 's/^(test\S+) \(([^)]*)\)( \.\.\.|.*\.\.\.) ok$/PASS '"$name"': \1/p;
           s/^(test\S+) \(([^)]*)\).*\.\.\. (FAIL|ERROR)$/FAIL '"$name"': \1 (\3)/p;
           s/^(test\S+) \(([^)]*)\).*\.\.\. skipped (.*)$/SKIP '"$name"': \1: \3/p' "$output" |
    tee "$output.summary"
  count "$name" "$status" "$output.summary"
  skipped=$((skipped + $(grep -c '^SKIP ' "$output.summary" || true)))
  if [ "$status" -ne 0 ]; then
    grep -E -A12 '^(FAIL|ERROR):' "$output" | head -40 | sed 's/^/    /'
  fi
}

setup_failed() {
  echo "FAIL setup: $1"
  failed=$((failed + 1))
}

echo "== setup"
python_ok=1
if ! command -v python3 >/dev/null 2>&1; then
  setup_failed "python3 is not installed"
  python_ok=0
else
  stamp="$VENV/.requirements"
  if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$EXAMPLES/requirements.txt" "$stamp"; then
    python3 -m venv "$VENV" &&
      "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$EXAMPLES/requirements.txt" &&
      cp "$EXAMPLES/requirements.txt" "$stamp" ||
      { setup_failed "pip install -r $EXAMPLES/requirements.txt into $VENV"; python_ok=0; }
  fi
fi
node_ok=1
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  setup_failed "node and npm are not installed"
  node_ok=0
else
  stamp="$EXAMPLES/node_modules/.package-lock.json.installed"
  if [ ! -d "$EXAMPLES/node_modules/standardwebhooks" ] || ! cmp -s "$EXAMPLES/package-lock.json" "$stamp"; then
    (cd "$EXAMPLES" && npm ci --no-audit --no-fund --silent) && cp "$EXAMPLES/package-lock.json" "$stamp" ||
      { setup_failed "npm ci in $EXAMPLES"; node_ok=0; }
  fi
fi
binaries_ok=1
if ! cargo build --quiet -p hookrelay-control -p hookrelay-agent >"$LOGS/cargo-build.out" 2>&1; then
  setup_failed "cargo build -p hookrelay-control -p hookrelay-agent (see $LOGS/cargo-build.out)"
  binaries_ok=0
fi
# check_docs.py reads the benchmark's --help too (the README names its flags).
if ! cargo build --quiet -p hookrelay-tests --bin hookrelay-bench >>"$LOGS/cargo-build.out" 2>&1; then
  setup_failed "cargo build -p hookrelay-tests --bin hookrelay-bench (see $LOGS/cargo-build.out)"
  binaries_ok=0
fi

echo "== receiver snippets against the Standard Webhooks specification's example"
if [ "$python_ok" = 1 ]; then
  step python-spec "$VENV/bin/python" "$EXAMPLES/check_verify.py" "$EXAMPLES/fixtures/spec.json"
fi
if [ "$node_ok" = 1 ]; then
  step node-spec node "$EXAMPLES/check_verify.mjs" "$EXAMPLES/fixtures/spec.json"
fi

echo "== live deliveries from hookrelay to the snippets"
if [ "$python_ok" = 1 ] && [ "$node_ok" = 1 ] && [ "$binaries_ok" = 1 ]; then
  step live "$VENV/bin/python" "$EXAMPLES/live.py" --bin-dir target/debug --python "$VENV/bin/python" \
    --out target/docs-live
  fixtures=(target/docs-live/live-hookrelay.json target/docs-live/live-hookrelay-rotated.json)
  for fixture in "${fixtures[@]}"; do
    [ -f "$fixture" ] || { echo "FAIL live: $fixture was not captured"; failed=$((failed + 1)); }
  done
  if [ -f "${fixtures[0]}" ]; then
    existing=()
    for fixture in "${fixtures[@]}"; do [ -f "$fixture" ] && existing+=("$fixture"); done
    step python-live "$VENV/bin/python" "$EXAMPLES/check_verify.py" "${existing[@]}"
    step node-live node "$EXAMPLES/check_verify.mjs" "${existing[@]}"
  fi
else
  echo "SKIP live: needs python, node and the binaries (see the setup failures above)"
fi

echo "== Go snippet"
if command -v go >/dev/null 2>&1; then
  echo "SKIP go: a Go toolchain is here, but its module is not fetched by this script; docs/examples/go/main.go is untested"
else
  echo "SKIP go: no Go toolchain on this machine; docs/examples/go/main.go is untested"
fi
skipped=$((skipped + 1))

echo "== docs match what they show and generate"
step snippets python3 docs/tools/check_snippets.py
if [ "$python_ok" = 1 ]; then
  unittests gen-api-tests "$VENV/bin/python" docs/tools/test_gen_api.py
fi
check gen-api-check python3 docs/tools/gen_api.py --check
unittests gen-flags-tests python3 docs/tools/test_gen_flags.py
if [ "$binaries_ok" = 1 ]; then
  check gen-flags-check python3 docs/tools/gen_flags.py --check
fi
unittests check-docs-tests python3 docs/tools/test_check_docs.py
if [ "$binaries_ok" = 1 ]; then
  # After the snippet checks, which record the library versions they ran with.
  step check-docs python3 docs/tools/check_docs.py
fi

echo "docs: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
