"""Weight traffic and cycles of a task-level MoE layer with per-expert token queues vs without.

For a tiny M³ViT-like layer (dim 32, 4 experts of hidden 32, top-2, 17 tokens) and Edge-MoE's
(dim 192, 16 experts of hidden 384, top-2, 129 tokens), two tasks each: random float weights,
quantized to int8 with ``MoeWeights.from_float``, whose gates favour a different set of experts
per task (each task has its own preference profile over the experts, which tokens with a common
positive component pick up). Each task's tokens are routed by the bit-exact golden model
(``moe_layer``, checked equal to the token-by-token ``moe_layer_naive``), and ``moe_traffic``
reports the weight bytes loaded and the cycles on the shared ``rows x cols`` GEMM engine:

- queued: each expert with a non-empty queue is loaded once and runs its queue as one GEMM;
- naive: every token loads and runs each of its top-k experts on its own;
- engine: the whole run of the ``MoeEngine`` RTL, from its exact cycle model
  (``moe_engine_cycles``): token load, gate, per-token routing, expert fetches overlapped with
  the previous expert's compute, output. The queued and naive figures count weight loads and
  GEMM cycles only, added without overlap.

    python benchmarks/moe_weight_traffic.py [--bus-bytes 16] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace

import numpy as np

from tessera.estimators.moe_cycles import moe_engine_cycles
from tessera.models.moe import (
    DEFAULT_BUS_BYTES,
    MoeConfig,
    MoeWeights,
    moe_layer,
    moe_layer_naive,
    moe_traffic,
)

LAYERS = {
    "tiny": (MoeConfig(dim=32, experts=4, expert_hidden=32, top_k=2, tasks=2), 17),
    "edge-moe": (MoeConfig(dim=192, experts=16, expert_hidden=384, top_k=2, tasks=2), 129),
}


def skewed_layer(
    cfg: MoeConfig, tokens: int, seed: int, skew: float = 3.0
) -> tuple[MoeWeights, np.ndarray]:
    """Random float layer whose gates prefer different experts per task, quantized to int8.

    Tokens are ``N(0, 1) + 1``: the common component adds ``skew * preference[task, e]`` (times
    about 1) to expert ``e``'s logit, where each task's preferences are a shuffled ramp from 1
    down to 0. Returns the weights and the raw int8 tokens.
    """
    rng = np.random.default_rng(seed)
    d, e, h = cfg.dim, cfg.experts, cfg.expert_hidden
    preference = np.stack([rng.permutation(np.linspace(1.0, 0.0, e)) for _ in range(cfg.tasks)])
    gate = rng.normal(size=(cfg.tasks, d, e)) / math.sqrt(d)
    gate += skew * preference[:, None, :] / d  # summed over d features of mean 1
    xs = rng.normal(size=(tokens, d)) + 1.0
    weights = MoeWeights.from_float(
        cfg,
        gate=gate,
        w1=rng.normal(size=(e, d, h)) / math.sqrt(d),
        b1=0.1 * rng.normal(size=(e, h)),
        w2=rng.normal(size=(e, h, d)) / math.sqrt(h),
        b2=0.1 * rng.normal(size=(e, d)),
        calibration=xs,
    )
    return weights, weights.quantize_tokens(xs, cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bus-bytes", type=int, default=DEFAULT_BUS_BYTES, help="weight-load bytes per cycle"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random layers")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)

    header = (
        f"{'layer':<9} {'task':>4} {'loaded':>6} {'queue lengths':<34} {'queued B':>9} "
        f"{'naive B':>9} {'B ratio':>7} {'queued cyc':>10} {'naive cyc':>10} {'cyc ratio':>9} "
        f"{'engine cyc':>10} {'bit-exact':>9}"
    )
    print(f"MoE weight traffic, {args.bus_bytes}-byte weight bus")
    print(header)
    print("-" * len(header))
    rows = []
    for name, (cfg, tokens) in LAYERS.items():
        weights, x = skewed_layer(cfg, tokens, args.seed)
        for task in range(cfg.tasks):
            y, routing = moe_layer(x, weights, task, cfg)
            exact = bool(np.array_equal(y, moe_layer_naive(x, weights, task, cfg)))
            t = moe_traffic(routing, cfg, bus_bytes=args.bus_bytes)
            # The MoeEngine itself (ping-pong expert fetch, its pipeline): the exact cycle model.
            t["engine_cycles"] = moe_engine_cycles(routing, replace(cfg, bus_bytes=args.bus_bytes))[
                "cycles"
            ]
            lengths = routing.queue_lengths.tolist()
            row = {
                "layer": name,
                "config": cfg.to_dict(),
                "short_name": cfg.short_name,
                "task": task,
                "queue_lengths": lengths,
                "bit_exact": exact,
                "bus_bytes": args.bus_bytes,
                **t,
            }
            rows.append(row)
            print(
                f"{name:<9} {task:>4} {t['experts_loaded']:>3}/{cfg.experts:<2} "
                f"{' '.join(map(str, lengths)):<34} {t['queued_weight_bytes']:>9} "
                f"{t['naive_weight_bytes']:>9} {t['weight_bytes_ratio']:>7.2f} "
                f"{t['queued_cycles']:>10} {t['naive_cycles']:>10} {t['cycles_ratio']:>9.2f} "
                f"{t['engine_cycles']:>10} {'yes' if exact else 'NO':>9}"
            )
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
