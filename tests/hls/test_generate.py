"""Generated Vitis HLS projects: files, tcl / Makefile, config header, names, testbench."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from tessera.hls import engine as engine_module
from tessera.hls import generate as generate_module
from tessera.hls.csim import compile_cpp
from tessera.hls.engine import (
    ConfigConstant,
    HlsEngine,
    KernelInterface,
    ScalarArg,
    StreamPort,
    c_identifier,
    check_identifier,
    engine_for,
    register_engine,
    registered_engines,
)
from tessera.hls.gemm import gemm_stream_case
from tessera.hls.generate import DEFAULT_PART, generate_hls, render_hls
from tessera.models.config import EngineConfig
from tessera.models.gemm import GemmConfig, Requant
from tessera.models.rounding import Overflow, Rounding
from tessera.sim.gemm import GemmCase

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _expected_files(top: str) -> set[str]:
    return {
        f"{top}.cpp",
        f"{top}_config.h",
        "csim.cpp",
        "tb.cpp",
        "tb_data/inputs.txt",
        "tb_data/expected.txt",
        "tb_data/cases.txt",
        "include/tessera/axis.h",
        "include/tessera/requant.h",
        "include/tessera/stream.h",
        "include/tessera/gemm.h",
        "include/tessera/stream_io.h",
        "run_hls.tcl",
        "Makefile",
        "README.md",
        "config.json",
    }


def test_every_file_is_written(tmp_path):
    cfg = GemmConfig()
    result = generate_hls(cfg, tmp_path / "prj")
    top = cfg.short_name
    assert result["top"] == top and result["engine"] == "gemm"
    written = {
        str(p.relative_to(tmp_path / "prj")) for p in (tmp_path / "prj").rglob("*") if p.is_file()
    }
    assert written == _expected_files(top)
    assert sorted(result["files"]) == sorted(str(tmp_path / "prj" / f) for f in written)
    assert (tmp_path / "prj" / "include/tessera/gemm.h").read_text() == (
        generate_module.kernel_header_text("gemm.h")
    )


def test_tcl_has_the_steps_part_and_clock(tmp_path):
    cfg = GemmConfig()
    generate_hls(cfg, tmp_path / "default")
    tcl = (tmp_path / "default" / "run_hls.tcl").read_text()
    assert f"set part {DEFAULT_PART}\n" in tcl and DEFAULT_PART == "xczu9eg-ffvb1156-2-e"
    assert "set clock_period 3.333\n" in tcl  # 300 MHz
    assert "set steps [list csim synth cosim export]" in tcl
    for command in (
        f"set top {cfg.short_name}",
        "open_project",
        "set_top $top",
        f"add_files {cfg.short_name}.cpp",
        "add_files -tb tb.cpp",
        "add_files -tb tb_data",
        "open_solution",
        "set_part $part",
        "create_clock -period $clock_period",
        "csim_design",
        "csynth_design",
        "cosim_design",
        "export_design",
    ):
        assert command in tcl, command
    # Each step is guarded by its own selection.
    for step, command in [
        ("csim", "csim_design"),
        ("synth", "csynth_design"),
        ("cosim", "cosim_design"),
        ("export", "export_design"),
    ]:
        assert re.search(rf"lsearch -exact \$steps {step}\] >= 0\}} \{{\n\s+{command}", tcl)

    generate_hls(cfg, tmp_path / "custom", part="xc7z020clg400-1", clock_mhz=250, steps=["synth"])
    tcl = (tmp_path / "custom" / "run_hls.tcl").read_text()
    assert "set part xc7z020clg400-1\n" in tcl
    assert "set clock_period 4.000\n" in tcl
    assert "set steps [list synth]\n" in tcl
    info = json.loads((tmp_path / "custom" / "config.json").read_text())
    assert info["part"] == "xc7z020clg400-1" and info["clock_period_ns"] == 4.0
    assert info["steps"] == ["synth"]


def test_makefile_targets(tmp_path):
    generate_hls(GemmConfig(), tmp_path, part="xcvu9p-flga2104-2-e", clock_mhz=200)
    make = (tmp_path / "Makefile").read_text()
    for target in ("all", "csim", "synth", "cosim", "export", "clean"):
        assert re.search(rf"^{target}:", make, re.M), target
    for step in ("csim", "synth", "cosim", "export"):
        assert f"$(VITIS_HLS) -f run_hls.tcl -tclargs {step} $(HLS_ARGS)" in make
    assert "PART ?= xcvu9p-flga2104-2-e" in make and "CLOCK_PERIOD ?= 5.000" in make
    assert "VITIS_HLS ?= vitis_hls" in make
    # make -n parses the Makefile and shows what it would run, without Vitis.
    out = subprocess.run(
        ["make", "-n", "csim", "PART=xc7a35t"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "vitis_hls -f run_hls.tcl -tclargs csim part=xc7a35t clock_period=5.000" in out.stdout


@pytest.mark.parametrize(
    "cfg",
    [
        GemmConfig(),
        GemmConfig(
            rows=3,
            cols=5,
            acc_bits=20,
            out_bits=6,
            dim_bits=10,
            rounding=Rounding.TRN_ZERO,
            overflow=Overflow.SAT_SYM,
            a_stream_bytes=1,
            b_stream_bytes=10,
        ),
        GemmConfig(rows=64, cols=64, rounding=Rounding.RND_CONV, overflow=Overflow.WRAP),
    ],
    ids=["default", "odd", "64x64"],
)
def test_config_header_matches_the_config(tmp_path, cfg):
    files = render_hls(cfg)
    header = files[f"{cfg.short_name}_config.h"]
    members = dict(
        (name, value)
        for _ctype, name, value in re.findall(r"static const (\w+) (\w+) = (\w+);", header)
    )
    assert members == {
        "rows": f"{cfg.rows}u",
        "cols": f"{cfg.cols}u",
        "acc_bits": f"{cfg.acc_bits}u",
        "out_bits": f"{cfg.out_bits}u",
        "dim_bits": f"{cfg.dim_bits}u",
        "a_beat_bytes": f"{cfg.a_beat_bytes}u",
        "b_beat_bytes": f"{cfg.b_beat_bytes}u",
        "lane_bits": "32u",
        "rounding": f"AP_{cfg.rounding.value}",
        "overflow": f"AP_{cfg.overflow.value}",
    }
    assert f"struct {cfg.short_name}_config : tessera::gemm_config {{" in header
    # A 64-lane C bus is 2048 bits: past ap_int's default limit, so the header raises it.
    if cfg.cols * 32 > 1024:
        assert "#define AP_INT_MAX_W 2048" in header
    else:
        assert "AP_INT_MAX_W" not in header
    info = json.loads(files["config.json"])
    assert GemmConfig.from_dict(info["config"]) == cfg and info["digest"] == cfg.digest


def test_top_function_interface(tmp_path):
    cfg = GemmConfig(rows=2, cols=8)
    source = render_hls(cfg)[f"{cfg.short_name}.cpp"]
    for port in ("a", "b", "c"):
        assert f"#pragma HLS INTERFACE mode=axis port={port}\n" in source
    for scalar in ("m", "n", "k", "raw", "multiplier", "shift", "zero_point", "return"):
        assert f"#pragma HLS INTERFACE mode=s_axilite port={scalar} bundle=control\n" in source
    assert (
        f"tessera::gemm<{cfg.short_name}_config>(a, b, c, m, n, k, raw, multiplier, shift, "
        "zero_point);" in source
    )
    header = generate_module.kernel_header_text("gemm.h")
    for pragma in ("PIPELINE II = 1", "ARRAY_PARTITION variable = acc complete", "DATAFLOW"):
        assert f"#pragma HLS {pragma}" in header


def test_identifiers_are_sanitised(tmp_path):
    cfg = GemmConfig(rows=2, cols=2)
    result = generate_hls(cfg, tmp_path, top="9 my-top!")
    top = result["top"]
    assert top == "t_9_my_top_"
    source = (tmp_path / f"{top}.cpp").read_text()
    assert f"void {top}(" in source
    assert (tmp_path / f"{top}_config.h").is_file()
    names = set()
    for path in tmp_path.rglob("*"):
        if path.suffix in (".cpp", ".h"):
            text = path.read_text()
            names.update(re.findall(r"\bvoid (\w+)\(", text))
            names.update(re.findall(r"\bstruct (\w+)", text))
            names.update(re.findall(r"\btypedef .+ (\w+);", text))
    assert names and all(IDENTIFIER.match(n) for n in names)
    tcl = (tmp_path / "run_hls.tcl").read_text()
    assert f"set top {top}\n" in tcl and f"set project {top}_prj\n" in tcl

    assert c_identifier("class") == "class_"
    assert c_identifier("_Reserved") == "t_Reserved"
    assert c_identifier("a..b") == "a_b"
    with pytest.raises(ValueError, match="no letter or digit"):
        c_identifier("--")
    for bad in ("a-b", "1a", "int", "__x", "_X", "a b", ""):
        with pytest.raises(ValueError):
            check_identifier(bad)
    with pytest.raises(ValueError, match="reserved C\\+\\+ name"):
        ConfigConstant("switch", 1)
    with pytest.raises(ValueError, match="not an identifier"):
        StreamPort("a;b", "in", "a_t", 1)


def test_bad_options_write_nothing(tmp_path):
    cfg = GemmConfig()
    out = tmp_path / "prj"
    bad_calls = [
        (dict(part="xczu9eg; rm -rf /"), "part must look like"),
        (dict(part=""), "part must look like"),
        (dict(clock_mhz=0), "clock_mhz must be in"),
        (dict(clock_mhz=float("nan")), "clock_mhz must be in"),
        (dict(clock_mhz=5000), "clock_mhz must be in"),
        (dict(clock_mhz="300"), "clock_mhz must be a number"),
        (dict(steps=["place"]), "steps must be a non-empty subset"),
        (dict(steps=[]), "steps must be a non-empty subset"),
        (dict(top="!!"), "no letter or digit"),
    ]
    for kwargs, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            generate_hls(cfg, out, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match="no HLS engine for str"):
        generate_hls("gemm", out)
    assert not out.exists()


def test_a_failing_template_leaves_nothing_half_written(tmp_path, monkeypatch):
    real_render = generate_module._render

    def failing(template, **context):
        if template == "Makefile.j2":  # rendered after most other files
            raise RuntimeError("template failure")
        return real_render(template, **context)

    monkeypatch.setattr(generate_module, "_render", failing)
    with pytest.raises(RuntimeError, match="template failure"):
        generate_hls(GemmConfig(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="template failure"):
        generate_hls(GemmConfig(), existing)
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".*"))  # no staging directory left behind


def test_regeneration_replaces_files_and_keeps_others(tmp_path):
    cfg = GemmConfig(rows=2, cols=2)
    generate_hls(cfg, tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "run_hls.tcl").write_text("stale")
    first = render_hls(cfg)
    generate_hls(cfg, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "run_hls.tcl").read_text() == first["run_hls.tcl"]
    assert render_hls(cfg) == first  # generation is deterministic


def test_readme_says_vitis_was_not_run(tmp_path):
    generate_hls(GemmConfig(), tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "**Vitis HLS was not run by tessera.**" in readme
    assert "make csim" in readme and "make synth" in readme


@pytest.fixture(scope="module")
def testbench_project(tmp_path_factory):
    """A project whose testbench vectors are the RTL tests' cases, and its compiled testbench."""
    cfg = GemmConfig(rows=3, cols=4, a_stream_bytes=1, rounding=Rounding.RND_CONV)
    rq = Requant(multiplier=1_518_500_250, shift=40, zero_point=-5)
    cases = []
    for case in [
        GemmCase(1, 1, 1, seed=1, name="1x1x1"),
        GemmCase(7, 7, 7, requant=rq, seed=3, name="non-multiple"),
        GemmCase(6, 7, 64, seed=4, data="extreme", name="extremes raw"),
        GemmCase(9, 12, 33, requant=Requant(1 << 30, 30), seed=5, data="extreme"),
    ]:
        a, b = case.operands()
        cases.append(gemm_stream_case(cfg, a, b, case.requant, case.label))
    out = tmp_path_factory.mktemp("tb")
    result = generate_hls(cfg, out, cases=cases)
    files = {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.suffix in (".cpp", ".h") and p.name != "csim.cpp"
    }
    build = compile_cpp(
        files, ["tb.cpp", f"{result['top']}.cpp"], name="test_gemm_tb", kind="executable"
    )
    return out, build.path, len(cases)


def _run_testbench(directory, program):
    return subprocess.run([str(program)], cwd=directory, capture_output=True, text=True, timeout=60)


def test_testbench_passes_on_golden_vectors(testbench_project):
    directory, program, count = testbench_project
    run = _run_testbench(directory, program)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"PASS: {count} cases" in run.stdout
    assert run.stdout.count(": pass") == count


def test_testbench_fails_on_a_wrong_value(testbench_project, tmp_path):
    directory, program, _ = testbench_project
    data = tmp_path / "tb_data"
    data.mkdir()
    for name in ("inputs.txt", "cases.txt"):
        (data / name).write_text((directory / "tb_data" / name).read_text())
    original = (directory / "tb_data" / "expected.txt").read_text().splitlines()
    # Line 2 is the first case's beat count, line 3 its first beat: change lane 0.
    lines = list(original)
    fields = lines[2].split()
    fields[0] = str(int(fields[0]) + 1)
    lines[2] = " ".join(fields)
    (data / "expected.txt").write_text("\n".join(lines) + "\n")
    run = _run_testbench(tmp_path, program)
    assert run.returncode == 1
    assert f"first mismatch at beat 0 lane 0: expected {fields[0]}" in run.stdout

    # A wrong last flag and a missing data file are reported too.
    lines = list(original)
    fields = lines[2].split()
    fields[-1] = "0"
    lines[2] = " ".join(fields)
    (data / "expected.txt").write_text("\n".join(lines) + "\n")
    run = _run_testbench(tmp_path, program)
    assert run.returncode == 1 and "expected last=0, received last=1" in run.stdout
    (data / "inputs.txt").unlink()
    assert _run_testbench(tmp_path, program).returncode == 2


def test_testbench_data_is_the_golden_stream(testbench_project):
    """tb_data holds stream_operands / pack_stream bytes and output_beats of the golden model."""
    directory, _, _ = testbench_project
    a, b = GemmCase(1, 1, 1, seed=1).operands()
    numbers = [int(v) for v in (directory / "tb_data" / "inputs.txt").read_text().split()]
    # case count, then m n k raw multiplier shift zero_point, then the A beats (1 byte each).
    assert numbers[:8] == [4, 1, 1, 1, 1, 0, 0, 0]
    assert numbers[8] == 3  # one k-slice of 3 lanes on a 1-byte bus
    assert numbers[9:12] == [int(a[0, 0]) & 0xFF, 0, 0]
    assert np.int8(numbers[9]) == a[0, 0]
    expected = [int(v) for v in (directory / "tb_data" / "expected.txt").read_text().split()]
    assert expected[:11] == [4, 1, int(a[0, 0]) * int(b[0, 0]), 0, 0, 0, 1, 0, 0, 0, 1]


@dataclass(frozen=True)
class _EchoConfig(EngineConfig):
    lanes: int = 2

    @property
    def short_name(self) -> str:
        return f"echo_l{self.lanes}_{self.digest}"


def test_registry_takes_new_engines():
    assert registered_engines()["gemm"] is engine_for(GemmConfig())

    def interface(cfg: _EchoConfig) -> KernelInterface:
        return KernelInterface(
            engine="echo",
            kernel="tessera::echo",
            traits="tessera::echo_types",
            base_config="tessera::echo_config",
            headers=("echo.h",),
            constants=(ConfigConstant("lanes", cfg.lanes, doc="lanes per beat"),),
            streams=(
                StreamPort("x", "in", "x_t", cfg.lanes),
                StreamPort("y", "out", "y_t", cfg.lanes * 4, cfg.lanes, 32, True),
            ),
            scalars=(ScalarArg("count", "count_t", 16),),
        )

    engine = register_engine(HlsEngine("echo", _EchoConfig, interface, lambda cfg: []))
    try:
        assert engine_for(_EchoConfig()) is engine
        assert registered_engines()["echo"] is engine
    finally:
        del engine_module._ENGINES[_EchoConfig]
    with pytest.raises(ValueError, match="no HLS engine for _EchoConfig"):
        engine_for(_EchoConfig())
