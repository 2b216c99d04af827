"""The rendered ruleset loads into a real kernel (nft, in a namespace of the test's own)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sensor.edges.firewall import render_ruleset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.privileged
def test_ruleset_loads_and_holds_the_blocks(tmp_path: Path) -> None:
    rules = tmp_path / "teiten.nft"
    rules.write_text(render_ruleset(["198.51.100.0/24", "2001:db8:dead::/48"]))
    ns = f"fw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(rules)], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                             check=True, capture_output=True, text=True).stdout
        assert "198.51.100.0/24" in out and "2001:db8:dead::/48" in out
        assert "policy drop" in out
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.privileged
def test_teiten_firewall_command_writes_a_loadable_file(tmp_path: Path) -> None:
    conf = REPO / "board" / "rpi" / "sensor.toml"
    out = tmp_path / "fw.nft"
    res = subprocess.run([sys.executable, "-m", "sensor.cli", "firewall", "--config", str(conf),
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    check = subprocess.run(["nft", "-c", "-f", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
