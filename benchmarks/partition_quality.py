"""Placement quality of the runtime's planner and the per-op dispatch overhead of the devices.

1. Planner vs exhaustive search on random small op DAGs (3..10 ops, two devices with different
   links, some ops torch-only): makespan ratio planner / optimum (goal: within 5 %), and the
   planning time.
2. Dispatch overhead: host wall time per op for an op that does nothing, on each device kind:
   one ``Device.run`` waited for at a time (round trip), and a chain of such ops run by the graph
   executor (``run_graph``, which submits a device's consecutive ops together): the overhead a
   placed model pays per op; goal <= 20 us per op on a CPU.

Usage::

    python benchmarks/partition_quality.py [--graphs 200] [--ops 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import numpy as np

from tessera.host.device import LINKS, Device, LinkModel, Op
from tessera.host.fpga import FpgaEmulator
from tessera.host.graph import Graph, Node, QFormat, run_graph
from tessera.host.partition import CostGraph, CostNode, place, place_exhaustive
from tessera.host.torch_device import TorchDevice

DEVICE_LINKS = {"gpu": LINKS["pcie4x16"], "fpga": LINKS["pcie3x4"]}


def random_graph(rng: random.Random, ops: int, links: dict[str, LinkModel]) -> CostGraph:
    """A random DAG: each op reads its predecessor (p = 0.9) and earlier ops (p = 0.2); run times
    log-uniform in [1 us, 1 ms] per device; 15 % of ops torch-only; outputs 100 B .. 1 MB."""
    nodes = []
    for i in range(ops):
        reads = tuple(f"op{j}" for j in range(i) if rng.random() < (0.9 if j == i - 1 else 0.2))
        seconds = {d: 10 ** rng.uniform(-6, -3) for d in links}
        if rng.random() < 0.15:
            seconds.pop("fpga", None)
        nodes.append(
            CostNode(
                f"op{i}",
                reads,
                seconds,
                int(10 ** rng.uniform(2, 6)),
                in_bytes=int(10 ** rng.uniform(2, 6)) if i == 0 else 0,
            )
        )
    return CostGraph(nodes, links)


def planner_quality(graphs: int, seed: int) -> dict[str, Any]:
    """Ratios planner / exhaustive over ``graphs`` random DAGs."""
    rng = random.Random(seed)
    ratios, plan_s, search_s = [], [], []
    for _ in range(graphs):
        g = random_graph(rng, rng.randint(3, 10), DEVICE_LINKS)
        t0 = time.perf_counter()
        _, t = place(g)
        t1 = time.perf_counter()
        _, best = place_exhaustive(g)
        t2 = time.perf_counter()
        ratios.append(t / best)
        plan_s.append(t1 - t0)
        search_s.append(t2 - t1)
    ratios.sort()
    return {
        "graphs": graphs,
        "optimal_fraction": sum(r <= 1 + 1e-9 for r in ratios) / graphs,
        "ratio_mean": statistics.fmean(ratios),
        "ratio_p95": ratios[int(0.95 * (graphs - 1))],
        "ratio_max": ratios[-1],
        "within_5_percent": sum(r <= 1.05 for r in ratios) / graphs,
        "plan_ms_mean": 1e3 * statistics.fmean(plan_s),
        "exhaustive_ms_mean": 1e3 * statistics.fmean(search_s),
    }


class _Nop(Op):
    kind = "nop"

    def __init__(self, name: str = "nop") -> None:
        self.name = name

    def run_float(self, x: Any) -> Any:
        return x

    def run_int(self, x: Any) -> Any:
        return x

    def fpga_cycles(self, x: Any) -> int:
        return 1


def dispatch_overhead(device: Device, ops: int) -> dict[str, float]:
    """Microseconds of host time per no-op: ``Device.run`` round trip, and per op of a chain
    run by ``run_graph`` (including its copy in and out)."""
    dtype = np.int64 if device.domain == "int" else np.float32
    x = np.ones(16, dtype=dtype)
    buf = device.copy_in(x).result()
    op = _Nop()
    for _ in range(200):  # warm up the queue thread
        device.run(op, buf).result()
    t0 = time.perf_counter()
    for _ in range(ops):
        device.run(op, buf).result()
    t1 = time.perf_counter()
    fmt = QFormat(1.0, 32)
    nodes = [Node(_Nop(f"nop{i}"), (f"nop{i - 1}" if i else "x",), fmt) for i in range(ops)]
    graph = Graph(nodes, {"x": fmt})
    placement = dict.fromkeys((n.name for n in nodes), device)
    domain = device.domain
    run_graph(graph, placement, {"x": x}, feed_domain=domain)  # warm-up
    t2 = time.perf_counter()
    run_graph(graph, placement, {"x": x}, feed_domain=domain)
    t3 = time.perf_counter()
    return {"round_trip_us": 1e6 * (t1 - t0) / ops, "graph_us": 1e6 * (t3 - t2) / ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    quality = planner_quality(args.graphs, args.seed)
    print(
        f"planner vs exhaustive over {quality['graphs']} random DAGs of 3..10 ops: optimal in "
        f"{100 * quality['optimal_fraction']:.1f} %, within 5 % in "
        f"{100 * quality['within_5_percent']:.1f} %, ratio mean {quality['ratio_mean']:.4f} "
        f"p95 {quality['ratio_p95']:.4f} max {quality['ratio_max']:.4f}; planning "
        f"{quality['plan_ms_mean']:.2f} ms vs exhaustive {quality['exhaustive_ms_mean']:.2f} ms"
    )
    overhead = {}
    for device in (TorchDevice("cpu"), FpgaEmulator()):
        overhead[device.name] = dispatch_overhead(device, args.ops)
        device.close()
        o = overhead[device.name]
        print(
            f"dispatch overhead on {device.name}: {o['round_trip_us']:.1f} us per op round "
            f"trip, {o['graph_us']:.1f} us per op in a graph"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"planner": quality, "dispatch": overhead}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
