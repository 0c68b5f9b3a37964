"""The command registry: each command module registers its parser builder with ``command``."""
from __future__ import annotations

import argparse
from typing import Callable

# name -> (help, build): build fills the subparser and returns the handler (args -> exit code).
COMMANDS: dict[str, tuple[str, Callable]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function fills its parser and returns the handler."""
    def wrap(build: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]):
        COMMANDS[name] = (help_text, build)
        return build
    return wrap
