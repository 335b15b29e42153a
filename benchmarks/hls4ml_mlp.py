"""hls4ml expert MLPs: C-simulation vs golden model vs float, compile and predict times.

For each MLP size and precision: converts with hls4ml (fresh compile, timed), runs the
C-simulation on random inputs, and reports hls4ml-vs-golden mismatches and max error (expected 0),
golden-vs-float max and mean error, compile time and predict time per sample.

Usage: ``python benchmarks/hls4ml_mlp.py [--json] [--samples N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from tessera.hls.hls4ml_bridge import convert_mlp, predict_mlp
from tessera.models.mlp import MlpPrecision, golden_mlp, mlp_float, mlp_from_torch

SIZES = ((16, 32, 16), (64, 128, 64), (128, 256, 128))
PRECISIONS = {
    "default": MlpPrecision(),
    "rounded": MlpPrecision(
        input="ap_fixed<16,6,AP_RND_CONV,AP_SAT>",
        weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
        bias="ap_fixed<16,6,AP_RND_CONV,AP_SAT>",
        accum="ap_fixed<32,12>",
        result="ap_fixed<16,6,AP_RND_CONV,AP_SAT>",
    ),
}


def expert(sizes: tuple[int, int, int], seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(sizes[0], sizes[1]), torch.nn.ReLU(), torch.nn.Linear(sizes[1], sizes[2])
    ).eval()


def measure(samples: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tessera-hls4ml-") as root:
        for sizes in SIZES:
            model = expert(sizes)
            layers = mlp_from_torch(model)
            x = np.random.default_rng(1).normal(size=(samples, sizes[0])).astype(np.float32)
            reference = mlp_float(x, layers)
            for name, precision in PRECISIONS.items():
                hls = convert_mlp(model, precision, root, reuse=False)
                start = time.perf_counter()
                got = predict_mlp(hls, x)
                predict_s = time.perf_counter() - start
                golden = golden_mlp(x, layers, precision)
                error = np.abs(golden - reference)
                rows.append(
                    {
                        "mlp": "x".join(map(str, sizes)),
                        "precision": name,
                        "mismatches": int(np.count_nonzero(got != golden)),
                        "hls_vs_golden_max": float(np.abs(got - golden).max()),
                        "golden_vs_float_max": float(error.max()),
                        "golden_vs_float_mean": float(error.mean()),
                        "compile_s": round(hls.compile_seconds, 2),
                        "predict_us_per_sample": round(predict_s / samples * 1e6, 1),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--samples", type=int, default=256, help="random inputs per MLP")
    args = parser.parse_args()
    rows = measure(args.samples)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = (
        f"{'mlp':<12} {'precision':<9} {'mismatch':>8} {'hls-gold':>9} {'gold-flt max':>12} "
        f"{'mean':>8} {'compile s':>9} {'predict us':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mlp']:<12} {r['precision']:<9} {r['mismatches']:>8} "
            f"{r['hls_vs_golden_max']:>9.2g} {r['golden_vs_float_max']:>12.4f} "
            f"{r['golden_vs_float_mean']:>8.4f} {r['compile_s']:>9.2f} "
            f"{r['predict_us_per_sample']:>10.1f}"
        )


if __name__ == "__main__":
    main()
