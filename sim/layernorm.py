"""Run the ``LayerNorm`` RTL under cocotb on Icarus Verilog or Verilator, bit-exact vs golden.

:func:`simulate_layernorm` generates the unit's Verilog from its config, computes every case's
golden output with :func:`tessera.models.layernorm.layernorm`, runs
:mod:`tessera.sim.layernorm_testbench` through :func:`tessera.sim.harness.run_testbench` and
returns one :class:`LayerNormSimResult` per case. Each case loads its own ``gamma`` / ``beta``
packet before its rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.layernorm import (
    LayerNormConfig,
    layernorm,
    quantize_input,
    quantize_params,
)
from tessera.rtl.layernorm import TOP_NAME, generate_layernorm
from tessera.sim.harness import SimResult, simulate_cases

__all__ = ["LayerNormCase", "LayerNormSimResult", "simulate_layernorm"]

TESTBENCH_MODULE = "tessera.sim.layernorm_testbench"


@dataclass(frozen=True)
class LayerNormCase:
    """A batch of rows and one parameter packet to run on the unit.

    Parameters
    ----------
    rows : int
        Number of rows (>= 1).
    seed : int
        Seeds the data, the parameters and the idle / back-pressure patterns.
    data : {"random", "extreme"}
        ``"random"``: alternately uniform full-range rows and activation-like rows (per-channel
        scale and offset, a few outlier channels), with ``gamma`` near 1 and ``beta`` near 0.
        ``"extreme"``: rows of equal elements (zero variance, including the minimum and maximum
        codes), one huge outlier among zeros, alternating minimum / maximum codes, all minimum but
        one maximum, and full-range random rows, with full-range random ``gamma`` and ``beta``.
    idle : float
        Probability that an input source inserts an idle cycle (0 <= idle < 1).
    backpressure : float
        Probability that the output sink deasserts ``tready`` on a cycle (0 <= p < 1).
    name : str, optional
        Label in reports; defaults to ``<data> x<rows>``.
    """

    rows: int
    seed: int = 0
    data: Literal["random", "extreme"] = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise ValueError(f"rows must be a positive integer, got {self.rows!r}")
        if self.data not in ("random", "extreme"):
            raise ValueError(f"data must be 'random' or 'extreme', got {self.data!r}")
        for name in ("idle", "backpressure"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")

    @property
    def label(self) -> str:
        return self.name or f"{self.data} x{self.rows}"

    def inputs(self, cfg: LayerNormConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The case's raw rows ``(rows, dim)``, ``gamma`` and ``beta`` ``(dim,)``."""
        rng = np.random.default_rng(self.seed)
        n = cfg.dim
        lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
        x = np.empty((self.rows, n), dtype=np.int64)
        if self.data == "random":
            full_scale = hi / (1 << cfg.in_frac)
            scale = rng.lognormal(0.0, 0.5, n) * full_scale / 40
            scale[rng.choice(n, size=min(n, 3), replace=False)] *= 15  # outlier channels
            offset = rng.normal(0.0, full_scale / 40, n)
            for r in range(self.rows):
                if r % 2:
                    x[r] = quantize_input(rng.normal(size=n) * scale + offset, cfg)
                else:
                    x[r] = rng.integers(lo, hi + 1, n)
            gamma, beta = quantize_params(rng.normal(1.0, 0.25, n), rng.normal(0.0, 0.5, n), cfg)
            return x, gamma, beta
        for r in range(self.rows):
            kind = r % 6
            if kind == 0:  # zero variance at a random, the minimum or the maximum code
                x[r] = (int(rng.integers(lo, hi + 1)), lo, hi)[(r // 6) % 3]
            elif kind == 1:  # one huge outlier among zeros
                x[r] = 0
                x[r, rng.integers(n)] = hi if r % 2 else lo
            elif kind == 2:
                x[r] = np.where(np.arange(n) % 2, hi, lo)
            elif kind == 3:
                x[r] = lo
                x[r, rng.integers(n)] = hi
            elif kind == 4:  # tiny spread: eps matters
                x[r] = rng.integers(-2, 3, n)
            else:
                x[r] = rng.integers(lo, hi + 1, n)
        plo, phi = -(1 << (cfg.param_bits - 1)), (1 << (cfg.param_bits - 1)) - 1
        gamma = rng.integers(plo, phi + 1, n)
        beta = rng.integers(plo, phi + 1, n)
        gamma[: min(n, 2)] = (phi, plo)[: min(n, 2)]
        return x, gamma, beta


@dataclass(frozen=True)
class LayerNormSimResult(SimResult):
    """:class:`SimResult` of a LayerNorm case, with its row count and latency.

    Attributes
    ----------
    rows : int
        Rows in the case.
    latency : int
        Cycles from the first input beat offered to the first output beat accepted.
    """

    rows: int = 0
    latency: int = 0

    @property
    def cycles_per_row(self) -> float:
        """``cycles / rows``."""
        return self.cycles / self.rows if self.rows else 0.0


def simulate_layernorm(
    cfg: LayerNormConfig,
    cases: Sequence[LayerNormCase],
    *,
    sim: Literal["icarus", "verilator"],
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[LayerNormSimResult]:
    """Run LayerNorm cases on the RTL of ``cfg`` in a cocotb testbench and check them bit-exactly.

    Parameters
    ----------
    cfg : LayerNormConfig
        Unit to generate and simulate.
    cases : sequence of LayerNormCase
        Run in order on one simulator process (each loads its parameters first); a failing case
        stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<config name>/<sim>``.
    waves : bool
        Dump waveforms; the path is in each result.

    Returns
    -------
    list of LayerNormSimResult
        One per case that ran (fewer than ``cases`` if one failed).

    Raises
    ------
    ValueError
        Unknown simulator or no cases.
    SimulationError
        The build or the simulator failed before producing results.
    """

    def write_case(case: LayerNormCase, path: Path) -> dict[str, Any]:
        x, gamma, beta = case.inputs(cfg)
        np.savez(path, x=x, gamma=gamma, beta=beta, expected=layernorm(x, gamma, beta, cfg))
        return {
            "name": case.label,
            "rows": case.rows,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
        }

    pairs = simulate_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_layernorm(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [
        LayerNormSimResult(
            **dataclasses.asdict(result),
            rows=case.rows,
            latency=res["latency"],
        )
        for case, (result, res) in zip(cases, pairs, strict=False)
    ]
