"""Run the ``GeluRom`` unit on Icarus Verilog or Verilator and check it against the golden model.

:func:`simulate_gelu` generates the unit's Verilog from its config, computes every case's golden
output with :func:`tessera.models.gelu.gelu`, and runs :mod:`tessera.sim.gelu_testbench` through
:func:`tessera.sim.harness.run_testbench`. :func:`pack_beats` / :func:`unpack_beats` define the
byte layout of the stream; the testbench uses the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.gelu import GeluConfig, extreme_codes, gelu
from tessera.rtl.gelu import TOP_NAME, generate_gelu
from tessera.sim.harness import SimResult, simulate_cases

__all__ = [
    "GeluCase",
    "frame_sizes",
    "simulate_gelu",
]

Simulator = Literal["icarus", "verilator"]
DataKind = Literal["random", "sweep", "extreme"]
TESTBENCH_MODULE = "tessera.sim.gelu_testbench"
_DATA_KINDS = ("random", "sweep", "extreme")


@dataclass(frozen=True)
class GeluCase:
    """One input sequence to run through the unit.

    Parameters
    ----------
    count : int
        Number of elements (1..1_000_000); the last beat is padded with zeros up to ``lanes``.
    seed : int
        Seeds the data and the idle / back-pressure patterns.
    data : {"random", "sweep", "extreme"}
        ``"random"``: half uniform over all codes, half uniform within one ROM segment of
        ``+-range``. ``"sweep"``: every code of three runs of consecutive codes centred on
        ``-range``, 0 and ``+range`` (a third of ``count`` each, the middle one takes the rest),
        shifted inside the code range where needed; where the runs would overlap, one run of
        ``count`` consecutive codes centred on 0 (``count = 2**in_bits`` gives every code).
        ``"extreme"``: :func:`extreme_codes` in order, then random picks among them.
    idle : float
        Probability (0..0.95) that the input source inserts an idle cycle.
    backpressure : float
        Probability (0..0.95) that the output sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to ``<data>x<count>``.
    frame_beats : int
        Beats per ``tlast``-terminated frame; 0 sends the case as one frame.
    """

    count: int
    seed: int = 0
    data: DataKind = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""
    frame_beats: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int | np.integer):
            raise ValueError(f"count must be an integer in [1, 1000000], got {self.count!r}")
        if not 1 <= self.count <= 1_000_000:
            raise ValueError(f"count must be in [1, 1000000], got {self.count}")
        if self.data not in _DATA_KINDS:
            raise ValueError(f"data must be one of {', '.join(_DATA_KINDS)}, got {self.data!r}")
        for field in ("idle", "backpressure"):
            value = getattr(self, field)
            if not 0.0 <= value <= 0.95:
                raise ValueError(f"{field} must be a probability in [0, 0.95], got {value}")
        if (
            isinstance(self.frame_beats, bool)
            or not isinstance(self.frame_beats, int | np.integer)
            or self.frame_beats < 0
        ):
            raise ValueError(f"frame_beats must be >= 0 (0: one frame), got {self.frame_beats}")

    @property
    def label(self) -> str:
        return self.name or f"{self.data}x{self.count}"

    def inputs(self, cfg: GeluConfig) -> np.ndarray:
        """The case's ``count`` raw input codes (int64)."""
        rng = np.random.default_rng(self.seed)
        lo, hi, r = cfg.code_min, cfg.code_max, cfg.range_code
        if self.data == "random":
            near = r + (1 << cfg.low_bits)
            codes = np.concatenate(
                [
                    rng.integers(lo, hi + 1, size=self.count // 2),
                    rng.integers(-near, near + 1, size=self.count - self.count // 2),
                ]
            )
            return np.clip(rng.permutation(codes), lo, hi).astype(np.int64)
        if self.data == "sweep":

            def run(centre: int, length: int) -> np.ndarray:
                start = min(max(centre - length // 2, lo), max(hi - length + 1, lo))
                return np.arange(start, start + length)

            side = self.count // 3
            codes = np.concatenate([run(-r, side), run(0, self.count - 2 * side), run(r, side)])
            if len(np.unique(codes)) < len(codes):  # runs overlap: one run covers all three
                codes = run(0, self.count)
            return np.clip(codes, lo, hi).astype(np.int64)
        edges = extreme_codes(cfg)
        extra = rng.choice(edges, size=max(0, self.count - len(edges)))
        return np.concatenate([edges[: self.count], extra]).astype(np.int64)


def frame_sizes(count: int, cfg: GeluConfig, frame_beats: int) -> list[int]:
    """Beats of each ``tlast``-terminated frame that carries ``count`` elements."""
    beats = -(-count // cfg.lanes)
    if frame_beats <= 0:
        return [beats]
    sizes = [frame_beats] * (beats // frame_beats)
    if beats % frame_beats:
        sizes.append(beats % frame_beats)
    return sizes


def simulate_gelu(
    cfg: GeluConfig,
    cases: Sequence[GeluCase],
    *,
    sim: Simulator = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[SimResult]:
    """Run GELU cases on the RTL of ``cfg`` in a cocotb testbench and check them bit-exactly.

    Parameters
    ----------
    cfg : GeluConfig
        Unit to generate and simulate.
    cases : sequence of GeluCase
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
        Unknown simulator or no cases.
    SimulationError
        The build or the simulator failed before producing results.
    """

    def write_case(case: GeluCase, path: Path) -> dict[str, Any]:
        x = case.inputs(cfg)
        padded = np.concatenate([x, np.zeros(-len(x) % cfg.lanes, dtype=np.int64)])
        np.savez(path, inputs=padded, expected=gelu(padded, cfg))
        return {
            "name": case.label,
            "count": case.count,
            "frames": frame_sizes(case.count, cfg, case.frame_beats),
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
        }

    pairs = simulate_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_gelu(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [result for result, _ in pairs]
