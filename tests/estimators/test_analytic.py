"""The first-principles resource model: inventories, technology mapping rules, calibration."""

from __future__ import annotations

import math

import pytest

from tessera.estimators.analytic import (
    Inventory,
    analytic_resources,
    calibrate,
    inventory,
    map_inventory,
)
from tessera.estimators.surrogate import config_from_row, load_dataset
from tessera.estimators.sweep import DEFAULT_CSV
from tessera.models.attention import AttentionConfig
from tessera.models.gelu import GeluConfig
from tessera.models.gemm import GemmConfig
from tessera.models.layernorm import LayerNormConfig
from tessera.models.softmax import SoftmaxConfig


def test_gemm_inventory_counts_the_array():
    cfg = GemmConfig(rows=4, cols=8, acc_bits=24)
    inv = inventory("gemm", cfg)
    assert inv.multipliers.count((8, 8)) == 32  # one int8 multiplier per MAC
    assert inv.multipliers.count((24, 32)) == 8  # one requantizer per output column
    assert inv.reg_bits >= 2 * 32 * 24  # accumulators and drain bank


def test_dsp_and_memory_mapping_rules():
    inv = Inventory(multipliers=[(8, 8), (30, 20), (3, 4)], memories=[(1024, 18), (16, 8)])
    xc7 = map_inventory(inv, "xc7")
    # 8x8: one DSP; 30x20 on 25x18: 2 x 2; 3x4 (7-bit product) stays in LUTs.
    assert xc7["dsp"] == 1 + 4
    assert map_inventory(inv, "xcup")["dsp"] == 1 + 4  # 27x18: still 2 x 2
    assert map_inventory(inv, "ecp5")["dsp"] == 1 + 2 * 2
    # 1K x 18 is one RAMB18 = half a RAMB36; a 16 x 8 memory is 8 LUTs of distributed RAM.
    assert xc7["bram"] == 0.5
    assert xc7["lut"] == pytest.approx(3 * 4 / 2 + 8)
    assert map_inventory(inv, "ecp5")["bram"] == 1  # one DP16KD
    with pytest.raises(ValueError, match="unknown family"):
        map_inventory(inv, "ice40")
    with pytest.raises(ValueError, match="unknown engine"):
        inventory("fft", GemmConfig())


@pytest.mark.parametrize(
    ("engine", "small", "large"),
    [
        ("gemm", GemmConfig(rows=2, cols=2), GemmConfig(rows=8, cols=8)),
        ("softmax", SoftmaxConfig(max_len=16), SoftmaxConfig(max_len=64)),
        ("gelu", GeluConfig(lanes=1), GeluConfig(lanes=8)),
        ("layernorm", LayerNormConfig(dim=16), LayerNormConfig(dim=1024)),
        ("attention", AttentionConfig(parallelism=1, lanes=2), AttentionConfig()),
    ],
)
def test_model_grows_with_the_design(engine, small, large):
    for family in ("xc7", "xcup", "ecp5"):
        a = analytic_resources(engine, small, family)
        b = analytic_resources(engine, large, family)
        assert all(b[k] >= a[k] for k in a)
        assert b["lut"] + b["ff"] + 100 * (b["dsp"] + b["bram"]) > a["lut"] + a["ff"] + 100 * (
            a["dsp"] + a["bram"]
        )


def test_softmax_row_buffer_becomes_block_ram():
    # 2 * 4096 x 16 bits = 128 Kib: 4 RAMB36 at 2K x 9 ... counted per aspect ratio.
    cfg = SoftmaxConfig(max_len=4096)
    assert analytic_resources("softmax", cfg, "xc7")["bram"] >= 4


def test_calibration_is_the_geometric_mean_ratio():
    cfg_a, cfg_b = GeluConfig(lanes=1), GeluConfig(lanes=2)
    base_a = analytic_resources("gelu", cfg_a, "xc7")
    base_b = analytic_resources("gelu", cfg_b, "xc7")
    rows = [
        ("gelu", cfg_a, "xc7", {"lut": 2 * base_a["lut"], "ff": base_a["ff"]}),
        ("gelu", cfg_b, "xc7", {"lut": 8 * base_b["lut"], "ff": base_b["ff"]}),
    ]
    scales = calibrate(rows)
    assert scales[("gelu", "xc7", "lut")] == pytest.approx(4.0)
    assert scales[("gelu", "xc7", "ff")] == pytest.approx(1.0)
    scaled = analytic_resources("gelu", cfg_a, "xc7", scales)
    assert scaled["lut"] == pytest.approx(4 * base_a["lut"])


def test_raw_model_is_within_a_factor_of_synthesis():
    """On the committed dataset the uncalibrated model's LUT and FF counts are within a factor of
    3 of Yosys for most designs (median |log ratio| < log 2)."""
    rows = [r for r in load_dataset(DEFAULT_CSV) if r["family"] in ("xc7", "xcup")]
    assert rows
    logs = {"lut": [], "ff": []}
    for r in rows:
        model = analytic_resources(r["engine"], config_from_row(r), r["family"])
        for k in logs:
            logs[k].append(abs(math.log(model[k] / r[k])))
    for k, values in logs.items():
        values.sort()
        assert values[len(values) // 2] < math.log(2), k
        assert values[int(0.9 * (len(values) - 1))] < math.log(3), k


def test_parallel_attention_rows_each_have_their_own_datapath():
    """Every query row has its requantizer, exp unit (with its log2(e) constant product) and
    the two softmax products; the q.k and weight x v arrays grow with parallelism * lanes."""
    one = inventory("attention", AttentionConfig(parallelism=1, lanes=1))
    four = inventory("attention", AttentionConfig(parallelism=4, lanes=1))
    # per extra row: q.k and weight x v (one lane each), requantizer, exp (log2(e) and
    # interpolation products), running-sum rescale and probability products
    assert AttentionConfig().interp_bits > 0
    assert len(four.multipliers) - len(one.multipliers) == 3 * (2 + 1 + 2 + 2)


def test_layernorm_dim_products_are_shifts_for_powers_of_two():
    base = inventory("layernorm", LayerNormConfig(dim=128))
    odd = inventory("layernorm", LayerNormConfig(dim=192))
    # dim * S2 and dim * x are constant products unless dim is a power of two
    assert len(odd.multipliers) == len(base.multipliers) + 2


def test_dsp_count_matches_yosys_on_xilinx():
    """DSP blocks of GEMM, softmax, LayerNorm and attention on xc7 / xcup: within one block of
    Yosys for at least 97 % of the committed designs, exact for the GEMM."""
    rows = [
        r
        for r in load_dataset(DEFAULT_CSV)
        if r["family"] in ("xc7", "xcup") and r["engine"] != "gelu"
    ]
    assert len(rows) > 300
    off = []
    for r in rows:
        model = analytic_resources(r["engine"], config_from_row(r), r["family"])["dsp"]
        off.append(abs(model - r["dsp"]))
        if r["engine"] == "gemm":
            assert model == r["dsp"], r
    assert sum(d <= 1 for d in off) >= 0.97 * len(off)
