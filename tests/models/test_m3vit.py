"""M³ViT float reference: config, architecture, routing, training determinism, committed weights."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tessera.models.m3vit import (
    DEFAULT_WEIGHTS,
    M3ViT,
    M3ViTConfig,
    MoeLayer,
    Routing,
    digits_tasks,
    evaluate,
    expert_usage,
    load_balancing_loss,
    load_m3vit,
    train_m3vit,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_m3vit.py"


def expected_parameters(
    *, c, p, d, tokens, depth, n_moe, mlp, experts, expert_hidden, classes
) -> int:
    """Parameter count written out layer by layer, independently of the config's formula."""
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    patch = c * p * p * d + d
    cls_and_pos = d + tokens * d
    per_block = 4 * linear(d, d) + 2 * (2 * d)  # q, k, v, out; two LayerNorms
    dense = linear(d, mlp) + linear(mlp, d)
    moe = len(classes) * d * experts + experts * (
        linear(d, expert_hidden) + linear(expert_hidden, d)
    )
    heads = sum(linear(d, n) for n in classes)
    return (
        patch
        + cls_and_pos
        + depth * per_block
        + (depth - n_moe) * dense
        + n_moe * moe
        + 2 * d
        + heads
    )


@pytest.fixture(scope="module")
def edge_moe_model() -> M3ViT:
    torch.manual_seed(0)
    return M3ViT(M3ViTConfig.edge_moe()).eval()


@pytest.fixture(scope="module")
def trained():
    model, cfg, metadata = load_m3vit(with_metadata=True)
    train, test = digits_tasks(0)
    return model, cfg, metadata, train, test


# --- configuration ------------------------------------------------------------------------------


def test_edge_moe_parameter_count_and_shapes(edge_moe_model):
    cfg = edge_moe_model.cfg
    assert (cfg.num_patches, cfg.num_tokens, cfg.head_dim) == (128, 129, 64)
    assert cfg.moe_layers == (1, 3, 5, 7, 9, 11)
    expected = expected_parameters(
        c=3, p=16, d=192, tokens=129, depth=12, n_moe=6, mlp=768, experts=16,
        expert_hidden=384, classes=(19, 1),
    )  # fmt: skip
    assert sum(p.numel() for p in edge_moe_model.parameters()) == expected
    assert cfg.parameter_count == expected
    images = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for task, classes in enumerate(cfg.classes_per_task):
            logits, routing = edge_moe_model(images, task, return_routing=True)
            assert logits.shape == (1, classes)
            assert torch.isfinite(logits).all()
            assert [r.layer for r in routing] == list(cfg.moe_layers)
            for r in routing:
                assert r.indices.shape == r.weights.shape == (1, 129, 2)
                assert r.probs.shape == (1, 129, 16)


def test_tiny_default_parameter_count():
    cfg = M3ViTConfig()
    assert (cfg.num_tokens, cfg.moe_layers, cfg.num_tasks) == (17, (1, 3), 2)
    expected = expected_parameters(
        c=1, p=2, d=32, tokens=17, depth=4, n_moe=2, mlp=64, experts=4, expert_hidden=32,
        classes=(10, 2),
    )  # fmt: skip
    assert sum(p.numel() for p in M3ViT(cfg).parameters()) == expected == cfg.parameter_count


def test_config_round_trip_and_name():
    cfg = M3ViTConfig.edge_moe()
    again = M3ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.classes_per_task == (19, 1)
    assert again.digest == cfg.digest
    assert cfg.short_name.startswith("m3vit_128x256p16_d192l12_e16k2_")
    assert M3ViTConfig().short_name != cfg.short_name
    assert dataclasses.replace(cfg, moe_every=1).moe_layers == tuple(range(12))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_height": 9}, "image_height=9 must be a multiple of patch_size=2"),
        ({"image_width": 12, "patch_size": 8}, "image_width=12 must be a multiple of patch_size=8"),
        ({"patch_size": 0}, r"patch_size must be in \[1, 256\]"),
        ({"num_heads": 3}, "embed_dim=32 must be a multiple of num_heads=3"),
        ({"top_k": 5}, r"top_k must be in \[1, 4\], got 5"),
        ({"top_k": 0}, r"top_k must be in \[1, 4\], got 0"),
        ({"moe_every": 5}, r"moe_every must be in \[1, 4\]"),
        ({"num_experts": 0}, "num_experts must be in"),
        ({"depth": 2.0}, "depth must be an integer"),
        ({"channels": True}, "channels must be an integer"),
        ({"classes_per_task": ()}, r"len\(classes_per_task\) must be in \[1, 64\]"),
        ({"classes_per_task": (10, 0)}, r"classes_per_task\[1\] must be in"),
        ({"classes_per_task": 10}, "classes_per_task must be a tuple"),
    ],
)
def test_config_validation_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        M3ViTConfig(**changes)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown M3ViTConfig fields"):
        M3ViTConfig.from_dict({**M3ViTConfig().to_dict(), "experts": 4})


def test_forward_rejects_bad_input():
    model = M3ViT()
    with pytest.raises(ValueError, match=r"shape \(batch, 1, 8, 8\)"):
        model(torch.zeros(2, 1, 8, 9), 0)
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"task must be in \[0, 1\], got 2"):
        model(torch.zeros(2, 1, 8, 8), 2)


# --- layers against independent references -----------------------------------------------------


def test_attention_matches_torch_sdpa(trained):
    model = trained[0]
    attn = model.blocks[0].attn
    x = torch.randn(3, 17, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        heads = [p(x).view(3, 17, 2, 16).transpose(1, 2) for p in (attn.q, attn.k, attn.v)]
        reference = attn.out(
            F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(3, 17, 32)
        )
        assert torch.allclose(attn(x), reference, rtol=0, atol=1e-5)


def test_moe_matches_a_per_token_float64_reference(trained):
    model, cfg = trained[0], trained[1]
    moe = model.blocks[1].ffn
    assert isinstance(moe, MoeLayer)
    x = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for task in range(cfg.num_tasks):
            out, indices, weights, _ = moe(x, task)
            gate = moe.gates[task].weight.double().numpy()
            for b in range(2):
                for t in range(17):
                    token = x[b, t].double().numpy()
                    logits = gate @ token
                    chosen = np.argsort(-logits, kind="stable")[: cfg.top_k]
                    w = np.exp(logits[chosen] - logits[chosen].max())
                    w /= w.sum()
                    expected = np.zeros(32)
                    for e, we in zip(chosen, w, strict=True):
                        fc1, fc2 = moe.experts[e].fc1, moe.experts[e].fc2
                        h = fc1.weight.double().numpy() @ token + fc1.bias.double().numpy()
                        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
                        expected += we * (
                            fc2.weight.double().numpy() @ h + fc2.bias.double().numpy()
                        )
                    assert indices[b, t].tolist() == chosen.tolist()
                    np.testing.assert_allclose(weights[b, t].double().numpy(), w, atol=1e-6)
                    np.testing.assert_allclose(out[b, t].double().numpy(), expected, atol=1e-5)


def test_load_balancing_loss_is_one_when_even_and_grows_with_skew():
    probs = torch.full((1, 8, 4), 0.25)
    even = Routing(1, torch.tensor([[[0, 1], [2, 3]] * 4]), torch.full((1, 8, 2), 0.5), probs)
    assert load_balancing_loss(even).item() == pytest.approx(1.0)
    skew_probs = torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(1, 8, 4)
    skewed = Routing(1, torch.tensor([[[0, 1]] * 8]), torch.full((1, 8, 2), 0.5), skew_probs)
    # f = (1/2, 1/2, 0, 0): 4 * (0.5 * 0.7 + 0.5 * 0.1) = 1.6
    assert load_balancing_loss(skewed).item() == pytest.approx(1.6)


# --- committed weights and routing ---------------------------------------------------------------


def test_committed_weights_reach_the_recorded_accuracy(trained):
    model, cfg, metadata, _, test = trained
    assert cfg == M3ViTConfig()
    assert DEFAULT_WEIGHTS.stat().st_size < 1 << 20
    assert metadata["test_size"] == len(test) == 360
    for task, name in enumerate(("digit", "parity")):
        accuracy = evaluate(model, test, task)
        assert accuracy == metadata["test_accuracy"][name]
        assert accuracy >= 0.95


def test_routing_is_consistent_and_task_specific(trained):
    model, cfg, _, _, test = trained
    images = test.images[:64]
    with torch.no_grad():
        routes = [model(images, task, return_routing=True)[1] for task in range(cfg.num_tasks)]
    for routing in routes:
        for r in routing:
            assert torch.allclose(r.weights.sum(-1), torch.ones(64, 17), atol=1e-6)
            assert (r.weights > 0).all()
            assert ((r.indices >= 0) & (r.indices < cfg.num_experts)).all()
            assert (r.indices[..., 0] != r.indices[..., 1]).all()  # k = 2 distinct experts
            assert torch.allclose(r.probs.sum(-1), torch.ones(64, 17), atol=1e-6)
            # the selected experts are those of largest probability, in descending order
            top = torch.gather(r.probs, -1, r.indices)
            assert (top[..., 0] >= top[..., 1]).all()
            assert (top[..., 1:].min(-1).values >= r.probs.topk(2, -1).values[..., -1]).all()
    # The first MoE block sees the same input for both tasks: any difference is the gates'.
    first = [routing[0].indices for routing in routes]
    assert not torch.equal(model.blocks[1].ffn.gates[0].weight, model.blocks[1].ffn.gates[1].weight)
    assert (first[0] != first[1]).any(dim=-1).float().mean() > 0.1
    usage = [expert_usage(model, test, task) for task in range(cfg.num_tasks)]
    for counts in usage:
        assert (counts.sum(axis=1) == len(test) * cfg.num_tokens * cfg.top_k).all()
    assert not np.array_equal(usage[0], usage[1])


# --- training ------------------------------------------------------------------------------------


def test_training_is_deterministic():
    first, h1 = train_m3vit(seed=3, max_steps=3)
    second, h2 = train_m3vit(seed=3, max_steps=3)
    other, _ = train_m3vit(seed=4, max_steps=3)
    assert h1.steps == h2.steps == 3
    assert h1.task_loss == h2.task_loss
    state, again, different = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not all(torch.equal(state[k], different[k]) for k in state)
    # training moved the weights away from the seed's initialisation
    torch.manual_seed(3)
    initial = M3ViT().state_dict()
    assert not torch.equal(
        state["blocks.1.ffn.experts.0.fc1.weight"], initial["blocks.1.ffn.experts.0.fc1.weight"]
    )


def test_training_rejects_other_configs():
    with pytest.raises(ValueError, match="classes_per_task=\\(10, 2\\)"):
        train_m3vit(M3ViTConfig(classes_per_task=(10,)), max_steps=1)
    with pytest.raises(ValueError, match="threads must be in"):
        train_m3vit(threads=3, max_steps=1)


def test_digits_split_is_fixed_and_stratified():
    train, test = digits_tasks(0)
    again, _ = digits_tasks(0)
    assert len(train) == 1437 and len(test) == 360
    assert torch.equal(train.images, again.images)
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert torch.equal(train.labels[:, 1], train.labels[:, 0] % 2)
    counts = np.bincount(test.labels[:, 0].numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20 % of each digit's ~180 images


def test_example_trains_saves_and_reports(tmp_path):
    out = tmp_path / "w.pt"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    model, cfg, metadata = load_m3vit(out, with_metadata=True)
    _, test = digits_tasks(0)
    printed = re.findall(
        r"task (\d) \((\w+)\): held-out accuracy ([0-9.]+)% \((\d+)/360\)", proc.stdout
    )
    assert [(t, n) for t, n, _, _ in printed] == [("0", "digit"), ("1", "parity")]
    for t, name, _, correct in printed:
        assert int(correct) == round(evaluate(model, test, int(t)) * 360)
        assert metadata["test_accuracy"][name] == evaluate(model, test, int(t))
    counts = re.findall(r"task (\d) \(\w+\) block (\d) expert counts: ([\d ]+)", proc.stdout)
    assert [(t, b) for t, b, _ in counts] == [("0", "1"), ("0", "3"), ("1", "1"), ("1", "3")]
    for t, b, numbers in counts:
        usage = expert_usage(model, test, int(t))[cfg.moe_layers.index(int(b))]
        assert list(map(int, numbers.split())) == usage.tolist()
