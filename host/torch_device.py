"""``TorchDevice``: ops in float on a torch device, ``cuda:N`` when CUDA is there, else the CPU."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tessera.host.device import LINKS, Device, LinkModel, Op

__all__ = ["TorchDevice", "resolve_torch_device"]


def resolve_torch_device(spec: str) -> torch.device:
    """``"cuda"`` / ``"cuda:N"`` / ``"gpu"`` to that CUDA device when CUDA is available, else the
    CPU (so one code path serves both); ``"cpu"`` to the CPU.

    Raises
    ------
    ValueError
        For another spec, or a CUDA index the machine does not have.
    """
    name = spec.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "gpu":
        name = "cuda"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        dev = torch.device(name)
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"{spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise ValueError(f"unknown torch device {spec!r}: use cpu, cuda or cuda:N")


class TorchDevice(Device):
    """Runs :meth:`Op.run_float` with torch on one device; modelled time is measured time.

    Parameters
    ----------
    spec : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (CUDA falls back to the CPU when unavailable).
    name : str, optional
        Device name (default: the resolved torch device, e.g. ``"cuda:0"`` or ``"cpu"``).
    link : LinkModel, optional
        Host link (default: shared memory for the CPU, PCIe 4.0 x16 for a GPU).
    timeout : float, optional
        Seconds one op may take.
    """

    kind = "torch"

    def __init__(
        self,
        spec: str = "cpu",
        *,
        name: str | None = None,
        link: LinkModel | None = None,
        timeout: float | None = None,
    ) -> None:
        self.torch_device = resolve_torch_device(spec)
        is_cuda = self.torch_device.type == "cuda"
        default_link = LINKS["pcie4x16"] if is_cuda else LINKS["host"]
        super().__init__(
            name or str(self.torch_device), link or default_link, "float", timeout=timeout
        )

    def _sync(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def _to_device(self, array: npt.NDArray[Any]) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(array, copy=True))
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.to(self.torch_device)

    def _to_host(self, data: Any) -> npt.NDArray[Any]:
        return data.detach().cpu().numpy()

    def _execute(self, op: Op, inputs: Sequence[Any]) -> tuple[Any, float]:
        self._sync()
        start = time.perf_counter()
        with torch.no_grad():
            out = op.run_float(*inputs)
        self._sync()
        return out, time.perf_counter() - start

    @property
    def info(self) -> dict[str, Any]:
        """As :attr:`Device.info`, plus the torch device and, on CUDA, the GPU's name."""
        info = {**super().info, "torch_device": str(self.torch_device)}
        if self.torch_device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.torch_device)
        return info
