"""sensors.toml: the central site's list of enrolled sensors and their signing keys.

The file's shape is in docs/central.md; `load_keyring` reads it and validates every entry
(`wire.keys.parse_keyring_toml`), so a typo stops the receiver at start-up with the file
and the entry named, not at the first envelope.
"""

from __future__ import annotations

import os
from pathlib import Path

from wire.keys import Keyring, KeyringError, parse_keyring_toml


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Load sensors.toml (shape in docs/central.md)."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise KeyringError(
            f"no keyring at {target}; create it as described in docs/central.md"
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot read {target}: {exc.strerror}") from None
    return parse_keyring_toml(data, source=str(target))
