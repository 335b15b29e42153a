"""cocotb testbench of ``LayerNorm`` (run through :func:`tessera.sim.layernorm.simulate_layernorm`).

Reads a job (JSON: unit config + cases, each with an ``.npz`` of raw rows, ``gamma``, ``beta`` and
the golden outputs) from ``$TESSERA_JOB``. For every case it loads the parameter packet with an
``AxiStreamSource`` on ``params_`` (waiting until it is taken), sends the rows with an
``AxiStreamSource`` on ``x_`` (random idle cycles), receives one frame per row with an
``AxiStreamSink`` on ``y_`` (random back-pressure), and compares in order with the golden outputs.
Results go to the job's ``results`` JSON file; the test fails if any case fails.
"""

from __future__ import annotations

from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from tessera.models.layernorm import LayerNormConfig, pack_params, pack_rows, unpack_outputs
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results


def _now_cycles() -> float:
    return cocotb.utils.get_sim_time("ns") / CLOCK_NS


async def _first_output(dut: Any) -> float:
    """Cycle time of the first accepted ``y`` beat."""
    while True:
        await RisingEdge(dut.clk)
        if dut.y__tvalid.value == 1 and dut.y__tready.value == 1:
            return _now_cycles()


def _compare(
    frames: list[np.ndarray], expected: np.ndarray, cfg: LayerNormConfig
) -> dict[str, Any] | None:
    """First mismatch in stream order: ``{"row", "column", "expected", "got", "reason"}``."""
    for row, got in enumerate(frames):
        want = expected[row]
        for col in range(min(len(got), cfg.dim)):
            if got[col] != want[col]:
                return {
                    "row": row,
                    "column": col,
                    "expected": int(want[col]),
                    "got": int(got[col]),
                    "reason": "value",
                }
        if len(got) != cfg.dim:
            col = min(len(got), cfg.dim)
            return {
                "row": row,
                "column": col,
                "expected": int(want[col]) if col < cfg.dim else None,
                "got": int(got[col]) if col < len(got) else None,
                "reason": f"tlast after {len(got)} beats, not {cfg.dim}",
            }
    return None


@cocotb.test()
async def layernorm_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = LayerNormConfig.from_dict(job["config"])
    await reset_dut(dut)

    x_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "x_"), dut.clk, dut.rst)
    p_src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "params_"), dut.clk, dut.rst)
    y_sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "y_"), dut.clk, dut.rst)
    for component in (x_src, p_src, y_sink):
        component.log.setLevel("WARNING")

    results = []
    for case in job["cases"]:
        data = np.load(case["data"])
        x, expected = data["x"], data["expected"]
        rows = case["rows"]
        set_stalls(
            [(x_src, case["idle"]), (p_src, case["idle"]), (y_sink, case["backpressure"])],
            case["seed"],
        )
        slack = 1.0 / max(1e-3, (1 - case["idle"]) * (1 - case["backpressure"]))
        limit = int(4 * slack * (rows + 2) * (cfg.dim + 40)) + 1000

        # The whole packet is taken before any row is offered, so every row uses it.
        p_src.send_nowait(AxiStreamFrame(pack_params(data["gamma"], data["beta"], cfg)))
        try:
            await with_timeout(p_src.wait(), limit * CLOCK_NS, "ns")
        except SimTimeoutError:
            message = f"timeout: parameter packet not taken within {limit} cycles"
            results.append(_failed(case, message))
            write_results(job, results)
            break

        await RisingEdge(dut.clk)
        start = _now_cycles()
        first = cocotb.start_soon(_first_output(dut))
        for r in range(rows):
            x_src.send_nowait(AxiStreamFrame(pack_rows(x[r], cfg)))
        frames: list[np.ndarray] = []
        message = "ok"
        try:
            for _ in range(rows):
                frame = await with_timeout(y_sink.recv(compact=False), limit * CLOCK_NS, "ns")
                frames.append(unpack_outputs(bytes(frame.tdata), cfg))
        except SimTimeoutError:
            message = f"timeout: {len(frames)} of {rows} rows out within {limit} cycles"
        end = _now_cycles()
        latency = round(first.result() - start) if first.done() else 0
        if not first.done():
            first.cancel()

        mismatch = _compare(frames, expected, cfg)
        error = int(dut.error.value)
        if mismatch is not None:
            message = (
                f"first mismatch at row {mismatch['row']}, column {mismatch['column']}: "
                f"expected {mismatch['expected']}, got {mismatch['got']} ({mismatch['reason']})"
            )
        elif message == "ok" and error:
            message = "error output set (tlast disagreed with the dim-beat count)"
        elif message == "ok" and not x_src.empty():
            message = "input beats left unconsumed"
        passed = message == "ok"
        cycles = round(end - start)
        dut._log.info("case %s: %s, %d cycles, latency %d", case["name"], message, cycles, latency)
        results.append(
            {
                "name": case["name"],
                "passed": passed,
                "message": message,
                "mismatch": mismatch,
                "cycles": cycles,
                "latency": latency,
            }
        )
        write_results(job, results)
        if not passed:
            break  # later cases would start from an inconsistent state
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed[0]["message"]


def _failed(case: dict[str, Any], message: str) -> dict[str, Any]:
    return {
        "name": case["name"],
        "passed": False,
        "message": message,
        "mismatch": None,
        "cycles": 0,
        "latency": 0,
    }
