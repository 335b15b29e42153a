"""M³ViT: the multi-task vision transformer with task-level mixture-of-experts, in float PyTorch.

This is the float reference network that Edge-MoE accelerates (see :meth:`M3ViTConfig.edge_moe`)
and the model whose layers the quantized golden models mirror. One :class:`M3ViTConfig` fixes the
architecture:

- patch embedding (a ``patch_size`` x ``patch_size`` convolution with that stride; patches in
  row-major order), a learned cls token and a learned positional embedding;
- ``depth`` pre-LN encoder blocks, ``x += MHSA(LN(x)); x += FFN(LN(x))``, where the FFN is a dense
  MLP (Linear -> GELU -> Linear) in most layers and a mixture of experts in every
  ``moe_every``-th layer (layers ``moe_every - 1, 2 * moe_every - 1, ...``: with ``moe_every=2``
  the odd layers 1, 3, 5, ... as in Edge-MoE);
- a final LayerNorm and one linear classification head per task, applied to the cls token.

GELU is the exact (erf) form. Attention is written out projection by projection,
``softmax(q kᵀ / sqrt(head_dim)) v``, so an integer model can follow it layer by layer.

Mixture of experts
------------------
Each MoE layer has ``num_experts`` experts (Linear -> GELU -> Linear, hidden ``expert_hidden``)
shared by all tasks, and **one gate per task** (a bias-free linear projection to ``num_experts``
logits), so a task only ever runs the experts its own gate picks. Per token: the ``top_k``
largest logits are selected (``torch.topk``: descending, ties to the lower index), a softmax over
those ``k`` logits gives the weights, and the output is the weighted sum of the selected
experts' outputs, accumulated in ascending expert order (the order in which a per-expert-queue
accelerator visits the experts). Training uses no gate noise, so routing is a deterministic
function of the input.

Data and training
-----------------
:func:`digits_tasks` builds two tasks on scikit-learn's 8x8 digits (task 0: the digit, 10
classes; task 1: its parity, 2 classes, 1 = odd) with a fixed stratified 80/20 split, and
:func:`train_m3vit` trains the tiny default configuration on both tasks, deterministically.
:func:`load_m3vit` loads the committed weights (``weights/m3vit_tiny.pt`` next to this module).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tessera.models.config import EngineConfig, check_int

__all__ = [
    "DEFAULT_WEIGHTS",
    "LAYERNORM_EPS",
    "Attention",
    "DigitsSplit",
    "EncoderBlock",
    "Expert",
    "M3ViT",
    "M3ViTConfig",
    "Mlp",
    "MoeLayer",
    "Routing",
    "TrainingHistory",
    "digits_tasks",
    "evaluate",
    "expert_usage",
    "load_balancing_loss",
    "load_m3vit",
    "save_weights",
    "train_m3vit",
]

#: LayerNorm epsilon of every norm in the network (the ViT / M³ViT value).
LAYERNORM_EPS = 1e-6
#: The committed tiny weights, trained by ``examples/train_m3vit.py``.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "m3vit_tiny.pt"
#: Standard deviation of the truncated-normal initialisation (ViT's).
INIT_STD = 0.02


@dataclass(frozen=True)
class M3ViTConfig(EngineConfig):
    """Architecture of an M³ViT network. The defaults are the tiny 8x8 digits model.

    Parameters
    ----------
    image_height, image_width : int
        Input image size in pixels (1..4096), each a multiple of ``patch_size``.
    channels : int
        Input channels (1..16).
    patch_size : int
        Side of the square patches (1..256): ``(H / p) * (W / p)`` patches plus one cls token.
    embed_dim : int
        Token width (1..4096), a multiple of ``num_heads``.
    num_heads : int
        Attention heads (1..64); each has ``embed_dim / num_heads`` dimensions.
    depth : int
        Encoder blocks (1..64).
    mlp_hidden : int
        Hidden width of the dense MLP blocks (1..65536).
    num_experts : int
        Experts per MoE layer (1..256).
    expert_hidden : int
        Hidden width of each expert (1..65536).
    top_k : int
        Experts each token uses (1..``num_experts``).
    classes_per_task : tuple of int
        Output width of each task's head (1..100000 each; 1 to 64 tasks). A list is accepted and
        stored as a tuple (configs round-trip through JSON).
    moe_every : int
        Every ``moe_every``-th block (1..``depth``) has an MoE instead of the dense MLP: blocks
        ``i`` with ``i % moe_every == moe_every - 1``.
    """

    image_height: int = 8
    image_width: int = 8
    channels: int = 1
    patch_size: int = 2
    embed_dim: int = 32
    num_heads: int = 2
    depth: int = 4
    mlp_hidden: int = 64
    num_experts: int = 4
    expert_hidden: int = 32
    top_k: int = 2
    classes_per_task: tuple[int, ...] = (10, 2)
    moe_every: int = 2

    def __post_init__(self) -> None:
        check_int("image_height", self.image_height, 1, 4096)
        check_int("image_width", self.image_width, 1, 4096)
        check_int("channels", self.channels, 1, 16)
        check_int("patch_size", self.patch_size, 1, 256)
        for name in ("image_height", "image_width"):
            size = getattr(self, name)
            if size % self.patch_size:
                raise ValueError(
                    f"{name}={size} must be a multiple of patch_size={self.patch_size}"
                )
        check_int("embed_dim", self.embed_dim, 1, 4096)
        check_int("num_heads", self.num_heads, 1, 64)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} must be a multiple of num_heads={self.num_heads}"
            )
        check_int("depth", self.depth, 1, 64)
        check_int("mlp_hidden", self.mlp_hidden, 1, 65536)
        check_int("num_experts", self.num_experts, 1, 256)
        check_int("expert_hidden", self.expert_hidden, 1, 65536)
        check_int("top_k", self.top_k, 1, self.num_experts)
        check_int("moe_every", self.moe_every, 1, self.depth)
        classes = self.classes_per_task
        if isinstance(classes, str) or not isinstance(classes, tuple | list):
            raise ValueError(
                f"classes_per_task must be a tuple of 1 to 64 integers, got {classes!r}"
            )
        check_int("len(classes_per_task)", len(classes), 1, 64)
        for t, n in enumerate(classes):
            check_int(f"classes_per_task[{t}]", n, 1, 100000)
        object.__setattr__(self, "classes_per_task", tuple(int(n) for n in classes))

    @classmethod
    def edge_moe(cls) -> M3ViTConfig:
        """Edge-MoE's M³ViT: 3x128x256 images, 16x16 patches (128 + cls = 129 tokens), width 192,
        3 heads, 12 layers, MLP hidden 768, MoE in the odd layers with 16 experts of hidden 384,
        top-2.

        Edge-MoE runs two tasks, each with its own gate. Their dense-prediction decoders are not
        part of this model; the heads stand in for them as one linear layer on the cls token each,
        sized for semantic segmentation with the 19 Cityscapes classes (task 0) and depth as one
        regression output (task 1).
        """
        return cls(
            image_height=128,
            image_width=256,
            channels=3,
            patch_size=16,
            embed_dim=192,
            num_heads=3,
            depth=12,
            mlp_hidden=768,
            num_experts=16,
            expert_hidden=384,
            top_k=2,
            classes_per_task=(19, 1),
            moe_every=2,
        )

    @property
    def num_tasks(self) -> int:
        """Number of tasks (heads and gates per MoE layer)."""
        return len(self.classes_per_task)

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)

    @property
    def num_tokens(self) -> int:
        """Sequence length: the patches plus the cls token."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.embed_dim // self.num_heads

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the blocks whose FFN is a mixture of experts."""
        return tuple(i for i in range(self.depth) if i % self.moe_every == self.moe_every - 1)

    @property
    def parameter_count(self) -> int:
        """Trainable parameters of :class:`M3ViT` built from this config."""
        d = self.embed_dim
        embed = self.channels * self.patch_size**2 * d + d + d + self.num_tokens * d
        attention = 4 * (d * d + d)
        norms = 2 * 2 * d
        mlp = 2 * d * self.mlp_hidden + self.mlp_hidden + d
        moe = self.num_tasks * d * self.num_experts + self.num_experts * (
            2 * d * self.expert_hidden + self.expert_hidden + d
        )
        n_moe = len(self.moe_layers)
        blocks = self.depth * (attention + norms) + n_moe * moe + (self.depth - n_moe) * mlp
        heads = sum(d * n + n for n in self.classes_per_task)
        return embed + blocks + 2 * d + heads

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``m3vit_8x8p2_d32l4_e4k2_1a2b3c4d5e``."""
        return (
            f"m3vit_{self.image_height}x{self.image_width}p{self.patch_size}"
            f"_d{self.embed_dim}l{self.depth}_e{self.num_experts}k{self.top_k}_{self.digest}"
        )


class Routing(NamedTuple):
    """The routing decisions of one MoE layer for one task.

    Attributes
    ----------
    layer : int
        Index of the encoder block.
    indices : torch.Tensor
        ``(batch, tokens, top_k)`` int64 expert ids, by descending gate logit.
    weights : torch.Tensor
        ``(batch, tokens, top_k)`` softmax of the selected logits (each row sums to 1).
    probs : torch.Tensor
        ``(batch, tokens, num_experts)`` softmax of all the gate logits (for load balancing).
    """

    layer: int
    indices: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v`` and ``out`` projections."""

    def __init__(self, cfg: M3ViTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens, embed_dim)`` -> same shape."""
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.out(mixed.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with the exact GELU; the dense FFN and each expert."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., dim)``."""
        return self.fc2(F.gelu(self.fc1(x)))


#: An expert is an MLP of width ``expert_hidden``.
Expert = Mlp


class MoeLayer(nn.Module):
    """Task-gated mixture of experts: ``num_tasks`` gates over ``num_experts`` shared experts."""

    def __init__(self, cfg: M3ViTConfig) -> None:
        super().__init__()
        self.top_k = cfg.top_k
        self.gates = nn.ModuleList(
            nn.Linear(cfg.embed_dim, cfg.num_experts, bias=False) for _ in range(cfg.num_tasks)
        )
        self.experts = nn.ModuleList(
            Expert(cfg.embed_dim, cfg.expert_hidden) for _ in range(cfg.num_experts)
        )

    def route(self, x: torch.Tensor, task: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Task ``task``'s gate on ``(..., embed_dim)`` tokens: top-k ``indices``, their softmax
        ``weights`` (both ``(..., top_k)``) and the softmax ``probs`` of all logits."""
        logits = self.gates[task](x)
        top_logits, indices = torch.topk(logits, self.top_k, dim=-1)
        return indices, torch.softmax(top_logits, dim=-1), torch.softmax(logits, dim=-1)

    def forward(
        self, x: torch.Tensor, task: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(batch, tokens, embed_dim)`` -> output of the same shape, ``indices``, ``weights``,
        ``probs`` (see :meth:`route`)."""
        indices, weights, probs = self.route(x, task)
        flat = x.reshape(-1, x.shape[-1])
        flat_idx = indices.reshape(-1, self.top_k)
        flat_w = weights.reshape(-1, self.top_k)
        out = torch.zeros_like(flat)
        # Each expert runs only on the tokens routed to it (its queue), in ascending expert order.
        for e, expert in enumerate(self.experts):
            tokens, slot = (flat_idx == e).nonzero(as_tuple=True)
            if tokens.numel():
                y = expert(flat[tokens]) * flat_w[tokens, slot].unsqueeze(-1)
                out = out.index_add(0, tokens, y)
        return out.view_as(x), indices, weights, probs


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x += attn(norm1(x)); x += ffn(norm2(x))`` (``ffn`` an Mlp or MoeLayer)."""

    def __init__(self, cfg: M3ViTConfig, moe: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=LAYERNORM_EPS)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=LAYERNORM_EPS)
        self.ffn: Mlp | MoeLayer = MoeLayer(cfg) if moe else Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(
        self, x: torch.Tensor, task: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """Returns the block output and, for an MoE block, ``(indices, weights, probs)``."""
        x = x + self.attn(self.norm1(x))
        if isinstance(self.ffn, MoeLayer):
            y, *routing = self.ffn(self.norm2(x), task)
            return x + y, tuple(routing)  # type: ignore[return-value]
        return x + self.ffn(self.norm2(x)), None


class M3ViT(nn.Module):
    """The M³ViT network of one :class:`M3ViTConfig` (see the module docstring).

    Parameters
    ----------
    cfg : M3ViTConfig
        Architecture. Weights are initialised from torch's global generator (seed it first):
        truncated normal, std 0.02, for linear, convolution, cls and position weights; zero
        biases; unit / zero LayerNorm.
    """

    def __init__(self, cfg: M3ViTConfig | None = None) -> None:
        super().__init__()
        cfg = M3ViTConfig() if cfg is None else cfg
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = nn.Conv2d(cfg.channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, d))
        moe = set(cfg.moe_layers)
        self.blocks = nn.ModuleList(EncoderBlock(cfg, i in moe) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=LAYERNORM_EPS)
        self.heads = nn.ModuleList(nn.Linear(d, n) for n in cfg.classes_per_task)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, images: torch.Tensor, task: int) -> None:
        """``ValueError`` unless ``images`` is ``(batch, C, H, W)`` floating and ``task`` valid."""
        cfg = self.cfg
        expected = (cfg.channels, cfg.image_height, cfg.image_width)
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError("images must be a floating-point torch.Tensor (batch, C, H, W)")
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}"
            )
        check_int("task", task, 0, cfg.num_tasks - 1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding, cls token and positions: ``(batch, num_tokens, embed_dim)``."""
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(images.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(
        self, images: torch.Tensor, task: int, return_routing: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[Routing]]:
        """Logits of task ``task`` for ``(batch, C, H, W)`` images.

        Parameters
        ----------
        images : torch.Tensor
            ``(batch, channels, image_height, image_width)`` floating-point images.
        task : int
            Task id in ``[0, num_tasks)``: selects every MoE layer's gate and the head.
        return_routing : bool
            Also return the :class:`Routing` of each MoE layer, in layer order.

        Returns
        -------
        torch.Tensor or (torch.Tensor, list of Routing)
            ``(batch, classes_per_task[task])`` logits (and the routing).
        """
        self.check_input(images, task)
        x = self.embed(images)
        routing: list[Routing] = []
        for i, block in enumerate(self.blocks):
            x, r = block(x, task)
            if r is not None:
                routing.append(Routing(i, *r))
        logits = self.heads[task](self.norm(x)[:, 0])
        return (logits, routing) if return_routing else logits


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """Switch-style balance loss of one layer's routing: ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of the token-to-expert assignments going to expert ``e`` and ``P_e``
    its mean gate probability; the loss is 1 for perfectly even routing and grows as it skews.
    """
    num_experts = routing.probs.shape[-1]
    counts = torch.bincount(routing.indices.reshape(-1), minlength=num_experts)
    fraction = counts.to(routing.probs.dtype) / routing.indices.numel()
    mean_prob = routing.probs.reshape(-1, num_experts).mean(dim=0)
    return num_experts * torch.sum(fraction * mean_prob)


# ----------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DigitsSplit:
    """One split of the digits tasks.

    Attributes
    ----------
    images : torch.Tensor
        ``(n, 1, 8, 8)`` float32 images in [0, 1].
    labels : torch.Tensor
        ``(n, 2)`` int64: column 0 the digit (0..9), column 1 its parity (1 = odd).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def digits_tasks(seed: int = 0) -> tuple[DigitsSplit, DigitsSplit]:
    """scikit-learn's digits as two tasks, split 80/20 stratified by digit.

    Parameters
    ----------
    seed : int
        ``random_state`` of the split (0..2**32 - 1); the same seed gives the same split.

    Returns
    -------
    (DigitsSplit, DigitsSplit)
        Train (1437 images) and test (360 images) splits; task 0 is the digit (10 classes),
        task 1 its parity (2 classes). Pixels (0..16) are divided by 16.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_int("seed", seed, 0, 2**32 - 1)
    digits = load_digits()
    images = (digits.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    labels = np.stack([digits.target, digits.target % 2], axis=1).astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.2, stratify=digits.target, random_state=seed
    )
    return (
        DigitsSplit(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        DigitsSplit(torch.from_numpy(x_te), torch.from_numpy(y_te)),
    )


# ----------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass
class TrainingHistory:
    """Per-epoch record of :func:`train_m3vit`.

    Attributes
    ----------
    task_loss : list of float
        Mean over the epoch's steps of the summed task cross-entropies.
    balance_loss : list of float
        Mean load-balancing loss (averaged over tasks and MoE layers; 1 = even).
    seconds : float
        Wall-clock training time.
    steps : int
        Optimizer steps taken.
    """

    task_loss: list[float] = field(default_factory=list)
    balance_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


@contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic kernels on ``threads`` threads; the caller's settings come back after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def train_m3vit(
    cfg: M3ViTConfig | None = None,
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    balance_coef: float = 0.01,
    data_seed: int = 0,
    max_steps: int | None = None,
    threads: int = 1,
) -> tuple[M3ViT, TrainingHistory]:
    """Train ``cfg`` (default: the tiny config) on both digits tasks, deterministically.

    Each step runs the batch through the network once per task and minimises the sum of the
    task cross-entropies plus ``balance_coef`` times the mean :func:`load_balancing_loss`.
    AdamW with a linear warm-up (first 5 % of steps) then cosine decay. The weight
    initialisation and the batch order come only from ``seed``, the data split from
    ``data_seed``; deterministic kernels on ``threads`` threads, so a run is reproducible.

    Parameters
    ----------
    cfg : M3ViTConfig, optional
        Must take 1x8x8 images and have heads of 10 and 2 classes.
    seed, data_seed : int
        Seeds of the initialisation and batch order, and of the split.
    epochs, batch_size : int
        Passes over the training split and images per step.
    lr, weight_decay, balance_coef : float
        Peak learning rate, AdamW decoupled weight decay, weight of the balance loss.
    max_steps : int, optional
        Stop after this many steps (short runs).
    threads : int
        Intra-op threads (1 or 2).

    Returns
    -------
    (M3ViT, TrainingHistory)
        The trained model in eval mode and its history.
    """
    cfg = M3ViTConfig() if cfg is None else cfg
    digits_shape = (cfg.channels, cfg.image_height, cfg.image_width) == (1, 8, 8)
    if not digits_shape or cfg.classes_per_task != (10, 2):
        raise ValueError(
            "train_m3vit needs a config with 1x8x8 images and classes_per_task=(10, 2) "
            f"(the digits tasks), got {cfg.channels}x{cfg.image_height}x{cfg.image_width} "
            f"and {cfg.classes_per_task}"
        )
    check_int("seed", seed, 0, 2**63 - 1)
    check_int("epochs", epochs, 1, 10000)
    check_int("batch_size", batch_size, 1, 1 << 20)
    check_int("threads", threads, 1, 2)
    if max_steps is not None:
        check_int("max_steps", max_steps, 1, 1 << 40)
    for name, value in (
        ("lr", lr),
        ("weight_decay", weight_decay),
        ("balance_coef", balance_coef),
    ):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    train, _ = digits_tasks(data_seed)
    history = TrainingHistory()
    start = time.perf_counter()
    with _deterministic_torch(threads):
        torch.manual_seed(seed)
        model = M3ViT(cfg)
        order = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(train) / batch_size)
        total = epochs * steps_per_epoch
        if max_steps is not None:
            total = min(total, max_steps)
        warmup = max(1, total // 20)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        model.train()
        while history.steps < total:
            perm = torch.randperm(len(train), generator=order)
            task_sum = balance_sum = 0.0
            n_steps = 0
            for first in range(0, len(train), batch_size):
                if history.steps >= total:
                    break
                batch = perm[first : first + batch_size]
                images, labels = train.images[batch], train.labels[batch]
                task_loss = torch.zeros(())
                balance = torch.zeros(())
                for task in range(cfg.num_tasks):
                    logits, routing = model(images, task, return_routing=True)
                    task_loss = task_loss + F.cross_entropy(logits, labels[:, task])
                    for r in routing:
                        balance = balance + load_balancing_loss(r)
                balance = balance / (cfg.num_tasks * len(cfg.moe_layers))
                optimizer.zero_grad(set_to_none=True)
                (task_loss + balance_coef * balance).backward()
                optimizer.step()
                scheduler.step()
                history.steps += 1
                n_steps += 1
                task_sum += task_loss.item()
                balance_sum += balance.item()
            history.task_loss.append(task_sum / n_steps)
            history.balance_loss.append(balance_sum / n_steps)
        model.eval()
    history.seconds = time.perf_counter() - start
    return model, history


def _batched_forward(
    model: M3ViT, split: DigitsSplit, task: int, batch_size: int = 512
) -> Iterator[tuple[slice, torch.Tensor, list[Routing]]]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(split), batch_size):
                rows = slice(first, first + batch_size)
                logits, routing = model(split.images[rows], task, return_routing=True)
                yield rows, logits, routing
    finally:
        model.train(was_training)


def evaluate(model: M3ViT, split: DigitsSplit, task: int) -> float:
    """Accuracy (fraction of argmax hits) of ``model`` on ``split`` for task ``task``."""
    check_int("task", task, 0, model.cfg.num_tasks - 1)
    correct = 0
    for rows, logits, _ in _batched_forward(model, split, task):
        correct += int((logits.argmax(dim=-1) == split.labels[rows, task]).sum())
    return correct / len(split)


def expert_usage(model: M3ViT, split: DigitsSplit, task: int) -> npt.NDArray[np.int64]:
    """How often task ``task`` sends a token to each expert on ``split``.

    Returns
    -------
    numpy.ndarray
        ``(len(cfg.moe_layers), num_experts)`` int64 counts of token-to-expert assignments (each
        row sums to ``len(split) * num_tokens * top_k``).
    """
    check_int("task", task, 0, model.cfg.num_tasks - 1)
    cfg = model.cfg
    counts = np.zeros((len(cfg.moe_layers), cfg.num_experts), dtype=np.int64)
    for _, _, routing in _batched_forward(model, split, task):
        for i, r in enumerate(routing):
            counts[i] += torch.bincount(r.indices.reshape(-1), minlength=cfg.num_experts).numpy()
    return counts


# ----------------------------------------------------------------------------------------------
# Weights


def save_weights(model: M3ViT, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model``'s state dict, its config (JSON) and ``metadata`` (JSON) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    partial = path.with_name(f".{path.name}.partial")  # a crash never leaves a truncated file
    torch.save(
        {
            "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
            "metadata": json.dumps(metadata or {}, sort_keys=True),
            "state_dict": state,
        },
        partial,
    )
    os.replace(partial, path)


def load_m3vit(
    path: str | Path | None = None, *, with_metadata: bool = False
) -> tuple[M3ViT, M3ViTConfig] | tuple[M3ViT, M3ViTConfig, dict[str, Any]]:
    """Load weights written by :func:`save_weights` (default: the committed tiny weights).

    Returns ``(model, cfg)`` with the model in eval mode, plus the metadata dict when
    ``with_metadata`` is true.
    """
    path = DEFAULT_WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"no M3ViT weights at {path}; run examples/train_m3vit.py --out {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = M3ViTConfig.from_dict(json.loads(blob["config"]))
    model = M3ViT(cfg)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    if with_metadata:
        return model, cfg, json.loads(blob["metadata"])
    return model, cfg
