"""GEMM engine configuration and bit-exact golden model.

One :class:`GemmConfig` describes a ``TemporalGemm`` engine: the golden model, the Amaranth RTL,
the register map, the cycle model and the build-cache name all derive from it.

The engine computes ``C = requantize(A @ B)`` with int8 operands, ``acc_bits`` accumulators and
either raw accumulator output or requantized ``out_bits`` output. Its operand streams are in *tile
order* (see :func:`stream_operands`): the array is a fixed ``rows x cols`` block of MACs and any M,
N, K is done by iterating over output tiles, so the hardware does not grow with the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.models.config import EngineConfig, check_int
from tessera.models.rounding import Overflow, Rounding, int_range, requantize, wrap

__all__ = [
    "GemmConfig",
    "Requant",
    "gemm",
    "gemm_tiles",
    "output_beats",
    "pack_stream",
    "stream_operands",
]

OPERAND_BITS = 8
MULTIPLIER_BITS = 31
MAX_SHIFT = 63


@dataclass(frozen=True)
class GemmConfig(EngineConfig):
    """Generator parameters of a ``TemporalGemm`` engine.

    Parameters
    ----------
    rows, cols : int
        Shape of the MAC array (1..64 each): ``rows * cols`` int8 multiply-accumulators. One output
        tile is ``rows x cols`` elements of C.
    acc_bits : int
        Accumulator width (16..32). Sums wrap modulo ``2**acc_bits`` as the hardware does.
    out_bits : int
        Width of requantized outputs (2..16), signed.
    dim_bits : int
        Width of the M, N, K run-time registers (2..32): each dimension is ``1 .. 2**dim_bits - 1``.
    rounding : Rounding
        Rounding of the requantization right shift.
    overflow : Overflow
        Overflow handling of the requantized output.
    a_stream_bytes, b_stream_bytes : int, optional
        Data width in bytes of the A and B AXI4-Stream buses; default ``rows`` and ``cols`` (one
        k-slice per beat). A width that divides the slice gathers several beats per slice (the
        array then runs at that fraction of its rate); a multiple of it carries several slices
        per beat.
    """

    rows: int = 4
    cols: int = 4
    acc_bits: int = 32
    out_bits: int = 8
    dim_bits: int = 16
    rounding: Rounding = Rounding.RND_INF
    overflow: Overflow = Overflow.SAT
    a_stream_bytes: int | None = None
    b_stream_bytes: int | None = None

    def __post_init__(self) -> None:
        check_int("rows", self.rows, 1, 64)
        check_int("cols", self.cols, 1, 64)
        check_int("acc_bits", self.acc_bits, 16, 32)
        check_int("out_bits", self.out_bits, 2, 16)
        check_int("dim_bits", self.dim_bits, 2, 32)
        for name, lanes in (("a_stream_bytes", self.rows), ("b_stream_bytes", self.cols)):
            width = getattr(self, name)
            if width is None:
                continue
            check_int(name, width, 1, 256)
            if width % lanes and lanes % width:
                raise ValueError(
                    f"{name}={width} must divide or be a multiple of the {lanes}-byte slice "
                    f"({'rows' if name[0] == 'a' else 'cols'})"
                )
        self._coerce_modes()

    @property
    def max_dim(self) -> int:
        """Largest M, N or K the run-time registers hold."""
        return (1 << self.dim_bits) - 1

    @property
    def a_beat_bytes(self) -> int:
        """Bytes per beat of the A stream."""
        return self.a_stream_bytes or self.rows

    @property
    def b_beat_bytes(self) -> int:
        """Bytes per beat of the B stream."""
        return self.b_stream_bytes or self.cols

    @property
    def beats_per_slice(self) -> int:
        """Bus beats the slower operand stream needs per k-slice (1 unless a bus is narrower)."""
        return max(1, self.rows // self.a_beat_bytes, self.cols // self.b_beat_bytes)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per cycle."""
        return self.rows * self.cols

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``gemm_r4c4_1a2b3c4d5e``."""
        return f"gemm_r{self.rows}c{self.cols}_{self.digest}"

    def ideal_cycles(self, m: int, n: int, k: int) -> float:
        """``M*N*K / (rows*cols)``: cycles of a fully used array with no padding or overhead."""
        return m * n * k / self.macs

    def check_shape(self, m: int, n: int, k: int) -> None:
        """Raise ``ValueError`` if (M, N, K) cannot be run on this engine."""
        for name, v in (("M", m), ("N", n), ("K", k)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
            if v > self.max_dim:
                raise ValueError(
                    f"{name}={v} exceeds the {self.dim_bits}-bit size register "
                    f"(max {self.max_dim}); generate the engine with a larger dim_bits"
                )


@dataclass(frozen=True)
class Requant:
    """Run-time requantization parameters: ``y = round(acc * multiplier / 2**shift) + zero_point``.

    Parameters
    ----------
    multiplier : int
        Unsigned fixed-point multiplier, ``0 .. 2**31 - 1``.
    shift : int
        Right shift, ``0 .. 63``.
    zero_point : int
        Output zero point, within the signed ``out_bits`` range of the engine.
    """

    multiplier: int
    shift: int
    zero_point: int = 0

    def __post_init__(self) -> None:
        check_int("multiplier", self.multiplier, 0, (1 << MULTIPLIER_BITS) - 1)
        check_int("shift", self.shift, 0, MAX_SHIFT)
        check_int("zero_point", self.zero_point, -(1 << 15), (1 << 15) - 1)


def _check_operands(a: np.ndarray, b: np.ndarray, cfg: GemmConfig) -> tuple[int, int, int]:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"A and B must be 2-D, got shapes {a.shape} and {b.shape}")
    m, k = a.shape
    k2, n = b.shape
    if k != k2:
        raise ValueError(f"inner dimensions differ: A is {a.shape}, B is {b.shape}")
    cfg.check_shape(m, n, k)
    lo, hi = int_range(OPERAND_BITS, True)
    for name, x in (("A", a), ("B", b)):
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {x.dtype}")
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValueError(f"{name} has values outside int8 [{lo}, {hi}]")
    return m, n, k


def gemm(
    a: np.ndarray, b: np.ndarray, cfg: GemmConfig, requant: Requant | None = None
) -> np.ndarray:
    """Bit-exact golden model of the ``TemporalGemm`` engine.

    Parameters
    ----------
    a : ndarray of int, shape (M, K)
        int8-valued left operand.
    b : ndarray of int, shape (K, N)
        int8-valued right operand.
    cfg : GemmConfig
        Engine configuration (accumulator width, output format, rounding).
    requant : Requant, optional
        Requantization parameters; ``None`` returns the raw accumulators.

    Returns
    -------
    ndarray of int64, shape (M, N)
        Raw accumulators (wrapped to ``acc_bits``) or requantized ``out_bits`` values.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    _check_operands(a, b, cfg)
    # |a*b| <= 2**14, so the int64 sum is exact for any K the registers allow (< 2**32).
    acc = wrap(a.astype(np.int64) @ b.astype(np.int64), cfg.acc_bits, True)
    if requant is None:
        return acc
    return requantize(
        acc,
        requant.multiplier,
        requant.shift,
        zero_point=requant.zero_point,
        bits=cfg.out_bits,
        signed=True,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
    )


def gemm_tiles(m: int, n: int, cfg: GemmConfig) -> tuple[int, int]:
    """Number of output tiles along M and N: ``(ceil(M / rows), ceil(N / cols))``."""
    return -(-m // cfg.rows), -(-n // cfg.cols)


def stream_operands(a: np.ndarray, b: np.ndarray, cfg: GemmConfig) -> tuple[np.ndarray, np.ndarray]:
    """Order A and B as the engine's AXI-Stream inputs consume them.

    Output tiles are visited row-major; for tile ``(ti, tj)`` and each ``k`` in ``0..K-1`` the A
    stream carries one beat ``A[ti*rows : ti*rows+rows, k]`` (``rows`` int8 lanes, lane 0 in the
    least significant byte) and the B stream one beat ``B[k, tj*cols : tj*cols+cols]``. Lanes past
    the matrix edge are don't-care for the engine (which pads internally); they are sent as zeros.

    Returns
    -------
    a_beats : ndarray of int8, shape (tiles * K, rows)
    b_beats : ndarray of int8, shape (tiles * K, cols)
    """
    a = np.asarray(a)
    b = np.asarray(b)
    m, n, k = _check_operands(a, b, cfg)
    tm, tn = gemm_tiles(m, n, cfg)
    ap = np.zeros((tm * cfg.rows, k), dtype=np.int8)
    ap[:m] = a
    bp = np.zeros((k, tn * cfg.cols), dtype=np.int8)
    bp[:, :n] = b
    a_t = ap.reshape(tm, cfg.rows, k).transpose(0, 2, 1)  # (tm, K, rows)
    b_t = bp.reshape(k, tn, cfg.cols).transpose(1, 0, 2)  # (tn, K, cols)
    a_beats = np.broadcast_to(a_t[:, None], (tm, tn, k, cfg.rows)).reshape(-1, cfg.rows)
    b_beats = np.broadcast_to(b_t[None, :], (tm, tn, k, cfg.cols)).reshape(-1, cfg.cols)
    return np.ascontiguousarray(a_beats), np.ascontiguousarray(b_beats)


def pack_stream(slices: np.ndarray, beat_bytes: int) -> bytes:
    """Bytes of a slice stream as the AXI4-Stream bus carries them.

    Slices are concatenated (lane 0 first) and the tail is zero-padded to a whole number of
    ``beat_bytes`` beats; the engine discards the padding after the last slice.
    """
    data = np.ascontiguousarray(slices, dtype=np.int8).tobytes()
    return data + bytes(-len(data) % beat_bytes)


def output_beats(c: np.ndarray, cfg: GemmConfig) -> tuple[np.ndarray, np.ndarray]:
    """Order a result matrix as the engine's C stream emits it.

    For each output tile (row-major) the engine emits one beat per *valid* row of the tile, each
    beat ``cols`` 32-bit lanes; lanes past column N are flagged invalid (``tkeep`` low, value 0).

    Returns
    -------
    beats : ndarray of int64, shape (beats, cols)
    valid : ndarray of bool, shape (beats, cols)
        Which lanes carry data.
    """
    c = np.asarray(c)
    m, n = c.shape
    tm, tn = gemm_tiles(m, n, cfg)
    cp = np.zeros((tm * cfg.rows, tn * cfg.cols), dtype=np.int64)
    cp[:m, :n] = c
    vp = np.zeros(cp.shape, dtype=bool)
    vp[:m, :n] = True
    tiles = cp.reshape(tm, cfg.rows, tn, cfg.cols).transpose(0, 2, 1, 3)
    vt = vp.reshape(tm, cfg.rows, tn, cfg.cols).transpose(0, 2, 1, 3)
    row_valid = vt.any(axis=3)  # padded rows are not emitted at all
    return tiles[row_valid], vt[row_valid]
