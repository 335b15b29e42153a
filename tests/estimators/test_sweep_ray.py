"""The sweep's Ray path, for real: a local Ray cluster synthesizes what the local path does."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from tessera.estimators.sweep import (  # noqa: E402
    SweepStore,
    enumerate_configs,
    plan_tasks,
    run_sweep,
    run_task,
)


def test_ray_sweep_records_what_the_local_path_gives(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The smallest GELU (about 50 LUTs): one real Yosys run on a Ray worker, one here, each with
    # a cache of its own so that neither answer is the other's cached copy.
    store = SweepStore(tmp_path / "ray.jsonl")
    counts = run_sweep(
        ["gelu"],
        store=store,
        families=("xc7",),
        max_tasks=1,
        ray_address="local",
        cache_dir=str(tmp_path / "ray-cache"),
        progress=False,
    )
    assert not ray.is_initialized()  # the sweep shut down the cluster it started
    assert counts["ok"] == 1 and counts["failed"] == 0
    (record,) = store.records().values()
    task = plan_tasks(["gelu"], families=("xc7",))[0]
    assert record["config"] == enumerate_configs("gelu")[0].to_dict() == task.config
    local = run_task(task, str(tmp_path / "local-cache"))
    assert record["status"] == local["status"] == "ok", record.get("error")
    assert not record["cached"] and not local["cached"]
    fields = ("key", "digest", "family", "lut", "ff", "dsp", "bram", "carry", "lutram")
    assert {f: record[f] for f in fields} == {f: local[f] for f in fields}
    assert record["tool_versions"] == local["tool_versions"]
    assert 20 <= record["lut"] <= 200 and record["ff"] > 0


def test_a_lost_worker_is_a_failed_record_and_retried(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        real_get = ray.get

        def crashed(ref, *args, **kwargs):  # type: ignore[no-untyped-def]
            real_get(ref, *args, **kwargs)  # the task ran; its worker is then reported lost
            raise ray.exceptions.WorkerCrashedError()

        monkeypatch.setattr(ray, "get", crashed)
        store = SweepStore(tmp_path / "lost.jsonl")
        kwargs = {"store": store, "families": ("xc7",), "max_tasks": 1, "progress": False}
        cache = str(tmp_path / "cache")
        first = run_sweep(["gelu"], ray_address="local", cache_dir=cache, **kwargs)
        assert first["failed"] == 1 and first["ok"] == 0
        (record,) = store.records().values()
        assert record["status"] == "error" and record["error"].startswith("WorkerCrashedError")
        assert ray.is_initialized()  # a cluster the caller started is left running
        monkeypatch.setattr(ray, "get", real_get)
        again = run_sweep(
            ["gelu"], ray_address="local", cache_dir=cache, retry_failed=True, **kwargs
        )
        assert again == {
            "planned": first["planned"],
            "skipped": first["planned"] - 1,
            "ok": 1,
            "failed": 0,
        }
        (retried,) = store.records().values()
        assert retried["key"] == record["key"] and retried["status"] == "ok"
        assert retried["cached"]  # the lost run's synthesis result was kept in the cache
    finally:
        ray.shutdown()
