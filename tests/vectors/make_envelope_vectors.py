"""Regenerate tests/vectors/envelope-v1/.

Run: .venv/bin/python tests/vectors/make_envelope_vectors.py

Everything is fixed: the key is derived from a constant seed, the summary is built from
constants, Ed25519 signatures are deterministic, and zstd output is deterministic for a fixed
level and library version.  The vector test checks the committed bytes (it never
re-compresses), so a different zstd version changes nothing unless someone regenerates.

Also importable: `make_summary`, `vector_key`, `zstd_rle_frame` are shared with the tests.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from wire import envelope as ev  # noqa: E402
from wire.keys import fingerprint, public_key_text  # noqa: E402
from wire.summary import (  # noqa: E402
    DestinationRow,
    PortRow,
    SourceRow,
    Summary,
    encode_summary,
)

OUT = Path(__file__).resolve().parent / "envelope-v1"
SENSOR_ID = "vector-01"
HOUR = 1_767_225_600  # 2026-01-01T00:00:00Z
SEQUENCE = (0x1234ABCD << 32) | 7
CREATED_US = (HOUR + 3600) * 1_000_000 + 1_234_567
SEED = hashlib.sha256(b"teiten envelope v1 test vector key").digest()
OTHER_SEED = hashlib.sha256(b"teiten envelope v1 some other key").digest()


def vector_key(seed: bytes = SEED) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def make_summary(
    sensor_id: str = SENSOR_ID,
    hour_start: int = HOUR,
    *,
    sources: int = 50,
    destinations: int = 16,
    seed: int = 1,
    health: dict[str, object] | None = None,
) -> Summary:
    """A plausible summary of a darknet /24 hour with `sources` distinct IPv4 sources."""
    rnd = random.Random(seed)
    start_us = hour_start * 1_000_000
    rows = []
    total_packets = 0
    total_bytes = 0
    for i in range(sources):
        packets = 1 + int(rnd.paretovariate(1.5))
        nbytes = packets * rnd.choice((40, 44, 60, 64))
        first = start_us + rnd.randrange(3_600_000_000)
        last = min(first + rnd.randrange(600_000_000), start_us + 3_599_999_999)
        rows.append(
            SourceRow(
                address=struct.pack(">I", (rnd.randrange(1, 224) << 24) | (i * 7919) % (1 << 24)),
                packets=packets,
                bytes=nbytes,
                first_us=first,
                last_us=last,
                ports=min(packets, 1 + rnd.randrange(4)),
                destinations=min(packets, 1 + rnd.randrange(8)),
                ttl=rnd.choice((47, 50, 54, 113, 241)),
                fingerprints=rnd.choice((0, 0, 0, 1, 2, 4)),
            )
        )
        total_packets += packets
        total_bytes += nbytes
    ports = tuple(
        PortRow(
            proto=6,
            port=p,
            packets=1 + rnd.randrange(1000),
            bytes=40 * (1 + rnd.randrange(1000)),
            backscatter=0,
            sources=1 + rnd.randrange(100),
        )
        for p in sorted(rnd.sample(range(1, 65536), min(sources, 200)))
    )
    dests = tuple(
        DestinationRow(address=bytes((198, 51, 100, d)), packets=1 + rnd.randrange(5000))
        for d in range(min(destinations, 256))
    )
    return Summary(
        sensor_id=sensor_id,
        hour_start=hour_start,
        bucket_seconds=3600,
        darknet=("198.51.100.0/24",),
        packets=total_packets,
        bytes=total_bytes,
        fragments=0,
        sources_distinct=sources,
        sources_distinct_estimated=False,
        sources_overflow=0,
        destinations_overflow=0,
        ports=ports,
        icmp_codes=(),
        sources=tuple(rows),
        destinations=dests,
        tcp_flags=((2, total_packets),),
        ttl=((54, total_packets),),
        sizes=((40, total_packets),),
        fingerprints={"mirai": 3, "zmap": 1, "masscan": 0},
        backscatter={"tcp_synack": 0, "tcp_rst": 0, "icmp_error": 0, "icmp_echo_reply": 0},
        malformed={},
        health=health if health is not None else {"complete": True},
    )


def zstd_rle_frame(total: int, *, declared: int | None, block: int = 128 * 1024) -> bytes:
    """A hand-made zstd frame of RLE blocks producing `total` zero bytes.

    `declared` is the frame content size written in the header (None: no size field), so
    a test can build a frame that declares nothing, the truth, or a lie.  No zstd
    compressor is involved and nothing of size `total` is ever allocated.
    """
    if declared is None:
        header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 0x38])  # no FCS, window 128 KiB
    else:
        header = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x38]) + struct.pack("<Q", declared)
    full, rest = divmod(total, block)
    sizes = [block] * full + ([rest] if rest else [])
    if not sizes:
        sizes = [0]
    body = bytearray()
    for i, size in enumerate(sizes):
        last = 1 if i == len(sizes) - 1 else 0
        body += (last | (1 << 1) | (size << 3)).to_bytes(3, "little") + b"\x00"
    return header + bytes(body)


def _seal_raw(payload: bytes, **overrides: object) -> bytes:
    fields: dict[str, object] = {
        "sensor_id": SENSOR_ID,
        "sequence": SEQUENCE,
        "hour_start": HOUR,
        "created_us": CREATED_US,
        "key": vector_key(),
    }
    fields.update(overrides)
    return ev.seal_payload(payload, **fields)  # type: ignore[arg-type]


def build() -> dict[str, bytes | str]:
    """Every vector file, by name."""
    key = vector_key()
    summary = encode_summary(make_summary())
    envelope = ev.seal(
        summary,
        sensor_id=SENSOR_ID,
        sequence=SEQUENCE,
        hour_start=HOUR,
        created_us=CREATED_US,
        key=key,
    )
    env = ev.parse_envelope(envelope)
    payload = bytes(env.payload)  # parse_envelope gives a memoryview of `envelope`
    signed = env.signed_bytes()
    pub = key.public_key()
    other = vector_key(OTHER_SEED)
    files: dict[str, bytes | str] = {
        "summary.msgpack": summary,
        "envelope.bin": envelope,
        "envelope.signed-bytes.bin": signed,
        "envelope.payload.zst": payload,
        "sensors.toml": (
            "# Keyring for the envelope v1 vectors (docs/central.md).\n"
            f'[sensors.{SENSOR_ID}]\npublic_key = "{public_key_text(pub)}"\n\n'
            f'[sensors.revoked-01]\npublic_key = "{public_key_text(pub)}"\nrevoked = true\n'
        ),
    }
    bad: dict[str, tuple[bytes, str]] = {
        "bad-truncated.bin": (envelope[:-1], "malformed"),
        "bad-trailing-byte.bin": (envelope + b"\x00", "malformed"),
        "bad-version-2.bin": (b"\x98\x02" + envelope[2:], "unknown_version"),
        "bad-unknown-sensor.bin": (
            _seal_raw(env.payload, sensor_id="stranger-01"),
            "unknown_sensor",
        ),
        "bad-revoked-sensor.bin": (_seal_raw(env.payload, sensor_id="revoked-01"), "revoked"),
        "bad-signature-other-key.bin": (_seal_raw(env.payload, key=other), "bad_signature"),
        "bad-signature-flipped-payload.bin": (
            ev.encode_envelope(
                ev.Envelope(
                    env.version, env.sensor_id, env.sequence, env.hour_start, env.created_us,
                    env.codec, payload[:-1] + bytes([payload[-1] ^ 1]), env.signature,
                )
            ),
            "bad_signature",
        ),
        "bad-bomb-declared-1tib.bin": (
            _seal_raw(zstd_rle_frame(1 << 20, declared=1 << 40)),
            "decompression_bomb",
        ),
        "bad-summary-not-msgpack.bin": (
            _seal_raw(ev.compress_summary(b"\xc1not a summary")),
            "malformed_summary",
        ),
        "bad-summary-wrong-hour.bin": (
            _seal_raw(ev.compress_summary(encode_summary(make_summary(hour_start=HOUR + 3600)))),
            "malformed_summary",
        ),
        "bad-payload-trailing-frame.bin": (
            _seal_raw(payload + payload),
            "malformed_summary",
        ),
    }
    manifest = {
        "about": "Envelope v1 test vectors; see docs/wire-format.md and make_envelope_vectors.py",
        "private_key_seed_hex": SEED.hex(),
        "public_key": public_key_text(pub),
        "fingerprint": fingerprint(pub),
        "keyring": "sensors.toml",
        "ok": {
            "file": "envelope.bin",
            "sensor_id": SENSOR_ID,
            "sequence": SEQUENCE,
            "hour_start": HOUR,
            "created_us": CREATED_US,
            "codec": "zstd",
            "summary": "summary.msgpack",
            "signed_bytes": "envelope.signed-bytes.bin",
            "payload": "envelope.payload.zst",
            "signature_hex": env.signature.hex(),
            "sha256": hashlib.sha256(envelope).hexdigest(),
        },
        "bad": {name: reason for name, (_, reason) in sorted(bad.items())},
    }
    files.update({name: data for name, (data, _) in bad.items()})
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return files


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(build().items()):
        path = OUT / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
