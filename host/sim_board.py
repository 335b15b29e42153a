"""A simulated board: the generated RTL under cocotb, behind the :class:`BoardDriver` contract.

:class:`CocotbBoard` lets an engine driver written for a real board run unchanged on the RTL (as
VTA runs one driver on its simulator and on the board): the driver runs in a cocotb *bridge*
thread, and each register access or stream transfer resumes the simulation until it completes.
:func:`run_gemm_driver` runs :class:`~tessera.host.driver.GemmDriver` this way and is what the
driver tests use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.host.driver import BoardDriver
from tessera.models.gemm import GemmConfig, Requant
from tessera.sim.harness import default_build_root, run_dir, run_testbench

__all__ = ["CocotbBoard", "run_gemm_driver"]


class CocotbBoard(BoardDriver):
    """An engine's ``csr`` AXI4-Lite port and its AXI4-Streams, in a running cocotb simulation.

    Create it inside a cocotb test (after reset); call its methods only from a thread started
    with ``cocotb.task.bridge``.

    Parameters
    ----------
    dut : cocotb handle
        The engine's top level (ports ``clk``, ``rst``, ``csr_*`` and ``<stream>_t*``).
    inputs, outputs : sequence of str
        Names of the input and output streams.
    """

    def __init__(self, dut: Any, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        from cocotb.task import resume
        from cocotbext.axi import (
            AxiLiteBus,
            AxiLiteMaster,
            AxiStreamBus,
            AxiStreamFrame,
            AxiStreamSink,
            AxiStreamSource,
        )

        self.csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr_"), dut.clk, dut.rst)
        self.sources = {
            s: AxiStreamSource(AxiStreamBus.from_prefix(dut, f"{s}_"), dut.clk, dut.rst)
            for s in inputs
        }
        self.sinks = {
            s: AxiStreamSink(AxiStreamBus.from_prefix(dut, f"{s}_"), dut.clk, dut.rst)
            for s in outputs
        }
        for port in (self.csr.write_if, self.csr.read_if, *self.sources.values()):
            port.log.setLevel("WARNING")
        for port in self.sinks.values():
            port.log.setLevel("WARNING")
        self._frame = AxiStreamFrame
        self._read = resume(self.csr.read_dword)
        self._write = resume(self.csr.write_dword)
        self._recv = resume(self._receive)
        self._send = resume(self._queue)

    async def _queue(self, stream: str, data: bytes) -> None:
        self.sources[stream].send_nowait(self._frame(data))

    async def _receive(self, stream: str, timeout: float) -> tuple[bytes, list[bool]]:
        from cocotb.triggers import with_timeout

        # ``timeout`` is simulated time here; a stuck engine raises SimTimeoutError.
        frame = await with_timeout(self.sinks[stream].recv(compact=False), timeout * 1e9, "ns")
        return bytes(frame.tdata), [bool(k) for k in frame.tkeep]

    # The four BoardDriver methods (documented there).
    def read_register(self, offset: int) -> int:
        return int(self._read(offset))

    def write_register(self, offset: int, value: int) -> None:
        self._write(offset, value)

    def send(self, stream: str, data: bytes) -> None:
        if stream not in self.sources:
            raise ValueError(f"no input stream {stream!r}; the board has {sorted(self.sources)}")
        self._send(stream, data)

    def receive(self, stream: str, timeout: float) -> tuple[bytes, list[bool]]:
        if stream not in self.sinks:
            raise ValueError(f"no output stream {stream!r}; the board has {sorted(self.sinks)}")
        return self._recv(stream, timeout)


def run_gemm_driver(
    cfg: GemmConfig,
    problems: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, Requant | None]],
    *,
    sim: str = "verilator",
    idle: float = 0.0,
    backpressure: float = 0.0,
    build_dir: str | os.PathLike[str] | None = None,
) -> list[tuple[npt.NDArray[np.int64], int]]:
    """Run ``GemmDriver.run`` for each ``(a, b, requant)`` on the RTL of ``cfg`` in simulation.

    Parameters
    ----------
    cfg : GemmConfig
        Engine to generate and simulate.
    problems : sequence of (a, b, requant)
        GEMMs, run in order on one simulator process.
    sim : {"verilator", "icarus"}
        Simulator.
    idle, backpressure : float
        Probabilities of idle input cycles and of ``tready`` low on the output, in [0, 1).
    build_dir : path, optional
        Default ``<build root>/sim/<config name>/driver_<sim>``.

    Returns
    -------
    list of (C, cycles)
        What the driver returned and the engine's CYCLES register, per problem.
    """
    from tessera.rtl.temporal_gemm import TOP_NAME, generate_gemm

    root = Path(
        build_dir or default_build_root() / "sim" / cfg.short_name / f"driver_{sim}"
    ).resolve()
    data_dir = run_dir(root, "data")
    data_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (a, b, rq) in enumerate(problems):
        path = data_dir / f"problem{i}.npz"
        np.savez(path, a=np.asarray(a, dtype=np.int64), b=np.asarray(b, dtype=np.int64))
        cases.append(
            {
                "data": str(path),
                "out": str(data_dir / f"result{i}.npy"),
                "requant": None if rq is None else [rq.multiplier, rq.shift, rq.zero_point],
            }
        )
    job = {
        "config": cfg.to_dict(),
        "cases": cases,
        "idle": idle,
        "backpressure": backpressure,
    }
    results, _, _ = run_testbench(
        verilog=generate_gemm(cfg)["verilog"],
        top=TOP_NAME,
        testbench="tessera.host.driver_testbench",
        job=job,
        sim=sim,
        build_dir=root,
        expected_results=len(cases),
    )
    failed = [r for r in results if not r["passed"]]
    if failed:
        raise RuntimeError(f"driver run failed: {failed[0]['message']}")
    return [(np.load(c["out"]), int(r["cycles"])) for c, r in zip(cases, results, strict=True)]
