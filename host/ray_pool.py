"""Devices on a Ray cluster: each one a Ray actor hosting a tessera device, used through a proxy.

::

    devices = ray_devices(["fpga:emu0", "fpga:emu1", "cpu"], address="10.0.0.5:6379")
    with Session("m3vit-tiny", devices=devices) as session:
        logits = session.run(images, task=0)

A :class:`DeviceActor` builds one device from a spec (:func:`~tessera.host.session.make_device`)
on whichever node Ray places it, and runs the device's backend hooks there: conversion to and
from device data, and op execution. :class:`RayDevice` is a :class:`~tessera.host.device.Device`
whose hooks forward to that actor, so the queue, the modelled timeline and the errors of the base
class are the local ones, and :func:`~tessera.host.graph.run_graph`,
:class:`~tessera.host.pool.DevicePool` and :class:`~tessera.host.session.Session` use it as any
other device. Results are those of the remote device, bit for bit.

Device data stays in the actor (a buffer is a handle; it is freed there when the proxy's buffer is
garbage-collected); only copies in and out move arrays. An op is shipped to an actor once (with
cloudpickle, so ops holding lambdas travel too) and cached there while the caller keeps it:
ops are assumed not to change after their first run. A dead actor, a lost node or a timeout is a
:class:`~tessera.host.device.DeviceError` naming the proxy, which is what fail-over acts on.

Ray is an optional dependency: ``pip install 'tessera[ray]'``.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.host.device import Device, DeviceError, LinkModel, Op

__all__ = ["DeviceActor", "RayDevice", "RemoteArray", "connect", "ray_devices"]

_INSTALL = "pip install 'tessera[ray]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"Ray devices need the optional Ray package: {_INSTALL}") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` of a cluster address (``ray://host:port`` for Ray Client)."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"bad Ray address {address!r}: use 'host:port' (the head node's GCS port, 6379 by "
            "default), 'ray://host:port', 'auto' or 'local'"
        )
    return host, int(port)


def connect(address: str | None = None, *, connect_timeout: float = 5.0) -> None:
    """Connect this process to Ray, unless it is connected already.

    Parameters
    ----------
    address : str, optional
        ``"host:port"`` or ``"ray://host:port"`` of a running cluster, ``"auto"`` (the cluster
        started on this machine with ``ray start``) or ``"local"`` (a new single-node cluster).
        Default: what ``ray.init()`` does (``RAY_ADDRESS`` if set, else a new local cluster).
    connect_timeout : float
        Seconds to wait for the cluster's port to accept a connection; Ray itself would retry
        an unreachable address for minutes.

    Raises
    ------
    ImportError
        If Ray is not installed.
    ValueError
        For a malformed or unreachable address.

    Notes
    -----
    A process connected already keeps its connection (``ray.shutdown()`` first to change it).
    """
    ray = _ray()
    explicit = address not in (None, "auto", "local")
    if explicit:
        assert address is not None
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=connect_timeout).close()
        except OSError as exc:
            raise ValueError(
                f"cannot reach a Ray cluster at {address!r} ({exc}): start one with "
                "'ray start --head' and pass its address, or pass address='local'"
            ) from None
    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False if address == "local" else None)


@dataclass(frozen=True, eq=False)
class RemoteArray:
    """A proxy's handle on data that lives in a :class:`DeviceActor`.

    Attributes
    ----------
    handle : int
        Key of the data in the actor.
    shape : tuple of int
        Shape of the device-side object.
    dtype : str
        Its element type.
    nbytes : int
        Its size in bytes.
    """

    handle: int
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


class DeviceActor:
    """One tessera device on a Ray worker (wrap with ``ray.remote``; :class:`RayDevice` does).

    The device's own queue is not used: the proxy's queue orders the work and the actor runs one
    call at a time. Device data is kept here by handle.

    Parameters
    ----------
    spec : str
        Device spec for :func:`~tessera.host.session.make_device` (``"fpga:emu"``, ``"cpu"``,
        ``"cuda"``...).
    clock_mhz : float
        FPGA engine clock.
    link : LinkModel, optional
        Host link of the device (default: the device's own).
    """

    def __init__(self, spec: str, clock_mhz: float, link: LinkModel | None) -> None:
        from tessera.host.session import make_device

        self._error: Exception | None = None
        try:
            self.device = make_device(spec, clock_mhz=clock_mhz, link=link)
        except Exception as exc:  # reported by describe(), so the caller sees the real cause
            self._error = exc
        self._data: dict[int, Any] = {}
        self._ops: dict[int, Op] = {}
        self._next = 0

    def describe(self) -> dict[str, Any]:
        """The device's info, link and domain, and where it runs (raises if it failed to build)."""
        if self._error is not None:
            raise self._error
        import ray

        return {
            "info": self.device.info,
            "name": self.device.name,
            "link": self.device.link,
            "domain": self.device.domain,
            "node": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }

    def _keep(self, data: Any) -> tuple[int, tuple[int, ...], str, int]:
        handle = self._next
        self._next += 1
        self._data[handle] = data
        return handle, tuple(data.shape), str(data.dtype), self.device._nbytes(data)

    def _drop(self, released: tuple[Sequence[int], Sequence[int]]) -> None:
        handles, keys = released
        for h in handles:
            self._data.pop(h, None)
        for k in keys:
            self._ops.pop(k, None)

    def to_device(
        self, array: npt.NDArray[Any], released: tuple[Sequence[int], Sequence[int]]
    ) -> tuple[int, tuple[int, ...], str, int]:
        """Convert a host array to device data; return its handle, shape, dtype and size.

        Every call also takes ``released``: ``(handles, op keys)`` the proxy no longer uses.
        """
        self._drop(released)
        return self._keep(_plain_errors(self.device._to_device, array))

    def to_host(
        self, handle: int, released: tuple[Sequence[int], Sequence[int]]
    ) -> npt.NDArray[Any]:
        """The data of ``handle`` as a host array."""
        self._drop(released)
        return _plain_errors(self.device._to_host, self._data[handle])

    def execute(
        self,
        key: int | None,
        op: Op | None,
        handles: Sequence[int],
        released: tuple[Sequence[int], Sequence[int]],
    ) -> tuple[tuple[int, tuple[int, ...], str, int], float]:
        """Run an op on device data: the output's handle description and modelled seconds.

        ``op`` is sent with the first call for ``key`` and cached; later calls send ``None``
        (``key`` ``None``: run ``op`` without caching it).
        """
        self._drop(released)
        if op is not None and key is not None:
            self._ops[key] = op  # cached before it runs, so a failing op is not sent again
        run = op if op is not None else self._ops[key]  # type: ignore[index]
        data, seconds = _plain_errors(self.device._execute, run, [self._data[h] for h in handles])
        return self._keep(data), float(seconds)

    def resident(self, released: tuple[Sequence[int], Sequence[int]]) -> tuple[int, int]:
        """Buffers and ops held (to check that nothing leaks)."""
        self._drop(released)
        return len(self._data), len(self._ops)


def _plain_errors(fn: Any, *args: Any) -> Any:
    # Ray returns an error to the caller by pickling it. One that does not survive the trip
    # (DeviceError: its __init__ takes two arguments) would arrive as an opaque
    # UnserializableException; send its type and message as a RuntimeError instead.
    try:
        return fn(*args)
    except Exception as exc:
        from ray import cloudpickle

        try:
            cloudpickle.loads(cloudpickle.dumps(exc))
        except Exception:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


@lru_cache(maxsize=1)
def _remote_actor_class() -> Any:
    return _ray().remote(DeviceActor)


def _start_actor(
    spec: str, clock_mhz: float, link: LinkModel | None, num_cpus: float, num_gpus: float | None
) -> Any:
    if not num_cpus >= 0 or (num_gpus is not None and not num_gpus >= 0):
        raise ValueError(f"num_cpus and num_gpus must be >= 0, got {num_cpus} and {num_gpus}")
    if num_gpus is None:  # a torch GPU spec gets a GPU of its node
        name = spec.strip().lower()
        num_gpus = 1 if name in ("gpu", "cuda") or name.startswith("cuda:") else 0
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    return _remote_actor_class().options(**options).remote(spec, clock_mhz, link)


class RayDevice(Device):
    """A device hosted by a :class:`DeviceActor` on a Ray cluster.

    Parameters
    ----------
    spec : str
        Spec of the remote device (see :func:`~tessera.host.session.make_device`).
    name : str, optional
        Name of this device (default ``"ray:"`` + the remote device's name); unique in a pool.
    clock_mhz : float
        FPGA engine clock of ``fpga:emu`` specs.
    link : LinkModel, optional
        Host link of the remote device (default: the device's own).
    timeout : float, optional
        Seconds (wall) one call to the actor may take before the device counts as failed.
    num_cpus : float
        CPUs the actor holds on its node (Ray places actors by these; fractions allowed).
    num_gpus : float, optional
        GPUs the actor holds (default 1 for ``cuda`` / ``gpu`` specs, else 0).
    start_timeout : float
        Seconds to wait for the actor to start (it waits for a node with the resources).
    actor : ActorHandle, optional
        A ``DeviceActor`` already started for ``spec`` (what :func:`ray_devices` passes, to
        start several at once); it must not be shared with another proxy.

    Raises
    ------
    ImportError
        If Ray is not installed.
    ValueError
        If the remote side rejects ``spec``.
    DeviceError
        If the actor does not start.

    Notes
    -----
    This process must be connected to Ray (:func:`connect`); if it is not, a local cluster is
    started.
    """

    kind = "ray"

    def __init__(
        self,
        spec: str,
        *,
        name: str | None = None,
        clock_mhz: float = 300.0,
        link: LinkModel | None = None,
        timeout: float | None = None,
        num_cpus: float = 1.0,
        num_gpus: float | None = None,
        start_timeout: float = 120.0,
        actor: Any = None,
    ) -> None:
        ray = _ray()
        if spec.strip().lower().startswith("ray:"):
            raise ValueError(f"spec {spec!r} names a Ray device inside a Ray device: drop 'ray:'")
        if actor is None:
            connect()
            actor = _start_actor(spec, clock_mhz, link, num_cpus, num_gpus)
        label = name or f"ray:{spec}"
        try:
            remote = ray.get(actor.describe.remote(), timeout=start_timeout)
        except Exception as exc:
            ray.kill(actor)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ValueError):  # a spec the remote make_device rejects
                raise ValueError(str(cause)) from None
            if isinstance(exc, ray.exceptions.GetTimeoutError):
                raise DeviceError(
                    label,
                    f"its Ray actor did not start within {start_timeout} s: does the cluster have "
                    f"a node with the resources it needs (num_cpus={num_cpus}, "
                    f"num_gpus={num_gpus})?",
                ) from None
            raise DeviceError(label, f"its Ray actor did not start: {cause or exc}") from exc
        try:
            super().__init__(
                name or f"ray:{remote['name']}", remote["link"], remote["domain"], timeout=timeout
            )
        except ValueError:
            ray.kill(actor)
            raise
        self.remote_info: dict[str, Any] = {**remote["info"], "node": remote["node"]}
        self.remote_info["pid"] = remote["pid"]
        self._actor = actor
        self._alive = True
        self._op_keys: weakref.WeakKeyDictionary[Op, int] = weakref.WeakKeyDictionary()
        self._op_lock = threading.Lock()
        self._next_key = 0
        # Filled by finalizers (SimpleQueue.put is safe to call from them, in any thread).
        self._freed_handles: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._freed_ops: queue.SimpleQueue[int] = queue.SimpleQueue()

    @property
    def actor(self) -> Any:
        """The Ray actor handle (to supervise or kill the remote device)."""
        return self._actor

    def resident(self) -> tuple[int, int]:
        """Buffers and ops the actor holds for this device (what the proxy released dropped)."""
        return self._call(self._actor.resident.remote(self._released()), "resident")

    # --- backend hooks: each is one call to the actor ------------------------------------------
    def _call(self, ref: Any, what: str) -> Any:
        ray = _ray()
        try:
            return ray.get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            raise DeviceError(
                self.name, f"{what}: no answer from its actor within {self.timeout} s"
            ) from None
        except ray.exceptions.RayTaskError as exc:
            # The remote device's own error, as the local device would raise it.
            raise exc.cause if isinstance(exc.cause, Exception) else exc from None
        except ray.exceptions.RayError as exc:  # actor died, node or object lost
            self._alive = False
            reason = [line for line in str(exc).splitlines() if line.strip()]
            raise DeviceError(
                self.name, f"{what}: its Ray actor is gone ({reason[-1] if reason else exc})"
            ) from exc

    def _wrap(self, meta: tuple[int, tuple[int, ...], str, int]) -> RemoteArray:
        data = RemoteArray(*meta)
        weakref.finalize(data, self._freed_handles.put, data.handle).atexit = False
        return data

    def _released(self) -> tuple[list[int], list[int]]:
        # What the proxy dropped since the last call rides on the next one: no extra round trip.
        return _drain(self._freed_handles), _drain(self._freed_ops)

    def _op_key(self, op: Op) -> tuple[int | None, bool]:
        """``(key, first)``: the op's cache key on the actor and whether to ship it now."""
        try:
            with self._op_lock:
                key = self._op_keys.get(op)
                if key is not None:
                    return key, False
                key = self._op_keys[op] = self._next_key
                self._next_key += 1
        except TypeError:  # an op that cannot be weakly referenced: shipped every time
            return None, True
        weakref.finalize(op, self._freed_ops.put, key).atexit = False
        return key, True

    def _to_device(self, array: npt.NDArray[Any]) -> RemoteArray:
        ref = self._actor.to_device.remote(array, self._released())
        return self._wrap(self._call(ref, "copy in"))

    def _to_host(self, data: Any) -> npt.NDArray[Any]:
        out = self._call(self._actor.to_host.remote(data.handle, self._released()), "copy out")
        # Ray hands back read-only views of its object store; a device returns owned arrays.
        return out if out.flags.writeable else np.array(out, copy=True)

    def _execute(self, op: Op, inputs: Sequence[Any]) -> tuple[Any, float]:
        key, first = self._op_key(op)
        handles = [d.handle for d in inputs]
        try:
            ref = self._actor.execute.remote(key, op if first else None, handles, self._released())
            meta, seconds = self._call(ref, op.name)
        except BaseException:
            if first and key is not None:  # it may not have arrived: ship it again next time
                with self._op_lock:
                    self._op_keys.pop(op, None)
            raise
        return self._wrap(meta), seconds

    # --- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued work, then end the actor."""
        super().close()
        if self._alive:
            self._alive = False
            try:
                _ray().kill(self._actor)
            except Exception:  # already gone or Ray shut down
                pass

    @property
    def info(self) -> dict[str, Any]:
        """The hosted device's info (``torch_device``, ``clock_mhz``..., its ``node`` and ``pid``)
        with this proxy's name, kind, domain and link; ``remote_name`` and ``remote_kind`` are the
        hosted device's own."""
        # Flat, so that code comparing devices by their info (a session's twin detection by
        # torch_device) tells a remote CPU from a remote FPGA.
        info = {**self.remote_info, **super().info}
        info.update(remote_name=self.remote_info["name"], remote_kind=self.remote_info["kind"])
        return info


def _drain(items: queue.SimpleQueue[int]) -> list[int]:
    out = []
    while True:
        try:
            out.append(items.get_nowait())
        except queue.Empty:
            return out


def ray_devices(
    specs: Sequence[str],
    address: str | None = None,
    *,
    clock_mhz: float = 300.0,
    link: LinkModel | None = None,
    timeout: float | None = None,
    num_cpus: float = 1.0,
    start_timeout: float = 120.0,
) -> list[RayDevice]:
    """Connect to Ray and start one remote device per spec (all at once).

    Parameters
    ----------
    specs : sequence of str
        Device specs (see :func:`~tessera.host.session.make_device`); the remote devices' names
        must be unique (``fpga:emu0``, ``fpga:emu1``...).
    address : str, optional
        Cluster address (see :func:`connect`).
    clock_mhz, link, timeout, num_cpus, start_timeout
        As for :class:`RayDevice` (GPUs: one per ``cuda`` / ``gpu`` spec).

    Returns
    -------
    list of RayDevice

    Raises
    ------
    ImportError
        If Ray is not installed.
    ValueError
        For no specs, a bad address or a spec the remote side rejects.
    """
    if not specs:
        raise ValueError("ray_devices needs at least one device spec, e.g. ['fpga:emu']")
    connect(address)
    actors = [_start_actor(s, clock_mhz, link, num_cpus, None) for s in specs]
    devices: list[RayDevice] = []
    try:
        for spec, actor in zip(specs, actors, strict=True):
            devices.append(
                RayDevice(
                    spec,
                    clock_mhz=clock_mhz,
                    link=link,
                    timeout=timeout,
                    num_cpus=num_cpus,
                    start_timeout=start_timeout,
                    actor=actor,
                )
            )
    except BaseException:
        for d in devices:
            d.close()
        for actor in actors[len(devices) :]:
            _ray().kill(actor)
        raise
    return devices
