"""An expert on disk and in memory (DESIGN.md §3).

A folder holds ``expert.json`` (what the expert is), one peft adapter folder per delta
(``shared/`` or ``text/`` + ``modality/``) and ``projector.safetensors`` (projector,
learned prefix/suffix tokens, and any encoder weights the expert trained itself).
Loading is strict: a missing or unexpected key, a wrong shape, an unknown modality or a
newer format version is an ExpertError naming the file and the problem. A base model
whose weights hash differs from the one the expert was trained on only warns, since
users legitimately try experts on a re-saved copy of the same base.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from modalities.checks import check_int

from .errors import ExpertError
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraDelta, check_finite, load_lora, read_json, read_safetensors, save_lora

FORMAT_VERSION = 1
TRAINING_KINDS = ("shared", "decoupled")
# Which adapter folders each training kind has; the names are also the delta names.
DELTA_NAMES = {"shared": ("shared",), "decoupled": ("text", "modality")}
PROJECTOR_TYPES = ("linear", "mlp2x_gelu", "qformer")
EXPERT_JSON = "expert.json"
PROJECTOR_FILE = "projector.safetensors"
MAX_NAME_CHARS = 100


def known_modalities() -> tuple[str, ...]:
    from modalities import MODALITY_NAMES

    return tuple(MODALITY_NAMES)


QFORMER_FIELDS = ("queries", "layers", "width", "intermediate", "positions")


@dataclass(frozen=True)
class ProjectorSpec:
    """Maps encoder features (in_dim) to LLM embeddings (out_dim).

    ``qformer`` (the paper's audio projector, ``composition/projectors.py``) also needs its
    query count, layers, width, feed-forward size and position table size; the other types
    leave them None.
    """

    type: str
    in_dim: int
    out_dim: int
    queries: int | None = None
    layers: int | None = None
    width: int | None = None
    intermediate: int | None = None
    positions: int | None = None

    def __post_init__(self) -> None:
        if self.type not in PROJECTOR_TYPES:
            raise ExpertError(f"projector type {self.type!r:.80} is not supported; expected one of {PROJECTOR_TYPES}.")
        for name in ("in_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ExpertError(f"projector {name}={value!r:.80} must be a positive integer.")
        for name in QFORMER_FIELDS:
            value = getattr(self, name)
            if self.type == "qformer":
                check_int(value, name, 1, error=ExpertError, owner="qformer projector")
            elif value is not None:
                raise ExpertError(f"projector {name}={value!r:.40} applies only to a qformer projector, not {self.type!r}.")

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def build(self) -> nn.Module:
        if self.type == "qformer":
            from .projectors import AudioQFormer

            return AudioQFormer(self.in_dim, self.out_dim, **{k: getattr(self, k) for k in QFORMER_FIELDS})
        if self.type == "linear":
            return nn.Sequential(nn.Linear(self.in_dim, self.out_dim))
        # LLaVA's mlp2x_gelu: Linear -> GELU -> Linear.
        return nn.Sequential(nn.Linear(self.in_dim, self.out_dim), nn.GELU(), nn.Linear(self.out_dim, self.out_dim))


@dataclass(frozen=True)
class EncoderRef:
    """Which frozen encoder turns this expert's input files into features."""

    kind: str
    source: str | None = None
    feature_dim: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ExpertError(f"encoder kind {self.kind!r:.80} must be a non-empty string such as 'efficientnet-lite0'.")
        if self.source is not None and (not isinstance(self.source, str) or not self.source.strip()):
            raise ExpertError(f"encoder source {self.source!r:.80} must be null (the kind's default) or a hub id / folder string.")
        if not isinstance(self.feature_dim, int) or isinstance(self.feature_dim, bool) or self.feature_dim < 1:
            raise ExpertError(f"encoder feature_dim={self.feature_dim!r:.80} must be a positive integer.")


@dataclass(frozen=True)
class ExpertConfig:
    """The contents of ``expert.json``, validated on construction."""

    name: str
    modality: str
    training: str
    base_model_name: str
    base_model_sha256: str
    encoder: EncoderRef
    projector: ProjectorSpec
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    description: str = ""
    # What the expert knows, in a sentence the catalog and every answer card show (an expert
    # asked about something else answers from that world anyway; users need to know).
    trained_on: str = ""
    # Where the expert came from: "" for experts trained here, else e.g. the imported checkpoint.
    source: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or any(c in self.name for c in "/\\:,\n"):
            raise ExpertError(f"expert name {self.name!r:.80} must be a non-empty string without '/', '\\\\', ':', ',' or newlines.")
        if len(self.name) > MAX_NAME_CHARS or not self.name.isprintable():
            raise ExpertError(f"expert name {self.name!r:.80} must be at most {MAX_NAME_CHARS} printable characters "
                              "(no control characters); rename the expert in its expert.json.")
        for name in ("base_model_name", "description", "trained_on", "source"):
            if not isinstance(getattr(self, name), str):
                raise ExpertError(f"expert {self.name!r}: {name}={getattr(self, name)!r:.80} must be a string.")
        if self.base_model_sha256 is not None and not isinstance(self.base_model_sha256, str):
            raise ExpertError(f"expert {self.name!r}: base_model sha256={self.base_model_sha256!r:.80} must be a hex string "
                              "(or null when unknown).")
        modalities = known_modalities()
        if self.modality not in modalities:
            raise ExpertError(f"expert {self.name!r}: modality {self.modality!r:.80} is unknown; expected one of {modalities}.")
        if self.training not in TRAINING_KINDS:
            raise ExpertError(f"expert {self.name!r}: training {self.training!r:.80} is unknown; expected one of {TRAINING_KINDS}.")
        for name in ("prefix_tokens", "suffix_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
                raise ExpertError(f"expert {self.name!r}: {name}={value!r:.80} must be an integer in [0, 64].")
        if self.format_version != FORMAT_VERSION or isinstance(self.format_version, bool):
            raise ExpertError(
                f"expert {self.name!r}: format_version {self.format_version!r:.40} is not supported by this version "
                f"(it reads version {FORMAT_VERSION}); upgrade the studio or re-export the expert."
            )
        if self.projector.in_dim != self.encoder.feature_dim:
            raise ExpertError(
                f"expert {self.name!r}: projector in_dim {self.projector.in_dim} differs from the encoder's "
                f"feature_dim {self.encoder.feature_dim}."
            )

    @property
    def delta_names(self) -> tuple[str, ...]:
        return DELTA_NAMES[self.training]

    def to_json(self) -> dict:
        data = asdict(self)
        data["projector"] = self.projector.to_json()
        data["base_model"] = {"name": data.pop("base_model_name"), "sha256": data.pop("base_model_sha256")}
        return data

    @classmethod
    def from_json(cls, data: dict, where: str) -> "ExpertConfig":
        """Build from parsed ``expert.json``; type errors name the field and the file."""
        try:
            data = dict(data)
            base = data.pop("base_model")
            encoder = EncoderRef(**data.pop("encoder"))
            projector = ProjectorSpec(**data.pop("projector"))
            return cls(base_model_name=base["name"], base_model_sha256=base["sha256"], encoder=encoder, projector=projector, **data)
        except ExpertError as exc:
            raise ExpertError(f"{where}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ExpertError(
                f"{where}: malformed expert.json ({type(exc).__name__}: {str(exc)[:160]}); expected the fields "
                "name, modality, training, base_model{name, sha256}, encoder{kind, source, feature_dim}, "
                "projector{type, in_dim, out_dim}, prefix_tokens, suffix_tokens, format_version."
            ) from None


def encoder_input_limits(kind: str) -> dict:
    """The decoder limits an encoder kind was trained with (``{}``: the modality's defaults, also for a kind
    the registry does not know, whose features a caller's own feature function computes)."""
    from modalities.encoders import EncoderError, encoder_spec

    try:
        return dict(encoder_spec(kind).input_limits)
    except EncoderError:
        return {}


@dataclass
class Expert:
    """One single-modality expert: config, deltas, projector and learned boundary tokens."""

    config: ExpertConfig
    deltas: dict[str, LoraDelta]
    projector: nn.Module
    prefix: torch.Tensor  # (prefix_tokens, hidden)
    suffix: torch.Tensor  # (suffix_tokens, hidden)
    encoder_state: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None
    _encoder: object = field(default=None, init=False, repr=False, compare=False)
    _encoder_key: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def bind_encoder(self):
        """This expert's frozen encoder, looked up once (the registry shares one instance per kind, source
        and weights) and kept: later inputs do not look it up, or hash its weights, again."""
        if self._encoder is None:
            from modalities.encoders import get_encoder
            from modalities.encoders.registry import state_dict_digest

            ref = self.config.encoder
            state = self.encoder_state or None
            self._encoder = get_encoder(ref.kind, ref.source, state_dict=state)
            self._encoder_key = (ref.kind, ref.source, state_dict_digest(state))
        return self._encoder

    @property
    def encoder_key(self) -> tuple:
        """What identifies this expert's encoder and its weights: inputs keep their features under it."""
        self.bind_encoder()
        return self._encoder_key

    @property
    def input_limits(self) -> dict:
        """The decoder limits this expert's encoder was trained with (``{}``: the modality's defaults)."""
        return encoder_input_limits(self.config.encoder.kind)

    def __post_init__(self) -> None:
        expected = set(self.config.delta_names)
        if set(self.deltas) != expected:
            raise ExpertError(f"expert {self.name!r} ({self.config.training}) needs deltas {sorted(expected)}, got {sorted(self.deltas)}.")
        hidden = self.config.projector.out_dim
        for which, tokens, count in (("prefix", self.prefix, self.config.prefix_tokens), ("suffix", self.suffix, self.config.suffix_tokens)):
            if tuple(tokens.shape) != (count, hidden):
                raise ExpertError(f"expert {self.name!r}: {which} tokens have shape {tuple(tokens.shape)}, expected ({count}, {hidden}).")
        self.projector.requires_grad_(False).eval()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def training(self) -> str:
        return self.config.training

    def modality_block(self, features: torch.Tensor) -> torch.Tensor:
        """[prefix; projector(features); suffix] for one input: ``(n_prefix + N + n_suffix, hidden)``."""
        if features.ndim != 2 or features.shape[1] != self.config.projector.in_dim:
            raise ExpertError(
                f"expert {self.name!r} expects {self.modality} features of shape (tokens, {self.config.projector.in_dim}), "
                f"got {tuple(features.shape)}; the encoder does not match this expert."
            )
        weight = next(self.projector.parameters())
        with torch.no_grad():
            projected = self.projector(features.to(weight.device, weight.dtype))
        return torch.cat([self.prefix.to(projected), projected, self.suffix.to(projected)], dim=0)


def save_expert(expert: Expert, folder: Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``expert`` into ``folder``. ``dtype`` (e.g. float16) shrinks what is stored."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EXPERT_JSON).write_text(json.dumps(expert.config.to_json(), indent=2) + "\n")
    for name, delta in expert.deltas.items():
        save_lora(delta, folder / name, base_model_name=expert.config.base_model_name, dtype=dtype)
    tensors = {f"projector.{k}": v for k, v in expert.projector.state_dict().items()}
    tensors["prefix"] = expert.prefix
    tensors["suffix"] = expert.suffix
    tensors.update({f"encoder.{k}": v for k, v in expert.encoder_state.items()})
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / PROJECTOR_FILE), metadata={"format": "pt"})
    return folder


def load_expert(folder: Path, *, base_sha256: str | None = None, linear_shapes: dict[str, tuple[int, int]] | None = None,
                hidden_size: int | None = None) -> Expert:
    """Load and check an expert folder.

    Args:
        folder: the expert directory.
        base_sha256: the loaded base's weights hash; a different recorded hash warns.
        linear_shapes: the base's ``{module: (out, in)}``; every delta must fit it.
        hidden_size: the base's hidden size; the projector output must match it.
    """
    folder = Path(folder)
    where = f"expert folder {folder.name!r}"
    if not folder.is_dir():
        raise ExpertError(f"{where} does not exist or is not a folder.")
    inside = _reads_only_inside(folder, where)
    config = ExpertConfig.from_json(read_json(inside(EXPERT_JSON), where), where)
    if hidden_size is not None and config.projector.out_dim != hidden_size:
        raise ExpertError(f"{where}: projector out_dim {config.projector.out_dim} differs from the base model's hidden size "
                          f"{hidden_size}. Is this expert made for another base model ({config.base_model_name})?")
    if base_sha256 is not None and config.base_model_sha256 != base_sha256:
        warnings.warn(
            f"expert {config.name!r} was trained on base {config.base_model_name!r} with weights sha256 "
            f"{str(config.base_model_sha256)[:12]}…, the loaded base has {base_sha256[:12]}…; answers may be off.",
            stacklevel=2,
        )
    deltas = {}
    for name in config.delta_names:
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            inside(f"{name}/{file}")
        delta = load_lora(folder / name, what=f"{where}, adapter {name}/")
        if linear_shapes is not None:
            from .lora import check_against_base

            check_against_base(delta, linear_shapes, what=f"{where}, adapter {name}/")
        deltas[name] = delta
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in config.delta_names)
    if extra:
        raise ExpertError(f"{where}: unexpected adapter folder(s) {extra} for a {config.training!r} expert; "
                          f"expected exactly {list(config.delta_names)}.")

    tensors = read_safetensors(inside(PROJECTOR_FILE), where)
    projector = config.projector.build()
    expected = {f"projector.{k}": v.shape for k, v in projector.state_dict().items()}
    found = {k for k in tensors if k.startswith("projector.")}
    missing, unexpected = sorted(set(expected) - found), sorted(found - set(expected))
    other = sorted(k for k in tensors if not k.startswith(("projector.", "encoder.")) and k not in ("prefix", "suffix"))
    if missing or unexpected or other or "prefix" not in tensors or "suffix" not in tensors:
        raise ExpertError(
            f"{where}: {PROJECTOR_FILE} keys do not match a {config.projector.type} projector: "
            f"missing {_some(missing + [k for k in ('prefix', 'suffix') if k not in tensors])}, "
            f"unexpected {_some(unexpected + other)}."
        )
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise ExpertError(f"{where}: {PROJECTOR_FILE} {key} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}.")
    check_finite(tensors, f"{where}: {PROJECTOR_FILE}")
    projector.load_state_dict({k[len("projector."):]: tensors[k].float() for k in expected})
    encoder_state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    return Expert(config, deltas, projector, tensors["prefix"].float(), tensors["suffix"].float(), encoder_state, folder)


def _some(keys: list[str], shown: int = 5) -> str:
    """A key list for a message: the first few, then how many more (a hostile file may hold thousands)."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{keys[:shown]}{more}"


def _reads_only_inside(folder: Path, where: str):
    """``inside(relative)`` -> ``folder / relative``, refusing a file that is a link to elsewhere on the server.

    An expert is read only from its own folder: a link (the file, or an adapter folder) whose
    target lies outside it is refused, so a planted expert cannot make the server read other
    files. The folder itself may be a link (that is where the user pointed), and a Hugging
    Face hub snapshot may link into its own repository's ``blobs/`` store.
    """
    roots = [folder.resolve()]
    here = folder.absolute()
    for parent in (here, *here.parents):  # <cache>/models--owner--name/snapshots/<revision>[/subfolder]
        if parent.parent.name == "snapshots":
            roots.append((parent.parent.parent / "blobs").resolve())
            break

    def inside(relative: str) -> Path:
        path = folder / relative
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a link loop (Python < 3.13 raises RuntimeError with the full path)
            raise ExpertError(f"{where}: {relative} is a link that loops back on itself; replace it with the file.") from None
        if not any(target.is_relative_to(root) for root in roots):
            raise ExpertError(f"{where}: {relative} is a link to a file outside the expert folder; experts are read "
                              "only from their own folder. Copy the file into the folder instead of linking it.")
        return path

    return inside
