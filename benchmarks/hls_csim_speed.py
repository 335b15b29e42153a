"""Speed of the HLS GEMM kernel in g++ C-simulation (ctypes), optionally next to RTL simulation.

For each array shape and GEMM size: wall time of one ``csim_gemm`` call (stream packing, kernel,
unpacking), MACs per second, the equivalent array cycles per second (``M*N*K / (rows*cols)`` per
second, comparable with the cycles/s that ``benchmarks/gemm_utilization.py`` reports for RTL
simulation), and the one-off library build time. Every result is checked bit-exactly against the
golden model. With ``--rtl`` the same cases also run on the RTL (cocotb + Verilator) for a
side-by-side wall time (one simulator run per case, start-up included, Verilator build excluded).

    python benchmarks/hls_csim_speed.py [--arrays 4x4,8x8,16x16] [--shapes 64x64x64,...]
                                        [--repeat 3] [--rtl] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from tessera.hls.csim import build_csim, csim_gemm
from tessera.models.gemm import GemmConfig, Requant, gemm
from tessera.sim.gemm import GemmCase

DEFAULT_SHAPES = "64x64x64,128x128x128,256x256x256,129x77x200"
REQUANT = Requant(1 << 30, 40)


def _triples(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", default="4x4,8x8,16x16", help="rows x cols list")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="MxNxK list")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (best is kept)")
    parser.add_argument("--rtl", action="store_true", help="also time RTL simulation (Verilator)")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)

    arrays = _triples(args.arrays)
    shapes = _triples(args.shapes)
    configs = [GemmConfig(rows=rows, cols=cols) for rows, cols in arrays]
    start = time.perf_counter()
    library = build_csim(configs)
    build_seconds = time.perf_counter() - start
    print(
        f"C-sim library for {len(configs)} configs: {build_seconds:.1f} s "
        f"({'cache hit' if library.cached else 'compiled'})"
    )
    header = (
        f"{'array':>6} {'GEMM':>12} {'csim s':>8} {'MMAC/s':>8} {'kcyc/s':>8} "
        f"{'rtl s':>8} {'speed-up':>8} {'bit-exact':>9}"
    )
    print(header)
    print("-" * len(header))
    rows_out = []
    for cfg in configs:
        cases = [GemmCase(m, n, k, requant=REQUANT, seed=i) for i, (m, n, k) in enumerate(shapes)]
        rtl_seconds: list[float | None] = [None] * len(cases)
        if args.rtl:
            from tessera.sim.gemm import simulate_gemm

            simulate_gemm(cfg, [GemmCase(1, 1, 1)], sim="verilator")  # build outside the timing
            for i, case in enumerate(cases):
                t0 = time.perf_counter()
                (result,) = simulate_gemm(cfg, [case], sim="verilator")
                rtl_seconds[i] = time.perf_counter() - t0 if result.passed else None
        for case, rtl in zip(cases, rtl_seconds, strict=True):
            a, b = case.operands()
            best = float("inf")
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                got = csim_gemm(cfg, a, b, case.requant, library=library)
                best = min(best, time.perf_counter() - t0)
            exact = bool(np.array_equal(got, gemm(a, b, cfg, case.requant)))
            macs = case.m * case.n * case.k
            cycles = macs / cfg.macs
            row = {
                "array": f"{cfg.rows}x{cfg.cols}",
                "m": case.m,
                "n": case.n,
                "k": case.k,
                "macs": macs,
                "csim_seconds": best,
                "macs_per_second": macs / best,
                "array_cycles_per_second": cycles / best,
                "rtl_seconds": rtl,
                "speedup_vs_rtl": rtl / best if rtl else None,
                "bit_exact": exact,
                "build_seconds": build_seconds,
                "build_cached": library.cached,
            }
            rows_out.append(row)
            rtl_text = f"{rtl:>8.2f} {rtl / best:>7.0f}x" if rtl else f"{'-':>8} {'-':>8}"
            print(
                f"{row['array']:>6} {f'{case.m}x{case.n}x{case.k}':>12} {best:>8.3f} "
                f"{macs / best / 1e6:>8.1f} {cycles / best / 1e3:>8.1f} {rtl_text} "
                f"{'yes' if exact else 'NO':>9}"
            )
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows_out, handle, indent=2)
    return 0 if all(r["bit_exact"] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
