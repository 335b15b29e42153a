"""The M³ViT as an op graph: every stage with its float (torch) and integer (engine) form.

:func:`m3vit_graph` turns a :class:`~tessera.models.m3vit_quant.QuantM3ViT` (and the float
:class:`~tessera.models.m3vit.M3ViT` it was quantized from) into a
:class:`~tessera.host.graph.Graph` for one task. Dense stages are one op each; each
mixture-of-experts layer is split into its norm, its gate, **one op per expert** and the combine,
so the runtime can place experts individually (hot experts on the fast device). On an FPGA
device every op is bit-exact with the integer network (all ops there give exactly
``QuantM3ViT.forward``); on a torch device it runs the float module.

FPGA time per op comes from the engines' validated cycle models: the GEMM engine for linear
layers, the LayerNorm, GELU and attention engines, and the MoE engine (gate phase, each expert's
weight fetch and FFN, output phase). Stages are charged as if their engines ran one after the
other; the fetch/compute overlap the MoE engine achieves across experts is not credited when
experts are separate ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tessera.estimators.m3vit_cycles import (
    attention_block_cycles,
    combine_cycles,
    embed_cycles,
    expert_cycles,
    gate_cycles,
    head_cycles,
    mlp_block_cycles,
    moe_norm_cycles,
    moe_runs,
)
from tessera.host.device import FunctionOp
from tessera.host.graph import Graph, Node, QFormat
from tessera.models.m3vit import M3ViT
from tessera.models.m3vit_quant import QuantM3ViT
from tessera.models.moe import route

__all__ = ["M3ViTOp", "m3vit_graph"]

IntArray = npt.NDArray[np.int64]


class M3ViTOp(FunctionOp):
    """One stage of the network: an integer function, a float function and a cycle function.

    Parameters
    ----------
    name, kind : str
        Op name and kind.
    model : M3ViT
        The float network (resident once per torch device the op runs on).
    run_int, cycles : callable
        Integer stage and its cycle count, both on raw integer inputs.
    run_float : callable
        ``run_float(model, *tensors)``: the float stage with the model on the tensors' device.
    out_shape : tuple of int
        Output shape per image (the batch dimension comes first).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        model: M3ViT,
        run_int: Callable[..., IntArray],
        run_float: Callable[..., torch.Tensor],
        cycles: Callable[..., int],
        out_shape: tuple[int, ...],
    ) -> None:
        super().__init__(
            name, kind, run_int, run_float, cycles, lambda batch: (batch, *out_shape), model
        )


def m3vit_graph(qm: QuantM3ViT, task: int) -> Graph:
    """The op graph of ``qm`` for task ``task``; input ``"images"``, output ``"head"``.

    Parameters
    ----------
    qm : QuantM3ViT
        The integer network (its float model is ``qm.model``).
    task : int
        Task whose gates and head the graph uses.

    Returns
    -------
    Graph
        Nodes in execution order with the integer formats of their outputs.
    """
    cfg, model = qm.cfg, qm.model
    if not 0 <= task < cfg.num_tasks:
        raise ValueError(f"task must be in [0, {cfg.num_tasks - 1}], got {task}")
    model.eval()
    d, t = cfg.embed_dim, cfg.num_tokens
    res = QFormat(2.0**-qm.res_frac, qm.preset.residual_bits)
    nodes: list[Node] = []

    def add(
        name: str,
        kind: str,
        inputs: tuple[str, ...],
        fmt: QFormat,
        run_int: Callable[..., IntArray],
        run_float: Callable[..., torch.Tensor],
        cycles: Callable[..., int],
        out_shape: tuple[int, ...] = (t, d),
    ) -> str:
        op = M3ViTOp(name, kind, model, run_int, run_float, cycles, out_shape)
        nodes.append(Node(op, inputs, fmt))
        return name

    mcfg = qm.moe_cfg
    x = add(
        "embed",
        "patch_embed",
        ("images",),
        res,
        qm.embed,
        lambda m, img: m.embed(img),
        lambda px: embed_cycles(qm, len(px)),
    )
    for i, blk in enumerate(qm.blocks):
        x = add(
            f"block{i}.attn",
            "attention_block",
            (x,),
            res,
            lambda xr, i=i: qm.attention_block(i, xr),
            lambda m, xf, i=i: xf + m.blocks[i].attn(m.blocks[i].norm1(xf)),
            lambda xr, i=i: attention_block_cycles(qm, i, len(xr)),
        )
        if blk.moe is None:
            x = add(
                f"block{i}.mlp",
                "mlp_block",
                (x,),
                res,
                lambda xr, i=i: qm.mlp_block(i, xr),
                lambda m, xf, i=i: xf + m.blocks[i].ffn(m.blocks[i].norm2(xf)),
                lambda xr, i=i: mlp_block_cycles(qm, i, len(xr)),
            )
            continue
        moe = blk.moe
        h_fmt = QFormat(moe.quant.x_scale, qm.preset.act_bits)
        gate_fmt = QFormat(2.0**-mcfg.gate_frac, mcfg.gate_bits + 1)
        part_fmt = QFormat(moe.quant.y_scale * 2.0**-mcfg.gate_frac, 48)

        def engine_runs(hr: IntArray, moe: Any = moe) -> list[dict[str, Any]]:
            return moe_runs([route(img, moe, task, mcfg) for img in hr], mcfg)

        h = add(
            f"block{i}.norm2",
            "moe_norm",
            (x,),
            h_fmt,
            lambda xr, i=i: qm.moe_norm(i, xr),
            lambda m, xf, i=i: m.blocks[i].norm2(xf),
            lambda xr, i=i: moe_norm_cycles(qm, i, len(xr)),
        )

        def gate_float(m: M3ViT, hf: torch.Tensor, i: int = i) -> torch.Tensor:
            indices, weights, _ = m.blocks[i].ffn.route(hf, task)
            dense = torch.zeros((*hf.shape[:-1], cfg.num_experts), device=hf.device)
            return dense.scatter(-1, indices, weights)

        gates = add(
            f"block{i}.gates",
            "moe_gate",
            (h,),
            gate_fmt,
            lambda hr, i=i: qm.moe_gates(i, hr, task),
            gate_float,
            lambda hr, runs=engine_runs: gate_cycles(runs(hr)),
            (t, cfg.num_experts),
        )
        experts = []
        for e in range(cfg.num_experts):

            def expert_float(
                m: M3ViT, hf: torch.Tensor, g: torch.Tensor, i: int = i, e: int = e
            ) -> torch.Tensor:
                out = torch.zeros_like(hf)
                sel = g[..., e] != 0
                if sel.any():
                    out[sel] = m.blocks[i].ffn.experts[e](hf[sel]) * g[..., e][sel].unsqueeze(-1)
                return out

            experts.append(
                add(
                    f"block{i}.expert{e}",
                    "expert",
                    (h, gates),
                    part_fmt,
                    lambda hr, gr, i=i, e=e: qm.moe_expert(i, e, hr, gr),
                    expert_float,
                    lambda hr, gr, e=e, runs=engine_runs: expert_cycles(runs(hr), e),
                )
            )
        x = add(
            f"block{i}.combine",
            "moe_combine",
            (x, *experts),
            res,
            lambda xr, *parts, i=i: qm.moe_combine(i, xr, sum(parts)),
            lambda m, xf, *parts: xf + sum(parts),
            lambda xr, *parts: combine_cycles(qm, len(xr)),
        )
    head_fmt = QFormat(qm.logit_scale(task), 32)
    add(
        "head",
        "head",
        (x,),
        head_fmt,
        lambda xr: qm.head(xr, task),
        lambda m, xf: m.heads[task](m.norm(xf)[:, 0]),
        lambda xr: head_cycles(qm, task, len(xr)),
        (cfg.classes_per_task[task],),
    )
    return Graph(nodes, {"images": QFormat(qm.in_scale, qm.preset.act_bits)})
