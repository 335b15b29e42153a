"""AXI4-Lite bridge (Amaranth simulator): writes strobe the register bus once, reads return data."""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from tessera.rtl.axi import AxiLiteBridge, AxiLiteSignature, AxiStreamSignature


class _RegisterFile(wiring.Component):
    """Four registers behind the bridge, for the test."""

    def __init__(self) -> None:
        self.bridge = AxiLiteBridge(4)
        super().__init__({"csr": wiring.In(AxiLiteSignature(4))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = self.bridge
        wiring.connect(m, wiring.flipped(self.csr), self.bridge.csr)
        regs = [Signal(32, name=f"r{i}") for i in range(4)]
        self.writes = Signal(8)
        with m.If(self.bridge.bus.w_en):
            m.d.sync += self.writes.eq(self.writes + 1)
            for i, r in enumerate(regs):
                with m.If(self.bridge.bus.w_addr == i):
                    m.d.sync += r.eq(self.bridge.bus.w_data)
        for i, r in enumerate(regs):
            with m.If(self.bridge.bus.r_addr == i):
                m.d.comb += self.bridge.bus.r_data.eq(r)
        return m


def test_axi_lite_write_then_read():
    dut = _RegisterFile()
    csr = dut.csr
    reads: list[int] = []

    async def write(ctx, addr, data, delay_w=0):
        ctx.set(csr.awaddr, addr)
        ctx.set(csr.awvalid, 1)
        ctx.set(csr.bready, 0)
        for _ in range(delay_w):  # address alone must not be taken
            await ctx.tick()
            assert not ctx.get(csr.awready)
        ctx.set(csr.wdata, data)
        ctx.set(csr.wvalid, 1)
        while not ctx.get(csr.awready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(csr.awvalid, 0)
        ctx.set(csr.wvalid, 0)
        assert ctx.get(csr.bvalid) and ctx.get(csr.bresp) == 0
        await ctx.tick()  # response held until bready
        assert ctx.get(csr.bvalid)
        ctx.set(csr.bready, 1)
        await ctx.tick()
        ctx.set(csr.bready, 0)
        assert not ctx.get(csr.bvalid)

    async def read(ctx, addr):
        ctx.set(csr.araddr, addr)
        ctx.set(csr.arvalid, 1)
        while not ctx.get(csr.arready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(csr.arvalid, 0)
        ctx.set(csr.rready, 1)
        assert ctx.get(csr.rvalid)
        reads.append(ctx.get(csr.rdata))
        await ctx.tick()
        ctx.set(csr.rready, 0)

    async def bench(ctx):
        await write(ctx, 0x4, 0xDEADBEEF)
        await write(ctx, 0xC, 7, delay_w=3)
        await read(ctx, 0x4)
        await read(ctx, 0xC)
        await read(ctx, 0x0)
        assert ctx.get(dut.writes) == 2

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert reads == [0xDEADBEEF, 7, 0]


def test_stream_signature_rejects_odd_widths():
    import pytest

    with pytest.raises(ValueError, match="multiple of 8"):
        AxiStreamSignature(12)
    sig = AxiStreamSignature(16, keep=True, last=True)
    assert set(sig.members.keys()) == {"tdata", "tvalid", "tready", "tkeep", "tlast"}
