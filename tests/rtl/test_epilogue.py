"""Epilogue (Amaranth simulator) against the golden ``epilogue``: every stage, stalls, layouts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.models.epilogue import (
    ACC_LANE_BITS,
    EpilogueConfig,
    EpilogueParams,
    epilogue,
    pack_params,
    tile_beats,
)
from tessera.models.gelu import GeluConfig
from tessera.models.rounding import Overflow
from tessera.rtl.epilogue import TOP_NAME, Epilogue, generate_epilogue, latency


def _word(values: np.ndarray, bits: int) -> int:
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (bits * i) for i, v in enumerate(values))


def _lanes(word: int, bits: int, n: int) -> list[int]:
    out = []
    for i in range(n):
        v = (word >> (bits * i)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


def _run(
    cfg: EpilogueConfig,
    runs: list[tuple[np.ndarray, EpilogueParams, np.ndarray | None]],
    *,
    seed: int,
    idle: float,
    backpressure: float,
) -> tuple[list[tuple[np.ndarray, np.ndarray, list[bool]]], int, list[int], list[int]]:
    """Stream each (acc, params, residual) run; returns per run (values, keep, tlast) beats,
    the ``error`` output at the end, per run the cycles from its first input beat to its first
    output beat, and the cycle of every output beat."""
    dut = Epilogue(cfg)
    rng = random.Random(seed)
    lane_bits = cfg.out_lane_bytes * 8
    got: list[tuple[list[list[int]], list[list[bool]], list[bool]]] = []
    expected_beats = [len(tile_beats(acc, cfg)[0]) for acc, _, _ in runs]
    first_out: list[int] = []
    taken: list[int] = []
    done = []

    async def stall(ctx, port) -> None:
        while rng.random() < idle:
            ctx.set(port.tvalid, 0)
            await ctx.tick()

    async def source(ctx):
        for r, (acc, params, _) in enumerate(runs):
            while len(done) < r:  # the next packet waits for the previous run's output
                await ctx.tick()
            data = np.frombuffer(pack_params(params, acc.shape[0], cfg), dtype="<u4").reshape(-1, 3)
            for i, words in enumerate(data):
                await stall(ctx, dut.params)
                ctx.set(dut.params.tdata, _word(words, 32))
                ctx.set(dut.params.tlast, i == len(data) - 1)
                ctx.set(dut.params.tvalid, 1)
                await ctx.tick().until(dut.params.tready)
            ctx.set(dut.params.tvalid, 0)
            beats, valid = tile_beats(acc, cfg)
            for i, beat in enumerate(beats):
                await stall(ctx, dut.x)
                ctx.set(dut.x.tdata, _word(beat, ACC_LANE_BITS))
                ctx.set(dut.x.tkeep, _word(np.repeat(valid[i], 4), 1))
                ctx.set(dut.x.tlast, i == len(beats) - 1)
                ctx.set(dut.x.tvalid, 1)
                await ctx.tick().until(dut.x.tready)
            ctx.set(dut.x.tvalid, 0)

    async def residual_source(ctx):
        for r, (_, _, res) in enumerate(runs):
            while len(done) < r:
                await ctx.tick()
            beats, _ = tile_beats(res, cfg)
            for beat in beats:
                await stall(ctx, dut.residual)
                ctx.set(dut.residual.tdata, _word(beat, lane_bits))
                ctx.set(dut.residual.tvalid, 1)
                await ctx.tick().until(dut.residual.tready)
            ctx.set(dut.residual.tvalid, 0)

    async def sink(ctx):
        cycle = 0
        start = None
        for count in expected_beats:
            values, keeps, lasts = [], [], []
            while len(values) < count:
                ready = rng.random() >= backpressure
                ctx.set(dut.y.tready, ready)
                _, _, valid, tx, data, keep, last = await ctx.tick().sample(
                    dut.y.tvalid, dut.x.tvalid, dut.y.tdata, dut.y.tkeep, dut.y.tlast
                )
                cycle += 1
                if start is None and tx:
                    start = cycle
                if valid and ready:
                    taken.append(cycle)
                    if len(first_out) < len(done) + 1:
                        first_out.append(cycle - (start or 0))
                    values.append(_lanes(data, lane_bits, cfg.cols))
                    keeps.append(_lanes(keep, cfg.out_lane_bytes, cfg.cols))
                    lasts.append(bool(last))
            got.append((values, keeps, lasts))
            done.append(True)
        ctx.set(dut.y.tready, 0)
        for _ in range(8):  # nothing more may come out
            await ctx.tick()
            assert not ctx.get(dut.y.tvalid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    if cfg.residual:
        sim.add_testbench(residual_source)
    sim.add_testbench(sink)
    error = []

    async def watch(ctx):
        while len(done) < len(runs):
            await ctx.tick()
        await ctx.tick().repeat(10)
        error.append(ctx.get(dut.error))

    sim.add_testbench(watch)
    sim.run()
    out = []
    for values, keeps, lasts in got:
        out.append((np.array(values), np.array(keeps) != 0, lasts))
    return out, error[0], first_out, taken


def _random_run(
    cfg: EpilogueConfig, m: int, n: int, rng: np.random.Generator, extreme: bool = False
) -> tuple[np.ndarray, EpilogueParams, np.ndarray | None]:
    lo, hi = -(1 << (cfg.acc_bits - 1)), (1 << (cfg.acc_bits - 1)) - 1
    if extreme:
        acc = rng.choice(np.array([lo, hi, 0, -1, 1]), size=(m, n))
        bias = rng.choice(np.array([-(1 << 31), (1 << 31) - 1, 0]), size=n)
        mult = rng.choice(np.array([0, 1, (1 << 31) - 1, 1 << 30]), size=n)
        shift = rng.choice(np.array([0, 1, 31, 62, 63]), size=n)
    else:
        acc = rng.integers(-(1 << 20), 1 << 20, size=(m, n))
        bias = rng.integers(-(1 << 18), 1 << 18, size=n)
        mult = rng.integers(1 << 29, 1 << 31, size=n)
        shift = rng.integers(30, 44, size=n)
    params = EpilogueParams(
        bias,
        mult,
        shift,
        gelu_multiplier=int(rng.integers(1 << 29, 1 << 31)),
        gelu_shift=int(rng.integers(30, 36)),
    )
    res = None
    if cfg.residual:
        r = 1 << (cfg.res_bits - 1)
        res = rng.choice(np.array([-r, r - 1, 0]), size=(m, n)) if extreme else None
        if res is None:
            res = rng.integers(-r, r, size=(m, n))
    return acc, params, res


def _check(cfg: EpilogueConfig, runs, results) -> None:
    for r, ((acc, params, res), (values, keeps, lasts)) in enumerate(
        zip(runs, results, strict=True)
    ):
        want, want_valid = tile_beats(epilogue(acc, params, cfg, res), cfg)
        assert values.shape == want.shape, f"run {r}: {values.shape} beats, want {want.shape}"
        np.testing.assert_array_equal(keeps, want_valid, err_msg=f"run {r}: tkeep")
        bad = np.argwhere((values != want) & want_valid)
        assert not len(bad), (
            f"run {r}: first mismatch at beat {bad[0][0]} lane {bad[0][1]}: expected "
            f"{want[tuple(bad[0])]}, got {values[tuple(bad[0])]}"
        )
        assert lasts == [False] * (len(lasts) - 1) + [True], f"run {r}: tlast {lasts}"


GELU = GeluConfig()  # 16-bit input with 10 fraction bits, as the M3ViT MLPs use

CONFIGS = {
    "requant int8": EpilogueConfig(rows=3, cols=4, max_cols=24),
    "no bias, no requant": EpilogueConfig(rows=2, cols=2, max_cols=8, bias=False, requant=False),
    "saturating bias, int16, residual": EpilogueConfig(
        rows=2, cols=4, max_cols=16, out_bits=16, bias_overflow=Overflow.SAT, residual=True
    ),
    "gelu": EpilogueConfig(rows=2, cols=3, max_cols=12, out_bits=16, gelu=GELU),
    "gelu + residual int8": EpilogueConfig(
        rows=1, cols=4, max_cols=8, out_bits=16, gelu=GELU, residual=True, res_bits=8
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_epilogue_matches_golden_under_stalls(name: str) -> None:
    cfg = CONFIGS[name]
    rng = np.random.default_rng(len(name))
    shapes = [(cfg.rows * 2 + 1, cfg.max_cols - 1), (1, 1), (cfg.rows, cfg.cols + 1)]
    runs = [_random_run(cfg, m, n, rng, extreme=i == 1) for i, (m, n) in enumerate(shapes)]
    runs.append(_random_run(cfg, cfg.rows + 1, cfg.max_cols, rng, extreme=True))
    results, error, _, _ = _run(cfg, runs, seed=3, idle=0.3, backpressure=0.4)
    _check(cfg, runs, results)
    assert error == 0


def test_gelu_stage_sees_every_code_range() -> None:
    """Requantized values spanning the whole int16 GELU input range, incl. both extremes."""
    cfg = CONFIGS["gelu"]
    m, n = 40, 12
    acc = np.linspace(-(1 << 17), 1 << 17, m * n).astype(np.int64).reshape(m, n)
    params = EpilogueParams(
        np.zeros(n, dtype=np.int64),
        np.full(n, 1 << 30, dtype=np.int64),
        np.full(n, 31, dtype=np.int64),  # x / 2: saturates at the ends
        gelu_multiplier=1 << 30,
        gelu_shift=34,
    )
    results, error, _, _ = _run(cfg, [(acc, params, None)], seed=1, idle=0.0, backpressure=0.0)
    _check(cfg, [(acc, params, None)], results)
    assert error == 0
    golden = epilogue(acc, params, cfg)
    assert golden.min() < 0 < golden.max()  # the test exercises both GELU branches


def test_full_rate_and_latency() -> None:
    cfg = CONFIGS["gelu"]
    rng = np.random.default_rng(5)
    run = _random_run(cfg, 8, 12, rng)
    results, _, first, taken = _run(cfg, [run], seed=0, idle=0.0, backpressure=0.0)
    _check(cfg, [run], results)
    assert first[0] == latency(cfg)
    assert np.all(np.diff(taken) == 1), "output beats must follow each other at full rate"


def test_bad_packets_set_error() -> None:
    cfg = EpilogueConfig(rows=1, cols=2, max_cols=4)
    dut = Epilogue(cfg)
    flags = []

    async def bench(ctx):
        # A header-only packet (no columns) is an error.
        ctx.set(dut.params.tdata, 3)
        ctx.set(dut.params.tlast, 1)
        ctx.set(dut.params.tvalid, 1)
        await ctx.tick().until(dut.params.tready)
        ctx.set(dut.params.tvalid, 0)
        await ctx.tick()
        flags.append(ctx.get(dut.error))
        # No run starts without a complete packet.
        ctx.set(dut.x.tvalid, 1)
        await ctx.tick().repeat(3)
        flags.append(ctx.get(dut.x.tready))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert flags == [1, 0]


def test_generate_writes_verilog_and_layout(tmp_path) -> None:
    cfg = CONFIGS["saturating bias, int16, residual"]
    out = generate_epilogue(cfg, tmp_path)
    assert f"module {TOP_NAME}" in out["verilog"]
    assert "residual__tready" in out["verilog"]
    assert out["stream_layout"]["streams"]["y"]["data_width"] == cfg.cols * 16
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "epilogue.v",
        "stream_layout.json",
    ]
