"""Task-level mixture-of-experts layer (Edge-MoE / M³ViT style): configuration, bit-exact golden
model, float reference and weight-traffic model.

Each task has its own gate; each token goes to its ``top_k`` best experts, whose outputs are mixed
with gate weights. The layer runs on one shared ``rows x cols`` int8 GEMM engine (Edge-MoE's
unified linear unit), with Edge-MoE's *patch reordering*: the gate appends every token, with its
gate weight, to a queue per selected expert; then each expert with a non-empty queue has its
weights loaded once and processes its whole queue as one GEMM; outputs are scattered back to
their tokens with the gate weights. Experts nobody picked are never loaded.

Numerics (all integers, every rounding modelled exactly), for int8 tokens ``x`` (tokens, dim):

1. gate logits ``requantize(x @ G[task])``: signed ``logit_bits`` with ``logit_frac`` fraction
   bits (the softmax unit's input format);
2. top-k per token on the integer logits, ties to the lower expert index; the ``k`` selected
   logits, in rank order (largest first), go through the online softmax of
   :mod:`tessera.models.softmax` (so the unit shared with attention is reused): gate weights,
   unsigned ``gate_bits`` with ``gate_frac`` fraction bits;
3. per-expert queues: for each expert the (token, gate weight) pairs in token order;
4. per loaded expert, on its queue's tokens: ``pre = requantize(x @ W1 + b1)`` in the GELU unit's
   input format (``gelu_bits``, ``gelu_frac``), ``act = gelu(pre)`` (ROM + interpolation, see
   :mod:`tessera.models.gelu`), ``h = requantize(act)`` to ``act_bits``, ``y_e = requantize(h @ W2
   + b2)`` to ``act_bits``. The accumulator is preloaded with the bias, so bias and products wrap
   together modulo ``2**acc_bits``;
5. combine: ``y[t] = saturate(round_half_up(sum_k w_k * y_e[t] / 2**gate_frac), act_bits)``.

Requantizations use the engine's rounding and overflow modes (``rounding``, ``overflow``) and
zero points of 0 (every tensor is symmetric: a zero point would not survive the weighted sum).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig, check_int
from tessera.models.gelu import GeluConfig, gelu, gelu_float
from tessera.models.gemm import GemmConfig, Requant, gemm, gemm_tiles
from tessera.models.quantize import QuantParams, QuantSpec, calibrate, quantize
from tessera.models.rounding import (
    Overflow,
    Rounding,
    int_range,
    quantize_multiplier,
    requantize,
    saturate,
    shift_round,
    wrap,
)
from tessera.models.softmax import SoftmaxConfig, softmax

__all__ = [
    "DEFAULT_BUS_BYTES",
    "MoeConfig",
    "MoeImage",
    "MoeImageLayout",
    "MoeQuant",
    "MoeRouting",
    "MoeWeights",
    "expert_ffn",
    "moe_image_layout",
    "moe_layer",
    "moe_layer_float",
    "moe_layer_naive",
    "moe_traffic",
    "moe_weight_image",
    "route",
    "select_top_k",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

OPERAND_BITS = 8
"""Operand width of the GEMM engine: activations and weights travel in int8 lanes."""
DEFAULT_BUS_BYTES = 16
"""Default width of the weight-load bus (a 128-bit AXI port), bytes per cycle."""


@dataclass(frozen=True)
class MoeConfig(EngineConfig):
    """Parameters of a task-level MoE layer and of the engine it runs on.

    Parameters
    ----------
    dim : int
        Token width (1..4096).
    experts : int
        Number of experts (1..256).
    expert_hidden : int
        Hidden width of each expert's FFN (1..16384).
    top_k : int
        Experts per token (1..experts).
    tasks : int
        Number of tasks, each with its own gate (1..64).
    max_tokens : int
        Longest token sequence, i.e. the depth of each expert queue (1..65535).
    rows, cols : int
        Shape of the shared int8 GEMM array (1..64 each); ``rows`` tokens by ``cols`` output
        features per tile. Edge-MoE's unified linear unit is 16 x 16.
    acc_bits : int
        Accumulator width (16..32); biases must fit it and sums wrap modulo ``2**acc_bits``.
    act_bits : int
        Signed width of tokens, of the hidden activations fed to W2 and of the output (2..8).
        Narrower than 8 only narrows the value range (requantizations saturate to it, inputs must
        fit it); the engine still multiplies in int8 lanes.
    weight_bits : int
        Signed width of gate and expert weights (2..8). Narrower weights are quantized to that
        range and stored packed, so :func:`moe_traffic` loads ``weight_bits / 8`` bytes per
        weight; the engine still multiplies in int8 lanes. Wider operands would need a wider
        array than :class:`~tessera.models.gemm.GemmConfig` describes.
    logit_bits, logit_frac : int
        Gate logits (softmax input): signed width 4..24, fraction bits 0..logit_bits-1.
    exp_frac, lut_bits, interp_bits : int
        Online softmax unit: exponential fraction bits (8..20), ``exp`` table index bits (1..8)
        and linearly interpolated bits (0..10); see :class:`~tessera.models.softmax.SoftmaxConfig`.
    gate_bits, gate_frac : int
        Gate weights (softmax output): unsigned width 2..24, fraction bits 1..gate_bits-1.
    gelu_bits, gelu_frac : int
        GELU unit input/output: signed width 4..24, fraction bits gelu_step_log2..gelu_bits-1.
    gelu_rom_entries, gelu_step_log2 : int
        GELU ROM: number of ``delta`` samples (2..4096) at spacing ``2**-gelu_step_log2``
        (0..12); the defaults are Edge-MoE's 177 entries at 1/32 (``|x| < 5.5``).
    rounding : Rounding
        Rounding of every requantization.
    overflow : Overflow
        Overflow handling of every requantization.
    bus_bytes : int
        Data width of the engine's AXI4 weight-read port in bytes (1..64, a power of two): one
        beat of a weight fetch, and the default of :func:`moe_traffic`.
    """

    dim: int = 32
    experts: int = 4
    expert_hidden: int = 32
    top_k: int = 2
    tasks: int = 2
    max_tokens: int = 256
    rows: int = 16
    cols: int = 16
    acc_bits: int = 32
    act_bits: int = 8
    weight_bits: int = 8
    logit_bits: int = 16
    logit_frac: int = 8
    exp_frac: int = 16
    lut_bits: int = 5
    interp_bits: int = 8
    gate_bits: int = 16
    gate_frac: int = 15
    gelu_bits: int = 16
    gelu_frac: int = 10
    gelu_rom_entries: int = 177
    gelu_step_log2: int = 5
    rounding: Rounding = Rounding.RND_INF
    overflow: Overflow = Overflow.SAT
    bus_bytes: int = DEFAULT_BUS_BYTES

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1, 4096)
        check_int("experts", self.experts, 1, 256)
        check_int("expert_hidden", self.expert_hidden, 1, 16384)
        check_int("top_k", self.top_k, 1, self.experts)
        check_int("tasks", self.tasks, 1, 64)
        check_int("max_tokens", self.max_tokens, 1, 65535)
        check_int("rows", self.rows, 1, 64)
        check_int("cols", self.cols, 1, 64)
        check_int("acc_bits", self.acc_bits, 16, 32)
        check_int("act_bits", self.act_bits, 2, OPERAND_BITS)
        check_int("weight_bits", self.weight_bits, 2, OPERAND_BITS)
        check_int("logit_bits", self.logit_bits, 4, 24)
        check_int("logit_frac", self.logit_frac, 0, self.logit_bits - 1)
        check_int("exp_frac", self.exp_frac, 8, 20)
        check_int("lut_bits", self.lut_bits, 1, 8)
        check_int("interp_bits", self.interp_bits, 0, 10)
        check_int("gate_bits", self.gate_bits, 2, 24)
        check_int("gate_frac", self.gate_frac, 1, self.gate_bits - 1)
        check_int("gelu_bits", self.gelu_bits, 4, 24)
        check_int("gelu_step_log2", self.gelu_step_log2, 0, 12)
        check_int("gelu_frac", self.gelu_frac, self.gelu_step_log2, self.gelu_bits - 1)
        check_int("gelu_rom_entries", self.gelu_rom_entries, 2, 4096)
        check_int("bus_bytes", self.bus_bytes, 1, 64)
        if self.bus_bytes & (self.bus_bytes - 1):
            raise ValueError(
                f"bus_bytes must be a power of two in [1, 64] (an AXI4 data width), "
                f"got {self.bus_bytes}"
            )
        self._coerce_modes()
        # The derived unit configs check the combinations; name this config's fields on failure.
        try:
            self.softmax  # noqa: B018
        except ValueError as err:
            raise ValueError(
                f"softmax formats (logit_bits, logit_frac, lut_bits, interp_bits): {err}"
            ) from None
        try:
            self.gelu  # noqa: B018
        except ValueError as err:
            raise ValueError(
                f"GELU formats (gelu_bits, gelu_frac, gelu_rom_entries, gelu_step_log2): {err}"
            ) from None

    # --- derived unit configurations -------------------------------------------------------
    @property
    def gemm(self) -> GemmConfig:
        """The shared GEMM engine (its size registers hold every M, N, K the layer uses)."""
        largest = max(self.dim, self.expert_hidden, self.max_tokens, self.experts)
        return GemmConfig(
            rows=self.rows,
            cols=self.cols,
            acc_bits=self.acc_bits,
            out_bits=self.act_bits,
            dim_bits=max(2, largest.bit_length()),
            rounding=self.rounding,
            overflow=self.overflow,
        )

    @property
    def softmax(self) -> SoftmaxConfig:
        """The online softmax unit as the gate uses it: rows of ``top_k`` selected logits."""
        return SoftmaxConfig(
            in_bits=self.logit_bits,
            in_frac=self.logit_frac,
            exp_frac=self.exp_frac,
            lut_bits=self.lut_bits,
            interp_bits=self.interp_bits,
            out_bits=self.gate_bits,
            out_frac=self.gate_frac,
            max_len=self.top_k,
        )

    @property
    def gelu(self) -> GeluConfig:
        """The GELU unit between W1 and W2 (one lane per array column).

        Its ROM words carry ``max(16, gelu_frac)`` fraction bits and are ``rom_frac - 2`` bits
        wide, which holds ``delta``'s peak of 0.17.
        """
        rom_frac = max(16, self.gelu_frac)
        return GeluConfig(
            in_bits=self.gelu_bits,
            in_frac=self.gelu_frac,
            rom_entries=self.gelu_rom_entries,
            step_log2=self.gelu_step_log2,
            rom_bits=rom_frac - 2,
            rom_frac=rom_frac,
            lanes=self.cols,
        )

    @property
    def act_range(self) -> tuple[int, int]:
        """Inclusive range of tokens, hidden activations and outputs."""
        return int_range(self.act_bits, True)

    @property
    def weight_range(self) -> tuple[int, int]:
        """Inclusive range of gate and expert weights."""
        return int_range(self.weight_bits, True)

    @property
    def bias_range(self) -> tuple[int, int]:
        """Inclusive range of biases (they preload the accumulator)."""
        return int_range(self.acc_bits, True)

    # --- identity ---------------------------------------------------------------------------
    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``moe_d32e4h32k2t2_r16c16_1a2b3c4d5e``."""
        return (
            f"moe_d{self.dim}e{self.experts}h{self.expert_hidden}k{self.top_k}t{self.tasks}_"
            f"r{self.rows}c{self.cols}_{self.digest}"
        )

    # --- input checking ---------------------------------------------------------------------
    def check_tokens(self, x: npt.ArrayLike) -> IntArray:
        """``x`` as int64 (tokens, dim), or ``ValueError`` naming what is wrong."""
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"x must have shape (tokens, dim={self.dim}), got {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"x must be an integer array of raw tokens, got dtype {arr.dtype}")
        if not 1 <= arr.shape[0] <= self.max_tokens:
            raise ValueError(
                f"x has {arr.shape[0]} tokens; 1..max_tokens={self.max_tokens} are allowed "
                "(raise max_tokens in the config for longer sequences)"
            )
        lo, hi = self.act_range
        arr = arr.astype(np.int64)
        if arr.min() < lo or arr.max() > hi:
            raise ValueError(f"x has values outside act_bits={self.act_bits} range [{lo}, {hi}]")
        return arr

    def check_task(self, task: Any) -> int:
        """``task`` as an int, or ``ValueError`` unless it is in ``0 .. tasks - 1``."""
        check_int("task", task, 0, self.tasks - 1)
        return int(task)


def _requant_tuple(name: str, values: Any, length: int) -> tuple[Requant, ...]:
    items = tuple(values)
    if len(items) != length or not all(isinstance(r, Requant) for r in items):
        raise ValueError(f"{name} must be {length} Requant objects, got {values!r}")
    for i, r in enumerate(items):
        if r.zero_point != 0:
            raise ValueError(
                f"{name}[{i}].zero_point must be 0 (every MoE tensor is symmetric), "
                f"got {r.zero_point}"
            )
    return items


def _scale_tuple(name: str, values: Any, length: int | None) -> tuple[float, ...]:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        raise ValueError(f"{name} must hold {length} scales, got shape {arr.shape}")
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {arr}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class MoeQuant:
    """Real scales of every MoE tensor and the requantizations that follow from them.

    A raw value ``q`` of a tensor stands for ``q * scale``. The requantizations are
    ``Requant(multiplier, shift)`` with ``multiplier / 2**shift`` approximating:

    - ``gate_requant[t]``: ``x_scale * gate_scale[t] * 2**logit_frac`` (gate accumulator to
      logits);
    - ``w1_requant[e]``: ``x_scale * w1_scale[e] * 2**gelu_frac`` (W1 accumulator to GELU input);
    - ``hidden_requant[e]``: ``2**-gelu_frac / hidden_scale[e]`` (GELU output to ``act_bits``);
    - ``w2_requant[e]``: ``hidden_scale[e] * w2_scale[e] / y_scale`` (W2 accumulator to output).

    Parameters
    ----------
    x_scale, y_scale : float
        Scales of the input and output tokens (shared by all experts, so outputs can be mixed).
    gate_scale : tuple of float, length tasks
    w1_scale, hidden_scale, w2_scale : tuple of float, length experts
        Scales of W1, of the hidden activations fed to W2, and of W2. ``b1`` has scale
        ``x_scale * w1_scale[e]`` and ``b2`` has ``hidden_scale[e] * w2_scale[e]``.
    gate_requant : tuple of Requant, length tasks
    w1_requant, hidden_requant, w2_requant : tuple of Requant, length experts
        Zero points must be 0.
    """

    x_scale: float
    y_scale: float
    gate_scale: tuple[float, ...]
    w1_scale: tuple[float, ...]
    hidden_scale: tuple[float, ...]
    w2_scale: tuple[float, ...]
    gate_requant: tuple[Requant, ...]
    w1_requant: tuple[Requant, ...]
    hidden_requant: tuple[Requant, ...]
    w2_requant: tuple[Requant, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_scale", _scale_tuple("x_scale", self.x_scale, 1)[0])
        object.__setattr__(self, "y_scale", _scale_tuple("y_scale", self.y_scale, 1)[0])
        gate_scale = _scale_tuple("gate_scale", self.gate_scale, None)
        w1_scale = _scale_tuple("w1_scale", self.w1_scale, None)
        object.__setattr__(self, "gate_scale", gate_scale)
        object.__setattr__(self, "w1_scale", w1_scale)
        tasks, experts = len(gate_scale), len(w1_scale)
        for name in ("hidden_scale", "w2_scale"):
            object.__setattr__(self, name, _scale_tuple(name, getattr(self, name), experts))
        object.__setattr__(
            self, "gate_requant", _requant_tuple("gate_requant", self.gate_requant, tasks)
        )
        for name in ("w1_requant", "hidden_requant", "w2_requant"):
            object.__setattr__(self, name, _requant_tuple(name, getattr(self, name), experts))

    @property
    def tasks(self) -> int:
        """Number of gates."""
        return len(self.gate_scale)

    @property
    def experts(self) -> int:
        """Number of experts."""
        return len(self.w1_scale)

    @classmethod
    def from_scales(
        cls,
        cfg: MoeConfig,
        *,
        x_scale: float,
        y_scale: float,
        gate_scale: npt.ArrayLike,
        w1_scale: npt.ArrayLike,
        hidden_scale: npt.ArrayLike,
        w2_scale: npt.ArrayLike,
    ) -> MoeQuant:
        """Requantizations for the given scales, from
        :func:`~tessera.models.rounding.quantize_multiplier` (see the class docstring).

        Raises
        ------
        ValueError
            If a scale is not positive and finite, has the wrong length, or gives a ratio no
            31-bit multiplier with a shift of 0..63 can represent.
        """
        gate = _scale_tuple("gate_scale", gate_scale, cfg.tasks)
        w1 = _scale_tuple("w1_scale", w1_scale, cfg.experts)
        hidden = _scale_tuple("hidden_scale", hidden_scale, cfg.experts)
        w2 = _scale_tuple("w2_scale", w2_scale, cfg.experts)
        xs = _scale_tuple("x_scale", x_scale, 1)[0]
        ys = _scale_tuple("y_scale", y_scale, 1)[0]

        def requant(name: str, value: float) -> Requant:
            try:
                return Requant(*quantize_multiplier(value))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None

        return cls(
            x_scale=xs,
            y_scale=ys,
            gate_scale=gate,
            w1_scale=w1,
            hidden_scale=hidden,
            w2_scale=w2,
            gate_requant=tuple(
                requant(f"gate_requant[{t}]", xs * g * 2.0**cfg.logit_frac)
                for t, g in enumerate(gate)
            ),
            w1_requant=tuple(
                requant(f"w1_requant[{e}]", xs * w * 2.0**cfg.gelu_frac) for e, w in enumerate(w1)
            ),
            hidden_requant=tuple(
                requant(f"hidden_requant[{e}]", 2.0**-cfg.gelu_frac / h)
                for e, h in enumerate(hidden)
            ),
            w2_requant=tuple(
                requant(f"w2_requant[{e}]", h * w / ys)
                for e, (h, w) in enumerate(zip(hidden, w2, strict=True))
            ),
        )


def _int_array(name: str, value: npt.ArrayLike, ndim: int) -> IntArray:
    arr = np.array(value)
    if arr.dtype.kind not in "iu" or arr.ndim != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D integer array, got dtype {arr.dtype} shape {arr.shape}"
        )
    arr = arr.astype(np.int64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class MoeWeights:
    """Integer weights of a MoE layer and their quantization.

    Weight matrices are in the GEMM's ``B`` layout, (in_features, out_features): a
    ``torch.nn.Linear`` weight transposed.

    Parameters
    ----------
    gate : ndarray of int, shape (tasks, dim, experts)
        Per-task gate weights, ``weight_bits`` signed.
    w1 : ndarray of int, shape (experts, dim, expert_hidden)
    b1 : ndarray of int, shape (experts, expert_hidden)
        First expert layer; biases ``acc_bits`` signed (int32 by default).
    w2 : ndarray of int, shape (experts, expert_hidden, dim)
    b2 : ndarray of int, shape (experts, dim)
        Second expert layer.
    quant : MoeQuant
        Scales and requantizations.
    """

    gate: IntArray
    w1: IntArray
    b1: IntArray
    w2: IntArray
    b2: IntArray
    quant: MoeQuant

    def __post_init__(self) -> None:
        for name, ndim in (("gate", 3), ("w1", 3), ("b1", 2), ("w2", 3), ("b2", 2)):
            object.__setattr__(self, name, _int_array(name, getattr(self, name), ndim))
        if not isinstance(self.quant, MoeQuant):
            raise ValueError(f"quant must be a MoeQuant, got {type(self.quant).__name__}")
        tasks, dim, experts = self.gate.shape
        hidden = self.w1.shape[2]
        expected = {
            "w1": (experts, dim, hidden),
            "b1": (experts, hidden),
            "w2": (experts, hidden, dim),
            "b2": (experts, dim),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"{name} must have shape {shape} to match gate {self.gate.shape} and w1 "
                    f"{self.w1.shape}, got {getattr(self, name).shape}"
                )
        if (self.quant.tasks, self.quant.experts) != (tasks, experts):
            raise ValueError(
                f"quant covers {self.quant.tasks} tasks and {self.quant.experts} experts; the "
                f"weights have {tasks} and {experts}"
            )

    def check(self, cfg: MoeConfig) -> None:
        """Raise ``ValueError`` unless shapes and value ranges fit ``cfg``."""
        want = (cfg.tasks, cfg.dim, cfg.experts)
        if self.gate.shape != want or self.w1.shape[2] != cfg.expert_hidden:
            raise ValueError(
                f"weights are for tasks, dim, experts = {self.gate.shape} and expert_hidden = "
                f"{self.w1.shape[2]}; the config has {want} and {cfg.expert_hidden}"
            )
        lo, hi = cfg.weight_range
        for name in ("gate", "w1", "w2"):
            arr = getattr(self, name)
            if arr.min() < lo or arr.max() > hi:
                raise ValueError(
                    f"{name} has values outside weight_bits={cfg.weight_bits} range [{lo}, {hi}]"
                )
        lo, hi = cfg.bias_range
        for name in ("b1", "b2"):
            arr = getattr(self, name)
            if arr.min() < lo or arr.max() > hi:
                raise ValueError(
                    f"{name} has values outside acc_bits={cfg.acc_bits} range [{lo}, {hi}]"
                )

    @classmethod
    def from_float(
        cls,
        cfg: MoeConfig,
        *,
        gate: npt.ArrayLike,
        w1: npt.ArrayLike,
        b1: npt.ArrayLike,
        w2: npt.ArrayLike,
        b2: npt.ArrayLike,
        calibration: npt.ArrayLike,
        weight_scale: Callable[[FloatArray], float] | None = None,
        act_scale: Callable[[FloatArray], float] | None = None,
    ) -> MoeWeights:
        """Quantize a float MoE layer (e.g. a torch one's parameters, as numpy arrays).

        Weights are quantized symmetrically, one scale per task gate and per expert matrix, to
        ``weight_bits`` with :func:`tessera.models.quantize.calibrate` / ``quantize``. Biases are
        rounded (half to even) at the accumulator's scale. The input scale covers
        ``calibration``; each expert's hidden scale covers ``GELU(x @ W1 + b1)`` and the output
        scale covers every expert's output, over all calibration tokens through all experts
        (dequantized weights), so no routing can overflow them.

        Parameters
        ----------
        cfg : MoeConfig
            Layer configuration (shapes and widths).
        gate : array_like of float, shape (tasks, dim, experts)
        w1 : array_like of float, shape (experts, dim, expert_hidden)
        b1 : array_like of float, shape (experts, expert_hidden)
        w2 : array_like of float, shape (experts, expert_hidden, dim)
        b2 : array_like of float, shape (experts, dim)
            Float parameters in (in_features, out_features) layout: transpose
            ``torch.nn.Linear.weight``.
        calibration : array_like of float, shape (tokens, dim)
            Representative input tokens.
        weight_scale : callable, optional
            ``weight_scale(matrix)``: the symmetric scale of one ``(in, out)`` weight matrix
            (default: it covers the matrix's largest magnitude, as ``calibrate``).
        act_scale : callable, optional
            ``act_scale(values)``: the symmetric scale of an activation tensor (default: covers
            its largest magnitude). Quantization presets pass their own rules for both.

        Returns
        -------
        MoeWeights
            Integer weights with their :class:`MoeQuant`.
        """
        arrays = {}
        shapes = {
            "gate": (cfg.tasks, cfg.dim, cfg.experts),
            "w1": (cfg.experts, cfg.dim, cfg.expert_hidden),
            "b1": (cfg.experts, cfg.expert_hidden),
            "w2": (cfg.experts, cfg.expert_hidden, cfg.dim),
            "b2": (cfg.experts, cfg.dim),
            "calibration": (None, cfg.dim),
        }
        given = {"gate": gate, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "calibration": calibration}
        for name, shape in shapes.items():
            arr = np.asarray(given[name], dtype=np.float64)
            if arr.ndim != len(shape) or any(
                s is not None and a != s for a, s in zip(arr.shape, shape, strict=True)
            ):
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite (no NaN or infinity)")
            arrays[name] = arr
        if arrays["calibration"].shape[0] == 0:
            raise ValueError("calibration must hold at least one token")
        act_spec = QuantSpec(bits=cfg.act_bits)
        weight_spec = QuantSpec(bits=cfg.weight_bits)

        def covering(spec: QuantSpec) -> Callable[[FloatArray], float]:
            return lambda x: float(calibrate(x, spec).scale)

        weight_scale = weight_scale or covering(weight_spec)
        act_scale = act_scale or covering(act_spec)

        def symmetric(x: FloatArray, scale: float, spec: QuantSpec) -> IntArray:
            return quantize(x, QuantParams(np.float64(scale), np.int64(0), spec))

        def per_slice(stack: FloatArray) -> tuple[IntArray, FloatArray]:
            scales = np.array([weight_scale(m) for m in stack])
            q = np.stack([symmetric(m, s, weight_spec) for m, s in zip(stack, scales, strict=True)])
            return q, scales

        gate_q, gate_scale = per_slice(arrays["gate"])
        w1_q, w1_scale = per_slice(arrays["w1"])
        w2_q, w2_scale = per_slice(arrays["w2"])
        x_scale = act_scale(arrays["calibration"])
        x_deq = symmetric(arrays["calibration"], x_scale, act_spec) * x_scale
        lo, hi = cfg.bias_range
        b1_q = np.clip(np.round(arrays["b1"] / (x_scale * w1_scale[:, None])), lo, hi)
        hidden_scale = np.empty(cfg.experts)
        outputs = []
        for e in range(cfg.experts):
            h = gelu_float(x_deq @ (w1_q[e] * w1_scale[e]) + b1_q[e] * x_scale * w1_scale[e])
            hidden_scale[e] = act_scale(h)
            outputs.append(h @ (w2_q[e] * w2_scale[e]) + arrays["b2"][e])
        y_scale = act_scale(np.stack(outputs))
        b2_q = np.clip(np.round(arrays["b2"] / (hidden_scale * w2_scale)[:, None]), lo, hi)
        quant = MoeQuant.from_scales(
            cfg,
            x_scale=x_scale,
            y_scale=y_scale,
            gate_scale=gate_scale,
            w1_scale=w1_scale,
            hidden_scale=hidden_scale,
            w2_scale=w2_scale,
        )
        return cls(
            gate=gate_q,
            w1=w1_q,
            b1=b1_q.astype(np.int64),
            w2=w2_q,
            b2=b2_q.astype(np.int64),
            quant=quant,
        )

    def quantize_tokens(self, x: npt.ArrayLike, cfg: MoeConfig) -> IntArray:
        """Float tokens to raw inputs at ``quant.x_scale`` (round half to even, saturate)."""
        lo, hi = cfg.act_range
        arr = np.asarray(x, dtype=np.float64)
        return np.clip(np.round(arr / self.quant.x_scale), lo, hi).astype(np.int64)

    def dequantized(self) -> dict[str, FloatArray]:
        """The real-valued parameters the integers stand for (keys as the fields)."""
        q = self.quant
        gs, w1s = np.array(q.gate_scale), np.array(q.w1_scale)
        hs, w2s = np.array(q.hidden_scale), np.array(q.w2_scale)
        return {
            "gate": self.gate * gs[:, None, None],
            "w1": self.w1 * w1s[:, None, None],
            "b1": self.b1 * (q.x_scale * w1s)[:, None],
            "w2": self.w2 * w2s[:, None, None],
            "b2": self.b2 * (hs * w2s)[:, None],
        }


@dataclass(frozen=True, eq=False)
class MoeRouting:
    """Routing decisions of one MoE layer call.

    Attributes
    ----------
    task : int
        Task whose gate routed the tokens.
    logits : ndarray of int64, shape (tokens, experts)
        Raw gate logits (``logit_bits``, ``logit_frac`` fraction bits).
    experts : ndarray of int64, shape (tokens, top_k)
        Selected experts per token, in rank order (largest logit first, ties to the lower index).
    weights : ndarray of int64, shape (tokens, top_k)
        Gate weights of the selected experts (``gate_frac`` fraction bits).
    queue_tokens : tuple of ndarray of int64, length experts
        Per expert, the tokens in its queue, in token order.
    queue_weights : tuple of ndarray of int64, length experts
        Per expert, the gate weight of each queued token.
    """

    task: int
    logits: IntArray
    experts: IntArray
    weights: IntArray
    queue_tokens: tuple[IntArray, ...]
    queue_weights: tuple[IntArray, ...]

    @property
    def tokens(self) -> int:
        """Number of routed tokens."""
        return int(self.experts.shape[0])

    @property
    def top_k(self) -> int:
        """Experts per token."""
        return int(self.experts.shape[1])

    @property
    def queue_lengths(self) -> IntArray:
        """Tokens queued per expert, shape (experts,)."""
        return np.array([len(q) for q in self.queue_tokens], dtype=np.int64)

    @property
    def loaded_experts(self) -> IntArray:
        """Experts with a non-empty queue (the only ones whose weights are loaded)."""
        return np.flatnonzero(self.queue_lengths)


def select_top_k(logits: npt.ArrayLike, k: int) -> IntArray:
    """The ``k`` largest logits' expert indices per row, largest first, ties to the lower index.

    The tie rule is what a comparator tree that keeps its left (lower-index) input on equality
    gives, and it makes the choice a pure function of the integer logits.
    """
    arr = np.asarray(logits, dtype=np.int64)
    # A stable sort of the negated logits keeps equal logits in index order.
    return np.argsort(-arr, axis=-1, kind="stable")[..., :k].astype(np.int64)


def route(x: npt.ArrayLike, weights: MoeWeights, task: int, cfg: MoeConfig) -> MoeRouting:
    """Gate, top-k, softmax over the selected logits and per-expert queues (steps 1-3).

    Parameters
    ----------
    x : array_like of int, shape (tokens, dim)
        Raw tokens (``act_bits`` signed).
    weights : MoeWeights
        Layer weights.
    task : int
        Which gate to use, ``0 .. tasks - 1``.
    cfg : MoeConfig
        Layer configuration.

    Returns
    -------
    MoeRouting
        Logits, selections, gate weights and queues.
    """
    x_arr = cfg.check_tokens(x)
    task = cfg.check_task(task)
    weights.check(cfg)
    rq = weights.quant.gate_requant[task]
    logits = requantize(
        gemm(x_arr, weights.gate[task], cfg.gemm),
        rq.multiplier,
        rq.shift,
        0,
        bits=cfg.logit_bits,
        signed=True,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
    )
    selected = select_top_k(logits, cfg.top_k)
    # Rank order puts the maximum first, so the online unit never has to rescale its sum.
    gate_weights = softmax(np.take_along_axis(logits, selected, axis=1), cfg.softmax)
    queue_tokens = []
    queue_weights = []
    for e in range(cfg.experts):
        hit = selected == e  # at most one hit per row: the k experts are distinct
        queue_tokens.append(np.flatnonzero(hit.any(axis=1)).astype(np.int64))
        queue_weights.append(gate_weights[hit])  # row-major, i.e. token order
    return MoeRouting(
        task=task,
        logits=logits,
        experts=selected,
        weights=gate_weights,
        queue_tokens=tuple(queue_tokens),
        queue_weights=tuple(queue_weights),
    )


def _linear(
    x: IntArray, w: IntArray, b: IntArray, rq: Requant, bits: int, cfg: MoeConfig
) -> IntArray:
    """``requantize(x @ w + b)`` on the engine, the accumulator preloaded with the bias."""
    acc = wrap(gemm(x, w, cfg.gemm) + b, cfg.acc_bits, True)
    return requantize(
        acc,
        rq.multiplier,
        rq.shift,
        0,
        bits=bits,
        signed=True,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
    )


def expert_ffn(x: npt.ArrayLike, weights: MoeWeights, expert: int, cfg: MoeConfig) -> IntArray:
    """One expert's FFN on a batch of tokens (step 4): W1, GELU ROM, requant, W2.

    Parameters
    ----------
    x : array_like of int, shape (n, dim)
        Raw tokens (``act_bits`` signed), ``n >= 1``.
    weights : MoeWeights
        Layer weights.
    expert : int
        Expert index.
    cfg : MoeConfig
        Layer configuration.

    Returns
    -------
    ndarray of int64, shape (n, dim)
        The expert's raw outputs (``act_bits`` signed, scale ``quant.y_scale``).
    """
    x_arr = cfg.check_tokens(x)
    check_int("expert", expert, 0, cfg.experts - 1)
    q = weights.quant
    pre = _linear(
        x_arr, weights.w1[expert], weights.b1[expert], q.w1_requant[expert], cfg.gelu_bits, cfg
    )
    act = gelu(pre, cfg.gelu)
    rq = q.hidden_requant[expert]
    hidden = requantize(
        act,
        rq.multiplier,
        rq.shift,
        0,
        bits=cfg.act_bits,
        signed=True,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
    )
    return _linear(
        hidden, weights.w2[expert], weights.b2[expert], q.w2_requant[expert], cfg.act_bits, cfg
    )


def _combine(acc: IntArray, cfg: MoeConfig) -> IntArray:
    """``saturate(round_half_up(acc / 2**gate_frac), act_bits)``."""
    return saturate(shift_round(acc, cfg.gate_frac, Rounding.RND), cfg.act_bits, True)


def moe_layer(
    x: npt.ArrayLike, weights: MoeWeights, task: int, cfg: MoeConfig
) -> tuple[IntArray, MoeRouting]:
    """Bit-exact golden model of the MoE layer with per-expert token queues.

    Parameters
    ----------
    x : array_like of int, shape (tokens, dim)
        Raw tokens (``act_bits`` signed, scale ``weights.quant.x_scale``),
        ``1 <= tokens <= max_tokens``.
    weights : MoeWeights
        Layer weights.
    task : int
        Which gate to use, ``0 .. tasks - 1``.
    cfg : MoeConfig
        Layer configuration.

    Returns
    -------
    y : ndarray of int64, shape (tokens, dim)
        Raw outputs (``act_bits`` signed, scale ``weights.quant.y_scale``).
    routing : MoeRouting
        Per token the selected experts and gate weights, per expert the queue.

    Raises
    ------
    ValueError
        If ``x``, ``task`` or ``weights`` do not fit ``cfg``.
    """
    x_arr = cfg.check_tokens(x)
    routing = route(x_arr, weights, task, cfg)
    acc = np.zeros(x_arr.shape, dtype=np.int64)
    for e in routing.loaded_experts:
        tokens = routing.queue_tokens[e]
        y_e = expert_ffn(x_arr[tokens], weights, int(e), cfg)  # gather, one GEMM per layer
        acc[tokens] += routing.queue_weights[e][:, None] * y_e  # scatter with gate weights
    return _combine(acc, cfg), routing


def moe_layer_naive(x: npt.ArrayLike, weights: MoeWeights, task: int, cfg: MoeConfig) -> IntArray:
    """Reference without queues: each token on its own, its experts one after the other.

    Same numerics as :func:`moe_layer` (which must give the same integers); it is the schedule
    whose weight traffic :func:`moe_traffic` reports as ``naive``.
    """
    x_arr = cfg.check_tokens(x)
    task = cfg.check_task(task)
    weights.check(cfg)
    rq = weights.quant.gate_requant[task]
    y = np.zeros(x_arr.shape, dtype=np.int64)
    for t in range(x_arr.shape[0]):
        token = x_arr[t : t + 1]
        acc = gemm(token, weights.gate[task], cfg.gemm)[0]
        logits = [
            int(v)
            for v in requantize(
                acc,
                rq.multiplier,
                rq.shift,
                0,
                bits=cfg.logit_bits,
                signed=True,
                rounding=cfg.rounding,
                overflow=cfg.overflow,
            )
        ]
        chosen = sorted(range(cfg.experts), key=lambda e: (-logits[e], e))[: cfg.top_k]
        gate_weights = softmax(np.array([[logits[e] for e in chosen]]), cfg.softmax)[0]
        total = np.zeros(cfg.dim, dtype=np.int64)
        for e, w in zip(chosen, gate_weights, strict=True):
            total += int(w) * expert_ffn(token, weights, e, cfg)[0]
        y[t] = _combine(total, cfg)
    return y


def moe_layer_float(
    x: npt.ArrayLike,
    weights: MoeWeights,
    task: int,
    cfg: MoeConfig,
    experts: npt.ArrayLike | None = None,
) -> tuple[FloatArray, IntArray]:
    """Float64 reference of the layer with the dequantized weights.

    Logits ``x @ G``, top-k (ties to the lower index), exact softmax over the selected logits,
    expert ``GELU(x @ W1 + b1) @ W2 + b2`` with the exact (erf) GELU, weighted sum.

    Parameters
    ----------
    x : array_like of float, shape (tokens, dim)
        Real-valued tokens (e.g. ``x_raw * quant.x_scale``).
    weights : MoeWeights
        Layer weights (dequantized here).
    task : int
        Which gate to use.
    cfg : MoeConfig
        Layer configuration.
    experts : array_like of int, shape (tokens, top_k), optional
        Use these selections instead of the float top-k (to compare the arithmetic alone with
        :func:`moe_layer`, whose integer logits may order near-ties differently).

    Returns
    -------
    y : ndarray of float64, shape (tokens, dim)
        Real-valued outputs.
    experts : ndarray of int64, shape (tokens, top_k)
        The selections used.
    """
    task = cfg.check_task(task)
    weights.check(cfg)
    xf = np.asarray(x, dtype=np.float64)
    if xf.ndim != 2 or xf.shape[1] != cfg.dim:
        raise ValueError(f"x must have shape (tokens, dim={cfg.dim}), got {xf.shape}")
    p = weights.dequantized()
    logits = xf @ p["gate"][task]
    if experts is None:
        chosen = np.argsort(-logits, axis=-1, kind="stable")[:, : cfg.top_k]
    else:
        chosen = np.asarray(experts, dtype=np.int64)
        if chosen.shape != (xf.shape[0], cfg.top_k):
            raise ValueError(
                f"experts must have shape (tokens, top_k) = {(xf.shape[0], cfg.top_k)}, "
                f"got {chosen.shape}"
            )
    sel = np.take_along_axis(logits, chosen, axis=1)
    z = np.exp(sel - sel.max(axis=1, keepdims=True))
    gate_weights = z / z.sum(axis=1, keepdims=True)
    y = np.zeros(xf.shape, dtype=np.float64)
    for e in np.unique(chosen):
        rows, slots = np.nonzero(chosen == e)
        h = gelu_float(xf[rows] @ p["w1"][e] + p["b1"][e])
        y[rows] += gate_weights[rows, slots][:, None] * (h @ p["w2"][e] + p["b2"][e])
    return y, chosen.astype(np.int64)


def _gemm_cycles(m: int, n: int, k: int, cfg: MoeConfig) -> int:
    """Engine cycles of an (m, n, k) GEMM: one k-slice per cycle per output tile."""
    tm, tn = gemm_tiles(m, n, cfg.gemm)
    return tm * tn * k


def moe_traffic(
    routing: MoeRouting, cfg: MoeConfig, *, bus_bytes: int | None = None
) -> dict[str, Any]:
    """Weight bytes loaded and cycles of one layer call, with per-expert queues and without.

    - **queued** (:func:`moe_layer`): the task's gate is loaded once, then each expert with a
      non-empty queue has W1, b1, W2, b2 loaded once and runs its queue as one GEMM per layer
      (``M`` = queue length).
    - **naive** (:func:`moe_layer_naive`): the gate is loaded once, then for every token each of
      its ``top_k`` experts is loaded and run on that single token (``M = 1``).

    Weights take ``weight_bits`` bits each (packed), biases ``ceil(acc_bits / 8)`` bytes.

    Cycle model: an (M, N, K) GEMM takes ``ceil(M / rows) * ceil(N / cols) * K`` cycles (one
    k-slice of one output tile per cycle, the engine's schedule with full-rate operand buses;
    ``ideal_compute_cycles`` is ``GemmConfig.ideal_cycles``, the same work without tile padding).
    Loading ``B`` weight bytes takes ``ceil(B / bus_bytes)`` cycles. ``cycles`` adds load and
    compute (no overlap); with ping-pong weight buffers the loads of one expert overlap the
    previous expert's compute, so the truth lies between ``max(load, compute)`` and that sum.
    GELU, softmax and the combine are pipelined behind the GEMMs and not counted.

    Parameters
    ----------
    routing : MoeRouting
        Routing of the call (from :func:`moe_layer` or :func:`route`).
    cfg : MoeConfig
        Layer configuration.
    bus_bytes : int, optional
        Weight-load bus width, bytes per cycle (1..4096); default ``cfg.bus_bytes``.

    Returns
    -------
    dict
        ``tokens``, ``top_k``, ``experts_loaded``, ``assignments`` (tokens * top_k),
        ``gate_bytes``, ``expert_bytes`` (one expert), ``queued_weight_bytes``,
        ``naive_weight_bytes``, ``queued_load_cycles``, ``naive_load_cycles``,
        ``queued_compute_cycles``, ``naive_compute_cycles``, ``ideal_compute_cycles``,
        ``queued_cycles``, ``naive_cycles``, ``weight_bytes_ratio`` (naive / queued) and
        ``cycles_ratio`` (naive / queued).
    """
    if not isinstance(routing, MoeRouting):
        raise ValueError(f"routing must be a MoeRouting, got {type(routing).__name__}")
    if bus_bytes is None:
        bus_bytes = cfg.bus_bytes
    check_int("bus_bytes", bus_bytes, 1, 4096)
    if routing.top_k != cfg.top_k or len(routing.queue_tokens) != cfg.experts:
        raise ValueError(
            f"routing has top_k={routing.top_k} and {len(routing.queue_tokens)} experts; the "
            f"config has top_k={cfg.top_k} and experts={cfg.experts}"
        )
    d, h = cfg.dim, cfg.expert_hidden
    bias_bytes = math.ceil(cfg.acc_bits / 8)
    gate_bytes = math.ceil(d * cfg.experts * cfg.weight_bits / 8)
    expert_bytes = math.ceil(2 * d * h * cfg.weight_bits / 8) + (h + d) * bias_bytes
    tokens = routing.tokens
    lengths = routing.queue_lengths
    loaded = int(np.count_nonzero(lengths))
    assignments = tokens * cfg.top_k

    def load(nbytes: int) -> int:
        return -(-nbytes // bus_bytes)

    gate_cycles = _gemm_cycles(tokens, cfg.experts, d, cfg)
    queued_compute = gate_cycles + sum(
        _gemm_cycles(int(n), h, d, cfg) + _gemm_cycles(int(n), d, h, cfg) for n in lengths if n
    )
    naive_compute = gate_cycles + assignments * (
        _gemm_cycles(1, h, d, cfg) + _gemm_cycles(1, d, h, cfg)
    )
    gemm_cfg = cfg.gemm
    ideal = gemm_cfg.ideal_cycles(tokens, cfg.experts, d) + assignments * (
        gemm_cfg.ideal_cycles(1, h, d) + gemm_cfg.ideal_cycles(1, d, h)
    )
    queued_bytes = gate_bytes + loaded * expert_bytes
    naive_bytes = gate_bytes + assignments * expert_bytes
    # Each expert load is a separate burst, so it is rounded up to whole bus beats on its own.
    queued_load = load(gate_bytes) + loaded * load(expert_bytes)
    naive_load = load(gate_bytes) + assignments * load(expert_bytes)
    queued_cycles = queued_compute + queued_load
    naive_cycles = naive_compute + naive_load
    return {
        "tokens": tokens,
        "top_k": cfg.top_k,
        "experts_loaded": loaded,
        "assignments": assignments,
        "gate_bytes": gate_bytes,
        "expert_bytes": expert_bytes,
        "queued_weight_bytes": queued_bytes,
        "naive_weight_bytes": naive_bytes,
        "queued_load_cycles": queued_load,
        "naive_load_cycles": naive_load,
        "queued_compute_cycles": queued_compute,
        "naive_compute_cycles": naive_compute,
        "ideal_compute_cycles": ideal,
        "queued_cycles": queued_cycles,
        "naive_cycles": naive_cycles,
        "weight_bytes_ratio": naive_bytes / queued_bytes,
        "cycles_ratio": naive_cycles / queued_cycles,
    }


# --- weight image in external memory ---------------------------------------------------------

PAGE_BYTES = 4096
"""AXI4 bursts must not cross a 4 KB boundary; every image region starts on one."""
REQUANT_WORD_BYTES = 8
"""A requantization in the image: multiplier (uint32 LE) then shift (uint32 LE)."""
BIAS_BYTES = 4
"""A bias in the image: int32 little-endian (sign-extended from ``acc_bits``)."""


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass(frozen=True)
class MoeImageLayout:
    """Byte layout of the weight image the ``MoeEngine`` fetches (all offsets in bytes).

    The image holds ``tasks`` gate regions, then ``experts`` expert regions. Region ``i`` of a
    kind starts at ``first + i * stride`` with ``stride`` a multiple of 4096, so with a 4 KB
    aligned base no region shares a page with another and bursts of at most
    :attr:`burst_beats` beats, aligned to them inside a region, never cross a 4 KB boundary.

    Weight matrices (``K x N``, ``(in, out)`` layout) are stored **tile-major**, in the order
    the ``rows x cols`` array consumes them: for each output tile ``j`` of ``cols`` columns, for
    each ``k``, the ``cols`` weights ``W[k, j*cols : (j+1)*cols]`` (one signed byte each, also
    when ``weight_bits < 8``; columns past ``N`` are 0). Biases are padded to whole tiles the
    same way. A requantization is 8 bytes: multiplier then shift, uint32 little-endian each.

    Gate region of task ``t`` (at :meth:`MoeImage.gate_offset`)::

        +0                 gate requant (multiplier, shift)
        +gate_weights      G[t] tile-major: ceil(experts/cols) * dim * cols bytes
        ... zero padding to gate_bytes (a whole number of bus beats)

    Expert region of expert ``e`` (at :meth:`MoeImage.expert_offset`)::

        +0                 W1 requant, +8 hidden requant, +16 W2 requant
        +b1                b1: ceil(hidden/cols) * cols int32
        +b2                b2: ceil(dim/cols) * cols int32
        +w1                W1 tile-major: ceil(hidden/cols) * dim * cols bytes
        +w2                W2 tile-major: ceil(dim/cols) * hidden * cols bytes
        ... zero padding to expert_bytes

    Attributes
    ----------
    bus_bytes : int
        Beat width of the fetch bus.
    burst_beats : int
        Longest burst: ``min(256, 4096 / bus_bytes)`` beats.
    gate_weights : int
        Offset of the gate matrix in a gate region (after its requant word).
    gate_bytes : int
        Bytes one gate fetch reads (the region rounded up to whole beats).
    b1, b2, w1, w2 : int
        Offsets inside an expert region (the three requant words are at 0, 8 and 16).
    expert_bytes : int
        Bytes one expert fetch reads.
    gate_stride, expert_stride : int
        Distance between consecutive regions of a kind (multiples of 4096).
    experts_first : int
        Offset of expert 0's region (after all gate regions).
    total_bytes : int
        Size of the whole image.
    """

    bus_bytes: int
    burst_beats: int
    gate_weights: int
    gate_bytes: int
    b1: int
    b2: int
    w1: int
    w2: int
    expert_bytes: int
    gate_stride: int
    expert_stride: int
    experts_first: int
    total_bytes: int

    @property
    def gate_beats(self) -> int:
        """Bus beats of one gate fetch."""
        return self.gate_bytes // self.bus_bytes

    @property
    def expert_beats(self) -> int:
        """Bus beats of one expert fetch."""
        return self.expert_bytes // self.bus_bytes

    def bursts(self, nbytes: int) -> list[int]:
        """Beats of each burst of a fetch of ``nbytes`` (a region), in order."""
        beats = nbytes // self.bus_bytes
        full, rest = divmod(beats, self.burst_beats)
        return [self.burst_beats] * full + ([rest] if rest else [])

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for the register map)."""
        return dataclasses.asdict(self)


def moe_image_layout(cfg: MoeConfig) -> MoeImageLayout:
    """The weight image layout of ``cfg`` (see :class:`MoeImageLayout`)."""
    c, bb = cfg.cols, cfg.bus_bytes
    tiles_e = -(-cfg.experts // c)
    tiles_h = -(-cfg.expert_hidden // c)
    tiles_d = -(-cfg.dim // c)
    gate_weights = REQUANT_WORD_BYTES
    gate_bytes = _round_up(gate_weights + tiles_e * cfg.dim * c, bb)
    b1 = 3 * REQUANT_WORD_BYTES
    b2 = b1 + tiles_h * c * BIAS_BYTES
    w1 = b2 + tiles_d * c * BIAS_BYTES
    w2 = w1 + tiles_h * cfg.dim * c
    expert_bytes = _round_up(w2 + tiles_d * cfg.expert_hidden * c, bb)
    gate_stride = _round_up(gate_bytes, PAGE_BYTES)
    expert_stride = _round_up(expert_bytes, PAGE_BYTES)
    experts_first = cfg.tasks * gate_stride
    return MoeImageLayout(
        bus_bytes=bb,
        burst_beats=min(256, PAGE_BYTES // bb),
        gate_weights=gate_weights,
        gate_bytes=gate_bytes,
        b1=b1,
        b2=b2,
        w1=w1,
        w2=w2,
        expert_bytes=expert_bytes,
        gate_stride=gate_stride,
        expert_stride=expert_stride,
        experts_first=experts_first,
        total_bytes=experts_first + cfg.experts * expert_stride,
    )


@dataclass(frozen=True, eq=False)
class MoeImage:
    """The byte image of a layer's weights in external memory (see :class:`MoeImageLayout`).

    Attributes
    ----------
    data : bytes
        The whole image; place it at a 4096-byte aligned base address.
    layout : MoeImageLayout
        Offsets and sizes.
    """

    data: bytes
    layout: MoeImageLayout

    @property
    def gate_bytes(self) -> int:
        """Bytes one gate fetch reads."""
        return self.layout.gate_bytes

    @property
    def expert_bytes(self) -> int:
        """Bytes one expert fetch reads."""
        return self.layout.expert_bytes

    def gate_offset(self, task: int) -> int:
        """Byte offset of task ``task``'s gate region."""
        return int(task) * self.layout.gate_stride

    def expert_offset(self, expert: int) -> int:
        """Byte offset of expert ``expert``'s region."""
        return self.layout.experts_first + int(expert) * self.layout.expert_stride


def _tile_major(w: IntArray, cols: int) -> bytes:
    """``(K, N)`` weights as ``ceil(N/cols)`` tiles of ``K x cols`` signed bytes."""
    k, n = w.shape
    tiles = -(-n // cols)
    padded = np.zeros((k, tiles * cols), dtype=np.int64)
    padded[:, :n] = w
    return padded.reshape(k, tiles, cols).transpose(1, 0, 2).astype(np.int8).tobytes()


def _biases(b: IntArray, cols: int) -> bytes:
    padded = np.zeros(_round_up(len(b), cols), dtype=np.int64)
    padded[: len(b)] = b
    return padded.astype("<i4").tobytes()


def _requant_word(rq: Requant) -> bytes:
    return np.array([rq.multiplier, rq.shift], dtype="<u4").tobytes()


def moe_weight_image(weights: MoeWeights, cfg: MoeConfig) -> MoeImage:
    """Lay out every gate and expert of ``weights`` as the engine reads them from DRAM.

    Weights narrower than 8 bits are stored one per byte (sign-extended); the packed storage
    :func:`moe_traffic` assumes would need an unpacker in front of the array.

    Parameters
    ----------
    weights : MoeWeights
        Layer weights (checked against ``cfg``).
    cfg : MoeConfig
        Layer and engine configuration (``cols`` sets the tiling, ``bus_bytes`` the padding).

    Returns
    -------
    MoeImage
        ``layout.total_bytes`` bytes.
    """
    weights.check(cfg)
    layout = moe_image_layout(cfg)
    image = bytearray(layout.total_bytes)
    q = weights.quant
    c = cfg.cols

    def put(offset: int, blob: bytes) -> None:
        image[offset : offset + len(blob)] = blob

    for t in range(cfg.tasks):
        base = t * layout.gate_stride
        put(base, _requant_word(q.gate_requant[t]))
        put(base + layout.gate_weights, _tile_major(weights.gate[t], c))
    for e in range(cfg.experts):
        base = layout.experts_first + e * layout.expert_stride
        for i, rq in enumerate((q.w1_requant[e], q.hidden_requant[e], q.w2_requant[e])):
            put(base + i * REQUANT_WORD_BYTES, _requant_word(rq))
        put(base + layout.b1, _biases(weights.b1[e], c))
        put(base + layout.b2, _biases(weights.b2[e], c))
        put(base + layout.w1, _tile_major(weights.w1[e], c))
        put(base + layout.w2, _tile_major(weights.w2[e], c))
    return MoeImage(data=bytes(image), layout=layout)
