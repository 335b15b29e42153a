"""Held-out accuracy and per-layer error of the post-training-quantized M³ViT.

For each preset (int8, w4a8, edge-moe, w2a8kv4 by default): per-task test accuracy of the float
network, of the fake-quantized torch network and of the golden integer network, and per layer the
error of the dequantized integer activations against the float ones (max and mean of
``|int - float| / max|float|`` over the test set).

One more row, ``ap_fixed``, is not an integer network: it emulates Edge-MoE's original HLS number
formats on the float model in torch: activations ``ap_fixed<32,10>``, linear weights
``ap_fixed<16,2>``, biases, LayerNorm parameters and embeddings ``ap_fixed<16,5>``, each with the
``ap_fixed`` defaults (truncation towards minus infinity, two's-complement wrap-around). Every
parameter is converted once; the input and output of every layer (and every encoder block's
output) are converted on the way; sums, softmax and GELU run in float64 in between. It shows
what those 16/32-bit formats cost; tessera's int8 engines (8-bit operands, 16-bit residual
stream) cannot run them.

Usage::

    python benchmarks/m3vit_accuracy.py [--preset int8 w4a8 edge-moe w2a8kv4] [--no-ap-fixed]
        [--calibration 256] [--test-images N] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import numpy as np
import torch

from tessera.models.m3vit import M3ViT, digits_tasks, load_m3vit
from tessera.models.m3vit_quant import PRESETS, QuantM3ViT, float_trace, quantize_m3vit

#: Edge-MoE's formats, ``(width, integer bits)`` of ``ap_fixed<width, integer bits>``.
AP_ACTIVATION = (32, 10)
AP_WEIGHT = (16, 2)
AP_PARAMETER = (16, 5)


def ap_fixed(t: torch.Tensor, width: int, int_bits: int) -> torch.Tensor:
    """``t`` converted to ``ap_fixed<width, int_bits>`` (AP_TRN, AP_WRAP) and back to float.

    The value keeps ``width - int_bits`` fraction bits, rounded towards minus infinity; the
    integer part wraps modulo ``2**int_bits`` into ``[-2**(int_bits-1), 2**(int_bits-1))``.
    Exact in float64 for ``width <= 53``.
    """
    frac = width - int_bits
    code = torch.floor(t.double() * 2.0**frac)
    half = 2.0 ** (width - 1)
    code = torch.remainder(code + half, 2 * half) - half
    return (code / 2.0**frac).to(t.dtype)


def ap_fixed_m3vit(model: M3ViT) -> M3ViT:
    """A float64 copy of ``model`` running in Edge-MoE's ``ap_fixed`` formats (module docstring).

    Matrix weights (linear and patch-embedding) become ``AP_WEIGHT``; biases, LayerNorm
    ``gamma``/``beta``, the cls token and the positional embedding ``AP_PARAMETER``. Forward
    hooks convert the input and output of every layer and the output of every block to
    ``AP_ACTIVATION``. ``model`` itself is not modified.
    """
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            fmt = AP_WEIGHT if name.endswith("weight") and p.ndim >= 2 else AP_PARAMETER
            p.copy_(ap_fixed(p, *fmt))

    def act(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return ap_fixed(x, *AP_ACTIVATION)
        if isinstance(x, tuple):
            return tuple(act(v) for v in x)
        return x

    for module in m.modules():
        if module is m:
            continue
        if not list(module.children()):  # a layer: convert what goes in and what comes out
            module.register_forward_pre_hook(lambda _m, inp: act(inp))
        module.register_forward_hook(lambda _m, _inp, out: act(out))
    return m


def ap_fixed_row(model: M3ViT, images: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    """Per-task accuracy of :func:`ap_fixed_m3vit` and its logit error against float
    (``max|emulated - float| / max|float|`` and ``mean|emulated - float| / mean|float|``)."""
    emulated = ap_fixed_m3vit(model)
    x = ap_fixed(images.double(), *AP_ACTIVATION)
    accuracy, logit_error, mean_error = [], [], []
    with torch.no_grad():
        for task in range(model.cfg.num_tasks):
            logits = emulated(x, task)
            ref = model(images, task).double()
            accuracy.append(float((logits.argmax(-1).numpy() == labels[:, task]).mean()))
            err = (logits - ref).abs()
            logit_error.append(float(err.max() / ref.abs().max()))
            mean_error.append(float(err.mean() / ref.abs().mean()))
    return {
        "formats": {
            "activation": list(AP_ACTIVATION),
            "weight": list(AP_WEIGHT),
            "parameter": list(AP_PARAMETER),
        },
        "accuracy": accuracy,
        "max_rel_logit_error": logit_error,
        "mean_rel_logit_error": mean_error,
    }


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


def run(
    presets: list[str],
    calibration: int,
    test_images: int | None = None,
    ap_fixed_emulation: bool = True,
) -> dict[str, Any]:
    """Accuracy table and per-layer errors for ``presets`` (and the ``ap_fixed`` row) on the
    first ``test_images`` held-out images (all when None)."""
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    n = len(test) if test_images is None else test_images
    images, labels_t = test.images[:n], test.labels[:n]
    labels = labels_t.numpy()
    with torch.no_grad():
        float_acc = [
            float((model(images, t).argmax(-1).numpy() == labels[:, t]).mean())
            for t in range(cfg.num_tasks)
        ]
    result: dict[str, Any] = {
        "config": cfg.short_name,
        "test_images": n,
        "calibration_images": calibration,
        "float": float_acc,
        "presets": {},
    }
    if ap_fixed_emulation:
        result["ap_fixed"] = ap_fixed_row(model, images, labels)
    for name in presets:
        start = time.perf_counter()
        qm = quantize_m3vit(model, cfg, train.images[:calibration], name)
        entry: dict[str, Any] = {
            "preset": qm.preset.to_dict(),
            "name": qm.preset.short_name,
            "res_frac": qm.res_frac,
        }
        entry["fake_quant"] = [
            float((qm.fake_quant(images, t).argmax(-1).numpy() == labels[:, t]).mean())
            for t in range(cfg.num_tasks)
        ]
        entry["integer"] = [
            float((qm.predict(images, t) == labels[:, t]).mean()) for t in range(cfg.num_tasks)
        ]
        entry["layer_error"] = [layer_errors(qm, images, t) for t in range(cfg.num_tasks)]
        entry["seconds"] = time.perf_counter() - start
        result["presets"][name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--calibration", type=int, default=256, help="training images (first n)")
    parser.add_argument("--test-images", type=int, default=None, help="held-out images (all)")
    parser.add_argument("--no-ap-fixed", action="store_true", help="skip the ap_fixed emulation")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args.preset, args.calibration, args.test_images, not args.no_ap_fixed)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    tasks = len(result["float"])
    print(f"{result['config']}: {result['test_images']} test images, "
          f"calibration on {result['calibration_images']} training images")  # fmt: skip
    header = " ".join(f"{'task ' + str(t):>8}" for t in range(tasks))
    print(f"{'network':<22}{header}")
    print(f"{'float':<22}" + " ".join(f"{100 * a:7.2f}%" for a in result["float"]))
    if "ap_fixed" in result:
        row = " ".join(f"{100 * a:7.2f}%" for a in result["ap_fixed"]["accuracy"])
        print(f"{'ap_fixed emulation':<22}{row}")
    for name, entry in result["presets"].items():
        for kind in ("fake_quant", "integer"):
            row = " ".join(f"{100 * a:7.2f}%" for a in entry[kind])
            print(f"{name + ' ' + kind:<22}{row}")
    if "ap_fixed" in result:
        row = result["ap_fixed"]
        errors = ", ".join(
            f"max {a:.2e} mean {b:.2e}"
            for a, b in zip(row["max_rel_logit_error"], row["mean_rel_logit_error"], strict=True)
        )
        print(f"\nap_fixed emulation, logit error relative to float, per task: {errors}")
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
