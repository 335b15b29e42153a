"""Every example runs and reports what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_has_a_test():
    # train_m3vit.py is run (one epoch) by tests/models/test_m3vit.py, mixed_mlp.py by
    # tests/examples/test_mixed_mlp.py.
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "gemm_engine.py",
        "mixed_mlp.py",
        "train_m3vit.py",
        "vit_attention.py",
    ]


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


def test_vit_attention_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "vit_attention.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    # int8 q, k, v and output: within about one quantization step of v of torch's float result.
    error = float(re.search(r"max \|error\| = ([0-9.]+) LSB", proc.stdout).group(1))
    assert error < 1.5
    table = re.findall(r"^ *(\d+) +(\d+) +([0-9.]+)% +(\d+) +([0-9.]+)$", proc.stdout, re.M)
    p, cycles, _, _, kv_rate = (np.array([float(r[i]) for r in table]) for i in range(5))
    assert list(p) == [1, 2, 4, 8]
    assert np.all(cycles[1:] < 0.6 * cycles[:-1])  # about 1/P
    assert np.ptp(kv_rate) < 0.05 * kv_rate.mean()  # bandwidth need flat in P
    assert "RTL on icarus: PASS (ok)" in proc.stdout
