"""Reference arithmetic for the numerics tests: Python ints and Fractions, from the definitions."""

from __future__ import annotations

import math
from fractions import Fraction

from tessera.models.rounding import Overflow, Rounding

HALF = Fraction(1, 2)

# Hand-computed: each mode applied to the ties -2.5, -1.5, -0.5, 0.5, 1.5, 2.5.
TIE_RESULTS = {
    Rounding.TRN: [-3, -2, -1, 0, 1, 2],
    Rounding.TRN_ZERO: [-2, -1, 0, 0, 1, 2],
    Rounding.RND: [-2, -1, 0, 1, 2, 3],
    Rounding.RND_ZERO: [-2, -1, 0, 0, 1, 2],
    Rounding.RND_MIN_INF: [-3, -2, -1, 0, 1, 2],
    Rounding.RND_INF: [-3, -2, -1, 1, 2, 3],
    Rounding.RND_CONV: [-2, -2, 0, 0, 2, 2],
}


def ref_round(value: Fraction, mode: Rounding) -> int:
    """Round an exact rational with ``mode``, from the definition of each mode."""
    floor = math.floor(value)
    frac = value - floor
    if frac == 0 or mode is Rounding.TRN:
        return floor
    if mode is Rounding.TRN_ZERO:
        return math.trunc(value)
    if frac != HALF:
        return floor + 1 if frac > HALF else floor
    tie_up = {
        Rounding.RND: True,
        Rounding.RND_ZERO: value < 0,
        Rounding.RND_MIN_INF: False,
        Rounding.RND_INF: value > 0,
        Rounding.RND_CONV: floor % 2 == 1,
    }[mode]
    return floor + 1 if tie_up else floor


def ref_overflow(value: int, bits: int, signed: bool, mode: Overflow) -> int:
    """Fit a Python int into ``bits`` with ``mode`` (ap_fixed semantics)."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if mode is Overflow.WRAP:
        return (value - lo) % 2**bits + lo
    if lo <= value <= hi:
        # ap_fixed's AP_SAT_SYM also treats the most negative code as an underflow.
        return -hi if mode is Overflow.SAT_SYM and signed and value == lo else value
    if mode is Overflow.SAT_ZERO:
        return 0
    if mode is Overflow.SAT_SYM and signed:
        lo = -hi
    return hi if value > hi else lo
