"""bench.synth: determinism, file formats read back, truth consistency, cross-checks by tcpdump.

tcpdump (real libpcap BPF) is the independent reader: it never shares the generator's code.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.synth import (
    LINKTYPES,
    MALFORMED_REASONS,
    SynthConfig,
    checksum,
    generate,
    main,
    truth_to_dict,
    truth_to_json,
    write_pcap,
    write_pcapng,
)

DATA = Path(__file__).resolve().parents[1] / "data"
NET4, NET6 = "198.51.100.0/24", "2001:db8:dead::/48"
_D = f"(dst net {NET4} or dst net {NET6})"
DARKNET_FILTER = f"{_D} or (vlan and ({_D} or (vlan and {_D})))"
TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"


def tcpdump_count(path: Path, flt: str) -> int:
    out = subprocess.run([TCPDUMP, "-n", "--count", "-r", str(path), flt],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def totals(truth: dict[str, Any], key: str) -> int:
    return sum(h[key] for h in truth["hours"])


def malformed_total(truth: dict[str, Any]) -> int:
    return sum(sum(h["malformed"].values()) for h in truth["hours"])


def read_pcap(path: Path) -> tuple[int, int, list[tuple[int, bytes, int]]]:
    raw = path.read_bytes()
    magic, major, minor, _tz, _sig, snaplen, linktype = struct.unpack_from("<IHHiIII", raw)
    assert (magic, major, minor) == (0xA1B2C3D4, 2, 4)
    out, off = [], 24
    while off < len(raw):
        sec, usec, incl, orig = struct.unpack_from("<IIII", raw, off)
        assert usec < 1_000_000
        out.append((sec * 1_000_000 + usec, raw[off + 16 : off + 16 + incl], orig))
        off += 16 + incl
    assert off == len(raw)
    return snaplen, linktype, out


def read_pcapng(path: Path) -> tuple[int, int, list[tuple[int, bytes, int]]]:
    raw = path.read_bytes()
    off, out, linktype, snaplen = 0, [], -1, -1
    types = []
    while off < len(raw):
        btype, blen = struct.unpack_from("<II", raw, off)
        assert blen % 4 == 0 and struct.unpack_from("<I", raw, off + blen - 4)[0] == blen
        types.append(btype)
        if btype == 0x0A0D0D0A:
            bom, major, _minor = struct.unpack_from("<IHH", raw, off + 8)
            assert (bom, major) == (0x1A2B3C4D, 1)
        elif btype == 1:
            linktype, _r, snaplen = struct.unpack_from("<HHI", raw, off + 8)
            assert b"\x09\x00\x01\x00\x06" in raw[off + 16 : off + blen]  # if_tsresol = 6
        elif btype == 6:
            ifid, hi, lo, cap, orig = struct.unpack_from("<IIIII", raw, off + 8)
            assert ifid == 0
            out.append(((hi << 32) | lo, raw[off + 28 : off + 28 + cap], orig))
        off += blen
    assert types[:2] == [0x0A0D0D0A, 1]
    return snaplen, linktype, out


@pytest.fixture(scope="module")
def small() -> tuple[list[tuple[int, bytes, int]], dict[str, Any]]:
    packets, truth = generate(SynthConfig(packets=4000, hours=2.5, seed=7))
    return packets, truth_to_dict(truth)


def test_checksum_matches_rfc1071_reference() -> None:
    def ref(data: bytes) -> int:
        if len(data) % 2:
            data += b"\x00"
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")  # RFC 1071-style example
    assert checksum(hdr) == ref(hdr) == 0xB861
    for n in (0, 1, 2, 3, 41, 1500):
        data = bytes((i * 37 + n) & 0xFF for i in range(n))
        assert checksum(data) == ref(data)


def test_deterministic_per_seed() -> None:
    cfg = SynthConfig(packets=1500, hours=1.5, seed=3)
    p1, t1 = generate(cfg)
    p2, t2 = generate(cfg)
    assert p1 == p2
    assert truth_to_json(t1) == truth_to_json(t2)
    p3, _ = generate(SynthConfig(packets=1500, hours=1.5, seed=4))
    assert p3 != p1


def test_packets_sorted_exact_count_and_snaplen() -> None:
    packets, truth = generate(SynthConfig(packets=2000, hours=2, seed=5, snaplen=200))
    assert len(packets) == 2000
    ts = [p[0] for p in packets]
    assert ts == sorted(ts)
    assert all(len(data) <= 200 and len(data) <= wire for _, data, wire in packets)
    assert any(wire > 200 for _, _, wire in packets)  # truncation by snaplen happens
    d = truth_to_dict(truth)
    assert totals(d, "packets") + malformed_total(d) + totals(d, "noise") == 2000
    starts = [h["hour_start"] for h in d["hours"]]
    assert starts == sorted(starts) and all(s % 3600 == 0 for s in starts)
    assert all(starts[0] * 10**6 <= t < (starts[-1] + 3600) * 10**6 for t in ts)


def test_truth_is_self_consistent(small: tuple[list[Any], dict[str, Any]]) -> None:
    _, truth = small
    assert truth["darknet"] == [NET4, NET6] and truth["linktype"] == 1
    assert len(truth["hours"]) >= 3  # 2.5 hours from a round start: three UTC hours
    for h in truth["hours"]:
        n = h["packets"]
        bp = h["by_port"]
        assert sum(v["packets"] for v in bp.values()) == n
        assert sum(v["bytes"] for v in bp.values()) == h["bytes"]
        assert sum(v["backscatter"] for v in bp.values()) == h["backscatter"]["total"]
        bs = h["backscatter"]
        assert bs["total"] == sum(v for k, v in bs.items() if k != "total")
        assert sum(s["packets"] for s in h["sources"].values()) == n
        assert sum(s["bytes"] for s in h["sources"].values()) == h["bytes"]
        assert sum(h["destinations"].values()) == n
        assert sum(h["ttl"].values()) == n
        assert sum(h["sizes"].values()) == n
        assert list(h["sizes"]) == ["0", "40", "60", "80", "128", "256", "512", "1024", "1500"]
        assert set(h["malformed"]) == set(MALFORMED_REASONS)
        tcp_with_port = sum(v["packets"] for k, v in bp.items()
                            if k.startswith("tcp/") and k != "tcp/null")
        assert sum(h["tcp_flags"].values()) == tcp_with_port
        icmp_typed = sum(v["packets"] for k, v in bp.items()
                         if k.split("/")[0] in ("icmp", "icmpv6") and not k.endswith("/null"))
        assert sum(h["icmp_codes"].values()) == icmp_typed
        for k, c in h["icmp_codes"].items():
            proto, itype, _code = k.split("/")
            assert bp[f"{proto}/{itype}"]["packets"] >= c
        nulls = sum(v["packets"] for k, v in bp.items() if k.endswith("/null"))
        assert h["fragments"] <= nulls
        lo, hi = h["hour_start"] * 10**6, (h["hour_start"] + 3600) * 10**6
        fp_sources = Counter()
        for s in h["sources"].values():
            assert lo <= s["first_seen_us"] <= s["last_seen_us"] < hi
            assert 1 <= s["destinations"] <= s["packets"]
            assert s["ports"] <= s["packets"]
            assert str(s["ttl"]) in h["ttl"]
            assert s["fingerprints"] == sorted(s["fingerprints"])
            fp_sources.update(s["fingerprints"])
        for name, count in h["fingerprints"].items():
            assert (count > 0) == (fp_sources[name] > 0)
        for k, v in bp.items():
            assert 1 <= v["sources"] <= v["packets"]
            proto, port = k.split("/")
            assert proto in ("tcp", "udp", "icmp", "icmpv6") or proto.isdigit()
            assert port == "null" or port.isdigit()


def test_traffic_mix_covers_the_contract(small: tuple[list[Any], dict[str, Any]]) -> None:
    _, truth = small
    keys: Counter[str] = Counter()
    fps: Counter[str] = Counter()
    bs: Counter[str] = Counter()
    mal: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    srcs: set[str] = set()
    dests: set[str] = set()
    for h in truth["hours"]:
        keys.update({k: v["packets"] for k, v in h["by_port"].items()})
        fps.update(h["fingerprints"])
        bs.update(h["backscatter"])
        mal.update(h["malformed"])
        flags.update(h["tcp_flags"])
        srcs.update(h["sources"])
        dests.update(h["destinations"])
    for k in ("tcp/23", "tcp/80", "tcp/null", "udp/null", "icmp/3", "icmp/0", "icmp/8",
              "icmpv6/128", "icmpv6/129", "icmpv6/1"):
        assert keys[k] > 0, k
    assert any(k.split("/")[0] in ("47", "50", "132") for k in keys)
    assert all(fps[f] > 0 for f in ("mirai", "zmap", "masscan"))
    assert all(bs[b] > 0 for b in ("tcp_synack", "tcp_rst", "icmp_error", "icmp_echo_reply"))
    assert all(mal[r] > 0 for r in MALFORMED_REASONS)
    assert flags["2"] > flags["18"] > 0
    assert any(":" in s for s in srcs) and any("." in s for s in srcs)
    assert any(d.endswith("/64") for d in dests)
    assert totals(truth, "fragments") > 0 and totals(truth, "noise") > 0


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_file_reads_back_and_tcpdump_agrees(tmp_path: Path, fmt: str) -> None:
    packets, truth = generate(SynthConfig(packets=3000, hours=2, seed=11))
    path = tmp_path / f"cap.{fmt}"
    (write_pcapng if fmt == "pcapng" else write_pcap)(path, packets, 1, 65535)
    snaplen, linktype, back = (read_pcapng if fmt == "pcapng" else read_pcap)(path)
    assert (snaplen, linktype) == (65535, 1)
    assert back == packets
    d = truth_to_dict(truth)
    assert tcpdump_count(path, "") == 3000
    assert tcpdump_count(path, DARKNET_FILTER) == totals(d, "packets") + malformed_total(d)


@pytest.mark.parametrize("linktype", sorted(LINKTYPES))
def test_every_linktype_filters_like_the_truth(tmp_path: Path, linktype: str) -> None:
    packets, truth = generate(SynthConfig(packets=1500, hours=1.2, seed=13, linktype=linktype))
    path = tmp_path / "cap.pcap"
    write_pcap(path, packets, LINKTYPES[linktype], 65535)
    d = truth_to_dict(truth)
    assert d["linktype"] == LINKTYPES[linktype]
    flt = DARKNET_FILTER if linktype == "ethernet" else _D
    assert tcpdump_count(path, flt) == totals(d, "packets") + malformed_total(d)
    assert malformed_total(d) > 0 and totals(d, "noise") > 0


def test_fingerprints_and_fragments_agree_with_bpf(tmp_path: Path) -> None:
    """On raw IP with no malformed frames, BPF arithmetic recomputes the IPv4 rules."""
    packets, truth = generate(SynthConfig(packets=6000, hours=1, seed=17, linktype="raw",
                                          malformed=0.0))
    path = tmp_path / "raw.pcap"
    write_pcap(path, packets, 101, 65535)
    d = truth_to_dict(truth)
    fps = Counter()
    for h in d["hours"]:
        fps.update(h["fingerprints"])
    dn = f"dst net {NET4}"
    syn = "tcp[13] & 0x12 = 0x02"
    assert tcpdump_count(path, f"{dn} and ip[4:2] = 54321 and ip[6:2] & 0x1fff = 0") == fps["zmap"]
    assert tcpdump_count(path, f"{dn} and tcp and {syn} and tcp[4:4] = ip[16:4]") == fps["mirai"]
    masscan = f"{dn} and tcp and {syn} and ip[4:2] = ((ip[16:4] ^ tcp[2:2] ^ tcp[4:4]) & 0xffff)"
    assert tcpdump_count(path, masscan) == fps["masscan"]
    frag4 = tcpdump_count(path, f"{dn} and ip[6:2] & 0x1fff != 0")
    assert 0 < frag4 <= totals(d, "fragments")  # the IPv6 ones are in the total too
    synack = tcpdump_count(path, f"{dn} and tcp and tcp[13] & 0x16 = 0x12")
    assert 0 < synack <= sum(h["backscatter"]["tcp_synack"] for h in d["hours"])


def test_checksums_verified_by_tcpdump(tmp_path: Path) -> None:
    packets, _ = generate(SynthConfig(packets=3000, hours=1, seed=19, malformed=0.0))
    path = tmp_path / "ok.pcap"
    write_pcap(path, packets, 1, 65535)
    out = subprocess.run([TCPDUMP, "-n", "-vvv", "-r", str(path)], capture_output=True,
                         text=True, check=True).stdout
    bad = [ln for ln in out.splitlines()
           if "bad cksum" in ln or "incorrect" in ln or "bad udp cksum" in ln
           or "bad icmp" in ln or "wrong icmp" in ln]
    assert not bad, bad[:5]
    assert out.count("(correct)") + out.count("sum ok") > 1000


def test_cli_writes_both_formats(tmp_path: Path) -> None:
    for fmt in ("pcap", "pcapng"):
        out, truth = tmp_path / f"c.{fmt}", tmp_path / f"c.{fmt}.json"
        assert main(["--out", str(out), "--truth", str(truth), "--packets", "500",
                     "--hours", "1", "--seed", "2", "--start", "2026-01-01T00:30:00Z",
                     "--linktype", "sll2"]) == 0
        reader = read_pcapng if fmt == "pcapng" else read_pcap
        snaplen, linktype, back = reader(out)
        assert (snaplen, linktype, len(back)) == (65535, 276, 500)
        d = json.loads(truth.read_text())
        assert [h["hour_start"] for h in d["hours"]] == [1767225600, 1767229200]
        assert d["generator"]["format"] == fmt


def test_bundled_sample_matches_generator() -> None:
    truth = json.loads((DATA / "sample.truth.json").read_text())
    g = truth["generator"]
    cfg = SynthConfig(packets=g["packets"], hours=g["hours"], seed=g["seed"], start=g["start"],
                      snaplen=g["snaplen"], linktype=g["linktype_name"])
    packets, t = generate(cfg)
    d = truth_to_dict(t)
    d["generator"]["format"] = g["format"]
    assert d == truth
    _, linktype, back = read_pcap(DATA / "sample.pcap")
    assert linktype == 1 and back == packets
    assert (DATA / "sample.pcap").stat().st_size < 2_000_000


@pytest.mark.parametrize("linktype", sorted(LINKTYPES))
def test_bundled_linktype_samples(linktype: str) -> None:
    path = DATA / "linktypes" / f"{linktype}.pcap"
    truth = json.loads((DATA / "linktypes" / f"{linktype}.truth.json").read_text())
    _, lt, back = read_pcap(path)
    assert lt == truth["linktype"] == LINKTYPES[linktype]
    flt = DARKNET_FILTER if linktype == "ethernet" else _D
    assert tcpdump_count(path, flt) == totals(truth, "packets") + malformed_total(truth)
    assert len(back) == truth["generator"]["packets"]


def _l3(frame: bytes) -> tuple[int, bytes]:
    """Ethernet: skip 802.1Q/802.1ad tags; return (ethertype, network-layer bytes)."""
    off = 12
    while struct.unpack_from("!H", frame, off)[0] in (0x8100, 0x88A8):
        off += 4
    return struct.unpack_from("!H", frame, off)[0], frame[off + 2 :]


def _upper(l3: bytes) -> tuple[int, bytes] | None:
    """(protocol, transport bytes bounded by the IP length), or None if the chain overruns."""
    if l3[0] >> 4 == 4:
        ihl = (l3[0] & 15) * 4
        return l3[9], l3[ihl : struct.unpack_from("!H", l3, 2)[0]]
    end = 40 + struct.unpack_from("!H", l3, 4)[0]
    nh, off = l3[6], 40
    while nh in (0, 43, 44, 60):
        if off + 2 > end:
            return None
        size = 8 if nh == 44 else 8 * (l3[off + 1] + 1)
        if off + size > end:
            return None
        nh, off = l3[off], off + size
    return nh, l3[off:end]


def test_malformed_frames_are_labelled(small: tuple[list[Any], dict[str, Any]]) -> None:
    packets, truth = small
    labels = truth["malformed_frames"]
    assert len(labels) == malformed_total(truth)
    assert Counter(r for _, r in labels) == sum(
        (Counter(h["malformed"]) for h in truth["hours"]), Counter())
    for index, reason in labels:
        ethertype, l3 = _l3(packets[index][1])
        version = l3[0] >> 4
        assert ethertype in (0x0800, 0x86DD)
        v6 = ethertype == 0x86DD
        if reason == "ip_version":
            assert version != (6 if v6 else 4)
            continue
        assert version == (6 if v6 else 4), reason
        if reason == "ipv4_bad_ihl":
            assert not v6 and l3[0] & 15 < 5
            continue
        if not v6:
            assert l3[0] & 15 >= 5
        if reason == "ipv4_bad_length":
            assert not v6 and struct.unpack_from("!H", l3, 2)[0] < (l3[0] & 15) * 4
            continue
        up = _upper(l3)
        if reason == "ipv6_ext_truncated":
            assert v6 and up is None
            continue
        assert up is not None
        proto, l4 = up
        if reason == "tcp_truncated":
            assert proto == 6 and len(l4) < 20
        elif reason == "tcp_bad_offset":
            assert proto == 6 and len(l4) >= 20 and l4[12] >> 4 < 5
        elif reason == "udp_truncated":
            assert proto == 17 and len(l4) < 8
        else:
            assert reason == "icmp_truncated" and proto in (1, 58) and len(l4) < 4
