"""Expert MLPs (Linear -> ReLU -> ... -> Linear) in fixed point: precisions, bit-exact golden model.

:class:`MlpPrecision` holds the ``ap_fixed`` formats of an MLP as hls4ml implements it (input,
weights, biases, accumulator, layer results). :func:`golden_mlp` is a bit-exact model of what
hls4ml 1.3.0 generates for such an MLP with ``io_parallel`` and the ``Latency`` strategy,
C-simulated with g++: it mirrors, step by step, how hls4ml writes the weights, converts the
inputs, multiplies, accumulates, casts and applies ReLU (each step cites the hls4ml source it
follows, relative to the installed ``hls4ml`` package).

Everything is exact integer arithmetic on raw ``int64`` values (:class:`FixedType`), so the golden
model and hls4ml's C-simulation agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig
from tessera.models.fixed_point import FixedType, add, mul
from tessera.models.quantize import QuantParams
from tessera.models.rounding import IntArray, Overflow, Rounding

if TYPE_CHECKING:
    import torch

__all__ = [
    "MlpLayer",
    "MlpPrecision",
    "golden_mlp",
    "mlp_float",
    "mlp_from_torch",
    "parse_fixed",
    "written_weights",
]

Activation = Literal["relu"] | None
FloatArray = npt.NDArray[np.float64]

#: Width limit of the input, weight, bias and result formats: a product of two of them stays
#: within the 64 bits of an exact ``int64`` raw value.
MAX_OPERAND_WIDTH = 32
#: Width limit of the accumulator: the sum of two accumulator values stays exact in ``int64``.
MAX_ACCUM_WIDTH = 62

# Default formats (FixedType is frozen, so sharing one instance is safe).
_AP_FIXED_16_6 = FixedType(16, 6)
_AP_FIXED_8_1 = FixedType(8, 1)
_AP_FIXED_32_12 = FixedType(32, 12)
_FIELDS = ("input", "weight", "bias", "accum", "result")
_AP_TYPE = re.compile(
    r"\s*(?:ap_)?(u?)fixed\s*<\s*(-?\d+)\s*,\s*(-?\d+)\s*"
    r"(?:,\s*(?:AP_)?([A-Z_]+)\s*)?(?:,\s*(?:AP_)?([A-Z_]+)\s*)?(?:,\s*0\s*)?>\s*\Z"
)


def parse_fixed(text: str) -> FixedType:
    """Parse ``ap_fixed<W,I[,Q[,O[,0]]]>`` (or ``ap_ufixed``, ``fixed<...>``) into a FixedType.

    Parameters
    ----------
    text : str
        C++ type, e.g. ``"ap_fixed<16,6>"`` or ``"ap_fixed<16,6,AP_RND_CONV,AP_SAT>"``. Missing
        modes default to ``AP_TRN`` / ``AP_WRAP``, as in ``ap_fixed``. Saturation bits other than 0
        are not modelled.

    Returns
    -------
    FixedType
        The format.

    Raises
    ------
    ValueError
        If the text is not such a type, or a mode is unknown.
    """
    match = _AP_TYPE.match(text)
    if match is None:
        raise ValueError(
            f"cannot parse {text!r} as a fixed-point type: write e.g. 'ap_fixed<16,6>' or "
            "'ap_fixed<16,6,AP_RND_CONV,AP_SAT>' (saturation bits must be 0)"
        )
    unsigned, width, int_bits, rounding, overflow = match.groups()
    return FixedType(
        int(width),
        int(int_bits),
        signed=not unsigned,
        rounding=rounding or Rounding.TRN,
        overflow=overflow or Overflow.WRAP,
    )


def _coerce_fixed(name: str, value: Any) -> FixedType:
    """``value`` (FixedType, dict of its fields, or C++ type string) as a FixedType."""
    if isinstance(value, FixedType):
        return value
    if isinstance(value, str):
        try:
            return parse_fixed(value)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    if isinstance(value, dict):
        try:
            return FixedType(**value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} is not a valid fixed-point format: {err}") from None
    raise ValueError(
        f"{name} must be a FixedType, a dict of its fields or a type string such as "
        f"'ap_fixed<16,6>', got {value!r}"
    )


@dataclass(frozen=True)
class MlpPrecision(EngineConfig):
    """Fixed-point formats of an MLP as hls4ml builds it (one set shared by every layer).

    The defaults suit int8-like experts and use ``ap_fixed``'s own default modes (``AP_TRN``,
    ``AP_WRAP``), which are also what hls4ml writes when a precision string gives no modes.

    Parameters
    ----------
    input : FixedType, default ap_fixed<16,6>
        The MLP's input (hls4ml's ``input_t``): float inputs are converted into it.
    weight : FixedType, default ap_fixed<8,1>
        Weights of every Linear layer (``weight_t``).
    bias : FixedType, default ap_fixed<16,6>
        Biases of every Linear layer (``bias_t``).
    accum : FixedType, default ap_fixed<32,12>
        Accumulator (``accum_t``): each product, the bias and every partial sum are held in it.
    result : FixedType, default ap_fixed<16,6>
        Result of every layer (Linear and ReLU); a hidden layer's result is the next one's input.

    Each field also accepts a dict of :class:`FixedType` fields or a C++ type string such as
    ``"ap_fixed<16,6,AP_RND_CONV,AP_SAT>"``. Widths are 1..32 (accumulator 1..62) so that every
    product and sum is exact in ``int64``.

    Raises
    ------
    ValueError
        If a field is not a valid format or is too wide; the message names the field.
    """

    input: FixedType = _AP_FIXED_16_6
    weight: FixedType = _AP_FIXED_8_1
    bias: FixedType = _AP_FIXED_16_6
    accum: FixedType = _AP_FIXED_32_12
    result: FixedType = _AP_FIXED_16_6

    def __post_init__(self) -> None:
        for name in _FIELDS:
            fixed = _coerce_fixed(name, getattr(self, name))
            top = MAX_ACCUM_WIDTH if name == "accum" else MAX_OPERAND_WIDTH
            if fixed.width > top:
                raise ValueError(
                    f"{name} width must be in [1, {top}] so that products and sums stay exact in "
                    f"int64, got {fixed.width} ({fixed})"
                )
            object.__setattr__(self, name, fixed)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: each format as a dict of its fields (modes as their names)."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            fixed: FixedType = getattr(self, name)
            out[name] = {
                field.name: getattr(fixed, field.name).value
                if isinstance(getattr(fixed, field.name), Rounding | Overflow)
                else getattr(fixed, field.name)
                for field in dataclasses.fields(fixed)
            }
        return out

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``mlp_x16i6_w8i1_b16i6_a32i12_r16i6_1a2b3c4d5e``."""
        parts = "_".join(
            f"{letter}{t.width}i{t.int_bits}"
            for letter, t in zip("xwbar", (getattr(self, n) for n in _FIELDS), strict=True)
        )
        return f"mlp_{parts}_{self.digest}"

    @classmethod
    def from_quantization(
        cls,
        weights: QuantParams,
        inputs: QuantParams | None = None,
        *,
        accum_bits: int = 32,
    ) -> MlpPrecision:
        """Formats matching tessera's integer quantization, where ``ap_fixed`` can express it.

        ``ap_fixed`` has one power-of-two scale per tensor and no zero point, so only symmetric
        per-tensor quantization maps. Each scale ``s`` becomes the smallest power of two
        ``2**-f >= s`` (equal to ``s`` when it already is one, and then the stored integers are the
        same), so every calibrated value still fits. Weights (and inputs, if given) get
        ``ap_fixed<bits, bits - f, AP_RND_CONV, AP_SAT>`` (``AP_SAT_SYM`` with ``narrow_range``):
        round half to even and clamp, as :func:`tessera.models.quantize.quantize` does. Bias and
        accumulator are ``accum_bits`` wide at the product scale ``2**-(f_x + f_w)``, like an int32
        accumulator; the accumulator wraps. Layer results are re-quantized to the input format
        with round half to even and saturation.

        Parameters
        ----------
        weights : QuantParams
            Weight quantization from :func:`tessera.models.quantize.calibrate`.
        inputs : QuantParams or None, default None
            Input quantization; None keeps the default ``ap_fixed<16,6>`` input.
        accum_bits : int, default 32
            Width of bias and accumulator (1..62).

        Returns
        -------
        MlpPrecision
            The formats.

        Raises
        ------
        ValueError
            If a quantization is asymmetric or not per tensor, or the widths are out of range.
        """
        weight = _fixed_from_params("weights", weights)
        if inputs is None:
            source = _AP_FIXED_16_6
        else:
            source = _fixed_from_params("inputs", inputs)
        product_frac = source.frac_bits + weight.frac_bits
        accum = FixedType(accum_bits, accum_bits - product_frac)
        result = FixedType(source.width, source.int_bits, True, Rounding.RND_CONV, Overflow.SAT)
        return cls(input=source, weight=weight, bias=accum, accum=accum, result=result)


def _fixed_from_params(name: str, params: QuantParams) -> FixedType:
    """The ``ap_fixed`` format of a symmetric per-tensor quantization (scale rounded up to 2**k)."""
    if not isinstance(params, QuantParams):
        raise ValueError(f"{name} must be QuantParams, got {type(params).__name__}")
    spec = params.spec
    if not spec.symmetric or spec.granularity != "tensor":
        raise ValueError(
            f"{name}: ap_fixed has one power-of-two scale per tensor and no zero point, so only "
            "symmetric per-tensor quantization maps to it; calibrate with "
            "QuantSpec(symmetric=True, granularity='tensor')"
        )
    mantissa, exponent = math.frexp(float(params.scale))
    # scale = mantissa * 2**exponent with 0.5 <= mantissa < 1: ceil(log2(scale)) exactly.
    scale_log2 = exponent - 1 if mantissa == 0.5 else exponent
    frac_bits = -scale_log2
    overflow = Overflow.SAT_SYM if spec.narrow_range else Overflow.SAT
    return FixedType(spec.bits, spec.bits - frac_bits, True, Rounding.RND_CONV, overflow)


@dataclass(frozen=True, eq=False)
class MlpLayer:
    """One Linear layer of an MLP, optionally followed by an activation.

    Parameters
    ----------
    weight : numpy.ndarray
        Shape ``(out_features, in_features)``, as ``torch.nn.Linear.weight``; finite floats. Keep
        the dtype the model has (float32 for torch): hls4ml prints the weights from that dtype.
    bias : numpy.ndarray or None
        Shape ``(out_features,)``; None for a Linear without bias (zeros).
    activation : {"relu", None}
        Activation after the Linear.

    Raises
    ------
    ValueError
        If the shapes or values are invalid.
    """

    weight: npt.NDArray[np.floating]
    bias: npt.NDArray[np.floating] | None = None
    activation: Activation = None

    def __post_init__(self) -> None:
        weight = np.array(self.weight)
        if weight.dtype.kind != "f" or weight.ndim != 2 or 0 in weight.shape:
            raise ValueError(
                f"weight must be a non-empty 2-D float array (out_features, in_features), got "
                f"dtype {weight.dtype} shape {weight.shape}"
            )
        if not np.all(np.isfinite(weight)):
            raise ValueError("weight must be finite (no NaN or infinity)")
        weight.setflags(write=False)
        object.__setattr__(self, "weight", weight)
        if self.bias is not None:
            bias = np.array(self.bias)
            if bias.dtype.kind != "f" or bias.shape != (weight.shape[0],):
                raise ValueError(
                    f"bias must be a float array of shape ({weight.shape[0]},), got dtype "
                    f"{bias.dtype} shape {bias.shape}"
                )
            if not np.all(np.isfinite(bias)):
                raise ValueError("bias must be finite (no NaN or infinity)")
            bias.setflags(write=False)
            object.__setattr__(self, "bias", bias)
        if self.activation not in ("relu", None):
            raise ValueError(f"activation must be 'relu' or None, got {self.activation!r}")

    @property
    def in_features(self) -> int:
        """Input width."""
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        """Output width."""
        return int(self.weight.shape[0])

    @property
    def bias_or_zeros(self) -> npt.NDArray[np.floating]:
        """The bias, or zeros of the weight's dtype when there is none."""
        if self.bias is None:
            return np.zeros(self.out_features, dtype=self.weight.dtype)
        return self.bias


def mlp_from_torch(module: torch.nn.Module) -> list[MlpLayer]:
    """Extract the layers of an ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` (or one Linear).

    Parameters
    ----------
    module : torch.nn.Module
        ``nn.Sequential`` starting with a Linear, where each ReLU follows a Linear; or a single
        ``nn.Linear``. Consecutive Linear widths must chain.

    Returns
    -------
    list of MlpLayer
        One entry per Linear, weights and biases copied in their torch dtype.

    Raises
    ------
    ValueError
        If the module holds anything else, or the layers do not chain.
    """
    import torch  # lazily: models/ stays importable without torch

    if isinstance(module, torch.nn.Linear):
        children: list[torch.nn.Module] = [module]
    elif isinstance(module, torch.nn.Sequential):
        children = list(module)
    else:
        raise ValueError(
            f"module must be an nn.Sequential of nn.Linear / nn.ReLU or an nn.Linear, got "
            f"{type(module).__name__}"
        )
    layers: list[MlpLayer] = []
    for index, child in enumerate(children):
        if isinstance(child, torch.nn.Linear):
            weight = child.weight.detach().cpu().numpy().copy()
            bias = None if child.bias is None else child.bias.detach().cpu().numpy().copy()
            if layers and layers[-1].out_features != weight.shape[1]:
                raise ValueError(
                    f"layer {index} (Linear) takes {weight.shape[1]} features but the previous "
                    f"Linear gives {layers[-1].out_features}"
                )
            layers.append(MlpLayer(weight, bias))
        elif isinstance(child, torch.nn.ReLU):
            if not layers or layers[-1].activation is not None:
                raise ValueError(
                    f"layer {index} (ReLU) must directly follow an nn.Linear: hls4ml MLPs are "
                    "Linear layers each optionally followed by one ReLU"
                )
            layers[-1] = dataclasses.replace(layers[-1], activation="relu")
        else:
            raise ValueError(
                f"layer {index} is {type(child).__name__}; only nn.Linear and nn.ReLU are "
                "supported in an MLP"
            )
    if not layers:
        raise ValueError("module has no nn.Linear layer")
    return layers


def _check_layers(layers: Sequence[MlpLayer]) -> None:
    if not layers or not all(isinstance(layer, MlpLayer) for layer in layers):
        raise ValueError("layers must be a non-empty sequence of MlpLayer (see mlp_from_torch)")
    for index in range(1, len(layers)):
        if layers[index].in_features != layers[index - 1].out_features:
            raise ValueError(
                f"layer {index} takes {layers[index].in_features} features but layer "
                f"{index - 1} gives {layers[index - 1].out_features}"
            )


def _check_input(x: npt.ArrayLike, in_features: int) -> npt.NDArray[np.floating]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"x must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape ({in_features},) or (batch, {in_features}), got {arr.shape}"
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError("x must be finite (no NaN or infinity)")
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def written_weights(values: npt.ArrayLike, fixed: FixedType) -> IntArray:
    """Raw values of weights or biases as hls4ml's C-simulation holds them.

    hls4ml prints each value with as many decimals as the type has fractional bits
    (``hls4ml/model/types.py``, ``WeightVariable.update_precision`` and ``__next__``:
    ``'{:.Nf}'.format(value)``, ``N = max(0, fractional)``) into ``firmware/weights/*.txt``
    (``hls4ml/writer/vivado_writer.py``, ``print_array_to_cpp``). The C-simulation reads them back
    with ``nnet::load_weights_from_txt`` (``templates/vivado/nnet_utils/nnet_helpers.h``), whose
    ``istream >> ap_fixed`` reads a ``double`` and converts it with the type's own rounding and
    overflow (``templates/vivado/ap_types/ap_fixed_base.h``, ``operator>>`` and
    ``ap_fixed_base(double)``). The decimal print is a rounding step of its own: with the default
    ``AP_TRN`` a value just below a grid point can print as that grid point.

    Parameters
    ----------
    values : array_like of float
        Weights or biases in the dtype the model holds them.
    fixed : FixedType
        ``weight_t`` or ``bias_t``.

    Returns
    -------
    numpy.ndarray of int64
        Raw values of ``fixed``, shaped like ``values``.
    """
    arr = np.asarray(values)
    fmt = f"{{:.{max(0, fixed.frac_bits)}f}}"
    # Same expression as hls4ml: nditer yields 0-d arrays of the model's dtype.
    printed = [fmt.format(value) for value in np.nditer(arr, order="C")]
    # float() of a decimal string is correctly rounded, as strtod behind istream >> double is.
    decoded = np.array([float(text) for text in printed], dtype=np.float64).reshape(arr.shape)
    return fixed.quantize(decoded)


def _dense(
    x_raw: IntArray, x_type: FixedType, layer: MlpLayer, precision: MlpPrecision
) -> IntArray:
    """One ``nnet::dense`` (io_parallel, Latency) on raw inputs; returns raw ``result`` values."""
    accum = precision.accum
    weight_raw = written_weights(layer.weight, precision.weight).T  # (in, out), hls4ml's layout
    bias_raw = written_weights(layer.bias_or_zeros, precision.bias)
    # templates/vivado/nnet_utils/nnet_dense_latency.h, dense_latency, "Product1/Product2":
    # mult[index] = product::mult<data_T, weight_t>::product(...) (nnet_mult.h: full-precision
    # a * w) stored into an accum_t array, i.e. cast with accum_t's rounding and overflow.
    product_raw, product_type = mul(
        x_raw[:, :, None], x_type, weight_raw[None, :, :], precision.weight
    )
    mult = accum.cast(product_raw, product_type)
    # "ResetAccum": acc[iacc] = (accum_t)biases[iacc].
    acc = np.broadcast_to(
        accum.cast(bias_raw, precision.bias), (x_raw.shape[0], layer.out_features)
    )
    # "Accum1/Accum2": acc[jj] += mult[ii * n_out + jj] for ii = 0, 1, ...; each += is a
    # full-precision sum cast back into accum_t, so with AP_SAT the order matters and is kept.
    for ii in range(layer.in_features):
        total, total_type = add(acc, accum, mult[:, ii, :], accum)
        acc = accum.cast(total, total_type)
    # "Result": res[ires] = cast<data_T, res_T, CONFIG_T>(acc[ires]) (nnet_mult.h: (res_T)x).
    return precision.result.cast(acc, accum)


def golden_mlp(
    x: npt.ArrayLike,
    layers: Sequence[MlpLayer],
    precision: MlpPrecision,
    *,
    return_raw: bool = False,
) -> npt.NDArray[np.float64] | IntArray:
    """Bit-exact model of hls4ml 1.3.0's io_parallel MLP (Dense + ReLU), as its C-simulation runs.

    Steps (hls4ml sources relative to the installed package):

    1. Inputs: ``nnet::convert_data<double, input_t>`` in the generated ``myproject_bridge.cpp``
       assigns each float to ``input_t`` (``ap_fixed_base(double)``: exact value, then ``input``'s
       rounding and overflow); float32 inputs widen to double exactly.
    2. Weights and biases: as :func:`written_weights`.
    3. Dense: ``nnet_dense_latency.h`` ``dense_latency`` (each product cast to ``accum_t``; the
       accumulator starts at the bias cast to ``accum_t``; products are added in input order, each
       sum cast to ``accum_t``; the sum is cast to ``result_t``).
    4. ReLU: ``nnet_activation.h`` ``relu``: ``res = data > 0 ? data : 0``. Its result type is
       ``result`` too, so the copy is exact.

    Parameters
    ----------
    x : array_like of float
        Shape ``(in_features,)`` or ``(batch, in_features)``; finite.
    layers : sequence of MlpLayer
        The MLP, e.g. from :func:`mlp_from_torch`.
    precision : MlpPrecision
        Formats.
    return_raw : bool, default False
        Return raw ``int64`` values of ``precision.result`` instead of their real values.

    Returns
    -------
    numpy.ndarray
        Outputs shaped like ``x`` with ``out_features`` last: float64 real values (exact), or raw
        ``int64`` values when ``return_raw``.

    Raises
    ------
    ValueError
        If the layers do not chain, ``x`` has the wrong shape or is not finite, or ``precision`` is
        not an MlpPrecision.
    """
    if not isinstance(precision, MlpPrecision):
        raise ValueError(f"precision must be an MlpPrecision, got {type(precision).__name__}")
    _check_layers(layers)
    arr = _check_input(x, layers[0].in_features)
    batch = np.atleast_2d(arr)
    raw = precision.input.quantize(batch)
    raw_type = precision.input
    for layer in layers:
        raw = _dense(raw, raw_type, layer, precision)
        raw_type = precision.result
        if layer.activation == "relu":
            raw = np.where(raw > 0, raw, 0).astype(np.int64)
    out = raw if arr.ndim == 2 else raw[0]
    if return_raw:
        return out
    return precision.result.to_float(out)


def mlp_float(x: npt.ArrayLike, layers: Sequence[MlpLayer]) -> FloatArray:
    """Float64 reference of the MLP (no quantization), for measuring the golden model's error.

    Parameters
    ----------
    x : array_like of float
        Shape ``(in_features,)`` or ``(batch, in_features)``.
    layers : sequence of MlpLayer
        The MLP.

    Returns
    -------
    numpy.ndarray of float64
        Outputs shaped like ``x`` with ``out_features`` last.
    """
    _check_layers(layers)
    out = _check_input(x, layers[0].in_features).astype(np.float64)
    for layer in layers:
        out = out @ layer.weight.astype(np.float64).T + layer.bias_or_zeros.astype(np.float64)
        if layer.activation == "relu":
            out = np.maximum(out, 0.0)
    return np.asarray(out, dtype=np.float64)
