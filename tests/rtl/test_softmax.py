"""OnlineSoftmax RTL (Amaranth simulator) against the golden ``softmax``: random stalls, latency,
throughput, over-long rows, and the generated Verilog."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.models.softmax import SoftmaxConfig, softmax
from tessera.rtl.softmax import (
    TOP_NAME,
    OnlineSoftmax,
    generate_softmax,
    row_cycles,
    stream_layout,
)
from tessera.sim.softmax import SoftmaxCase

SMALL = SoftmaxConfig(
    in_bits=8, in_frac=4, exp_frac=10, lut_bits=3, interp_bits=4, out_bits=8, out_frac=7, max_len=8
)
# Non-power-of-two banks, wider containers, no interpolation.
ODD = SoftmaxConfig(
    in_bits=10, in_frac=3, exp_frac=9, lut_bits=4, interp_bits=0, out_bits=9, out_frac=8, max_len=5
)
# Extremes of the formats: one-element rows and 2-bit probabilities; 24-bit logits, 3-byte
# containers, the finest table.
TINY = SoftmaxConfig(
    in_bits=4, in_frac=0, exp_frac=8, lut_bits=1, interp_bits=0, out_bits=2, out_frac=1, max_len=1
)
WIDE = SoftmaxConfig(
    in_bits=24,
    in_frac=2,
    exp_frac=20,
    lut_bits=8,
    interp_bits=10,
    out_bits=24,
    out_frac=23,
    max_len=300,
)


@dataclass
class Trace:
    """What the bench saw: rows received, and the cycles of notable handshakes."""

    rows: list[list[int]] = field(default_factory=list)
    in_last: list[int] = field(default_factory=list)  # cycles of accepted input tlast beats
    out_first: list[int] = field(default_factory=list)  # cycles of each row's first output
    out_last: list[int] = field(default_factory=list)
    overflow: int = 0
    cycles: int = 0
    latency: int = 0  # the component's declared latency


def _stream(
    cfg: SoftmaxConfig,
    rows: list[np.ndarray],
    idle: float,
    backpressure: float,
    seed: int,
    expect_out: int | None = None,
) -> Trace:
    """Drive ``rows`` (one frame each) into OnlineSoftmax and collect the output rows.

    Checks the AXI-Stream rule on ``p`` on every cycle: a beat offered and not taken stays
    offered, unchanged.
    """
    dut = OnlineSoftmax(cfg)
    rng = random.Random(seed)
    beats = [(int(v), j == len(r) - 1) for r in rows for j, v in enumerate(r)]
    want = sum(len(r) for r in rows) if expect_out is None else expect_out
    mask = (1 << cfg.in_container_bits) - 1
    trace = Trace(latency=dut.latency)

    async def bench(ctx):
        sent = received = cycle = 0
        row: list[int] = []
        held = None
        while received < want:
            assert cycle < 40 * (len(beats) + 50), f"stuck after {received} of {want} outputs"
            offer = sent < len(beats) and rng.random() >= idle
            ctx.set(dut.x.tvalid, offer)
            if sent < len(beats):
                ctx.set(dut.x.tdata, beats[sent][0] & mask)
                ctx.set(dut.x.tlast, beats[sent][1])
            ready = rng.random() >= backpressure
            ctx.set(dut.p.tready, ready)
            _, _, x_ok, p_valid, p_data, p_last = await ctx.tick().sample(
                dut.x.tready, dut.p.tvalid, dut.p.tdata, dut.p.tlast
            )
            if held is not None:
                assert (p_valid, p_data, p_last) == held, f"cycle {cycle}: stalled beat changed"
            held = (p_valid, p_data, p_last) if p_valid and not ready else None
            if offer and x_ok:
                if beats[sent][1]:
                    trace.in_last.append(cycle)
                sent += 1
            if p_valid and ready:
                if not row:
                    trace.out_first.append(cycle)
                row.append(p_data)
                received += 1
                if p_last:
                    trace.rows.append(row)
                    trace.out_last.append(cycle)
                    row = []
            cycle += 1
        # Nothing more comes out.
        ctx.set(dut.x.tvalid, 0)
        ctx.set(dut.p.tready, 1)
        for _ in range(cfg.recip_bits + 20):
            _, _, p_valid = await ctx.tick().sample(dut.p.tvalid)
            assert not p_valid, "an extra output beat"
        assert not row, "a row without tlast"
        trace.overflow = ctx.get(dut.overflow)
        trace.cycles = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return trace


def _check_rows(cfg: SoftmaxConfig, rows: list[np.ndarray], trace: Trace) -> None:
    assert len(trace.rows) == len(rows)
    for r, (got, x) in enumerate(zip(trace.rows, rows, strict=True)):
        want = softmax(x, cfg)
        assert len(got) == len(want), f"row {r}: {len(got)} outputs for {len(want)} logits"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"row {r} index {i} (logit {x[i]}): RTL {g}, golden {w}"


def _mixed_rows(cfg: SoftmaxConfig, seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = ["random", "equal", "spike", "extreme", "increasing"]
    rows: list[np.ndarray] = []
    for i in range(count):
        length = int(rng.integers(1, cfg.max_len + 1)) if i % 3 else cfg.max_len
        case = SoftmaxCase(1, length, seed=seed * 1000 + i, data=kinds[i % len(kinds)])
        rows += case.logits(cfg)
    return rows


@pytest.mark.parametrize("cfg", [SMALL, ODD], ids=["small", "odd"])
@pytest.mark.parametrize(
    ("idle", "backpressure"), [(0.0, 0.0), (0.3, 0.3), (0.0, 0.8), (0.8, 0.0), (0.5, 0.6)]
)
def test_matches_golden_under_stalls(cfg, idle, backpressure):
    rows = _mixed_rows(cfg, seed=int(idle * 10 + backpressure * 100), count=30)
    trace = _stream(cfg, rows, idle, backpressure, seed=7)
    _check_rows(cfg, rows, trace)
    assert trace.overflow == 0


@pytest.mark.parametrize("cfg", [TINY, WIDE], ids=["tiny", "wide"])
def test_format_extremes(cfg):
    rows = _mixed_rows(cfg, seed=3, count=20)
    _check_rows(cfg, rows, _stream(cfg, rows, 0.3, 0.3, seed=2))


def test_default_config_rows():
    cfg = SoftmaxConfig()
    rows = SoftmaxCase(3, (cfg.max_len, 129, 1), seed=3, data="random").logits(cfg)
    rows += SoftmaxCase(2, 200, seed=4, data="increasing").logits(cfg)
    _check_rows(cfg, rows, _stream(cfg, rows, 0.2, 0.2, seed=1))


def test_latency():
    cfg = SoftmaxConfig(max_len=64)
    # A lone row: its first probability leaves `latency` cycles after its last logit.
    for length in (1, 9):
        rows = SoftmaxCase(1, length, seed=length).logits(cfg)
        trace = _stream(cfg, rows, 0.0, 0.0, seed=0)
        _check_rows(cfg, rows, trace)
        assert trace.out_first[0] - trace.in_last[0] == trace.latency
        assert trace.latency == stream_layout(cfg)["latency"]
        assert trace.out_last[0] + 1 == 2 * length + trace.latency - 1


@pytest.mark.parametrize("length", [2, 26, 30, 48])
def test_throughput(length):
    """Back-to-back rows without stalls: divider-paced, refill-paced, then one element per cycle
    (row_cycles 28, 29.5, 31.5, 48 for the default formats)."""
    cfg = SoftmaxConfig(max_len=64)
    rows = SoftmaxCase(7, length, seed=length).logits(cfg)
    trace = _stream(cfg, rows, 0.0, 0.0, seed=0)
    _check_rows(cfg, rows, trace)
    # Rows settle into a pattern that repeats every two rows.
    gaps = np.diff(trace.out_last)
    assert gaps.sum() / len(gaps) == row_cycles(cfg, length)
    if length >= cfg.recip_bits + 7:
        assert np.diff(trace.in_last).tolist() == [length] * 6  # the input never waits
    with pytest.raises(ValueError, match="max_len"):
        row_cycles(cfg, cfg.max_len + 1)


def test_overlong_row_is_cut_and_flagged():
    cfg = SMALL
    rng = np.random.default_rng(9)
    before = rng.integers(-128, 128, size=3)
    long_row = rng.integers(-128, 128, size=cfg.max_len + 5)
    after = rng.integers(-128, 128, size=cfg.max_len)
    sent = [before, long_row, after]
    trace = _stream(cfg, sent, 0.2, 0.2, seed=3, expect_out=3 + 2 * cfg.max_len)
    _check_rows(cfg, [before, long_row[: cfg.max_len], after], trace)
    assert trace.overflow == 1


def test_generate_softmax(tmp_path):
    cfg = ODD
    out = generate_softmax(cfg, tmp_path)
    assert out["top"] == TOP_NAME == "online_softmax"
    text = out["verilog"]
    assert f"module {TOP_NAME}(" in text
    widths = {"x__tdata": cfg.in_container_bits, "p__tdata": cfg.out_container_bits}
    assert widths == {"x__tdata": 16, "p__tdata": 16}
    for port in ("clk", "rst", "x__tvalid", "x__tready", "x__tlast", "p__tvalid", "p__tready"):
        assert f" {port};" in text, port
    for port, width in widths.items():
        assert f"[{width - 1}:0] {port};" in text, port
    names = sorted(p.rsplit("/", 1)[-1] for p in out["files"])
    assert names == ["config.json", "online_softmax.v", "stream_layout.json"]
    assert (tmp_path / "online_softmax.v").read_text() == text
    layout = json.loads((tmp_path / "stream_layout.json").read_text())
    assert layout == out["stream_layout"]
    assert layout["latency"] == out["latency"] == stream_layout(cfg)["latency"]
    assert SoftmaxConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_random_config_soak(seed):
    """Random formats, lengths and stall rates (run with -m slow)."""
    rng = np.random.default_rng(seed)
    in_bits = int(rng.integers(4, 25))
    in_frac = int(rng.integers(0, in_bits))
    lut_bits = int(rng.integers(1, 9))
    out_bits = int(rng.integers(2, 25))
    cfg = SoftmaxConfig(
        in_bits=in_bits,
        in_frac=in_frac,
        exp_frac=int(rng.integers(8, 21)),
        lut_bits=lut_bits,
        interp_bits=int(rng.integers(0, min(10, in_frac + 16 - lut_bits) + 1)),
        out_bits=out_bits,
        out_frac=int(rng.integers(1, out_bits)),
        max_len=int(rng.integers(1, 70)),
    )
    rows = _mixed_rows(cfg, seed=seed, count=60)
    idle, backpressure = (float(v) for v in rng.choice([0.0, 0.3, 0.7], size=2))
    _check_rows(cfg, rows, _stream(cfg, rows, idle, backpressure, seed=seed))
