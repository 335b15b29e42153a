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
from tessera.models.moe import MoeConfig
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
        (
            "moe",
            MoeConfig(rows=1, cols=1, dim=16, expert_hidden=16, experts=2, max_tokens=32),
            MoeConfig(rows=8, cols=4, dim=64, expert_hidden=64, experts=8, max_tokens=256),
        ),
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


def test_moe_inventory_counts_what_the_engine_builds():
    """Products, routing softmax, GELU lanes and every buffer of MoeEngine, counted by hand
    from the config (buffers of 4 Kib and more, at most 512 deep: block RAMs of their own
    shape)."""
    cfg = MoeConfig(
        dim=64,
        experts=16,
        expert_hidden=64,
        top_k=2,
        max_tokens=32,
        rows=2,
        cols=4,
        acc_bits=24,
        bus_bytes=64,
    )
    inv = inventory("moe", cfg)
    r, c, t = cfg.rows, cfg.cols, cfg.max_tokens
    assert inv.multipliers.count((8, 8)) == r * c  # the int8 MAC array
    comb_bits = 8 + 16 + 2 + 1  # int8 x gate weight, summed over top_k = 2
    # GELU interpolation base * 2**5 + slope * (5 low input bits): 14-bit ROM samples
    interp_bits = 14 + 5 + 2
    # accumulators, registered W2 products and GELU interpolations: DSP P registers on Xilinx
    assert inv.accumulator_bits == r * c * 24 + c * (comb_bits + interp_bits)
    # per column: requantizer after the array (24-bit accumulator x 32-bit multiplier), the one
    # after the GELU (16-bit GELU output), and the W2 combine (int8 value x 17-bit gate weight)
    assert inv.multipliers.count((24, 32)) == c
    assert inv.multipliers.count((16, 32)) == c
    assert inv.multipliers.count((8, 17)) == c
    # routing softmax: running-sum rescale and output products, two exp units with a table each
    sm = cfg.softmax
    assert (sm.sum_bits, sm.exp_frac + 1) in inv.multipliers
    assert (sm.exp_frac + 1, sm.recip_bits) in inv.multipliers
    assert inv.roms.count(((1 << sm.lut_bits) + 1, 2 * (sm.exp_frac + 1))) == 2
    # GELU: one ROM lane (sample and slope) per array column
    g = cfg.gelu
    assert inv.roms.count((g.rom_entries, 2 * g.rom_bits + 1)) == c
    # Buffers, one copy per read port. Expert region: 3 requant words, b1 and b2 (int32), W1
    # and W2 (int8), in 64-byte bus words; two banks; a weight and a bias port per column.
    expert_bytes = 3 * 8 + 4 * (64 + 64) + 2 * 64 * 64
    bank_words = -(-expert_bytes // 64)
    expected = {
        (2 * bank_words, 512): 2 * c,  # weight buffer
        (t * 64 // c, 8 * c): 2 * r,  # token and hidden buffers (dim == expert_hidden)
        (16 * t, 5 + 16): r,  # queues: token index (5 bits for 32 tokens) and gate weight
        (t * 16 // c, c * 16): 1,  # logits
        (t * 64 // c, c * comb_bits): 1,  # output accumulators
        (2 * 2, 16): 1,  # the softmax row buffer (two rows of top_k logits)
    }
    assert sorted(inv.memories) == sorted(m for m, n in expected.items() for _ in range(n))


def test_moe_top_1_routing_drops_the_running_sum():
    """With top_k = 1 every softmax row is one logit, so the running sum is the constant
    exp(0): one exp unit and no rescale product are left (Yosys removes them: 3 DSPs less)."""
    one, two = MoeConfig(top_k=1), MoeConfig(top_k=2)
    sm = two.softmax
    exp_table = ((1 << sm.lut_bits) + 1, 2 * (sm.exp_frac + 1))
    assert inventory("moe", two).roms.count(exp_table) == 2
    assert inventory("moe", one).roms.count(exp_table) == 1
    # the rescale product, and the exp unit's log2(e) and interpolation products
    assert sm.interp_bits > 0
    products = [len(inventory("moe", cfg).multipliers) for cfg in (one, two)]
    assert products[1] - products[0] == 3
    dsp = [analytic_resources("moe", cfg, "xc7")["dsp"] for cfg in (one, two)]
    assert dsp[1] - dsp[0] == 3


def test_moe_dsp_and_block_ram_match_yosys():
    """DSP blocks of every synthesized MoE engine exactly, and their RAMB36 count exactly on xc7
    (UltraScale+ LUT RAM is cheaper, so Yosys keeps a few more small buffers out of block RAM
    there, which the 7-series memory costs of the model do not know)."""
    rows = [r for r in load_dataset(DEFAULT_CSV) if r["engine"] == "moe"]
    assert len(rows) >= 60
    for r in rows:
        counts = analytic_resources("moe", config_from_row(r), r["family"])
        assert counts["dsp"] == r["dsp"], r
        if r["family"] == "xc7":
            assert counts["bram"] == r["bram"], r
        else:
            assert 0 <= counts["bram"] - r["bram"] <= 2, r
