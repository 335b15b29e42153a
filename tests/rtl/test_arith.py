"""Requantizer RTL (Amaranth simulator) against the golden ``requantize``, every mode."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.models.rounding import Overflow, Rounding, requantize
from tessera.rtl.arith import Requantizer


def _vectors(seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    edges = [
        (0, 1, 0, 0),
        (-1, 1, 1, 0),
        (1, 1, 1, 0),
        (3, 1, 1, 0),
        (-3, 1, 1, 0),
        (5, 1, 1, 0),
        (-5, 1, 1, 0),
        (2**31 - 1, 2**31 - 1, 63, 0),
        (-(2**31), 2**31 - 1, 63, 0),
        (-(2**31), 2**31 - 1, 0, 0),
        (2**31 - 1, 1, 0, 5),
        (127, 1, 0, 0),
        (128, 1, 0, 0),
        (-128, 1, 0, 0),
        (-129, 1, 0, 0),
        (6, 1 << 30, 32, -3),
        (-6, 1 << 30, 32, 3),
    ]
    rand = [
        (
            int(rng.integers(-(2**31), 2**31)),
            int(rng.integers(0, 2**31)),
            int(rng.integers(20, 45)),
            int(rng.integers(-300, 300)),
        )
        for _ in range(40)
    ]
    return edges + rand


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize(
    "overflow", [Overflow.SAT, Overflow.WRAP, Overflow.SAT_SYM, Overflow.SAT_ZERO]
)
def test_requantizer_matches_golden(rounding, overflow):
    dut = Requantizer(acc_bits=32, out_bits=8, rounding=rounding, overflow=overflow)
    vectors = _vectors(hash((rounding.value, overflow.value)) % 2**32)
    got: list[int] = []

    async def bench(ctx):
        for acc, mult, shift, zp in vectors:
            ctx.set(dut.acc, acc)
            ctx.set(dut.multiplier, mult)
            ctx.set(dut.shift, shift)
            ctx.set(dut.zero_point, zp)
            got.append(ctx.get(dut.result))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    acc, mult, shift, zp = (np.array(v, dtype=np.int64) for v in zip(*vectors, strict=True))
    want = requantize(acc, mult, shift, zp, bits=8, rounding=rounding, overflow=overflow)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"vector {i} {vectors[i]}: RTL {g}, golden {w}"
