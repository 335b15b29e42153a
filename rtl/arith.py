"""Arithmetic building blocks shared by the engines: rounding right shift and requantization.

Both mirror :mod:`tessera.models.rounding` bit for bit (``shift_round`` and ``requantize``).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.models.rounding import Overflow, Rounding

__all__ = ["Requantizer", "saturate", "shift_round"]


def shift_round(m: Module, x: Value, shift: Value, mode: Rounding) -> Value:
    """Combinational ``x / 2**shift`` with ``mode`` rounding (``x`` signed, ``shift`` unsigned).

    Returns a signed value one bit wider than ``x`` (the rounding increment can carry).
    """
    width = len(x)
    # One barrel shifter for x with a guard bit: bit 0 of `guarded` is the first bit shifted out
    # (the "half" bit); the bits below it only matter through their OR (the sticky bit), taken
    # with a thermometer mask instead of a second shifter and a wide comparison.
    guarded = Signal(signed(width + 1))
    m.d.comb += guarded.eq(Cat(Const(0, 1), x).as_signed() >> shift)
    floor = guarded[1:].as_signed()
    half = guarded[0]
    below_half = Signal(width)
    for i in range(width):
        m.d.comb += below_half[i].eq(i + 1 < shift)
    sticky = (x.as_unsigned() & below_half).any()
    negative = x < 0
    above = half & sticky
    tie = half & ~sticky
    if mode is Rounding.TRN:
        inc = 0
    elif mode is Rounding.TRN_ZERO:
        inc = negative & (half | sticky)
    elif mode is Rounding.RND:
        inc = half
    elif mode is Rounding.RND_ZERO:
        inc = above | (tie & negative)
    elif mode is Rounding.RND_MIN_INF:
        inc = above
    elif mode is Rounding.RND_INF:
        inc = above | (tie & ~negative)
    elif mode is Rounding.RND_CONV:
        inc = above | (tie & floor[0])
    else:  # pragma: no cover - enum is closed
        raise ValueError(f"unknown rounding mode {mode}")
    out = Signal(signed(width + 1))
    m.d.comb += out.eq(floor + inc)
    return out


def saturate(m: Module, x: Value, bits: int, mode: Overflow) -> Value:
    """Reduce signed ``x`` to a signed ``bits``-wide value with ``mode`` overflow handling."""
    out = Signal(signed(bits))
    low = x[:bits].as_signed()
    if mode is Overflow.WRAP or len(x) <= bits:
        m.d.comb += out.eq(low)
        return out
    # x fits when the bits from the new sign bit upwards are all equal: reductions, not the wide
    # comparisons `x > hi`, which cost carry chains.
    top = x[bits - 1 :]
    fits = Signal()
    m.d.comb += fits.eq(top.all() | ~top.any())
    hi = (1 << (bits - 1)) - 1
    lo = -hi if mode is Overflow.SAT_SYM else -hi - 1
    if mode is Overflow.SAT_ZERO:
        m.d.comb += out.eq(Mux(fits, low, 0))
    elif mode is Overflow.SAT_SYM:
        # ap_fixed's SAT_SYM also maps the most negative code to -hi.
        m.d.comb += out.eq(Mux(fits & (low != -hi - 1), low, Mux(x[-1], lo, hi)))
    else:
        m.d.comb += out.eq(Mux(fits, low, Mux(x[-1], lo, hi)))
    return out


class Requantizer(wiring.Component):
    """Combinational requantization of one accumulator lane.

    ``y = overflow(shift_round(acc * multiplier, shift, rounding) + zero_point, out_bits)``.

    Parameters
    ----------
    acc_bits : int
        Accumulator width (signed).
    out_bits : int
        Output width (signed).
    rounding : Rounding
    overflow : Overflow

    Attributes
    ----------
    acc : In(signed(acc_bits))
    multiplier : In(31)
        Unsigned multiplier.
    shift : In(6)
    zero_point : In(signed(16))
    result : Out(signed(out_bits))
    """

    def __init__(
        self, acc_bits: int, out_bits: int, rounding: Rounding, overflow: Overflow
    ) -> None:
        self.rounding = Rounding(rounding)
        self.overflow = Overflow(overflow)
        self.out_bits = out_bits
        super().__init__(
            {
                "acc": In(signed(acc_bits)),
                "multiplier": In(unsigned(31)),
                "shift": In(unsigned(6)),
                "zero_point": In(signed(16)),
                "result": Out(signed(out_bits)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        product = Signal(signed(len(self.acc) + 32))
        m.d.comb += product.eq(self.acc * Cat(self.multiplier, 0).as_signed())
        rounded = shift_round(m, product, self.shift, self.rounding)
        # Only out_bits survive: clamp (or wrap) to a width that still tells every saturating
        # case apart after adding the 16-bit zero point, so the adder and comparators stay narrow.
        narrow_bits = self.out_bits + 18
        if self.overflow is Overflow.WRAP:
            narrow = rounded[:narrow_bits].as_signed()
        else:
            narrow = saturate(m, rounded, narrow_bits, Overflow.SAT)
        biased = Signal(signed(narrow_bits + 1))
        m.d.comb += biased.eq(narrow + self.zero_point)
        m.d.comb += self.result.eq(saturate(m, biased, self.out_bits, self.overflow))
        return m
