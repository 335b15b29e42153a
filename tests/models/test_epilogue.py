"""Golden epilogue: configuration, exact arithmetic, stream layouts, and agreement with the
quantized M³ViT's own linear layers and norms on real tensors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tessera.models.epilogue import (
    EpilogueConfig,
    EpilogueParams,
    epilogue,
    from_tiles,
    pack_input,
    pack_params,
    pack_residual,
    tile_beats,
    unpack_output,
)
from tessera.models.gelu import GeluConfig, gelu
from tessera.models.gemm import GemmConfig, gemm
from tessera.models.m3vit import digits_tasks, load_m3vit
from tessera.models.m3vit_quant import quantize_m3vit
from tessera.models.rounding import Overflow


def _reference(acc, params, cfg, residual=None):
    """Independent element-by-element model with Python integers and exact fractions."""
    from fractions import Fraction

    def sat(v, bits):
        return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, v))

    def wrap(v, bits):
        v &= (1 << bits) - 1
        return v - (1 << bits) if v >> (bits - 1) else v

    def requant(v, mult, shift, bits):
        exact = Fraction(v * mult, 1 << shift)
        floor = exact.numerator // exact.denominator
        frac = exact - floor
        # round half away from zero (RND_INF)
        up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and exact > 0)
        return sat(floor + int(up), bits)

    out = np.zeros(acc.shape, dtype=np.int64)
    for (i, j), a in np.ndenumerate(acc):
        v = int(a)
        if cfg.bias:
            v = v + int(params.bias[j])
            v = (
                wrap(v, cfg.acc_bits)
                if cfg.bias_overflow is Overflow.WRAP
                else sat(v, cfg.acc_bits)
            )
        v = requant(v, int(params.multiplier[j]), int(params.shift[j]), cfg.out_bits)
        if cfg.gelu is not None:
            v = int(gelu(np.array([v]), cfg.gelu)[0])
            v = requant(v, params.gelu_multiplier, params.gelu_shift, cfg.act_bits)
        if cfg.residual:
            v = sat(v + int(residual[i, j]), cfg.res_bits)
        out[i, j] = v
    return out


CONFIGS = [
    EpilogueConfig(rows=2, cols=3, max_cols=16),
    EpilogueConfig(bias_overflow="SAT", out_bits=16, residual=True, res_bits=16),
    EpilogueConfig(out_bits=16, gelu=GeluConfig(), act_bits=8, residual=True, res_bits=12),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["int8", "residual", "gelu+residual"])
def test_golden_matches_reference_including_extremes(cfg: EpilogueConfig) -> None:
    rng = np.random.default_rng(0)
    m, n = 7, 9
    acc = rng.choice(np.array([-(1 << 31), (1 << 31) - 1, 0, -1, 1, 12345, -98765]), size=(m, n))
    acc[:3] = rng.integers(-(1 << 20), 1 << 20, size=(3, n))
    params = EpilogueParams(
        rng.choice(np.array([-(1 << 31), (1 << 31) - 1, 0, 777]), size=n),
        rng.choice(np.array([0, 1, (1 << 31) - 1, 1 << 30, 1_518_500_250]), size=n),
        rng.choice(np.array([0, 1, 30, 36, 63]), size=n),
        gelu_multiplier=1_518_500_250,
        gelu_shift=33,
    )
    half = 1 << (cfg.res_bits - 1)
    res = rng.integers(-half, half, size=(m, n)) if cfg.residual else None
    got = epilogue(acc, params, cfg, res)
    np.testing.assert_array_equal(got, _reference(acc, params, cfg, res))
    lo, hi = -(1 << (cfg.final_bits - 1)), (1 << (cfg.final_bits - 1)) - 1
    assert got.min() >= lo and got.max() <= hi
    # The extremes do reach both saturation limits.
    assert got.min() == lo or cfg.gelu is not None
    assert got.max() == hi


def test_bias_wraps_or_saturates() -> None:
    acc = np.array([[(1 << 31) - 1, -(1 << 31)]])
    params = EpilogueParams(np.array([1, -1]), np.array([1 << 30, 1 << 30]), np.array([30, 30]))
    wrapped = epilogue(acc, params, EpilogueConfig(out_bits=16, requant=False))
    assert wrapped.tolist() == [[-(1 << 15), (1 << 15) - 1]]  # wrapped, then saturated to int16
    cfg = EpilogueConfig(out_bits=16, requant=False, bias_overflow=Overflow.SAT)
    assert epilogue(acc, params, cfg).tolist() == [[(1 << 15) - 1, -(1 << 15)]]
    # Through a requantization by 1 the difference shows at the output too.
    half = EpilogueParams(np.array([1, -1]), np.array([1 << 30, 1 << 30]), np.array([47, 47]))
    assert epilogue(acc, half, EpilogueConfig(out_bits=16)).tolist() == [[-16384, 16384]]
    assert epilogue(acc, half, dataclasses.replace(cfg, requant=True)).tolist() == [[16384, -16384]]


def test_config_validation_and_round_trip() -> None:
    cfg = CONFIGS[2]
    assert cfg.gelu is not None and cfg.gelu.lanes == cfg.cols
    again = EpilogueConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.digest == cfg.digest
    assert cfg.short_name.startswith("epilogue_r4c4_b1q1g1r1_")
    assert cfg.final_bits == 12 and cfg.out_lane_bytes == 2
    assert dataclasses.replace(cfg, residual=False).final_bits == 8
    gemm_cfg = GemmConfig(rows=8, cols=2, acc_bits=24, dim_bits=10)
    made = EpilogueConfig.for_gemm(gemm_cfg, out_bits=16)
    assert (made.rows, made.cols, made.acc_bits, made.dim_bits) == (8, 2, 24, 10)
    for fields, word in (
        ({"cols": 0}, "cols"),
        ({"rows": 65}, "rows"),
        ({"max_cols": 0}, "max_cols"),
        ({"acc_bits": 8}, "acc_bits"),
        ({"out_bits": 17}, "out_bits"),
        ({"res_bits": 1}, "res_bits"),
        ({"bias": 1}, "bias"),
        ({"bias_overflow": "SAT_SYM"}, "bias_overflow"),
        ({"gelu": GeluConfig(), "out_bits": 8}, "gelu.in_bits"),
        ({"gelu": 3}, "gelu"),
    ):
        with pytest.raises(ValueError, match=word):
            EpilogueConfig(**fields)


def test_bad_inputs_are_named() -> None:
    cfg = EpilogueConfig(max_cols=4, residual=True)
    params = EpilogueParams.per_tensor(3, 1 << 30, 31)
    acc = np.zeros((2, 3), dtype=np.int64)
    res = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="residual"):
        epilogue(acc, params, cfg)
    with pytest.raises(ValueError, match="columns"):
        epilogue(np.zeros((2, 4), dtype=np.int64), params, cfg, np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="max_cols"):
        epilogue(np.zeros((1, 5), dtype=np.int64), EpilogueParams.per_tensor(5, 1, 0), cfg)
    with pytest.raises(ValueError, match="acc"):
        epilogue(acc + (1 << 31), params, cfg, res)
    with pytest.raises(ValueError, match="residual"):
        epilogue(acc, params, cfg, res + (1 << 15))
    with pytest.raises(ValueError, match="no residual"):
        epilogue(acc, params, EpilogueConfig(), res)
    with pytest.raises(ValueError, match="shift"):
        EpilogueParams(np.zeros(2, int), np.zeros(2, int), np.array([0, 64]))
    with pytest.raises(ValueError, match="same length"):
        EpilogueParams(np.zeros(2, int), np.zeros(3, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="gelu_shift"):
        EpilogueParams(np.zeros(1, int), np.zeros(1, int), np.zeros(1, int), gelu_shift=70)


def test_stream_layouts() -> None:
    cfg = EpilogueConfig(rows=2, cols=3, max_cols=8, out_bits=16, residual=True)
    m, n = 5, 7
    x = np.arange(m * n).reshape(m, n) - 17
    beats, valid = tile_beats(x, cfg)
    # 3 tile rows (2, 2, 1 valid rows) x 3 tile columns (3, 3, 1 valid lanes).
    assert beats.shape == ((2 + 2 + 1) * 3, 3)
    assert beats[0].tolist() == x[0, :3].tolist() and beats[2].tolist() == x[0, 3:6].tolist()
    assert valid[4].tolist() == [True, False, False] and beats[4].tolist() == [x[0, 6], 0, 0]
    np.testing.assert_array_equal(from_tiles(beats, m, n, cfg), x)
    data, keep = pack_input(x, cfg)
    assert len(data) == beats.size * 4 and keep[:16] == [1] * 12 + [1, 1, 1, 1]
    assert int.from_bytes(data[:4], "little", signed=True) == x[0, 0]
    values, flags = unpack_output(pack_residual(x, cfg), None, cfg)
    np.testing.assert_array_equal(values, beats)
    assert flags.all()
    params = EpilogueParams(np.array([-1, 2]), np.array([5, 6]), np.array([7, 8]), 9, 10)
    words = np.frombuffer(pack_params(params, 300, cfg), dtype="<u4").reshape(-1, 3)
    assert words.tolist() == [[300, 9, 10], [0xFFFFFFFF, 5, 7], [2, 6, 8]]


# --- agreement with the quantized network ------------------------------------------------------
@pytest.fixture(scope="module")
def network():
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:64], "int8")
    return qm, test.images[:2]


def _linear_params(lin, hidden=None) -> EpilogueParams:
    g = (0, 0) if hidden is None else (int(hidden.multiplier[0]), int(hidden.shift[0]))
    return EpilogueParams(lin.b, lin.requant.multiplier, lin.requant.shift, g[0], g[1])


def test_golden_is_what_the_quantized_network_does(network) -> None:
    """Every epilogue of a dense block, on the network's own tensors of two real images."""
    qm, images = network
    pre, g = qm.preset, qm.gemm_cfg
    trace = qm.per_layer_outputs(images, 0)
    blk = qm.blocks[0]
    assert blk.moe is None
    d = qm.cfg.embed_dim
    x = trace["embed"].reshape(-1, d)

    def epi(**fields):
        return EpilogueConfig.for_gemm(g, bias_overflow="SAT", max_cols=256, **fields)

    # LayerNorm requantization (no bias, one multiplier for all columns).
    from tessera.models.layernorm import layernorm

    ln = layernorm(x, blk.norm1.gamma, blk.norm1.beta, blk.norm1.cfg)
    rq = blk.norm1.requant
    ln_cfg = EpilogueConfig(rows=1, cols=4, acc_bits=16, bias=False, out_bits=pre.act_bits)
    h = epilogue(ln, EpilogueParams.per_tensor(d, int(rq.multiplier[0]), int(rq.shift[0])), ln_cfg)
    np.testing.assert_array_equal(h, blk.norm1(x))
    # q, k, v: bias + per-column requantization to int8.
    for p in ("q", "k", "v"):
        lin = getattr(blk, p)
        got = epilogue(gemm(h, lin.w, g), _linear_params(lin), epi(out_bits=pre.act_bits))
        np.testing.assert_array_equal(got, lin(h, g))
        assert len(np.unique(lin.requant.multiplier)) > 1  # really per column
    # Output projection with the fused residual add reproduces the block{0}.attn trace.
    from tessera.models.attention import attention

    t, hd = qm.cfg.num_tokens, qm.cfg.head_dim
    q, k, v = (getattr(blk, p)(h, g).reshape(-1, t, qm.cfg.num_heads, hd) for p in "qkv")
    mixed = np.stack(
        [
            np.concatenate(
                [
                    attention(q[i, :, j][None], k[i, :, j][None], v[i, :, j][None],
                              qm.attn_cfg, blk.score_requant)[0]
                    for j in range(qm.cfg.num_heads)
                ],
                axis=1,
            )
            for i in range(len(images))
        ]
    ).reshape(-1, d)  # fmt: skip
    res_cfg = epi(out_bits=pre.residual_bits, residual=True, res_bits=pre.residual_bits)
    x_attn = epilogue(gemm(mixed, blk.out.w, g), _linear_params(blk.out), res_cfg, x)
    np.testing.assert_array_equal(x_attn, trace["block0.attn"].reshape(-1, d))
    # MLP: fc1 + GELU + hidden requantization, fc2 + residual: the block{0}.out trace.
    h2 = blk.norm2(x_attn)
    fc1_cfg = epi(out_bits=qm.moe_cfg.gelu_bits, gelu=qm.moe_cfg.gelu, act_bits=pre.act_bits)
    hidden = epilogue(gemm(h2, blk.fc1.w, g), _linear_params(blk.fc1, blk.hidden_requant), fc1_cfg)
    np.testing.assert_array_equal(hidden, blk.hidden_requant(gelu(blk.fc1(h2, g), qm.moe_cfg.gelu)))
    out = epilogue(gemm(hidden, blk.fc2.w, g), _linear_params(blk.fc2), res_cfg, x_attn)
    np.testing.assert_array_equal(out, trace["block0.out"].reshape(-1, d))
    assert np.abs(out - x_attn).max() > 0  # the MLP branch changed the residual stream
