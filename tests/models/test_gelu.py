"""GELU golden model: exact integer semantics, accuracy against the exact GELU, config checks."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest

from tessera.models.gelu import (
    GeluConfig,
    gelu,
    gelu_error_bound,
    gelu_float,
    gelu_plain_lut,
    gelu_rom,
    gelu_tanh_float,
    quantize_input,
    to_float,
)

PHI = NormalDist()
SMALL = GeluConfig(in_bits=10, in_frac=6, step_log2=4, rom_entries=89, rom_frac=12, rom_bits=10)
CONFIGS = [
    GeluConfig(),
    SMALL,
    GeluConfig(in_bits=12, in_frac=7, step_log2=4, rom_entries=89, lanes=1),
    GeluConfig(in_bits=8, in_frac=4, step_log2=4, rom_entries=65, rom_frac=4, rom_bits=2),
    GeluConfig(in_bits=20, in_frac=14, step_log2=6, rom_entries=385, rom_frac=20, rom_bits=18),
]


def _reference(x: int, cfg: GeluConfig) -> int:
    """The documented steps in Python ints and Fractions, written from the definition."""
    s = cfg.in_frac - cfg.step_log2
    rom = [int(v) for v in gelu_rom(cfg)]
    a = abs(x)
    idx, low = a // 2**s, a % 2**s
    relu = max(x, 0)
    if idx >= cfg.rom_entries - 1:
        return relu
    interp = rom[idx] + Fraction(rom[idx + 1] - rom[idx]) * low / 2**s  # rom_frac fraction bits
    delta = math.floor(interp / 2 ** (cfg.rom_frac - cfg.in_frac) + Fraction(1, 2))
    lo, hi = -(2 ** (cfg.in_bits - 1)), 2 ** (cfg.in_bits - 1) - 1
    return min(max(relu - delta, lo), hi)


def _all_codes(cfg: GeluConfig, limit: float | None = None) -> np.ndarray:
    lo, hi = cfg.code_min, cfg.code_max
    if limit is not None:
        bound = int(limit * 2**cfg.in_frac)
        lo, hi = max(lo, -bound), min(hi, bound)
    return np.arange(lo, hi + 1, dtype=np.int64)


# --- ROM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.short_name)
def test_rom_holds_rounded_delta(cfg):
    rom = gelu_rom(cfg)
    assert rom.shape == (cfg.rom_entries,) and rom.dtype == np.int64
    assert rom[0] == 0 and rom.min() >= 0 and rom.max() < 2**cfg.rom_bits
    for k, word in enumerate(rom):
        a = k * 2.0**-cfg.step_log2
        exact = a * PHI.cdf(-a) * 2**cfg.rom_frac
        assert abs(word - exact) <= 0.5 + 1e-6, f"entry {k}: {word} vs {exact}"


def test_default_rom_shape_and_peak():
    cfg = GeluConfig()
    rom = gelu_rom(cfg)
    assert len(rom) == 177 and cfg.range == 5.5
    # delta peaks at a = 0.7518 (0.16997); the nearest samples are k = 24 (0.75) and 0.78125.
    assert int(np.argmax(rom)) == 24
    assert rom.max() == round(0.75 * PHI.cdf(-0.75) * 2**16)
    assert rom[-1] == 0  # 5.5 * Phi(-5.5) = 1e-7 is far below half a ROM LSB


# --- exact integer semantics ---------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS[1:4], ids=lambda c: c.short_name)
def test_every_code_matches_the_definition(cfg):
    codes = _all_codes(cfg)
    want = np.array([_reference(int(x), cfg) for x in codes])
    np.testing.assert_array_equal(gelu(codes, cfg), want)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[4]], ids=lambda c: c.short_name)
def test_sampled_codes_match_the_definition(cfg):
    rng = np.random.default_rng(7)
    r, seg = cfg.range_code, 1 << cfg.low_bits
    codes = np.concatenate(
        [
            rng.integers(cfg.code_min, cfg.code_max + 1, 1500),
            rng.integers(-r - seg, r + seg, 1500),
            [cfg.code_min, cfg.code_max, 0, 1, -1, r - 1, r, r + 1, -r - 1, -r, -r + 1],
        ]
    ).astype(np.int64)
    want = np.array([_reference(int(x), cfg) for x in codes])
    np.testing.assert_array_equal(gelu(codes, cfg), want)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.short_name)
def test_odd_part_is_exactly_x(cfg):
    # ReLU(x) - ReLU(-x) = x and delta is even, so GELU(x) - GELU(-x) = x holds bit for bit.
    x = _all_codes(cfg)[1:]  # -min_code is not representable
    np.testing.assert_array_equal(gelu(x, cfg) - gelu(-x, cfg), x)


def test_edge_cases_default():
    cfg = GeluConfig()
    r = cfg.range_code
    assert r == 5632  # 5.5 * 2**10
    x = np.array([cfg.code_min, cfg.code_max, 0, r, r + 1, -r, -r - 1, r - 1, -(r - 1)])
    y = gelu(x, cfg)
    # At and beyond the ROM range the unit is ReLU; at 0 GELU is 0.
    assert list(y[:7]) == [0, cfg.code_max, 0, r, r + 1, 0, 0]
    # Just inside the range delta(5.5) ~ 1e-7 rounds to nothing as well.
    assert list(y[7:]) == [r - 1, 0]
    # Minimum of GELU: -0.16997 at x = -0.7518 -> -174 LSB (round(174.05)).
    assert gelu(_all_codes(cfg, 8.0), cfg).min() == -174
    assert gelu(np.array([-770]), cfg)[0] == -174
    # Small inputs: GELU(x) = x * Phi(x); 100 LSB -> 100 * Phi(0.0977) = 53.89 LSB.
    assert list(gelu(np.array([-2, -1, 1, 2, 100]), cfg)) == [-1, 0, 1, 1, 54]


def test_output_shape_and_dtype():
    cfg = GeluConfig()
    x = np.arange(-12, 12, dtype=np.int16).reshape(2, 3, 4)
    y = gelu(x, cfg)
    assert y.shape == (2, 3, 4) and y.dtype == np.int64
    assert gelu(np.int32(0), cfg).shape == ()


def test_bad_inputs():
    cfg = GeluConfig()
    with pytest.raises(ValueError, match="integer raw codes"):
        gelu(np.array([0.5]), cfg)
    with pytest.raises(ValueError, match="16 signed bits"):
        gelu(np.array([2**15]), cfg)
    with pytest.raises(ValueError, match="16 signed bits"):
        gelu_plain_lut(np.array([-(2**15) - 1]), cfg)


# --- accuracy ------------------------------------------------------------------------------------


def _errors(y_raw: np.ndarray, x_raw: np.ndarray, cfg: GeluConfig) -> np.ndarray:
    return np.abs(to_float(y_raw, cfg) - gelu_float(to_float(x_raw, cfg)))


def test_float_references():
    x = np.linspace(-8, 8, 2001)
    exact = np.array([v * PHI.cdf(v) for v in x])
    np.testing.assert_allclose(gelu_float(x), exact, rtol=0, atol=1e-15)
    tanh_error = np.abs(gelu_tanh_float(x) - exact).max()
    assert 1e-4 < tanh_error < 5e-4  # the approximation's known ~4.7e-4 worst case


def test_default_accuracy_vs_exact_gelu():
    """Every code in [-8, 8]: within the analytic bound (0.61 LSB) and far better than a plain
    LUT of the same size."""
    cfg = GeluConfig()
    x = _all_codes(cfg, 8.0)
    assert len(x) == 16 * 1024 + 1
    lsb = 2.0**-cfg.in_frac
    err = _errors(gelu(x, cfg), x, cfg)
    bound = gelu_error_bound(cfg)
    assert bound < 0.61 * lsb
    assert err.max() <= bound
    assert 0.5 * lsb < err.max()  # an output rounding of up to half an LSB is unavoidable
    assert err.mean() < 0.135 * lsb  # a correctly rounded output averages 0.125 LSB
    # At most 1 % of codes differ from the correctly rounded GELU, and then by one LSB.
    ideal = quantize_input(gelu_float(to_float(x, cfg)), cfg)
    off = np.abs(gelu(x, cfg) - ideal)
    assert off.max() == 1 and np.mean(off) < 0.01
    lut_err = _errors(gelu_plain_lut(x, cfg), x, cfg)
    assert lut_err.max() > 30 * err.max()
    assert lut_err.mean() > 30 * err.mean()


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=lambda c: c.short_name)
def test_accuracy_bound_other_formats(cfg):
    x = _all_codes(cfg, 8.0)
    err = _errors(gelu(x, cfg), x, cfg)
    assert err.max() <= gelu_error_bound(cfg)
    assert err.max() <= 2.0**-cfg.in_frac  # within one output LSB
    assert err.max() < _errors(gelu_plain_lut(x, cfg), x, cfg).max()


def test_plain_lut_definition():
    cfg = GeluConfig()
    spacing = 2 * cfg.range / (cfg.rom_entries - 1)  # 1/16: every sample point is a code
    j = np.arange(cfg.rom_entries)
    points = quantize_input(-cfg.range + j * spacing, cfg)
    want = [math.floor(p / 1024 * PHI.cdf(p / 1024) * 1024 + 0.5) for p in points]
    np.testing.assert_array_equal(gelu_plain_lut(points, cfg), want)
    # Between samples the nearest one is used (ties upwards); outside the range, ReLU.
    assert gelu_plain_lut(points[:1] + 31, cfg)[0] == want[0]
    assert gelu_plain_lut(points[:1] + 32, cfg)[0] == want[1]
    outside = np.array([cfg.range_code + 1, -cfg.range_code - 1, cfg.code_max])
    np.testing.assert_array_equal(gelu_plain_lut(outside, cfg), [outside[0], 0, outside[2]])


# --- conversions ---------------------------------------------------------------------------------


def test_quantize_and_back():
    cfg = GeluConfig()
    x = np.array([0.0, 1.0, -1.0, 2.5 / 1024, -2.5 / 1024, 0.1, 1e9, -1e9])
    raw = quantize_input(x, cfg)
    assert list(raw) == [0, 1024, -1024, 3, -2, 102, 32767, -32768]
    np.testing.assert_array_equal(to_float(raw[:3], cfg), x[:3])
    codes = _all_codes(cfg)
    np.testing.assert_array_equal(quantize_input(to_float(codes, cfg), cfg), codes)


# --- configuration -------------------------------------------------------------------------------


def test_defaults_and_derived():
    cfg = GeluConfig()
    assert (cfg.in_bits, cfg.in_frac, cfg.rom_entries, cfg.step_log2, cfg.lanes) == (
        16,
        10,
        177,
        5,
        4,
    )
    assert (cfg.low_bits, cfg.align_shift, cfg.container_bits, cfg.beat_bits) == (5, 11, 16, 64)
    assert GeluConfig(in_bits=20, in_frac=12).container_bits == 24


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"in_bits": 3}, "in_bits"),
        ({"in_bits": 25}, "in_bits"),
        ({"in_bits": 16.0}, "in_bits"),
        ({"in_frac": 16}, "in_frac"),
        ({"in_frac": 4}, "in_frac"),  # below step_log2 = 5
        ({"step_log2": 13}, "step_log2"),
        ({"rom_entries": 1}, "rom_entries"),
        ({"rom_entries": 4097}, "rom_entries"),
        ({"rom_frac": 9}, "rom_frac"),  # below in_frac
        ({"rom_frac": 31}, "rom_frac"),
        ({"rom_bits": 1}, "rom_bits"),
        ({"rom_bits": 13}, "rom_bits >= 14"),  # cannot hold delta's peak 11139
        ({"lanes": 0}, "lanes"),
        ({"lanes": True}, "lanes"),
        ({"in_bits": 8, "in_frac": 5}, "ROM range"),  # 5.5 > 4
        ({"rom_entries": 1026}, "ROM range"),  # 32.03 > 32
    ],
)
def test_invalid_configs(changes, match):
    with pytest.raises(ValueError, match=match):
        GeluConfig(**changes)


def test_rom_range_may_fill_the_input_range():
    cfg = GeluConfig(rom_entries=1025)  # range 32 = the input range
    assert cfg.range_code == 2**15
    assert gelu(np.array([cfg.code_min]), cfg)[0] == 0


def test_round_trip_and_names():
    cfg = GeluConfig(in_bits=12, in_frac=7, step_log2=4, rom_entries=89, lanes=1)
    assert GeluConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest == GeluConfig.from_dict(cfg.to_dict()).digest
    assert cfg.digest != GeluConfig().digest
    assert cfg.short_name == f"gelu_i12f7_l1_{cfg.digest}"
    with pytest.raises(ValueError, match="unknown GeluConfig fields"):
        GeluConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lanes = 2  # type: ignore[misc]
