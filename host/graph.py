"""Op graphs, their values' number formats, and the executor that runs a placed graph on devices.

A :class:`Graph` is a list of :class:`Node` in topological order. Each value (a graph input or a
node's output) has a :class:`QFormat`: the real scale of one integer step and the signed width of
its raw integers. A value lives in the domain of the device that made it: float on torch devices,
raw integers on FPGA devices. When a value crosses domains the host converts it at the boundary
(``q = saturate(round_half_even(x / scale), bits)``, or ``x = q * scale``), which is the only
place precision is lost: every op on an FPGA device is bit-exact with its golden model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.host.device import Buffer, Device, Op

__all__ = ["Graph", "GraphRun", "Node", "QFormat", "run_graph", "wire_bytes"]


@dataclass(frozen=True)
class QFormat:
    """Integer representation of a value: ``real = raw * scale``, raw signed ``bits`` wide."""

    scale: float
    bits: int

    def __post_init__(self) -> None:
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"scale must be finite and > 0, got {self.scale}")
        if not 2 <= self.bits <= 64:
            raise ValueError(f"bits must be in [2, 64], got {self.bits}")

    def quantize(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Float to raw integers: round half to even, saturate."""
        hi = (1 << (self.bits - 1)) - 1
        arr = np.asarray(x, dtype=np.float64)
        return np.clip(np.round(arr / self.scale), -hi - 1, hi).astype(np.int64)

    def dequantize(self, q: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Raw integers to float32."""
        return (np.asarray(q, dtype=np.float64) * self.scale).astype(np.float32)


@dataclass(frozen=True)
class Node:
    """One op of a :class:`Graph`.

    Attributes
    ----------
    op : Op
        What runs; ``op.name`` names the node and its output value.
    inputs : tuple of str
        Values it reads: graph inputs or earlier nodes' names.
    out_format : QFormat or None
        Integer format of the output (``None``: the op has no integer form).
    """

    op: Op
    inputs: tuple[str, ...]
    out_format: QFormat | None

    @property
    def name(self) -> str:
        """The op's name."""
        return self.op.name


@dataclass
class Graph:
    """Nodes in topological order, and the formats of the graph inputs.

    Raises
    ------
    ValueError
        If a node reads an unknown or later value, or names repeat.
    """

    nodes: Sequence[Node]
    input_formats: Mapping[str, QFormat | None]

    def __post_init__(self) -> None:
        known = dict(self.input_formats)
        for node in self.nodes:
            for src in node.inputs:
                if src not in known:
                    raise ValueError(
                        f"node {node.name!r} reads {src!r}, which is neither a graph input nor an "
                        "earlier node"
                    )
            if node.name in known:
                raise ValueError(f"value name {node.name!r} is defined twice")
            known[node.name] = node.out_format
        self.formats: dict[str, QFormat | None] = known

    @property
    def outputs(self) -> list[str]:
        """Nodes whose outputs no node reads."""
        read = {s for n in self.nodes for s in n.inputs}
        return [n.name for n in self.nodes if n.name not in read]


@dataclass
class GraphRun:
    """Outputs of :func:`run_graph` and what moved where.

    Attributes
    ----------
    outputs : dict
        Output value name -> host array in its producer's domain (float32 or raw int64).
    crossings : int
        Values converted between the float and integer domains.
    transfers : int
        Device <-> host copies.
    finish : float
        Modelled time at which the last output reached the host, seconds.
    """

    outputs: dict[str, npt.NDArray[Any]]
    crossings: int
    transfers: int
    finish: float


def wire_bytes(shape: tuple[int, ...], fmt: QFormat | None) -> int:
    """Bytes an integer value of ``shape`` takes on a link, packed to whole bytes per element of
    its format (the host holds raw integers as int64)."""
    width = 8 if fmt is None else -(-fmt.bits // 8)
    return int(np.prod(shape, dtype=np.int64)) * width


def _convert(
    value: npt.NDArray[Any], fmt: QFormat | None, src: str, dst: str, name: str
) -> npt.NDArray[Any]:
    if src == dst:
        return value
    if fmt is None:
        raise ValueError(
            f"value {name!r} has no integer format, so it cannot move between the {src} and "
            f"{dst} domains: place its producer and consumers in one domain"
        )
    return fmt.quantize(value) if dst == "int" else fmt.dequantize(value)


def run_graph(
    graph: Graph,
    placement: Mapping[str, Device],
    feeds: Mapping[str, npt.ArrayLike],
    *,
    feed_domain: str = "float",
) -> GraphRun:
    """Run ``graph`` with each node on its device; values cross devices through the host.

    Work is submitted to each device's queue as soon as its inputs are known, so devices run
    concurrently; consecutive ops on one device go out as one submission; a value is copied out
    of its device once and into each other device once.

    Parameters
    ----------
    graph : Graph
        What to run.
    placement : Mapping
        Node name -> device.
    feeds : Mapping
        Graph input name -> host array (in ``feed_domain``).
    feed_domain : {"float", "int"}
        Domain of the feeds (graph inputs of an integer domain are raw integers in their format).

    Returns
    -------
    GraphRun
    """
    missing = [n for n in graph.input_formats if n not in feeds]
    if missing:
        raise ValueError(f"missing graph inputs: {missing}")
    unplaced = [n.name for n in graph.nodes if n.name not in placement]
    if unplaced:
        raise ValueError(f"nodes without a device: {unplaced}")
    # A value's handle resolves to its Buffer (blocking until the work that makes it is done).
    Handle = Callable[[], Buffer]
    producer: dict[str, tuple[Device | None, str]] = {
        name: (None, feed_domain) for name in graph.input_formats
    }
    on_device: dict[tuple[str, str], Handle] = {}  # (value, device name) -> handle
    host_copy: dict[tuple[str, str], tuple[npt.NDArray[Any], float]] = {}  # (value, domain)
    crossings = transfers = 0
    # Consecutive ops on one device go out as one submission (one queue hand-off), so a chain
    # of ops costs the host a few microseconds per op instead of a thread round trip each.
    segment: list[tuple[Op, list[Any]]] = []
    segment_index: dict[str, int] = {}  # value -> its step in the pending segment
    segment_device: Device | None = None

    def flush() -> None:
        nonlocal segment, segment_index
        if not segment:
            return
        assert segment_device is not None
        fut = segment_device.run_many(segment)
        for name, j in segment_index.items():
            on_device[(name, segment_device.name)] = lambda fut=fut, j=j: fut.result()[j]
        segment, segment_index = [], {}

    def host_value(name: str, domain: str) -> tuple[npt.NDArray[Any], float]:
        nonlocal crossings, transfers
        if (name, domain) in host_copy:
            return host_copy[(name, domain)]
        dev, src_domain = producer[name]
        if dev is None:
            arr, ready = np.asarray(feeds[name]), 0.0
        else:
            if dev is segment_device and name in segment_index:
                flush()
            buf = on_device[(name, dev.name)]()
            if src_domain == "int":
                buf.nbytes = wire_bytes(np.shape(buf.data), graph.formats[name])
            arr, ready = dev.copy_out_timed(buf).result()
            transfers += 1
        host_copy[(name, src_domain)] = (arr, ready)
        if domain != src_domain:
            crossings += 1
            arr = _convert(arr, graph.formats[name], src_domain, domain, name)
            host_copy[(name, domain)] = (arr, ready)
        return arr, ready

    def stage(name: str, device: Device) -> None:
        # Copy a value the device lacks onto it; this flushes the pending segment first.
        nonlocal transfers
        key = (name, device.name)
        if (device is segment_device and name in segment_index) or key in on_device:
            return
        arr, ready = host_value(name, device.domain)
        size = wire_bytes(arr.shape, graph.formats[name]) if device.domain == "int" else None
        flush()  # keep the device's queue in graph order: earlier ops before this copy
        fut = device.copy_in(arr, label=name, ready_at=ready, nbytes=size)
        on_device[key] = fut.result
        transfers += 1

    def input_ref(name: str, device: Device) -> Any:
        if device is segment_device and name in segment_index:
            return segment_index[name]
        return on_device[(name, device.name)]

    for node in graph.nodes:
        device = placement[node.name]
        if device is not segment_device:
            flush()
            segment_device = device
        # Stage every input before taking references: a copy-in flushes the pending segment,
        # which turns its step indices into device handles.
        for src in node.inputs:
            stage(src, device)
        refs = [input_ref(src, device) for src in node.inputs]
        segment_index[node.name] = len(segment)
        segment.append((node.op, refs))
        producer[node.name] = (device, device.domain)
    flush()
    outputs = {}
    finish = 0.0
    for name in graph.outputs:
        arr, ready = host_value(name, producer[name][1])
        outputs[name] = arr
        finish = max(finish, ready)
    return GraphRun(outputs, crossings, transfers, finish)
