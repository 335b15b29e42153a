"""In-order comparison of an engine's output stream with the golden output, for testbenches."""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera.models.gemm import GemmConfig, gemm_tiles

__all__ = ["first_mismatch"]


def first_mismatch(
    got: np.ndarray,
    got_valid: np.ndarray,
    expected: np.ndarray,
    valid: np.ndarray,
    m: int,
    n: int,
    cfg: GemmConfig,
) -> dict[str, Any] | None:
    """Locate the first difference between received and golden C beats.

    Parameters
    ----------
    got, got_valid : ndarray, shape (beats, cols)
        Received lanes and their ``tkeep`` flags.
    expected, valid : ndarray, shape (beats, cols)
        Golden lanes and flags (:func:`tessera.models.gemm.output_beats`).
    m, n : int
        Size of C.
    cfg : GemmConfig
        Engine configuration (tile shape).

    Returns
    -------
    dict or None
        ``{"row", "col", "expected", "got", "reason"}`` of the first mismatch in stream order, or
        ``None`` when the streams agree.
    """
    if (
        got.shape == expected.shape
        and np.array_equal(got_valid, valid)
        and np.array_equal(np.where(valid, got, 0), np.where(valid, expected, 0))
    ):
        return None
    tm, tn = gemm_tiles(m, n, cfg)
    beat = 0
    for ti in range(tm):
        for tj in range(tn):
            for r in range(min(cfg.rows, m - ti * cfg.rows)):
                for c in range(cfg.cols):
                    row, col = ti * cfg.rows + r, tj * cfg.cols + c
                    if beat >= len(got):
                        return {
                            "row": row,
                            "col": col,
                            "expected": int(expected[beat, c]),
                            "got": None,
                            "reason": "stream ended early",
                        }
                    if got_valid[beat, c] != valid[beat, c]:
                        return {
                            "row": row,
                            "col": col,
                            "expected": int(expected[beat, c]),
                            "got": int(got[beat, c]),
                            "reason": "tkeep differs",
                        }
                    if valid[beat, c] and got[beat, c] != expected[beat, c]:
                        return {
                            "row": row,
                            "col": col,
                            "expected": int(expected[beat, c]),
                            "got": int(got[beat, c]),
                            "reason": "value differs",
                        }
                beat += 1
    if len(got) != beat:
        return {
            "row": None,
            "col": None,
            "expected": beat,
            "got": len(got),
            "reason": "extra output beats",
        }
    return None
