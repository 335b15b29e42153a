"""The whole quantized tiny M³ViT on one real digits image, every engine step on RTL (Icarus),
chained on the RTL's own outputs: bit-exact with the integer network stage by stage, and its
cycles against the whole-network cycle model."""

from __future__ import annotations

import dataclasses
import re
import types

import numpy as np
import pytest

from tessera.estimators.m3vit_cycles import (
    accelerator_cycles,
    m3vit_cycles,
    m3vit_routings,
    moe_config_for,
)
from tessera.estimators.moe_cycles import moe_engine_cycles
from tessera.models.m3vit import digits_tasks, load_m3vit
from tessera.models.m3vit_quant import quantize_m3vit
from tessera.sim.encoder import block_program
from tessera.sim.m3vit import simulate_m3vit

# The cycle model was checked while written on image 3, task 0, 4 x 4 and 8 x 2 arrays.
IMAGE, TASK = 5, 1


@pytest.fixture(scope="module")
def setup():
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:64], "int8")
    gemm_cfg = dataclasses.replace(qm.gemm_cfg, rows=2, cols=8)
    return qm, test.images, gemm_cfg


@pytest.fixture(scope="module")
def run(setup):
    qm, images, gemm_cfg = setup
    return simulate_m3vit(qm, images[IMAGE], TASK, sim="icarus", gemm_cfg=gemm_cfg)


def test_whole_network_bit_exact_on_rtl(setup, run) -> None:
    qm, images, _ = setup
    stages = ["embed"]
    for i, blk in enumerate(qm.blocks):
        stages += [f"block{i}.attn"]
        stages += [f"block{i}.mlp"] if blk.moe is None else [f"block{i}.norm2", f"block{i}.moe"]
    assert [s.name for s in run.stages] == [*stages, "head.norm"]
    for stage in run.stages:
        assert stage.passed, f"{stage.name}: {stage.message}"
        assert stage.cycles > 0
        assert all(op.passed for op in stage.ops)
    assert run.passed
    # Each stage's RTL output is the integer network's own activation for this image.
    trace = qm.per_layer_outputs(images[IMAGE : IMAGE + 1], TASK)
    for key in ("embed", *(f"block{i}.{p}" for i in range(qm.cfg.depth) for p in ("attn", "out"))):
        np.testing.assert_array_equal(run.outputs[key], trace[key][0], err_msg=key)
    np.testing.assert_array_equal(run.outputs["norm"], trace["norm"][0])
    for i, blk in enumerate(qm.blocks):
        if blk.moe is not None:
            tokens = qm.moe_norm(i, trace[f"block{i}.attn"])[0]
            np.testing.assert_array_equal(run.outputs[f"block{i}.norm2"], tokens)
    np.testing.assert_array_equal(run.logits, qm.forward(images[IMAGE : IMAGE + 1], TASK)[0])


def test_cycles_equal_the_accelerator_model(setup, run) -> None:
    """Every stage's measured cycles equal the whole-network accelerator model's, on an array
    shape, image and task the model was not written from; the host runtime's per-op model
    charges more for an MoE layer, whose experts it runs one after the other."""
    qm, images, gemm_cfg = setup
    routings = m3vit_routings(qm, images[IMAGE : IMAGE + 1], TASK)
    model = accelerator_cycles(qm, TASK, routings, gemm_cfg=gemm_cfg)
    measured = run.cycles_by_stage()
    assert measured == {k: v for k, v in model.items() if k != "head.gemm"}
    moe_cfg = moe_config_for(qm, gemm_cfg)
    ops = m3vit_cycles(qm, TASK, routings, gemm_cfg=gemm_cfg)
    for i, blk in enumerate(qm.blocks):
        if blk.moe is not None:
            fused = moe_engine_cycles(routings[i][0], moe_cfg)["cycles"]
            assert measured[f"block{i}.moe"] == fused
            split = sum(
                v
                for k, v in ops.items()
                if re.fullmatch(rf"block{i}\.(gates|expert\d+|combine)", k)
            )
            assert split > fused


def test_bad_requests(setup) -> None:
    qm, images, gemm_cfg = setup
    with pytest.raises(ValueError, match=r"image must be one \(1, 8, 8\) image"):
        simulate_m3vit(qm, images[:2], TASK, sim="icarus", gemm_cfg=gemm_cfg)
    with pytest.raises(ValueError, match="image"):
        simulate_m3vit(qm, np.zeros((1, 4, 4)), TASK, sim="icarus")
    with pytest.raises(ValueError, match="task"):
        simulate_m3vit(qm, images[0], 5, sim="icarus")
    # An MoE block's program is its attention half and the norm feeding the MoE layer.
    program, _ = block_program(qm, 1)
    assert [op.name for op in program][-3:] == ["out", "norm2", "norm2.rq"]
    broken = types.SimpleNamespace(blocks=(dataclasses.replace(qm.blocks[0], fc1=None),))
    with pytest.raises(ValueError, match="neither a complete dense MLP"):
        block_program(broken, 0)
