"""Summary format v1 test vectors: committed bytes decode to the committed JSON view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wire.summary import decode_summary, encode_summary, summary_to_json

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "summary-v1"


@pytest.mark.parametrize("name", sorted(p.stem for p in VECTORS.glob("*.summary")))
def test_vector_decodes_to_its_json_and_reencodes_identically(name: str) -> None:
    data = (VECTORS / f"{name}.summary").read_bytes()
    summary = decode_summary(data)
    assert summary_to_json(summary) == json.loads((VECTORS / f"{name}.json").read_text())
    assert encode_summary(summary) == data


def test_there_are_vectors() -> None:
    assert len(list(VECTORS.glob("*.summary"))) >= 2
