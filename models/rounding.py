"""Exact integer rounding, overflow handling and requantization.

These are the golden models of the rounding and saturation logic in the generated hardware. Every
function works on ``int64`` numpy arrays and is exact: where a result could leave the ``int64``
range, a ``ValueError`` is raised instead of wrapping silently.

The rounding modes and overflow modes follow Vitis HLS ``ap_fixed`` (``AP_TRN`` ... ``AP_RND_CONV``,
``AP_WRAP`` ... ``AP_SAT_SYM``).
"""

from __future__ import annotations

import enum
import math
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "Overflow",
    "Rounding",
    "apply_overflow",
    "int_range",
    "quantize_multiplier",
    "requantize",
    "saturate",
    "shift_round",
    "wrap",
]

IntArray = npt.NDArray[np.int64]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
# Right shifts longer than this are folded into a sticky bit (see _shift_right_round).
_MAX_DIRECT_SHIFT = 63


class Rounding(enum.StrEnum):
    """Quantization (rounding) mode, as ``ap_fixed``'s ``AP_*`` quantization modes.

    Attributes
    ----------
    TRN
        Truncate toward minus infinity (floor); ``AP_TRN``.
    TRN_ZERO
        Truncate toward zero; ``AP_TRN_ZERO``.
    RND
        Round to nearest, ties toward plus infinity; ``AP_RND``.
    RND_ZERO
        Round to nearest, ties toward zero; ``AP_RND_ZERO``.
    RND_MIN_INF
        Round to nearest, ties toward minus infinity; ``AP_RND_MIN_INF``.
    RND_INF
        Round to nearest, ties away from zero; ``AP_RND_INF``.
    RND_CONV
        Round to nearest, ties to even (convergent rounding); ``AP_RND_CONV``.
    """

    TRN = "TRN"
    TRN_ZERO = "TRN_ZERO"
    RND = "RND"
    RND_ZERO = "RND_ZERO"
    RND_MIN_INF = "RND_MIN_INF"
    RND_INF = "RND_INF"
    RND_CONV = "RND_CONV"


class Overflow(enum.StrEnum):
    """Overflow mode, as ``ap_fixed``'s ``AP_*`` overflow modes.

    Attributes
    ----------
    WRAP
        Keep the low bits (two's complement wrap-around); ``AP_WRAP``.
    SAT
        Clamp to ``[min, max]``; ``AP_SAT``.
    SAT_ZERO
        Replace any out-of-range value with zero; ``AP_SAT_ZERO``.
    SAT_SYM
        Signed: clamp to ``[-max, max]``, so the most negative code never appears (``ap_fixed``
        also maps an in-range ``min`` to ``-max``). Unsigned: same as ``SAT``; ``AP_SAT_SYM``.
    """

    WRAP = "WRAP"
    SAT = "SAT"
    SAT_ZERO = "SAT_ZERO"
    SAT_SYM = "SAT_SYM"


_EnumT = TypeVar("_EnumT", Rounding, Overflow)


def _coerce_enum(cls: type[_EnumT], value: Any, name: str) -> _EnumT:
    """Return ``value`` as a member of ``cls``, accepting the member's string value too."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(member.value for member in cls)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _as_int64(x: npt.ArrayLike, name: str) -> IntArray:
    """Convert an integer array-like to ``int64``, refusing values that would not fit."""
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind == "i":
        return arr.astype(np.int64, copy=False)
    if kind == "u":
        if arr.size and int(arr.max()) > _INT64_MAX:
            raise ValueError(f"{name} has values above the int64 maximum {_INT64_MAX}")
        return arr.astype(np.int64)
    if kind == "O":
        # numpy falls back to object arrays for Python ints outside the 64-bit ranges.
        for value in arr.flat:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must hold integers, got {type(value).__name__}")
            if not _INT64_MIN <= int(value) <= _INT64_MAX:
                raise ValueError(
                    f"{name} must be within int64 [{_INT64_MIN}, {_INT64_MAX}], got {int(value)}"
                )
        return arr.astype(np.int64)
    raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")


def _check_bits(bits: int, signed: bool) -> None:
    """Validate a storage width: results must stay exact in ``int64``."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    top = 64 if signed else 63
    if not 1 <= bits <= top:
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"bits must be in [1, {top}] for {kind} values, got {bits}")


def _check_within(arr: IntArray, lo: int, hi: int, name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` if any element of ``arr`` is outside ``[lo, hi]``."""
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        raise ValueError(f"{name} must be within [{lo}, {hi}], got {int(bad)}")


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Return the inclusive integer range of a ``bits``-wide two's complement or unsigned word.

    Parameters
    ----------
    bits : int
        Word width; 1..64 when signed, 1..63 when unsigned (so that the range fits ``int64``).
    signed : bool
        Two's complement when true, unsigned otherwise.

    Returns
    -------
    tuple of int
        ``(lo, hi)``: ``(-2**(bits-1), 2**(bits-1) - 1)`` or ``(0, 2**bits - 1)``.

    Raises
    ------
    ValueError
        If ``bits`` is outside the allowed range.
    """
    _check_bits(bits, signed)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _shift_left_exact(x: IntArray, k: IntArray) -> IntArray:
    """Return ``x * 2**k`` for ``k >= 1``, raising if any product leaves ``int64``."""
    kc = np.minimum(k, _MAX_DIRECT_SHIFT)
    shifted = x << kc
    # A left shift is exact iff shifting back (sign-extending) recovers x.
    exact = (x == 0) | ((k <= _MAX_DIRECT_SHIFT) & ((shifted >> kc) == x))
    if not np.all(exact):
        raise ValueError("x * 2**-shift overflows int64 for a negative shift")
    return shifted


def _shift_right_round(x: IntArray, s: IntArray, mode: Rounding) -> IntArray:
    """Return ``x / 2**s`` rounded with ``mode``, for ``s >= 0``, exactly as the RTL does."""
    long_shift = s > _MAX_DIRECT_SHIFT
    if np.any(long_shift):
        # Fold the bits below the half bit into one sticky bit: rounding only needs the floor,
        # the half bit and whether anything below it is set, and this keeps shifts < 64.
        t = np.where(long_shift, s - _MAX_DIRECT_SHIFT, 0)
        tc = np.minimum(t, _MAX_DIRECT_SHIFT)
        dropped = x & ~(np.int64(-1) << tc)
        sticky = np.where(t > _MAX_DIRECT_SHIFT, x != 0, dropped != 0)
        x = np.where(long_shift, (x >> tc) | sticky.astype(np.int64), x)
        s = np.where(long_shift, _MAX_DIRECT_SHIFT, s)

    floor = x >> s
    remainder = x & ~(np.int64(-1) << s)
    rounds = s > 0
    half = np.where(rounds, np.int64(1) << np.maximum(s - 1, 0), 0)
    above = remainder > half
    tie = remainder == half

    if mode is Rounding.TRN:
        increment = np.zeros(floor.shape, dtype=bool)
    elif mode is Rounding.TRN_ZERO:
        increment = (x < 0) & (remainder != 0)
    elif mode is Rounding.RND:
        increment = remainder >= half
    elif mode is Rounding.RND_ZERO:
        increment = above | (tie & (x < 0))
    elif mode is Rounding.RND_MIN_INF:
        increment = above
    elif mode is Rounding.RND_INF:
        increment = above | (tie & (x >= 0))
    else:  # RND_CONV
        increment = above | (tie & ((floor & 1) == 1))
    # For s == 0 nothing is dropped (and half == 0 would make RND increment).
    return floor + (increment & rounds)


def shift_round(x: npt.ArrayLike, shift: npt.ArrayLike, mode: Rounding | str) -> IntArray:
    """Divide by a power of two and round, exactly as the hardware does.

    With ``floor = x >> s``, ``r = x & (2**s - 1)`` and ``half = 2**(s-1)``, the result is ``floor``
    plus one when (only for ``s > 0``):

    ============  ===============================================
    mode          increment
    ============  ===============================================
    TRN           never
    TRN_ZERO      ``x < 0 and r != 0``
    RND           ``r >= half``
    RND_ZERO      ``r > half or (r == half and x < 0)``
    RND_MIN_INF   ``r > half``
    RND_INF       ``r > half or (r == half and x >= 0)``
    RND_CONV      ``r > half or (r == half and floor is odd)``
    ============  ===============================================

    Parameters
    ----------
    x : array_like of int
        Values to scale; must fit ``int64``.
    shift : int or array_like of int
        Right shift amount, broadcast against ``x``. ``0`` is the identity; a negative shift is an
        exact left shift by ``-shift``. Shifts above 63 are allowed (the result is then 0 or -1
        before rounding).
    mode : Rounding or str
        Rounding mode.

    Returns
    -------
    numpy.ndarray of int64
        ``x / 2**shift`` rounded with ``mode``, with the broadcast shape of ``x`` and ``shift``.

    Raises
    ------
    ValueError
        If ``x`` or ``shift`` do not fit ``int64``, ``mode`` is unknown, or a left shift would
        overflow ``int64``.
    TypeError
        If ``x`` or ``shift`` are not integers.
    """
    mode = _coerce_enum(Rounding, mode, "mode")
    x_arr, s_arr = np.broadcast_arrays(_as_int64(x, "x"), _as_int64(shift, "shift"))
    out = np.empty(x_arr.shape, dtype=np.int64)
    left = np.asarray(s_arr < 0)
    if np.any(left):
        out[left] = _shift_left_exact(x_arr[left], -s_arr[left])
    right = ~left
    if np.any(right):
        out[right] = _shift_right_round(x_arr[right], s_arr[right], mode)
    return out


def wrap(x: npt.ArrayLike, bits: int, signed: bool) -> IntArray:
    """Keep the low ``bits`` bits of ``x`` (two's complement wrap-around).

    Parameters
    ----------
    x : array_like of int
        Values; must fit ``int64``.
    bits : int
        Result width; 1..64 when signed, 1..63 when unsigned.
    signed : bool
        Interpret the kept bits as two's complement when true.

    Returns
    -------
    numpy.ndarray of int64
        ``x`` reduced modulo ``2**bits`` into :func:`int_range`.
    """
    _check_bits(bits, signed)
    arr = _as_int64(x, "x")
    if signed:
        # Move the sign bit to bit 63 and sign-extend back with an arithmetic shift.
        spare = np.int64(64 - bits)
        return np.asarray((arr << spare) >> spare, dtype=np.int64)
    return np.asarray(arr & np.int64((1 << bits) - 1), dtype=np.int64)


def saturate(
    x: npt.ArrayLike, bits: int, signed: bool, mode: Overflow | str = Overflow.SAT
) -> IntArray:
    """Saturate ``x`` to a ``bits``-wide word.

    Parameters
    ----------
    x : array_like of int
        Values; must fit ``int64``.
    bits : int
        Result width; 1..64 when signed, 1..63 when unsigned.
    signed : bool
        Two's complement when true, unsigned otherwise.
    mode : Overflow or str, default Overflow.SAT
        ``SAT`` clamps to the range, ``SAT_ZERO`` replaces out-of-range values by 0, ``SAT_SYM``
        clamps a signed value to ``[-max, max]``.

    Returns
    -------
    numpy.ndarray of int64
        Saturated values.

    Raises
    ------
    ValueError
        If ``mode`` is ``WRAP`` (use :func:`wrap`) or unknown, or ``bits`` is out of range.
    """
    mode = _coerce_enum(Overflow, mode, "mode")
    if mode is Overflow.WRAP:
        raise ValueError("mode must be SAT, SAT_ZERO or SAT_SYM for saturate(); use wrap()")
    lo, hi = int_range(bits, signed)
    arr = _as_int64(x, "x")
    if mode is Overflow.SAT_ZERO:
        return np.asarray(np.where((arr >= lo) & (arr <= hi), arr, 0), dtype=np.int64)
    if mode is Overflow.SAT_SYM and signed:
        lo = -hi
    return np.asarray(np.clip(arr, lo, hi), dtype=np.int64)


def apply_overflow(x: npt.ArrayLike, bits: int, signed: bool, mode: Overflow | str) -> IntArray:
    """Fit ``x`` into a ``bits``-wide word with any :class:`Overflow` mode.

    Parameters
    ----------
    x : array_like of int
        Values; must fit ``int64``.
    bits : int
        Result width; 1..64 when signed, 1..63 when unsigned.
    signed : bool
        Two's complement when true, unsigned otherwise.
    mode : Overflow or str
        Overflow mode.

    Returns
    -------
    numpy.ndarray of int64
        :func:`wrap` for ``WRAP``, :func:`saturate` otherwise.
    """
    mode = _coerce_enum(Overflow, mode, "mode")
    if mode is Overflow.WRAP:
        return wrap(x, bits, signed)
    return saturate(x, bits, signed, mode)


def requantize(
    acc: npt.ArrayLike,
    multiplier: npt.ArrayLike,
    shift: npt.ArrayLike,
    zero_point: npt.ArrayLike = 0,
    bits: int = 8,
    signed: bool = True,
    rounding: Rounding | str = Rounding.RND_CONV,
    overflow: Overflow | str = Overflow.SAT,
) -> IntArray:
    """Requantize ``int32`` accumulators with a fixed-point multiplier (gemmlowp / TFLite style).

    ``y = shift_round(acc * multiplier, shift, rounding) + zero_point``, then ``y`` is fitted to
    ``bits`` with ``overflow``. The effective scale is ``multiplier / 2**shift`` (see
    :func:`quantize_multiplier`). Unlike TFLite's ``SaturatingRoundingDoublingHighMul`` followed by
    ``RoundingDivideByPOT``, the product is rounded once, which is what the RTL implements.

    Parameters
    ----------
    acc : array_like of int
        Accumulators; must be within ``int32``.
    multiplier : int or array_like of int
        Multiplier in ``[0, 2**31 - 1]``; an array broadcastable to ``acc`` gives per-channel
        scales.
    shift : int or array_like of int
        Right shift in ``[0, 63]``, broadcastable to ``acc``.
    zero_point : int or array_like of int, default 0
        Output zero point, within ``int32``; broadcastable to ``acc``.
    bits : int, default 8
        Output width.
    signed : bool, default True
        Signed (two's complement) or unsigned output.
    rounding : Rounding or str, default Rounding.RND_CONV
        Rounding of the scaled product.
    overflow : Overflow or str, default Overflow.SAT
        Overflow handling of the output.

    Returns
    -------
    numpy.ndarray of int64
        Requantized values with the broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If an argument is outside its range; the message names the argument.
    """
    rounding = _coerce_enum(Rounding, rounding, "rounding")
    overflow = _coerce_enum(Overflow, overflow, "overflow")
    _check_bits(bits, signed)
    acc_arr = _as_int64(acc, "acc")
    _check_within(acc_arr, _INT32_MIN, _INT32_MAX, "acc")
    multiplier_arr = _as_int64(multiplier, "multiplier")
    _check_within(multiplier_arr, 0, _INT32_MAX, "multiplier")
    shift_arr = _as_int64(shift, "shift")
    _check_within(shift_arr, 0, 63, "shift")
    zero_point_arr = _as_int64(zero_point, "zero_point")
    _check_within(zero_point_arr, _INT32_MIN, _INT32_MAX, "zero_point")
    # |acc * multiplier| <= 2**62 and |zero_point| <= 2**31: nothing below can leave int64.
    scaled = shift_round(acc_arr * multiplier_arr, shift_arr, rounding)
    return apply_overflow(scaled + zero_point_arr, bits, signed, overflow)


def quantize_multiplier(scale: float, multiplier_bits: int = 31) -> tuple[int, int]:
    """Split a positive real scale into an integer multiplier and a right shift.

    Returns ``(multiplier, shift)`` with ``multiplier / 2**shift`` the round-to-nearest-even
    approximation of ``scale`` and ``multiplier`` as large as possible below
    ``2**multiplier_bits``: normalised into ``[2**(multiplier_bits-1), 2**multiplier_bits)``
    whenever that needs a shift in ``[0, 63]``. For scales too small for that (below about
    ``2**(multiplier_bits - 64)``) the shift is capped at 63 and the multiplier is not normalised,
    so it has fewer significant bits.

    Parameters
    ----------
    scale : float
        Scale to represent, ``0 < scale < 2**multiplier_bits``.
    multiplier_bits : int, default 31
        Multiplier width in bits (unsigned), 1..31, so that the multiplier is a non-negative
        ``int32``.

    Returns
    -------
    tuple of int
        ``(multiplier, shift)`` with ``0 < multiplier < 2**multiplier_bits`` and
        ``0 <= shift <= 63``.

    Raises
    ------
    ValueError
        If ``scale`` is not finite, not positive, too large (needs a negative shift) or too small
        (the multiplier would round to 0 with shift 63), or ``multiplier_bits`` is outside 1..31.
    """
    if isinstance(multiplier_bits, bool) or not isinstance(multiplier_bits, int | np.integer):
        raise TypeError(f"multiplier_bits must be an int, got {type(multiplier_bits).__name__}")
    if not 1 <= multiplier_bits <= 31:
        raise ValueError(f"multiplier_bits must be in [1, 31], got {multiplier_bits}")
    value = float(scale)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, mantissa in [0.5, 1)
    # ldexp is exact and round() on a float rounds half to even, so this is exact.
    multiplier = round(math.ldexp(mantissa, multiplier_bits))
    shift = multiplier_bits - exponent
    if multiplier == 1 << multiplier_bits:
        # Rounding carried out of the top bit; renormalise.
        multiplier >>= 1
        shift -= 1
    if shift < 0:
        raise ValueError(
            f"scale must be below 2**multiplier_bits = {1 << multiplier_bits} "
            f"(after rounding), got {scale!r}"
        )
    if shift > 63:
        shift = 63
        multiplier = round(math.ldexp(value, 63))
        if multiplier == 0:
            raise ValueError(f"scale is too small for a shift of at most 63: {scale!r}")
    return int(multiplier), int(shift)
