"""Benchmark: two builds of sensor.fast._fast side by side, interleaved (A/B; not a test).

    python -m bench.bench_ab --a OLD.so [--b NEW.so] [--file F | --packets 1000000]
                             [--rounds 20] [--reps 3] [--json]

Each round runs, in separate processes and in alternating order (A B, then B A, ...), the
in-process replay of `bench.bench_throughput` (`sensor.edges.replay.replay()`: read, BPF,
decode, aggregate, summaries built) --reps times with build A and with build B, and
`tcpdump -n -r F -w /dev/null` once, so that a change in the machine's load hits both builds
alike.  The Python code is the working tree's in both; only the extension differs (each
worker loads its .so as `sensor.fast._fast` before anything imports it).  --b defaults to
the working tree's build.  Prints medians, minima and the ratios to tcpdump's median.

To compare with the build of a commit:

    git show COMMIT:sensor/fast/_fast.c > /tmp/a/_fast.c   # or its src/ files
    (a setup.py with the same Extension, `build_ext`, then --a the .so it made)

When the Python side changed too (the working tree's Python then cannot drive the old
extension), compare whole trees instead: --a-tree TREE runs A from TREE's own `sensor/` and
`wire/` with their built extensions (`git worktree add TREE COMMIT`, then
`python setup.py build_ext --inplace` there); B is the working tree, or --b-tree.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_throughput import kernel_replay, update_section

ROOT = Path(__file__).resolve().parents[1]


def load_build(so: str) -> None:
    """Make `so` the process's sensor.fast._fast (before sensor.fast is imported)."""
    loader = importlib.machinery.ExtensionFileLoader("sensor.fast._fast", so)
    spec = importlib.util.spec_from_file_location("sensor.fast._fast", so, loader=loader)
    if spec is None:
        raise SystemExit(f"cannot load {so}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sensor.fast._fast"] = module
    loader.exec_module(module)


def worker(so: str, path: str, reps: int) -> list[float]:
    load_build(so)
    from sensor.fast import _fast  # only now: `so` must be the _fast it finds

    if _fast.__file__ != so:
        raise SystemExit(f"loaded {_fast.__file__}, not {so}")
    return [round(kernel_replay(path)[0], 5) for _ in range(reps)]


def worker_tree(tree: str, path: str, reps: int) -> list[float]:
    """The in-process replay of a whole tree: its sensor/ and wire/, found before the
    working tree's (nothing here has imported them yet; bench/ stays the working tree's)."""
    sys.path.insert(0, tree)
    import sensor

    if not str(sensor.__file__).startswith(tree):
        raise SystemExit(f"loaded {sensor.__file__}, not the tree {tree}")
    return [round(kernel_replay(path)[0], 5) for _ in range(reps)]


def run_worker(build: tuple[str, str], pcap: str, reps: int) -> list[float]:
    """One worker process's replay times for build (kind "so" or "tree", path)."""
    kind, path = build
    flag = "--worker-tree" if kind == "tree" else "--worker"
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_ab", flag, path, "--file", pcap, "--reps", str(reps)],
        check=True, capture_output=True, text=True, cwd=ROOT).stdout
    times: list[float] = json.loads(out)
    return times


def default_build() -> str:
    from sensor.fast import _fast  # in the parent only: workers load their own build first

    return str(_fast.__file__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", help="build A (.so), e.g. the previous commit's")
    ap.add_argument("--b", help="build B (.so); default: the working tree's")
    ap.add_argument("--a-tree", help="build A as a whole tree (its Python and its .so)")
    ap.add_argument("--b-tree", help="build B as a whole tree")
    ap.add_argument("--file", help="an existing capture instead of a generated one")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3, help="replays per process")
    ap.add_argument("--label-a", default="A", help="what build A is, for the results file")
    ap.add_argument("--label-b", default="B", help="what build B is")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results.md"),
                    help="results file whose A/B section this run replaces ('' for none)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-tree", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.file, args.reps)))
        return 0
    if args.worker_tree:
        print(json.dumps(worker_tree(args.worker_tree, args.file, args.reps)))
        return 0
    if not args.a and not args.a_tree:
        ap.error("--a BUILD.so or --a-tree TREE is required")
    builds = {
        "A": ("tree", os.path.abspath(args.a_tree)) if args.a_tree
        else ("so", os.path.abspath(args.a)),
        "B": ("tree", os.path.abspath(args.b_tree)) if args.b_tree
        else ("so", os.path.abspath(args.b or default_build())),
    }
    machine_and_load = f"{os.cpu_count()} vCPU, load average at start {os.getloadavg()[0]:.2f}"
    with tempfile.TemporaryDirectory() as tmp:
        pcap = args.file
        if not pcap:
            pcap = str(Path(tmp) / "bench.pcap")
            print(f"generating {args.packets:,} packets with bench.synth ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "bench.synth", "--out", pcap, "--truth",
                            str(Path(tmp) / "truth.json"), "--packets", str(args.packets),
                            "--quiet"], check=True, cwd=ROOT)
            fd = os.open(pcap, os.O_RDONLY)  # written back now, not during the timed runs
            os.fsync(fd)
            os.close(fd)
        for build in builds.values():  # warm the page cache and each tree's lazy imports
            run_worker(build, pcap, 1)
        times: dict[str, list[float]] = {"A": [], "B": [], "tcpdump": []}
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                times[name] += run_worker(builds[name], pcap, args.reps)
            start = time.perf_counter()
            subprocess.run(["tcpdump", "-n", "-r", pcap, "-w", "/dev/null"], check=True,
                           capture_output=True)
            times["tcpdump"].append(round(time.perf_counter() - start, 5))
            print(f"round {r + 1}/{args.rounds}: A {statistics.median(times['A']):.4f} s, "
                  f"B {statistics.median(times['B']):.4f} s, tcpdump "
                  f"{statistics.median(times['tcpdump']):.4f} s (medians so far)",
                  file=sys.stderr)
    tcp = statistics.median(times["tcpdump"])
    result = {
        "builds": {k: f"{kind} {path}" for k, (kind, path) in builds.items()},
        "rounds": args.rounds, "reps": args.reps, "seconds": times,
        "median": {k: statistics.median(v) for k, v in times.items()},
        "min": {k: min(v) for k, v in times.items()},
        "x_tcpdump": {k: round(tcp / statistics.median(times[k]), 3) for k in ("A", "B")},
        "b_over_a": round(statistics.median(times["B"]) / statistics.median(times["A"]), 4),
    }
    n = len(times["A"])
    labels = {"A": args.label_a, "B": args.label_b}
    lines = [f"{args.rounds} rounds (A and B in alternating order, {args.reps} replays per "
             f"process, then tcpdump once); {machine_and_load}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| build | median s | first quartile s | min s | × tcpdump (medians) |",
             "|---|---:|---:|---:|---:|"]
    def q1(v: list[float]) -> float:
        return statistics.quantiles(v, n=4, method="inclusive")[0] if len(v) > 1 else v[0]

    for k in ("A", "B"):
        lines.append(f"| {k}: {labels[k]} | {result['median'][k]:.4f} | {q1(times[k]):.4f} | "
                     f"{result['min'][k]:.4f} | {result['x_tcpdump'][k]:.3f} |")
    lines += [f"| tcpdump -n -r F -w /dev/null | {tcp:.4f} | {q1(times['tcpdump']):.4f} | "
              f"{result['min']['tcpdump']:.4f} | 1.000 |", "",
              f"B/A (medians): {result['b_over_a']:.4f}; {n} replays of each build.", "",
              "```", json.dumps(times), "```"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(lines))
    if args.results:
        update_section(Path(args.results), "In-process replay, two builds of _fast interleaved "
                       "(`python -m bench.bench_ab`)", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
