"""Running placed graphs: bit-exact integer ops, domain crossings, modelled timelines."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.host.fpga import FpgaEmulator
from tessera.host.graph import Graph, Node, QFormat, run_graph
from tessera.host.ops import GemmOp
from tessera.host.torch_device import TorchDevice
from tessera.models.gemm import GemmConfig, Requant, gemm
from tessera.models.rounding import quantize_multiplier

CFG = GemmConfig(rows=4, cols=4)


def mlp_graph(
    rng: np.random.Generator, x: np.ndarray
) -> tuple[Graph, list[np.ndarray], list[float]]:
    """Three int8 layers 12 -> 16 -> 8 -> 5, activation scales calibrated on ``x``."""
    dims = [12, 16, 8, 5]
    weights = [rng.normal(0, 0.3, (dims[i], dims[i + 1])) for i in range(3)]
    scales = [float(np.abs(x).max()) / 127]
    nodes = []
    prev, h = "x", x.astype(np.float64)
    for i, w in enumerate(weights):
        w_scale = np.abs(w).max() / 127
        wq = np.round(w / w_scale).astype(np.int64)
        h = h @ w
        if i < 2:
            out_scale = float(np.abs(h).max()) / 127
            rq = Requant(*quantize_multiplier(scales[-1] * w_scale / out_scale))
            fmt = QFormat(out_scale, 8)
        else:
            rq, out_scale = None, scales[-1] * w_scale
            fmt = QFormat(out_scale, 32)
        op = GemmOp(f"fc{i}", wq, CFG, rq, weight_scale=w_scale)
        nodes.append(Node(op, (prev,), fmt))
        scales.append(out_scale)
        prev = op.name
    graph = Graph(nodes, {"x": QFormat(scales[0], 8)})
    return graph, weights, scales


def test_all_fpga_is_the_golden_chain_and_mixed_is_exact_per_op() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (7, 12)).astype(np.float32)
    graph, weights, scales = mlp_graph(rng, x)
    fpga, cpu = FpgaEmulator(), TorchDevice("cpu")
    all_fpga = run_graph(graph, dict.fromkeys(["fc0", "fc1", "fc2"], fpga), {"x": x})
    h = QFormat(scales[0], 8).quantize(x)
    for node in graph.nodes:
        op = node.op
        h = gemm(h, op.weight, CFG, op.requant)
    np.testing.assert_array_equal(all_fpga.outputs["fc2"], h)
    assert all_fpga.crossings == 1 and all_fpga.transfers == 2

    mixed = run_graph(graph, {"fc0": cpu, "fc1": fpga, "fc2": cpu}, {"x": x})
    assert mixed.crossings == 2 and mixed.transfers == 6  # x in; fc0, fc1 out and in; fc2 out
    # The FPGA op is bit-exact on what it was given: fc0's float output quantized.
    fc0_float = x @ (graph.nodes[0].op.weight * graph.nodes[0].op.weight_scale)
    fc1_in = QFormat(scales[1], 8).quantize(fc0_float.astype(np.float32))
    fc1_out = gemm(fc1_in, graph.nodes[1].op.weight, CFG, graph.nodes[1].op.requant)
    fc2_expected = QFormat(scales[2], 8).dequantize(fc1_out) @ (
        graph.nodes[2].op.weight * graph.nodes[2].op.weight_scale
    ).astype(np.float32)
    np.testing.assert_allclose(mixed.outputs["fc2"], fc2_expected, rtol=1e-5, atol=1e-5)
    # And the whole is close to the float network (error bound measured: int8 with headroom).
    ref = x.astype(np.float64)
    for w in weights:
        ref = ref @ w
    got = all_fpga.outputs["fc2"] * scales[3]
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= 0.03, err
    assert mixed.finish > 0


def test_graph_errors() -> None:
    rng = np.random.default_rng(1)
    graph, _, _ = mlp_graph(rng, rng.normal(0, 1, (3, 12)))
    with pytest.raises(ValueError, match="neither a graph input"):
        Graph(graph.nodes[1:], {"x": None})
    with pytest.raises(ValueError, match="missing graph inputs"):
        run_graph(graph, {}, {})
    with pytest.raises(ValueError, match="nodes without a device"):
        run_graph(graph, {}, {"x": np.zeros((1, 12))})
    no_format = Graph(graph.nodes, {"x": None})
    fpga = FpgaEmulator()
    with pytest.raises(ValueError, match="no integer format"):
        run_graph(no_format, dict.fromkeys(["fc0", "fc1", "fc2"], fpga), {"x": np.zeros((1, 12))})


def test_an_op_reading_its_segment_and_a_copied_value() -> None:
    """c reads b (pending in its device's segment) and a (from the other device, copied in,
    which flushes that segment): both references must still point at the right values."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (5, 12)).astype(np.float32)
    fmt = QFormat(float(np.abs(x).max()) / 127, 8)
    wa, wb = (rng.integers(-20, 21, (12, 12)) for _ in range(2))
    rq = Requant(*quantize_multiplier(1 / 64))

    class Add(GemmOp):
        def run_int(self, p, q):  # type: ignore[no-untyped-def]
            return np.clip(p + q, -128, 127)

        def fpga_cycles(self, p, q):  # type: ignore[no-untyped-def]
            return p.size

    a, b = GemmOp("a", wa, CFG, rq), GemmOp("b", wb, CFG, rq)
    c = Add("c", wa, CFG, rq)
    graph = Graph(
        [Node(a, ("x",), fmt), Node(b, ("x",), fmt), Node(c, ("b", "a"), fmt)], {"x": fmt}
    )
    one, two = FpgaEmulator("fpga:emu1"), FpgaEmulator("fpga:emu2")
    run = run_graph(graph, {"a": two, "b": one, "c": one}, {"x": x})
    xq = fmt.quantize(x)
    want = np.clip(gemm(xq, wb, CFG, rq) + gemm(xq, wa, CFG, rq), -128, 127)
    np.testing.assert_array_equal(run.outputs["c"], want)
