"""Epilogue unit configuration and bit-exact golden model.

An ``Epilogue`` is the elementwise tail of a linear layer. It takes the raw accumulators of a GEMM
(in the GEMM's C-stream order) and applies, each stage optional by configuration:

1. **bias**: ``acc + bias[col]`` (int32 biases), wrapped (or saturated) to ``acc_bits``;
2. **per-column requantization**: ``requantize(x, multiplier[col], shift[col])`` to ``out_bits``;
3. **GELU** (the ROM unit of :mod:`tessera.models.gelu`, input and output ``out_bits``) followed by
   one per-tensor requantization to ``act_bits``;
4. **residual add**: ``saturate(x + residual, res_bits)``.

The run-time parameters (biases, multipliers and shifts per column, the GELU requantization and
the number of rows) arrive as one packet on the ``params`` stream before a run (see
:func:`pack_params`); the unit learns the number of columns N from the packet's length.

Streams are in *tile order*: ``rows x cols`` tiles visited row-major, one beat per valid row of a
tile, ``cols`` lanes per beat, lanes past column N flagged invalid (``tkeep`` low). With
``rows = 1`` this is plain row-major order in beats of ``cols`` elements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig, check_int
from tessera.models.gelu import GeluConfig, gelu
from tessera.models.gemm import GemmConfig
from tessera.models.rounding import (
    Overflow,
    Rounding,
    _coerce_enum,
    int_range,
    requantize,
    saturate,
    wrap,
)

__all__ = [
    "ACC_LANE_BITS",
    "PARAM_BEAT_BYTES",
    "EpilogueConfig",
    "EpilogueParams",
    "epilogue",
    "from_tiles",
    "pack_input",
    "pack_params",
    "pack_residual",
    "tile_beats",
    "unpack_output",
]

IntArray = npt.NDArray[np.int64]

#: Width of one accumulator lane on the input stream (the GEMM's C lanes).
ACC_LANE_BITS = 32
#: Bytes of one ``params`` beat: three little-endian 32-bit words.
PARAM_BEAT_BYTES = 12
MULTIPLIER_BITS = 31
MAX_SHIFT = 63


@dataclass(frozen=True)
class EpilogueConfig(EngineConfig):
    """Generator parameters of an ``Epilogue`` unit.

    Parameters
    ----------
    rows : int
        Tile height of the input order (1..64): the ``rows`` of the GEMM that feeds the unit, or
        1 for row-major streams.
    cols : int
        Lanes per beat (1..64): the GEMM's ``cols``.
    max_cols : int
        Most columns N a parameter packet may carry (1..65535); sets the parameter memory.
    dim_bits : int
        Width of the row count M of a run (2..32): ``1 <= M <= 2**dim_bits - 1``.
    acc_bits : int
        Width of the signed accumulators on the input lanes (16..32).
    bias : bool
        Add a per-column int32 bias.
    bias_overflow : Overflow
        How ``acc + bias`` is fitted to ``acc_bits``: ``WRAP`` (what an accumulator preloaded with
        the bias does) or ``SAT``.
    requant : bool
        Per-column requantization to ``out_bits``; without it the value is saturated to
        ``out_bits``.
    out_bits : int
        Signed width after the requantization (2..16; 8 for int8 outputs, 16 for a residual
        branch or a GELU input).
    gelu : GeluConfig or None
        GELU unit after the requantization (its ``in_bits`` must equal ``out_bits``; its
        ``lanes`` are set to ``cols``), followed by a per-tensor requantization to ``act_bits``.
    act_bits : int
        Signed width after the GELU requantization (2..16).
    residual : bool
        Add a second input stream (same layout as the output), saturating to ``res_bits``.
    res_bits : int
        Signed width of the residual stream and of the sum (2..16).
    rounding : Rounding
        Rounding of both requantizations.
    overflow : Overflow
        Overflow handling of both requantizations.
    """

    rows: int = 4
    cols: int = 4
    max_cols: int = 256
    dim_bits: int = 16
    acc_bits: int = 32
    bias: bool = True
    bias_overflow: Overflow = Overflow.WRAP
    requant: bool = True
    out_bits: int = 8
    gelu: GeluConfig | None = None
    act_bits: int = 8
    residual: bool = False
    res_bits: int = 16
    rounding: Rounding = Rounding.RND_INF
    overflow: Overflow = Overflow.SAT

    def __post_init__(self) -> None:
        check_int("rows", self.rows, 1, 64)
        check_int("cols", self.cols, 1, 64)
        check_int("max_cols", self.max_cols, 1, 65535)
        check_int("dim_bits", self.dim_bits, 2, 32)
        check_int("acc_bits", self.acc_bits, 16, 32)
        check_int("out_bits", self.out_bits, 2, 16)
        check_int("act_bits", self.act_bits, 2, 16)
        check_int("res_bits", self.res_bits, 2, 16)
        for name in ("bias", "requant", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self._coerce_modes()
        bias_overflow = _coerce_enum(Overflow, self.bias_overflow, "bias_overflow")
        if bias_overflow not in (Overflow.WRAP, Overflow.SAT):
            raise ValueError(f"bias_overflow must be WRAP or SAT, got {bias_overflow.value}")
        object.__setattr__(self, "bias_overflow", bias_overflow)
        gelu_cfg = self.gelu
        if isinstance(gelu_cfg, dict):
            gelu_cfg = GeluConfig.from_dict(gelu_cfg)
        if gelu_cfg is not None:
            if not isinstance(gelu_cfg, GeluConfig):
                raise ValueError(f"gelu must be a GeluConfig or None, got {gelu_cfg!r}")
            if gelu_cfg.in_bits != self.out_bits:
                raise ValueError(
                    f"gelu.in_bits={gelu_cfg.in_bits} must equal out_bits={self.out_bits}: the "
                    "GELU unit takes the requantized values (set out_bits to the GELU width)"
                )
            # The unit's GELU runs one lane per epilogue lane.
            gelu_cfg = dataclasses.replace(gelu_cfg, lanes=self.cols)
        object.__setattr__(self, "gelu", gelu_cfg)

    @classmethod
    def for_gemm(cls, gemm: GemmConfig, **fields: Any) -> EpilogueConfig:
        """The epilogue of ``gemm``'s C stream: its ``rows``, ``cols``, ``acc_bits``,
        ``dim_bits``, ``rounding`` and ``overflow``, plus ``fields``."""
        base = {
            "rows": gemm.rows,
            "cols": gemm.cols,
            "acc_bits": gemm.acc_bits,
            "dim_bits": gemm.dim_bits,
            "rounding": gemm.rounding,
            "overflow": gemm.overflow,
        }
        return cls(**{**base, **fields})

    # --- derived quantities ---------------------------------------------------------------
    @property
    def max_rows(self) -> int:
        """Largest row count M of a run."""
        return (1 << self.dim_bits) - 1

    @property
    def final_bits(self) -> int:
        """Signed width of the output values."""
        if self.residual:
            return self.res_bits
        return self.act_bits if self.gelu is not None else self.out_bits

    @property
    def out_lane_bytes(self) -> int:
        """Bytes of one output (and residual) lane: ``final_bits`` rounded up to whole bytes."""
        return -(-self.final_bits // 8)

    @property
    def res_lane_bytes(self) -> int:
        """Bytes of one residual lane (the output lane, as the streams share their layout)."""
        return self.out_lane_bytes

    @property
    def param_depth(self) -> int:
        """Words of each lane's parameter memory: ``ceil(max_cols / cols)``."""
        return -(-self.max_cols // self.cols)

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``epilogue_r4c4_b1q1g0r0_1a2b3c4d5e``."""
        flags = (
            f"b{int(self.bias)}q{int(self.requant)}g{int(self.gelu is not None)}"
            f"r{int(self.residual)}"
        )
        return f"epilogue_r{self.rows}c{self.cols}_{flags}_{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (enums as their values, ``gelu`` as a dict or None)."""
        out = super().to_dict()
        out["gelu"] = None if self.gelu is None else self.gelu.to_dict()
        return out

    def check_shape(self, m: int, n: int) -> None:
        """Raise ``ValueError`` if an ``(M, N)`` run does not fit the unit."""
        for name, value, hi in (("M", m, self.max_rows), ("N", n, self.max_cols)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not 1 <= value <= hi:
                field = "dim_bits" if name == "M" else "max_cols"
                raise ValueError(
                    f"{name}={value} is outside 1..{hi}; generate the unit with a larger {field}"
                )


@dataclass(frozen=True, eq=False)
class EpilogueParams:
    """Run-time parameters of one run: the contents of a ``params`` packet (without M).

    Parameters
    ----------
    bias : array_like of int, shape (N,)
        Per-column bias, int32 (ignored without the bias stage).
    multiplier : array_like of int, shape (N,)
        Per-column requantization multiplier, ``0 .. 2**31 - 1``.
    shift : array_like of int, shape (N,)
        Per-column right shift, ``0 .. 63``.
    gelu_multiplier, gelu_shift : int
        Per-tensor requantization after the GELU (ignored without the GELU stage).
    """

    bias: IntArray
    multiplier: IntArray
    shift: IntArray
    gelu_multiplier: int = 0
    gelu_shift: int = 0

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("bias", "multiplier", "shift"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
            arrays[name] = arr.astype(np.int64)
        n = len(arrays["bias"])
        if n < 1 or any(len(a) != n for a in arrays.values()):
            raise ValueError(
                "bias, multiplier and shift must have the same length N >= 1, got "
                + ", ".join(str(len(a)) for a in arrays.values())
            )
        for name, lo, hi in (
            ("bias", *int_range(32, True)),
            ("multiplier", 0, (1 << MULTIPLIER_BITS) - 1),
            ("shift", 0, MAX_SHIFT),
        ):
            a = arrays[name]
            if a.min() < lo or a.max() > hi:
                raise ValueError(f"{name} values must be within [{lo}, {hi}]")
            object.__setattr__(self, name, a)
        check_int("gelu_multiplier", self.gelu_multiplier, 0, (1 << MULTIPLIER_BITS) - 1)
        check_int("gelu_shift", self.gelu_shift, 0, MAX_SHIFT)

    @property
    def n(self) -> int:
        """Number of columns N."""
        return len(self.bias)

    @classmethod
    def per_tensor(cls, n: int, multiplier: int, shift: int) -> EpilogueParams:
        """One multiplier and shift for all ``n`` columns, zero biases."""
        check_int("n", n, 1, 65535)
        return cls(
            np.zeros(n, dtype=np.int64),
            np.full(n, multiplier, dtype=np.int64),
            np.full(n, shift, dtype=np.int64),
        )


def _check_values(x: np.ndarray, bits: int, name: str) -> IntArray:
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {x.dtype}")
    lo, hi = int_range(bits, True)
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"{name} has values outside the signed {bits}-bit range [{lo}, {hi}]")
    return x.astype(np.int64)


def epilogue(
    acc: npt.ArrayLike,
    params: EpilogueParams,
    cfg: EpilogueConfig,
    residual: npt.ArrayLike | None = None,
) -> IntArray:
    """Bit-exact golden model of the ``Epilogue`` unit.

    Parameters
    ----------
    acc : array_like of int, shape (M, N)
        Signed ``acc_bits`` accumulators.
    params : EpilogueParams
        Per-column bias / requantization (length N) and the GELU requantization.
    cfg : EpilogueConfig
        Which stages run, and the number formats.
    residual : array_like of int, shape (M, N), optional
        Signed ``res_bits`` values; required exactly when ``cfg.residual``.

    Returns
    -------
    ndarray of int64, shape (M, N)
        Signed ``cfg.final_bits`` outputs.
    """
    x = np.asarray(acc)
    if x.ndim != 2:
        raise ValueError(f"acc must be 2-D (M, N), got shape {x.shape}")
    m, n = x.shape
    cfg.check_shape(m, n)
    if params.n != n:
        raise ValueError(f"params have {params.n} columns, acc has N={n}: give one per column")
    x = _check_values(x, cfg.acc_bits, "acc")
    if cfg.bias:
        total = x + params.bias
        if cfg.bias_overflow is Overflow.WRAP:
            x = wrap(total, cfg.acc_bits, True)
        else:
            x = saturate(total, cfg.acc_bits, True)
    if cfg.requant:
        x = requantize(
            x,
            params.multiplier,
            params.shift,
            0,
            bits=cfg.out_bits,
            signed=True,
            rounding=cfg.rounding,
            overflow=cfg.overflow,
        )
    else:
        x = saturate(x, cfg.out_bits, True)
    if cfg.gelu is not None:
        x = requantize(
            gelu(x, cfg.gelu),
            params.gelu_multiplier,
            params.gelu_shift,
            0,
            bits=cfg.act_bits,
            signed=True,
            rounding=cfg.rounding,
            overflow=cfg.overflow,
        )
    if cfg.residual:
        if residual is None:
            raise ValueError("this epilogue adds a residual: pass residual of shape (M, N)")
        res = np.asarray(residual)
        if res.shape != (m, n):
            raise ValueError(f"residual must have shape {(m, n)}, got {res.shape}")
        x = saturate(x + _check_values(res, cfg.res_bits, "residual"), cfg.res_bits, True)
    elif residual is not None:
        raise ValueError("this epilogue has no residual stage: do not pass residual")
    return x


# --- stream layouts ---------------------------------------------------------------------------
def tile_beats(x: npt.ArrayLike, cfg: EpilogueConfig) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Order an (M, N) matrix as the unit's streams carry it.

    Tiles of ``rows x cols`` row-major; per tile one beat per row below M; lanes past N are 0 and
    flagged invalid.

    Returns
    -------
    beats : ndarray of int64, shape (beats, cols)
    valid : ndarray of bool, shape (beats, cols)
    """
    arr = np.asarray(x, dtype=np.int64)
    if arr.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {arr.shape}")
    m, n = arr.shape
    tm, tn = -(-m // cfg.rows), -(-n // cfg.cols)
    padded = np.zeros((tm * cfg.rows, tn * cfg.cols), dtype=np.int64)
    padded[:m, :n] = arr
    valid = np.zeros(padded.shape, dtype=bool)
    valid[:m, :n] = True
    tiles = padded.reshape(tm, cfg.rows, tn, cfg.cols).transpose(0, 2, 1, 3)
    vt = valid.reshape(tm, cfg.rows, tn, cfg.cols).transpose(0, 2, 1, 3)
    rows_kept = vt.any(axis=3)
    return tiles[rows_kept], vt[rows_kept]


def from_tiles(beats: npt.ArrayLike, m: int, n: int, cfg: EpilogueConfig) -> IntArray:
    """Inverse of :func:`tile_beats`: the (M, N) matrix of a tile-ordered beat array."""
    b = np.asarray(beats, dtype=np.int64)
    _, valid = tile_beats(np.zeros((m, n), dtype=np.int64), cfg)
    if b.shape != valid.shape:
        raise ValueError(f"expected {valid.shape} beats x lanes for M={m}, N={n}, got {b.shape}")
    tm, tn = -(-m // cfg.rows), -(-n // cfg.cols)
    padded = np.zeros((tm, tn, cfg.rows, cfg.cols), dtype=np.int64)
    rows_kept = np.zeros((tm, tn, cfg.rows), dtype=bool)
    rows_kept[:] = (np.arange(tm * cfg.rows) < m).reshape(tm, 1, cfg.rows)
    padded[rows_kept] = b
    return padded.transpose(0, 2, 1, 3).reshape(tm * cfg.rows, tn * cfg.cols)[:m, :n]


def _lane_bytes(values: IntArray, nbytes: int) -> bytes:
    shifts = 8 * np.arange(nbytes, dtype=np.int64)
    return (np.right_shift(values[..., None], shifts) & 0xFF).astype(np.uint8).tobytes()


def pack_input(acc: npt.ArrayLike, cfg: EpilogueConfig) -> tuple[bytes, list[int]]:
    """``tdata`` bytes and per-byte ``tkeep`` of the ``x`` stream for an (M, N) accumulator
    matrix: tile order, ``cols`` sign-extended 32-bit lanes per beat."""
    beats, valid = tile_beats(_check_values(np.asarray(acc), cfg.acc_bits, "acc"), cfg)
    keep = np.repeat(valid.astype(np.int64), ACC_LANE_BITS // 8, axis=1)
    return _lane_bytes(beats, ACC_LANE_BITS // 8), [int(k) for k in keep.reshape(-1)]


def pack_residual(residual: npt.ArrayLike, cfg: EpilogueConfig) -> bytes:
    """``tdata`` bytes of the ``residual`` stream: the output's layout (tile order,
    ``out_lane_bytes`` sign-extended lanes, lanes past N zero)."""
    res = _check_values(np.asarray(residual), cfg.res_bits, "residual")
    beats, _ = tile_beats(res, cfg)
    return _lane_bytes(beats, cfg.out_lane_bytes)


def pack_params(params: EpilogueParams, m: int, cfg: EpilogueConfig) -> bytes:
    """Bytes of a ``params`` packet for a run of M rows.

    Beats of three little-endian 32-bit words. Beat 0 (header): M, the GELU multiplier, the GELU
    shift. Beat ``1 + c`` for column ``c`` of ``0 .. N-1``: the bias (two's complement), the
    multiplier, the shift. ``tlast`` goes on the last beat, so the packet is ``N + 1`` beats.
    """
    cfg.check_shape(m, params.n)
    words = np.zeros((params.n + 1, 3), dtype=np.int64)
    words[0] = (m, params.gelu_multiplier, params.gelu_shift)
    words[1:, 0] = params.bias & 0xFFFFFFFF
    words[1:, 1] = params.multiplier
    words[1:, 2] = params.shift
    return _lane_bytes(words, 4)


def unpack_output(
    data: bytes, keep: list[int] | None, cfg: EpilogueConfig
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Lanes of ``y`` stream bytes as ``(beats, cols)`` signed values and lane-valid flags
    (from ``tkeep``; all valid when ``keep`` is None)."""
    nb = cfg.out_lane_bytes
    raw = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
    if len(raw) % (nb * cfg.cols):
        raise ValueError(f"{len(raw)} output bytes are not whole beats of {nb * cfg.cols} bytes")
    lanes = raw.reshape(-1, nb)
    value = (lanes << (8 * np.arange(nb, dtype=np.int64))).sum(axis=-1)
    sign = 1 << (8 * nb - 1)
    values = ((value ^ sign) - sign).reshape(-1, cfg.cols)
    if keep is None:
        valid = np.ones(values.shape, dtype=bool)
    else:
        valid = np.array(keep, dtype=bool).reshape(-1, nb)[:, 0].reshape(-1, cfg.cols)
    return values, valid
