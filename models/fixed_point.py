"""Fixed-point types with Vitis HLS ``ap_fixed`` semantics.

A :class:`FixedType` describes a format; values are carried as raw ``int64`` integers (the bits the
hardware holds), with ``value = raw * 2**-frac_bits``. Conversions round first and then handle
overflow, as ``ap_fixed`` does, and are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.models.rounding import (
    IntArray,
    Overflow,
    Rounding,
    _as_int64,
    _coerce_enum,
    apply_overflow,
    int_range,
    shift_round,
    wrap,
)

__all__ = ["FixedType", "add", "add_type", "mul", "mul_type", "sub", "sub_type"]

_MAX_DIRECT_SHIFT = 63
# Keeps lsb and the extreme values comfortably inside the float64 exponent range.
_INT_BITS_LIMIT = 256
_FLOAT64_SIGNIFICAND_BITS = 53


@dataclass(frozen=True)
class FixedType:
    """A fixed-point format, ``ap_fixed<width, int_bits, rounding, overflow>``.

    Parameters
    ----------
    width : int
        Total number of bits: 1..64 when signed, 1..63 when unsigned (raw values stay exact in
        ``int64``).
    int_bits : int
        Integer bits, sign bit included, as ``ap_fixed``'s ``I``; may be negative or exceed
        ``width``. Must be in ``[-256, 256]``.
    signed : bool, default True
        ``ap_fixed`` (two's complement) when true, ``ap_ufixed`` otherwise.
    rounding : Rounding or str, default Rounding.TRN
        Quantization mode used when a value is converted into this type.
    overflow : Overflow or str, default Overflow.WRAP
        Overflow mode used when a value is converted into this type.

    Attributes
    ----------
    frac_bits : int
        ``width - int_bits``.
    lsb : float
        Value of one raw step, ``2**-frac_bits``.
    raw_min, raw_max : int
        Inclusive raw integer range.
    min_value, max_value : float
        Inclusive real range (rounded to float64 when ``width > 53``).

    Raises
    ------
    ValueError
        If a field is outside its allowed range; the message names the field.
    """

    width: int
    int_bits: int
    signed: bool = True
    rounding: Rounding = Rounding.TRN
    overflow: Overflow = Overflow.WRAP

    def __post_init__(self) -> None:
        if not isinstance(self.signed, bool | np.bool_):
            raise ValueError(f"signed must be a bool, got {self.signed!r}")
        for name in ("width", "int_bits"):
            value = getattr(self, name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an int, got {value!r}")
        top = 64 if self.signed else 63
        if not 1 <= self.width <= top:
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(f"width must be in [1, {top}] for {kind} types, got {self.width}")
        if not -_INT_BITS_LIMIT <= self.int_bits <= _INT_BITS_LIMIT:
            raise ValueError(
                f"int_bits must be in [{-_INT_BITS_LIMIT}, {_INT_BITS_LIMIT}], got {self.int_bits}"
            )
        # Normalise so that equal formats compare and hash equal whatever was passed in.
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "int_bits", int(self.int_bits))
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "rounding", _coerce_enum(Rounding, self.rounding, "rounding"))
        object.__setattr__(self, "overflow", _coerce_enum(Overflow, self.overflow, "overflow"))

    @property
    def frac_bits(self) -> int:
        """Number of fractional bits, ``width - int_bits`` (negative when ``int_bits > width``)."""
        return self.width - self.int_bits

    @property
    def lsb(self) -> float:
        """Value of one raw step, ``2**-frac_bits``."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def raw_min(self) -> int:
        """Smallest raw value."""
        return int_range(self.width, self.signed)[0]

    @property
    def raw_max(self) -> int:
        """Largest raw value."""
        return int_range(self.width, self.signed)[1]

    @property
    def min_value(self) -> float:
        """Smallest real value, ``raw_min * lsb`` (rounded to float64 when ``width > 53``)."""
        return math.ldexp(float(self.raw_min), -self.frac_bits)

    @property
    def max_value(self) -> float:
        """Largest real value, ``raw_max * lsb`` (rounded to float64 when ``width > 53``)."""
        return math.ldexp(float(self.raw_max), -self.frac_bits)

    def __str__(self) -> str:
        """Return the C++ type, e.g. ``ap_fixed<16,6,AP_RND_CONV,AP_SAT>``."""
        name = "ap_fixed" if self.signed else "ap_ufixed"
        return (
            f"{name}<{self.width},{self.int_bits},"
            f"AP_{self.rounding.value},AP_{self.overflow.value}>"
        )

    def check_raw(self, raw: npt.ArrayLike, name: str = "raw") -> IntArray:
        """Return ``raw`` as ``int64``, checking that it is a valid raw value of this type.

        Parameters
        ----------
        raw : array_like of int
            Raw values.
        name : str, default "raw"
            Argument name used in error messages.

        Returns
        -------
        numpy.ndarray of int64
            The raw values.

        Raises
        ------
        ValueError
            If a value is outside ``[raw_min, raw_max]``.
        """
        arr = _as_int64(raw, name)
        lo, hi = self.raw_min, self.raw_max
        if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
            raise ValueError(f"{name} must be within [{lo}, {hi}] for {self}")
        return arr

    def quantize(self, x: npt.ArrayLike) -> IntArray:
        """Convert real values to raw values of this type, rounding then handling overflow.

        The conversion is exact for every finite float64 input: each value is split into its
        integer significand and exponent, so the rounding sees the exact binary value (no
        ``x * 2**frac_bits`` float product that could round first). float32 and float16 inputs are
        widened to float64 exactly. Integer inputs are taken as exact integers (not through
        float64), so int64 values beyond 2**53 are exact too.

        Parameters
        ----------
        x : array_like of float or int
            Real values; must be finite.

        Returns
        -------
        numpy.ndarray of int64
            Raw values, ``overflow(rounding(x * 2**frac_bits))``.

        Raises
        ------
        ValueError
            If any value is NaN or infinite.
        """
        arr = np.asarray(x)
        if arr.dtype.kind in "iuO":
            ints = _as_int64(arr, "x")
            return _scale_and_fit(ints, np.full(ints.shape, -self.frac_bits, np.int64), self)
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("x must be finite (no NaN or infinity)")
        mantissa, exponent = np.frexp(values)  # values = mantissa * 2**exponent, |mantissa| < 1
        significand = np.ldexp(mantissa, _FLOAT64_SIGNIFICAND_BITS).astype(np.int64)
        # values * 2**frac_bits = significand * 2**(exponent - 53 + frac_bits) exactly.
        shift = _FLOAT64_SIGNIFICAND_BITS - exponent.astype(np.int64) - self.frac_bits
        return _scale_and_fit(significand, shift, self)

    def to_float(self, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Convert raw values of this type to float64.

        Exact when ``width <= 53``; wider raw values are rounded to nearest float64.

        Parameters
        ----------
        raw : array_like of int
            Raw values within ``[raw_min, raw_max]``.

        Returns
        -------
        numpy.ndarray of float64
            ``raw * 2**-frac_bits``.
        """
        arr = self.check_raw(raw)
        return np.asarray(np.ldexp(arr.astype(np.float64), -self.frac_bits), dtype=np.float64)

    def cast(self, raw: npt.ArrayLike, src: FixedType) -> IntArray:
        """Convert raw values of type ``src`` to this type, with this type's rounding and overflow.

        Parameters
        ----------
        raw : array_like of int
            Raw values of ``src``.
        src : FixedType
            Source format.

        Returns
        -------
        numpy.ndarray of int64
            Raw values of this type, exact.

        Raises
        ------
        ValueError
            If ``raw`` is outside ``src``'s raw range.
        """
        arr = src.check_raw(raw)
        shift = np.full(arr.shape, src.frac_bits - self.frac_bits, dtype=np.int64)
        return _scale_and_fit(arr, shift, self)


def _scale_and_fit(values: IntArray, shift: IntArray, dst: FixedType) -> IntArray:
    """Return ``overflow(round(values * 2**-shift))`` into ``dst``, exact for any shift.

    Right shifts (``shift >= 0``) go through :func:`shift_round`. Left shifts may exceed
    ``int64``; those lanes are out of range for every allowed width, so they saturate by sign, and
    wrap using the product modulo ``2**64`` (enough, because ``dst.width <= 64``).
    """
    out = np.empty(values.shape, dtype=np.int64)
    right = np.asarray(shift >= 0)
    if np.any(right):
        rounded = shift_round(values[right], shift[right], dst.rounding)
        out[right] = apply_overflow(rounded, dst.width, dst.signed, dst.overflow)
    left = ~right
    if np.any(left):
        v = values[left]
        k = -shift[left]
        kc = np.minimum(k, _MAX_DIRECT_SHIFT)
        product_mod_2_64 = np.where(k <= _MAX_DIRECT_SHIFT, v << kc, 0)
        fits = (v == 0) | ((k <= _MAX_DIRECT_SHIFT) & ((product_mod_2_64 >> kc) == v))
        if dst.overflow is Overflow.WRAP:
            out[left] = wrap(product_mod_2_64, dst.width, dst.signed)
        else:
            exact = np.where(fits, product_mod_2_64, 0)
            in_range = apply_overflow(exact, dst.width, dst.signed, dst.overflow)
            out[left] = np.where(fits, in_range, _saturated_by_sign(v, dst))
    return out


def _saturated_by_sign(v: IntArray, dst: FixedType) -> IntArray:
    """Saturated result of values far out of range (``|value| >= 2**63``), chosen by sign."""
    if dst.overflow is Overflow.SAT_ZERO:
        return np.zeros(v.shape, dtype=np.int64)
    lo, hi = dst.raw_min, dst.raw_max
    if dst.overflow is Overflow.SAT_SYM and dst.signed:
        lo = -hi
    return np.where(v > 0, hi, lo).astype(np.int64)


def _result_type(width: int, int_bits: int, signed: bool, operation: str) -> FixedType:
    """Build a full-precision result type, explaining when it does not fit ``int64``."""
    top = 64 if signed else 63
    if width > top:
        raise ValueError(
            f"full-precision {operation} needs width {width}, above the {top} bits that int64 "
            "raw values can hold; cast the operands to narrower types first"
        )
    return FixedType(width, int_bits, signed)


def _aligned_int_bits(a: FixedType, b: FixedType) -> int:
    """Integer bits both operands need once aligned; an unsigned one needs a sign bit if mixed."""
    a_int_bits = a.int_bits + int(b.signed and not a.signed)
    b_int_bits = b.int_bits + int(a.signed and not b.signed)
    return max(a_int_bits, b_int_bits)


def add_type(a: FixedType, b: FixedType) -> FixedType:
    """Full-precision result type of ``a + b``, as ``ap_fixed``'s ``plus`` type.

    Fractional bits are the larger of the two, integer bits one more than the larger (an unsigned
    operand added to a signed one counts one extra integer bit), signed if either is.

    Parameters
    ----------
    a, b : FixedType
        Operand types.

    Returns
    -------
    FixedType
        Result type, with the default ``TRN`` / ``WRAP`` modes (it never rounds or overflows).

    Raises
    ------
    ValueError
        If the result would be wider than ``int64`` raw values allow.
    """
    int_bits = _aligned_int_bits(a, b) + 1
    frac_bits = max(a.frac_bits, b.frac_bits)
    return _result_type(int_bits + frac_bits, int_bits, a.signed or b.signed, "sum")


def sub_type(a: FixedType, b: FixedType) -> FixedType:
    """Full-precision result type of ``a - b``, as ``ap_fixed``'s ``minus`` type (always signed).

    Parameters
    ----------
    a, b : FixedType
        Operand types.

    Returns
    -------
    FixedType
        Result type, with the default ``TRN`` / ``WRAP`` modes.

    Raises
    ------
    ValueError
        If the result would be wider than 64 bits.
    """
    int_bits = _aligned_int_bits(a, b) + 1
    frac_bits = max(a.frac_bits, b.frac_bits)
    return _result_type(int_bits + frac_bits, int_bits, True, "difference")


def mul_type(a: FixedType, b: FixedType) -> FixedType:
    """Full-precision result type of ``a * b``, as ``ap_fixed``'s ``mult`` type.

    Widths add, integer bits add, signed if either operand is.

    Parameters
    ----------
    a, b : FixedType
        Operand types.

    Returns
    -------
    FixedType
        Result type, with the default ``TRN`` / ``WRAP`` modes.

    Raises
    ------
    ValueError
        If the result would be wider than ``int64`` raw values allow.
    """
    signed = a.signed or b.signed
    return _result_type(a.width + b.width, a.int_bits + b.int_bits, signed, "product")


def _aligned(
    a_raw: npt.ArrayLike,
    a_type: FixedType,
    b_raw: npt.ArrayLike,
    b_type: FixedType,
    dst: FixedType,
) -> tuple[IntArray, IntArray]:
    """Checked raw operands shifted onto ``dst``'s lsb (exact: ``dst`` has more frac bits)."""
    a = a_type.check_raw(a_raw, "a_raw") << np.int64(dst.frac_bits - a_type.frac_bits)
    b = b_type.check_raw(b_raw, "b_raw") << np.int64(dst.frac_bits - b_type.frac_bits)
    return a, b


def add(
    a_raw: npt.ArrayLike, a_type: FixedType, b_raw: npt.ArrayLike, b_type: FixedType
) -> tuple[IntArray, FixedType]:
    """Exact sum of two fixed-point values in the full-precision :func:`add_type`.

    Parameters
    ----------
    a_raw : array_like of int
        Raw values of ``a_type``.
    a_type : FixedType
        Format of ``a_raw``.
    b_raw : array_like of int
        Raw values of ``b_type``, broadcastable with ``a_raw``.
    b_type : FixedType
        Format of ``b_raw``.

    Returns
    -------
    tuple
        ``(raw, type)``: raw values of the sum and their format.
    """
    result_type = add_type(a_type, b_type)
    a, b = _aligned(a_raw, a_type, b_raw, b_type, result_type)
    return np.asarray(a + b, dtype=np.int64), result_type


def sub(
    a_raw: npt.ArrayLike, a_type: FixedType, b_raw: npt.ArrayLike, b_type: FixedType
) -> tuple[IntArray, FixedType]:
    """Exact difference ``a - b`` in the full-precision :func:`sub_type`.

    Parameters
    ----------
    a_raw : array_like of int
        Raw values of ``a_type``.
    a_type : FixedType
        Format of ``a_raw``.
    b_raw : array_like of int
        Raw values of ``b_type``, broadcastable with ``a_raw``.
    b_type : FixedType
        Format of ``b_raw``.

    Returns
    -------
    tuple
        ``(raw, type)``: raw values of the difference and their format.
    """
    result_type = sub_type(a_type, b_type)
    a, b = _aligned(a_raw, a_type, b_raw, b_type, result_type)
    return np.asarray(a - b, dtype=np.int64), result_type


def mul(
    a_raw: npt.ArrayLike, a_type: FixedType, b_raw: npt.ArrayLike, b_type: FixedType
) -> tuple[IntArray, FixedType]:
    """Exact product of two fixed-point values in the full-precision :func:`mul_type`.

    Parameters
    ----------
    a_raw : array_like of int
        Raw values of ``a_type``.
    a_type : FixedType
        Format of ``a_raw``.
    b_raw : array_like of int
        Raw values of ``b_type``, broadcastable with ``a_raw``.
    b_type : FixedType
        Format of ``b_raw``.

    Returns
    -------
    tuple
        ``(raw, type)``: raw values of the product and their format.
    """
    result_type = mul_type(a_type, b_type)
    a = a_type.check_raw(a_raw, "a_raw")
    b = b_type.check_raw(b_raw, "b_raw")
    # The raw product already has frac_a + frac_b fractional bits, the result's frac_bits.
    return np.asarray(a * b, dtype=np.int64), result_type
