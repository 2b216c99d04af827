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
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from sensor import __version__

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

Handler = Callable[[argparse.Namespace], int]


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns without importing shutil (which argparse's help
    formatter does for every argument added, loading zlib, bz2 and lzma: 2 ms of start-up)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns if stdout else 0) or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2  # as HelpFormatter does
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """The `teiten` parser and (add_subparsers passes its type on) every sub-parser."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

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
    parser = _Parser(
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
    return _main(argv)[0]


def entry() -> NoReturn:
    """The `teiten` program (the console script, `python -m sensor.cli`).

    A command whose parser sets `exit_without_teardown` (`teiten replay`: its files are
    written and synced before it returns) ends with os._exit once stdout and stderr are
    flushed: the interpreter's teardown of every module and object it made would be work
    thrown away (3-4 ms of a replay), and nothing of such a command waits in an atexit
    handler.  Every other command exits as usual.
    """
    code, args = _main(None)
    if getattr(args, "exit_without_teardown", False):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a closed pipe, a full disk: the output is lost either way
            pass
        os._exit(code)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> tuple[int, argparse.Namespace | None]:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Start-up (the command's modules, the parser) makes objects that live as long as the
    # process, and no garbage cycles: the cyclic collector, which its allocations would
    # start over and over to walk them (2 ms of `teiten replay`), waits until it is done,
    # and then leaves them out of every later collection (gc.freeze).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        parser = build_parser(_command_of(args_list))
        args = parser.parse_args(args_list)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2, args
    try:
        return handler(args), args
    except KeyboardInterrupt:
        print("teiten: interrupted", file=sys.stderr)
        return 130, args
    except BrokenPipeError:
        return 0, args


if __name__ == "__main__":
    entry()
