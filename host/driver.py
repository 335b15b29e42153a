"""Board drivers: how a real FPGA board (or a simulated one) plugs into the host runtime.

The contract is PYNQ / XRT shaped and deliberately small. A board gives an engine's AXI4-Lite
register window and its AXI4-Stream ports (behind DMA engines on a real board):

- :meth:`BoardDriver.read_register` / :meth:`BoardDriver.write_register`: 32-bit MMIO at a byte
  offset in the engine's CSR window (PYNQ ``MMIO.read/write``, XRT ``xrt::ip::read_register``);
- :meth:`BoardDriver.send`: queue a packet of bytes into an input stream (an AXI DMA MM2S
  transfer), ``tlast`` on its final beat; it may return before the engine consumed it;
- :meth:`BoardDriver.receive`: block until an output stream delivers a packet (up to ``tlast``;
  an AXI DMA S2MM transfer) and return its bytes and per-byte ``tkeep``.

Engine drivers (:class:`GemmDriver`) are written once against this contract, using the register
map the generator wrote (``register_map(cfg)``, the JSON next to the Verilog), so no offset is
repeated by hand. :class:`~tessera.host.sim_board.CocotbBoard` implements the contract on the
generated RTL in a cocotb simulation, which is how the drivers are tested here; a PYNQ or XRT board
implements the same four methods with its MMIO and DMA objects. No hardware board has been run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.models.gemm import GemmConfig, Requant, output_beats, pack_stream, stream_operands

__all__ = ["BoardDriver", "DriverError", "GemmDriver", "RegisterFile"]


class DriverError(RuntimeError):
    """The engine on the board misbehaved: an error flag, a timeout or a malformed stream."""


class BoardDriver(ABC):
    """The four operations a board provides for one engine (see the module docstring)."""

    @abstractmethod
    def read_register(self, offset: int) -> int:
        """Read the 32-bit register at byte ``offset`` of the engine's CSR window."""

    @abstractmethod
    def write_register(self, offset: int, value: int) -> None:
        """Write the 32-bit register at byte ``offset``."""

    @abstractmethod
    def send(self, stream: str, data: bytes) -> None:
        """Queue ``data`` as one packet into input stream ``stream``."""

    @abstractmethod
    def receive(self, stream: str, timeout: float) -> tuple[bytes, list[bool]]:
        """The next packet of output stream ``stream``: bytes and their ``tkeep`` flags."""


@dataclass(frozen=True)
class _Reg:
    offset: int
    access: str


class RegisterFile:
    """An engine's registers by name, from the register map the generator wrote.

    Parameters
    ----------
    register_map : Mapping
        The engine's ``register_map(cfg)`` dict (or the parsed JSON file).
    board : BoardDriver
        Where the registers live.

    Raises
    ------
    ValueError
        If the map has no AXI4-Lite register list.
    """

    def __init__(self, register_map: Mapping[str, Any], board: BoardDriver) -> None:
        try:
            regs = register_map["csr"]["registers"]
        except (KeyError, TypeError):
            raise ValueError(
                "register map has no csr.registers list: pass the engine's register_map(cfg) or "
                "its JSON file"
            ) from None
        self.top = register_map.get("top", "?")
        self._regs = {r["name"]: _Reg(int(r["offset"]), r["access"]) for r in regs}
        self.board = board

    def _reg(self, name: str) -> _Reg:
        if name not in self._regs:
            raise ValueError(f"{self.top} has no register {name!r}; it has {sorted(self._regs)}")
        return self._regs[name]

    def read(self, name: str) -> int:
        """The value of register ``name``."""
        return self.board.read_register(self._reg(name).offset)

    def write(self, name: str, value: int) -> None:
        """Write register ``name`` (``ValueError`` for read-only registers)."""
        reg = self._reg(name)
        if "w" not in reg.access:
            raise ValueError(f"{self.top} register {name} is read-only")
        self.board.write_register(reg.offset, int(value) & 0xFFFFFFFF)


# CTRL status bits shared by tessera's engines.
_BUSY, _DONE, _ERROR = 1, 2, 4


class GemmDriver:
    """Runs GEMMs on a ``TemporalGemm`` engine of a board.

    Parameters
    ----------
    board : BoardDriver
        The board (its ``a``, ``b`` input streams and ``c`` output stream are the engine's).
    cfg : GemmConfig
        The engine's configuration (as generated).
    timeout : float
        Seconds to wait for the result stream.
    """

    def __init__(self, board: BoardDriver, cfg: GemmConfig, *, timeout: float = 60.0) -> None:
        from tessera.rtl.temporal_gemm import register_map

        self.cfg = cfg
        self.regs = RegisterFile(register_map(cfg), board)
        self.board = board
        self.timeout = timeout
        self.last_cycles = 0

    def check_identity(self) -> None:
        """``DriverError`` unless the INFO register describes this driver's configuration."""
        info = self.regs.read("INFO")
        rows, cols = info & 0xFF, (info >> 8) & 0xFF
        if (rows, cols) != (self.cfg.rows, self.cfg.cols):
            raise DriverError(
                f"the board's GEMM engine is {rows}x{cols}, the driver expects "
                f"{self.cfg.rows}x{self.cfg.cols}: load the matching bitstream"
            )

    def run(
        self, a: npt.ArrayLike, b: npt.ArrayLike, requant: Requant | None = None
    ) -> npt.NDArray[np.int64]:
        """``C = A @ B`` on the engine (requantized when ``requant`` is given).

        Raises
        ------
        ValueError
            Operands that do not fit the engine.
        DriverError
            The engine flagged an error, stayed busy, or sent a malformed C stream.
        """
        cfg = self.cfg
        a_slices, b_slices = stream_operands(a, b, cfg)
        m, k = np.shape(a)
        n = np.shape(b)[1]
        rq = requant or Requant(0, 0, 0)
        for name, value in (
            ("M", m),
            ("N", n),
            ("K", k),
            ("MODE", int(requant is None)),
            ("MULTIPLIER", rq.multiplier),
            ("SHIFT", rq.shift),
            ("ZERO_POINT", rq.zero_point),
        ):
            self.regs.write(name, value)
        self.board.send("a", pack_stream(a_slices, cfg.a_beat_bytes))
        self.board.send("b", pack_stream(b_slices, cfg.b_beat_bytes))
        self.regs.write("CTRL", 1)
        data, keep = self.board.receive("c", self.timeout)
        deadline = time.monotonic() + self.timeout
        while (status := self.regs.read("CTRL")) & _BUSY and time.monotonic() < deadline:
            pass
        if status & _ERROR or not status & _DONE:
            raise DriverError(f"GEMM engine status {status:#x} after the run (want DONE)")
        self.last_cycles = self.regs.read("CYCLES")
        return self._matrix(data, keep, m, n)

    def _matrix(self, data: bytes, keep: list[bool], m: int, n: int) -> npt.NDArray[np.int64]:
        cfg = self.cfg
        index, valid = output_beats(np.arange(m * n, dtype=np.int64).reshape(m, n), cfg)
        lanes = np.frombuffer(data, dtype="<i4").astype(np.int64)
        if lanes.size != index.size:
            raise DriverError(f"C stream carried {lanes.size} lanes, expected {index.size}")
        lane_keep = np.array(keep[::4], dtype=bool)
        if not np.array_equal(lane_keep, valid.reshape(-1)):
            raise DriverError("C stream tkeep does not mark exactly the lanes inside N")
        out = np.zeros(m * n, dtype=np.int64)
        out[index[valid]] = lanes.reshape(index.shape)[valid]
        return out.reshape(m, n)
