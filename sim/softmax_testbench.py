"""cocotb testbench of ``OnlineSoftmax`` (run through :func:`tessera.sim.softmax.simulate_softmax`).

Reads a job (JSON: unit config + cases, each with an ``.npz`` of the rows' logits, their lengths
and the golden probabilities) from ``$TESSERA_JOB``. For every case it sends each row as one
``tlast``-terminated frame with cocotbext-axi's ``AxiStreamSource`` on ``x_`` (random idle
cycles), receives the rows with ``AxiStreamSink`` on ``p_`` (random back-pressure), checks that
every row comes back whole (``tlast`` on its last element) and that every probability matches the
golden model bit for bit, that the ``overflow`` flag stayed low, and counts the cycles from the
first beat offered to the last beat accepted. Results go to the job's ``results`` JSON file; the
test fails if any case fails.
"""

from __future__ import annotations

from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from tessera.models.softmax import SoftmaxConfig, pack_logits, unpack_probabilities
from tessera.rtl.softmax import stream_layout
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results


def _first_mismatch(
    got: list[np.ndarray], expected: list[np.ndarray], logits: list[np.ndarray]
) -> dict[str, Any] | None:
    """The first differing probability in stream order (row, index in the row), else ``None``.

    A row that came back shorter or longer reports its first missing or extra element.
    """
    for row, (g, w) in enumerate(zip(got, expected, strict=False)):
        n = min(len(g), len(w))
        diff = np.flatnonzero(g[:n] != w[:n])
        if diff.size:
            i = int(diff[0])
            return {
                "row": row,
                "index": i,
                "logit": int(logits[row][i]),
                "expected": int(w[i]),
                "got": int(g[i]),
            }
        if len(g) != len(w):
            return {
                "row": row,
                "index": n,
                "logit": int(logits[row][n]) if n < len(w) else None,
                "expected": int(w[n]) if n < len(w) else None,
                "got": int(g[n]) if n < len(g) else None,
            }
    return None


@cocotb.test()
async def softmax_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = SoftmaxConfig.from_dict(job["config"])
    latency = stream_layout(cfg)["latency"]
    await reset_dut(dut)
    source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "x_"), dut.clk, dut.rst)
    sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "p_"), dut.clk, dut.rst)
    for component in (source, sink):
        component.log.setLevel("WARNING")

    results: list[dict[str, Any]] = []
    for case in job["cases"]:
        data = np.load(case["data"])
        bounds = np.cumsum(data["lengths"])[:-1]
        logits = np.split(data["logits"], bounds)
        expected = np.split(data["expected"], bounds)
        set_stalls([(source, case["idle"]), (sink, case["backpressure"])], case["seed"])

        await RisingEdge(dut.clk)
        start_ns = cocotb.utils.get_sim_time("ns")
        for row in logits:
            source.send_nowait(AxiStreamFrame(pack_logits(row, cfg)))

        async def receive_all(count: int = len(logits)) -> list[bytes]:
            return [bytes((await sink.recv(compact=False)).tdata) for _ in range(count)]

        total = int(data["lengths"].sum())
        # Short rows are paced by the divider (about recip_bits cycles per row).
        ideal = total + len(logits) * (cfg.recip_bits + 2) + latency
        slack = 1.0 / max(0.05, (1 - case["idle"]) * (1 - case["backpressure"]))
        limit_cycles = int(4 * slack * ideal) + 1000
        message = "ok"
        mismatch = None
        cycles = 0
        try:
            received = await with_timeout(receive_all(), limit_cycles * CLOCK_NS, "ns")
        except SimTimeoutError:
            received = None
            message = f"timeout: not all {len(logits)} rows back within {limit_cycles} cycles"
        if received is not None:
            cycles = round((cocotb.utils.get_sim_time("ns") - start_ns) / CLOCK_NS)
            got = [unpack_probabilities(frame, cfg) for frame in received]
            mismatch = _first_mismatch(got, expected, logits)
            if mismatch is not None:
                message = (
                    f"first mismatch at row {mismatch['row']}, index {mismatch['index']} "
                    f"(logit {mismatch['logit']}): expected {mismatch['expected']}, "
                    f"got {mismatch['got']}"
                )
            elif int(dut.overflow.value):
                message = "overflow flag set although no row exceeds max_len"
            elif not source.empty():
                message = "input beats left unconsumed"
        passed = message == "ok"
        dut._log.info(
            "case %s: %s, %d cycles for %d rows, %d elements",
            case["name"],
            message,
            cycles,
            len(logits),
            total,
        )
        results.append(
            {
                "name": case["name"],
                "passed": passed,
                "message": message,
                "mismatch": mismatch,
                "cycles": cycles,
                "rows": len(logits),
                "elements": total,
            }
        )
        write_results(job, results)
        if not passed:
            break  # later cases would start from an inconsistent state
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed[0]["message"]
