"""Run GEMM cases on the ``TemporalGemm`` RTL with cocotb (Icarus Verilog or Verilator).

:func:`simulate_gemm` generates the engine's Verilog from its config, builds it once per
(config, simulator) in a build directory, computes every case's golden output with
:func:`tessera.models.gemm.gemm`, runs :mod:`tessera.sim.gemm_testbench` and returns one
:class:`GemmSimResult` per case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.gemm import GemmConfig, Requant, gemm, output_beats, stream_operands
from tessera.rtl.temporal_gemm import TOP_NAME, generate_gemm
from tessera.sim.harness import run_cases

__all__ = ["GemmCase", "GemmSimResult", "simulate_gemm"]

Simulator = Literal["icarus", "verilator"]
TESTBENCH_MODULE = "tessera.sim.gemm_testbench"


@dataclass(frozen=True)
class GemmCase:
    """One GEMM to run on the engine.

    Parameters
    ----------
    m, n, k : int
        Problem size.
    requant : Requant, optional
        Requantization parameters; ``None`` runs in raw-accumulator mode.
    seed : int
        Seeds the operands (and the idle / back-pressure patterns).
    data : {"random", "extreme"}
        Uniform int8 operands, or only -128 and 127 (largest magnitudes, sign mix).
    idle : float
        Probability that an operand source inserts an idle cycle.
    backpressure : float
        Probability that the C sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to ``MxNxK``.
    """

    m: int
    n: int
    k: int
    requant: Requant | None = None
    seed: int = 0
    data: Literal["random", "extreme"] = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.m}x{self.n}x{self.k}"

    def operands(self) -> tuple[np.ndarray, np.ndarray]:
        """The case's A (M x K) and B (K x N) int8 matrices."""
        rng = np.random.default_rng(self.seed)
        if self.data == "extreme":
            a = rng.choice(np.array([-128, 127], dtype=np.int8), size=(self.m, self.k))
            b = rng.choice(np.array([-128, 127], dtype=np.int8), size=(self.k, self.n))
        else:
            a = rng.integers(-128, 128, size=(self.m, self.k), dtype=np.int8)
            b = rng.integers(-128, 128, size=(self.k, self.n), dtype=np.int8)
        return a, b


@dataclass(frozen=True)
class GemmSimResult:
    """Outcome of one case: pass/fail against the golden model and the measured cycles.

    ``cycles`` is the engine's ``CYCLES`` register (checked against the testbench's own count);
    ``sim_seconds`` is the wall time of the whole simulator run the case was part of.
    """

    case: str
    passed: bool
    message: str
    cycles: int
    ideal_cycles: float
    utilization: float
    mismatch: dict[str, Any] | None
    simulator: str
    sim_seconds: float
    waves: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def simulate_gemm(
    cfg: GemmConfig,
    cases: Sequence[GemmCase],
    *,
    sim: Simulator = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[GemmSimResult]:
    """Run GEMM cases on the RTL of ``cfg`` in a cocotb testbench and check them bit-exactly.

    Parameters
    ----------
    cfg : GemmConfig
        Engine to generate and simulate.
    cases : sequence of GemmCase
        Run in order on one simulator process; a failing case stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<config name>/<sim>``.
    waves : bool
        Dump waveforms (FST on Icarus, VCD on Verilator); the path is in each result.

    Returns
    -------
    list of GemmSimResult
        One per case that ran (fewer than ``cases`` if one failed).

    Raises
    ------
    ValueError
        Unknown simulator or a case the engine cannot run.
    SimulationError
        The build or the simulator failed before producing results.
    """
    for case in cases:
        cfg.check_shape(case.m, case.n, case.k)

    def write_case(case: GemmCase, path: Path) -> dict[str, Any]:
        a, b = case.operands()
        expected, valid = output_beats(gemm(a, b, cfg, case.requant), cfg)
        a_beats, b_beats = stream_operands(a, b, cfg)
        np.savez(path, a_beats=a_beats, b_beats=b_beats, expected=expected, valid=valid)
        rq = case.requant or Requant(0, 0, 0)
        return {
            "name": case.label,
            "m": case.m,
            "n": case.n,
            "k": case.k,
            "raw": case.requant is None,
            "multiplier": rq.multiplier,
            "shift": rq.shift,
            "zero_point": rq.zero_point,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
        }

    raw_results, elapsed, waves_path = run_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_gemm(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    out = []
    for case, res in zip(cases, raw_results, strict=False):
        ideal = cfg.ideal_cycles(case.m, case.n, case.k)
        out.append(
            GemmSimResult(
                case=case.label,
                passed=res["passed"],
                message=res["message"],
                cycles=res["cycles"],
                ideal_cycles=ideal,
                utilization=ideal / res["cycles"] if res["cycles"] else 0.0,
                mismatch=res["mismatch"],
                simulator=sim,
                sim_seconds=elapsed,
                waves=waves_path,
            )
        )
    return out
