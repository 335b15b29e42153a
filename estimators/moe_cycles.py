"""Exact cycle count of a ``MoeEngine`` run without stalls (:func:`moe_engine_cycles`).

The engine's schedule is fixed once the routing is known, so its cycle count is a sum of phase
costs (see :mod:`tessera.rtl.moe` for the microarchitecture):

- **load + gate fetch** (overlapped): ``max(B + 1, fetch(gate) + 1)`` with ``B = tokens *
  dim / cols`` token beats, one per cycle;
- **GEMM tiles**: each ``rows x cols`` output tile of an ``(M, N, K)`` GEMM costs ``K`` compute
  cycles, one setup and one settle cycle and one drain cycle per valid row; a phase then waits
  for its post-processing pipeline to empty (``POST_LATENCY + 1`` cycles);
- **route**, per token: an ``experts``-cycle top-k scan plus one cycle, then the ``top_k``
  logits through the online softmax unit and the queue appends (``2 * top_k + latency - 1``
  cycles, the unit's lone-row time from first logit to last probability);
- **experts** (from the first select cycle, ``t = 0``): a fetcher and the array run side by
  side. The fetcher scans the experts in order, one cycle per empty queue; a loaded expert's
  fetch starts once its bank (loaded experts alternate between two banks) is free, i.e. once
  the expert two before it has finished, and its bank is seen full ``fetch + 2`` cycles later.
  The array takes the loaded experts in the same order, each as soon as its bank is full: one
  select cycle, then the W1 GEMM, its flush, the W2 GEMM and its flush, which frees the bank.
  The phase ends one cycle after both the array and the fetcher's final scan are done;
- **fetch** of a region of ``n`` beats in bursts ``b_i``: ``sum(b_i + 1 + mem_latency)``, one
  address cycle and ``mem_latency`` cycles before the first beat of each burst;
- **output**: ``B + 2`` cycles (a buffer read and the output register, then a beat per
  cycle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera.models.config import check_int
from tessera.models.moe import MoeConfig, MoeRouting, moe_image_layout
from tessera.rtl.moe import POST_LATENCY, check_engine_config
from tessera.rtl.softmax import _latency as softmax_latency

__all__ = [
    "AXI_RAM_LATENCY",
    "balanced_routing",
    "gemm_tile_cycles",
    "moe_engine_cycles",
    "output_cycles",
]

AXI_RAM_LATENCY = 1
"""``mem_latency`` of cocotbext-axi's ``AxiRamRead`` without pauses: idle cycles between the
address handshake of a burst and its first data beat."""

_GATE, _W1, _W2 = 0, 1, 2


def gemm_tile_cycles(m: int, n: int, k: int, cfg: MoeConfig) -> int:
    """Engine cycles of an ``(M, N, K)`` GEMM on the array, without its pipeline flush."""
    total = 0
    tiles_n = -(-n // cfg.cols)
    for m0 in range(0, m, cfg.rows):
        rows = min(cfg.rows, m - m0)
        total += tiles_n * (k + rows + 2)
    return total


def output_cycles(tokens: int, cfg: MoeConfig) -> int:
    """Cycles of the output phase: a buffer read and the output register, then a beat per cycle."""
    return tokens * (cfg.dim // cfg.cols) + 2


def balanced_routing(tokens: int, cfg: MoeConfig, task: int = 0) -> MoeRouting:
    """A routing that spreads ``tokens`` evenly over the experts (the reference workload).

    Token ``t`` goes to experts ``(t + j) % experts`` for ``j < top_k``, so every queue holds
    ``tokens * top_k / experts`` tokens, give or take one. Logits and gate weights are zero: the
    engine's schedule depends only on the queues.

    Parameters
    ----------
    tokens : int
        Tokens routed (1..``max_tokens``).
    cfg : MoeConfig
        Layer configuration.
    task : int, optional
        Task whose gate is used.

    Returns
    -------
    MoeRouting
    """
    check_int("tokens", tokens, 1, cfg.max_tokens)
    check_int("task", task, 0, cfg.tasks - 1)
    ids = np.arange(tokens, dtype=np.int64)
    experts = (ids[:, None] + np.arange(cfg.top_k)) % cfg.experts
    queues = tuple(np.flatnonzero((experts == e).any(axis=1)) for e in range(cfg.experts))
    return MoeRouting(
        task=task,
        logits=np.zeros((tokens, cfg.experts), dtype=np.int64),
        experts=experts,
        weights=np.zeros((tokens, cfg.top_k), dtype=np.int64),
        queue_tokens=queues,
        queue_weights=tuple(np.zeros(len(q), dtype=np.int64) for q in queues),
    )


def moe_engine_cycles(
    routing: MoeRouting, cfg: MoeConfig, *, mem_latency: int = AXI_RAM_LATENCY
) -> dict[str, Any]:
    """Cycles of one ``MoeEngine`` run (``CYCLES`` register) when nothing stalls.

    Parameters
    ----------
    routing : MoeRouting
        Routing of the call (from :func:`tessera.models.moe.moe_layer` or ``route``).
    cfg : MoeConfig
        Engine configuration.
    mem_latency : int
        Idle cycles between a burst's address handshake and its first data beat (0..1000),
        with ``arready`` high and data beats back to back.

    Returns
    -------
    dict
        ``cycles`` = ``load_gate_fetch + gate_gemm + route + experts + output``; also
        ``gate_fetch`` (within ``load_gate_fetch``), ``load`` (token beats),
        ``expert_fetch`` and ``expert_compute`` (the sums the expert phase overlaps),
        ``per_expert`` (dicts ``expert``, ``queue``, ``fetch_start``, ``filled``,
        ``compute_start``, ``compute``, cycles from the start of the expert phase) and
        ``macs_per_cycle`` (peak).
    """
    if not isinstance(routing, MoeRouting):
        raise ValueError(f"routing must be a MoeRouting, got {type(routing).__name__}")
    check_int("mem_latency", mem_latency, 0, 1000)
    check_engine_config(cfg)
    if routing.top_k != cfg.top_k or len(routing.queue_tokens) != cfg.experts:
        raise ValueError(
            f"routing has top_k={routing.top_k} and {len(routing.queue_tokens)} experts; the "
            f"config has top_k={cfg.top_k} and experts={cfg.experts}"
        )
    lay = moe_image_layout(cfg)
    tokens = routing.tokens
    beats = tokens * (cfg.dim // cfg.cols)

    def fetch(nbytes: int) -> int:
        return sum(b + 1 + mem_latency for b in lay.bursts(nbytes))

    def flush(phase: int) -> int:
        return POST_LATENCY[phase] + 1

    gate_fetch = fetch(lay.gate_bytes)
    load_gate_fetch = max(beats + 1, gate_fetch + 1)
    gate_gemm = gemm_tile_cycles(tokens, cfg.experts, cfg.dim, cfg) + flush(_GATE)
    per_token = cfg.experts + 2 * cfg.top_k + softmax_latency(cfg.softmax)
    route = tokens * per_token
    # Experts: the fetcher and the array work side by side from the first select cycle (t = 0
    # here). The fetcher scans the experts in order (one cycle per empty queue) and fetches the
    # next loaded one into the bank the array is not using, once that bank's previous expert is
    # done; the array runs the experts in the same order, each once its bank is filled.
    fetch_cycles = fetch(lay.expert_bytes)
    per_expert = []
    fetcher = 0  # cycle the fetcher next scans
    array = 0  # cycle the array next looks for a filled bank
    cleared: list[int] = []  # per loaded expert: cycle its bank is seen free again
    for e, n in enumerate(int(v) for v in routing.queue_lengths):
        if not n:
            fetcher += 1
            continue
        j = len(per_expert)
        start = max(fetcher, cleared[j - 2] if j >= 2 else 0)
        filled = start + 2 + fetch_cycles  # the bank is seen filled
        fetcher = filled
        compute = (
            gemm_tile_cycles(n, cfg.expert_hidden, cfg.dim, cfg)
            + flush(_W1)
            + gemm_tile_cycles(n, cfg.dim, cfg.expert_hidden, cfg)
            + flush(_W2)
        )
        begin = max(array, filled)
        array = begin + 1 + compute
        cleared.append(array)
        per_expert.append(
            {
                "expert": e,
                "queue": n,
                "fetch_start": start,
                "filled": filled,
                "compute_start": begin + 1,
                "compute": compute,
            }
        )
    fetcher_done = fetcher + 1  # the scan past the last expert
    experts_phase = max(array, fetcher_done) + 1
    expert_fetch = len(per_expert) * fetch_cycles
    expert_compute = sum(p["compute"] for p in per_expert)
    output = output_cycles(tokens, cfg)
    total = load_gate_fetch + gate_gemm + route + experts_phase + output
    return {
        "cycles": total,
        "load": beats,
        "gate_fetch": gate_fetch,
        "load_gate_fetch": load_gate_fetch,
        "gate_gemm": gate_gemm,
        "route": route,
        "experts": experts_phase,
        "expert_fetch": expert_fetch,
        "expert_compute": expert_compute,
        "output": output,
        "per_expert": per_expert,
        "macs_per_cycle": cfg.rows * cfg.cols,
    }
