"""Duration parsing: `500ms`, `10s`, `1m30s`, `1h`, or bare seconds `10` / `2.5`. No I/O."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)", re.ASCII)  # ASCII digits only
_BARE = re.compile(r"\d+(?:\.\d+)?", re.ASCII)


def parse_duration(text: str) -> float:
    """Return seconds. Raise ValueError (with a message fit for the user) on bad input.

    Accepted: bare non-negative seconds (`10`, `2.5`), or one or more `<number><unit>` parts
    with units h, m, s, ms in that order, each unit at most once (`1h2m3s`, `1m30s`, `500ms`).
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if _BARE.fullmatch(s):
        value = float(s)
    else:
        pos = 0
        value = 0.0
        seen: list[str] = []
        order = ["h", "m", "s", "ms"]
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            unit = m.group(2)
            if seen and order.index(unit) <= order.index(seen[-1]):
                raise ValueError(f"invalid duration {text!r}: units out of order")
            seen.append(unit)
            value += float(m.group(1)) * _UNITS[unit]
            pos = m.end()
        if pos != len(s) or not seen:
            raise ValueError(
                f"invalid duration {text!r} (use e.g. 500ms, 10s, 1m30s, or bare seconds)"
            )
    if not math.isfinite(value):
        raise ValueError(f"invalid duration {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """Inverse-ish of parse_duration for messages: 0.5 -> '500ms', 90 -> '1m30s'."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    frac = seconds - whole
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    out = ""
    if h:
        out += f"{h}h"
    if m:
        out += f"{m}m"
    if s or frac or not out:
        out += f"{s + frac:g}s"
    return out
