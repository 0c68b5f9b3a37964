"""Validation helpers for the dataclass configs of every layer (the bottom of the import order).

Each helper checks one value and returns it normalised, or raises the caller's error type
with a message that names the field, the value and what was expected:

    self.max_new_tokens = check_int(self.max_new_tokens, "max_new_tokens", 1, 1024, error=CompositionError)

Python's ``bool`` is an ``int``; a count, a seed or a size given as ``True`` is refused
everywhere, so a YAML ``yes`` never becomes 1 by accident. A float that is a whole number
(``8.0``, what a slider or JSON often sends) is accepted as that integer.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Base of every error a user can cause (a bad file, folder, value or request).

    The app and the CLI show such a message alone (it names the value, what was expected and
    the fix); any other exception is an internal error: logged with its traceback, and
    shown as such. Subclasses: composition.errors.CompositionError, modalities' ModalityError,
    modalities.encoders' EncoderError, studio.errors.StudioError.
    """

_SHOWN = 80  # characters of a bad value quoted in a message (a hostile file may hold megabytes)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _where(name: str, owner: str) -> str:
    return f"{owner}: {name}" if owner else name


def is_int(value: object) -> bool:
    """An integer that is not a bool (a whole float counts: 8.0)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, float) and value.is_integer()


def is_real(value: object) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _range_text(minimum, maximum, *, open_min: bool = False) -> str:
    if maximum is None and minimum == 0:
        return "positive" if open_min else "non-negative"
    if maximum is None and minimum == 1 and not open_min:
        return "positive"
    if minimum is not None and maximum is not None:
        return f"in {'(' if open_min else '['}{minimum}, {maximum}]"
    if minimum is not None:
        return f"{'>' if open_min else '>='} {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""


def _described(what: str, minimum, maximum, open_min: bool = False) -> str:
    """'a positive integer', 'a non-negative integer', 'an integer in [1, 1024]', 'a finite number in (0, 1]'."""
    bounds = _range_text(minimum, maximum, open_min=open_min)
    if bounds in ("positive", "non-negative"):
        return f"a {bounds} {what}"
    article = "an" if what[0] in "aeiou" else "a"
    return f"{article} {what}{' ' + bounds if bounds else ''}"


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None, *,
              error: type[Exception] = ValueError, owner: str = "") -> int:
    """``value`` as an int in [minimum, maximum] (either bound optional)."""
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error(f"{_where(name, owner)}={_show(value)}; expected {_described('integer', minimum, maximum)}.")
    return int(value)


def check_float(value: object, name: str, minimum: float | None = None, maximum: float | None = None, *,
                open_min: bool = False, error: type[Exception] = ValueError, owner: str = "") -> float:
    """``value`` as a finite float in [minimum, maximum] (``open_min``: minimum excluded)."""
    ok = is_real(value)
    if ok:
        number = float(value)
        ok = not ((minimum is not None and (number < minimum or (open_min and number == minimum)))
                  or (maximum is not None and number > maximum))
    if not ok:
        raise error(f"{_where(name, owner)}={_show(value)}; expected {_described('finite number', minimum, maximum, open_min)}.")
    return float(value)


def check_str(value: object, name: str, *, allow_empty: bool = False, max_chars: int | None = None,
              error: type[Exception] = ValueError, owner: str = "") -> str:
    """``value`` as a string (non-empty unless ``allow_empty``), at most ``max_chars`` long."""
    if not isinstance(value, str) or (not allow_empty and not value.strip()) or (max_chars is not None and len(value) > max_chars):
        what = "a string" if allow_empty else "a non-empty string"
        limit = f" of at most {max_chars} characters" if max_chars is not None else ""
        raise error(f"{_where(name, owner)}={_show(value)}; expected {what}{limit}.")
    return value


def check_choice(value: T, name: str, choices: Iterable[T], *, error: type[Exception] = ValueError, owner: str = "") -> T:
    """``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if isinstance(value, bool) or value not in options:
        raise error(f"{_where(name, owner)}={_show(value)} is not supported; expected one of {', '.join(map(str, options))}.")
    return value
