"""Golden MoE layer: queued vs token-by-token schedule, a Python-int reference, the float model,
the softmax over the selected logits, the weight-traffic model and validation."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tessera.estimators.moe_cycles import gemm_tile_cycles, moe_engine_cycles
from tessera.models.gelu import gelu
from tessera.models.gemm import Requant
from tessera.models.moe import (
    MoeConfig,
    MoeQuant,
    MoeWeights,
    expert_ffn,
    moe_image_layout,
    moe_layer,
    moe_layer_float,
    moe_layer_naive,
    moe_traffic,
    moe_weight_image,
    route,
    select_top_k,
)
from tessera.models.softmax import softmax

TINY = MoeConfig(dim=32, experts=4, expert_hidden=32, top_k=2, tasks=2, max_tokens=256)


def _float_params(cfg: MoeConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    d, e, h = cfg.dim, cfg.experts, cfg.expert_hidden
    return {
        "gate": rng.normal(size=(cfg.tasks, d, e)),
        "w1": rng.normal(size=(e, d, h)) / math.sqrt(d),
        "b1": 0.1 * rng.normal(size=(e, h)),
        "w2": rng.normal(size=(e, h, d)) / math.sqrt(h),
        "b2": 0.1 * rng.normal(size=(e, d)),
    }


def _random_layer(cfg: MoeConfig, seed: int, tokens: int) -> tuple[MoeWeights, np.ndarray]:
    """Float weights quantized with from_float, calibrated on the very tokens returned."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(tokens, cfg.dim))
    weights = MoeWeights.from_float(cfg, calibration=xs, **_float_params(cfg, rng))
    return weights, weights.quantize_tokens(xs, cfg)


def _int_layer(cfg: MoeConfig, rng: np.random.Generator, gate: np.ndarray) -> MoeWeights:
    """Random integer expert weights with a given integer gate and plausible scales."""
    d, e, h = cfg.dim, cfg.experts, cfg.expert_hidden
    lo, hi = cfg.weight_range
    quant = MoeQuant.from_scales(
        cfg,
        x_scale=1 / 32,
        y_scale=3 / 127,
        gate_scale=[1 / 256] * cfg.tasks,
        w1_scale=[1 / (40 * math.sqrt(d))] * e,
        hidden_scale=[4 / 127] * e,
        w2_scale=[1 / (40 * math.sqrt(h))] * e,
    )
    return MoeWeights(
        gate=gate,
        w1=rng.integers(lo, hi + 1, size=(e, d, h)),
        b1=rng.integers(-2000, 2001, size=(e, h)),
        w2=rng.integers(lo, hi + 1, size=(e, h, d)),
        b2=rng.integers(-2000, 2001, size=(e, d)),
        quant=quant,
    )


# --- an independent Python-int reference -----------------------------------------------------
def _round_half_away(q: Fraction) -> int:
    floor = q.numerator // q.denominator
    rest = q - floor
    return floor + 1 if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and q >= 0) else floor


def _requant(acc: int, rq: Requant, bits: int) -> int:
    y = _round_half_away(Fraction(acc * rq.multiplier, 2**rq.shift))
    return min(max(y, -(2 ** (bits - 1))), 2 ** (bits - 1) - 1)


def _wrap(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def _reference(x: np.ndarray, w: MoeWeights, task: int, cfg: MoeConfig) -> np.ndarray:
    """Token by token with Python ints (the GELU and softmax units are checked in their own
    tests and used as black boxes here)."""
    q = w.quant
    tokens, dim = x.shape
    out = np.zeros(x.shape, dtype=np.int64)
    xi = [[int(v) for v in row] for row in x]
    for t in range(tokens):
        logits = [
            _requant(
                _wrap(sum(xi[t][i] * int(w.gate[task, i, e]) for i in range(dim)), cfg.acc_bits),
                q.gate_requant[task],
                cfg.logit_bits,
            )
            for e in range(cfg.experts)
        ]
        order = sorted(range(cfg.experts), key=lambda e: (-logits[e], e))[: cfg.top_k]
        probs = softmax(np.array([logits[e] for e in order]), cfg.softmax)
        total = [0] * dim
        for e, p in zip(order, probs, strict=True):
            pre = [
                _requant(
                    _wrap(
                        sum(xi[t][i] * int(w.w1[e, i, j]) for i in range(dim)) + int(w.b1[e, j]),
                        cfg.acc_bits,
                    ),
                    q.w1_requant[e],
                    cfg.gelu_bits,
                )
                for j in range(cfg.expert_hidden)
            ]
            act = gelu(np.array(pre), cfg.gelu)
            hidden = [_requant(int(a), q.hidden_requant[e], cfg.act_bits) for a in act]
            for i in range(dim):
                acc = sum(hidden[j] * int(w.w2[e, j, i]) for j in range(cfg.expert_hidden))
                y_e = _requant(
                    _wrap(acc + int(w.b2[e, i]), cfg.acc_bits), q.w2_requant[e], cfg.act_bits
                )
                total[i] += int(p) * y_e
        lo, hi = -(2 ** (cfg.act_bits - 1)), 2 ** (cfg.act_bits - 1) - 1
        half = 1 << (cfg.gate_frac - 1)
        out[t] = [min(max((v + half) >> cfg.gate_frac, lo), hi) for v in total]
    return out


SMALL = [
    MoeConfig(dim=8, experts=4, expert_hidden=8, top_k=2, tasks=2, max_tokens=8, rows=4, cols=4),
    # Narrow operands and a 16-bit accumulator that wraps, top-1 and three tasks.
    MoeConfig(
        dim=8,
        experts=3,
        expert_hidden=6,
        top_k=1,
        tasks=3,
        max_tokens=8,
        acc_bits=16,
        act_bits=6,
        weight_bits=5,
    ),
    MoeConfig(
        dim=6,
        experts=5,
        expert_hidden=7,
        top_k=3,
        tasks=1,
        max_tokens=8,
        gate_bits=12,
        gate_frac=10,
        logit_bits=12,
        logit_frac=6,
    ),
]


@pytest.mark.parametrize("cfg", SMALL, ids=lambda c: c.short_name)
def test_matches_python_int_reference(cfg: MoeConfig) -> None:
    rng = np.random.default_rng(cfg.experts)
    lo, hi = cfg.weight_range
    weights = _int_layer(cfg, rng, rng.integers(lo, hi + 1, size=(cfg.tasks, cfg.dim, cfg.experts)))
    if cfg.acc_bits == 16:
        # Biases near the 16-bit limits make the accumulator wrap for some sums.
        sign = rng.choice([-1, 1], size=weights.b1.shape)
        b1 = sign * rng.integers(30000, 32768, size=weights.b1.shape)
        weights = dataclasses.replace(weights, b1=b1)
    alo, ahi = cfg.act_range
    x = rng.integers(alo, ahi + 1, size=(7, cfg.dim))
    if cfg.acc_bits == 16:
        sums = np.einsum("td,edh->eth", x, weights.w1) + weights.b1[:, None, :]
        assert (np.abs(sums) >= 2**15).any()  # the case really wraps
    for task in range(cfg.tasks):
        y, _ = moe_layer(x, weights, task, cfg)
        np.testing.assert_array_equal(y, _reference(x, weights, task, cfg))


# --- queued schedule == token-by-token schedule ------------------------------------------------
@pytest.mark.parametrize("tokens", [1, 17, 129])
@pytest.mark.parametrize("top_k", [1, 2])
def test_queued_equals_naive(tokens: int, top_k: int) -> None:
    cfg = dataclasses.replace(TINY, top_k=top_k)
    weights, x = _random_layer(cfg, seed=tokens + top_k, tokens=tokens)
    for task in range(cfg.tasks):
        y, routing = moe_layer(x, weights, task, cfg)
        np.testing.assert_array_equal(y, moe_layer_naive(x, weights, task, cfg))
        assert routing.queue_lengths.sum() == tokens * top_k
        assert y.min() >= -128 and y.max() <= 127


def test_all_tokens_to_one_expert() -> None:
    rng = np.random.default_rng(3)
    gate = np.full((TINY.tasks, TINY.dim, TINY.experts), -100)
    gate[0, :, 2] = 100  # task 0: expert 2 first, expert 0 second
    gate[0, :, 0] = 50
    gate[1, :, 1] = 100  # task 1: expert 1 first, expert 3 second
    gate[1, :, 3] = 50
    weights = _int_layer(TINY, rng, gate)
    x = rng.integers(0, 128, size=(17, TINY.dim))  # non-negative, so the gate columns decide
    for cfg in (dataclasses.replace(TINY, top_k=1), TINY):
        for task, pair in ((0, [2, 0]), (1, [1, 3])):
            y, routing = moe_layer(x, weights, task, cfg)
            np.testing.assert_array_equal(routing.experts, np.tile(pair[: cfg.top_k], (17, 1)))
            np.testing.assert_array_equal(routing.loaded_experts, sorted(pair[: cfg.top_k]))
            np.testing.assert_array_equal(y, moe_layer_naive(x, weights, task, cfg))
            traffic = moe_traffic(routing, cfg)
            assert traffic["experts_loaded"] == cfg.top_k
            assert traffic["queued_weight_bytes"] == (
                traffic["gate_bytes"] + cfg.top_k * traffic["expert_bytes"]
            )


def test_every_expert_used() -> None:
    cfg = dataclasses.replace(TINY, experts=8, top_k=2)
    rng = np.random.default_rng(4)
    gate = np.zeros((cfg.tasks, cfg.dim, cfg.experts), dtype=np.int64)
    for e in range(cfg.experts):
        gate[0, e, e] = 100  # task 0: token t prefers expert t % 8
        gate[1, e, cfg.experts - 1 - e] = 100  # task 1: the mirror image
    weights = _int_layer(cfg, rng, gate)
    x = rng.integers(-3, 4, size=(19, cfg.dim))
    x[np.arange(19), np.arange(19) % cfg.experts] = 127
    for task in range(cfg.tasks):
        y, routing = moe_layer(x, weights, task, cfg)
        first = np.arange(19) % cfg.experts
        np.testing.assert_array_equal(
            routing.experts[:, 0], first if task == 0 else cfg.experts - 1 - first
        )
        assert (routing.queue_lengths > 0).all()
        np.testing.assert_array_equal(y, moe_layer_naive(x, weights, task, cfg))
        # Queues list tokens in token order with each token's own gate weight.
        for e in range(cfg.experts):
            toks = routing.queue_tokens[e]
            assert (np.diff(toks) > 0).all()
            rows, slots = np.nonzero(routing.experts == e)
            np.testing.assert_array_equal(toks, rows)
            np.testing.assert_array_equal(routing.queue_weights[e], routing.weights[rows, slots])


def test_top1_passes_the_expert_output_through() -> None:
    cfg = dataclasses.replace(TINY, top_k=1)
    weights, x = _random_layer(cfg, seed=7, tokens=17)
    y, routing = moe_layer(x, weights, 1, cfg)
    assert (routing.weights == 1 << cfg.gate_frac).all()
    for t in range(17):
        np.testing.assert_array_equal(
            y[t], expert_ffn(x[t : t + 1], weights, int(routing.experts[t, 0]), cfg)[0]
        )


# --- gate: top-k and softmax over the selected logits -----------------------------------------
@pytest.mark.parametrize("top_k", [2, 3])
def test_softmax_over_selected_logits(top_k: int) -> None:
    cfg = dataclasses.replace(TINY, top_k=top_k)
    weights, x = _random_layer(cfg, seed=11, tokens=129)
    for task in range(cfg.tasks):
        routing = route(x, weights, task, cfg)
        selected = np.take_along_axis(routing.logits, routing.experts, axis=1)
        np.testing.assert_array_equal(routing.weights, softmax(selected, cfg.softmax))
        # Rank order, and nothing left out beats what was chosen.
        assert (np.diff(selected, axis=1) <= 0).all()
        mask = np.ones(routing.logits.shape, dtype=bool)
        np.put_along_axis(mask, routing.experts, False, axis=1)
        others = np.where(mask, routing.logits, np.iinfo(np.int64).min).max(axis=1)
        assert (others <= selected[:, -1]).all()
        total = routing.weights.sum(axis=1) / 2**cfg.gate_frac
        np.testing.assert_allclose(total, 1.0, atol=cfg.top_k * 2.0**-cfg.gate_frac)


def test_ties_go_to_the_lower_expert() -> None:
    logits = np.array([[5, 7, 7, 1, 7], [0, 0, 0, 0, 0], [-3, 2, -3, 2, 9]])
    np.testing.assert_array_equal(select_top_k(logits, 3), [[1, 2, 4], [0, 1, 2], [4, 1, 3]])
    rng = np.random.default_rng(5)
    gate = np.zeros((TINY.tasks, TINY.dim, TINY.experts), dtype=np.int64)  # all logits 0
    weights = _int_layer(TINY, rng, gate)
    routing = route(rng.integers(-128, 128, size=(5, TINY.dim)), weights, 0, TINY)
    np.testing.assert_array_equal(routing.experts, np.tile([0, 1], (5, 1)))
    np.testing.assert_array_equal(routing.weights, 1 << (TINY.gate_frac - 1))  # 1/2 each
    # Equal weights make the combine's ties visible: (a + b) / 2 rounds half up.
    x = rng.integers(-128, 128, size=(64, TINY.dim))
    y, _ = moe_layer(x, weights, 0, TINY)
    total = expert_ffn(x, weights, 0, TINY) + expert_ffn(x, weights, 1, TINY)
    assert (total % 2 == 1).any() and (total[total % 2 == 1] < 0).any()
    np.testing.assert_array_equal(y, (total + 1) // 2)


# --- float reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 2])
def test_float_error_bound(top_k: int) -> None:
    """Measured: at most 1.83 output LSB, RMS at most 0.47 LSB over 4 seeds (dim 32, hidden
    32), from the hidden activations' int8 rounding, the GELU ROM and the gate weights."""
    cfg = dataclasses.replace(TINY, top_k=top_k)
    for seed in range(2):
        weights, x = _random_layer(cfg, seed=100 + seed, tokens=129)
        xf = x * weights.quant.x_scale
        for task in range(cfg.tasks):
            y, routing = moe_layer(x, weights, task, cfg)
            ref, _ = moe_layer_float(xf, weights, task, cfg, experts=routing.experts)
            err = np.abs(y * weights.quant.y_scale - ref) / weights.quant.y_scale
            assert err.max() <= 2.5, err.max()
            assert np.sqrt(np.mean(err**2)) <= 0.6
            # The float gate picks the same experts for nearly every token.
            _, chosen = moe_layer_float(xf, weights, task, cfg)
            same = (np.sort(chosen, axis=1) == np.sort(routing.experts, axis=1)).all(axis=1)
            assert same.mean() >= 0.95


def test_from_float_quantization() -> None:
    rng = np.random.default_rng(9)
    params = _float_params(TINY, rng)
    calibration = rng.normal(size=(64, TINY.dim))
    weights = MoeWeights.from_float(TINY, calibration=calibration, **params)
    weights.check(TINY)
    deq = weights.dequantized()
    q = weights.quant
    for name, scales in (("gate", q.gate_scale), ("w1", q.w1_scale), ("w2", q.w2_scale)):
        assert np.abs(getattr(weights, name)).max(axis=(1, 2)).tolist() == [127] * len(scales)
        step = np.array(scales)[:, None, None]
        assert (np.abs(deq[name] - params[name]) <= step / 2 + 1e-12).all()
    assert np.abs(deq["b1"] - params["b1"]).max() <= q.x_scale * max(q.w1_scale) / 2 + 1e-12
    # Every requantization represents its ratio of scales to 31 significant bits.
    checks = [(q.gate_requant[t], q.x_scale * q.gate_scale[t] * 2**8) for t in range(2)]
    for e in range(TINY.experts):
        checks += [
            (q.w1_requant[e], q.x_scale * q.w1_scale[e] * 2**10),
            (q.hidden_requant[e], 2**-10 / q.hidden_scale[e]),
            (q.w2_requant[e], q.hidden_scale[e] * q.w2_scale[e] / q.y_scale),
        ]
    for rq, scale in checks:
        assert abs(rq.multiplier / 2**rq.shift / scale - 1) < 2**-30


# --- weight traffic ------------------------------------------------------------------------------
def test_traffic_never_exceeds_naive() -> None:
    for tokens in (1, 17, 129):
        weights, x = _random_layer(TINY, seed=tokens, tokens=tokens)
        for task in range(TINY.tasks):
            t = moe_traffic(route(x, weights, task, TINY), TINY)
            assert t["queued_weight_bytes"] <= t["naive_weight_bytes"]
            assert t["queued_cycles"] <= t["naive_cycles"]
            assert t["queued_compute_cycles"] <= t["naive_compute_cycles"]
            assert t["ideal_compute_cycles"] <= t["queued_compute_cycles"]
            assert 1 <= t["experts_loaded"] <= min(TINY.experts, tokens * TINY.top_k)


def test_traffic_equals_naive_when_every_choice_is_distinct() -> None:
    cfg = MoeConfig(dim=32, experts=16, expert_hidden=48, top_k=2, tasks=1, rows=4, cols=8)
    rng = np.random.default_rng(6)
    gate = np.zeros((1, 32, 16), dtype=np.int64)
    gate[0, np.arange(16), np.arange(16)] = 100
    weights = _int_layer(cfg, rng, gate)
    x = np.zeros((8, 32), dtype=np.int64)
    x[np.arange(8), 2 * np.arange(8)] = 127  # token t: experts 2t, then 2t + 1
    x[np.arange(8), 2 * np.arange(8) + 1] = 100
    y, routing = moe_layer(x, weights, 0, cfg)
    np.testing.assert_array_equal(routing.experts, np.arange(16).reshape(8, 2))
    np.testing.assert_array_equal(y, moe_layer_naive(x, weights, 0, cfg))
    t = moe_traffic(routing, cfg, bus_bytes=8)
    expert_bytes = 2 * 32 * 48 + 4 * (48 + 32)  # int8 W1, W2 and int32 b1, b2
    assert t["expert_bytes"] == expert_bytes
    assert t["gate_bytes"] == 32 * 16
    assert t["queued_weight_bytes"] == t["naive_weight_bytes"] == 32 * 16 + 16 * expert_bytes
    assert t["queued_load_cycles"] == t["naive_load_cycles"] == (32 * 16 + 16 * expert_bytes) // 8
    # One-token queues use the array exactly as the naive schedule does.
    per_expert = math.ceil(48 / 8) * 32 + math.ceil(32 / 8) * 48
    gate_cycles = math.ceil(8 / 4) * math.ceil(16 / 8) * 32
    assert t["queued_compute_cycles"] == t["naive_compute_cycles"] == gate_cycles + 16 * per_expert
    assert t["weight_bytes_ratio"] == t["cycles_ratio"] == 1.0


def test_traffic_formula_and_weight_width() -> None:
    weights, x = _random_layer(TINY, seed=21, tokens=17)
    routing = route(x, weights, 0, TINY)
    n = routing.queue_lengths
    t = moe_traffic(routing, TINY, bus_bytes=16)
    d = h = 32
    expert_bytes = 2 * d * h + 4 * (h + d)
    loaded = int((n > 0).sum())
    assert t["queued_weight_bytes"] == d * 4 + loaded * expert_bytes
    assert t["naive_weight_bytes"] == d * 4 + 17 * 2 * expert_bytes
    compute = math.ceil(17 / 16) * 1 * d + sum(math.ceil(int(m) / 16) * 2 * 2 * 32 for m in n if m)
    assert t["queued_compute_cycles"] == compute
    assert t["ideal_compute_cycles"] == (17 * 4 * d + 17 * 2 * 2 * d * h) / 256
    narrow = moe_traffic(routing, dataclasses.replace(TINY, weight_bits=4))
    assert narrow["expert_bytes"] == d * h + 4 * (h + d)  # packed 4-bit weights
    assert narrow["gate_bytes"] == d * 4 // 2


def test_weight_traffic_benchmark(tmp_path: Path) -> None:
    """The benchmark runs, every layer is bit-exact against the naive schedule, queues save
    weight traffic, and the two tasks' gates really route differently."""
    out = tmp_path / "rows.json"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_weight_traffic.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--json", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert [(r["layer"], r["task"]) for r in rows] == [
        ("tiny", 0), ("tiny", 1), ("edge-moe", 0), ("edge-moe", 1)
    ]  # fmt: skip
    for row in rows:
        assert row["bit_exact"]
        assert sum(row["queue_lengths"]) == row["tokens"] * 2
        assert row["experts_loaded"] == sum(n > 0 for n in row["queue_lengths"])
        assert row["queued_weight_bytes"] < row["naive_weight_bytes"]
        assert row["queued_cycles"] < row["naive_cycles"]
    edge = [r for r in rows if r["layer"] == "edge-moe"]
    assert edge[0]["queue_lengths"] != edge[1]["queue_lengths"]
    assert all(r["experts_loaded"] < 16 for r in edge)  # skewed gates leave experts idle


# --- configuration and input validation --------------------------------------------------------
def test_config_round_trip_and_derived_units() -> None:
    cfg = MoeConfig(dim=192, experts=16, expert_hidden=384, top_k=2, tasks=2, rounding="RND_CONV")
    assert MoeConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest == MoeConfig.from_dict(cfg.to_dict()).digest
    assert cfg.digest != TINY.digest
    assert cfg.short_name.startswith("moe_d192e16h384k2t2_r16c16_")
    assert cfg.softmax.max_len == 2 and cfg.softmax.out_frac == cfg.gate_frac
    assert cfg.gelu.in_frac == cfg.gelu_frac and cfg.gelu.rom_entries == 177
    assert cfg.gemm.rows == 16 and cfg.gemm.max_dim >= 384
    assert cfg.gemm.rounding == cfg.rounding


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dim": 0}, "dim"),
        ({"experts": 300}, "experts"),
        ({"top_k": 5}, "top_k"),
        ({"tasks": 0}, "tasks"),
        ({"max_tokens": 70000}, "max_tokens"),
        ({"rows": 65}, "rows"),
        ({"acc_bits": 40}, "acc_bits"),
        ({"act_bits": 9}, "act_bits"),
        ({"weight_bits": 16}, "weight_bits"),
        ({"logit_frac": 16}, "logit_frac"),
        ({"gate_frac": 16}, "gate_frac"),
        ({"gelu_frac": 3}, "gelu_frac"),
        ({"rounding": "NEAREST"}, "rounding"),
        ({"overflow": "CLAMP"}, "overflow"),
        ({"expert_hidden": 2.0}, "expert_hidden"),
        ({"gelu_bits": 8, "gelu_frac": 7}, "GELU formats"),
        ({"logit_frac": 0, "lut_bits": 8, "interp_bits": 10}, "softmax formats"),
    ],
)
def test_config_validation(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **change)


def test_input_validation() -> None:
    weights, x = _random_layer(TINY, seed=2, tokens=5)
    with pytest.raises(ValueError, match="shape"):
        moe_layer(x[:, :8], weights, 0, TINY)
    with pytest.raises(ValueError, match="integer"):
        moe_layer(x.astype(float), weights, 0, TINY)
    with pytest.raises(ValueError, match="act_bits"):
        moe_layer(x + 200, weights, 0, TINY)
    with pytest.raises(ValueError, match="max_tokens"):
        moe_layer(np.zeros((300, 32), dtype=np.int64), weights, 0, TINY)
    with pytest.raises(ValueError, match="task"):
        moe_layer(x, weights, 2, TINY)
    with pytest.raises(ValueError, match="expert_hidden"):
        moe_layer(x, weights, 0, dataclasses.replace(TINY, expert_hidden=16))
    with pytest.raises(ValueError, match="weight_bits"):
        moe_layer(x, weights, 0, dataclasses.replace(TINY, weight_bits=6))
    with pytest.raises(ValueError, match="w2 must have shape"):
        dataclasses.replace(weights, w2=weights.w2[:, :4])
    with pytest.raises(ValueError, match="zero_point"):
        MoeQuant(**{**vars(weights.quant), "w1_requant": (Requant(1 << 30, 30, 1),) * 4})
    with pytest.raises(ValueError, match="calibration"):
        MoeWeights.from_float(
            TINY, calibration=np.zeros((4, 8)), **_float_params(TINY, np.random.default_rng(0))
        )
    with pytest.raises(ValueError, match="routing"):
        moe_traffic(route(x, weights, 0, TINY), dataclasses.replace(TINY, top_k=1))
    with pytest.raises(ValueError, match="bus_bytes"):
        moe_traffic(route(x, weights, 0, TINY), TINY, bus_bytes=0)


# --- bus width, weight image and engine cycle model --------------------------------------------

IMAGE_CONFIGS = [
    MoeConfig(dim=8, experts=4, expert_hidden=8, top_k=2, tasks=2, max_tokens=32, rows=2, cols=4),
    MoeConfig(dim=12, experts=5, expert_hidden=10, top_k=1, tasks=3, rows=3, cols=3, bus_bytes=1),
    MoeConfig(dim=48, experts=6, expert_hidden=40, tasks=2, cols=16, bus_bytes=64, weight_bits=4),
]


@pytest.mark.parametrize("bad", [0, 3, 12, 128])
def test_bus_bytes_must_be_a_power_of_two_up_to_64(bad):
    with pytest.raises(ValueError, match="bus_bytes"):
        dataclasses.replace(TINY, bus_bytes=bad)


def test_traffic_defaults_to_the_config_bus_width():
    weights, x = _random_layer(TINY, 3, 17)
    routing = route(x, weights, 0, TINY)
    wide = dataclasses.replace(TINY, bus_bytes=64)
    assert moe_traffic(routing, wide) == moe_traffic(routing, TINY, bus_bytes=64)
    assert moe_traffic(routing, TINY) == moe_traffic(routing, wide, bus_bytes=16)
    assert (
        moe_traffic(routing, wide)["queued_load_cycles"]
        < moe_traffic(routing, TINY)["queued_load_cycles"]
    )


def _parse_image(image, cfg: MoeConfig) -> dict[str, np.ndarray]:
    """Read the weights back from the image, from the layout's documented offsets alone."""
    lay = image.layout
    data = np.frombuffer(image.data, dtype=np.uint8)
    c = cfg.cols

    def requant(at: int) -> Requant:
        mult, shift = np.frombuffer(image.data[at : at + 8], dtype="<u4")
        return Requant(int(mult), int(shift))

    def matrix(at: int, k: int, n: int) -> np.ndarray:
        tiles = -(-n // c)
        raw = data[at : at + tiles * k * c].view(np.int8).astype(np.int64)
        return raw.reshape(tiles, k, c).transpose(1, 0, 2).reshape(k, tiles * c)[:, :n]

    def biases(at: int, n: int) -> np.ndarray:
        return np.frombuffer(image.data[at : at + 4 * n], dtype="<i4").astype(np.int64)

    d, h, e = cfg.dim, cfg.expert_hidden, cfg.experts
    out: dict[str, list] = {k: [] for k in ("gate", "w1", "b1", "w2", "b2", "rq")}
    for t in range(cfg.tasks):
        base = image.gate_offset(t)
        out["rq"].append(requant(base))
        out["gate"].append(matrix(base + lay.gate_weights, d, e))
    for x in range(e):
        base = image.expert_offset(x)
        out["rq"].extend(requant(base + 8 * i) for i in range(3))
        out["b1"].append(biases(base + lay.b1, h))
        out["b2"].append(biases(base + lay.b2, d))
        out["w1"].append(matrix(base + lay.w1, d, h))
        out["w2"].append(matrix(base + lay.w2, h, d))
    return {k: (np.stack(v) if k != "rq" else v) for k, v in out.items()}


@pytest.mark.parametrize("cfg", IMAGE_CONFIGS, ids=["small", "odd", "wide"])
def test_weight_image_round_trips_and_keeps_bursts_inside_pages(cfg):
    weights, _ = _random_layer(cfg, 11, 9)
    image = moe_weight_image(weights, cfg)
    lay = image.layout
    assert lay == moe_image_layout(cfg)
    assert len(image.data) == lay.total_bytes
    back = _parse_image(image, cfg)
    for name in ("gate", "w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(back[name], getattr(weights, name), err_msg=name)
    q = weights.quant
    want = list(q.gate_requant)
    for e in range(cfg.experts):
        want += [q.w1_requant[e], q.hidden_requant[e], q.w2_requant[e]]
    assert back["rq"] == want
    # whole beats per fetch, regions on 4 KB pages, bursts never crossing one
    assert lay.gate_bytes % cfg.bus_bytes == 0 and lay.expert_bytes % cfg.bus_bytes == 0
    assert lay.gate_bytes <= lay.gate_stride and lay.expert_bytes <= lay.expert_stride
    assert lay.burst_beats * cfg.bus_bytes <= 4096 and lay.burst_beats <= 256
    regions = [(image.gate_offset(t), lay.gate_bytes) for t in range(cfg.tasks)]
    regions += [(image.expert_offset(e), lay.expert_bytes) for e in range(cfg.experts)]
    for start, size in regions:
        assert start % 4096 == 0
        address = start
        for beats in lay.bursts(size):
            end = address + beats * cfg.bus_bytes
            assert address // 4096 == (end - 1) // 4096
            address = end
        assert address == start + size
    # padding past the used bytes of each region is zero
    assert not any(image.data[image.expert_offset(0) + lay.expert_bytes : image.expert_offset(1)])


def test_weight_image_stores_narrow_weights_one_per_byte():
    cfg = IMAGE_CONFIGS[2]  # weight_bits = 4
    weights, _ = _random_layer(cfg, 12, 5)
    image = moe_weight_image(weights, cfg)
    w1 = np.frombuffer(image.data, dtype=np.int8)[
        image.expert_offset(0) + image.layout.w1 : image.expert_offset(0) + image.layout.w2
    ]
    assert w1.min() >= -8 and w1.max() <= 7 and w1.min() < 0
    assert (
        image.expert_bytes
        > moe_traffic(route(np.zeros((1, cfg.dim), int), weights, 0, cfg), cfg)["expert_bytes"]
    )


def test_weight_image_rejects_weights_of_another_config():
    weights, _ = _random_layer(TINY, 13, 4)
    with pytest.raises(ValueError, match="weights are for"):
        moe_weight_image(weights, dataclasses.replace(TINY, dim=16))


ENGINE = IMAGE_CONFIGS[0]


def test_engine_cycle_model_breakdown_adds_up_and_follows_the_schedule():
    weights, x = _random_layer(ENGINE, 14, 17)
    routing = route(x, weights, 1, ENGINE)
    model = moe_engine_cycles(routing, ENGINE, mem_latency=3)
    parts = ("load_gate_fetch", "gate_gemm", "route", "experts", "output")
    assert model["cycles"] == sum(model[p] for p in parts)
    lay = moe_image_layout(ENGINE)
    # one burst per fetch here: beats + address cycle + latency
    assert model["gate_fetch"] == lay.gate_beats + 1 + 3
    fetch = lay.expert_beats + 1 + 3
    assert model["expert_fetch"] == len(routing.loaded_experts) * fetch
    # tiles: K + rows_in_tile + 2 cycles each; 17 tokens on 2 rows: 8 full tiles and one of 1
    assert gemm_tile_cycles(17, 4, 8, ENGINE) == 8 * (8 + 2 + 2) + (8 + 1 + 2)
    assert gemm_tile_cycles(3, 8, 8, ENGINE) == 2 * ((8 + 2 + 2) + (8 + 1 + 2))
    assert model["output"] == 17 * 2 + 2 and model["macs_per_cycle"] == 8
    # the gate fetch hides behind the 34-beat token load
    assert model["load_gate_fetch"] == 17 * 2 + 1
    # the ping-pong schedule: experts in order, each fetched into the bank freed by the expert
    # two before it, computed once fetched and once the previous one is done
    steps = model["per_expert"]
    assert [p["expert"] for p in steps] == list(routing.loaded_experts)
    for j, p in enumerate(steps):
        assert p["filled"] == p["fetch_start"] + fetch + 2
        assert p["compute_start"] >= p["filled"] + 1
        if j:
            before = steps[j - 1]
            assert p["fetch_start"] >= before["filled"]
            assert p["compute_start"] >= before["compute_start"] + before["compute"] + 1
        if j >= 2:
            two_before = steps[j - 2]
            assert p["fetch_start"] >= two_before["compute_start"] + two_before["compute"]
    # overlap: faster than fetching and computing one after the other, never faster than either
    assert model["expert_compute"] < model["experts"]
    assert model["experts"] < model["expert_fetch"] + model["expert_compute"]
    # a longer memory latency delays the first expert by the whole difference, later ones less
    slower = moe_engine_cycles(routing, ENGINE, mem_latency=10)
    extra = slower["cycles"] - model["cycles"]
    assert 7 <= extra <= 7 * len(routing.loaded_experts)


def test_engine_cycle_model_rejects_bad_arguments():
    weights, x = _random_layer(ENGINE, 15, 4)
    routing = route(x, weights, 0, ENGINE)
    with pytest.raises(ValueError, match="mem_latency"):
        moe_engine_cycles(routing, ENGINE, mem_latency=-1)
    with pytest.raises(ValueError, match="top_k"):
        moe_engine_cycles(routing, dataclasses.replace(ENGINE, top_k=1))
    with pytest.raises(ValueError, match="multiple of cols"):
        moe_engine_cycles(routing, dataclasses.replace(ENGINE, cols=3))
    with pytest.raises(ValueError, match="MoeRouting"):
        moe_engine_cycles("routing", ENGINE)
