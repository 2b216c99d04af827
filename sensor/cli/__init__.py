"""The `teiten` command: one entry point, sub-commands registered by each package.

Strategy: the board needs only `sensor` and `uplink`; the central site adds `central`.
Each package exposes `register(subparsers)` in its own `cli` module, so this file does not
grow with every command and the board image can ship without the central package.
Each sub-command's handler takes the parsed namespace and returns the process exit code.

Start-up: when the command line names a sub-command, the plugin modules are imported in
order only until one of them registers it (`teiten replay` imports `sensor.cli.replay` and
nothing else: no MQTT, no cryptography, no central code); `--help`, no command or an
unknown one imports them all, so the help and the error list every command.
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
    "sensor.cli.replay", "sensor.cli.board", "sensor.cli.keys", "sensor.cli.spool",
    "sensor.cli.uplink", "sensor.cli.firstboot", "sensor.cli.enrol", "central.cli",
)


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, stop importing plugins once one has registered it."""
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
            # this package is not installed on this machine (the board image has no central)
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        module.register(subparsers)
        if command is not None and command in subparsers.choices:
            break
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(args_list))
    args = parser.parse_args(args_list)
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
