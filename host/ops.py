"""Ops the devices run: layers with a float (torch) and an integer (engine) implementation."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tessera.estimators.cycles import gemm_cycles
from tessera.host.device import Op
from tessera.models.gemm import GemmConfig, Requant, gemm

__all__ = ["GemmOp"]


class GemmOp(Op):
    """``y = x @ W`` on the GEMM engine (int8 operands, optional requantization).

    Parameters
    ----------
    name : str
        Op name.
    weight : array_like of int, shape (K, N)
        int8 weights (the engine's ``B`` operand).
    cfg : GemmConfig
        The engine.
    requant : Requant, optional
        Output requantization (``None``: raw int32 accumulators).
    weight_scale : float
        Real value of one weight step, for the float implementation (``x @ (W * scale)``).
    """

    kind = "gemm"

    def __init__(
        self,
        name: str,
        weight: npt.ArrayLike,
        cfg: GemmConfig,
        requant: Requant | None = None,
        weight_scale: float = 1.0,
    ) -> None:
        w = np.asarray(weight)
        if w.ndim != 2 or w.dtype.kind not in "iu":
            raise ValueError(f"weight must be a 2-D integer array, got {w.dtype} {w.shape}")
        self.name = name
        self.weight = w.astype(np.int64)
        self.cfg = cfg
        self.requant = requant
        self.weight_scale = float(weight_scale)
        self._float_weight: dict[str, torch.Tensor] = {}

    def run_int(self, x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The golden GEMM (what the RTL and the HLS kernel compute bit for bit)."""
        return gemm(x, self.weight, self.cfg, self.requant)

    def run_csim(self, x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The HLS GEMM kernel, C-simulated."""
        from tessera.hls.csim import csim_gemm

        return csim_gemm(self.cfg, x, self.weight, self.requant)

    def fpga_cycles(self, x: npt.NDArray[np.int64]) -> int:
        """``TemporalGemm`` cycles for this shape (exact for unthrottled streams)."""
        m, k = x.shape
        return gemm_cycles(m, self.weight.shape[1], k, self.cfg).cycles

    def run_float(self, x: torch.Tensor) -> Any:
        """``x @ (W * weight_scale)`` in float on ``x``'s device."""
        key = str(x.device)
        if key not in self._float_weight:  # keep the weights resident on each device
            w = torch.from_numpy(self.weight * self.weight_scale).float()
            self._float_weight[key] = w.to(x.device)
        return x.float() @ self._float_weight[key]
