"""Subcommands that live in their own module: each registers itself with ``cli.command``.

Importing this package imports every module in it, so a new command is one new file here
(the core commands compare, export, experts and bench stay in cli.py).
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
