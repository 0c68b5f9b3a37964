"""Import the paper's released ModelCompose experts (THUNLP-MT/ModelCompose, hub ``Adu2021/ModelCompose``).

What a checkpoint folder holds (read from the original repository):
- ``config.json``: a LlamaConfig plus ``lora_strategy`` (``same`` | ``modal+language``), ``lora_r``,
  ``lora_alpha``, ``local_prefix_tokens``/``local_suffix_tokens`` (and ``local_<m>_…``),
  ``mm_<m>_encoder``, ``reset_scaling_weights`` (``modelcompose/model/language_model/multimodal_llama.py``,
  ``MultimodalConfig``).
- ``adapter_model.bin``: ``torch.save`` of every trainable parameter (``modelcompose/train/train_multimodal.py``,
  ``get_peft_state_maybe_zero_3`` / ``non_lora_trainables.bin``), keys
  ``model.layers.<i>.{self_attn,mlp}.<proj>.lora_{A,B}.<adapter>.weight`` where the adapter is ``default``
  (text, or the shared delta) or a modality name (``LocalLoraLinear``, one adapter per name of
  ``infer_modals``), ``model.modal_projectors.<m>.{0,2}.{weight,bias}`` (mlp2x_gelu,
  ``modelcompose/model/multimodal_projector/builder.py``) and ``prefix_tokens.<name>`` /
  ``suffix_tokens.<name>`` of shape ``[1, n, hidden]`` for every name ``infer_modals`` returns.
- merged checkpoints (``scripts/model_composition/merge_unimodal_modelcompose.py``, ``online-merge-``,
  the evaluation path the original README documents): every key that occurs in more than one input
  checkpoint is renamed ``key.replace('default', 'default-<m>')`` (its lines 94-103), so the text deltas
  become ``lora_{A,B}.default-<m>`` and, because every DAMC expert carries its own
  ``prefix_tokens.default`` / ``suffix_tokens.default``, also ``prefix_tokens.default-<m>`` /
  ``suffix_tokens.default-<m>``; keys held by one checkpoint (modality deltas, projectors,
  ``prefix_tokens.<m>``) keep their names. ``reset_scaling_weights`` =
  ``"default-vision=0.5,vision=1.0,..."`` (the ``--strategy`` after ``online-merge-reset-``) is
  multiplied by ``LocalLoraLinear`` into each adapter's scaling: λ for ``default-<m>``, μ for ``<m>``.
  Its ``default`` route adds every ``default-<m>`` delta with its λ on every text token, whatever
  inputs a question has (``multimodal_llama.py`` ``LocalLoraLinear.forward``): the composition.json
  written beside the experts says so (``"merge_all_experts": true``), and so do the experts' cards.

``prefix_tokens.default`` / ``suffix_tokens.default`` (and a merged file's ``…default-<m>``): the
original allocates the first (``infer_modals`` includes ``default``) but ``encode_modal_inputs`` only
wraps real modalities, so they never reach the LLM, and it loads the merged names with
``strict=False``, dropping them. They are checked (rank 3, batch 1, the LLM's width, finite) and
not written: no block uses them.

Encoder sources: a checkpoint names its encoders by the paths of the machine it was trained on
(``mm_<m>_encoder``, e.g. ``model/clip-vit-large-patch14-336`` in the training scripts). A path that
exists here is kept; one whose last part is a released encoder the studio knows becomes that
encoder's public source (``RELEASED_ENCODERS``); anything else is kept as written. ``encoder_sources``
(our modality -> source) overrides both, as the ``modelcompose`` preset does.

Strict: the file is read with ``torch.load(weights_only=True)`` (a pickle that needs code is refused,
nothing runs); every key must be recognised; every shape is checked against the checkpoint's own
config; keys must agree with ``lora_strategy``; NaN/inf is refused. The kind comes from
``lora_strategy`` and the keys, never from the folder name. Output is written atomically.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ExpertError
from ..expert import EXPERT_JSON, EncoderRef, Expert, ExpertConfig, ProjectorSpec, save_expert
from ..lora import LLAMA_TARGETS, LoraDelta, check_finite, read_json


class ImportError_(ExpertError):
    """A foreign checkpoint cannot be imported as it is (named with a trailing _: not the builtin)."""


# The original's modality names -> ours, and the encoder kinds our registry loads them with.
MODALITY_NAMES = {"vision": "image", "audio": "audio", "video": "video", "point": "point"}
ENCODER_KINDS = {"vision": "clip", "audio": "beats", "video": "languagebind-video", "point": "point-bert"}
LABELS = {"vision": "images (LLaVA-1.5 instruction data)", "audio": "audio clips (WavCaps/AudioCaps instructions)",
          "video": "videos (Video-ChatGPT instructions)", "point": "point clouds (PointLLM instructions)"}
STRATEGIES = {"same": "shared", "modal+language": "decoupled"}
# The last part of the original's encoder paths (ModelCompose scripts/model_composition/train/run_finetune_*.sh:
# --mm_vision_encoder model/clip-vit-large-patch14-336, --mm_audio_encoder model/beats/BEATs_iter3_plus_AS2M.pt,
# --mm_video_encoder model/LanguageBind_Video_merge, --mm_point_encoder model/PointLLM/point_bert_v1.2.pt) -> where
# the studio's encoders load them from. BEATs is published by microsoft/unilm (beats/README.md), not on the hub:
# None makes its encoder say where to get it.
RELEASED_ENCODERS = {"clip-vit-large-patch14-336": "openai/clip-vit-large-patch14-336",
                     "BEATs_iter3_plus_AS2M.pt": None,
                     "LanguageBind_Video_merge": "LanguageBind/LanguageBind_Video_merge",
                     "point_bert_v1.2.pt": "RunsenXu/PointLLM_7B_v1.1_init:point_bert_v1.2.pt"}
MERGE_ALL_NOTE = ("part of a merged checkpoint of the original: as there, its DAMC adds every merged expert's text "
                  "delta with the stored λ on every text token, whatever inputs a question has")
DEFAULT_BASE = "lmsys/vicuna-7b-v1.5"
WEIGHT_FILES = ("adapter_model.bin", "non_lora_trainables.bin", "mm_projector.bin")
COMPOSITION_JSON = "composition.json"
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")

_LORA = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\.(?P<proj>\w+)"
                   r"\.lora_(?P<factor>[AB])\.(?P<adapter>[\w+-]+)\.weight$")
_PROJ = re.compile(r"^(?:base_model\.model\.)?model\.modal_projectors\.(?P<m>\w+)\.(?P<idx>[02])\.(?P<p>weight|bias)$")
_TOKENS = re.compile(r"^(?:base_model\.model\.)?(?P<which>prefix|suffix)_tokens\.(?P<name>\w+(?:-\w+)?)$")
_QFORMER = re.compile(r"^(?:base_model\.model\.)?model\.modal_projectors\.audio\.(?P<rest>(?:audio_Qformer|audio_query_tokens|"
                      r"audio_position_embedding|audio_llama_proj).*)$")


@dataclass(frozen=True)
class Shape:
    """The sizes a checkpoint's own config.json promises; every tensor is checked against them."""

    hidden: int
    intermediate: int
    layers: int
    kv_out: int
    r: int
    alpha: float

    def lora(self, proj: str) -> tuple[tuple[int, int], tuple[int, int]]:
        """(A shape, B shape) of the LoRA factors on ``proj``."""
        fin = self.intermediate if proj == "down_proj" else self.hidden
        fout = {"k_proj": self.kv_out, "v_proj": self.kv_out, "gate_proj": self.intermediate,
                "up_proj": self.intermediate}.get(proj, self.hidden)
        return (self.r, fin), (fout, self.r)


def _int_field(config: dict, key: str, where: str, minimum: int = 1) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ImportError_(f"{where}: config.json {key}={value!r:.60} must be an integer >= {minimum}.")
    return value


def read_shape(config: dict, where: str) -> Shape:
    hidden = _int_field(config, "hidden_size", where)
    heads = _int_field(config, "num_attention_heads", where)
    kv = config.get("num_key_value_heads") or heads
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ImportError_(f"{where}: config.json lora_alpha={alpha!r:.60} must be a positive number.")
    return Shape(hidden, _int_field(config, "intermediate_size", where), _int_field(config, "num_hidden_layers", where),
                 kv * (hidden // heads), _int_field(config, "lora_r", where), float(alpha))


def read_checkpoint(folder: Path, where: str) -> dict[str, torch.Tensor]:
    """All tensors of the folder's weight files, loaded with ``weights_only=True`` (code is never run)."""
    tensors: dict[str, torch.Tensor] = {}
    files = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not files:
        raise ImportError_(f"{where}: no {WEIGHT_FILES[0]} in the folder; point at a ModelCompose checkpoint folder.")
    for path in files:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ImportError_(f"{where}: {path.name} needs code to unpickle ({str(exc).splitlines()[0][:120]}); it is "
                               "refused and nothing in it ran. Only plain tensor checkpoints are imported.") from None
        except Exception as exc:  # truncated zip, not a torch file
            raise ImportError_(f"{where}: {path.name} is not a readable torch checkpoint "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}).") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
            raise ImportError_(f"{where}: {path.name} must hold a dict of named tensors.")
        for key in data:
            if key in tensors:
                raise ImportError_(f"{where}: key {key!r} appears in two weight files; keep one copy.")
        tensors.update(data)
    try:
        check_finite(tensors, f"{where}: weights")
    except ExpertError as exc:
        raise ImportError_(str(exc)) from None
    return tensors


def checkpoint_modalities(config: dict) -> list[str]:
    """The original modality names whose ``mm_<m>_encoder`` is set (as the merge script's get_modal_from_config)."""
    return [m for m in MODALITY_NAMES if isinstance(config.get(f"mm_{m}_encoder"), str) and config[f"mm_{m}_encoder"]]


def parse_scalings(text: str | None, where: str) -> dict[str, float]:
    """``reset_scaling_weights`` -> {adapter: factor} (LocalLoraLinear.extract_params)."""
    if not text:
        return {}
    out = {}
    for pair in str(text).split(","):
        key, sep, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not math.isfinite(number):
            raise ImportError_(f"{where}: reset_scaling_weights item {pair!r:.60} must be 'name=number'.")
        out[key.strip()] = number
    return out


def _tokens_count(config: dict, m: str, which: str) -> int:
    own = config.get(f"local_{m}_{which}_tokens")
    return config.get(f"local_{which}_tokens", 0) or 0 if own is None else own


def encoder_source(written: object, ours: str, encoder_sources: dict | None = None) -> str | None:
    """Where our encoder loads the checkpoint's ``mm_<m>_encoder`` from (see the module docstring)."""
    if encoder_sources and ours in encoder_sources:
        return encoder_sources[ours]
    if not isinstance(written, str) or not written.strip():
        return None
    try:
        if Path(written).expanduser().exists():
            return written
    except (OSError, ValueError, RuntimeError):  # a NUL byte, an unknown ~user: not a path here
        pass
    name = written.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return RELEASED_ENCODERS[name] if name in RELEASED_ENCODERS else written


def convert(folder: Path, source: str, encoder_sources: dict | None = None) -> tuple[list[Expert], dict]:
    """Validate one checkpoint folder and turn it into experts (in memory) plus a composition sidecar."""
    where = f"checkpoint {source!r}"
    config = read_json(folder / "config.json", where)
    strategy = config.get("lora_strategy")
    if strategy not in STRATEGIES:
        raise ImportError_(f"{where}: lora_strategy {strategy!r:.40} is not one of {sorted(STRATEGIES)}.")
    read_shape(config, where)  # the config is checked before any weights are read
    modalities = checkpoint_modalities(config)
    if not modalities:
        raise ImportError_(f"{where}: config.json sets no mm_<vision|audio|video|point>_encoder; which modality is it?")
    return build_experts(config, read_checkpoint(folder, where), source, encoder_sources=encoder_sources)


def build_experts(config: dict, tensors: dict[str, torch.Tensor], source: str, *,
                  validate_only: bool = False, encoder_sources: dict | None = None) -> tuple[list[Expert], dict]:
    """Check every key and shape of ``tensors`` against ``config`` and build the experts.

    ``validate_only`` stops after the checks (tensors may then live on the meta device: the
    full-size test checks Vicuna-7B's key/shape set without the memory).
    """
    where = f"checkpoint {source!r}"
    strategy = config.get("lora_strategy")
    if strategy not in STRATEGIES:
        raise ImportError_(f"{where}: lora_strategy {strategy!r:.40} is not one of {sorted(STRATEGIES)}.")
    shape = read_shape(config, where)
    modalities = checkpoint_modalities(config)
    if not modalities:
        raise ImportError_(f"{where}: config.json sets no mm_<vision|audio|video|point>_encoder; which modality is it?")
    scalings = parse_scalings(config.get("reset_scaling_weights"), where)
    merged = any(k.startswith("default-") for k in scalings) or any(".default-" in k for k in tensors)
    # LoRA adapters expected: names as they appear in keys.
    if merged:
        text_names = {m: f"default-{m}" for m in modalities}
    else:
        if len(modalities) != 1:
            raise ImportError_(f"{where}: {len(modalities)} modalities configured ({modalities}) but no merged "
                               "'default-<m>' keys; a single expert has one modality.")
        text_names = {modalities[0]: "default"}
    decoupled = strategy == "modal+language"
    adapters = set(text_names.values()) | (set(modalities) if decoupled else set())
    factors: dict[str, dict[str, dict[str, torch.Tensor]]] = {a: {"A": {}, "B": {}} for a in adapters}
    projectors: dict[str, dict[str, torch.Tensor]] = {m: {} for m in modalities}
    tokens: dict[tuple[str, str], torch.Tensor] = {}
    # Boundary-token names a checkpoint may hold: its modalities, 'default' (allocated, never used) and, in
    # a merged file, each expert's renamed 'default-<m>'.
    token_names = (*modalities, "default", *((f"default-{m}" for m in modalities) if merged else ()))
    unknown = []
    for key, value in tensors.items():
        if (lo := _LORA.match(key)) is not None:
            adapter, proj, layer = lo["adapter"], lo["proj"], int(lo["layer"])
            if adapter not in adapters:
                if adapter in modalities and not decoupled:
                    raise ImportError_(f"{where}: key {key!r} is a modality delta but lora_strategy is 'same' "
                                       "(one shared delta); the config contradicts the weights.")
                unknown.append(key)
                continue
            block = "self_attn" if proj in ATTN else "mlp"
            if proj not in LLAMA_TARGETS or lo["block"] != block or layer >= shape.layers:
                unknown.append(key)
                continue
            want = shape.lora(proj)[0 if lo["factor"] == "A" else 1]
            if tuple(value.shape) != want:
                raise ImportError_(f"{where}: {key} has shape {tuple(value.shape)}, expected {want} "
                                   f"(hidden {shape.hidden}, intermediate {shape.intermediate}, r {shape.r}).")
            factors[adapter][lo["factor"]][f"model.layers.{layer}.{block}.{proj}"] = value
        elif (pm := _PROJ.match(key)) is not None and pm["m"] in projectors:
            projectors[pm["m"]][f"{pm['idx']}.{pm['p']}"] = value
        elif (tm := _TOKENS.match(key)) is not None and tm["name"] in token_names:
            tokens[(tm["which"], tm["name"])] = value
        elif (qm := _QFORMER.match(key)) is not None and "audio" in projectors:
            projectors["audio"][qm["rest"]] = value  # the audio Q-Former, in the original's key names
        else:
            unknown.append(key)
    if unknown:
        raise ImportError_(f"{where}: {len(unknown)} unrecognised key(s), e.g. {sorted(unknown)[:3]}; nothing was "
                           "imported (the original's strict=False load would drop them silently).")
    expected_modules = {f"model.layers.{i}.{'self_attn' if p in ATTN else 'mlp'}.{p}" for i in range(shape.layers) for p in LLAMA_TARGETS}
    deltas: dict[str, LoraDelta] = {}
    for adapter, fac in factors.items():
        for factor, other in (("A", "B"), ("B", "A")):
            missing = sorted(expected_modules - set(fac[factor]))
            if missing:
                hint = (" lora_strategy 'modal+language' needs a modality delta for every layer" if adapter in modalities else "")
                raise ImportError_(f"{where}: lora_{factor}.{adapter} is missing for {len(missing)} module(s), e.g. "
                                   f"{missing[0]!r}.{hint}")
        deltas[adapter] = LoraDelta(shape.r, shape.alpha, dict(sorted(fac["A"].items())), dict(sorted(fac["B"].items())))
    for which, name in tokens:
        if name not in token_names:
            raise ImportError_(f"{where}: {which}_tokens.{name} is not a configured modality.")
    experts = []
    lambdas, mus = {}, {}
    for m in modalities:
        ours = MODALITY_NAMES[m]
        kind = STRATEGIES[strategy]
        name = f"mc-{ours}" if kind == "decoupled" else f"mc-{ours}-shared"
        spec, projector_state = _projector_spec(projectors[m], shape.hidden, config, m, where)
        counts = {}
        boundary = {}
        for which in ("prefix", "suffix"):
            n = _tokens_count(config, m, which)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ImportError_(f"{where}: local_{which}_tokens for {m} = {n!r:.40} must be a count.")
            t = tokens.pop((which, m), None)
            if n and t is None:
                raise ImportError_(f"{where}: {which}_tokens.{m} is missing but config.json asks for {n} {which} tokens.")
            if t is not None and tuple(t.shape) != (1, n, shape.hidden):
                raise ImportError_(f"{where}: {which}_tokens.{m} has shape {tuple(t.shape)}, expected {(1, n, shape.hidden)}.")
            boundary[which] = torch.zeros(0, shape.hidden) if t is None else t[0].float()
            counts[which] = n
        if validate_only:
            continue
        text = deltas[text_names[m]]
        delta_map = {"text": text, "modality": deltas[m]} if kind == "decoupled" else {"shared": text}
        cfg = ExpertConfig(
            name=name, modality=ours, training=kind,
            base_model_name=str(config.get("_name_or_path") or DEFAULT_BASE) if not merged else DEFAULT_BASE,
            base_model_sha256=None,
            encoder=EncoderRef(ENCODER_KINDS[m], encoder_source(config.get(f"mm_{m}_encoder"), ours, encoder_sources), spec.in_dim),
            projector=spec, prefix_tokens=counts["prefix"], suffix_tokens=counts["suffix"],
            description=f"ModelCompose {ours} expert (lora_strategy {strategy!r}), imported"
                        + (f"; {MERGE_ALL_NOTE}" if merged else ""),
            trained_on=LABELS[m], source=source if not merged else f"{source} (merged checkpoint, {ours} part)")
        projector = spec.build()
        projector.load_state_dict({k: v.float() for k, v in projector_state.items()})
        experts.append(Expert(cfg, {k: v.to(torch.float32) for k, v in delta_map.items()}, projector,
                              boundary["prefix"], boundary["suffix"]))
        if merged:
            lambdas[name] = scalings.get(text_names[m], 1.0)
            if kind == "decoupled":
                mus[ours] = scalings.get(m, 1.0)
    for (which, name), t in tokens.items():  # only 'default' / 'default-<m>' are left: never used (see module doc)
        if t.ndim != 3 or tuple(t.shape[::2]) != (1, shape.hidden):
            raise ImportError_(f"{where}: {which}_tokens.{name} has shape {tuple(t.shape)}, expected (1, n, {shape.hidden}).")
    # A merged checkpoint composes as the original does: every merged expert's text delta, whatever the inputs.
    sidecar = {"source": source, "lambdas": lambdas, "mus": mus, "merge_all_experts": True} if merged else {}
    return experts, sidecar


def _projector_spec(state: dict[str, torch.Tensor], hidden: int, config: dict, m: str,
                    where: str) -> tuple[ProjectorSpec, dict[str, torch.Tensor]]:
    """The projector's spec and its weights in our layout (mlp2x_gelu for every modality, the Q-Former for audio)."""
    ptype = config.get(f"mm_{m}_projector_type", config.get("mm_projector_type", "mlp2x_gelu"))
    if m == "audio" and (qf := re.match(r"^qformer_(\d+)N_(\d+)L$", str(ptype))) is not None:
        return _qformer_spec(state, hidden, config, int(qf[1]), int(qf[2]), where)
    keys = {"0.weight", "0.bias", "2.weight", "2.bias"}
    if set(state) != keys:
        raise ImportError_(f"{where}: projector model.modal_projectors.{m} has keys {sorted(state)}, expected the "
                           f"mlp2x_gelu set {sorted(keys)}.")
    in_dim = state["0.weight"].shape[-1] if state["0.weight"].ndim == 2 else -1
    declared = config.get(f"mm_{m}_hidden_size", config.get("mm_hidden_size") if m == "vision" else None)
    if declared is not None and declared != in_dim:
        raise ImportError_(f"{where}: projector {m} reads {in_dim}-d features but config says mm_{m}_hidden_size={declared}.")
    want = {"0.weight": (hidden, in_dim), "0.bias": (hidden,), "2.weight": (hidden, hidden), "2.bias": (hidden,)}
    for k, s in want.items():
        if tuple(state[k].shape) != s:
            raise ImportError_(f"{where}: model.modal_projectors.{m}.{k} has shape {tuple(state[k].shape)}, expected {s}.")
    if ptype != "mlp2x_gelu":
        raise ImportError_(f"{where}: projector type {ptype!r:.40} for {m} is not supported; expected 'mlp2x_gelu'"
                           f"{' or qformer_<N>N_<L>L' if m == 'audio' else ''}.")
    return ProjectorSpec("mlp2x_gelu", int(in_dim), hidden), dict(state)


def _qformer_spec(state: dict[str, torch.Tensor], hidden: int, config: dict, queries: int, layers: int,
                  where: str) -> tuple[ProjectorSpec, dict[str, torch.Tensor]]:
    """The audio Q-Former (builder.py ``VideoLlamaAudioQformer``): every key mapped, every shape checked."""
    from ..projectors import BERT_HEADS, modelcompose_keys, qformer_dims

    mapped, unknown = modelcompose_keys(state)
    if unknown:
        raise ImportError_(f"{where}: {len(unknown)} audio Q-Former key(s) are not recognised, e.g. "
                           f"model.modal_projectors.audio.{sorted(unknown)[0]}; nothing was imported.")
    try:
        dims = qformer_dims(mapped)
    except KeyError as missing:
        raise ImportError_(f"{where}: the audio Q-Former lacks {missing.args[0]}; the checkpoint is incomplete.") from None
    if (dims["queries"], dims["layers"]) != (queries, layers):
        raise ImportError_(f"{where}: config says qformer_{queries}N_{layers}L but the weights hold {dims['queries']} "
                           f"queries and {dims['layers']} layers.")
    in_dim = int(mapped["position_embedding.weight"].shape[1])
    if dims["width"] % BERT_HEADS:
        raise ImportError_(f"{where}: the audio Q-Former is {dims['width']} wide, not a multiple of BERT's {BERT_HEADS} heads.")
    declared = config.get("mm_audio_hidden_size")
    if declared is not None and declared != in_dim:
        raise ImportError_(f"{where}: the audio Q-Former reads {in_dim}-d features but config says mm_audio_hidden_size={declared}.")
    spec = ProjectorSpec("qformer", in_dim, hidden, **dims)
    expected = {k: tuple(v.shape) for k, v in spec.build().state_dict().items()}
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise ImportError_(f"{where}: the audio Q-Former lacks {len(missing)} weight(s), e.g. {missing[0]!r} (our name).")
    for key, want in expected.items():
        if tuple(mapped[key].shape) != want:
            raise ImportError_(f"{where}: audio Q-Former {key} has shape {tuple(mapped[key].shape)}, expected {want} "
                               f"(width {dims['width']}, {in_dim}-d features, LLM hidden {hidden}).")
    return spec, mapped


def resolve_source(src: str) -> tuple[Path, str]:
    """A local folder, or ``owner/name[:subfolder]`` fetched from the hub (online only)."""
    path = Path(src)
    if path.is_dir():
        return path, str(src)
    repo, _, sub = src.partition(":")
    if repo.count("/") != 1:
        raise ImportError_(f"source {src!r}: not a folder, and not a hub id 'owner/name[:subfolder]'.")
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(repo, allow_patterns=[f"{sub}/*"] if sub else None)
    except Exception as exc:  # offline, unknown repo, gated
        raise ImportError_(f"source {src!r}: cannot download from the hub ({type(exc).__name__}); pass a local "
                           "checkpoint folder instead.") from None
    folder = Path(root) / sub if sub else Path(root)
    if not folder.is_dir():
        raise ImportError_(f"source {src!r}: the hub repository has no folder {sub!r}.")
    return folder, src


def import_modelcompose(sources: list[str], out: Path, *, encoder_sources: dict | None = None) -> list[Path]:
    """Import every source; write nothing unless all are valid. Returns the expert folders written.

    ``encoder_sources``: our modality -> the encoder source written into its experts (default: from each
    checkpoint's ``mm_<m>_encoder``, see ``encoder_source``).
    """
    out = Path(out)
    converted = [convert(*resolve_source(s), encoder_sources=encoder_sources) for s in sources]
    names = [e.name for experts, _ in converted for e in experts]
    if len(set(names)) != len(names):
        raise ImportError_(f"two sources give the same expert ({sorted(n for n in names if names.count(n) > 1)[0]}); "
                           "import them into different --out folders.")
    for n in names:
        if (out / n).exists():
            raise ImportError_(f"{out / n} already exists; remove it or pick another --out.")
    sidecars = [s for _, s in converted if s]
    if len(sidecars) > 1:
        raise ImportError_("more than one merged checkpoint given; import each into its own --out folder.")
    if sidecars and (out / COMPOSITION_JSON).exists():
        raise ImportError_(f"{out / COMPOSITION_JSON} already exists; pick another --out.")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    written: list[Path] = []
    try:
        for experts, _ in converted:
            for e in experts:
                save_expert(e, staging / e.name)
        if sidecars:
            (staging / COMPOSITION_JSON).write_text(json.dumps(sidecars[0], indent=2) + "\n")
        for child in sorted(staging.iterdir()):
            os.rename(child, out / child.name)
            written.append(out / child.name)
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [p for p in written if (p / EXPERT_JSON).is_file()]
