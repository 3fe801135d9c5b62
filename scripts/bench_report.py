#!/usr/bin/env python3
"""The two helpers of scripts/bench.sh (standard library only).

  bench_report.py watch ROOT_PID OUT   while ROOT_PID lives, every 10 s, note each process
                                       outside ROOT_PID's tree that used 10 % of a core or
                                       more over one second ("what else ran")
  bench_report.py render RESULTS DOC   write DOC (docs/benchmarks.md) from one run's results:
                                       RESULTS/run.txt (the run's header), RESULTS/NAME.txt
                                       (each bench's output), RESULTS/others.txt (from watch),
                                       and benches/notes/NAME.md (what each bench measures and
                                       how to read it, without figures)
"""

import collections
import os
import sys
import time

BENCHES = ["warmer", "inspect", "cache", "api", "registry_api", "onerepo", "bigrepo", "memory", "discovery"]
TITLES = {
    "warmer": "Registry requests per pass, against Flux v1 (modelled)",
    "inspect": "Inspect against the registry's own rate",
    "cache": "Cache reads and writes against raw memcached",
    "api": "Read API latency under load",
    "registry_api": "Registry API rate against the registry's own",
    "onerepo": "One repository at registry speed, and per-host ceilings",
    "bigrepo": "One large repository warmed and read back",
    "memory": "Operator memory with 1,000 watches",
    "discovery": "Discovery of 1,000 Deployments' images",
}


def cpu_times():
    """utime + stime (clock ticks), parent pid and command of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command is in parentheses and may hold spaces.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry)] = (int(fields[11]) + int(fields[12]), int(fields[1]), comm)
    return out


def tree(root, procs):
    children = collections.defaultdict(list)
    for pid, (_, ppid, _) in procs.items():
        children[ppid].append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children[pid])
    return seen


def watch(root, out_path):
    ticks = os.sysconf("SC_CLK_TCK")
    with open(out_path, "a") as out:
        while os.path.exists(f"/proc/{root}"):
            before = cpu_times()
            time.sleep(1)
            after = cpu_times()
            ours = tree(root, after) | {os.getpid()}
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            for pid, (t1, _, comm) in after.items():
                if pid in ours or pid not in before:
                    continue
                pct = 100.0 * (t1 - before[pid][0]) / ticks
                if pct >= 10:
                    out.write(f"{stamp} {pid} {pct:.0f} {comm}\n")
            out.flush()
            time.sleep(9)


def others_summary(path):
    """`comm (pid): seen N times, up to P % of a core` per process, busiest first."""
    if not os.path.exists(path):
        return []
    seen = {}
    with open(path) as f:
        for line in f:
            _, pid, pct, comm = line.rstrip("\n").split(" ", 3)
            n, top = seen.get((comm, pid), (0, 0))
            seen[(comm, pid)] = (n + 1, max(top, int(pct)))
    rows = sorted(seen.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
    return [f"`{comm}` (pid {pid}): in {n} samples, up to {top} % of a core"
            for (comm, pid), (n, top) in rows]


def render(results, doc):
    with open(os.path.join(results, "run.txt")) as f:
        run = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    others = others_summary(os.path.join(results, "others.txt"))
    outputs = {}
    for name in BENCHES:
        with open(os.path.join(results, f"{name}.txt")) as f:
            outputs[name] = f.read().rstrip("\n")
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by scripts/bench.sh from one run; do not edit by hand. What each bench",
        "     measures and how to read it: benches/notes/NAME.md. -->",
        "",
        f"Every figure on this page comes from **one run of `scripts/bench.sh`** on `{run['branch']}` at",
        f"commit `{run['commit']}`{run.get('dirty', '')}, from {run['started']} to {run['finished']} (UTC): the script wrote",
        "the page from that run's output, and no figure was typed by hand. The notes on what",
        "each bench measures and how to read it come from `benches/notes/`.",
        "",
        f"**Machine:** {run['cores']} cores ({run['cpu']}), {run['memory']} of memory, {run['kernel']};",
        f"load average {run['load_before']} before the run and {run['load_after']} after.",
        "",
        "**What else ran:** every 10 s the script looked for processes outside the benchmarks",
        "that used 10 % of a core or more over one second.",
    ]
    if others:
        lines.append("It saw:")
        lines += [f"- {o}" for o in others]
    else:
        lines.append("It saw none.")
    lines += [
        "",
        "The benches run one after another (never in parallel). Each compares regcache with a",
        "baseline doing the same work at the same concurrency in the same run (the registry",
        "serving the same requests raw, memcached serving the same items raw), so read the",
        "ratios; absolute times move with the machine. Rerun with `scripts/bench.sh` (about",
        "half an hour; it needs memcached, docker-registry and the Kubernetes test binaries, which",
        "`scripts/test.sh` installs); `scripts/bench.sh NAME...` runs some benches without",
        "rewriting this page.",
        "",
        "## Summary against the targets of the design",
        "",
        "| target | measured | bench |",
        "|---|---|---|",
    ]
    for name in BENCHES:
        for line in outputs[name].splitlines():
            if line.startswith("summary | "):
                _, target, measured = [p.strip() for p in line.split(" | ", 2)]
                lines.append(f"| {target} | {measured} | {name} |")
    lines += [
        "",
        "Target not measured here: the cold warm against a `skopeo inspect` loop.",
    ]
    for name in BENCHES:
        with open(os.path.join("benches", "notes", f"{name}.md")) as f:
            notes = f.read().strip()
        lines += [
            "",
            f"## {TITLES[name]} — `cargo bench --bench {name}`",
            "",
            notes,
            "",
            "```",
            outputs[name],
            "```",
        ]
    with open(doc, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "render":
        render(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
