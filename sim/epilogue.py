"""Run the ``Epilogue`` RTL under cocotb on Icarus Verilog or Verilator, bit-exact vs golden.

:func:`simulate_epilogue` generates the unit's Verilog from its config, computes every case's
golden output with :func:`tessera.models.epilogue.epilogue`, runs
:mod:`tessera.sim.epilogue_testbench` through :func:`tessera.sim.harness.run_cases` and returns
one :class:`tessera.sim.harness.SimResult` per case. Each case loads its own parameter packet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.epilogue import EpilogueConfig, EpilogueParams, epilogue
from tessera.rtl.epilogue import TOP_NAME, generate_epilogue
from tessera.sim.harness import SimResult, simulate_cases

__all__ = [
    "EpilogueCase",
    "check_case",
    "params_arrays",
    "params_from_arrays",
    "random_params",
    "random_residual",
    "simulate_epilogue",
]

TESTBENCH_MODULE = "tessera.sim.epilogue_testbench"
Data = Literal["random", "extreme"]


def check_case(case: Any) -> None:
    """``ValueError`` unless a case's ``data``, ``idle`` and ``backpressure`` are valid."""
    if case.data not in ("random", "extreme"):
        raise ValueError(f"data must be 'random' or 'extreme', got {case.data!r}")
    for name in ("idle", "backpressure"):
        value = getattr(case, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def random_params(
    cfg: EpilogueConfig, n: int, rng: np.random.Generator, data: Data
) -> EpilogueParams:
    """Parameters of one run. ``"random"``: small biases, multipliers in ``[2**29, 2**31)``,
    shifts that keep int32 sums in range. ``"extreme"``: biases at the int32 ends (the bias add
    wraps or saturates), multipliers 0, 1, ``2**30`` and ``2**31 - 1``, shifts 0, 1, 31, 62,
    63 (the output saturates, or rounds everything to 0 or -1)."""
    if data == "extreme":
        bias = rng.choice(np.array([-(1 << 31), (1 << 31) - 1, 0, -1]), size=n)
        multiplier = rng.choice(np.array([0, 1, 1 << 30, (1 << 31) - 1]), size=n)
        shift = rng.choice(np.array([0, 1, 31, 62, 63]), size=n)
        gelu = (int(rng.choice([1 << 30, (1 << 31) - 1])), int(rng.choice([0, 30, 63])))
    else:
        bias = rng.integers(-(1 << 16), 1 << 16, size=n)
        multiplier = rng.integers(1 << 29, 1 << 31, size=n)
        shift = rng.integers(cfg.acc_bits + 6 - cfg.out_bits, cfg.acc_bits + 14, size=n)
        gelu = (int(rng.integers(1 << 29, 1 << 31)), int(rng.integers(32, 38)))
    return EpilogueParams(bias, multiplier, shift, gelu_multiplier=gelu[0], gelu_shift=gelu[1])


def random_residual(
    cfg: EpilogueConfig, m: int, n: int, rng: np.random.Generator, data: Data
) -> np.ndarray | None:
    """A residual matrix when ``cfg.residual`` (extremes: the ``res_bits`` ends and 0)."""
    if not cfg.residual:
        return None
    half = 1 << (cfg.res_bits - 1)
    if data == "extreme":
        return rng.choice(np.array([-half, half - 1, 0]), size=(m, n))
    return rng.integers(-half, half, size=(m, n))


@dataclass(frozen=True)
class EpilogueCase:
    """One run of the unit on an (M, N) accumulator matrix.

    Parameters
    ----------
    m, n : int
        Rows and columns (N at most ``max_cols``).
    seed : int
        Seeds the data, the parameters and the idle / back-pressure patterns.
    data : {"random", "extreme"}
        ``"random"``: accumulators within +-2**20 and :func:`random_params`. ``"extreme"``:
        accumulators at the ``acc_bits`` ends, 0 and +-1, with the extreme parameters.
    idle : float
        Probability that each input source inserts an idle cycle.
    backpressure : float
        Probability that the output sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to ``MxN data``.
    """

    m: int
    n: int
    seed: int = 0
    data: Data = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        check_case(self)

    @property
    def label(self) -> str:
        return self.name or f"{self.m}x{self.n} {self.data}"

    def inputs(self, cfg: EpilogueConfig) -> tuple[np.ndarray, EpilogueParams, np.ndarray | None]:
        """Accumulators (M, N), parameters and residual (or None) of the case."""
        cfg.check_shape(self.m, self.n)
        rng = np.random.default_rng(self.seed)
        lo, hi = -(1 << (cfg.acc_bits - 1)), (1 << (cfg.acc_bits - 1)) - 1
        if self.data == "extreme":
            acc = rng.choice(np.array([lo, hi, 0, 1, -1]), size=(self.m, self.n))
        else:
            acc = rng.integers(-(1 << 20), 1 << 20, size=(self.m, self.n))
        params = random_params(cfg, self.n, rng, self.data)
        return acc, params, random_residual(cfg, self.m, self.n, rng, self.data)


def params_arrays(params: EpilogueParams) -> dict[str, Any]:
    """An ``EpilogueParams`` as ``.npz`` arrays (see :func:`params_from_arrays`)."""
    return {
        "bias": params.bias,
        "multiplier": params.multiplier,
        "shift": params.shift,
        "gelu": np.array([params.gelu_multiplier, params.gelu_shift]),
    }


def params_from_arrays(data: Any, prefix: str = "") -> EpilogueParams:
    """Inverse of :func:`params_arrays` (keys optionally prefixed)."""
    gelu = data[f"{prefix}gelu"]
    return EpilogueParams(
        data[f"{prefix}bias"],
        data[f"{prefix}multiplier"],
        data[f"{prefix}shift"],
        gelu_multiplier=int(gelu[0]),
        gelu_shift=int(gelu[1]),
    )


def simulate_epilogue(
    cfg: EpilogueConfig,
    cases: Sequence[EpilogueCase],
    *,
    sim: Literal["icarus", "verilator"] = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[SimResult]:
    """Run epilogue cases on the RTL of ``cfg`` in a cocotb testbench, bit-exactly checked.

    Parameters
    ----------
    cfg : EpilogueConfig
        Unit to generate and simulate.
    cases : sequence of EpilogueCase
        Run in order on one simulator process; a failing case stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<config name>/<sim>``.
    waves : bool
        Dump waveforms; the path is in each result.

    Returns
    -------
    list of SimResult
        One per case that ran; ``cycles`` counts from the first input beat offered to the last
        output beat taken.

    Raises
    ------
    ValueError
        Unknown simulator, no cases, or a case the unit cannot run.
    SimulationError
        The build or the simulator failed before producing results.
    """
    for case in cases:
        cfg.check_shape(case.m, case.n)

    def write_case(case: EpilogueCase, path: Path) -> dict[str, Any]:
        acc, params, residual = case.inputs(cfg)
        expected = epilogue(acc, params, cfg, residual)
        arrays = {"acc": acc, "expected": expected, **params_arrays(params)}
        if residual is not None:
            arrays["residual"] = residual
        np.savez(path, **arrays)
        return {
            "name": case.label,
            "m": case.m,
            "n": case.n,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
        }

    pairs = simulate_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_epilogue(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [result for result, _ in pairs]
