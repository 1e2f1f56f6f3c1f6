"""Human sizes ("2GiB", "500MB") and durations ("30m", "2h", "1h30m") to numbers."""

from __future__ import annotations

import re

from steadyrun.errors import TaskDefinitionError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"([0-9]*\.?[0-9]+)\s*(ms|min|s|m|h|d)")


def parse_size(value: int | float | str | None, *, what: str = "size") -> int | None:
    """Bytes from an int or a string such as ``"2GiB"``, ``"512MB"`` or ``"1.5G"``.

    ``None`` stays ``None``. Raises :class:`TaskDefinitionError` for anything else,
    naming ``what`` and the units that are understood.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TaskDefinitionError(f"{what}: expected a size such as '2GiB', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise TaskDefinitionError(f"{what}: a size cannot be negative, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise TaskDefinitionError(
        f"{what}: cannot read {value!r} as a size; write a number of bytes or a number "
        "with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
    )


def parse_duration(value: int | float | str | None, *, what: str = "duration") -> float | None:
    """Seconds from a number or a string such as ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``
    or ``"01:30:00"``. ``None`` stays ``None``; anything else raises
    :class:`TaskDefinitionError`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TaskDefinitionError(f"{what}: expected a duration such as '30m', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise TaskDefinitionError(f"{what}: a duration must be positive, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
            total = 0.0
            for part in text.split(":"):
                total = total * 60 + int(part)
            if total > 0:
                return total
        elif re.fullmatch(r"[0-9.]+", text):
            seconds = float(text)
            if seconds > 0:
                return seconds
        else:
            parts = _DURATION_RE.findall(text)
            if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
                total = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
                if total > 0:
                    return total
    raise TaskDefinitionError(
        f"{what}: cannot read {value!r} as a duration; write seconds, a number with a unit "
        "(ms, s, m, h, d; e.g. '30m', '1h30m') or 'HH:MM:SS'"
    )


def format_size(n: int | float | None) -> str:
    """``1536`` -> ``'1.5KiB'``; for messages."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"


def format_duration(seconds: float | None) -> str:
    """``'0.31s'``, ``'42.0s'``, ``'4m12s'``, ``'3h05m'``, or ``-``; for tables."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_limit(seconds: float | None) -> str:
    """A limit the user gave, as they would write it: ``3`` -> ``'3s'``, ``5400`` ->
    ``'1h30m'``, ``7200`` -> ``'2h'``; a fraction of a second or a limit under one
    second reads as :func:`format_duration` does (``'0.50s'``)."""
    if seconds is None or seconds < 1 or seconds != int(seconds):
        return format_duration(seconds)
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)
