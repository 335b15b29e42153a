"""cocotb test: :class:`~tessera.host.driver.GemmDriver` on the ``TemporalGemm`` RTL.

The driver talks to :class:`~tessera.host.sim_board.CocotbBoard`; the test is run by
:func:`~tessera.host.sim_board.run_gemm_driver`.
"""

from __future__ import annotations

from typing import Any

import cocotb
import numpy as np
from cocotb.task import bridge

from tessera.host.driver import GemmDriver
from tessera.host.sim_board import CocotbBoard
from tessera.models.gemm import GemmConfig, Requant
from tessera.sim.harness import load_job, reset_dut, set_stalls, write_results


@cocotb.test()
async def gemm_driver_program(dut: Any) -> None:
    """Run the job's GEMMs with the board driver, from a blocking thread."""
    job = load_job()
    cfg = GemmConfig.from_dict(job["config"])
    await reset_dut(dut)
    board = CocotbBoard(dut, inputs=("a", "b"), outputs=("c",))
    set_stalls(
        [
            (board.sources["a"], job["idle"]),
            (board.sources["b"], job["idle"]),
            (board.sinks["c"], job["backpressure"]),
        ],
        seed=1,
    )

    def program() -> list[dict[str, Any]]:
        driver = GemmDriver(board, cfg, timeout=1e-3)
        driver.check_identity()
        results: list[dict[str, Any]] = []
        for case in job["cases"]:
            data = np.load(case["data"])
            rq = None if case["requant"] is None else Requant(*case["requant"])
            try:
                c = driver.run(data["a"], data["b"], rq)
            except Exception as exc:  # recorded, so the caller sees which problem failed
                results.append({"passed": False, "message": str(exc), "cycles": 0})
                break
            np.save(case["out"], c)
            results.append({"passed": True, "message": "ok", "cycles": driver.last_cycles})
            write_results(job, results)
        return results

    results = await bridge(program)()
    write_results(job, results)
    assert all(r["passed"] for r in results), results[-1]["message"]
