"""Cycles of the whole M³ViT on tessera's engines, stage by stage.

The network's stages run on the engines one after the other, so a stage's cycles are the sum of
its engines' exact cycle models:

- patch embedding, q / k / v / out projections, MLP layers and task heads on ``TemporalGemm``
  (:func:`~tessera.estimators.cycles.gemm_cycles`);
- LayerNorms on ``LayerNorm``, attention per (image, head) on ``AttentionEngine``, the dense
  MLP's GELU on ``GeluRom``;
- each MoE layer on ``MoeEngine`` (:func:`~tessera.estimators.moe_cycles.moe_engine_cycles`):
  gate phase (token load and gate fetch, gate GEMM, routing), each loaded expert's fetch and FFN,
  and the output phase. Its cycles depend on the routing, which the integer network decides:
  :func:`m3vit_routings` computes it once, and it does not depend on the array shape, so design
  points differ only in the cheap cycle sums.

:func:`m3vit_cycles` gives the host runtime's ops (:mod:`tessera.host.m3vit` charges the same
functions per op); :func:`accelerator_cycles` gives the hardware's stages as the RTL runs them
(fused GELU epilogue, stand-alone LayerNorm requantizations, one ``MoeEngine`` run per MoE layer
that overlaps expert fetch and compute), and equals the whole network simulated on RTL stage by
stage (``tests/sim/test_m3vit_rtl.py``). The MoE engine uses the same ``rows x cols`` array shape
as the GEMM engine in a design point.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.estimators.cycles import (
    GELU_LATENCY,
    attention_cycles,
    gelu_cycles,
    gemm_cycles,
    layernorm_cycles,
)
from tessera.estimators.moe_cycles import moe_engine_cycles, output_cycles
from tessera.models.attention import AttentionConfig
from tessera.models.gemm import GemmConfig
from tessera.models.m3vit_quant import QuantM3ViT
from tessera.models.moe import MoeConfig, MoeRouting, route
from tessera.rtl.epilogue import BASE_LATENCY as EPILOGUE_LATENCY
from tessera.rtl.moe import check_engine_config

__all__ = [
    "START_CYCLES",
    "accelerator_cycles",
    "attention_block_cycles",
    "combine_cycles",
    "embed_cycles",
    "expert_activation",
    "expert_cycles",
    "gate_cycles",
    "head_cycles",
    "m3vit_cycles",
    "m3vit_routings",
    "mlp_block_cycles",
    "moe_config_for",
    "moe_norm_cycles",
    "moe_runs",
]


def moe_config_for(qm: QuantM3ViT, gemm_cfg: GemmConfig | None = None) -> MoeConfig:
    """The network's MoE engine configuration with the array shape of ``gemm_cfg``.

    Raises
    ------
    ValueError
        If the array's ``cols`` does not divide the embedding dimension (the engine's tokens
        stream in ``cols``-wide beats).
    """
    if gemm_cfg is None:
        return qm.moe_cfg
    cfg = dataclasses.replace(qm.moe_cfg, rows=gemm_cfg.rows, cols=gemm_cfg.cols)
    check_engine_config(cfg)
    return cfg


def embed_cycles(qm: QuantM3ViT, batch: int, gemm_cfg: GemmConfig | None = None) -> int:
    """Patch embedding of ``batch`` images: one GEMM over every patch."""
    cfg = qm.cfg
    patch_k = cfg.channels * cfg.patch_size**2
    rows = batch * (cfg.num_tokens - 1)
    return gemm_cycles(rows, cfg.embed_dim, patch_k, gemm_cfg or qm.gemm_cfg).cycles


def attention_block_cycles(
    qm: QuantM3ViT,
    block: int,
    batch: int,
    gemm_cfg: GemmConfig | None = None,
    attn_cfg: AttentionConfig | None = None,
) -> int:
    """LayerNorm, q / k / v / out projections and attention per head of one block."""
    cfg = qm.cfg
    rows, d = batch * cfg.num_tokens, cfg.embed_dim
    linear = 4 * gemm_cycles(rows, d, d, gemm_cfg or qm.gemm_cfg).cycles
    heads = batch * cfg.num_heads * attention_cycles(cfg.num_tokens, attn_cfg or qm.attn_cfg)
    return layernorm_cycles(rows, qm.blocks[block].norm1.cfg) + linear + heads


def mlp_block_cycles(
    qm: QuantM3ViT, block: int, batch: int, gemm_cfg: GemmConfig | None = None
) -> int:
    """LayerNorm, fc1, GELU and fc2 of a dense block."""
    cfg, g = qm.cfg, gemm_cfg or qm.gemm_cfg
    rows, d, hidden = batch * cfg.num_tokens, cfg.embed_dim, cfg.mlp_hidden
    return (
        layernorm_cycles(rows, qm.blocks[block].norm2.cfg)
        + gemm_cycles(rows, hidden, d, g).cycles
        + gelu_cycles(rows * hidden, qm.moe_cfg.gelu)
        + gemm_cycles(rows, d, hidden, g).cycles
    )


def moe_norm_cycles(qm: QuantM3ViT, block: int, batch: int) -> int:
    """The LayerNorm in front of an MoE layer."""
    return layernorm_cycles(batch * qm.cfg.num_tokens, qm.blocks[block].norm2.cfg)


def moe_runs(routings: list[MoeRouting], moe_cfg: MoeConfig) -> list[dict[str, Any]]:
    """The MoE engine's phase cycles for each image's routing."""
    return [moe_engine_cycles(r, moe_cfg) for r in routings]


def gate_cycles(runs: list[dict[str, Any]]) -> int:
    """Token load with the gate fetch, gate GEMM and routing, summed over images."""
    return sum(r["load_gate_fetch"] + r["gate_gemm"] + r["route"] for r in runs)


def expert_cycles(runs: list[dict[str, Any]], expert: int) -> int:
    """One expert's weight fetch and FFN, summed over images (0 where it is not loaded).

    The fetch/compute overlap the engine achieves across experts is not credited: an expert
    charged on its own waits for its own fetch.
    """
    total = 0
    for run in runs:
        for p in run["per_expert"]:
            if p["expert"] == expert:
                total += p["filled"] - p["fetch_start"] + 1 + p["compute"]
    return total


def combine_cycles(qm: QuantM3ViT, batch: int, moe_cfg: MoeConfig | None = None) -> int:
    """The MoE engine's output phase for every image."""
    return batch * output_cycles(qm.cfg.num_tokens, moe_cfg or qm.moe_cfg)


def head_cycles(qm: QuantM3ViT, task: int, batch: int, gemm_cfg: GemmConfig | None = None) -> int:
    """Final LayerNorm of the class tokens and the task's head GEMM."""
    cfg = qm.cfg
    g = gemm_cfg or qm.gemm_cfg
    return (
        layernorm_cycles(batch, qm.norm.cfg)
        + gemm_cycles(batch, cfg.classes_per_task[task], cfg.embed_dim, g).cycles
    )


def m3vit_routings(
    qm: QuantM3ViT,
    images: npt.ArrayLike,
    task: int,
    *,
    trace: dict[str, npt.NDArray[Any]] | None = None,
) -> dict[int, list[MoeRouting]]:
    """Each MoE block's routing of each image, from the integer network.

    ``trace``, if given, is ``qm.per_layer_outputs(images, task)`` already computed.

    Returns
    -------
    dict
        Block index -> one :class:`~tessera.models.moe.MoeRouting` per image.
    """
    if trace is None:
        trace = qm.per_layer_outputs(images, task)
    out: dict[int, list[MoeRouting]] = {}
    for i, blk in enumerate(qm.blocks):
        if blk.moe is None:
            continue
        tokens = qm.moe_norm(i, trace[f"block{i}.attn"])
        out[i] = [route(img, blk.moe, task, qm.moe_cfg) for img in tokens]
    return out


#: Cycles of the AXI-Lite start write that a GEMM's or attention engine's ``CYCLES`` register
#: counts before the datapath's op begins.
START_CYCLES = 2


def accelerator_cycles(
    qm: QuantM3ViT,
    task: int,
    routings: dict[int, list[MoeRouting]],
    *,
    gemm_cfg: GemmConfig | None = None,
    attn_cfg: AttentionConfig | None = None,
) -> dict[str, int]:
    """Cycles of the network on the accelerator as the RTL runs it, stage by stage.

    Unlike :func:`m3vit_cycles`, which charges the host runtime's ops (each expert an op of its
    own that waits for its own weights, the dense GELU a pass of its own), this follows the
    hardware: images one after another through the encoder datapath (LayerNorm, a stand-alone
    epilogue that requantizes its rows, linear units of GEMM plus a fused epilogue, GELU fused
    into fc1's, the attention engine per head) and ``MoeEngine`` for each MoE layer, which
    overlaps an expert's weight fetch with the previous expert's compute. Each op counts from
    its start to its last output, as ``tessera.sim.m3vit.simulate_m3vit`` measures it.

    Parameters
    ----------
    qm : QuantM3ViT
        The integer network.
    task : int
        Task (its head's width).
    routings : dict
        From :func:`m3vit_routings`; its lists' length is the number of images.
    gemm_cfg : GemmConfig, optional
        Array of the linear units and the MoE engine (default the network's).
    attn_cfg : AttentionConfig, optional
        Attention engine (default the network's).

    Returns
    -------
    dict
        Stage -> cycles for all images: ``embed``, ``block{i}.attn``, ``block{i}.mlp`` (dense
        blocks) or ``block{i}.norm2`` and ``block{i}.moe`` (MoE blocks), ``head.norm`` and
        ``head.gemm`` (the head's GEMM, whose int32 logits leave without an epilogue).
    """
    if not routings:
        raise ValueError("routings is empty: the network has no MoE block, or none was computed")
    cfg, g = qm.cfg, gemm_cfg or qm.gemm_cfg
    attn = attn_cfg or qm.attn_cfg
    images = len(next(iter(routings.values())))
    t, d, hidden = cfg.num_tokens, cfg.embed_dim, cfg.mlp_hidden
    moe_cfg = moe_config_for(qm, gemm_cfg)

    def linear(m: int, n: int, k: int, gelu: bool = False) -> int:
        tail = EPILOGUE_LATENCY + (GELU_LATENCY if gelu else 0)
        return gemm_cycles(m, n, k, g).cycles - START_CYCLES + tail

    def norm(rows: int, ln_cfg: Any) -> int:
        # LayerNorm, then its rows requantized to int8 by a stand-alone epilogue: one beat of
        # ``cols`` values per cycle, the pipeline and one cycle to finish
        beats = rows * -(-d // g.cols)
        return layernorm_cycles(rows, ln_cfg) + beats + EPILOGUE_LATENCY + 1

    patch_k = cfg.channels * cfg.patch_size**2
    out = {"embed": images * linear(t - 1, d, patch_k)}
    for i, blk in enumerate(qm.blocks):
        heads = cfg.num_heads * (attention_cycles(t, attn) - START_CYCLES)
        out[f"block{i}.attn"] = images * (norm(t, blk.norm1.cfg) + 4 * linear(t, d, d) + heads)
        if blk.moe is None:
            mlp = linear(t, hidden, d, gelu=True) + linear(t, d, hidden)
            out[f"block{i}.mlp"] = images * (norm(t, blk.norm2.cfg) + mlp)
            continue
        out[f"block{i}.norm2"] = images * norm(t, blk.norm2.cfg)
        out[f"block{i}.moe"] = sum(r["cycles"] for r in moe_runs(routings[i], moe_cfg))
    out["head.norm"] = images * norm(1, qm.norm.cfg)
    out["head.gemm"] = images * gemm_cycles(1, cfg.classes_per_task[task], d, g).cycles
    return out


def m3vit_cycles(
    qm: QuantM3ViT,
    task: int,
    routings: dict[int, list[MoeRouting]],
    *,
    gemm_cfg: GemmConfig | None = None,
    attn_cfg: AttentionConfig | None = None,
) -> dict[str, int]:
    """Cycles of every op of the network's graph for one batch (keys as in ``m3vit_graph``).

    Parameters
    ----------
    qm : QuantM3ViT
        The integer network.
    task : int
        Task (selects the gates, which :func:`m3vit_routings` already applied, and the head).
    routings : dict
        From :func:`m3vit_routings`; its lists' length is the batch size.
    gemm_cfg : GemmConfig, optional
        Array of the GEMM engine and the MoE engine (default the network's).
    attn_cfg : AttentionConfig, optional
        Attention engine (default the network's).

    Returns
    -------
    dict
        Op name -> cycles; the network's cycles for the batch are the sum.
    """
    if not routings:
        raise ValueError("routings is empty: the network has no MoE block, or none was computed")
    batch = len(next(iter(routings.values())))
    moe_cfg = moe_config_for(qm, gemm_cfg)
    out = {"embed": embed_cycles(qm, batch, gemm_cfg)}
    for i, blk in enumerate(qm.blocks):
        out[f"block{i}.attn"] = attention_block_cycles(qm, i, batch, gemm_cfg, attn_cfg)
        if blk.moe is None:
            out[f"block{i}.mlp"] = mlp_block_cycles(qm, i, batch, gemm_cfg)
            continue
        runs = moe_runs(routings[i], moe_cfg)
        out[f"block{i}.norm2"] = moe_norm_cycles(qm, i, batch)
        out[f"block{i}.gates"] = gate_cycles(runs)
        for e in range(qm.cfg.num_experts):
            out[f"block{i}.expert{e}"] = expert_cycles(runs, e)
        out[f"block{i}.combine"] = combine_cycles(qm, batch, moe_cfg)
    out["head"] = head_cycles(qm, task, batch, gemm_cfg)
    return out


def expert_activation(routings: dict[int, list[MoeRouting]], experts: int) -> npt.NDArray[Any]:
    """Tokens routed to each expert: ``(MoE blocks, experts)`` counts over all images."""
    counts = np.zeros((len(routings), experts), dtype=np.int64)
    for row, runs in enumerate(routings.values()):
        for r in runs:
            counts[row] += [len(q) for q in r.queue_tokens]
    return counts
