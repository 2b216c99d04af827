"""What every central command shares: exit codes, the error line, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

EXIT_OK = 0
EXIT_BAD = 1  # the thing checked is bad
EXIT_USAGE = 2  # the command could not run (a missing file, a bad option)


def fail(message: str) -> int:
    """Print `teiten: message` (which says what to do next) and return EXIT_USAGE."""
    print(f"teiten: {message}", file=sys.stderr)
    return EXIT_USAGE


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
