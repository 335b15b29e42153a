"""Held-out accuracy and per-layer error of the post-training-quantized M³ViT.

For each preset: per-task test accuracy of the float network, of the fake-quantized torch network
and of the golden integer network, and per layer the error of the dequantized integer activations
against the float ones (max and mean of ``|int - float| / max|float|`` over the test set).

Usage::

    python benchmarks/m3vit_accuracy.py [--preset int8 w4a8] [--calibration 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from tessera.models.m3vit import digits_tasks, evaluate, load_m3vit
from tessera.models.m3vit_quant import PRESETS, QuantM3ViT, float_trace, quantize_m3vit


def layer_errors(qm: QuantM3ViT, images: Any, task: int) -> dict[str, dict[str, float]]:
    """Relative error of each :meth:`QuantM3ViT.per_layer_outputs` entry against the float one.

    ``max_rel`` is ``max|int - float| / max|float|`` and ``mean_rel`` is
    ``mean|int - float| / mean|float|``, both over the whole tensor.
    """
    ints = qm.per_layer_outputs(images, task)
    floats = float_trace(qm.model, images, task)
    scales = qm.scales(task)
    out = {}
    for name, q in ints.items():
        ref = floats[name].double().numpy()
        err = np.abs(q * scales[name] - ref)
        out[name] = {
            "max_rel": float(err.max() / np.abs(ref).max()),
            "mean_rel": float(err.mean() / np.abs(ref).mean()),
        }
    return out


def run(presets: list[str], calibration: int) -> dict[str, Any]:
    """Accuracy table and per-layer errors for ``presets``."""
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    labels = test.labels.numpy()
    result: dict[str, Any] = {
        "config": cfg.short_name,
        "test_images": len(test),
        "calibration_images": calibration,
        "float": [evaluate(model, test, t) for t in range(cfg.num_tasks)],
        "presets": {},
    }
    for name in presets:
        start = time.perf_counter()
        qm = quantize_m3vit(model, cfg, train.images[:calibration], name)
        entry: dict[str, Any] = {"preset": qm.preset.to_dict(), "res_frac": qm.res_frac}
        entry["fake_quant"] = [
            float((qm.fake_quant(test.images, t).argmax(-1).numpy() == labels[:, t]).mean())
            for t in range(cfg.num_tasks)
        ]
        entry["integer"] = [
            float((qm.predict(test.images, t) == labels[:, t]).mean()) for t in range(cfg.num_tasks)
        ]
        entry["layer_error"] = [layer_errors(qm, test.images, t) for t in range(cfg.num_tasks)]
        entry["seconds"] = time.perf_counter() - start
        result["presets"][name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["int8", "w4a8"], choices=sorted(PRESETS))
    parser.add_argument("--calibration", type=int, default=256, help="training images (first n)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args.preset, args.calibration)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    tasks = len(result["float"])
    print(f"{result['config']}: {result['test_images']} test images, "
          f"calibration on {result['calibration_images']} training images")  # fmt: skip
    header = " ".join(f"{'task ' + str(t):>8}" for t in range(tasks))
    print(f"{'network':<18}{header}")
    print(f"{'float':<18}" + " ".join(f"{100 * a:7.2f}%" for a in result["float"]))
    for name, entry in result["presets"].items():
        for kind in ("fake_quant", "integer"):
            row = " ".join(f"{100 * a:7.2f}%" for a in entry[kind])
            print(f"{name + ' ' + kind:<18}{row}")
    for name, entry in result["presets"].items():
        print(f"\nper-layer error, {name} (relative to max|float| / mean|float|), task 0 | task 1")
        for layer in entry["layer_error"][0]:
            cells = " | ".join(
                f"max {e[layer]['max_rel']:.4f} mean {e[layer]['mean_rel']:.4f}"
                for e in entry["layer_error"]
            )
            print(f"  {layer:<14}{cells}")


if __name__ == "__main__":
    main()
