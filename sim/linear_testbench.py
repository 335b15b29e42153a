"""cocotb testbench of ``LinearUnit`` (run through :func:`tessera.sim.linear.simulate_linear`).

Reads a job (JSON: both configs + cases, each with an ``.npz`` of operand beats, epilogue
parameters, residual and golden output) from ``$TESSERA_JOB``. For every case it programs the
GEMM registers with cocotbext-axi's ``AxiLiteMaster``, sends the parameter packet (waiting until
it is taken), drives A, B and the residual with ``AxiStreamSource`` (random idle cycles), starts
the GEMM, receives the ``y`` frame with ``AxiStreamSink`` (random back-pressure) and compares it
in order with the golden output. :class:`LinearPorts` and :func:`run_linear` are shared with the
encoder testbench.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import (
    AxiLiteBus,
    AxiLiteMaster,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from tessera.models.epilogue import EpilogueParams, pack_params, pack_residual
from tessera.models.gemm import pack_stream
from tessera.rtl.linear import LinearConfigs
from tessera.rtl.temporal_gemm import REGISTERS
from tessera.sim.epilogue import params_from_arrays
from tessera.sim.epilogue_testbench import compare_output, failed, mismatch_message, now_cycles
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results

REG = {r.name: r.offset for r in REGISTERS}


@dataclass
class LinearPorts:
    """cocotbext-axi drivers of one ``LinearUnit``'s ports (names ``<prefix>a__tdata``...)."""

    csr: AxiLiteMaster
    a: AxiStreamSource
    b: AxiStreamSource
    params: AxiStreamSource
    residual: AxiStreamSource | None
    y: AxiStreamSink

    @classmethod
    def attach(cls, dut: Any, prefix: str, residual: bool) -> LinearPorts:
        """Drivers for the ports named ``<prefix>a_...``, ``<prefix>csr_...`` and so on."""

        def stream(name: str, kind: type) -> Any:
            return kind(AxiStreamBus.from_prefix(dut, f"{prefix}{name}_"), dut.clk, dut.rst)

        ports = cls(
            csr=AxiLiteMaster(AxiLiteBus.from_prefix(dut, f"{prefix}csr_"), dut.clk, dut.rst),
            a=stream("a", AxiStreamSource),
            b=stream("b", AxiStreamSource),
            params=stream("params", AxiStreamSource),
            residual=stream("residual", AxiStreamSource) if residual else None,
            y=stream("y", AxiStreamSink),
        )
        for port in (ports.csr.write_if, ports.csr.read_if, *ports.streams()):
            port.log.setLevel("WARNING")
        return ports

    def streams(self) -> list[Any]:
        """The stream drivers."""
        out = [self.a, self.b, self.params, self.y]
        return out if self.residual is None else [*out, self.residual]

    def set_stalls(self, idle: float, backpressure: float, seed: int) -> None:
        """Random idle cycles on every source, back-pressure on ``y``."""
        ports = [(s, idle) for s in (self.a, self.b, self.params, self.residual) if s is not None]
        set_stalls([*ports, (self.y, backpressure)], seed)


@dataclass
class LinearRun:
    """What one run returned: the ``y`` frame (None on timeout), the cycles from the start write
    to the last ``y`` beat, the GEMM's ``CYCLES`` register and its ``CTRL`` status."""

    frame: Any
    cycles: int
    gemm_cycles: int
    status: int
    message: str


async def run_linear(
    dut: Any,
    ports: LinearPorts,
    pair: LinearConfigs,
    a_beats: np.ndarray,
    b_beats: np.ndarray,
    params: EpilogueParams,
    m: int,
    n: int,
    k: int,
    residual: np.ndarray | None,
    limit: int,
) -> LinearRun:
    """Program the registers, load the packet, stream the operands and receive ``y``."""
    gemm, epi = pair.gemm, pair.epi
    for name, value in (("M", m), ("N", n), ("K", k), ("MODE", 1)):
        await ports.csr.write_dword(REG[name], value)
    ports.params.send_nowait(AxiStreamFrame(pack_params(params, m, epi)))
    try:
        await with_timeout(ports.params.wait(), limit * CLOCK_NS, "ns")
    except SimTimeoutError:
        return LinearRun(None, 0, 0, 0, f"timeout: parameter packet not taken in {limit} cycles")
    ports.a.send_nowait(AxiStreamFrame(pack_stream(a_beats, gemm.a_beat_bytes)))
    ports.b.send_nowait(AxiStreamFrame(pack_stream(b_beats, gemm.b_beat_bytes)))
    if ports.residual is not None:
        if residual is None:
            raise ValueError("this unit adds a residual: pass one")
        ports.residual.send_nowait(AxiStreamFrame(pack_residual(residual, epi)))
    await ports.csr.write_dword(REG["CTRL"], 1)
    await RisingEdge(dut.clk)
    start = now_cycles()
    try:
        frame = await with_timeout(ports.y.recv(compact=False), limit * CLOCK_NS, "ns")
    except SimTimeoutError:
        return LinearRun(None, 0, 0, 0, f"timeout: no complete y frame within {limit} cycles")
    cycles = round(now_cycles() - start)
    status = await ports.csr.read_dword(REG["CTRL"])
    gemm_cycles = await ports.csr.read_dword(REG["CYCLES"])
    message = "ok"
    if status & 0b111 != 0b010:
        message = f"GEMM CTRL status {status:#x} after the last beat (want DONE only)"
    elif not all(s.empty() for s in ports.streams() if s is not ports.y):
        message = "input beats left unconsumed"
    return LinearRun(frame, cycles, gemm_cycles, status, message)


def limit_cycles(m: int, n: int, k: int, pair: LinearConfigs, idle: float, bp: float) -> int:
    """A generous timeout for one run."""
    tiles = -(-m // pair.gemm.rows) * -(-n // pair.gemm.cols)
    slack = 1.0 / max(1e-3, (1 - idle) * (1 - bp))
    return int(4 * slack * (tiles * (k + pair.gemm.rows) * pair.gemm.beats_per_slice + n + 64))


@cocotb.test()
async def linear_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    pair = LinearConfigs.from_dict(job["config"])
    await reset_dut(dut)
    ports = LinearPorts.attach(dut, "", pair.epi.residual)

    results = []
    for case in job["cases"]:
        data = np.load(case["data"])
        m, n, k = case["m"], case["n"], case["k"]
        ports.set_stalls(case["idle"], case["backpressure"], case["seed"])
        run = await run_linear(
            dut,
            ports,
            pair,
            data["a_beats"],
            data["b_beats"],
            params_from_arrays(data),
            m,
            n,
            k,
            data["residual"] if "residual" in data else None,
            limit_cycles(m, n, k, pair, case["idle"], case["backpressure"]) + 1000,
        )
        if run.frame is None:
            results.append(failed(case, run.message))
            write_results(job, results)
            break
        mismatch = compare_output(run.frame, data["expected"], m, n, pair.epi)
        message = mismatch_message(mismatch) if mismatch is not None else run.message
        if message == "ok" and int(dut.error.value):
            message = "epilogue error output set"
        dut._log.info("case %s: %s, %d cycles", case["name"], message, run.cycles)
        results.append(
            {
                "name": case["name"],
                "passed": message == "ok",
                "message": message,
                "mismatch": mismatch,
                "cycles": run.cycles,
                "gemm_cycles": run.gemm_cycles,
            }
        )
        write_results(job, results)
        if message != "ok":
            break
    bad = [r for r in results if not r["passed"]]
    assert not bad, bad[0]["message"]
