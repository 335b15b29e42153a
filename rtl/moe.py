"""``MoeEngine``: a task-level mixture-of-experts layer on one shared ``rows x cols`` MAC array.

One run (CTRL start) computes :func:`tessera.models.moe.moe_layer` bit for bit::

    x --> token buffer                  m_axi --> weight bank 0 (gate region of TASK)
    gate GEMM on the array --> requant --> logit buffer
    per token: top-k scan of its logits --> OnlineSoftmax --> gate weights
               --> per-expert queues (token, gate weight)
    per expert with a non-empty queue, in expert order:
        m_axi --> the free weight bank (that expert's region only; overlaps the previous
                  expert's GEMMs)
        W1 GEMM over the queued tokens (bias preloaded) --> requant --> GELU ROM --> requant
            --> hidden buffer
        W2 GEMM over the hidden rows (bias preloaded) --> requant --> x gate weight
            --> += output accumulator of the token (scatter)
    output accumulators --> round half up, saturate --> y

The array computes one ``rows x cols`` output tile at a time, output stationary: the tile's
``rows`` operand rows (tokens, or hidden rows) each read one element per cycle from their own
read port of the token / hidden buffer, the ``cols`` weights of the same ``k`` come from the
weight buffer, and all ``rows * cols`` accumulators advance by one product per cycle. A tile then
drains one row (``cols`` lanes) per cycle into the post-processing pipeline of the current
phase, after which the next tile starts; a tile costs ``K + rows_in_tile + 2`` cycles
(``rows * cols`` MACs per cycle while it computes).

Overlap: the token load and the gate fetch run side by side. The weight buffer has two banks
(ping-pong): once routing is done, a fetcher walks the experts in order and loads each one with a
non-empty queue into the bank the array is not using, as soon as that bank's previous expert has
finished its W2 GEMM; the array runs the experts in the same order, each as soon as its bank is
full. So from the second expert on, a fetch hides behind the previous expert's GEMMs (or the
GEMMs behind the fetches, when memory is the bottleneck). Routing, the GEMM phases and the
output are otherwise sequential. :func:`tessera.estimators.moe_cycles.moe_engine_cycles` is the
exact cycle count of a run without stalls.

Buffers (all on chip): tokens ``max_tokens x dim`` int8; hidden ``max_tokens x
ceil(hidden/cols)*cols`` int8; logits ``max_tokens x ceil(experts/cols)*cols``; queues ``experts x
max_tokens`` (token index, gate weight); output accumulators ``max_tokens x dim``; weight buffer
two banks of ``max(gate_bytes, expert_bytes)`` (one region of
:func:`tessera.models.moe.moe_image_layout` each) and the requant words of each bank's region.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.moe import (
    BIAS_BYTES,
    REQUANT_WORD_BYTES,
    MoeConfig,
    moe_image_layout,
)
from tessera.models.rounding import Overflow
from tessera.rtl.arith import Requantizer, saturate
from tessera.rtl.axi import AxiLiteBridge, AxiLiteSignature, AxiStreamSignature, Register, csr_map
from tessera.rtl.emit import emit
from tessera.rtl.gelu import LATENCY as GELU_LATENCY
from tessera.rtl.gelu import GeluRom
from tessera.rtl.softmax import OnlineSoftmax

__all__ = [
    "ADDR_BITS",
    "POST_LATENCY",
    "QUEUE_LEN_BASE",
    "REGISTERS",
    "TOP_NAME",
    "AxiReadSignature",
    "MoeEngine",
    "check_engine_config",
    "csr_addr_width",
    "generate_moe",
    "register_map",
]

TOP_NAME = "moe_engine"
VERSION = 1
ADDR_BITS = 32
"""Width of the weight port's byte addresses."""
QUEUE_LEN_BASE = 0x40
"""Byte offset of ``QUEUE_LEN[0]``; ``QUEUE_LEN[e]`` is at ``QUEUE_LEN_BASE + 4 * e``."""
MAX_BUFFER_BYTES = 1 << 22
"""Largest on-chip buffer the generator accepts (4 MiB): beyond it the design is not sensible."""

# Phases of the array (what the drained tiles are post-processed into).
_GATE, _W1, _W2 = 0, 1, 2
POST_LATENCY = {_GATE: 1, _W1: 2 + GELU_LATENCY, _W2: 2}
"""Per phase (0 gate, 1 W1, 2 W2), cycles from a drained tile row to the write of its results:
the requant register, then the logit write (gate); the GELU ROM, the hidden requant register and
the hidden write (W1); the product register and the accumulator write (W2)."""

REGISTERS = (
    Register(
        "CTRL",
        0x00,
        "rw",
        "write bit 0 = 1: start (ignored while busy; TOKENS of 0 or above max_tokens, TASK >= "
        "tasks or a WEIGHT_BASE not 4096-byte aligned sets ERROR instead). read: bit 0 BUSY, "
        "bit 1 DONE, bit 2 ERROR (also set with DONE when a weight read answered rresp != OKAY)",
    ),
    Register("TOKENS", 0x04, "rw", "tokens in the run, 1 .. max_tokens; ignored while busy"),
    Register("TASK", 0x08, "rw", "task whose gate routes the tokens, 0 .. tasks-1"),
    Register(
        "WEIGHT_BASE",
        0x0C,
        "rw",
        "byte address of the weight image (moe_weight_image) on m_axi, 4096-byte aligned",
    ),
    Register("CYCLES", 0x10, "ro", "clock cycles the last run was busy (start to last y beat)"),
    Register("WEIGHT_BYTES", 0x14, "ro", "bytes read on m_axi by the last run"),
    Register("EXPERTS_LOADED", 0x18, "ro", "experts whose weights the last run fetched"),
    Register("INFO", 0x1C, "ro", "bits 7:0 rows, 15:8 cols, 24:16 top_k, 31:25 version"),
    Register("SHAPE", 0x20, "ro", "bits 15:0 dim, 31:16 max_tokens"),
    Register("SIZES", 0x24, "ro", "bits 15:0 expert_hidden, 23:16 experts - 1, 31:24 tasks - 1"),
    Register(
        "QUEUE_LEN",
        QUEUE_LEN_BASE,
        "ro",
        "window of `experts` words: word e (at QUEUE_LEN + 4*e) is the length of expert e's "
        "queue in the last run (tokens routed to it)",
    ),
)
_REG = {r.name: r.offset >> 2 for r in REGISTERS}


def csr_addr_width(cfg: MoeConfig) -> int:
    """Byte-address width of ``csr``: room for the ``QUEUE_LEN`` window of every expert."""
    return max(7, (QUEUE_LEN_BASE + 4 * cfg.experts - 1).bit_length())


def check_engine_config(cfg: MoeConfig) -> None:
    """``ValueError`` naming the field unless the engine can be built for ``cfg``."""
    if cfg.dim % cfg.cols:
        raise ValueError(
            f"dim={cfg.dim} must be a multiple of cols={cfg.cols}: tokens stream in beats of "
            "cols int8 lanes (choose cols dividing dim)"
        )
    lay = moe_image_layout(cfg)
    buffers = {
        "max_tokens * dim (token buffer)": cfg.max_tokens * cfg.dim,
        "max_tokens * expert_hidden (hidden buffer)": cfg.max_tokens * cfg.expert_hidden,
        "the weight buffer (expert_bytes: dim * expert_hidden)": max(
            lay.gate_bytes, lay.expert_bytes
        ),
    }
    for name, size in buffers.items():
        if size > MAX_BUFFER_BYTES:
            raise ValueError(
                f"{name} needs {size} bytes on chip, above {MAX_BUFFER_BYTES}: "
                "reduce max_tokens, dim or expert_hidden"
            )
    if cfg.rows * cfg.cols > 1024:
        raise ValueError(
            f"rows * cols = {cfg.rows * cfg.cols} MACs: at most 1024 (reduce rows or cols)"
        )


class AxiReadSignature(wiring.Signature):
    """AXI4 read channels (AR and R), seen from the manager.

    Members carry the AMBA names, so the flattened ports read ``m_axi__araddr``... and
    cocotbext-axi binds them with ``AxiReadBus.from_prefix(dut, "m_axi_")``.

    Parameters
    ----------
    addr_width : int
        Byte-address width.
    data_width : int
        ``rdata`` width in bits (8 * a power of two).
    id_width : int
        ``arid`` / ``rid`` width.
    """

    def __init__(self, addr_width: int, data_width: int, id_width: int = 1) -> None:
        super().__init__(
            {
                "arid": Out(id_width),
                "araddr": Out(addr_width),
                "arlen": Out(8),
                "arsize": Out(3),
                "arburst": Out(2),
                "arvalid": Out(1),
                "arready": In(1),
                "rid": In(id_width),
                "rdata": In(data_width),
                "rresp": In(2),
                "rlast": In(1),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )


def register_map(cfg: MoeConfig) -> dict[str, Any]:
    """The engine's host interface as a JSON-able dict: registers, streams, weight image."""
    check_engine_config(cfg)
    lay = moe_image_layout(cfg)
    beat = f"beats of {cfg.cols} int8 lanes (lane 0 = lowest element)"
    return {
        "top": TOP_NAME,
        "version": VERSION,
        "config": cfg.to_dict(),
        "csr": csr_map(REGISTERS, csr_addr_width(cfg)),
        "streams": {
            "x": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": cfg.cols * 8,
                "layout": f"TOKENS tokens in order, each dim={cfg.dim} elements as "
                f"{cfg.dim // cfg.cols} {beat}; tlast on the last beat (not checked)",
            },
            "y": {
                "protocol": "AXI4-Stream",
                "direction": "out",
                "data_width": cfg.cols * 8,
                "layout": "TOKENS output tokens in order, same layout as x; tlast on the last "
                "beat of the run",
            },
        },
        "m_axi": {
            "protocol": "AXI4 read-only manager",
            "addr_width": ADDR_BITS,
            "data_width": cfg.bus_bytes * 8,
            "bursts": f"INCR, arsize {cfg.bus_bytes.bit_length() - 1}, at most "
            f"{lay.burst_beats} beats, one outstanding, never across 4 KB",
        },
        "weight_image": {
            "layout": lay.to_dict(),
            "description": (
                "tasks gate regions (stride gate_stride), then experts expert regions (stride "
                "expert_stride) from experts_first. Gate region: requant word (multiplier u32 "
                "LE, shift u32 LE) at 0, gate matrix tile-major at gate_weights. Expert region: "
                "W1, hidden and W2 requant words at 0, 8, 16; b1 and b2 (int32 LE, padded to "
                "whole cols tiles) at b1, b2; W1 and W2 tile-major at w1, w2. Tile-major: for "
                "each tile of cols output columns, for each k, the cols weights of row k (one "
                "signed byte each, also for weight_bits < 8; 0 past the last column)."
            ),
        },
    }


def _byte_reader(
    m: Module, memory: Memory, address: Value, count: int, word_bytes: int, name: str
) -> list[Value]:
    """``count`` bytes from byte ``address`` on, one cycle after the address (``count`` read
    ports of the word-wide ``memory``, each with its own byte select)."""
    shift = word_bytes.bit_length() - 1
    out = []
    for i in range(count):
        port = memory.read_port(domain="sync")
        byte_address = Signal(len(address) + 1, name=f"{name}_addr_{i}")
        m.d.comb += [byte_address.eq(address + i), port.addr.eq(byte_address[shift:])]
        if word_bytes == 1:
            out.append(port.data)
            continue
        select = Signal(shift, name=f"{name}_sel_{i}")
        m.d.sync += select.eq(byte_address[:shift])
        out.append(port.data.word_select(select, 8))
    return out


def _word_reader(
    m: Module,
    memory: Memory,
    address: Value,
    count: int,
    size: int,
    word_bytes: int,
    name: str,
) -> list[Value]:
    """``count`` consecutive ``size``-byte items from the ``size``-aligned byte ``address``, one
    cycle after the address (``size`` divides ``word_bytes``: each item is inside one word)."""
    shift = word_bytes.bit_length() - 1
    item_shift = size.bit_length() - 1
    out = []
    for i in range(count):
        port = memory.read_port(domain="sync")
        byte_address = Signal(len(address) + 1, name=f"{name}_addr_{i}")
        m.d.comb += [byte_address.eq(address + i * size), port.addr.eq(byte_address[shift:])]
        if word_bytes == size:
            out.append(port.data)
            continue
        select = Signal(shift - item_shift, name=f"{name}_sel_{i}")
        m.d.sync += select.eq(byte_address[item_shift:shift])
        out.append(port.data.word_select(select, size * 8))
    return out


def _pick(items: list[Value], index: Value) -> Value:
    """``items[index]`` as a chain of multiplexers (``index`` past the end gives the last item).

    Not an ``Array``: its Verilog is an ``always @*`` block, which Icarus leaves at X until
    one of its inputs first changes, and some of these inputs keep their reset value for a
    whole run.
    """
    result = items[-1]
    for i in reversed(range(len(items) - 1)):
        result = Mux(index == i, items[i], result)
    return result


class MoeEngine(wiring.Component):
    """Mixture-of-experts layer engine: shared MAC array, per-expert queues, AXI4 weight reads.

    Parameters
    ----------
    config : MoeConfig
        Layer shape, array shape (``rows x cols``), number formats and ``bus_bytes``.

    Attributes
    ----------
    csr : In(AxiLiteSignature(csr_addr_width(config)))
        Control and status registers (:data:`REGISTERS`): ``csr__awaddr``, ``csr__wdata`` (32),
        ``csr__araddr``, ``csr__rdata`` (32) and their handshakes.
    x : In(AxiStreamSignature(cols * 8, last=True))
        Input tokens, ``cols`` int8 lanes per beat: ``x__tdata`` (in), ``x__tvalid`` (in, 1),
        ``x__tlast`` (in, 1, ignored), ``x__tready`` (out, 1).
    y : Out(AxiStreamSignature(cols * 8, last=True))
        Output tokens, same layout: ``y__tdata`` (out), ``y__tvalid`` (out, 1), ``y__tlast``
        (out, 1, last beat of the run), ``y__tready`` (in, 1).
    m_axi : Out(AxiReadSignature(32, bus_bytes * 8))
        Weight reads: ``m_axi__araddr`` (out, 32), ``m_axi__arlen`` (out, 8), ``m_axi__arsize``
        (out, 3), ``m_axi__arburst`` (out, 2, INCR), ``m_axi__arid`` (out, 1, 0),
        ``m_axi__arvalid`` (out, 1), ``m_axi__arready`` (in, 1), ``m_axi__rdata`` (in,
        ``bus_bytes * 8``), ``m_axi__rresp`` (in, 2), ``m_axi__rlast`` (in, 1), ``m_axi__rid``
        (in, 1), ``m_axi__rvalid`` (in, 1), ``m_axi__rready`` (out, 1).

    Raises
    ------
    ValueError
        If ``dim`` is not a multiple of ``cols`` or a buffer would be absurdly large
        (:func:`check_engine_config`).

    Notes
    -----
    Throughput: ``rows * cols`` MACs per cycle while a tile computes; each tile of an
    ``(M, N, K)`` GEMM costs ``K + rows_in_tile + 2`` cycles. Tokens load at one beat per
    cycle, weights at one bus beat per cycle (one burst outstanding, so each burst also pays
    the memory latency and an address cycle), routing takes ``experts + 2 * top_k + softmax
    latency`` cycles per token, the output one beat per cycle. Expert fetches overlap the
    previous expert's GEMMs (two weight banks).

    The operand buffers have one read port per array row (token and hidden buffers) or per
    column (weight buffer), i.e. they are replicated per port in block RAM; the bias reads add
    ``cols`` ports to the weight buffer.
    """

    def __init__(self, config: MoeConfig) -> None:
        try:
            check_engine_config(config)
        except ValueError:
            self._MustUse__silence = True  # a rejected engine is not an unused one
            raise
        self.config = config
        super().__init__(
            {
                "csr": In(AxiLiteSignature(csr_addr_width(config))),
                "x": In(AxiStreamSignature(config.cols * 8, last=True)),
                "y": Out(AxiStreamSignature(config.cols * 8, last=True)),
                "m_axi": Out(AxiReadSignature(ADDR_BITS, config.bus_bytes * 8)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        lay = moe_image_layout(cfg)
        R, C, E, D, H = cfg.rows, cfg.cols, cfg.experts, cfg.dim, cfg.expert_hidden
        T, top_k, BB = cfg.max_tokens, cfg.top_k, cfg.bus_bytes
        TD, TH, TE = D // C, -(-H // C), -(-E // C)
        acc_bits, act_bits = cfg.acc_bits, cfg.act_bits
        token_shape = range(T + 1)
        comb_bits = act_bits + cfg.gate_bits + top_k.bit_length() + 1

        # ---- control and status registers -------------------------------------------------
        addr_width = csr_addr_width(cfg)
        m.submodules.bridge = bridge = AxiLiteBridge(addr_width)
        wiring.connect(m, wiring.flipped(self.csr), bridge.csr)
        bus = bridge.bus
        tokens_reg = Signal(32)
        task_reg = Signal(32)
        base_reg = Signal(32)
        busy, done, error, bus_error = Signal(), Signal(), Signal(), Signal()
        cycles = Signal(32)
        weight_bytes = Signal(32)
        loaded = Signal(range(E + 1))
        qlen = [Signal(token_shape, name=f"qlen_{e}") for e in range(E)]
        launch = Signal()
        finish = Signal()  # one cycle: the last y beat is accepted

        params_ok = (
            (tokens_reg != 0) & (tokens_reg <= T) & (task_reg < cfg.tasks) & (base_reg[:12] == 0)
        )
        with m.If(bus.w_en & ~busy):
            with m.Switch(bus.w_addr):
                with m.Case(_REG["CTRL"]):
                    with m.If(bus.w_data[0]):
                        m.d.sync += done.eq(0)
                        with m.If(params_ok):
                            m.d.comb += launch.eq(1)
                            m.d.sync += [
                                busy.eq(1),
                                error.eq(0),
                                bus_error.eq(0),
                                cycles.eq(0),
                                weight_bytes.eq(0),
                                loaded.eq(0),
                                *(q.eq(0) for q in qlen),
                            ]
                        with m.Else():
                            m.d.sync += error.eq(1)
                with m.Case(_REG["TOKENS"]):
                    m.d.sync += tokens_reg.eq(bus.w_data)
                with m.Case(_REG["TASK"]):
                    m.d.sync += task_reg.eq(bus.w_data)
                with m.Case(_REG["WEIGHT_BASE"]):
                    m.d.sync += base_reg.eq(bus.w_data)
        read_values = {
            _REG["CTRL"]: busy | (done << 1) | (error << 2),
            _REG["TOKENS"]: tokens_reg,
            _REG["TASK"]: task_reg,
            _REG["WEIGHT_BASE"]: base_reg,
            _REG["CYCLES"]: cycles,
            _REG["WEIGHT_BYTES"]: weight_bytes,
            _REG["EXPERTS_LOADED"]: loaded,
            _REG["INFO"]: R | (C << 8) | (top_k << 16) | (VERSION << 25),
            _REG["SHAPE"]: D | (T << 16),
            _REG["SIZES"]: H | ((E - 1) << 16) | ((cfg.tasks - 1) << 24),
        }
        for e in range(E):
            read_values[_REG["QUEUE_LEN"] + e] = qlen[e]
        with m.Switch(bus.r_addr):
            for word, value in read_values.items():
                with m.Case(word):
                    m.d.comb += bus.r_data.eq(value)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(finish):
            m.d.sync += [busy.eq(0), done.eq(1), error.eq(bus_error)]

        n_tokens = Signal(token_shape)
        task = Signal(range(cfg.tasks))
        m.d.comb += [n_tokens.eq(tokens_reg), task.eq(task_reg)]

        # ---- weight fetch: one region into a weight-buffer bank, bursts one at a time ------
        bank_words = max(lay.gate_beats, lay.expert_beats)
        bank_bytes = bank_words * BB
        wbuf_depth = 2 * bank_words  # two banks: the next expert loads while one computes
        m.submodules.weight_buffer = wbuf = Memory(
            shape=unsigned(BB * 8), depth=wbuf_depth, init=[]
        )
        wbuf_write = wbuf.write_port()
        axi = self.m_axi
        fetch_start = Signal()
        fetch_expert = Signal()  # the region to fetch is an expert's (else the task's gate)
        fetch_region = Signal(ADDR_BITS)  # its byte address
        fetch_bank = Signal()  # the bank to fetch into
        fetch_done = Signal()  # sticky: the last fetch is complete
        f_bank = Signal()
        f_addr = Signal(ADDR_BITS)
        f_left = Signal(range(bank_words + 1))  # beats still to request
        f_burst = Signal(range(lay.burst_beats + 1))  # beats of the burst in flight
        f_beat = Signal(range(bank_words + 1))  # beats received in this fetch
        f_next = Mux(f_left > lay.burst_beats, lay.burst_beats, f_left)
        header_bytes = 3 * REQUANT_WORD_BYTES
        header = [[Signal(8, name=f"header{b}_{i}") for i in range(header_bytes)] for b in (0, 1)]
        r_fire = Signal()
        m.d.comb += [
            axi.arid.eq(0),
            axi.araddr.eq(f_addr),
            axi.arlen.eq(f_next - 1),
            axi.arsize.eq(BB.bit_length() - 1),
            axi.arburst.eq(1),  # INCR
            r_fire.eq(axi.rvalid & axi.rready),
            wbuf_write.addr.eq(Mux(f_bank, bank_words, 0) + f_beat),
            wbuf_write.data.eq(axi.rdata),
            wbuf_write.en.eq(r_fire),
        ]
        with m.FSM(name="fetch") as fetch_fsm:
            with m.State("IDLE"):
                with m.If(fetch_start):
                    region_beats = Mux(fetch_expert, lay.expert_beats, lay.gate_beats)
                    m.d.sync += [
                        f_addr.eq(fetch_region),
                        f_left.eq(region_beats),
                        f_beat.eq(0),
                        f_bank.eq(fetch_bank),
                        fetch_done.eq(0),
                    ]
                    m.next = "AR"
            with m.State("AR"):
                with m.If(axi.arready):
                    m.d.sync += [
                        f_burst.eq(f_next),
                        f_left.eq(f_left - f_next),
                        f_addr.eq(f_addr + f_next * BB),
                    ]
                    m.next = "R"
            with m.State("R"):
                with m.If(r_fire):
                    m.d.sync += [f_beat.eq(f_beat + 1), weight_bytes.eq(weight_bytes + BB)]
                    with m.If(axi.rresp != 0):
                        m.d.sync += bus_error.eq(1)
                    with m.If(axi.rlast):
                        with m.If(f_left == 0):
                            m.d.sync += fetch_done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "AR"
        # Driven outside the states, so that simulators see them defined from time 0.
        m.d.comb += [
            axi.arvalid.eq(fetch_fsm.ongoing("AR")),
            axi.rready.eq(fetch_fsm.ongoing("R")),
        ]
        # Requant words are caught as they pass (the header is the first bytes of a region).
        for b in (0, 1):
            for i in range(header_bytes):
                with m.If(r_fire & (f_bank == b) & (f_beat == i // BB)):
                    m.d.sync += header[b][i].eq(axi.rdata.word_select(i % BB, 8))
        c_bank = Signal()  # the bank the array computes from

        def requant_word(index: int) -> tuple[Value, Value]:
            at = index * REQUANT_WORD_BYTES
            words = [Cat(*header[b][at : at + 4])[:31] for b in (0, 1)]
            shifts = [header[b][at + 4][:6] for b in (0, 1)]
            return Mux(c_bank, words[1], words[0]), Mux(c_bank, shifts[1], shifts[0])

        # ---- on-chip buffers ----------------------------------------------------------------
        m.submodules.token_buffer = tok_mem = Memory(shape=unsigned(C * 8), depth=T * TD, init=[])
        m.submodules.hidden_buffer = hid_mem = Memory(shape=unsigned(C * 8), depth=T * TH, init=[])
        m.submodules.logit_buffer = logit_mem = Memory(
            shape=unsigned(C * cfg.logit_bits), depth=T * TE, init=[]
        )
        token_bits = max(1, (T - 1).bit_length())
        m.submodules.queues = queue_mem = Memory(
            shape=unsigned(token_bits + cfg.gate_bits), depth=E * T, init=[]
        )
        m.submodules.accumulators = out_mem = Memory(
            shape=unsigned(C * comb_bits), depth=T * TD, init=[]
        )
        tok_write = tok_mem.write_port()
        hid_write = hid_mem.write_port()
        logit_write = logit_mem.write_port()
        queue_write = queue_mem.write_port()
        out_write = out_mem.write_port()
        logit_read = logit_mem.read_port(domain="sync")
        out_read = out_mem.read_port(domain="sync")

        # ---- main sequencer state shared by the phases ----------------------------------------
        phase = Signal(2)
        expert = Signal(range(E))  # expert being run
        m0 = Signal(range(T + R + 1))  # first row (token or queue position) of the tile
        tn = Signal(range(max(TE, TH, TD) + 1))  # output column tile
        tile_m = Signal(token_shape)  # rows of the phase's GEMM (M)
        k = Signal(range(max(D, H) + 1))
        kw = Signal(range(max(TD, TH) + 1))  # k // cols
        kl = Signal(range(C))  # k % cols
        wa = Signal(range(wbuf_depth * BB + 2 * C + 1))  # byte address of W[k, tn*cols]
        bank_base = Mux(c_bank, bank_bytes, 0)
        dr = Signal(range(R))  # drained row
        rows_left = tile_m - m0
        tile_rows = Mux(rows_left > R, R, rows_left)
        # Muxes rather than arrays (see _pick).
        n_tiles = Mux(phase == _GATE, TE, Mux(phase == _W1, TH, TD))
        k_len = Mux(phase == _W2, H, D)
        in_setup, in_compute, in_drain = Signal(), Signal(), Signal()

        # ---- token load (x) ---------------------------------------------------------------------
        loading = Signal()
        load_done = Signal()
        l_idx = Signal(range(T * TD + 1))
        x_fire = Signal()
        load_beats = n_tokens * TD
        m.d.comb += [
            self.x.tready.eq(loading),
            x_fire.eq(self.x.tvalid & loading),
            tok_write.addr.eq(l_idx),
            tok_write.data.eq(self.x.tdata),
            tok_write.en.eq(x_fire),
        ]
        with m.If(x_fire):
            m.d.sync += l_idx.eq(l_idx + 1)
            with m.If(l_idx == load_beats - 1):
                m.d.sync += [loading.eq(0), load_done.eq(1)]
        with m.If(launch):
            m.d.sync += [loading.eq(1), load_done.eq(0), l_idx.eq(0)]

        # ---- tile operands: per-row token / hidden reads, per-column weight reads ----------
        row_token = []
        row_weight = []
        a_values = []
        row_index_shape = range(T + R + 1)
        kl_d = Signal.like(kl)
        m.d.sync += kl_d.eq(kl)
        for r in range(R):
            row = Signal(row_index_shape, name=f"row_{r}")
            # Rows past the tile's end read row m0's operands (harmless, never drained).
            m.d.comb += row.eq(Mux(m0 + r < tile_m, m0 + r, m0))
            qport = queue_mem.read_port(domain="sync")
            m.d.comb += [qport.addr.eq(expert * T + row), qport.en.eq(in_setup)]
            token = Signal(range(T), name=f"row_token_{r}")
            m.d.comb += token.eq(Mux(phase == _GATE, row, qport.data[:token_bits]))
            row_token.append(token)
            row_weight.append(qport.data[token_bits:])
            tport = tok_mem.read_port(domain="sync")
            hport = hid_mem.read_port(domain="sync")
            m.d.comb += [tport.addr.eq(token * TD + kw), hport.addr.eq(row * TH + kw)]
            word = Mux(phase == _W2, hport.data, tport.data)
            a_values.append(word.word_select(kl_d, 8).as_signed())
        # W[k, tn*cols + c] for the c-th column of the array
        b_values = [v.as_signed() for v in _byte_reader(m, wbuf, wa, C, BB, "weight")]
        bias_offset = bank_base + Mux(phase == _W1, lay.b1, lay.b2) + tn * (C * BIAS_BYTES)
        if BB >= BIAS_BYTES:
            # Biases are 4-byte aligned, so each lies inside one bus word: one port per bias.
            bias_words = _word_reader(m, wbuf, bias_offset, C, BIAS_BYTES, BB, "bias")
        else:
            bias_bytes = _byte_reader(m, wbuf, bias_offset, C * BIAS_BYTES, BB, "bias")
            bias_words = [Cat(*bias_bytes[4 * c : 4 * c + 4]) for c in range(C)]
        biases = [Mux(phase == _GATE, 0, w[:acc_bits].as_signed()) for w in bias_words]

        # ---- the MAC array ------------------------------------------------------------------
        mac_valid, mac_first = Signal(), Signal()
        m.d.sync += [mac_valid.eq(in_compute), mac_first.eq(k == 0)]
        acc = [[Signal(signed(acc_bits), name=f"acc_{r}_{c}") for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                with m.If(mac_valid):
                    # Bias and products wrap together modulo 2**acc_bits, as in the model.
                    m.d.sync += acc[r][c].eq(
                        Mux(mac_first, biases[c], acc[r][c]) + a_values[r] * b_values[c]
                    )

        # ---- drain: one tile row per cycle into the phase's requantizers ---------------------
        drained = _pick([Cat(*acc[r]) for r in range(R)], dr)  # flattened row dr
        w1_mult, w1_shift = requant_word(0)
        hidden_mult, hidden_shift = requant_word(1)
        w2_mult, w2_shift = requant_word(2)
        # A gate region holds its one requant word where an expert region holds W1's.
        widest = max(cfg.logit_bits, cfg.gelu_bits, act_bits)
        p1_valid = Signal()
        p1_phase = Signal(2)
        p1_token = Signal(range(T))
        p1_row = Signal(row_index_shape)
        p1_weight = Signal(cfg.gate_bits)
        p1_tn = Signal.like(tn)
        p1_values = [Signal(signed(widest), name=f"p1_value_{c}") for c in range(C)]
        m.d.sync += p1_valid.eq(in_drain)
        with m.If(in_drain):
            m.d.sync += [
                p1_phase.eq(phase),
                p1_token.eq(_pick(row_token, dr)),
                p1_row.eq(m0 + dr),
                p1_weight.eq(_pick(row_weight, dr)),
                p1_tn.eq(tn),
            ]
        for c in range(C):
            rq = Requantizer(acc_bits, widest, cfg.rounding, cfg.overflow)
            m.submodules[f"requant_{c}"] = rq
            m.d.comb += [
                rq.acc.eq(drained.word_select(c, acc_bits).as_signed()),
                rq.multiplier.eq(Mux(phase == _W2, w2_mult, w1_mult)),
                rq.shift.eq(Mux(phase == _W2, w2_shift, w1_shift)),
                rq.zero_point.eq(0),
            ]
            # Saturating to the widest format first, then to the phase's, equals saturating
            # to the phase's format directly, in every overflow mode.
            per_phase = [
                saturate(m, rq.result, cfg.logit_bits, cfg.overflow),
                saturate(m, rq.result, cfg.gelu_bits, cfg.overflow),
                saturate(m, rq.result, act_bits, cfg.overflow),
            ]
            with m.If(in_drain):
                with m.Switch(phase):
                    for ph, value in enumerate(per_phase):
                        with m.Case(ph):
                            m.d.sync += p1_values[c].eq(value)

        # gate: logits into the logit buffer
        m.d.comb += [
            logit_write.addr.eq(p1_token * TE + p1_tn),
            logit_write.data.eq(Cat(*(v[: cfg.logit_bits] for v in p1_values))),
            logit_write.en.eq(p1_valid & (p1_phase == _GATE)),
        ]

        # W1: GELU ROM (cols lanes), requant to act_bits, hidden buffer
        gcfg = cfg.gelu
        m.submodules.gelu = gelu_unit = GeluRom(gcfg)
        cb = gcfg.container_bits
        m.d.comb += [
            gelu_unit.x.tvalid.eq(p1_valid & (p1_phase == _W1)),
            gelu_unit.x.tlast.eq(0),
            gelu_unit.y.tready.eq(1),  # never stalls, so its latency is fixed
        ]
        for c in range(C):
            m.d.comb += gelu_unit.x.tdata[c * cb : (c + 1) * cb].eq(p1_values[c])
        hidden_address = Signal(range(T * TH + R * TH + 1))
        m.d.comb += hidden_address.eq(p1_row * TH + p1_tn)
        g_valid = [Signal(name=f"gelu_tag_valid_{i}") for i in range(GELU_LATENCY)]
        g_addr = [
            Signal.like(hidden_address, name=f"gelu_tag_addr_{i}") for i in range(GELU_LATENCY)
        ]
        m.d.sync += [g_valid[0].eq(p1_valid & (p1_phase == _W1)), g_addr[0].eq(hidden_address)]
        for i in range(1, GELU_LATENCY):
            m.d.sync += [g_valid[i].eq(g_valid[i - 1]), g_addr[i].eq(g_addr[i - 1])]
        h_valid = Signal()
        h_addr = Signal.like(hidden_address)
        h_values = [Signal(signed(act_bits), name=f"hidden_{c}") for c in range(C)]
        m.d.sync += [h_valid.eq(g_valid[-1]), h_addr.eq(g_addr[-1])]
        for c in range(C):
            rq = Requantizer(cfg.gelu_bits, act_bits, cfg.rounding, cfg.overflow)
            m.submodules[f"hidden_requant_{c}"] = rq
            m.d.comb += [
                rq.acc.eq(gelu_unit.y.tdata[c * cb : c * cb + cfg.gelu_bits].as_signed()),
                rq.multiplier.eq(hidden_mult),
                rq.shift.eq(hidden_shift),
                rq.zero_point.eq(0),
            ]
            m.d.sync += h_values[c].eq(rq.result)
        m.d.comb += [
            hid_write.addr.eq(h_addr),
            hid_write.en.eq(h_valid),
        ]
        for c in range(C):
            m.d.comb += hid_write.data[c * 8 : (c + 1) * 8].eq(h_values[c])  # sign-extends

        # W2: y_e * gate weight added to the token's output accumulators
        p2_valid = Signal()
        p2_addr = Signal(range(T * TD + 1))
        p2_products = [Signal(signed(comb_bits), name=f"product_{c}") for c in range(C)]
        out_address = Signal(range(T * TD + 1))
        m.d.comb += out_address.eq(p1_token * TD + p1_tn)
        m.d.sync += [p2_valid.eq(p1_valid & (p1_phase == _W2)), p2_addr.eq(out_address)]
        for c in range(C):
            m.d.sync += p2_products[c].eq(
                p1_values[c][:act_bits].as_signed() * Cat(p1_weight, Const(0, 1)).as_signed()
            )
        post_busy = p1_valid | h_valid | p2_valid | Cat(*g_valid).any()

        # ---- output: round half up, saturate, stream y -------------------------------------------
        out_active = Signal()
        o_idx = Signal(range(T * TD + 1))
        o_s1_valid, o_s1_last = Signal(), Signal()
        advance = Signal()
        issue = Signal()
        m.d.comb += [
            advance.eq(~self.y.tvalid | self.y.tready),
            issue.eq(out_active & (o_idx != load_beats)),
        ]
        with m.If(advance):
            m.d.sync += [o_s1_valid.eq(issue), o_s1_last.eq(o_idx == load_beats - 1)]
            with m.If(issue):
                m.d.sync += o_idx.eq(o_idx + 1)
        lanes_out = []
        gf = cfg.gate_frac
        for c in range(C):
            value = out_read.data.word_select(c, comb_bits).as_signed()
            rounded = Signal(signed(comb_bits + 1), name=f"combined_{c}")
            m.d.comb += rounded.eq((value + (1 << (gf - 1))) >> gf)
            lanes_out.append(saturate(m, rounded, act_bits, Overflow.SAT))
        with m.If(advance):
            m.d.sync += [
                self.y.tvalid.eq(o_s1_valid),
                self.y.tlast.eq(o_s1_last),
            ]
            for c in range(C):
                m.d.sync += self.y.tdata[c * 8 : (c + 1) * 8].eq(lanes_out[c])
        y_fire = self.y.tvalid & self.y.tready
        m.d.comb += finish.eq(y_fire & self.y.tlast)

        # The accumulators' ports: cleared as tokens load, read-modify-write in W2, read out.
        m.d.comb += [
            out_read.addr.eq(Mux(out_active, o_idx, out_address)),
            out_read.en.eq(Mux(out_active, advance, 1)),
        ]
        with m.If(x_fire):
            m.d.comb += [out_write.addr.eq(l_idx), out_write.data.eq(0), out_write.en.eq(1)]
        with m.Elif(p2_valid):
            m.d.comb += [
                out_write.addr.eq(p2_addr),
                out_write.data.eq(
                    Cat(
                        *(
                            (out_read.data.word_select(c, comb_bits).as_signed() + p2_products[c])[
                                :comb_bits
                            ]
                            for c in range(C)
                        )
                    )
                ),
                out_write.en.eq(1),
            ]

        # ---- routing: top-k scan, softmax of the k logits, queue appends -----------------------
        m.submodules.softmax = smax = OnlineSoftmax(cfg.softmax)
        r_token = Signal(token_shape)
        scan_e = Signal(range(E + 1))
        scan_w = Signal(range(TE + 1))
        scan_l = Signal(range(C))
        scan_valid = Signal()
        scan_index = Signal(range(E))
        scan_lane = Signal(range(C))
        sel_value = [Signal(signed(cfg.logit_bits), name=f"sel_value_{j}") for j in range(top_k)]
        sel_index = [Signal(range(E), name=f"sel_index_{j}") for j in range(top_k)]
        sel_count = Signal(range(top_k + 1))
        in_scan = Signal()
        m.d.comb += logit_read.addr.eq(r_token * TE + scan_w)
        m.d.sync += [scan_valid.eq(in_scan), scan_index.eq(scan_e), scan_lane.eq(scan_l)]
        candidate = logit_read.data.word_select(scan_lane, cfg.logit_bits).as_signed()
        # Slots are sorted, largest first; a candidate (higher index than every slot) passes
        # only strictly smaller logits, which gives ties to the lower expert index.
        keep = [Signal(name=f"keep_{j}") for j in range(top_k)]
        for j in range(top_k):
            m.d.comb += keep[j].eq((j < sel_count) & (sel_value[j] >= candidate))
        with m.If(scan_valid):
            m.d.sync += sel_count.eq(Mux(sel_count == top_k, top_k, sel_count + 1))
            for j in range(top_k):
                moved_in = ~keep[j] if j == 0 else ~keep[j] & keep[j - 1]
                with m.If(moved_in):
                    m.d.sync += [sel_value[j].eq(candidate), sel_index[j].eq(scan_index)]
                if j > 0:
                    with m.If(~keep[j] & ~keep[j - 1]):
                        m.d.sync += [
                            sel_value[j].eq(sel_value[j - 1]),
                            sel_index[j].eq(sel_index[j - 1]),
                        ]
        feed_j = Signal(range(top_k + 1))
        take_j = Signal(range(top_k + 1))
        in_feed = Signal()
        in_collect = Signal()
        m.d.comb += [
            smax.x.tvalid.eq(in_feed),
            smax.x.tdata.eq(_pick(sel_value, feed_j)),
            smax.x.tlast.eq(feed_j == top_k - 1),
            smax.p.tready.eq(in_collect),
        ]
        feed_fire = in_feed & smax.x.tready
        p_fire = in_collect & smax.p.tvalid
        chosen = _pick(sel_index, take_j)
        chosen_len = _pick(qlen, chosen)
        m.d.comb += [
            queue_write.addr.eq(chosen * T + chosen_len),
            queue_write.data.eq(Cat(r_token[:token_bits], smax.p.tdata[: cfg.gate_bits])),
            queue_write.en.eq(p_fire),
        ]
        with m.If(p_fire):
            for e in range(E):
                with m.If(chosen == e):
                    m.d.sync += qlen[e].eq(qlen[e] + 1)

        # ---- expert fetches: each expert with a non-empty queue, in expert order, into the
        # bank the array is not using (it waits while both banks hold unfinished experts) -----
        fc_go = Signal()  # one cycle: routing is done, the queues are final
        fc_done = Signal()  # every expert to load has been fetched
        fc_expert = Signal(range(E + 1))  # next expert to consider
        fc_bank = Signal()
        bank_ready = [Signal(name=f"bank_ready_{b}") for b in (0, 1)]  # holds a fetched expert
        bank_expert = [Signal(range(E), name=f"bank_expert_{b}") for b in (0, 1)]
        computed = Signal(range(E + 1))  # experts whose W2 is done
        with m.FSM(name="prefetch"):
            with m.State("IDLE"):
                with m.If(fc_go):
                    m.d.sync += [fc_expert.eq(0), fc_bank.eq(0), fc_done.eq(0)]
                    m.next = "SCAN"
            with m.State("SCAN"):
                with m.If(fc_expert == E):
                    m.d.sync += fc_done.eq(1)
                    m.next = "IDLE"
                with m.Elif(_pick(qlen, fc_expert) == 0):
                    m.d.sync += fc_expert.eq(fc_expert + 1)
                with m.Elif(~Mux(fc_bank, bank_ready[1], bank_ready[0])):
                    m.d.comb += [
                        fetch_start.eq(1),
                        fetch_expert.eq(1),
                        fetch_bank.eq(fc_bank),
                        fetch_region.eq(
                            base_reg + lay.experts_first + fc_expert * lay.expert_stride
                        ),
                    ]
                    m.d.sync += [
                        fc_expert.eq(fc_expert + 1),
                        loaded.eq(loaded + 1),
                    ]
                    for b in (0, 1):
                        with m.If(fc_bank == b):
                            m.d.sync += bank_expert[b].eq(fc_expert)
                    m.next = "FETCHING"
            with m.State("FETCHING"):
                with m.If(fetch_done):
                    m.d.sync += fc_bank.eq(~fc_bank)
                    for b in (0, 1):
                        with m.If(fc_bank == b):
                            m.d.sync += bank_ready[b].eq(1)
                    m.next = "SCAN"
        with m.If(launch):
            # The gate always loads into bank 0.
            m.d.sync += [
                fc_done.eq(0),
                computed.eq(0),
                c_bank.eq(0),
                *(r.eq(0) for r in bank_ready),
            ]

        # ---- main sequencer ---------------------------------------------------------------------
        def start_phase(ph: int, rows: Value) -> None:
            m.d.sync += [phase.eq(ph), m0.eq(0), tn.eq(0), tile_m.eq(rows)]

        with m.FSM(name="sequencer") as sequencer:
            with m.State("IDLE"):
                with m.If(launch):
                    m.d.comb += [
                        fetch_start.eq(1),
                        fetch_expert.eq(0),
                        fetch_region.eq(base_reg + task * lay.gate_stride),
                    ]
                    m.next = "LOAD"
            with m.State("LOAD"):
                # Tokens stream in while the gate region is fetched.
                with m.If(load_done & fetch_done):
                    start_phase(_GATE, n_tokens)
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [
                    k.eq(0),
                    kw.eq(0),
                    kl.eq(0),
                    wa.eq(
                        bank_base
                        + Mux(
                            phase == _GATE,
                            lay.gate_weights + tn * (D * C),
                            Mux(phase == _W1, lay.w1 + tn * (D * C), lay.w2 + tn * (H * C)),
                        )
                    ),
                ]
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                m.d.sync += [k.eq(k + 1), kl.eq(kl + 1), wa.eq(wa + C)]
                with m.If(kl == C - 1):
                    m.d.sync += [kl.eq(0), kw.eq(kw + 1)]
                with m.If(k == k_len - 1):
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                # The last products reach the accumulators.
                m.d.sync += dr.eq(0)
                m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += dr.eq(dr + 1)
                with m.If(dr == tile_rows - 1):
                    m.d.sync += tn.eq(tn + 1)
                    m.next = "SETUP"
                    with m.If(tn == n_tiles - 1):
                        m.d.sync += [tn.eq(0), m0.eq(m0 + R)]
                        with m.If(rows_left <= R):
                            m.next = "FLUSH"
            with m.State("FLUSH"):
                with m.If(~post_busy):
                    with m.Switch(phase):
                        with m.Case(_GATE):
                            m.d.sync += [
                                r_token.eq(0),
                                scan_e.eq(0),
                                scan_w.eq(0),
                                scan_l.eq(0),
                                sel_count.eq(0),
                            ]
                            m.next = "SCAN"
                        with m.Case(_W1):
                            start_phase(_W2, tile_m)
                            m.next = "SETUP"
                        with m.Default():
                            # The expert is done: its bank may take the next fetch.
                            m.d.sync += [c_bank.eq(~c_bank), computed.eq(computed + 1)]
                            for b in (0, 1):
                                with m.If(c_bank == b):
                                    m.d.sync += bank_ready[b].eq(0)
                            m.next = "SELECT"
            with m.State("SCAN"):
                m.d.sync += [scan_e.eq(scan_e + 1), scan_l.eq(scan_l + 1)]
                with m.If(scan_l == C - 1):
                    m.d.sync += [scan_l.eq(0), scan_w.eq(scan_w + 1)]
                with m.If(scan_e == E - 1):
                    m.next = "SCAN_LAST"
            with m.State("SCAN_LAST"):
                m.d.sync += feed_j.eq(0)
                m.next = "FEED"
            with m.State("FEED"):
                with m.If(feed_fire):
                    m.d.sync += feed_j.eq(feed_j + 1)
                    with m.If(feed_j == top_k - 1):
                        m.d.sync += take_j.eq(0)
                        m.next = "COLLECT"
            with m.State("COLLECT"):
                with m.If(p_fire):
                    m.d.sync += take_j.eq(take_j + 1)
                    with m.If(take_j == top_k - 1):
                        m.d.sync += [
                            r_token.eq(r_token + 1),
                            scan_e.eq(0),
                            scan_w.eq(0),
                            scan_l.eq(0),
                            sel_count.eq(0),
                        ]
                        m.next = "SCAN"
                        with m.If(r_token == n_tokens - 1):
                            m.d.comb += fc_go.eq(1)
                            m.d.sync += c_bank.eq(0)
                            m.next = "SELECT"
            with m.State("SELECT"):
                # Run the experts in the order they were fetched, as their banks fill.
                ready_expert = Mux(c_bank, bank_expert[1], bank_expert[0])
                with m.If(Mux(c_bank, bank_ready[1], bank_ready[0])):
                    m.d.sync += expert.eq(ready_expert)
                    start_phase(_W1, _pick(qlen, ready_expert))
                    m.next = "SETUP"
                with m.Elif(fc_done & (computed == loaded)):
                    m.d.sync += o_idx.eq(0)
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                with m.If(finish):
                    m.next = "IDLE"
        # State decodes are assigned outside the states: Icarus evaluates a state's
        # combinational block only once the state register first changes, and these are
        # used before the first start.
        m.d.comb += [
            in_setup.eq(sequencer.ongoing("SETUP")),
            in_compute.eq(sequencer.ongoing("COMPUTE")),
            in_drain.eq(sequencer.ongoing("DRAIN")),
            in_scan.eq(sequencer.ongoing("SCAN")),
            in_feed.eq(sequencer.ongoing("FEED")),
            in_collect.eq(sequencer.ongoing("COLLECT")),
            out_active.eq(sequencer.ongoing("OUTPUT")),
        ]
        return m


def generate_moe(cfg: MoeConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of a ``MoeEngine`` and its register map.

    Parameters
    ----------
    cfg : MoeConfig
        Engine configuration.
    out_dir : path, optional
        If given, write ``moe_engine.v``, ``register_map.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "register_map": dict, "top": "moe_engine", "files": list[str]}``.
        The module's clock and reset ports are ``clk`` and ``rst``.
    """
    return emit(MoeEngine(cfg), TOP_NAME, cfg, out_dir, {"register_map": register_map(cfg)})
