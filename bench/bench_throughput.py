"""Benchmark: the hot path next to tcpdump, one table (issue 7; a benchmark, not a test).

    python -m bench.bench_throughput [--packets 1000000] [--runs 5] [--file F]
                                     [--live-seconds 60] [--live-rates 200000,...] [--no-live]
                                     [--results bench/results.md] [--json]
    python -m bench.bench_throughput --e2e [--runs 20] [--file F] [--e2e-old TREE]

Rows, each as packets/s and as a ratio to tcpdump, measured side by side on the same
generated capture in the same run (warm cache, median of --runs, runs interleaved):

- generator: the capture (`bench.synth`), its size and frame count;
- `tcpdump -n -r F -w /dev/null`: the reference reader;
- C `pcap_dispatch`: a ten-line C program with an empty callback, compiled on the fly;
- replay (kernel): `sensor.fast._fast` decoding and aggregating F, in process;
- replay (CLI): `teiten replay F --out DIR` end to end: interpreter start-up, imports,
  decode, aggregate, summaries built, encoded and written durably (fsync);
- replay (reference): the pure-Python path (`teiten replay --reference`), once;
- live: highest lossless rate of the daemon (`sensor.edges.daemon.Daemon.run`: capture thread,
  timer, SIGTERM flush; the compiled kernel when built; summaries kept in memory instead
  of signed into the spool) in a network namespace while `tcpreplay --pps=N` sends F's
  darknet frames into the scanner side of a veth, N x --live-seconds frames per rate:
  zero kernel drops and every frame counted;
- RSS at the source cap (one hour of 262,144 sources) and under a spoofed flood.

The table is printed and written, with a description of the machine, to --results.

`--e2e` measures only what a user sees: `teiten replay F --darknet ... --out DIR` (the
installed script, interpreter start-up included) and `python -m sensor.cli replay ...`,
each interleaved with `tcpdump -n -r F -w /dev/null`, --runs times, and prints medians,
minima and the ratios to tcpdump's median; they replace their own section of --results
(a full run keeps that section, and bench.bench_ab's, below its table).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]

DISPATCH_C = r"""
#include <pcap/pcap.h>
#include <stdio.h>
static void cb(u_char *u, const struct pcap_pkthdr *h, const u_char *b) { ++*(long *)u; }
int main(int argc, char **argv) {
    char err[PCAP_ERRBUF_SIZE]; long n = 0;
    pcap_t *p = pcap_open_offline(argv[1], err);
    if (p == NULL) { fprintf(stderr, "%s\n", err); return 1; }
    pcap_dispatch(p, -1, cb, (u_char *)&n);
    printf("%ld\n", n); pcap_close(p); return 0;
}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wall(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd, env=env)
    return time.perf_counter() - start


def kernel_replay(path: str) -> tuple[float, int]:
    """Decode + aggregate + summaries (not encoded), in this process: (seconds, frames)."""
    from sensor.edges.replay import replay

    # What the replay imports as it goes (`teiten replay` loads the output side while it
    # counts), imported before the clock starts: this times the replay, not the imports.
    for name in ("wire.summary", "sensor.core.aggregate", "sensor.fast.pack"):
        importlib.import_module(name)
    out: list[Any] = []
    start = time.perf_counter()
    stats = replay([path], darknet=DARKNET, sensor_id="bench", emit=out.append)
    return time.perf_counter() - start, stats.frames


# ---------------------------------------------------------------- memory (subprocess)


def _tcp_frame(src: int, dst: int, dport: int, seq: int, ip_id: int, ttl: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, ip_id, 0, ttl, 6, 0,
                     src.to_bytes(4, "big"), dst.to_bytes(4, "big"))
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, seq, 0, 0x50, 0x02, 1024, 0, 0)
    return b"\xb8\x27\xeb\x0a\x0b\x0c\x00\x19\xe8\x12\x34\x56\x08\x00" + ip + tcp


def rss_kib() -> tuple[int, int]:
    cur = peak = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cur, peak


def heap_in_use_mib() -> float:
    """glibc's bytes in use (mallinfo2: arena + mmap'd blocks), to tell state from RSS."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    mi = libc.mallinfo2()
    return round(float(mi.uordblks + mi.hblkhd) / 2**20, 1)


def memory_worker(scenario: str, flood_packets: int) -> dict[str, Any]:
    """One hour's state in the compiled kernel, fed frames in batches of 4096."""
    from sensor.core.limits import Limits
    from sensor.fast.kernel import FastHourlyAggregation

    limits = Limits()
    agg = FastHourlyAggregation(1, limits=limits)
    hour = 1_800_000_000 - 1_800_000_000 % 3600
    ts0 = hour * 1_000_000
    block16 = 0xC6330000
    rng = random.Random(1)
    base_rss, _ = rss_kib()
    batch: list[tuple[int, int, bytes]] = []
    checkpoints: list[float] = []
    heap: list[float] = []
    every = 500_000 if scenario == "cap" or flood_packets <= 5_000_000 else 1_000_000
    n = 0

    def put(ts: int, frame: bytes) -> None:
        nonlocal n, batch
        batch.append((ts, len(frame), frame))
        n += 1
        if len(batch) == 4096:
            agg.feed_frames(batch)
            batch = []
        if n % every == 0:
            checkpoints.append(round(rss_kib()[0] / 1024, 1))
            heap.append(heap_in_use_mib())

    if scenario == "cap":  # bench_memory's `cap`: the source cap, 4 SYNs each, 8 sweepers
        for i in range(limits.max_sources):
            src = 0x0B000000 + i * 7
            for k in range(4):
                put(ts0 + i, _tcp_frame(src, block16 + rng.getrandbits(16),
                                        rng.choice((23, 22, 80, 443, 8080, 2323)) + k,
                                        rng.getrandbits(32), 1, 64))
        for s in range(8):
            for d in range(65536):
                put(ts0 + d, _tcp_frame(0x0C000000 + s, block16 + d, 23, d, 54321, 255))
    else:  # random spoofed sources far past the cap
        for i in range(flood_packets):
            put(ts0 + i, _tcp_frame(rng.getrandbits(32), block16 + rng.getrandbits(16),
                                    rng.getrandbits(16), rng.getrandbits(32),
                                    rng.getrandbits(16), rng.getrandbits(8)))
    if batch:
        agg.feed_frames(batch)
    cur, peak = rss_kib()
    closed = agg.flush()
    summary = closed[0].aggregator.finish(sensor_id="bench")
    return {
        "scenario": scenario, "packets": n, "source_rows": len(summary.sources),
        "sources_overflow": summary.sources_overflow,
        "rss_mib": round(cur / 1024, 1), "state_mib": round((cur - base_rss) / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1), "every": every, "rss_every_mib": checkpoints,
        "heap_every_mib": heap,
    }


def measure_memory(flood_packets: int) -> list[dict[str, Any]]:
    results = []
    for scenario in ("cap", "flood"):
        log(f"memory: {scenario} ...")
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_throughput", "--memory-worker", scenario,
             "--flood-packets", str(flood_packets)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        ).stdout
        results.append(json.loads(out))
    return results


# ---------------------------------------------------------------- live (namespaces)


LIVE_CONFIG = """
[sensor]
id = "bench-live"
topology = "dedicated"
key = "/nonexistent/bench.key"
[capture]
interface = "{iface}"
darknet = {darknet}
[spool]
path = "/nonexistent/spool"
[time]
wait_for_sync_s = 0
"""


class CountingSealer:
    """The daemon's sealer, minus signing and the spool: keeps the summaries it is given."""

    def __init__(self) -> None:
        self.summaries: list[Any] = []

    def seal_and_spool(self, summary: Any) -> None:
        self.summaries.append(summary)

    def close(self) -> None:
        pass


def live_worker(iface: str, ready_file: str) -> dict[str, Any]:
    """Inside the sensor namespace: the real daemon (`sensor.edges.daemon.Daemon.run`, its capture
    thread, timer and SIGTERM flush) with the board's default capture settings, until SIGTERM."""
    import threading
    import tomllib

    from sensor.edges.config import parse_config
    from sensor.edges.daemon import Daemon

    cfg = parse_config(tomllib.loads(LIVE_CONFIG.format(iface=iface,
                                                        darknet=json.dumps(DARKNET))))
    sealer = CountingSealer()
    daemon = Daemon(cfg, sealer=sealer)

    def ready() -> None:
        daemon._capture_open.wait(30)
        Path(ready_file).write_text("ready")

    threading.Thread(target=ready, daemon=True).start()
    cpu0 = time.process_time()
    rc = daemon.run()  # SIGTERM: stop, drain the ring, seal the partial hour
    counted = sum(s.packets + s.malformed_total + int(s.health.get("late_packets", 0))
                  for s in sealer.summaries)
    received, dropped, if_dropped = daemon._totals
    return {"frames": daemon.frames, "counted": counted, "received": received,
            "dropped": dropped, "if_dropped": if_dropped, "compiled": daemon.compiled,
            "buffer_bytes": cfg.capture.buffer_bytes, "exit": rc,
            "cpu_s": round(time.process_time() - cpu0, 2)}


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def live_rates(pcap: str, rates: list[int], seconds: int, tmp: Path) -> list[dict[str, Any]]:
    """Each rate for `seconds`: tcpreplay into a veth, capture on its peer."""
    from sensor.core.bpf import darknet_filter

    # Only frames the sensor's filter keeps, so "sent" is exactly what must be counted.
    dark = str(tmp / "dark.pcap")
    sh("tcpdump", "-n", "-r", pcap, "-w", dark, darknet_filter(DARKNET, vlan=True))
    tag = f"{os.getpid() % 100000}"
    scanner, sensor = f"tt-scan-{tag}", f"tt-sens-{tag}"
    results = []
    try:
        sh("ip", "netns", "add", scanner)
        sh("ip", "netns", "add", sensor)
        sh("ip", "link", "add", "sc0", "netns", scanner, "type", "veth", "peer", "name", "cap0",
           "netns", sensor)
        for ns, dev in ((scanner, "sc0"), (sensor, "cap0")):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for rate in rates:
            count = rate * seconds
            ready = tmp / f"ready-{rate}"
            worker = subprocess.Popen(
                ["ip", "netns", "exec", sensor, sys.executable, "-m", "bench.bench_throughput",
                 "--live-worker", "cap0", "--ready-file", str(ready)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )
            deadline = time.monotonic() + 20
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            log(f"live: {rate:,} packets/s for {seconds} s ...")
            replay = subprocess.run(
                ["ip", "netns", "exec", scanner, "tcpreplay", f"--pps={rate}", "--loop=0",
                 f"--limit={count}", "--intf1=sc0", dark],
                capture_output=True, text=True,
            )
            time.sleep(1.0)
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=120)
            r = json.loads(out)
            achieved = None
            for line in replay.stdout.splitlines():
                if "Rated:" in line and "pps" in line:
                    achieved = float(line.split(",")[-1].split()[0])
            r.update({"rate": rate, "sent": count, "achieved_pps": achieved,
                      "lossless": r["frames"] == count == r["counted"] and r["dropped"] == 0
                      and r["if_dropped"] == 0})
            log(f"  sent {count:,} (tcpreplay {achieved or 0:,.0f} pps), captured "
                f"{r['frames']:,}, counted {r['counted']:,}, dropped {r['dropped']:,} -> "
                f"{'lossless' if r['lossless'] else 'LOSS'}")
            results.append(r)
    finally:
        subprocess.run(["ip", "netns", "del", scanner], capture_output=True)
        subprocess.run(["ip", "netns", "del", sensor], capture_output=True)
    return results


# ---------------------------------------------------------------- end to end (--e2e)


def size_of(pcap: str) -> str:
    return f"{os.path.getsize(pcap) / 2**20:,.0f} MiB"


def e2e(pcap: str, runs: int, tmp: Path, old: str | None = None) -> dict[str, Any]:
    """`teiten replay` as a user runs it, interleaved with tcpdump: seconds per run.

    `old`: a tree of an earlier commit with its extensions built (`git archive COMMIT
    sensor wire | tar -x -C TREE`, then its .so files), timed as `python -m sensor.cli`
    from there too, for a before/after in the same run."""
    script = Path(sys.executable).with_name("teiten")
    darknet = ",".join(DARKNET)
    cases = {
        "tcpdump": ["tcpdump", "-n", "-r", pcap, "-w", "/dev/null"],
        "teiten": [str(script), "replay", pcap, "--darknet", darknet, "--out", str(tmp / "a")],
        "python -m sensor.cli": [sys.executable, "-m", "sensor.cli", "replay", pcap, "--darknet",
                                 darknet, "--out", str(tmp / "b")],
    }
    if not script.exists():
        del cases["teiten"]
    envs: dict[str, dict[str, str] | None] = {k: None for k in cases}
    # As an installed package runs: its modules' bytecode cached (pip compiles a wheel's at
    # install).  Where PYTHONDONTWRITEBYTECODE is set (this machine's environment does) the
    # commands above compile every module of the project from source at each start.
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    name = "teiten" if "teiten" in cases else "python -m sensor.cli"
    cases[f"{name}, bytecode cached"] = [*cases[name][:-1], str(tmp / "c")]
    envs[f"{name}, bytecode cached"] = cached
    cwds = {k: ROOT for k in cases}
    if old:
        key = f"python -m sensor.cli, {old}"
        cases[key] = [*cases["python -m sensor.cli"][:-1], str(tmp / "d")]
        envs[key] = {**os.environ, "PYTHONPATH": old}
        cwds[key] = Path(old)
    for k, cmd in cases.items():  # warm the page cache (and write the bytecode cache)
        wall(cmd, envs[k], cwds[k])
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(runs):
        for name in list(cases)[i % len(cases):] + list(cases)[:i % len(cases)]:
            times[name].append(round(wall(cases[name], envs[name], cwds[name]), 4))
    frames = int(subprocess.run(["tcpdump", "-n", "-r", pcap, "--count"], capture_output=True,
                                text=True, check=True).stdout.split()[0])
    tcp = statistics.median(times["tcpdump"])
    return {"frames": frames, "runs": runs, "seconds": times,
            "median": {k: statistics.median(v) for k, v in times.items()},
            "min": {k: min(v) for k, v in times.items()},
            "x_tcpdump": {k: round(tcp / statistics.median(v), 3) for k, v in times.items()}}


# ---------------------------------------------------------------- the table


def sections(text: str) -> dict[str, str]:
    """The `## ` sections of a results file (the runs of --e2e and bench.bench_ab), by
    heading; a full run rewrites the table above them and keeps them."""
    found: dict[str, str] = {}
    parts = ("\n" + text).split("\n## ")[1:]
    for part in parts:
        found[part.splitlines()[0]] = "## " + part.rstrip("\n") + "\n"
    return found


def update_section(results: Path, heading: str, lines: list[str]) -> None:
    """Write (or replace) the section `## heading` of the results file."""
    text = results.read_text() if results.exists() else ""
    head = ("\n" + text).split("\n## ")[0].lstrip("\n")
    kept = sections(text)
    kept[heading] = "\n".join([f"## {heading}", "", *lines]).rstrip("\n") + "\n"
    results.write_text(head.rstrip("\n") + "\n" + "".join(f"\n{b}" for b in kept.values()))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    from sensor.edges import _pcap

    return (f"{cpu}, {os.cpu_count()} vCPU, {mem:,} MiB RAM; Linux {platform.release()}; "
            f"Python {platform.python_version()}; {_pcap.lib_version}; load average at start "
            f"{os.getloadavg()[0]:.2f}")


def render(rows: list[tuple[str, float | None, str]], tcpdump_pps: float) -> list[str]:
    lines = [f"| {'what':<48} | {'packets/s':>12} | {'× tcpdump':>9} | notes |",
             f"|{'-' * 50}|{'-' * 14}:|{'-' * 10}:|-------|"]
    for name, pps, note in rows:
        if pps is None:
            lines.append(f"| {name:<48} | {'—':>12} | {'—':>9} | {note} |")
        else:
            lines.append(f"| {name:<48} | {pps:>12,.0f} | {pps / tcpdump_pps:>9.3f} | {note} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--file", help="an existing capture instead of a generated one")
    ap.add_argument("--live-seconds", type=int, default=60)
    ap.add_argument("--live-rates", default="200000,300000,400000")
    ap.add_argument("--no-live", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the pure-Python replay")
    ap.add_argument("--flood-packets", type=int, default=2_000_000)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results.md"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--e2e", action="store_true",
                    help="only `teiten replay` end to end next to tcpdump (see above)")
    ap.add_argument("--e2e-old", metavar="TREE",
                    help="with --e2e: also time `python -m sensor.cli` from TREE (see e2e())")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    ap.add_argument("--live-worker", help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.flood_packets)))
        return 0
    if args.live_worker:
        print(json.dumps(live_worker(args.live_worker, args.ready_file)))
        return 0

    from sensor.fast import kernel as fastpath

    if not fastpath.available():
        log("sensor.fast._fast is not built: run `pip install -e .` (or `make install`) first")
        return 1
    described = machine()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        pcap = args.file or str(tmp / "bench.pcap")
        if not args.file:
            log(f"generating {args.packets:,} packets with bench.synth ...")
            subprocess.run([sys.executable, "-m", "bench.synth", "--out", pcap, "--truth",
                            str(tmp / "truth.json"), "--packets", str(args.packets), "--quiet"],
                           check=True, cwd=ROOT)
            # Written just now: flush it, or its writeback (150 MiB, due about 30 s later,
            # i.e. during the timed runs) takes CPU from the methods being timed.
            fd = os.open(pcap, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if args.e2e:
            r = e2e(pcap, args.runs, tmp, args.e2e_old)
            lines = [f"{r['frames']:,} frames ({size_of(pcap)}); {args.runs} runs of each, "
                     f"interleaved; {described}; "
                     f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
                     f"| {'command':<40} | median s | min s | × tcpdump |",
                     f"|{'-' * 42}|---------:|------:|----------:|"]
            for k in r["seconds"]:
                lines.append(f"| {k:<40} | {r['median'][k]:.4f} | {r['min'][k]:.4f} | "
                             f"{r['x_tcpdump'][k]:.3f} |")
            lines += ["", "```", json.dumps(r["seconds"]), "```"]
            if args.json:
                print(json.dumps(r, indent=2))
            else:
                print("\n".join(lines))
            if args.results:  # '' for none
                update_section(Path(args.results), "End to end: `teiten replay` next to "
                               "tcpdump (`python -m bench.bench_throughput --e2e`)", lines)
                log(f"written to {args.results}")
            return 0
        size = os.path.getsize(pcap)
        frames = int(subprocess.run(["tcpdump", "-n", "-r", pcap, "--count"],
                                    capture_output=True, text=True, check=True
                                    ).stdout.split()[0])
        dispatch = tmp / "dispatch"
        (tmp / "dispatch.c").write_text(DISPATCH_C)
        sh("gcc", "-O2", "-o", str(dispatch), str(tmp / "dispatch.c"), "-lpcap")

        out_dir = tmp / "out"
        cases: dict[str, Callable[[], float]] = {
            "tcpdump": lambda: wall(["tcpdump", "-n", "-r", pcap, "-w", "/dev/null"]),
            "dispatch": lambda: wall([str(dispatch), pcap]),
            "kernel": lambda: kernel_replay(pcap)[0],
            "cli": lambda: wall([sys.executable, "-m", "sensor.cli", "replay", pcap, "--out",
                                 str(out_dir)]),
        }
        for fn in cases.values():  # warm the page cache, imports, compiled code
            fn()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.runs):  # interleaved, so load changes hit every method alike
            log(f"run {i + 1}/{args.runs} ...")
            for name, fn in cases.items():
                times[name].append(fn())
        med = {k: statistics.median(v) for k, v in times.items()}
        kernel_frames = kernel_replay(pcap)[1]
        reference = None
        if not args.no_reference:
            log("reference (pure-Python) replay, once ...")
            reference = wall([sys.executable, "-m", "sensor.cli", "replay", pcap, "--out",
                              str(tmp / "ref"), "--reference"])
            same = all((tmp / "ref" / f.name).read_bytes() == f.read_bytes()
                       for f in out_dir.iterdir())
            if not same:
                log("ERROR: the reference and the compiled path wrote different summaries")
                return 1

        memory = measure_memory(args.flood_packets)
        live: list[dict[str, Any]] = []
        live_note = "not measured (--no-live)"
        if not args.no_live:
            if os.geteuid() != 0 or not shutil.which("tcpreplay"):
                live_note = "not measured: needs root and tcpreplay"
            else:
                rates = [int(r) for r in args.live_rates.split(",") if r]
                live = live_rates(pcap, rates, args.live_seconds, tmp)

    tcp_pps = frames / med["tcpdump"]
    rows: list[tuple[str, float | None, str]] = [
        ("generator capture (bench.synth)", None,
         f"{frames:,} frames, {size / 2**20:,.0f} MiB; {kernel_frames:,} pass the darknet "
         "filter"),
        ("tcpdump -n -r F -w /dev/null", tcp_pps, f"median of {args.runs}"),
        ("C pcap_dispatch, empty callback", frames / med["dispatch"], "the read limit"),
        ("replay, compiled kernel (in process)", frames / med["kernel"],
         "read + BPF + decode + aggregate + summaries"),
        ("replay, `teiten replay F --out DIR`", frames / med["cli"],
         "end to end: start-up, encode, fsync'd files"),
    ]
    if reference is not None:
        rows.append(("replay, `teiten replay --reference` (Python)", frames / reference,
                     "one run; same summary bytes checked"))
    lossless = [r for r in live if r["lossless"]]
    if live:
        # What tcpreplay achieved, not what it was asked for: on a busy host it falls short.
        def rate_of(r: dict[str, Any]) -> float:
            return float(min(r["rate"], r["achieved_pps"] or r["rate"]))

        best = max(lossless, key=rate_of) if lossless else None
        tried = ", ".join(
            f"asked {r['rate']:,} sent {rate_of(r):,.0f}: {'ok' if r['lossless'] else 'loss'}"
            for r in live)
        cpu = "; ".join(f"{r['cpu_s'] / r['sent'] * 1e6:.2f} µs CPU/packet at {rate_of(r):,.0f}"
                        for r in lossless)
        rows.append(("live, highest lossless rate", rate_of(best) if best else None,
                     f"{args.live_seconds} s per rate (tcpreplay --pps); {tried}; {cpu}"))
    else:
        rows.append(("live, highest lossless rate", None, live_note))
    for m in memory:
        rows.append((f"RSS, {m['scenario']} ({m['packets']:,} packets)", None,
                     f"RSS {m['rss_mib']} MiB (peak {m['peak_rss_mib']}), state "
                     f"{m['state_mib']} MiB, {m['source_rows']:,} source rows; every "
                     f"{m['every'] // 1000:,}k: {m['rss_every_mib']}"))
    table = render(rows, tcp_pps)
    result = {"machine": described, "frames": frames, "bytes": size, "runs": args.runs,
              "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
              "reference_s": reference, "memory": memory, "live": live,
              "table": table}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(table))
    text = ["# Benchmark results (`make bench`, bench/bench_throughput.py)", "",
            f"Machine: {described}.", "",
            f"Generated by `python -m bench.bench_throughput` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; ratios are to tcpdump "
            "in the same run.  Method and discussion: docs/performance.md.", "", *table, "",
            "Raw seconds per run:", "", "```", json.dumps(result["seconds"]), "```", ""]
    if live:
        text += ["Live runs:", "", "```", *(json.dumps(r) for r in live), "```", ""]
    results = Path(args.results)
    kept = sections(results.read_text()) if results.exists() else {}
    results.write_text("\n".join(text) + "".join(f"\n{body}" for body in kept.values()))
    log(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
