"""AttentionEngine RTL on Icarus and Verilator through cocotb + cocotbext-axi, bit-exact vs golden.

The default run covers P = 1, 2, 4, 8 on Icarus (with S = 129 for P = 8) and the extremes P = 1
and P = 8 on Verilator (each Verilator build costs 15-40 s); ``-m slow`` adds Verilator for P = 2
and 4, S = 129 on Verilator for every P, and a random soak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tessera.models.attention import AttentionConfig, AttentionMask, attention_traffic
from tessera.models.gemm import Requant
from tessera.models.rounding import Overflow, Rounding
from tessera.sim.attention import AttentionCase, simulate_attention

CAUSAL = AttentionMask("causal")
LAMBDA = AttentionMask("lambda", sink=1, window=2)
SATURATING = Requant(1 << 30, 29)  # raw logit = 2 * q.k: the spike saturates the score format


def _config(parallelism: int) -> AttentionConfig:
    # Two beats per row (head_dim / lanes) exercise the row rotation; max_seq admits S = 129.
    return AttentionConfig(head_dim=4, lanes=2, parallelism=parallelism, max_seq=136)


def _cases(p: int, long: bool) -> list[AttentionCase]:
    cases = [
        AttentionCase(1, seed=1, name="S=1"),
        AttentionCase(
            2 * p + 1, seed=2, mask=CAUSAL, idle=0.3, backpressure=0.3, name="odd S causal stalls"
        ),
        AttentionCase(p + 3, seed=3, mask=LAMBDA, name="lambda"),
        AttentionCase(
            5, seed=4, data="extreme", requant=SATURATING, idle=0.3, name="one huge logit"
        ),
        AttentionCase(p + 2, seed=5, data="equal", mask=CAUSAL, backpressure=0.3, name="equal"),
    ]
    if long:
        cases.append(
            AttentionCase(
                129,
                seed=6,
                mask=AttentionMask("lambda", sink=3, window=20),
                idle=0.3,
                backpressure=0.3,
                name="S=129 lambda stalls",
            )
        )
    return cases


def _check(cfg: AttentionConfig, cases: list[AttentionCase], results) -> None:
    assert len(results) == len(cases)
    for case, res in zip(cases, results, strict=True):
        assert res.passed, f"{res.simulator} P={cfg.parallelism} {res.case}: {res.message}"
        model = attention_traffic(case.seq_len, cfg)["cycles"]
        if case.idle == 0 and case.backpressure == 0:
            # Without stalls the schedule is deterministic: the cycle model is exact.
            assert res.cycles == model, f"{res.case}: CYCLES {res.cycles}, model {model}"
        else:
            assert res.cycles >= model, f"{res.case}: stalls cannot save cycles"


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("sim", "p"),
    [
        ("icarus", 1),
        ("icarus", 2),
        ("icarus", 4),
        ("icarus", 8),
        ("verilator", 1),
        pytest.param("verilator", 2, marks=SLOW),
        pytest.param("verilator", 4, marks=SLOW),
        ("verilator", 8),
    ],
)
def test_attention_bit_exact(sim, p, tmp_path):
    cfg = _config(p)
    cases = _cases(p, long=p == 8 and sim == "icarus")
    _check(cfg, cases, simulate_attention(cfg, cases, sim=sim, build_dir=tmp_path))


@SLOW
@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_long_sequence(p, tmp_path):
    cfg = _config(p)
    cases = _cases(p, long=True)[-1:]
    _check(cfg, cases, simulate_attention(cfg, cases, sim="verilator", build_dir=tmp_path))


@SLOW
@pytest.mark.parametrize("seed", range(3))
def test_random_soak(seed, tmp_path):
    """Random shapes, formats, masks, lengths and stalls on Verilator (run with -m slow)."""
    rng = np.random.default_rng(seed)
    lanes = int(rng.choice([1, 2, 4, 8]))
    max_seq = int(rng.integers(16, 80))
    cfg = AttentionConfig(
        head_dim=lanes * int(rng.integers(1, 4)),
        lanes=lanes,
        heads=int(rng.integers(1, 3)),
        max_seq=max_seq,
        parallelism=int(rng.integers(1, 17)),
        score_bits=int(rng.integers(10, 17)),
        score_frac=int(rng.integers(4, 9)),
        weight_bits=int(rng.integers(10, 17)),
        weight_frac=9,
        rounding=list(Rounding)[int(rng.integers(len(Rounding)))],
        overflow=Overflow.SAT,
    )
    cases = []
    for i in range(8):
        kind = ["none", "causal", "lambda"][int(rng.integers(3))]
        mask = AttentionMask(kind, int(rng.integers(0, 5)), int(rng.integers(1, 12)))
        cases.append(
            AttentionCase(
                int(rng.integers(1, max_seq + 1)),
                seed=100 * seed + i,
                mask=mask,
                data=["random", "extreme", "equal"][int(rng.integers(3))],
                idle=float(rng.choice([0.0, 0.2, 0.5])),
                backpressure=float(rng.choice([0.0, 0.3, 0.7])),
            )
        )
    results = simulate_attention(cfg, cases, sim="verilator", build_dir=tmp_path)
    for res in results:
        assert res.passed, f"{cfg} {res.case}: {res.message}"
    assert len(results) == len(cases)


def test_bandwidth_benchmark_quick(tmp_path):
    """The benchmark's quick run: bit-exact, cycles as modelled, falling with P at a flat rate."""
    out = tmp_path / "rows.json"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_bandwidth.py"
    env = {**os.environ, "TESSERA_BUILD_DIR": str(tmp_path / "build")}
    command = [sys.executable, str(script), "--quick", "--sim", "icarus", "--json", str(out)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-exact" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["parallelism"] for r in rows] == [1, 2, 4]
    for row in rows:
        assert row["passed"], row["message"]
        assert row["cycles"] == row["model_cycles"]
    cycles = [r["cycles"] for r in rows]
    # S = 9 is short, so the per-group overhead (reciprocals, pipeline fill) weighs in.
    assert cycles[0] > 1.6 * cycles[1]
    assert cycles[1] > 1.4 * cycles[2]
    kv_rate = [r["kv_bytes_per_cycle"] for r in rows]
    assert max(kv_rate) < 1.1 * min(kv_rate)
