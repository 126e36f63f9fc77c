"""``tinyrm`` command line: a thin shell over the Python API.

argparse (not click) because contracts such as ``--data FILE...`` take several values after one
flag, which is also what a shell glob produces. Each module in ``COMMAND_MODULES`` adds its own
subcommands through ``register(subparsers)``; the commands import the library only when they run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .._version import __version__
from ..errors import UsageError, UserError
from ..progress import library_bars
from . import calibrate, core, export, extras, score, serve
from .output import json_output

__all__ = ["INTERRUPTED_EXIT", "USER_ERRORS", "USER_ERROR_EXIT", "UsageError", "build_parser", "main"]

COMMAND_MODULES = [core, calibrate, serve, extras, export, score]
# What a user can fix: printed as one ``tinyrm COMMAND: error: ...`` line, exit code 2, traceback only
# with -v. ValueError covers DataError (``path:line: reason``) and bad option values; OSError covers
# missing/unreadable files (the model loaders turn theirs into UserError with a clearer message).
USER_ERRORS = (UserError, ValueError, OSError)
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130
# What an interrupted command left, where it helps: `tinyrm score` keeps its finished chunks (docs/scoring.md).
INTERRUPTED_NOTES = {"score": "; run the same command again to resume where it stopped"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyrm", description="Tiny masked-LM reward models (FLAN cloze).")
    parser.add_argument("--version", action="version", version=f"tinyrm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the full traceback of errors (also accepted after COMMAND)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for sub in subparsers.choices.values():  # `tinyrm eval ... -v` works too; SUPPRESS keeps the global value
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug logging and full tracebacks")
    return parser


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with json_output(bool(getattr(args, "json", False))), library_bars(getattr(args, "progress", True)):
            code = args.handler(args)
    except BrokenPipeError:  # `tinyrm ... | head`: the reader left; say nothing
        _silence_stdout()
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 = 128 + SIGINT, as a shell reports it
        if args.verbose:
            traceback.print_exc()
        print(f"tinyrm {args.command}: interrupted{INTERRUPTED_NOTES.get(args.command, '')}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except USER_ERRORS as error:
        if args.verbose:
            traceback.print_exc()
        print(f"tinyrm {args.command}: error: {one_line(error)}", file=sys.stderr)
        return USER_ERROR_EXIT
    return int(code or 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush does not complain about the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
