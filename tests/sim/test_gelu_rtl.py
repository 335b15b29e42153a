"""GeluRom RTL on Icarus and Verilator through cocotb + cocotbext-axi, bit-exact vs golden."""

from __future__ import annotations

import numpy as np
import pytest

import tessera.sim.gelu as gelu_sim
from tessera.models.gelu import GeluConfig, extreme_codes, gelu, pack_beats, unpack_beats
from tessera.rtl.gelu import LATENCY
from tessera.sim.gelu import GeluCase, frame_sizes, simulate_gelu

DEFAULT = GeluConfig()
NARROW = GeluConfig(in_bits=12, in_frac=7, step_log2=4, rom_entries=89, lanes=1)


def _cases(scale: int) -> list[GeluCase]:
    return [
        GeluCase(1200 // scale, 1, "random", 0.3, 0.3, "random, stalls", frame_beats=13),
        GeluCase(3000 // scale, 2, "sweep", 0.3, 0.3, "sweep, stalls"),
        GeluCase(300, 3, "extreme", 0.3, 0.3, "extremes, stalls, 1-beat frames", frame_beats=1),
        GeluCase(400, 4, "random", name="no stalls"),
    ]


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
@pytest.mark.parametrize("cfg", [DEFAULT, NARROW], ids=["lanes4_f10", "lanes1_f7"])
def test_gelu_bit_exact(sim, cfg, tmp_path):
    cases = _cases(1 if cfg.lanes > 1 else 2)
    results = simulate_gelu(cfg, cases, sim=sim, build_dir=tmp_path)
    for case, res in zip(cases, results, strict=False):
        assert res.passed, f"{res.case}: {res.message}"
        assert res.simulator == sim and res.mismatch is None
        beats = -(-case.count // cfg.lanes)
        assert res.cycles >= beats + LATENCY
    assert len(results) == len(cases)
    # Without stalls the unit takes one beat per cycle: only the pipeline latency is added.
    beats = -(-cases[-1].count // cfg.lanes)
    assert results[-1].cycles <= beats + LATENCY + 2


def test_mismatch_is_reported_with_index_and_values(tmp_path, monkeypatch):
    """A wrong golden value must fail the case, naming the element, its input and both values."""

    def off_by_one(x, cfg):
        y = gelu(x, cfg).copy()
        y[6] += 1
        return y

    monkeypatch.setattr(gelu_sim, "gelu", off_by_one)
    case = GeluCase(40, 5, "sweep", 0.3, 0.3)
    results = simulate_gelu(DEFAULT, [case, case], sim="icarus", build_dir=tmp_path)
    assert len(results) == 1  # the run stops at the failing case
    res = results[0]
    x = case.inputs(DEFAULT)[6]
    want = int(gelu(np.array([x]), DEFAULT)[0])
    assert not res.passed
    assert res.mismatch == {
        "index": 6,
        "beat": 1,
        "lane": 2,
        "input": int(x),
        "expected": want + 1,
        "got": want,
    }
    assert f"element 6 (beat 1, lane 2): input {x}, expected {want + 1}, got {want}" in res.message


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [DEFAULT, NARROW], ids=["lanes4_f10", "lanes1_f7"])
def test_every_code(cfg, tmp_path):
    """Every input code of the format once, with stalls (run with -m slow)."""
    count = 1 << cfg.in_bits
    cases = [GeluCase(count, 9, "sweep", 0.2, 0.2, "all codes", frame_beats=256)]
    assert set(cases[0].inputs(cfg)) == set(range(cfg.code_min, cfg.code_max + 1))
    for res in simulate_gelu(cfg, cases, sim="verilator", build_dir=tmp_path):
        assert res.passed, f"{res.case}: {res.message}"


# --- stream layout and case generation (no simulator) -------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        DEFAULT,
        NARROW,
        GeluConfig(in_bits=20, in_frac=12, lanes=3),
        GeluConfig(in_bits=8, in_frac=4, rom_entries=65, step_log2=4, lanes=5),
    ],
)
def test_pack_unpack_round_trip(cfg):
    rng = np.random.default_rng(0)
    values = rng.integers(cfg.code_min, cfg.code_max + 1, 4 * cfg.lanes + 1)
    data = pack_beats(values, cfg)
    beats = 5
    assert len(data) == beats * cfg.beat_bits // 8  # the tail beat is padded
    back = unpack_beats(data, cfg)
    np.testing.assert_array_equal(back[: len(values)], values)
    np.testing.assert_array_equal(back[len(values) :], 0)


def test_pack_layout_is_little_endian_sign_extended():
    cfg = GeluConfig(in_bits=12, in_frac=7, step_log2=4, rom_entries=89, lanes=2)
    assert pack_beats([-1, 0x123], cfg) == bytes([0xFF, 0xFF, 0x23, 0x01])
    # A lane that is not sign-extended to its container reads back as a different value.
    assert list(unpack_beats(bytes([0xFF, 0x0F, 0, 0]), cfg)) == [0x0FFF, 0]
    with pytest.raises(ValueError, match="whole number"):
        unpack_beats(bytes(3), cfg)


def test_frame_sizes():
    assert frame_sizes(10, DEFAULT, 0) == [3]
    assert frame_sizes(40, DEFAULT, 3) == [3, 3, 3, 1]
    assert frame_sizes(5, NARROW, 5) == [5]


def test_case_data_kinds():
    cfg = DEFAULT
    r = cfg.range_code
    sweep = GeluCase(300, data="sweep").inputs(cfg)
    assert len(sweep) == 300
    for centre in (-r, 0, r):
        assert set(range(centre - 40, centre + 40)) <= set(sweep)
    assert np.all(np.diff(sweep[:100]) == 1)  # consecutive codes
    # Runs near the ends of the code range are shifted inside it.
    tiny = GeluConfig(in_bits=10, in_frac=6, step_log2=4, rom_entries=129)  # range = input range
    edge_sweep = GeluCase(90, data="sweep").inputs(tiny)
    assert edge_sweep.min() == tiny.code_min and edge_sweep.max() <= tiny.code_max
    assert len(set(edge_sweep)) == 90

    edges = extreme_codes(cfg)
    for code in (cfg.code_min, cfg.code_max, 0, 1, -1, r - 1, r, r + 1, -r - 1, -r, -r + 1):
        assert code in edges
    extreme = GeluCase(100, seed=3, data="extreme").inputs(cfg)
    np.testing.assert_array_equal(extreme[: len(edges)], edges)
    assert set(extreme) <= set(edges)

    random = GeluCase(2000, seed=1).inputs(cfg)
    assert random.min() >= cfg.code_min and random.max() <= cfg.code_max
    near = np.abs(random) <= r + 32
    assert 0.5 <= near.mean() < 0.7  # half near the ROM range, half anywhere
    np.testing.assert_array_equal(random, GeluCase(2000, seed=1).inputs(cfg))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 0}, "count"),
        ({"count": 2.0}, "count"),
        ({"count": 5, "data": "ramp"}, "data"),
        ({"count": 5, "idle": 1.0}, "idle"),
        ({"count": 5, "backpressure": -0.1}, "backpressure"),
        ({"count": 5, "frame_beats": -1}, "frame_beats"),
    ],
)
def test_invalid_cases(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeluCase(**kwargs)


def test_simulate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown simulator"):
        simulate_gelu(DEFAULT, [GeluCase(4)], sim="modelsim", build_dir=tmp_path)
    with pytest.raises(ValueError, match="no cases"):
        simulate_gelu(DEFAULT, [], sim="icarus", build_dir=tmp_path)
