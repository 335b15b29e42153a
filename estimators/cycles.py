"""Analytic cycle models of the engines, one registry :func:`engine_cycles` for all of them.

Every model counts the cycles of a run with inputs always valid and outputs always accepted, from
the first input beat offered to the last output beat accepted (what the cocotb testbenches and
the engines' ``CYCLES`` registers measure); idle inputs and back-pressure only add to it.

The ``TemporalGemm`` model follows the RTL's schedule with operands always valid and results
always accepted: one operand beat issues per cycle; a tile's last beat waits until the drain bank
is free, that is ``rows_t + 3`` cycles after the previous tile's last beat (one cycle in the operand
registers, one to accumulate, one to copy the sums into the bank, ``rows_t`` beats to drain it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tessera.models.attention import AttentionConfig, attention_traffic
from tessera.models.gelu import GeluConfig
from tessera.models.gemm import GemmConfig, gemm_tiles
from tessera.models.layernorm import LayerNormConfig
from tessera.models.moe import MoeConfig
from tessera.models.softmax import SoftmaxConfig

__all__ = [
    "ENGINE_WORKLOADS",
    "GemmCycleEstimate",
    "attention_cycles",
    "engine_cycles",
    "gelu_cycles",
    "gemm_cycles",
    "layernorm_cycles",
    "reference_workload",
    "softmax_cycles",
]

# Pipeline depths of the RTL (rtl/exp.py ``EXP_LATENCY``, rtl/gelu.py ``LATENCY``), restated
# here because estimators must not import the Amaranth layer; tests check them against it.
EXP_LATENCY = 4
GELU_LATENCY = 3


@dataclass(frozen=True)
class GemmCycleEstimate:
    """Predicted busy cycles of one GEMM and how they split.

    Attributes
    ----------
    cycles : int
        Cycles from start to the last C beat (the ``CYCLES`` register).
    ideal_cycles : float
        ``M*N*K / (rows*cols)``.
    compute_cycles : int
        Cycles of operand issue, ``tiles * K`` times the bus beats per slice (including the padded
        lanes of edge tiles).
    drain_stall_cycles : int
        Cycles a tile's last beat waited for the drain bank (short K only).
    tail_cycles : int
        Pipeline fill and the drain of the last tile.
    operand_bytes : int
        Bytes the A and B streams carry: every tile re-reads its A rows and B columns, so A is
        streamed ``ceil(N/cols)`` times and B ``ceil(M/rows)`` times.
    result_bytes : int
        Bytes of the C stream (32-bit lanes, padded lanes included).
    """

    cycles: int
    ideal_cycles: float
    compute_cycles: int
    drain_stall_cycles: int
    tail_cycles: int
    operand_bytes: int
    result_bytes: int

    @property
    def utilization(self) -> float:
        """Useful MACs / (cycles * array MACs)."""
        return self.ideal_cycles / self.cycles


def gemm_cycles(m: int, n: int, k: int, cfg: GemmConfig) -> GemmCycleEstimate:
    """Cycle count of ``TemporalGemm`` for an (M, N, K) GEMM with unthrottled streams.

    Parameters
    ----------
    m, n, k : int
        Problem size (validated against ``cfg``).
    cfg : GemmConfig
        Engine configuration.

    Returns
    -------
    GemmCycleEstimate
    """
    cfg.check_shape(m, n, k)
    tiles_m, tiles_n = gemm_tiles(m, n, cfg)
    last_rows = m - (tiles_m - 1) * cfg.rows
    # A k-slice issues every `q` cycles (q > 1 when a bus is narrower than its slice), so a tile
    # takes q*K cycles; every tile but the last then waits for the drain of its predecessor,
    # which has `rows` valid rows except in the last tile row.
    q = cfg.beats_per_slice
    period = q * k
    stall = (tiles_m - 1) * tiles_n * max(0, cfg.rows + 3 - period) + (tiles_n - 1) * max(
        0, last_rows + 3 - period
    )
    compute = tiles_m * tiles_n * period
    # The first tile's last slice issues at cycle q*K - 1, one later when a wide bus must first
    # be registered for splitting and no narrow bus hides that.
    split = cfg.a_beat_bytes > cfg.rows or cfg.b_beat_bytes > cfg.cols
    tail = last_rows + 2 + (1 if split and q == 1 else 0)
    return GemmCycleEstimate(
        cycles=compute + stall + tail,
        ideal_cycles=cfg.ideal_cycles(m, n, k),
        compute_cycles=compute,
        drain_stall_cycles=stall,
        tail_cycles=tail,
        operand_bytes=tiles_m * tiles_n * k * (cfg.rows + cfg.cols),
        result_bytes=tiles_n * m * cfg.cols * 4,
    )


def gelu_cycles(count: int, cfg: GeluConfig) -> int:
    """Cycles of ``GeluRom`` on ``count`` elements: one beat of ``lanes`` elements per cycle
    through a :data:`GELU_LATENCY`-stage pipeline and the output beat's acceptance,
    ``ceil(count / lanes) + 4``.

    Parameters
    ----------
    count : int
        Elements streamed (>= 1); the last beat is zero-padded.
    cfg : GeluConfig
        Unit configuration.

    Returns
    -------
    int
    """
    _check_positive("count", count)
    return -(-count // cfg.lanes) + GELU_LATENCY + 1


def softmax_cycles(rows: int, length: int | Sequence[int], cfg: SoftmaxConfig) -> int:
    """Cycles of ``OnlineSoftmax`` on ``rows`` back-to-back rows.

    Event schedule of row ``k`` (``L`` elements): its input streams at one element per cycle once
    the previous row is in and its bank (that of row ``k - 2``) has begun to be read out; its sum
    of exponentials is known ``EXP_LATENCY + 1`` cycles after its last element; the one divider
    takes ``recip_bits + 1`` cycles per row plus one to restart; pass 2 starts the cycle after the
    reciprocal and reads one element per cycle after the previous row's read-out; the last
    probability leaves ``EXP_LATENCY + 2`` cycles after its read, and is counted 2 cycles later
    (the beat's acceptance, inclusive count).

    Parameters
    ----------
    rows : int
        Rows streamed (>= 1).
    length : int or sequence of int
        Row length, or lengths of consecutive rows repeated cyclically (each 1..``max_len``).
    cfg : SoftmaxConfig
        Unit configuration.

    Returns
    -------
    int
    """
    _check_positive("rows", rows)
    lengths = [length] if isinstance(length, int) else list(length)
    if not lengths:
        raise ValueError("length must name at least one row length")
    for value in lengths:
        _check_positive("row length", value)
        if value > cfg.max_len:
            raise ValueError(
                f"row length {value} exceeds max_len={cfg.max_len}; raise max_len in the config"
            )
    recip = cfg.recip_cycles
    in_end = -1
    div_start = -(10**9)
    reads: list[int] = []  # read start of every row so far
    last_out = 0
    prev_read_end = -1
    for k in range(rows):
        n = lengths[k % len(lengths)]
        in_start = in_end + 1
        if k >= 2:
            in_start = max(in_start, reads[k - 2] + 1)
        in_end = in_start + n - 1
        div_start = max(in_end + EXP_LATENCY + 1, div_start + recip + 1)
        read_start = max(div_start + recip + 1, prev_read_end + 1)
        prev_read_end = read_start + n - 1
        reads.append(read_start)
        last_out = prev_read_end + EXP_LATENCY + 2
    return last_out + 2


def layernorm_cycles(rows: int, cfg: LayerNormConfig) -> int:
    """Cycles of the LayerNorm unit on ``rows`` back-to-back rows (parameters already loaded).

    The first row takes ``dim`` input cycles, the row latency (``rsqrt_latency + 10``, see
    ``rtl/layernorm.py``) and ``dim`` output cycles; each further row adds ``dim`` cycles, or the
    sequencer's ``rsqrt_latency + 3`` cycles per row (its run plus the hand-over to the row slot)
    when rows are shorter than that.

    Parameters
    ----------
    rows : int
        Rows streamed (>= 1).
    cfg : LayerNormConfig
        Unit configuration.

    Returns
    -------
    int
    """
    _check_positive("rows", rows)
    rsqrt = 5 + 4 * cfg.newton_steps
    period = max(cfg.dim, rsqrt + 3)
    return 2 * cfg.dim + rsqrt + 10 + (rows - 1) * period


def attention_cycles(seq_len: int, cfg: AttentionConfig) -> int:
    """Cycles of the ``AttentionEngine`` for one run of sequence length ``seq_len`` (all heads).

    This is the exact event schedule of :func:`tessera.models.attention.attention_traffic`.

    Parameters
    ----------
    seq_len : int
        Run-time sequence length (1..``max_seq``).
    cfg : AttentionConfig
        Engine configuration.

    Returns
    -------
    int
    """
    return int(attention_traffic(seq_len, cfg)["cycles"])


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


#: Workload parameters each engine's cycle model takes, by engine.
ENGINE_WORKLOADS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "softmax": ("rows", "length"),
    "gelu": ("count",),
    "layernorm": ("rows",),
    "attention": ("seq_len",),
    "moe": ("tokens",),
}

_CONFIGS: dict[str, type] = {
    "gemm": GemmConfig,
    "softmax": SoftmaxConfig,
    "gelu": GeluConfig,
    "layernorm": LayerNormConfig,
    "attention": AttentionConfig,
    "moe": MoeConfig,
}


def engine_cycles(engine: str, cfg: Any, **workload: Any) -> int:
    """Cycle count of any engine on a workload, through its model.

    Parameters
    ----------
    engine : {"gemm", "softmax", "gelu", "layernorm", "attention", "moe"}
        Engine name.
    cfg : EngineConfig
        The engine's configuration (of the matching class).
    **workload
        The engine's workload, exactly the names of :data:`ENGINE_WORKLOADS`: ``m, n, k`` (GEMM),
        ``rows, length`` (softmax), ``count`` (GELU), ``rows`` (LayerNorm), ``seq_len``
        (attention), ``tokens`` (MoE, routed by
        :func:`~tessera.estimators.moe_cycles.balanced_routing`).

    Returns
    -------
    int
        Cycles from the first input beat to the last output beat, without stalls.

    Raises
    ------
    ValueError
        Unknown engine, a config of another engine, or missing / unknown workload names.
    """
    if engine not in ENGINE_WORKLOADS:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINE_WORKLOADS)}")
    if not isinstance(cfg, _CONFIGS[engine]):
        raise ValueError(
            f"engine {engine!r} needs a {_CONFIGS[engine].__name__}, got {type(cfg).__name__}"
        )
    names = ENGINE_WORKLOADS[engine]
    if set(workload) != set(names):
        raise ValueError(
            f"{engine} workload takes exactly {', '.join(names)}; got {', '.join(workload) or '—'}"
        )
    if engine == "gemm":
        return gemm_cycles(workload["m"], workload["n"], workload["k"], cfg).cycles
    if engine == "softmax":
        return softmax_cycles(workload["rows"], workload["length"], cfg)
    if engine == "gelu":
        return gelu_cycles(workload["count"], cfg)
    if engine == "layernorm":
        return layernorm_cycles(workload["rows"], cfg)
    if engine == "attention":
        return attention_cycles(workload["seq_len"], cfg)
    # MoeEngine's model needs the RTL's pipeline constants: imported only when asked for.
    from tessera.estimators.moe_cycles import balanced_routing, moe_engine_cycles

    return int(moe_engine_cycles(balanced_routing(workload["tokens"], cfg), cfg)["cycles"])


def reference_workload(engine: str, cfg: Any) -> dict[str, int]:
    """The workload a design's ``cycles`` column of the dataset refers to.

    GEMM ``64 x 64 x 64``; softmax 16 rows of ``min(129, max_len)``; GELU 4096 elements;
    LayerNorm 16 rows; attention ``seq_len = min(129, max_seq)`` (Edge-MoE's 129 tokens); MoE
    ``min(129, max_tokens)`` tokens spread evenly over the experts
    (:func:`~tessera.estimators.moe_cycles.balanced_routing`).

    Parameters
    ----------
    engine : str
        Engine name.
    cfg : EngineConfig
        Its configuration (limits the sizes).

    Returns
    -------
    dict
        Keyword arguments of :func:`engine_cycles`.
    """
    if engine == "gemm":
        side = min(64, cfg.max_dim)
        return {"m": side, "n": side, "k": side}
    if engine == "softmax":
        return {"rows": 16, "length": min(129, cfg.max_len)}
    if engine == "gelu":
        return {"count": 4096}
    if engine == "layernorm":
        return {"rows": 16}
    if engine == "attention":
        return {"seq_len": min(129, cfg.max_seq)}
    if engine == "moe":
        return {"tokens": min(129, cfg.max_tokens)}
    raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINE_WORKLOADS)}")
