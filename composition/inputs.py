"""User inputs, decoded once: a file's digest, its decoded forms and the features computed from them.

A file is read by several parts of a request: the experts' encoders (each may need its own
decoder limits: Point-BERT's 8192 points, BEATs' 16 kHz), the world notes (its content
digest), the previews. ``ModalInput`` holds them all, so each (file, decoder limits) pair is
decoded once and each (file, encoder) pair encoded once, however many variants, turns or
previews read it. Nothing here re-reads a path once the form it needs exists.

    inputs = load_inputs({"image": ["cat.jpg"]}, needs={"image": [{}]})   # decoded now: bad files fail here
    inputs[0].decoded({"num_points": 8192})   # another form: decoded on first use, then kept
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from .errors import CompositionError

LimitsKey = tuple  # sorted ((limit name, value), ...) that differ from the modality's defaults
DEFAULT_FORM: LimitsKey = ()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's contents (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def limits_key(modality: str, limits: Mapping[str, object] | None) -> LimitsKey:
    """The limits that differ from ``modality``'s defaults, as a hashable key (``()``: the default form)."""
    if not limits:
        return DEFAULT_FORM
    from modalities import get_modality

    defaults = get_modality(modality).limits
    return tuple(sorted((k, v) for k, v in limits.items() if getattr(defaults, k, None) != v))


class ModalInput:
    """One input of one modality: where it came from, its digest, and every form decoded so far.

    Args:
        modality: the modality name.
        data: the default decoded form's tensor (given when the input was decoded elsewhere, or is
            already features, as in tests and tools); None to decode from ``path`` on demand.
        source_name: the file's base name (shown to users; never a server path).
        notes: user-facing notes of the default form (what the decoder changed).
        path: the file, for forms decoded on demand.
        digest: the content's sha256 (computed from ``path`` on first use when not given).
    """

    def __init__(self, modality: str, data: torch.Tensor | None = None, source_name: str = "", notes: Sequence[str] | None = None,
                 path: str | Path | None = None, digest: str | None = None) -> None:
        if data is None and path is None:
            raise CompositionError(f"a {modality} input needs its decoded data or the path of its file.")
        self.modality = modality
        self.source_name = source_name
        self.path = None if path is None else str(path)
        self._digest = digest
        self._forms: dict[LimitsKey, object] = {}
        self._features: dict[object, torch.Tensor] = {}
        self._lock = threading.RLock()  # one decode per form, even when two requests ask at once
        self.decode_count = 0  # forms decoded from the file by this input (what "decoded once" means, measurable)
        if data is not None:
            self._forms[DEFAULT_FORM] = _Form(data, list(notes or []))

    @classmethod
    def from_loaded(cls, loaded, path: str | Path | None = None) -> "ModalInput":
        """An input whose default form a modality loader already decoded (``modalities`` ``LoadedInput``)."""
        return cls(loaded.modality, loaded.data, loaded.source_name, list(loaded.notes), path)

    @classmethod
    def open(cls, modality: str, path: str | Path, forms: Iterable[Mapping[str, object]] = ({},)) -> "ModalInput":
        """Validate and decode ``path`` now, in each of ``forms`` (decoder limits); a bad file raises its ModalityError."""
        from modalities.base import base_name

        item = cls(modality, source_name=base_name(path), path=path)
        for limits in forms:
            item.decoded(limits)
        return item

    # --- what it is --------------------------------------------------------------------
    @property
    def digest(self) -> str | None:
        """sha256 of the file's contents (None for an input given as data only)."""
        if self._digest is None and self.path is not None:
            try:
                self._digest = file_digest(self.path)
            except OSError:
                return None
        return self._digest

    @property
    def data(self) -> torch.Tensor:
        """The default form's tensor."""
        return self.decoded().data

    @property
    def notes(self) -> list[str]:
        """The default form's notes."""
        return self.decoded().notes

    def __repr__(self) -> str:
        return f"ModalInput({self.modality!r}, {self.source_name!r}, forms={list(self._forms)})"

    # --- decoded forms and features ----------------------------------------------------
    def decoded(self, limits: Mapping[str, object] | None = None):
        """The form decoded with these decoder limits (``.data``, ``.notes``); decoded on first use, then kept.

        An input given as data only has one form: asked for another, it answers with that one
        (the caller gave what its encoder reads).
        """
        key = limits_key(self.modality, limits)
        with self._lock:
            form = self._forms.get(key)
            if form is None:
                if self.path is None:
                    return self._forms[DEFAULT_FORM]
                from modalities import get_modality

                modality = get_modality(self.modality)
                if key:
                    modality = modality.with_limits(**dict(key))
                loaded = modality.load(self.path)
                self.decode_count += 1
                form = self._forms[key] = _Form(loaded.data, list(loaded.notes), dict(loaded.meta))
                if not self.source_name:
                    self.source_name = loaded.source_name
            return form

    def features(self, encoder_key: object, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Features from one encoder (``encoder_key`` names it), computed once per input."""
        with self._lock:
            if encoder_key not in self._features:
                self._features[encoder_key] = compute()
            return self._features[encoder_key]


class _Form:
    """One decoded form: the tensor an encoder reads and what the decoder changed."""

    __slots__ = ("data", "notes", "meta")

    def __init__(self, data: torch.Tensor, notes: list[str], meta: dict | None = None) -> None:
        self.data, self.notes, self.meta = data, notes, meta or {}


def decoder_needs(expert_configs: Iterable) -> dict[str, list[dict]]:
    """``{modality: [decoder limits, ...]}``: the distinct forms the encoders of these experts read
    (``ExpertConfig``s or ``Expert``s; an encoder's ``input_limits``, ``{}`` for the modality's defaults)."""
    from .expert import encoder_input_limits

    needs: dict[str, list[dict]] = {}
    for config in expert_configs:
        config = getattr(config, "config", config)
        limits = encoder_input_limits(config.encoder.kind)
        forms = needs.setdefault(config.modality, [])
        if limits not in forms:
            forms.append(limits)
    return needs


def load_inputs(files: Mapping[str, Sequence[str | Path]], needs: Mapping[str, Iterable[Mapping[str, object]]] | None = None) -> list[ModalInput]:
    """Validate and decode each file, in prompt (modality) order.

    Args:
        files: ``{modality: [path, ...]}``.
        needs: ``{modality: [decoder limits, ...]}``: the forms the experts that will read these
            inputs need (their encoders' ``input_limits``), decoded now so a bad file fails before
            any model runs; default the modality's default form only.
    """
    from modalities import MODALITY_NAMES

    unknown = sorted(set(files) - set(MODALITY_NAMES))
    if unknown:
        raise CompositionError(f"unknown input modality {unknown[0]!r}; expected one of {MODALITY_NAMES}.")
    inputs = []
    for modality in MODALITY_NAMES:
        forms = list((needs or {}).get(modality) or [{}])
        for path in files.get(modality, ()) or ():
            inputs.append(ModalInput.open(modality, path, forms))
    return inputs
