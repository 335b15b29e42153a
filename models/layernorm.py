"""Integer LayerNorm with affine weight and bias: configuration and bit-exact golden model.

The unit normalises each row of ``dim`` fixed-point elements and applies a per-column weight
``gamma`` and bias ``beta``, as ``torch.nn.LayerNorm(dim, eps)`` does (biased variance), but in
exact integer arithmetic that the hardware reproduces bit for bit.

Formulation (``n = dim``, ``x`` the raw inputs with ``in_frac`` fraction bits)::

    S1 = sum(x)                 S2 = sum(x * x)                      (exact)
    V  = n * S2 - S1**2         = n * sum((x - mean)**2) >= 0         (exact)
    c  = n * x - S1             = n * (x - mean)                     (exact)
    W  = V + E                  E = max(1, round(n**2 * 4**in_frac * eps))
    z  = c / sqrt(W)            the normalised value (x - mean) / sqrt(var + eps)

since ``var + eps = W / (n**2 * 4**in_frac)`` and ``x - mean = c / (n * 2**in_frac)``; the
fixed-point scale cancels. ``E`` is at least 1 so that ``1 / sqrt(W)`` always exists (a row of equal
elements has ``c = 0`` whatever ``W`` is).

``1 / sqrt(W)`` is computed hardware style (:func:`rsqrt`): ``W = u * 4**e`` with ``u`` in
``[1, 4)`` (an even normalising shift, from the leading-one position), a ``2**rsqrt_lut_bits``
entry seed table indexed by ``u >= 2`` and the next ``rsqrt_lut_bits - 1`` bits of ``u``, then
``newton_steps`` Newton iterations ``y <- y * (3 - u * y**2) / 2``; the result is ``y * 2**-e``.
Then::

    z   = round(c * y * 2**-(rsqrt_frac + e - norm_frac))        (norm_frac fraction bits)
    out = saturate(round((z * gamma + beta * 2**norm_frac) * 2**-out_shift), out_bits)

with ``out_shift = norm_frac + param_frac - out_frac``. A row of equal elements gives ``z = 0`` and
so ``out = beta`` in the output format.

Integer formats (``raw`` values are integers; the real value is ``raw / 2**frac``):

- inputs: signed ``in_bits`` with ``in_frac`` fraction bits;
- ``gamma``, ``beta``: signed ``param_bits`` with ``param_frac`` fraction bits;
- ``u``: unsigned, ``rsqrt_frac`` fraction bits, truncated (floor) from ``W``;
- ``y``: unsigned, ``rsqrt_frac`` fraction bits, in about ``(0.5, 1]``;
- ``z``: signed, ``norm_frac`` fraction bits; ``|z| <= sqrt(dim - 1)``;
- outputs: signed ``out_bits`` with ``out_frac`` fraction bits, saturated.

Inside a Newton step the products ``y * y`` and ``u * (y * y)`` are truncated (floor) back to
``rsqrt_frac`` fraction bits and the final ``y * (3 - u * y**2) / 2`` is rounded half up. Every
other rounding is *round half up* (add half an LSB, then floor), one adder in hardware.

Stream formats (the RTL's AXI4-Stream ports): one element per beat on ``x`` and ``y``, sign-extended
to whole bytes; one beat per column on ``params`` with ``gamma`` in the low and ``beta`` in the high
half, each sign-extended to whole bytes (see :func:`pack_rows`, :func:`pack_params`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig, check_int

__all__ = [
    "LayerNormConfig",
    "dequantize_output",
    "layernorm",
    "layernorm_float",
    "normalize",
    "pack_params",
    "pack_rows",
    "quantize_input",
    "quantize_params",
    "rsqrt",
    "rsqrt_seed_table",
    "unpack_outputs",
]

IntArray = npt.NDArray[np.int64]

# Every intermediate of the golden model must stay exact in int64 (and the RTL is sized from the
# same bounds). W = V + E is the widest; with W within this many bits, the field ranges keep every
# product (c * y, z * gamma, the Newton products) below 2**60 as well.
_MAX_BITS = 62


def _bytes_for(bits: int) -> int:
    return (bits + 7) // 8


@dataclass(frozen=True)
class LayerNormConfig(EngineConfig):
    """Parameters of the integer LayerNorm unit.

    Parameters
    ----------
    dim : int
        Row length, the normalised dimension (1..4096).
    in_bits : int
        Width of the signed inputs (2..24).
    in_frac : int
        Fraction bits of the inputs (0..in_bits-1).
    out_bits : int
        Width of the signed outputs (2..24).
    out_frac : int
        Fraction bits of the outputs (0..out_bits-1).
    param_bits : int
        Width of the signed ``gamma`` and ``beta`` (2..24).
    param_frac : int
        Fraction bits of ``gamma`` and ``beta`` (0..param_bits-1). The default ``<16, 11>`` (five
        integer bits) is the norm-parameter format of Edge-MoE.
    eps : float
        Added to the variance (0..1); the unit uses the integer :attr:`eps_int`.
    rsqrt_lut_bits : int
        The reciprocal-square-root seed table has ``2**rsqrt_lut_bits`` entries (1..10).
    newton_steps : int
        Newton iterations after the seed (0..3).
    rsqrt_frac : int
        Fraction bits of the normalised variance ``u`` and of the reciprocal square root ``y``
        (8..24).
    norm_frac : int
        Fraction bits of the normalised values ``z`` (2..rsqrt_frac).
    """

    dim: int = 192
    in_bits: int = 16
    in_frac: int = 8
    out_bits: int = 16
    out_frac: int = 8
    param_bits: int = 16
    param_frac: int = 11
    eps: float = 1e-5
    rsqrt_lut_bits: int = 6
    newton_steps: int = 1
    rsqrt_frac: int = 16
    norm_frac: int = 14

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1, 4096)
        check_int("in_bits", self.in_bits, 2, 24)
        check_int("in_frac", self.in_frac, 0, self.in_bits - 1)
        check_int("out_bits", self.out_bits, 2, 24)
        check_int("out_frac", self.out_frac, 0, self.out_bits - 1)
        check_int("param_bits", self.param_bits, 2, 24)
        check_int("param_frac", self.param_frac, 0, self.param_bits - 1)
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, int | float | np.integer | np.floating)
            or not math.isfinite(self.eps)
            or not 0 <= self.eps <= 1
        ):
            raise ValueError(f"eps must be a float in [0, 1], got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        check_int("rsqrt_lut_bits", self.rsqrt_lut_bits, 1, 10)
        check_int("newton_steps", self.newton_steps, 0, 3)
        check_int("rsqrt_frac", self.rsqrt_frac, 8, 24)
        check_int("norm_frac", self.norm_frac, 2, self.rsqrt_frac)
        if self.out_shift < 0:
            raise ValueError(
                f"out_frac={self.out_frac} must not exceed norm_frac + param_frac "
                f"({self.norm_frac + self.param_frac}): raise norm_frac or lower out_frac"
            )
        if self.var_bits > _MAX_BITS:
            raise ValueError(
                f"dim={self.dim} and in_bits={self.in_bits} give a {self.var_bits}-bit variance "
                f"sum (at most {_MAX_BITS}): lower in_bits or dim"
            )

    # --- derived widths -------------------------------------------------------------------
    @property
    def sum_bits(self) -> int:
        """Signed width of ``S1 = sum(x)``."""
        return (self.dim << (self.in_bits - 1)).bit_length() + 1

    @property
    def square_sum_bits(self) -> int:
        """Unsigned width of ``S2 = sum(x * x)``."""
        return (self.dim << (2 * self.in_bits - 2)).bit_length()

    @property
    def eps_int(self) -> int:
        """``E = max(1, round(dim**2 * 4**in_frac * eps))``, ``eps`` in the scale of ``V``."""
        scaled = (self.dim * self.dim << (2 * self.in_frac)) * self.eps
        return max(1, math.floor(scaled + 0.5))

    @property
    def var_bits(self) -> int:
        """Unsigned width of ``W = V + E`` (``V <= dim * S2 <= dim**2 * 4**(in_bits - 1)``)."""
        return ((self.dim * self.dim << (2 * self.in_bits - 2)) + self.eps_int).bit_length()

    @property
    def max_exponent(self) -> int:
        """Largest ``e`` with ``W = u * 4**e``."""
        return (self.var_bits - 1) // 2

    @property
    def mantissa_bits(self) -> int:
        """Unsigned width of ``y`` and ``u`` (both below ``4``; ``rsqrt_frac`` fraction bits)."""
        return self.rsqrt_frac + 2

    @property
    def center_bits(self) -> int:
        """Signed width of ``c = dim * x - S1`` (``|c| <= dim * (2**in_bits - 1)``)."""
        return (self.dim * ((1 << self.in_bits) - 1)).bit_length() + 1

    @property
    def norm_bits(self) -> int:
        """Signed width of ``z``: ``|z| <= sqrt(dim - 1)``, with a factor 2 of headroom for the
        reciprocal square root's error."""
        return ((math.isqrt(self.dim - 1) + 1) << (self.norm_frac + 1)).bit_length() + 1

    @property
    def max_norm_shift(self) -> int:
        """Largest right shift from ``c * y`` to ``z``
        (``rsqrt_frac + max_exponent - norm_frac``)."""
        return self.rsqrt_frac + self.max_exponent - self.norm_frac

    @property
    def out_shift(self) -> int:
        """Right shift from ``z * gamma`` to the output: ``norm_frac + param_frac - out_frac``."""
        return self.norm_frac + self.param_frac - self.out_frac

    @property
    def in_bytes(self) -> int:
        """Bytes per input element on the ``x`` stream."""
        return _bytes_for(self.in_bits)

    @property
    def out_bytes(self) -> int:
        """Bytes per output element on the ``y`` stream."""
        return _bytes_for(self.out_bits)

    @property
    def param_bytes(self) -> int:
        """Bytes of each of ``gamma`` and ``beta`` in a ``params`` beat."""
        return _bytes_for(self.param_bits)

    @property
    def buffer_depth(self) -> int:
        """Elements the row buffer holds: two rows, so that one row streams in while the one
        before streams out."""
        return 2 * self.dim

    # --- identity ---------------------------------------------------------------------------
    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``layernorm_d192_i16f8_1a2b3c4d5e``."""
        return f"layernorm_d{self.dim}_i{self.in_bits}f{self.in_frac}_{self.digest}"

    # --- checks and conversions ---------------------------------------------------------------
    def check_inputs(self, x: npt.ArrayLike) -> IntArray:
        """``x`` as int64 of shape ``(..., dim)``, or ``ValueError``."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"inputs must be integer raw values, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[-1] != self.dim:
            raise ValueError(
                f"inputs must have shape (..., {self.dim}) (rows of dim elements), got {arr.shape}"
            )
        return _check_range(arr, self.in_bits, "inputs")

    def check_params(self, gamma: npt.ArrayLike, beta: npt.ArrayLike) -> tuple[IntArray, IntArray]:
        """``gamma`` and ``beta`` as int64 of shape ``(dim,)``, or ``ValueError``."""
        out = []
        for name, p in (("gamma", gamma), ("beta", beta)):
            arr = np.asarray(p)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{name} must be integer raw values, got dtype {arr.dtype}")
            if arr.shape != (self.dim,):
                raise ValueError(f"{name} must have shape ({self.dim},), got {arr.shape}")
            out.append(_check_range(arr, self.param_bits, name))
        return out[0], out[1]


def _check_range(arr: np.ndarray, bits: int, name: str) -> IntArray:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > hi:
        raise ValueError(f"{name} must fit {bits} signed bits [{lo}, {hi}]")
    values = arr.astype(np.int64)
    if values.size and (values.min() < lo or values.max() > hi):
        raise ValueError(f"{name} must fit {bits} signed bits [{lo}, {hi}]")
    return values


def _round_shift(value: IntArray, shift: IntArray | int) -> IntArray:
    """``floor(value / 2**shift + 1/2)`` for ``shift >= 0`` (round half up)."""
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    return np.right_shift(value + half, shift)


def _bit_length(value: IntArray) -> IntArray:
    """Exact ``int.bit_length`` of non-negative int64 values."""
    length = np.zeros(value.shape, dtype=np.int64)
    for bit in range(63):
        length = np.where(np.right_shift(value, bit) > 0, bit + 1, length)
    return length


def rsqrt_seed_table(cfg: LayerNormConfig) -> IntArray:
    """Seeds of the reciprocal square root, ``2**rsqrt_lut_bits`` entries of ``rsqrt_frac`` bits.

    Entry ``h * 2**k + j`` (``k = rsqrt_lut_bits - 1``) covers ``u`` in ``[a, b)`` with
    ``a = (1 + h) * (1 + j / 2**k)`` and ``b = (1 + h) * (1 + (j + 1) / 2**k)``; it holds
    ``round(2**rsqrt_frac * 2 / (sqrt(a) + sqrt(b)))``, the value whose relative error against
    ``1 / sqrt(u)`` is equal and opposite at both ends (smallest worst case before Newton).
    """
    k = cfg.rsqrt_lut_bits - 1
    j = np.arange(1 << k, dtype=np.float64)
    seeds = []
    for h in (1.0, 2.0):
        a = h * (1 + j / (1 << k))
        b = h * (1 + (j + 1) / (1 << k))
        seeds.append(np.floor(2.0**cfg.rsqrt_frac * 2 / (np.sqrt(a) + np.sqrt(b)) + 0.5))
    return np.concatenate(seeds).astype(np.int64)


def rsqrt(value: npt.ArrayLike, cfg: LayerNormConfig) -> tuple[IntArray, IntArray]:
    """Reciprocal square root of positive integers, as the unit computes it.

    Parameters
    ----------
    value : array_like of int
        ``W >= 1``, below ``2**62``.
    cfg : LayerNormConfig
        Table size, Newton steps and precision.

    Returns
    -------
    mantissa : ndarray of int64
        ``y`` with ``rsqrt_frac`` fraction bits, about ``(0.5, 1]``.
    exponent : ndarray of int64
        ``e``, such that ``1 / sqrt(W) ~= y * 2**-(rsqrt_frac + e)``.
    """
    w = np.asarray(value)
    if w.dtype.kind not in "iu":
        raise ValueError(f"rsqrt takes integers, got dtype {w.dtype}")
    w = w.astype(np.int64)
    if w.size and (w.min() < 1 or w.max() >= 1 << _MAX_BITS):
        raise ValueError(f"rsqrt takes integers in [1, 2**{_MAX_BITS}), got one outside")
    frac = cfg.rsqrt_frac
    exponent = np.right_shift(_bit_length(w) - 1, 1)
    # u = floor(W * 2**frac / 4**e), in [1, 4): the even normalising shift of the hardware.
    shift = frac - 2 * exponent
    u = np.where(
        shift >= 0,
        np.left_shift(w, np.maximum(shift, 0)),
        np.right_shift(w, np.maximum(-shift, 0)),
    )
    k = cfg.rsqrt_lut_bits - 1
    high = np.right_shift(u, frac + 1)  # u >= 2
    j = np.right_shift(u, np.where(high == 1, frac + 1 - k, frac - k)) & ((1 << k) - 1)
    y = rsqrt_seed_table(cfg)[(high << k) + j]
    for _ in range(cfg.newton_steps):
        y2 = np.right_shift(y * y, frac)
        uy2 = np.right_shift(u * y2, frac)
        y = np.right_shift(y * ((3 << frac) - uy2) + (1 << frac), frac + 1)
    return y, exponent


def normalize(x_raw: npt.ArrayLike, cfg: LayerNormConfig) -> IntArray:
    """Normalised rows ``z = (x - mean) / sqrt(var + eps)`` with ``norm_frac`` fraction bits.

    Parameters
    ----------
    x_raw : array_like of int, shape (..., dim)
        Raw inputs (``in_bits`` signed, ``in_frac`` fraction bits).
    cfg : LayerNormConfig
        Unit parameters.

    Returns
    -------
    ndarray of int64, shape (..., dim)
        ``z``, exactly as the unit computes it before the affine step.
    """
    x = cfg.check_inputs(x_raw)
    n = cfg.dim
    s1 = x.sum(axis=-1)
    s2 = (x * x).sum(axis=-1)
    w = n * s2 - s1 * s1 + cfg.eps_int
    y, e = rsqrt(w, cfg)
    c = n * x - s1[..., None]
    shift = cfg.rsqrt_frac + e - cfg.norm_frac
    return _round_shift(c * y[..., None], shift[..., None])


def layernorm(
    x_raw: npt.ArrayLike, gamma_raw: npt.ArrayLike, beta_raw: npt.ArrayLike, cfg: LayerNormConfig
) -> IntArray:
    """Bit-exact LayerNorm of the unit over the last axis.

    Parameters
    ----------
    x_raw : array_like of int, shape (..., dim)
        Raw inputs (``in_bits`` signed, ``in_frac`` fraction bits).
    gamma_raw, beta_raw : array_like of int, shape (dim,)
        Raw weight and bias (``param_bits`` signed, ``param_frac`` fraction bits).
    cfg : LayerNormConfig
        Unit parameters.

    Returns
    -------
    ndarray of int64, shape (..., dim)
        Outputs (``out_bits`` signed, ``out_frac`` fraction bits), saturated.
    """
    z = normalize(x_raw, cfg)
    gamma, beta = cfg.check_params(gamma_raw, beta_raw)
    acc = z * gamma + np.left_shift(beta, cfg.norm_frac)
    lo, hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    return np.clip(_round_shift(acc, cfg.out_shift), lo, hi)


def layernorm_float(
    x: npt.ArrayLike, gamma: npt.ArrayLike, beta: npt.ArrayLike, eps: float
) -> np.ndarray:
    """Float64 reference with ``torch.nn.LayerNorm`` semantics over the last axis.

    ``(x - mean) / sqrt(var + eps) * gamma + beta`` with the biased variance.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(gamma, dtype=np.float64) + np.asarray(
        beta, dtype=np.float64
    )


def _quantize(x: npt.ArrayLike, bits: int, frac: int, name: str) -> IntArray:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.floor(arr * (1 << frac) + 0.5), lo, hi).astype(np.int64)


def quantize_input(x: npt.ArrayLike, cfg: LayerNormConfig) -> IntArray:
    """Float inputs to raw ``in_bits`` values (round half up, saturate)."""
    return _quantize(x, cfg.in_bits, cfg.in_frac, "inputs")


def quantize_params(
    gamma: npt.ArrayLike, beta: npt.ArrayLike, cfg: LayerNormConfig
) -> tuple[IntArray, IntArray]:
    """Float weight and bias to raw ``param_bits`` values (round half up, saturate)."""
    return (
        _quantize(gamma, cfg.param_bits, cfg.param_frac, "gamma"),
        _quantize(beta, cfg.param_bits, cfg.param_frac, "beta"),
    )


def dequantize_output(y_raw: npt.ArrayLike, cfg: LayerNormConfig) -> np.ndarray:
    """Raw outputs to float (``y_raw / 2**out_frac``)."""
    return np.asarray(y_raw, dtype=np.float64) / (1 << cfg.out_frac)


def _pack(values: np.ndarray, nbytes: int) -> np.ndarray:
    """Little-endian two's complement bytes of each value, shape (..., nbytes)."""
    v = np.asarray(values, dtype=np.int64)
    shifts = 8 * np.arange(nbytes, dtype=np.int64)
    return (np.right_shift(v[..., None], shifts) & 0xFF).astype(np.uint8)


def pack_rows(x_raw: npt.ArrayLike, cfg: LayerNormConfig) -> bytes:
    """Bytes of rows as the ``x`` stream carries them: one sign-extended element per beat."""
    x = cfg.check_inputs(x_raw)
    return _pack(x, cfg.in_bytes).tobytes()


def pack_params(gamma_raw: npt.ArrayLike, beta_raw: npt.ArrayLike, cfg: LayerNormConfig) -> bytes:
    """Bytes of a ``params`` packet: per column one beat, ``gamma`` low half, ``beta`` high half."""
    gamma, beta = cfg.check_params(gamma_raw, beta_raw)
    beats = np.concatenate([_pack(gamma, cfg.param_bytes), _pack(beta, cfg.param_bytes)], axis=-1)
    return beats.tobytes()


def unpack_outputs(data: bytes, cfg: LayerNormConfig) -> IntArray:
    """Elements of ``y`` stream bytes (sign-extended containers) as int64."""
    nbytes = cfg.out_bytes
    if len(data) % nbytes:
        raise ValueError(f"output stream of {len(data)} bytes is not whole {nbytes}-byte beats")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, nbytes).astype(np.int64)
    value = (raw << (8 * np.arange(nbytes, dtype=np.int64))).sum(axis=-1)
    sign = 1 << (8 * nbytes - 1)
    return (value ^ sign) - sign
