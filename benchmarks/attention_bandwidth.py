"""Off-chip bandwidth and MAC utilisation of AttentionEngine as the query parallelism P grows.

For each P: cycles measured in RTL simulation (cocotb + Verilator, the engine's CYCLES register,
every output checked bit-exactly against the golden model), the cycle model's figure, MAC
utilisation (2 * S * S * D useful MACs over P * L MACs per cycle), off-chip bytes read and
written, and bytes per cycle. With K and V streamed once per group of P query rows, cycles fall
about as 1/P while the bytes moved per cycle stay about constant.

    python benchmarks/attention_bandwidth.py [--parallelism 1,2,4,8,16] [--json out.json]
    python benchmarks/attention_bandwidth.py --quick      # a small engine, seconds on Icarus
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tessera.models.attention import AttentionConfig, attention_traffic
from tessera.sim.attention import AttentionCase, simulate_attention


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", default=None, help="P list (default 1,2,4,8,16)")
    parser.add_argument("--seq-len", type=int, default=None, help="S (default 129)")
    parser.add_argument("--head-dim", type=int, default=None, help="D (default 64)")
    parser.add_argument("--lanes", type=int, default=8, help="L, int8 lanes per beat")
    parser.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument(
        "--quick", action="store_true", help="small run: S=9, D=8, L=4, P=1,2,4 (seconds)"
    )
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)

    if args.quick:
        seq_len, head_dim, lanes, parallelism = 9, 8, 4, "1,2,4"
    else:
        seq_len, head_dim, lanes, parallelism = 129, 64, args.lanes, "1,2,4,8,16"
    seq_len = args.seq_len or seq_len
    head_dim = args.head_dim or head_dim
    parallelism = args.parallelism or parallelism
    max_seq = max(16, 1 << (seq_len - 1).bit_length())

    header = (
        f"{'P':>3} {'groups':>6} {'cycles':>8} {'model':>8} {'MAC util %':>10} "
        f"{'read B':>9} {'write B':>8} {'B/cycle':>8} {'K+V B/cyc':>9} {'speed-up':>8} "
        f"{'bit-exact':>9}"
    )
    print(f"attention S={seq_len}, D={head_dim}, L={lanes}, {args.sim}")
    print(header)
    print("-" * len(header))
    rows = []
    first_cycles = None
    for p in (int(v) for v in parallelism.split(",") if v):
        cfg = AttentionConfig(head_dim=head_dim, lanes=lanes, parallelism=p, max_seq=max_seq)
        t0 = time.perf_counter()
        (res,) = simulate_attention(cfg, [AttentionCase(seq_len, seed=p)], sim=args.sim)
        seconds = time.perf_counter() - t0
        model = attention_traffic(seq_len, cfg)
        first_cycles = first_cycles or res.cycles
        row = {
            "parallelism": p,
            "seq_len": seq_len,
            "head_dim": head_dim,
            "lanes": lanes,
            "groups": model["groups"],
            "cycles": res.cycles,
            "model_cycles": model["cycles"],
            "mac_utilization": model["useful_macs"] / (cfg.macs * res.cycles),
            "read_bytes": model["read_bytes"],
            "write_bytes": model["write_bytes"],
            "bytes_per_cycle": (model["read_bytes"] + model["write_bytes"]) / res.cycles,
            "kv_bytes_per_cycle": (model["k_bytes"] + model["v_bytes"]) / res.cycles,
            "speedup": first_cycles / res.cycles,
            "passed": res.passed,
            "message": res.message,
            "simulator": args.sim,
            "seconds": seconds,
        }
        rows.append(row)
        print(
            f"{p:>3} {row['groups']:>6} {row['cycles']:>8} {row['model_cycles']:>8} "
            f"{100 * row['mac_utilization']:>10.2f} {row['read_bytes']:>9} "
            f"{row['write_bytes']:>8} {row['bytes_per_cycle']:>8.3f} "
            f"{row['kv_bytes_per_cycle']:>9.3f} {row['speedup']:>8.2f} "
            f"{'yes' if res.passed else 'NO':>9}"
        )
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
