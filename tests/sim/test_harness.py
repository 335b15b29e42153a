"""The simulation harness: runs that share a build directory keep their data apart."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tessera.models.gemm import GemmConfig
from tessera.sim.gemm import GemmCase, simulate_gemm
from tessera.sim.harness import run_dir


def _simulate(build_dir: str, seed: int) -> tuple[bool, int]:
    cases = [GemmCase(9 + seed, 5, 13 + seed, requant=None, seed=seed) for _ in range(3)]
    results = simulate_gemm(GemmConfig(rows=2, cols=2), cases, sim="icarus", build_dir=build_dir)
    return all(r.passed for r in results), os.getpid()


def test_concurrent_runs_of_one_design_do_not_mix_their_data(tmp_path):
    """Two processes simulate one design in one build directory at once, with different
    operands; each checks its own golden data (the build is shared, the job data is not)."""
    build = str(tmp_path / "gemm")
    with ProcessPoolExecutor(2) as pool:
        runs = list(pool.map(_simulate, [build, build, build, build], [1, 2, 3, 4]))
    assert all(passed for passed, _ in runs)
    pids = {pid for _, pid in runs}
    data_dirs = {p.name for p in Path(build).iterdir() if p.name.startswith("data-")}
    assert {f"data-{pid}" for pid in pids} <= {d.rsplit("-", 1)[0] for d in data_dirs}


def test_run_dir_is_per_process_and_thread(tmp_path):
    a = run_dir(tmp_path, "job")
    assert a == run_dir(tmp_path, "job") and a.parent == tmp_path.resolve()
    assert a.name.startswith(f"job-{os.getpid()}-")
