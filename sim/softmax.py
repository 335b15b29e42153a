"""Run the ``OnlineSoftmax`` unit on Icarus Verilog or Verilator and check it against the golden
model.

:func:`simulate_softmax` generates the unit's Verilog from its config, computes every case's
golden probabilities with :func:`tessera.models.softmax.softmax`, and runs
:mod:`tessera.sim.softmax_testbench` through :func:`tessera.sim.harness.run_testbench`.
:func:`pack_logits` / :func:`unpack_probabilities` define the byte layout of the two streams; the
testbench uses the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.softmax import SoftmaxConfig, softmax
from tessera.rtl.softmax import TOP_NAME, generate_softmax
from tessera.sim.harness import SimResult, simulate_cases

__all__ = [
    "SoftmaxCase",
    "simulate_softmax",
]

Simulator = Literal["icarus", "verilator"]
DataKind = Literal["random", "equal", "spike", "extreme", "increasing"]
TESTBENCH_MODULE = "tessera.sim.softmax_testbench"
_DATA_KINDS = ("random", "equal", "spike", "extreme", "increasing")


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


@dataclass(frozen=True)
class SoftmaxCase:
    """A batch of rows to run through the unit, one ``tlast``-terminated frame per row.

    Parameters
    ----------
    rows : int
        Number of rows (1..100_000).
    length : int or tuple of int
        Row length (1..``max_len`` of the config, checked by :meth:`logits`); a tuple gives the
        lengths of consecutive rows, repeated cyclically.
    seed : int
        Seeds the data and the idle / back-pressure patterns.
    data : {"random", "equal", "spike", "extreme", "increasing"}
        ``"random"``: normal logits, each row with its own spread (0.25 to 16 real units,
        log-uniform). ``"equal"``: every element of a row equal (a random code per row).
        ``"spike"``: one element at the largest code, the others random small logits.
        ``"extreme"``: the smallest and largest codes mixed at random. ``"increasing"``: each
        row sorted ascending (distinct codes where the range allows), so every element is a new
        maximum and rescales the running sum.
    idle : float
        Probability (0..0.95) that the input source inserts an idle cycle.
    backpressure : float
        Probability (0..0.95) that the output sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to ``<data>x<rows>x<length>``.
    """

    rows: int
    length: int | tuple[int, ...]
    seed: int = 0
    data: DataKind = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if not _is_int(self.rows) or not 1 <= self.rows <= 100_000:
            raise ValueError(f"rows must be an integer in [1, 100000], got {self.rows!r}")
        lengths = self.length if isinstance(self.length, tuple) else (self.length,)
        if not lengths or not all(_is_int(v) and v >= 1 for v in lengths):
            raise ValueError(
                f"length must be a positive integer or a non-empty tuple of them, got "
                f"{self.length!r}"
            )
        if self.data not in _DATA_KINDS:
            raise ValueError(f"data must be one of {', '.join(_DATA_KINDS)}, got {self.data!r}")
        for field in ("idle", "backpressure"):
            value = getattr(self, field)
            if not 0.0 <= value <= 0.95:
                raise ValueError(f"{field} must be a probability in [0, 0.95], got {value}")

    @property
    def label(self) -> str:
        length = "-".join(map(str, self.length)) if isinstance(self.length, tuple) else self.length
        return self.name or f"{self.data}x{self.rows}x{length}"

    @property
    def lengths(self) -> list[int]:
        """Length of every row, in order."""
        pattern = self.length if isinstance(self.length, tuple) else (self.length,)
        return [int(pattern[i % len(pattern)]) for i in range(self.rows)]

    def logits(self, cfg: SoftmaxConfig) -> list[np.ndarray]:
        """The case's rows of raw logits (int64), one array per row.

        Raises
        ------
        ValueError
            A row is longer than ``cfg.max_len``.
        """
        lengths = self.lengths
        if max(lengths) > cfg.max_len:
            raise ValueError(
                f"case {self.label!r}: row length {max(lengths)} exceeds max_len={cfg.max_len}"
            )
        rng = np.random.default_rng(self.seed)
        lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
        rows = []
        for n in lengths:
            if self.data == "random":
                spread = float(np.exp(rng.uniform(np.log(0.25), np.log(16.0))))
                row = cfg.quantize_logits(rng.normal(0.0, spread, size=n))
            elif self.data == "equal":
                row = np.full(n, rng.integers(lo, hi + 1), dtype=np.int64)
            elif self.data == "spike":
                row = cfg.quantize_logits(rng.normal(0.0, 1.0, size=n))
                row[rng.integers(n)] = hi
            elif self.data == "extreme":
                row = rng.choice(np.array([lo, hi], dtype=np.int64), size=n)
            else:
                replace = n > hi - lo + 1
                row = np.sort(rng.choice(np.arange(lo, hi + 1), size=n, replace=replace))
            rows.append(np.asarray(row, dtype=np.int64))
        return rows


def simulate_softmax(
    cfg: SoftmaxConfig,
    cases: Sequence[SoftmaxCase],
    *,
    sim: Simulator = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[SimResult]:
    """Run softmax cases on the RTL of ``cfg`` in a cocotb testbench and check them bit-exactly.

    Parameters
    ----------
    cfg : SoftmaxConfig
        Unit to generate and simulate.
    cases : sequence of SoftmaxCase
        Run in order on one simulator process; a failing case stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<config name>/<sim>``.
    waves : bool
        Dump waveforms (FST on Icarus, VCD on Verilator); the path is in each result.

    Returns
    -------
    list of SimResult
        One per case that ran (fewer than ``cases`` if one failed). ``cycles`` counts from the
        first input beat offered to the last output beat accepted.

    Raises
    ------
    ValueError
        Unknown simulator, no cases, or a row longer than ``max_len``.
    SimulationError
        The build or the simulator failed before producing results.
    """
    for case in cases:
        case.logits(cfg)  # a row longer than max_len fails here, before anything is built

    def write_case(case: SoftmaxCase, path: Path) -> dict[str, Any]:
        rows = case.logits(cfg)
        np.savez(
            path,
            logits=np.concatenate(rows),
            lengths=np.array(case.lengths, dtype=np.int64),
            expected=np.concatenate([softmax(row, cfg) for row in rows]),
        )
        return {
            "name": case.label,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
        }

    pairs = simulate_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_softmax(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [result for result, _ in pairs]
