"""The link types of capture files and live captures: libpcap's numbers, and which of them
the decoder (`sensor.core.decode`) reads.

A module of its own, with no other import, because the capture edges need these names before
anything is decoded: `teiten replay` checks a file's link type and starts counting it in C
while the decoder and the summary format are still being imported (sensor/edges/replay.py).
"""

from __future__ import annotations

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

# libpcap DLT_/LINKTYPE_ values the decoder understands.
LINKTYPE_NULL: Final = 0  # BSD loopback, host-order 4-byte family
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101  # raw IPv4/IPv6 (LINKTYPE_RAW)
DLT_RAW_BSD: Final = 12  # DLT_RAW as some platforms number it
DLT_RAW_OPENBSD: Final = 14
LINKTYPE_LOOP: Final = 108  # OpenBSD loopback, network-order family
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

# Link types `sensor.core.decode` reads; frames of any other are `link_unsupported`.
SUPPORTED_LINKTYPES: Final = frozenset((
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, DLT_RAW_BSD,
    DLT_RAW_OPENBSD, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_NULL, LINKTYPE_LOOP,
))
SUPPORTED_LINKTYPES_TEXT: Final = (
    "Ethernet (1), Linux cooked SLL (113) and SLL2 (276), raw IP (101, 12, 14, 228, 229), "
    "BSD loopback (0, 108)"
)
