"""A pool of devices that serves requests exactly once, re-running work a failed device dropped.

:class:`DevicePool` hands each request to a healthy device (the one with the fewest requests in
flight) and waits for it with a deadline. When the device fails (its op raises a
:class:`~tessera.host.device.DeviceError`, its worker process dies, or the request outlives the
deadline) the device is taken out of service and the request is re-run on another device. Each
request is delivered exactly once: a late answer from a device that was declared hung is counted
and dropped, never returned twice. Many client threads may call :meth:`DevicePool.map` /
:meth:`DevicePool.submit` at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tessera.host.device import Device, DeviceError

__all__ = ["DevicePool", "NoDeviceError", "PoolStats"]

T = TypeVar("T")


class NoDeviceError(RuntimeError):
    """Every device of the pool has failed; the message lists why."""


@dataclass
class PoolStats:
    """Counters of a :class:`DevicePool`.

    Attributes
    ----------
    submitted, delivered : int
        Requests accepted and requests answered (each exactly once).
    retries : int
        Re-runs after a failure.
    late_discarded : int
        Answers that arrived from a device after its request had been given to another one.
    failed_devices : dict
        Device name -> reason it was taken out of service.
    per_device : dict
        Device name -> requests it answered.
    """

    submitted: int = 0
    delivered: int = 0
    retries: int = 0
    late_discarded: int = 0
    failed_devices: dict[str, str] = field(default_factory=dict)
    per_device: dict[str, int] = field(default_factory=dict)


class DevicePool:
    """Devices behind one exactly-once request interface with fail-over.

    Parameters
    ----------
    devices : sequence of Device
        The pool (at least one; names must be unique).
    timeout : float, optional
        Seconds one request may take on one device before that device is declared hung. The
        clock starts when the device takes the request: a device holds at most ``per_device``
        requests at once, so time spent waiting for a device never counts.
    max_inflight : int
        Requests in flight at once over the whole pool (threads that wait on devices).
    per_device : int
        Requests one device works on at once.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        timeout: float | None = None,
        max_inflight: int = 16,
        per_device: int = 1,
    ) -> None:
        if not devices:
            raise ValueError("a device pool needs at least one device")
        names = [d.name for d in devices]
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique, got {names}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.devices = list(devices)
        self.timeout = timeout
        self.stats = PoolStats(per_device=dict.fromkeys(names, 0))
        if per_device < 1:
            raise ValueError(f"per_device must be >= 1, got {per_device}")
        self.per_device = per_device
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # signalled when a device slot frees up
        self._inflight = dict.fromkeys(names, 0)
        self._healthy = set(names)
        # Attempts run on their own threads so a hung device never blocks the dispatcher.
        self._attempts = ThreadPoolExecutor(max_workers=max_inflight * 2)
        self._dispatch = ThreadPoolExecutor(max_workers=max_inflight)

    @property
    def healthy(self) -> list[Device]:
        """Devices still in service."""
        with self._lock:
            return [d for d in self.devices if d.name in self._healthy]

    def _pick(self, tried: set[str], accepts: Callable[[Device], bool] | None) -> Device:
        with self._free:
            while True:
                usable = [
                    d
                    for d in self.devices
                    if d.name in self._healthy and (accepts is None or accepts(d))
                ]
                if not usable:
                    reasons = "; ".join(f"{k}: {v}" for k, v in self.stats.failed_devices.items())
                    raise NoDeviceError(
                        f"no healthy device can take the request ({reasons or 'none'})"
                    )
                # Prefer devices this request has not failed on, then the least busy.
                free = [d for d in usable if self._inflight[d.name] < self.per_device]
                if free:
                    device = min(free, key=lambda d: (d.name in tried, self._inflight[d.name]))
                    self._inflight[device.name] += 1
                    return device
                self._free.wait()

    def _release(self, device: Device) -> None:
        with self._free:
            self._inflight[device.name] -= 1
            self._free.notify_all()

    def _fail(self, device: Device, reason: str) -> None:
        with self._free:
            self._healthy.discard(device.name)
            self.stats.failed_devices.setdefault(device.name, reason)
            self._free.notify_all()

    def _serve(
        self, fn: Callable[[Device, Any], T], item: Any, accepts: Callable[[Device], bool] | None
    ) -> T:
        tried: set[str] = set()
        while True:
            device = self._pick(tried, accepts)
            tried.add(device.name)
            attempt = self._attempts.submit(fn, device, item)
            try:
                value = attempt.result(timeout=self.timeout)
            except FutureTimeout:
                self._fail(device, f"no answer within {self.timeout} s (hung)")
                # The request moves on; if the hung device answers after all, drop that answer.
                attempt.add_done_callback(self._count_late)
            except (DeviceError, BrokenProcessPool) as exc:
                self._fail(device, str(exc) or type(exc).__name__)
            else:
                with self._lock:
                    self.stats.delivered += 1
                    self.stats.per_device[device.name] += 1
                self._release(device)
                return value
            with self._lock:
                self.stats.retries += 1
            self._release(device)

    def _count_late(self, attempt: Future) -> None:
        if not attempt.cancelled() and attempt.exception() is None:
            with self._lock:
                self.stats.late_discarded += 1

    def submit(
        self,
        fn: Callable[[Device, Any], T],
        item: Any,
        *,
        accepts: Callable[[Device], bool] | None = None,
    ) -> Future:
        """Serve one request: ``fn(device, item)`` on some healthy device, re-run on failure.

        Parameters
        ----------
        fn : callable
            The work; it may use any of the device's verbs and must be safe to re-run (it is
            called again, on another device, if the first one fails).
        item : Any
            The request's payload.
        accepts : callable, optional
            Only devices for which ``accepts(device)`` is true may serve it.

        Returns
        -------
        Future
            Resolves to ``fn``'s value, or raises :class:`NoDeviceError` when no device is left.
        """
        with self._lock:
            self.stats.submitted += 1
        return self._dispatch.submit(self._serve, fn, item, accepts)

    def map(
        self,
        fn: Callable[[Device, Any], T],
        items: Iterable[Any],
        *,
        accepts: Callable[[Device], bool] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> list[T]:
        """:meth:`submit` every item and return the answers in item order.

        ``on_done`` is called once per answered request (e.g. to advance a progress bar).
        """
        futures = [self.submit(fn, item, accepts=accepts) for item in items]
        if on_done is not None:
            for f in futures:
                f.add_done_callback(lambda _f: on_done())
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop accepting requests and wait for the ones in flight (abandoned attempts too)."""
        self._dispatch.shutdown(wait=True)
        self._attempts.shutdown(wait=True)

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
