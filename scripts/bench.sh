#!/usr/bin/env bash
# Runs the benchmarks one after another (they share the machine's cores, so never in
# parallel), keeps each one's output in DIR (default target/bench-results), and, when it ran
# all of them, writes docs/benchmarks.md from this one run (scripts/bench_report.py): the
# machine, what else ran meanwhile, a summary against the design's targets and each bench's
# output. Extra arguments name the benches to run (then the page is left alone).
#
# The page is written only from a clean checkout of main, so that every figure on it comes
# from code anyone can check out; BENCH_ALLOW_DIRTY=1 runs anyway and says so on the page.
# Needs memcached, docker-registry and, for `memory` and `discovery`, the Kubernetes test binaries
# (scripts/testbin.sh, run here); scripts/test.sh installs them all. A bench
# that fails (missing data, a server that did not start) stops the script; see DIR/NAME.err.
#
# Dataset sizes are the benches' defaults, except bigrepo, which runs at the design's
# 200,000 tags (BIGREPO_TAGS to change it; about 7 minutes and 6 GB of seeded storage).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${BENCH_RESULTS:-target/bench-results}"
mkdir -p "$out"
benches=("$@")
write_page=0
if [[ ${#benches[@]} -eq 0 ]]; then
    benches=(warmer inspect cache api registry_api onerepo bigrepo memory discovery)
    write_page=1
fi

REGCACHE_TESTBIN="$(scripts/testbin.sh)"
export REGCACHE_TESTBIN
# wrk is the onerepo bench's load generator (the registry's own rate).
if ! command -v wrk >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

branch="$(git rev-parse --abbrev-ref HEAD)"
commit="$(git rev-parse --short HEAD)"
dirty=""
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
    dirty=" with uncommitted changes"
fi
if [[ $write_page == 1 && ( "$branch" != main || -n "$dirty" ) && "${BENCH_ALLOW_DIRTY:-0}" != 1 ]]; then
    echo "bench.sh: docs/benchmarks.md is written from a clean checkout of main (here: $branch$dirty);" >&2
    echo "          commit or stash, or set BENCH_ALLOW_DIRTY=1 to run anyway" >&2
    exit 2
fi

cargo bench --no-run "${benches[@]/#/--bench=}"

started="$(date -u +%FT%TZ)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
: > "$out/others.txt"
python3 scripts/bench_report.py watch $$ "$out/others.txt" &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT

for b in "${benches[@]}"; do
    env=()
    if [[ $b == bigrepo ]]; then
        env=(BENCH_TAGS="${BIGREPO_TAGS:-200000}" BENCH_READS="${BENCH_READS:-5}")
    fi
    echo "== cargo bench --bench $b ($(date -u +%FT%TZ), $(nproc) cores${env:+, ${env[*]}})" | tee "$out/$b.txt"
    env "${env[@]}" cargo bench --bench "$b" 2>"$out/$b.err" | tee -a "$out/$b.txt"
done

if [[ $write_page == 1 ]]; then
    {
        echo "branch=$branch"
        echo "commit=$commit"
        echo "dirty=$dirty"
        echo "started=$started"
        echo "finished=$(date -u +%FT%TZ)"
        echo "cores=$(nproc)"
        echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
        echo "memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
        echo "kernel=Linux $(uname -r)"
        echo "load_before=$load_before"
        echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
    } > "$out/run.txt"
    python3 scripts/bench_report.py render "$out" docs/benchmarks.md
    echo "bench.sh: wrote docs/benchmarks.md from this run ($out)"
fi
