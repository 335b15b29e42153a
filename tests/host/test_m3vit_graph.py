"""The M³ViT op graph: bit-exact on FPGA devices, float on torch, mixed within tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.host.fpga import FpgaEmulator
from tessera.host.graph import run_graph
from tessera.host.m3vit import m3vit_graph
from tessera.host.torch_device import TorchDevice


@pytest.mark.parametrize("task", [0, 1])
def test_all_fpga_equals_the_integer_network(qm, images, task: int) -> None:  # type: ignore[no-untyped-def]
    graph = m3vit_graph(qm, task)
    names = [n.name for n in graph.nodes]
    assert names[0] == "embed" and names[-1] == "head"
    assert sum(n.op.kind == "expert" for n in graph.nodes) == 2 * qm.cfg.num_experts
    fpga = FpgaEmulator()
    run = run_graph(graph, dict.fromkeys(names, fpga), {"images": images.numpy()})
    np.testing.assert_array_equal(run.outputs["head"], qm.forward(images, task))
    assert fpga.cycles > 0


def test_all_torch_equals_the_float_network(qm, images) -> None:  # type: ignore[no-untyped-def]
    graph = m3vit_graph(qm, 0)
    cpu = TorchDevice("cpu")
    run = run_graph(graph, {n.name: cpu for n in graph.nodes}, {"images": images.numpy()})
    with torch.no_grad():
        ref = qm.model(images, 0).numpy()
    np.testing.assert_allclose(run.outputs["head"], ref, rtol=1e-4, atol=1e-4)


def test_mixed_placement_is_exact_per_op_and_close_overall(qm, images) -> None:  # type: ignore[no-untyped-def]
    graph = m3vit_graph(qm, 1)
    cpu, fpga = TorchDevice("cpu"), FpgaEmulator()
    # Attention on the CPU, everything else (experts included) on the FPGA, alternately.
    placement = {n.name: (cpu if n.op.kind == "attention_block" else fpga) for n in graph.nodes}
    run = run_graph(graph, placement, {"images": images.numpy()})
    logits = run.outputs["head"] * qm.logit_scale(1)
    with torch.no_grad():
        ref = qm.model(images, 1).numpy()
    assert run.crossings == 1 + 2 * qm.cfg.depth  # images in; each attention block out and back
    # Measured: same predictions as the float network, logits within 0.6 % of their range.
    np.testing.assert_array_equal(logits.argmax(-1), ref.argmax(-1))
    assert np.abs(logits - ref).max() <= 0.02 * np.abs(ref).max()
