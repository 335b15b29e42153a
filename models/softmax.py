"""Online single-pass softmax in integer arithmetic: configuration and bit-exact golden model.

The hardware keeps, per row, a running maximum ``m`` and a running sum of ``exp(x - m)``; when a
larger element arrives the sum is rescaled by ``exp(m_old - m_new)`` (online softmax, as in
Edge-MoE), so the row is read once to find both. One reciprocal of the sum per row then turns every
``exp(x_i - m)`` into a probability. The same unit serves attention rows and mixture-of-experts gate
scores.

All exponentials are of a difference ``d <= 0`` and are computed base 2, hardware style:
``t = d * log2(e)`` in fixed point, ``2**t = 2**frac(t) >> -floor(t)`` with ``2**frac(t)`` from a
``2**lut_bits + 1`` entry table and linear interpolation over the next ``interp_bits`` bits.

Integer formats (``raw`` values are integers; the real value is ``raw / 2**frac``):

- logits: signed ``in_bits`` with ``in_frac`` fraction bits;
- exponentials and the running sum: unsigned, ``exp_frac`` fraction bits (``exp(0)`` is
  ``2**exp_frac``); the sum is :attr:`SoftmaxConfig.sum_bits` wide;
- reciprocal: ``recip = round(2**(exp_frac + recip_frac) / sum)``, i.e. ``1/sum`` with
  :attr:`SoftmaxConfig.recip_frac` fraction bits;
- probabilities: unsigned ``out_bits`` with ``out_frac`` fraction bits (``1.0`` is representable).

Every rounding is *round half up* (add half an LSB, then floor), which hardware does with one adder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig, check_int

__all__ = [
    "EXP_LATENCY",
    "LOG2E",
    "LOG2E_FRAC",
    "SoftmaxConfig",
    "exp2_lut",
    "exp_neg",
    "online_max_sum",
    "pack_logits",
    "probabilities",
    "reciprocal",
    "rescale",
    "softmax",
    "softmax_float",
    "unpack_probabilities",
]

LOG2E_FRAC = 16
"""Fraction bits of the ``log2(e)`` constant."""

LOG2E = round(math.log2(math.e) * (1 << LOG2E_FRAC))
"""``log2(e)`` with :data:`LOG2E_FRAC` fraction bits, as the hardware multiplies by it."""

EXP_LATENCY = 4
"""Pipeline depth of the hardware ``exp`` unit in cycles (RTL ``ExpNeg``), for cycle models."""

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SoftmaxConfig(EngineConfig):
    """Parameters of the online softmax unit (and of the softmax inside attention).

    Parameters
    ----------
    in_bits : int
        Width of the signed input logits (4..24).
    in_frac : int
        Fraction bits of the logits (0..in_bits-1).
    exp_frac : int
        Fraction bits of exponentials and of the running sum (8..20).
    lut_bits : int
        The ``2**frac(t)`` table has ``2**lut_bits + 1`` entries (1..8).
    interp_bits : int
        Bits of ``frac(t)`` below the table index that are linearly interpolated (0..10).
    out_bits : int
        Width of the unsigned probabilities (2..24).
    out_frac : int
        Fraction bits of the probabilities (1..out_bits-1, so that 1.0 fits).
    max_len : int
        Longest row the unit buffers (1..65536).
    """

    in_bits: int = 16
    in_frac: int = 8
    exp_frac: int = 16
    lut_bits: int = 5
    interp_bits: int = 8
    out_bits: int = 16
    out_frac: int = 15
    max_len: int = 256

    def __post_init__(self) -> None:
        check_int("in_bits", self.in_bits, 4, 24)
        check_int("in_frac", self.in_frac, 0, self.in_bits - 1)
        check_int("exp_frac", self.exp_frac, 8, 20)
        check_int("lut_bits", self.lut_bits, 1, 8)
        check_int("interp_bits", self.interp_bits, 0, 10)
        check_int("out_bits", self.out_bits, 2, 24)
        check_int("out_frac", self.out_frac, 1, self.out_bits - 1)
        check_int("max_len", self.max_len, 1, 65536)
        if self.lut_bits + self.interp_bits > self.in_frac + LOG2E_FRAC:
            raise ValueError(
                f"lut_bits + interp_bits ({self.lut_bits + self.interp_bits}) must not exceed "
                f"in_frac + {LOG2E_FRAC} ({self.in_frac + LOG2E_FRAC}): reduce interp_bits"
            )

    # --- derived widths -------------------------------------------------------------------
    @property
    def t_frac(self) -> int:
        """Fraction bits kept of ``t = d * log2(e)``: ``lut_bits + interp_bits``."""
        return self.lut_bits + self.interp_bits

    @property
    def max_shift(self) -> int:
        """Right shifts at or beyond this give an exponential of 0 (``exp_frac + 2``)."""
        return self.exp_frac + 2

    @property
    def len_bits(self) -> int:
        """Bits to count up to ``max_len``."""
        return max(1, self.max_len.bit_length())

    @property
    def sum_bits(self) -> int:
        """Width of the running sum: it is at most ``max_len`` times ``exp(0)``."""
        return (self.max_len << self.exp_frac).bit_length()

    @property
    def recip_frac(self) -> int:
        """Fraction bits of ``1/sum``: enough that its rounding error stays below a quarter LSB of
        the probabilities for the longest row."""
        return self.out_frac + self.len_bits + 1

    @property
    def recip_cycles(self) -> int:
        """Cycles of the bit-serial reciprocal: one per quotient bit, plus the start cycle."""
        return self.recip_bits + 1

    @property
    def recip_bits(self) -> int:
        """Width of the reciprocal (``1/sum <= 1``)."""
        return self.recip_frac + 1

    @property
    def prob_shift(self) -> int:
        """Right shift from ``exp * recip`` to a probability."""
        return self.exp_frac + self.recip_frac - self.out_frac

    @property
    def in_container_bits(self) -> int:
        """Width of one ``x`` stream beat: ``in_bits`` rounded up to whole bytes."""
        return -(-self.in_bits // 8) * 8

    @property
    def out_container_bits(self) -> int:
        """Width of one ``p`` stream beat: ``out_bits`` rounded up to whole bytes."""
        return -(-self.out_bits // 8) * 8

    @property
    def short_name(self) -> str:
        return f"softmax_i{self.in_bits}f{self.in_frac}_l{self.max_len}_{self.digest}"

    def check_logits(self, x: npt.ArrayLike) -> IntArray:
        """``x`` as int64, or ``ValueError`` if an element does not fit ``in_bits``."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"logits must be integer raw values, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"logits must fit {self.in_bits} signed bits [{lo}, {hi}]")
        return arr

    def quantize_logits(self, x: npt.ArrayLike) -> IntArray:
        """Float logits to raw inputs (round half up, saturate)."""
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        raw = np.floor(np.asarray(x, dtype=np.float64) * (1 << self.in_frac) + 0.5)
        return np.clip(raw, lo, hi).astype(np.int64)


def exp2_lut(cfg: SoftmaxConfig) -> IntArray:
    """``round(2**(k / 2**lut_bits) * 2**exp_frac)`` for ``k = 0 .. 2**lut_bits``."""
    k = np.arange((1 << cfg.lut_bits) + 1, dtype=np.float64)
    return np.floor(np.exp2(k / (1 << cfg.lut_bits) + cfg.exp_frac) + 0.5).astype(np.int64)


def _round_shift(value: IntArray, shift: IntArray | int) -> IntArray:
    """``floor(value / 2**shift + 1/2)`` for ``shift >= 0`` (round half up)."""
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    return np.right_shift(value + half, shift)


def exp_neg(d: npt.ArrayLike, cfg: SoftmaxConfig) -> IntArray:
    """``exp(d)`` for raw differences ``d <= 0`` (``in_frac`` fraction bits), ``exp_frac`` result.

    Parameters
    ----------
    d : array_like of int
        Raw differences ``x - max``, all ``<= 0`` (at most ``in_bits + 1`` bits).
    cfg : SoftmaxConfig
        Unit parameters.

    Returns
    -------
    ndarray of int64
        ``exp(d)`` with ``exp_frac`` fraction bits, in ``[0, 2**exp_frac]``.
    """
    d = np.asarray(d, dtype=np.int64)
    if d.size and d.max() > 0:
        raise ValueError("exp_neg takes differences x - max <= 0")
    # t = d * log2(e), truncated (floor) to t_frac fraction bits.
    t = np.right_shift(d * LOG2E, cfg.in_frac + LOG2E_FRAC - cfg.t_frac)
    shift = -np.right_shift(t, cfg.t_frac)  # -floor(t) >= 0
    frac = t & ((1 << cfg.t_frac) - 1)
    index = np.right_shift(frac, cfg.interp_bits)
    low = frac & ((1 << cfg.interp_bits) - 1)
    lut = exp2_lut(cfg)
    base = lut[index]
    value = base + np.right_shift((lut[index + 1] - base) * low, cfg.interp_bits)
    # The shifter saturates at max_shift, where every table value already rounds to 0.
    shift = np.minimum(shift, cfg.max_shift)
    return _round_shift(value, shift)


def rescale(total: npt.ArrayLike, factor: npt.ArrayLike, cfg: SoftmaxConfig) -> IntArray:
    """``total * factor`` where ``factor`` is an ``exp_frac`` exponential, rounded half up."""
    product = np.asarray(total, dtype=np.int64) * np.asarray(factor, dtype=np.int64)
    return _round_shift(product, cfg.exp_frac)


def online_max_sum(
    x: npt.ArrayLike, cfg: SoftmaxConfig, mask: npt.ArrayLike | None = None
) -> tuple[IntArray, IntArray]:
    """Running maximum and sum of exponentials over the last axis, in stream order.

    Parameters
    ----------
    x : array_like of int, shape (..., L)
        Raw logits; ``L <= max_len``.
    cfg : SoftmaxConfig
        Unit parameters.
    mask : array_like of bool, shape (..., L), optional
        ``False`` excludes an element (it neither sets the maximum nor adds to the sum). Every row
        must keep at least one element.

    Returns
    -------
    maximum, total : ndarray of int64, shape (...)
        Row maximum (raw logit) and ``sum(exp(x - maximum))`` with ``exp_frac`` fraction bits,
        exactly as the hardware's running registers end the row.
    """
    x = cfg.check_logits(x)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError("softmax needs rows of at least one element (shape (..., L), L >= 1)")
    if x.shape[-1] > cfg.max_len:
        raise ValueError(
            f"row length {x.shape[-1]} exceeds max_len={cfg.max_len}: raise max_len in the config"
        )
    keep = np.ones(x.shape, dtype=bool) if mask is None else np.broadcast_to(mask, x.shape)
    if not keep.any(axis=-1).all():
        raise ValueError("every row needs at least one unmasked element")
    one = 1 << cfg.exp_frac
    started = np.zeros(x.shape[:-1], dtype=bool)
    maximum = np.zeros(x.shape[:-1], dtype=np.int64)
    total = np.zeros(x.shape[:-1], dtype=np.int64)
    for j in range(x.shape[-1]):
        xj, kj = x[..., j], keep[..., j]
        first = kj & ~started
        larger = kj & started & (xj > maximum)
        other = kj & started & ~larger
        # A new maximum rescales the sum by exp(old - new) and adds exp(0).
        grown = rescale(total, exp_neg(np.where(larger, maximum - xj, 0), cfg), cfg) + one
        added = total + exp_neg(np.where(other, xj - maximum, 0), cfg)
        total = np.where(first, one, np.where(larger, grown, np.where(other, added, total)))
        maximum = np.where(first | larger, xj, maximum)
        started |= kj
    return maximum, total


def reciprocal(total: npt.ArrayLike, cfg: SoftmaxConfig) -> IntArray:
    """``round(2**(exp_frac + recip_frac) / total)`` (round half up), i.e. ``1/sum``."""
    total = np.asarray(total, dtype=np.int64)
    if total.size and total.min() < 1 << cfg.exp_frac:
        raise ValueError("a softmax sum is at least exp(0); got a smaller one")
    numerator = 1 << (cfg.exp_frac + cfg.recip_frac)
    return (numerator + np.right_shift(total, 1)) // total


def probabilities(
    x: npt.ArrayLike, maximum: npt.ArrayLike, recip: npt.ArrayLike, cfg: SoftmaxConfig
) -> IntArray:
    """``exp(x - maximum) * recip``, rounded half up and saturated to ``out_bits``."""
    x = np.asarray(x, dtype=np.int64)
    e = exp_neg(x - np.asarray(maximum, dtype=np.int64)[..., None], cfg)
    p = _round_shift(e * np.asarray(recip, dtype=np.int64)[..., None], cfg.prob_shift)
    return np.minimum(p, (1 << cfg.out_bits) - 1)


def softmax(x: npt.ArrayLike, cfg: SoftmaxConfig, mask: npt.ArrayLike | None = None) -> IntArray:
    """Bit-exact softmax of the online unit over the last axis.

    Parameters
    ----------
    x : array_like of int, shape (..., L)
        Raw logits (``in_bits`` signed, ``in_frac`` fraction bits).
    cfg : SoftmaxConfig
        Unit parameters.
    mask : array_like of bool, optional
        ``False`` elements get probability 0 and do not take part in the row's normalisation.

    Returns
    -------
    ndarray of int64, shape (..., L)
        Probabilities with ``out_frac`` fraction bits.
    """
    x = cfg.check_logits(x)
    maximum, total = online_max_sum(x, cfg, mask)
    recip = reciprocal(total, cfg)
    if mask is None:
        return probabilities(x, maximum, recip, cfg)
    keep = np.broadcast_to(mask, x.shape)
    # A masked logit may exceed the row maximum: give it a harmless value, then probability 0.
    clean = np.where(keep, x, maximum[..., None])
    return np.where(keep, probabilities(clean, maximum, recip, cfg), 0)


def softmax_float(x: npt.ArrayLike, mask: npt.ArrayLike | None = None) -> np.ndarray:
    """Float64 reference softmax over the last axis (masked elements get 0)."""
    x = np.asarray(x, dtype=np.float64)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def pack_logits(values: npt.ArrayLike, cfg: SoftmaxConfig) -> bytes:
    """Bytes of a row of raw logits as the ``x`` stream carries them: one per beat, sign-extended
    to :attr:`SoftmaxConfig.in_container_bits` and stored little-endian."""
    v = np.asarray(values, dtype=np.int64).ravel()
    bits = cfg.in_container_bits
    words = (v & ((1 << bits) - 1)).astype("<u8")
    return words.view(np.uint8).reshape(-1, 8)[:, : bits // 8].tobytes()


def unpack_probabilities(data: bytes, cfg: SoftmaxConfig) -> np.ndarray:
    """The probabilities (int64) in bytes received on the ``p`` stream.

    Each container is read whole as an unsigned value, so stray bits above ``out_bits`` show up
    as a wrong value.
    """
    nbytes = cfg.out_container_bits // 8
    if len(data) % nbytes:
        raise ValueError(f"{len(data)} bytes is not a whole number of {nbytes}-byte beats")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, nbytes).astype(np.int64)
    return (raw << (8 * np.arange(nbytes, dtype=np.int64))).sum(axis=1)
