"""The ``tessera`` command: outputs, JSON reports and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.cli.main import main


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_generate_writes_verilog_register_map_and_config(tmp_path, capsys):
    out = tmp_path / "gemm"
    assert main(["generate", "gemm", "--rows", "2", "--cols", "3", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "register_map.json",
        "temporal_gemm.v",
    ]
    assert report["config"]["rows"] == 2 and report["config"]["cols"] == 3
    regmap = json.loads((out / "register_map.json").read_text())
    assert {r["name"] for r in regmap["csr"]["registers"]} >= {"CTRL", "M", "N", "K", "CYCLES"}
    assert regmap["streams"]["a"]["data_width"] == 16
    assert regmap["streams"]["c"]["data_width"] == 3 * 32
    assert "module temporal_gemm" in (out / "temporal_gemm.v").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "gemm", "--m", "0", "--n", "4", "--k", "4"], "M must be >= 1"),
        (["simulate", "gemm", "--m", "4", "--n", "-3", "--k", "4"], "N must be >= 1"),
        (["simulate", "gemm", "--m", "4", "--n", "4", "--k", "70000"], "exceeds the 16-bit"),
        (
            ["simulate", "gemm", "--m", "4", "--n", "4", "--k", "4", "--sim", "modelsim"],
            "invalid choice: 'modelsim'",
        ),
        (["synth", "gemm", "--family", "stratix"], "invalid choice: 'stratix'"),
        (["generate", "gemm", "--rows", "0", "-o", "OUT"], "rows must be in [1, 64]"),
        (["simulate", "gemm", "--m", "2", "--n", "2", "--k", "2", "--idle", "1.5"], "--idle"),
        (["generate", "attention", "--parallelism", "9", "--max-seq", "8", "-o", "OUT"], "max_seq"),
        (["generate", "attention", "--head-dim", "0", "-o", "OUT"], "head_dim must be in"),
        (["simulate", "attention", "--seq-len", "300"], "max_seq=256"),
        (["simulate", "attention", "--mask", "lambda"], "window >= 1"),
        (["simulate", "softmax", "--length", "0"], "--length must be in [1, 256]"),
        (["generate", "gelu", "--in-frac", "20", "-o", "OUT"], "in_frac must be in"),
        (["generate", "layernorm", "--dim", "0", "-o", "OUT"], "dim must be in [1, 4096]"),
        (["generate", "fft", "-o", "OUT"], "invalid choice: 'fft'"),
        (["generate", "gemm", "--hls", "--clock-mhz", "0", "-o", "OUT"], "clock"),
        (["csim", "gemm", "--m", "0", "--n", "1", "--k", "1"], "M must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: error:"), proc.stderr
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_generate_refuses_non_empty_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _run("generate", "gemm", "-o", str(out))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_simulate_json_reports_pass_cycles_and_utilization(tmp_path):
    args = "simulate gemm --rows 2 --cols 2 --m 5 --n 3 --k 9 --sim icarus --seed 3 --waves --json"
    proc = _run(*args.split(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is True and report["engine"] == "gemm"
    (result,) = report["results"]
    assert result["ideal_cycles"] == pytest.approx(5 * 3 * 9 / 4)
    assert result["cycles"] == report["model_cycles"]
    assert result["utilization"] == pytest.approx(result["ideal_cycles"] / result["cycles"])
    assert result["waves"].endswith(".fst") and Path(result["waves"]).stat().st_size > 0


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = _run("demo", "gemm", "--rows", "2", "--cols", "2", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "demo PASSED" in proc.stdout
    assert proc.stdout.count(" PASS ") == 4 and " FAIL " not in proc.stdout
    assert (out / "temporal_gemm.v").exists() and (out / "register_map.json").exists()
    assert "4/4 synthesize" in proc.stderr


@pytest.mark.parametrize(
    ("engine", "top", "document"),
    [
        ("softmax", "online_softmax", "stream_layout.json"),
        ("gelu", "gelu_rom", "stream_layout.json"),
        ("layernorm", "layernorm", "register_map.json"),
        ("attention", "attention_engine", "register_map.json"),
    ],
)
def test_generate_every_unit(engine, top, document, tmp_path, capsys):
    out = tmp_path / engine
    assert main(["generate", engine, "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", document, f"{top}.v"])
    assert json.loads((out / "config.json").read_text()) == report["config"]
    assert f"module {top}" in (out / f"{top}.v").read_text()


def test_simulate_softmax_json(tmp_path):
    args = "simulate softmax --max-len 64 --rows 3 --length 37 --data spike --sim icarus --json"
    proc = _run(*args.split(), "--idle", "0.3", "--backpressure", "0.3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["engine"] == "softmax" and report["passed"] is True
    assert report["config"]["max_len"] == 64
    (result,) = report["results"]
    assert result["simulator"] == "icarus" and result["cycles"] >= 3 * 37


def test_generate_hls_project_and_csim(tmp_path, capsys):
    out = tmp_path / "hls"
    assert main(["generate", "gemm", "--hls", "--rows", "2", "--cols", "2", "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"run_hls.tcl", "Makefile", "csim.cpp", "tb.cpp", "config.json"} <= names
    assert "xczu9eg" in (out / "run_hls.tcl").read_text()
    capsys.readouterr()
    args = ["csim", "gemm", "--rows", "2", "--cols", "2", "--m", "5", "--n", "3", "--k", "9"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["elements"] == 15 and report["mismatches"] == 0


@pytest.mark.parametrize(
    "args",
    [
        "softmax --max-len 40 --rows 2 --length 37 --data increasing",
        "gelu --lanes 2 --count 300 --data extreme",
        "layernorm --dim 7 --rows 3 --data extreme",
        "attention --head-dim 8 --lanes 4 --max-seq 16 --seq-len 9 --mask lambda --window 3",
    ],
)
def test_csim_every_unit_matches_the_golden_model(args, capsys):
    assert main(["csim", *args.split(), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["mismatches"] == 0 and report["elements"] > 0


def test_train_m3vit_saves_weights_that_reproduce_the_report(tmp_path, capsys):
    from tessera.models.m3vit import digits_tasks, evaluate, load_m3vit

    out = tmp_path / "w.pt"
    assert main(["train", "m3vit", "--epochs", "1", "--seed", "3", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, cfg, metadata = load_m3vit(out, with_metadata=True)
    assert cfg == type(cfg).from_dict(report["config"]) and metadata["seed"] == 3
    _, test = digits_tasks(0)
    for task, name in enumerate(("digit", "parity")):
        assert evaluate(model, test, task) == report["test_accuracy"][name]
    # Every MoE block routes every token of every test image to top_k experts.
    for usage in report["expert_usage"].values():
        assert len(usage) == len(cfg.moe_layers)
        assert {sum(c) for c in usage} == {len(test) * cfg.num_tokens * cfg.top_k}
