"""The lmms-eval bridge: a composition (or one expert) as an lmms-eval model, and MCUB as an lmms-eval task.

Optional: ``pip install .[lmms-eval]`` installs lmms-eval 0.7.x; nothing else in the library imports this
package. Two parts:

- ``model.py``: ``McStudio``, registered with lmms-eval's own ``register_model("mcstudio")``. lmms-eval 0.7
  looks models up in its manifest registry, so ``register()`` adds the class there too (what
  ``python -m composition lmms-eval`` does before handing its arguments to lmms-eval's own entry point),
  and ``manifests()`` is the payload for lmms-eval's ``lmms_eval.models`` entry-point group, through which
  a plain ``python -m lmms_eval --model mcstudio`` finds it (pyproject.toml declares the entry point);
- ``tasks/mcub/``: an lmms-eval task folder (YAML + ``utils.py``, give it with ``--include_path``): ``mcub``
  reads the released MCUB files from a local path (``MCUB_DATA``, ``MCUB_ANSWERS``, ``MCUB_DATA_ROOT``)
  and scores with the paper's first-character rule; ``mcub_synth`` reads an MCUB-synth file
  (``MCUB_SYNTH_DATA``, default the bundled examples' two items) with the studio's letter rule, as
  ``python -m composition mcub`` does; ``mcub_synth_mc`` asks the same items as a multiple-choice task
  scored by log-likelihood of each option's answer ("star (C)").
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_NAME = "mcstudio"
MODEL_CLASS_PATH = "composition.evaluation.lmms_bridge.model.McStudio"


def manifests():
    """lmms-eval's model manifest for ``mcstudio`` (the ``lmms_eval.models`` entry-point payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)]


def register() -> None:
    """Make ``--model mcstudio`` resolvable in this process: import the class (its ``register_model``
    decorator fills lmms-eval's model registry) and add its manifest to lmms-eval 0.7's registry."""
    from lmms_eval import models

    from . import model  # noqa: F401 - registers the class

    for manifest in manifests():
        models.MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
        models.AVAILABLE_SIMPLE_MODELS[MODEL_NAME] = MODEL_CLASS_PATH
