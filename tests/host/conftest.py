"""Shared fixtures of the host tests: the quantized tiny M³ViT and a few test images."""

from __future__ import annotations

import pytest
import torch

from tessera.models.m3vit import digits_tasks, load_m3vit
from tessera.models.m3vit_quant import quantize_m3vit


@pytest.fixture(scope="module")
def qm():  # type: ignore[no-untyped-def]
    model, cfg = load_m3vit()
    train, _ = digits_tasks()
    return quantize_m3vit(model, cfg, train.images[:128], "int8")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return digits_tasks()[1].images[:8]
