"""``TemporalGemm``: a resource-invariant int8 GEMM engine (Tempus-style temporal tiling).

A fixed ``rows x cols`` array of int8 MACs computes one output tile of C at a time; any M, N, K set
at run time is done by visiting the ``ceil(M/rows) x ceil(N/cols)`` tiles in turn, so the hardware
does not grow with the matrix.

Dataflow (one beat of A and one of B per cycle, initiation interval 1)::

    A, B streams --(issue)--> operand registers --> MAC array (accumulators)
                                                        | last k of a tile: sums copied in one cycle
                                                        v
                                   drain bank --> requantizers --> C stream (a tile row per beat)

The drain bank double-buffers the accumulators: while tile ``t`` drains (``rows`` beats), tile
``t+1`` already accumulates, so load, compute and drain overlap and the array idles only if the C
stream is stalled for longer than a whole tile. Partial edge tiles are padded inside the engine:
their padded rows are never emitted and their padded columns are marked invalid with ``tkeep``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.models.gemm import GemmConfig
from tessera.rtl.arith import Requantizer
from tessera.rtl.axi import (
    AxiLiteBridge,
    AxiLiteSignature,
    AxiStreamSignature,
    Register,
    csr_map,
)
from tessera.rtl.emit import emit
from tessera.rtl.stream import SliceAdapter

__all__ = ["REGISTERS", "TemporalGemm", "generate_gemm", "register_map"]

CSR_ADDR_WIDTH = 6
LANE_BITS = 32
VERSION = 1
TOP_NAME = "temporal_gemm"


REGISTERS = (
    Register(
        "CTRL",
        0x00,
        "rw",
        "write bit 0 = 1: start (ignored while busy; a zero M, N or K sets ERROR instead). "
        "read: bit 0 BUSY, bit 1 DONE, bit 2 ERROR",
    ),
    Register("M", 0x04, "rw", "rows of A and C (1 .. 2**dim_bits - 1); ignored while busy"),
    Register("N", 0x08, "rw", "columns of B and C; ignored while busy"),
    Register("K", 0x0C, "rw", "columns of A, rows of B; ignored while busy"),
    Register("MODE", 0x10, "rw", "bit 0: 1 = raw accumulators on C, 0 = requantized"),
    Register("MULTIPLIER", 0x14, "rw", "requantization multiplier, unsigned 31 bits"),
    Register("SHIFT", 0x18, "rw", "requantization right shift, 0..63"),
    Register("ZERO_POINT", 0x1C, "rw", "output zero point, signed 16 bits"),
    Register("CYCLES", 0x20, "ro", "clock cycles the last run was busy (start to last C beat)"),
    Register("INFO", 0x24, "ro", "bits 7:0 rows, 15:8 cols, 23:16 dim_bits, 31:24 version"),
)
_REG = {r.name: r.offset >> 2 for r in REGISTERS}


def register_map(cfg: GemmConfig) -> dict[str, Any]:
    """The engine's host interface as a JSON-able dict: registers and stream layouts."""
    return {
        "top": TOP_NAME,
        "version": VERSION,
        "config": cfg.to_dict(),
        "csr": csr_map(REGISTERS, CSR_ADDR_WIDTH),
        "streams": {
            "a": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": cfg.a_beat_bytes * 8,
                "slice_bytes": cfg.rows,
                "layout": "slices of rows int8 lanes: tiles row-major; per tile, per k: "
                "A[tile_row*rows + lane, k], lane 0 first; lanes past M are ignored. Slices are "
                "packed into beats low byte first; the last beat is zero-padded",
            },
            "b": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": cfg.b_beat_bytes * 8,
                "slice_bytes": cfg.cols,
                "layout": "slices of cols int8 lanes: tiles row-major; per tile, per k: "
                "B[k, tile_col*cols + lane]; lanes past N are ignored; packed like A",
            },
            "c": {
                "protocol": "AXI4-Stream",
                "direction": "out",
                "data_width": cfg.cols * LANE_BITS,
                "layout": "tiles row-major; per tile, one beat per row < M: C[row, tile_col*cols + "
                "lane] as sign-extended 32-bit lanes; tkeep clears lanes past N; tlast on the "
                "last beat of the matrix",
            },
        },
    }


class TemporalGemm(wiring.Component):
    """Resource-invariant tiled int8 GEMM engine with AXI4-Lite control and AXI4-Stream data.

    Parameters
    ----------
    config : GemmConfig
        Array shape, accumulator and output formats, size-register width, rounding.

    Attributes
    ----------
    a : In(AxiStreamSignature(a_beat_bytes * 8))
        A operand bytes (``tdata``, ``tvalid`` in; ``tready`` out); ``rows`` int8 lanes per beat
        by default.
    b : In(AxiStreamSignature(b_beat_bytes * 8))
        B operand bytes; ``cols`` int8 lanes per beat by default.
    c : Out(AxiStreamSignature(cols * 32, keep=True, last=True))
        Result beats: ``cols`` 32-bit lanes (``tdata``, ``tkeep``, ``tlast``, ``tvalid`` out;
        ``tready`` in).
    csr : In(AxiLiteSignature(6))
        Control and status registers (see :data:`REGISTERS`).
    """

    def __init__(self, config: GemmConfig) -> None:
        self.config = config
        super().__init__(
            {
                "a": In(AxiStreamSignature(config.a_beat_bytes * 8)),
                "b": In(AxiStreamSignature(config.b_beat_bytes * 8)),
                "c": Out(AxiStreamSignature(config.cols * LANE_BITS, keep=True, last=True)),
                "csr": In(AxiLiteSignature(CSR_ADDR_WIDTH)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        rows, cols, dim = cfg.rows, cfg.cols, cfg.dim_bits

        # ---- control and status registers -------------------------------------------------
        m.submodules.bridge = bridge = AxiLiteBridge(CSR_ADDR_WIDTH)
        wiring.connect(m, wiring.flipped(self.csr), bridge.csr)
        bus = bridge.bus
        size_m, size_n, size_k = Signal(dim), Signal(dim), Signal(dim)
        raw_mode = Signal()
        multiplier = Signal(31)
        shift = Signal(6)
        zero_point = Signal(signed(16))
        busy, done, error = Signal(), Signal(), Signal()
        feeding = Signal()  # busy and operand beats still expected
        cycles = Signal(32)

        # Plain read/write registers: written whole (truncated to their width), read back as is.
        settings = {
            "M": size_m,
            "N": size_n,
            "K": size_k,
            "MODE": raw_mode,
            "MULTIPLIER": multiplier,
            "SHIFT": shift,
            "ZERO_POINT": zero_point,
        }
        with m.If(bus.w_en & ~busy):
            with m.Switch(bus.w_addr):
                with m.Case(_REG["CTRL"]):
                    with m.If(bus.w_data[0]):
                        m.d.sync += done.eq(0)
                        with m.If((size_m == 0) | (size_n == 0) | (size_k == 0)):
                            m.d.sync += error.eq(1)
                        with m.Else():
                            m.d.sync += [busy.eq(1), error.eq(0), cycles.eq(0), feeding.eq(1)]
                for name, register in settings.items():
                    with m.Case(_REG[name]):
                        m.d.sync += register.eq(bus.w_data)

        read_values = {
            "CTRL": busy | (done << 1) | (error << 2),
            **{name: register.as_unsigned() for name, register in settings.items()},
            "CYCLES": cycles,
            "INFO": rows | (cols << 8) | (dim << 16) | (VERSION << 24),
        }
        with m.Switch(bus.r_addr):
            for name, value in read_values.items():
                with m.Case(_REG[name]):
                    m.d.comb += bus.r_data.eq(value)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- issue: walk tiles (row-major) and k, take one A and one B beat per cycle -------
        k_index = Signal(dim)
        row_base = Signal(dim + 7)  # first C row of the current tile
        col_base = Signal(dim + 7)
        last_k = k_index == size_k - 1
        last_row = row_base + rows >= size_m
        last_col = col_base + cols >= size_n
        tile_rows = Signal(range(rows + 1))
        tile_cols = Signal(range(cols + 1))
        m.d.comb += [
            tile_rows.eq(Mux(last_row, size_m - row_base, rows)),
            tile_cols.eq(Mux(last_col, size_n - col_base, cols)),
        ]

        # Stage 1: registered operands and tile bookkeeping.
        s1_valid, s1_first, s1_last, s1_final = Signal(), Signal(), Signal(), Signal()
        s1_a, s1_b = Signal(rows * 8), Signal(cols * 8)
        s1_rows, s1_cols = Signal.like(tile_rows), Signal.like(tile_cols)

        # Stage 2: a tile's sums have settled in the accumulators; the bank copies them now, while
        # the next tile's first beat already restarts the accumulators on the same edge.
        s2_last, s2_final = Signal(), Signal()
        s2_rows, s2_cols = Signal.like(tile_rows), Signal.like(tile_cols)
        m.d.sync += [
            s2_last.eq(s1_valid & s1_last),
            s2_final.eq(s1_final),
            s2_rows.eq(s1_rows),
            s2_cols.eq(s1_cols),
        ]

        # Drain bank state.
        bank_full, bank_final = Signal(), Signal()
        bank_rows, bank_cols = Signal.like(tile_rows), Signal.like(tile_cols)
        drain_row = Signal(range(rows))

        # The buses become one k-slice per transfer (rows / cols int8 lanes).
        m.submodules.a_slices = a_adapter = SliceAdapter(cfg.a_beat_bytes, rows)
        m.submodules.b_slices = b_adapter = SliceAdapter(cfg.b_beat_bytes, cols)
        wiring.connect(m, wiring.flipped(self.a), a_adapter.bus)
        wiring.connect(m, wiring.flipped(self.b), b_adapter.bus)
        a_in, b_in = a_adapter.slices, b_adapter.slices
        m.d.comb += [a_adapter.enable.eq(feeding), b_adapter.enable.eq(feeding)]

        # A tile's last slice may only issue when the drain bank will be free to take its sums.
        can_issue = feeding & (~last_k | ~(bank_full | (s1_valid & s1_last) | s2_last))
        fire = Signal()
        m.d.comb += [
            a_in.ready.eq(can_issue & b_in.valid),
            b_in.ready.eq(can_issue & a_in.valid),
            fire.eq(can_issue & a_in.valid & b_in.valid),
        ]
        m.d.sync += s1_valid.eq(fire)
        with m.If(fire):
            m.d.sync += [
                s1_a.eq(a_in.payload),
                s1_b.eq(b_in.payload),
                s1_first.eq(k_index == 0),
                s1_last.eq(last_k),
                s1_final.eq(last_k & last_row & last_col),
                s1_rows.eq(tile_rows),
                s1_cols.eq(tile_cols),
                k_index.eq(k_index + 1),
            ]
            with m.If(last_k):
                m.d.sync += [k_index.eq(0), col_base.eq(col_base + cols)]
                with m.If(last_col):
                    m.d.sync += [col_base.eq(0), row_base.eq(row_base + rows)]
                    with m.If(last_row):  # done: the counters are back at 0 for the next run
                        m.d.sync += [feeding.eq(0), row_base.eq(0)]

        # ---- MAC array and drain bank --------------------------------------------------------
        acc = [
            [Signal(signed(cfg.acc_bits), name=f"acc_{r}_{c}") for c in range(cols)]
            for r in range(rows)
        ]
        bank = [
            [Signal(signed(cfg.acc_bits), name=f"bank_{r}_{c}") for c in range(cols)]
            for r in range(rows)
        ]
        drain = bank_full & self.c.tready
        for r in range(rows):
            a_r = s1_a.word_select(r, 8).as_signed()
            for c in range(cols):
                # Only the accumulator reads the sum, so it maps into a DSP's P register.
                product = a_r * s1_b.word_select(c, 8).as_signed()
                with m.If(s1_valid):
                    m.d.sync += acc[r][c].eq(Mux(s1_first, 0, acc[r][c]) + product)
                # The bank drains by shifting rows towards row 0 (no wide output multiplexer).
                if r + 1 < rows:
                    with m.If(drain):
                        m.d.sync += bank[r][c].eq(bank[r + 1][c])
                with m.If(s2_last):
                    m.d.sync += bank[r][c].eq(acc[r][c])
        with m.If(s2_last):
            m.d.sync += [
                bank_full.eq(1),
                bank_final.eq(s2_final),
                bank_rows.eq(s2_rows),
                bank_cols.eq(s2_cols),
                drain_row.eq(0),
            ]

        # ---- output: requantize bank row 0, one tile row per beat -----------------------------
        last_drain_row = drain_row == bank_rows - 1
        for c in range(cols):
            rq = Requantizer(cfg.acc_bits, cfg.out_bits, cfg.rounding, cfg.overflow)
            m.submodules[f"requant_{c}"] = rq
            m.d.comb += [
                rq.acc.eq(bank[0][c]),
                rq.multiplier.eq(multiplier),
                rq.shift.eq(shift),
                rq.zero_point.eq(zero_point),
            ]
            lane = self.c.tdata[LANE_BITS * c : LANE_BITS * (c + 1)]
            m.d.comb += [
                lane.eq(Mux(c < bank_cols, Mux(raw_mode, bank[0][c], rq.result), 0)),
                self.c.tkeep[4 * c : 4 * c + 4].eq(Mux(c < bank_cols, 0xF, 0)),
            ]
        m.d.comb += [self.c.tvalid.eq(bank_full), self.c.tlast.eq(bank_final & last_drain_row)]
        with m.If(drain):
            m.d.sync += drain_row.eq(drain_row + 1)
            with m.If(last_drain_row):
                m.d.sync += bank_full.eq(0)
                with m.If(bank_final):
                    m.d.sync += [busy.eq(0), done.eq(1)]
        return m


def generate_gemm(cfg: GemmConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of a ``TemporalGemm`` and its register map.

    Parameters
    ----------
    cfg : GemmConfig
        Engine configuration.
    out_dir : path, optional
        If given, write ``temporal_gemm.v``, ``register_map.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "register_map": dict, "top": str, "files": list[str]}``.
    """
    return emit(TemporalGemm(cfg), TOP_NAME, cfg, out_dir, {"register_map": register_map(cfg)})
