"""``LayerNorm``: streaming integer LayerNorm with affine weight and bias, bit-exact with
:func:`tessera.models.layernorm.layernorm`.

Dataflow (one element per beat, about one element per cycle)::

    x --+--> row buffer (circular, 2 * dim) -------------------------------+
        |                                                                  v
        +--> x*x --> S1, S2 --> 1/sqrt unit --> row slot --> issue: c = dim*x - S1 --> c*y
             (per row)          (sequential,                 z = round(c*y >> shift)
                                 one multiplier)             out = sat(round(z*gamma + beta)) --> y

The input pass stores each element and accumulates ``S1 = sum(x)`` and ``S2 = sum(x*x)``. At the
row's end a small sequencer computes ``W = dim*S2 - S1**2 + E`` and its reciprocal square root
(normalising shift, seed table, Newton steps) on one shared multiplier, in
``5 + 4 * newton_steps`` cycles. The output pass then re-reads the row and streams the results.
The row buffer holds two rows, so row ``k + 1`` streams in while row ``k`` streams out; the rows
of ``dim`` elements follow each other without gaps once ``dim`` exceeds the sequencer's latency.

Multipliers: ``x*x`` on the input side, ``c*y`` and ``z*gamma`` on the output side (the fewest
that keep one element per cycle in and out at the same time), and one shared by all per-row
products of the sequencer. ``dim*x`` and ``dim*S2`` are constant multiplications.

Protocol:

- ``params`` carries one packet of ``dim`` beats (``gamma``, ``beta`` per column) that loads the
  on-chip parameter memory. A packet is taken only when no row is in flight (none partly received,
  none waiting or being issued); while it loads, ``x`` is held off. When a packet and a row are
  both waiting on an idle unit, the packet goes first. Every row uses the parameters loaded when
  its first element was issued to the output pass, i.e. the last complete packet before it.
- Rows are counted, not delimited by ``tlast``: every ``dim`` beats of ``x`` form a row, and every
  ``dim`` beats of ``params`` a packet. A ``tlast`` that disagrees with that count (early, or
  missing on the ``dim``-th beat) sets the sticky ``error`` output, which only reset clears; the
  data are still processed by the count.
- ``y`` carries one output per beat, ``tlast`` on each row's last element. Inputs may idle and the
  output may be back-pressured on any cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.layernorm import LayerNormConfig, rsqrt_seed_table
from tessera.models.rounding import Overflow
from tessera.rtl.arith import saturate
from tessera.rtl.axi import AxiStreamSignature
from tessera.rtl.emit import emit

__all__ = [
    "TOP_NAME",
    "LayerNorm",
    "generate_layernorm",
    "interface",
    "row_latency",
    "rsqrt_latency",
]

TOP_NAME = "layernorm"
VERSION = 1

# Sequencer states.
_IDLE, _SQUARE, _VARIANCE, _EXPONENT, _SEED, _NEWTON_SQUARE, _NEWTON_SCALE, _NEWTON_SUB = range(8)
_NEWTON_UPDATE, _DONE = 8, 9


def rsqrt_latency(cfg: LayerNormConfig) -> int:
    """Cycles the sequencer is busy per row, from its start to its result."""
    return 5 + 4 * cfg.newton_steps


def row_latency(cfg: LayerNormConfig) -> int:
    """Cycles from a row's last input beat being taken to its first output beat being taken,
    without stalls and with the output pass free: 2 input stages, :func:`rsqrt_latency`, 1 in the
    row slot, 6 register stages from the buffer read to the output register, 1 for the beat."""
    return rsqrt_latency(cfg) + 10


class LayerNorm(wiring.Component):
    """Streaming LayerNorm over rows of ``dim`` elements, with per-column ``gamma`` and ``beta``.

    Parameters
    ----------
    config : LayerNormConfig
        Row length, number formats and reciprocal-square-root precision.

    Attributes
    ----------
    x : In(AxiStreamSignature(8 * in_bytes, last=True))
        Input elements, one per beat: ``tdata`` (low ``in_bits`` used, signed; the rest ignored),
        ``tlast`` (on each row's last element), ``tvalid`` in; ``tready`` out.
    params : In(AxiStreamSignature(16 * param_bytes, last=True))
        Parameter packets, one beat per column: ``tdata`` with ``gamma`` in the low
        ``8 * param_bytes`` bits and ``beta`` in the high ones (low ``param_bits`` of each used,
        signed), ``tlast`` on the ``dim``-th beat, ``tvalid`` in; ``tready`` out.
    y : Out(AxiStreamSignature(8 * out_bytes, last=True))
        Outputs, one per beat: ``tdata`` (signed ``out_bits``, sign-extended), ``tlast`` on each
        row's last element, ``tvalid`` out; ``tready`` in.
    error : Out(1)
        Sticky: a ``tlast`` on ``x`` or ``params`` disagreed with the ``dim``-beat count.
    """

    def __init__(self, config: LayerNormConfig) -> None:
        self.config = config
        super().__init__(
            {
                "x": In(AxiStreamSignature(8 * config.in_bytes, last=True)),
                "params": In(AxiStreamSignature(16 * config.param_bytes, last=True)),
                "y": Out(AxiStreamSignature(8 * config.out_bytes, last=True)),
                "error": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        n = cfg.dim
        frac = cfg.rsqrt_frac
        mbits = cfg.mantissa_bits
        max_exp = cfg.max_exponent
        depth = cfg.buffer_depth

        # ---- memories -----------------------------------------------------------------------
        m.submodules.row_buffer = row_buffer = Memory(
            shape=signed(cfg.in_bits), depth=depth, init=[]
        )
        buf_write = row_buffer.write_port()
        buf_read = row_buffer.read_port()
        m.submodules.param_memory = param_memory = Memory(
            shape=unsigned(2 * cfg.param_bits), depth=n, init=[]
        )
        param_write = param_memory.write_port()
        param_read = param_memory.read_port()
        m.submodules.seed_table = seed_table = Memory(
            shape=unsigned(mbits),
            depth=1 << cfg.rsqrt_lut_bits,
            init=[int(v) for v in rsqrt_seed_table(cfg)],
        )
        seed_read = seed_table.read_port(domain="comb")

        # ---- shared state -------------------------------------------------------------------
        stored = Signal(range(depth + 1))  # elements written and not yet issued to the output
        stored_inc, stored_dec = Signal(), Signal()
        m.d.sync += stored.eq(stored + stored_inc - stored_dec)

        in_col = Signal(range(n))
        param_col = Signal(range(n))
        loading = param_col != 0  # a parameter packet is partly received
        seq_state = Signal(range(_DONE + 1))
        slot_valid = Signal()  # a row's statistics wait for the output pass
        active = Signal()  # the output pass is issuing a row
        acc1_valid, acc1_last = Signal(), Signal()
        acc2_valid, acc2_last = Signal(), Signal()
        row_end_pending = (acc1_valid & acc1_last) | (acc2_valid & acc2_last)
        drained = Signal()
        m.d.comb += drained.eq(
            (in_col == 0) & ~acc1_valid & ~acc2_valid & (seq_state == _IDLE) & ~slot_valid & ~active
        )

        # ---- parameter packets ----------------------------------------------------------------
        params = self.params
        param_last = param_col == n - 1
        take_param = Signal()
        half = 8 * cfg.param_bytes
        m.d.comb += [
            params.tready.eq(loading | drained),
            take_param.eq(params.tvalid & params.tready),
            param_write.addr.eq(param_col),
            param_write.data.eq(
                Cat(params.tdata[: cfg.param_bits], params.tdata[half : half + cfg.param_bits])
            ),
            param_write.en.eq(take_param),
        ]
        with m.If(take_param):
            m.d.sync += param_col.eq(Mux(param_last, 0, param_col + 1))
            with m.If(params.tlast != param_last):
                m.d.sync += self.error.eq(1)

        # ---- input pass: store, accumulate S1 and S2 ----------------------------------------
        x = self.x
        row_end = in_col == n - 1
        write_ptr = Signal(range(depth))
        take_x = Signal()
        sequencer_free = (seq_state == _IDLE) & ~row_end_pending
        m.d.comb += [
            x.tready.eq(
                ~loading
                & ~(drained & params.tvalid)
                & (stored < depth)
                & (~row_end | sequencer_free)
            ),
            take_x.eq(x.tvalid & x.tready),
            buf_write.addr.eq(write_ptr),
            buf_write.data.eq(x.tdata[: cfg.in_bits]),
            buf_write.en.eq(take_x),
            stored_inc.eq(take_x),
        ]
        acc1_x = Signal(signed(cfg.in_bits))
        m.d.sync += acc1_valid.eq(take_x)
        with m.If(take_x):
            m.d.sync += [
                write_ptr.eq(Mux(write_ptr == depth - 1, 0, write_ptr + 1)),
                in_col.eq(Mux(row_end, 0, in_col + 1)),
                acc1_x.eq(x.tdata[: cfg.in_bits].as_signed()),
                acc1_last.eq(row_end),
            ]
            with m.If(x.tlast != row_end):
                m.d.sync += self.error.eq(1)

        acc2_x = Signal(signed(cfg.in_bits))
        acc2_square = Signal(unsigned(2 * cfg.in_bits))
        m.d.sync += [
            acc2_valid.eq(acc1_valid),
            acc2_last.eq(acc1_last),
            acc2_x.eq(acc1_x),
            acc2_square.eq(acc1_x * acc1_x),
        ]
        sum1 = Signal(signed(cfg.sum_bits))
        sum2 = Signal(unsigned(cfg.square_sum_bits))
        row_sum1 = Signal(signed(cfg.sum_bits))
        row_sum2 = Signal(unsigned(cfg.square_sum_bits))
        m.d.comb += [row_sum1.eq(sum1 + acc2_x), row_sum2.eq(sum2 + acc2_square)]
        start_row = acc2_valid & acc2_last
        with m.If(acc2_valid):
            m.d.sync += [
                sum1.eq(Mux(acc2_last, 0, row_sum1)),
                sum2.eq(Mux(acc2_last, 0, row_sum2)),
            ]

        # ---- sequencer: W = dim*S2 - S1**2 + E, y ~ 2**(frac + e) / sqrt(W) -------------------
        seq_sum1 = Signal(signed(cfg.sum_bits))
        seq_sum2 = Signal(unsigned(cfg.square_sum_bits))
        mul_bits = max(cfg.sum_bits, mbits + 1)
        mul_a = Signal(signed(mul_bits))
        mul_b = Signal(signed(mul_bits))
        product = Signal(signed(2 * mul_bits))
        m.d.sync += product.eq(mul_a * mul_b)  # the one multiplier all per-row products share
        variance = Signal(unsigned(cfg.var_bits))
        exponent = Signal(range(max_exp + 1))
        left_shift = Signal(range(2 * max_exp + 1))
        mant_u = Signal(unsigned(mbits))
        mant_y = Signal(unsigned(mbits))
        step = Signal(range(max(cfg.newton_steps, 1)))

        # Leading-one pair of W: W = u * 4**e with u in [1, 4); scanning up, the last hit wins.
        exponent_next = Signal.like(exponent)
        shift_next = Signal.like(left_shift)
        for i in range(max_exp + 1):
            with m.If(variance[2 * i : 2 * i + 2].any()):
                m.d.comb += [exponent_next.eq(i), shift_next.eq(2 * (max_exp - i))]

        # u = floor(W * 2**frac / 4**e): W shifted so its leading pair is the top of 2*max_exp+2
        # bits, then cut (or padded) to frac fraction bits.
        normalised = Signal(2 * max_exp + 2)
        m.d.comb += normalised.eq(variance << left_shift)
        if 2 * max_exp >= frac:
            u_next = normalised[2 * max_exp - frac :]
        else:
            u_next = Cat(Const(0, frac - 2 * max_exp), normalised)
        k = cfg.rsqrt_lut_bits - 1
        high = u_next[frac + 1]
        if k:
            index = Cat(Mux(high, u_next[frac + 1 - k : frac + 1], u_next[frac - k : frac]), high)
        else:
            index = high
        m.d.comb += seed_read.addr.eq(index)

        scaled = product[frac : frac + mbits]  # a product truncated back to frac fraction bits
        newton_rounded = Signal(2 * mul_bits)
        m.d.comb += newton_rounded.eq(product + (1 << frac))

        with m.Switch(seq_state):
            with m.Case(_IDLE):
                with m.If(start_row):
                    m.d.sync += [
                        seq_sum1.eq(row_sum1),
                        seq_sum2.eq(row_sum2),
                        seq_state.eq(_SQUARE),
                    ]
            with m.Case(_SQUARE):
                m.d.comb += [mul_a.eq(seq_sum1), mul_b.eq(seq_sum1)]
                m.d.sync += seq_state.eq(_VARIANCE)
            with m.Case(_VARIANCE):
                m.d.sync += [
                    variance.eq(seq_sum2 * n - product + cfg.eps_int),
                    seq_state.eq(_EXPONENT),
                ]
            with m.Case(_EXPONENT):
                m.d.sync += [
                    exponent.eq(exponent_next),
                    left_shift.eq(shift_next),
                    seq_state.eq(_SEED),
                ]
            with m.Case(_SEED):
                m.d.sync += [
                    mant_u.eq(u_next),
                    mant_y.eq(seed_read.data),
                    step.eq(0),
                    seq_state.eq(_NEWTON_SQUARE if cfg.newton_steps else _DONE),
                ]
            with m.Case(_NEWTON_SQUARE):  # y*y
                m.d.comb += [mul_a.eq(mant_y), mul_b.eq(mant_y)]
                m.d.sync += seq_state.eq(_NEWTON_SCALE)
            with m.Case(_NEWTON_SCALE):  # u * floor(y*y)
                m.d.comb += [mul_a.eq(mant_u), mul_b.eq(scaled)]
                m.d.sync += seq_state.eq(_NEWTON_SUB)
            with m.Case(_NEWTON_SUB):  # y * (3 - floor(u*y*y))
                m.d.comb += [mul_a.eq(mant_y), mul_b.eq((3 << frac) - scaled)]
                m.d.sync += seq_state.eq(_NEWTON_UPDATE)
            with m.Case(_NEWTON_UPDATE):  # round(y * (3 - u*y*y) / 2)
                m.d.sync += mant_y.eq(newton_rounded[frac + 1 : frac + 1 + mbits])
                with m.If(step == cfg.newton_steps - 1):
                    m.d.sync += seq_state.eq(_DONE)
                with m.Else():
                    m.d.sync += [step.eq(step + 1), seq_state.eq(_NEWTON_SQUARE)]
            with m.Case(_DONE):
                with m.If(~slot_valid):
                    m.d.sync += seq_state.eq(_IDLE)

        # ---- row slot and output pass --------------------------------------------------------
        shift_range = range(cfg.max_norm_shift + 1)
        slot_sum1 = Signal(signed(cfg.sum_bits))
        slot_y = Signal(unsigned(mbits))
        slot_shift = Signal(shift_range)
        row_sum1_out = Signal(signed(cfg.sum_bits))
        row_y = Signal(unsigned(mbits))
        row_shift = Signal(shift_range)
        out_col = Signal(range(n))
        read_ptr = Signal(range(depth))

        # The whole output pipeline advances together unless the output register is stalled.
        advance = Signal()
        issue = Signal()
        out_last = out_col == n - 1
        m.d.comb += [
            advance.eq(~self.y.tvalid | self.y.tready),
            issue.eq(active & advance),
            stored_dec.eq(issue),
            buf_read.addr.eq(read_ptr),
            buf_read.en.eq(advance),
            param_read.addr.eq(out_col),
            param_read.en.eq(advance),
        ]
        fill_slot = (seq_state == _DONE) & ~slot_valid
        take_slot = slot_valid & (~active | (issue & out_last))
        with m.If(fill_slot):
            m.d.sync += [
                slot_valid.eq(1),
                slot_sum1.eq(seq_sum1),
                slot_y.eq(mant_y),
                slot_shift.eq(frac - cfg.norm_frac + exponent),
            ]
        with m.If(issue):
            m.d.sync += [
                read_ptr.eq(Mux(read_ptr == depth - 1, 0, read_ptr + 1)),
                out_col.eq(Mux(out_last, 0, out_col + 1)),
            ]
            with m.If(out_last):
                m.d.sync += active.eq(0)
        with m.If(take_slot):
            m.d.sync += [
                slot_valid.eq(0),
                active.eq(1),
                row_sum1_out.eq(slot_sum1),
                row_y.eq(slot_y),
                row_shift.eq(slot_shift),
            ]

        # Stage 1: element and parameters read; c = dim*x - S1.
        s1_valid, s1_last = Signal(), Signal()
        s1_sum1 = Signal.like(row_sum1_out)
        s1_y, s1_shift = Signal.like(row_y), Signal.like(row_shift)
        # Stage 2: c*y.
        s2_valid, s2_last = Signal(), Signal()
        s2_center = Signal(signed(cfg.center_bits))
        s2_y, s2_shift = Signal.like(row_y), Signal.like(row_shift)
        s2_gamma, s2_beta = Signal(signed(cfg.param_bits)), Signal(signed(cfg.param_bits))
        # Stage 3: z = round(c*y >> shift).
        s3_valid, s3_last = Signal(), Signal()
        s3_product = Signal(signed(cfg.center_bits + mbits + 1))
        s3_shift = Signal.like(row_shift)
        s3_gamma, s3_beta = Signal.like(s2_gamma), Signal.like(s2_beta)
        # Stage 4: z*gamma + beta.
        s4_valid, s4_last = Signal(), Signal()
        s4_norm = Signal(signed(cfg.norm_bits))
        s4_gamma, s4_beta = Signal.like(s2_gamma), Signal.like(s2_beta)
        # Stage 5: round and saturate into the output register.
        s5_valid, s5_last = Signal(), Signal()
        s5_acc = Signal(signed(cfg.norm_bits + cfg.param_bits + 1))

        gamma = param_read.data[: cfg.param_bits].as_signed()
        beta = param_read.data[cfg.param_bits :].as_signed()
        # Round half up of product / 2**shift: one shifter with a guard bit, then (t + 1) >> 1.
        guarded = Signal(signed(len(s3_product) + 1))
        m.d.comb += guarded.eq(Cat(Const(0, 1), s3_product).as_signed() >> s3_shift)
        norm_next = Signal(signed(len(guarded)))
        m.d.comb += norm_next.eq((guarded + 1) >> 1)
        if cfg.out_shift:
            rounded = (s5_acc + (1 << (cfg.out_shift - 1))) >> cfg.out_shift
        else:
            rounded = s5_acc
        rounded_sig = Signal(signed(len(s5_acc) + 1))
        m.d.comb += rounded_sig.eq(rounded)
        out_value = saturate(m, rounded_sig, cfg.out_bits, Overflow.SAT)

        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(issue),
                s1_last.eq(out_last),
                s1_sum1.eq(row_sum1_out),
                s1_y.eq(row_y),
                s1_shift.eq(row_shift),
                s2_valid.eq(s1_valid),
                s2_last.eq(s1_last),
                s2_center.eq(buf_read.data * n - s1_sum1),
                s2_y.eq(s1_y),
                s2_shift.eq(s1_shift),
                s2_gamma.eq(gamma),
                s2_beta.eq(beta),
                s3_valid.eq(s2_valid),
                s3_last.eq(s2_last),
                s3_product.eq(s2_center * s2_y),
                s3_shift.eq(s2_shift),
                s3_gamma.eq(s2_gamma),
                s3_beta.eq(s2_beta),
                s4_valid.eq(s3_valid),
                s4_last.eq(s3_last),
                s4_norm.eq(norm_next),
                s4_gamma.eq(s3_gamma),
                s4_beta.eq(s3_beta),
                s5_valid.eq(s4_valid),
                s5_last.eq(s4_last),
                s5_acc.eq(s4_norm * s4_gamma + (s4_beta << cfg.norm_frac)),
                self.y.tvalid.eq(s5_valid),
                self.y.tlast.eq(s5_last),
                self.y.tdata.eq(out_value),
            ]
        return m


def interface(cfg: LayerNormConfig) -> dict[str, Any]:
    """The unit's host interface as a JSON-able dict: stream layouts and protocol."""
    return {
        "top": TOP_NAME,
        "version": VERSION,
        "config": cfg.to_dict(),
        "csr": None,
        "error": "sticky output: a tlast disagreed with the dim-beat count (cleared by reset)",
        "streams": {
            "x": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": 8 * cfg.in_bytes,
                "layout": f"one element per beat: signed {cfg.in_bits}-bit raw value with "
                f"{cfg.in_frac} fraction bits, sign-extended; rows of {cfg.dim} beats, tlast on "
                "each row's last",
            },
            "params": {
                "protocol": "AXI4-Stream",
                "direction": "in",
                "data_width": 16 * cfg.param_bytes,
                "layout": f"packet of {cfg.dim} beats, one per column: gamma in the low "
                f"{8 * cfg.param_bytes} bits, beta in the high ones, each a signed "
                f"{cfg.param_bits}-bit raw value with {cfg.param_frac} fraction bits; taken only "
                "when no row is in flight",
            },
            "y": {
                "protocol": "AXI4-Stream",
                "direction": "out",
                "data_width": 8 * cfg.out_bytes,
                "layout": f"one output per beat: signed {cfg.out_bits}-bit raw value with "
                f"{cfg.out_frac} fraction bits, sign-extended; tlast on each row's last",
            },
        },
    }


def generate_layernorm(cfg: LayerNormConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the Verilog of a ``LayerNorm`` unit and its interface description.

    Parameters
    ----------
    cfg : LayerNormConfig
        Unit configuration.
    out_dir : path, optional
        If given, write ``layernorm.v``, ``register_map.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "register_map": dict, "top": str, "files": list[str]}``; the top
        module's clock and reset are ``clk`` and ``rst``.
    """
    return emit(LayerNorm(cfg), TOP_NAME, cfg, out_dir, {"register_map": interface(cfg)})
