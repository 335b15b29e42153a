"""Tests of tessera.models.quantize against hand-computed values and scalar Python references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tessera.models.quantize import (
    QuantParams,
    QuantSpec,
    calibrate,
    dequantize,
    fake_quant_torch,
    quantize,
)

FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


def ref_quantize(x: float, scale: float, zero_point: int, qmin: int, qmax: int) -> int:
    """Scalar reference: Python's round() rounds half to even."""
    return min(max(round(x / scale) + zero_point, qmin), qmax)


# ---------------------------------------------------------------- QuantSpec
def test_spec_ranges() -> None:
    assert (QuantSpec().qmin, QuantSpec().qmax) == (-128, 127)
    assert (QuantSpec(narrow_range=True).qmin, QuantSpec(narrow_range=True).qmax) == (-127, 127)
    assert (QuantSpec(bits=4).qmin, QuantSpec(bits=4).qmax) == (-8, 7)
    assert (QuantSpec(bits=16).qmin, QuantSpec(bits=2).qmax) == (-32768, 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bits": 1}, "bits"),
        ({"bits": 17}, "bits"),
        ({"bits": 8.0}, "bits"),
        ({"bits": True}, "bits"),
        ({"symmetric": 1}, "symmetric"),
        ({"narrow_range": "yes"}, "narrow_range"),
        ({"granularity": "row"}, "granularity"),
        ({"axis": 1.0}, "axis"),
        ({"granularity": "group"}, "group_size"),
        ({"granularity": "group", "group_size": 0}, "group_size"),
        ({"granularity": "group", "group_size": -4}, "group_size"),
        ({"granularity": "channel", "group_size": 4}, "group_size"),
    ],
)
def test_spec_invalid_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        QuantSpec(**kwargs)  # type: ignore[arg-type]


def test_params_invalid_fields() -> None:
    spec = QuantSpec()
    with pytest.raises(ValueError, match="scale"):
        QuantParams(np.array(-1.0), np.array(0), spec)
    with pytest.raises(ValueError, match="scale"):
        QuantParams(np.array(np.nan), np.array(0), spec)
    with pytest.raises(ValueError, match="zero_point"):
        QuantParams(np.array(1.0), np.array(3), spec)  # symmetric needs 0
    asymmetric = QuantSpec(symmetric=False)
    with pytest.raises(ValueError, match="zero_point"):
        QuantParams(np.array(1.0), np.array(128), asymmetric)
    with pytest.raises(ValueError, match="zero_point"):
        QuantParams(np.array([1.0, 2.0]), np.array([0]), asymmetric)
    with pytest.raises(ValueError, match="scale"):
        QuantParams(np.array([1.0, 2.0]), np.array([0, 0]), spec)  # tensor needs shape ()


def test_params_are_read_only_copies() -> None:
    scale = np.array([1.0, 2.0])
    params = QuantParams(scale, np.array([0, 0]), QuantSpec(granularity="channel"))
    scale[0] = 5.0
    assert params.scale.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="read-only"):
        params.scale[0] = 3.0
    assert params == QuantParams(np.array([1.0, 2.0]), np.array([0, 0]), params.spec)


# ---------------------------------------------------------------- per-tensor, hand-computed
def test_symmetric_hand_computed() -> None:
    x = np.array([-63.5, -0.25, 0.25, 0.75, 1.25, 63.5])
    params = calibrate(x, QuantSpec())
    assert (float(params.scale), int(params.zero_point)) == (0.5, 0)
    q = quantize(x, params)
    # x / scale = -127, -0.5, 0.5, 1.5, 2.5, 127: ties go to even.
    assert q.tolist() == [-127, 0, 0, 2, 2, 127]
    assert dequantize(q, params).tolist() == [-63.5, 0.0, 0.0, 1.0, 1.0, 63.5]
    # Outside the calibrated range values clamp; qmin is -128 unless narrow_range.
    assert quantize([-100.0, 100.0], params).tolist() == [-128, 127]
    narrow = QuantParams(params.scale, params.zero_point, QuantSpec(narrow_range=True))
    assert quantize([-100.0, 100.0], narrow).tolist() == [-127, 127]


def test_asymmetric_hand_computed() -> None:
    x = np.array([-1.0, 0.0, 3.0])
    params = calibrate(x, QuantSpec(symmetric=False))
    assert float(params.scale) == 4.0 / 255
    # zero_point = round(-128 - (-1) / (4 / 255)) = round(-64.25) = -64
    assert int(params.zero_point) == -64
    q = quantize(x, params)
    assert q.tolist() == [-128, -64, 127]
    assert dequantize(q, params)[1] == 0.0  # zero is exact
    # All-positive data: the range is widened to include 0, which maps to qmin.
    positive = calibrate(np.array([1.0, 2.55]), QuantSpec(symmetric=False))
    assert int(positive.zero_point) == -128
    assert quantize([0.0], positive).tolist() == [-128]


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_range_does_not_divide_by_zero(symmetric: bool) -> None:
    x = np.zeros((3, 4))
    spec = QuantSpec(symmetric=symmetric, granularity="channel", axis=1)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        params = calibrate(x, spec)
        q = quantize(x, params)
        assert np.all(params.scale == 1.0)
        assert np.all(params.zero_point == 0)
        assert np.all(dequantize(q, params) == 0.0)


def test_invalid_inputs() -> None:
    params = calibrate(np.array([1.0, -2.0]), QuantSpec())
    with pytest.raises(ValueError, match="finite"):
        calibrate(np.array([1.0, np.nan]), QuantSpec())
    with pytest.raises(ValueError, match="finite"):
        quantize([np.inf], params)
    with pytest.raises(ValueError, match="empty"):
        calibrate(np.array([]), QuantSpec())
    with pytest.raises(ValueError, match="q"):
        dequantize([128], params)
    with pytest.raises(TypeError, match="q"):
        dequantize([1.5], params)


# ---------------------------------------------------------------- per-channel and per-group
def test_per_channel_shapes_and_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3))
    for axis in (1, -2):
        params = calibrate(x, QuantSpec(granularity="channel", axis=axis))
        assert params.scale.shape == (6,)
        for channel in range(6):
            expected = max(abs(float(v)) for v in x[:, channel, :].ravel()) / 127
            assert params.scale[channel] == expected
        q = quantize(x, params)
        assert q.shape == x.shape
        for index in [(0, 0, 0), (3, 5, 2), (2, 1, 1)]:
            scale = float(params.scale[index[1]])
            assert q[index] == ref_quantize(float(x[index]), scale, 0, -128, 127)
    asymmetric = calibrate(x, QuantSpec(symmetric=False, granularity="channel", axis=2))
    assert asymmetric.scale.shape == asymmetric.zero_point.shape == (3,)


def test_per_group_shapes_and_values() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8))
    spec = QuantSpec(granularity="group", axis=1, group_size=4)
    params = calibrate(x, spec)
    assert params.scale.shape == (3, 2)
    for row in range(3):
        for group in range(2):
            block = x[row, 4 * group : 4 * group + 4]
            assert params.scale[row, group] == max(abs(float(v)) for v in block) / 127
    q = quantize(x, params)
    for row in range(3):
        for column in range(8):
            scale = float(params.scale[row, column // 4])
            assert q[row, column] == ref_quantize(float(x[row, column]), scale, 0, -128, 127)
    # Groups of 2 along axis 0 of a (6, 2) tensor: scales (3, 2).
    by_rows = QuantSpec(granularity="group", axis=0, group_size=2)
    assert calibrate(np.ones((6, 2)), by_rows).scale.shape == (3, 2)


def test_shape_mismatches_raise() -> None:
    x = np.ones((3, 8))
    with pytest.raises(ValueError, match="group_size"):
        calibrate(x, QuantSpec(granularity="group", axis=1, group_size=3))
    with pytest.raises(ValueError, match="axis"):
        calibrate(x, QuantSpec(granularity="channel", axis=2))
    params = calibrate(x, QuantSpec(granularity="channel", axis=1))
    with pytest.raises(ValueError, match="channels"):
        quantize(np.ones((3, 7)), params)
    grouped = calibrate(x, QuantSpec(granularity="group", axis=1, group_size=4))
    with pytest.raises(ValueError, match="shape"):
        quantize(np.ones((2, 8)), grouped)
    with pytest.raises(ValueError, match="group_size"):
        quantize(np.ones((3, 6)), grouped)


# ---------------------------------------------------------------- properties
specs = st.builds(
    QuantSpec,
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    narrow_range=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(1, 32), elements=FINITE), spec=specs)
def test_round_trip_error_within_half_step(x: np.ndarray, spec: QuantSpec) -> None:
    params = calibrate(x, spec)
    scale, zero_point = float(params.scale), int(params.zero_point)
    q = quantize(x, params)
    assert q.tolist() == [ref_quantize(v, scale, zero_point, spec.qmin, spec.qmax) for v in x]
    error = np.abs(dequantize(q, params) - x)
    # Every calibrated value is inside the range; allow float rounding of x / scale and q * scale.
    assert np.all(error <= scale / 2 * (1 + 1e-9) + 1e-300)


@settings(max_examples=100, deadline=None)
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, max_side=4), elements=FINITE),
    spec=specs,
    data=st.data(),
)
def test_per_channel_error_within_half_step(
    x: np.ndarray, spec: QuantSpec, data: st.DataObject
) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), label="axis")
    spec = QuantSpec(spec.bits, spec.symmetric, "channel", axis, None, spec.narrow_range)
    params = calibrate(x, spec)
    assert params.scale.shape == (x.shape[axis],)
    q = quantize(x, params)
    assert q.shape == x.shape
    assert np.all((q >= spec.qmin) & (q <= spec.qmax))
    broadcast = [1] * x.ndim
    broadcast[axis] = x.shape[axis]
    half_step = params.scale.reshape(broadcast) / 2
    assert np.all(np.abs(dequantize(q, params) - x) <= half_step * (1 + 1e-9) + 1e-300)


# ---------------------------------------------------------------- fake quant in torch
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fake_quant_matches_numpy(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    t = torch.randn(4, 8, generator=generator, dtype=dtype)
    spec = QuantSpec(symmetric=False, granularity="group", axis=1, group_size=4)
    out = fake_quant_torch(t, spec)
    params = calibrate(t.double().numpy(), spec)
    expected = dequantize(quantize(t.double().numpy(), params), params)
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out, torch.from_numpy(expected).to(dtype))
    assert torch.equal(fake_quant_torch(t, params), out)


def test_fake_quant_gradient_is_identity_inside_range() -> None:
    t = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64, requires_grad=True)
    params = calibrate(t.detach().numpy(), QuantSpec(bits=4))
    fake_quant_torch(t, params).sum().backward()
    assert t.grad is not None
    assert torch.equal(t.grad, torch.ones_like(t))


def test_fake_quant_gradient_is_zero_where_clamped() -> None:
    t = torch.tensor([-10.0, -0.5, 0.0, 0.5, 10.0], requires_grad=True)
    params = QuantParams(np.array(0.25), np.array(0), QuantSpec(bits=4))  # range [-2, 1.75]
    out = fake_quant_torch(t, params)
    assert out.tolist() == [-2.0, -0.5, 0.0, 0.5, 1.75]
    out.sum().backward()
    assert t.grad is not None
    assert t.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_fake_quant_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError, match="t"):
        fake_quant_torch(torch.tensor([1, 2]), QuantSpec())
    with pytest.raises(TypeError, match="params_or_spec"):
        fake_quant_torch(torch.tensor([1.0]), "int8")  # type: ignore[arg-type]
