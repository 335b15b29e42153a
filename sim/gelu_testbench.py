"""cocotb testbench of ``GeluRom`` (run through :func:`tessera.sim.gelu.simulate_gelu`).

Reads a job (JSON: unit config + cases, each with an ``.npz`` of padded input codes and golden
outputs) from ``$TESSERA_JOB``. For every case it sends the inputs as ``tlast``-terminated frames
with cocotbext-axi's ``AxiStreamSource`` on ``x_`` (random idle cycles), receives them with
``AxiStreamSink`` on ``y_`` (random back-pressure), checks that every frame comes back whole
(``tlast`` passed through) and that every element matches the golden output bit for bit, and
counts the cycles from the first beat offered to the last beat accepted. Results go to the job's
``results`` JSON file; the test fails if any case fails.
"""

from __future__ import annotations

from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from tessera.models.gelu import GeluConfig, pack_beats, unpack_beats
from tessera.rtl.gelu import LATENCY
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results


def _first_mismatch(
    got: np.ndarray, expected: np.ndarray, inputs: np.ndarray, cfg: GeluConfig
) -> dict[str, Any] | None:
    """The first differing element in stream order (or a missing one), else ``None``."""
    n = min(len(got), len(expected))
    diff = np.flatnonzero(got[:n] != expected[:n])
    if diff.size:
        i = int(diff[0])
        received: int | None = int(got[i])
    elif len(got) < len(expected):
        i, received = n, None
    else:
        return None
    return {
        "index": i,
        "beat": i // cfg.lanes,
        "lane": i % cfg.lanes,
        "input": int(inputs[i]),
        "expected": int(expected[i]),
        "got": received,
    }


async def _receive(sink: AxiStreamSink, frames: int) -> list[bytes]:
    """The data of the next ``frames`` frames, in order."""
    return [bytes((await sink.recv(compact=False)).tdata) for _ in range(frames)]


@cocotb.test()
async def gelu_cases(dut: Any) -> None:
    """Run every case of the job on the DUT, in order, on one reset."""
    job = load_job()
    cfg = GeluConfig.from_dict(job["config"])
    await reset_dut(dut)
    source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "x_"), dut.clk, dut.rst)
    sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "y_"), dut.clk, dut.rst)
    for component in (source, sink):
        component.log.setLevel("WARNING")
    beat_bytes = cfg.beat_bits // 8

    results: list[dict[str, Any]] = []
    for case in job["cases"]:
        data = np.load(case["data"])
        inputs, expected = data["inputs"], data["expected"]
        frames = case["frames"]
        set_stalls([(source, case["idle"]), (sink, case["backpressure"])], case["seed"])

        await RisingEdge(dut.clk)
        start_ns = cocotb.utils.get_sim_time("ns")
        offset = 0
        for beats in frames:
            chunk = inputs[offset * cfg.lanes : (offset + beats) * cfg.lanes]
            source.send_nowait(AxiStreamFrame(pack_beats(chunk, cfg)))
            offset += beats

        total = sum(frames)
        slack = 1.0 / max(0.05, (1 - case["idle"]) * (1 - case["backpressure"]))
        limit_cycles = int(4 * slack * total) + 10 * LATENCY + 1000
        message = "ok"
        mismatch = None
        cycles = 0
        try:
            received = await with_timeout(
                _receive(sink, len(frames)), limit_cycles * CLOCK_NS, "ns"
            )
        except SimTimeoutError:
            received = None
            message = f"timeout: not all {len(frames)} frames back within {limit_cycles} cycles"
        if received is not None:
            cycles = round((cocotb.utils.get_sim_time("ns") - start_ns) / CLOCK_NS)
            sizes = [len(f) // beat_bytes for f in received]
            got = unpack_beats(b"".join(received), cfg)
            mismatch = _first_mismatch(got, expected, inputs, cfg)
            if mismatch is not None:
                message = (
                    f"first mismatch at element {mismatch['index']} (beat {mismatch['beat']}, "
                    f"lane {mismatch['lane']}): input {mismatch['input']}, expected "
                    f"{mismatch['expected']}, got {mismatch['got']}"
                )
            elif len(got) != len(expected):
                message = f"{len(got)} elements came back, expected {len(expected)}"
            elif sizes != frames:
                k = next(i for i, (a, b) in enumerate(zip(sizes, frames, strict=True)) if a != b)
                message = f"tlast misplaced: frame {k} has {sizes[k]} beats, expected {frames[k]}"
            elif not source.empty():
                message = "input beats left unconsumed"
        passed = message == "ok"
        dut._log.info("case %s: %s, %d cycles for %d beats", case["name"], message, cycles, total)
        results.append(
            {
                "name": case["name"],
                "passed": passed,
                "message": message,
                "mismatch": mismatch,
                "cycles": cycles,
                "beats": total,
            }
        )
        write_results(job, results)
        if not passed:
            break  # later cases would start from an inconsistent state
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed[0]["message"]
