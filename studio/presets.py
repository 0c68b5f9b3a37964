"""``--preset modelcompose`` (or ``STUDIO_PRESET=modelcompose``): the paper's own experts, resolved without gradio.

What it needs (DESIGN.md §3): the base ``lmsys/vicuna-7b-v1.5``, the released experts from the hub
repository ``Adu2021/ModelCompose`` imported with composition.importers (one subfolder per expert),
and the encoders (CLIP ViT-L/14-336 for image; BEATs, LanguageBind video and Point-BERT for the
others, owned by the encoder registry). It runs on a GPU in bf16. On a ZeroGPU Space the model is
loaded on the CPU at start-up and moved with ``.to("cuda")`` at module level, and the functions that
compute are decorated with ``@spaces.GPU`` (the ``spaces`` library's documented placement:
huggingface.co/spaces/zero-gpu-explorers/README); CUDA must not be initialised in the main process
before that. Offline or without a GPU, ``resolve_preset`` raises PresetError with a one-line reason
so the app starts the bundled set instead.

Memory (bf16, 2 bytes a parameter): Vicuna-7B 6.74 B parameters = 13.5 GB; one r=128 delta on
7 targets x 32 layers: per layer 128 x (4·(4096+4096) + 3·(4096+11008)) = 9.99 M, x 32 = 320 M
parameters = 0.64 GB; a decoupled expert has two (text + modality) = 1.28 GB, four experts 5.1 GB;
CLIP ViT-L/14-336 0.30 B = 0.6 GB; BEATs 90 M, LanguageBind video ~0.3 B, Point-BERT ~22 M ≈ 0.85 GB;
projectors ≈ 0.17 GB. Total ≈ 20.2 GB of weights, plus the KV cache of six side-by-side rows
(32 layers x 2 x 4096 x 2 bytes = 0.5 MB a token: 6 rows x 1 k tokens ≈ 3 GB): one 24 GB GPU, tight;
fp16/bf16 deltas of shared experts (one delta each) halve the 5.1 GB.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import StudioError

PRESETS = ("modelcompose",)
BASE = "lmsys/vicuna-7b-v1.5"
EXPERTS_REPO = "Adu2021/ModelCompose"
# The released checkpoint subfolders are not known here (no network to list the repository):
# the importer takes them as 'Adu2021/ModelCompose:<subfolder>'; set STUDIO_MODELCOMPOSE_EXPERTS to
# a comma-separated list of subfolders to choose them.
EXPERT_SUBFOLDERS_ENV = "STUDIO_MODELCOMPOSE_EXPERTS"
ENCODERS = {"image": ("clip", "openai/clip-vit-large-patch14-336"), "audio": ("beats", None),
            "video": ("languagebind-video", None), "point": ("point-bert", None)}
MEMORY_GB = 20.2  # weights in bf16, see the module docstring
GPU_GB_GOAL = 24


class PresetError(StudioError):
    """A preset cannot run here (offline, no GPU, unknown name); the app falls back to the bundled set."""


@dataclass(frozen=True)
class PresetPlan:
    """What the app loads for a preset: where from, on which device, in which dtype."""

    name: str
    base: str
    expert_sources: tuple[str, ...]
    encoders: dict = field(default_factory=dict)
    device: str = "cuda"
    dtype: str = "bfloat16"
    zero_gpu: bool = False
    memory_gb: float = MEMORY_GB


def preset_name(argv_value: str | None = None, env=os.environ) -> str | None:
    """``--preset`` wins over ``STUDIO_PRESET``; None when neither is set."""
    name = argv_value or env.get("STUDIO_PRESET") or None
    if name is not None and name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; expected one of {PRESETS} (or none for the bundled experts).")
    return name


def on_zero_gpu(env=os.environ) -> bool:
    return "SPACES_ZERO_GPU" in env


def _online(env) -> bool:
    return not (env.get("HF_HUB_OFFLINE") in ("1", "true", "True") or env.get("TRANSFORMERS_OFFLINE") in ("1", "true"))


def resolve_preset(name: str, env=os.environ, *, cuda_available=None, hub_reachable=None) -> PresetPlan:
    """The plan for ``name``, or PresetError saying why it cannot run here.

    ``cuda_available`` / ``hub_reachable``: callables for tests; default to torch and a hub ping.
    """
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; expected one of {PRESETS}.")
    zero = on_zero_gpu(env)
    if not zero:  # on ZeroGPU CUDA appears only inside @spaces.GPU functions
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available
        if not cuda_available():
            raise PresetError(f"preset {name!r} needs a CUDA GPU with about {GPU_GB_GOAL} GB (Vicuna-7B in bf16 + "
                              f"4 experts + encoders ≈ {MEMORY_GB} GB of weights); none was found, starting the bundled experts.")
    if not _online(env):
        raise PresetError(f"preset {name!r} downloads {BASE} and {EXPERTS_REPO} from the hub, but the hub is switched "
                          "off (HF_HUB_OFFLINE); starting the bundled experts.")
    if hub_reachable is None:
        hub_reachable = _hub_reachable
    if not hub_reachable():
        raise PresetError(f"preset {name!r} cannot reach the Hugging Face hub to fetch {BASE} and {EXPERTS_REPO}; "
                          "starting the bundled experts.")
    subfolders = [s.strip() for s in env.get(EXPERT_SUBFOLDERS_ENV, "").split(",") if s.strip()]
    if not subfolders:
        raise PresetError(f"preset {name!r}: set {EXPERT_SUBFOLDERS_ENV} to the {EXPERTS_REPO} checkpoint subfolders "
                          "to import (comma-separated); the repository's file list is not known offline.")
    return PresetPlan(name, BASE, tuple(f"{EXPERTS_REPO}:{s}" for s in subfolders), dict(ENCODERS),
                      device="cuda", dtype="bfloat16", zero_gpu=zero)


def _hub_reachable() -> bool:
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(BASE)
        return True
    except Exception:  # offline, DNS, proxy: all mean "cannot fetch"
        return False


IMPORTED = ".cache/modelcompose-experts"  # where the preset imports the hub's experts (once; later starts reuse them)


def load_preset_studio(plan: PresetPlan, repo_root, *, log=print):
    """Import the preset's experts (once), load the base in bf16 and the experts: the Studio the app serves.

    On a ZeroGPU Space everything loads on the CPU and the model moves with ``.to("cuda")`` at
    start-up, as the ``spaces`` library documents; the handlers that compute run under
    ``@spaces.GPU`` (app.py's ``gpu``).
    """
    from pathlib import Path

    import torch

    from composition.importers import import_modelcompose

    from .session import load_studio

    out = Path(repo_root) / IMPORTED
    wanted = [s for s in plan.expert_sources if not _imported(out, s)]
    if wanted:
        log(f"importing {len(wanted)} ModelCompose checkpoint(s) into {out} (once)")
        import_modelcompose(wanted, out)
    device = "cpu" if plan.zero_gpu else plan.device
    studio = load_studio([out], base=plan.base, device=device, dtype=getattr(torch, plan.dtype))
    if plan.zero_gpu:
        studio.cm.model.to("cuda")
        studio.device = "cuda (ZeroGPU)"
    return studio


def _imported(out, source: str) -> bool:
    """True when an expert imported from ``source`` is already in ``out`` (its expert.json records the source)."""
    import json

    for config in out.glob("*/expert.json") if out.is_dir() else ():
        try:
            if json.loads(config.read_text()).get("source", "").startswith(source):
                return True
        except (OSError, ValueError):
            continue
    return False
