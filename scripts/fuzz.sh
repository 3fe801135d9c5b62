#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds (default 20), one
# after another, and prints each target's figures. Exits non-zero on the first crash, leak,
# timeout or out-of-memory; the input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   REGCACHE_FUZZ_LOGS=DIR scripts/fuzz.sh 600    # keep the libFuzzer logs
#
# Works on the stable toolchain: cargo-fuzz needs `-Zsanitizer=address`, which
# RUSTC_BOOTSTRAP=1 unlocks on a stable rustc (the sanitizer runtimes ship with stable's
# rust-std). cargo-fuzz is installed when missing, at the pinned version.
#
# New inputs go to fuzz/corpus-run/<target>/ (git-ignored), so repeated runs build on each
# other; the checked-in seeds in fuzz/corpus/<target>/ are read, never written. A crash
# worth keeping is copied into fuzz/corpus/<target>/crash-<what> by hand, where
# tests/it/fuzz.rs replays it on every `cargo test`. Figures and commands: docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# 0.13.2 builds with stable 1.95 and has --fuzz-dir; bump deliberately.
CARGO_FUZZ_VERSION=0.13.2
# A single input taking longer than this is a hang.
TIMEOUT_SECONDS=10
# The cache_store target holds a few MiB; far more means an allocation sized by input.
RSS_LIMIT_MB=2048

seconds="${1:-20}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

export RUSTC_BOOTSTRAP=1
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

start=$(date +%s)
# Every target in one cargo invocation: they share the whole (instrumented) dependency graph.
cargo fuzz build --fuzz-dir fuzz
echo "fuzz.sh: built the targets in $(($(date +%s) - start)) s" >&2

# REGCACHE_FUZZ_LOGS=DIR keeps each target's libFuzzer output as DIR/<target>.log.
logs="${REGCACHE_FUZZ_LOGS:-}"
if [ -z "$logs" ]; then
  logs=$(mktemp -d)
  trap 'rm -rf "$logs"' EXIT
fi
mkdir -p "$logs"
printf '%-18s %10s %8s %6s %6s %6s %5s\n' target execs exec/s cov ft corpus secs
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus-run/$target"
  log="$logs/$target.log"
  if ! cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus-run/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout="$TIMEOUT_SECONDS" -rss_limit_mb="$RSS_LIMIT_MB" \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  # The last status line: "#N  DONE  cov: C ft: F corp: K/S ... exec/s: E ...".
  status=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$status")
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")
  printf '%-18s %10s %8s %6s %6s %6s %5s\n' "$target" "$execs" "$rate" "$cov" "$ft" "$corp" "$secs"
done
echo "fuzz.sh: ${#targets[@]} targets, ${seconds} s each, $(($(date +%s) - start)) s in all" >&2
