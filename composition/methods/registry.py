"""The registry of merge methods and its single entry point, :func:`merge_deltas`.

A merge method combines the dense deltas ``ΔW_1..ΔW_K`` of one linear layer (one per
expert) into one delta, given per-expert coefficients ``w_1..w_K`` (DAMC's text merge
coefficients λ). Every method is one small pure function registered here by name; the
registry is the only list of methods, and the UI builds its sliders from the
:class:`HyperParam` s a method declares.

Contract of a method function (what :func:`register_method` decorates)::

    func(deltas: Tensor, weights: Tensor, *, generator: torch.Generator, **hyper) -> Tensor

``deltas`` is a fresh ``(K, *shape)`` stack (a copy: the function may modify it),
``weights`` a ``(K,)`` tensor, both in the compute dtype (float32 for half inputs) on the
deltas' device; ``generator`` is seeded by the caller and is the only randomness a method
may use; ``hyper`` holds every declared hyper-parameter, already validated and typed.
The function returns a ``shape`` tensor. Validation, copying, dtype handling and the
finiteness check of the result live in :func:`merge_deltas`, once for all methods.

Spaces. A method runs on the dense deltas (``"dense"``, the reference) and/or on the
``R×R`` cores of the experts' low-rank factors (``"core"``, see
:mod:`composition.methods.core_space`), whose result stays low-rank and is routed online.
A variant names its space with a suffix: ``ties`` is dense, ``ties@core`` the core-space
column (:func:`split_space`). A method whose ``inputs`` are ``"factors"`` (``factor_mean``)
combines the LoRA factors themselves and runs only in the low-rank path.
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import CompositionError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class MethodError(CompositionError):
    """A merge method or its arguments are invalid (unknown name, bad delta, bad value)."""


class RenamedParameterWarning(UserWarning):
    """A hyper-parameter was given under its old name (it still works; the note says the new one)."""


# The picker's groups, in UI order (key -> heading). NaiveMC and DAMC are not registry
# methods (the engine composes them itself); the UI lists them under "paper" too.
GROUPS = {
    "paper": "The paper's methods",
    "task_vector": "Task-vector methods",
    "subspace": "Subspace methods",
    "sparsifier": "Sparsifiers",
}
SPACES = ("dense", "core")
SPACE_SEPARATOR = "@"


@dataclass(frozen=True)
class HyperParam:
    """A typed, bounded hyper-parameter of a merge method (the UI shows it as a slider).

    Args:
        name: keyword the method function receives.
        default: value used when the caller gives none.
        minimum: smallest accepted value (inclusive).
        maximum: largest accepted value (inclusive).
        step: slider step in the UI.
        help: one sentence for the UI.
        kind: ``"float"`` or ``"int"``; int values must be integral.
    """

    name: str
    default: float
    minimum: float
    maximum: float
    step: float
    help: str
    kind: Literal["float", "int"] = "float"

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise MethodError(f"hyper-parameter name {self.name!r} must be lowercase letters, digits and '_'")
        if self.kind not in ("float", "int"):
            raise MethodError(f"hyper-parameter {self.name!r}: kind must be 'float' or 'int', got {self.kind!r}")
        for field_name in ("default", "minimum", "maximum", "step"):
            value = getattr(self, field_name)
            if not _is_real(value) or not math.isfinite(value):
                raise MethodError(f"hyper-parameter {self.name!r}: {field_name} must be a finite number, got {value!r}")
            if self.kind == "int" and value != int(value):
                raise MethodError(f"hyper-parameter {self.name!r} is an int: {field_name} must be integral, got {value!r}")
        if not self.minimum <= self.default <= self.maximum:
            raise MethodError(
                f"hyper-parameter {self.name!r}: need minimum <= default <= maximum, "
                f"got {self.minimum} <= {self.default} <= {self.maximum}"
            )
        if self.step <= 0:
            raise MethodError(f"hyper-parameter {self.name!r}: step must be > 0, got {self.step}")
        if not self.help.strip():
            raise MethodError(f"hyper-parameter {self.name!r} needs a help sentence for the UI")

    def validate(self, value: object, method: str) -> float | int:
        """Check one value given for this parameter and return it typed.

        Args:
            value: what the caller passed.
            method: the method's name, for the error message.
        Returns:
            ``value`` as ``int`` or ``float`` according to ``kind``.
        """
        where = f"{method}: {self.name}={value!r}"
        if not _is_real(value) or not math.isfinite(float(value)):
            raise MethodError(f"{where} must be a finite number")
        if self.kind == "int" and float(value) != int(value):
            raise MethodError(f"{where} must be an integer")
        if not self.minimum <= float(value) <= self.maximum:
            raise MethodError(f"{where} is outside the accepted range [{self.minimum}, {self.maximum}]")
        return int(value) if self.kind == "int" else float(value)


@dataclass(frozen=True)
class Renamed:
    """An old hyper-parameter name that keeps working in configs (with a note).

    Args:
        old: the old keyword, e.g. ``"drop_rate"``.
        new: the declared hyper-parameter it maps to, e.g. ``"density"``.
        complement: True when ``new = 1 − old`` (drop rate -> density), False for ``new = old``.
    """

    old: str
    new: str
    complement: bool = False

    def convert(self, value: object, param: HyperParam, method: str) -> float:
        """The new parameter's value for ``value`` given under the old name (validated under the old name)."""
        lo, hi = (1.0 - param.maximum, 1.0 - param.minimum) if self.complement else (param.minimum, param.maximum)
        lo, hi = round(lo, 12), round(hi, 12)  # 1 − 0.01 shows as 0.99, not 0.9900000000000001
        where = f"{method}: {self.old}={value!r}"
        if not _is_real(value) or not math.isfinite(float(value)):
            raise MethodError(f"{where} must be a finite number")
        if not lo <= float(value) <= hi:
            raise MethodError(f"{where} is outside the accepted range [{lo}, {hi}]")
        return 1.0 - float(value) if self.complement else float(value)

    def note(self, method: str) -> str:
        rule = f"{self.new} = 1 − {self.old}" if self.complement else "the same value"
        return f"{method}: '{self.old}' is the old name of '{self.new}' ({rule}); it still works, but write '{self.new}' in new configs"


@dataclass(frozen=True)
class MergeMethod:
    """One registered merge method.

    Args:
        name: registry key (lowercase identifier), e.g. ``"ties"``.
        label: short UI label, e.g. ``"TIES"``.
        help: one or two sentences for the UI, citing the paper.
        params: the hyper-parameters the function accepts, in UI order.
        linear: True when the result is ``Σ_i c_i·ΔW_i`` exactly (``c = linear_weights(w)``),
            so the engine may keep the deltas low-rank and route them online instead of
            calling ``func``.
        func: the pure tensor function (see the module docstring for its contract).
        group: a key of :data:`GROUPS` (the picker's heading).
        formula: one line, e.g. ``"Σ λ_i·ΔW_i"`` (``python -m composition methods``).
        spaces: where it runs, a subset of :data:`SPACES` in that order; the first is the default.
        exact: False for a method that is knowingly not the merge it is named after
            (``factor_mean``: kept only to compare with the original script's non-default ``mean``).
        inputs: ``"deltas"`` (``func(deltas, weights, ...)``) or ``"factors"``
            (``func(factors, weights, ...)`` with ``factors`` a list of ``(A_i, B_i·s_i)``;
            returns ``(A, B)``); factor methods run only through the low-rank path.
        renamed: old hyper-parameter names that still work (see :class:`Renamed`).
        normalized: for a linear method, True when its coefficients are ``w_i / Σ_j w_j``.
    """

    name: str
    label: str
    help: str
    params: tuple[HyperParam, ...]
    linear: bool
    func: Callable[..., object]
    group: str = "task_vector"
    formula: str = ""
    spaces: tuple[str, ...] = ("dense", "core")
    exact: bool = True
    inputs: Literal["deltas", "factors"] = "deltas"
    renamed: tuple[Renamed, ...] = ()
    normalized: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise MethodError(f"method name {self.name!r} must be lowercase letters, digits and '_'")
        if not self.label.strip() or not self.help.strip():
            raise MethodError(f"method {self.name!r} needs a label and a help text for the UI")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise MethodError(f"method {self.name!r} declares a hyper-parameter twice: {names}")
        if not callable(self.func):
            raise MethodError(f"method {self.name!r}: func must be callable")
        if self.group not in GROUPS:
            raise MethodError(f"method {self.name!r}: group {self.group!r} is not one of {', '.join(GROUPS)}")
        if not self.formula.strip():
            raise MethodError(f"method {self.name!r} needs a one-line formula")
        if not self.spaces or any(sp not in SPACES for sp in self.spaces) or list(self.spaces) != sorted(set(self.spaces), key=SPACES.index):
            raise MethodError(f"method {self.name!r}: spaces must be a non-empty ordered subset of {SPACES}, got {self.spaces}")
        if self.inputs not in ("deltas", "factors"):
            raise MethodError(f"method {self.name!r}: inputs must be 'deltas' or 'factors', got {self.inputs!r}")
        if self.inputs == "factors" and self.spaces != ("core",):
            raise MethodError(f"method {self.name!r} combines factors: it can only run in the low-rank ('core') path")
        for r in self.renamed:
            if r.new not in names or r.old in names:
                raise MethodError(f"method {self.name!r}: renamed {r.old!r} -> {r.new!r} must map an old name to a declared one")

    def defaults(self) -> dict[str, float | int]:
        """Returns: ``{name: default}`` for every hyper-parameter of this method."""
        return {p.name: (int(p.default) if p.kind == "int" else float(p.default)) for p in self.params}

    def resolve_hyper(self, hyper: Mapping[str, object]) -> tuple[dict[str, float | int], list[str]]:
        """Every hyper-parameter, typed and validated, with old names mapped to new ones.

        Args:
            hyper: what a config or caller gave (missing ones take their defaults).
        Returns:
            ``(values, notes)``: ``values`` has exactly the declared names; ``notes`` one
            sentence per old name used (show them to the user).
        """
        declared = {p.name: p for p in self.params}
        old = {r.old: r for r in self.renamed}
        unknown = sorted(set(hyper) - set(declared) - set(old))
        if unknown:
            accepted = ", ".join(declared) or "none"
            raise MethodError(
                f"method {self.name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; accepted: {accepted}"
            )
        values = self.defaults()
        notes = []
        for key, value in hyper.items():
            if key in old:
                r = old[key]
                if r.new in hyper:
                    raise MethodError(f"{self.name}: give {r.new!r} or its old name {r.old!r}, not both")
                values[r.new] = declared[r.new].validate(r.convert(value, declared[r.new], self.name), self.name)
                notes.append(r.note(self.name))
            else:
                values[key] = declared[key].validate(value, self.name)
        return values, notes

    def per_layer_weights(self) -> tuple[bool, str]:
        """Whether a λ schedule over layers and modules reaches this method, and how (``methods --json``).

        Every method merges one layer at a time from that layer's deltas and weights, so each
        takes the schedule's weights at that layer; a normalized one divides them by their sum
        there, so only the ratio between experts can vary by layer.
        """
        if self.normalized:
            return True, ("per layer, normalized there (w_i / Σ_j w_j at each module): a schedule every expert shares "
                          "cancels out; only the ratio between experts varies by layer")
        if self.linear:
            return True, "per layer: Σ_i w_i(layer)·ΔW_i, routed online like DAMC"
        return True, "per layer: each layer's merge is computed with the weights at that layer (one dense result per schedule)"

    def linear_weights(self, weights: Sequence[float]) -> list[float]:
        """The coefficients ``c_i`` of a linear method's ``Σ_i c_i·ΔW_i`` for the user's weights ``w_i``.

        Args:
            weights: one finite weight per expert.
        Returns:
            ``w`` itself, or ``w / Σ w`` for a normalized method (``weight_average``).
        """
        if not self.linear:
            raise MethodError(f"method {self.name!r} is not linear; it has no per-expert coefficients")
        _check_weights(weights, len(weights))
        if not self.normalized:
            return [float(w) for w in weights]
        total = math.fsum(float(w) for w in weights)
        if abs(total) < 1e-12:
            raise MethodError(f"{self.name}: the weights {list(weights)} sum to 0; a weighted average needs a non-zero sum")
        return [float(w) / total for w in weights]


_REGISTRY: dict[str, MergeMethod] = {}


def register_method(
    name: str,
    *,
    label: str,
    help: str,
    params: Sequence[HyperParam] = (),
    linear: bool = False,
    group: str = "task_vector",
    formula: str = "",
    spaces: Sequence[str] = ("dense", "core"),
    exact: bool = True,
    inputs: Literal["deltas", "factors"] = "deltas",
    renamed: Sequence[Renamed] = (),
    normalized: bool = False,
) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator registering a merge function under ``name`` (registration order is UI order).

    Args:
        name: registry key; registering it twice is an error.
        label, help, params, linear, group, formula, spaces, exact, inputs, renamed,
            normalized: see :class:`MergeMethod`.
    Returns:
        The decorator; it returns the function unchanged so it stays directly callable.
    """

    def decorate(func: Callable[..., object]) -> Callable[..., object]:
        if name in _REGISTRY:
            raise MethodError(f"merge method {name!r} is already registered")
        _REGISTRY[name] = MergeMethod(name, label, help, tuple(params), bool(linear), func, group, formula or "",
                                      tuple(spaces), bool(exact), inputs, tuple(renamed), bool(normalized))
        return func

    return decorate


def get_method(name: str) -> MergeMethod:
    """Look a method up by name.

    Args:
        name: a registered name.
    Returns:
        The :class:`MergeMethod`.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise MethodError(
            f"unknown merge method {name!r}; registered methods: {', '.join(_REGISTRY)}"
        ) from None


def list_methods() -> list[MergeMethod]:
    """Returns: every registered method, in registration order (a new list)."""
    return list(_REGISTRY.values())


def split_space(variant: str) -> tuple[str, str]:
    """Split a method variant name into ``(method, space)``: ``"ties@core"`` -> ``("ties", "core")``.

    A name without a suffix runs in the method's default space (its first). The method must
    be registered and must run in the space named.

    Args:
        variant: ``"<method>"`` or ``"<method>@<space>"``.
    Returns:
        ``(method name, space)``.
    """
    name, sep, space = str(variant).partition(SPACE_SEPARATOR)
    method = get_method(name)
    if not sep:
        return name, method.spaces[0]
    if space not in SPACES:
        raise MethodError(f"variant {variant!r}: unknown space {space!r}; expected {' or '.join(SPACES)} (e.g. {name}@core)")
    if space not in method.spaces:
        raise MethodError(f"method {name!r} runs only in {', '.join(method.spaces)} space, not {space!r}")
    return name, space


def merge_deltas(
    name: str,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    seed: int = 0,
    **hyper: float,
) -> torch.Tensor:
    """Merge the per-expert deltas of one layer with the method ``name``.

    Everything is validated before anything is computed; the method runs on a copy, so
    the inputs are never modified.

    Args:
        name: a registered method name.
        deltas: one dense ``ΔW`` per expert, all of the same shape, dtype and device.
        weights: one finite coefficient per delta (λ_i; the caller chooses the default).
        seed: seeds a local ``torch.Generator`` for random methods (the global RNG is never
            touched). Same seed, inputs and device give the same result.
        **hyper: the method's hyper-parameters; missing ones take their defaults.
    Returns:
        A new tensor with the shape and dtype of the deltas. Half inputs are merged in
        float32 and cast back.
    Raises:
        MethodError: with a message naming the bad value and what was expected.
    """
    method = get_method(name)
    if method.inputs != "deltas":
        raise MethodError(
            f"method {name!r} combines the experts' LoRA factors, not their deltas; call "
            "composition.methods.core_space.core_merge with the factors (it runs only in the low-rank path)"
        )
    _check_deltas(deltas)
    _check_weights(weights, len(deltas))
    values, notes = method.resolve_hyper(hyper)
    for note in notes:
        warnings.warn(note, RenamedParameterWarning, stacklevel=2)
    check_seed(seed)

    reference = deltas[0]
    compute_dtype = torch.float32 if reference.dtype in _HALF_DTYPES else reference.dtype
    # torch.stack always allocates: the method works on its own copy of the inputs.
    stacked = torch.stack([d.detach().to(compute_dtype) for d in deltas])
    weight_tensor = torch.tensor([float(w) for w in weights], dtype=compute_dtype, device=reference.device)
    generator = torch.Generator(device=reference.device)
    generator.manual_seed(seed)

    with torch.no_grad():
        merged = method.func(stacked, weight_tensor, generator=generator, **values)
    if merged.shape != reference.shape:
        raise MethodError(f"method {name!r} returned shape {tuple(merged.shape)}, expected {tuple(reference.shape)}")
    merged = merged.to(reference.dtype)
    # After the cast: a float32 result can still overflow float16.
    if not bool(torch.isfinite(merged).all()):
        raise MethodError(
            f"method {name!r} produced non-finite values (overflow in {reference.dtype}?); "
            "use smaller weights or a wider dtype"
        )
    return merged


def _is_real(value: object) -> bool:
    # bool is an int in Python, but True as a coefficient is almost surely a mistake.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_deltas(deltas: Sequence[torch.Tensor]) -> None:
    if isinstance(deltas, torch.Tensor) or not isinstance(deltas, Sequence):
        raise MethodError(
            f"deltas must be a list of tensors, one per expert; got {type(deltas).__name__}"
        )
    if len(deltas) == 0:
        raise MethodError("need at least one delta to merge, got none")
    for i, delta in enumerate(deltas):
        if not isinstance(delta, torch.Tensor):
            raise MethodError(f"delta {i} must be a torch.Tensor, got {type(delta).__name__}")
        if not delta.is_floating_point():
            raise MethodError(f"delta {i} must be a floating-point tensor, got dtype {delta.dtype}")
        if delta.numel() == 0:
            raise MethodError(f"delta {i} is empty (shape {tuple(delta.shape)})")
    first = deltas[0]
    for i, delta in enumerate(deltas[1:], start=1):
        if delta.shape != first.shape:
            raise MethodError(
                f"delta {i} has shape {tuple(delta.shape)} but delta 0 has shape {tuple(first.shape)}; "
                "all deltas of a layer must have the same shape"
            )
        if delta.dtype != first.dtype:
            raise MethodError(f"delta {i} has dtype {delta.dtype} but delta 0 has dtype {first.dtype}")
        if delta.device != first.device:
            raise MethodError(f"delta {i} is on {delta.device} but delta 0 is on {first.device}")
    for i, delta in enumerate(deltas):
        if not bool(torch.isfinite(delta).all()):
            raise MethodError(f"delta {i} contains NaN or infinite values")


def _check_weights(weights: Sequence[float], count: int) -> None:
    if isinstance(weights, torch.Tensor):
        if weights.dim() != 1:
            raise MethodError(f"weights must be one number per delta; got a tensor of shape {tuple(weights.shape)}")
        weights = weights.tolist()
    if not isinstance(weights, Sequence):
        raise MethodError(f"weights must be a list of numbers, one per delta; got {type(weights).__name__}")
    if len(weights) != count:
        raise MethodError(f"got {len(weights)} weights for {count} deltas; give one weight per delta")
    for i, weight in enumerate(weights):
        if not _is_real(weight) or not math.isfinite(weight):
            raise MethodError(f"weight {i} is {weight!r}; weights must be finite numbers")


def check_seed(seed: int) -> None:
    """Refuse a seed that is not an int in ``[0, 2**64)``."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise MethodError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise MethodError(f"seed={seed} is outside [0, 2**64)")


def layer_seed(seed: int, module: str) -> int:
    """The seed a random method (DARE, DELLA) gets at one layer: stable per (seed, module name),
    so masks differ by layer yet repeat exactly; the engine and the diagnostics use the same one."""
    return (int(seed) * 1_000_003 + zlib.crc32(module.encode())) % (2**31)
