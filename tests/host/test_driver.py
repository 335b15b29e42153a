"""The board-driver contract, exercised on the generated GEMM RTL through a simulated board."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.estimators.cycles import gemm_cycles
from tessera.host.driver import RegisterFile
from tessera.host.sim_board import run_gemm_driver
from tessera.models.gemm import GemmConfig, Requant, gemm


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_gemm_driver_on_rtl(sim: str) -> None:
    cfg = GemmConfig(rows=2, cols=4)
    rng = np.random.default_rng(11)
    problems = [
        (rng.integers(-128, 128, (5, 7)), rng.integers(-128, 128, (7, 6)), None),
        (
            rng.integers(-128, 128, (3, 9)),
            rng.integers(-128, 128, (9, 4)),
            Requant(1 << 30, 36, -3),
        ),
    ]
    results = run_gemm_driver(cfg, problems, sim=sim, idle=0.2, backpressure=0.2)
    for (a, b, rq), (c, cycles) in zip(problems, results, strict=True):
        np.testing.assert_array_equal(c, gemm(a, b, cfg, rq))
        assert cycles >= gemm_cycles(a.shape[0], b.shape[1], a.shape[1], cfg).cycles


def test_register_file_checks_names_and_access() -> None:
    from tessera.rtl.temporal_gemm import register_map

    class Regs:
        def __init__(self) -> None:
            self.mem: dict[int, int] = {}

        def read_register(self, offset: int) -> int:
            return self.mem.get(offset, 0)

        def write_register(self, offset: int, value: int) -> None:
            self.mem[offset] = value

    board = Regs()
    regs = RegisterFile(register_map(GemmConfig()), board)  # type: ignore[arg-type]
    regs.write("ZERO_POINT", -1)
    assert board.mem[0x1C] == 0xFFFFFFFF
    with pytest.raises(ValueError, match="read-only"):
        regs.write("CYCLES", 1)
    with pytest.raises(ValueError, match="no register 'BOGUS'"):
        regs.read("BOGUS")
    with pytest.raises(ValueError, match=r"csr\.registers"):
        RegisterFile({"top": "x"}, board)  # type: ignore[arg-type]
