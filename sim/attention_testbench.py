"""cocotb testbench of ``AttentionEngine`` (run through
:func:`tessera.sim.attention.simulate_attention`).

Reads a job (JSON: engine config + cases, each with an ``.npz`` of the q, k, v input beats and the
golden o beats) from ``$TESSERA_JOB``. For every case it programs the registers with
cocotbext-axi's ``AxiLiteMaster``, drives q, k and v with ``AxiStreamSource`` (random idle
cycles), receives o with ``AxiStreamSink`` (random back-pressure) up to ``tlast``, compares with
the golden output in order and records the ``CYCLES`` register. Results go to the job's
``results`` JSON file; the test fails if any case fails.
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

from tessera.models.attention import AttentionConfig
from tessera.rtl.attention import REGISTERS
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results

REG = {r.name: r.offset for r in REGISTERS}


def first_mismatch(
    got: np.ndarray, expected: np.ndarray, seq_len: int, cfg: AttentionConfig
) -> dict[str, Any] | None:
    """First differing output element in stream order, as (head, query row, column).

    ``got`` and ``expected`` are flat int8 element sequences in (head, row, column) order.
    """
    n = min(len(got), len(expected))
    differ = np.flatnonzero(got[:n] != expected[:n])
    if len(differ):
        index, reason = int(differ[0]), "value differs"
    elif len(got) < len(expected):
        index, reason = len(got), "stream ended early (tlast too soon)"
    elif len(got) > len(expected):
        index, reason = len(expected), "extra output beats"
    else:
        return None
    head, rest = divmod(index, seq_len * cfg.head_dim)
    row, col = divmod(rest, cfg.head_dim)
    return {
        "head": head,
        "row": row,
        "col": col,
        "expected": int(expected[index]) if index < len(expected) else None,
        "got": int(got[index]) if index < len(got) else None,
        "reason": reason,
    }


@cocotb.test()
async def attention_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = AttentionConfig.from_dict(job["config"])
    await reset_dut(dut)

    csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr_"), dut.clk, dut.rst)
    sources = {
        name: AxiStreamSource(AxiStreamBus.from_prefix(dut, f"{name}_"), dut.clk, dut.rst)
        for name in ("q", "k", "v")
    }
    o_sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "o_"), dut.clk, dut.rst)
    for component in (csr.write_if, csr.read_if, o_sink, *sources.values()):
        component.log.setLevel("WARNING")

    info = await csr.read_dword(REG["INFO"])
    shape = await csr.read_dword(REG["SHAPE"])
    want_info = (cfg.parallelism, cfg.lanes, cfg.heads, cfg.head_dim, cfg.max_seq)
    got_info = (info & 0xFF, (info >> 8) & 0xFF, (info >> 16) & 0xFF, shape & 0xFFFF, shape >> 16)
    assert got_info == want_info, f"INFO/SHAPE {got_info}, config {want_info}"

    results = []
    for case in job["cases"]:
        data = np.load(case["data"])
        set_stalls(
            [*((src, case["idle"]) for src in sources.values()), (o_sink, case["backpressure"])],
            case["seed"],
        )
        for name, value in (
            ("SEQ_LEN", case["seq_len"]),
            ("MULTIPLIER", case["multiplier"]),
            ("SHIFT", case["shift"]),
            ("MASK", case["mask"]),
            ("SINK", case["sink"]),
            ("WINDOW", case["window"]),
        ):
            await csr.write_dword(REG[name], value)
        for name, src in sources.items():
            src.send_nowait(AxiStreamFrame(np.ascontiguousarray(data[name]).tobytes()))
        await csr.write_dword(REG["CTRL"], 1)
        await RisingEdge(dut.clk)
        start_ns = cocotb.utils.get_sim_time("ns")

        slack = 1.0 / max(1e-3, (1 - case["idle"]) * (1 - case["backpressure"]))
        limit_cycles = int(2 * slack * case["model_cycles"]) + 1000
        try:
            frame = await with_timeout(o_sink.recv(compact=False), limit_cycles * CLOCK_NS, "ns")
        except SimTimeoutError:
            message = f"timeout: no complete o frame (tlast) within {limit_cycles} cycles"
            dut._log.error("case %s: %s", case["name"], message)
            results.append(
                {
                    "name": case["name"],
                    "passed": False,
                    "message": message,
                    "mismatch": None,
                    "cycles": 0,
                    "tb_cycles": limit_cycles,
                }
            )
            write_results(job, results)
            break
        tb_cycles = round((cocotb.utils.get_sim_time("ns") - start_ns) / CLOCK_NS)
        status = await csr.read_dword(REG["CTRL"])
        cycles = await csr.read_dword(REG["CYCLES"])

        got = np.frombuffer(bytes(frame.tdata), dtype=np.int8).astype(np.int64)
        expected = data["o"].reshape(-1).astype(np.int64)
        mismatch = first_mismatch(got, expected, case["seq_len"], cfg)
        done_ok = status & 0b111 == 0b010
        # The testbench starts counting after the start write's response and stops at the last
        # beat, so the engine's own count may exceed it by the write latency only.
        count_ok = 0 <= cycles - tb_cycles <= 4
        inputs_used = all(src.empty() for src in sources.values())
        passed = mismatch is None and done_ok and count_ok and inputs_used and o_sink.empty()
        message = "ok"
        if mismatch is not None:
            message = (
                f"first mismatch at head {mismatch['head']}, query row {mismatch['row']}, "
                f"column {mismatch['col']}: expected {mismatch['expected']}, got "
                f"{mismatch['got']} ({mismatch['reason']})"
            )
        elif not done_ok:
            message = f"CTRL status {status:#x} after the last beat (want DONE only)"
        elif not inputs_used:
            message = "input beats left unconsumed"
        elif not o_sink.empty():
            message = "output beats after tlast"
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
            }
        )
        write_results(job, results)
        if not passed:
            break  # later cases would start from an inconsistent state
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed[0]["message"]
