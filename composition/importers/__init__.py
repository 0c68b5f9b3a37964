"""Importers of foreign expert checkpoints into the project's expert folder format (DESIGN.md §3)."""
from .modelcompose import ImportError_, import_modelcompose, read_checkpoint

__all__ = ["ImportError_", "import_modelcompose", "read_checkpoint"]
