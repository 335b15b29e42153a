"""Sessions: cost-model placement, exact FPGA results, fail-over, concurrent clients."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tessera.host.device import DeviceError, LinkModel
from tessera.host.fpga import FpgaEmulator
from tessera.host.session import Session, make_device


def test_fpga_only_session_is_the_integer_network(qm, images) -> None:  # type: ignore[no-untyped-def]
    with Session(qm, ["fpga:emu"]) as s:
        for task in (0, 1):
            logits = s.run(images, task)
            expected = qm.forward(images, task) * qm.logit_scale(task)
            np.testing.assert_allclose(logits, expected.astype(np.float32), rtol=1e-6)
        report = s.report()
        assert report["runs"] == 2 and report["images"] == 16
        assert report["modelled_seconds"] > 0


@pytest.mark.parametrize("clock_mhz", [300.0, 1.0])
def test_mixed_session_plans_by_cost(qm, images, clock_mhz: float) -> None:  # type: ignore[no-untyped-def]
    fpga = make_device("fpga:emu", clock_mhz=clock_mhz)
    with Session(qm, ["cpu", fpga]) as s:
        logits = s.run(images, 0)
        plan = s.plan(0, images)
        assert all(set(c) == {"cpu", "fpga:emu"} for c in plan.costs.values())
        on_cpu = [op for op, dev in plan.placement.items() if dev == "cpu"]
        with torch.no_grad():
            ref = qm.model(images, 0).numpy()
        if not on_cpu:  # the whole network on the FPGA: exactly the integer network
            expected = qm.forward(images, 0) * qm.logit_scale(0)
            np.testing.assert_allclose(logits, expected.astype(np.float32), rtol=1e-6)
        if clock_mhz < 2:  # a 1 MHz FPGA loses to the CPU on the big stages
            assert any(op.endswith(".attn") for op in on_cpu)
        # Against the float network: measured 6.7 % mean error on these 8 images, 2.4 % on 64;
        # the integer network's own error dominates.
        assert (logits.argmax(-1) == ref.argmax(-1)).mean() >= 0.875
        assert np.abs(logits - ref).mean() <= 0.1 * np.abs(ref).mean()


def test_prediction_equals_the_modelled_run(qm, images) -> None:  # type: ignore[no-untyped-def]
    # Two FPGAs with different clocks and links: every cost is modelled, so the planner's
    # makespan must be exactly what the devices' timelines show.
    fast = FpgaEmulator("fpga:fast", clock_mhz=300, link=LinkModel("x16", 16e9, 1e-7))
    slow = FpgaEmulator("fpga:slow", clock_mhz=200, link=LinkModel("x8", 8e9, 1e-7))
    with Session(qm, [fast, slow]) as s:
        s.run(images, 1)
        plan = s.plan(1, images)
        assert len(set(plan.placement.values())) == 2  # experts run on both at once
        assert s.report()["modelled_seconds"] == pytest.approx(plan.predicted_seconds, rel=1e-9)


class FailingFpga(FpgaEmulator):
    def __init__(self, name: str, after: int) -> None:
        super().__init__(name)
        self.after = after
        self.calls = 0

    def _execute(self, op, inputs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("PCIe link down")
        return super()._execute(op, inputs)


def test_device_failure_mid_batch_is_rerun_elsewhere(qm, images) -> None:  # type: ignore[no-untyped-def]
    bad = FailingFpga("fpga:bad", after=5)
    with Session(qm, [bad, "fpga:emu1"]) as s:
        logits = s.run(images, 0)
        np.testing.assert_allclose(
            logits, (qm.forward(images, 0) * qm.logit_scale(0)).astype(np.float32), rtol=1e-6
        )
        assert "PCIe link down" in s.stats.failed["fpga:bad"]
        assert s.stats.retries == 1 and s.stats.runs == 1
        assert [d.name for d in s.healthy] == ["fpga:emu1"]
        s.run(images, 0)  # later runs are planned without the failed device
        assert bad.calls == 6


def test_concurrent_clients(qm, images) -> None:  # type: ignore[no-untyped-def]
    with Session(qm, ["cpu", "fpga:emu"]) as s:
        expected = s.run(images, 1)
        out: dict[int, list] = {}

        def client(k: int) -> None:
            out[k] = [s.run(images, 1) for _ in range(3)]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(4):
            for logits in out[k]:
                np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        assert s.stats.runs == 13


def test_bad_input(qm, images) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        make_device("tpu")
    with pytest.raises(ValueError, match="unknown model"):
        Session("resnet50", ["cpu"])
    with pytest.raises(ValueError, match="unique"):
        Session(qm, ["fpga:emu", "fpga:emu"])
    with Session(qm, ["fpga:emu"]) as s:
        with pytest.raises(ValueError, match="task must be in"):
            s.run(images, 5)
        with pytest.raises(ValueError, match="images must have shape"):
            s.run(images[:, :, :4], 0)
    only = FailingFpga("fpga:only", after=0)
    with Session(qm, [only]) as s, pytest.raises(DeviceError, match="last device failed"):
        s.run(images, 0)


def test_profiling_a_new_batch_size_keeps_the_timeline(qm, images) -> None:  # type: ignore[no-untyped-def]
    """Planning for a second batch size profiles the CPU again without erasing its real runs."""
    with Session(qm, ["cpu"]) as s:
        s.run(images, 0)
        ops = len(s.graph(0).nodes)
        first = [e for e in s.timeline() if e.kind == "run"]
        assert len(first) == ops
        s.run(images[:3], 0)
        runs = [e for e in s.timeline() if e.kind == "run"]
        assert len(runs) == 2 * ops and runs[:ops] == first
        assert runs[ops].start >= first[-1].end  # the second batch follows the first
        assert s.report()["busy_seconds"]["cpu"]["run"] > 0
