"""HLS GEMM kernel, C-simulated with g++ through ctypes, bit-exact against the golden model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tessera.hls.csim import CsimError, CsimLibrary, build_csim, csim_gemm, csim_library
from tessera.hls.gemm import gemm_stream_inputs
from tessera.models.gemm import GemmConfig, Requant, gemm, gemm_tiles, output_beats
from tessera.models.rounding import Overflow, Rounding
from tessera.sim.gemm import GemmCase

RQ = Requant(multiplier=1_518_500_250, shift=40, zero_point=-5)  # scale ~ 1.38e-3

#: Array shapes of the RTL tests, plus degenerate and odd ones.
ARRAY_SHAPES = [(1, 1), (2, 2), (4, 4), (8, 8), (4, 8), (3, 5)]
#: Every rounding x overflow mode on a small array with an odd column count.
MODE_CONFIGS = {
    (r, o): GemmConfig(rows=2, cols=3, rounding=r, overflow=o)
    for r, o in itertools.product(Rounding, Overflow)
}
#: Formats, register widths and bus widths away from the defaults.
SPECIAL_CONFIGS = {
    "dim_bits=6 RND_CONV SAT_SYM": GemmConfig(
        rows=2, cols=2, dim_bits=6, rounding=Rounding.RND_CONV, overflow=Overflow.SAT_SYM
    ),
    "acc_bits=16 out_bits=4 WRAP": GemmConfig(
        rows=3, cols=2, acc_bits=16, out_bits=4, overflow=Overflow.WRAP
    ),
    "acc_bits=20 out_bits=16": GemmConfig(rows=2, cols=4, acc_bits=20, out_bits=16),
    "a bus 2 B, b bus 8 B": GemmConfig(rows=4, cols=4, a_stream_bytes=2, b_stream_bytes=8),
    "a bus 8 B, b bus 1 B": GemmConfig(rows=4, cols=4, a_stream_bytes=8, b_stream_bytes=1),
    "a bus 1 B, b bus 12 B": GemmConfig(rows=3, cols=2, a_stream_bytes=1, b_stream_bytes=12),
}
ALL_CONFIGS = [
    *(GemmConfig(rows=r, cols=c) for r, c in ARRAY_SHAPES),
    *MODE_CONFIGS.values(),
    *SPECIAL_CONFIGS.values(),
]


@pytest.fixture(scope="module")
def gemm_library() -> CsimLibrary:
    """One C-sim library holding every config of ALL_CONFIGS."""
    return build_csim(ALL_CONFIGS)


def _rtl_cases(rows: int, cols: int) -> list[GemmCase]:
    """The cases of tests/sim/test_gemm_rtl.py (same seeds, so the same operands)."""
    return [
        GemmCase(1, 1, 1, seed=1, name="1x1x1"),
        GemmCase(rows + 1, cols + 2, 1, requant=RQ, seed=2, name="K=1"),
        GemmCase(2 * rows + 1, cols + 3, 7, requant=RQ, seed=3, name="non-multiple"),
        GemmCase(rows + 3, 2 * cols - 1, 64, seed=4, data="extreme", name="extremes raw"),
        GemmCase(
            3 * rows,
            3 * cols,
            33,
            requant=Requant(1 << 30, 30),
            seed=5,
            data="extreme",
            name="extremes saturating",
        ),
        GemmCase(2 * rows, 2 * cols, 2 * rows + 5, requant=RQ, seed=6, name="multiples"),
    ]


def _check(cfg: GemmConfig, a: np.ndarray, b: np.ndarray, requant: Requant | None, label: str):
    got = csim_gemm(cfg, a, b, requant)
    want = gemm(a, b, cfg, requant)
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    assert not bad.size, (
        f"{cfg.short_name} {label}: first mismatch at {tuple(bad[0])}: expected "
        f"{want[tuple(bad[0])]}, received {got[tuple(bad[0])]}"
    )


@pytest.mark.parametrize(("rows", "cols"), ARRAY_SHAPES)
def test_rtl_cases_bit_exact(gemm_library, rows, cols):
    cfg = GemmConfig(rows=rows, cols=cols)
    for case in _rtl_cases(rows, cols):
        a, b = case.operands()
        _check(cfg, a, b, case.requant, case.label)


@pytest.mark.parametrize(("rows", "cols"), ARRAY_SHAPES)
def test_random_shapes_and_edge_tiles(gemm_library, rows, cols):
    """Random M, N, K with partial edge tiles in both directions, raw and requantized."""
    cfg = GemmConfig(rows=rows, cols=cols)
    rng = np.random.default_rng(100 + 10 * rows + cols)
    edge_rows = edge_cols = 0
    for i in range(8):
        m, n, k = (int(v) for v in rng.integers(1, 30, size=3))
        edge_rows += m % rows != 0
        edge_cols += n % cols != 0
        a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
        requant = None if i % 3 == 0 else Requant(int(rng.integers(1, 2**31)), 20 + i, i - 4)
        _check(cfg, a, b, requant, f"{m}x{n}x{k}")
    if rows > 1 and cols > 1:
        assert edge_rows and edge_cols  # the random sizes did exercise partial tiles


def _mode_cases(cfg: GemmConfig) -> list[tuple[str, np.ndarray, np.ndarray, Requant | None]]:
    rng = np.random.default_rng(7)
    small_a = rng.integers(-6, 7, size=(9, 2), dtype=np.int8)
    small_b = rng.integers(-6, 7, size=(2, 11), dtype=np.int8)
    cases = [
        # |acc| <= 72 and scale 3/4: many exact ties of both signs, with odd and even floors.
        ("ties", small_a, small_b, Requant(3, 2, 0)),
        ("ties shifted by 5 bits", small_a, small_b, Requant(16 + 3, 5, -1)),
        ("shift 0", small_a, small_b, Requant(5, 0, 2)),
    ]
    for seed, (m, n, k, requant) in enumerate(
        [
            (5, 7, 9, RQ),
            (4, 6, 3, Requant(1 << 30, 26, 3)),  # scale 16: saturates on both sides
            (3, 5, 17, Requant(2**31 - 1, 63, 0)),  # largest multiplier, largest shift
            (6, 4, 8, Requant(1 << 30, 36, 2**15 - 1)),  # largest zero point
            (6, 4, 8, Requant(1 << 30, 36, -(2**15))),  # smallest zero point
        ]
    ):
        a, b = GemmCase(m, n, k, seed=seed, data="extreme" if seed % 2 else "random").operands()
        cases.append((f"{m}x{n}x{k} {requant}", a, b, requant))
    return cases


@pytest.mark.parametrize(
    ("rounding", "overflow"), list(MODE_CONFIGS), ids=[f"{r}-{o}" for r, o in MODE_CONFIGS]
)
def test_every_rounding_and_overflow_mode(gemm_library, rounding, overflow):
    cfg = MODE_CONFIGS[(rounding, overflow)]
    for label, a, b, requant in _mode_cases(cfg):
        _check(cfg, a, b, requant, label)


def test_mode_cases_tell_every_mode_apart():
    """The vectors above give a different golden result for every rounding and every overflow
    mode, so a kernel that confused two modes would fail the test above."""
    cases = {label: (a, b, rq) for label, a, b, rq in _mode_cases(GemmConfig())}
    a, b, rq = cases["ties"]
    by_rounding = {gemm(a, b, GemmConfig(rounding=r), rq).tobytes() for r in Rounding}
    assert len(by_rounding) == len(Rounding)
    a, b, rq = cases[f"4x6x3 {Requant(1 << 30, 26, 3)}"]
    by_overflow = {gemm(a, b, GemmConfig(overflow=o), rq).tobytes() for o in Overflow}
    assert len(by_overflow) == len(Overflow)


@pytest.mark.parametrize("name", list(SPECIAL_CONFIGS))
def test_formats_register_and_bus_widths(gemm_library, name):
    cfg = SPECIAL_CONFIGS[name]
    cases = [
        GemmCase(1, 1, 1, seed=1),
        GemmCase(9, 6, 5, requant=RQ, seed=2),
        GemmCase(7, 9, 3, seed=3, data="extreme"),  # odd slice count: the last beat is padded
        GemmCase(5, 4, 40, requant=Requant(1 << 30, 33, 1), seed=4, data="extreme"),
        GemmCase(min(cfg.max_dim, 70), 3, min(cfg.max_dim, 70), seed=5, data="extreme"),
    ]
    for case in cases:
        a, b = case.operands()
        _check(cfg, a, b, case.requant, case.label)


def test_accumulators_wrap_at_acc_bits(gemm_library):
    cfg = SPECIAL_CONFIGS["acc_bits=16 out_bits=4 WRAP"]
    a, b = GemmCase(5, 4, 64, seed=9, data="extreme").operands()
    exact = a.astype(np.int64) @ b.astype(np.int64)
    raw = csim_gemm(cfg, a, b)
    assert np.any(exact != raw), "the operands must overflow 16-bit accumulators"
    np.testing.assert_array_equal(raw, gemm(a, b, cfg))
    assert raw.min() >= -(2**15) and raw.max() < 2**15


def test_largest_register_values(gemm_library):
    """M = K = 2**dim_bits - 1 (the RTL test's 'max M, K' case)."""
    cfg = SPECIAL_CONFIGS["dim_bits=6 RND_CONV SAT_SYM"]
    for case in [
        GemmCase(63, 3, 63, requant=Requant(1 << 30, 37), seed=7, data="extreme"),
        GemmCase(3, 63, 2, requant=Requant(1 << 30, 31, 1), seed=8),
    ]:
        a, b = case.operands()
        _check(cfg, a, b, case.requant, case.label)


def test_c_stream_matches_the_rtl_protocol(gemm_library):
    """Beats, keep and last of the C stream are exactly models.gemm.output_beats."""
    cfg = GemmConfig(rows=4, cols=4)
    a, b = GemmCase(10, 7, 5, seed=11).operands()
    inputs, scalars = gemm_stream_inputs(cfg, a, b, RQ)
    beats, valid = output_beats(gemm(a, b, cfg, RQ), cfg)
    c = gemm_library.run(cfg, inputs, scalars, {"c": len(beats)})["c"]
    np.testing.assert_array_equal(c.values, beats)
    np.testing.assert_array_equal(c.valid, valid)
    assert c.last.tolist() == [False] * (len(beats) - 1) + [True]


def test_kernel_reads_each_input_exactly(gemm_library):
    cfg = GemmConfig(rows=4, cols=4)
    a, b = GemmCase(5, 6, 3, seed=12).operands()
    inputs, scalars = gemm_stream_inputs(cfg, a, b, None)
    beats = gemm_tiles(5, 6, cfg)[1] * 5
    longer = dict(inputs, a=np.concatenate([inputs["a"], inputs["a"][:1]]))
    with pytest.raises(CsimError, match=r"stream a: the kernel read 12 of its 13 beats"):
        gemm_library.run(cfg, longer, scalars, {"c": beats})
    shorter = dict(inputs, b=inputs["b"][:-1])
    with pytest.raises(CsimError, match=r"stream b: the kernel read past its 11 beats"):
        gemm_library.run(cfg, shorter, scalars, {"c": beats})
    with pytest.raises(CsimError, match=r"stream c: 10 beats, more than the 9 expected"):
        gemm_library.run(cfg, inputs, scalars, {"c": beats - 1})


def test_zero_size_runs_nothing(gemm_library):
    """Like the RTL (which flags ERROR), a zero M, N or K reads and writes no beat."""
    cfg = GemmConfig(rows=4, cols=4)
    empty = {"a": np.zeros((0, 4), np.uint8), "b": np.zeros((0, 4), np.uint8)}
    for m, n, k in [(0, 3, 3), (3, 0, 3), (3, 3, 0)]:
        scalars = dict(m=m, n=n, k=k, raw=1, multiplier=0, shift=0, zero_point=0)
        assert len(gemm_library.run(cfg, empty, scalars, {"c": 4})["c"].values) == 0


def test_library_is_reused_for_its_configs(gemm_library):
    cfg = MODE_CONFIGS[(Rounding.TRN, Overflow.WRAP)]
    assert csim_library(cfg) is gemm_library
    with pytest.raises(KeyError, match="not in the C-sim library"):
        gemm_library.design(GemmConfig(rows=7, cols=7))


def test_bad_inputs_raise_value_error(gemm_library):
    cfg = GemmConfig(rows=4, cols=4)
    a = np.zeros((3, 4), np.int8)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        csim_gemm(cfg, a, np.zeros((5, 2), np.int8))
    with pytest.raises(ValueError, match="outside int8"):
        csim_gemm(cfg, a, np.full((4, 2), 200, np.int16))
    with pytest.raises(ValueError, match="must be 2-D"):
        csim_gemm(cfg, a.ravel(), np.zeros((4, 2), np.int8))
    small = SPECIAL_CONFIGS["dim_bits=6 RND_CONV SAT_SYM"]
    with pytest.raises(ValueError, match="exceeds the 6-bit size register"):
        csim_gemm(small, np.zeros((64, 1), np.int8), np.zeros((1, 1), np.int8))
    with pytest.raises(ValueError, match="requant must be a Requant"):
        csim_gemm(cfg, a, np.zeros((4, 2), np.int8), (1, 2, 3))
    with pytest.raises(ValueError, match="cfg must be a GemmConfig"):
        csim_gemm("gemm", a, np.zeros((4, 2), np.int8))
    inputs, scalars = gemm_stream_inputs(cfg, a, np.zeros((4, 2), np.int8))
    with pytest.raises(ValueError, match=r"shift=64 is outside its range \[0, 63\]"):
        gemm_library.run(cfg, inputs, dict(scalars, shift=64), {"c": 3})
    with pytest.raises(ValueError, match="run-time argument 'k' is missing"):
        gemm_library.run(cfg, inputs, {"m": 3, "n": 2}, {"c": 3})
    with pytest.raises(ValueError, match="not whole 4-byte beats"):
        gemm_library.run(cfg, dict(inputs, a=np.zeros(6, np.uint8)), scalars, {"c": 3})
