"""``OnlineSoftmax``: a streaming two-pass softmax unit, bit-exact with
:func:`tessera.models.softmax.softmax`.

Dataflow of one row (one logit per input beat, ``tlast`` ends the row)::

    x --> pass 1: store in the row buffer; running max; ExpNeg --> running sum
                                                   (a new maximum rescales the sum)
                   row sum --> Reciprocal (bit-serial divider) --> 1/sum
          pass 2: read the row back --> x - max --> ExpNeg --> * 1/sum, round --> p

The row buffer has two banks (ping-pong): while one row is read back and emitted, the next row is
written into the other bank, so both passes run at one element per cycle and overlap across rows.
Per-row values (length, maximum, sum, reciprocal) live in per-bank registers; each bank's row
moves through *filling -> closed -> summed -> ready -> taken* in strict row order. Taking a row
copies its values into pass 2's registers, so the bank is refilled at once, its writes following
behind the read pointer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.softmax import SoftmaxConfig
from tessera.rtl.axi import AxiStreamSignature
from tessera.rtl.emit import emit
from tessera.rtl.exp import EXP_LATENCY, ExpNeg, Reciprocal

__all__ = [
    "TOP_NAME",
    "OnlineSoftmax",
    "generate_softmax",
    "row_cycles",
    "stream_layout",
]

TOP_NAME = "online_softmax"


def _fill(cfg: SoftmaxConfig) -> int:
    # From a row's last input beat to its first buffer read: ExpNeg, sum register, divider,
    # ready register.
    return EXP_LATENCY + 1 + cfg.recip_cycles + 1


def _latency(cfg: SoftmaxConfig) -> int:
    # ... then the buffer read, ExpNeg again and the output register.
    return _fill(cfg) + 1 + EXP_LATENCY + 1


def row_cycles(cfg: SoftmaxConfig, length: int) -> float:
    """Average cycles per row of ``length`` elements when rows arrive back to back and ``p`` is
    never stalled: ``max(L, (L + recip_bits + 7) / 2, recip_bits + 2)``.

    Long rows stream at one element per cycle. A bank is refilled only once pass 2 has begun
    reading it, which costs the shorter rows ``recip_bits + 7`` cycles per pair of rows, and the
    divider finishes one row per ``recip_bits + 2`` cycles.
    """
    if not 1 <= length <= cfg.max_len:
        raise ValueError(f"row length must be in [1, {cfg.max_len}] (max_len), got {length}")
    return max(float(length), (length + _fill(cfg)) / 2, float(cfg.recip_bits + 2))


def stream_layout(cfg: SoftmaxConfig) -> dict[str, Any]:
    """The unit's stream interface as a JSON-able dict (for hosts and testbenches)."""
    return {
        "top": TOP_NAME,
        "config": cfg.to_dict(),
        "latency": _latency(cfg),
        "row_cycles": f"max(L, (L + {_fill(cfg)}) / 2, {cfg.recip_bits + 2}) per row of L "
        "elements, back to back without stalls",
        "buffer_rows": 2,
        "streams": {
            "x": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": cfg.in_container_bits,
                "layout": f"one logit per beat: signed {cfg.in_bits} bits with {cfg.in_frac} "
                "fraction bits, sign-extended to the container (bits above in_bits are "
                f"ignored); tlast on the last element of a row; rows of 1..{cfg.max_len} beats",
            },
            "p": {
                "protocol": "AXI4-Stream",
                "direction": "out",
                "data_width": cfg.out_container_bits,
                "layout": f"one probability per beat: unsigned {cfg.out_bits} bits with "
                f"{cfg.out_frac} fraction bits, zero-extended to the container; rows in input "
                "order, tlast on the row's last element",
            },
        },
        "overflow": f"a row longer than {cfg.max_len} beats is cut to its first {cfg.max_len} "
        "elements (normalised and emitted as a full row); the rest up to its tlast is accepted "
        "and dropped, and the sticky overflow output is set until reset",
    }


class OnlineSoftmax(wiring.Component):
    """Softmax over rows streamed one logit per beat, with online max / sum and ping-pong buffer.

    Pass 1 writes each row into a buffer bank and keeps the running maximum and the running sum
    of ``exp(x - max)`` exactly as :func:`tessera.models.softmax.online_max_sum` (one
    :class:`~tessera.rtl.exp.ExpNeg` per element: of ``x - max`` normally, of ``max - x`` when
    ``x`` is a new maximum, which then rescales the sum). The row's sum goes to a
    :class:`~tessera.rtl.exp.Reciprocal`; pass 2 reads the row back and emits
    :func:`tessera.models.softmax.probabilities`.

    Parameters
    ----------
    config : SoftmaxConfig
        Number formats, exponential table and longest row (``max_len``).

    Attributes
    ----------
    x : In(AxiStreamSignature(in_container_bits, last=True))
        Logits: ``x__tdata`` (in, ``in_bits`` rounded up to bytes; signed ``in_bits`` in the low
        bits, upper bits ignored), ``x__tlast`` (in, 1: last element of the row),
        ``x__tvalid`` (in, 1), ``x__tready`` (out, 1).
    p : Out(AxiStreamSignature(out_container_bits, last=True))
        Probabilities: ``p__tdata`` (out, ``out_bits`` rounded up to bytes, zero-extended),
        ``p__tlast`` (out, 1: last element of the row), ``p__tvalid`` (out, 1),
        ``p__tready`` (in, 1).
    overflow : Out(1)
        Sticky: a row had more than ``max_len`` elements. It was cut to its first ``max_len``
        (emitted as a complete row with ``tlast``) and its remaining beats were dropped.

    Notes
    -----
    Timing (``tready`` held high, no idle input cycles): one element per cycle in each pass;
    :attr:`latency` cycles from a row's last input beat to its first probability, so a lone row
    of ``L`` takes ``2 L + latency - 1`` cycles from first logit to last probability. A bank is
    refilled as soon as pass 2 has begun reading it (writes follow behind the read pointer), so
    back-to-back rows cost :func:`row_cycles` each: exactly ``L`` once ``L >= recip_bits + 7``.
    ``p.tvalid``, ``p.tdata`` and ``p.tlast`` come from registers; ``x.tready`` depends only on
    registers.
    """

    def __init__(self, config: SoftmaxConfig) -> None:
        self.config = config
        super().__init__(
            {
                "x": In(AxiStreamSignature(config.in_container_bits, last=True)),
                "p": Out(AxiStreamSignature(config.out_container_bits, last=True)),
                "overflow": Out(1),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from a row's last accepted input beat to its first probability offered on ``p``
        when the unit is otherwise idle."""
        return _latency(self.config)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        n, ef = cfg.in_bits, cfg.exp_frac
        one = 1 << ef

        # ---- row buffer (two banks) and per-bank row registers --------------------------------
        m.submodules.buffer = buffer = Memory(shape=unsigned(n), depth=2 * cfg.max_len, init=[])
        write = buffer.write_port()
        read = buffer.read_port(domain="sync")

        def bank_address(bank: Any, index: Any) -> Any:
            return Mux(bank, cfg.max_len, 0) + index

        # Bank life cycle flags, all cleared when pass 2 takes the bank's row.
        closed = [Signal(name=f"closed{b}") for b in (0, 1)]  # the row's last beat is stored
        summed = [Signal(name=f"summed{b}") for b in (0, 1)]  # its sum of exponentials is known
        ready = [Signal(name=f"ready{b}") for b in (0, 1)]  # its reciprocal is known
        row_len = [Signal(range(cfg.max_len + 1), name=f"row_len{b}") for b in (0, 1)]
        row_max = [Signal(signed(n), name=f"row_max{b}") for b in (0, 1)]
        row_total = [Signal(cfg.sum_bits, name=f"row_total{b}") for b in (0, 1)]
        row_recip = [Signal(cfg.recip_bits, name=f"row_recip{b}") for b in (0, 1)]

        # Pass 2 read state (pass 1 refills a bank behind its read pointer).
        rb = Signal()  # bank read next
        reading = Signal()  # a row of bank rb has been taken and is partly read
        rindex = Signal(range(cfg.max_len))  # elements of that row read so far

        # ---- pass 1: store, running maximum, one exponential per element ----------------------
        wb = Signal()  # bank being filled
        windex = Signal(range(cfg.max_len))
        run_max = Signal(signed(n))
        discarding = Signal()  # dropping the tail of an over-long row

        x_val = self.x.tdata[:n].as_signed()
        bank_closed = Mux(wb, closed[1], closed[0])
        # The bank being read out is refilled behind the read pointer, never ahead of it.
        behind_reader = Signal()
        m.d.comb += [
            behind_reader.eq(~reading | (rb != wb) | (windex < rindex)),
            self.x.tready.eq(discarding | (~bank_closed & behind_reader)),
        ]
        take = Signal()
        store = Signal()
        m.d.comb += [
            take.eq(self.x.tvalid & self.x.tready),
            store.eq(take & ~discarding),
        ]
        first = windex == 0
        larger = x_val > run_max
        new_max = Mux(first | larger, x_val, run_max)
        row_end = self.x.tlast | (windex == cfg.max_len - 1)
        m.d.comb += [
            write.addr.eq(bank_address(wb, windex)),
            write.data.eq(x_val),
            write.en.eq(store),
        ]

        m.submodules.exp_sum = exp_sum = ExpNeg(cfg)
        d_sum = Signal(signed(n + 1))
        # A new maximum contributes exp(0) and rescales the old sum by exp(old - new).
        m.d.comb += [
            d_sum.eq(Mux(first, 0, Mux(larger, run_max - x_val, x_val - run_max))),
            exp_sum.d.eq(d_sum),
            exp_sum.valid_in.eq(store),
            exp_sum.en.eq(1),  # the sum stage never stalls, so neither does this pipeline
        ]
        # Element kind and row end travel beside the exponential.
        tags = [
            tuple(Signal(name=f"sum_{kind}{i}") for kind in ("first", "larger", "last", "bank"))
            for i in range(exp_sum.latency)
        ]
        m.d.sync += [
            tags[0][0].eq(first),
            tags[0][1].eq(~first & larger),
            tags[0][2].eq(row_end),
            tags[0][3].eq(wb),
        ]
        for i in range(1, exp_sum.latency):
            m.d.sync += [a.eq(b) for a, b in zip(tags[i], tags[i - 1], strict=True)]

        with m.If(store):
            m.d.sync += [run_max.eq(new_max), windex.eq(windex + 1)]
            with m.If(row_end):
                m.d.sync += [windex.eq(0), wb.eq(~wb)]
                for b in (0, 1):
                    with m.If(wb == b):
                        m.d.sync += [
                            closed[b].eq(1),
                            row_len[b].eq(windex + 1),
                            row_max[b].eq(new_max),
                        ]
                with m.If(~self.x.tlast):
                    m.d.sync += [discarding.eq(1), self.overflow.eq(1)]
        with m.If(take & discarding & self.x.tlast):
            m.d.sync += discarding.eq(0)

        # ---- running sum -----------------------------------------------------------------------
        total = Signal(cfg.sum_bits)
        e_sum = exp_sum.e
        s_first, s_larger, s_last, s_bank = tags[-1]
        rescaled = Signal(cfg.sum_bits)
        m.d.comb += rescaled.eq((total * e_sum + (1 << (ef - 1))) >> ef)
        new_total = Signal(cfg.sum_bits)
        m.d.comb += new_total.eq(Mux(s_first, one, Mux(s_larger, rescaled + one, total + e_sum)))
        with m.If(exp_sum.valid_out):
            m.d.sync += total.eq(new_total)
            with m.If(s_last):
                for b in (0, 1):
                    with m.If(s_bank == b):
                        m.d.sync += [row_total[b].eq(new_total), summed[b].eq(1)]

        # ---- reciprocal, one row at a time in bank order ---------------------------------------
        m.submodules.reciprocal = divider = Reciprocal(cfg)
        dv = Signal()  # bank whose sum is divided next
        dv_summed = Mux(dv, summed[1], summed[0])
        dv_ready = Mux(dv, ready[1], ready[0])
        m.d.comb += [
            divider.start.eq(dv_summed & ~dv_ready & ~divider.busy & ~divider.done),
            divider.total.eq(Mux(dv, row_total[1], row_total[0])),
        ]
        with m.If(divider.done):
            m.d.sync += dv.eq(~dv)
            for b in (0, 1):
                with m.If(dv == b):
                    m.d.sync += [ready[b].eq(1), row_recip[b].eq(divider.recip)]

        # ---- pass 2: read back, exponential, scale by 1/sum ------------------------------------
        # One enable for the whole pipeline: it moves whenever the output register can.
        advance = Signal()
        m.d.comb += advance.eq(~self.p.tvalid | self.p.tready)
        # Taking a row copies its registers (and frees the bank's): the next row may then be
        # summed and divided in that bank while this one is still read out.
        rd_len = Signal.like(row_len[0])
        rd_max = Signal.like(row_max[0])
        rd_recip = Signal.like(row_recip[0])
        cur_len = Mux(reading, rd_len, Mux(rb, row_len[1], row_len[0]))
        cur_max = Mux(reading, rd_max, Mux(rb, row_max[1], row_max[0]))
        cur_recip = Mux(reading, rd_recip, Mux(rb, row_recip[1], row_recip[0]))
        issue = Signal()
        m.d.comb += issue.eq(advance & (reading | Mux(rb, ready[1], ready[0])))
        read_last = rindex == cur_len - 1
        m.d.comb += [read.addr.eq(bank_address(rb, rindex)), read.en.eq(advance)]

        # The row's maximum and reciprocal travel with each element, as the next row may be
        # taken while this one's last elements are still in the pipeline.
        a_valid, a_last = Signal(), Signal()
        a_max = Signal(signed(n))
        a_recip = Signal(cfg.recip_bits)
        with m.If(advance):
            m.d.sync += [
                a_valid.eq(issue),
                a_last.eq(read_last),
                a_max.eq(cur_max),
                a_recip.eq(cur_recip),
            ]
        with m.If(issue):
            m.d.sync += [rindex.eq(rindex + 1), reading.eq(1)]
            with m.If(~reading):
                m.d.sync += [rd_len.eq(cur_len), rd_max.eq(cur_max), rd_recip.eq(cur_recip)]
                for b in (0, 1):
                    with m.If(rb == b):
                        m.d.sync += [closed[b].eq(0), summed[b].eq(0), ready[b].eq(0)]
            with m.If(read_last):
                m.d.sync += [rindex.eq(0), rb.eq(~rb), reading.eq(0)]

        m.submodules.exp_out = exp_out = ExpNeg(cfg)
        m.d.comb += [
            exp_out.d.eq(read.data.as_signed() - a_max),
            exp_out.valid_in.eq(a_valid),
            exp_out.en.eq(advance),
        ]
        carried = [
            (Signal(cfg.recip_bits, name=f"out_recip{i}"), Signal(name=f"out_last{i}"))
            for i in range(exp_out.latency)
        ]
        with m.If(advance):
            m.d.sync += [carried[0][0].eq(a_recip), carried[0][1].eq(a_last)]
            for i in range(1, exp_out.latency):
                m.d.sync += [a.eq(b) for a, b in zip(carried[i], carried[i - 1], strict=True)]
        c_recip, c_last = carried[-1]

        shift = cfg.prob_shift
        top = (1 << cfg.out_bits) - 1
        scaled = Signal(len(exp_out.e) + cfg.recip_bits - shift + 1)
        m.d.comb += scaled.eq((exp_out.e * c_recip + (1 << (shift - 1))) >> shift)
        with m.If(advance):
            m.d.sync += [
                self.p.tdata.eq(Mux(scaled > top, top, scaled)),
                self.p.tvalid.eq(exp_out.valid_out),
                self.p.tlast.eq(c_last),
            ]
        return m


def generate_softmax(cfg: SoftmaxConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of an ``OnlineSoftmax`` and its stream layout.

    Parameters
    ----------
    cfg : SoftmaxConfig
        Unit configuration.
    out_dir : path, optional
        If given, write ``online_softmax.v``, ``stream_layout.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "top": "online_softmax", "files": list[str], "stream_layout": dict,
        "latency": int}``. The module's clock and reset ports are ``clk`` and ``rst``.
    """
    return emit(
        OnlineSoftmax(cfg),
        TOP_NAME,
        cfg,
        out_dir,
        {"stream_layout": stream_layout(cfg)},
        latency=_latency(cfg),
    )
