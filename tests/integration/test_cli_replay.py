"""`teiten replay` and `teiten show` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
