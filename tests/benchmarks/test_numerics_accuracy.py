"""The accuracy benchmark runs and its figures stay within the units' error budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "numerics_accuracy.py"


def test_accuracy_table_within_bounds(tmp_path):
    out = tmp_path / "accuracy.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--samples", "64", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    by_case = {(r["unit"], r["case"].split(",")[0]): r for r in rows}
    assert {r["unit"] for r in rows} == {"exp_neg", "softmax", "gelu", "layernorm", "attention"}
    assert max(r["max_lsb"] for r in rows if r["unit"] == "softmax") < 8
    rom = by_case[("gelu", "ROM 177 + interp")]
    lut = by_case[("gelu", "plain LUT 177")]
    assert rom["max_lsb"] < 0.61 and lut["max_lsb"] > 30 * rom["max_lsb"]
    assert max(r["max_lsb"] for r in rows if r["unit"] == "layernorm") < 0.8
    # Attention outputs are int8 in the scale of V: within one rounding of the float result.
    assert max(r["max_lsb"] for r in rows if r["unit"] == "attention") < 0.7
    assert proc.stdout.count("\n") == len(rows) + 2  # header, rule, one line per row
