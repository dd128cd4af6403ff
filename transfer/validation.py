"""Checks of user settings, each naming the flag, the value and what is allowed.

Settings dataclasses call these from ``__post_init__``, so a bad value is refused when the
settings are built, before any file is read or written.
"""

from __future__ import annotations

import math
import re

from transfer.errors import UserError


def flag(name: str) -> str:
    """``weight_decay`` -> ``--weight-decay``."""
    return "--" + name.replace("_", "-")


def number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> float:  # fmt: skip
    """A finite number in ``[low, high]`` (``(`` / ``)`` where open); returns it as ``float``."""
    allowed = _range_text(low, high, low_open, high_open)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag(name)} must be a number {allowed}, got {value!r}") from None
    ok = math.isfinite(x)
    ok = ok and (low is None or (x > low if low_open else x >= low))
    ok = ok and (high is None or (x < high if high_open else x <= high))
    if not ok:
        raise UserError(f"{flag(name)} must be a finite number {allowed}, got {value!r}")
    return x


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An integer in ``[low, high]``."""
    allowed = _range_text(low, high, False, False)
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise UserError(f"{flag(name)} must be an integer {allowed}, got {value!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise UserError(f"{flag(name)} must be an integer {allowed}, got {value}")
    return value


def count_or_word(name: str, value, words: tuple[str, ...], *, low: int = 1) -> int | str:
    """One of ``words`` (``auto``, ``all``) or an integer ``>= low``."""
    if str(value) in words:
        return str(value)
    said = ", ".join(words)  # "auto", "auto, last": then " or an integer"
    try:
        n = int(str(value))
    except ValueError:
        raise UserError(f"{flag(name)} must be {said} or an integer >= {low}, got {value!r}") from None
    if n < low:
        raise UserError(f"{flag(name)} must be {said} or an integer >= {low}, got {n}")
    return n


def choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise UserError(f"{flag(name)} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(name: str, value: str) -> str:
    """The syntax of ``--device`` (availability is checked when the device is resolved)."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise UserError(f"{flag(name)} must be auto, cpu, cuda or cuda:N; got {value!r}")
    return value


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""
