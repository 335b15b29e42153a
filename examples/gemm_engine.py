"""Generate a 4x4 TemporalGemm, run an int8 GEMM on its RTL and compare with the golden model.

python examples/gemm_engine.py [--sim icarus|verilator]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from tessera.estimators.cycles import gemm_cycles
from tessera.models.gemm import GemmConfig, Requant, gemm
from tessera.models.rounding import quantize_multiplier
from tessera.rtl.temporal_gemm import generate_gemm
from tessera.sim.gemm import GemmCase, simulate_gemm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", default="icarus", choices=["icarus", "verilator"])
    args = parser.parse_args()

    cfg = GemmConfig(rows=4, cols=4)
    with tempfile.TemporaryDirectory() as out:
        files = generate_gemm(cfg, out)["files"]
        print(f"generated {len(files)} files for {cfg.short_name}")

    # Scale int32 accumulators of a 24-long dot product back to int8: real scale 1/600.
    multiplier, shift = quantize_multiplier(1 / 600)
    case = GemmCase(m=10, n=6, k=24, requant=Requant(multiplier, shift), seed=42)
    a, b = case.operands()
    c = gemm(a, b, cfg, case.requant)
    exact = a.astype(np.int64) @ b.astype(np.int64) / 600
    print(f"golden int8 output vs float: max |error| = {np.abs(c - exact).max():.3f} LSB")

    (result,) = simulate_gemm(cfg, [case], sim=args.sim)
    model = gemm_cycles(case.m, case.n, case.k, cfg)
    print(
        f"RTL on {args.sim}: {'PASS' if result.passed else 'FAIL'} ({result.message}), "
        f"{result.cycles} cycles (model {model.cycles}), "
        f"utilization {100 * result.utilization:.1f} %"
    )


if __name__ == "__main__":
    main()
