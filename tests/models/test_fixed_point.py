"""Tests of tessera.models.fixed_point against hand-computed values and Fraction references."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_math import TIE_RESULTS, ref_overflow, ref_round

from tessera.models.fixed_point import (
    FixedType,
    add,
    add_type,
    mul,
    mul_type,
    sub,
    sub_type,
)
from tessera.models.rounding import Overflow, Rounding

HALF = Fraction(1, 2)


def ref_convert(value: Fraction, dst: FixedType) -> int:
    """Raw value of ``value`` in ``dst``: round on the exact value, then handle overflow."""
    scaled = value * Fraction(2) ** dst.frac_bits
    return ref_overflow(ref_round(scaled, dst.rounding), dst.width, dst.signed, dst.overflow)


def real(raw: int, fixed_type: FixedType) -> Fraction:
    """Exact real value of a raw integer."""
    return Fraction(int(raw)) * Fraction(2) ** -fixed_type.frac_bits


@st.composite
def fixed_types(draw: st.DrawFn, max_width: int = 64, int_margin: int = 20) -> FixedType:
    """Any valid FixedType up to ``max_width`` bits, with any modes."""
    signed = draw(st.booleans())
    width = draw(st.integers(1, min(max_width, 64 if signed else 63)))
    int_bits = draw(st.integers(-int_margin, width + int_margin))
    rounding = draw(st.sampled_from(list(Rounding)))
    overflow = draw(st.sampled_from(list(Overflow)))
    return FixedType(width, int_bits, signed, rounding, overflow)


def raws(fixed_type: FixedType) -> st.SearchStrategy[int]:
    """Raw values of ``fixed_type``."""
    return st.integers(fixed_type.raw_min, fixed_type.raw_max)


# ---------------------------------------------------------------- the type itself
def test_properties_and_str() -> None:
    t = FixedType(8, 3)
    assert (t.frac_bits, t.lsb, t.raw_min, t.raw_max) == (5, 1 / 32, -128, 127)
    assert (t.min_value, t.max_value) == (-4.0, 3.96875)
    assert str(t) == "ap_fixed<8,3,AP_TRN,AP_WRAP>"
    u = FixedType(16, 6, signed=False, rounding=Rounding.RND_CONV, overflow=Overflow.SAT)
    assert str(u) == "ap_ufixed<16,6,AP_RND_CONV,AP_SAT>"
    assert (u.raw_min, u.raw_max, u.min_value, u.max_value) == (0, 65535, 0.0, 64 - 2**-10)
    wide = FixedType(4, 8)  # int_bits > width: lsb 16
    assert (wide.frac_bits, wide.lsb, wide.max_value) == (-4, 16.0, 112.0)
    tiny = FixedType(4, -2)  # int_bits < 0: values below 1/8
    assert (tiny.frac_bits, tiny.min_value, tiny.max_value) == (6, -0.125, 7 / 64)


def test_modes_accept_strings_and_compare_equal() -> None:
    t = FixedType(16, 6, rounding="RND_CONV", overflow="SAT")  # type: ignore[arg-type]
    assert t == FixedType(16, 6, True, Rounding.RND_CONV, Overflow.SAT)
    assert hash(t) == hash(FixedType(16, 6, True, Rounding.RND_CONV, Overflow.SAT))
    assert dataclasses.replace(t, width=12).frac_bits == 6


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 0, "int_bits": 0}, "width"),
        ({"width": 65, "int_bits": 1}, "width"),
        ({"width": 64, "int_bits": 1, "signed": False}, "width"),
        ({"width": 8.0, "int_bits": 1}, "width"),
        ({"width": 8, "int_bits": 257}, "int_bits"),
        ({"width": 8, "int_bits": -257}, "int_bits"),
        ({"width": 8, "int_bits": True}, "int_bits"),
        ({"width": 8, "int_bits": 1, "signed": 1}, "signed"),
        ({"width": 8, "int_bits": 1, "rounding": "ROUND"}, "rounding"),
        ({"width": 8, "int_bits": 1, "overflow": "CLIP"}, "overflow"),
    ],
)
def test_invalid_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FixedType(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- quantize, hand-computed
TIES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]


@pytest.mark.parametrize("mode", list(Rounding))
def test_quantize_ties(mode: Rounding) -> None:
    assert FixedType(8, 8, rounding=mode).quantize(TIES).tolist() == TIE_RESULTS[mode]
    # Same ties one lsb below: ap_fixed<8,3> has lsb 1/32.
    scaled = [x / 32 for x in TIES]
    assert FixedType(8, 3, rounding=mode).quantize(scaled).tolist() == TIE_RESULTS[mode]


EDGES = [-129.0, -128.5, -128.0, 127.0, 127.5, 128.0]
EDGE_CASES = [
    (Rounding.RND_CONV, Overflow.SAT, [-128, -128, -128, 127, 127, 127]),
    (Rounding.RND_CONV, Overflow.WRAP, [127, -128, -128, 127, -128, -128]),
    (Rounding.RND_CONV, Overflow.SAT_ZERO, [0, -128, -128, 127, 0, 0]),
    (Rounding.RND_CONV, Overflow.SAT_SYM, [-127, -127, -127, 127, 127, 127]),
    (Rounding.TRN, Overflow.SAT, [-128, -128, -128, 127, 127, 127]),
    (Rounding.TRN, Overflow.WRAP, [127, 127, -128, 127, 127, -128]),
    (Rounding.RND, Overflow.WRAP, [127, -128, -128, 127, -128, -128]),
]


@pytest.mark.parametrize(("rounding", "overflow", "expected"), EDGE_CASES)
def test_quantize_8_bit_edges(rounding: Rounding, overflow: Overflow, expected: list[int]) -> None:
    assert FixedType(8, 8, True, rounding, overflow).quantize(EDGES).tolist() == expected


def test_quantize_is_exact_for_float32_huge_tiny_and_int_inputs() -> None:
    t = FixedType(32, 2, rounding=Rounding.RND_CONV, overflow=Overflow.SAT)
    x32 = np.float32(0.1)
    assert int(t.quantize(x32)) == ref_convert(Fraction(float(x32)), t)
    assert t.quantize([1e300, -1e300, 5e-324, -5e-324]).tolist() == [2**31 - 1, -(2**31), 0, 0]
    wrapped = FixedType(8, 8)  # TRN, WRAP: 2**70 + 3 wraps to 3 only if exact (float64 cannot)
    assert wrapped.quantize(np.array([2**62 + 3], dtype=np.int64)).tolist() == [3]
    assert wrapped.quantize([2.0**70]).tolist() == [0]
    full = FixedType(64, 64)
    assert full.quantize(np.array([2**63 - 1, -(2**63)])).tolist() == [2**63 - 1, -(2**63)]


def test_quantize_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        FixedType(8, 3).quantize([0.0, math.nan])
    with pytest.raises(ValueError, match="finite"):
        FixedType(8, 3).quantize([math.inf])


@settings(max_examples=250, deadline=None)
@given(data=st.data(), fixed_type=fixed_types())
def test_quantize_matches_fraction(data: st.DataObject, fixed_type: FixedType) -> None:
    near = 2.0 ** (fixed_type.int_bits + 1)
    x = data.draw(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.floats(-near, near),
            st.integers(fixed_type.raw_min, fixed_type.raw_max).map(
                lambda raw: float(raw) * fixed_type.lsb + fixed_type.lsb / 2
            ),
        ),
        label="x",
    )
    assert int(fixed_type.quantize(x)) == ref_convert(Fraction(x), fixed_type)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), fixed_type=fixed_types(max_width=24, int_margin=4))
def test_quantize_vector_matches_fraction(data: st.DataObject, fixed_type: FixedType) -> None:
    bound = 2.0 ** (fixed_type.int_bits + 1)
    xs = data.draw(st.lists(st.floats(-bound, bound), min_size=1, max_size=16), label="xs")
    expected = [ref_convert(Fraction(x), fixed_type) for x in xs]
    assert fixed_type.quantize(np.array(xs)).tolist() == expected


# ---------------------------------------------------------------- to_float and cast
@settings(max_examples=150, deadline=None)
@given(data=st.data(), fixed_type=fixed_types(max_width=53))
def test_to_float_is_exact_up_to_53_bits(data: st.DataObject, fixed_type: FixedType) -> None:
    raw = data.draw(raws(fixed_type), label="raw")
    assert Fraction(float(fixed_type.to_float(raw))) == real(raw, fixed_type)
    # And quantize undoes it exactly (except that SAT_SYM never returns the most negative code).
    expected = ref_overflow(raw, fixed_type.width, fixed_type.signed, fixed_type.overflow)
    assert int(fixed_type.quantize(fixed_type.to_float(raw))) == expected


def test_to_float_and_cast_reject_out_of_range_raw() -> None:
    t = FixedType(8, 3)
    with pytest.raises(ValueError, match="raw"):
        t.to_float([128])
    with pytest.raises(ValueError, match="raw"):
        FixedType(16, 8).cast([-129], t)


def test_cast_hand_computed() -> None:
    src = FixedType(16, 0)  # lsb 2**-16
    dst = FixedType(16, 6, rounding=Rounding.RND)  # lsb 2**-10
    assert dst.cast([100, -100, 32, -32, 32767], src).tolist() == [2, -2, 1, 0, 512]
    narrow = FixedType(4, 4, overflow=Overflow.SAT)
    assert narrow.cast([100, -100, 7], FixedType(8, 8)).tolist() == [7, -8, 7]
    widen = FixedType(64, 8, overflow=Overflow.SAT)  # 56 fractional bits
    assert widen.cast([-128, 127], FixedType(8, 8)).tolist() == [-(2**63), 127 * 2**56]
    wrap_big = FixedType(64, 1)  # 63 fractional bits: 4 * 2**63 wraps to 0, 1 * 2**63 to -2**63
    assert wrap_big.cast([4, 1, -1], FixedType(8, 8)).tolist() == [0, -(2**63), -(2**63)]


@settings(max_examples=250, deadline=None)
@given(data=st.data(), src=fixed_types(), dst=fixed_types())
def test_cast_matches_fraction(data: st.DataObject, src: FixedType, dst: FixedType) -> None:
    raw = data.draw(raws(src), label="raw")
    assert int(dst.cast(raw, src)) == ref_convert(real(raw, src), dst)


# ---------------------------------------------------------------- arithmetic
def test_result_types_hand_computed() -> None:
    assert add_type(FixedType(8, 3), FixedType(10, 6)) == FixedType(12, 7)
    # An unsigned operand next to a signed one needs a sign bit: ap_fixed<10,10>.
    assert add_type(FixedType(8, 8, signed=False), FixedType(8, 8)) == FixedType(10, 10)
    assert add_type(FixedType(8, 8, False), FixedType(8, 8, False)) == FixedType(9, 9, False)
    assert sub_type(FixedType(8, 8, False), FixedType(8, 8, False)) == FixedType(9, 9, True)
    assert mul_type(FixedType(8, 3), FixedType(6, 2, signed=False)) == FixedType(14, 5)
    assert mul_type(FixedType(8, 3, False), FixedType(6, 2, False)) == FixedType(14, 5, False)
    # Result types never round or overflow, so they keep the default modes.
    a = FixedType(8, 3, rounding=Rounding.RND, overflow=Overflow.SAT)
    assert mul_type(a, a) == FixedType(16, 6)


def test_arithmetic_hand_computed() -> None:
    a_type, b_type = FixedType(8, 3), FixedType(10, 6)  # lsb 1/32 and 1/16
    raw, t = add([-128, 127], a_type, [5, -512], b_type)  # -4 + 5/16, 127/32 - 32
    assert t == FixedType(12, 7)
    assert raw.tolist() == [-128 + 10, 127 - 1024]
    raw, t = mul([-128], a_type, [-512], b_type)  # -4 * -32 = 128
    assert (raw.tolist(), t) == ([65536], FixedType(18, 9))
    raw, t = sub([0], FixedType(4, 4, False), [15], FixedType(4, 4, False))
    assert (raw.tolist(), t) == ([-15], FixedType(5, 5))


def test_arithmetic_too_wide_raises() -> None:
    with pytest.raises(ValueError, match="width"):
        mul_type(FixedType(40, 10), FixedType(40, 10))
    with pytest.raises(ValueError, match="width"):
        add_type(FixedType(63, 63, False), FixedType(8, 8))
    with pytest.raises(ValueError, match="a_raw"):
        add([256], FixedType(8, 8), [0], FixedType(8, 8))


def ref_add_type(a: FixedType, b: FixedType, signed: bool) -> tuple[int, int, bool]:
    """``(width, int_bits, signed)`` of ap_fixed's plus/minus type."""
    a_int = a.int_bits + (1 if b.signed and not a.signed else 0)
    b_int = b.int_bits + (1 if a.signed and not b.signed else 0)
    int_bits = max(a_int, b_int) + 1
    return int_bits + max(a.frac_bits, b.frac_bits), int_bits, signed


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    a_type=fixed_types(max_width=32, int_margin=8),
    b_type=fixed_types(max_width=32, int_margin=8),
    operation=st.sampled_from(["add", "sub", "mul"]),
)
def test_arithmetic_matches_fraction(
    data: st.DataObject, a_type: FixedType, b_type: FixedType, operation: str
) -> None:
    either_signed = a_type.signed or b_type.signed
    if operation == "mul":
        expected = (a_type.width + b_type.width, a_type.int_bits + b_type.int_bits, either_signed)
    else:
        expected = ref_add_type(a_type, b_type, either_signed or operation == "sub")
    function = {"add": add, "sub": sub, "mul": mul}[operation]
    if expected[0] > (64 if expected[2] else 63):
        with pytest.raises(ValueError, match="width"):
            function(0, a_type, 0, b_type)
        return
    a_raw = data.draw(raws(a_type), label="a_raw")
    b_raw = data.draw(raws(b_type), label="b_raw")
    raw, result_type = function(a_raw, a_type, b_raw, b_type)
    assert (result_type.width, result_type.int_bits, result_type.signed) == expected
    a, b = real(a_raw, a_type), real(b_raw, b_type)
    exact = {"add": a + b, "sub": a - b, "mul": a * b}[operation]
    assert real(int(raw), result_type) == exact
    assert result_type.raw_min <= int(raw) <= result_type.raw_max
