"""Low-rank deltas (LoRA) and their on-disk form, peft's own adapter format.

A delta holds, for each target linear layer, the factors of ``ΔW = scale · B @ A`` with
``A: (r, in)``, ``B: (out, r)`` and ``scale = alpha / r``. We read and write exactly the
files peft writes (``adapter_config.json`` + ``adapter_model.safetensors``, keys
``base_model.model.<module>.lora_A.weight``), so any peft user can load an expert's text
adapter onto the base model, and adapters trained with peft load here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from modalities.checks import check_float, check_int

from .errors import ExpertError

# Every linear layer of a Llama block: what a LoRA expert may target (the paper's experts target all seven).
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
# The JSON files of an expert are a few hundred bytes; anything this big is not one (and is not read).
MAX_JSON_BYTES = 1024 * 1024
_KEY_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.default)?\.weight$")


@dataclass
class LoraDelta:
    """The low-rank factors of one adapter, keyed by full module name.

    Args:
        r: the rank every module shares (peft's ``r``).
        alpha: peft's ``lora_alpha``; the delta is scaled by ``alpha / r``.
        A: module name -> ``(r, in_features)`` factor.
        B: module name -> ``(out_features, r)`` factor.
    """

    r: int
    alpha: float
    A: dict[str, torch.Tensor] = field(default_factory=dict)
    B: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.r = check_int(self.r, "LoRA rank r", 1, error=ExpertError)
        self.alpha = check_float(self.alpha, "LoRA alpha", 0, open_min=True, error=ExpertError)
        if set(self.A) != set(self.B):
            only_a = sorted(set(self.A) - set(self.B))
            only_b = sorted(set(self.B) - set(self.A))
            raise ExpertError(f"LoRA factors do not pair up: A without B for {only_a[:3]}, B without A for {only_b[:3]}.")
        for name in self.A:
            a, b = self.A[name], self.B[name]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != self.r or b.shape[1] != self.r:
                raise ExpertError(
                    f"LoRA factors of {name} have shapes A{tuple(a.shape)} B{tuple(b.shape)}; "
                    f"expected A (r={self.r}, in) and B (out, r={self.r})."
                )

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.r

    @property
    def modules(self) -> list[str]:
        return list(self.A)

    def dense(self, module: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full ``(out, in)`` delta ``scale · B @ A`` of one module."""
        return self.scale * (self.B[module].to(dtype) @ self.A[module].to(dtype))

    def to(self, dtype: torch.dtype) -> "LoraDelta":
        return LoraDelta(self.r, self.alpha, {k: v.to(dtype) for k, v in self.A.items()}, {k: v.to(dtype) for k, v in self.B.items()})

    @staticmethod
    def zeros_like_modules(shapes: dict[str, tuple[int, int]], r: int, alpha: float) -> "LoraDelta":
        """A delta that changes nothing (B = 0), like a freshly initialised peft adapter."""
        a = {m: torch.zeros(r, fin) for m, (fout, fin) in shapes.items()}
        b = {m: torch.zeros(fout, r) for m, (fout, fin) in shapes.items()}
        return LoraDelta(r, alpha, a, b)


def short_target_names(modules: list[str]) -> list[str]:
    """peft's ``target_modules``: the last name component of each module, deduplicated in order."""
    seen: dict[str, None] = {}
    for m in modules:
        seen.setdefault(m.rsplit(".", 1)[-1], None)
    return list(seen)


def save_lora(delta: LoraDelta, folder: Path, *, base_model_name: str, dtype: torch.dtype | None = None) -> None:
    """Write ``delta`` in peft's adapter format into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": delta.r,
        "lora_alpha": delta.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": short_target_names(delta.modules),
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    tensors = {}
    for name in delta.modules:
        a, b = delta.A[name], delta.B[name]
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON object file, turning every failure into an ExpertError that names the file."""
    if not path.is_file():
        raise ExpertError(f"{what}: {path.name} is missing from {path.parent.name}/.")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ExpertError(f"{what}: {path.parent.name}/{path.name} is {size:,} bytes; an expert's JSON files are at most "
                          f"{MAX_JSON_BYTES:,} bytes, so this is not one. Re-export or re-download the expert.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, numbers too long, nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:160]
        raise ExpertError(f"{what}: {path.parent.name}/{path.name} is not valid JSON ({reason}).") from None
    if not isinstance(data, dict):
        raise ExpertError(f"{what}: {path.parent.name}/{path.name} must hold a JSON object, found {type(data).__name__}.")
    return data


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never a pickle), naming the file in every error."""
    if not path.is_file():
        raise ExpertError(f"{what}: {path.name} is missing from {path.parent.name}/.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        pickled = _pickled_checkpoint(path)
        if pickled:
            raise ExpertError(f"{what}: {path.parent.name}/{path.name} is {pickled}, not a safetensors file; it is never "
                              "loaded, since unpickling can run code. Convert it to safetensors "
                              "(safetensors.torch.save_file) or re-download the expert.") from None
        raise ExpertError(
            f"{what}: {path.parent.name}/{path.name} is not a readable safetensors file "
            f"(truncated or corrupt: {(str(exc).splitlines() or [''])[0][:160]}). Re-export or re-download the expert."
        ) from None


def _pickled_checkpoint(path: Path) -> str | None:
    """What a pickled checkpoint saved under a safetensors name is, from its first bytes (None if not one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if len(head) > 1 and head[0] == 0x80 and head[1] in range(2, 6):
        return "a Python pickle"
    if head == b"PK\x03\x04":
        return "a PyTorch torch.save archive (a pickle inside a zip)"
    return None


def load_lora(folder: Path, *, what: str) -> LoraDelta:
    """Read a peft LoRA adapter folder with strict checks.

    peft's ``rank_pattern`` and ``alpha_pattern`` (a rank and alpha per module) are honoured:
    the result is exactly the delta peft computes for every module.

    Raises:
        ExpertError: missing files, bad JSON, unsupported options (DoRA, rsLoRA, bias),
            keys that are not LoRA factors, unpaired factors or inconsistent ranks.
    """
    folder = Path(folder)
    config = read_json(folder / ADAPTER_CONFIG, what)
    if config.get("peft_type", "LORA") != "LORA":
        raise ExpertError(f"{what}: adapter type {config.get('peft_type')!r} is not supported; expected 'LORA'.")
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise ExpertError(f"{what}: {flag}=true is not supported; retrain or convert the adapter to plain LoRA.")
    r, alpha = config.get("r"), config.get("lora_alpha")
    check_int(r, "r", 1, error=ExpertError, owner=f"{what}: adapter_config.json")
    check_float(alpha, "lora_alpha", 0, open_min=True, error=ExpertError, owner=f"{what}: adapter_config.json")
    if not (folder / ADAPTER_WEIGHTS).is_file() and (folder / "adapter_model.bin").is_file():
        raise ExpertError(f"{what}: only adapter_model.bin is there, a pickled PyTorch file, which is never loaded "
                          "(unpickling can run code). Save the adapter as adapter_model.safetensors (peft: "
                          "save_pretrained(..., safe_serialization=True)).")
    rank_pattern = _pattern(config, "rank_pattern", what, integer=True)
    alpha_pattern = _pattern(config, "alpha_pattern", what, integer=False)
    tensors = read_safetensors(folder / ADAPTER_WEIGHTS, what)
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in tensors.items():
        match = _KEY_RE.match(key)
        if match is None:
            unexpected.append(key)
            continue
        (a if match["factor"] == "A" else b)[match["module"]] = value
    if unexpected:
        raise ExpertError(f"{what}: {ADAPTER_WEIGHTS} has {len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}; "
                          "expected only 'base_model.model.<module>.lora_A/B.weight'.")
    if not a:
        raise ExpertError(f"{what}: {ADAPTER_WEIGHTS} holds no LoRA factors.")
    check_finite({**{f"{m}.lora_A": t for m, t in a.items()}, **{f"{m}.lora_B": t for m, t in b.items()}},
                 f"{what}: {ADAPTER_WEIGHTS}")
    try:
        if rank_pattern or alpha_pattern:
            return _with_patterns(a, b, int(r), float(alpha), rank_pattern, alpha_pattern, what)
        return LoraDelta(r, float(alpha), a, b)
    except ExpertError as exc:
        raise ExpertError(f"{what}: {exc}") from None


def _pattern(config: dict, field_name: str, what: str, *, integer: bool) -> dict[str, float]:
    """peft's ``rank_pattern`` / ``alpha_pattern``: module-name pattern -> that module's r / lora_alpha."""
    pattern = config.get(field_name) or {}
    if not isinstance(pattern, dict):
        raise ExpertError(f"{what}: adapter_config.json {field_name} must be a mapping of module pattern to value, "
                          f"got {type(pattern).__name__}.")
    for key, value in pattern.items():
        try:
            re.compile(key)
        except (re.error, TypeError):
            raise ExpertError(f"{what}: adapter_config.json {field_name} key {key!r} is not a valid pattern.") from None
        if integer:
            check_int(value, f"{field_name}[{key!r}]", 1, error=ExpertError, owner=f"{what}: adapter_config.json")
        else:
            check_float(value, f"{field_name}[{key!r}]", 0, open_min=True, error=ExpertError, owner=f"{what}: adapter_config.json")
    return dict(pattern)


def pattern_value(pattern: dict[str, float], module: str, default: float) -> float:
    """The value of the first pattern that matches ``module`` as a whole or as its dotted suffix, else ``default``
    (peft's rule: a key matches the whole name or a dotted suffix of it, ``peft.utils.other.get_pattern_key``)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _with_patterns(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], r: int, alpha: float,
                   rank_pattern: dict, alpha_pattern: dict, what: str) -> LoraDelta:
    """One uniform-rank delta equal to an adapter whose modules have their own rank and alpha.

    Each module's factors are zero-padded to the largest rank (B @ A is unchanged) and its scale
    ``alpha_m / r_m`` is folded into B, so the delta's own scale is 1: ``ΔW_m = (alpha_m / r_m) B_m A_m``
    exactly, as peft computes it.
    """
    ranks = {m: int(pattern_value(rank_pattern, m, r)) for m in a}
    for m, r_m in ranks.items():
        if a[m].ndim != 2 or a[m].shape[0] != r_m or b[m].ndim != 2 or b[m].shape[1] != r_m:
            source = "rank_pattern" if r_m != r else "r"
            raise ExpertError(f"LoRA factors of {m} have shapes A{tuple(a[m].shape)} B{tuple(b[m].shape)}; its rank from "
                              f"adapter_config.json ({source}) is {r_m}.")
    top = max(ranks.values())
    padded_a, padded_b = {}, {}
    for m, r_m in ranks.items():
        scale = float(pattern_value(alpha_pattern, m, alpha)) / r_m
        padded_a[m] = torch.zeros(top, a[m].shape[1])
        padded_a[m][:r_m] = a[m].float()
        padded_b[m] = torch.zeros(b[m].shape[0], top)
        padded_b[m][:, :r_m] = b[m].float() * scale
    return LoraDelta(top, float(top), padded_a, padded_b)


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse weights holding NaN or infinity (a corrupt or diverged file): they would poison every answer."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ExpertError(f"{what}: {key} holds NaN or infinite values; the file is corrupt or the training "
                              "diverged. Re-export or retrain the expert.")


def check_against_base(delta: LoraDelta, linear_shapes: dict[str, tuple[int, int]], *, what: str) -> None:
    """Every module of ``delta`` must exist in the base with matching (out, in) shape."""
    missing = [m for m in delta.modules if m not in linear_shapes]
    if missing:
        raise ExpertError(f"{what}: the adapter targets {len(missing)} module(s) the base model does not have, "
                          f"e.g. {missing[0]!r}. Is this expert made for another base model?")
    for m in delta.modules:
        out_f, in_f = linear_shapes[m]
        if delta.A[m].shape[1] != in_f or delta.B[m].shape[0] != out_f:
            raise ExpertError(
                f"{what}: {m} has A{tuple(delta.A[m].shape)} B{tuple(delta.B[m].shape)} but the base layer is "
                f"(out={out_f}, in={in_f}). Is this expert made for another base model?"
            )
