"""MLP precisions and fixed-point golden model: validation, hand-checked semantics, error bound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tessera.models.fixed_point import FixedType
from tessera.models.mlp import (
    MlpLayer,
    MlpPrecision,
    golden_mlp,
    mlp_float,
    mlp_from_torch,
    parse_fixed,
    written_weights,
)
from tessera.models.quantize import QuantSpec, calibrate, quantize
from tessera.models.rounding import Overflow, Rounding


def make_mlp(sizes: tuple[int, ...], seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    modules: list[torch.nn.Module] = []
    for index in range(len(sizes) - 1):
        modules.append(torch.nn.Linear(sizes[index], sizes[index + 1]))
        if index < len(sizes) - 2:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules).eval()


# --- MlpPrecision -------------------------------------------------------------------------------


def test_precision_defaults_are_ap_fixed_defaults() -> None:
    p = MlpPrecision()
    assert str(p.input) == "ap_fixed<16,6,AP_TRN,AP_WRAP>"
    assert str(p.weight) == "ap_fixed<8,1,AP_TRN,AP_WRAP>"
    assert str(p.bias) == "ap_fixed<16,6,AP_TRN,AP_WRAP>"
    assert str(p.accum) == "ap_fixed<32,12,AP_TRN,AP_WRAP>"
    assert str(p.result) == "ap_fixed<16,6,AP_TRN,AP_WRAP>"


def test_precision_round_trip_and_identity() -> None:
    p = MlpPrecision(result="ap_fixed<12,4,AP_RND_CONV,AP_SAT>", accum={"width": 24, "int_bits": 8})
    assert p.result == FixedType(12, 4, True, Rounding.RND_CONV, Overflow.SAT)
    assert p.accum == FixedType(24, 8)
    data = p.to_dict()
    assert data["result"] == {
        "width": 12,
        "int_bits": 4,
        "signed": True,
        "rounding": "RND_CONV",
        "overflow": "SAT",
    }
    assert MlpPrecision.from_dict(data) == p
    assert MlpPrecision.from_dict(data).digest == p.digest
    assert p.digest != MlpPrecision().digest
    assert p.short_name == f"mlp_x16i6_w8i1_b16i6_a24i8_r12i4_{p.digest}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": FixedType(33, 6)}, "input width must be in"),
        ({"accum": FixedType(63, 20)}, "accum width must be in"),
        ({"weight": "ap_fixed<8>"}, "weight: cannot parse"),
        ({"bias": 16}, "bias must be a FixedType"),
        ({"result": {"width": 0, "int_bits": 1}}, "result is not a valid"),
        ({"result": "ap_fixed<8,2,AP_FOO,AP_SAT>"}, "rounding must be one of"),
    ],
)
def test_precision_rejects_bad_fields(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MlpPrecision(**kwargs)


def test_parse_fixed() -> None:
    assert parse_fixed("ap_fixed<16,6>") == FixedType(16, 6)
    assert parse_fixed("ap_ufixed<8,0,AP_RND,AP_SAT>") == FixedType(8, 0, False, "RND", "SAT")
    assert parse_fixed("fixed<18,8,TRN,WRAP,0>") == FixedType(18, 8)
    with pytest.raises(ValueError, match="saturation bits must be 0"):
        parse_fixed("ap_fixed<16,6,AP_RND,AP_SAT,2>")


def test_from_quantization_power_of_two_scale_keeps_the_int8_codes() -> None:
    rng = np.random.default_rng(3)
    # Weights at grid points plus offsets of +-1/4 and +0.3 LSB: far from rounding ties, so the
    # decimal print of hls4ml does not move them.
    codes = rng.integers(-120, 121, size=(32, 16))
    offsets = rng.choice([-0.25, 0.25, 0.3], size=codes.shape)
    weights = ((codes + offsets) * 2.0**-7).astype(np.float32)
    params = calibrate(weights, QuantSpec(bits=8))
    # calibrate picks max|w| / 127; force the power-of-two scale 2**-7 it rounds up to.
    assert 2.0**-8 < float(params.scale) <= 2.0**-7
    p = MlpPrecision.from_quantization(params)
    assert p.weight == FixedType(8, 1, True, Rounding.RND_CONV, Overflow.SAT)
    pow2 = calibrate(np.array([127 * 2.0**-7]), QuantSpec(bits=8))
    np.testing.assert_array_equal(written_weights(weights, p.weight), quantize(weights, pow2))
    inputs = calibrate(np.array([-3.0, 2.5]), QuantSpec(bits=8, narrow_range=True))
    q = MlpPrecision.from_quantization(params, inputs, accum_bits=24)
    assert q.input == FixedType(8, 3, True, Rounding.RND_CONV, Overflow.SAT_SYM)  # 3/127 -> 2**-5
    assert q.accum == FixedType(24, 24 - 5 - 7) == q.bias
    assert q.result == FixedType(8, 3, True, Rounding.RND_CONV, Overflow.SAT)


def test_from_quantization_refuses_what_ap_fixed_cannot_express() -> None:
    w = np.random.default_rng(0).normal(size=(4, 4))
    with pytest.raises(ValueError, match="symmetric per-tensor"):
        MlpPrecision.from_quantization(calibrate(w, QuantSpec(symmetric=False)))
    with pytest.raises(ValueError, match="symmetric per-tensor"):
        MlpPrecision.from_quantization(calibrate(w, QuantSpec(granularity="channel")))


# --- weights as hls4ml writes them --------------------------------------------------------------


def test_written_weights_round_through_the_decimal_print() -> None:
    weight = FixedType(8, 1)  # 7 fractional bits -> printed with 7 decimals, then AP_TRN
    below = np.float32(0.5 - 2.0**-25)  # prints as "0.5000000"
    assert int(written_weights(np.array([below]), weight)[0]) == 64
    assert int(weight.quantize(below)) == 63  # truncating the exact value gives one code less
    # Values on the grid are exact either way; a value half an LSB off is truncated.
    grid = np.arange(-128, 128, dtype=np.float32) / 128
    np.testing.assert_array_equal(written_weights(grid, weight), np.arange(-128, 128))
    np.testing.assert_array_equal(
        written_weights(grid + np.float32(1 / 256), weight), np.arange(-128, 128)
    )


# --- golden model semantics, against hand-written integer arithmetic ---------------------------


def test_golden_dense_accumulates_in_order_with_saturation() -> None:
    # Integer formats make the expected raw values easy to follow by hand.
    p = MlpPrecision(
        input=FixedType(8, 8),
        weight=FixedType(4, 4),
        bias=FixedType(8, 8),
        accum=FixedType(8, 8, overflow="SAT"),
        result=FixedType(8, 8, overflow="SAT"),
    )
    layer = MlpLayer(np.array([[5.0, -5.0, 1.0]]), np.array([60.0]))
    x = np.array([20.0, 20.0, -5.0])
    # acc = 60 -> 60 + 100 = 160 saturates to 127 -> 127 - 100 = 27 -> 27 - 5 = 22.
    assert golden_mlp(x, [layer], p, return_raw=True).tolist() == [22]
    # A wider accumulator gives the plain sum 60 + 100 - 100 - 5 = 55.
    wide = dataclasses.replace(p, accum=FixedType(16, 16, overflow="SAT"))
    assert golden_mlp(x, [layer], wide, return_raw=True).tolist() == [55]
    # AP_WRAP: 160 wraps to -96, -196 wraps to 60, then 55: modular sums do not depend on order.
    wrap = dataclasses.replace(p, accum=FixedType(8, 8))
    assert golden_mlp(x, [layer], wrap, return_raw=True).tolist() == [55]


def test_golden_products_are_cast_to_the_accumulator_and_relu_clamps() -> None:
    p = MlpPrecision(
        input=FixedType(8, 4),  # 4 fractional bits
        weight=FixedType(8, 1),  # 7 fractional bits -> products have 11
        bias=FixedType(8, 4),
        accum=FixedType(16, 8),  # 8 fractional bits: each product truncated (floor) to 1/256
        result=FixedType(10, 6, rounding="RND"),  # 4 fractional bits, round half up
    )
    w = np.array([[3 / 128, 5 / 128], [-3 / 128, -5 / 128]])
    layer = MlpLayer(w, np.array([0.0, 0.0]), activation="relu")
    x = np.array([3 / 16, 5 / 16])  # raw 3 and 5
    # products (raw, 11 frac bits): 9, 25 -> floor(/8) = 1, 3 -> acc 4/256 -> RND to 1/16: 0/16
    # (4/256 = 0.25/16 rounds to 0); second row: -9, -25 -> -2, -4 -> -6/256 -> 0 -> relu 0.
    # Exact float values would be 34/2048 and -34/2048.
    assert golden_mlp(x, [layer], p, return_raw=True).tolist() == [0, 0]
    layer2 = MlpLayer(w * 4, np.array([0.5, 0.5]), activation="relu")
    # products 36, 100 -> 4, 12 -> acc (bias 128/256) 144/256 = 9/16 exactly -> raw 9; second
    # row: floor(-36/8) = -5, floor(-100/8) = -13 -> 128 - 18 = 110/256 = 6.875/16 -> RND 7.
    assert golden_mlp(x, [layer2], p, return_raw=True).tolist() == [9, 7]


def test_golden_input_conversion_uses_the_input_type_modes() -> None:
    layer = MlpLayer(np.eye(2), None)
    p = MlpPrecision(
        input="ap_fixed<8,4,AP_RND_CONV,AP_SAT>", weight="ap_fixed<8,2>", result="ap_fixed<16,8>"
    )
    x = np.array([[0.03125 * 3, 100.0]])  # 1.5 LSB -> 2 (ties to even); 100 saturates to 7.9375
    np.testing.assert_array_equal(golden_mlp(x, [layer], p), [[0.125, 7.9375]])
    wrap = dataclasses.replace(p, input=FixedType(8, 4))
    # TRN: 1.5 LSB -> 1; 100 = 1600 LSB wraps modulo 256 -> 64 -> 4.0.
    np.testing.assert_array_equal(golden_mlp(x, [layer], wrap), [[0.0625, 4.0]])


# --- golden model against float -----------------------------------------------------------------


def _error_bound(x: np.ndarray, layers: list[MlpLayer], p: MlpPrecision) -> np.ndarray:
    """Worst-case |golden - float| per output when nothing overflows.

    Per Linear: ``y_g - y = sum(xh*wq - x*w) + (bq - b) + rounding``, with
    ``xh*wq - x*w = xh*(wq - w) + w*(xh - x)``; rounding is at most one accumulator LSB per
    product and for the bias (zero when the cast is exact) plus one result LSB. ReLU is
    1-Lipschitz, so errors pass through it.
    """
    xh = p.input.to_float(p.input.quantize(x))
    err = np.abs(xh - x)
    x_type = p.input
    for index, layer in enumerate(layers):
        w = layer.weight.astype(np.float64)
        wq = p.weight.to_float(written_weights(layer.weight, p.weight))
        b = layer.bias_or_zeros.astype(np.float64)
        bq = p.bias.to_float(written_weights(layer.bias_or_zeros, p.bias))
        product_lsb = 0.0 if p.accum.frac_bits >= x_type.frac_bits + p.weight.frac_bits else 1.0
        bias_lsb = 0.0 if p.accum.frac_bits >= p.bias.frac_bits else 1.0
        rounding = (layer.in_features * product_lsb + bias_lsb) * p.accum.lsb + p.result.lsb
        err = err @ np.abs(w).T + np.abs(xh) @ np.abs(wq - w).T + np.abs(bq - b) + rounding
        xh = golden_mlp(x, layers[: index + 1], p)
        x_type = p.result
    return err


@pytest.mark.parametrize(
    "precision",
    [
        MlpPrecision(),
        MlpPrecision(
            input="ap_fixed<12,4,AP_RND_CONV,AP_SAT>",
            weight="ap_fixed<8,0,AP_RND,AP_SAT>",
            bias="ap_fixed<12,2,AP_RND,AP_SAT>",
            accum="ap_fixed<24,8>",
            result="ap_fixed<12,4,AP_RND_CONV,AP_SAT>",
        ),
    ],
    ids=["default", "rounded"],
)
def test_golden_error_against_float_is_within_the_derived_bound(precision: MlpPrecision) -> None:
    model = make_mlp((16, 32, 16), seed=1)
    layers = mlp_from_torch(model)
    x = np.random.default_rng(2).normal(scale=1.5, size=(256, 16)).astype(np.float32)
    golden = golden_mlp(x, layers, precision)
    reference = mlp_float(x, layers)
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy().astype(np.float64)
    assert np.abs(torch_out - reference).max() < 1e-5  # float32 vs float64 forward
    # No overflow anywhere (the bound assumes it): outputs well inside the result range.
    assert np.abs(golden).max() < precision.result.max_value / 2
    bound = _error_bound(x, layers, precision)
    error = np.abs(golden - reference)
    assert np.all(error <= bound + 1e-12)
    assert np.all(np.abs(golden - torch_out) <= bound + 1e-5)
    # Measured (fixed seeds): default max 0.137, mean 0.041 (largest bound 0.47); rounded max
    # 0.024, mean 0.0040 (largest bound 0.14). Truncating (AP_TRN) weights, inputs and results
    # biases every step downwards in the default case; rounding modes remove that bias.
    limit = {"default": (0.15, 0.045), "rounded": (0.03, 0.005)}
    key = "default" if precision == MlpPrecision() else "rounded"
    assert error.max() < limit[key][0]
    assert error.mean() < limit[key][1]


# --- mlp_from_torch and input checks ------------------------------------------------------------


def test_mlp_from_torch_extracts_layers() -> None:
    model = make_mlp((4, 6, 5, 3))
    layers = mlp_from_torch(model)
    assert [(lay.in_features, lay.out_features, lay.activation) for lay in layers] == [
        (4, 6, "relu"),
        (6, 5, "relu"),
        (5, 3, None),
    ]
    np.testing.assert_array_equal(layers[1].weight, model[2].weight.detach().numpy())
    assert layers[0].weight.dtype == np.float32
    single = mlp_from_torch(torch.nn.Linear(3, 2, bias=False))
    assert single[0].bias is None
    np.testing.assert_array_equal(single[0].bias_or_zeros, np.zeros(2, np.float32))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 2)), "must directly follow"),
        (
            torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.ReLU()),
            "must directly follow",
        ),
        (torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(2, 2)), "takes 2 features"),
        (torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh()), "Tanh; only nn.Linear"),
        (torch.nn.Sequential(), "no nn.Linear"),
        (torch.nn.Softmax(dim=-1), "nn.Sequential of nn.Linear"),
    ],
)
def test_mlp_from_torch_rejects_other_modules(module: torch.nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mlp_from_torch(module)


def test_golden_rejects_bad_input() -> None:
    layers = mlp_from_torch(make_mlp((4, 3)))
    p = MlpPrecision()
    with pytest.raises(ValueError, match=r"shape \(4,\) or \(batch, 4\)"):
        golden_mlp(np.zeros((2, 5)), layers, p)
    with pytest.raises(ValueError, match="finite"):
        golden_mlp(np.array([0.0, np.nan, 0.0, 0.0]), layers, p)
    with pytest.raises(ValueError, match="precision must be an MlpPrecision"):
        golden_mlp(np.zeros(4), layers, {"input": "ap_fixed<16,6>"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer 1 takes 5 features"):
        golden_mlp(np.zeros(4), [layers[0], MlpLayer(np.zeros((2, 5)))], p)
    with pytest.raises(ValueError, match="bias must be a float array of shape"):
        MlpLayer(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="activation must be"):
        MlpLayer(np.zeros((2, 3)), activation="gelu")  # type: ignore[arg-type]
    # One sample and a batch of one agree.
    x = np.linspace(-1, 1, 4)
    np.testing.assert_array_equal(golden_mlp(x, layers, p), golden_mlp(x[None], layers, p)[0])
