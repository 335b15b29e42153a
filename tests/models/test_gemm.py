"""Golden GEMM model and the engine's stream layouts, against plain Python-int references."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.models.gemm import (
    GemmConfig,
    Requant,
    gemm,
    gemm_tiles,
    output_beats,
    pack_stream,
    stream_operands,
)
from tessera.models.rounding import Overflow, Rounding


def _round_half_away(q: Fraction) -> int:
    # Python-int reference of RND_INF (ties away from zero), independent of shift_round.
    floor = q.numerator // q.denominator
    rest = q - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and q >= 0):
        return floor + 1
    return floor


def _reference(a: np.ndarray, b: np.ndarray, rq: Requant | None, out_bits: int = 8) -> np.ndarray:
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            acc = sum(int(a[i, t]) * int(b[t, j]) for t in range(k))
            if rq is not None:
                y = _round_half_away(Fraction(acc * rq.multiplier, 2**rq.shift)) + rq.zero_point
                lo, hi = -(2 ** (out_bits - 1)), 2 ** (out_bits - 1) - 1
                acc = min(max(y, lo), hi)
            out[i, j] = acc
    return out


int8_matrix = st.integers(1, 9).flatmap(
    lambda k: st.tuples(
        st.integers(1, 9).flatmap(
            lambda m: st.lists(st.integers(-128, 127), min_size=m * k, max_size=m * k).map(
                lambda v: np.array(v, dtype=np.int8).reshape(m, k)
            )
        ),
        st.integers(1, 9).flatmap(
            lambda n: st.lists(st.integers(-128, 127), min_size=n * k, max_size=n * k).map(
                lambda v: np.array(v, dtype=np.int8).reshape(k, n)
            )
        ),
    )
)


@settings(max_examples=60, deadline=None)
@given(
    ops=int8_matrix,
    multiplier=st.integers(0, 2**31 - 1),
    shift=st.integers(0, 63),
    zero_point=st.integers(-200, 200),
    raw=st.booleans(),
)
def test_gemm_matches_python_int_reference(ops, multiplier, shift, zero_point, raw):
    a, b = ops
    cfg = GemmConfig(rows=2, cols=3, rounding=Rounding.RND_INF, overflow=Overflow.SAT)
    rq = None if raw else Requant(multiplier, shift, zero_point)
    np.testing.assert_array_equal(gemm(a, b, cfg, rq), _reference(a, b, rq))


def test_gemm_extremes_and_ties():
    cfg = GemmConfig()
    a = np.full((2, 300), -128, dtype=np.int8)
    b = np.full((300, 2), -128, dtype=np.int8)
    assert gemm(a, b, cfg)[0, 0] == 300 * 16384
    # acc = 3, scale 1/2: 1.5 -> 2 with ties away from zero; -1.5 -> -2.
    a = np.array([[3], [-3], [1], [-1]], dtype=np.int8)
    b = np.array([[1]], dtype=np.int8)
    half = Requant(1 << 30, 31)
    assert gemm(a, b, cfg, half).ravel().tolist() == [2, -2, 1, -1]
    conv = dataclasses.replace(cfg, rounding=Rounding.RND_CONV)
    assert gemm(a, b, conv, half).ravel().tolist() == [2, -2, 0, 0]
    # Saturation at the int8 edges, and SAT_SYM's symmetric floor.
    big = np.array([[127], [-128]], dtype=np.int8)
    ones = np.array([[127]], dtype=np.int8)
    assert gemm(big, ones, cfg, Requant(1, 0)).ravel().tolist() == [127, -128]
    sym = dataclasses.replace(cfg, overflow=Overflow.SAT_SYM)
    assert gemm(big, ones, sym, Requant(1, 0)).ravel().tolist() == [127, -127]


def test_accumulator_wraps_like_hardware():
    cfg = GemmConfig(acc_bits=16)
    a = np.full((1, 3), 127, dtype=np.int8)
    b = np.full((3, 1), 127, dtype=np.int8)
    total = 3 * 127 * 127  # 48387 > 2**15
    assert gemm(a, b, cfg)[0, 0] == total - 2**16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", 0),
        ("cols", 65),
        ("acc_bits", 33),
        ("out_bits", 1),
        ("dim_bits", 1),
        ("rounding", "NEAREST"),
        ("overflow", "CLAMP"),
        ("rows", 2.5),
        ("a_stream_bytes", 3),
        ("b_stream_bytes", 0),
    ],
)
def test_config_rejects_bad_fields(field, value):
    with pytest.raises(ValueError, match=field):
        GemmConfig(**{field: value})


def test_stream_widths_and_packing():
    cfg = GemmConfig(rows=4, cols=4, a_stream_bytes=2, b_stream_bytes=8)
    assert (cfg.a_beat_bytes, cfg.b_beat_bytes, cfg.beats_per_slice) == (2, 8, 2)
    assert GemmConfig(rows=8, cols=2).beats_per_slice == 1
    slices = np.arange(12, dtype=np.int8).reshape(3, 4)
    assert pack_stream(slices, 8) == bytes(range(12)) + bytes(4)
    assert pack_stream(slices, 2) == bytes(range(12))


def test_config_round_trip_and_names():
    cfg = GemmConfig(rows=8, cols=4, rounding=Rounding.RND_CONV)
    assert GemmConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.short_name.startswith("gemm_r8c4_")
    assert cfg.digest != dataclasses.replace(cfg, cols=8).digest
    with pytest.raises(ValueError, match="unknown"):
        GemmConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    ("m", "n", "k", "match"),
    [(0, 1, 1, "M must be >= 1"), (1, -2, 1, "N must be >= 1"), (1, 1, 2**16, "K=65536 exceeds")],
)
def test_shape_checks(m, n, k, match):
    with pytest.raises(ValueError, match=match):
        GemmConfig().check_shape(m, n, k)


def test_operand_checks():
    cfg = GemmConfig()
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), cfg)
    with pytest.raises(ValueError, match="outside int8"):
        gemm(np.full((1, 1), 300), np.ones((1, 1), np.int64), cfg)
    with pytest.raises(ValueError, match="integer"):
        gemm(np.ones((1, 1)), np.ones((1, 1)), cfg)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 11),
    n=st.integers(1, 11),
    k=st.integers(1, 5),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_stream_layout_reproduces_gemm(m, n, k, rows, cols, seed):
    """Accumulating the tile-ordered beats as the engine does gives A @ B in output order."""
    cfg = GemmConfig(rows=rows, cols=cols)
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    a_beats, b_beats = stream_operands(a, b, cfg)
    tm, tn = gemm_tiles(m, n, cfg)
    assert a_beats.shape == (tm * tn * k, rows) and b_beats.shape == (tm * tn * k, cols)
    # Independent model of the array: outer products summed over each tile's K beats.
    tiles = a_beats.astype(np.int64)[:, :, None] * b_beats.astype(np.int64)[:, None, :]
    sums = tiles.reshape(tm * tn, k, rows, cols).sum(axis=1)
    beats, valid = output_beats(a.astype(np.int64) @ b.astype(np.int64), cfg)
    emitted = [(t, r) for t in range(tm * tn) for r in range(rows) if (t // tn) * rows + r < m]
    assert len(emitted) == len(beats)
    for (t, r), got, keep in zip(emitted, beats, valid, strict=True):
        assert keep.sum() == min(cols, n - (t % tn) * cols)
        np.testing.assert_array_equal(got[keep], sums[t, r][keep])
    assert valid.sum() == m * n
