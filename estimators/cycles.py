"""Analytic cycle models of the engines.

The ``TemporalGemm`` model follows the RTL's schedule with operands always valid and results
always accepted: one operand beat issues per cycle; a tile's last beat waits until the drain bank
is free, that is ``rows_t + 3`` cycles after the previous tile's last beat (one cycle in the operand
registers, one to accumulate, one to copy the sums into the bank, ``rows_t`` beats to drain it).
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.models.gemm import GemmConfig, gemm_tiles

__all__ = ["GemmCycleEstimate", "gemm_cycles"]


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
