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
  :meth:`tessera.models.moe.MoeWeights.from_float`.

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
- **Weights**: symmetric, ``weight_bits`` (8, or 4 for ``w4a8``), *per output channel* for the
  patch embedding and the q/k/v/out/fc1/fc2 projections (the requantization after the GEMM takes
  one multiplier per column); *per tensor* for the classification heads (one scale, so the int32
  logits of all classes compare directly and the argmax needs no requantization) and, as
  :meth:`~tessera.models.moe.MoeWeights.from_float` chooses, per gate and per expert matrix in the
  MoE layers. Biases are int32 at the accumulator scale ``s_in * s_w``.
- **Activations**: int8, symmetric, per tensor: LayerNorm outputs, q, k, v (one scale per
  projection, shared by its heads, as the attention engine takes one score requantization), the
  attention output (in the scale of v), and the MLP hidden activations after the GELU.
- **GELU**: input and output ``<gelu_bits, gelu_frac>`` of the MoE configuration (the same ROM
  unit serves the dense MLPs and the experts).
- **Logits**: int32 accumulators of the head (``s_norm * s_head``).

Every requantization rounds with :attr:`~tessera.models.rounding.Rounding.RND_INF` and saturates,
as the GEMM engine does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
from tessera.models.moe import MoeConfig, MoeWeights, moe_layer
from tessera.models.quantize import QuantParams, QuantSpec, calibrate, fake_quant_torch, quantize
from tessera.models.rounding import Overflow, Rounding, quantize_multiplier, requantize, saturate

__all__ = [
    "PRESETS",
    "QuantM3ViT",
    "QuantPreset",
    "float_trace",
    "quantize_m3vit",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_ROUNDING = Rounding.RND_INF
_OVERFLOW = Overflow.SAT
_INT32 = (-(1 << 31), (1 << 31) - 1)


@dataclass(frozen=True)
class QuantPreset(EngineConfig):
    """Bit widths of a quantized M³ViT.

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
    """

    name: str = "int8"
    weight_bits: int = 8
    act_bits: int = 8
    residual_bits: int = 16
    ln_out_bits: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 32:
            raise ValueError(f"name must be a string of 1..32 characters, got {self.name!r}")
        check_int("weight_bits", self.weight_bits, 2, 8)
        check_int("act_bits", self.act_bits, 2, 8)
        check_int("residual_bits", self.residual_bits, 8, 16)
        check_int("ln_out_bits", self.ln_out_bits, 8, 16)

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``ptq_int8_w8a8r16_1a2b3c4d5e``."""
        return (
            f"ptq_{self.name}_w{self.weight_bits}a{self.act_bits}r{self.residual_bits}"
            f"_{self.digest}"
        )


#: The named presets: int8 everywhere, and 4-bit weights with int8 activations.
PRESETS: dict[str, QuantPreset] = {
    "int8": QuantPreset(),
    "w4a8": QuantPreset(name="w4a8", weight_bits=4),
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


def _scale_for(max_abs: float, bits: int) -> float:
    """Symmetric scale covering ``max_abs`` (as :func:`calibrate` computes it)."""
    return float(calibrate(np.array([max_abs, -max_abs]), QuantSpec(bits=bits)).scale)


def _frac_for(max_abs: float, bits: int, headroom: int = 1) -> int:
    """Fraction bits of a signed ``bits`` fixed-point format holding ``max_abs * 2**headroom``."""
    int_bits = max(0, math.ceil(math.log2(max(max_abs, 1e-12) * 2**headroom)))
    return max(0, bits - 1 - int_bits)


@dataclass(frozen=True, eq=False)
class _Requants:
    """Per-column (or scalar) ``multiplier / 2**shift`` of a requantization."""

    multiplier: IntArray
    shift: IntArray
    bits: int

    @classmethod
    def of(cls, scale: npt.ArrayLike, bits: int) -> _Requants:
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
class _Linear:
    """Integer linear layer: ``requant(gemm(x, w) + b)``; ``requant=None`` keeps the int32 sums.

    ``w`` is (in, out) int, ``w_scale`` per column (or one), ``b`` int32 at ``x_scale * w_scale``.
    """

    w: IntArray
    b: IntArray
    w_scale: FloatArray
    x_scale: float
    requant: _Requants | None
    out_scale: float | None

    def __call__(self, x: IntArray, gemm_cfg: GemmConfig) -> IntArray:
        acc = saturate(gemm(x, self.w, gemm_cfg) + self.b, 32, True)
        return acc if self.requant is None else self.requant(acc)

    def dequantized_weight(self) -> FloatArray:
        """(out, in) float weight the integers stand for (torch layout)."""
        return (self.w * self.w_scale).T


def _quant_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: float,
    out_scale: float | None,
    out_bits: int,
    weight_bits: int,
    per_channel: bool,
) -> _Linear:
    """Quantize a torch ``(out, in)`` weight; ``out_scale`` None keeps int32 accumulators."""
    w = weight.detach().double().numpy().reshape(weight.shape[0], -1)
    spec = QuantSpec(bits=weight_bits, granularity="channel" if per_channel else "tensor", axis=0)
    params = calibrate(w, spec)
    wq = quantize(w, params)
    w_scale = np.broadcast_to(np.asarray(params.scale, dtype=np.float64), (w.shape[0],)).copy()
    acc_scale = x_scale * w_scale
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().numpy()
    bq = np.clip(np.round(b / acc_scale), *_INT32).astype(np.int64)
    requant = None if out_scale is None else _Requants.of(acc_scale / out_scale, out_bits)
    return _Linear(wq.T.copy(), bq, w_scale, x_scale, requant, out_scale)


@dataclass(frozen=True, eq=False)
class _Norm:
    cfg: LayerNormConfig
    gamma: IntArray
    beta: IntArray
    out_scale: float
    requant: _Requants

    def __call__(self, x: IntArray) -> IntArray:
        return self.requant(layernorm(x, self.gamma, self.beta, self.cfg))


@dataclass(frozen=True, eq=False)
class _Block:
    norm1: _Norm
    q: _Linear
    k: _Linear
    v: _Linear
    out: _Linear
    score_requant: Requant
    norm2: _Norm
    fc1: _Linear | None = None
    hidden_requant: _Requants | None = None
    hidden_scale: float = 1.0
    fc2: _Linear | None = None
    moe: MoeWeights | None = None
    moe_out: _Requants | None = None


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
    patch: _Linear
    cls_pos: IntArray
    pos: IntArray
    blocks: tuple[_Block, ...]
    norm: _Norm
    heads: tuple[_Linear, ...]
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

    def _run(self, pixels: IntArray, task: int, trace: dict[str, IntArray] | None) -> IntArray:
        cfg, rbits = self.cfg, self.preset.residual_bits
        b = pixels.shape[0]
        t, d = cfg.num_tokens, cfg.embed_dim
        emb = self.patch(self._patches(pixels), self.gemm_cfg).reshape(b, t - 1, d)
        x = np.empty((b, t, d), dtype=np.int64)
        x[:, 0] = self.cls_pos
        x[:, 1:] = saturate(emb + self.pos, rbits, True)
        if trace is not None:
            trace["embed"] = x.copy()
        hd = cfg.head_dim
        for i, blk in enumerate(self.blocks):
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
            x = saturate(x + blk.out(mixed, self.gemm_cfg).reshape(b, t, d), rbits, True)
            if trace is not None:
                trace[f"block{i}.attn"] = x.copy()
            h = blk.norm2(x)
            if blk.moe is not None:
                y = np.stack(
                    [moe_layer(h[img], blk.moe, task, self.moe_cfg)[0] for img in range(b)]
                )
                y = blk.moe_out(y)  # type: ignore[misc]
            else:
                pre = blk.fc1(h.reshape(b * t, d), self.gemm_cfg)  # type: ignore[misc]
                hidden = blk.hidden_requant(gelu(pre, self.moe_cfg.gelu))  # type: ignore[misc]
                y = blk.fc2(hidden, self.gemm_cfg).reshape(b, t, d)  # type: ignore[misc]
            x = saturate(x + y, rbits, True)
            if trace is not None:
                trace[f"block{i}.out"] = x.copy()
        n = self.norm(x[:, 0])
        logits = self.heads[task](n, self.gemm_cfg)
        if trace is not None:
            trace["norm"] = n
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

        def fw(lin: _Linear) -> torch.Tensor:
            w = torch.from_numpy(lin.w.T.astype(np.float64))
            spec = QuantSpec(bits=pre.weight_bits, granularity="channel", axis=0)
            params = QuantParams(
                scale=lin.w_scale, zero_point=np.zeros(len(lin.w_scale), dtype=np.int64), spec=spec
            )
            return fake_quant_torch(w * torch.from_numpy(lin.w_scale)[:, None], params)

        def linear(x: torch.Tensor, lin: _Linear) -> torch.Tensor:
            bias = torch.from_numpy(lin.b * lin.x_scale * lin.w_scale)
            return x @ fw(lin).T + bias

        res = 2.0**-self.res_frac

        def fres(x: torch.Tensor) -> torch.Tensor:
            return fq(x, res, pre.residual_bits)

        def norm(x: torch.Tensor, n: _Norm) -> torch.Tensor:
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
                k = fq(linear(h, blk.k), _out_scale(blk.k))
                v = fq(linear(h, blk.v), _out_scale(blk.v))
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


def _out_scale(lin: _Linear) -> float:
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
    ab, wb = pre.act_bits, pre.weight_bits
    d = cfg.embed_dim

    res_frac = _frac_for(rec.max_abs["residual"], pre.residual_bits)
    res = 2.0**-res_frac
    in_scale = _scale_for(float(calibration_images.abs().max()), ab)
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

    def make_norm(ln: torch.nn.LayerNorm, out_scale: float, name: str) -> _Norm:
        gamma, beta = tensor(ln.weight), tensor(ln.bias)
        pmax = float(max(np.abs(gamma).max(), np.abs(beta).max()))
        out_frac = _frac_for(rec.max_abs[name], pre.ln_out_bits)
        ln_cfg = LayerNormConfig(
            dim=d,
            in_bits=pre.residual_bits,
            in_frac=res_frac,
            out_bits=pre.ln_out_bits,
            out_frac=out_frac,
            param_bits=16,
            param_frac=min(11, _frac_for(pmax, 16, headroom=0)),
            eps=LAYERNORM_EPS,
        )
        g, bq = quantize_params(gamma, beta, ln_cfg)
        return _Norm(ln_cfg, g, bq, out_scale, _Requants.of(2.0**-out_frac / out_scale, ab))

    conv = model.patch_embed
    patch = _quant_linear(conv.weight, conv.bias, in_scale, res, pre.residual_bits, wb, True)
    pos = tensor(model.pos_embed)[0]
    cls_pos = np.clip(np.round((tensor(model.cls_token)[0, 0] + pos[0]) / res), -(2**15), 2**15 - 1)
    pos_q = np.clip(np.round(pos[1:] / res), -(2**15), 2**15 - 1)

    blocks = []
    for i, block in enumerate(model.blocks):
        s_n1 = _scale_for(rec.max_abs[f"block{i}.norm1"], ab)
        norm1 = make_norm(block.norm1, s_n1, f"block{i}.norm1")
        scales = {p: _scale_for(rec.max_abs[f"block{i}.{p}"], ab) for p in ("q", "k", "v")}
        attn = block.attn
        q, k, v = (
            _quant_linear(
                getattr(attn, p).weight, getattr(attn, p).bias, s_n1, scales[p], ab, wb, True
            )
            for p in ("q", "k", "v")
        )
        out = _quant_linear(
            attn.out.weight, attn.out.bias, scales["v"], res, pre.residual_bits, wb, True
        )
        score_rq = requant_for_scale(scales["q"] * scales["k"] / math.sqrt(cfg.head_dim), attn_cfg)
        ffn = block.ffn
        if isinstance(ffn, MoeLayer):
            calib = torch.cat(rec.tensors[f"block{i}.norm2"]).double().numpy()
            moe = MoeWeights.from_float(
                moe_cfg,
                gate=np.stack([tensor(g.weight).T for g in ffn.gates]),
                w1=np.stack([tensor(e.fc1.weight).T for e in ffn.experts]),
                b1=np.stack([tensor(e.fc1.bias) for e in ffn.experts]),
                w2=np.stack([tensor(e.fc2.weight).T for e in ffn.experts]),
                b2=np.stack([tensor(e.fc2.bias) for e in ffn.experts]),
                calibration=calib,
            )
            norm2 = make_norm(block.norm2, moe.quant.x_scale, f"block{i}.norm2")
            blocks.append(
                _Block(
                    norm1, q, k, v, out, score_rq, norm2,
                    moe=moe,
                    moe_out=_Requants.of(moe.quant.y_scale / res, pre.residual_bits),
                )
            )  # fmt: skip
        else:
            s_n2 = _scale_for(rec.max_abs[f"block{i}.norm2"], ab)
            norm2 = make_norm(block.norm2, s_n2, f"block{i}.norm2")
            gelu_scale = 2.0**-moe_cfg.gelu_frac
            fc1 = _quant_linear(
                ffn.fc1.weight, ffn.fc1.bias, s_n2, gelu_scale, moe_cfg.gelu_bits, wb, True
            )
            s_h = _scale_for(rec.max_abs[f"block{i}.hidden"], ab)
            fc2 = _quant_linear(ffn.fc2.weight, ffn.fc2.bias, s_h, res, pre.residual_bits, wb, True)
            blocks.append(
                _Block(
                    norm1, q, k, v, out, score_rq, norm2,
                    fc1=fc1,
                    hidden_requant=_Requants.of(gelu_scale / s_h, ab),
                    hidden_scale=s_h,
                    fc2=fc2,
                )
            )  # fmt: skip
    s_norm = _scale_for(rec.max_abs["norm"], ab)
    norm = make_norm(model.norm, s_norm, "norm")
    heads = tuple(_quant_linear(h.weight, h.bias, s_norm, None, 32, wb, False) for h in model.heads)
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
