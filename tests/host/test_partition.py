"""Placement: the schedule model, the planner against exhaustive search."""

from __future__ import annotations

import random

import pytest

from tessera.host.device import LinkModel
from tessera.host.partition import CostGraph, CostNode, place, place_exhaustive, schedule

LINKS = {"gpu": LinkModel("pcie", 1e9, 1e-6), "fpga": LinkModel("axi", 1e8, 1e-6)}


def chain(costs: list[tuple[float, float]], out_bytes: int = 1000) -> CostGraph:
    nodes = []
    for i, (g, f) in enumerate(costs):
        nodes.append(
            CostNode(
                f"op{i}",
                (f"op{i - 1}",) if i else (),
                {"gpu": g, "fpga": f},
                out_bytes,
                in_bytes=out_bytes if i == 0 else 0,
            )
        )
    return CostGraph(nodes, LINKS)


def test_schedule_by_hand() -> None:
    g = chain([(5e-6, 1e-6), (1e-6, 9e-6)])
    # op0 on fpga: copy in 1000 B over 100 MB/s (11 us), run 1 us -> 12 us; copy out 11 us -> 23;
    # op1 on gpu: copy in 1000 B at 1 GB/s (2 us) -> 25, run 1 us -> 26, copy out 2 us -> 28.
    assert schedule(g, {"op0": "fpga", "op1": "gpu"}) == pytest.approx(28e-6)
    # all on gpu: 2 + 5 + 1 + 2 us.
    assert schedule(g, {"op0": "gpu", "op1": "gpu"}) == pytest.approx(10e-6)


def test_planner_finds_offload_when_compute_dominates() -> None:
    g = chain([(1e-3, 1e-5)] * 4, out_bytes=100)
    placement, t = place(g)
    assert set(placement.values()) == {"fpga"}
    _, best_t = place_exhaustive(g)
    assert t == pytest.approx(best_t)


def test_bad_graphs_are_rejected() -> None:
    with pytest.raises(ValueError, match="not an earlier op"):
        CostGraph([CostNode("a", ("b",), {"gpu": 1.0}, 1)], LINKS)
    with pytest.raises(ValueError, match="appears twice"):
        CostGraph([CostNode("a", (), {"gpu": 1.0}, 1), CostNode("a", (), {"gpu": 1.0}, 1)], LINKS)
    with pytest.raises(ValueError, match="can run on none"):
        CostGraph([CostNode("a", (), {"tpu": 1.0}, 1)], LINKS)
    g = CostGraph([CostNode("a", (), {"gpu": 1.0}, 1)], LINKS)
    with pytest.raises(ValueError, match="cannot run on 'fpga'"):
        schedule(g, {"a": "fpga"})
    with pytest.raises(ValueError, match="exceed the limit"):
        place_exhaustive(chain([(1.0, 1.0)] * 12), limit=1000)


def random_dag(rng: random.Random, n: int) -> CostGraph:
    nodes = []
    for i in range(n):
        preds = tuple(f"op{j}" for j in range(i) if rng.random() < (0.9 if j == i - 1 else 0.2))
        seconds = {"gpu": rng.uniform(1e-6, 1e-4), "fpga": rng.uniform(1e-6, 1e-4)}
        if rng.random() < 0.15:
            del seconds["fpga"]  # an op only torch can run
        nodes.append(CostNode(f"op{i}", preds, seconds, rng.randint(10, 20000), 1000 * (i == 0)))
    return CostGraph(nodes, LINKS)


def test_planner_within_five_percent_of_exhaustive_on_random_dags() -> None:
    rng = random.Random(7)
    ratios = []
    for _ in range(40):
        g = random_dag(rng, rng.randint(3, 9))
        _, t = place(g)
        _, best = place_exhaustive(g)
        assert t >= best * (1 - 1e-12)  # nothing beats the exhaustive optimum
        ratios.append(t / best)
    assert max(ratios) <= 1.05
    assert sum(ratios) / len(ratios) <= 1.01
