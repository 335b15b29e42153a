"""Ops on every device kind agree: golden, C-sim and torch."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.host.fpga import FpgaEmulator, HlsCsimDevice
from tessera.host.ops import GemmOp
from tessera.host.torch_device import TorchDevice
from tessera.models.gemm import GemmConfig, Requant, gemm


def run_on(device, op, x):  # type: ignore[no-untyped-def]
    buf = device.copy_in(x).result()
    return device.copy_out(device.run(op, buf).result()).result()


def test_gemm_op_on_emulator_csim_and_torch() -> None:
    cfg = GemmConfig(rows=4, cols=4)
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, size=(9, 13), dtype=np.int8)
    w = rng.integers(-128, 128, size=(13, 6), dtype=np.int8)
    op = GemmOp("fc", w, cfg, Requant(1_518_500_250, 38), weight_scale=0.5)
    golden = gemm(x, w, cfg, Requant(1_518_500_250, 38))
    emu = FpgaEmulator()
    np.testing.assert_array_equal(run_on(emu, op, x), golden)
    assert emu.events[1].end - emu.events[1].start == pytest.approx(op.fpga_cycles(x) / 300e6)
    np.testing.assert_array_equal(run_on(HlsCsimDevice(), op, x), golden)
    raw = GemmOp("raw", w, cfg, weight_scale=0.5)
    y = run_on(TorchDevice("cpu"), raw, x.astype(np.float32))
    # float32 holds these int8 dot products (|sum| < 2**24) exactly.
    np.testing.assert_array_equal(y, gemm(x, w, cfg) * 0.5)
