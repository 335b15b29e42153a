"""Integer (affine) quantization of tensors: calibration, quantize, dequantize, fake-quant.

A real value ``x`` is stored as the integer ``q = clamp(round_half_even(x / scale) + zero_point,
qmin, qmax)`` and read back as ``(q - zero_point) * scale``. Scales and zero points are per
tensor, per channel along an axis, or per group of contiguous elements along an axis.

Storage is always signed ``bits``-wide (``int8`` for 8 bits); asymmetric quantization uses the
whole signed range with an integer zero point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from tessera.models.rounding import IntArray, _as_int64

if TYPE_CHECKING:
    import torch

__all__ = [
    "Granularity",
    "QuantParams",
    "QuantSpec",
    "calibrate",
    "dequantize",
    "fake_quant_torch",
    "quantize",
]

Granularity = Literal["tensor", "channel", "group"]
_GRANULARITIES = ("tensor", "channel", "group")
FloatArray = npt.NDArray[np.float64]


def _is_int(value: Any) -> bool:
    """True for Python and numpy integers, false for bools."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class QuantSpec:
    """How a tensor is quantized.

    Parameters
    ----------
    bits : int, default 8
        Storage width of the signed integers, 2..16.
    symmetric : bool, default True
        Symmetric: zero point 0 and ``scale = max|x| / qmax``. Asymmetric: affine over
        ``[min(x, 0), max(x, 0)]`` with an integer zero point.
    granularity : {"tensor", "channel", "group"}, default "tensor"
        One scale for the tensor, one per index along ``axis``, or one per group of
        ``group_size`` contiguous elements along ``axis`` (for every index of the other axes).
    axis : int, default 0
        Channel or group axis; may be negative. Ignored for ``"tensor"``.
    group_size : int or None, default None
        Elements per group; required (> 0) for ``"group"`` and must be None otherwise.
    narrow_range : bool, default False
        Leave out the most negative code (``qmin = -(2**(bits-1) - 1)``), as some hardware and
        TFLite's symmetric weights do.

    Attributes
    ----------
    qmin, qmax : int
        Inclusive range of the stored integers.

    Raises
    ------
    ValueError
        If a field is outside its allowed range; the message names the field.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = "tensor"
    axis: int = 0
    group_size: int | None = None
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be an int in [2, 16], got {self.bits!r}")
        for name in ("symmetric", "narrow_range"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.granularity not in _GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(_GRANULARITIES)}, got {self.granularity!r}"
            )
        if not _is_int(self.axis):
            raise ValueError(f"axis must be an int, got {self.axis!r}")
        if self.granularity == "group":
            if self.group_size is None or not _is_int(self.group_size) or self.group_size <= 0:
                raise ValueError(
                    "group_size must be an int > 0 for granularity 'group', "
                    f"got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise ValueError(
                f"group_size must be None unless granularity is 'group', got {self.group_size!r}"
            )

    @property
    def qmin(self) -> int:
        """Smallest stored integer."""
        return -(1 << (self.bits - 1)) + int(self.narrow_range)

    @property
    def qmax(self) -> int:
        """Largest stored integer."""
        return (1 << (self.bits - 1)) - 1


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scales and zero points of a quantized tensor.

    Shapes depend on ``spec.granularity``: ``()`` for ``"tensor"``; ``(C,)`` with ``C`` the length
    of ``spec.axis`` for ``"channel"``; the tensor's shape with the ``spec.axis`` length divided by
    ``spec.group_size`` for ``"group"``. The arrays are stored as read-only copies.

    Parameters
    ----------
    scale : numpy.ndarray of float64
        Step sizes, finite and > 0.
    zero_point : numpy.ndarray of int64
        Zero points, within ``[spec.qmin, spec.qmax]``; all 0 when ``spec.symmetric``.
    spec : QuantSpec
        The quantization scheme these parameters belong to.

    Raises
    ------
    ValueError
        If a field is invalid or the shapes disagree; the message names the field.
    """

    scale: FloatArray
    zero_point: IntArray
    spec: QuantSpec

    def __post_init__(self) -> None:
        if not isinstance(self.spec, QuantSpec):
            raise ValueError(f"spec must be a QuantSpec, got {type(self.spec).__name__}")
        scale = np.array(self.scale, dtype=np.float64)
        if scale.size == 0 or not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError("scale must be non-empty, finite and > 0")
        zero_point = np.array(_as_int64(self.zero_point, "zero_point"))
        if zero_point.shape != scale.shape:
            raise ValueError(
                f"zero_point shape {zero_point.shape} must equal scale shape {scale.shape}"
            )
        spec = self.spec
        if np.any((zero_point < spec.qmin) | (zero_point > spec.qmax)):
            raise ValueError(f"zero_point must be within [{spec.qmin}, {spec.qmax}]")
        if spec.symmetric and np.any(zero_point != 0):
            raise ValueError("zero_point must be 0 for a symmetric spec")
        expected_ndim = {"tensor": 0, "channel": 1}.get(spec.granularity)
        if expected_ndim is not None and scale.ndim != expected_ndim:
            raise ValueError(
                f"scale must have {expected_ndim} dimension(s) for granularity "
                f"{spec.granularity!r}, got shape {scale.shape}"
            )
        if spec.granularity == "group" and scale.ndim == 0:
            raise ValueError("scale must have the tensor's dimensions for granularity 'group'")
        scale.setflags(write=False)
        zero_point.setflags(write=False)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)

    def __eq__(self, other: object) -> bool:
        """Equal when specs match and scales and zero points are identical."""
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.spec == other.spec
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # type: ignore[assignment]  # holds mutable-type arrays


def _normalize_axis(spec: QuantSpec, ndim: int) -> int:
    """Return ``spec.axis`` as a non-negative axis of an ``ndim``-dimensional tensor."""
    if not -ndim <= spec.axis < ndim:
        raise ValueError(f"axis {spec.axis} is out of range for a tensor with {ndim} dimension(s)")
    return spec.axis % ndim


def _as_finite_float(x: npt.ArrayLike, name: str = "x") -> FloatArray:
    """Convert to float64, rejecting NaN and infinity."""
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return arr


def _group_view(x: FloatArray, axis: int, group_size: int) -> FloatArray:
    """View ``x`` with ``axis`` moved last and split into ``(groups, group_size)``."""
    length = x.shape[axis]
    if length % group_size != 0:
        raise ValueError(f"group_size {group_size} must divide the length {length} of axis {axis}")
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(*moved.shape[:-1], length // group_size, group_size)


def _min_max(x: FloatArray, spec: QuantSpec) -> tuple[FloatArray, FloatArray]:
    """Per-slice minimum and maximum, shaped like the parameters (see :class:`QuantParams`)."""
    if spec.granularity == "tensor":
        if x.size == 0:
            raise ValueError("x must not be empty")
        return np.asarray(x.min()), np.asarray(x.max())
    if x.ndim == 0:
        raise ValueError(f"x must have at least one dimension for granularity {spec.granularity!r}")
    axis = _normalize_axis(spec, x.ndim)
    if x.size == 0:
        raise ValueError("x must not be empty")
    if spec.granularity == "channel":
        others = tuple(i for i in range(x.ndim) if i != axis)
        return x.min(axis=others), x.max(axis=others)
    assert spec.group_size is not None  # checked by QuantSpec
    groups = _group_view(x, axis, spec.group_size)
    return (
        np.moveaxis(groups.min(axis=-1), -1, axis),
        np.moveaxis(groups.max(axis=-1), -1, axis),
    )


def calibrate(x: npt.ArrayLike, spec: QuantSpec) -> QuantParams:
    """Choose scales and zero points from the minimum and maximum of ``x``.

    Symmetric: ``zero_point = 0`` and ``scale = max|x| / qmax``. Asymmetric: the range is widened
    to include 0 (so 0 is exact), ``scale = (max - min) / (qmax - qmin)`` and
    ``zero_point = round_half_even(qmin - min / scale)``. A slice that is all zero gets
    ``scale = 1`` and ``zero_point = 0``, so nothing divides by zero.

    Parameters
    ----------
    x : array_like of float
        Tensor to calibrate on; finite, non-empty.
    spec : QuantSpec
        Quantization scheme.

    Returns
    -------
    QuantParams
        Parameters that cover every value of ``x``.

    Raises
    ------
    ValueError
        If ``x`` is empty, not finite, its range overflows float64, ``spec.axis`` is out of range,
        or ``spec.group_size`` does not divide the axis.
    """
    arr = _as_finite_float(x)
    lo, hi = _min_max(arr, spec)
    if spec.symmetric:
        extent = np.maximum(np.abs(lo), np.abs(hi))
        scale = extent / spec.qmax
        zero_point = np.zeros(scale.shape, dtype=np.int64)
    else:
        lo = np.minimum(lo, 0.0)
        hi = np.maximum(hi, 0.0)
        extent = hi - lo
        scale = extent / (spec.qmax - spec.qmin)
        safe_scale = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(np.round(spec.qmin - lo / safe_scale), spec.qmin, spec.qmax)
        zero_point = np.where(scale > 0, zero_point, 0).astype(np.int64)
    if not np.all(np.isfinite(scale)):
        raise ValueError("x has a range too large for float64 scales")
    # All-zero slices (or ranges so tiny the scale underflows): any positive scale is exact.
    scale = np.where(scale > 0, scale, 1.0)
    return QuantParams(scale=scale, zero_point=zero_point, spec=spec)


def _broadcast_params(params: QuantParams, shape: tuple[int, ...]) -> tuple[FloatArray, IntArray]:
    """Return scale and zero point broadcastable to a tensor of ``shape``, checking the shapes."""
    spec = params.spec
    scale, zero_point = params.scale, params.zero_point
    if spec.granularity == "tensor":
        return scale, zero_point
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(f"x must have at least one dimension for granularity {spec.granularity!r}")
    axis = _normalize_axis(spec, ndim)
    if spec.granularity == "channel":
        if scale.shape[0] != shape[axis]:
            raise ValueError(
                f"x has {shape[axis]} channels along axis {axis}, params have {scale.shape[0]}"
            )
        along_axis = [1] * ndim
        along_axis[axis] = shape[axis]
        return scale.reshape(along_axis), zero_point.reshape(along_axis)
    assert spec.group_size is not None  # checked by QuantSpec
    if shape[axis] % spec.group_size != 0:
        raise ValueError(
            f"group_size {spec.group_size} must divide the length {shape[axis]} of axis {axis}"
        )
    expected = list(shape)
    expected[axis] //= spec.group_size
    if scale.shape != tuple(expected):
        raise ValueError(f"params shape {scale.shape} does not match {tuple(expected)} for x")
    return (
        np.repeat(scale, spec.group_size, axis=axis),
        np.repeat(zero_point, spec.group_size, axis=axis),
    )


def quantize(x: npt.ArrayLike, params: QuantParams) -> IntArray:
    """Quantize real values: ``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)``.

    Parameters
    ----------
    x : array_like of float
        Values; finite. Its shape must match ``params``.
    params : QuantParams
        Scales and zero points.

    Returns
    -------
    numpy.ndarray of int64
        Stored integers, within ``[params.spec.qmin, params.spec.qmax]``.

    Raises
    ------
    ValueError
        If ``x`` is not finite or its shape does not match ``params``.
    """
    arr = _as_finite_float(x)
    scale, zero_point = _broadcast_params(params, arr.shape)
    # np.round rounds half to even; clip before the int cast so huge quotients cannot overflow.
    levels = np.round(arr / scale) + zero_point
    return np.clip(levels, params.spec.qmin, params.spec.qmax).astype(np.int64)


def dequantize(q: npt.ArrayLike, params: QuantParams) -> FloatArray:
    """Map stored integers back to real values: ``(q - zero_point) * scale``.

    Parameters
    ----------
    q : array_like of int
        Stored integers within ``[params.spec.qmin, params.spec.qmax]``.
    params : QuantParams
        Scales and zero points.

    Returns
    -------
    numpy.ndarray of float64
        Real values.

    Raises
    ------
    ValueError
        If ``q`` is out of range or its shape does not match ``params``.
    """
    arr = _as_int64(q, "q")
    spec = params.spec
    if arr.size and (int(arr.min()) < spec.qmin or int(arr.max()) > spec.qmax):
        raise ValueError(f"q must be within [{spec.qmin}, {spec.qmax}]")
    scale, zero_point = _broadcast_params(params, arr.shape)
    return np.asarray((arr - zero_point) * scale, dtype=np.float64)


def fake_quant_torch(t: torch.Tensor, params_or_spec: QuantParams | QuantSpec) -> torch.Tensor:
    """Quantize and dequantize a torch tensor, with a straight-through gradient.

    The forward value equals ``dequantize(quantize(t, params), params)`` computed in float64 and
    cast to ``t.dtype``. The gradient is passed through unchanged where ``t`` falls inside the
    representable range (``qmin <= round(t / scale) + zero_point <= qmax``) and is zero where it is
    clamped, as in ``torch.fake_quantize_per_channel_affine``. NaN inputs propagate as NaN.

    Parameters
    ----------
    t : torch.Tensor
        Floating-point tensor, on any device.
    params_or_spec : QuantParams or QuantSpec
        Parameters to use, or a spec to :func:`calibrate` on ``t`` (detached) first.

    Returns
    -------
    torch.Tensor
        Fake-quantized tensor with the dtype, shape and device of ``t``.

    Raises
    ------
    TypeError
        If ``t`` is not a floating-point tensor or ``params_or_spec`` has the wrong type.
    """
    import torch  # lazily: models/ must stay importable without torch

    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError("t must be a floating-point torch.Tensor")
    if isinstance(params_or_spec, QuantSpec):
        params = calibrate(t.detach().cpu().to(torch.float64).numpy(), params_or_spec)
    elif isinstance(params_or_spec, QuantParams):
        params = params_or_spec
    else:
        raise TypeError(
            f"params_or_spec must be QuantParams or QuantSpec, got {type(params_or_spec).__name__}"
        )
    scale_np, zero_point_np = _broadcast_params(params, tuple(t.shape))
    # torch.tensor copies, so the read-only parameter arrays are never shared with torch.
    scale = torch.tensor(scale_np, dtype=torch.float64, device=t.device)
    zero_point = torch.tensor(zero_point_np, dtype=torch.float64, device=t.device)
    qmin, qmax = params.spec.qmin, params.spec.qmax
    # Same float64 operations as quantize()/dequantize(), so the values match them bit for bit.
    levels = torch.round(t.detach().to(torch.float64) / scale) + zero_point
    inside = (levels >= qmin) & (levels <= qmax)
    value = ((torch.clamp(levels, qmin, qmax) - zero_point) * scale).to(t.dtype)
    # Straight-through estimator: the zero-valued term carries d(out)/d(t) = 1 inside the range.
    return value + (t - t.detach()) * inside.to(t.dtype)
