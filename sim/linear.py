"""Run the ``LinearUnit`` RTL (GEMM + epilogue) under cocotb on Icarus Verilog or Verilator.

:func:`simulate_linear` generates the unit's Verilog from its two configs, computes every case's
golden output as ``epilogue(gemm(A, B), params, residual)`` (:func:`tessera.models.gemm.gemm` in
raw mode, then :func:`tessera.models.epilogue.epilogue`), runs
:mod:`tessera.sim.linear_testbench` through :func:`tessera.sim.harness.run_cases` and returns one
:class:`LinearSimResult` per case.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.epilogue import EpilogueConfig, EpilogueParams, epilogue
from tessera.models.gemm import GemmConfig, gemm, stream_operands
from tessera.rtl.linear import TOP_NAME, LinearConfigs, generate_linear
from tessera.sim.epilogue import (
    Data,
    check_case,
    params_arrays,
    random_params,
    random_residual,
)
from tessera.sim.harness import SimResult, simulate_cases

__all__ = ["LinearCase", "LinearSimResult", "simulate_linear"]

TESTBENCH_MODULE = "tessera.sim.linear_testbench"


@dataclass(frozen=True)
class LinearCase:
    """One linear layer run on the unit: ``y = epilogue(A @ B)``.

    Parameters
    ----------
    m, n, k : int
        Problem size (N at most the epilogue's ``max_cols``).
    seed : int
        Seeds the operands, the parameters and the idle / back-pressure patterns.
    data : {"random", "extreme"}
        ``"random"``: uniform int8 operands and :func:`tessera.sim.epilogue.random_params`.
        ``"extreme"``: operands of only -128 and 127 and the extreme parameters (biases at the
        int32 ends, shifts 0 and 63...).
    idle : float
        Probability that each input source inserts an idle cycle.
    backpressure : float
        Probability that the output sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to ``MxNxK data``.
    """

    m: int
    n: int
    k: int
    seed: int = 0
    data: Data = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        check_case(self)

    @property
    def label(self) -> str:
        return self.name or f"{self.m}x{self.n}x{self.k} {self.data}"

    def inputs(
        self, epi: EpilogueConfig
    ) -> tuple[np.ndarray, np.ndarray, EpilogueParams, np.ndarray | None]:
        """A (M, K), B (K, N), the parameters and the residual (or None) of the case."""
        rng = np.random.default_rng(self.seed)
        if self.data == "extreme":
            a = rng.choice(np.array([-128, 127]), size=(self.m, self.k))
            b = rng.choice(np.array([-128, 127]), size=(self.k, self.n))
        else:
            a = rng.integers(-128, 128, size=(self.m, self.k))
            b = rng.integers(-128, 128, size=(self.k, self.n))
        params = random_params(epi, self.n, rng, self.data)
        residual = random_residual(epi, self.m, self.n, rng, self.data)
        return a.astype(np.int8), b.astype(np.int8), params, residual


@dataclass(frozen=True)
class LinearSimResult(SimResult):
    """:class:`SimResult` of a linear case, with the GEMM's own cycle count.

    Attributes
    ----------
    gemm_cycles : int
        The GEMM's ``CYCLES`` register: start to its last C beat.
    """

    gemm_cycles: int = 0


def linear_case_arrays(
    a: np.ndarray,
    b: np.ndarray,
    params: EpilogueParams,
    residual: np.ndarray | None,
    expected: np.ndarray,
    gemm_cfg: GemmConfig,
) -> dict[str, np.ndarray]:
    """The ``.npz`` arrays of one linear run, as the testbench reads them."""
    a_beats, b_beats = stream_operands(a, b, gemm_cfg)
    arrays = {"a_beats": a_beats, "b_beats": b_beats, "expected": expected}
    arrays.update(params_arrays(params))
    if residual is not None:
        arrays["residual"] = residual
    return arrays


def simulate_linear(
    gemm_cfg: GemmConfig,
    epi: EpilogueConfig,
    cases: Sequence[LinearCase],
    *,
    sim: Literal["icarus", "verilator"] = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[LinearSimResult]:
    """Run linear cases on the RTL of ``LinearUnit(gemm_cfg, epi)``, bit-exactly checked.

    Parameters
    ----------
    gemm_cfg, epi : GemmConfig, EpilogueConfig
        The unit to generate and simulate.
    cases : sequence of LinearCase
        Run in order on one simulator process; a failing case stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<LinearConfigs.short_name>/<sim>``.
    waves : bool
        Dump waveforms; the path is in each result.

    Returns
    -------
    list of LinearSimResult
        One per case that ran; ``cycles`` counts from the start write to the last ``y`` beat.

    Raises
    ------
    ValueError
        Unknown simulator, no cases, mismatched configs or a case the unit cannot run.
    SimulationError
        The build or the simulator failed before producing results.
    """
    pair = LinearConfigs(gemm_cfg, epi)
    for case in cases:
        gemm_cfg.check_shape(case.m, case.n, case.k)
        epi.check_shape(case.m, case.n)

    def write_case(case: LinearCase, path: Path) -> dict[str, Any]:
        a, b, params, residual = case.inputs(epi)
        expected = epilogue(gemm(a, b, gemm_cfg), params, epi, residual)
        np.savez(path, **linear_case_arrays(a, b, params, residual, expected, gemm_cfg))
        return {
            "name": case.label,
            "m": case.m,
            "n": case.n,
            "k": case.k,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
        }

    pairs = simulate_cases(
        pair,
        cases,
        write_case,
        verilog=lambda: generate_linear(gemm_cfg, epi)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [
        LinearSimResult(
            **dataclasses.asdict(result),
            gemm_cycles=res.get("gemm_cycles", 0),
        )
        for case, (result, res) in zip(cases, pairs, strict=False)
    ]
