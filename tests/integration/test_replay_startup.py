"""`teiten replay F --out DIR` loads only what a replay needs (docs/performance.md, "End to end").

Start-up is a large part of the command's time next to tcpdump's: the signing and spool
stack (cryptography), the uplink (paho), compression (zstandard), the central site and its
plotting, and modules that only `--json` or other commands use must stay out of a plain
replay, and so must hashlib (OpenSSL), which `secrets` would load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, sys
from sensor.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}), file=sys.stderr)
"""

NOT_FOR_A_REPLAY = ("cryptography", "zstandard", "paho", "matplotlib", "numpy", "central",
                    "uplink", "sensor.edges.sealer", "sensor.edges.spool", "sensor.edges.daemon",
                    "hashlib", "secrets", "sqlite3")


def test_plain_replay_imports_only_what_it_needs(tmp_path: Path) -> None:
    pcap = tmp_path / "cap.pcap"
    subprocess.run(
        [sys.executable, "-m", "bench.synth", "--out", str(pcap), "--truth",
         str(tmp_path / "truth.json"), "--quiet", "--packets", "2000", "--hours", "1"],
        check=True, cwd=ROOT,
    )
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "replay", str(pcap), "--out", str(tmp_path / "out")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["rc"] == 0
    loaded = [m for m in result["modules"]
              if any(m == bad or m.startswith(bad + ".") for bad in NOT_FOR_A_REPLAY)]
    assert loaded == []
    assert "msgpack" in result["modules"] and "sensor.fast._fast" in result["modules"]
    assert len(list((tmp_path / "out").iterdir())) == 1
