"""Replay generated captures and compare every table with the generator's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.edges.replay import replay
from tests.truth import assert_matches_truth
from wire.summary import Summary, decode_summary, encode_summary

DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]
ROOT = Path(__file__).resolve().parents[2]


def generate(tmp: Path, *args: str) -> tuple[Path, dict]:  # type: ignore[type-arg]
    pcap = tmp / "cap.pcap"
    if "--format" in args and "pcapng" in args:
        pcap = tmp / "cap.pcapng"
    truth = tmp / "truth.json"
    subprocess.run(
        [sys.executable, "-m", "bench.synth", "--out", str(pcap), "--truth", str(truth), *args],
        check=True, cwd=ROOT,
    )
    return pcap, json.loads(truth.read_text())


def run_replay(pcap: Path) -> list[Summary]:
    out: list[Summary] = []
    # Through the wire format, so what is compared is what a central site would read.
    replay([str(pcap)], darknet=DARKNET, sensor_id="t1",
           emit=lambda s: out.append(decode_summary(encode_summary(s))))
    return out


@pytest.mark.parametrize(
    "args",
    [
        ("--packets", "30000", "--hours", "3", "--seed", "7"),
        ("--packets", "8000", "--hours", "2", "--seed", "8", "--format", "pcapng"),
        ("--packets", "8000", "--hours", "2", "--seed", "9", "--snaplen", "200"),
    ],
    ids=["pcap", "pcapng", "snaplen200"],
)
def test_replay_matches_truth(tmp_path: Path, args: tuple[str, ...]) -> None:
    pcap, truth = generate(tmp_path, *args)
    assert_matches_truth(run_replay(pcap), truth)


@pytest.mark.parametrize("linktype", ["sll", "sll2", "raw", "null"])
def test_other_link_types(tmp_path: Path, linktype: str) -> None:
    pcap, truth = generate(tmp_path, "--packets", "3000", "--hours", "2", "--seed", "3",
                           "--linktype", linktype)
    assert_matches_truth(run_replay(pcap), truth)


def test_bundled_sample_matches_its_truth() -> None:
    sample = ROOT / "tests" / "data" / "sample.pcap"
    truth = json.loads((ROOT / "tests" / "data" / "sample.truth.json").read_text())
    assert_matches_truth(run_replay(sample), truth)
