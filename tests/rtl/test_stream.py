"""SliceAdapter (Amaranth simulator): gathered and split streams keep every byte, in order."""

from __future__ import annotations

import random

import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from tessera.rtl.stream import SliceAdapter


def _run(
    bus_bytes: int, slice_bytes: int, data: bytes, seed: int, disable_after: int | None = None
):
    dut = SliceAdapter(bus_bytes, slice_bytes)
    rng = random.Random(seed)
    beats = [data[i : i + bus_bytes] for i in range(0, len(data), bus_bytes)]
    received: list[bytes] = []
    wanted = len(data) // slice_bytes if disable_after is None else disable_after

    async def source(ctx):
        ctx.set(dut.enable, 1)
        for beat in beats:
            while rng.random() < 0.3:  # idle cycles
                ctx.set(dut.bus.tvalid, 0)
                await ctx.tick()
            ctx.set(dut.bus.tdata, int.from_bytes(beat, "little"))
            ctx.set(dut.bus.tvalid, 1)
            await ctx.tick().until(dut.bus.tready)
        ctx.set(dut.bus.tvalid, 0)

    async def sink(ctx):
        while len(received) < wanted:
            ready = rng.random() < 0.6  # back-pressure
            ctx.set(dut.slices.ready, ready)
            if ready and ctx.get(dut.slices.valid):
                received.append(ctx.get(dut.slices.payload).to_bytes(slice_bytes, "little"))
            await ctx.tick()
        ctx.set(dut.slices.ready, 0)
        if disable_after is not None:
            ctx.set(dut.enable, 0)
            await ctx.tick().repeat(2)
            assert not ctx.get(dut.slices.valid)

    top = Module()
    top.domains.sync = ClockDomain()  # the pass-through adapter has no registers of its own
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return received


@pytest.mark.parametrize(("bus_bytes", "slice_bytes"), [(4, 4), (1, 4), (2, 6), (8, 2), (12, 4)])
def test_bytes_arrive_in_order(bus_bytes, slice_bytes):
    rng = random.Random(bus_bytes * 31 + slice_bytes)
    n = 12 * max(bus_bytes, slice_bytes)
    data = bytes(rng.randrange(256) for _ in range(n))
    got = _run(bus_bytes, slice_bytes, data, seed=slice_bytes)
    assert b"".join(got) == data


def test_disable_discards_the_unused_tail_of_a_beat():
    # Three of the four slices of the second beat are used; the rest is dropped on disable.
    data = bytes(range(32))
    got = _run(16, 4, data, seed=3, disable_after=5)
    assert b"".join(got) == data[:20]
