"""``FpgaEmulator``: the FPGA engines, bit-exact through the golden models, timed by cycle models.

The emulator runs :meth:`Op.run_int` (the golden integer arithmetic every engine is verified
against bit for bit) and charges ``Op.fpga_cycles`` cycles at the engine clock, plus the link model
for transfers. Mode ``"rtl"`` runs the generated RTL under a simulator instead (``Op.run_rtl``),
which is slow and meant for verification; its cycles are the ones the RTL counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tessera.host.device import LINKS, Device, DeviceError, LinkModel, Op

__all__ = ["FpgaEmulator", "HlsCsimDevice"]

Mode = Literal["golden", "rtl", "csim"]


def _run_op(op: Op, inputs: Sequence[Any], mode: Mode, sim: str) -> tuple[Any, int]:
    if mode == "rtl":
        return op.run_rtl(*inputs, sim=sim)
    if mode == "csim":
        return op.run_csim(*inputs), op.fpga_cycles(*inputs)
    return op.run_int(*inputs), op.fpga_cycles(*inputs)


class FpgaEmulator(Device):
    """An FPGA with tessera's engines, emulated.

    Parameters
    ----------
    name : str
        Device name (default ``"fpga:emu"``).
    clock_mhz : float
        Engine clock (default 300 MHz, Edge-MoE's clock on a ZCU102).
    link : LinkModel, optional
        Host link (default PCIe 3.0 x4).
    mode : {"golden", "rtl", "csim"}
        ``"golden"``: golden models + cycle models; ``"rtl"``: the RTL under ``sim``;
        ``"csim"``: the HLS kernels C-simulated (see :class:`HlsCsimDevice`).
    sim : {"verilator", "icarus"}
        Simulator of mode ``"rtl"``.
    timeout : float, optional
        Seconds (wall) one op may take.
    isolated : bool
        Run the ops in a worker process of their own, as a board driver's process would be:
        if it dies, the device fails with a :class:`~tessera.host.device.DeviceError` (ops must
        then be picklable).
    """

    kind = "fpga"

    def __init__(
        self,
        name: str = "fpga:emu",
        *,
        clock_mhz: float = 300.0,
        link: LinkModel | None = None,
        mode: Mode = "golden",
        sim: str = "verilator",
        timeout: float | None = None,
        isolated: bool = False,
    ) -> None:
        if not 1.0 <= clock_mhz <= 2000.0:
            raise ValueError(f"clock_mhz must be in [1, 2000], got {clock_mhz}")
        if mode not in ("golden", "rtl", "csim"):
            raise ValueError(f"mode must be 'golden', 'rtl' or 'csim', got {mode!r}")
        super().__init__(name, link or LINKS["pcie3x4"], "int", timeout=timeout)
        self.clock_hz = clock_mhz * 1e6
        self.mode: Mode = mode
        self.sim = sim
        self.cycles = 0
        self._worker = ProcessPoolExecutor(max_workers=1) if isolated else None

    def _to_device(self, array: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        arr = np.asarray(array)
        if arr.dtype.kind not in "iu":
            raise ValueError(
                f"the FPGA takes raw integer (quantized) data, got dtype {arr.dtype}: quantize it "
                "first"
            )
        return arr.astype(np.int64)

    def _to_host(self, data: Any) -> npt.NDArray[Any]:
        return np.array(data, copy=True)

    def _execute(self, op: Op, inputs: Sequence[Any]) -> tuple[Any, float]:
        if self._worker is None:
            out, cycles = _run_op(op, inputs, self.mode, self.sim)
        else:
            try:
                out, cycles = self._worker.submit(_run_op, op, inputs, self.mode, self.sim).result()
            except BrokenProcessPool as exc:
                raise DeviceError(self.name, "its worker process died") from exc
        self.cycles += int(cycles)
        return out, cycles / self.clock_hz

    @property
    def worker_pid(self) -> int | None:
        """Process id of the isolated worker (``None`` unless ``isolated`` and started)."""
        if self._worker is None:
            return None
        pids = list(self._worker._processes)  # no public accessor; used to supervise it
        return pids[0] if pids else None

    def close(self) -> None:
        """As :meth:`Device.close`, and stop the worker process."""
        super().close()
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)

    @property
    def info(self) -> dict[str, Any]:
        """As :attr:`Device.info`, plus clock and mode."""
        return {**super().info, "clock_mhz": self.clock_hz / 1e6, "mode": self.mode}


class HlsCsimDevice(FpgaEmulator):
    """The engines' HLS kernels, C-simulated with g++ (:meth:`Op.run_csim`), timed by the cycle
    models like :class:`FpgaEmulator`; a check that the HLS flow computes what the RTL does.

    Parameters are those of :class:`FpgaEmulator` except ``mode``; the default name is
    ``"fpga:csim"``.
    """

    kind = "hls-csim"

    def __init__(self, name: str = "fpga:csim", **kwargs: Any) -> None:
        if "mode" in kwargs:
            raise ValueError("HlsCsimDevice always runs mode 'csim'")
        super().__init__(name, mode="csim", **kwargs)
