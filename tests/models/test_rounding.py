"""Tests of tessera.models.rounding against hand-computed values and Fraction references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_math import TIE_RESULTS, ref_overflow, ref_round

from tessera.models.rounding import (
    Overflow,
    Rounding,
    apply_overflow,
    int_range,
    quantize_multiplier,
    requantize,
    saturate,
    shift_round,
    wrap,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
HALF = Fraction(1, 2)


# ---------------------------------------------------------------- shift_round, hand-computed
# x / 2 with x = -5, -3, -1, 1, 3, 5: ties at -2.5, -1.5, -0.5, 0.5, 1.5, 2.5.
TIES = [-5, -3, -1, 1, 3, 5]
# x / 4 with x = -7, -5, 5, 7: -1.75, -1.25, 1.25, 1.75 (no ties).
NON_TIES = [-7, -5, 5, 7]
NON_TIE_RESULTS = {
    Rounding.TRN: [-2, -2, 1, 1],
    Rounding.TRN_ZERO: [-1, -1, 1, 1],
    Rounding.RND: [-2, -1, 1, 2],
    Rounding.RND_ZERO: [-2, -1, 1, 2],
    Rounding.RND_MIN_INF: [-2, -1, 1, 2],
    Rounding.RND_INF: [-2, -1, 1, 2],
    Rounding.RND_CONV: [-2, -1, 1, 2],
}
# x / 2**63 with x = INT64_MIN (-1), INT64_MAX (just below 1), 2**62 (0.5), -2**62 (-0.5).
SHIFT_63 = [INT64_MIN, INT64_MAX, 2**62, -(2**62)]
SHIFT_63_RESULTS = {
    Rounding.TRN: [-1, 0, 0, -1],
    Rounding.TRN_ZERO: [-1, 0, 0, 0],
    Rounding.RND: [-1, 1, 1, 0],
    Rounding.RND_ZERO: [-1, 1, 0, 0],
    Rounding.RND_MIN_INF: [-1, 1, 0, -1],
    Rounding.RND_INF: [-1, 1, 1, -1],
    Rounding.RND_CONV: [-1, 1, 0, 0],
}


@pytest.mark.parametrize("mode", list(Rounding))
def test_shift_round_ties(mode: Rounding) -> None:
    assert shift_round(TIES, 1, mode).tolist() == TIE_RESULTS[mode]


@pytest.mark.parametrize("mode", list(Rounding))
def test_shift_round_non_ties(mode: Rounding) -> None:
    assert shift_round(NON_TIES, 2, mode).tolist() == NON_TIE_RESULTS[mode]


@pytest.mark.parametrize("mode", list(Rounding))
def test_shift_round_shift_63(mode: Rounding) -> None:
    assert shift_round(SHIFT_63, 63, mode).tolist() == SHIFT_63_RESULTS[mode]


@pytest.mark.parametrize("mode", list(Rounding))
def test_shift_round_shift_0_is_identity(mode: Rounding) -> None:
    values = [INT64_MIN, -129, -128, -1, 0, 1, 127, 128, INT64_MAX]
    assert shift_round(values, 0, mode).tolist() == values


def test_shift_round_beyond_63() -> None:
    # INT64_MIN / 2**64 = -0.5 exactly: the tie survives the sticky-bit folding.
    assert shift_round(INT64_MIN, 64, Rounding.RND_CONV).tolist() == 0
    assert shift_round(INT64_MIN, 64, Rounding.RND_INF).tolist() == -1
    assert shift_round(INT64_MIN, 65, Rounding.RND_INF).tolist() == 0
    assert shift_round([-1, 1], 200, Rounding.TRN).tolist() == [-1, 0]


def test_shift_round_negative_shift_is_exact_left_shift() -> None:
    assert shift_round([-3, 5], -4, Rounding.TRN).tolist() == [-48, 80]
    assert shift_round(1, -62, Rounding.TRN).tolist() == 2**62
    assert shift_round(-1, -63, Rounding.TRN).tolist() == INT64_MIN
    assert shift_round(0, -100, Rounding.TRN).tolist() == 0
    with pytest.raises(ValueError, match="overflows int64"):
        shift_round(1, -63, Rounding.TRN)
    with pytest.raises(ValueError, match="overflows int64"):
        shift_round([1, 2**40], -30, Rounding.TRN)


def test_shift_round_per_element_shift() -> None:
    out = shift_round([[12, 12, 12]], np.array([-1, 0, 3]), Rounding.RND)
    assert out.tolist() == [[24, 12, 2]]


def test_shift_round_rejects_out_of_int64_and_non_integers() -> None:
    with pytest.raises(ValueError, match="x"):
        shift_round([2**63], 1, Rounding.TRN)
    with pytest.raises(ValueError, match="x"):
        shift_round([INT64_MIN - 1], 1, Rounding.TRN)
    with pytest.raises(TypeError, match="x"):
        shift_round([1.5], 1, Rounding.TRN)
    with pytest.raises(ValueError, match="mode"):
        shift_round([1], 1, "ROUND_UP")


def test_rounding_accepts_strings() -> None:
    assert shift_round([3], 1, "RND_CONV").tolist() == [2]
    assert Rounding("RND_INF") is Rounding.RND_INF
    assert isinstance(Rounding.TRN, str)


@settings(max_examples=250, deadline=None)
@given(
    x=st.integers(INT64_MIN, INT64_MAX),
    shift=st.integers(0, 70),
    mode=st.sampled_from(list(Rounding)),
)
def test_shift_round_matches_fraction(x: int, shift: int, mode: Rounding) -> None:
    assert int(shift_round(x, shift, mode)) == ref_round(Fraction(x, 2**shift), mode)


@settings(max_examples=100, deadline=None)
@given(
    xs=st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=16),
    shift=st.integers(1, 6),
    mode=st.sampled_from(list(Rounding)),
)
def test_shift_round_vector_matches_fraction(xs: list[int], shift: int, mode: Rounding) -> None:
    expected = [ref_round(Fraction(x, 2**shift), mode) for x in xs]
    assert shift_round(np.array(xs), shift, mode).tolist() == expected


# ---------------------------------------------------------------- overflow, hand-computed
EDGES = [-129, -128, 127, 128, 255, 256, -257]
OVERFLOW_CASES = [
    (True, Overflow.WRAP, [127, -128, 127, -128, -1, 0, -1]),
    (True, Overflow.SAT, [-128, -128, 127, 127, 127, 127, -128]),
    (True, Overflow.SAT_ZERO, [0, -128, 127, 0, 0, 0, 0]),
    (True, Overflow.SAT_SYM, [-127, -127, 127, 127, 127, 127, -127]),
    (False, Overflow.WRAP, [127, 128, 127, 128, 255, 0, 255]),
    (False, Overflow.SAT, [0, 0, 127, 128, 255, 255, 0]),
    (False, Overflow.SAT_ZERO, [0, 0, 127, 128, 255, 0, 0]),
    (False, Overflow.SAT_SYM, [0, 0, 127, 128, 255, 255, 0]),
]


@pytest.mark.parametrize(("signed", "mode", "expected"), OVERFLOW_CASES)
def test_apply_overflow_8_bit_edges(signed: bool, mode: Overflow, expected: list[int]) -> None:
    assert apply_overflow(EDGES, 8, signed, mode).tolist() == expected


def test_wrap_and_saturate_64_bit() -> None:
    values = [INT64_MIN, -1, 0, INT64_MAX]
    assert wrap(values, 64, True).tolist() == values
    assert saturate(values, 64, True).tolist() == values
    assert saturate(values, 64, True, Overflow.SAT_SYM).tolist() == [-INT64_MAX, -1, 0, INT64_MAX]
    assert wrap(values, 63, False).tolist() == [0, 2**63 - 1, 0, 2**63 - 1]
    assert wrap([-1, 0], 1, True).tolist() == [-1, 0]
    assert wrap([1, 2, 3], 1, True).tolist() == [-1, 0, -1]


def test_int_range() -> None:
    assert int_range(8, True) == (-128, 127)
    assert int_range(8, False) == (0, 255)
    assert int_range(1, True) == (-1, 0)
    assert int_range(64, True) == (INT64_MIN, INT64_MAX)
    assert int_range(63, False) == (0, 2**63 - 1)


@pytest.mark.parametrize(("bits", "signed"), [(0, True), (65, True), (64, False), (-3, False)])
def test_bits_out_of_range(bits: int, signed: bool) -> None:
    with pytest.raises(ValueError, match="bits"):
        int_range(bits, signed)
    with pytest.raises(ValueError, match="bits"):
        wrap([0], bits, signed)
    with pytest.raises(ValueError, match="bits"):
        saturate([0], bits, signed)


def test_saturate_rejects_wrap_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        saturate([0], 8, True, Overflow.WRAP)
    with pytest.raises(ValueError, match="mode"):
        apply_overflow([0], 8, True, "CLAMP")


@settings(max_examples=250, deadline=None)
@given(
    data=st.data(),
    signed=st.booleans(),
    mode=st.sampled_from(list(Overflow)),
)
def test_apply_overflow_matches_python_ints(
    data: st.DataObject, signed: bool, mode: Overflow
) -> None:
    bits = data.draw(st.integers(1, 64 if signed else 63), label="bits")
    x = data.draw(st.integers(INT64_MIN, INT64_MAX), label="x")
    assert int(apply_overflow(x, bits, signed, mode)) == ref_overflow(x, bits, signed, mode)


# ---------------------------------------------------------------- requantize
def test_requantize_hand_computed() -> None:
    # multiplier / 2**shift = 2**30 / 2**31 = 0.5, so these are ties at 127.5, -128.5, -129.5.
    acc = [255, -257, -259, 253, 3, -3]
    assert requantize(acc, 2**30, 31).tolist() == [127, -128, -128, 126, 2, -2]
    assert requantize(acc, 2**30, 31, rounding=Rounding.RND).tolist() == [
        127,
        -128,
        -128,
        127,
        2,
        -1,
    ]
    assert requantize(acc, 2**30, 31, overflow=Overflow.WRAP).tolist() == [
        -128,
        -128,
        126,
        126,
        2,
        -2,
    ]
    assert requantize([100, -100], 2**30, 31, zero_point=-10).tolist() == [40, -60]
    assert requantize([600], 2**30, 31, bits=8, signed=False).tolist() == [255]
    assert requantize([INT32_MAX, INT32_MIN], 1, 0, bits=32).tolist() == [INT32_MAX, INT32_MIN]
    # Largest product: INT32_MIN * (2**31 - 1) still exact, shifted by 62.
    expected = ref_round(Fraction(INT32_MIN * INT32_MAX, 2**62), Rounding.RND_CONV)
    assert requantize([INT32_MIN], INT32_MAX, 62, bits=16).tolist() == [expected]


def test_requantize_per_channel() -> None:
    acc = np.array([[10, 10, 10], [-10, -10, -10]])
    multiplier = np.array([2**30, 2**29, 3 * 2**29])  # 0.5, 0.25, 0.75 with shift 31
    out = requantize(acc, multiplier, 31)
    assert out.tolist() == [[5, 2, 8], [-5, -2, -8]]  # 2.5 -> 2 and 7.5 -> 8 (ties to even)
    shifts = np.array([31, 30, 29])
    assert requantize(acc, 2**30, shifts).tolist() == [[5, 10, 20], [-5, -10, -20]]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"acc": [INT32_MAX + 1]}, "acc"),
        ({"acc": [INT32_MIN - 1]}, "acc"),
        ({"multiplier": 2**31}, "multiplier"),
        ({"multiplier": -1}, "multiplier"),
        ({"shift": 64}, "shift"),
        ({"shift": -1}, "shift"),
        ({"zero_point": 2**31}, "zero_point"),
        ({"bits": 65}, "bits"),
        ({"rounding": "NEAREST"}, "rounding"),
        ({"overflow": "CLIP"}, "overflow"),
    ],
)
def test_requantize_invalid_arguments(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"acc": [1], "multiplier": 1, "shift": 0, **kwargs}
    with pytest.raises(ValueError, match=field):
        requantize(**arguments)  # type: ignore[arg-type]


@settings(max_examples=250, deadline=None)
@given(
    acc=st.integers(INT32_MIN, INT32_MAX),
    multiplier=st.integers(0, INT32_MAX),
    shift=st.integers(0, 63),
    zero_point=st.integers(-128, 127),
    bits=st.integers(2, 32),
    signed=st.booleans(),
    rounding=st.sampled_from(list(Rounding)),
    overflow=st.sampled_from(list(Overflow)),
)
def test_requantize_matches_fraction(
    acc: int,
    multiplier: int,
    shift: int,
    zero_point: int,
    bits: int,
    signed: bool,
    rounding: Rounding,
    overflow: Overflow,
) -> None:
    scaled = ref_round(Fraction(acc * multiplier, 2**shift), rounding)
    expected = ref_overflow(scaled + zero_point, bits, signed, overflow)
    out = requantize(acc, multiplier, shift, zero_point, bits, signed, rounding, overflow)
    assert int(out) == expected


# ---------------------------------------------------------------- quantize_multiplier
def test_quantize_multiplier_hand_computed() -> None:
    assert quantize_multiplier(1.0) == (2**30, 30)
    assert quantize_multiplier(0.5) == (2**30, 31)
    assert quantize_multiplier(0.75) == (3 * 2**29, 31)
    assert quantize_multiplier(0.75, multiplier_bits=8) == (192, 8)
    assert quantize_multiplier(2.0**30) == (2**30, 0)
    # 1 - 2**-40 rounds up to 2**31 in 31 bits; it is renormalised to 2**30 with one less shift.
    assert quantize_multiplier(1 - 2**-40) == (2**30, 30)
    # Too small to normalise with shift <= 63: shift caps at 63.
    assert quantize_multiplier(2.0**-40) == (2**23, 63)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, 2.0**31, 2.0**31 - 0.25, 1e-30])
def test_quantize_multiplier_invalid_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        quantize_multiplier(scale)


@pytest.mark.parametrize("bits", [0, 32])
def test_quantize_multiplier_invalid_bits(bits: int) -> None:
    with pytest.raises(ValueError, match="multiplier_bits"):
        quantize_multiplier(0.5, bits)


@settings(max_examples=250, deadline=None)
@given(
    scale=st.floats(2.0**-32, 2.0**30, allow_nan=False, allow_infinity=False),
    multiplier_bits=st.integers(1, 31),
)
def test_quantize_multiplier_is_nearest_and_normalised(scale: float, multiplier_bits: int) -> None:
    if scale >= 2**multiplier_bits - 0.5:
        # Rounds to 2**multiplier_bits even with shift 0: not representable.
        with pytest.raises(ValueError, match="scale"):
            quantize_multiplier(scale, multiplier_bits)
        return
    multiplier, shift = quantize_multiplier(scale, multiplier_bits)
    exact = Fraction(scale)
    assert 0 <= shift <= 63
    assert 0 < multiplier < 2**multiplier_bits
    if shift < 63:
        assert multiplier >= 2 ** (multiplier_bits - 1)
    # Nearest at this shift: within half a step of the exact scale.
    assert abs(Fraction(multiplier, 2**shift) - exact) <= Fraction(1, 2 ** (shift + 1))
    # And no longer multiplier would do: one more bit of shift overflows the multiplier width.
    if shift < 63:
        assert ref_round(exact * 2 ** (shift + 1), Rounding.RND_CONV) >= 2**multiplier_bits
