"""Build and run the ``MoeEngine`` cocotb testbench on Icarus Verilog or Verilator.

:func:`simulate_moe` generates the engine's Verilog from its config, builds every case's weights
(quantized from float parameters with :meth:`tessera.models.moe.MoeWeights.from_float`), its
weight image (:func:`tessera.models.moe.moe_weight_image`) and its golden output
(:func:`tessera.models.moe.moe_layer`), runs :mod:`tessera.sim.moe_testbench` through
:func:`tessera.sim.harness.run_cases` and returns one :class:`tessera.sim.harness.SimResult` per
case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.estimators.moe_cycles import AXI_RAM_LATENCY, moe_engine_cycles
from tessera.models.moe import MoeConfig, MoeWeights, moe_layer, moe_weight_image
from tessera.rtl.moe import TOP_NAME, check_engine_config, generate_moe
from tessera.sim.harness import SimResult, SimulationError, simulate_cases

__all__ = ["SKEWS", "MoeCase", "SimulationError", "simulate_moe"]

Simulator = Literal["icarus", "verilator"]
TESTBENCH_MODULE = "tessera.sim.moe_testbench"
SKEWS = ("random", "one", "spread")
WEIGHT_BASE = 0x10000
"""Byte address of the weight image in the testbench's DDR model (4096-byte aligned)."""


@dataclass(frozen=True)
class MoeCase:
    """One layer call on the engine.

    Parameters
    ----------
    tokens : int
        Tokens in the call (1..max_tokens).
    task : int
        Task whose gate routes them.
    seed : int
        Seeds the float parameters, the tokens and the stall patterns.
    skew : {"random", "one", "spread"}
        Routing the data is built for. ``"random"``: Gaussian parameters and tokens.
        ``"one"``: non-negative tokens and a gate whose column ``expert`` is the largest weight
        everywhere, so every token's first choice is ``expert``. ``"spread"``: token ``t`` is
        large on the features of block ``t % experts`` and the gate maps block ``e`` to expert
        ``e``, so every expert is the first choice of some token (given ``tokens >= experts``).
    expert : int
        The favoured expert of ``skew="one"``.
    idle : float
        Probability of an idle cycle on ``x``.
    backpressure : float
        Probability that ``y`` is not ready on a cycle.
    memory_stall : float
        Probability of a stall cycle on each of the DDR model's AR (not ready) and R (not
        valid) channels.
    weights : MoeWeights, optional
        Use these weights (and ``x``) instead of generated ones.
    x : array_like of int, shape (tokens, dim), optional
        Raw tokens to use with ``weights``.
    name : str, optional
        Label in reports.
    """

    tokens: int
    task: int = 0
    seed: int = 0
    skew: str = "random"
    expert: int = 0
    idle: float = 0.0
    backpressure: float = 0.0
    memory_stall: float = 0.0
    weights: MoeWeights | None = None
    x: Any = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.skew not in SKEWS:
            raise ValueError(f"skew must be one of {', '.join(SKEWS)}, got {self.skew!r}")
        for name in ("idle", "backpressure", "memory_stall"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value}")
        if (self.weights is None) != (self.x is None):
            raise ValueError("give both weights and x, or neither")

    @property
    def stall_free(self) -> bool:
        """No idle, back-pressure or memory stall cycles: the cycle model is exact."""
        return self.idle == 0 and self.backpressure == 0 and self.memory_stall == 0

    @property
    def label(self) -> str:
        return self.name or f"tokens={self.tokens} task={self.task} {self.skew} seed={self.seed}"

    def inputs(self, cfg: MoeConfig) -> tuple[np.ndarray, MoeWeights]:
        """The case's raw tokens ``(tokens, dim)`` and layer weights."""
        if not 1 <= self.tokens <= cfg.max_tokens:
            raise ValueError(
                f"tokens must be in [1, max_tokens={cfg.max_tokens}], got {self.tokens}"
            )
        cfg.check_task(self.task)
        if not 0 <= self.expert < cfg.experts:
            raise ValueError(f"expert must be in [0, {cfg.experts - 1}], got {self.expert}")
        if self.weights is not None:
            x = cfg.check_tokens(self.x)
            if x.shape[0] != self.tokens:
                raise ValueError(f"x has {x.shape[0]} tokens, the case says {self.tokens}")
            return x, self.weights
        rng = np.random.default_rng(self.seed)
        d, e, h, n = cfg.dim, cfg.experts, cfg.expert_hidden, self.tokens
        gate = rng.normal(size=(cfg.tasks, d, e))
        x = rng.normal(size=(n, d))
        if self.skew == "one":
            x = np.abs(x)
            gate = 0.1 * gate
            gate[:, :, self.expert] = 1.0
        elif self.skew == "spread":
            block = max(1, d // e)
            gate = 0.05 * gate
            x = 0.2 * x
            for j in range(e):
                gate[:, (j * block) % d : (j * block) % d + block, j] += 1.0
            for t in range(n):
                start = ((t % e) * block) % d
                x[t, start : start + block] += 3.0
        params = {
            "gate": gate,
            "w1": rng.normal(size=(e, d, h)) / np.sqrt(d),
            "b1": 0.1 * rng.normal(size=(e, h)),
            "w2": rng.normal(size=(e, h, d)) / np.sqrt(h),
            "b2": 0.1 * rng.normal(size=(e, d)),
        }
        weights = MoeWeights.from_float(cfg, **params, calibration=x)
        return weights.quantize_tokens(x, cfg), weights


def simulate_moe(
    cfg: MoeConfig,
    cases: Sequence[MoeCase],
    *,
    sim: Simulator = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[SimResult]:
    """Run MoE layer calls on the RTL of ``cfg`` in a cocotb testbench, bit-exactly checked.

    Each case checks every output byte against :func:`tessera.models.moe.moe_layer`, the
    ``QUEUE_LEN`` window against the routing's queue lengths, ``WEIGHT_BYTES`` against
    ``gate_bytes + loaded * expert_bytes`` of the image and ``EXPERTS_LOADED``; a stall-free case
    also checks ``CYCLES`` against :func:`tessera.estimators.moe_cycles.moe_engine_cycles`.

    Parameters
    ----------
    cfg : MoeConfig
        Engine to generate and simulate.
    cases : sequence of MoeCase
        Run in order on one simulator process; a failing case stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<config name>/<sim>``.
    waves : bool
        Dump waveforms.

    Returns
    -------
    list of SimResult
        One per case that ran; ``cycles`` is the engine's ``CYCLES`` register.

    Raises
    ------
    ValueError
        Unknown simulator, no cases, a config the engine cannot be built for, or a case it
        cannot run.
    SimulationError
        The build or the simulator failed before producing results.
    """
    check_engine_config(cfg)
    for case in cases:
        case.inputs(cfg)  # validates before anything is built

    def write_case(case: MoeCase, path: Path) -> dict[str, Any]:
        x, weights = case.inputs(cfg)
        y, routing = moe_layer(x, weights, case.task, cfg)
        image = moe_weight_image(weights, cfg)
        loaded = len(routing.loaded_experts)
        np.savez(
            path,
            x=x.astype(np.int8),
            y=y.astype(np.int8),
            image=np.frombuffer(image.data, dtype=np.uint8),
            queue_lengths=routing.queue_lengths,
        )
        model = moe_engine_cycles(routing, cfg, mem_latency=AXI_RAM_LATENCY)
        return {
            "name": case.label,
            "tokens": case.tokens,
            "task": case.task,
            "seed": case.seed,
            "idle": case.idle,
            "backpressure": case.backpressure,
            "memory_stall": case.memory_stall,
            "weight_base": WEIGHT_BASE,
            "weight_bytes": image.gate_bytes + loaded * image.expert_bytes,
            "experts_loaded": loaded,
            "model_cycles": model["cycles"],
            "check_cycles": case.stall_free,
        }

    pairs = simulate_cases(
        cfg,
        cases,
        write_case,
        verilog=lambda: generate_moe(cfg)["verilog"],
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        sim=sim,
        build_dir=build_dir,
        waves=waves,
    )
    return [result for result, _ in pairs]
