"""Epilogue and LinearUnit RTL on Icarus and Verilator (cocotb + cocotbext-axi), bit-exact vs the
golden ``epilogue(gemm(A, B))`` under idle cycles and back-pressure, with extreme values."""

from __future__ import annotations

import json

import pytest

from tessera.models.epilogue import EpilogueConfig
from tessera.models.gelu import GeluConfig
from tessera.models.gemm import GemmConfig
from tessera.rtl.linear import LinearConfigs, check_pair, generate_linear
from tessera.sim.epilogue import EpilogueCase, simulate_epilogue
from tessera.sim.linear import LinearCase, simulate_linear

GEMM = GemmConfig(rows=4, cols=4)
#: Every stage: saturating bias, per-column requant to int16, GELU + int8 requant, residual.
ALL_STAGES = EpilogueConfig(
    rows=3,
    cols=4,
    max_cols=24,
    bias_overflow="SAT",
    out_bits=16,
    gelu=GeluConfig(),
    residual=True,
    res_bits=12,
)
#: An attention output projection: wrapping bias, int16 requant and the residual add.
RESIDUAL = EpilogueConfig.for_gemm(GEMM, max_cols=40, out_bits=16, residual=True)
#: An MLP's first layer: int16 requant, GELU, int8 hidden requant.
FC1 = EpilogueConfig.for_gemm(GEMM, max_cols=40, out_bits=16, gelu=GeluConfig(), act_bits=8)


def _epilogue_cases(cfg: EpilogueConfig) -> list[EpilogueCase]:
    return [
        EpilogueCase(1, 1, seed=1, name="1x1"),
        EpilogueCase(2 * cfg.rows + 1, cfg.max_cols - 1, seed=2, idle=0.3, backpressure=0.4,
                     name="N not a multiple of cols, stalls"),
        EpilogueCase(cfg.rows + 2, cfg.max_cols, seed=3, data="extreme", idle=0.2,
                     backpressure=0.5, name="extremes (wrap/saturate, shifts 0 and 63)"),
        EpilogueCase(4 * cfg.rows, 2 * cfg.cols, seed=4, name="full rate"),
    ]  # fmt: skip


def _linear_cases(epi: EpilogueConfig) -> list[LinearCase]:
    return [
        LinearCase(1, 1, 1, seed=1, name="1x1x1"),
        LinearCase(2 * GEMM.rows + 1, GEMM.cols + 3, 17, seed=2, idle=0.3, backpressure=0.4,
                   name="N not a multiple of cols, stalls"),
        LinearCase(GEMM.rows + 1, epi.max_cols, 70, seed=3, data="extreme", idle=0.2,
                   backpressure=0.5, name="extremes"),
        LinearCase(17, 32, 32, seed=4, name="an M3ViT projection"),
    ]  # fmt: skip


def _assert_passed(results, cases) -> None:
    assert len(results) == len(cases)
    for res in results:
        assert res.passed, f"{res.simulator} {res.case}: {res.message}"


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_epilogue_bit_exact(sim: str) -> None:
    cases = _epilogue_cases(ALL_STAGES)
    results = simulate_epilogue(ALL_STAGES, cases, sim=sim)
    _assert_passed(results, cases)
    full = results[-1]
    beats = 4 * ALL_STAGES.rows * 2
    # One beat per cycle, plus the pipeline's fill.
    assert beats <= full.cycles <= beats + 12


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_linear_residual_bit_exact(sim: str) -> None:
    cases = _linear_cases(RESIDUAL)
    results = simulate_linear(GEMM, RESIDUAL, cases, sim=sim)
    _assert_passed(results, cases)
    # The epilogue adds only its pipeline latency to the GEMM's own run.
    last = results[-1]
    assert last.gemm_cycles >= 5 * 8 * 32  # 5 x 8 tiles of K = 32
    assert 0 <= last.cycles - last.gemm_cycles <= 12


@pytest.mark.parametrize("sim", ["icarus", pytest.param("verilator", marks=pytest.mark.slow)])
def test_linear_gelu_bit_exact(sim: str) -> None:
    cases = _linear_cases(FC1)
    _assert_passed(simulate_linear(GEMM, FC1, cases, sim=sim), cases)


def test_linear_configs_must_match(tmp_path) -> None:
    with pytest.raises(ValueError, match="cols"):
        check_pair(GEMM, EpilogueConfig(cols=8))
    with pytest.raises(ValueError, match="acc_bits"):
        check_pair(GemmConfig(acc_bits=24), EpilogueConfig())
    with pytest.raises(ValueError, match="dim_bits"):
        check_pair(GEMM, EpilogueConfig(dim_bits=8))
    pair = LinearConfigs(GEMM, RESIDUAL)
    assert LinearConfigs.from_dict(json.loads(json.dumps(pair.to_dict()))) == pair
    out = generate_linear(GEMM, RESIDUAL, tmp_path)
    assert "module linear_unit" in out["verilog"]
    streams = out["register_map"]["streams"]
    assert sorted(streams) == ["a", "b", "params", "residual", "y"]
    assert (tmp_path / "register_map.json").exists()
    with pytest.raises(ValueError, match="max_cols"):
        simulate_linear(GEMM, RESIDUAL, [LinearCase(2, 41, 3)], sim="icarus")
    with pytest.raises(ValueError, match="idle"):
        LinearCase(2, 2, 2, idle=1.0)
