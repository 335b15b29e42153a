"""Import a plain torch MLP into the host runtime and run it on a CPU plus an emulated FPGA.

A digit classifier (Linear-ReLU-Linear-GELU-Linear) is trained briefly, traced with torch.fx
(:func:`tessera.host.torch_import.import_torch`), calibrated on training images, and run by a
:class:`tessera.host.session.Session` on ``cpu`` and ``fpga:emu`` at each FPGA clock given: the
planner places every op by the cost model, FPGA ops are bit-exact integer arithmetic, CPU ops
run in float. Prints each plan and the error against torch.

python examples/mixed_mlp.py [--clock-mhz 300 5] [--batch 64]
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tessera.host.session import Session
from tessera.host.torch_import import import_torch
from tessera.models.m3vit import digits_tasks


def train_mlp(images: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> nn.Sequential:
    """A 64-64-64-10 digit classifier, trained full-batch with Adam from seed 0."""
    torch.manual_seed(0)
    layers = [
        ("fc1", nn.Linear(64, 64)),
        ("relu", nn.ReLU()),
        ("fc2", nn.Linear(64, 64)),
        ("gelu", nn.GELU()),
        ("fc3", nn.Linear(64, 10)),
    ]
    model = nn.Sequential(OrderedDict(layers))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
    return model.eval()


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the example; one result (plan, errors) per clock."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clock-mhz", type=float, nargs="+", default=[300.0, 5.0])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    train, test = digits_tasks()
    x_train = train.images.reshape(len(train.images), -1)
    mlp = train_mlp(x_train[:512], train.labels[:512, 0])
    imported = import_torch(mlp, x_train[:256])
    x = test.images.reshape(len(test.images), -1)[: args.batch]
    with torch.no_grad():
        ref = mlp(x).numpy()

    results = []
    for clock in args.clock_mhz:
        with Session(imported, ["cpu", "fpga:emu"], clock_mhz=clock) as session:
            y = session.run(x)
            plan = session.plan(0, x)
        print(f"FPGA at {clock:g} MHz, batch {len(x)}: plan")
        for op, device in plan.placement.items():
            print(f"  {op:<4} {imported.ops[op].kind:<7} -> {device}")
        error = float(np.abs(y - ref).max())
        mean = float(np.abs(y - ref).mean() / np.abs(ref).mean())
        agree = float((y.argmax(-1) == ref.argmax(-1)).mean())
        print(f"  predicted {plan.predicted_seconds * 1e6:.1f} us per batch")
        print(f"  max |error| vs torch = {error:.4f} (mean {100 * mean:.2f} % of mean |logit|)")
        print(f"  argmax agreement with torch: {100 * agree:.1f} %")
        results.append({"clock_mhz": clock, "placement": plan.placement, "error": error})
    return results


if __name__ == "__main__":
    main()
