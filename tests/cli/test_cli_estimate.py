"""`tessera estimate` and `tessera dse` sub-commands, on a parser built with add_commands."""

from __future__ import annotations

import argparse
import json

import pytest

from tessera.cli.estimate import add_commands
from tessera.cli.main import UsageError
from tessera.estimators.analytic import analytic_resources
from tessera.estimators.cycles import gemm_cycles
from tessera.models.gemm import GemmConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def run(argv, capsys):
    parser = _Parser(prog="tessera")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_commands(sub, _Parser)
    args = parser.parse_args(argv)
    status = args.func(args)
    return status, capsys.readouterr().out


def test_estimate_json(capsys):
    status, out = run(["estimate", "gemm", "--rows", "8", "--cols", "4", "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    cfg = GemmConfig(rows=8, cols=4)
    assert report["name"] == cfg.short_name
    assert report["cycles"] == gemm_cycles(64, 64, 64, cfg).cycles
    assert set(report["families"]) == {"xc7", "xcup", "ecp5"}
    analytic = analytic_resources("gemm", cfg, "xcup")
    assert report["families"]["xcup"]["analytic"]["dsp"] == round(analytic["dsp"], 1)
    surrogate = report["families"]["xcup"]["surrogate"]
    assert surrogate["lut"] > 0 and surrogate["ff"] > 0


def test_estimate_table_and_bad_config(capsys):
    status, out = run(
        ["estimate", "gelu", "--lanes", "2", "--family", "xc7", "--no-surrogate"], capsys
    )
    assert status == 0 and "analytic" in out and "surrogate" not in out
    with pytest.raises(UsageError, match="lanes must be in"):
        run(["estimate", "gelu", "--lanes", "99"], capsys)


def test_dse_json(capsys):
    argv = ["dse", "--workload", "gemm:64,64,64", "--device", "xc7z020", "--no-verify"]
    status, out = run([*argv, "--max-macs", "64", "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    assert report["device"] == "xc7z020" and report["fitting"] >= 1
    assert len(report["top"]) == 3
    assert [t["latency_us"] for t in report["top"]] == sorted(
        t["latency_us"] for t in report["top"]
    )
    assert all(p["pareto_lut"] for p in report["pareto_lut"])
    assert all(t["actual"] is None for t in report["top"])


def test_dse_m3vit_table(capsys):
    argv = ["dse", "--workload", "m3vit-tiny", "--device", "xc7z020", "--no-verify"]
    status, out = run([*argv, "--max-macs", "16"], capsys)
    assert status == 0
    assert "m3vit-tiny on xc7z020" in out and "shared attention, LayerNorm and GELU" in out


def test_dse_attention_table(capsys):
    argv = ["dse", "--workload", "attention:64,32", "--device", "xck26", "--no-verify"]
    status, out = run([*argv, "--max-macs", "16"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("attention:64,32 on xck26 (xcup):")
    # The fastest design is listed first, with its parallelism and lanes.
    assert "P" in lines[2] and " L" in lines[2] and lines[2].startswith("attention_d32")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workload", "gemm:1,2", "--device", "xc7z020"], "gemm:M,N,K"),
        (["--workload", "gemm:8,8,8", "--device", "xc9"], "unknown device"),
        (["--workload", "gemm:8,8,8", "--device", "xc7z020", "--top", "-1"], "--top"),
        (["--workload", "gemm:8,8,8", "--device", "xc7z020", "--max-util", "0.0000001"], "fits"),
    ],
)
def test_dse_bad_input(argv, message, capsys):
    with pytest.raises(UsageError, match=message):
        run(["dse", *argv, "--no-verify"], capsys)


def test_missing_dataset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(UsageError, match="not found"):
        run(["estimate", "gemm", "--csv", str(tmp_path / "x.csv")], capsys)
