"""cocotb testbench of ``Epilogue`` (run through :func:`tessera.sim.epilogue.simulate_epilogue`).

Reads a job (JSON: unit config + cases, each with an ``.npz`` of accumulators, parameters,
residual and golden outputs) from ``$TESSERA_JOB``. For every case it sends the parameter packet
with an ``AxiStreamSource`` on ``params_`` (waiting until it is taken), the accumulators (with
``tkeep``) on ``x_`` and the residual on ``residual_`` (random idle cycles), receives the ``y``
frame (up to ``tlast``) with an ``AxiStreamSink`` (random back-pressure) and compares it in order
with the golden output. The helpers here are shared with the ``LinearUnit`` testbench.
"""

from __future__ import annotations

from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from tessera.models.epilogue import (
    EpilogueConfig,
    pack_input,
    pack_params,
    pack_residual,
    tile_beats,
    unpack_output,
)
from tessera.sim.epilogue import params_from_arrays
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results
from tessera.sim.scoreboard import first_mismatch


def now_cycles() -> float:
    """Simulation time in clock cycles."""
    return cocotb.utils.get_sim_time("ns") / CLOCK_NS


def compare_output(
    frame: Any, expected: np.ndarray, m: int, n: int, cfg: EpilogueConfig
) -> dict[str, Any] | None:
    """First mismatch of a received ``y`` frame against the golden (M, N) output."""
    got, got_valid = unpack_output(bytes(frame.tdata), list(frame.tkeep), cfg)
    want, valid = tile_beats(expected, cfg)
    return first_mismatch(got, got_valid, want, valid, m, n, cfg)  # type: ignore[arg-type]


def mismatch_message(mismatch: dict[str, Any]) -> str:
    """One line naming the first mismatching element."""
    return (
        f"first mismatch at y[{mismatch['row']}, {mismatch['col']}]: expected "
        f"{mismatch['expected']}, got {mismatch['got']} ({mismatch['reason']})"
    )


def failed(case: dict[str, Any], message: str) -> dict[str, Any]:
    """A failing result entry without output."""
    return {
        "name": case["name"],
        "passed": False,
        "message": message,
        "mismatch": None,
        "cycles": 0,
    }


@cocotb.test()
async def epilogue_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = EpilogueConfig.from_dict(job["config"])
    await reset_dut(dut)

    x_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "x_"), dut.clk, dut.rst)
    p_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "params_"), dut.clk, dut.rst)
    y_sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "y_"), dut.clk, dut.rst)
    r_src = None
    ports = [x_src, p_src, y_sink]
    if cfg.residual:
        r_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "residual_"), dut.clk, dut.rst)
        ports.append(r_src)
    for port in ports:
        port.log.setLevel("WARNING")

    results = []
    for case in job["cases"]:
        data = np.load(case["data"])
        m, n = case["m"], case["n"]
        stalls = [(x_src, case["idle"]), (p_src, case["idle"]), (y_sink, case["backpressure"])]
        if r_src is not None:
            stalls.append((r_src, case["idle"]))
        set_stalls(stalls, case["seed"])
        slack = 1.0 / max(1e-3, (1 - case["idle"]) * (1 - case["backpressure"]))
        beats = len(tile_beats(data["acc"], cfg)[0])
        limit = int(4 * slack * (beats + n + 40)) + 1000

        params = params_from_arrays(data)
        p_src.send_nowait(AxiStreamFrame(pack_params(params, m, cfg)))
        try:
            await with_timeout(p_src.wait(), limit * CLOCK_NS, "ns")
        except SimTimeoutError:
            results.append(failed(case, f"timeout: parameter packet not taken in {limit} cycles"))
            write_results(job, results)
            break
        await RisingEdge(dut.clk)
        start = now_cycles()
        tdata, tkeep = pack_input(data["acc"], cfg)
        x_src.send_nowait(AxiStreamFrame(tdata, tkeep=tkeep))
        if r_src is not None:
            r_src.send_nowait(AxiStreamFrame(pack_residual(data["residual"], cfg)))
        try:
            frame = await with_timeout(y_sink.recv(compact=False), limit * CLOCK_NS, "ns")
        except SimTimeoutError:
            results.append(failed(case, f"timeout: no complete y frame within {limit} cycles"))
            write_results(job, results)
            break
        cycles = round(now_cycles() - start)
        mismatch = compare_output(frame, data["expected"], m, n, cfg)
        message = "ok"
        if mismatch is not None:
            message = mismatch_message(mismatch)
        elif int(dut.error.value):
            message = "error output set"
        elif not x_src.empty() or (r_src is not None and not r_src.empty()):
            message = "input beats left unconsumed"
        dut._log.info("case %s: %s, %d cycles", case["name"], message, cycles)
        results.append(
            {
                "name": case["name"],
                "passed": message == "ok",
                "message": message,
                "mismatch": mismatch,
                "cycles": cycles,
            }
        )
        write_results(job, results)
        if message != "ok":
            break  # later cases would start from an inconsistent state
    bad = [r for r in results if not r["passed"]]
    assert not bad, bad[0]["message"]
