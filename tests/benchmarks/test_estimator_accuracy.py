"""benchmarks/estimator_accuracy.py on the committed dataset."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "estimator_accuracy", ROOT / "benchmarks" / "estimator_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_and_json(bench, tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert bench.main(["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MAPE" in text and "rule4ml" in text and "wa-hls4ml" in text
    result = json.loads(out.read_text())
    for split in ("random", "extrapolation"):
        entry = result["splits"][split]
        assert entry["train"] + entry["test"] == result["rows"]
        lut = entry["targets"]["lut"]
        assert {"surrogate", "analytic", "analytic_calibrated"} <= set(lut)
        for e in lut.values():
            assert 0 <= e["p50"] <= e["p75"] <= e["p95"]
            assert math.isfinite(e["mape"])
        # The cycle model is what the dataset's cycles column holds: zero error.
        assert entry["targets"]["cycles"]["analytic"]["p95"] == 0
    timing = result["timing"]
    # Prediction is orders of magnitude cheaper than synthesis.
    assert timing["surrogate_predict_s_per_design"] * 100 < timing["synthesis_s_per_design_mean"]


def test_missing_csv_is_a_usage_error(bench, tmp_path):
    with pytest.raises(SystemExit) as info:
        bench.main(["--csv", str(tmp_path / "none.csv")])
    assert info.value.code == 2
