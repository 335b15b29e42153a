"""GeluRom (Amaranth simulator) against the golden ``gelu``: every code, stalls, tlast, timing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.models.gelu import GeluConfig, gelu, gelu_rom
from tessera.rtl.gelu import LATENCY, TOP_NAME, GeluRom, generate_gelu, rom_words


def _pack(values: np.ndarray, cfg: GeluConfig) -> int:
    mask = (1 << cfg.container_bits) - 1
    return sum((int(v) & mask) << (cfg.container_bits * i) for i, v in enumerate(values))


def _unpack(word: int, cfg: GeluConfig) -> list[int]:
    cb = cfg.container_bits
    lanes = [(word >> (cb * i)) & ((1 << cb) - 1) for i in range(cfg.lanes)]
    return [v - (1 << cb) if v >> (cb - 1) else v for v in lanes]


def _run(
    cfg: GeluConfig,
    codes: np.ndarray,
    *,
    seed: int,
    idle: float,
    backpressure: float,
    last_every: int = 5,
) -> tuple[np.ndarray, list[bool], list[int], list[bool]]:
    """Stream ``codes`` through the unit; returns outputs (beats, lanes), tlast per output beat,
    the cycles at which output beats were taken and ``x.tready`` per cycle."""
    dut = GeluRom(cfg)
    beats = codes.reshape(-1, cfg.lanes)
    rng = random.Random(seed)
    got: list[list[int]] = []
    lasts: list[bool] = []
    taken_at: list[int] = []
    readies: list[bool] = []

    async def source(ctx):
        for i, beat in enumerate(beats):
            while rng.random() < idle:
                ctx.set(dut.x.tvalid, 0)
                await ctx.tick()
            # Garbage above in_bits in each container must be ignored.
            junk = rng.getrandbits(cfg.beat_bits) if cfg.container_bits > cfg.in_bits else 0
            keep = sum(
                ((1 << cfg.in_bits) - 1) << (cfg.container_bits * j) for j in range(cfg.lanes)
            )
            ctx.set(dut.x.tdata, (_pack(beat, cfg) & keep) | (junk & ~keep))
            ctx.set(dut.x.tlast, i % last_every == last_every - 1)
            ctx.set(dut.x.tvalid, 1)
            await ctx.tick().until(dut.x.tready)
        ctx.set(dut.x.tvalid, 0)

    async def sink(ctx):
        cycle = 0
        while len(got) < len(beats):
            ready = rng.random() >= backpressure
            ctx.set(dut.y.tready, ready)
            _, _, valid, data, last, x_ready = await ctx.tick().sample(
                dut.y.tvalid, dut.y.tdata, dut.y.tlast, dut.x.tready
            )
            readies.append(bool(x_ready))
            if ready and valid:
                got.append(_unpack(data, cfg))
                lasts.append(bool(last))
                taken_at.append(cycle)
            cycle += 1
            assert cycle < 20 * len(beats) + 100, "output stalled"
        # Nothing more comes out: no beat is duplicated.
        ctx.set(dut.y.tready, 1)
        for _ in range(LATENCY + 2):
            _, _, valid = await ctx.tick().sample(dut.y.tvalid)
            assert not valid, "an extra output beat appeared"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return np.array(got, dtype=np.int64), lasts, taken_at, readies


def _check(cfg: GeluConfig, codes: np.ndarray, **kwargs) -> None:
    last_every = kwargs.setdefault("last_every", 5)
    got, lasts, _, _ = _run(cfg, codes, **kwargs)
    want = gelu(codes, cfg).reshape(-1, cfg.lanes)
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    if bad.size:
        b, lane = bad[0]
        x = codes.reshape(-1, cfg.lanes)[b, lane]
        raise AssertionError(
            f"beat {b} lane {lane}: input {x}, expected {want[b, lane]}, got {got[b, lane]}"
        )
    assert lasts == [i % last_every == last_every - 1 for i in range(len(want))]


SMALL = GeluConfig(in_bits=10, in_frac=6, step_log2=4, rom_entries=89, lanes=2)


def test_every_code_small_config_with_stalls():
    codes = np.arange(SMALL.code_min, SMALL.code_max + 1, dtype=np.int64)
    _check(SMALL, codes, seed=1, idle=0.3, backpressure=0.3)


def test_every_code_without_fraction_below_the_index():
    # in_frac == step_log2 and rom_frac == in_frac: no interpolation weight, no rounding shift.
    cfg = GeluConfig(in_bits=8, in_frac=4, step_log2=4, rom_entries=65, rom_frac=4, rom_bits=2)
    assert cfg.low_bits == 0 and cfg.align_shift == 0
    codes = np.arange(cfg.code_min, cfg.code_max + 1, dtype=np.int64)
    _check(cfg, codes, seed=2, idle=0.3, backpressure=0.3, last_every=3)


@pytest.mark.parametrize(
    "cfg",
    [
        GeluConfig(),
        GeluConfig(
            in_bits=20, in_frac=14, step_log2=6, rom_entries=385, rom_frac=20, rom_bits=18, lanes=3
        ),
    ],
    ids=["default", "24-bit containers"],
)
def test_dense_sample_with_stalls(cfg):
    rng = np.random.default_rng(3)
    r, seg = cfg.range_code, 1 << cfg.low_bits
    edges = [cfg.code_min, cfg.code_max, 0, 1, -1, r - 1, r, r + 1, -r + 1, -r, -r - 1]
    codes = np.concatenate(
        [
            edges,
            rng.integers(-r - seg, r + seg, 1200),
            rng.integers(cfg.code_min, cfg.code_max + 1, 300),
            np.arange(-seg * 3, seg * 3),
        ]
    ).astype(np.int64)
    codes = np.concatenate([codes, np.zeros(-len(codes) % cfg.lanes, dtype=np.int64)])
    _check(cfg, codes, seed=4, idle=0.3, backpressure=0.3)


def test_heavy_backpressure_loses_nothing():
    rng = np.random.default_rng(5)
    codes = rng.integers(SMALL.code_min, SMALL.code_max + 1, 400).astype(np.int64)
    _check(SMALL, codes, seed=6, idle=0.0, backpressure=0.8, last_every=7)


def test_latency_and_full_throughput():
    cfg = GeluConfig()
    codes = np.arange(-400, 400, dtype=np.int64)
    got, _, taken_at, readies = _run(cfg, codes, seed=0, idle=0.0, backpressure=0.0)
    np.testing.assert_array_equal(got, gelu(codes, cfg).reshape(-1, cfg.lanes))
    beats = len(codes) // cfg.lanes
    # The first beat is accepted on the first edge and leaves LATENCY edges later; then one
    # beat per cycle, and the input is never throttled.
    assert taken_at == list(range(LATENCY, LATENCY + beats))
    assert all(readies)


def test_rom_words_pack_samples_and_slopes():
    cfg = GeluConfig()
    words, slope_shape = rom_words(cfg)
    rom = gelu_rom(cfg)
    assert len(words) == cfg.rom_entries - 1
    assert slope_shape.signed and slope_shape.width == 11  # slopes span -264 .. 998
    for k, word in enumerate(words):
        base = word & ((1 << cfg.rom_bits) - 1)
        slope = word >> cfg.rom_bits
        slope -= (slope >> (slope_shape.width - 1)) << slope_shape.width
        assert (base, base + slope) == (rom[k], rom[k + 1])


def test_generate_gelu_writes_verilog_and_layout(tmp_path):
    cfg = GeluConfig(lanes=2)
    out = generate_gelu(cfg, tmp_path)
    assert out["top"] == TOP_NAME == "gelu_rom"
    assert out["latency"] == LATENCY
    text = out["verilog"]
    assert f"module {TOP_NAME}(" in text
    for port in ("clk", "rst", "x__tdata", "x__tlast", "x__tready", "y__tdata", "y__tlast"):
        assert f" {port}" in text
    assert "input [31:0] x__tdata" in text and "output [31:0] y__tdata" in text
    assert sorted(p.rsplit("/", 1)[1] for p in out["files"]) == [
        "config.json",
        "gelu_rom.v",
        "stream_layout.json",
    ]
    layout = json.loads((tmp_path / "stream_layout.json").read_text())
    assert layout["streams"]["x"]["data_width"] == 32 == layout["streams"]["y"]["data_width"]
    assert layout["streams"]["y"]["container_bits"] == 16
    assert GeluConfig.from_dict(layout["config"]) == cfg
    assert (tmp_path / "gelu_rom.v").read_text() == text
    assert generate_gelu(cfg)["files"] == []
