"""The scoreboard names the first mismatching (row, col) of C with expected and received values."""

from __future__ import annotations

import numpy as np

from tessera.models.gemm import GemmConfig, output_beats
from tessera.sim.scoreboard import first_mismatch


def _golden(m: int, n: int, cfg: GemmConfig):
    c = np.arange(m * n, dtype=np.int64).reshape(m, n)
    return c, *output_beats(c, cfg)


def test_equal_streams_pass():
    cfg = GemmConfig(rows=2, cols=3)
    _, beats, valid = _golden(5, 4, cfg)
    assert first_mismatch(beats.copy(), valid.copy(), beats, valid, 5, 4, cfg) is None


def test_value_mismatch_names_row_and_col():
    cfg = GemmConfig(rows=2, cols=3)
    c, beats, valid = _golden(5, 4, cfg)
    got = beats.copy()
    # Values of C are unique, so the golden value locates its beat and lane.
    beat, lane = np.argwhere((beats == c[4, 3]) & valid)[0]
    got[beat, lane] = -1
    mism = first_mismatch(got, valid, beats, valid, 5, 4, cfg)
    assert mism == {
        "row": 4,
        "col": 3,
        "expected": int(c[4, 3]),
        "got": -1,
        "reason": "value differs",
    }


def test_short_and_long_streams_and_tkeep():
    cfg = GemmConfig(rows=2, cols=3)
    _, beats, valid = _golden(3, 4, cfg)
    short = first_mismatch(beats[:-1], valid[:-1], beats, valid, 3, 4, cfg)
    assert short["reason"] == "stream ended early"
    extra = np.vstack([beats, beats[:1]])
    extra_valid = np.vstack([valid, valid[:1]])
    assert (
        first_mismatch(extra, extra_valid, beats, valid, 3, 4, cfg)["reason"]
        == "extra output beats"
    )
    bad_keep = valid.copy()
    bad_keep[-1, -1] = ~bad_keep[-1, -1]
    assert first_mismatch(beats, bad_keep, beats, valid, 3, 4, cfg)["reason"] == "tkeep differs"
