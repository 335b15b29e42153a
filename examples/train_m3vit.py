"""Train the tiny M³ViT on the two digits tasks and save its weights.

Trains :class:`tessera.models.m3vit.M3ViTConfig`'s tiny default (8x8 digits, 17 tokens, 4 blocks,
MoE in blocks 1 and 3 with 4 experts, top-2, one gate per task) with seed 0, deterministically,
then prints each task's held-out accuracy and how often each task's gates pick each expert, and
writes the weights (with the recorded accuracies) to ``--out``. Run with the defaults it
reproduces ``models/weights/m3vit_tiny.pt`` exactly.

    python examples/train_m3vit.py [--out PATH] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse

from tessera.models.m3vit import (
    DEFAULT_WEIGHTS,
    M3ViTConfig,
    digits_tasks,
    evaluate,
    expert_usage,
    save_weights,
    train_m3vit,
)

TASKS = ("digit", "parity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="weights file to write")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    args = parser.parse_args()

    cfg = M3ViTConfig()
    print(f"config {cfg.short_name}: {cfg.parameter_count} parameters, MoE blocks {cfg.moe_layers}")
    model, history = train_m3vit(cfg, seed=args.seed, epochs=args.epochs)
    print(
        f"trained {history.steps} steps in {history.seconds:.1f} s, final task loss "
        f"{history.task_loss[-1]:.4f}, balance loss {history.balance_loss[-1]:.4f}"
    )

    _, test = digits_tasks(0)
    accuracy = {}
    for task, name in enumerate(TASKS):
        accuracy[name] = evaluate(model, test, task)
        print(
            f"task {task} ({name}): held-out accuracy {100 * accuracy[name]:.2f}% "
            f"({round(accuracy[name] * len(test))}/{len(test)})"
        )
    for task, name in enumerate(TASKS):
        usage = expert_usage(model, test, task)
        for layer, counts in zip(cfg.moe_layers, usage, strict=True):
            print(f"task {task} ({name}) block {layer} expert counts: {' '.join(map(str, counts))}")

    metadata = {
        "seed": args.seed,
        "epochs": args.epochs,
        "data_seed": 0,
        "test_accuracy": accuracy,
        "test_size": len(test),
    }
    save_weights(model, args.out, metadata)
    print(f"weights written to {args.out}")


if __name__ == "__main__":
    main()
