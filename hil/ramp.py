"""The rate ramp: tcpreplay offers SYNs to the board's capture port at rising rates until
the sensor loses some; the highest lossless rate and the sensor's CPU time per packet.

Each step has a destination port of its own, so the central database says exactly what
the sensor counted of it; a step is lossless when central counted every packet tcpreplay
reports sent, nothing late, and the summaries report no capture drop.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path
from typing import Any

from hil.lab import DARK4, Board, totals

_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def syn_pcap(path: Path, dst_mac: str, src_mac: str, port: int, count: int) -> None:
    """`count` Ethernet frames: IPv4 TCP SYNs to the dark /24, one port."""
    from hil.send import ipv4, tcp

    dmac, smac = (bytes.fromhex(m.replace(":", "")) for m in (dst_mac, src_mac))
    base = DARK4.rsplit(".", 1)[0]
    out = [_PCAP_HEADER]
    for i in range(count):
        dst = f"{base}.{(i % 250) + 1}"
        seq, ip_id = 0x8000 + i, 20000 + i % 30000
        frame = dmac + smac + b"\x08\x00" + ipv4("192.0.2.1", dst, 6,
                                                 tcp(30000 + i % 30000, port, seq), ip_id=ip_id)
        out.append(struct.pack("<IIII", 0, i, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def replay(b: Board, pcap: Path, pps: int, loops: int) -> tuple[int, float]:
    """tcpreplay into the scanner's capture port: (packets sent, achieved pps)."""
    r = b.lab.scan("tcpreplay", "-i", b.lab.scanner_if, f"--pps={pps}", f"--loop={loops}",
                   str(pcap), timeout=600)
    sent = re.search(r"Actual: (\d+) packets", r.stdout)
    rated = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", r.stdout)
    if sent is None:
        raise AssertionError(f"tcpreplay said:\n{r.stdout}\n{r.stderr}")
    return int(sent.group(1)), float(rated.group(1)) if rated else 0.0


def ramp(b: Board, rates: list[int], step_s: float) -> list[dict[str, Any]]:
    """Run the ramp; stop after the first lossy step."""
    steps: list[dict[str, Any]] = []
    t = b.target
    for i, rate in enumerate(rates):
        port = 40000 + i
        per_file = max(1, min(rate, 20000))
        count = max(1, int(rate * step_s))
        loops = max(1, -(-count // per_file))
        pcap = b.lab.dir / f"ramp-{port}.pcap"
        syn_pcap(pcap, t.capture_mac, b.lab.scanner_mac, port, per_file)
        dropped0 = sum(s.summary.health.get("capture_dropped", 0) for s in b.summaries())
        cpu0 = t.cpu_seconds("sensor")
        sent, achieved = replay(b, pcap, rate, loops)
        done = time.time()
        ss = b.wait_sealed_after(done, timeout=60)
        cpu = t.cpu_seconds("sensor") - cpu0
        got = totals(ss)
        counted = got["ports"].get(f"tcp/{port}", 0)
        dropped = sum(s.summary.health.get("capture_dropped", 0) for s in ss) - dropped0
        steps.append({"rate": rate, "achieved": achieved, "sent": sent, "counted": counted,
                      "dropped": dropped, "cpu_us_per_packet": cpu / max(sent, 1) * 1e6,
                      "late": got["late"],
                      "lossless": counted == sent and dropped == 0 and got["late"] == 0})
        pcap.unlink()
        if not steps[-1]["lossless"]:
            break
    return steps
