"""HLS LayerNorm kernel, C-simulated with g++ through ctypes, bit-exact against the golden model."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

import tessera.hls.engine
import tessera.hls.layernorm
from tessera.hls.csim import CsimError, CsimLibrary, build_csim, compile_cpp
from tessera.hls.generate import generate_hls, kernel_header_text, render_hls
from tessera.hls.layernorm import (
    ROWS_BITS,
    csim_layernorm,
    layernorm_from_beats,
    layernorm_stream_case,
    layernorm_stream_inputs,
    seed_constant_name,
)
from tessera.models.layernorm import (
    LayerNormConfig,
    dequantize_output,
    layernorm,
    layernorm_float,
    rsqrt_seed_table,
)
from tessera.sim.layernorm import LayerNormCase

CONFIGS = {
    "default": LayerNormConfig(),
    # The RTL tests' small odd row: narrow formats (outputs saturate at +-8), two Newton steps.
    "dim7": LayerNormConfig(
        dim=7,
        in_bits=12,
        in_frac=4,
        out_bits=10,
        out_frac=6,
        rsqrt_lut_bits=4,
        newton_steps=2,
        rsqrt_frac=18,
    ),
    # 24-bit formats (3-byte beats), E above 2**31, no Newton step, a 1024-entry seed table with
    # more index bits than u has fraction bits.
    "wide": LayerNormConfig(
        dim=33,
        in_bits=24,
        in_frac=20,
        out_bits=24,
        param_bits=24,
        rsqrt_lut_bits=10,
        rsqrt_frac=8,
        norm_frac=8,
        newton_steps=0,
        eps=1.0,
    ),
}


@pytest.fixture(scope="module")
def library() -> CsimLibrary:
    """One C-sim library holding every config of CONFIGS."""
    return build_csim(list(CONFIGS.values()))


def _check(cfg: LayerNormConfig, x, gamma, beta, label: str, library: CsimLibrary) -> np.ndarray:
    got = csim_layernorm(cfg, x, gamma, beta, library=library)
    want = layernorm(x, gamma, beta, cfg)
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    assert not bad.size, (
        f"{cfg.short_name} {label}: first mismatch at {tuple(bad[0])}: expected "
        f"{want[tuple(bad[0])]}, received {got[tuple(bad[0])]}"
    )
    return got


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rtl_cases_bit_exact(library, name):
    """The cases of tests/sim/test_layernorm_rtl.py (same seeds, so the same data)."""
    cfg = CONFIGS[name]
    cases = [
        LayerNormCase(4, seed=1, name="back-to-back"),
        LayerNormCase(3, seed=2, name="random"),
        LayerNormCase(6, seed=3, data="extreme", name="extremes"),
        LayerNormCase(2, seed=4, data="extreme", name="extremes 2"),
        LayerNormCase(18, seed=5, data="extreme", name="every extreme kind thrice"),
    ]
    for case in cases:
        x, gamma, beta = case.inputs(cfg)
        _check(cfg, x, gamma, beta, case.label, library)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_zero_variance_rows_give_beta(library, name):
    """Rows of equal elements (0, the minimum and the maximum code, a random one) have c = 0, so
    every output is beta in the output format, whatever E and the seed table are."""
    cfg = CONFIGS[name]
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    rng = np.random.default_rng(11)
    x = np.array([0, lo, hi, int(rng.integers(lo, hi + 1))])[:, None].repeat(cfg.dim, axis=1)
    plo, phi = -(1 << (cfg.param_bits - 1)), (1 << (cfg.param_bits - 1)) - 1
    gamma = rng.integers(plo, phi + 1, cfg.dim)
    beta = rng.integers(plo, phi + 1, cfg.dim)
    beta[0], beta[-1] = plo, phi
    got = _check(cfg, x, gamma, beta, "zero variance", library)
    # Independent of the golden model: round half up of beta * 2**(out_frac - param_frac).
    shift = cfg.out_shift - cfg.norm_frac
    scaled = beta << -shift if shift < 0 else (beta + ((1 << shift) >> 1)) >> shift
    out_lo, out_hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    np.testing.assert_array_equal(got, np.broadcast_to(np.clip(scaled, out_lo, out_hi), x.shape))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outliers_and_extreme_codes(library, name):
    """A lone outlier at either extreme among zeros, alternating and near-constant extremes, with
    gamma and beta at their extremes too: outputs saturate at both ends."""
    cfg = CONFIGS[name]
    n = cfg.dim
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    plo, phi = -(1 << (cfg.param_bits - 1)), (1 << (cfg.param_bits - 1)) - 1
    rows = np.zeros((6, n), dtype=np.int64)
    rows[0, n // 2] = hi
    rows[1, 0] = lo
    rows[2] = np.where(np.arange(n) % 2, hi, lo)
    rows[3], rows[3, -1] = lo, hi
    rows[4], rows[4, 0] = hi, lo
    rows[5] = np.arange(n) % 3 - 1  # tiny spread: eps matters
    gamma = np.where(np.arange(n) % 2, phi, plo)
    beta = np.where(np.arange(n) % 3 == 0, phi, plo)
    got = _check(cfg, rows, gamma, beta, "outliers", library)
    out_lo, out_hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    if name != "wide":  # 24-bit outputs with 8 fraction bits cannot saturate
        assert got.min() == out_lo and got.max() == out_hi


def test_accuracy_against_float(library):
    """Default config on activation-like rows: the kernel's error against float LayerNorm stays
    within a few output LSBs."""
    cfg = CONFIGS["default"]
    x, gamma, beta = LayerNormCase(16, seed=21).inputs(cfg)
    got = dequantize_output(csim_layernorm(cfg, x, gamma, beta, library=library), cfg)
    scale = 1 << cfg.param_frac
    ref = layernorm_float(x / (1 << cfg.in_frac), gamma / scale, beta / scale, cfg.eps)
    error = np.abs(got - ref)[np.abs(ref) < 127]  # away from output saturation
    lsb = 1 / (1 << cfg.out_frac)
    assert error.max() <= 4 * lsb, error.max() / lsb


def test_params_are_kept_between_calls(library):
    cfg = CONFIGS["dim7"]
    x, gamma, beta = LayerNormCase(5, seed=31).inputs(cfg)
    # A call of zero rows only loads the packet.
    assert csim_layernorm(cfg, x[:0], gamma, beta, library=library).shape == (0, cfg.dim)
    got = csim_layernorm(cfg, x, library=library)
    np.testing.assert_array_equal(got, layernorm(x, gamma, beta, cfg))
    # A new packet replaces the parameters.
    _check(cfg, x, gamma[::-1].copy(), beta, "reloaded", library)
    np.testing.assert_array_equal(
        csim_layernorm(cfg, x[1:3], library=library), layernorm(x[1:3], gamma[::-1], beta, cfg)
    )


def test_y_stream_protocol(library):
    """One beat per element, keep set, last on each row's last element; inputs read exactly."""
    cfg = CONFIGS["dim7"]
    x, gamma, beta = LayerNormCase(3, seed=41).inputs(cfg)
    inputs, scalars = layernorm_stream_inputs(cfg, x, gamma, beta)
    assert scalars == {"rows": 3, "load_params": 1}
    y = library.run(cfg, inputs, scalars, {"y": 21})["y"]
    assert y.last.tolist() == ([False] * 6 + [True]) * 3
    assert y.valid.all()
    np.testing.assert_array_equal(layernorm_from_beats(cfg, 3, y), layernorm(x, gamma, beta, cfg))
    # The byte layout is the golden model's: x sign-extended little-endian, params gamma | beta.
    assert inputs["x"].shape == (21, 2) and inputs["params"].shape == (7, 4)
    assert int(inputs["x"][0].view(np.int16)[0]) == x[0, 0]
    assert tuple(inputs["params"][1].view(np.int16)) == (gamma[1], beta[1])

    longer = dict(inputs, x=np.concatenate([inputs["x"], inputs["x"][:1]]))
    with pytest.raises(CsimError, match="stream x: the kernel read 21 of its 22 beats"):
        library.run(cfg, longer, scalars, {"y": 21})
    # Without load_params the packet stays unread.
    with pytest.raises(CsimError, match="stream params: the kernel read 0 of its 7 beats"):
        library.run(cfg, inputs, dict(scalars, load_params=0), {"y": 21})
    with pytest.raises(CsimError, match="stream params: the kernel read past its 6 beats"):
        library.run(cfg, dict(inputs, params=inputs["params"][:-1]), scalars, {"y": 21})
    with pytest.raises(CsimError, match="stream y: 21 beats, more than the 20 expected"):
        library.run(cfg, inputs, scalars, {"y": 20})
    wrong_last = type(y)(y.values, y.valid, np.roll(y.last, 1))
    with pytest.raises(ValueError, match="y beat 0: last=True, expected False"):
        layernorm_from_beats(cfg, 3, wrong_last)


def test_bad_inputs_raise_value_error(library):
    cfg = CONFIGS["dim7"]
    x = np.zeros((2, 7), dtype=np.int64)
    gamma = np.ones(7, dtype=np.int64)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 7\)"):
        csim_layernorm(cfg, np.zeros((2, 6), np.int64), gamma, gamma, library=library)
    with pytest.raises(ValueError, match="inputs must fit 12 signed bits"):
        csim_layernorm(cfg, x + 4096, gamma, gamma, library=library)
    with pytest.raises(ValueError, match="gamma must have shape"):
        csim_layernorm(cfg, x, gamma[:3], gamma, library=library)
    with pytest.raises(ValueError, match="give both gamma and beta"):
        csim_layernorm(cfg, x, gamma, None, library=library)
    with pytest.raises(ValueError, match="cfg must be a LayerNormConfig"):
        csim_layernorm("layernorm", x, gamma, gamma, library=library)
    inputs, scalars = layernorm_stream_inputs(cfg, x, gamma, gamma)
    with pytest.raises(ValueError, match=r"rows=4294967296 is outside its range"):
        library.run(cfg, inputs, dict(scalars, rows=1 << ROWS_BITS), {"y": 14})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_header_holds_the_config_and_seed_table(name):
    cfg = CONFIGS[name]
    header = render_hls(cfg, cases=[])[f"{cfg.short_name}_config.h"]
    members = {
        member: int(value.rstrip("u"))
        for member, value in re.findall(r"static const unsigned (\w+) = (\w+);", header)
    }
    for field in (
        "dim",
        "in_bits",
        "in_bytes",
        "out_bits",
        "out_bytes",
        "param_bits",
        "param_bytes",
        "rsqrt_lut_bits",
        "newton_steps",
        "rsqrt_frac",
        "norm_frac",
        "out_shift",
        "sum_bits",
        "square_sum_bits",
        "var_bits",
        "max_exponent",
        "mantissa_bits",
        "center_bits",
        "norm_bits",
        "buffer_depth",
    ):
        assert members[field] == getattr(cfg, field), field
    assert (members["eps_hi"] << 31) + members["eps_lo"] == cfg.eps_int
    seeds = rsqrt_seed_table(cfg)
    assert [members[seed_constant_name(i)] for i in range(len(seeds))] == seeds.tolist()
    assert seed_constant_name(len(seeds)) not in members
    assert f"struct {cfg.short_name}_config : tessera::layernorm_config {{" in header


@pytest.fixture(scope="module")
def testbench_project(tmp_path_factory):
    """A generated project of the dim7 config whose testbench vectors are the RTL tests' cases,
    and its testbench compiled with g++."""
    cfg = CONFIGS["dim7"]
    cases = []
    for case in [
        LayerNormCase(4, seed=1, name="back-to-back"),
        LayerNormCase(6, seed=3, data="extreme", name="extremes"),
    ]:
        x, gamma, beta = case.inputs(cfg)
        cases.append(layernorm_stream_case(cfg, x, gamma, beta, case.label))
    out = tmp_path_factory.mktemp("layernorm_tb")
    result = generate_hls(cfg, out, cases=cases)
    files = {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.suffix in (".cpp", ".h") and p.name != "csim.cpp"
    }
    build = compile_cpp(
        files, ["tb.cpp", f"{result['top']}.cpp"], name="test_layernorm_tb", kind="executable"
    )
    return cfg, out, result, build.path, len(cases)


def test_generated_project_is_complete(testbench_project):
    cfg, out, result, _, _ = testbench_project
    top = cfg.short_name
    assert result["engine"] == "layernorm" and result["top"] == top
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == {
        f"{top}.cpp",
        f"{top}_config.h",
        "csim.cpp",
        "tb.cpp",
        "tb_data/inputs.txt",
        "tb_data/expected.txt",
        "tb_data/cases.txt",
        "include/tessera/axis.h",
        "include/tessera/requant.h",
        "include/tessera/layernorm.h",
        "include/tessera/stream_io.h",
        "run_hls.tcl",
        "Makefile",
        "README.md",
        "config.json",
    }
    assert (out / "include/tessera/layernorm.h").read_text() == kernel_header_text("layernorm.h")
    source = (out / f"{top}.cpp").read_text()
    for port in ("x", "params", "y"):
        assert f"#pragma HLS INTERFACE mode=axis port={port}\n" in source
    for scalar in ("rows", "load_params", "return"):
        assert f"#pragma HLS INTERFACE mode=s_axilite port={scalar} bundle=control\n" in source
    assert f"tessera::layernorm<{top}_config>(x, params, y, rows, load_params);" in source
    header = kernel_header_text("layernorm.h")
    for pragma in ("PIPELINE II = 1", "DATAFLOW", "STREAM variable = elements depth"):
        assert f"#pragma HLS {pragma}" in header


def _run(directory, program):
    return subprocess.run([str(program)], cwd=directory, capture_output=True, text=True, timeout=60)


def test_testbench_passes_on_golden_vectors(testbench_project):
    _, out, _, program, count = testbench_project
    run = _run(out, program)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"PASS: {count} cases" in run.stdout and run.stdout.count(": pass") == count


def test_testbench_fails_on_a_wrong_value(testbench_project, tmp_path):
    _, out, _, program, _ = testbench_project
    data = tmp_path / "tb_data"
    data.mkdir()
    for name in ("inputs.txt", "cases.txt"):
        (data / name).write_text((out / "tb_data" / name).read_text())
    lines = (out / "tb_data" / "expected.txt").read_text().splitlines()
    # Line 2 is the first case's beat count, line 3 its first beat: value, valid, last.
    value, valid, last = (int(v) for v in lines[2].split())
    lines[2] = f"{value + 1} {valid} {last}"
    (data / "expected.txt").write_text("\n".join(lines) + "\n")
    run = _run(tmp_path, program)
    assert run.returncode == 1
    assert f"first mismatch at beat 0 lane 0: expected {value + 1}" in run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_random_config_soak(seed):
    """Random formats, row lengths and data in one library of 8 configs (run with -m slow)."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < 8:
        in_bits = int(rng.integers(2, 25))
        out_bits = int(rng.integers(2, 25))
        rsqrt_frac = int(rng.integers(8, 25))
        try:
            configs.append(
                LayerNormConfig(
                    dim=int(rng.choice([1, 2, 3, int(rng.integers(4, 100)), 4096])),
                    in_bits=in_bits,
                    in_frac=int(rng.integers(0, in_bits)),
                    out_bits=out_bits,
                    out_frac=int(rng.integers(0, out_bits)),
                    param_bits=int(rng.integers(2, 25)),
                    param_frac=int(rng.integers(0, 2)),
                    eps=float(rng.choice([0.0, 1e-6, 1e-5, 1e-3, 1.0])),
                    rsqrt_lut_bits=int(rng.integers(1, 11)),
                    newton_steps=int(rng.integers(0, 4)),
                    rsqrt_frac=rsqrt_frac,
                    norm_frac=int(rng.integers(2, rsqrt_frac + 1)),
                )
            )
        except ValueError:
            continue  # an impossible combination (too wide a variance, negative out_shift)
    lib = build_csim(configs)
    for cfg in configs:
        for i in range(3):
            case = LayerNormCase(int(rng.integers(1, 6)), seed=i, data=("random", "extreme")[i % 2])
            x, gamma, beta = case.inputs(cfg)
            _check(cfg, x, gamma, beta, f"{cfg} {case.label}", lib)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_default_testbench_cases_are_golden(library, name):
    """Without explicit cases the project's vectors are the engine's defaults, and the kernel
    reproduces them."""
    cfg = CONFIGS[name]
    cases = tessera.hls.layernorm.ENGINE.default_cases(cfg)
    assert [c.name for c in cases] == ["one row", "activations", "extremes"]
    assert render_hls(cfg)["tb_data/cases.txt"] == "one row\nactivations\nextremes\n"
    for case in cases:
        rows = case.scalars["rows"]
        y = library.run(cfg, case.inputs, case.scalars, {"y": rows * cfg.dim})["y"]
        np.testing.assert_array_equal(y.values, case.outputs["y"].values)
        np.testing.assert_array_equal(y.last, case.outputs["y"].last)
