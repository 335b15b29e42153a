"""Stream width adaptation between an AXI4-Stream bus and the slices an engine consumes."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.rtl.axi import AxiStreamSignature

__all__ = ["SliceAdapter"]


class SliceAdapter(wiring.Component):
    """Re-chunk an AXI4-Stream of ``bus_bytes`` per beat into ``slice_bytes`` per transfer.

    One width must divide the other. A narrower bus is gathered (``slice_bytes / bus_bytes`` beats
    per slice, the last beat passing through combinationally, so one slice every that many
    cycles); a wider bus is split (one beat held, ``bus_bytes / slice_bytes`` slices out, one per
    cycle, the next beat taken as the last slice leaves); equal widths are wired straight through.
    The first bus beat fills the least significant bytes.

    Parameters
    ----------
    bus_bytes : int
        Width of the AXI4-Stream ``tdata`` in bytes.
    slice_bytes : int
        Width of one output transfer in bytes.

    Attributes
    ----------
    bus : In(AxiStreamSignature(bus_bytes * 8))
        Input stream (``tdata``, ``tvalid`` in; ``tready`` out).
    slices : Out(stream.Signature(slice_bytes * 8))
        Output stream (``payload``, ``valid`` out; ``ready`` in).
    enable : In(1)
        While low no beat is taken and any partly used beat is discarded (the unused tail of the
        final beat of a transfer).
    """

    def __init__(self, bus_bytes: int, slice_bytes: int) -> None:
        if (
            bus_bytes < 1
            or slice_bytes < 1
            or (bus_bytes % slice_bytes and slice_bytes % bus_bytes)
        ):
            raise ValueError(
                f"stream width {bus_bytes} B and slice width {slice_bytes} B: "
                "one must divide the other"
            )
        self.bus_bytes = bus_bytes
        self.slice_bytes = slice_bytes
        super().__init__(
            {
                "bus": In(AxiStreamSignature(bus_bytes * 8)),
                "slices": Out(stream.Signature(slice_bytes * 8)),
                "enable": In(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus, out = self.bus, self.slices
        if self.bus_bytes == self.slice_bytes:
            m.d.comb += [
                out.payload.eq(bus.tdata),
                out.valid.eq(bus.tvalid & self.enable),
                bus.tready.eq(out.ready & self.enable),
            ]
        elif self.bus_bytes < self.slice_bytes:
            self._gather(m, self.slice_bytes // self.bus_bytes)
        else:
            self._split(m, self.bus_bytes // self.slice_bytes)
        return m

    def _gather(self, m: Module, beats: int) -> None:
        bus, out = self.bus, self.slices
        width = self.bus_bytes * 8
        held = Signal(width * (beats - 1))
        count = Signal(range(beats))
        complete = count == beats - 1
        m.d.comb += [
            out.payload.eq(Cat(held, bus.tdata)),
            out.valid.eq(self.enable & complete & bus.tvalid),
            bus.tready.eq(self.enable & (~complete | out.ready)),
        ]
        with m.If(~self.enable):
            m.d.sync += count.eq(0)
        with m.Elif(bus.tvalid & bus.tready):
            with m.If(complete):
                m.d.sync += count.eq(0)
            with m.Else():
                m.d.sync += [held.word_select(count, width).eq(bus.tdata), count.eq(count + 1)]

    def _split(self, m: Module, parts: int) -> None:
        bus, out = self.bus, self.slices
        width = self.slice_bytes * 8
        beat = Signal(self.bus_bytes * 8)
        have = Signal()
        index = Signal(range(parts))
        last_part = index == parts - 1
        m.d.comb += [
            out.payload.eq(beat.word_select(index, width)),
            out.valid.eq(have),
            bus.tready.eq(self.enable & (~have | (out.ready & last_part))),
        ]
        with m.If(out.valid & out.ready):
            m.d.sync += index.eq(index + 1)
            with m.If(last_part):
                m.d.sync += [index.eq(0), have.eq(0)]
        with m.If(bus.tvalid & bus.tready):
            m.d.sync += [beat.eq(bus.tdata), have.eq(1), index.eq(0)]
        with m.If(~self.enable):
            m.d.sync += [have.eq(0), index.eq(0)]
