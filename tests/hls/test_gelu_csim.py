"""HLS GELU kernel, C-simulated with g++ through ctypes, bit-exact against the golden model."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from tessera.hls.csim import CsimLibrary, build_csim, compile_cpp
from tessera.hls.gelu import csim_gelu, gelu_stream_case
from tessera.hls.generate import generate_hls
from tessera.models.gelu import (
    GeluConfig,
    extreme_codes,
    gelu,
    gelu_error_bound,
    gelu_float,
    gelu_rom,
    to_float,
)
from tessera.sim.gelu import GeluCase

#: The configs of tests/sim/test_gelu_rtl.py, and an odd lane count with 1-byte containers.
CONFIGS = {
    "lanes4_f10": GeluConfig(),
    "lanes1_f7": GeluConfig(in_bits=12, in_frac=7, step_log2=4, rom_entries=89, lanes=1),
    "lanes5_i8": GeluConfig(in_bits=8, in_frac=4, rom_entries=65, step_log2=4, lanes=5),
}


@pytest.fixture(scope="module")
def library() -> CsimLibrary:
    """One C-sim library holding every config."""
    return build_csim(list(CONFIGS.values()))


def _check(cfg, x, got, label):
    want = gelu(x, cfg)
    assert got.shape == want.shape
    bad = np.flatnonzero(got.ravel() != want.ravel())
    assert not bad.size, (
        f"{cfg.short_name} {label}: first mismatch at {bad[0]} (x={x.ravel()[bad[0]]}): "
        f"expected {want.ravel()[bad[0]]}, received {got.ravel()[bad[0]]}"
    )


@pytest.mark.parametrize("config", list(CONFIGS))
def test_rtl_cases_bit_exact(library, config):
    cfg = CONFIGS[config]
    # The case kinds and seeds of tests/sim/test_gelu_rtl.py, and a lone element.
    cases = [
        GeluCase(1200, 1, "random"),
        GeluCase(3000, 2, "sweep"),
        GeluCase(300, 3, "extreme"),
        GeluCase(1, 4, "random"),
    ]
    for case in cases:
        x = case.inputs(cfg)
        _check(cfg, x, csim_gelu(cfg, x, library=library), case.label)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_code(library, config):
    cfg = CONFIGS[config]
    x = np.arange(cfg.code_min, cfg.code_max + 1).reshape(-1, 2 ** (cfg.in_bits - 4))
    got = csim_gelu(cfg, x, library=library)
    _check(cfg, x, got, "all codes")
    # Independent of the golden model: the measured error stays within the documented bound.
    error = np.abs(to_float(got, cfg) - gelu_float(to_float(x, cfg))).max()
    assert error <= gelu_error_bound(cfg), (error, gelu_error_bound(cfg))


def test_extreme_codes_in_every_lane(library):
    cfg = CONFIGS["lanes5_i8"]
    edges = extreme_codes(cfg)
    for shift in range(cfg.lanes):
        x = np.roll(np.resize(edges, 3 * cfg.lanes + shift), shift)
        _check(cfg, x, csim_gelu(cfg, x, library=library), f"rolled by {shift}")


def test_bad_inputs_are_refused(library):
    cfg = CONFIGS["lanes1_f7"]
    with pytest.raises(ValueError, match="12 signed bits"):
        csim_gelu(cfg, np.array([1 << 11]), library=library)
    with pytest.raises(ValueError, match="integer raw codes"):
        csim_gelu(cfg, np.array([0.5]), library=library)
    with pytest.raises(ValueError, match="at least one"):
        csim_gelu(cfg, np.array([], dtype=np.int64), library=library)
    with pytest.raises(ValueError, match="GeluConfig"):
        csim_gelu(object(), np.array([0]))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The generated project of the 5-lane config with RTL-case vectors, and its testbench."""
    cfg = CONFIGS["lanes5_i8"]
    cases = [
        gelu_stream_case(cfg, GeluCase(n, seed, kind).inputs(cfg), kind)
        for n, seed, kind in ((123, 1, "random"), (256, 2, "sweep"), (40, 3, "extreme"))
    ]
    out = tmp_path_factory.mktemp("gelu_prj")
    result = generate_hls(cfg, out, cases=cases)
    files = {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.suffix in (".cpp", ".h") and p.name != "csim.cpp"
    }
    build = compile_cpp(
        files, ["tb.cpp", f"{result['top']}.cpp"], name="test_gelu_tb", kind="executable"
    )
    return cfg, out, result, build.path, len(cases)


def test_generated_project(project):
    cfg, out, result, _, _ = project
    top = cfg.short_name
    assert result["engine"] == "gelu" and result["top"] == top
    for name in (
        f"{top}.cpp", f"{top}_config.h", "csim.cpp", "tb.cpp", "run_hls.tcl", "Makefile",
        "README.md", "config.json", "tb_data/inputs.txt", "tb_data/expected.txt",
        "include/tessera/exp.h", "include/tessera/gelu.h", "include/tessera/stream_io.h",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    header = (out / f"{top}_config.h").read_text()

    def member(name: str) -> int:
        found = re.search(rf"static const \w+ {name} = (-?\d+)u?;", header)
        assert found, name
        return int(found.group(1))

    for name in ("in_bits", "in_frac", "rom_entries", "rom_bits", "low_bits", "align_shift",
                 "lanes", "container_bits"):  # fmt: skip
        assert member(name) == getattr(cfg, name), name
    rom = gelu_rom(cfg)
    assert [member(f"gelu_rom_{k:03x}") for k in range(len(rom))] == rom.tolist()
    assert f"gelu_rom_{len(rom):03x} =" not in header


def test_generated_testbench_passes(project):
    _, out, _, program, count = project
    run = subprocess.run([str(program)], cwd=out, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"PASS: {count} cases" in run.stdout
