"""Host cost of a device in a Ray actor (:class:`~tessera.host.ray_pool.RayDevice`) vs in-process.

On a local Ray cluster (this machine), for the FPGA emulator in-process and in an actor:

1. per-op dispatch: host wall time per no-op, one ``Device.run`` waited for at a time (round trip)
   and per op of a chain run by ``run_graph`` (the dispatch cost a placed model pays per op),
   measured as in ``partition_quality.py``; and Ray's floor, one bare actor call;
2. transfers: one ``copy_in`` plus ``copy_out`` round trip of int64 arrays of a few sizes;
3. a model: wall time of one M3ViT batch (8 images, one task) on an FPGA-only session, warm.

Usage::

    python benchmarks/ray_overhead.py [--ops 1000] [--no-session] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import cloudpickle
import numpy as np
import partition_quality  # the no-op and the dispatch measurement, shared
import ray

from tessera.host.device import Device
from tessera.host.fpga import FpgaEmulator
from tessera.host.ray_pool import ray_devices
from tessera.host.session import Session

# The no-op is defined in a script, which Ray workers cannot import: send it by value.
cloudpickle.register_pickle_by_value(partition_quality)

SIZES = (1 << 10, 1 << 16, 1 << 20, 1 << 24)  # bytes


def transfer_round_trip(device: Device, nbytes: int, repeats: int) -> float:
    """Median microseconds of one copy in + copy out of ``nbytes`` of int64."""
    x = np.arange(nbytes // 8, dtype=np.int64)
    times = []
    for _ in range(repeats + 1):  # the first one warms up
        t0 = time.perf_counter()
        out = device.copy_out(device.copy_in(x).result()).result()
        times.append(time.perf_counter() - t0)
    if not np.array_equal(out, x):
        raise AssertionError(f"{device.name} changed the data of a {nbytes} B round trip")
    return 1e6 * statistics.median(times[1:])


def session_batch(device: Device, qm: Any, images: Any, repeats: int) -> dict[str, Any]:
    """Median wall seconds of one warm batch on an FPGA-only session, and the logits."""
    session = Session(qm, [device])
    first = time.perf_counter()
    logits = session.run(images, 0)  # plans (two profiling runs) and ships the ops
    first = time.perf_counter() - first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        again = session.run(images, 0)
        times.append(time.perf_counter() - t0)
        if not np.array_equal(again, logits):
            raise AssertionError(f"{device.name} gave other logits on a repeat")
    ops = len(session.graph(0).nodes)
    return {"first_run_s": first, "batch_s": statistics.median(times), "ops": ops, "logits": logits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000, help="ops per dispatch measurement")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of transfers / batches")
    parser.add_argument("--no-session", action="store_true", help="skip the M3ViT batch")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    (remote,) = ray_devices(["fpga:emu"], num_cpus=1)
    startup = time.perf_counter() - t0
    print(f"local Ray cluster and one actor started in {startup:.1f} s")
    devices: dict[str, Device] = {"local": FpgaEmulator(), "ray": remote}
    figures: dict[str, Any] = {"startup_s": startup, "dispatch": {}, "transfer_us": {}}
    # Ray's own floor: one actor method call that does nothing, waited for.
    for _ in range(50):
        remote.resident()
    t0 = time.perf_counter()
    for _ in range(args.ops):
        remote.resident()
    figures["ray_call_us"] = 1e6 * (time.perf_counter() - t0) / args.ops
    print(f"  ray: {figures['ray_call_us']:8.1f} us per bare actor call (Ray's floor)")
    for where, device in devices.items():
        d = partition_quality.dispatch_overhead(device, args.ops)
        figures["dispatch"][where] = d
        print(
            f"{where:>5}: {d['round_trip_us']:8.1f} us per op round trip, "
            f"{d['graph_us']:8.1f} us per op in a graph"
        )
    for where, device in devices.items():
        row = {n: transfer_round_trip(device, n, args.repeats) for n in SIZES}
        figures["transfer_us"][where] = row
        cells = ", ".join(f"{n >> 10} KiB {us:.0f} us" for n, us in row.items())
        print(f"{where:>5}: copy in + out round trip: {cells}")
    if not args.no_session:
        from tessera.models.m3vit import digits_tasks, load_m3vit
        from tessera.models.m3vit_quant import quantize_m3vit

        model, cfg = load_m3vit()
        train, test = digits_tasks()
        qm = quantize_m3vit(model, cfg, train.images[:128], "int8")
        images = test.images[:8]
        batches = {w: session_batch(d, qm, images, args.repeats) for w, d in devices.items()}
        if not np.array_equal(batches["local"]["logits"], batches["ray"]["logits"]):
            raise AssertionError("the remote FPGA's logits differ from the local one's")
        figures["m3vit_batch"] = {}
        for where, b in batches.items():
            b.pop("logits")
            figures["m3vit_batch"][where] = b
            print(
                f"{where:>5}: M3ViT batch of 8 ({b['ops']} ops): {1e3 * b['batch_s']:.1f} ms "
                f"warm, first run (planning, op shipping) {b['first_run_s']:.2f} s"
            )
    for device in devices.values():
        device.close()
    ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
