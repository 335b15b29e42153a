"""Every example runs and reports what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_has_a_test():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["gemm_engine.py"]


def test_gemm_engine_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "gemm_engine.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RTL on icarus: PASS (ok)" in proc.stdout
    error = float(re.search(r"max \|error\| = ([0-9.]+) LSB", proc.stdout).group(1))
    assert error <= 0.5 + 1e-9  # one rounding of the exact quotient
    cycles, model = map(int, re.search(r"(\d+) cycles \(model (\d+)\)", proc.stdout).groups())
    assert cycles == model
