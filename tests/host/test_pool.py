"""Fail-over and concurrency of the device pool: nothing lost, nothing delivered twice."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tessera.host.device import Op
from tessera.host.fpga import FpgaEmulator
from tessera.host.pool import DevicePool, NoDeviceError


class AddOne(Op):
    """x + 1; misbehaves on the device named in ``fail_on``."""

    kind = "add"
    name = "add_one"

    def __init__(self, fail_on: str = "", hang: float = 0.0, sleep: float = 0.0) -> None:
        self.fail_on = fail_on
        self.hang = hang
        self.sleep = sleep

    def run_int(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.sleep)
        return x + 1

    def fpga_cycles(self, x: np.ndarray) -> int:
        return int(x.size)


class Misbehaving(FpgaEmulator):
    """An emulator whose ops raise (``mode='raise'``) or hang (``mode='hang'``) after ``after``."""

    def __init__(self, name: str, behaviour: str, after: int = 0) -> None:
        super().__init__(name)
        self.behaviour = behaviour
        self.after = after
        self.calls = 0

    def _execute(self, op, inputs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > self.after:
            if self.behaviour == "raise":
                raise RuntimeError("DMA error: descriptor ring corrupt")
            time.sleep(1.0)
        return super()._execute(op, inputs)


def infer(device, item):  # type: ignore[no-untyped-def]
    idx, x = item
    buf = device.copy_in(x).result()
    out = device.run(AddOne(sleep=0.002), buf).result()
    return idx, device.copy_out(out).result()


def requests(n: int) -> list[tuple[int, np.ndarray]]:
    return [(i, np.full(4, i, dtype=np.int64)) for i in range(n)]


def check(answers: list, n: int) -> None:
    assert [a[0] for a in answers] == list(range(n))  # every request once, in order
    for i, y in answers:
        np.testing.assert_array_equal(y, np.full(4, i + 1))


def test_raise_and_hang_mid_batch_lose_nothing() -> None:
    good = FpgaEmulator("good")
    raising = Misbehaving("raising", "raise", after=3)
    hanging = Misbehaving("hanging", "hang", after=2)
    with DevicePool([raising, hanging, good], timeout=0.3) as pool:
        answers = pool.map(infer, requests(40))
        check(answers, 40)
        stats = pool.stats
        assert stats.submitted == stats.delivered == 40
        assert set(stats.failed_devices) == {"raising", "hanging"}
        assert "descriptor ring corrupt" in stats.failed_devices["raising"]
        assert "hung" in stats.failed_devices["hanging"]
        assert stats.retries >= 2
        assert sum(stats.per_device.values()) == 40
        assert [d.name for d in pool.healthy] == ["good"]
    # The hung attempt finished after it was abandoned: counted, never delivered.
    assert pool.stats.late_discarded >= 1


def test_worker_process_death_is_survived() -> None:
    victim = FpgaEmulator("victim", isolated=True)
    backup = FpgaEmulator("backup")
    pool = DevicePool([victim, backup], timeout=30)
    check(pool.map(infer, requests(4)), 4)  # starts the worker
    pid = victim.worker_pid
    assert pid is not None
    served = {"victim": 0}
    lock = threading.Lock()

    def infer_then_die(device, item):  # type: ignore[no-untyped-def]
        if device is victim:
            with lock:
                served["victim"] += 1
                if served["victim"] == 5:  # the board's process dies mid-batch
                    os.kill(pid, signal.SIGKILL)
        return infer(device, item)

    answers = pool.map(infer_then_die, requests(60))
    check(answers, 60)
    assert "worker process died" in pool.stats.failed_devices["victim"]
    assert pool.stats.delivered == 64
    pool.close()
    victim.close()


def test_all_devices_failed_is_one_clear_error() -> None:
    pool = DevicePool([Misbehaving("only", "raise")])
    with pytest.raises(NoDeviceError, match="only: device only: add_one failed: DMA error"):
        pool.map(infer, requests(2))
    pool.close()


def test_concurrent_clients_share_the_pool() -> None:
    devices = [FpgaEmulator("f0"), FpgaEmulator("f1")]
    pool = DevicePool(devices, timeout=30)
    results: dict[int, list] = {}

    def client(k: int) -> None:
        results[k] = pool.map(infer, requests(25))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(6):
        check(results[k], 25)
    assert pool.stats.delivered == 150
    assert min(pool.stats.per_device.values()) > 0  # both devices took work
    pool.close()


def test_bad_pools() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        DevicePool([])
    with pytest.raises(ValueError, match="unique"):
        DevicePool([FpgaEmulator("x"), FpgaEmulator("x")])
