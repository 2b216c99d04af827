"""Compare summaries against the synthetic generator's ground truth (bench/synth.py)."""

from __future__ import annotations

from typing import Any

from wire.summary import Summary, address_text, fingerprint_list, proto_name


def port_key(proto: int, port: int | None) -> str:
    return f"{proto_name(proto)}/{'null' if port is None else port}"


def summary_view(s: Summary) -> dict[str, Any]:
    """A summary in the generator's truth vocabulary, for exact comparison."""
    icmp_codes = {f"{proto_name(r.proto)}/{r.type}/{r.code}": r.packets for r in s.icmp_codes}
    return {
        "hour_start": s.hour_start,
        "packets": s.packets,
        "bytes": s.bytes,
        "fragments": s.fragments,
        "by_port": {
            port_key(r.proto, r.port): {
                "packets": r.packets, "bytes": r.bytes, "backscatter": r.backscatter,
                "sources": r.sources,
            }
            for r in s.ports
        },
        "icmp_codes": icmp_codes,
        "sources": {
            address_text(r.address): {
                "packets": r.packets, "bytes": r.bytes, "first_seen_us": r.first_us,
                "last_seen_us": r.last_us, "ports": r.ports, "destinations": r.destinations,
                "ttl": r.ttl, "fingerprints": sorted(fingerprint_list(r.fingerprints)),
            }
            for r in s.sources
        },
        "destinations": {address_text(r.address): r.packets for r in s.destinations},
        "tcp_flags": {str(f): n for f, n in s.tcp_flags},
        "ttl": {str(t): n for t, n in s.ttl},
        "sizes": {str(lo): n for lo, n in s.sizes},
        "fingerprints": dict(s.fingerprints),
        "backscatter": {"total": s.backscatter_total, **s.backscatter},
        "malformed": dict(s.malformed),
    }


def truth_view(hour: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in hour.items() if k != "noise"}
    view["sources"] = {
        ip: {**row, "fingerprints": sorted(row["fingerprints"])}
        for ip, row in hour["sources"].items()
    }
    bs = dict(hour["backscatter"])
    bs.setdefault("total", sum(v for k, v in bs.items() if k != "total"))
    for kind in ("tcp_synack", "tcp_rst", "icmp_error", "icmp_echo_reply"):
        bs.setdefault(kind, 0)
    view["backscatter"] = bs
    view["malformed"] = {k: n for k, n in hour["malformed"].items() if n}
    view["fingerprints"] = {k: hour["fingerprints"].get(k, 0) for k in ("mirai", "zmap", "masscan")}
    return view


def assert_matches_truth(summaries: list[Summary], truth: dict[str, Any]) -> None:
    got = {s.hour_start: summary_view(s) for s in summaries}
    want = {h["hour_start"]: truth_view(h) for h in truth["hours"]}
    assert sorted(got) == sorted(want), "hours differ"
    for hour, expected in want.items():
        actual = got[hour]
        for table in expected:
            assert actual[table] == expected[table], f"hour {hour}: table {table} differs"
