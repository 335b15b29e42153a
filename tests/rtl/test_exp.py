"""ExpNeg and Reciprocal RTL (Amaranth simulator) against golden ``exp_neg`` and ``reciprocal``."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.models.softmax import SoftmaxConfig, exp_neg, reciprocal
from tessera.rtl.exp import ExpNeg, Reciprocal

SMALL = SoftmaxConfig(
    in_bits=8, in_frac=4, exp_frac=10, lut_bits=3, interp_bits=4, out_bits=8, out_frac=7, max_len=8
)
NO_INTERP = SoftmaxConfig(
    in_bits=6, in_frac=2, exp_frac=8, lut_bits=2, interp_bits=0, out_bits=4, out_frac=3, max_len=3
)
TINY = SoftmaxConfig(
    in_bits=4, in_frac=0, exp_frac=8, lut_bits=1, interp_bits=0, out_bits=2, out_frac=1, max_len=1
)
# Widest formats: 25-bit differences, 37-bit sums, 42-bit reciprocals.
WIDE = SoftmaxConfig(
    in_bits=24,
    in_frac=2,
    exp_frac=20,
    lut_bits=8,
    interp_bits=10,
    out_bits=24,
    out_frac=23,
    max_len=65536,
)
DEFAULT = SoftmaxConfig()


def _run_exp(cfg: SoftmaxConfig, ds: list[int], enable_rate: float, seed: int) -> list[int]:
    """Stream ``ds`` through ExpNeg with ``en`` random (probability ``enable_rate``)."""
    dut = ExpNeg(cfg)
    got: list[int] = []
    rng = np.random.default_rng(seed)

    async def bench(ctx):
        sent = 0
        for _ in range(4 * len(ds) + 100):
            if len(got) == len(ds):
                break
            en = bool(rng.random() < enable_rate)
            ctx.set(dut.en, en)
            ctx.set(dut.valid_in, sent < len(ds))
            ctx.set(dut.d, ds[sent] if sent < len(ds) else 0)
            await ctx.tick()
            if en:
                sent += sent < len(ds)
                # An enabled edge moved the pipeline: a valid output now is a new result.
                if ctx.get(dut.valid_out):
                    got.append(ctx.get(dut.e))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def _check(cfg: SoftmaxConfig, ds: list[int], got: list[int]) -> None:
    want = exp_neg(np.array(ds, dtype=np.int64), cfg)
    assert len(got) == len(ds), f"{len(got)} results for {len(ds)} inputs"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"d={ds[i]} (index {i}): RTL {g}, golden {w}"


@pytest.mark.parametrize("cfg", [SMALL, NO_INTERP, TINY], ids=["small", "no_interp", "tiny"])
def test_exp_neg_every_difference(cfg):
    ds = list(range(-(1 << cfg.in_bits), 1))
    _check(cfg, ds, _run_exp(cfg, ds, enable_rate=0.7, seed=cfg.in_bits))


@pytest.mark.parametrize("cfg", [DEFAULT, WIDE], ids=["default", "wide"])
def test_exp_neg_dense_sample(cfg):
    rng = np.random.default_rng(5)
    # Every difference where exp(d) is not 0 (|d| < (exp_frac + 1) * ln 2, plus margin), the
    # extremes, and random differences down to -2**in_bits.
    live = int((cfg.exp_frac + 2) * np.log(2) * (1 << cfg.in_frac))
    ds = [*range(-live, 1), -(1 << cfg.in_bits), -(1 << cfg.in_bits) + 1]
    ds += [int(v) for v in rng.integers(-(1 << cfg.in_bits), 1, size=300)]
    got = _run_exp(cfg, ds, enable_rate=0.8, seed=11)
    _check(cfg, ds, got)
    assert max(got) == 1 << cfg.exp_frac and min(got) == 0


def test_exp_neg_latency_and_hold():
    cfg = SMALL
    dut = ExpNeg(cfg)
    d = -37
    want = int(exp_neg(np.array([d]), cfg)[0])
    seen: dict[str, int] = {}

    async def bench(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.d, d)
        ctx.set(dut.valid_in, 1)
        await ctx.tick()
        ctx.set(dut.valid_in, 0)
        ctx.set(dut.d, 0)
        for cycle in range(1, 10):
            if ctx.get(dut.valid_out):
                seen["cycle"] = cycle
                seen["e"] = ctx.get(dut.e)
                break
            await ctx.tick()
        # Disabled: the result and its valid hold for as long as en stays low.
        ctx.set(dut.en, 0)
        for _ in range(5):
            await ctx.tick()
            assert ctx.get(dut.valid_out) == 1
            assert ctx.get(dut.e) == want
        ctx.set(dut.en, 1)
        await ctx.tick()
        assert ctx.get(dut.valid_out) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"cycle": dut.latency, "e": want}


def _run_reciprocal(
    cfg: SoftmaxConfig, totals: list[int], gap: int
) -> tuple[list[int], list[int], int]:
    """Divide ``totals`` one after the other, ``gap`` idle cycles between; results, start-to-done
    cycle counts and the component's declared ``cycles``."""
    dut = Reciprocal(cfg)
    got: list[int] = []
    cycles: list[int] = []

    async def bench(ctx):
        for total in totals:
            ctx.set(dut.total, total)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            # Changing total after the start must not matter: it is sampled.
            ctx.set(dut.total, 0)
            waited = 1
            while not ctx.get(dut.done):
                assert ctx.get(dut.busy) == 1
                # A start while busy is ignored.
                ctx.set(dut.start, waited == 3)
                await ctx.tick()
                waited += 1
                assert waited < 4 * cfg.recip_bits, "no done pulse"
            ctx.set(dut.start, 0)
            cycles.append(waited)
            got.append(ctx.get(dut.recip))
            # done is a single-cycle pulse and recip holds afterwards.
            for _ in range(gap):
                await ctx.tick()
                assert ctx.get(dut.done) == 0 and ctx.get(dut.busy) == 0
                assert ctx.get(dut.recip) == got[-1]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, cycles, dut.cycles


@pytest.mark.parametrize(
    "cfg", [SMALL, DEFAULT, WIDE, TINY], ids=["small", "default", "wide", "tiny"]
)
def test_reciprocal_matches_golden(cfg):
    one = 1 << cfg.exp_frac
    top = cfg.max_len << cfg.exp_frac
    rng = np.random.default_rng(cfg.sum_bits)
    totals = [one, one + 1, one + 2, 2 * one - 1, 2 * one, 3 * one, top - 1, top]
    totals += [(1 << cfg.sum_bits) - 1]  # widest value the port takes
    totals += [int(v) for v in rng.integers(one, top + 1, size=25)]
    totals += [int(one * v) for v in rng.uniform(1.0, 2.0, size=5)]
    # Keep what the port can carry and the golden model accepts (tiny configs clip the edges).
    totals = [t for t in totals if one <= t < 1 << cfg.sum_bits]
    got, cycles, declared = _run_reciprocal(cfg, totals, gap=2)
    want = reciprocal(np.array(totals, dtype=np.int64), cfg)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"total={totals[i]} (index {i}): RTL {g}, golden {w}"
    assert set(cycles) == {declared}


def test_reciprocal_back_to_back():
    cfg = SMALL
    totals = [1 << cfg.exp_frac, (cfg.max_len << cfg.exp_frac) - 3, 1500, 5000]
    got, cycles, declared = _run_reciprocal(cfg, totals, gap=0)
    assert got == [int(v) for v in reciprocal(np.array(totals), cfg)]
    assert set(cycles) == {declared} and declared == cfg.recip_bits + 1
