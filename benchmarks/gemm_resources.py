"""Yosys resources of TemporalGemm for several array shapes and FPGA families.

    python benchmarks/gemm_resources.py [--arrays 4x4,8x8] [--families xc7,xcup] [--json out.json]

Results are cached by content hash and Yosys version (see ``tessera.estimators.synthesis``).
"""

from __future__ import annotations

import argparse
import json
import sys

from tessera.estimators.synthesis import synthesize
from tessera.models.gemm import GemmConfig
from tessera.rtl.temporal_gemm import TOP_NAME, generate_gemm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", default="4x4,8x8")
    parser.add_argument("--families", default="xc7,xcup")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    rows_out = []
    header = (
        f"{'array':>6} {'family':>6} {'LUT':>7} {'FF':>7} {'DSP':>5} {'BRAM':>5} "
        f"{'carry':>6} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    for item in args.arrays.split(","):
        rows, cols = (int(v) for v in item.split("x"))
        verilog = generate_gemm(GemmConfig(rows=rows, cols=cols))["verilog"]
        for family in args.families.split(","):
            res = synthesize(verilog, TOP_NAME, family)
            rows_out.append({"array": item, **res.to_dict()})
            print(
                f"{item:>6} {family:>6} {res.lut:>7} {res.ff:>7} {res.dsp:>5} {res.bram:>5} "
                f"{res.carry:>6} {res.seconds:>8.1f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows_out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
