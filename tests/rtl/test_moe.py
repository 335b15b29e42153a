"""MoeEngine generator: Verilog ports and register map, config checks, and the weight-buffer
readers in the Amaranth simulator (the whole engine is checked in tests/sim/test_moe.py)."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
from amaranth import Module, Signal, unsigned
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from tessera.models.moe import MoeConfig, moe_image_layout
from tessera.rtl.moe import (
    QUEUE_LEN_BASE,
    REGISTERS,
    TOP_NAME,
    MoeEngine,
    _byte_reader,
    _word_reader,
    csr_addr_width,
    generate_moe,
    register_map,
)

SMALL = MoeConfig(
    dim=8, experts=4, expert_hidden=8, top_k=2, tasks=2, max_tokens=32, rows=2, cols=4
)


def test_generate_writes_verilog_register_map_and_config(tmp_path):
    out = generate_moe(SMALL, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "moe_engine.v",
        "register_map.json",
    ]
    assert out["top"] == TOP_NAME
    verilog = (tmp_path / "moe_engine.v").read_text()
    header = verilog[verilog.index(f"module {TOP_NAME}(") :].split(";")[0]
    ports = set(re.findall(r"\w+", header)) - {"module", TOP_NAME}
    axi = {
        f"m_axi__{name}"
        for name in (
            "arid araddr arlen arsize arburst arvalid arready rid rdata rresp rlast rvalid rready"
        ).split()
    }
    assert axi <= ports
    assert {"x__tdata", "x__tlast", "y__tdata", "y__tlast", "csr__awaddr", "clk", "rst"} <= ports
    assert re.search(r"input \[127:0\] m_axi__rdata;", verilog)  # bus_bytes = 16
    assert re.search(r"output \[31:0\] y__tdata;", verilog)  # cols = 4 int8 lanes
    assert json.loads((tmp_path / "config.json").read_text()) == SMALL.to_dict()
    regmap = json.loads((tmp_path / "register_map.json").read_text())
    assert regmap == json.loads(json.dumps(register_map(SMALL)))
    names = {r["name"]: r["offset"] for r in regmap["csr"]["registers"]}
    for name in ("CTRL", "TOKENS", "TASK", "WEIGHT_BASE", "CYCLES", "WEIGHT_BYTES"):
        assert name in names
    assert names["EXPERTS_LOADED"] and names["QUEUE_LEN"] == QUEUE_LEN_BASE
    assert regmap["csr"]["addr_width"] == csr_addr_width(SMALL) == 7
    assert regmap["weight_image"]["layout"] == moe_image_layout(SMALL).to_dict()
    assert regmap["m_axi"]["data_width"] == 128
    assert regmap["streams"]["x"]["data_width"] == 32


def test_register_offsets_are_distinct_words_below_the_queue_window():
    offsets = [r.offset for r in REGISTERS]
    assert len(set(offsets)) == len(offsets)
    assert all(o % 4 == 0 for o in offsets)
    assert max(o for o in offsets if o != QUEUE_LEN_BASE) < QUEUE_LEN_BASE
    # the window grows with the experts
    assert csr_addr_width(dataclasses.replace(SMALL, experts=200, top_k=2)) == 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": 10}, "dim=10 must be a multiple of cols=4"),
        ({"max_tokens": 65535, "dim": 128}, "token buffer"),
        ({"dim": 4096, "expert_hidden": 4096, "max_tokens": 4}, "weight buffer"),
        ({"rows": 64, "cols": 64, "dim": 64}, "rows \\* cols"),
    ],
)
def test_engine_rejects_configs_it_cannot_build(changes, message):
    cfg = dataclasses.replace(SMALL, **changes)
    with pytest.raises(ValueError, match=message):
        MoeEngine(cfg)
    with pytest.raises(ValueError, match=message):
        register_map(cfg)


@pytest.mark.parametrize("word_bytes", [1, 2, 4, 16])
def test_weight_buffer_readers_fetch_unaligned_bytes_and_aligned_words(word_bytes):
    rng = random.Random(word_bytes)
    depth = 64 // word_bytes
    data = bytes(rng.randrange(256) for _ in range(depth * word_bytes))
    words = [
        int.from_bytes(data[i : i + word_bytes], "little") for i in range(0, len(data), word_bytes)
    ]
    m = Module()
    m.submodules.mem = mem = Memory(shape=unsigned(word_bytes * 8), depth=depth, init=words)
    address = Signal(7)
    count = 5
    byte_values = _byte_reader(m, mem, address, count, word_bytes, "b")
    word_address = Signal(7)
    word_values = (
        _word_reader(m, mem, word_address, 3, 4, word_bytes, "w") if word_bytes >= 4 else []
    )
    seen = []

    async def bench(ctx):
        for _ in range(40):
            a = rng.randrange(len(data) - count)
            wa = 4 * rng.randrange((len(data) - 12) // 4)
            ctx.set(address, a)
            ctx.set(word_address, wa)
            await ctx.tick()
            got = [ctx.get(v) for v in byte_values]
            assert got == list(data[a : a + count]), f"bytes at {a}"
            for i, v in enumerate(word_values):
                want = int.from_bytes(data[wa + 4 * i : wa + 4 * i + 4], "little")
                assert ctx.get(v) == want, f"word {i} at {wa}"
            seen.append(a)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) == 40
