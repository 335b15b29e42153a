"""AMBA AXI4-Stream and AXI4-Lite port signatures, and an AXI4-Lite register-bus bridge.

Members carry the AMBA signal names (``tdata``, ``awaddr``...) so the generated Verilog ports read
``a__tdata``, ``csr__awaddr``; cocotbext-axi binds to them with the prefixes ``a_`` and ``csr_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "AxiLiteBridge",
    "AxiLiteSignature",
    "AxiStreamSignature",
    "Register",
    "RegisterBusSignature",
    "csr_map",
]


class AxiStreamSignature(wiring.Signature):
    """AXI4-Stream, seen from the transmitter.

    Parameters
    ----------
    data_width : int
        Width of ``tdata`` in bits (a multiple of 8).
    keep : bool
        Add ``tkeep`` (one bit per byte).
    last : bool
        Add ``tlast``.
    """

    def __init__(self, data_width: int, *, keep: bool = False, last: bool = False) -> None:
        if data_width <= 0 or data_width % 8:
            raise ValueError(
                f"AXI-Stream data width must be a positive multiple of 8, got {data_width}"
            )
        members = {"tdata": Out(data_width), "tvalid": Out(1), "tready": In(1)}
        if keep:
            members["tkeep"] = Out(data_width // 8)
        if last:
            members["tlast"] = Out(1)
        super().__init__(members)


class AxiLiteSignature(wiring.Signature):
    """AXI4-Lite with 32-bit data, seen from the manager.

    Parameters
    ----------
    addr_width : int
        Byte-address width.
    """

    def __init__(self, addr_width: int) -> None:
        super().__init__(
            {
                "awaddr": Out(addr_width),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(32),
                "wstrb": Out(4),
                "wvalid": Out(1),
                "wready": In(1),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "araddr": Out(addr_width),
                "arvalid": Out(1),
                "arready": In(1),
                "rdata": In(32),
                "rresp": In(2),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )


class RegisterBusSignature(wiring.Signature):
    """Single-cycle register bus, seen from the bridge: a write strobe and a combinational read.

    Parameters
    ----------
    addr_width : int
        Word-address width (byte address without its two low bits).
    """

    def __init__(self, addr_width: int) -> None:
        super().__init__(
            {
                "w_en": Out(1),
                "w_addr": Out(addr_width),
                "w_data": Out(32),
                "r_addr": Out(addr_width),
                "r_data": In(32),
            }
        )


class AxiLiteBridge(wiring.Component):
    """AXI4-Lite subordinate that turns transactions into register-bus accesses.

    A write is taken when address and data are both valid (one ``w_en`` pulse, response OKAY); a
    read samples ``r_data`` for ``araddr`` into ``rdata``. One outstanding transaction per
    direction; ``wstrb`` is ignored (registers are written whole).

    Parameters
    ----------
    addr_width : int
        Byte-address width of ``csr``.

    Attributes
    ----------
    csr : In(AxiLiteSignature(addr_width))
        The AXI4-Lite port.
    bus : Out(RegisterBusSignature(addr_width - 2))
        The register side.
    """

    def __init__(self, addr_width: int) -> None:
        self.addr_width = addr_width
        super().__init__(
            {
                "csr": In(AxiLiteSignature(addr_width)),
                "bus": Out(RegisterBusSignature(addr_width - 2)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        csr, bus = self.csr, self.bus
        take_write = Signal()
        m.d.comb += [
            take_write.eq(csr.awvalid & csr.wvalid & ~csr.bvalid),
            csr.awready.eq(take_write),
            csr.wready.eq(take_write),
            bus.w_en.eq(take_write),
            bus.w_addr.eq(csr.awaddr[2:]),
            bus.w_data.eq(csr.wdata),
            csr.bresp.eq(0),
            csr.rresp.eq(0),
            csr.arready.eq(~csr.rvalid),
            bus.r_addr.eq(csr.araddr[2:]),
        ]
        with m.If(take_write):
            m.d.sync += csr.bvalid.eq(1)
        with m.Elif(csr.bready):
            m.d.sync += csr.bvalid.eq(0)
        with m.If(csr.arvalid & ~csr.rvalid):
            m.d.sync += [csr.rvalid.eq(1), csr.rdata.eq(bus.r_data)]
        with m.Elif(csr.rready):
            m.d.sync += csr.rvalid.eq(0)
        return m


@dataclass(frozen=True)
class Register:
    """One 32-bit CSR: name, byte offset, access (``"rw"`` / ``"ro"``) and meaning."""

    name: str
    offset: int
    access: str
    description: str


def csr_map(registers: Sequence[Register], addr_width: int) -> dict[str, Any]:
    """The JSON description of an AXI4-Lite register file, for the host."""
    return {
        "protocol": "AXI4-Lite",
        "addr_width": addr_width,
        "data_width": 32,
        "registers": [asdict(r) for r in registers],
    }
