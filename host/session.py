"""``Session``: run a model over a mix of devices, placed by the cost model, with fail-over.

::

    session = Session("m3vit-tiny", devices=["cuda", "fpga:emu"])
    logits = session.run(images, task=0)
    print(session.report())

The model is the built-in M³ViT (by name, or a :class:`~tessera.models.m3vit_quant.QuantM3ViT`)
or any :class:`GraphModel`, such as a plain torch module imported with
:func:`~tessera.host.torch_import.import_torch` (``Session(import_torch(mlp, x), ["cpu",
"fpga:emu"]).run(x)``; single-task models need no task). A session asks the model for its op
graph per task (:func:`~tessera.host.m3vit.m3vit_graph` for the M³ViT) and to validate inputs,
measures each op's cost on each device kind once per (task, batch size) — modelled FPGA time from
the cycle models, measured time on torch devices — and lets the planner
(:func:`~tessera.host.partition.place`) choose where each op runs, weights staying resident on
their device. If a device fails during a run (its op raises, it exceeds the timeout, its worker
dies), it is taken out of service, the plan is redone without it and the batch is re-run: a
request's answer is returned once, from a complete run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from tessera.host.device import LINKS, Device, DeviceError, Event, LinkModel
from tessera.host.fpga import FpgaEmulator
from tessera.host.graph import Graph, run_graph, wire_bytes
from tessera.host.m3vit import m3vit_graph
from tessera.host.partition import CostGraph, CostNode, place
from tessera.host.torch_device import TorchDevice
from tessera.models.m3vit_quant import QuantM3ViT

__all__ = ["MODELS", "GraphModel", "Plan", "Session", "make_device"]

#: Built-in models a session can load by name.
MODELS = ("m3vit-tiny",)


def make_device(
    spec: str | Device,
    *,
    clock_mhz: float = 300.0,
    link: LinkModel | None = None,
    timeout: float | None = None,
) -> Device:
    """A device from a spec: ``cpu``, ``cuda``, ``cuda:N``, ``gpu`` or ``fpga:emu[N]``; any of
    them prefixed ``ray:`` runs in a Ray actor (:class:`~tessera.host.ray_pool.RayDevice`).

    Raises
    ------
    ValueError
        For an unknown spec, naming the accepted ones.
    """
    if isinstance(spec, Device):
        return spec
    name = spec.strip().lower()
    if name.startswith("ray:"):
        from tessera.host.ray_pool import RayDevice

        return RayDevice(name[4:], clock_mhz=clock_mhz, link=link, timeout=timeout)
    if name.startswith("fpga:emu") or name == "fpga":
        return FpgaEmulator(
            "fpga:emu" if name == "fpga" else name, clock_mhz=clock_mhz, link=link, timeout=timeout
        )
    if name in ("cpu", "gpu", "cuda") or name.startswith("cuda:"):
        return TorchDevice(name, timeout=timeout)
    raise ValueError(
        f"unknown device {spec!r}: use cpu, cuda, cuda:N, gpu or fpga:emu[N] (ray:SPEC on Ray)"
    )


@runtime_checkable
class GraphModel(Protocol):
    """What a session runs: an op graph per task, its input and output, and input validation.

    Attributes
    ----------
    num_tasks : int
        Tasks (graphs) the model has; a session's ``task`` is in ``[0, num_tasks)``.
    input_name, output_name : str
        The graph input fed with the batch, and the op whose output is the result.
    """

    num_tasks: int
    input_name: str
    output_name: str

    def graph(self, task: int) -> Graph:
        """The op graph of ``task``; every op has ``out_shape(batch)``."""
        ...

    def check_input(self, x: Any) -> npt.NDArray[np.float32]:
        """``x`` as a float32 batch, or ``ValueError`` saying what shape it needs."""
        ...


@dataclass(eq=False)
class _M3ViTModel:
    """The integer M³ViT as a :class:`GraphModel`: input ``images``, output ``head``."""

    qmodel: QuantM3ViT
    input_name: str = "images"
    output_name: str = "head"

    @property
    def num_tasks(self) -> int:
        return self.qmodel.cfg.num_tasks

    def graph(self, task: int) -> Graph:
        return m3vit_graph(self.qmodel, task)

    def check_input(self, images: Any) -> npt.NDArray[np.float32]:
        feed = _as_numpy(images)
        cfg = self.qmodel.cfg
        expected = (cfg.channels, cfg.image_height, cfg.image_width)
        if feed.ndim != 4 or feed.shape[1:] != expected or len(feed) == 0:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, expected))}) with batch "
                f">= 1, got {feed.shape}"
            )
        return feed


@dataclass
class Plan:
    """Where each op of one (task, batch size) runs, and what the cost model predicts.

    Attributes
    ----------
    task, batch : int
        What the plan is for.
    placement : dict
        Op name -> device name.
    predicted_seconds : float
        Modelled makespan of one batch (the planner's objective).
    costs : dict
        Op name -> device name -> modelled seconds.
    """

    task: int
    batch: int
    placement: dict[str, str]
    predicted_seconds: float
    costs: dict[str, dict[str, float]]


@dataclass
class _Stats:
    runs: int = 0
    images: int = 0
    wall_seconds: float = 0.0
    modelled_seconds: float = 0.0
    retries: int = 0
    crossings: int = 0
    transfers: int = 0
    failed: dict[str, str] = field(default_factory=dict)


class Session:
    """A model on a pool of devices.

    Parameters
    ----------
    model : str, QuantM3ViT or GraphModel
        ``"m3vit-tiny"`` (the shipped weights, quantized with ``preset``), an integer network,
        or another graph model such as an :class:`~tessera.host.torch_import.ImportedModel`.
    devices : sequence of str or Device
        Device specs (see :func:`make_device`) or devices; names must be unique.
    preset : str
        Quantization preset when ``model`` is a name.
    clock_mhz : float
        FPGA engine clock for ``fpga:emu`` specs.
    link : str or LinkModel, optional
        Host link of the FPGA devices (a name of :data:`~tessera.host.device.LINKS`).
    timeout : float, optional
        Seconds one op may take before its device counts as failed.
    calibration : int
        Training images used to quantize a named model.

    Attributes
    ----------
    model : GraphModel
        What runs.
    qmodel : QuantM3ViT or None
        The integer M³ViT (``None`` for other models).
    """

    def __init__(
        self,
        model: str | QuantM3ViT | GraphModel = "m3vit-tiny",
        devices: Sequence[str | Device] = ("cpu", "fpga:emu"),
        *,
        preset: str = "int8",
        clock_mhz: float = 300.0,
        link: str | LinkModel | None = None,
        timeout: float | None = None,
        calibration: int = 256,
    ) -> None:
        if isinstance(link, str):
            if link not in LINKS:
                raise ValueError(f"unknown link {link!r}: use one of {', '.join(LINKS)}")
            link = LINKS[link]
        if not devices:
            raise ValueError("a session needs at least one device")
        self.devices = [
            make_device(d, clock_mhz=clock_mhz, link=link, timeout=timeout) for d in devices
        ]
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique, got {names}")
        self.qmodel: QuantM3ViT | None = None
        if isinstance(model, str | QuantM3ViT):
            self.qmodel = _load_model(model, preset, calibration)
            self.model: GraphModel = _M3ViTModel(self.qmodel)
        elif isinstance(model, GraphModel):
            self.model = model
        else:
            raise ValueError(
                f"model must be a built-in model's name, a QuantM3ViT or an imported model "
                f"(tessera.host.torch_import.import_torch), got {type(model).__name__}"
            )
        self._graphs: dict[int, Graph] = {}
        self._plans: dict[tuple[int, int], Plan] = {}
        self._healthy = set(names)
        self._lock = threading.RLock()
        self.stats = _Stats()

    # --- planning ---------------------------------------------------------------------------
    def graph(self, task: int) -> Graph:
        """The op graph of task ``task`` (built once)."""
        with self._lock:
            if task not in self._graphs:
                self._graphs[task] = self.model.graph(task)
            return self._graphs[task]

    @property
    def healthy(self) -> list[Device]:
        """Devices still in service."""
        with self._lock:
            return [d for d in self.devices if d.name in self._healthy]

    def plan(self, task: int, images: npt.ArrayLike | torch.Tensor) -> Plan:
        """The placement for ``task`` at the batch size of ``images`` (measured on them)."""
        batch = len(images)
        with self._lock:
            key = (task, batch)
            plan = self._plans.get(key)
            if plan is not None and set(plan.placement.values()) <= self._healthy:
                return plan
            plan = self._make_plan(task, _as_numpy(images))
            self._plans[key] = plan
            return plan

    def _profile(self, graph: Graph, feed: npt.NDArray[Any]) -> dict[str, dict[str, float]]:
        # Integer devices: cycles of every op on the batch's own integer activations. Torch
        # devices: the measured time of a warm run with every op on that device.
        costs: dict[str, dict[str, float]] = {n.name: {} for n in graph.nodes}
        fpgas = [d for d in self.healthy if isinstance(d, FpgaEmulator)]
        if fpgas:
            name = self.model.input_name
            values: dict[str, Any] = {name: graph.formats[name].quantize(feed)}  # type: ignore[union-attr]
            for node in graph.nodes:
                args = [values[s] for s in node.inputs]
                cycles = node.op.fpga_cycles(*args)
                values[node.name] = node.op.run_int(*args)
                for dev in fpgas:
                    costs[node.name][dev.name] = cycles / dev.clock_hz
        for dev in self.healthy:
            if isinstance(dev, FpgaEmulator):
                continue
            twin = next((d for d in self.healthy if _same_kind(d, dev) and d is not dev), None)
            if twin is not None and all(twin.name in c for c in costs.values()):
                for c in costs.values():
                    c[dev.name] = c[twin.name]
                continue
            placement = {n.name: dev for n in graph.nodes}
            with dev.scratch_timeline():
                for _ in range(2):  # the first run warms caches and copies weights there
                    dev.reset_timeline()
                    run_graph(graph, placement, {self.model.input_name: feed})
                for event in dev.events:
                    if event.kind == "run":
                        costs[event.label][dev.name] = event.end - event.start
        return costs

    def _make_plan(self, task: int, feed: npt.NDArray[Any]) -> Plan:
        graph = self.graph(task)
        healthy = self.healthy
        if not healthy:
            raise DeviceError("session", f"no device left: {self.stats.failed}")
        costs = self._profile(graph, feed)
        batch = len(feed)
        nodes = []
        shapes = _value_shapes(graph, feed)
        source = self.model.input_name
        for node in graph.nodes:
            fmt = graph.formats[node.name]
            shape = shapes[node.name]
            out = {
                d.name: (wire_bytes(shape, fmt) if d.domain == "int" else 4 * int(np.prod(shape)))
                for d in healthy
            }
            in_bytes: dict[str, int] | int = 0
            if source in node.inputs:
                in_fmt = graph.formats[source]
                in_bytes = {
                    d.name: wire_bytes(feed.shape, in_fmt) if d.domain == "int" else feed.nbytes
                    for d in healthy
                }
            nodes.append(
                CostNode(
                    node.name,
                    tuple(s for s in node.inputs if s != source),
                    costs[node.name],
                    out,
                    in_bytes,
                )
            )
        cost_graph = CostGraph(nodes, {d.name: d.link for d in healthy})
        placement, predicted = place(cost_graph)
        return Plan(task, batch, placement, predicted, costs)

    # --- running ----------------------------------------------------------------------------
    def run(
        self, images: npt.ArrayLike | torch.Tensor, task: int | None = None
    ) -> npt.NDArray[np.float32]:
        """The model's float output for the batch ``images`` (for the M³ViT: logits ``(batch,
        classes)`` of task ``task``; ``task`` may be left out for a single-task model).

        FPGA-side ops are bit-exact with the integer network; ops on torch devices run in float,
        so the logits are within a measured tolerance of the float network (exactly the integer
        network's, dequantized, when every op is on an FPGA device).

        Raises
        ------
        ValueError
            Bad images or task.
        DeviceError
            When every device has failed.
        """
        tasks = self.model.num_tasks
        if task is None:
            if tasks != 1:
                raise ValueError(f"this model has {tasks} tasks: give task in [0, {tasks - 1}]")
            task = 0
        if not 0 <= task < tasks:
            raise ValueError(f"task must be in [0, {tasks - 1}], got {task}")
        feed = self.model.check_input(images)
        start = time.perf_counter()
        while True:
            plan = self.plan(task, feed)
            devices = {d.name: d for d in self.devices}
            placement = {op: devices[name] for op, name in plan.placement.items()}
            t0 = max(d.busy_until for d in set(placement.values()))
            try:
                result = run_graph(self.graph(task), placement, {self.model.input_name: feed})
            except DeviceError as exc:
                self._fail(exc.device, str(exc))
                continue
            break
        head = result.outputs[self.model.output_name]
        if head.dtype.kind in "iu":
            head = self.graph(task).formats[self.model.output_name].dequantize(head)  # type: ignore[union-attr]
        with self._lock:
            self.stats.runs += 1
            self.stats.images += len(feed)
            self.stats.wall_seconds += time.perf_counter() - start
            self.stats.modelled_seconds += max(0.0, result.finish - t0)
            self.stats.crossings += result.crossings
            self.stats.transfers += result.transfers
        return np.asarray(head, dtype=np.float32)

    def _fail(self, device: str, reason: str) -> None:
        with self._lock:
            if device not in self._healthy:
                raise DeviceError(device, f"failed again after it was taken out: {reason}")
            self._healthy.discard(device)
            self.stats.failed[device] = reason
            self.stats.retries += 1
            if not self._healthy:
                raise DeviceError(device, f"the last device failed: {reason}")

    def run_batches(
        self,
        batches: Iterable[npt.ArrayLike | torch.Tensor],
        task: int | None = None,
        *,
        progress: bool = False,
        total: int | None = None,
    ) -> list[npt.NDArray[np.float32]]:
        """:meth:`run` on each batch in turn (with a tqdm progress bar if ``progress``)."""
        items: Iterable[Any] = batches
        if progress:
            from tqdm import tqdm

            desc = None if task is None else f"task {task}"
            items = tqdm(batches, total=total, unit="batch", desc=desc)
        return [self.run(b, task) for b in items]

    # --- reporting --------------------------------------------------------------------------
    def timeline(self) -> list[Event]:
        """Every device's modelled events, in start order."""
        return sorted((e for d in self.devices for e in d.events), key=lambda e: e.start)

    def report(self) -> dict[str, Any]:
        """Devices, plans, throughput, modelled time per device and fail-overs (JSON-able)."""
        busy: dict[str, dict[str, float]] = {}
        for d in self.devices:
            per_kind: dict[str, float] = {}
            for e in d.events:
                per_kind[e.kind] = per_kind.get(e.kind, 0.0) + (e.end - e.start)
            busy[d.name] = per_kind
        s = self.stats
        return {
            "devices": [d.info for d in self.devices],
            "healthy": [d.name for d in self.healthy],
            "failed": dict(s.failed),
            "plans": [
                {
                    "task": p.task,
                    "batch": p.batch,
                    "predicted_seconds": p.predicted_seconds,
                    "placement": p.placement,
                    "ops_per_device": dict(Counter(p.placement.values())),
                }
                for p in self._plans.values()
            ],
            "runs": s.runs,
            "images": s.images,
            "wall_seconds": s.wall_seconds,
            "modelled_seconds": s.modelled_seconds,
            "modelled_images_per_second": s.images / s.modelled_seconds
            if s.modelled_seconds
            else None,
            "retries": s.retries,
            "crossings": s.crossings,
            "transfers": s.transfers,
            "busy_seconds": busy,
        }

    def close(self) -> None:
        """Release the devices' queues."""
        for d in self.devices:
            d.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KIND_KEYS = ("kind", "domain", "link", "torch_device", "clock_mhz", "mode")


def _same_kind(a: Device, b: Device) -> bool:
    # Twins share measured costs: same class and the same hardware (remote devices included).
    ia, ib = a.info, b.info
    return type(a) is type(b) and all(ia.get(k) == ib.get(k) for k in _KIND_KEYS)


def _as_numpy(images: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float32]:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("images must be finite (no NaN or infinity)")
    return arr


def _value_shapes(graph: Graph, feed: npt.NDArray[Any]) -> dict[str, tuple[int, ...]]:
    return {n.name: n.op.out_shape(len(feed)) for n in graph.nodes}  # type: ignore[attr-defined]


def _load_model(model: str | QuantM3ViT, preset: str, calibration: int) -> QuantM3ViT:
    if isinstance(model, QuantM3ViT):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: use one of {', '.join(MODELS)}")
    from tessera.models.m3vit import digits_tasks, load_m3vit
    from tessera.models.m3vit_quant import quantize_m3vit

    float_model, cfg = load_m3vit()
    train, _ = digits_tasks()
    return quantize_m3vit(float_model, cfg, train.images[:calibration], preset)
