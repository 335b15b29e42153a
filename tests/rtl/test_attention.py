"""AttentionEngine RTL in the Amaranth simulator against the golden ``attention`` model.

A small engine is driven through its AXI4-Lite registers and its q / k / v / o streams (random
idle cycles on the inputs, random back-pressure on the output) and checked bit for bit; without
stalls the CYCLES register must equal the cycle model exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from tessera.models.attention import (
    EXP_LATENCY,
    AttentionConfig,
    AttentionMask,
    attention,
    attention_streams,
    attention_traffic,
)
from tessera.models.gemm import Requant
from tessera.rtl.attention import REGISTERS, AttentionEngine, generate_attention, register_map
from tessera.rtl.exp import ExpNeg, Reciprocal
from tessera.sim.attention import AttentionCase

REG = {r.name: r.offset for r in REGISTERS}


@dataclass
class Run:
    """What one simulated run produced."""

    out_beats: np.ndarray
    last_flags: list[bool]
    status: int
    cycles_register: int
    leftover: dict[str, int]


def _int8_lanes(word: int, lanes: int) -> list[int]:
    return [
        ((word >> (8 * i)) & 0xFF) - (256 if (word >> (8 * i)) & 0x80 else 0) for i in range(lanes)
    ]


def _pack(beat: np.ndarray) -> int:
    return int.from_bytes(np.asarray(beat, dtype=np.int8).tobytes(), "little")


def _simulate(
    cfg: AttentionConfig,
    jobs: list[dict],
    *,
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
) -> list[Run]:
    """Run each job (registers + streams) in turn on one engine; return what came out."""
    dut = AttentionEngine(cfg)
    rng = np.random.default_rng(seed)
    runs: list[Run] = []
    csr = dut.csr

    async def bench(ctx):
        async def write(offset: int, value: int) -> None:
            ctx.set(csr.awaddr, offset)
            ctx.set(csr.wdata, value & 0xFFFFFFFF)
            ctx.set(csr.awvalid, 1)
            ctx.set(csr.wvalid, 1)
            ctx.set(csr.bready, 1)
            await ctx.tick()
            ctx.set(csr.awvalid, 0)
            ctx.set(csr.wvalid, 0)
            await ctx.tick()

        async def read(offset: int) -> int:
            ctx.set(csr.araddr, offset)
            ctx.set(csr.arvalid, 1)
            ctx.set(csr.rready, 1)
            await ctx.tick()
            ctx.set(csr.arvalid, 0)
            value = ctx.get(csr.rdata)
            await ctx.tick()
            return value

        for job in jobs:
            for name, value in job["registers"].items():
                await write(REG[name], value)
            sources = {name: [job["streams"][name], 0, False] for name in ("q", "k", "v")}
            got, lasts = [], []
            expected_beats = job["expected_beats"]
            # The start write goes out on the first cycle, with the streams already offered.
            ctx.set(csr.awaddr, REG["CTRL"])
            ctx.set(csr.wdata, 1)
            ctx.set(csr.bready, 1)
            for cycle in range(job["max_cycles"]):
                ctx.set(csr.awvalid, cycle == 0)
                ctx.set(csr.wvalid, cycle == 0)
                if len(got) == expected_beats and cycle > 1:
                    break
                fires = {}
                for name, state in sources.items():
                    beats, index, valid = state
                    port = getattr(dut, name)
                    if not valid and index < len(beats) and rng.random() >= idle:
                        state[2] = valid = True
                    ctx.set(port.tvalid, valid)
                    ctx.set(port.tdata, _pack(beats[index]) if valid else 0)
                    fires[name] = valid and ctx.get(port.tready)
                ready = bool(rng.random() >= backpressure)
                ctx.set(dut.o.tready, ready)
                out_fire = ready and ctx.get(dut.o.tvalid)
                if out_fire:
                    got.append(_int8_lanes(ctx.get(dut.o.tdata), cfg.lanes))
                    lasts.append(bool(ctx.get(dut.o.tlast)))
                await ctx.tick()
                for name, fired in fires.items():
                    if fired:
                        sources[name][1] += 1
                        sources[name][2] = False
            for name in ("q", "k", "v"):
                ctx.set(getattr(dut, name).tvalid, 0)
            ctx.set(dut.o.tready, 0)
            await ctx.tick()
            runs.append(
                Run(
                    out_beats=np.array(got, dtype=np.int64).reshape(-1, cfg.lanes),
                    last_flags=lasts,
                    status=await read(REG["CTRL"]),
                    cycles_register=await read(REG["CYCLES"]),
                    leftover={n: len(s[0]) - s[1] for n, s in sources.items()},
                )
            )

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return runs


def _job(cfg: AttentionConfig, case: AttentionCase) -> dict:
    q, k, v = case.operands(cfg)
    requant = case.score_requant(cfg)
    out = attention(q, k, v, cfg, requant, case.mask)
    streams = attention_streams(q, k, v, cfg, out)
    beats = len(streams["k"]) * 2 + len(streams["q"]) + len(streams["o"])
    return {
        "registers": {
            "SEQ_LEN": case.seq_len,
            "MULTIPLIER": requant.multiplier,
            "SHIFT": requant.shift,
            "MASK": case.mask.code,
            "SINK": case.mask.sink,
            "WINDOW": case.mask.window,
        },
        "streams": streams,
        "expected": streams["o"].astype(np.int64),
        "expected_beats": len(streams["o"]),
        "max_cycles": 6 * beats + 400 * cfg.groups(case.seq_len) * cfg.heads + 200,
        "seq_len": case.seq_len,
    }


def _check(cfg, job, run):
    want = job["expected"]
    got = run.out_beats
    for beat in range(min(len(got), len(want))):
        if not np.array_equal(got[beat], want[beat]):
            lane = int(np.flatnonzero(got[beat] != want[beat])[0])
            flat = beat * cfg.lanes + lane
            head, rest = divmod(flat, job["seq_len"] * cfg.head_dim)
            row, col = divmod(rest, cfg.head_dim)
            pytest.fail(
                f"first mismatch at head {head}, query row {row}, column {col}: expected "
                f"{want[beat][lane]}, got {got[beat][lane]}"
            )
    assert len(got) == len(want), f"{len(got)} output beats, expected {len(want)}"
    assert run.last_flags == [False] * (len(want) - 1) + [True], "tlast must mark the last beat"
    assert run.status & 0b111 == 0b010, f"CTRL status {run.status:#x}: want DONE only"
    assert run.leftover == {"q": 0, "k": 0, "v": 0}, f"unconsumed input beats {run.leftover}"


SMALL = AttentionConfig(head_dim=8, lanes=4, parallelism=2, max_seq=16)
CAUSAL = AttentionMask("causal")
NARROW = AttentionConfig(
    head_dim=4,
    lanes=2,
    parallelism=2,
    max_seq=8,
    score_bits=8,
    score_frac=4,
    weight_bits=12,
    weight_frac=10,
    rounding="RND_CONV",
    overflow="WRAP",
)


@pytest.mark.parametrize(
    ("cfg", "case"),
    [
        (SMALL, AttentionCase(5, seed=1)),
        (SMALL, AttentionCase(7, seed=2, mask=CAUSAL, idle=0.3, backpressure=0.3)),
        (
            SMALL,
            AttentionCase(
                16, seed=3, mask=AttentionMask("lambda", 2, 3), idle=0.3, backpressure=0.3
            ),
        ),
        (
            AttentionConfig(head_dim=4, lanes=4, parallelism=3, max_seq=9, heads=2),
            AttentionCase(7, seed=4, mask=AttentionMask("lambda", 1, 2), idle=0.3),
        ),
        (
            AttentionConfig(head_dim=6, lanes=2, parallelism=1, max_seq=4),
            AttentionCase(3, seed=5, mask=CAUSAL, backpressure=0.3),
        ),
        # Narrow logits that wrap around (WRAP), ties to even, 12-bit weights.
        (NARROW, AttentionCase(8, seed=6, requant=Requant(1 << 30, 30), idle=0.2)),
    ],
    ids=["none", "causal-stalls", "lambda-full-length", "P3-two-heads", "P1-3-beats", "wrap"],
)
def test_engine_matches_golden(cfg, case):
    job = _job(cfg, case)
    (run,) = _simulate(cfg, [job], idle=case.idle, backpressure=case.backpressure, seed=case.seed)
    _check(cfg, job, run)


def test_back_to_back_runs_and_extremes():
    """Three runs on one engine (state must not leak): S=1, one huge logit, all-equal keys."""
    cases = [
        AttentionCase(1, seed=1, mask=CAUSAL),
        AttentionCase(4, seed=2, data="extreme", requant=Requant(1 << 30, 29)),
        AttentionCase(3, seed=3, data="equal"),
    ]
    jobs = [_job(SMALL, case) for case in cases]
    for job, run in zip(jobs, _simulate(SMALL, jobs, idle=0.2, backpressure=0.4), strict=True):
        _check(SMALL, job, run)


@pytest.mark.parametrize("seq_len", [1, 2, 5])
def test_cycles_register_equals_model(seq_len):
    """Without stalls the engine takes exactly the cycle model's count."""
    job = _job(SMALL, AttentionCase(seq_len, seed=seq_len))
    (run,) = _simulate(SMALL, [job])
    _check(SMALL, job, run)
    assert run.cycles_register == attention_traffic(seq_len, SMALL)["cycles"]


def test_model_timing_constants_match_units():
    """The cycle model's defaults are the latencies of the exp and reciprocal units."""
    for cfg in (SMALL, AttentionConfig()):
        sm = cfg.softmax
        exp_unit, recip_unit = ExpNeg(sm), Reciprocal(sm)
        assert exp_unit.latency == EXP_LATENCY
        assert recip_unit.cycles == sm.recip_bits + 1
        for unit in (exp_unit, recip_unit):
            Fragment.get(unit, None)  # elaborates: the units are sound for this config


@pytest.mark.parametrize(
    ("registers", "why"),
    [
        ({"SEQ_LEN": 0}, "zero length"),
        ({"SEQ_LEN": 17}, "above max_seq"),
        ({"SEQ_LEN": 4, "MASK": 3}, "unknown mask"),
        ({"SEQ_LEN": 4, "MASK": 2, "WINDOW": 0}, "lambda without window"),
    ],
)
def test_bad_settings_set_error(registers, why):
    job = {
        "registers": {"MULTIPLIER": 1, "SHIFT": 0, **registers},
        "streams": {n: np.zeros((0, SMALL.lanes), dtype=np.int8) for n in "qkv"},
        "expected_beats": 0,
        "max_cycles": 10,
    }
    (run,) = _simulate(SMALL, [job])
    assert run.status & 0b111 == 0b100, f"{why}: CTRL {run.status:#x}, want ERROR only"
    assert run.cycles_register == 0


def test_generate_writes_verilog_and_register_map(tmp_path):
    result = generate_attention(SMALL, tmp_path)
    assert result["top"] == "attention_engine"
    assert "module attention_engine" in result["verilog"]
    for port in ("q__tdata", "k__tready", "v__tvalid", "o__tlast", "csr__awaddr"):
        assert port in result["verilog"], port
    regmap = json.loads((tmp_path / "register_map.json").read_text())
    assert regmap == register_map(SMALL)
    assert AttentionConfig.from_dict(regmap["config"]) == SMALL
    offsets = [r["offset"] for r in regmap["csr"]["registers"]]
    assert offsets == sorted(set(offsets)) and max(offsets) < 1 << regmap["csr"]["addr_width"]
