"""Quantities with units: bandwidth, sizes and durations.

Cluster files are written by people, so sizes and rates carry their unit in the text
(`50Mbps`, `4GiB`, `2ms`). A bare number is refused where a unit is expected: whether `50`
means bits or bytes, per second or per millisecond, is exactly the mistake that silently makes
a plan 8x or 1000x wrong.

Parsing goes through `Decimal`, so `0.1ms` or `1.5Gbps` become the nearest float to the written
value, and the `exact_*` spellings parse back to the very same number (cluster files round-trip).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER_WITH_UNIT = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-zµμ/]*)\s*$"
)

# Bits per second for one unit. Keys are lower case: units are matched case-insensitively.
_BANDWIDTH_UNITS: dict[str, int] = {
    "bps": 1,
    "kbps": 10**3,
    "mbps": 10**6,
    "gbps": 10**9,
    "bit/s": 1,
    "kbit/s": 10**3,
    "mbit/s": 10**6,
    "gbit/s": 10**9,
}

# Bytes for one unit: decimal (KB, MB, GB, TB) and binary (KiB .. TiB), matched case-insensitively.
_BYTE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

# How many of the unit make one second (durations divide, so `3ms` is the float nearest 0.003).
_DURATION_UNITS: dict[str, int] = {"s": 1, "ms": 10**3, "us": 10**6, "µs": 10**6, "μs": 10**6, "ns": 10**9}

_BANDWIDTH_HINT = "use e.g. 50Mbps, 1Gbps"
_BYTES_HINT = "use e.g. 512MiB, 4GiB"
_DURATION_HINT = "use e.g. 2ms, 100us, 1s"


def _split(text: object, what: str, hint: str) -> tuple[Decimal, str]:
    """Split `text` into a number and a lower-case unit, or explain why it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"cannot parse {text!r} as {what} ({hint})")
    match = _NUMBER_WITH_UNIT.match(text)
    if match is None:
        raise ValueError(f"cannot parse {text!r} as {what} ({hint})")
    try:
        number = Decimal(match["num"])
    except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
        raise ValueError(f"cannot parse {text!r} as {what} ({hint})") from None
    if number < 0:
        raise ValueError(f"{what} cannot be negative: {text!r}")
    return number, match["unit"].lower()


def _bare_number_error(value: object, what: str, hint: str) -> ValueError:
    return ValueError(f"{what} needs a unit, got the bare number {value!r} ({hint})")


def parse_bandwidth(text: str) -> float:
    """`"50Mbps"` -> 50e6 bits per second. Mbps/Gbps are 10^6/10^9 bits per second.

    `MBps`/`GBps` (capital B, lower-case ps) conventionally mean *bytes* per second; they are
    refused rather than silently read as bits, which would be 8x off.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        raise _bare_number_error(text, "a bandwidth", _BANDWIDTH_HINT)
    number, unit = _split(text, "a bandwidth", _BANDWIDTH_HINT)
    if not unit:
        raise _bare_number_error(text, "a bandwidth", _BANDWIDTH_HINT)
    if re.search(r"Bps$", str(text).strip()):
        raise ValueError(f"{text!r} reads as bytes per second; write bits per second ({_BANDWIDTH_HINT})")
    if unit not in _BANDWIDTH_UNITS:
        raise ValueError(f"cannot parse {text!r} as a bandwidth ({_BANDWIDTH_HINT})")
    return float(number * _BANDWIDTH_UNITS[unit])


def parse_bytes(text: str | int) -> int:
    """`"4GiB"` -> 4294967296. An int is taken as a byte count; a string needs a unit."""
    if isinstance(text, bool):
        raise ValueError(f"cannot parse {text!r} as a size ({_BYTES_HINT})")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    if isinstance(text, float):
        if text.is_integer() and text >= 0:
            return int(text)
        raise ValueError(f"cannot parse {text!r} as a size ({_BYTES_HINT})")
    number, unit = _split(text, "a size", _BYTES_HINT)
    if not unit:
        raise _bare_number_error(text, "a size", _BYTES_HINT)
    if unit not in _BYTE_UNITS:
        raise ValueError(f"cannot parse {text!r} as a size ({_BYTES_HINT})")
    return int((number * _BYTE_UNITS[unit]).to_integral_value())


def parse_duration(text: str) -> float:
    """`"2ms"` -> 0.002 seconds. Units: s, ms, us (or µs), ns. The number 0 needs no unit."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text == 0:
            return 0.0
        raise _bare_number_error(text, "a duration", _DURATION_HINT)
    number, unit = _split(text, "a duration", _DURATION_HINT)
    if not unit:
        if number == 0:
            return 0.0
        raise _bare_number_error(text, "a duration", _DURATION_HINT)
    if unit not in _DURATION_UNITS:
        raise ValueError(f"cannot parse {text!r} as a duration ({_DURATION_HINT})")
    return float(number / _DURATION_UNITS[unit])


# ---------------------------------------------------------------------------------------------
# Display: short, rounded, for tables and logs.


def format_bandwidth(bps: float) -> str:
    """50e6 -> `"50 Mbps"`; up to 4 significant digits, for display only."""
    for mult, unit in ((10**9, "Gbps"), (10**6, "Mbps"), (10**3, "Kbps")):
        if abs(bps) >= mult:
            return f"{bps / mult:.4g} {unit}"
    return f"{bps:.4g} bps"


def format_bytes(nbytes: int | float) -> str:
    """4 * 2**30 -> `"4.0 GiB"`; binary units, one decimal, for display only."""
    for mult, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(nbytes) >= mult:
            return f"{nbytes / mult:.1f} {unit}"
    return f"{nbytes:g} B"


def format_duration(seconds: float) -> str:
    """0.002 -> `"2.0 ms"`; one decimal in the largest unit that keeps the number >= 1."""
    if seconds == 0:
        return "0 s"
    for div, unit in ((1, "s"), (10**3, "ms"), (10**6, "us")):
        if abs(seconds) * div >= 1:
            return f"{seconds * div:.1f} {unit}"
    return f"{seconds * 10**9:.1f} ns"


# ---------------------------------------------------------------------------------------------
# Exact spellings: what `Cluster.to_dict` writes, so that parsing gives back the same number.


def _exact(value: float, units: list[tuple[str, int]], divide: bool, parse) -> str:
    """The largest unit in which `value` is >= 1 and whose short spelling parses back to `value`."""
    for unit, factor in units:
        scaled = value * factor if divide else value / factor
        if abs(scaled) < 1 and unit != units[-1][0]:
            continue
        for digits in (6, 12, 17):
            number = f"{scaled:.{digits}g}"
            if "e" not in number and parse(number + unit) == value:
                return number + unit
    return f"{value!r}{units[-1][0]}"


def exact_bandwidth(bps: float) -> str:
    """50e6 -> `"50Mbps"`; parses back to exactly `bps`."""
    units = [("Gbps", 10**9), ("Mbps", 10**6), ("Kbps", 10**3), ("bps", 1)]
    return _exact(bps, units, divide=False, parse=parse_bandwidth)


def exact_bytes(nbytes: int) -> str | int:
    """4 * 2**30 -> `"4GiB"` when a binary unit divides the count exactly, else the plain int."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return int(nbytes)


def exact_duration(seconds: float) -> str:
    """0.002 -> `"2ms"`; parses back to exactly `seconds`."""
    if seconds == 0:
        return "0ms"
    units = [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)]
    return _exact(seconds, units, divide=True, parse=parse_duration)
