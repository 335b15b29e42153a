"""The device API: asynchronous verbs, queues, modelled timelines, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tessera.host.device import LINKS, DeviceError, LinkModel, Op
from tessera.host.fpga import FpgaEmulator
from tessera.host.torch_device import TorchDevice, resolve_torch_device


class Scale(Op):
    """x * factor; the FPGA takes ``x.size`` cycles."""

    kind = "scale"

    def __init__(self, factor: int, name: str = "scale", sleep: float = 0.0) -> None:
        self.factor = factor
        self.name = name
        self.sleep = sleep

    def run_float(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.sleep)
        return x * self.factor

    def run_int(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.sleep)
        return x * self.factor

    def fpga_cycles(self, x: np.ndarray) -> int:
        return int(x.size)


class Broken(Op):
    kind = "broken"
    name = "broken"

    def run_int(self, x: np.ndarray) -> np.ndarray:
        raise ArithmeticError("overflow in lane 3")

    def fpga_cycles(self, x: np.ndarray) -> int:
        return 1


def test_link_model() -> None:
    link = LinkModel("l", 1e9, 1e-6)
    assert link.transfer_seconds(0) == 0.0
    assert link.transfer_seconds(1000) == pytest.approx(1e-6 + 1e-6)
    assert LINKS["host"].transfer_seconds(10**9) == 0.0
    with pytest.raises(ValueError, match="bytes_per_second"):
        LinkModel("bad", 0, 0)


def test_fpga_round_trip_and_timeline() -> None:
    fpga = FpgaEmulator(clock_mhz=100.0, link=LinkModel("l", 1e9, 1e-6))
    x = np.arange(1000, dtype=np.int8).reshape(10, 100) % 100
    buf = fpga.copy_in(x, label="x").result()
    out = fpga.run(Scale(3), buf).result()
    y = fpga.copy_out(out).result()
    np.testing.assert_array_equal(y, x.astype(np.int64) * 3)
    ev = fpga.events
    assert [e.kind for e in ev] == ["copy_in", "run", "copy_out"]
    # 1000 bytes at 1 GB/s + 1 us; 1000 cycles at 100 MHz; 8000 bytes (int64) back.
    assert ev[0].end == pytest.approx(2e-6)
    assert ev[1].start == pytest.approx(ev[0].end)
    assert ev[1].end - ev[1].start == pytest.approx(10e-6)
    assert ev[2].end - ev[2].start == pytest.approx(1e-6 + 8e-6)
    assert fpga.cycles == 1000
    fpga.close()


def test_queue_runs_in_submission_order() -> None:
    dev = TorchDevice("cpu")
    x = dev.copy_in(np.ones(4, dtype=np.float32)).result()
    futures = [dev.run(Scale(k, name=f"s{k}", sleep=0.01 * (5 - k)), x) for k in range(5)]
    done_order: list[int] = []
    lock = threading.Lock()
    for k, f in enumerate(futures):
        f.add_done_callback(lambda _f, k=k: (lock.acquire(), done_order.append(k), lock.release()))
    dev.synchronize(timeout=10)
    assert done_order == list(range(5))
    assert [dev.copy_out(f.result()).result()[0] for f in futures] == [0, 1, 2, 3, 4]
    dev.close()


def test_ready_time_orders_work_across_devices() -> None:
    a = FpgaEmulator("a", clock_mhz=1.0, link=LINKS["host"])
    b = FpgaEmulator("b", clock_mhz=1.0, link=LINKS["host"])
    x = np.ones(50, dtype=np.int64)
    out = a.run(Scale(2), a.copy_in(x).result()).result()  # 50 us on a
    assert out.ready_at == pytest.approx(50e-6)
    host = a.copy_out(out).result()
    moved = b.copy_in(host, ready_at=out.ready_at).result()
    assert moved.ready_at == pytest.approx(50e-6)  # b waits for a's result
    assert b.run(Scale(1), moved).result().ready_at == pytest.approx(100e-6)


def test_errors_are_clear() -> None:
    fpga = FpgaEmulator()
    cpu = TorchDevice("cpu")
    with pytest.raises(DeviceError, match="fpga:emu: broken failed: overflow in lane 3"):
        fpga.run(Broken(), fpga.copy_in(np.ones(2, dtype=np.int8)).result()).result()
    with pytest.raises(ValueError, match="no float implementation"):
        cpu.run(Broken(), cpu.copy_in(np.ones(2, dtype=np.float32)).result())
    other = cpu.copy_in(np.ones(2, dtype=np.float32)).result()
    with pytest.raises(ValueError, match="lives on cpu, not fpga:emu"):
        fpga.run(Scale(1), other)
    with pytest.raises(ValueError, match="raw integer"):
        fpga.copy_in(np.ones(2, dtype=np.float32)).result()
    slow = FpgaEmulator("slow", timeout=0.01)
    with pytest.raises(DeviceError, match=r"took .* > 0\.01 s"):
        slow.run(Scale(1, sleep=0.05), slow.copy_in(np.ones(2, dtype=np.int8)).result()).result()
    fpga.close()
    with pytest.raises(DeviceError, match="closed"):
        fpga.copy_in(np.ones(2, dtype=np.int8))
    with pytest.raises(ValueError, match="clock_mhz"):
        FpgaEmulator(clock_mhz=0)


def test_torch_device_resolution() -> None:
    assert resolve_torch_device("cpu").type == "cpu"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_torch_device("cuda").type == want
    with pytest.raises(ValueError, match="use cpu, cuda or cuda:N"):
        resolve_torch_device("tpu")
    dev = TorchDevice("cuda")
    y = dev.copy_out(dev.run(Scale(2), dev.copy_in(np.arange(3.0)).result()).result()).result()
    np.testing.assert_allclose(y, [0.0, 2.0, 4.0])
    assert dev.info["torch_device"] == str(dev.torch_device)


def test_device_error_survives_pickling():
    """Errors cross worker-process and Ray boundaries by pickle."""
    import pickle

    err = pickle.loads(pickle.dumps(DeviceError("fpga:emu1", "timed out after 2 s")))
    assert isinstance(err, DeviceError) and err.device == "fpga:emu1"
    assert str(err) == "device fpga:emu1: timed out after 2 s"
