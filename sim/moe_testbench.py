"""cocotb testbench of ``MoeEngine`` (run through :func:`tessera.sim.moe.simulate_moe`).

Reads a job (JSON: engine config + cases, each with an ``.npz`` of the raw tokens, the golden
output, the weight image and the queue lengths) from ``$TESSERA_JOB``. For every case it puts the
weight image into cocotbext-axi's ``AxiRamRead`` (the DDR model on ``m_axi``, with random AR / R
stalls), programs the registers with ``AxiLiteMaster``, drives ``x`` with ``AxiStreamSource``
(random idle cycles), receives ``y`` with ``AxiStreamSink`` (random back-pressure) up to
``tlast``, and compares the output, ``QUEUE_LEN``, ``WEIGHT_BYTES``, ``EXPERTS_LOADED`` and, for
stall-free cases, ``CYCLES`` with the model. Before the cases it checks ``INFO`` / ``SHAPE`` /
``SIZES`` against the config and that starts with impossible parameters only set ``ERROR``.
Results go to the job's ``results`` JSON file; the test fails if any case fails.
"""

from __future__ import annotations

from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import (
    AxiLiteBus,
    AxiLiteMaster,
    AxiRamRead,
    AxiReadBus,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from tessera.models.moe import MoeConfig
from tessera.rtl.moe import QUEUE_LEN_BASE, REGISTERS
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results

REG = {r.name: r.offset for r in REGISTERS}


def first_mismatch(got: np.ndarray, expected: np.ndarray, dim: int) -> dict[str, Any] | None:
    """First differing output element in stream order, as (token, column)."""
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
    token, col = divmod(index, dim)
    return {
        "token": token,
        "col": col,
        "expected": int(expected[index]) if index < len(expected) else None,
        "received": int(got[index]) if index < len(got) else None,
        "reason": reason,
    }


@cocotb.test()
async def moe_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = MoeConfig.from_dict(job["config"])
    # The bus models exist before reset, so they drive their outputs (tready...) from the start.
    csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr_"), dut.clk, dut.rst)
    x_source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "x_"), dut.clk, dut.rst)
    y_sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "y_"), dut.clk, dut.rst)
    ram_size = max(c["weight_base"] for c in job["cases"]) + max(
        len(np.load(c["data"])["image"]) for c in job["cases"]
    )
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=ram_size)
    for component in (csr.write_if, csr.read_if, x_source, y_sink, ram):
        component.log.setLevel("WARNING")
    await reset_dut(dut)

    info = await csr.read_dword(REG["INFO"])
    shape = await csr.read_dword(REG["SHAPE"])
    sizes = await csr.read_dword(REG["SIZES"])
    want = (cfg.rows, cfg.cols, cfg.top_k, cfg.dim, cfg.max_tokens, cfg.expert_hidden, cfg.experts)
    got_info = (
        info & 0xFF,
        (info >> 8) & 0xFF,
        (info >> 16) & 0x1FF,
        shape & 0xFFFF,
        shape >> 16,
        sizes & 0xFFFF,
        ((sizes >> 16) & 0xFF) + 1,
    )
    problems = []
    if got_info != want:
        problems.append(f"INFO/SHAPE/SIZES {got_info}, config {want}")

    # Starts with impossible parameters set ERROR and run nothing.
    first = job["cases"][0]
    for tokens, task, base in (
        (0, 0, first["weight_base"]),
        (cfg.max_tokens + 1, 0, first["weight_base"]),
        (1, cfg.tasks, first["weight_base"]),
        (1, 0, first["weight_base"] + 64),
    ):
        for name, value in (("TOKENS", tokens), ("TASK", task), ("WEIGHT_BASE", base)):
            await csr.write_dword(REG[name], value)
        await csr.write_dword(REG["CTRL"], 1)
        status = await csr.read_dword(REG["CTRL"])
        if status & 0b111 != 0b100:
            problems.append(
                f"start with TOKENS={tokens} TASK={task} WEIGHT_BASE={base:#x}: CTRL "
                f"{status:#x}, want ERROR only"
            )
    if problems:
        # Reported as the first case's failure, so the caller sees the message.
        write_results(
            job,
            [
                {
                    "name": first["name"],
                    "passed": False,
                    "message": problems[0],
                    "cycles": 0,
                    "mismatch": None,
                }
            ],
        )
    assert not problems, problems[0]

    results = []
    for case in job["cases"]:
        data = np.load(case["data"])
        ram.write(case["weight_base"], data["image"].tobytes())
        set_stalls(
            [
                (x_source, case["idle"]),
                (y_sink, case["backpressure"]),
                (ram.ar_channel, case["memory_stall"]),
                (ram.r_channel, case["memory_stall"]),
            ],
            case["seed"],
        )
        for name, value in (
            ("TOKENS", case["tokens"]),
            ("TASK", case["task"]),
            ("WEIGHT_BASE", case["weight_base"]),
        ):
            await csr.write_dword(REG[name], value)
        x_source.send_nowait(AxiStreamFrame(data["x"].tobytes()))
        await csr.write_dword(REG["CTRL"], 1)
        await RisingEdge(dut.clk)
        start_ns = cocotb.utils.get_sim_time("ns")

        slack = 1.0 / max(
            1e-3, (1 - case["idle"]) * (1 - case["backpressure"]) * (1 - case["memory_stall"]) ** 2
        )
        limit_cycles = int(2 * slack * case["model_cycles"]) + 2000
        base = {"name": case["name"], "mismatch": None}
        try:
            frame = await with_timeout(y_sink.recv(compact=False), limit_cycles * CLOCK_NS, "ns")
        except SimTimeoutError:
            message = f"timeout: no complete y frame (tlast) within {limit_cycles} cycles"
            # where the engine waits
            for probe in ("sequencer_state", "fetch_state", "prefetch_state"):
                if hasattr(dut, probe):
                    message += f"; {probe}={getattr(dut, probe).value}"
            dut._log.error("case %s: %s", case["name"], message)
            results.append({**base, "passed": False, "message": message, "cycles": 0})
            write_results(job, results)
            break
        tb_cycles = round((cocotb.utils.get_sim_time("ns") - start_ns) / CLOCK_NS)
        status = await csr.read_dword(REG["CTRL"])
        cycles = await csr.read_dword(REG["CYCLES"])
        weight_bytes = await csr.read_dword(REG["WEIGHT_BYTES"])
        loaded = await csr.read_dword(REG["EXPERTS_LOADED"])
        queue_lengths = [await csr.read_dword(QUEUE_LEN_BASE + 4 * e) for e in range(cfg.experts)]

        got = np.frombuffer(bytes(frame.tdata), dtype=np.int8).astype(np.int64)
        expected = data["y"].reshape(-1).astype(np.int64)
        mismatch = first_mismatch(got, expected, cfg.dim)
        want_queues = [int(v) for v in data["queue_lengths"]]
        message = "ok"
        if mismatch is not None:
            message = (
                f"first mismatch at token {mismatch['token']}, column {mismatch['col']}: "
                f"expected {mismatch['expected']}, received {mismatch['received']} "
                f"({mismatch['reason']})"
            )
        elif status & 0b111 != 0b010:
            message = f"CTRL status {status:#x} after the last beat (want DONE only)"
        elif queue_lengths != want_queues:
            message = f"QUEUE_LEN {queue_lengths}, routing.queue_lengths {want_queues}"
        elif weight_bytes != case["weight_bytes"]:
            message = f"WEIGHT_BYTES {weight_bytes}, expected {case['weight_bytes']}"
        elif loaded != case["experts_loaded"]:
            message = f"EXPERTS_LOADED {loaded}, expected {case['experts_loaded']}"
        elif not x_source.empty():
            message = "input beats left unconsumed"
        elif not y_sink.empty():
            message = "output beats after tlast"
        elif not 0 <= cycles - tb_cycles <= 4:
            message = f"CYCLES register {cycles} disagrees with the testbench's {tb_cycles}"
        elif case["check_cycles"] and cycles != case["model_cycles"]:
            message = f"CYCLES {cycles} without stalls, cycle model {case['model_cycles']}"
        passed = message == "ok"
        dut._log.info("case %s: %s, %d cycles", case["name"], message, cycles)
        results.append(
            {
                **base,
                "passed": passed,
                "message": message,
                "mismatch": mismatch,
                "cycles": cycles,
                "tb_cycles": tb_cycles,
                "model_cycles": case["model_cycles"],
            }
        )
        write_results(job, results)
        if not passed:
            break  # later cases would start from an inconsistent state
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed[0]["message"]
