"""The `teiten` command: one entry point, sub-commands registered by each package.

Strategy: the board needs only `sensor` and `uplink`; the central site adds `central`.
Each package exposes `register(subparsers)` in its own `cli` module, so this file does not
grow with every command and the board image can ship without the central package.
Each sub-command's handler takes the parsed namespace and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from sensor import __version__

Handler = Callable[[argparse.Namespace], int]

# Packages that may add sub-commands, in the order they appear in --help.
_PLUGIN_MODULES = (
    "sensor.commands", "sensor.run_commands", "uplink.cli", "uplink.commands", "central.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teiten",
        description="Teiten darknet sensor and central site.",
    )
    parser.add_argument("--version", action="version", version=f"teiten {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # this package is not installed on this machine
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("teiten: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
