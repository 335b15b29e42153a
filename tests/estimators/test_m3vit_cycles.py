"""Whole-network cycles of the M³ViT, composed from the engines' cycle models."""

from __future__ import annotations

import pytest

from tessera.estimators.m3vit_cycles import (
    expert_activation,
    m3vit_cycles,
    m3vit_routings,
    moe_config_for,
)
from tessera.estimators.moe_cycles import moe_engine_cycles
from tessera.host.m3vit import m3vit_graph
from tessera.models.gemm import GemmConfig
from tessera.models.moe import moe_layer


@pytest.fixture(scope="module")
def net():
    from tessera.models.m3vit import digits_tasks, load_m3vit
    from tessera.models.m3vit_quant import quantize_m3vit

    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:64], "int8")
    return qm, test.images[:3]


@pytest.mark.parametrize("task", [0, 1])
def test_ops_equal_the_host_graph_charges(net, task):
    """The runtime's per-op FPGA cycles, computed from each op's own inputs, equal the model."""
    qm, images = net
    graph = m3vit_graph(qm, task)
    values = {"images": qm.quantize_images(images)}
    charged = {}
    for node in graph.nodes:
        args = [values[s] for s in node.inputs]
        charged[node.name] = node.op.fpga_cycles(*args)
        values[node.name] = node.op.run_int(*args)
    assert charged == m3vit_cycles(qm, task, m3vit_routings(qm, images, task))


def test_routings_are_the_golden_layers(net):
    """Routing per image equals the golden MoE layer's on the same tokens."""
    qm, images = net
    routings = m3vit_routings(qm, images, 1)
    trace = qm.per_layer_outputs(images, 1)
    for block, per_image in routings.items():
        tokens = qm.moe_norm(block, trace[f"block{block}.attn"])
        for img, routing in zip(tokens, per_image, strict=True):
            _, want = moe_layer(img, qm.blocks[block].moe, 1, qm.moe_cfg)
            assert [list(q) for q in routing.queue_tokens] == [list(q) for q in want.queue_tokens]
    counts = expert_activation(routings, qm.cfg.num_experts)
    assert counts.shape == (len(routings), qm.cfg.num_experts)
    assert (counts.sum(axis=1) == len(images) * qm.cfg.num_tokens * qm.moe_cfg.top_k).all()


def test_moe_ops_bound_the_fused_engine(net):
    """Experts charged one by one never beat the engine, which overlaps fetch and compute."""
    qm, images = net
    routings = m3vit_routings(qm, images, 0)
    ops = m3vit_cycles(qm, 0, routings)
    for block, per_image in routings.items():
        fused = sum(moe_engine_cycles(r, qm.moe_cfg)["cycles"] for r in per_image)
        split = sum(v for k, v in ops.items() if k.startswith(f"block{block}.") and "attn" not in k)
        split -= ops[f"block{block}.norm2"]
        assert fused <= split <= 1.5 * fused


def test_larger_arrays_are_faster(net):
    qm, images = net
    routings = m3vit_routings(qm, images, 0)
    totals = [
        sum(m3vit_cycles(qm, 0, routings, gemm_cfg=GemmConfig(rows=n, cols=n)).values())
        for n in (2, 4, 8, 16)
    ]
    assert totals == sorted(totals, reverse=True) and totals[0] > 4 * totals[-1]
    with pytest.raises(ValueError, match="cols"):
        moe_config_for(qm, GemmConfig(rows=4, cols=3))
    with pytest.raises(ValueError, match="routings"):
        m3vit_cycles(qm, 0, {})
