"""``tessera generate moe`` / ``tessera simulate moe``: files, JSON reports and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tessera.cli.engines import ENGINES
from tessera.cli.main import main
from tessera.estimators.moe_cycles import moe_engine_cycles
from tessera.models.moe import MoeConfig, moe_layer
from tessera.sim.moe import MoeCase

SMALL_ARGS = [
    "--dim", "8", "--experts", "4", "--expert-hidden", "8", "--max-tokens", "32",
    "--rows", "2", "--cols", "4",
]  # fmt: skip
SMALL = MoeConfig(
    dim=8, experts=4, expert_hidden=8, top_k=2, tasks=2, max_tokens=32, rows=2, cols=4
)


def test_moe_is_registered_without_csim():
    spec = ENGINES["moe"]
    assert spec.config_class() is MoeConfig
    assert spec.csim is None


def test_generate_moe_writes_verilog_and_register_map(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["generate", "moe", *SMALL_ARGS, "--bus-bytes", "8", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["bus_bytes"] == 8 and report["name"].startswith("moe_d8e4h8k2t2_r2c4")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "moe_engine.v",
        "register_map.json",
    ]
    regmap = json.loads((out / "register_map.json").read_text())
    assert regmap["m_axi"]["data_width"] == 64
    assert "module moe_engine" in (out / "moe_engine.v").read_text()


def test_simulate_moe_reports_json(capsys):
    args = ["simulate", "moe", *SMALL_ARGS, "--tokens", "7", "--task", "1", "--seed", "3"]
    assert main([*args, "--sim", "icarus", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == "moe" and report["passed"]
    (result,) = report["results"]
    case = MoeCase(7, task=1, seed=3)
    x, weights = case.inputs(SMALL)
    _, routing = moe_layer(x, weights, 1, SMALL)
    assert report["queue_lengths"] == routing.queue_lengths.tolist()
    assert result["cycles"] == report["model_cycles"] == moe_engine_cycles(routing, SMALL)["cycles"]
    assert report["traffic"]["experts_loaded"] == np.count_nonzero(routing.queue_lengths)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "moe", *SMALL_ARGS, "--tokens", "0"], "tokens must be in [1, max_tokens=32]"),
        (["simulate", "moe", *SMALL_ARGS, "--task", "2"], "task must be in [0, 1]"),
        (["simulate", "moe", *SMALL_ARGS, "--cols", "3"], "dim=8 must be a multiple of cols=3"),
        (["generate", "moe", *SMALL_ARGS, "--cols", "3", "-o", "OUT"], "multiple of cols=3"),
        (["generate", "moe", "--bus-bytes", "24", "-o", "OUT"], "bus_bytes must be a power"),
        (["simulate", "moe", *SMALL_ARGS, "--skew", "sideways"], "invalid choice: 'sideways'"),
    ],
)
def test_moe_errors_are_one_line_with_status_2(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
