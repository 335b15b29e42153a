"""``GeluRom``: a streaming GELU unit, ROM of ``delta(|x|)`` plus linear interpolation.

Computes :func:`tessera.models.gelu.gelu` bit for bit on ``lanes`` elements per beat::

    x --> |x|, index, weight --> ROM read (base, slope) --> base*2**s + slope*weight --> round,
    ReLU(x) - delta, saturate --> y

Each ROM word holds one sample ``rom[k]`` *and* the slope ``rom[k+1] - rom[k]``, so a lane reads
both interpolation end points through a single read port. Three register stages, one beat per
cycle; each stage advances when it is empty or the next one does, so a stalled output holds the
pipeline without dropping or repeating a beat, and bubbles are squeezed out behind a stall.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from amaranth import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.gelu import GeluConfig, gelu_rom
from tessera.models.rounding import Overflow
from tessera.rtl.arith import saturate
from tessera.rtl.axi import AxiStreamSignature
from tessera.rtl.emit import emit

__all__ = ["LATENCY", "TOP_NAME", "GeluRom", "generate_gelu", "rom_words", "stream_layout"]

TOP_NAME = "gelu_rom"
#: Cycles from a beat accepted on ``x`` to its result offered on ``y`` (without stalls).
LATENCY = 3


def rom_words(cfg: GeluConfig) -> tuple[list[int], Shape]:
    """Contents of the hardware ROM: word ``k`` packs ``rom[k]`` (low ``rom_bits``) and the slope
    ``rom[k+1] - rom[k]`` (two's complement, above it), for ``k = 0 .. rom_entries - 2``.

    Returns
    -------
    words : list of int
        Unsigned packed words.
    slope_shape : Shape
        Signed shape of the slope field.
    """
    rom = [int(v) for v in gelu_rom(cfg)]
    slopes = [hi - lo for lo, hi in itertools.pairwise(rom)]
    slope_shape = Shape.cast(range(min(min(slopes), -1), max(max(slopes), 0) + 1))
    mask = (1 << slope_shape.width) - 1
    words = [lo | ((d & mask) << cfg.rom_bits) for lo, d in zip(rom[:-1], slopes, strict=True)]
    return words, slope_shape


def stream_layout(cfg: GeluConfig) -> dict[str, Any]:
    """The unit's stream interface as a JSON-able dict (for hosts and testbenches)."""
    lane = (
        f"{cfg.lanes} lanes of {cfg.container_bits} bits, lane 0 in the least significant bits; "
        f"each a signed {cfg.in_bits}-bit value with {cfg.in_frac} fraction bits, sign-extended "
        "to its container"
    )
    return {
        "top": TOP_NAME,
        "config": cfg.to_dict(),
        "latency": LATENCY,
        "throughput_beats_per_cycle": 1,
        "streams": {
            "x": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": cfg.beat_bits,
                "lanes": cfg.lanes,
                "container_bits": cfg.container_bits,
                "layout": lane + " (container bits above in_bits are ignored)",
            },
            "y": {
                "protocol": "AXI4-Stream",
                "direction": "out",
                "data_width": cfg.beat_bits,
                "lanes": cfg.lanes,
                "container_bits": cfg.container_bits,
                "layout": lane + "; y[i] = GELU(x[i]); tlast copied from the input beat",
            },
        },
    }


class GeluRom(wiring.Component):
    """Fully pipelined GELU over an AXI4-Stream, ``lanes`` elements per beat.

    Parameters
    ----------
    config : GeluConfig
        Number formats, ROM size and lane count.

    Attributes
    ----------
    x : In(AxiStreamSignature(lanes * container_bits, last=True))
        Input beats: ``x__tdata`` (in, ``lanes * container_bits``), ``x__tvalid`` (in, 1),
        ``x__tlast`` (in, 1), ``x__tready`` (out, 1).
    y : Out(AxiStreamSignature(lanes * container_bits, last=True))
        Result beats, same layout: ``y__tdata`` (out), ``y__tvalid`` (out, 1), ``y__tlast``
        (out, 1, the input beat's), ``y__tready`` (in, 1).

    Notes
    -----
    Latency :data:`LATENCY` cycles, one beat per cycle. ``x.tready`` depends combinationally on
    ``y.tready`` (through the three stage-valid flags); ``y.tvalid`` and ``y.tdata`` come straight
    from registers.
    """

    def __init__(self, config: GeluConfig) -> None:
        self.config = config
        super().__init__(
            {
                "x": In(AxiStreamSignature(config.beat_bits, last=True)),
                "y": Out(AxiStreamSignature(config.beat_bits, last=True)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        s, t, cb, n = cfg.low_bits, cfg.align_shift, cfg.container_bits, cfg.in_bits
        depth = cfg.rom_entries - 1
        words, slope_shape = rom_words(cfg)
        m.submodules.rom = rom = Memory(
            shape=unsigned(cfg.rom_bits + slope_shape.width), depth=depth, init=words
        )

        # Stage handshakes: a stage loads when it is empty or its content moves on this cycle.
        valid = [Signal(name=f"valid{i}") for i in (1, 2, 3)]
        last = [Signal(name=f"last{i}") for i in (1, 2, 3)]
        load = [Signal(name=f"load{i}") for i in (1, 2, 3)]
        m.d.comb += [
            load[2].eq(~valid[2] | self.y.tready),
            load[1].eq(~valid[1] | load[2]),
            load[0].eq(~valid[0] | load[1]),
            self.x.tready.eq(load[0]),
            self.y.tvalid.eq(valid[2]),
            self.y.tlast.eq(last[2]),
        ]
        with m.If(load[0]):
            m.d.sync += [valid[0].eq(self.x.tvalid), last[0].eq(self.x.tlast)]
        with m.If(load[1]):
            m.d.sync += [valid[1].eq(valid[0]), last[1].eq(last[0])]
        with m.If(load[2]):
            m.d.sync += [valid[2].eq(valid[1]), last[2].eq(last[1])]

        for lane in range(cfg.lanes):
            # ---- stage 1: |x| splits into ROM index and interpolation weight; ROM read ------
            x_in = self.x.tdata[lane * cb : lane * cb + n].as_signed()
            a_in = Signal(unsigned(n), name=f"abs_{lane}")  # |min code| = 2**(n-1) still fits
            m.d.comb += a_in.eq(Mux(x_in[-1], -x_in, x_in))
            index = a_in[s:]
            inside_in = Signal(name=f"inside_in_{lane}")
            m.d.comb += inside_in.eq(index < depth)
            port = rom.read_port(domain="sync")
            # Out-of-range indices read any word (address 0): their delta is forced to 0 later.
            m.d.comb += [port.en.eq(load[0]), port.addr.eq(Mux(inside_in, index, 0))]
            x1 = Signal(signed(n), name=f"x1_{lane}")
            low1 = Signal(unsigned(max(s, 1)), name=f"low1_{lane}")
            inside1 = Signal(name=f"inside1_{lane}")
            with m.If(load[0]):
                m.d.sync += [x1.eq(x_in), inside1.eq(inside_in)]
                if s:
                    m.d.sync += low1.eq(a_in[:s])

            # ---- stage 2: exact interpolation base * 2**s + slope * weight ------------------
            base = port.data[: cfg.rom_bits]
            slope = port.data[cfg.rom_bits :].as_signed()
            value = base << s
            if s:
                value = value + slope * low1
            v2 = Signal(signed(cfg.rom_bits + s + 2), name=f"interp2_{lane}")
            relu2 = Signal(signed(n), name=f"relu2_{lane}")
            inside2 = Signal(name=f"inside2_{lane}")
            with m.If(load[1]):
                m.d.sync += [
                    v2.eq(value),
                    relu2.eq(Mux(x1[-1], 0, x1)),
                    inside2.eq(inside1),
                ]

            # ---- stage 3: one round-half-up shift to in_frac, ReLU(x) - delta, saturate -----
            rounded = (v2 + (1 << (t - 1))) >> t if t else v2
            delta = Signal(signed(len(v2) + 1), name=f"delta_{lane}")
            m.d.comb += delta.eq(Mux(inside2, rounded, 0))
            diff = Signal(signed(max(n, len(delta)) + 1), name=f"diff_{lane}")
            m.d.comb += diff.eq(relu2 - delta)
            y3 = saturate(m, diff, n, Overflow.SAT)
            out = Signal(signed(n), name=f"y3_{lane}")
            with m.If(load[2]):
                m.d.sync += out.eq(y3)
            m.d.comb += self.y.tdata[lane * cb : (lane + 1) * cb].eq(out)  # sign-extends
        return m


def generate_gelu(cfg: GeluConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of a ``GeluRom`` and its stream layout.

    Parameters
    ----------
    cfg : GeluConfig
        Unit configuration.
    out_dir : path, optional
        If given, write ``gelu_rom.v``, ``stream_layout.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "top": "gelu_rom", "files": list[str], "stream_layout": dict,
        "latency": int}``. The module's clock and reset ports are ``clk`` and ``rst``.
    """
    return emit(
        GeluRom(cfg), TOP_NAME, cfg, out_dir, {"stream_layout": stream_layout(cfg)}, latency=LATENCY
    )
