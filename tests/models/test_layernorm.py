"""Integer LayerNorm golden model: config, reciprocal square root, accuracy vs float LayerNorm."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tessera.models.layernorm import (
    LayerNormConfig,
    dequantize_output,
    layernorm,
    layernorm_float,
    normalize,
    pack_params,
    pack_rows,
    quantize_input,
    quantize_params,
    rsqrt,
    rsqrt_seed_table,
    unpack_outputs,
)

DEFAULT = LayerNormConfig()


# ---- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dim", 0),
        ("dim", 4097),
        ("dim", 3.0),
        ("in_bits", 1),
        ("in_bits", 25),
        ("in_frac", 16),
        ("in_frac", -1),
        ("out_bits", 1),
        ("out_frac", 16),
        ("param_bits", 25),
        ("param_frac", 16),
        ("eps", -1e-5),
        ("eps", float("nan")),
        ("eps", 2.0),
        ("eps", True),
        ("rsqrt_lut_bits", 0),
        ("rsqrt_lut_bits", 11),
        ("newton_steps", -1),
        ("newton_steps", 4),
        ("rsqrt_frac", 7),
        ("rsqrt_frac", 25),
        ("norm_frac", 1),
        ("norm_frac", 17),
    ],
)
def test_config_rejects_out_of_range_fields(field, value):
    with pytest.raises(ValueError, match=field):
        LayerNormConfig(**{field: value})


def test_config_rejects_impossible_combinations():
    with pytest.raises(ValueError, match="out_frac"):
        LayerNormConfig(out_bits=24, out_frac=23, norm_frac=4, param_frac=2)
    with pytest.raises(ValueError, match="in_bits"):
        LayerNormConfig(dim=4096, in_bits=24)
    with pytest.raises(ValueError, match="variance"):
        LayerNormConfig(dim=4096, in_bits=20)
    LayerNormConfig(dim=4096, in_bits=19, rsqrt_frac=24, norm_frac=20)  # the widest that fits


def test_config_round_trip_and_names():
    cfg = LayerNormConfig(dim=7, eps=1e-6, newton_steps=2)
    assert LayerNormConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest == LayerNormConfig(dim=7, eps=1e-6, newton_steps=2).digest
    assert cfg.digest != dataclasses.replace(cfg, eps=1e-5).digest
    assert cfg.short_name == f"layernorm_d7_i16f8_{cfg.digest}"
    assert LayerNormConfig(eps=0).eps == 0.0 and isinstance(LayerNormConfig(eps=0).eps, float)
    with pytest.raises(ValueError, match="unknown"):
        LayerNormConfig.from_dict({**cfg.to_dict(), "depth": 3})


def test_derived_integers():
    cfg = DEFAULT
    assert cfg.eps_int == round(192 * 192 * 65536 * 1e-5)
    assert LayerNormConfig(eps=0.0).eps_int == 1  # W is never 0
    assert (cfg.in_bytes, cfg.out_bytes, cfg.param_bytes) == (2, 2, 2)
    narrow = LayerNormConfig(in_bits=17, out_bits=8, out_frac=4, param_bits=9, param_frac=5)
    assert (narrow.in_bytes, narrow.out_bytes, narrow.param_bytes) == (3, 1, 2)
    assert cfg.buffer_depth == 384
    assert cfg.out_shift == cfg.norm_frac + cfg.param_frac - cfg.out_frac


@pytest.mark.parametrize(
    "cfg",
    [
        DEFAULT,
        LayerNormConfig(dim=1),
        LayerNormConfig(dim=7, in_bits=8, in_frac=0, eps=0.0),
        LayerNormConfig(dim=4096, in_bits=16, newton_steps=0, rsqrt_lut_bits=1),
        LayerNormConfig(dim=33, in_bits=24, in_frac=20, rsqrt_frac=24, norm_frac=20),
        LayerNormConfig(
            dim=4096, in_bits=19, rsqrt_frac=24, norm_frac=20, param_bits=24, param_frac=20
        ),
    ],
    ids=["default", "dim1", "int8", "wide-dim", "wide-input", "widest"],
)
def test_intermediates_fit_their_widths(cfg):
    """The widths the RTL is built from bound every intermediate, extreme rows included, and the
    int64 golden model stays exact (within its error bound of float LayerNorm) at the limits."""
    rng = np.random.default_rng(cfg.dim)
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    rows = [
        np.full(cfg.dim, lo),
        np.full(cfg.dim, hi),
        np.where(np.arange(cfg.dim) % 2, hi, lo),
        np.where(np.arange(cfg.dim) == 0, hi, lo),
        np.where(np.arange(cfg.dim) == 0, lo, hi),
        np.where(np.arange(cfg.dim) == 0, hi, 0),
        rng.integers(lo, hi + 1, cfg.dim),
        rng.integers(-1, 2, cfg.dim),
    ]
    x = np.array(rows, dtype=np.int64)
    s1 = x.sum(-1)
    s2 = (x * x).sum(-1)
    w = cfg.dim * s2 - s1 * s1 + cfg.eps_int
    assert np.abs(s1).max() < 1 << (cfg.sum_bits - 1)
    assert s2.max() < 1 << cfg.square_sum_bits
    assert w.min() >= 1 and w.max() < 1 << cfg.var_bits
    y, e = rsqrt(w, cfg)
    assert y.max() < 1 << cfg.mantissa_bits and e.max() <= cfg.max_exponent
    c = cfg.dim * x - s1[:, None]
    assert np.abs(c).max() < 1 << (cfg.center_bits - 1)
    z = normalize(x, cfg)
    assert np.abs(z).max() < 1 << (cfg.norm_bits - 1)
    assert (cfg.rsqrt_frac + e - cfg.norm_frac).max() <= cfg.max_norm_shift
    plo, phi = -(1 << (cfg.param_bits - 1)), (1 << (cfg.param_bits - 1)) - 1
    gamma = np.where(np.arange(cfg.dim) % 2, phi, plo)
    beta = rng.integers(plo, phi + 1, cfg.dim)
    err, bound = _errors(cfg, x, gamma, beta)
    assert np.all(err <= bound)


# ---- reciprocal square root ------------------------------------------------------------------


def _rsqrt_bound(cfg: LayerNormConfig) -> float:
    """Relative error bound of :func:`rsqrt`: seed error from the table, squared by each Newton
    step, plus a few LSBs of truncation per step and half an LSB from truncating ``u``."""
    k = cfg.rsqrt_lut_bits - 1
    seeds = rsqrt_seed_table(cfg) / 2.0**cfg.rsqrt_frac
    j = np.arange(1 << k)
    delta = 0.0
    for h in (0, 1):
        a = (1 + h) * (1 + j / (1 << k))
        b = (1 + h) * (1 + (j + 1) / (1 << k))
        s = seeds[h * (1 << k) + j]
        delta = max(delta, np.abs(s * np.sqrt(a) - 1).max(), np.abs(s * np.sqrt(b) - 1).max())
    lsb = 2.0**-cfg.rsqrt_frac
    rho = delta + lsb
    for _ in range(cfg.newton_steps):
        rho = 1.5 * rho**2 + rho**3 + 4 * lsb
    return rho


def _rsqrt_inputs(cfg: LayerNormConfig) -> np.ndarray:
    """Every W below 2**(rsqrt_frac + 2) (so every normalised u; up to 2**20 for wide
    rsqrt_frac), and for each exponent up to the largest the unit sees: both ends of the octave
    pair and random values in it."""
    rng = np.random.default_rng(1)
    parts = [np.arange(1, 1 << min(cfg.rsqrt_frac + 2, 20), dtype=np.int64)]
    for e in range(cfg.max_exponent + 1):
        low, high = 1 << (2 * e), min(1 << (2 * e + 2), 1 << 62)
        parts.append(np.array([low, low + 1, high - 1, (low + high) // 2], dtype=np.int64))
        parts.append(rng.integers(low, high, 2000, dtype=np.int64))
    return np.concatenate(parts)


@pytest.mark.parametrize(
    "cfg",
    [
        DEFAULT,
        LayerNormConfig(newton_steps=0),
        LayerNormConfig(newton_steps=2, rsqrt_frac=20),
        LayerNormConfig(rsqrt_lut_bits=1, newton_steps=3, rsqrt_frac=24),
        LayerNormConfig(rsqrt_lut_bits=10, newton_steps=0, rsqrt_frac=12, norm_frac=10),
    ],
    ids=["default", "seed-only", "newton2", "lut1-newton3", "lut10"],
)
def test_rsqrt_accuracy_over_whole_range(cfg):
    w = _rsqrt_inputs(cfg)
    y, e = rsqrt(w, cfg)
    # 4**e <= W < 4**(e+1): the even normalising shift.
    assert np.all(np.left_shift(1, 2 * e) <= w)
    assert np.all((w >> (2 * e + 2)) == 0)
    assert y.max() < 1 << cfg.mantissa_bits
    rel = y / 2.0 ** (cfg.rsqrt_frac + e) * np.sqrt(w.astype(np.float64)) - 1
    bound = _rsqrt_bound(cfg)
    worst = np.abs(rel).max()
    assert worst <= bound, f"worst relative error {worst:.3g} above the bound {bound:.3g}"
    # The bound is not vacuous: it is within a factor of a few of what is reached.
    assert worst > bound / 4


def test_rsqrt_default_precision_and_newton_gain():
    """One Newton step from a 64-entry table gives about 13 bits; a second one reaches the
    ``rsqrt_frac`` resolution."""
    w = _rsqrt_inputs(DEFAULT)

    def worst(cfg):
        y, e = rsqrt(w, cfg)
        return np.abs(y / 2.0 ** (cfg.rsqrt_frac + e) * np.sqrt(w.astype(np.float64)) - 1).max()

    seed = worst(LayerNormConfig(newton_steps=0))
    one = worst(DEFAULT)
    two = worst(LayerNormConfig(newton_steps=2))
    assert 0.005 < seed < 0.008
    assert one < 1e-4
    assert two < 6 * 2.0**-DEFAULT.rsqrt_frac
    assert two < one < seed


def test_rsqrt_rejects_bad_inputs():
    with pytest.raises(ValueError, match="rsqrt"):
        rsqrt(np.array([0, 5]), DEFAULT)
    with pytest.raises(ValueError, match="rsqrt"):
        rsqrt(np.array([1.5]), DEFAULT)


# ---- accuracy against float LayerNorm ------------------------------------------------------------


def test_float_reference_is_torch_layer_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 16)) * 3 + 1
    gamma, beta = rng.normal(size=16), rng.normal(size=16)
    ours = layernorm_float(x, gamma, beta, 1e-5)
    theirs = torch.nn.functional.layer_norm(
        torch.from_numpy(x),
        (16,),
        weight=torch.from_numpy(gamma),
        bias=torch.from_numpy(beta),
        eps=1e-5,
    ).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def _activations(cfg: LayerNormConfig, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Transformer-like activations: per-channel scale and offset, a few large outlier
    channels."""
    n = cfg.dim
    scale = rng.lognormal(0.0, 0.5, n)
    scale[rng.choice(n, size=min(n, 4), replace=False)] *= 25
    offset = rng.normal(0.0, 0.5, n)
    return rng.normal(size=(rows, n)) * scale + offset


def _errors(cfg, x_raw, gamma_raw, beta_raw):
    """Golden outputs, float reference (saturated like the output) and the per-element bound,
    all in output LSBs."""
    got = layernorm(x_raw, gamma_raw, beta_raw, cfg)
    x = x_raw / 2.0**cfg.in_frac
    gamma = gamma_raw / 2.0**cfg.param_frac
    beta = beta_raw / 2.0**cfg.param_frac
    lsb = 2.0**cfg.out_frac
    lo, hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    # eps = 0 leaves float LayerNorm undefined on constant rows; the unit then uses E = 1.
    eps = cfg.eps or cfg.eps_int / (cfg.dim**2 * 4.0**cfg.in_frac)
    ref = np.clip(layernorm_float(x, gamma, beta, eps) * lsb, lo, hi)
    z_true = np.abs(layernorm_float(x, np.ones(cfg.dim), np.zeros(cfg.dim), eps))
    # Output rounding; rsqrt error plus the integer eps (|E - exact| <= 1/2) on z; z rounding.
    rho = _rsqrt_bound(cfg) + 0.5 / cfg.eps_int
    bound = 0.5 + lsb * np.abs(gamma) * (z_true * rho + 2.0 ** -(cfg.norm_frac + 1)) + 1e-9
    return np.abs(got - ref), bound


@pytest.mark.parametrize(
    "cfg",
    [
        DEFAULT,
        LayerNormConfig(dim=7),
        LayerNormConfig(dim=768, newton_steps=2, rsqrt_frac=20, norm_frac=16),
        LayerNormConfig(dim=64, in_bits=8, in_frac=4, out_bits=8, out_frac=5, param_frac=12),
    ],
    ids=["default", "dim7", "dim768-newton2", "int8"],
)
def test_accuracy_against_float_layernorm(cfg):
    rng = np.random.default_rng(cfg.dim)
    gamma, beta = quantize_params(rng.normal(1, 0.3, cfg.dim), rng.normal(0, 0.3, cfg.dim), cfg)
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1))
    uniform = rng.integers(lo, hi, (300, cfg.dim))
    realistic = quantize_input(_activations(cfg, rng, 300) * 2.0 ** (cfg.in_bits - 9), cfg)
    for name, x in (("uniform", uniform), ("activations", realistic)):
        err, bound = _errors(cfg, x, gamma, beta)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), (
            f"{name}: error {err[worst]:.3f} LSB above the bound {bound[worst]:.3f} at {worst}"
        )
        # Measured: rounding dominates, about 0.25 LSB on average and below 0.7 at worst.
        assert err.max() < 0.8, f"{name}: max error {err.max():.3f} LSB"
        assert err.mean() < 0.27, f"{name}: mean error {err.mean():.3f} LSB"


def test_default_accuracy_on_real_looking_activations():
    """ViT-like rows through the default unit: max and mean error in output LSBs."""
    cfg = DEFAULT
    rng = np.random.default_rng(42)
    x = quantize_input(_activations(cfg, rng, 2000), cfg)
    gamma, beta = quantize_params(rng.normal(1, 0.3, cfg.dim), rng.normal(0, 0.3, cfg.dim), cfg)
    err, bound = _errors(cfg, x, gamma, beta)
    assert np.all(err <= bound)
    assert err.max() < 0.75
    assert 0.23 < err.mean() < 0.27  # output rounding alone gives 0.25


@pytest.mark.parametrize(
    "cfg",
    [DEFAULT, LayerNormConfig(dim=5, param_frac=6, out_frac=8), LayerNormConfig(dim=1)],
    ids=["default", "exact-beta", "dim1"],
)
def test_zero_variance_rows_give_beta(cfg):
    rng = np.random.default_rng(2)
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    codes = [lo, hi, 0, -1, 1, int(rng.integers(lo, hi))]
    x = np.repeat(np.array(codes)[:, None], cfg.dim, axis=1)
    plo, phi = -(1 << (cfg.param_bits - 1)), 1 << (cfg.param_bits - 1)
    gamma, beta = rng.integers(plo, phi, cfg.dim), rng.integers(plo, phi, cfg.dim)
    out = layernorm(x, gamma, beta, cfg)
    # beta in the output format: shifted exactly, or rounded half up when it has more fraction
    # bits than the output.
    shift = cfg.param_frac - cfg.out_frac
    if shift <= 0:
        want = beta * 2 ** (-shift)
    else:
        want = np.floor(beta / 2**shift + 0.5).astype(np.int64)
    olo, ohi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    want = np.clip(want, olo, ohi)
    assert np.array_equal(out, np.broadcast_to(want, out.shape))
    assert np.all(normalize(x, cfg) == 0)


def test_shift_invariance_is_exact():
    """Adding a constant to a row changes neither S1-centred values nor V: bit-identical out."""
    cfg = LayerNormConfig(dim=24)
    rng = np.random.default_rng(3)
    x = rng.integers(-5000, 5000, (20, cfg.dim))
    gamma, beta = quantize_params(rng.normal(1, 0.3, cfg.dim), rng.normal(0, 0.3, cfg.dim), cfg)
    base = layernorm(x, gamma, beta, cfg)
    for k in (-20000, -1, 1, 12345):
        assert np.array_equal(layernorm(x + k, gamma, beta, cfg), base)


def test_rows_are_independent_and_vectorised():
    cfg = LayerNormConfig(dim=9)
    rng = np.random.default_rng(4)
    x = rng.integers(-30000, 30000, (2, 3, cfg.dim))
    gamma, beta = rng.integers(-4000, 4000, cfg.dim), rng.integers(-4000, 4000, cfg.dim)
    out = layernorm(x, gamma, beta, cfg)
    assert out.shape == x.shape and out.dtype == np.int64
    for i in range(2):
        for j in range(3):
            assert np.array_equal(out[i, j], layernorm(x[i, j], gamma, beta, cfg))


def test_bad_inputs_are_refused():
    cfg = LayerNormConfig(dim=4)
    g = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        layernorm(np.zeros((2, 5), dtype=np.int64), g, g, cfg)
    with pytest.raises(ValueError, match="integer"):
        layernorm(np.zeros((2, 4)), g, g, cfg)
    with pytest.raises(ValueError, match="16 signed bits"):
        layernorm(np.full((1, 4), 1 << 15), g, g, cfg)
    with pytest.raises(ValueError, match="gamma"):
        layernorm(np.zeros((1, 4), dtype=np.int64), np.zeros(3, dtype=np.int64), g, cfg)
    with pytest.raises(ValueError, match="beta"):
        layernorm(np.zeros((1, 4), dtype=np.int64), g, np.full(4, -(1 << 15) - 1), cfg)
    with pytest.raises(ValueError, match="finite"):
        quantize_input([np.nan, 0, 0, 0], cfg)


# ---- quantization and stream packing -------------------------------------------------------------


def test_quantize_helpers_round_half_up_and_saturate():
    cfg = LayerNormConfig(dim=4, in_bits=8, in_frac=2, param_bits=6, param_frac=3, out_frac=4)
    assert quantize_input([0.125, -0.125, 100.0, -100.0], cfg).tolist() == [1, 0, 127, -128]
    gamma, beta = quantize_params([1.0, 5.0, -5.0, 0.0625], [0.0, -0.0625, 0.0, 3.0], cfg)
    assert gamma.tolist() == [8, 31, -32, 1]
    assert beta.tolist() == [0, 0, 0, 24]
    assert dequantize_output(np.array([16, -8]), cfg).tolist() == [1.0, -0.5]


@pytest.mark.parametrize("bits", [5, 8, 12, 16, 20, 24])
def test_stream_packing(bits):
    cfg = LayerNormConfig(dim=3, in_bits=bits, in_frac=1, out_bits=bits, out_frac=1)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = np.array([[lo, hi, -1], [0, 1, lo + 1]])
    data = pack_rows(x, cfg)
    nbytes = math.ceil(bits / 8)
    assert len(data) == 6 * nbytes
    # Sign-extended little-endian containers: the y unpacker (same width) recovers the values.
    assert unpack_outputs(data, cfg).tolist() == x.reshape(-1).tolist()
    assert data[-nbytes:] == (lo + 1).to_bytes(nbytes, "little", signed=True)


def test_params_packing_layout():
    cfg = LayerNormConfig(dim=2, param_bits=12, param_frac=8)
    data = pack_params(np.array([-2, 300]), np.array([5, -2048]), cfg)
    assert data == (
        (-2).to_bytes(2, "little", signed=True)
        + (5).to_bytes(2, "little", signed=True)
        + (300).to_bytes(2, "little", signed=True)
        + (-2048).to_bytes(2, "little", signed=True)
    )
    with pytest.raises(ValueError, match="whole"):
        unpack_outputs(b"\x00\x01\x02", cfg)
