"""Golden attention model: against a Python-int loop reference, float SDPA, and its stream and
traffic models."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tessera.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    attention_float,
    attention_scores,
    attention_streams,
    attention_traffic,
    attention_weights,
    output_beats,
    requant_for_scale,
)
from tessera.models.gemm import Requant
from tessera.models.softmax import exp_neg, reciprocal, rescale


def _gaussian_int8(rng, shape, std=48.0):
    return np.clip(np.round(rng.normal(0.0, std, size=shape)), -128, 127).astype(np.int8)


def _round_half_away(num: int, den: int) -> int:
    # RND_INF of num / den (den > 0), from the definition.
    q, r = divmod(abs(num), den)
    if 2 * r >= den:
        q += 1
    return q if num >= 0 else -q


def _reference(q, k, v, cfg: AttentionConfig, rq: Requant, mask: AttentionMask) -> np.ndarray:
    """Loop reference: Python ints, the online max / sum written out key by key."""
    sm = cfg.softmax
    heads, seq, dim = q.shape
    lo, hi = -(1 << (cfg.score_bits - 1)), (1 << (cfg.score_bits - 1)) - 1
    one = 1 << sm.exp_frac
    out = np.zeros(q.shape, dtype=np.int64)
    for h in range(heads):
        for i in range(seq):
            visible = [j for j in range(seq) if mask.visible(seq)[i, j]]
            scores = {}
            for j in visible:
                dot = sum(int(q[h, i, d]) * int(k[h, j, d]) for d in range(dim))
                scores[j] = min(max(_round_half_away(dot * rq.multiplier, 1 << rq.shift), lo), hi)
            maximum, total = None, 0
            for j in visible:  # key order, as the engine streams K
                x = scores[j]
                if maximum is None:
                    maximum, total = x, one
                elif x > maximum:
                    total = int(rescale(total, exp_neg(maximum - x, sm), sm)) + one
                    maximum = x
                else:
                    total += int(exp_neg(x - maximum, sm))
            recip = int(reciprocal(total, sm))
            for d in range(dim):
                acc = 0
                for j in visible:
                    e = int(exp_neg(scores[j] - maximum, sm))
                    half = 1 << (sm.prob_shift - 1)
                    w = min((e * recip + half) >> sm.prob_shift, (1 << cfg.weight_bits) - 1)
                    acc += w * int(v[h, j, d])
                y = (acc + (1 << (cfg.weight_frac - 1))) >> cfg.weight_frac
                out[h, i, d] = min(max(y, -128), 127)
    return out


MASKS = [
    AttentionMask(),
    AttentionMask("causal"),
    AttentionMask("lambda", sink=2, window=3),
    AttentionMask("lambda", sink=0, window=1),
]


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: f"{m.kind}{m.sink}-{m.window}")
@pytest.mark.parametrize("seed", range(3))
def test_golden_matches_loop_reference(mask, seed):
    cfg = AttentionConfig(head_dim=8, lanes=4, heads=2, max_seq=16, parallelism=3)
    rng = np.random.default_rng(seed)
    seq = int(rng.integers(1, 12))
    q, k = (_gaussian_int8(rng, (2, seq, 8)) for _ in range(2))
    v = rng.integers(-128, 128, size=(2, seq, 8)).astype(np.int8)
    rq = requant_for_scale(1 / (48 * 48 * math.sqrt(8)) * (1 + seed), cfg)
    np.testing.assert_array_equal(
        attention(q, k, v, cfg, rq, mask), _reference(q, k, v, cfg, rq, mask)
    )


def _quantized_problem(seed, heads, seq, dim, logit_std):
    rng = np.random.default_rng(seed)
    step = 32.0  # int8 steps per unit of the real N(0, 1) tensors
    q = _gaussian_int8(rng, (heads, seq, dim), std=step * math.sqrt(logit_std))
    k = _gaussian_int8(rng, (heads, seq, dim), std=step * math.sqrt(logit_std))
    v = rng.integers(-128, 128, size=(heads, seq, dim)).astype(np.int8)
    return q, k, v, 1.0 / (step * step * math.sqrt(dim))


# Measured maximum |golden - float| over these problems is 0.61 LSB: 0.5 from the final rounding
# to int8, the rest from the 8-fraction-bit logits, the exp table and the 15-bit weights.
ERROR_BOUND_LSB = 0.7


@pytest.mark.parametrize("mask", MASKS[:3], ids=lambda m: m.kind)
@pytest.mark.parametrize(
    ("dim", "seq", "logit_std"), [(64, 129, 1.0), (64, 77, 3.0), (16, 40, 2.0)]
)
def test_golden_against_float_sdpa(mask, dim, seq, logit_std):
    cfg = AttentionConfig(head_dim=dim, heads=2, max_seq=256)
    q, k, v, scale = _quantized_problem(dim + seq, 2, seq, dim, logit_std)
    got = attention(q, k, v, cfg, requant_for_scale(scale, cfg), mask)

    visible = torch.from_numpy(mask.visible(seq))
    as_t = [torch.from_numpy(x.astype(np.float64)) for x in (q, k, v)]
    sdpa = F.scaled_dot_product_attention(*as_t, attn_mask=visible, scale=scale).numpy()
    np.testing.assert_allclose(attention_float(q, k, v, scale, mask), sdpa, atol=1e-9)

    error = np.abs(got - sdpa)
    assert error.max() <= ERROR_BOUND_LSB, f"max error {error.max():.3f} LSB"
    assert error.mean() < 0.3, f"mean error {error.mean():.3f} LSB"
    # The integer output is within one LSB of the rounded float everywhere.
    assert np.abs(got - np.round(sdpa)).max() <= 1


def test_one_huge_logit_and_equal_logits():
    cfg = AttentionConfig(head_dim=8, lanes=8, max_seq=32)
    rng = np.random.default_rng(7)
    seq = 9
    q = rng.integers(60, 128, size=(1, seq, 8)).astype(np.int8)
    k = rng.integers(-4, 5, size=(1, seq, 8)).astype(np.int8)
    k[0, 5] = 127
    v = rng.choice(np.array([-128, 127], dtype=np.int8), size=(1, seq, 8))
    rq = Requant(1 << 30, 31)  # raw logit q.k / 2: the spike saturates the score format
    scores = attention_scores(q, k, cfg, rq)
    assert (scores[0, :, 5] == (1 << 15) - 1).all()
    weights = attention_weights(q, k, cfg, rq)
    assert (weights[0, :, 5] >= 1 << cfg.weight_frac).all()
    assert (np.delete(weights[0], 5, axis=1) == 0).all()
    np.testing.assert_array_equal(
        attention(q, k, v, cfg, rq)[0], np.broadcast_to(v[0, 5], (seq, 8))
    )

    # Every key the same: each visible key gets round(1 / visible count).
    k_equal = np.broadcast_to(k[:, :1], k.shape)
    weights = attention_weights(q, k_equal, cfg, rq, AttentionMask("causal"))
    for i in range(seq):
        expect = round((1 << cfg.weight_frac) / (i + 1))
        assert (np.abs(weights[0, i, : i + 1] - expect) <= 1).all(), i
        assert (weights[0, i, i + 1 :] == 0).all()


def test_mask_semantics():
    seq = 12
    for mask in [*MASKS, AttentionMask("lambda", sink=20, window=100)]:
        got = mask.visible(seq)
        for i in range(seq):
            for j in range(seq):
                if mask.kind == "none":
                    want = True
                elif mask.kind == "causal":
                    want = j <= i
                else:
                    want = j <= i and (j < mask.sink or i - j < mask.window)
                assert got[i, j] == want, (mask, i, j)
        assert got.diagonal().all(), "every query sees itself"
    lam = AttentionMask("lambda", sink=2, window=3).visible(seq)
    assert lam[10].tolist() == [True, True] + [False] * 6 + [True] * 3 + [False]
    assert AttentionMask("causal").code == 1 and AttentionMask("lambda", window=1).code == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "sliding"}, "mask kind"),
        ({"kind": "lambda", "window": 0}, "window >= 1"),
        ({"kind": "lambda", "sink": -1, "window": 2}, "sink"),
        ({"kind": "causal", "window": 1 << 32}, "window"),
    ],
)
def test_mask_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionMask(**kwargs)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("head_dim", 0, "head_dim"),
        ("head_dim", 12, "multiple of lanes"),
        ("lanes", 0, "lanes"),
        ("heads", 0, "heads"),
        ("max_seq", 0, "max_seq"),
        ("parallelism", 0, "parallelism"),
        ("parallelism", 65, "parallelism"),
        ("parallelism", 300, "parallelism"),
        ("score_bits", 3, "score_bits"),
        ("score_frac", 16, "score_frac"),
        ("exp_frac", 21, "exp_frac"),
        ("weight_frac", 16, "weight_frac"),
        ("weight_bits", 1, "weight_bits"),
        ("interp_bits", 11, "interp_bits"),
        ("rounding", "NEAREST", "rounding"),
        ("overflow", "CLAMP", "overflow"),
        ("head_dim", 8.0, "head_dim"),
    ],
)
def test_config_rejects_bad_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(AttentionConfig(), **{field: value})


def test_config_cross_field_checks():
    with pytest.raises(ValueError, match="must not exceed max_seq"):
        AttentionConfig(max_seq=4, parallelism=8)
    with pytest.raises(ValueError, match="lut_bits \\+ interp_bits"):
        AttentionConfig(score_frac=0, lut_bits=8, interp_bits=10)


def test_config_round_trip_names_and_softmax():
    cfg = AttentionConfig(head_dim=32, lanes=4, parallelism=8, rounding="RND_CONV")
    again = AttentionConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.digest == cfg.digest
    assert cfg.short_name.startswith("attention_d32p8l4s256_")
    assert AttentionConfig().digest != cfg.digest
    with pytest.raises(ValueError, match="unknown AttentionConfig fields"):
        AttentionConfig.from_dict({**cfg.to_dict(), "depth": 3})
    sm = cfg.softmax
    assert (sm.in_bits, sm.in_frac, sm.out_bits, sm.out_frac, sm.max_len) == (16, 8, 16, 15, 256)
    assert cfg.beats_per_row == 8 and cfg.macs == 32
    # The widths hold the extreme values exactly.
    assert 32 * 128 * 128 < 1 << (cfg.dot_bits - 1)
    assert 256 * ((1 << 16) - 1) * 128 < 1 << (cfg.acc_bits - 1)


def test_input_validation():
    cfg = AttentionConfig(head_dim=8, max_seq=8)
    x = np.zeros((1, 4, 8), dtype=np.int8)
    rq = Requant(1 << 30, 30)
    with pytest.raises(ValueError, match="shape"):
        attention(x[0], x[0], x[0], cfg, rq)
    with pytest.raises(ValueError, match="same shape"):
        attention(x, x[:, :3], x, cfg, rq)
    with pytest.raises(ValueError, match="head_dim"):
        attention(x[..., :4], x[..., :4], x[..., :4], cfg, rq)
    with pytest.raises(ValueError, match="max_seq"):
        big = np.zeros((1, 9, 8), dtype=np.int8)
        attention(big, big, big, cfg, rq)
    with pytest.raises(ValueError, match="int8"):
        attention(x.astype(np.int16) + 200, x, x, cfg, rq)
    with pytest.raises(ValueError, match="integer"):
        attention(x.astype(np.float32), x, x, cfg, rq)
    with pytest.raises(ValueError, match="zero_point"):
        attention(x, x, x, cfg, Requant(1 << 30, 30, 3))
    with pytest.raises(ValueError, match="scale"):
        requant_for_scale(0.0, cfg)


def test_requant_for_scale():
    cfg = AttentionConfig()
    scale = 1 / (48 * 48 * 8)
    rq = requant_for_scale(scale, cfg)
    assert rq.zero_point == 0
    assert rq.multiplier / 2**rq.shift == pytest.approx(scale * 2**cfg.score_frac, rel=1e-9)


@pytest.mark.parametrize(
    ("heads", "seq", "parallelism", "lanes"), [(1, 1, 1, 8), (2, 7, 3, 4), (1, 9, 4, 2)]
)
def test_streams_layout(heads, seq, parallelism, lanes):
    cfg = AttentionConfig(head_dim=8, lanes=lanes, heads=heads, max_seq=16, parallelism=parallelism)
    rng = np.random.default_rng(seq)
    q, k, v = (rng.integers(-128, 128, size=(heads, seq, 8)).astype(np.int8) for _ in range(3))
    out = attention(q, k, v, cfg, requant_for_scale(1e-4, cfg))
    streams = attention_streams(q, k, v, cfg, out)
    beats = cfg.beats_per_row
    groups = cfg.groups(seq)
    assert groups == math.ceil(seq / parallelism)
    # Walk the streams group by group, as the engine does.
    qi = ki = 0
    for h in range(heads):
        for g in range(groups):
            rows = range(g * parallelism, min(seq, (g + 1) * parallelism))
            for i in rows:
                np.testing.assert_array_equal(streams["q"][qi : qi + beats].reshape(-1), q[h, i])
                qi += beats
            for j in range(seq):
                np.testing.assert_array_equal(streams["k"][ki : ki + beats].reshape(-1), k[h, j])
                np.testing.assert_array_equal(streams["v"][ki : ki + beats].reshape(-1), v[h, j])
                ki += beats
    assert qi == len(streams["q"]) and ki == len(streams["k"]) == len(streams["v"])
    np.testing.assert_array_equal(streams["o"].reshape(out.shape), out)
    np.testing.assert_array_equal(output_beats(out, cfg), streams["o"])
    assert all(s.shape[1] == lanes and s.dtype == np.int8 for s in streams.values())

    traffic = attention_traffic(seq, cfg)
    assert traffic["q_bytes"] == streams["q"].size
    assert traffic["k_bytes"] == streams["k"].size == traffic["v_bytes"]
    assert traffic["write_bytes"] == streams["o"].size
    assert traffic["read_bytes"] == sum(streams[n].size for n in "qkv")


def test_traffic_scales_with_parallelism():
    """Cycles fall about as 1/P while off-chip bytes per cycle stay about constant."""
    seq = 129
    base = attention_traffic(seq, AttentionConfig(parallelism=1))
    assert base["mac_utilization"] > 0.95
    for p in (2, 4, 8, 16):
        t = attention_traffic(seq, AttentionConfig(parallelism=p))
        groups = math.ceil(seq / p)
        assert t["groups"] == groups
        assert t["cycles"] == pytest.approx(base["cycles"] * groups / seq, rel=0.02)
        # K and V dominate and flow at a fixed rate; the q and o bytes (once per run) add 1/G.
        assert t["kv_bytes_per_cycle"] == pytest.approx(base["kv_bytes_per_cycle"], rel=0.02)
        assert t["bytes_per_cycle"] == pytest.approx(
            t["kv_bytes_per_cycle"] * (1 + 1 / groups), rel=0.02
        )
        assert t["mac_utilization"] <= 1.0
        assert t["useful_macs"] == base["useful_macs"] == 2 * seq * seq * 64
        # One K and one V beat per cycle at most: the read rate cannot exceed two beats.
        assert t["read_bytes"] / t["cycles"] <= 2 * 8


def test_traffic_lower_bound():
    """The cycle model never beats the stream-limited minimum of 2 * S * B beats per group."""
    for p, seq in [(1, 1), (3, 10), (8, 129), (4, 256)]:
        cfg = AttentionConfig(parallelism=p, heads=2)
        t = attention_traffic(seq, cfg)
        floor = 2 * cfg.heads * cfg.groups(seq) * seq * cfg.beats_per_row
        assert floor < t["cycles"] < floor + cfg.heads * cfg.groups(seq) * 80 + 2 * p * 8 + 2
    with pytest.raises(ValueError, match="max_seq"):
        attention_traffic(0, AttentionConfig())
