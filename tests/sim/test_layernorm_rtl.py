"""LayerNorm RTL on Icarus and Verilator through cocotb + cocotbext-axi, bit-exact vs golden."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.models.layernorm import LayerNormConfig, layernorm
from tessera.rtl.layernorm import row_latency, rsqrt_latency
from tessera.sim.layernorm import LayerNormCase, simulate_layernorm
from tessera.sim.layernorm_testbench import _compare

CONFIGS = {
    "default": LayerNormConfig(),
    # Small odd row, narrow formats (outputs saturate at +-8), two Newton steps.
    "dim7": LayerNormConfig(
        dim=7,
        in_bits=12,
        in_frac=4,
        out_bits=10,
        out_frac=6,
        rsqrt_lut_bits=4,
        newton_steps=2,
        rsqrt_frac=18,
    ),
}


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_layernorm_bit_exact(sim, name):
    cfg = CONFIGS[name]
    cases = [
        LayerNormCase(4, seed=1, name="back-to-back"),
        LayerNormCase(3, seed=2, idle=0.3, backpressure=0.3, name="idle + back-pressure"),
        LayerNormCase(6, seed=3, data="extreme", idle=0.3, backpressure=0.3, name="extremes"),
        LayerNormCase(2, seed=4, data="extreme", backpressure=0.8, name="heavy back-pressure"),
    ]
    results = simulate_layernorm(cfg, cases, sim=sim)
    assert len(results) == len(cases)
    for res in results:
        assert res.passed, f"{res.case}: {res.message}"
        assert res.rows > 0 and res.cycles > 0

    clean = results[0]
    # A row is normalised only once it is complete: its first output follows its last input by
    # row_latency cycles (the testbench starts counting a cycle or two before the first beat).
    expected_latency = cfg.dim - 1 + row_latency(cfg)
    assert expected_latency <= clean.latency <= expected_latency + 3, clean.latency
    # Rows overlap: one element per cycle when rows are longer than the sequencer's latency.
    period = max(cfg.dim, rsqrt_latency(cfg) + 4)
    streaming = clean.cycles - clean.latency
    assert streaming <= (clean.rows - 1) * period + cfg.dim, (clean.cycles, clean.latency)
    if cfg.dim > rsqrt_latency(cfg) + 4:
        assert streaming == clean.rows * cfg.dim - 1


def test_cases_cover_the_extremes():
    cfg = LayerNormConfig(dim=16, out_bits=10, out_frac=6)  # outputs within +-8
    x, gamma, beta = LayerNormCase(12, seed=5, data="extreme").inputs(cfg)
    lo, hi = -(1 << 15), (1 << 15) - 1
    spread = x.max(axis=1) - x.min(axis=1)
    assert (spread == 0).sum() >= 2  # zero-variance rows
    assert any((row == lo).all() or (row == hi).all() for row in x)
    assert any((row == 0).sum() == cfg.dim - 1 for row in x)  # a lone outlier
    assert any(set(row.tolist()) == {lo, hi} for row in x)
    assert {gamma.min(), gamma.max()} == {-(1 << 15), (1 << 15) - 1}
    out = layernorm(x, gamma, beta, cfg)
    assert out.min() == -512 and out.max() == 511  # the extremes saturate the output
    xr, _, _ = LayerNormCase(4, seed=5).inputs(cfg)
    assert xr.shape == (4, cfg.dim) and xr.std(axis=1).min() > 0
    with pytest.raises(ValueError, match="rows"):
        LayerNormCase(0)
    with pytest.raises(ValueError, match="backpressure"):
        LayerNormCase(1, backpressure=1.0)
    with pytest.raises(ValueError, match="data"):
        LayerNormCase(1, data="ramp")


def test_scoreboard_names_first_mismatch():
    cfg = LayerNormConfig(dim=3)
    expected = np.array([[1, 2, 3], [4, 5, 6]])
    assert _compare([np.array([1, 2, 3]), np.array([4, 5, 6])], expected, cfg) is None
    bad = _compare([np.array([1, 2, 3]), np.array([4, 7, 6])], expected, cfg)
    assert (bad["row"], bad["column"], bad["expected"], bad["got"]) == (1, 1, 5, 7)
    short = _compare([np.array([1, 2])], expected, cfg)
    assert (short["row"], short["column"], short["expected"], short["got"]) == (0, 2, 3, None)
    assert "tlast" in short["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_random_soak(seed):
    """Random formats, row lengths, stalls and data on Verilator (run with -m slow)."""
    rng = np.random.default_rng(seed)
    in_bits = int(rng.integers(4, 17))
    out_bits = int(rng.integers(4, 17))
    rsqrt_frac = int(rng.integers(12, 21))
    cfg = LayerNormConfig(
        dim=int(rng.integers(1, 70)),
        in_bits=in_bits,
        in_frac=int(rng.integers(0, in_bits)),
        out_bits=out_bits,
        out_frac=int(rng.integers(0, out_bits)),
        param_bits=int(rng.integers(6, 17)),
        param_frac=int(rng.integers(0, 6)),
        eps=float(rng.choice([0.0, 1e-6, 1e-5, 1e-3])),
        rsqrt_lut_bits=int(rng.integers(1, 9)),
        newton_steps=int(rng.integers(0, 4)),
        rsqrt_frac=rsqrt_frac,
        norm_frac=int(rng.integers(8, rsqrt_frac + 1)),
    )
    cases = [
        LayerNormCase(
            int(rng.integers(1, 12)),
            seed=i,
            data="extreme" if rng.random() < 0.4 else "random",
            idle=float(rng.choice([0.0, 0.2, 0.6])),
            backpressure=float(rng.choice([0.0, 0.3, 0.8])),
        )
        for i in range(8)
    ]
    for res in simulate_layernorm(cfg, cases, sim="verilator"):
        assert res.passed, f"{cfg} {res.case}: {res.message}"
