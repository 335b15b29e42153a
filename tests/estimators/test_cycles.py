"""The analytic TemporalGemm cycle model against cycles measured on the RTL (Verilator)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.estimators.cycles import gemm_cycles
from tessera.models.gemm import GemmConfig, Requant
from tessera.sim.gemm import GemmCase, simulate_gemm


@pytest.mark.parametrize(
    ("rows", "cols", "a_bytes", "b_bytes"), [(4, 4, None, None), (2, 8, None, None), (4, 2, 2, 8)]
)
def test_cycle_model_within_one_percent_of_rtl(rows, cols, a_bytes, b_bytes, tmp_path):
    cfg = GemmConfig(rows=rows, cols=cols, a_stream_bytes=a_bytes, b_stream_bytes=b_bytes)
    rng = np.random.default_rng(rows * 100 + cols)
    shapes = [tuple(int(v) for v in rng.integers(1, 40, size=3)) for _ in range(22)]
    shapes += [(1, 1, 1), (rows * 3, cols * 2, 1), (rows, cols, 2)]  # drain-bound corners
    cases = [
        GemmCase(m, n, k, requant=Requant(1 << 30, 36), seed=i)
        for i, (m, n, k) in enumerate(shapes)
    ]
    results = simulate_gemm(cfg, cases, sim="verilator", build_dir=tmp_path)
    errors = []
    for (m, n, k), res in zip(shapes, results, strict=True):
        assert res.passed, res.message
        predicted = gemm_cycles(m, n, k, cfg).cycles
        errors.append(abs(predicted - res.cycles) / res.cycles)
    assert max(errors) <= 0.01, f"worst relative error {max(errors):.4f}"


def test_cycle_model_parts():
    cfg = GemmConfig(rows=8, cols=8)
    est = gemm_cycles(256, 256, 256, cfg)
    assert est.compute_cycles == 32 * 32 * 256
    assert est.drain_stall_cycles == 0
    assert est.cycles == est.compute_cycles + est.tail_cycles
    assert est.utilization > 0.99
    # Each of the 1024 tiles streams K beats of 8 A bytes and 8 B bytes.
    assert est.operand_bytes == 1024 * 256 * 16
    assert est.result_bytes == 32 * 256 * 8 * 4
    # K = 1 is drain-bound: each tile waits for its predecessor's rows + 3 cycles.
    short = gemm_cycles(16, 8, 1, cfg)
    assert short.drain_stall_cycles == 1 * (8 + 3 - 1)
    with pytest.raises(ValueError, match="M must be >= 1"):
        gemm_cycles(0, 1, 1, cfg)
