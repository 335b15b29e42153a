"""Post-training quantization of :class:`~tessera.models.m3vit.M3ViT` into a golden integer network.

:func:`quantize_m3vit` calibrates a float :class:`~tessera.models.m3vit.M3ViT` on a fixed set of
images (forward hooks record per-tensor activation ranges over every task) and builds a
:class:`QuantM3ViT` whose :meth:`QuantM3ViT.forward` is pure numpy integer arithmetic made only of
the bit-exact golden units of this package:

- linear layers: :func:`tessera.models.gemm.gemm` (int8 operands, int32 accumulators) with the
  int32 bias added to the accumulator, then :func:`tessera.models.rounding.requantize` with
  multipliers from :func:`tessera.models.rounding.quantize_multiplier`;
- LayerNorm: :func:`tessera.models.layernorm.layernorm` on the int16 residual stream;
- attention: :func:`tessera.models.attention.attention`, one head per call, the score
  requantization from :func:`tessera.models.attention.requant_for_scale`;
- GELU: the ROM unit :func:`tessera.models.gelu.gelu`;
- mixture of experts: :func:`tessera.models.moe.moe_layer` with
  :meth:`tessera.models.moe.MoeWeights.from_float` (or the same calibration under the preset's
  scale rules).

Number formats (``s_*`` are real scales, a raw value ``q`` stands for ``q * s``)
----------------------------------------------------------------------------------
- **Input pixels**: int8, one calibrated scale; the only float-to-integer step of the network.
- **Residual stream**: int16 fixed point with ``res_frac`` fraction bits (one format for the whole
  network, chosen so the calibrated residual range fits with one bit of headroom). Every branch
  (patch embedding, attention, MLP, MoE) is requantized straight into that format, so the
  residual add is an exact integer add with int16 saturation.
- **LayerNorm**: input the residual format, ``gamma``/``beta`` ``<16, param_frac>``, output
  ``<16, ln_out_frac>``, then one requantization to int8 at the calibrated scale of that norm's
  output (for the MoE norm: the MoE layer's ``x_scale``).
- **Weights**: symmetric, ``weight_bits`` (8; 4 for ``w4a8``; 2 for ``w2a8kv4``), *per output
  channel* (per tensor for ``edge-moe``) for the patch embedding and the q/k/v/out/fc1/fc2
  projections (the requantization after the GEMM takes one multiplier per column); *per
  tensor* for the classification heads (one scale, so the int32 logits of all classes compare
  directly and the argmax needs no requantization) and, as
  :meth:`~tessera.models.moe.MoeWeights.from_float` chooses, per gate and per expert matrix in the
  MoE layers. Biases are int32 at the accumulator scale ``s_in * s_w``.
- **Activations**: int8, symmetric, per tensor: LayerNorm outputs, q, k, v (one scale per
  projection, shared by its heads, as the attention engine takes one score requantization), the
  attention output (in the scale of v), and the MLP hidden activations after the GELU. k and v
  are saturated to ``kv_bits`` (4 for ``w2a8kv4``), still in int8 lanes.
- **GELU**: input and output ``<gelu_bits, gelu_frac>`` of the MoE configuration (the same ROM
  unit serves the dense MLPs and the experts).
- **Logits**: int32 accumulators of the head (``s_norm * s_head``).

Every requantization rounds with :attr:`~tessera.models.rounding.Rounding.RND_INF` and saturates,
as the GEMM engine does.

Presets
-------
:data:`PRESETS` holds ``int8``, ``w4a8``, ``edge-moe`` (Edge-MoE's fixed-point style: every scale
rounded up to a power of two, so every tensor is a ``<bits, frac>`` fixed-point number and every
requantization multiplier a power of two, i.e. a pure shift; per-tensor weights) and ``w2a8kv4``
(AccLLM: 2-bit weights whose per-channel scale minimises the squared error, int8 activations,
4-bit keys and values).

File
----
:meth:`QuantM3ViT.save` writes the network to one ``.npz`` (arrays plus a JSON ``__meta__`` entry
with :data:`FILE_FORMAT`, :data:`FILE_VERSION` and a SHA-256 of the arrays), atomically;
:func:`load_quant_m3vit` reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from tessera.models.attention import AttentionConfig, attention, requant_for_scale
from tessera.models.config import EngineConfig, check_int
from tessera.models.gelu import gelu
from tessera.models.gemm import GemmConfig, Requant, gemm
from tessera.models.layernorm import LayerNormConfig, layernorm, quantize_params
from tessera.models.m3vit import LAYERNORM_EPS, M3ViT, M3ViTConfig, MoeLayer
from tessera.models.moe import MoeConfig, MoeQuant, MoeWeights, expert_ffn, moe_layer, route
from tessera.models.moe import _combine as moe_combine
from tessera.models.quantize import QuantParams, QuantSpec, calibrate, fake_quant_torch, quantize
from tessera.models.rounding import Overflow, Rounding, quantize_multiplier, requantize, saturate

__all__ = [
    "FILE_FORMAT",
    "FILE_VERSION",
    "PRESETS",
    "ColumnRequant",
    "QuantLayerNorm",
    "QuantLinear",
    "QuantM3ViT",
    "QuantPreset",
    "float_trace",
    "frac_bits_for",
    "load_quant_m3vit",
    "quantize_linear",
    "quantize_m3vit",
    "symmetric_scale",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_ROUNDING = Rounding.RND_INF
_OVERFLOW = Overflow.SAT
_INT32 = (-(1 << 31), (1 << 31) - 1)
_WEIGHT_SCALES = ("max", "mse")

#: ``format`` and ``version`` in the metadata of a file written by :meth:`QuantM3ViT.save`.
FILE_FORMAT = "tessera.quant_m3vit"
FILE_VERSION = 1
_META_KEY = "__meta__"


@dataclass(frozen=True)
class QuantPreset(EngineConfig):
    """Bit widths and scale rules of a quantized M³ViT.

    Parameters
    ----------
    name : str
        Label of the preset (1..32 characters).
    weight_bits : int
        Signed width of every weight (2..8).
    act_bits : int
        Signed width of the int8 activations (2..8).
    residual_bits : int
        Signed width of the fixed-point residual stream (8..16).
    ln_out_bits : int
        Signed width of the LayerNorm outputs before their int8 requantization (8..16).
    kv_bits : int or None
        Signed width of the attention keys and values (2..``act_bits``; None means
        ``act_bits``). They still travel in the attention engine's int8 lanes; only their range
        shrinks.
    power_of_two : bool
        Round every scale up to a power of two, so every requantization is a pure shift
        (fixed-point formats ``<bits, frac>`` throughout, as Edge-MoE's ``ap_fixed`` datapath).
    per_channel : bool
        One weight scale per output channel of the patch embedding and the attention and MLP
        projections (True) or one per tensor (False).
    weight_scale : {"max", "mse"}
        How a weight scale is chosen: cover the largest magnitude (``"max"``), or minimise the
        squared rounding-plus-clipping error over a grid of clipping ratios (``"mse"``, which
        matters at 2 bits, where ``"max"`` leaves most weights at zero).

    Notes
    -----
    :meth:`to_dict` leaves out ``kv_bits``, ``power_of_two``, ``per_channel`` and
    ``weight_scale`` when they hold their defaults, so the dict and digest of a preset that only
    sets widths name only the widths.
    """

    name: str = "int8"
    weight_bits: int = 8
    act_bits: int = 8
    residual_bits: int = 16
    ln_out_bits: int = 16
    kv_bits: int | None = None
    power_of_two: bool = False
    per_channel: bool = True
    weight_scale: str = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 32:
            raise ValueError(f"name must be a string of 1..32 characters, got {self.name!r}")
        check_int("weight_bits", self.weight_bits, 2, 8)
        check_int("act_bits", self.act_bits, 2, 8)
        check_int("residual_bits", self.residual_bits, 8, 16)
        check_int("ln_out_bits", self.ln_out_bits, 8, 16)
        if self.kv_bits is None:
            object.__setattr__(self, "kv_bits", self.act_bits)
        check_int("kv_bits", self.kv_bits, 2, self.act_bits)
        for flag in ("power_of_two", "per_channel"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.weight_scale not in _WEIGHT_SCALES:
            raise ValueError(
                f"weight_scale must be one of {', '.join(_WEIGHT_SCALES)}, "
                f"got {self.weight_scale!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; the optional fields are left out at their defaults."""
        data = super().to_dict()
        defaults = {
            "kv_bits": self.act_bits,
            "power_of_two": False,
            "per_channel": True,
            "weight_scale": "max",
        }
        for key, default in defaults.items():
            if data[key] == default:
                del data[key]
        return data

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``ptq_int8_w8a8r16_1a2b3c4d5e``."""
        kv = f"kv{self.kv_bits}" if self.kv_bits != self.act_bits else ""
        return (
            f"ptq_{self.name}_w{self.weight_bits}a{self.act_bits}{kv}r{self.residual_bits}"
            f"_{self.digest}"
        )


#: The named presets: int8 everywhere; 4-bit weights with int8 activations; Edge-MoE's
#: fixed-point style (power-of-two scales, per-tensor weights) on the int8 datapath; and
#: AccLLM's W2A8KV4 (2-bit weights, int8 activations, 4-bit keys and values).
PRESETS: dict[str, QuantPreset] = {
    "int8": QuantPreset(),
    "w4a8": QuantPreset(name="w4a8", weight_bits=4),
    "edge-moe": QuantPreset(name="edge-moe", power_of_two=True, per_channel=False),
    "w2a8kv4": QuantPreset(name="w2a8kv4", weight_bits=2, kv_bits=4, weight_scale="mse"),
}


def _preset(preset: QuantPreset | str) -> QuantPreset:
    if isinstance(preset, QuantPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(
            f"preset must be a QuantPreset or one of {sorted(PRESETS)}, got {preset!r}"
        )
    return PRESETS[preset]


def _tensor_params(scale: float, bits: int) -> QuantParams:
    return QuantParams(scale=np.float64(scale), zero_point=np.int64(0), spec=QuantSpec(bits=bits))


def symmetric_scale(max_abs: float, bits: int, power_of_two: bool = False) -> float:
    """Symmetric scale covering ``max_abs`` (as :func:`calibrate` computes it), rounded up to a
    power of two when ``power_of_two``."""
    scale = float(calibrate(np.array([max_abs, -max_abs]), QuantSpec(bits=bits)).scale)
    return float(_pow2_ceil(scale)) if power_of_two else scale


def _pow2_ceil(scale: npt.ArrayLike) -> FloatArray:
    """Smallest powers of two ``>= scale`` (``scale > 0``): the fixed-point LSB covering it."""
    return np.exp2(np.ceil(np.log2(np.asarray(scale, dtype=np.float64))))


def _weight_scales(w: FloatArray, spec: QuantSpec, pre: QuantPreset) -> FloatArray:
    """Scale of each row of the ``(out, in)`` weight ``w`` (one value repeated when ``spec`` is
    per tensor), chosen by ``pre.weight_scale`` and rounded up to a power of two when
    ``pre.power_of_two``."""
    rows = w if spec.granularity == "channel" else w.reshape(1, -1)
    base = np.asarray(calibrate(rows, replace(spec, granularity="channel")).scale)
    if pre.weight_scale == "mse":
        # Clipping ratios of the max-covering scale; the candidate with the least squared error
        # (rounding plus clipping) wins, per row.
        cand = base[:, None] * np.linspace(0.1, 1.0, 91)[None, :]
        if pre.power_of_two:
            cand = _pow2_ceil(cand)
        q = np.clip(np.round(rows[:, None, :] / cand[..., None]), spec.qmin, spec.qmax)
        err = ((q * cand[..., None] - rows[:, None, :]) ** 2).sum(axis=-1)
        base = cand[np.arange(len(cand)), err.argmin(axis=1)]
    elif pre.power_of_two:
        base = _pow2_ceil(base)
    return np.broadcast_to(base, (w.shape[0],)).astype(np.float64)


def frac_bits_for(max_abs: float, bits: int, headroom: int = 1) -> int:
    """Fraction bits of a signed ``bits`` fixed-point format holding ``max_abs * 2**headroom``."""
    int_bits = max(0, math.ceil(math.log2(max(max_abs, 1e-12) * 2**headroom)))
    return max(0, bits - 1 - int_bits)


@dataclass(frozen=True, eq=False)
class ColumnRequant:
    """Per-column (or scalar) ``multiplier / 2**shift`` of a requantization."""

    multiplier: IntArray
    shift: IntArray
    bits: int

    @classmethod
    def of(cls, scale: npt.ArrayLike, bits: int) -> ColumnRequant:
        """The requantization by ``scale`` (per column or scalar) to signed ``bits``."""
        values = np.atleast_1d(np.asarray(scale, dtype=np.float64))
        pairs = [quantize_multiplier(float(v)) for v in values]
        m = np.array([p[0] for p in pairs], dtype=np.int64)
        s = np.array([p[1] for p in pairs], dtype=np.int64)
        return cls(m, s, bits)

    def __call__(self, acc: IntArray) -> IntArray:
        return requantize(
            acc,
            self.multiplier,
            self.shift,
            0,
            bits=self.bits,
            signed=True,
            rounding=_ROUNDING,
            overflow=_OVERFLOW,
        )


@dataclass(frozen=True, eq=False)
class QuantLinear:
    """Integer linear layer: ``requant(gemm(x, w) + b)``; ``requant=None`` keeps the int32 sums.

    ``w`` is (in, out) int, ``w_scale`` per column (or one), ``b`` int32 at ``x_scale * w_scale``.
    """

    w: IntArray
    b: IntArray
    w_scale: FloatArray
    x_scale: float
    requant: ColumnRequant | None
    out_scale: float | None

    def __call__(self, x: IntArray, gemm_cfg: GemmConfig) -> IntArray:
        acc = saturate(gemm(x, self.w, gemm_cfg) + self.b, 32, True)
        return acc if self.requant is None else self.requant(acc)

    def dequantized_weight(self) -> FloatArray:
        """(out, in) float weight the integers stand for (torch layout)."""
        return (self.w * self.w_scale).T


def quantize_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: float,
    out_scale: float | None,
    out_bits: int,
    weight_bits: int,
    per_channel: bool,
    preset: QuantPreset | None = None,
) -> QuantLinear:
    """Quantize a torch ``(out, in)`` weight; ``out_scale`` None keeps int32 accumulators.

    ``preset`` supplies the scale rules (power-of-two scales, MSE-chosen weight scales); without
    it the weight scale covers the largest magnitude.
    """
    w = weight.detach().double().numpy().reshape(weight.shape[0], -1)
    spec = QuantSpec(bits=weight_bits, granularity="channel" if per_channel else "tensor", axis=0)
    if preset is None or (not preset.power_of_two and preset.weight_scale == "max"):
        params = calibrate(w, spec)
        wq = quantize(w, params)
        w_scale = np.broadcast_to(np.asarray(params.scale, dtype=np.float64), (w.shape[0],)).copy()
    else:
        w_scale = _weight_scales(w, spec, preset)
        zero = np.zeros(w.shape[0], dtype=np.int64)
        channel = replace(spec, granularity="channel")
        wq = quantize(w, QuantParams(scale=w_scale, zero_point=zero, spec=channel))
    acc_scale = x_scale * w_scale
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().numpy()
    bq = np.clip(np.round(b / acc_scale), *_INT32).astype(np.int64)
    requant = None if out_scale is None else ColumnRequant.of(acc_scale / out_scale, out_bits)
    return QuantLinear(wq.T.copy(), bq, w_scale, x_scale, requant, out_scale)


@dataclass(frozen=True, eq=False)
class QuantLayerNorm:
    """Integer LayerNorm: the golden ``layernorm`` followed by a requantization to
    ``out_scale``."""

    cfg: LayerNormConfig
    gamma: IntArray
    beta: IntArray
    out_scale: float
    requant: ColumnRequant

    def __call__(self, x: IntArray) -> IntArray:
        return self.requant(layernorm(x, self.gamma, self.beta, self.cfg))


@dataclass(frozen=True, eq=False)
class _Block:
    norm1: QuantLayerNorm
    q: QuantLinear
    k: QuantLinear
    v: QuantLinear
    out: QuantLinear
    score_requant: Requant
    norm2: QuantLayerNorm
    fc1: QuantLinear | None = None
    hidden_requant: ColumnRequant | None = None
    hidden_scale: float = 1.0
    fc2: QuantLinear | None = None
    moe: MoeWeights | None = None
    moe_out: ColumnRequant | None = None


def float_trace(model: M3ViT, images: torch.Tensor, task: int) -> dict[str, torch.Tensor]:
    """Float activations of ``model`` at the points :meth:`QuantM3ViT.per_layer_outputs` reports.

    Keys: ``embed``, ``block{i}.attn`` (residual after the attention add), ``block{i}.out``,
    ``norm`` (final LayerNorm of the cls token) and ``logits``.
    """
    model.check_input(images, task)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        x = model.embed(images)
        out["embed"] = x
        for i, block in enumerate(model.blocks):
            x = x + block.attn(block.norm1(x))
            out[f"block{i}.attn"] = x
            h = block.norm2(x)
            y = block.ffn(h, task)[0] if isinstance(block.ffn, MoeLayer) else block.ffn(h)
            x = x + y
            out[f"block{i}.out"] = x
        n = model.norm(x)[:, 0]
        out["norm"] = n
        out["logits"] = model.heads[task](n)
    return out


class _Recorder:
    """Forward hooks recording the largest magnitude of named module outputs (and inputs)."""

    def __init__(self) -> None:
        self.max_abs: dict[str, float] = {}
        self.tensors: dict[str, list[torch.Tensor]] = {}

    def note(self, name: str, t: torch.Tensor, keep: bool = False) -> None:
        value = float(t.detach().abs().max())
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), value)
        if keep:
            self.tensors.setdefault(name, []).append(t.detach().reshape(-1, t.shape[-1]))


def _calibrate(model: M3ViT, images: torch.Tensor) -> _Recorder:
    """Run every task on ``images`` with hooks on the norms, projections and FFN layers."""
    rec = _Recorder()
    handles = []

    def out_hook(name: str, keep: bool = False):
        def hook(_m: Any, _inp: Any, output: Any) -> None:
            rec.note(name, output[0] if isinstance(output, tuple) else output, keep)

        return hook

    def in_hook(name: str):
        def hook(_m: Any, inp: Any) -> None:
            rec.note(name, inp[0])

        return hook

    moe = set(model.cfg.moe_layers)
    for i, block in enumerate(model.blocks):
        handles.append(block.norm1.register_forward_pre_hook(in_hook("residual")))
        handles.append(block.norm2.register_forward_pre_hook(in_hook("residual")))
        handles.append(block.register_forward_hook(out_hook("residual")))
        handles.append(block.norm1.register_forward_hook(out_hook(f"block{i}.norm1")))
        handles.append(block.norm2.register_forward_hook(out_hook(f"block{i}.norm2", i in moe)))
        for p in ("q", "k", "v"):
            handles.append(getattr(block.attn, p).register_forward_hook(out_hook(f"block{i}.{p}")))
        if i not in moe:
            handles.append(
                block.ffn.fc2.register_forward_pre_hook(in_hook(f"block{i}.hidden"))  # type: ignore[union-attr]
            )
    handles.append(model.norm.register_forward_hook(out_hook("norm")))
    try:
        with torch.no_grad():
            for task in range(model.cfg.num_tasks):
                rec.note("residual", model.embed(images))
                model(images, task)
    finally:
        for h in handles:
            h.remove()
    return rec


@dataclass(frozen=True, eq=False)
class QuantM3ViT:
    """The integer M³ViT built by :func:`quantize_m3vit`.

    Attributes
    ----------
    cfg : M3ViTConfig
        Architecture.
    preset : QuantPreset
        Bit widths.
    gemm_cfg : GemmConfig
        The GEMM engine every dense linear layer runs on.
    attn_cfg : AttentionConfig
        The attention engine (one head per call).
    moe_cfg : MoeConfig
        The MoE layers (its GELU unit also serves the dense MLPs).
    res_frac : int
        Fraction bits of the ``residual_bits`` residual stream.
    in_scale : float
        Scale of the int8 input pixels.
    patch : linear layer
        Patch embedding as a GEMM over ``C * p * p`` pixels, requantized into the residual format.
    cls_pos, pos : ndarray of int64
        ``cls_token + pos_embed[0]`` and ``pos_embed[1:]`` in the residual format.
    blocks : tuple
        Per encoder block: the two norms, the q/k/v/out projections, the score requantization and
        either the dense MLP (fc1, GELU requantization, fc2) or the ``MoeWeights`` and the
        requantization of the MoE output into the residual format.
    norm : LayerNorm stage
        Final norm (cls token only), int8 output.
    heads : tuple
        Per task, the head with per-tensor weights, kept as int32 accumulators.
    model : M3ViT
        The float network (for :meth:`fake_quant`; never modified).
    """

    cfg: M3ViTConfig
    preset: QuantPreset
    gemm_cfg: GemmConfig
    attn_cfg: AttentionConfig
    moe_cfg: MoeConfig
    res_frac: int
    in_scale: float
    patch: QuantLinear
    cls_pos: IntArray
    pos: IntArray
    blocks: tuple[_Block, ...]
    norm: QuantLayerNorm
    heads: tuple[QuantLinear, ...]
    model: M3ViT = field(repr=False)

    # --- integer network ------------------------------------------------------------------
    def quantize_images(self, images: torch.Tensor | npt.ArrayLike) -> IntArray:
        """Float ``(batch, C, H, W)`` images to int8 pixels at :attr:`in_scale`."""
        arr = images.detach().double().numpy() if isinstance(images, torch.Tensor) else images
        arr = np.asarray(arr, dtype=np.float64)
        cfg = self.cfg
        shape = (cfg.channels, cfg.image_height, cfg.image_width)
        if arr.ndim != 4 or arr.shape[1:] != shape:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, shape))}), got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError("images must be finite (no NaN or infinity)")
        return quantize(arr, _tensor_params(self.in_scale, self.preset.act_bits))

    def _patches(self, pixels: IntArray) -> IntArray:
        b, c, h, w = pixels.shape
        p = self.cfg.patch_size
        x = pixels.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        return x.reshape(b * (h // p) * (w // p), c * p * p)

    # Stages of the network, each a bit-exact integer function (the host runtime places them on
    # devices one by one; _run chains them).
    def embed(self, pixels: IntArray) -> IntArray:
        """int8 pixels ``(batch, C, H, W)`` -> the residual stream ``(batch, tokens, dim)``:
        patch GEMM requantized into the residual format, cls token and positions added."""
        cfg, rbits = self.cfg, self.preset.residual_bits
        b = pixels.shape[0]
        t, d = cfg.num_tokens, cfg.embed_dim
        emb = self.patch(self._patches(pixels), self.gemm_cfg).reshape(b, t - 1, d)
        x = np.empty((b, t, d), dtype=np.int64)
        x[:, 0] = self.cls_pos
        x[:, 1:] = saturate(emb + self.pos, rbits, True)
        return x

    def attention_block(self, block: int, x: IntArray) -> IntArray:
        """``x + out(attention(q, k, v))`` of encoder block ``block`` on the residual stream."""
        cfg, blk = self.cfg, self.blocks[block]
        b, t, d = x.shape
        hd = cfg.head_dim
        h = blk.norm1(x).reshape(b * t, d)
        q, k, v = (
            lin(h, self.gemm_cfg).reshape(b, t, cfg.num_heads, hd).transpose(0, 2, 1, 3)
            for lin in (blk.q, blk.k, blk.v)
        )
        mixed = np.empty_like(q)
        for img in range(b):
            for head in range(cfg.num_heads):
                mixed[img, head] = attention(
                    q[img, head][None],
                    k[img, head][None],
                    v[img, head][None],
                    self.attn_cfg,
                    blk.score_requant,
                )[0]
        mixed = mixed.transpose(0, 2, 1, 3).reshape(b * t, d)
        y = blk.out(mixed, self.gemm_cfg).reshape(b, t, d)
        return saturate(x + y, self.preset.residual_bits, True)

    def mlp_block(self, block: int, x: IntArray) -> IntArray:
        """``x + fc2(GELU(fc1(norm2(x))))`` of a dense block."""
        blk = self.blocks[block]
        if blk.moe is not None:
            raise ValueError(f"block {block} is a mixture-of-experts block: use the moe_* stages")
        b, t, d = x.shape
        h = blk.norm2(x)
        pre = blk.fc1(h.reshape(b * t, d), self.gemm_cfg)  # type: ignore[misc]
        hidden = blk.hidden_requant(gelu(pre, self.moe_cfg.gelu))  # type: ignore[misc]
        y = blk.fc2(hidden, self.gemm_cfg).reshape(b, t, d)  # type: ignore[misc]
        return saturate(x + y, self.preset.residual_bits, True)

    def _moe(self, block: int) -> MoeWeights:
        moe = self.blocks[block].moe
        if moe is None:
            raise ValueError(f"block {block} is a dense block: use mlp_block")
        return moe

    def moe_norm(self, block: int, x: IntArray) -> IntArray:
        """int8 tokens ``norm2(x)`` that MoE block ``block`` routes."""
        self._moe(block)
        return self.blocks[block].norm2(x)

    def moe_gates(self, block: int, h: IntArray, task: int) -> IntArray:
        """Gate weights ``(batch, tokens, experts)`` of task ``task``: the softmax weight of each
        selected expert (``gate_frac`` fraction bits), 0 for the others."""
        moe = self._moe(block)
        gates = np.zeros((*h.shape[:2], self.moe_cfg.experts), dtype=np.int64)
        for img in range(h.shape[0]):
            r = route(h[img], moe, task, self.moe_cfg)
            np.put_along_axis(gates[img], r.experts, r.weights, axis=1)
        return gates

    def moe_expert(self, block: int, expert: int, h: IntArray, gates: IntArray) -> IntArray:
        """Expert ``expert``'s weighted contribution ``gate * y_e`` (int64, ``(batch, tokens,
        dim)``, 0 for tokens not routed to it): the sum over experts is the MoE accumulator."""
        moe = self._moe(block)
        out = np.zeros(h.shape, dtype=np.int64)
        for img in range(h.shape[0]):
            tokens = np.flatnonzero(gates[img, :, expert])
            if tokens.size:
                y = expert_ffn(h[img][tokens], moe, expert, self.moe_cfg)
                out[img, tokens] = gates[img, tokens, expert][:, None] * y
        return out

    def moe_combine(self, block: int, x: IntArray, acc: IntArray) -> IntArray:
        """``x + moe_out(round(acc / 2**gate_frac))``: the MoE output into the residual stream."""
        self._moe(block)
        y = self.blocks[block].moe_out(moe_combine(acc, self.moe_cfg))  # type: ignore[misc]
        return saturate(x + y, self.preset.residual_bits, True)

    def head(self, x: IntArray, task: int) -> IntArray:
        """int32 logits of task ``task`` from the residual stream (final norm on the cls token)."""
        return self.heads[task](self.norm(x[:, 0]), self.gemm_cfg)

    def _run(self, pixels: IntArray, task: int, trace: dict[str, IntArray] | None) -> IntArray:
        x = self.embed(pixels)
        if trace is not None:
            trace["embed"] = x.copy()
        for i, blk in enumerate(self.blocks):
            x = self.attention_block(i, x)
            if trace is not None:
                trace[f"block{i}.attn"] = x.copy()
            if blk.moe is not None:
                h = self.moe_norm(i, x)
                y = np.stack(
                    [moe_layer(h[img], blk.moe, task, self.moe_cfg)[0] for img in range(len(h))]
                )
                y = blk.moe_out(y)  # type: ignore[misc]
                x = saturate(x + y, self.preset.residual_bits, True)
            else:
                x = self.mlp_block(i, x)
            if trace is not None:
                trace[f"block{i}.out"] = x.copy()
        logits = self.head(x, task)
        if trace is not None:
            trace["norm"] = self.norm(x[:, 0])
            trace["logits"] = logits
        return logits

    def forward(self, images: torch.Tensor | npt.ArrayLike, task: int) -> IntArray:
        """int32 logits ``(batch, classes_per_task[task])`` of the integer network.

        ``images`` are float ``(batch, C, H, W)``; they are quantized to int8 pixels first and
        everything after is integer arithmetic. The logits have scale :meth:`logit_scale`.
        """
        check_int("task", task, 0, self.cfg.num_tasks - 1)
        return self._run(self.quantize_images(images), task, None)

    __call__ = forward

    def predict(self, images: torch.Tensor | npt.ArrayLike, task: int) -> IntArray:
        """Argmax of :meth:`forward` (ties to the lower class)."""
        return np.argmax(self.forward(images, task), axis=-1)

    def logit_scale(self, task: int) -> float:
        """Real value of one logit LSB for task ``task``."""
        head = self.heads[task]
        return float(head.x_scale * head.w_scale[0])

    def scales(self, task: int) -> dict[str, float]:
        """Real value of one LSB of each :meth:`per_layer_outputs` entry."""
        res = 2.0**-self.res_frac
        out = {"embed": res, "norm": self.norm.out_scale, "logits": self.logit_scale(task)}
        for i in range(self.cfg.depth):
            out[f"block{i}.attn"] = out[f"block{i}.out"] = res
        return out

    def per_layer_outputs(
        self, images: torch.Tensor | npt.ArrayLike, task: int
    ) -> dict[str, IntArray]:
        """Integer activations at the points of :func:`float_trace` (same keys); multiply by
        :meth:`scales` to compare with the float network."""
        check_int("task", task, 0, self.cfg.num_tasks - 1)
        trace: dict[str, IntArray] = {}
        self._run(self.quantize_images(images), task, trace)
        return trace

    # --- file -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the network to one ``.npz`` file at ``path`` (atomically) and return the path.

        The archive holds every integer tensor, requantization multiplier and shift and
        per-channel scale as an array, the float network's parameters (for :meth:`fake_quant`)
        under ``float/``, and a JSON metadata entry (``__meta__``: format, version, the
        configurations, the preset, the scalar scales and a SHA-256 of all arrays). It is
        written to a temporary file in the same directory and renamed over ``path``, so a
        crash never leaves a truncated file. :func:`load_quant_m3vit` reads it back.
        """
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "cfg": self.cfg.to_dict(),
            "preset": dataclasses.asdict(self.preset),
            "gemm_cfg": self.gemm_cfg.to_dict(),
            "attn_cfg": self.attn_cfg.to_dict(),
            "moe_cfg": self.moe_cfg.to_dict(),
            "res_frac": int(self.res_frac),
            "in_scale": float(self.in_scale),
            "patch": _pack_linear(self.patch, "patch", arrays),
            "blocks": [_pack_block(b, f"blocks.{i}", arrays) for i, b in enumerate(self.blocks)],
            "norm": _pack_norm(self.norm, "norm", arrays),
            "heads": [_pack_linear(h, f"heads.{t}", arrays) for t, h in enumerate(self.heads)],
        }
        arrays["cls_pos"], arrays["pos"] = self.cls_pos, self.pos
        for name, value in self.model.state_dict().items():
            arrays[f"float/{name}"] = value.detach().cpu().numpy()
        meta["sha256"] = _arrays_digest(arrays)
        arrays[_META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
        try:
            with open(partial, "xb") as f:
                np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    # --- fake-quantized torch network -------------------------------------------------------
    def fake_quant(self, images: torch.Tensor, task: int) -> torch.Tensor:
        """Float64 logits of the float network with weights and activations fake-quantized
        (:func:`~tessera.models.quantize.fake_quant_torch`) at the integer network's scales.

        Softmax, LayerNorm and GELU run in float; the difference to :meth:`forward` is what the
        integer units add on top of the quantization grid.
        """
        self.model.check_input(images, task)
        cfg, pre = self.cfg, self.preset
        t, d, hd = cfg.num_tokens, cfg.embed_dim, cfg.head_dim

        def fq(x: torch.Tensor, scale: float, bits: int = pre.act_bits) -> torch.Tensor:
            return fake_quant_torch(x, _tensor_params(scale, bits))

        def fw(lin: QuantLinear) -> torch.Tensor:
            w = torch.from_numpy(lin.w.T.astype(np.float64))
            spec = QuantSpec(bits=pre.weight_bits, granularity="channel", axis=0)
            params = QuantParams(
                scale=lin.w_scale, zero_point=np.zeros(len(lin.w_scale), dtype=np.int64), spec=spec
            )
            return fake_quant_torch(w * torch.from_numpy(lin.w_scale)[:, None], params)

        def linear(x: torch.Tensor, lin: QuantLinear) -> torch.Tensor:
            bias = torch.from_numpy(lin.b * lin.x_scale * lin.w_scale)
            return x @ fw(lin).T + bias

        res = 2.0**-self.res_frac

        def fres(x: torch.Tensor) -> torch.Tensor:
            return fq(x, res, pre.residual_bits)

        def norm(x: torch.Tensor, n: QuantLayerNorm) -> torch.Tensor:
            g = torch.from_numpy(n.gamma / 2.0**n.cfg.param_frac)
            bb = torch.from_numpy(n.beta / 2.0**n.cfg.param_frac)
            return fq(F.layer_norm(x, (d,), g, bb, LAYERNORM_EPS), n.out_scale)

        gelu_scale = 2.0**-self.moe_cfg.gelu_frac
        gelu_bits = self.moe_cfg.gelu_bits
        with torch.no_grad():
            img = fq(images.double(), self.in_scale)
            b = img.shape[0]
            p = cfg.patch_size
            patches = img.reshape(b, cfg.channels, cfg.image_height // p, p, -1, p)
            patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, t - 1, -1)
            x = torch.empty(b, t, d, dtype=torch.float64)
            x[:, 0] = torch.from_numpy(self.cls_pos * res)
            x[:, 1:] = fres(fres(linear(patches, self.patch)) + torch.from_numpy(self.pos * res))
            for blk in self.blocks:
                h = norm(x, blk.norm1)
                q = fq(linear(h, blk.q), _out_scale(blk.q))
                k = fq(linear(h, blk.k), _out_scale(blk.k), pre.kv_bits)
                v = fq(linear(h, blk.v), _out_scale(blk.v), pre.kv_bits)
                q, k, v = (y.view(b, t, cfg.num_heads, hd).transpose(1, 2) for y in (q, k, v))
                probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
                mixed = fq(probs @ v, _out_scale(blk.v)).transpose(1, 2).reshape(b, t, d)
                x = fres(x + fres(linear(mixed, blk.out)))
                h = norm(x, blk.norm2)
                if blk.moe is not None:
                    y = _fake_moe(h, blk.moe, task, self.moe_cfg, fq, gelu_scale, gelu_bits)
                    y = fres(y)
                else:
                    pre_act = fq(linear(h, blk.fc1), gelu_scale, gelu_bits)  # type: ignore[arg-type]
                    hidden = fq(F.gelu(pre_act), blk.hidden_scale)
                    y = fres(linear(hidden, blk.fc2))  # type: ignore[arg-type]
                x = fres(x + y)
            n = norm(x[:, 0], self.norm)
            return linear(n, self.heads[task])


# --- file format -----------------------------------------------------------------------------
# Arrays go into the archive under dotted keys; everything scalar (scales as JSON floats, which
# round-trip exactly, bit widths, configurations) goes into the JSON metadata.


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _pack_requants(r: ColumnRequant | None, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if r is None:
        return None
    arrays[f"{key}.multiplier"], arrays[f"{key}.shift"] = r.multiplier, r.shift
    return {"bits": int(r.bits)}


def _unpack_requants(meta: Any, key: str, arrays: Any) -> ColumnRequant | None:
    if meta is None:
        return None
    return ColumnRequant(
        _int64(arrays[f"{key}.multiplier"]), _int64(arrays[f"{key}.shift"]), int(meta["bits"])
    )


def _pack_linear(lin: QuantLinear | None, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if lin is None:
        return None
    arrays[f"{key}.w"], arrays[f"{key}.b"], arrays[f"{key}.w_scale"] = lin.w, lin.b, lin.w_scale
    return {
        "x_scale": float(lin.x_scale),
        "out_scale": None if lin.out_scale is None else float(lin.out_scale),
        "requant": _pack_requants(lin.requant, f"{key}.requant", arrays),
    }


def _unpack_linear(meta: Any, key: str, arrays: Any) -> QuantLinear | None:
    if meta is None:
        return None
    return QuantLinear(
        _int64(arrays[f"{key}.w"]),
        _int64(arrays[f"{key}.b"]),
        np.asarray(arrays[f"{key}.w_scale"], dtype=np.float64),
        float(meta["x_scale"]),
        _unpack_requants(meta["requant"], f"{key}.requant", arrays),
        None if meta["out_scale"] is None else float(meta["out_scale"]),
    )


def _pack_norm(norm: QuantLayerNorm, key: str, arrays: dict[str, np.ndarray]) -> Any:
    arrays[f"{key}.gamma"], arrays[f"{key}.beta"] = norm.gamma, norm.beta
    return {
        "cfg": norm.cfg.to_dict(),
        "out_scale": float(norm.out_scale),
        "requant": _pack_requants(norm.requant, f"{key}.requant", arrays),
    }


def _unpack_norm(meta: Any, key: str, arrays: Any) -> QuantLayerNorm:
    requant = _unpack_requants(meta["requant"], f"{key}.requant", arrays)
    if requant is None:
        raise ValueError(f"{key} has no requantization")
    return QuantLayerNorm(
        LayerNormConfig.from_dict(meta["cfg"]),
        _int64(arrays[f"{key}.gamma"]),
        _int64(arrays[f"{key}.beta"]),
        float(meta["out_scale"]),
        requant,
    )


def _pack_moe(moe: MoeWeights | None, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if moe is None:
        return None
    for name in ("gate", "w1", "b1", "w2", "b2"):
        arrays[f"{key}.{name}"] = getattr(moe, name)
    quant: dict[str, Any] = {}
    for f in dataclasses.fields(moe.quant):
        value = getattr(moe.quant, f.name)
        if f.name.endswith("_requant"):
            quant[f.name] = [[int(r.multiplier), int(r.shift), int(r.zero_point)] for r in value]
        elif isinstance(value, tuple):
            quant[f.name] = [float(v) for v in value]
        else:
            quant[f.name] = float(value)
    return quant


def _unpack_moe(meta: Any, key: str, arrays: Any) -> MoeWeights | None:
    if meta is None:
        return None
    quant = {
        name: tuple(Requant(*map(int, r)) for r in value)
        if name.endswith("_requant")
        else (tuple(map(float, value)) if isinstance(value, list) else float(value))
        for name, value in meta.items()
    }
    names = ("gate", "w1", "b1", "w2", "b2")
    return MoeWeights(**{n: _int64(arrays[f"{key}.{n}"]) for n in names}, quant=MoeQuant(**quant))


def _pack_block(blk: _Block, key: str, arrays: dict[str, np.ndarray]) -> Any:
    rq = blk.score_requant
    return {
        "norm1": _pack_norm(blk.norm1, f"{key}.norm1", arrays),
        **{n: _pack_linear(getattr(blk, n), f"{key}.{n}", arrays) for n in _BLOCK_LINEARS},
        "score_requant": [int(rq.multiplier), int(rq.shift), int(rq.zero_point)],
        "norm2": _pack_norm(blk.norm2, f"{key}.norm2", arrays),
        "hidden_requant": _pack_requants(blk.hidden_requant, f"{key}.hidden_requant", arrays),
        "hidden_scale": float(blk.hidden_scale),
        "moe": _pack_moe(blk.moe, f"{key}.moe", arrays),
        "moe_out": _pack_requants(blk.moe_out, f"{key}.moe_out", arrays),
    }


def _unpack_block(meta: Any, key: str, arrays: Any) -> _Block:
    linears = {n: _unpack_linear(meta[n], f"{key}.{n}", arrays) for n in _BLOCK_LINEARS}
    for n in ("q", "k", "v", "out"):
        if linears[n] is None:
            raise ValueError(f"{key}.{n} is missing")
    return _Block(
        norm1=_unpack_norm(meta["norm1"], f"{key}.norm1", arrays),
        score_requant=Requant(*map(int, meta["score_requant"])),
        norm2=_unpack_norm(meta["norm2"], f"{key}.norm2", arrays),
        hidden_requant=_unpack_requants(meta["hidden_requant"], f"{key}.hidden_requant", arrays),
        hidden_scale=float(meta["hidden_scale"]),
        moe=_unpack_moe(meta["moe"], f"{key}.moe", arrays),
        moe_out=_unpack_requants(meta["moe_out"], f"{key}.moe_out", arrays),
        **linears,  # type: ignore[arg-type]
    )


_BLOCK_LINEARS = ("q", "k", "v", "out", "fc1", "fc2")


def _int64(arr: Any) -> IntArray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"expected an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def load_quant_m3vit(path: str | os.PathLike[str]) -> QuantM3ViT:
    """Read a network written by :meth:`QuantM3ViT.save`.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.

    Returns
    -------
    QuantM3ViT
        The integer network, equal in every tensor, scale and configuration to the saved one
        (so its logits are identical), with its float network restored for
        :meth:`QuantM3ViT.fake_quant`.

    Raises
    ------
    ValueError
        If there is no file at ``path``, it is not such an archive, it is damaged (its arrays
        no longer match the recorded SHA-256) or it has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no quantized M3ViT at {path}; write one with QuantM3ViT.save")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
            raise ValueError(f"format is not {FILE_FORMAT!r}")
    except Exception as exc:  # any failure to parse means "not this format"
        raise ValueError(
            f"{path} is not a readable quantized M3ViT file ({type(exc).__name__}: {exc}); "
            "write it again with QuantM3ViT.save"
        ) from None
    if meta.get("version") != FILE_VERSION:
        raise ValueError(
            f"{path} has format version {meta.get('version')!r}, this tessera reads version "
            f"{FILE_VERSION}; quantize the model again"
        )
    if meta.get("sha256") != _arrays_digest(arrays):
        raise ValueError(f"{path} is damaged: its arrays do not match their recorded SHA-256")
    try:
        cfg = M3ViTConfig.from_dict(meta["cfg"])
        model = M3ViT(cfg)
        prefix = "float/"
        state = {
            k[len(prefix) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)
        }
        model.load_state_dict(state)
        model.eval()
        return QuantM3ViT(
            cfg=cfg,
            preset=QuantPreset.from_dict(meta["preset"]),
            gemm_cfg=GemmConfig.from_dict(meta["gemm_cfg"]),
            attn_cfg=AttentionConfig.from_dict(meta["attn_cfg"]),
            moe_cfg=MoeConfig.from_dict(meta["moe_cfg"]),
            res_frac=int(meta["res_frac"]),
            in_scale=float(meta["in_scale"]),
            patch=_unpack_linear(meta["patch"], "patch", arrays),  # type: ignore[arg-type]
            cls_pos=_int64(arrays["cls_pos"]),
            pos=_int64(arrays["pos"]),
            blocks=tuple(
                _unpack_block(b, f"blocks.{i}", arrays) for i, b in enumerate(meta["blocks"])
            ),
            norm=_unpack_norm(meta["norm"], "norm", arrays),
            heads=tuple(
                _unpack_linear(h, f"heads.{t}", arrays)  # type: ignore[misc]
                for t, h in enumerate(meta["heads"])
            ),
            model=model,
        )
    except Exception as exc:  # inconsistent contents despite a valid digest
        raise ValueError(
            f"{path} holds an inconsistent quantized M3ViT ({type(exc).__name__}: {exc}); "
            "write it again with QuantM3ViT.save"
        ) from None


def _out_scale(lin: QuantLinear) -> float:
    """Output scale of a requantized linear layer."""
    if lin.out_scale is None:
        raise ValueError("the layer keeps int32 accumulators and has no output scale")
    return lin.out_scale


def _fake_moe(
    h: torch.Tensor,
    weights: MoeWeights,
    task: int,
    cfg: MoeConfig,
    fq: Any,
    gelu_scale: float,
    gelu_bits: int,
) -> torch.Tensor:
    """Float MoE layer on the dequantized weights, activations fake-quantized at its scales."""
    q = weights.quant
    deq = {k: torch.from_numpy(v) for k, v in weights.dequantized().items()}
    x = fq(h, q.x_scale).reshape(-1, cfg.dim)
    logits = x @ deq["gate"][task]
    top, idx = torch.topk(logits, cfg.top_k, dim=-1)
    w = torch.softmax(top, dim=-1)
    out = torch.zeros_like(x)
    for e in range(cfg.experts):
        tokens, slot = (idx == e).nonzero(as_tuple=True)
        if tokens.numel() == 0:
            continue
        pre = fq(x[tokens] @ deq["w1"][e] + deq["b1"][e], gelu_scale, gelu_bits)
        hidden = fq(F.gelu(pre), q.hidden_scale[e])
        y = fq(hidden @ deq["w2"][e] + deq["b2"][e], q.y_scale)
        out = out.index_add(0, tokens, y * w[tokens, slot].unsqueeze(-1))
    return fq(out, q.y_scale).reshape(h.shape)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _moe_weights(
    cfg: MoeConfig, params: dict[str, FloatArray], calibration: FloatArray, pre: QuantPreset
) -> MoeWeights:
    """:meth:`MoeWeights.from_float` under the scale rules of ``pre``: every weight scale chosen
    per matrix by ``pre.weight_scale`` and every scale rounded up to a power of two when
    ``pre.power_of_two``."""
    wspec = QuantSpec(bits=cfg.weight_bits)
    return MoeWeights.from_float(
        cfg,
        **params,
        calibration=calibration,
        # One scale per (in, out) matrix: the torch (out, in) layout is its transpose.
        weight_scale=lambda m: float(_weight_scales(m.T, wspec, pre)[0]),
        act_scale=lambda x: symmetric_scale(float(np.abs(x).max()), cfg.act_bits, pre.power_of_two),
    )


def quantize_m3vit(
    model: M3ViT,
    cfg: M3ViTConfig,
    calibration_images: torch.Tensor,
    preset: QuantPreset | str = "int8",
) -> QuantM3ViT:
    """Post-training quantization of ``model`` into a :class:`QuantM3ViT`.

    Parameters
    ----------
    model : M3ViT
        Trained float network (not modified).
    cfg : M3ViTConfig
        Its configuration (must equal ``model.cfg``).
    calibration_images : torch.Tensor
        ``(n, C, H, W)`` float images, ``n >= 1``; every task runs on them and the activation
        ranges are the largest magnitudes seen.
    preset : QuantPreset or str
        Bit widths, or the name of one of :data:`PRESETS`.

    Returns
    -------
    QuantM3ViT
        The integer network.
    """
    if not isinstance(model, M3ViT):
        raise ValueError(f"model must be an M3ViT, got {type(model).__name__}")
    if model.cfg != cfg:
        raise ValueError("cfg must be the model's configuration (model.cfg)")
    pre = _preset(preset)
    model.check_input(calibration_images, 0)
    if calibration_images.shape[0] < 1:
        raise ValueError("calibration_images must hold at least one image")
    model.eval()
    rec = _calibrate(model, calibration_images)
    ab, wb, kvb = pre.act_bits, pre.weight_bits, pre.kv_bits
    pow2, per_channel = pre.power_of_two, pre.per_channel
    d = cfg.embed_dim

    def act_scale(name: str, bits: int = ab) -> float:
        return symmetric_scale(rec.max_abs[name], bits, pow2)

    def linear(
        layer: torch.nn.Module,
        x_scale: float,
        out_scale: float | None,
        out_bits: int,
        channel: bool = per_channel,
    ) -> QuantLinear:
        return quantize_linear(
            layer.weight, layer.bias, x_scale, out_scale, out_bits, wb, channel, pre
        )

    res_frac = frac_bits_for(rec.max_abs["residual"], pre.residual_bits)
    res = 2.0**-res_frac
    in_scale = symmetric_scale(float(calibration_images.abs().max()), ab, pow2)
    gemm_cfg = GemmConfig(
        rows=16, cols=16, acc_bits=32, out_bits=ab, dim_bits=16, rounding=_ROUNDING
    )
    attn_cfg = AttentionConfig(
        head_dim=cfg.head_dim,
        heads=1,
        max_seq=cfg.num_tokens,
        parallelism=min(4, cfg.num_tokens),
        lanes=math.gcd(8, cfg.head_dim),
        rounding=_ROUNDING,
    )
    moe_cfg = MoeConfig(
        dim=d,
        experts=cfg.num_experts,
        expert_hidden=cfg.expert_hidden,
        top_k=cfg.top_k,
        tasks=cfg.num_tasks,
        max_tokens=cfg.num_tokens,
        act_bits=ab,
        weight_bits=wb,
        rounding=_ROUNDING,
    )

    def tensor(x: torch.Tensor) -> FloatArray:
        return x.detach().double().numpy()

    def make_norm(ln: torch.nn.LayerNorm, out_scale: float, name: str) -> QuantLayerNorm:
        gamma, beta = tensor(ln.weight), tensor(ln.bias)
        pmax = float(max(np.abs(gamma).max(), np.abs(beta).max()))
        out_frac = frac_bits_for(rec.max_abs[name], pre.ln_out_bits)
        ln_cfg = LayerNormConfig(
            dim=d,
            in_bits=pre.residual_bits,
            in_frac=res_frac,
            out_bits=pre.ln_out_bits,
            out_frac=out_frac,
            param_bits=16,
            param_frac=min(11, frac_bits_for(pmax, 16, headroom=0)),
            eps=LAYERNORM_EPS,
        )
        g, bq = quantize_params(gamma, beta, ln_cfg)
        return QuantLayerNorm(
            ln_cfg, g, bq, out_scale, ColumnRequant.of(2.0**-out_frac / out_scale, ab)
        )

    conv = model.patch_embed
    patch = linear(conv, in_scale, res, pre.residual_bits)
    pos = tensor(model.pos_embed)[0]
    cls_pos = np.clip(np.round((tensor(model.cls_token)[0, 0] + pos[0]) / res), -(2**15), 2**15 - 1)
    pos_q = np.clip(np.round(pos[1:] / res), -(2**15), 2**15 - 1)

    blocks = []
    for i, block in enumerate(model.blocks):
        s_n1 = act_scale(f"block{i}.norm1")
        norm1 = make_norm(block.norm1, s_n1, f"block{i}.norm1")
        # q keeps act_bits; k and v take kv_bits (still int8 lanes in the attention engine).
        bits = {"q": ab, "k": kvb, "v": kvb}
        scales = {p: act_scale(f"block{i}.{p}", bits[p]) for p in ("q", "k", "v")}
        attn = block.attn
        q, k, v = (linear(getattr(attn, p), s_n1, scales[p], bits[p]) for p in ("q", "k", "v"))
        out = linear(attn.out, scales["v"], res, pre.residual_bits)
        score_rq = requant_for_scale(scales["q"] * scales["k"] / math.sqrt(cfg.head_dim), attn_cfg)
        if pow2 and not _is_power_of_two(score_rq.multiplier):
            raise ValueError(
                f"preset {pre.name!r} needs power-of-two scales, but the attention score scale "
                f"1/sqrt(head_dim) is not one for head_dim={cfg.head_dim}: use a head_dim that "
                "is a power of 4 (e.g. 16 or 64) or a preset with power_of_two=False"
            )
        ffn = block.ffn
        if isinstance(ffn, MoeLayer):
            calib = torch.cat(rec.tensors[f"block{i}.norm2"]).double().numpy()
            params = {
                "gate": np.stack([tensor(g.weight).T for g in ffn.gates]),
                "w1": np.stack([tensor(e.fc1.weight).T for e in ffn.experts]),
                "b1": np.stack([tensor(e.fc1.bias) for e in ffn.experts]),
                "w2": np.stack([tensor(e.fc2.weight).T for e in ffn.experts]),
                "b2": np.stack([tensor(e.fc2.bias) for e in ffn.experts]),
            }
            if not pow2 and pre.weight_scale == "max":
                moe = MoeWeights.from_float(moe_cfg, **params, calibration=calib)
            else:
                moe = _moe_weights(moe_cfg, params, calib, pre)
            norm2 = make_norm(block.norm2, moe.quant.x_scale, f"block{i}.norm2")
            blocks.append(
                _Block(
                    norm1, q, k, v, out, score_rq, norm2,
                    moe=moe,
                    moe_out=ColumnRequant.of(moe.quant.y_scale / res, pre.residual_bits),
                )
            )  # fmt: skip
        else:
            s_n2 = act_scale(f"block{i}.norm2")
            norm2 = make_norm(block.norm2, s_n2, f"block{i}.norm2")
            gelu_scale = 2.0**-moe_cfg.gelu_frac
            fc1 = linear(ffn.fc1, s_n2, gelu_scale, moe_cfg.gelu_bits)
            s_h = act_scale(f"block{i}.hidden")
            fc2 = linear(ffn.fc2, s_h, res, pre.residual_bits)
            blocks.append(
                _Block(
                    norm1, q, k, v, out, score_rq, norm2,
                    fc1=fc1,
                    hidden_requant=ColumnRequant.of(gelu_scale / s_h, ab),
                    hidden_scale=s_h,
                    fc2=fc2,
                )
            )  # fmt: skip
    s_norm = act_scale("norm")
    norm = make_norm(model.norm, s_norm, "norm")
    # Heads keep one weight scale per tensor: the int32 logits of all classes compare directly.
    heads = tuple(linear(h, s_norm, None, 32, channel=False) for h in model.heads)
    return QuantM3ViT(
        cfg=cfg,
        preset=pre,
        gemm_cfg=gemm_cfg,
        attn_cfg=attn_cfg,
        moe_cfg=moe_cfg,
        res_frac=res_frac,
        in_scale=in_scale,
        patch=patch,
        cls_pos=cls_pos.astype(np.int64),
        pos=pos_q.astype(np.int64),
        blocks=tuple(blocks),
        norm=norm,
        heads=heads,
        model=model,
    )
