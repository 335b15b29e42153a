"""Golden online softmax: accuracy against float references, exactness of its integer parts, the
online/two-pass equivalence, and config validation."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest

from tessera.models.softmax import (
    LOG2E_FRAC,
    SoftmaxConfig,
    exp2_lut,
    exp_neg,
    online_max_sum,
    probabilities,
    reciprocal,
    rescale,
    softmax,
    softmax_float,
)

DEFAULT = SoftmaxConfig()
CONFIGS = {
    "default": DEFAULT,
    "narrow": SoftmaxConfig(
        in_bits=8, in_frac=4, exp_frac=10, lut_bits=3, interp_bits=4, out_bits=8, out_frac=7
    ),
    "fine": SoftmaxConfig(
        in_bits=20, in_frac=12, exp_frac=20, lut_bits=8, interp_bits=10, out_bits=24, out_frac=23
    ),
    "no_interp": SoftmaxConfig(in_bits=10, in_frac=2, exp_frac=8, lut_bits=6, interp_bits=0),
}


def _exp_error_bound(cfg: SoftmaxConfig) -> float:
    """Worst |exp_neg(d) - exp(d)| in units of ``2**-exp_frac``, from the algorithm's steps:
    the chord error of linear interpolation (``(h ln 2)**2 / 8`` relative, ``h`` the table
    step, or the whole step without interpolation), the truncation of ``t`` (``2**-t_frac``
    in the exponent), the table's rounding and the final rounding (half a unit each), and the
    interpolation's floor (one unit)."""
    one = 1 << cfg.exp_frac
    h = 2.0**-cfg.lut_bits
    if cfg.interp_bits:
        table = (h * math.log(2)) ** 2 / 8
    else:
        table = h * math.log(2)  # nearest lower table entry only
    truncation = 2.0**-cfg.t_frac * math.log(2)
    # Before the final shift the value is below 2 * one and the shift is at least 1 for d < 0.
    return one * (table + truncation) + 2.0


def _rows(cfg: SoftmaxConfig, length: int, spread: float, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cfg.quantize_logits(rng.normal(0.0, spread, size=(count, length)))


def _error_lsb(cfg: SoftmaxConfig, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """|golden - float| in output LSBs, elementwise."""
    lsb = 2.0**-cfg.out_frac
    got = softmax(x, cfg, mask) * lsb
    want = softmax_float(x / 2.0**cfg.in_frac, mask)
    return np.abs(got - want) / lsb


# ---- exp_neg -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exp_neg_against_numpy_exp(name):
    cfg = CONFIGS[name]
    d = np.arange(-(1 << cfg.in_bits), 1)
    got = exp_neg(d, cfg)
    want = np.exp(d / 2.0**cfg.in_frac) * (1 << cfg.exp_frac)
    err = np.abs(got - want)
    assert err.max() <= _exp_error_bound(cfg)
    # Measured (units of 2**-exp_frac, bound in brackets): default 4.13 (11.4), narrow 3.68
    # (8.5), fine 2.75 (5.7), no_interp 1.37 (7.5): the bound is within a small factor.
    assert err.max() >= _exp_error_bound(cfg) / 8
    assert got[-1] == 1 << cfg.exp_frac and got[0] == 0
    assert np.all(np.diff(got) >= 0), "exp_neg must not decrease as d grows"
    assert got.min() >= 0 and got.max() <= 1 << cfg.exp_frac


def test_exp_neg_table_and_errors():
    cfg = DEFAULT
    lut = exp2_lut(cfg)
    assert len(lut) == (1 << cfg.lut_bits) + 1
    assert lut[0] == 1 << cfg.exp_frac and lut[-1] == 2 << cfg.exp_frac
    k = np.arange(len(lut))
    assert np.all(np.abs(lut - np.exp2(k / (1 << cfg.lut_bits) + cfg.exp_frac)) <= 0.5)
    # log2(e) with LOG2E_FRAC bits is good to half an LSB.
    assert abs(round(math.log2(math.e) * 2**LOG2E_FRAC) - math.log2(math.e) * 2**LOG2E_FRAC) < 0.5
    with pytest.raises(ValueError, match="<= 0"):
        exp_neg([-3, 1], cfg)


def test_exp_neg_saturates_where_the_result_is_zero():
    cfg = DEFAULT
    # Far below the smallest representable exponential the shift saturates: still exactly 0.
    tiny = -int((cfg.exp_frac + 2) * math.log(2) * (1 << cfg.in_frac)) - 1
    d = np.array([tiny, tiny - 1000, -(1 << cfg.in_bits)])
    assert np.all(exp_neg(d, cfg) == 0)


# ---- reciprocal and rescale ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reciprocal_is_exact_rounding(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(1)
    one = 1 << cfg.exp_frac
    top = cfg.max_len << cfg.exp_frac
    totals = [one, one + 1, 2 * one - 1, 2 * one, 3 * one, top - 1, top]
    totals += [int(v) for v in rng.integers(one, top + 1, size=300)]
    got = reciprocal(np.array(totals, dtype=np.int64), cfg)
    scale = 1 << (cfg.exp_frac + cfg.recip_frac)
    for total, g in zip(totals, got, strict=True):
        exact = Fraction(scale, total)
        want = math.floor(exact + Fraction(1, 2))
        assert g == want, f"total {total}: {g} != {want}"
        assert abs(Fraction(int(g)) - exact) <= Fraction(1, 2)
    assert got.max() == 1 << cfg.recip_frac  # exp(0) alone: 1/sum = 1.0, fits recip_bits
    assert int(got.max()).bit_length() <= cfg.recip_bits
    assert top.bit_length() <= cfg.sum_bits
    with pytest.raises(ValueError, match="at least exp"):
        reciprocal([one - 1], cfg)


def test_rescale_rounds_half_up():
    cfg = DEFAULT
    one = 1 << cfg.exp_frac
    rng = np.random.default_rng(2)
    total = rng.integers(one, cfg.max_len * one, size=200)
    factor = rng.integers(0, one + 1, size=200)
    got = rescale(total, factor, cfg)
    for t, f, g in zip(total, factor, got, strict=True):
        assert g == math.floor(Fraction(int(t) * int(f), one) + Fraction(1, 2))
    assert rescale(5 * one, one, cfg) == 5 * one


# ---- softmax against float -----------------------------------------------------------------------

# |p - p_float| <= 2**-out_frac + 2**-exp_frac + REL * p_float: one output LSB for the roundings
# of 1/sum and of p, one exponential LSB for the rounding of a small exp(x - max), and the
# relative error of the table / interpolation, shared by every exponential and so by the sum.
# Worst REL measured on these rows: default 6.0e-5 (rows of 256), narrow < 0 (its output rounding
# covers everything), fine 7.3e-6, no_interp 2.5e-2 (coarse table, no interpolation).
REL_BOUND = {"default": 1.0e-4, "narrow": 0.0, "fine": 1.0e-5, "no_interp": 3.0e-2}


def _excess(cfg: SoftmaxConfig, x: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Worst ``(|p - p_float| - 2**-out_frac - 2**-exp_frac) / p_float`` over the elements."""
    err = _error_lsb(cfg, x, mask) * 2.0**-cfg.out_frac
    p_float = softmax_float(x / 2.0**cfg.in_frac, mask)
    slack = err - 2.0**-cfg.out_frac - 2.0**-cfg.exp_frac
    return float(np.max(slack / np.maximum(p_float, 1e-300)))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("length", [1, 2, 7, 129, "max_len"])
def test_softmax_close_to_float(name, length):
    cfg = CONFIGS[name]
    length = cfg.max_len if length == "max_len" else length
    worst = max(
        _excess(cfg, _rows(cfg, length, spread, 100, seed))
        for seed, spread in enumerate((0.25, 1.0, 4.0, 16.0))
    )
    assert worst <= REL_BOUND[name]
    if length == 1:
        assert np.all(softmax(_rows(cfg, 1, 4.0, 20, 9), cfg) == 1 << cfg.out_frac)


def test_softmax_default_error_budget():
    """Absolute error of the default unit on full-length rows: measured 6.6 LSB worst (spread
    4: a dominant element and many small exponentials whose errors add up in the sum), 0.17 LSB
    mean (the final rounding alone averages 0.25 LSB on non-zero outputs)."""
    cfg = DEFAULT
    worst, total = 0.0, 0.0
    for seed, spread in enumerate((0.5, 2.0, 4.0, 8.0)):
        err = _error_lsb(cfg, _rows(cfg, cfg.max_len, spread, 200, 100 + seed))
        worst = max(worst, float(err.max()))
        total += float(err.mean())
    assert 1.0 < worst <= 8.0
    assert total / 4 < 0.3


@pytest.mark.parametrize("length", [1, 3, 129, 256])
def test_all_equal_rows(length):
    cfg = DEFAULT
    for value in (-(1 << (cfg.in_bits - 1)), -5, 0, (1 << (cfg.in_bits - 1)) - 1):
        x = np.full(length, value)
        # Every exponential is exactly exp(0), so the sum is exact; only 1/L is rounded (a
        # quarter LSB at most in the reciprocal, half an LSB in the output).
        assert online_max_sum(x, cfg)[1] == length << cfg.exp_frac
        p = softmax(x, cfg)
        assert np.all(p == p[0])
        assert abs(p[0] / 2.0**cfg.out_frac - 1.0 / length) <= 0.75 * 2.0**-cfg.out_frac


def test_spike_takes_everything():
    cfg = DEFAULT
    rng = np.random.default_rng(4)
    x = _rows(cfg, cfg.max_len, 1.0, 20, 4)
    where = rng.integers(cfg.max_len, size=20)
    x[np.arange(20), where] = (1 << (cfg.in_bits - 1)) - 1
    p = softmax(x, cfg)
    want = np.zeros_like(p)
    want[np.arange(20), where] = 1 << cfg.out_frac
    np.testing.assert_array_equal(p, want)
    assert np.all(softmax_float(x / 2.0**cfg.in_frac).max(axis=-1) >= 1 - 1e-12)


def test_masked_rows():
    cfg = DEFAULT
    rng = np.random.default_rng(5)
    x = _rows(cfg, 129, 3.0, 50, 5)
    mask = rng.random(x.shape) < 0.4
    mask[:, 7] = True  # every row keeps an element
    # Masked logits larger than every visible one must not matter.
    x = np.where(mask, x, np.maximum(x, 30 << cfg.in_frac))
    p = softmax(x, cfg, mask)
    assert np.all(p[~mask] == 0)
    for r in range(len(x)):
        np.testing.assert_array_equal(p[r, mask[r]], softmax(x[r, mask[r]], cfg))
    assert _excess(cfg, x, mask) <= REL_BOUND["default"]
    with pytest.raises(ValueError, match="unmasked"):
        softmax(x[:2], cfg, np.zeros(x[:2].shape, dtype=bool))


# ---- online vs two-pass --------------------------------------------------------------------------


def _two_pass(x: np.ndarray, cfg: SoftmaxConfig) -> tuple[np.ndarray, np.ndarray]:
    """Maximum known in advance: every exponential taken against the final maximum."""
    maximum = x.max(axis=-1)
    return maximum, exp_neg(x - maximum[..., None], cfg).sum(axis=-1)


def test_online_equals_two_pass_without_rescale():
    cfg = DEFAULT
    x = _rows(cfg, cfg.max_len, 3.0, 100, 6)
    # Put each row's maximum first: the running maximum never changes, so no rescale.
    first = x.argmax(axis=-1)
    x[:, 0], x[np.arange(len(x)), first] = x[np.arange(len(x)), first], x[:, 0].copy()
    np.testing.assert_array_equal(online_max_sum(x, cfg), _two_pass(x, cfg))


@pytest.mark.parametrize("order", ["random", "increasing"])
def test_online_within_rescale_rounding_of_two_pass(order):
    """Each new maximum rescales the running sum by a rounded exponential; over these rows the
    online sum stays within a relative 2.5e-4 of the two-pass sum (measured 1.6e-4 random,
    1.9e-4 increasing) and the probabilities within 6 LSB (measured 4 and 5)."""
    cfg = DEFAULT
    x = _rows(cfg, cfg.max_len, 4.0, 150, 7)
    if order == "increasing":
        x = np.sort(x, axis=-1)  # a new maximum at (nearly) every element
    m_online, t_online = online_max_sum(x, cfg)
    m_two, t_two = _two_pass(x, cfg)
    np.testing.assert_array_equal(m_online, m_two)
    rel = np.abs(t_online - t_two) / t_two
    assert 0 < rel.max() <= 2.5e-4
    p_online = softmax(x, cfg)
    p_two = probabilities(x, m_two, reciprocal(t_two, cfg), cfg)
    assert np.abs(p_online - p_two).max() <= 6


def test_online_rows_are_independent_and_row_shape_is_kept():
    cfg = DEFAULT
    x = _rows(cfg, 17, 2.0, 12, 8).reshape(3, 4, 17)
    p = softmax(x, cfg)
    assert p.shape == x.shape
    for idx in np.ndindex(3, 4):
        np.testing.assert_array_equal(p[idx], softmax(x[idx], cfg))


# ---- config --------------------------------------------------------------------------------------

BAD_FIELDS = [
    ("in_bits", 3),
    ("in_bits", 25),
    ("in_frac", -1),
    ("in_frac", 16),  # == in_bits
    ("exp_frac", 7),
    ("exp_frac", 21),
    ("lut_bits", 0),
    ("lut_bits", 9),
    ("interp_bits", -1),
    ("interp_bits", 11),
    ("out_bits", 1),
    ("out_bits", 25),
    ("out_frac", 0),
    ("out_frac", 16),  # == out_bits
    ("max_len", 0),
    ("max_len", 65537),
    ("max_len", 2.5),
    ("in_bits", True),
    ("exp_frac", "16"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_config_rejects_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(DEFAULT, **{field: value})


def test_config_rejects_too_many_exponent_bits():
    with pytest.raises(ValueError, match="interp_bits"):
        SoftmaxConfig(in_bits=8, in_frac=0, lut_bits=8, interp_bits=9)
    SoftmaxConfig(in_bits=8, in_frac=0, lut_bits=8, interp_bits=8)  # exactly at the limit


def test_config_round_trip_and_names():
    cfg = CONFIGS["fine"]
    assert SoftmaxConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest == SoftmaxConfig.from_dict(cfg.to_dict()).digest
    assert cfg.digest != DEFAULT.digest
    assert cfg.digest in cfg.short_name and cfg.short_name != DEFAULT.short_name
    assert DEFAULT.sum_bits == (DEFAULT.max_len << DEFAULT.exp_frac).bit_length()
    assert DEFAULT.recip_bits == DEFAULT.recip_frac + 1


def test_logit_checks():
    cfg = CONFIGS["narrow"]
    with pytest.raises(ValueError, match="8 signed bits"):
        softmax([0, 128], cfg)
    with pytest.raises(ValueError, match="integer"):
        softmax(np.array([0.5, 1.0]), cfg)
    with pytest.raises(ValueError, match="max_len"):
        softmax(np.zeros(cfg.max_len + 1, dtype=np.int64), cfg)
    with pytest.raises(ValueError, match="at least one element"):
        softmax(np.zeros((2, 0), dtype=np.int64), cfg)
    assert np.array_equal(cfg.quantize_logits([100.0, -100.0, 0.03125]), [127, -128, 1])
