"""The entry point: the parser of every registered command, and one clear line for every error.

Every user error ends with a non-zero exit and one clear line on stderr, never a
traceback. Inputs, expert folders, variant names and coefficients are all checked
before any model loads, so a mistake fails in about a second.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from modalities.checks import UserError

from .registry import COMMANDS

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
# Modules of this package that hold no command.
_NOT_COMMANDS = {"common", "entry", "registry"}


def load_commands() -> None:
    """Import every command module of this package: each registers itself (a new command is one new file)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name not in _NOT_COMMANDS:
            importlib.import_module(f"{__package__}.{module.name}")


def make_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    load_commands()

    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = invoked if invoked == "mcstudio" else "python -m composition"  # the console command, or the module
    parser = argparse.ArgumentParser(prog=prog, description="MLLM Composition Studio command line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {}
    for name, (help_text, build) in COMMANDS.items():
        handlers[name] = build(sub.add_parser(name, help=help_text, description=help_text))
    return parser, handlers


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, info logs) off the CLI's output."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.showwarning = _one_line_warning
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = make_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return handlers[args.command](args)
    except UserError as exc:  # the project's own user errors; a ValueError from a library is a bug, below
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
