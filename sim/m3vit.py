"""The whole quantized M³ViT on one image, with RTL wherever tessera has an engine for the step.

:func:`simulate_m3vit` runs the network stage by stage, each stage fed the previous stage's RTL
output (never the golden trace), and compares each stage's output bit for bit with
:meth:`~tessera.models.m3vit_quant.QuantM3ViT.per_layer_outputs`:

=================  ==============================================  ===========================
stage              what runs                                       on
=================  ==============================================  ===========================
``embed``          patch GEMM + bias + requant to the residual     ``LinearUnit`` (encoder
                   format                                          datapath)
``block{i}.attn``  norm1, requant, q / k / v, attention per head,  encoder datapath
                   out projection + residual
``block{i}.mlp``   norm2, requant, fc1 + GELU, fc2 + residual      encoder datapath (dense
                                                                   blocks)
``block{i}.norm2`` norm2 and its int8 requantization               encoder datapath (MoE
                                                                   blocks)
``block{i}.moe``   gate, routing, experts, combine                 ``MoeEngine``
``head.norm``      final LayerNorm of the cls token, requant       encoder datapath
=================  ==============================================  ===========================

A few steps have no unit on the datapath and run on the golden integer model
(:attr:`M3ViTResult.host_steps` lists them): the position-embedding add and the constant cls row
of the embedding (the datapath's stand-alone epilogue takes no second stream), each MoE layer's
output requantization and residual add (same reason), and the task head's GEMM, whose int32
logits are wider than any epilogue output (16 bits at most).

The MoE testbench compares every output byte of the engine with
:func:`~tessera.models.moe.moe_layer` on the same (RTL-produced) tokens and does not return them,
so a passing MoE stage hands on that function's output, which equals the RTL's.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tessera.estimators.m3vit_cycles import moe_config_for
from tessera.models.config import check_int
from tessera.models.gemm import GemmConfig
from tessera.models.moe import moe_layer
from tessera.models.rounding import saturate
from tessera.sim.encoder import (
    EncoderDesign,
    EncoderOp,
    OpResult,
    block_program,
    embed_design,
    embed_program,
    encoder_design,
    first_difference,
    head_design,
    head_program,
    run_program_rtl,
)
from tessera.sim.moe import MoeCase, simulate_moe

__all__ = ["M3ViTResult", "StageResult", "simulate_m3vit"]

Simulator = Literal["icarus", "verilator"]


@dataclass(frozen=True)
class StageResult:
    """One stage of :func:`simulate_m3vit`.

    Attributes
    ----------
    name : str
        ``embed``, ``block{i}.attn``, ``block{i}.mlp``, ``block{i}.norm2``, ``block{i}.moe``
        or ``head.norm``.
    engine : str
        ``"encoder datapath"`` or ``"MoeEngine"``.
    passed : bool
        Every RTL op matched its golden output and the stage's output equals the network's.
    message : str
        ``"ok"`` or the first problem.
    cycles : int
        Measured RTL cycles: the sum of the testbench's per-op counts (each from the op's start
        to its last output beat, so the stand-alone requantizations and the epilogues'
        pipeline latency are in), or the MoE engine's ``CYCLES`` register;
        :func:`~tessera.estimators.m3vit_cycles.accelerator_cycles` models them.
    ops : tuple of OpResult
        The datapath ops of the stage (empty for the MoE engine).
    """

    name: str
    engine: str
    passed: bool
    message: str
    cycles: int
    ops: tuple[OpResult, ...] = ()


@dataclass(frozen=True)
class M3ViTResult:
    """Outcome of :func:`simulate_m3vit`.

    Attributes
    ----------
    task : int
        The task whose gates and head ran.
    passed : bool
        Every stage ran and passed and the logits equal the network's.
    stages : tuple of StageResult
        In network order; a failing stage is the last one.
    logits : ndarray of int64 or None
        The logits ``(classes,)`` computed from the RTL's final norm (None if a stage failed).
    cycles : int
        Sum of the stages' ``cycles``.
    host_steps : tuple of str
        The steps computed with the golden integer model (no unit for them on the RTL).
    simulator : str
    sim_seconds : float
        Wall time of all simulator runs (builds excluded when cached).
    outputs : dict of str to ndarray
        The RTL-produced tensors that pass between stages, under the trace's names (``embed``,
        ``block{i}.attn``, ``block{i}.out``, ``norm``) and ``block{i}.norm2`` (MoE tokens).
    """

    task: int
    passed: bool
    stages: tuple[StageResult, ...]
    logits: npt.NDArray[np.int64] | None
    cycles: int
    host_steps: tuple[str, ...]
    simulator: str
    sim_seconds: float
    outputs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def cycles_by_stage(self) -> dict[str, int]:
        """``{stage: measured cycles}``."""
        return {s.name: s.cycles for s in self.stages}


def _stage(
    name: str, ops: tuple[OpResult, ...], check: tuple[str, np.ndarray, np.ndarray] | None
) -> StageResult:
    """A datapath stage from its ops and the check of its output against the network."""
    bad = next((op for op in ops if not op.passed), None)
    message = "ok" if bad is None else f"{bad.name}: {bad.message}"
    if bad is None and check is not None:
        diff = first_difference(*check)
        if diff is not None:
            message = f"{name} differs from the network: {diff}"
    return StageResult(
        name=name,
        engine="encoder datapath",
        passed=message == "ok",
        message=message,
        cycles=sum(op.cycles for op in ops),
        ops=ops,
    )


def _one_image(qm: Any, image: Any) -> np.ndarray:
    cfg = qm.cfg
    shape = (cfg.channels, cfg.image_height, cfg.image_width)
    arr = np.asarray(image.detach() if hasattr(image, "detach") else image, dtype=np.float64)
    if arr.shape == shape:
        arr = arr[None]
    if arr.shape != (1, *shape):
        raise ValueError(
            f"image must be one {shape} image or a batch of one {(1, *shape)}, got shape "
            f"{arr.shape}"
        )
    return arr


def simulate_m3vit(
    qm: Any,
    image: Any,
    task: int,
    *,
    sim: Simulator,
    gemm_cfg: GemmConfig | None = None,
    build_dir: str | os.PathLike | None = None,
) -> M3ViTResult:
    """Run one image through the whole integer network with every engine step on RTL.

    Parameters
    ----------
    qm : QuantM3ViT
        The quantized network.
    image : torch.Tensor or array_like
        One float image ``(C, H, W)`` or a batch of one.
    task : int
        Task: selects the MoE gates and the head.
    sim : {"icarus", "verilator"}
        Simulator.
    gemm_cfg : GemmConfig, optional
        MAC array of the linear units and of the MoE engine (``moe_config_for``); default
        ``qm.gemm_cfg`` with a 4 x 4 array. The integers do not depend on it, the cycles do.
    build_dir : path, optional
        Root of the build directories (one per design below it); default the build root.

    Returns
    -------
    M3ViTResult
        Stops at the first failing stage.

    Raises
    ------
    ValueError
        Bad image shape, task, or an array the MoE engine cannot be built with.
    """
    images = _one_image(qm, image)
    check_int("task", task, 0, qm.cfg.num_tasks - 1)
    gemm_cfg = gemm_cfg or dataclasses.replace(qm.gemm_cfg, rows=4, cols=4)
    moe_cfg = moe_config_for(qm, gemm_cfg)
    trace = {k: v[0] for k, v in qm.per_layer_outputs(images, task).items()}
    rbits = qm.preset.residual_bits
    stages: list[StageResult] = []
    outputs: dict[str, np.ndarray] = {}
    seconds = 0.0
    host = (
        "embed: position add and cls row",
        *(
            f"block{i}: MoE output requant + residual"
            for i, b in enumerate(qm.blocks)
            if b.moe is not None
        ),
        "head: GEMM + bias (int32 logits)",
    )

    def datapath(
        design: EncoderDesign, program: list[EncoderOp], arrays: dict, x: np.ndarray
    ) -> tuple[tuple[OpResult, ...], dict[str, np.ndarray]]:
        nonlocal seconds
        root = Path(build_dir) / design.short_name / sim if build_dir else None
        ops, out, secs = run_program_rtl(design, program, arrays, x, sim=sim, build_dir=root)
        seconds += secs
        return ops, out

    def result(logits: np.ndarray | None) -> M3ViTResult:
        passed = all(s.passed for s in stages) and logits is not None
        passed = passed and np.array_equal(logits, trace["logits"])
        return M3ViTResult(
            task=task,
            passed=passed,
            stages=tuple(stages),
            logits=logits,
            cycles=sum(s.cycles for s in stages),
            host_steps=host,
            simulator=sim,
            sim_seconds=seconds,
            outputs=outputs,
        )

    # Patch embedding: the GEMM on RTL; the position add and the cls row on the host.
    program, arrays = embed_program(qm)
    patches = qm._patches(qm.quantize_images(images))
    ops, out = datapath(embed_design(qm, gemm_cfg), program, arrays, patches)
    x = None
    if "patch" in out:
        x = np.concatenate([qm.cls_pos[None], saturate(out["patch"] + qm.pos, rbits, True)])
    stages.append(_stage("embed", ops, ("embed", _or_empty(x), trace["embed"])))
    if not stages[-1].passed:
        return result(None)
    outputs["embed"] = x

    for i, blk in enumerate(qm.blocks):
        program, arrays = block_program(qm, i)
        ops, out = datapath(encoder_design(qm, i, gemm_cfg), program, arrays, x)
        split = next((j for j, op in enumerate(ops) if op.name == "out"), len(ops) - 1) + 1
        attn = f"block{i}.attn"
        stages.append(_stage(attn, ops[:split], (attn, _or_empty(out.get("out")), trace[attn])))
        if not stages[-1].passed:
            return result(None)
        outputs[attn] = x_attn = out["out"]
        if blk.moe is None:
            key = f"block{i}.out"
            check = (key, _or_empty(out.get("fc2")), trace[key])
            stages.append(_stage(f"block{i}.mlp", ops[split:], check))
            if not stages[-1].passed:
                return result(None)
            outputs[key] = x = out["fc2"]
            continue
        # MoE block: norm2 on the datapath, the layer on MoeEngine, fed the RTL's tokens.
        name = f"block{i}.norm2"
        check = (name, _or_empty(out.get("norm2.rq")), qm.moe_norm(i, x_attn[None])[0])
        stages.append(_stage(name, ops[split:], check))
        if not stages[-1].passed:
            return result(None)
        outputs[name] = tokens = out["norm2.rq"]
        case = MoeCase(len(tokens), task=task, weights=blk.moe, x=tokens, name=f"block{i}")
        moe_root = Path(build_dir) / moe_cfg.short_name / sim if build_dir else None
        (res,) = simulate_moe(moe_cfg, [case], sim=sim, build_dir=moe_root)
        seconds += res.sim_seconds
        y = moe_layer(tokens, blk.moe, task, moe_cfg)[0]  # what the testbench matched
        x = saturate(x_attn + blk.moe_out(y), rbits, True)
        key, message = f"block{i}.out", res.message
        diff = first_difference(key, x, trace[key]) if res.passed else None
        if diff is not None:
            message = f"{key} differs from the network: {diff}"
        passed = res.passed and diff is None
        stages.append(StageResult(f"block{i}.moe", "MoeEngine", passed, message, res.cycles))
        if not passed:
            return result(None)
        outputs[key] = x

    # Final norm of the cls token on RTL; the head's GEMM (int32 logits) on the host.
    program, arrays = head_program(qm)
    ops, out = datapath(head_design(qm, gemm_cfg), program, arrays, x[:1])
    norm = out.get("norm.rq")
    stages.append(_stage("head.norm", ops, ("norm", _or_empty(norm), trace["norm"][None])))
    if not stages[-1].passed:
        return result(None)
    outputs["norm"] = norm[0]
    logits = qm.heads[task](norm, qm.gemm_cfg)[0]
    return result(logits)


def _or_empty(t: np.ndarray | None) -> np.ndarray:
    """A missing RTL tensor compares as an empty one (a shape mismatch)."""
    return np.zeros((0, 0), dtype=np.int64) if t is None else t
