#!/usr/bin/env bash
# Runs every benchmark one after another (they share the machine's cores, so never in
# parallel) and keeps each one's output in DIR (default target/bench-results), as quoted in
# docs/benchmarks.md. Extra arguments name the benches to run (default: all).
# Needs memcached, docker-registry and, for `memory`, the API emulator's venv
# (tests/e2e/setup.sh, run by the bench itself); scripts/test.sh installs them. A bench
# that fails (missing data, a server that did not start) stops the script; see DIR/NAME.err.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${BENCH_RESULTS:-target/bench-results}"
mkdir -p "$out"
benches=("$@")
if [[ ${#benches[@]} -eq 0 ]]; then
    benches=(warmer inspect cache api bigrepo memory)
fi
cargo bench --no-run "${benches[@]/#/--bench=}"
for b in "${benches[@]}"; do
    echo "== cargo bench --bench $b ($(date -u +%FT%TZ), $(nproc) cores)" | tee "$out/$b.txt"
    cargo bench --bench "$b" 2>"$out/$b.err" | tee -a "$out/$b.txt"
done
