"""include/tessera/requant.h element by element against tessera.models.rounding, at the edges."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from tessera.hls.csim import compile_cpp
from tessera.hls.generate import kernel_header_text
from tessera.models.rounding import Overflow, Rounding, requantize, shift_round

OUT_BITS = (4, 8, 16)

# Loops over the arrays Python passes; one extern "C" entry per template instance.
HARNESS = r"""
#include <cstdint>
#include "tessera/requant.h"

template <int OUT_BITS, ap_q_mode R, ap_o_mode O>
void requant_all(const int64_t* acc, const int64_t* mult, const int64_t* shift,
                 const int64_t* zero_point, int64_t* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = tessera::requantize<OUT_BITS, R, O>(
                     ap_int<32>(acc[i]), ap_uint<31>(mult[i]), ap_uint<6>(shift[i]),
                     ap_int<32>(zero_point[i])).to_int64();
}

template <int W, ap_q_mode R>
void shift_all(const int64_t* x, const int64_t* shift, int64_t* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = tessera::shift_round<R>(ap_int<W>(x[i]), unsigned(shift[i])).to_int64();
}

#define REQUANT(BITS, R, O)                                                                    \
    extern "C" void requant_##BITS##_##R##_##O(const int64_t* a, const int64_t* m,            \
                                              const int64_t* s, const int64_t* z, int64_t* o, \
                                              int64_t n) {                                     \
        requant_all<BITS, AP_##R, AP_##O>(a, m, s, z, o, n);                                   \
    }
#define ROUNDINGS(BITS, O)                                                                       \
    REQUANT(BITS, TRN, O) REQUANT(BITS, TRN_ZERO, O) REQUANT(BITS, RND, O)                       \
    REQUANT(BITS, RND_ZERO, O) REQUANT(BITS, RND_MIN_INF, O) REQUANT(BITS, RND_INF, O)           \
    REQUANT(BITS, RND_CONV, O)
#define MODES(BITS) \
    ROUNDINGS(BITS, WRAP) ROUNDINGS(BITS, SAT) ROUNDINGS(BITS, SAT_ZERO) ROUNDINGS(BITS, SAT_SYM)
MODES(4)
MODES(8)
MODES(16)

#define SHIFT(W, R)                                                                       \
    extern "C" void shift_##W##_##R(const int64_t* x, const int64_t* s, int64_t* o, int64_t n) { \
        shift_all<W, AP_##R>(x, s, o, n);                                                 \
    }
#define SHIFTS(W)                                                                          \
    SHIFT(W, TRN) SHIFT(W, TRN_ZERO) SHIFT(W, RND) SHIFT(W, RND_ZERO) SHIFT(W, RND_MIN_INF) \
    SHIFT(W, RND_INF) SHIFT(W, RND_CONV)
SHIFTS(40)
SHIFTS(64)
"""


@pytest.fixture(scope="module")
def harness() -> ctypes.CDLL:
    files = {
        "requant_harness.cpp": HARNESS,
        "include/tessera/requant.h": kernel_header_text("requant.h"),
    }
    build = compile_cpp(files, ["requant_harness.cpp"], name="test_requant_harness")
    return ctypes.CDLL(str(build.path))


def _call(function, *arrays: np.ndarray) -> np.ndarray:
    arrays = tuple(np.ascontiguousarray(a, dtype=np.int64) for a in arrays)
    out = np.zeros(len(arrays[0]), dtype=np.int64)
    pointers = [a.ctypes.data_as(ctypes.c_void_p) for a in (*arrays, out)]
    function(*pointers, ctypes.c_int64(len(out)))
    return out


def _edge_values(lo: int, hi: int, rng: np.random.Generator, count: int) -> np.ndarray:
    near = [lo, lo + 1, lo + 2, -1, 0, 1, 2, 3, hi - 1, hi]
    return np.concatenate([near, rng.integers(lo, hi, size=count, endpoint=True)])


def _requant_operands(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Accumulator, multiplier, shift and zero point: every shift with edge and random values,
    plus exact ties (acc * multiplier = odd * 2**(shift-1))."""
    acc = _edge_values(-(2**31), 2**31 - 1, rng, 40)
    mult = _edge_values(0, 2**31 - 1, rng, 10)
    mult = mult[mult >= 0]
    combos = np.array(
        [
            (a, m, s, z)
            for s in range(64)
            for a, m, z in zip(
                rng.choice(acc, 24),
                rng.choice(mult, 24),
                rng.choice([-(2**31), -(2**15), -3, 0, 5, 2**15 - 1, 2**31 - 1], 24),
                strict=True,
            )
        ],
        dtype=np.int64,
    )
    # Ties: products that are odd multiples of half an output step, both signs, odd and even
    # floors, small enough that the output does not saturate.
    shift = rng.integers(1, 30, size=400)
    odd = rng.integers(-200, 201, size=400) * 2 + 1
    acc_ties = odd << (shift - 1)
    ties = np.stack([acc_ties, np.ones(400), shift, rng.integers(-3, 4, size=400)], axis=1)
    ties = ties[np.abs(acc_ties) < 2**31]
    everything = np.concatenate([combos, ties.astype(np.int64)])
    return tuple(everything.T)


@pytest.mark.parametrize("out_bits", OUT_BITS)
@pytest.mark.parametrize("rounding", list(Rounding))
def test_requantize_matches_golden(harness, rounding, out_bits):
    rng = np.random.default_rng(out_bits * 10 + list(Rounding).index(rounding))
    acc, mult, shift, zero_point = _requant_operands(rng)
    for overflow in Overflow:
        function = getattr(harness, f"requant_{out_bits}_{rounding.value}_{overflow.value}")
        got = _call(function, acc, mult, shift, zero_point)
        want = requantize(
            acc, mult, shift, zero_point, out_bits, True, rounding=rounding, overflow=overflow
        )
        bad = np.flatnonzero(got != want)
        assert not bad.size, (
            f"{rounding}/{overflow}/{out_bits} bits: first mismatch at {bad[0]}: acc={acc[bad[0]]} "
            f"mult={mult[bad[0]]} shift={shift[bad[0]]} zp={zero_point[bad[0]]}: expected "
            f"{want[bad[0]]}, received {got[bad[0]]}"
        )


@pytest.mark.parametrize(("width", "rounding"), list(itertools.product((40, 64), Rounding)))
def test_shift_round_matches_golden(harness, width, rounding):
    """Every shift 0..70 (past the operand width, where the shifter clamps) on edge values."""
    rng = np.random.default_rng(width + list(Rounding).index(rounding))
    lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    values = _edge_values(lo, hi, rng, 30)
    x, s = (v.ravel() for v in np.meshgrid(values, np.arange(71)))
    got = _call(getattr(harness, f"shift_{width}_{rounding.value}"), x, s)
    want = shift_round(x, s, rounding)
    bad = np.flatnonzero(got != want)
    assert not bad.size, (
        f"{rounding} on {width} bits: x={x[bad[0]]} shift={s[bad[0]]}: expected {want[bad[0]]}, "
        f"received {got[bad[0]]}"
    )


def test_ties_are_exercised():
    """The operands hold many exact ties, where the rounding modes disagree."""
    acc, mult, shift, _ = _requant_operands(np.random.default_rng(0))
    product = acc * mult
    positive = shift > 0
    half = np.where(positive, np.int64(1) << np.maximum(shift - 1, 0), 0)
    remainder = product & ~(np.int64(-1) << shift)
    ties = positive & (remainder == half)
    assert ties.sum() > 300
    assert (product[ties] < 0).sum() > 100 and (product[ties] > 0).sum() > 100
