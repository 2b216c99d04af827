"""`teiten replay` and `teiten show` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "data" / "sample.pcap"


def teiten(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_replay_then_show_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = teiten("replay", str(SAMPLE), "--darknet", "198.51.100.0/24,2001:db8:dead::/48",
                    "--out", str(out), "--sensor-id", "lab-01", "--json")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["summaries"]
    truth = json.loads((ROOT / "tests" / "data" / "sample.truth.json").read_text())
    assert len(files) == len(truth["hours"])
    shown = teiten("show", files[0], "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    for key in ("version", "sensor_id", "hour_start", "hour_end", "packets", "bytes", "by_port",
                "sources", "fingerprints", "backscatter", "malformed", "sources_overflow"):
        assert key in view, key
    assert view["sensor_id"] == "lab-01" and view["hour_start"].endswith("T00:00:00Z")
    assert view["packets"] == truth["hours"][0]["packets"]
    assert sum(p["packets"] for p in view["by_port"]) == view["packets"]
    assert set(view["by_port"][0]) >= {"proto", "port", "packets", "bytes", "backscatter",
                                       "sources"}
    src = view["sources"][0]
    assert set(src) >= {"ip", "packets", "first_seen", "last_seen", "ports", "ttl"}
    assert src["first_seen"].endswith("Z") and "." in src["first_seen"]
    assert set(view["fingerprints"]) == {"mirai", "zmap", "masscan"}
    text = teiten("show", files[0])
    assert "proto" in text.stdout and "lab-01" in text.stdout


def test_truncated_capture_names_file_and_offset_and_keeps_what_it_read(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    data = SAMPLE.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3 - 7])  # ends inside a record
    out = tmp_path / "out"
    result = teiten("replay", str(cut), "--out", str(out), "--json")
    assert result.returncode == 1
    assert str(cut) in result.stderr and "at byte " in result.stderr
    report = json.loads(result.stdout)
    assert report["summaries"] and report["error"]
    packets = 0
    for f in report["summaries"]:
        packets += json.loads(teiten("show", f, "--json").stdout)["packets"]
    assert packets > 0


def test_garbage_file_and_bad_arguments_give_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture" * 10)
    result = teiten("replay", str(junk), "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and str(junk) in result.stderr
    bad = teiten("replay", str(SAMPLE), "--out", str(tmp_path / "o"), "--darknet", "10.0.0.1/8")
    assert bad.returncode == 1 and "host bits" in bad.stderr
    missing = teiten("show", str(tmp_path / "nope.summary"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    notsummary = teiten("show", str(junk))
    assert notsummary.returncode == 1 and "malformed summary" in notsummary.stderr


# --- issue 11: bad timestamps, unsupported link types, errors that point the right way ---

UDP_FRAME = (bytes(12) + b"\x08\x00" + bytes((0x45, 0, 0, 28)) + bytes(4) + b"\x40\x11\x00\x00"
             + bytes((1, 2, 3, 4, 198, 51, 100, 7)) + b"\x00\x35\x00\x35\x00\x08\x00\x00")
T = 1_800_000_000 * 1_000_000
PATHS = pytest.mark.parametrize("path_flag", ["--reference", "--compiled"])


def replay_cli(path_flag: str, *args: str) -> subprocess.CompletedProcess[str]:
    return teiten("replay", *args, *(["--reference"] if path_flag == "--reference" else []))


@PATHS
def test_a_record_stamped_0xffffffff_never_makes_an_unreadable_summary(
    tmp_path: Path, pcap_writer, path_flag: str  # type: ignore[no-untyped-def]
) -> None:
    """libpcap reads the stamp as -1 s: the frame is malformed (bad_timestamp), counted in
    the summary of the hour the capture is in; `teiten show` reads every summary written."""
    cap = tmp_path / "stamped.pcap"
    frames = [(ts, len(UDP_FRAME), UDP_FRAME) for ts in (0xFFFFFFFF * 1_000_000, T, T + 1)]
    pcap_writer.pcap(cap, frames)
    out = tmp_path / "out"
    result = replay_cli(path_flag, str(cap), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["summaries"]
    assert len(files) == 1 and "1969" not in files[0], files
    shown = teiten("show", files[0], "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["packets"] == 2 and view["malformed"] == {"bad_timestamp": 1}


@PATHS
def test_a_capture_with_no_valid_timestamp_says_so(
    tmp_path: Path, pcap_writer, path_flag: str  # type: ignore[no-untyped-def]
) -> None:
    cap = tmp_path / "all-bad.pcap"
    pcap_writer.pcap(cap, [(0xFFFFFFFF * 1_000_000, len(UDP_FRAME), UDP_FRAME)] * 2)
    out = tmp_path / "out"
    result = replay_cli(path_flag, str(cap), "--out", str(out))
    assert result.returncode == 1
    assert "2 frames" in result.stderr and "bad_timestamp" in result.stderr
    assert not list(out.glob("*.summary"))


@PATHS
@pytest.mark.parametrize("linktype", [65535, 147])
def test_unsupported_link_type_is_counted_as_link_unsupported_not_a_bad_filter(
    tmp_path: Path, pcap_writer, path_flag: str, linktype: int  # type: ignore[no-untyped-def]
) -> None:
    cap = tmp_path / "odd.pcap"
    pcap_writer.pcap(cap, [(T + i, len(UDP_FRAME), UDP_FRAME) for i in range(3)],
                     linktype=linktype)
    out = tmp_path / "out"
    result = replay_cli(path_flag, str(cap), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert "BPF" not in result.stderr and "filter '" not in result.stderr
    assert f"link type {linktype}" in result.stderr and "not supported" in result.stderr
    assert "link_unsupported" in result.stderr and str(cap) in result.stderr
    report = json.loads(result.stdout)
    assert report["warnings"] and f"link type {linktype}" in report["warnings"][0]
    (summary,) = report["summaries"]
    view = json.loads(teiten("show", summary, "--json").stdout)
    assert view["packets"] == 0 and view["malformed"] == {"link_unsupported": 3}


@PATHS
def test_missing_file_and_directory_errors_say_what_is_wrong_not_pcapfix(
    tmp_path: Path, path_flag: str
) -> None:
    missing = teiten("replay", str(tmp_path / "nope.pcap"), "--out", str(tmp_path / "o"),
                     *(["--reference"] if path_flag == "--reference" else []))
    assert missing.returncode == 1
    assert "no such file" in missing.stderr and str(tmp_path / "nope.pcap") in missing.stderr
    (tmp_path / "dir").mkdir()
    directory = replay_cli(path_flag, str(tmp_path / "dir"), "--out", str(tmp_path / "o"))
    assert directory.returncode == 1 and "is a directory" in directory.stderr
    for result in (missing, directory):
        assert "pcapfix" not in result.stderr and "cut short" not in result.stderr
        assert "before that point" not in result.stderr and "wrote 0" not in result.stderr
