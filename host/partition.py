"""Placement of an op graph on devices from a cost model.

A :class:`CostGraph` is a DAG of ops with, per op, the modelled run time on each device that can
run it and the bytes of its output, and per device the link to the host. :func:`schedule` gives the
makespan of a placement under the same timing rules the devices follow at run time (one queue per
device, an op starts when its device is free and its inputs have arrived; a value that crosses
devices goes device -> host -> device over both links, and transfers occupy the links' devices'
queues like any other work). :func:`place` is the runtime's planner: a HEFT list schedule and a
few other starts, each improved by local search over one- and two-op moves;
:func:`place_exhaustive` tries every placement and is the reference the planner is measured
against (``benchmarks/partition_quality.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tessera.host.device import LinkModel

__all__ = ["CostGraph", "CostNode", "Placement", "place", "place_exhaustive", "schedule"]


@dataclass(frozen=True)
class CostNode:
    """One op of a :class:`CostGraph`.

    Parameters
    ----------
    name : str
        Unique op name.
    inputs : tuple of str
        Names of the ops whose outputs it reads (graph inputs are not listed: they come from the
        host).
    seconds : Mapping[str, float]
        Modelled run time per device name; a device missing here cannot run the op.
    out_bytes : int or Mapping[str, int]
        Size of the output when it crosses to another device or back to the host; a mapping
        gives the size per device (a value is wider in float on a GPU than packed on an FPGA).
    in_bytes : int or Mapping[str, int]
        Bytes it reads from the host (graph inputs); 0 if none.
    """

    name: str
    inputs: tuple[str, ...]
    seconds: Mapping[str, float]
    out_bytes: int | Mapping[str, int]
    in_bytes: int | Mapping[str, int] = 0

    def out_size(self, device: str) -> int:
        """Bytes of the output as ``device`` holds it."""
        return _size(self.out_bytes, device)

    def in_size(self, device: str) -> int:
        """Bytes of the graph input it reads, as ``device`` holds it."""
        return _size(self.in_bytes, device)


def _size(value: int | Mapping[str, int], device: str) -> int:
    return int(value) if isinstance(value, int) else int(value[device])


@dataclass
class CostGraph:
    """A DAG of :class:`CostNode` in topological order, and the devices' host links.

    Raises
    ------
    ValueError
        If a node reads an op defined after it (or unknown), a name repeats, or a node can run
        nowhere.
    """

    nodes: Sequence[CostNode]
    links: Mapping[str, LinkModel]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {}
        for i, node in enumerate(self.nodes):
            if node.name in self.index:
                raise ValueError(f"op name {node.name!r} appears twice")
            for src in node.inputs:
                if src not in self.index:
                    raise ValueError(
                        f"op {node.name!r} reads {src!r}, which is not an earlier op: list the ops "
                        "in topological order"
                    )
            usable = [d for d in node.seconds if d in self.links]
            if not usable:
                raise ValueError(f"op {node.name!r} can run on none of {sorted(self.links)}")
            self.index[node.name] = i

    @property
    def outputs(self) -> list[str]:
        """Ops no other op reads (their results go back to the host)."""
        read = {src for node in self.nodes for src in node.inputs}
        return [n.name for n in self.nodes if n.name not in read]

    def candidates(self, node: CostNode) -> list[str]:
        """Devices that can run ``node``, in the links' order."""
        return [d for d in self.links if d in node.seconds]


Placement = dict[str, str]


def schedule(graph: CostGraph, placement: Mapping[str, str]) -> float:
    """Modelled makespan of ``placement`` (op name -> device name), outputs back on the host.

    Rules (the ones :class:`~tessera.host.device.Device` applies): each device runs its work in
    the order of the graph; a graph input is copied in over the device's link; an output read on
    another device is copied out over the producer's link once and into each consumer device
    once; every copy occupies its device's queue; results the host needs are copied out at the
    end.
    """
    free = dict.fromkeys(graph.links, 0.0)
    done: dict[str, float] = {}  # op -> time its output is valid on its device
    on_host: dict[str, float] = {}  # op -> time its output is on the host
    copied: dict[tuple[str, str], float] = {}  # (op, device) -> time its output arrived there

    def occupy(device: str, ready: float, seconds: float) -> float:
        start = max(free[device], ready)
        free[device] = start + seconds
        return free[device]

    for node in graph.nodes:
        dev = placement[node.name]
        if dev not in node.seconds or dev not in graph.links:
            raise ValueError(f"op {node.name!r} cannot run on {dev!r}")
        link = graph.links[dev]
        ready = 0.0
        if node.in_size(dev):
            ready = occupy(dev, 0.0, link.transfer_seconds(node.in_size(dev)))
        for src in node.inputs:
            src_dev = placement[src]
            if src_dev == dev:
                ready = max(ready, done[src])
                continue
            src_node = graph.nodes[graph.index[src]]
            if src not in on_host:
                out = graph.links[src_dev].transfer_seconds(src_node.out_size(src_dev))
                on_host[src] = occupy(src_dev, done[src], out)
            if (src, dev) not in copied:  # a value is copied into a device once
                into = link.transfer_seconds(src_node.out_size(dev))
                copied[(src, dev)] = occupy(dev, on_host[src], into)
            ready = max(ready, copied[(src, dev)])
        done[node.name] = occupy(dev, ready, node.seconds[dev])
    end = 0.0
    for name in graph.outputs:
        dev = placement[name]
        node = graph.nodes[graph.index[name]]
        out = graph.links[dev].transfer_seconds(node.out_size(dev))
        end = max(end, occupy(dev, done[name], out))
    return end


def _upward_rank(graph: CostGraph) -> dict[str, float]:
    # Mean cost of an op plus the longest mean path to an exit: HEFT's priority.
    readers: dict[str, list[str]] = {n.name: [] for n in graph.nodes}
    for node in graph.nodes:
        for src in node.inputs:
            readers[src].append(node.name)
    rank: dict[str, float] = {}
    for node in reversed(graph.nodes):
        cands = graph.candidates(node)
        mean = sum(node.seconds[d] for d in cands) / len(cands)
        rank[node.name] = mean + max((rank[r] for r in readers[node.name]), default=0.0)
    return rank


def _heft(graph: CostGraph) -> Placement:
    # HEFT: ops in decreasing upward rank (a topological order), each on the device where the
    # partial schedule finishes it first.
    rank = _upward_rank(graph)
    placement: Placement = {}
    order = sorted(graph.nodes, key=lambda n: (-rank[n.name], graph.index[n.name]))
    for node in order:
        best, best_t = None, math.inf
        for dev in graph.candidates(node):
            trial = {**placement, node.name: dev}
            sub = CostGraph([n for n in graph.nodes if n.name in trial], graph.links)
            t = schedule(sub, trial)
            if t < best_t:
                best, best_t = dev, t
        placement[node.name] = best  # type: ignore[assignment]
    return placement


def _refine(graph: CostGraph, placement: Placement, pairs: bool) -> tuple[Placement, float]:
    # Steepest descent over single-op moves, then (for small graphs) moves of two ops at once,
    # which get a pair of ops across a link that neither move alone pays for.
    cost = schedule(graph, placement)
    nodes = graph.nodes
    while True:
        best_move: dict[str, str] | None = None
        best_cost = cost
        for node in nodes:
            for dev in graph.candidates(node):
                if dev != placement[node.name]:
                    t = schedule(graph, {**placement, node.name: dev})
                    if t < best_cost * (1 - 1e-12):
                        best_move, best_cost = {node.name: dev}, t
        if best_move is None and pairs:
            for i, a in enumerate(nodes):
                for b in nodes[i + 1 :]:
                    for da in graph.candidates(a):
                        for db in graph.candidates(b):
                            if da == placement[a.name] or db == placement[b.name]:
                                continue
                            t = schedule(graph, {**placement, a.name: da, b.name: db})
                            if t < best_cost * (1 - 1e-12):
                                best_move, best_cost = {a.name: da, b.name: db}, t
        if best_move is None:
            return placement, cost
        placement = {**placement, **best_move}
        cost = best_cost


def place(graph: CostGraph, *, pair_moves_up_to: int = 24) -> tuple[Placement, float]:
    """The planner: multi-start local search over placements.

    Starts from the HEFT list schedule, from the placement that gives each op its fastest
    device, and from "everything on one device" for each device (where an op cannot run there,
    its fastest device); each start is improved by steepest-descent moves of one op (and of two
    ops for graphs of at most ``pair_moves_up_to`` ops); the best result wins.

    Parameters
    ----------
    graph : CostGraph
        Ops, costs and links.
    pair_moves_up_to : int
        Largest graph for which two-op moves are tried (they cost O(ops² devices²) schedules).

    Returns
    -------
    placement : dict
        Op name -> device name.
    makespan : float
        :func:`schedule` of that placement, seconds.
    """
    fastest = {n.name: min(graph.candidates(n), key=lambda d: n.seconds[d]) for n in graph.nodes}
    starts = [_heft(graph), fastest]
    for dev in graph.links:
        starts.append({n.name: dev if dev in n.seconds else fastest[n.name] for n in graph.nodes})
    pairs = len(graph.nodes) <= pair_moves_up_to
    best: tuple[Placement, float] | None = None
    seen: list[Placement] = []
    for start in starts:
        if start in seen:
            continue
        seen.append(start)
        result = _refine(graph, start, pairs)
        if best is None or result[1] < best[1]:
            best = result
    assert best is not None
    return best


def place_exhaustive(graph: CostGraph, *, limit: int = 1 << 20) -> tuple[Placement, float]:
    """The best placement by trying all of them (for small graphs; the planner's reference).

    Raises
    ------
    ValueError
        If there are more than ``limit`` placements.
    """
    choices = [graph.candidates(n) for n in graph.nodes]
    total = math.prod(len(c) for c in choices)
    if total > limit:
        raise ValueError(
            f"{total} placements exceed the limit of {limit}: use place() for graphs this big"
        )
    best: Placement = {}
    best_t = math.inf
    names = [n.name for n in graph.nodes]
    for combo in itertools.product(*choices):
        trial = dict(zip(names, combo, strict=True))
        t = schedule(graph, trial)
        if t < best_t:
            best, best_t = trial, t
    return best, best_t
