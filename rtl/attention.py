"""``AttentionEngine``: int8 attention with query parallelism ``P`` (Edge-MoE reordering).

Per head, the ``S`` query rows are taken in groups of ``P``. A group's query rows are held on
chip; the whole K matrix then streams past once and the whole V matrix once, so K and V are read
``ceil(S / P)`` times per head and the engine moves about one stream beat per cycle whatever
``P`` is, while its cycle count falls as ``1 / P``.

Dataflow of one group (``B = head_dim / lanes`` beats per row, one beat per cycle)::

    q --load--> P query rows (registers, rotated one beat per K beat)
    k --> s1: P x L MACs into P dot products
          s2: (row end) P requantizers -> logits, visibility from the mask
          s3: score buffer[j] <- P logits; P running maxima; d = -|s - max| --> P ExpNeg
          ExpNeg out: P running sums (rescaled when a new maximum arrived)
    P reciprocals of the sums
    score buffer --read--> d = s - max --> P ExpNeg --> x recip, round --> P weights (row j)
    v --> s1v: P x L MACs of weight x value into P x head_dim accumulators (rotated per beat)
    accumulators --(shift out, round, saturate)--> o, one beat per cycle

Overlap: the next group's query rows load while the current group is in phase V, and the output
drains while the next group is in phase K (only phase V needs the accumulators). The ``exp``
units serve both phases; in phase V their pipeline stalls (``en`` low) while a weight row waits
for its ``B`` value beats, which keeps them full without a FIFO.

All numerics follow :func:`tessera.models.attention.attention` bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.attention import AttentionConfig
from tessera.models.rounding import Overflow
from tessera.rtl.arith import Requantizer, saturate
from tessera.rtl.axi import (
    AxiLiteBridge,
    AxiLiteSignature,
    AxiStreamSignature,
    Register,
    csr_map,
)
from tessera.rtl.emit import emit
from tessera.rtl.exp import ExpNeg, Reciprocal

__all__ = ["REGISTERS", "AttentionEngine", "generate_attention", "register_map"]

CSR_ADDR_WIDTH = 6
VERSION = 1
TOP_NAME = "attention_engine"

# Online-softmax step of one score, as it travels down the exp pipeline.
_OP_NONE, _OP_FIRST, _OP_LARGER, _OP_OTHER = 0, 1, 2, 3


REGISTERS = (
    Register(
        "CTRL",
        0x00,
        "rw",
        "write bit 0 = 1: start (ignored while busy; SEQ_LEN of 0 or above max_seq, MASK above 2 "
        "or a lambda mask with WINDOW 0 sets ERROR instead). read: bit 0 BUSY, bit 1 DONE, "
        "bit 2 ERROR",
    ),
    Register("SEQ_LEN", 0x04, "rw", "sequence length S, 1 .. max_seq; ignored while busy"),
    Register("MULTIPLIER", 0x08, "rw", "score requantization multiplier, unsigned 31 bits"),
    Register("SHIFT", 0x0C, "rw", "score requantization right shift, 0..63"),
    Register("MASK", 0x10, "rw", "mask kind: 0 none, 1 causal (j <= i), 2 lambda (sink + window)"),
    Register(
        "SINK", 0x14, "rw", "lambda mask: leading keys every query sees (read back min(., max_seq))"
    ),
    Register(
        "WINDOW",
        0x18,
        "rw",
        "lambda mask: sliding window length, >= 1 (read back min(., max_seq))",
    ),
    Register("CYCLES", 0x1C, "ro", "clock cycles the last run was busy (start to last o beat)"),
    Register("INFO", 0x20, "ro", "bits 7:0 parallelism, 15:8 lanes, 23:16 heads, 31:24 version"),
    Register("SHAPE", 0x24, "ro", "bits 15:0 head_dim, 31:16 max_seq"),
)
_REG = {r.name: r.offset >> 2 for r in REGISTERS}


def register_map(cfg: AttentionConfig) -> dict[str, Any]:
    """The engine's host interface as a JSON-able dict: registers and stream layouts."""
    beat_bits = cfg.lanes * 8
    row = f"{cfg.beats_per_row} beats of {cfg.lanes} int8 lanes (lane 0 = lowest element)"
    return {
        "top": TOP_NAME,
        "version": VERSION,
        "config": cfg.to_dict(),
        "csr": csr_map(REGISTERS, CSR_ADDR_WIDTH),
        "streams": {
            "q": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": beat_bits,
                "layout": f"per head, per group of {cfg.parallelism} query rows: the group's "
                f"valid query rows, each {row}; i.e. all query rows in (head, row) order",
            },
            "k": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": beat_bits,
                "layout": f"per head, per query group: all S key rows in order, each {row}",
            },
            "v": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": beat_bits,
                "layout": f"per head, per query group: all S value rows in order, each {row}",
            },
            "o": {
                "protocol": "AXI4-Stream",
                "direction": "out",
                "data_width": beat_bits,
                "layout": f"output rows in (head, row) order, each {row}; tlast on the last "
                "beat of the run",
            },
        },
    }


def _delay(m: Module, value: Value, stages: int, en: Value, name: str) -> Value:
    """``value`` through ``stages`` registers that advance while ``en`` is high."""
    current = value
    for i in range(stages):
        reg = Signal(len(value), name=f"{name}_{i}")
        with m.If(en):
            m.d.sync += reg.eq(current)
        current = reg
    return current


class AttentionEngine(wiring.Component):
    """int8 attention engine: ``P`` query rows per pass over K and V, AXI4-Lite control.

    Parameters
    ----------
    config : AttentionConfig
        Head size, heads, longest sequence, parallelism ``P``, lanes ``L`` and number formats.

    Attributes
    ----------
    csr : In(AxiLiteSignature(6))
        Control and status registers (see :data:`REGISTERS`).
    q : In(AxiStreamSignature(lanes * 8))
        Query beats, ``lanes`` int8 lanes (``tdata``, ``tvalid`` in; ``tready`` out).
    k : In(AxiStreamSignature(lanes * 8))
        Key beats, ``lanes`` int8 lanes.
    v : In(AxiStreamSignature(lanes * 8))
        Value beats, ``lanes`` int8 lanes.
    o : Out(AxiStreamSignature(lanes * 8, last=True))
        Output beats, ``lanes`` int8 lanes (``tdata``, ``tlast``, ``tvalid`` out; ``tready``
        in); ``tlast`` marks the last beat of a run.

    Notes
    -----
    The stream layouts are those of :func:`tessera.models.attention.attention_streams`. Phases K
    and V take one beat per cycle; the cycle count of a run without stalls is
    :func:`tessera.models.attention.attention_traffic`'s ``cycles``. Storage: ``P x head_dim``
    int8 query registers, a ``max_seq x P`` score buffer (``score_bits + 1`` bits per entry, the
    extra bit is the mask) and ``P x head_dim`` accumulators of ``acc_bits``.
    """

    def __init__(self, config: AttentionConfig) -> None:
        self.config = config
        beat_bits = config.lanes * 8
        super().__init__(
            {
                "csr": In(AxiLiteSignature(CSR_ADDR_WIDTH)),
                "q": In(AxiStreamSignature(beat_bits)),
                "k": In(AxiStreamSignature(beat_bits)),
                "v": In(AxiStreamSignature(beat_bits)),
                "o": Out(AxiStreamSignature(beat_bits, last=True)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        sm = cfg.softmax
        P, L, B, H = cfg.parallelism, cfg.lanes, cfg.beats_per_row, cfg.heads
        max_seq = cfg.max_seq
        seq_shape = range(max_seq + 1)
        index_shape = range(max_seq + P + 1)  # query index of a group row (may pass S)
        word_bits = L * 8
        one = 1 << sm.exp_frac

        # ---- control and status registers -------------------------------------------------
        m.submodules.bridge = bridge = AxiLiteBridge(CSR_ADDR_WIDTH)
        wiring.connect(m, wiring.flipped(self.csr), bridge.csr)
        bus = bridge.bus
        seq_len_reg = Signal(32)
        multiplier = Signal(31)
        shift = Signal(6)
        mask_reg = Signal(32)
        sink = Signal(seq_shape)
        window = Signal(seq_shape)
        busy, done, error = Signal(), Signal(), Signal()
        cycles = Signal(32)
        launch = Signal()  # one cycle: a valid start was written

        seq = Signal(seq_shape)  # S, meaningful while busy
        mask_kind = Signal(2)
        m.d.comb += [seq.eq(seq_len_reg), mask_kind.eq(mask_reg)]
        params_ok = (
            (seq_len_reg != 0)
            & (seq_len_reg <= max_seq)
            & (mask_reg <= 2)
            & ~((mask_reg == 2) & (window == 0))
        )

        def clamp(value: Value) -> Value:
            # Sink and window beyond max_seq act exactly like max_seq.
            return Mux(value > max_seq, max_seq, value)

        with m.If(bus.w_en & ~busy):
            with m.Switch(bus.w_addr):
                with m.Case(_REG["CTRL"]):
                    with m.If(bus.w_data[0]):
                        m.d.sync += done.eq(0)
                        with m.If(params_ok):
                            m.d.comb += launch.eq(1)
                            m.d.sync += [busy.eq(1), error.eq(0), cycles.eq(0)]
                        with m.Else():
                            m.d.sync += error.eq(1)
                with m.Case(_REG["SEQ_LEN"]):
                    m.d.sync += seq_len_reg.eq(bus.w_data)
                with m.Case(_REG["MULTIPLIER"]):
                    m.d.sync += multiplier.eq(bus.w_data)
                with m.Case(_REG["SHIFT"]):
                    m.d.sync += shift.eq(bus.w_data)
                with m.Case(_REG["MASK"]):
                    m.d.sync += mask_reg.eq(bus.w_data)
                with m.Case(_REG["SINK"]):
                    m.d.sync += sink.eq(clamp(bus.w_data))
                with m.Case(_REG["WINDOW"]):
                    m.d.sync += window.eq(clamp(bus.w_data))
        read_values = {
            "CTRL": busy | (done << 1) | (error << 2),
            "SEQ_LEN": seq_len_reg,
            "MULTIPLIER": multiplier,
            "SHIFT": shift,
            "MASK": mask_reg,
            "SINK": sink,
            "WINDOW": window,
            "CYCLES": cycles,
            "INFO": P | (L << 8) | (H << 16) | (VERSION << 24),
            "SHAPE": cfg.head_dim | (max_seq << 16),
        }
        with m.Switch(bus.r_addr):
            for name, value in read_values.items():
                with m.Case(_REG[name]):
                    m.d.comb += bus.r_data.eq(value)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- query loader: fills the query registers whenever they are free ----------------
        q_full = Signal()  # the registers hold the next group to run phase K on
        lq_active = Signal()  # query groups remain to be loaded in this run
        lq_base = Signal(index_shape)  # first query row of the group being loaded
        lq_head = Signal(range(H))
        lq_row = Signal(range(P))
        lq_beat = Signal(range(B))
        lq_last_group = lq_base + P >= seq
        lq_rows = Mux(lq_last_group, seq - lq_base, P)
        q_take = lq_active & ~q_full
        q_fire = Signal()
        m.d.comb += [self.q.tready.eq(q_take), q_fire.eq(q_take & self.q.tvalid)]
        with m.If(q_fire):
            m.d.sync += lq_beat.eq(lq_beat + 1)
            with m.If(lq_beat == B - 1):
                m.d.sync += [lq_beat.eq(0), lq_row.eq(lq_row + 1)]
                with m.If(lq_row == lq_rows - 1):
                    m.d.sync += [lq_row.eq(0), q_full.eq(1), lq_base.eq(lq_base + P)]
                    with m.If(lq_last_group):
                        m.d.sync += [lq_base.eq(0), lq_head.eq(lq_head + 1)]
                        with m.If(lq_head == H - 1):
                            m.d.sync += [lq_head.eq(0), lq_active.eq(0)]
        with m.If(launch):
            m.d.sync += [
                lq_active.eq(1),
                lq_base.eq(0),
                lq_head.eq(0),
                lq_row.eq(0),
                lq_beat.eq(0),
                q_full.eq(0),
            ]

        # Query row p is B words; phase K rotates every row by one word per key beat so that
        # word 0 always meets the current key beat (no B-way multiplexer), and loading shifts a
        # row in from the top, which leaves it aligned after B beats.
        query = [[Signal(word_bits, name=f"query_{p}_{b}") for b in range(B)] for p in range(P)]

        # ---- group sequencing (phases K and V) ----------------------------------------------
        base = Signal(index_shape)  # first query row of the group in phases K / V
        head = Signal(range(H))
        last_group = base + P >= seq
        group_rows = Mux(last_group, seq - base, P)
        enter_k = Signal()  # a group starts phase K next cycle

        # ---- phase K ------------------------------------------------------------------------
        k_beat = Signal(range(B))
        k_row = Signal(range(max_seq))
        k_take = Signal()
        k_fire = Signal()
        k_row_end = k_beat == B - 1
        k_group_end = k_row_end & (k_row == seq - 1)
        m.d.comb += [self.k.tready.eq(k_take), k_fire.eq(k_take & self.k.tvalid)]
        with m.If(k_fire):
            m.d.sync += k_beat.eq(k_beat + 1)
            with m.If(k_row_end):
                m.d.sync += [k_beat.eq(0), k_row.eq(k_row + 1)]
                with m.If(k_group_end):
                    m.d.sync += k_row.eq(0)

        # s1: the key beat meets word 0 of every query row: P x L MACs.
        s1_valid, s1_first, s1_row_end, s1_group_end = Signal(), Signal(), Signal(), Signal()
        s1_key = Signal(word_bits)
        s1_j = Signal.like(k_row)
        m.d.sync += s1_valid.eq(k_fire)
        with m.If(k_fire):
            m.d.sync += [
                s1_key.eq(self.k.tdata),
                s1_first.eq(k_beat == 0),
                s1_row_end.eq(k_row_end),
                s1_group_end.eq(k_group_end),
                s1_j.eq(k_row),
            ]
        dots = [Signal(signed(cfg.dot_bits), name=f"dot_{p}") for p in range(P)]
        for p in range(P):
            partial = sum(
                query[p][0].word_select(lane, 8).as_signed()
                * s1_key.word_select(lane, 8).as_signed()
                for lane in range(L)
            )
            with m.If(s1_valid):
                m.d.sync += dots[p].eq(Mux(s1_first, 0, dots[p]) + partial)
        with m.If(s1_valid & s1_group_end):
            m.d.sync += q_full.eq(0)  # the last key beat has used the queries

        for p in range(P):
            load = q_fire & (lq_row == p)
            for b in range(B):
                with m.If(s1_valid):
                    m.d.sync += query[p][b].eq(query[p][(b + 1) % B])
                with m.Elif(load):
                    m.d.sync += query[p][b].eq(self.q.tdata if b == B - 1 else query[p][b + 1])

        # s2: a key row is complete: requantize the P dot products, apply the mask.
        s2_valid, s2_group_end = Signal(), Signal()
        s2_j = Signal.like(k_row)
        m.d.sync += [
            s2_valid.eq(s1_valid & s1_row_end),
            s2_group_end.eq(s1_valid & s1_group_end),
            s2_j.eq(s1_j),
        ]
        s3_valid, s3_group_end = Signal(), Signal()
        s3_j = Signal.like(k_row)
        s3_score = [Signal(signed(cfg.score_bits), name=f"s3_score_{p}") for p in range(P)]
        s3_visible = Signal(P)
        m.d.sync += [s3_valid.eq(s2_valid), s3_group_end.eq(s2_group_end), s3_j.eq(s2_j)]
        for p in range(P):
            rq = Requantizer(cfg.dot_bits, cfg.score_bits, cfg.rounding, cfg.overflow)
            m.submodules[f"requant_{p}"] = rq
            m.d.comb += [
                rq.acc.eq(dots[p]),
                rq.multiplier.eq(multiplier),
                rq.shift.eq(shift),
                rq.zero_point.eq(0),
            ]
            i = Signal(index_shape, name=f"query_index_{p}")
            m.d.comb += i.eq(base + p)
            causal = s2_j <= i
            windowed = causal & ((s2_j < sink) | (i - s2_j < window))
            kind_visible = Mux(mask_kind == 0, 1, Mux(mask_kind == 1, causal, windowed))
            # Rows past S (a short last group) see every key: their sums stay >= exp(0).
            m.d.sync += [
                s3_score[p].eq(rq.result),
                s3_visible[p].eq((i >= seq) | kind_visible),
            ]

        # ---- score buffer: P logits and their mask bits per key --------------------------------
        entry_bits = cfg.score_bits + 1
        m.submodules.score_buffer = score_buffer = Memory(
            shape=unsigned(P * entry_bits), depth=max_seq, init=[]
        )
        buffer_write = score_buffer.write_port()
        buffer_read = score_buffer.read_port(domain="sync")
        m.d.comb += [
            buffer_write.addr.eq(s3_j),
            buffer_write.en.eq(s3_valid),
            buffer_write.data.eq(Cat(*(Cat(s3_score[p], s3_visible[p]) for p in range(P)))),
        ]

        # ---- exp units, shared by the online max / sum (phase K) and the weights (phase V) ---
        exp_units = [ExpNeg(sm) for _ in range(P)]
        for p, unit in enumerate(exp_units):
            m.submodules[f"exp_{p}"] = unit
        latency = exp_units[0].latency
        exp_en = Signal()  # the weight pipeline may advance

        # s3: one step of the online max / sum per query row (golden ``online_max_sum``).
        started = Signal(P)
        maximum = [Signal(signed(cfg.score_bits), name=f"max_{p}") for p in range(P)]
        total = [Signal(sm.sum_bits, name=f"sum_{p}") for p in range(P)]
        ops = Signal(2 * P)
        d_k = [Signal(signed(cfg.score_bits + 1), name=f"d_k_{p}") for p in range(P)]
        for p in range(P):
            diff = Signal(signed(cfg.score_bits + 1), name=f"diff_{p}")
            m.d.comb += diff.eq(s3_score[p] - maximum[p])
            visible, have = s3_visible[p], started[p]
            op = ops.word_select(p, 2)
            with m.If(visible & ~have):
                m.d.comb += op.eq(_OP_FIRST)
            with m.Elif(visible & (diff > 0)):
                m.d.comb += [op.eq(_OP_LARGER), d_k[p].eq(-diff)]  # exp(old - new)
            with m.Elif(visible):
                m.d.comb += [op.eq(_OP_OTHER), d_k[p].eq(diff)]  # exp(x - max)
            with m.If(s3_valid & visible):
                m.d.sync += started[p].eq(1)
                with m.If(~have | (diff > 0)):
                    m.d.sync += maximum[p].eq(s3_score[p])
        with m.If(enter_k):
            m.d.sync += started.eq(0)

        # The sums take the exp results in key order; the maximum ran ahead, so no stall.
        k_tag = _delay(m, Cat(ops, s3_valid, s3_group_end), latency, exp_en, "k_tag")
        k_out_ops, k_out_valid, k_out_group_end = k_tag[: 2 * P], k_tag[2 * P], k_tag[2 * P + 1]
        for p, unit in enumerate(exp_units):
            op = k_out_ops.word_select(p, 2)
            rescaled = Signal(sm.sum_bits + sm.exp_frac + 1, name=f"rescaled_{p}")
            m.d.comb += rescaled.eq(total[p] * unit.e + (1 << (sm.exp_frac - 1)))
            with m.If(k_out_valid):
                with m.Switch(op):
                    with m.Case(_OP_FIRST):
                        m.d.sync += total[p].eq(one)
                    with m.Case(_OP_LARGER):
                        m.d.sync += total[p].eq((rescaled >> sm.exp_frac) + one)
                    with m.Case(_OP_OTHER):
                        m.d.sync += total[p].eq(total[p] + unit.e)

        # ---- reciprocals of the P sums --------------------------------------------------------
        recip_units = [Reciprocal(sm) for _ in range(P)]
        recip_start = Signal()
        for p, unit in enumerate(recip_units):
            m.submodules[f"reciprocal_{p}"] = unit
            m.d.comb += [unit.start.eq(recip_start), unit.total.eq(total[p])]
        recips_done = Cat(*(unit.done for unit in recip_units)).all()

        # ---- phase V: weight pipeline (score buffer -> exp -> x recip) ----------------------
        read_j = Signal(seq_shape)
        issue = Signal()
        r1_valid = Signal()
        with m.If(exp_en):
            m.d.sync += r1_valid.eq(issue)
            with m.If(issue):
                m.d.sync += read_j.eq(read_j + 1)
        m.d.comb += [buffer_read.addr.eq(read_j), buffer_read.en.eq(exp_en)]
        r1_visible = Signal(P)
        d_v = [Signal(signed(cfg.score_bits + 1), name=f"d_v_{p}") for p in range(P)]
        for p in range(P):
            entry = buffer_read.data.word_select(p, entry_bits)
            m.d.comb += r1_visible[p].eq(entry[-1])
            # A masked logit may exceed the maximum: feed 0 and give it weight 0 below.
            with m.If(entry[-1]):
                m.d.comb += d_v[p].eq(entry[:-1].as_signed() - maximum[p])
        for p, unit in enumerate(exp_units):
            m.d.comb += [
                unit.en.eq(exp_en),
                unit.d.eq(Mux(r1_valid, d_v[p], d_k[p])),
                unit.valid_in.eq(r1_valid | s3_valid),
            ]
        v_tag = _delay(m, Cat(r1_visible, r1_valid), latency, exp_en, "v_tag")
        v_out_visible, v_out_valid = v_tag[:P], v_tag[P]

        # Weight register: row j's P weights, held while its B value beats arrive.
        w_valid = Signal()
        weights = [Signal(cfg.weight_bits, name=f"weight_{p}") for p in range(P)]
        max_weight = (1 << cfg.weight_bits) - 1
        with m.If(exp_en):
            m.d.sync += w_valid.eq(v_out_valid)
        for p, unit in enumerate(exp_units):
            product = Signal(sm.exp_frac + 1 + sm.recip_bits + 1, name=f"prob_{p}")
            m.d.comb += product.eq(unit.e * recip_units[p].recip + (1 << (sm.prob_shift - 1)))
            rounded = product >> sm.prob_shift
            weight = Mux(rounded > max_weight, max_weight, rounded)
            with m.If(exp_en):
                m.d.sync += weights[p].eq(Mux(v_out_visible[p], weight, 0))

        v_beat = Signal(range(B))
        v_row = Signal(range(max_seq))
        v_take = Signal()
        v_fire = Signal()
        draining = Signal()
        v_row_end = v_beat == B - 1
        v_group_end = v_row_end & (v_row == seq - 1)
        m.d.comb += [
            self.v.tready.eq(v_take),
            v_fire.eq(v_take & self.v.tvalid),
            exp_en.eq(~w_valid | (v_fire & v_row_end)),
        ]
        with m.If(v_fire):
            m.d.sync += v_beat.eq(v_beat + 1)
            with m.If(v_row_end):
                m.d.sync += [v_beat.eq(0), v_row.eq(v_row + 1)]
                with m.If(v_group_end):
                    m.d.sync += v_row.eq(0)

        # s1v: the value beat meets the P weights: P x L MACs into word 0 of each row's
        # accumulators, which rotate one word per beat like the query rows.
        s1v_valid, s1v_first, s1v_group_end, s1v_final = Signal(), Signal(), Signal(), Signal()
        s1v_value = Signal(word_bits)
        s1v_weights = [Signal(cfg.weight_bits, name=f"s1v_weight_{p}") for p in range(P)]
        s1v_rows = Signal(range(P + 1))
        m.d.sync += s1v_valid.eq(v_fire)
        with m.If(v_fire):
            m.d.sync += [
                s1v_value.eq(self.v.tdata),
                s1v_first.eq(v_row == 0),
                s1v_group_end.eq(v_group_end),
                s1v_final.eq(last_group & (head == H - 1)),
                s1v_rows.eq(group_rows),
                *(s1v_weights[p].eq(weights[p]) for p in range(P)),
            ]

        acc_bits = cfg.acc_bits
        acc = [[Signal(L * acc_bits, name=f"acc_{p}_{b}") for b in range(B)] for p in range(P)]
        o_fire = Signal()
        for p in range(P):
            updated = Cat(
                *(
                    (
                        Mux(s1v_first, 0, acc[p][0].word_select(lane, acc_bits).as_signed())
                        + s1v_weights[p] * s1v_value.word_select(lane, 8).as_signed()
                    )[:acc_bits]
                    for lane in range(L)
                )
            )
            for b in range(B):
                with m.If(s1v_valid):
                    m.d.sync += acc[p][b].eq(updated if b == B - 1 else acc[p][b + 1])
                # Draining shifts the whole P x B chain one word towards acc[0][0].
                with m.Elif(o_fire):
                    if b < B - 1:
                        m.d.sync += acc[p][b].eq(acc[p][b + 1])
                    elif p < P - 1:
                        m.d.sync += acc[p][b].eq(acc[p + 1][0])

        # ---- output drain: round half up, saturate to int8 ---------------------------------------
        drain_beat = Signal(range(B))
        drain_row = Signal(range(P))
        drain_rows = Signal(range(P + 1))
        drain_final = Signal()
        drain_row_end = drain_beat == B - 1
        drain_end = drain_row_end & (drain_row == drain_rows - 1)
        lanes_out = []
        for lane in range(L):
            value = acc[0][0].word_select(lane, acc_bits).as_signed()
            rounded = Signal(signed(acc_bits + 1), name=f"out_rounded_{lane}")
            m.d.comb += rounded.eq((value + (1 << (cfg.weight_frac - 1))) >> cfg.weight_frac)
            lanes_out.append(saturate(m, rounded, 8, Overflow.SAT))
        m.d.comb += [
            self.o.tdata.eq(Cat(*lanes_out)),
            self.o.tvalid.eq(draining),
            self.o.tlast.eq(drain_final & drain_end),
            o_fire.eq(draining & self.o.tready),
        ]
        with m.If(o_fire):
            m.d.sync += drain_beat.eq(drain_beat + 1)
            with m.If(drain_row_end):
                m.d.sync += [drain_beat.eq(0), drain_row.eq(drain_row + 1)]
                with m.If(drain_end):
                    m.d.sync += [drain_row.eq(0), draining.eq(0)]
                    with m.If(drain_final):
                        m.d.sync += [busy.eq(0), done.eq(1)]
        with m.If(s1v_valid & s1v_group_end):
            m.d.sync += [draining.eq(1), drain_rows.eq(s1v_rows), drain_final.eq(s1v_final)]

        # ---- phase sequencer ------------------------------------------------------------------
        # Outputs are driven outside the states (plain assignments), so that simulators see
        # them defined from time 0 even before the state register first changes.
        with m.FSM(name="phase") as fsm:
            with m.State("IDLE"):
                with m.If(launch):
                    m.d.sync += [base.eq(0), head.eq(0)]
                    m.next = "K"
            with m.State("K"):
                with m.If(k_fire & k_group_end):
                    m.next = "K_FLUSH"
            with m.State("K_FLUSH"):
                # Wait for the last score's exp to reach the running sums.
                with m.If(k_out_valid & k_out_group_end):
                    m.next = "RECIPROCAL"
            with m.State("RECIPROCAL"):
                m.next = "RECIPROCAL_WAIT"
            with m.State("RECIPROCAL_WAIT"):
                with m.If(recips_done):
                    m.d.sync += read_j.eq(0)
                    m.next = "V"
            with m.State("V"):
                with m.If(v_fire & v_group_end):
                    m.d.sync += base.eq(base + P)
                    m.next = "K"
                    with m.If(last_group):
                        m.d.sync += [base.eq(0), head.eq(head + 1)]
                        with m.If(head == H - 1):
                            m.d.sync += head.eq(0)
                            m.next = "IDLE"
        in_v = fsm.ongoing("V")
        v_group_done = in_v & v_fire & v_group_end
        m.d.comb += [
            k_take.eq(fsm.ongoing("K") & q_full),
            recip_start.eq(fsm.ongoing("RECIPROCAL")),
            issue.eq(in_v & (read_j != seq)),
            v_take.eq(in_v & w_valid & ~draining),
            enter_k.eq(launch | (v_group_done & ~(last_group & (head == H - 1)))),
        ]
        return m


def generate_attention(cfg: AttentionConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of an ``AttentionEngine`` and its register map.

    Parameters
    ----------
    cfg : AttentionConfig
        Engine configuration.
    out_dir : path, optional
        If given, write ``attention_engine.v``, ``register_map.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "register_map": dict, "top": str, "files": list[str]}``.
    """
    return emit(AttentionEngine(cfg), TOP_NAME, cfg, out_dir, {"register_map": register_map(cfg)})
