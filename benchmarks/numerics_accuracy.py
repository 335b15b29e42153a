"""Accuracy of the integer units against float references (torch / float64 numpy).

    python benchmarks/numerics_accuracy.py [--json out.json] [--samples N]

For each unit at its default configuration, over dense sweeps and random tensors: the maximum and
mean absolute error of the bit-exact golden model (what the RTL computes) against the float
reference, in real units and in output LSBs. GELU is also compared with the tanh approximation and
with a plain look-up table of the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tessera.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    requant_for_scale,
)
from tessera.models.gelu import (
    GeluConfig,
    gelu,
    gelu_float,
    gelu_plain_lut,
    gelu_tanh_float,
    quantize_input,
)
from tessera.models.layernorm import LayerNormConfig, layernorm
from tessera.models.softmax import SoftmaxConfig, exp_neg, softmax

Row = dict[str, Any]


def _row(unit: str, case: str, got: np.ndarray, ref: np.ndarray, lsb: float) -> Row:
    err = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    return {
        "unit": unit,
        "case": case,
        "elements": int(err.size),
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "max_lsb": float(err.max() / lsb),
        "mean_lsb": float(err.mean() / lsb),
    }


def softmax_rows(rng: np.random.Generator, samples: int) -> list[Row]:
    cfg = SoftmaxConfig()
    lsb = 2.0**-cfg.out_frac
    rows = []
    d = -np.arange(0, 1 << cfg.in_bits, dtype=np.int64)
    rows.append(
        _row(
            "exp_neg",
            f"every difference 0 .. -{(1 << cfg.in_bits) - 1} LSB",
            exp_neg(d, cfg) / 2.0**cfg.exp_frac,
            np.exp(d / 2.0**cfg.in_frac),
            2.0**-cfg.exp_frac,
        )
    )
    for length in (1, 16, 129, cfg.max_len):
        for sigma in (1.0, 4.0, 16.0):
            x = cfg.quantize_logits(rng.normal(0.0, sigma, size=(samples, length)))
            ref = torch.softmax(torch.from_numpy(x / 2.0**cfg.in_frac), dim=-1).numpy()
            got = softmax(x, cfg) * lsb
            rows.append(_row("softmax", f"L={length} N(0,{sigma:g}) logits", got, ref, lsb))
    spike = np.zeros((samples, 129), dtype=np.int64)
    spike[np.arange(samples), rng.integers(0, 129, samples)] = (1 << (cfg.in_bits - 1)) - 1
    rows.append(
        _row(
            "softmax",
            "L=129 one huge logit",
            softmax(spike, cfg) * lsb,
            torch.softmax(torch.from_numpy(spike / 2.0**cfg.in_frac), dim=-1).numpy(),
            lsb,
        )
    )
    equal = np.full((4, 129), 77, dtype=np.int64)
    rows.append(_row("softmax", "L=129 all equal", softmax(equal, cfg) * lsb, 1 / 129, lsb))
    return rows


def gelu_rows(rng: np.random.Generator, samples: int) -> list[Row]:
    cfg = GeluConfig()
    lsb = 2.0**-cfg.in_frac
    rows = []
    codes = np.arange(-8 << cfg.in_frac, (8 << cfg.in_frac) + 1, dtype=np.int64)
    x = codes * lsb
    ref = gelu_float(x)
    sweep = f"every code in [-8, 8] ({codes.size})"
    n = cfg.rom_entries
    rows.append(_row("gelu", f"ROM {n} + interp, {sweep}", gelu(codes, cfg) * lsb, ref, lsb))
    rows.append(_row("gelu", f"plain LUT {n}, {sweep}", gelu_plain_lut(codes, cfg) * lsb, ref, lsb))
    rows.append(_row("gelu", f"tanh approximation (float), {sweep}", gelu_tanh_float(x), ref, lsb))
    rnd = quantize_input(rng.normal(0.0, 2.0, size=samples * 16), cfg)
    ref = gelu_float(rnd * lsb)
    rows.append(_row("gelu", "ROM, N(0,2) activations", gelu(rnd, cfg) * lsb, ref, lsb))
    return rows


def layernorm_rows(rng: np.random.Generator, samples: int) -> list[Row]:
    cfg = LayerNormConfig()
    rows = []
    in_lsb, p_lsb, out_lsb = 2.0**-cfg.in_frac, 2.0**-cfg.param_frac, 2.0**-cfg.out_frac
    p_hi = (1 << (cfg.param_bits - 1)) - 1
    for label, scale, offset in (
        ("N(0,1) rows", 1.0, 0.0),
        ("N(3,0.5) rows", 0.5, 3.0),
        ("N(0,20) rows", 20.0, 0.0),
    ):
        x = np.floor(rng.normal(offset, scale, size=(samples, cfg.dim)) / in_lsb + 0.5)
        x = np.clip(x, -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1).astype(np.int64)
        gamma = np.clip(np.floor(rng.normal(1.0, 0.2, cfg.dim) / p_lsb + 0.5), -p_hi, p_hi)
        beta = np.clip(np.floor(rng.normal(0.0, 0.2, cfg.dim) / p_lsb + 0.5), -p_hi, p_hi)
        gamma, beta = gamma.astype(np.int64), beta.astype(np.int64)
        ref = torch.nn.functional.layer_norm(
            torch.from_numpy(x * in_lsb),
            (cfg.dim,),
            torch.from_numpy(gamma * p_lsb),
            torch.from_numpy(beta * p_lsb),
            eps=cfg.eps,
        ).numpy()
        got = layernorm(x, gamma, beta, cfg) * out_lsb
        rows.append(_row("layernorm", f"dim={cfg.dim} {label}", got, ref, out_lsb))
    return rows


def attention_rows(rng: np.random.Generator, samples: int) -> list[Row]:
    cfg = AttentionConfig()
    rows = []
    seq = 129
    runs = max(1, samples // 64)
    shape = (runs, cfg.heads, seq, cfg.head_dim)
    # int8 queries and keys of N(0, 1) activations at 1/32 per step; uniform int8 values.
    q, k = (np.clip(np.round(rng.normal(0, 32, shape)), -128, 127).astype(np.int8) for _ in "qk")
    v = rng.integers(-128, 128, size=shape, dtype=np.int8)
    scale = 1.0 / np.sqrt(cfg.head_dim) / 32.0**2
    for mask in (
        AttentionMask(),
        AttentionMask("causal"),
        AttentionMask("lambda", sink=4, window=32),
    ):
        requant = requant_for_scale(scale, cfg)
        got = np.stack([attention(*t, cfg, requant, mask) for t in zip(q, k, v, strict=True)])
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(t.astype(np.float64)) for t in (q, k, v)),
            attn_mask=torch.from_numpy(mask.visible(seq)),
            scale=scale,
        ).numpy()
        label = f"S={seq} D={cfg.head_dim} mask={mask.kind} ({runs} runs)"
        rows.append(_row("attention", label, got, ref, 1.0))
    return rows


SECTIONS: dict[str, Callable[[np.random.Generator, int], list[Row]]] = {
    "softmax": softmax_rows,
    "gelu": gelu_rows,
    "layernorm": layernorm_rows,
    "attention": attention_rows,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="rows per random case")
    parser.add_argument("--units", default=",".join(SECTIONS), help="comma-separated units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows: list[Row] = []
    header = (
        f"{'unit':<10} {'case':<48} {'max abs':>10} {'mean abs':>10} {'max LSB':>8} {'mean LSB':>8}"
    )
    print(header)
    print("-" * len(header))
    for unit in args.units.split(","):
        if unit not in SECTIONS:
            parser.error(f"unknown unit {unit!r}: choose from {', '.join(SECTIONS)}")
        for row in SECTIONS[unit](rng, args.samples):
            rows.append(row)
            print(
                f"{row['unit']:<10} {row['case'][:48]:<48} {row['max_abs']:>10.3g} "
                f"{row['mean_abs']:>10.3g} {row['max_lsb']:>8.2f} {row['mean_lsb']:>8.3f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
