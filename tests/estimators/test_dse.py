"""Device budgets and the GEMM design-space exploration."""

from __future__ import annotations

import pytest

from tessera.estimators.cycles import attention_cycles, gemm_cycles
from tessera.estimators.devices import DEVICES, get_device
from tessera.estimators.dse import (
    attention_candidates,
    explore,
    explore_gemm,
    gemm_candidates,
    pareto_front,
    parse_workload,
    plot_front,
    verify,
)
from tessera.estimators.surrogate import trained_surrogate
from tessera.estimators.sweep import DEFAULT_CSV


@pytest.fixture(scope="module")
def surrogate():
    return trained_surrogate(DEFAULT_CSV)


def test_device_budgets_from_data_sheets():
    assert set(DEVICES) == {"xc7z020", "xczu3eg", "xck26", "xczu9eg", "LFE5U-85F"}
    zu9 = get_device("XCZU9EG")
    assert (zu9.lut, zu9.ff, zu9.dsp, zu9.bram36) == (274_080, 548_160, 2_520, 912)
    assert get_device("xc7z020").budget() == {"lut": 53_200, "ff": 106_400, "dsp": 220, "bram": 140}
    ecp5 = get_device("lfe5u-85f")
    assert ecp5.family == "ecp5" and ecp5.bram_native == 2 * ecp5.bram36 == 208
    with pytest.raises(ValueError, match="choose one of"):
        get_device("xcvu9p")


def test_parse_workload():
    w = parse_workload("gemm:256, 128,64")
    assert (w.engine, w.m, w.n, w.k) == ("gemm", 256, 128, 64)
    assert parse_workload("attention:129,64").shape == (129, 64, 1)
    assert parse_workload("attention:129,64,3").shape == (129, 64, 3)
    for bad in ("gemm:1,2", "conv:1,2,3", "gemm:0,1,1", "gemm:a,b,c", "attention:5"):
        with pytest.raises(ValueError, match=r"gemm:M,N,K|attention:S,D|>= 1"):
            parse_workload(bad)


def test_attention_exploration(surrogate):
    workload = parse_workload("attention:100,32,2")
    candidates = attention_candidates(workload, max_macs=64)
    assert candidates and all(c.max_seq == 128 and c.head_dim == 32 for c in candidates)
    assert all(c.macs <= 64 and 32 % c.lanes == 0 for c in candidates)
    points = explore(workload, get_device("xck26"), surrogate, max_macs=64)
    for p in points:
        assert p.cycles == attention_cycles(100, p.config)
    fitting = [p for p in points if p.fits]
    # More MACs never make the run slower: the fastest design has the most parallel hardware.
    assert fitting[0].config.macs == max(p.config.macs for p in fitting)
    with pytest.raises(ValueError, match="needs a gemm workload"):
        explore_gemm(workload, get_device("xck26"), surrogate)


def test_pareto_front_on_known_points():
    points = [(1, 10), (2, 5), (3, 5), (4, 1), (2, 11), (5, 1)]
    assert pareto_front(points) == [True, True, False, True, False, False]


def test_exploration_respects_the_budget_and_ranks_by_latency(surrogate):
    workload = parse_workload("gemm:128,128,128")
    device = get_device("xc7z020")
    points = explore_gemm(workload, device, surrogate, max_macs=256, max_utilization=0.5)
    assert len(points) == len(gemm_candidates(256))
    fitting = [p for p in points if p.fits]
    assert fitting and len(fitting) < len(points)
    budget = device.budget()
    for p in fitting:
        assert all(p.predicted[r] <= 0.5 * budget[r] for r in budget)
        assert p.cycles == gemm_cycles(128, 128, 128, p.config).cycles
        assert p.clock_mhz == 200.0
    latencies = [p.latency_us for p in fitting]
    assert latencies == sorted(latencies)
    # The fastest fitting design is on both fronts, and no front member is dominated.
    assert fitting[0].pareto_lut and fitting[0].pareto_dsp
    front = [p for p in fitting if p.pareto_lut]
    for p in front:
        assert not any(
            q.latency_us < p.latency_us and q.predicted["lut"] < p.predicted["lut"] for q in fitting
        )
    # A larger part admits faster designs.
    big = explore_gemm(workload, get_device("xczu9eg"), surrogate, max_macs=256)
    assert big[0].latency_us <= fitting[0].latency_us


def test_verify_resynthesises_and_plot(surrogate, tmp_path):
    points = explore_gemm(
        parse_workload("gemm:8,8,8"), get_device("xczu3eg"), surrogate, max_macs=1
    )
    assert {p.config.macs for p in points} == {1}
    seconds = verify(points[:1], "xcup")
    actual = points[0].actual
    assert seconds >= 0 and actual["lut"] > 50 and actual["ff"] > 50
    # The re-synthesised design is near its prediction (same engine family as the training data).
    assert 0.5 < points[0].predicted["lut"] / actual["lut"] < 2.0
    png = plot_front(points, tmp_path / "front.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="max_utilization"):
        explore_gemm(
            parse_workload("gemm:8,8,8"), get_device("xczu3eg"), surrogate, max_utilization=0
        )


def test_m3vit_exploration(surrogate):
    """Whole-network search: cycles from the network model, budget checked with shared engines."""
    from tessera.estimators.dse import explore_m3vit
    from tessera.estimators.m3vit_cycles import (
        accelerator_cycles,
        m3vit_routings,
        moe_config_for,
    )
    from tessera.models.m3vit import digits_tasks, load_m3vit
    from tessera.models.m3vit_quant import quantize_m3vit

    assert parse_workload(" m3vit-tiny ").engine == "m3vit"
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    qm = quantize_m3vit(model, cfg, train.images[:64], "int8")
    images = test.images[:2]
    device = get_device("xc7z020")
    points = explore_m3vit(qm, images, device, surrogate, max_macs=64)
    assert all(cfg.embed_dim % p.config.cols == 0 and p.config.macs <= 64 for p in points)
    routings = [m3vit_routings(qm, images, t) for t in (0, 1)]
    for p in points[:5]:
        per_task = [
            sum(accelerator_cycles(qm, t, r, gemm_cfg=p.config).values())
            for t, r in enumerate(routings)
        ]
        assert p.cycles == round(sum(per_task) / 4)
    # The other engines: the MoE engine at the point's array shape, plus the shared engines,
    # whose resources are the same for every point.
    shared = []
    for p in points[:: max(1, len(points) // 6)]:
        moe = surrogate.predict_design("moe", moe_config_for(qm, p.config), device.family)
        assert moe["bram"] > 0  # queues, token and weight buffers
        shared.append({r: p.fixed[r] - moe[r] for r in ("lut", "ff", "dsp", "bram")})
    assert shared[0]["dsp"] > 0
    assert all(v == pytest.approx(shared[0]) for v in shared)
    budget = device.budget()
    for p in points:
        fits = all(p.predicted[r] + p.fixed[r] <= 0.8 * budget[r] for r in budget)
        assert p.fits == fits
    fitting = [p for p in points if p.fits]
    assert fitting and [p.latency_us for p in fitting] == sorted(p.latency_us for p in fitting)
    with pytest.raises(ValueError, match="explore_m3vit"):
        explore(parse_workload("m3vit-tiny"), device, surrogate)
