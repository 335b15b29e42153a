"""Exponential and reciprocal blocks of the online softmax, bit-exact with
:mod:`tessera.models.softmax`.

``ExpNeg`` computes ``exp(d)`` of a difference ``d = x - max <= 0`` base 2 (``t = d * log2(e)``,
``2**t = 2**frac(t) >> -floor(t)``) in a four-stage pipeline; ``Reciprocal`` turns a row's sum of
exponentials into ``1/sum`` with a restoring divider, one quotient bit per cycle.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.models.softmax import EXP_LATENCY, LOG2E, LOG2E_FRAC, SoftmaxConfig, exp2_lut

__all__ = ["EXP_LATENCY", "ExpNeg", "Reciprocal"]

"""Pipeline depth of :class:`ExpNeg` (its :attr:`~ExpNeg.latency`)."""


class ExpNeg(wiring.Component):
    """Pipelined ``exp(d)`` for ``d <= 0``: :func:`tessera.models.softmax.exp_neg` in hardware.

    One difference enters per cycle (initiation interval 1) while ``en`` is high; the result
    leaves :attr:`latency` enabled cycles later. Stages:

    1. ``t = floor(d * log2(e))`` to ``t_frac`` fraction bits (one constant multiplication); the
       right shift ``-floor(t)``, saturated at ``max_shift``;
    2. table read: ``2**(k / 2**lut_bits)`` and its difference to the next entry, one word of a
       ``2**lut_bits``-entry ROM addressed by the top ``lut_bits`` bits of ``frac(t)``;
    3. linear interpolation over the next ``interp_bits`` bits of ``frac(t)``;
    4. the rounding (half up) right shift.

    Parameters
    ----------
    cfg : SoftmaxConfig
        Unit parameters (``in_bits``, ``in_frac``, ``exp_frac``, ``lut_bits``, ``interp_bits``).

    Attributes
    ----------
    en : In(1)
        Advance the pipeline; while low every stage (and ``valid_out``) holds.
    d : In(signed(in_bits + 1))
        Raw difference ``x - max <= 0`` with ``in_frac`` fraction bits.
    valid_in : In(1)
        ``d`` is meaningful; travels with it to ``valid_out``.
    e : Out(exp_frac + 1)
        ``exp(d)`` with ``exp_frac`` fraction bits, unsigned, in ``[0, 2**exp_frac]``.
    valid_out : Out(1)
        ``valid_in`` delayed by :attr:`latency` enabled cycles.
    """

    def __init__(self, cfg: SoftmaxConfig) -> None:
        self.config = cfg
        super().__init__(
            {
                "en": In(1),
                "d": In(signed(cfg.in_bits + 1)),
                "valid_in": In(1),
                "e": Out(unsigned(cfg.exp_frac + 1)),
                "valid_out": Out(1),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from ``d`` to ``e`` while ``en`` is held high."""
        return EXP_LATENCY

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        en = self.en
        lut = [int(v) for v in exp2_lut(cfg)]
        deltas = [lut[k + 1] - lut[k] for k in range(1 << cfg.lut_bits)]
        base_bits = max(lut).bit_length()
        delta_bits = max(deltas).bit_length()
        shift_shape = range(cfg.max_shift + 1)

        # ---- stage 1: t = d * log2(e), truncated to t_frac fraction bits ------------------------
        product = Signal(signed(len(self.d) + LOG2E.bit_length() + 1))
        m.d.comb += product.eq(self.d * Const(LOG2E, unsigned(LOG2E.bit_length())))
        t = product[cfg.in_frac + LOG2E_FRAC - cfg.t_frac :].as_signed()
        floor_t = t[cfg.t_frac :].as_signed()  # <= 0
        s1_frac = Signal(cfg.t_frac)
        s1_shift = Signal(shift_shape)
        s1_valid = Signal()
        with m.If(en):
            # Shifts of max_shift and more all give 0, so the shifter needs no more range.
            m.d.sync += [
                s1_frac.eq(t[: cfg.t_frac]),
                s1_shift.eq(Mux(-floor_t >= cfg.max_shift, cfg.max_shift, -floor_t)),
                s1_valid.eq(self.valid_in),
            ]

        # ---- stage 2: one ROM word holds an entry and its difference to the next one -----------
        words = [base | (delta << base_bits) for base, delta in zip(lut[:-1], deltas, strict=True)]
        m.submodules.exp2_table = table = Memory(
            shape=unsigned(base_bits + delta_bits), depth=len(words), init=words
        )
        port = table.read_port(domain="sync")
        m.d.comb += [port.addr.eq(s1_frac[cfg.interp_bits :]), port.en.eq(en)]
        s2_low = Signal(cfg.interp_bits) if cfg.interp_bits else None
        s2_shift = Signal(shift_shape)
        s2_valid = Signal()
        with m.If(en):
            m.d.sync += [s2_shift.eq(s1_shift), s2_valid.eq(s1_valid)]
            if s2_low is not None:
                m.d.sync += s2_low.eq(s1_frac[: cfg.interp_bits])
        base = port.data[:base_bits]
        delta = port.data[base_bits:]

        # ---- stage 3: linear interpolation ------------------------------------------------------
        s3_value = Signal(base_bits)
        s3_shift = Signal(shift_shape)
        s3_valid = Signal()
        if s2_low is None:
            value = base
        else:
            value = base + ((delta * s2_low) >> cfg.interp_bits)
        with m.If(en):
            m.d.sync += [s3_value.eq(value), s3_shift.eq(s2_shift), s3_valid.eq(s2_valid)]

        # ---- stage 4: round half up while shifting right ---------------------------------------
        # floor((v + 2**(s-1)) / 2**s) == (floor(2v / 2**s) + 1) >> 1, which also holds for s = 0.
        guarded = Signal(base_bits + 1)
        m.d.comb += guarded.eq(Cat(Const(0, 1), s3_value) >> s3_shift)
        with m.If(en):
            m.d.sync += [
                self.e.eq((guarded + 1) >> 1),
                self.valid_out.eq(s3_valid),
            ]
        return m


class Reciprocal(wiring.Component):
    """``round(2**(exp_frac + recip_frac) / total)`` by restoring division, one bit per cycle.

    :func:`tessera.models.softmax.reciprocal` in hardware. The dividend ``2**(exp_frac +
    recip_frac) + total // 2`` (the addend rounds half up) is divided bit serially: the quotient
    has ``recip_bits`` bits, the partial remainder stays below ``total``.

    Parameters
    ----------
    cfg : SoftmaxConfig
        Unit parameters (``exp_frac``, ``max_len`` and ``out_frac`` through ``sum_bits``,
        ``recip_frac`` and ``recip_bits``).

    Attributes
    ----------
    start : In(1)
        Begin a division of ``total`` (ignored while ``busy``).
    total : In(sum_bits)
        Sum of exponentials, ``exp_frac`` fraction bits, at least ``2**exp_frac``; sampled with
        ``start``. (Smaller values give a meaningless but bounded result.)
    busy : Out(1)
        A division is in progress.
    done : Out(1)
        One-cycle pulse: ``recip`` has just been updated (:attr:`cycles` after ``start``).
    recip : Out(recip_bits)
        ``1/total`` with ``recip_frac`` fraction bits; held until the next division completes.
    """

    def __init__(self, cfg: SoftmaxConfig) -> None:
        self.config = cfg
        super().__init__(
            {
                "start": In(1),
                "total": In(unsigned(cfg.sum_bits)),
                "busy": Out(1),
                "done": Out(1),
                "recip": Out(unsigned(cfg.recip_bits)),
            }
        )

    @property
    def cycles(self) -> int:
        """Cycles from the ``start`` cycle to the ``done`` pulse (one per quotient bit, plus 1)."""
        return self.config.recip_cycles

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.config
        steps = cfg.recip_bits
        # Dividend = 2**(exp_frac + recip_frac) + total // 2; its bits above the quotient's
        # `steps` bits start the partial remainder (smaller than total, since quotient < 2**steps).
        dividend = Signal(cfg.exp_frac + cfg.recip_frac + 1)
        m.d.comb += dividend.eq((1 << (cfg.exp_frac + cfg.recip_frac)) + (self.total >> 1))
        divisor = Signal(cfg.sum_bits)
        remainder = Signal(cfg.sum_bits)
        # Low dividend bits shift out at the top while quotient bits shift in at the bottom.
        bits = Signal(steps)
        count = Signal(range(steps + 1))

        trial = Signal(cfg.sum_bits + 1)
        fits = Signal()
        m.d.comb += [trial.eq(Cat(bits[-1], remainder)), fits.eq(trial >= divisor)]
        next_bits = Cat(fits, bits[:-1])

        m.d.sync += self.done.eq(0)
        with m.If(self.busy):
            m.d.sync += [
                remainder.eq(Mux(fits, trial - divisor, trial)),
                bits.eq(next_bits),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1), self.recip.eq(next_bits)]
        with m.Elif(self.start):
            m.d.sync += [
                divisor.eq(self.total),
                remainder.eq(dividend[steps:]),
                bits.eq(dividend[:steps]),
                count.eq(steps),
                self.busy.eq(1),
            ]
        return m
