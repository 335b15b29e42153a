"""HLS softmax kernel, C-simulated with g++ through ctypes, bit-exact against the golden model."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from tessera.hls.csim import CsimLibrary, build_csim, compile_cpp
from tessera.hls.generate import generate_hls
from tessera.hls.softmax import csim_softmax, softmax_stream_case, softmax_stream_inputs
from tessera.models.softmax import SoftmaxConfig, exp2_lut, softmax
from tessera.sim.softmax import SoftmaxCase

#: The configs of tests/sim/test_softmax_rtl.py: one-byte containers and a 160-word buffer;
#: 3-byte logits, 2-byte probabilities and an odd max_len.
CONFIGS = {
    "narrow": SoftmaxConfig(
        in_bits=8, in_frac=4, exp_frac=10, lut_bits=3, interp_bits=4, out_bits=8, out_frac=7,
        max_len=160,
    ),
    "wide": SoftmaxConfig(
        in_bits=20, in_frac=12, exp_frac=14, lut_bits=4, interp_bits=6, out_bits=12,
        out_frac=11, max_len=129,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def library() -> CsimLibrary:
    """One C-sim library holding both configs."""
    return build_csim(list(CONFIGS.values()))


def _rtl_cases(cfg: SoftmaxConfig) -> list[SoftmaxCase]:
    """The cases of tests/sim/test_softmax_rtl.py (same seeds, so the same logits)."""
    top = cfg.max_len
    return [
        SoftmaxCase(5, 1, seed=1, name="length 1"),
        SoftmaxCase(4, 37, seed=2, name="odd"),
        SoftmaxCase(3, 129, seed=3, name="129"),
        SoftmaxCase(3, top, seed=4, data="increasing", name="max_len rising"),
        SoftmaxCase(6, (1, top, 2, 37), seed=5, data="equal", name="mixed equal"),
        SoftmaxCase(4, (top, 3), seed=6, data="spike", name="spike"),
        SoftmaxCase(4, (11, top), seed=7, data="extreme"),
        SoftmaxCase(4, top, seed=8, name="back to back"),
    ]


def _assert_rows_equal(cfg, rows, got, label):
    assert len(got) == len(rows)
    for r, (row, g) in enumerate(zip(rows, got, strict=True)):
        want = softmax(row, cfg)
        bad = np.flatnonzero(g != want)
        assert not bad.size, (
            f"{cfg.short_name} {label} row {r}: first mismatch at {bad[0]}: expected "
            f"{want[bad[0]]}, received {g[bad[0]]}"
        )


@pytest.mark.parametrize("config", list(CONFIGS))
def test_rtl_cases_bit_exact(library, config):
    cfg = CONFIGS[config]
    for case in _rtl_cases(cfg):
        rows = case.logits(cfg)
        _assert_rows_equal(cfg, rows, csim_softmax(cfg, rows, library=library), case.label)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_and_extreme_batches(library, config):
    cfg = CONFIGS[config]
    rng = np.random.default_rng(21)
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    batches = {
        "uniform codes": rng.integers(lo, hi + 1, size=(7, 23)),
        "min and max": rng.choice(np.array([lo, hi]), size=(5, cfg.max_len)),
        "all min": np.full((2, 9), lo),
        "all max": np.full((2, 9), hi),
        "max then min": np.array([[hi] + [lo] * 30]),
        "min then max": np.array([[lo] * 30 + [hi]]),
    }
    for label, x in batches.items():
        got = csim_softmax(cfg, x, library=library)
        assert isinstance(got, np.ndarray) and got.shape == x.shape
        _assert_rows_equal(cfg, list(x), list(got), label)


def test_probabilities_are_close_to_float(library):
    """An independent check of the kernel beyond the golden model: error vs float softmax."""
    cfg = CONFIGS["wide"]
    x = cfg.quantize_logits(np.random.default_rng(3).normal(0, 2, size=(8, 100)))
    got = csim_softmax(cfg, x, library=library) / 2.0**cfg.out_frac
    z = np.exp(x / 2.0**cfg.in_frac - (x / 2.0**cfg.in_frac).max(axis=1, keepdims=True))
    error = np.abs(got - z / z.sum(axis=1, keepdims=True)).max()
    assert error < 4 * 2.0**-cfg.out_frac, error


def test_bad_inputs_are_refused(library):
    cfg = CONFIGS["narrow"]
    with pytest.raises(ValueError, match="max_len"):
        csim_softmax(cfg, np.zeros((1, cfg.max_len + 1), dtype=np.int64), library=library)
    with pytest.raises(ValueError, match="8 signed bits"):
        csim_softmax(cfg, np.array([[128]]), library=library)
    with pytest.raises(ValueError, match="shape"):
        softmax_stream_inputs(cfg, np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="SoftmaxConfig"):
        csim_softmax(object(), np.zeros((1, 1), dtype=np.int64))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The generated project of the wide config with RTL-case vectors, and its testbench."""
    cfg = CONFIGS["wide"]
    cases = [
        softmax_stream_case(cfg, np.stack(c.logits(cfg)), c.label)
        for c in (SoftmaxCase(3, 37, seed=2), SoftmaxCase(2, cfg.max_len, seed=6, data="spike"))
    ]
    out = tmp_path_factory.mktemp("softmax_prj")
    result = generate_hls(cfg, out, cases=cases)
    files = {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.suffix in (".cpp", ".h") and p.name != "csim.cpp"
    }
    build = compile_cpp(
        files, ["tb.cpp", f"{result['top']}.cpp"], name="test_softmax_tb", kind="executable"
    )
    return cfg, out, result, build.path, len(cases)


def test_generated_project(project):
    cfg, out, result, _, _ = project
    top = cfg.short_name
    assert result["engine"] == "softmax" and result["top"] == top
    for name in (
        f"{top}.cpp", f"{top}_config.h", "csim.cpp", "tb.cpp", "run_hls.tcl", "Makefile",
        "README.md", "config.json", "tb_data/inputs.txt", "tb_data/expected.txt",
        "include/tessera/exp.h", "include/tessera/softmax.h", "include/tessera/axis.h",
        "include/tessera/stream_io.h",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    header = (out / f"{top}_config.h").read_text()

    def member(name: str) -> int:
        found = re.search(rf"static const \w+ {name} = (-?\d+)u?;", header)
        assert found, name
        return int(found.group(1))

    for name in ("in_bits", "in_frac", "exp_frac", "lut_bits", "interp_bits", "out_bits",
                 "out_frac", "max_len", "len_bits", "sum_bits", "recip_frac", "recip_bits",
                 "prob_shift"):  # fmt: skip
        assert member(name) == getattr(cfg, name), name
    table = exp2_lut(cfg)
    assert [member(f"exp2_{k:03x}") for k in range(len(table))] == table.tolist()
    assert f"exp2_{len(table):03x} =" not in header


def test_generated_testbench_passes(project):
    _, out, _, program, count = project
    run = subprocess.run([str(program)], cwd=out, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"PASS: {count} cases" in run.stdout
