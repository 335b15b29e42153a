"""LayerNorm RTL (Amaranth simulator) against the golden model: data, protocol, throughput."""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.models.layernorm import LayerNormConfig, layernorm
from tessera.rtl.layernorm import (
    TOP_NAME,
    LayerNorm,
    generate_layernorm,
    row_latency,
    rsqrt_latency,
)

CYCLE_CAP = 20_000


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def _random_params(cfg: LayerNormConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    lo, hi = -(1 << (cfg.param_bits - 1)), 1 << (cfg.param_bits - 1)
    return rng.integers(lo, hi, cfg.dim), rng.integers(lo, hi, cfg.dim)


def _random_rows(cfg: LayerNormConfig, rng: np.random.Generator, rows: int) -> np.ndarray:
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    x = rng.integers(lo, hi + 1, (rows, cfg.dim))
    if rows > 1:
        x[1] = rng.integers(lo, hi + 1)  # zero variance
    if rows > 2:
        x[2] = np.where(np.arange(cfg.dim) % 2, hi, lo)  # alternating extremes
    if rows > 3:
        x[3] = 0
        x[3, rng.integers(cfg.dim)] = hi  # one outlier
    if rows > 4:
        x[4] = rng.integers(max(lo, -3), min(hi, 3) + 1, cfg.dim)  # tiny variance: eps matters
    return x


@dataclass
class Run:
    """What a simulation produced."""

    outputs: list[int] = field(default_factory=list)
    lasts: list[bool] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)  # cycle of each output beat
    input_cycles: list[int] = field(default_factory=list)  # cycle each x beat was taken
    error: int = 0


def _simulate(
    cfg: LayerNormConfig,
    script: list[tuple[str, object]],
    *,
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    x_lasts: list[bool] | None = None,
    param_lasts: list[bool] | None = None,
) -> Run:
    """Drive ``script`` (``("params", (gamma, beta))`` and ``("rows", x)`` in order) into the unit
    and collect every output beat."""
    dut = LayerNorm(cfg)
    rng = random.Random(seed)
    pbytes = cfg.param_bytes
    total = sum(np.asarray(item).size for kind, item in script if kind == "rows")
    run = Run()
    ticks = [0]

    async def count(ctx) -> None:
        async for _ in ctx.tick():
            ticks[0] += 1

    async def send(ctx, port, data: int, last: bool) -> None:
        while rng.random() < idle:
            await ctx.tick()
        ctx.set(port.tdata, data)
        ctx.set(port.tlast, last)
        ctx.set(port.tvalid, 1)
        for _ in range(CYCLE_CAP):
            _, _, ready = await ctx.tick().sample(port.tready)
            if ready:
                break
        else:
            raise AssertionError("input beat never accepted")
        ctx.set(port.tvalid, 0)
        if port is dut.x:
            run.input_cycles.append(ticks[0])

    async def driver(ctx) -> None:
        beat = 0
        for kind, item in script:
            if kind == "params":
                gamma, beta = item
                mask = (1 << (8 * pbytes)) - 1
                for i in range(cfg.dim):
                    word = (int(gamma[i]) & mask) | ((int(beta[i]) & mask) << (8 * pbytes))
                    last = param_lasts[i] if param_lasts is not None else i == cfg.dim - 1
                    await send(ctx, dut.params, word, last)
            else:
                for value in np.asarray(item).reshape(-1):
                    col = beat % cfg.dim
                    last = x_lasts[beat] if x_lasts is not None else col == cfg.dim - 1
                    await send(ctx, dut.x, int(value) & ((1 << (8 * cfg.in_bytes)) - 1), last)
                    beat += 1

    async def sink(ctx) -> None:
        while len(run.outputs) < total:
            ctx.set(dut.y.tready, rng.random() >= backpressure)
            _, _, valid, ready, data, last = await ctx.tick().sample(
                dut.y.tvalid, dut.y.tready, dut.y.tdata, dut.y.tlast
            )
            assert ticks[0] < CYCLE_CAP, f"only {len(run.outputs)} of {total} outputs"
            if valid and ready:
                run.outputs.append(_signed(data, 8 * cfg.out_bytes))
                run.lasts.append(bool(last))
                run.cycles.append(ticks[0])
        # Nothing more may come out.
        ctx.set(dut.y.tready, 1)
        for _ in range(3 * cfg.dim + 40):
            _, _, valid = await ctx.tick().sample(dut.y.tvalid)
            assert not valid, "an output beyond the expected ones"
        run.error = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(count, background=True)
    sim.add_testbench(driver)
    sim.add_testbench(sink)
    sim.run()
    return run


def _expected(cfg: LayerNormConfig, script: list[tuple[str, object]]) -> list[int]:
    want: list[int] = []
    params = None
    for kind, item in script:
        if kind == "params":
            params = item
        else:
            want.extend(layernorm(item, params[0], params[1], cfg).reshape(-1).tolist())
    return want


def _check(cfg: LayerNormConfig, run: Run, want: list[int]) -> None:
    assert len(run.outputs) == len(want)
    for i, (got, exp) in enumerate(zip(run.outputs, want, strict=True)):
        assert got == exp, f"row {i // cfg.dim}, column {i % cfg.dim}: expected {exp}, got {got}"
    assert run.lasts == [(i % cfg.dim) == cfg.dim - 1 for i in range(len(want))]


CONFIGS = {
    "dim5": LayerNormConfig(dim=5),
    "dim8-newton2": LayerNormConfig(dim=8, rsqrt_lut_bits=3, newton_steps=2, rsqrt_frac=20),
    "dim1": LayerNormConfig(dim=1),
    "dim6-narrow": LayerNormConfig(
        dim=6, in_bits=9, in_frac=3, out_bits=12, out_frac=9, param_bits=10, param_frac=7
    ),
    "dim3-seed-only": LayerNormConfig(dim=3, newton_steps=0, eps=0.0, norm_frac=10),
}


@pytest.mark.parametrize("stalls", [0.0, 0.3], ids=["no-stalls", "stalls"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_unit_matches_golden(name, stalls):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}/{stalls}".encode()))
    script = [
        ("params", _random_params(cfg, rng)),
        ("rows", _random_rows(cfg, rng, 6)),
        ("params", _random_params(cfg, rng)),
        ("rows", _random_rows(cfg, rng, 2)),
    ]
    run = _simulate(cfg, script, idle=stalls, backpressure=stalls, seed=len(name))
    _check(cfg, run, _expected(cfg, script))
    assert run.error == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_configs(seed):
    """Random formats, table sizes, Newton steps and row lengths, with stalls."""
    rng = np.random.default_rng(100 + seed)
    in_bits = int(rng.integers(2, 25))
    out_bits = int(rng.integers(2, 25))
    param_bits = int(rng.integers(2, 25))
    rsqrt_frac = int(rng.integers(8, 25))
    norm_frac = int(rng.integers(2, rsqrt_frac + 1))
    param_frac = int(rng.integers(0, param_bits))
    cfg = LayerNormConfig(
        dim=int(rng.integers(1, 12)),
        in_bits=in_bits,
        in_frac=int(rng.integers(0, in_bits)),
        out_bits=out_bits,
        out_frac=int(rng.integers(0, min(out_bits, norm_frac + param_frac + 1))),
        param_bits=param_bits,
        param_frac=param_frac,
        eps=float(rng.choice([0.0, 1e-6, 1e-3, 0.5])),
        rsqrt_lut_bits=int(rng.integers(1, 11)),
        newton_steps=int(rng.integers(0, 4)),
        rsqrt_frac=rsqrt_frac,
        norm_frac=norm_frac,
    )
    script = [
        ("params", _random_params(cfg, rng)),
        ("rows", _random_rows(cfg, rng, 6)),
    ]
    run = _simulate(cfg, script, idle=0.2, backpressure=0.4, seed=seed)
    _check(cfg, run, _expected(cfg, script))


def test_saturating_parameters():
    """Full-scale gamma and beta drive the outputs into saturation on both sides."""
    cfg = LayerNormConfig(dim=4, out_bits=10, out_frac=6)
    top = (1 << (cfg.param_bits - 1)) - 1
    gamma = np.array([top, -top - 1, top, 0])
    beta = np.array([top, -top - 1, -top - 1, top])
    rng = np.random.default_rng(3)
    script = [("params", (gamma, beta)), ("rows", _random_rows(cfg, rng, 5))]
    want = _expected(cfg, script)
    lo, hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    assert lo in want and hi in want  # the case does reach both rails
    _check(cfg, _simulate(cfg, script, backpressure=0.5, seed=3), want)


def test_params_wait_until_rows_drain():
    """A packet offered right behind some rows is taken only after they have been issued, so those
    rows keep the old parameters and the rows after the packet get the new ones."""
    cfg = LayerNormConfig(dim=4)
    rng = np.random.default_rng(5)
    script = [
        ("params", _random_params(cfg, rng)),
        ("rows", _random_rows(cfg, rng, 3)),
        ("params", _random_params(cfg, rng)),
        ("rows", _random_rows(cfg, rng, 3)),
    ]
    run = _simulate(cfg, script, backpressure=0.7, seed=5)
    _check(cfg, run, _expected(cfg, script))


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_throughput_and_latency(steps):
    """With no stalls, rows go in and come out back to back, one element per cycle, and a row's
    first output follows its last input after :func:`row_latency` cycles."""
    cfg = LayerNormConfig(dim=28, newton_steps=steps)
    assert cfg.dim > rsqrt_latency(cfg) + 4
    rng = np.random.default_rng(7)
    rows = 4
    script = [("params", _random_params(cfg, rng)), ("rows", _random_rows(cfg, rng, rows))]
    run = _simulate(cfg, script)
    _check(cfg, run, _expected(cfg, script))
    for name, cycles in (("input", run.input_cycles), ("output", run.cycles)):
        gaps = sorted(set(np.diff(cycles).tolist()))
        assert gaps == [1], f"{name} gaps {gaps}"
    assert run.cycles[0] - run.input_cycles[cfg.dim - 1] == row_latency(cfg)


def test_short_rows_are_sequencer_bound():
    """Rows shorter than the sequencer's latency come one per sequencer pass."""
    cfg = LayerNormConfig(dim=3)
    rng = np.random.default_rng(8)
    rows = 10
    script = [("params", _random_params(cfg, rng)), ("rows", _random_rows(cfg, rng, rows))]
    run = _simulate(cfg, script)
    _check(cfg, run, _expected(cfg, script))
    row_starts = np.array(run.cycles[:: cfg.dim])
    period = np.diff(row_starts[2:]).mean()  # steady state
    assert rsqrt_latency(cfg) <= period <= rsqrt_latency(cfg) + 3, period


@pytest.mark.parametrize("where", ["x-early", "x-missing", "params-early", "params-missing"])
def test_tlast_mismatch_sets_sticky_error(where):
    """Rows and packets are counted, not delimited by tlast: a wrong tlast raises ``error``
    and changes nothing else."""
    cfg = LayerNormConfig(dim=4)
    rng = np.random.default_rng(9)
    x_lasts = [(i % 4) == 3 for i in range(12)]
    param_lasts = [False, False, False, True]
    if where == "x-early":
        x_lasts[5] = True
    elif where == "x-missing":
        x_lasts[7] = False
    elif where == "params-early":
        param_lasts[1] = True
    else:
        param_lasts[3] = False
    script = [("params", _random_params(cfg, rng)), ("rows", _random_rows(cfg, rng, 3))]
    run = _simulate(cfg, script, x_lasts=x_lasts, param_lasts=param_lasts)
    _check(cfg, run, _expected(cfg, script))
    assert run.error == 1


def test_generate_layernorm(tmp_path):
    cfg = LayerNormConfig(dim=7)
    result = generate_layernorm(cfg, tmp_path)
    assert result["top"] == TOP_NAME == "layernorm"
    text = result["verilog"]
    assert f"module {TOP_NAME}(" in text
    for port in ("clk", "rst", "x__tdata", "x__tlast", "params__tdata", "y__tready", "error"):
        assert port in text
    assert sorted(p.split("/")[-1] for p in result["files"]) == [
        "config.json",
        "layernorm.v",
        "register_map.json",
    ]
    regmap = json.loads((tmp_path / "register_map.json").read_text())
    assert regmap["streams"]["x"]["data_width"] == 16
    assert regmap["streams"]["params"]["data_width"] == 32
    assert LayerNormConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
