#!/usr/bin/env bash
# Runs every regcache test on a fresh Debian machine.
#
# Installs what the tests need when it is missing (memcached and the CNCF distribution
# registry are started by the test harness as real processes; openssl makes the test CA and
# token-signing keys; a Python venv holds the Kubernetes API emulator and the chart's
# tools), builds kube-apiserver, kubectl, etcd, helm and crane once with scripts/testbin.sh (the
# Kubernetes tests run against them; docs/testing.md), then runs the whole suite: the
# emulator's self-tests, the Helm chart's tests, then every Rust test with cargo-nextest,
# the fuzz properties among them.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# skopeo reads the test registry as an independent client, an oracle for regcache's view.
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
# tmux is the pseudo-terminal whose screen the progress display test captures.
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts memcached as a service on install; the tests start their own on free ports.

# The real Kubernetes binaries, built once from the Go module proxy and cached by version.
REGCACHE_TESTBIN="$(scripts/testbin.sh)"
export REGCACHE_TESTBIN

# The Kubernetes API emulator (kmock, PyPI), for the one fault a real API server cannot
# make on demand.
bash tests/emulator/setup.sh

# The emulator's own tests first: the fault matrix's status-conflict row relies on it.
tests/emulator/.venv/bin/python -m pytest -q tests/emulator
# The Helm chart and examples/ (helm-python-sdk, kubernetes-validate, check-jsonschema and
# yamllint come from the same venv).
tests/emulator/.venv/bin/python -m pytest -q tests/chart

# tests/it/fuzz.rs runs every fuzz property (src/fuzzing/) over the checked-in corpus and this
# many seeded mutations per target, on stable: the bounded fuzz run of CI (about half a
# minute). docs/fuzzing.md has the longer cargo-fuzz runs.
export REGCACHE_FUZZ_CASES="${REGCACHE_FUZZ_CASES:-20000}"
# cargo-nextest runs each test in its own process, so a hung test is ended and reported
# (.config/nextest.toml sets the limits) and its servers go with it.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked --quiet
fi
cargo nextest run --no-fail-fast "$@"

# The coverage-guided cargo-fuzz targets too, REGCACHE_FUZZ_SECONDS per target. Off by
# default: from cold, installing cargo-fuzz and building the instrumented targets takes far
# longer than the fuzzing itself (figures in docs/fuzzing.md).
fuzz_seconds="${REGCACHE_FUZZ_SECONDS:-0}"
if [ "$fuzz_seconds" != 0 ]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
