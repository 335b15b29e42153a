"""Yosys resources of every engine the command line knows, at its default configuration.

    python benchmarks/unit_resources.py [--engines softmax,gelu] [--families xc7,xcup] [--json out]

Results are cached by content hash and Yosys version (see ``tessera.estimators.synthesis``).
"""

from __future__ import annotations

import argparse
import json
import sys

from tessera.cli.engines import ENGINES
from tessera.estimators.synthesis import synthesize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated names")
    parser.add_argument("--families", default="xc7,xcup")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    names = args.engines.split(",")
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(ENGINES)}")
    header = (
        f"{'engine':>10} {'config':>28} {'family':>6} {'LUT':>7} {'FF':>7} {'DSP':>5} "
        f"{'BRAM':>5} {'LUTRAM':>6} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name in names:
        spec = ENGINES[name]
        cfg = spec.config_class()()
        generated = spec.generator()(cfg, None)
        for family in args.families.split(","):
            res = synthesize(generated["verilog"], generated["top"], family)
            rows.append({"engine": name, "config": cfg.to_dict(), **res.to_dict()})
            print(
                f"{name:>10} {cfg.short_name[:28]:>28} {family:>6} {res.lut:>7} {res.ff:>7} "
                f"{res.dsp:>5} {res.bram:>5} {res.lutram:>6} {res.seconds:>8.1f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
