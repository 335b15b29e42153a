"""Tests for tessera.estimators.synthesis: real Yosys runs on small Amaranth designs."""

# No `from __future__ import annotations`: Amaranth reads the port annotations at runtime.

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import verilog as amaranth_verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.estimators.synthesis import (
    FAMILIES,
    SynthesisError,
    SynthResult,
    default_cache_dir,
    synthesize,
    warm_up,
)

DSP_CELL = {"xc7": "DSP48E1", "xcup": "DSP48E2", "ecp5": "MULT18X18D", "ice40": "SB_MAC16"}


class MultiplyAccumulate(wiring.Component):
    """Registered 8x8 unsigned multiplier feeding a 24-bit accumulator and a sample counter.

    Attributes
    ----------
    a, b : In(8)
        Operands, registered on entry.
    en : In(1)
        Operands valid; travels with the product through the pipeline.
    acc : Out(24)
        Running sum of products.
    count : Out(8)
        Number of accumulated products.
    """

    a: In(8)
    b: In(8)
    en: In(1)
    acc: Out(24)
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        a, b, product = Signal(8), Signal(8), Signal(16)
        valid, product_valid = Signal(), Signal()
        m.d.sync += [
            a.eq(self.a),
            b.eq(self.b),
            valid.eq(self.en),
            product.eq(a * b),
            product_valid.eq(valid),
        ]
        with m.If(product_valid):
            m.d.sync += [self.acc.eq(self.acc + product), self.count.eq(self.count + 1)]
        return m


def memory_verilog(depth: int, width: int) -> str:
    address = (depth - 1).bit_length()
    return f"""\
module mem(input clk, input we, input [{address - 1}:0] wa, ra,
           input [{width - 1}:0] d, output reg [{width - 1}:0] q);
  reg [{width - 1}:0] data [0:{depth - 1}];
  always @(posedge clk) begin
    if (we) data[wa] <= d;
    q <= data[ra];
  end
endmodule
"""


@pytest.fixture(scope="module")
def mac_verilog() -> str:
    return amaranth_verilog.convert(MultiplyAccumulate(), name="mac")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the module so each design/family pair is synthesised once.
    return tmp_path_factory.mktemp("synth-cache")


@pytest.mark.parametrize("family", FAMILIES)
def test_mac_maps_to_one_dsp(mac_verilog: str, cache_dir: Path, family: str) -> None:
    result = synthesize(mac_verilog, "mac", family, cache_dir=cache_dir)
    assert result.family == family
    assert result.top == "mac"
    assert result.dsp == 1
    assert result.cells[DSP_CELL[family]] == 1
    for name in ("lut", "ff", "dsp", "carry", "lutram"):
        assert isinstance(getattr(result, name), int), name
    # 8 count bits + 2 valid bits at least; operand/product/accumulator registers may be
    # absorbed into the DSP, so at most 8+8+16+24+8+2 = 66.
    assert 10 <= result.ff <= 66
    assert 0 <= result.lut < 100
    assert result.bram == 0
    assert result.lutram == 0
    assert result.yosys_version
    assert result.seconds > 0


def test_xc7_and_ecp5_counts(mac_verilog: str, cache_dir: Path) -> None:
    xc7 = synthesize(mac_verilog, "mac", "xc7", cache_dir=cache_dir)
    ecp5 = synthesize(mac_verilog, "mac", "ecp5", cache_dir=cache_dir)
    assert xc7.cells["DSP48E1"] == 1
    # DSP48E1 absorbs the operand, product and accumulator registers; ECP5's MULT18X18D
    # has no accumulator, so the 24-bit sum stays in fabric flip-flops and a CCU2C chain.
    assert xc7.ff < ecp5.ff
    assert ecp5.cells["MULT18X18D"] == 1
    assert ecp5.ff >= 24 + 8
    assert ecp5.carry >= (24 + 8) // 2  # a CCU2C adds two bits


def test_second_call_is_cached(mac_verilog: str, tmp_path: Path) -> None:
    first = synthesize(mac_verilog, "mac", "ecp5", cache_dir=tmp_path)
    second = synthesize(mac_verilog, "mac", "ecp5", cache_dir=tmp_path)
    assert not first.cached
    assert second.cached
    assert second == SynthResult(**{**first.to_dict(), "cached": True})
    entries = list(tmp_path.glob("*.json"))
    assert len(entries) == 1
    assert json.loads(entries[0].read_text())["dsp"] == 1
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def test_file_path_shares_cache_with_text(mac_verilog: str, tmp_path: Path) -> None:
    source = tmp_path / "mac.v"
    source.write_text(mac_verilog)
    cache = tmp_path / "cache"
    from_path = synthesize(source, "mac", "ice40", cache_dir=cache)
    from_str_path = synthesize(str(source), "mac", "ice40", cache_dir=cache)
    from_text = synthesize(mac_verilog, "mac", "ice40", cache_dir=cache)
    assert not from_path.cached
    assert from_str_path.cached and from_text.cached
    assert from_text.cells == from_path.cells


def test_key_depends_on_family_and_top(mac_verilog: str, tmp_path: Path) -> None:
    synthesize(mac_verilog, "mac", "ecp5", cache_dir=tmp_path)
    renamed = mac_verilog.replace("module mac(", "module mac2(")
    assert not synthesize(renamed, "mac2", "ecp5", cache_dir=tmp_path).cached
    assert not synthesize(mac_verilog, "mac", "ice40", cache_dir=tmp_path).cached


def test_corrupt_cache_entry_is_replaced(mac_verilog: str, tmp_path: Path) -> None:
    first = synthesize(mac_verilog, "mac", "ecp5", cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    again = synthesize(mac_verilog, "mac", "ecp5", cache_dir=tmp_path)
    assert not again.cached
    assert again.cells == first.cells
    assert json.loads(entry.read_text())["cells"] == first.cells


def test_block_ram_and_distributed_ram(cache_dir: Path) -> None:
    big = synthesize(memory_verilog(1024, 32), "mem", "xc7", cache_dir=cache_dir)
    assert big.cells == {**big.cells, "RAMB36E1": 1}
    assert big.bram == 1.0
    small = synthesize(memory_verilog(16, 8), "mem", "ecp5", cache_dir=cache_dir)
    assert small.bram == 0
    assert small.cells["TRELLIS_DPR16X4"] == 2  # 16 x 8 bits = two 16x4 RAMs
    assert small.lutram == 2 * 6
    assert small.ff == 8  # the registered read port


def test_bad_verilog_raises_with_log(tmp_path: Path) -> None:
    source = "module broken(input a, output b);\n  assign b = a +;\nendmodule\n"
    with pytest.raises(SynthesisError) as caught:
        synthesize(source, "broken", "ecp5", cache_dir=tmp_path)
    error = caught.value
    message = str(error)
    assert "'broken'" in message and "'ecp5'" in message
    assert error.log_path.is_file()
    assert str(error.log_path) in message
    assert "syntax error" in error.log_path.read_text()
    assert "syntax error" in message  # the first ERROR line is quoted
    assert not list(tmp_path.glob("*.json")), "a failure must not be cached"


def test_missing_top_raises(mac_verilog: str, tmp_path: Path) -> None:
    with pytest.raises(SynthesisError, match="'nosuch'") as caught:
        synthesize(mac_verilog, "nosuch", "xc7", cache_dir=tmp_path)
    assert "nosuch" in caught.value.log_path.read_text()


def test_unknown_family_lists_allowed(mac_verilog: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"xc7, xcup, ecp5, ice40"):
        synthesize(mac_verilog, "mac", "virtex2", cache_dir=tmp_path)  # type: ignore[arg-type]


def test_bad_top_name(mac_verilog: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="identifier"):
        synthesize(mac_verilog, "mac; shell", "xc7", cache_dir=tmp_path)


def test_to_dict_round_trips_through_json(mac_verilog: str, cache_dir: Path) -> None:
    result = synthesize(mac_verilog, "mac", "ecp5", cache_dir=cache_dir)
    data = json.loads(json.dumps(result.to_dict()))
    assert SynthResult.from_dict(data) == result
    assert set(data) >= {"lut", "ff", "dsp", "bram", "carry", "lutram", "cells", "cached"}


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "synth"
    monkeypatch.delenv("TESSERA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tessera" / "synth"


def test_default_cache_dir_is_used(
    mac_verilog: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path))
    synthesize(mac_verilog, "mac", "ice40", cache_dir=None)
    assert len(list((tmp_path / "synth").glob("*.json"))) == 1


def test_warm_up_and_module_entry() -> None:
    warm_up()
    proc = subprocess.run(
        [sys.executable, "-m", "tessera.estimators.synthesis", "--warm-up"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "yosys warm" in proc.stdout


def test_module_entry_synthesises_a_file(mac_verilog: str, tmp_path: Path) -> None:
    source = tmp_path / "mac.v"
    source.write_text(mac_verilog)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera.estimators.synthesis",
            str(source),
            "--top",
            "mac",
            "--family",
            "ecp5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TESSERA_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dsp"] == 1
