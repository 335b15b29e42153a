"""cocotb testbench of ``TemporalGemm`` (run through :func:`tessera.sim.gemm.simulate_gemm`).

Reads a job (JSON: engine config + cases, each with an ``.npz`` of operand beats and the golden
output beats) from ``$TESSERA_JOB``. For every case it programs the registers with cocotbext-axi's
``AxiLiteMaster``, drives A and B with ``AxiStreamSource`` (random idle cycles), receives C with
``AxiStreamSink`` (random back-pressure), compares with the golden output in order and records the
cycle count read from the ``CYCLES`` register. Results go to the job's ``results`` JSON file; the
test fails if any case fails.
"""

from __future__ import annotations

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

from tessera.models.gemm import GemmConfig, pack_stream
from tessera.rtl.temporal_gemm import REGISTERS
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results
from tessera.sim.scoreboard import first_mismatch

REG = {r.name: r.offset for r in REGISTERS}


@cocotb.test()
async def gemm_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = GemmConfig.from_dict(job["config"])
    await reset_dut(dut)

    csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr_"), dut.clk, dut.rst)
    a_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "a_"), dut.clk, dut.rst)
    b_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "b_"), dut.clk, dut.rst)
    c_sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "c_"), dut.clk, dut.rst)
    for component in (csr.write_if, csr.read_if, a_src, b_src, c_sink):
        component.log.setLevel("WARNING")

    info = await csr.read_dword(REG["INFO"])
    assert (info & 0xFF, (info >> 8) & 0xFF) == (cfg.rows, cfg.cols), f"INFO register {info:#x}"

    results = []
    for case in job["cases"]:
        data = np.load(case["data"])
        set_stalls(
            [(a_src, case["idle"]), (b_src, case["idle"]), (c_sink, case["backpressure"])],
            case["seed"],
        )

        m, n, k = case["m"], case["n"], case["k"]
        for name, value in (
            ("M", m),
            ("N", n),
            ("K", k),
            ("MODE", int(case["raw"])),
            ("MULTIPLIER", case["multiplier"]),
            ("SHIFT", case["shift"]),
            ("ZERO_POINT", case["zero_point"] & 0xFFFFFFFF),
        ):
            await csr.write_dword(REG[name], value)
        a_src.send_nowait(AxiStreamFrame(pack_stream(data["a_beats"], cfg.a_beat_bytes)))
        b_src.send_nowait(AxiStreamFrame(pack_stream(data["b_beats"], cfg.b_beat_bytes)))
        await csr.write_dword(REG["CTRL"], 1)
        await RisingEdge(dut.clk)
        start_ns = cocotb.utils.get_sim_time("ns")

        beats = len(data["a_beats"]) * cfg.beats_per_slice
        slack = 1.0 / max(1e-3, (1 - case["idle"]) * (1 - case["backpressure"]))
        limit_cycles = int(4 * slack * (beats + len(data["expected"]) + 64)) + 1000
        try:
            frame = await with_timeout(c_sink.recv(compact=False), limit_cycles * CLOCK_NS, "ns")
        except SimTimeoutError:
            message = f"timeout: no complete C frame within {limit_cycles} cycles"
            dut._log.error("case %s: %s", case["name"], message)
            results.append(
                {
                    "name": case["name"],
                    "passed": False,
                    "message": message,
                    "mismatch": None,
                    "cycles": 0,
                    "tb_cycles": limit_cycles,
                    "output_beats": None,
                }
            )
            write_results(job, results)
            break
        tb_cycles = round((cocotb.utils.get_sim_time("ns") - start_ns) / CLOCK_NS)
        status = await csr.read_dword(REG["CTRL"])
        cycles = await csr.read_dword(REG["CYCLES"])

        raw = bytes(frame.tdata)
        got = np.frombuffer(raw, dtype="<i4").reshape(-1, cfg.cols).astype(np.int64)
        got_valid = np.array(frame.tkeep[::4], dtype=bool).reshape(-1, cfg.cols)
        mismatch = first_mismatch(got, got_valid, data["expected"], data["valid"], m, n, cfg)
        done_ok = status & 0b111 == 0b010
        # The testbench starts counting after the start write's response and stops at the last
        # beat, so the engine's own count may exceed it by the write latency only.
        count_ok = 0 <= cycles - tb_cycles <= 4
        passed = mismatch is None and done_ok and count_ok and a_src.empty() and b_src.empty()
        message = "ok"
        if mismatch is not None:
            message = (
                f"first mismatch at C[{mismatch['row']}, {mismatch['col']}]: expected "
                f"{mismatch['expected']}, got {mismatch['got']} ({mismatch['reason']})"
            )
        elif not done_ok:
            message = f"CTRL status {status:#x} after the last beat (want DONE only)"
        elif not (a_src.empty() and b_src.empty()):
            message = "operand beats left unconsumed"
        elif not count_ok:
            message = f"CYCLES register {cycles} disagrees with the testbench's {tb_cycles}"
        dut._log.info("case %s: %s, %d cycles", case["name"], message, cycles)
        results.append(
            {
                "name": case["name"],
                "passed": passed,
                "message": message,
                "mismatch": mismatch,
                "cycles": cycles,
                "tb_cycles": tb_cycles,
                "output_beats": len(got),
            }
        )
        write_results(job, results)
        if not passed:
            break  # later cases would start from an inconsistent state
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed[0]["message"]
