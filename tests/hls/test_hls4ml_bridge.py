"""hls4ml C-simulation of expert MLPs against the golden model (bit-exact), and pinned hls4ml 1.3.0
behaviours that tessera relies on or works around.

Each ``.compile()`` is one g++ run of several seconds: the default suite compiles three projects
(two MLP precisions and the softmax pin).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hls4ml
import numpy as np
import pytest
import torch

from tessera.hls.hls4ml_bridge import (
    Hls4mlError,
    Hls4mlMlp,
    convert_mlp,
    hls4ml_config,
    predict_mlp,
)
from tessera.models.mlp import MlpPrecision, golden_mlp, mlp_from_torch, written_weights

PRECISIONS = {
    # ap_fixed defaults everywhere (AP_TRN, AP_WRAP), as hls4ml writes a bare "ap_fixed<W,I>".
    "default": MlpPrecision(),
    # Every mode different, saturating narrow accumulator: products, partial sums and results
    # all round and saturate, so the order of accumulation matters.
    "saturating": MlpPrecision(
        input="ap_fixed<12,4,AP_RND_CONV,AP_SAT>",
        weight="ap_fixed<6,0,AP_RND,AP_SAT>",
        bias="ap_fixed<10,2,AP_RND_INF,AP_SAT>",
        accum="ap_fixed<16,3,AP_RND_ZERO,AP_SAT>",
        result="ap_fixed<10,3,AP_RND_MIN_INF,AP_SAT_SYM>",
    ),
}
#: float32 just below 0.5: hls4ml prints it as "0.5000000" for a 7-fraction-bit weight, so the
#: C-simulation holds 0.5 where truncating the exact value would give 0.4921875.
BELOW_HALF = np.float32(0.5 - 2.0**-25)


def expert_mlp() -> torch.nn.Sequential:
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16)
    ).eval()
    with torch.no_grad():
        model[0].weight[0, 0] = float(BELOW_HALF)
    return model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Hls4mlMlp]:
    root = tmp_path_factory.mktemp("hls4ml")
    model = expert_mlp()
    return {name: convert_mlp(model, p, root) for name, p in PRECISIONS.items()}


def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [
        rng.normal(size=(32, 16)).astype(np.float32),  # typical activations
        rng.normal(scale=6.0, size=(32, 16)),  # float64, beyond the input range: wrap / saturate
        rng.uniform(-1, 1, size=16),  # one sample
    ]


@pytest.mark.parametrize("name", PRECISIONS)
def test_hls4ml_csim_matches_golden_bit_exact(built: dict[str, Hls4mlMlp], name: str) -> None:
    hls = built[name]
    assert not hls.reused and hls.compile_seconds > 0
    layers = mlp_from_torch(expert_mlp())
    for x in inputs():
        got = predict_mlp(hls, x)
        expected = golden_mlp(x, layers, PRECISIONS[name])
        assert got.shape == expected.shape
        mismatch = np.flatnonzero(got.reshape(-1) != expected.reshape(-1))
        assert mismatch.size == 0, (
            f"{name}: first mismatch at flat index {mismatch[0]}: expected "
            f"{expected.reshape(-1)[mismatch[0]]}, received {got.reshape(-1)[mismatch[0]]}"
        )
    # hls4ml's own predict (the same library, through its ctypes wrapper) agrees.
    x = inputs()[1]
    np.testing.assert_array_equal(hls.graph.predict(np.ascontiguousarray(x)), predict_mlp(hls, x))


def test_planted_weight_shows_the_decimal_print_rounding(built: dict[str, Hls4mlMlp]) -> None:
    p = PRECISIONS["default"]
    assert int(written_weights(np.array([BELOW_HALF]), p.weight)[0]) == 64  # 0.5
    assert int(p.weight.quantize(BELOW_HALF)) == 63
    # What hls4ml wrote for w[0][0] (txt file, first value: weights are stored (n_in, n_out)).
    text = (built["default"].project_dir / "firmware/weights/w2.txt").read_text()
    tokens = text.split(", ")
    assert tokens[0] == "0.5000000"
    assert all(len(token.split(".")[1]) == p.weight.frac_bits for token in tokens)
    # Feeding x = e_0 exposes w[0][0] in output 0 of the first layer; with the other weights the
    # same, a model truncating the exact value would differ from hls4ml by 2**-7 * (w2 column).
    x = np.zeros(16)
    x[0] = 1.0
    layers = mlp_from_torch(expert_mlp())
    np.testing.assert_array_equal(predict_mlp(built["default"], x), golden_mlp(x, layers, p))


def test_generated_project_uses_the_precisions_and_kernel(built: dict[str, Hls4mlMlp]) -> None:
    for name, hls in built.items():
        p = PRECISIONS[name]
        defines = (hls.project_dir / "firmware/defines.h").read_text()

        def typedef(fixed: object, defines: str = defines) -> str:
            text = str(fixed).replace(">", ",0>")  # hls4ml appends the saturation bits
            return text.replace(",AP_TRN,AP_WRAP,0>", ">")  # and omits default modes

        for line in (
            f"typedef {typedef(p.input)} input_t;",
            f"typedef {typedef(p.weight)} _0_weight_t;",
            f"typedef {typedef(p.bias)} _2_bias_t;",
            f"typedef {typedef(p.accum)} _2_accum_t;",
            f"typedef {typedef(p.result)} result_t;",
        ):
            assert line in defines, f"{name}: {line!r} not in defines.h"
        parameters = (hls.project_dir / "firmware/parameters.h").read_text()
        # The golden model follows dense_latency (io_parallel, Latency strategy).
        assert parameters.count("using kernel = nnet::DenseLatency<data_T, res_T, CONFIG_T>;") == 2
        top = (hls.project_dir / "firmware/myproject.cpp").read_text()
        assert "nnet::relu<layer2_t, layer3_t, relu_config3>" in top


def test_repeat_conversion_reuses_the_library(built: dict[str, Hls4mlMlp]) -> None:
    first = built["saturating"]
    again = convert_mlp(expert_mlp(), PRECISIONS["saturating"], first.project_dir.parent)
    assert again.reused and again.compile_seconds == 0.0 and again.graph is None
    assert again.project_dir == first.project_dir and again.library == first.library
    x = inputs()[0]
    np.testing.assert_array_equal(predict_mlp(again, x), predict_mlp(first, x))
    # The other precision, same weights: a project of its own.
    assert built["default"].project_dir != first.project_dir


def test_bridge_rejects_bad_arguments(built: dict[str, Hls4mlMlp], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(16,\) or \(batch, 16\)"):
        predict_mlp(built["default"], np.zeros((2, 15)))
    with pytest.raises(ValueError, match="finite"):
        predict_mlp(built["default"], np.full(16, np.inf))
    with pytest.raises(ValueError, match="Hls4mlMlp"):
        predict_mlp(object(), np.zeros(16))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision must be an MlpPrecision"):
        convert_mlp(expert_mlp(), "ap_fixed<16,6>", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Tanh; only nn\.Linear"):
        convert_mlp(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh()), MlpPrecision())


def test_missing_hls4ml_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "hls4ml", None)  # makes `import hls4ml` fail
    with pytest.raises(Hls4mlError, match=r"pip install hls4ml==1\.3\.0"):
        convert_mlp(expert_mlp(), MlpPrecision(), tmp_path)


# --- pinned hls4ml 1.3.0 behaviours -------------------------------------------------------------


def test_pinned_precision_defaults() -> None:
    """A precision without modes means AP_TRN / AP_WRAP, the defaults the golden model uses."""
    from hls4ml.backends import get_backend
    from hls4ml.model.types import RoundingMode, SaturationMode

    parsed = get_backend("Vitis").convert_precision_string("ap_fixed<16,6>")
    assert (parsed.width, parsed.integer, parsed.signed) == (16, 6, True)
    assert parsed.rounding_mode is RoundingMode.TRN
    assert parsed.saturation_mode is SaturationMode.WRAP
    config = hls4ml_config(expert_mlp(), MlpPrecision(), 16, 2)
    assert config["Model"]["Strategy"] == "Latency" and config["Model"]["ReuseFactor"] == 1
    raw = hls4ml.utils.config_from_pytorch_model(
        expert_mlp(), input_shape=(16,), granularity="name", backend="Vitis"
    )
    assert raw["Model"]["Precision"] == {"default": "ap_fixed<16,6>"}
    assert raw["Model"]["Strategy"] == "Latency"
    assert raw["LayerName"]["_0"]["Precision"] == {
        "weight": "auto",
        "bias": "auto",
        "result": "auto",
        "accum": "auto",
    }


def test_pinned_softmax_with_name_granularity_is_constant(tmp_path: Path) -> None:
    """Known hls4ml 1.3.0 bug: with granularity='name' the Dense before a softmax gets an inferred
    ap_fixed<36,16> result that indexes the softmax tables wrongly, and every output is 205/1024
    (1/5 of a 5-way softmax in ap_fixed<16,6>), whatever the input. tessera does not use hls4ml's
    softmax: attention uses tessera's own softmax kernel."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.Softmax(dim=-1)).eval()
    config = hls4ml.utils.config_from_pytorch_model(
        model, input_shape=(8,), granularity="name", backend="Vitis"
    )
    graph = hls4ml.converters.convert_from_pytorch_model(
        model,
        hls_config=config,
        output_dir=str(tmp_path / "softmax"),
        backend="Vitis",
        io_type="io_parallel",
    )
    graph.compile()
    defines = (tmp_path / "softmax/firmware/defines.h").read_text()
    assert "typedef ap_fixed<36,16> _0_result_t;" in defines
    x = np.random.default_rng(0).normal(size=(8, 8))
    got = graph.predict(x)
    with torch.no_grad():
        reference = model(torch.from_numpy(x).float()).numpy()
    assert np.ptp(reference, axis=1).min() > 0.05  # the true outputs differ clearly
    np.testing.assert_array_equal(got, np.full((8, 5), 205 / 1024))


class _Linear3d(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _convert_3d(tmp_path: Path, **kwargs: str) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model = _Linear3d().eval()
    config = hls4ml.utils.config_from_pytorch_model(
        model, input_shape=(3, 8), granularity="name", backend="Vitis", **kwargs
    )
    graph = hls4ml.converters.convert_from_pytorch_model(
        model, hls_config=config, output_dir=str(tmp_path), backend="Vitis", io_type="io_parallel"
    )
    return model, graph


def test_pinned_linear_on_3d_input_is_wrong(tmp_path: Path) -> None:
    """hls4ml 1.3.0 turns a Linear on (seq, feat) input into a PointwiseConv1D, wrongly: with the
    default channels-last conversion the input is transposed and the Linear runs over the
    sequence axis (output [4, 8] instead of [3, 4], so reshaping the prediction to (seq, 4)
    fails); with channels_last_conversion='off' the shape is right but the weights keep torch's
    (out, in) order where the kernel reads (in, out) (see the slow test). tessera's expert MLPs
    take 2-D (tokens, features) input, one token per row."""
    _, graph = _convert_3d(tmp_path / "default")
    layers = {layer.name: layer for layer in graph.get_layers()}
    assert layers["fc"].class_name == "PointwiseConv1D"
    assert "transpose_input_for_x" in layers
    assert [v.shape for v in graph.get_output_variables()] == [[4, 8]]
    model, graph = _convert_3d(tmp_path / "off", channels_last_conversion="off")
    fc = {layer.name: layer for layer in graph.get_layers()}["fc"]
    assert [v.shape for v in graph.get_output_variables()] == [[3, 4]]
    weight = model.fc.weight.detach().numpy()
    np.testing.assert_array_equal(fc.weights["weight"].data.reshape(-1), weight.reshape(-1))


@pytest.mark.slow
def test_pinned_linear_on_3d_input_off_computes_with_misread_weights(tmp_path: Path) -> None:
    model, graph = _convert_3d(tmp_path / "off", channels_last_conversion="off")
    graph.compile()
    x = np.random.default_rng(0).normal(size=(2, 3, 8))
    got = graph.predict(np.ascontiguousarray(x.reshape(2, -1))).reshape(2, 3, 4)
    weight = model.fc.weight.detach().numpy().astype(np.float64)
    bias = model.fc.bias.detach().numpy()
    # ap_fixed<16,6> everywhere: within a few LSBs of x @ weight.reshape(in, out), far from x @ W.T.
    assert np.abs(got - (x @ weight.reshape(8, 4) + bias)).max() < 0.01
    assert np.abs(got - (x @ weight.T + bias)).max() > 0.5
