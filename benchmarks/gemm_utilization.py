"""MAC utilisation of TemporalGemm measured in RTL simulation (cocotb + Verilator).

For each array shape and GEMM size: measured cycles (the engine's CYCLES register), ideal cycles
M*N*K/(rows*cols), utilisation, the analytic model's cycles, and simulation speed. Every run is
also checked bit-exactly against the golden model.

    python benchmarks/gemm_utilization.py [--arrays 4x4,8x8,16x16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tessera.estimators.cycles import gemm_cycles
from tessera.models.gemm import GemmConfig, Requant
from tessera.sim.gemm import GemmCase, simulate_gemm

DEFAULT_SHAPES = "64x64x64,128x128x128,256x256x256,129x77x200"


def _pairs(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", default="4x4,8x8,16x16", help="rows x cols list")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="MxNxK list")
    parser.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)

    rows_out = []
    header = (
        f"{'array':>6} {'GEMM':>12} {'cycles':>9} {'ideal':>10} {'util %':>7} "
        f"{'model':>9} {'in B/cyc':>8} {'bit-exact':>9}"
    )
    print(header)
    print("-" * len(header))
    for rows, cols in _pairs(args.arrays):
        cfg = GemmConfig(rows=rows, cols=cols)
        shapes = _pairs(args.shapes)
        cases = [
            GemmCase(m, n, k, requant=Requant(1 << 30, 40), seed=i)
            for i, (m, n, k) in enumerate(shapes)
        ]
        t0 = time.perf_counter()
        results = simulate_gemm(cfg, cases, sim=args.sim)
        seconds = time.perf_counter() - t0
        for (m, n, k), res in zip(shapes, results, strict=True):
            model = gemm_cycles(m, n, k, cfg)
            row = {
                "array": f"{rows}x{cols}",
                "m": m,
                "n": n,
                "k": k,
                "cycles": res.cycles,
                "ideal_cycles": res.ideal_cycles,
                "utilization": res.utilization,
                "model_cycles": model.cycles,
                "operand_bytes": model.operand_bytes,
                "result_bytes": model.result_bytes,
                "passed": res.passed,
                "simulator": args.sim,
            }
            rows_out.append(row)
            print(
                f"{row['array']:>6} {f'{m}x{n}x{k}':>12} {res.cycles:>9} "
                f"{res.ideal_cycles:>10.0f} {100 * res.utilization:>7.2f} {model.cycles:>9} "
                f"{model.operand_bytes / res.cycles:>8.2f} {'yes' if res.passed else 'NO':>9}"
            )
            sys.stdout.flush()
        total = sum(r.cycles for r in results)
        print(
            f"{'':>6} simulated {total} cycles in {seconds:.1f} s with cocotb + {args.sim} "
            f"({total / seconds / 1000:.1f} k cycles/s, build included)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows_out, f, indent=1)
    return 0 if all(r["passed"] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
