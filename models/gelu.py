"""GELU unit (ROM + linear interpolation, Edge-MoE style): configuration and bit-exact golden model.

``GELU(x) = x * Phi(x)`` differs from ``ReLU(x)`` by an even function::

    GELU(x) = ReLU(x) - delta(|x|),    delta(a) = a * Phi(-a)  (a >= 0)

``delta`` is small (at most 0.17, near ``a = 0.75``), smooth and decays to nothing: it is
``5.5 * Phi(-5.5) ~ 1e-7`` at ``a = 5.5``. The unit therefore stores ``delta`` at ``rom_entries``
points ``k * step`` (``step = 2**-step_log2``) covering ``0 <= a <= range`` and interpolates
linearly between neighbours; at or beyond ``range`` it outputs ``ReLU(x)``. Storing ``delta``
rather than ``GELU`` halves the table (it is even) and needs only a few fraction bits of headroom.

Integer formats (a *raw* value is an integer; its real value is ``raw / 2**frac``):

- input ``x`` and output ``y``: signed ``in_bits`` with ``in_frac`` fraction bits;
- ROM words: unsigned ``rom_bits`` with ``rom_frac`` fraction bits.

Every rounding is *round half up* (add half an LSB, then floor), which hardware does with one
adder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig, check_int

__all__ = [
    "DELTA_ARGMAX",
    "DELTA_CURVATURE",
    "GeluConfig",
    "delta_float",
    "extreme_codes",
    "gelu",
    "gelu_error_bound",
    "gelu_float",
    "gelu_plain_lut",
    "gelu_rom",
    "gelu_tanh_float",
    "pack_beats",
    "quantize_input",
    "to_float",
    "unpack_beats",
]

IntArray = npt.NDArray[np.int64]

#: Largest ``|delta''(a)| = phi(a) * |a**2 - 2|`` over ``a >= 0`` (at ``a = 0``): ``sqrt(2/pi)``.
DELTA_CURVATURE = math.sqrt(2.0 / math.pi)
#: Where ``delta`` peaks (0.16997): the root of ``delta'(a) = Phi(-a) - a * phi(a)``.
DELTA_ARGMAX = 0.7517915716


def delta_float(a: npt.ArrayLike) -> np.ndarray:
    """``delta(a) = a * Phi(-a) = ReLU(a) - GELU(a)`` in float64, for ``a >= 0``."""
    a = np.asarray(a, dtype=np.float64)
    # erfc keeps full relative precision in the tail, where 1 - Phi(a) would cancel.
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    return a * 0.5 * erfc(a / math.sqrt(2.0))


@dataclass(frozen=True)
class GeluConfig(EngineConfig):
    """Parameters of the ``GeluRom`` unit.

    Parameters
    ----------
    in_bits : int
        Width of the signed input and output (4..24).
    in_frac : int
        Fraction bits of input and output (``step_log2 .. in_bits - 1``).
    rom_entries : int
        Number of ``delta`` samples in the ROM (2..4096); they cover ``0 .. range``.
    step_log2 : int
        The sample spacing is ``step = 2**-step_log2`` (0..12; at most ``in_frac``, so that a
        sample point is an input code).
    rom_bits : int
        Width of an (unsigned) ROM word (2..32); it must hold the largest sample.
    rom_frac : int
        Fraction bits of a ROM word (``in_frac .. 30``). The default 16 makes the ROM's own
        rounding 1/64 of an output LSB at ``in_frac = 10``.
    lanes : int
        Elements per stream beat (1..64); the unit has one ROM read port per lane.

    Notes
    -----
    With the defaults the ROM holds ``delta(k/32)`` for ``k = 0..176`` (``range = 5.5``), every
    input code maps to one output code, and the output is within 0.61 LSB of the exact GELU (see
    :func:`gelu_error_bound`).
    """

    in_bits: int = 16
    in_frac: int = 10
    rom_entries: int = 177
    step_log2: int = 5
    rom_bits: int = 14
    rom_frac: int = 16
    lanes: int = 4

    def __post_init__(self) -> None:
        check_int("in_bits", self.in_bits, 4, 24)
        check_int("step_log2", self.step_log2, 0, 12)
        check_int("in_frac", self.in_frac, self.step_log2, self.in_bits - 1)
        check_int("rom_entries", self.rom_entries, 2, 4096)
        check_int("rom_frac", self.rom_frac, self.in_frac, 30)
        check_int("rom_bits", self.rom_bits, 2, 32)
        check_int("lanes", self.lanes, 1, 64)
        if self.range_code > 1 << (self.in_bits - 1):
            raise ValueError(
                f"ROM range (rom_entries - 1) * 2**-step_log2 = {self.range} exceeds the input "
                f"range +-{2.0 ** (self.in_bits - 1 - self.in_frac)} of in_bits={self.in_bits}, "
                f"in_frac={self.in_frac}: reduce rom_entries or raise in_bits"
            )
        largest = int(gelu_rom(self).max())
        if largest >= 1 << self.rom_bits:
            need = largest.bit_length()
            raise ValueError(
                f"rom_bits={self.rom_bits} cannot hold the largest ROM entry {largest} "
                f"(rom_frac={self.rom_frac}): use rom_bits >= {need}"
            )

    # --- derived quantities ---------------------------------------------------------------
    @property
    def step(self) -> float:
        """Sample spacing of the ROM, ``2**-step_log2``."""
        return 2.0**-self.step_log2

    @property
    def range(self) -> float:
        """``(rom_entries - 1) * step``: at and beyond it the unit outputs ``ReLU(x)``."""
        return (self.rom_entries - 1) * self.step

    @property
    def low_bits(self) -> int:
        """Input bits below the ROM index (``in_frac - step_log2``): the interpolation weight."""
        return self.in_frac - self.step_log2

    @property
    def range_code(self) -> int:
        """``range`` as a raw input code: ``(rom_entries - 1) << low_bits``."""
        return (self.rom_entries - 1) << self.low_bits

    @property
    def align_shift(self) -> int:
        """Right shift from the interpolated value (``rom_frac + low_bits`` fraction bits) to the
        output (``in_frac``)."""
        return self.rom_frac + self.low_bits - self.in_frac

    @property
    def container_bits(self) -> int:
        """Bits of one lane on the stream: ``in_bits`` rounded up to whole bytes."""
        return -(-self.in_bits // 8) * 8

    @property
    def beat_bits(self) -> int:
        """Width of a stream beat, ``lanes * container_bits``."""
        return self.lanes * self.container_bits

    @property
    def code_min(self) -> int:
        """Smallest raw input code."""
        return -(1 << (self.in_bits - 1))

    @property
    def code_max(self) -> int:
        """Largest raw input code."""
        return (1 << (self.in_bits - 1)) - 1

    # --- identity -------------------------------------------------------------------------
    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``gelu_i16f10_l4_1a2b3c4d5e``."""
        return f"gelu_i{self.in_bits}f{self.in_frac}_l{self.lanes}_{self.digest}"

    # --- input checking -------------------------------------------------------------------
    def check_input(self, x: npt.ArrayLike) -> IntArray:
        """``x`` as int64, or ``ValueError`` if it is not integer or does not fit ``in_bits``."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise ValueError(
                f"GELU inputs must be integer raw codes, got dtype {arr.dtype}: "
                "convert floats with quantize_input"
            )
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < self.code_min or arr.max() > self.code_max):
            raise ValueError(
                f"GELU inputs must fit {self.in_bits} signed bits "
                f"[{self.code_min}, {self.code_max}]"
            )
        return arr


def gelu_rom(cfg: GeluConfig) -> IntArray:
    """ROM contents: ``floor(delta(k * step) * 2**rom_frac + 1/2)`` for ``k = 0 .. rom_entries-1``.

    Parameters
    ----------
    cfg : GeluConfig
        Unit parameters (only ``rom_entries``, ``step_log2`` and ``rom_frac`` are used).

    Returns
    -------
    ndarray of int64, shape (rom_entries,)
        Non-negative ROM words (``delta(0) = 0``).
    """
    a = np.arange(cfg.rom_entries, dtype=np.float64) * 2.0**-cfg.step_log2
    return np.floor(delta_float(a) * 2.0**cfg.rom_frac + 0.5).astype(np.int64)


def gelu(x_raw: npt.ArrayLike, cfg: GeluConfig) -> IntArray:
    """Bit-exact golden model of the ``GeluRom`` unit, elementwise.

    With ``s = low_bits = in_frac - step_log2`` and ``rom = gelu_rom(cfg)``, each raw input
    ``x`` becomes ``y`` by these integer steps:

    1. ``a = |x|``, exact (``in_bits`` unsigned bits hold ``|min code|``).
    2. ``idx = a >> s`` (the sample at or below ``a``) and ``low = a & (2**s - 1)`` (the
       position between samples, in units of ``2**-s`` steps).
    3. If ``idx >= rom_entries - 1`` (``a >= range``): ``delta = 0``, so ``y = ReLU(x)``.
    4. Otherwise interpolate without rounding: ``v = (rom[idx] << s) + (rom[idx+1] - rom[idx]) *
       low``. This is ``rom[idx] + (rom[idx+1] - rom[idx]) * low / 2**s`` exactly, with
       ``rom_frac + s`` fraction bits; ``v >= 0`` since it lies between two ROM words.
    5. Align to the output with round half up: ``delta = (v + 2**(t-1)) >> t`` with
       ``t = align_shift = rom_frac + s - in_frac`` (``delta = v`` when ``t = 0``). The
       interpolation's division by ``2**s`` and the ``rom_frac -> in_frac`` alignment are one
       shift, so there is a single rounding.
    6. ``y = ReLU(x) - delta``, saturated to ``in_bits`` signed. (It never saturates: ``0 <=
       delta`` and ``delta <= 0.17`` rounded, so ``-1 < y <= x``; the clamp mirrors the
       hardware's output stage.)

    Parameters
    ----------
    x_raw : array_like of int
        Raw inputs, ``in_bits`` signed with ``in_frac`` fraction bits.
    cfg : GeluConfig
        Unit parameters.

    Returns
    -------
    ndarray of int64, same shape as ``x_raw``
        Raw outputs in the input's format.

    Raises
    ------
    ValueError
        Non-integer input or a value outside the ``in_bits`` range.
    """
    x = cfg.check_input(x_raw)
    s = cfg.low_bits
    rom = gelu_rom(cfg)
    a = np.abs(x)
    idx = np.right_shift(a, s)
    low = a & ((1 << s) - 1)
    inside = idx < cfg.rom_entries - 1
    i = np.where(inside, idx, 0)  # any valid address; masked below
    base = rom[i]
    v = np.left_shift(base, s) + (rom[i + 1] - base) * low
    t = cfg.align_shift
    delta = np.right_shift(v + (1 << (t - 1)), t) if t > 0 else v
    delta = np.where(inside, delta, 0)
    y = np.maximum(x, 0) - delta
    return np.clip(y, cfg.code_min, cfg.code_max)


def gelu_error_bound(cfg: GeluConfig) -> float:
    """Upper bound on ``|to_float(gelu(x)) - GELU(to_float(x))|`` over all input codes.

    The sum of: half an output LSB (final rounding), half a ROM LSB (the ROM words' rounding,
    which interpolation does not enlarge), the linear-interpolation error ``max|delta''| *
    step**2 / 8`` and the largest ``delta`` beyond the ROM (``delta(range)`` when ``range`` is
    past the peak of ``delta``, else the peak value 0.17).
    """
    rounding = 2.0 ** -(cfg.in_frac + 1) + 2.0 ** -(cfg.rom_frac + 1)
    interpolation = DELTA_CURVATURE * cfg.step**2 / 8
    # Past its peak delta decreases, so the largest value left out is delta(range).
    tail = float(delta_float(max(cfg.range, DELTA_ARGMAX)))
    return rounding + interpolation + tail


def gelu_float(x: npt.ArrayLike) -> np.ndarray:
    """Exact GELU, ``x * Phi(x) = x * erfc(-x / sqrt(2)) / 2``, in float64."""
    x = np.asarray(x, dtype=np.float64)
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    return x * 0.5 * erfc(-x / math.sqrt(2.0))


def gelu_tanh_float(x: npt.ArrayLike) -> np.ndarray:
    """The tanh approximation ``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3)))``, float64."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_plain_lut(x_raw: npt.ArrayLike, cfg: GeluConfig) -> IntArray:
    """A plain nearest-entry table of GELU itself, as a baseline of the same size as the ROM.

    ``rom_entries`` samples ``p_j = -range + j * 2 * range / (rom_entries - 1)`` of GELU, each
    rounded half up to ``in_frac`` bits; an input inside ``[-range, range]`` takes the nearest
    sample (ties to the upper one), outside it ``ReLU(x)``. Same output format as :func:`gelu`.

    Parameters
    ----------
    x_raw : array_like of int
        Raw inputs (``in_bits`` signed, ``in_frac`` fraction bits).
    cfg : GeluConfig
        Table size and number formats.

    Returns
    -------
    ndarray of int64
        Raw outputs.
    """
    x = cfg.check_input(x_raw)
    n = cfg.rom_entries
    spacing = 2.0 * cfg.range / (n - 1)
    points = -cfg.range + np.arange(n) * spacing
    table = np.floor(gelu_float(points) * 2.0**cfg.in_frac + 0.5).astype(np.int64)
    xf = to_float(x, cfg)
    j = np.clip(np.floor((xf + cfg.range) / spacing + 0.5), 0, n - 1).astype(np.int64)
    inside = np.abs(x) <= cfg.range_code
    return np.where(inside, table[j], np.maximum(x, 0))


def quantize_input(x_float: npt.ArrayLike, cfg: GeluConfig) -> IntArray:
    """Float values to raw input codes: round half up, saturate to ``in_bits``."""
    raw = np.floor(np.asarray(x_float, dtype=np.float64) * 2.0**cfg.in_frac + 0.5)
    return np.clip(raw, cfg.code_min, cfg.code_max).astype(np.int64)


def to_float(raw: npt.ArrayLike, cfg: GeluConfig) -> np.ndarray:
    """Raw input or output codes to their real values, ``raw / 2**in_frac``."""
    return np.asarray(raw, dtype=np.float64) * 2.0**-cfg.in_frac


def extreme_codes(cfg: GeluConfig) -> np.ndarray:
    """Boundary input codes: the code range's ends, zero, +-1 LSB, the ROM range ``+-range`` and
    +-1 LSB around it, and the first ROM segment's ends; in that order, without repeats."""
    r, seg = cfg.range_code, 1 << cfg.low_bits
    wanted = [cfg.code_min, cfg.code_min + 1, cfg.code_max, cfg.code_max - 1, 0, 1, -1]
    wanted += [r - 1, r, r + 1, -r + 1, -r, -r - 1, seg - 1, seg, seg + 1, -seg + 1, -seg]
    wanted += [-seg - 1, r - seg, -(r - seg)]
    codes = [int(np.clip(c, cfg.code_min, cfg.code_max)) for c in wanted]
    return np.array(list(dict.fromkeys(codes)), dtype=np.int64)


def pack_beats(values: npt.ArrayLike, cfg: GeluConfig) -> bytes:
    """Bytes of a sequence of raw codes as the stream carries them.

    Values are taken ``lanes`` per beat (lane 0 in the least significant bits), each sign-extended
    to ``container_bits`` and stored little-endian; the tail is zero-padded to a whole beat.
    """
    v = np.asarray(values, dtype=np.int64).ravel()
    v = np.concatenate([v, np.zeros(-len(v) % cfg.lanes, dtype=np.int64)])
    nbytes = cfg.container_bits // 8
    words = (v & ((1 << cfg.container_bits) - 1)).astype("<u8")
    return words.view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()


def unpack_beats(data: bytes, cfg: GeluConfig) -> np.ndarray:
    """Inverse of :func:`pack_beats`: every lane of every beat as int64 (padding included).

    Each container is read as a signed ``container_bits`` value, so a lane that is not properly
    sign-extended shows up as a wrong value.
    """
    nbytes = cfg.container_bits // 8
    if len(data) % (nbytes * cfg.lanes):
        raise ValueError(
            f"{len(data)} bytes is not a whole number of {nbytes * cfg.lanes}-byte beats"
        )
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, nbytes).astype(np.int64)
    words = (raw << (8 * np.arange(nbytes, dtype=np.int64))).sum(axis=1)
    sign = 1 << (cfg.container_bits - 1)
    return (words ^ sign) - sign
