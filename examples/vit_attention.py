"""Quantize one ViT attention head from torch, run it on the golden AttentionEngine model, compare
with torch's float attention, show how query parallelism P trades cycles for nothing in bandwidth,
and check the engine's RTL bit for bit.

python examples/vit_attention.py [--sim icarus|verilator]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from tessera.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    attention_traffic,
    requant_for_scale,
)
from tessera.models.quantize import QuantSpec, calibrate, dequantize, quantize
from tessera.sim.attention import AttentionCase, simulate_attention

TOKENS, EMBED, HEAD_DIM = 129, 192, 64  # Edge-MoE's token count and per-head width


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", default="icarus", choices=["icarus", "verilator"])
    args = parser.parse_args()

    # One head of a ViT block: q, k, v projections of layer-normalised tokens.
    torch.manual_seed(0)
    tokens = torch.nn.functional.layer_norm(torch.randn(TOKENS, EMBED), (EMBED,))
    proj = torch.nn.Linear(EMBED, 3 * HEAD_DIM)
    with torch.no_grad():
        q, k, v = proj(tokens).double().split(HEAD_DIM, dim=-1)

    # Symmetric per-tensor int8 for q, k, v; the logit scale goes into the score requantizer.
    spec = QuantSpec(bits=8, symmetric=True, granularity="tensor")
    params = [calibrate(t.numpy(), spec) for t in (q, k, v)]
    q8, k8, v8 = (
        quantize(t.numpy(), p).astype(np.int8) for t, p in zip((q, k, v), params, strict=True)
    )
    s_q, s_k = float(params[0].scale), float(params[1].scale)
    cfg = AttentionConfig(head_dim=HEAD_DIM, max_seq=256, parallelism=4, lanes=8)
    mask = AttentionMask("lambda", sink=4, window=32)
    requant = requant_for_scale(s_q * s_k / np.sqrt(HEAD_DIM), cfg)

    out8 = attention(q8[None], k8[None], v8[None], cfg, requant, mask)[0]
    out = dequantize(out8, params[2])
    visible = torch.from_numpy(mask.visible(TOKENS))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible).numpy()
    error = np.abs(out - ref).max() / float(params[2].scale)
    print(f"int8 attention vs torch float: max |error| = {error:.2f} LSB of v")

    print(" P  cycles  MAC util  read bytes  K+V bytes/cycle")
    for p in (1, 2, 4, 8):
        t = attention_traffic(TOKENS, dataclasses.replace(cfg, parallelism=p))
        print(
            f"{p:2d} {t['cycles']:7d} {100 * t['mac_utilization']:8.1f}% {t['read_bytes']:11d} "
            f"{t['kv_bytes_per_cycle']:16.2f}"
        )

    # The RTL of a narrower engine (quick to simulate) on a random case with the same mask.
    small = dataclasses.replace(cfg, head_dim=16)
    case = AttentionCase(33, seed=1, mask=mask, idle=0.2, backpressure=0.2)
    (result,) = simulate_attention(small, [case], sim=args.sim)
    print(
        f"RTL on {args.sim}: {'PASS' if result.passed else 'FAIL'} ({result.message}), "
        f"{result.cycles} cycles with stalls (model without stalls "
        f"{attention_traffic(33, small)['cycles']})"
    )


if __name__ == "__main__":
    main()
