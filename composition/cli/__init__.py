"""The command line, ``python -m composition <command>`` (also the ``mcstudio`` console command).

One module per command registers itself with ``registry.command``; ``common`` holds the
options several commands share; ``entry`` builds the parser and turns errors into one line.
The engine never imports this package.
"""
from .entry import main

__all__ = ["main"]
