"""Fixtures for the virtual-board suite (root: namespaces, setpriv, a real broker)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hil.virtual_board import VirtualBoard


def _board(topology: str, **kw: object) -> Iterator[VirtualBoard]:
    if os.geteuid() != 0:
        pytest.fail("the virtual board needs root; run `sudo make test`", pytrace=False)
    board = VirtualBoard(topology, **kw).up()  # type: ignore[arg-type]
    try:
        yield board
    finally:
        board.down()


@pytest.fixture
def routed_board() -> Iterator[VirtualBoard]:
    yield from _board("routed")


@pytest.fixture
def dedicated_board() -> Iterator[VirtualBoard]:
    yield from _board("dedicated")


@pytest.fixture
def onlink_board() -> Iterator[VirtualBoard]:
    yield from _board("onlink")


@pytest.fixture
def stepping_board() -> Iterator[VirtualBoard]:
    yield from _board("routed", clock_offset=True)
