"""One device API for the host runtime: buffers, asynchronous submission, futures, modelled time.

Every device (:class:`~tessera.host.torch_device.TorchDevice` for CUDA or CPU,
:class:`~tessera.host.fpga.FpgaEmulator` for the FPGA engines, ...) has the same five verbs, all
asynchronous (each returns a :class:`concurrent.futures.Future`) and executed in submission order
on the device's own queue (one worker thread per device, as a CUDA stream or an FPGA command queue
would):

- :meth:`Device.copy_in`: a host array into a device :class:`Buffer`;
- :meth:`Device.run`: an :class:`Op` on device buffers, into a new device buffer;
- :meth:`Device.copy_out`: a device buffer back to a host ``numpy`` array;
- :meth:`Device.alloc`: an uninitialised (zeroed) device buffer;
- :meth:`Device.synchronize`: wait until everything submitted so far has finished.

Besides wall-clock time, every device keeps a **modelled timeline**: each transfer and each op
occupies the device from ``max(device free, inputs ready)`` for the time its model gives (the link
model for transfers, the cycle model at the engine clock for FPGA ops, the measured time for torch
ops). Buffers carry the modelled time at which their data is ready, so a consumer on another device
starts only after the producer and the transfer, and transfers overlap compute on other devices.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "LINKS",
    "Buffer",
    "Device",
    "DeviceError",
    "Event",
    "LinkModel",
    "Op",
]

Domain = Literal["float", "int"]


class DeviceError(RuntimeError):
    """A device failed: its op raised, it timed out, or it went away.

    Parameters
    ----------
    device : str
        Name of the failed device.
    message : str
        What happened.
    """

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"device {device}: {message}")
        self.device = device
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Pickle by the constructor's arguments (errors cross process and Ray boundaries).
        return (type(self), (self.device, self.message))


@dataclass(frozen=True)
class LinkModel:
    """Host <-> device link: a fixed latency per transfer plus bytes over bandwidth.

    Parameters
    ----------
    name : str
        Label.
    bytes_per_second : float
        Sustained bandwidth (> 0; ``math.inf`` for memory the host shares).
    latency_seconds : float
        Fixed cost of one transfer (>= 0): descriptor set-up, doorbell, completion interrupt.
    """

    name: str
    bytes_per_second: float
    latency_seconds: float

    def __post_init__(self) -> None:
        if not self.bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be > 0, got {self.bytes_per_second}")
        if not (self.latency_seconds >= 0 and math.isfinite(self.latency_seconds)):
            raise ValueError(f"latency_seconds must be finite and >= 0, got {self.latency_seconds}")

    def transfer_seconds(self, nbytes: int) -> float:
        """Modelled time to move ``nbytes`` (0 bytes cost nothing)."""
        if nbytes <= 0:
            return 0.0
        return self.latency_seconds + nbytes / self.bytes_per_second


#: Links of common boards. Bandwidths are the usable payload rates of the standards (PCIe after
#: 128b/130b encoding; AXI HP ports as data width x clock), latencies typical DMA round trips.
LINKS: dict[str, LinkModel] = {
    "host": LinkModel("host", math.inf, 0.0),
    "pcie3x4": LinkModel("pcie3x4", 3.94e9, 2e-6),
    "pcie3x16": LinkModel("pcie3x16", 15.75e9, 2e-6),
    "pcie4x16": LinkModel("pcie4x16", 31.5e9, 2e-6),
    # Zynq-7000 HP port: 64 bit at 150 MHz; Zynq UltraScale+ HP port: 128 bit at 300 MHz.
    "zynq7-hp": LinkModel("zynq7-hp", 1.2e9, 0.5e-6),
    "zynqmp-hp": LinkModel("zynqmp-hp", 4.8e9, 0.5e-6),
}


class Op(ABC):
    """A unit of work a device can run: one layer or sub-block of a model.

    Subclasses implement the domains they support; a device runs an op in its own domain:
    torch devices call :meth:`run_float`, FPGA devices :meth:`run_int` (bit-exact golden
    arithmetic) and take their time from :meth:`fpga_cycles`.

    Attributes
    ----------
    name : str
        Unique name in its graph.
    kind : str
        What the op is (``"linear"``, ``"attention_block"``, ``"moe_block"``, ...).
    """

    name: str
    kind: str

    def run_float(self, *inputs: Any) -> Any:
        """Float result on torch tensors (the same device as the inputs)."""
        raise NotImplementedError(f"{self.kind} op {self.name!r} has no float implementation")

    def run_int(self, *inputs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Bit-exact integer result on raw quantized arrays."""
        raise NotImplementedError(f"{self.kind} op {self.name!r} has no integer implementation")

    def fpga_cycles(self, *inputs: npt.NDArray[np.int64]) -> int:
        """Engine clock cycles of :meth:`run_int` on these inputs (the validated cycle models)."""
        raise NotImplementedError(f"{self.kind} op {self.name!r} has no cycle model")

    def run_rtl(self, *inputs: npt.NDArray[np.int64], sim: str) -> tuple[Any, int]:
        """Integer result and cycles from the generated RTL under simulator ``sim``."""
        raise NotImplementedError(f"{self.kind} op {self.name!r} has no RTL implementation")

    def run_csim(self, *inputs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Integer result from the engines' HLS kernels, C-simulated (g++)."""
        raise NotImplementedError(f"{self.kind} op {self.name!r} has no HLS kernel")

    def supports(self, domain: Domain) -> bool:
        """Whether the op implements ``domain``."""
        method = {"float": "run_float", "int": "run_int"}[domain]
        return getattr(type(self), method) is not getattr(Op, method)


class FunctionOp(Op):
    """An op made of three functions, with the torch module its float form runs resident per
    device (copied to a GPU once, on first use there).

    Parameters
    ----------
    name, kind : str
        Op name and kind.
    run_int, cycles : callable
        Integer form and its engine cycles, both on raw integer inputs.
    run_float : callable
        ``run_float(module, *tensors)``: the float form with ``module`` (``None`` if none was
        given) on the tensors' device.
    out_shape : callable
        ``out_shape(batch)``: the output's shape for ``batch`` inputs.
    module : torch.nn.Module, optional
        What ``run_float`` computes with.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        run_int: Callable[..., npt.NDArray[np.int64]],
        run_float: Callable[..., Any],
        cycles: Callable[..., int],
        out_shape: Callable[[int], tuple[int, ...]],
        module: Any = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self._int = run_int
        self._float = run_float
        self._cycles = cycles
        self._shape = out_shape
        self._module = module
        self._resident: dict[str, Any] = {}

    def out_shape(self, batch: int) -> tuple[int, ...]:
        """Output shape for ``batch`` inputs."""
        return self._shape(batch)

    def run_int(self, *inputs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Bit-exact integer form on raw inputs in their values' formats."""
        return self._int(*inputs)

    def fpga_cycles(self, *inputs: npt.NDArray[np.int64]) -> int:
        """Engine cycles of :meth:`run_int` on these inputs."""
        return int(self._cycles(*inputs))

    def run_float(self, *inputs: Any) -> Any:
        """The float form on the inputs' device (the module resident there after first use)."""
        module = self._module
        if module is not None:
            device = inputs[0].device
            key = str(device)
            if key not in self._resident:
                self._resident[key] = (
                    module if device.type == "cpu" else copy.deepcopy(module).to(device)
                )
            module = self._resident[key]
        return self._float(module, *inputs)


@dataclass(eq=False)
class Buffer:
    """Data resident on a device.

    Attributes
    ----------
    device : Device
        Owner.
    data : Any
        The device-side object (a torch tensor, a numpy array).
    nbytes : int
        Size in bytes (what a transfer of it costs).
    ready_at : float
        Modelled time (seconds from the device pool's epoch) at which the data is valid.
    label : str
        What it holds, for timelines and errors.
    """

    device: Device
    data: Any
    nbytes: int
    ready_at: float
    label: str = ""


@dataclass(frozen=True)
class Event:
    """One interval of a device's modelled timeline.

    Attributes
    ----------
    device : str
        Device name.
    kind : str
        ``"copy_in"``, ``"run"`` or ``"copy_out"``.
    label : str
        Op or buffer name.
    start, end : float
        Modelled seconds from the epoch.
    wall_seconds : float
        Host wall time the work took (emulation cost, not device time).
    """

    device: str
    kind: str
    label: str
    start: float
    end: float
    wall_seconds: float


class Device(ABC):
    """Base class of every device: the asynchronous verbs, the queue and the timeline.

    Parameters
    ----------
    name : str
        Unique name, e.g. ``"cpu"``, ``"cuda:0"``, ``"fpga:emu"``.
    link : LinkModel
        The host link, used for the modelled time of :meth:`copy_in` / :meth:`copy_out`.
    domain : {"float", "int"}
        Which implementation of an :class:`Op` this device runs.
    timeout : float or None
        Seconds a single op may take (wall time) before the device is declared failed.
    """

    kind: str = "device"

    def __init__(
        self, name: str, link: LinkModel, domain: Domain, *, timeout: float | None = None
    ) -> None:
        if not name:
            raise ValueError("a device needs a non-empty name")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.name = name
        self.link = link
        self.domain: Domain = domain
        self.timeout = timeout
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tessera-{name}")
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._events: list[Event] = []
        self._closed = False

    # --- backend hooks ---------------------------------------------------------------------
    @abstractmethod
    def _to_device(self, array: npt.NDArray[Any]) -> Any:
        """Host array -> device object (runs on the device's queue)."""

    @abstractmethod
    def _to_host(self, data: Any) -> npt.NDArray[Any]:
        """Device object -> host array."""

    @abstractmethod
    def _execute(self, op: Op, inputs: Sequence[Any]) -> tuple[Any, float]:
        """Run ``op``; return the device-side result and its modelled duration in seconds."""

    def _nbytes(self, data: Any) -> int:
        return int(data.nbytes) if hasattr(data, "nbytes") else int(np.asarray(data).nbytes)

    # --- public verbs ------------------------------------------------------------------------
    def copy_in(
        self,
        array: npt.ArrayLike,
        *,
        label: str = "",
        ready_at: float = 0.0,
        nbytes: int | None = None,
    ) -> Future:
        """Copy a host array to the device.

        Parameters
        ----------
        array : array_like
            Host data.
        label : str
            Name for the timeline.
        ready_at : float
            Modelled time at which the host data exists (e.g. when another device produced it).
        nbytes : int, optional
            Bytes the transfer moves on the link (default ``array.nbytes``): the packed size when
            the host holds the data wider than the device does (int8 values in int64 arrays).

        Returns
        -------
        Future of Buffer
        """
        host = np.ascontiguousarray(array)

        def work() -> Buffer:
            data = self._to_device(host)
            size = int(host.nbytes if nbytes is None else nbytes)
            end = self._occupy("copy_in", label, ready_at, self.link.transfer_seconds(size))
            return Buffer(self, data, size, end, label)

        return self._submit(work, label)

    def copy_out(self, buffer: Buffer) -> Future:
        """Copy a device buffer back to the host; the future's result is a numpy array."""
        self._check_owner(buffer)
        return self._submit(lambda: self._copy_out(buffer)[0], buffer.label)

    def copy_out_timed(self, buffer: Buffer) -> Future:
        """As :meth:`copy_out`; the result is ``(array, t)`` with ``t`` the modelled time at
        which the host holds the data."""
        self._check_owner(buffer)
        return self._submit(lambda: self._copy_out(buffer), buffer.label)

    def _copy_out(self, buffer: Buffer) -> tuple[npt.NDArray[Any], float]:
        host = self._to_host(buffer.data)
        seconds = self.link.transfer_seconds(buffer.nbytes)
        return host, self._occupy("copy_out", buffer.label, buffer.ready_at, seconds)

    def alloc(self, shape: Sequence[int], dtype: npt.DTypeLike, *, label: str = "") -> Future:
        """A zero-filled device buffer (no transfer is modelled)."""
        zeros = np.zeros(tuple(shape), dtype=dtype)

        def work() -> Buffer:
            return Buffer(self, self._to_device(zeros), int(zeros.nbytes), 0.0, label)

        return self._submit(work, label)

    def run(self, op: Op, *inputs: Buffer) -> Future:
        """Run ``op`` on device buffers; the future's result is the output :class:`Buffer`.

        Raises
        ------
        ValueError
            At once, if the op has no implementation in this device's domain or an input lives
            on another device.
        DeviceError
            Through the future, if the op raised or exceeded the device's timeout.
        """
        self._check_step(op, inputs)
        return self._submit(lambda: self._step(op, inputs), op.name)

    def run_many(
        self, steps: Sequence[tuple[Op, Sequence[Buffer | int | Callable[[], Buffer]]]]
    ) -> Future:
        """Run several ops as one submission (one queue hand-off for the lot).

        Parameters
        ----------
        steps : sequence of (op, inputs)
            Each input is a :class:`Buffer` on this device, the index of an earlier step whose
            output it reads, or a callable returning a buffer that work submitted to this
            device *earlier* produces (so it is ready when the steps run).

        Returns
        -------
        Future of list of Buffer
            One output per step. Errors are those of :meth:`run`.
        """
        for i, (op, inputs) in enumerate(steps):
            self._check_step(op, [b for b in inputs if isinstance(b, Buffer)])
            if any(isinstance(b, int) and not 0 <= b < i for b in inputs):
                raise ValueError(f"step {i} ({op.name}) reads a step that does not precede it")

        def resolve(ref: Buffer | int | Callable[[], Buffer], outs: list[Buffer]) -> Buffer:
            if isinstance(ref, Buffer):
                return ref
            if isinstance(ref, int):
                return outs[ref]
            buf = ref()
            self._check_owner(buf)
            return buf

        def work() -> list[Buffer]:
            outs: list[Buffer] = []
            for op, inputs in steps:
                outs.append(self._step(op, [resolve(b, outs) for b in inputs]))
            return outs

        return self._submit(work, steps[0][0].name if steps else "")

    def _check_step(self, op: Op, inputs: Sequence[Buffer]) -> None:
        if not self.can_run(op):
            raise ValueError(
                f"{op.kind} op {op.name!r} has no {self.domain} implementation; place it on a "
                f"device of another domain"
            )
        for b in inputs:
            self._check_owner(b)

    def can_run(self, op: Op) -> bool:
        """Whether this device can run ``op``."""
        return op.supports(self.domain)

    def _step(self, op: Op, inputs: Sequence[Buffer]) -> Buffer:
        start_wall = time.perf_counter()
        try:
            data, seconds = self._execute(op, [b.data for b in inputs])
        except DeviceError:
            raise
        except Exception as exc:  # the op's own failure: report it as this device's
            raise DeviceError(self.name, f"{op.name} failed: {exc}") from exc
        wall = time.perf_counter() - start_wall
        if self.timeout is not None and wall > self.timeout:
            raise DeviceError(self.name, f"{op.name} took {wall:.3f} s > {self.timeout} s")
        ready = max((b.ready_at for b in inputs), default=0.0)
        end = self._occupy("run", op.name, ready, seconds, wall)
        return Buffer(self, data, self._nbytes(data), end, op.name)

    def synchronize(self, timeout: float | None = None) -> None:
        """Block until all work submitted before this call has finished."""
        self._submit(lambda: None, "synchronize").result(timeout=timeout)

    def close(self) -> None:
        """Finish queued work and release the queue; later submissions raise ``DeviceError``."""
        with self._lock:
            self._closed = True
        self._queue.shutdown(wait=True)

    # --- timeline ------------------------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        """A copy of the modelled timeline so far."""
        with self._lock:
            return list(self._events)

    @property
    def busy_until(self) -> float:
        """Modelled time at which the device's queue drains."""
        with self._lock:
            return self._free_at

    def reset_timeline(self) -> None:
        """Forget the timeline and restart modelled time at 0."""
        with self._lock:
            self._events.clear()
            self._free_at = 0.0

    @contextmanager
    def scratch_timeline(self) -> Iterator[None]:
        """Run work that must not count (profiling) on a fresh timeline, then restore this one."""
        with self._lock:
            saved, free_at = list(self._events), self._free_at
            self._events.clear()
            self._free_at = 0.0
        try:
            yield
        finally:
            with self._lock:
                self._events[:] = saved
                self._free_at = free_at

    # --- internals ---------------------------------------------------------------------------
    def _occupy(
        self, kind: str, label: str, ready: float, seconds: float, wall: float = 0.0
    ) -> float:
        with self._lock:
            start = max(self._free_at, ready)
            end = start + seconds
            self._free_at = end
            self._events.append(Event(self.name, kind, label, start, end, wall))
            return end

    def _check_owner(self, buffer: Buffer) -> None:
        if buffer.device is not self:
            raise ValueError(
                f"buffer {buffer.label!r} lives on {buffer.device.name}, not {self.name}: copy it "
                "out and in first"
            )

    def _submit(self, work: Callable[[], Any], label: str) -> Future:
        with self._lock:
            if self._closed:
                raise DeviceError(self.name, f"closed; cannot accept {label or 'work'}")
            return self._queue.submit(work)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, link={self.link.name}, domain={self.domain})"

    @property
    def info(self) -> dict[str, Any]:
        """Name, kind, domain and link, as JSON-able values."""
        return {"name": self.name, "kind": self.kind, "domain": self.domain, "link": self.link.name}
