"""libpcap's verdict on a capture filter, before any capture is opened.

`sensor.core.bpf` builds the expression (pure); this edge asks libpcap whether it compiles
and whether it still lets every darknet block through (`compile_filter` on a dead handle:
no capture, no privilege), so `teiten config check` refuses what `teiten run` would choke
on or go blind with.
"""

from __future__ import annotations

from collections.abc import Sequence

from sensor.core.bpf import base_filter, check_extra, darknet_filter, parse_block
from sensor.core.linktypes import LINKTYPE_ETHERNET
from sensor.edges._pcap import PcapError, compile_filter, lib_version


def filter_problems(
    blocks: Sequence[str],
    exclude: Sequence[str] = (),
    extra: str | None = None,
    *,
    snaplen: int = 256,
    linktype: int = LINKTYPE_ETHERNET,
) -> list[tuple[str, str]]:
    """What libpcap says about the capture filter, as (field, reason): `extra_bpf` when the
    clause is refused, does not compile, or hides every packet to a darknet block, else
    `darknet`.  Compiles with `_pcap.compile_filter`: opens no capture, needs no
    privilege (a host name in the clause is resolved, as it would be at capture time).
    Blocks and exclusions are assumed valid (`base_filter` raises ValueError otherwise)."""
    clause = extra.strip() if extra else ""
    vlan = linktype == LINKTYPE_ETHERNET
    if clause:
        try:
            check_extra(clause)
        except ValueError as exc:
            return [("extra_bpf", str(exc))]
        try:
            compile_filter(clause, linktype, snaplen)
        except PcapError as exc:
            if "rejects all packets" in exc.message:
                return [("extra_bpf", f"{clause!r} matches no packet at all: the sensor "
                         "would capture nothing; fix it or remove extra_bpf")]
            return [("extra_bpf", f"{clause!r} does not compile: {exc.message} (libpcap "
                     f"{_lib_version()}; pcap-filter(7) has the syntax)")]
    try:
        compile_filter(darknet_filter(blocks, exclude, clause or None, vlan=vlan),
                       linktype, snaplen)
    except PcapError as exc:
        if clause and "rejects all packets" in exc.message:
            return [("extra_bpf", f"{clause!r} hides every packet to the darknet: the "
                     "sensor would capture nothing; fix it or remove extra_bpf")]
        field = "extra_bpf" if clause else "darknet"
        return [(field, f"the capture filter does not compile: {exc.message}")]
    if not clause:
        return []
    found = []
    nets = [parse_block(b) for b in blocks]
    excluded = [parse_block(b, "excluded block") for b in exclude]
    for net in nets:
        mine = [str(e) for e in excluded
                if e.version == net.version and e.subnet_of(net)]  # type: ignore[arg-type]
        try:
            compile_filter(base_filter([str(net)], mine, clause), linktype, snaplen)
        except PcapError as exc:
            if "rejects all packets" not in exc.message:
                found.append(("extra_bpf", f"with darknet block {net} alone the filter "
                              f"does not compile: {exc.message}"))
                continue
            found.append(("extra_bpf", f"{clause!r} hides every packet to darknet block "
                          f"{net}: that block would go dark; fix the clause or drop the "
                          "block"))
    return found


def _lib_version() -> str:
    return lib_version.removeprefix("libpcap version ").split(" ")[0]
