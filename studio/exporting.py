"""Export the materialized composition into a temporary folder, zipped for download."""
from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from composition.config import CompositionConfig
from composition.export import export_composition

from .session import Studio


def export_zip(studio: Studio, settings: CompositionConfig, variant: str = "DAMC") -> tuple[str, str]:
    """Returns (zip path, one-line summary). The folder is removed once zipped."""
    view = studio.cm.subset(settings.experts)
    (spec,) = settings.replace(variants=[variant]).variant_specs()
    modalities = {e.modality for e in view.experts.values()}
    work = Path(tempfile.mkdtemp(prefix="composition-export-"))
    name = f"{spec.name.replace(':', '-')}-composition"
    start = time.perf_counter()
    try:
        export_composition(view, spec, work / name, coefficients=settings.coefficients(view.experts, modalities),
                           modalities=modalities)
        archive = work.parent / f"{name}-{work.name}.zip"
        # Stored, not deflated: float weights barely compress and deflate is slow on a small CPU.
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted((work / name).rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = archive.stat().st_size / 2**20
    return str(archive), f"exported **{spec.name}** ({size:.0f} MB) in {time.perf_counter() - start:.1f} s"
