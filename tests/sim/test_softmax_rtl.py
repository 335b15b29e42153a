"""OnlineSoftmax RTL on Icarus and Verilator through cocotb + cocotbext-axi, bit-exact vs golden."""

from __future__ import annotations

import pytest

import tessera.sim.softmax as sim_softmax
from tessera.models.softmax import SoftmaxConfig
from tessera.rtl.softmax import stream_layout
from tessera.sim.softmax import SoftmaxCase, simulate_softmax

# One-byte containers, a power-of-two buffer bank; and wider containers (3-byte logits, 2-byte
# probabilities) with max_len = 129, so the longest row is odd and the banks are not aligned.
CONFIGS = {
    "narrow": SoftmaxConfig(
        in_bits=8,
        in_frac=4,
        exp_frac=10,
        lut_bits=3,
        interp_bits=4,
        out_bits=8,
        out_frac=7,
        max_len=160,
    ),
    "wide": SoftmaxConfig(
        in_bits=20,
        in_frac=12,
        exp_frac=14,
        lut_bits=4,
        interp_bits=6,
        out_bits=12,
        out_frac=11,
        max_len=129,
    ),
}


def _cases(cfg: SoftmaxConfig) -> list[SoftmaxCase]:
    top = cfg.max_len
    return [
        SoftmaxCase(5, 1, seed=1, name="length 1"),
        SoftmaxCase(4, 37, seed=2, idle=0.3, backpressure=0.3, name="odd, stalls"),
        SoftmaxCase(3, 129, seed=3, idle=0.3, backpressure=0.3, name="129, stalls"),
        SoftmaxCase(3, top, seed=4, data="increasing", backpressure=0.3, name="max_len rising"),
        SoftmaxCase(6, (1, top, 2, 37), seed=5, data="equal", idle=0.3, name="mixed equal"),
        SoftmaxCase(4, (top, 3), seed=6, data="spike", backpressure=0.3, name="spike"),
        SoftmaxCase(4, (11, top), seed=7, data="extreme", idle=0.3, backpressure=0.3),
        SoftmaxCase(4, top, seed=8, name="back to back"),
    ]


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_softmax_bit_exact(sim, config, tmp_path):
    cfg = CONFIGS[config]
    cases = _cases(cfg)
    results = simulate_softmax(cfg, cases, sim=sim, build_dir=tmp_path)
    for res in results:
        assert res.passed, f"{res.case}: {res.message}"
    assert len(results) == len(cases)
    # Without stalls, full-length rows stream at one element per cycle: the last row's output
    # ends one latency plus one row after the last input beat.
    rows, length = cases[-1].rows, cases[-1].length
    latency = stream_layout(cfg)["latency"]
    assert rows * length + latency <= results[-1].cycles <= rows * length + latency + length + 4


@pytest.mark.parametrize("sim", ["icarus", pytest.param("verilator", marks=pytest.mark.slow)])
def test_default_config(sim, tmp_path):
    cfg = SoftmaxConfig()
    cases = [
        SoftmaxCase(2, (cfg.max_len, 1), seed=11, idle=0.3, backpressure=0.3),
        SoftmaxCase(2, 129, seed=12, data="increasing"),
    ]
    results = simulate_softmax(cfg, cases, sim=sim, build_dir=tmp_path)
    for res in results:
        assert res.passed, f"{res.case}: {res.message}"
    assert len(results) == len(cases)


def test_case_validation():
    cfg = CONFIGS["narrow"]
    with pytest.raises(ValueError, match="max_len"):
        SoftmaxCase(1, cfg.max_len + 1).logits(cfg)
    with pytest.raises(ValueError, match="length"):
        SoftmaxCase(1, 0)
    with pytest.raises(ValueError, match="rows"):
        SoftmaxCase(0, 4)
    with pytest.raises(ValueError, match="data"):
        SoftmaxCase(1, 4, data="ramp")
    with pytest.raises(ValueError, match="idle"):
        SoftmaxCase(1, 4, idle=1.0)
    with pytest.raises(ValueError, match="simulator"):
        simulate_softmax(cfg, [SoftmaxCase(1, 4)], sim="modelsim")


def test_mismatch_is_reported(tmp_path, monkeypatch):
    """The testbench names the first wrong element: corrupt one golden value and run."""
    cfg = CONFIGS["narrow"]
    golden = sim_softmax.softmax
    calls = []

    def corrupted(x, config):
        p = golden(x, config)
        calls.append(len(calls))
        if len(calls) == 2:  # second row
            p = p.copy()
            p[2] += 1
        return p

    monkeypatch.setattr(sim_softmax, "softmax", corrupted)
    case = SoftmaxCase(3, 5, seed=3)
    rows = case.logits(cfg)
    want = int(golden(rows[1], cfg)[2])
    results = simulate_softmax(cfg, [case], sim="icarus", build_dir=tmp_path)
    assert len(results) == 1 and not results[0].passed
    assert results[0].mismatch == {
        "row": 1,
        "index": 2,
        "logit": int(rows[1][2]),
        "expected": want + 1,
        "got": want,
    }
    assert f"row 1, index 2 (logit {rows[1][2]}): expected {want + 1}, got {want}" in (
        results[0].message
    )
