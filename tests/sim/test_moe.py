"""MoeEngine RTL on Icarus and Verilator through cocotb + cocotbext-axi, bit-exact vs ``moe_layer``.

Every case checks every output byte, the ``QUEUE_LEN`` window against the routing's queue
lengths, ``WEIGHT_BYTES`` / ``EXPERTS_LOADED`` against the experts actually needed, and (without
stalls) ``CYCLES`` against the exact cycle model. The default run covers the small top-2 config
on both simulators, an odd top-1 config (3 x 3 array, 1-byte bus, multi-burst fetches), a 1 x 1
array and the tiny M3ViT's real MoE layer on Icarus; ``-m slow`` adds those on Verilator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tessera.estimators.moe_cycles import moe_engine_cycles
from tessera.models.moe import MoeConfig, moe_image_layout, moe_layer
from tessera.sim.moe import MoeCase, simulate_moe

SMALL = MoeConfig(
    dim=8, experts=4, expert_hidden=8, top_k=2, tasks=2, max_tokens=32, rows=2, cols=4
)
# Non-power-of-two array and hidden width (padded last tile), top-1, five experts, a 1-byte bus
# (expert fetches of several 256-beat bursts), symmetric saturation and convergent rounding.
ODD = MoeConfig(
    dim=12,
    experts=5,
    expert_hidden=10,
    top_k=1,
    tasks=1,
    max_tokens=16,
    rows=3,
    cols=3,
    bus_bytes=1,
    rounding="RND_CONV",
    overflow="SAT_SYM",
)
# The smallest engine: a 1 x 1 array, one token, hidden width 1, biases split across 2-byte beats.
EXTREME = MoeConfig(
    dim=2, experts=2, expert_hidden=1, top_k=2, tasks=1, max_tokens=1, rows=1, cols=1, bus_bytes=2
)
STALLS = {"idle": 0.3, "backpressure": 0.3, "memory_stall": 0.3}

SMALL_CASES = [
    MoeCase(1, task=0, seed=1, name="one token"),
    MoeCase(5, task=1, seed=2, **STALLS, name="odd count, stalls"),
    MoeCase(3, task=0, seed=3, skew="one", expert=2, name="all to expert 2"),
    MoeCase(32, task=1, seed=4, skew="spread", **STALLS, name="max_tokens, every expert"),
    MoeCase(17, task=0, seed=5, name="17 tokens"),
]
ODD_CASES = [
    MoeCase(4, seed=6, name="4 tokens"),
    MoeCase(16, seed=7, skew="one", expert=4, name="all to expert 4"),
    MoeCase(11, seed=8, skew="spread", **STALLS, name="every expert, stalls"),
]
SLOW = pytest.mark.slow


def _routing(cfg: MoeConfig, case: MoeCase):
    x, weights = case.inputs(cfg)
    return moe_layer(x, weights, case.task, cfg)[1]


def _check(cfg: MoeConfig, cases: list[MoeCase], results) -> None:
    assert len(results) == len(cases)
    for case, res in zip(cases, results, strict=True):
        # The testbench compared outputs, queue lengths, WEIGHT_BYTES and EXPERTS_LOADED.
        assert res.passed, f"{res.simulator} {res.case}: {res.message}"
        model = moe_engine_cycles(_routing(cfg, case), cfg)["cycles"]
        if case.stall_free:
            assert res.cycles == model, f"{res.case}: CYCLES {res.cycles}, model {model}"
        else:
            assert res.cycles > model, f"{res.case}: stalls cannot save cycles"


def test_cases_route_as_named():
    """The skewed cases really route as their names say (so the RTL sees those routings)."""
    for cfg, case in ((SMALL, SMALL_CASES[2]), (ODD, ODD_CASES[1])):
        lengths = _routing(cfg, case).queue_lengths
        assert lengths[case.expert] == case.tokens
    for cfg, case in ((SMALL, SMALL_CASES[3]), (ODD, ODD_CASES[2])):
        assert np.all(_routing(cfg, case).queue_lengths > 0)
    # top-1 with one favoured expert loads exactly one expert
    assert np.count_nonzero(_routing(ODD, ODD_CASES[1]).queue_lengths) == 1


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_small_config(sim):
    _check(SMALL, SMALL_CASES, simulate_moe(SMALL, SMALL_CASES, sim=sim))


@pytest.mark.parametrize("sim", ["icarus", pytest.param("verilator", marks=SLOW)])
def test_odd_config_top1_byte_bus(sim):
    lay = moe_image_layout(ODD)
    assert len(lay.bursts(lay.expert_bytes)) > 1  # fetches really take several bursts
    _check(ODD, ODD_CASES, simulate_moe(ODD, ODD_CASES, sim=sim))


@pytest.mark.parametrize("sim", ["icarus", pytest.param("verilator", marks=SLOW)])
def test_extreme_config_one_by_one_array(sim):
    cases = [MoeCase(1, seed=10, name="one token"), MoeCase(1, seed=11, **STALLS, name="stalls")]
    _check(EXTREME, cases, simulate_moe(EXTREME, cases, sim=sim))


@pytest.fixture(scope="module")
def m3vit_layer():
    """The tiny M3ViT's first MoE layer: weights, and its real input tokens for one digit."""
    from tessera.models.m3vit import digits_tasks, load_m3vit
    from tessera.models.m3vit_quant import quantize_m3vit

    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:32], "int8")
    index = next(i for i, b in enumerate(qm.blocks) if b.moe is not None)
    block = qm.blocks[index]
    task = 1
    trace = qm.per_layer_outputs(test.images[:1], task)
    tokens = block.norm2(trace[f"block{index}.attn"])[0]
    return qm.moe_cfg, block.moe, tokens, task


@pytest.mark.parametrize("sim", ["icarus", pytest.param("verilator", marks=SLOW)])
def test_m3vit_moe_layer(sim, m3vit_layer):
    layer_cfg, weights, tokens, task = m3vit_layer
    # A smaller array than the network's 16 x 16 keeps the simulation short; the layer's
    # integers do not depend on the array shape.
    cfg = dataclasses.replace(layer_cfg, rows=4, cols=8)
    y_net, routing = moe_layer(tokens, weights, task, layer_cfg)
    y_engine, _ = moe_layer(tokens, weights, task, cfg)
    np.testing.assert_array_equal(y_net, y_engine)
    assert len(routing.loaded_experts) >= 2
    cases = [
        MoeCase(len(tokens), task=task, weights=weights, x=tokens, name="digit"),
        MoeCase(len(tokens), task=task, weights=weights, x=tokens, seed=9, **STALLS, name="stalls"),
    ]
    _check(cfg, cases, simulate_moe(cfg, cases, sim=sim))


def test_simulate_rejects_bad_cases():
    with pytest.raises(ValueError, match="tokens must be in"):
        simulate_moe(SMALL, [MoeCase(33)])
    with pytest.raises(ValueError, match="task must be in"):
        simulate_moe(SMALL, [MoeCase(4, task=2)])
    with pytest.raises(ValueError, match="dim=10 must be a multiple of cols=4"):
        simulate_moe(dataclasses.replace(SMALL, dim=10), [MoeCase(4)])
    with pytest.raises(ValueError, match="skew"):
        MoeCase(4, skew="sideways")
    with pytest.raises(ValueError, match="memory_stall"):
        MoeCase(4, memory_stall=1.0)
    with pytest.raises(ValueError, match="unknown simulator"):
        simulate_moe(SMALL, [MoeCase(4)], sim="modelsim")


def test_first_mismatch_names_token_column_and_values():
    from tessera.sim.moe_testbench import first_mismatch

    expected = np.arange(24) % 7 - 3
    assert first_mismatch(expected.copy(), expected, 8) is None
    got = expected.copy()
    got[19] += 1
    assert first_mismatch(got, expected, 8) == {
        "token": 2,
        "col": 3,
        "expected": int(expected[19]),
        "received": int(expected[19]) + 1,
        "reason": "value differs",
    }
    short = first_mismatch(expected[:16], expected, 8)
    assert (short["token"], short["col"], short["received"]) == (2, 0, None)
    assert first_mismatch(np.concatenate([expected, [5]]), expected, 8)["token"] == 3


@SLOW
@pytest.mark.parametrize("seed", range(8))
def test_random_config_soak(seed):
    """Random engine shapes, formats and routings on Icarus, with and without stalls."""
    rng = np.random.default_rng(100 + seed)
    cols = int(rng.integers(1, 5))
    experts = int(rng.integers(1, 7))
    cfg = MoeConfig(
        dim=cols * int(rng.integers(1, 5)),
        experts=experts,
        expert_hidden=int(rng.integers(1, 13)),
        top_k=int(rng.integers(1, experts + 1)),
        tasks=int(rng.integers(1, 4)),
        max_tokens=int(rng.integers(1, 20)),
        rows=int(rng.integers(1, 5)),
        cols=cols,
        acc_bits=int(rng.integers(16, 33)),
        act_bits=int(rng.integers(4, 9)),
        bus_bytes=int(2 ** rng.integers(0, 7)),
        rounding=str(rng.choice(["RND", "RND_INF", "RND_CONV", "TRN", "RND_ZERO"])),
        overflow=str(rng.choice(["SAT", "SAT_SYM", "WRAP"])),
    )
    cases = []
    for i in range(3):
        stall = float(rng.choice([0.0, 0.4]))
        cases.append(
            MoeCase(
                int(rng.integers(1, cfg.max_tokens + 1)),
                task=int(rng.integers(0, cfg.tasks)),
                seed=seed * 10 + i,
                skew=str(rng.choice(["random", "one", "spread"])),
                expert=int(rng.integers(0, cfg.experts)),
                idle=stall,
                backpressure=stall,
                memory_stall=stall,
            )
        )
    _check(cfg, cases, simulate_moe(cfg, cases, sim="icarus"))
