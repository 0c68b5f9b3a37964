"""What every modality shares: the error type, the loaded-input record, limits and the `Modality` base.

A modality turns ONE user file into a validated tensor (`LoadedInput.data`) that an encoder
of `modalities/encoders/` consumes, and into preview data the UI shows. The base class does
the checks every file needs before any decoder touches it (exists, regular file, size,
extension, content sniffed from magic bytes) and converts every decoder exception into a
`ModalityError` whose message names the file by its base name only: uploads live under
server temp paths that must never reach a user, and tracebacks are no help to them.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .checks import UserError, check_float, check_int

from .sniff import Sniffed, sniff_file

MB = 1024 * 1024


class ModalityError(UserError):
    """A user-facing input problem: the message says what is wrong with the file and what to do."""


@dataclass
class LoadedInput:
    """One validated input.

    Attributes:
        modality: the modality name ("image", "audio", "video", "point").
        data: the validated tensor the encoders consume (shape per modality, float32).
        source_name: the file's base name only, never the full server path.
        notes: user-facing notes about what was changed (clipped, downscaled, resampled ...).
        meta: facts about the original file (size, duration, fps, point count ...).
    """

    modality: str
    data: torch.Tensor
    source_name: str
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """Limits every modality has; subclasses add their own fields.

    `max_bytes` is checked on the file size before anything is read, so a huge upload is
    refused without being decoded.
    """

    max_bytes: int = 20 * MB

    def __post_init__(self) -> None:
        check_positive(self, "max_bytes", int)

    def replace(self, **changes: Any) -> "Limits":
        """A copy with some fields changed (validated again); unknown field names are refused."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ModalityError(f"unknown limit(s) {unknown} for {type(self).__name__}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)


def check_positive(obj: Any, name: str, kind: type) -> None:
    """Validate a positive number field of a limits dataclass (bool is not a number here)."""
    value, owner = getattr(obj, name), type(obj).__name__
    if kind is float:
        check_float(value, name, 0, open_min=True, error=ModalityError, owner=owner)
    else:
        check_int(value, name, 1, error=ModalityError, owner=owner)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KB': sizes in messages are read by people."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - loop always returns


def base_name(path: Any) -> str:
    """The file's base name, safe to show (never the directory it lives in)."""
    try:
        name = os.path.basename(os.fspath(path))
    except TypeError:
        return "the input"
    return name or "the input"


class Modality:
    """One input modality: its prompt placeholder, accepted files, limits, loader and preview.

    Subclasses set the class attributes and implement `_decode` (file -> LoadedInput) and
    `preview`. `load` is the only entry point: it runs the shared checks, then `_decode`
    with every unexpected exception turned into a clean `ModalityError`.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()
    # Sniffed content kinds (see sniff.py) this modality can decode; "unknown" is always tried.
    content_kinds: ClassVar[frozenset[str]] = frozenset()
    what: ClassVar[str] = "file"  # "an image" etc., used in "could not be decoded as <what>"
    limits_type: ClassVar[type[Limits]] = Limits

    def __init__(self, limits: Limits | None = None) -> None:
        limits = self.limits_type() if limits is None else limits
        if not isinstance(limits, self.limits_type):
            raise ModalityError(f"{type(self).__name__} needs {self.limits_type.__name__}, got {type(limits).__name__}")
        self.limits = limits

    # -- identity -------------------------------------------------------------------------
    @property
    def placeholder(self) -> str:
        """The token that stands for this modality's features in a prompt, e.g. '<image>'."""
        return f"<{self.name}>"

    def with_limits(self, **changes: Any) -> "Modality":
        """The same modality with some limits changed, e.g. `get_modality("point").with_limits(num_points=8192)`."""
        return type(self)(self.limits.replace(**changes))

    def accepted(self) -> str:
        """The accepted extensions, for messages."""
        return ", ".join(self.extensions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, limits={self.limits!r})"

    # -- loading --------------------------------------------------------------------------
    def load(self, path: str | os.PathLike) -> LoadedInput:
        """Validate and decode one file; raises `ModalityError` with a clean message on bad input."""
        file = self._check_file(path)
        sniffed = sniff_file(file)
        self._check_content(file, sniffed)
        try:
            loaded = self._decode(file, sniffed)
        except ModalityError:
            raise
        except MemoryError:
            raise ModalityError(f"{file.name} is too large to decode in memory. {self._fix_hint()}") from None
        except Exception:  # any decoder failure is a bad file from the user's point of view
            raise self.decode_error(file, sniffed) from None
        return loaded

    def _check_file(self, path: Any) -> Path:
        """Existence, regular file, size and extension: cheap checks before reading any byte."""
        if path is None or (isinstance(path, str) and not path.strip()):
            raise ModalityError(f"No {self.label} file was given. Upload one of: {self.accepted()}.")
        if not isinstance(path, (str, os.PathLike)):
            raise ModalityError(f"Expected a path to {self.what} file, got {type(path).__name__}. "
                                f"Accepted: {self.accepted()}.")
        file = Path(path)
        name = base_name(file)
        try:
            st = file.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ModalityError(f"{name} was not found; upload the {self.label} file again.") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ModalityError(f"{name} is a link that loops back on itself; upload the {self.label} file itself.") from None
            raise ModalityError(f"{name} cannot be read (permission denied or I/O error); upload it again.") from None
        if not file.is_file():
            kind = "a directory" if file.is_dir() else "not a regular file"
            raise ModalityError(f"{name} is {kind}; upload a single {self.label} file ({self.accepted()}).")
        ext = file.suffix.lower()
        if ext not in self.extensions:
            shown = f"extension '{file.suffix}'" if file.suffix else "no extension"
            raise ModalityError(f"{name} has {shown}, which is not an accepted {self.label} format. "
                                f"Accepted: {self.accepted()}.")
        if st.st_size == 0:
            raise ModalityError(f"{name} is empty (0 bytes); upload a non-empty {self.label} file ({self.accepted()}).")
        if st.st_size > self.limits.max_bytes:
            raise ModalityError(f"{name} is {human_bytes(st.st_size)}; {self.label} files are limited to "
                                f"{human_bytes(self.limits.max_bytes)}. {self._fix_hint()}")
        return file

    def _check_content(self, file: Path, sniffed: Sniffed) -> None:
        """Refuse files whose magic bytes say they are something else (text as .png, PNG as .wav)."""
        if sniffed.kind != "unknown" and sniffed.kind not in self.content_kinds:
            raise self.decode_error(file, sniffed)

    def decode_error(self, file: Path, sniffed: Sniffed, mismatch: bool = False) -> ModalityError:
        """'x.png could not be decoded as an image (it looks like a text file). Accepted: ...'

        `mismatch=True` says the content is the wrong kind even if this modality reads that kind
        in other formats (a text file named .glb).
        """
        if not mismatch and (sniffed.kind in self.content_kinds or sniffed.kind == "unknown"):
            why = "it is truncated, corrupt or in an unsupported encoding"
        else:
            why = f"it looks like {sniffed.description}"
        return ModalityError(f"{file.name} could not be decoded as {self.what} ({why}). "
                             f"Accepted: {self.accepted()}; re-export or convert the file and try again.")

    def _fix_hint(self) -> str:
        return "Use a smaller file."

    def _decode(self, file: Path, sniffed: Sniffed) -> LoadedInput:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- preview --------------------------------------------------------------------------
    def preview(self, loaded: LoadedInput) -> dict[str, Any]:  # pragma: no cover - abstract
        """Plain preview data for the UI (PIL images, plotly figures, bytes); never gradio objects."""
        raise NotImplementedError

    def _check_loaded(self, loaded: LoadedInput) -> None:
        if not isinstance(loaded, LoadedInput) or loaded.modality != self.name:
            got = loaded.modality if isinstance(loaded, LoadedInput) else type(loaded).__name__
            raise ModalityError(f"the {self.name} preview needs a LoadedInput of modality {self.name!r}, got {got!r}")
