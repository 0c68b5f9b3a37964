"""``--preset modelcompose`` (or ``STUDIO_PRESET=modelcompose``): the paper's own experts, resolved without gradio.

What it needs, and where each piece comes from (docs/paper-experts.md has the table):
- the base ``lmsys/vicuna-7b-v1.5`` (the original README: "We use vicuna-7b-v1.5 as our base model");
- the released experts, the hub repository ``Adu2021/ModelCompose`` (README: "We have released our trained
  checkpoints at Hugging Face"): eight folders ``multimodal-vicuna-7b-v1.5-{vision,audio,video,point}-
  {damc,naivemc}/``, each with ``adapter_model.bin``, ``config.json`` and ``trainer_state.json``. The
  preset imports the four DAMC ones by default; ``STUDIO_MODELCOMPOSE_EXPERTS`` picks others by short
  name (``vision-damc`` ... ``point-naivemc``, comma-separated). They are imported once with
  composition.importers into ``.cache/modelcompose-experts``; later starts reuse them;
- the encoders (``ENCODERS``), named by the paths the original's training scripts give
  (``scripts/model_composition/train/run_finetune_<m>_damc.sh``; the README names no encoder file).
  CLIP, LanguageBind video and Point-BERT come from the hub; BEATs is published by microsoft/unilm
  (``beats/README.md``), not on the hub: ``STUDIO_BEATS_WEIGHTS=PATH`` gives it, and without it
  the audio expert loads but says what to do when an audio file is given.

Everything hub-hosted goes through huggingface_hub's cache (``hf_hub_download`` / ``snapshot_download``),
so with ``HF_HUB_OFFLINE=1`` and a filled cache the preset starts with no network; a missing file is a
PresetError that names it, and the app starts the bundled set instead.

It runs on a GPU in bf16. On a ZeroGPU Space the model is loaded on the CPU at start-up and moved
with ``.to("cuda")`` at module level, and the functions that compute are decorated with
``@spaces.GPU`` (the ``spaces`` library's documented placement:
huggingface.co/spaces/zero-gpu-explorers/README); CUDA must not be initialised in the main process
before that. Without a GPU, or without the hub (online) and its cache, ``resolve_preset`` /
``load_preset_studio`` raise PresetError with a one-line reason so the app starts the bundled set.

Memory (bf16, 2 bytes a parameter): Vicuna-7B 6.74 B parameters = 13.5 GB; one r=128 delta on
7 targets x 32 layers: per layer 128 x (4·(4096+4096) + 3·(4096+11008)) = 9.99 M, x 32 = 320 M
parameters = 0.64 GB; a decoupled expert has two (text + modality) = 1.28 GB, four experts 5.1 GB;
CLIP ViT-L/14-336 0.30 B = 0.6 GB; BEATs 90 M, LanguageBind video ~0.3 B, Point-BERT ~22 M ≈ 0.85 GB;
projectors ≈ 0.17 GB. Total ≈ 20.2 GB of weights, plus the KV cache of six side-by-side rows
(32 layers x 2 x 4096 x 2 bytes = 0.5 MB a token: 6 rows x 1 k tokens ≈ 3 GB): one 24 GB GPU, tight;
fp16/bf16 deltas of shared experts (one delta each) halve the 5.1 GB.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .errors import StudioError

PRESETS = ("modelcompose",)
BASE = "lmsys/vicuna-7b-v1.5"
EXPERTS_REPO = "Adu2021/ModelCompose"
EXPERT_FOLDER_PREFIX = "multimodal-vicuna-7b-v1.5-"  # + <short name>: the repository's folders
SHORT_NAMES = tuple(f"{m}-{kind}" for m in ("vision", "audio", "video", "point") for kind in ("damc", "naivemc"))
DEFAULT_EXPERTS = ("vision-damc", "audio-damc", "video-damc", "point-damc")
EXPERT_SUBFOLDERS_ENV = "STUDIO_MODELCOMPOSE_EXPERTS"
BEATS_WEIGHTS_ENV = "STUDIO_BEATS_WEIGHTS"
MEMORY_GB = 20.2  # weights in bf16, see the module docstring
GPU_GB_GOAL = 24


@dataclass(frozen=True)
class WeightSource:
    """Where one encoder's weights come from.

    ``source`` is what the encoder registry loads (a hub id, ``owner/name:file`` for one file of a hub
    repository, or a local path; None: not available here); ``original`` is the path the original's
    training script passes (``--mm_<m>_encoder``), whose last part is the released file or folder name;
    ``where`` says in words who publishes it.
    """

    kind: str
    source: str | None
    original: str
    where: str


ENCODERS = {
    "image": WeightSource("clip", "openai/clip-vit-large-patch14-336", "model/clip-vit-large-patch14-336",
                          "the hub, openai/clip-vit-large-patch14-336"),
    "audio": WeightSource("beats", None, "model/beats/BEATs_iter3_plus_AS2M.pt",
                          f"microsoft/unilm beats/README.md (not on the hub; set {BEATS_WEIGHTS_ENV}=PATH)"),
    "video": WeightSource("languagebind-video", "LanguageBind/LanguageBind_Video_merge", "model/LanguageBind_Video_merge",
                          "the hub, LanguageBind/LanguageBind_Video_merge"),
    "point": WeightSource("point-bert", "RunsenXu/PointLLM_7B_v1.1_init:point_bert_v1.2.pt",
                          "model/PointLLM/point_bert_v1.2.pt",
                          "the hub, PointLLM's initial weights RunsenXu/PointLLM_7B_v1.1_init (OpenRobotLab/PointLLM README)"),
}


class PresetError(StudioError):
    """A preset cannot run here (no GPU, hub unreachable, files missing from the cache, unknown name); the
    app falls back to the bundled set."""


@dataclass(frozen=True)
class PresetPlan:
    """What the app loads for a preset: where from, on which device, in which dtype."""

    name: str
    base: str
    expert_sources: tuple[str, ...]
    encoders: dict = field(default_factory=dict)  # our modality -> WeightSource
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


def _offline(env) -> bool:
    return env.get("HF_HUB_OFFLINE") in ("1", "true", "True", "TRUE", "yes") or env.get("TRANSFORMERS_OFFLINE") in ("1", "true")


def expert_folders(env=os.environ) -> tuple[str, ...]:
    """The repository folders to import: ``STUDIO_MODELCOMPOSE_EXPERTS`` (short names such as ``vision-damc``,
    or the full folder names), default the four DAMC experts."""
    given = [s.strip() for s in env.get(EXPERT_SUBFOLDERS_ENV, "").split(",") if s.strip()]
    folders = []
    for name in given or DEFAULT_EXPERTS:
        short = name[len(EXPERT_FOLDER_PREFIX):] if name.startswith(EXPERT_FOLDER_PREFIX) else name
        if short not in SHORT_NAMES:
            raise PresetError(f"{EXPERT_SUBFOLDERS_ENV}: {name!r} is not one of {EXPERTS_REPO}'s experts; expected "
                              f"comma-separated names from {', '.join(SHORT_NAMES)}.")
        if EXPERT_FOLDER_PREFIX + short not in folders:
            folders.append(EXPERT_FOLDER_PREFIX + short)
    return tuple(folders)


def encoder_sources(env=os.environ) -> dict[str, WeightSource]:
    """``ENCODERS``, with BEATs from ``STUDIO_BEATS_WEIGHTS`` when it is set."""
    encoders = dict(ENCODERS)
    beats = env.get(BEATS_WEIGHTS_ENV, "").strip()
    if beats:
        encoders["audio"] = dataclasses.replace(encoders["audio"], source=beats)
    return encoders


def resolve_preset(name: str, env=os.environ, *, cuda_available=None, hub_reachable=None) -> PresetPlan:
    """The plan for ``name``, or PresetError saying why it cannot run here.

    ``cuda_available`` / ``hub_reachable``: callables for tests; default to torch and a hub ping. Offline
    (``HF_HUB_OFFLINE``) the hub is not pinged: everything must already be in huggingface_hub's cache,
    which ``load_preset_studio`` finds out file by file.
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
    folders = expert_folders(env)
    if not _offline(env):
        if hub_reachable is None:
            hub_reachable = _hub_reachable
        if not hub_reachable():
            raise PresetError(f"preset {name!r} cannot reach the Hugging Face hub to fetch {BASE} and {EXPERTS_REPO}; "
                              "starting the bundled experts.")
    return PresetPlan(name, BASE, tuple(f"{EXPERTS_REPO}:{f}" for f in folders), encoder_sources(env),
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
    """Import the preset's experts (once), load the base and the experts: the Studio the app serves.

    Each expert's encoder loads from the plan's source for its modality (``ENCODERS``), whatever the
    imported expert.json recorded, so setting ``STUDIO_BEATS_WEIGHTS`` later takes effect on the next start.
    On a ZeroGPU Space everything loads on the CPU and the model moves with ``.to("cuda")`` at
    start-up, as the ``spaces`` library documents; the handlers that compute run under
    ``@spaces.GPU`` (app.py's ``gpu``). A file that cannot be fetched (offline and not in the hub
    cache, no access) is a PresetError that says which.
    """
    from pathlib import Path

    import torch

    from composition.importers import import_modelcompose
    from modalities.checks import UserError

    from .session import load_studio

    out = Path(repo_root) / IMPORTED
    wanted = [s for s in plan.expert_sources if not _imported(out, s)]
    sources = {modality: ws.source for modality, ws in plan.encoders.items()}
    try:
        if wanted:
            log(f"importing {len(wanted)} ModelCompose checkpoint(s) into {out} (once)")
            import_modelcompose(wanted, out, encoder_sources=sources)
        device = "cpu" if plan.zero_gpu else plan.device
        studio = load_studio([out], base=plan.base, device=device, dtype=getattr(torch, plan.dtype))
    except UserError as exc:
        raise PresetError(f"preset {plan.name!r}: {str(exc).splitlines()[0]} Starting the bundled experts.") from None
    if not studio.cm.experts:
        problems = "; ".join(studio.load_problems) or "none was found"
        raise PresetError(f"preset {plan.name!r}: no expert could be loaded ({problems}). Starting the bundled experts.")
    for note in point_encoders(studio, plan.encoders):
        log(note)
        studio.load_problems.append(note)
    if plan.zero_gpu:
        studio.cm.model.to("cuda")
        studio.device = "cuda (ZeroGPU)"
    return studio


def point_encoders(studio, encoders: dict) -> list[str]:
    """Point every loaded expert's encoder at the plan's source for its modality; notes for those without one."""
    from composition.expert import EncoderRef

    notes = []
    for expert in studio.cm.experts.values():
        ws = encoders.get(expert.modality)
        ref = expert.config.encoder
        if ws is None or ws.kind != ref.kind:
            continue
        if ref.source != ws.source:
            expert.config = dataclasses.replace(expert.config, encoder=EncoderRef(ref.kind, ws.source, ref.feature_dim))
        if ws.source is None:
            notes.append(f"{expert.name}: its encoder's weights ({ws.original.rsplit('/', 1)[-1]}) come from {ws.where}; "
                         f"until then it cannot read {expert.modality} files.")
    return notes


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
