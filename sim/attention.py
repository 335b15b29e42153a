"""Build and run the ``AttentionEngine`` cocotb testbench on Icarus Verilog or Verilator.

:func:`simulate_attention` generates the engine's Verilog from its config, computes every case's
golden output with :func:`tessera.models.attention.attention`, lays the operands out as the
engine's streams (:func:`tessera.models.attention.attention_streams`), runs
:mod:`tessera.sim.attention_testbench` through :func:`tessera.sim.harness.run_testbench` and
returns one :class:`tessera.sim.harness.SimResult` per case.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    attention_streams,
    attention_traffic,
    requant_for_scale,
)
from tessera.models.gemm import Requant
from tessera.rtl.attention import TOP_NAME, generate_attention
from tessera.sim.harness import SimResult, SimulationError, simulate_cases

__all__ = ["AttentionCase", "SimulationError", "simulate_attention"]

Simulator = Literal["icarus", "verilator"]
TESTBENCH_MODULE = "tessera.sim.attention_testbench"
QK_SCALE = 1 / 48
"""Real value of one int8 step of the generated queries and keys (they are N(0, 1) * 48)."""


@dataclass(frozen=True)
class AttentionCase:
    """One attention run on the engine.

    Parameters
    ----------
    seq_len : int
        Sequence length S.
    seed : int
        Seeds the operands (and the idle / back-pressure patterns).
    mask : AttentionMask
        Key visibility.
    requant : Requant, optional
        Score requantization; default :func:`requant_for_scale` of
        ``QK_SCALE**2 / sqrt(head_dim)`` (the usual ``1/sqrt(D)`` attention scale).
    data : {"random", "extreme", "equal"}
        ``"random"``: queries and keys N(0, 1) * 48 (clipped to int8), uniform int8 values.
        ``"extreme"``: one huge logit per row (non-negative queries, small keys except one key
        row of 127s) and values of only -128 and 127, so outputs saturate.
        ``"equal"``: every key row the same, so each query's visible logits are all equal.
    idle : float
        Probability that each input source inserts an idle cycle.
    backpressure : float
        Probability that the output sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to a description of the case.
    """

    seq_len: int
    seed: int = 0
    mask: AttentionMask = field(default_factory=AttentionMask)
    requant: Requant | None = None
    data: Literal["random", "extreme", "equal"] = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.data not in ("random", "extreme", "equal"):
            raise ValueError(f"data must be 'random', 'extreme' or 'equal', got {self.data!r}")
        for name in ("idle", "backpressure"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value}")

    @property
    def label(self) -> str:
        return self.name or f"S={self.seq_len} {self.mask.kind} {self.data}"

    def score_requant(self, cfg: AttentionConfig) -> Requant:
        """The case's requantization, or the default attention scale."""
        if self.requant is not None:
            return self.requant
        return requant_for_scale(QK_SCALE * QK_SCALE / math.sqrt(cfg.head_dim), cfg)

    def operands(self, cfg: AttentionConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The case's q, k, v: int8 arrays of shape (heads, seq_len, head_dim)."""
        cfg.check_seq_len(self.seq_len)
        rng = np.random.default_rng(self.seed)
        shape = (cfg.heads, self.seq_len, cfg.head_dim)

        def gaussian() -> np.ndarray:
            return np.clip(np.round(rng.normal(0.0, 48.0, size=shape)), -128, 127)

        if self.data == "extreme":
            q = rng.integers(0, 128, size=shape)
            k = rng.integers(-8, 9, size=shape)
            spike = rng.integers(0, self.seq_len, size=cfg.heads)
            k[np.arange(cfg.heads), spike] = 127
            v = rng.choice(np.array([-128, 127]), size=shape)
        elif self.data == "equal":
            q = gaussian()
            k = np.repeat(gaussian()[:, :1], self.seq_len, axis=1)
            v = rng.integers(-128, 128, size=shape)
        else:
            q, k = gaussian(), gaussian()
            v = rng.integers(-128, 128, size=shape)
        return q.astype(np.int8), k.astype(np.int8), v.astype(np.int8)


def simulate_attention(
    cfg: AttentionConfig,
    cases: Sequence[AttentionCase],
    *,
    sim: Simulator = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[SimResult]:
    """Run attention cases on the RTL of ``cfg`` in a cocotb testbench, bit-exactly checked.

    Parameters
    ----------
    cfg : AttentionConfig
        Engine to generate and simulate.
    cases : sequence of AttentionCase
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
        One per case that ran (fewer than ``cases`` if one failed); ``cycles`` is the engine's
        ``CYCLES`` register, checked against the testbench's own count.

    Raises
    ------
    ValueError
        Unknown simulator, no cases, or a case the engine cannot run.
    SimulationError
        The build or the simulator failed before producing results.
    """
    for case in cases:
        cfg.check_seq_len(case.seq_len)

    def write_case(case: AttentionCase, path: Path) -> dict[str, Any]:
        q, k, v = case.operands(cfg)
        requant = case.score_requant(cfg)
        out = attention(q, k, v, cfg, requant, case.mask)
        np.savez(path, **attention_streams(q, k, v, cfg, out))
        return {
            "name": case.label,
            "seq_len": case.seq_len,
            "multiplier": requant.multiplier,
            "shift": requant.shift,
            "mask": case.mask.code,
            "sink": case.mask.sink,
            "window": case.mask.window,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
            "model_cycles": attention_traffic(case.seq_len, cfg)["cycles"],
        }

    pairs = simulate_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_attention(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [result for result, _ in pairs]
