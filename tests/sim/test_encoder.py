"""One encoder block of the quantized tiny M³ViT on a real digits image, every arithmetic op on
RTL (LayerNorm, Epilogue, LinearUnit, AttentionEngine), bit-exact on Icarus and Verilator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tessera.estimators.cycles import attention_cycles, gemm_cycles, layernorm_cycles
from tessera.estimators.m3vit_cycles import START_CYCLES, attention_block_cycles
from tessera.models.m3vit import digits_tasks, load_m3vit
from tessera.models.m3vit_quant import quantize_m3vit
from tessera.rtl.epilogue import latency as epilogue_latency
from tessera.sim.encoder import (
    block_program,
    encoder_design,
    first_difference,
    run_program_golden,
    simulate_encoder_layer,
)

#: RTL ops of a dense block: 2 x (norm + requant), q, k, v, one attention per head, out, fc1, fc2.
RTL_OPS = ["norm1", "norm1.rq", "q", "k", "v", "attn.h0", "attn.h1", "out", "norm2", "norm2.rq",
           "fc1", "fc2"]  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:64], "int8")
    return qm, test.images


@pytest.mark.parametrize(
    ("sim", "stalls"),
    [
        ("icarus", 0.0),
        ("verilator", 0.0),
        pytest.param("verilator", 0.3, marks=pytest.mark.slow, id="verilator-stalls"),
    ],
)
def test_block0_bit_exact_on_rtl(setup, sim: str, stalls: float) -> None:
    qm, images = setup
    result = simulate_encoder_layer(
        qm, images[3], block=0, task=0, sim=sim, idle=stalls, backpressure=stalls, seed=7
    )
    assert [op.name for op in result.ops] == RTL_OPS
    for op in result.ops:
        assert op.passed, f"{sim} {op.name}: {op.message}"
        assert op.cycles > 0
    assert result.trace_checks == {"block0.attn": True, "block0.out": True}
    assert result.passed and result.first_mismatch is None
    # The RTL's block output is the quantized network's own trace for this image.
    trace = qm.per_layer_outputs(images[3:4], 0)
    np.testing.assert_array_equal(result.outputs["fc2"], trace["block0.out"][0])
    if stalls:
        return
    # The engines' cycle models, composed op by op, give the RTL's counts exactly: GEMM and
    # attention CYCLES registers, LayerNorm from first input to last output, and each fused
    # LinearUnit = its GEMM + the epilogue's pipeline latency.
    gcfg = dataclasses.replace(qm.gemm_cfg, rows=4, cols=4)  # simulate_encoder_layer's default
    design = encoder_design(qm, 0, gcfg)
    t, d, hidden = qm.cfg.num_tokens, qm.cfg.embed_dim, qm.cfg.mlp_hidden
    model = {
        "q": gemm_cycles(t, d, d, gcfg).cycles,
        "k": gemm_cycles(t, d, d, gcfg).cycles,
        "v": gemm_cycles(t, d, d, gcfg).cycles,
        "out": gemm_cycles(t, d, d, gcfg).cycles,
        "fc1": gemm_cycles(t, hidden, d, gcfg).cycles,
        "fc2": gemm_cycles(t, d, hidden, gcfg).cycles,
        "attn.h0": attention_cycles(t, qm.attn_cfg),
        "attn.h1": attention_cycles(t, qm.attn_cfg),
    }
    engine = {op.name: op.engine_cycles for op in result.ops if op.engine_cycles is not None}
    assert engine == model
    by_op = result.cycles_by_op()
    blk = qm.blocks[0]
    assert by_op["norm1"] == layernorm_cycles(t, blk.norm1.cfg)
    assert by_op["norm2"] == layernorm_cycles(t, blk.norm2.cfg)
    # The testbench's count of an op starts when its start write completes, START_CYCLES after
    # the engine's own CYCLES count starts.
    start = START_CYCLES
    assert by_op["attn.h0"] == by_op["attn.h1"] == model["attn.h0"] - start
    unit = {"q": "qkv", "k": "qkv", "v": "qkv", "out": "residual", "fc1": "fc1", "fc2": "residual"}
    for name, linear in unit.items():
        epi = design.linear[linear].epi
        assert by_op[name] == model[name] - start + epilogue_latency(epi), name
    assert result.cycles == sum(by_op.values())
    # The whole-network model's attention stage is these measured counts: LayerNorm, the four
    # projections' and both heads' CYCLES registers.
    measured = by_op["norm1"] + sum(
        engine[op] for op in ("q", "k", "v", "out", "attn.h0", "attn.h1")
    )
    assert attention_block_cycles(qm, 0, 1, gcfg) == measured


def test_golden_program_is_the_network(setup) -> None:
    """The program the RTL runs, executed on the golden units, is the network's block 2 too."""
    qm, images = setup
    trace = qm.per_layer_outputs(images[:1], 1)
    program, arrays = block_program(qm, 2)
    design = encoder_design(qm, 2, qm.gemm_cfg)
    tensors = run_program_golden(program, arrays, design, trace["block1.out"][0])
    np.testing.assert_array_equal(tensors["out"], trace["block2.attn"][0])
    np.testing.assert_array_equal(tensors["fc2"], trace["block2.out"][0])


def test_bad_requests(setup) -> None:
    qm, images = setup
    with pytest.raises(ValueError, match="MoE"):
        simulate_encoder_layer(qm, images[0], block=1, sim="icarus")
    with pytest.raises(ValueError, match="block"):
        simulate_encoder_layer(qm, images[0], block=9, sim="icarus")
    with pytest.raises(ValueError, match="image"):
        simulate_encoder_layer(qm, images[:2], block=0, sim="icarus")


def test_first_difference_names_the_element() -> None:
    want = np.zeros((3, 4), dtype=np.int64)
    got = want.copy()
    assert first_difference("q", got, want) is None
    got[1, 2], got[2, 0] = -7, 9
    assert first_difference("q", got, want) == {
        "tensor": "q",
        "token": 1,
        "column": 2,
        "expected": 0,
        "received": -7,
    }
    assert first_difference("q", got[:2], want)["received"] == [2, 4]
