"""``Epilogue``: the streaming elementwise tail of a linear layer, bit-exact with
:func:`tessera.models.epilogue.epilogue`.

Dataflow (``cols`` lanes per beat, one beat per cycle)::

    x --> S0: operands + column parameters --> S1: bias add --> S2: per-column requant
          (read at the beat's tile column)                                |
                 +------------------------------------------------------+
                 v
          [GeluRom, tkeep/tlast in a side FIFO] --> S3: GELU requant --> S4: + residual --> y
                                                                         (joins `residual`)

Every stage is one register with a valid flag; a stage loads when it is empty or its content
moves on, so back-pressure on ``y`` holds the pipeline without losing or repeating a beat and
bubbles close up behind a stall. S0..S4 are always registers (a stage left out by the
configuration passes its value on unchanged), so the latency depends only on the GELU.

Parameters arrive as one packet on ``params`` (see :func:`tessera.models.epilogue.pack_params`):
a header beat (M, the GELU multiplier and shift) and one beat per column, written into one
parameter memory per lane (column ``c`` lives in lane ``c % cols`` at address ``c // cols``), so
a beat reads all its lanes' parameters at one address, its tile column. A packet is taken only
when the unit is idle (no beat of a run received or in flight); while one loads, ``x`` is held
off, and a packet waiting on an idle unit goes before any data. The number of columns N is the
packet's length minus one.

The unit counts rows and columns itself (tile order for ``rows x cols`` tiles, M rows, N columns):
``y.tlast`` marks the run's last beat and ``y.tkeep`` clears lanes past N. A ``tlast`` on ``x``
that disagrees with that count, a packet with no column or more than ``max_cols``, or M = 0 sets
the sticky ``error`` output (only reset clears it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.epilogue import ACC_LANE_BITS, PARAM_BEAT_BYTES, EpilogueConfig
from tessera.models.rounding import Overflow
from tessera.rtl.arith import Requantizer, saturate
from tessera.rtl.axi import AxiStreamSignature
from tessera.rtl.emit import emit
from tessera.rtl.gelu import LATENCY as GELU_LATENCY
from tessera.rtl.gelu import GeluRom

__all__ = ["BASE_LATENCY", "TOP_NAME", "Epilogue", "generate_epilogue", "latency", "stream_layout"]

TOP_NAME = "epilogue"
#: Register stages of the unit without GELU (bias, requantization, saturation, output).
BASE_LATENCY = 5
_BIAS_BITS = 32
_MULT_BITS = 31
_SHIFT_BITS = 6


def latency(cfg: EpilogueConfig) -> int:
    """Register stages from ``x`` to ``y``: a beat taken on ``x`` at clock edge ``t`` is taken on
    a ready ``y`` at edge ``t + latency`` (without stalls)."""
    return BASE_LATENCY + (GELU_LATENCY if cfg.gelu is not None else 0)


def stream_layout(cfg: EpilogueConfig) -> dict[str, Any]:
    """The unit's streams as a JSON-able dict (for hosts and testbenches)."""
    out_bits = cfg.cols * cfg.out_lane_bytes * 8
    streams: dict[str, Any] = {
        "x": {
            "protocol": "AXI4-Stream",
            "direction": "in",
            "data_width": cfg.cols * ACC_LANE_BITS,
            "layout": f"tile order ({cfg.rows} x {cfg.cols} tiles, row-major; per tile one beat "
            f"per row < M); {cfg.cols} sign-extended 32-bit lanes of signed {cfg.acc_bits}-bit "
            "accumulators; tkeep ignored (lanes past N are dropped by count); tlast on the last "
            "beat of the run",
        },
        "params": {
            "protocol": "AXI4-Stream",
            "direction": "in",
            "data_width": PARAM_BEAT_BYTES * 8,
            "layout": "one packet per run: header beat (M, gelu multiplier, gelu shift), then per "
            "column (bias, multiplier, shift); 32-bit little-endian words; tlast on the last beat",
        },
        "y": {
            "protocol": "AXI4-Stream",
            "direction": "out",
            "data_width": out_bits,
            "layout": f"tile order as x; {cfg.cols} lanes of {cfg.out_lane_bytes * 8} bits, "
            f"signed {cfg.final_bits}-bit values sign-extended; tkeep clears lanes past N; tlast "
            "on the last beat of the run",
        },
    }
    if cfg.residual:
        streams["residual"] = {
            "protocol": "AXI4-Stream",
            "direction": "in",
            "data_width": out_bits,
            "layout": f"as y: signed {cfg.res_bits}-bit values, one beat per output beat",
        }
    return {
        "top": TOP_NAME,
        "config": cfg.to_dict(),
        "latency": latency(cfg),
        "throughput_beats_per_cycle": 1,
        "streams": streams,
    }


class Epilogue(wiring.Component):
    """Streaming bias / per-column requantization / GELU / residual unit.

    Parameters
    ----------
    config : EpilogueConfig
        Tile shape, lanes, stages and number formats.

    Attributes
    ----------
    x : In(AxiStreamSignature(cols * 32, keep=True, last=True))
        Accumulator beats (``tdata``, ``tkeep``, ``tlast``, ``tvalid`` in; ``tready`` out), the
        layout of a ``TemporalGemm``'s ``c`` stream.
    params : In(AxiStreamSignature(96, last=True))
        Parameter packets (``tdata``, ``tlast``, ``tvalid`` in; ``tready`` out).
    residual : In(AxiStreamSignature(cols * out_lane_bytes * 8))
        Only with ``config.residual``: one beat per output beat (``tdata``, ``tvalid`` in;
        ``tready`` out).
    y : Out(AxiStreamSignature(cols * out_lane_bytes * 8, keep=True, last=True))
        Result beats (``tdata``, ``tkeep``, ``tlast``, ``tvalid`` out; ``tready`` in).
    error : Out(1)
        Sticky protocol error (see the module documentation).
    """

    def __init__(self, config: EpilogueConfig) -> None:
        self.config = config
        out_width = config.cols * config.out_lane_bytes * 8
        members: dict[str, Any] = {
            "x": In(AxiStreamSignature(config.cols * ACC_LANE_BITS, keep=True, last=True)),
            "params": In(AxiStreamSignature(PARAM_BEAT_BYTES * 8, last=True)),
        }
        if config.residual:
            members["residual"] = In(AxiStreamSignature(out_width))
        members["y"] = Out(AxiStreamSignature(out_width, keep=True, last=True))
        members["error"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        rows, cols = cfg.rows, cfg.cols
        col_bits = max(1, cfg.max_cols.bit_length())

        # ---- parameter packets ----------------------------------------------------------------
        size_m = Signal(cfg.dim_bits)
        size_n = Signal(col_bits)
        gelu_multiplier = Signal(_MULT_BITS)
        gelu_shift = Signal(_SHIFT_BITS)
        have_params, loading, error = Signal(), Signal(), Signal()
        count = Signal(col_bits)  # column beats of the packet so far
        w_lane = Signal(range(cols))
        w_addr = Signal(range(cfg.param_depth))
        inflight = Signal(range(32))
        at_start = Signal()
        m.d.comb += self.error.eq(error)

        idle = (inflight == 0) & at_start
        m.d.comb += self.params.tready.eq(loading | idle)
        take_param = self.params.tvalid & self.params.tready
        word = [self.params.tdata[32 * i : 32 * (i + 1)] for i in range(3)]

        use_memory = cfg.bias or cfg.requant
        param_width = _BIAS_BITS + _MULT_BITS + _SHIFT_BITS
        read_ports = []
        write_ports = []
        if use_memory:
            for lane in range(cols):
                mem = Memory(shape=unsigned(param_width), depth=cfg.param_depth, init=[])
                m.submodules[f"params_{lane}"] = mem
                write_ports.append(mem.write_port())
                read_ports.append(mem.read_port(domain="comb"))
            column_word = Cat(word[0], word[1][:_MULT_BITS], word[2][:_SHIFT_BITS])
            for lane, wp in enumerate(write_ports):
                m.d.comb += [
                    wp.addr.eq(w_addr),
                    wp.data.eq(column_word),
                    wp.en.eq(take_param & loading & (w_lane == lane) & (count < cfg.max_cols)),
                ]

        with m.If(take_param):
            with m.If(~loading):  # header beat
                m.d.sync += [
                    size_m.eq(word[0]),
                    gelu_multiplier.eq(word[1]),
                    gelu_shift.eq(word[2]),
                    count.eq(0),
                    w_lane.eq(0),
                    w_addr.eq(0),
                    have_params.eq(0),
                    loading.eq(~self.params.tlast),
                ]
                with m.If(self.params.tlast | (word[0][: cfg.dim_bits] == 0)):
                    m.d.sync += error.eq(1)
            with m.Else():
                with m.If(count < cfg.max_cols):
                    m.d.sync += count.eq(count + 1)
                with m.Else():
                    m.d.sync += error.eq(1)
                with m.If(w_lane == cols - 1):
                    m.d.sync += [w_lane.eq(0), w_addr.eq(w_addr + 1)]
                with m.Else():
                    m.d.sync += w_lane.eq(w_lane + 1)
                with m.If(self.params.tlast):
                    with m.If(count < cfg.max_cols):
                        m.d.sync += size_n.eq(count + 1)
                    with m.Else():
                        m.d.sync += size_n.eq(count)
                    m.d.sync += [loading.eq(0), have_params.eq(size_m != 0)]

        # ---- position of the incoming beat (tile order) ---------------------------------------
        row_in_tile = Signal(range(rows))
        row_base = Signal(cfg.dim_bits + 7)
        col_base = Signal(col_bits + 7)
        tile_col = Signal(range(cfg.param_depth))
        m.d.comb += at_start.eq((row_in_tile == 0) & (row_base == 0) & (col_base == 0))
        last_row_tile = row_base + rows >= size_m
        tile_rows = Mux(last_row_tile, size_m - row_base, rows)
        last_in_tile = row_in_tile == tile_rows - 1
        last_col = col_base + cols >= size_n
        final = last_in_tile & last_col & last_row_tile

        # ---- segment A: S0 operands, S1 bias, S2 requant ---------------------------------------
        valid = [Signal(name=f"valid{i}") for i in range(5)]
        load = [Signal(name=f"load{i}") for i in range(5)]
        keep = [Signal(cols, name=f"keep{i}") for i in range(5)]
        last = [Signal(name=f"last{i}") for i in range(5)]
        a_ready = Signal()  # segment A's output is taken
        m.d.comb += [
            load[2].eq(~valid[2] | a_ready),
            load[1].eq(~valid[1] | load[2]),
            load[0].eq(~valid[0] | load[1]),
        ]
        accept_ok = have_params & ~loading & ~(self.params.tvalid & idle)
        m.d.comb += self.x.tready.eq(load[0] & accept_ok)
        take_x = self.x.tvalid & self.x.tready
        for i in (0, 1, 2):
            with m.If(load[i]):
                if i == 0:
                    m.d.sync += valid[0].eq(self.x.tvalid & accept_ok)
                else:
                    m.d.sync += [
                        valid[i].eq(valid[i - 1]),
                        keep[i].eq(keep[i - 1]),
                        last[i].eq(last[i - 1]),
                    ]

        with m.If(take_x):
            lane_keep = Cat(*(col_base + c < size_n for c in range(cols)))
            m.d.sync += [keep[0].eq(lane_keep), last[0].eq(final)]
            with m.If(self.x.tlast != final):
                m.d.sync += error.eq(1)
            with m.If(last_in_tile):
                m.d.sync += row_in_tile.eq(0)
                with m.If(last_col):
                    m.d.sync += [col_base.eq(0), tile_col.eq(0), row_base.eq(row_base + rows)]
                    with m.If(last_row_tile):
                        m.d.sync += row_base.eq(0)
                with m.Else():
                    m.d.sync += [col_base.eq(col_base + cols), tile_col.eq(tile_col + 1)]
            with m.Else():
                m.d.sync += row_in_tile.eq(row_in_tile + 1)

        acc_shape = signed(cfg.acc_bits)
        s2_values = []
        for lane in range(cols):
            # S0: the accumulator and its column's parameters.
            acc0 = Signal(acc_shape, name=f"acc0_{lane}")
            bias0 = Signal(signed(_BIAS_BITS), name=f"bias0_{lane}")
            mult0 = Signal(_MULT_BITS, name=f"mult0_{lane}")
            shift0 = Signal(_SHIFT_BITS, name=f"shift0_{lane}")
            with m.If(load[0]):
                m.d.sync += acc0.eq(
                    self.x.tdata[ACC_LANE_BITS * lane :][: cfg.acc_bits].as_signed()
                )
                if use_memory:
                    rp = read_ports[lane]
                    m.d.sync += [
                        bias0.eq(rp.data[:_BIAS_BITS].as_signed()),
                        mult0.eq(rp.data[_BIAS_BITS:][:_MULT_BITS]),
                        shift0.eq(rp.data[_BIAS_BITS + _MULT_BITS :]),
                    ]
            if use_memory:
                m.d.comb += read_ports[lane].addr.eq(tile_col)

            # S1: bias added, wrapped or saturated to acc_bits.
            acc1 = Signal(acc_shape, name=f"acc1_{lane}")
            mult1 = Signal(_MULT_BITS, name=f"mult1_{lane}")
            shift1 = Signal(_SHIFT_BITS, name=f"shift1_{lane}")
            if cfg.bias:
                total = Signal(signed(max(cfg.acc_bits, _BIAS_BITS) + 1), name=f"sum1_{lane}")
                m.d.comb += total.eq(acc0 + bias0)
                biased = saturate(m, total, cfg.acc_bits, cfg.bias_overflow)
            else:
                biased = acc0
            with m.If(load[1]):
                m.d.sync += [acc1.eq(biased), mult1.eq(mult0), shift1.eq(shift0)]

            # S2: per-column requantization (or plain saturation) to out_bits.
            if cfg.requant:
                rq = Requantizer(cfg.acc_bits, cfg.out_bits, cfg.rounding, cfg.overflow)
                m.submodules[f"requant_{lane}"] = rq
                m.d.comb += [
                    rq.acc.eq(acc1),
                    rq.multiplier.eq(mult1),
                    rq.shift.eq(shift1),
                    rq.zero_point.eq(0),
                ]
                narrowed = rq.result
            else:
                narrowed = saturate(m, acc1, cfg.out_bits, Overflow.SAT)
            out2 = Signal(signed(cfg.out_bits), name=f"out2_{lane}")
            with m.If(load[2]):
                m.d.sync += out2.eq(narrowed)
            s2_values.append(out2)

        # ---- optional GELU between the segments --------------------------------------------
        b_valid, b_ready = Signal(), Signal()
        b_keep, b_last = Signal(cols), Signal()
        if cfg.gelu is not None:
            gcfg = cfg.gelu
            m.submodules.gelu = rom = GeluRom(gcfg)
            # tkeep / tlast wait beside the ROM pipeline, which holds at most its latency.
            m.submodules.sideband = side = SyncFIFO(width=cols + 1, depth=GELU_LATENCY + 1)
            cb = gcfg.container_bits
            for lane in range(cols):
                m.d.comb += rom.x.tdata[cb * lane : cb * (lane + 1)].eq(s2_values[lane])
            m.d.comb += [
                rom.x.tvalid.eq(valid[2] & side.w_rdy),
                rom.x.tlast.eq(last[2]),
                a_ready.eq(rom.x.tready & side.w_rdy),
                side.w_en.eq(valid[2] & rom.x.tready),
                side.w_data.eq(Cat(keep[2], last[2])),
                b_valid.eq(rom.y.tvalid),
                rom.y.tready.eq(b_ready),
                side.r_en.eq(rom.y.tvalid & b_ready),
                b_keep.eq(side.r_data[:cols]),
                b_last.eq(side.r_data[cols]),
            ]
            b_values = [
                rom.y.tdata[cb * lane : cb * lane + gcfg.in_bits].as_signed()
                for lane in range(cols)
            ]
        else:
            m.d.comb += [
                b_valid.eq(valid[2]),
                a_ready.eq(b_ready),
                b_keep.eq(keep[2]),
                b_last.eq(last[2]),
            ]
            b_values = s2_values

        # ---- segment B: S3 GELU requant, S4 residual add --------------------------------------
        res_ok = self.residual.tvalid if cfg.residual else 1
        move4 = valid[3] & res_ok & load[4]
        m.d.comb += [
            load[4].eq(~valid[4] | self.y.tready),
            load[3].eq(~valid[3] | move4),
            b_ready.eq(load[3]),
        ]
        if cfg.residual:
            m.d.comb += self.residual.tready.eq(valid[3] & load[4])
        with m.If(load[3]):
            m.d.sync += [valid[3].eq(b_valid), keep[3].eq(b_keep), last[3].eq(b_last)]
        with m.If(load[4]):
            m.d.sync += [valid[4].eq(valid[3] & res_ok), keep[4].eq(keep[3]), last[4].eq(last[3])]

        s3_bits = cfg.act_bits if cfg.gelu is not None else cfg.out_bits
        lane_bits = cfg.out_lane_bytes * 8
        for lane in range(cols):
            if cfg.gelu is not None:
                grq = Requantizer(cfg.out_bits, cfg.act_bits, cfg.rounding, cfg.overflow)
                m.submodules[f"gelu_requant_{lane}"] = grq
                m.d.comb += [
                    grq.acc.eq(b_values[lane]),
                    grq.multiplier.eq(gelu_multiplier),
                    grq.shift.eq(gelu_shift),
                    grq.zero_point.eq(0),
                ]
                value3 = grq.result
            else:
                value3 = b_values[lane]
            out3 = Signal(signed(s3_bits), name=f"out3_{lane}")
            with m.If(load[3]):
                m.d.sync += out3.eq(value3)

            if cfg.residual:
                res = self.residual.tdata[lane_bits * lane :][: cfg.res_bits].as_signed()
                total4 = Signal(signed(max(s3_bits, cfg.res_bits) + 1), name=f"sum4_{lane}")
                m.d.comb += total4.eq(out3 + res)
                value4 = saturate(m, total4, cfg.res_bits, Overflow.SAT)
            else:
                value4 = out3
            out4 = Signal(signed(cfg.final_bits), name=f"out4_{lane}")
            with m.If(load[4]):
                m.d.sync += out4.eq(Mux(keep[3][lane], value4, 0))
            m.d.comb += [
                self.y.tdata[lane_bits * lane : lane_bits * (lane + 1)].eq(out4),
                self.y.tkeep[cfg.out_lane_bytes * lane : cfg.out_lane_bytes * (lane + 1)].eq(
                    Mux(keep[4][lane], (1 << cfg.out_lane_bytes) - 1, 0)
                ),
            ]
        m.d.comb += [self.y.tvalid.eq(valid[4]), self.y.tlast.eq(last[4])]

        take_y = self.y.tvalid & self.y.tready
        with m.If(take_x & ~take_y):
            m.d.sync += inflight.eq(inflight + 1)
        with m.Elif(take_y & ~take_x):
            m.d.sync += inflight.eq(inflight - 1)
        return m


def generate_epilogue(cfg: EpilogueConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of an ``Epilogue`` and its stream layout.

    Parameters
    ----------
    cfg : EpilogueConfig
        Unit configuration.
    out_dir : path, optional
        If given, write ``epilogue.v``, ``stream_layout.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "top": "epilogue", "files": list[str], "stream_layout": dict,
        "latency": int}``; the clock and reset ports are ``clk`` and ``rst``.
    """
    return emit(
        Epilogue(cfg),
        TOP_NAME,
        cfg,
        out_dir,
        {"stream_layout": stream_layout(cfg)},
        latency=latency(cfg),
    )
