"""Regenerate tests/vectors/summary-v1/: summaries of the per-linktype captures.

    python tests/vectors/make_summary_vectors.py

Each vector is `<name>.summary` (canonical msgpack, format v1) and `<name>.json` (the
`teiten show --json` view of it).  The test checks that decoding the committed bytes gives
the committed JSON and that re-encoding gives the same bytes: a reader of any later version
must still pass it.  Regenerate only when the format itself changes (and then bump it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sensor.edges.replay import replay  # noqa: E402
from wire.summary import Summary, encode_summary, summary_to_json  # noqa: E402

OUT = ROOT / "tests" / "vectors" / "summary-v1"
DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in ("ethernet", "sll"):
        summaries: list[Summary] = []
        replay([str(ROOT / "tests" / "data" / "linktypes" / f"{name}.pcap")], darknet=DARKNET,
               sensor_id="vector-01", emit=summaries.append)
        first = summaries[0]
        (OUT / f"{name}.summary").write_bytes(encode_summary(first))
        (OUT / f"{name}.json").write_text(json.dumps(summary_to_json(first), indent=1) + "\n")
        print(f"{name}: {len(encode_summary(first))} bytes")


if __name__ == "__main__":
    main()
