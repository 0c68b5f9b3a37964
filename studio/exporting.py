"""Export a composition (a plain checkpoint or a peft adapter, with its model card) zipped for download, and push it.

The folder is zipped and removed; pushing reads the zip (unpacked into a temporary folder), so
nothing is kept between the two besides the file the user was given.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from composition.config import CompositionConfig
from composition.errors import CompositionError
from composition.export import CARD_FILE, export_composition
from composition.publish import hub_token, push_folder

from .session import Studio


def export_zip(studio: Studio, settings: CompositionConfig, variant: str = "DAMC", form: str = "full",
               rank: int | None = None) -> tuple[str, str]:
    """Returns (zip path, what to show: a summary line and the model card). The folder is removed once zipped."""
    view = studio.cm.subset(settings.experts)
    (spec,) = settings.replace(variants=[variant]).variant_specs()
    modalities = {e.modality for e in view.experts.values()}
    work = Path(tempfile.mkdtemp(prefix="composition-export-"))
    name = f"{spec.name.replace(':', '-')}-composition"
    start = time.perf_counter()
    try:
        folder = export_composition(view, spec, work / name, coefficients=settings.coefficients(view.experts, modalities),
                                    modalities=modalities, form=form, rank=rank or None,
                                    recipe_yaml=settings.to_yaml(view.experts, base_name=view.base.name))
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
        archive = work.parent / f"{name}-{work.name}.zip"
        # Stored, not deflated: float weights barely compress and deflate is slow on a small CPU.
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = archive.stat().st_size / 2**20
    body = card.split("\n---\n", 1)[-1].strip()  # the card without its front matter
    return str(archive), (f"exported **{spec.name}** as a {'peft adapter' if form == 'adapter' else 'plain checkpoint'} "
                          f"({size:.0f} MB) in {time.perf_counter() - start:.1f} s\n\n<details><summary>Model card "
                          f"(README.md)</summary>\n\n{body}\n\n</details>")


def can_push() -> bool:
    """Whether this server has a Hugging Face token to push with (the Export tab shows the button only then)."""
    return bool(hub_token())


def push_zip(archive: str | None, repo_id: str, private: bool = False) -> str:
    """Upload an export the Export tab made (its zip) to ``repo_id``; returns what to tell the user."""
    if not archive:
        raise CompositionError("export a composition first: the push uploads the folder of the last export.")
    with tempfile.TemporaryDirectory(prefix="composition-push-") as work:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if not names or any(n.startswith("/") or ".." in Path(n).parts for n in names):
                raise CompositionError("that file is not an export made here; export again.")
            zf.extractall(work)
        folder = Path(work) / Path(names[0]).parts[0]
        url = push_folder(folder, repo_id, private=private)
    return f"pushed to [{repo_id}]({url})."
