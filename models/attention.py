"""Attention engine with query parallelism: configuration, bit-exact golden model, stream layout
and off-chip traffic model.

The engine computes, per head, ``out = softmax(requant(q @ k.T)) @ v`` for int8 ``q, k, v`` of
shape (S, D). It follows Edge-MoE's reordering: ``P`` query rows are cached on chip as a *group*;
for each group the whole K matrix streams past once (phase K: ``P`` dot products per key row,
folded into ``P`` online max / sum registers) and then the whole V matrix (phase V: ``P``
weighted sums). K and V are therefore read ``ceil(S / P)`` times per head instead of ``S`` times,
so the engine's off-chip bandwidth stays at about one beat per cycle whatever ``P`` is, while
the cycle count falls as ``1 / P``.

Numerics (all integers, every rounding modelled exactly):

1. ``score = requantize(q . k, multiplier, shift, 0, score_bits, rounding, overflow)``: raw logits
   with ``score_frac`` fraction bits (the scale ``1/sqrt(D)`` and the q, k scales live in the
   multiplier, see :func:`requant_for_scale`);
2. the online softmax of :mod:`tessera.models.softmax` over the visible keys *in key order*
   (running max and sum, one reciprocal per row, probabilities with ``weight_frac`` fraction
   bits; masked keys get weight 0);
3. ``out = saturate_int8(round_half_up(sum_j w_j * v_j / 2**weight_frac))``, so the output is in
   the scale of ``v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tessera.models.config import EngineConfig, check_int
from tessera.models.gemm import Requant
from tessera.models.rounding import (
    Overflow,
    Rounding,
    int_range,
    quantize_multiplier,
    requantize,
    saturate,
)
from tessera.models.softmax import (
    EXP_LATENCY,
    SoftmaxConfig,
    online_max_sum,
    probabilities,
    reciprocal,
)

__all__ = [
    "EXP_LATENCY",
    "AttentionConfig",
    "AttentionMask",
    "attention",
    "attention_float",
    "attention_scores",
    "attention_streams",
    "attention_traffic",
    "attention_weights",
    "output_beats",
    "requant_for_scale",
]

IntArray = npt.NDArray[np.int64]
OPERAND_BITS = 8
MAX_PRODUCT = 1 << 14  # |int8 * int8| <= 128 * 128


@dataclass(frozen=True)
class AttentionConfig(EngineConfig):
    """Generator parameters of an ``AttentionEngine``.

    Parameters
    ----------
    head_dim : int
        D, elements of a query / key / value row (1..1024, a multiple of ``lanes``).
    heads : int
        H, heads processed one after the other in one run (1..255).
    max_seq : int
        Longest sequence (the score buffer depth), 1..8192.
    parallelism : int
        P, query rows processed together (1..64, at most ``max_seq``).
    lanes : int
        L, int8 elements of a row per stream beat (1..64).
    score_bits, score_frac : int
        Signed logits after requantization: width 4..24, fraction bits 0..score_bits-1.
    exp_frac : int
        Fraction bits of the exponentials and running sums (8..20).
    lut_bits, interp_bits : int
        ``exp`` table index bits (1..8) and linearly interpolated bits (0..10).
    weight_bits, weight_frac : int
        Unsigned attention weights: width 2..24, fraction bits 1..weight_bits-1.
    rounding : Rounding
        Rounding of the score requantization.
    overflow : Overflow
        Overflow handling of the score requantization.
    """

    head_dim: int = 64
    heads: int = 1
    max_seq: int = 256
    parallelism: int = 4
    lanes: int = 8
    score_bits: int = 16
    score_frac: int = 8
    exp_frac: int = 16
    lut_bits: int = 5
    interp_bits: int = 8
    weight_bits: int = 16
    weight_frac: int = 15
    rounding: Rounding = Rounding.RND_INF
    overflow: Overflow = Overflow.SAT

    def __post_init__(self) -> None:
        check_int("head_dim", self.head_dim, 1, 1024)
        check_int("heads", self.heads, 1, 255)
        check_int("max_seq", self.max_seq, 1, 8192)
        check_int("parallelism", self.parallelism, 1, 64)
        if self.parallelism > self.max_seq:
            raise ValueError(
                f"parallelism={self.parallelism} must not exceed max_seq={self.max_seq}: "
                "a group holds at most max_seq query rows"
            )
        check_int("lanes", self.lanes, 1, 64)
        if self.head_dim % self.lanes:
            raise ValueError(
                f"head_dim={self.head_dim} must be a multiple of lanes={self.lanes} "
                "(a row is a whole number of beats)"
            )
        check_int("score_bits", self.score_bits, 4, 24)
        check_int("score_frac", self.score_frac, 0, self.score_bits - 1)
        check_int("exp_frac", self.exp_frac, 8, 20)
        check_int("lut_bits", self.lut_bits, 1, 8)
        check_int("interp_bits", self.interp_bits, 0, 10)
        check_int("weight_bits", self.weight_bits, 2, 24)
        check_int("weight_frac", self.weight_frac, 1, self.weight_bits - 1)
        if self.lut_bits + self.interp_bits > self.score_frac + 16:
            raise ValueError(
                f"lut_bits + interp_bits ({self.lut_bits + self.interp_bits}) must not exceed "
                f"score_frac + 16 ({self.score_frac + 16}): reduce interp_bits"
            )
        self._coerce_modes()

    # --- derived quantities ---------------------------------------------------------------
    @property
    def softmax(self) -> SoftmaxConfig:
        """The online-softmax unit inside the engine."""
        return SoftmaxConfig(
            in_bits=self.score_bits,
            in_frac=self.score_frac,
            exp_frac=self.exp_frac,
            lut_bits=self.lut_bits,
            interp_bits=self.interp_bits,
            out_bits=self.weight_bits,
            out_frac=self.weight_frac,
            max_len=self.max_seq,
        )

    @property
    def beats_per_row(self) -> int:
        """Stream beats of one q / k / v / output row: ``head_dim / lanes``."""
        return self.head_dim // self.lanes

    @property
    def macs(self) -> int:
        """Multiply-accumulates per cycle: ``parallelism * lanes``."""
        return self.parallelism * self.lanes

    @property
    def dot_bits(self) -> int:
        """Signed width of an exact ``q . k`` (``head_dim`` products of at most ``2**14``)."""
        return (self.head_dim * MAX_PRODUCT).bit_length() + 1

    @property
    def acc_bits(self) -> int:
        """Signed width of an exact ``sum_j w_j * v_j`` for any weights the format allows."""
        bound = self.max_seq * ((1 << self.weight_bits) - 1) * (1 << (OPERAND_BITS - 1))
        return bound.bit_length() + 1

    def groups(self, seq_len: int) -> int:
        """Query groups per head: ``ceil(seq_len / parallelism)``."""
        self.check_seq_len(seq_len)
        return -(-seq_len // self.parallelism)

    def group_rows(self, seq_len: int) -> list[int]:
        """Valid query rows of each group of one head (only the last may be short)."""
        return [
            min(self.parallelism, seq_len - g * self.parallelism)
            for g in range(self.groups(seq_len))
        ]

    def check_seq_len(self, seq_len: int) -> None:
        """Raise ``ValueError`` unless ``1 <= seq_len <= max_seq``."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer):
            raise ValueError(f"sequence length must be an integer, got {seq_len!r}")
        if not 1 <= seq_len <= self.max_seq:
            raise ValueError(
                f"sequence length {seq_len} must be in [1, max_seq={self.max_seq}]; "
                "raise max_seq in the config for longer sequences"
            )

    # --- identity ---------------------------------------------------------------------------
    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``attention_d64p4l8_1a2b3c4d5e``."""
        return (
            f"attention_d{self.head_dim}p{self.parallelism}l{self.lanes}s{self.max_seq}_"
            f"{self.digest}"
        )


MASK_KINDS = ("none", "causal", "lambda")


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query sees (a run-time setting of the engine).

    Key ``j`` is visible to query ``i`` iff

    - ``"none"``: always;
    - ``"causal"``: ``j <= i``;
    - ``"lambda"`` (the Λ shape of streaming / sink attention): ``j <= i`` and (``j < sink`` or
      ``i - j < window``): the first ``sink`` keys plus a sliding window of ``window`` keys
      ending at the query itself.

    Parameters
    ----------
    kind : {"none", "causal", "lambda"}
    sink : int
        Leading keys every query sees (``"lambda"`` only), ``0 .. 2**32 - 1``.
    window : int
        Sliding-window length (``"lambda"`` only), ``1 .. 2**32 - 1`` so every query sees itself.
    """

    kind: Literal["none", "causal", "lambda"] = "none"
    sink: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask kind must be one of {', '.join(MASK_KINDS)}, got {self.kind!r}")
        check_int("sink", self.sink, 0, (1 << 32) - 1)
        check_int("window", self.window, 0, (1 << 32) - 1)
        if self.kind == "lambda" and self.window < 1:
            raise ValueError(
                "a lambda mask needs window >= 1 (every query must see at least itself)"
            )

    @property
    def code(self) -> int:
        """Value of the engine's ``MASK`` register: 0 none, 1 causal, 2 lambda."""
        return MASK_KINDS.index(self.kind)

    def visible(self, seq_len: int) -> npt.NDArray[np.bool_]:
        """Boolean (S, S) matrix: ``[i, j]`` is true when query ``i`` sees key ``j``."""
        i = np.arange(seq_len)[:, None]
        j = np.arange(seq_len)[None, :]
        if self.kind == "none":
            return np.ones((seq_len, seq_len), dtype=bool)
        causal = j <= i
        if self.kind == "causal":
            return causal
        return causal & ((j < self.sink) | (i - j < self.window))


def _check_qkv(
    q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike | None, cfg: AttentionConfig
) -> tuple[IntArray, IntArray, IntArray | None]:
    arrays = []
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x is None:
            arrays.append(None)
            continue
        arr = np.asarray(x)
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must have shape (heads, seq_len, head_dim) = "
                f"({cfg.heads}, S, {cfg.head_dim}), got {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer (int8-valued) array, got {arr.dtype}")
        arrays.append(arr.astype(np.int64))
    shape = arrays[0].shape
    for name, arr in zip("qkv", arrays, strict=True):
        if arr is None:
            continue
        if arr.shape != shape:
            raise ValueError(f"q, k and v must have the same shape: {name} is {arr.shape}")
        lo, hi = int_range(OPERAND_BITS, True)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"{name} has values outside int8 [{lo}, {hi}]")
    heads, seq_len, dim = shape
    if heads != cfg.heads or dim != cfg.head_dim:
        raise ValueError(
            f"q, k, v have shape {shape}; the config expects ({cfg.heads}, S, {cfg.head_dim}) "
            "(heads, head_dim)"
        )
    cfg.check_seq_len(seq_len)
    return arrays[0], arrays[1], arrays[2]


def _check_requant(score_requant: Requant) -> None:
    if not isinstance(score_requant, Requant):
        raise ValueError(f"score_requant must be a Requant, got {type(score_requant).__name__}")
    if score_requant.zero_point != 0:
        raise ValueError(
            f"score_requant.zero_point must be 0 (logits are centred), got "
            f"{score_requant.zero_point}"
        )


def attention_scores(
    q: npt.ArrayLike, k: npt.ArrayLike, cfg: AttentionConfig, score_requant: Requant
) -> IntArray:
    """Raw logits ``requantize(q @ k.T)``, shape (H, S, S), ``score_frac`` fraction bits."""
    _check_requant(score_requant)
    q_arr, k_arr, _ = _check_qkv(q, k, None, cfg)
    dots = np.einsum("hid,hjd->hij", q_arr, k_arr)
    return requantize(
        dots,
        score_requant.multiplier,
        score_requant.shift,
        0,
        bits=cfg.score_bits,
        signed=True,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
    )


def attention_weights(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    cfg: AttentionConfig,
    score_requant: Requant,
    mask: AttentionMask | None = None,
) -> IntArray:
    """Attention weights, shape (H, S, S), unsigned with ``weight_frac`` fraction bits.

    The online maximum and sum run over the visible keys in key order, exactly as the engine
    streams K; masked keys get weight 0.
    """
    mask = AttentionMask() if mask is None else mask
    scores = attention_scores(q, k, cfg, score_requant)
    sm = cfg.softmax
    visible = np.broadcast_to(mask.visible(scores.shape[-1]), scores.shape)
    maximum, total = online_max_sum(scores, sm, visible)
    recip = reciprocal(total, sm)
    # A masked logit may exceed the row maximum; give it a harmless value, then weight 0.
    clean = np.where(visible, scores, maximum[..., None])
    return np.where(visible, probabilities(clean, maximum, recip, sm), 0)


def attention(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    cfg: AttentionConfig,
    score_requant: Requant,
    mask: AttentionMask | None = None,
) -> IntArray:
    """Bit-exact golden model of the ``AttentionEngine``.

    Parameters
    ----------
    q, k, v : array_like of int, shape (heads, S, head_dim)
        int8-valued queries, keys and values, ``1 <= S <= max_seq``.
    cfg : AttentionConfig
        Engine configuration.
    score_requant : Requant
        Multiplier and shift turning ``q . k`` into logits with ``score_frac`` fraction bits
        (``zero_point`` must be 0); see :func:`requant_for_scale`.
    mask : AttentionMask, optional
        Visibility of keys; default ``"none"``.

    Returns
    -------
    ndarray of int64, shape (heads, S, head_dim)
        int8-valued outputs, in the scale of ``v``.
    """
    weights = attention_weights(q, k, cfg, score_requant, mask)
    _, _, v_arr = _check_qkv(q, k, v, cfg)
    acc = np.einsum("hij,hjd->hid", weights, v_arr)  # exact: |acc| < 2**acc_bits <= 2**46
    half = 1 << (cfg.weight_frac - 1)
    return saturate(np.right_shift(acc + half, cfg.weight_frac), OPERAND_BITS, True)


def attention_float(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    scale: float,
    mask: AttentionMask | None = None,
) -> np.ndarray:
    """Float64 reference: ``softmax(scale * q @ k.T, masked) @ v`` over the last two axes.

    Parameters
    ----------
    q, k, v : array_like, shape (..., S, D)
        Real-valued (e.g. dequantized, or raw int8 with the scales folded into ``scale``).
    scale : float
        Multiplies ``q . k`` before the softmax.
    mask : AttentionMask, optional
        Masked keys are excluded from the softmax.
    """
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    logits = scale * np.einsum("...id,...jd->...ij", q, k)
    if mask is not None:
        logits = np.where(mask.visible(logits.shape[-1]), logits, -np.inf)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.einsum("...ij,...jd->...id", z / z.sum(axis=-1, keepdims=True), v)


def requant_for_scale(scale: float, cfg: AttentionConfig) -> Requant:
    """Score requantization for a real logit scale.

    A logit is ``scale * (q . k)`` with integer ``q . k``; for int8 tensors with scales ``s_q``
    and ``s_k`` this is ``scale = s_q * s_k / sqrt(head_dim)``. The raw logit has ``score_frac``
    fraction bits, so the multiplier represents ``scale * 2**score_frac``.

    Returns
    -------
    Requant
        ``Requant(multiplier, shift, 0)`` from
        :func:`tessera.models.rounding.quantize_multiplier`.
    """
    value = float(scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")
    multiplier, shift = quantize_multiplier(value * (1 << cfg.score_frac))
    return Requant(multiplier, shift, 0)


def _beats(rows: np.ndarray, cfg: AttentionConfig) -> np.ndarray:
    """Rows of ``head_dim`` int8 as ``head_dim / lanes`` beats of ``lanes`` (lane 0 first)."""
    return np.ascontiguousarray(rows, dtype=np.int8).reshape(-1, cfg.lanes)


def attention_streams(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    cfg: AttentionConfig,
    out: npt.ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """The engine's stream contents, in the order it consumes and produces them.

    For each head and each group of ``parallelism`` query rows (``ceil(S / P)`` groups, the last
    possibly short) the ``q`` stream carries the group's valid query rows, and the ``k`` and
    ``v`` streams carry all ``S`` key and value rows. Each row is ``head_dim / lanes`` beats of
    ``lanes`` int8 (lane 0 holding the lowest element index). The ``o`` stream carries, per
    group, each valid query row's output as ``head_dim / lanes`` beats, i.e. the output in
    (head, row) order.

    Parameters
    ----------
    q, k, v : array_like of int, shape (heads, S, head_dim)
        int8-valued inputs.
    cfg : AttentionConfig
        Engine configuration.
    out : array_like of int, shape (heads, S, head_dim), optional
        Output to lay out as the ``o`` stream (e.g. :func:`attention`'s result).

    Returns
    -------
    dict
        ``"q"``, ``"k"``, ``"v"`` (and ``"o"`` when ``out`` is given): int8 arrays of shape
        (beats, lanes).
    """
    q_arr, k_arr, v_arr = _check_qkv(q, k, v, cfg)
    seq_len = q_arr.shape[1]
    groups = cfg.groups(seq_len)
    streams = {
        # The query rows of all groups, in order, are just the rows in (head, row) order.
        "q": _beats(q_arr, cfg),
        "k": _beats(np.repeat(k_arr[:, None], groups, axis=1), cfg),
        "v": _beats(np.repeat(v_arr[:, None], groups, axis=1), cfg),
    }
    if out is not None:
        streams["o"] = output_beats(out, cfg)
    return streams


def output_beats(out: npt.ArrayLike, cfg: AttentionConfig) -> np.ndarray:
    """An (heads, S, head_dim) output as the engine's ``o`` stream: (beats, lanes) int8."""
    arr = np.asarray(out)
    if arr.ndim != 3 or arr.shape[0] != cfg.heads or arr.shape[2] != cfg.head_dim:
        raise ValueError(f"out must have shape ({cfg.heads}, S, {cfg.head_dim}), got {arr.shape}")
    lo, hi = int_range(OPERAND_BITS, True)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"out has values outside int8 [{lo}, {hi}]")
    return _beats(arr, cfg)


def attention_traffic(
    seq_len: int,
    cfg: AttentionConfig,
    *,
    exp_latency: int = EXP_LATENCY,
    recip_cycles: int | None = None,
) -> dict[str, Any]:
    """Off-chip traffic, cycle count and MAC utilisation of one run of the engine.

    The cycle count is exact for a run without idle input cycles or output back-pressure (it
    follows the engine's schedule, below); stalls only add to it.

    Schedule of a group of ``r`` valid query rows (``B = head_dim / lanes`` beats per row):
    its ``r * B`` query beats load while the previous group is still in phase V; phase K takes
    ``S * B`` beats, then the last score needs 3 pipeline stages and the ``exp`` unit
    (``exp_latency``) to reach the running sum; the reciprocals take ``recip_cycles`` plus a
    start cycle; phase V starts with ``exp_latency + 2`` cycles to fill the weight pipeline and
    takes ``S * B`` beats; the ``r * B`` output beats drain while the next group runs phase K.

    Parameters
    ----------
    seq_len : int
        Run-time sequence length S.
    cfg : AttentionConfig
        Engine configuration.
    exp_latency : int
        Latency of the ``exp`` pipeline (the RTL ``ExpNeg.latency``).
    recip_cycles : int, optional
        Cycles from a reciprocal's start to its result (the RTL ``Reciprocal.cycles``); default
        ``recip_bits + 1`` of the softmax unit.

    Returns
    -------
    dict
        ``q_bytes``, ``k_bytes``, ``v_bytes``, ``read_bytes`` (their sum), ``write_bytes``,
        ``groups`` (per head), ``cycles``, ``useful_macs`` (``2 * H * S * S * D``: the
        ``q @ k.T`` and ``weights @ v`` products, masked ones included), ``mac_utilization``
        (``useful_macs / (P * L * cycles)``), ``bytes_per_cycle`` (off-chip bytes, read and
        written, per cycle) and ``kv_bytes_per_cycle`` (the K and V streams alone: about
        ``lanes``, whatever ``P``).
    """
    cfg.check_seq_len(seq_len)
    if recip_cycles is None:
        recip_cycles = cfg.softmax.recip_cycles
    beats = cfg.beats_per_row
    rows = cfg.group_rows(seq_len) * cfg.heads
    groups = len(rows) // cfg.heads
    row_bytes = cfg.head_dim
    q_bytes = cfg.heads * seq_len * row_bytes
    k_bytes = len(rows) * seq_len * row_bytes
    v_bytes = k_bytes
    write_bytes = q_bytes

    # Event times (cycle numbers, the start write at cycle 0) of the engine's schedule.
    stream_k = seq_len * beats
    q_free = 1  # first cycle the query registers may load
    k_allowed = 1  # first cycle phase K may take a key beat
    drain_end = 0  # last cycle of the previous group's output drain
    last = 0
    for r in rows:
        q_ready = q_free + r * beats  # queries loaded at the end of cycle q_ready - 1
        k_first = max(k_allowed, q_ready)
        k_last = k_first + stream_k - 1
        q_free = k_last + 2  # the last key beat has used the queries
        recip_start = k_last + 3 + exp_latency + 1
        v_phase = recip_start + recip_cycles + 1
        v_first = max(v_phase + exp_latency + 2, drain_end + 1)
        v_last = v_first + stream_k - 1
        drain_first = max(v_last + 2, drain_end + 1)
        drain_end = drain_first + r * beats - 1
        k_allowed = v_last + 1
        last = drain_end
    cycles = last
    useful = 2 * cfg.heads * seq_len * seq_len * cfg.head_dim
    return {
        "seq_len": seq_len,
        "groups": groups,
        "q_bytes": q_bytes,
        "k_bytes": k_bytes,
        "v_bytes": v_bytes,
        "read_bytes": q_bytes + k_bytes + v_bytes,
        "write_bytes": write_bytes,
        "cycles": cycles,
        "useful_macs": useful,
        "mac_utilization": useful / (cfg.macs * cycles),
        "bytes_per_cycle": (q_bytes + k_bytes + v_bytes + write_bytes) / cycles,
        "kv_bytes_per_cycle": (k_bytes + v_bytes) / cycles,
    }
