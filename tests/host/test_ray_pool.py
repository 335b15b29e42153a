"""Devices in Ray actors: the same results as local devices, and fail-over when an actor dies."""

from __future__ import annotations

import gc
import socket
import sys
import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tessera.host.device import DeviceError  # noqa: E402
from tessera.host.fpga import FpgaEmulator  # noqa: E402
from tessera.host.graph import Graph, Node, QFormat, run_graph  # noqa: E402
from tessera.host.ops import GemmOp  # noqa: E402
from tessera.host.pool import DevicePool  # noqa: E402
from tessera.host.ray_pool import RayDevice, ray_devices  # noqa: E402
from tessera.host.session import Session  # noqa: E402
from tessera.host.torch_device import TorchDevice  # noqa: E402
from tessera.models.gemm import GemmConfig, Requant  # noqa: E402
from tessera.models.m3vit import digits_tasks, load_m3vit  # noqa: E402
from tessera.models.m3vit_quant import quantize_m3vit  # noqa: E402


@pytest.fixture(scope="module")
def remote():  # type: ignore[no-untyped-def]
    """A local two-CPU cluster and four remote devices, started together (about 5 s each)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    devices = ray_devices(["fpga:emu0", "fpga:emu1", "cpu", "fpga:emu-victim"], num_cpus=0.25)
    yield dict(zip(["fpga0", "fpga1", "cpu", "victim"], devices, strict=True))
    for d in devices:
        d.close()
    ray.shutdown()


def int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, shape, dtype=np.int64)


def gemm_graph(rng: np.random.Generator) -> Graph:
    """Two requantized GEMMs in a chain: int8 in, int8 out."""
    cfg = GemmConfig(rows=4, cols=4)
    fmt = QFormat(1.0, 8)
    first = GemmOp("g1", int8(rng, (32, 24)), cfg, Requant(1 << 20, 30))
    second = GemmOp("g2", int8(rng, (24, 10)), cfg, Requant(1 << 20, 30), weight_scale=0.5)
    return Graph([Node(first, ("x",), fmt), Node(second, ("g1",), fmt)], {"x": fmt})


def test_ops_through_an_actor_equal_the_local_device(remote) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    graph = gemm_graph(rng)
    x = int8(rng, (6, 32))
    local = FpgaEmulator("fpga:local")
    fpga = remote["fpga0"]
    fpga.reset_timeline()
    got = run_graph(graph, dict.fromkeys(["g1", "g2"], fpga), {"x": x}, feed_domain="int")
    want = run_graph(graph, dict.fromkeys(["g1", "g2"], local), {"x": x}, feed_domain="int")
    out = got.outputs["g2"]
    np.testing.assert_array_equal(out, want.outputs["g2"])
    assert out.dtype == np.int64 and out.flags.writeable
    assert np.abs(out).max() > 0  # the requantization keeps a signal
    # Same modelled timeline: transfers by the link model, the ops by the cycle model.
    assert [(e.kind, e.label, e.start, e.end) for e in fpga.events] == [
        (e.kind, e.label, e.start, e.end) for e in local.events
    ]
    assert got.finish == want.finish > 0
    # The float implementation on a remote CPU: x @ (W * scale), as numpy computes it.
    g1 = graph.nodes[0].op
    buf = remote["cpu"].copy_in(x.astype(np.float32)).result()
    y = remote["cpu"].copy_out(remote["cpu"].run(g1, buf).result()).result()
    np.testing.assert_allclose(y, x @ g1.weight.astype(np.float64), rtol=1e-6)
    local_cpu = TorchDevice("cpu")
    y_local = local_cpu.copy_out(
        local_cpu.run(g1, local_cpu.copy_in(x.astype(np.float32)).result()).result()
    ).result()
    np.testing.assert_array_equal(y, y_local)
    # Device data is freed in the actor once the proxy's buffers are gone; each op shipped once.
    del got, buf
    gc.collect()
    assert fpga.resident() == (0, 2)
    local.close()
    local_cpu.close()


def test_remote_op_error_and_bad_data_are_the_local_ones(remote) -> None:  # type: ignore[no-untyped-def]
    fpga = remote["fpga0"]
    op = GemmOp("mismatch", int8(np.random.default_rng(2), (8, 4)), GemmConfig(rows=2, cols=2))
    x = fpga.copy_in(np.ones((3, 5), dtype=np.int64)).result()  # K = 5, the weight has K = 8
    with pytest.raises(DeviceError, match="device ray:fpga:emu0: mismatch failed: inner dim") as e:
        fpga.run(op, x).result()
    assert e.value.device == "ray:fpga:emu0"
    with pytest.raises(ValueError, match="raw integer"):
        fpga.copy_in(np.zeros(3)).result()
    # The device is still in service.
    ok = fpga.run(op, fpga.copy_in(np.ones((3, 8), dtype=np.int64)).result()).result()
    np.testing.assert_array_equal(fpga.copy_out(ok).result(), np.ones((3, 8)) @ op.weight)


def test_killed_actor_mid_batch_fails_over_exactly_once(remote) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    op = GemmOp("layer", int8(rng, (16, 8)), GemmConfig(rows=4, cols=4))
    victim = remote["victim"]
    served = {"victim": 0}
    lock = threading.Lock()

    def infer(device, item):  # type: ignore[no-untyped-def]
        idx, x = item
        if device is victim:
            with lock:
                served["victim"] += 1
                if served["victim"] == 4:  # the node's process dies mid-batch
                    ray.kill(victim.actor)
        out = device.run(op, device.copy_in(x).result()).result()
        return idx, device.copy_out(out).result()

    items = [(i, int8(rng, (2, 16))) for i in range(24)]
    with DevicePool([victim, remote["fpga1"]], timeout=60) as pool:
        answers = pool.map(infer, items)
    assert [a[0] for a in answers] == list(range(24))  # each once, in order
    for (_, x), (_, y) in zip(items, answers, strict=True):
        np.testing.assert_array_equal(y, x @ op.weight)  # int64 matmul: no wrap at 32 bits
    stats = pool.stats
    assert stats.submitted == stats.delivered == 24
    assert sum(stats.per_device.values()) == 24
    # The victim answered fewer requests than it took: the ones it dropped were re-run.
    assert stats.per_device["ray:fpga:emu-victim"] < served["victim"]
    assert list(stats.failed_devices) == ["ray:fpga:emu-victim"]
    assert "Ray actor is gone" in stats.failed_devices["ray:fpga:emu-victim"]
    assert stats.retries >= 1
    with pytest.raises(DeviceError, match="ray:fpga:emu-victim"):
        victim.copy_in(items[0][1]).result()


def test_session_on_a_remote_fpga_gives_the_local_logits(remote) -> None:  # type: ignore[no-untyped-def]
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:128], "int8")
    images = test.images[:8]
    with Session(qm, ["fpga:emu"]) as local:
        want = local.run(images, 1)
    # "ray:" specs go through make_device; the M3ViT's ops (lambdas) travel by cloudpickle.
    with Session(qm, ["ray:fpga:emu"]) as s:  # holds 1 CPU of the 2: 1/4 each is taken
        got = s.run(images, 1)
        info = s.report()["devices"][0]
        assert info["kind"] == "ray" and info["remote_kind"] == "fpga" and info["clock_mhz"] == 300
        assert s.report()["modelled_seconds"] > 0
    np.testing.assert_array_equal(got, want)
    expected = (qm.forward(images, 1) * qm.logit_scale(1)).astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bad_address_spec_and_missing_ray(remote, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError, match=f"cannot reach a Ray cluster at '127.0.0.1:{port}'"):
        ray_devices(["fpga:emu"], address=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match=r"bad Ray address 'headnode'.*host:port"):
        ray_devices(["fpga:emu"], address="headnode")
    with pytest.raises(ValueError, match="inside a Ray device"):
        RayDevice("ray:fpga:emu")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'tessera\[ray\]'"):
        ray_devices(["fpga:emu"])
