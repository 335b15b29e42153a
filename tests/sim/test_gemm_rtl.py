"""TemporalGemm RTL on Icarus and Verilator through cocotb + cocotbext-axi, bit-exact vs golden."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.models.gemm import GemmConfig, Requant
from tessera.models.rounding import Overflow, Rounding
from tessera.sim.gemm import GemmCase, simulate_gemm

RQ = Requant(multiplier=1_518_500_250, shift=40, zero_point=-5)  # scale ~ 1.38e-3


def _cases(rows: int, cols: int) -> list[GemmCase]:
    return [
        GemmCase(1, 1, 1, seed=1, name="1x1x1"),
        GemmCase(rows + 1, cols + 2, 1, requant=RQ, seed=2, name="K=1"),
        GemmCase(
            2 * rows + 1,
            cols + 3,
            7,
            requant=RQ,
            seed=3,
            idle=0.3,
            backpressure=0.3,
            name="non-multiple, idle + back-pressure",
        ),
        GemmCase(
            rows + 3,
            2 * cols - 1,
            64,
            seed=4,
            data="extreme",
            backpressure=0.6,
            name="extremes raw",
        ),
        GemmCase(
            3 * rows,
            3 * cols,
            33,
            requant=Requant(1 << 30, 30),
            seed=5,
            data="extreme",
            idle=0.5,
            name="extremes saturating",
        ),
        GemmCase(2 * rows, 2 * cols, 2 * rows + 5, requant=RQ, seed=6, name="multiples"),
    ]


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (4, 4), (8, 8), (4, 8)])
def test_gemm_bit_exact(sim, rows, cols, tmp_path):
    cfg = GemmConfig(rows=rows, cols=cols)
    cases = _cases(rows, cols)
    results = simulate_gemm(cfg, cases, sim=sim, build_dir=tmp_path)
    assert len(results) == len(cases)
    for res in results:
        assert res.passed, f"{res.case}: {res.message}"
        assert res.cycles > 0


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_other_rounding_and_register_limits(sim, tmp_path):
    """Round-half-even with symmetric saturation, and the largest sizes a 6-bit register holds."""
    cfg = GemmConfig(
        rows=2, cols=2, dim_bits=6, rounding=Rounding.RND_CONV, overflow=Overflow.SAT_SYM
    )
    cases = [
        GemmCase(63, 3, 63, requant=Requant(1 << 30, 37), seed=7, data="extreme", name="max M, K"),
        GemmCase(
            3, 63, 2, requant=Requant(1 << 30, 31, 1), seed=8, backpressure=0.4, name="max N, ties"
        ),
    ]
    for res in simulate_gemm(cfg, cases, sim=sim, build_dir=tmp_path):
        assert res.passed, f"{res.case}: {res.message}"


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
@pytest.mark.parametrize(("a_bytes", "b_bytes"), [(2, 8), (8, 1)])
def test_stream_widths(sim, a_bytes, b_bytes, tmp_path):
    """Buses narrower and wider than a k-slice (gathered / split inside the engine)."""
    cfg = GemmConfig(rows=4, cols=4, a_stream_bytes=a_bytes, b_stream_bytes=b_bytes)
    cases = [
        GemmCase(1, 1, 1, seed=1),
        GemmCase(9, 6, 5, requant=RQ, seed=2, idle=0.4, backpressure=0.4),
        GemmCase(7, 9, 3, seed=3, data="extreme"),  # odd slice count: the last beat is padded
    ]
    for res in simulate_gemm(cfg, cases, sim=sim, build_dir=tmp_path):
        assert res.passed, f"{res.case}: {res.message}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_random_soak(seed, tmp_path):
    """Random array shapes, rounding modes, sizes, stalls and requantization (run with -m slow)."""
    rng = np.random.default_rng(seed)
    cfg = GemmConfig(
        rows=int(rng.integers(1, 9)),
        cols=int(rng.integers(1, 9)),
        rounding=list(Rounding)[int(rng.integers(len(Rounding)))],
        overflow=list(Overflow)[int(rng.integers(len(Overflow)))],
    )
    cases = []
    for i in range(12):
        requant = None
        if rng.random() < 0.7:
            requant = Requant(
                int(rng.integers(0, 2**31)), int(rng.integers(0, 64)), int(rng.integers(-128, 128))
            )
        cases.append(
            GemmCase(
                *(int(v) for v in rng.integers(1, 50, size=3)),
                requant=requant,
                seed=i,
                data="extreme" if rng.random() < 0.3 else "random",
                idle=float(rng.choice([0.0, 0.2, 0.6])),
                backpressure=float(rng.choice([0.0, 0.3, 0.8])),
            )
        )
    for res in simulate_gemm(cfg, cases, sim="verilator", build_dir=tmp_path):
        assert res.passed, f"{cfg} {res.case}: {res.message}"
